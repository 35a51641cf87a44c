//! Fleets that change by themselves: the pools' DNS sources (names and SRV records) resolved
//! at start and re-resolved in a background service as their TTLs say. A changed answer
//! rebuilds the runtime snapshot the way a reload does (state of unchanged backends carried
//! over, new ones checked before traffic, vanished ones finish their requests on the old
//! snapshot); a failed or empty answer keeps the last good set. The `Fleet` also applies
//! reloads, so that a SIGHUP keeps what was discovered and the two never race.

mod service;

use service::resolve_all;
pub use service::{check_names, DiscoveryService};

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use pingora_prometheus::prometheus::{IntCounterVec, Opts};

use crate::config::discovery::{DiscoveredSource, Source};
use crate::config::{BackendConfig, Config};
use crate::observe::dns_report::{DnsReports, SourceReport};
use crate::observe::metrics::Metrics;
use crate::operate::dns::{Answer, Failure};
use crate::runtime::{Runtime, SharedRuntime};

/// A source of a pool.
type Key = (String, Source);

/// What is known of one source.
struct Tracked {
    /// The last good answer's addresses and weights (empty until one came).
    found: Vec<(SocketAddr, u32)>,
    /// When to ask next.
    due: Instant,
    /// Failed or empty answers in a row.
    failures: u32,
}

/// The configuration as applied and what its sources last found.
struct State {
    config: Config,
    sources: BTreeMap<Key, Tracked>,
}

/// Every source of `config` with its pool's settings.
fn sources_of(config: &Config) -> Vec<(Key, DiscoveredSource)> {
    config
        .pools
        .iter()
        .filter_map(|p| Some((p, p.discovery.as_ref()?)))
        .flat_map(|(p, d)| {
            d.sources
                .iter()
                .map(|s| ((p.name.clone(), s.source.clone()), s.clone()))
        })
        .collect()
}

/// `config` with each pool's discovered addresses added to its backends: after its static
/// backends, in the order of its sources; an address already in the pool is not added twice.
/// A discovered backend is named `{name}/{address}` (`name` defaults to `NAME:PORT` or the
/// SRV name), the same on every instance and across re-resolutions.
fn effective(config: &Config, sources: &BTreeMap<Key, Tracked>) -> Config {
    let mut out = config.clone();
    for pool in out.pools.iter_mut() {
        let Some(d) = pool.discovery.clone() else {
            continue;
        };
        let mut seen: HashSet<SocketAddr> = pool.backends.iter().map(|b| b.addr).collect();
        for s in &d.sources {
            let Some(t) = sources.get(&(pool.name.clone(), s.source.clone())) else {
                continue;
            };
            for (addr, weight) in &t.found {
                if !seen.insert(*addr) {
                    continue;
                }
                let weight = match s.source {
                    Source::Name { .. } => s.weight,
                    Source::Srv { .. } => *weight,
                };
                pool.backends.push(BackendConfig {
                    name: format!("{}/{addr}", s.base_name),
                    addr: *addr,
                    weight,
                });
            }
        }
    }
    out
}

/// Create every pool's resolution series at 0, so that rates and alerts see them from the start.
fn init_series(resolutions: &IntCounterVec, config: &Config) {
    for p in config.pools.iter().filter(|p| p.discovery.is_some()) {
        for result in ["success", "empty", "failure"] {
            resolutions.with_label_values(&[p.name.as_str(), result]);
        }
    }
}

/// The pools' discovered backends and the runtime snapshot built with them.
pub struct Fleet {
    runtime: SharedRuntime,
    metrics: Arc<Metrics>,
    resolutions: IntCounterVec,
    reports: Arc<DnsReports>,
    state: Mutex<State>,
    /// Wakes the service when a reload changed the sources.
    wake: tokio::sync::Notify,
}

impl Fleet {
    /// Resolve every source of `config` (a short wait, only when it has any), then build the
    /// first runtime snapshot with what was found. Fails when a `required` source does not
    /// resolve; any other may be missing (its pool starts without it).
    pub fn start(config: &Config, metrics: Arc<Metrics>) -> Result<Arc<Fleet>, String> {
        let resolutions = IntCounterVec::new(
            Opts::new(
                "fulcrum_dns_resolutions_total",
                "DNS resolutions of discovered backends, by pool and result (success, empty: no records, failure: no answer).",
            ),
            &["pool", "result"],
        )
        .map_err(|e| format!("metrics: {e}"))?;
        metrics
            .register(Box::new(resolutions.clone()))
            .map_err(|e| format!("metrics: {e}"))?;
        init_series(&resolutions, config);
        let now = Instant::now();
        let mut state = State {
            config: config.clone(),
            sources: sources_of(config)
                .into_iter()
                .map(|(k, _)| {
                    let t = Tracked {
                        found: Vec::new(),
                        due: now,
                        failures: 0,
                    };
                    (k, t)
                })
                .collect(),
        };
        let reports = Arc::new(DnsReports::default());
        let mut runtime = if state.sources.is_empty() {
            Runtime::build(config, &metrics)
        } else {
            let required: HashSet<Key> = sources_of(config)
                .into_iter()
                .filter(|(_, s)| s.required)
                .map(|(k, _)| k)
                .collect();
            let mut missing = Vec::new();
            for (key, answer) in resolve_all(config) {
                if let (Err(f), true) = (&answer, required.contains(&key)) {
                    missing.push(format!(
                        "pool {}: {} does not resolve ({}), and it is required",
                        key.0,
                        key.1,
                        f.message()
                    ));
                }
                take(&resolutions, &reports, &mut state, key, answer);
            }
            if !missing.is_empty() {
                return Err(missing.join("; "));
            }
            Runtime::build(&effective(config, &state.sources), &metrics)
        };
        if !state.sources.is_empty() {
            runtime.discovery = Some(reports.clone());
        }
        Ok(Arc::new(Fleet {
            runtime: Arc::new(ArcSwap::from_pointee(runtime)),
            metrics,
            resolutions,
            reports,
            state: Mutex::new(state),
            wake: tokio::sync::Notify::new(),
        }))
    }

