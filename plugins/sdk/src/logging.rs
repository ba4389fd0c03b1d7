//! Plug-in side logging: JSON lines on stderr, with a level that can change at runtime.
//!
//! The daemon parses these lines (protocol.md §2.11). Nothing here writes to stdout.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

/// Changes the level of the installed subscriber.
#[derive(Clone)]
pub struct LogLevelHandle(Option<reload::Handle<EnvFilter, tracing_subscriber::Registry>>);

impl LogLevelHandle {
    /// Applies a new level (`trace`..`error`); invalid levels are rejected.
    pub fn set(&self, level: &str) -> Result<(), String> {
        let filter = parse_level(level)?;
        match &self.0 {
            Some(handle) => handle.modify(|f| *f = filter).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}

fn parse_level(level: &str) -> Result<EnvFilter, String> {
    match level {
        "trace" | "debug" | "info" | "warn" | "error" | "off" => Ok(EnvFilter::new(level)),
        other => Err(format!("unknown log level {other:?}")),
    }
}

/// Installs a JSON-to-stderr subscriber at `initial` level. A second call (tests running several
/// plug-ins in one process) keeps the first subscriber and returns a handle that does nothing.
pub fn install(initial: &str) -> LogLevelHandle {
    let filter = parse_level(initial).unwrap_or_else(|_| EnvFilter::new("info"));
    let (layer, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(std::io::stderr);
    match tracing_subscriber::registry().with(layer).with(fmt).try_init() {
        Ok(()) => LogLevelHandle(Some(handle)),
        Err(_) => LogLevelHandle(None),
    }
}
