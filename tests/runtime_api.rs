//! The runtime API and `fulcrum ctl`: drain, enable, disable and weight, end to end on the real
//! binary, with the shares, pins and reload rule they promise; the token; `--diff running`.

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
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "test-token-0123456789abcdef";

/// The `admin:` block with the token in a file next to the configuration.
fn admin_yaml(admin: &Admin, dir: &std::path::Path) -> String {
    let file = dir.join("admin.token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    format!(
        "admin: {{listen: 127.0.0.1:{}, token_file: \"{}\"}}\n",
        admin.port,
        file.display()
    )
}

fn pool_yaml(backends: &[(&Backend, u32)], extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|(b, w)| format!("{{address: \"{}\", name: {}, weight: {w}}}", b.addr, b.name))
        .collect();
    format!(
        "routes: [{{pool: web}}]\npools:\n  web:\n    backends: [{}]\n{extra}",
        list.join(", ")
    )
}

/// `fulcrum -c CONF ctl ARGS...`: (exit code, stdout, stderr).
fn ctl(f: &Fulcrum, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("-c")
        .arg(f.conf_path())
        .arg("ctl")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Which backend served each of `n` requests without a cookie.
async fn spread(f: &Fulcrum, n: usize) -> BTreeMap<String, usize> {
    let cl = client();
    let mut names = Vec::new();
    for _ in 0..n {
        let r = cl.get(f.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        names.push(backend_of(&r));
    }
    tally(&names)
}

/// GET with the affinity cookie `sid=value`: (backend, the cookie value now).
async fn visit(cl: &reqwest::Client, f: &Fulcrum, value: &str) -> (String, String) {
    let r = cl
        .get(f.url("/"))
        .header("cookie", format!("sid={value}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let now = r
        .headers()
        .get("set-cookie")
        .and_then(|h| h.to_str().ok())
        .and_then(|s| s.split(';').next())
        .and_then(|kv| kv.strip_prefix("sid="))
        .map_or_else(|| value.to_string(), str::to_string);
    (backend_of(&r), now)
}

/// A session cookie pinned to `want` (new sessions until one lands there; bounded).
async fn session_on(cl: &reqwest::Client, f: &Fulcrum, want: &str) -> String {
    for _ in 0..200 {
        let r = cl.get(f.url("/")).send().await.unwrap();
        let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
        if backend_of(&r) == want {
            let kv = cookie.split(';').next().unwrap();
            return kv.strip_prefix("sid=").unwrap().to_string();
        }
    }
    panic!("no session landed on {want} in 200 tries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_needs_its_token_and_serves_the_running_configuration() {
    let a = Backend::start("a").await;
    let admin = Admin::new();
    // Without a token the API is closed.
    let f = Fulcrum::start(&format!("{}{}", admin.yaml(), pool_yaml(&[(&a, 1)], ""))).await;
    let url = format!(
        "http://127.0.0.1:{}/api/v1/pools/web/backends/a/drain",
        admin.port
    );
    let cl = client();
    let r = cl.post(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let (code, _, err) = ctl(&f, &["drain", "web", "a"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("403"), "{err}");
    drop(f);

    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}{}",
        admin_yaml(&admin, dir.path()),
        pool_yaml(&[(&a, 1)], "")
    );
    let f = Fulcrum::start(&body).await;
    // The same admin port as the process just stopped: wait until the new one listens on it.
    let healthz = format!("http://127.0.0.1:{}/healthz", admin.port);
    wait_for_async(Duration::from_secs(5), "the admin listener", || async {
        cl.get(&healthz).send().await.is_ok()
    })
    .await;
    for auth in [None, Some("wrong-token-0123456789abcdef")] {
        let mut req = cl.post(&url);
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"fulcrum\"");
    }
    assert_eq!(
        admin.backend("web", "a").await["state"],
        "ready",
        "nothing changed"
    );
    // Unknown pool or backend: 404; wrong method: 405; bad weight: 400.
    let api = |p: &str| format!("http://127.0.0.1:{}/api/v1/{p}", admin.port);
    let status = |r: reqwest::Response| r.status().as_u16();
    for (method, path, want) in [
        (reqwest::Method::POST, "pools/nope/backends/a/drain", 404),
        (reqwest::Method::POST, "pools/web/backends/zz/drain", 404),
        (reqwest::Method::GET, "pools/web/backends/a/drain", 405),
    ] {
        let r = cl
            .request(method.clone(), api(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(status(r), want, "{method} {path}");
    }
    for bad in [
        "{\"weight\": 0}",
        "{\"weight\": 257}",
        "{\"weight\": \"3\"}",
        "nope",
    ] {
        let r = cl
            .put(api("pools/web/backends/a/weight"))
            .bearer_auth(TOKEN)
            .body(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(status(r), 400, "{bad}");
    }
    // The running configuration, as the file's text.
    let r = cl
        .get(api("config"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-fulcrum-config-path"].to_str().unwrap(),
        f.conf_path().display().to_string()
    );
    assert_eq!(
        r.text().await.unwrap(),
        std::fs::read_to_string(f.conf_path()).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_keeps_pinned_sessions_until_drain_timeout_and_disable_moves_them_at_once() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let admin = Admin::new();
    let dir = tempfile::tempdir().unwrap();
    let affinity = "    drain_timeout: 1500ms\n    affinity: {cookie: sid}\n";
    let f = Fulcrum::start(&format!(
        "{}{}",
        admin_yaml(&admin, dir.path()),
        pool_yaml(&[(&a, 1), (&b, 1), (&c, 1)], affinity)
    ))
    .await;
    let cl = client();
    let pinned = session_on(&cl, &f, "b").await;

    let (code, out, err) = ctl(&f, &["drain", "web", "b"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"state\": \"draining\""), "{out}");
    let drained_at = Instant::now();
    let b_status = admin.backend("web", "b").await;
    assert_eq!(b_status["state"], "draining");
    assert_eq!(b_status["reason"], "drained through the runtime API");
    // New sessions never land on b; the pinned one stays there.
    let shares = spread(&f, 60).await;
    assert_eq!(shares.get("b"), None, "{shares:?}");
    assert!(shares["a"] >= 20 && shares["c"] >= 20, "{shares:?}");
    for _ in 0..5 {
        assert_eq!(visit(&cl, &f, &pinned).await.0, "b");
    }
    assert!(
        drained_at.elapsed() < Duration::from_millis(1500),
        "too slow to tell"
    );
    // After drain_timeout the session re-pins, to a or c, and stays there.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (moved_to, repinned) = loop {
        let (backend, now) = visit(&cl, &f, &pinned).await;
        if backend != "b" {
            break (backend, now);
        }
        assert!(Instant::now() < deadline, "the drained session never moved");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(drained_at.elapsed() >= Duration::from_millis(1500));
    assert!(moved_to == "a" || moved_to == "c");
    assert_eq!(visit(&cl, &f, &repinned).await.0, moved_to);
    assert_eq!(
        admin
            .metric("fulcrum_runtime_changes_total", &[("action", "drain")])
            .await,
        1.0
    );

    // Enable: b takes new sessions again.
    assert_eq!(ctl(&f, &["enable", "web", "b"]).0, 0);
    assert_eq!(admin.backend("web", "b").await["state"], "ready");
    let back = session_on(&cl, &f, "b").await;
    // Disable: the pinned session moves at once, and nothing goes to b.
    assert_eq!(ctl(&f, &["disable", "web", "b"]).0, 0);
    assert_eq!(admin.backend("web", "b").await["state"], "disabled");
    assert_ne!(visit(&cl, &f, &back).await.0, "b");
    let shares = spread(&f, 30).await;
    assert_eq!(shares.get("b"), None, "{shares:?}");
    assert!(
        f.log()
            .contains("runtime API: pool web backend b: disabled"),
        "{}",
        f.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_set_at_runtime_holds_across_a_reload_until_the_config_changes_it() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let admin = Admin::new();
    let dir = tempfile::tempdir().unwrap();
    let admin_block = admin_yaml(&admin, dir.path());
    let f = Fulcrum::start(&format!(
        "{admin_block}{}",
        pool_yaml(&[(&a, 1), (&b, 1)], "")
    ))
    .await;
    let (code, out, err) = ctl(&f, &["weight", "web", "a", "3"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"weight\": 3"), "{out}");
    // Smooth round robin: exactly 3 of every 4.
    let shares = spread(&f, 80).await;
    assert_eq!((shares["a"], shares["b"]), (60, 20), "{shares:?}");
    assert_eq!(
        admin
            .metric("fulcrum_runtime_changes_total", &[("action", "weight")])
            .await,
        1.0
    );

    // A reload that leaves a's configuration alone keeps the operator's weight (and a drain).
    assert_eq!(ctl(&f, &["drain", "web", "b"]).0, 0);
    f.rewrite(&format!(
        "{admin_block}# touched\n{}",
        pool_yaml(&[(&a, 1), (&b, 1)], "")
    ));
    f.signal("HUP");
    wait_for(Duration::from_secs(5), "the reload", || {
        f.log().contains("reload: applied")
    })
    .await;
    assert_eq!(admin.backend("web", "a").await["weight"], 3);
    assert_eq!(admin.backend("web", "b").await["state"], "draining");
    assert_eq!(ctl(&f, &["enable", "web", "b"]).0, 0);
    let shares = spread(&f, 40).await;
    assert_eq!((shares["a"], shares["b"]), (30, 10), "{shares:?}");

    // A reload that changes a's weight: the configuration wins.
    f.rewrite(&format!(
        "{admin_block}{}",
        pool_yaml(&[(&a, 2), (&b, 1)], "")
    ));
    f.signal("HUP");
    wait_for_async(Duration::from_secs(5), "the second reload", || async {
        admin.backend("web", "a").await["weight"] == 2
    })
    .await;
    assert_eq!(
        admin.backend("web", "a").await["operator_weight"],
        serde_json::Value::Null
    );
    let shares = spread(&f, 60).await;
    assert_eq!((shares["a"], shares["b"]), (40, 20), "{shares:?}");
    // `config` returns to the configured weight.
    assert_eq!(ctl(&f, &["weight", "web", "b", "2"]).0, 0);
    assert_eq!(ctl(&f, &["weight", "web", "b", "config"]).0, 0);
    assert_eq!(admin.backend("web", "b").await["weight"], 1);
    let (code, _, err) = ctl(&f, &["weight", "web", "b", "0"]);
    assert_eq!(code, 2, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_running_compares_with_what_the_process_serves() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let admin = Admin::new();
    let dir = tempfile::tempdir().unwrap();
    let admin_block = admin_yaml(&admin, dir.path());
    let f = Fulcrum::start(&format!("{admin_block}{}", pool_yaml(&[(&a, 1)], ""))).await;
    // The new file: b added. It names the same admin listener and token.
    let new = dir.path().join("new.yaml");
    std::fs::write(
        &new,
        std::fs::read_to_string(f.conf_path())
            .unwrap()
            .replace(
                &format!("backends: [{{address: \"{}\", name: a, weight: 1}}]", a.addr),
                &format!(
                    "backends: [{{address: \"{}\", name: a, weight: 1}}, {{address: \"{}\", name: b, weight: 1}}]",
                    a.addr, b.addr
                ),
            ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("-c")
        .arg(&new)
        .args(["-t", "--diff", "running"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!(
            "changes from the running process ({}):",
            f.conf_path().display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("pool web: backend b added ({}, weight 1)", b.addr)),
        "{text}"
    );
}
