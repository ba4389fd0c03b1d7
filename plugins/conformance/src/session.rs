//! One plug-in process under test: spawning it the way the daemon does, talking svp/1 to it with a
//! deadline on every wait, and tearing it down (process-group SIGKILL, then reap) whatever happens.
//!
//! Every case gets a fresh [`Session`]. The stdout reader and the stderr drain run as their own
//! tasks from the moment of the spawn, so the plug-in can never block on a full pipe while the kit
//! is busy writing (protocol.md §1 E, §2.7).

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bkg_plugin_sdk::codec::{Frame, LineDecoder, Overflow};
use bkg_plugin_sdk::protocol::{
    self, COOKIE_ENV, COOKIE_VALUE, DEFAULT_MAX_MESSAGE_BYTES, LOG_ENV, RequestId, TRANSPORT_ENV,
};
use bytes::Bytes;
use futures_util::StreamExt;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;

use crate::PluginCommand;

/// How many bytes of the plug-in's stderr are kept for failure reports.
const STDERR_TAIL_BYTES: usize = 4096;
/// How much of that tail goes into one failure reason.
const STDERR_SNIPPET_CHARS: usize = 400;
/// How long teardown waits for a SIGKILLed process to be reaped.
const REAP_WAIT: Duration = Duration::from_secs(2);

/// The intermediate parent for the parent-death case. It hands its stdin (the kit's pipe) to the
/// plug-in through fd 3, because a non-interactive shell points the stdin of a background job at
/// `/dev/null` before applying explicit redirections. It prints the plug-in's pid and then waits,
/// so that it outlives the plug-in's startup; the kit SIGKILLs it once the handshake is done.
const PARENT_SHELL_SCRIPT: &str = "exec 3<&0 0</dev/null\n\"$@\" <&3 3<&- &\necho $!\nexec 3<&-\nwait\n";

/// How the plug-in is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Launch {
    /// The plug-in is the kit's direct child and leads its own process group.
    Direct,
    /// The plug-in is the background child of an intermediate `/bin/sh`, which leads the process
    /// group; the kit reads the plug-in's pid from the shell's first stdout line.
    ViaShell,
}

/// What the stdout reader task hands over.
#[derive(Debug)]
enum Incoming {
    Frame(Frame),
    Eof,
    Failed(String),
}

/// A classified message from the plug-in.
#[derive(Debug)]
pub(crate) enum Msg {
    /// A response: `id` as it appeared on the wire (`null` included).
    Response { id: Value, reply: Reply },
    /// A notification.
    Notification { method: String, params: Value },
    /// stdout reached EOF; the text says how the process ended and what its stderr last said.
    Closed(String),
}

/// The outcome half of a response.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    Result(Value),
    Error { code: i64, message: String, data: Option<Value> },
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Result(v) => write!(f, "result {}", preview_value(v)),
            Reply::Error { code, message, .. } => write!(f, "error {code} {message:?}"),
        }
    }
}

/// A process's state as read from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// The state letter (`R`, `S`, `Z`, ...).
    pub(crate) state: char,
    /// Start time in clock ticks since boot; tells a reused pid apart.
    pub(crate) start_time: u64,
}

/// Reads `/proc/<pid>/stat`; `None` when there is no such process.
pub(crate) fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<ProcStat> {
    // The command name may contain spaces and parentheses; the fixed fields follow the last ')'.
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 22 (starttime) is the 20th after the state field.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

/// The last bytes a plug-in wrote to stderr.
#[derive(Debug, Default)]
struct StderrTail {
    bytes: std::collections::VecDeque<u8>,
}

impl StderrTail {
    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend(chunk);
        let excess = self.bytes.len().saturating_sub(STDERR_TAIL_BYTES);
        self.bytes.drain(..excess);
    }

    fn snippet(&self) -> String {
        let (a, b) = self.bytes.as_slices();
        let text = String::from_utf8_lossy(&[a, b].concat()).into_owned();
        let text = text.trim();
        let count = text.chars().count();
        text.chars().skip(count.saturating_sub(STDERR_SNIPPET_CHARS)).collect()
    }
}

