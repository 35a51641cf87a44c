//! Graceful hand-over with clients that open a new connection per request: 20 upgrades in a
//! row lose none of them. Its own test binary, so that its 20 processes and its load do not
//! starve the timing of other suites' tests.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// One request per connection (`Connection: close`, as a client behind a NAT or a health
/// prober does) from `clients` tasks until `stop`: (sent, failures).
fn one_shot_load(
    addr: std::net::SocketAddr,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    tokio::spawn(async move {
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let (mut sent, mut failures) = (0, Vec::new());
                    let deadline = Instant::now() + Duration::from_secs(120);
                    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                        sent += 1;
                        let outcome = async {
                            let mut s = tokio::net::TcpStream::connect(addr).await?;
                            s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                                .await?;
                            let mut out = Vec::new();
                            s.read_to_end(&mut out).await?;
                            Ok::<_, std::io::Error>(out)
                        };
                        match tokio::time::timeout(Duration::from_secs(10), outcome).await {
                            Ok(Ok(out)) if out.starts_with(b"HTTP/1.1 200") => {}
                            Ok(Ok(out)) => failures.push(format!(
                                "answer {:?}",
                                String::from_utf8_lossy(&out[..out.len().min(400)])
                            )),
                            Ok(Err(e)) => failures.push(format!("{e}")),
                            Err(_) => failures.push("no answer in 10 s".into()),
                        }
                    }
                    (sent, failures)
                })
            })
            .collect();
        let (mut sent, mut failures) = (0, Vec::new());
        for t in tasks {
            let (n, f) = t.await.unwrap();
            sent += n;
            failures.extend(f);
        }
        (sent, failures)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_upgrades_lose_no_new_connection_client() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // The grace period is what in-flight requests get after the hand-over (10 s by default).
    let yaml = format!(
        "{}listeners:\n  - name: main\n    listen: 127.0.0.1:{port}\nroutes: [{{pool: p}}]\npools:\n  p: {{backends: [{{address: \"{}\"}}, {{address: \"{}\"}}]}}\n",
        Fulcrum::server_block(dir.path()).replace("grace_period_seconds: 0", "grace_period_seconds: 2"),
        a.addr,
        b.addr
    );
    let mut f = Fulcrum::start_yaml(dir, port, &yaml).await;
    let stop = Arc::new(AtomicBool::new(false));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], f.port));
    let load = one_shot_load(addr, 4, stop.clone());
    wait_for(Duration::from_secs(5), "traffic", || a.hits() > 20).await;
    let mut draining = Vec::new();
    for _ in 0..20 {
        draining.push(f.hand_over().await);
        // Each new process serves before the next hand-over.
        let served = a.hits() + b.hits();
        wait_for(Duration::from_secs(5), "served after the hand-over", || {
            a.hits() + b.hits() > served + 20
        })
        .await;
    }
    for old in draining {
        let status = old.exit(Duration::from_secs(30)).await;
        assert!(status.success(), "old process exit: {status}");
    }
    stop.store(true, Ordering::SeqCst);
    let (sent, failures) = load.await.unwrap();
    eprintln!(
        "20 upgrades, one request per connection: {sent} requests, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        f.log()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
