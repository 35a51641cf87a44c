//! A pool: its backends with their per-backend state, the selector that picks among them with
//! the pool's algorithm, its retry budget, and Pingora's health-check registry for its checks
//! (the probe beside it; when rounds run is the health service's business).

pub mod affinity;
pub mod hash_key;
pub mod http_check;
pub mod mix;
pub mod operator;
pub mod probe;
pub mod retry_budget;
pub mod select;
pub mod state;
pub mod sticky;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::WrappedX509;
use pingora_load_balancing::discovery::Static;
use pingora_load_balancing::{Backend, Backends};

use crate::config::{
    Algorithm, HashKey, HealthCheckConfig, PassiveHealthConfig, PoolConfig, Timeouts,
    UpstreamProtocol, UpstreamTls,
};
use probe::Probe;
use retry_budget::RetryBudget;
use select::{Bound, Candidates, Ketama, LoadTree, Order, PeakEwma, SmoothWeighted};
pub use state::{BackendState, InflightGuard, Readiness, Transition};

/// The pool's algorithm, over pool indices.
enum Selector {
    /// round_robin (smooth order) and random (random order).
    Weighted(SmoothWeighted),
    LeastConn(Arc<LoadTree>),
    /// consistent_hash and ip_hash, with the bound of `balance_factor` when set.
    Hash(Ketama, Option<Bound>),
    /// least_latency.
    Latency(PeakEwma),
}

/// The Pingora identity of a backend (address + weight), for its health checks.
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
    pub slow_start: Option<Duration>,
    pub feedback: Option<crate::config::FeedbackConfig>,
    pub affinity: Option<sticky::Sticky>,
    pub retry_budget: RetryBudget,
    protocol: UpstreamProtocol,
    upstream_tls: Option<UpstreamTls>,
    /// The CA bundle of `upstream_tls` (None: the system's roots).
    upstream_ca: Option<Arc<[WrappedX509]>>,
    max_h2_streams: usize,
    /// How long a drained backend keeps the sessions pinned to it.
    pub drain_timeout: Duration,
    /// Sorted by address: a backend's position here is its pool index.
    backends: Arc<[Arc<BackendState>]>,
    selector: Selector,
    /// Pingora's registry that runs the active checks (None: no checks).
    checks: Option<Backends>,
    /// Spreads requests that lack the hash key.
    keyless: AtomicU64,
}

/// The share of its weight a backend keeps for a reported `value` (None: not a load).
fn feedback_share(f: &crate::config::FeedbackConfig, value: &str) -> Option<f64> {
    let value = value.trim();
    if value.eq_ignore_ascii_case("drain") {
        return Some(if f.allow_drain { 0.0 } else { f.min_weight });
    }
    let load: f64 = value.parse().ok()?;
    (0.0..=1.0)
        .contains(&load)
        .then(|| (1.0 - load).max(f.min_weight))
}

/// Pingora's registry of `backends` with `probe` as its check.
fn check_registry(backends: &[Arc<BackendState>], probe: Probe) -> Backends {
    let set: BTreeSet<Backend> = backends.iter().map(|s| pingora_backend(s)).collect();
    let mut registry = Backends::new(Static::new(set));
    registry.set_health_check(Box::new(probe));
    // Static discovery never waits: the update completes on its first poll.
    let _ = registry.update(|_| {}).now_or_never();
    registry
}

impl Pool {
    pub fn build(config: &PoolConfig) -> Pool {
        Pool::rebuild(config, None)
    }

