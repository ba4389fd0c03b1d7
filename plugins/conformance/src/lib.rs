//! `bkg-conformance`: the svp/1 conformance kit of protocol.md §2.15.
//!
//! It takes any plug-in program through the protocol cases, each against a **fresh** process
//! started the way the daemon starts plug-ins: cleared environment plus `PATH`, `HOME`,
//! `SUPERVISOR_PLUGIN_COOKIE`, `SUPERVISOR_PLUGIN_TRANSPORT=stdio` and `SUPERVISOR_PLUGIN_LOG`; all
//! three stdio streams piped; stderr always drained; stdout read through the SDK's bounded
//! [`LineDecoder`](bkg_plugin_sdk::codec::LineDecoder); its own process group; a fresh temporary
//! data directory as working directory and `initialize.dataDir`. Every wait has a deadline, and
//! whatever happens the process group is SIGKILLed and the child reaped when the case ends.
//!
//! ```no_run
//! # async fn demo() {
//! use bkg_conformance::{PluginCommand, run_suite};
//! let cmd = PluginCommand::new("/usr/local/bin/bkg")
//!     .args(["plugin", "fake"])
//!     .slow_call("fake.sleep", serde_json::json!({"ms": 10000}));
//! let report = run_suite(&cmd).await;
//! assert!(report.passed(), "{report}");
//! # }
//! ```

mod cases;
mod session;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::session::{Launch, Session};

/// The longest one case may take, from spawn to verdict (teardown adds at most a few seconds).
pub const CASE_DEADLINE: Duration = Duration::from_secs(10);

/// How to start the plug-in under test, and what to send it.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginCommand {
    /// The executable. A relative path with a directory part is resolved against the kit's working
    /// directory; a bare name is looked up in `PATH`.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment variables, applied after the kit's own (so they can override them).
    pub env: Vec<(String, String)>,
    /// Sent as `initialize.config`.
    pub config: Value,
    /// A method that runs for at least a second, with its params, for the cancellation case
    /// (include `"stream": true` in the params to cover streaming). `None` skips that case.
    pub slow_call: Option<(String, Value)>,
}

impl PluginCommand {
    /// A command with no arguments, no extra environment, config `{}` and no slow call.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            config: Value::Object(Default::default()),
            slow_call: None,
        }
    }

    /// Appends one argument.
    #[must_use]
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments.
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Adds an environment variable.
    #[must_use]
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets `initialize.config`.
    #[must_use]
    pub fn config(mut self, config: Value) -> Self {
        self.config = config;
        self
    }

    /// Sets the slow call used by the cancellation case.
    #[must_use]
    pub fn slow_call(mut self, method: impl Into<String>, params: Value) -> Self {
        self.slow_call = Some((method.into(), params));
        self
    }
}

/// One conformance case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Case {
    /// `initialize` → a well-formed result (protocolVersion 1, plugin name and version, methods,
    /// capabilities, sane limits); `initialized`; `$/ping` → `{}`.
    Handshake,
    /// `$/ping` before `initialize` → `-32002`; the handshake works afterwards.
    RequestBeforeInitialize,
    /// `protocolVersions:[99]` → `-32014` with `data.supported` and `data.requested`.
    VersionMismatch,
    /// Pipelined `$/ping`s → `{}` each, matched by id.
    Ping,
    /// `no.such.method` and `$/foo` → `-32601`.
    UnknownMethod,
    /// A `$/whatever` notification is ignored, and `$/ping` still answers.
    UnknownNotification,
    /// A junk line → `-32700` (id null); a batch → one `-32600` (id null); `$/ping` still answers.
    Malformed,
    /// A line 1 MiB over the declared `limits.maxMessageBytes` is discarded; `$/ping` still answers.
    OversizedLine,
    /// The slow call, then `$/cancelRequest` → exactly one final response (result or `-32800`)
    /// within 2 s, then nothing for that id for 300 ms. Skipped without a slow call.
    Cancellation,
    /// `shutdown` → `null`; a later request → `-32010`; stdin EOF → exit code 0 within 3 s.
    Shutdown,
    /// stdin EOF without `shutdown` → exit (any code) within 3 s.
    ExitOnEof,
    /// The plug-in's parent dies while its stdin stays open → it exits within 3 s.
    ExitWhenParentDies,
}

impl Case {
    /// Every case, in the order [`run_suite`] runs them.
    pub const ALL: [Case; 12] = [
        Case::Handshake,
        Case::RequestBeforeInitialize,
        Case::VersionMismatch,
        Case::Ping,
        Case::UnknownMethod,
        Case::UnknownNotification,
        Case::Malformed,
        Case::OversizedLine,
        Case::Cancellation,
        Case::Shutdown,
        Case::ExitOnEof,
        Case::ExitWhenParentDies,
    ];

    /// The case's snake_case name, as printed and as accepted by `--case`.
    pub fn name(self) -> &'static str {
        match self {
            Case::Handshake => "handshake",
            Case::RequestBeforeInitialize => "request_before_initialize",
            Case::VersionMismatch => "version_mismatch",
            Case::Ping => "ping",
            Case::UnknownMethod => "unknown_method",
            Case::UnknownNotification => "unknown_notification",
            Case::Malformed => "malformed",
            Case::OversizedLine => "oversized_line",
            Case::Cancellation => "cancellation",
            Case::Shutdown => "shutdown",
            Case::ExitOnEof => "exit_on_eof",
            Case::ExitWhenParentDies => "exit_when_parent_dies",
        }
    }

    /// The case with this [`Case::name`].
    pub fn from_name(name: &str) -> Option<Case> {
        Case::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The verdict of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The plug-in behaved as the spec requires.
    Pass,
    /// It did not; the reason says what was expected and what happened.
    Fail(String),
    /// The case could not run (for example no slow call was given for cancellation).
    Skipped(String),
}

