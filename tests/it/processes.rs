//! Plain processes (`protocol: "none"`, issue 8) under the real daemon: a Python `http.server`
//! that is ready only when its port answers, restarts after kill -9 and after a liveness probe
//! fails on a SIGSTOPped child; `after:` ordering at start and, reversed, at stop; a cycle in
//! `after:` refused before anything starts; a daemonizing child reported with a hint and its
//! leftovers killed; stdout and stderr captured with their stream tag; group resource figures.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

/// A port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn port_answers(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// `python3 -m http.server` after `delay_s`, as a plain process found through PATH.
fn http_server(name: &str, port: u16, delay_s: f64, probes: Value) -> Value {
    let script = format!(
        "import time, sys, runpy; time.sleep({delay_s}); \
         sys.argv = ['http.server', '--bind', '127.0.0.1', '{port}']; \
         runpy.run_module('http.server', run_name='__main__')"
    );
    json!({
        "name": name,
        "protocol": "none",
        "command": "python3",
        "args": ["-u", "-c", script],
        "probes": probes,
        "restart": {"backoff_initial_ms": 50, "backoff_max_ms": 200},
        "timeouts": {"stop_grace_ms": 2000},
    })
}

fn http_probe(port: u16, extra: Value) -> Value {
    let mut probe = json!({"http": {"url": format!("http://127.0.0.1:{port}/")}, "period_ms": 100, "timeout_ms": 500});
    if let (Some(p), Value::Object(extra)) = (probe.as_object_mut(), extra) {
        p.extend(extra);
    }
    probe
}

/// A shell process that records its start, its readiness and its stop in `journal`.
fn journaled(name: &str, journal: &Path, after: &[&str], stop_signal: &str) -> Value {
    let j = journal.display();
    let script = format!(
        "trap 'echo {name}-stop >> {j}; exit 0' {stop_signal}; echo {name} >> {j}; sleep 0.3; \
         echo {name}-ready >> {j}; echo ready; while :; do sleep 0.05; done"
    );
    json!({
        "name": name,
        "protocol": "none",
        "command": "/bin/sh",
        "args": ["-c", script],
        "after": after,
        "stop_signal": stop_signal,
        "probes": {"readiness": {"log": {"regex": "^ready$"}, "period_ms": 50}},
    })
}

