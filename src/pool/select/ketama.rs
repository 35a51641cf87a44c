//! Ketama consistent hashing: the same ring as pingora-ketama's `Continuum` (so keys map exactly
//! as they did with Pingora's `KetamaHashing`), plus a 64 Ki-entry index on the top 16 bits of
//! the hash, so that a lookup in a ring of millions of points touches a few cache lines instead
//! of ~20. A key whose backend may not take the request walks on along the ring, so a lost
//! backend's keys spread over the others; a backend ramping up under slow start takes a share
//! of its keys that grows with its ramp (the same keys on every instance). With a bound
//! (`balance_factor`), a backend at its bound is passed over too (see `bounded`).

use std::net::SocketAddr;

use super::{Bound, Candidates};

/// Points per unit of weight: pingora-ketama's (and nginx's) 160.
const POINTS_PER_WEIGHT: u32 = 160;
/// The index covers the top bits of the 32-bit hash.
const INDEX_BITS: u32 = 16;

/// Ring positions and backend numbers are u32: even with every backend of the largest pool the
/// configuration allows at the largest weight, the ring must hold fewer than 2^32 points.
use crate::config::validate::MAX_BACKENDS;
const _: () = assert!(
    MAX_BACKENDS as u64 * crate::config::validate::MAX_WEIGHT as u64 * POINTS_PER_WEIGHT as u64
        <= u32::MAX as u64
);

struct Point {
    hash: u32,
    /// Pool index.
    backend: u32,
}

pub struct Ketama {
    /// Sorted by hash, one point per hash value.
    ring: Box<[Point]>,
    /// `index[p]`: the first ring position whose hash has top bits >= p (2^16 + 1 entries).
    index: Box<[u32]>,
}

impl Ketama {
    /// The ring position a key hash starts at: the first point at or after it, wrapping
    /// (0 on an empty ring, where the index is all zeros).
    fn start(&self, hash: u32) -> usize {
        let prefix = (hash >> (32 - INDEX_BITS)) as usize;
        let lo = self.index.get(prefix).map_or(0, |&p| p as usize);
        let hi = self.index.get(prefix + 1).map_or(lo, |&p| p as usize);
        let i = lo
            + self
                .ring
                .get(lo..hi)
                .map_or(0, |points| points.partition_point(|p| p.hash < hash));
        if i == self.ring.len() {
            0
        } else {
            i
        }
    }

    /// The ring of `backends`, given as (address, weight) by pool index.
    pub fn new(backends: &[(SocketAddr, u32)]) -> Ketama {
        // Exactly pingora-ketama's Continuum: per backend, a CRC32 of "ip\0port", chained
        // through the previous point's hash; then sorted by hash and deduplicated.
        let points: usize = backends
            .iter()
            .map(|b| (b.1.max(1) * POINTS_PER_WEIGHT) as usize)
            .sum();
        let mut ring = Vec::with_capacity(points);
        for (i, (addr, weight)) in backends.iter().enumerate() {
            let mut base = crc32fast::Hasher::new();
            base.update(format!("{}\0{}", addr.ip(), addr.port()).as_bytes());
            let mut prev: u32 = 0;
            for _ in 0..weight.max(&1) * POINTS_PER_WEIGHT {
                let mut h = base.clone();
                h.update(&prev.to_le_bytes());
                prev = h.finalize();
                ring.push(Point {
                    hash: prev,
                    backend: i as u32,
                });
            }
        }
        ring.sort_unstable_by_key(|p| p.hash);
        ring.dedup_by_key(|p| p.hash);
        let mut index = Vec::with_capacity((1 << INDEX_BITS) + 1);
        let mut pos = 0;
        for prefix in 0..=(1u64 << INDEX_BITS) {
            while ring
                .get(pos)
                .is_some_and(|p| u64::from(p.hash >> (32 - INDEX_BITS)) < prefix)
            {
                pos += 1;
            }
            index.push(pos as u32);
        }
        Ketama {
            ring: ring.into(),
            index: index.into(),
        }
    }

