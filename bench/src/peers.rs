//! `peers`: the same plain-process workloads under bkg, supervisord and pm2 (issue 8).
//!
//! Every tool supervises the same 50 children: 49 `/bin/sleep 3600 0.<marker>` (GNU sleep adds
//! its arguments; the second one makes each child's command line unique, so the bench can find
//! it in /proc) and one Python log writer that waits on a FIFO before it writes. Per run:
//!
//! 1. **start**: for each tool in turn, from launching it (`bkg serve`, `supervisord -c`,
//!    `pm2 start ecosystem.json` with the daemon not yet running) until its own status API says
//!    all 50 are running: bkg's `GET /health` (the public form of `GET /admin/plugins`: the same
//!    snapshot) shows `ready`, supervisord's XML-RPC `supervisor.getAllProcessInfo` shows
//!    `RUNNING`, `pm2 jlist` shows `online`.
//! 2. **restart**: `kill -9` of one sleep child (a different child each time, so each kill is
//!    that child's first crash and no tool's crash-loop backoff applies), then scanning /proc
//!    every 0.5 ms until a process with that child's command line and a new pid exists (i.e. the
//!    replacement has exec'd). The same method for all three.
//! 3. **idle**: the three supervisors with their 50 children each, idle together for
//!    `--idle-s` seconds: CPU time (/proc/<pid>/stat) and VmRSS / RssAnon of the supervisor's own
//!    process only (bkg daemon; supervisord's Python process; pm2's God daemon), children
//!    excluded.
//! 4. **log**: the writer gets its go on the FIFO and writes `--log-lines` lines of exactly 100
//!    bytes to stdout (Python, 8 KiB block buffering); time until the tool has taken all of
//!    them: supervisord and pm2 — their stdout log file holds all bytes; bkg — lines kept
//!    (re-emitted on the daemon's log, which the bench reads like journald would) plus
//!    `bkg_plugin_log_dropped_total` reach the count. The supervisor's CPU over that interval.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::daemon::{self, Daemon};
use crate::stats::{Metric, Samples, fmt_num};

const BENCH: &str = "peers";
/// Kills before the measured ones, on children of their own.
const WARMUP_KILLS: usize = 2;
/// Every byte count the log writer produces is a multiple of this.
const LINE_BYTES: u64 = 100;

/// The log writer: waits for the FIFO to be opened, written and closed, then writes `n` lines of
/// exactly 100 bytes through `sys.stdout` (block-buffered on a pipe) and sleeps.
const WRITER_PY: &str = r#"import sys, time
fifo, n = sys.argv[1], int(sys.argv[2])
with open(fifo) as f:
    f.read()
w = sys.stdout.write
pad = "x" * 84
for i in range(n):
    w("line %09d %s\n" % (i, pad))
sys.stdout.flush()
while True:
    time.sleep(3600)
"#;

/// What `bkg-bench peers` needs besides the `bkg` binary.
#[derive(Debug, Clone)]
pub(crate) struct PeersOpts {
    pub(crate) children: usize,
    pub(crate) kills: usize,
    pub(crate) idle: Duration,
    pub(crate) log_lines: u64,
    pub(crate) supervisord: PathBuf,
    pub(crate) pm2: PathBuf,
    pub(crate) python: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Tool {
    Bkg,
    Supervisord,
    Pm2,
}

const TOOLS: [Tool; 3] = [Tool::Bkg, Tool::Supervisord, Tool::Pm2];

impl Tool {
    fn label(self) -> &'static str {
        match self {
            Tool::Bkg => "bkg",
            Tool::Supervisord => "supervisord",
            Tool::Pm2 => "pm2",
        }
    }
}

/// One number of one tool in one run.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    metric: &'static str,
    unit: &'static str,
    tool: Tool,
    value: f64,
}

fn row(tool: Tool, metric: &'static str, unit: &'static str, value: f64) -> Row {
    Row { metric, unit, tool, value }
}

