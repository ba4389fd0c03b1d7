//! Wiring: the shared [`AppState`], the startup order and the shutdown order, in one place.
//!
//! Startup: data dir → store (migrations) → registry (DB, seeded from `plugins.json` on first
//! start) → mirror → supervisor (starts plug-ins) → HTTP → `READY=1`.
//! Shutdown: `STOPPING=1` → HTTP stops accepting and SSE streams end → plug-ins stop (apikeys
//! last) → store thread ends with the last handle.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::{PluginSpec, Registry};
use crate::http;
use crate::logs::LogHub;
use crate::shutdown::Shutdown;
use crate::store::{self, Store};
use crate::supervisor::{SupervisorConfig, SupervisorHandle};

/// Daemon settings (command line > `BKG_*` environment > database > defaults).
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    /// The registry to seed a new database from; the embedded default when `None`.
    pub registry_file: Option<PathBuf>,
    /// Settings-group values given as flags or env variables (they win over the database).
    pub args: crate::settings::SettingsArgs,
    /// Swaps the daemon's log filter at runtime (`logging.level`); `None` when not reloadable.
    pub log_control: Option<crate::settings::LogControl>,
}

/// Cheap-clone handle to everything a request handler may need.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

struct AppInner {
    supervisor: SupervisorHandle,
    logs: LogHub,
    store: Store,
    login_throttle: crate::auth::LoginThrottle,
    data_dir: PathBuf,
    started: Instant,
    shutdown: Shutdown,
    metrics: Arc<crate::metrics::Metrics>,
    settings: crate::settings::LiveSettings,
    /// Serializes config changes: store order = apply order.
    config_lock: tokio::sync::Mutex<()>,
    /// Serializes settings changes: store order = apply order.
    settings_lock: tokio::sync::Mutex<()>,
}

impl AppState {
    pub fn supervisor(&self) -> &SupervisorHandle {
        &self.0.supervisor
    }
    pub fn logs(&self) -> &LogHub {
        &self.0.logs
    }
    pub fn store(&self) -> &Store {
        &self.0.store
    }
    pub fn login_throttle(&self) -> &crate::auth::LoginThrottle {
        &self.0.login_throttle
    }
    pub fn uptime(&self) -> Duration {
        self.0.started.elapsed()
    }
    pub fn shutdown(&self) -> &Shutdown {
        &self.0.shutdown
    }
    /// The daemon's own counters and histograms (HTTP, SSE).
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.0.metrics
    }
    /// The settings groups the daemon runs with now.
    pub fn settings(&self) -> &crate::settings::LiveSettings {
        &self.0.settings
    }
    /// Held by a config change from its checks until the supervisor has the new spec.
    pub fn config_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.0.config_lock
    }
    /// Held by a settings change from its checks until it is applied.
    pub fn settings_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.0.settings_lock
    }
    pub fn mirror_path(&self) -> PathBuf {
        self.0.data_dir.join("plugins.json")
    }
    pub async fn db_ok(&self) -> bool {
        self.0.store.ping().await
    }

    /// Records a new plug-in in the database and the mirror.
    pub async fn persist_new_plugin(&self, spec: &PluginSpec, actor: &str) -> Result<(), store::Error> {
        self.0.store.insert_plugin(spec.to_value(), actor.to_owned(), Some(self.mirror_path())).await
    }

    /// Removes a plug-in from the database and the mirror.
    pub async fn persist_removal(&self, name: &str) -> Result<(), store::Error> {
        self.0.store.delete_plugin(name.to_owned(), Some(self.mirror_path())).await
    }

    /// Records whether a plug-in is enabled, so the choice survives a restart. Only the stored
    /// `enabled` flag changes: `spec` may predate a concurrent config change.
    pub async fn persist_enabled(&self, spec: &PluginSpec, enabled: bool) -> Result<(), store::Error> {
        self.0.store.set_enabled(spec.name.to_string(), enabled, Some(self.mirror_path())).await
    }

    /// Stores a plug-in's new config as a new version (history trimmed per
    /// `retention.config_versions_kept`) and mirrors it; returns the version and the stored spec.
    pub async fn persist_config(
        &self,
        name: &str,
        config: serde_json::Value,
        actor: &str,
    ) -> Result<(i64, serde_json::Value), store::Error> {
        let keep = self.0.settings.config_versions_kept();
        self.0.store.set_config(name.to_owned(), config, actor.to_owned(), Some(self.mirror_path()), keep).await
    }
}

/// Creates the data directory (0700) if needed.
fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))
}

