//! `fulcrum -c NEW -t --diff OLD`: what a reload from OLD to NEW changes, in words: listeners,
//! routes, pools and backends added, removed and changed, the share of hash keys that move to
//! another backend (computed on the two rings), and which affinity sessions re-pin.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::config::{Algorithm, Config, PoolConfig, RouteConfig};
use crate::pool::select::ketama::Ketama;

/// How many keys the hash-share estimate draws (error about ±0.2% at this count).
const SAMPLED_KEYS: u32 = 100_000;

/// The changes from `old` to `new`, one line each; empty when they serve the same.
pub fn describe(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    listeners(old, new, &mut out);
    routes(old, new, &mut out);
    let old_pools: BTreeMap<&str, &PoolConfig> =
        old.pools.iter().map(|p| (p.name.as_str(), p)).collect();
    let new_pools: BTreeMap<&str, &PoolConfig> =
        new.pools.iter().map(|p| (p.name.as_str(), p)).collect();
    for (name, p) in &old_pools {
        if !new_pools.contains_key(name) {
            out.push(format!(
                "pool {name}: removed ({} backends)",
                p.backends.len()
            ));
        }
    }
    for (name, p) in &new_pools {
        match old_pools.get(name) {
            None => out.push(format!(
                "pool {name}: added ({}, {} backends)",
                p.algorithm.as_str(),
                p.backends.len()
            )),
            Some(o) => pool(o, p, &mut out),
        }
    }
    if old.server != new.server {
        out.push("server: changed (applied by an upgrade, not by a reload)".into());
    }
    out
}

fn listeners(old: &Config, new: &Config, out: &mut Vec<String>) {
    for l in &old.listeners {
        if !new.listeners.iter().any(|n| n.name == l.name) {
            out.push(format!("listener {}: removed (needs an upgrade)", l.name));
        }
    }
    for l in &new.listeners {
        match old.listeners.iter().find(|o| o.name == l.name) {
            None => out.push(format!(
                "listener {}: added on {} (needs an upgrade)",
                l.name, l.addr
            )),
            Some(o) if o.addr != l.addr || o.tls.is_some() != l.tls.is_some() => out.push(format!(
                "listener {}: socket changed (needs an upgrade)",
                l.name
            )),
            Some(o) => {
                // What a reload applies in place: keepalive_timeout and the limits.
                let mut rest = o.clone();
                rest.keepalive_timeout = l.keepalive_timeout;
                rest.limits = l.limits;
                rest.debug_trusted = l.debug_trusted.clone();
                if rest != *l {
                    out.push(format!(
                        "listener {}: settings changed (needs an upgrade)",
                        l.name
                    ));
                } else if o != l {
                    out.push(format!(
                        "listener {}: keepalive_timeout, limits or debug settings changed (applied in place)",
                        l.name
                    ));
                }
            }
        }
    }
    if old.admin != new.admin {
        out.push("admin: changed (needs an upgrade)".into());
    }
    if old.access_log != new.access_log {
        out.push("access_log: changed (needs an upgrade)".into());
    }
}

fn route_text(r: &RouteConfig, c: &Config) -> String {
    let pool = c.pools.get(r.pool).map_or("?", |p| p.name.as_str());
    format!("{} -> {pool}", crate::route::route_text(r))
}

fn routes(old: &Config, new: &Config, out: &mut Vec<String>) {
    let o: Vec<String> = old.routes.iter().map(|r| route_text(r, old)).collect();
    let n: Vec<String> = new.routes.iter().map(|r| route_text(r, new)).collect();
    for r in o.iter().filter(|r| !n.contains(r)) {
        out.push(format!("route {r}: removed"));
    }
    for r in n.iter().filter(|r| !o.contains(r)) {
        out.push(format!("route {r}: added"));
    }
    let kept_old: Vec<&String> = o.iter().filter(|r| n.contains(r)).collect();
    let kept_new: Vec<&String> = n.iter().filter(|r| o.contains(r)).collect();
    if kept_old != kept_new {
        out.push("routes: order changed (the first match wins)".into());
    }
}

