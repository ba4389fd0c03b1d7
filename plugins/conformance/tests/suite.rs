//! Runs the kit against its own sample plug-in (every case must pass) and against broken
//! plug-ins (the right case must fail, within its deadline, leaving no process behind).

#![allow(clippy::unwrap_used, reason = "tests")]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bkg_conformance::{CASE_DEADLINE, Case, Outcome, PluginCommand, run_case, run_suite};
use serde_json::json;

const MARKER_ENV: &str = "BKG_CONFORMANCE_TEST_MARKER";

fn sample() -> PluginCommand {
    PluginCommand::new(env!("CARGO_BIN_EXE_bkg-conformance-sample-plugin"))
}

/// A value unique to one test, put into the plug-in's environment so its processes can be found.
fn marker(test: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{test}-{}-{nanos}", std::process::id())
}

/// Live (non-zombie) processes whose environment holds `MARKER_ENV=marker`.
fn processes_with(marker: &str) -> Vec<i32> {
    let needle = format!("{MARKER_ENV}={marker}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
            .unwrap_or(true);
        if !zombie && environ.split(|b| *b == 0).any(|var| var == needle.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

/// Waits a little for killed processes to disappear, then asserts none is left.
async fn assert_nothing_left(marker: &str) {
    let until = Instant::now() + Duration::from_secs(2);
    while !processes_with(marker).is_empty() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(processes_with(marker), Vec::<i32>::new(), "processes left behind");
}

#[tokio::test]
async fn leftover_detection_works() {
    // Guards the negative tests below against passing vacuously.
    let marker = marker("detect");
    let mut child = std::process::Command::new("sleep").arg("30").env(MARKER_ENV, &marker).spawn().unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    assert_eq!(processes_with(&marker), vec![pid]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_nothing_left(&marker).await;
}

#[tokio::test]
async fn sample_plugin_passes_every_case() {
    let marker = marker("sample");
    let cmd = sample().env(MARKER_ENV, &marker).slow_call("sample.sleep", json!({"ms": 10_000, "stream": true}));
    let report = run_suite(&cmd).await;
    assert_eq!(report.results.len(), Case::ALL.len(), "{report}");
    assert!(report.results.iter().all(|r| r.outcome == Outcome::Pass), "{report}");
    assert_nothing_left(&marker).await;
}

#[tokio::test]
async fn sample_plugin_passes_cancellation_without_streaming() {
    let cmd = sample().slow_call("sample.sleep", json!({"ms": 10_000}));
    let result = run_case(Case::Cancellation, &cmd).await;
    assert_eq!(result.outcome, Outcome::Pass, "{result}");
}

#[tokio::test]
async fn cancellation_is_skipped_without_a_slow_call() {
    let result = run_case(Case::Cancellation, &sample()).await;
    assert!(matches!(result.outcome, Outcome::Skipped(_)), "{result}");
}

#[tokio::test]
async fn a_call_too_fast_to_cancel_is_reported() {
    let cmd = sample().slow_call("sample.sleep", json!({"ms": 0}));
    let result = run_case(Case::Cancellation, &cmd).await;
    match &result.outcome {
        Outcome::Fail(reason) => {
            assert!(reason.contains("before it could be cancelled"), "{reason}")
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn garbage_plugin_fails_the_handshake_quickly_and_leaves_nothing_behind() {
    let marker = marker("garbage");
    let cmd = PluginCommand::new("/bin/sh").args(["-c", "read line; echo garbage; sleep 30"]).env(MARKER_ENV, &marker);
    let started = Instant::now();
    let result = run_case(Case::Handshake, &cmd).await;
    assert!(started.elapsed() < CASE_DEADLINE, "took {:?}", started.elapsed());
    match &result.outcome {
        Outcome::Fail(reason) => {
            assert!(reason.contains("not JSON") && reason.contains("garbage"), "{reason}");
            assert!(reason.contains("initialize"), "{reason}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_nothing_left(&marker).await;

    // The whole suite fails case by case without hanging (cancellation is skipped).
    let report = run_suite(&cmd).await;
    for r in &report.results {
        match r.case {
            Case::Cancellation => assert!(matches!(r.outcome, Outcome::Skipped(_)), "{report}"),
            _ => assert!(matches!(r.outcome, Outcome::Fail(_)), "{report}"),
        }
        assert!(r.elapsed < CASE_DEADLINE, "{report}");
    }
    assert_nothing_left(&marker).await;
}

#[tokio::test]
async fn silent_plugin_times_out_the_handshake() {
    let marker = marker("silent");
    let cmd = PluginCommand::new("/bin/sh").args(["-c", "sleep 30"]).env(MARKER_ENV, &marker);
    let result = run_case(Case::Handshake, &cmd).await;
    match &result.outcome {
        Outcome::Fail(reason) => {
            assert!(reason.contains("no response to `initialize`"), "{reason}")
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(result.elapsed < CASE_DEADLINE, "{result}");
    assert_nothing_left(&marker).await;
}

#[tokio::test]
async fn plugin_ignoring_eof_fails_exit_on_eof() {
    let marker = marker("stubborn");
    let script = r#"read -r line
printf '%s\n' '{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":1,"plugin":{"name":"stubborn","version":"0"},"methods":{},"capabilities":{}}}'
while :; do sleep 1; done"#;
    let cmd = PluginCommand::new("/bin/sh").args(["-c", script]).env(MARKER_ENV, &marker);
    let result = run_case(Case::ExitOnEof, &cmd).await;
    match &result.outcome {
        Outcome::Fail(reason) => assert!(reason.contains("must exit on EOF"), "{reason}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_nothing_left(&marker).await;
}

#[tokio::test]
async fn missing_program_fails_cleanly() {
    let result = run_case(Case::Handshake, &PluginCommand::new("/nonexistent/plugin")).await;
    match &result.outcome {
        Outcome::Fail(reason) => assert!(reason.contains("cannot spawn"), "{reason}"),
        other => panic!("expected a failure, got {other:?}"),
    }
}
