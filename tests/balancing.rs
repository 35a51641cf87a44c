//! The five algorithms, end to end: the real binary in front of real backends.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use common::*;

fn pool_yaml(algorithm: &str, extra: &str, backends: &str) -> String {
    format!(
        "routes:\n  - pool: p\npools:\n  p:\n    algorithm: {algorithm}\n{extra}    backends: {backends}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_is_exact_over_equal_weights() {
    let bs: Vec<Backend> = start_all(["a", "b", "c", "d"]).await;
    let list: Vec<(&Backend, u32)> = bs.iter().map(|b| (b, 1)).collect();
    let f = Fulcrum::start(&pool_yaml("round_robin", "", &backends_yaml(&list))).await;
    let c = client();
    let mut names = Vec::new();
    for _ in 0..400 {
        let (status, name) = get(&c, &f.url("/")).await;
        assert_eq!(status, 200);
        names.push(name);
    }
    let t = tally(&names);
    assert_eq!(
        t.values().copied().collect::<Vec<_>>(),
        vec![100; 4],
        "{t:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_weights_are_smooth() {
    let bs: Vec<Backend> = start_all(["a", "b", "c"]).await;
    let list = [(&bs[0], 5), (&bs[1], 1), (&bs[2], 1)];
    let f = Fulcrum::start(&pool_yaml("round_robin", "", &backends_yaml(&list))).await;
    let c = client();
    let mut names = Vec::new();
    for _ in 0..70 {
        names.push(get(&c, &f.url("/")).await.1);
    }
    // nginx's cycle for 5:1:1, in configuration order.
    let cycle: Vec<&str> = names[..7].iter().map(String::as_str).collect();
    assert_eq!(names.iter().filter(|n| *n == "a").count(), 50);
    assert_eq!(names.iter().filter(|n| *n == "b").count(), 10);
    assert_eq!(names.iter().filter(|n| *n == "c").count(), 10);
    assert_eq!(cycle, ["a", "a", "b", "a", "c", "a", "a"], "{names:?}");
    for w in names.chunks(7) {
        assert_eq!(w, &names[..7], "every cycle is the same smooth order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_avoids_the_slow_backend() {
    let slow = Backend::start_with("slow", Behaviour::Delay(Duration::from_millis(300))).await;
    let fast: Vec<Backend> = start_all(["f1", "f2", "f3"]).await;
    let mut list = vec![(&slow, 1)];
    list.extend(fast.iter().map(|b| (b, 1)));
    let f = Fulcrum::start(&pool_yaml("least_connections", "", &backends_yaml(&list))).await;
    let url = f.url("/");
    let mut workers = Vec::new();
    for _ in 0..6 {
        let url = url.clone();
        workers.push(tokio::spawn(async move {
            let c = client();
            let mut names = Vec::new();
            for _ in 0..20 {
                let (status, name) = get(&c, &url).await;
                assert_eq!(status, 200);
                names.push(name);
            }
            names
        }));
    }
    let mut names = Vec::new();
    for w in workers {
        names.extend(w.await.unwrap());
    }
    let t = tally(&names);
    let slow_n = t.get("slow").copied().unwrap_or(0);
    let fast_avg = (names.len() - slow_n) / 3;
    assert!(
        slow_n * 3 < fast_avg,
        "slow got {slow_n}, fast average {fast_avg}: {t:?}"
    );
}

async fn key_map(f: &Fulcrum, keys: &[String]) -> BTreeMap<String, String> {
    let c = client();
    let mut m = BTreeMap::new();
    for k in keys {
        let resp = c
            .get(f.url("/"))
            .header("x-user-id", k)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let name = resp.headers()["x-backend"].to_str().unwrap().to_string();
        m.insert(k.clone(), name);
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_is_stable_and_moves_only_the_removed_backends_keys() {
    let bs: Vec<Backend> = start_all(["a", "b", "c", "d"]).await;
    let all: Vec<(&Backend, u32)> = bs.iter().map(|b| (b, 1)).collect();
    let extra = "    hash_key: {header: X-User-Id}\n";
    let keys: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();

    let f = Fulcrum::start(&pool_yaml("consistent_hash", extra, &backends_yaml(&all))).await;
    let first = key_map(&f, &keys).await;
    assert_eq!(first, key_map(&f, &keys).await, "every key is stable");
    let used = tally(&first.values().cloned().collect::<Vec<_>>());
    assert_eq!(used.len(), 4, "keys spread over all backends: {used:?}");

    // Keyless requests are spread, not piled onto one backend.
    let c = client();
    let mut keyless = Vec::new();
    for _ in 0..40 {
        keyless.push(get(&c, &f.url("/")).await.1);
    }
    let spread = tally(&keyless);
    assert!(
        spread.len() >= 3 && spread.values().all(|&n| n <= 25),
        "{spread:?}"
    );
    drop(f);

    // Remove "d": only its keys move.
    let f = Fulcrum::start(&pool_yaml(
        "consistent_hash",
        extra,
        &backends_yaml(&all[..3]),
    ))
    .await;
    let second = key_map(&f, &keys).await;
    for k in &keys {
        if first[k] != "d" {
            assert_eq!(
                first[k], second[k],
                "key {k} moved although its backend stayed"
            );
        } else {
            assert_ne!(second[k], "d");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_pins_each_client_address() {
    let bs: Vec<Backend> = start_all(["a", "b", "c"]).await;
    let list: Vec<(&Backend, u32)> = bs.iter().map(|b| (b, 1)).collect();
    let f = Fulcrum::start(&pool_yaml("ip_hash", "", &backends_yaml(&list))).await;
    let mut seen = BTreeMap::new();
    for last in 1..=20u8 {
        let ip: IpAddr = format!("127.0.0.{last}").parse().unwrap();
        let c = client_from(ip);
        let mut names = Vec::new();
        for _ in 0..5 {
            let (status, name) = get(&c, &f.url("/")).await;
            assert_eq!(status, 200);
            names.push(name);
        }
        assert!(names.iter().all(|n| *n == names[0]), "{ip}: {names:?}");
        seen.insert(ip, names[0].clone());
    }
    let used = tally(&seen.values().cloned().collect::<Vec<_>>());
    assert!(
        used.len() >= 2,
        "20 client addresses use more than one backend: {used:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_follows_weights() {
    let bs: Vec<Backend> = start_all(["a", "b"]).await;
    let list = [(&bs[0], 3), (&bs[1], 1)];
    let f = Fulcrum::start(&pool_yaml("random", "", &backends_yaml(&list))).await;
    let c = client();
    let mut names = Vec::new();
    for _ in 0..400 {
        names.push(get(&c, &f.url("/")).await.1);
    }
    let a = names.iter().filter(|n| *n == "a").count();
    // Expected 300; binomial sd ~8.7: 240..360 is a > 6 sd band.
    assert!((240..=360).contains(&a), "a got {a} of 400");
}

/// Start backends with the given names.
async fn start_all<const N: usize>(names: [&str; N]) -> Vec<Backend> {
    let mut bs = Vec::new();
    for n in names {
        bs.push(Backend::start(n).await);
    }
    bs
}
