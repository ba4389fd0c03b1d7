//! The conformance cases (protocol.md §2.15), one function each.
//!
//! Each case runs against a fresh plug-in process in its own [`Session`] and returns `Ok(())` or a
//! precise reason. Waits use the budgets of the spec where it has one (2 s for the final response
//! after a cancel, 3 s for an exit after EOF) and the session's case deadline always applies.

use std::time::Duration;

use bkg_plugin_sdk::protocol::{DEFAULT_MAX_MESSAGE_BYTES, codes, methods};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::PluginCommand;
use crate::session::{Msg, Reply, Session, describe_status, preview_bytes, preview_value, proc_stat};

/// How long the plug-in gets to answer `initialize`.
const STARTUP: Duration = Duration::from_secs(5);
/// How long any other response may take.
const REPLY: Duration = Duration::from_secs(5);
/// How long the plug-in gets to exit after EOF or after its parent died (protocol.md §2.12).
const EXIT: Duration = Duration::from_secs(3);
/// How long the final response may take after `$/cancelRequest` (protocol.md §2.9).
const CANCEL_FINAL: Duration = Duration::from_secs(2);
/// How long nothing more may arrive for a request after its final response.
const QUIET: Duration = Duration::from_millis(300);
/// How long the slow call runs before the kit cancels it.
const SETTLE: Duration = Duration::from_millis(300);
/// The name the kit gives the plug-in in `initialize.plugin.name`.
const PLUGIN_NAME: &str = "conformance";

/// What the kit learned from a successful handshake.
pub(crate) struct Handshake {
    /// The plug-in's declared input cap (`limits.maxMessageBytes`), or the protocol default.
    pub(crate) max_message_bytes: usize,
}

fn initialize_params(s: &Session, cmd: &PluginCommand, versions: &[u32]) -> Value {
    json!({
        "protocolVersions": versions,
        "host": {"name": "bkg-conformance", "version": env!("CARGO_PKG_VERSION"), "pid": std::process::id()},
        "plugin": {"name": PLUGIN_NAME},
        "config": cmd.config,
        "dataDir": s.data_dir().to_string_lossy(),
        "logLevel": "info",
        "limits": {"maxMessageBytes": DEFAULT_MAX_MESSAGE_BYTES},
        "capabilities": {"cancel": {}, "stream": {}, "setLogLevel": {}},
    })
}

fn expect_error(reply: Reply, code: i64, what: &str) -> Result<Option<Value>, String> {
    match reply {
        Reply::Error { code: got, data, .. } if got == code => Ok(data),
        other => Err(format!("{what}: expected error {code}, got {other}")),
    }
}

fn expect_object(reply: Reply, what: &str) -> Result<Value, String> {
    match reply {
        Reply::Result(v) if v.is_object() => Ok(v),
        other => Err(format!("{what}: expected an object result, got {other}")),
    }
}

/// Checks an `initialize` result (protocol.md §2.4).
pub(crate) fn check_initialize_result(result: &Value) -> Result<Handshake, String> {
    let what = "the `initialize` result";
    if !result.is_object() {
        return Err(format!("{what} is not an object: {}", preview_value(result)));
    }
    match result.get("protocolVersion") {
        Some(v) if v.as_u64() == Some(1) => {}
        Some(v) => {
            return Err(format!("{what} has protocolVersion {v}, but the kit offered only [1]"));
        }
        None => return Err(format!("{what} has no protocolVersion")),
    }
    let plugin = result.get("plugin").ok_or_else(|| format!("{what} has no `plugin` object"))?;
    for field in ["name", "version"] {
        match plugin.get(field).and_then(Value::as_str) {
            Some(s) if !s.is_empty() => {}
            _ => {
                return Err(format!(
                    "{what} has no non-empty string plugin.{field}: plugin = {}",
                    preview_value(plugin)
                ));
            }
        }
    }
    let declared =
        result.get("methods").and_then(Value::as_object).ok_or_else(|| format!("{what} has no `methods` object"))?;
    for (name, info) in declared {
        if !info.is_object() {
            return Err(format!("{what}: methods[{name:?}] is not an object"));
        }
        if let Some(t) = info.get("timeoutMs")
            && t.as_u64().is_none()
        {
            return Err(format!("{what}: methods[{name:?}].timeoutMs is not a non-negative integer: {t}"));
        }
    }
    if !result.get("capabilities").is_some_and(Value::is_object) {
        return Err(format!("{what} has no `capabilities` object"));
    }
    let mut max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES;
    if let Some(limits) = result.get("limits") {
        if !limits.is_object() {
            return Err(format!("{what}: `limits` is not an object"));
        }
        if let Some(v) = limits.get("maxMessageBytes") {
            match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
                Some(n) if n > 0 && n <= DEFAULT_MAX_MESSAGE_BYTES => max_message_bytes = n,
                _ => {
                    return Err(format!(
                        "{what}: limits.maxMessageBytes {v} is not an integer in 1..={DEFAULT_MAX_MESSAGE_BYTES}"
                    ));
                }
            }
        }
        if let Some(v) = limits.get("maxConcurrentRequests")
            && v.as_u64().unwrap_or(0) == 0
        {
            return Err(format!("{what}: limits.maxConcurrentRequests {v} is not a positive integer"));
        }
    }
    Ok(Handshake { max_message_bytes })
}

