//! Daemon settings groups (`logging`, `security`, `plugins`, `retention`): their typed form,
//! validation, where each value comes from, and the live copy the running daemon reads.
//!
//! Precedence at start: command-line flag > `BKG_*` environment > database (`settings` table) >
//! shipped default. `PUT /admin/settings/{group}` stores a group in the database and applies it to
//! the running daemon at once, even for a field a flag or env variable set; such fields are listed
//! as `overrides` and go back to the flag/env value at the next start.
//!
//! This module does no I/O besides the log filter it is handed: the store persists groups, the
//! HTTP layer maps [`SettingError`] to 400.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Every settings group, in display order.
pub const GROUPS: [Group; 4] = [Group::Logging, Group::Security, Group::Plugins, Group::Retention];

/// Largest request body an operator may allow (`security.body_limit_bytes`).
pub const MAX_BODY_LIMIT: u64 = 64 * 1024 * 1024;
/// Smallest request body limit: below this even a small config update would not fit.
pub const MIN_BODY_LIMIT: u64 = 1024;
/// Longest a config update may wait for the restarted plug-in (`plugins.config_apply_wait_ms`).
pub const MAX_APPLY_WAIT_MS: u64 = 120_000;
/// Most config versions kept per plug-in (`retention.config_versions_kept`; 0 keeps all).
pub const MAX_VERSIONS_KEPT: u32 = 1_000_000;
/// Most LLM history rows kept (`retention.llm_history_max_rows`; 0 turns history off).
pub const MAX_LLM_HISTORY_ROWS: u32 = 10_000_000;
/// Oldest LLM history kept, in days (`retention.llm_history_max_age_days`).
pub const MAX_LLM_HISTORY_AGE_DAYS: u32 = 3650;

/// One settings group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Logging,
    Security,
    Plugins,
    Retention,
}

impl Group {
    /// Parses the `{group}` path segment.
    pub fn parse(s: &str) -> Option<Self> {
        GROUPS.into_iter().find(|g| g.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Group::Logging => "logging",
            Group::Security => "security",
            Group::Plugins => "plugins",
            Group::Retention => "retention",
        }
    }
}

/// `logging`: the daemon's own log filter, also forwarded to plug-ins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Logging {
    /// A level (`trace` … `error`) or a tracing filter (`info,bkg::rpc=debug`). Plug-ins get the
    /// plain level of it (see [`plugin_level`]).
    pub level: String,
}

impl Default for Logging {
    fn default() -> Self {
        Self { level: "info".into() }
    }
}

/// `security`: limits on what clients may send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Security {
    /// Largest accepted request body, in bytes; larger ones get 413.
    pub body_limit_bytes: u64,
}

impl Default for Security {
    fn default() -> Self {
        Self { body_limit_bytes: 1024 * 1024 }
    }
}

/// `plugins`: how the daemon applies changes to plug-ins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Plugins {
    /// How long `POST /admin/plugins/{name}/config` waits for the restarted plug-in to settle
    /// (ready, degraded, failed, …) before it answers; 0 answers at once.
    pub config_apply_wait_ms: u64,
}

impl Default for Plugins {
    fn default() -> Self {
        Self { config_apply_wait_ms: 10_000 }
    }
}

/// `retention`: how much history the database keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// Config versions kept per plug-in, newest first (the current one is always kept); 0 keeps
    /// every version.
    pub config_versions_kept: u32,
    /// LLM history rows kept, newest first; 0 turns the history off (nothing new is recorded,
    /// existing rows are left to the age bound).
    pub llm_history_max_rows: u32,
    /// LLM history rows older than this many days are deleted (1 to 3650).
    pub llm_history_max_age_days: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Self { config_versions_kept: 100, llm_history_max_rows: 10_000, llm_history_max_age_days: 30 }
    }
}

/// Every group, as the daemon currently uses them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DaemonSettings {
    pub logging: Logging,
    pub security: Security,
    pub plugins: Plugins,
    pub retention: Retention,
}

/// A rejected settings value: which field and why (the HTTP layer's 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SettingError {
    pub field: String,
    pub reason: String,
}

impl SettingError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

impl DaemonSettings {
    /// One group as JSON.
    pub fn group_value(&self, group: Group) -> Value {
        let value = match group {
            Group::Logging => serde_json::to_value(&self.logging),
            Group::Security => serde_json::to_value(&self.security),
            Group::Plugins => serde_json::to_value(&self.plugins),
            Group::Retention => serde_json::to_value(&self.retention),
        };
        value.unwrap_or(Value::Null)
    }

