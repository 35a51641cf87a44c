//! Least connections as a Pingora `BackendSelection`: fewest in-flight requests per unit of
//! weight first, ties rotating. The counters live in the pool's `BackendState`s, outside the
//! selector, so a rebuild keeps them.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pingora_load_balancing::selection::{BackendIter, BackendSelection};
use pingora_load_balancing::Backend;

use crate::pool::BackendState;

/// The in-flight counters a selector reads: the pool's backends, sorted by address.
pub type Counters = Arc<[Arc<BackendState>]>;

pub struct LeastConnections {
    backends: Box<[Backend]>,
    /// `states[i]` counts the requests in flight to `backends[i]`.
    states: Box<[Arc<BackendState>]>,
    rotation: AtomicUsize,
}

impl BackendSelection for LeastConnections {
    type Iter = LeastConnIter;
    type Config = Counters;

    fn build_with_config(backends: &BTreeSet<Backend>, counters: &Counters) -> Self {
        let mut list = Vec::with_capacity(backends.len());
        let mut states = Vec::with_capacity(backends.len());
        for b in backends {
            let state = b
                .addr
                .as_inet()
                .and_then(|addr| {
                    let i = counters.binary_search_by_key(addr, |s| s.addr).ok()?;
                    Some(counters[i].clone())
                })
                .unwrap_or_else(|| Arc::new(BackendState::detached(b)));
            list.push(b.clone());
            states.push(state);
        }
        LeastConnections {
            backends: list.into(),
            states: states.into(),
            rotation: AtomicUsize::new(0),
        }
    }

    fn build(backends: &BTreeSet<Backend>) -> Self {
        Self::build_with_config(backends, &Counters::from(Vec::new()))
    }

    fn iter(self: &Arc<Self>, _key: &[u8]) -> LeastConnIter {
        LeastConnIter {
            start: self.rotation.fetch_add(1, Ordering::Relaxed),
            last: None,
            steps: 0,
            selector: self.clone(),
        }
    }
}

/// A backend's place in the order: load per weight, then its rank in this request's rotation.
#[derive(Clone, Copy)]
struct Rank {
    inflight: usize,
    weight: usize,
    rotation: usize,
}

impl Rank {
    fn cmp(&self, other: &Rank) -> CmpOrdering {
        let a = self.inflight as u128 * other.weight as u128;
        let b = other.inflight as u128 * self.weight as u128;
        a.cmp(&b).then(self.rotation.cmp(&other.rotation))
    }
}

/// Yields backends from least to most loaded (each step rescans: O(n), as nginx's).
pub struct LeastConnIter {
    selector: Arc<LeastConnections>,
    start: usize,
    last: Option<Rank>,
    steps: usize,
}

impl BackendIter for LeastConnIter {
    fn next(&mut self) -> Option<&Backend> {
        let s = &self.selector;
        let n = s.backends.len();
        if self.steps >= n {
            return None;
        }
        self.steps += 1;
        let offset = self.start % n;
        let mut best: Option<(Rank, usize)> = None;
        for (i, state) in s.states.iter().enumerate() {
            let rank = Rank {
                inflight: state.inflight(),
                weight: s.backends[i].weight.max(1),
                rotation: (i + n - offset) % n,
            };
            if let Some(last) = &self.last {
                if rank.cmp(last) != CmpOrdering::Greater {
                    continue;
                }
            }
            if best
                .as_ref()
                .is_none_or(|(b, _)| rank.cmp(b) == CmpOrdering::Less)
            {
                best = Some((rank, i));
            }
        }
        let (rank, i) = best?;
        self.last = Some(rank);
        Some(&s.backends[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::InflightGuard;

    fn setup(specs: &[(&str, usize)]) -> (Arc<LeastConnections>, Counters) {
        let set: BTreeSet<Backend> = specs
            .iter()
            .map(|(a, w)| Backend::new_with_weight(a, *w).unwrap())
            .collect();
        let counters: Counters = set
            .iter()
            .map(|b| Arc::new(BackendState::detached(b)))
            .collect::<Vec<_>>()
            .into();
        (
            Arc::new(LeastConnections::build_with_config(&set, &counters)),
            counters,
        )
    }

    fn first(sel: &Arc<LeastConnections>) -> String {
        sel.iter(b"").next().unwrap().addr.to_string()
    }

    #[test]
    fn picks_the_least_loaded() {
        let (sel, c) = setup(&[("127.0.0.1:1", 1), ("127.0.0.1:2", 1), ("127.0.0.1:3", 1)]);
        let _a = InflightGuard::acquire(c[0].clone());
        let _b = InflightGuard::acquire(c[1].clone());
        for _ in 0..5 {
            assert_eq!(first(&sel), "127.0.0.1:3");
        }
    }

    #[test]
    fn ties_rotate() {
        let (sel, _c) = setup(&[("127.0.0.1:1", 1), ("127.0.0.1:2", 1), ("127.0.0.1:3", 1)]);
        let got: Vec<String> = (0..3).map(|_| first(&sel)).collect();
        assert_eq!(got, ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
    }

    #[test]
    fn load_is_divided_by_weight() {
        let (sel, c) = setup(&[("127.0.0.1:1", 4), ("127.0.0.1:2", 1)]);
        let _g: Vec<_> = (0..3)
            .map(|_| InflightGuard::acquire(c[0].clone()))
            .collect();
        // 3/4 < 1/1 once the light backend has one in flight
        let _h = InflightGuard::acquire(c[1].clone());
        assert_eq!(first(&sel), "127.0.0.1:1");
    }

    #[test]
    fn iteration_visits_each_backend_once_in_load_order() {
        let (sel, c) = setup(&[("127.0.0.1:1", 1), ("127.0.0.1:2", 1), ("127.0.0.1:3", 1)]);
        let _g: Vec<_> = (0..2)
            .map(|_| InflightGuard::acquire(c[0].clone()))
            .collect();
        let _h = InflightGuard::acquire(c[1].clone());
        let mut it = sel.iter(b"");
        let mut order = Vec::new();
        while let Some(b) = it.next() {
            order.push(b.addr.to_string());
        }
        assert_eq!(order, ["127.0.0.1:3", "127.0.0.1:2", "127.0.0.1:1"]);
    }
}
