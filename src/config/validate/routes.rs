//! `routes:`: what each route matches (host, path prefix) and the pool it names; routes
//! after a catch-all are unreachable (a warning).

use std::collections::HashMap;

use serde_norway::Value;

use super::parse::parse_host;
use super::{edge, list_items, Checker};
use crate::config::model::*;
use crate::config::raw::*;

pub(super) fn check_routes(
    ck: &mut Checker,
    value: Option<Value>,
    pools: &HashMap<String, usize>,
) -> Option<Vec<RouteConfig>> {
    let items = list_items(ck, "routes", value)?;
    let mut out = Vec::new();
    let mut ok = true;
    let mut catch_all: Option<usize> = None;
    let mut names: HashMap<String, usize> = HashMap::new();
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
        let explicit = raw.name.is_some();
        let name = match raw.name {
            Some(n) => edge::check_name(ck, &path, &n).then_some(n),
            None => Some(edge::default_name(host.as_ref(), path_prefix.as_deref())),
        };
        let name = match name {
            None => None,
            Some(n) => match names.get(&n) {
                Some(&first) if explicit => {
                    ck.error(
                        format!("{path}.name"),
                        format!("`{n}` already names routes[{first}]"),
                    );
                    None
                }
                // A default name that repeats one (an unreachable route): its index instead.
                Some(_) => Some(format!("routes[{i}]")),
                None => {
                    names.insert(n.clone(), i);
                    Some(n)
                }
            },
        };
        let edge = edge::check_edge(ck, &path, raw.rate_limit, raw.auth, raw.cache);
        let (Some(name), Some(edge)) = (name, edge) else {
            ok = false;
            continue;
        };
        match pools.get(&raw.pool) {
            Some(&pool) => out.push(RouteConfig {
                host,
                path_prefix,
                pool,
                name,
                edge,
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

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    const EDGES: &str = "listeners: [{name: main, listen: 127.0.0.1:8080}]\n";
    const POOL: &str = "pools: {p: {backends: [{address: 127.0.0.1:9}]}}\n";

    #[test]
    fn unknown_pools_and_bad_matches_are_located() {
        let p = problems(&format!(
            "{EDGES}routes:\n  - {{match: {{host: 'a b', path_prefix: v1}}, pool: p}}\n  - {{pool: nope}}\n  - {{match: {{hots: x}}, pool: p, extra: 1}}\n{POOL}"
        ));
        assert_eq!(
            p,
            [
                "3:14: routes[0].match.host: `a b` is not a host name (expected e.g. `api.example.com` or `*.example.com`, without port)",
                "3:27: routes[0].match.path_prefix: must start with `/`",
                "4:6: routes[1].pool: unknown pool `nope`",
                "5:14: routes[2].match.hots: unknown key `hots`, expected `host` or `path_prefix`",
                "5:33: routes[2].extra: unknown key `extra`, expected one of `match`, `pool`, `name`, `rate_limit`, `auth`, `cache`",
            ]
        );
    }

    #[test]
    fn a_route_after_a_catch_all_is_a_warning() {
        let c = valid(&format!(
            "{EDGES}routes: [{{pool: p}}, {{match: {{path_prefix: /x}}, pool: p}}]\n{POOL}"
        ));
        assert_eq!(
            c.warnings,
            ["f.yaml:2:21: routes[1]: unreachable: routes[0] before it matches every request"]
        );
    }
}
