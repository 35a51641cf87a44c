//! `X-Fulcrum-Debug`: trusted clients of a listener with `debug_header: true` learn the route,
//! pool, algorithm, attempts and the backends passed over; nobody else does.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::time::Duration;

use common::*;

fn yaml(port: u16, debug: &str, ok: &Backend, sick: &Backend, dir: &std::path::Path) -> String {
    format!(
        "{}listeners:\n  - name: main\n    listen: 127.0.0.1:{port}\n{debug}access_log: {{path: {}/access.log}}\nroutes:\n  - match: {{path_prefix: /api/}}\n    pool: web\npools:\n  web:\n    health_check: {{http: {{path: /healthz}}, interval: 100ms, timeout: 100ms, healthy_threshold: 1, unhealthy_threshold: 1}}\n    backends: [{{address: \"{}\", name: ok}}, {{address: \"{}\", name: sick}}]\n",
        Fulcrum::server_block(dir),
        dir.display(),
        ok.addr,
        sick.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_clients_learn_why_and_others_learn_nothing() {
    let ok = Backend::start("ok").await;
    let sick = Backend::start("sick").await;
    sick.set_health(503);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let body = yaml(port, "    debug_header: true\n", &ok, &sick, dir.path());
    let path = dir.path().to_path_buf();
    let f = Fulcrum::start_yaml(dir, port, &body).await;
    let cl = client();
    wait_for_async(Duration::from_secs(5), "sick out of rotation", || async {
        let r = cl.get(f.url("/api/x")).send().await.unwrap();
        r.headers()
            .get("x-fulcrum-debug")
            .is_some_and(|v| v.to_str().unwrap().contains("passed_over=sick("))
    })
    .await;
    let r = cl.get(f.url("/api/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let debug = r.headers()["x-fulcrum-debug"].to_str().unwrap().to_string();
    assert_eq!(
        debug,
        "route=0 (path /api/); pool=web; algorithm=round_robin; attempts=1; backend=ok; passed_over=sick(checking)"
    );
    wait_for(Duration::from_secs(5), "the access log line", || {
        std::fs::read_to_string(path.join("access.log"))
            .unwrap_or_default()
            .contains(&format!("\"debug\":\"{debug}\""))
    })
    .await;
    drop(f);

    // A trusted list that leaves loopback out: no header, no log field.
    let ok2 = Backend::start("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let body = yaml(
        port,
        "    debug_header: true\n    debug_trusted: [10.0.0.0/8, \"2001:db8::/32\"]\n",
        &ok2,
        &sick,
        dir.path(),
    );
    let f = Fulcrum::start_yaml(dir, port, &body).await;
    let r = cl.get(f.url("/api/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-fulcrum-debug").is_none());
    drop(f);

    // Off by default.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let body = yaml(port, "", &ok2, &sick, dir.path());
    let f = Fulcrum::start_yaml(dir, port, &body).await;
    let r = cl.get(f.url("/api/x")).send().await.unwrap();
    assert!(r.headers().get("x-fulcrum-debug").is_none());
    drop(f);
}
