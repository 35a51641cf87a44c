//! systemd's notification protocol against a real notify socket: the test binds a unix datagram
//! socket in a temp dir and gives it to the real binary as NOTIFY_SOCKET, as systemd does.
//! READY=1 once the listener accepts, RELOADING=1 / READY=1 around SIGHUP, WATCHDOG=1 pings,
//! STOPPING=1, and MAINPID= of the new process during graceful upgrades (foreground and the
//! unit's daemon sequence).

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
use tokio::net::UnixDatagram;

/// The notify socket a test listens on, with every message received so far.
struct NotifySocket {
    path: PathBuf,
    socket: UnixDatagram,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        NotifySocket {
            path,
            socket,
            seen: Vec::new(),
        }
    }

    /// The next message that satisfies `pred` (earlier ones are kept in `seen`).
    async fn expect(&mut self, what: &str, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        let mut buf = vec![0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let got = tokio::time::timeout(left, self.socket.recv(&mut buf)).await;
            let Ok(Ok(n)) = got else {
                panic!("no {what} within {limit:?}; got {:?}", self.seen);
            };
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.seen.push(msg.clone());
            if pred(&msg) {
                return msg;
            }
        }
    }
}

fn has_line(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

fn field<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

fn monotonic_usec() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000
}

/// A configuration with one listener on `port` in front of `backend`, its files in `dir`.
fn write_conf(dir: &Path, port: u16, backend: &Backend) -> PathBuf {
    let yaml = format!(
        "{}  error_log: {}/error.log\nlisteners: [{{name: main, listen: 127.0.0.1:{port}}}]\nroutes: [{{pool: p}}]\npools:\n  p: {{backends: [{{address: \"{}\"}}]}}\n",
        Fulcrum::server_block(dir),
        dir.display(),
        backend.addr
    );
    let conf = dir.join("fulcrum.yaml");
    std::fs::write(&conf, yaml).unwrap();
    conf
}

/// `fulcrum -c CONF ARGS..` with NOTIFY_SOCKET (and `env`), its output appended to `log`.
fn command(conf: &Path, notify: &Path, log: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut c = Command::new(BIN);
    c.arg("-c")
        .arg(conf)
        .args(args)
        .env("NOTIFY_SOCKET", notify)
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("MAINPID")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    c
}

/// A process killed on drop: a foreground child, or a daemon known by its pid.
enum Proc {
    Child(Child),
    Pid(u32),
}

