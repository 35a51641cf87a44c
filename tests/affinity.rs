//! Affinity cookies end to end: pinning, bad cookies, failover and re-pinning across a fleet,
//! restarts and key rotation.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use fulcrum::pool::affinity::{backend_id, seal, Keys};

const OLD_KEY: &str = "old-key-0123456789abcdef";
const NEW_KEY: &str = "new-key-0123456789abcdef";

fn sticky_yaml(backends: &[&Backend], keys_file: &std::path::Path, check: bool) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{address: \"{}\", name: {}}}", b.addr, b.name))
        .collect();
    let check = if check {
        "    health_check: {http: {path: /healthz}, interval: 200ms, timeout: 100ms, healthy_threshold: 1, unhealthy_threshold: 1}\n"
    } else {
        ""
    };
    format!(
        "routes: [{{pool: web}}]\npools:\n  web:\n    backends: [{}]\n{check}    affinity: {{cookie: fsid, max_age: 1h, domain: example.test, keys_file: \"{}\"}}\n",
        list.join(", "),
        keys_file.display()
    )
}

fn keys_file(dir: &tempfile::TempDir, keys: &[&str]) -> std::path::PathBuf {
    let path = dir.path().join("affinity.keys");
    std::fs::write(&path, format!("# rotated by hand\n{}\n", keys.join("\n"))).unwrap();
    path
}

