//! The `apikeys` plug-in: method handlers over [`Db`], the proof-of-secret cache and bcrypt.
//!
//! Validation path (auth.md §3.1): parse → look the record up by its public id → status from the
//! record on *every* call (revoked, expired, disabled: never cached, so revocation is immediate)
//! → secret: API keys through a cache of `SHA-256(token)` proofs, else bcrypt on a blocking
//! thread behind a semaphore; sessions by constant-time SHA-256 comparison → scopes.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bkg_plugin_sdk::protocol::codes;
use bkg_plugin_sdk::{CallContext, Health, InitializeParams, MethodInfo, Plugin, PluginInfo, RpcError};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::db::{ApiKey, Db, DbError, Session, unix_now};
use crate::scopes;
use crate::token::{self, Kind};

/// Proofs of secret are kept this long.
const PROOF_TTL: Duration = Duration::from_secs(600);
/// Most proofs kept; the oldest half is dropped when full.
const PROOF_CAP: usize = 10_000;
/// `last_used_at` is written at most this often per key.
const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// Longest password bcrypt takes without truncation (72 bytes including the NUL).
const MAX_PASSWORD_BYTES: usize = 71;
const MIN_PASSWORD_CHARS: usize = 12;

/// Plug-in config (from `initialize.config`; the daemon adds `database` and, when it has one,
/// `admin_password`, at spawn time, never in the stored registry).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    database: PathBuf,
    #[serde(default = "default_cost")]
    bcrypt_cost: u32,
    #[serde(default = "default_ttl")]
    session_ttl_s: i64,
    #[serde(default)]
    admin_password: Option<String>,
}

fn default_cost() -> u32 {
    10
}

fn default_ttl() -> i64 {
    86_400
}

struct State {
    db: Arc<Db>,
    cost: u32,
    session_ttl_s: i64,
}

/// The plug-in.
#[derive(Default)]
pub(crate) struct ApiKeys {
    state: OnceLock<State>,
    /// SHA-256(token) → (key id, time of proof). Only successes are stored.
    proofs: Mutex<HashMap<[u8; 32], (String, Instant)>>,
    touched: Mutex<HashMap<String, Instant>>,
    bcrypt_slots: OnceLock<Arc<Semaphore>>,
}

fn err_400(msg: impl Into<String>) -> RpcError {
    RpcError::invalid_params(msg)
}

fn domain(code: i64, kind: &str, msg: impl Into<String>, status: u16) -> RpcError {
    RpcError::domain(code, kind, msg, status)
}

fn internal(e: impl std::fmt::Display) -> RpcError {
    RpcError::internal(e.to_string())
}

impl From<DbError> for RpcError {
    fn from(e: DbError) -> Self {
        internal(e)
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse<T: serde::de::DeserializeOwned>(params: Value) -> Result<T, RpcError> {
    let mut params = params;
    if let Value::Object(obj) = &mut params {
        obj.remove("_meta");
    }
    serde_json::from_value(params).map_err(|e| err_400(e.to_string()))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, RpcError> + Send + 'static) -> Result<T, RpcError> {
    tokio::task::spawn_blocking(f).await.map_err(internal)?
}

fn check_password(password: &str) -> Result<(), RpcError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(err_400(format!("password: must have at least {MIN_PASSWORD_CHARS} characters")));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(err_400(format!("password: must be at most {MAX_PASSWORD_BYTES} bytes")));
    }
    Ok(())
}

fn check_role(role: &str) -> Result<(), RpcError> {
    if scopes::ROLES.contains(&role) {
        Ok(())
    } else {
        Err(err_400(format!("role: unknown role {role:?} (use {})", scopes::ROLES.join(", "))))
    }
}

fn check_user_name(name: &str) -> Result<(), RpcError> {
    let ok =
        !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
    if ok { Ok(()) } else { Err(err_400("user: use 1 to 64 of [A-Za-z0-9._-@]")) }
}

