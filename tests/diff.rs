//! `fulcrum -c NEW -t --diff OLD`: what a reload changes, in words; the share of hash keys it
//! says will move is checked against where a real reload sends real requests.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{backend_of, client, wait_for_async, Backend, Fulcrum, BIN};

/// `fulcrum -c new -t --diff old`: (exit code, stdout, stderr).
fn diff(dir: &Path, old: &str, new: &str) -> (i32, String, String) {
    std::fs::write(dir.join("old.yaml"), old).unwrap();
    std::fs::write(dir.join("new.yaml"), new).unwrap();
    let out = Command::new(BIN)
        .arg("-c")
        .arg(dir.join("new.yaml"))
        .arg("-t")
        .arg("--diff")
        .arg(dir.join("old.yaml"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn config(listen: u16, routes: &str, pools: &str) -> String {
    format!("listeners:\n  - name: main\n    listen: 127.0.0.1:{listen}\nroutes:\n{routes}pools:\n{pools}")
}

/// Affinity with signing keys from `keys` (written next to the configurations).
fn keyed(dir: &Path, file: &str, keys: &str) -> String {
    std::fs::write(dir.join(file), keys).unwrap();
    format!("affinity: {{cookie: s, keys_file: {file}}}")
}

#[test]
fn the_diff_names_what_a_reload_adds_removes_and_changes() {
    let dir = tempfile::tempdir().unwrap();
    let both = keyed(
        dir.path(),
        "old.keys",
        "0123456789abcdef-first\nfedcba9876543210-second\n",
    );
    let old = config(
        8080,
        "  - match: {host: a.test}\n    pool: web\n  - match: {path_prefix: /}\n    pool: api\n",
        &format!("  web:\n    {both}\n    backends:\n      - {{address: 127.0.0.1:9001, name: w1}}\n      - {{address: 127.0.0.1:9002, name: w2}}\n      - {{address: 127.0.0.1:9003, name: w3}}\n  api:\n    backends: [{{address: 127.0.0.1:9101}}]\n  old:\n    backends: [{{address: 127.0.0.1:9201}}]\n"),
    );
    let (code, out, err) = diff(dir.path(), &old, &old);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("no changes from "), "{out}");

    let new = config(
        8081,
        "  - match: {path_prefix: /}\n    pool: api\n  - match: {host: b.test}\n    pool: web\n",
        &format!("  web:\n    algorithm: least_connections\n    retries: 1\n    {both}\n    backends:\n      - {{address: 127.0.0.1:9001, name: w1, weight: 3}}\n      - {{address: 127.0.0.1:9003, name: w3}}\n      - {{address: 127.0.0.1:9004, name: w4}}\n  api:\n    backends: [{{address: 127.0.0.1:9101}}]\n  extra:\n    backends: [{{address: 127.0.0.1:9301}}]\n"),
    );
    let (code, out, err) = diff(dir.path(), &old, &new);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("is valid"), "{err}");
    for line in [
        "listener main: socket changed (needs an upgrade)",
        "route host a.test -> web: removed",
        "route host b.test -> web: added",
        "pool old: removed (1 backends)",
        "pool extra: added (round_robin, 1 backends)",
        "pool web: algorithm round_robin -> least_connections",
        "pool web: backend w2 removed",
        "pool web: backend w4 added (127.0.0.1:9004, weight 1)",
        "pool web: backend w1 weight 1 -> 3",
        "pool web: retries changed",
        "pool web: affinity: sessions pinned to w2 re-pin; the others keep their backend",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert!(!out.contains("pool api"), "{out}");

    // A listener limit is applied by the reload itself.
    let limited = old.replace(
        "listen: 127.0.0.1:8080\n",
        "listen: 127.0.0.1:8080\n    max_connections: 100\n",
    );
    let (_, out, _) = diff(dir.path(), &old, &limited);
    assert!(
        out.contains(
            "listener main: keepalive_timeout, limits or debug settings changed (applied in place)"
        ),
        "{out}"
    );

    // A new signing key that does not keep the old one: every cookie is refused.
    let rekeyed = old.replace(
        &both,
        &keyed(
            dir.path(),
            "new.keys",
            "another-key-of-16-bytes\nfedcba9876543210-second\n",
        ),
    );
    let (_, out, _) = diff(dir.path(), &old, &rekeyed);
    assert!(
        out.contains("pool web: affinity: the key that signed today's cookies is gone: every session re-pins"),
        "{out}"
    );

    // An invalid new file: exit 78 as -t, no diff; an invalid old file: exit 1.
    let (code, out, _) = diff(dir.path(), &old, "pools: {web: {backends: []}}\n");
    assert_eq!(code, 78);
    assert!(out.is_empty(), "{out}");
    let (code, _, err) = diff(dir.path(), "pools: 3\n", &old);
    assert_eq!(code, 1);
    assert!(err.contains("cannot compare with"), "{err}");
}

/// (backend name) per key, asked through fulcrum with the key in X-Key.
async fn owners(f: &Fulcrum, keys: usize) -> BTreeMap<usize, String> {
    let cl = client();
    let mut out = BTreeMap::new();
    for k in 0..keys {
        let r = cl
            .get(f.url("/"))
            .header("x-key", format!("user-{k}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        out.insert(k, backend_of(&r));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_share_of_keys_it_says_move_is_the_share_that_moves() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
        Backend::start("d").await,
        Backend::start("e").await,
    ];
    let pool = |n: usize| {
        let list: Vec<String> = backends[..n]
            .iter()
            .map(|b| format!("      - {{address: \"{}\", name: {}}}\n", b.addr, b.name))
            .collect();
        format!("routes:\n  - match: {{path_prefix: /}}\n    pool: ring\npools:\n  ring:\n    algorithm: consistent_hash\n    hash_key: {{header: X-Key}}\n    backends:\n{}", list.concat())
    };
    let mut f = Fulcrum::start(&pool(4)).await;
    let old_file = f.dir.path().join("old.yaml");
    std::fs::copy(f.conf_path(), &old_file).unwrap();
    const N: usize = 800;
    let before = owners(&f, N).await;

    f.rewrite(&pool(5));
    let out = Command::new(BIN)
        .arg("-c")
        .arg(f.conf_path())
        .arg("-t")
        .arg("--diff")
        .arg(&old_file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    let said: f64 = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("pool ring: ")?
                .strip_suffix("% of hash keys move to another backend")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no share in:\n{text}"));

    f.signal("HUP");
    let cl = client();
    wait_for_async(Duration::from_secs(5), "the reload to reach e", || {
        let cl = cl.clone();
        let url = f.url("/");
        async move {
            for k in 0..50 {
                let r = cl
                    .get(&url)
                    .header("x-key", format!("probe-{k}"))
                    .send()
                    .await;
                if r.is_ok_and(|r| backend_of(&r) == "e") {
                    return true;
                }
            }
            false
        }
    })
    .await;
    let after = owners(&f, N).await;
    let moved = (0..N).filter(|k| before[k] != after[k]).count() as f64 / N as f64 * 100.0;
    eprintln!("diff said {said:.1}% of keys move; {moved:.1}% of {N} keys moved");
    // 800 keys: the measured share's standard error is about 1.4 points.
    assert!((10.0..30.0).contains(&said), "said {said}");
    assert!((moved - said).abs() < 6.0, "said {said}, moved {moved}");
    // Keys move only to the new backend.
    for k in 0..N {
        if before[&k] != after[&k] {
            assert_eq!(
                after[&k], "e",
                "key {k} moved {} -> {}",
                before[&k], after[&k]
            );
        }
    }
    drop(f.child.kill());
}
