//! The runtime API on the admin listener: drain, enable or disable a backend and set its weight
//! (`POST /api/v1/pools/{pool}/backends/{backend}/{drain|enable|disable}`,
//! `PUT .../weight` with `{"weight": N}`), and the running configuration
//! (`GET /api/v1/config`), and cache purges (`POST /api/v1/cache/purge` with `{"url": URL}`:
//! every variant of that URL's object; or `{"route": NAME}`: the route's whole cache). Every
//! call needs `Authorization: Bearer TOKEN` (401 without it);
//! with no token configured the API is closed (403).

use std::sync::Arc;

use pingora_prometheus::prometheus::{IntCounterVec, Opts};
use serde_json::json;

use crate::config::Secrets;
use crate::observe::metrics::Metrics;
use crate::operate::discovery::Fleet;
use crate::pool::operator::Mode;
use crate::pool::state::BackendState;
use crate::pool::Pool;
use crate::runtime::SharedRuntime;

/// Where the API's paths begin.
pub const PREFIX: &str = "/api/v1/";

/// Largest weight the API accepts (as the configuration's).
const MAX_WEIGHT: u64 = 256;

/// An answer of the API: status, content type, body, and whether it asks for credentials.
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub challenge: bool,
    /// The running configuration's file (GET /api/v1/config).
    pub config_path: Option<String>,
}

impl Answer {
    fn json(status: u16, value: serde_json::Value) -> Answer {
        let mut body = serde_json::to_vec_pretty(&value).unwrap_or_default();
        body.push(b'\n');
        Answer {
            status,
            content_type: "application/json",
            body,
            challenge: false,
            config_path: None,
        }
    }

    fn error(status: u16, message: &str) -> Answer {
        Answer::json(status, json!({ "error": message }))
    }
}

/// One call: method, path (after the admin listener's routing), bearer token, body.
pub struct Call<'a> {
    pub method: &'a http::Method,
    pub path: &'a str,
    pub authorization: Option<&'a [u8]>,
    pub body: &'a [u8],
    /// Who called, for the log.
    pub client: String,
}

/// The runtime API.
pub struct Api {
    runtime: SharedRuntime,
    fleet: Arc<Fleet>,
    token: Option<Secrets>,
    /// `fulcrum_runtime_changes_total{action}`.
    changes: Option<IntCounterVec>,
}

impl Api {
    pub fn new(
        runtime: SharedRuntime,
        fleet: Arc<Fleet>,
        token: Option<Secrets>,
        metrics: &Metrics,
    ) -> Api {
        let changes = IntCounterVec::new(
            Opts::new(
                "fulcrum_runtime_changes_total",
                "Backend changes made through the runtime API, by action.",
            ),
            &["action"],
        )
        .ok()
        .filter(|c| metrics.register(Box::new(c.clone())).is_ok());
        if let Some(c) = &changes {
            for action in ["drain", "enable", "disable", "weight"] {
                c.with_label_values(&[action]);
            }
        }
        Api {
            runtime,
            fleet,
            token,
            changes,
        }
    }

    /// Whether the bearer token of `authorization` is the configured one (constant time).
    fn authorized(&self, authorization: Option<&[u8]>) -> Result<(), Answer> {
        let Some(Secrets(tokens)) = &self.token else {
            return Err(Answer::error(
                403,
                "the runtime API is closed: set admin.token_file or admin.token_env",
            ));
        };
        let given = authorization.and_then(|h| h.strip_prefix(b"Bearer ".as_slice()));
        let ok =
            given.is_some_and(|given| tokens.iter().any(|t| same_secret(t, given.trim_ascii())));
        if ok {
            Ok(())
        } else {
            let mut a = Answer::error(401, "a valid `Authorization: Bearer TOKEN` is required");
            a.challenge = true;
            Err(a)
        }
    }

