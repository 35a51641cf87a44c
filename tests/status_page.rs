//! The admin listener's status page, rendered by a real headless browser (Debian's chromium),
//! and the per-backend latency histogram it reads: promtool accepts it, and a reload that
//! removes a backend removes its series.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "status-page-token-0123456789";

/// Pool `web` with `backends` (name, address), checked over HTTP every 200 ms; `admin_yaml` is
/// the `admin:` line.
fn web_pool(admin_yaml: &str, backends: &[&Backend]) -> String {
    let items: Vec<String> = backends
        .iter()
        .map(|b| format!("{{address: \"{}\", name: {}}}", b.addr, b.name))
        .collect();
    format!(
        "{}routes: [{{pool: web}}]\npools:\n  web:\n    backends: [{}]\n    health_check: {{http: {{path: /healthz}}, interval: 200ms, timeout: 200ms, healthy_threshold: 1, unhealthy_threshold: 1}}\n",
        admin_yaml,
        items.join(", ")
    )
}

async fn send(f: &Fulcrum, n: usize) {
    let cl = client();
    for _ in 0..n {
        assert_eq!(cl.get(f.url("/x")).send().await.unwrap().status(), 200);
    }
}

/// A child process killed (and reaped) on drop, so that a failed assertion leaves no browser.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run headless chromium with `args` and the page `url`, within `limit`; returns its stdout.
async fn chromium(args: &[&str], url: &str, limit: Duration) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = tempfile::NamedTempFile::new().unwrap();
    let child = Command::new("chromium")
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(out.reopen().unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium (make test installs Debian's chromium package)");
    let mut child = Reaped(child);
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(status.success(), "chromium {args:?} exited with {status}");
            return std::fs::read_to_string(out.path()).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "chromium {args:?} still running after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The test artifacts directory: `$CARGO_TARGET_DIR/artifacts` (the binary is in
/// `$CARGO_TARGET_DIR/debug`).
fn artifacts() -> PathBuf {
    let dir = Path::new(BIN)
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The `<tr>` of backend `name` in the page.
fn row<'a>(dom: &'a str, name: &str) -> &'a str {
    let start = dom
        .find(&format!("data-backend=\"{name}\""))
        .unwrap_or_else(|| panic!("no row for {name}:\n{dom}"));
    let end = dom[start..].find("</tr>").unwrap() + start;
    &dom[start..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_headless_browser_sees_each_backend_with_its_state_and_numbers() {
    let admin = Admin::new();
    let a = Backend::start("a").await;
    let sick = Backend::start("sick").await;
    let off = Backend::start("off").await;
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), format!("{TOKEN}\n")).unwrap();
    let admin_yaml = format!(
        "admin: {{listen: 127.0.0.1:{}, token_file: \"{}\"}}\n",
        admin.port,
        token.path().display()
    );
    let f = Fulcrum::start(&web_pool(&admin_yaml, &[&a, &sick, &off])).await;
    // off is disabled by the operator, through the runtime API.
    let resp = client()
        .post(format!(
            "http://127.0.0.1:{}/api/v1/pools/web/backends/off/disable",
            admin.port
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    // sick passes its first check, then fails: unhealthy (a backend that never passed is
    // "checking").
    sick.set_health(503);
    wait_for_async(Duration::from_secs(5), "sick unhealthy", || async {
        admin.backend("web", "sick").await["state"] == "unhealthy"
    })
    .await;
    send(&f, 20).await;
    wait_for_async(Duration::from_secs(5), "20 requests counted", || async {
        admin
            .metric(
                "fulcrum_upstream_response_seconds_count",
                &[("backend", "a")],
            )
            .await
            == 20.0
    })
    .await;

    let url = format!("http://127.0.0.1:{}/", admin.port);
    let dom = chromium(&["--dump-dom"], &url, Duration::from_secs(60)).await;
    assert!(dom.contains("Pool web"), "{dom}");
    assert!(dom.contains("http-equiv=\"refresh\" content=\"5\""));
    let status = admin.status().await;
    let hash = status["config"]["sha256"].as_str().unwrap();
    assert!(dom.contains(hash), "the configuration's hash is shown");
    assert!(
        dom.contains(&format!("127.0.0.1:{}", f.port)),
        "the listener"
    );

    let healthy = row(&dom, "a");
    assert!(healthy.contains("data-state=\"ready\""), "{healthy}");
    assert!(healthy.contains(&a.addr.to_string()), "{healthy}");
    assert!(healthy.contains(">20</td>"), "20 requests: {healthy}");
    assert!(healthy.contains("0.0 %"), "no errors: {healthy}");
    assert!(
        healthy.matches(" ms</td>").count() == 2,
        "p50 and p99 in ms: {healthy}"
    );
    let unhealthy = row(&dom, "sick");
    assert!(
        unhealthy.contains("data-state=\"unhealthy\""),
        "{unhealthy}"
    );
    assert!(
        unhealthy.contains("health check"),
        "the reason: {unhealthy}"
    );
    let disabled = row(&dom, "off");
    assert!(disabled.contains("data-state=\"disabled\""), "{disabled}");
    assert!(disabled.contains(">0</td>"), "no requests: {disabled}");

    // Traffic after that first view: the screenshot's window (since it) has rates and
    // percentiles.
    send(&f, 10).await;
    let png = artifacts().join("status-page.png");
    let _ = std::fs::remove_file(&png);
    chromium(
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,900",
            "--hide-scrollbars",
        ],
        &url,
        Duration::from_secs(60),
    )
    .await;
    let bytes = std::fs::read(&png).expect("the screenshot");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(
        bytes.len() > 10_000,
        "{} bytes: not a blank page",
        bytes.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latency_of_a_backend_reloaded_away_leaves_the_exposition() {
    let admin = Admin::new();
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let f = Fulcrum::start(&web_pool(&admin.yaml(), &[&a, &b])).await;
    send(&f, 10).await;
    wait_for_async(Duration::from_secs(5), "10 responses timed", || async {
        admin
            .metric(
                "fulcrum_upstream_response_seconds_count",
                &[("pool", "web")],
            )
            .await
            == 10.0
    })
    .await;
    let text = admin.metrics().await;
    for backend in ["a", "b"] {
        let count = metric_sum(
            &text,
            "fulcrum_upstream_response_seconds_count",
            &[("backend", backend)],
        );
        assert_eq!(count, 5.0, "round robin: {backend}");
        let buckets = text
            .lines()
            .filter(|l| {
                l.starts_with("fulcrum_upstream_response_seconds_bucket{")
                    && l.contains(&format!("backend=\"{backend}\""))
            })
            .count();
        assert_eq!(buckets, 15, "14 bounds and +Inf: {backend}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, &text).unwrap();
    let out = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect("promtool (make test installs Debian's prometheus package)");
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Reload without b: its series go; a's stay, with their counts.
    f.rewrite(&web_pool(&admin.yaml(), &[&a]));
    f.signal("HUP");
    wait_for(Duration::from_secs(5), "reload applied", || {
        f.log().contains("reload: applied")
    })
    .await;
    let text = admin.metrics().await;
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("fulcrum_upstream_response_seconds")
                && l.contains("backend=\"b\"")),
        "b's latency series are gone:\n{text}"
    );
    assert_eq!(
        metric_sum(
            &text,
            "fulcrum_upstream_response_seconds_count",
            &[("backend", "a")]
        ),
        5.0
    );
    send(&f, 2).await;
    wait_for_async(Duration::from_secs(5), "a timed again", || async {
        admin
            .metric(
                "fulcrum_upstream_response_seconds_count",
                &[("backend", "a")],
            )
            .await
            == 7.0
    })
    .await;
}
