//! The retry budget of a pool: retries may add at most `ratio` of the pool's requests over a
//! sliding window, plus a floor of `min_per_second`, as Envoy's and linkerd2-proxy's budgets
//! do, so that a pool in trouble is not also buried under retries. Lock-free: the window is
//! ten slots of atomic counters, each stamped with the slot of time it counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::RetryBudgetConfig;

const SLOTS: usize = 10;

#[derive(Default)]
struct Slot {
    /// Which slot of time (since `born`, in slot widths) the counts belong to, plus one.
    stamp: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

pub struct RetryBudget {
    ratio: f64,
    /// Retries the window always allows (min_per_second x window).
    floor: f64,
    slot_ms: u64,
    slots: [Slot; SLOTS],
    born: Instant,
}

impl RetryBudget {
    pub fn new(config: &RetryBudgetConfig) -> RetryBudget {
        RetryBudget {
            ratio: config.ratio,
            floor: f64::from(config.min_per_second) * config.window.as_secs_f64(),
            slot_ms: (config.window.as_millis() as u64 / SLOTS as u64).max(1),
            slots: Default::default(),
            born: Instant::now(),
        }
    }

    /// The current slot of time's stamp.
    fn stamp(&self) -> u64 {
        self.born.elapsed().as_millis() as u64 / self.slot_ms + 1
    }

    /// The slot for `stamp`, cleared first if it still holds an older slot of time.
    fn slot(&self, stamp: u64) -> Option<&Slot> {
        let slot = self.slots.get((stamp % SLOTS as u64) as usize)?;
        let old = slot.stamp.load(Ordering::Relaxed);
        if old != stamp
            && slot
                .stamp
                .compare_exchange(old, stamp, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        Some(slot)
    }

    /// Count a request of the pool (its first attempt).
    pub fn request(&self) {
        if let Some(s) = self.slot(self.stamp()) {
            s.requests.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether one more retry fits the budget; if so, it is counted.
    pub fn try_retry(&self) -> bool {
        let now = self.stamp();
        let (mut requests, mut retries) = (0u64, 0u64);
        for s in &self.slots {
            let stamp = s.stamp.load(Ordering::Relaxed);
            if stamp + SLOTS as u64 > now {
                requests += s.requests.load(Ordering::Relaxed);
                retries += s.retries.load(Ordering::Relaxed);
            }
        }
        if retries as f64 >= self.ratio * requests as f64 + self.floor {
            return false;
        }
        if let Some(s) = self.slot(now) {
            s.retries.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// The window the budget covers.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.slot_ms * SLOTS as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, min_per_second: u32) -> RetryBudget {
        RetryBudget::new(&RetryBudgetConfig {
            ratio,
            min_per_second,
            window: Duration::from_secs(10),
        })
    }

    #[test]
    fn retries_are_a_share_of_requests_plus_a_floor() {
        let b = budget(0.2, 1);
        for _ in 0..100 {
            b.request();
        }
        // 20% of 100, plus 1/s x 10 s.
        let allowed = (0..100).filter(|_| b.try_retry()).count();
        assert_eq!(allowed, 30);
        for _ in 0..50 {
            b.request();
        }
        assert_eq!((0..100).filter(|_| b.try_retry()).count(), 10);
        assert_eq!(b.window(), Duration::from_secs(10));
    }

    #[test]
    fn no_ratio_and_no_floor_allows_nothing() {
        let b = budget(0.0, 0);
        b.request();
        assert!(!b.try_retry());
    }
}