    pub fn answer(&self, call: &Call) -> Answer {
        if let Err(refused) = self.authorized(call.authorization) {
            return refused;
        }
        let rest = call.path.strip_prefix(PREFIX).unwrap_or_default();
        if rest == "config" {
            return match *call.method {
                http::Method::GET => self.config(),
                _ => Answer::error(405, "GET only"),
            };
        }
        if rest == "cache/purge" {
            return match *call.method {
                http::Method::POST => self.purge(call),
                _ => Answer::error(405, "POST only"),
            };
        }
        let Some((pool, backend, action)) = backend_path(rest) else {
            return Answer::error(404, "no such API path");
        };
        let rt = self.runtime.load_full();
        let Some(p) = rt.pools.iter().find(|p| p.name == pool) else {
            return Answer::error(404, &format!("no pool `{pool}`"));
        };
        let Some(state) = p.backends().iter().find(|b| b.name == backend) else {
            return Answer::error(404, &format!("pool {pool} has no backend `{backend}`"));
        };
        let result = match (call.method, action.as_str()) {
            (&http::Method::POST, "drain") => Ok(state.set_operator_mode(Mode::Draining)),
            (&http::Method::POST, "enable") => Ok(state.set_operator_mode(Mode::Active)),
            (&http::Method::POST, "disable") => Ok(state.set_operator_mode(Mode::Disabled)),
            (&http::Method::PUT, "weight") => self.set_weight(state, call.body),
            (_, "drain" | "enable" | "disable") => Err(Answer::error(405, "POST only")),
            (_, "weight") => Err(Answer::error(405, "PUT only")),
            _ => Err(Answer::error(404, "no such API path")),
        };
        match result {
            Ok(changed) => {
                if changed {
                    if let Some(c) = &self.changes {
                        c.with_label_values(&[action.as_str()]).inc();
                    }
                    tracing::info!(
                        "runtime API: pool {pool} backend {backend}: {} (from {})",
                        describe(&action, state),
                        call.client
                    );
                }
                Answer::json(200, backend_json(p, state))
            }
            Err(refused) => refused,
        }
    }

    /// `{"weight": N}` (1 to 256), or `{"weight": null}` to return to the configured weight.
    fn set_weight(&self, state: &BackendState, body: &[u8]) -> Result<bool, Answer> {
        let bad = || {
            Answer::error(
                400,
                "expected {\"weight\": N} with N from 1 to 256, or null",
            )
        };
        let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| bad())?;
        let weight = match value.get("weight") {
            Some(serde_json::Value::Null) => None,
            Some(w) => Some(
                w.as_u64()
                    .filter(|w| (1..=MAX_WEIGHT).contains(w))
                    .ok_or_else(bad)? as u32,
            ),
            None => return Err(bad()),
        };
        let changed = state.operator.set_weight(weight);
        if changed {
            // The cycles and rings are built from weights: build the snapshot again.
            self.fleet.rebuild_now();
        }
        Ok(changed)
    }

    /// `{"url": "http://HOST/PATH?QUERY"}`: the object the route of that URL keeps for a GET of
    /// it (all its `Vary` variants); `{"route": NAME}`: everything the route keeps.
    fn purge(&self, call: &Call) -> Answer {
        const EXPECTED: &str =
            "expected {\"url\": \"http(s)://HOST/PATH?QUERY\"} or {\"route\": NAME}";
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(call.body) else {
            return Answer::error(400, EXPECTED);
        };
        let rt = self.runtime.load_full();
        let caches = &rt.edge.caches;
        let (cache, purged, what) = match (value.get("url"), value.get("route")) {
            (Some(serde_json::Value::String(url)), None) => {
                let Some((scheme, host, target)) = purge_target(url) else {
                    return Answer::error(400, EXPECTED);
                };
                let path = target.split('?').next().unwrap_or("/");
                let Some((route, _)) = rt.router.find_route(Some(&host), path) else {
                    return Answer::error(404, &format!("no route serves {url}"));
                };
                let Some(cache) = caches.get(route) else {
                    return Answer::error(404, &format!("the route of {url} does not cache"));
                };
                let host = crate::route::normalize_host(&host);
                let key = crate::edge::cache::key(&scheme, host, target.as_bytes());
                (cache.clone(), cache.purge(&key), url.clone())
            }
            (None, Some(serde_json::Value::String(name))) => {
                let Some(cache) = caches.routes.iter().flatten().find(|c| &c.name == name) else {
                    return Answer::error(404, &format!("no route `{name}` with a cache"));
                };
                (cache.clone(), cache.parts.clear(), "everything".to_string())
            }
            _ => return Answer::error(400, EXPECTED),
        };
        tracing::info!(
            "runtime API: route {}: purged {what} ({purged} objects, from {})",
            cache.name,
            call.client
        );
        Answer::json(200, json!({ "route": cache.name, "purged": purged }))
    }

    fn config(&self) -> Answer {
        match self.fleet.applied_text() {
            Some((path, text)) => Answer {
                status: 200,
                content_type: "application/yaml",
                body: text.as_bytes().to_vec(),
                challenge: false,
                config_path: Some(path.display().to_string()),
            },
            None => Answer::error(500, "the running configuration is not available"),
        }
    }
}

