//! Turns the YAML text into a `Config`, collecting every problem (syntax, shape and meaning)
//! with its location instead of stopping at the first.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

use super::locate::{Location, LocationIndex};
use super::model::*;
use super::raw::*;

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub location: Location,
    /// Key path, e.g. `pools.web.backends[0].weight`.
    pub path: String,
    pub message: String,
}

/// Every problem found in one file; `Display` prints one per line as `FILE:LINE:COL: PATH: message`.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", render(&self.file, p))?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

fn render(file: &str, p: &Problem) -> String {
    let path = if p.path.is_empty() { "(top)" } else { &p.path };
    format!(
        "{file}:{}:{}: {path}: {}",
        p.location.line, p.location.col, p.message
    )
}

/// Collects problems and warnings, locating each by its key path.
struct Checker<'a> {
    index: &'a LocationIndex,
    /// The configuration file's directory: relative file names in it are resolved from here.
    base: std::path::PathBuf,
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl Checker<'_> {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        let location = self.index.find(&path);
        self.problems.push(Problem {
            location,
            path,
            message: message.into(),
        });
    }

    fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        let location = self.index.find(&path);
        self.warnings.push(Problem {
            location,
            path,
            message: message.into(),
        });
    }

    /// Deserialize one section element into its raw type, reporting a shape error at the
    /// exact key serde stopped at.
    fn parse<T: DeserializeOwned>(&mut self, path: &str, value: Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(err) => {
                let mut full = path.to_string();
                for seg in err.path().iter() {
                    match seg {
                        serde_path_to_error::Segment::Seq { index } => {
                            full.push_str(&format!("[{index}]"))
                        }
                        serde_path_to_error::Segment::Map { key } => {
                            full = join(&full, key);
                        }
                        _ => {}
                    }
                }
                let message = err.into_inner().to_string();
                if let Some(field) = unknown_field(&message) {
                    if !full.ends_with(&format!(".{field}")) {
                        full = join(&full, field);
                    }
                }
                self.error(full, message);
                None
            }
        }
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// The key named by serde's "unknown field `x`, expected ..." message.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// Parse and validate `text` (read from `file`) into a `Config`.
pub fn validate(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let file_name = file.display().to_string();
    let fail = |problems| ConfigErrors {
        file: file_name.clone(),
        problems,
    };
    if let Err((location, message)) = super::bounds::check(text) {
        return Err(fail(vec![Problem {
            location,
            path: String::new(),
            message,
        }]));
    }
    let doc: Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let location = e
                .location()
                .map(|l| Location {
                    line: l.line(),
                    col: l.column(),
                })
                .unwrap_or(Location::START);
            return Err(fail(vec![Problem {
                location,
                path: String::new(),
                message: format!("invalid YAML: {e}"),
            }]));
        }
    };
    let index = LocationIndex::build(text);
    let mut ck = Checker {
        index: &index,
        base: file.parent().map(Path::to_path_buf).unwrap_or_default(),
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    let config = check_document(&mut ck, file, doc);
    if !ck.problems.is_empty() {
        let mut problems = ck.problems;
        problems.sort_by_key(|p| (p.location.line, p.location.col));
        return Err(fail(problems));
    }
    let mut config = config.ok_or_else(|| fail(Vec::new()))?;
    config.hash = ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    config.warnings = ck.warnings.iter().map(|w| render(&file_name, w)).collect();
    Ok(config)
}

fn check_document(ck: &mut Checker, file: &Path, doc: Value) -> Option<Config> {
    let top = match doc {
        Value::Mapping(m) => m,
        Value::Null => Mapping::new(),
        _ => {
            ck.error(
                "",
                "the file must be a mapping with listeners, routes and pools",
            );
            return None;
        }
    };
    let mut server = None;
    let mut admin = None;
    let mut access_log = None;
    let mut listeners = None;
    let mut routes = None;
    let mut pools = None;
    let mut resolvers = Vec::new();
    for (key, value) in top {
        let Some(key) = key.as_str().map(str::to_string) else {
            ck.error("", "top-level keys must be strings");
            continue;
        };
        match key.as_str() {
            "server" => server = Some(value),
            "admin" => admin = Some(value),
            "access_log" => access_log = Some(value),
            "listeners" => listeners = Some(value),
            "routes" => routes = Some(value),
            "pools" => pools = Some(value),
            "resolvers" => {
                resolvers = super::discovery::check_resolvers(value, &mut |p, m| ck.error(p, m))
            }
            other => ck.error(
                other,
                format!("unknown key `{other}`, expected one of `server`, `admin`, `access_log`, `listeners`, `routes`, `pools`, `resolvers`"),
            ),
        }
    }
    let server = check_server(ck, server);
    let listeners = check_listeners(ck, listeners);
    let admin = check_admin(ck, admin, listeners.as_deref().unwrap_or_default());
    let access_log = check_access_log(ck, access_log);
    let (pools, pool_index) = check_pools(ck, pools);
    let routes = check_routes(ck, routes, &pool_index);
    if let (Some(routes), Some(pools)) = (&routes, &pools) {
        let used: HashSet<usize> = routes.iter().map(|r| r.pool).collect();
        for (i, p) in pools.iter().enumerate() {
            if !used.contains(&i) {
                ck.warn(format!("pools.{}", p.name), "no route uses this pool");
            }
        }
    }
    Some(Config {
        source: file.to_path_buf(),
        server: server?,
        listeners: listeners?,
        routes: routes?,
        pools: pools?,
        warnings: Vec::new(),
        hash: String::new(),
        admin: admin?,
        access_log: access_log?,
        resolvers,
    })
}

