//! Failover and fulcrum's own error answers: connect failures retried on another backend,
//! 502 when every backend refuses, 504 on an upstream timeout.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_among_live_backends_costs_no_client_error() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let dead = closed_addr();
    let f = Fulcrum::start(&format!(
        "routes: [{{pool: p}}]\npools:\n  p:\n    retries: 2\n    backends: [{{address: \"{}\"}}, {{address: \"{dead}\"}}, {{address: \"{}\"}}]\n",
        a.addr, b.addr
    ))
    .await;
    let c = client();
    let mut errors = 0;
    for _ in 0..300 {
        let (status, _) = get(&c, &f.url("/")).await;
        if status != 200 {
            errors += 1;
        }
    }
    assert_eq!(errors, 0);
    assert_eq!(a.hits() + b.hits(), 300);
    assert!(
        a.hits() >= 100 && b.hits() >= 100,
        "{} / {}",
        a.hits(),
        b.hits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_refusing_gives_a_prompt_502() {
    let (x, y) = (closed_addr(), closed_addr());
    let f = Fulcrum::start(&format!(
        "routes: [{{pool: p}}]\npools:\n  p: {{backends: [{{address: \"{x}\"}}, {{address: \"{y}\"}}]}}\n"
    ))
    .await;
    let c = client();
    let started = Instant::now();
    let resp = c.get(f.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let body = resp.text().await.unwrap();
    assert!(body.starts_with("502 Bad Gateway"), "{body}");
    assert!(
        body.contains(&id),
        "the body carries the request id: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_slower_than_the_read_timeout_gives_504() {
    let slow = Backend::start_with("slow", Behaviour::Delay(Duration::from_secs(3))).await;
    let f = Fulcrum::start(&format!(
        "routes: [{{pool: p}}]\npools:\n  p:\n    timeouts: {{read: 300ms}}\n    backends: [{{address: \"{}\"}}]\n",
        slow.addr
    ))
    .await;
    let c = client();
    let started = Instant::now();
    let resp = c.get(f.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let body = resp.text().await.unwrap();
    assert!(body.starts_with("504 Gateway Timeout"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_deadline_bounds_all_attempts() {
    let slow1 = Backend::start_with("s1", Behaviour::Delay(Duration::from_secs(5))).await;
    let slow2 = Backend::start_with("s2", Behaviour::Delay(Duration::from_secs(5))).await;
    let f = Fulcrum::start(&format!(
        "routes: [{{pool: p}}]\npools:\n  p:\n    retries: 3\n    timeouts: {{read: 1s, request: 400ms}}\n    backends: [{{address: \"{}\"}}, {{address: \"{}\"}}]\n",
        slow1.addr, slow2.addr
    ))
    .await;
    let started = Instant::now();
    let resp = client().get(f.url("/")).send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status(), 504);
    // Without the deadline: two tries of 1 s each.
    assert!(took < Duration::from_millis(900), "{took:?}");
    assert_eq!(
        slow1.hits() + slow2.hits(),
        1,
        "no attempt starts after the deadline"
    );
}
