//! Routing by host and path, 404 when nothing matches, and the headers a backend sees.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

mod common;

use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_path_first_match_wins() {
    let api = Backend::start("api").await;
    let wild = Backend::start("wild").await;
    let stat = Backend::start("static").await;
    let yaml = format!(
        "routes:
  - match: {{host: api.example.com, path_prefix: /v1/}}
    pool: api
  - match: {{host: \"*.example.com\"}}
    pool: wild
  - match: {{path_prefix: /static/}}
    pool: stat
pools:
  api: {{backends: [{{address: \"{}\"}}]}}
  wild: {{backends: [{{address: \"{}\"}}]}}
  stat: {{backends: [{{address: \"{}\"}}]}}
",
        api.addr, wild.addr, stat.addr
    );
    let f = Fulcrum::start(&yaml).await;
    let c = client();
    let cases = [
        ("api.example.com", "/v1/users", 200, "api"),
        ("API.example.com:8080", "/v1/x", 200, "api"),
        ("api.example.com", "/v2/users", 200, "wild"),
        ("a.b.example.com", "/", 200, "wild"),
        ("other.test", "/static/app.js", 200, "static"),
        ("api.example.com", "/static/app.js", 200, "wild"),
        ("other.test", "/", 404, ""),
        ("example.com", "/", 404, ""),
    ];
    for (host, path, status, backend) in cases {
        let resp = c
            .get(f.url(path))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{host}{path}");
        let got = resp
            .headers()
            .get("x-backend")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        assert_eq!(got, backend, "{host}{path}");
        if status == 404 {
            assert!(resp.headers().contains_key("x-request-id"));
            let body = resp.text().await.unwrap();
            assert!(body.starts_with("404 Not Found"), "{body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_sees_forwarding_headers() {
    let b = Backend::start("b").await;
    let f = Fulcrum::start(&format!(
        "routes: [{{pool: p}}]\npools:\n  p: {{backends: [{{address: \"{}\"}}]}}\n",
        b.addr
    ))
    .await;
    let c = client();

    let resp = c
        .get(f.url("/x"))
        .header("host", "shop.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = b.last_headers();
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.test");
    assert_eq!(h["host"], "shop.test", "Host is passed through");
    let id = &h["x-request-id"];
    assert_eq!(id.len(), 32, "generated request id: {id}");
    assert!(id.bytes().all(|c| c.is_ascii_hexdigit()));

    let resp = c
        .get(f.url("/x"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = b.last_headers();
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1", "appended");
    assert_eq!(h["x-request-id"], "req-123", "kept");
}

/// fulcrum on a listener with `keepalive_timeout: 1s`, and a raw client connection to it.
async fn keepalive_rig() -> (Backend, Fulcrum, tokio::net::TcpStream) {
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let yaml = format!(
        "{}listeners:\n  - {{name: main, listen: 127.0.0.1:{port}, keepalive_timeout: 1s}}\nroutes: [{{pool: p}}]\npools:\n  p: {{backends: [{{address: \"{}\"}}]}}\n",
        Fulcrum::server_block(dir.path()),
        b.addr
    );
    let f = Fulcrum::start_yaml(dir, port, &yaml).await;
    let c = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    (b, f, c)
}

/// Send a GET in `pieces` on a raw connection; the response's head.
async fn raw_get(c: &mut tokio::net::TcpStream, pieces: &[&[u8]], pause: Duration) -> String {
    write_in_pieces(c, pieces, pause).await;
    read_response(c).await
}

/// Wait for the server to close `c`; how long that took.
async fn time_to_close(c: &mut tokio::net::TcpStream) -> Duration {
    use tokio::io::AsyncReadExt;
    let idle = std::time::Instant::now();
    let mut buf = vec![0u8; 64];
    let eof = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await;
    assert!(matches!(eof, Ok(Ok(0))), "{eof:?}");
    idle.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_connections_are_closed_after_the_keepalive_timeout() {
    let (_b, _f, mut c) = keepalive_rig().await;
    let head = raw_get(
        &mut c,
        &[b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"],
        Duration::ZERO,
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let after = time_to_close(&mut c).await;
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(3),
        "{after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_sends_a_request_is_closed_after_the_keepalive_timeout() {
    let (_b, _f, mut c) = keepalive_rig().await;
    let after = time_to_close(&mut c).await;
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(3),
        "{after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_serve_requests_that_arrive_late_and_in_pieces() {
    let (b, _f, mut c) = keepalive_rig().await;
    let pause = Duration::from_millis(300);
    // The first request arrives in three pieces on a connection idle since it opened.
    let pieces: [&[u8]; 3] = [b"GET /one HT", b"TP/1.1\r\nhost: x\r\n", b"\r\n"];
    let head = raw_get(&mut c, &pieces, pause).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The same connection, idle again, then a second request in pieces: still served.
    tokio::time::sleep(pause).await;
    let pieces: [&[u8]; 2] = [b"GET /two HTTP/1.1\r\n", b"host: x\r\n\r\n"];
    let head = raw_get(&mut c, &pieces, pause).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(b.hits(), 2);
}
