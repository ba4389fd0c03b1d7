//! `GET /metrics` (Prometheus text format) and the middleware that counts HTTP requests.
//!
//! The page is assembled at scrape time from the sources of truth: the supervisor snapshot
//! (states, restarts, rpc stats of each live connection), the `LogHub` counters, the daemon's
//! [`crate::metrics::Metrics`] (HTTP, SSE) and `/proc/self`. Nothing is copied on the hot paths.
//!
//! Counter semantics: `bkg_plugin_rpc_*` belong to one plug-in *process*; they start again
//! from zero when the plug-in restarts, which Prometheus' `rate()` treats as a counter reset.
//! Every other counter lives as long as the daemon.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use super::guard::Caller;
use super::system::Host;
use crate::metrics::{CONTENT_TYPE, HttpSample, TextEncoder};
use crate::supervisor::State as PluginState;

/// Every plug-in state, so that each plug-in has one `bkg_plugin_state` series per state.
const STATES: [PluginState; 8] = [
    PluginState::Stopped,
    PluginState::Starting,
    PluginState::Ready,
    PluginState::Degraded,
    PluginState::Backoff,
    PluginState::Stopping,
    PluginState::Failed,
    PluginState::Disabled,
];

/// Fails to compile when a state is added without adding it to [`STATES`].
const _: fn(PluginState) = |s| match s {
    PluginState::Stopped
    | PluginState::Starting
    | PluginState::Ready
    | PluginState::Degraded
    | PluginState::Backoff
    | PluginState::Stopping
    | PluginState::Failed
    | PluginState::Disabled => {}
};

/// Middleware: counts every request by method, matched route template and status.
/// Requests that matched no route are counted under `route="unmatched"`, so scanners cannot
/// grow the label space with made-up paths.
pub(super) async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let response = next.run(request).await;
    state.metrics().record_http(HttpSample {
        method: method.as_str(),
        route: route.as_ref().map_or("unmatched", MatchedPath::as_str),
        status: response.status().as_u16(),
        elapsed: started.elapsed(),
    });
    response
}

/// Handler of `GET /metrics`.
pub(super) async fn get(_caller: Caller, State(state): State<AppState>) -> Result<Response, ApiError> {
    // `/proc/self` is a few small reads plus one directory listing (open fds): blocking I/O.
    let me = tokio::task::spawn_blocking(|| Host::read().process(std::process::id()))
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("reading /proc/self failed: {e}")))?;
    let page = render(&state, me);
    let mut response = page.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    Ok(response)
}

/// A counter family read from a stats struct: name, help, reader.
type Family<T> = (&'static str, &'static str, fn(&T) -> u64);

fn render(state: &AppState, me: Option<super::system::ProcStats>) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let mut enc = TextEncoder::new();
    enc.family("bkg_build_info", "gauge", "Version of the running daemon");
    enc.sample("bkg_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);
    enc.family("bkg_uptime_seconds", "gauge", "Time since the daemon started");
    enc.sample("bkg_uptime_seconds", &[], state.uptime().as_secs_f64());
    if let Some(me) = me {
        enc.family("process_cpu_seconds_total", "counter", "User and system CPU time of the daemon");
        enc.sample("process_cpu_seconds_total", &[], me.cpu_seconds);
        enc.family("process_resident_memory_bytes", "gauge", "Resident memory of the daemon");
        enc.sample("process_resident_memory_bytes", &[], me.rss_bytes);
        enc.family("process_threads", "gauge", "Threads of the daemon");
        enc.sample("process_threads", &[], me.threads);
        if let Some(fds) = me.open_fds {
            enc.family("process_open_fds", "gauge", "Open file descriptors of the daemon");
            enc.sample("process_open_fds", &[], fds);
        }
    }

    let snapshot = state.supervisor().snapshot();
    let plugins = &snapshot.plugins;
    enc.family("bkg_plugin_state", "gauge", "1 for the state each plug-in is in, 0 for the others");
    for p in plugins {
        for s in STATES {
            enc.sample("bkg_plugin_state", &[("plugin", &p.name), ("state", s.as_str())], u8::from(p.state == s));
        }
    }
    enc.family("bkg_plugin_up", "gauge", "1 when the plug-in is ready or degraded (answering calls)");
    for p in plugins {
        let up = matches!(p.state, PluginState::Ready | PluginState::Degraded);
        enc.sample("bkg_plugin_up", &[("plugin", &p.name)], u8::from(up));
    }
    enc.family("bkg_plugin_restarts_total", "counter", "Automatic restarts after unexpected exits");
    for p in plugins {
        enc.sample("bkg_plugin_restarts_total", &[("plugin", &p.name)], p.restarts);
    }
    enc.family("bkg_plugin_starts_total", "counter", "Processes spawned for the plug-in");
    for p in plugins {
        enc.sample("bkg_plugin_starts_total", &[("plugin", &p.name)], p.generation);
    }

    // rpc counters of each live connection.
    let clients: Vec<_> = plugins.iter().filter_map(|p| Some((p.name.as_str(), p.client.as_ref()?))).collect();
    let families: [Family<crate::rpc::Stats>; 4] = [
        ("bkg_plugin_rpc_calls_total", "Calls sent to the plug-in process", |s| s.calls.load(Relaxed)),
        ("bkg_plugin_rpc_timeouts_total", "Calls that hit their deadline", |s| s.timeouts.load(Relaxed)),
        ("bkg_plugin_rpc_junk_lines_total", "Lines on the protocol pipe that were not svp/1", |s| {
            s.junk_lines.load(Relaxed)
        }),
        ("bkg_plugin_rpc_oversized_frames_total", "Frames over the size limit", |s| s.oversized_frames.load(Relaxed)),
    ];
    for (name, help, read) in families {
        enc.family(name, "counter", help);
        for (plugin, client) in &clients {
            enc.sample(name, &[("plugin", plugin)], read(client.stats()));
        }
    }
    enc.family("bkg_plugin_rpc_in_flight", "gauge", "Calls waiting for their response");
    for (plugin, client) in &clients {
        enc.sample("bkg_plugin_rpc_in_flight", &[("plugin", plugin)], client.in_flight());
    }
    enc.family("bkg_plugin_rpc_duration_seconds", "histogram", "Latency of calls by plug-in and method");
    for (plugin, client) in &clients {
        for (method, h) in client.stats().latency.snapshot() {
            enc.histogram("bkg_plugin_rpc_duration_seconds", &[("plugin", plugin), ("method", &method)], &h);
        }
    }

    // Log counters (every log the hub knows, including plug-ins removed since).
    let mut logs = state.logs().all();
    logs.sort_by(|a, b| a.name().cmp(b.name()));
    let families: [Family<crate::logs::LogCounters>; 3] = [
        ("bkg_plugin_log_lines_total", "Log lines kept from the plug-in", |c| c.lines.load(Relaxed)),
        ("bkg_plugin_log_dropped_total", "Log lines dropped by the rate limit", |c| c.dropped.load(Relaxed)),
        ("bkg_plugin_log_bytes_total", "Bytes of log messages kept", |c| c.bytes.load(Relaxed)),
    ];
    for (name, help, read) in families {
        enc.family(name, "counter", help);
        for log in &logs {
            enc.sample(name, &[("plugin", log.name())], read(log.counters()));
        }
    }

    enc.family("bkg_daemon_log_dropped_total", "counter", "Lines the daemon's own log (stderr) dropped in a flood");
    enc.sample("bkg_daemon_log_dropped_total", &[], crate::logs::daemon_log_dropped());

    state.metrics().encode(&mut enc);
    enc.finish()
}
