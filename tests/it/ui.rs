//! The admin web UI in a real browser: headless Chromium driven by chromedriver (WebDriver,
//! through fantoccini) against the real daemon (ui.md §4).
//!
//! These tests fail, never skip, when `chromedriver` is missing: `scripts/test.sh` installs
//! Debian's `chromium` and `chromium-driver`. Each test starts its own chromedriver in its own
//! process group, with its own `TMPDIR`, and kills the whole group (Chromium included) on drop.
//! Every wait polls the DOM until a deadline; nothing sleeps for a fixed time.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

/// chromedriver in its own process group; the group (driver, Chromium and its helpers) is
/// SIGKILLed on drop, so a failing test leaves no browser behind (ui.md §4 pitfall 7).
struct Driver {
    child: Child,
    port: u16,
    /// Chromium's profile and scratch files (`TMPDIR`), removed after the group is dead.
    _tmp: tempfile::TempDir,
}

impl Driver {
    fn start() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new("chromedriver")
            .arg("--port=0")
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start chromedriver ({e}): the UI tests need Debian's chromium and chromium-driver; \
                     scripts/test.sh installs them"
                )
            });
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the port from the banner, then keeps draining so chromedriver never blocks.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("ChromeDriver was started successfully on port ")
                    && let Ok(port) = rest.trim_end_matches('.').parse::<u16>()
                {
                    let _ = tx.send(port);
                }
            }
        });
        let mut driver = Self { child, port: 0, _tmp: tmp };
        driver.port = rx.recv_timeout(Duration::from_secs(20)).expect("chromedriver did not report its port");
        driver
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A headless Chromium session.
struct Browser {
    c: Client,
    _driver: Driver,
}

