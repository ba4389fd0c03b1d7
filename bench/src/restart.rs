//! `restart`: SIGKILL a ready plug-in and time until its replacement is ready again.
//!
//! Two clocks: the bench's own (kill → `GET /admin/plugins/f` shows a new pid `ready`, polled
//! every millisecond) and the daemon's log (`plug-in state` lines: `ready → backoff` is the
//! moment the supervisor saw the exit, `starting → ready` the end of the new handshake).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::daemon::{self, Daemon, StateEvent};
use crate::stats::{Goal, Metric, Samples};

const BENCH: &str = "restart";
/// Kills before the measured ones (page-in, first spawn of the runtime's blocking pool).
const WARMUP: usize = 3;

/// Which restart policy the plug-in gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Policy {
    /// `stable_after_s: 0`: every exit counts as "after a stable run", so the supervisor
    /// restarts at once (delay 0) and the number is the pure exit → ready path.
    Immediate,
    /// `backoff_initial_ms = backoff_max_ms = 1`: consecutive crashes wait 1 ms ± 20 %.
    Backoff1ms,
}

impl Policy {
    fn json(self) -> Value {
        match self {
            Policy::Immediate => json!({
                "backoff_initial_ms": 1, "backoff_max_ms": 1, "max_crashes": 1_000_000, "stable_after_s": 0
            }),
            Policy::Backoff1ms => json!({"backoff_initial_ms": 1, "backoff_max_ms": 1, "max_crashes": 1_000_000}),
        }
    }
}

pub(crate) async fn run(bkg: &Path, kills: usize, policy: Policy) -> anyhow::Result<Vec<Metric>> {
    let tmp = tempfile::tempdir()?;
    let registry =
        daemon::write_registry(tmp.path(), &[json!({"name": "f", "builtin": "fake", "restart": policy.json()})])?;
    let mut d = Daemon::start_logged_in(bkg, &tmp.path().join("data"), &registry).await?;
    d.wait_ready(&["f"]).await?;
    while d.states.try_recv().is_ok() {}
    let (_, view) = d.get("/admin/plugins/f").await?;
    let mut pid = view["pid"].as_u64().context("no pid")?;

    let mut polled = Samples::with_capacity(kills);
    let mut inside = Samples::with_capacity(kills);
    let mut scheduled = Samples::with_capacity(kills);
    let mut handshake = Samples::with_capacity(kills);
    let mut to_exit = Samples::with_capacity(kills);
    let mut to_ready_log = Samples::with_capacity(kills);
    for i in 0..WARMUP + kills {
        let kill_wall = daemon::now_us();
        let t = Instant::now();
        kill(Pid::from_raw(i32::try_from(pid)?), Signal::SIGKILL)?;
        let old = pid;
        let view = d
            .poll("/admin/plugins/f", Duration::from_millis(1), Duration::from_secs(20), |v| {
                v["state"] == "ready" && v["pid"].as_u64().is_some_and(|p| p != old)
            })
            .await?;
        let seen = t.elapsed();
        pid = view["pid"].as_u64().context("no pid")?;
        let logged = transitions(&mut d).await?;
        if i >= WARMUP {
            polled.push(seen);
            inside.push_us((logged.ready - logged.exit) as f64);
            scheduled.push_us((logged.starting - logged.exit) as f64);
            handshake.push_us((logged.ready - logged.starting) as f64);
            to_exit.push_us((logged.exit - kill_wall) as f64);
            to_ready_log.push_us((logged.ready - kill_wall) as f64);
        }
    }
    let (_, view) = d.get("/admin/plugins/f").await?;
    d.stop().await?;
    let restarts = view["restarts"].as_f64().unwrap_or(f64::NAN);

    let ms = |us: f64| us / 1_000.0;
    let label = match policy {
        Policy::Immediate => "",
        Policy::Backoff1ms => " [1 ms backoff]",
    };
    let mut out = vec![];
    if policy == Policy::Immediate {
        out.push(Metric::target(
            BENCH,
            "exit observed → new process ready (daemon log), p50",
            "ms",
            ms(inside.percentile(50.0)),
            Goal::Below(5.0),
            "< 5 ms (#3)",
        ));
    } else {
        out.push(Metric::info(
            BENCH,
            format!("exit observed → new process ready (daemon log), p50{label}"),
            "ms",
            ms(inside.percentile(50.0)),
        ));
    }
    out.extend([
        Metric::info(
            BENCH,
            format!("exit observed → new process ready (daemon log), p99{label}"),
            "ms",
            ms(inside.percentile(99.0)),
        ),
        Metric::info(
            BENCH,
            format!("… of which exit → spawn begins (backoff → starting), p50{label}"),
            "ms",
            ms(scheduled.percentile(50.0)),
        ),
        Metric::info(
            BENCH,
            format!("… of which spawn → handshake done (starting → ready), p50{label}"),
            "ms",
            ms(handshake.percentile(50.0)),
        ),
        Metric::info(
            BENCH,
            format!("kill → exit observed (daemon log), p50{label}"),
            "ms",
            ms(to_exit.percentile(50.0)),
        ),
        Metric::info(BENCH, format!("kill → ready (daemon log), p50{label}"), "ms", ms(to_ready_log.percentile(50.0))),
        Metric::info(
            BENCH,
            format!("kill → ready seen by 1 ms HTTP poll, p50{label}"),
            "ms",
            ms(polled.percentile(50.0)),
        ),
        Metric::info(
            BENCH,
            format!("kill → ready seen by 1 ms HTTP poll, p99{label}"),
            "ms",
            ms(polled.percentile(99.0)),
        ),
        Metric::info(BENCH, format!("restarts counted by the daemon{label}"), "", restarts),
    ]);
    Ok(out)
}

/// Times (µs, daemon clock) of one restart as logged.
struct Logged {
    /// `ready → backoff`: the supervisor handled the exit.
    exit: i64,
    /// `backoff → starting`: the restart timer fired and the spawn began.
    starting: i64,
    /// `starting → ready`: the new process finished its handshake.
    ready: i64,
}

/// The next `ready → backoff`, and the `→ starting` and `→ ready` after it, for plug-in `f`.
async fn transitions(d: &mut Daemon) -> anyhow::Result<Logged> {
    let mut exit = None;
    let mut starting = None;
    loop {
        let ev: StateEvent = match tokio::time::timeout(Duration::from_secs(5), d.states.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => bail!("the daemon's log ended"),
            Err(_) => bail!("no state transition logged within 5 s; log tail:\n{}", d.log_tail()),
        };
        if ev.plugin != "f" {
            continue;
        }
        match ev.to.as_str() {
            "backoff" if ev.from == "ready" => exit = Some(ev.ts_us),
            "starting" => starting = Some(ev.ts_us),
            "ready" => {
                if let (Some(exit), Some(starting)) = (exit, starting) {
                    return Ok(Logged { exit, starting, ready: ev.ts_us });
                }
            }
            "failed" => bail!("the plug-in failed: {ev:?}"),
            _ => {}
        }
    }
}
