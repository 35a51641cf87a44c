//! `pools:`: each pool's backends, retries, timeouts, protocol and upstream TLS; the other
//! keys of a pool are checked by their sections (balancing, health, affinity, tls).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_norway::Value;

use super::parse::{parse_duration, parse_socket_addr};
use super::{affinity, balancing, health, tls, Checker};
use crate::config::model::*;
use crate::config::raw::*;

/// Largest backend weight (as HAProxy's 256): keeps the smooth round-robin table small.
pub const MAX_WEIGHT: i64 = 256;
/// Most backends a pool may have. The hashing ring's positions are u32 (pool/select/ketama.rs
/// checks at compile time that the largest pool at the largest weight fits; the hard limit
/// would be ~104,000 backends); 10,000 is what the configuration's size bound is sized for, and
/// keeps a ring rebuilt on each reload small (1.6 M points at weight 1).
pub const MAX_BACKENDS: usize = 10_000;
/// Largest `retries` (Pingora stops at 16 attempts in all).
pub const MAX_RETRIES: u32 = 10;
/// Largest `max_h2_streams`.
pub const MAX_H2_STREAMS: usize = 10_000;
/// Largest `retry_budget.min_per_second`.
pub const MAX_MIN_PER_SECOND: u32 = 100_000;

pub(super) fn check_pools(
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
    let errors_before = ck.problems.len();
    let raw: RawPool = ck.parse(&path, value)?;
    let known = balancing::check_algorithm(ck, &path, raw.algorithm.as_deref());
    let algorithm = known.unwrap_or(Algorithm::RoundRobin);
    let hash_key = balancing::check_pool_hash_key(ck, &path, known, raw.hash_key);
    let has_srv = raw.discover.as_ref().is_some_and(|d| d.srv.is_some());
    let (backends, named) = check_backends(ck, &path, raw.backends, has_srv);
    let discovery =
        crate::config::discovery::check_discover(&path, raw.discover, named, &mut |p, m| {
            ck.error(p, m)
        });
    let timeouts = check_timeouts(
        ck,
        &format!("{path}.timeouts"),
        raw.timeouts.unwrap_or_default(),
    );
    let health_check = raw
        .health_check
        .and_then(|h| health::check_health(ck, &format!("{path}.health_check"), h));
    let passive_health =
        health::check_passive(ck, &format!("{path}.passive_health"), raw.passive_health);
    let slow_start = balancing::check_slow_start(ck, &path, raw.slow_start.as_deref());
    let balance_factor = match (known, raw.balance_factor) {
        (Some(a), Some(f)) => {
            balancing::check_balance_factor(ck, &format!("{path}.balance_factor"), a, f)
        }
        _ => None,
    };
    let ewma_decay = match known {
        Some(a) => balancing::check_ewma_decay(ck, &path, a, raw.ewma_decay.as_deref()),
        None => DEFAULT_EWMA_DECAY,
    };
    let http_check = health_check
        .as_ref()
        .is_some_and(|h| matches!(h.kind, CheckKind::Http { .. }));
    let feedback = raw
        .feedback
        .map(|f| balancing::check_feedback(ck, &format!("{path}.feedback"), f, http_check));
    let retry_budget = check_retry_budget(ck, &format!("{path}.retry_budget"), raw.retry_budget);
    let affinity = raw
        .affinity
        .map(|a| affinity::check_affinity(ck, &format!("{path}.affinity"), a));
    let upstream_tls = raw
        .tls
        .map(|t| tls::check_upstream_tls(ck, &format!("{path}.tls"), t));
    let protocol = check_protocol(ck, &path, raw.protocol.as_deref(), upstream_tls.is_some());
    let max_h2_streams = raw.max_h2_streams.unwrap_or(DEFAULT_MAX_H2_STREAMS);
    ck.in_range(&format!("{path}.max_h2_streams"), max_h2_streams as i128);
    let retries = raw.retries.unwrap_or(DEFAULT_RETRIES);
    ck.in_range(&format!("{path}.retries"), i128::from(retries));
    let drain_timeout = parse_duration(
        ck,
        &format!("{path}.drain_timeout"),
        raw.drain_timeout.as_deref(),
        DEFAULT_DRAIN_TIMEOUT,
    );
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
        drain_timeout,
        discovery,
    })
}

