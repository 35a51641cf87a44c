//! TLS termination with SNI, h2, redirects, WebSocket, gRPC-style h2c with trailers, upstream
//! TLS verification, and certificate problems caught by `-t`. Certificates are made by the
//! tests (rcgen), never committed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use common::*;

/// A config with a TLS listener (first) and a plain one; `tls_block` is the listener's `tls:`.
async fn start_tls(tls_block: &str, extra_listeners: &str, body: &str) -> (Fulcrum, u16) {
    let dir = tempfile::tempdir().unwrap();
    let tls_port = free_port();
    let plain_port = free_port();
    let yaml = format!(
        "{}listeners:\n  - name: plain\n    listen: 127.0.0.1:{plain_port}\n  - name: tls\n    listen: 127.0.0.1:{tls_port}\n    tls: {tls_block}\n{extra_listeners}{body}",
        Fulcrum::server_block(dir.path())
    );
    (Fulcrum::start_yaml(dir, plain_port, &yaml).await, tls_port)
}

fn certs_yaml(leaves: &[&Leaf]) -> String {
    let pairs: Vec<String> = leaves
        .iter()
        .map(|l| {
            format!(
                "{{cert: \"{}\", key: \"{}\"}}",
                l.cert.display(),
                l.key.display()
            )
        })
        .collect();
    format!("{{certificates: [{}]}}", pairs.join(", "))
}

fn one_pool(b: &Backend) -> String {
    format!(
        "routes: [{{pool: p}}]\npools:\n  p: {{backends: [{{address: \"{}\"}}]}}\n",
        b.addr
    )
}