impl Proc {
    fn pid(&self) -> u32 {
        match self {
            Proc::Child(c) => c.id(),
            Proc::Pid(p) => *p,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        match self {
            Proc::Child(c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
            Proc::Pid(p) => {
                let _ = Command::new("kill")
                    .args(["-KILL", &p.to_string()])
                    .status();
            }
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_once_listening_reloading_around_sighup_watchdog_and_stopping() {
    let a = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let mut notify = NotifySocket::bind(dir.path());
    let port = free_port();
    let conf = write_conf(dir.path(), port, &a);
    let log = dir.path().join("fulcrum.log");
    let child = command(
        &conf,
        &notify.path,
        &log,
        &[],
        &[("WATCHDOG_USEC", "300000")],
    )
    .spawn()
    .unwrap();
    let f = Proc::Child(child);

    let ready = notify
        .expect("READY=1", LIMIT, |m| has_line(m, "READY=1"))
        .await;
    // The listener accepts, and serves, as soon as READY=1 arrives.
    let connected = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
    assert!(connected.is_ok(), "READY=1 before the listener accepts");
    let url = format!("http://127.0.0.1:{port}/");
    assert_eq!(get(&client(), &url).await, (200, "a".to_string()));
    assert_eq!(field(&ready, "MAINPID"), Some(f.pid().to_string().as_str()));
    assert!(field(&ready, "STATUS").is_some(), "{ready}");

    // The watchdog: pings at half of WATCHDOG_USEC (150 ms).
    let start = Instant::now();
    for _ in 0..4 {
        notify
            .expect("WATCHDOG=1", Duration::from_secs(5), |m| m == "WATCHDOG=1")
            .await;
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "4 pings in {took:?}"
    );

    // SIGHUP with a valid file: RELOADING=1 with the monotonic time, then READY=1.
    let before = monotonic_usec();
    signal(f.pid(), "HUP");
    let reloading = notify
        .expect("RELOADING=1", LIMIT, |m| has_line(m, "RELOADING=1"))
        .await;
    let after = monotonic_usec();
    let at: u64 = field(&reloading, "MONOTONIC_USEC")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("MONOTONIC_USEC in {reloading:?}"));
    assert!(before <= at && at <= after, "{before} <= {at} <= {after}");
    let done = notify
        .expect("READY=1 after the reload", LIMIT, |m| {
            has_line(m, "READY=1")
        })
        .await;
    assert!(
        field(&done, "STATUS").unwrap().contains("applied"),
        "{done}"
    );

    // An invalid file: refused, and still READY=1 (the old configuration serves).
    std::fs::write(&conf, "pools: {p: {backends: []}}\n").unwrap();
    signal(f.pid(), "HUP");
    notify
        .expect("RELOADING=1", LIMIT, |m| has_line(m, "RELOADING=1"))
        .await;
    let refused = notify
        .expect("READY=1 after the refused reload", LIMIT, |m| {
            has_line(m, "READY=1")
        })
        .await;
    assert!(
        field(&refused, "STATUS").unwrap().contains("refused"),
        "{refused}"
    );
    assert_eq!(get(&client(), &url).await, (200, "a".to_string()));

    // SIGTERM: STOPPING=1.
    signal(f.pid(), "TERM");
    notify
        .expect("STOPPING=1", LIMIT, |m| has_line(m, "STOPPING=1"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_tells_the_new_main_pid_before_the_old_process_exits() {
    let a = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let mut notify = NotifySocket::bind(dir.path());
    let port = free_port();
    let conf = write_conf(dir.path(), port, &a);
    let log = dir.path().join("fulcrum.log");
    let mut old = command(&conf, &notify.path, &log, &[], &[])
        .spawn()
        .unwrap();
    let old_pid = old.id();
    notify
        .expect("READY=1", LIMIT, |m| has_line(m, "READY=1"))
        .await;

    // As tests/common's upgrade: start `-u`, wait for its upgrade socket, QUIT the old one.
    let sock = dir.path().join("upgrade.sock");
    let _ = std::fs::remove_file(&sock);
    let new = Proc::Child(
        command(&conf, &notify.path, &log, &["-u"], &[])
            .spawn()
            .unwrap(),
    );
    wait_for(Duration::from_secs(10), "the upgrade socket", || {
        sock.exists()
    })
    .await;
    signal(old_pid, "QUIT");
    let main = format!("MAINPID={}", new.pid());
    let msg = notify
        .expect("MAINPID= of the new process", LIMIT, |m| has_line(m, &main))
        .await;
    assert!(has_line(&msg, "READY=1"), "{msg}");
    assert!(
        old.try_wait().unwrap().is_none(),
        "the old process exited before systemd learnt the new main pid"
    );
    assert_eq!(
        get(&client(), &format!("http://127.0.0.1:{port}/")).await,
        (200, "a".to_string())
    );
    let _ = old.kill();
    let _ = old.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_units_reload_sequence_hands_the_main_pid_over_and_keeps_the_journal() {
    let a = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let mut notify = NotifySocket::bind(dir.path());
    let port = free_port();
    let conf = write_conf(dir.path(), port, &a);
    // No error_log: a daemon's stderr goes back to what systemd gave it (the journal).
    let yaml = std::fs::read_to_string(&conf).unwrap();
    let yaml: String = yaml
        .lines()
        .filter(|l| !l.contains("error_log"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&conf, yaml).unwrap();
    let journal = dir.path().join("journal.log");
    let pid_file = dir.path().join("fulcrum.pid");
    let read_pid =
        || -> Option<u32> { std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok() };

    // ExecStart of a daemon: the daemon (not the command) says READY=1 with its pid.
    let status = command(&conf, &notify.path, &journal, &["-d"], &[])
        .status()
        .unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&journal).unwrap_or_default()
    );
    let old = Proc::Pid(read_pid().expect("pid file"));
    let ready = notify
        .expect("READY=1", LIMIT, |m| has_line(m, "READY=1"))
        .await;
    assert_eq!(
        field(&ready, "MAINPID"),
        Some(old.pid().to_string().as_str())
    );

    // ExecReload: -d -u (returns once the new daemon waits), then kill -QUIT $MAINPID, with
    // MAINPID in the environment as systemd sets it for ExecReload commands.
    let main_pid = old.pid().to_string();
    let status = command(
        &conf,
        &notify.path,
        &journal,
        &["-d", "-u"],
        &[("MAINPID", main_pid.as_str())],
    )
    .status()
    .unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&journal).unwrap_or_default()
    );
    let new = Proc::Pid(read_pid().expect("new pid file"));
    assert_ne!(new.pid(), old.pid());
    signal(old.pid(), "QUIT");

    // The old (main) process names its successor, which NotifyAccess=main accepts ...
    let main = format!("MAINPID={}", new.pid());
    let handed = notify
        .expect("MAINPID= from the old process", LIMIT, |m| {
            has_line(m, &main) && !has_line(m, "READY=1")
        })
        .await;
    assert!(
        field(&handed, "STATUS").unwrap().contains("handed"),
        "{handed}"
    );
    assert!(alive(old.pid()), "the old process exited first");
    // ... and the new one says READY=1 with its own pid once it serves.
    notify
        .expect("READY=1 from the new process", LIMIT, |m| {
            has_line(m, &main) && has_line(m, "READY=1")
        })
        .await;
    assert_eq!(
        get(&client(), &format!("http://127.0.0.1:{port}/")).await,
        (200, "a".to_string())
    );
    // The new daemon still writes to the stderr it was started with.
    let said = format!("systemd: ready (MAINPID={})", new.pid());
    wait_for(Duration::from_secs(5), "the new daemon's log line", || {
        std::fs::read_to_string(&journal).is_ok_and(|j| j.contains(&said))
    })
    .await;
}
