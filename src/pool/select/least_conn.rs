//! Least connections: fewest in-flight requests per unit of weight first, ties to the backend
//! picked longest ago. A tournament tree over the pool's backends keeps the winner at its root:
//! a pick is O(1) plus O(log n) per backend it has to pass over, and every start or end of a
//! request re-ranks one leaf in O(log n) (HAProxy keeps its leastconn tree the same way). The
//! counters themselves live in the pool's `BackendState`s, so a rebuild keeps them.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use pingora_load_balancing::selection::{BackendIter, BackendSelection};
use pingora_load_balancing::Backend;

use crate::pool::BackendState;

/// How often every leaf is re-read from its backend: picks up what no event announces (an
/// ejection running out, a backend becoming ready again) and heals any missed update.
const REFRESH: Duration = Duration::from_millis(100);
/// The winner of a subtree that has no backend (padding to a power of two).
const NONE: u32 = u32::MAX;

/// One pool's tree. Leaf `i` is the pool's backend `i` (both sorted by address).
pub struct LoadTree {
    states: Arc<[Arc<BackendState>]>,
    inner: Mutex<Tree>,
}

struct Tree {
    leaves: Vec<Leaf>,
    /// Heap layout: `winners[1]` is the root, `winners[width + i]` is leaf `i`.
    winners: Vec<u32>,
    width: usize,
    /// Incremented by every pick: a leaf's `picked` orders ties, oldest first.
    clock: u64,
    refreshed: Instant,
}

#[derive(Clone, Copy)]
struct Leaf {
    inflight: u64,
    weight: u64,
    picked: u64,
    /// Found not ready: out of the running until the next refresh.
    parked: bool,
    /// Skipped by the current pick (a backend the request already tried).
    excluded: bool,
}

impl LoadTree {
    /// A tree over `states`, which every state then notifies of its in-flight changes.
    pub fn attach(states: Arc<[Arc<BackendState>]>) -> Arc<LoadTree> {
        let n = states.len();
        let width = n.next_power_of_two().max(1);
        let leaves = states
            .iter()
            .enumerate()
            .map(|(i, s)| Leaf {
                inflight: s.inflight() as u64,
                weight: u64::from(s.weight().max(1)),
                // The first round goes in address order.
                picked: i as u64,
                parked: false,
                excluded: false,
            })
            .collect();
        let mut tree = Tree {
            leaves,
            winners: vec![NONE; 2 * width],
            width,
            clock: n as u64,
            refreshed: Instant::now(),
        };
        tree.rebuild();
        let tree = Arc::new(LoadTree {
            states,
            inner: Mutex::new(tree),
        });
        for (i, s) in tree.states.iter().enumerate() {
            s.attach_tree(Arc::downgrade(&tree), i);
        }
        // Counts that changed while the states still pointed at a previous tree.
        tree.lock().refresh(&tree.states);
        tree
    }

    fn lock(&self) -> MutexGuard<'_, Tree> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The least loaded backend that is `ready` and not `skip`ped; counts as picked (for ties).
    pub fn pick(
        &self,
        ready: impl Fn(usize) -> bool,
        skip: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let mut t = self.lock();
        if t.refreshed.elapsed() >= REFRESH {
            t.refresh(&self.states);
        }
        let mut excluded = Vec::new();
        let found = loop {
            let i = t.winners[1];
            if i == NONE || t.leaves[i as usize].out() {
                break None;
            }
            let i = i as usize;
            if skip(i) {
                t.leaves[i].excluded = true;
                excluded.push(i);
            } else if !ready(i) {
                t.leaves[i].parked = true;
            } else {
                t.clock += 1;
                t.leaves[i].picked = t.clock;
                t.replay(i);
                break Some(i);
            }
            t.replay(i);
        };
        for i in excluded {
            t.leaves[i].excluded = false;
            t.replay(i);
        }
        found
    }

    /// Backend `i`'s in-flight count changed: re-rank it.
    pub fn changed(&self, i: usize) {
        let Some(state) = self.states.get(i) else {
            return;
        };
        let mut t = self.lock();
        t.leaves[i].inflight = state.inflight() as u64;
        t.replay(i);
    }
}

impl Leaf {
    fn out(&self) -> bool {
        self.parked || self.excluded
    }
}

