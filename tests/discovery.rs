//! Fleets that change by themselves: backends given by DNS name (A/AAAA) and by SRV record,
//! against a real DNS server the test runs and changes while traffic flows. Traffic follows
//! the records by share with no failed request; a DNS server that goes away leaves the last
//! set serving; a name unresolvable at start joins once it resolves; a reload keeps the set.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::dns::{DnsServer, Srv};
use common::*;

/// The fast active check of the other suites.
const CHECK: &str =
    "{http: {path: /healthz}, interval: 200ms, timeout: 150ms, healthy_threshold: 1, unhealthy_threshold: 2}";

/// Requests sent one after another until stopped: each one's status and backend, in order.
struct Traffic {
    seen: Arc<Mutex<Vec<(u16, String)>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(url: String) -> Traffic {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let c = client();
            // Bounded: at most 200k requests, far more than any test waits for.
            for _ in 0..200_000 {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let got = match c.get(&url).send().await {
                    Ok(r) => (r.status().as_u16(), backend_of(&r)),
                    Err(e) => (0, format!("error: {e}")),
                };
                s.lock().unwrap().push(got);
            }
        });
        Traffic { seen, stop, task }
    }

    fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The results from index `from` on.
    fn since(&self, from: usize) -> Vec<(u16, String)> {
        self.seen.lock().unwrap()[from..].to_vec()
    }

    /// Wait until `n` more requests than `from` were answered; their backends' tally.
    async fn window(&self, n: usize) -> std::collections::BTreeMap<String, usize> {
        let from = self.len();
        wait_for(Duration::from_secs(20), &format!("{n} requests"), || {
            self.len() >= from + n
        })
        .await;
        let got = self.since(from);
        let names: Vec<String> = got[..n].iter().map(|(_, b)| b.clone()).collect();
        tally(&names)
    }

    /// Wait until the last `n` answers satisfy `cond` (e.g. a backend seen / no longer seen).
    /// Returns how long it took (printed: the time DNS changes take to reach traffic).
    async fn until(
        &self,
        what: &str,
        n: usize,
        cond: impl Fn(&[(u16, String)]) -> bool,
    ) -> Duration {
        let from = self.len();
        let took = wait_for(Duration::from_secs(15), what, || {
            let got = self.since(from);
            got.len() >= n && cond(&got[got.len() - n..])
        })
        .await;
        eprintln!("{what}: {took:?}");
        took
    }

    /// Stop and return every result.
    async fn finish(self) -> Vec<(u16, String)> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        self.seen.lock().unwrap().clone()
    }
}

/// Every request was answered 200 by a backend.
fn assert_all_ok(results: &[(u16, String)]) {
    let failed: Vec<_> = results.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, first: {:?}",
        failed.len(),
        results.len(),
        failed.first()
    );
}

/// `count` is `share` of `total`, give or take 3 points.
fn assert_share(tally: &std::collections::BTreeMap<String, usize>, name: &str, share: f64) {
    let total: usize = tally.values().sum();
    let got = tally.get(name).copied().unwrap_or(0) as f64 / total as f64;
    assert!(
        (got - share).abs() <= 0.03,
        "{name}: share {got:.3}, expected {share:.3}: {tally:?}"
    );
}

