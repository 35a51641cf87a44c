//! A pool: its backends with their per-backend state, and the Pingora `LoadBalancer` that picks
//! among them with the pool's algorithm.

pub mod hash_key;
pub mod select;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use futures::FutureExt;
use pingora::upstreams::peer::HttpPeer;
use pingora_load_balancing::discovery::Static;
use pingora_load_balancing::selection::{BackendIter, BackendSelection, Consistent, Random};
use pingora_load_balancing::{Backend, Backends, LoadBalancer};

use crate::config::{Algorithm, HashKey, PoolConfig, Timeouts};
use select::{LeastConnections, SmoothWeighted};

/// What fulcrum keeps per backend, shared by every selector built for its pool.
#[derive(Debug)]
pub struct BackendState {
    /// The stable name (`name:` or the address): the `backend` label.
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    inflight: AtomicUsize,
}

impl BackendState {
    pub fn new(name: String, addr: SocketAddr, weight: u32) -> Self {
        BackendState {
            name,
            addr,
            weight,
            inflight: AtomicUsize::new(0),
        }
    }

    /// State for a Pingora backend that no pool owns (a selector built without counters).
    pub fn detached(b: &Backend) -> Self {
        let addr = b
            .addr
            .as_inet()
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        BackendState::new(addr.to_string(), addr, b.weight as u32)
    }

    /// Requests now in flight to this backend.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }
}

/// Counts one request in flight to a backend for as long as it lives: released exactly once,
/// whether the request ends, fails or moves on to another backend.
#[derive(Debug)]
pub struct InflightGuard(Arc<BackendState>);

impl InflightGuard {
    pub fn acquire(state: Arc<BackendState>) -> Self {
        state.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(state)
    }