fn pool(old: &PoolConfig, new: &PoolConfig, out: &mut Vec<String>) {
    let name = &new.name;
    if old.algorithm != new.algorithm {
        out.push(format!(
            "pool {name}: algorithm {} -> {}",
            old.algorithm.as_str(),
            new.algorithm.as_str()
        ));
    }
    for b in &old.backends {
        if !new.backends.iter().any(|n| n.name == b.name) {
            out.push(format!("pool {name}: backend {} removed", b.name));
        }
    }
    for b in &new.backends {
        match old.backends.iter().find(|o| o.name == b.name) {
            None => out.push(format!(
                "pool {name}: backend {} added ({}, weight {})",
                b.name, b.addr, b.weight
            )),
            Some(o) if o.addr != b.addr => out.push(format!(
                "pool {name}: backend {} address {} -> {}",
                b.name, o.addr, b.addr
            )),
            Some(o) if o.weight != b.weight => out.push(format!(
                "pool {name}: backend {} weight {} -> {}",
                b.name, o.weight, b.weight
            )),
            Some(_) => {}
        }
    }
    let changed: Vec<&str> = [
        ("hash_key", old.hash_key != new.hash_key),
        ("retries", old.retries != new.retries),
        ("timeouts", old.timeouts != new.timeouts),
        ("health_check", old.health_check != new.health_check),
        ("passive_health", old.passive_health != new.passive_health),
        ("slow_start", old.slow_start != new.slow_start),
        ("balance_factor", old.balance_factor != new.balance_factor),
        ("ewma_decay", old.ewma_decay != new.ewma_decay),
        ("feedback", old.feedback != new.feedback),
        ("retry_budget", old.retry_budget != new.retry_budget),
        ("protocol", old.protocol != new.protocol),
        ("upstream_tls", old.upstream_tls != new.upstream_tls),
        ("max_h2_streams", old.max_h2_streams != new.max_h2_streams),
        ("discover", old.discovery != new.discovery),
    ]
    .into_iter()
    .filter_map(|(key, differs)| differs.then_some(key))
    .collect();
    if !changed.is_empty() {
        out.push(format!("pool {name}: {} changed", changed.join(", ")));
    }
    if let Some(moved) = keys_moved(old, new) {
        out.push(format!(
            "pool {name}: {:.1}% of hash keys move to another backend",
            moved * 100.0
        ));
    }
    affinity(old, new, out);
}

fn hashes(p: &PoolConfig) -> bool {
    matches!(p.algorithm, Algorithm::ConsistentHash | Algorithm::IpHash)
}

/// The share of keys whose backend changes, when both pools hash (None otherwise, or when
/// nothing on the ring changed). Backends are the same when their addresses are.
fn keys_moved(old: &PoolConfig, new: &PoolConfig) -> Option<f64> {
    if !hashes(old) || !hashes(new) || old.hash_key != new.hash_key {
        return None;
    }
    let ring = |p: &PoolConfig| -> Vec<(SocketAddr, u32)> {
        p.backends.iter().map(|b| (b.addr, b.weight)).collect()
    };
    let (a, b) = (ring(old), ring(new));
    if a == b {
        return None;
    }
    let (ka, kb) = (Ketama::new(&a), Ketama::new(&b));
    let owner = |k: &Ketama, ring: &[(SocketAddr, u32)], key: &[u8]| {
        k.walk(key)
            .next()
            .and_then(|i| ring.get(i))
            .map(|(addr, _)| *addr)
    };
    let moved = (0..SAMPLED_KEYS)
        .filter(|i| {
            let key = format!("key-{i}");
            owner(&ka, &a, key.as_bytes()) != owner(&kb, &b, key.as_bytes())
        })
        .count();
    Some(moved as f64 / f64::from(SAMPLED_KEYS))
}

/// Which affinity cookies stop being honoured: all of them when the cookie's name changes or
/// the key that signed them is gone; else those pinned to a backend removed or renamed.
fn affinity(old: &PoolConfig, new: &PoolConfig, out: &mut Vec<String>) {
    let name = &new.name;
    let (Some(o), Some(n)) = (&old.affinity, &new.affinity) else {
        if old.affinity.is_some() {
            out.push(format!("pool {name}: affinity off: cookies are ignored"));
        } else if new.affinity.is_some() {
            out.push(format!("pool {name}: affinity on"));
        }
        return;
    };
    let signing_key_kept = match o.keys.0.first() {
        Some(k) => n.keys.0.contains(k),
        None => n.keys.0.is_empty(),
    };
    if o.cookie != n.cookie {
        out.push(format!(
            "pool {name}: affinity cookie {} -> {}: every session re-pins",
            o.cookie, n.cookie
        ));
    } else if !signing_key_kept {
        out.push(format!(
            "pool {name}: affinity: the key that signed today's cookies is gone: every session re-pins"
        ));
    } else {
        let gone: Vec<&str> = old
            .backends
            .iter()
            .filter(|b| !new.backends.iter().any(|n| n.name == b.name))
            .map(|b| b.name.as_str())
            .collect();
        if !gone.is_empty() {
            out.push(format!(
                "pool {name}: affinity: sessions pinned to {} re-pin; the others keep their backend",
                gone.join(", ")
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendConfig;

    fn backends(n: u16) -> Vec<BackendConfig> {
        (1..=n)
            .map(|i| BackendConfig {
                name: format!("b{i}"),
                addr: SocketAddr::from(([127, 0, 0, 1], 8000 + i)),
                weight: 1,
            })
            .collect()
    }

    #[test]
    fn adding_a_fifth_backend_to_a_ring_moves_about_a_fifth_of_the_keys() {
        let old = PoolConfig::with_defaults("web", Algorithm::ConsistentHash, backends(4));
        let new = PoolConfig::with_defaults("web", Algorithm::ConsistentHash, backends(5));
        let moved = keys_moved(&old, &new).unwrap();
        assert!((0.15..0.25).contains(&moved), "{moved}");
        assert_eq!(keys_moved(&old, &old), None);
        let rr = PoolConfig::with_defaults("web", Algorithm::RoundRobin, backends(5));
        assert_eq!(keys_moved(&old, &rr), None);
    }
}
