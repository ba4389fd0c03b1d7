//! The real daemon (`bkg serve`) as a child process, its JSON log on stderr, and /proc helpers.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::mpsc;

/// A `plug-in state` transition the daemon logged.
#[derive(Debug, Clone)]
pub(crate) struct StateEvent {
    pub(crate) plugin: String,
    pub(crate) from: String,
    pub(crate) to: String,
    /// The log line's timestamp, µs since the Unix epoch (the daemon's wall clock).
    pub(crate) ts_us: i64,
}

/// What the stderr reader thread collects.
#[derive(Default)]
struct LogState {
    /// Re-emitted plug-in lines (target `plugin`) by `<plugin>:<first word of the message>`.
    plugin_lines: HashMap<String, u64>,
    /// The last lines, for error messages.
    tail: VecDeque<String>,
}

/// A running `bkg serve`, killed (SIGKILL) if dropped without [`Daemon::stop`].
pub(crate) struct Daemon {
    child: Option<Child>,
    pub(crate) addr: SocketAddr,
    pub(crate) token: String,
    pub(crate) http: reqwest::Client,
    /// When the process was spawned.
    pub(crate) spawned_at: Instant,
    /// The same moment on the wall clock, µs since the Unix epoch (to compare with log times).
    pub(crate) spawned_wall_us: i64,
    /// When the `listening` line was read.
    pub(crate) listening_at: Instant,
    pub(crate) states: mpsc::UnboundedReceiver<StateEvent>,
    log: Arc<Mutex<LogState>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The password of the `admin` user the daemon creates on first start (`ADMIN_PASSWORD`).
const ADMIN_PASSWORD: &str = "bkg-bench admin password";

/// The apikeys entry of the shipped `plugins.json`: every guarded route needs it.
pub(crate) fn apikeys_spec() -> Value {
    serde_json::json!({"name": "apikeys", "builtin": "apikeys", "required": true, "config": {}})
}

/// Writes `{"plugins": [apikeys, ...plugins]}` to `<dir>/registry.json` and returns its path.
pub(crate) fn write_registry(dir: &Path, plugins: &[Value]) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let mut all = vec![apikeys_spec()];
    all.extend(plugins.iter().cloned());
    let path = dir.join("registry.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&serde_json::json!({ "plugins": all }))?)?;
    Ok(path)
}

impl Daemon {
    /// [`Daemon::start`], then logs in as `admin` (once apikeys is ready).
    pub(crate) async fn start_logged_in(bkg: &Path, dir: &Path, registry: &Path) -> anyhow::Result<Self> {
        let mut d = Self::start(bkg, dir, registry).await?;
        d.login().await?;
        Ok(d)
    }

    /// Spawns `bkg serve --listen 127.0.0.1:0 --data-dir <dir> --registry <registry> --log-format
    /// json` (with `ADMIN_PASSWORD` set) and waits for its `listening` line. Not logged in.
    pub(crate) async fn start(bkg: &Path, dir: &Path, registry: &Path) -> anyhow::Result<Self> {
        Self::start_opts(bkg, dir, registry, true).await
    }

