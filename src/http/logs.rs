//! `GET /admin/plugins/{name}/logs` and `GET /admin/logs`: plug-in logs as Server-Sent Events
//! (or, with `Accept: application/json`, the recent lines as a JSON array).
//!
//! # Wire format
//! ```text
//! : bkg log stream                      (a comment, sent at once so clients see the stream open)
//! id: 42                                (per plug-in stream: the line's sequence number)
//! event: log
//! data: {"seq":42,"plugin":"llm","ts":"…","level":"info","msg":"…","stream":"stderr"}
//!
//! event: gap
//! data: {"plugin":"llm","missed":17}    (lines lost to ring overflow or to this client lagging)
//!
//! : keep-alive                          (after 15 s without events)
//! ```
//! On the merged stream the `id:` is a cursor with the position of *every* plug-in,
//! `apikeys:12,llm:40` (sorted by name; a plug-in that is absent is at 0). It is the position
//! just after that event, so `Last-Event-ID` resumes the merged stream exactly: no duplicates,
//! no lines skipped. The per-plug-in stream accepts a cursor too (it uses its own entry).
//!
//! # Query
//! `tail=N` (default 100, at most 5000: backlog sent first), `after=<id>` (like
//! `Last-Event-ID`; the header wins), `level=warn` (minimum level), `q=text` (case-sensitive
//! substring of the message). Unknown parameters and bad values are 400.
//!
//! # Why not `axum::response::Sse`
//! The body is framed here: every chunk carries as many events as are ready (up to
//! [`CHUNK_EVENTS`] or [`CHUNK_BYTES`]), so a burst of lines costs one write per client instead
//! of one per line, which is what bounds daemon CPU when 1,000 clients follow one plug-in.
//! Keep-alive and shutdown are handled in the same loop.
//!
//! Architecture Invariant: a stream never blocks the plug-in or other clients. It reads a
//! bounded broadcast; when it falls behind (`Lagged`) it re-reads what it missed from the ring
//! and announces only what the ring no longer has as a `gap`. The stream ends when the daemon's
//! graceful shutdown token is cancelled (axum#2673: open streams would otherwise hold the
//! graceful shutdown forever).

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::error::ApiError;
use super::guard::Caller;
use super::plugins::parse_name;
use crate::logs::{Level, LogHub, LogLine, PluginLog, RING_MAX_LINES};
use crate::metrics::SseClientGuard;

/// Backlog lines sent when the client gives no `tail`.
pub(super) const DEFAULT_TAIL: usize = 100;
/// Largest `tail` (the ring's size).
pub(super) const MAX_TAIL: usize = RING_MAX_LINES;
/// Longest `q` filter.
const MAX_QUERY_BYTES: usize = 1024;
/// A comment is sent after this long without events, so proxies and clients keep the
/// connection and notice a dead one.
pub(super) const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// At most this many events go into one body chunk.
const CHUNK_EVENTS: usize = 512;
/// A chunk is closed once it is this large.
const CHUNK_BYTES: usize = 64 * 1024;

/// Query string of both routes. Every value is taken as text and parsed by hand so that a bad
/// value gets a 400 that names the field.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogQuery {
    tail: Option<String>,
    after: Option<String>,
    level: Option<String>,
    q: Option<String>,
}

/// Which lines a client wants.
#[derive(Debug, Clone, Default)]
struct Filter {
    min_level: Option<Level>,
    contains: Option<String>,
}

impl Filter {
    fn is_empty(&self) -> bool {
        self.min_level.is_none() && self.contains.is_none()
    }

    fn matches(&self, line: &LogLine) -> bool {
        self.min_level.is_none_or(|min| line.level >= min)
            && self.contains.as_deref().is_none_or(|q| line.msg.contains(q))
    }
}

/// A resume position: a bare sequence number (per plug-in streams) or one per plug-in.
#[derive(Debug, Clone, PartialEq)]
enum Cursor {
    Seq(u64),
    Map(BTreeMap<String, u64>),
}

impl Cursor {
    fn parse(field: &str, text: &str) -> Result<Option<Self>, ApiError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        if let Ok(seq) = text.parse::<u64>() {
            return Ok(Some(Cursor::Seq(seq)));
        }
        let bad = || ApiError::bad_request(field, "expected a sequence number or plugin:seq pairs separated by commas");
        let mut map = BTreeMap::new();
        for pair in text.split(',') {
            let (name, seq) = pair.split_once(':').ok_or_else(bad)?;
            let seq = seq.parse::<u64>().map_err(|_| bad())?;
            let name = crate::config::PluginName::parse(name).map_err(|_| bad())?;
            map.insert(name.as_str().to_owned(), seq);
        }
        Ok(Some(Cursor::Map(map)))
    }
}

