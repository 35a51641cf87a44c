//! Per-backend state shared by every selector of a pool: in-flight count, active-health verdicts,
//! passive ejection (a state with exactly one return per ejection) and the slow-start ramp.
//! Atomics on the request path; a mutex only for the transition record.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;

use crate::pool::operator::{Mode, Operator};
use crate::pool::select::least_conn::{LoadTree, TreeLeaf};
use crate::pool::select::p2c::Ewma;

/// Why a backend last changed state, and when.
#[derive(Debug, Clone)]
pub struct Transition {
    pub at: SystemTime,
    pub reason: String,
}

/// What a backend is doing now, as /status shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Takes traffic.
    Ready,
    /// Waits for its first passing health check.
    Checking,
    /// Failed its health checks.
    Unhealthy,
    /// Ejected by passive health until the ejection time is over.
    Ejected,
    /// Drained by an operator: only requests pinned to it, until the pool's drain_timeout.
    Draining,
    /// Disabled by an operator: no requests.
    Disabled,
}

impl Readiness {
    pub fn as_str(self) -> &'static str {
        match self {
            Readiness::Ready => "ready",
            Readiness::Checking => "checking",
            Readiness::Unhealthy => "unhealthy",
            Readiness::Ejected => "ejected",
            Readiness::Draining => "draining",
            Readiness::Disabled => "disabled",
        }
    }
}

/// The smallest share of its weight a backend starts its slow-start ramp with (Envoy's
/// `min_weight_percent` default).
pub const RAMP_FLOOR: f64 = 0.1;

/// What fulcrum keeps per backend.
#[derive(Debug)]
pub struct BackendState {
    /// The stable name (`name:` or the address): the `backend` label.
    pub name: String,
    pub addr: SocketAddr,
    /// The configured weight (a reload may change it while keeping the rest of the state).
    /// The configured weight.
    weight: AtomicU32,
    /// What an operator set through the runtime API.
    pub operator: Operator,
    inflight: AtomicUsize,
    /// False until the backend passed its first active check (always true without checks).
    admitted: AtomicBool,
    /// Pingora's health verdict, mirrored (Pingora starts every backend healthy).
    healthy: AtomicBool,
    consecutive_failures: AtomicU32,
    /// Milliseconds (see `now_ms`) until which the backend is ejected; 0 = not ejected. The
    /// ejection lasts until `end_ejection_if_due` ends it, so each has exactly one return.
    ejected_until: AtomicU64,
    /// Ejections since the backend last served a request successfully (for the back-off).
    ejections: AtomicU32,
    /// Bumped by every ejection and every return: a failure of a request that started in an
    /// earlier generation says nothing about the backend as it is now.
    generation: AtomicU64,
    /// When (see `now_ms`) the current slow-start ramp began; 0 = not ramping.
    ramp_from: AtomicU64,
    /// Whether the backend joined a running pool (reload): its first admission then ramps.
    joined: bool,
    /// Counts of transitions to ready (up) and away from ready (down), whatever made them.
    pub went_up: AtomicU64,
    pub went_down: AtomicU64,
    last_transition: Mutex<Transition>,
    born: Instant,
    /// The least-connections tree to tell about in-flight changes (least_connections pools).
    tree: ArcSwapOption<TreeLeaf>,
    /// The pool-wide in-flight counter its requests also count in (bounded-load hashing).
    pool_total: ArcSwapOption<AtomicUsize>,
    /// Peak-EWMA of response-header latency (least_latency pools).
    pub latency: Ewma,
    /// The share of its weight the backend last reported it can take (feedback), thousandths.
    reported_milli: AtomicU32,
    /// When (see `now_ms`) it reported it; 0 = never.
    reported_at: AtomicU64,
}

/// A backend's reported load counts for this long (ms): one that reported `drain` or a high
/// load and then got no request to report again returns to its full weight after it.
pub const FEEDBACK_TTL_MS: u64 = 10_000;

