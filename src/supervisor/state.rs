//! The per-plug-in state machine of design.md §6, as a pure function: `(slot, event, now) →
//! actions`. No I/O, no clocks, no randomness (jitter is an input), so every transition is unit
//! tested without processes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{RestartMode, RestartPolicy};

/// Exit code by which a plug-in says "my configuration is wrong, do not restart me".
pub const EXIT_CONFIG_ERROR: i32 = 78;

/// Lifecycle state of a plug-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Stopped,
    Starting,
    Ready,
    Degraded,
    Backoff,
    Stopping,
    Failed,
    Disabled,
}

impl State {
    /// A process exists (or is being created) in these states.
    pub fn is_running(self) -> bool {
        matches!(self, State::Starting | State::Ready | State::Degraded | State::Stopping)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Starting => "starting",
            State::Ready => "ready",
            State::Degraded => "degraded",
            State::Backoff => "backoff",
            State::Stopping => "stopping",
            State::Failed => "failed",
            State::Disabled => "disabled",
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// Human-readable cause ("exited with code 1", "hung: 3 pings missed", …).
    pub reason: String,
    /// The failure is not transient (bad handshake, missing binary, checksum, exit 78).
    #[serde(skip)]
    pub fatal: bool,
}

impl ExitInfo {
    /// Exited by itself with one of `success_codes`.
    fn success(&self, success_codes: &[i32]) -> bool {
        !self.fatal && self.code.is_some_and(|c| success_codes.contains(&c))
    }
}

/// Inputs to the state machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Start,
    Stop,
    Restart,
    /// `start: false` leaves it stopped (its `after:` dependencies are not ready yet).
    Enable {
        start: bool,
    },
    Disable,
    /// The handshake finished and `plugin.health` said `serving`.
    Ready {
        generation: u64,
    },
    /// Health changed while running: `true` = serving, `false` = degraded or not serving.
    Healthy {
        generation: u64,
        serving: bool,
    },
    /// The process of `generation` is gone (reaped).
    Exited {
        generation: u64,
        exit: ExitInfo,
    },
    /// The backoff timer of `generation` fired.
    RestartDue {
        generation: u64,
    },
}

/// What the actor must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Spawn a new process with this generation.
    Spawn { generation: u64 },
    /// Stop the process of this generation gracefully.
    Stop { generation: u64 },
    /// Fire `RestartDue { generation }` after `delay`.
    ScheduleRestart { generation: u64, delay: Duration },
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("plug-in is disabled; enable it first")]
    Disabled,
}

/// Everything the supervisor knows about one plug-in between processes.
#[derive(Debug, Clone)]
pub struct Slot {
    pub state: State,
    /// Incremented for every spawn; events of older generations are ignored.
    pub generation: u64,
    /// Automatic restarts after unexpected exits.
    pub restarts: u32,
    pub last_exit: Option<ExitInfo>,
    /// Why the plug-in is `failed`, `degraded` or `backoff`.
    pub reason: Option<String>,
    pub started_at: Option<Instant>,
    pub next_restart_at: Option<Instant>,
    policy: RestartPolicy,
    crashes: VecDeque<Instant>,
    /// Consecutive quick crashes: the exponent of the backoff.
    backoff_step: u32,
    /// A start was requested while stopping.
    start_after_stop: bool,
    /// A disable was requested while stopping.
    disable_after_stop: bool,
}

impl Slot {
    pub fn new(policy: RestartPolicy, enabled: bool) -> Self {
        Self {
            state: if enabled { State::Stopped } else { State::Disabled },
            generation: 0,
            restarts: 0,
            last_exit: None,
            reason: None,
            started_at: None,
            next_restart_at: None,
            policy,
            crashes: VecDeque::new(),
            backoff_step: 0,
            start_after_stop: false,
            disable_after_stop: false,
        }
    }

    pub fn set_policy(&mut self, policy: RestartPolicy) {
        self.policy = policy;
    }

