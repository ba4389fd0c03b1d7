//! Test harness: the real `bkg` binary in a temp data dir, a typed HTTP client, wait helpers and
//! /proc helpers. No test sleeps for a fixed time: they poll with [`wait_for`].

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

/// Default time a test waits for something that should happen "soon".
pub const WAIT: Duration = Duration::from_secs(20);

/// Path of the daemon binary under test.
pub fn bkg_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bkg"))
}

/// A binary of another workspace member, next to the daemon in the same target directory.
pub fn sibling_bin(name: &str) -> PathBuf {
    bkg_bin().with_file_name(name)
}

/// Polls `f` every 20 ms until it returns `Some`, panicking with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A registry entry for the fake plug-in with test-friendly (short) timeouts.
pub fn fake_spec(name: &str, config: Value, env: Value) -> Value {
    json!({
        "name": name,
        "builtin": "fake",
        "config": config,
        "env": env,
        "timeouts": {
            "ping_idle_ms": 300, "ping_timeout_ms": 300, "ping_misses": 2,
            "stop_grace_ms": 500, "shutdown_ms": 1000, "startup_ms": 5000, "ready_ms": 5000
        },
        "restart": {"backoff_initial_ms": 50, "backoff_max_ms": 400}
    })
}

/// The admin password every test daemon starts with (`ADMIN_PASSWORD`).
pub const ADMIN_PASSWORD: &str = "test-admin-password-1";

/// The apikeys plug-in with a test-friendly bcrypt cost.
pub fn apikeys_spec() -> Value {
    json!({"name": "apikeys", "builtin": "apikeys", "required": true, "config": {"bcrypt_cost": 4},
           "timeouts": {"stop_grace_ms": 500}})
}

/// A registry entry for the built-in echo plug-in.
pub fn echo_spec(name: &str) -> Value {
    json!({"name": name, "builtin": "echo", "timeouts": {"stop_grace_ms": 500}})
}

/// The real daemon, killed (SIGKILL) when dropped.
pub struct TestDaemon {
    child: Option<Child>,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub addr: SocketAddr,
    /// A session token of the `admin` user (logged in at start).
    pub token: String,
    pub http: reqwest::Client,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl TestDaemon {
    /// Starts a daemon on a fresh data dir seeded with `plugins`.
    pub async fn start(plugins: Vec<Value>) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut d = Self::start_in(&dir, Some(json!({ "plugins": plugins }))).await;
        d._tmp = Some(tmp);
        d
    }

    /// Starts a daemon on `dir` (reusing its database when it has one).
    pub async fn start_in(dir: &Path, registry: Option<Value>) -> Self {
        Self::try_start_in(dir, registry, &[]).await.unwrap_or_else(|logs| panic!("daemon did not start:\n{logs}"))
    }