/// Takes an exclusive `flock` on `bkg.db` for the daemon's lifetime: two daemons on one data
/// directory would run every plug-in twice and fight over the mirror. (SQLite's own locks are
/// `fcntl` locks, independent of this one.)
fn lock_data_dir(db_path: &Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    use nix::fcntl::{Flock, FlockArg};
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(db_path)
        .with_context(|| format!("cannot open {}", db_path.display()))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| match errno {
        nix::errno::Errno::EWOULDBLOCK => anyhow::anyhow!(
            "another bkg is already running on the data directory {} (its bkg.db is locked)",
            db_path.parent().map_or_else(|| db_path.display().to_string(), |d| d.display().to_string())
        ),
        other => anyhow::anyhow!("cannot lock {}: {other}", db_path.display()),
    })
}

/// Kills what a previous daemon on this data directory left running (it was SIGKILLed or
/// crashed: plain processes do not notice their parent's death). Runs before anything starts,
/// under the data directory lock.
async fn kill_leftovers(owner: String) {
    let killed = tokio::task::spawn_blocking(move || crate::supervisor::process::kill_leftovers(&owner))
        .await
        .unwrap_or_default();
    if !killed.is_empty() {
        tracing::warn!(
            count = killed.len(),
            pids = ?killed,
            "killed processes a previous bkg on this data directory left running"
        );
    }
}

/// `ADMIN_PASSWORD` from the environment, else systemd's `LoadCredential=admin-password`.
fn configured_admin_password() -> anyhow::Result<Option<String>> {
    if let Ok(pw) = std::env::var("ADMIN_PASSWORD")
        && !pw.is_empty()
    {
        return Ok(Some(pw));
    }
    let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") else { return Ok(None) };
    let path = Path::new(&dir).join("admin-password");
    match std::fs::read_to_string(&path) {
        Ok(pw) => Ok(Some(pw.trim_end_matches(['\r', '\n']).to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The admin password to hand to the apikeys plug-in: the configured one, or on first start
/// (no admin user yet) a generated one, printed once to the console and never logged.
async fn admin_password(store: &Store) -> anyhow::Result<Option<String>> {
    if let Some(pw) = configured_admin_password()? {
        return Ok(Some(pw));
    }
    if store.has_admin_user().await? {
        return Ok(None);
    }
    let pw = bkg_plugin_apikeys::token::random_base62(24);
    // Deliberately not through tracing: the password must not reach log files or journald
    // aggregation; it is shown once on the console of the first start.
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "\n  bkg: first start; created user \"admin\" with password: {pw}\n  (set ADMIN_PASSWORD to choose your own; it is not shown again)\n"
        );
    }
    Ok(Some(pw))
}

/// Loads the registry from the database, seeding it from the file on first start.
async fn load_registry(store: &Store, settings: &Settings) -> anyhow::Result<Registry> {
    if let Some(specs) = store.load_registry().await? {
        let doc = serde_json::json!({ "plugins": specs });
        return Registry::from_value(&doc)
            .map_err(|e| anyhow::anyhow!("the registry stored in bkg.db is invalid: {e}"));
    }
    let (text, source) = match &settings.registry_file {
        Some(path) => (
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (crate::config::EMBEDDED_REGISTRY.to_owned(), "embedded plugins.json".to_owned()),
    };
    let registry = Registry::parse(&text).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    store.seed_registry(registry.plugins.iter().map(PluginSpec::to_value).collect(), source.clone()).await?;
    tracing::info!(%source, plugins = registry.plugins.len(), "seeded the registry");
    Ok(registry)
}

/// What the daemon adds to the built-in apikeys plug-in's config at spawn time (never stored in
/// the registry): the database path and, when known, the admin password.
fn apikeys_injection(db_path: &Path, admin_password: Option<String>) -> crate::supervisor::Injected {
    let mut extra = serde_json::Map::new();
    extra.insert("database".into(), serde_json::json!(db_path));
    if let Some(pw) = admin_password {
        extra.insert("admin_password".into(), serde_json::Value::String(pw));
    }
    crate::supervisor::Injected::from([("apikeys".to_owned(), extra)])
}

/// Validates a registry file without starting anything (used before `run`).
pub fn check_registry_file(path: Option<&Path>) -> anyhow::Result<()> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
        None => crate::config::EMBEDDED_REGISTRY.to_owned(),
    };
    Registry::parse(&text)?;
    Ok(())
}

/// Runs the daemon until `shutdown.graceful` is cancelled and everything has stopped.
pub async fn run(settings: Settings, listener: TcpListener, shutdown: Shutdown) -> anyhow::Result<()> {
    prepare_data_dir(&settings.data_dir)?;
    let db_path = settings.data_dir.join("bkg.db");
    let _data_dir_lock = lock_data_dir(&db_path)?;
    let owner = std::fs::canonicalize(&settings.data_dir)
        .with_context(|| format!("cannot resolve {}", settings.data_dir.display()))?
        .display()
        .to_string();
    kill_leftovers(owner.clone()).await;
    let store = Store::open(&db_path).with_context(|| format!("cannot open {}", db_path.display()))?;
    let registry = load_registry(&store, &settings).await?;
    store.sync_mirror(settings.data_dir.join("plugins.json")).await?;
    let admin_password = admin_password(&store).await?;
    let live = load_settings(&store, &settings).await?;

    let logs = LogHub::new();
    let required: Vec<String> =
        registry.plugins.iter().filter(|p| p.required && p.enabled).map(|p| p.name.to_string()).collect();
    let supervisor = SupervisorHandle::start(
        registry,
        SupervisorConfig {
            plugins_dir: settings.data_dir.join("plugins"),
            log_level: crate::settings::plugin_level(&live.current().logging.level),
            injected: apikeys_injection(&db_path, admin_password),
            owner,
        },
        logs.clone(),
    );
    let state = AppState(Arc::new(AppInner {
        supervisor: supervisor.clone(),
        logs,
        store,
        login_throttle: crate::auth::LoginThrottle::new(5, 30),
        data_dir: settings.data_dir.clone(),
        started: Instant::now(),
        shutdown: shutdown.clone(),
        metrics: Arc::default(),
        settings: live,
        config_lock: tokio::sync::Mutex::new(()),
        settings_lock: tokio::sync::Mutex::new(()),
    }));

    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %settings.data_dir.display(), "listening");
    let server = tokio::spawn(http::serve(listener, state.clone(), shutdown.graceful.clone()));
    notify_ready_when_started(&supervisor, &required).await;
    spawn_watchdog(&supervisor);

    // A forced shutdown (second signal) skips the grace periods of plug-ins still stopping.
    let force = shutdown.force.clone();
    let forcer = supervisor.clone();
    tokio::spawn(async move {
        force.cancelled().await;
        forcer.force_kill();
    });

    shutdown.graceful.cancelled().await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    // Order: the HTTP server first (no new work; SSE streams end on the token), then plug-ins.
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "http server ended with an error"),
        Ok(_) => {}
        Err(_) => tracing::warn!("http server did not drain within 5 s"),
    }
    supervisor.shutdown().await;
    tracing::info!("all plug-ins stopped; bye");
    Ok(())
}

