//! The supervisor actor: the single owner of every plug-in slot.
//!
//! It reacts to three inputs in one `select!`: commands from handles, events from instance
//! tasks, and backoff timers. Each input goes through the pure state machine (`state.rs`), and
//! the resulting actions are the only place where instance tasks are started or stopped. After
//! every input the actor publishes a fresh [`Snapshot`]. The actor never awaits I/O itself.
//!
//! `after:` dependencies: a start (or enable) of an entry whose dependencies are not all ready
//! leaves it `stopped` and *waiting*; it starts when the last of them becomes ready. At daemon
//! shutdown an entry is stopped only once everything that depends on it has stopped, and
//! `apikeys` stops last of all. Operator stops and restarts do not cascade.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bkg_plugin_sdk::protocol::{Health, HealthStatus, methods};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::instance::{self, InstanceCtx, InstanceEvent};
use super::state::{Action, Event, Slot, State};
use super::{Command, ControlOp, Error, PluginView, Snapshot, SupervisorConfig};
use crate::config::{Launch, PluginSpec, Registry};
use crate::logs::{Level, LogHub, LogSink};
use crate::rpc::RpcClient;

/// The plug-in that stops last so that requests still draining can authenticate.
const STOPS_LAST: &str = "apikeys";

struct Entry {
    spec: Arc<PluginSpec>,
    slot: Slot,
    instance: Option<Instance>,
    health: Option<Health>,
    methods: Vec<String>,
    version: Option<String>,
    config_schema: Option<serde_json::Value>,
    ready_at: Option<SystemTime>,
    last_exit_at: Option<SystemTime>,
    /// Set when the entry was removed while its process still ran.
    removed: bool,
    /// A start is pending until its `after:` dependencies are ready.
    waiting: bool,
}

struct Instance {
    generation: u64,
    pid: Option<u32>,
    client: Option<RpcClient>,
    stop: CancellationToken,
    force: CancellationToken,
}

struct ShutdownProgress {
    replies: Vec<oneshot::Sender<()>>,
}

pub(super) struct SupervisorActor {
    entries: Vec<Entry>,
    config: SupervisorConfig,
    logs: LogHub,
    snapshot: watch::Sender<Arc<Snapshot>>,
    events_tx: mpsc::UnboundedSender<InstanceEvent>,
    events_rx: mpsc::UnboundedReceiver<InstanceEvent>,
    timers_tx: mpsc::UnboundedSender<(String, u64)>,
    timers_rx: mpsc::UnboundedReceiver<(String, u64)>,
    shutdown: Option<ShutdownProgress>,
    forced: bool,
}