/// `initialize` with the given versions; returns the reply unchecked.
async fn initialize(s: &mut Session, cmd: &PluginCommand, versions: &[u32]) -> Result<Reply, String> {
    let params = initialize_params(s, cmd, versions);
    s.call(methods::INITIALIZE, &params, STARTUP).await
}

/// The full handshake: `initialize` (checked), then `initialized`.
async fn open(s: &mut Session, cmd: &PluginCommand) -> Result<Handshake, String> {
    let result = match initialize(s, cmd, &[1]).await? {
        Reply::Result(v) => v,
        err @ Reply::Error { .. } => return Err(format!("`initialize` failed: {err}")),
    };
    let handshake = check_initialize_result(&result)?;
    s.notify(methods::INITIALIZED, &json!({})).await?;
    Ok(handshake)
}

/// [`open`] for cases that test something else: failures are prefixed.
async fn prelude(s: &mut Session, cmd: &PluginCommand) -> Result<Handshake, String> {
    open(s, cmd).await.map_err(|e| format!("handshake: {e}"))
}

async fn ping(s: &mut Session, what: &str) -> Result<(), String> {
    let reply = s.call(methods::PING, &json!({}), REPLY).await.map_err(|e| format!("{what}: {e}"))?;
    expect_object(reply, &format!("{what}: `$/ping`")).map(drop)
}

/// Case 1: `initialize` → a well-formed result, `initialized`, then `$/ping` → `{}`.
pub(crate) async fn handshake(s: &mut Session, cmd: &PluginCommand) -> Result<(), String> {
    open(s, cmd).await?;
    ping(s, "after the handshake").await
}

/// Case 2: a request before `initialize` → `-32002`, and the handshake still works afterwards.
pub(crate) async fn request_before_initialize(s: &mut Session, cmd: &PluginCommand) -> Result<(), String> {
    let reply = s.call(methods::PING, &json!({}), STARTUP).await?;
    expect_error(reply, codes::NOT_INITIALIZED, "`$/ping` before `initialize`")?;
    open(s, cmd).await.map(drop).map_err(|e| format!("handshake after the rejected request: {e}"))
}

/// Case 3: `protocolVersions:[99]` → `-32014` with `data.supported` and `data.requested`.
pub(crate) async fn version_mismatch(s: &mut Session, cmd: &PluginCommand) -> Result<(), String> {
    let reply = initialize(s, cmd, &[99]).await?;
    let what = "`initialize` with protocolVersions [99]";
    let data = expect_error(reply, codes::UNSUPPORTED_PROTOCOL_VERSION, what)?
        .ok_or_else(|| format!("{what}: the error has no `data` (expected {{supported, requested}})"))?;
    let supported = data
        .get("supported")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{what}: data.supported is not an array: {}", preview_value(&data)))?;
    if supported.is_empty() || !supported.iter().all(|v| v.as_u64().is_some()) {
        return Err(format!("{what}: data.supported is not a non-empty list of versions: {}", preview_value(&data)));
    }
    if supported.iter().any(|v| v.as_u64() == Some(99)) {
        return Err(format!("{what}: data.supported contains 99, yet the version was refused"));
    }
    if data.get("requested") != Some(&json!([99])) {
        return Err(format!("{what}: data.requested is not [99]: {}", preview_value(&data)));
    }
    Ok(())
}