fn peer_der(resp: &reqwest::Response) -> Vec<u8> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("peer certificate")
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_each_sites_certificate_and_a_default_without_sni() {
    let pki = TestPki::new();
    let default = pki.leaf("default", &["default.test"], false);
    let a = pki.leaf("a", &["a.test"], false);
    let b = pki.leaf("b", &["*.b.test"], false);
    let backend = Backend::start("app").await;
    let (f, port) = start_tls(&certs_yaml(&[&default, &a, &b]), "", &one_pool(&backend)).await;

    let c = pki.https_client(&["a.test", "x.b.test", "default.test"], port);
    for (host, want) in [("a.test", &a), ("x.b.test", &b), ("default.test", &default)] {
        let resp = c
            .get(format!("https://{host}:{port}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{host}");
        assert_eq!(peer_der(&resp), want.der, "{host} got another certificate");
    }
    // No SNI (an IP address): the default certificate.
    let no_sni = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .tls_info(true)
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let resp = no_sni
        .get(format!("https://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(peer_der(&resp), default.der);
    // The backend is told the client came over TLS.
    assert_eq!(backend.last_headers()["x-forwarded-proto"], "https");
    drop(f);
}

fn curl(args: &[&str]) -> String {
    let out = std::process::Command::new("curl")
        .args(args)
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_negotiates_h2_and_http1_over_tls_and_plain_redirects() {
    let pki = TestPki::new();
    let site = pki.leaf("site", &["site.test"], false);
    let backend = Backend::start("app").await;
    let redirect_port = free_port();
    let redirect = format!(
        "  - name: redirect\n    listen: 127.0.0.1:{redirect_port}\n    redirect_https: true\n"
    );
    let (_f, port) = start_tls(&certs_yaml(&[&site]), &redirect, &one_pool(&backend)).await;
    let ca = pki.ca_path();
    let resolve = format!("site.test:{port}:127.0.0.1");
    let url = format!("https://site.test:{port}/hello");
    let common = [
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve,
    ];
    let mut h2 = common.to_vec();
    h2.extend(["--http2", &url]);
    assert_eq!(curl(&h2), "2 200");
    let mut h1 = common.to_vec();
    h1.extend(["--http1.1", &url]);
    assert_eq!(curl(&h1), "1.1 200");

    // Stop at the 308 to inspect it.
    let no_follow = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_follow
        .get(format!("http://127.0.0.1:{redirect_port}/a/b?c=1"))
        .header("host", "site.test:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!("https://site.test:{port}/a/b?c=1")
    );
}

/// A WebSocket echo backend (tokio-tungstenite).
async fn ws_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() || m.is_binary() {
                        if ws.send(m).await.is_err() {
                            return;
                        }
                    } else if m.is_close() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

use std::net::SocketAddr;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echoes_through_plain_and_tls_listeners() {
    let pki = TestPki::new();
    let site = pki.leaf("site", &["ws.test"], false);
    let echo = ws_echo().await;
    let body =
        format!("routes: [{{pool: ws}}]\npools:\n  ws: {{backends: [{{address: \"{echo}\"}}]}}\n");
    let (f, port) = start_tls(&certs_yaml(&[&site]), "", &body).await;

    let (mut ws, resp) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/chat", f.port))
            .await
            .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..20 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("hello {i}"))
        );
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2, 255])
    );
    ws.close(None).await.unwrap();

    // wss:// through the TLS listener.
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let connector = tokio_tungstenite::Connector::Rustls(pki.client_config(&[b"http/1.1"]));
    let (mut wss, resp) = tokio_tungstenite::client_async_tls_with_config(
        format!("wss://ws.test:{port}/chat"),
        tcp,
        None,
        Some(connector),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 101);
    wss.send(Message::text("over tls")).await.unwrap();
    assert_eq!(
        wss.next().await.unwrap().unwrap(),
        Message::text("over tls")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_passes_no_bytes_to_the_backend() {
    // A backend that refuses every upgrade and records everything it receives until EOF.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let received = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let r = received.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let r = r.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut answered = false;
                loop {
                    let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
                    let Ok(Ok(n)) = read else { return };
                    if n == 0 {
                        return;
                    }
                    r.lock().unwrap().extend_from_slice(&buf[..n]);
                    if !answered && r.lock().unwrap().windows(4).any(|w| w == b"\r\n\r\n") {
                        answered = true;
                        let _ = s
                            .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 6\r\nconnection: close\r\n\r\nno ws\n")
                            .await;
                        let _ = s.shutdown().await;
                    }
                }
            });
        }
    });
    let f = Fulcrum::start(&format!(
        "routes: [{{pool: p}}]\npools:\n  p: {{backends: [{{address: \"{addr}\"}}]}}\n"
    ))
    .await;
    let mut c = TcpStream::connect(("127.0.0.1", f.port)).await.unwrap();
    // The upgrade request, immediately followed by what would be a WebSocket frame.
    c.write_all(
        b"GET /chat HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nSMUGGLED-FRAME-BYTES",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let seen = wait_for(Duration::from_secs(5), "backend saw the request", || {
        !received.lock().unwrap().is_empty()
    });
    seen.await;
    let got = String::from_utf8_lossy(&received.lock().unwrap()).to_string();
    assert!(got.starts_with("GET /chat"), "{got}");
    assert!(
        !got.contains("SMUGGLED"),
        "bytes after a refused upgrade reached the backend:\n{got}"
    );
}

