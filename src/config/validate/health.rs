//! Backend health: active checks (`health_check`) and passive ejection (`passive_health`).

use serde_norway::Value;

use super::parse::parse_duration;
use super::Checker;
use crate::config::model::*;
use crate::config::raw::*;

/// Largest `healthy_threshold` / `unhealthy_threshold`.
pub const MAX_THRESHOLD: u32 = 100;
/// Largest `max_ejected_percent`.
pub const MAX_EJECTED_PERCENT: u32 = 100;

fn check_statuses(ck: &mut Checker, path: &str, statuses: &[u16]) {
    if let Some(bad) = statuses.iter().find(|s| !(100..=599).contains(*s)) {
        ck.error(path, format!("{bad} is not an HTTP status (100-599)"));
    }
}

pub(super) fn check_health(
    ck: &mut Checker,
    path: &str,
    raw: RawHealthCheck,
) -> Option<HealthCheckConfig> {
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
    let compared = [format!("{path}.interval"), format!("{path}.timeout")];
    if timeout > interval && !compared.iter().any(|p| ck.unreadable(p)) {
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
        ck.in_range(&format!("{path}.{key}"), i128::from(v));
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
pub(super) fn check_passive(
    ck: &mut Checker,
    path: &str,
    raw: Option<Value>,
) -> Option<PassiveHealthConfig> {
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
    ck.in_range(
        &format!("{path}.consecutive_failures"),
        i128::from(consecutive_failures),
    );
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
    if max_ejection_time < ejection_time && !ck.unreadable(&format!("{path}.ejection_time")) {
        ck.error(
            format!("{path}.max_ejection_time"),
            "must not be shorter than `ejection_time`",
        );
    }
    let max_ejected_percent = raw.max_ejected_percent.unwrap_or(d.max_ejected_percent);
    ck.in_range(
        &format!("{path}.max_ejected_percent"),
        i128::from(max_ejected_percent),
    );
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

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    fn pool(body: &str) -> Vec<String> {
        problems(&format!(
            "{FRONT}pools:\n  p:\n    backends: [{{address: 127.0.0.1:9}}]\n{body}"
        ))
    }

    #[test]
    fn active_checks() {
        assert_eq!(
            pool("    health_check: {interval: 1s}\n"),
            ["6:5: pools.p.health_check: needs `http: {path: /healthz}` or `tcp: {}`"]
        );
        assert_eq!(
            pool("    health_check:\n      http: {path: healthz, expect_status: [200, 700]}\n      timeout: 3s\n      healthy_threshold: 0\n"),
            [
                "7:14: pools.p.health_check.http.path: must be a path starting with `/`, e.g. /healthz",
                "7:29: pools.p.health_check.http.expect_status: 700 is not an HTTP status (100-599)",
                "8:7: pools.p.health_check.timeout: must not be longer than `interval`",
                "9:7: pools.p.health_check.healthy_threshold: a whole number from 1 to 100, got 0",
            ]
        );
    }

    #[test]
    fn a_bad_interval_is_reported_alone_not_compared_as_its_default() {
        assert_eq!(
            pool("    health_check:\n      tcp: {}\n      interval: 5\n      timeout: 3s\n      unhealthy_threshold: many\n      http: {expect_status: [200, 99999]}\n"),
            [
                "6:5: pools.p.health_check: give either `http` or `tcp`, not both",
                "8:7: pools.p.health_check.interval: a duration such as `500ms`, `2s`, `1m` or `1h`, got 5",
                "10:7: pools.p.health_check.unhealthy_threshold: a whole number from 1 to 100, got `many`",
                "11:35: pools.p.health_check.http.expect_status[1]: an HTTP status (100-599), got 99999",
            ]
        );
    }

    #[test]
    fn passive_health() {
        assert_eq!(pool("    passive_health: off\n"), Vec::<String>::new());
        assert_eq!(
            pool("    passive_health: sometimes\n"),
            ["6:5: pools.p.passive_health: expected `off` or a map of consecutive_failures, ejection_time, max_ejection_time, max_ejected_percent, fail_on_status"]
        );
        assert_eq!(
            pool("    passive_health: {consecutive_failures: 0, ejection_time: 1m, max_ejection_time: 30s, max_ejected_percent: 101, fail_on_status: [99]}\n"),
            [
                "6:22: pools.p.passive_health.consecutive_failures: a whole number, at least 1, got 0",
                "6:66: pools.p.passive_health.max_ejection_time: must not be shorter than `ejection_time`",
                "6:90: pools.p.passive_health.max_ejected_percent: a whole number from 0 to 100, got 101",
                "6:116: pools.p.passive_health.fail_on_status: 99 is not an HTTP status (100-599)",
            ]
        );
    }
}
