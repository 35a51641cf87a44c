//! Metrics, the admin endpoint and the access log, scraped and read like an operator would:
//! counts add up, `promtool check metrics` passes, cardinality stays bounded.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::*;

/// One sample of the exposition: (name, labels, value).
type Sample = (String, BTreeMap<String, String>, f64);

fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|kv| !kv.is_empty())
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.trim_matches('"').to_string()))
                })
                .collect();
            Some((name.to_string(), labels, value.parse().ok()?))
        })
        .collect()
}

fn sum(samples: &[Sample], name: &str, filter: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && filter
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

/// Scrape until `ready` holds for the samples (a request is counted in its logging phase,
/// which may end just after the client has its response); returns the text.
async fn scrape_when(admin: u16, what: &str, ready: impl Fn(&[Sample]) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = scrape(admin).await;
        if ready(&parse(&text)) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn scrape(admin: u16) -> String {
    let resp = client()
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    resp.text().await.unwrap()
}

fn two_pools(a: &Backend, b: &Backend, c: &Backend, admin: u16, extra: &str) -> String {
    format!(
        "admin: {{listen: 127.0.0.1:{admin}}}\n{extra}routes:\n  - match: {{path_prefix: /api/}}\n    pool: api\n  - match: {{host: web.test}}\n    pool: web\npools:\n  web:\n    backends: [{{address: \"{}\", name: a}}, {{address: \"{}\", name: b}}]\n    health_check: {{http: {{path: /healthz}}, interval: 200ms, timeout: 200ms, healthy_threshold: 1, unhealthy_threshold: 1}}\n  api:\n    backends: [{{address: \"{}\", name: c}}]\n",
        a.addr, b.addr, c.addr
    )
}

/// The backends `a`, `b` (pool web) and `c` (pool api) of `two_pools`, and a free admin port.
async fn three_backends_and_an_admin_port() -> (Backend, Backend, Backend, u16) {
    (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
        free_port(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_counts_add_up_and_promtool_accepts_the_exposition() {
    let (a, b, c, admin) = three_backends_and_an_admin_port().await;
    let f = Fulcrum::start(&two_pools(&a, &b, &c, admin, "")).await;
    let cl = client();
    for _ in 0..30 {
        let r = cl
            .get(f.url("/x"))
            .header("host", "web.test")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    for _ in 0..12 {
        assert_eq!(cl.get(f.url("/api/v")).send().await.unwrap().status(), 200);
    }
    for _ in 0..5 {
        assert_eq!(
            cl.get(f.url("/nowhere")).send().await.unwrap().status(),
            404
        );
    }
    let text = scrape_when(admin, "47 requests counted", |s| {
        sum(s, "fulcrum_requests_total", &[]) == 47.0
    })
    .await;
    let s = parse(&text);
    assert_eq!(
        sum(
            &s,
            "fulcrum_requests_total",
            &[("pool", "web"), ("code", "200"), ("listener", "main")]
        ),
        30.0
    );
    assert_eq!(
        sum(
            &s,
            "fulcrum_requests_total",
            &[("pool", "web"), ("backend", "a")]
        ),
        15.0
    );
    assert_eq!(
        sum(
            &s,
            "fulcrum_requests_total",
            &[("pool", "api"), ("backend", "c")]
        ),
        12.0
    );
    assert_eq!(
        sum(
            &s,
            "fulcrum_requests_total",
            &[("pool", ""), ("code", "404")]
        ),
        5.0
    );
    assert_eq!(sum(&s, "fulcrum_request_duration_seconds_count", &[]), 47.0);
    assert_eq!(sum(&s, "fulcrum_backend_up", &[("pool", "web")]), 2.0);
    assert_eq!(sum(&s, "fulcrum_build_info", &[]), 1.0);
    assert!(sum(&s, "process_resident_memory_bytes", &[]) > 0.0);
    assert!(
        text.contains("# HELP fulcrum_requests_total")
            && text.contains("# TYPE fulcrum_request_duration_seconds histogram")
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, &text).unwrap();
    let out = Command::new("promtool")
        .arg("check")
        .arg("metrics")
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect("promtool (make test installs Debian's prometheus package)");
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_backend_moves_its_gauges_and_the_failure_counters() {
    let (a, b, c, admin) = three_backends_and_an_admin_port().await;
    let f = Fulcrum::start(&two_pools(&a, &b, &c, admin, "")).await;
    b.stop();
    // A connect failure on b is retried on a; the retry and the error are counted.
    let cl = client();
    for _ in 0..4 {
        let r = cl
            .get(f.url("/"))
            .header("host", "web.test")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    wait_for_async(Duration::from_secs(5), "b down in metrics", || async {
        let s = parse(&scrape(admin).await);
        sum(&s, "fulcrum_backend_up", &[("backend", "b")]) == 0.0
            && sum(
                &s,
                "fulcrum_health_transitions_total",
                &[("backend", "b"), ("to", "down")],
            ) == 1.0
    })
    .await;
    let s = parse(&scrape(admin).await);
    assert_eq!(sum(&s, "fulcrum_backend_up", &[("backend", "a")]), 1.0);
    assert!(sum(&s, "fulcrum_retries_total", &[("pool", "web")]) >= 1.0);
    assert!(
        sum(
            &s,
            "fulcrum_upstream_errors_total",
            &[("backend", "b"), ("kind", "connect_refused")]
        ) >= 1.0
    );

    // /status says the same.
    let st: serde_json::Value = cl
        .get(format!("http://127.0.0.1:{admin}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let web = &st["pools"]["web"];
    assert_eq!(web["algorithm"], "round_robin");
    let bs = web["backends"].as_array().unwrap();
    let b_status = bs.iter().find(|x| x["name"] == "b").unwrap();
    assert_eq!(b_status["healthy"], false);
    assert_eq!(b_status["address"], b.addr.to_string());
    assert!(
        b_status["reason"].as_str().unwrap().contains("failed"),
        "{b_status}"
    );
    assert_eq!(bs.iter().find(|x| x["name"] == "a").unwrap()["ready"], true);
    assert_eq!(st["config"]["sha256"].as_str().unwrap().len(), 64);

    // With every backend of api down: 503, counted as no_backend.
    c.stop();
    let api_down = format!("http://127.0.0.1:{}/api/x", f.port);
    let r = cl.get(&api_down).send().await.unwrap();
    assert_eq!(r.status(), 502, "api has no health check: connect failure");
    scrape_when(admin, "the 502 counted", |s| {
        sum(
            s,
            "fulcrum_requests_total",
            &[("pool", "api"), ("code", "502")],
        ) == 1.0
    })
    .await;
    b.stop();
    a.stop();
    wait_for_async(Duration::from_secs(5), "web all down", || async {
        let s = parse(&scrape(admin).await);
        sum(&s, "fulcrum_backend_up", &[("pool", "web")]) == 0.0
    })
    .await;
    let r = cl
        .get(f.url("/"))
        .header("host", "web.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let s = parse(&scrape(admin).await);
    assert_eq!(sum(&s, "fulcrum_no_backend_total", &[("pool", "web")]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_answers_healthz_404s_the_rest_and_is_not_behind_the_proxy() {
    let (a, b, c, admin) = three_backends_and_an_admin_port().await;
    let f = Fulcrum::start(&two_pools(&a, &b, &c, admin, "")).await;
    let cl = client();
    for (method, path, status) in [
        ("GET", "/healthz", 200),
        ("GET", "/nope", 404),
        ("POST", "/metrics", 404),
    ] {
        let url = format!("http://127.0.0.1:{admin}{path}");
        let r = cl
            .request(method.parse().unwrap(), url)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{method} {path}");
    }
    // Through the proxy listener, /metrics is just a path: routed (here: no route -> 404).
    let r = cl.get(f.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(!r.text().await.unwrap().contains("fulcrum_requests_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_hosts_and_paths_add_no_series() {
    let (a, b, c, admin) = three_backends_and_an_admin_port().await;
    let f = Fulcrum::start(&two_pools(&a, &b, &c, admin, "")).await;
    let count = |t: &str| t.lines().filter(|l| !l.starts_with('#')).count();
    let cl = client();
    // Warm up every kind of answer once (200 via each pool, 404).
    cl.get(f.url("/x"))
        .header("host", "web.test")
        .send()
        .await
        .unwrap();
    cl.get(f.url("/api/x")).send().await.unwrap();
    cl.get(f.url("/x")).send().await.unwrap();
    let before = scrape_when(admin, "warm-up counted", |s| {
        sum(s, "fulcrum_requests_total", &[]) == 3.0
    })
    .await;
    let url = f.url("");
    let mut tasks = Vec::new();
    for t in 0..8 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let cl = client();
            for i in 0..1250 {
                let n = t * 1250 + i;
                let path = if n % 2 == 0 {
                    format!("/api/{n}")
                } else {
                    format!("/p/{n}")
                };
                let r = cl
                    .get(format!("{url}{path}"))
                    .header("host", format!("h{n}.example"))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status() == 200 || r.status() == 404);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let after = scrape_when(admin, "every request counted", |s| {
        sum(s, "fulcrum_requests_total", &[]) == 10_003.0
    })
    .await;
    // process_* values change, but no line may appear.
    assert_eq!(
        count(&before),
        count(&after),
        "10,000 distinct hosts/paths added series"
    );
    assert_eq!(sum(&parse(&after), "fulcrum_requests_total", &[]), 10_003.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_a_json_line_per_request_and_reopens_on_sigusr1() {
    let (a, b, c, admin) = three_backends_and_an_admin_port().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let extra = format!(
        "access_log: {{path: \"{}\", format: json}}\n",
        log.display()
    );
    let f = Fulcrum::start(&two_pools(&a, &b, &c, admin, &extra)).await;
    let cl = client();
    for i in 0..5 {
        let r = cl
            .post(f.url(&format!("/api/item{i}")))
            .header("x-request-id", format!("rid-{i}"))
            .body("hello")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    cl.get(f.url("/none")).send().await.unwrap();
    let lines = |p: &std::path::Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect()
    };
    wait_for(Duration::from_secs(5), "6 log lines", || {
        lines(&log).len() == 6
    })
    .await;
    let entries = lines(&log);
    let first = &entries[0];
    for key in [
        "time",
        "listener",
        "client",
        "method",
        "host",
        "path",
        "status",
        "bytes_in",
        "bytes_out",
        "duration_ms",
        "pool",
        "backend",
        "attempts",
        "upstream_status",
        "request_id",
        "affinity",
    ] {
        assert!(first.get(key).is_some(), "missing {key}: {first}");
    }
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/api/item0");
    assert_eq!(first["status"], 200);
    assert_eq!(first["pool"], "api");
    assert_eq!(first["backend"], "c");
    assert_eq!(first["request_id"], "rid-0");
    assert_eq!(first["bytes_in"], 5);
    assert_eq!(first["bytes_out"], 1);
    assert_eq!(first["upstream_status"], 200);
    assert_eq!(entries[5]["status"], 404);
    assert_eq!(entries[5]["pool"], "");

    // logrotate: rename, then SIGUSR1; new lines go to a new file at the old path.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    let pid = f.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-USR1", &pid])
        .status()
        .unwrap()
        .success());
    wait_for(Duration::from_secs(5), "reopened", || {
        f.log().contains("reopened on SIGUSR1")
    })
    .await;
    cl.get(f.url("/api/after")).send().await.unwrap();
    wait_for(Duration::from_secs(5), "a line in the new file", || {
        lines(&log).len() == 1
    })
    .await;
    assert_eq!(lines(&log)[0]["path"], "/api/after");
    assert_eq!(lines(&rotated).len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_log_that_cannot_be_written_says_so_once() {
    let (a, b, c, admin) = three_backends_and_an_admin_port().await;
    // /dev/full: every write fails with "no space left on device", as on a full disk.
    let f = Fulcrum::start(&two_pools(
        &a,
        &b,
        &c,
        admin,
        "access_log: {path: /dev/full, format: json}\n",
    ))
    .await;
    let cl = client();
    for _ in 0..20 {
        assert_eq!(
            get(&cl, &f.url("/api/x")).await.0,
            200,
            "requests are served"
        );
    }
    wait_for(Duration::from_secs(5), "the write failure logged", || {
        f.log().contains("access log: cannot write")
    })
    .await;
    assert_eq!(
        f.log().matches("access log: cannot write").count(),
        1,
        "said once, not per line:\n{}",
        f.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_logs_what_it_serves_and_nothing_of_pingoras_internal_steps() {
    let (a, b, c, admin) = three_backends_and_an_admin_port().await;
    let f = Fulcrum::start(&two_pools(&a, &b, &c, admin, "")).await;
    wait_for(Duration::from_secs(5), "the ready line", || {
        f.log().contains("ready: accepting on every listener")
    })
    .await;
    let log = f.log();
    let lines: Vec<&str> = log.lines().collect();
    // The summary, the listener, the admin listener, ready: nothing else.
    assert_eq!(lines.len(), 4, "{log}");
    assert!(
        lines[0].contains(&format!(
            "INFO fulcrum {} serving {} (sha256 ",
            env!("CARGO_PKG_VERSION"),
            f.conf_path().display()
        )) && lines[0].ends_with("listeners 1, routes 2, pools 2, backends 3"),
        "{log}"
    );
    assert!(
        lines[1].ends_with(&format!("INFO listener main on 127.0.0.1:{}", f.port)),
        "{log}"
    );
    assert!(
        lines[2].ends_with(&format!("INFO admin on 127.0.0.1:{admin}")),
        "{log}"
    );
    assert!(
        lines[3].ends_with("INFO ready: accepting on every listener"),
        "{log}"
    );

    // Stopping: the signal, the grace period and the exit, not each service's.
    let mut f = f;
    f.signal("TERM");
    wait_for(Duration::from_secs(5), "the exit", || {
        f.child.try_wait().unwrap().is_some()
    })
    .await;
    let log = f.log();
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(
        !log.contains("Starting service") && !log.contains("exited."),
        "{log}"
    );
    assert!(log.lines().count() <= 8, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_check_is_one_short_line_with_pool_backend_and_reason() {
    let ok = Backend::start("ok").await;
    let sick = Backend::start("sick").await;
    sick.set_health(503);
    let dead = closed_addr();
    let f = Fulcrum::start(&format!(
        "routes:\n  - match: {{path_prefix: /}}\n    pool: web\npools:\n  web:\n    health_check: {{http: {{path: /healthz}}, interval: 100ms, timeout: 100ms, healthy_threshold: 1, unhealthy_threshold: 1}}\n    backends: [{{address: \"{}\", name: ok}}, {{address: \"{}\", name: sick}}, {{address: \"{dead}\", name: dead}}]\n",
        ok.addr, sick.addr
    ))
    .await;
    wait_for(Duration::from_secs(5), "both down lines", || {
        f.log().matches(" is down: ").count() >= 2
    })
    .await;
    let log = f.log();
    let down: Vec<&str> = log.lines().filter(|l| l.contains(" is down: ")).collect();
    assert_eq!(down.len(), 2, "{log}");
    assert!(
        down.iter().any(|l| l.ends_with(&format!(
            "WARN pool web backend dead ({dead}) is down: failed 1 health check: connection refused"
        ))),
        "{log}"
    );
    assert!(
        down.iter().any(|l| l.ends_with(&format!(
            "WARN pool web backend sick ({}) is down: failed 1 health check: answered 503",
            sick.addr
        ))),
        "{log}"
    );
    assert!(down.iter().all(|l| l.len() < 160), "{log}");
    assert!(!log.contains("BasicPeer"), "Pingora's peer dump: {log}");
    assert!(
        !log.contains("backend ok"),
        "a backend that passes is not news: {log}"
    );

    // Back up: one line, with what it passed.
    sick.set_health(200);
    wait_for(Duration::from_secs(5), "the up line", || {
        f.log().contains("pool web backend sick")
            && f.log().contains("is up: passed 1 health check")
    })
    .await;
}