/// `backends:`: each read on its own, so that every bad backend is reported. Backends given
/// by name (NAME:PORT) are returned apart, as DNS sources.
fn check_backends(
    ck: &mut Checker,
    pool: &str,
    items: Vec<Value>,
    has_srv: bool,
) -> (
    Vec<BackendConfig>,
    Vec<crate::config::discovery::DiscoveredSource>,
) {
    let path = format!("{pool}.backends");
    if items.is_empty() && !has_srv && !ck.unreadable(&path) {
        ck.error(
            &path,
            "a pool needs at least one backend (or `discover: {srv: NAME}`)",
        );
    }
    let mut named = Vec::new();
    if items.len() > MAX_BACKENDS {
        ck.error(
            &path,
            format!(
                "{} backends: a pool takes at most {MAX_BACKENDS}",
                items.len()
            ),
        );
    }
    let mut backends = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut addrs: HashMap<SocketAddr, usize> = HashMap::new();
    for (i, b) in items.into_iter().enumerate() {
        let bpath = format!("{path}[{i}]");
        let Some(b) = ck.parse::<RawBackend>(&bpath, b) else {
            continue;
        };
        let weight = match b.weight {
            None => 1,
            Some(w) if ck.in_range(&format!("{bpath}.weight"), i128::from(w)) => w as u32,
            Some(_) => 1,
        };
        let addr = match parse_socket_addr(&b.address) {
            Ok(a) if b.required.is_none() => a,
            Ok(_) => {
                ck.error(
                    format!("{bpath}.required"),
                    "`required` applies to a backend given by name (NAME:PORT), not to an IP address",
                );
                continue;
            }
            Err(_) => {
                crate::config::discovery::check_named_backend(
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
    (backends, named)
}

fn check_timeouts(ck: &mut Checker, path: &str, raw: RawTimeouts) -> Timeouts {
    let d = Timeouts::default();
    let mut timeout = |key: &str, text: Option<&str>, default: Duration| {
        parse_duration(ck, &format!("{path}.{key}"), text, default)
    };
    Timeouts {
        connect: timeout("connect", raw.connect.as_deref(), d.connect),
        read: timeout("read", raw.read.as_deref(), d.read),
        write: timeout("write", raw.write.as_deref(), d.write),
        idle: timeout("idle", raw.idle.as_deref(), d.idle),
        request: raw
            .request
            .as_deref()
            .map(|t| timeout("request", Some(t), Duration::ZERO)),
    }
}

/// `protocol:` (h1 when absent), which must agree with the pool's `tls:`.
fn check_protocol(ck: &mut Checker, pool: &str, raw: Option<&str>, tls: bool) -> UpstreamProtocol {
    let path = format!("{pool}.protocol");
    let protocol = match raw.unwrap_or("h1") {
        "h1" => UpstreamProtocol::H1,
        "h2" => UpstreamProtocol::H2,
        "h2c" => UpstreamProtocol::H2c,
        other => {
            ck.error(
                path,
                format!("unknown protocol `{other}`: expected h1, h2 (over tls) or h2c"),
            );
            return UpstreamProtocol::H1;
        }
    };
    if ck.unreadable(&path) || ck.unreadable(&format!("{pool}.tls")) {
        return protocol;
    }
    match (protocol, tls) {
        (UpstreamProtocol::H2, false) => ck.error(
            path,
            "h2 is HTTP/2 over TLS: add `tls:` to the pool, or use h2c for plain HTTP/2",
        ),
        (UpstreamProtocol::H2c, true) => {
            ck.error(path, "h2c is plain HTTP/2: remove `tls:`, or use h2")
        }
        _ => {}
    }
    protocol
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
    ck.in_range(
        &format!("{path}.min_per_second"),
        i128::from(min_per_second),
    );
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

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn a_shape_error_in_a_pool_hides_none_of_its_other_errors() {
        // `retries: -1` used to hide the three bad backends: every one is reported at once.
        let p = problems(&format!(
            "{FRONT}pools:\n  p:\n    retries: -1\n    backends:\n      - {{address: 10.0.0.1:80, weight: 0}}\n      - {{address: app.internal}}\n      - {{address: 10.0.0.1:80}}\n"
        ));
        assert_eq!(
            p,
            [
                "5:5: pools.p.retries: a whole number from 0 to 10, got -1",
                "7:32: pools.p.backends[0].weight: a whole number from 1 to 256, got 0",
                "8:10: pools.p.backends[1].address: `app.internal` is not an address: expected IP:PORT (e.g. 127.0.0.1:8080 or [::1]:8080) or NAME:PORT (e.g. app.internal:8080)",
                "9:10: pools.p.backends[2].address: duplicate backend 10.0.0.1:80 (also backends[0])",
            ]
        );
    }

    #[test]
    fn shape_errors_in_backends_are_each_reported() {
        let p = problems(&format!(
            "{FRONT}pools:\n  p:\n    backends:\n      - {{address: 10.0.0.1:80, weight: heavy, nmae: a}}\n      - {{weight: 2}}\n      - 10.0.0.3:80\n    wieght: 3\n"
        ));
        assert_eq!(
            p,
            [
                "6:32: pools.p.backends[0].weight: a whole number from 1 to 256, got `heavy`",
                "6:47: pools.p.backends[0].nmae: unknown key `nmae`, expected one of `address`, `weight`, `name`, `required`",
                "7:9: pools.p.backends[1]: `address` is required",
                "8:9: pools.p.backends[2]: a map, got `10.0.0.3:80`",
                "9:5: pools.p.wieght: unknown key `wieght`, expected one of `algorithm`, `hash_key`, `backends`, `retries`, `timeouts`, `health_check`, `passive_health`, `slow_start`, `balance_factor`, `ewma_decay`, `feedback`, `retry_budget`, `affinity`, `protocol`, `tls`, `max_h2_streams`, `drain_timeout`, `discover`",
            ]
        );
    }

    #[test]
    fn a_pool_takes_at_most_max_backends() {
        let backends = |n: usize| -> String {
            (0..n)
                .map(|i| {
                    format!(
                        "      - {{address: 10.{}.{}.{}:80}}\n",
                        i >> 16,
                        (i >> 8) & 255,
                        i & 255
                    )
                })
                .collect()
        };
        let text = |n| format!("{FRONT}pools:\n  p:\n    backends:\n{}", backends(n));
        assert_eq!(problems(&text(super::MAX_BACKENDS)), Vec::<String>::new());
        assert_eq!(
            problems(&text(super::MAX_BACKENDS + 1)),
            ["5:5: pools.p.backends: 10001 backends: a pool takes at most 10000"]
        );
    }

    #[test]
    fn pools_protocols_and_budgets() {
        let p = problems(&format!(
            "{FRONT}pools:\n  p:\n    backends: []\n    protocol: h2\n    max_h2_streams: 0\n    retry_budget: {{ratio: 2, min_per_second: 200000, window: 1h}}\n  q: 5\n"
        ));
        assert_eq!(
            p,
            [
                "5:5: pools.p.backends: a pool needs at least one backend (or `discover: {srv: NAME}`)",
                "6:5: pools.p.protocol: h2 is HTTP/2 over TLS: add `tls:` to the pool, or use h2c for plain HTTP/2",
                "7:5: pools.p.max_h2_streams: a whole number from 1 to 10000, got 0",
                "8:20: pools.p.retry_budget.ratio: 2 is out of range: must be between 0 and 1 (a share of the requests)",
                "8:30: pools.p.retry_budget.min_per_second: a whole number from 0 to 100000, got 200000",
                "8:54: pools.p.retry_budget.window: must be between 1s and 10m",
                "9:3: pools.q: a map, got 5",
            ]
        );
    }
}
