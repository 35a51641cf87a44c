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
        self.matching(host, path).map(|(_, r)| r.pool)
    }

    /// The route (its index in `routes:`, and itself) a request to `host` and `path` takes.
    pub fn matching(&self, host: Option<&str>, path: &str) -> Option<(usize, &RouteConfig)> {
        let host = host.map(normalize_host);
        self.routes.iter().enumerate().find(|(_, r)| {
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

/// How a route matches, in words: `host a.test path /api/`, or `any` for a catch-all.
pub fn route_text(r: &RouteConfig) -> String {
    let mut out = Vec::new();
    match &r.host {
        Some(HostMatch::Exact(h)) => out.push(format!("host {h}")),
        Some(HostMatch::Suffix(s)) => out.push(format!("host *{s}")),
        None => {}
    }
    if let Some(p) = &r.path_prefix {
        out.push(format!("path {p}"));
    }
    if out.is_empty() {
        "any".into()
    } else {
        out.join(" ")
    }
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

    use proptest::prelude::*;

    /// A host name as a client may send it: labels of letters (any case), digits and dashes.
    const NAME: &str = "[A-Za-z0-9-]{1,12}(\\.[A-Za-z0-9-]{1,12}){0,3}";

    proptest! {
        /// Any string (any Unicode, any number of colons, brackets and dots) is normalised
        /// without a panic, to a prefix of itself; and so is it routed, wildcards included.
        #[test]
        fn any_host_is_normalised_and_routed_without_panic(host in any::<String>(), path in any::<String>()) {
            let n = normalize_host(&host);
            prop_assert!(host.starts_with(n));
            let r = Router::new(&[
                route(Some(HostMatch::Suffix(".é.test".into())), None, 0),
                route(Some(HostMatch::Suffix("é".into())), None, 1),
                route(Some(HostMatch::Exact(host.clone())), Some("/p"), 2),
            ]);
            let _ = r.find(Some(&host), &path);
            let _ = r.find(Some(n), &path);
        }

        /// Case does not matter, whatever the string.
        #[test]
        fn normalising_is_case_insensitive(host in any::<String>()) {
            let upper = host.to_ascii_uppercase();
            prop_assert!(normalize_host(&host).eq_ignore_ascii_case(normalize_host(&upper)));
        }

        /// As documented: the port and one trailing dot are ignored, for names and for IPv6
        /// literals; and a normalised host normalises to itself.
        #[test]
        fn port_and_trailing_dot_are_ignored(
            name in NAME,
            v6 in any::<std::net::Ipv6Addr>(),
            dot in any::<bool>(),
            port in proptest::option::of("[0-9]{0,5}"),
        ) {
            let dot = if dot { "." } else { "" };
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            let sent = format!("{name}{dot}{port}");
            prop_assert_eq!(normalize_host(&sent), name.as_str());
            prop_assert_eq!(normalize_host(normalize_host(&sent)), name.as_str());
            let literal = format!("[{v6}]");
            let sent = format!("{literal}{port}");
            prop_assert_eq!(normalize_host(&sent), literal.as_str());
            prop_assert_eq!(normalize_host(normalize_host(&sent)), literal.as_str());
        }

        /// Routing by a host as sent is routing by the name: any case, port, trailing dot.
        #[test]
        fn routing_ignores_case_port_and_trailing_dot(
            name in NAME,
            dot in any::<bool>(),
            port in proptest::option::of(0u16..),
        ) {
            let r = Router::new(&[
                route(Some(HostMatch::Exact(name.to_ascii_lowercase())), None, 0),
                route(Some(HostMatch::Suffix(format!(".{}", name.to_ascii_uppercase()))), None, 1),
            ]);
            let sent = format!(
                "{}{}{}",
                name.to_ascii_uppercase(),
                if dot { "." } else { "" },
                port.map(|p| format!(":{p}")).unwrap_or_default()
            );
            prop_assert_eq!(r.find(Some(&sent), "/"), Some(0));
            prop_assert_eq!(r.find(Some(&format!("www.{sent}")), "/"), Some(1));
        }
    }
}
