//! The plug-in registry (`plugins.json`): parsing into typed specs and validation that reports
//! every problem at once, each with its JSON path. `process` holds the fields about the child
//! process itself (protocol, probes, stop signal, user, `after:`).
//!
//! Architecture Invariant: nothing starts until the whole registry has validated.

pub mod process;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use process::{Probe, ProbeKind, Probes, Protocol};

/// Plug-ins compiled into the `bkg` binary and run as `bkg plugin <name>`.
pub const BUILTINS: &[&str] = &["apikeys", "echo", "fake", "llm", "rag"];

/// The registry shipped with the repository, used when no file is given.
pub const EMBEDDED_REGISTRY: &str = include_str!("../../plugins.json");

/// A validated plug-in name: `[a-z0-9-]{1,32}`, not starting with `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct PluginName(String);

impl PluginName {
    /// Parses a name, explaining what is wrong with it.
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok_chars = s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if s.is_empty() || s.len() > 32 || !ok_chars || s.starts_with('-') {
            return Err(format!("invalid name {s:?}: use 1 to 32 of [a-z0-9-], not starting with '-'"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PluginName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How to start a plug-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Launch {
    /// `bkg plugin <name>`, spawned from the daemon's own executable.
    Builtin { builtin: String },
    /// An executable: an absolute path, or a bare name looked up in the daemon's `PATH`.
    Command { command: PathBuf, args: Vec<String> },
}

/// When a plug-in is restarted after it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartMode {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// Restart policy (design.md §6, protocol.md §2.12).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestartPolicy {
    pub mode: RestartMode,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Crashes within `crash_window_s` that mark the plug-in `failed`.
    pub max_crashes: u32,
    pub crash_window_s: u64,
    /// Running this long counts as stable: the backoff resets.
    pub stable_after_s: u64,
    /// Exit codes that count as success for `on-failure`.
    pub success_codes: Vec<i32>,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            mode: RestartMode::Always,
            backoff_initial_ms: 250,
            backoff_max_ms: 30_000,
            max_crashes: 5,
            crash_window_s: 180,
            stable_after_s: 60,
            success_codes: vec![0],
        }
    }
}

/// Deadlines and health-check periods (protocol.md §2.5, §2.6, §2.12).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// `initialize` must answer within this.
    pub startup_ms: u64,
    /// `plugin.health` must say `serving` within this.
    pub ready_ms: u64,
    /// `$/ping` is sent after this long without traffic.
    pub ping_idle_ms: u64,
    pub ping_timeout_ms: u64,
    /// Consecutive missed pings that mean "hung": kill and restart.
    pub ping_misses: u32,
    /// Period of `plugin.health` polls once ready.
    pub health_interval_ms: u64,
    /// Default deadline of an application call that declares none.
    pub call_ms: u64,
    /// Budget of the `shutdown` request.
    pub shutdown_ms: u64,
    /// Each of the waits after closing stdin and after SIGTERM.
    pub stop_grace_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            startup_ms: 10_000,
            ready_ms: 60_000,
            ping_idle_ms: 10_000,
            ping_timeout_ms: 1_000,
            ping_misses: 3,
            health_interval_ms: 30_000,
            call_ms: 30_000,
            shutdown_ms: 5_000,
            stop_grace_ms: 3_000,
        }
    }
}

impl Timeouts {
    pub fn startup(&self) -> Duration {
        Duration::from_millis(self.startup_ms)
    }
    pub fn ready(&self) -> Duration {
        Duration::from_millis(self.ready_ms)
    }
    pub fn ping_idle(&self) -> Duration {
        Duration::from_millis(self.ping_idle_ms)
    }
    pub fn ping_timeout(&self) -> Duration {
        Duration::from_millis(self.ping_timeout_ms)
    }
    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.health_interval_ms)
    }
    pub fn call(&self) -> Duration {
        Duration::from_millis(self.call_ms)
    }
    pub fn shutdown(&self) -> Duration {
        Duration::from_millis(self.shutdown_ms)
    }
    pub fn stop_grace(&self) -> Duration {
        Duration::from_millis(self.stop_grace_ms)
    }
}

/// One registry entry as written in `plugins.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: String,
    #[serde(default)]
    builtin: Option<String>,
    #[serde(default)]
    command: Option<PathBuf>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    restart: RestartPolicy,
    #[serde(default)]
    timeouts: Timeouts,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default = "empty_object")]
    config: Value,
    #[serde(default)]
    protocol: Protocol,
    #[serde(default)]
    cwd: Option<PathBuf>,
    #[serde(default)]
    pass_env: Vec<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    stop_signal: Option<String>,
    #[serde(default)]
    after: Vec<String>,
    #[serde(default)]
    probes: Probes,
    #[serde(default = "default_log_rate")]
    log_lines_per_s: u32,
}