    /// A copy with `group` replaced by `value` (a complete group: absent fields take their
    /// defaults), validated. Errors name the field as `group.field`.
    pub fn with_group(&self, group: Group, value: &Value) -> Result<Self, SettingError> {
        let mut next = self.clone();
        match group {
            Group::Logging => next.logging = parse_group(group, value)?,
            Group::Security => next.security = parse_group(group, value)?,
            Group::Plugins => next.plugins = parse_group(group, value)?,
            Group::Retention => next.retention = parse_group(group, value)?,
        }
        next.validate(group)?;
        Ok(next)
    }

    /// Range and syntax checks of one group.
    fn validate(&self, group: Group) -> Result<(), SettingError> {
        match group {
            Group::Logging => check_level(&self.logging.level).map_err(|r| SettingError::new("logging.level", r)),
            Group::Security => {
                let v = self.security.body_limit_bytes;
                if !(MIN_BODY_LIMIT..=MAX_BODY_LIMIT).contains(&v) {
                    return Err(SettingError::new(
                        "security.body_limit_bytes",
                        format!("must be between {MIN_BODY_LIMIT} and {MAX_BODY_LIMIT}, got {v}"),
                    ));
                }
                Ok(())
            }
            Group::Plugins => {
                let v = self.plugins.config_apply_wait_ms;
                if v > MAX_APPLY_WAIT_MS {
                    return Err(SettingError::new(
                        "plugins.config_apply_wait_ms",
                        format!("must be between 0 and {MAX_APPLY_WAIT_MS}, got {v}"),
                    ));
                }
                Ok(())
            }
            Group::Retention => {
                let v = self.retention.config_versions_kept;
                if v > MAX_VERSIONS_KEPT {
                    return Err(SettingError::new(
                        "retention.config_versions_kept",
                        format!("must be between 0 (keep all) and {MAX_VERSIONS_KEPT}, got {v}"),
                    ));
                }
                let v = self.retention.llm_history_max_rows;
                if v > MAX_LLM_HISTORY_ROWS {
                    return Err(SettingError::new(
                        "retention.llm_history_max_rows",
                        format!("must be between 0 (history off) and {MAX_LLM_HISTORY_ROWS}, got {v}"),
                    ));
                }
                let v = self.retention.llm_history_max_age_days;
                if !(1..=MAX_LLM_HISTORY_AGE_DAYS).contains(&v) {
                    return Err(SettingError::new(
                        "retention.llm_history_max_age_days",
                        format!("must be between 1 and {MAX_LLM_HISTORY_AGE_DAYS}, got {v}"),
                    ));
                }
                Ok(())
            }
        }
    }
}

/// Deserializes one group, naming the offending field when serde does not.
fn parse_group<T: DeserializeOwned + Default>(group: Group, value: &Value) -> Result<T, SettingError> {
    let Some(map) = value.as_object() else {
        return Err(SettingError::new(group.as_str(), "must be a JSON object"));
    };
    serde_json::from_value(value.clone()).map_err(|e| {
        let msg = e.to_string();
        if let Some(field) = msg.strip_prefix("unknown field `").and_then(|r| r.split('`').next()) {
            return SettingError::new(format!("{}.{field}", group.as_str()), "unknown field");
        }
        // A type error: serde does not say where, so find the first field that fails alone.
        let field = map
            .iter()
            .find(|(k, v)| {
                let alone = Value::Object(Map::from_iter([((*k).clone(), (*v).clone())]));
                serde_json::from_value::<T>(alone).is_err()
            })
            .map_or_else(|| group.as_str().to_owned(), |(k, _)| format!("{}.{k}", group.as_str()));
        SettingError::new(field, msg)
    })
}

