//! The validated edge settings of a route: its rate limit and its authentication. Files they
//! name (htpasswd) are read while validating and carried here, so a reload re-reads them and
//! a bad file keeps the old configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::model::HashKey;

/// What a route checks before its request goes to a backend (both optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgeConfig {
    pub rate_limit: Option<RateLimitConfig>,
    pub auth: Option<AuthConfig>,
}

/// `rate_limit:` of a route: a GCRA bucket per key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// `count` requests per `per` (1 s or 1 min) in the steady state.
    pub count: u64,
    pub per: Duration,
    /// Requests admitted at once beyond the steady rate (nginx `burst`, `nodelay`).
    pub burst: u64,
    pub key: LimitKey,
}

impl RateLimitConfig {
    /// The steady spacing of requests (the GCRA emission interval), in nanoseconds, >= 1.
    pub fn interval_nanos(&self) -> u64 {
        let per = u64::try_from(self.per.as_nanos()).unwrap_or(u64::MAX);
        (per / self.count.max(1)).max(1)
    }
}

/// What requests share one budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// All requests of the route.
    Route,
    /// The client address, a header or a cookie (as a pool's `hash_key`); requests without
    /// it share one budget.
    Request(HashKey),
}

/// `auth:` of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthConfig {
    Basic(BasicAuthConfig),
}

/// `auth: {basic: ...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicAuthConfig {
    pub htpasswd: PathBuf,
    pub realm: String,
    /// user -> bcrypt hash, as read from `htpasswd`.
    pub users: Arc<BTreeMap<String, String>>,
}