    /// Applies one event. `jitter` in `[-1, 1]` scales the ±20 % backoff jitter.
    pub fn on_event(&mut self, event: Event, now: Instant, jitter: f64) -> Result<Vec<Action>, Refused> {
        use State::*;
        let actions = match event {
            Event::Start => match self.state {
                Disabled => return Err(Refused::Disabled),
                Stopped | Failed | Backoff => {
                    if self.state == Failed {
                        // An operator start clears the crash history (design.md §6).
                        self.crashes.clear();
                        self.backoff_step = 0;
                    }
                    self.spawn(now)
                }
                Stopping => {
                    self.start_after_stop = true;
                    vec![]
                }
                Starting | Ready | Degraded => vec![],
            },
            Event::Stop => {
                self.start_after_stop = false;
                match self.state {
                    Starting | Ready | Degraded => self.begin_stop(),
                    Backoff => {
                        self.state = Stopped;
                        self.next_restart_at = None;
                        vec![]
                    }
                    Stopped | Failed | Disabled | Stopping => vec![],
                }
            }
            Event::Restart => match self.state {
                Disabled => return Err(Refused::Disabled),
                Starting | Ready | Degraded => {
                    self.start_after_stop = true;
                    self.begin_stop()
                }
                Stopping => {
                    self.start_after_stop = true;
                    vec![]
                }
                Stopped | Failed | Backoff => {
                    self.crashes.clear();
                    self.backoff_step = 0;
                    self.spawn(now)
                }
            },
            Event::Enable { start } => match self.state {
                Disabled => {
                    self.state = Stopped;
                    self.reason = None;
                    if start { self.spawn(now) } else { vec![] }
                }
                // A disable is still stopping the process: the enable wins and starts it again.
                Stopping if self.disable_after_stop => {
                    self.disable_after_stop = false;
                    self.start_after_stop = true;
                    vec![]
                }
                _ => vec![],
            },
            Event::Disable => {
                self.start_after_stop = false;
                match self.state {
                    Starting | Ready | Degraded => {
                        self.disable_after_stop = true;
                        self.begin_stop()
                    }
                    Stopping => {
                        self.disable_after_stop = true;
                        vec![]
                    }
                    Stopped | Failed | Backoff => {
                        self.state = Disabled;
                        self.next_restart_at = None;
                        vec![]
                    }
                    Disabled => vec![],
                }
            }
            Event::Ready { generation } if generation == self.generation && self.state == Starting => {
                self.state = Ready;
                self.reason = None;
                vec![]
            }
            Event::Healthy { generation, serving } if generation == self.generation => {
                match (self.state, serving) {
                    (Ready, false) => self.state = Degraded,
                    (Degraded, true) => {
                        self.state = Ready;
                        self.reason = None;
                    }
                    _ => {}
                }
                vec![]
            }
            Event::Exited { generation, exit } if generation == self.generation => self.on_exit(exit, now, jitter),
            Event::RestartDue { generation } if generation == self.generation && self.state == Backoff => {
                self.restarts += 1;
                self.spawn(now)
            }
            // Events from an older generation or in a state where they mean nothing.
            Event::Ready { .. } | Event::Healthy { .. } | Event::Exited { .. } | Event::RestartDue { .. } => vec![],
        };
        Ok(actions)
    }

    fn spawn(&mut self, now: Instant) -> Vec<Action> {
        self.generation += 1;
        self.state = State::Starting;
        self.started_at = Some(now);
        self.next_restart_at = None;
        self.reason = None;
        vec![Action::Spawn { generation: self.generation }]
    }

    fn begin_stop(&mut self) -> Vec<Action> {
        self.state = State::Stopping;
        vec![Action::Stop { generation: self.generation }]
    }