/// The running settings: defaults, then each group stored in the database, then flags and env.
/// A stored group that no longer validates is skipped with a warning (its defaults apply); a bad
/// flag or env value is an error.
async fn load_settings(store: &Store, settings: &Settings) -> anyhow::Result<crate::settings::LiveSettings> {
    use crate::settings::{DaemonSettings, Group, LiveSettings};
    let mut merged = DaemonSettings::default();
    for stored in store.load_settings().await? {
        let Some(group) = Group::parse(&stored.group) else {
            tracing::warn!(group = %stored.group, "ignoring an unknown settings group in bkg.db");
            continue;
        };
        match merged.with_group(group, &stored.value) {
            Ok(next) => merged = next,
            Err(e) => tracing::warn!(group = %stored.group, error = %e, "ignoring invalid stored settings"),
        }
    }
    let merged = settings.args.apply_to(&merged).map_err(|e| anyhow::anyhow!("invalid setting {e}"))?;
    Ok(LiveSettings::new(merged, settings.args.clone(), settings.log_control.clone()))
}

/// Under systemd with `WatchdogSec=`, sends `WATCHDOG=1` at half the interval, but only while
/// the supervisor actor answers a round trip: a wedged actor stops the pings and systemd
/// restarts the service.
fn spawn_watchdog(supervisor: &SupervisorHandle) {
    let Some(interval) = sd_notify::watchdog_enabled() else { return };
    let period = (interval / 2).max(Duration::from_millis(10));
    let supervisor = supervisor.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if matches!(tokio::time::timeout(period, supervisor.ping()).await, Ok(true)) {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            } else {
                tracing::warn!("the supervisor did not answer within {period:?}; skipping the watchdog ping");
            }
        }
    });
}

/// Tells systemd `READY=1` once every enabled required plug-in of the registry reached a settled
/// state (bounded). The names come from the registry, not the snapshot: the first snapshot is
/// published by the actor, and an empty one would otherwise count as "all settled".
async fn notify_ready_when_started(supervisor: &SupervisorHandle, required: &[String]) {
    use crate::supervisor::State;
    let settled = supervisor.wait_for(|s| {
        required.iter().all(|name| s.get(name).is_some_and(|p| !matches!(p.state, State::Starting | State::Stopped)))
    });
    let _ = tokio::time::timeout(Duration::from_secs(60), settled).await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
}
