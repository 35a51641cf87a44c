//! Rate-limited logging: at most a few messages per second per source, and a count of what was
//! held back, so that a storm of failing requests does not flood the journal; and `Outage`, for
//! something that fails or works, told once each way.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

/// Something that fails or works, said once each way: its first failure and its recovery.
#[derive(Debug, Default)]
pub struct Outage(AtomicBool);

impl Outage {
    /// Record whether it `failed` now; true when that changed (the caller says so then).
    pub fn set(&self, failed: bool) -> bool {
        self.0.swap(failed, Ordering::Relaxed) != failed
    }
}

/// Messages allowed per one-second window.
const PER_SECOND: u32 = 5;

/// One source of messages (e.g. a pool).
#[derive(Debug)]
pub struct LogLimit {
    born: Instant,
    window: AtomicU64,
    count: AtomicU32,
    suppressed: AtomicU64,
}

impl Default for LogLimit {
    fn default() -> Self {
        LogLimit {
            born: Instant::now(),
            window: AtomicU64::new(0),
            count: AtomicU32::new(0),
            suppressed: AtomicU64::new(0),
        }
    }
}

impl LogLimit {
    /// Whether a message may be logged now; if so, how many were held back before it.
    pub fn allow(&self) -> Option<u64> {
        let now = self.born.elapsed().as_secs();
        if self.window.swap(now, Ordering::Relaxed) != now {
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < PER_SECOND {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_told_once_each_way() {
        let o = Outage::default();
        assert!(!o.set(false), "working from the start: nothing to say");
        assert!(o.set(true));
        assert!(!o.set(true));
        assert!(o.set(false));
        assert!(!o.set(false));
    }

    #[test]
    fn a_burst_is_cut_and_counted() {
        let r = LogLimit::default();
        let allowed = (0..100).filter(|_| r.allow().is_some()).count();
        // the burst may straddle a second boundary
        assert!(
            (PER_SECOND as usize..=2 * PER_SECOND as usize).contains(&allowed),
            "{allowed}"
        );
        assert!(r.suppressed.load(Ordering::Relaxed) >= 100 - 2 * PER_SECOND as u64);
    }
}
