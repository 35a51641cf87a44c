//! What a route checks before its request goes to a backend: its rate limit (`rate_limit`) and
//! its authentication (`basic`). Built per runtime snapshot from the model; a rate limiter
//! whose settings did not change is carried over a reload with its buckets.

pub mod basic;
pub mod rate_limit;

use std::net::IpAddr;
use std::sync::Arc;

use pingora::http::RequestHeader;
use pingora::Result;
use pingora_prometheus::prometheus::IntCounter;

use crate::config::{AuthConfig, Config, LimitKey};
use crate::observe::edge_metrics::{AuthResult, EdgeMetrics};
use crate::pool::hash_key;
use basic::BasicAuth;
use rate_limit::{Decision, Limiter};

/// A route's limiter with its counter.
struct RouteLimit {
    limiter: Arc<Limiter>,
    refused: IntCounter,
}

/// A route's authentication with its counters (indexed as `AuthResult::ALL`).
struct RouteAuth {
    method: BasicAuth,
    counters: [IntCounter; 3],
}

/// The edge of one route.
pub struct RouteEdge {
    pub name: String,
    limit: Option<RouteLimit>,
    auth: Option<RouteAuth>,
}

/// Why a request is refused at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 429, with `Retry-After` in seconds.
    RateLimited { retry_after: u64 },
    /// 401, with this `WWW-Authenticate` challenge.
    Unauthorized { challenge: http::HeaderValue },
}

/// The edges of all routes, indexed as `Config::routes`.
#[derive(Default)]
pub struct EdgeRoutes {
    routes: Vec<RouteEdge>,
}

impl EdgeRoutes {
    /// Build for `config`; limiters of same-named routes with unchanged settings are kept.
    pub fn build(config: &Config, metrics: &EdgeMetrics, previous: Option<&EdgeRoutes>) -> Self {
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let limit = r.edge.rate_limit.as_ref().map(|rl| {
                    let old = previous
                        .and_then(|p| p.routes.iter().find(|o| o.name == r.name))
                        .and_then(|o| o.limit.as_ref())
                        .filter(|o| o.limiter.config == *rl);
                    RouteLimit {
                        limiter: old.map_or_else(
                            || Arc::new(Limiter::new(rl.clone())),
                            |o| o.limiter.clone(),
                        ),
                        refused: metrics.rate_limited(&r.name),
                    }
                });
                let auth = r.edge.auth.as_ref().map(|a| RouteAuth {
                    method: match a {
                        AuthConfig::Basic(b) => BasicAuth::new(b.clone()),
                    },
                    counters: metrics.auth(&r.name),
                });
                RouteEdge {
                    name: r.name.clone(),
                    limit,
                    auth,
                }
            })
            .collect();
        EdgeRoutes { routes }
    }

    /// Whether route `route` admits the request: its rate limit first (as nginx's limit_req
    /// runs before auth_basic, which keeps password guessing within the limit), then its
    /// authentication.
    pub async fn admit(
        &self,
        route: usize,
        req: &RequestHeader,
        client_ip: Option<IpAddr>,
    ) -> Result<Option<Refusal>> {
        let Some(edge) = self.routes.get(route) else {
            return Ok(None);
        };
        if let Some(limit) = &edge.limit {
            let key = match &limit.limiter.config.key {
                LimitKey::Route => None,
                LimitKey::Request(k) => hash_key::extract(k, req, client_ip),
            };
            // Requests without the key share one budget (the empty key).
            if let Decision::Deny { retry_after } =
                limit.limiter.check(key.as_deref().unwrap_or(b""))
            {
                limit.refused.inc();
                return Ok(Some(Refusal::RateLimited {
                    retry_after: rate_limit::retry_after_secs(retry_after),
                }));
            }
        }
        if let Some(auth) = &edge.auth {
            let result = auth.method.check(req).await?;
            if let Some(c) = AuthResult::ALL
                .iter()
                .position(|r| *r == result)
                .and_then(|i| auth.counters.get(i))
            {
                c.inc();
            }
            if result != AuthResult::Ok {
                return Ok(Some(Refusal::Unauthorized {
                    challenge: auth.method.challenge.clone(),
                }));
            }
        }
        Ok(None)
    }
}