/// Case 4: three pipelined `$/ping`s each get `{}`, matched by id in any order.
pub(crate) async fn ping_case(s: &mut Session, cmd: &PluginCommand) -> Result<(), String> {
    prelude(s, cmd).await?;
    let mut pending = Vec::new();
    for _ in 0..3 {
        pending.push(s.request(methods::PING, &json!({})).await?);
    }
    let until = Instant::now() + REPLY;
    while !pending.is_empty() {
        match s.next(until).await.map_err(|e| format!("waiting for `$/ping` responses: {e}"))? {
            None => {
                return Err(format!("no response to `$/ping` ids {pending:?} within {REPLY:?}"));
            }
            Some(Msg::Response { id, reply }) => {
                let Some(pos) = pending.iter().position(|p| *p == id) else {
                    return Err(format!("got a response for unexpected id {id} ({reply})"));
                };
                pending.swap_remove(pos);
                expect_object(reply, &format!("`$/ping` id {id}"))?;
            }
            Some(Msg::Notification { .. }) => {}
            Some(Msg::Closed(note)) => {
                return Err(format!("the plug-in closed its stdout before answering `$/ping`; {note}"));
            }
        }
    }
    Ok(())
}

/// Case 5: an unknown method and an unknown `$/` request both → `-32601`.
pub(crate) async fn unknown_method(s: &mut Session, cmd: &PluginCommand) -> Result<(), String> {
    prelude(s, cmd).await?;
    for method in ["no.such.method", "$/foo"] {
        let reply = s.call(method, &json!({}), REPLY).await?;
        expect_error(reply, codes::METHOD_NOT_FOUND, &format!("`{method}`"))?;
    }
    Ok(())
}

/// Case 6: an unknown `$/` notification is ignored: nothing answers it and `$/ping` still works.
pub(crate) async fn unknown_notification(s: &mut Session, cmd: &PluginCommand) -> Result<(), String> {
    prelude(s, cmd).await?;
    s.stray_notifications.clear();
    s.notify("$/whatever", &json!({"conformance": true})).await?;
    // Notifications are handled in order, so anything sent in reaction arrives before the pong.
    ping(s, "after the `$/whatever` notification").await?;
    if !s.stray_notifications.is_empty() {
        return Err(format!(
            "the plug-in sent {:?} after the unknown `$/whatever` notification; it must ignore it",
            s.stray_notifications
        ));
    }
    Ok(())
}

/// Case 7: junk → `-32700` with id null; a batch → one `-32600` with id null; then `$/ping` works.
pub(crate) async fn malformed(s: &mut Session, cmd: &PluginCommand) -> Result<(), String> {
    prelude(s, cmd).await?;
    s.send_raw(b"this is not json {\n").await?;
    let reply = s.response(&Value::Null, "a junk line (expected id null)", REPLY).await?;
    expect_error(reply, codes::PARSE_ERROR, "a junk line")?;

    // A batch holding a valid ping: it must be refused as a whole, the ping must not be answered.
    let inner = s.alloc_id();
    let batch = format!("[{{\"jsonrpc\":\"2.0\",\"id\":{inner},\"method\":\"$/ping\",\"params\":{{}}}}]\n");
    s.send_raw(batch.as_bytes()).await?;
    let reply = s.response(&Value::Null, "a batch (expected one response with id null)", REPLY).await?;
    expect_error(reply, codes::INVALID_REQUEST, "a batch")?;
    ping(s, "after the junk line and the batch").await
}

