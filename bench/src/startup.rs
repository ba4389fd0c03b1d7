//! `startup`: `bkg serve` with 4 fake plug-ins (plus apikeys, which every daemon needs), from
//! spawn to the public `GET /health` showing them `ready`, and the daemon's resident memory once
//! they idle.
//!
//! Each run starts twice on one data directory: `cold` (first start: creates `bkg.db`, seeds the
//! registry, apikeys creates the `admin` user) and `warm` (the database exists, as on every later
//! start), both with `ADMIN_PASSWORD` set as the systemd unit does (`LoadCredential`); then a
//! third start without it, which shows what apikeys' bcrypt check of that password costs.
//! apikeys runs with the shipped config (`{}`, bcrypt cost 10), as in `plugins.json`.

use std::cell::Cell;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::daemon::{self, Daemon};
use crate::stats::{Goal, Metric};

const BENCH: &str = "startup";
const FAKES: [&str; 4] = ["f1", "f2", "f3", "f4"];

pub(crate) async fn run(bkg: &Path) -> anyhow::Result<Vec<Metric>> {
    let tmp = tempfile::tempdir()?;
    let plugins: Vec<Value> = FAKES.iter().map(|n| json!({"name": n, "builtin": "fake"})).collect();
    let registry = daemon::write_registry(tmp.path(), &plugins)?;
    let data = tmp.path().join("data");
    let mut out = vec![];
    for (phase, password) in [("cold", true), ("warm", true), ("warm, no ADMIN_PASSWORD", false)] {
        let mut d = Daemon::start_opts(bkg, &data, &registry, password).await?;
        // The first poll that saw the 4 fakes ready, and the one that saw all 5.
        let fakes_ready: Cell<Option<Instant>> = Cell::new(None);
        let body = d
            .poll("/health", Duration::from_millis(1), Duration::from_secs(60), |v| {
                let ready = |name: &str| v["plugins"][name] == "ready";
                if fakes_ready.get().is_none() && FAKES.iter().all(|n| ready(n)) {
                    fakes_ready.set(Some(Instant::now()));
                }
                fakes_ready.get().is_some() && ready("apikeys")
            })
            .await?;
        let all_ready = d.spawned_at.elapsed();
        let fakes = fakes_ready.get().map_or(all_ready, |t| t.duration_since(d.spawned_at));
        anyhow::ensure!(body["plugins_count"] == FAKES.len() + 1, "unexpected /health: {body}");
        let listening = d.listening_at.duration_since(d.spawned_at);
        // The daemon's own view: the last `→ ready` line of a fake.
        let mut last_ready_us = None;
        while let Ok(ev) = d.states.try_recv() {
            if ev.to == "ready" && FAKES.contains(&ev.plugin.as_str()) {
                last_ready_us = Some(ev.ts_us);
            }
        }
        let logged = last_ready_us.map_or(f64::NAN, |t| (t - d.spawned_wall_us) as f64 / 1_000.0);

        tokio::time::sleep(Duration::from_secs(2)).await;
        let pid = d.pid();
        let mib = |field: &str| daemon::status_kib(pid, field).map(|k| k as f64 / 1024.0);
        let (rss, anon, file) = (mib("VmRSS")?, mib("RssAnon")?, mib("RssFile")?);
        // Logging in (for the plug-in pids) comes after the RSS reading.
        d.login().await?;
        let (_, list) = d.get("/admin/plugins").await?;
        let mut fake_rss = vec![];
        let mut apikeys_rss = f64::NAN;
        for p in list["plugins"].as_array().into_iter().flatten() {
            let Some(pid) = p["pid"].as_u64().and_then(|p| u32::try_from(p).ok()) else { continue };
            let kib = daemon::status_kib(pid, "VmRSS")? as f64 / 1024.0;
            if p["name"] == "apikeys" {
                apikeys_rss = kib;
            } else {
                fake_rss.push(kib);
            }
        }
        anyhow::ensure!(fake_rss.len() == FAKES.len(), "expected 4 fake plug-in pids: {list}");
        let stop = Instant::now();
        d.stop().await?;
        let stopped = stop.elapsed();

        let ms = |d: Duration| d.as_secs_f64() * 1_000.0;
        out.extend([
            Metric::target(
                BENCH,
                format!("{phase}: spawn → /health shows the 4 fakes ready (1 ms poll)"),
                "ms",
                ms(fakes),
                Goal::Below(100.0),
                "< 100 ms (#3)",
            ),
            Metric::target(
                BENCH,
                format!("{phase}: spawn → /health shows all 5 ready, apikeys too (1 ms poll)"),
                "ms",
                ms(all_ready),
                Goal::Below(100.0),
                "< 100 ms (#3)",
            ),
            Metric::info(BENCH, format!("{phase}: spawn → 4th fake ready (daemon log)"), "ms", logged),
            Metric::info(BENCH, format!("{phase}: spawn → `listening` line read"), "ms", ms(listening)),
            Metric::target(
                BENCH,
                format!("{phase}: daemon VmRSS, 4 idle fakes + apikeys, after 2 s"),
                "MiB",
                rss,
                Goal::Below(12.0),
                "< 12 MiB (#3)",
            ),
            Metric::info(BENCH, format!("{phase}: daemon RssAnon"), "MiB", anon),
            Metric::info(BENCH, format!("{phase}: daemon RssFile"), "MiB", file),
            Metric::info(
                BENCH,
                format!("{phase}: fake plug-in VmRSS, mean of 4"),
                "MiB",
                fake_rss.iter().sum::<f64>() / fake_rss.len() as f64,
            ),
            Metric::info(
                BENCH,
                format!("{phase}: fake plug-in VmRSS, max of 4"),
                "MiB",
                fake_rss.iter().copied().fold(0.0, f64::max),
            ),
            Metric::info(BENCH, format!("{phase}: apikeys plug-in VmRSS"), "MiB", apikeys_rss),
            Metric::info(BENCH, format!("{phase}: SIGTERM → daemon exited (5 plug-ins)"), "ms", ms(stopped)),
        ]);
    }
    Ok(out)
}