    /// The snapshot the proxy serves from.
    pub fn runtime(&self) -> SharedRuntime {
        self.runtime.clone()
    }

    /// Apply a reloaded `config`: sources it still has keep what they found (new ones are
    /// asked at once, their pools gain them when they answer), and the snapshot is rebuilt.
    pub fn install(&self, config: &Config) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let wanted: Vec<Key> = sources_of(config).into_iter().map(|(k, _)| k).collect();
        state.sources.retain(|k, _| wanted.contains(k));
        let now = Instant::now();
        for k in wanted {
            state.sources.entry(k).or_insert(Tracked {
                found: Vec::new(),
                due: now,
                failures: 0,
            });
        }
        let kept: HashSet<(String, String)> = state
            .sources
            .keys()
            .map(|(p, s)| (p.clone(), s.to_string()))
            .collect();
        self.reports
            .retain(|p, s| kept.contains(&(p.to_string(), s.to_string())));
        state.config = config.clone();
        init_series(&self.resolutions, config);
        self.swap(&state);
        self.wake.notify_one();
    }

    /// Build and store the snapshot for `state` (called with the state locked: reloads and
    /// answers are applied one at a time, each on the snapshot the previous one stored).
    /// Build the snapshot again from what is applied: the runtime API changed a weight.
    pub fn rebuild_now(&self) {
        if let Ok(state) = self.state.lock() {
            self.swap(&state);
        }
    }

    /// The configuration applied now: its file and its text as validated.
    pub fn applied_text(&self) -> Option<(std::path::PathBuf, Arc<str>)> {
        let state = self.state.lock().ok()?;
        Some((state.config.source.clone(), state.config.text.clone()))
    }

    fn swap(&self, state: &State) {
        let old = self.runtime.load_full();
        let mut next = Runtime::rebuild(
            &effective(&state.config, &state.sources),
            &self.metrics,
            Some(&old),
        );
        if !state.sources.is_empty() {
            next.discovery = Some(self.reports.clone());
        }
        self.runtime.store(Arc::new(next));
    }

    /// The sources due now (with the weight of their addresses), the resolvers to ask, and
    /// when the next one is due.
    fn due(&self) -> (Vec<(Key, u32)>, Vec<SocketAddr>, Option<Instant>) {
        let Ok(state) = self.state.lock() else {
            return (Vec::new(), Vec::new(), None);
        };
        let now = Instant::now();
        let weights: BTreeMap<Key, u32> = sources_of(&state.config)
            .into_iter()
            .map(|(k, s)| (k, s.weight))
            .collect();
        let due = state
            .sources
            .iter()
            .filter(|(_, t)| t.due <= now)
            .map(|(k, _)| (k.clone(), weights.get(k).copied().unwrap_or(1)))
            .collect();
        let next = state.sources.values().map(|t| t.due).min();
        (due, state.config.resolvers.clone(), next)
    }

    /// Take `answer` for `key`: rebuild the snapshot if the set of addresses changed.
    fn apply(&self, key: Key, answer: Result<Answer, Failure>) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if take(&self.resolutions, &self.reports, &mut state, key, answer) {
            self.swap(&state);
        }
    }
}