    fn on_exit(&mut self, exit: ExitInfo, now: Instant, jitter: f64) -> Vec<Action> {
        let uptime = self.started_at.map(|t| now.saturating_duration_since(t)).unwrap_or_default();
        self.started_at = None;
        let requested = self.state == State::Stopping;
        self.last_exit = Some(exit.clone());
        if requested {
            if std::mem::take(&mut self.disable_after_stop) {
                self.state = State::Disabled;
                return vec![];
            }
            self.state = State::Stopped;
            if std::mem::take(&mut self.start_after_stop) {
                return self.spawn(now);
            }
            return vec![];
        }
        if exit.fatal || exit.code == Some(EXIT_CONFIG_ERROR) {
            self.state = State::Failed;
            self.reason = Some(if exit.code == Some(EXIT_CONFIG_ERROR) {
                format!("configuration error (exit code {EXIT_CONFIG_ERROR}); fix the config, then start it")
            } else {
                exit.reason
            });
            return vec![];
        }
        let wants_restart = match self.policy.mode {
            RestartMode::Always => true,
            RestartMode::OnFailure => !exit.success(&self.policy.success_codes),
            RestartMode::Never => false,
        };
        if !wants_restart {
            self.state = State::Stopped;
            return vec![];
        }
        // Crash-loop guard: max_crashes within the window → failed until an operator acts.
        let window = Duration::from_secs(self.policy.crash_window_s);
        self.crashes.push_back(now);
        while self.crashes.front().is_some_and(|t| now.saturating_duration_since(*t) > window) {
            self.crashes.pop_front();
        }
        if self.crashes.len() >= self.policy.max_crashes as usize {
            self.state = State::Failed;
            self.reason = Some(format!(
                "crash loop: {} exits within {} s (last: {}); start it to try again",
                self.crashes.len(),
                self.policy.crash_window_s,
                exit.reason
            ));
            return vec![];
        }
        if uptime >= Duration::from_secs(self.policy.stable_after_s) {
            self.backoff_step = 0;
        }
        let delay = self.backoff_delay(jitter);
        self.backoff_step = self.backoff_step.saturating_add(1);
        self.state = State::Backoff;
        self.reason = Some(exit.reason);
        self.next_restart_at = Some(now + delay);
        vec![Action::ScheduleRestart { generation: self.generation, delay }]
    }

