//! Failure-time balancing: a lost backend's share spreads over the survivors by weight for every
//! algorithm, and so do its retries and its affinity sessions; slow start, the retry budget and
//! passive ejection (on by default) behave under real faults of real backends.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// The fast active check of the other suites.
const CHECK: &str = "{http: {path: /healthz}, interval: 200ms, timeout: 200ms, healthy_threshold: 2, unhealthy_threshold: 3}";

/// What one request got: the backend that answered it in full, or why it failed.
type Outcome = Result<String, String>;

/// One pool `p` behind the only route, with the admin listener: `lines` are the pool's keys.
fn pool_yaml(admin: &Admin, lines: &[String], backends: &[(&Backend, u32)]) -> String {
    let keys: String = lines.iter().map(|l| format!("    {l}\n")).collect();
    format!(
        "{}routes: [{{pool: p}}]\npools:\n  p:\n{keys}    backends: {}\n",
        admin.yaml(),
        backends_yaml(backends)
    )
}

async fn start_backends(names: &[&str]) -> Vec<Backend> {
    let mut bs = Vec::new();
    for n in names {
        bs.push(Backend::start(n).await);
    }
    bs
}

/// A random key of the kind `algorithm` hashes (none for the others).
fn random_key(algorithm: &str) -> Key {
    match algorithm {
        "consistent_hash" => Key::Header(format!("k{:016x}", fastrand::u64(..))),
        "ip_hash" => Key::From(IpAddr::from([
            127,
            2,
            fastrand::u8(..),
            fastrand::u8(1..255),
        ])),
        _ => Key::None,
    }
}

/// The keys of the share measurement: fixed, so that the ring's shares are known (see
/// `RING_ADDRESSES`).
fn fixed_keys(algorithm: &str, requests: usize) -> Vec<Key> {
    (0..requests)
        .map(|i| match algorithm {
            "consistent_hash" => Key::Header(format!("k{:016x}", i as u64)),
            "ip_hash" => Key::From(IpAddr::from([127, 1, (i / 200) as u8, (i % 200 + 1) as u8])),
            _ => Key::None,
        })
        .collect()
}

/// What picks a request's backend on a hashing pool: nothing, its `X-Key` header, or the address
/// it comes from (ip_hash).
#[derive(Clone, Debug)]
enum Key {
    None,
    Header(String),
    From(IpAddr),
}

/// GET `url` as `key` says (with `X-Key`, or from its address with a client of its own) and read
/// the whole body, which must be the name of the backend that answered 200.
async fn fetch(c: &reqwest::Client, url: &str, key: &Key) -> Outcome {
    let own;
    let mut req = match key {
        Key::From(ip) => {
            own = client_from(*ip);
            own.get(url)
        }
        _ => c.get(url),
    };
    if let Key::Header(k) = key {
        req = req.header("x-key", k);
    }
    let resp = req.send().await.map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let backend = backend_of(&resp);
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("body from {backend:?}: {e}"))?;
    if status != 200 {
        return Err(format!("status {status} from {backend:?}"));
    }
    if body != backend.as_bytes() {
        return Err(format!("body {body:?} from {backend:?}"));
    }
    Ok(backend)
}

/// One request per entry of `keys`, from `concurrency` clients at once; outcomes in `keys` order.
async fn spray(url: &str, keys: &[Key], concurrency: usize) -> Vec<Outcome> {
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let mine: Vec<(usize, Key)> = keys
            .iter()
            .enumerate()
            .skip(worker)
            .step_by(concurrency)
            .map(|(i, k)| (i, k.clone()))
            .collect();
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut got = Vec::new();
            for (i, key) in mine {
                got.push((i, fetch(&c, &url, &key).await));
            }
            got
        }));
    }
    let mut outcomes = vec![Err("not sent".to_string()); keys.len()];
    for t in tasks {
        for (i, o) in t.await.expect("client task") {
            outcomes[i] = o;
        }
    }
    outcomes
}

/// `n` requests without a key.
fn no_keys(n: usize) -> Vec<Key> {
    vec![Key::None; n]
}

/// The failures among `outcomes`: how many, and the first few distinct reasons.
fn failures(outcomes: &[Outcome]) -> (usize, Vec<String>) {
    let mut reasons: Vec<String> = Vec::new();
    let mut n = 0;
    for e in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        n += 1;
        if reasons.len() < 5 && !reasons.contains(e) {
            reasons.push(e.clone());
        }
    }
    (n, reasons)
}