impl BackendState {
    /// A backend of a pool; `checked` says whether it waits for a first passing check, `joined`
    /// whether it joins a pool that already serves (then it ramps up when slow start is on).
    pub fn new(name: String, addr: SocketAddr, weight: u32, checked: bool, joined: bool) -> Self {
        let s = BackendState {
            name,
            addr,
            weight: AtomicU32::new(weight),
            operator: Operator::default(),
            inflight: AtomicUsize::new(0),
            admitted: AtomicBool::new(!checked),
            healthy: AtomicBool::new(true),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            generation: AtomicU64::new(0),
            ramp_from: AtomicU64::new(0),
            joined,
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
            pool_total: ArcSwapOption::empty(),
            latency: Ewma::default(),
            reported_milli: AtomicU32::new(1000),
            reported_at: AtomicU64::new(0),
        };
        if joined && !checked {
            s.start_ramp();
        }
        s
    }

    /// The weight it is balanced by: the operator's when one is set, else the configured one.
    pub fn weight(&self) -> u32 {
        self.operator
            .weight()
            .unwrap_or_else(|| self.weight.load(Ordering::Relaxed))
    }

    /// Carry this state into a new configuration of its pool (reload): new weight, and
    /// admission as the new pool's checks require. Pingora's health starts afresh with the new
    /// pool ("healthy"), so a backend that was not healthy must pass a check again.
    pub fn carry_over(&self, weight: u32, checked: bool) {
        // What the operator set holds while the backend's configuration is unchanged.
        if self.weight.swap(weight, Ordering::Relaxed) != weight {
            self.operator.reset();
        }
        if !checked {
            self.admitted.store(true, Ordering::Relaxed);
        } else if !self.is_healthy() {
            self.admitted.store(false, Ordering::Relaxed);
        }
        self.healthy.store(true, Ordering::Relaxed);
    }

    /// From now on, tell leaf `index` of `tree` when the in-flight count changes.
    pub fn attach_tree(&self, tree: std::sync::Weak<LoadTree>, index: usize) {
        self.tree.store(Some(Arc::new(TreeLeaf::new(tree, index))));
    }

