//! A pool: its backends with their per-backend state, and the Pingora `LoadBalancer` that picks
//! among them with the pool's algorithm.

pub mod hash_key;
pub mod select;
pub mod state;
pub mod sticky;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::FutureExt;
use pingora::upstreams::peer::HttpPeer;
use pingora_load_balancing::discovery::Static;
use pingora_load_balancing::selection::{BackendIter, BackendSelection, Random};
use pingora_load_balancing::{Backend, Backends, LoadBalancer};

use crate::config::{
    Algorithm, HashKey, HealthCheckConfig, PassiveHealthConfig, PoolConfig, Timeouts,
    UpstreamProtocol, UpstreamTls,
};
use crate::health::Probe;
use pingora::utils::tls::WrappedX509;
use pingora_load_balancing::health_check::HealthCheck;
use select::least_conn::LoadTree;
use select::{Ketama, LeastConnections, SmoothWeighted};
pub use state::{BackendState, InflightGuard, Transition};

/// The pool's algorithm, as a Pingora LoadBalancer over the matching selector.
enum Balancer {
    Smooth(Balanced<SmoothWeighted>),
    LeastConn(Balanced<LeastConnections>),
    Hash(Balanced<Ketama>),
    Random(Balanced<Random>),
}

impl Balancer {
    fn backends(&self) -> &Backends {
        match self {
            Balancer::Smooth(b) => b.lb.backends(),
            Balancer::LeastConn(b) => b.lb.backends(),
            Balancer::Hash(b) => b.lb.backends(),
            Balancer::Random(b) => b.lb.backends(),
        }
    }
}

/// A LoadBalancer (membership and health) with a selector of the same backends that fulcrum
/// walks itself: `LoadBalancer::select_with` allocates a set per pick to skip repeats, which
/// was most of a pick's cost. A pool's backends never change after it is built (a reload
/// builds a new pool), so the two always agree.
struct Balanced<S: BackendSelection> {
    lb: LoadBalancer<S>,
    selector: Arc<S>,
}

impl<S> Balanced<S>
where
    S: BackendSelection + 'static,
    S::Iter: BackendIter,
{
    fn new(set: BTreeSet<Backend>, config: Option<S::Config>, check: Option<Check>) -> Self {
        let selector = Arc::new(match &config {
            Some(c) => S::build_with_config(&set, c),
            None => S::build(&set),
        });
        Balanced {
            lb: load_balancer(set, config, check),
            selector,
        }
    }

    /// The first of at most `max` candidates (in the algorithm's order for `key`) that Pingora
    /// deems ready and `accept` maps to a pool index.
    fn select(
        &self,
        key: &[u8],
        max: usize,
        accept: impl Fn(&Backend) -> Option<usize>,
    ) -> Option<usize> {
        let backends = self.lb.backends();
        let mut candidates = self.selector.iter(key);
        for _ in 0..max {
            let b = candidates.next()?;
            if let Some(i) = accept(b).filter(|_| backends.ready(b)) {
                return Some(i);
            }
        }
        None
    }
}

/// The Pingora identity of a backend (address + weight).
fn pingora_backend(s: &BackendState) -> Backend {
    Backend {
        addr: pingora::protocols::l4::socket::SocketAddr::Inet(s.addr),
        weight: s.weight() as usize,
        ext: Default::default(),
    }
}

/// One upstream pool, built from its configuration.
pub struct Pool {
    pub name: String,
    pub algorithm: Algorithm,
    pub hash_key: Option<HashKey>,
    pub retries: u32,
    pub timeouts: Timeouts,
    pub health_check: Option<HealthCheckConfig>,
    pub passive_health: Option<PassiveHealthConfig>,
    pub affinity: Option<sticky::Sticky>,
    protocol: UpstreamProtocol,
    upstream_tls: Option<UpstreamTls>,
    /// The CA bundle of `upstream_tls` (None: the system's roots).
    upstream_ca: Option<Arc<[WrappedX509]>>,
    max_h2_streams: usize,
    /// Sorted by address (the order of Pingora's backend set).
    backends: Arc<[Arc<BackendState>]>,
    balancer: Balancer,
    /// Spreads requests that lack the hash key.
    keyless: AtomicU64,
    /// When the next round of active checks is due, and whether one is running.
    next_check: Mutex<Instant>,
    checking: AtomicBool,
}

type Check = Box<dyn HealthCheck + Send + Sync>;

