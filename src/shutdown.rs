//! Signals: the first SIGTERM or SIGINT asks for a graceful shutdown, a second one forces it.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// The two levels of shutdown, as cancellation tokens shared by everything that must stop.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Stop accepting work and stop plug-ins in order.
    pub graceful: CancellationToken,
    /// Skip the remaining grace periods: SIGKILL every plug-in group now.
    pub force: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels `graceful` on the first SIGTERM/SIGINT and `force` on the second.
    pub fn listen_for_signals(&self) -> std::io::Result<()> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let this = self.clone();
        tokio::spawn(async move {
            for round in 0..2 {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                if round == 0 {
                    tracing::info!(signal = name, "shutting down (send it again to force)");
                    this.graceful.cancel();
                } else {
                    tracing::warn!(signal = name, "second signal: forcing shutdown");
                    this.force.cancel();
                }
            }
        });
        Ok(())
    }
}