/// Whether `a` and `b` are equal, in time independent of where they differ: their SHA-256
/// digests are compared byte by byte without an early exit.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let digest = |x: &[u8]| ring::digest::digest(&ring::digest::SHA256, x);
    let (da, db) = (digest(a), digest(b));
    da.as_ref()
        .iter()
        .zip(db.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// What a change did, for the log.
fn describe(action: &str, state: &BackendState) -> String {
    match action {
        "drain" => "drained: no new requests; pinned sessions until drain_timeout".into(),
        "enable" => "enabled".into(),
        "disable" => "disabled: no requests".into(),
        _ => format!("weight {}", state.weight()),
    }
}

/// A backend as the API reports it.
fn backend_json(pool: &Pool, b: &BackendState) -> serde_json::Value {
    json!({
        "pool": pool.name,
        "backend": b.name,
        "address": b.addr.to_string(),
        "state": b.readiness().as_str(),
        "weight": b.weight(),
        "operator_weight": b.operator.weight(),
    })
}

/// `pools/{pool}/backends/{backend}/{action}` -> (pool, backend, action), percent-decoded. A
/// backend's name may hold `/` (discovered backends are `NAME/ADDRESS`).
fn backend_path(rest: &str) -> Option<(String, String, String)> {
    let rest = rest.strip_prefix("pools/")?;
    let (pool, rest) = rest.split_once("/backends/")?;
    let (backend, action) = rest.rsplit_once('/')?;
    if pool.is_empty() || backend.is_empty() || pool.contains('/') {
        return None;
    }
    Some((
        percent_decode(pool)?,
        percent_decode(backend)?,
        action.to_string(),
    ))
}

/// The scheme (`http` or `https`), host (with its port, as a client sends it) and path with
/// query (`/` when empty) of an absolute URL.
fn purge_target(url: &str) -> Option<(String, String, String)> {
    let uri: http::Uri = url.trim().parse().ok()?;
    let scheme = uri.scheme_str().filter(|s| *s == "http" || *s == "https")?;
    let host = uri.authority()?.as_str().to_string();
    let target = uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("/")
        .to_string();
    Some((scheme.to_string(), host, target))
}

/// `%XX` escapes decoded (None for a malformed escape or text that is not UTF-8).
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_targets_are_absolute_http_urls() {
        let t = |u: &str| purge_target(u).map(|(s, h, p)| format!("{s} {h} {p}"));
        assert_eq!(
            t("https://Static.example.com/a.js?v=3").as_deref(),
            Some("https Static.example.com /a.js?v=3")
        );
        assert_eq!(
            t(" http://127.0.0.1:8080").as_deref(),
            Some("http 127.0.0.1:8080 /")
        );
        for bad in ["/a.js", "ftp://x/", "static.example.com/a", "http://", ""] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }

    #[test]
    fn backend_paths_keep_slashes_in_names_and_decode_escapes() {
        assert_eq!(
            backend_path("pools/web/backends/b1/drain"),
            Some(("web".into(), "b1".into(), "drain".into()))
        );
        assert_eq!(
            backend_path("pools/web/backends/app.internal:80/10.0.0.5:80/weight"),
            Some((
                "web".into(),
                "app.internal:80/10.0.0.5:80".into(),
                "weight".into()
            ))
        );
        assert_eq!(
            backend_path("pools/web/backends/a%20b/enable"),
            Some(("web".into(), "a b".into(), "enable".into()))
        );
        assert_eq!(backend_path("pools/web/backends//drain"), None);
        assert_eq!(backend_path("pools/web/backends/a%2/drain"), None);
        assert_eq!(backend_path("pools/web/b1/drain"), None);
    }
}