/// Parsed request options.
#[derive(Debug)]
struct Options {
    tail: usize,
    after: Option<Cursor>,
    /// Where `after` came from (`Last-Event-ID` or `after`), to name it in errors.
    after_field: &'static str,
    filter: Filter,
    json: bool,
}

impl Options {
    fn parse(query: Result<Query<LogQuery>, QueryRejection>, headers: &HeaderMap) -> Result<Self, ApiError> {
        let Query(query) = query.map_err(|e| ApiError::bad_request("query", e.body_text()))?;
        let tail =
            match query.tail.as_deref() {
                None => DEFAULT_TAIL,
                Some(t) => t.parse::<usize>().ok().filter(|t| *t <= MAX_TAIL).ok_or_else(|| {
                    ApiError::bad_request("tail", format!("expected an integer from 0 to {MAX_TAIL}"))
                })?,
            };
        let min_level = match query.level.as_deref() {
            None | Some("") => None,
            Some(l) => Some(
                Level::parse(l)
                    .ok_or_else(|| ApiError::bad_request("level", "expected trace, debug, info, warn or error"))?,
            ),
        };
        let contains = match query.q {
            Some(q) if q.len() > MAX_QUERY_BYTES => {
                return Err(ApiError::bad_request("q", format!("longer than {MAX_QUERY_BYTES} bytes")));
            }
            Some(q) if !q.is_empty() => Some(q),
            _ => None,
        };
        // A reconnecting EventSource repeats the original URL (with its `after`) and adds the
        // header with where it really got to, so the header wins.
        let header_id = match headers.get("last-event-id") {
            Some(v) => {
                let v = v.to_str().map_err(|_| ApiError::bad_request("Last-Event-ID", "not ASCII"))?;
                Cursor::parse("Last-Event-ID", v)?
            }
            None => None,
        };
        let (after, after_field) = match header_id {
            Some(c) => (Some(c), "Last-Event-ID"),
            None => match query.after.as_deref() {
                Some(a) => (Cursor::parse("after", a)?, "after"),
                None => (None, "after"),
            },
        };
        let json = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("application/json") && !a.contains("text/event-stream"));
        Ok(Options { tail, after, after_field, filter: Filter { min_level, contains }, json })
    }
}

/// One thing to send.
#[derive(Debug, Clone)]
enum Out {
    /// A line, with the merged stream's cursor (`None` on a per plug-in stream: the id is the
    /// line's sequence number).
    Line {
        line: Arc<LogLine>,
        cursor: Option<Box<str>>,
    },
    Gap {
        plugin: Arc<str>,
        missed: u64,
    },
}

/// What a stream follows, and how far it got.
enum Scope {
    /// One plug-in; `last` is the highest sequence number seen (sent or filtered out).
    Plugin { log: Arc<PluginLog>, last: u64 },
    /// Every plug-in; `pos` is the highest sequence number seen per plug-in.
    All { hub: LogHub, pos: BTreeMap<Arc<str>, u64> },
}

/// The state of one client's stream.
struct LogStream {
    scope: Scope,
    live: broadcast::Receiver<Arc<LogLine>>,
    queue: VecDeque<Out>,
    filter: Filter,
    /// The broadcast closed (the plug-in's log is gone): end after the queue.
    closed: bool,
    /// Counts this stream as open in `/metrics` until dropped.
    metrics: Option<SseClientGuard>,
}

/// The position a resuming client claims for a plug-in. A position at or beyond the next
/// sequence number cannot be from this daemon run (sequence numbers restart with the daemon),
/// so the client gets everything the ring still has.
fn resume_from(log: &PluginLog, after: u64) -> u64 {
    if after >= log.next_seq() { 0 } else { after }
}

/// Backlog of one plug-in and a live receiver continuing exactly after it.
struct Opened {
    /// Lines to send, already filtered and cut to `tail`.
    lines: Vec<Arc<LogLine>>,
    gap: u64,
    /// Highest sequence number covered (sent or filtered out).
    last: u64,
    live: broadcast::Receiver<Arc<LogLine>>,
}