/// Plain levels plug-ins understand.
const LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// Checks a level or tracing filter expression.
///
/// Stricter than tracing's own syntax: a bare word must be a level. tracing reads `degub` as
/// "everything from target `degub`", which would silently turn off every other log line.
pub fn check_level(level: &str) -> Result<(), String> {
    if level.trim().is_empty() {
        return Err("must not be empty".into());
    }
    for part in level.split(',').map(str::trim) {
        let is_level = part.eq_ignore_ascii_case("off") || LEVELS.iter().any(|l| l.eq_ignore_ascii_case(part));
        if !is_level && !part.contains('=') {
            return Err(format!(
                "{part:?} is not a level: use trace, debug, info, warn, error or off, or target=level"
            ));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .map(|_| ())
        .map_err(|e| format!("not a level (trace, debug, info, warn, error) or tracing filter: {e}"))
}

/// The plain level handed to plug-ins: the filter's bare level (`info` in `info,bkg=debug`), or
/// `info` when the filter has none.
pub fn plugin_level(filter: &str) -> String {
    filter
        .split(',')
        .map(str::trim)
        .find_map(|part| LEVELS.iter().find(|l| l.eq_ignore_ascii_case(part)))
        .map_or_else(|| "info".to_owned(), |l| (*l).to_owned())
}

/// Settings given on the command line or in the environment; each wins over the database.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SettingsArgs {
    /// Log level (trace, debug, info, warn, error) or a tracing filter [settings: logging.level;
    /// default: info].
    #[arg(long, env = "BKG_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Largest accepted request body in bytes [settings: security.body_limit_bytes].
    #[arg(long, env = "BKG_BODY_LIMIT_BYTES")]
    pub body_limit_bytes: Option<u64>,
    /// How long a config update waits for the restarted plug-in, in ms [settings:
    /// plugins.config_apply_wait_ms].
    #[arg(long, env = "BKG_CONFIG_APPLY_WAIT_MS")]
    pub config_apply_wait_ms: Option<u64>,
    /// Config versions kept per plug-in, 0 = all [settings: retention.config_versions_kept].
    #[arg(long, env = "BKG_CONFIG_VERSIONS_KEPT")]
    pub config_versions_kept: Option<u32>,
    /// LLM history rows kept, 0 = history off [settings: retention.llm_history_max_rows].
    #[arg(long, env = "BKG_LLM_HISTORY_MAX_ROWS")]
    pub llm_history_max_rows: Option<u32>,
    /// Days of LLM history kept [settings: retention.llm_history_max_age_days].
    #[arg(long, env = "BKG_LLM_HISTORY_MAX_AGE_DAYS")]
    pub llm_history_max_age_days: Option<u32>,
}

/// The flag and env variable of a field, for `overrides` in the API.
fn override_source(group: Group, field: &str) -> &'static str {
    match (group, field) {
        (Group::Logging, "level") => "--log-level / BKG_LOG_LEVEL",
        (Group::Security, "body_limit_bytes") => "--body-limit-bytes / BKG_BODY_LIMIT_BYTES",
        (Group::Plugins, "config_apply_wait_ms") => "--config-apply-wait-ms / BKG_CONFIG_APPLY_WAIT_MS",
        (Group::Retention, "config_versions_kept") => "--config-versions-kept / BKG_CONFIG_VERSIONS_KEPT",
        (Group::Retention, "llm_history_max_rows") => "--llm-history-max-rows / BKG_LLM_HISTORY_MAX_ROWS",
        (Group::Retention, "llm_history_max_age_days") => "--llm-history-max-age-days / BKG_LLM_HISTORY_MAX_AGE_DAYS",
        _ => "",
    }
}

impl SettingsArgs {
    /// The log level flag or env value; an empty `BKG_LOG_LEVEL=` counts as unset.
    pub fn log_level(&self) -> Option<&str> {
        self.log_level.as_deref().filter(|v| !v.trim().is_empty())
    }

    /// Laid over `base`, validated (a bad flag or env value is a configuration error).
    pub fn apply_to(&self, base: &DaemonSettings) -> Result<DaemonSettings, SettingError> {
        let mut s = base.clone();
        if let Some(v) = self.log_level() {
            s.logging.level = v.to_owned();
            s.validate(Group::Logging)?;
        }
        if let Some(v) = self.body_limit_bytes {
            s.security.body_limit_bytes = v;
            s.validate(Group::Security)?;
        }
        if let Some(v) = self.config_apply_wait_ms {
            s.plugins.config_apply_wait_ms = v;
            s.validate(Group::Plugins)?;
        }
        if let Some(v) = self.config_versions_kept {
            s.retention.config_versions_kept = v;
            s.validate(Group::Retention)?;
        }
        if let Some(v) = self.llm_history_max_rows {
            s.retention.llm_history_max_rows = v;
            s.validate(Group::Retention)?;
        }
        if let Some(v) = self.llm_history_max_age_days {
            s.retention.llm_history_max_age_days = v;
            s.validate(Group::Retention)?;
        }
        Ok(s)
    }