/// GET with an optional cookie: (backend, Set-Cookie value if any).
async fn visit(c: &reqwest::Client, url: &str, cookie: Option<&str>) -> (String, Option<String>) {
    let mut req = c.get(url);
    if let Some(v) = cookie {
        req = req.header("cookie", format!("other=1; fsid={v}"));
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let set = resp
        .headers()
        .get("set-cookie")
        .map(|h| h.to_str().unwrap().to_string());
    let backend = resp.headers()["x-backend"].to_str().unwrap().to_string();
    (backend, set)
}

fn value_of(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .and_then(|kv| kv.strip_prefix("fsid="))
        .expect("fsid cookie")
        .to_string()
}

async fn three() -> Vec<Backend> {
    vec![
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_pins_and_clients_without_one_spread() {
    let bs = three().await;
    let dir = tempfile::tempdir().unwrap();
    let keys = keys_file(&dir, &[OLD_KEY]);
    let f = Fulcrum::start(&sticky_yaml(&[&bs[0], &bs[1], &bs[2]], &keys, false)).await;
    let c = client();

    let (first, set) = visit(&c, &f.url("/"), None).await;
    let set = set.expect("the first response sets the cookie");
    assert!(set.starts_with("fsid=2."), "{set}");
    assert!(
        set.ends_with("; Max-Age=3600; Path=/; Domain=example.test; SameSite=Lax; HttpOnly"),
        "{set}"
    );
    let value = value_of(&set);
    for _ in 0..50 {
        let (backend, set) = visit(&c, &f.url("/"), Some(&value)).await;
        assert_eq!(backend, first);
        assert!(set.is_none(), "a fresh valid cookie is not re-sent");
    }

    let mut used = BTreeSet::new();
    for _ in 0..20 {
        let (backend, set) = visit(&client(), &f.url("/"), None).await;
        assert!(set.is_some());
        used.insert(backend);
    }
    assert_eq!(
        used.len(),
        3,
        "20 new clients spread over all backends: {used:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_expired_and_garbage_cookies_are_ignored_and_replaced() {
    let bs = three().await;
    let dir = tempfile::tempdir().unwrap();
    let keys = keys_file(&dir, &[OLD_KEY]);
    let f = Fulcrum::start(&sticky_yaml(&[&bs[0], &bs[1], &bs[2]], &keys, false)).await;
    let c = client();
    let k = Keys::new(&[OLD_KEY.as_bytes().to_vec()]);
    let id_a = backend_id("web", "a");
    let expired = seal(&k, "web", id_a, 1, 1_000_000);
    let valid = value_of(&visit(&c, &f.url("/"), None).await.1.unwrap());
    let tampered = {
        let mut parts: Vec<String> = valid.split('.').map(str::to_string).collect();
        parts[1] = format!("{:016x}", id_a ^ 1);
        parts.join(".")
    };
    let foreign = seal(
        &Keys::new(&[b"somebody-elses-key-000".to_vec()]),
        "web",
        id_a,
        1,
        u64::MAX / 2,
    );
    for bad in [
        tampered.as_str(),
        expired.as_str(),
        foreign.as_str(),
        "garbage",
        "1.x.y.z",
    ] {
        let mut seen = BTreeSet::new();
        for _ in 0..6 {
            let (backend, set) = visit(&client(), &f.url("/"), Some(bad)).await;
            let set = set.unwrap_or_else(|| panic!("{bad}: a new cookie"));
            // the new cookie is valid: it pins
            let (again, _) = visit(&c, &f.url("/"), Some(&value_of(&set))).await;
            assert_eq!(again, backend, "{bad}");
            seen.insert(backend);
        }
        assert!(
            seen.len() >= 2,
            "{bad}: balanced normally, not pinned: {seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_instances_restarts_and_rotated_keys_honour_the_cookie() {
    let bs = three().await;
    let dir = tempfile::tempdir().unwrap();
    let keys = keys_file(&dir, &[OLD_KEY]);
    let yaml = sticky_yaml(&[&bs[0], &bs[1], &bs[2]], &keys, false);
    let c = client();
    let f1 = Fulcrum::start(&yaml).await;
    let (pinned, set) = visit(&c, &f1.url("/"), None).await;
    let value = value_of(&set.unwrap());
    let f2 = Fulcrum::start(&yaml).await;
    for _ in 0..10 {
        assert_eq!(
            visit(&c, &f2.url("/"), Some(&value)).await.0,
            pinned,
            "second instance"
        );
    }
    drop(f1);
    drop(f2);
    let f3 = Fulcrum::start(&yaml).await;
    for _ in 0..10 {
        assert_eq!(
            visit(&c, &f3.url("/"), Some(&value)).await.0,
            pinned,
            "after a restart"
        );
    }
    drop(f3);
    // Rotate: the new key signs, the old one still verifies.
    let keys = keys_file(&dir, &[NEW_KEY, OLD_KEY]);
    let f4 = Fulcrum::start(&sticky_yaml(&[&bs[0], &bs[1], &bs[2]], &keys, false)).await;
    for _ in 0..10 {
        assert_eq!(
            visit(&c, &f4.url("/"), Some(&value)).await.0,
            pinned,
            "after rotation"
        );
    }
    let fresh = value_of(&visit(&client(), &f4.url("/"), None).await.1.unwrap());
    let new_only = Keys::new(&[NEW_KEY.as_bytes().to_vec()]);
    assert!(
        fulcrum::pool::affinity::open(&new_only, "web", fresh.as_bytes(), 0).is_ok(),
        "new cookies are signed with the new key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_backends_cookies_are_repinned_the_same_way_by_every_instance() {
    let bs = three().await;
    let dir = tempfile::tempdir().unwrap();
    let keys = keys_file(&dir, &[OLD_KEY]);
    let yaml = sticky_yaml(&[&bs[0], &bs[1], &bs[2]], &keys, true);
    let f1 = Fulcrum::start(&yaml).await;
    let f2 = Fulcrum::start(&yaml).await;
    let c = client();
    // Cookies pinning each backend, sealed like fulcrum does (same key, pool, ids).
    let k = Keys::new(&[OLD_KEY.as_bytes().to_vec()]);
    let cookie_for = |name: &str| seal(&k, "web", backend_id("web", name), 7, u64::MAX / 4);
    for b in &bs {
        let v = cookie_for(&b.name);
        assert_eq!(visit(&c, &f1.url("/"), Some(&v)).await.0, b.name);
    }

    bs[1].stop();
    let pinned_b = cookie_for("b");
    // Before or after b is detected, the request succeeds elsewhere and the cookie follows.
    let (backend, set) = visit(&c, &f1.url("/"), Some(&pinned_b)).await;
    assert_ne!(backend, "b");
    assert_eq!(
        visit(&c, &f1.url("/"), Some(&value_of(&set.unwrap())))
            .await
            .0,
        backend
    );

    let mut followed = Vec::new();
    for f in [&f1, &f2] {
        wait_for(Duration::from_secs(5), "b marked down", || {
            f.log().contains(" is down: ")
        })
        .await;
        let (backend, set) = visit(&c, &f.url("/"), Some(&pinned_b)).await;
        assert_ne!(backend, "b");
        let set = set.expect("a replaced cookie");
        // The replacement pins the successor.
        assert_eq!(
            visit(&c, &f.url("/"), Some(&value_of(&set))).await.0,
            backend
        );
        followed.push(backend);
    }
    assert_eq!(
        followed[0], followed[1],
        "both instances re-pin to the same successor"
    );
}
