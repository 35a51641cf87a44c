//! The validated edge settings of a route: its rate limit, its authentication and its cache. Files they
//! name (htpasswd) are read while validating and carried here, so a reload re-reads them and
//! a bad file keeps the old configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::model::HashKey;

/// What a route checks before its request goes to a backend, and whether it caches the
/// answers (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgeConfig {
    pub rate_limit: Option<RateLimitConfig>,
    pub auth: Option<AuthConfig>,
    pub cache: Option<CacheConfig>,
}

/// `cache:` of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Bytes the stored responses may take (bodies, serialized headers and a fixed overhead
    /// per object), >= 1.
    pub max_size: usize,
    /// Larger responses are not stored (<= `max_size`).
    pub max_object_size: usize,
    /// Freshness of a response that gives none (None: such responses are not stored).
    pub default_ttl: Option<Duration>,
    /// Defaults for responses without their own `stale-while-revalidate` / `stale-if-error`.
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    /// How long a request waits for another one's fetch of the same object.
    pub lock_timeout: Duration,
}

/// `rate_limit:` of a route: a GCRA bucket per key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// `count` requests per `per` (1 s or 1 min) in the steady state.
    pub count: u64,
    pub per: Duration,
    /// Requests admitted at once beyond the steady rate (nginx `burst`, `nodelay`).
    pub burst: u64,
    pub key: LimitKey,
    /// Fleet-wide (the budget in Redis) instead of local to this process.
    pub redis: Option<RedisConfig>,
}

/// `redis:` of a rate limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    pub url: String,
    pub timeout: Duration,
    pub fail_open: bool,
}

impl RateLimitConfig {
    /// The steady spacing of requests (the GCRA emission interval), in nanoseconds, >= 1.
    pub fn interval_nanos(&self) -> u64 {
        let per = u64::try_from(self.per.as_nanos()).unwrap_or(u64::MAX);
        (per / self.count.max(1)).max(1)
    }
}

/// What requests share one budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// All requests of the route.
    Route,
    /// The client address, a header or a cookie (as a pool's `hash_key`); requests without
    /// it share one budget.
    Request(HashKey),
}

/// `auth:` of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthConfig {
    Basic(BasicAuthConfig),
    Jwt(JwtAuthConfig),
    Forward(ForwardAuthConfig),
}

/// `auth: {forward: ...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardAuthConfig {
    /// As written (for messages).
    pub url: String,
    pub addr: std::net::SocketAddr,
    /// The `Host` of the subrequest (the URL's authority).
    pub authority: String,
    /// Path and query of the subrequest.
    pub path: String,
    pub timeout: Duration,
    /// Lower-case header names copied from a 2xx answer.
    pub response_headers: Vec<String>,
}

/// `auth: {jwt: ...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtAuthConfig {
    /// `key_file` or `secret_file`, as resolved.
    pub key_file: PathBuf,
    pub keys: JwtKeys,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// (claim, lower-case header name), in claim order.
    pub forward_claims: Vec<(String, String)>,
    pub strip_token: bool,
    pub leeway: Duration,
    pub realm: String,
}

/// The verification keys read from a key file; compared by the file's content.
#[derive(Clone)]
pub struct JwtKeys {
    pub content: Arc<Vec<u8>>,
    pub keys: Arc<Vec<JwtKey>>,
}

/// One key: its `kid` (JWKS), the key, and the algorithms it may verify (one family only,
/// so that a token cannot choose e.g. HS256 with an RSA public key as the secret).
#[derive(Clone)]
pub struct JwtKey {
    pub kid: Option<String>,
    pub key: jsonwebtoken::DecodingKey,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
}

impl PartialEq for JwtKeys {
    fn eq(&self, other: &Self) -> bool {
        self.content == other.content
    }
}

impl Eq for JwtKeys {}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JwtKeys({} keys)", self.keys.len())
    }
}

/// `auth: {basic: ...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicAuthConfig {
    pub htpasswd: PathBuf,
    pub realm: String,
    /// user -> bcrypt hash, as read from `htpasswd`.
    pub users: Arc<BTreeMap<String, String>>,
}

impl EdgeConfig {
    /// A short description for `--diff` (empty without rate limit and auth), e.g.
    /// ` rate_limit 10/s burst 5 by client_ip, auth basic`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(rl) = &self.rate_limit {
            let unit = if rl.per.as_secs() == 60 { "m" } else { "s" };
            let key = match &rl.key {
                LimitKey::Route => "route".to_string(),
                LimitKey::Request(HashKey::ClientIp) => "client_ip".to_string(),
                LimitKey::Request(HashKey::Header(h)) => format!("header {h}"),
                LimitKey::Request(HashKey::Cookie(c)) => format!("cookie {c}"),
                LimitKey::Request(other) => format!("{other:?}"),
            };
            let fleet = rl
                .redis
                .as_ref()
                .map_or(String::new(), |r| format!(" in {}", r.url));
            parts.push(format!(
                "rate_limit {}/{unit} burst {} by {key}{fleet}",
                rl.count, rl.burst
            ));
        }
        if let Some(c) = &self.cache {
            parts.push(format!("cache {}", format_size(c.max_size)));
        }
        match &self.auth {
            None => {}
            Some(AuthConfig::Basic(_)) => parts.push("auth basic".into()),
            Some(AuthConfig::Jwt(_)) => parts.push("auth jwt".into()),
            Some(AuthConfig::Forward(f)) => parts.push(format!("auth forward {}", f.url)),
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(" [{}]", parts.join(", "))
        }
    }
}

/// `bytes` as the configuration writes it: `64MB`, `512KB`, `100B` (the largest whole unit).
pub fn format_size(bytes: usize) -> String {
    const UNITS: [(&str, usize); 3] = [("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}

/// `64MB`, `512 KB`, `100B`, `1000` (bytes): units B, KB, MB, GB, in powers of 1024, case
/// insensitive. None when not a size or over `usize`.
pub fn parse_size(text: &str) -> Option<usize> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let n: usize = n.parse().ok()?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "KB" => 10,
        "MB" => 20,
        "GB" => 30,
        _ => return None,
    };
    n.checked_mul(1usize << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_names_the_limit_and_the_auth_method() {
        assert_eq!(EdgeConfig::default().summary(), "");
        let edge = EdgeConfig {
            rate_limit: Some(RateLimitConfig {
                count: 10,
                per: Duration::from_secs(60),
                burst: 5,
                key: LimitKey::Request(HashKey::Header("x-api-key".into())),
                redis: None,
            }),
            auth: Some(AuthConfig::Basic(BasicAuthConfig {
                htpasswd: "h".into(),
                realm: "r".into(),
                users: Arc::default(),
            })),
            cache: None,
        };
        assert_eq!(
            edge.summary(),
            " [rate_limit 10/m burst 5 by header x-api-key, auth basic]"
        );
    }

    #[test]
    fn sizes_parse_in_powers_of_1024_and_print_back() {
        assert_eq!(parse_size("64MB"), Some(64 << 20));
        assert_eq!(parse_size(" 512 kb "), Some(512 << 10));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("2GB"), Some(2 << 30));
        for bad in ["", "MB", "1.5MB", "10TB", "-1MB", "99999999999999999999GB"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
        assert_eq!(format_size(64 << 20), "64MB");
        assert_eq!(format_size(1536), "1536B");
        assert_eq!(format_size(3 << 10), "3KB");
    }
}
