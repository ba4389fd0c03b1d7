//! `fake`: a real svp/1 plug-in that misbehaves on command, for the daemon's integration tests.
//!
//! Everything it is told to do really happens: real exits, real signals, real bytes on the
//! protocol pipe and on stderr. Run it as `bkg plugin fake`.
//!
//! # Before the handshake: environment variables (read by [`run`], in this order)
//!
//! | Variable | Effect |
//! |---|---|
//! | `BKG_FAKE_EXIT_AT_START=<code>` | log a line to stderr and exit with `<code>` (0..=255) at once |
//! | `BKG_FAKE_IGNORE_SIGTERM=1` | set SIGTERM to SIG_IGN (only SIGKILL ends the process) |
//! | `BKG_FAKE_JUNK_BEFORE_HANDSHAKE=<n>` | write `n` lines `hello from a banner <i>` to fd 1 first |
//! | `BKG_FAKE_NO_HANDSHAKE=1` | never read or answer anything: sleep forever |
//! | `BKG_FAKE_LINGER=1` | after stdin EOF, do not exit: sleep forever |
//!
//! # `initialize.config` (an object; unknown keys fail the handshake with `-32602`)
//!
//! `crash_after_calls: u64` (serve that many application calls, exit 1 on the next),
//! `ignore_shutdown: bool` (never answer `shutdown`), `health: "serving" | "starting" |
//! "degraded" | "not_serving"`, `starting_ms: u64` (report `starting` that long first),
//! `fail_initialize: bool` (the handshake fails with `-32603`), `max_concurrent_requests: usize`
//! (declared in the handshake and enforced with `-32011`).
//!
//! # Methods
//!
//! `fake.echo`, `fake.sleep {ms}`, `fake.hang`, `fake.freeze`, `fake.crash {code?, signal?}`,
//! `fake.junk {lines}`, `fake.big_line {bytes}`, `fake.flood {bytes, line_len?}`,
//! `fake.log {lines, level?}`, `fake.spawn {count}`, `fake.stream {chunks, interval_ms?}`,
//! `fake.set_health {status, detail?}`, `fake.stdout_println {text}`, `fake.pids`; see
//! `plugin.rs` for what each does and returns.

// This plug-in misbehaves on purpose: it exits abruptly and blocks plain threads (never a
// runtime worker) to simulate hangs, so the workspace bans on these two calls do not apply.
#![allow(clippy::disallowed_methods)]

mod config;
mod plugin;
mod raw;

use std::io::Write;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::Signal;

/// A duplicate of the real protocol pipe (fd 1 as the daemon passed it), taken before the SDK
/// claims fd 1 and points it at stderr, so that methods can put garbage on the real wire.
static RAW_WIRE: OnceLock<std::fs::File> = OnceLock::new();

const EXIT_AT_START: &str = "BKG_FAKE_EXIT_AT_START";
const IGNORE_SIGTERM: &str = "BKG_FAKE_IGNORE_SIGTERM";
const JUNK_BEFORE_HANDSHAKE: &str = "BKG_FAKE_JUNK_BEFORE_HANDSHAKE";
const NO_HANDSHAKE: &str = "BKG_FAKE_NO_HANDSHAKE";
const LINGER: &str = "BKG_FAKE_LINGER";

/// Runs the fake plug-in on this process's stdio and returns its exit code (unless the
/// environment or a method tells it to exit otherwise, or never).
///
/// Lines it writes itself before the SDK's logging is installed carry a `[LEVEL]` prefix, which
/// the daemon's stderr parser understands.
pub fn run() -> ExitCode {
    if let Ok(value) = std::env::var(EXIT_AT_START) {
        return match value.trim().parse::<u8>() {
            Ok(code) => {
                eprintln!("[ERROR] fake: exiting at start with code {code} ({EXIT_AT_START})");
                ExitCode::from(code)
            }
            Err(_) => {
                eprintln!("[ERROR] fake: {EXIT_AT_START}={value:?} is not an exit code (0..=255)");
                ExitCode::from(2)
            }
        };
    }

    if env_flag(IGNORE_SIGTERM) {
        match raw::set_signal(Signal::SIGTERM, true) {
            Ok(()) => eprintln!("[WARN] fake: ignoring SIGTERM ({IGNORE_SIGTERM})"),
            Err(e) => eprintln!("[ERROR] fake: cannot ignore SIGTERM: {e}"),
        }
    }

    if let Ok(value) = std::env::var(JUNK_BEFORE_HANDSHAKE) {
        match value.trim().parse::<u64>() {
            Ok(lines) => {
                if let Err(e) = write_banner(lines) {
                    eprintln!("[ERROR] fake: cannot write junk to stdout: {e}");
                }
            }
            Err(_) => eprintln!("[ERROR] fake: {JUNK_BEFORE_HANDSHAKE}={value:?} is not a count"),
        }
    }

    if env_flag(NO_HANDSHAKE) {
        eprintln!("[WARN] fake: never answering anything ({NO_HANDSHAKE})");
        block_forever();
    }

    match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => {
            let _ = RAW_WIRE.set(std::fs::File::from(fd));
        }
        Err(e) => eprintln!("[WARN] fake: cannot duplicate fd 1, raw-wire methods will fail: {e}"),
    }

    let code = bkg_plugin_sdk::run(plugin::Fake::default());

    if env_flag(LINGER) {
        eprintln!("[WARN] fake: serving ended, lingering instead of exiting ({LINGER})");
        block_forever();
    }
    code
}

/// True when the variable is set to `1` or `true`.
fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Writes banner lines to the real stdout, before the handshake, as a chatty library would.
fn write_banner(lines: u64) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for i in 0..lines {
        writeln!(out, "hello from a banner {i}")?;
    }
    out.flush()
}

/// Sleeps until a signal ends the process.
fn block_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
