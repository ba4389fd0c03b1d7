//! Plug-in lifecycle: the supervisor actor and its public handle.
//!
//! - `state`: the pure state machine of design.md §6 (unit-tested, no I/O).
//! - `actor`: the single task that owns every plug-in slot and turns state-machine actions into
//!   instance tasks and timers.
//! - `instance`: one process from spawn to reap (handshake, pings, graceful stop).
//! - `plain`: the running phase of a plain (`protocol: "none"`) process; `probe` its checks.
//! - `process`: building commands, the sha256 pin, process groups and signals.
//!
//! Architecture Invariant: only this module creates processes or sends signals. Callers talk to
//! the actor through [`SupervisorHandle`] (commands over a channel) and read its state from a
//! published [`Snapshot`], so a slow caller never holds a lock the actor needs.

mod actor;
mod instance;
mod plain;
mod probe;
pub mod process;
pub mod state;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use bkg_plugin_sdk::protocol::Health;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

pub use state::{ExitInfo, State};

use crate::config::{PluginSpec, Registry};
use crate::logs::LogHub;
use crate::rpc::{self, CallOptions, RpcClient};

/// An operator's lifecycle command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlOp {
    Start,
    Stop,
    Restart,
    Enable,
    Disable,
}

impl ControlOp {
    /// Parses the last path segment of `POST /admin/plugins/:name/<op>`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "start" => Some(Self::Start),
            "stop" => Some(Self::Stop),
            "restart" | "reload" => Some(Self::Restart),
            "enable" => Some(Self::Enable),
            "disable" => Some(Self::Disable),
            _ => None,
        }
    }
}

/// Why a supervisor command failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("no plug-in named {0:?}")]
    NotFound(String),
    #[error("a plug-in named {0:?} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    Conflict(String),
    #[error("\"after\" names {0:?}, which is not registered")]
    UnknownDependency(String),
    #[error("the supervisor is shutting down")]
    ShuttingDown,
}

/// What the outside world sees of one plug-in.
#[derive(Debug, Clone, Serialize)]
pub struct PluginView {
    pub name: String,
    pub state: State,
    pub enabled: bool,
    pub required: bool,
    pub pid: Option<u32>,
    /// Spawn counter of this plug-in since the daemon started.
    pub generation: u64,
    /// Automatic restarts after unexpected exits.
    pub restarts: u32,
    pub started_at: Option<SystemTime>,
    pub ready_at: Option<SystemTime>,
    pub next_restart_at: Option<SystemTime>,
    pub last_exit: Option<ExitInfo>,
    pub last_exit_at: Option<SystemTime>,
    /// Why the plug-in is failed, degraded, waiting to restart or waiting for dependencies.
    pub reason: Option<String>,
    /// `after:` dependencies a pending start waits for (empty when none is pending).
    pub waiting_for: Vec<String>,
    pub health: Option<Health>,
    /// Methods the plug-in declared in its handshake.
    pub methods: Vec<String>,
    /// Version the plug-in reported.
    pub version: Option<String>,
    /// The declared JSON schema of its config, if any.
    pub config_schema: Option<Value>,
    #[serde(skip)]
    pub spec: Arc<PluginSpec>,
    #[serde(skip)]
    pub client: Option<RpcClient>,
}

/// The published state of every plug-in, in registry order.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub plugins: Vec<PluginView>,
}

impl Snapshot {
    pub fn get(&self, name: &str) -> Option<&PluginView> {
        self.plugins.iter().find(|p| p.name == name)
    }
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RpcClient")
    }
}

/// Supervisor settings that are not per plug-in.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// `<data>/plugins`: each plug-in's working directory is `<plugins_dir>/<name>`.
    pub plugins_dir: PathBuf,
    /// Level handed to plug-ins at start.
    pub log_level: String,
    /// Config keys added to a built-in's `initialize.config` at spawn time (secrets, paths);
    /// never stored in the registry, never logged.
    pub injected: Injected,
    /// Goes into every child's environment as [`process::OWNER_ENV`] (the canonical data
    /// directory), so that a later daemon on the same data directory finds what this one left.
    pub owner: String,
}

/// Built-in name → extra config keys.
pub type Injected = BTreeMap<String, serde_json::Map<String, Value>>;

