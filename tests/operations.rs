//! Zero-downtime operations: SIGHUP reload under load, graceful upgrades under load, and
//! failed reloads and upgrades that leave the running process serving.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const CHECK: &str = "{http: {path: /healthz}, interval: 200ms, timeout: 200ms, healthy_threshold: 1, unhealthy_threshold: 2}";

fn pool_yaml(algorithm: &str, backends: &[(&Backend, u32)], admin: u16) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|(b, w)| format!("{{address: \"{}\", name: {}, weight: {w}}}", b.addr, b.name))
        .collect();
    format!(
        "admin: {{listen: 127.0.0.1:{admin}}}\nroutes: [{{pool: p}}]\npools:\n  p:\n    algorithm: {algorithm}\n    backends: [{}]\n    health_check: {CHECK}\n",
        list.join(", ")
    )
}

/// Keep-alive GETs from `clients` clients until `stop`: (sent, failures with their errors).
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|_| {
                let (url, stop, sent, failures) =
                    (url.clone(), stop.clone(), sent.clone(), failures.clone());
                tokio::spawn(async move {
                    let c = client();
                    let deadline = Instant::now() + Duration::from_secs(120);
                    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                        sent.fetch_add(1, Ordering::SeqCst);
                        match c.get(&url).send().await {
                            Ok(r) if r.status() == 200 => {}
                            Ok(r) => failures
                                .lock()
                                .unwrap()
                                .push(format!("status {}", r.status())),
                            Err(e) => failures.lock().unwrap().push(format!("{e:?}")),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            failures,
            tasks,
        }
    }

    fn sent(&self) -> usize {
        self.sent.load(Ordering::SeqCst)
    }

    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.sent.load(Ordering::SeqCst), failures)
    }
}

/// Write `yaml` as the configuration, SIGHUP, and wait until the `nth` reload is applied.
async fn reload(f: &Fulcrum, yaml: &str, nth: usize) {
    f.rewrite(yaml);
    f.signal("HUP");
    wait_for(Duration::from_secs(5), "reload applied", || {
        f.log().matches("reload: applied").count() == nth
    })
    .await;
}