fn load_balancer<S>(
    set: BTreeSet<Backend>,
    config: Option<S::Config>,
    check: Option<Check>,
) -> LoadBalancer<S>
where
    S: BackendSelection + 'static,
    S::Iter: BackendIter,
{
    let mut lb = LoadBalancer::from_backends_with_config(Backends::new(Static::new(set)), config);
    if let Some(check) = check {
        lb.set_health_check(check);
    }
    // Static discovery never waits: the update completes on its first poll.
    let _ = lb.update().now_or_never();
    lb
}

impl Pool {
    pub fn build(config: &PoolConfig) -> Pool {
        Pool::rebuild(config, None)
    }

    /// Build from `config`, carrying over the state (health, ejection, in-flight count) of
    /// every backend that `previous` (this pool as it was) has with the same name and address.
    pub fn rebuild(config: &PoolConfig, previous: Option<&Pool>) -> Pool {
        let checked = config.health_check.is_some();
        let mut states: Vec<Arc<BackendState>> = config
            .backends
            .iter()
            .map(|b| {
                let kept = previous.and_then(|p| {
                    let i = p.backends.binary_search_by_key(&b.addr, |s| s.addr).ok()?;
                    let s = &p.backends[i];
                    (s.name == b.name).then(|| s.clone())
                });
                match kept {
                    Some(s) => {
                        s.carry_over(b.weight, checked);
                        s
                    }
                    None => Arc::new(BackendState::new(b.name.clone(), b.addr, b.weight, checked)),
                }
            })
            .collect();
        states.sort_by_key(|s| s.addr);
        let backends: Arc<[Arc<BackendState>]> = states.into();
        let set: BTreeSet<Backend> = backends.iter().map(|s| pingora_backend(s)).collect();
        let check = config
            .health_check
            .as_ref()
            .map(|h| -> Check { Box::new(Probe::new(&config.name, h, backends.clone())) });
        let balancer = match config.algorithm {
            Algorithm::RoundRobin => {
                let order: Vec<SocketAddr> = config.backends.iter().map(|b| b.addr).collect();
                Balancer::Smooth(Balanced::new(set, Some(order.into()), check))
            }
            Algorithm::LeastConnections => {
                let tree = LoadTree::attach(backends.clone());
                Balancer::LeastConn(Balanced::new(set, Some(tree), check))
            }
            Algorithm::ConsistentHash | Algorithm::IpHash => {
                Balancer::Hash(Balanced::new(set, None, check))
            }
            Algorithm::Random => Balancer::Random(Balanced::new(set, None, check)),
        };
        Pool {
            name: config.name.clone(),
            algorithm: config.algorithm,
            hash_key: config.hash_key.clone(),
            retries: config.retries,
            timeouts: config.timeouts,
            health_check: config.health_check.clone(),
            passive_health: config.passive_health.clone(),
            affinity: config
                .affinity
                .as_ref()
                .map(|a| sticky::Sticky::new(&config.name, a, &backends)),
            protocol: config.protocol,
            upstream_tls: config.upstream_tls.clone(),
            upstream_ca: config
                .upstream_tls
                .as_ref()
                .and_then(|t| t.ca_file.as_ref())
                .and_then(|f| match crate::tls::load_ca(f) {
                    Ok(ca) => Some(ca),
                    Err(e) => {
                        // Validated moments ago; a file changed since is reported, not fatal.
                        tracing::error!(
                            "pool {}: {e}; verifying with the system's roots",
                            config.name
                        );
                        None
                    }
                }),
            max_h2_streams: config.max_h2_streams,
            backends,
            balancer,
            keyless: AtomicU64::new(0),
            next_check: Mutex::new(Instant::now()),
            checking: AtomicBool::new(false),
        }
    }

    /// When the next round of active checks is due (None: no checks, or one is running).
    pub fn next_check_at(&self) -> Option<Instant> {
        if self.health_check.is_none() || self.checking.load(Ordering::Relaxed) {
            return None;
        }
        self.next_check.lock().map(|t| *t).ok()
    }

    /// Check every backend once, concurrently (each check bounded by the pool's timeout).
    pub async fn check_round(&self) {
        let Some(hc) = &self.health_check else {
            return;
        };
        if self.checking.swap(true, Ordering::Relaxed) {
            return;
        }
        let started = Instant::now();
        self.balancer.backends().run_health_check(true).await;
        if let Ok(mut next) = self.next_check.lock() {
            *next = started + hc.interval;
        }
        self.checking.store(false, Ordering::Relaxed);
    }

    /// Return backends whose ejection time is over to service, logging each once.
    pub fn end_due_ejections(&self) {
        if self.passive_health.is_none() {
            return;
        }
        for s in self.backends.iter() {
            if s.end_ejection_if_due() {
                tracing::info!(
                    "pool {} backend {} ({}) returns to service: ejection time is over",
                    self.name,
                    s.name,
                    s.addr
                );
            }
        }
    }