    pub fn backend(&self) -> &Arc<BackendState> {
        &self.0
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The pool's algorithm, as a Pingora LoadBalancer over the matching selector.
enum Balancer {
    Smooth(LoadBalancer<SmoothWeighted>),
    LeastConn(LoadBalancer<LeastConnections>),
    Hash(LoadBalancer<Consistent>),
    Random(LoadBalancer<Random>),
}

/// One upstream pool, built from its configuration.
pub struct Pool {
    pub name: String,
    pub algorithm: Algorithm,
    pub hash_key: Option<HashKey>,
    pub retries: u32,
    pub timeouts: Timeouts,
    /// Sorted by address (the order of Pingora's backend set).
    backends: Arc<[Arc<BackendState>]>,
    balancer: Balancer,
    /// Spreads requests that lack the hash key.
    keyless: AtomicU64,
}

fn load_balancer<S>(set: BTreeSet<Backend>, config: Option<S::Config>) -> LoadBalancer<S>
where
    S: BackendSelection + 'static,
    S::Iter: BackendIter,
{
    let lb = LoadBalancer::from_backends_with_config(Backends::new(Static::new(set)), config);
    // Static discovery never waits: the update completes on its first poll.
    let _ = lb.update().now_or_never();
    lb
}

impl Pool {
    pub fn build(config: &PoolConfig) -> Pool {
        let mut states: Vec<Arc<BackendState>> = config
            .backends
            .iter()
            .map(|b| Arc::new(BackendState::new(b.name.clone(), b.addr, b.weight)))
            .collect();
        states.sort_by_key(|s| s.addr);
        let backends: Arc<[Arc<BackendState>]> = states.into();
        let set: BTreeSet<Backend> = backends
            .iter()
            .map(|s| Backend {
                addr: pingora::protocols::l4::socket::SocketAddr::Inet(s.addr),
                weight: s.weight as usize,
                ext: Default::default(),
            })
            .collect();
        let balancer = match config.algorithm {
            Algorithm::RoundRobin => {
                let order: Vec<SocketAddr> = config.backends.iter().map(|b| b.addr).collect();
                Balancer::Smooth(load_balancer(set, Some(order.into())))
            }
            Algorithm::LeastConnections => {
                Balancer::LeastConn(load_balancer(set, Some(backends.clone())))
            }
            Algorithm::ConsistentHash | Algorithm::IpHash => {
                Balancer::Hash(load_balancer(set, None))
            }
            Algorithm::Random => Balancer::Random(load_balancer(set, None)),
        };
        Pool {
            name: config.name.clone(),
            algorithm: config.algorithm,
            hash_key: config.hash_key.clone(),
            retries: config.retries,
            timeouts: config.timeouts,
            backends,
            balancer,
            keyless: AtomicU64::new(0),
        }
    }

    pub fn backends(&self) -> &[Arc<BackendState>] {
        &self.backends
    }

    /// Pick a ready backend that `skip` does not exclude. `key` is the hash key for hashing
    /// pools (None when the request lacks it: then requests are spread evenly).
    /// Returns the index into `backends()`.
    pub fn select(&self, key: Option<&[u8]>, skip: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.backends.len();
        let accept = |b: &Backend, ready: bool| ready && self.index_of(b).is_some_and(|i| !skip(i));
        let picked = match &self.balancer {
            Balancer::Smooth(lb) => lb.select_with(b"", n, accept),
            Balancer::LeastConn(lb) => lb.select_with(b"", n, accept),
            Balancer::Random(lb) => lb.select_with(b"", n.max(16) * 2, accept),
            Balancer::Hash(lb) => {
                // A ring has 160 points per backend; walk far enough to see them all.
                let steps = n.saturating_mul(160).clamp(256, 65_536);
                match key {
                    Some(key) => lb.select_with(key, steps, accept),
                    None => {
                        let spread = self.keyless.fetch_add(1, Ordering::Relaxed);
                        lb.select_with(&spread.to_le_bytes(), steps, accept)
                    }
                }
            }
        }?;
        self.index_of(&picked)
    }

    fn index_of(&self, b: &Backend) -> Option<usize> {
        let addr = b.addr.as_inet()?;
        self.backends.binary_search_by_key(addr, |s| s.addr).ok()
    }

    /// The peer for one attempt on backend `i`, with the pool's timeouts.
    pub fn peer(&self, i: usize) -> Option<HttpPeer> {
        let state = self.backends.get(i)?;
        let mut peer = HttpPeer::new(state.addr, false, String::new());
        let o = &mut peer.options;
        o.connection_timeout = Some(self.timeouts.connect);
        o.read_timeout = Some(self.timeouts.read);
        o.write_timeout = Some(self.timeouts.write);
        o.idle_timeout = Some(self.timeouts.idle);
        Some(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendConfig;

    fn pool(algorithm: Algorithm, weights: &[u32]) -> Pool {
        Pool::build(&PoolConfig {
            name: "p".into(),
            algorithm,
            hash_key: matches!(algorithm, Algorithm::ConsistentHash | Algorithm::IpHash)
                .then_some(HashKey::ClientIp),
            backends: weights
                .iter()
                .enumerate()
                .map(|(i, w)| BackendConfig {
                    name: format!("b{i}"),
                    addr: SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                    weight: *w,
                })
                .collect(),
            retries: 2,
            timeouts: Timeouts::default(),
        })
    }

    #[test]
    fn round_robin_counts_follow_weights() {
        let p = pool(Algorithm::RoundRobin, &[5, 1, 1]);
        let order: Vec<usize> = (0..7).map(|_| p.select(None, |_| false).unwrap()).collect();
        assert_eq!(order, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn skip_excludes_backends() {
        for alg in [
            Algorithm::RoundRobin,
            Algorithm::LeastConnections,
            Algorithm::ConsistentHash,
            Algorithm::Random,
        ] {
            let p = pool(alg, &[1, 1, 1]);
            for _ in 0..50 {
                assert_eq!(p.select(Some(b"k"), |i| i != 2), Some(2), "{alg:?}");
            }
            assert_eq!(p.select(Some(b"k"), |_| true), None, "{alg:?}");
        }
    }

    #[test]
    fn hashing_is_stable_and_keyless_spreads() {
        let p = pool(Algorithm::ConsistentHash, &[1, 1, 1, 1]);
        let first = p.select(Some(b"user-42"), |_| false);
        for _ in 0..20 {
            assert_eq!(p.select(Some(b"user-42"), |_| false), first);
        }
        let spread: BTreeSet<usize> = (0..64).filter_map(|_| p.select(None, |_| false)).collect();
        assert!(spread.len() >= 3, "keyless requests spread: {spread:?}");
    }

    #[test]
    fn random_respects_weights() {
        let p = pool(Algorithm::Random, &[9, 1]);
        let heavy = (0..2000)
            .filter(|_| p.select(None, |_| false) == Some(0))
            .count();
        assert!((1600..=1950).contains(&heavy), "{heavy}");
    }

    #[test]
    fn guard_releases_once() {
        let p = pool(Algorithm::LeastConnections, &[1]);
        let b = p.backends()[0].clone();
        {
            let _g = InflightGuard::acquire(b.clone());
            assert_eq!(b.inflight(), 1);
        }
        assert_eq!(b.inflight(), 0);
    }
}
