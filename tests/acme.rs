//! Certificates that renew themselves (issue #17), against a real ACME server started by the
//! test: Debian's `pebble` on 127.0.0.1 ephemeral ports, validating HTTP-01 on fulcrum's plain
//! listener, with the test's DNS server (tests/common/dns.rs) resolving the domain to
//! 127.0.0.1. Nothing is sent anywhere but 127.0.0.1.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::dns::DnsServer;
use common::*;

const DOMAIN: &str = "acme.fulcrum.test";

/// A pebble process (killed on drop) with its HTTPS certificate from `pki`.
struct Pebble {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    management: u16,
    pki: TestPki,
}

impl Pebble {
    /// Start pebble validating HTTP-01 on `http_port`, resolving names with `dns`.
    async fn start(http_port: u16, dns: SocketAddr) -> Pebble {
        let pki = TestPki::new();
        let leaf = pki.leaf("pebble", &["127.0.0.1", "localhost"], false);
        let dir = tempfile::tempdir().unwrap();
        let (port, management) = (free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": leaf.cert,
            "privateKey": leaf.key,
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        // fulcrum's ca_file: an unrelated CA first, then the one that signed pebble's certificate
        // (every certificate of the file is trusted, not only the first).
        let bundle = format!("{}{}", TestPki::new().ca_pem(), pki.ca_pem());
        std::fs::write(dir.path().join("ca-bundle.pem"), bundle).unwrap();
        let conf = dir.path().join("pebble.json");
        std::fs::write(&conf, config.to_string()).unwrap();
        let log = std::fs::File::create(dir.path().join("pebble.log")).unwrap();
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&conf)
            .arg("-dnsserver")
            .arg(dns.to_string())
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            // Every order validates its challenges (none reuses an earlier authorization).
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("pebble (apt-get install pebble, or make test-tools)");
        let p = Pebble {
            child,
            dir,
            port,
            management,
            pki,
        };
        let c = p.client();
        let url = p.directory();
        wait_for_async(Duration::from_secs(20), "pebble's directory", || {
            let (c, url) = (c.clone(), url.clone());
            async move { c.get(url).send().await.is_ok_and(|r| r.status() == 200) }
        })
        .await;
        p
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    fn client(&self) -> reqwest::Client {
        self.pki.https_client(&[], 0)
    }

    /// The root of the certificates pebble issues (its management API).
    async fn root_pem(&self) -> String {
        let url = format!("https://127.0.0.1:{}/roots/0", self.management);
        let resp = self.client().get(url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// fulcrum with a plain listener on `plain` (first, where readiness is checked) and an ACME
/// listener on `tls`.
/// `top` goes before `listeners:` (e.g. `admin:`), `extra` into `acme:`.
fn acme_yaml(
    (top, extra): (&str, &str),
    dir: &Path,
    plain: u16,
    tls: u16,
    pebble: &Pebble,
    state: &Path,
    backend: &Backend,
) -> String {
    format!(
        "{}{top}listeners:\n  - name: web\n    listen: 127.0.0.1:{plain}\n  - name: secure\n    listen: 127.0.0.1:{tls}\n    tls:\n      acme:\n        directory: {}\n        email: ops@fulcrum.test\n        domains: [{DOMAIN}]\n        ca_file: {}\n        state_dir: {}\n{extra}routes: [{{pool: p}}]\npools:\n  p: {{backends: [{{address: \"{}\"}}]}}\n",
        Fulcrum::server_block(dir),
        pebble.directory(),
        pebble.dir.path().join("ca-bundle.pem").display(),
        state.display(),
        backend.addr,
    )
}

async fn start_fulcrum(
    top_extra: (&str, &str),
    pebble: &Pebble,
    (plain, tls): (u16, u16),
    state: &Path,
    backend: &Backend,
) -> Fulcrum {
    let dir = tempfile::tempdir().unwrap();
    let yaml = acme_yaml(top_extra, dir.path(), plain, tls, pebble, state, backend);
    Fulcrum::start_yaml(dir, plain, &yaml).await
}

/// The certificate the TLS listener on `port` presents for DOMAIN, if a client trusting only
/// `root_pem` accepts it (None: it does not, e.g. the fallback).
async fn trusted_cert(root_pem: &str, port: u16) -> Option<Vec<u8>> {
    let c = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .tls_info(true)
        .timeout(Duration::from_secs(5))
        .add_root_certificate(reqwest::Certificate::from_pem(root_pem.as_bytes()).unwrap())
        .resolve(DOMAIN, SocketAddr::from(([127, 0, 0, 1], port)))
        .build()
        .unwrap();
    let resp = c
        .get(format!("https://{DOMAIN}:{port}/"))
        .send()
        .await
        .ok()?;
    assert_eq!(resp.status(), 200);
    Some(peer_der(&resp))
}

/// The certificate presented for DOMAIN, whoever issued it.
async fn any_cert(port: u16) -> Vec<u8> {
    let c = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .tls_info(true)
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(5))
        .resolve(DOMAIN, SocketAddr::from(([127, 0, 0, 1], port)))
        .build()
        .unwrap();
    let resp = c
        .get(format!("https://{DOMAIN}:{port}/"))
        .send()
        .await
        .unwrap();
    peer_der(&resp)
}

fn peer_der(resp: &reqwest::Response) -> Vec<u8> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("peer certificate")
        .to_vec()
}

/// Whether `der` is self-signed (issuer = subject) and names DOMAIN.
fn self_signed_for_domain(der: &[u8]) -> bool {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let names: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect();
    cert.issuer() == cert.subject() && names == [DOMAIN]
}

async fn wait_cert(
    root: &str,
    port: u16,
    limit: Duration,
    what: &str,
    f: &Fulcrum,
    other_than: Option<&[u8]>,
) -> Vec<u8> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(der) = trusted_cert(root, port).await {
            if other_than != Some(der.as_slice()) {
                return der;
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            f.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn dns_for_domain() -> DnsServer {
    let dns = DnsServer::start(1).await;
    dns.set_host(DOMAIN, &[IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    dns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_serves_stores_and_renews_without_a_restart() {
    let dns = dns_for_domain().await;
    let plain = free_port();
    let tls = free_port();
    let pebble = Pebble::start(plain, dns.addr).await;
    let backend = Backend::start("app").await;
    let state = tempfile::tempdir().unwrap();
    let state_dir: PathBuf = state.path().join("acme");
    let admin = Admin::new();
    // Renewal after 4s (pebble's certificates live for years): see README, `renew_after`.
    let f = start_fulcrum(
        (&admin.yaml(), "        renew_after: 4s\n"),
        &pebble,
        (plain, tls),
        &state_dir,
        &backend,
    )
    .await;
    // At first: the self-signed fallback, said so in the log.
    let first = any_cert(tls).await;
    let root = pebble.root_pem().await;
    let started = Instant::now();
    let issued = wait_cert(
        &root,
        tls,
        Duration::from_secs(60),
        "the ACME certificate",
        &f,
        None,
    )
    .await;
    let took = started.elapsed();
    assert!(
        self_signed_for_domain(&first) || first == issued,
        "first certificate neither fallback nor ACME"
    );
    assert!(!self_signed_for_domain(&issued));
    let log = f.log();
    assert!(log.contains("serving a self-signed fallback"), "{log}");
    assert!(
        log.contains("account ") && log.contains(" created"),
        "{log}"
    );
    for file in ["account.json", "cert.pem", "key.pem"] {
        assert!(state_dir.join(file).exists(), "{file} not stored");
    }
    eprintln!("issued after {took:?}");
    // /status and /metrics say what is served.
    let status = admin.status().await;
    let secure = &status["certificates"]["secure"];
    assert_eq!(secure["serving_fallback"], false, "{status}");
    assert_eq!(secure["served"][0]["source"], "acme", "{status}");
    assert_eq!(secure["served"][0]["names"][0], DOMAIN, "{status}");
    assert_eq!(secure["acme"]["failures"], 0, "{status}");
    let expiry = admin
        .metric(
            "fulcrum_certificate_expiry_seconds",
            &[("listener", "secure"), ("name", DOMAIN)],
        )
        .await;
    assert!(expiry > 86400.0, "{expiry}");
    eprintln!(
        "pebble certificate lifetime left: {:.1} days",
        expiry / 86400.0
    );
    // Renewed in place: another certificate, the process the same.
    let started = Instant::now();
    let renewed = wait_cert(
        &root,
        tls,
        Duration::from_secs(60),
        "a renewed certificate",
        &f,
        Some(&issued),
    )
    .await;
    eprintln!("renewed after {:?}", started.elapsed());
    assert_ne!(renewed, issued);
    assert!(f.log().contains("renewing a certificate"), "{}", f.log());
    // The HTTP-01 answers are gone once the order is done; an unknown token is a 404 from
    // fulcrum itself, on any plain listener, before routing.
    let (status, _) = get(
        &client(),
        &f.url("/.well-known/acme-challenge/unknown-token"),
    )
    .await;
    assert_eq!(status, 404);
    drop(f);
    // A restart serves the stored certificate at once.
    let f = start_fulcrum(("", ""), &pebble, (plain, tls), &state_dir, &backend).await;
    let stored = std::fs::read_to_string(state_dir.join("cert.pem")).unwrap();
    assert!(!stored.is_empty());
    assert!(
        trusted_cert(&root, tls).await.is_some(),
        "stored certificate not served at start:\n{}",
        f.log()
    );
    assert!(
        f.log().contains("serving the stored certificate"),
        "{}",
        f.log()
    );
    let _ = pebble.log();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_challenge_keeps_the_fallback_and_backs_off() {
    let dns = dns_for_domain().await;
    let plain = free_port();
    let tls = free_port();
    // Pebble validates on a port where nothing listens.
    let pebble = Pebble::start(free_port(), dns.addr).await;
    let backend = Backend::start("app").await;
    let state = tempfile::tempdir().unwrap();
    let admin = Admin::new();
    let f = start_fulcrum(
        (&admin.yaml(), ""),
        &pebble,
        (plain, tls),
        &state.path().join("acme"),
        &backend,
    )
    .await;
    wait_for(
        Duration::from_secs(60),
        "a failed attempt in the log",
        || f.log().contains("attempt 1 failed, next in 10s"),
    )
    .await;
    let log = f.log();
    assert!(log.contains("the fallback certificate stays"), "{log}");
    assert!(self_signed_for_domain(&any_cert(tls).await));
    assert!(!state.path().join("acme/cert.pem").exists());
    let status = admin.status().await;
    let secure = &status["certificates"]["secure"];
    assert_eq!(secure["serving_fallback"], true, "{status}");
    assert_eq!(secure["served"][0]["source"], "fallback", "{status}");
    assert_eq!(secure["acme"]["failures"], 1, "{status}");
    let error = secure["acme"]["last_error"].as_str().unwrap();
    assert!(error.contains(DOMAIN), "{status}");
    eprintln!("failure: {error}");
    let metrics = admin.metrics().await;
    let labels = [("listener", "secure")];
    assert_eq!(
        metric_sum(&metrics, "fulcrum_certificate_fallback", &labels),
        1.0
    );
    assert_eq!(
        metric_sum(&metrics, "fulcrum_acme_failures_total", &labels),
        1.0
    );
    // The fallback's expiry is reported too (rcgen's default validity runs to 4096).
    assert!(metric_sum(&metrics, "fulcrum_certificate_expiry_seconds", &labels) > 0.0);
    // No second attempt before the back-off.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!f.log().contains("attempt 2 failed"), "{}", f.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_a_state_dir_order_once() {
    let dns = dns_for_domain().await;
    let (plain_a, tls_a, plain_b, tls_b) = (free_port(), free_port(), free_port(), free_port());
    // Pebble validates on instance a's port only: when b places the order, a answers it from
    // the shared state directory.
    let pebble = Pebble::start(plain_a, dns.addr).await;
    let backend = Backend::start("app").await;
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("acme");
    let (a, b) = tokio::join!(
        start_fulcrum(("", ""), &pebble, (plain_a, tls_a), &dir, &backend),
        start_fulcrum(("", ""), &pebble, (plain_b, tls_b), &dir, &backend),
    );
    let root = pebble.root_pem().await;
    let cert_a = wait_cert(
        &root,
        tls_a,
        Duration::from_secs(60),
        "a's certificate",
        &a,
        None,
    )
    .await;
    let cert_b = wait_cert(
        &root,
        tls_b,
        Duration::from_secs(60),
        "b's certificate",
        &b,
        None,
    )
    .await;
    assert_eq!(
        cert_a, cert_b,
        "the two instances serve different certificates"
    );
    let orders = |f: &Fulcrum| f.log().matches("ordering a certificate").count();
    assert_eq!(
        orders(&a) + orders(&b),
        1,
        "a:\n{}\nb:\n{}",
        a.log(),
        b.log()
    );
    let (who, waited) = if orders(&a) == 1 {
        ("a", &b)
    } else {
        ("b", &a)
    };
    eprintln!("instance {who} ordered (pebble validates on a's port)");
    let other = waited.log();
    assert!(
        other.contains("waiting for its order") || other.contains("serving the certificate"),
        "{other}"
    );
    // Either instance answers a challenge whose token only the shared state directory holds.
    std::fs::write(
        dir.join("challenges/shared-token"),
        "shared-token.thumbprint",
    )
    .unwrap();
    for f in [&a, &b] {
        let url = f.url("/.well-known/acme-challenge/shared-token");
        let resp = client().get(url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(backend_of(&resp), "", "a challenge went to the backend");
        assert_eq!(resp.text().await.unwrap(), "shared-token.thumbprint");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_answers_the_challenge_of_an_order_another_placed() {
    let dns = dns_for_domain().await;
    let (plain_a, tls_a, plain_b, tls_b) = (free_port(), free_port(), free_port(), free_port());
    // Pebble validates on a's port; a cannot reach the ACME server (its directory is a closed
    // port), so only b can order, and only a can answer: from the shared state directory.
    let pebble = Pebble::start(plain_a, dns.addr).await;
    let backend = Backend::start("app").await;
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("acme");
    let a_dir = tempfile::tempdir().unwrap();
    let dead = format!("https://127.0.0.1:{}/dir", free_port());
    let yaml = acme_yaml(
        ("", ""),
        a_dir.path(),
        plain_a,
        tls_a,
        &pebble,
        &dir,
        &backend,
    )
    .replace(&pebble.directory(), &dead);
    let a = Fulcrum::start_yaml(a_dir, plain_a, &yaml).await;
    let b = start_fulcrum(("", ""), &pebble, (plain_b, tls_b), &dir, &backend).await;
    let root = pebble.root_pem().await;
    wait_cert(
        &root,
        tls_b,
        Duration::from_secs(60),
        "b's certificate",
        &b,
        None,
    )
    .await;
    assert!(b.log().contains("ordering a certificate"), "{}", b.log());
    // a tried its own order and failed to reach the ACME server: the answer came from it anyway.
    assert!(
        a.log().contains("ACME account: client error"),
        "{}",
        a.log()
    );
    assert!(!a.log().contains("serving the certificate"), "{}", a.log());
}