    /// Like [`TestDaemon::start_in`] with extra env; `Err(stderr)` when the daemon exits first.
    pub async fn try_start_in(dir: &Path, registry: Option<Value>, env: &[(&str, &str)]) -> Result<Self, String> {
        // Every daemon needs the apikeys plug-in: without it every guarded route answers 503.
        let registry = registry.map(|mut r| {
            let plugins = r["plugins"].as_array_mut().expect("plugins array");
            if !plugins.iter().any(|p| p["name"] == "apikeys") {
                plugins.insert(0, apikeys_spec());
            }
            r
        });
        let mut cmd = daemon_command(dir, registry);
        // `("ADMIN_PASSWORD", "")` in `env` means: start without one (and do not log in).
        let password = env.iter().find(|(k, _)| *k == "ADMIN_PASSWORD").map_or(ADMIN_PASSWORD, |(_, v)| *v).to_owned();
        cmd.env("ADMIN_PASSWORD", &password).envs(env.iter().copied().filter(|(k, _)| *k != "ADMIN_PASSWORD"));
        if password.is_empty() {
            cmd.env_remove("ADMIN_PASSWORD");
        }
        let mut child = cmd.spawn().expect("spawn bkg");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().expect("stderr piped");
        let lines = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("TEST_LOG").is_some() {
                    eprintln!("[bkg] {line}");
                }
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["message"] == "listening"
                    && let Some(addr) = v["addr"].as_str().and_then(|a| a.parse::<SocketAddr>().ok())
                {
                    let _ = addr_tx.send(addr);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = tokio::task::spawn_blocking(move || addr_rx.recv_timeout(WAIT)).await.unwrap();
        let Ok(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(stderr.lock().unwrap().join("\n"));
        };
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let mut d =
            Self { child: Some(child), dir: dir.to_path_buf(), _tmp: None, addr, token: String::new(), http, stderr };
        if !password.is_empty() {
            d.token = d.login("admin", &password).await;
        }
        Ok(d)
    }

    /// Logs in (waiting for the apikeys plug-in to be up) and returns the session token.
    pub async fn login(&self, user: &str, password: &str) -> String {
        // Wait on the public health page, not by retrying logins: attempts count against the
        // login throttle.
        wait_for("apikeys ready", WAIT, || async {
            let res = self.http.get(self.url("/health")).send().await.ok()?;
            let health: Value = res.json().await.ok()?;
            (health["plugins"]["apikeys"] == "ready").then_some(())
        })
        .await;
        wait_for(&format!("login as {user}"), WAIT, || async {
            let res = self
                .http
                .post(self.url("/auth/login"))
                .json(&json!({"user": user, "password": password}))
                .send()
                .await
                .ok()?;
            match res.status() {
                StatusCode::OK => res.json::<Value>().await.ok()?["token"].as_str().map(str::to_owned),
                StatusCode::SERVICE_UNAVAILABLE => None,
                other => panic!("login as {user} failed with {other}: {}", res.text().await.unwrap_or_default()),
            }
        })
        .await
    }

    /// Takes ownership of the temp dir so it outlives this daemon (for restart tests).
    /// Logs in as admin in cookie mode: the whole `Set-Cookie` header and the CSRF token.
    pub async fn cookie_login(&self) -> (String, String) {
        let res = self
            .http
            .post(self.url("/auth/login"))
            .json(&json!({"user": "admin", "password": ADMIN_PASSWORD}))
            .send()
            .await
            .expect("login");
        let set_cookie = res.headers()["set-cookie"].to_str().expect("ASCII cookie").to_owned();
        let body: Value = res.json().await.expect("login JSON");
        let csrf = body["csrf_token"].as_str().expect("csrf_token").to_owned();
        (set_cookie, csrf)
    }

    pub fn take_dir(&mut self) -> Option<tempfile::TempDir> {
        self._tmp.take()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("daemon running")
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn logs(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let res = self.http.get(self.url(path)).bearer_auth(&self.token).send().await.expect("GET");
        split(res).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let res = self.http.post(self.url(path)).bearer_auth(&self.token).json(&body).send().await.expect("POST");
        split(res).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        let res = self.http.delete(self.url(path)).bearer_auth(&self.token).send().await.expect("DELETE");
        split(res).await
    }

    /// `GET /admin/plugins/{name}`.
    pub async fn plugin(&self, name: &str) -> Value {
        let (status, body) = self.get(&format!("/admin/plugins/{name}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Waits until the plug-in's status satisfies `pred`.
    pub async fn wait_plugin(&self, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(&format!("{name}: {what}"), WAIT, || async {
            let v = self.plugin(name).await;
            pred(&v).then_some(v)
        })
        .await
    }

    /// Waits until the plug-in is `ready` and returns its status.
    pub async fn wait_ready(&self, name: &str) -> Value {
        self.wait_plugin(name, "ready", |v| v["state"] == "ready").await
    }

    /// Calls a plug-in method through `POST /admin/plugins/{name}/rpc`.
    pub async fn rpc(&self, name: &str, method: &str, params: Value, timeout_ms: Option<u64>) -> (StatusCode, Value) {
        let mut body = json!({"method": method, "params": params});
        if let Some(ms) = timeout_ms {
            body["timeout_ms"] = json!(ms);
        }
        self.post(&format!("/admin/plugins/{name}/rpc"), body).await
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), signal).expect("kill");
    }

    /// Waits for the daemon to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        let status = tokio::task::spawn_blocking(move || poll_exit(&mut child, timeout)).await.unwrap();
        status.unwrap_or_else(|| panic!("daemon did not exit within {timeout:?}"))
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls a child until it exits or `timeout` passes (then kills it); runs on a blocking thread.
#[allow(clippy::disallowed_methods)] // a plain thread, not a runtime worker
fn poll_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The command that starts the daemon on `dir`; writes `registry` to `dir/registry.json`.
pub fn daemon_command(dir: &Path, registry: Option<Value>) -> Command {
    let mut cmd = Command::new(bkg_bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"]).arg("--data-dir").arg(dir);
    if let Some(registry) = registry {
        let path = dir.join("registry.json");
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(&path, serde_json::to_vec_pretty(&registry).unwrap()).unwrap();
        cmd.arg("--registry").arg(path);
    }
    cmd.env_remove("NOTIFY_SOCKET")
        .env("BKG_LOG_LEVEL", "info")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

async fn split(res: reqwest::Response) -> (StatusCode, Value) {
    let status = res.status();
    let text = res.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// `true` if `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

/// Live processes whose environment contains `KEY=VALUE` (tests tag plug-ins with a marker).
pub fn pids_with_env(key: &str, value: &str) -> Vec<u32> {
    let needle = format!("{key}={value}");
    let Ok(entries) = std::fs::read_dir("/proc") else { return vec![] };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
                .unwrap_or(false)
                && alive(*pid)
        })
        .collect()
}

/// Resident memory of a process in bytes (VmRSS).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A unique marker for tagging one test's processes.
pub fn marker() -> String {
    format!("{}-{}", std::process::id(), rand::random::<u64>())
}
