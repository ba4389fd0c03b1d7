//! `/admin/plugins/{name}/config`, `…/config/history` and `/admin/settings` against the real
//! daemon: the happy path (versioned, mirrored, applied by a restart, redacted), a matrix of bad
//! requests that must change nothing on disk, SIGKILL in the middle of a config-update loop, and
//! settings that take effect without a restart.
//!
//! "Nothing changed on disk" is checked in two ways. The mirror `plugins.json` is compared byte
//! for byte. `bkg.db` runs in WAL mode, where the main file alone says little (a committed change
//! can sit in `bkg.db-wal` while `bkg.db` is untouched), so the test first checkpoints the WAL
//! into the main file from its own connection (`PRAGMA wal_checkpoint(TRUNCATE)`, which SQLite
//! allows while the daemon has the database open) and then compares `bkg.db` byte for byte; any
//! commit in between would have changed at least the header's change counter. A logical dump of
//! every table is compared too, so that a failure shows which rows changed.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestDaemon, WAIT, echo_spec, wait_for};

/// A disabled plug-in with secrets in its config (never started, so it declares no schema).
fn vault_spec() -> Value {
    json!({
        "name": "vault",
        "builtin": "echo",
        "enabled": false,
        "config": {
            "api_key": "k-123",
            "upstream": {"url": "http://127.0.0.1:1", "Password": "p-456"},
            "max_tokens": 5
        }
    })
}

/// The database as bytes (after a checkpoint) and as a readable dump of every table.
fn db_state(dir: &Path) -> (Vec<u8>, String) {
    let path = dir.join("bkg.db");
    {
        let conn = rusqlite::Connection::open(&path).expect("open bkg.db");
        conn.busy_timeout(Duration::from_secs(5)).expect("busy_timeout");
        let (busy, _, _): (i64, i64, i64) = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("checkpoint");
        assert_eq!(busy, 0, "the checkpoint could not complete");
    }
    let bytes = std::fs::read(&path).expect("read bkg.db");
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let conn = rusqlite::Connection::open_with_flags(&path, flags).expect("open read-only");
    let mut dump = String::new();
    let tables: Vec<String> = {
        let mut stmt =
            conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").expect("tables");
        stmt.query_map([], |r| r.get(0)).expect("query").collect::<Result<_, _>>().expect("rows")
    };
    for table in tables {
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{table}\" ORDER BY 1, 2")).expect("select");
        let columns = stmt.column_count();
        let rows = stmt
            .query_map([], |r| {
                (0..columns)
                    .map(|i| r.get::<_, rusqlite::types::Value>(i).map(|v| format!("{v:?}")))
                    .collect::<Result<Vec<_>, _>>()
            })
            .expect("rows");
        for row in rows {
            dump.push_str(&format!("{table}: {}\n", row.expect("row").join(" | ")));
        }
    }
    (bytes, dump)
}

fn mirror(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("plugins.json")).expect("read the plugins.json mirror")
}

fn mirror_config(dir: &Path, name: &str) -> Value {
    let doc: Value = serde_json::from_slice(&mirror(dir)).expect("mirror is JSON");
    doc["plugins"].as_array().expect("plugins").iter().find(|p| p["name"] == name).expect("entry")["config"].clone()
}

