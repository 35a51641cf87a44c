//! Serde mirror of the YAML file: its shape only. Every struct denies unknown keys; values that
//! need checking (addresses, durations, hash keys) stay strings or YAML values for `validate`.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_norway::Value;

/// `server:` — the subset of Pingora's ServerConf that fulcrum passes through.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub threads: Option<usize>,
    pub work_stealing: Option<bool>,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
    pub error_log: Option<String>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub grace_period_seconds: Option<u64>,
    pub graceful_shutdown_timeout_seconds: Option<u64>,
    pub daemon_wait_for_ready: Option<bool>,
    pub daemon_ready_timeout_seconds: Option<u64>,
    pub upstream_keepalive_pool_size: Option<usize>,
    pub listener_tasks_per_fd: Option<usize>,
}

/// One entry of `listeners:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: String,
    pub listen: String,
    pub tls: Option<RawListenerTls>,
    pub redirect_https: Option<bool>,
    pub keepalive_timeout: Option<String>,
    pub h2c: Option<bool>,
    pub header_timeout: Option<String>,
    pub body_timeout: Option<String>,
    #[schemars(range(min = 1024, max = 1_048_575))]
    pub max_header_bytes: Option<u64>,
    #[schemars(range(min = 1, max = 256))]
    pub max_headers: Option<u64>,
    #[schemars(range(min = 1, max = 10_000_000))]
    pub max_connections: Option<u64>,
    #[schemars(range(min = 1, max = 10_000_000))]
    pub max_connections_per_ip: Option<u64>,
    /// Answer trusted clients with `X-Fulcrum-Debug` (route, pool, algorithm, attempts, the
    /// backends passed over and why). Default false.
    pub debug_header: Option<bool>,
    /// The clients trusted with it: CIDRs (default: loopback only).
    pub debug_trusted: Option<Vec<String>>,
}

/// `tls:` of a listener.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    #[serde(default)]
    pub certificates: Vec<RawCertPair>,
    pub http2: Option<bool>,
    /// Certificates from an ACME server (issue #17), instead of or beside `certificates`.
    pub acme: Option<RawAcme>,
}

/// `tls.acme:` of a listener.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    pub directory: String,
    pub email: Option<String>,
    pub domains: Vec<String>,
    pub ca_file: Option<String>,
    pub state_dir: String,
    pub renew_after: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCertPair {
    pub cert: String,
    pub key: String,
}

/// `tls:` of a pool (to its backends).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    pub sni: Option<String>,
    pub verify: Option<bool>,
    pub ca_file: Option<String>,
}

/// One entry of `routes:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    #[serde(rename = "match")]
    pub matcher: Option<RawMatch>,
    pub pool: String,
    /// The route's name in metrics (`fulcrum_rate_limited_total{route}`); default `HOST/PATH`.
    pub name: Option<String>,
    pub rate_limit: Option<super::raw_edge::RawRateLimit>,
    pub auth: Option<super::raw_edge::RawAuth>,
    /// Cache the route's responses in memory (RFC 9111), e.g. `{max_size: 64MB}`.
    pub cache: Option<super::raw_edge::RawCache>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
}

/// One entry of `pools:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    /// `round_robin | least_connections | least_latency | consistent_hash | ip_hash | random`
    #[schemars(extend("enum" = ["round_robin", "least_connections", "least_latency", "consistent_hash", "ip_hash", "random", null]))]
    pub algorithm: Option<String>,
    /// `client_ip | path | uri | {header: NAME} | {cookie: NAME} | {query: NAME}`
    #[serde(default)]
    #[schemars(schema_with = "super::schema::hash_key")]
    pub hash_key: Option<Value>,
    /// Each checked on its own (`RawBackend`), so that every bad backend is reported.
    #[serde(default)]
    #[schemars(schema_with = "super::schema::backends")]
    pub backends: Vec<Value>,
    pub retries: Option<u32>,
    pub timeouts: Option<RawTimeouts>,
    pub health_check: Option<RawHealthCheck>,
    /// `off`, or a map (`RawPassiveHealth`); on with defaults when absent.
    #[serde(default)]
    #[schemars(schema_with = "super::schema::passive_health")]
    pub passive_health: Option<Value>,
    pub slow_start: Option<String>,
    /// consistent_hash / ip_hash only: bounded load, a backend takes at most this factor of
    /// the pool's average in-flight requests (per unit of weight); 1 < factor <= 10.
    #[schemars(range(min = 1.0, max = 10.0))]
    pub balance_factor: Option<f64>,
    /// least_latency only: the time constant of the latency averages (a duration).
    pub ewma_decay: Option<String>,
    /// Backend-reported load: a response header that scales the backend's weight.
    pub feedback: Option<RawFeedback>,
    pub retry_budget: Option<RawRetryBudget>,
    pub affinity: Option<RawAffinity>,
    /// `h1 | h2 | h2c`
    pub protocol: Option<String>,
    pub tls: Option<RawUpstreamTls>,
    pub max_h2_streams: Option<usize>,
    /// How long a backend drained through the runtime API still takes requests pinned to it
    /// by affinity (default 30s).
    pub drain_timeout: Option<String>,
    /// Backends found by DNS: an SRV record, and how often names are re-read.
    pub discover: Option<RawDiscover>,
}

