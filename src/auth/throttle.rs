//! Login throttling (auth.md §8): failed logins per client IP within a sliding minute, and all
//! login attempts daemon-wide, which caps the bcrypt work an attacker can cause on 2 cores.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
/// Most IPs tracked; beyond it the stalest entries are dropped (bounded memory).
const MAX_TRACKED: usize = 10_000;

/// Per-IP failure limit and a global attempt limit, each per sliding minute.
pub struct LoginThrottle {
    per_ip_failures: usize,
    global_attempts: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    failures: HashMap<IpAddr, VecDeque<Instant>>,
    attempts: VecDeque<Instant>,
}

fn prune(q: &mut VecDeque<Instant>, now: Instant) {
    while q.front().is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW) {
        q.pop_front();
    }
}

fn retry_after(q: &VecDeque<Instant>, now: Instant) -> Duration {
    q.front().map_or(Duration::from_secs(1), |t| WINDOW.saturating_sub(now.saturating_duration_since(*t)))
}

impl LoginThrottle {
    /// `per_ip_failures` failed logins per IP and `global_attempts` attempts per minute.
    pub fn new(per_ip_failures: usize, global_attempts: usize) -> Self {
        Self { per_ip_failures, global_attempts, state: Mutex::new(State::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Short, panic-free sections; a poisoned lock still holds valid counters.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits an attempt from `ip`, or says how long to wait (whole seconds, at least 1).
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        let mut state = self.lock();
        if let Some(q) = state.failures.get_mut(&ip) {
            prune(q, now);
            if q.len() >= self.per_ip_failures {
                return Err(retry_after(q, now).as_secs().max(1));
            }
        }
        prune(&mut state.attempts, now);
        if state.attempts.len() >= self.global_attempts {
            return Err(retry_after(&state.attempts, now).as_secs().max(1));
        }
        state.attempts.push_back(now);
        Ok(())
    }

    /// Records a failed login from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut state = self.lock();
        if state.failures.len() >= MAX_TRACKED && !state.failures.contains_key(&ip) {
            state.failures.retain(|_, q| q.back().is_some_and(|t| now.saturating_duration_since(*t) < WINDOW));
        }
        state.failures.entry(ip).or_default().push_back(now);
    }

    /// A successful login clears that IP's failures.
    pub fn succeeded(&self, ip: IpAddr) {
        self.lock().failures.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_failures_then_retry_after_and_other_ips_unaffected() {
        let t = LoginThrottle::new(5, 30);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(t.admit(a, t0).is_ok());
            t.failed(a, t0);
        }
        let wait = t.admit(a, t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(wait, 50);
        assert!(t.admit(b, t0).is_ok());
        assert!(t.admit(a, t0 + WINDOW).is_ok(), "the window slides");
    }

    #[test]
    fn global_attempts_are_capped() {
        let t = LoginThrottle::new(5, 3);
        let t0 = Instant::now();
        for i in 0..3u8 {
            assert!(t.admit(IpAddr::from([10, 0, 0, i]), t0).is_ok());
        }
        assert!(t.admit(IpAddr::from([10, 0, 1, 1]), t0).is_err());
    }

    #[test]
    fn success_clears_failures() {
        let t = LoginThrottle::new(2, 30);
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let t0 = Instant::now();
        t.failed(ip, t0);
        t.succeeded(ip);
        t.failed(ip, t0);
        assert!(t.admit(ip, t0).is_ok());
    }
}
