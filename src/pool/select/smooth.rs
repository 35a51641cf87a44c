//! Smooth weighted round robin (nginx's order) and weighted random, over one precomputed cycle
//! that holds each backend as many times as its weight. A round-robin pick takes the next
//! position; when that backend may not take the request, the turn is not handed to the next
//! one in order (which would double its share) but re-drawn at a position far along a
//! golden-ratio walk of the cycle, so that the lost share spreads over every usable backend by
//! weight. A random pick draws positions at random. Either is O(1) while few backends are out.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::Candidates;

/// Re-draws before a pick falls back to scanning the pool.
const REDRAWS: usize = 32;

/// Above this many steps (cycle length x backends) the exact nginx cycle costs too much to
/// build, and `spread_cycle` is used instead.
const EXACT_BUILD_LIMIT: u64 = 20_000_000;

/// How the first position of a pick is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// The next position of the cycle (round robin).
    Smooth,
    /// A random position (weighted random).
    Random,
}

/// One cycle of picks by weight, as pool indices.
pub struct SmoothWeighted {
    order: Order,
    cycle: Box<[u32]>,
    next: AtomicUsize,
    /// The golden-ratio walk that re-draws skipped turns: position `k * stride % len`.
    redraws: AtomicUsize,
    stride: usize,
}

impl SmoothWeighted {
    /// A cycle over `backends`, given as (pool index, weight) in configuration order: the
    /// round-robin order follows it, as nginx's does.
    pub fn new(backends: &[(usize, u32)], order: Order) -> SmoothWeighted {
        let weights: Vec<u64> = backends.iter().map(|b| u64::from(b.1.max(1))).collect();
        let uniform = weights.windows(2).all(|w| w[0] == w[1]);
        let cycle: Box<[u32]> = if uniform {
            backends.iter().map(|b| b.0 as u32).collect()
        } else {
            smooth_cycle(&weights)
                .into_iter()
                .filter_map(|p| backends.get(p as usize).map(|b| b.0 as u32))
                .collect()
        };
        SmoothWeighted {
            order,
            stride: golden_stride(cycle.len()),
            cycle,
            next: AtomicUsize::new(0),
            redraws: AtomicUsize::new(0),
        }
    }

    /// The pool index at cycle position `pos` (wrapping).
    fn at(&self, pos: usize) -> Option<usize> {
        let len = self.cycle.len();
        (len > 0).then(|| self.cycle.get(pos % len).map(|&i| i as usize))?
    }

    /// Whether the request may go to `i`: usable, and, while `i` ramps up, with a chance equal
    /// to its ramp (so its share grows with its effective weight).
    fn accept(c: &Candidates, i: usize) -> bool {
        if !c.usable(i) {
            return false;
        }
        let ramp = c.ramp(i);
        ramp >= 1.0 || fastrand::f64() < ramp
    }

    /// A re-drawn position: the next step of the golden-ratio walk, or a random one.
    fn redraw(&self) -> usize {
        match self.order {
            Order::Random => fastrand::usize(..self.cycle.len().max(1)),
            Order::Smooth => {
                let len = self.cycle.len().max(1);
                let k = self.redraws.fetch_add(1, Ordering::Relaxed) % len;
                ((k as u64 * self.stride as u64) % len as u64) as usize
            }
        }
    }

    /// Pick a backend `c` allows. `in_turn` is false for a retry: it then takes a re-drawn
    /// position rather than the next one, so that retries spread by weight too.
    /// Returns a pool index, None when no backend is usable.
    pub fn pick(&self, c: &Candidates, in_turn: bool) -> Option<usize> {
        if self.cycle.is_empty() {
            return None;
        }
        if in_turn {
            let first = match self.order {
                Order::Smooth => self.next.fetch_add(1, Ordering::Relaxed),
                Order::Random => fastrand::usize(..self.cycle.len()),
            };
            if let Some(i) = self.at(first).filter(|&i| Self::accept(c, i)) {
                return Some(i);
            }
        }
        for _ in 0..REDRAWS {
            if let Some(i) = self.at(self.redraw()).filter(|&i| Self::accept(c, i)) {
                return Some(i);
            }
        }
        c.any_usable()
    }

    #[cfg(test)]
    fn cycle(&self) -> &[u32] {
        &self.cycle
    }
}

/// A stride near `len` / golden ratio that is coprime with `len`, so that the walk visits
/// every position once per `len` steps, each step landing far from the last.
fn golden_stride(len: usize) -> usize {
    if len <= 2 {
        return 1;
    }
    let mut s = ((len as f64) * 0.618_033_988_75) as usize;
    while gcd(s as u64, len as u64) != 1 {
        s += 1;
    }
    s
}

/// One cycle of nginx's smooth weighted round robin over `weights`, reduced by their gcd.
pub fn smooth_cycle(weights: &[u64]) -> Vec<u32> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let weights: Vec<i64> = weights.iter().map(|w| (*w / g) as i64).collect();
    let total: i64 = weights.iter().sum();
    if (total as u64).saturating_mul(weights.len() as u64) > EXACT_BUILD_LIMIT {
        return spread_cycle(&weights);
    }
    let mut current = vec![0i64; weights.len()];
    let mut cycle = Vec::with_capacity(total.max(0) as usize);
    for _ in 0..total {
        // The first of the largest current weights.
        let mut best: Option<(usize, i64)> = None;
        for (i, (c, w)) in current.iter_mut().zip(&weights).enumerate() {
            *c += w;
            if best.is_none_or(|(_, b)| *c > b) {
                best = Some((i, *c));
            }
        }
        let Some((best, _)) = best else { break };
        if let Some(c) = current.get_mut(best) {
            *c -= total;
        }
        cycle.push(best as u32);
    }
    cycle
}