/// A gRPC-style h2c backend: echoes the request body and ends with trailers.
async fn h2c_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let is_grpc = req
                            .headers()
                            .get("content-type")
                            .is_some_and(|v| v == "application/grpc");
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert(
                            "grpc-status",
                            if is_grpc { "0" } else { "3" }.parse().unwrap(),
                        );
                        trailers.insert("grpc-message", "echoed".parse().unwrap());
                        let frames = vec![
                            Ok::<_, Infallible>(Frame::data(body)),
                            Ok(Frame::trailers(trailers)),
                        ];
                        let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "application/grpc")
                                .body(body)
                                .unwrap(),
                        )
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_style_call_keeps_its_trailers_from_tls_h2_to_h2c() {
    let pki = TestPki::new();
    let site = pki.leaf("site", &["grpc.test"], false);
    let backend = h2c_backend().await;
    let body = format!(
        "routes: [{{pool: grpc}}]\npools:\n  grpc:\n    protocol: h2c\n    backends: [{{address: \"{backend}\"}}]\n"
    );
    let (_f, port) = start_tls(&certs_yaml(&[&site]), "", &body).await;

    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(pki.client_config(&[b"h2"]))
        .connect("grpc.test".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    for i in 0..3u8 {
        let payload = Bytes::from(vec![0, 0, 0, 0, 3, b'a', b'b', i]);
        let req = Request::post(format!("https://grpc.test:{port}/pkg.Echo/Say"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(payload.clone()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected
            .trailers()
            .cloned()
            .expect("trailers reached the client");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["grpc-message"], "echoed");
        assert_eq!(collected.to_bytes(), payload);
    }
}

/// An HTTPS backend presenting `leaf`.
async fn https_backend(leaf: &Leaf) -> SocketAddr {
    let certs: Vec<_> = rustls_pemfile::certs(&mut std::fs::read(&leaf.cert).unwrap().as_slice())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut std::fs::read(&leaf.key).unwrap().as_slice())
        .unwrap()
        .unwrap();
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let svc =
                    hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                            b"secure backend",
                        ))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_is_verified_against_the_pools_ca() {
    let pki = TestPki::new();
    let leaf = pki.leaf("backend", &["backend.test"], false);
    let backend = https_backend(&leaf).await;
    let other = TestPki::new();
    let pool = |ca: &std::path::Path| {
        format!(
            "routes: [{{pool: p}}]\npools:\n  p:\n    tls: {{sni: backend.test, verify: true, ca_file: \"{}\"}}\n    backends: [{{address: \"{backend}\"}}]\n",
            ca.display()
        )
    };
    let f = Fulcrum::start(&pool(&pki.ca_path())).await;
    let resp = client().get(f.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "secure backend");
    drop(f);

    let f = Fulcrum::start(&pool(&other.ca_path())).await;
    let resp = client().get(f.url("/")).send().await.unwrap();
    assert_eq!(
        resp.status(),
        502,
        "a certificate from an untrusted CA is refused"
    );
}

#[test]
fn bad_certificates_exit_78_naming_the_key_path() {
    let pki = TestPki::new();
    let good = pki.leaf("good", &["good.test"], false);
    let other = pki.leaf("other", &["other.test"], false);
    let expired = pki.leaf("expired", &["old.test"], true);
    let missing = pki.dir.path().join("missing.crt");
    let cases = [
        (
            missing.clone(),
            good.key.clone(),
            "listeners[0].tls.certificates[0].cert",
            "cannot read",
        ),
        (
            good.cert.clone(),
            other.key.clone(),
            "listeners[0].tls.certificates[0].key",
            "does not go with",
        ),
        (
            expired.cert.clone(),
            expired.key.clone(),
            "listeners[0].tls.certificates[0].cert",
            "expired",
        ),
    ];
    for (cert, key, path, message) in cases {
        let conf = pki.dir.path().join("bad.yaml");
        std::fs::write(
            &conf,
            format!(
                "listeners:\n  - name: tls\n    listen: 127.0.0.1:8443\n    tls:\n      certificates:\n        - {{cert: \"{}\", key: \"{}\"}}\nroutes: [{{pool: p}}]\npools:\n  p: {{backends: [{{address: 127.0.0.1:9}}]}}\n",
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
        let out = std::process::Command::new(BIN)
            .arg("-c")
            .arg(&conf)
            .arg("-t")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{stderr}");
        assert!(
            stderr.contains(&format!(":7:13: {path}: ")) || stderr.contains(&format!(": {path}: ")),
            "{path}: {stderr}"
        );
        assert!(stderr.contains(message), "{message}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_affinity_cookie_is_secure_on_a_tls_listener() {
    let pki = TestPki::new();
    let site = pki.leaf("site", &["shop.test"], false);
    let backend = Backend::start("app").await;
    let body = format!(
        "routes: [{{pool: p}}]\npools:\n  p:\n    affinity: {{cookie: sid}}\n    backends: [{{address: \"{}\"}}]\n",
        backend.addr
    );
    let (f, port) = start_tls(&certs_yaml(&[&site]), "", &body).await;
    let c = pki.https_client(&["shop.test"], port);
    let resp = c
        .get(format!("https://shop.test:{port}/"))
        .send()
        .await
        .unwrap();
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.ends_with("; HttpOnly; Secure"), "{cookie}");
    let plain = client().get(f.url("/")).send().await.unwrap();
    let cookie = plain.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(!cookie.contains("Secure"), "{cookie}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_websocket_is_closed_after_the_idle_limit() {
    let echo = ws_echo().await;
    let f = Fulcrum::start(&format!(
        "routes: [{{pool: ws}}]\npools:\n  ws:\n    timeouts: {{idle: 400ms}}\n    backends: [{{address: \"{echo}\"}}]\n"
    ))
    .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/quiet", f.port))
        .await
        .unwrap();
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("one"));
    let quiet = std::time::Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the idle connection was never closed");
    let after = quiet.elapsed();
    assert!(
        after >= Duration::from_millis(350) && after < Duration::from_secs(3),
        "{after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_certificates_in_place() {
    let pki = TestPki::new();
    let first = pki.leaf("site", &["site.test"], false);
    let backend = Backend::start("app").await;
    let (f, port) = start_tls(&certs_yaml(&[&first]), "", &one_pool(&backend)).await;
    let get_der = |port: u16| {
        let c = pki.https_client(&["site.test"], port);
        async move {
            peer_der(
                &c.get(format!("https://site.test:{port}/"))
                    .send()
                    .await
                    .unwrap(),
            )
        }
    };
    assert_eq!(get_der(port).await, first.der);
    // Renew: same files, new certificate.
    let renewed = pki.leaf("site", &["site.test"], false);
    assert_ne!(renewed.der, first.der);
    f.signal("HUP");
    wait_for(Duration::from_secs(5), "reload", || {
        f.log().contains("certificate(s) loaded")
    })
    .await;
    assert_eq!(get_der(port).await, renewed.der);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_listener_carries_grpc_with_trailers_and_still_speaks_http1() {
    let backend = h2c_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let yaml = format!(
        "{}listeners:\n  - {{name: grpc, listen: 127.0.0.1:{port}, h2c: true}}\nroutes: [{{pool: grpc}}]\npools:\n  grpc:\n    protocol: h2c\n    backends: [{{address: \"{backend}\"}}]\n",
        Fulcrum::server_block(dir.path())
    );
    let _f = Fulcrum::start_yaml(dir, port, &yaml).await;
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let payload = Bytes::from_static(b"\0\0\0\0\x02hi");
    let req = Request::post(format!("http://127.0.0.1:{port}/pkg.Echo/Say"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(payload.clone()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(
        collected.trailers().cloned().expect("trailers")["grpc-status"],
        "0"
    );
    assert_eq!(collected.to_bytes(), payload);
    // HTTP/1.1 on the same listener (the h2c backend speaks only h2, so any answer from
    // fulcrum proves the listener parsed HTTP/1.1).
    let r = client()
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
}

#[test]
fn h2c_on_a_tls_listener_is_refused() {
    let pki = TestPki::new();
    let leaf = pki.leaf("x", &["x.test"], false);
    let conf = pki.dir.path().join("h2c.yaml");
    std::fs::write(
        &conf,
        format!(
            "listeners:\n  - name: t\n    listen: 127.0.0.1:8443\n    h2c: true\n    tls: {}\nroutes: [{{pool: p}}]\npools:\n  p: {{backends: [{{address: 127.0.0.1:9}}]}}\n",
            certs_yaml(&[&leaf])
        ),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .arg("-c")
        .arg(&conf)
        .arg("-t")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("listeners[0].h2c: h2c is HTTP/2 without TLS"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_keepalive_connection_serves_requests_that_arrive_late_and_in_pieces() {
    let pki = TestPki::new();
    let site = pki.leaf("site", &["site.test"], false);
    let b = Backend::start("b").await;
    let (_f, port) = start_tls(&certs_yaml(&[&site]), "", &one_pool(&b)).await;
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(pki.client_config(&[b"http/1.1"]))
        .connect("site.test".try_into().unwrap(), tcp)
        .await
        .unwrap();
    // A slow client: the pauses are the stimulus (idle, then a request in two TLS records).
    let pause = Duration::from_millis(300);
    for path in ["/one", "/two", "/three"] {
        tokio::time::sleep(pause).await;
        let request = format!("GET {path} HTTP/1.1\r\nhost: site.test\r\n\r\n");
        let (first, rest) = request.as_bytes().split_at(9);
        write_in_pieces(&mut tls, &[first, rest], pause).await;
        let head = read_response(&mut tls).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
    }
    assert_eq!(b.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routine_client_failures_write_no_error_lines() {
    let pki = TestPki::new();
    let site = pki.leaf("site", &["site.test"], false);
    let b = Backend::start("b").await;
    let (f, tls_port) = start_tls(&certs_yaml(&[&site]), "", &one_pool(&b)).await;
    for _ in 0..50 {
        // A client that leaves in the middle of its request header.
        let mut s = TcpStream::connect(("127.0.0.1", f.port)).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Half")
            .await
            .unwrap();
        drop(s);
        // A TLS client that gives up mid-handshake (a scanner, a client that dislikes the
        // certificate).
        let mut t = TcpStream::connect(("127.0.0.1", tls_port)).await.unwrap();
        t.write_all(b"\x16\x03\x01\x00\x05hello").await.unwrap();
        drop(t);
    }
    // A request after them all is answered: by then the failures above were handled.
    assert_eq!(get(&client(), &f.url("/")).await.0, 200);
    let log = f.log();
    let noisy: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .collect();
    assert!(
        noisy.is_empty(),
        "{} lines:\n{}",
        noisy.len(),
        noisy.join("\n")
    );
}

/// TLS 1.2 offers forward-secret AEAD suites only (rustls has no other): a client that offers
/// only CBC, RSA key exchange or 3DES suites is refused, and one that offers the strong ones
/// gets one of them. Which of those is used follows the client's order: Pingora 0.9.1's
/// `TlsSettings` cannot set rustls's `ignore_client_order` (see README, "TLS").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_offers_only_forward_secret_aead_suites() {
    let pki = TestPki::new();
    let site = pki.leaf("site", &["site.test"], false);
    let backend = Backend::start("app").await;
    let (_f, port) = start_tls(&certs_yaml(&[&site]), "", &one_pool(&backend)).await;
    let ca = pki.ca_path();
    let resolve = format!("site.test:{port}:127.0.0.1");
    let url = format!("https://site.test:{port}/");
    let handshake = |ciphers: &str| {
        std::process::Command::new("curl")
            .args(["-sv", "-o", "/dev/null", "--tlsv1.2", "--tls-max", "1.2"])
            .args(["--ciphers", ciphers, "--cacert", ca.to_str().unwrap()])
            .args(["--resolve", &resolve, &url])
            .output()
            .expect("curl")
    };
    let weak = handshake(
        "AES128-SHA:AES256-SHA:AES128-GCM-SHA256:AES256-GCM-SHA384:DES-CBC3-SHA:\
         ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA",
    );
    assert!(
        !weak.status.success(),
        "a client offering only weak TLS 1.2 suites was served: {}",
        String::from_utf8_lossy(&weak.stderr)
    );
    let strong = [
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES128-GCM-SHA256",
    ];
    let ok = handshake(&format!("AES128-SHA:DES-CBC3-SHA:{}", strong.join(":")));
    let log = String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success(), "{log}");
    let used = log
        .lines()
        .find_map(|l| l.split("SSL connection using TLSv1.2 / ").nth(1))
        .unwrap_or_else(|| panic!("no TLS 1.2 connection line: {log}"));
    let suite = used.split_whitespace().next().unwrap_or("");
    assert!(
        strong.contains(&suite),
        "TLS 1.2 negotiated {suite}, not a forward-secret AEAD suite"
    );
}
