//! Bounded loads for consistent hashing (Mirrokni, Thorup and Zadimoghaddam; HAProxy's
//! `hash-balance-factor`, Envoy's `hash_balance_factor`): a backend takes a request only while
//! its in-flight count stays within `factor` x its weighted share of the pool's, rounded up:
//! `inflight_i + 1 <= ceil(factor * (total + 1) * w_i / W)`. A key whose backend is over its
//! bound walks on along the ring; keys stay put while loads are within bound. The pool's total
//! in-flight count is one atomic that the in-flight guards update; W, the ready backends'
//! effective weight, is summed again at most every 100 ms by the pick that finds it due.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::p2c::now_us;
use super::Candidates;
use crate::pool::BackendState;

/// How often the ready weight is summed again (microseconds).
const RESUM_US: u64 = 100_000;

/// The most requests a backend of effective weight `weight` may hold (counting the one being
/// placed) when `total` requests are in flight on a pool of weight `total_weight`.
pub fn bound(factor: f64, total: usize, weight: u64, total_weight: u64) -> usize {
    let share = weight as f64 / total_weight.max(1) as f64;
    (factor * (total as f64 + 1.0) * share).ceil().max(1.0) as usize
}

/// One hashing pool's bound.
pub struct Bound {
    factor: f64,
    /// Requests in flight on the pool (the in-flight guards of its backends count here).
    total: Arc<AtomicUsize>,
    /// The ready backends' effective weights, summed, in thousandths.
    ready_weight: AtomicU64,
    /// When (`now_us`) `ready_weight` was last summed.
    summed_at: AtomicU64,
}

/// The bound of one pick: what a backend may hold, per thousandth of weight.
pub struct Limit {
    per_milli: f64,
}

impl Limit {
    /// Whether backend `s`, of effective weight `weight_milli`, may take one more request.
    pub fn admits(&self, s: &BackendState, weight_milli: u64) -> bool {
        let most = (self.per_milli * weight_milli as f64).ceil().max(1.0) as usize;
        s.inflight() < most
    }
}

impl Bound {
    /// The bound of a pool of `states` with `factor`; its in-flight guards must count in
    /// `total()` (see `BackendState::count_in`).
    pub fn new(factor: f64, states: &[Arc<BackendState>]) -> Bound {
        let weight = states.iter().map(|s| u64::from(s.weight()) * 1000).sum();
        Bound {
            factor,
            total: Arc::new(AtomicUsize::new(0)),
            ready_weight: AtomicU64::new(weight),
            summed_at: AtomicU64::new(now_us()),
        }
    }

    pub fn factor(&self) -> f64 {
        self.factor
    }

    /// The pool's in-flight counter.
    pub fn total(&self) -> &Arc<AtomicUsize> {
        &self.total
    }

    /// Whether `s` (of effective weight `weight_milli`) holds all the bound allows now, so
    /// that a walk of the ring passes over it (for `X-Fulcrum-Debug`).
    pub fn is_full(&self, s: &BackendState, weight_milli: u64) -> bool {
        let total = self.total.load(Ordering::Relaxed) as f64;
        let w = self.ready_weight.load(Ordering::Relaxed).max(1) as f64;
        let limit = Limit {
            per_milli: self.factor * (total + 1.0) / w,
        };
        !limit.admits(s, weight_milli)
    }

    /// The bound for a pick among `c`: re-sums the ready weight when it is due.
    pub fn limit(&self, c: &Candidates) -> Limit {
        let now = now_us();
        let at = self.summed_at.load(Ordering::Relaxed);
        if now.saturating_sub(at) >= RESUM_US
            && self
                .summed_at
                .compare_exchange(at, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let w: u64 = c
                .states
                .iter()
                .filter(|s| s.is_ready())
                .map(|s| s.effective_weight_milli(c.slow_start))
                .sum();
            self.ready_weight.store(w, Ordering::Relaxed);
        }
        let total = self.total.load(Ordering::Relaxed) as f64;
        let w = self.ready_weight.load(Ordering::Relaxed).max(1) as f64;
        Limit {
            per_milli: self.factor * (total + 1.0) / w,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::InflightGuard;

    #[test]
    fn the_bound_is_the_factor_of_the_weighted_average_rounded_up() {
        // 4 equal backends, 15 in flight: the 16th request may make a backend hold
        // ceil(1.25 * 16 / 4) = 5.
        assert_eq!(bound(1.25, 15, 1000, 4000), 5);
        assert_eq!(bound(1.25, 0, 1000, 4000), 1, "an idle pool: one each");
        assert_eq!(bound(2.0, 9, 3000, 6000), 10, "half the weight");
        assert_eq!(bound(1.1, 99, 1000, 100_000), 2, "rounded up");
    }

    fn states(n: usize) -> Vec<Arc<BackendState>> {
        (0..n)
            .map(|i| {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16));
                Arc::new(BackendState::new(addr.to_string(), addr, 1, false, false))
            })
            .collect()
    }

    #[test]
    fn a_limit_admits_up_to_the_bound_and_counts_the_pool() {
        let s = states(4);
        let b = Bound::new(1.25, &s);
        for st in &s {
            st.count_in(Some(b.total().clone()));
        }
        let c = Candidates {
            states: &s,
            skip: &|_| false,
            slow_start: None,
        };
        let mut held = Vec::new();
        // Pile requests onto backend 0 while the limit admits it.
        while b.limit(&c).admits(&s[0], 1000) {
            held.push(InflightGuard::acquire(s[0].clone()));
            assert!(held.len() < 10);
        }
        // With n held, admitting needs n + 1 <= ceil(1.25 * (n + 1) / 4): stops at 1.
        assert_eq!(held.len(), 1);
        assert_eq!(b.total().load(Ordering::Relaxed), 1);
        // Load elsewhere raises the bound.
        let others: Vec<_> = (0..11)
            .map(|k| InflightGuard::acquire(s[1 + k % 3].clone()))
            .collect();
        assert_eq!(b.total().load(Ordering::Relaxed), 12);
        // With n held and 11 elsewhere: n < ceil(1.25 * (12 + n) / 4) fails first at n = 6.
        while b.limit(&c).admits(&s[0], 1000) {
            held.push(InflightGuard::acquire(s[0].clone()));
            assert!(held.len() < 10);
        }
        assert_eq!(held.len(), 6, "{}", b.total().load(Ordering::Relaxed));
        drop(others);
        drop(held);
        assert_eq!(b.total().load(Ordering::Relaxed), 0, "every guard released");
    }
}
