//! `startup`: `bkg serve` with 4 fake plug-ins, from spawn to `GET /health` showing all 4
//! `ready`, and the daemon's resident memory once they idle.
//!
//! Each run starts twice on one data directory: `cold` (first start: creates `bkg.db`, seeds the
//! registry, writes `admin.token`) and `warm` (the database exists, as on every later start).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::daemon::{self, Daemon};
use crate::stats::{Goal, Metric};

const BENCH: &str = "startup";
const NAMES: [&str; 4] = ["f1", "f2", "f3", "f4"];

pub(crate) async fn run(bkg: &Path) -> anyhow::Result<Vec<Metric>> {
    let tmp = tempfile::tempdir()?;
    let plugins: Vec<Value> = NAMES.iter().map(|n| json!({"name": n, "builtin": "fake"})).collect();
    let registry = daemon::write_registry(tmp.path(), &json!({ "plugins": plugins }))?;
    let data = tmp.path().join("data");
    let mut out = vec![];
    for phase in ["cold", "warm"] {
        let mut d = Daemon::start(bkg, &data, &registry).await?;
        let body = d
            .poll("/health", Duration::from_millis(1), Duration::from_secs(30), |v| {
                v["plugins"].as_object().is_some_and(|p| p.len() == NAMES.len() && p.values().all(|s| s == "ready"))
            })
            .await?;
        let ready = d.spawned_at.elapsed();
        anyhow::ensure!(body["plugins_count"] == NAMES.len(), "unexpected /health: {body}");
        let listening = d.listening_at.duration_since(d.spawned_at);
        // The daemon's own view: its last `starting → ready` line.
        let mut last_ready_us = None;
        while let Ok(ev) = d.states.try_recv() {
            if ev.to == "ready" {
                last_ready_us = Some(ev.ts_us);
            }
        }
        let logged = last_ready_us.map_or(f64::NAN, |t| (t - d.spawned_wall_us) as f64 / 1_000.0);

        tokio::time::sleep(Duration::from_secs(2)).await;
        let pid = d.pid();
        let rss = daemon::status_kib(pid, "VmRSS")? as f64 / 1024.0;
        let anon = daemon::status_kib(pid, "RssAnon")? as f64 / 1024.0;
        let file = daemon::status_kib(pid, "RssFile")? as f64 / 1024.0;
        let (_, list) = d.get("/admin/plugins").await?;
        let mut plugin_rss = vec![];
        for p in list["plugins"].as_array().into_iter().flatten() {
            if let Some(pid) = p["pid"].as_u64().and_then(|p| u32::try_from(p).ok()) {
                plugin_rss.push(daemon::status_kib(pid, "VmRSS")? as f64 / 1024.0);
            }
        }
        anyhow::ensure!(plugin_rss.len() == NAMES.len(), "expected 4 plug-in pids: {list}");
        let stop = Instant::now();
        d.stop().await?;
        let stopped = stop.elapsed();

        let ms = |d: Duration| d.as_secs_f64() * 1_000.0;
        out.extend([
            Metric::target(
                BENCH,
                format!("{phase}: spawn → /health shows 4 ready (1 ms poll)"),
                "ms",
                ms(ready),
                Goal::Below(100.0),
                "< 100 ms (#3)",
            ),
            Metric::info(BENCH, format!("{phase}: spawn → 4th plug-in ready (daemon log)"), "ms", logged),
            Metric::info(BENCH, format!("{phase}: spawn → `listening` line read"), "ms", ms(listening)),
            Metric::target(
                BENCH,
                format!("{phase}: daemon VmRSS, 4 idle plug-ins, after 2 s"),
                "MiB",
                rss,
                Goal::Below(12.0),
                "< 12 MiB (#3)",
            ),
            Metric::info(BENCH, format!("{phase}: daemon RssAnon"), "MiB", anon),
            Metric::info(BENCH, format!("{phase}: daemon RssFile"), "MiB", file),
            Metric::info(
                BENCH,
                format!("{phase}: plug-in VmRSS, mean of 4"),
                "MiB",
                plugin_rss.iter().sum::<f64>() / plugin_rss.len() as f64,
            ),
            Metric::info(
                BENCH,
                format!("{phase}: plug-in VmRSS, max of 4"),
                "MiB",
                plugin_rss.iter().copied().fold(0.0, f64::max),
            ),
            Metric::info(BENCH, format!("{phase}: SIGTERM → daemon exited (4 plug-ins)"), "ms", ms(stopped)),
        ]);
    }
    Ok(out)
}