    /// Build from `config`, carrying over the state (health, ejection, in-flight count) of
    /// every backend that `previous` (this pool as it was) has with the same name and address.
    /// Backends new to a pool that already served join it (slow start applies to them).
    pub fn rebuild(config: &PoolConfig, previous: Option<&Pool>) -> Pool {
        let checked = config.health_check.is_some();
        let mut states: Vec<Arc<BackendState>> = config
            .backends
            .iter()
            .map(|b| {
                let kept = previous.and_then(|p| {
                    let i = p.backends.binary_search_by_key(&b.addr, |s| s.addr).ok()?;
                    p.backends.get(i).filter(|s| s.name == b.name).cloned()
                });
                match kept {
                    Some(s) => {
                        s.carry_over(b.weight, checked);
                        s
                    }
                    None => Arc::new(BackendState::new(
                        b.name.clone(),
                        b.addr,
                        b.weight,
                        checked,
                        previous.is_some(),
                    )),
                }
            })
            .collect();
        states.sort_by_key(|s| s.addr);
        let backends: Arc<[Arc<BackendState>]> = states.into();
        let checks = config.health_check.as_ref().map(|h| {
            let probe = Probe::new(&config.name, h, config.feedback.clone(), backends.clone());
            check_registry(&backends, probe)
        });
        let index_of = |addr: SocketAddr| backends.binary_search_by_key(&addr, |s| s.addr).ok();
        let selector = match config.algorithm {
            Algorithm::RoundRobin | Algorithm::Random => {
                let in_config_order: Vec<(usize, u32)> = config
                    .backends
                    .iter()
                    .filter_map(|b| {
                        // The state's weight: the operator's when one is set.
                        let i = index_of(b.addr)?;
                        Some((i, backends.get(i)?.weight()))
                    })
                    .collect();
                let order = if config.algorithm == Algorithm::Random {
                    Order::Random
                } else {
                    Order::Smooth
                };
                Selector::Weighted(SmoothWeighted::new(&in_config_order, order))
            }
            Algorithm::LeastConnections => {
                Selector::LeastConn(LoadTree::attach(backends.clone(), config.slow_start))
            }
            Algorithm::ConsistentHash | Algorithm::IpHash => {
                let ring: Vec<(SocketAddr, u32)> =
                    backends.iter().map(|s| (s.addr, s.weight())).collect();
                let bound = config.balance_factor.map(|f| Bound::new(f, &backends));
                Selector::Hash(Ketama::new(&ring), bound)
            }
            Algorithm::LeastLatency => {
                let weights: Vec<u32> = backends.iter().map(|s| s.weight()).collect();
                let typical = match previous.map(|p| &p.selector) {
                    Some(Selector::Latency(old)) => old.typical_ns(),
                    _ => None,
                };
                Selector::Latency(PeakEwma::new(&weights, config.ewma_decay, typical))
            }
        };
        // Requests count in the pool's total only where a bound reads it.
        let total = match &selector {
            Selector::Hash(_, Some(bound)) => Some(bound.total().clone()),
            _ => None,
        };
        for s in backends.iter() {
            s.count_in(total.clone());
        }
        Pool {
            name: config.name.clone(),
            algorithm: config.algorithm,
            hash_key: config.hash_key.clone(),
            retries: config.retries,
            timeouts: config.timeouts,
            health_check: config.health_check.clone(),
            passive_health: config.passive_health.clone(),
            slow_start: config.slow_start,
            feedback: config.feedback.clone(),
            affinity: config
                .affinity
                .as_ref()
                .map(|a| sticky::Sticky::new(&config.name, a, &backends)),
            retry_budget: RetryBudget::new(&config.retry_budget),
            protocol: config.protocol,
            upstream_tls: config.upstream_tls.clone(),
            // Loaded by validation: building the runtime reads no file.
            upstream_ca: config
                .upstream_tls
                .as_ref()
                .and_then(|t| t.ca.as_ref())
                .map(|ca| ca.0.clone()),
            max_h2_streams: config.max_h2_streams,
            drain_timeout: config.drain_timeout,
            backends,
            selector,
            checks,
            keyless: AtomicU64::new(0),
        }
    }

    /// Check every backend once, concurrently (each check bounded by the pool's timeout);
    /// nothing without active checks. The health service decides when.
    pub async fn check_round(&self) {
        if let Some(checks) = &self.checks {
            checks.run_health_check(true).await;
        }
    }