fn lock(tail: &Mutex<StderrTail>) -> std::sync::MutexGuard<'_, StderrTail> {
    // A poisoned tail only means a drain task panicked mid-push; the bytes are still usable.
    tail.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A plug-in (or its intermediate parent shell) under test.
pub(crate) struct Session {
    child: Child,
    /// Pid of the direct child, which is also its process group id (`process_group(0)`).
    pid: i32,
    stdin: Option<ChildStdin>,
    frames: mpsc::Receiver<Incoming>,
    reader: JoinHandle<()>,
    stderr_drain: JoinHandle<()>,
    stderr: Arc<Mutex<StderrTail>>,
    next_id: u64,
    deadline: Instant,
    case_deadline: Duration,
    /// Set once the direct child was reaped; no signal goes to its ids after that.
    status: Option<ExitStatus>,
    /// `Launch::ViaShell`: the plug-in's own pid and start time, once known.
    orphan: Option<(i32, u64)>,
    data_dir: tempfile::TempDir,
    /// Methods of notifications skipped while waiting for a response.
    pub(crate) stray_notifications: Vec<String>,
}

impl Session {
    /// Spawns the plug-in: cleared environment plus PATH, HOME and the svp/1 variables, all three
    /// stdio streams piped, its own process group, a fresh data directory as working directory.
    pub(crate) fn spawn(cmd: &PluginCommand, launch: Launch, case_deadline: Duration) -> Result<Self, String> {
        let data_dir = tempfile::Builder::new()
            .prefix("bkg-conformance-")
            .tempdir()
            .map_err(|e| format!("cannot create a data directory for the plug-in: {e}"))?;
        let program = absolute_program(&cmd.program);
        let mut command = match launch {
            Launch::Direct => {
                let mut c = Command::new(&program);
                c.args(&cmd.args);
                c
            }
            Launch::ViaShell => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c").arg(PARENT_SHELL_SCRIPT).arg("sh").arg(&program).args(&cmd.args);
                c
            }
        };
        command.env_clear();
        for key in ["PATH", "HOME"] {
            if let Some(value) = std::env::var_os(key) {
                command.env(key, value);
            }
        }
        command.env(COOKIE_ENV, COOKIE_VALUE).env(TRANSPORT_ENV, "stdio").env(LOG_ENV, "info");
        for (key, value) in &cmd.env {
            command.env(key, value);
        }
        command
            .current_dir(data_dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|e| format!("cannot spawn {}: {e}", program.display()))?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .ok_or_else(|| "the spawned process has no pid".to_string())?;
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            // Not reachable with three `Stdio::piped()`; still, never leave the process behind.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            return Err("the spawned process is missing a piped stdio stream".into());
        };
        let (tx, frames) = mpsc::channel(4096);
        let reader = tokio::spawn(read_stdout(stdout, tx));
        let tail = Arc::new(Mutex::new(StderrTail::default()));
        let stderr_drain = tokio::spawn(drain_stderr(stderr, Arc::clone(&tail)));
        Ok(Self {
            child,
            pid,
            stdin: Some(stdin),
            frames,
            reader,
            stderr_drain,
            stderr: tail,
            next_id: 1,
            deadline: Instant::now() + case_deadline,
            case_deadline,
            status: None,
            orphan: None,
            data_dir,
            stray_notifications: Vec::new(),
        })
    }

    /// The data directory handed to the plug-in (its working directory, `initialize.dataDir`).
    pub(crate) fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// Pid of the direct child (the plug-in, or the parent shell with [`Launch::ViaShell`]).
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// Takes a fresh request id (ids are never reused within a session).
    pub(crate) fn alloc_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn deadline_error(&self) -> String {
        format!("the case deadline ({:?}) passed", self.case_deadline)
    }

    /// Writes raw bytes to the plug-in's stdin.
    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), String> {
        let deadline = self.deadline;
        let Some(stdin) = self.stdin.as_mut() else {
            return Err("the kit already closed the plug-in's stdin".into());
        };
        let written = tokio::time::timeout_at(deadline, async {
            stdin.write_all(bytes).await?;
            stdin.flush().await
        })
        .await;
        match written {
            Err(_) => Err(format!("{} while writing to stdin (the plug-in stopped reading it)", self.deadline_error())),
            Ok(Err(e)) => Err(format!("writing to the plug-in's stdin failed ({e}); {}", self.exit_note().await)),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Sends a request and returns its id as it appears on the wire.
    pub(crate) async fn request(&mut self, method: &str, params: &Value) -> Result<Value, String> {
        let id = self.alloc_id();
        let line = protocol::encode_request(&RequestId::from(id), method, params);
        self.send_raw(&line).await.map_err(|e| format!("sending `{method}`: {e}"))?;
        Ok(Value::from(id))
    }

    /// Sends a notification.
    pub(crate) async fn notify(&mut self, method: &str, params: &Value) -> Result<(), String> {
        let line = protocol::encode_notification(method, params);
        self.send_raw(&line).await.map_err(|e| format!("sending `{method}`: {e}"))
    }

    /// Sends a request and waits up to `within` for its response.
    pub(crate) async fn call(&mut self, method: &str, params: &Value, within: Duration) -> Result<Reply, String> {
        let id = self.request(method, params).await?;
        self.response(&id, &format!("`{method}` (id {id})"), within).await
    }

    /// Waits up to `within` for the response with `id`. Notifications on the way are recorded in
    /// [`Session::stray_notifications`]; a response for another id, junk or EOF fails.
    pub(crate) async fn response(&mut self, id: &Value, what: &str, within: Duration) -> Result<Reply, String> {
        let until = Instant::now() + within;
        loop {
            let msg = self.next(until).await.map_err(|e| format!("waiting for the response to {what}: {e}"))?;
            match msg {
                None => return Err(format!("no response to {what} within {within:?}")),
                Some(Msg::Response { id: got, reply }) if got == *id => return Ok(reply),
                Some(Msg::Response { id: got, reply }) => {
                    return Err(format!(
                        "got a response for id {got} ({reply}) while waiting for the response to {what}"
                    ));
                }
                Some(Msg::Notification { method, .. }) => self.stray_notifications.push(method),
                Some(Msg::Closed(note)) => {
                    return Err(format!("the plug-in closed its stdout before answering {what}; {note}"));
                }
            }
        }
    }

    /// The next message, or `None` when nothing arrived by `until`. Junk, oversized lines and
    /// malformed JSON-RPC are errors, and so is passing the case deadline.
    pub(crate) async fn next(&mut self, until: Instant) -> Result<Option<Msg>, String> {
        match self.next_frame(until).await? {
            None => Ok(None),
            Some(Incoming::Frame(Frame::Line(line))) => {
                classify(&line).map(Some).map_err(|e| format!("the plug-in {e}"))
            }
            Some(Incoming::Frame(Frame::Oversized(n))) => Err(format!(
                "the plug-in wrote a {n}-byte line to stdout, over the {DEFAULT_MAX_MESSAGE_BYTES}-byte protocol cap"
            )),
            Some(Incoming::Frame(Frame::Truncated(_))) => Err("the plug-in wrote an over-long line to stdout".into()),
            Some(Incoming::Eof) => Ok(Some(Msg::Closed(self.exit_note().await))),
            Some(Incoming::Failed(e)) => Err(format!("reading the plug-in's stdout failed: {e}")),
        }
    }

    /// The next raw stdout line (for the parent shell's pid line).
    pub(crate) async fn next_raw_line(&mut self, within: Duration) -> Result<Bytes, String> {
        match self.next_frame(Instant::now() + within).await? {
            None => Err(format!("nothing on stdout within {within:?}")),
            Some(Incoming::Frame(Frame::Line(line))) => Ok(line),
            Some(Incoming::Frame(_)) => Err("an over-long line on stdout".into()),
            Some(Incoming::Eof) => Err(format!("stdout closed; {}", self.exit_note().await)),
            Some(Incoming::Failed(e)) => Err(format!("reading stdout failed: {e}")),
        }
    }

    async fn next_frame(&mut self, until: Instant) -> Result<Option<Incoming>, String> {
        let limit = until.min(self.deadline);
        match tokio::time::timeout_at(limit, self.frames.recv()).await {
            Err(_) if limit < until => Err(self.deadline_error()),
            Err(_) => Ok(None),
            // The reader task ends after reporting EOF; later reads see EOF again.
            Ok(None) => Ok(Some(Incoming::Eof)),
            Ok(Some(item)) => Ok(Some(item)),
        }
    }

    /// Takes the stdin pipe (for a writer task); the session no longer writes after this.
    pub(crate) fn take_stdin(&mut self) -> Result<ChildStdin, String> {
        self.stdin.take().ok_or_else(|| "the kit already closed the plug-in's stdin".to_string())
    }

    /// Gives a stdin pipe taken with [`Session::take_stdin`] back.
    pub(crate) fn restore_stdin(&mut self, stdin: ChildStdin) {
        self.stdin = Some(stdin);
    }

    /// Closes the plug-in's stdin (EOF on its side).
    pub(crate) fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// When the case must be over.
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// True once the direct child has exited (zombie or reaped).
    pub(crate) fn has_exited(&self) -> bool {
        self.status.is_some() || proc_stat(self.pid).is_none_or(|s| s.state == 'Z')
    }

    /// Waits up to `within` for the direct child to exit and returns its status. The child is not
    /// reaped until it is a zombie, so the group can be SIGKILLed by its id first (a zombie leader
    /// keeps the id from being reused), which takes care of any grandchildren it left.
    pub(crate) async fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus, String> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let until = Instant::now() + within;
        let limit = until.min(self.deadline);
        while !self.has_exited() {
            if Instant::now() >= limit {
                return Err(if limit < until {
                    self.deadline_error()
                } else {
                    format!("still running {within:?} later")
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.reap().await
    }

    /// SIGKILLs the process group (unless the leader was already reaped) and reaps the leader.
    async fn reap(&mut self) -> Result<ExitStatus, String> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        match tokio::time::timeout(REAP_WAIT, self.child.wait()).await {
            Ok(Ok(status)) => {
                self.status = Some(status);
                Ok(status)
            }
            Ok(Err(e)) => Err(format!("waiting for pid {} failed: {e}", self.pid)),
            Err(_) => Err(format!("pid {} was not reaped within {REAP_WAIT:?} of SIGKILL", self.pid)),
        }
    }

    /// [`Launch::ViaShell`]: SIGKILLs only the parent shell (not its group) and reaps it, so the
    /// plug-in is orphaned while its stdin stays open.
    pub(crate) async fn kill_parent_shell(&mut self) -> Result<(), String> {
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        match tokio::time::timeout(REAP_WAIT, self.child.wait()).await {
            Ok(Ok(status)) => {
                self.status = Some(status);
                Ok(())
            }
            Ok(Err(e)) => Err(format!("reaping the parent shell failed: {e}")),
            Err(_) => Err("the parent shell did not die of SIGKILL".into()),
        }
    }

    /// [`Launch::ViaShell`]: remembers the orphaned plug-in so teardown can kill it.
    pub(crate) fn set_orphan(&mut self, pid: i32, start_time: u64) {
        self.orphan = Some((pid, start_time));
    }

    /// Describes how the process ended, with the tail of its stderr, for failure reasons.
    pub(crate) async fn exit_note(&mut self) -> String {
        // Give a process that just closed stdout a moment to finish exiting.
        let status = match self.wait_exit(Duration::from_millis(500)).await {
            Ok(status) => format!("it exited ({})", describe_status(status)),
            Err(_) => "it is still running".into(),
        };
        let stderr = lock(&self.stderr).snippet();
        if stderr.is_empty() {
            format!("{status}; its stderr was empty")
        } else {
            format!("{status}; its stderr ends with {stderr:?}")
        }
    }

    /// The tail of the plug-in's stderr so far.
    pub(crate) fn stderr_snippet(&self) -> String {
        lock(&self.stderr).snippet()
    }

    /// Kills everything the session started and reaps the direct child.
    pub(crate) async fn teardown(&mut self) {
        self.stdin = None;
        let _ = self.reap().await;
        self.kill_orphan();
        self.reader.abort();
        self.stderr_drain.abort();
    }

    fn kill_orphan(&mut self) {
        if let Some((pid, start_time)) = self.orphan
            && proc_stat(pid).is_some_and(|s| s.start_time == start_time && s.state != 'Z')
        {
            // Its group is the parent shell's; a live member keeps that id from being reused.
            let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // The normal path is `teardown`; this covers a case future dropped mid-way.
        if self.status.is_none() {
            let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
        self.kill_orphan();
        self.reader.abort();
        self.stderr_drain.abort();
    }
}

/// Makes a relative path with a directory part absolute: the child runs in its data directory,
/// and a relative program path must not be resolved against that.
fn absolute_program(program: &Path) -> PathBuf {
    if program.is_relative()
        && program.components().count() > 1
        && let Ok(cwd) = std::env::current_dir()
    {
        return cwd.join(program);
    }
    program.to_path_buf()
}

/// "code 1" or "signal 9".
pub(crate) fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("code {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        (None, None) => status.to_string(),
    }
}

async fn read_stdout(stdout: ChildStdout, tx: mpsc::Sender<Incoming>) {
    let decoder = LineDecoder::new(DEFAULT_MAX_MESSAGE_BYTES, Overflow::Discard);
    let mut frames = FramedRead::with_capacity(stdout, decoder, 64 * 1024);
    loop {
        let item = match frames.next().await {
            None => Incoming::Eof,
            Some(Ok(frame)) => Incoming::Frame(frame),
            Some(Err(e)) => Incoming::Failed(e.to_string()),
        };
        let last = !matches!(item, Incoming::Frame(_));
        if tx.send(item).await.is_err() || last {
            return;
        }
    }
}

async fn drain_stderr(mut stderr: ChildStderr, tail: Arc<Mutex<StderrTail>>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => lock(&tail).push(&buf[..n]),
        }
    }
}

/// A short, escaped rendering of a line for failure reasons.
pub(crate) fn preview_bytes(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let mut short: String = text.chars().take(200).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    format!("{short:?}")
}

/// A short rendering of a JSON value for failure reasons.
pub(crate) fn preview_value(value: &Value) -> String {
    let text = value.to_string();
    let mut short: String = text.chars().take(200).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}

/// Checks one stdout line against the svp/1 message rules (protocol.md §2.3) and classifies it.
pub(crate) fn classify(line: &[u8]) -> Result<Msg, String> {
    let value: Value = serde_json::from_slice(line)
        .map_err(|_| format!("wrote a line that is not JSON to stdout: {}", preview_bytes(line)))?;
    let Value::Object(obj) = &value else {
        return Err(format!("wrote a JSON line that is not an object: {}", preview_value(&value)));
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(format!("wrote a message without \"jsonrpc\":\"2.0\": {}", preview_value(&value)));
    }
    match (obj.get("method"), obj.get("id")) {
        (Some(method), Some(id)) => Err(format!(
            "sent a request ({method}, id {id}), but plug-ins send no requests in svp/1: {}",
            preview_value(&value)
        )),
        (Some(Value::String(method)), None) => {
            let params = obj.get("params").cloned().unwrap_or_else(|| Value::Object(Default::default()));
            if !params.is_object() {
                return Err(format!("sent notification `{method}` whose params are not an object"));
            }
            Ok(Msg::Notification { method: method.clone(), params })
        }
        (Some(_), None) => Err(format!("sent a message whose method is not a string: {}", preview_value(&value))),
        (None, Some(id)) => {
            if !(id.is_null() || id.is_string() || id.is_i64() || id.is_u64()) {
                return Err(format!("sent a response whose id is not an integer, string or null: {id}"));
            }
            let reply = match (obj.get("result"), obj.get("error")) {
                (Some(result), None) => Reply::Result(result.clone()),
                (None, Some(error)) => parse_error(error)
                    .ok_or_else(|| format!("sent a malformed error object: {}", preview_value(error)))?,
                (Some(_), Some(_)) => {
                    return Err(format!("sent a response with both result and error: {}", preview_value(&value)));
                }
                (None, None) => {
                    return Err(format!("sent a response with neither result nor error: {}", preview_value(&value)));
                }
            };
            Ok(Msg::Response { id: id.clone(), reply })
        }
        (None, None) => {
            Err(format!("wrote an object that is neither a response nor a notification: {}", preview_value(&value)))
        }
    }
}

fn parse_error(error: &Value) -> Option<Reply> {
    let code = error.get("code")?.as_i64()?;
    let message = error.get("message")?.as_str()?.to_string();
    Some(Reply::Error { code, message, data: error.get("data").cloned() })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use serde_json::json;

    #[test]
    fn classifies_responses_and_notifications() {
        match classify(br#"{"jsonrpc":"2.0","id":3,"result":{}}"#).unwrap() {
            Msg::Response { id, reply } => {
                assert_eq!(id, json!(3));
                assert_eq!(reply, Reply::Result(json!({})));
            }
            other => panic!("{other:?}"),
        }
        match classify(br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}"#).unwrap() {
            Msg::Response { id, reply: Reply::Error { code, .. } } => {
                assert!(id.is_null());
                assert_eq!(code, -32700);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(br#"{"jsonrpc":"2.0","method":"$/stream","params":{"id":1,"seq":0,"data":1}}"#).unwrap(),
            Msg::Notification { .. }
        ));
    }

    #[test]
    fn rejects_what_a_plugin_must_not_write() {
        for line in [
            &b"garbage"[..],
            b"[1]",
            br#"{"id":1,"result":{}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"host.x","params":{}}"#,
            br#"{"jsonrpc":"2.0","id":1,"result":1,"error":{"code":1,"message":"m"}}"#,
            br#"{"jsonrpc":"2.0","id":1}"#,
            br#"{"jsonrpc":"2.0","id":1,"error":{"message":"no code"}}"#,
            br#"{"jsonrpc":"2.0","id":{},"result":1}"#,
        ] {
            assert!(classify(line).is_err(), "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn parses_proc_stat() {
        let text = "42 (a (weird) name) Z 1 42 42 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 123456 0 0";
        assert_eq!(parse_stat(text), Some(ProcStat { state: 'Z', start_time: 123456 }));
        let me = proc_stat(i32::try_from(std::process::id()).unwrap()).unwrap();
        assert_ne!(me.state, 'Z');
    }

    #[test]
    fn stderr_tail_is_bounded() {
        let mut tail = StderrTail::default();
        for _ in 0..100 {
            tail.push(&[b'x'; 1000]);
        }
        tail.push(b"the end");
        assert!(tail.bytes.len() <= STDERR_TAIL_BYTES);
        assert!(tail.snippet().ends_with("the end"));
    }
}
