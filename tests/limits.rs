//! Listener limits against real slow and greedy clients: a header that trickles in is cut at
//! `header_timeout`, a body that stalls at `body_timeout`, oversized headers get 431, one
//! address or one listener cannot hold more connections than allowed, idle connections make
//! room near the file-descriptor limit, and an h2c listener answers short HTTP/1 requests.
//! Every cut is counted in `fulcrum_limit_total`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// fulcrum with one listener (`keys` added to it) and pool `p` of `backend`, with admin.
async fn start(admin: &Admin, keys: &str, backend: &Backend) -> Fulcrum {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let yaml = format!(
        "{}{}listeners:\n  - name: main\n    listen: 127.0.0.1:{port}\n{keys}routes: [{{pool: p}}]\npools:\n  p: {{backends: [{{address: \"{}\"}}]}}\n",
        Fulcrum::server_block(dir.path()),
        admin.yaml(),
        backend.addr
    );
    Fulcrum::start_yaml(dir, port, &yaml).await
}

fn addr(f: &Fulcrum) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], f.port))
}

/// A connection to `to` from the loopback address `from`.
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    socket.connect(to).await.unwrap()
}

/// Whether the server closed `s` (end of stream or reset) within `limit`, reading and
/// dropping whatever it sent before.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// The whole response to one request written on a fresh connection, as text.
async fn exchange(to: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(to).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn limit_count(admin: &Admin, limit: &str) -> f64 {
    admin
        .metric(
            "fulcrum_limit_total",
            &[("listener", "main"), ("limit", limit)],
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_that_trickles_in_is_cut_at_header_timeout() {
    let b = Backend::start("b").await;
    let admin = Admin::new();
    let f = start(&admin, "    header_timeout: 1s\n", &b).await;
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..40 {
        let mut s = TcpStream::connect(addr(&f)).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
        slow.push(s);
    }
    // Keep every one trickling a header byte every 200 ms (each read resets a per-read timer,
    // not the header's deadline) until it is cut; count the cut ones.
    let mut cut = 0;
    let deadline = started + Duration::from_secs(4);
    while cut < slow.len() && Instant::now() < deadline {
        cut = 0;
        for s in &mut slow {
            if s.write_all(b"x").await.is_err() || closed_within(s, Duration::from_millis(5)).await
            {
                cut += 1;
            }
        }
        // A client that sends its request whole is served meanwhile.
        assert_eq!(get(&client(), &f.url("/")).await.0, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = started.elapsed();
    assert_eq!(cut, 40, "{cut} of 40 trickling clients cut after {took:?}");
    assert!(
        took >= Duration::from_millis(900),
        "cut too early: {took:?}"
    );
    assert_eq!(limit_count(&admin, "header_timeout").await, 40.0);
    assert!(
        !f.log().contains("ERROR"),
        "cutting slow clients is routine, not an error:\n{}",
        f.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_cut_at_body_timeout() {
    let b = Backend::start("b").await;
    let admin = Admin::new();
    let f = start(&admin, "    body_timeout: 1s\n", &b).await;
    let mut s = TcpStream::connect(addr(&f)).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nab")
        .await
        .unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(4)).await);
    let took = started.elapsed();
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(3)).contains(&took),
        "{took:?}"
    );
    wait_for_async(Duration::from_secs(2), "body_timeout counted", || async {
        limit_count(&admin, "body_timeout").await == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let b = Backend::start("b").await;
    let admin = Admin::new();
    let f = start(
        &admin,
        "    max_header_bytes: 2048\n    max_headers: 10\n",
        &b,
    )
    .await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "y".repeat(3000)
    );
    let resp = exchange(addr(&f), big.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    let many: String = (0..11).map(|i| format!("X-H{i}: v\r\n")).collect();
    let resp = exchange(
        addr(&f),
        format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    let fine: String = (0..8).map(|i| format!("X-H{i}: v\r\n")).collect();
    let resp = exchange(
        addr(&f),
        format!("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{fine}\r\n").as_bytes(),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(
        b.hits(),
        1,
        "the oversized requests never reached the backend"
    );
    assert_eq!(limit_count(&admin, "max_header_bytes").await, 1.0);
    assert_eq!(limit_count(&admin, "max_headers").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_and_one_listener_hold_at_most_their_share() {
    let b = Backend::start("b").await;
    let admin = Admin::new();
    let f = start(
        &admin,
        "    max_connections_per_ip: 3\n    max_connections: 5\n",
        &b,
    )
    .await;
    let to = addr(&f);
    // Three idle connections from 127.0.0.5 are held; the fourth and fifth are closed at once.
    // (127.0.0.1 is left to the start-up probe, which holds a place for a moment.)
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from([127, 0, 0, 5], to).await);
    }
    for _ in 0..2 {
        let mut extra = connect_from([127, 0, 0, 5], to).await;
        assert!(closed_within(&mut extra, Duration::from_secs(2)).await);
    }
    for s in &mut held {
        assert!(
            !closed_within(s, Duration::from_millis(50)).await,
            "held ones stay"
        );
    }
    assert_eq!(limit_count(&admin, "max_connections_per_ip").await, 2.0);
    // Other addresses have places of their own, up to the listener's five in all.
    let mut others = Vec::new();
    let refused_at = loop {
        assert!(
            others.len() < 5,
            "the listener held {} connections",
            3 + others.len()
        );
        let mut s = connect_from([127, 0, 0, 10 + others.len() as u8], to).await;
        if closed_within(&mut s, Duration::from_millis(300)).await {
            break 3 + others.len();
        }
        others.push(s);
    };
    assert!(
        (4..=5).contains(&refused_at),
        "refused with {refused_at} held"
    );
    assert_eq!(limit_count(&admin, "max_connections").await, 1.0);
    // A closed connection frees its place.
    drop(held.pop());
    wait_for_async(Duration::from_secs(3), "a place freed", || async {
        let mut s = connect_from([127, 0, 0, 5], to).await;
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .is_ok()
            && {
                let mut out = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut out)).await;
                out.starts_with(b"HTTP/1.1 200")
            }
    })
    .await;
}

/// fulcrum with listener `main` in front of `b`, under a limit of `files` descriptors.
async fn start_with_files(admin: &Admin, b: &Backend, files: u64) -> Fulcrum {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let yaml = format!(
        "{}{}listeners:\n  - name: main\n    listen: 127.0.0.1:{port}\nroutes: [{{pool: p}}]\npools:\n  p: {{backends: [{{address: \"{}\"}}]}}\n",
        Fulcrum::server_block(dir.path()),
        admin.yaml(),
        b.addr
    );
    Fulcrum::start_yaml_with_files(dir, port, &yaml, files).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_make_room_near_the_file_descriptor_limit() {
    let b = Backend::start("b").await;
    let admin = Admin::new();
    // 512 descriptors, ~60 of them fulcrum's own: it holds about 390 client connections
    // before it closes idle ones to make room.
    let f = start_with_files(&admin, &b, 512).await;
    let to = addr(&f);
    // 200 old idle connections, then 150 younger ones; both must have been idle over a second
    // (fulcrum only closes those): these waits are the behaviour under test.
    let mut old = Vec::new();
    for _ in 0..200 {
        old.push(TcpStream::connect(to).await.unwrap());
    }
    let opened = Instant::now();
    wait_for(Duration::from_secs(5), "old ones idle a while", || {
        opened.elapsed() > Duration::from_millis(1500)
    })
    .await;
    let mut young = Vec::new();
    for _ in 0..150 {
        young.push(TcpStream::connect(to).await.unwrap());
    }
    let opened = Instant::now();
    wait_for(
        Duration::from_secs(3),
        "young ones idle for over a second",
        || opened.elapsed() > Duration::from_millis(1100),
    )
    .await;
    // New clients, each on a connection of its own, keep being served, each making room; the
    // connections they leave open push the count past the soft cap.
    let mut newest = Vec::new();
    let mut served = 0;
    for _ in 0..80 {
        let resp = exchange(
            to,
            b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await;
        if resp.starts_with("HTTP/1.1 200") {
            served += 1;
        }
        newest.push(TcpStream::connect(to).await.unwrap());
    }
    assert_eq!(served, 80, "new clients served near the limit");
    let closed = limit_count(&admin, "idle_closed").await;
    // The closes fulcrum counted reach these sockets a moment later.
    let (mut old_closed, mut young_closed) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        old_closed = closed_count(&mut old);
        young_closed = closed_count(&mut young);
        if (old_closed + young_closed) as f64 >= closed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "idle_closed {closed}: {old_closed} of 200 old, {young_closed} of 150 young connections closed"
    );
    assert!(
        old_closed >= 1,
        "idle connections closed to make room: {closed}"
    );
    // Oldest first: a younger one closes only once every older one has.
    assert!(
        young_closed == 0 || old_closed == old.len(),
        "{young_closed} young connections closed while {} old ones stayed open",
        old.len() - old_closed
    );
    assert!(
        !f.log().contains("Too many open files") && !f.log().contains("Accept() failed"),
        "{}",
        f.log()
    );
}

/// Past the hard cap (what fulcrum does not hold itself, less half the upstream reserve) with no connection idle long enough
/// to close, new connections are closed at once (`open_files`), and accept() never fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_hard_cap_are_closed_at_once() {
    let b = Backend::start("b").await;
    let admin = Admin::new();
    // 512 descriptors: the hard cap is what fulcrum does not hold itself (~60) less 32.
    let f = start_with_files(&admin, &b, 512).await;
    let to = addr(&f);
    // Opened at once, so none has been idle the second that would let it close to make room.
    let mut held = Vec::new();
    for _ in 0..460 {
        held.push(TcpStream::connect(to).await.unwrap());
    }
    // The process is at its descriptor limit meanwhile (the admin listener too): what the
    // clients see first, fulcrum's count once they let go.
    // Poll until the count has held still for half a second (every refusal has arrived).
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut closed = closed_count(&mut held);
    let mut still_since = Instant::now();
    while Instant::now() < deadline
        && (closed < 20 || still_since.elapsed() < Duration::from_millis(500))
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now_closed = closed_count(&mut held);
        if now_closed != closed {
            closed = now_closed;
            still_since = Instant::now();
        }
    }
    assert!(
        closed >= 20,
        "{closed} of 460 connections closed by fulcrum"
    );
    drop(held);
    wait_for_async(Duration::from_secs(5), "served again", || async {
        exchange(
            to,
            b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await
        .starts_with("HTTP/1.1 200")
    })
    .await;
    let refused = limit_count(&admin, "open_files").await;
    // Every connection past the cap was refused and closed at once, none left in the accept
    // queue; the cap itself depends on what fulcrum holds (~60 to ~120 with more threads).
    assert!(
        refused >= 20.0 && refused == closed as f64,
        "{refused} connections refused past the hard cap, {closed} of 460 closed"
    );
    assert!(
        !f.log().contains("Too many open files") && !f.log().contains("Accept() failed"),
        "{}",
        f.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_listener_answers_short_http1_requests() {
    let b = Backend::start("b").await;
    let admin = Admin::new();
    let f = start(&admin, "    h2c: true\n", &b).await;
    for request in [
        &b"GET / HTTP/1.0\r\n\r\n"[..],
        b"PUT / HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
        b"POST / HTTP/1.0\r\n\r\n",
    ] {
        let started = Instant::now();
        let resp = exchange(addr(&f), request).await;
        assert!(
            resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.0 200"),
            "{:?}: {resp}",
            String::from_utf8_lossy(request)
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_a_listeners_limits_in_place() {
    let b = Backend::start("b").await;
    let admin = Admin::new();
    let f = start(&admin, "    max_connections_per_ip: 1\n", &b).await;
    let to = addr(&f);
    let _held = connect_from([127, 0, 0, 7], to).await;
    let mut second = connect_from([127, 0, 0, 7], to).await;
    assert!(closed_within(&mut second, Duration::from_secs(2)).await);
    let yaml = std::fs::read_to_string(f.conf_path())
        .unwrap()
        .replace("max_connections_per_ip: 1", "max_connections_per_ip: 2");
    std::fs::write(f.conf_path(), yaml).unwrap();
    f.signal("HUP");
    wait_for(Duration::from_secs(5), "reload applied", || {
        f.log().contains("reload: applied")
    })
    .await;
    assert!(!f.log().contains("needs a graceful upgrade"), "{}", f.log());
    let mut third = connect_from([127, 0, 0, 7], to).await;
    assert!(
        !closed_within(&mut third, Duration::from_millis(300)).await,
        "a second connection from the address is held once the limit is 2"
    );
    assert_eq!(limit_count(&admin, "max_connections_per_ip").await, 1.0);
}

/// How many of `conns` the server has closed: EOF or an error on a read that does not wait.
fn closed_count(conns: &mut [TcpStream]) -> usize {
    let mut buf = [0u8; 64];
    conns
        .iter_mut()
        .filter(|s| match s.try_read(&mut buf) {
            Ok(n) => n == 0,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        })
        .count()
}