/// Lines per second a plug-in's log keeps by default (protocol.md §2.11); the burst is 5 s worth.
pub const DEFAULT_LOG_LINES_PER_S: u32 = 2_000;
const MAX_LOG_LINES_PER_S: u32 = 1_000_000;

fn default_log_rate() -> u32 {
    DEFAULT_LOG_LINES_PER_S
}

fn is_default_log_rate(v: &u32) -> bool {
    *v == DEFAULT_LOG_LINES_PER_S
}

fn yes() -> bool {
    true
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// A validated plug-in spec.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginSpec {
    pub name: PluginName,
    #[serde(flatten)]
    pub launch: Launch,
    pub enabled: bool,
    pub required: bool,
    pub restart: RestartPolicy,
    pub timeouts: Timeouts,
    /// Added to the child's environment allowlist.
    pub env: BTreeMap<String, String>,
    /// Lower-case hex sha256 pin of the executable, checked before every spawn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Handed to the plug-in in `initialize`.
    pub config: Value,
    #[serde(skip_serializing_if = "Protocol::is_default")]
    pub protocol: Protocol,
    /// Working directory; by default the plug-in's own directory under the data directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    /// Names of the daemon's environment variables passed through (beyond the allowlist).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pass_env: Vec<String>,
    /// Run as this user / group (only when the daemon runs as root).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Signal of a graceful stop, as `SIGTERM`; `None` = SIGTERM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Started only once these are ready; stopped before them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<PluginName>,
    /// Readiness and liveness checks of a `protocol: "none"` process.
    #[serde(skip_serializing_if = "Probes::is_empty")]
    pub probes: Probes,
    /// Log lines per second kept from this process (a burst of 5 s worth); the rest are counted
    /// as dropped.
    #[serde(skip_serializing_if = "is_default_log_rate")]
    pub log_lines_per_s: u32,
}

/// Every problem found in a registry, each with its JSON path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid plug-in registry:\n{}", .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
pub struct RegistryErrors(pub Vec<String>);

/// The validated registry, in file order (which is also start order).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Registry {
    pub plugins: Vec<PluginSpec>,
}

/// Env names a registry may not set: they belong to the protocol or to systemd.
const RESERVED_ENV: &[&str] = &[
    "SUPERVISOR_PLUGIN_COOKIE",
    "SUPERVISOR_PLUGIN_TRANSPORT",
    "NOTIFY_SOCKET",
    crate::supervisor::process::INSTANCE_ENV,
    crate::supervisor::process::OWNER_ENV,
];

impl Registry {
    /// Parses and validates `plugins.json` text.
    pub fn parse(text: &str) -> Result<Self, RegistryErrors> {
        let root: Value =
            serde_json::from_str(text).map_err(|e| RegistryErrors(vec![format!("$: not valid JSON: {e}")]))?;
        Self::from_value(&root)
    }

    /// Validates an already parsed document.
    pub fn from_value(root: &Value) -> Result<Self, RegistryErrors> {
        let mut errors = Vec::new();
        let Some(obj) = root.as_object() else {
            return Err(RegistryErrors(vec!["$: must be an object like {\"plugins\": [...]}".into()]));
        };
        for key in obj.keys().filter(|k| k.as_str() != "plugins") {
            errors.push(format!("$.{key}: unknown field"));
        }
        let entries = match obj.get("plugins") {
            Some(Value::Array(a)) => a.as_slice(),
            Some(_) => {
                errors.push("$.plugins: must be an array".into());
                &[]
            }
            None => {
                errors.push("$.plugins: missing".into());
                &[]
            }
        };
        let mut plugins = Vec::new();
        let mut seen = HashSet::new();
        for (i, entry) in entries.iter().enumerate() {
            let path = format!("$.plugins[{i}]");
            // Duplicates are found even among entries that are invalid for other reasons.
            if let Some(name) = entry.get("name").and_then(Value::as_str)
                && !seen.insert(name.to_owned())
            {
                errors.push(format!("{path}.name: duplicate name {name:?}"));
            }
            match PluginSpec::from_value(entry) {
                Ok(spec) => plugins.push(spec),
                Err(errs) => errors.extend(errs.into_iter().map(|e| format!("{path}{e}"))),
            }
        }
        if errors.is_empty() {
            let graph: Vec<(usize, &str, Vec<String>)> = plugins
                .iter()
                .enumerate()
                .map(|(i, p)| (i, p.name.as_str(), p.after.iter().map(ToString::to_string).collect()))
                .collect();
            let graph: Vec<(usize, &str, &[String])> = graph.iter().map(|(i, n, a)| (*i, *n, a.as_slice())).collect();
            errors.extend(process::check_dependencies(&graph));
        }
        if errors.is_empty() { Ok(Self { plugins }) } else { Err(RegistryErrors(errors)) }
    }