/// Requests answered per backend.
fn counts(outcomes: &[Outcome]) -> BTreeMap<String, usize> {
    tally(
        &outcomes
            .iter()
            .filter_map(|o| o.as_ref().ok().cloned())
            .collect::<Vec<_>>(),
    )
}

/// Each backend of `weights` got its weight's share of `outcomes` within `tolerance` (relative)?
/// Err: a message with every measured and ideal share.
fn check_shares(
    outcomes: &[Outcome],
    weights: &[(&str, u32)],
    tolerance: f64,
) -> Result<(), String> {
    let got = counts(outcomes);
    let total = outcomes.len() as f64;
    let sum: u32 = weights.iter().map(|(_, w)| w).sum();
    let mut bad = false;
    let mut report = Vec::new();
    for (name, w) in weights {
        let ideal = f64::from(*w) / f64::from(sum);
        let share = *got.get(*name).unwrap_or(&0) as f64 / total;
        let off = (share - ideal).abs() / ideal;
        bad |= off > tolerance;
        report.push(format!(
            "{name}: {:.1}% (ideal {:.1}%, off {:.0}%)",
            share * 100.0,
            ideal * 100.0,
            off * 100.0
        ));
    }
    if bad {
        Err(format!(
            "shares of {} requests not within {:.0}% of the weights: {}; counts {got:?}",
            outcomes.len(),
            tolerance * 100.0,
            report.join(", ")
        ))
    } else {
        Ok(())
    }
}

/// Transitions of backend `name` of pool p to `to` ("up" or "down") so far.
async fn transitions(admin: &Admin, name: &str, to: &str) -> f64 {
    admin
        .metric(
            "fulcrum_health_transitions_total",
            &[("pool", "p"), ("backend", name), ("to", to)],
        )
        .await
}

