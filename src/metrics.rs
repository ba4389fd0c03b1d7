//! The daemon's own metrics: lock-free histograms, per-method rpc latency, HTTP request counts,
//! SSE counters, and a writer for the Prometheus text exposition format (version 0.0.4).
//!
//! Why hand-written rather than `prometheus-client` or `metrics`: almost everything `/metrics`
//! shows (plug-in states, restarts, log counters, rpc stats) already lives in the supervisor
//! snapshot, the `LogHub` and the rpc clients, and is read at scrape time. A crate would need a
//! custom collector for all of that anyway; what is left (one histogram type, two labelled
//! counter tables and the text writer) is about as long as the glue a crate would need, has no
//! global recorder, and keeps the dependency graph unchanged.
//!
//! Architecture Invariant: recording never waits on I/O and never allocates on the hot path
//! once a label set exists; every label set is bounded (route templates, known methods, status
//! codes, plug-in declared methods capped by [`MAX_METHODS`]).
//! This module knows nothing about HTTP or plug-ins; `http::metrics` assembles the page.

use std::collections::HashMap;
use std::fmt::{Display, Write as _};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Upper bounds (seconds) of the latency buckets, shared by rpc and HTTP histograms.
pub const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0];

/// Distinct rpc method names tracked per connection; further names share the label `other`.
pub const MAX_METHODS: usize = 128;

/// A latency histogram with fixed [`BUCKETS`]. Observing is a few relaxed atomic adds.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative counts: `buckets[i]` counts observations in `(BUCKETS[i-1], BUCKETS[i]]`,
    /// the last slot counts those above every bound.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = BUCKETS.iter().position(|b| secs <= *b).unwrap_or(BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Cumulative bucket counts (one per bound, then `+Inf`), sum in seconds, count.
    fn cumulative(&self) -> (Vec<u64>, f64, u64) {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        // The count is the `+Inf` bucket, so the two agree even while observations race in.
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (cumulative, sum, total)
    }
}

/// Latency histograms of one rpc connection, by method.
#[derive(Debug, Default)]
pub struct MethodLatency {
    by_method: Mutex<HashMap<String, Arc<Histogram>>>,
}

impl MethodLatency {
    /// Records the duration of one call of `method`.
    pub fn observe(&self, method: &str, d: Duration) {
        let histogram = {
            let mut map = self.by_method.lock().unwrap_or_else(PoisonError::into_inner);
            match map.get(method) {
                Some(h) => Arc::clone(h),
                None => {
                    let key = if map.len() < MAX_METHODS { method } else { "other" };
                    Arc::clone(map.entry(key.to_owned()).or_default())
                }
            }
        };
        histogram.observe(d);
    }

