//! The runtime snapshot: routes and pools built from a validated `Config`. The request path
//! loads it once per request; a reload swaps in a new one.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::pool::Pool;
use crate::route::Router;

/// Everything the request path needs from one configuration.
pub struct Runtime {
    pub router: Router,
    /// Indexed as `Config::pools` (routes refer to them by index).
    pub pools: Vec<Arc<Pool>>,
}

impl Runtime {
    pub fn build(config: &Config) -> Runtime {
        Runtime {
            router: Router::new(&config.routes),
            pools: config
                .pools
                .iter()
                .map(|p| Arc::new(Pool::build(p)))
                .collect(),
        }
    }
}

/// The current snapshot, shared by the proxy and whatever replaces it.
pub type SharedRuntime = Arc<ArcSwap<Runtime>>;
