//! Least connections: fewest in-flight requests per unit of (effective) weight first; ties go
//! by weighted round robin (each pick advances the backend's "pass" by 1/weight, as in stride
//! scheduling, from no earlier than the latest pick's), so that at low concurrency shares
//! still follow the weights while a backend passed over for its load banks no turns. A tournament tree over the pool's backends keeps the winner at its root:
//! a pick is O(1) plus O(log n) per backend it has to pass over, and every start or end of a
//! request re-ranks one leaf in O(log n) (HAProxy keeps its leastconn tree the same way). The
//! counters themselves live in the pool's `BackendState`s, so a rebuild keeps them.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::Candidates;
use crate::pool::BackendState;

/// How often every leaf is re-read from its backend: picks up what no event announces (an
/// ejection running out, a backend becoming ready again, a slow-start ramp) and heals any
/// missed update.
const REFRESH: Duration = Duration::from_millis(100);
/// A pick advances a backend's pass by this much divided by its weight in thousandths.
const PASS_SCALE: u64 = 1 << 32;
/// The winner of a subtree that has no backend (padding to a power of two).
const NONE: u32 = u32::MAX;

/// One pool's tree. Leaf `i` is the pool's backend `i` (both sorted by address).
pub struct LoadTree {
    states: Arc<[Arc<BackendState>]>,
    slow_start: Option<Duration>,
    inner: Mutex<Tree>,
}

struct Tree {
    leaves: Vec<Leaf>,
    /// Heap layout: `winners[1]` is the root, `winners[width + i]` is leaf `i`.
    winners: Vec<u32>,
    width: usize,
    /// Where the latest pick's turn started: no pick's turn starts earlier.
    now: u64,
    refreshed: Instant,
}

#[derive(Clone, Copy)]
struct Leaf {
    inflight: u64,
    /// Effective weight, in thousandths.
    weight: u64,
    /// Virtual time of the backend's next turn among equally loaded backends.
    pass: u64,
    /// Found not ready: out of the running until the next refresh.
    parked: bool,
    /// Skipped by the current pick (a backend the request already tried).
    excluded: bool,
}

impl LoadTree {
    /// A tree over `states`, which every state then notifies of its in-flight changes.
    pub fn attach(states: Arc<[Arc<BackendState>]>, slow_start: Option<Duration>) -> Arc<LoadTree> {
        let n = states.len();
        let width = n.next_power_of_two().max(1);
        let leaves = states
            .iter()
            .enumerate()
            .map(|(i, s)| Leaf {
                inflight: s.inflight() as u64,
                weight: s.effective_weight_milli(slow_start).max(1),
                // The first round goes in address order.
                pass: i as u64,
                parked: false,
                excluded: false,
            })
            .collect();
        let mut tree = Tree {
            leaves,
            winners: vec![NONE; 2 * width],
            width,
            now: 0,
            refreshed: Instant::now(),
        };
        tree.rebuild();
        let tree = Arc::new(LoadTree {
            states,
            slow_start,
            inner: Mutex::new(tree),
        });
        for (i, s) in tree.states.iter().enumerate() {
            s.attach_tree(Arc::downgrade(&tree), i);
        }
        // Counts that changed while the states still pointed at a previous tree.
        tree.lock().refresh(&tree.states, slow_start);
        tree
    }

    fn lock(&self) -> MutexGuard<'_, Tree> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The least loaded backend (per effective weight) that `c` allows, advancing its pass.
    /// Returns a pool index, None when no backend is usable.
    pub fn pick(&self, c: &Candidates) -> Option<usize> {
        let mut guard = self.lock();
        let t = &mut *guard;
        if t.refreshed.elapsed() >= REFRESH {
            t.refresh(&self.states, self.slow_start);
        }
        let mut excluded = Vec::new();
        let found = loop {
            // The root's winner; NONE (no leaf) when the tree is empty.
            let i = t.winners.get(1).map_or(usize::MAX, |&w| w as usize);
            let Some(leaf) = t.leaves.get_mut(i).filter(|l| !l.out()) else {
                break None;
            };
            if (c.skip)(i) {
                leaf.excluded = true;
                excluded.push(i);
            } else if !c.usable(i) {
                leaf.parked = true;
            } else {
                // A backend that lost turns to its load banks no credit: its turn starts no
                // earlier than the latest pick's (as a start time in fair queueing).
                let start = leaf.pass.max(t.now);
                leaf.pass = start.saturating_add(PASS_SCALE / leaf.weight.max(1));
                t.now = start;
                t.replay(i);
                break Some(i);
            }
            t.replay(i);
        };
        for i in excluded {
            if let Some(leaf) = t.leaves.get_mut(i) {
                leaf.excluded = false;
            }
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
        if let Some(leaf) = t.leaves.get_mut(i) {
            leaf.inflight = state.inflight() as u64;
            t.replay(i);
        }
    }
}

impl Leaf {
    fn out(&self) -> bool {
        self.parked || self.excluded
    }
}

impl Tree {
    /// Whether leaf `a` beats leaf `b`: in the running, then less load per weight, then the
    /// earlier pass.
    fn beats(&self, a: u32, b: u32) -> bool {
        // NONE (no leaf) loses to any leaf.
        let Some(y) = self.leaves.get(b as usize) else {
            return true;
        };
        let Some(x) = self.leaves.get(a as usize) else {
            return false;
        };
        if x.out() != y.out() {
            return !x.out();
        }
        let (lx, ly) = (x.inflight * y.weight, y.inflight * x.weight);
        lx < ly || (lx == ly && x.pass < y.pass)
    }

