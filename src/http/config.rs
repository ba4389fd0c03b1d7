//! `/admin/plugins/{name}/config` and `…/config/history`: read a plug-in's config (secrets
//! redacted), change it (validated, stored as a new version, mirrored to `<data>/plugins.json`,
//! then applied by restarting the plug-in), and list its versions.
//!
//! A rejected change touches nothing: every check runs before the store is written, and config
//! changes are serialized so that the order of versions in SQLite is the order in which the
//! supervisor applies them.

mod schema;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::guard::Caller;
use super::plugins::parse_name;
use crate::config::PluginSpec;
use crate::store;
use crate::supervisor::{PluginView, State as PluginState};

/// What a redacted secret reads as, and what a client posts back to keep the stored value.
pub(crate) const REDACTED: &str = "***";

/// A key containing one of these words (in any case) holds a secret.
const SECRET_WORDS: [&str; 4] = ["password", "token", "key", "secret"];

/// Whether a config key looks like it holds a secret.
pub(crate) fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| key.contains(w))
}

/// A copy of `config` with every string under a secret-looking key (at any depth, including
/// inside arrays and objects below such a key) replaced by `"***"`.
///
/// Only strings are hidden: numbers and booleans under such keys (`max_tokens: 512`) are not
/// secrets and stay readable.
pub(crate) fn redact(config: &Value) -> Value {
    let mut out = config.clone();
    redact_in(&mut out, false);
    out
}

fn redact_in(value: &mut Value, secret: bool) {
    match value {
        Value::String(s) if secret => *s = REDACTED.to_owned(),
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                redact_in(child, secret || is_secret_key(key));
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| redact_in(item, secret)),
        _ => {}
    }
}