impl ApiKeys {
    fn state(&self) -> Result<&State, RpcError> {
        self.state.get().ok_or_else(|| RpcError::new(codes::NOT_INITIALIZED, "not initialized"))
    }

    fn slots(&self) -> Arc<Semaphore> {
        Arc::clone(self.bcrypt_slots.get_or_init(|| {
            let n = std::thread::available_parallelism().map_or(2, |n| n.get());
            Arc::new(Semaphore::new(n))
        }))
    }

    async fn hash(&self, secret: String) -> Result<String, RpcError> {
        let cost = self.state()?.cost;
        let _slot = self.slots().acquire_owned().await.map_err(internal)?;
        blocking(move || bcrypt::non_truncating_hash(secret, cost).map_err(|e| err_400(e.to_string()))).await
    }

    async fn verify(&self, secret: String, hash: String) -> Result<bool, RpcError> {
        let _slot = self.slots().acquire_owned().await.map_err(internal)?;
        blocking(move || Ok(bcrypt::non_truncating_verify(secret, &hash).unwrap_or(false))).await
    }

    fn proven(&self, digest: &[u8; 32], id: &str) -> bool {
        let proofs = self.proofs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        proofs.get(digest).is_some_and(|(pid, at)| pid == id && at.elapsed() < PROOF_TTL)
    }

    fn remember_proof(&self, digest: [u8; 32], id: &str) {
        let mut proofs = self.proofs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if proofs.len() >= PROOF_CAP {
            proofs.retain(|_, (_, at)| at.elapsed() < PROOF_TTL / 2);
        }
        proofs.insert(digest, (id.to_owned(), Instant::now()));
    }