/// `discover:` of a pool: an SRV record whose targets are backends, and the bounds within
/// which the TTLs of its records and of the pool's names (`address: NAME:PORT`) are honoured.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDiscover {
    /// An SRV name, e.g. `_http._tcp.app.service.consul`: targets, ports and weights.
    pub srv: Option<String>,
    /// Start-up fails when `srv` does not resolve (default false: the pool starts without it).
    pub required: Option<bool>,
    /// Shortest interval between two resolutions (default 1s).
    pub min_ttl: Option<String>,
    /// Longest interval between two resolutions (default 300s).
    pub max_ttl: Option<String>,
}

/// `feedback:` of a pool: backends report their load in a response header (of proxied answers
/// and of the active check's) or in the active check's body.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFeedback {
    /// The response header: a utilisation from 0 to 1, or `drain`.
    pub header: Option<String>,
    /// Whether the first word of the HTTP health check's body is a report (default false).
    pub check_body: Option<bool>,
    /// The least share of its weight a loaded backend keeps, a percentage (default `10%`).
    pub min_weight: Option<String>,
    /// Whether `drain` takes the backend's weight to zero (default false: to `min_weight`).
    pub allow_drain: Option<bool>,
}

/// `affinity:` of a pool: the sticky-session cookie.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAffinity {
    pub cookie: String,
    pub max_age: Option<String>,
    pub domain: Option<String>,
    pub path: Option<String>,
    pub same_site: Option<String>,
    pub secure: Option<bool>,
    pub keys_file: Option<String>,
    pub keys_env: Option<String>,
}

/// `health_check:` of a pool: exactly one of `http` / `tcp`, plus timing.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub http: Option<RawHttpCheck>,
    pub tcp: Option<RawTcpCheck>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub healthy_threshold: Option<u32>,
    pub unhealthy_threshold: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHttpCheck {
    pub path: Option<String>,
    pub expect_status: Option<Vec<u16>>,
    pub host: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTcpCheck {}

/// `passive_health:` of a pool.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPassiveHealth {
    pub consecutive_failures: Option<u32>,
    pub ejection_time: Option<String>,
    pub max_ejection_time: Option<String>,
    pub max_ejected_percent: Option<u32>,
    pub fail_on_status: Option<Vec<u16>>,
}

/// `retry_budget:` of a pool.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetryBudget {
    pub ratio: Option<f64>,
    pub min_per_second: Option<u32>,
    pub window: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub address: String,
    #[schemars(range(min = 1, max = 256))]
    pub weight: Option<i64>,
    pub name: Option<String>,
    /// For an address that is a DNS name: start-up fails when it does not resolve (default
    /// false: the pool starts without it and gains it once it resolves).
    pub required: Option<bool>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<String>,
    pub read: Option<String>,
    pub write: Option<String>,
    pub idle: Option<String>,
    pub request: Option<String>,
}

/// `admin:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: String,
    /// A file holding the bearer token of the runtime API's calls (relative paths are from
    /// this file's directory).
    pub token_file: Option<String>,
    /// Or an environment variable holding it.
    pub token_env: Option<String>,
}

/// `access_log:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// A file, or `stdout`.
    pub path: String,
    /// Only `json`.
    pub format: Option<String>,
}