async fn metric(admin: u16, name_and_labels: &str) -> f64 {
    let text = client()
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_under_load_adds_removes_and_reweighs_without_a_failed_request() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c = Backend::start("c").await;
    let sick = Backend::start("sick").await;
    sick.set_health(500);
    let admin = free_port();
    let f = Fulcrum::start(&pool_yaml(
        "round_robin",
        &[(&a, 1), (&b, 1), (&sick, 1)],
        admin,
    ))
    .await;
    let load = Load::start(f.url("/"), 3);
    wait_for(Duration::from_secs(5), "traffic", || {
        a.hits() > 20 && b.hits() > 20
    })
    .await;

    // Add c.
    f.rewrite(&pool_yaml(
        "round_robin",
        &[(&a, 1), (&b, 1), (&c, 1), (&sick, 1)],
        admin,
    ));
    f.signal("HUP");
    let added = wait_for(Duration::from_secs(5), "c serving", || c.hits() > 0).await;
    assert!(
        added < Duration::from_millis(800),
        "c joined after {added:?}"
    );

    // Remove a.
    reload(
        &f,
        &pool_yaml("round_robin", &[(&b, 1), (&c, 1), (&sick, 1)], admin),
        2,
    )
    .await;
    let a_after = a.hits();
    let b_before = b.hits();
    wait_for(Duration::from_secs(5), "traffic goes on", || {
        b.hits() > b_before + 30
    })
    .await;
    assert!(
        a.hits() <= a_after + 3,
        "a removed: only requests in flight finish there"
    );

    // Change weights and the algorithm.
    let reweighed = pool_yaml("least_connections", &[(&b, 3), (&c, 1), (&sick, 1)], admin);
    reload(&f, &reweighed, 3).await;
    let (b0, c0) = (b.hits(), c.hits());
    wait_for(Duration::from_secs(5), "more traffic", || {
        b.hits() + c.hits() > b0 + c0 + 100
    })
    .await;

    // An invalid file: refused, the old configuration keeps serving, the counter moves.
    f.rewrite("routes: [{pool: nowhere}]\npools: {}\n");
    f.signal("HUP");
    wait_for(Duration::from_secs(5), "refusal logged", || {
        f.log().contains("reload refused")
    })
    .await;
    let sent = load.sent();
    wait_for(Duration::from_secs(5), "still serving", || {
        load.sent() > sent + 50
    })
    .await;
    assert_eq!(
        metric(admin, "fulcrum_config_reloads_total{result=\"failure\"}").await,
        1.0
    );
    assert_eq!(
        metric(admin, "fulcrum_config_reloads_total{result=\"success\"}").await,
        3.0
    );

    let (sent, failures) = load.finish().await;
    eprintln!(
        "reload under load: {sent} requests, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        f.log()
    );
    // Health state survived four reloads: the sick backend was never admitted.
    assert_eq!(sick.hits(), 0);
    assert!(
        f.log().contains("reload refused: tests") || f.log().contains("reload refused: /"),
        "{}",
        f.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_graceful_upgrades_under_load_fail_no_request() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let slow = Backend::start_with("slow", Behaviour::Delay(Duration::from_secs(3))).await;
    let admin = free_port();
    let body = format!(
        "{}  slowpool:\n    backends: [{{address: \"{}\"}}]\n",
        pool_yaml("round_robin", &[(&a, 1), (&b, 1)], admin),
        slow.addr
    )
    .replace(
        "routes: [{pool: p}]",
        "routes: [{match: {path_prefix: /slow}, pool: slowpool}, {pool: p}]",
    );
    let mut f = Fulcrum::start(&body).await;
    let load = Load::start(f.url("/"), 4);
    wait_for(Duration::from_secs(5), "traffic", || a.hits() > 20).await;

    let mut pids = vec![f.child.id()];
    for round in 0..3 {
        // A slow request in flight across the upgrade completes.
        let slow_url = f.url("/slow");
        let slow_req = tokio::spawn(async move {
            client()
                .get(slow_url)
                .send()
                .await
                .map(|r| r.status().as_u16())
        });
        wait_for(Duration::from_secs(5), "slow request in flight", || {
            slow.hits() > round
        })
        .await;
        let status = f.upgrade().await;
        assert!(status.success(), "old process exit: {status}");
        pids.push(f.child.id());
        assert_eq!(
            slow_req.await.unwrap().expect("slow request"),
            200,
            "round {round}"
        );
        let sent = load.sent();
        wait_for(Duration::from_secs(5), "new process serving", || {
            load.sent() > sent + 50
        })
        .await;
    }
    let (sent, failures) = load.finish().await;
    eprintln!(
        "graceful upgrades: 3 upgrades, {sent} requests, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    pids.dedup();
    assert_eq!(pids.len(), 4, "a new pid each time: {pids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upgrade_leaves_the_old_process_serving() {
    let a = Backend::start("a").await;
    let admin = free_port();
    let f = Fulcrum::start(&pool_yaml("round_robin", &[(&a, 1)], admin)).await;
    // The new binary refuses an invalid configuration before touching the sockets.
    let good = std::fs::read_to_string(f.conf_path()).unwrap();
    std::fs::write(f.conf_path(), "pools: {p: {backends: []}}\n").unwrap();
    let out = std::process::Command::new(BIN)
        .arg("-c")
        .arg(f.conf_path())
        .arg("-u")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    std::fs::write(f.conf_path(), good).unwrap();
    assert_eq!(get(&client(), &f.url("/")).await, (200, "a".to_string()));

    // A new process whose old one never hands over (no SIGQUIT) gives up and exits non-zero,
    // leaving the old one serving.
    let started = Instant::now();
    let out = std::process::Command::new(BIN)
        .arg("-c")
        .arg(f.conf_path())
        .arg("-u")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(get(&client(), &f.url("/")).await, (200, "a".to_string()));
}

/// Kills a daemonized fulcrum (not our child) by the pid in its pid file.
struct Daemon(std::path::PathBuf);

impl Daemon {
    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.0).ok()?.trim().parse().ok()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_units_reload_sequence_upgrades_a_daemon_without_a_failed_request() {
    let a = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let yaml = format!(
        "{}  error_log: {}/error.log\nlisteners: [{{name: main, listen: 127.0.0.1:{port}}}]\nroutes: [{{pool: p}}]\npools:\n  p: {{backends: [{{address: \"{}\"}}]}}\n",
        Fulcrum::server_block(dir.path()),
        dir.path().display(),
        a.addr
    );
    let conf = dir.path().join("fulcrum.yaml");
    std::fs::write(&conf, yaml).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .arg("-c")
            .arg(&conf)
            .args(args)
            .output()
            .unwrap();
        if !out.status.success() {
            eprintln!(
                "fulcrum {args:?}: {}\n{}\nerror.log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
            );
        }
        out.status
    };
    // ExecStart: fulcrum -d returns once the daemon is up.
    assert!(run(&["-d"]).success());
    let daemon = Daemon(dir.path().join("fulcrum.pid"));
    wait_for(Duration::from_secs(10), "pid file", || {
        daemon.pid().is_some()
    })
    .await;
    let old = daemon.pid().unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    wait_for_async(Duration::from_secs(10), "daemon serving", || async {
        client()
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let load = Load::start(url, 3);
    wait_for(Duration::from_secs(5), "traffic", || a.hits() > 50).await;

    // ExecReload: -t, then -d -u (returns when the new process waits for the sockets), then QUIT.
    assert!(run(&["-t"]).success());
    assert!(run(&["-d", "-u"]).success());
    let kill = std::process::Command::new("kill")
        .args(["-QUIT", &old.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    wait_for(Duration::from_secs(20), "old daemon gone", || !alive(old)).await;
    let new = daemon.pid().expect("new pid file");
    assert_ne!(new, old);
    assert!(alive(new));
    let sent = load.sent();
    wait_for(Duration::from_secs(5), "new daemon serving", || {
        load.sent() > sent + 50
    })
    .await;
    let (sent, failures) = load.finish().await;
    eprintln!("daemon upgrade: {sent} requests, {} failed", failures.len());
    assert!(failures.is_empty(), "{failures:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_process_exits_when_its_requests_are_done_not_at_the_end_of_the_grace_period() {
    let slow = Backend::start_with("slow", Behaviour::Delay(Duration::from_millis(1500))).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = dir.path().join("access.log");
    let yaml = format!(
        "{}access_log: {{path: {}}}\nlisteners:\n  - name: main\n    listen: 127.0.0.1:{port}\nroutes: [{{pool: p}}]\npools:\n  p: {{backends: [{{address: \"{}\"}}]}}\n",
        Fulcrum::server_block(dir.path()).replace("grace_period_seconds: 0", "grace_period_seconds: 20"),
        log.display(),
        slow.addr
    );
    let mut f = Fulcrum::start_yaml(dir, port, &yaml).await;
    // An idle keep-alive connection and a request in flight when SIGTERM arrives.
    let idle = client();
    assert_eq!(get(&idle, &f.url("/")).await.0, 200);
    let url = f.url("/in-flight");
    let in_flight = tokio::spawn(async move { get(&client(), &url).await.0 });
    wait_for(Duration::from_secs(5), "request in flight", || {
        slow.hits() == 2
    })
    .await;
    let stopped = Instant::now();
    f.signal("TERM");
    let status = loop {
        if let Ok(Some(status)) = f.child.try_wait() {
            break status;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(15),
            "still running long after its requests were done"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = stopped.elapsed();
    assert!(status.success(), "{status}");
    assert_eq!(
        in_flight.await.unwrap(),
        200,
        "the in-flight request was answered"
    );
    assert!(
        took < Duration::from_secs(10),
        "exited {took:?} after SIGTERM, with a 20 s grace period and 1.5 s of work"
    );
    let lines = std::fs::read_to_string(&log).unwrap();
    assert!(
        lines.contains("\"path\":\"/in-flight\""),
        "the last request's access-log line was written before exiting:\n{lines}"
    );
    assert!(f.log().contains("every connection done"), "{}", f.log());
}

/// A keep-alive connection that has been idle for less than a second when SIGTERM arrives
/// is not yet in the registry of idle connections that the shutdown closes. It still gets its
/// next request answered. The server then closes it: when the second of idleness ends, or at
/// once with `Connection: close` if the stop is seen first. The process then exits, long
/// before its 20 s grace period. A connection that never closed would keep the process up for
/// the whole grace period; a second one, idle under a second and sending nothing, checks that
/// such a connection is closed when its second ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_process_answers_a_connection_idle_under_a_second_then_closes_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let yaml = format!(
        "{}listeners:\n  - name: main\n    listen: 127.0.0.1:{port}\nroutes: [{{pool: p}}]\npools:\n  p: {{backends: [{{address: \"{}\"}}]}}\n",
        Fulcrum::server_block(dir.path()).replace("grace_period_seconds: 0", "grace_period_seconds: 20"),
        b.addr
    );
    let mut f = Fulcrum::start_yaml(dir, port, &yaml).await;
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    conn.write_all(b"GET /one HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let first = read_response(&mut conn).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // A second connection, as just idle, that sends nothing more: the stop must close it when
    // its first second of idleness ends (it is not in the registry the stop empties yet).
    let mut quiet = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    quiet
        .write_all(b"GET /quiet HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let answered = read_response(&mut quiet).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");

    let stopped = Instant::now();
    f.signal("TERM");
    conn.write_all(b"GET /two HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let second = read_response(&mut conn).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "the server did not close the connection within 10 s: {closed:?}, {rest:?}"
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), quiet.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "the server did not close the quiet connection within 10 s: {closed:?}, {rest:?}"
    );
    let limit = Duration::from_secs(10).saturating_sub(stopped.elapsed());
    wait_for(limit, "the process to exit after SIGTERM", || {
        matches!(f.child.try_wait(), Ok(Some(_)))
    })
    .await;
    let status = f.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(b.hits(), 3, "every request reached the backend");
}