/// `promtool check metrics` passes on `text`.
fn promtool_accepts(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (make test installs Debian's prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("fulcrum_dns_resolutions_total{pool=\"web\",result=\"failure\"}"));
}

/// Backends on 127.0.0.2.., all on one port: the addresses of one name.
async fn same_port_backends(names: &[&str]) -> (u16, Vec<Backend>) {
    // Bounded: a few tries to find a port free on every address.
    for _ in 0..20 {
        let first = Backend::start_on(
            names[0],
            SocketAddr::from(([127, 0, 0, 2], 0)),
            Behaviour::Normal,
        )
        .await;
        let port = first.addr.port();
        let mut all = vec![first];
        for (i, n) in names.iter().enumerate().skip(1) {
            let addr = SocketAddr::from(([127, 0, 0, 2 + i as u8], port));
            if std::net::TcpListener::bind(addr).is_err() {
                break;
            }
            all.push(Backend::start_on(n, addr, Behaviour::Normal).await);
        }
        if all.len() == names.len() {
            return (port, all);
        }
    }
    panic!("no port free on 127.0.0.2..");
}

fn ip(b: &Backend) -> IpAddr {
    b.addr.ip()
}

fn body(dns: &DnsServer, admin: &Admin, pool: &str) -> String {
    format!(
        "resolvers: [\"{}\"]\n{}routes: [{{pool: web}}]\npools:\n  web:\n{pool}",
        dns.addr,
        admin.yaml()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_join_and_leave_while_traffic_flows() {
    let (port, b) = same_port_backends(&["b1", "b2", "b3"]).await;
    let dns = DnsServer::start(0).await;
    dns.set_host("app.test", &[ip(&b[0]), ip(&b[1])]);
    let admin = Admin::new();
    let pool = format!(
        "    backends: [{{address: \"app.test:{port}\"}}]\n    health_check: {CHECK}\n    discover: {{min_ttl: 100ms, max_ttl: 1s}}\n"
    );
    let f = Fulcrum::start(&body(&dns, &admin, &pool)).await;
    let t = Traffic::start(f.url("/"));

    // Both addresses of the name share the traffic.
    t.until("b1 and b2 serve", 20, |w| {
        w.iter().any(|(_, n)| n == "b1") && w.iter().any(|(_, n)| n == "b2")
    })
    .await;
    let shares = t.window(300).await;
    assert_share(&shares, "b1", 0.5);
    assert_share(&shares, "b2", 0.5);

    // A third record: the new address is checked, then takes a third.
    dns.set_host("app.test", &[ip(&b[0]), ip(&b[1]), ip(&b[2])]);
    t.until("b3 joins", 30, |w| w.iter().any(|(_, n)| n == "b3"))
        .await;
    let shares = t.window(300).await;
    for n in ["b1", "b2", "b3"] {
        assert_share(&shares, n, 1.0 / 3.0);
    }
    let name = format!("app.test:{port}/{}", b[2].addr);
    let entry = admin.backend("web", &name).await;
    assert_eq!(entry["address"], b[2].addr.to_string(), "{entry}");

    // A reload keeps what was discovered (no request fails, b3 stays).
    let reloads = admin
        .metric("fulcrum_config_reloads_total", &[("result", "success")])
        .await;
    f.rewrite(&body(&dns, &admin, &pool.replace("1s}", "2s}")));
    f.signal("HUP");
    wait_for_async(Duration::from_secs(10), "the reload", || async {
        admin
            .metric("fulcrum_config_reloads_total", &[("result", "success")])
            .await
            > reloads
    })
    .await;
    let shares = t.window(150).await;
    assert!(shares.get("b3").copied().unwrap_or(0) >= 40, "{shares:?}");

    // A record removed: its address gets no new requests, the others share.
    dns.set_host("app.test", &[ip(&b[1]), ip(&b[2])]);
    t.until("b1 leaves", 50, |w| w.iter().all(|(_, n)| n != "b1"))
        .await;
    let shares = t.window(300).await;
    assert_eq!(shares.get("b1"), None, "{shares:?}");
    assert_share(&shares, "b2", 0.5);
    assert_share(&shares, "b3", 0.5);

    let all = t.finish().await;
    assert_all_ok(&all);
    let status = admin.status().await;
    let d = &status["pools"]["web"]["discovery"];
    assert_eq!(d["result"], "success", "{d}");
    assert_eq!(d["records"], 2, "{d}");
    assert!(
        admin
            .metric(
                "fulcrum_dns_resolutions_total",
                &[("pool", "web"), ("result", "success")]
            )
            .await
            >= 3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_weights_steer_traffic_and_a_lost_dns_server_keeps_the_set() {
    let x = Backend::start("x").await;
    let y = Backend::start("y").await;
    let dns = DnsServer::start(0).await;
    let srv = |wx: u16, wy: u16| {
        [
            Srv {
                priority: 10,
                weight: wx,
                port: x.addr.port(),
                target: "node.test".into(),
            },
            Srv {
                priority: 10,
                weight: wy,
                port: y.addr.port(),
                target: "node.test".into(),
            },
        ]
    };
    dns.set_host("node.test", &[IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    dns.set_srv("_http._tcp.app.test", &srv(1, 3));
    let admin = Admin::new();
    let pool = "    discover: {srv: _http._tcp.app.test, min_ttl: 100ms, max_ttl: 1s}\n";
    let f = Fulcrum::start(&body(&dns, &admin, pool)).await;
    let t = Traffic::start(f.url("/"));

    // Weights 1:3, by the records.
    t.until("x and y serve", 20, |w| {
        w.iter().any(|(_, n)| n == "x") && w.iter().any(|(_, n)| n == "y")
    })
    .await;
    let shares = t.window(400).await;
    assert_share(&shares, "x", 0.25);
    assert_share(&shares, "y", 0.75);

    // Re-weighted to 3:1 (weight 0 counts as 1: 0 and 2 give 1:2).
    dns.set_srv("_http._tcp.app.test", &srv(3, 1));
    let status_name = format!("_http._tcp.app.test/{}", x.addr);
    wait_for_async(Duration::from_secs(10), "x weighs 3", || async {
        admin.backend("web", &status_name).await["weight"] == 3
    })
    .await;
    let shares = t.window(400).await;
    assert_share(&shares, "x", 0.75);
    assert_share(&shares, "y", 0.25);
    dns.set_srv("_http._tcp.app.test", &srv(0, 2));
    wait_for_async(Duration::from_secs(10), "x weighs 1", || async {
        admin.backend("web", &status_name).await["weight"] == 1
    })
    .await;
    let shares = t.window(300).await;
    assert_share(&shares, "x", 1.0 / 3.0);

    // The DNS server goes away: resolutions fail, the pool keeps both backends.
    dns.stop();
    wait_for_async(Duration::from_secs(15), "a failed resolution", || async {
        admin
            .metric(
                "fulcrum_dns_resolutions_total",
                &[("pool", "web"), ("result", "failure")],
            )
            .await
            >= 2.0
    })
    .await;
    let status = admin.status().await;
    let d = &status["pools"]["web"]["discovery"];
    assert_eq!(d["result"], "failure", "{d}");
    assert_eq!(d["sources"][0]["in_use"], 2, "{d}");
    assert_eq!(
        status["pools"]["web"]["backends"].as_array().unwrap().len(),
        2
    );
    let shares = t.window(300).await;
    assert_share(&shares, "x", 1.0 / 3.0);
    assert_share(&shares, "y", 2.0 / 3.0);

    let all = t.finish().await;
    assert_all_ok(&all);
    promtool_accepts(&admin.metrics().await);
    // The loss was logged once, not once per failed resolution.
    let log = f.log();
    assert_eq!(
        log.matches("keeping the last 2 addresses").count(),
        1,
        "{log}"
    );
}

/// A process killed when the test ends, whatever happens.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_unresolvable_at_start_joins_when_it_resolves() {
    let b = Backend::start("late").await;
    let dns = DnsServer::start(0).await;
    let admin = Admin::new();
    let pool = format!(
        "    backends: [{{address: \"late.test:{}\"}}]\n    discover: {{min_ttl: 100ms, max_ttl: 1s}}\n    slow_start: 30s\n",
        b.addr.port()
    );
    let yaml = body(&dns, &admin, &pool);

    // `fulcrum -t` warns, and passes.
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("check.yaml");
    let listen = format!(
        "listeners: [{{name: main, listen: 127.0.0.1:{}}}]\n",
        free_port()
    );
    std::fs::write(&conf, format!("{listen}{yaml}")).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["-t", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("late.test") && stderr.contains("does not resolve"),
        "{stderr}"
    );

    // Unless it is required: then -t fails, and so does start-up.
    let required = yaml.replace(
        &format!("\"late.test:{}\"}}", b.addr.port()),
        &format!("\"late.test:{}\", required: true}}", b.addr.port()),
    );
    std::fs::write(&conf, format!("{listen}{required}")).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["-t", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("required"), "{stderr}");
    let server = Fulcrum::server_block(dir.path());
    std::fs::write(&conf, format!("{server}{listen}{required}")).unwrap();
    let mut child = KillOnDrop(
        std::process::Command::new(BIN)
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut code = None;
    wait_for(Duration::from_secs(10), "start-up to fail", || {
        code = child.0.try_wait().unwrap().map(|s| s.code());
        code.is_some()
    })
    .await;
    assert_eq!(code, Some(Some(1)));

    // It starts with an empty pool (503), then the name appears and takes the traffic.
    let f = Fulcrum::start(&yaml).await;
    let c = client();
    let (status, _) = get(&c, &f.url("/")).await;
    assert_eq!(status, 503);
    let d = admin.status().await["pools"]["web"]["discovery"].clone();
    assert_eq!(d["result"], "empty", "{d}");
    dns.set_host("late.test", &[IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    wait_for_async(Duration::from_secs(10), "late.test serves", || async {
        get(&c, &f.url("/")).await == (200, "late".to_string())
    })
    .await;
    let name = format!("late.test:{}/{}", b.addr.port(), b.addr);
    let entry = admin.backend("web", &name).await;
    assert_eq!(entry["state"], "ready", "{entry}");
    // A name added by a reload is asked at once and joins.
    let other = Backend::start("other").await;
    dns.set_host("other.test", &[IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    let added = pool.replace(
        "}]\n",
        &format!("}}, {{address: \"other.test:{}\"}}]\n", other.addr.port()),
    );
    assert_ne!(added, pool);
    f.rewrite(&body(&dns, &admin, &added));
    f.signal("HUP");
    wait_for_async(Duration::from_secs(10), "other.test serves", || async {
        get(&c, &f.url("/")).await == (200, "other".to_string())
    })
    .await;
    assert!(
        entry["slow_start_until"].is_string(),
        "it joined: slow start ramps it: {entry}"
    );
}

/// GET with an optional affinity cookie and header: (backend, the cookie value set, if any).
async fn visit(
    c: &reqwest::Client,
    url: &str,
    cookie: Option<&str>,
    key: Option<&str>,
) -> (String, Option<String>) {
    let mut req = c.get(url);
    if let Some(v) = cookie {
        req = req.header("cookie", format!("fsid={v}"));
    }
    if let Some(k) = key {
        req = req.header("x-key", k);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let set = resp
        .headers()
        .get("set-cookie")
        .and_then(|h| h.to_str().ok())
        .and_then(|v| v.split(';').next())
        .and_then(|kv| kv.strip_prefix("fsid="))
        .map(str::to_string);
    (backend_of(&resp), set)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_agree_and_a_vanished_address_finishes_its_requests_and_re_pins() {
    let (port, b) = same_port_backends(&["b1", "b2", "b3"]).await;
    let dns = DnsServer::start(0).await;
    dns.set_host("app.test", &[ip(&b[0]), ip(&b[1]), ip(&b[2])]);
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("affinity.keys");
    std::fs::write(&keys, "a-shared-key-of-at-least-32-bytes-long\n").unwrap();
    let (a1, a2) = (Admin::new(), Admin::new());
    let yaml = |admin: &Admin| {
        format!(
            "resolvers: [\"{}\"]\n{}routes: [{{match: {{path_prefix: /h/}}, pool: ring}}, {{pool: web}}]\npools:\n  web:\n    backends: [{{address: \"app.test:{port}\"}}]\n    discover: {{min_ttl: 100ms, max_ttl: 1s}}\n    affinity: {{cookie: fsid, keys_file: \"{}\"}}\n  ring:\n    algorithm: consistent_hash\n    hash_key: {{header: X-Key}}\n    backends: [{{address: \"app.test:{port}\"}}]\n    discover: {{min_ttl: 100ms, max_ttl: 1s}}\n",
            dns.addr,
            admin.yaml(),
            keys.display()
        )
    };
    let f1 = Fulcrum::start(&yaml(&a1)).await;
    let f2 = Fulcrum::start(&yaml(&a2)).await;
    let c = client();

    // The same ring on both: every key goes to the same backend.
    for k in 0..40 {
        let key = format!("user-{k}");
        let one = visit(&c, &f1.url("/h/"), None, Some(&key)).await.0;
        let two = visit(&c, &f2.url("/h/"), None, Some(&key)).await.0;
        assert_eq!(one, two, "{key}");
    }

    // A cookie set by one instance pins at the other.
    let (pinned, cookie) = visit(&c, &f1.url("/"), None, None).await;
    let cookie = cookie.expect("a cookie");
    for f in [&f1, &f2] {
        for _ in 0..5 {
            assert_eq!(visit(&c, &f.url("/"), Some(&cookie), None).await.0, pinned);
        }
    }

    // A slow request in flight on the pinned backend when its record goes.
    let gone = b.iter().position(|x| x.name == pinned).unwrap();
    b[gone].set_mode(Mode::Delay(Duration::from_millis(1500)));
    let before = b[gone].hits();
    let slow = {
        let (url, cookie) = (f1.url("/"), cookie.clone());
        tokio::spawn(async move { visit(&client(), &url, Some(&cookie), None).await.0 })
    };
    wait_for(Duration::from_secs(5), "the slow request", || {
        b[gone].hits() > before
    })
    .await;
    let rest: Vec<IpAddr> = b.iter().filter(|x| x.name != pinned).map(ip).collect();
    dns.set_host("app.test", &rest);
    let gone_name = format!("app.test:{port}/{}", b[gone].addr);
    for admin in [&a1, &a2] {
        wait_for_async(Duration::from_secs(10), "the address leaves", || async {
            let s = admin.status().await;
            let names: Vec<String> = s["pools"]["web"]["backends"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["name"].as_str().unwrap_or("").to_string())
                .collect();
            names.len() == 2 && !names.contains(&gone_name)
        })
        .await;
    }
    assert_eq!(
        slow.await.unwrap(),
        pinned,
        "the request in flight finished"
    );
    b[gone].set_mode(Mode::Normal);

    // Its sessions re-pin, to the same successor on both instances.
    let mut successors = Vec::new();
    for f in [&f1, &f2] {
        let (to, set) = visit(&c, &f.url("/"), Some(&cookie), None).await;
        assert_ne!(to, pinned);
        let set = set.expect("a replaced cookie");
        assert_eq!(visit(&c, &f.url("/"), Some(&set), None).await.0, to);
        successors.push(to);
    }
    assert_eq!(successors[0], successors[1]);
    // And the rings agree again without it.
    for k in 0..40 {
        let key = format!("user-{k}");
        let one = visit(&c, &f1.url("/h/"), None, Some(&key)).await.0;
        assert_ne!(one, pinned);
        assert_eq!(one, visit(&c, &f2.url("/h/"), None, Some(&key)).await.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_and_aaaa_records_are_both_backends() {
    // One port free on 127.0.0.1 and on ::1 (bounded tries); no IPv6 loopback: nothing to test.
    let mut pair = None;
    for _ in 0..20 {
        let v4 = Backend::start("v4").await;
        let v6_addr = SocketAddr::new("::1".parse().unwrap(), v4.addr.port());
        match std::net::TcpListener::bind(v6_addr) {
            Ok(probe) => {
                drop(probe);
                let v6 = Backend::start_on("v6", v6_addr, Behaviour::Normal).await;
                pair = Some((v4, v6));
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => {
                eprintln!("no IPv6 loopback here ({e}): skipped");
                return;
            }
        }
    }
    let (v4, v6) = pair.expect("a port free on both families");
    let port = v4.addr.port();
    let dns = DnsServer::start(0).await;
    dns.set_host("dual.test", &[v4.addr.ip(), v6.addr.ip()]);
    let admin = Admin::new();
    let pool = format!("    backends: [{{address: \"dual.test:{port}\"}}]\n");
    let pool = format!("{pool}    discover: {{min_ttl: 100ms, max_ttl: 1s}}\n");
    let f = Fulcrum::start(&body(&dns, &admin, &pool)).await;
    let t = Traffic::start(f.url("/"));
    let shares = t.window(200).await;
    assert_share(&shares, "v4", 0.5);
    assert_share(&shares, "v6", 0.5);

    // AAAA questions go unanswered: the answer fails as a whole, the IPv6 backend stays.
    dns.mute_aaaa(true);
    wait_for_async(Duration::from_secs(15), "a failed resolution", || async {
        admin
            .metric(
                "fulcrum_dns_resolutions_total",
                &[("pool", "web"), ("result", "failure")],
            )
            .await
            >= 1.0
    })
    .await;
    let shares = t.window(200).await;
    assert_share(&shares, "v6", 0.5);
    assert_all_ok(&t.finish().await);
    for b in [&v4, &v6] {
        let name = format!("dual.test:{port}/{}", b.addr);
        assert_eq!(
            admin.backend("web", &name).await["address"],
            b.addr.to_string()
        );
    }
}
