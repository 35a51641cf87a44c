//! A route's edge keys: `name` (unique, default `HOST/PATH`), `rate_limit` (rate, burst, key),
//! `auth` (exactly one method; its files read here and carried in the model) and `cache`
//! (sizes and durations).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_norway::Value;

use super::Checker;
use crate::config::edge::*;
use crate::config::model::{HashKey, HostMatch};
use crate::config::raw_edge::*;

/// Largest steady rate accepted (per second or per minute).
pub const MAX_RATE: u64 = 1_000_000;
/// Largest burst accepted.
pub const MAX_BURST: u64 = 1_000_000;

/// The default name of a route: its host (`*` when any) and path prefix (`/` when any).
pub(super) fn default_name(host: Option<&HostMatch>, path_prefix: Option<&str>) -> String {
    let host = match host {
        None => "*".to_string(),
        Some(HostMatch::Exact(h)) => h.clone(),
        Some(HostMatch::Suffix(s)) => format!("*{s}"),
    };
    format!("{host}{}", path_prefix.unwrap_or("/"))
}

/// Whether `name` may name a route: printable ASCII without spaces or quotes, 1..=100 bytes.
pub(super) fn check_name(ck: &mut Checker, path: &str, name: &str) -> bool {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    if !ok {
        ck.error(
            format!("{path}.name"),
            "must be 1 to 100 printable characters without spaces, quotes or backslashes",
        );
    }
    ok
}

/// The edge settings of the route at `path` (None when any is wrong; all errors reported).
pub(super) fn check_edge(
    ck: &mut Checker,
    path: &str,
    rate_limit: Option<RawRateLimit>,
    auth: Option<RawAuth>,
    cache: Option<RawCache>,
) -> Option<EdgeConfig> {
    let rate_limit = match rate_limit {
        None => Some(None),
        Some(raw) => check_rate_limit(ck, &format!("{path}.rate_limit"), raw).map(Some),
    };
    let auth = match auth {
        None => Some(None),
        Some(raw) => check_auth(ck, &format!("{path}.auth"), raw).map(Some),
    };
    let cache = match cache {
        None => Some(None),
        Some(raw) => check_cache(ck, &format!("{path}.cache"), raw).map(Some),
    };
    Some(EdgeConfig {
        rate_limit: rate_limit?,
        auth: auth?,
        cache: cache?,
    })
}

/// Largest `max_size` accepted (the cache lives in this process's memory).
pub const MAX_CACHE_SIZE: usize = 64 << 30;

fn check_cache(ck: &mut Checker, path: &str, raw: RawCache) -> Option<CacheConfig> {
    let mut size = |key: &str, text: &str| {
        let n = parse_size(text).filter(|n| (1..=MAX_CACHE_SIZE).contains(n));
        if n.is_none() {
            ck.error(
                format!("{path}.{key}"),
                format!(
                    "`{text}` is not a size: expected e.g. 64MB, 512KB (at most 64GB, more than 0)"
                ),
            );
        }
        n
    };
    let max_size = size("max_size", &raw.max_size);
    let max_object_size = raw
        .max_object_size
        .as_deref()
        .map(|t| size("max_object_size", t));
    let mut duration = |key: &str, text: Option<&str>, default: Duration| {
        super::parse::parse_duration(ck, &format!("{path}.{key}"), text, default)
    };
    let default_ttl = raw
        .default_ttl
        .as_deref()
        .map(|t| duration("default_ttl", Some(t), Duration::ZERO));
    let stale_while_revalidate = duration(
        "stale_while_revalidate",
        raw.stale_while_revalidate.as_deref(),
        Duration::ZERO,
    );
    let stale_if_error = duration(
        "stale_if_error",
        raw.stale_if_error.as_deref(),
        Duration::ZERO,
    );
    let lock_timeout = duration(
        "lock_timeout",
        raw.lock_timeout.as_deref(),
        Duration::from_secs(10),
    );
    let max_size = max_size?;
    let max_object_size = match max_object_size {
        None => max_size.min(16 << 20),
        Some(None) => return None,
        Some(Some(n)) if n > max_size => {
            ck.error(
                format!("{path}.max_object_size"),
                format!("must be at most max_size ({})", format_size(max_size)),
            );
            return None;
        }
        Some(Some(n)) => n,
    };
    Some(CacheConfig {
        max_size,
        max_object_size,
        default_ttl: default_ttl.filter(|d| !d.is_zero()),
        stale_while_revalidate,
        stale_if_error,
        lock_timeout,
    })
}

