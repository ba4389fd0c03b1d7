//! Plug-in logs: stderr bytes → parsed [`LogLine`]s → a bounded ring per plug-in plus a live
//! broadcast for subscribers (SSE).
//!
//! Architecture Invariant: pushing a line never waits. The ring is bounded in lines *and* bytes,
//! subscribers that fall behind are told how many lines they lost (broadcast `Lagged`), and the
//! child writing the lines is never blocked by a slow reader.

mod parse;
mod ring;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use std::time::{Instant, SystemTime};

use serde::Serialize;
use tokio::sync::broadcast;

pub use parse::{Level, Parser};
use ring::Ring;

/// Lines kept per plug-in.
pub const RING_MAX_LINES: usize = 5_000;
/// Bytes of message text kept per plug-in.
pub const RING_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Longest stderr line kept whole; longer lines are split and flagged `truncated`.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Live subscribers may fall this many lines behind before they are told they lagged.
const BROADCAST_CAPACITY: usize = 4_096;
/// Token bucket per plug-in (protocol.md §2.11): the default rate (a registry entry may set its
/// own, `log_lines_per_s`) and the burst, in seconds of the rate.
const RATE_PER_SEC: f64 = crate::config::DEFAULT_LOG_LINES_PER_S as f64;
const BURST_SECONDS: f64 = 5.0;
const RATE_BURST: f64 = RATE_PER_SEC * BURST_SECONDS;

/// One parsed log line.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    /// Per plug-in sequence number, strictly increasing across restarts.
    pub seq: u64,
    pub plugin: Arc<str>,
    /// RFC 3339 time the daemon received the line.
    pub ts: String,
    pub level: Level,
    pub msg: String,
    /// Structured fields of a JSON line, other than level, message and time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<serde_json::Value>,
    /// Which pipe the line came from.
    pub stream: &'static str,
    /// The line was not JSON.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub raw: bool,
    /// The line was longer than [`MAX_LINE_BYTES`] and this is one piece of it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// Counters for one plug-in's log stream.
#[derive(Debug, Default)]
pub struct LogCounters {
    pub lines: AtomicU64,
    pub dropped: AtomicU64,
    pub bytes: AtomicU64,
}

/// The log of one plug-in: ring, live broadcast and counters. Outlives process restarts.
pub struct PluginLog {
    name: Arc<str>,
    ring: Mutex<Ring>,
    live: broadcast::Sender<Arc<LogLine>>,
    all: broadcast::Sender<Arc<LogLine>>,
    counters: LogCounters,
    limiter: Mutex<TokenBucket>,
}

/// A consistent view for a new subscriber: the backlog and a receiver that continues exactly
/// after it (no gap, no duplicate).
pub struct Subscription {
    pub backlog: Vec<Arc<LogLine>>,
    /// Lines that fell out of the ring between what the client asked for and the backlog.
    pub gap: u64,
    pub live: broadcast::Receiver<Arc<LogLine>>,
}