/// Subscribes to one plug-in: everything after `after`, or the last `tail` matching lines.
fn open_one(log: &PluginLog, after: Option<u64>, tail: usize, filter: &Filter) -> Opened {
    match after {
        Some(after) => {
            let after = resume_from(log, after);
            let sub = log.subscribe(Some(after), usize::MAX);
            let last = sub.backlog.last().map_or(after, |l| l.seq.max(after));
            let lines = sub.backlog.into_iter().filter(|l| filter.matches(l)).collect();
            Opened { lines, gap: sub.gap, last, live: sub.live }
        }
        None => {
            // At least one line, so that `last` is known exactly (taken under the ring lock).
            let want = if filter.is_empty() { tail.max(1) } else { RING_MAX_LINES };
            let sub = log.subscribe(None, want);
            let last = sub.backlog.last().map_or(0, |l| l.seq);
            let mut lines: Vec<_> = sub.backlog.into_iter().filter(|l| filter.matches(l)).collect();
            lines.drain(..lines.len().saturating_sub(tail));
            Opened { lines, gap: 0, last, live: sub.live }
        }
    }
}

/// Merges per plug-in backlogs by time, keeping each plug-in's own order (sequence order) even
/// if the wall clock stepped back.
fn merge(mut parts: Vec<VecDeque<Arc<LogLine>>>) -> Vec<Arc<LogLine>> {
    let mut out = Vec::with_capacity(parts.iter().map(VecDeque::len).sum());
    loop {
        let next = parts
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.front().map(|l| (i, l)))
            .min_by(|(_, a), (_, b)| a.ts.cmp(&b.ts).then_with(|| a.plugin.cmp(&b.plugin)))
            .map(|(i, _)| i);
        let Some(i) = next else { return out };
        if let Some(line) = parts[i].pop_front() {
            out.push(line);
        }
    }
}

fn format_cursor(pos: &BTreeMap<Arc<str>, u64>) -> Box<str> {
    let mut s = String::with_capacity(pos.len() * 16);
    for (name, seq) in pos.iter().filter(|(_, seq)| **seq > 0) {
        if !s.is_empty() {
            s.push(',');
        }
        let _ = write!(s, "{name}:{seq}");
    }
    s.into_boxed_str()
}

/// Backlog of every plug-in, merged, each line paired with the cursor just after it, plus the
/// gaps and the final positions.
struct MergedBacklog {
    lines: Vec<(Arc<LogLine>, Box<str>)>,
    gaps: Vec<(Arc<str>, u64)>,
    pos: BTreeMap<Arc<str>, u64>,
}

/// Reads every plug-in's ring: after `from` (per plug-in, 0 when absent) when resuming, else
/// the last `tail` matching lines overall. Call after subscribing to the merged broadcast.
fn merged_backlog(hub: &LogHub, from: Option<&BTreeMap<Arc<str>, u64>>, tail: usize, filter: &Filter) -> MergedBacklog {
    let mut logs = hub.all();
    logs.sort_by(|a, b| a.name().cmp(b.name()));
    let mut parts = Vec::with_capacity(logs.len());
    let mut gaps = Vec::new();
    let mut end = BTreeMap::new();
    for log in &logs {
        let name: Arc<str> = Arc::from(log.name());
        let after = from.map(|f| f.get(log.name()).copied().unwrap_or(0));
        // `open_one` applies `tail` per plug-in; the overall cut happens after merging.
        let opened = open_one(log, after, tail, filter);
        if opened.gap > 0 {
            gaps.push((Arc::clone(&name), opened.gap));
        }
        end.insert(name, opened.last);
        parts.push(VecDeque::from(opened.lines));
    }
    let mut merged = merge(parts);
    if from.is_none() {
        merged.drain(..merged.len().saturating_sub(tail));
    }
    // Each line's cursor: plug-ins with lines still to come sit just before their first one,
    // the others are at their end position.
    let mut cur = end.clone();
    for line in merged.iter().rev() {
        cur.insert(Arc::clone(&line.plugin), line.seq - 1);
    }
    let lines = merged
        .into_iter()
        .map(|line| {
            cur.insert(Arc::clone(&line.plugin), line.seq);
            let id = format_cursor(&cur);
            (line, id)
        })
        .collect();
    MergedBacklog { lines, gaps, pos: end }
}

