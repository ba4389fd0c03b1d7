//! systemd integration: the unit file passes `systemd-analyze verify`, and the real daemon speaks
//! the notify protocol (READY=1 after its plug-ins started, WATCHDOG=1 while the supervisor
//! answers, STOPPING=1 on SIGTERM) without handing `NOTIFY_SOCKET` to its plug-ins.
//!
//! `systemd-analyze` comes with Debian's `systemd` package; `scripts/test.sh` installs it when it
//! is missing. This test never installs anything and fails when the tool is absent, so a missing
//! install step cannot pass unnoticed.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{TestDaemon, WAIT, bkg_bin, marker, pids_with_env};

const UNIT: &str = include_str!("../../systemd/bkg.service");
const SYSUSERS: &str = include_str!("../../systemd/bkg.sysusers");

/// The value of `Key=` in the unit (the last one wins, as in systemd).
fn unit_value<'a>(key: &str) -> Option<&'a str> {
    UNIT.lines().filter_map(|l| l.strip_prefix(key)?.strip_prefix('=')).next_back().map(str::trim)
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // verify checks that ExecStart= exists and is executable: point it at the binary under test.
    let unit = UNIT.replace("/usr/local/bin/bkg", bkg_bin().to_str().expect("utf-8 path"));
    assert_ne!(unit, UNIT, "ExecStart= no longer names /usr/local/bin/bkg");
    let path = tmp.path().join("bkg.service");
    std::fs::write(&path, unit).expect("write the unit copy");
    let out = match Command::new("systemd-analyze").arg("verify").arg(&path).output() {
        Ok(out) => out,
        Err(e) => panic!("cannot run systemd-analyze ({e}): install Debian's `systemd` package (scripts/test.sh does)"),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed:\n{stderr}");
    // Unknown keys and bad values are only warnings (exit 0): none may mention our unit.
    let about_us: Vec<&str> = stderr.lines().filter(|l| l.contains("bkg.service")).collect();
    assert!(about_us.is_empty(), "systemd-analyze verify warned:\n{}", about_us.join("\n"));
}

#[test]
fn unit_has_the_operational_contract() {
    assert_eq!(unit_value("Type"), Some("notify"));
    assert_eq!(unit_value("NotifyAccess"), Some("main"));
    assert_eq!(unit_value("KillMode"), Some("mixed"));
    assert_eq!(unit_value("StateDirectory"), Some("bkg"));
    assert_eq!(unit_value("RestartPreventExitStatus"), Some("78"));
    assert!(unit_value("WatchdogSec").is_some());
    let stop = unit_value("TimeoutStopSec").and_then(|v| v.strip_suffix('s')).and_then(|v| v.parse::<u64>().ok());
    assert!(stop.is_some_and(|s| s > 20), "TimeoutStopSec must exceed the daemon's ~20 s stop budget");
    assert_eq!(unit_value("LoadCredential"), Some("admin-password:/etc/bkg/admin-password"));
    let exec = unit_value("ExecStart").expect("ExecStart");
    assert!(exec.starts_with("/usr/local/bin/bkg serve") && exec.contains("--data-dir /var/lib/bkg"), "{exec}");
    for key in ["NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "RestrictSUIDSGID"] {
        assert_eq!(unit_value(key), Some("yes"), "{key}");
    }
    assert_eq!(unit_value("ProtectSystem"), Some("strict"));
    assert_eq!(unit_value("CapabilityBoundingSet"), Some(""));
    // Never a secret in the unit.
    assert!(!UNIT.contains("ADMIN_PASSWORD="), "the admin password must come from LoadCredential=");
    assert!(!UNIT.lines().any(|l| l.starts_with("Environment=") && l.to_ascii_lowercase().contains("password")));
    // The unit's user exists through sysusers.
    assert_eq!(unit_value("User"), Some("bkg"));
    assert!(SYSUSERS.lines().any(|l| l.starts_with("u bkg ")), "{SYSUSERS}");
}

/// Binds a notify socket and forwards every datagram (as text) to a channel.
fn notify_socket(dir: &Path) -> (std::path::PathBuf, mpsc::Receiver<String>) {
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            if tx.send(String::from_utf8_lossy(&buf[..n]).into_owned()).is_err() {
                break;
            }
        }
    });
    (path, rx)
}

/// Waits (blocking, off the runtime) for a datagram containing `line`; returns every datagram
/// received until then.
async fn wait_notify(rx: &mut Option<mpsc::Receiver<String>>, line: &'static str) -> Vec<String> {
    let receiver = rx.take().expect("receiver");
    let (receiver, seen) = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match receiver.recv_timeout(left) {
                Ok(msg) => {
                    let done = msg.lines().any(|l| l == line);
                    seen.push(msg);
                    if done {
                        return (receiver, seen);
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no {line} within {WAIT:?}; got {seen:?}");
    })
    .await
    .expect("notify waiter");
    *rx = Some(receiver);
    seen
}

#[tokio::test]
async fn notify_ready_watchdog_stopping_and_no_socket_for_plugins() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (socket, rx) = notify_socket(tmp.path());
    let mut rx = Some(rx);
    let tag = marker();
    let mut echo = crate::support::echo_spec("echo");
    echo["required"] = json!(true);
    echo["env"] = json!({ "BKG_TEST_MARKER": tag });
    let registry = json!({ "plugins": [echo] });
    let socket = socket.to_str().expect("utf-8 path");
    // 400 ms watchdog: the daemon must ping every 200 ms.
    let env = [("NOTIFY_SOCKET", socket), ("WATCHDOG_USEC", "400000")];
    let data = tmp.path().join("data");
    let mut d = TestDaemon::try_start_in(&data, Some(registry), &env)
        .await
        .unwrap_or_else(|logs| panic!("daemon did not start:\n{logs}"));

    // READY=1 only once the required plug-in is up.
    let before_ready = wait_notify(&mut rx, "READY=1").await;
    assert!(!before_ready.iter().any(|m| m.contains("STOPPING=1")), "{before_ready:?}");
    let view = d.plugin("echo").await;
    assert_eq!(view["state"], "ready", "READY=1 came before the required plug-in was ready: {view}");

    // WATCHDOG=1 keeps coming while the supervisor answers.
    let started = Instant::now();
    wait_notify(&mut rx, "WATCHDOG=1").await;
    wait_notify(&mut rx, "WATCHDOG=1").await;
    wait_notify(&mut rx, "WATCHDOG=1").await;
    assert!(started.elapsed() < Duration::from_secs(5), "watchdog pings are too slow");

    // The plug-in's environment carries neither the socket nor the watchdog variables.
    let pid = view["pid"].as_u64().expect("pid") as u32;
    assert_eq!(pids_with_env("BKG_TEST_MARKER", &tag), vec![pid]);
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("plug-in environ");
    for var in ["NOTIFY_SOCKET=", "WATCHDOG_USEC=", "WATCHDOG_PID="] {
        assert!(!environ.split(|b| *b == 0).any(|kv| kv.starts_with(var.as_bytes())), "the plug-in inherited {var}");
    }

    // SIGTERM: STOPPING=1 first, then a clean exit with the plug-in gone.
    d.signal(nix::sys::signal::Signal::SIGTERM);
    wait_notify(&mut rx, "STOPPING=1").await;
    let status = d.wait_exit(WAIT).await;
    assert!(status.success(), "{status:?}");
    assert!(pids_with_env("BKG_TEST_MARKER", &tag).is_empty(), "a plug-in outlived the daemon");
}
