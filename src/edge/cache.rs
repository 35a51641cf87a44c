//! A route's response cache on pingora-cache: its storage (`cache_store`), LRU eviction and
//! cache lock, kept per route name for the life of the process (they must be `&'static`), the
//! cache key, and what is stored and for how long (RFC 9111 as a shared cache).
//!
//! Memory: one set of storage, eviction manager and lock table is leaked per route name that
//! ever had `cache:`, the first time it appears; reloads reuse it (a route that stops caching
//! is emptied, its shell stays). So the leak is bounded by the number of distinct cached route
//! names, plus one lock table per distinct `lock_timeout`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use http::header::{AUTHORIZATION, SET_COOKIE, VARY};
use http::{Method, StatusCode};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora_cache::cache_control::{CacheControl, Cacheable, InterpretCacheControl};
use pingora_cache::eviction::{lru, EvictionManager};
use pingora_cache::filters::{calculate_expires_header_time, calculate_serve_stale_durations};
use pingora_cache::key::{CacheHashKey, HashBinary};
use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora_cache::predictor::{CacheablePredictor, Predictor};
use pingora_cache::{CacheEntryKeyRef, VarianceBuilder};
use pingora_cache::{CacheKey, CacheMeta, CacheMetaDefaults, NoCacheReason, RespCacheable};
use pingora_prometheus::prometheus::{IntCounter, IntGauge};

use super::cache_store::Store;
use crate::config::{CacheConfig, Config};
use crate::observe::edge_metrics::{CacheResult, EdgeMetrics};

/// Shards of a route's LRU (pingora-cache's sharded manager) and of its predictor.
const LRU_SHARDS: usize = 16;

/// URLs remembered per predictor shard as not storable (16,384 per route).
const PREDICTOR_SHARD_KEYS: usize = 1024;

/// The long-lived parts of one route's cache.
pub struct CacheParts {
    pub store: Store,
    pub eviction: lru::Manager<LRU_SHARDS>,
    /// Remembers URLs whose last response could not be stored: their next requests skip the
    /// lookup and the cache lock (and are stored again once a response allows).
    pub predictor: Predictor<LRU_SHARDS>,
}

impl CacheParts {
    /// Remove the objects of `keys` from the eviction manager (they left the store).
    fn forget(&self, keys: &[pingora_cache::key::CompactCacheKey]) {
        for key in keys {
            self.eviction
                .remove(CacheEntryKeyRef::from_entry_id(key, None));
        }
    }

    /// Empty the cache: the number of objects removed.
    pub fn clear(&self) -> usize {
        let keys = self.store.clear();
        self.forget(&keys);
        keys.len()
    }
}

/// Every route cache this process made, by route name, and the lock tables by timeout. Owned by
/// the runtime snapshots (each passes it to the next).
#[derive(Default)]
pub struct Shelf {
    parts: Mutex<HashMap<String, &'static CacheParts>>,
    locks: Mutex<HashMap<Duration, &'static CacheLock>>,
}

impl Shelf {
    /// The parts of route `name`, sized for `config` (made and leaked the first time). A smaller
    /// `max_size` than before empties the cache: it is then within its bound at once.
    fn parts(&self, name: &str, config: &CacheConfig) -> &'static CacheParts {
        let mut all = self.parts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(parts) = all.get(name) {
            if config.max_size < parts.eviction.weight_limit() {
                parts.clear();
            }
            parts.eviction.set_weight_limit(config.max_size);
            return parts;
        }
        let parts: &'static CacheParts = Box::leak(Box::new(CacheParts {
            store: Store::default(),
            eviction: lru::Manager::with_capacity(config.max_size, 64),
            predictor: Predictor::new(PREDICTOR_SHARD_KEYS, None),
        }));
        all.insert(name.to_string(), parts);
        parts
    }

    /// The lock table whose writers hold a key for at most `timeout`.
    fn lock(&self, timeout: Duration) -> &'static CacheLock {
        let mut all = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        all.entry(timeout)
            .or_insert_with(|| Box::leak(Box::new(CacheLock::new(timeout))))
    }

    /// Empty the caches of the routes not in `keep`.
    fn retire(&self, keep: &[&str]) {
        let all = self.parts.lock().unwrap_or_else(PoisonError::into_inner);
        for (name, parts) in all.iter() {
            if !keep.contains(&name.as_str()) {
                let n = parts.clear();
                if n > 0 {
                    tracing::info!("route {name} no longer caches: {n} objects dropped");
                }
            }
        }
    }
}

