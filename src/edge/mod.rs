//! What a route checks before its request goes to a backend: its rate limit (`rate_limit`) and
//! its authentication (`basic`); and its response cache (`cache`, `cache_store`). Built per runtime snapshot from the model; a rate limiter
//! whose settings did not change is carried over a reload with its buckets.

pub mod basic;
pub mod cache;
pub mod cache_store;
pub mod forward;
pub mod jwt;
pub mod rate_limit;
pub mod redis_limit;

use std::net::IpAddr;
use std::sync::Arc;

use pingora::http::RequestHeader;
use pingora::Result;
use pingora_prometheus::prometheus::IntCounter;

use crate::config::{AuthConfig, Config, LimitKey};
use crate::observe::edge_metrics::{AuthResult, EdgeMetrics};
use crate::pool::hash_key;
use basic::BasicAuth;
use forward::{Answer, ForwardAuth};
use jwt::JwtAuth;
use rate_limit::{Decision, Limiter};
use redis_limit::RedisLimiter;

/// A route's limiter with its counter.
struct RouteLimit {
    limiter: LimitKind,
    refused: IntCounter,
    /// Fleet-wide limits: requests whose budget could not be checked in Redis.
    unavailable: Option<IntCounter>,
}

/// Where a route's budget lives.
#[derive(Clone)]
enum LimitKind {
    Local(Arc<Limiter>),
    Fleet(Arc<RedisLimiter>),
}

impl LimitKind {
    fn config(&self) -> &crate::config::RateLimitConfig {
        match self {
            LimitKind::Local(l) => &l.config,
            LimitKind::Fleet(r) => &r.config,
        }
    }
}

/// A route's authentication with its counters (indexed as `AuthResult::ALL`).
struct RouteAuth {
    method: Method,
    counters: [IntCounter; 5],
}

enum Method {
    Basic(BasicAuth),
    Jwt(JwtAuth),
    Forward(Box<ForwardAuth>),
}

/// What an admitted request changes in its header before it goes to the backend.
#[derive(Debug, Default)]
pub struct RequestEdits {
    /// Removed first (lower-case names): a client's own copies of forwarded claims, and the
    /// token when `strip_token` is set.
    pub remove: Vec<String>,
    /// Then set.
    pub insert: Vec<(String, http::HeaderValue)>,
}

/// Whether a request goes on.
#[derive(Debug)]
pub enum Verdict {
    Admit(RequestEdits),
    Refuse(Refusal),
}

/// The edge of one route.
pub struct RouteEdge {
    pub name: String,
    /// Bounds the log lines of failing forward-auth subrequests.
    error_log: crate::observe::log_limit::LogLimit,
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
    /// The auth server's own answer (forward auth).
    Relay {
        status: u16,
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
        body: bytes::Bytes,
    },
    /// 503: the auth server could not be asked.
    Unavailable,
}

