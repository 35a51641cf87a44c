//! Balancing that adapts, against real backends: bounded-load consistent hashing caps a hot
//! key's home backend at its bound and leaves other keys where the ring puts them; least_latency
//! starves a slowed backend while it is slow, gives it its share back soon after it recovers,
//! and spreads equal backends evenly; a load that backends report scales their weight.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;

/// One pool `p` behind the only route, with the admin listener: `lines` are the pool's keys.
fn pool_yaml(admin: &Admin, lines: &[&str], backends: &[&Backend]) -> String {
    let keys: String = lines.iter().map(|l| format!("    {l}\n")).collect();
    let list: Vec<(&Backend, u32)> = backends.iter().map(|b| (*b, 1)).collect();
    format!(
        "{}routes: [{{pool: p}}]\npools:\n  p:\n{keys}    backends: {}\n",
        admin.yaml(),
        backends_yaml(&list)
    )
}

async fn start_backends(names: &[&str], mode: Mode) -> Vec<Backend> {
    let mut bs = Vec::new();
    for n in names {
        let b = Backend::start(n).await;
        b.set_mode(mode);
        bs.push(b);
    }
    bs
}

/// GET `url` (with `X-Key: key` when given); the name of the backend that answered 200.
async fn fetch(c: &reqwest::Client, url: &str, key: Option<&str>) -> Result<String, String> {
    let mut req = c.get(url);
    if let Some(k) = key {
        req = req.header("x-key", k);
    }
    let resp = req.send().await.map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let backend = backend_of(&resp);
    resp.bytes().await.map_err(|e| format!("body: {e}"))?;
    if status != 200 {
        return Err(format!("status {status} from {backend:?}"));
    }
    Ok(backend)
}

/// `n` requests (each with `key`, when given) from `concurrency` clients at once; the backend
/// of each, panicking on any failure.
async fn spray(url: &str, key: Option<&str>, n: usize, concurrency: usize) -> Vec<String> {
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let mine = (worker..n).step_by(concurrency).count();
        let (url, key) = (url.to_string(), key.map(str::to_string));
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut got = Vec::new();
            for _ in 0..mine {
                got.push(fetch(&c, &url, key.as_deref()).await);
            }
            got
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        for r in t.await.expect("client task") {
            out.push(r.unwrap_or_else(|e| panic!("a request failed: {e}")));
        }
    }
    out
}

/// Where each of `keys` goes, one request at a time.
async fn homes(url: &str, keys: &[String]) -> Vec<String> {
    let c = client();
    let mut out = Vec::new();
    for k in keys {
        out.push(fetch(&c, url, Some(k)).await.expect("cold key"));
    }
    out
}

fn share(got: &[String], name: &str) -> f64 {
    got.iter().filter(|n| *n == name).count() as f64 / got.len().max(1) as f64
}

// ---------------------------------------------------------------------------------------------
// Bounded-load consistent hashing.

/// Hot-key clients: with 4 equal backends and factor 1.25, a pick while at most 15 others are
/// in flight allows a backend ceil(1.25 * 16 / 4) = 5.
const HOT_CLIENTS: usize = 16;
const HOT_BOUND: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_key_spreads_beyond_its_bound_and_cold_keys_stay() {
    let bs = start_backends(
        &["a", "b", "c", "d"],
        Mode::Delay(Duration::from_millis(40)),
    )
    .await;
    let refs: Vec<&Backend> = bs.iter().collect();
    let admin = Admin::new();
    let bounded = Fulcrum::start(&pool_yaml(
        &admin,
        &[
            "algorithm: consistent_hash",
            "hash_key: {header: X-Key}",
            "balance_factor: 1.25",
        ],
        &refs,
    ))
    .await;
    let plain_admin = Admin::new();
    let plain = Fulcrum::start(&pool_yaml(
        &plain_admin,
        &["algorithm: consistent_hash", "hash_key: {header: X-Key}"],
        &refs,
    ))
    .await;
    let st = admin.status().await;
    assert_eq!(st["pools"]["p"]["balance_factor"], 1.25, "{st}");

    // Within bound, keys go where the plain ring puts them.
    let cold: Vec<String> = (0..100).map(|k| format!("cold-{k}")).collect();
    let before = homes(&bounded.url("/"), &cold).await;
    assert_eq!(before, homes(&plain.url("/"), &cold).await, "same ring");
    let home = homes(&bounded.url("/"), &["hot".to_string()])
        .await
        .remove(0);
    let home_b = bs.iter().find(|b| b.name == home).expect("home backend");

    // Without a bound, the hot key piles onto its home.
    home_b.reset_peak();
    let piled = spray(&plain.url("/"), Some("hot"), 320, HOT_CLIENTS).await;
    let piled_peak = home_b.peak_inflight();
    assert_eq!(share(&piled, &home), 1.0);

    // With it, the home holds at most its bound and the rest walks on along the ring.
    home_b.reset_peak();
    let spread = spray(&bounded.url("/"), Some("hot"), 320, HOT_CLIENTS).await;
    let peak = home_b.peak_inflight();
    let got = tally(&spread);
    assert!(
        peak <= HOT_BOUND,
        "home {home} held {peak} at once, bound {HOT_BOUND}: {got:?}"
    );
    let home_share = share(&spread, &home);
    assert!(
        home_share < 0.5 && got.len() >= 3,
        "hot key spread: {got:?}"
    );

    // Loads are back within bound: every cold key is home again.
    let after = homes(&bounded.url("/"), &cold).await;
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    assert_eq!(moved, 0, "cold keys moved after the burst");
    let cold_spread = tally(&before);
    eprintln!(
        "hot key, {HOT_CLIENTS} clients: plain ring: home 100%, {piled_peak} at once; \
         balance_factor 1.25: {got:?}, home {:.0}%, at most {peak} at once (bound {HOT_BOUND}); \
         100 cold keys {cold_spread:?}, none moved",
        home_share * 100.0
    );
}

