//! Per-backend state shared by every selector of a pool: in-flight count, active-health verdicts
//! and passive ejection. Atomics on the request path; a mutex only for the transition record.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use pingora_load_balancing::Backend;

use crate::pool::select::least_conn::{LoadTree, TreeLeaf};

/// Why a backend last changed state, and when.
#[derive(Debug, Clone)]
pub struct Transition {
    pub at: SystemTime,
    pub reason: String,
}

/// What fulcrum keeps per backend.
#[derive(Debug)]
pub struct BackendState {
    /// The stable name (`name:` or the address): the `backend` label.
    pub name: String,
    pub addr: SocketAddr,
    /// The configured weight (a reload may change it while keeping the rest of the state).
    weight: AtomicU32,
    inflight: AtomicUsize,
    /// False until the backend passed its first active check (always true without checks).
    admitted: AtomicBool,
    /// The active checks' verdict as last reported (Pingora's health state decides it).
    healthy: AtomicBool,
    consecutive_failures: AtomicU32,
    /// Milliseconds since `born` until which the backend is ejected; 0 = not ejected.
    ejected_until: AtomicU64,
    /// Ejections in a row (for the back-off); reset after a success once out of ejection.
    ejections: AtomicU32,
    /// Counts of transitions to up and to down (for metrics).
    pub went_up: AtomicU64,
    pub went_down: AtomicU64,
    last_transition: Mutex<Transition>,
    born: Instant,
    /// The least-connections tree to tell about in-flight changes (least_connections pools).
    tree: ArcSwapOption<TreeLeaf>,
}

impl BackendState {
    /// A backend of a pool; `checked` says whether it waits for a first passing check.
    pub fn new(name: String, addr: SocketAddr, weight: u32, checked: bool) -> Self {
        BackendState {
            name,
            addr,
            weight: AtomicU32::new(weight),
            inflight: AtomicUsize::new(0),
            admitted: AtomicBool::new(!checked),
            healthy: AtomicBool::new(!checked),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            went_up: AtomicU64::new(0),
            went_down: AtomicU64::new(0),
            last_transition: Mutex::new(Transition {
                at: SystemTime::now(),
                reason: if checked {
                    "waiting for the first health check".into()
                } else {
                    "configured".into()
                },
            }),
            born: Instant::now(),
            tree: ArcSwapOption::empty(),
        }
    }

    /// State for a Pingora backend that no pool owns (a selector built without counters).
    pub fn detached(b: &Backend) -> Self {
        let addr = b
            .addr
            .as_inet()
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        BackendState::new(addr.to_string(), addr, b.weight as u32, false)
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Carry this state into a new configuration of its pool (reload): new weight, and
    /// admission as the new pool's checks require. Pingora's health starts afresh with the new
    /// pool ("healthy"), so a backend that was not healthy must pass a check again.
    pub fn carry_over(&self, weight: u32, checked: bool) {
        self.weight.store(weight, Ordering::Relaxed);
        if !checked {
            self.admitted.store(true, Ordering::Relaxed);
            self.healthy.store(true, Ordering::Relaxed);
        } else if !self.is_healthy() {
            self.admitted.store(false, Ordering::Relaxed);
        }
    }

    /// From now on, tell leaf `index` of `tree` when the in-flight count changes.
    pub fn attach_tree(&self, tree: std::sync::Weak<LoadTree>, index: usize) {
        self.tree.store(Some(Arc::new(TreeLeaf::new(tree, index))));
    }

    fn inflight_changed(&self) {
        if let Some(leaf) = self.tree.load().as_ref() {
            leaf.changed();
        }
    }

    /// Requests now in flight to this backend.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// May receive traffic as far as fulcrum's own state goes (Pingora's health is separate).
    pub fn usable(&self) -> bool {
        self.admitted.load(Ordering::Relaxed) && !self.is_ejected()
    }

    pub fn is_admitted(&self) -> bool {
        self.admitted.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64 + 1
    }

    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && self.now_ms() < until
    }

