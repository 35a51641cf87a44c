//! How a pool spreads its requests: the algorithm and its hash key, bounded load
//! (`balance_factor`), latency decay (`ewma_decay`), backend-reported load (`feedback`) and
//! `slow_start`.

use std::time::Duration;

use serde_norway::Value;

use super::parse::parse_duration;
use super::Checker;
use crate::config::model::*;
use crate::config::raw::*;

/// The pool's algorithm (round_robin when absent); None when it is unknown (reported) or of
/// the wrong shape, so that checks that depend on it are skipped.
pub(super) fn check_algorithm(
    ck: &mut Checker,
    pool: &str,
    raw: Option<&str>,
) -> Option<Algorithm> {
    let path = format!("{pool}.algorithm");
    if ck.unreadable(&path) {
        return None;
    }
    Some(match raw.unwrap_or("round_robin") {
        "round_robin" => Algorithm::RoundRobin,
        "least_connections" => Algorithm::LeastConnections,
        "least_latency" => Algorithm::LeastLatency,
        "consistent_hash" => Algorithm::ConsistentHash,
        "ip_hash" => Algorithm::IpHash,
        "random" => Algorithm::Random,
        other => {
            ck.error(
                path,
                format!("unknown algorithm `{other}`: expected round_robin, least_connections, least_latency, consistent_hash, ip_hash or random"),
            );
            return None;
        }
    })
}

/// What a pool of `algorithm` (None: unknown) hashes, from its `hash_key`.
pub(super) fn check_pool_hash_key(
    ck: &mut Checker,
    pool: &str,
    algorithm: Option<Algorithm>,
    raw: Option<Value>,
) -> Option<HashKey> {
    match (algorithm?, raw) {
        (Algorithm::ConsistentHash, Some(v)) => check_hash_key(ck, &format!("{pool}.hash_key"), &v),
        (Algorithm::ConsistentHash, None) => {
            ck.error(
                format!("{pool}.algorithm"),
                "consistent_hash needs `hash_key` (client_ip, path, uri, {header: NAME}, {cookie: NAME} or {query: NAME})",
            );
            None
        }
        (Algorithm::IpHash, None) => Some(HashKey::ClientIp),
        (algorithm, Some(_)) => {
            ck.error(
                format!("{pool}.hash_key"),
                format!(
                    "`hash_key` only applies to algorithm consistent_hash, this pool uses {}",
                    algorithm.as_str()
                ),
            );
            None
        }
        (_, None) => None,
    }
}

/// Longest `slow_start`.
const MAX_SLOW_START: Duration = Duration::from_secs(3600);

/// `slow_start`: up to 1h; None: off.
pub(super) fn check_slow_start(
    ck: &mut Checker,
    pool: &str,
    raw: Option<&str>,
) -> Option<Duration> {
    let path = format!("{pool}.slow_start");
    let d = parse_duration(ck, &path, Some(raw?), Duration::ZERO);
    if d > MAX_SLOW_START {
        ck.error(path, "must be at most 1h");
    }
    (!d.is_zero()).then_some(d)
}

/// Largest `balance_factor`: beyond it the bound hardly ever applies.
pub const MAX_BALANCE_FACTOR: f64 = 10.0;

/// `balance_factor`: hashing pools only, 1 < factor <= 10.
pub(super) fn check_balance_factor(
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
pub(super) fn check_ewma_decay(
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

/// `feedback`: a valid header name or the check's body (which needs an HTTP health check:
/// `http_check`), `min_weight` a percentage from 1% to 100%.
pub(super) fn check_feedback(
    ck: &mut Checker,
    path: &str,
    raw: RawFeedback,
    http_check: bool,
) -> FeedbackConfig {
    if let Some(header) = &raw.header {
        if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            ck.error(
                format!("{path}.header"),
                format!("`{header}` is not a header name"),
            );
        }
    }
    let check_body = raw.check_body.unwrap_or(false);
    if raw.header.is_none() && !check_body {
        ck.error(
            path,
            "say where backends report their load: `header: NAME`, `check_body: true`, or both",
        );
    }
    if check_body && !http_check {
        ck.error(
            format!("{path}.check_body"),
            "needs an HTTP `health_check` on the pool (its answers carry the report)",
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
        header: raw.header.map(|h| h.to_ascii_lowercase()),
        check_body,
        min_weight,
        allow_drain: raw.allow_drain.unwrap_or(false),
    }
}

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

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    fn pool(body: &str) -> Vec<String> {
        problems(&format!(
            "{FRONT}pools:\n  p:\n    backends: [{{address: 127.0.0.1:9}}]\n{body}"
        ))
    }

    #[test]
    fn algorithm_and_hash_key_must_agree() {
        assert_eq!(
            pool("    algorithm: consistent_hash\n"),
            ["6:5: pools.p.algorithm: consistent_hash needs `hash_key` (client_ip, path, uri, {header: NAME}, {cookie: NAME} or {query: NAME})"]
        );
        assert_eq!(
            pool("    hash_key: {header: 'a b'}\n    algorithm: consistent_hash\n"),
            ["6:16: pools.p.hash_key.header: `a b` is not a header name"]
        );
        assert_eq!(
            pool("    hash_key: path\n"),
            ["6:5: pools.p.hash_key: `hash_key` only applies to algorithm consistent_hash, this pool uses round_robin"]
        );
    }

    #[test]
    fn an_unknown_algorithm_is_reported_once_not_with_what_depends_on_it() {
        assert_eq!(
            pool("    algorithm: fastest\n    hash_key: path\n    balance_factor: 1.5\n"),
            ["6:5: pools.p.algorithm: unknown algorithm `fastest`: expected round_robin, least_connections, least_latency, consistent_hash, ip_hash or random"]
        );
        assert_eq!(
            pool("    algorithm: [ip_hash]\n    balance_factor: 1.5\n"),
            ["6:5: pools.p.algorithm: a string, got a list"]
        );
    }

    #[test]
    fn bounded_load_decay_feedback_and_slow_start() {
        assert_eq!(
            pool("    algorithm: ip_hash\n    balance_factor: 12\n    ewma_decay: 1s\n    slow_start: 2h\n    feedback: {header: X-Load, min_weight: 200%}\n"),
            [
                "7:5: pools.p.balance_factor: 12 is out of range: must be above 1 and at most 10 (e.g. 1.25: a backend takes at most 25% over its share)",
                "8:5: pools.p.ewma_decay: `ewma_decay` only applies to least_latency, this pool uses ip_hash",
                "9:5: pools.p.slow_start: must be at most 1h",
                "10:32: pools.p.feedback.min_weight: `200%` is not a percentage from 1% to 100% (e.g. 10%)",
            ]
        );
        assert_eq!(
            pool("    balance_factor: lots\n"),
            ["6:5: pools.p.balance_factor: a number above 1 and at most 10, got `lots`"]
        );
    }

    #[test]
    fn feedback_names_where_reports_come_from() {
        assert_eq!(
            pool("    feedback: {min_weight: 20%}
"),
            ["6:5: pools.p.feedback: say where backends report their load: `header: NAME`, `check_body: true`, or both"]
        );
        assert_eq!(
            pool("    health_check: {tcp: {}}
    feedback: {check_body: true}
"),
            ["7:16: pools.p.feedback.check_body: needs an HTTP `health_check` on the pool (its answers carry the report)"]
        );
        assert!(pool(
            "    health_check: {http: {path: /load}}
    feedback: {check_body: true, header: X-Load}
"
        )
        .is_empty());
    }
}