    pub fn get(&self, name: &str) -> Option<&PluginSpec> {
        self.plugins.iter().find(|p| p.name.as_str() == name)
    }
}

impl PluginSpec {
    /// Validates one entry; errors carry a path relative to the entry (`.name: …`).
    pub fn from_value(entry: &Value) -> Result<Self, Vec<String>> {
        let raw: RawSpec = serde_json::from_value(entry.clone()).map_err(|e| vec![describe_serde_error(&e)])?;
        let mut errors = Vec::new();
        let name = PluginName::parse(&raw.name).map_err(|e| errors.push(format!(".name: {e}"))).ok();
        if raw.protocol == Protocol::None && raw.builtin.is_some() {
            errors.push(".builtin: built-ins speak svp/1; a protocol \"none\" process needs \"command\"".into());
        }
        let launch = match (raw.builtin, raw.command) {
            (Some(b), None) => {
                if !raw.args.is_empty() {
                    errors.push(".args: only allowed with \"command\"".into());
                }
                if !BUILTINS.contains(&b.as_str()) {
                    errors.push(format!(".builtin: unknown built-in {b:?} (known: {})", BUILTINS.join(", ")));
                }
                Some(Launch::Builtin { builtin: b })
            }
            (None, Some(command)) => {
                let bare = command.components().count() == 1 && !command.as_os_str().is_empty();
                if !command.is_absolute() && !bare {
                    errors.push(format!(
                        ".command: must be an absolute path or a program name looked up in PATH, got {:?}",
                        command.display()
                    ));
                }
                Some(Launch::Command { command, args: raw.args })
            }
            (Some(_), Some(_)) => {
                errors.push(": set either \"builtin\" or \"command\", not both".into());
                None
            }
            (None, None) => {
                errors.push(": one of \"builtin\" or \"command\" is required".into());
                None
            }
        };
        if raw.protocol == Protocol::None && raw.config.as_object().is_some_and(|c| !c.is_empty()) {
            errors.push(".config: only svp/1 plug-ins take a config; pass settings as args or env".into());
        }
        if raw.protocol == Protocol::Svp1 && !raw.probes.is_empty() {
            errors.push(".probes: only for protocol \"none\" (svp/1 plug-ins report readiness themselves)".into());
        }
        raw.probes.check(&mut errors);
        if let Some(cwd) = &raw.cwd
            && !cwd.is_absolute()
        {
            errors.push(".cwd: must be an absolute path".into());
        }
        for (i, key) in raw.pass_env.iter().enumerate() {
            if !valid_env_name(key) {
                errors.push(format!(".pass_env[{i}]: invalid variable name {key:?}"));
            } else if RESERVED_ENV.contains(&key.as_str()) {
                errors.push(format!(".pass_env[{i}]: {key} is reserved for the daemon"));
            }
        }
        for (field, value) in [("user", &raw.user), ("group", &raw.group)] {
            if value.as_ref().is_some_and(|v| v.is_empty() || v.contains(['/', ':', '\0'])) {
                errors.push(format!(".{field}: invalid {field} name"));
            }
        }
        let stop_signal = match raw.stop_signal.as_deref().map(process::parse_signal) {
            Some(Ok(signal)) => Some(signal.as_str().to_owned()),
            Some(Err(e)) => {
                errors.push(format!(".stop_signal: {e}"));
                None
            }
            None => None,
        };
        let mut after = Vec::new();
        for (i, dep) in raw.after.iter().enumerate() {
            match PluginName::parse(dep) {
                Ok(dep) if after.contains(&dep) => errors.push(format!(".after[{i}]: {dep} is listed twice")),
                Ok(dep) => after.push(dep),
                Err(e) => errors.push(format!(".after[{i}]: {e}")),
            }
        }
        if !(1..=MAX_LOG_LINES_PER_S).contains(&raw.log_lines_per_s) {
            errors.push(format!(".log_lines_per_s: must be between 1 and {MAX_LOG_LINES_PER_S}"));
        }
        if raw.restart.success_codes.iter().any(|c| !(0..=255).contains(c)) {
            errors.push(".restart.success_codes: exit codes are 0..=255".into());
        }
        if let Some(pin) = &raw.sha256
            && (pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            errors.push(".sha256: must be 64 hex digits".into());
        }
        for key in raw.env.keys() {
            if !valid_env_name(key) {
                errors.push(format!(".env.{key}: invalid variable name"));
            } else if RESERVED_ENV.contains(&key.as_str()) {
                errors.push(format!(".env.{key}: reserved for the daemon"));
            }
        }
        if !raw.config.is_object() {
            errors.push(".config: must be a JSON object".into());
        }
        let r = &raw.restart;
        if r.backoff_initial_ms == 0 || r.backoff_max_ms < r.backoff_initial_ms {
            errors.push(".restart: need 0 < backoff_initial_ms <= backoff_max_ms".into());
        }
        if r.max_crashes == 0 {
            errors.push(".restart.max_crashes: must be at least 1".into());
        }
        let t = &raw.timeouts;
        for (field, v) in [
            ("startup_ms", t.startup_ms),
            ("ready_ms", t.ready_ms),
            ("ping_idle_ms", t.ping_idle_ms),
            ("ping_timeout_ms", t.ping_timeout_ms),
            ("health_interval_ms", t.health_interval_ms),
            ("call_ms", t.call_ms),
            ("shutdown_ms", t.shutdown_ms),
            ("stop_grace_ms", t.stop_grace_ms),
        ] {
            if v == 0 {
                errors.push(format!(".timeouts.{field}: must be positive"));
            }
        }
        if t.ping_misses == 0 {
            errors.push(".timeouts.ping_misses: must be at least 1".into());
        }
        match (name, launch) {
            (Some(name), Some(launch)) if errors.is_empty() => Ok(Self {
                name,
                launch,
                enabled: raw.enabled,
                required: raw.required,
                restart: raw.restart,
                timeouts: raw.timeouts,
                env: raw.env,
                sha256: raw.sha256.map(|s| s.to_ascii_lowercase()),
                config: raw.config,
                protocol: raw.protocol,
                cwd: raw.cwd,
                pass_env: raw.pass_env,
                user: raw.user,
                group: raw.group,
                stop_signal,
                after,
                probes: raw.probes,
                log_lines_per_s: raw.log_lines_per_s,
            }),
            _ => Err(errors),
        }
    }