/// An evenly spread cycle for very large pools, built in O(W log W): backend i's k-th pick is
/// placed at time (k + 1/2) / w_i. Same counts as nginx's cycle, nearly the same order.
fn spread_cycle(weights: &[i64]) -> Vec<u32> {
    let mut slots: Vec<(u64, u64, u32)> = Vec::new();
    for (i, w) in weights.iter().enumerate() {
        let w = *w as u64;
        slots.extend((0..w).map(|k| (2 * k + 1, 2 * w, i as u32)));
    }
    slots.sort_by(|a, b| {
        (u128::from(a.0) * u128::from(b.1))
            .cmp(&(u128::from(b.0) * u128::from(a.1)))
            .then(a.2.cmp(&b.2))
    });
    slots.into_iter().map(|s| s.2).collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::BackendState;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn states(n: usize) -> Vec<Arc<BackendState>> {
        (0..n)
            .map(|i| {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16));
                Arc::new(BackendState::new(addr.to_string(), addr, 1, false, false))
            })
            .collect()
    }

    fn tally(
        sel: &SmoothWeighted,
        c: &Candidates,
        n: usize,
        in_turn: bool,
    ) -> BTreeMap<usize, usize> {
        let mut t = BTreeMap::new();
        for _ in 0..n {
            *t.entry(sel.pick(c, in_turn).unwrap()).or_default() += 1;
        }
        t
    }

    #[test]
    fn cycle_follows_configuration_order() {
        // Pool indices 2, 0, 1 in configuration order, weights 5, 1, 1.
        let sel = SmoothWeighted::new(&[(2, 5), (0, 1), (1, 1)], Order::Smooth);
        assert_eq!(sel.cycle(), [2, 2, 0, 2, 1, 2, 2]);
        let s = states(3);
        let c = Candidates {
            states: &s,
            skip: &|_| false,
            slow_start: None,
        };
        let got: Vec<usize> = (0..7).map(|_| sel.pick(&c, true).unwrap()).collect();
        assert_eq!(got, [2, 2, 0, 2, 1, 2, 2]);
    }

    #[test]
    fn nginx_order_for_5_1_1() {
        assert_eq!(smooth_cycle(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn weights_3_1_are_smooth() {
        assert_eq!(smooth_cycle(&[3, 1]), vec![0, 0, 1, 0]);
        assert_eq!(smooth_cycle(&[6, 2]), vec![0, 0, 1, 0], "reduced by gcd");
    }

    #[test]
    fn huge_pools_get_a_spread_cycle_with_exact_counts() {
        let mut weights = vec![1u64; 100_000];
        weights[0] = 256;
        weights[1] = 3;
        let cycle = smooth_cycle(&weights);
        assert_eq!(cycle.len(), 256 + 3 + 99_998);
        assert_eq!(cycle.iter().filter(|&&i| i == 0).count(), 256);
        assert_eq!(cycle.iter().filter(|&&i| i == 1).count(), 3);
    }

    #[test]
    fn a_skipped_backends_turns_spread_by_weight() {
        // Weights 1, 2, 3, 4 in pool order; backend 3 (weight 4) is out.
        let sel = SmoothWeighted::new(&[(0, 1), (1, 2), (2, 3), (3, 4)], Order::Smooth);
        let s = states(4);
        let c = Candidates {
            states: &s,
            skip: &|i| i == 3,
            slow_start: None,
        };
        for in_turn in [true, false] {
            let t = tally(&sel, &c, 6000, in_turn);
            assert_eq!(t.get(&3), None);
            for (i, w) in [(0, 1.0), (1, 2.0), (2, 3.0)] {
                let share = t[&i] as f64 / 6000.0;
                let ideal = w / 6.0;
                assert!(
                    (share / ideal - 1.0).abs() < 0.03,
                    "{i}: {share} vs {ideal} ({t:?})"
                );
            }
        }
    }

    #[test]
    fn random_follows_weights_over_the_usable() {
        let sel = SmoothWeighted::new(&[(0, 9), (1, 1), (2, 5)], Order::Random);
        let s = states(3);
        let c = Candidates {
            states: &s,
            skip: &|i| i == 2,
            slow_start: None,
        };
        let t = tally(&sel, &c, 5000, true);
        assert!((4300..=4700).contains(&t[&0]), "{t:?}");
    }

    #[test]
    fn nothing_usable_gives_none_and_one_usable_is_found() {
        let sel = SmoothWeighted::new(&[(0, 1), (1, 1), (2, 1)], Order::Smooth);
        let s = states(3);
        let none = Candidates {
            states: &s,
            skip: &|_| true,
            slow_start: None,
        };
        assert_eq!(sel.pick(&none, true), None);
        let one = Candidates {
            states: &s,
            skip: &|i| i != 1,
            slow_start: None,
        };
        for _ in 0..20 {
            assert_eq!(sel.pick(&one, true), Some(1));
        }
        let empty = SmoothWeighted::new(&[], Order::Smooth);
        assert_eq!(empty.pick(&one, true), None);
    }

    #[test]
    fn golden_strides_are_coprime() {
        for len in 1..200usize {
            let s = golden_stride(len);
            assert_eq!(gcd(s as u64, len as u64), 1, "{len}");
        }
    }
}
