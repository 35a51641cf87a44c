//! Serde mirror of a route's edge keys (`name`, `rate_limit`, `auth`, `cache`): their shape only, as
//! `raw.rs` does for the rest of the file; `validate/edge.rs` gives them meaning.

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::Deserialize;
use serde_norway::Value;

use crate::config::schema::named;

/// `rate_limit:` of a route.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// Steady rate: `N/s` or `N/m`, e.g. `10/s`.
    #[schemars(regex(pattern = r"^[0-9]+/[sm]$"))]
    pub rate: String,
    /// Requests admitted at once beyond the steady rate (nginx's `burst`, with `nodelay`);
    /// default 0.
    #[schemars(range(max = 1000000))]
    pub burst: Option<u64>,
    /// `client_ip` (default) | `route` | `{header: NAME}` | `{cookie: NAME}`
    #[serde(default)]
    #[schemars(schema_with = "rate_limit_key")]
    pub key: Option<Value>,
    /// Fleet-wide: the budget lives in Redis, shared by every fulcrum using it.
    pub redis: Option<RawRedis>,
}

/// `cache:` of a route: its responses kept in memory, as RFC 9111 allows a shared cache.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// The most the route's stored responses (bodies, headers and bookkeeping) may take, e.g.
    /// `64MB` (units B, KB, MB, GB: powers of 1024); least recently used ones are evicted.
    #[schemars(regex(pattern = r"^\s*[0-9]+\s*([kKmMgG]?[bB])?\s*$"))]
    pub max_size: String,
    /// Larger responses are passed through, not stored (default the smaller of 16MB and
    /// `max_size`).
    #[schemars(regex(pattern = r"^\s*[0-9]+\s*([kKmMgG]?[bB])?\s*$"))]
    pub max_object_size: Option<String>,
    /// How long a response without `Cache-Control` max-age/s-maxage or `Expires` stays fresh
    /// (only 200, 203, 300, 301, 308, 404, 410); absent: such responses are not stored.
    pub default_ttl: Option<String>,
    /// How long past its freshness a response may be served while one request revalidates it,
    /// when the response's own `stale-while-revalidate` does not say (default: not at all).
    pub stale_while_revalidate: Option<String>,
    /// How long past its freshness a response may be served when the backend fails (error or
    /// 5xx), when the response's own `stale-if-error` does not say (default: not at all).
    pub stale_if_error: Option<String>,
    /// How long requests for an object being fetched wait for that fetch before going to the
    /// backend themselves (default `10s`).
    pub lock_timeout: Option<String>,
}

/// `redis:` of a rate limit.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// `redis://[:PASSWORD@]HOST:PORT[/DB]`
    pub url: String,
    /// How long a request waits for Redis (default `50ms`).
    pub timeout: Option<String>,
    /// Admit requests while Redis cannot be asked (default true); false answers 503.
    pub fail_open: Option<bool>,
}

/// `auth:` of a route: exactly one method.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub basic: Option<RawBasicAuth>,
    pub jwt: Option<RawJwtAuth>,
    pub forward: Option<RawForwardAuth>,
}

/// `auth: {forward: ...}`: a subrequest to an auth server decides (as nginx `auth_request`,
/// Traefik ForwardAuth).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawForwardAuth {
    /// `http://IP:PORT/PATH` of the auth server (an IP literal, as backends).
    pub url: String,
    /// The whole subrequest must be answered within this (default `1s`).
    pub timeout: Option<String>,
    /// Headers of a 2xx answer copied into the request for the backend, e.g. `[X-Auth-User]`.
    /// A client's own headers of these names are always removed.
    pub response_headers: Option<Vec<String>>,
}

/// `auth: {jwt: ...}`: a bearer token signed by a key of `key_file` (or `secret_file`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawJwtAuth {
    /// A PEM public key (RSA, EC P-256/P-384, Ed25519) or a JWKS (JSON `{"keys": [...]}`).
    pub key_file: Option<String>,
    /// HS256/384/512: a file holding the shared secret (at least 32 bytes; ends of lines
    /// trimmed).
    pub secret_file: Option<String>,
    /// The `iss` a token must carry (unchecked when absent).
    pub issuer: Option<String>,
    /// The `aud` a token must carry (unchecked when absent).
    pub audience: Option<String>,
    /// Claim -> request header for the backend, e.g. `{sub: X-Auth-Sub}`. A client's own
    /// headers of these names are always removed.
    pub forward_claims: Option<std::collections::BTreeMap<String, String>>,
    /// Remove the `Authorization` header before forwarding (default false).
    pub strip_token: Option<bool>,
    /// Clock skew allowed on `exp` and `nbf` (default `60s`).
    pub leeway: Option<String>,
    /// The realm of the `WWW-Authenticate` challenge (default `fulcrum`).
    pub realm: Option<String>,
}

/// `auth: {basic: ...}`: HTTP Basic against an htpasswd file of bcrypt hashes.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBasicAuth {
    /// `user:$2y$...` lines (`htpasswd -B`), read when the configuration is loaded.
    pub htpasswd: String,
    /// The realm of the `WWW-Authenticate` challenge (default `fulcrum`).
    pub realm: Option<String>,
}

/// `key:` of a rate limit.
pub fn rate_limit_key(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "What requests share a budget: client_ip (default), route, {header: NAME} or {cookie: NAME}.",
        "oneOf": [
            {"enum": ["client_ip", "route"]},
            named("header"),
            named("cookie"),
        ]
    })
}
