//! The validated configuration: typed, complete and consistent. Everything after `validate`
//! reads only these types.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::tls::{CaBundle, LoadedCert};

/// A whole, valid configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (for messages).
    pub source: PathBuf,
    pub server: ServerSettings,
    pub listeners: Vec<ListenerConfig>,
    pub routes: Vec<RouteConfig>,
    /// In file order; routes refer to them by index.
    pub pools: Vec<PoolConfig>,
    /// Things that are legal but probably not what the operator meant, with their location.
    pub warnings: Vec<String>,
    /// SHA-256 of the file's text, hex (shown by /status, to tell which file is live).
    pub hash: String,
    /// The file's text as validated (the runtime API's GET /api/v1/config, `--diff running`).
    pub text: std::sync::Arc<str>,
    pub admin: Option<AdminConfig>,
    pub access_log: Option<AccessLogConfig>,
    /// `resolvers:`: DNS servers for discovery (empty: /etc/resolv.conf).
    pub resolvers: Vec<SocketAddr>,
}

/// `admin:`: the admin listener (/metrics, /healthz, /status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// The runtime API's bearer token (None: its calls are refused with 403).
    pub token: Option<Secrets>,
}

/// `access_log:`: one JSON line per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogConfig {
    Stdout,
    File(PathBuf),
}

/// `server:`: the Pingora ServerConf settings fulcrum passes through (None = fulcrum's default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerSettings {
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

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let bits = |a: IpAddr| -> (u128, u32) {
            match a {
                IpAddr::V4(v) => (u128::from(u32::from(v)), 32),
                IpAddr::V6(v) => (u128::from(v), 128),
            }
        };
        let ((net, width), (x, xwidth)) = (bits(self.addr), bits(ip));
        if width != xwidth {
            return false;
        }
        let keep = u32::from(self.prefix).min(width);
        let shift = width - keep;
        keep == 0 || net.checked_shr(shift) == x.checked_shr(shift)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub name: String,
    pub addr: SocketAddr,
    /// TLS termination (None: plain HTTP).
    pub tls: Option<ListenerTls>,
    /// Plain listener answering every request with a 308 to https.
    pub redirect_https: bool,
    /// How long an idle client keep-alive connection is kept (whole seconds, at least 1).
    pub keepalive_timeout: Duration,
    /// Plain listener that also accepts HTTP/2 with prior knowledge (h2c), e.g. for gRPC.
    pub h2c: bool,
    pub limits: ListenerLimits,
    /// `debug_header: true`: the clients that get `X-Fulcrum-Debug` (None: nobody).
    pub debug_trusted: Option<Vec<Cidr>>,
}

/// What one client may hold of a listener, and how slowly it may send (nginx's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// The whole request header must arrive within this (nginx `client_header_timeout`).
    pub header_timeout: Duration,
    /// Longest pause between two reads of a request body (nginx `client_body_timeout`).
    pub body_timeout: Duration,
    /// Largest request header (request line and fields); beyond it, 431.
    pub max_header_bytes: usize,
    /// Most header fields in a request; beyond it, 431.
    pub max_headers: usize,
    /// Most client connections open at once on the listener (None: no limit of its own).
    pub max_connections: Option<usize>,
    /// Most client connections open at once from one client address (None: no limit).
    pub max_connections_per_ip: Option<usize>,
}

impl ListenerLimits {
    pub const DEFAULT: ListenerLimits = ListenerLimits {
        header_timeout: Duration::from_secs(60),
        body_timeout: Duration::from_secs(60),
        max_header_bytes: 32 * 1024,
        max_headers: 100,
        max_connections: None,
        max_connections_per_ip: None,
    };
}

/// Default idle time of a client keep-alive connection (as nginx's keepalive_timeout 75s).
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);

/// `tls:` of a listener: certificate/key pairs (the first is the default) and ALPN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    pub certificates: Vec<CertPair>,
    /// Offer h2 by ALPN (default true).
    pub http2: bool,
    /// Certificates ordered from an ACME server, served beside `certificates`.
    pub acme: Option<AcmeConfig>,
}

/// `tls.acme:` of a listener: where to order a certificate for `domains`, and where to keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// The ACME directory URL (https).
    pub directory: String,
    /// Contact of the account (`mailto:`), if given.
    pub email: Option<String>,
    /// DNS names of the certificate, lower-case, no wildcard (HTTP-01 cannot prove one).
    pub domains: Vec<String>,
    /// The CA bundle that verifies the ACME server (None: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Account, key, certificate, lock and pending challenges; may be shared by a fleet.
    pub state_dir: PathBuf,
    /// Renew once the certificate is this old (None: at 2/3 of its lifetime).
    pub renew_after: Option<Duration>,
}