/// One route's cache, as a snapshot uses it.
pub struct RouteCache {
    pub name: String,
    pub config: CacheConfig,
    pub parts: &'static CacheParts,
    pub lock: &'static CacheLock,
    /// The route checks credentials: its requests count as carrying `Authorization`.
    pub protected: bool,
    /// Default stale windows (no default freshness: `default_ttl` is applied here).
    defaults: CacheMetaDefaults,
    /// Indexed as `CacheResult::ALL`.
    counters: [IntCounter; 4],
    bytes: IntGauge,
}

/// No status is fresh by default (`default_ttl` is applied by `RouteCache::cacheable`).
fn no_default_ttl(_: StatusCode) -> Option<Duration> {
    None
}

/// Statuses RFC 9110 15.1 calls heuristically cacheable that fulcrum may store with
/// `default_ttl` (204 has nothing to keep, 206 does not happen as ranges are fetched whole,
/// and 405/414/501 answer the request rather than describe the resource).
const DEFAULT_TTL_STATUSES: [u16; 7] = [200, 203, 300, 301, 308, 404, 410];

impl RouteCache {
    /// The storage, eviction and lock to enable the request's cache with.
    pub fn storage(&self) -> &'static Store {
        &self.parts.store
    }

    pub fn eviction(&self) -> &'static lru::Manager<LRU_SHARDS> {
        &self.parts.eviction
    }

    pub fn cache_lock(&self) -> &'static CacheKeyLockImpl {
        self.lock
    }

    pub fn predictor(&self) -> &'static (dyn CacheablePredictor + Sync) {
        &self.parts.predictor
    }

    /// Count one request of the route.
    pub fn count(&self, result: CacheResult) {
        if let Some(c) = CacheResult::ALL
            .iter()
            .position(|r| *r == result)
            .and_then(|i| self.counters.get(i))
        {
            c.inc();
        }
        self.bytes
            .set(i64::try_from(self.parts.store.bytes()).unwrap_or(i64::MAX));
    }

    /// Remove every variant of `key` (its primary part): how many objects went.
    pub fn purge(&self, key: &CacheKey) -> usize {
        let keys = self.parts.store.remove_primary(&key.primary_bin());
        self.parts.forget(&keys);
        keys.len()
    }

    /// Whether `resp` (to a request with `authorization` or on a protected route) may be
    /// stored, and if so its metadata: freshness from `Cache-Control` (s-maxage, max-age),
    /// else `Expires`, else `default_ttl` for the default-cacheable statuses; never with
    /// `no-store`, `private`, `Vary: *`, a 206 or a 304; a request's `Authorization` only with
    /// `public`, `s-maxage` or `must-revalidate`; `Set-Cookie` only with `public` or
    /// `s-maxage` or when `private`/`no-cache` name it, and never stored itself.
    pub fn cacheable(&self, resp: &ResponseHeader, authorization: bool) -> RespCacheable {
        use RespCacheable::Uncacheable;
        let not = Uncacheable(NoCacheReason::OriginNotCache);
        let status = resp.status.as_u16();
        if matches!(status, 206 | 304) || status < 200 {
            return not;
        }
        let vary_all = resp.headers.get_all(VARY).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|n| n.trim_ascii() == b"*")
        });
        if vary_all {
            return not;
        }
        let cc = CacheControl::from_resp_headers(resp);
        let explicit_shared = cc
            .as_ref()
            .is_some_and(|c| c.public() || c.has_key("s-maxage"));
        if authorization
            && !cc
                .as_ref()
                .is_some_and(|c| c.allow_caching_authorized_req())
        {
            return not;
        }
        if cc
            .as_ref()
            .is_some_and(|c| c.is_cacheable() == Cacheable::No)
        {
            return not;
        }
        let has_cookie = resp.headers.contains_key(SET_COOKIE);
        if has_cookie && !explicit_shared && !names_set_cookie(cc.as_ref()) {
            return Uncacheable(NoCacheReason::Custom("Set-Cookie"));
        }
        let now = SystemTime::now();
        let ttl_to_time = |ttl: Duration| {
            if ttl.is_zero() {
                // stale at once: stored, but revalidated before any use
                now.checked_sub(Duration::from_secs(1))
            } else {
                now.checked_add(ttl)
            }
        };
        let fresh_until = cc
            .as_ref()
            .and_then(|c| c.fresh_duration())
            .and_then(ttl_to_time)
            .or_else(|| calculate_expires_header_time(resp))
            .or_else(|| {
                self.config
                    .default_ttl
                    .filter(|_| DEFAULT_TTL_STATUSES.contains(&status))
                    .and_then(ttl_to_time)
            });
        let Some(fresh_until) = fresh_until else {
            return not;
        };
        let (swr, sie) = calculate_serve_stale_durations(cc.as_ref(), &self.defaults);
        let mut stored = resp.clone();
        if let Some(c) = &cc {
            c.strip_private_headers(&mut stored);
        }
        // The cookie was for the client whose request filled the cache, not for the others.
        stored.remove_header(&SET_COOKIE);
        RespCacheable::Cacheable(CacheMeta::new(fresh_until, now, swr, sie, stored))
    }
}

