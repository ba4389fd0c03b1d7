//! The auth guard and the apikeys plug-in against the real daemon (issue: apikeys, "must hold").

use std::time::Duration;

use bkg_plugin_apikeys::scopes;
use nix::sys::signal::Signal;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::*;

/// Sends `method path` with `credential` as a Bearer token (or none) and a small JSON body.
async fn send(d: &TestDaemon, method: &str, path: &str, credential: Option<&str>) -> (StatusCode, Value) {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = d.http.request(method.clone(), d.url(path)).header("accept", "application/json");
    if let Some(c) = credential {
        req = req.bearer_auth(c);
    }
    if matches!(method, Method::POST | Method::PUT | Method::PATCH) {
        req = req.json(&json!({}));
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let body = res.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

/// Fills a route template with names that exist (or harmless ones that do not).
fn concrete(path: &str) -> String {
    path.replace("/admin/plugins/{name}/{op}", "/admin/plugins/ghost/start")
        .replace("/admin/plugins/{name}", "/admin/plugins/e")
        .replace("/admin/keys/{id}", "/admin/keys/AAAAAAAAAAAA")
        .replace("/admin/sessions/{id}", "/admin/sessions/AAAAAAAAAAAA")
        .replace("/admin/users/{name}", "/admin/users/nobody")
        .replace("{group}", "logging")
}

/// Paths whose `{name}` must not be a live plug-in because the admin call would change it.
fn concrete_for(method: &str, path: &str) -> String {
    match (method, path) {
        ("DELETE", "/admin/plugins/{name}") => "/admin/plugins/ghost".into(),
        ("POST", "/admin/plugins/{name}/rpc") => "/admin/plugins/ghost/rpc".into(),
        ("POST", "/admin/plugins/{name}/config") => "/admin/plugins/ghost/config".into(),
        _ => concrete(path),
    }
}

async fn create_key(d: &TestDaemon, token: &str, body: Value) -> Value {
    let res = d.http.post(d.url("/admin/keys")).bearer_auth(token).json(&body).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["cache-control"], "no-store");
    res.json().await.unwrap()
}

async fn create_user(d: &TestDaemon, name: &str, role: &str) -> String {
    let password = format!("{name}-password-123");
    let (status, body) = d.post("/admin/users", json!({"name": name, "password": password, "role": role})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    d.login(name, &password).await
}

fn expire_session(d: &TestDaemon, token: &str) {
    let sid = &token[5..17];
    let db = rusqlite::Connection::open(d.dir.join("bkg.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    let n = db.execute("UPDATE sessions SET expires_at = 1 WHERE sid = ?1", [sid]).unwrap();
    assert_eq!(n, 1);
}

/// Every guarded route × every kind of credential gets exactly what the scope table says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_matrix_for_every_guarded_route() {
    let d = TestDaemon::start(vec![echo_spec("e")]).await;
    d.wait_ready("e").await;
    let admin = d.token.clone();
    let viewer = create_user(&d, "vera", "viewer").await;
    let operator = create_user(&d, "otto", "operator").await;
    let expired = create_user(&d, "exa", "operator").await;
    expire_session(&d, &expired);
    let revoked = create_key(&d, &admin, json!({"name": "gone", "role": "admin"})).await;
    let (status, _) = d.delete(&format!("/admin/keys/{}", revoked["id"].as_str().unwrap())).await;
    assert_eq!(status, StatusCode::OK);
    let narrow = create_key(&d, &admin, json!({"name": "narrow", "scopes": ["metrics:read"]})).await;
    let mut wrong_crc = narrow["key"].as_str().unwrap().to_owned();
    let last = wrong_crc.pop().unwrap();
    wrong_crc.push(if last == 'z' { 'y' } else { 'z' });

    let role = |r: &str| scopes::for_role(r).unwrap();
    // (label, credential, Some(scopes) if valid)
    let credentials: Vec<(&str, Option<String>, Option<Vec<String>>)> = vec![
        ("no token", None, None),
        ("garbage", Some("garbage".into()), None),
        ("wrong crc", Some(wrong_crc), None),
        ("expired session", Some(expired), None),
        ("revoked key", Some(revoked["key"].as_str().unwrap().into()), None),
        ("key without the scope", Some(narrow["key"].as_str().unwrap().into()), Some(vec!["metrics:read".into()])),
        ("viewer", Some(viewer), Some(role("viewer"))),
        ("operator", Some(operator), Some(role("operator"))),
        ("admin", Some(admin), Some(role("admin"))),
    ];
    let mut checked = 0;
    for (method, template) in bkg::http::guard::guarded_routes() {
        if template == "/auth/logout" {
            continue; // would end the session under test; covered below
        }
        let scope = bkg::http::guard::required_scope(&method.parse().unwrap(), template).unwrap();
        let path = concrete_for(method, template);
        for (label, credential, granted) in &credentials {
            let (status, body) = send(&d, method, &path, credential.as_deref()).await;
            let allowed = granted.as_ref().map(|g| scope.is_empty() || g.iter().any(|s| s == scope));
            match allowed {
                None => assert_eq!(status, StatusCode::UNAUTHORIZED, "{label} {method} {path}: {body}"),
                Some(false) => assert_eq!(status, StatusCode::FORBIDDEN, "{label} {method} {path}: {body}"),
                // Past the guard the handler may still refuse (400, 404, or 503 for a plug-in that
                // is not registered here), but never for auth reasons.
                Some(true) => assert!(
                    ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN, StatusCode::INTERNAL_SERVER_ERROR]
                        .contains(&status)
                        && !body.to_string().contains("authentication"),
                    "{label} {method} {path} should pass the guard: {status} {body}"
                ),
            }
            checked += 1;
        }
    }
    assert!(checked >= 9 * 25, "only {checked} combinations checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_and_termination_deny_the_very_next_request() {
    let d = TestDaemon::start(vec![]).await;
    let key = create_key(&d, &d.token, json!({"name": "k", "role": "viewer"})).await;
    let token = key["key"].as_str().unwrap();
    assert_eq!(send(&d, "GET", "/admin/plugins", Some(token)).await.0, StatusCode::OK);
    d.delete(&format!("/admin/keys/{}", key["id"].as_str().unwrap())).await;
    assert_eq!(send(&d, "GET", "/admin/plugins", Some(token)).await.0, StatusCode::UNAUTHORIZED);

    let session = create_user(&d, "sam", "viewer").await;
    assert_eq!(send(&d, "GET", "/admin/plugins", Some(&session)).await.0, StatusCode::OK);
    let sid = &session[5..17];
    let (status, body) = d.delete(&format!("/admin/sessions/{sid}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(send(&d, "GET", "/admin/plugins", Some(&session)).await.0, StatusCode::UNAUTHORIZED);

    // Logout ends the caller's own session.
    let other = create_user(&d, "lou", "viewer").await;
    assert_eq!(send(&d, "POST", "/auth/logout", Some(&other)).await.0, StatusCode::OK);
    assert_eq!(send(&d, "GET", "/auth/me", Some(&other)).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_cannot_escalate_and_unknown_scopes_are_rejected() {
    let d = TestDaemon::start(vec![]).await;
    let creator = create_key(&d, &d.token, json!({"name": "c", "scopes": ["keys:write", "plugins:read"]})).await;
    let creator = creator["key"].as_str().unwrap();
    let res = d
        .http
        .post(d.url("/admin/keys"))
        .bearer_auth(creator)
        .json(&json!({"name": "x", "scopes": ["plugins:control"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = d
        .http
        .post(d.url("/admin/keys"))
        .bearer_auth(creator)
        .json(&json!({"name": "x", "scopes": ["plugins:read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED, "a subset is fine");
    let (status, body) = d.post("/admin/keys", json!({"name": "x", "scopes": ["plugin:write"]})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"]["message"].as_str().unwrap().contains("plugin:write"), "{body}");
    let (status, _) = d.post("/admin/keys", json!({"name": "x", "role": "root"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = d.post("/admin/keys", json!({"name": "x", "scopes": ["plugins:read"], "colour": 1})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apikeys_down_or_hung_fails_closed_and_credentials_survive_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = TestDaemon::start_in(tmp.path(), Some(json!({"plugins": [echo_spec("e")]}))).await;
    let key = create_key(&d, &d.token, json!({"name": "k", "role": "viewer"})).await;
    let key = key["key"].as_str().unwrap().to_owned();
    let session = d.token.clone();
    let pid = d.wait_ready("apikeys").await["pid"].as_u64().unwrap() as i32;

    // Hung: validation misses its 500 ms deadline → 503, never 200.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    let (status, body) = send(&d, "GET", "/admin/plugins", Some(&key)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(send(&d, "GET", "/admin/plugins", None).await.0, StatusCode::UNAUTHORIZED, "no credential is still 401");

    // Killed: every answer is 503 until it is back, then the same credentials work again.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    wait_for("apikeys back", WAIT, || async {
        let (status, _) = send(&d, "GET", "/admin/plugins", Some(&key)).await;
        assert!(status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE, "{status}");
        (status == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(send(&d, "GET", "/auth/me", Some(&session)).await.0, StatusCode::OK);

    // Daemon restart: sessions and keys live in bkg.db.
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(15)).await.code(), Some(0));
    drop(d);
    let d = TestDaemon::start_in(tmp.path(), None).await;
    assert_eq!(send(&d, "GET", "/admin/plugins", Some(&key)).await.0, StatusCode::OK);
    assert_eq!(send(&d, "GET", "/auth/me", Some(&session)).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_throttle_per_ip_with_retry_after() {
    let d = TestDaemon::start(vec![]).await;
    let from = |ip: [u8; 4]| reqwest::Client::builder().local_address(std::net::IpAddr::from(ip)).build().unwrap();
    let (a, b) = (from([127, 0, 0, 2]), from([127, 0, 0, 3]));
    let bad = json!({"user": "admin", "password": "not the password"});
    for i in 0..5 {
        let res = a.post(d.url("/auth/login")).json(&bad).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let res = a.post(d.url("/auth/login")).json(&bad).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let good = json!({"user": "admin", "password": ADMIN_PASSWORD});
    assert_eq!(a.post(d.url("/auth/login")).json(&good).send().await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(b.post(d.url("/auth/login")).json(&good).send().await.unwrap().status(), StatusCode::OK);
    let (_, audit) = d.get("/admin/audit?action=auth.login.failed").await;
    assert_eq!(audit["events"].as_array().unwrap().len(), 5, "{audit}");
    let (_, audit) = d.get("/admin/audit?action=auth.login.throttled").await;
    assert_eq!(audit["events"][0]["ip"], "127.0.0.2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_sessions_need_csrf_and_same_origin() {
    let d = TestDaemon::start(vec![echo_spec("e")]).await;
    d.wait_ready("e").await;
    let (cookie, csrf) = d.cookie_login().await;
    let csrf = csrf.as_str();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_owned();
    let post = |csrf: Option<&str>, origin: Option<&str>| {
        let mut req = d.http.post(d.url("/admin/plugins/e/restart")).header("cookie", &pair).json(&json!({}));
        if let Some(c) = csrf {
            req = req.header("x-csrf-token", c);
        }
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send()
    };
    assert_eq!(post(None, None).await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(post(Some("wrong"), None).await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(post(Some(csrf), Some("http://evil.example")).await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(post(Some(csrf), None).await.unwrap().status(), StatusCode::OK);
    // Safe methods with the cookie need no CSRF token; Bearer requests never do.
    let res = d.http.get(d.url("/admin/plugins")).header("cookie", &pair).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(d.post("/admin/plugins/e/restart", json!({})).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_audit_streams_or_error_bodies() {
    let d = TestDaemon::start(vec![echo_spec("e")]).await;
    let key = create_key(&d, &d.token, json!({"name": "k", "role": "operator"})).await;
    let key = key["key"].as_str().unwrap().to_owned();
    let session = d.token.clone();
    let mut bodies = Vec::new();
    // Use every secret in requests that succeed and in requests that fail.
    bodies.push(send(&d, "GET", "/admin/plugins", Some(&key)).await.1);
    bodies.push(send(&d, "GET", "/admin/keys", Some(&key)).await.1);
    let mut bad = key.clone();
    bad.pop();
    bodies.push(send(&d, "GET", "/admin/plugins", Some(&bad)).await.1);
    bodies.push(d.post("/auth/login", json!({"user": "admin", "password": format!("{ADMIN_PASSWORD}x")})).await.1);
    bodies.push(d.post("/admin/users", json!({"name": "u", "password": "short"})).await.1);
    bodies.push(d.post("/admin/plugins/e/rpc", json!({"method": "echo.echo", "params": {"note": "x"}})).await.1);
    let (_, audit) = send(&d, "GET", "/admin/audit?limit=500", Some(&session)).await;
    let (_, logs) = send(&d, "GET", "/admin/plugins/apikeys/logs?tail=1000", Some(&session)).await;
    let (_, all_logs) = send(&d, "GET", "/admin/logs?tail=1000", Some(&session)).await;
    assert!(logs.as_array().is_some_and(|l| !l.is_empty()), "{logs}");
    let haystacks = [
        d.logs().join("\n"),
        audit.to_string(),
        logs.to_string(),
        all_logs.to_string(),
        bodies.iter().map(Value::to_string).collect::<Vec<_>>().join("\n"),
    ];
    let secrets = [key.as_str(), &key[..key.len() - 6], session.as_str(), &session[18..50], ADMIN_PASSWORD];
    for (i, hay) in haystacks.iter().enumerate() {
        for secret in secrets {
            assert!(!hay.contains(secret), "secret {secret:?} leaked into haystack {i}");
        }
    }
    assert!(audit["events"].as_array().unwrap().iter().any(|e| e["action"] == "key.created"), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_generates_a_password_and_rotation_works() {
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDaemon::try_start_in(tmp.path(), Some(json!({"plugins": [apikeys_spec()]})), &[("ADMIN_PASSWORD", "")])
        .await
        .unwrap();
    let line = wait_for("the generated password on the console", WAIT, || async {
        d.logs().into_iter().find(|l| l.contains("created user \"admin\" with password:"))
    })
    .await;
    let password = line.rsplit(": ").next().unwrap().trim().to_owned();
    let token = d.login("admin", &password).await;
    assert_eq!(send(&d, "GET", "/auth/me", Some(&token)).await.0, StatusCode::OK);
    drop(d);
    // Restart without ADMIN_PASSWORD: nothing new is generated or printed; the password stays.
    let d = TestDaemon::try_start_in(tmp.path(), None, &[("ADMIN_PASSWORD", "")]).await.unwrap();
    d.login("admin", &password).await;
    assert!(!d.logs().iter().any(|l| l.contains("with password:")));
    drop(d);
    // Rotation: a new ADMIN_PASSWORD replaces the old one and ends the admin's sessions.
    let d = TestDaemon::try_start_in(tmp.path(), None, &[("ADMIN_PASSWORD", "rotated-password-42")]).await.unwrap();
    assert_eq!(send(&d, "GET", "/auth/me", Some(&token)).await.0, StatusCode::UNAUTHORIZED);
    let res =
        d.http.post(d.url("/auth/login")).json(&json!({"user": "admin", "password": password})).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}