    fn forget_proofs(&self, id: &str) {
        self.proofs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|_, (pid, _)| pid != id);
    }

    /// Whether `last_used_at` of `id` is due for a write (at most once a minute).
    fn touch_due(&self, id: &str) -> bool {
        let mut touched = self.touched.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match touched.get(id) {
            Some(at) if at.elapsed() < TOUCH_EVERY => false,
            _ => {
                touched.insert(id.to_owned(), Instant::now());
                true
            }
        }
    }

    async fn validate(&self, params: Value) -> Result<Value, RpcError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct P {
            token: String,
            #[serde(default)]
            scope: Option<String>,
            #[serde(default)]
            csrf_token: Option<String>,
        }
        let p: P = parse(params)?;
        let denied = |reason: &str| Ok(json!({"valid": false, "reason": reason}));
        let Ok(parsed) = token::parse(&p.token) else { return denied("malformed") };
        let db = Arc::clone(&self.state()?.db);
        let now = unix_now();
        let (principal, granted, expires_at) = match parsed.kind {
            Kind::ApiKey => {
                let id = parsed.id.to_owned();
                let db2 = Arc::clone(&db);
                let Some(key) = blocking(move || Ok(db2.key(&id)?)).await? else { return denied("unknown") };
                if key.revoked_at.is_some() {
                    return denied("revoked");
                }
                if key.expires_at.is_some_and(|e| e <= now) {
                    return denied("expired");
                }
                let digest: [u8; 32] = Sha256::digest(p.token.as_bytes()).into();
                if !self.proven(&digest, &key.id) {
                    let ok = self.verify(token::hashed_part(&p.token).to_owned(), key.key_hash.clone()).await?;
                    if !ok {
                        return denied("bad_secret");
                    }
                    // Re-read the status: a revoke that raced the bcrypt must win.
                    let id = key.id.clone();
                    let db2 = Arc::clone(&db);
                    let fresh = blocking(move || Ok(db2.key(&id)?)).await?;
                    if fresh.as_ref().is_none_or(|k| k.revoked_at.is_some()) {
                        return denied("revoked");
                    }
                    self.remember_proof(digest, &key.id);
                }
                if self.touch_due(&key.id) {
                    let id = key.id.clone();
                    let db2 = Arc::clone(&db);
                    // Best effort and off the request's path: a failed touch changes no decision.
                    tokio::task::spawn_blocking(move || db2.touch_key(&id));
                }
                let principal =
                    json!({"kind": "api_key", "id": key.id, "name": key.name, "created_by": key.created_by});
                (principal, key.scopes, key.expires_at)
            }
            Kind::Session => {
                let sid = parsed.id.to_owned();
                let db2 = Arc::clone(&db);
                let Some(session) = blocking(move || Ok(db2.session(&sid)?)).await? else { return denied("unknown") };
                if !ct_eq(sha256_hex(parsed.secret.as_bytes()).as_bytes(), session.secret_sha256.as_bytes()) {
                    return denied("bad_secret");
                }
                if session.expires_at <= now {
                    return denied("expired");
                }
                if let Some(csrf) = &p.csrf_token
                    && !ct_eq(sha256_hex(csrf.as_bytes()).as_bytes(), session.csrf_sha256.as_bytes())
                {
                    return denied("csrf");
                }
                let user_id = session.user_id;
                let db2 = Arc::clone(&db);
                let Some(user) = blocking(move || Ok(db2.user_by_id(user_id)?)).await? else {
                    return denied("unknown");
                };
                if user.disabled {
                    return denied("disabled");
                }
                if self.touch_due(&session.sid) {
                    let sid = session.sid.clone();
                    let db2 = Arc::clone(&db);
                    tokio::task::spawn_blocking(move || db2.touch_session(&sid));
                }
                let granted = scopes::for_role(&user.role).unwrap_or_default();
                let principal = json!({"kind": "session", "id": session.sid, "name": user.name, "role": user.role});
                (principal, granted, Some(session.expires_at))
            }
        };
        if let Some(scope) = &p.scope
            && !granted.iter().any(|s| s == scope)
        {
            return Ok(json!({"valid": false, "reason": "scope", "principal": principal, "scopes": granted}));
        }
        Ok(json!({"valid": true, "principal": principal, "scopes": granted, "expires_at": expires_at}))
    }

    async fn login(&self, params: Value) -> Result<Value, RpcError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct P {
            user: String,
            password: String,
            #[serde(default)]
            ip: Option<String>,
            #[serde(default)]
            user_agent: Option<String>,
        }
        let p: P = parse(params)?;
        let state = self.state()?;
        let db = Arc::clone(&state.db);
        let name = p.user.clone();
        let user = blocking(move || Ok(db.user_by_name(&name)?)).await?;
        // Unknown users cost a bcrypt too, so response time does not reveal who exists.
        let (hash, usable) = match &user {
            Some(u) if !u.disabled => (u.password_hash.clone(), true),
            _ => (dummy_hash(state.cost), false),
        };
        let matches = p.password.len() <= MAX_PASSWORD_BYTES && self.verify(p.password, hash).await?;
        let Some(user) = user.filter(|_| usable && matches) else {
            return Ok(json!({"ok": false, "reason": "invalid_credentials"}));
        };
        let (token, sid) = token::mint(Kind::Session);
        let csrf = token::random_base62(32);
        let secret = token::parse(&token).map_err(internal)?.secret.to_owned();
        let now = unix_now();
        let session = Session {
            sid: sid.clone(),
            user: user.name.clone(),
            user_id: user.id,
            secret_sha256: sha256_hex(secret.as_bytes()),
            csrf_sha256: sha256_hex(csrf.as_bytes()),
            created_at: now,
            expires_at: now + state.session_ttl_s,
            last_seen_at: now,
            ip: p.ip,
            user_agent: p.user_agent.map(|ua| ua.chars().take(256).collect()),
        };
        let expires_at = session.expires_at;
        let db = Arc::clone(&state.db);
        blocking(move || Ok(db.insert_session(&session)?)).await?;
        tracing::info!(user = %user.name, session = %sid, "login");
        Ok(json!({
            "ok": true, "token": token, "session_id": sid, "expires_at": expires_at, "csrf_token": csrf,
            "user": {"name": user.name, "role": user.role},
        }))
    }

    async fn create_key(&self, params: Value) -> Result<Value, RpcError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct P {
            name: String,
            #[serde(default)]
            scopes: Option<Vec<String>>,
            #[serde(default)]
            role: Option<String>,
            #[serde(default)]
            expires_at: Option<i64>,
            /// Who creates it (principal id) and what that caller holds: a key never gets more.
            created_by: String,
            creator_scopes: Vec<String>,
        }
        let p: P = parse(params)?;
        let name = p.name.trim();
        if name.is_empty() || name.len() > 100 {
            return Err(err_400("name: must have 1 to 100 characters"));
        }
        let requested = match (p.scopes, p.role) {
            (Some(_), Some(_)) => return Err(err_400("scopes: give either scopes or role, not both")),
            (Some(scopes), None) if scopes.is_empty() => return Err(err_400("scopes: must not be empty")),
            (Some(scopes), None) => scopes,
            (None, Some(role)) => {
                check_role(&role)?;
                scopes::for_role(&role).unwrap_or_default()
            }
            (None, None) => return Err(err_400("scopes: give scopes or a role")),
        };
        if let Err(unknown) = scopes::check_known(&requested) {
            return Err(err_400(format!("scopes: unknown scope {unknown:?}")));
        }
        if let Some(missing) = requested.iter().find(|s| !p.creator_scopes.contains(s)) {
            return Err(domain(
                1003,
                "auth.escalation",
                format!("cannot grant {missing:?}: the creator does not hold it"),
                403,
            ));
        }
        if p.expires_at.is_some_and(|e| e <= unix_now()) {
            return Err(err_400("expires_at: must be in the future"));
        }
        let mut scopes: Vec<String> = requested;
        scopes.sort();
        scopes.dedup();
        for _ in 0..3 {
            let (token, id) = token::mint(Kind::ApiKey);
            let key_hash = self.hash(token::hashed_part(&token).to_owned()).await?;
            let key = ApiKey {
                id: id.clone(),
                name: name.to_owned(),
                key_hash,
                hint: token::hint(&token),
                scopes: scopes.clone(),
                created_by: p.created_by.clone(),
                created_at: unix_now(),
                expires_at: p.expires_at,
                revoked_at: None,
                last_used_at: None,
            };
            let db = Arc::clone(&self.state()?.db);
            let stored = key.clone();
            if blocking(move || Ok(db.insert_key(&stored)?)).await? {
                tracing::info!(key = %id, "key created");
                let mut out = serde_json::to_value(&key).map_err(internal)?;
                out["key"] = json!(token);
                return Ok(out);
            }
        }
        Err(internal("could not draw a unique key id"))
    }

    async fn user_op(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct P {
            #[serde(default)]
            name: Option<String>,
            #[serde(default)]
            password: Option<String>,
            #[serde(default)]
            role: Option<String>,
            #[serde(default)]
            disabled: Option<bool>,
        }
        let p: P = parse(params)?;
        let db = Arc::clone(&self.state()?.db);
        if method == "auth.users.list" {
            let users = blocking(move || Ok(db.list_users()?)).await?;
            return Ok(json!({ "users": users }));
        }
        let name = p.name.ok_or_else(|| err_400("name: missing"))?;
        check_user_name(&name)?;
        match method {
            "auth.users.create" => {
                let password = p.password.ok_or_else(|| err_400("password: missing"))?;
                check_password(&password)?;
                let role = p.role.unwrap_or_else(|| "viewer".into());
                check_role(&role)?;
                let hash = self.hash(password).await?;
                let created = blocking(move || Ok(db.create_user(&name, &hash, &role)?)).await?;
                let user = created.ok_or_else(|| domain(1004, "auth.conflict", "a user with that name exists", 409))?;
                Ok(serde_json::to_value(user).map_err(internal)?)
            }
            "auth.users.set_role" | "auth.users.set_password" | "auth.users.disable" => {
                let hash = match (method, p.password) {
                    ("auth.users.set_password", Some(pw)) => {
                        check_password(&pw)?;
                        Some(self.hash(pw).await?)
                    }
                    ("auth.users.set_password", None) => return Err(err_400("password: missing")),
                    _ => None,
                };
                let role = if method == "auth.users.set_role" {
                    let role = p.role.ok_or_else(|| err_400("role: missing"))?;
                    check_role(&role)?;
                    Some(role)
                } else {
                    None
                };
                let disabled = if method == "auth.users.disable" { Some(p.disabled.unwrap_or(true)) } else { None };
                let db2 = Arc::clone(&db);
                let target = name.clone();
                let demotes_admin = role.as_deref().is_some_and(|r| r != "admin") || disabled == Some(true);
                if demotes_admin {
                    // Never leave the daemon without an enabled admin.
                    let check = Arc::clone(&db);
                    let who = name.clone();
                    let (is_admin, admins) = blocking(move || {
                        let u = check.user_by_name(&who)?;
                        Ok((u.is_some_and(|u| u.role == "admin" && !u.disabled), check.count_admins()?))
                    })
                    .await?;
                    if is_admin && admins <= 1 {
                        return Err(domain(1004, "auth.conflict", "this is the last enabled admin", 409));
                    }
                }
                let found =
                    blocking(move || Ok(db2.update_user(&target, role.as_deref(), hash.as_deref(), disabled)?)).await?;
                if !found {
                    return Err(domain(1005, "auth.not_found", format!("no user named {name:?}"), 404));
                }
                let user = blocking(move || Ok(db.user_by_name(&name)?)).await?;
                Ok(serde_json::to_value(user).map_err(internal)?)
            }
            other => Err(RpcError::method_not_found(other)),
        }
    }

    /// First start: create the admin user; with `ADMIN_PASSWORD` set, rotate the admin's
    /// password to it (ending the admin's sessions) when it changed.
    async fn ensure_admin(&self, password: Option<String>) -> Result<(), RpcError> {
        let state = self.state()?;
        let db = Arc::clone(&state.db);
        let admin = blocking(move || Ok(db.user_by_name("admin")?)).await?;
        match (admin, password) {
            (None, Some(pw)) => {
                check_password(&pw)?;
                let hash = self.hash(pw).await?;
                let db = Arc::clone(&state.db);
                blocking(move || Ok(db.create_user("admin", &hash, "admin")?)).await?;
                tracing::info!("created the admin user");
            }
            (Some(admin), Some(pw)) => {
                if !self.verify(pw.clone(), admin.password_hash.clone()).await? {
                    check_password(&pw)?;
                    let hash = self.hash(pw).await?;
                    let db = Arc::clone(&state.db);
                    blocking(move || Ok(db.update_user("admin", None, Some(&hash), None)?)).await?;
                    tracing::info!("admin password rotated; the admin's sessions were ended");
                }
            }
            (None, None) => {
                return Err(err_400("admin_password: required at first start (the daemon generates one)"));
            }
            (Some(_), None) => {}
        }
        Ok(())
    }
}