    /// The backends along the ring from `key`'s point, one per point, wrapping (endless: the
    /// caller bounds it); nothing on an empty ring.
    pub fn walk(&self, key: &[u8]) -> impl Iterator<Item = usize> + '_ {
        self.walk_from(crc32fast::hash(key))
    }

    fn walk_from(&self, hash: u32) -> impl Iterator<Item = usize> + '_ {
        let start = self.start(hash);
        let len = self.ring.len();
        (0..len)
            .cycle()
            .map(move |k| (start + k) % len.max(1))
            .filter_map(|pos| self.ring.get(pos).map(|p| p.backend as usize))
    }

    /// The first backend along the ring from `key` that `c` allows, within `steps` points;
    /// then any usable backend. A backend that ramps up takes the key only when the key's
    /// own fraction for it is below its ramp. With a `bound` (bounded load), a backend whose
    /// in-flight count is at its bound is passed over too; when every one the walk meets is,
    /// the first it met takes the key. Returns a pool index, None when none is usable.
    pub fn pick(
        &self,
        key: &[u8],
        c: &Candidates,
        steps: usize,
        bound: Option<&Bound>,
    ) -> Option<usize> {
        let hash = crc32fast::hash(key);
        let allowed = |i: usize| {
            c.usable(i) && {
                let ramp = c.ramp(i);
                ramp >= 1.0 || key_fraction(hash, i) < ramp
            }
        };
        let Some(bound) = bound else {
            return self
                .walk_from(hash)
                .take(steps)
                .find(|&i| allowed(i))
                .or_else(|| c.any_usable());
        };
        let limit = bound.limit(c);
        let mut first = None;
        for i in self.walk_from(hash).take(steps) {
            if !allowed(i) {
                continue;
            }
            let Some(s) = c.states.get(i) else {
                continue;
            };
            if limit.admits(s, s.effective_weight_milli(c.slow_start)) {
                return Some(i);
            }
            first.get_or_insert(i);
        }
        first.or_else(|| c.any_usable())
    }
}

/// Where a key falls in (0, 1) for backend `i`: fixed per key and backend, so that a ramping
/// backend takes the same keys on every instance and keeps them as its ramp grows.
fn key_fraction(hash: u32, i: usize) -> f64 {
    crate::pool::mix::unit_fraction(u64::from(hash) << 32 | i as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_ketama::{Bucket, Continuum};
    use proptest::prelude::*;

    fn backends(specs: &[(u16, u32)]) -> Vec<(SocketAddr, u32)> {
        specs
            .iter()
            .map(|(port, w)| (SocketAddr::from(([10, 0, 0, 1], *port)), *w))
            .collect()
    }

    fn continuum(backends: &[(SocketAddr, u32)]) -> Continuum {
        let buckets: Vec<Bucket> = backends.iter().map(|b| Bucket::new(b.0, b.1)).collect();
        Continuum::new(&buckets)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Every key starts where pingora-ketama's ring starts it, and the walk visits the
        /// same backends in the same order: no key moves on upgrading to this selector.
        #[test]
        fn same_ring_as_pingora_ketama(
            specs in proptest::collection::btree_map(1u16..5000, 1u32..4, 1..40),
            keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..24), 50),
        ) {
            let specs: Vec<(u16, u32)> = specs.into_iter().collect();
            let list = backends(&specs);
            let ours = Ketama::new(&list);
            let theirs = continuum(&list);
            for key in keys {
                let walked: Vec<_> = ours.walk(&key).take(8).map(|i| list[i].0).collect();
                let expected: Vec<_> = theirs.node_iter(&key).take(8).copied().collect();
                prop_assert_eq!(walked, expected);
            }
        }
    }

    #[test]
    fn a_large_ring_matches_too() {
        // Large enough for CRC32 collisions between points (deduplicated as Pingora does).
        let specs: Vec<(u16, u32)> = (1..3000).map(|p| (p, 1 + (p as u32 % 3))).collect();
        let list = backends(&specs);
        let ours = Ketama::new(&list);
        let theirs = continuum(&list);
        assert!(ours.ring.len() < 160 * specs.iter().map(|s| s.1 as usize).sum::<usize>());
        // Point by point, including which of two colliding points survived.
        let mut at = 0;
        for point in ours.ring.iter() {
            let theirs = theirs.get_addr(&mut at).unwrap();
            assert_eq!(list[point.backend as usize].0, *theirs);
        }
        assert_eq!(at, 0, "both rings have the same length");
        for k in 0u32..20_000 {
            let key = k.to_le_bytes();
            let got = list[ours.walk(&key).next().unwrap()].0;
            assert_eq!(Some(got), theirs.node(&key));
        }
    }

    #[test]
    fn an_empty_ring_yields_nothing() {
        let ours = Ketama::new(&[]);
        assert!(ours.walk(b"k").next().is_none());
    }

    #[test]
    fn key_fractions_are_even() {
        let below = (0u32..10_000)
            .filter(|k| key_fraction(crc32fast::hash(&k.to_le_bytes()), 3) < 0.25)
            .count();
        assert!((2300..2700).contains(&below), "{below}");
    }
}