/// The children of one tool in one run: names, the marker argument of each sleep, the FIFO.
struct Layout {
    dir: PathBuf,
    /// `(name, marker)` of every sleep child.
    sleeps: Vec<(String, String)>,
    fifo: PathBuf,
    writer: PathBuf,
    python: PathBuf,
    log_lines: u64,
}

const LOG_NAME: &str = "logwriter";

impl Layout {
    fn new(dir: &Path, tool: Tool, run: usize, opts: &PeersOpts) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let sleeps = (0..opts.children.saturating_sub(1)).map(|i| (format!("c{i:02}"), marker(run, tool, i))).collect();
        let fifo = dir.join("go.fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR)
            .with_context(|| format!("cannot create the FIFO {}", fifo.display()))?;
        let writer = dir.join("writer.py");
        std::fs::write(&writer, WRITER_PY).with_context(|| format!("cannot write {}", writer.display()))?;
        Ok(Self { dir: dir.to_owned(), sleeps, fifo, writer, python: opts.python.clone(), log_lines: opts.log_lines })
    }

    fn count(&self) -> usize {
        self.sleeps.len() + 1
    }

    fn names(&self) -> Vec<String> {
        self.sleeps.iter().map(|(n, _)| n.clone()).chain([LOG_NAME.to_owned()]).collect()
    }

    fn writer_args(&self) -> Vec<String> {
        vec![self.writer.display().to_string(), self.fifo.display().to_string(), self.log_lines.to_string()]
    }
}

/// The prefix of every marker of this bench process: `0.<pid>`.
fn marker_prefix() -> String {
    format!("0.{}", std::process::id())
}

/// `0.<bench pid><run><tool><index>`: a sleep argument (≤ 1 s added) unique to one child.
fn marker(run: usize, tool: Tool, i: usize) -> String {
    format!("{}{}{}{i:03}", marker_prefix(), run % 10, tool as u8)
}

// ---------------------------------------------------------------------------------------------
// /proc

fn proc_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return vec![] };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

fn proc_ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn proc_cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect())
}

/// The pid of the live process whose arguments include `marker`.
fn find_marked(marker: &str) -> Option<u32> {
    proc_pids().into_iter().find(|pid| proc_cmdline(*pid).is_some_and(|args| args.iter().any(|a| a == marker)))
}

