//! `fulcrum demo` starts its backends and the proxy on 127.0.0.1:8080 and answers.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{client, BIN};

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_answers_from_its_three_backends() {
    let child = Command::new(BIN)
        .arg("demo")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn demo");
    let _guard = Killed(child);
    let c = client();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut bodies = Vec::new();
    while bodies.len() < 8 {
        assert!(Instant::now() < deadline, "demo did not answer: {bodies:?}");
        match c.get("http://127.0.0.1:8080/hello").send().await {
            Ok(r) if r.status() == 200 => bodies.push(r.text().await.unwrap()),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    for n in 1..=3 {
        let name = format!("hello from backend-{n} (you asked for /hello)");
        assert!(
            bodies.iter().any(|b| b.starts_with(&name)),
            "{name}: {bodies:?}"
        );
    }
}