    /// Return backends whose ejection time is over to service, logging each once; forget
    /// slow-start ramps that are over.
    pub fn end_due_ejections(&self) {
        for s in self.backends.iter() {
            s.end_ramp_if_done(self.slow_start);
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

    /// Whether backend `i` may take traffic now: admitted, healthy and not ejected.
    pub fn is_ready(&self, i: usize) -> bool {
        self.backends.get(i).is_some_and(|s| s.is_ready())
    }

    /// Whether backend `i` is ready but holds all that the pool's bounded load allows now
    /// (consistent_hash/ip_hash with `balance_factor`; false for other pools).
    pub fn at_bound(&self, i: usize) -> bool {
        match (&self.selector, self.backends.get(i)) {
            (Selector::Hash(_, Some(bound)), Some(s)) => {
                s.is_ready() && bound.is_full(s, s.effective_weight_milli(self.slow_start))
            }
            _ => false,
        }
    }

    /// Whether backend `i` may take a request pinned to it (see `BackendState::keeps_pinned`).
    pub fn keeps_pinned(&self, i: usize) -> bool {
        self.backends
            .get(i)
            .is_some_and(|s| s.keeps_pinned(self.drain_timeout))
    }

    /// A real request to backend `i` was relayed whole.
    pub fn report_success(&self, i: usize) {
        if self.passive_health.is_some() {
            if let Some(s) = self.backends.get(i) {
                s.request_succeeded();
            }
        }
    }

    /// A real request to backend `i`, started in the backend's `generation`, failed (`why`);
    /// eject it when the failures in a row reach the threshold, unless that would eject more
    /// than `max_ejected_percent`. Failures of requests that started before the backend was
    /// last ejected or returned do not count.
    pub fn report_failure(&self, i: usize, generation: u64, why: &str) {
        let (Some(p), Some(s)) = (&self.passive_health, self.backends.get(i)) else {
            return;
        };
        let Some(failures) = s.request_failed(generation) else {
            return;
        };
        if failures < p.consecutive_failures {
            return;
        }
        let ejected = self.backends.iter().filter(|b| b.is_ejected()).count();
        let allowed = self.backends.len() * p.max_ejected_percent as usize / 100;
        if ejected < allowed {
            let reason = format!("{failures} failed requests in a row, last: {why}");
            let Some(time) = s.eject(p.ejection_time, p.max_ejection_time, reason) else {
                return;
            };
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

    /// Pick a backend for one attempt: among the ready backends that `skip` does not exclude,
    /// by weight (effective weight under slow start), with the pool's algorithm. `key` is the
    /// hash key for hashing pools (None when the request lacks it: then requests are spread
    /// evenly). `in_turn` is false for a retry, which then draws by weight instead of taking
    /// the algorithm's next turn. Returns the index into `backends()`, None when none is usable.
    pub fn select(
        &self,
        key: Option<&[u8]>,
        skip: impl Fn(usize) -> bool,
        in_turn: bool,
    ) -> Option<usize> {
        let candidates = Candidates {
            states: &self.backends,
            skip: &skip,
            slow_start: self.slow_start,
        };
        match &self.selector {
            Selector::Weighted(s) => s.pick(&candidates, in_turn),
            // A drained backend (feedback) is parked in the tree: the last resort, as elsewhere.
            Selector::LeastConn(tree) => tree
                .pick(&candidates)
                .or_else(|| self.feedback.as_ref().and_then(|_| candidates.any_usable())),
            Selector::Latency(p2c) => p2c.pick(&candidates),
            Selector::Hash(ring, bound) => {
                // A ring has 160 points per unit of weight; walk far enough to pass a few
                // backends' worth, then fall back to any usable one.
                let steps = self.backends.len().saturating_mul(160).clamp(256, 65_536);
                match key {
                    Some(key) => ring.pick(key, &candidates, steps, bound.as_ref()),
                    None => {
                        let spread = self.keyless.fetch_add(1, Ordering::Relaxed);
                        ring.pick(&spread.to_le_bytes(), &candidates, steps, bound.as_ref())
                    }
                }
            }
        }
    }

    /// least_latency: a response header from backend `i` arrived `latency` after its attempt
    /// began (other algorithms keep no latencies).
    pub fn observe_latency(&self, i: usize, latency: Duration) {
        if let (Selector::Latency(p2c), Some(s)) = (&self.selector, self.backends.get(i)) {
            p2c.observe(s, latency);
        }
    }

    /// least_latency: an attempt on backend `i` failed `elapsed` after it began (a penalty).
    pub fn penalize_latency(&self, i: usize, elapsed: Duration) {
        if let (Selector::Latency(p2c), Some(s)) = (&self.selector, self.backends.get(i)) {
            p2c.penalize(s, elapsed);
        }
    }

    /// least_latency: backend `i`'s latency average in milliseconds, as the next pick sees it
    /// (None: another algorithm, or no sample yet).
    pub fn ewma_ms(&self, i: usize) -> Option<f64> {
        let (Selector::Latency(p2c), Some(s)) = (&self.selector, self.backends.get(i)) else {
            return None;
        };
        let typical = p2c.typical_ns();
        s.latency
            .estimate(select::p2c::now_us(), p2c.tau(), typical)
            .map(|ns| ns / 1e6)
    }

    /// feedback: backend `i` answered with `headers`; a load it reports there scales its
    /// weight: utilisation u (0 to 1) leaves it 1 - u of its weight, at least `min_weight`;
    /// `drain` leaves it none when `allow_drain`, else `min_weight`. Other values are ignored.
    pub fn take_feedback(&self, i: usize, headers: &http::HeaderMap) {
        let (Some(f), Some(s)) = (&self.feedback, self.backends.get(i)) else {
            return;
        };
        let Some(value) = f
            .header
            .as_deref()
            .and_then(|h| headers.get(h))
            .and_then(|v| v.to_str().ok())
        else {
            return;
        };
        if let Some(share) = feedback_share(f, value) {
            s.report_share(share);
        }
    }

    /// The bounded-load factor of a hashing pool (None: no bound).
    pub fn balance_factor(&self) -> Option<f64> {
        match &self.selector {
            Selector::Hash(_, bound) => bound.as_ref().map(Bound::factor),
            _ => None,
        }
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

    fn config(algorithm: Algorithm, weights: &[u32]) -> PoolConfig {
        let backends = weights
            .iter()
            .enumerate()
            .map(|(i, w)| BackendConfig {
                name: format!("b{i}"),
                addr: SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                weight: *w,
            })
            .collect();
        PoolConfig::with_defaults("p", algorithm, backends)
    }

    fn pool(algorithm: Algorithm, weights: &[u32]) -> Pool {
        Pool::build(&config(algorithm, weights))
    }

    /// A pool of equal backends reading `X-Backend-Load`, drain allowed.
    fn with_feedback(algorithm: Algorithm, n: usize) -> PoolConfig {
        let mut c = config(algorithm, &vec![1; n]);
        c.feedback = Some(crate::config::FeedbackConfig {
            header: Some("x-backend-load".into()),
            check_body: false,
            min_weight: 0.1,
            allow_drain: true,
        });
        c
    }

    #[test]
    fn round_robin_counts_follow_weights() {
        let p = pool(Algorithm::RoundRobin, &[5, 1, 1]);
        let order: Vec<usize> = (0..7)
            .map(|_| p.select(None, |_| false, true).unwrap())
            .collect();
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
                assert_eq!(p.select(Some(b"k"), |i| i != 2, true), Some(2), "{alg:?}");
            }
            assert_eq!(p.select(Some(b"k"), |_| true, true), None, "{alg:?}");
        }
    }

    #[test]
    fn hashing_is_stable_and_keyless_spreads() {
        let p = pool(Algorithm::ConsistentHash, &[1, 1, 1, 1]);
        let first = p.select(Some(b"user-42"), |_| false, true);
        for _ in 0..20 {
            assert_eq!(p.select(Some(b"user-42"), |_| false, true), first);
        }
        let spread: BTreeSet<usize> = (0..64)
            .filter_map(|_| p.select(None, |_| false, true))
            .collect();
        assert!(spread.len() >= 3, "keyless requests spread: {spread:?}");
    }

    #[test]
    fn random_respects_weights() {
        let p = pool(Algorithm::Random, &[9, 1]);
        let heavy = (0..2000)
            .filter(|_| p.select(None, |_| false, true) == Some(0))
            .count();
        assert!((1600..=1950).contains(&heavy), "{heavy}");
    }

    #[test]
    fn feedback_scales_weight_within_bounds() {
        let f = crate::config::FeedbackConfig {
            header: Some("x-backend-load".into()),
            check_body: false,
            min_weight: 0.1,
            allow_drain: false,
        };
        assert_eq!(feedback_share(&f, "0.25"), Some(0.75));
        assert_eq!(feedback_share(&f, "0"), Some(1.0));
        assert_eq!(
            feedback_share(&f, "0.95"),
            Some(0.1),
            "never below min_weight"
        );
        assert_eq!(feedback_share(&f, "drain"), Some(0.1), "drain not allowed");
        assert_eq!(feedback_share(&f, "1.5"), None);
        assert_eq!(feedback_share(&f, "busy"), None);
        let d = crate::config::FeedbackConfig {
            allow_drain: true,
            ..f
        };
        assert_eq!(feedback_share(&d, " DRAIN "), Some(0.0));
    }

    #[test]
    fn reported_load_shapes_shares() {
        let config = with_feedback(Algorithm::Random, 2);
        let p = Pool::build(&config);
        let mut headers = http::HeaderMap::new();
        headers.insert("x-backend-load", http::HeaderValue::from_static("0.75"));
        p.take_feedback(1, &headers);
        assert_eq!(p.backends()[1].effective_weight_milli(None), 250);
        let loaded = (0..5000)
            .filter(|_| p.select(None, |_| false, true) == Some(1))
            .count();
        assert!(
            (800..1200).contains(&loaded),
            "0.25 / 1.25 of 5000: {loaded}"
        );
        headers.insert("x-backend-load", http::HeaderValue::from_static("drain"));
        p.take_feedback(1, &headers);
        assert!((0..500).all(|_| p.select(None, |_| false, true) == Some(0)));
    }

    #[test]
    fn every_algorithm_passes_over_a_drained_backend_but_for_a_last_resort() {
        for alg in [
            Algorithm::RoundRobin,
            Algorithm::LeastConnections,
            Algorithm::LeastLatency,
            Algorithm::ConsistentHash,
            Algorithm::Random,
        ] {
            let config = with_feedback(alg, 2);
            let first = Pool::build(&config);
            let mut headers = http::HeaderMap::new();
            headers.insert("x-backend-load", http::HeaderValue::from_static("drain"));
            first.take_feedback(0, &headers);
            // A rebuild keeps the report; least_connections' new tree reads it at once.
            let p = Pool::rebuild(&config, Some(&first));
            let _busy = InflightGuard::acquire(p.backends()[1].clone());
            for k in 0..200u32 {
                let key = k.to_le_bytes();
                assert_eq!(p.select(Some(&key), |_| false, true), Some(1), "{alg:?}");
            }
            assert_eq!(p.select(Some(b"k"), |i| i == 1, true), Some(0), "{alg:?}");
        }
    }

    /// A consistent-hash pool of two equal backends with bounded load (factor 1.25).
    fn bounded_ring() -> PoolConfig {
        let backends = pool(Algorithm::ConsistentHash, &[1, 1])
            .backends()
            .iter()
            .map(|s| BackendConfig {
                name: s.name.clone(),
                addr: s.addr,
                weight: 1,
            })
            .collect::<Vec<_>>();
        let mut config = PoolConfig::with_defaults("p", Algorithm::ConsistentHash, backends);
        config.balance_factor = Some(1.25);
        config
    }

    /// The in-flight total of a bounded pool.
    fn total(p: &Pool) -> usize {
        match &p.selector {
            Selector::Hash(_, Some(b)) => b.total().load(Ordering::Relaxed),
            _ => usize::MAX,
        }
    }

    #[test]
    fn a_rebuild_keeps_in_flight_totals_balanced_and_latencies() {
        let mut config = bounded_ring();
        let old = Pool::build(&config);
        assert_eq!(old.balance_factor(), Some(1.25));
        let started_before = InflightGuard::acquire(old.backends()[0].clone());
        let new = Pool::rebuild(&config, Some(&old));
        let started_after = InflightGuard::acquire(new.backends()[0].clone());
        assert_eq!((total(&old), total(&new)), (1, 1), "each counts its own");
        drop(started_before);
        drop(started_after);
        assert_eq!((total(&old), total(&new)), (0, 0));
        assert_eq!(new.backends()[0].inflight(), 0);

        // least_latency keeps what it learnt.
        config.algorithm = Algorithm::LeastLatency;
        config.balance_factor = None;
        let ll = Pool::rebuild(&config, Some(&new));
        ll.observe_latency(0, Duration::from_millis(7));
        let again = Pool::rebuild(&config, Some(&ll));
        let ms = again.ewma_ms(0).unwrap();
        assert!((ms - 7.0).abs() < 0.1, "{ms}");
        let _g = InflightGuard::acquire(again.backends()[0].clone());
        assert_eq!(total(&new), 0, "no longer counted in the bounded pool");
    }

    #[test]
    fn a_backend_holding_its_whole_bound_is_at_bound_and_others_are_not() {
        let mut config = bounded_ring();
        let p = Pool::build(&config);
        assert!(!p.at_bound(0) && !p.at_bound(1));
        // 3 in flight on backend 0, none on 1: the bound of 0 is ceil(1.25 * 4 / 2) = 3.
        let _held: Vec<_> = (0..3)
            .map(|_| InflightGuard::acquire(p.backends()[0].clone()))
            .collect();
        assert!(p.at_bound(0), "3 of 3");
        assert!(!p.at_bound(1));
        // Unbounded pools never are.
        config.balance_factor = None;
        let q = Pool::build(&config);
        let _more: Vec<_> = (0..5)
            .map(|_| InflightGuard::acquire(q.backends()[0].clone()))
            .collect();
        assert!(!q.at_bound(0));
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
