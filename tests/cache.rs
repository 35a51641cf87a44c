//! Per-route response caching against the real binary and a real origin: a stored object is
//! served without the backend until its max-age ends; Vary keeps one object per header value;
//! no-store, private, Set-Cookie and Authorization are not stored unless the response allows;
//! 100 concurrent misses (and 100 requests for an expired object) reach the backend once;
//! stale-while-revalidate and stale-if-error; purge through the admin API; the memory of a
//! cache filled twice over stays within its max_size.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// An origin whose answers the request's query chooses (the test backend of `common` answers
/// every request alike): `cc=` Cache-Control, `vary=` Vary (the body then names the request's
/// `x-lang`), `cookie=1` a Set-Cookie, `size=N` an N-byte body, `delay=MS` a pause. The body
/// is `PATH?QUERY #N`, N the origin's count of requests for that target; `failing` answers
/// 503 to everything.
struct Origin {
    addr: SocketAddr,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    total: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

impl Origin {
    async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let total = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(AtomicBool::new(false));
        let (h, t, f) = (hits.clone(), total.clone(), failing.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (h, t, f) = (h.clone(), t.clone(), f.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (h, t, f) = (h.clone(), t.clone(), f.clone());
                        async move { Ok::<_, std::io::Error>(answer(req, &h, &t, &f).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Origin {
            addr,
            hits,
            total,
            failing,
            task,
        }
    }

    /// Requests for `target` (path and query, as sent) so far.
    fn hits(&self, target: &str) -> usize {
        self.hits.lock().unwrap().get(target).copied().unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    hits: &Mutex<HashMap<String, usize>>,
    total: &AtomicUsize,
    failing: &AtomicBool,
) -> Response<Full<Bytes>> {
    let target = req
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string());
    let n = {
        let mut h = hits.lock().unwrap();
        let n = h.entry(target.clone()).or_default();
        *n += 1;
        *n
    };
    total.fetch_add(1, Ordering::SeqCst);
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), decode(v)))
        .collect();
    if let Some(ms) = query.get("delay") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
    }
    if failing.load(Ordering::SeqCst) {
        return Response::builder()
            .status(503)
            .body(Full::new(Bytes::from_static(b"down")))
            .unwrap();
    }
    let mut resp = Response::builder().status(200);
    if let Some(cc) = query.get("cc") {
        resp = resp.header("cache-control", cc.as_str());
    }
    let mut body = format!("{target} #{n}");
    if let Some(vary) = query.get("vary") {
        resp = resp.header("vary", vary.as_str());
        let lang = req
            .headers()
            .get("x-lang")
            .map_or("", |v| v.to_str().unwrap());
        body.push_str(&format!(" lang={lang}"));
    }
    if query.contains_key("cookie") {
        resp = resp.header("set-cookie", format!("sid={n}"));
    }
    let body = match query.get("size") {
        Some(size) => {
            let size: usize = size.parse().unwrap();
            let mut b = body.into_bytes();
            b.resize(size, b'x');
            Bytes::from(b)
        }
        None => Bytes::from(body),
    };
    resp.body(Full::new(body)).unwrap()
}

/// fulcrum with one caching route (`name: cached`, `cache: {CACHE}`) and a token-protected
/// admin API, in front of `origin`.
struct Setup {
    f: Fulcrum,
    admin: Admin,
    token_dir: tempfile::TempDir,
    origin: SocketAddr,
}

const TOKEN: &str = "cache-test-token-0123456789abcdef";