/// Case 8: a line over the plug-in's declared cap is discarded and the plug-in keeps serving.
pub(crate) async fn oversized_line(s: &mut Session, cmd: &PluginCommand) -> Result<(), String> {
    let handshake = prelude(s, cmd).await?;
    let total = handshake.max_message_bytes + 1024 * 1024;
    let big_id = s.alloc_id();
    let prefix = format!("{{\"jsonrpc\":\"2.0\",\"id\":{big_id},\"method\":\"$/ping\",\"params\":{{\"pad\":\"");
    let suffix = "\"}}";
    let mut line = Vec::with_capacity(total + 1);
    line.extend_from_slice(prefix.as_bytes());
    line.resize(total - suffix.len(), b'x');
    line.extend_from_slice(suffix.as_bytes());
    line.push(b'\n');

    // Write from a separate task; the session's reader task keeps draining stdout meanwhile.
    let mut stdin = s.take_stdin()?;
    let mut writer = tokio::spawn(async move {
        let res = async {
            stdin.write_all(&line).await?;
            stdin.flush().await
        }
        .await;
        (stdin, res)
    });
    match tokio::time::timeout_at(s.deadline(), &mut writer).await {
        Err(_) => {
            writer.abort();
            return Err(format!(
                "writing the {total}-byte line did not finish before the case deadline: the plug-in stopped reading stdin"
            ));
        }
        Ok(Err(e)) => return Err(format!("the writer task failed: {e}")),
        Ok(Ok((_, Err(e)))) => {
            return Err(format!("writing the {total}-byte line failed ({e}); {}", s.exit_note().await));
        }
        Ok(Ok((stdin, Ok(())))) => s.restore_stdin(stdin),
    }

    let what = format!("`$/ping` after a {total}-byte line (cap {})", handshake.max_message_bytes);
    let id = s.request(methods::PING, &json!({})).await?;
    let until = Instant::now() + REPLY;
    let big = Value::from(big_id);
    loop {
        match s.next(until).await.map_err(|e| format!("waiting for {what}: {e}"))? {
            None => return Err(format!("no response to {what} within {REPLY:?}")),
            Some(Msg::Response { id: got, reply }) if got == id => {
                return expect_object(reply, &what).map(drop);
            }
            Some(Msg::Response { id: got, .. }) if got == big => {
                return Err(format!(
                    "the plug-in answered the oversized request (id {big_id}); a line over its cap of {} bytes \
                     must be discarded unread",
                    handshake.max_message_bytes
                ));
            }
            // An error without an id about the discarded line is tolerated.
            Some(Msg::Response { id: got, reply: Reply::Error { .. } }) if got.is_null() => {}
            Some(Msg::Response { id: got, reply }) => {
                return Err(format!("got a response for unexpected id {got} ({reply}) while waiting for {what}"));
            }
            Some(Msg::Notification { .. }) => {}
            Some(Msg::Closed(note)) => {
                return Err(format!("the plug-in closed its stdout after the oversized line; {note}"));
            }
        }
    }
}

/// Tracks `$/stream` chunks for one request: ids must match and `seq` must count up from 0.
struct StreamSeq {
    id: Value,
    next: u64,
}

impl StreamSeq {
    /// `Ok(true)` when the notification is a chunk of this request.
    fn check(&mut self, method: &str, params: &Value) -> Result<bool, String> {
        if method != methods::STREAM || params.get("id") != Some(&self.id) {
            return Ok(false);
        }
        let seq = params
            .get("seq")
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("`$/stream` for id {} has no integer seq: {}", self.id, preview_value(params)))?;
        if seq != self.next {
            return Err(format!("`$/stream` for id {}: seq {seq}, expected {}", self.id, self.next));
        }
        if params.get("data").is_none() {
            return Err(format!("`$/stream` for id {} seq {seq} has no data", self.id));
        }
        self.next += 1;
        Ok(true)
    }
}

