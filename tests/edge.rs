//! Rate limits and authentication per route, against the real binary: budgets hold within
//! 10%, keys have their own budgets, 429 carries Retry-After, basic auth admits and refuses,
//! and a reload re-reads the htpasswd file (a bad one keeps the old configuration).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

mod common;

use common::*;
use std::time::{Duration, Instant};

/// Requests from `client` to `url` (with `headers`) for `length`, one after another: the
/// number of 200s and 429s, and the time from the first request to the last answer.
async fn hammer(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
    length: Duration,
) -> (usize, usize, Duration) {
    let (mut ok, mut limited) = (0, 0);
    let start = Instant::now();
    while start.elapsed() < length {
        let mut req = client.get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        match resp.status().as_u16() {
            200 => ok += 1,
            429 => {
                let retry = resp.headers().get("retry-after").expect("Retry-After");
                assert_eq!(retry, "1", "20/s: the next request is due within a second");
                limited += 1
            }
            other => panic!("unexpected status {other}"),
        }
    }
    (ok, limited, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_within_ten_percent_per_client_ip() {
    let b = Backend::start("b").await;
    let admin = Admin::new();
    let f = Fulcrum::start(&format!(
        "{}routes:
  - match: {{path_prefix: /api/}}
    name: api
    pool: p
    rate_limit: {{rate: 20/s, burst: 5, key: client_ip}}
  - pool: p
pools:
  p: {{backends: [{{address: \"{}\"}}]}}
",
        admin.yaml(),
        b.addr
    ))
    .await;
    let one = client_from("127.0.0.1".parse().unwrap());
    let (ok, limited, took) = hammer(&one, &f.url("/api/x"), &[], Duration::from_secs(2)).await;
    // GCRA: burst + 1 at once, then one every 50 ms.
    let expected = 6.0 + 20.0 * took.as_secs_f64();
    let ok_f = ok as f64;
    eprintln!(
        "rate 20/s burst 5: {ok} admitted, {limited} refused in {took:?} (expected {expected:.1})"
    );
    assert!(
        (expected * 0.9..=expected * 1.1).contains(&ok_f),
        "{ok} admitted in {took:?}, expected about {expected:.0} ({limited} refused)"
    );
    assert!(
        limited > ok,
        "a tight loop is mostly refused: {ok} ok, {limited} 429"
    );
    // Another client address has its own budget: burst + 1 at once.
    let two = client_from("127.0.0.2".parse().unwrap());
    let mut second = 0;
    for _ in 0..6 {
        if two.get(f.url("/api/x")).send().await.unwrap().status() == 200 {
            second += 1;
        }
    }
    assert!(second >= 6, "a fresh client got {second} of 6");
    // Routes without a limit are not limited.
    for _ in 0..50 {
        assert_eq!(one.get(f.url("/other")).send().await.unwrap().status(), 200);
    }
    let counted = admin
        .metric("fulcrum_rate_limited_total", &[("route", "api")])
        .await;
    assert_eq!(counted as usize, limited);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_keys_have_separate_budgets_retry_after_says_when_and_reloads_keep_buckets() {
    let b = Backend::start("b").await;
    let admin = Admin::new();
    let body = |rate: &str, burst: u32| {
        format!(
            "{}routes:
  - pool: p
    rate_limit: {{rate: {rate}, burst: {burst}, key: {{header: X-Api-Key}}}}
pools:
  p: {{backends: [{{address: \"{}\"}}]}}
",
            admin.yaml(),
            b.addr
        )
    };
    let f = Fulcrum::start(&body("1/m", 2)).await;
    let c = client();
    let status = |key: Option<&'static str>| {
        let mut req = c.get(f.url("/"));
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        async move { req.send().await.unwrap() }
    };
    for key in [Some("a"), Some("b"), None] {
        for i in 0..3 {
            assert_eq!(status(key).await.status(), 200, "{key:?} request {i}");
        }
        let refused = status(key).await;
        assert_eq!(refused.status(), 429, "{key:?}");
        let retry: u64 = refused.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((55..=60).contains(&retry), "1/m: retry after {retry} s");
        assert!(refused.headers().contains_key("x-request-id"));
    }

    // A reload that leaves the limit as it was keeps its buckets; one that changes it starts
    // afresh.
    let reloads = |n: f64| {
        let admin = &admin;
        async move {
            admin
                .metric("fulcrum_config_reloads_total", &[("result", "success")])
                .await
                >= n
        }
    };
    f.rewrite(&body("1/m", 2));
    f.signal("HUP");
    wait_for_async(Duration::from_secs(10), "the first reload", || reloads(1.0)).await;
    assert_eq!(
        status(Some("a")).await.status(),
        429,
        "same limit: same buckets"
    );
    f.rewrite(&body("1/m", 3));
    f.signal("HUP");
    wait_for_async(Duration::from_secs(10), "the second reload", || {
        reloads(2.0)
    })
    .await;
    assert_eq!(
        status(Some("a")).await.status(),
        200,
        "a new limit: fresh buckets"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_admits_users_of_the_htpasswd_file_and_reloads_it() {
    let b = Backend::start("b").await;
    let admin = Admin::new();
    let body = format!(
        "{}routes:
  - match: {{path_prefix: /private/}}
    name: private
    pool: p
    auth: {{basic: {{htpasswd: users, realm: staff}}}}
  - pool: p
pools:
  p: {{backends: [{{address: \"{}\"}}]}}
",
        admin.yaml(),
        b.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    let write_users = |password: &str| {
        let hash = bcrypt::hash(password, 4).unwrap();
        std::fs::write(&users, format!("# test users\nalice:{hash}\n")).unwrap();
    };
    write_users("first");
    let port = free_port();
    let yaml = format!(
        "{}listeners:\n  - name: main\n    listen: 127.0.0.1:{port}\n{body}",
        Fulcrum::server_block(dir.path())
    );
    let f = Fulcrum::start_yaml(dir, port, &yaml).await;
    let c = client();
    let url = f.url("/private/x");
    let as_user = |user: &'static str, password: &'static str| {
        let req = c.get(&url).basic_auth(user, Some(password));
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let bare = c.get(&url).send().await.unwrap();
    assert_eq!(bare.status(), 401);
    assert_eq!(
        bare.headers()["www-authenticate"],
        "Basic realm=\"staff\", charset=\"UTF-8\""
    );
    assert_eq!(as_user("alice", "wrong").await, 401);
    assert_eq!(as_user("bob", "first").await, 401);
    let hits = b.hits();
    assert_eq!(as_user("alice", "first").await, 200);
    assert_eq!(as_user("alice", "first").await, 200);
    assert_eq!(
        b.hits(),
        hits + 2,
        "only admitted requests reach the backend"
    );
    assert_eq!(c.get(f.url("/public")).send().await.unwrap().status(), 200);
    let auth = |result: &'static str| {
        let admin = &admin;
        async move {
            admin
                .metric(
                    "fulcrum_auth_total",
                    &[("route", "private"), ("result", result)],
                )
                .await as usize
        }
    };
    assert_eq!(
        (
            auth("ok").await,
            auth("missing").await,
            auth("invalid").await
        ),
        (2, 1, 2)
    );

    // A new password file is read by a reload.
    write_users("second");
    f.signal("HUP");
    wait_for_async(
        Duration::from_secs(10),
        "the reload to read the new file",
        || async { as_user("alice", "second").await == 200 },
    )
    .await;
    assert_eq!(as_user("alice", "first").await, 401);

    // A broken one is refused, and the running configuration stays.
    std::fs::write(f.dir.path().join("users"), "alice:plaintext\n").unwrap();
    f.signal("HUP");
    wait_for_async(Duration::from_secs(10), "the failed reload", || async {
        admin
            .metric("fulcrum_config_reloads_total", &[("result", "failure")])
            .await
            >= 1.0
    })
    .await;
    assert_eq!(as_user("alice", "second").await, 200);
    assert!(
        f.log().contains("only bcrypt hashes are supported"),
        "{}",
        f.log()
    );
}

/// Seconds since the epoch.
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_auth_checks_signature_and_claims_and_forwards_claims() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let b = Backend::start("b").await;
    let admin = Admin::new();
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap(); // ECDSA P-256
    std::fs::write(dir.path().join("jwt.pem"), key.public_key_pem()).unwrap();
    let secret = "0123456789abcdef0123456789abcdef-hs256";
    std::fs::write(dir.path().join("hs.secret"), format!("{secret}\n")).unwrap();
    let body = format!(
        "{}routes:
  - match: {{path_prefix: /es/}}
    name: es
    pool: p
    auth: {{jwt: {{key_file: jwt.pem, issuer: https://issuer.test, audience: fulcrum-tests, forward_claims: {{sub: X-Auth-Sub, role: X-Auth-Role}}, strip_token: true}}}}
  - match: {{path_prefix: /hs/}}
    name: hs
    pool: p
    auth: {{jwt: {{secret_file: hs.secret, realm: api}}}}
pools:
  p: {{backends: [{{address: \"{}\"}}]}}
",
        admin.yaml(),
        b.addr
    );
    let port = free_port();
    let yaml = format!(
        "{}listeners:\n  - name: main\n    listen: 127.0.0.1:{port}\n{body}",
        Fulcrum::server_block(dir.path())
    );
    let f = Fulcrum::start_yaml(dir, port, &yaml).await;
    let es = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    let other = rcgen::KeyPair::generate().unwrap();
    let es_other = EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).unwrap();
    let hs = EncodingKey::from_secret(secret.as_bytes());
    let claims = |iss: &str, aud: &str, exp: u64, nbf: u64| serde_json::json!({"sub": "alice", "role": "admin", "iss": iss, "aud": aud, "exp": exp, "nbf": nbf});
    let t = now();
    let good = claims("https://issuer.test", "fulcrum-tests", t + 600, t - 10);
    let sign =
        |alg, key: &EncodingKey, c: &serde_json::Value| encode(&Header::new(alg), c, key).unwrap();
    let c = client();
    let call = |path: &'static str, token: Option<String>| {
        let mut req = c.get(f.url(path)).header("x-auth-sub", "mallory");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.unwrap() }
    };

    let bare = call("/es/x", None).await;
    assert_eq!(bare.status(), 401);
    assert_eq!(
        bare.headers()["www-authenticate"],
        "Bearer realm=\"fulcrum\""
    );

    let ok = call("/es/x", Some(sign(Algorithm::ES256, &es, &good))).await;
    assert_eq!(ok.status(), 200);
    let seen = b.last_headers();
    assert_eq!(
        seen.get("x-auth-sub").map(String::as_str),
        Some("alice"),
        "{seen:?}"
    );
    assert_eq!(seen.get("x-auth-role").map(String::as_str), Some("admin"));
    assert!(!seen.contains_key("authorization"), "strip_token: {seen:?}");

    let refused = [
        (
            "expired",
            sign(
                Algorithm::ES256,
                &es,
                &claims("https://issuer.test", "fulcrum-tests", t - 600, t - 900),
            ),
        ),
        (
            "not yet valid",
            sign(
                Algorithm::ES256,
                &es,
                &claims("https://issuer.test", "fulcrum-tests", t + 900, t + 600),
            ),
        ),
        (
            "wrong issuer",
            sign(
                Algorithm::ES256,
                &es,
                &claims("https://evil.test", "fulcrum-tests", t + 600, t),
            ),
        ),
        (
            "wrong audience",
            sign(
                Algorithm::ES256,
                &es,
                &claims("https://issuer.test", "other", t + 600, t),
            ),
        ),
        ("another key", sign(Algorithm::ES256, &es_other, &good)),
        ("HS256 on an EC route", sign(Algorithm::HS256, &hs, &good)),
        ("garbage", "a.b.c".to_string()),
    ];
    for (what, token) in refused {
        let resp = call("/es/x", Some(token)).await;
        assert_eq!(resp.status(), 401, "{what}");
        assert_eq!(
            resp.headers()["www-authenticate"],
            "Bearer realm=\"fulcrum\", error=\"invalid_token\"",
            "{what}"
        );
    }

    // HS256 with a shared secret; the token is passed on (no strip_token), no claims forwarded
    // and the client's own X-Auth-Sub is left alone on a route that forwards none.
    let no_aud = serde_json::json!({"sub": "bob", "exp": t + 600});
    let hs_token = sign(Algorithm::HS256, &hs, &no_aud);
    assert_eq!(call("/hs/x", Some(hs_token.clone())).await.status(), 200);
    let seen = b.last_headers();
    assert_eq!(
        seen.get("authorization"),
        Some(&format!("Bearer {hs_token}"))
    );
    let no_exp = serde_json::json!({"sub": "bob"});
    let resp = call("/hs/x", Some(sign(Algorithm::HS256, &hs, &no_exp))).await;
    assert_eq!(resp.status(), 401, "exp is required");
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"api\", error=\"invalid_token\""
    );
    let ok = admin
        .metric("fulcrum_auth_total", &[("route", "es"), ("result", "ok")])
        .await;
    let invalid = admin
        .metric(
            "fulcrum_auth_total",
            &[("route", "es"), ("result", "invalid")],
        )
        .await;
    assert_eq!((ok, invalid), (1.0, 7.0));
}

/// A small auth server: `x-token: letmein` gets 200 with `x-auth-user: alice`, `slow` an
/// answer after 3 s, anything else 403 with a body of its own. Records the X-Forwarded-Uri and
/// X-Forwarded-Method it saw.
async fn auth_server() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use http_body_util::Full;
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let log = log.clone();
                    async move {
                        let h = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string()
                        };
                        log.lock().unwrap().push(format!(
                            "{} {} {}",
                            req.uri().path(),
                            h("x-forwarded-method"),
                            h("x-forwarded-uri")
                        ));
                        let resp = match h("x-token").as_str() {
                            "letmein" => hyper::Response::builder()
                                .status(200)
                                .header("x-auth-user", "alice"),
                            "slow" => {
                                tokio::time::sleep(Duration::from_secs(3)).await;
                                hyper::Response::builder().status(200)
                            }
                            _ => hyper::Response::builder()
                                .status(403)
                                .header("x-auth-reason", "nope")
                                .header("content-type", "text/plain"),
                        };
                        Ok::<_, std::convert::Infallible>(
                            resp.body(Full::new(bytes::Bytes::from_static(b"go away\n")))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_admits_on_2xx_and_relays_other_answers() {
    let b = Backend::start("b").await;
    let admin = Admin::new();
    let (auth, seen) = auth_server().await;
    let f = Fulcrum::start(&format!(
        "{}routes:
  - match: {{path_prefix: /down/}}
    name: down
    pool: p
    auth: {{forward: {{url: \"http://{}/check\"}}}}
  - name: app
    pool: p
    auth: {{forward: {{url: \"http://{auth}/check?app=1\", timeout: 300ms, response_headers: [X-Auth-User]}}}}
pools:
  p: {{backends: [{{address: \"{}\"}}]}}
",
        admin.yaml(),
        closed_addr(),
        b.addr
    ))
    .await;
    let c = client();
    let call = |path: &'static str, token: &'static str| {
        let req = c
            .post(f.url(path))
            .header("x-token", token)
            .header("x-auth-user", "mallory")
            .body("payload");
        async move { req.send().await.unwrap() }
    };
    let hits = b.hits();
    let ok = call("/orders?id=7", "letmein").await;
    assert_eq!(ok.status(), 200);
    assert_eq!(
        b.last_headers().get("x-auth-user").map(String::as_str),
        Some("alice"),
        "the auth server's header replaces the client's"
    );
    assert_eq!(
        seen.lock().unwrap().last().unwrap(),
        "/check POST /orders?id=7"
    );

    let denied = call("/orders", "bad").await;
    assert_eq!(denied.status(), 403);
    assert_eq!(denied.headers()["x-auth-reason"], "nope");
    assert_eq!(denied.text().await.unwrap(), "go away\n");

    let started = Instant::now();
    let slow = call("/orders", "slow").await;
    assert_eq!(slow.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(call("/down/x", "letmein").await.status(), 503);
    assert_eq!(
        b.hits(),
        hits + 1,
        "only the admitted request reached the backend"
    );

    let count = |route: &'static str, result: &'static str| {
        let admin = &admin;
        async move {
            admin
                .metric(
                    "fulcrum_auth_total",
                    &[("route", route), ("result", result)],
                )
                .await as usize
        }
    };
    assert_eq!(
        (
            count("app", "ok").await,
            count("app", "denied").await,
            count("app", "error").await
        ),
        (1, 1, 1)
    );
    assert_eq!(count("down", "error").await, 1);
}

/// A redis-server of its own on an ephemeral 127.0.0.1 port (killed on drop).
struct Redis {
    child: std::process::Child,
    port: u16,
}

impl Redis {
    async fn start(port: u16) -> Redis {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (make test-tools installs it)");
        wait_for_async(
            Duration::from_secs(10),
            "redis-server to listen",
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
        Redis { child, port }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_a_fleet_wide_budget_and_fail_open_without_redis() {
    let mut redis = Redis::start(free_port()).await;
    let b = Backend::start("b").await;
    let admin_one = Admin::new();
    let admin_two = Admin::new();
    let body = |admin: &Admin| {
        format!(
            "{}routes:
  - name: api
    pool: p
    rate_limit: {{rate: 20/s, burst: 5, key: client_ip, redis: {{url: \"redis://127.0.0.1:{}\", timeout: 500ms}}}}
pools:
  p: {{backends: [{{address: \"{}\"}}]}}
",
            admin.yaml(),
            redis.port,
            b.addr
        )
    };
    let one = Fulcrum::start(&body(&admin_one)).await;
    let two = Fulcrum::start(&body(&admin_two)).await;
    let c = client();
    let (mut ok, mut limited) = (0usize, 0usize);
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        let f = if i.is_multiple_of(2) { &one } else { &two };
        i += 1;
        let resp = c.get(f.url("/")).send().await.unwrap();
        match resp.status().as_u16() {
            200 => ok += 1,
            429 => {
                assert!(resp.headers().contains_key("retry-after"));
                limited += 1
            }
            other => panic!("unexpected status {other}"),
        }
    }
    let took = start.elapsed();
    let expected = 6.0 + 20.0 * took.as_secs_f64();
    eprintln!("fleet-wide 20/s burst 5 over two instances: {ok} admitted, {limited} refused in {took:?} (expected {expected:.1})");
    assert!(
        (expected * 0.9..=expected * 1.1).contains(&(ok as f64)),
        "{ok} admitted by the pair in {took:?}, expected about {expected:.0}"
    );
    let refused_one = admin_one
        .metric("fulcrum_rate_limited_total", &[("route", "api")])
        .await;
    let refused_two = admin_two
        .metric("fulcrum_rate_limited_total", &[("route", "api")])
        .await;
    assert!(
        refused_one > 0.0 && refused_two > 0.0,
        "both instances limit"
    );
    assert_eq!((refused_one + refused_two) as usize, limited);

    // Redis gone: fail open, counted, logged once.
    redis.stop();
    for _ in 0..40 {
        assert_eq!(c.get(one.url("/")).send().await.unwrap().status(), 200);
    }
    let unavailable = admin_one
        .metric("fulcrum_rate_limit_unavailable_total", &[("route", "api")])
        .await;
    assert!(unavailable >= 40.0, "{unavailable}");
    assert_eq!(
        one.log().matches("cannot be asked").count(),
        1,
        "{}",
        one.log()
    );

    // Back: limited again, and said so once.
    let _redis = Redis::start(redis.port).await;
    wait_for_async(Duration::from_secs(10), "limits to hold again", || async {
        let mut limited = false;
        for _ in 0..10 {
            limited |= c.get(one.url("/")).send().await.unwrap().status() == 429;
        }
        limited
    })
    .await;
    assert_eq!(
        one.log().matches("answers again").count(),
        1,
        "{}",
        one.log()
    );
}