    /// Replay the matches on the path from leaf `i` to the root.
    fn replay(&mut self, i: usize) {
        let mut node = (self.width + i) / 2;
        while node >= 1 {
            self.rematch(node);
            node /= 2;
        }
    }

    /// Play the match at inner `node` between the winners of its two children.
    fn rematch(&mut self, node: usize) {
        let child = |k: usize| self.winners.get(k).copied().unwrap_or(NONE);
        let (l, r) = (child(2 * node), child(2 * node + 1));
        let winner = if self.beats(r, l) { r } else { l };
        if let Some(w) = self.winners.get_mut(node) {
            *w = winner;
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
            self.rematch(node);
        }
    }

    /// Re-read every leaf and give parked backends another chance; a backend whose weight is
    /// zero now (it reported `drain`) stays parked: with no in-flight request it would tie with
    /// idle backends and beat busy ones.
    fn refresh(&mut self, states: &[Arc<BackendState>], slow_start: Option<Duration>) {
        for (leaf, s) in self.leaves.iter_mut().zip(states) {
            let weight = s.effective_weight_milli(slow_start);
            leaf.inflight = s.inflight() as u64;
            leaf.weight = weight.max(1);
            leaf.parked = weight == 0;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::InflightGuard;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn tree(weights: &[u32]) -> (Arc<LoadTree>, Arc<[Arc<BackendState>]>) {
        let states: Arc<[Arc<BackendState>]> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16));
                Arc::new(BackendState::new(addr.to_string(), addr, *w, false, false))
            })
            .collect::<Vec<_>>()
            .into();
        (LoadTree::attach(states.clone(), None), states)
    }

    fn pick(t: &LoadTree, skip: &dyn Fn(usize) -> bool) -> Option<usize> {
        t.pick(&Candidates {
            states: &t.states,
            skip,
            slow_start: None,
        })
    }

    fn first(t: &LoadTree) -> usize {
        pick(t, &|_| false).unwrap()
    }

    /// Take backend `i` out of service (ejected).
    fn take_out(s: &BackendState) {
        s.eject(
            Duration::from_secs(60),
            Duration::from_secs(60),
            "test".into(),
        );
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
    fn idle_picks_follow_the_weights() {
        let (t, _s) = tree(&[1, 2, 3, 4]);
        let mut tally = BTreeMap::new();
        for _ in 0..1000 {
            *tally.entry(first(&t)).or_insert(0) += 1;
        }
        assert_eq!(
            tally,
            BTreeMap::from([(0, 100), (1, 200), (2, 300), (3, 400)])
        );
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
        let (t, s) = tree(&[1, 1, 1]);
        take_out(&s[0]);
        assert_eq!(pick(&t, &|i| i == 1), Some(2));
        // Skipping is for one pick only; backend 0 stays parked until the next refresh.
        assert_eq!(pick(&t, &|_| false), Some(1));
        assert_eq!(pick(&t, &|i| i != 0), None);
        s[0].ejected_until_for_tests(1);
        assert!(s[0].end_ejection_if_due());
        t.lock().refresh(&t.states, None);
        assert_eq!(pick(&t, &|i| i != 0), Some(0));
    }

    #[test]
    fn a_survivor_set_shares_a_lost_backends_turns_by_weight() {
        let (t, s) = tree(&[1, 2, 3, 4]);
        take_out(&s[3]);
        let mut tally = BTreeMap::new();
        for _ in 0..600 {
            *tally.entry(first(&t)).or_insert(0) += 1;
        }
        assert_eq!(tally, BTreeMap::from([(0, 100), (1, 200), (2, 300)]));
    }

    #[test]
    fn a_new_tree_takes_over_the_counts() {
        let (old, s) = tree(&[1, 1]);
        let g = InflightGuard::acquire(s[0].clone());
        let new = LoadTree::attach(s.clone(), None);
        assert_eq!(first(&new), 1);
        drop(g);
        // The release reached the new tree: both idle, 0 has the earlier pass.
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
            for (i, st) in s.iter().enumerate() {
                if !ready(i) {
                    take_out(st);
                }
            }
            let skip = |i: usize| skip_mask >> i & 1 == 1 && i.is_multiple_of(3);
            let load = |i: usize| s[i].inflight() as f64 / weights[i] as f64;
            let best = (0..s.len()).filter(|&i| ready(i) && !skip(i)).map(load).reduce(f64::min);
            let got = pick(&t, &skip);
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