    /// The signal of a graceful stop.
    pub fn stop_signal(&self) -> nix::sys::signal::Signal {
        self.stop_signal
            .as_deref()
            .and_then(|s| process::parse_signal(s).ok())
            .unwrap_or(nix::sys::signal::Signal::SIGTERM)
    }

    /// The registry entry as JSON (the form written to the `plugins.json` mirror).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

fn valid_env_name(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// serde_json reports `unknown field `x`, expected one of …`; keep it but lead with a path.
fn describe_serde_error(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    // serde_json appends " at line L column C", meaningless for a sub-value.
    let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
    if let Some(field) = msg.strip_prefix("unknown field `").and_then(|r| r.split('`').next()) {
        return format!(".{field}: unknown field");
    }
    if let Some(field) = msg.strip_prefix("missing field `").and_then(|r| r.split('`').next()) {
        return format!(".{field}: missing");
    }
    format!(": {msg}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_registry_is_valid() {
        let reg = Registry::parse(EMBEDDED_REGISTRY).unwrap();
        assert!(!reg.plugins.is_empty());
    }

    #[test]
    fn reports_every_error_with_its_path() {
        let text = r#"{"plugins": [
            {"name": "../x", "builtin": "echo"},
            {"name": "a", "builtin": "echo", "colour": "red"},
            {"name": "b", "builtin": "nope"},
            {"name": "b", "builtin": "echo"},
            {"name": "b", "builtin": "echo"},
            {"name": "c", "command": "relative/bin"},
            {"name": "d"}
        ], "extra": 1}"#;
        let errs = Registry::parse(text).unwrap_err().0;
        let expect = [
            "$.extra: unknown field",
            "$.plugins[0].name: invalid name \"../x\"",
            "$.plugins[1].colour: unknown field",
            "$.plugins[2].builtin: unknown built-in \"nope\"",
            "$.plugins[3].name: duplicate name \"b\"",
            "$.plugins[4].name: duplicate name \"b\"",
            "$.plugins[5].command: must be an absolute path",
            "$.plugins[6]: one of \"builtin\" or \"command\" is required",
        ];
        for e in expect {
            assert!(errs.iter().any(|x| x.starts_with(e)), "missing {e:?} in {errs:#?}");
        }
        assert_eq!(errs.len(), expect.len(), "{errs:#?}");
    }