impl LogStream {
    /// A stream of one plug-in.
    fn plugin(log: Arc<PluginLog>, opts: &Options) -> Self {
        let after = opts.after.as_ref().and_then(|c| match c {
            Cursor::Seq(s) => Some(*s),
            Cursor::Map(m) => m.get(log.name()).copied(),
        });
        let opened = open_one(&log, after, opts.tail, &opts.filter);
        let mut queue = VecDeque::with_capacity(opened.lines.len() + 1);
        if opened.gap > 0 {
            queue.push_back(Out::Gap { plugin: Arc::from(log.name()), missed: opened.gap });
        }
        queue.extend(opened.lines.into_iter().map(|line| Out::Line { line, cursor: None }));
        Self {
            scope: Scope::Plugin { log, last: opened.last },
            live: opened.live,
            queue,
            filter: opts.filter.clone(),
            closed: false,
            metrics: None,
        }
    }

    /// The merged stream of every plug-in. `from` is the resume cursor, if any.
    fn all(hub: LogHub, from: Option<BTreeMap<String, u64>>, opts: &Options) -> Self {
        // Subscribe first, then read the rings: a line pushed in between is in both and is
        // dropped from the live side by its position.
        let live = hub.subscribe_all();
        let from: Option<BTreeMap<Arc<str>, u64>> =
            from.map(|m| m.into_iter().map(|(k, v)| (Arc::from(k), v)).collect());
        let backlog = merged_backlog(&hub, from.as_ref(), opts.tail, &opts.filter);
        let mut queue: VecDeque<Out> =
            backlog.gaps.into_iter().map(|(plugin, missed)| Out::Gap { plugin, missed }).collect();
        queue.extend(backlog.lines.into_iter().map(|(line, id)| Out::Line { line, cursor: Some(id) }));
        Self {
            scope: Scope::All { hub, pos: backlog.pos },
            live,
            queue,
            filter: opts.filter.clone(),
            closed: false,
            metrics: None,
        }
    }

    /// Handles one line from the live broadcast: skips what was already covered, then filters.
    fn accept(&mut self, line: Arc<LogLine>) {
        match &mut self.scope {
            Scope::Plugin { last, .. } => {
                if line.seq <= *last {
                    return;
                }
                *last = line.seq;
                if self.filter.matches(&line) {
                    self.queue.push_back(Out::Line { line, cursor: None });
                }
            }
            Scope::All { pos, .. } => {
                let seen = match pos.get_mut(&*line.plugin) {
                    Some(p) => p,
                    None => pos.entry(Arc::clone(&line.plugin)).or_insert(0),
                };
                if line.seq <= *seen {
                    return;
                }
                *seen = line.seq;
                if self.filter.matches(&line) {
                    let cursor = Some(format_cursor(pos));
                    self.queue.push_back(Out::Line { line, cursor });
                }
            }
        }
    }

    /// The broadcast overtook this client: re-subscribe and re-read from the ring what it
    /// missed. Only lines the ring no longer holds are reported as a gap.
    fn resync(&mut self) {
        match &mut self.scope {
            Scope::Plugin { log, last } => {
                let sub = log.subscribe(Some(*last), usize::MAX);
                self.live = sub.live;
                if sub.gap > 0 {
                    self.queue.push_back(Out::Gap { plugin: Arc::from(log.name()), missed: sub.gap });
                }
                for line in sub.backlog {
                    *last = (*last).max(line.seq);
                    if self.filter.matches(&line) {
                        self.queue.push_back(Out::Line { line, cursor: None });
                    }
                }
            }
            Scope::All { hub, pos } => {
                self.live = hub.subscribe_all();
                let backlog = merged_backlog(hub, Some(pos), usize::MAX, &self.filter);
                self.queue.extend(backlog.gaps.into_iter().map(|(plugin, missed)| Out::Gap { plugin, missed }));
                self.queue.extend(backlog.lines.into_iter().map(|(line, id)| Out::Line { line, cursor: Some(id) }));
                for (name, seq) in backlog.pos {
                    let p = pos.entry(name).or_insert(0);
                    *p = (*p).max(seq);
                }
            }
        }
    }

