//! The edge's counters: `fulcrum_rate_limited_total{route}`,
//! `fulcrum_auth_total{route,result}`, `fulcrum_cache_total{route,result}` and the gauge
//! `fulcrum_cache_bytes{route}`, registered on the process's metrics registry.

use pingora_prometheus::prometheus::{
    IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, Result,
};

/// How a request of a caching route was answered, for `fulcrum_cache_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    /// From the cache, fresh.
    Hit,
    /// From the backend (not stored, expired, or revalidated).
    Miss,
    /// From the cache, stale (while revalidating, or because the backend failed).
    Stale,
    /// Not looked up: a method other than GET and HEAD, an upgrade, or a URL whose last
    /// response could not be stored.
    Bypass,
}

impl CacheResult {
    pub const ALL: [CacheResult; 4] = [
        CacheResult::Hit,
        CacheResult::Miss,
        CacheResult::Stale,
        CacheResult::Bypass,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Stale => "stale",
            CacheResult::Bypass => "bypass",
        }
    }
}

/// What an authentication check decided, for `fulcrum_auth_total{result}` (a fixed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    /// Admitted.
    Ok,
    /// No credentials in the request.
    Missing,
    /// Wrong or malformed credentials.
    Invalid,
    /// Forward auth: the auth server refused (its answer went to the client).
    Denied,
    /// Forward auth: the auth server did not answer in time, or not in HTTP (503).
    Error,
}

impl AuthResult {
    pub const ALL: [AuthResult; 5] = [
        AuthResult::Ok,
        AuthResult::Missing,
        AuthResult::Invalid,
        AuthResult::Denied,
        AuthResult::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthResult::Ok => "ok",
            AuthResult::Missing => "missing",
            AuthResult::Invalid => "invalid",
            AuthResult::Denied => "denied",
            AuthResult::Error => "error",
        }
    }
}

/// The two counter families.
pub struct EdgeMetrics {
    rate_limited: IntCounterVec,
    rate_limit_unavailable: IntCounterVec,
    auth: IntCounterVec,
    cache: IntCounterVec,
    cache_bytes: IntGaugeVec,
}

impl EdgeMetrics {
    pub fn register(registry: &Registry) -> Result<EdgeMetrics> {
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "fulcrum_rate_limited_total",
                "Requests refused with 429 by a route's rate limit, by route name.",
            ),
            &["route"],
        )?;
        let auth = IntCounterVec::new(
            Opts::new(
                "fulcrum_auth_total",
                "Authentication checks by route name and result (ok, missing, invalid, denied, error).",
            ),
            &["route", "result"],
        )?;
        let rate_limit_unavailable = IntCounterVec::new(
            Opts::new(
                "fulcrum_rate_limit_unavailable_total",
                "Requests of a fleet-wide rate limit whose budget Redis could not be asked about (admitted when fail_open), by route name.",
            ),
            &["route"],
        )?;
        registry.register(Box::new(rate_limited.clone()))?;
        registry.register(Box::new(rate_limit_unavailable.clone()))?;
        let cache = IntCounterVec::new(
            Opts::new(
                "fulcrum_cache_total",
                "Requests of caching routes by route name and result (hit, miss, stale, bypass: not looked up).",
            ),
            &["route", "result"],
        )?;
        let cache_bytes = IntGaugeVec::new(
            Opts::new(
                "fulcrum_cache_bytes",
                "What a route's cached objects weigh (bodies, headers, per-object overhead), bounded by its max_size; updated as requests end.",
            ),
            &["route"],
        )?;
        registry.register(Box::new(auth.clone()))?;
        registry.register(Box::new(cache.clone()))?;
        registry.register(Box::new(cache_bytes.clone()))?;
        Ok(EdgeMetrics {
            rate_limited,
            rate_limit_unavailable,
            auth,
            cache,
            cache_bytes,
        })
    }

    /// The rate-limit counter of `route` (created at 0).
    pub fn rate_limited(&self, route: &str) -> IntCounter {
        self.rate_limited.with_label_values(&[route])
    }

    /// The counter of fleet-wide checks that Redis did not answer, for `route`.
    pub fn rate_limit_unavailable(&self, route: &str) -> IntCounter {
        self.rate_limit_unavailable.with_label_values(&[route])
    }

    /// The auth counters of `route`, indexed as `AuthResult::ALL` (created at 0).
    pub fn auth(&self, route: &str) -> [IntCounter; 5] {
        AuthResult::ALL.map(|r| self.auth.with_label_values(&[route, r.as_str()]))
    }

    /// The cache counters of `route`, indexed as `CacheResult::ALL` (created at 0).
    pub fn cache(&self, route: &str) -> [IntCounter; 4] {
        CacheResult::ALL.map(|r| self.cache.with_label_values(&[route, r.as_str()]))
    }

    /// The weight gauge of `route`'s cache.
    pub fn cache_bytes(&self, route: &str) -> IntGauge {
        self.cache_bytes.with_label_values(&[route])
    }
}