/// Poll `/status` until backend `name` of pool p is in `state`; returns its entry.
async fn wait_for_state(
    admin: &Admin,
    name: &str,
    state: &str,
    limit: Duration,
) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let b = admin.backend("p", name).await;
        if b["state"] == state {
            return b;
        }
        assert!(
            Instant::now() < deadline,
            "backend {name} not {state:?} within {limit:?}; /status has {b}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Poll `/status` until every backend of pool p takes traffic: `state` "ready" (or, from a
/// /status without `state`, `ready: true`). Checked backends wait for a first passing check.
async fn wait_all_ready(admin: &Admin) {
    wait_for_async(Duration::from_secs(5), "every backend ready", || async {
        let st = admin.status().await;
        st["pools"]["p"]["backends"].as_array().is_some_and(|bs| {
            bs.iter()
                .all(|b| b["state"] == "ready" || (b["state"].is_null() && b["ready"] == true))
        })
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 1. A lost backend's share, by algorithm and by the way it is lost.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Loss {
    /// Its health check fails (`set_health(500)`).
    HealthCheck,
    /// It closes every connection without answering, until passive health ejects it.
    Ejection,
    /// It is killed: connections are refused.
    Killed,
}

const WEIGHTS: [(&str, u32); 4] = [("a", 1), ("b", 2), ("c", 3), ("d", 4)];
/// least_latency weighs latency first (cost = EWMA x (in flight + 1) / weight): with equal
/// backends of unequal weights its shares are not the weights' (measured 12-29% off), so its
/// case checks that a lost backend's share spreads evenly over equal survivors.
const EQUAL: [(&str, u32); 4] = [("a", 1), ("b", 1), ("c", 1), ("d", 1)];
/// Least connections follows weights through the in-flight counts: every request takes this
/// long, and 24 clients keep survivors weighing 1, 2 and 3 at 4, 8 and 12 requests in flight
/// (measured today, with fulcrum's own time per request, a is ~5% over its ideal at 25 ms and
/// ~7% at 10 ms).
const LC_DELAY: Duration = Duration::from_millis(25);
const LC_CLIENTS: usize = 24;

/// Where the backends of a hashing pool listen, per algorithm and way of losing one (each
/// case its own addresses: a dropped backend's listener may not be closed yet when the next
/// case starts). A ring's shares depend on its backends' addresses, and ketama's 160 points
/// per unit of weight leave a survivor's share off its weight's by 6.5% for the median set of
/// addresses (12.5% at the 90th percentile, computed with pingora-ketama over 50 sets). With
/// these the ring after the loss is within 3.8% of the weights for the X-Key keys
/// (consistent_hash) and the client addresses (ip_hash) the test sends, so it measures how the
/// lost share spreads, not the ring's own unevenness.
const RING_ADDRESSES: [(&str, Loss, u8); 6] = [
    ("consistent_hash", Loss::HealthCheck, 57),
    ("consistent_hash", Loss::Ejection, 41),
    ("consistent_hash", Loss::Killed, 52),
    ("ip_hash", Loss::HealthCheck, 23),
    ("ip_hash", Loss::Ejection, 39),
    ("ip_hash", Loss::Killed, 28),
];
const RING_PORT: u16 = 27500;

/// Lose one backend of four (weights 1..4) the way `loss` says, under `algorithm`, then check
/// that the survivors share the traffic by weight and that no client saw an error.
async fn lose_one(algorithm: &'static str, loss: Loss) {
    let what = format!("{algorithm}, backend lost by {loss:?}");
    let hashing = matches!(algorithm, "consistent_hash" | "ip_hash");
    let bs = if hashing {
        let third = RING_ADDRESSES
            .iter()
            .find(|(a, l, _)| *a == algorithm && *l == loss)
            .map(|(_, _, t)| *t)
            .unwrap();
        let mut bs = Vec::new();
        for (i, name) in ["a", "b", "c", "d"].into_iter().enumerate() {
            let addr = SocketAddr::from(([127, 0, third, i as u8 + 1], RING_PORT));
            bs.push(Backend::start_on(name, addr, Behaviour::Normal).await);
        }
        bs
    } else {
        start_backends(&["a", "b", "c", "d"]).await
    };
    let lost = 3;
    let (requests, clients) = match algorithm {
        // binomial: 10% of the smallest survivor's 1/6 is 4 standard deviations at 8,000
        "random" => (8_000, 8),
        // both weigh in-flight requests: they must take a while (LC_DELAY)
        "least_connections" => (2_000, LC_CLIENTS),
        // its picks follow latency samples, which wander more than in-flight counts
        "least_latency" => (4_000, LC_CLIENTS),
        "consistent_hash" => (6_000, 8),
        "ip_hash" => (3_000, 8),
        _ => (2_000, 8),
    };
    let tolerance = 0.10;
    if matches!(algorithm, "least_connections" | "least_latency") {
        for b in &bs {
            b.set_mode(Mode::Delay(LC_DELAY));
        }
    }
    let admin = Admin::new();
    let mut lines = vec![format!("algorithm: {algorithm}")];
    if algorithm == "consistent_hash" {
        lines.push("hash_key: {header: X-Key}".into());
    }
    if algorithm == "least_latency" {
        // The failed attempts while the victim is taken out are penalty samples; with the
        // default 10 s decay they still tilt the survivors' shares during the measurement.
        lines.push("ewma_decay: 1s".into());
    }
    if let Loss::HealthCheck = loss {
        lines.push(format!("health_check: {CHECK}"));
    }
    let weights = if algorithm == "least_latency" {
        EQUAL
    } else {
        WEIGHTS
    };
    let list: Vec<(&Backend, u32)> = bs.iter().zip(weights).map(|(b, (_, w))| (b, w)).collect();
    let f = Fulcrum::start(&pool_yaml(&admin, &lines, &list)).await;
    wait_all_ready(&admin).await;
    let url = f.url("/");
    let keys = fixed_keys(algorithm, requests);
    let before = if hashing {
        let before = spray(&url, &keys, clients).await;
        assert_eq!(
            failures(&before).0,
            0,
            "{what}: before the loss: {:?}",
            failures(&before)
        );
        before
    } else {
        Vec::new()
    };

    let victim = &bs[lost];
    match loss {
        Loss::HealthCheck => victim.set_health(500),
        Loss::Ejection => victim.set_mode(Mode::Reset),
        Loss::Killed => victim.stop(),
    }
    // Keep traffic flowing (passive health needs failed requests) until fulcrum takes it out.
    let mut during = Vec::new();
    if !matches!(loss, Loss::Killed) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while transitions(&admin, &victim.name, "down").await < 1.0 {
            assert!(
                Instant::now() < deadline,
                "{what}: {} not taken out within 10 s ({} requests sent meanwhile, {:?}); its log lines: {:?}",
                victim.name,
                during.len(),
                counts(&during),
                f.log().lines().filter(|l| l.contains(&victim.addr.to_string())).collect::<Vec<_>>()
            );
            let batch: Vec<Key> = (0..40).map(|_| random_key(algorithm)).collect();
            during.extend(spray(&url, &batch, 8).await);
        }
    }
    let after = spray(&url, &keys, clients).await;

    let (errors, reasons) = failures(&during);
    assert_eq!(
        errors, 0,
        "{what}: client errors while it was being taken out: {reasons:?}"
    );
    let (errors, reasons) = failures(&after);
    assert_eq!(
        errors, 0,
        "{what}: client errors once it was out: {reasons:?}"
    );
    let got = counts(&after);
    assert!(
        !got.contains_key(&victim.name),
        "{what}: the lost backend still answered: {got:?}"
    );
    let survivors: Vec<(&str, u32)> = weights
        .iter()
        .copied()
        .filter(|(n, _)| *n != victim.name)
        .collect();
    if let Err(e) = check_shares(&after, &survivors, tolerance) {
        panic!("{what}: {e}");
    }
    if hashing {
        let moved: Vec<(&String, &String)> = before
            .iter()
            .zip(&after)
            .filter_map(|(b, a)| Some((b.as_ref().ok()?, a.as_ref().ok()?)))
            .filter(|(b, a)| **b != victim.name && b != a)
            .collect();
        assert!(
            moved.is_empty(),
            "{what}: {} of {} keys moved although their backend survived, e.g. {:?}",
            moved.len(),
            keys.len(),
            &moved[..moved.len().min(5)]
        );
    }
    eprintln!(
        "{what}: {} requests while taking it out, then {got:?}",
        during.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_algorithm_spreads_a_lost_backends_share_by_weight() {
    // The three ways of losing a backend run at once; the algorithms one after another.
    let mut panics = Vec::new();
    for algorithm in [
        "round_robin",
        "least_connections",
        "least_latency",
        "random",
        "consistent_hash",
        "ip_hash",
    ] {
        let cases: Vec<_> = [Loss::HealthCheck, Loss::Ejection, Loss::Killed]
            .into_iter()
            .map(|loss| tokio::spawn(lose_one(algorithm, loss)))
            .collect();
        for case in cases {
            if let Err(e) = case.await {
                panics.push(panic_message(e));
            }
        }
    }
    assert!(panics.is_empty(), "{}", panics.join("\n"));
}

/// The message of a task's panic.
fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into()),
        Err(e) => e.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Retries.

/// With passive health off, every request that picks the dead backend is retried: the retries
/// must follow the survivors' weights as the first picks do. `weights` are a, b, c's.
async fn retry_case(
    algorithm: &'static str,
    weights: [u32; 3],
    dead_weight: u32,
    requests: usize,
    clients: usize,
) {
    let bs = start_backends(&["a", "b", "c"]).await;
    let dead = closed_addr();
    let admin = Admin::new();
    let list: Vec<(&Backend, u32)> = bs.iter().zip(weights).collect();
    let lines = [
        format!("algorithm: {algorithm}"),
        "retries: 2".into(),
        "passive_health: off".into(),
        // Room for every retry: the default budget (20% of requests + 100) is below the
        // share of requests that land on the dead backend first.
        "retry_budget: {ratio: 1.0, min_per_second: 10, window: 10s}".into(),
    ];
    let yaml = pool_yaml(&admin, &lines, &list).replace(
        "backends: [",
        &format!("backends: [{{address: \"{dead}\", name: dead, weight: {dead_weight}}}, "),
    );
    let f = Fulcrum::start(&yaml).await;
    let outcomes = spray(&f.url("/"), &no_keys(requests), clients).await;
    let (errors, reasons) = failures(&outcomes);
    assert_eq!(errors, 0, "{algorithm}: client errors: {reasons:?}");
    let survivors = [("a", weights[0]), ("b", weights[1]), ("c", weights[2])];
    if let Err(e) = check_shares(&outcomes, &survivors, 0.10) {
        panic!(
            "{algorithm}, dead backend of weight {dead_weight} among a, b, c of {weights:?}: {e}"
        );
    }
    // The dead backend was picked first by its weight's share, and each of those was retried
    // once (a retry never goes back to it).
    let retries = admin
        .metric("fulcrum_retries_total", &[("pool", "p")])
        .await;
    let total: u32 = weights.iter().sum::<u32>() + dead_weight;
    let expected = requests as f64 * f64::from(dead_weight) / f64::from(total);
    assert!(
        (retries - expected).abs() <= expected * 0.10,
        "{algorithm}: {retries} retries, expected {expected:.0} (the dead backend's share of {requests})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_of_a_dead_backend_spread_over_the_survivors() {
    let cases = [
        // four equal backends, one request at a time
        tokio::spawn(retry_case("round_robin", [1, 1, 1], 1, 2_000, 1)),
        // the heaviest dead: its 57% are all retries (binomial: 10% of 1/6 is 4 sd at 8,000)
        tokio::spawn(retry_case("random", [1, 2, 3], 8, 8_000, 8)),
    ];
    let mut panics = Vec::new();
    for case in cases {
        if let Err(e) = case.await {
            panics.push(panic_message(e));
        }
    }
    assert!(panics.is_empty(), "{}", panics.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 3. Affinity.

/// GET with an optional affinity cookie `fsid`: (backend, value of a Set-Cookie if any).
async fn visit(c: &reqwest::Client, url: &str, cookie: Option<&str>) -> (String, Option<String>) {
    let mut req = c.get(url);
    if let Some(v) = cookie {
        req = req.header("cookie", format!("fsid={v}"));
    }
    let resp = req.send().await.expect("request");
    assert_eq!(resp.status(), 200, "cookie {cookie:?}");
    let set = resp.headers().get("set-cookie").map(|h| {
        let h = h.to_str().unwrap();
        let kv = h.split(';').next().unwrap();
        kv.strip_prefix("fsid=")
            .unwrap_or_else(|| panic!("not an fsid cookie: {h}"))
            .to_string()
    });
    let backend = resp.headers()["x-backend"].to_str().unwrap().to_string();
    (backend, set)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_a_dead_backend_spread_and_instances_agree() {
    let bs = start_backends(&["a", "b", "c", "d"]).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("affinity.keys");
    std::fs::write(&keys, "failure-balancing-key-0123456789\n").unwrap();
    let list: Vec<String> = bs
        .iter()
        .map(|b| format!("{{address: \"{}\", name: {}}}", b.addr, b.name))
        .collect();
    let yaml = format!(
        "routes: [{{pool: web}}]\npools:\n  web:\n    backends: [{}]\n    health_check: {CHECK}\n    affinity: {{cookie: fsid, keys_file: \"{}\"}}\n",
        list.join(", "),
        keys.display()
    );
    let f1 = Fulcrum::start(&yaml).await;
    let f2 = Fulcrum::start(&yaml).await;
    let c = client();
    let mut sessions: Vec<(String, String)> = Vec::new();
    for i in 0..400 {
        let (backend, set) = visit(&c, &f1.url("/"), None).await;
        let cookie = set.unwrap_or_else(|| panic!("session {i}: no Set-Cookie"));
        sessions.push((backend, cookie));
    }
    let pinned = tally(&sessions.iter().map(|(b, _)| b.clone()).collect::<Vec<_>>());
    assert!(
        pinned.get("b").is_some_and(|&n| n >= 50),
        "400 sessions pinned as {pinned:?}: want at least 50 on b"
    );

    bs[1].set_health(500);
    for f in [&f1, &f2] {
        wait_for(Duration::from_secs(5), "b marked down", || {
            f.log().contains(" is down: ")
        })
        .await;
    }
    let mut repinned = Vec::new();
    let mut disagree = Vec::new();
    for (_, cookie) in sessions.iter().filter(|(b, _)| b == "b") {
        let (one, _) = visit(&c, &f1.url("/"), Some(cookie)).await;
        let (two, _) = visit(&c, &f2.url("/"), Some(cookie)).await;
        assert!(one != "b" && two != "b", "a session stayed on the dead b");
        if one != two {
            disagree.push((one.clone(), two));
        }
        repinned.push(one);
    }
    assert!(
        disagree.is_empty(),
        "the instances re-pinned {} of {} sessions differently, e.g. {:?}",
        disagree.len(),
        repinned.len(),
        &disagree[..disagree.len().min(5)]
    );
    let spread = tally(&repinned);
    let most = spread.values().copied().max().unwrap_or(0);
    assert!(
        spread.len() == 3 && most * 2 <= repinned.len(),
        "b's {} sessions re-pinned as {spread:?}: want all three survivors, none above 50%",
        repinned.len()
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Slow start.

/// Clients that GET in a loop until stopped (or 60 s), recording when each outcome came.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(Instant, Outcome)>>>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(AtomicUsize::new(0));
        let tasks = (0..clients)
            .map(|_| {
                let (url, stop, seen, failed) =
                    (url.clone(), stop.clone(), seen.clone(), failed.clone());
                tokio::spawn(async move {
                    let c = client();
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                        let outcome = fetch(&c, &url, &Key::None).await;
                        if outcome.is_err() {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                        seen.lock().unwrap().push((Instant::now(), outcome));
                    }
                })
            })
            .collect();
        Load {
            stop,
            seen,
            failed,
            tasks,
        }
    }

    /// The outcomes received in `[from, to)`.
    fn between(&self, from: Instant, to: Instant) -> Vec<Outcome> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, n)| n.clone())
            .collect()
    }

    fn last(&self) -> Option<Instant> {
        self.seen.lock().unwrap().last().map(|(t, _)| *t)
    }

    /// Stop the clients; returns (requests, failures).
    async fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks.drain(..) {
            t.await.expect("load client");
        }
        let n = self.seen.lock().unwrap().len();
        (n, self.failed.load(Ordering::SeqCst))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The share of `name` among `outcomes`, and the count.
fn share_of(outcomes: &[Outcome], name: &str) -> (f64, usize) {
    let n = counts(outcomes).get(name).copied().unwrap_or(0);
    (n as f64 / outcomes.len().max(1) as f64, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_start_ramps_a_returning_backend() {
    let cases = [
        tokio::spawn(slow_start_case("round_robin")),
        tokio::spawn(slow_start_case("least_connections")),
    ];
    let mut panics = Vec::new();
    for case in cases {
        if let Err(e) = case.await {
            panics.push(panic_message(e));
        }
    }
    assert!(panics.is_empty(), "{}", panics.join("\n"));
}

/// Take d of four equal backends out by health check, bring it back, and check that under
/// `algorithm` its share ramps: small in its first 0.5 s back, its full quarter after 3 s.
async fn slow_start_case(algorithm: &'static str) {
    let bs = start_backends(&["a", "b", "c", "d"]).await;
    let admin = Admin::new();
    // Weight 10 so that 10% of it is a whole number, should effective weights be integers.
    let list: Vec<(&Backend, u32)> = bs.iter().map(|b| (b, 10)).collect();
    let lines = [
        format!("algorithm: {algorithm}"),
        "slow_start: 3s".into(),
        format!("health_check: {CHECK}"),
    ];
    // Least connections follows weights through in-flight counts: requests must take a while.
    let clients = if algorithm == "least_connections" {
        for b in &bs {
            b.set_mode(Mode::Delay(LC_DELAY));
        }
        LC_CLIENTS
    } else {
        4
    };
    let f = Fulcrum::start(&pool_yaml(&admin, &lines, &list)).await;
    let d = &bs[3];
    let load = Load::start(f.url("/"), clients);
    wait_for(Duration::from_secs(5), "traffic on d", || d.hits() > 20).await;

    d.set_health(500);
    wait_for_async(Duration::from_secs(5), "d marked down", || async {
        transitions(&admin, "d", "down").await >= 1.0
    })
    .await;
    d.set_health(200);
    let ramping = wait_for_state(&admin, "d", "ready", Duration::from_secs(5)).await;
    let t0 = Instant::now();
    let late = (
        t0 + Duration::from_millis(3_500),
        t0 + Duration::from_millis(4_500),
    );
    wait_for(Duration::from_secs(10), "the late window to pass", || {
        load.last().is_some_and(|t| t >= late.1)
    })
    .await;
    let early = load.between(t0, t0 + Duration::from_millis(500));
    let after = load.between(late.0, late.1);
    let (_, failed) = load.finish().await;

    let (early_share, early_n) = share_of(&early, "d");
    let (late_share, late_n) = share_of(&after, "d");
    eprintln!(
        "slow start, {algorithm}: d got {early_n} of {} early, {late_n} of {} late; /status at ready: {ramping}",
        early.len(),
        after.len()
    );
    // Round robin is deterministic but for the ramp's coin: ~4% expected early, so 50
    // requests tell a ramp (< 15%) from none (25%) on a loaded machine too.
    assert!(
        early.len() >= 50 && after.len() >= 100,
        "too little load: {} / {}",
        early.len(),
        after.len()
    );
    assert!(
        early_share < 0.15,
        "{algorithm}: d's share over the first 0.5 s back is {:.1}% ({early_n} of {}): not ramping",
        early_share * 100.0,
        early.len()
    );
    assert!(
        (late_share - 0.25).abs() <= 0.025,
        "{algorithm}: d's share after the ramp is {:.1}% ({late_n} of {}), want 25% +- 10%",
        late_share * 100.0,
        after.len()
    );
    assert_eq!(failed, 0, "client errors");
    let (effective, weight) = (
        ramping["effective_weight"].as_f64(),
        ramping["weight"].as_f64(),
    );
    assert!(
        effective.zip(weight).is_some_and(|(e, w)| e < w),
        "/status of d just back: effective_weight {effective:?} should be below weight {weight:?}: {ramping}"
    );
    assert!(
        ramping["slow_start_until"].is_string(),
        "/status of d just back: slow_start_until should be a timestamp: {ramping}"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. The retry budget.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_load_when_every_backend_fails() {
    let bs = start_backends(&["a", "b", "c", "d"]).await;
    for b in &bs {
        b.set_mode(Mode::Reset);
    }
    let admin = Admin::new();
    let list: Vec<(&Backend, u32)> = bs.iter().map(|b| (b, 1)).collect();
    let lines = [
        "retries: 3".to_string(),
        "passive_health: off".into(),
        "retry_budget: {ratio: 0.2, min_per_second: 1, window: 10s}".into(),
    ];
    let f = Fulcrum::start(&pool_yaml(&admin, &lines, &list)).await;
    let n = 500;
    let outcomes = spray(&f.url("/"), &no_keys(n), 4).await;
    let statuses = tally(
        &outcomes
            .iter()
            .map(|o| match o {
                Ok(b) => format!("200 from {b}"),
                Err(e) => e.split(" from ").next().unwrap_or(e).to_string(),
            })
            .collect::<Vec<_>>(),
    );
    let hits: usize = bs.iter().map(Backend::hits).sum();
    // Budget: 20% of the window's requests plus 1/s x 10 s; some slack for in-flight races.
    let limit = n * 6 / 5 + 10 + 10;
    assert!(
        hits <= limit,
        "{hits} attempts for {n} requests (limit {limit}; {} without a budget); answers {statuses:?}",
        n * 4
    );
    assert!(
        statuses
            .keys()
            .all(|s| s == "status 502" || s == "status 504"),
        "every request answered 502 or 504: {statuses:?}"
    );
    // Counted as the request ends, which may be just after the client has its answer.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let exhausted = admin
            .metric("fulcrum_retry_budget_exhausted_total", &[("pool", "p")])
            .await;
        if exhausted > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fulcrum_retry_budget_exhausted_total{{pool=\"p\"}} is {exhausted} after {hits} attempts for {n} requests"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Passive ejection under load.

/// Lines of `log` about backend `b` ("backend NAME (ADDR)") that contain `what` (and not
/// "not `what`", as in "failing but not ejected").
fn log_lines(log: &str, b: &Backend, what: &str) -> usize {
    let who = format!("backend {} ({})", b.name, b.addr);
    let not = format!("not {what}");
    log.lines()
        .filter(|l| l.contains(&who) && l.contains(what) && !l.contains(&not))
        .count()
}

/// Backend d of four, under 32 clients, suffers `fault` for one second: it must be back within
/// its first ejection (2 s) plus a margin, with one return to service per ejection. A fault
/// that stalls (bounded by a 300 ms read timeout) leaves many requests in flight to d when it
/// is ejected: their failures must not eject it again.
async fn short_fault(fault: Mode) -> Result<String, String> {
    let bs = start_backends(&["a", "b", "c", "d"]).await;
    let admin = Admin::new();
    let list: Vec<(&Backend, u32)> = bs.iter().map(|b| (b, 1)).collect();
    let lines = [
        "passive_health: {ejection_time: 2s}".to_string(),
        "timeouts: {read: 300ms}".into(),
    ];
    let f = Fulcrum::start(&pool_yaml(&admin, &lines, &list)).await;
    let d = &bs[3];
    let load = Load::start(f.url("/"), 32);
    wait_for(Duration::from_secs(5), "traffic on d", || d.hits() > 50).await;

    d.set_mode(fault);
    // The stimulus: a fault of one second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    d.set_mode(Mode::Normal);
    let recovered = Instant::now();
    let at_recovery = d.hits();
    let deadline = recovered + Duration::from_secs(10);
    let back = loop {
        if d.hits() > at_recovery {
            break Some(recovered.elapsed());
        }
        if Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Every ejection ends in a return (to="up"), once d is back.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (downs, ups) = loop {
        let down = transitions(&admin, "d", "down").await;
        let up = transitions(&admin, "d", "up").await;
        if (down >= 1.0 && up == down) || Instant::now() >= deadline {
            break (down, up);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (sent, failed) = load.finish().await;
    let log = f.log();
    let ejected = log_lines(&log, d, "ejected");
    let returned = log_lines(&log, d, "returns to service");
    let summary = format!(
        "{fault:?} for 1 s: d back {back:?} after its recovery; transitions {downs} down, {ups} up; log: {ejected} 'ejected', {returned} 'returns to service'; {sent} requests, {failed} failed"
    );
    // Ejected within ~0.5 s of the fault's start (stalls need the 300 ms read timeout), the
    // fault ends 1 s in, the ejection 2 s after it began: d is back ~1-1.5 s after recovering.
    // One ejection only: requests that were in flight when it began do not eject again.
    let ok = back.is_some_and(|b| b <= Duration::from_millis(2_500))
        && downs == 1.0
        && ups == downs
        && ejected == 1
        && ejected == returned;
    if ok {
        Ok(summary)
    } else {
        Err(summary)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_fault_under_load_ends_within_the_first_back_off() {
    let reset = tokio::spawn(short_fault(Mode::Reset));
    let stall = tokio::spawn(short_fault(Mode::Stall));
    let results = [reset.await.unwrap(), stall.await.unwrap()];
    for r in &results {
        eprintln!("{r:?}");
    }
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "want d back within 2.5 s of recovering, ejected once, and one return per ejection:\n{failed:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Truncated bodies.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_truncates_bodies_is_ejected() {
    let bs = start_backends(&["a", "b", "t"]).await;
    bs[2].set_mode(Mode::Truncate);
    let admin = Admin::new();
    let list: Vec<(&Backend, u32)> = bs.iter().map(|b| (b, 1)).collect();
    let f = Fulcrum::start(&pool_yaml(&admin, &[], &list)).await;
    let first = spray(&f.url("/"), &no_keys(50), 1).await;
    let (truncated, reasons) = failures(&first);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let down = transitions(&admin, "t", "down").await;
        let state = admin.backend("p", "t").await["state"].clone();
        if down >= 1.0 && state == "ejected" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 50 requests ({truncated} failed: {reasons:?}; t hit {} times) t is not ejected: transitions down {down}, state {state}",
            bs[2].hits()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hits = bs[2].hits();
    let later = spray(&f.url("/"), &no_keys(100), 1).await;
    let (errors, reasons) = failures(&later);
    assert_eq!(errors, 0, "after t's ejection: {reasons:?}");
    assert_eq!(bs[2].hits(), hits, "t got requests while ejected");
    eprintln!(
        "truncation: {truncated} clients saw a truncated body before t was ejected ({hits} hits)"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. A flapping backend.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_backend_is_caught_by_fail_on_status() {
    let bs = start_backends(&["a", "b", "flap"]).await;
    let admin = Admin::new();
    let list: Vec<(&Backend, u32)> = bs.iter().map(|b| (b, 1)).collect();
    let lines = [
        "health_check: {http: {path: /healthz}, interval: 2s, timeout: 1s, healthy_threshold: 2, unhealthy_threshold: 3}".to_string(),
        "passive_health: {fail_on_status: [502, 503, 504]}".into(),
    ];
    let f = Fulcrum::start(&pool_yaml(&admin, &lines, &list)).await;
    let flap = &bs[2];
    wait_all_ready(&admin).await;

    let started = Instant::now();
    let load = Load::start(f.url("/"), 4);
    // The stimulus: 503 (traffic and checks) and back every second, for 6 s.
    for i in 0..6 {
        let bad = i % 2 == 0;
        flap.set_mode(if bad { Mode::Status(503) } else { Mode::Normal });
        flap.set_health(if bad { 503 } else { 200 });
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let outcomes = load.between(started, Instant::now());
    let (sent, failed) = load.finish().await;
    let rate = failed as f64 / sent.max(1) as f64;
    eprintln!(
        "flapping: {failed} of {sent} requests failed: {:?}; answered {:?}",
        failures(&outcomes),
        counts(&outcomes)
    );
    assert!(sent >= 500, "too little load: {sent}");
    assert!(
        rate < 0.03,
        "{failed} of {sent} requests ({:.1}%) failed (503s of the flapping backend): want < 3%",
        rate * 100.0
    );
}