    /// Takes everything the broadcast holds right now, without waiting.
    fn drain_live(&mut self) {
        while self.queue.len() < CHUNK_EVENTS {
            match self.live.try_recv() {
                Ok(line) => self.accept(line),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Lagged(_)) => self.resync(),
                Err(TryRecvError::Closed) => {
                    self.closed = true;
                    return;
                }
            }
        }
    }

    /// Waits for the next event(s). `None` ends the stream (closed, or daemon shutting down).
    /// Never returns an empty chunk: to the client, silence and an empty write look the same,
    /// and some servers treat an empty chunk as the end of the body.
    async fn next_chunk(&mut self, shutdown: &CancellationToken) -> Option<Bytes> {
        // Keep-alive counts from the last byte sent, not the last line received: a filter that
        // drops every line must not starve the connection of traffic.
        let keep_alive_at = tokio::time::Instant::now() + KEEP_ALIVE;
        while self.queue.is_empty() {
            if self.closed || shutdown.is_cancelled() {
                return None;
            }
            // Biased: a daemon going down ends the stream even while lines keep coming.
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return None,
                received = tokio::time::timeout_at(keep_alive_at, self.live.recv()) => match received {
                    Err(_elapsed) => return Some(Bytes::from_static(b": keep-alive\n\n")),
                    Ok(Ok(line)) => self.accept(line),
                    Ok(Err(RecvError::Lagged(_))) => self.resync(),
                    Ok(Err(RecvError::Closed)) => self.closed = true,
                },
            }
            if !self.closed {
                self.drain_live();
            }
        }
        if shutdown.is_cancelled() {
            return None;
        }
        let mut buf = Vec::with_capacity(1024);
        let mut events = 0;
        while events < CHUNK_EVENTS && buf.len() < CHUNK_BYTES {
            let Some(out) = self.queue.pop_front() else { break };
            self.write(&out, &mut buf);
            events += 1;
        }
        Some(Bytes::from(buf))
    }

    /// Formats one event. Serialised JSON never contains a raw newline, so `data:` is one line;
    /// ids are digits, plug-in names (`[a-z0-9-]`), `:` and `,`.
    fn write(&self, out: &Out, buf: &mut Vec<u8>) {
        use std::io::Write as _;
        match out {
            Out::Line { line, cursor } => {
                let _ = match cursor {
                    Some(c) => write!(buf, "id: {c}\nevent: log\ndata: "),
                    None => write!(buf, "id: {}\nevent: log\ndata: ", line.seq),
                };
                if serde_json::to_writer(&mut *buf, &**line).is_err() {
                    buf.extend_from_slice(b"{}");
                }
                buf.extend_from_slice(b"\n\n");
                if let Some(m) = &self.metrics {
                    m.metrics().sse_event();
                }
            }
            Out::Gap { plugin, missed } => {
                let data = serde_json::json!({ "plugin": &**plugin, "missed": missed });
                let _ = write!(buf, "event: gap\ndata: {data}\n\n");
                if let Some(m) = &self.metrics {
                    m.metrics().sse_gap(*missed);
                }
            }
        }
    }

    /// The HTTP response: an unbuffered `text/event-stream` body.
    fn into_response(mut self, state: &AppState) -> Response {
        self.metrics = Some(state.metrics().sse_client());
        let shutdown = state.shutdown().graceful.clone();
        let opening =
            futures_util::stream::once(async { Ok::<_, Infallible>(Bytes::from_static(b": bkg log stream\n\n")) });
        let events = futures_util::stream::unfold((self, shutdown), |(mut stream, shutdown)| async move {
            let chunk = stream.next_chunk(&shutdown).await?;
            Some((Ok::<_, Infallible>(chunk), (stream, shutdown)))
        });
        let body = Body::from_stream(futures_util::StreamExt::chain(opening, events));
        let mut response = body.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        // Tells nginx-style proxies not to buffer the stream.
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        response
    }
}

/// `GET /admin/plugins/{name}/logs`.
pub(super) async fn plugin(
    _caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<LogQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    parse_name(&name)?;
    let opts = Options::parse(query, &headers)?;
    // A removed plug-in's log is still readable (why it went away is often in there).
    let log = match state.logs().get(&name) {
        Some(log) => log,
        None if state.supervisor().snapshot().get(&name).is_some() => state.logs().plugin(&name),
        None => return Err(ApiError::unknown_plugin(&name)),
    };
    if opts.json {
        let after = opts.after.as_ref().and_then(|c| match c {
            Cursor::Seq(s) => Some(*s),
            Cursor::Map(m) => m.get(&name).copied(),
        });
        let opened = open_one(&log, after, opts.tail, &opts.filter);
        return Ok(Json(opened.lines).into_response());
    }
    Ok(LogStream::plugin(log, &opts).into_response(&state))
}