/// Whether `private="..."` or `no-cache="..."` lists Set-Cookie (then it is stripped from the
/// stored copy, and the rest may be stored).
fn names_set_cookie(cc: Option<&CacheControl>) -> bool {
    let Some(cc) = cc else {
        return false;
    };
    let listed = |names: Option<pingora_cache::cache_control::ListValueIter<'_>>| {
        names.is_some_and(|mut it| it.any(|n| n.eq_ignore_ascii_case(b"set-cookie")))
    };
    listed(cc.private_field_names()) || listed(cc.no_cache_field_names())
}

/// Whether a request may be answered from the cache at all: GET or HEAD, not an upgrade.
pub fn request_cacheable(req: &RequestHeader) -> bool {
    matches!(req.method, Method::GET | Method::HEAD) && !req.headers.contains_key("upgrade")
}

/// Whether the request carries credentials (`Authorization`).
pub fn has_authorization(req: &RequestHeader) -> bool {
    req.headers.contains_key(AUTHORIZATION)
}

/// The cache key of a GET (or HEAD: HEAD is answered from the GET's object) of `scheme://host
/// path_and_query`: each part length-prefixed, so that no two requests share a key by moving
/// bytes between parts (and never the path alone).
pub fn key(scheme: &str, host: &str, path_and_query: &[u8]) -> CacheKey {
    let host = host.to_ascii_lowercase();
    let mut primary = Vec::with_capacity(32 + host.len() + path_and_query.len());
    for part in [
        b"GET".as_slice(),
        scheme.as_bytes(),
        host.as_bytes(),
        path_and_query,
    ] {
        primary.extend_from_slice(part.len().to_string().as_bytes());
        primary.push(b':');
        primary.extend_from_slice(part);
    }
    CacheKey::new(primary, "")
}

/// The variance of `req` for a stored response's `Vary` (None: the response does not vary):
/// each named request header's values, as sent.
pub fn variance(meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
    let mut builder = VarianceBuilder::new();
    for value in meta.headers().get_all(VARY) {
        for name in value.as_bytes().split(|b| *b == b',') {
            let name = String::from_utf8_lossy(name.trim_ascii()).to_ascii_lowercase();
            if name.is_empty() {
                continue;
            }
            let joined = req
                .headers
                .get_all(name.as_str())
                .iter()
                .map(|v| v.as_bytes())
                .collect::<Vec<_>>()
                .join(b", ".as_slice());
            builder.add_owned_name_value(name, joined);
        }
    }
    builder.finalize()
}

/// The caches of a snapshot's routes, indexed as `Config::routes` (None: the route does not
/// cache), and the shelf they come from.
#[derive(Default)]
pub struct RouteCaches {
    pub routes: Vec<Option<Arc<RouteCache>>>,
    shelf: Arc<Shelf>,
}