/// The configuration after `listeners:` (`cache` None: the route does not cache).
fn body(
    admin: &Admin,
    token_dir: &std::path::Path,
    origin: SocketAddr,
    cache: Option<&str>,
) -> String {
    let cache = cache.map_or(String::new(), |c| format!("    cache: {{{c}}}\n"));
    format!(
        "admin: {{listen: 127.0.0.1:{}, token_file: \"{}\"}}
routes:
  - match: {{path_prefix: /plain/}}
    pool: p
  - name: cached
    pool: p
{cache}pools:
  p: {{backends: [{{address: \"{origin}\"}}]}}
",
        admin.port,
        token_dir.join("admin.token").display(),
    )
}

async fn setup(origin: &Origin, cache: &str) -> Setup {
    let admin = Admin::new();
    let token_dir = tempfile::tempdir().unwrap();
    std::fs::write(token_dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    let f = Fulcrum::start(&body(&admin, token_dir.path(), origin.addr, Some(cache))).await;
    Setup {
        f,
        admin,
        token_dir,
        origin: origin.addr,
    }
}

/// A response's status, `X-Cache`, `Age` and body.
struct Got {
    status: u16,
    x_cache: String,
    age: Option<u64>,
    cookie: bool,
    body: String,
}

async fn fetch(c: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Got {
    let mut req = c.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let h = resp.headers();
    let x_cache = h
        .get("x-cache")
        .map_or("-".to_string(), |v| v.to_str().unwrap().to_string());
    let age = h.get("age").map(|v| v.to_str().unwrap().parse().unwrap());
    let cookie = h.contains_key("set-cookie");
    Got {
        status: resp.status().as_u16(),
        x_cache,
        age,
        cookie,
        body: resp.text().await.unwrap(),
    }
}

impl Setup {
    /// Reload with `cache` (None: the route stops caching); returns once it is applied (the
    /// `n`th successful reload).
    async fn reload(&self, cache: Option<&str>, n: f64) {
        self.f.rewrite(&body(
            &self.admin,
            self.token_dir.path(),
            self.origin,
            cache,
        ));
        self.f.signal("HUP");
        wait_for_async(Duration::from_secs(10), "the reload", || async {
            self.admin
                .metric("fulcrum_config_reloads_total", &[("result", "success")])
                .await
                == n
        })
        .await;
    }

    async fn cache_total(&self, result: &str) -> usize {
        self.admin
            .metric(
                "fulcrum_cache_total",
                &[("route", "cached"), ("result", result)],
            )
            .await as usize
    }

    /// Wait (up to 5 s) for `fulcrum_cache_total{result}` to be `want`: a request is counted as
    /// it ends, a moment after its client has the answer.
    async fn cache_total_is(&self, result: &str, want: usize) {
        let what = format!("fulcrum_cache_total{{result={result}}} = {want}");
        wait_for_async(Duration::from_secs(5), &what, || async {
            self.cache_total(result).await == want
        })
        .await;
    }

    async fn purge(
        &self,
        body: serde_json::Value,
        token: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut req = client()
            .post(format!(
                "http://127.0.0.1:{}/api/v1/cache/purge",
                self.admin.port
            ))
            .body(body.to_string());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or_default())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_object_is_served_without_the_backend_until_its_max_age_ends() {
    let origin = Origin::start().await;
    let s = setup(&origin, "max_size: 1MB").await;
    let c = client();
    let target = "/a?cc=max-age=2";
    let url = s.f.url(target);
    let first = fetch(&c, &url, &[]).await;
    assert_eq!((first.status, first.x_cache.as_str()), (200, "MISS"));
    assert_eq!(first.body, format!("{target} #1"));
    for _ in 0..10 {
        let hit = fetch(&c, &url, &[]).await;
        assert_eq!((hit.status, hit.x_cache.as_str()), (200, "HIT"));
        assert_eq!(hit.body, format!("{target} #1"));
        assert!(
            hit.age.is_some_and(|a| a <= 2),
            "Age on a hit: {:?}",
            hit.age
        );
    }
    let head = c.head(&url).send().await.unwrap();
    assert_eq!(
        head.headers()["x-cache"],
        "HIT",
        "HEAD from the GET's object"
    );
    assert_eq!(origin.hits(target), 1, "11 GETs and a HEAD, one fetch");
    // The key is method, scheme, host, path and query: another query or host is another object.
    assert_eq!(
        fetch(&c, &s.f.url("/a?cc=max-age=2&x=1"), &[])
            .await
            .x_cache,
        "MISS"
    );
    let other_host = fetch(&c, &url, &[("host", "other.example")]).await;
    assert_eq!(
        (other_host.x_cache.as_str(), other_host.body.as_str()),
        ("MISS", "/a?cc=max-age=2 #2")
    );
    // A route without `cache:` says nothing and stores nothing.
    let plain = fetch(&c, &s.f.url("/plain/x?cc=max-age=60"), &[]).await;
    assert_eq!(plain.x_cache, "-");
    fetch(&c, &s.f.url("/plain/x?cc=max-age=60"), &[]).await;
    assert_eq!(origin.hits("/plain/x?cc=max-age=60"), 2);
    // After max-age the object is fetched again (and stored again).
    let waited = wait_for_async(Duration::from_secs(6), "the object to expire", || async {
        fetch(&c, &url, &[]).await.x_cache == "MISS"
    })
    .await;
    assert!(
        waited >= Duration::from_millis(900),
        "expired after {waited:?}"
    );
    assert_eq!(
        origin.hits(target),
        3,
        "the second host's fetch, then the refetch"
    );
    assert_eq!(fetch(&c, &url, &[]).await.body, format!("{target} #3"));
    // first, other query, other host, after expiry
    s.cache_total_is("miss", 4).await;
    let hits = s.cache_total("hit").await;
    assert!(hits >= 12, "{hits} hits");
    assert_eq!(s.cache_total("bypass").await, 0);
    // A POST bypasses the cache.
    let post = c.post(&url).send().await.unwrap();
    assert_eq!(post.headers()["x-cache"], "MISS");
    s.cache_total_is("bypass", 1).await;
    let log = s.f.log();
    assert!(!log.contains("WARN") && !log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_store_private_set_cookie_and_authorization_are_not_stored_unless_allowed() {
    let origin = Origin::start().await;
    let s = setup(&origin, "max_size: 1MB").await;
    let c = client();
    let fetch3 = |target: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let (c, url) = (c.clone(), s.f.url(target));
        async move {
            let mut seen = Vec::new();
            for _ in 0..3 {
                seen.push(fetch(&c, &url, headers).await);
            }
            seen
        }
    };
    for target in [
        "/n?cc=no-store,max-age=60",
        "/n?cc=private,max-age=60",
        "/n?cc=max-age=60&cookie=1",
        "/n?nothing",
    ] {
        let seen = fetch3(target, &[]).await;
        assert!(seen.iter().all(|g| g.x_cache == "MISS"), "{target}");
        assert_eq!(origin.hits(target), 3, "{target} is not stored");
    }
    // Once a URL's response could not be stored, its next requests skip the lookup (and the
    // cache lock): 2 of each 3.
    s.cache_total_is("bypass", 8).await;
    assert_eq!(s.cache_total("miss").await, 4);
    // A Set-Cookie response is stored when it says so, without its cookie.
    for target in [
        "/n?cc=public,max-age=60&cookie=1",
        "/n?cc=max-age=60,no-cache=%22Set-Cookie%22&cookie=1",
    ] {
        let seen = fetch3(target, &[]).await;
        assert!(
            seen[0].cookie,
            "{target}: the filling client gets its cookie"
        );
        assert_eq!(origin.hits(target), 1, "{target} is stored");
        assert_eq!(seen[2].x_cache, "HIT");
        assert!(
            !seen[1].cookie && !seen[2].cookie,
            "{target}: nobody else gets it"
        );
    }
    // A request with Authorization: only a response marked public (or s-maxage) is stored.
    let auth: &'static [(&str, &str)] = &[("authorization", "Bearer x")];
    fetch3("/n?cc=max-age=60&a=1", auth).await;
    assert_eq!(origin.hits("/n?cc=max-age=60&a=1"), 3);
    fetch3("/n?cc=public,max-age=60&a=1", auth).await;
    assert_eq!(origin.hits("/n?cc=public,max-age=60&a=1"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_keeps_one_object_per_value_of_the_named_header() {
    let origin = Origin::start().await;
    let s = setup(&origin, "max_size: 1MB").await;
    let c = client();
    let target = "/v?cc=max-age=60&vary=X-Lang";
    let url = s.f.url(target);
    for round in 0..3 {
        for lang in ["fr", "de", "en"] {
            let g = fetch(&c, &url, &[("x-lang", lang)]).await;
            assert!(
                g.body.ends_with(&format!("lang={lang}")),
                "{lang}: {}",
                g.body
            );
            let want = if round == 0 { "MISS" } else { "HIT" };
            assert_eq!(g.x_cache, want, "round {round} {lang}");
        }
    }
    let none = fetch(&c, &url, &[]).await;
    assert!(none.body.ends_with("lang="), "{}", none.body);
    assert_eq!(
        origin.hits(target),
        4,
        "one fetch per language, and one without"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_misses_reach_the_backend_once() {
    let origin = Origin::start().await;
    let s = setup(&origin, "max_size: 1MB").await;
    let c = client();
    let target = "/hot?cc=max-age=1&delay=300";
    let url = s.f.url(target);
    let storm = || async {
        let all = (0..100).map(|_| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move { fetch(&c, &url, &[]).await })
        });
        let mut bodies = HashMap::new();
        for g in futures::future::join_all(all).await {
            let g = g.unwrap();
            assert_eq!(g.status, 200);
            *bodies.entry(g.body).or_insert(0) += 1;
        }
        bodies
    };
    let bodies = storm().await;
    assert_eq!(origin.hits(target), 1, "100 concurrent misses, one fetch");
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    wait_for_async(Duration::from_secs(5), "100 requests counted", || async {
        s.cache_total("hit").await + s.cache_total("miss").await == 100
    })
    .await;
    let (hits, misses) = (s.cache_total("hit").await, s.cache_total("miss").await);
    eprintln!("first storm: {misses} miss, {hits} hit");
    assert_eq!((misses, hits), (1, 99));
    // The object expires: 100 requests for it still make one fetch. An object stored after
    // it tells the time: once its Age is 2 s, the hot one (max-age 1) has expired.
    fetch(&c, &s.f.url("/other?cc=max-age=60"), &[]).await;
    let expired = wait_for_async(Duration::from_secs(5), "max-age to pass", || async {
        let g = fetch(&c, &s.f.url("/other?cc=max-age=60"), &[]).await;
        g.age.is_some_and(|a| a >= 2)
    })
    .await;
    eprintln!("waited {expired:?} for expiry");
    let bodies = storm().await;
    assert_eq!(
        origin.hits(target),
        2,
        "100 requests for an expired object, one fetch"
    );
    assert_eq!(bodies.len(), 1, "{bodies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_at_once_and_stale_if_error_covers_a_failing_backend() {
    let origin = Origin::start().await;
    let s = setup(&origin, "max_size: 1MB, stale_if_error: 1h").await;
    let c = client();
    let swr = "/s?cc=max-age=1,stale-while-revalidate=60&delay=500";
    let url = s.f.url(swr);
    assert_eq!(fetch(&c, &url, &[]).await.x_cache, "MISS");
    // Past max-age: the stale object at once (not after the 500 ms fetch), one background
    // refresh.
    wait_for_async(Duration::from_secs(5), "a stale answer", || async {
        let started = Instant::now();
        let g = fetch(&c, &url, &[]).await;
        if g.x_cache == "STALE" {
            assert_eq!(g.body, format!("{swr} #1"));
            assert!(
                started.elapsed() < Duration::from_millis(400),
                "{:?}",
                started.elapsed()
            );
            return true;
        }
        assert_eq!(g.x_cache, "HIT");
        false
    })
    .await;
    wait_for(Duration::from_secs(5), "the background refresh", || {
        origin.hits(swr) == 2
    })
    .await;
    wait_for_async(Duration::from_secs(5), "the refreshed object", || async {
        fetch(&c, &url, &[]).await.body == format!("{swr} #2")
    })
    .await;
    assert_eq!(origin.hits(swr), 2);
    assert!(s.cache_total("stale").await >= 1);

    // stale_if_error: 1h (the route's default): a failing backend gets the stale copy.
    let sie = "/e?cc=max-age=1";
    let url = s.f.url(sie);
    assert_eq!(fetch(&c, &url, &[]).await.x_cache, "MISS");
    origin.failing.store(true, Ordering::SeqCst);
    wait_for_async(
        Duration::from_secs(5),
        "a stale answer over a 503",
        || async {
            let g = fetch(&c, &url, &[]).await;
            assert_eq!(g.status, 200, "never the 503");
            g.x_cache == "STALE"
        },
    )
    .await;
    assert!(origin.hits(sie) >= 2, "the backend was asked");
    let g = fetch(&c, &url, &[]).await;
    assert_eq!((g.status, g.body.as_str()), (200, "/e?cc=max-age=1 #1"));
    // Without a stale copy the 503 goes through.
    assert_eq!(
        fetch(&c, &s.f.url("/e?cc=max-age=1&new"), &[]).await.status,
        503
    );
    // The backend gone (its listener closed): still the stale copy.
    let total = origin.total();
    drop(origin);
    let g = fetch(&c, &url, &[]).await;
    assert_eq!(
        (g.status, g.x_cache.as_str()),
        (200, "STALE"),
        "after {total} requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_purges_a_url_with_its_variants_or_a_whole_route() {
    let origin = Origin::start().await;
    let s = setup(&origin, "max_size: 1MB").await;
    let c = client();
    let target = "/p?cc=max-age=600&vary=X-Lang";
    let url = s.f.url(target);
    for lang in ["fr", "de"] {
        fetch(&c, &url, &[("x-lang", lang)]).await;
    }
    fetch(&c, &s.f.url("/q?cc=max-age=600"), &[]).await;
    assert_eq!(fetch(&c, &url, &[("x-lang", "de")]).await.x_cache, "HIT");
    let body = serde_json::json!({ "url": url });
    assert_eq!(s.purge(body.clone(), None).await.0, 401);
    assert_eq!(s.purge(body.clone(), Some("wrong")).await.0, 401);
    let (status, answer) = s.purge(body.clone(), Some(TOKEN)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, serde_json::json!({"route": "cached", "purged": 2}));
    for lang in ["fr", "de"] {
        assert_eq!(
            fetch(&c, &url, &[("x-lang", lang)]).await.x_cache,
            "MISS",
            "{lang}"
        );
    }
    assert_eq!(origin.hits(target), 4);
    assert_eq!(
        fetch(&c, &s.f.url("/q?cc=max-age=600"), &[]).await.x_cache,
        "HIT",
        "untouched"
    );
    // Nothing left to purge; a URL of a route without a cache; bad bodies.
    let again = serde_json::json!({ "url": s.f.url("/p?nothing") });
    assert_eq!(s.purge(again, Some(TOKEN)).await.1["purged"], 0);
    let plain = serde_json::json!({ "url": s.f.url("/plain/x") });
    assert_eq!(s.purge(plain, Some(TOKEN)).await.0, 404);
    for bad in [
        serde_json::json!({}),
        serde_json::json!({"url": "ftp://x/"}),
        serde_json::json!({"url": 1}),
    ] {
        assert_eq!(s.purge(bad.clone(), Some(TOKEN)).await.0, 400, "{bad}");
    }
    // `fulcrum ctl purge URL` (admin address and token from the -c file): the two variants
    // stored again above.
    let out = std::process::Command::new(BIN)
        .arg("-c")
        .arg(s.f.conf_path())
        .args(["ctl", "purge", url.as_str()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer, serde_json::json!({"route": "cached", "purged": 2}));
    assert_eq!(fetch(&c, &url, &[("x-lang", "fr")]).await.x_cache, "MISS");
    // The whole route: the two objects stored now.
    let (status, answer) = s
        .purge(serde_json::json!({"route": "cached"}), Some(TOKEN))
        .await;
    assert_eq!(
        (status, answer["purged"].as_u64()),
        (200, Some(2)),
        "{answer}"
    );
    assert_eq!(
        fetch(&c, &s.f.url("/q?cc=max-age=600"), &[]).await.x_cache,
        "MISS"
    );
    assert_eq!(
        s.purge(serde_json::json!({"route": "nope"}), Some(TOKEN))
            .await
            .0,
        404
    );
    let wrong_method = client()
        .get(format!(
            "http://127.0.0.1:{}/api/v1/cache/purge",
            s.admin.port
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);
}

/// VmRSS of process `pid`, in bytes.
fn rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_filled_twice_over_stays_within_max_size() {
    const MAX: usize = 32 << 20;
    const OBJECT: usize = 256 << 10;
    let origin = Origin::start().await;
    let s = setup(&origin, "max_size: 32MB, max_object_size: 1MB").await;
    let c = client();
    let pid = s.f.child.id();
    // Warm up the process (connections, buffers) with uncached traffic first.
    for i in 0..20 {
        fetch(&c, &s.f.url(&format!("/w{i}?size={OBJECT}")), &[]).await;
    }
    let before = rss(pid);
    let fill = |from: usize, to: usize| {
        let c = c.clone();
        let f = &s.f;
        async move {
            for i in from..to {
                let g = fetch(
                    &c,
                    &f.url(&format!("/big{i}?cc=max-age=600&size={OBJECT}")),
                    &[],
                )
                .await;
                assert_eq!((g.status, g.body.len()), (200, OBJECT));
            }
        }
    };
    // The gauge is set as a request ends; an object stored by a request is evicted for right
    // after it, by a task of its own, which may run on the other worker thread after that
    // request has ended: hits on the newest object read the gauge until that has run (a
    // bounded poll; the weight at its deadline is what is asserted).
    let weight_now = |last: usize| {
        let (c, f, admin) = (c.clone(), &s.f, &s.admin);
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let g = fetch(
                    &c,
                    &f.url(&format!("/big{last}?cc=max-age=600&size={OBJECT}")),
                    &[],
                )
                .await;
                assert_eq!(g.x_cache, "HIT");
                let weight = admin
                    .metric("fulcrum_cache_bytes", &[("route", "cached")])
                    .await as usize;
                if weight <= MAX || Instant::now() > deadline {
                    return weight;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // 256 objects of 256 KB: 64 MB, twice max_size.
    fill(0, 256).await;
    let weight = weight_now(255).await;
    let twice = rss(pid);
    // And again, other objects: another 64 MB through the cache.
    fill(256, 512).await;
    let four_times = rss(pid);
    let weight_after = weight_now(511).await;
    eprintln!(
        "max_size {} MB: weight {weight} then {weight_after}; RSS {} MB before, {} MB after 2x, {} MB after 4x",
        MAX >> 20,
        before >> 20,
        twice >> 20,
        four_times >> 20
    );
    for w in [weight, weight_after] {
        assert!(w <= MAX, "weight {w} over max_size");
        assert!(
            w >= MAX - 2 * (OBJECT + 4096),
            "weight {w}: the cache is full"
        );
    }
    // The newest objects are there, the oldest are gone.
    assert_eq!(
        fetch(
            &c,
            &s.f.url(&format!("/big511?cc=max-age=600&size={OBJECT}")),
            &[]
        )
        .await
        .x_cache,
        "HIT"
    );
    assert_eq!(
        fetch(
            &c,
            &s.f.url(&format!("/big0?cc=max-age=600&size={OBJECT}")),
            &[]
        )
        .await
        .x_cache,
        "MISS"
    );
    assert!(
        twice.saturating_sub(before) < MAX * 3 / 2,
        "RSS grew {} MB filling a {} MB cache twice over",
        (twice - before) >> 20,
        MAX >> 20
    );
    assert!(
        four_times.saturating_sub(twice) < MAX / 4,
        "RSS grew another {} MB on the second fill",
        (four_times.saturating_sub(twice)) >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_keep_a_route_cache_and_a_smaller_max_size_or_no_cache_empties_it() {
    let origin = Origin::start().await;
    let s = setup(&origin, "max_size: 1MB").await;
    let c = client();
    let target = "/r?cc=max-age=600";
    let url = s.f.url(target);
    assert_eq!(fetch(&c, &url, &[]).await.x_cache, "MISS");
    // Other settings, a larger max_size: the objects stay.
    s.reload(Some("max_size: 1MB, stale_if_error: 1m"), 1.0)
        .await;
    assert_eq!(fetch(&c, &url, &[]).await.x_cache, "HIT");
    s.reload(Some("max_size: 2MB"), 2.0).await;
    assert_eq!(fetch(&c, &url, &[]).await.x_cache, "HIT");
    assert_eq!(origin.hits(target), 1);
    // A smaller max_size empties the cache: within its new bound at once.
    s.reload(Some("max_size: 512KB"), 3.0).await;
    assert_eq!(fetch(&c, &url, &[]).await.x_cache, "MISS");
    assert_eq!(fetch(&c, &url, &[]).await.x_cache, "HIT");
    // Without `cache:` the route stores nothing and its objects are dropped; with it again, it
    // starts empty.
    s.reload(None, 4.0).await;
    let g = fetch(&c, &url, &[]).await;
    assert_eq!(
        (g.x_cache.as_str(), g.body.as_str()),
        ("-", "/r?cc=max-age=600 #3")
    );
    s.reload(Some("max_size: 512KB"), 5.0).await;
    assert_eq!(fetch(&c, &url, &[]).await.x_cache, "MISS");
    assert_eq!(origin.hits(target), 4);
}