impl PluginLog {
    fn new(name: &str, all: broadcast::Sender<Arc<LogLine>>) -> Self {
        Self {
            name: Arc::from(name),
            ring: Mutex::new(Ring::new(RING_MAX_LINES, RING_MAX_BYTES)),
            live: broadcast::channel(BROADCAST_CAPACITY).0,
            all,
            counters: LogCounters::default(),
            limiter: Mutex::new(TokenBucket::new(RATE_PER_SEC, RATE_BURST)),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn counters(&self) -> &LogCounters {
        &self.counters
    }

    /// Admits one line through the rate limiter; returns how many lines were dropped since the
    /// last admitted one (to be announced), or `None` when this line must be dropped.
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut bucket = self.limiter.lock();
        if bucket.take(now) {
            Some(std::mem::take(&mut bucket.dropped_since_admit))
        } else {
            bucket.dropped_since_admit += 1;
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Stores a parsed line and publishes it. Never waits.
    pub fn push(&self, mut line: LogLine) -> Arc<LogLine> {
        self.counters.lines.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes.fetch_add(line.msg.len() as u64, Ordering::Relaxed);
        let mut ring = self.ring.lock();
        line.seq = ring.next_seq();
        let line = Arc::new(line);
        ring.push(Arc::clone(&line));
        // Sending under the ring lock keeps ring order and broadcast order identical, which is
        // what makes `subscribe` gap-free. `send` never blocks; with no receiver it just fails.
        let _ = self.live.send(Arc::clone(&line));
        let _ = self.all.send(Arc::clone(&line));
        line
    }

    /// The most recent `n` lines.
    pub fn tail(&self, n: usize) -> Vec<Arc<LogLine>> {
        self.ring.lock().tail(n)
    }

    /// Subscribes; the backlog holds lines with `seq > after` (at most `tail` of them).
    pub fn subscribe(&self, after: Option<u64>, tail: usize) -> Subscription {
        let ring = self.ring.lock();
        let live = self.live.subscribe();
        let (backlog, gap) = ring.after(after, tail);
        Subscription { backlog, gap, live }
    }

    /// Sets the rate limit: `lines_per_s`, with a burst of 5 s worth.
    pub fn set_rate(&self, lines_per_s: u32) {
        let mut bucket = self.limiter.lock();
        bucket.rate = f64::from(lines_per_s);
        bucket.burst = bucket.rate * BURST_SECONDS;
        bucket.tokens = bucket.tokens.min(bucket.burst);
    }

    /// Sequence number the next line will get.
    pub fn next_seq(&self) -> u64 {
        self.ring.lock().next_seq()
    }
}

/// All plug-in logs, by name, plus the merged live stream.
#[derive(Clone)]
pub struct LogHub(Arc<HubInner>);

struct HubInner {
    logs: RwLock<HashMap<String, Arc<PluginLog>>>,
    all: broadcast::Sender<Arc<LogLine>>,
}

impl Default for LogHub {
    fn default() -> Self {
        Self::new()
    }
}

impl LogHub {
    pub fn new() -> Self {
        Self(Arc::new(HubInner { logs: RwLock::new(HashMap::new()), all: broadcast::channel(BROADCAST_CAPACITY).0 }))
    }

    /// The log of `name`, created on first use.
    pub fn plugin(&self, name: &str) -> Arc<PluginLog> {
        if let Some(log) = self.0.logs.read().get(name) {
            return Arc::clone(log);
        }
        let mut logs = self.0.logs.write();
        Arc::clone(logs.entry(name.to_owned()).or_insert_with(|| Arc::new(PluginLog::new(name, self.0.all.clone()))))
    }

    /// The log of `name` if it exists.
    pub fn get(&self, name: &str) -> Option<Arc<PluginLog>> {
        self.0.logs.read().get(name).cloned()
    }

    /// Every plug-in log.
    pub fn all(&self) -> Vec<Arc<PluginLog>> {
        self.0.logs.read().values().cloned().collect()
    }

    /// The merged live stream of every plug-in.
    pub fn subscribe_all(&self) -> broadcast::Receiver<Arc<LogLine>> {
        self.0.all.subscribe()
    }
}

/// Turns raw pieces of one pipe (stderr, or a plain process's stdout) into lines in its
/// [`PluginLog`], tagged with the pipe's name.
pub struct LogSink {
    log: Arc<PluginLog>,
    parser: Parser,
    stream: &'static str,
}

impl LogSink {
    /// `stream`: `"stderr"` or `"stdout"`.
    pub fn new(log: Arc<PluginLog>, stream: &'static str) -> Self {
        Self { log, parser: Parser::default(), stream }
    }

    /// Handles one line (or one piece of an over-long line). Never waits.
    pub fn line(&mut self, bytes: &[u8], truncated: bool) {
        let Some(dropped) = self.log.admit(Instant::now()) else { return };
        if dropped > 0 {
            self.log.push(self.synthetic(Level::Warn, format!("dropped {dropped} log lines (rate limit)")));
        }
        let parsed = self.parser.parse(bytes);
        let line = LogLine {
            seq: 0,
            plugin: Arc::clone(&self.log.name),
            ts: now_rfc3339(),
            level: parsed.level,
            msg: parsed.msg,
            fields: parsed.fields,
            stream: self.stream,
            raw: parsed.raw,
            truncated,
        };
        let line = self.log.push(line);
        reemit(&line);
    }

    /// Records a line that the daemon itself writes into this plug-in's log (lifecycle events).
    pub fn note(log: &PluginLog, level: Level, msg: impl Into<String>) {
        let line = LogLine {
            seq: 0,
            plugin: Arc::clone(&log.name),
            ts: now_rfc3339(),
            level,
            msg: msg.into(),
            fields: None,
            stream: "daemon",
            raw: false,
            truncated: false,
        };
        log.push(line);
    }

    fn synthetic(&self, level: Level, msg: String) -> LogLine {
        LogLine {
            seq: 0,
            plugin: Arc::clone(&self.log.name),
            ts: now_rfc3339(),
            level,
            msg,
            fields: None,
            stream: "daemon",
            raw: false,
            truncated: false,
        }
    }
}

/// Plug-in lines also go to the daemon's own log (journald), under target `plugin`.
fn reemit(line: &LogLine) {
    let plugin = &*line.plugin;
    match line.level {
        Level::Error => tracing::error!(target: "plugin", plugin, "{}", line.msg),
        Level::Warn => tracing::warn!(target: "plugin", plugin, "{}", line.msg),
        Level::Info => tracing::info!(target: "plugin", plugin, "{}", line.msg),
        Level::Debug => tracing::debug!(target: "plugin", plugin, "{}", line.msg),
        Level::Trace => tracing::trace!(target: "plugin", plugin, "{}", line.msg),
    }
}

/// Lines the daemon's own log writer dropped (its queue was full during a flood); installed by
/// `main` when it sets up the writer.
static DAEMON_LOG_DROPS: std::sync::OnceLock<tracing_appender::non_blocking::ErrorCounter> = std::sync::OnceLock::new();

/// Registers the counter of the daemon's log writer (see `main`'s `init_tracing`).
pub fn set_daemon_log_drops(counter: tracing_appender::non_blocking::ErrorCounter) {
    let _ = DAEMON_LOG_DROPS.set(counter);
}

/// Lines the daemon's own log (stderr, journald) dropped so far; they are still in the plug-ins'
/// rings.
pub fn daemon_log_dropped() -> u64 {
    DAEMON_LOG_DROPS.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// Current time as RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// Formats a time as RFC 3339 with milliseconds, UTC (civil-from-days, no extra crate).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// A token bucket; `take` refills by elapsed time.
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    dropped_since_admit: u64,
}

impl TokenBucket {
    fn new(rate: f64, burst: f64) -> Self {
        Self { rate, burst, tokens: burst, last: Instant::now(), dropped_since_admit: 0 }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.123Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn token_bucket_limits_bursts_and_refills() {
        let mut b = TokenBucket::new(10.0, 5.0);
        let t0 = Instant::now();
        assert_eq!((0..10).filter(|_| b.take(t0)).count(), 5);
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn subscribe_continues_exactly_after_backlog() {
        let hub = LogHub::new();
        let log = hub.plugin("p");
        let mut sink = LogSink::new(Arc::clone(&log), "stderr");
        for i in 0..10 {
            sink.line(format!("line {i}").as_bytes(), false);
        }
        let mut sub = log.subscribe(Some(6), 100);
        assert_eq!(sub.backlog.iter().map(|l| l.seq).collect::<Vec<_>>(), vec![7, 8, 9, 10]);
        sink.line(b"after", false);
        let next = sub.live.try_recv().unwrap();
        assert_eq!(next.seq, 11);
        assert_eq!(next.msg, "after");
    }

    #[test]
    fn rate_limit_drops_and_announces() {
        let hub = LogHub::new();
        let log = hub.plugin("p");
        let mut sink = LogSink::new(Arc::clone(&log), "stderr");
        let t0 = Instant::now();
        let admitted = (0..RATE_BURST as usize + 500).filter(|_| log.admit(t0).is_some()).count();
        assert_eq!(admitted, RATE_BURST as usize);
        assert_eq!(log.counters().dropped.load(Ordering::Relaxed), 500);
        // Once tokens refill, the next admitted line learns how many were dropped before it.
        assert_eq!(log.admit(t0 + Duration::from_millis(5)), Some(500));
        assert_eq!(log.admit(t0 + Duration::from_millis(10)), Some(0));
        // Through a sink, the drop is announced as its own line.
        for _ in 0..RATE_BURST as usize * 2 {
            sink.line(b"x", false);
        }
        let tail = log.tail(1);
        assert_eq!(tail[0].msg, "x");
    }

    #[test]
    fn the_rate_can_be_raised_and_lowered() {
        let log = LogHub::new().plugin("p");
        let t0 = Instant::now();
        log.set_rate(10);
        // The burst shrinks with the rate: 5 s worth.
        assert_eq!((0..100).filter(|_| log.admit(t0).is_some()).count(), 50);
        log.set_rate(100_000);
        assert_eq!(log.admit(t0 + Duration::from_millis(1)), Some(50));
        let admitted = (0..200_000).filter(|_| log.admit(t0 + Duration::from_secs(5)).is_some()).count();
        assert_eq!(admitted, 200_000);
    }
}
