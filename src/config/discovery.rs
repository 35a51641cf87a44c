//! Backends found by DNS: the model of a pool's names (`address: NAME:PORT`) and SRV record
//! (`discover:`), the top-level `resolvers:`, and their validation (called from `validate`).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_norway::Value;

use super::raw::{RawBackend, RawDiscover};

/// Shortest interval between two resolutions of one name, whatever its TTL says (a TTL of 0
/// would otherwise mean a query per request's worth of time).
pub const DEFAULT_MIN_TTL: Duration = Duration::from_secs(1);
/// Longest interval between two resolutions of one name, whatever its TTL says: a record with
/// a TTL of a day is still re-read every 5 minutes, so a fleet change is seen within minutes.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(300);
/// Largest weight a backend may have (SRV weights above it are capped).
pub const MAX_SRV_WEIGHT: u32 = 256;

/// One DNS question a pool keeps asking.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// A and AAAA records of `host`; every address gets `port`.
    Name { host: String, port: u16 },
    /// SRV records of `name`: targets (A/AAAA), ports and weights.
    Srv { name: String },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Name { host, port } => write!(f, "{host}:{port}"),
            Source::Srv { name } => write!(f, "srv {name}"),
        }
    }
}

/// One source of a pool with what its backends are called and weigh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredSource {
    pub source: Source,
    /// Each address found becomes the backend `{base_name}/{address}` (stable across
    /// re-resolutions and across instances: affinity cookies and metrics rely on it).
    pub base_name: String,
    /// The weight of each address of a name (SRV: the record's weight instead).
    pub weight: u32,
    /// Start-up fails when the source does not resolve (else the pool starts without it).
    pub required: bool,
}

/// What a pool discovers: its names and SRV record, and how often they are re-read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolDiscovery {
    /// In configuration order: names of `backends:`, then `discover.srv`.
    pub sources: Vec<DiscoveredSource>,
    /// Record TTLs are honoured within these bounds.
    pub min_ttl: Duration,
    pub max_ttl: Duration,
}

impl PoolDiscovery {
    /// When to ask again after an answer whose records live `ttl`.
    pub fn refresh_after(&self, ttl: Duration) -> Duration {
        ttl.clamp(self.min_ttl, self.max_ttl)
    }

    /// When to ask again after `failures` failed or empty answers in a row: from `min_ttl`,
    /// doubling, at most 30 s (and at most `max_ttl`), so that a returning server is seen soon.
    pub fn retry_after(&self, failures: u32) -> Duration {
        let cap = self.max_ttl.min(Duration::from_secs(30)).max(self.min_ttl);
        self.min_ttl
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
            .min(cap)
    }
}

/// `NAME:PORT` with a DNS name (not an IP address): the host and port, or why not.
pub fn parse_name(text: &str) -> Result<(String, u16), String> {
    let bad = || {
        format!("`{text}` is not an address: expected IP:PORT (e.g. 127.0.0.1:8080 or [::1]:8080) or NAME:PORT (e.g. app.internal:8080)")
    };
    let (host, port) = text.trim().rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 || host.parse::<IpAddr>().is_ok() || !is_dns_name(host) {
        return Err(bad());
    }
    Ok((host.trim_end_matches('.').to_ascii_lowercase(), port))
}

/// A DNS name: dot-separated labels of letters, digits, `-` and `_`, each 1 to 63 long, at
/// most 253 in all (a final dot allowed), not all digits (that would be a mistyped address).
pub fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
        && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// A backend of `backends:` whose address is not an IP address: a name to resolve (added to
/// `named`), or an error.
pub fn check_named_backend(
    path: &str,
    raw: RawBackend,
    weight: u32,
    named: &mut Vec<DiscoveredSource>,
    error: &mut dyn FnMut(String, String),
) {
    let (host, port) = match parse_name(&raw.address) {
        Ok(n) => n,
        Err(message) => return error(format!("{path}.address"), message),
    };
    let source = Source::Name { host, port };
    if named.iter().any(|n| n.source == source) {
        return error(
            format!("{path}.address"),
            format!("duplicate backend {source} (the pool names it twice)"),
        );
    }
    let base_name = match raw.name {
        Some(n) if n.trim().is_empty() => {
            return error(format!("{path}.name"), "must not be empty".to_string())
        }
        Some(n) => n,
        None => source.to_string(),
    };
    if named.iter().any(|n| n.base_name == base_name) {
        return error(
            format!("{path}.name"),
            format!("duplicate backend name `{base_name}`"),
        );
    }
    named.push(DiscoveredSource {
        source,
        base_name,
        weight,
        required: raw.required.unwrap_or(false),
    });
}