// ---------------------------------------------------------------------------------------------
// least_latency.

const FAST: Duration = Duration::from_millis(10);
const LL_CLIENTS: usize = 8;

fn least_latency_yaml(admin: &Admin, bs: &[Backend]) -> String {
    let refs: Vec<&Backend> = bs.iter().collect();
    pool_yaml(
        admin,
        &["algorithm: least_latency", "ewma_decay: 1s"],
        &refs,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_backend_gets_little_until_it_recovers() {
    let bs = start_backends(&["a", "b", "c", "d"], Mode::Delay(FAST)).await;
    let admin = Admin::new();
    let f = Fulcrum::start(&least_latency_yaml(&admin, &bs)).await;
    let url = f.url("/");
    let warm = spray(&url, None, 400, LL_CLIENTS).await;
    assert!(share(&warm, "d") > 0.1, "{:?}", tally(&warm));

    // d slows down tenfold: after its first slow answers, it gets a small share.
    bs[3].set_mode(Mode::Delay(FAST * 10));
    spray(&url, None, 200, LL_CLIENTS).await;
    // Just after its slow answers, /status shows d's average well above a's.
    let d = admin.backend("p", "d").await;
    let a = admin.backend("p", "a").await;
    let slow = spray(&url, None, 2000, LL_CLIENTS).await;
    let slow_share = share(&slow, "d");
    assert!(
        slow_share < 0.10,
        "slow d took {:.1}%: {:?}",
        slow_share * 100.0,
        tally(&slow)
    );
    let (d_ms, a_ms) = (
        d["ewma_ms"].as_f64().unwrap_or(0.0),
        a["ewma_ms"].as_f64().unwrap_or(0.0),
    );
    assert!(a_ms > 5.0 && a_ms < 50.0, "a's ewma_ms: {a}");
    assert!(d_ms > 2.0 * a_ms, "d's ewma_ms {d_ms} vs a's {a_ms}");

    // d recovers: within seconds it is back to its fair share (25%, here at least 20%).
    bs[3].set_mode(Mode::Delay(FAST));
    let recovered = Instant::now();
    let deadline = recovered + Duration::from_secs(6);
    let mut batches: Vec<f64> = Vec::new();
    let took = loop {
        let batch = spray(&url, None, 200, LL_CLIENTS).await;
        let s = share(&batch, "d");
        batches.push(s);
        if s >= 0.20 {
            break recovered.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "d not back to its share within 6 s; its share per batch of 200: {batches:?}"
        );
    };
    eprintln!(
        "least_latency, ewma_decay 1s, {LL_CLIENTS} clients: d slowed 10x took {:.1}% of 2000 \
         ({:?}; ewma_ms d {d_ms:.1}, a {a_ms:.1}); back to {:.0}% of a batch {:.1} s after \
         recovering (shares per batch {batches:?})",
        slow_share * 100.0,
        tally(&slow),
        batches.last().copied().unwrap_or(0.0) * 100.0,
        took.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn equal_backends_share_evenly() {
    let bs = start_backends(
        &["a", "b", "c", "d"],
        Mode::Delay(Duration::from_millis(20)),
    )
    .await;
    let admin = Admin::new();
    let f = Fulcrum::start(&least_latency_yaml(&admin, &bs)).await;
    let url = f.url("/");
    spray(&url, None, 200, 16).await;
    let got = spray(&url, None, 2400, 16).await;
    let counts: BTreeMap<String, usize> = tally(&got);
    for b in &bs {
        let s = share(&got, &b.name);
        assert!(
            (s - 0.25).abs() <= 0.025,
            "{}: {:.1}%, not within 10% of 25%: {counts:?}",
            b.name,
            s * 100.0
        );
    }
    eprintln!("least_latency, 4 equal backends, 16 clients: {counts:?} of 2400");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_backend_costs_few_attempts_and_no_client_sees_it() {
    let bs = start_backends(&["a", "b", "c", "d"], Mode::Delay(FAST)).await;
    let admin = Admin::new();
    let f = Fulcrum::start(&least_latency_yaml(&admin, &bs)).await;
    let url = f.url("/");
    spray(&url, None, 200, LL_CLIENTS).await;
    bs[3].stop();
    // Failed connects are retried on another backend (spray panics on any failure), and each
    // is a penalty sample: d is passed over, tried again only as its penalty wears off.
    let after = spray(&url, None, 1000, LL_CLIENTS).await;
    let failed = admin
        .metric(
            "fulcrum_upstream_errors_total",
            &[("pool", "p"), ("backend", "d")],
        )
        .await;
    assert_eq!(share(&after, "d"), 0.0);
    for n in ["a", "b", "c"] {
        assert!(share(&after, n) > 0.25, "{:?}", tally(&after));
    }
    assert!(
        (1.0..=50.0).contains(&failed),
        "{failed} failed attempts on d for 1000 requests"
    );
    eprintln!(
        "least_latency, d stopped: {failed} failed attempts on d in 1000 requests, {:?}",
        tally(&after)
    );
}

// ---------------------------------------------------------------------------------------------
// Backend-reported load.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reported_load_scales_a_backends_share() {
    let bs = start_backends(&["a", "b"], Mode::Normal).await;
    let refs: Vec<&Backend> = bs.iter().collect();
    let admin = Admin::new();
    let f = Fulcrum::start(&pool_yaml(
        &admin,
        &["feedback: {header: X-Backend-Load, min_weight: 10%, allow_drain: false}"],
        &refs,
    ))
    .await;
    let url = f.url("/");
    bs[0].set_header("x-backend-load", "0.1");
    bs[1].set_header("x-backend-load", "0.75");
    // The first answers carry the loads; from then on b keeps a quarter of its weight and a
    // 90%: b's share is 0.25 / 1.15.
    spray(&url, None, 50, 4).await;
    let loaded = spray(&url, None, 2000, 4).await;
    let b_share = share(&loaded, "b");
    assert!(
        (0.17..=0.27).contains(&b_share),
        "b (load 0.75) took {:.1}%, ideal 21.7%: {:?}",
        b_share * 100.0,
        tally(&loaded)
    );
    let b = admin.backend("p", "b").await;
    assert_eq!(b["effective_weight"], 0.25, "{b}");

    // `drain` without allow_drain: down to min_weight (10%), never to zero.
    bs[1].set_header("x-backend-load", "drain");
    spray(&url, None, 50, 4).await;
    let drained = spray(&url, None, 2000, 4).await;
    let d_share = share(&drained, "b");
    assert!(
        (0.05..=0.15).contains(&d_share),
        "b (drain, min_weight 10%) took {:.1}%, ideal 10%: {:?}",
        d_share * 100.0,
        tally(&drained)
    );
    eprintln!(
        "feedback: a at 0.1 and b at 0.75: b took {:.1}% (ideal 21.7%); b draining with \
         min_weight 10%: {:.1}% (ideal 10%)",
        b_share * 100.0,
        d_share * 100.0
    );
}

/// The active check's body carries the report: a backend that gets no request (or answers
/// without the header) still says how loaded it is, as HAProxy's agent check does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_load_reported_in_the_health_checks_body_scales_a_backends_share() {
    let bs = start_backends(&["a", "b"], Mode::Normal).await;
    let refs: Vec<&Backend> = bs.iter().collect();
    bs[0].set_health_body("0.1\n");
    bs[1].set_health_body("0.75 busy\n");
    let admin = Admin::new();
    let f = Fulcrum::start(&pool_yaml(
        &admin,
        &[
            "health_check: {http: {path: /healthz}, interval: 200ms, timeout: 200ms}",
            "feedback: {check_body: true, min_weight: 10%, allow_drain: true}",
        ],
        &refs,
    ))
    .await;
    let url = f.url("/");
    wait_for_async(Duration::from_secs(5), "b's check report taken", || async {
        admin.backend("p", "b").await["effective_weight"] == 0.25
    })
    .await;
    let loaded = spray(&url, None, 2000, 4).await;
    let b_share = share(&loaded, "b");
    assert!(
        (0.17..=0.27).contains(&b_share),
        "b (load 0.75 in its check) took {:.1}%, ideal 21.7%: {:?}",
        b_share * 100.0,
        tally(&loaded)
    );
    // `drain` in the check's body, allowed: no new request while a is usable.
    bs[1].set_health_body("drain");
    wait_for_async(Duration::from_secs(5), "b's drain taken", || async {
        admin.backend("p", "b").await["effective_weight"] == 0.0
    })
    .await;
    let drained = spray(&url, None, 500, 4).await;
    assert_eq!(share(&drained, "b"), 0.0, "{:?}", tally(&drained));
    // Back to idle: full weight again.
    bs[1].set_health_body("0");
    wait_for_async(Duration::from_secs(5), "b back at full weight", || async {
        admin.backend("p", "b").await["effective_weight"] == 1.0
    })
    .await;
    eprintln!(
        "feedback by check body: b at 0.75 took {:.1}% (ideal 21.7%); drained: 0 of 500",
        b_share * 100.0
    );
}