/// `admin:` (absent: no admin listener). Outer None: invalid.
fn check_admin(
    ck: &mut Checker,
    value: Option<Value>,
    listeners: &[ListenerConfig],
) -> Option<Option<AdminConfig>> {
    let raw: RawAdmin = match value {
        None | Some(Value::Null) => return Some(None),
        Some(v) => ck.parse("admin", v)?,
    };
    match parse_socket_addr(&raw.listen) {
        Ok(listen) if listeners.iter().any(|l| l.addr == listen) => {
            ck.error("admin.listen", format!("{listen} is also a proxy listener"));
            None
        }
        Ok(listen) => {
            if !listen.ip().is_loopback() {
                ck.warn(
                    "admin.listen",
                    format!("{listen} is not a loopback address: metrics and status are visible to the network"),
                );
            }
            Some(Some(AdminConfig { listen }))
        }
        Err(msg) => {
            ck.error("admin.listen", msg);
            None
        }
    }
}

/// `access_log:` (absent: off). Outer None: invalid.
fn check_access_log(ck: &mut Checker, value: Option<Value>) -> Option<Option<AccessLogConfig>> {
    let raw: RawAccessLog = match value {
        None | Some(Value::Null) => return Some(None),
        Some(v) => ck.parse("access_log", v)?,
    };
    if let Some(f) = raw.format.as_deref().filter(|f| *f != "json") {
        ck.error(
            "access_log.format",
            format!("`{f}`: only `json` is supported"),
        );
        return None;
    }
    if raw.path == "stdout" {
        return Some(Some(AccessLogConfig::Stdout));
    }
    let path = ck.base.join(&raw.path);
    let dir_ok = path
        .parent()
        .is_none_or(|d| d.as_os_str().is_empty() || d.is_dir());
    if !dir_ok {
        ck.error(
            "access_log.path",
            format!("the directory of {} does not exist", path.display()),
        );
        return None;
    }
    Some(Some(AccessLogConfig::File(path)))
}

fn check_server(ck: &mut Checker, value: Option<Value>) -> Option<ServerSettings> {
    let raw: RawServer = match value {
        None | Some(Value::Null) => RawServer::default(),
        Some(v) => ck.parse("server", v)?,
    };
    if raw.threads == Some(0) {
        ck.error("server.threads", "must be at least 1");
    }
    if raw.upstream_keepalive_pool_size == Some(0) {
        ck.error("server.upstream_keepalive_pool_size", "must be at least 1");
    }
    if raw.listener_tasks_per_fd == Some(0) {
        ck.error("server.listener_tasks_per_fd", "must be at least 1");
    }
    Some(ServerSettings {
        threads: raw.threads,
        work_stealing: raw.work_stealing,
        pid_file: raw.pid_file,
        upgrade_sock: raw.upgrade_sock,
        error_log: raw.error_log,
        user: raw.user,
        group: raw.group,
        grace_period_seconds: raw.grace_period_seconds,
        graceful_shutdown_timeout_seconds: raw.graceful_shutdown_timeout_seconds,
        daemon_wait_for_ready: raw.daemon_wait_for_ready,
        daemon_ready_timeout_seconds: raw.daemon_ready_timeout_seconds,
        upstream_keepalive_pool_size: raw.upstream_keepalive_pool_size,
        listener_tasks_per_fd: raw.listener_tasks_per_fd,
    })
}

/// The items of a list-valued section; an absent or empty section is reported.
fn list_items(ck: &mut Checker, key: &str, value: Option<Value>) -> Option<Vec<Value>> {
    match value {
        None | Some(Value::Null) => {
            ck.error(key, format!("`{key}` is required and must not be empty"));
            None
        }
        Some(Value::Sequence(items)) if items.is_empty() => {
            ck.error(key, format!("`{key}` must not be empty"));
            None
        }
        Some(Value::Sequence(items)) => Some(items),
        Some(_) => {
            ck.error(key, format!("`{key}` must be a list"));
            None
        }
    }
}