    /// A copy of the current histograms, sorted by method.
    pub fn snapshot(&self) -> Vec<(String, Arc<Histogram>)> {
        let map = self.by_method.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<_> = map.iter().map(|(m, h)| (m.clone(), Arc::clone(h))).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// Requests of one route template.
#[derive(Debug, Default)]
struct RouteStats {
    /// `(method, status) → count`.
    counts: HashMap<(&'static str, u16), u64>,
    /// `method → latency until the response head`.
    latency: HashMap<&'static str, Arc<Histogram>>,
}

/// One HTTP request as the metrics see it.
#[derive(Debug, Clone, Copy)]
pub struct HttpSample<'a> {
    pub method: &'a str,
    /// The matched route template (`/admin/plugins/{name}`), never the raw path.
    pub route: &'a str,
    pub status: u16,
    /// Time until the response head was ready (not the length of a stream).
    pub elapsed: Duration,
}

/// The daemon-wide registry: HTTP and SSE counters. Cheap to share through `Arc`.
#[derive(Debug, Default)]
pub struct Metrics {
    http: Mutex<HashMap<String, RouteStats>>,
    sse_clients: AtomicI64,
    sse_events: AtomicU64,
    sse_gap_events: AtomicU64,
    sse_missed_lines: AtomicU64,
}

/// Methods get one of a fixed set of labels, so a client cannot grow the label space.
fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"];
    KNOWN.into_iter().find(|m| *m == method).unwrap_or("OTHER")
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one finished HTTP request.
    pub fn record_http(&self, sample: HttpSample<'_>) {
        let method = method_label(sample.method);
        let histogram = {
            let mut http = self.http.lock().unwrap_or_else(PoisonError::into_inner);
            let stats = match http.get_mut(sample.route) {
                Some(stats) => stats,
                None => http.entry(sample.route.to_owned()).or_default(),
            };
            *stats.counts.entry((method, sample.status)).or_default() += 1;
            Arc::clone(stats.latency.entry(method).or_default())
        };
        histogram.observe(sample.elapsed);
    }

    /// A log stream opened; the returned guard closes it when dropped.
    pub fn sse_client(self: &Arc<Self>) -> SseClientGuard {
        self.sse_clients.fetch_add(1, Ordering::Relaxed);
        SseClientGuard(Arc::clone(self))
    }

    /// Log streams open now.
    pub fn sse_clients(&self) -> i64 {
        self.sse_clients.load(Ordering::Relaxed)
    }

    /// One `log` event was sent.
    pub fn sse_event(&self) {
        self.sse_events.fetch_add(1, Ordering::Relaxed);
    }

    /// One `gap` event announced `missed` lost lines.
    pub fn sse_gap(&self, missed: u64) {
        self.sse_gap_events.fetch_add(1, Ordering::Relaxed);
        self.sse_missed_lines.fetch_add(missed, Ordering::Relaxed);
    }

    /// Writes the HTTP and SSE families.
    pub fn encode(&self, enc: &mut TextEncoder) {
        {
            let http = self.http.lock().unwrap_or_else(PoisonError::into_inner);
            let mut routes: Vec<_> = http.iter().collect();
            routes.sort_by(|a, b| a.0.cmp(b.0));
            enc.family("bkg_http_requests_total", "counter", "HTTP requests by method, route template and status");
            for (route, stats) in &routes {
                let mut counts: Vec<_> = stats.counts.iter().collect();
                counts.sort();
                for ((method, status), n) in counts {
                    let status = status.to_string();
                    enc.sample(
                        "bkg_http_requests_total",
                        &[("method", method), ("route", route), ("status", &status)],
                        n,
                    );
                }
            }
            enc.family(
                "bkg_http_request_duration_seconds",
                "histogram",
                "Time until the response head, by method and route template",
            );
            for (route, stats) in &routes {
                let mut latency: Vec<_> = stats.latency.iter().collect();
                latency.sort_by_key(|(m, _)| **m);
                for (method, h) in latency {
                    enc.histogram("bkg_http_request_duration_seconds", &[("method", method), ("route", route)], h);
                }
            }
        }
        enc.family("bkg_sse_clients", "gauge", "Open log streams");
        enc.sample("bkg_sse_clients", &[], self.sse_clients());
        enc.family("bkg_sse_events_total", "counter", "Log events sent to stream clients");
        enc.sample("bkg_sse_events_total", &[], self.sse_events.load(Ordering::Relaxed));
        enc.family("bkg_sse_gap_events_total", "counter", "Gap events sent to stream clients");
        enc.sample("bkg_sse_gap_events_total", &[], self.sse_gap_events.load(Ordering::Relaxed));
        enc.family("bkg_sse_missed_lines_total", "counter", "Lines stream clients were told they missed");
        enc.sample("bkg_sse_missed_lines_total", &[], self.sse_missed_lines.load(Ordering::Relaxed));
    }
}

/// Counts one open log stream until dropped.
#[derive(Debug)]
pub struct SseClientGuard(Arc<Metrics>);

impl SseClientGuard {
    /// The registry this stream reports to.
    pub fn metrics(&self) -> &Metrics {
        &self.0
    }
}

impl Drop for SseClientGuard {
    fn drop(&mut self) {
        self.0.sse_clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Builds a page in the Prometheus text exposition format.
///
/// Callers write each family's header with [`TextEncoder::family`] and then all of its samples,
/// so a family's samples are contiguous as the format requires.
#[derive(Debug, Default)]
pub struct TextEncoder {
    out: String,
}

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl TextEncoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// `# HELP` and `# TYPE` lines of a family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample line.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.out, " {value}");
    }