pub(crate) enum Command {
    Control { name: String, op: ControlOp, reply: oneshot::Sender<Result<PluginView, Error>> },
    Register { spec: PluginSpec, reply: oneshot::Sender<Result<PluginView, Error>> },
    Update { spec: PluginSpec, reply: oneshot::Sender<Result<PluginView, Error>> },
    Remove { name: String, reply: oneshot::Sender<Result<(), Error>> },
    SetLogLevel { level: String },
    Shutdown { reply: oneshot::Sender<()> },
    ForceKill,
}

/// The public, cheap-clone handle to the supervisor actor.
#[derive(Clone)]
pub struct SupervisorHandle {
    tx: mpsc::Sender<Command>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
}

impl SupervisorHandle {
    /// Starts the actor and every enabled plug-in of `registry`.
    pub fn start(registry: Registry, config: SupervisorConfig, logs: LogHub) -> Self {
        let (tx, rx) = mpsc::channel(256);
        let (snap_tx, snapshot) = watch::channel(Arc::new(Snapshot::default()));
        tokio::spawn(actor::SupervisorActor::new(registry, config, logs, snap_tx).run(rx));
        Self { tx, snapshot }
    }

    /// The current state of every plug-in.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// Waits until `pred` holds for the published state.
    pub async fn wait_for(&self, mut pred: impl FnMut(&Snapshot) -> bool) -> Arc<Snapshot> {
        let mut rx = self.snapshot.clone();
        match rx.wait_for(|s| pred(s)).await {
            Ok(s) => s.clone(),
            // The actor is gone (shutdown): return what we have.
            Err(_) => self.snapshot(),
        }
    }

    /// Applies a lifecycle command; answers with the resulting view.
    pub async fn control(&self, name: &str, op: ControlOp) -> Result<PluginView, Error> {
        self.request(|reply| Command::Control { name: name.to_owned(), op, reply }).await
    }

    /// Adds a plug-in (started when enabled).
    pub async fn register(&self, spec: PluginSpec) -> Result<PluginView, Error> {
        self.request(|reply| Command::Register { spec, reply }).await
    }

    /// Replaces a plug-in's spec; a running plug-in is restarted with it.
    pub async fn update(&self, spec: PluginSpec) -> Result<PluginView, Error> {
        self.request(|reply| Command::Update { spec, reply }).await
    }

    /// Stops and removes a plug-in.
    pub async fn remove(&self, name: &str) -> Result<(), Error> {
        self.request(|reply| Command::Remove { name: name.to_owned(), reply }).await
    }

    /// Changes the log level of every running plug-in (`$/setLogLevel`) and of future ones.
    pub async fn set_log_level(&self, level: &str) {
        let _ = self.tx.send(Command::SetLogLevel { level: level.to_owned() }).await;
    }

    /// Stops every plug-in gracefully (apikeys last) and waits until all are reaped.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// A round trip through the actor's command queue (for the systemd watchdog): `true` once the
    /// actor has answered a command, `false` if it is gone.
    pub async fn ping(&self) -> bool {
        let (reply, rx) = oneshot::channel();
        // "" is never a plug-in name (names are validated), so this is a lookup with no effect.
        let probe = Command::Control { name: String::new(), op: ControlOp::Start, reply };
        self.tx.send(probe).await.is_ok() && rx.await.is_ok()
    }

    /// Skips the remaining grace periods: SIGKILL to every plug-in group (second signal).
    pub fn force_kill(&self) {
        let _ = self.tx.try_send(Command::ForceKill);
    }

    /// Calls a method of a ready plug-in.
    pub async fn call(
        &self,
        plugin: &str,
        method: &str,
        params: Value,
        options: CallOptions,
    ) -> Result<Value, rpc::Error> {
        let client = self.client(plugin).ok_or(rpc::Error::Unavailable)?;
        client.call(method, params, options).await
    }

    /// The connection to a plug-in that is ready or degraded.
    pub fn client(&self, plugin: &str) -> Option<RpcClient> {
        let snap = self.snapshot.borrow();
        let view = snap.get(plugin)?;
        matches!(view.state, State::Ready | State::Degraded).then(|| view.client.clone()).flatten()
    }

    async fn request<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T, Error>>) -> Command) -> Result<T, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| Error::ShuttingDown)?;
        rx.await.unwrap_or(Err(Error::ShuttingDown))
    }
}

/// Registry entries as a name → spec map (for the mirror file).
pub fn specs_by_name(snapshot: &Snapshot) -> BTreeMap<String, Arc<PluginSpec>> {
    snapshot.plugins.iter().map(|p| (p.name.clone(), Arc::clone(&p.spec))).collect()
}
