//! The runtime snapshot: routes, pools and their metric handles, built from a validated
//! `Config`. The request path loads it once per request; a reload swaps in a new one.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::observe::log_limit::LogLimit;
use crate::observe::metrics::{Metrics, PoolMetrics};
use crate::pool::Pool;
use crate::route::Router;

/// What the request path keeps beside each pool: its metric handles and its error-log limit.
pub struct PoolObserver {
    pub metrics: PoolMetrics,
    pub error_log: LogLimit,
}

/// Everything the request path needs from one configuration.
pub struct Runtime {
    pub router: Router,
    /// Rate limits and authentication, indexed as `Config::routes`.
    pub edge: crate::edge::EdgeRoutes,
    /// Indexed as `Config::pools` (routes refer to them by index).
    pub pools: Vec<Arc<Pool>>,
    /// `observers[i]` belongs to `pools[i]`.
    pub observers: Vec<PoolObserver>,
    /// For requests that no route matched.
    pub unrouted: PoolObserver,
    /// The listeners, in configuration order.
    pub listeners: Vec<ListenerInfo>,
    /// SHA-256 of the configuration file, hex; and when it was loaded.
    pub config_hash: String,
    pub loaded_at: SystemTime,
    /// Whether a connection no listener serves was reported (once per snapshot).
    stray_reported: AtomicBool,
    /// What DNS discovery last found (None: nothing is discovered); set by the discovery fleet.
    pub discovery: Option<Arc<crate::observe::dns_report::DnsReports>>,
}

impl Runtime {
    pub fn build(config: &Config, metrics: &Metrics) -> Runtime {
        Runtime::rebuild(config, metrics, None)
    }

    /// Build from `config`, carrying over the backend state of same-named pools of `previous`.
    pub fn rebuild(config: &Config, metrics: &Metrics, previous: Option<&Runtime>) -> Runtime {
        let names: Vec<String> = config.listeners.iter().map(|l| l.name.clone()).collect();
        let pools: Vec<Arc<Pool>> = config
            .pools
            .iter()
            .map(|p| {
                let old = previous.and_then(|r| r.pools.iter().find(|o| o.name == p.name));
                Arc::new(Pool::rebuild(p, old.map(|o| o.as_ref())))
            })
            .collect();
        let observers: Vec<PoolObserver> = pools
            .iter()
            .map(|p| PoolObserver {
                metrics: metrics.pool(
                    &p.name,
                    p.backends().iter().map(|b| b.name.as_str()),
                    &names,
                ),
                error_log: LogLimit::default(),
            })
            .collect();
        if let Some(previous) = previous {
            forget_gone_backends(metrics, previous, &observers);
        }
        Runtime {
            router: Router::new(&config.routes),
            edge: crate::edge::EdgeRoutes::build(config, &metrics.edge, previous.map(|p| &p.edge)),
            pools,
            observers,
            unrouted: PoolObserver {
                metrics: metrics.pool("", [], &names),
                error_log: LogLimit::default(),
            },
            listeners: config
                .listeners
                .iter()
                .map(|l| ListenerInfo {
                    name: l.name.clone(),
                    addr: l.addr,
                    tls: l.tls.is_some(),
                    redirect_to: l.redirect_https.then(|| https_port(config)),
                    keepalive_secs: l.keepalive_timeout.as_secs().max(1),
                    h2c: l.h2c,
                    limits: l.limits,
                    debug_trusted: l.debug_trusted.clone(),
                })
                .collect(),
            config_hash: config.hash.clone(),
            loaded_at: SystemTime::now(),
            stray_reported: AtomicBool::new(false),
            discovery: previous.and_then(|r| r.discovery.clone()),
        }
    }

    /// The listener (index) a connection arrived on, from its local address (None: unknown,
    /// or no listener serves it; the caller says so with `stray` and labels nothing with
    /// another listener's name).
    pub fn listener_of(&self, local: Option<&SocketAddr>) -> Option<usize> {
        let local = local?;
        self.listeners.iter().position(|l| serves(l.addr, local))
    }

    /// Report, once per snapshot, a connection to `local` that no listener serves: its
    /// requests are counted with an empty `listener` label and get the default limits.
    pub fn stray(&self, local: Option<&SocketAddr>) {
        if !self.stray_reported.swap(true, Ordering::Relaxed) {
            let at = local.map_or_else(|| "an unknown address".to_string(), |a| a.to_string());
            tracing::warn!(
                "a connection to {at} matches no listener: its requests are counted with listener=\"\" and get the default limits (said once per configuration)"
            );
        }
    }
}

