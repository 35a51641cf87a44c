//! Host and path-prefix matching: which pool serves a request. First match wins.

use crate::config::{HostMatch, RouteConfig};

/// The routes of one configuration, in order.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<RouteConfig>,
}

impl Router {
    pub fn new(routes: &[RouteConfig]) -> Self {
        Router {
            routes: routes.to_vec(),
        }
    }

    /// The pool (index) for a request to `host` (as sent: any case, maybe with a port) and
    /// `path`, or None when no route matches.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<usize> {
        let host = host.map(normalize_host);
        self.routes
            .iter()
            .find(|r| {
                let host_ok = match (&r.host, host) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some(HostMatch::Exact(want)), Some(h)) => h.eq_ignore_ascii_case(want),
                    (Some(HostMatch::Suffix(suffix)), Some(h)) => {
                        h.len() > suffix.len()
                            && h.is_char_boundary(h.len() - suffix.len())
                            && h[h.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                    }
                };
                host_ok && r.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
            })
            .map(|r| r.pool)
    }
}

/// The host name without port or trailing dot (`Example.com.:8080` -> `Example.com`).
pub fn normalize_host(host: &str) -> &str {
    let host = if host.starts_with('[') {
        // IPv6 literal: keep up to the closing bracket.
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.rsplit_once(':').map_or(host, |(name, _port)| name)
    };
    host.strip_suffix('.').unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<HostMatch>, prefix: Option<&str>, pool: usize) -> RouteConfig {
        RouteConfig {
            host,
            path_prefix: prefix.map(str::to_string),
            pool,
        }
    }

    fn router() -> Router {
        Router::new(&[
            route(
                Some(HostMatch::Exact("api.example.com".into())),
                Some("/v1/"),
                0,
            ),
            route(Some(HostMatch::Suffix(".example.com".into())), None, 1),
            route(None, Some("/static/"), 2),
            route(None, None, 3),
        ])
    }

    #[test]
    fn first_match_wins() {
        let r = router();
        assert_eq!(r.find(Some("api.example.com"), "/v1/users"), Some(0));
        assert_eq!(r.find(Some("API.Example.com:8080"), "/v1/users"), Some(0));
        assert_eq!(r.find(Some("api.example.com"), "/v2/"), Some(1));
        assert_eq!(r.find(Some("a.b.example.com."), "/"), Some(1));
        assert_eq!(r.find(Some("example.com"), "/static/x"), Some(2));
        assert_eq!(r.find(None, "/"), Some(3));
        assert_eq!(r.find(Some("[::1]:80"), "/"), Some(3));
    }

    #[test]
    fn nothing_matches() {
        let r = Router::new(&[route(Some(HostMatch::Exact("a.test".into())), None, 0)]);
        assert_eq!(r.find(Some("b.test"), "/"), None);
        assert_eq!(r.find(None, "/"), None);
        // a wildcard does not match the bare domain
        let r = Router::new(&[route(Some(HostMatch::Suffix(".a.test".into())), None, 0)]);
        assert_eq!(r.find(Some("a.test"), "/"), None);
        assert_eq!(r.find(Some("é.a.test"), "/"), Some(0));
    }
}
