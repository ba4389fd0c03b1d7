//! Admission control: at most `max_concurrent` generations run, at most `max_queue` wait (FIFO);
//! anyone beyond that is refused at once with 429 and a `Retry-After` estimated from the measured
//! service time. A waiting request whose caller goes away leaves the queue at once (its future is
//! dropped), so no tokens are computed for a request nobody waits for.
//!
//! The gate also keeps the plug-in's counters (`llm.stats`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::LlmError;

/// Service time assumed before the first generation finished.
const INITIAL_SERVICE_MS: u64 = 5_000;

/// Counters of the plug-in's generations.
#[derive(Debug, Default)]
pub struct Counters {
    pub admitted: AtomicU64,
    pub rejected: AtomicU64,
    /// Left the queue before starting (caller gone or deadline).
    pub abandoned_in_queue: AtomicU64,
    pub completed: AtomicU64,
    pub cancelled: AtomicU64,
    pub failed: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Completion tokens of the last cancelled generation (how far it got before it stopped).
    pub last_cancelled_tokens: AtomicU64,
}

/// The gate in front of the generators.
#[derive(Debug)]
pub struct Gate {
    slots: Arc<Semaphore>,
    max_running: usize,
    max_waiting: usize,
    /// Requests admitted and not yet finished: running plus waiting.
    in_system: AtomicUsize,
    running: AtomicUsize,
    /// Exponentially weighted mean service time, ms.
    service_ms: AtomicU64,
    pub counters: Counters,
}

/// A request's place in the system; leaving (drop) frees it.
#[derive(Debug)]
pub struct Ticket {
    gate: Arc<Gate>,
    started: bool,
}

/// A running generation's slot; held by the generation thread until it really stops.
#[derive(Debug)]
pub struct Running {
    _permit: OwnedSemaphorePermit,
    _ticket: Ticket,
}

impl Gate {
    pub fn new(max_running: usize, max_waiting: usize) -> Arc<Self> {
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(max_running)),
            max_running,
            max_waiting,
            in_system: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            service_ms: AtomicU64::new(INITIAL_SERVICE_MS),
            counters: Counters::default(),
        })
    }

    /// Admits a request or refuses it with 429. Returns the ticket and how many requests are
    /// ahead of it in the queue (0 when a slot is free).
    pub fn enter(self: &Arc<Self>) -> Result<(Ticket, usize), LlmError> {
        let before = self.in_system.fetch_add(1, Ordering::AcqRel);
        if before >= self.max_running + self.max_waiting {
            self.in_system.fetch_sub(1, Ordering::AcqRel);
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            let queued = before.saturating_sub(self.max_running);
            return Err(LlmError::Overloaded { queued, retry_after_ms: self.retry_after_ms(queued) });
        }
        self.counters.admitted.fetch_add(1, Ordering::Relaxed);
        Ok((Ticket { gate: Arc::clone(self), started: false }, before.saturating_sub(self.max_running - 1)))
    }

    /// Waits (FIFO) for a free slot. Dropping the future leaves the queue.
    pub async fn start(&self, mut ticket: Ticket) -> Running {
        // The semaphore is never closed, so acquiring can only succeed.
        let permit = loop {
            if let Ok(p) = Arc::clone(&self.slots).acquire_owned().await {
                break p;
            }
        };
        ticket.started = true;
        self.running.fetch_add(1, Ordering::AcqRel);
        Running { _permit: permit, _ticket: ticket }
    }

    /// Records how long one generation took, for the `Retry-After` estimate.
    pub fn record_service(&self, took: Duration) {
        let ms = took.as_millis().min(u128::from(u32::MAX)) as u64;
        let old = self.service_ms.load(Ordering::Relaxed);
        self.service_ms.store((old * 7 + ms) / 8, Ordering::Relaxed);
    }

    /// Estimated wait for a request with `queued` requests ahead: whole service times of the
    /// requests ahead and the running ones, clamped to 1 to 60 seconds (the SDKs ignore more).
    fn retry_after_ms(&self, queued: usize) -> u64 {
        let rounds = (queued / self.max_running + 1) as u64;
        (rounds * self.service_ms.load(Ordering::Relaxed)).clamp(1_000, 60_000)
    }

    /// Requests waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.in_system.load(Ordering::Acquire).saturating_sub(self.running.load(Ordering::Acquire))
    }

    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// The counters as JSON (`llm.stats`).
    pub fn snapshot(&self) -> Value {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "running": self.running(),
            "waiting": self.waiting(),
            "max_running": self.max_running,
            "max_waiting": self.max_waiting,
            "service_ms_ewma": self.service_ms.load(Ordering::Relaxed),
            "admitted": get(&c.admitted),
            "rejected": get(&c.rejected),
            "abandoned_in_queue": get(&c.abandoned_in_queue),
            "completed": get(&c.completed),
            "cancelled": get(&c.cancelled),
            "failed": get(&c.failed),
            "prompt_tokens": get(&c.prompt_tokens),
            "completion_tokens": get(&c.completion_tokens),
            "last_cancelled_tokens": get(&c.last_cancelled_tokens),
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.gate.in_system.fetch_sub(1, Ordering::AcqRel);
        if self.started {
            self.gate.running.fetch_sub(1, Ordering::AcqRel);
        } else {
            self.gate.counters.abandoned_in_queue.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounds_running_and_waiting_and_frees_on_drop() {
        let gate = Gate::new(1, 2);
        let (t1, ahead) = gate.enter().unwrap();
        assert_eq!(ahead, 0);
        let r1 = gate.start(t1).await;
        let (t2, ahead2) = gate.enter().unwrap();
        let (t3, ahead3) = gate.enter().unwrap();
        assert_eq!((ahead2, ahead3), (1, 2));
        match gate.enter().unwrap_err() {
            LlmError::Overloaded { queued, retry_after_ms } => {
                assert_eq!(queued, 2);
                assert!((1_000..=60_000).contains(&retry_after_ms));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!((gate.running(), gate.waiting()), (1, 2));
        // A waiter that gives up leaves the queue and makes room.
        drop(t3);
        assert_eq!(gate.waiting(), 1);
        let (t4, _) = gate.enter().unwrap();
        // The next waiter starts when the running one finishes.
        let waiter = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move { gate.start(t2).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(r1);
        let r2 = waiter.await.unwrap();
        assert_eq!(gate.running(), 1);
        drop(r2);
        drop(t4);
        assert_eq!((gate.running(), gate.waiting()), (0, 0));
        let snap = gate.snapshot();
        assert_eq!(snap["rejected"], 1);
        assert_eq!(snap["abandoned_in_queue"], 2);
    }
}
