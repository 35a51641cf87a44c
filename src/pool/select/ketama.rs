//! Ketama consistent hashing as a Pingora `BackendSelection`: the same ring as
//! pingora-ketama's `Continuum` (so keys map exactly as they did with Pingora's
//! `KetamaHashing`), plus a 64 Ki-entry index on the top 16 bits of the hash, so that a lookup
//! in a ring of millions of points touches a few cache lines instead of ~20.

use std::collections::BTreeSet;
use std::sync::Arc;

use pingora::protocols::l4::socket::SocketAddr;
use pingora_load_balancing::selection::{BackendIter, BackendSelection};
use pingora_load_balancing::Backend;

/// Points per unit of weight: pingora-ketama's (and nginx's) 160.
const POINTS_PER_WEIGHT: u32 = 160;
/// The index covers the top bits of the 32-bit hash.
const INDEX_BITS: u32 = 16;

struct Point {
    hash: u32,
    backend: u32,
}

pub struct Ketama {
    /// In the set's order; `Point::backend` indexes it.
    backends: Box<[Backend]>,
    /// Sorted by hash, one point per hash value.
    ring: Box<[Point]>,
    /// `index[p]`: the first ring position whose hash has top bits >= p (2^16 + 1 entries).
    index: Box<[u32]>,
}

impl Ketama {
    /// The ring position a key starts at: the first point at or after its hash, wrapping
    /// (0 on an empty ring, where the index is all zeros).
    fn start(&self, key: &[u8]) -> usize {
        let hash = crc32fast::hash(key);
        let prefix = (hash >> (32 - INDEX_BITS)) as usize;
        let (lo, hi) = (self.index[prefix] as usize, self.index[prefix + 1] as usize);
        let i = lo + self.ring[lo..hi].partition_point(|p| p.hash < hash);
        if i == self.ring.len() {
            0
        } else {
            i
        }
    }
}

impl BackendSelection for Ketama {
    type Iter = KetamaIter;
    type Config = ();

    fn build(set: &BTreeSet<Backend>) -> Self {
        // Exactly pingora-ketama's Continuum: per backend, a CRC32 of "ip\0port", chained
        // through the previous point's hash; then sorted by hash and deduplicated.
        let backends: Box<[Backend]> = set
            .iter()
            .filter(|b| matches!(b.addr, SocketAddr::Inet(_)))
            .cloned()
            .collect();
        let points: u32 = backends.iter().map(|b| weight(b) * POINTS_PER_WEIGHT).sum();
        let mut ring = Vec::with_capacity(points as usize);
        for (i, b) in backends.iter().enumerate() {
            let Some(addr) = b.addr.as_inet() else {
                continue;
            };
            let mut base = crc32fast::Hasher::new();
            base.update(format!("{}\0{}", addr.ip(), addr.port()).as_bytes());
            let mut prev: u32 = 0;
            for _ in 0..weight(b) * POINTS_PER_WEIGHT {
                let mut h = base.clone();
                h.update(&prev.to_le_bytes());
                prev = h.finalize();
                // pingora-ketama stores the backend as u16 (as its rings do).
                ring.push(Point {
                    hash: prev,
                    backend: u32::from(i as u16),
                });
            }
        }
        ring.sort_unstable_by_key(|p| p.hash);
        ring.dedup_by_key(|p| p.hash);
        let mut index = Vec::with_capacity((1 << INDEX_BITS) + 1);
        let mut pos = 0;
        for prefix in 0..=(1u64 << INDEX_BITS) {
            while pos < ring.len() && u64::from(ring[pos].hash >> (32 - INDEX_BITS)) < prefix {
                pos += 1;
            }
            index.push(pos as u32);
        }
        Ketama {
            backends,
            ring: ring.into(),
            index: index.into(),
        }
    }

    fn iter(self: &Arc<Self>, key: &[u8]) -> KetamaIter {
        KetamaIter {
            selector: self.clone(),
            pos: self.start(key),
        }
    }
}

fn weight(b: &Backend) -> u32 {
    b.weight.max(1) as u32
}

/// Walks the ring from the key's point, one point at a time, wrapping (endless, like Pingora's:
/// the caller bounds it).
pub struct KetamaIter {
    selector: Arc<Ketama>,
    pos: usize,
}

impl BackendIter for KetamaIter {
    fn next(&mut self) -> Option<&Backend> {
        let s = &self.selector;
        let point = s.ring.get(self.pos)?;
        self.pos = (self.pos + 1) % s.ring.len();
        s.backends.get(point.backend as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_ketama::{Bucket, Continuum};
    use proptest::prelude::*;

    fn set(specs: &[(u16, usize)]) -> BTreeSet<Backend> {
        specs
            .iter()
            .map(|(port, w)| Backend::new_with_weight(&format!("10.0.0.1:{port}"), *w).unwrap())
            .collect()
    }

    fn continuum(set: &BTreeSet<Backend>) -> Continuum {
        let buckets: Vec<Bucket> = set
            .iter()
            .map(|b| Bucket::new(*b.addr.as_inet().unwrap(), b.weight as u32))
            .collect();
        Continuum::new(&buckets)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Every key starts where pingora-ketama's ring starts it, and the walk visits the
        /// same backends in the same order: no key moves on upgrading to this selector.
        #[test]
        fn same_ring_as_pingora_ketama(
            specs in proptest::collection::btree_map(1u16..5000, 1usize..4, 1..40),
            keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..24), 50),
        ) {
            let specs: Vec<(u16, usize)> = specs.into_iter().collect();
            let set = set(&specs);
            let ours = Arc::new(Ketama::build(&set));
            let theirs = continuum(&set);
            for key in keys {
                let mut it = ours.iter(&key);
                let walked: Vec<_> = (0..8).map(|_| *it.next().unwrap().addr.as_inet().unwrap()).collect();
                let expected: Vec<_> = theirs.node_iter(&key).take(8).copied().collect();
                prop_assert_eq!(walked, expected);
            }
        }
    }

    #[test]
    fn a_large_ring_matches_too() {
        // Large enough for CRC32 collisions between points (deduplicated as Pingora does).
        let specs: Vec<(u16, usize)> = (1..3000).map(|p| (p, 1 + (p as usize % 3))).collect();
        let set = set(&specs);
        let ours = Arc::new(Ketama::build(&set));
        let theirs = continuum(&set);
        assert!(ours.ring.len() < 160 * specs.iter().map(|s| s.1).sum::<usize>());
        // Point by point, including which of two colliding points survived.
        let mut at = 0;
        for point in ours.ring.iter() {
            let theirs = theirs.get_addr(&mut at).unwrap();
            assert_eq!(
                ours.backends[point.backend as usize].addr.as_inet(),
                Some(theirs)
            );
        }
        assert_eq!(at, 0, "both rings have the same length");
        for k in 0u32..20_000 {
            let key = k.to_le_bytes();
            let got = *ours.iter(&key).next().unwrap().addr.as_inet().unwrap();
            assert_eq!(Some(got), theirs.node(&key));
        }
    }

    #[test]
    fn an_empty_set_yields_nothing() {
        let ours = Arc::new(Ketama::build(&BTreeSet::new()));
        assert!(ours.iter(b"k").next().is_none());
    }
}