/// `discover:` of a pool and its names found in `backends:` (`sources`), checked; errors go
/// to `error(path, message)`. None when the pool discovers nothing.
pub fn check_discover(
    path: &str,
    raw: Option<RawDiscover>,
    mut sources: Vec<DiscoveredSource>,
    error: &mut dyn FnMut(String, String),
) -> Option<PoolDiscovery> {
    let dpath = format!("{path}.discover");
    let mut min_ttl = DEFAULT_MIN_TTL;
    let mut max_ttl = DEFAULT_MAX_TTL;
    if let Some(raw) = raw {
        let mut duration = |key: &str, text: Option<String>, default: Duration| {
            let Some(text) = text else { return default };
            match humantime::parse_duration(text.trim()) {
                Ok(d) if !d.is_zero() => d,
                _ => {
                    error(
                        format!("{dpath}.{key}"),
                        format!("`{text}` is not a duration greater than zero: expected e.g. `1s`, `30s`, `5m`"),
                    );
                    default
                }
            }
        };
        min_ttl = duration("min_ttl", raw.min_ttl, DEFAULT_MIN_TTL);
        max_ttl = duration("max_ttl", raw.max_ttl, DEFAULT_MAX_TTL);
        if min_ttl > max_ttl {
            error(
                format!("{dpath}.min_ttl"),
                format!(
                    "min_ttl ({}) is above max_ttl ({})",
                    humantime::format_duration(min_ttl),
                    humantime::format_duration(max_ttl)
                ),
            );
        }
        match raw.srv {
            Some(name) if is_dns_name(name.trim()) => {
                let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
                sources.push(DiscoveredSource {
                    source: Source::Srv { name: name.clone() },
                    base_name: name,
                    weight: 1,
                    required: raw.required.unwrap_or(false),
                });
            }
            Some(name) => error(
                format!("{dpath}.srv"),
                format!("`{name}` is not a DNS name (e.g. _http._tcp.app.service.consul)"),
            ),
            None if raw.required.is_some() => error(
                format!("{dpath}.required"),
                "`required` applies to `srv`, which is not set (a name in `backends:` takes its own `required`)".to_string(),
            ),
            None => {}
        }
    }
    (!sources.is_empty()).then_some(PoolDiscovery {
        sources,
        min_ttl,
        max_ttl,
    })
}

/// Top-level `resolvers:`: a list of `IP` or `IP:PORT` (port 53 by default). Empty: the
/// system's (/etc/resolv.conf).
pub fn check_resolvers(value: Value, error: &mut dyn FnMut(String, String)) -> Vec<SocketAddr> {
    let items = match value {
        Value::Null => return Vec::new(),
        Value::Sequence(items) => items,
        _ => {
            error(
                "resolvers".into(),
                "must be a list of IP or IP:PORT, e.g. [127.0.0.1:8600]".into(),
            );
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let text = match &item {
            Value::String(s) => s.trim().to_string(),
            _ => String::new(),
        };
        let parsed = text.parse::<SocketAddr>().ok().or_else(|| {
            text.parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, 53))
        });
        match parsed {
            Some(a) => out.push(a),
            None => error(
                format!("resolvers[{i}]"),
                format!("`{text}` is not a resolver address: expected IP or IP:PORT, e.g. 127.0.0.1:8600"),
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses_are_told_apart() {
        assert_eq!(
            parse_name("App.Internal:8080"),
            Ok(("app.internal".into(), 8080))
        );
        assert_eq!(parse_name("localhost:80"), Ok(("localhost".into(), 80)));
        assert_eq!(
            parse_name("web.svc.cluster.local.:80").unwrap().0,
            "web.svc.cluster.local"
        );
        for bad in [
            "app.internal",
            "app.internal:0",
            "app.internal:http",
            "10.0.0.1:80",
            "10.0.0:80",
            "-bad.example:80",
            "a..b:80",
            "sp ace:80",
            ":80",
        ] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn intervals_stay_within_bounds() {
        let d = PoolDiscovery {
            sources: Vec::new(),
            min_ttl: DEFAULT_MIN_TTL,
            max_ttl: DEFAULT_MAX_TTL,
        };
        assert_eq!(d.refresh_after(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(
            d.refresh_after(Duration::from_secs(30)),
            Duration::from_secs(30)
        );
        assert_eq!(
            d.refresh_after(Duration::from_secs(86400)),
            Duration::from_secs(300)
        );
        let retries: Vec<u64> = (1..=8).map(|n| d.retry_after(n).as_secs()).collect();
        assert_eq!(retries, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn resolvers_take_a_default_port() {
        let mut errors = Vec::new();
        let v: Value = serde_norway::from_str("[127.0.0.1:5353, '::1', nope]").unwrap();
        let got = check_resolvers(v, &mut |p, m| errors.push((p, m)));
        assert_eq!(
            got,
            [
                "127.0.0.1:5353".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, "resolvers[2]");
    }
}
