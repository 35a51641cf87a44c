//! The runtime snapshot: routes, pools and their metric handles, built from a validated
//! `Config`. The request path loads it once per request; a reload swaps in a new one.

use std::net::SocketAddr;
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
        let observers = pools
            .iter()
            .map(|p| PoolObserver {
                metrics: metrics.pool(&p.name, p.backends(), &names),
                error_log: LogLimit::default(),
            })
            .collect();
        Runtime {
            router: Router::new(&config.routes),
            edge: crate::edge::EdgeRoutes::build(config, &metrics.edge, previous.map(|p| &p.edge)),
            pools,
            observers,
            unrouted: PoolObserver {
                metrics: metrics.pool("", &[], &names),
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
                })
                .collect(),
            config_hash: config.hash.clone(),
            loaded_at: SystemTime::now(),
        }
    }

    /// The listener (index) a connection arrived on, from its local address.
    pub fn listener_of(&self, local: Option<&SocketAddr>) -> usize {
        let Some(local) = local else { return 0 };
        self.listeners
            .iter()
            .position(|l| {
                let a = l.addr;
                a.port() == local.port() && (a.ip().is_unspecified() || a.ip() == local.ip())
            })
            .unwrap_or(0)
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