    /// The `_bucket`, `_sum` and `_count` lines of one histogram.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let (cumulative, sum, count) = h.cumulative();
        for (i, n) in cumulative.iter().enumerate() {
            let le = BUCKETS.get(i).map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let _ = write!(self.out, "{name}_bucket");
            self.labels(labels, Some(&le));
            let _ = writeln!(self.out, " {n}");
        }
        let _ = write!(self.out, "{name}_sum");
        self.labels(labels, None);
        let _ = writeln!(self.out, " {sum}");
        let _ = write!(self.out, "{name}_count");
        self.labels(labels, None);
        let _ = writeln!(self.out, " {count}");
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push('{');
        let all = labels.iter().copied().chain(le.map(|le| ("le", le)));
        for (i, (k, v)) in all.enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.out.push_str(k);
            self.out.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => self.out.push_str("\\\\"),
                    '"' => self.out.push_str("\\\""),
                    '\n' => self.out.push_str("\\n"),
                    c => self.out.push(c),
                }
            }
            self.out.push('"');
        }
        self.out.push('}');
    }

    /// The finished page.
    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(100)); // ≤ 0.0005
        h.observe(Duration::from_millis(3)); // ≤ 0.005
        h.observe(Duration::from_secs(60)); // +Inf only
        let mut enc = TextEncoder::new();
        enc.histogram("x_seconds", &[("m", "a")], &h);
        let page = enc.finish();
        assert!(page.contains("x_seconds_bucket{m=\"a\",le=\"0.0005\"} 1\n"), "{page}");
        assert!(page.contains("x_seconds_bucket{m=\"a\",le=\"0.0025\"} 1\n"), "{page}");
        assert!(page.contains("x_seconds_bucket{m=\"a\",le=\"0.005\"} 2\n"), "{page}");
        assert!(page.contains("x_seconds_bucket{m=\"a\",le=\"30\"} 2\n"), "{page}");
        assert!(page.contains("x_seconds_bucket{m=\"a\",le=\"+Inf\"} 3\n"), "{page}");
        assert!(page.contains("x_seconds_count{m=\"a\"} 3\n"), "{page}");
        assert!(page.contains("x_seconds_sum{m=\"a\"} 60.0031\n"), "{page}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut enc = TextEncoder::new();
        enc.sample("y", &[("q", "a\"b\\c\nd")], 1);
        assert_eq!(enc.finish(), "y{q=\"a\\\"b\\\\c\\nd\"} 1\n");
    }

    #[test]
    fn rpc_method_labels_are_capped() {
        let lat = MethodLatency::default();
        for i in 0..MAX_METHODS + 10 {
            lat.observe(&format!("m{i}"), Duration::from_millis(1));
        }
        let snap = lat.snapshot();
        assert_eq!(snap.len(), MAX_METHODS + 1);
        let other = snap.iter().find(|(m, _)| m == "other").map(|(_, h)| h.count());
        assert_eq!(other, Some(10));
    }

    #[test]
    fn http_requests_are_counted_by_template_and_status() {
        let m = Metrics::new();
        let sample = |method, status| HttpSample {
            method,
            route: "/admin/plugins/{name}",
            status,
            elapsed: Duration::from_millis(2),
        };
        m.record_http(sample("GET", 200));
        m.record_http(sample("GET", 200));
        m.record_http(sample("GET", 404));
        m.record_http(sample("BREW", 405));
        let mut enc = TextEncoder::new();
        m.encode(&mut enc);
        let page = enc.finish();
        let line = |method: &str, status: u16, n: u64| {
            format!(
                "bkg_http_requests_total{{method=\"{method}\",route=\"/admin/plugins/{{name}}\",status=\"{status}\"}} {n}\n"
            )
        };
        assert!(page.contains(&line("GET", 200, 2)), "{page}");
        assert!(page.contains(&line("GET", 404, 1)), "{page}");
        assert!(page.contains(&line("OTHER", 405, 1)), "{page}");
        assert!(
            page.contains(
                "bkg_http_request_duration_seconds_count{method=\"GET\",route=\"/admin/plugins/{name}\"} 3\n"
            )
        );
    }

    #[test]
    fn sse_guard_tracks_open_streams() {
        let m = Arc::new(Metrics::new());
        let a = m.sse_client();
        let b = m.sse_client();
        assert_eq!(m.sse_clients(), 2);
        drop(a);
        assert_eq!(m.sse_clients(), 1);
        drop(b);
        assert_eq!(m.sse_clients(), 0);
    }
}