    /// Whether backend `i` may take traffic now: Pingora's health, admission and ejection.
    pub fn is_ready(&self, i: usize) -> bool {
        let Some(s) = self.backends.get(i) else {
            return false;
        };
        s.usable() && self.balancer.backends().ready(&pingora_backend(s))
    }

    /// A real request to backend `i` got a response that is not a failure.
    pub fn report_success(&self, i: usize) {
        if self.passive_health.is_some() {
            if let Some(s) = self.backends.get(i) {
                s.request_succeeded();
            }
        }
    }

    /// A real request to backend `i` failed (`why`); eject it when the failures in a row
    /// reach the threshold, unless that would eject more than `max_ejected_percent`.
    pub fn report_failure(&self, i: usize, why: &str) {
        let (Some(p), Some(s)) = (&self.passive_health, self.backends.get(i)) else {
            return;
        };
        let failures = s.request_failed();
        if failures < p.consecutive_failures {
            return;
        }
        let ejected = self.backends.iter().filter(|b| b.is_ejected()).count();
        let allowed = self.backends.len() * p.max_ejected_percent as usize / 100;
        if ejected < allowed {
            let reason = format!("{failures} failed requests in a row, last: {why}");
            let time = s.eject(p.ejection_time, p.max_ejection_time, reason);
            tracing::warn!(
                "pool {} backend {} ({}) ejected for {:?}: {failures} failed requests in a row, last: {why}",
                self.name,
                s.name,
                s.addr,
                time
            );
        } else if failures == p.consecutive_failures {
            tracing::warn!(
                "pool {} backend {} ({}) failing ({why}) but not ejected: {ejected} of {} already are (max_ejected_percent {})",
                self.name,
                s.name,
                s.addr,
                self.backends.len(),
                p.max_ejected_percent
            );
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
        let accept = |b: &Backend| {
            self.index_of(b)
                .filter(|&i| !skip(i) && self.backends[i].usable())
        };
        match &self.balancer {
            Balancer::Smooth(b) => b.select(b"", n, accept),
            Balancer::LeastConn(b) => b.selector.tree().pick(|i| self.is_ready(i), &skip),
            Balancer::Random(b) => b.select(b"", n.max(16) * 2, accept),
            Balancer::Hash(b) => {
                // A ring has 160 points per backend; walk far enough to see them all.
                let steps = n.saturating_mul(160).clamp(256, 65_536);
                match key {
                    Some(key) => b.select(key, steps, accept),
                    None => {
                        let spread = self.keyless.fetch_add(1, Ordering::Relaxed);
                        b.select(&spread.to_le_bytes(), steps, accept)
                    }
                }
            }
        }
    }

    fn index_of(&self, b: &Backend) -> Option<usize> {
        let addr = b.addr.as_inet()?;
        self.backends.binary_search_by_key(addr, |s| s.addr).ok()
    }

    /// The peer for one attempt on backend `i`, with the pool's timeouts.
    pub fn peer(&self, i: usize) -> Option<HttpPeer> {
        let state = self.backends.get(i)?;
        let (tls, sni) = match &self.upstream_tls {
            Some(t) => (true, t.sni.clone()),
            None => (false, String::new()),
        };
        let mut peer = HttpPeer::new(state.addr, tls, sni);
        let o = &mut peer.options;
        o.connection_timeout = Some(self.timeouts.connect);
        o.total_connection_timeout = Some(self.timeouts.connect.saturating_mul(2));
        o.read_timeout = Some(self.timeouts.read);
        o.write_timeout = Some(self.timeouts.write);
        o.idle_timeout = Some(self.timeouts.idle);
        if let Some(t) = &self.upstream_tls {
            o.verify_cert = t.verify;
            o.verify_hostname = t.verify && !t.sni.is_empty();
            o.ca = self.upstream_ca.clone();
        }
        if self.protocol != UpstreamProtocol::H1 {
            o.set_http_version(2, 2);
            o.max_h2_streams = self.max_h2_streams;
        }
        Some(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendConfig;

    fn pool(algorithm: Algorithm, weights: &[u32]) -> Pool {
        let backends = weights
            .iter()
            .enumerate()
            .map(|(i, w)| BackendConfig {
                name: format!("b{i}"),
                addr: SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                weight: *w,
            })
            .collect();
        Pool::build(&PoolConfig::with_defaults("p", algorithm, backends))
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