impl Tree {
    /// Whether leaf `a` beats leaf `b`: in the running, then less load per weight, then picked
    /// longer ago.
    fn beats(&self, a: u32, b: u32) -> bool {
        if b == NONE {
            return true;
        }
        if a == NONE {
            return false;
        }
        let (x, y) = (&self.leaves[a as usize], &self.leaves[b as usize]);
        if x.out() != y.out() {
            return !x.out();
        }
        let (lx, ly) = (x.inflight * y.weight, y.inflight * x.weight);
        lx < ly || (lx == ly && x.picked < y.picked)
    }

    /// Replay the matches on the path from leaf `i` to the root.
    fn replay(&mut self, i: usize) {
        let mut node = (self.width + i) / 2;
        while node >= 1 {
            let (l, r) = (self.winners[2 * node], self.winners[2 * node + 1]);
            self.winners[node] = if self.beats(r, l) { r } else { l };
            node /= 2;
        }
    }

    fn rebuild(&mut self) {
        for (i, w) in self.winners[self.width..].iter_mut().enumerate() {
            *w = if i < self.leaves.len() {
                i as u32
            } else {
                NONE
            };
        }
        for node in (1..self.width).rev() {
            let (l, r) = (self.winners[2 * node], self.winners[2 * node + 1]);
            self.winners[node] = if self.beats(r, l) { r } else { l };
        }
    }

    /// Re-read every leaf and give parked backends another chance.
    fn refresh(&mut self, states: &[Arc<BackendState>]) {
        for (leaf, s) in self.leaves.iter_mut().zip(states) {
            leaf.inflight = s.inflight() as u64;
            leaf.weight = u64::from(s.weight().max(1));
            leaf.parked = false;
        }
        self.rebuild();
        self.refreshed = Instant::now();
    }
}

/// Where a backend's state reports its in-flight changes: its leaf in the pool's current tree.
#[derive(Debug)]
pub struct TreeLeaf {
    tree: Weak<LoadTree>,
    index: usize,
}

impl TreeLeaf {
    pub fn new(tree: Weak<LoadTree>, index: usize) -> Self {
        TreeLeaf { tree, index }
    }

    pub fn changed(&self) {
        if let Some(tree) = self.tree.upgrade() {
            tree.changed(self.index);
        }
    }
}

/// The `BackendSelection` for a least-connections pool: its backends and their tree.
pub struct LeastConnections {
    backends: Box<[Backend]>,
    tree: Arc<LoadTree>,
}

impl LeastConnections {
    pub fn tree(&self) -> &LoadTree {
        &self.tree
    }
}

impl BackendSelection for LeastConnections {
    type Iter = LeastConnIter;
    type Config = Arc<LoadTree>;

    fn build_with_config(backends: &BTreeSet<Backend>, tree: &Arc<LoadTree>) -> Self {
        LeastConnections {
            backends: backends.iter().cloned().collect(),
            tree: tree.clone(),
        }
    }

    /// Without a pool's states (Pingora's interface): counters of its own.
    fn build(backends: &BTreeSet<Backend>) -> Self {
        let states: Vec<Arc<BackendState>> = backends
            .iter()
            .map(|b| Arc::new(BackendState::detached(b)))
            .collect();
        Self::build_with_config(backends, &LoadTree::attach(states.into()))
    }

    /// Pingora's interface (fulcrum picks through the tree): the least loaded backend, then
    /// the others in order.
    fn iter(self: &Arc<Self>, _key: &[u8]) -> LeastConnIter {
        let first = self.tree.pick(|_| true, |_| false);
        LeastConnIter {
            selector: self.clone(),
            first,
            started: false,
            next: 0,
        }
    }
}

pub struct LeastConnIter {
    selector: Arc<LeastConnections>,
    first: Option<usize>,
    started: bool,
    next: usize,
}