/// Remove the per-backend series of the backends `previous` had and `observers` (the next
/// snapshot's) no longer have, so that reloads and DNS changes do not grow the registry.
fn forget_gone_backends(metrics: &Metrics, previous: &Runtime, observers: &[PoolObserver]) {
    let kept: HashSet<(&str, &str)> = observers
        .iter()
        .flat_map(|o| {
            let pool = o.metrics.name.as_str();
            o.metrics
                .backend_names()
                .iter()
                .map(move |b| (pool, b.as_str()))
        })
        .collect();
    for o in &previous.observers {
        for b in o.metrics.backend_names() {
            if !kept.contains(&(o.metrics.name.as_str(), b.as_str())) {
                metrics.forget_backend(&o.metrics.name, b);
            }
        }
    }
}

/// What the request path needs to know about a listener.
pub struct ListenerInfo {
    pub name: String,
    pub addr: SocketAddr,
    pub tls: bool,
    /// For `redirect_https`: the port to redirect to.
    pub redirect_to: Option<u16>,
    /// Idle limit of client keep-alive connections, in seconds.
    pub keepalive_secs: u64,
    /// Accepts HTTP/2 with prior knowledge beside HTTP/1.
    pub h2c: bool,
    pub limits: crate::config::ListenerLimits,
    /// The clients that get `X-Fulcrum-Debug` (None: the header is off).
    pub debug_trusted: Option<Vec<crate::config::Cidr>>,
}

/// Whether a listener bound to `listen` serves a connection to `local`.
pub fn serves(listen: SocketAddr, local: &SocketAddr) -> bool {
    listen.port() == local.port() && (listen.ip().is_unspecified() || listen.ip() == local.ip())
}

/// The port https redirects go to: the first TLS listener's, else 443.
fn https_port(config: &Config) -> u16 {
    config
        .listeners
        .iter()
        .find(|l| l.tls.is_some())
        .map_or(443, |l| l.addr.port())
}

/// The current snapshot, shared by the proxy and whatever replaces it.
pub type SharedRuntime = Arc<ArcSwap<Runtime>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebuild_without_a_backend_removes_its_latency_series() {
        let yaml = |backends: &str| {
            format!("listeners: [{{name: a, listen: 127.0.0.1:8080}}]\nroutes: [{{pool: p}}]\npools:\n  p:\n    backends: [{backends}]\n")
        };
        let parse = |y: String| crate::config::parse(std::path::Path::new("t.yaml"), &y).unwrap();
        let metrics = Metrics::new().unwrap();
        let both = parse(yaml(
            "{address: 127.0.0.1:9000, name: x}, {address: 127.0.0.1:9001, name: y}",
        ));
        let first = Runtime::build(&both, &metrics);
        first.observers[0].metrics.upstream_response(1, 0.01);
        let series = |backend: &str| {
            let text = metrics.render().unwrap();
            text.lines()
                .filter(|l| l.starts_with("fulcrum_upstream_response_seconds"))
                .filter(|l| l.contains(&format!("backend=\"{backend}\"")))
                .count()
        };
        assert_eq!(series("y"), 17, "14 bounds, +Inf, sum and count");
        let only_x = parse(yaml("{address: 127.0.0.1:9000, name: x}"));
        let second = Runtime::rebuild(&only_x, &metrics, Some(&first));
        assert_eq!(series("y"), 0);
        assert_eq!(series("x"), 17, "x stays");
        // y comes back (DNS answers it again): a fresh series.
        let third = Runtime::rebuild(&both, &metrics, Some(&second));
        assert_eq!(series("y"), 17);
        assert!(metrics
            .render()
            .unwrap()
            .contains("fulcrum_upstream_response_seconds_count{backend=\"y\",pool=\"p\"} 0"));
        drop(third);
    }

    #[test]
    fn a_local_address_no_listener_serves_has_no_listener() {
        let yaml = "listeners:\n  - {name: a, listen: 127.0.0.1:8080}\n  - {name: b, listen: 0.0.0.0:9090}\nroutes: [{pool: p}]\npools:\n  p:\n    backends: [{address: 127.0.0.1:9000}]\n";
        let config = crate::config::parse(std::path::Path::new("t.yaml"), yaml).unwrap();
        let metrics = Metrics::new().unwrap();
        let rt = Runtime::build(&config, &metrics);
        let at = |s: &str| rt.listener_of(Some(&s.parse().unwrap()));
        assert_eq!(at("127.0.0.1:8080"), Some(0));
        assert_eq!(at("10.1.2.3:9090"), Some(1), "b listens on every address");
        assert_eq!(at("10.1.2.3:8080"), None, "not listener 0");
        assert_eq!(at("127.0.0.1:7070"), None);
        assert_eq!(rt.listener_of(None), None);
    }
}