impl SupervisorActor {
    pub(super) fn new(
        registry: Registry,
        config: SupervisorConfig,
        logs: LogHub,
        snapshot: watch::Sender<Arc<Snapshot>>,
    ) -> Self {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (timers_tx, timers_rx) = mpsc::unbounded_channel();
        let entries = registry.plugins.into_iter().map(new_entry).collect();
        let actor = Self {
            entries,
            config,
            logs,
            snapshot,
            events_tx,
            events_rx,
            timers_tx,
            timers_rx,
            shutdown: None,
            forced: false,
        };
        // Publish the registry before the actor task first runs, so that a request arriving
        // right after start sees every plug-in (as `stopped`) instead of a 404.
        actor.publish();
        actor
    }

    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let names: Vec<String> =
            self.entries.iter().filter(|e| e.spec.enabled).map(|e| e.spec.name.to_string()).collect();
        for name in names {
            if let Some(idx) = self.index(&name)
                && let Err(e) = self.start_when_ready(idx, Event::Start)
            {
                tracing::debug!(plugin = name, error = %e, "start refused");
            }
        }
        self.release_waiting();
        self.publish();
        loop {
            // Every branch only updates in-memory state and starts tasks; none of them awaits
            // I/O, so the actor stays responsive whatever the plug-ins do.
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    // Every handle is gone: stop everything as on a daemon shutdown.
                    None => self.begin_shutdown(None),
                },
                Some(ev) = self.events_rx.recv() => self.on_instance_event(ev),
                Some((name, generation)) = self.timers_rx.recv() => {
                    // No restarts once the daemon is stopping.
                    if self.shutdown.is_none() {
                        self.apply(&name, Event::RestartDue { generation });
                    } else {
                        self.apply(&name, Event::Stop);
                    }
                }
            }
            self.release_waiting();
            self.advance_shutdown();
            self.publish();
            if self.shutdown.is_some() && self.all_stopped() {
                if let Some(progress) = self.shutdown.take() {
                    for reply in progress.replies {
                        let _ = reply.send(());
                    }
                }
                // Keep serving read-only requests until every handle is dropped.
                while let Some(cmd) = commands.recv().await {
                    self.refuse(cmd);
                }
                return;
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        if self.shutdown.is_some() {
            match cmd {
                Command::Shutdown { reply } => self.begin_shutdown(Some(reply)),
                Command::ForceKill => self.force_all(),
                other => self.refuse(other),
            }
            return;
        }
        match cmd {
            Command::Control { name, op, reply } => {
                let _ = reply.send(self.control(&name, op));
            }
            Command::Register { spec, reply } => {
                let _ = reply.send(self.register(spec));
            }
            Command::Update { spec, reply } => {
                let _ = reply.send(self.update(spec));
            }
            Command::Remove { name, reply } => {
                let _ = reply.send(self.remove(&name));
            }
            Command::SetLogLevel { level } => {
                for entry in &self.entries {
                    if let Some(client) = entry.instance.as_ref().and_then(|i| i.client.as_ref()) {
                        client.notify(methods::SET_LOG_LEVEL, json!({ "level": level }));
                    }
                }
                self.config.log_level = level;
            }
            Command::Shutdown { reply } => self.begin_shutdown(Some(reply)),
            Command::ForceKill => self.force_all(),
        }
    }

    fn refuse(&self, cmd: Command) {
        match cmd {
            Command::Control { reply, .. } | Command::Register { reply, .. } | Command::Update { reply, .. } => {
                let _ = reply.send(Err(Error::ShuttingDown));
            }
            Command::Remove { reply, .. } => {
                let _ = reply.send(Err(Error::ShuttingDown));
            }
            Command::Shutdown { reply } => {
                let _ = reply.send(());
            }
            Command::SetLogLevel { .. } | Command::ForceKill => {}
        }
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.spec.name.as_str() == name && !e.removed)
    }

    fn control(&mut self, name: &str, op: ControlOp) -> Result<PluginView, Error> {
        let idx = self.index(name).ok_or_else(|| Error::NotFound(name.to_owned()))?;
        match op {
            ControlOp::Start => self.start_when_ready(idx, Event::Start)?,
            ControlOp::Enable => self.start_when_ready(idx, Event::Enable { start: true })?,
            ControlOp::Restart => self.apply_at(idx, Event::Restart)?,
            ControlOp::Stop | ControlOp::Disable => {
                self.entries[idx].waiting = false;
                let event = if op == ControlOp::Stop { Event::Stop } else { Event::Disable };
                self.apply_at(idx, event)?;
            }
        }
        Ok(self.view(&self.entries[idx]))
    }

    fn unmet_dependencies(&self, idx: usize) -> Vec<String> {
        self.unmet_dependencies_of(&self.entries[idx])
    }

    /// Names of the `after:` dependencies of an entry that are not ready (or degraded) now.
    fn unmet_dependencies_of(&self, entry: &Entry) -> Vec<String> {
        entry
            .spec
            .after
            .iter()
            .filter(|dep| {
                self.index(dep.as_str())
                    .is_none_or(|d| !matches!(self.entries[d].slot.state, State::Ready | State::Degraded))
            })
            .map(ToString::to_string)
            .collect()
    }

    /// Applies a start or enable now if the dependencies are ready; otherwise marks the entry
    /// waiting (an enable still leaves `disabled`).
    fn start_when_ready(&mut self, idx: usize, event: Event) -> Result<(), Error> {
        let idle = matches!(self.entries[idx].slot.state, State::Stopped | State::Failed | State::Disabled);
        if !idle || self.unmet_dependencies(idx).is_empty() {
            return self.apply_at(idx, event);
        }
        if let Event::Enable { .. } = event {
            self.apply_at(idx, Event::Enable { start: false })?;
        } else if self.entries[idx].slot.state == State::Disabled {
            // Refused by the state machine, as without dependencies.
            return self.apply_at(idx, event);
        }
        self.entries[idx].waiting = true;
        Ok(())
    }

    /// Starts every waiting entry whose dependencies are now all ready.
    fn release_waiting(&mut self) {
        if self.shutdown.is_some() {
            return;
        }
        let due: Vec<usize> = (0..self.entries.len())
            .filter(|&i| self.entries[i].waiting && self.unmet_dependencies(i).is_empty())
            .collect();
        for idx in due {
            self.entries[idx].waiting = false;
            self.apply_at_quiet(idx, Event::Start);
        }
    }

    fn register(&mut self, spec: PluginSpec) -> Result<PluginView, Error> {
        let name = spec.name.to_string();
        if self.index(&name).is_some() || self.entries.iter().any(|e| e.spec.name.as_str() == name) {
            return Err(Error::AlreadyExists(name));
        }
        // Only existing entries can be named, so a new entry cannot close a cycle.
        if let Some(dep) = spec.after.iter().find(|dep| self.index(dep.as_str()).is_none()) {
            return Err(Error::UnknownDependency(dep.to_string()));
        }
        let enabled = spec.enabled;
        self.entries.push(new_entry(spec));
        let idx = self.entries.len() - 1;
        if enabled {
            self.start_when_ready(idx, Event::Start)?;
        }
        Ok(self.view(&self.entries[idx]))
    }

    fn update(&mut self, spec: PluginSpec) -> Result<PluginView, Error> {
        let name = spec.name.to_string();
        let idx = self.index(&name).ok_or_else(|| Error::NotFound(name.clone()))?;
        let entry = &mut self.entries[idx];
        entry.slot.set_policy(spec.restart.clone());
        entry.spec = Arc::new(spec);
        // A running plug-in picks up its new config by restarting; a failed one gets a fresh
        // chance because its config changed (design.md §6).
        let event = match entry.slot.state {
            State::Starting | State::Ready | State::Degraded | State::Stopping => Some(Event::Restart),
            State::Failed | State::Backoff => Some(Event::Start),
            State::Stopped | State::Disabled => None,
        };
        if let Some(event) = event {
            self.apply_at(idx, event)?;
        }
        Ok(self.view(&self.entries[idx]))
    }

    fn remove(&mut self, name: &str) -> Result<(), Error> {
        let idx = self.index(name).ok_or_else(|| Error::NotFound(name.to_owned()))?;
        let dependents = self.dependents(idx);
        if !dependents.is_empty() {
            let names: Vec<&str> = dependents.iter().map(|d| self.entries[*d].spec.name.as_str()).collect();
            return Err(Error::Conflict(format!(
                "{} depend(s) on {name} (\"after\"); remove them or their dependency first",
                names.join(", ")
            )));
        }
        let _ = self.apply_at(idx, Event::Stop);
        if self.entries[idx].instance.is_some() {
            // Forget it once its process has been reaped.
            self.entries[idx].removed = true;
        } else {
            self.entries.remove(idx);
        }
        Ok(())
    }

    fn apply(&mut self, name: &str, event: Event) {
        if let Some(idx) = self.entries.iter().position(|e| e.spec.name.as_str() == name)
            && let Err(e) = self.apply_at(idx, event)
        {
            tracing::debug!(plugin = name, error = %e, "event refused");
        }
    }

    /// Runs one event through the state machine and carries out the actions.
    fn apply_at(&mut self, idx: usize, event: Event) -> Result<(), Error> {
        let jitter = rand::random::<f64>() * 2.0 - 1.0;
        let entry = &mut self.entries[idx];
        let before = entry.slot.state;
        let actions = entry.slot.on_event(event, Instant::now(), jitter).map_err(|e| Error::Conflict(e.to_string()))?;
        let after = entry.slot.state;
        if before != after {
            let name = entry.spec.name.as_str();
            tracing::info!(
                plugin = name,
                from = before.as_str(),
                to = after.as_str(),
                reason = entry.slot.reason.as_deref(),
                "plug-in state"
            );
        }
        for action in actions {
            self.carry_out(idx, action);
        }
        Ok(())
    }

    fn carry_out(&mut self, idx: usize, action: Action) {
        let entry = &mut self.entries[idx];
        match action {
            Action::Spawn { generation } => {
                let stop = CancellationToken::new();
                let force = CancellationToken::new();
                if self.forced {
                    force.cancel();
                }
                let ctx = InstanceCtx {
                    spec: Arc::clone(&entry.spec),
                    generation,
                    work_dir: self.config.plugins_dir.join(entry.spec.name.as_str()),
                    log: self.logs.plugin(entry.spec.name.as_str()),
                    log_level: self.config.log_level.clone(),
                    owner: self.config.owner.clone(),
                    events: self.events_tx.clone(),
                    stop: stop.clone(),
                    force: force.clone(),
                    injected: match &entry.spec.launch {
                        Launch::Builtin { builtin } => self.config.injected.get(builtin).cloned(),
                        Launch::Command { .. } => None,
                    },
                };
                entry.health = None;
                ctx.log.set_rate(entry.spec.log_lines_per_s);
                entry.instance = Some(Instance { generation, pid: None, client: None, stop, force });
                tokio::spawn(instance::run(ctx));
            }
            Action::Stop { generation } => {
                if let Some(inst) = entry.instance.as_ref().filter(|i| i.generation == generation) {
                    inst.stop.cancel();
                }
            }
            Action::ScheduleRestart { generation, delay } => {
                let timers = self.timers_tx.clone();
                let name = entry.spec.name.to_string();
                let log = self.logs.plugin(&name);
                LogSink::note(&log, Level::Info, format!("restarting in {} ms", delay.as_millis()));
                if delay.is_zero() {
                    // An immediate restart goes straight to the queue: a zero sleep would still
                    // wait for the timer wheel's next 1 ms tick.
                    let _ = timers.send((name, generation));
                } else {
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = timers.send((name, generation));
                    });
                }
            }
        }
    }

    fn on_instance_event(&mut self, ev: InstanceEvent) {
        match ev {
            InstanceEvent::Spawned { name, generation, pid } => {
                if let Some(inst) = self.instance_mut(name.as_str(), generation) {
                    inst.pid = Some(pid);
                }
            }
            InstanceEvent::Ready { name, generation, client, init } => {
                let Some(idx) = self.entries.iter().position(|e| e.spec.name == name) else { return };
                let entry = &mut self.entries[idx];
                if let Some(inst) = entry.instance.as_mut().filter(|i| i.generation == generation) {
                    inst.client = client;
                }
                entry.methods = init.as_ref().map(|i| i.methods.keys().cloned().collect()).unwrap_or_default();
                entry.version = init.as_ref().map(|i| i.plugin.version.clone());
                entry.config_schema = init.and_then(|i| i.capabilities.config_schema);
                entry.ready_at = Some(SystemTime::now());
                entry.health = Some(Health::serving());
                self.apply_at_quiet(idx, Event::Ready { generation });
            }
            InstanceEvent::Health { name, generation, health } => {
                let Some(idx) = self.entries.iter().position(|e| e.spec.name == name) else { return };
                let serving = health.status == HealthStatus::Serving;
                if self.entries[idx].instance.as_ref().is_some_and(|i| i.generation == generation) {
                    self.entries[idx].health = Some(health);
                }
                self.apply_at_quiet(idx, Event::Healthy { generation, serving });
            }
            InstanceEvent::Exited { name, generation, exit } => {
                let Some(idx) = self.entries.iter().position(|e| e.spec.name == name) else { return };
                let entry = &mut self.entries[idx];
                if entry.instance.as_ref().is_some_and(|i| i.generation == generation) {
                    entry.instance = None;
                    entry.last_exit_at = Some(SystemTime::now());
                    entry.health = None;
                }
                if entry.removed && entry.instance.is_none() {
                    self.entries.remove(idx);
                    return;
                }
                self.apply_at_quiet(idx, Event::Exited { generation, exit });
            }
        }
    }

    fn apply_at_quiet(&mut self, idx: usize, event: Event) {
        if let Err(e) = self.apply_at(idx, event) {
            tracing::debug!(error = %e, "event refused");
        }
    }

    fn instance_mut(&mut self, name: &str, generation: u64) -> Option<&mut Instance> {
        self.entries
            .iter_mut()
            .find(|e| e.spec.name.as_str() == name)?
            .instance
            .as_mut()
            .filter(|i| i.generation == generation)
    }

    fn begin_shutdown(&mut self, reply: Option<oneshot::Sender<()>>) {
        let progress = self.shutdown.get_or_insert_with(|| ShutdownProgress { replies: vec![] });
        progress.replies.extend(reply);
        for entry in &mut self.entries {
            entry.waiting = false;
        }
        self.advance_shutdown();
    }

    /// Stops, in parallel, every entry that nothing running depends on any more: dependents
    /// before their `after:` dependencies, and [`STOPS_LAST`] after all others (protocol.md
    /// §2.12). Called after every input until everything has stopped.
    fn advance_shutdown(&mut self) {
        if self.shutdown.is_none() {
            return;
        }
        let others_done = self.entries.iter().filter(|e| e.spec.name.as_str() != STOPS_LAST).all(is_down);
        let due: Vec<usize> = (0..self.entries.len())
            .filter(|&i| !is_down(&self.entries[i]) && self.entries[i].slot.state != State::Stopping)
            .filter(|&i| self.entries[i].spec.name.as_str() != STOPS_LAST || others_done)
            .filter(|&i| self.dependents(i).iter().all(|&d| is_down(&self.entries[d])))
            .collect();
        for idx in due {
            self.apply_at_quiet(idx, Event::Stop);
        }
    }

    /// Entries that list entry `idx` in their `after:`.
    fn dependents(&self, idx: usize) -> Vec<usize> {
        let name = &self.entries[idx].spec.name;
        (0..self.entries.len())
            .filter(|&i| !self.entries[i].removed && self.entries[i].spec.after.contains(name))
            .collect()
    }

    fn all_stopped(&self) -> bool {
        self.entries.iter().all(is_down)
    }

    fn force_all(&mut self) {
        self.forced = true;
        for entry in &self.entries {
            if let Some(inst) = &entry.instance {
                inst.force.cancel();
            }
        }
    }

    fn publish(&self) {
        let plugins = self.entries.iter().filter(|e| !e.removed).map(|e| self.view(e)).collect();
        self.snapshot.send_replace(Arc::new(Snapshot { plugins }));
    }

    fn view(&self, entry: &Entry) -> PluginView {
        let slot = &entry.slot;
        let inst = entry.instance.as_ref();
        PluginView {
            name: entry.spec.name.to_string(),
            state: slot.state,
            enabled: slot.state != State::Disabled,
            required: entry.spec.required,
            pid: inst.and_then(|i| i.pid),
            generation: slot.generation,
            restarts: slot.restarts,
            started_at: slot.started_at.map(to_system_time),
            ready_at: if matches!(slot.state, State::Ready | State::Degraded) { entry.ready_at } else { None },
            next_restart_at: slot.next_restart_at.map(to_system_time),
            last_exit: slot.last_exit.clone(),
            last_exit_at: entry.last_exit_at,
            waiting_for: if entry.waiting { self.unmet_dependencies_of(entry) } else { vec![] },
            reason: slot
                .reason
                .clone()
                .or_else(|| {
                    entry.health.as_ref().filter(|h| h.status != HealthStatus::Serving).and_then(|h| h.detail.clone())
                })
                .or_else(|| {
                    let deps = self.unmet_dependencies_of(entry);
                    (entry.waiting && !deps.is_empty()).then(|| format!("waiting for {} to be ready", deps.join(", ")))
                }),
            health: entry.health.clone(),
            methods: entry.methods.clone(),
            version: entry.version.clone(),
            config_schema: entry.config_schema.clone(),
            spec: Arc::clone(&entry.spec),
            client: inst.and_then(|i| i.client.clone()),
        }
    }
}

/// No process and none on the way.
fn is_down(entry: &Entry) -> bool {
    entry.instance.is_none() && !entry.slot.state.is_running()
}

fn new_entry(spec: PluginSpec) -> Entry {
    Entry {
        slot: Slot::new(spec.restart.clone(), spec.enabled),
        spec: Arc::new(spec),
        instance: None,
        health: None,
        methods: vec![],
        version: None,
        config_schema: None,
        ready_at: None,
        last_exit_at: None,
        removed: false,
        waiting: false,
    }
}

/// Converts a monotonic instant to wall-clock time for display.
fn to_system_time(t: Instant) -> SystemTime {
    let now = Instant::now();
    if t <= now { SystemTime::now() - now.duration_since(t) } else { SystemTime::now() + t.duration_since(now) }
}
