//! Supervision against misbehaving plug-ins (issue: core daemon, "must hold").

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

fn pid_of(v: &Value) -> u32 {
    v["pid"].as_u64().expect("pid") as u32
}

fn kill(pid: u32, signal: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).expect("kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_restarts_and_counts() {
    let d = TestDaemon::start(vec![fake_spec("f", json!({}), json!({})), echo_spec("e")]).await;
    let first = pid_of(&d.wait_ready("f").await);
    let echo_pid = pid_of(&d.wait_ready("e").await);
    kill(first, Signal::SIGKILL);
    let v = d.wait_plugin("f", "restarted", |v| v["state"] == "ready" && v["pid"] != json!(first)).await;
    assert_eq!(v["restarts"], 1, "{v}");
    assert_eq!(v["last_exit"]["signal"], 9, "{v}");
    assert!(v["last_exit"]["reason"].as_str().unwrap().contains("SIGKILL"), "{v}");
    assert!(!alive(first));
    assert_eq!(pid_of(&d.plugin("e").await), echo_pid, "other plug-ins untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_ends_in_failed_and_the_daemon_keeps_serving() {
    let crasher = fake_spec("c", json!({}), json!({"BKG_FAKE_EXIT_AT_START": "1"}));
    let d = TestDaemon::start(vec![crasher, echo_spec("e")]).await;
    let echo_pid = pid_of(&d.wait_ready("e").await);
    let v = d.wait_plugin("c", "failed", |v| v["state"] == "failed").await;
    assert!(v["reason"].as_str().unwrap().starts_with("crash loop: 5 exits"), "{v}");
    assert_eq!(v["restarts"], 4, "{v}");
    assert_eq!(v["last_exit"]["code"], 1);
    // Failed stays failed: no further spawns.
    let generation = v["generation"].clone();
    let (status, health) = d.get("/health").await;
    assert_eq!(status, StatusCode::OK, "an optional plug-in down is degraded, not down: {health}");
    assert_eq!(health["status"], "degraded");
    assert_eq!(d.plugin("c").await["generation"], generation);
    assert_eq!(pid_of(&d.plugin("e").await), echo_pid);
    let (status, body) = d.rpc("e", "echo.echo", json!({"x": 1}), None).await;
    assert_eq!((status, &body["result"]["x"]), (StatusCode::OK, &json!(1)));
    // The crash report carries the plug-in's last stderr lines.
    let lines = v["last_lines"].as_array().unwrap();
    assert!(lines.iter().any(|l| l["msg"].as_str().unwrap_or("").contains("fake")), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_78_is_failed_without_restart() {
    let d = TestDaemon::start(vec![fake_spec("c", json!({}), json!({"BKG_FAKE_EXIT_AT_START": "78"}))]).await;
    let v = d.wait_plugin("c", "failed", |v| v["state"] == "failed").await;
    assert_eq!(v["restarts"], 0, "{v}");
    assert!(v["reason"].as_str().unwrap().contains("configuration error"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_plugin_is_detected_and_restarted() {
    let d = TestDaemon::start(vec![fake_spec("h", json!({}), json!({}))]).await;
    let first = pid_of(&d.wait_ready("h").await);
    let (status, _) = d.rpc("h", "fake.freeze", json!({}), None).await;
    assert_eq!(status, StatusCode::OK);
    let v = d.wait_plugin("h", "restarted after hanging", |v| v["state"] == "ready" && v["pid"] != json!(first)).await;
    assert!(v["last_exit"]["reason"].as_str().unwrap().starts_with("hung: 2 pings missed"), "{v}");
    assert!(!alive(first), "the frozen process was killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_call_times_out_at_its_deadline_and_others_are_unaffected() {
    let d = TestDaemon::start(vec![fake_spec("h", json!({}), json!({})), echo_spec("e")]).await;
    d.wait_ready("h").await;
    d.wait_ready("e").await;
    let started = Instant::now();
    let hang = d.rpc("h", "fake.hang", json!({}), Some(700));
    let other = async {
        let (status, body) = d.rpc("e", "echo.echo", json!({"y": 2}), None).await;
        (status, body, started.elapsed())
    };
    let ((hang_status, hang_body), (status, body, other_took)) = tokio::join!(hang, other);
    assert_eq!(hang_status, StatusCode::GATEWAY_TIMEOUT, "{hang_body}");
    assert_eq!(hang_body["error"]["code"], "timeout");
    assert!(started.elapsed() >= Duration::from_millis(700));
    assert_eq!((status, &body["result"]["y"]), (StatusCode::OK, &json!(2)));
    assert!(other_took < Duration::from_millis(700), "echo waited for the hung call: {other_took:?}");
    // The hung plug-in itself still answers other calls (the hung one was cancelled).
    let (status, _) = d.rpc("h", "fake.echo", json!({}), None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_on_stdout_is_skipped_and_marks_degraded() {
    let d = TestDaemon::start(vec![fake_spec("j", json!({}), json!({"BKG_FAKE_JUNK_BEFORE_HANDSHAKE": "3"}))]).await;
    d.wait_ready("j").await;
    let (status, body) = d.rpc("j", "fake.junk", json!({"lines": 500}), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = d.rpc("j", "fake.echo", json!({"after": "junk"}), None).await;
    assert_eq!((status, &body["result"]["after"]), (StatusCode::OK, &json!("junk")));
    let v = d.wait_plugin("j", "degraded", |v| v["state"] == "degraded").await;
    assert!(v["rpc"]["junk_lines"].as_u64().unwrap() >= 500, "{v}");
    assert!(v["reason"].as_str().unwrap().contains("junk"), "{v}");
}

/// A 100 MiB line and a 1 GiB stderr flood: the daemon's memory stays bounded (one 16 MiB frame
/// buffer per plug-in, a 4 MiB log ring), the stream resynchronises and the child never blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_line_and_stderr_flood_keep_memory_bounded() {
    let d = TestDaemon::start(vec![fake_spec("b", json!({}), json!({}))]).await;
    d.wait_ready("b").await;
    let before = rss_bytes(d.pid());
    let (status, body) = d.rpc("b", "fake.big_line", json!({"bytes": 100 * 1024 * 1024}), Some(120_000)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = d.rpc("b", "fake.flood", json!({"bytes": 1u64 << 30}), Some(300_000)).await;
    assert_eq!(status, StatusCode::OK, "the child must never block on a full pipe: {body}");
    assert_eq!(body["result"]["written"], json!(1u64 << 30));
    let (status, body) = d.rpc("b", "fake.echo", json!({"still": "here"}), None).await;
    assert_eq!((status, &body["result"]["still"]), (StatusCode::OK, &json!("here")), "stream resynchronised");
    let v = d.plugin("b").await;
    assert_eq!(v["rpc"]["oversized_frames"], 1, "{v}");
    assert_eq!(v["state"], "ready", "one oversized frame is not yet misbehaviour");
    let after = rss_bytes(d.pid());
    let growth = after.saturating_sub(before);
    assert!(growth < 48 * 1024 * 1024, "daemon RSS grew by {} MiB (before {before}, after {after})", growth >> 20);
    let (_, metrics) = d.get("/admin/plugins/b").await;
    assert!(metrics["last_lines"].as_array().unwrap().len() <= 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ignoring_plugin_is_killed_after_the_grace_period_with_its_grandchildren() {
    let stubborn = fake_spec(
        "s",
        json!({"ignore_shutdown": true}),
        json!({"BKG_FAKE_IGNORE_SIGTERM": "1", "BKG_FAKE_LINGER": "1"}),
    );
    let d = TestDaemon::start(vec![stubborn]).await;
    let pid = pid_of(&d.wait_ready("s").await);
    let (status, body) = d.rpc("s", "fake.spawn", json!({"count": 3}), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let grandchildren: Vec<u32> =
        body["result"]["pids"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap() as u32).collect();
    assert!(grandchildren.iter().all(|p| alive(*p)));
    let started = Instant::now();
    let (status, body) = d.post("/admin/plugins/s/stop", json!({})).await;
    assert_eq!((status, &body["state"]), (StatusCode::OK, &json!("stopping")));
    let v = d.wait_plugin("s", "stopped", |v| v["state"] == "stopped").await;
    // shutdown (1 s) + EOF grace (0.5 s) + SIGTERM grace (0.5 s), then SIGKILL.
    assert!(started.elapsed() >= Duration::from_millis(2000), "{:?}", started.elapsed());
    assert_eq!(v["last_exit"]["signal"], 9, "{v}");
    assert!(!alive(pid));
    for g in grandchildren {
        assert!(!alive(g), "grandchild {g} survived the stop");
    }
    let notes: Vec<String> =
        v["last_lines"].as_array().unwrap().iter().map(|l| l["msg"].as_str().unwrap_or("").to_owned()).collect();
    assert!(notes.iter().any(|m| m.contains("SIGTERM")) && notes.iter().any(|m| m.contains("SIGKILL")), "{notes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_sigterm_stops_every_plugin_and_exits_zero() {
    let m = marker();
    let plugins = vec![
        fake_spec("a", json!({}), json!({"TEST_MARKER": m})),
        fake_spec("b", json!({}), json!({"TEST_MARKER": m})),
        echo_spec("e"),
    ];
    let mut d = TestDaemon::start(plugins).await;
    for name in ["a", "b", "e"] {
        d.wait_ready(name).await;
    }
    let (_, body) = d.rpc("a", "fake.spawn", json!({"count": 2}), None).await;
    let grandchildren: Vec<u32> =
        body["result"]["pids"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap() as u32).collect();
    let echo_pid = pid_of(&d.plugin("e").await);
    assert_eq!(pids_with_env("TEST_MARKER", &m).len(), 2 + 2, "2 plug-ins + 2 grandchildren (env is inherited)");
    d.signal(Signal::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{:?}\n{}", status, d.logs().join("\n"));
    assert!(pids_with_env("TEST_MARKER", &m).is_empty());
    assert!(!alive(echo_pid));
    assert!(grandchildren.iter().all(|g| !alive(*g)));
    wait_for("the last log line", WAIT, || async {
        d.logs().iter().any(|l| l.contains("all plug-ins stopped")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_sigkill_leaves_no_orphans_within_two_seconds() {
    let m = marker();
    let mut d = TestDaemon::start(vec![
        fake_spec("a", json!({}), json!({"TEST_MARKER": m})),
        fake_spec("b", json!({}), json!({"TEST_MARKER": m})),
    ])
    .await;
    d.wait_ready("a").await;
    d.wait_ready("b").await;
    let (status, _) = d.rpc("a", "fake.spawn", json!({"count": 3}), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(pids_with_env("TEST_MARKER", &m).len(), 5);
    d.signal(Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(5)).await;
    let killed = Instant::now();
    wait_for("no plug-in or grandchild left", Duration::from_secs(2), || async {
        pids_with_env("TEST_MARKER", &m).is_empty().then_some(())
    })
    .await;
    assert!(killed.elapsed() <= Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unstartable_plugins_fail_with_a_clear_reason_and_the_rest_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let not_exec = tmp.path().join("not-executable");
    std::fs::write(&not_exec, "#!/bin/sh\n").unwrap();
    let plugins = vec![
        json!({"name": "missing", "command": "/nonexistent/bkg-plugin-x"}),
        json!({"name": "noexec", "command": not_exec}),
        json!({"name": "badsum", "builtin": "echo", "sha256": "0".repeat(64)}),
        fake_spec("badinit", json!({"fail_initialize": true}), json!({})),
        {
            let mut s = fake_spec("silent", json!({}), json!({"BKG_FAKE_NO_HANDSHAKE": "1"}));
            s["timeouts"]["startup_ms"] = json!(500);
            s
        },
        fake_spec("badconfig", json!({"no_such_option": 1}), json!({})),
        echo_spec("e"),
    ];
    let d = TestDaemon::start(plugins).await;
    d.wait_ready("e").await;
    let expect = [
        ("missing", "executable not found: /nonexistent/bkg-plugin-x"),
        ("noexec", "not executable"),
        ("badsum", "sha256 mismatch"),
        ("badinit", "handshake failed: initialize returned"),
        ("silent", "handshake failed: no answer to initialize"),
        ("badconfig", "handshake failed: initialize returned"),
    ];
    for (name, reason) in expect {
        let v = d.wait_plugin(name, "failed", |v| v["state"] == "failed").await;
        assert!(v["reason"].as_str().unwrap().contains(reason), "{name}: {v}");
        assert_eq!(v["restarts"], 0, "{name} must not be restarted: {v}");
    }
    let (status, _) = d.rpc("e", "echo.echo", json!({}), None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_registry_is_rejected_before_anything_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = json!({"plugins": [
        {"name": "../x", "builtin": "echo"},
        {"name": "a", "builtin": "echo", "colour": "red"},
        {"name": "a", "builtin": "echo"},
        {"name": "b", "builtin": "nope"},
    ]});
    let output = daemon_command(tmp.path(), Some(registry)).output().unwrap();
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in [
        "$.plugins[0].name: invalid name \"../x\"",
        "$.plugins[1].colour: unknown field",
        "$.plugins[2].name: duplicate name \"a\"",
        "$.plugins[3].builtin: unknown built-in \"nope\"",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
    assert!(!tmp.path().join("bkg.db").exists(), "nothing may start or be written");

    std::fs::write(tmp.path().join("bad.json"), "{not json").unwrap();
    let mut cmd = daemon_command(tmp.path(), None);
    let output = cmd.arg("--registry").arg(tmp.path().join("bad.json")).output().unwrap();
    assert_eq!(output.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not valid JSON"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_println_in_a_plugin_goes_to_its_log_not_the_wire() {
    let d = TestDaemon::start(vec![fake_spec("p", json!({}), json!({}))]).await;
    d.wait_ready("p").await;
    let (status, _) = d.rpc("p", "fake.stdout_println", json!({"text": "stray-output-123"}), None).await;
    assert_eq!(status, StatusCode::OK);
    let v = d
        .wait_plugin("p", "println in the log", |v| {
            v["last_lines"].as_array().unwrap().iter().any(|l| l["msg"] == "stray-output-123")
        })
        .await;
    assert_eq!(v["rpc"]["junk_lines"], 0, "{v}");
}
