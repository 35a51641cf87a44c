//! Active checks, passive ejection and failover, against backends the tests stop, restart,
//! slow down and break. Clients must see no error while any backend is up.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn checked_pool(backends: &[&Backend], check: &str, extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{address: \"{}\", name: {}}}", b.addr, b.name))
        .collect();
    format!(
        "routes: [{{pool: p}}]\npools:\n  p:\n    backends: [{}]\n    health_check: {check}\n{extra}",
        list.join(", ")
    )
}

const FAST_CHECK: &str =
    "{http: {path: /healthz}, interval: 200ms, timeout: 100ms, healthy_threshold: 2, unhealthy_threshold: 2}";

/// GET in a loop from `clients` tasks until `stop`; returns (requests, failures).
fn steady_load(
    url: String,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, usize)> {
    tokio::spawn(async move {
        let sent = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (url, stop, sent, failed) =
                (url.clone(), stop.clone(), sent.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                let c = client();
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    sent.fetch_add(1, Ordering::SeqCst);
                    match c.get(&url).send().await {
                        Ok(r) if r.status() == 200 => {}
                        _ => {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        (sent.load(Ordering::SeqCst), failed.load(Ordering::SeqCst))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_backend_is_detected_and_returns_with_no_client_error() {
    let a = Backend::start("a").await;
    let mut b = Backend::start("b").await;
    let c = Backend::start("c").await;
    let f = Fulcrum::start(&checked_pool(&[&a, &b, &c], FAST_CHECK, "")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(f.url("/"), 3, stop.clone());
    wait_for(Duration::from_secs(5), "traffic on b", || b.hits() > 20).await;

    b.stop();
    let killed = Instant::now();
    // Marked down within unhealthy_threshold x interval + timeout (2 x 200 + 100 ms), plus margin.
    let down = wait_for(Duration::from_secs(5), "b marked down", || {
        f.log().contains("backend b (") && f.log().contains(" is down: ")
    })
    .await;
    assert!(down < Duration::from_millis(900), "detected after {down:?}");

    b.restart().await;
    let before = b.hits();
    // Back within healthy_threshold x interval (2 x 200 ms), plus margin.
    let back = wait_for(Duration::from_secs(5), "b serving again", || {
        b.hits() > before
    })
    .await;
    assert!(back < Duration::from_millis(900), "back after {back:?}");
    wait_for(Duration::from_secs(5), "b serving steadily", || {
        b.hits() > before + 20
    })
    .await;

    stop.store(true, Ordering::SeqCst);
    let (sent, failed) = load.await.unwrap();
    eprintln!(
        "kill/restart under load: {sent} requests, {failed} failed; down after {down:?}, back after {back:?} (killed {:?} ago)",
        killed.elapsed()
    );
    assert_eq!(failed, 0, "of {sent} requests:\n{}", f.log());
    assert!(sent > 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_failing_its_checks_from_the_start_never_gets_a_request() {
    let a = Backend::start("a").await;
    let sick = Backend::start("sick").await;
    sick.set_health(500);
    let f = Fulcrum::start(&checked_pool(&[&a, &sick], FAST_CHECK, "")).await;
    let c = client();
    for _ in 0..60 {
        assert_eq!(get(&c, &f.url("/")).await, (200, "a".to_string()));
    }
    assert_eq!(sick.hits(), 0);
    assert!(!sick.health_checks().is_empty(), "it was checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_down_gives_an_immediate_503_with_retry_after() {
    let (x, y) = (closed_addr(), closed_addr());
    let f = Fulcrum::start(&format!(
        "routes: [{{pool: p}}]\npools:\n  p:\n    backends: [{{address: \"{x}\"}}, {{address: \"{y}\"}}]\n    health_check: {{tcp: {{}}, interval: 1s, timeout: 200ms}}\n"
    ))
    .await;
    let c = client();
    for _ in 0..3 {
        let started = Instant::now();
        let resp = c.get(f.url("/")).send().await.unwrap();
        let took = started.elapsed();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "1");
        assert!(took < Duration::from_millis(250), "{took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_closes_is_ejected_and_posts_to_it_are_not_retried() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let closer = Backend::start_with("closer", Behaviour::Close).await;
    let passive = "    passive_health: {consecutive_failures: 3, ejection_time: 30s}\n";
    let yaml = format!(
        "routes: [{{pool: p}}]\npools:\n  p:\n    backends: [{{address: \"{}\"}}, {{address: \"{}\"}}, {{address: \"{}\", name: closer}}]\n{passive}",
        a.addr, b.addr, closer.addr
    );
    let f = Fulcrum::start(&yaml).await;
    let c = client();
    for i in 0..90 {
        let (status, _) = get(&c, &f.url("/")).await;
        assert_eq!(status, 200, "GET {i}");
    }
    assert_eq!(closer.hits(), 3, "ejected after 3 failures in a row");
    assert!(
        f.log().contains("backend closer") && f.log().contains("ejected for 30s"),
        "{}",
        f.log()
    );
    drop(f);

    // Without ejection, a POST that lands on the closer fails and is not replayed elsewhere.
    let yaml = format!(
        "routes: [{{pool: p}}]\npools:\n  p:\n    backends: [{{address: \"{}\"}}, {{address: \"{}\", name: closer}}]\n",
        a.addr, closer.addr
    );
    let f = Fulcrum::start(&yaml).await;
    let (a_before, closer_before) = (a.hits(), closer.hits());
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let resp = c.post(f.url("/")).body("order=1").send().await.unwrap();
        statuses.push(resp.status().as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 502]);
    assert_eq!(
        a.hits() - a_before,
        1,
        "the failed POST was not retried on a"
    );
    assert_eq!(a.last_method(), "POST");
    assert_eq!(closer.hits() - closer_before, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_slower_than_the_read_timeout_is_ejected_and_gets_are_retried() {
    let a = Backend::start("a").await;
    let slow = Backend::start_with("slow", Behaviour::Delay(Duration::from_secs(5))).await;
    let yaml = format!(
        "routes: [{{pool: p}}]\npools:\n  p:\n    timeouts: {{read: 200ms}}\n    backends: [{{address: \"{}\"}}, {{address: \"{}\", name: slow}}]\n    passive_health: {{consecutive_failures: 2, ejection_time: 30s}}\n",
        a.addr, slow.addr
    );
    let f = Fulcrum::start(&yaml).await;
    let c = client();
    for i in 0..20 {
        assert_eq!(
            get(&c, &f.url("/")).await,
            (200, "a".to_string()),
            "GET {i}"
        );
    }
    assert_eq!(slow.hits(), 2, "ejected after two timeouts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_run_concurrently_so_a_black_hole_does_not_slow_the_others() {
    let a = Backend::start("a").await;
    let hole = Backend::start_with("hole", Behaviour::BlackHole).await;
    let b = Backend::start("b").await;
    let check = "{http: {path: /healthz}, interval: 200ms, timeout: 150ms, healthy_threshold: 1, unhealthy_threshold: 1}";
    let f = Fulcrum::start(&checked_pool(&[&a, &hole, &b], check, "")).await;
    let from = Instant::now();
    wait_for(Duration::from_secs(10), "10 checks of a", || {
        a.health_checks().iter().filter(|t| **t >= from).count() >= 11
    })
    .await;
    for backend in [&a, &b] {
        let times: Vec<Instant> = backend
            .health_checks()
            .into_iter()
            .filter(|t| *t >= from)
            .collect();
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        let mean = gaps.iter().sum::<Duration>() / gaps.len() as u32;
        // Sequential checks would add the black hole's 150 ms timeout to every round (~350 ms).
        assert!(
            mean >= Duration::from_millis(180) && mean <= Duration::from_millis(300),
            "{}: mean interval {mean:?}, gaps {gaps:?}",
            backend.name
        );
    }
    let c = client();
    for _ in 0..20 {
        let (status, name) = get(&c, &f.url("/")).await;
        assert_eq!(status, 200);
        assert_ne!(name, "hole");
    }
}
