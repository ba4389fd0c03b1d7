//! The svp/1 conformance kit against every first-party plug-in, run the way the daemon runs them.

use bkg_conformance::{PluginCommand, run_suite};
use serde_json::json;

use crate::support::{bkg_bin, sibling_bin};

fn words() -> String {
    (0..200).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_echo_conforms() {
    let cmd = PluginCommand::new(bkg_bin())
        .args(["plugin", "echo"])
        .slow_call("echo.stream", json!({"text": words(), "interval_ms": 100, "stream": true}));
    let report = run_suite(&cmd).await;
    assert!(report.passed(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_fake_conforms() {
    let cmd = PluginCommand::new(bkg_bin()).args(["plugin", "fake"]).slow_call("fake.sleep", json!({"ms": 10_000}));
    let report = run_suite(&cmd).await;
    assert!(report.passed(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_echo_binary_conforms() {
    let cmd = PluginCommand::new(sibling_bin("bkg-plugin-echo"))
        .slow_call("echo.stream", json!({"text": words(), "interval_ms": 100, "stream": true}));
    let report = run_suite(&cmd).await;
    assert!(report.passed(), "{report}");
}