impl Browser {
    async fn start() -> Self {
        let driver = Driver::start();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                            "--window-size=1280,800"]}),
        );
        let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .expect("WebDriver session");
        Self { c, _driver: driver }
    }

    async fn goto(&self, url: &str) {
        self.c.goto(url).await.expect("goto");
    }

    /// Runs `script` (a function body: `return …`) in the page.
    async fn js(&self, script: &str) -> Value {
        self.c.execute(script, vec![]).await.unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Polls `script` until it returns something truthy and returns that; on timeout, fails
    /// with what the page shows.
    async fn wait_js(&self, what: &str, script: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.c.execute(script, vec![]).await.unwrap_or(Value::Null);
            if !matches!(v, Value::Null | Value::Bool(false)) && v != json!("") && v != json!(0) {
                return v;
            }
            if start.elapsed() > WAIT {
                let page = self.c.execute("return location.href + '\\n' + document.body.innerText", vec![]).await;
                panic!("timed out waiting for {what}; the page shows:\n{}", page.unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks the element matching `css`, retrying while it is missing or was just re-rendered.
    async fn click(&self, css: &str) {
        let start = Instant::now();
        loop {
            match self.c.find(Locator::Css(css)).await {
                Ok(el) => match el.click().await {
                    Ok(()) => return,
                    Err(e) if start.elapsed() > WAIT => panic!("cannot click {css}: {e}"),
                    Err(_) => {}
                },
                Err(e) if start.elapsed() > WAIT => panic!("no element {css}: {e}"),
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn type_into(&self, css: &str, text: &str) {
        let el = self.c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no element {css}: {e}"));
        el.clear().await.expect("clear");
        el.send_keys(text).await.expect("send_keys");
    }

    /// Fills and submits the login form (the page must show it).
    async fn submit_login(&self, user: &str, password: &str) {
        self.wait_js("the login form", "return !!document.querySelector('#login-form')").await;
        self.type_into("#user", user).await;
        self.type_into("#password", password).await;
        self.click("#login-submit").await;
    }

    /// Opens the UI, logs in as admin and waits for the Plugins tab.
    async fn login(&self, d: &TestDaemon) {
        self.goto(&d.url("/ui/")).await;
        self.submit_login("admin", ADMIN_PASSWORD).await;
        self.wait_js("the plugins table", "return document.querySelectorAll('#plugins tbody tr').length > 0").await;
    }

    async fn wait_row_state(&self, name: &str, state: &str) {
        let script = format!(
            "const r = document.querySelector('tr[data-plugin=\"{name}\"]');
             return !!r && r.dataset.state === '{state}' && r.querySelector('.badge').textContent === '{state}'"
        );
        self.wait_js(&format!("{name} shown as {state}"), &script).await;
    }

    async fn close(self) {
        self.c.close().await.expect("close the session");
    }
}

/// A plain process (`protocol: "none"`) running `/bin/sh -c script`.
fn shell_process(name: &str, script: &str) -> Value {
    json!({"name": name, "protocol": "none", "command": "/bin/sh", "args": ["-c", script],
           "timeouts": {"stop_grace_ms": 500}})
}

fn sleeper(name: &str) -> Value {
    json!({"name": name, "protocol": "none", "command": "/bin/sleep", "args": ["300"],
           "timeouts": {"stop_grace_ms": 500}})
}

/// The static files need no credentials and carry their headers (CSP, nosniff, no-cache, ETag).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_files_are_public_with_csp_and_etag() {
    let d = TestDaemon::start(vec![]).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let res = http.get(d.url("/")).send().await.unwrap();
    assert!(res.status().is_redirection(), "{}", res.status());
    assert_eq!(res.headers()["location"], "/ui/");

    let res = http.get(d.url("/ui/")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "no credentials needed");
    let h = res.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe"), "{csp}");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["cache-control"], "no-cache");
    let body = res.text().await.unwrap();
    assert!(body.contains(r#"<script type="module" src="app.js">"#), "{body}");

    for (file, kind) in [("app.js", "text/javascript"), ("style.css", "text/css"), ("favicon.svg", "image/svg+xml")] {
        let res = http.get(d.url(&format!("/ui/{file}"))).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{file}");
        assert!(res.headers()["content-type"].to_str().unwrap().starts_with(kind), "{file}");
        let etag = res.headers()["etag"].clone();
        let again = http.get(d.url(&format!("/ui/{file}"))).header("if-none-match", etag).send().await.unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{file}");
    }
    assert_eq!(http.get(d.url("/ui/nope.js")).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(http.get(d.url("/ui/..%2FCargo.toml")).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    // The API behind the UI is still guarded.
    assert_eq!(http.get(d.url("/admin/plugins")).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
}

/// An anonymous visit lands on the login page; a wrong password is refused in the form; the
/// right one shows the Plugins tab with an svp/1 plug-in and a plain process; a session that
/// ends on the server sends the page back to the login form; logout does too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_then_plugins_tab_lists_plugins_and_plain_processes() {
    let d = TestDaemon::start(vec![echo_spec("echo"), sleeper("sleeper")]).await;
    d.wait_ready("echo").await;
    d.wait_ready("sleeper").await;
    let b = Browser::start().await;

    b.goto(&d.url("/")).await;
    b.wait_js("the login page", "return location.pathname === '/ui/' && location.hash === '#/login'").await;
    b.submit_login("admin", "not-the-password").await;
    let error = b
        .wait_js(
            "the login error",
            "const e = document.querySelector('#login-error'); return !e.hidden && e.textContent",
        )
        .await;
    assert_eq!(error, "Wrong user name or password.");

    b.submit_login("admin", ADMIN_PASSWORD).await;
    b.wait_row_state("echo", "ready").await;
    b.wait_row_state("sleeper", "ready").await;
    let rows = b
        .js("return [...document.querySelectorAll('#plugins tbody tr')].map(r => ({
               name: r.dataset.plugin,
               badge: r.querySelector('.badge').textContent,
               badge_class: r.querySelector('.badge').className,
               icon: !!r.querySelector('.badge svg'),
               protocol: r.querySelector('.protocol').textContent,
               pid: r.querySelector('.pid').textContent }))")
        .await;
    let row = |name: &str| rows.as_array().unwrap().iter().find(|r| r["name"] == name).cloned().unwrap();
    for (name, protocol) in [("echo", "svp/1"), ("sleeper", "plain process")] {
        let r = row(name);
        assert_eq!((r["badge"].as_str(), r["protocol"].as_str()), (Some("ready"), Some(protocol)), "{r}");
        assert_eq!(r["badge_class"], "badge ok", "{r}");
        assert_eq!(r["icon"], true, "text, icon and colour: {r}");
        assert_eq!(r["pid"], d.plugin(name).await["pid"].to_string(), "{r}");
    }
    assert_eq!(b.js("return document.querySelector('#attention').hidden").await, true);
    assert_eq!(b.js("return document.querySelector('#who').textContent").await, "admin (admin)");

    // The server ends the browser's session (every session but the harness's): the next poll
    // gets a 401 and the page returns to the login form.
    let (status, sessions) = d.get("/admin/sessions").await;
    assert_eq!(status, StatusCode::OK, "{sessions}");
    let own = &d.token[5..17];
    for s in sessions["sessions"].as_array().unwrap() {
        let sid = s["sid"].as_str().unwrap();
        if sid != own {
            assert_eq!(d.delete(&format!("/admin/sessions/{sid}")).await.0, StatusCode::OK);
        }
    }
    b.wait_js("the login page after the session ended", "return location.hash === '#/login'").await;
    let notice = b.js("return document.querySelector('#login-form').textContent").await;
    assert!(notice.as_str().unwrap().contains("session ended"), "{notice}");

    // Log in again, then out through the button.
    b.submit_login("admin", ADMIN_PASSWORD).await;
    b.wait_row_state("echo", "ready").await;
    b.click("#logout").await;
    b.wait_js(
        "the login page after logout",
        "return location.hash === '#/login' && !!document.querySelector('#login-form')",
    )
    .await;
    b.goto(&d.url("/ui/#/plugins")).await;
    b.wait_js("still logged out", "return location.hash === '#/login'").await;

    // A viewer sees the tab, with every action disabled (the server would answer 403 anyway).
    let user = json!({"name": "vera", "password": "vera-password-123", "role": "viewer"});
    assert_eq!(d.post("/admin/users", user).await.0, StatusCode::CREATED);
    b.submit_login("vera", "vera-password-123").await;
    b.wait_row_state("echo", "ready").await;
    let enabled =
        b.js("return [...document.querySelectorAll('#plugins button[data-op]')].filter(b => !b.disabled).length").await;
    assert_eq!(enabled, 0);
    assert_eq!(b.js("return document.querySelector('#who').textContent").await, "vera (viewer)");
    b.close().await;
}

/// Stop and start through the row buttons; stopping a plug-in others depend on asks first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_start_buttons_drive_the_daemon() {
    let mut dependent = sleeper("sleeper");
    dependent["after"] = json!(["echo"]);
    let d = TestDaemon::start(vec![echo_spec("echo"), dependent]).await;
    d.wait_ready("sleeper").await;
    let b = Browser::start().await;
    b.login(&d).await;
    b.wait_row_state("sleeper", "ready").await;
    b.wait_row_state("echo", "ready").await;

    // Nothing depends on the sleeper: one click stops it.
    b.click("tr[data-plugin=sleeper] button[data-op=stop]").await;
    b.wait_row_state("sleeper", "stopped").await;
    assert_eq!(d.plugin("sleeper").await["state"], "stopped");
    assert_eq!(
        b.js("return document.querySelector('tr[data-plugin=sleeper] button[data-op=stop]').disabled").await,
        true
    );

    // The sleeper runs `after` echo: stopping echo asks first, and nothing happens until confirmed.
    b.click("tr[data-plugin=sleeper] button[data-op=start]").await;
    b.wait_row_state("sleeper", "ready").await;
    b.click("tr[data-plugin=echo] button[data-op=stop]").await;
    let question = b
        .wait_js(
            "the confirmation",
            "const c = document.querySelector('tr[data-plugin=echo] .confirm'); return c && c.textContent",
        )
        .await;
    assert!(question.as_str().unwrap().contains("sleeper depends on it"), "{question}");
    assert_eq!(d.plugin("echo").await["state"], "ready", "not stopped before the confirmation");
    b.click("tr[data-plugin=echo] [data-cancel]").await;
    b.wait_js("the buttons back", "return !!document.querySelector('tr[data-plugin=echo] button[data-op=stop]')").await;
    b.click("tr[data-plugin=echo] button[data-op=stop]").await;
    b.click("tr[data-plugin=echo] [data-confirm=stop]").await;
    b.wait_row_state("echo", "stopped").await;
    assert_eq!(d.plugin("echo").await["state"], "stopped");

    b.click("tr[data-plugin=echo] button[data-op=start]").await;
    b.wait_row_state("echo", "ready").await;
    assert_eq!(d.plugin("echo").await["state"], "ready");
    assert_eq!(b.js("return document.querySelectorAll('#plugins .error').length").await, 0);
    b.close().await;
}

/// Problems sort first under a counting banner: a plug-in that crash-looped into `failed`,
/// then one waiting in backoff with its countdown, then the healthy one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_looping_plugins_sort_first_under_a_banner() {
    let failing = fake_spec("zz-fail", json!({}), json!({"BKG_FAKE_EXIT_AT_START": "1"}));
    let mut looping = fake_spec("yy-loop", json!({}), json!({"BKG_FAKE_EXIT_AT_START": "1"}));
    looping["restart"] = json!({"backoff_initial_ms": 60000, "backoff_max_ms": 60000});
    let d = TestDaemon::start(vec![echo_spec("aa-echo"), failing, looping]).await;
    d.wait_plugin("zz-fail", "failed", |v| v["state"] == "failed").await;
    d.wait_plugin("yy-loop", "backoff", |v| v["state"] == "backoff").await;
    let b = Browser::start().await;
    b.login(&d).await;
    b.wait_row_state("aa-echo", "ready").await;
    b.wait_row_state("zz-fail", "failed").await;
    b.wait_row_state("yy-loop", "backoff").await;

    let order = b.js("return [...document.querySelectorAll('#plugins tbody tr')].map(r => r.dataset.plugin)").await;
    assert_eq!(order, json!(["zz-fail", "yy-loop", "aa-echo", "apikeys"]));
    let banner = b.js("const e = document.querySelector('#attention'); return !e.hidden && e.textContent").await;
    assert_eq!(banner, "2 plug-ins need attention");
    let failed = b.js("return document.querySelector('tr[data-plugin=zz-fail] .details').textContent").await;
    assert!(failed.as_str().unwrap().contains("crash loop"), "the reason is inline: {failed}");
    assert_eq!(b.js("return document.querySelector('tr[data-plugin=zz-fail] .badge').className").await, "badge bad");
    let countdown = b
        .wait_js(
            "a countdown",
            "const e = document.querySelector('tr[data-plugin=yy-loop] .countdown'); return e && e.textContent",
        )
        .await;
    let secs: u64 = countdown
        .as_str()
        .unwrap()
        .trim()
        .strip_prefix("next restart in ")
        .and_then(|s| s.strip_suffix(" s"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{countdown}"));
    assert!((1..=75).contains(&secs), "60 s ± 20 % jitter: {countdown}");
    b.close().await;
}

/// The logs view streams new lines (as text, never markup), pauses when scrolled up with a
/// pill counting new lines, and resumes from the pill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_view_streams_lines_as_text_and_pauses_on_scroll() {
    let script = "echo '<img src=x onerror=alert(1)>'; i=0; while :; do i=$((i+1)); echo line $i; sleep 0.1; done";
    let d = TestDaemon::start(vec![shell_process("ticker", script)]).await;
    d.wait_ready("ticker").await;
    let b = Browser::start().await;
    b.c.set_window_size(1000, 600).await.expect("window size");
    b.login(&d).await;
    b.click("tr[data-plugin=ticker] .name a").await;
    b.wait_js("the log view live", "return document.querySelector('#log-conn')?.dataset.state === 'live'").await;

    let last_line =
        "const m = [...document.querySelectorAll('#log .msg')].map(e => /^line (\\d+)$/.exec(e.textContent))
                       .filter(Boolean).map(m => +m[1]); return m.length ? Math.max(...m) : 0";
    let first = b.wait_js("a line", last_line).await.as_u64().unwrap();
    let newer = format!("const f = () => {{ {last_line} }}; return f() >= {}", first + 5);
    b.wait_js("lines logged after the page opened", &newer).await;

    // The markup-looking line is text: no <img> exists, and no alert fired (WebDriver would
    // fail every command while one is open).
    let xss = b
        .js("const m = [...document.querySelectorAll('#log .line')].find(l => l.querySelector('.msg').textContent === '<img src=x onerror=alert(1)>');
             return m ? m.querySelector('.stream').textContent : null")
        .await;
    assert_eq!(xss, "stdout");
    assert_eq!(b.js("return document.querySelectorAll('#log img').length").await, 0);

    // Scroll up: following pauses and a pill counts what arrives meanwhile.
    b.wait_js(
        "a scrollable log",
        "const p = document.querySelector('#log'); return p.scrollHeight > p.clientHeight + 100",
    )
    .await;
    b.js("const p = document.querySelector('#log'); p.scrollTop = 0; return true").await;
    let pill = b
        .wait_js(
            "the new-lines pill",
            "const p = document.querySelector('#new-lines'); return !p.hidden && p.textContent",
        )
        .await;
    assert!(
        pill.as_str().unwrap().ends_with("new lines ↓") || pill.as_str().unwrap().ends_with("new line ↓"),
        "{pill}"
    );
    assert_eq!(b.js("return document.querySelector('#follow').getAttribute('aria-pressed')").await, "false");
    assert_eq!(b.js("return document.querySelector('#log').scrollTop").await, 0, "paused: the view stays put");
    b.click("#new-lines").await;
    b.wait_js("following again", "return document.querySelector('#new-lines').hidden && document.querySelector('#follow').getAttribute('aria-pressed') === 'true'")
        .await;
    let behind =
        b.js("const p = document.querySelector('#log'); return p.scrollHeight - p.scrollTop - p.clientHeight").await;
    assert!(behind.as_f64().unwrap() <= 8.0, "at the bottom: {behind}");

    // Rows carry the level and the stream.
    let row = b.js("const l = document.querySelector('#log .line:last-child'); return [l.querySelector('.lvl').textContent, l.querySelector('.stream').textContent]").await;
    assert_eq!(row[1], "stdout", "{row}");
    assert!(!row[0].as_str().unwrap().is_empty(), "{row}");
    b.close().await;
}