    pub fn last_transition(&self) -> Transition {
        self.last_transition
            .lock()
            .map(|t| t.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn record(&self, up: bool, reason: String) {
        if up {
            self.went_up.fetch_add(1, Ordering::Relaxed);
        } else {
            self.went_down.fetch_add(1, Ordering::Relaxed);
        }
        let t = Transition {
            at: SystemTime::now(),
            reason,
        };
        match self.last_transition.lock() {
            Ok(mut g) => *g = t,
            Err(p) => *p.into_inner() = t,
        }
    }

    /// An active check passed; true if this admitted the backend for the first time.
    pub fn check_passed(&self) -> bool {
        !self.admitted.swap(true, Ordering::Relaxed)
    }

    /// Pingora's health state flipped.
    pub fn set_healthy(&self, healthy: bool, reason: String) {
        self.healthy.store(healthy, Ordering::Relaxed);
        self.record(healthy, reason);
    }

    /// A first passing check admitted the backend.
    pub fn record_admitted(&self) {
        self.healthy.store(true, Ordering::Relaxed);
        self.record(true, "passed its first health check".into());
    }

    /// A real request succeeded.
    pub fn request_succeeded(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 && !self.is_ejected() {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// A real request failed; returns the consecutive failures so far.
    pub fn request_failed(&self) -> u32 {
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Eject for `base` doubled per ejection in a row, capped at `max`; returns the duration.
    pub fn eject(&self, base: Duration, max: Duration, reason: String) -> Duration {
        let n = self.ejections.fetch_add(1, Ordering::Relaxed).min(20);
        let time = base.saturating_mul(1u32 << n).min(max);
        self.ejected_until
            .store(self.now_ms() + time.as_millis() as u64, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.record(false, reason);
        time
    }

    /// If an ejection has run out, clear it and return true (once per ejection).
    pub fn end_ejection_if_due(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 || self.now_ms() < until {
            return false;
        }
        let ended = self
            .ejected_until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if ended {
            self.record(true, "ejection time is over".into());
        }
        ended
    }
}

/// Counts one request in flight to a backend for as long as it lives: released exactly once,
/// whether the request ends, fails or moves on to another backend.
#[derive(Debug)]
pub struct InflightGuard(Arc<BackendState>);

impl InflightGuard {
    pub fn acquire(state: Arc<BackendState>) -> Self {
        state.inflight.fetch_add(1, Ordering::Relaxed);
        state.inflight_changed();
        InflightGuard(state)
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
        self.0.inflight_changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(checked: bool) -> BackendState {
        BackendState::new("b".into(), "127.0.0.1:1".parse().unwrap(), 1, checked)
    }

    #[test]
    fn checked_backends_wait_for_a_first_pass() {
        let s = state(true);
        assert!(!s.usable());
        assert!(s.check_passed());
        assert!(!s.check_passed(), "admitted once");
        assert!(s.usable());
        assert!(state(false).usable());
    }

    #[test]
    fn ejection_backs_off_and_is_capped() {
        let s = state(false);
        let base = Duration::from_secs(10);
        let max = Duration::from_secs(35);
        assert_eq!(s.eject(base, max, "x".into()), Duration::from_secs(10));
        assert!(s.is_ejected() && !s.usable());
        assert_eq!(s.eject(base, max, "x".into()), Duration::from_secs(20));
        assert_eq!(s.eject(base, max, "x".into()), Duration::from_secs(35));
        assert_eq!(s.went_down.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn an_expired_ejection_ends_once() {
        let s = state(false);
        s.eject(Duration::ZERO, Duration::ZERO, "x".into());
        assert!(!s.is_ejected());
        assert!(s.end_ejection_if_due());
        assert!(!s.end_ejection_if_due());
        assert_eq!(s.went_up.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn carried_over_state_keeps_health_and_regates_the_unhealthy() {
        let s = state(true);
        assert!(s.check_passed());
        s.record_admitted();
        s.carry_over(3, true);
        assert!(s.usable() && s.weight() == 3, "healthy: stays admitted");
        s.set_healthy(false, "x".into());
        s.carry_over(3, true);
        assert!(!s.usable(), "unhealthy: must pass a check again");
        s.carry_over(3, false);
        assert!(s.usable(), "no checks any more: admitted");
    }

    #[test]
    fn failures_count_until_a_success() {
        let s = state(false);
        assert_eq!(s.request_failed(), 1);
        assert_eq!(s.request_failed(), 2);
        s.request_succeeded();
        assert_eq!(s.request_failed(), 1);
    }
}
