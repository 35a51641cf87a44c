//! Local rate limiting: a GCRA (generic cell rate algorithm, the virtual-scheduling form of a
//! token bucket) per key, one theoretical arrival time per key, in sharded maps of bounded size.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::RateLimitConfig;

const SHARDS: usize = 16;
/// Keys tracked per shard (65,536 per route in all). When a shard is full of live keys, new
/// keys share one overflow budget: bounded memory, and no way around the limit.
const MAX_KEYS_PER_SHARD: usize = 4096;
/// The slot of the overflow budget.
const OVERFLOW: u64 = 0;

/// What the limiter decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Refused; a request of the same key is admitted again after this long.
    Deny {
        retry_after: Duration,
    },
}

/// The buckets of one route's `rate_limit`.
pub struct Limiter {
    pub config: RateLimitConfig,
    /// Emission interval T (ns): the steady spacing of requests.
    interval: u64,
    /// Tolerance tau = burst x T (ns): how far ahead of schedule a key may run.
    tolerance: u64,
    epoch: Instant,
    hasher: RandomState,
    shards: [Mutex<Shard>; SHARDS],
}

/// Key slot -> theoretical arrival time (ns after the epoch).
#[derive(Default)]
struct Shard {
    tats: HashMap<u64, u64>,
    /// No sweep of expired keys before this time: a full shard is swept at most once per
    /// tau + T (no key can expire sooner), so a flood of new keys costs O(1) each.
    next_sweep: u64,
}

impl Limiter {
    pub fn new(config: RateLimitConfig) -> Limiter {
        let interval = config.interval_nanos();
        Limiter {
            interval,
            tolerance: interval.saturating_mul(config.burst),
            config,
            epoch: Instant::now(),
            hasher: RandomState::new(),
            shards: std::array::from_fn(|_| Mutex::new(Shard::default())),
        }
    }

    /// Take one request of `key` from its budget.
    pub fn check(&self, key: &[u8]) -> Decision {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.check_at(key, now)
    }

    /// As `check`, at `now` nanoseconds after the limiter's epoch.
    fn check_at(&self, key: &[u8], now: u64) -> Decision {
        let mut slot = self.hasher.hash_one(key);
        let Some(shard) = self.shards.get((slot % SHARDS as u64) as usize) else {
            return Decision::Allow;
        };
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        if shard.tats.len() >= MAX_KEYS_PER_SHARD && !shard.tats.contains_key(&slot) {
            if now >= shard.next_sweep {
                // A key whose arrival time has passed is as good as absent.
                shard.tats.retain(|_, tat| *tat > now);
                shard.next_sweep = now
                    .saturating_add(self.tolerance)
                    .saturating_add(self.interval);
            }
            if shard.tats.len() >= MAX_KEYS_PER_SHARD {
                slot = OVERFLOW;
            }
        }
        let map = &mut shard.tats;
        let tat = map.get(&slot).copied().unwrap_or(now).max(now);
        if tat - now > self.tolerance {
            let wait = tat - now - self.tolerance;
            return Decision::Deny {
                retry_after: Duration::from_nanos(wait),
            };
        }
        map.insert(slot, tat.saturating_add(self.interval));
        Decision::Allow
    }
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HashKey, LimitKey};

    fn limiter(count: u64, burst: u64) -> Limiter {
        Limiter::new(RateLimitConfig {
            count,
            per: Duration::from_secs(1),
            burst,
            key: LimitKey::Request(HashKey::ClientIp),
            redis: None,
        })
    }

    #[test]
    fn a_fresh_key_gets_burst_plus_one_then_the_steady_rate() {
        let l = limiter(10, 5);
        let admitted = (0..20)
            .filter(|_| l.check_at(b"a", 0) == Decision::Allow)
            .count();
        assert_eq!(admitted, 6);
        assert_eq!(
            l.check_at(b"a", 0),
            Decision::Deny {
                retry_after: Duration::from_millis(100)
            }
        );
        // One more every 100 ms.
        assert_eq!(l.check_at(b"a", 100_000_000), Decision::Allow);
        assert!(matches!(
            l.check_at(b"a", 100_000_000),
            Decision::Deny { .. }
        ));
        // Over 10 s: 100 more, whatever the pace of asking.
        let later = (0..1000u64)
            .filter(|i| l.check_at(b"a", 100_000_000 + i * 10_000_000) == Decision::Allow)
            .count();
        assert!((99..=101).contains(&later), "{later}");
    }

    #[test]
    fn keys_have_their_own_budgets_and_idle_keys_refill() {
        let l = limiter(1, 0);
        assert_eq!(l.check_at(b"a", 0), Decision::Allow);
        assert!(matches!(l.check_at(b"a", 1), Decision::Deny { .. }));
        assert_eq!(l.check_at(b"b", 1), Decision::Allow);
        assert_eq!(l.check_at(b"a", 1_000_000_000), Decision::Allow);
    }

    #[test]
    fn a_full_table_puts_new_keys_on_one_overflow_budget() {
        let l = limiter(1, 0);
        let keys = (0..SHARDS * MAX_KEYS_PER_SHARD * 2).map(|i| i.to_le_bytes());
        let admitted = keys.filter(|k| l.check_at(k, 0) == Decision::Allow).count();
        // Every shard fills up; after that only one overflow request per shard gets in.
        assert!(admitted <= SHARDS * (MAX_KEYS_PER_SHARD + 1), "{admitted}");
        let tracked: usize = l.shards.iter().map(|s| s.lock().unwrap().tats.len()).sum();
        assert!(tracked <= SHARDS * (MAX_KEYS_PER_SHARD + 1));
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(100)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