fn lines_of(v: &Value) -> Vec<Value> {
    v["last_lines"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_server_is_ready_when_its_port_answers_and_restarts_after_kill_9() {
    let port = free_port();
    let d =
        TestDaemon::start(vec![http_server("web", port, 1.0, json!({"readiness": http_probe(port, json!({}))}))]).await;
    let starting = d.wait_plugin("web", "spawned", |v| v["pid"].is_u64()).await;
    assert_eq!(starting["state"], "starting", "not ready before its port answers: {starting}");
    assert_eq!(starting["protocol"], "none");
    assert!(!port_answers(port));
    let ready = d.wait_ready("web").await;
    assert!(port_answers(port), "ready means the port answers");
    // stdout and stderr both land in the log, tagged: http.server prints its banner on stdout and
    // logs each request (the probe's) on stderr.
    let v = d
        .wait_plugin("web", "stdout and stderr lines", |v| {
            let lines = lines_of(v);
            lines
                .iter()
                .any(|l| l["stream"] == "stdout" && l["msg"].as_str().is_some_and(|m| m.contains("Serving HTTP")))
                && lines
                    .iter()
                    .any(|l| l["stream"] == "stderr" && l["msg"].as_str().is_some_and(|m| m.contains("GET /")))
        })
        .await;
    assert!(lines_of(&v).iter().any(|l| l["stream"] == "daemon"), "lifecycle notes are tagged too");
    // A plain process takes no calls.
    let (status, body) = d.rpc("web", "anything", json!({}), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    let pid = ready["pid"].as_u64().unwrap() as i32;
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let again = d.wait_plugin("web", "restarted and ready", |v| v["generation"] == 2 && v["state"] == "ready").await;
    assert_eq!(again["restarts"], 1);
    assert!(again["last_exit"]["reason"].as_str().unwrap().contains("SIGKILL"), "{again}");
    assert!(port_answers(port));

    // The same control routes, metrics and audit as any plug-in.
    let (status, body) = d.post("/admin/plugins/web/stop", json!({})).await;
    assert_eq!((status, &body["state"]), (StatusCode::OK, &json!("stopping")), "{body}");
    d.wait_plugin("web", "stopped", |v| v["state"] == "stopped").await;
    wait_for("the port closes", WAIT, || async { (!port_answers(port)).then_some(()) }).await;
    let res = d.http.get(d.url("/metrics")).bearer_auth(&d.token).send().await.unwrap();
    let metrics = res.text().await.unwrap();
    assert!(metrics.contains(r#"bkg_plugin_restarts_total{plugin="web"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"bkg_plugin_state{plugin="web",state="stopped"} 1"#), "{metrics}");
    let (_, audit) = d.get("/admin/audit?action=plugin.stop").await;
    assert_eq!(audit["events"][0]["target"], "plugin:web", "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_liveness_probe_restarts_a_sigstopped_child() {
    let port = free_port();
    let probes = json!({
        "readiness": http_probe(port, json!({})),
        "liveness": http_probe(port, json!({"period_ms": 100, "timeout_ms": 200, "failure_threshold": 3})),
    });
    let d = TestDaemon::start(vec![http_server("web", port, 0.0, probes)]).await;
    let ready = d.wait_ready("web").await;
    let pid = ready["pid"].as_u64().unwrap() as i32;
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    let again =
        d.wait_plugin("web", "restarted after the hang", |v| v["generation"] == 2 && v["state"] == "ready").await;
    let reason = again["last_exit"]["reason"].as_str().unwrap();
    assert!(reason.contains("liveness probe failed 3 times"), "{reason}");
    assert!(!alive(pid as u32), "the stopped process was killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_failures_mark_it_degraded_and_recovery_ready() {
    let port = free_port();
    let flag = tempfile::NamedTempFile::new().unwrap();
    let flag_path = flag.path().to_owned();
    let probe = json!({"exec": {"command": "/usr/bin/test", "args": ["-e", flag_path]}, "period_ms": 50,
                       "failure_threshold": 2});
    let d = TestDaemon::start(vec![http_server("web", port, 0.0, json!({"readiness": probe}))]).await;
    d.wait_ready("web").await;
    std::fs::remove_file(&flag_path).unwrap();
    let v = d.wait_plugin("web", "degraded", |v| v["state"] == "degraded").await;
    assert!(v["reason"].as_str().unwrap().contains("readiness probe failed 2 times"), "{v}");
    std::fs::write(&flag_path, b"").unwrap();
    let v = d.wait_plugin("web", "ready again", |v| v["state"] == "ready").await;
    assert_eq!(v["generation"], 1, "readiness never restarts: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_orders_the_start_and_reverses_the_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let journal = tmp.path().join("journal");
    // Listed in reverse so that registry order cannot explain the result.
    let mut d = TestDaemon::start(vec![
        journaled("c", &journal, &["b"], "TERM"),
        journaled("b", &journal, &["a"], "INT"),
        journaled("a", &journal, &[], "TERM"),
    ])
    .await;
    for name in ["a", "b", "c"] {
        d.wait_ready(name).await;
    }
    let started = std::fs::read_to_string(&journal).unwrap();
    assert_eq!(started.lines().collect::<Vec<_>>(), ["a", "a-ready", "b", "b-ready", "c", "c-ready"]);

    d.signal(Signal::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0));
    let all = std::fs::read_to_string(&journal).unwrap();
    let stops: Vec<&str> = all.lines().skip(6).collect();
    assert_eq!(stops, ["c-stop", "b-stop", "a-stop"], "b got its stop_signal (INT) too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependent_waits_while_its_dependency_is_down() {
    let tmp = tempfile::tempdir().unwrap();
    let journal = tmp.path().join("journal");
    let mut a = journaled("a", &journal, &[], "TERM");
    a["enabled"] = json!(false);
    let d = TestDaemon::start(vec![a, journaled("b", &journal, &["a"], "TERM")]).await;
    let b = d.wait_plugin("b", "waiting", |v| v["waiting_for"] == json!(["a"])).await;
    assert_eq!(b["state"], "stopped");
    assert!(b["reason"].as_str().unwrap().contains("waiting for a"), "{b}");
    let (status, body) = d.post("/admin/plugins/a/enable", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    d.wait_ready("b").await;
    // Registering with an unknown dependency is bad input; removing a dependency is a conflict.
    let mut orphan = journaled("x", &journal, &["nope"], "TERM");
    orphan["enabled"] = json!(false);
    let (status, body) = d.post("/admin/plugins", orphan).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["details"]["field"], "after", "{body}");
    let (status, body) = d.delete("/admin/plugins/a").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("b depend"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_in_after_is_a_config_error_listing_the_cycle() {
    let tmp = tempfile::tempdir().unwrap();
    let journal = tmp.path().join("journal");
    let registry = json!({"plugins": [
        journaled("a", &journal, &["c"], "TERM"),
        journaled("b", &journal, &["a"], "TERM"),
        journaled("c", &journal, &["b"], "TERM"),
        journaled("d", &journal, &["zz"], "TERM"),
    ]});
    let output = daemon_command(tmp.path(), Some(registry)).output().unwrap();
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("dependency cycle in \"after\": a → c → b → a"), "{stderr}");
    assert!(stderr.contains("$.plugins[3].after[0]: unknown plug-in \"zz\""), "{stderr}");
    assert!(!journal.exists(), "nothing started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemonizing_child_is_reported_with_a_hint_and_its_leftovers_killed() {
    let m = marker();
    let spec = |name: &str, script: &str| {
        json!({
            "name": name, "protocol": "none", "command": "/bin/sh", "args": ["-c", script],
            "restart": {"mode": "never"}, "env": {"TEST_MARKER": m},
        })
    };
    let d = TestDaemon::start(vec![
        spec("forks", "sleep 300 & exit 0"),
        // Leaves the process group too: found by the instance marker in its environment.
        spec("setsid", "setsid sleep 300 & exit 0"),
    ])
    .await;
    for name in ["forks", "setsid"] {
        let v = d.wait_plugin(name, "exited", |v| v["state"] == "stopped" && v["last_exit"].is_object()).await;
        let reason = v["last_exit"]["reason"].as_str().unwrap();
        assert!(reason.contains("exited with code 0"), "{reason}");
        assert!(reason.contains("daemonized") && reason.contains("foreground"), "{reason}");
    }
    wait_for("leftovers killed", WAIT, || async { pids_with_env("TEST_MARKER", &m).is_empty().then_some(()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_figures_cover_the_whole_group() {
    let d = TestDaemon::start(vec![json!({
        "name": "family", "protocol": "none", "command": "/bin/sh",
        "args": ["-c", "sleep 300 & sleep 300 & wait"],
    })])
    .await;
    d.wait_ready("family").await;
    let system = wait_for("three processes in the group", WAIT, || async {
        let (_, system) = d.get("/admin/system").await;
        let entry = system["plugins"].as_array()?.iter().find(|p| p["name"] == "family")?.clone();
        (entry["processes"] == 3).then_some(entry)
    })
    .await;
    assert!(system["rss_bytes"].as_u64().unwrap() > 0, "{system}");
    assert!(system["open_fds"].as_u64().is_some(), "{system}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_group_need_root_and_apply() {
    let d = TestDaemon::start(vec![json!({
        "name": "as-nobody", "protocol": "none", "command": "/bin/sh",
        "args": ["-c", "id -u; sleep 300"], "user": "nobody", "cwd": "/",
    })])
    .await;
    if nix::unistd::geteuid().is_root() {
        let v = d.wait_ready("as-nobody").await;
        let uid = std::fs::read_to_string(format!("/proc/{}/status", v["pid"])).unwrap();
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap().uid.as_raw();
        assert!(uid.lines().any(|l| l.starts_with("Uid:") && l.contains(&nobody.to_string())), "{uid}");
    } else {
        let v = d.wait_plugin("as-nobody", "failed", |v| v["state"] == "failed").await;
        assert!(v["reason"].as_str().unwrap().contains("needs the daemon to run as root"), "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_rate_limit_is_per_entry() {
    // 30,000 lines at once: over the default burst (10,000), within a raised one.
    let chatty = |name: &str| {
        json!({
            "name": name, "protocol": "none", "command": "/bin/sh",
            "args": ["-c", "seq 1 30000; sleep 300"],
        })
    };
    let mut raised = chatty("raised");
    raised["log_lines_per_s"] = json!(100_000);
    let d = TestDaemon::start(vec![chatty("default"), raised]).await;
    let v = d.wait_plugin("default", "lines dropped", |v| v["log"]["dropped"].as_u64() > Some(0)).await;
    assert_eq!(v["log"]["lines_per_s"], 2000, "{v}");
    let v = d
        .wait_plugin("raised", "every line kept", |v| {
            v["last_lines"].as_array().is_some_and(|l| l.iter().any(|l| l["msg"] == "30000"))
        })
        .await;
    assert_eq!(v["log"]["dropped"], 0, "{v}");
    assert!(v["log"]["lines"].as_u64().unwrap() >= 30_000, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_daemon_kills_what_a_sigkilled_one_left_and_two_cannot_share_a_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let m = marker();
    let registry = json!({"plugins": [{
        "name": "orphan", "protocol": "none", "command": "/bin/sh",
        "args": ["-c", "sleep 300 & exec sleep 301"], "env": {"TEST_MARKER": m},
    }]});
    let mut d = TestDaemon::start_in(tmp.path(), Some(registry)).await;
    d.wait_ready("orphan").await;
    wait_for("both processes", WAIT, || async { (pids_with_env("TEST_MARKER", &m).len() == 2).then_some(()) }).await;

    let output = daemon_command(tmp.path(), None).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("another bkg is already running on the data directory"), "{stderr}");

    d.signal(Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(10)).await;
    // A plain process does not notice its parent's death.
    let old = pids_with_env("TEST_MARKER", &m);
    assert_eq!(old.len(), 2, "left running by the killed daemon");

    let d = TestDaemon::start_in(tmp.path(), None).await;
    d.wait_ready("orphan").await;
    wait_for("the leftovers killed", WAIT, || async { old.iter().all(|p| !alive(*p)).then_some(()) }).await;
    assert!(d.logs().iter().any(|l| l.contains("left running")), "the cleanup is logged");
    wait_for("the new instance's two processes", WAIT, || async {
        (pids_with_env("TEST_MARKER", &m).len() == 2).then_some(())
    })
    .await;
}