/// SIGKILL of `old` (the child carrying `marker`), then /proc scans every 0.5 ms until a
/// process carrying `marker` with another pid exists. Blocking; returns (new pid, latency).
///
/// `settled` caches pids that cannot be the replacement (processes that are not children of
/// the supervisor, and children that carry another marker), so a scan reads only new pids;
/// a child of the supervisor without a marker may be a fork that has not exec'd yet and is
/// read again.
// Runs on a blocking thread (`spawn_blocking`): a 0.5 ms poll is finer than tokio's 1 ms timer.
#[allow(clippy::disallowed_methods)]
fn kill_and_wait(sup: u32, marker: &str, old: u32, settled: &mut HashSet<u32>) -> anyhow::Result<(u32, Duration)> {
    let prefix = marker_prefix();
    let t = Instant::now();
    kill(Pid::from_raw(i32::try_from(old)?), Signal::SIGKILL).with_context(|| format!("kill -9 {old}"))?;
    loop {
        for pid in proc_pids() {
            if pid == old || settled.contains(&pid) {
                continue;
            }
            let Some(args) = proc_cmdline(pid) else { continue };
            if args.iter().any(|a| a == marker) {
                return Ok((pid, t.elapsed()));
            }
            let ours = args.iter().any(|a| a.starts_with(&prefix));
            if ours || proc_ppid(pid).is_some_and(|p| p != sup) {
                settled.insert(pid);
            }
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!("no new process for {marker} within 30 s of kill -9 {old}");
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Kills (SIGKILL) every process left over from this bench: those carrying one of its markers
/// or running a writer script under `root`.
fn kill_leftovers(root: &Path) {
    let prefix = marker_prefix();
    let root = root.display().to_string();
    for pid in proc_pids() {
        if let Some(args) = proc_cmdline(pid)
            && args.iter().any(|a| a.starts_with(&prefix) || (a.starts_with(&root) && a.ends_with("writer.py")))
            && let Ok(raw) = i32::try_from(pid)
        {
            let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

// ---------------------------------------------------------------------------------------------
// Sessions: one running supervisor with its children.

enum Session {
    Bkg(Daemon),
    Supervisord(Supervisord),
    Pm2(Pm2),
}

struct Supervisord {
    child: Option<std::process::Child>,
    rpc: String,
    http: reqwest::Client,
}

impl Supervisord {
    /// `supervisor.getAllProcessInfo` over XML-RPC: how many processes are `RUNNING`.
    async fn running(&self) -> anyhow::Result<usize> {
        let body = "<?xml version=\"1.0\"?><methodCall><methodName>supervisor.getAllProcessInfo</methodName>\
                    <params></params></methodCall>";
        let res = self.http.post(&self.rpc).header("Content-Type", "text/xml").body(body).send().await?;
        let text = res.text().await?;
        Ok(text.matches("<string>RUNNING</string>").count())
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, std::process::Child::id)
    }

    /// SIGTERM (supervisord stops its children first), then waits up to `limit`; SIGKILL after.
    /// Blocking: called through `spawn_blocking`, and from `Drop` only on an error path.
    #[allow(clippy::disallowed_methods)]
    fn stop_blocking(&mut self, limit: Duration) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        let _ = kill(Pid::from_raw(i32::try_from(child.id())?), Signal::SIGTERM);
        let start = Instant::now();
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                bail!("supervisord did not exit within {limit:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Supervisord {
    fn drop(&mut self) {
        let _ = self.stop_blocking(Duration::from_secs(10));
    }
}

struct Pm2 {
    pm2: PathBuf,
    home: PathBuf,
    god: u32,
    running: bool,
}

impl Pm2 {
    fn command(pm2: &Path, home: &Path) -> Command {
        let mut cmd = Command::new(pm2);
        cmd.env("PM2_HOME", home).stdin(Stdio::null());
        cmd
    }

    /// `pm2 jlist`: how many processes are `online`.
    async fn online(&self) -> anyhow::Result<usize> {
        let mut cmd = tokio::process::Command::from(Self::command(&self.pm2, &self.home));
        let out = cmd.arg("jlist").output().await.context("cannot run pm2 jlist")?;
        ensure!(out.status.success(), "pm2 jlist failed: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let json = text.find('[').map_or("[]", |i| &text[i..]);
        let list: Value = serde_json::from_str(json.trim()).context("pm2 jlist printed no JSON list")?;
        Ok(list.as_array().into_iter().flatten().filter(|p| p["pm2_env"]["status"] == "online").count())
    }

    fn kill_daemon(&mut self) -> anyhow::Result<()> {
        if !std::mem::replace(&mut self.running, false) {
            return Ok(());
        }
        let out = Self::command(&self.pm2, &self.home)
            .arg("kill")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .context("cannot run pm2 kill")?;
        ensure!(out.status.success(), "pm2 kill failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }
}

impl Drop for Pm2 {
    fn drop(&mut self) {
        if self.kill_daemon().is_err()
            && let Ok(god) = i32::try_from(self.god)
            && god > 0
        {
            let _ = kill(Pid::from_raw(god), Signal::SIGKILL);
        }
    }
}

impl Session {
    fn tool(&self) -> Tool {
        match self {
            Session::Bkg(_) => Tool::Bkg,
            Session::Supervisord(_) => Tool::Supervisord,
            Session::Pm2(_) => Tool::Pm2,
        }
    }

    /// The supervisor's own process.
    fn pid(&self) -> u32 {
        match self {
            Session::Bkg(d) => d.pid(),
            Session::Supervisord(s) => s.pid(),
            Session::Pm2(p) => p.god,
        }
    }

    async fn stop(self) -> anyhow::Result<()> {
        match self {
            Session::Bkg(d) => d.stop().await,
            Session::Supervisord(mut s) => {
                tokio::task::spawn_blocking(move || s.stop_blocking(Duration::from_secs(30))).await?
            }
            Session::Pm2(mut p) => tokio::task::spawn_blocking(move || p.kill_daemon()).await?,
        }
    }
}

/// How often the start benchmarks ask a status API.
const START_POLL: Duration = Duration::from_millis(5);
const START_LIMIT: Duration = Duration::from_secs(60);

async fn start_bkg(bkg: &Path, lay: &Layout) -> anyhow::Result<(Session, Vec<Row>)> {
    let mut plugins: Vec<Value> = lay
        .sleeps
        .iter()
        .map(|(name, marker)| {
            json!({"name": name, "protocol": "none", "command": "/bin/sleep", "args": ["3600", marker]})
        })
        .collect();
    plugins.push(json!({
        "name": LOG_NAME, "protocol": "none", "command": lay.python, "args": lay.writer_args(),
        // Keep every line, as supervisord and pm2 do (the default keeps 2,000 lines/s).
        "log_lines_per_s": 1_000_000,
    }));
    let registry = daemon::write_registry(&lay.dir, &plugins)?;
    let mut d = Daemon::start(bkg, &lay.dir.join("data"), &registry).await?;
    let names = lay.names();
    loop {
        if let Ok(res) = d.http.get(d.url("/health")).send().await
            && let Ok(health) = res.json::<Value>().await
            && names.iter().all(|n| health["plugins"][n] == "ready")
        {
            break;
        }
        ensure!(d.spawned_at.elapsed() < START_LIMIT, "not all ready within {START_LIMIT:?}:\n{}", d.log_tail());
        tokio::time::sleep(START_POLL).await;
    }
    let all = d.spawned_at.elapsed();
    d.login().await?;
    Ok((Session::Bkg(d), vec![row(Tool::Bkg, START_METRIC, "ms", ms(all))]))
}

const START_METRIC: &str = "start 50 children: launch → own status API says all running";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn start_supervisord(exe: &Path, lay: &Layout) -> anyhow::Result<(Session, Vec<Row>)> {
    let port = free_port()?;
    let dir = lay.dir.display();
    let mut conf = format!(
        "[supervisord]\nnodaemon=true\nlogfile={dir}/supervisord.log\npidfile={dir}/supervisord.pid\n\
         childlogdir={dir}\nloglevel=info\n\n\
         [inet_http_server]\nport=127.0.0.1:{port}\n\n\
         [rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n\
         [supervisorctl]\nserverurl=http://127.0.0.1:{port}\n\n"
    );
    // startsecs=0: RUNNING as soon as the process is spawned (the default, 1, would hold every
    // child in STARTING for a second). Children keep the default AUTO log files.
    for (name, marker) in &lay.sleeps {
        let _ = writeln!(conf, "[program:{name}]\ncommand=/bin/sleep 3600 {marker}\nstartsecs=0\nautorestart=true\n");
    }
    let _ = writeln!(
        conf,
        "[program:{LOG_NAME}]\ncommand={} {}\nstartsecs=0\nautorestart=true\n\
         stdout_logfile={dir}/{LOG_NAME}.out\nstdout_logfile_maxbytes=0\nstdout_logfile_backups=0\n\
         stderr_logfile={dir}/{LOG_NAME}.err\n",
        lay.python.display(),
        lay.writer_args().join(" ")
    );
    let conf_path = lay.dir.join("supervisord.conf");
    std::fs::write(&conf_path, conf).with_context(|| format!("cannot write {}", conf_path.display()))?;
    let out = std::fs::File::create(lay.dir.join("supervisord.stdout"))?;
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build()?;
    let t = Instant::now();
    let child = Command::new(exe)
        .arg("-c")
        .arg(&conf_path)
        .current_dir(&lay.dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("cannot spawn {}", exe.display()))?;
    let s = Supervisord { child: Some(child), rpc: format!("http://127.0.0.1:{port}/RPC2"), http };
    loop {
        if s.running().await.is_ok_and(|n| n == lay.count()) {
            break;
        }
        if t.elapsed() > START_LIMIT {
            let log = std::fs::read_to_string(lay.dir.join("supervisord.log")).unwrap_or_default();
            bail!("supervisord: not all RUNNING within {START_LIMIT:?}; its log:\n{log}");
        }
        tokio::time::sleep(START_POLL).await;
    }
    let all = t.elapsed();
    Ok((Session::Supervisord(s), vec![row(Tool::Supervisord, START_METRIC, "ms", ms(all))]))
}

async fn start_pm2(pm2: &Path, lay: &Layout) -> anyhow::Result<(Session, Vec<Row>)> {
    let home = lay.dir.join("pm2home");
    let dir = &lay.dir;
    let mut apps: Vec<Value> = lay
        .sleeps
        .iter()
        .map(|(name, marker)| {
            json!({
                "name": name, "script": "/bin/sleep", "args": ["3600", marker], "interpreter": "none",
                "out_file": dir.join(format!("{name}-out.log")), "error_file": dir.join(format!("{name}-err.log")),
            })
        })
        .collect();
    apps.push(json!({
        "name": LOG_NAME, "script": lay.python, "args": lay.writer_args(), "interpreter": "none",
        "out_file": dir.join(format!("{LOG_NAME}.out")), "error_file": dir.join(format!("{LOG_NAME}.err")),
    }));
    let eco = dir.join("ecosystem.json");
    std::fs::write(&eco, serde_json::to_vec_pretty(&json!({ "apps": apps }))?)?;
    let t = Instant::now();
    let mut cmd = tokio::process::Command::from(Pm2::command(pm2, &home));
    let out = cmd.arg("start").arg(&eco).output().await.with_context(|| format!("cannot run {}", pm2.display()))?;
    let cli = t.elapsed();
    let god = std::fs::read_to_string(home.join("pm2.pid")).ok().and_then(|p| p.trim().parse().ok()).unwrap_or(0);
    let p = Pm2 { pm2: pm2.to_owned(), home, god, running: true };
    ensure!(out.status.success(), "pm2 start failed: {}", String::from_utf8_lossy(&out.stderr));
    ensure!(god != 0, "pm2 start wrote no pm2.pid");
    loop {
        if p.online().await.is_ok_and(|n| n == lay.count()) {
            break;
        }
        ensure!(t.elapsed() < START_LIMIT, "pm2: not all online within {START_LIMIT:?}");
        tokio::time::sleep(START_POLL).await;
    }
    let all = t.elapsed();
    Ok((
        Session::Pm2(p),
        vec![
            row(Tool::Pm2, START_METRIC, "ms", ms(all)),
            row(Tool::Pm2, "… of which `pm2 start` returned (its table shows all online)", "ms", ms(cli)),
        ],
    ))
}

// ---------------------------------------------------------------------------------------------
// The measurements on a running session.

async fn restarts(s: &Session, lay: &Layout, kills: usize) -> anyhow::Result<Vec<Row>> {
    let total = WARMUP_KILLS + kills;
    ensure!(total <= lay.sleeps.len(), "{total} kills need as many sleep children; there are {}", lay.sleeps.len());
    let sup = s.pid();
    let mut settled = HashSet::new();
    let mut samples = Samples::with_capacity(kills);
    for (i, (name, marker)) in lay.sleeps.iter().take(total).enumerate() {
        let marker = marker.clone();
        let old = find_marked(&marker).with_context(|| format!("{}: no process for {name}", s.tool().label()))?;
        let mut set = std::mem::take(&mut settled);
        let (res, set) = tokio::task::spawn_blocking(move || (kill_and_wait(sup, &marker, old, &mut set), set)).await?;
        settled = set;
        let (_, latency) = res?;
        if i >= WARMUP_KILLS {
            samples.push(latency);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = s.tool();
    Ok(vec![
        row(t, "kill -9 → new pid exec'd (/proc), p50", "ms", samples.percentile(50.0) / 1e3),
        row(t, "kill -9 → new pid exec'd (/proc), p95", "ms", samples.percentile(95.0) / 1e3),
    ])
}

/// CPU and memory of each supervisor over the same idle window. CPU from /proc/<pid>/stat
/// (utime + stime, 10 ms ticks): unlike schedstat it keeps the time of threads that exited in the
/// window (bkg's blocking-pool threads do), and 10 ms is fine over 30 s.
async fn idle(sessions: &[Session], window: Duration) -> anyhow::Result<Vec<Row>> {
    let before: Vec<f64> = sessions.iter().map(|s| daemon::cpu_seconds(s.pid())).collect::<Result<_, _>>()?;
    tokio::time::sleep(window).await;
    let mut out = vec![];
    for (s, cpu0) in sessions.iter().zip(before) {
        let pid = s.pid();
        let cpu = daemon::cpu_seconds(pid)? - cpu0;
        let t = s.tool();
        out.extend([
            row(t, "idle, 50 children: supervisor VmRSS", "MiB", daemon::status_kib(pid, "VmRSS")? as f64 / 1024.0),
            row(t, "idle, 50 children: supervisor RssAnon", "MiB", daemon::status_kib(pid, "RssAnon")? as f64 / 1024.0),
            row(t, IDLE_CPU, "ms", cpu * 1e3),
        ]);
    }
    Ok(out)
}

const IDLE_CPU: &str = "idle, 50 children: supervisor CPU over the idle window";

/// Lines the tool has taken so far from the log writer.
async fn captured(s: &Session, lay: &Layout) -> anyhow::Result<u64> {
    match s {
        // Taken = in the plug-in's log (ring, SSE) or counted as dropped by its rate limit. The
        // copy on the daemon's stderr (journald) is best-effort in a flood; reported apart.
        Session::Bkg(d) => {
            let kept = d.metric("bkg_plugin_log_lines_total", LOG_NAME).await?;
            let dropped = d.metric("bkg_plugin_log_dropped_total", LOG_NAME).await?;
            Ok((kept + dropped) as u64)
        }
        Session::Supervisord(_) | Session::Pm2(_) => {
            let path = lay.dir.join(format!("{LOG_NAME}.out"));
            Ok(std::fs::metadata(&path).map_or(0, |m| m.len()) / LINE_BYTES)
        }
    }
}

const KEPT: &str = "log: lines kept (stored / forwarded; bkg with log_lines_per_s 1,000,000)";

/// How often the log benchmark checks progress.
const LOG_POLL: Duration = Duration::from_millis(10);

async fn log_throughput(s: &Session, lay: &Layout) -> anyhow::Result<Vec<Row>> {
    let pid = s.pid();
    let lines = lay.log_lines;
    let base = captured(s, lay).await?;
    let rate_dropped_base = match s {
        Session::Bkg(d) => d.metric("bkg_plugin_log_dropped_total", LOG_NAME).await? as u64,
        _ => 0,
    };
    // What one progress check costs the supervisor (only bkg's is an API request).
    // (schedstat, ns: the window is short.)
    let probe0 = daemon::sched_seconds(pid)?;
    for _ in 0..50 {
        captured(s, lay).await?;
    }
    let per_check = ((daemon::sched_seconds(pid)? - probe0) / 50.0).max(0.0);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // CPU from /proc/<pid>/stat (10 ms ticks, threads that exit included); schedstat (ns, live
    // threads only) goes to stderr as a cross-check.
    let cpu0 = daemon::cpu_seconds(pid)?;
    let sched0 = daemon::sched_seconds(pid)?;
    let t = Instant::now();
    let fifo = lay.fifo.clone();
    // The writer is blocked opening the FIFO for reading: open, write, close.
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::OpenOptions::new().write(true).open(&fifo)?;
        f.write_all(b"go\n")
    })
    .await?
    .context("cannot signal the log writer through its FIFO")?;
    let mut checks = 0u64;
    let mut got;
    loop {
        got = captured(s, lay).await? - base;
        checks += 1;
        if got >= lines {
            break;
        }
        ensure!(
            t.elapsed() < Duration::from_secs(120),
            "{}: only {got} of {lines} lines taken after 120 s",
            s.tool().label()
        );
        tokio::time::sleep(LOG_POLL).await;
    }
    let wall = t.elapsed();
    let cpu = daemon::cpu_seconds(pid)? - cpu0;
    let sched = daemon::sched_seconds(pid)? - sched0;
    let tool = s.tool();
    let per_100k = |c: f64| c * 1e3 * 100_000.0 / lines as f64;
    let mut out = vec![
        row(
            tool,
            "log: lines taken per second (writer start → all taken)",
            "lines/s",
            lines as f64 / wall.as_secs_f64(),
        ),
        row(tool, "log: supervisor CPU per 100k lines", "ms", per_100k(cpu)),
    ];
    let mut note = String::new();
    if let Session::Bkg(d) = s {
        let rate_dropped = d.metric("bkg_plugin_log_dropped_total", LOG_NAME).await? as u64 - rate_dropped_base;
        let kept = got - rate_dropped;
        let mirrored = d.plugin_lines(LOG_NAME, "line");
        let _ = write!(
            note,
            "; kept {kept}, dropped {rate_dropped} (rate limit), {mirrored} also on stderr by the end; \
             {checks} /metrics checks ≈ {} ms of daemon CPU",
            fmt_num(per_check * checks as f64 * 1e3)
        );
        out.push(row(tool, KEPT, "lines", kept as f64));
        out.push(row(
            tool,
            "log: supervisor CPU per 100k lines, without the bench's /metrics checks (estimated)",
            "ms",
            per_100k((cpu - per_check * checks as f64).max(0.0)),
        ));
    } else {
        out.push(row(tool, KEPT, "lines", got as f64));
    }
    eprintln!(
        "  log {}: {lines} lines in {} ms, CPU {} ms (stat ticks) / {} ms (schedstat){note}",
        tool.label(),
        fmt_num(ms(wall)),
        fmt_num(cpu * 1e3),
        fmt_num(sched * 1e3),
    );
    Ok(out)
}

// ---------------------------------------------------------------------------------------------

/// One run: the three tools started one after the other (each restart-tested right after its
/// start), then idle together, then the log test one after the other, then stopped.
pub(crate) async fn run(bkg: &Path, opts: &PeersOpts, run: usize) -> anyhow::Result<Vec<Row>> {
    let tmp = tempfile::tempdir()?;
    let result = run_in(bkg, opts, run, tmp.path()).await;
    kill_leftovers(tmp.path());
    result
}

async fn run_in(bkg: &Path, opts: &PeersOpts, run: usize, root: &Path) -> anyhow::Result<Vec<Row>> {
    let mut rows = vec![];
    let mut sessions = vec![];
    let mut layouts = vec![];
    for tool in TOOLS {
        let lay = Layout::new(&root.join(tool.label()), tool, run, opts)?;
        eprintln!("peers: run {}: start {}", run + 1, tool.label());
        let (session, start) = match tool {
            Tool::Bkg => start_bkg(bkg, &lay).await?,
            Tool::Supervisord => start_supervisord(&opts.supervisord, &lay).await?,
            Tool::Pm2 => start_pm2(&opts.pm2, &lay).await?,
        };
        // Dropped (and so stopped) on an early return below.
        sessions.push(session);
        rows.extend(start);
        let session = sessions.last().context("no session")?;
        rows.extend(restarts(session, &lay, opts.kills).await?);
        layouts.push(lay);
    }
    eprintln!("peers: run {}: idle {:?} (all three at once)", run + 1, opts.idle);
    rows.extend(idle(&sessions, opts.idle).await?);
    for (s, lay) in sessions.iter().zip(&layouts) {
        eprintln!("peers: run {}: log {} lines under {}", run + 1, lay.log_lines, s.tool().label());
        rows.extend(log_throughput(s, lay).await?);
    }
    for s in sessions {
        s.stop().await?;
    }
    Ok(rows)
}

/// The comparison table (one row per metric: median and range per tool, and the ratio of bkg's
/// value to each peer's, computed per run) followed by the usual all-numbers table.
pub(crate) fn report(runs: &[Vec<Row>]) -> String {
    let mut order: Vec<(&'static str, &'static str)> = vec![];
    let mut values: BTreeMap<(&'static str, Tool), Vec<f64>> = BTreeMap::new();
    // Per run, so that ratios pair the numbers of the same run.
    let mut per_run: Vec<BTreeMap<(&'static str, Tool), f64>> = vec![];
    for run in runs {
        let mut this = BTreeMap::new();
        for r in run {
            if !order.iter().any(|(m, _)| *m == r.metric) {
                order.push((r.metric, r.unit));
            }
            values.entry((r.metric, r.tool)).or_default().push(r.value);
            this.insert((r.metric, r.tool), r.value);
        }
        per_run.push(this);
    }
    let cell = |v: &[f64]| -> String {
        if v.is_empty() {
            return "—".into();
        }
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{} ({} – {})", fmt_num(median(v)), fmt_num(min), fmt_num(max))
    };
    let mut out = String::new();
    out.push_str(
        "| Metric | Unit | bkg | supervisord | pm2 | bkg / supervisord | bkg / pm2 |\n|---|---|---:|---:|---:|---:|---:|\n",
    );
    for (metric, unit) in &order {
        let get = |t: Tool| values.get(&(*metric, t)).cloned().unwrap_or_default();
        let ratio = |peer: Tool| -> Vec<f64> {
            per_run
                .iter()
                .filter_map(|r| Some(r.get(&(*metric, Tool::Bkg))? / r.get(&(*metric, peer))?))
                .filter(|v| v.is_finite())
                .collect()
        };
        let _ = writeln!(
            out,
            "| {metric} | {unit} | {} | {} | {} | {} | {} |",
            cell(&get(Tool::Bkg)),
            cell(&get(Tool::Supervisord)),
            cell(&get(Tool::Pm2)),
            cell(&ratio(Tool::Supervisord)),
            cell(&ratio(Tool::Pm2)),
        );
    }
    out.push_str("\nCells: median (min – max) over the runs; ratios are computed per run.\n\n");
    let metrics: Vec<Vec<Metric>> = runs
        .iter()
        .map(|run| {
            run.iter()
                .map(|r| Metric::info(BENCH, format!("{} — {}", r.metric, r.tool.label()), r.unit, r.value))
                .collect()
        })
        .collect();
    out.push_str(&crate::stats::markdown(&metrics));
    out
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The Python interpreter itself (not a pyenv shim script), so that every tool spawns the same
/// executable: `sys.executable` of `python3` on PATH.
pub(crate) fn resolve_python() -> anyhow::Result<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .context("cannot run python3 (the log writer is a Python script)")?;
    ensure!(out.status.success(), "python3 failed: {}", String::from_utf8_lossy(&out.stderr));
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    ensure!(path.is_absolute(), "python3 reported no executable path");
    Ok(path)
}