/// Record `answer` in `state` (count it, report it, log a change of state once); true when
/// the source's addresses changed.
fn take(
    resolutions: &IntCounterVec,
    reports: &DnsReports,
    state: &mut State,
    key: Key,
    answer: Result<Answer, Failure>,
) -> bool {
    let Some(d) = state
        .config
        .pools
        .iter()
        .find(|p| p.name == key.0)
        .and_then(|p| p.discovery.clone())
    else {
        return false;
    };
    let Some(t) = state.sources.get_mut(&key) else {
        return false; // no longer configured
    };
    let (pool, source) = (&key.0, &key.1);
    let now = Instant::now();
    let (result, records, error, changed) = match answer {
        Ok(answer) => {
            if t.failures > 0 {
                tracing::info!(
                    "pool {pool}: {source} resolves again ({} addresses)",
                    answer.addrs.len()
                );
            }
            let changed = answer.addrs != t.found;
            if changed {
                let old: HashSet<_> = t.found.iter().map(|(a, _)| *a).collect();
                let new: HashSet<_> = answer.addrs.iter().map(|(a, _)| *a).collect();
                let list = |set: Vec<&SocketAddr>| {
                    set.iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let (added, removed) = (
                    list(new.difference(&old).collect()),
                    list(old.difference(&new).collect()),
                );
                let n = answer.addrs.len();
                let ttl = answer.ttl.as_secs();
                if added.is_empty() && removed.is_empty() {
                    tracing::info!(
                        "pool {pool}: {source}: weights changed ({n} addresses, ttl {ttl}s)"
                    );
                } else {
                    tracing::info!(
                        "pool {pool}: {source} now has {n} addresses (added: [{added}], removed: [{removed}], ttl {ttl}s)"
                    );
                }
            }
            t.failures = 0;
            t.due = now + d.refresh_after(answer.ttl);
            let n = answer.addrs.len();
            t.found = answer.addrs;
            ("success", n, None, changed)
        }
        Err(f) => {
            t.failures = t.failures.saturating_add(1);
            t.due = now + d.retry_after(t.failures);
            if t.failures == 1 && t.found.is_empty() {
                tracing::warn!(
                    "pool {pool}: {source}: {} ({}); the pool goes without it until it resolves",
                    f.message(),
                    f.label()
                );
            } else if t.failures == 1 {
                tracing::warn!(
                    "pool {pool}: {source}: {} ({}); keeping the last {} addresses, asking again until it answers",
                    f.message(),
                    f.label(),
                    t.found.len()
                );
            }
            (f.label(), 0, Some(f.message().to_string()), false)
        }
    };
    resolutions.with_label_values(&[pool, result]).inc();
    let wall = SystemTime::now();
    reports.record(
        pool,
        &source.to_string(),
        SourceReport {
            at: wall,
            result,
            records,
            in_use: t.found.len(),
            error,
            next_at: wall + t.due.saturating_duration_since(now),
        },
    );
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Algorithm, PoolConfig};
    use crate::pool::Pool;

    fn tracked(found: &[(&str, u32)]) -> Tracked {
        Tracked {
            found: found
                .iter()
                .map(|(a, w)| (a.parse().unwrap(), *w))
                .collect(),
            due: Instant::now(),
            failures: 0,
        }
    }

    #[test]
    fn discovered_backends_are_named_by_address_and_never_doubled() {
        let text = "listeners: [{name: m, listen: 127.0.0.1:1}]\nroutes: [{pool: p}]\npools:\n  p:\n    backends: [{address: 10.0.0.1:80}, {address: app.test:80, weight: 2, name: app}]\n    discover: {srv: _h._tcp.app.test}\n";
        let config = crate::config::parse(std::path::Path::new("t.yaml"), text).unwrap();
        let name = Source::Name {
            host: "app.test".into(),
            port: 80,
        };
        let srv = Source::Srv {
            name: "_h._tcp.app.test".into(),
        };
        let mut sources = BTreeMap::new();
        // The name's weight comes from the entry, the SRV record's from the answer.
        sources.insert(
            ("p".to_string(), name),
            tracked(&[("10.0.0.1:80", 1), ("10.0.0.2:80", 1)]),
        );
        sources.insert(
            ("p".to_string(), srv),
            tracked(&[("10.0.0.2:80", 7), ("10.0.0.3:8080", 5)]),
        );
        let e = effective(&config, &sources);
        let got: Vec<(String, String, u32)> = e.pools[0]
            .backends
            .iter()
            .map(|b| (b.name.clone(), b.addr.to_string(), b.weight))
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.1:80".into(), "10.0.0.1:80".into(), 1),
                ("app/10.0.0.2:80".into(), "10.0.0.2:80".into(), 2),
                (
                    "_h._tcp.app.test/10.0.0.3:8080".into(),
                    "10.0.0.3:8080".into(),
                    5
                ),
            ]
        );
        assert!(
            config.pools[0].backends.len() == 1,
            "the model keeps only the static one"
        );
    }

    #[test]
    fn an_empty_pool_builds_and_selects_nothing() {
        for alg in [
            Algorithm::RoundRobin,
            Algorithm::LeastConnections,
            Algorithm::LeastLatency,
            Algorithm::ConsistentHash,
            Algorithm::IpHash,
            Algorithm::Random,
        ] {
            let mut c = PoolConfig::with_defaults("p", alg, Vec::new());
            c.health_check = Some(crate::config::HealthCheckConfig::DEFAULT);
            let first = Pool::build(&c);
            assert_eq!(first.select(Some(b"k"), |_| false, true), None, "{alg:?}");
            let again = Pool::rebuild(&c, Some(&first));
            assert_eq!(again.select(None, |_| false, true), None, "{alg:?}");
        }
    }
}