impl ListenerTls {
    /// The certificates as validation loaded them (what `-t` checked is what is served).
    pub fn loaded(&self) -> Vec<LoadedCert> {
        self.certificates.iter().map(|p| p.loaded.clone()).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The chain and key read from `cert` and `key`, checked, while validating.
    pub loaded: LoadedCert,
}

/// How fulcrum talks to a pool's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    H1,
    /// HTTP/2 over TLS.
    H2,
    /// HTTP/2 over plain TCP (prior knowledge), e.g. gRPC.
    H2c,
}

/// `tls:` of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// SNI and the name the certificate must carry (default: none sent, address checked).
    pub sni: String,
    pub verify: bool,
    pub ca_file: Option<PathBuf>,
    /// The bundle read from `ca_file` while validating (None: the system's roots).
    pub ca: Option<CaBundle>,
}

pub const DEFAULT_MAX_H2_STREAMS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// `api.example.com` (stored lower-case)
    Exact(String),
    /// `*.example.com`: stored as `.example.com`; matches any name that ends with it.
    Suffix(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteConfig {
    pub host: Option<HostMatch>,
    pub path_prefix: Option<String>,
    /// Index into `Config::pools`.
    pub pool: usize,
    /// Unique; `name:`, else `HOST/PATH` (see `config::edge`).
    pub name: String,
    /// Rate limit and authentication (`config::edge`).
    pub edge: super::edge::EdgeConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    LeastConnections,
    /// Power of two choices over peak-EWMA latency x (in-flight + 1) / weight.
    LeastLatency,
    ConsistentHash,
    IpHash,
    Random,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::LeastConnections => "least_connections",
            Algorithm::LeastLatency => "least_latency",
            Algorithm::ConsistentHash => "consistent_hash",
            Algorithm::IpHash => "ip_hash",
            Algorithm::Random => "random",
        }
    }
}

/// What a hashing pool hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Path,
    Uri,
    /// Header name, lower-case.
    Header(String),
    Cookie(String),
    Query(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// The backend's stable name: `name:` or else its address.
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Each read from the backend (time to first byte, and between chunks).
    pub read: Duration,
    /// Each write to the backend.
    pub write: Duration,
    /// How long an idle keep-alive connection to a backend is kept.
    pub idle: Duration,
    /// Overall deadline of a request's attempts (None: no deadline).
    pub request: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            read: Duration::from_secs(60),
            write: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            request: None,
        }
    }
}

pub const DEFAULT_RETRIES: u32 = 2;

/// How long a drained backend keeps its pinned sessions by default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// least_latency's default time constant (linkerd2-proxy's default decay).
pub const DEFAULT_EWMA_DECAY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub algorithm: Algorithm,
    /// Set exactly when `algorithm` hashes (ip_hash: `ClientIp`).
    pub hash_key: Option<HashKey>,
    pub backends: Vec<BackendConfig>,
    /// Further attempts on other backends after a failed one.
    pub retries: u32,
    pub timeouts: Timeouts,
    pub health_check: Option<HealthCheckConfig>,
    /// None: `passive_health: off`.
    pub passive_health: Option<PassiveHealthConfig>,
    /// How long a backend that becomes usable ramps up to its full weight (None: off).
    pub slow_start: Option<Duration>,
    /// Bounded-load consistent hashing (consistent_hash, ip_hash): a backend whose in-flight
    /// requests would exceed this factor of its weighted share of the pool's is passed over
    /// (None: off).
    pub balance_factor: Option<f64>,
    /// least_latency: the time constant of each backend's latency average.
    pub ewma_decay: Duration,
    /// Backend-reported load (None: off).
    pub feedback: Option<FeedbackConfig>,
    pub retry_budget: RetryBudgetConfig,
    pub affinity: Option<AffinityConfig>,
    pub protocol: UpstreamProtocol,
    pub upstream_tls: Option<UpstreamTls>,
    /// Concurrent streams per upstream h2 connection.
    pub max_h2_streams: usize,
    /// How long a drained backend still takes requests pinned to it.
    pub drain_timeout: Duration,
    /// Backends found by DNS (None: `backends` is the whole fleet). Their addresses are not in
    /// `backends`: the discovery service adds the ones it has found (operate/discovery.rs).
    pub discovery: Option<super::discovery::PoolDiscovery>,
}

