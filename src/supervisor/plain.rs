//! The running phase of a plain (`protocol: "none"`) process: `starting` until its readiness
//! probe passes (at once without one), then a monitor task runs the probes on their periods.
//! Readiness failures (`failure_threshold` in a row) mark it degraded; liveness failures kill
//! it so the restart policy brings it back (a hung or SIGSTOPped child included).
//!
//! Spawning, log capture and the stop escalation are shared with svp/1 plug-ins in `instance`.

use bkg_plugin_sdk::protocol::{Health, HealthStatus};
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use super::instance::{Ending, InstanceCtx, InstanceEvent, Verdict, exited, run_until_ending};
use super::probe::Checker;
use crate::logs::{Level, LogSink, PluginLog};

/// Readiness, then the running phase; returns how it ended.
pub(super) async fn supervise(ctx: &InstanceCtx, child: &mut Child, first_seq: u64) -> Ending {
    let probes = &ctx.spec.probes;
    let mut readiness = probes.readiness.as_ref().map(|p| Checker::new(p, &ctx.log, first_seq));
    let liveness = probes.liveness.as_ref().map(|p| Checker::new(p, &ctx.log, first_seq));
    let became_ready = async {
        match readiness.as_mut() {
            Some(checker) => wait_ready(checker, ctx.spec.timeouts.ready()).await,
            None => Ok(()),
        }
    };
    tokio::select! {
        res = became_ready => if let Err(reason) = res {
            return Ending::Kill { reason, fatal: false };
        },
        status = child.wait() => return exited(status),
        () = ctx.stop.cancelled() => return Ending::StopRequested,
        () = ctx.force.cancelled() => return Ending::Kill { reason: "forced stop".into(), fatal: false },
    }
    LogSink::note(&ctx.log, Level::Info, "ready");
    let _ = ctx.events.send(InstanceEvent::Ready {
        name: ctx.spec.name.clone(),
        generation: ctx.generation,
        client: None,
        init: None,
    });

    let (verdict_tx, verdicts) = mpsc::channel(8);
    let monitor_stop = CancellationToken::new();
    let _stop_monitor = monitor_stop.clone().drop_guard();
    if let Some(checker) = readiness {
        let log = Arc::clone(&ctx.log);
        tokio::spawn(watch(checker, Role::Readiness, log, verdict_tx.clone(), monitor_stop.clone()));
    }
    if let Some(checker) = liveness {
        tokio::spawn(watch(checker, Role::Liveness, Arc::clone(&ctx.log), verdict_tx, monitor_stop));
    }
    run_until_ending(ctx, child, verdicts).await
}

/// Runs the readiness probe on its period until it passes, within `limit` (`timeouts.ready_ms`).
async fn wait_ready(checker: &mut Checker, limit: std::time::Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + limit;
    tokio::time::sleep(checker.probe().initial_delay()).await;
    loop {
        let last = match checker.check().await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if tokio::time::Instant::now() + checker.probe().period() > deadline {
            return Err(format!("not ready within {limit:?} (readiness probe: {last})"));
        }
        tokio::time::sleep(checker.probe().period()).await;
    }
}

#[derive(Clone, Copy)]
enum Role {
    Readiness,
    Liveness,
}

/// One probe after readiness: checks on its period and reports when the verdict changes (to the
/// instance, and as a note in the process's log).
async fn watch(
    mut checker: Checker,
    role: Role,
    log: Arc<PluginLog>,
    out: mpsc::Sender<Verdict>,
    stop: CancellationToken,
) {
    let threshold = checker.probe().failure_threshold;
    let period = checker.probe().period();
    if let Role::Liveness = role {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(checker.probe().initial_delay()) => {}
        }
    }
    let mut failures = 0u32;
    let mut degraded = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = checker.check() => outcome,
        };
        match (outcome, role) {
            (Ok(()), Role::Readiness) if degraded => {
                degraded = false;
                failures = 0;
                LogSink::note(&log, Level::Info, "readiness probe passes again");
                let _ = out.send(Verdict::Health(Health::serving())).await;
            }
            (Ok(()), _) => failures = 0,
            (Err(reason), role) => {
                failures += 1;
                if failures < threshold {
                    continue;
                }
                match role {
                    Role::Liveness => {
                        let why = format!("liveness probe failed {failures} times in a row: {reason}");
                        let _ = out.send(Verdict::Kill(why)).await;
                        return;
                    }
                    Role::Readiness if !degraded => {
                        degraded = true;
                        let why = format!("readiness probe failed {failures} times in a row: {reason}");
                        LogSink::note(&log, Level::Warn, why.clone());
                        let _ = out.send(Verdict::Health(Health::with_status(HealthStatus::Degraded, why))).await;
                    }
                    Role::Readiness => {}
                }
            }
        }
    }
}
