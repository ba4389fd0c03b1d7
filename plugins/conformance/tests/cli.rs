//! The `bkg-conformance` binary: one line per case, exit code 0 only when nothing failed.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::process::Command;

const KIT: &str = env!("CARGO_BIN_EXE_bkg-conformance");
const SAMPLE: &str = env!("CARGO_BIN_EXE_bkg-conformance-sample-plugin");

#[test]
fn passes_the_sample_plugin_and_prints_one_line_per_case() {
    let out = Command::new(KIT)
        .args(["--slow-method", "sample.sleep", "--slow-params", r#"{"ms":10000,"stream":true}"#, "--", SAMPLE])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 13, "{stdout}");
    assert!(lines[..12].iter().all(|l| l.starts_with("PASS ")), "{stdout}");
    assert_eq!(lines[12], "12 cases: 12 passed, 0 failed, 0 skipped");
}

#[test]
fn fails_with_a_reason_and_a_non_zero_exit() {
    let out = Command::new(KIT)
        .args([
            "--case",
            "handshake",
            "--case",
            "cancellation",
            "--",
            "/bin/sh",
            "-c",
            "read l; echo garbage; sleep 30",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("FAIL handshake") && lines[0].contains("garbage"), "{stdout}");
    assert!(lines[1].starts_with("SKIP cancellation: "), "{stdout}");
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(KIT).args(["--case", "nope", "--", SAMPLE]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(KIT).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(KIT).arg("--list").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 12);
}