    /// From now on, count this backend's new requests in `total` too (None: in no pool total).
    /// A request keeps counting where it started, so a swap never unbalances a counter.
    pub fn count_in(&self, total: Option<Arc<AtomicUsize>>) {
        self.pool_total.store(total);
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

    /// May take new requests: admitted, healthy, not ejected, and not drained or disabled.
    pub fn is_ready(&self) -> bool {
        self.is_up() && self.operator.takes_new()
    }

    /// Admitted, healthy and not ejected: what its checks and its requests say of it.
    fn is_up(&self) -> bool {
        self.admitted.load(Ordering::Relaxed)
            && self.healthy.load(Ordering::Relaxed)
            && !self.is_ejected()
    }

    /// Drain, disable or enable (runtime API); returns whether the mode changed. A backend
    /// enabled again ramps up like one that recovered (slow start).
    pub fn set_operator_mode(&self, mode: Mode) -> bool {
        let changed = self.operator.set_mode(mode);
        if changed && mode == Mode::Active && self.is_up() {
            self.start_ramp();
        }
        if changed {
            // Said in /status (not a health transition: no counter moves).
            let reason = match mode {
                Mode::Active => "enabled through the runtime API",
                Mode::Draining => "drained through the runtime API",
                Mode::Disabled => "disabled through the runtime API",
            };
            self.set_reason(reason.into());
        }
        changed
    }

    /// May take a request pinned to it by affinity: up, and active or draining for less than
    /// `drain_timeout`.
    pub fn keeps_pinned(&self, drain_timeout: Duration) -> bool {
        self.is_up() && self.operator.keeps_pinned(drain_timeout)
    }

    pub fn readiness(&self) -> Readiness {
        if self.operator.mode() == Mode::Disabled {
            Readiness::Disabled
        } else if self.operator.mode() == Mode::Draining {
            Readiness::Draining
        } else if !self.is_admitted() {
            Readiness::Checking
        } else if !self.is_healthy() {
            Readiness::Unhealthy
        } else if self.is_ejected() {
            Readiness::Ejected
        } else {
            Readiness::Ready
        }
    }

    pub fn is_admitted(&self) -> bool {
        self.admitted.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Milliseconds since this state was made, plus one (0 stays free to mean "none").
    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64 + 1
    }

    fn at_ms(&self, ms: u64) -> SystemTime {
        let now = self.now_ms();
        if ms >= now {
            SystemTime::now() + Duration::from_millis(ms - now)
        } else {
            SystemTime::now() - Duration::from_millis(now - ms)
        }
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected_until.load(Ordering::Relaxed) != 0
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
        self.set_reason(reason);
    }

    /// The last change and why, as /status shows it.
    fn set_reason(&self, reason: String) {
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

    /// Pingora's health state flipped. Recorded (and ramped, when back up) if that changes
    /// whether the backend is ready. A backend that its checks find healthy again also ends an
    /// ejection it is in (as Envoy's `successful_active_health_check_uneject_host`): the checks
    /// saw it recover. Returns whether it did.
    pub fn set_healthy(&self, healthy: bool, reason: String) -> bool {
        let was_ready = self.is_up();
        self.healthy.store(healthy, Ordering::Relaxed);
        let unejected = healthy && self.end_ejection();
        if self.is_up() != was_ready {
            if healthy {
                self.start_ramp();
            }
            self.record(healthy, reason);
        }
        unejected
    }

    /// A first passing check admitted the backend (it is up unless Pingora holds it unhealthy).
    pub fn record_admitted(&self) {
        if self.is_up() {
            if self.joined {
                self.start_ramp();
            }
            self.record(true, "passed its first health check".into());
        }
    }

    /// Whether the backend joined a running pool (a reload added it).
    pub fn joined(&self) -> bool {
        self.joined
    }

    /// The generation a request starting now belongs to (see `request_failed`).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// A real request's whole response was relayed.
    pub fn request_succeeded(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 && !self.is_ejected() {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// A real request that started in `generation` failed; returns the consecutive failures so
    /// far, or None when the failure does not count: the backend is ejected, or was ejected or
    /// returned since the request started.
    pub fn request_failed(&self, generation: u64) -> Option<u32> {
        if self.is_ejected() || self.generation() != generation {
            return None;
        }
        Some(self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Eject for `base` doubled per ejection since the last success, capped at `max`; returns
    /// the duration, or None when it is already ejected (an ejection is a state, not a count).
    pub fn eject(&self, base: Duration, max: Duration, reason: String) -> Option<Duration> {
        let n = self.ejections.load(Ordering::Relaxed).min(20);
        let time = base.saturating_mul(1u32 << n).min(max);
        let until = self.now_ms() + time.as_millis() as u64;
        let was_ready = self.is_up();
        self.ejected_until
            .compare_exchange(0, until, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        self.ejections.fetch_add(1, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        if was_ready {
            self.record(false, reason);
        }
        Some(time)
    }

    /// If an ejection has run out, end it and return true (exactly once per ejection).
    pub fn end_ejection_if_due(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 || self.now_ms() < until {
            return false;
        }
        let ended = self.end_ejection();
        if ended && self.is_up() {
            self.start_ramp();
            self.record(true, "ejection time is over".into());
        }
        ended
    }

    /// End the ejection the backend is in, if any; true if this call ended it.
    fn end_ejection(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        let ended = until != 0
            && self
                .ejected_until
                .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if ended {
            self.generation.fetch_add(1, Ordering::Relaxed);
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        ended
    }

    /// Move the end of a running ejection (tests: make it due now).
    #[cfg(test)]
    pub fn ejected_until_for_tests(&self, ms: u64) {
        if self.is_ejected() {
            self.ejected_until.store(ms, Ordering::Relaxed);
        }
    }

    /// Begin a slow-start ramp now (it only matters when the pool has `slow_start`).
    fn start_ramp(&self) {
        self.ramp_from.store(self.now_ms(), Ordering::Relaxed);
    }

    /// The backend reported (feedback) that it can take `share` (0 to 1) of its weight.
    pub fn report_share(&self, share: f64) {
        let milli = (share.clamp(0.0, 1.0) * 1000.0).round() as u32;
        self.reported_milli.store(milli, Ordering::Relaxed);
        self.reported_at.store(self.now_ms(), Ordering::Relaxed);
    }

    /// The share of its weight the backend last reported, while it is recent (else 1).
    pub fn reported_share(&self) -> f64 {
        let at = self.reported_at.load(Ordering::Relaxed);
        if at == 0 || self.now_ms().saturating_sub(at) > FEEDBACK_TTL_MS {
            return 1.0;
        }
        f64::from(self.reported_milli.load(Ordering::Relaxed)) / 1000.0
    }

    /// How much of its weight the backend takes now: its slow-start ramp (see `ramp_share`)
    /// times the share it reported (feedback), from 0 to 1.
    pub fn ramp(&self, slow_start: Option<Duration>) -> f64 {
        self.ramp_share(slow_start) * self.reported_share()
    }

    /// How much of its weight slow start lets the backend take now, from `RAMP_FLOOR` to 1,
    /// under a slow start of `slow_start` (None: no slow start, always 1).
    fn ramp_share(&self, slow_start: Option<Duration>) -> f64 {
        let Some(total) = slow_start else {
            return 1.0;
        };
        let from = self.ramp_from.load(Ordering::Relaxed);
        if from == 0 {
            return 1.0;
        }
        let elapsed = self.now_ms().saturating_sub(from) as f64;
        let share = elapsed / total.as_millis().max(1) as f64;
        if share >= 1.0 {
            1.0
        } else {
            share.max(RAMP_FLOOR)
        }
    }

    /// When the current ramp ends (None: not ramping).
    pub fn ramp_until(&self, slow_start: Option<Duration>) -> Option<SystemTime> {
        let total = slow_start?;
        let from = self.ramp_from.load(Ordering::Relaxed);
        let end = from.checked_add(total.as_millis() as u64)?;
        (from != 0 && end > self.now_ms()).then(|| self.at_ms(end))
    }

    /// Forget a ramp that is over (keeps the request path's check to one load).
    pub fn end_ramp_if_done(&self, slow_start: Option<Duration>) {
        let from = self.ramp_from.load(Ordering::Relaxed);
        let done =
            slow_start.is_none_or(|t| self.now_ms().saturating_sub(from) >= t.as_millis() as u64);
        if from != 0 && done {
            let _ = self
                .ramp_from
                .compare_exchange(from, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// The weight the backend takes now: its weight scaled by its ramp, in thousandths.
    pub fn effective_weight_milli(&self, slow_start: Option<Duration>) -> u64 {
        (f64::from(self.weight().max(1)) * 1000.0 * self.ramp(slow_start)) as u64
    }
}

/// Counts one request in flight to a backend for as long as it lives: released exactly once,
/// whether the request ends, fails or moves on to another backend. Remembers the backend's
/// generation when the request started (see `BackendState::request_failed`).
#[derive(Debug)]
pub struct InflightGuard {
    state: Arc<BackendState>,
    generation: u64,
    /// The pool total this request counts in (bounded-load hashing), released with it.
    total: Option<Arc<AtomicUsize>>,
    started: Instant,
}

impl InflightGuard {
    pub fn acquire(state: Arc<BackendState>) -> Self {
        state.inflight.fetch_add(1, Ordering::Relaxed);
        let total = state.pool_total.load_full();
        if let Some(t) = &total {
            t.fetch_add(1, Ordering::Relaxed);
        }
        state.inflight_changed();
        let generation = state.generation();
        InflightGuard {
            state,
            generation,
            total,
            started: Instant::now(),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// When the attempt began (its backend was picked).
    pub fn started(&self) -> Instant {
        self.started
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.state.inflight.fetch_sub(1, Ordering::Relaxed);
        if let Some(t) = &self.total {
            t.fetch_sub(1, Ordering::Relaxed);
        }
        self.state.inflight_changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(checked: bool) -> BackendState {
        BackendState::new(
            "b".into(),
            "127.0.0.1:1".parse().unwrap(),
            1,
            checked,
            false,
        )
    }

    #[test]
    fn checked_backends_wait_for_a_first_pass() {
        let s = state(true);
        assert!(!s.is_ready());
        assert_eq!(s.readiness(), Readiness::Checking);
        assert!(s.check_passed());
        assert!(!s.check_passed(), "admitted once");
        assert!(s.is_ready());
        assert!(state(false).is_ready());
    }

    #[test]
    fn ejection_is_a_state_and_backs_off_until_a_success() {
        let s = state(false);
        let base = Duration::from_millis(0);
        let max = Duration::from_secs(35);
        let g = s.generation();
        assert_eq!(s.request_failed(g), Some(1));
        assert!(s.eject(Duration::from_secs(10), max, "x".into()).is_some());
        assert!(s.is_ejected() && !s.is_ready());
        assert_eq!(s.readiness(), Readiness::Ejected);
        // Requests that started before the ejection fail too: they neither count nor eject again.
        assert_eq!(s.request_failed(g), None);
        assert_eq!(s.eject(base, max, "x".into()), None, "already ejected");
        assert_eq!(s.went_down.load(Ordering::Relaxed), 1);
        // Force the first ejection over, then eject again: the back-off doubled.
        s.ejected_until_for_tests(1);
        assert!(s.end_ejection_if_due());
        assert_eq!(s.request_failed(g), None, "started before the return");
        let g = s.generation();
        assert_eq!(s.request_failed(g), Some(1));
        assert_eq!(
            s.eject(Duration::from_secs(10), max, "x".into()),
            Some(Duration::from_secs(20))
        );
        s.ejected_until_for_tests(1);
        assert!(s.end_ejection_if_due());
        s.request_succeeded();
        assert_eq!(
            s.eject(Duration::from_secs(10), max, "x".into()),
            Some(Duration::from_secs(10)),
            "a success in between resets the back-off"
        );
        assert_eq!(s.went_down.load(Ordering::Relaxed), 3);
        assert_eq!(s.went_up.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn checks_that_find_a_backend_healthy_again_end_its_ejection() {
        let s = state(true);
        assert!(s.check_passed());
        s.record_admitted();
        s.eject(Duration::from_secs(60), Duration::from_secs(60), "x".into());
        s.set_healthy(false, "checks fail".into());
        assert_eq!(
            s.went_down.load(Ordering::Relaxed),
            1,
            "already down: one transition"
        );
        assert!(s.set_healthy(true, "checks pass".into()));
        assert!(s.is_ready());
        assert_eq!(
            s.went_up.load(Ordering::Relaxed),
            2,
            "admission, then the return"
        );
        assert!(!s.end_ejection_if_due(), "the ejection already ended");
    }

    #[test]
    fn an_expired_ejection_ends_once() {
        let s = state(false);
        s.eject(Duration::ZERO, Duration::ZERO, "x".into());
        assert!(s.is_ejected(), "ejected until the service ends it");
        assert!(s.end_ejection_if_due());
        assert!(!s.end_ejection_if_due());
        assert!(!s.is_ejected());
        assert_eq!(s.went_up.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn carried_over_state_keeps_health_and_regates_the_unhealthy() {
        let s = state(true);
        assert!(s.check_passed());
        s.record_admitted();
        s.carry_over(3, true);
        assert!(s.is_ready() && s.weight() == 3, "healthy: stays admitted");
        s.set_healthy(false, "x".into());
        s.carry_over(3, true);
        assert!(!s.is_ready(), "unhealthy: must pass a check again");
        s.carry_over(3, false);
        assert!(s.is_ready(), "no checks any more: admitted");
    }

    #[test]
    fn failures_count_until_a_success() {
        let s = state(false);
        let g = s.generation();
        assert_eq!(s.request_failed(g), Some(1));
        assert_eq!(s.request_failed(g), Some(2));
        s.request_succeeded();
        assert_eq!(s.request_failed(g), Some(1));
    }

    #[test]
    fn slow_start_ramps_from_the_floor_and_only_after_a_return() {
        let slow = Some(Duration::from_secs(100));
        let s = state(false);
        assert_eq!(s.ramp(slow), 1.0, "present at start: no ramp");
        s.eject(Duration::ZERO, Duration::ZERO, "x".into());
        s.end_ejection_if_due();
        assert_eq!(s.ramp(slow), RAMP_FLOOR);
        assert_eq!(s.effective_weight_milli(slow), 100);
        assert!(s.ramp_until(slow).is_some());
        assert_eq!(s.ramp(None), 1.0, "no slow start configured");
        s.end_ramp_if_done(Some(Duration::ZERO));
        assert_eq!(s.ramp(slow), 1.0);
        let joined = BackendState::new("j".into(), "127.0.0.1:2".parse().unwrap(), 2, false, true);
        assert_eq!(joined.effective_weight_milli(slow), 200, "joined: ramps");
    }
}