fn check_listeners(ck: &mut Checker, value: Option<Value>) -> Option<Vec<ListenerConfig>> {
    let items = list_items(ck, "listeners", value)?;
    let mut out = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut addrs: HashMap<SocketAddr, usize> = HashMap::new();
    let mut ok = true;
    for (i, item) in items.into_iter().enumerate() {
        let path = format!("listeners[{i}]");
        let Some(raw) = ck.parse::<RawListener>(&path, item) else {
            ok = false;
            continue;
        };
        if raw.name.trim().is_empty() {
            ck.error(format!("{path}.name"), "must not be empty");
            ok = false;
        } else if let Some(first) = names.insert(raw.name.clone(), i) {
            ck.error(
                format!("{path}.name"),
                format!(
                    "duplicate listener name `{}` (also listeners[{first}])",
                    raw.name
                ),
            );
            ok = false;
        }
        let limits = check_limits(ck, &path, &raw);
        let tls = raw
            .tls
            .map(|t| check_listener_tls(ck, &format!("{path}.tls"), t));
        let redirect_https = raw.redirect_https.unwrap_or(false);
        let h2c = raw.h2c.unwrap_or(false);
        if h2c && tls.is_some() {
            ck.error(
                format!("{path}.h2c"),
                "h2c is HTTP/2 without TLS; a TLS listener offers h2 by ALPN (`tls.http2`)",
            );
            ok = false;
        }
        let keepalive_timeout = parse_duration(
            ck,
            &format!("{path}.keepalive_timeout"),
            raw.keepalive_timeout.as_deref(),
            DEFAULT_KEEPALIVE_TIMEOUT,
        )
        .max(Duration::from_secs(1));
        if redirect_https && tls.is_some() {
            ck.error(
                format!("{path}.redirect_https"),
                "only a plain listener redirects to https; this one has `tls`",
            );
            ok = false;
        }
        let tls = match tls {
            Some(None) => {
                ok = false;
                None
            }
            Some(t) => t,
            None => None,
        };
        match parse_socket_addr(&raw.listen) {
            Ok(addr) => {
                if let Some(first) = addrs.insert(addr, i) {
                    ck.error(
                        format!("{path}.listen"),
                        format!("duplicate listen address {addr} (also listeners[{first}])"),
                    );
                    ok = false;
                }
                out.push(ListenerConfig {
                    name: raw.name,
                    addr,
                    tls,
                    redirect_https,
                    keepalive_timeout,
                    h2c,
                    limits,
                });
            }
            Err(msg) => {
                ck.error(format!("{path}.listen"), msg);
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// The limits of a listener (see `ListenerLimits`), each within a range that keeps it useful.
fn check_limits(ck: &mut Checker, path: &str, raw: &RawListener) -> ListenerLimits {
    let d = ListenerLimits::DEFAULT;
    let mut timeout = |key: &str, text: Option<&str>, default: Duration| {
        let kpath = format!("{path}.{key}");
        let t = parse_duration(ck, &kpath, text, default);
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&t) {
            ck.error(kpath, "must be between 1s and 1h");
        }
        t
    };
    let header_timeout = timeout(
        "header_timeout",
        raw.header_timeout.as_deref(),
        d.header_timeout,
    );
    let body_timeout = timeout("body_timeout", raw.body_timeout.as_deref(), d.body_timeout);
    let mut count = |key: &str, value: Option<u64>, range: std::ops::RangeInclusive<u64>| {
        let v = value?;
        if !range.contains(&v) {
            ck.error(
                format!("{path}.{key}"),
                format!(
                    "{v} is out of range: must be between {} and {}",
                    range.start(),
                    range.end()
                ),
            );
        }
        Some(v as usize)
    };
    ListenerLimits {
        header_timeout,
        body_timeout,
        // Pingora reads at most 1 MiB of header and 256 fields whatever the limit.
        max_header_bytes: count("max_header_bytes", raw.max_header_bytes, 1024..=1_048_575)
            .unwrap_or(d.max_header_bytes),
        max_headers: count("max_headers", raw.max_headers, 1..=256).unwrap_or(d.max_headers),
        max_connections: count("max_connections", raw.max_connections, 1..=10_000_000),
        max_connections_per_ip: count(
            "max_connections_per_ip",
            raw.max_connections_per_ip,
            1..=10_000_000,
        ),
    }
}

/// `tls:` of a listener: every pair is loaded and checked now, so that `-t` catches a missing
/// file, a key that does not match, or an expired certificate. None: invalid.
fn check_listener_tls(ck: &mut Checker, path: &str, raw: RawListenerTls) -> Option<ListenerTls> {
    if raw.certificates.is_empty() {
        ck.error(
            format!("{path}.certificates"),
            "needs at least one {cert, key} pair",
        );
        return None;
    }
    let now = crate::tls::unix_now();
    let mut ok = true;
    let mut certificates = Vec::new();
    for (j, pair) in raw.certificates.into_iter().enumerate() {
        let ppath = format!("{path}.certificates[{j}]");
        let cert = ck.base.join(&pair.cert);
        let key = ck.base.join(&pair.key);
        if let Err((part, msg)) = crate::tls::load_pair(&cert, &key, now) {
            let which = match part {
                crate::tls::Part::Cert => "cert",
                crate::tls::Part::Key => "key",
            };
            ck.error(format!("{ppath}.{which}"), msg);
            ok = false;
        }
        certificates.push(CertPair { cert, key });
    }
    ok.then_some(ListenerTls {
        certificates,
        http2: raw.http2.unwrap_or(true),
    })
}

fn check_routes(
    ck: &mut Checker,
    value: Option<Value>,
    pools: &HashMap<String, usize>,
) -> Option<Vec<RouteConfig>> {
    let items = list_items(ck, "routes", value)?;
    let mut out = Vec::new();
    let mut ok = true;
    let mut catch_all: Option<usize> = None;
    for (i, item) in items.into_iter().enumerate() {
        let path = format!("routes[{i}]");
        let Some(raw) = ck.parse::<RawRoute>(&path, item) else {
            ok = false;
            continue;
        };
        if let Some(first) = catch_all {
            ck.warn(
                &path,
                format!("unreachable: routes[{first}] before it matches every request"),
            );
        }
        let (host, path_prefix) = match raw.matcher {
            None => (None, None),
            Some(m) => {
                let host = match m.host.as_deref().map(parse_host) {
                    None => None,
                    Some(Ok(h)) => Some(h),
                    Some(Err(msg)) => {
                        ck.error(format!("{path}.match.host"), msg);
                        ok = false;
                        None
                    }
                };
                if let Some(p) = &m.path_prefix {
                    if !p.starts_with('/') {
                        ck.error(format!("{path}.match.path_prefix"), "must start with `/`");
                        ok = false;
                    }
                }
                (host, m.path_prefix)
            }
        };
        if host.is_none() && path_prefix.as_deref().is_none_or(|p| p == "/") {
            catch_all.get_or_insert(i);
        }
        match pools.get(&raw.pool) {
            Some(&pool) => out.push(RouteConfig {
                host,
                path_prefix,
                pool,
            }),
            None => {
                ck.error(
                    format!("{path}.pool"),
                    format!("unknown pool `{}`", raw.pool),
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn parse_host(host: &str) -> Result<HostMatch, String> {
    let host = host.trim().to_ascii_lowercase();
    if host.is_empty() {
        return Err("must not be empty".into());
    }
    let (suffix, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host.as_str()),
    };
    let valid = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Err(format!(
            "`{host}` is not a host name (expected e.g. `api.example.com` or `*.example.com`, without port)"
        ));
    }
    Ok(if suffix {
        HostMatch::Suffix(format!(".{name}"))
    } else {
        HostMatch::Exact(name.to_string())
    })
}

fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse::<SocketAddr>().map_err(|_| {
        format!("`{text}` is not an address: expected IP:PORT, e.g. 127.0.0.1:8080 or [::1]:8080")
    })
}

fn parse_duration(ck: &mut Checker, path: &str, text: Option<&str>, default: Duration) -> Duration {
    let Some(text) = text else {
        return default;
    };
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d.is_zero() => {
            ck.error(path, "must be greater than zero");
            default
        }
        Ok(d) => d,
        Err(_) => {
            ck.error(
                path,
                format!("`{text}` is not a duration: expected e.g. `500ms`, `2s`, `1m`, `1h`"),
            );
            default
        }
    }
}

fn check_pools(
    ck: &mut Checker,
    value: Option<Value>,
) -> (Option<Vec<PoolConfig>>, HashMap<String, usize>) {
    let mut index = HashMap::new();
    let map = match value {
        None | Some(Value::Null) => {
            ck.error("pools", "`pools` is required and must not be empty");
            return (None, index);
        }
        Some(Value::Mapping(m)) => m,
        Some(_) => {
            ck.error("pools", "`pools` must be a mapping of pool name to pool");
            return (None, index);
        }
    };
    let mut out = Vec::new();
    let mut ok = true;
    for (key, value) in map {
        let Some(name) = key.as_str().map(str::to_string) else {
            ck.error("pools", "pool names must be strings");
            ok = false;
            continue;
        };
        // Register the name even when the pool is broken, so routes to it are not reported too.
        index.insert(name.clone(), out.len());
        match check_pool(ck, &name, value) {
            Some(p) => out.push(p),
            None => ok = false,
        }
    }
    (ok.then_some(out), index)
}

fn check_pool(ck: &mut Checker, name: &str, value: Value) -> Option<PoolConfig> {
    let path = format!("pools.{name}");
    let raw: RawPool = ck.parse(&path, value)?;
    let errors_before = ck.problems.len();
    let algorithm = match raw.algorithm.as_deref().unwrap_or("round_robin") {
        "round_robin" => Algorithm::RoundRobin,
        "least_connections" => Algorithm::LeastConnections,
        "least_latency" => Algorithm::LeastLatency,
        "consistent_hash" => Algorithm::ConsistentHash,
        "ip_hash" => Algorithm::IpHash,
        "random" => Algorithm::Random,
        other => {
            ck.error(
                format!("{path}.algorithm"),
                format!("unknown algorithm `{other}`: expected round_robin, least_connections, least_latency, consistent_hash, ip_hash or random"),
            );
            Algorithm::RoundRobin
        }
    };
    let hash_key = match (algorithm, raw.hash_key) {
        (Algorithm::ConsistentHash, Some(v)) => check_hash_key(ck, &format!("{path}.hash_key"), &v),
        (Algorithm::ConsistentHash, None) => {
            ck.error(
                format!("{path}.algorithm"),
                "consistent_hash needs `hash_key` (client_ip, path, uri, {header: NAME}, {cookie: NAME} or {query: NAME})",
            );
            None
        }
        (Algorithm::IpHash, None) => Some(HashKey::ClientIp),
        (_, Some(_)) => {
            ck.error(
                format!("{path}.hash_key"),
                format!(
                    "`hash_key` only applies to algorithm consistent_hash, this pool uses {}",
                    algorithm.as_str()
                ),
            );
            None
        }
        (_, None) => None,
    };
    if raw.backends.is_empty() && raw.discover.as_ref().is_none_or(|d| d.srv.is_none()) {
        ck.error(
            format!("{path}.backends"),
            "a pool needs at least one backend (or `discover: {srv: NAME}`)",
        );
    }
    let mut named = Vec::new();
    let mut backends = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut addrs: HashMap<SocketAddr, usize> = HashMap::new();
    for (i, b) in raw.backends.into_iter().enumerate() {
        let bpath = format!("{path}.backends[{i}]");
        let Some(b) = ck.parse::<RawBackend>(&bpath, b) else {
            continue;
        };
        let weight = match b.weight {
            None => 1,
            Some(w) if (1..=MAX_WEIGHT).contains(&w) => w as u32,
            Some(w) => {
                ck.error(
                    format!("{bpath}.weight"),
                    format!("weight {w} is out of range: must be between 1 and {MAX_WEIGHT}"),
                );
                1
            }
        };
        let addr = match parse_socket_addr(&b.address) {
            Ok(a) if b.required.is_none() => a,
            Ok(_) => {
                ck.error(format!("{bpath}.required"), "`required` applies to a backend given by name (NAME:PORT), not to an IP address");
                continue;
            }
            Err(_) => {
                super::discovery::check_named_backend(
                    &bpath,
                    b,
                    weight,
                    &mut named,
                    &mut |p, m| ck.error(p, m),
                );
                continue;
            }
        };
        let duplicate = addrs.insert(addr, i);
        if let Some(first) = duplicate {
            ck.error(
                format!("{bpath}.address"),
                format!("duplicate backend {addr} (also backends[{first}])"),
            );
        }
        let bname = b.name.unwrap_or_else(|| addr.to_string());
        if duplicate.is_some() {
            // already reported; its default name would only repeat it
        } else if bname.trim().is_empty() {
            ck.error(format!("{bpath}.name"), "must not be empty");
        } else if let Some(first) = names.insert(bname.clone(), i) {
            ck.error(
                format!("{bpath}.name"),
                format!("duplicate backend name `{bname}` (also backends[{first}])"),
            );
        }
        backends.push(BackendConfig {
            name: bname,
            addr,
            weight,
        });
    }
    let raw_t = raw.timeouts.unwrap_or_default();
    let d = Timeouts::default();
    let tpath = format!("{path}.timeouts");
    let timeouts = Timeouts {
        connect: parse_duration(
            ck,
            &format!("{tpath}.connect"),
            raw_t.connect.as_deref(),
            d.connect,
        ),
        read: parse_duration(ck, &format!("{tpath}.read"), raw_t.read.as_deref(), d.read),
        write: parse_duration(
            ck,
            &format!("{tpath}.write"),
            raw_t.write.as_deref(),
            d.write,
        ),
        idle: parse_duration(ck, &format!("{tpath}.idle"), raw_t.idle.as_deref(), d.idle),
        request: raw_t
            .request
            .as_deref()
            .map(|t| parse_duration(ck, &format!("{tpath}.request"), Some(t), Duration::ZERO)),
    };
    let health_check = raw
        .health_check
        .and_then(|h| check_health(ck, &format!("{path}.health_check"), h));
    let passive_health = check_passive(ck, &format!("{path}.passive_health"), raw.passive_health);
    let slow_start = raw.slow_start.as_deref().and_then(|t| {
        let spath = format!("{path}.slow_start");
        let d = parse_duration(ck, &spath, Some(t), Duration::ZERO);
        if d > MAX_SLOW_START {
            ck.error(spath, "must be at most 1h");
        }
        (!d.is_zero()).then_some(d)
    });
    let balance_factor = raw
        .balance_factor
        .and_then(|f| check_balance_factor(ck, &format!("{path}.balance_factor"), algorithm, f));
    let ewma_decay = check_ewma_decay(ck, &path, algorithm, raw.ewma_decay.as_deref());
    let feedback = raw
        .feedback
        .map(|f| check_feedback(ck, &format!("{path}.feedback"), f));
    let retry_budget = check_retry_budget(ck, &format!("{path}.retry_budget"), raw.retry_budget);
    let affinity = raw
        .affinity
        .map(|a| check_affinity(ck, &format!("{path}.affinity"), a));
    let upstream_tls = raw.tls.map(|t| {
        let ca_file = t.ca_file.map(|f| ck.base.join(f));
        if let Some(f) = &ca_file {
            if let Err(e) = crate::tls::load_ca(f) {
                ck.error(format!("{path}.tls.ca_file"), e);
            }
        }
        UpstreamTls {
            sni: t.sni.unwrap_or_default(),
            verify: t.verify.unwrap_or(true),
            ca_file,
        }
    });
    let protocol = match raw.protocol.as_deref().unwrap_or("h1") {
        "h1" => UpstreamProtocol::H1,
        "h2" => UpstreamProtocol::H2,
        "h2c" => UpstreamProtocol::H2c,
        other => {
            ck.error(
                format!("{path}.protocol"),
                format!("unknown protocol `{other}`: expected h1, h2 (over tls) or h2c"),
            );
            UpstreamProtocol::H1
        }
    };
    match (protocol, &upstream_tls) {
        (UpstreamProtocol::H2, None) => ck.error(
            format!("{path}.protocol"),
            "h2 is HTTP/2 over TLS: add `tls:` to the pool, or use h2c for plain HTTP/2",
        ),
        (UpstreamProtocol::H2c, Some(_)) => ck.error(
            format!("{path}.protocol"),
            "h2c is plain HTTP/2: remove `tls:`, or use h2",
        ),
        _ => {}
    }
    let max_h2_streams = raw.max_h2_streams.unwrap_or(DEFAULT_MAX_H2_STREAMS);
    if !(1..=10_000).contains(&max_h2_streams) {
        ck.error(
            format!("{path}.max_h2_streams"),
            "must be between 1 and 10000",
        );
    }
    let discovery =
        super::discovery::check_discover(&path, raw.discover, named, &mut |p, m| ck.error(p, m));
    let retries = raw.retries.unwrap_or(DEFAULT_RETRIES);
    if retries > MAX_RETRIES {
        ck.error(
            format!("{path}.retries"),
            format!("{retries} is too many: at most {MAX_RETRIES}"),
        );
    }
    (ck.problems.len() == errors_before).then(|| PoolConfig {
        name: name.to_string(),
        algorithm,
        hash_key,
        backends,
        retries,
        timeouts,
        health_check,
        passive_health,
        slow_start,
        balance_factor,
        ewma_decay,
        feedback,
        retry_budget,
        affinity,
        protocol,
        upstream_tls,
        max_h2_streams,
        discovery,
    })
}

/// Longest `slow_start`.
const MAX_SLOW_START: Duration = Duration::from_secs(3600);

/// Largest `balance_factor`: beyond it the bound hardly ever applies.
pub const MAX_BALANCE_FACTOR: f64 = 10.0;

/// `balance_factor`: hashing pools only, 1 < factor <= 10.
fn check_balance_factor(
    ck: &mut Checker,
    path: &str,
    algorithm: Algorithm,
    factor: f64,
) -> Option<f64> {
    if !matches!(algorithm, Algorithm::ConsistentHash | Algorithm::IpHash) {
        ck.error(
            path,
            format!(
                "`balance_factor` only applies to consistent_hash and ip_hash, this pool uses {}",
                algorithm.as_str()
            ),
        );
        return None;
    }
    if !(factor > 1.0 && factor <= MAX_BALANCE_FACTOR) {
        ck.error(
            path,
            format!("{factor} is out of range: must be above 1 and at most {MAX_BALANCE_FACTOR} (e.g. 1.25: a backend takes at most 25% over its share)"),
        );
        return None;
    }
    Some(factor)
}

/// `ewma_decay`: least_latency only, 100ms to 10m.
fn check_ewma_decay(
    ck: &mut Checker,
    pool: &str,
    algorithm: Algorithm,
    raw: Option<&str>,
) -> Duration {
    let Some(raw) = raw else {
        return DEFAULT_EWMA_DECAY;
    };
    let path = format!("{pool}.ewma_decay");
    if algorithm != Algorithm::LeastLatency {
        ck.error(
            path,
            format!(
                "`ewma_decay` only applies to least_latency, this pool uses {}",
                algorithm.as_str()
            ),
        );
        return DEFAULT_EWMA_DECAY;
    }
    let d = parse_duration(ck, &path, Some(raw), DEFAULT_EWMA_DECAY);
    if !(Duration::from_millis(100)..=Duration::from_secs(600)).contains(&d) {
        ck.error(path, "must be between 100ms and 10m");
    }
    d
}

/// `feedback`: a valid header name, `min_weight` a percentage from 1% to 100%.
fn check_feedback(ck: &mut Checker, path: &str, raw: RawFeedback) -> FeedbackConfig {
    if http::HeaderName::from_bytes(raw.header.as_bytes()).is_err() {
        ck.error(
            format!("{path}.header"),
            format!("`{}` is not a header name", raw.header),
        );
    }
    let min_weight = match raw.min_weight.as_deref() {
        None => 0.1,
        Some(text) => match text
            .trim()
            .strip_suffix('%')
            .and_then(|n| n.trim().parse::<f64>().ok())
        {
            Some(p) if (1.0..=100.0).contains(&p) => p / 100.0,
            _ => {
                ck.error(
                    format!("{path}.min_weight"),
                    format!("`{text}` is not a percentage from 1% to 100% (e.g. 10%)"),
                );
                0.1
            }
        },
    };
    FeedbackConfig {
        header: raw.header.to_ascii_lowercase(),
        min_weight,
        allow_drain: raw.allow_drain.unwrap_or(false),
    }
}

fn check_retry_budget(
    ck: &mut Checker,
    path: &str,
    raw: Option<RawRetryBudget>,
) -> RetryBudgetConfig {
    let d = RetryBudgetConfig::DEFAULT;
    let Some(raw) = raw else {
        return d;
    };
    let ratio = raw.ratio.unwrap_or(d.ratio);
    if !(0.0..=1.0).contains(&ratio) {
        ck.error(
            format!("{path}.ratio"),
            format!("{ratio} is out of range: must be between 0 and 1 (a share of the requests)"),
        );
    }
    let min_per_second = raw.min_per_second.unwrap_or(d.min_per_second);
    if min_per_second > 100_000 {
        ck.error(
            format!("{path}.min_per_second"),
            "must be between 0 and 100000",
        );
    }
    let wpath = format!("{path}.window");
    let window = parse_duration(ck, &wpath, raw.window.as_deref(), d.window);
    if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&window) {
        ck.error(wpath, "must be between 1s and 10m");
    }
    RetryBudgetConfig {
        ratio,
        min_per_second,
        window,
    }
}

/// Shortest accepted affinity key, in bytes.
pub const MIN_KEY_LEN: usize = 16;

fn check_affinity(ck: &mut Checker, path: &str, raw: RawAffinity) -> AffinityConfig {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !token(&raw.cookie) {
        ck.error(
            format!("{path}.cookie"),
            format!("`{}` is not a valid cookie name", raw.cookie),
        );
    }
    let max_age = parse_duration(
        ck,
        &format!("{path}.max_age"),
        raw.max_age.as_deref(),
        Duration::from_secs(3600),
    );
    let cookie_path = raw.path.unwrap_or_else(|| "/".into());
    if !cookie_path.starts_with('/') || cookie_path.contains([';', ',', ' ']) {
        ck.error(format!("{path}.path"), "must be a path starting with `/`");
    }
    if let Some(d) = &raw.domain {
        if parse_host(d).is_err() || d.starts_with("*.") {
            ck.error(format!("{path}.domain"), format!("`{d}` is not a domain"));
        }
    }
    let same_site = match raw.same_site.as_deref().unwrap_or("Lax") {
        s @ ("Lax" | "Strict" | "None") => s.to_string(),
        other => {
            ck.error(
                format!("{path}.same_site"),
                format!("`{other}`: expected Lax, Strict or None"),
            );
            "Lax".into()
        }
    };
    if same_site == "None" && raw.secure == Some(false) {
        ck.error(
            format!("{path}.same_site"),
            "SameSite=None needs a Secure cookie (browsers drop it otherwise)",
        );
    }
    let text = match (&raw.keys_file, &raw.keys_env) {
        (Some(_), Some(_)) => {
            ck.error(path, "give `keys_file` or `keys_env`, not both");
            None
        }
        (Some(file), None) => match std::fs::read_to_string(ck.base.join(file)) {
            Ok(t) => Some((format!("{path}.keys_file"), t)),
            Err(e) => {
                ck.error(
                    format!("{path}.keys_file"),
                    format!("cannot read {file}: {e}"),
                );
                None
            }
        },
        (None, Some(var)) => match std::env::var(var) {
            Ok(t) => Some((format!("{path}.keys_env"), t)),
            Err(_) => {
                ck.error(
                    format!("{path}.keys_env"),
                    format!("environment variable {var} is not set"),
                );
                None
            }
        },
        (None, None) => {
            ck.warn(
                path,
                "no keys_file or keys_env: affinity cookies are unsigned (a client can pick its backend)",
            );
            None
        }
    };
    let mut keys = Vec::new();
    if let Some((kpath, text)) = text {
        // One key per line (or comma-separated); blank lines and `#` comments are skipped.
        for key in text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .filter(|k| !k.is_empty())
        {
            if key.len() < MIN_KEY_LEN {
                ck.error(
                    &kpath,
                    format!(
                        "a key is {} bytes long: keys need at least {MIN_KEY_LEN}",
                        key.len()
                    ),
                );
            }
            keys.push(key.as_bytes().to_vec());
        }
        if keys.is_empty() {
            ck.error(&kpath, "holds no key");
        }
    }
    AffinityConfig {
        cookie: raw.cookie,
        max_age,
        domain: raw.domain,
        path: cookie_path,
        same_site,
        secure: raw.secure,
        keys: Secrets(keys),
    }
}

fn check_statuses(ck: &mut Checker, path: &str, statuses: &[u16]) {
    if let Some(bad) = statuses.iter().find(|s| !(100..=599).contains(*s)) {
        ck.error(path, format!("{bad} is not an HTTP status (100-599)"));
    }
}

fn check_health(ck: &mut Checker, path: &str, raw: RawHealthCheck) -> Option<HealthCheckConfig> {
    let kind = match (raw.http, raw.tcp) {
        (Some(http), None) => {
            let hpath = http.path.unwrap_or_else(|| "/".into());
            if !hpath.starts_with('/') || hpath.parse::<http::Uri>().is_err() {
                ck.error(
                    format!("{path}.http.path"),
                    "must be a path starting with `/`, e.g. /healthz",
                );
            }
            let expect_status = http.expect_status.unwrap_or_else(|| vec![200]);
            if expect_status.is_empty() {
                ck.error(format!("{path}.http.expect_status"), "must not be empty");
            }
            check_statuses(ck, &format!("{path}.http.expect_status"), &expect_status);
            Some(CheckKind::Http {
                path: hpath,
                expect_status,
                host: http.host,
            })
        }
        (None, Some(_)) => Some(CheckKind::Tcp),
        (Some(_), Some(_)) => {
            ck.error(path, "give either `http` or `tcp`, not both");
            None
        }
        (None, None) => {
            ck.error(path, "needs `http: {path: /healthz}` or `tcp: {}`");
            None
        }
    };
    let d = HealthCheckConfig::DEFAULT;
    let interval = parse_duration(
        ck,
        &format!("{path}.interval"),
        raw.interval.as_deref(),
        d.interval,
    );
    let timeout = parse_duration(
        ck,
        &format!("{path}.timeout"),
        raw.timeout.as_deref(),
        d.timeout,
    );
    if timeout > interval {
        ck.error(
            format!("{path}.timeout"),
            "must not be longer than `interval`",
        );
    }
    let healthy_threshold = raw.healthy_threshold.unwrap_or(d.healthy_threshold);
    let unhealthy_threshold = raw.unhealthy_threshold.unwrap_or(d.unhealthy_threshold);
    for (key, v) in [
        ("healthy_threshold", healthy_threshold),
        ("unhealthy_threshold", unhealthy_threshold),
    ] {
        if !(1..=100).contains(&v) {
            ck.error(format!("{path}.{key}"), "must be between 1 and 100");
        }
    }
    Some(HealthCheckConfig {
        kind: kind?,
        interval,
        timeout,
        healthy_threshold,
        unhealthy_threshold,
    })
}

/// `passive_health:`: absent means on with the defaults, `off` (or `false`) means off.
fn check_passive(ck: &mut Checker, path: &str, raw: Option<Value>) -> Option<PassiveHealthConfig> {
    let d = PassiveHealthConfig::DEFAULT;
    let raw: RawPassiveHealth = match raw {
        None => return Some(d),
        Some(Value::String(s)) if s == "off" => return None,
        Some(Value::Bool(false)) => return None,
        Some(v @ Value::Mapping(_)) => ck.parse(path, v)?,
        Some(_) => {
            ck.error(
                path,
                "expected `off` or a map of consecutive_failures, ejection_time, max_ejection_time, max_ejected_percent, fail_on_status",
            );
            return None;
        }
    };
    let consecutive_failures = raw.consecutive_failures.unwrap_or(d.consecutive_failures);
    if consecutive_failures == 0 {
        ck.error(format!("{path}.consecutive_failures"), "must be at least 1");
    }
    let ejection_time = parse_duration(
        ck,
        &format!("{path}.ejection_time"),
        raw.ejection_time.as_deref(),
        d.ejection_time,
    );
    let max_ejection_time = parse_duration(
        ck,
        &format!("{path}.max_ejection_time"),
        raw.max_ejection_time.as_deref(),
        d.max_ejection_time.max(ejection_time),
    );
    if max_ejection_time < ejection_time {
        ck.error(
            format!("{path}.max_ejection_time"),
            "must not be shorter than `ejection_time`",
        );
    }
    let max_ejected_percent = raw.max_ejected_percent.unwrap_or(d.max_ejected_percent);
    if max_ejected_percent > 100 {
        ck.error(
            format!("{path}.max_ejected_percent"),
            "must be between 0 and 100",
        );
    }
    let fail_on_status = raw.fail_on_status.unwrap_or_default();
    check_statuses(ck, &format!("{path}.fail_on_status"), &fail_on_status);
    Some(PassiveHealthConfig {
        consecutive_failures,
        ejection_time,
        max_ejection_time,
        max_ejected_percent,
        fail_on_status,
    })
}

/// Largest backend weight (as HAProxy's 256): keeps the smooth round-robin table small.
pub const MAX_WEIGHT: i64 = 256;
/// Largest `retries` (Pingora stops at 16 attempts in all).
pub const MAX_RETRIES: u32 = 10;

fn check_hash_key(ck: &mut Checker, path: &str, value: &Value) -> Option<HashKey> {
    const EXPECTED: &str =
        "expected client_ip, path, uri, {header: NAME}, {cookie: NAME} or {query: NAME}";
    match value {
        Value::String(s) => match s.as_str() {
            "client_ip" => Some(HashKey::ClientIp),
            "path" => Some(HashKey::Path),
            "uri" => Some(HashKey::Uri),
            other => {
                ck.error(path, format!("unknown hash key `{other}`: {EXPECTED}"));
                None
            }
        },
        Value::Mapping(m) if m.len() == 1 => {
            let (k, v) = m.iter().next()?;
            let (Some(kind), Some(name)) = (k.as_str(), v.as_str()) else {
                ck.error(path, EXPECTED);
                return None;
            };
            let name = name.trim();
            if name.is_empty() {
                ck.error(format!("{path}.{kind}"), "the name must not be empty");
                return None;
            }
            match kind {
                "header" => match http::HeaderName::from_bytes(name.as_bytes()) {
                    Ok(h) => Some(HashKey::Header(h.as_str().to_string())),
                    Err(_) => {
                        ck.error(
                            format!("{path}.header"),
                            format!("`{name}` is not a header name"),
                        );
                        None
                    }
                },
                "cookie" => Some(HashKey::Cookie(name.to_string())),
                "query" => Some(HashKey::Query(name.to_string())),
                other => {
                    ck.error(
                        format!("{path}.{other}"),
                        format!("unknown hash key `{other}`: {EXPECTED}"),
                    );
                    None
                }
            }
        }
        _ => {
            ck.error(path, EXPECTED);
            None
        }
    }
}