/// A valid bcrypt hash of nothing in particular, for constant-time login failures.
fn dummy_hash(cost: u32) -> String {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY
        .get_or_init(|| bcrypt::hash(token::random_base62(16), cost).unwrap_or_else(|_| String::from("$2b$04$invalid")))
        .clone()
}

fn method(timeout_ms: u64) -> MethodInfo {
    MethodInfo { timeout_ms: Some(timeout_ms), ..MethodInfo::default() }
}

impl Plugin for ApiKeys {
    fn info(&self) -> PluginInfo {
        PluginInfo { name: "apikeys".into(), version: env!("CARGO_PKG_VERSION").into(), sdk: None }
    }

    fn methods(&self) -> BTreeMap<String, MethodInfo> {
        let mut m = BTreeMap::new();
        m.insert("auth.validate".to_string(), MethodInfo { idempotent: true, ..method(5_000) });
        for name in [
            "auth.login",
            "auth.logout",
            "auth.keys.create",
            "auth.keys.list",
            "auth.keys.revoke",
            "auth.sessions.list",
            "auth.sessions.terminate",
            "auth.users.create",
            "auth.users.list",
            "auth.users.set_role",
            "auth.users.set_password",
            "auth.users.disable",
        ] {
            m.insert(name.to_string(), method(10_000));
        }
        m
    }