/// One line of a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    /// Which case.
    pub case: Case,
    /// Its verdict.
    pub outcome: Outcome,
    /// How long it took, teardown included.
    pub elapsed: Duration,
}

impl CaseResult {
    /// The case's name.
    pub fn name(&self) -> &'static str {
        self.case.name()
    }
}

impl fmt::Display for CaseResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.elapsed.as_millis();
        match &self.outcome {
            Outcome::Pass => write!(f, "PASS {} ({ms} ms)", self.case),
            Outcome::Fail(reason) => write!(f, "FAIL {} ({ms} ms): {reason}", self.case),
            Outcome::Skipped(reason) => write!(f, "SKIP {}: {reason}", self.case),
        }
    }
}

/// The verdicts of a run, in the order the cases ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// One entry per case run.
    pub results: Vec<CaseResult>,
}

impl Report {
    /// True when no case failed (skipped cases do not count as failures).
    pub fn passed(&self) -> bool {
        self.failures().next().is_none()
    }

    /// The failed cases.
    pub fn failures(&self) -> impl Iterator<Item = &CaseResult> {
        self.results.iter().filter(|r| matches!(r.outcome, Outcome::Fail(_)))
    }

    /// The verdict of `case`, if it ran.
    pub fn outcome(&self, case: Case) -> Option<&Outcome> {
        self.results.iter().find(|r| r.case == case).map(|r| &r.outcome)
    }

    /// "12 cases: 11 passed, 0 failed, 1 skipped".
    pub fn summary(&self) -> String {
        let count = |f: fn(&Outcome) -> bool| self.results.iter().filter(|r| f(&r.outcome)).count();
        format!(
            "{} cases: {} passed, {} failed, {} skipped",
            self.results.len(),
            count(|o| matches!(o, Outcome::Pass)),
            count(|o| matches!(o, Outcome::Fail(_))),
            count(|o| matches!(o, Outcome::Skipped(_))),
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for result in &self.results {
            writeln!(f, "{result}")?;
        }
        write!(f, "{}", self.summary())
    }
}

/// Runs every case in [`Case::ALL`], one after the other, each against a fresh process.
pub async fn run_suite(cmd: &PluginCommand) -> Report {
    run_cases(cmd, &Case::ALL).await
}

/// Runs the given cases in order.
pub async fn run_cases(cmd: &PluginCommand, cases: &[Case]) -> Report {
    let mut report = Report::default();
    for &case in cases {
        report.results.push(run_case(case, cmd).await);
    }
    report
}

/// Runs one case against a fresh plug-in process and tears that process down afterwards.
pub async fn run_case(case: Case, cmd: &PluginCommand) -> CaseResult {
    let started = std::time::Instant::now();
    let outcome = run_case_inner(case, cmd).await;
    CaseResult { case, outcome, elapsed: started.elapsed() }
}

async fn run_case_inner(case: Case, cmd: &PluginCommand) -> Outcome {
    if case == Case::Cancellation && cmd.slow_call.is_none() {
        return Outcome::Skipped(
            "no slow call given (--slow-method/--slow-params): cancellation needs a method that runs for \
             at least a second"
                .into(),
        );
    }
    let launch = if case == Case::ExitWhenParentDies { Launch::ViaShell } else { Launch::Direct };
    let mut session = match Session::spawn(cmd, launch, CASE_DEADLINE) {
        Ok(s) => s,
        Err(e) => return Outcome::Fail(e),
    };
    // Every wait inside is bounded by the session's deadline; this is the backstop.
    let verdict = tokio::time::timeout(CASE_DEADLINE + Duration::from_secs(1), dispatch(case, &mut session, cmd))
        .await
        .unwrap_or_else(|_| Err(format!("the case did not finish within {CASE_DEADLINE:?}")));
    session.teardown().await;
    match verdict {
        Ok(()) => Outcome::Pass,
        Err(reason) => Outcome::Fail(reason),
    }
}

async fn dispatch(case: Case, s: &mut Session, cmd: &PluginCommand) -> Result<(), String> {
    match case {
        Case::Handshake => cases::handshake(s, cmd).await,
        Case::RequestBeforeInitialize => cases::request_before_initialize(s, cmd).await,
        Case::VersionMismatch => cases::version_mismatch(s, cmd).await,
        Case::Ping => cases::ping_case(s, cmd).await,
        Case::UnknownMethod => cases::unknown_method(s, cmd).await,
        Case::UnknownNotification => cases::unknown_notification(s, cmd).await,
        Case::Malformed => cases::malformed(s, cmd).await,
        Case::OversizedLine => cases::oversized_line(s, cmd).await,
        Case::Cancellation => cases::cancellation(s, cmd).await,
        Case::Shutdown => cases::shutdown(s, cmd).await,
        Case::ExitOnEof => cases::exit_on_eof(s, cmd).await,
        Case::ExitWhenParentDies => cases::exit_when_parent_dies(s, cmd).await,
    }
}