fn check_rate_limit(ck: &mut Checker, path: &str, raw: RawRateLimit) -> Option<RateLimitConfig> {
    let rate = parse_rate(&raw.rate);
    if rate.is_none() {
        ck.error(
            format!("{path}.rate"),
            format!(
                "`{}` is not a rate: expected N/s or N/m with 1 <= N <= {MAX_RATE}, e.g. 10/s",
                raw.rate
            ),
        );
    }
    let burst = raw.burst.unwrap_or(0);
    if burst > MAX_BURST {
        ck.error(
            format!("{path}.burst"),
            format!("must be at most {MAX_BURST}"),
        );
    }
    let key = match &raw.key {
        None => Some(LimitKey::Request(HashKey::ClientIp)),
        Some(v) => check_key(ck, &format!("{path}.key"), v),
    };
    let redis = match raw.redis {
        None => Some(None),
        Some(r) => check_redis(ck, &format!("{path}.redis"), r).map(Some),
    };
    let (count, per) = rate?;
    (burst <= MAX_BURST).then_some(RateLimitConfig {
        count,
        per,
        burst,
        key: key?,
        redis: redis?,
    })
}

fn check_redis(ck: &mut Checker, path: &str, raw: RawRedis) -> Option<RedisConfig> {
    let timeout = super::parse::parse_duration(
        ck,
        &format!("{path}.timeout"),
        raw.timeout.as_deref(),
        Duration::from_millis(50),
    );
    let url_ok = raw.url.starts_with("redis://") && redis::Client::open(raw.url.as_str()).is_ok();
    if !url_ok {
        ck.error(
            format!("{path}.url"),
            format!(
                "`{}` is not a Redis URL (expected redis://HOST:PORT)",
                raw.url
            ),
        );
    }
    url_ok.then_some(RedisConfig {
        url: raw.url,
        timeout,
        fail_open: raw.fail_open.unwrap_or(true),
    })
}

/// `N/s` or `N/m` -> (N, period).
fn parse_rate(text: &str) -> Option<(u64, Duration)> {
    let (n, unit) = text.trim().split_once('/')?;
    let n: u64 = n
        .trim()
        .parse()
        .ok()
        .filter(|n| (1..=MAX_RATE).contains(n))?;
    let per = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        _ => return None,
    };
    Some((n, per))
}

fn check_key(ck: &mut Checker, path: &str, value: &Value) -> Option<LimitKey> {
    const EXPECTED: &str = "expected client_ip, route, {header: NAME} or {cookie: NAME}";
    let named = match value {
        Value::String(s) if s == "client_ip" => return Some(LimitKey::Request(HashKey::ClientIp)),
        Value::String(s) if s == "route" => return Some(LimitKey::Route),
        Value::Mapping(m) if m.len() == 1 => m.iter().next().and_then(|(k, v)| {
            let (k, v) = (k.as_str()?, v.as_str()?);
            Some((k.to_string(), v.trim().to_string()))
        }),
        _ => None,
    };
    let Some((kind, name)) = named else {
        ck.error(path, format!("unknown rate limit key: {EXPECTED}"));
        return None;
    };
    let at = format!("{path}.{kind}");
    match kind.as_str() {
        "header" => match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => Some(LimitKey::Request(HashKey::Header(h.as_str().to_string()))),
            Err(_) => {
                ck.error(at, format!("`{name}` is not a header name"));
                None
            }
        },
        "cookie" if !name.is_empty() => Some(LimitKey::Request(HashKey::Cookie(name))),
        "cookie" => {
            ck.error(at, "the name must not be empty");
            None
        }
        other => {
            ck.error(at, format!("unknown rate limit key `{other}`: {EXPECTED}"));
            None
        }
    }
}

fn check_auth(ck: &mut Checker, path: &str, raw: RawAuth) -> Option<AuthConfig> {
    match raw {
        RawAuth {
            basic: Some(b),
            jwt: None,
            forward: None,
        } => check_basic(ck, &format!("{path}.basic"), b),
        RawAuth {
            basic: None,
            jwt: Some(j),
            forward: None,
        } => super::jwt::check_jwt(ck, &format!("{path}.jwt"), j),
        RawAuth {
            basic: None,
            jwt: None,
            forward: Some(f),
        } => check_forward(ck, &format!("{path}.forward"), f),
        _ => {
            ck.error(path, "give one method: `basic`, `jwt` or `forward`");
            None
        }
    }
}

