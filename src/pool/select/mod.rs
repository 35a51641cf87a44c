//! fulcrum's selectors. Each picks one pool index among the backends a request may use, by
//! weight: backends that are not ready, that the request already tried, or that ramp up under
//! slow start are taken into account by the pick itself, so that a lost backend's share spreads
//! over the survivors in proportion to their weights instead of falling to its neighbour.

pub mod bounded;
pub mod ketama;
pub mod least_conn;
pub mod p2c;
pub mod smooth;

use std::sync::Arc;
use std::time::Duration;

use crate::pool::BackendState;

pub use bounded::Bound;
pub use ketama::Ketama;
pub use least_conn::LoadTree;
pub use p2c::PeakEwma;
pub use smooth::{Order, SmoothWeighted};

/// What one pick may choose from: the pool's backends (by pool index), the ones this request
/// must skip, and the pool's slow start.
pub struct Candidates<'a> {
    pub states: &'a [Arc<BackendState>],
    pub skip: &'a dyn Fn(usize) -> bool,
    pub slow_start: Option<Duration>,
}

impl Candidates<'_> {
    /// Whether backend `i` may take this request: ready, and not skipped.
    pub fn usable(&self, i: usize) -> bool {
        self.states.get(i).is_some_and(|s| s.is_ready()) && !(self.skip)(i)
    }

    /// The share of its weight backend `i` takes now (1 unless it ramps up under slow start).
    pub fn ramp(&self, i: usize) -> f64 {
        self.states.get(i).map_or(0.0, |s| s.ramp(self.slow_start))
    }

    /// Any usable backend, scanning from a random start: the last resort of a selector whose
    /// own walk found none (it ignores ramps, which only shape shares).
    pub fn any_usable(&self) -> Option<usize> {
        let n = self.states.len();
        if n == 0 {
            return None;
        }
        let start = fastrand::usize(..n);
        (0..n).map(|k| (start + k) % n).find(|&i| self.usable(i))
    }
}
