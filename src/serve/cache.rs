//! The request path's side of a route's response cache (`crate::edge::cache`): enable
//! pingora-cache for a cacheable request, its key, and how the answer is reported (`X-Cache`,
//! `fulcrum_cache_total`).

use std::time::Duration;

use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};
use pingora_cache::{CacheKey, CacheOptionOverrides, CachePhase};

use crate::edge::cache::{self, RouteCache};
use crate::observe::edge_metrics::CacheResult;
use crate::serve::forwarding::request_host;

/// How many times a request waiting on another's fetch looks the object up again (a fetch that
/// stored nothing lets the waiters compete for the next one).
const LOCK_RETRIES: usize = 3;

/// Enable the cache for the session's request on `route`: whether it was (false: the request
/// bypasses the cache).
pub fn enable(session: &mut Session, route: &RouteCache) -> bool {
    let req = session.req_header();
    if !cache::request_cacheable(req) || request_host(req).is_none() {
        return false;
    }
    let mut overrides = CacheOptionOverrides::default();
    overrides.wait_timeout = Some(route.config.lock_timeout.max(Duration::from_millis(1)));
    overrides.max_lock_retries = Some(LOCK_RETRIES);
    session.cache.enable(
        route.storage(),
        Some(route.eviction()),
        Some(route.predictor()),
        Some(route.cache_lock()),
        Some(overrides),
    );
    session
        .cache
        .set_max_file_size_bytes(route.config.max_object_size);
    true
}

/// The key of the session's request: method (GET for HEAD), scheme, host, path and query.
pub fn key(session: &Session, tls: bool) -> Result<CacheKey> {
    let req = session.req_header();
    let Some(host) = request_host(req).map(crate::route::normalize_host) else {
        return Error::e_explain(ErrorType::InternalError, "a cached request without a host");
    };
    let scheme = if tls { "https" } else { "http" };
    Ok(cache::key(scheme, host, req.raw_path()))
}

/// How the session's request was answered, from its cache phase.
pub fn result(session: &Session) -> CacheResult {
    match session.cache.phase() {
        CachePhase::Hit => CacheResult::Hit,
        CachePhase::Stale | CachePhase::StaleUpdating => CacheResult::Stale,
        // The URL's last response could not be stored: not looked up.
        CachePhase::Bypass => CacheResult::Bypass,
        _ => CacheResult::Miss,
    }
}

/// The `X-Cache` value of `result` (a bypass went to the backend: MISS).
pub fn header(result: CacheResult) -> &'static str {
    match result {
        CacheResult::Hit => "HIT",
        CacheResult::Stale => "STALE",
        CacheResult::Miss | CacheResult::Bypass => "MISS",
    }
}