/// Case 9: cancel a slow call → exactly one final response (a result or `-32800`) within 2 s,
/// then nothing more for that id (no `$/stream` after the final response).
pub(crate) async fn cancellation(s: &mut Session, cmd: &PluginCommand) -> Result<(), String> {
    let Some((method, params)) = &cmd.slow_call else {
        return Err("no slow call configured".into());
    };
    prelude(s, cmd).await?;
    let mut params = params.clone();
    if let Some(obj) = params.as_object_mut() {
        obj.entry("_meta").or_insert_with(|| json!({"deadlineMs": 60_000}));
    }
    let id = s.request(method, &params).await?;
    let mut chunks = StreamSeq { id: id.clone(), next: 0 };

    // Let it get going, watching for an early answer.
    let settle = Instant::now() + SETTLE;
    while let Some(msg) = s.next(settle).await.map_err(|e| format!("while `{method}` ran: {e}"))? {
        match msg {
            Msg::Response { id: got, reply } if got == id => {
                return Err(format!(
                    "`{method}` finished ({reply}) within {SETTLE:?}, before it could be cancelled; \
                     give the kit a slower call"
                ));
            }
            Msg::Response { id: got, reply } => {
                return Err(format!("got a response for unexpected id {got} ({reply})"));
            }
            Msg::Notification { method: m, params } => {
                chunks.check(&m, &params)?;
            }
            Msg::Closed(note) => {
                return Err(format!("the plug-in closed its stdout while `{method}` ran; {note}"));
            }
        }
    }

    s.notify(methods::CANCEL, &json!({"id": id, "reason": "conformance kit"})).await?;
    let final_by = Instant::now() + CANCEL_FINAL;
    loop {
        match s.next(final_by).await.map_err(|e| format!("after `$/cancelRequest`: {e}"))? {
            None => {
                return Err(format!(
                    "no final response for the cancelled `{method}` (id {id}) within {CANCEL_FINAL:?} of \
                     `$/cancelRequest`; a cancelled request must still get exactly one response"
                ));
            }
            Some(Msg::Response { id: got, reply }) if got == id => match reply {
                Reply::Result(_) => break,
                Reply::Error { code, .. } if code == codes::REQUEST_CANCELLED => break,
                other => {
                    return Err(format!("the cancelled `{method}` ended with {other}; expected its result or -32800"));
                }
            },
            Some(Msg::Response { id: got, reply }) => {
                return Err(format!("got a response for unexpected id {got} ({reply})"));
            }
            // Chunks sent before the plug-in saw the cancel are expected (protocol.md §1 D).
            Some(Msg::Notification { method: m, params }) => {
                chunks.check(&m, &params)?;
            }
            Some(Msg::Closed(note)) => {
                return Err(format!(
                    "the plug-in closed its stdout instead of answering the cancelled `{method}`; {note}"
                ));
            }
        }
    }

    let quiet_until = Instant::now() + QUIET;
    while let Some(msg) = s.next(quiet_until).await.map_err(|e| format!("after the final response: {e}"))? {
        match msg {
            Msg::Response { id: got, reply } if got == id => {
                return Err(format!("a second response for the cancelled id {id}: {reply}"));
            }
            Msg::Response { id: got, reply } => {
                return Err(format!("got a response for unexpected id {got} ({reply})"));
            }
            Msg::Notification { method: m, params } => {
                if m == methods::STREAM && params.get("id") == Some(&id) {
                    return Err(format!("`$/stream` for id {id} after its final response: {}", preview_value(&params)));
                }
            }
            // EOF after the final response is not this case's concern.
            Msg::Closed(_) => break,
        }
    }
    Ok(())
}

/// Case 10: `shutdown` → `null`; a later request → `-32010` (or the process is gone); EOF → exit 0
/// within 3 s.
pub(crate) async fn shutdown(s: &mut Session, cmd: &PluginCommand) -> Result<(), String> {
    prelude(s, cmd).await?;
    let reply = s.call(methods::SHUTDOWN, &json!({}), REPLY).await?;
    if reply != Reply::Result(Value::Null) {
        return Err(format!("`shutdown` answered {reply}; expected result null"));
    }
    // `$/ping` may still be answered after shutdown; any other request must be refused.
    match s.request(methods::HEALTH, &json!({})).await {
        Ok(id) => match s.response(&id, "`plugin.health` after `shutdown`", REPLY).await {
            Ok(Reply::Error { code, .. }) if code == codes::SHUTTING_DOWN => {}
            Ok(other) => {
                return Err(format!("`plugin.health` after `shutdown` got {other}; expected error -32010"));
            }
            Err(_) if s.has_exited() => {}
            Err(e) => return Err(e),
        },
        Err(_) if s.has_exited() => {}
        Err(e) => return Err(e),
    }
    s.close_stdin();
    let status = s.wait_exit(EXIT).await.map_err(|e| format!("after `shutdown` and stdin EOF the plug-in is {e}"))?;
    if status.code() != Some(0) {
        return Err(format!(
            "after `shutdown` and stdin EOF the plug-in exited with {}; expected code 0 (stderr: {:?})",
            describe_status(status),
            s.stderr_snippet()
        ));
    }
    Ok(())
}