/// `feedback:`: where backends report their load (a response header, the health check's body);
/// it scales their weight.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackConfig {
    /// Header name, lower-case: read on proxied answers and on the active check's.
    pub header: Option<String>,
    /// Whether the first word of the HTTP health check's body is a report.
    pub check_body: bool,
    /// The least share of its weight a backend keeps (0 < min_weight <= 1).
    pub min_weight: f64,
    /// Whether `drain` takes the weight to zero (else to `min_weight`).
    pub allow_drain: bool,
}

/// Secret key material: never printed.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secrets(pub Vec<Vec<u8>>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} keys)", self.0.len())
    }
}

/// `affinity:`: the cookie that pins a client to a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AffinityConfig {
    pub cookie: String,
    pub max_age: Duration,
    pub domain: Option<String>,
    pub path: String,
    /// `Lax`, `Strict` or `None`.
    pub same_site: String,
    /// None: Secure on TLS listeners only.
    pub secure: Option<bool>,
    /// Signing keys (the first signs, all verify); empty: unsigned cookies.
    pub keys: Secrets,
}

impl PoolConfig {
    /// A pool with every optional setting at its default: no checks, no affinity, plain h1,
    /// and (for the hashing algorithms) the client IP as key.
    pub fn with_defaults(name: &str, algorithm: Algorithm, backends: Vec<BackendConfig>) -> Self {
        PoolConfig {
            name: name.to_string(),
            algorithm,
            hash_key: matches!(algorithm, Algorithm::ConsistentHash | Algorithm::IpHash)
                .then_some(HashKey::ClientIp),
            backends,
            retries: DEFAULT_RETRIES,
            timeouts: Timeouts::default(),
            health_check: None,
            passive_health: Some(PassiveHealthConfig::DEFAULT),
            slow_start: None,
            balance_factor: None,
            ewma_decay: DEFAULT_EWMA_DECAY,
            feedback: None,
            retry_budget: RetryBudgetConfig::DEFAULT,
            affinity: None,
            protocol: UpstreamProtocol::H1,
            upstream_tls: None,
            max_h2_streams: DEFAULT_MAX_H2_STREAMS,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            discovery: None,
        }
    }
}

/// What an active check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// GET `path` (with `host` as Host, default the backend address); passes on `expect_status`.
    Http {
        path: String,
        expect_status: Vec<u16>,
        host: Option<String>,
    },
    /// A TCP connect.
    Tcp,
}

/// `health_check:`: active checks of every backend of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passes that make an unhealthy backend healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures that make a healthy backend unhealthy.
    pub unhealthy_threshold: u32,
}

/// `passive_health:`: ejecting backends that fail real requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassiveHealthConfig {
    pub consecutive_failures: u32,
    pub ejection_time: Duration,
    /// Repeated ejections double up to this.
    pub max_ejection_time: Duration,
    /// Never more than this share of the pool is ejected at once.
    pub max_ejected_percent: u32,
    /// Upstream statuses that count as failures (default: none).
    pub fail_on_status: Vec<u16>,
}

impl HealthCheckConfig {
    /// HAProxy's defaults: check every 2s, 2 passes to rise, 3 failures to fall.
    pub const DEFAULT: HealthCheckConfig = HealthCheckConfig {
        kind: CheckKind::Tcp,
        interval: Duration::from_secs(2),
        timeout: Duration::from_secs(1),
        healthy_threshold: 2,
        unhealthy_threshold: 3,
    };
}

impl PassiveHealthConfig {
    /// On unless `passive_health: off`: three failures in a row (one bad connect is not a dead
    /// backend; three cost at most three retried attempts), out for nginx's `fail_timeout` of
    /// 10 s, doubling while it keeps failing up to 5 min, never more than half the pool.
    pub const DEFAULT: PassiveHealthConfig = PassiveHealthConfig {
        consecutive_failures: 3,
        ejection_time: Duration::from_secs(10),
        max_ejection_time: Duration::from_secs(300),
        max_ejected_percent: 50,
        fail_on_status: Vec::new(),
    };
}

/// `retry_budget:`: retries may add at most `ratio` of the pool's requests over `window`, plus
/// `min_per_second`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryBudgetConfig {
    pub ratio: f64,
    pub min_per_second: u32,
    pub window: Duration,
}

impl RetryBudgetConfig {
    /// linkerd2-proxy's and Envoy's usual figures: 20% over 10 s, at least 10 retries a second.
    pub const DEFAULT: RetryBudgetConfig = RetryBudgetConfig {
        ratio: 0.2,
        min_per_second: 10,
        window: Duration::from_secs(10),
    };
}