/// Replaces each `"***"` under a secret-looking key in `posted` by the stored value at the same
/// path, so that a read → edit → write round trip keeps secrets it never saw.
fn restore_secrets(posted: &mut Value, stored: Option<&Value>, secret: bool, path: &str) -> Result<(), ApiError> {
    match posted {
        Value::String(s) if secret && s == REDACTED => match stored {
            Some(value) => {
                *posted = value.clone();
                Ok(())
            }
            None => Err(ApiError::bad_request(path, "\"***\" keeps the stored secret, but none is stored here")),
        },
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                let below = stored.and_then(|s| s.get(key.as_str()));
                restore_secrets(child, below, secret || is_secret_key(key), &format!("{path}.{key}"))?;
            }
            Ok(())
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                restore_secrets(item, stored.and_then(|s| s.get(i)), secret, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Store errors, with "not found" phrased for this plug-in.
fn from_store(name: &str, e: store::Error) -> ApiError {
    match e {
        store::Error::NotFound => ApiError::unknown_plugin(name),
        other => other.into(),
    }
}

/// `GET /admin/plugins/{name}/config` → `{name, version, config}` with secrets redacted.
pub(super) async fn get(
    _caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    parse_name(&name)?;
    let current = state.store().current_config(name.clone()).await.map_err(|e| from_store(&name, e))?;
    Ok(Json(json!({ "name": name, "version": current.version, "config": redact(&current.config) })))
}

/// Body of `POST /admin/plugins/{name}/config`: the shape `GET` answers, so a read → edit →
/// write round trip posts back what it read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigBody {
    /// The complete new config (a JSON object). `"***"` under a secret-looking key keeps the
    /// stored value.
    config: Value,
    /// The version this edit is based on; when given and no longer current, the answer is 409
    /// instead of silently overwriting someone else's change.
    #[serde(default)]
    version: Option<i64>,
    /// Optional; must be the plug-in in the path.
    #[serde(default)]
    name: Option<String>,
}

/// `POST /admin/plugins/{name}/config` with body `{"config": {...}, "version"?: n, "name"?: s}`.
///
/// Checks, in order: the name, the body (JSON, fields, `config` an object), the base `version`,
/// `"***"` placeholders, the plug-in's declared JSON schema (when it declared one in its
/// handshake during this daemon's run), then the whole registry entry. Only then is the config
/// stored as a new version (with the mirror) and applied: a running plug-in restarts with it.
/// The answer `{name, version, state, generation, changed}` comes once the restarted plug-in
/// has settled, or after `plugins.config_apply_wait_ms`. Posting the current config again
/// changes nothing (`changed: false`).
pub(super) async fn post(
    caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    parse_name(&name)?;
    let Json(body) = body.map_err(super::json_rejection)?;
    // serde would read a struct from an array too (by position); only an object is a body.
    if !body.is_object() {
        return Err(ApiError::bad_request("body", "must be a JSON object like {\"config\": {...}}"));
    }
    let body: ConfigBody = serde_json::from_value(body).map_err(|e| ApiError::bad_request("body", e.to_string()))?;
    if body.name.as_deref().is_some_and(|n| n != name) {
        return Err(ApiError::bad_request("name", format!("must be {name:?}, the plug-in in the path")));
    }
    if !body.config.is_object() {
        return Err(ApiError::bad_request("config", "must be a JSON object"));
    }

    // Held until the supervisor has the new spec: versions are applied in commit order.
    let guard = state.config_lock().lock().await;
    let current = state.store().current_config(name.clone()).await.map_err(|e| from_store(&name, e))?;
    let snapshot = state.supervisor().snapshot();
    let view = snapshot.get(&name).ok_or_else(|| ApiError::unknown_plugin(&name))?;
    if let Some(base) = body.version
        && base != current.version
    {
        return Err(ApiError::Conflict(format!(
            "the config of {name} is at version {}, not {base}: read it again and redo the change",
            current.version
        )));
    }
    let mut config = body.config;
    restore_secrets(&mut config, Some(&current.config), false, "config")?;
    if let Some(schema) = &view.config_schema {
        schema::validate(schema, &config, "config").map_err(|v| ApiError::bad_request(v.path, v.reason))?;
    }
    let mut candidate = current.spec.clone();
    if let Some(fields) = candidate.as_object_mut() {
        fields.insert("config".into(), config.clone());
    }
    PluginSpec::from_value(&candidate).map_err(|errors| {
        let first = errors.first().cloned().unwrap_or_default();
        let (field, reason) = first.split_once(": ").unwrap_or(("config", &first));
        ApiError::bad_request(field.trim_start_matches('.'), reason)
    })?;
    if config == current.config {
        return Ok(Json(answer(&name, current.version, view.state, view.generation, false)));
    }

    let before = view.generation;
    let (version, stored) =
        state.persist_config(&name, config, &caller.actor).await.map_err(|e| from_store(&name, e))?;
    let spec = PluginSpec::from_value(&stored).map_err(|errors| {
        ApiError::Internal(anyhow::anyhow!("the stored spec of {name} is invalid: {}", errors.join("; ")))
    })?;
    let applied = state.supervisor().update(spec).await?;
    drop(guard);
    tracing::info!(actor = %caller.actor, plugin = %name, version, "plug-in config changed");

    let (settled, generation) = settle(&state, &name, &applied, before).await;
    Ok(Json(answer(&name, version, settled, generation, true)))
}

fn answer(name: &str, version: i64, state: PluginState, generation: u64, changed: bool) -> Value {
    json!({ "name": name, "version": version, "state": state, "generation": generation, "changed": changed })
}

/// Waits (bounded by `plugins.config_apply_wait_ms`) until a plug-in that is restarting with
/// its new config has settled; answers its state and generation.
async fn settle(state: &AppState, name: &str, applied: &PluginView, before: u64) -> (PluginState, u64) {
    let in_flux = |s: PluginState| matches!(s, PluginState::Starting | PluginState::Stopping);
    let wait = state.settings().config_apply_wait();
    if !in_flux(applied.state) || wait.is_zero() {
        return (applied.state, applied.generation);
    }
    let settled =
        state.supervisor().wait_for(|s| s.get(name).is_none_or(|p| p.generation > before && !in_flux(p.state)));
    let snapshot = tokio::time::timeout(wait, settled).await.unwrap_or_else(|_| state.supervisor().snapshot());
    snapshot.get(name).map_or((applied.state, applied.generation), |p| (p.state, p.generation))
}

/// `GET /admin/plugins/{name}/config/history` → `{name, versions: [{version, config, actor,
/// created_at}]}`, newest first, secrets redacted (as many as `retention.config_versions_kept`).
pub(super) async fn history(
    _caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    parse_name(&name)?;
    state.store().current_config(name.clone()).await.map_err(|e| from_store(&name, e))?;
    let versions = state.store().config_history(name.clone()).await?;
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| {
            json!({ "version": v.version, "config": redact(&v.config), "actor": v.actor, "created_at": v.created_at })
        })
        .collect();
    Ok(Json(json!({ "name": name, "versions": versions })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_keys_are_redacted_at_any_depth_and_only_strings() {
        let config = json!({
            "prefix": "x",
            "API_Key": "k1",
            "upstream": {"password": "p", "url": "http://u", "tokens": ["a", "b"]},
            "servers": [{"name": "s", "client_secret": "c"}],
            "max_tokens": 512,
            "secrets": {"nested": {"deep": "d"}, "flag": true}
        });
        let red = redact(&config);
        assert_eq!(
            red,
            json!({
                "prefix": "x",
                "API_Key": "***",
                "upstream": {"password": "***", "url": "http://u", "tokens": ["***", "***"]},
                "servers": [{"name": "s", "client_secret": "***"}],
                "max_tokens": 512,
                "secrets": {"nested": {"deep": "***"}, "flag": true}
            })
        );
        for key in ["password", "dbPassword", "TOKEN", "monkey", "Secret_x"] {
            assert!(is_secret_key(key), "{key}");
        }
        assert!(!is_secret_key("prefix"));
    }

    #[test]
    fn posting_back_a_redacted_config_keeps_the_secrets() {
        let stored = json!({"api_key": "k", "servers": [{"token": "t1"}, {"token": "t2"}], "prefix": "a"});
        let mut posted = redact(&stored);
        posted["prefix"] = json!("b");
        restore_secrets(&mut posted, Some(&stored), false, "config").unwrap();
        assert_eq!(posted, json!({"api_key": "k", "servers": [{"token": "t1"}, {"token": "t2"}], "prefix": "b"}));

        // A literal "***" outside secret keys is a value like any other.
        let mut plain = json!({"prefix": "***"});
        restore_secrets(&mut plain, Some(&stored), false, "config").unwrap();
        assert_eq!(plain, json!({"prefix": "***"}));

        // "***" where nothing is stored cannot be resolved.
        let mut missing = json!({"servers": [{}, {}, {"token": "***"}]});
        let err = restore_secrets(&mut missing, Some(&stored), false, "config").unwrap_err();
        assert!(matches!(err, ApiError::BadRequest { ref field, .. } if field == "config.servers[2].token"), "{err}");
    }
}