    /// [`Daemon::start`]; without `ADMIN_PASSWORD` when `password` is false (a later start of
    /// a daemon whose admin user exists: login still works with the same password).
    pub(crate) async fn start_opts(bkg: &Path, dir: &Path, registry: &Path, password: bool) -> anyhow::Result<Self> {
        let mut cmd = Command::new(bkg);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json", "--log-level", "info"])
            .arg("--data-dir")
            .arg(dir)
            .arg("--registry")
            .arg(registry)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("RUST_LOG")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("ADMIN_PASSWORD")
            // Not `dir`: it may not exist yet (the daemon creates it, 0700).
            .current_dir(registry.parent().unwrap_or(Path::new("/")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if password {
            cmd.env("ADMIN_PASSWORD", ADMIN_PASSWORD);
        }
        let spawned_wall_us = now_us();
        let spawned_at = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("cannot spawn {}", bkg.display()))?;
        let pipe = child.stderr.take().context("stderr not piped")?;
        let log = Arc::new(Mutex::new(LogState::default()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (state_tx, states) = mpsc::unbounded_channel();
        let thread_log = Arc::clone(&log);
        std::thread::spawn(move || read_log(pipe, &thread_log, &addr_tx, &state_tx));
        let addr = tokio::task::spawn_blocking(move || addr_rx.recv_timeout(Duration::from_secs(20))).await?;
        let listening_at = Instant::now();
        let Ok(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            let tail = lock(&log).tail.iter().cloned().collect::<Vec<_>>().join("\n");
            bail!("the daemon did not report `listening` within 20 s; its log:\n{tail}");
        };
        let token = String::new();
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(180)).build()?;
        Ok(Self { child: Some(child), addr, token, http, spawned_at, spawned_wall_us, listening_at, states, log })
    }

    /// Waits (on the public `/health`) for apikeys to be ready, then `POST /auth/login` as
    /// `admin`; the session token is used as the bearer token from then on.
    pub(crate) async fn login(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Ok(res) = self.http.get(self.url("/health")).send().await
                && let Ok(health) = res.json::<Value>().await
                && health["plugins"]["apikeys"] == "ready"
            {
                break;
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("apikeys not ready within 60 s; daemon log tail:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let body = serde_json::json!({"user": "admin", "password": ADMIN_PASSWORD});
        let res = self.http.post(self.url("/auth/login")).json(&body).send().await?;
        let status = res.status();
        let reply: Value = res.json().await.unwrap_or_default();
        let Some(token) = reply["token"].as_str() else { bail!("login failed: {status} {reply}") };
        self.token = token.to_owned();
        Ok(())
    }

    /// A counter of `/metrics` for one plug-in, e.g. `bkg_plugin_log_dropped_total`.
    pub(crate) async fn metric(&self, name: &str, plugin: &str) -> anyhow::Result<f64> {
        let res = self.http.get(self.url("/metrics")).bearer_auth(&self.token).send().await?;
        let text = res.text().await?;
        let prefix = format!("{name}{{plugin=\"{plugin}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no {prefix} in /metrics"))
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `GET` with the session token; the body as JSON (or a string).
    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<(StatusCode, Value)> {
        let res = self.http.get(self.url(path)).bearer_auth(&self.token).send().await?;
        split(res).await
    }

    /// `POST` of a JSON body with the session token.
    pub(crate) async fn post(&self, path: &str, body: &Value) -> anyhow::Result<(StatusCode, Value)> {
        let res = self.http.post(self.url(path)).bearer_auth(&self.token).json(body).send().await?;
        split(res).await
    }

    /// Polls `GET path` every `every` until `pred` holds; returns the body.
    pub(crate) async fn poll(
        &self,
        path: &str,
        every: Duration,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let start = Instant::now();
        loop {
            // Connection errors while the server comes up count as "not yet".
            if let Ok((_, body)) = self.get(path).await
                && pred(&body)
            {
                return Ok(body);
            }
            if start.elapsed() > limit {
                bail!("timed out after {limit:?} polling {path}; daemon log tail:\n{}", self.log_tail());
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Waits until every plug-in in `names` is `ready` (polled every 10 ms).
    pub(crate) async fn wait_ready(&self, names: &[&str]) -> anyhow::Result<Value> {
        self.poll("/admin/plugins", Duration::from_millis(10), Duration::from_secs(30), |v| {
            names.iter().all(|n| {
                v["plugins"].as_array().is_some_and(|ps| ps.iter().any(|p| p["name"] == *n && p["state"] == "ready"))
            })
        })
        .await
    }

    /// Re-emitted plug-in lines seen so far for `plugin` whose message starts with `word`.
    pub(crate) fn plugin_lines(&self, plugin: &str, word: &str) -> u64 {
        lock(&self.log).plugin_lines.get(&format!("{plugin}:{word}")).copied().unwrap_or(0)
    }

    pub(crate) fn log_tail(&self) -> String {
        lock(&self.log).tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// SIGTERM, then waits for the exit (SIGKILL after 20 s).
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        let pid = Pid::from_raw(i32::try_from(child.id())?);
        let _ = kill(pid, Signal::SIGTERM);
        let start = Instant::now();
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the daemon did not exit within 20 s of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn split(res: reqwest::Response) -> anyhow::Result<(StatusCode, Value)> {
    let status = res.status();
    let bytes = res.bytes().await?;
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Ok((status, body))
}

/// The stderr reader: the `listening` address, state transitions and plug-in line counts.
fn read_log(
    pipe: std::process::ChildStderr,
    log: &Mutex<LogState>,
    addr_tx: &std::sync::mpsc::Sender<SocketAddr>,
    state_tx: &mpsc::UnboundedSender<StateEvent>,
) {
    let mut reader = BufReader::with_capacity(256 * 1024, pipe);
    let mut buf = Vec::with_capacity(4096);
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end();
        let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
        let message = v["message"].as_str().unwrap_or_default();
        if v["target"] == "plugin" {
            let word = message.split_whitespace().next().unwrap_or_default();
            let key = format!("{}:{word}", v["plugin"].as_str().unwrap_or_default());
            *lock(log).plugin_lines.entry(key).or_default() += 1;
            continue;
        }
        if message == "listening"
            && let Some(addr) = v["addr"].as_str().and_then(|a| a.parse().ok())
        {
            let _ = addr_tx.send(addr);
        }
        if message == "plug-in state"
            && let Some(ts_us) = v["timestamp"].as_str().and_then(parse_rfc3339_us)
        {
            let field = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            let _ = state_tx.send(StateEvent { plugin: field("plugin"), from: field("from"), to: field("to"), ts_us });
        }
        let mut state = lock(log);
        if state.tail.len() >= 200 {
            state.tail.pop_front();
        }
        state.tail.push_back(line.to_owned());
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac]Z` into µs since the Unix epoch.
pub(crate) fn parse_rfc3339_us(s: &str) -> Option<i64> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.strip_suffix('Z')?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, sec) = (t.next()??, t.next()??, t.next()??);
    let mut micros = 0i64;
    for (i, c) in frac.chars().chain(std::iter::repeat('0')).take(6).enumerate() {
        let digit = i64::from(c.to_digit(10)?);
        micros += digit * 10i64.pow(5 - i as u32);
    }
    let days = days_from_civil(y, m, day);
    Some(((days * 86_400 + h * 3_600 + mi * 60 + sec) * 1_000_000) + micros)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Wall clock now, µs since the Unix epoch.
pub(crate) fn now_us() -> i64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// CPU time (user + system, all threads) of a process, in seconds, from /proc/<pid>/stat.
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let (_, rest) = stat.rsplit_once(')').context("malformed /proc/pid/stat")?;
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.context("no CLK_TCK")?;
    Ok((utime + stime) as f64 / ticks as f64)
}

/// CPU time of a process in seconds from the scheduler (`/proc/<pid>/task/*/schedstat`, ns
/// resolution): the sum over the threads alive now, so a thread that exited is missing.
pub(crate) fn sched_seconds(pid: u32) -> anyhow::Result<f64> {
    let mut ns: u64 = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        if let Ok(text) = std::fs::read_to_string(path) {
            ns += text.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Ok(ns as f64 / 1e9)
}

/// A `kB` field of /proc/<pid>/status (`VmRSS`, `RssAnon`, `RssFile`, `VmHWM`…) in KiB.
pub(crate) fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let prefix = format!("{field}:");
    status
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tracing_timestamps() {
        assert_eq!(parse_rfc3339_us("1970-01-01T00:00:01.000002Z"), Some(1_000_002));
        assert_eq!(parse_rfc3339_us("2000-02-29T00:00:00Z"), Some(951_782_400_000_000));
        assert_eq!(parse_rfc3339_us("2026-11-18T11:06:40.123Z"), Some(1_795_000_000_123_000));
    }
}