/// Case 11: stdin EOF without `shutdown` → the plug-in exits (any code; 1 per spec) within 3 s.
pub(crate) async fn exit_on_eof(s: &mut Session, cmd: &PluginCommand) -> Result<(), String> {
    prelude(s, cmd).await?;
    s.close_stdin();
    s.wait_exit(EXIT)
        .await
        .map(drop)
        .map_err(|e| format!("after stdin EOF (without `shutdown`) the plug-in is {e}; it must exit on EOF"))
}

/// Case 12: the plug-in's parent dies while its stdin stays open → it exits within 3 s.
pub(crate) async fn exit_when_parent_dies(s: &mut Session, cmd: &PluginCommand) -> Result<(), String> {
    let line = s.next_raw_line(STARTUP).await.map_err(|e| format!("the parent shell printed no pid: {e}"))?;
    let pid: i32 = std::str::from_utf8(&line)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("the parent shell's first line is not a pid: {}", preview_bytes(&line)))?;
    let stat = proc_stat(pid)
        .filter(|st| st.state != 'Z')
        .ok_or_else(|| format!("the plug-in (pid {pid}) exited at once; its stderr: {:?}", s.stderr_snippet()))?;
    s.set_orphan(pid, stat.start_time);
    // The handshake proves its startup is over (the SDK records its parent pid at startup).
    prelude(s, cmd).await?;
    ping(s, "before its parent died").await?;

    let parent = s.pid();
    s.kill_parent_shell().await?;
    let until = Instant::now() + EXIT;
    loop {
        match proc_stat(pid) {
            None => return Ok(()),
            Some(st) if st.state == 'Z' || st.start_time != stat.start_time => return Ok(()),
            Some(_) => {}
        }
        if Instant::now() >= until {
            return Err(format!(
                "the plug-in (pid {pid}) still runs {EXIT:?} after its parent (pid {parent}) died, with its stdin \
                 still open; it must notice parent death (getppid changes) and exit"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn good() -> Value {
        json!({
            "protocolVersion": 1,
            "plugin": {"name": "p", "version": "1.0.0"},
            "methods": {"a.b": {"timeoutMs": 500}},
            "capabilities": {},
            "limits": {"maxMessageBytes": 65536, "maxConcurrentRequests": 4},
        })
    }

    #[test]
    fn accepts_a_good_initialize_result_and_reads_the_cap() {
        assert_eq!(check_initialize_result(&good()).unwrap().max_message_bytes, 65536);
        let mut no_limits = good();
        no_limits.as_object_mut().unwrap().remove("limits");
        assert_eq!(check_initialize_result(&no_limits).unwrap().max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES);
    }

    #[test]
    fn rejects_bad_initialize_results() {
        let cases: [(&str, Value); 6] = [
            ("protocolVersion", json!(2)),
            ("plugin", json!({"name": "p"})),
            ("methods", json!([])),
            ("capabilities", Value::Null),
            ("limits", json!({"maxMessageBytes": 0})),
            ("limits", json!({"maxMessageBytes": DEFAULT_MAX_MESSAGE_BYTES + 1})),
        ];
        for (key, value) in cases {
            let mut v = good();
            v[key] = value;
            let err = check_initialize_result(&v).err().unwrap();
            assert!(err.contains("initialize"), "{err}");
        }
    }

    #[test]
    fn stream_seq_must_count_from_zero() {
        let mut seq = StreamSeq { id: json!(4), next: 0 };
        assert!(seq.check("$/stream", &json!({"id": 4, "seq": 0, "data": 1})).unwrap());
        assert!(!seq.check("$/stream", &json!({"id": 5, "seq": 9, "data": 1})).unwrap());
        assert!(seq.check("$/stream", &json!({"id": 4, "seq": 2, "data": 1})).is_err());
    }
}