impl RouteCaches {
    /// Build for `config`, reusing the caches of `previous`'s shelf by route name.
    pub fn build(config: &Config, metrics: &EdgeMetrics, previous: Option<&RouteCaches>) -> Self {
        let shelf = previous.map(|p| p.shelf.clone()).unwrap_or_default();
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let c = r.edge.cache.as_ref()?;
                let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
                Some(Arc::new(RouteCache {
                    name: r.name.clone(),
                    config: c.clone(),
                    parts: shelf.parts(&r.name, c),
                    lock: shelf.lock(c.lock_timeout),
                    protected: r.edge.auth.is_some(),
                    defaults: CacheMetaDefaults::new(
                        no_default_ttl,
                        secs(c.stale_while_revalidate),
                        secs(c.stale_if_error),
                    ),
                    counters: metrics.cache(&r.name),
                    bytes: metrics.cache_bytes(&r.name),
                }))
            })
            .collect();
        let keep: Vec<&str> = config
            .routes
            .iter()
            .filter(|r| r.edge.cache.is_some())
            .map(|r| r.name.as_str())
            .collect();
        shelf.retire(&keep);
        RouteCaches { routes, shelf }
    }

    /// The cache of route `route`.
    pub fn get(&self, route: usize) -> Option<&Arc<RouteCache>> {
        self.routes.get(route).and_then(Option::as_ref)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(default_ttl: Option<Duration>) -> RouteCache {
        let config = CacheConfig {
            max_size: 1 << 20,
            max_object_size: 1 << 20,
            default_ttl,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::from_secs(30),
            lock_timeout: Duration::from_secs(1),
        };
        let shelf = Shelf::default();
        let registry = pingora_prometheus::prometheus::Registry::new();
        let metrics = EdgeMetrics::register(&registry).unwrap();
        RouteCache {
            name: "r".into(),
            parts: shelf.parts("r", &config),
            lock: shelf.lock(config.lock_timeout),
            config,
            protected: false,
            defaults: CacheMetaDefaults::new(no_default_ttl, 0, 30),
            counters: metrics.cache("r"),
            bytes: metrics.cache_bytes("r"),
        }
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn fresh_secs(c: RespCacheable) -> Option<u64> {
        match c {
            RespCacheable::Cacheable(m) => Some(m.fresh_sec()),
            RespCacheable::Uncacheable(_) => None,
        }
    }

    #[test]
    fn what_is_stored_and_for_how_long() {
        let c = cache(None);
        let s = |h: &[(&str, &str)], auth: bool| fresh_secs(c.cacheable(&resp(200, h), auth));
        assert_eq!(s(&[("cache-control", "max-age=60")], false), Some(60));
        assert_eq!(
            s(&[("cache-control", "max-age=60, s-maxage=5")], false),
            Some(5)
        );
        assert_eq!(s(&[], false), None, "no freshness and no default_ttl");
        assert_eq!(s(&[("cache-control", "no-store, max-age=60")], false), None);
        assert_eq!(s(&[("cache-control", "private, max-age=60")], false), None);
        assert_eq!(
            s(&[("cache-control", "max-age=60"), ("vary", "*")], false),
            None
        );
        assert_eq!(
            s(&[("cache-control", "max-age=60")], true),
            None,
            "Authorization"
        );
        assert_eq!(
            s(&[("cache-control", "public, max-age=60")], true),
            Some(60)
        );
        let cookie = ("set-cookie", "sid=1");
        assert_eq!(s(&[("cache-control", "max-age=60"), cookie], false), None);
        assert_eq!(
            s(&[("cache-control", "public, max-age=60"), cookie], false),
            Some(60)
        );
        let listed = ("cache-control", "max-age=60, no-cache=\"Set-Cookie\"");
        assert!(s(&[listed, cookie], false).is_some());
        let RespCacheable::Cacheable(m) = c.cacheable(
            &resp(200, &[("cache-control", "public, max-age=9"), cookie]),
            false,
        ) else {
            panic!("cacheable");
        };
        assert!(!m.headers().contains_key("set-cookie"), "never stored");
        assert_eq!(m.stale_if_error_sec(), 30, "the route's default");
        // An Expires in the past: stored stale (revalidated before use).
        assert_eq!(
            s(&[("expires", "Thu, 01 Jan 1970 00:00:00 GMT")], false),
            Some(0)
        );
        assert_eq!(
            s(&[("expires", "Fri, 01 Jan 2100 00:00:00 GMT")], false).map(|t| t > 1 << 30),
            Some(true)
        );
        assert_eq!(
            fresh_secs(c.cacheable(&resp(206, &[("cache-control", "max-age=9")]), false)),
            None
        );

        let d = cache(Some(Duration::from_secs(120)));
        assert_eq!(fresh_secs(d.cacheable(&resp(200, &[]), false)), Some(120));
        assert_eq!(fresh_secs(d.cacheable(&resp(500, &[]), false)), None);
        assert_eq!(
            fresh_secs(d.cacheable(&resp(200, &[("cache-control", "no-store")]), false)),
            None
        );
    }

    #[test]
    fn keys_frame_every_part_and_vary_picks_request_headers() {
        let a = key("http", "Example.com", b"/a?b=1");
        assert_eq!(a.primary_key(), b"3:GET4:http11:example.com6:/a?b=1");
        assert_ne!(
            key("http", "a.b", b"/c").primary_bin(),
            key("http", "a", b".b/c").primary_bin()
        );
        assert_ne!(
            key("http", "a", b"/").primary_bin(),
            key("https", "a", b"/").primary_bin()
        );
        let now = SystemTime::now();
        let meta = CacheMeta::new(
            now,
            now,
            0,
            0,
            resp(200, &[("vary", "Accept-Encoding, X-Lang")]),
        );
        let req = |lang: &str| {
            let mut r = RequestHeader::build("GET", b"/", None).unwrap();
            r.insert_header("x-lang", lang).unwrap();
            r
        };
        let fr = variance(&meta, &req("fr"));
        assert!(fr.is_some());
        assert_eq!(fr, variance(&meta, &req("fr")));
        assert_ne!(fr, variance(&meta, &req("de")));
        let plain = CacheMeta::new(now, now, 0, 0, resp(200, &[]));
        assert_eq!(variance(&plain, &req("fr")), None);
    }
}