    /// The first crash after a stable run restarts at once; then 250 ms doubling to 30 s, ±20 %.
    fn backoff_delay(&self, jitter: f64) -> Duration {
        if self.backoff_step == 0 {
            return Duration::ZERO;
        }
        let exp = (self.backoff_step - 1).min(20);
        let base = self.policy.backoff_initial_ms.saturating_mul(1u64 << exp).min(self.policy.backoff_max_ms);
        let factor = 1.0 + 0.2 * jitter.clamp(-1.0, 1.0);
        Duration::from_millis((base as f64 * factor) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crash(code: i32) -> ExitInfo {
        ExitInfo { code: Some(code), signal: None, reason: format!("exited with code {code}"), fatal: false }
    }

    fn slot() -> Slot {
        Slot::new(RestartPolicy::default(), true)
    }

    fn exit_event(s: &Slot, exit: ExitInfo) -> Event {
        Event::Exited { generation: s.generation, exit }
    }

    #[test]
    fn start_ready_stop() {
        let t = Instant::now();
        let mut s = slot();
        assert_eq!(s.on_event(Event::Start, t, 0.0).unwrap(), vec![Action::Spawn { generation: 1 }]);
        assert_eq!(s.state, State::Starting);
        assert_eq!(s.on_event(Event::Start, t, 0.0).unwrap(), vec![], "start is idempotent");
        s.on_event(Event::Ready { generation: 1 }, t, 0.0).unwrap();
        assert_eq!(s.state, State::Ready);
        assert_eq!(s.on_event(Event::Stop, t, 0.0).unwrap(), vec![Action::Stop { generation: 1 }]);
        assert_eq!(s.state, State::Stopping);
        assert_eq!(s.on_event(exit_event(&s, crash(0)), t, 0.0).unwrap(), vec![]);
        assert_eq!(s.state, State::Stopped);
        assert_eq!(s.restarts, 0, "a requested stop is not a crash");
    }

    #[test]
    fn crash_after_stable_run_restarts_immediately_then_backs_off() {
        let t0 = Instant::now();
        let mut s = slot();
        s.on_event(Event::Start, t0, 0.0).unwrap();
        s.on_event(Event::Ready { generation: 1 }, t0, 0.0).unwrap();
        let t1 = t0 + Duration::from_secs(120);
        let a = s.on_event(exit_event(&s, crash(1)), t1, 0.0).unwrap();
        assert_eq!(a, vec![Action::ScheduleRestart { generation: 1, delay: Duration::ZERO }]);
        assert_eq!(s.state, State::Backoff);
        assert_eq!(
            s.on_event(Event::RestartDue { generation: 1 }, t1, 0.0).unwrap(),
            vec![Action::Spawn { generation: 2 }]
        );
        assert_eq!(s.restarts, 1);
        // A quick second crash waits 250 ms, then 500 ms.
        let a = s.on_event(exit_event(&s, crash(1)), t1, 0.0).unwrap();
        assert_eq!(a, vec![Action::ScheduleRestart { generation: 2, delay: Duration::from_millis(250) }]);
        s.on_event(Event::RestartDue { generation: 2 }, t1, 0.0).unwrap();
        let a = s.on_event(exit_event(&s, crash(1)), t1, 1.0).unwrap();
        assert_eq!(
            a,
            vec![Action::ScheduleRestart { generation: 3, delay: Duration::from_millis(600) }],
            "+20 % jitter"
        );
    }

    #[test]
    fn backoff_is_capped() {
        let mut s = Slot::new(RestartPolicy { max_crashes: 100, ..RestartPolicy::default() }, true);
        let t = Instant::now();
        s.on_event(Event::Start, t, 0.0).unwrap();
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            let a = s.on_event(exit_event(&s, crash(1)), t, 0.0).unwrap();
            let Action::ScheduleRestart { delay, generation } = a[0] else { panic!("{a:?}") };
            last = delay;
            s.on_event(Event::RestartDue { generation }, t, 0.0).unwrap();
        }
        assert_eq!(last, Duration::from_secs(30));
    }

    #[test]
    fn crash_loop_marks_failed_and_operator_start_clears_it() {
        let t = Instant::now();
        let mut s = slot();
        s.on_event(Event::Start, t, 0.0).unwrap();
        for i in 0..5 {
            let a = s.on_event(exit_event(&s, crash(1)), t + Duration::from_secs(i), 0.0).unwrap();
            if i < 4 {
                let Action::ScheduleRestart { generation, .. } = a[0] else { panic!("{a:?}") };
                s.on_event(Event::RestartDue { generation }, t, 0.0).unwrap();
            } else {
                assert_eq!(a, vec![]);
            }
        }
        assert_eq!(s.state, State::Failed);
        assert!(s.reason.as_deref().unwrap().starts_with("crash loop: 5 exits within 180 s"));
        assert_eq!(s.on_event(Event::Start, t, 0.0).unwrap(), vec![Action::Spawn { generation: 6 }]);
    }

    #[test]
    fn crashes_outside_the_window_do_not_count() {
        let t = Instant::now();
        let mut s = slot();
        s.on_event(Event::Start, t, 0.0).unwrap();
        for i in 0..10u64 {
            let a = s.on_event(exit_event(&s, crash(1)), t + Duration::from_secs(100 * i), 0.0).unwrap();
            let Action::ScheduleRestart { generation, .. } = a[0] else { panic!("crash {i}: {a:?}") };
            s.on_event(Event::RestartDue { generation }, t, 0.0).unwrap();
        }
        assert_ne!(s.state, State::Failed);
    }

    #[test]
    fn exit_78_and_fatal_errors_fail_without_restart() {
        let t = Instant::now();
        let mut s = slot();
        s.on_event(Event::Start, t, 0.0).unwrap();
        assert_eq!(s.on_event(exit_event(&s, crash(78)), t, 0.0).unwrap(), vec![]);
        assert_eq!(s.state, State::Failed);
        s.on_event(Event::Start, t, 0.0).unwrap();
        let fatal = ExitInfo { code: None, signal: None, reason: "sha256 mismatch".into(), fatal: true };
        s.on_event(exit_event(&s, fatal), t, 0.0).unwrap();
        assert_eq!((s.state, s.reason.as_deref()), (State::Failed, Some("sha256 mismatch")));
    }

    #[test]
    fn restart_policies() {
        let t = Instant::now();
        let mut never = Slot::new(RestartPolicy { mode: RestartMode::Never, ..RestartPolicy::default() }, true);
        never.on_event(Event::Start, t, 0.0).unwrap();
        assert_eq!(never.on_event(exit_event(&never, crash(1)), t, 0.0).unwrap(), vec![]);
        assert_eq!(never.state, State::Stopped);
        let mut on_failure =
            Slot::new(RestartPolicy { mode: RestartMode::OnFailure, ..RestartPolicy::default() }, true);
        on_failure.on_event(Event::Start, t, 0.0).unwrap();
        on_failure.on_event(exit_event(&on_failure, crash(0)), t, 0.0).unwrap();
        assert_eq!(on_failure.state, State::Stopped);
        on_failure.on_event(Event::Start, t, 0.0).unwrap();
        on_failure.on_event(exit_event(&on_failure, crash(2)), t, 0.0).unwrap();
        assert_eq!(on_failure.state, State::Backoff);
    }

    #[test]
    fn success_codes_decide_what_on_failure_restarts() {
        let t = Instant::now();
        let policy =
            RestartPolicy { mode: RestartMode::OnFailure, success_codes: vec![0, 3], ..RestartPolicy::default() };
        let mut s = Slot::new(policy, true);
        s.on_event(Event::Start, t, 0.0).unwrap();
        assert_eq!(s.on_event(exit_event(&s, crash(3)), t, 0.0).unwrap(), vec![]);
        assert_eq!(s.state, State::Stopped, "3 is a success here");
        s.on_event(Event::Start, t, 0.0).unwrap();
        s.on_event(exit_event(&s, crash(1)), t, 0.0).unwrap();
        assert_eq!(s.state, State::Backoff);
        // Killed by a signal is never a success.
        s.on_event(Event::RestartDue { generation: s.generation }, t, 0.0).unwrap();
        let killed = ExitInfo { code: None, signal: Some(9), reason: "killed by signal SIGKILL".into(), fatal: false };
        s.on_event(exit_event(&s, killed), t, 0.0).unwrap();
        assert_eq!(s.state, State::Backoff);
    }

    #[test]
    fn restart_while_running_stops_then_spawns() {
        let t = Instant::now();
        let mut s = slot();
        s.on_event(Event::Start, t, 0.0).unwrap();
        s.on_event(Event::Ready { generation: 1 }, t, 0.0).unwrap();
        assert_eq!(s.on_event(Event::Restart, t, 0.0).unwrap(), vec![Action::Stop { generation: 1 }]);
        assert_eq!(s.on_event(Event::Restart, t, 0.0).unwrap(), vec![], "a second restart joins the first");
        let a = s.on_event(exit_event(&s, crash(0)), t, 0.0).unwrap();
        assert_eq!(a, vec![Action::Spawn { generation: 2 }]);
        assert_eq!(s.restarts, 0);
    }

    #[test]
    fn stale_generations_are_ignored() {
        let t = Instant::now();
        let mut s = slot();
        s.on_event(Event::Start, t, 0.0).unwrap();
        s.on_event(Event::Restart, t, 0.0).unwrap();
        s.on_event(Event::Exited { generation: 1, exit: crash(0) }, t, 0.0).unwrap();
        assert_eq!((s.state, s.generation), (State::Starting, 2));
        assert_eq!(s.on_event(Event::Exited { generation: 1, exit: crash(1) }, t, 0.0).unwrap(), vec![]);
        assert_eq!(s.on_event(Event::Ready { generation: 1 }, t, 0.0).unwrap(), vec![]);
        assert_eq!(s.state, State::Starting);
    }

    #[test]
    fn disable_and_enable() {
        let t = Instant::now();
        let mut s = slot();
        s.on_event(Event::Start, t, 0.0).unwrap();
        assert_eq!(s.on_event(Event::Disable, t, 0.0).unwrap(), vec![Action::Stop { generation: 1 }]);
        s.on_event(exit_event(&s, crash(0)), t, 0.0).unwrap();
        assert_eq!(s.state, State::Disabled);
        assert_eq!(s.on_event(Event::Start, t, 0.0), Err(Refused::Disabled));
        assert_eq!(s.on_event(Event::Enable { start: true }, t, 0.0).unwrap(), vec![Action::Spawn { generation: 2 }]);
    }

    #[test]
    fn enable_while_a_disable_is_stopping_wins() {
        let t = Instant::now();
        let mut s = slot();
        s.on_event(Event::Start, t, 0.0).unwrap();
        s.on_event(Event::Disable, t, 0.0).unwrap();
        assert_eq!(s.on_event(Event::Enable { start: true }, t, 0.0).unwrap(), vec![]);
        let a = s.on_event(exit_event(&s, crash(0)), t, 0.0).unwrap();
        assert_eq!(a, vec![Action::Spawn { generation: 2 }]);
        assert_eq!(s.state, State::Starting);
    }

    #[test]
    fn health_toggles_degraded() {
        let t = Instant::now();
        let mut s = slot();
        s.on_event(Event::Start, t, 0.0).unwrap();
        s.on_event(Event::Ready { generation: 1 }, t, 0.0).unwrap();
        s.on_event(Event::Healthy { generation: 1, serving: false }, t, 0.0).unwrap();
        assert_eq!(s.state, State::Degraded);
        s.on_event(Event::Healthy { generation: 1, serving: true }, t, 0.0).unwrap();
        assert_eq!(s.state, State::Ready);
    }
}