    #[test]
    fn bad_json_is_one_error() {
        let errs = Registry::parse("{nope").unwrap_err().0;
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("$: not valid JSON"));
    }

    #[test]
    fn names_are_restricted() {
        for bad in ["", "A", "a/b", "..", "-a", &"a".repeat(33), "a b", "é"] {
            assert!(PluginName::parse(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "llm", "my-plugin-2", &"a".repeat(32)] {
            assert!(PluginName::parse(good).is_ok(), "{good:?} rejected");
        }
    }

    #[test]
    fn plain_process_fields_are_checked() {
        let text = r#"{"plugins": [
            {"name": "a", "protocol": "none", "builtin": "echo"},
            {"name": "b", "protocol": "none", "command": "x", "config": {"k": 1}},
            {"name": "c", "command": "/bin/x", "probes": {"readiness": {"tcp": {"port": 1}}}},
            {"name": "d", "protocol": "none", "command": "x", "probes": {"liveness": {"log": {"regex": "up"}}}},
            {"name": "e", "protocol": "none", "command": "x", "probes": {"readiness": {"tcp": {"port": 1}, "exec": {"command": "/bin/true"}}}},
            {"name": "f", "protocol": "none", "command": "x", "probes": {"readiness": {"http": {"url": "https://x"}}}},
            {"name": "g", "protocol": "none", "command": "x", "probes": {"readiness": {"log": {"regex": "("}}}},
            {"name": "h", "protocol": "none", "command": "x", "stop_signal": "NOPE", "cwd": "rel", "pass_env": ["A-B"]},
            {"name": "i", "protocol": "none", "command": "x", "after": ["i2", "i2"], "restart": {"success_codes": [300]}},
            {"name": "j", "protocol": "tcp", "command": "x"}
        ]}"#;
        let errs = Registry::parse(text).unwrap_err().0;
        let expect = [
            "$.plugins[0].builtin: built-ins speak svp/1",
            "$.plugins[1].config: only svp/1 plug-ins take a config",
            "$.plugins[2].probes: only for protocol \"none\"",
            "$.plugins[3].probes.liveness.log: a log probe can only be a readiness probe",
            "$.plugins[4].probes.readiness: set exactly one of",
            "$.plugins[5].probes.readiness.http.url: must start with http://",
            "$.plugins[6].probes.readiness.log.regex:",
            "$.plugins[7].stop_signal: unknown signal \"NOPE\"",
            "$.plugins[7].cwd: must be an absolute path",
            "$.plugins[7].pass_env[0]: invalid variable name",
            "$.plugins[8].after[1]: i2 is listed twice",
            "$.plugins[8].restart.success_codes: exit codes are 0..=255",
            "$.plugins[9]: unknown variant `tcp`",
        ];
        for e in expect {
            assert!(errs.iter().any(|x| x.starts_with(e)), "missing {e:?} in {errs:#?}");
        }
        assert_eq!(errs.len(), expect.len(), "{errs:#?}");
        // A valid plain process: bare command, probes, dependencies; round-trips.
        let reg = Registry::parse(
            r#"{"plugins": [{"name": "up", "protocol": "none", "command": "python3", "stop_signal": "int",
                "probes": {"readiness": {"http": {"url": "http://127.0.0.1:8000/"}}}},
                {"name": "down", "protocol": "none", "command": "/bin/sleep", "args": ["9"], "after": ["up"]}]}"#,
        )
        .unwrap();
        assert_eq!(reg.plugins[0].stop_signal(), nix::sys::signal::Signal::SIGINT);
        for spec in &reg.plugins {
            assert_eq!(&PluginSpec::from_value(&spec.to_value()).unwrap(), spec);
        }
    }

    #[test]
    fn spec_round_trips_through_its_json_form() {
        let reg = Registry::parse(
            r#"{"plugins":[{"name":"x","command":"/bin/x","args":["-v"],"env":{"A":"1"},"config":{"k":1}}]}"#,
        )
        .unwrap();
        let spec = &reg.plugins[0];
        let again = PluginSpec::from_value(&spec.to_value()).unwrap();
        assert_eq!(&again, spec);
    }
}