/// `GET /admin/logs`.
pub(super) async fn all(
    _caller: Caller,
    State(state): State<AppState>,
    query: Result<Query<LogQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut opts = Options::parse(query, &headers)?;
    let from = match opts.after.take() {
        None => None,
        Some(Cursor::Map(m)) => Some(m),
        Some(Cursor::Seq(_)) => {
            return Err(ApiError::bad_request(
                opts.after_field,
                "the merged stream resumes from plugin:seq pairs (the id it sent), not a bare number",
            ));
        }
    };
    if opts.json {
        let from = from.map(|m| m.into_iter().map(|(k, v)| (Arc::from(k), v)).collect());
        let backlog = merged_backlog(state.logs(), from.as_ref(), opts.tail, &opts.filter);
        let lines: Vec<_> = backlog.lines.into_iter().map(|(line, _)| line).collect();
        return Ok(Json(lines).into_response());
    }
    Ok(LogStream::all(state.logs().clone(), from, &opts).into_response(&state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::LogSink;

    fn opts(tail: usize, after: Option<Cursor>, filter: Filter) -> Options {
        Options { tail, after, after_field: "after", filter, json: false }
    }

    fn log_n(sink: &mut LogSink, from: usize, n: usize) {
        for i in from..from + n {
            sink.line(format!("line {i}").as_bytes(), false);
        }
    }

    /// Everything queued now, plus what the broadcast holds, without waiting.
    fn ready(stream: &mut LogStream) -> Vec<Out> {
        stream.drain_live();
        let mut all: Vec<_> = stream.queue.drain(..).collect();
        while !stream.closed {
            stream.drain_live();
            if stream.queue.is_empty() {
                break;
            }
            all.extend(stream.queue.drain(..));
        }
        all
    }

    fn seqs(outs: &[Out]) -> Vec<u64> {
        outs.iter()
            .filter_map(|o| match o {
                Out::Line { line, .. } => Some(line.seq),
                Out::Gap { .. } => None,
            })
            .collect()
    }

    fn gaps(outs: &[Out]) -> Vec<u64> {
        outs.iter()
            .filter_map(|o| match o {
                Out::Gap { missed, .. } => Some(*missed),
                Out::Line { .. } => None,
            })
            .collect()
    }

    #[test]
    fn tail_then_live_without_gap_or_duplicate() {
        let hub = LogHub::new();
        let log = hub.plugin("p");
        let mut sink = LogSink::new(Arc::clone(&log), "stderr");
        log_n(&mut sink, 0, 10);
        let mut s = LogStream::plugin(Arc::clone(&log), &opts(3, None, Filter::default()));
        log_n(&mut sink, 10, 2);
        assert_eq!(seqs(&ready(&mut s)), vec![8, 9, 10, 11, 12]);
    }

    #[test]
    fn tail_zero_sends_only_new_lines() {
        let hub = LogHub::new();
        let log = hub.plugin("p");
        let mut sink = LogSink::new(Arc::clone(&log), "stderr");
        log_n(&mut sink, 0, 5);
        let mut s = LogStream::plugin(Arc::clone(&log), &opts(0, None, Filter::default()));
        assert!(ready(&mut s).is_empty());
        log_n(&mut sink, 5, 1);
        assert_eq!(seqs(&ready(&mut s)), vec![6]);
    }

    #[test]
    fn resume_skips_what_was_seen_and_reports_ring_overflow() {
        let hub = LogHub::new();
        let log = hub.plugin("p");
        let mut sink = LogSink::new(Arc::clone(&log), "stderr");
        log_n(&mut sink, 0, 20);
        let mut s = LogStream::plugin(Arc::clone(&log), &opts(100, Some(Cursor::Seq(15)), Filter::default()));
        assert_eq!(seqs(&ready(&mut s)), vec![16, 17, 18, 19, 20]);
        // The ring holds RING_MAX_LINES; resuming from before its start announces the loss.
        log_n(&mut sink, 20, RING_MAX_LINES);
        let mut s = LogStream::plugin(Arc::clone(&log), &opts(100, Some(Cursor::Seq(10)), Filter::default()));
        let out = ready(&mut s);
        assert_eq!(gaps(&out), vec![20 - 10]);
        assert_eq!(seqs(&out).first(), Some(&21));
        assert_eq!(seqs(&out).len(), RING_MAX_LINES);
    }

    #[test]
    fn a_resume_id_from_a_previous_run_replays_the_ring() {
        let hub = LogHub::new();
        let log = hub.plugin("p");
        let mut sink = LogSink::new(Arc::clone(&log), "stderr");
        log_n(&mut sink, 0, 3);
        let mut s = LogStream::plugin(Arc::clone(&log), &opts(100, Some(Cursor::Seq(999)), Filter::default()));
        assert_eq!(seqs(&ready(&mut s)), vec![1, 2, 3]);
    }

    #[test]
    fn a_lagging_client_recovers_from_the_ring_then_gets_a_gap() {
        let hub = LogHub::new();
        let log = hub.plugin("p");
        let mut sink = LogSink::new(Arc::clone(&log), "stderr");
        let mut s = LogStream::plugin(Arc::clone(&log), &opts(0, None, Filter::default()));
        // More than the broadcast holds but less than the ring: nothing is lost.
        log_n(&mut sink, 0, 4_500);
        let out = ready(&mut s);
        assert!(gaps(&out).is_empty());
        assert_eq!(seqs(&out), (1..=4_500).collect::<Vec<_>>());
        // More than the ring holds: the oldest are announced as a gap, the rest arrive in order.
        log_n(&mut sink, 4_500, RING_MAX_LINES + 100);
        let out = ready(&mut s);
        assert_eq!(gaps(&out), vec![100]);
        let got = seqs(&out);
        assert_eq!(got.first(), Some(&(4_500 + 101)));
        assert!(got.windows(2).all(|w| w[1] == w[0] + 1));
        assert_eq!(got.last(), Some(&(4_500 + RING_MAX_LINES as u64 + 100)));
    }

    #[test]
    fn filters_apply_to_backlog_and_live_lines() {
        let hub = LogHub::new();
        let log = hub.plugin("p");
        let mut sink = LogSink::new(Arc::clone(&log), "stderr");
        sink.line(b"[WARN] disk low", false);
        sink.line(b"[INFO] disk fine", false);
        sink.line(b"[ERROR] disk gone", false);
        sink.line(b"[ERROR] net gone", false);
        let filter = Filter { min_level: Some(Level::Warn), contains: Some("disk".into()) };
        let mut s = LogStream::plugin(Arc::clone(&log), &opts(1, None, filter.clone()));
        // tail counts matching lines: the last matching one, not the last line.
        assert_eq!(seqs(&ready(&mut s)), vec![3]);
        sink.line(b"[WARN] disk again", false);
        sink.line(b"[DEBUG] disk chatter", false);
        assert_eq!(seqs(&ready(&mut s)), vec![5]);
    }

    #[test]
    fn merged_cursor_resumes_exactly() {
        let hub = LogHub::new();
        let (a, b) = (hub.plugin("a"), hub.plugin("b"));
        let (mut sa, mut sb) = (LogSink::new(Arc::clone(&a), "stderr"), LogSink::new(Arc::clone(&b), "stderr"));
        log_n(&mut sa, 0, 3);
        log_n(&mut sb, 0, 2);
        let mut s = LogStream::all(hub.clone(), None, &opts(2, None, Filter::default()));
        let backlog = ready(&mut s);
        assert_eq!(backlog.len(), 2);
        log_n(&mut sa, 3, 1);
        log_n(&mut sb, 2, 1);
        let live = ready(&mut s);
        let ids: Vec<String> = backlog
            .iter()
            .chain(&live)
            .filter_map(|o| match o {
                Out::Line { cursor, .. } => cursor.as_deref().map(str::to_owned),
                Out::Gap { .. } => None,
            })
            .collect();
        assert_eq!(ids.last().map(String::as_str), Some("a:4,b:3"));
        // Resuming from each id delivers exactly what came after it in this stream.
        let everything: Vec<(String, u64)> = backlog
            .iter()
            .chain(&live)
            .filter_map(|o| match o {
                Out::Line { line, .. } => Some((line.plugin.to_string(), line.seq)),
                Out::Gap { .. } => None,
            })
            .collect();
        for (i, id) in ids.iter().enumerate() {
            let Some(Cursor::Map(from)) = Cursor::parse("after", id).unwrap() else { panic!("{id}") };
            let mut r = LogStream::all(hub.clone(), Some(from), &opts(100, None, Filter::default()));
            let rest: Vec<(String, u64)> = ready(&mut r)
                .iter()
                .filter_map(|o| match o {
                    Out::Line { line, .. } => Some((line.plugin.to_string(), line.seq)),
                    Out::Gap { .. } => None,
                })
                .collect();
            // No duplicate and nothing lost; across plug-ins the backlog is ordered by time,
            // which may interleave lines of the same millisecond differently.
            let (mut rest, mut expected) = (rest, everything[i + 1..].to_vec());
            rest.sort();
            expected.sort();
            assert_eq!(rest, expected, "resume from {id}");
        }
    }

    #[test]
    fn merged_backlog_keeps_each_plugins_order() {
        let mk = |plugin: &str, seq: u64, ts: &str| {
            Arc::new(LogLine {
                seq,
                plugin: Arc::from(plugin),
                ts: ts.into(),
                level: Level::Info,
                msg: String::new(),
                fields: None,
                stream: "stderr",
                raw: true,
                truncated: false,
            })
        };
        // b's clock stepped back between its two lines; b:1 must still come before b:2.
        let a = VecDeque::from(vec![mk("a", 1, "t2"), mk("a", 2, "t4")]);
        let b = VecDeque::from(vec![mk("b", 1, "t3"), mk("b", 2, "t1")]);
        let order: Vec<_> = merge(vec![a, b]).iter().map(|l| format!("{}{}", l.plugin, l.seq)).collect();
        assert_eq!(order, vec!["a1", "b1", "b2", "a2"]);
    }

    #[test]
    fn cursors_parse_and_reject_garbage() {
        assert_eq!(Cursor::parse("after", "42").unwrap(), Some(Cursor::Seq(42)));
        assert_eq!(Cursor::parse("after", " ").unwrap(), None);
        let Some(Cursor::Map(m)) = Cursor::parse("after", "llm:4,apikeys:9").unwrap() else { panic!() };
        assert_eq!(m.get("llm"), Some(&4));
        for bad in ["-1", "llm", "llm:x", "../x:1", "a:1,", "LLM:1"] {
            assert!(Cursor::parse("after", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn options_validate_every_field() {
        let parse = |q: &str, headers: &[(&str, &str)]| {
            let uri: axum::http::Uri = format!("/x?{q}").parse().unwrap();
            let query = Query::<LogQuery>::try_from_uri(&uri);
            let mut map = HeaderMap::new();
            for (k, v) in headers {
                map.insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
            }
            Options::parse(query, &map)
        };
        let o = parse("", &[]).unwrap();
        assert_eq!((o.tail, o.json, o.after.is_none(), o.filter.is_empty()), (DEFAULT_TAIL, false, true, true));
        let o = parse("tail=5&level=WARNING&q=disk&after=7", &[("last-event-id", "9")]).unwrap();
        assert_eq!((o.tail, o.filter.min_level, o.after), (5, Some(Level::Warn), Some(Cursor::Seq(9))));
        assert!(parse("", &[("accept", "application/json")]).unwrap().json);
        assert!(!parse("", &[("accept", "text/event-stream, application/json")]).unwrap().json);
        for bad in ["tail=-1", "tail=5001", "tail=x", "level=loud", "after=x:y", "tial=3"] {
            assert!(matches!(parse(bad, &[]), Err(ApiError::BadRequest { .. })), "{bad}");
        }
        let long = format!("q={}", "x".repeat(MAX_QUERY_BYTES + 1));
        assert!(parse(&long, &[]).is_err());
    }

    #[tokio::test]
    async fn chunks_are_valid_sse_and_end_on_shutdown() {
        let hub = LogHub::new();
        let log = hub.plugin("p");
        let mut sink = LogSink::new(Arc::clone(&log), "stderr");
        log_n(&mut sink, 0, 2);
        sink.line(b"[WARN] x", false);
        let mut s = LogStream::plugin(Arc::clone(&log), &opts(100, Some(Cursor::Seq(0)), Filter::default()));
        let token = CancellationToken::new();
        let chunk = s.next_chunk(&token).await.unwrap();
        let text = std::str::from_utf8(&chunk).unwrap();
        let events: Vec<&str> = text.split_terminator("\n\n").collect();
        assert_eq!(events.len(), 3, "{text}");
        assert!(events[0].starts_with("id: 1\nevent: log\ndata: {"), "{text}");
        let data: serde_json::Value = serde_json::from_str(events[2].split_once("data: ").unwrap().1).unwrap();
        assert_eq!(
            (data["seq"].as_u64(), data["level"].as_str(), data["msg"].as_str()),
            (Some(3), Some("warn"), Some("x"))
        );
        token.cancel();
        assert!(s.next_chunk(&token).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_streams_send_keep_alive_comments() {
        let hub = LogHub::new();
        let mut s = LogStream::plugin(hub.plugin("p"), &opts(0, None, Filter::default()));
        let token = CancellationToken::new();
        let chunk = s.next_chunk(&token).await.unwrap();
        assert_eq!(&chunk[..], b": keep-alive\n\n");
    }
}
