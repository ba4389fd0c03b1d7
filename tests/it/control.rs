//! `POST /admin/plugins/{name}/{start,stop,restart,enable,disable}` against the real daemon:
//! concurrent calls end in one consistent state with at most one live process, the calls are
//! idempotent, impossible ones are refused, enable/disable survive a daemon restart, and a
//! disable racing a config change loses neither.

use std::path::Path;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestDaemon, WAIT, alive, fake_spec, marker, pids_with_env};

/// The parent pid of a process, from `/proc/<pid>/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// `bkg plugin fake` processes of this test (tagged by `marker`) whose parent is the daemon.
fn plugin_processes(daemon: u32, marker: &str) -> Vec<u32> {
    pids_with_env("BKG_TEST_MARKER", marker)
        .into_iter()
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            parent_of(*pid) == Some(daemon) && cmdline.split(|b| *b == 0).any(|arg| arg == b"fake")
        })
        .collect()
}

fn tagged_fake(name: &str, marker: &str) -> Value {
    fake_spec(name, json!({}), json!({ "BKG_TEST_MARKER": marker }))
}

/// Waits until the plug-in is in a state no call is still moving it out of.
async fn settled(d: &TestDaemon, name: &str) -> Value {
    d.wait_plugin(name, "a settled state", |v| matches!(v["state"].as_str(), Some("ready" | "stopped" | "disabled")))
        .await
}

#[tokio::test]
async fn concurrent_start_stop_restart_end_consistent_with_one_process_at_most() {
    let tag = marker();
    let d = TestDaemon::start(vec![tagged_fake("busy", &tag)]).await;
    d.wait_ready("busy").await;
    let daemon = d.pid();

    for round in 0..3 {
        let ops: Vec<&str> = (0..50).map(|i| ["start", "stop", "restart"][(i * 7 + round) % 3]).collect();
        let calls = ops.iter().map(|op| {
            let (http, url, token) = (d.http.clone(), d.url(&format!("/admin/plugins/busy/{op}")), d.token.clone());
            async move {
                let res = http.post(url).bearer_auth(token).send().await.expect("POST");
                let status = res.status();
                (status, res.json::<Value>().await.expect("JSON answer"))
            }
        });
        for (status, body) in futures_util::future::join_all(calls).await {
            assert_eq!(status, StatusCode::OK, "round {round}: {body}");
            assert!(body["state"].is_string(), "round {round}: {body}");
        }

        let view = settled(&d, "busy").await;
        let procs = plugin_processes(daemon, &tag);
        match view["state"].as_str() {
            Some("ready") => {
                assert_eq!(procs.len(), 1, "round {round}: ready with processes {procs:?}");
                assert_eq!(view["pid"].as_u64(), Some(u64::from(procs[0])), "round {round}: {view}");
            }
            _ => assert!(procs.is_empty(), "round {round}: {view} with processes {procs:?}"),
        }

        // Whatever the race left, a final start and stop behave.
        let (status, _) = d.post("/admin/plugins/busy/start", json!({})).await;
        assert_eq!(status, StatusCode::OK);
        let view = d.wait_ready("busy").await;
        assert_eq!(plugin_processes(daemon, &tag), vec![view["pid"].as_u64().expect("pid") as u32]);
        let (status, body) = d.post("/admin/plugins/busy/stop", json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        d.wait_plugin("busy", "stopped", |v| v["state"] == "stopped").await;
        assert!(plugin_processes(daemon, &tag).is_empty(), "stopped but a process is left");
        let (status, _) = d.post("/admin/plugins/busy/start", json!({})).await;
        assert_eq!(status, StatusCode::OK);
        d.wait_ready("busy").await;
    }
}

#[tokio::test]
async fn start_and_stop_are_idempotent_and_impossible_calls_are_refused() {
    let tag = marker();
    let d = TestDaemon::start(vec![tagged_fake("calm", &tag)]).await;
    let ready = d.wait_ready("calm").await;

    let (status, body) = d.post("/admin/plugins/calm/start", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["state"].clone(), body["pid"].clone()), (json!("ready"), ready["pid"].clone()));
    assert_eq!(body["generation"], ready["generation"], "start on a ready plug-in spawned again");

    let pid = ready["pid"].as_u64().expect("pid") as u32;
    let (status, _) = d.post("/admin/plugins/calm/stop", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    d.wait_plugin("calm", "stopped", |v| v["state"] == "stopped").await;
    assert!(!alive(pid), "the stopped plug-in's process is still alive");
    let (status, body) = d.post("/admin/plugins/calm/stop", json!({})).await;
    assert_eq!((status, body["state"].clone()), (StatusCode::OK, json!("stopped")), "{body}");

    let (status, body) = d.post("/admin/plugins/calm/disable", json!({})).await;
    assert_eq!((status, body["state"].clone()), (StatusCode::OK, json!("disabled")), "{body}");
    for op in ["start", "restart", "reload"] {
        let (status, body) = d.post(&format!("/admin/plugins/calm/{op}"), json!({})).await;
        assert_eq!(status, StatusCode::CONFLICT, "{op} on a disabled plug-in: {body}");
        assert_eq!(body["error"]["code"], "conflict");
    }
    let (status, body) = d.post("/admin/plugins/calm/disable", json!({})).await;
    assert_eq!((status, body["state"].clone()), (StatusCode::OK, json!("disabled")), "{body}");
    assert!(pids_with_env("BKG_TEST_MARKER", &tag).is_empty());

    let (status, body) = d.post("/admin/plugins/calm/fly", json!({})).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("not_found")), "{body}");
    let (status, body) = d.post("/admin/plugins/nope/start", json!({})).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("not_found")), "{body}");
    let (status, body) = d.post("/admin/plugins/Calm/start", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["details"]["field"], "name");

    let (status, body) = d.post("/admin/plugins/calm/enable", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    d.wait_ready("calm").await;
}

