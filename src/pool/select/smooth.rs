//! Smooth weighted round robin (nginx's algorithm) as a Pingora `BackendSelection`: the smooth
//! sequence is computed once per build, and each pick is one atomic increment.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pingora_load_balancing::selection::{BackendIter, BackendSelection};
use pingora_load_balancing::Backend;

/// Picks backends in nginx's smooth weighted order (weights 5:1:1 give a a b a c a a).
pub struct SmoothWeighted {
    backends: Box<[Backend]>,
    /// One cycle of picks, as indices into `backends`; empty when all weights are equal
    /// (then the cycle is simply 0, 1, .., n-1).
    cycle: Box<[u32]>,
    next: AtomicUsize,
}

impl SmoothWeighted {
    fn cycle_len(&self) -> usize {
        if self.cycle.is_empty() {
            self.backends.len()
        } else {
            self.cycle.len()
        }
    }

    fn at(&self, position: usize) -> &Backend {
        let len = self.cycle_len();
        let i = if self.cycle.is_empty() {
            position % len
        } else {
            self.cycle[position % len] as usize
        };
        &self.backends[i]
    }
}

/// Above this many steps (cycle length x backends) the exact nginx cycle costs too much to
/// build, and `spread_cycle` is used instead.
const EXACT_BUILD_LIMIT: u64 = 20_000_000;

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
        let mut best = 0;
        for i in 0..weights.len() {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
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

/// The order in which the configuration lists the backends: the cycle follows it, as nginx's.
pub type ConfigOrder = Arc<[std::net::SocketAddr]>;

impl BackendSelection for SmoothWeighted {
    type Iter = SmoothIter;
    type Config = ConfigOrder;

    fn build(backends: &BTreeSet<Backend>) -> Self {
        Self::build_with_config(backends, &ConfigOrder::from(Vec::new()))
    }

    fn build_with_config(backends: &BTreeSet<Backend>, order: &ConfigOrder) -> Self {
        let mut backends: Vec<Backend> = backends.iter().cloned().collect();
        // Stable sort: backends the order does not name keep address order, after the others.
        let rank: std::collections::HashMap<&std::net::SocketAddr, usize> =
            order.iter().enumerate().map(|(i, a)| (a, i)).collect();
        backends.sort_by_key(|b| {
            b.addr
                .as_inet()
                .and_then(|a| rank.get(a).copied())
                .unwrap_or(usize::MAX)
        });
        let backends: Box<[Backend]> = backends.into();
        let weights: Vec<u64> = backends.iter().map(|b| b.weight.max(1) as u64).collect();
        let uniform = weights.windows(2).all(|w| w[0] == w[1]);
        let cycle = if uniform {
            Box::default()
        } else {
            smooth_cycle(&weights).into_boxed_slice()
        };
        SmoothWeighted {
            backends,
            cycle,
            next: AtomicUsize::new(0),
        }
    }

    fn iter(self: &Arc<Self>, _key: &[u8]) -> SmoothIter {
        SmoothIter {
            start: self.next.fetch_add(1, Ordering::Relaxed),
            step: 0,
            selector: self.clone(),
        }
    }
}

/// The pick at the current position first, then the following positions of the cycle.
pub struct SmoothIter {
    selector: Arc<SmoothWeighted>,
    start: usize,
    step: usize,
}

impl BackendIter for SmoothIter {
    fn next(&mut self) -> Option<&Backend> {
        let s = &self.selector;
        if s.backends.is_empty() || self.step >= s.cycle_len() {
            return None;
        }
        let b = s.at(self.start.wrapping_add(self.step));
        self.step += 1;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycle_follows_configuration_order() {
        let order: ConfigOrder = vec![
            "127.0.0.1:3".parse().unwrap(),
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        ]
        .into();
        let b = set(&[("127.0.0.1:1", 1), ("127.0.0.1:2", 1), ("127.0.0.1:3", 5)]);
        let sel = Arc::new(SmoothWeighted::build_with_config(&b, &order));
        let got = picks(&sel, 7);
        let want = [
            "127.0.0.1:3",
            "127.0.0.1:3",
            "127.0.0.1:1",
            "127.0.0.1:3",
            "127.0.0.1:2",
            "127.0.0.1:3",
            "127.0.0.1:3",
        ];
        assert_eq!(got, want);
    }

    fn set(specs: &[(&str, usize)]) -> BTreeSet<Backend> {
        specs
            .iter()
            .map(|(a, w)| Backend::new_with_weight(a, *w).unwrap())
            .collect()
    }

    fn picks(sel: &Arc<SmoothWeighted>, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| sel.iter(b"").next().unwrap().addr.to_string())
            .collect()
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
    fn equal_weights_rotate() {
        let sel = Arc::new(SmoothWeighted::build(&set(&[
            ("127.0.0.1:1", 1),
            ("127.0.0.1:2", 1),
            ("127.0.0.1:3", 1),
        ])));
        assert!(sel.cycle.is_empty());
        assert_eq!(
            picks(&sel, 4),
            ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:1"]
        );
    }

    #[test]
    fn fallbacks_cover_every_backend() {
        let sel = Arc::new(SmoothWeighted::build(&set(&[
            ("127.0.0.1:1", 5),
            ("127.0.0.1:2", 1),
            ("127.0.0.1:3", 1),
        ])));
        let mut it = sel.iter(b"");
        let mut seen = BTreeSet::new();
        while let Some(b) = it.next() {
            seen.insert(b.addr.to_string());
        }
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn empty_set_yields_nothing() {
        let sel = Arc::new(SmoothWeighted::build(&BTreeSet::new()));
        assert!(sel.iter(b"").next().is_none());
    }
}