    async fn initialize(&self, params: &InitializeParams) -> Result<(), RpcError> {
        let config: Config =
            serde_json::from_value(params.config.clone()).map_err(|e| err_400(format!("config: {e}")))?;
        if !(4..=31).contains(&config.bcrypt_cost) {
            return Err(err_400("config.bcrypt_cost: must be between 4 and 31"));
        }
        if config.session_ttl_s <= 0 || config.session_ttl_s > 86_400 {
            return Err(err_400("config.session_ttl_s: must be between 1 and 86400 (24 h)"));
        }
        let path = config.database.clone();
        let db = blocking(move || Db::open(&path).map_err(|e| err_400(format!("config.database: {e}")))).await?;
        let purged = {
            let db = Arc::new(db);
            let state = State { db: Arc::clone(&db), cost: config.bcrypt_cost, session_ttl_s: config.session_ttl_s };
            if self.state.set(state).is_err() {
                return Err(RpcError::new(codes::INVALID_REQUEST, "already initialized"));
            }
            blocking(move || Ok(db.purge_expired_sessions()?)).await?
        };
        tracing::info!(purged_sessions = purged, bcrypt_cost = config.bcrypt_cost, "apikeys ready");
        self.ensure_admin(config.admin_password).await
    }

    fn limits(&self) -> bkg_plugin_sdk::Limits {
        // Validations are cheap (a proof-cache hit and one indexed read), and every guarded
        // request makes one: a burst of new connections must not be refused as "overloaded".
        bkg_plugin_sdk::Limits { max_message_bytes: Some(64 * 1024), max_concurrent_requests: Some(4096) }
    }