impl BackendIter for LeastConnIter {
    fn next(&mut self) -> Option<&Backend> {
        if !self.started {
            self.started = true;
            if let Some(i) = self.first {
                return self.selector.backends.get(i);
            }
        }
        while self.next < self.selector.backends.len() {
            let i = self.next;
            self.next += 1;
            if Some(i) != self.first {
                return self.selector.backends.get(i);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::InflightGuard;
    use proptest::prelude::*;

    fn tree(weights: &[u32]) -> (Arc<LoadTree>, Arc<[Arc<BackendState>]>) {
        let states: Arc<[Arc<BackendState>]> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16));
                Arc::new(BackendState::new(addr.to_string(), addr, *w, false))
            })
            .collect::<Vec<_>>()
            .into();
        (LoadTree::attach(states.clone()), states)
    }

    fn first(t: &LoadTree) -> usize {
        t.pick(|_| true, |_| false).unwrap()
    }

    #[test]
    fn picks_the_least_loaded() {
        let (t, s) = tree(&[1, 1, 1]);
        let _a = InflightGuard::acquire(s[0].clone());
        let _b = InflightGuard::acquire(s[1].clone());
        for _ in 0..5 {
            assert_eq!(first(&t), 2);
        }
    }

    #[test]
    fn ties_rotate() {
        let (t, _s) = tree(&[1, 1, 1]);
        let got: Vec<usize> = (0..6).map(|_| first(&t)).collect();
        assert_eq!(got, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn load_is_divided_by_weight() {
        let (t, s) = tree(&[4, 1]);
        let _g: Vec<_> = (0..3)
            .map(|_| InflightGuard::acquire(s[0].clone()))
            .collect();
        // 3/4 < 1/1 once the light backend has one in flight
        let _h = InflightGuard::acquire(s[1].clone());
        assert_eq!(first(&t), 0);
    }

    #[test]
    fn a_released_request_makes_its_backend_least_loaded_again() {
        let (t, s) = tree(&[1, 1]);
        let a = InflightGuard::acquire(s[0].clone());
        let _b = InflightGuard::acquire(s[1].clone());
        let _b2 = InflightGuard::acquire(s[1].clone());
        assert_eq!(first(&t), 0);
        drop(a);
        assert_eq!(first(&t), 0);
    }

    #[test]
    fn skipped_and_unready_backends_are_passed_over() {
        let (t, _s) = tree(&[1, 1, 1]);
        assert_eq!(t.pick(|i| i != 0, |i| i == 1), Some(2));
        // Skipping is for one pick only; backend 0 stays parked until the next refresh.
        assert_eq!(t.pick(|_| true, |_| false), Some(1));
        assert_eq!(t.pick(|_| false, |_| false), None);
        t.lock().refresh(&t.states);
        assert_eq!(t.pick(|i| i == 0, |_| false), Some(0));
    }

    #[test]
    fn a_new_tree_takes_over_the_counts() {
        let (old, s) = tree(&[1, 1]);
        let g = InflightGuard::acquire(s[0].clone());
        let new = LoadTree::attach(s.clone());
        assert_eq!(first(&new), 1);
        drop(g);
        // The release reached the new tree: both idle, 0 was picked longest ago.
        assert_eq!(first(&new), 0);
        drop(old);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Against a plain scan: whatever the counts and weights, the pick has the least load
        /// per weight among the ready, unskipped backends.
        #[test]
        fn the_pick_is_a_least_loaded_backend(
            weights in proptest::collection::vec(1u32..5, 1..70),
            loads in proptest::collection::vec(0usize..6, 70),
            ready_mask in any::<u128>(),
            skip_mask in any::<u128>(),
        ) {
            let (t, s) = tree(&weights);
            let _guards: Vec<_> = s.iter().zip(&loads)
                .flat_map(|(st, &l)| (0..l).map(|_| InflightGuard::acquire(st.clone())).collect::<Vec<_>>())
                .collect();
            let ready = |i: usize| ready_mask >> i & 1 == 1;
            let skip = |i: usize| skip_mask >> i & 1 == 1 && i.is_multiple_of(3);
            let load = |i: usize| s[i].inflight() as f64 / weights[i] as f64;
            let best = (0..s.len()).filter(|&i| ready(i) && !skip(i)).map(load).reduce(f64::min);
            let got = t.pick(ready, skip);
            match (got, best) {
                (None, None) => {}
                (Some(i), Some(b)) => {
                    prop_assert!(ready(i) && !skip(i));
                    prop_assert!((load(i) - b).abs() < 1e-9);
                }
                other => prop_assert!(false, "{other:?}"),
            }
        }
    }
}
