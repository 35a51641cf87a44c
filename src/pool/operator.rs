//! What an operator set for one backend through the runtime API: drained, disabled, or a
//! weight of its own. Kept across reloads and re-resolutions while the backend's configuration
//! is unchanged; a changed configuration wins (`reset`).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Instant;

/// Whether the backend takes new requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// As its health says.
    Active,
    /// No new requests; requests pinned to it by affinity still come until the pool's
    /// `drain_timeout`, then their sessions re-pin.
    Draining,
    /// No requests at all; pinned sessions re-pin at once.
    Disabled,
}

impl Mode {
    fn from_u8(v: u8) -> Mode {
        match v {
            1 => Mode::Draining,
            2 => Mode::Disabled,
            _ => Mode::Active,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Mode::Active => 0,
            Mode::Draining => 1,
            Mode::Disabled => 2,
        }
    }
}

/// A backend's operator settings (lock-free: the request path reads `mode`).
#[derive(Debug)]
pub struct Operator {
    mode: AtomicU8,
    /// When the drain began, in ms since `epoch` (0: not draining).
    drain_since_ms: AtomicU64,
    /// The operator's weight (0: the configured one).
    weight: AtomicU32,
    epoch: Instant,
}

impl Default for Operator {
    fn default() -> Self {
        Operator {
            mode: AtomicU8::new(Mode::Active.as_u8()),
            drain_since_ms: AtomicU64::new(0),
            weight: AtomicU32::new(0),
            epoch: Instant::now(),
        }
    }
}

impl Operator {
    pub fn mode(&self) -> Mode {
        Mode::from_u8(self.mode.load(Ordering::Relaxed))
    }

    /// Set the mode; returns whether it changed. A drain starts its clock when it begins.
    pub fn set_mode(&self, mode: Mode) -> bool {
        let old = Mode::from_u8(self.mode.swap(mode.as_u8(), Ordering::Relaxed));
        if old != mode && mode == Mode::Draining {
            let now = self.epoch.elapsed().as_millis() as u64 + 1;
            self.drain_since_ms.store(now, Ordering::Relaxed);
        }
        old != mode
    }

    /// Whether the backend may take new (unpinned) requests.
    pub fn takes_new(&self) -> bool {
        self.mode() == Mode::Active
    }

    /// Whether a request pinned to the backend may still go to it: always while active; while
    /// draining, until `drain_timeout` has passed since the drain began.
    pub fn keeps_pinned(&self, drain_timeout: std::time::Duration) -> bool {
        match self.mode() {
            Mode::Active => true,
            Mode::Disabled => false,
            Mode::Draining => {
                let since = self.drain_since_ms.load(Ordering::Relaxed);
                let now = self.epoch.elapsed().as_millis() as u64 + 1;
                now.saturating_sub(since) < drain_timeout.as_millis() as u64
            }
        }
    }

    /// The operator's weight, if one is set.
    pub fn weight(&self) -> Option<u32> {
        Some(self.weight.load(Ordering::Relaxed)).filter(|&w| w > 0)
    }

    /// Set (or with None, clear) the operator's weight; returns whether it changed.
    pub fn set_weight(&self, weight: Option<u32>) -> bool {
        self.weight.swap(weight.unwrap_or(0), Ordering::Relaxed) != weight.unwrap_or(0)
    }

    /// The configuration of the backend changed: it wins over what the operator set.
    pub fn reset(&self) {
        self.set_mode(Mode::Active);
        self.set_weight(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_drain_keeps_pinned_requests_until_its_timeout_and_a_reset_ends_it() {
        let o = Operator::default();
        assert!(o.takes_new() && o.keeps_pinned(Duration::ZERO));
        assert!(o.set_mode(Mode::Draining));
        assert!(!o.set_mode(Mode::Draining), "no change the second time");
        assert!(!o.takes_new());
        assert!(o.keeps_pinned(Duration::from_secs(60)));
        assert!(!o.keeps_pinned(Duration::ZERO));
        o.set_mode(Mode::Disabled);
        assert!(!o.keeps_pinned(Duration::from_secs(60)));
        assert!(o.set_weight(Some(7)));
        assert_eq!(o.weight(), Some(7));
        o.reset();
        assert_eq!((o.mode(), o.weight()), (Mode::Active, None));
    }
}