    /// Fields of `group` set by a flag or env variable, with where they come from.
    pub fn overrides(&self, group: Group) -> Map<String, Value> {
        let set: &[(&str, bool)] = match group {
            Group::Logging => &[("level", self.log_level().is_some())],
            Group::Security => &[("body_limit_bytes", self.body_limit_bytes.is_some())],
            Group::Plugins => &[("config_apply_wait_ms", self.config_apply_wait_ms.is_some())],
            Group::Retention => &[
                ("config_versions_kept", self.config_versions_kept.is_some()),
                ("llm_history_max_rows", self.llm_history_max_rows.is_some()),
                ("llm_history_max_age_days", self.llm_history_max_age_days.is_some()),
            ],
        };
        set.iter()
            .filter(|(_, on)| *on)
            .map(|(field, _)| ((*field).to_owned(), Value::String(override_source(group, field).to_owned())))
            .collect()
    }
}

/// The function behind [`LogControl`]: installs a filter or says why it could not.
type SetFilter = dyn Fn(&str) -> Result<(), String> + Send + Sync;

/// Changes the daemon's tracing filter at runtime (installed by `main`).
#[derive(Clone)]
pub struct LogControl(Arc<SetFilter>);

impl LogControl {
    /// Wraps the function that swaps the filter (a `tracing_subscriber::reload` handle).
    pub fn new(set: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static) -> Self {
        Self(Arc::new(set))
    }

    /// Installs `filter` as the daemon's log filter.
    pub fn set(&self, filter: &str) -> Result<(), String> {
        (self.0)(filter)
    }
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogControl")
    }
}

/// The settings the running daemon uses, shared by every request.
///
/// Readers take a short std lock (never across `.await`); the body limit, read on every request,
/// is also kept in an atomic. Writers are serialized by the caller (`AppState::settings_write`).
#[derive(Debug)]
pub struct LiveSettings {
    current: RwLock<DaemonSettings>,
    body_limit: AtomicU64,
    args: SettingsArgs,
    log: Option<LogControl>,
}

impl LiveSettings {
    /// Starts from `initial` (already merged: defaults, database, flags and env) and installs
    /// its log filter.
    pub fn new(initial: DaemonSettings, args: SettingsArgs, log: Option<LogControl>) -> Self {
        let live = Self {
            body_limit: AtomicU64::new(initial.security.body_limit_bytes),
            current: RwLock::new(DaemonSettings::default()),
            args,
            log,
        };
        live.apply(initial);
        live
    }