    async fn health(&self) -> Health {
        match self.state.get() {
            Some(_) => Health::serving(),
            None => Health::with_status(bkg_plugin_sdk::HealthStatus::Starting, "opening the database"),
        }
    }

    async fn call(&self, method: &str, params: Value, _ctx: CallContext) -> Result<Value, RpcError> {
        match method {
            "auth.validate" => self.validate(params).await,
            "auth.login" => self.login(params).await,
            "auth.logout" | "auth.sessions.terminate" => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct P {
                    session_id: String,
                }
                let p: P = parse(params)?;
                let db = Arc::clone(&self.state()?.db);
                let sid = p.session_id.clone();
                if !blocking(move || Ok(db.delete_session(&sid)?)).await? {
                    return Err(domain(1005, "auth.not_found", format!("no session {:?}", p.session_id), 404));
                }
                Ok(json!({"session_id": p.session_id, "terminated": true}))
            }
            "auth.sessions.list" => {
                let db = Arc::clone(&self.state()?.db);
                let sessions = blocking(move || Ok(db.list_sessions()?)).await?;
                Ok(json!({ "sessions": sessions }))
            }
            "auth.keys.create" => self.create_key(params).await,
            "auth.keys.list" => {
                let db = Arc::clone(&self.state()?.db);
                let keys = blocking(move || Ok(db.list_keys()?)).await?;
                Ok(json!({ "keys": keys }))
            }
            "auth.keys.revoke" => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct P {
                    id: String,
                }
                let p: P = parse(params)?;
                let db = Arc::clone(&self.state()?.db);
                let id = p.id.clone();
                let revoked_at = blocking(move || Ok(db.revoke_key(&id)?)).await?;
                self.forget_proofs(&p.id);
                match revoked_at {
                    Some(at) => Ok(json!({"id": p.id, "revoked_at": at})),
                    None => Err(domain(1005, "auth.not_found", format!("no key {:?}", p.id), 404)),
                }
            }
            m if m.starts_with("auth.users.") => self.user_op(m, params).await,
            other => Err(RpcError::method_not_found(other)),
        }
    }
}

#[cfg(test)]
mod tests;
