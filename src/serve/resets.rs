//! HTTP/2 stream resets per client address: a client that keeps resetting the streams it opens
//! (rapid reset, CVE-2023-44487), also spread over many short connections, is cut off for a
//! while: its new connections are refused and its streams are not forwarded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Resets are counted over this window per address.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Resets within one window that cut an address off. A browser cancels a few streams when a
/// page is left; this many in 10 s is an attack (or a broken client).
pub const MAX_RESETS: u32 = 30;
/// How long an address stays cut off (counted from its last reset while cut off).
pub const PENALTY: Duration = Duration::from_secs(10);
/// Addresses tracked at most; beyond, entries whose window is over are dropped first, then new
/// addresses go uncounted until there is room (the ledger's memory is bounded).
const MAX_ADDRESSES: usize = 10_000;

#[derive(Clone, Copy)]
struct Entry {
    since: Instant,
    resets: u32,
    cut_off_until: Option<Instant>,
}

/// Resets per client address, in the current window.
pub struct ResetLedger {
    entries: Mutex<HashMap<IpAddr, Entry>>,
    /// When the last penalty given ends, in milliseconds since `base`: while no address is cut
    /// off (the usual case), `cut_off` answers without taking the lock.
    penalties_end: AtomicU64,
    base: Instant,
}

impl Default for ResetLedger {
    fn default() -> Self {
        ResetLedger {
            entries: Mutex::new(HashMap::new()),
            penalties_end: AtomicU64::new(0),
            base: Instant::now(),
        }
    }
}

impl ResetLedger {
    /// Count one stream `ip` reset before it was answered; true when this one cuts it off (once
    /// per penalty: the caller logs and counts it).
    pub fn reset(&self, ip: IpAddr, now: Instant) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ADDRESSES && !entries.contains_key(&ip) {
            entries.retain(|_, e| live(e, now));
            if entries.len() >= MAX_ADDRESSES {
                return false;
            }
        }
        let e = entries.entry(ip).or_insert(Entry {
            since: now,
            resets: 0,
            cut_off_until: None,
        });
        if let Some(until) = e.cut_off_until {
            if now < until {
                e.cut_off_until = Some(now + PENALTY);
                self.penalty_until(now + PENALTY);
                return false;
            }
            e.cut_off_until = None;
        }
        if now.duration_since(e.since) > WINDOW {
            e.since = now;
            e.resets = 0;
        }
        e.resets = e.resets.saturating_add(1);
        if e.resets >= MAX_RESETS {
            e.cut_off_until = Some(now + PENALTY);
            e.resets = 0;
            e.since = now;
            self.penalty_until(now + PENALTY);
            return true;
        }
        false
    }

    /// Whether `ip` is cut off now.
    pub fn cut_off(&self, ip: IpAddr, now: Instant) -> bool {
        if self.millis(now) >= self.penalties_end.load(Ordering::Relaxed) {
            return false;
        }
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(&ip)
            .and_then(|e| e.cut_off_until)
            .is_some_and(|until| now < until)
    }
}

impl ResetLedger {
    /// Some address is cut off until `until`.
    fn penalty_until(&self, until: Instant) {
        self.penalties_end
            .fetch_max(self.millis(until).saturating_add(1), Ordering::Relaxed);
    }

    fn millis(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX)
    }
}

/// Whether an entry still says something: its window or its penalty is not over.
fn live(e: &Entry, now: Instant) -> bool {
    now.duration_since(e.since) <= WINDOW || e.cut_off_until.is_some_and(|u| now < u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_cut_off_at_the_limit_and_back_after_the_penalty() {
        let ledger = ResetLedger::default();
        let ip: IpAddr = [10, 0, 0, 1].into();
        let other: IpAddr = [10, 0, 0, 2].into();
        let t0 = Instant::now();
        for k in 1..MAX_RESETS {
            assert!(!ledger.reset(ip, t0), "reset {k}");
        }
        assert!(!ledger.cut_off(ip, t0));
        assert!(ledger.reset(ip, t0), "the limit cuts it off");
        assert!(ledger.cut_off(ip, t0));
        assert!(!ledger.cut_off(other, t0), "only that address");
        assert!(!ledger.reset(ip, t0), "cut off once, not again");
        assert!(ledger.cut_off(ip, t0 + PENALTY - Duration::from_millis(1)));
        assert!(!ledger.cut_off(ip, t0 + PENALTY));
    }

    #[test]
    fn resets_spread_over_more_than_a_window_do_not_add_up() {
        let ledger = ResetLedger::default();
        let ip: IpAddr = [10, 0, 0, 1].into();
        let t0 = Instant::now();
        for k in 0..3 * MAX_RESETS {
            let t = t0 + WINDOW * k / (MAX_RESETS / 2);
            assert!(!ledger.reset(ip, t), "reset {k}");
        }
    }

    #[test]
    fn memory_is_bounded() {
        let ledger = ResetLedger::default();
        let t0 = Instant::now();
        for k in 0..(MAX_ADDRESSES as u32 + 100) {
            ledger.reset(IpAddr::from(k.to_be_bytes()), t0);
        }
        let n = ledger.entries.lock().unwrap().len();
        assert_eq!(n, MAX_ADDRESSES);
        // Once the windows are over, new addresses are counted again.
        let later = t0 + WINDOW * 2;
        ledger.reset([192, 0, 2, 1].into(), later);
        assert_eq!(ledger.entries.lock().unwrap().len(), 1);
    }
}