fn check_forward(ck: &mut Checker, path: &str, raw: RawForwardAuth) -> Option<AuthConfig> {
    let timeout = super::parse::parse_duration(
        ck,
        &format!("{path}.timeout"),
        raw.timeout.as_deref(),
        Duration::from_secs(1),
    );
    let mut ok = true;
    let mut response_headers = Vec::new();
    for (i, h) in raw.response_headers.unwrap_or_default().iter().enumerate() {
        match http::HeaderName::from_bytes(h.trim().as_bytes()) {
            Ok(name) => response_headers.push(name.as_str().to_string()),
            Err(_) => {
                ck.error(
                    format!("{path}.response_headers[{i}]"),
                    format!("`{h}` is not a header name"),
                );
                ok = false;
            }
        }
    }
    let parsed = raw
        .url
        .parse::<http::Uri>()
        .ok()
        .filter(|u| u.scheme_str() == Some("http"))
        .and_then(|u| {
            let authority = u.authority()?.clone();
            let host = authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let ip: std::net::IpAddr = host.parse().ok()?;
            let addr = std::net::SocketAddr::new(ip, authority.port_u16().unwrap_or(80));
            let path = u.path_and_query().map_or("/", |p| p.as_str()).to_string();
            Some((addr, authority.as_str().to_string(), path))
        });
    let Some((addr, authority, path_and_query)) = parsed else {
        ck.error(
            format!("{path}.url"),
            format!(
                "`{}` is not an http URL with an IP address, e.g. http://127.0.0.1:9000/check",
                raw.url
            ),
        );
        return None;
    };
    ok.then_some(AuthConfig::Forward(ForwardAuthConfig {
        url: raw.url,
        addr,
        authority,
        path: if path_and_query.is_empty() {
            "/".into()
        } else {
            path_and_query
        },
        timeout,
        response_headers,
    }))
}

/// Whether `realm` (of the map at `path`) fits in a quoted `WWW-Authenticate` parameter.
pub(super) fn check_realm(ck: &mut Checker, path: &str, realm: &str) -> bool {
    let ok = !realm.is_empty()
        && realm.len() <= 100
        && realm
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\');
    if !ok {
        ck.error(
            format!("{path}.realm"),
            "must be 1 to 100 printable characters without quotes or backslashes",
        );
    }
    ok
}

fn check_basic(ck: &mut Checker, path: &str, raw: RawBasicAuth) -> Option<AuthConfig> {
    let realm = raw.realm.unwrap_or_else(|| "fulcrum".into());
    let realm_ok = check_realm(ck, path, &realm);
    let at = format!("{path}.htpasswd");
    let file = ck.base.join(&raw.htpasswd);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) => {
            ck.error(at, format!("cannot read {}: {e}", raw.htpasswd));
            return None;
        }
    };
    let users = match parse_htpasswd(&text) {
        Ok(users) => users,
        Err(msg) => {
            ck.error(at, format!("{}: {msg}", raw.htpasswd));
            return None;
        }
    };
    realm_ok.then(|| {
        AuthConfig::Basic(BasicAuthConfig {
            htpasswd: file,
            realm,
            users: Arc::new(users),
        })
    })
}

