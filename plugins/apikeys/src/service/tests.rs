//! The plug-in's methods against a real SQLite file built from `schema.sql`.

use serde_json::{Value, json};

use super::*;

const SCHEMA: &str = include_str!("../../../../schema.sql");

async fn plugin() -> (ApiKeys, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bkg.db");
    rusqlite::Connection::open(&path).unwrap().execute_batch(SCHEMA).unwrap();
    let p = ApiKeys::default();
    let params = InitializeParams {
        protocol_versions: vec![1],
        config: json!({"database": path, "bcrypt_cost": 4, "admin_password": "correct horse battery"}),
        ..InitializeParams::default()
    };
    p.initialize(&params).await.unwrap();
    (p, dir)
}

async fn call(p: &ApiKeys, method: &str, params: Value) -> Result<Value, RpcError> {
    p.call(method, params, CallContext::detached()).await
}

async fn admin_session(p: &ApiKeys) -> Value {
    let res = call(p, "auth.login", json!({"user": "admin", "password": "correct horse battery"})).await.unwrap();
    assert_eq!(res["ok"], true, "{res}");
    res
}

#[tokio::test]
async fn login_validate_logout() {
    let (p, _dir) = plugin().await;
    let bad = call(&p, "auth.login", json!({"user": "admin", "password": "wrong password!"})).await.unwrap();
    assert_eq!(bad, json!({"ok": false, "reason": "invalid_credentials"}));
    let nobody = call(&p, "auth.login", json!({"user": "nobody", "password": "whatever at all"})).await.unwrap();
    assert_eq!(nobody["ok"], false);
    let login = admin_session(&p).await;
    let token = login["token"].as_str().unwrap();
    let v = call(&p, "auth.validate", json!({"token": token, "scope": "keys:write"})).await.unwrap();
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["principal"]["role"], "admin");
    // CSRF token bound to the session.
    let csrf = login["csrf_token"].as_str().unwrap();
    let ok = call(&p, "auth.validate", json!({"token": token, "csrf_token": csrf})).await.unwrap();
    assert_eq!(ok["valid"], true);
    let bad = call(&p, "auth.validate", json!({"token": token, "csrf_token": "nope"})).await.unwrap();
    assert_eq!(bad["reason"], "csrf");
    call(&p, "auth.logout", json!({"session_id": login["session_id"]})).await.unwrap();
    let v = call(&p, "auth.validate", json!({"token": token})).await.unwrap();
    assert_eq!(v, json!({"valid": false, "reason": "unknown"}));
}

#[tokio::test]
async fn keys_are_scoped_revocable_and_cannot_escalate() {
    let (p, _dir) = plugin().await;
    let viewer = scopes::for_role("viewer").unwrap();
    let created = call(
        &p,
        "auth.keys.create",
        json!({"name": "ci", "role": "viewer", "created_by": "admin", "creator_scopes": scopes::ALL}),
    )
    .await
    .unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(created.get("key_hash").is_none());
    let v = call(&p, "auth.validate", json!({"token": key, "scope": "plugins:read"})).await.unwrap();
    assert_eq!(v["valid"], true, "{v}");
    // Second validation comes from the proof cache and still reads the status.
    let v = call(&p, "auth.validate", json!({"token": key, "scope": "plugins:control"})).await.unwrap();
    assert_eq!(v["reason"], "scope");
    let mut wrong = key.clone();
    wrong.replace_range(20..21, if &key[20..21] == "a" { "b" } else { "a" });
    let v = call(&p, "auth.validate", json!({"token": wrong})).await.unwrap();
    assert_eq!(v["valid"], false);

    let listed = call(&p, "auth.keys.list", json!({})).await.unwrap();
    assert!(!listed.to_string().contains(&key), "the key is shown once only");

    call(&p, "auth.keys.revoke", json!({"id": created["id"]})).await.unwrap();
    let v = call(&p, "auth.validate", json!({"token": key, "scope": "plugins:read"})).await.unwrap();
    assert_eq!(v["reason"], "revoked", "revocation takes effect on the very next call");

    let escalate = call(
        &p,
        "auth.keys.create",
        json!({"name": "x", "scopes": ["keys:write"], "created_by": "k1", "creator_scopes": viewer}),
    )
    .await
    .unwrap_err();
    assert_eq!(escalate.data.unwrap()["httpStatus"], 403);
    let unknown = call(
        &p,
        "auth.keys.create",
        json!({"name": "x", "scopes": ["plugin:write"], "created_by": "a", "creator_scopes": scopes::ALL}),
    )
    .await
    .unwrap_err();
    assert_eq!(unknown.code, codes::INVALID_PARAMS);
    assert!(unknown.message.contains("plugin:write"));
}

#[tokio::test]
async fn users_roles_passwords_and_the_last_admin() {
    let (p, _dir) = plugin().await;
    call(&p, "auth.users.create", json!({"name": "olga", "password": "operator password", "role": "operator"}))
        .await
        .unwrap();
    let dup = call(&p, "auth.users.create", json!({"name": "olga", "password": "operator password"})).await;
    assert_eq!(dup.unwrap_err().data.unwrap()["httpStatus"], 409);
    let short = call(&p, "auth.users.create", json!({"name": "x", "password": "short"})).await;
    assert_eq!(short.unwrap_err().code, codes::INVALID_PARAMS);
    let login = call(&p, "auth.login", json!({"user": "olga", "password": "operator password"})).await.unwrap();
    let token = login["token"].as_str().unwrap().to_owned();
    let v = call(&p, "auth.validate", json!({"token": token, "scope": "plugins:control"})).await.unwrap();
    assert_eq!(v["valid"], true);
    // Disabling ends the user's sessions.
    call(&p, "auth.users.disable", json!({"name": "olga"})).await.unwrap();
    let v = call(&p, "auth.validate", json!({"token": token})).await.unwrap();
    assert_eq!(v["valid"], false);
    let last = call(&p, "auth.users.set_role", json!({"name": "admin", "role": "viewer"})).await;
    assert_eq!(last.unwrap_err().data.unwrap()["httpStatus"], 409);
}

#[tokio::test]
async fn admin_password_rotation_ends_admin_sessions() {
    let (p, dir) = plugin().await;
    let login = admin_session(&p).await;
    let token = login["token"].as_str().unwrap().to_owned();
    // A second plug-in process (after a restart) with a new ADMIN_PASSWORD.
    let p2 = ApiKeys::default();
    let params = InitializeParams {
        protocol_versions: vec![1],
        config: json!({"database": dir.path().join("bkg.db"), "bcrypt_cost": 4, "admin_password": "a brand new password"}),
        ..InitializeParams::default()
    };
    p2.initialize(&params).await.unwrap();
    let v = call(&p2, "auth.validate", json!({"token": token})).await.unwrap();
    assert_eq!(v["valid"], false);
    let ok = call(&p2, "auth.login", json!({"user": "admin", "password": "a brand new password"})).await.unwrap();
    assert_eq!(ok["ok"], true);
}