    /// A copy of every group.
    pub fn current(&self) -> DaemonSettings {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Where the flag/env overrides came from.
    pub fn args(&self) -> &SettingsArgs {
        &self.args
    }

    /// Largest accepted request body.
    pub fn body_limit(&self) -> usize {
        usize::try_from(self.body_limit.load(Ordering::Relaxed)).unwrap_or(usize::MAX)
    }

    /// How long a config update waits for the restarted plug-in.
    pub fn config_apply_wait(&self) -> Duration {
        Duration::from_millis(self.current().plugins.config_apply_wait_ms)
    }

    /// Config versions kept per plug-in (0 = all).
    pub fn config_versions_kept(&self) -> u32 {
        self.current().retention.config_versions_kept
    }

    /// How much LLM history to keep (`max_rows == 0`: history off).
    pub fn llm_history_bounds(&self) -> crate::store::LlmHistoryBounds {
        let r = self.current.read().unwrap_or_else(|e| e.into_inner()).retention.clone();
        crate::store::LlmHistoryBounds { max_rows: r.llm_history_max_rows, max_age_days: r.llm_history_max_age_days }
    }

    /// Makes `next` the running settings; returns `true` if the log level changed (the caller
    /// forwards it to plug-ins).
    pub fn apply(&self, next: DaemonSettings) -> bool {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let level_changed = current.logging.level != next.logging.level;
        if level_changed
            && let Some(log) = &self.log
            && let Err(e) = log.set(&next.logging.level)
        {
            // Only possible if the subscriber is gone; the level was validated before.
            tracing::warn!(error = %e, "cannot change the log filter");
        }
        self.body_limit.store(next.security.body_limit_bytes, Ordering::Relaxed);
        *current = next;
        level_changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn groups_parse_with_defaults_and_reject_unknown_fields_and_bad_values() {
        let s = DaemonSettings::default();
        let next = s.with_group(Group::Logging, &json!({"level": "debug"})).unwrap();
        assert_eq!(next.logging.level, "debug");
        s.with_group(Group::Logging, &json!({"level": "warn,bkg::rpc=trace"})).unwrap();
        let next = s.with_group(Group::Security, &json!({})).unwrap();
        assert_eq!(next.security, Security::default());

        let cases = [
            (Group::Logging, json!({"levle": "debug"}), "logging.levle"),
            (Group::Logging, json!({"level": 3}), "logging.level"),
            (Group::Logging, json!({"level": "nope=="}), "logging.level"),
            (Group::Logging, json!({"level": ""}), "logging.level"),
            (Group::Logging, json!({"level": "degub"}), "logging.level"),
            (Group::Logging, json!({"level": "info,,bkg=debug"}), "logging.level"),
            (Group::Security, json!({"body_limit_bytes": 10}), "security.body_limit_bytes"),
            (Group::Security, json!({"body_limit_bytes": -1}), "security.body_limit_bytes"),
            (Group::Security, json!([]), "security"),
            (Group::Plugins, json!({"config_apply_wait_ms": 999_999_999}), "plugins.config_apply_wait_ms"),
            (Group::Retention, json!({"config_versions_kept": "5"}), "retention.config_versions_kept"),
            (Group::Retention, json!({"llm_history_max_rows": 20_000_000}), "retention.llm_history_max_rows"),
            (Group::Retention, json!({"llm_history_max_age_days": 0}), "retention.llm_history_max_age_days"),
            (Group::Retention, json!({"llm_history_max_age_days": -3}), "retention.llm_history_max_age_days"),
        ];
        for (group, value, field) in cases {
            let err = s.with_group(group, &value).unwrap_err();
            assert_eq!(err.field, field, "{value}: {err}");
        }
    }

    #[test]
    fn plugin_level_is_the_bare_level_of_a_filter() {
        assert_eq!(plugin_level("debug"), "debug");
        assert_eq!(plugin_level("bkg::rpc=trace,warn"), "warn");
        assert_eq!(plugin_level("bkg=debug"), "info");
        assert_eq!(plugin_level("WARN"), "warn");
    }

    #[test]
    fn args_override_the_base_and_are_validated() {
        let args = SettingsArgs { body_limit_bytes: Some(2048), ..Default::default() };
        let s = args.apply_to(&DaemonSettings::default()).unwrap();
        assert_eq!(s.security.body_limit_bytes, 2048);
        assert_eq!(args.overrides(Group::Security).len(), 1);
        assert!(args.overrides(Group::Logging).is_empty());
        let empty = SettingsArgs { log_level: Some(String::new()), ..Default::default() };
        assert!(empty.overrides(Group::Logging).is_empty());
        assert_eq!(empty.apply_to(&DaemonSettings::default()).unwrap().logging.level, "info");
        let bad = SettingsArgs { log_level: Some("x=y=z".into()), ..Default::default() };
        assert_eq!(bad.apply_to(&DaemonSettings::default()).unwrap_err().field, "logging.level");
        let off = SettingsArgs { llm_history_max_rows: Some(0), ..Default::default() };
        assert_eq!(off.apply_to(&DaemonSettings::default()).unwrap().retention.llm_history_max_rows, 0);
        assert!(off.overrides(Group::Retention).contains_key("llm_history_max_rows"));
        let bad = SettingsArgs { llm_history_max_age_days: Some(0), ..Default::default() };
        let err = bad.apply_to(&DaemonSettings::default()).unwrap_err();
        assert_eq!(err.field, "retention.llm_history_max_age_days");
    }

    #[test]
    fn apply_reports_level_changes_and_calls_the_log_control() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen2 = Arc::clone(&seen);
        let log = LogControl::new(move |f| {
            seen2.lock().unwrap().push(f.to_owned());
            Ok(())
        });
        let live = LiveSettings::new(DaemonSettings::default(), SettingsArgs::default(), Some(log));
        let mut next = live.current();
        next.security.body_limit_bytes = 4096;
        assert!(!live.apply(next.clone()));
        assert_eq!(live.body_limit(), 4096);
        next.logging.level = "debug".into();
        assert!(live.apply(next));
        // The initial default level needs no change; the new one is installed once.
        assert_eq!(*seen.lock().unwrap(), vec!["debug".to_owned()]);
    }
}
