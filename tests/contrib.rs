//! contrib/: the Prometheus rules pass `promtool check rules` and their unit tests
//! (`promtool test rules`), every query of the Grafana dashboard is valid PromQL, and every
//! metric either names is one fulcrum documents and a real fulcrum exports.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{client, Admin, Backend, Fulcrum};

const RULES: &str = "contrib/prometheus/fulcrum.rules.yml";
const RULE_TESTS: &str = "contrib/prometheus/fulcrum.rules.test.yml";
const DASHBOARD: &str = "contrib/grafana/fulcrum.json";

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool (make test installs Debian's prometheus package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {}:\n{text}", args.join(" "));
    text
}

/// The `fulcrum_*` metric names in `text`, without the histogram suffixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("fulcrum_") {
        // `fulcrum:` recording rules are not metric names; `fulcrum_` inside a word is not one.
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            let name = &tail[..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(base.to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// Every `expr` of every panel target in the dashboard.
fn dashboard_queries() -> Vec<String> {
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    assert_eq!(dash["uid"], "fulcrum");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut exprs = Vec::new();
    for p in panels {
        let targets = p["targets"].as_array().expect("every panel has targets");
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            exprs.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    exprs
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let checked = promtool(&["check", "rules", RULES]);
    assert!(checked.contains("SUCCESS: 10 rules found"), "{checked}");
    promtool(&["test", "rules", RULE_TESTS]);
    for alert in [
        "FulcrumBackendDown",
        "FulcrumPoolNoReadyBackend",
        "FulcrumHighErrorRatio",
        "FulcrumRetryBudgetExhausted",
        "FulcrumReloadFailed",
        "FulcrumCertificateExpiresSoon",
    ] {
        let tests = std::fs::read_to_string(RULE_TESTS).unwrap();
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no unit test"
        );
    }
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    // promtool checks PromQL in rule files: each query becomes a recording rule, with
    // Grafana's variables replaced by what Grafana sends.
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let queries = dashboard_queries();
    for (i, q) in queries.iter().enumerate() {
        let q = q
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*")
            .replace("$pool", ".*");
        assert!(!q.contains('$'), "unknown variable in {q}");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: '{}'\n",
            q.replace('\'', "''")
        ));
    }
    let path = dir.path().join("dashboard.rules.yml");
    std::fs::write(&path, rules).unwrap();
    let checked = promtool(&["check", "rules", path.to_str().unwrap()]);
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{checked}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_contrib_uses_is_documented_and_exported() {
    let mut used = metric_names(&std::fs::read_to_string(RULES).unwrap());
    used.extend(metric_names(&dashboard_queries().join("\n")));
    assert!(used.len() >= 10, "{used:?}");

    // Documented: a row of the README's metrics table.
    let readme = std::fs::read_to_string(Path::new("README.md")).unwrap();
    let documented: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `fulcrum_"))
        .filter_map(|l| l.split('`').next())
        .map(|n| format!("fulcrum_{n}"))
        .collect();
    let undocumented: Vec<_> = used.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "not in the README: {undocumented:?}"
    );

    // Exported: what a real fulcrum's /metrics shows once it has served a request, for the
    // metrics that exist from the start or from the first request.
    let a = Backend::start("a").await;
    let admin = Admin::new();
    let f = Fulcrum::start(&format!(
        "{}routes:\n  - match: {{path_prefix: /}}\n    pool: web\npools:\n  web:\n    backends: [{{address: \"{}\", name: a}}]\n",
        admin.yaml(),
        a.addr
    ))
    .await;
    let resp = client().get(f.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // The request is counted once it has ended (after its response): poll for it.
    common::wait_for_async(Duration::from_secs(5), "the request counted", || async {
        admin.metric("fulcrum_requests_total", &[]).await >= 1.0
    })
    .await;
    let exported = metric_names(&admin.metrics().await);
    for name in [
        "fulcrum_requests_total",
        "fulcrum_request_duration_seconds",
        "fulcrum_backend_up",
        "fulcrum_backend_inflight",
        "fulcrum_build_info",
        "fulcrum_limit_total",
    ] {
        assert!(used.contains(name), "contrib does not use {name}");
        assert!(exported.contains(name), "{name} not exported: {exported:?}");
    }
}