/// `user:hash` lines (blank lines and `#` comments skipped); every hash must be bcrypt
/// (`$2a$`, `$2b$`, `$2x$` or `$2y$`, as `htpasswd -B` writes), every user unique.
pub fn parse_htpasswd(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut users = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = n + 1;
        let Some((user, hash)) = line.split_once(':') else {
            return Err(format!("line {n}: expected `user:hash`"));
        };
        if user.is_empty() {
            return Err(format!("line {n}: empty user name"));
        }
        let bcrypt = ["$2a$", "$2b$", "$2x$", "$2y$"]
            .iter()
            .any(|p| hash.starts_with(p));
        if !bcrypt || hash.parse::<bcrypt::HashParts>().is_err() {
            return Err(format!(
                "line {n}: user `{user}`: only bcrypt hashes are supported (htpasswd -B)"
            ));
        }
        if users.insert(user.to_string(), hash.to_string()).is_some() {
            return Err(format!("line {n}: user `{user}` appears twice"));
        }
        if users.len() > 100_000 {
            return Err("more than 100000 users".into());
        }
    }
    if users.is_empty() {
        return Err("no users (expected `user:hash` lines)".into());
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    const EDGES: &str = "listeners: [{name: main, listen: 127.0.0.1:8080}]\n";
    const POOL: &str = "pools: {p: {backends: [{address: 127.0.0.1:9}]}}\n";

    #[test]
    fn rate_limits_are_checked_where_they_stand() {
        let p = problems(&format!(
            "{EDGES}routes:\n  - {{pool: p, rate_limit: {{rate: 10/h, burst: 5}}}}\n  - {{pool: p, match: {{path_prefix: /a}}, rate_limit: {{rate: 1/s, key: {{query: q}}}}}}\n  - {{pool: p, match: {{path_prefix: /b}}, rate_limit: {{rate: 1/s, key: {{header: 'a b'}}, burst: -1}}}}\n{POOL}"
        ));
        assert_eq!(
            p,
            [
                "3:28: routes[0].rate_limit.rate: `10/h` is not a rate: expected N/s or N/m with 1 <= N <= 1000000, e.g. 10/s",
                "4:71: routes[1].rate_limit.key.query: unknown rate limit key `query`: expected client_ip, route, {header: NAME} or {cookie: NAME}",
                "5:71: routes[2].rate_limit.key.header: `a b` is not a header name",
                "5:87: routes[2].rate_limit.burst: a whole number, 0 or more, got -1",
            ]
        );
    }

    #[test]
    fn caches_are_checked_where_they_stand() {
        let c = valid(&format!(
            "{EDGES}routes:\n  - {{pool: p, cache: {{max_size: 64MB, stale_if_error: 1m}}}}\n{POOL}"
        ));
        let cache = c.routes[0].edge.cache.as_ref().unwrap();
        assert_eq!(
            (cache.max_size, cache.max_object_size, cache.default_ttl),
            (64 << 20, 16 << 20, None)
        );
        assert_eq!(
            (
                cache.stale_if_error.as_secs(),
                cache.stale_while_revalidate.as_secs()
            ),
            (60, 0)
        );
        assert_eq!(cache.lock_timeout.as_secs(), 10);
        let p = problems(&format!(
            "{EDGES}routes:\n  - {{pool: p, cache: {{max_size: 64TB}}}}\n  - {{pool: p, match: {{path_prefix: /a}}, cache: {{max_size: 1MB, max_object_size: 2MB, default_ttl: soon}}}}\n  - {{pool: p, match: {{path_prefix: /b}}, cache: {{size: 1MB}}}}\n{POOL}"
        ));
        assert_eq!(
            p,
            [
                "3:23: routes[0].cache.max_size: `64TB` is not a size: expected e.g. 64MB, 512KB (at most 64GB, more than 0)",
                "4:64: routes[1].cache.max_object_size: must be at most max_size (1MB)",
                "4:86: routes[1].cache.default_ttl: `soon` is not a duration: expected e.g. `500ms`, `2s`, `1m`, `1h`",
                "5:41: routes[2].cache: `max_size` is required",
                "5:49: routes[2].cache.size: unknown key `size`, expected one of `max_size`, `max_object_size`, `default_ttl`, `stale_while_revalidate`, `stale_if_error`, `lock_timeout`",
            ]
        );
    }

    #[test]
    fn names_default_to_host_and_path_and_must_be_unique() {
        let c = valid(&format!(
            "{EDGES}routes:\n  - {{pool: p, match: {{host: A.example.com, path_prefix: /v1/}}}}\n  - {{pool: p, name: web}}\n{POOL}"
        ));
        let names: Vec<&str> = c.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a.example.com/v1/", "web"]);
        let p = problems(&format!(
            "{EDGES}routes:\n  - {{pool: p, name: web, match: {{path_prefix: /a}}}}\n  - {{pool: p, name: web}}\n  - {{pool: p, name: 'a b'}}\n{POOL}"
        ));
        assert_eq!(
            p,
            [
                "4:15: routes[1].name: `web` already names routes[0]",
                "5:15: routes[2].name: must be 1 to 100 printable characters without spaces, quotes or backslashes",
            ]
        );
    }

    #[test]
    fn htpasswd_files_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("secret", 4).unwrap();
        std::fs::write(dir.path().join("good"), format!("# users\nalice:{hash}\n")).unwrap();
        std::fs::write(dir.path().join("md5"), "bob:$apr1$xyz$abc\n").unwrap();
        std::fs::write(dir.path().join("empty"), "# nobody\n").unwrap();
        let yaml = |file: &str| {
            format!(
                "{EDGES}routes:\n  - {{pool: p, auth: {{basic: {{htpasswd: {file}}}}}}}\n{POOL}"
            )
        };
        let f = dir.path().join("f.yaml");
        assert_eq!(problems_in(&f, &yaml("good")), Vec::<String>::new());
        assert_eq!(
            problems_in(&f, &yaml("md5")),
            ["3:30: routes[0].auth.basic.htpasswd: md5: line 1: user `bob`: only bcrypt hashes are supported (htpasswd -B)"]
        );
        assert_eq!(
            problems_in(&f, &yaml("empty")),
            ["3:30: routes[0].auth.basic.htpasswd: empty: no users (expected `user:hash` lines)"]
        );
        let missing = problems_in(&f, &yaml("nope"));
        assert!(
            missing[0].starts_with("3:30: routes[0].auth.basic.htpasswd: cannot read nope:"),
            "{missing:?}"
        );
        assert_eq!(
            problems_in(
                &f,
                &format!("{EDGES}routes: [{{pool: p, auth: {{}}}}]\n{POOL}")
            ),
            ["2:20: routes[0].auth: give one method: `basic`, `jwt` or `forward`"]
        );
    }

    #[test]
    fn forward_auth_needs_an_http_url_with_an_ip() {
        let yaml = |auth: &str| {
            format!("{EDGES}routes:\n  - {{pool: p, auth: {{forward: {auth}}}}}\n{POOL}")
        };
        assert_eq!(
            problems(&yaml("{url: 'http://127.0.0.1:9000/check?x=1', timeout: 200ms, response_headers: [X-User]}")),
            Vec::<String>::new()
        );
        let c = valid(&yaml("{url: 'http://127.0.0.1/check'}"));
        let Some(crate::config::AuthConfig::Forward(f)) = &c.routes[0].edge.auth else {
            panic!("{:?}", c.routes[0].edge);
        };
        assert_eq!(
            (f.addr.port(), f.path.as_str(), f.timeout.as_millis()),
            (80, "/check", 1000)
        );
        let p = problems(&yaml(
            "{url: 'https://auth.example.com/check', timeout: 0s, response_headers: ['a b']}",
        ));
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].ends_with("routes[0].auth.forward.url: `https://auth.example.com/check` is not an http URL with an IP address, e.g. http://127.0.0.1:9000/check"), "{p:?}");
        assert!(
            p[1].ends_with("routes[0].auth.forward.timeout: must be greater than zero"),
            "{p:?}"
        );
        assert!(
            p[2].ends_with(
                "routes[0].auth.forward.response_headers[0]: `a b` is not a header name"
            ),
            "{p:?}"
        );
    }

    #[test]
    fn redis_urls_are_checked() {
        let yaml = |redis: &str| {
            format!("{EDGES}routes:\n  - {{pool: p, rate_limit: {{rate: 5/s, redis: {redis}}}}}\n{POOL}")
        };
        let c = valid(&yaml("{url: 'redis://127.0.0.1:6379'}"));
        let rl = c.routes[0].edge.rate_limit.as_ref().unwrap();
        let r = rl.redis.as_ref().unwrap();
        assert_eq!((r.timeout.as_millis(), r.fail_open), (50, true));
        let p = problems(&yaml("{url: 'http://x', timeout: soon, fail_open: 1}"));
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].ends_with("routes[0].rate_limit.redis.url: `http://x` is not a Redis URL (expected redis://HOST:PORT)"), "{p:?}");
        assert!(
            p[1].contains("routes[0].rate_limit.redis.timeout: `soon` is not a duration"),
            "{p:?}"
        );
        assert!(
            p[2].contains("routes[0].rate_limit.redis.fail_open:"),
            "{p:?}"
        );
    }
}
