//! The edge's counters: `fulcrum_rate_limited_total{route}` and
//! `fulcrum_auth_total{route,result}`, registered on the process's metrics registry.

use pingora_prometheus::prometheus::{IntCounter, IntCounterVec, Opts, Registry, Result};

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
        registry.register(Box::new(auth.clone()))?;
        Ok(EdgeMetrics {
            rate_limited,
            rate_limit_unavailable,
            auth,
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
}