/// The edges of all routes, indexed as `Config::routes`.
#[derive(Default)]
pub struct EdgeRoutes {
    routes: Vec<RouteEdge>,
    /// The routes' response caches.
    pub caches: cache::RouteCaches,
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
                        .filter(|o| o.limiter.config() == rl);
                    let fresh = || match &rl.redis {
                        None => LimitKind::Local(Arc::new(Limiter::new(rl.clone()))),
                        Some(redis) => LimitKind::Fleet(Arc::new(RedisLimiter::new(
                            rl.clone(),
                            redis.clone(),
                            &r.name,
                        ))),
                    };
                    RouteLimit {
                        limiter: old.map_or_else(fresh, |o| o.limiter.clone()),
                        refused: metrics.rate_limited(&r.name),
                        unavailable: rl
                            .redis
                            .is_some()
                            .then(|| metrics.rate_limit_unavailable(&r.name)),
                    }
                });
                let auth = r.edge.auth.as_ref().map(|a| RouteAuth {
                    method: match a {
                        AuthConfig::Basic(b) => Method::Basic(BasicAuth::new(b.clone())),
                        AuthConfig::Jwt(j) => Method::Jwt(JwtAuth::new(j.clone())),
                        AuthConfig::Forward(f) => {
                            Method::Forward(Box::new(ForwardAuth::new(f.clone())))
                        }
                    },
                    counters: metrics.auth(&r.name),
                });
                RouteEdge {
                    name: r.name.clone(),
                    error_log: Default::default(),
                    limit,
                    auth,
                }
            })
            .collect();
        EdgeRoutes {
            routes,
            caches: cache::RouteCaches::build(config, metrics, previous.map(|p| &p.caches)),
        }
    }

    /// Whether route `route` admits the request: its rate limit first (as nginx's limit_req
    /// runs before auth_basic, which keeps password guessing within the limit), then its
    /// authentication.
    pub async fn admit(
        &self,
        route: usize,
        req: &RequestHeader,
        client_ip: Option<IpAddr>,
    ) -> Result<Verdict> {
        let mut edits = RequestEdits::default();
        let Some(edge) = self.routes.get(route) else {
            return Ok(Verdict::Admit(edits));
        };
        if let Some(limit) = &edge.limit {
            let key = match &limit.limiter.config().key {
                LimitKey::Route => None,
                LimitKey::Request(k) => hash_key::extract(k, req, client_ip),
            };
            // Requests without the key share one budget (the empty key).
            let key = key.as_deref().unwrap_or(b"");
            let decision = match &limit.limiter {
                LimitKind::Local(l) => l.check(key),
                LimitKind::Fleet(r) => match r.check(key).await {
                    redis_limit::Verdict::Decided(d) => d,
                    redis_limit::Verdict::Unavailable => {
                        if let Some(c) = &limit.unavailable {
                            c.inc();
                        }
                        if !r.fail_open() {
                            return Ok(Verdict::Refuse(Refusal::Unavailable));
                        }
                        Decision::Allow
                    }
                },
            };
            if let Decision::Deny { retry_after } = decision {
                limit.refused.inc();
                return Ok(Verdict::Refuse(Refusal::RateLimited {
                    retry_after: rate_limit::retry_after_secs(retry_after),
                }));
            }
        }
        let Some(auth) = &edge.auth else {
            return Ok(Verdict::Admit(edits));
        };
        let count = |result: AuthResult| {
            if let Some(c) = AuthResult::ALL
                .iter()
                .position(|r| *r == result)
                .and_then(|i| auth.counters.get(i))
            {
                c.inc();
            }
        };
        let (result, challenge) = match &auth.method {
            Method::Basic(basic) => (basic.check(req).await?, &basic.challenge),
            Method::Jwt(jwt) => {
                let (result, claims) = jwt.check(req);
                let c = &jwt.config;
                edits.remove = c.forward_claims.iter().map(|(_, h)| h.clone()).collect();
                if c.strip_token {
                    edits.remove.push("authorization".into());
                }
                edits.insert = claims;
                let challenge = match result {
                    AuthResult::Missing => &jwt.challenge_missing,
                    _ => &jwt.challenge_invalid,
                };
                (result, challenge)
            }
            Method::Forward(fwd) => {
                edits.remove = fwd.config.response_headers.clone();
                return Ok(match fwd.check(req, client_ip).await {
                    Ok(Answer::Admit(copied)) => {
                        count(AuthResult::Ok);
                        edits.insert = copied;
                        Verdict::Admit(edits)
                    }
                    Ok(Answer::Deny {
                        status,
                        headers,
                        body,
                    }) => {
                        count(AuthResult::Denied);
                        Verdict::Refuse(Refusal::Relay {
                            status,
                            headers,
                            body,
                        })
                    }
                    Err(e) => {
                        count(AuthResult::Error);
                        if let Some(held) = edge.error_log.allow() {
                            tracing::warn!(
                                "route {}: forward auth failed ({held} such messages held back): {e}",
                                edge.name
                            );
                        }
                        Verdict::Refuse(Refusal::Unavailable)
                    }
                });
            }
        };
        count(result);
        if result != AuthResult::Ok {
            return Ok(Verdict::Refuse(Refusal::Unauthorized {
                challenge: challenge.clone(),
            }));
        }
        Ok(Verdict::Admit(edits))
    }
}