/// (newest version, its config, the config inside the stored spec) read straight from bkg.db.
fn db_config(dir: &Path, name: &str) -> (i64, Value, Value) {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let conn = rusqlite::Connection::open_with_flags(dir.join("bkg.db"), flags).expect("open read-only");
    let (version, config): (i64, String) = conn
        .query_row(
            "SELECT version, config FROM plugin_config_versions WHERE plugin = ?1 ORDER BY version DESC LIMIT 1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("newest version");
    let spec: String =
        conn.query_row("SELECT spec FROM plugins WHERE name = ?1", [name], |r| r.get(0)).expect("stored spec");
    let spec: Value = serde_json::from_str(&spec).expect("spec is JSON");
    (version, serde_json::from_str(&config).expect("config is JSON"), spec["config"].clone())
}

/// Sends raw bytes with the admin token.
async fn raw(
    d: &TestDaemon,
    method: reqwest::Method,
    path: &str,
    body: Vec<u8>,
    json_type: bool,
) -> (StatusCode, Value) {
    let mut req = d.http.request(method, d.url(path)).bearer_auth(&d.token).body(body);
    if json_type {
        req = req.header("content-type", "application/json");
    }
    let res = req.send().await.expect("request");
    let status = res.status();
    let text = res.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// `PUT` with a JSON body and the admin token.
async fn put(d: &TestDaemon, path: &str, body: Value) -> (StatusCode, Value) {
    raw(d, reqwest::Method::PUT, path, body.to_string().into_bytes(), true).await
}

#[tokio::test]
async fn config_update_is_versioned_mirrored_applied_and_redacted() {
    let d = TestDaemon::start(vec![echo_spec("echo"), vault_spec()]).await;
    let before = d.wait_ready("echo").await;
    let generation = before["generation"].as_u64().expect("generation");

    let (status, body) = d.get("/admin/plugins/echo/config").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"name": "echo", "version": 1, "config": {}}));

    // Apply: a new version, the plug-in restarted (new generation) and running the new config.
    let (status, body) = d.post("/admin/plugins/echo/config", json!({"config": {"prefix": "v2-"}})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 2);
    assert_eq!(body["changed"], true);
    assert_eq!(body["state"], "ready", "the answer waits until the restarted plug-in settled: {body}");
    assert!(body["generation"].as_u64().expect("generation") > generation, "{body}");
    let (status, res) = d.rpc("echo", "echo.upper", json!({"text": "hi"}), None).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(res["result"]["text"], "v2-HI");
    assert_eq!(mirror_config(&d.dir, "echo"), json!({"prefix": "v2-"}));
    let (version, config, in_spec) = db_config(&d.dir, "echo");
    assert_eq!((version, &config, &in_spec), (2, &json!({"prefix": "v2-"}), &json!({"prefix": "v2-"})));

    // The GET body can be posted back as it is; the same config again changes nothing.
    let (_, current) = d.get("/admin/plugins/echo/config").await;
    let (status, body) = d.post("/admin/plugins/echo/config", current).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["version"].clone(), body["changed"].clone()), (json!(2), json!(false)));

    // An edit based on an old version is refused instead of overwriting a newer change.
    let (status, body) = d.post("/admin/plugins/echo/config", json!({"config": {"prefix": "x"}, "version": 1})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "conflict");

    let (status, history) = d.get("/admin/plugins/echo/config/history").await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let versions: Vec<i64> =
        history["versions"].as_array().expect("versions").iter().map(|v| v["version"].as_i64().unwrap()).collect();
    assert_eq!(versions, vec![2, 1]);
    assert!(history["versions"][0]["actor"].as_str().is_some_and(|a| !a.is_empty()), "{history}");
    assert_eq!(history["versions"][0]["config"], json!({"prefix": "v2-"}));

    // Secrets: redacted on read (strings only), kept when "***" is posted back.
    let (_, vault) = d.get("/admin/plugins/vault/config").await;
    assert_eq!(
        vault["config"],
        json!({"api_key": "***", "upstream": {"url": "http://127.0.0.1:1", "Password": "***"}, "max_tokens": 5})
    );
    assert!(!vault.to_string().contains("k-123") && !vault.to_string().contains("p-456"));
    let mut edited = vault.clone();
    edited["config"]["max_tokens"] = json!(6);
    let (status, body) = d.post("/admin/plugins/vault/config", edited).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["version"].clone(), body["state"].clone()), (json!(2), json!("disabled")));
    let (_, stored, _) = db_config(&d.dir, "vault");
    assert_eq!(
        stored,
        json!({"api_key": "k-123", "upstream": {"url": "http://127.0.0.1:1", "Password": "p-456"}, "max_tokens": 6})
    );
    // Each change is audited (who, what, which version), without the config and its secrets.
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let conn = rusqlite::Connection::open_with_flags(d.dir.join("bkg.db"), flags).expect("open");
    let mut stmt = conn
        .prepare("SELECT target, detail FROM audit WHERE action = 'config.update' ORDER BY id")
        .expect("audit query");
    let rows: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("audit rows")
        .collect::<Result<_, _>>()
        .expect("audit rows");
    assert_eq!(rows, vec![("echo".into(), r#"{"version":2}"#.into()), ("vault".into(), r#"{"version":2}"#.into())]);
    drop(stmt);
    drop(conn);
    let (_, history) = d.get("/admin/plugins/vault/config/history").await;
    assert_eq!(history["versions"].as_array().map(Vec::len), Some(2));
    assert!(!history.to_string().contains("k-123") && !history.to_string().contains("p-456"), "{history}");
}

#[tokio::test]
async fn rejected_requests_change_nothing_in_the_database_the_mirror_or_the_plug_in() {
    let d = TestDaemon::start(vec![echo_spec("echo"), vault_spec()]).await;
    let ready = d.wait_ready("echo").await;
    let (db_before, dump_before) = db_state(&d.dir);
    let mirror_before = mirror(&d.dir);
    let big = format!("{{\"config\": {{\"prefix\": \"{}\"}}}}", "x".repeat(2 * 1024 * 1024)).into_bytes();

    use reqwest::Method;
    // (what, method, path, body, JSON content type, status, error code, details.field)
    let long_name = format!("/admin/plugins/{}/config", "a".repeat(33));
    let cases: Vec<(&str, Method, &str, Vec<u8>, bool, u16, &str, Option<&str>)> = vec![
        (
            "malformed JSON",
            Method::POST,
            "/admin/plugins/echo/config",
            b"{\"config\": {".to_vec(),
            true,
            400,
            "bad_request",
            Some("body"),
        ),
        (
            "not JSON at all",
            Method::POST,
            "/admin/plugins/echo/config",
            b"prefix=x".to_vec(),
            true,
            400,
            "bad_request",
            Some("body"),
        ),
        (
            "no content type",
            Method::POST,
            "/admin/plugins/echo/config",
            b"{\"config\": {}}".to_vec(),
            false,
            400,
            "bad_request",
            Some("content-type"),
        ),
        (
            "body not an object",
            Method::POST,
            "/admin/plugins/echo/config",
            b"[1, 2]".to_vec(),
            true,
            400,
            "bad_request",
            Some("body"),
        ),
        (
            "config missing",
            Method::POST,
            "/admin/plugins/echo/config",
            b"{}".to_vec(),
            true,
            400,
            "bad_request",
            Some("body"),
        ),
        (
            "config not an object",
            Method::POST,
            "/admin/plugins/echo/config",
            b"{\"config\": \"x\"}".to_vec(),
            true,
            400,
            "bad_request",
            Some("config"),
        ),
        (
            "config null",
            Method::POST,
            "/admin/plugins/echo/config",
            b"{\"config\": null}".to_vec(),
            true,
            400,
            "bad_request",
            Some("config"),
        ),
        (
            "unknown body field",
            Method::POST,
            "/admin/plugins/echo/config",
            b"{\"config\": {}, \"extra\": 1}".to_vec(),
            true,
            400,
            "bad_request",
            Some("body"),
        ),
        (
            "version of the wrong type",
            Method::POST,
            "/admin/plugins/echo/config",
            b"{\"config\": {}, \"version\": \"one\"}".to_vec(),
            true,
            400,
            "bad_request",
            Some("body"),
        ),
        (
            "schema: wrong type",
            Method::POST,
            "/admin/plugins/echo/config",
            b"{\"config\": {\"prefix\": 5}}".to_vec(),
            true,
            400,
            "bad_request",
            Some("config.prefix"),
        ),
        (
            "schema: unknown key",
            Method::POST,
            "/admin/plugins/echo/config",
            b"{\"config\": {\"prefx\": \"a\"}}".to_vec(),
            true,
            400,
            "bad_request",
            Some("config.prefx"),
        ),
        (
            "*** with no stored secret",
            Method::POST,
            "/admin/plugins/vault/config",
            b"{\"config\": {\"token\": \"***\"}}".to_vec(),
            true,
            400,
            "bad_request",
            Some("config.token"),
        ),
        (
            "name differs from the path",
            Method::POST,
            "/admin/plugins/echo/config",
            b"{\"name\": \"vault\", \"config\": {}}".to_vec(),
            true,
            400,
            "bad_request",
            Some("name"),
        ),
        (
            "stale base version",
            Method::POST,
            "/admin/plugins/echo/config",
            b"{\"version\": 0, \"config\": {\"prefix\": \"a\"}}".to_vec(),
            true,
            409,
            "conflict",
            None,
        ),
        ("oversized body", Method::POST, "/admin/plugins/echo/config", big, true, 413, "payload_too_large", None),
        (
            "unknown plug-in",
            Method::POST,
            "/admin/plugins/nope/config",
            b"{\"config\": {}}".to_vec(),
            true,
            404,
            "not_found",
            None,
        ),
        ("unknown plug-in (read)", Method::GET, "/admin/plugins/nope/config", vec![], false, 404, "not_found", None),
        (
            "unknown plug-in (history)",
            Method::GET,
            "/admin/plugins/nope/config/history",
            vec![],
            false,
            404,
            "not_found",
            None,
        ),
        (
            "traversal in the name",
            Method::POST,
            "/admin/plugins/..%2Fx/config",
            b"{\"config\": {}}".to_vec(),
            true,
            400,
            "bad_request",
            Some("name"),
        ),
        (
            "upper-case name",
            Method::POST,
            "/admin/plugins/A/config",
            b"{\"config\": {}}".to_vec(),
            true,
            400,
            "bad_request",
            Some("name"),
        ),
        ("name too long", Method::GET, &long_name, vec![], false, 400, "bad_request", Some("name")),
        (
            "unknown settings group",
            Method::PUT,
            "/admin/settings/colours",
            b"{}".to_vec(),
            true,
            404,
            "not_found",
            None,
        ),
        (
            "settings: unknown field",
            Method::PUT,
            "/admin/settings/logging",
            b"{\"levle\": \"debug\"}".to_vec(),
            true,
            400,
            "bad_request",
            Some("logging.levle"),
        ),
        (
            "settings: bad level",
            Method::PUT,
            "/admin/settings/logging",
            b"{\"level\": \"loud\"}".to_vec(),
            true,
            400,
            "bad_request",
            Some("logging.level"),
        ),
        (
            "settings: wrong type",
            Method::PUT,
            "/admin/settings/retention",
            b"{\"config_versions_kept\": \"5\"}".to_vec(),
            true,
            400,
            "bad_request",
            Some("retention.config_versions_kept"),
        ),
        (
            "settings: out of range",
            Method::PUT,
            "/admin/settings/security",
            b"{\"body_limit_bytes\": 1}".to_vec(),
            true,
            400,
            "bad_request",
            Some("security.body_limit_bytes"),
        ),
        (
            "settings: malformed JSON",
            Method::PUT,
            "/admin/settings/plugins",
            b"{".to_vec(),
            true,
            400,
            "bad_request",
            Some("body"),
        ),
    ];
    for (what, method, path, body, json_type, status, code, field) in cases {
        let (got, answer) = raw(&d, method, path, body, json_type).await;
        assert_eq!(got.as_u16(), status, "{what}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{what}: {answer}");
        assert!(answer["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {answer}");
        if let Some(field) = field {
            assert_eq!(answer["error"]["details"]["field"], field, "{what}: {answer}");
            assert!(answer["error"]["details"]["reason"].is_string(), "{what}: {answer}");
        }
    }

    let (db_after, dump_after) = db_state(&d.dir);
    assert_eq!(dump_after, dump_before, "a rejected request changed bkg.db");
    assert!(db_after == db_before, "a rejected request changed the bytes of bkg.db");
    assert!(mirror(&d.dir) == mirror_before, "a rejected request changed plugins.json");
    let now = d.plugin("echo").await;
    assert_eq!((now["state"].clone(), now["generation"].clone()), (json!("ready"), ready["generation"].clone()));
    assert_eq!(now["pid"], ready["pid"], "a rejected config restarted the plug-in");
}

#[tokio::test]
async fn sigkill_during_config_updates_leaves_db_and_mirror_at_the_last_acknowledged_version() {
    let mut d = TestDaemon::start(vec![echo_spec("echo")]).await;
    let tmp = d.take_dir().expect("temp dir");
    d.wait_ready("echo").await;

    // Updates in a loop: each config names its loop index, each 200 records (version, index).
    let acked = Arc::new(AtomicI64::new(0));
    let acked_index = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (http, url, token) = (d.http.clone(), d.url("/admin/plugins/echo/config"), d.token.clone());
    let writer = {
        let (acked, acked_index, stop) = (Arc::clone(&acked), Arc::clone(&acked_index), Arc::clone(&stop));
        tokio::spawn(async move {
            for i in 1.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let body = json!({"config": {"prefix": format!("p{i}-")}});
                let Ok(res) = http.post(&url).bearer_auth(&token).json(&body).send().await else { break };
                if res.status() != StatusCode::OK {
                    break;
                }
                let Ok(answer) = res.json::<Value>().await else { break };
                acked_index.store(i, Ordering::SeqCst);
                acked.store(answer["version"].as_i64().expect("version"), Ordering::SeqCst);
            }
        })
    };
    let target = 3 + i64::from(rand::random::<u8>() % 8);
    wait_for("some acknowledged updates", WAIT, || async { (acked.load(Ordering::SeqCst) >= target).then_some(()) })
        .await;
    d.signal(nix::sys::signal::Signal::SIGKILL);
    d.wait_exit(WAIT).await;
    stop.store(true, Ordering::SeqCst);
    writer.await.expect("writer task");
    let last_acked = acked.load(Ordering::SeqCst);
    let last_index = acked_index.load(Ordering::SeqCst);
    assert!(last_acked > 1, "no update was acknowledged");

    let d = TestDaemon::start_in(tmp.path(), None).await;
    d.wait_ready("echo").await;
    let (version, config, in_spec) = db_config(&d.dir, "echo");
    assert!(
        version == last_acked || version == last_acked + 1,
        "bkg.db holds version {version}, the last acknowledged was {last_acked}"
    );
    // Version n (n ≥ 2) was written by loop index n - 1.
    let expected_prefix = format!("p{}-", last_index + (version - last_acked));
    assert_eq!(config, json!({"prefix": expected_prefix}));
    assert_eq!(in_spec, config, "the stored spec and the newest version disagree");
    assert_eq!(mirror_config(&d.dir, "echo"), config, "the mirror and bkg.db disagree");
    let (_, api) = d.get("/admin/plugins/echo/config").await;
    assert_eq!((api["version"].as_i64(), &api["config"]), (Some(version), &config));
    let (status, res) = d.rpc("echo", "echo.upper", json!({"text": "a"}), None).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(res["result"]["text"], format!("{expected_prefix}A"), "the plug-in runs another config");
}

#[tokio::test]
async fn settings_apply_at_runtime_persist_and_yield_to_flags_and_env() {
    let mut d = TestDaemon::start(vec![echo_spec("echo")]).await;
    let tmp = d.take_dir().expect("temp dir");
    d.wait_ready("echo").await;

    let (status, all) = d.get("/admin/settings").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    for group in ["logging", "security", "plugins", "retention"] {
        assert_eq!(all["groups"][group]["group"], group, "{all}");
        assert_eq!(all["groups"][group]["stored"], Value::Null, "{all}");
    }
    // The harness sets BKG_LOG_LEVEL=info: reported as an override.
    assert!(all["groups"]["logging"]["overrides"]["level"].as_str().is_some_and(|s| s.contains("BKG_LOG_LEVEL")));

    // logging.level: the daemon's own debug lines appear at once, without a restart.
    let marker = "settings changed";
    let debug_lines = |d: &TestDaemon| {
        d.logs().iter().filter(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v["level"] == "DEBUG")).count()
    };
    assert_eq!(debug_lines(&d), 0, "debug lines before the change");
    let (status, body) = put(&d, "/admin/settings/logging", json!({"level": "debug"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["value"], json!({"level": "debug"}));
    assert_eq!(body["stored"], json!({"level": "debug"}));
    assert!(body["updated_by"].as_str().is_some_and(|a| !a.is_empty()), "{body}");
    wait_for("the change is logged", WAIT, || async { d.logs().iter().any(|l| l.contains(marker)).then_some(()) })
        .await;
    // The operator rpc route logs at debug level, and the level reached the plug-in too: echo
    // logs each call at debug level.
    let (status, _) = d.rpc("echo", "echo.upper", json!({"text": "a"}), None).await;
    assert_eq!(status, StatusCode::OK);
    wait_for("debug lines from the daemon", WAIT, || async { (debug_lines(&d) > 0).then_some(()) }).await;
    wait_for("a debug line from the plug-in", WAIT, || async {
        let detail = d.plugin("echo").await;
        let lines = detail["last_lines"].as_array().cloned().unwrap_or_default();
        lines.iter().any(|l| l["level"] == "debug" && l["msg"] == "call").then_some(())
    })
    .await;

    // security.body_limit_bytes: a body the default accepted is now 413, at once.
    let (status, _) = put(&d, "/admin/settings/security", json!({"body_limit_bytes": 2048})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = d.post("/admin/plugins/echo/config", json!({"config": {"prefix": "x".repeat(4096)}})).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");
    // The same without a Content-Length (chunked): cut off at the limit while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(b"{\"config\": {\"prefix\": \"".to_vec()), Ok(vec![b'y'; 4096]), Ok(b"\"}}".to_vec())];
    let res = d
        .http
        .post(d.url("/admin/plugins/echo/config"))
        .bearer_auth(&d.token)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .expect("chunked POST");
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = res.json().await.expect("JSON error");
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    // Under the limit still works, on whatever connection the client picks next.
    let (status, body) = d.post("/admin/plugins/echo/config", json!({"config": {"prefix": "small"}})).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // retention.config_versions_kept: trims the history now and after every update.
    for i in 0..4 {
        let (status, body) = d.post("/admin/plugins/echo/config", json!({"config": {"prefix": format!("{i}")}})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, _) = put(&d, "/admin/settings/retention", json!({"config_versions_kept": 2})).await;
    assert_eq!(status, StatusCode::OK);
    let versions = |h: &Value| -> Vec<i64> {
        h["versions"].as_array().expect("versions").iter().map(|v| v["version"].as_i64().unwrap()).collect()
    };
    let (_, history) = d.get("/admin/plugins/echo/config/history").await;
    assert_eq!(versions(&history), vec![6, 5]);
    let (status, _) = d.post("/admin/plugins/echo/config", json!({"config": {"prefix": "z"}})).await;
    assert_eq!(status, StatusCode::OK);
    let (_, history) = d.get("/admin/plugins/echo/config/history").await;
    assert_eq!(versions(&history), vec![7, 6]);

    // plugins.config_apply_wait_ms = 0: the answer comes before the restart finished.
    let (status, _) = put(&d, "/admin/settings/plugins", json!({"config_apply_wait_ms": 0})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = d.post("/admin/plugins/echo/config", json!({"config": {"prefix": "w"}})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(matches!(body["state"].as_str(), Some("stopping" | "starting")), "{body}");
    d.wait_ready("echo").await;

    // Every change is audited.
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let conn = rusqlite::Connection::open_with_flags(d.dir.join("bkg.db"), flags).expect("open");
    let audited: i64 =
        conn.query_row("SELECT count(*) FROM audit WHERE action = 'settings.update'", [], |r| r.get(0)).expect("audit");
    assert_eq!(audited, 4);
    drop(conn);

    // After a restart: stored values apply, except where a flag or env variable says otherwise.
    d.signal(nix::sys::signal::Signal::SIGTERM);
    d.wait_exit(WAIT).await;
    let d = TestDaemon::try_start_in(tmp.path(), None, &[("BKG_CONFIG_VERSIONS_KEPT", "3")])
        .await
        .unwrap_or_else(|logs| panic!("restart failed:\n{logs}"));
    let (_, all) = d.get("/admin/settings").await;
    let groups = &all["groups"];
    assert_eq!(groups["logging"]["value"]["level"], "info", "BKG_LOG_LEVEL=info wins over the database");
    assert_eq!(groups["logging"]["stored"]["level"], "debug");
    assert_eq!(groups["security"]["value"]["body_limit_bytes"], 2048);
    assert_eq!(groups["plugins"]["value"]["config_apply_wait_ms"], 0);
    assert_eq!(groups["retention"]["value"]["config_versions_kept"], 3);
    assert!(groups["retention"]["overrides"]["config_versions_kept"].is_string(), "{all}");
    assert_eq!(groups["security"]["overrides"], json!({}));

    // A bad env value is a configuration error: exit 78 before anything starts.
    drop(d);
    let err = TestDaemon::try_start_in(tmp.path(), None, &[("BKG_BODY_LIMIT_BYTES", "5")]).await;
    let logs = err.err().expect("the daemon must refuse a bad setting");
    assert!(logs.contains("security.body_limit_bytes"), "{logs}");
}