/// The last command wins even while the previous one is still in progress: an `enable` sent
/// while a `disable` is stopping the process ends enabled and running, like the database says.
#[tokio::test]
async fn enable_while_a_disable_is_still_stopping_wins() {
    let tag = marker();
    // `ignore_shutdown` makes every stop take the whole shutdown budget (1 s here).
    let spec = fake_spec("slow", json!({"ignore_shutdown": true}), json!({ "BKG_TEST_MARKER": tag }));
    let d = TestDaemon::start(vec![spec]).await;
    d.wait_ready("slow").await;

    let (status, body) = d.post("/admin/plugins/slow/disable", json!({})).await;
    assert_eq!((status, body["state"].clone()), (StatusCode::OK, json!("stopping")), "{body}");
    let (status, body) = d.post("/admin/plugins/slow/enable", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(mirror_entry(&d.dir, "slow")["enabled"], true);
    let view = d.wait_plugin("slow", "settled", |v| matches!(v["state"].as_str(), Some("ready" | "disabled"))).await;
    assert_eq!(view["state"], "ready", "the enable was lost: {view}");
}

fn mirror_entry(dir: &Path, name: &str) -> Value {
    let doc: Value =
        serde_json::from_slice(&std::fs::read(dir.join("plugins.json")).expect("mirror")).expect("mirror JSON");
    doc["plugins"].as_array().expect("plugins").iter().find(|p| p["name"] == name).cloned().expect("entry")
}

#[tokio::test]
async fn enable_and_disable_survive_a_daemon_restart() {
    let tag = marker();
    let mut d = TestDaemon::start(vec![tagged_fake("keep", &tag)]).await;
    let tmp = d.take_dir().expect("temp dir");
    d.wait_ready("keep").await;

    let (status, _) = d.post("/admin/plugins/keep/disable", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mirror_entry(&d.dir, "keep")["enabled"], false);
    d.signal(nix::sys::signal::Signal::SIGTERM);
    d.wait_exit(WAIT).await;

    let mut d = TestDaemon::start_in(tmp.path(), None).await;
    let view = d.plugin("keep").await;
    assert_eq!(view["state"], "disabled", "{view}");
    assert!(pids_with_env("BKG_TEST_MARKER", &tag).is_empty(), "a disabled plug-in was started");
    let (status, _) = d.post("/admin/plugins/keep/enable", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    d.wait_ready("keep").await;
    assert_eq!(mirror_entry(&d.dir, "keep")["enabled"], true);
    d.signal(nix::sys::signal::Signal::SIGTERM);
    d.wait_exit(WAIT).await;

    let d = TestDaemon::start_in(tmp.path(), None).await;
    d.wait_ready("keep").await;
}

#[tokio::test]
async fn enable_and_disable_racing_config_changes_lose_neither() {
    let tag = marker();
    let d = TestDaemon::start(vec![tagged_fake("race", &tag)]).await;
    d.wait_ready("race").await;
    // Config answers come at once, so that many changes overlap the toggles.
    let (status, _) = put_settings(&d, "/admin/settings/plugins", json!({"config_apply_wait_ms": 0})).await;
    assert_eq!(status, StatusCode::OK);

    let changes = 40;
    let configs = (0..changes).map(|i| {
        let (http, url, token) = (d.http.clone(), d.url("/admin/plugins/race/config"), d.token.clone());
        async move {
            let body = json!({"config": {"starting_ms": i}});
            http.post(url).bearer_auth(token).json(&body).send().await.expect("POST config").status()
        }
    });
    // Toggles one after another (each answer before the next call), racing the config changes.
    let done = std::sync::atomic::AtomicBool::new(false);
    let toggles = async {
        let mut statuses = Vec::new();
        let mut disable = true;
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            let op = if disable { "disable" } else { "enable" };
            statuses.push(d.post(&format!("/admin/plugins/race/{op}"), json!({})).await.0);
            disable = !disable;
            // At every instant the stored spec holds the newest version's config: the two are
            // written in one transaction, and a toggle must not write an older copy of the spec.
            let (in_spec, newest) = stored_config(&d.dir, "race");
            assert_eq!(in_spec, newest, "after a toggle the stored spec holds an older config");
        }
        statuses
    };
    let configs = async {
        let statuses = futures_util::future::join_all(configs).await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        statuses
    };
    let (config_statuses, toggle_statuses) = tokio::join!(configs, toggles);
    assert!(config_statuses.iter().all(|s| *s == StatusCode::OK), "{config_statuses:?}");
    assert!(toggle_statuses.iter().all(|s| *s == StatusCode::OK), "{toggle_statuses:?}");
    let disabled = toggle_statuses.len() % 2 == 1;

    // The newest version is the config in the stored spec and in the mirror, and the last
    // toggle decided `enabled` in both.
    let (_, current) = d.get("/admin/plugins/race/config").await;
    let (_, history) = d.get("/admin/plugins/race/config/history").await;
    assert_eq!(current["version"], changes + 1, "every change is a version after the seeded one");
    assert_eq!(current["version"], history["versions"][0]["version"]);
    assert_eq!(current["config"], history["versions"][0]["config"], "the stored spec lost a config change");
    let entry = mirror_entry(&d.dir, "race");
    assert_eq!(entry["config"], current["config"], "the mirror lost a config change");
    assert_eq!(entry["enabled"], !disabled, "the mirror lost the last toggle");
    let view = settled(&d, "race").await;
    assert_eq!(view["state"] == "disabled", disabled, "{view}");
}

/// (config in the stored spec, config of the newest version), read in one transaction.
fn stored_config(dir: &Path, name: &str) -> (Value, Value) {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let mut conn = rusqlite::Connection::open_with_flags(dir.join("bkg.db"), flags).expect("open bkg.db");
    conn.busy_timeout(std::time::Duration::from_secs(5)).expect("busy_timeout");
    let tx = conn.transaction().expect("read transaction");
    let spec: String = tx.query_row("SELECT spec FROM plugins WHERE name = ?1", [name], |r| r.get(0)).expect("spec");
    let newest: String = tx
        .query_row(
            "SELECT config FROM plugin_config_versions WHERE plugin = ?1 ORDER BY version DESC LIMIT 1",
            [name],
            |r| r.get(0),
        )
        .expect("newest version");
    let spec: Value = serde_json::from_str(&spec).expect("spec JSON");
    (spec["config"].clone(), serde_json::from_str(&newest).expect("config JSON"))
}

/// `PUT` a settings group.
async fn put_settings(d: &TestDaemon, path: &str, body: Value) -> (StatusCode, Value) {
    let res = d.http.put(d.url(path)).bearer_auth(&d.token).json(&body).send().await.expect("PUT");
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}
