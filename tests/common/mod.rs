//! Test support: real backends (hyper servers on 127.0.0.1 ephemeral ports), the real `fulcrum`
//! binary in its own temp dir (killed on drop), and polling helpers bounded in time.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

pub mod dns;

pub const BIN: &str = env!("CARGO_BIN_EXE_fulcrum");

/// How a test backend answers.
#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    /// 200 with its name as the body.
    Normal,
    /// Like Normal, after a delay.
    Delay(Duration),
    /// Accept the connection and close it without answering.
    Close,
    /// Accept the connection and never answer (nor close).
    BlackHole,
}

/// How a test backend answers requests (not health checks) from now on: switched at any time
/// with `Backend::set_mode`, it applies to every request read after the switch. Every request
/// counts as a hit, whatever the mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 200 with its name as the body.
    Normal,
    /// Like Normal, after a delay.
    Delay(Duration),
    /// This status, with its name as the body.
    Status(u16),
    /// Read the request, then close the connection without answering.
    Reset,
    /// Read the request and never answer (nor close).
    Stall,
    /// 200 with `content-length: 100`, then only 10 bytes of body and the connection closes.
    Truncate,
}

/// A test backend's response body. Its error is a concrete type: a boxed error trips the `Send`
/// check of `tokio::spawn` on the connection task.
type Body = BoxBody<Bytes, std::io::Error>;

/// A real HTTP/1.1 backend on 127.0.0.1 that answers with its name (body and `x-backend`),
/// counts its requests and remembers the headers of the last one. `GET /healthz` answers the
/// status set by `set_health` (200 at first) and is counted apart, with its times.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    behaviour: Behaviour,
    shared: Arc<Shared>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

#[derive(Default)]
struct Shared {
    hits: AtomicUsize,
    last_headers: Mutex<BTreeMap<String, String>>,
    last_method: Mutex<String>,
    health_status: std::sync::atomic::AtomicU16,
    health_checks: Mutex<Vec<Instant>>,
    mode: Mutex<Option<Mode>>,
    /// Requests being answered now, and the most at once since `reset_peak`.
    busy: AtomicUsize,
    peak: AtomicUsize,
    /// A header every answer to a request carries (`set_header`).
    header: Mutex<Option<(String, String)>>,
    /// The body `/healthz` answers with (`set_health_body`; default `health`).
    health_body: Mutex<Option<Bytes>>,
}

/// Counts one request in `Shared::busy` while it is being answered.
struct Busy<'a>(&'a Shared);

impl<'a> Busy<'a> {
    fn enter(shared: &'a Shared) -> Busy<'a> {
        let now = shared.busy.fetch_add(1, Ordering::SeqCst) + 1;
        shared.peak.fetch_max(now, Ordering::SeqCst);
        Busy(shared)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Backend::start_with(name, Behaviour::Normal).await
    }

    pub async fn start_with(name: &str, behaviour: Behaviour) -> Backend {
        Backend::start_on(name, SocketAddr::from(([127, 0, 0, 1], 0)), behaviour).await
    }

    /// A backend on `addr` (e.g. 127.0.0.2:PORT: several backends on one port, as the
    /// addresses of one DNS name).
    pub async fn start_on(name: &str, addr: SocketAddr, behaviour: Behaviour) -> Backend {
        let listener = TcpListener::bind(addr).await.expect("bind backend");
        let shared = Arc::new(Shared::default());
        shared.health_status.store(200, Ordering::SeqCst);
        let addr = listener.local_addr().expect("backend addr");
        let tasks = Backend::serve(name, listener, behaviour, shared.clone());
        Backend {
            name: name.to_string(),
            addr,
            behaviour,
            shared,
            tasks,
        }
    }

    /// Start again on the same address after `stop()`, keeping the counters.
    pub async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr).await.expect("rebind backend");
        self.tasks = Backend::serve(&self.name, listener, self.behaviour, self.shared.clone());
    }

    /// Accept and answer on `listener` until stopped; returns the tasks to abort.
    fn serve(
        name: &str,
        listener: TcpListener,
        behaviour: Behaviour,
        shared: Arc<Shared>,
    ) -> Arc<Mutex<Vec<AbortHandle>>> {
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::new(Mutex::new(Vec::new()));
        let (n, sh, t) = (name.to_string(), shared.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                match behaviour {
                    Behaviour::Close => {
                        sh.hits.fetch_add(1, Ordering::SeqCst);
                        drop(stream);
                        continue;
                    }
                    Behaviour::BlackHole => {
                        let hold = tokio::spawn(async move {
                            let _stream = stream;
                            std::future::pending::<()>().await
                        });
                        t.lock().unwrap().push(hold.abort_handle());
                        continue;
                    }
                    _ => {}
                }
                let (n, sh) = (n.clone(), sh.clone());
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (n, sh) = (n.clone(), sh.clone());
                        async move { answer(&n, &sh, behaviour, req).await }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                t.lock().unwrap().push(conn.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        tasks
    }

    /// The status `/healthz` answers from now on.
    pub fn set_health(&self, status: u16) {
        self.shared.health_status.store(status, Ordering::SeqCst);
    }

    /// The body `/healthz` answers from now on.
    pub fn set_health_body(&self, body: &str) {
        *self.shared.health_body.lock().unwrap() = Some(Bytes::from(body.to_string()));
    }

    /// How requests (not health checks) are answered from now on.
    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = Some(mode);
    }

    /// When `/healthz` was asked, so far.
    pub fn health_checks(&self) -> Vec<Instant> {
        self.shared.health_checks.lock().unwrap().clone()
    }

    /// The method of the last request (not counting health checks).
    pub fn last_method(&self) -> String {
        self.shared.last_method.lock().unwrap().clone()
    }

    /// Requests (or, for Close, connections) so far, not counting health checks.
    pub fn hits(&self) -> usize {
        self.shared.hits.load(Ordering::SeqCst)
    }

    /// Every answer to a request carries `name: value` from now on.
    pub fn set_header(&self, name: &str, value: &str) {
        *self.shared.header.lock().unwrap() = Some((name.to_string(), value.to_string()));
    }

    /// The most requests this backend answered at once since the last `reset_peak`.
    pub fn peak_inflight(&self) -> usize {
        self.shared.peak.load(Ordering::SeqCst)
    }

    pub fn reset_peak(&self) {
        self.shared.peak.store(0, Ordering::SeqCst);
    }

    pub fn last_headers(&self) -> BTreeMap<String, String> {
        self.shared.last_headers.lock().unwrap().clone()
    }

    /// Stop listening and drop every open connection.
    pub fn stop(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn answer(
    name: &str,
    shared: &Shared,
    behaviour: Behaviour,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    let full = |status: u16, body: Bytes| {
        let mut b = Response::builder().status(status).header("x-backend", name);
        if let Some((k, v)) = shared.header.lock().unwrap().clone() {
            b = b.header(k, v);
        }
        b.body(Full::new(body).map_err(|e| match e {}).boxed())
            .unwrap()
    };
    if req.uri().path() == "/healthz" {
        shared.health_checks.lock().unwrap().push(Instant::now());
        let status = shared.health_status.load(Ordering::SeqCst);
        let body = shared
            .health_body
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| Bytes::from_static(b"health"));
        return Ok(Response::builder()
            .status(status)
            .body(Full::new(body).map_err(|e| match e {}).boxed())
            .unwrap());
    }
    shared.hits.fetch_add(1, Ordering::SeqCst);
    let _busy = Busy::enter(shared);
    *shared.last_method.lock().unwrap() = req.method().to_string();
    *shared.last_headers.lock().unwrap() = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    // A mode set by `set_mode` wins over the behaviour the backend started with.
    let mode = shared.mode.lock().unwrap().unwrap_or(match behaviour {
        Behaviour::Delay(d) => Mode::Delay(d),
        _ => Mode::Normal,
    });
    let body = Bytes::from(name.to_string());
    match mode {
        Mode::Normal => Ok(full(200, body)),
        Mode::Delay(d) => {
            tokio::time::sleep(d).await;
            Ok(full(200, body))
        }
        Mode::Status(status) => Ok(full(status, body)),
        // hyper drops the connection, writing nothing, when the service fails.
        Mode::Reset => Err(std::io::Error::other("reset by the test backend")),
        Mode::Stall => std::future::pending().await,
        Mode::Truncate => {
            // The chunk, then (after hyper has flushed it: the stream is pending once) an error,
            // on which hyper closes the connection 90 bytes short.
            let frames = futures::stream::unfold(0u8, |step| async move {
                match step {
                    0 => Some((Ok(Frame::data(Bytes::from_static(b"0123456789"))), 1)),
                    1 => {
                        tokio::task::yield_now().await;
                        Some((Err(std::io::Error::other("truncated")), 2))
                    }
                    _ => None,
                }
            });
            Ok(Response::builder()
                .header("x-backend", name)
                .header("content-length", "100")
                .body(StreamBody::new(frames).boxed())
                .unwrap())
        }
    }
}

/// Poll `cond` every 10 ms until it holds or `limit` passes; returns the time it took.
pub async fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Like `wait_for`, with an async condition.
pub async fn wait_for_async<F, Fut>(limit: Duration, what: &str, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A port that was free a moment ago (for fulcrum's listeners).
/// A port nothing listens on now and that this test process has not handed out before: the
/// kernel may give a released ephemeral port to the next bind, and two ports asked for by one
/// test (a proxy listener and the admin endpoint) must differ.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<std::collections::BTreeSet<u16>> =
        Mutex::new(std::collections::BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..1000 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        if handed_out.insert(port) {
            return port;
        }
    }
    panic!("no port this process has not handed out in 1000 tries");
}

/// An address on which nothing listens.
pub fn closed_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A running `fulcrum` process with its own directory (config, pid file, upgrade socket, log).
pub struct Fulcrum {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// Processes started so far (1 + upgrades): names the log file of each.
    generation: usize,
}

impl Fulcrum {
    /// The `server:` block every test instance uses: its own paths and no grace period.
    pub fn server_block(dir: &Path) -> String {
        format!(
            "server:\n  threads: 1\n  pid_file: {}/fulcrum.pid\n  upgrade_sock: {}/upgrade.sock\n  grace_period_seconds: 0\n  graceful_shutdown_timeout_seconds: 1\n",
            dir.display(),
            dir.display()
        )
    }

    /// Start fulcrum with one listener on a fresh port and `body` (routes + pools) as the rest
    /// of the configuration; returns once the listener accepts.
    pub async fn start(body: &str) -> Fulcrum {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let yaml = format!(
            "{}listeners:\n  - name: main\n    listen: 127.0.0.1:{port}\n{body}",
            Fulcrum::server_block(dir.path())
        );
        Fulcrum::start_yaml(dir, port, &yaml).await
    }

    /// Start fulcrum on a complete configuration whose (first) listener is on `port`.
    pub async fn start_yaml(dir: tempfile::TempDir, port: u16, yaml: &str) -> Fulcrum {
        let conf = dir.path().join("fulcrum.yaml");
        std::fs::write(&conf, yaml).expect("write config");
        let child = Fulcrum::spawn(dir.path(), 0, &[]);
        Fulcrum::started(child, dir, port).await
    }

    /// Like `start_yaml`, with the process's file-descriptor limit set to `files` (by prlimit).
    pub async fn start_yaml_with_files(
        dir: tempfile::TempDir,
        port: u16,
        yaml: &str,
        files: u64,
    ) -> Fulcrum {
        std::fs::write(dir.path().join("fulcrum.yaml"), yaml).expect("write config");
        let log = std::fs::File::create(dir.path().join("fulcrum.0.log")).expect("log file");
        let child = Command::new("prlimit")
            .arg(format!("--nofile={files}:{files}"))
            .arg("--")
            .arg(BIN)
            .arg("-c")
            .arg(dir.path().join("fulcrum.yaml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn fulcrum under prlimit");
        Fulcrum::started(child, dir, port).await
    }

    async fn started(child: Child, dir: tempfile::TempDir, port: u16) -> Fulcrum {
        let mut f = Fulcrum {
            child,
            dir,
            port,
            generation: 0,
        };
        f.wait_ready().await;
        f
    }

    /// Start `fulcrum -c DIR/fulcrum.yaml EXTRA..`, logging to DIR/fulcrum.GEN.log.
    fn spawn(dir: &Path, generation: usize, extra: &[&str]) -> Child {
        let log =
            std::fs::File::create(dir.join(format!("fulcrum.{generation}.log"))).expect("log file");
        Command::new(BIN)
            .arg("-c")
            .arg(dir.join("fulcrum.yaml"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn fulcrum")
    }

    /// Replace the configuration file (for a reload or an upgrade).
    pub fn rewrite(&self, body: &str) {
        let yaml = format!(
            "{}listeners:\n  - name: main\n    listen: 127.0.0.1:{}\n{body}",
            Fulcrum::server_block(self.dir.path()),
            self.port
        );
        std::fs::write(self.conf_path(), yaml).expect("rewrite config");
    }

    /// Send `signal` (e.g. "HUP") to the running process.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{signal}");
    }

    /// Graceful upgrade without waiting for the old process to exit: start `fulcrum -u`,
    /// SIGQUIT the old process, and adopt the new one once it has taken the listening sockets
    /// ("ready: took the listening sockets over" in its log). Returns the old process, still draining (killed on drop).
    pub async fn hand_over(&mut self) -> Draining {
        let sock = self.dir.path().join("upgrade.sock");
        let _ = std::fs::remove_file(&sock);
        let generation = self.generation + 1;
        let mut new = Fulcrum::spawn(self.dir.path(), generation, &["-u"]);
        let log = self.dir.path().join(format!("fulcrum.{generation}.log"));
        let start = Instant::now();
        while !sock.exists() {
            if let Ok(Some(status)) = new.try_wait() {
                panic!("new process exited ({status}) before taking over");
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "new process never listened on the upgrade socket"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.signal("QUIT");
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("ready: took the listening sockets over")
        {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "new process never took the sockets"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let old = std::mem::replace(&mut self.child, new);
        self.generation = generation;
        Draining(old)
    }

    /// Graceful upgrade: start `fulcrum -u`, wait until it waits for the sockets, SIGQUIT the
    /// old process, wait for it to exit, and adopt the new one. Returns the old exit status.
    pub async fn upgrade(&mut self) -> std::process::ExitStatus {
        let sock = self.dir.path().join("upgrade.sock");
        let _ = std::fs::remove_file(&sock);
        let generation = self.generation + 1;
        let mut new = Fulcrum::spawn(self.dir.path(), generation, &["-u"]);
        let start = Instant::now();
        while !sock.exists() {
            if let Ok(Some(status)) = new.try_wait() {
                panic!(
                    "new process exited ({status}) before taking over:\n{}",
                    self.log()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "new process never listened on the upgrade socket"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.signal("QUIT");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "old process did not exit:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.child = new;
        self.generation = generation;
        status
    }

    async fn wait_ready(&mut self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("fulcrum exited early ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "fulcrum not ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn conf_path(&self) -> PathBuf {
        self.dir.path().join("fulcrum.yaml")
    }

    /// Everything every process of this instance logged, oldest first.
    pub fn log(&self) -> String {
        (0..=self.generation)
            .map(|g| {
                std::fs::read_to_string(self.dir.path().join(format!("fulcrum.{g}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// A fulcrum process that handed its sockets over and is finishing its work.
pub struct Draining(Child);

impl Draining {
    /// Its exit status, once it exits within `limit`.
    pub async fn exit(mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.0.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "old process did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Draining {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Fulcrum {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP client that never uses a proxy from the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// A client whose connections leave from `ip` (e.g. 127.0.0.7).
pub fn client_from(ip: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(ip)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// The `x-backend` header of a test backend's answer (its name), or "".
pub fn backend_of(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// GET `url` and return (status, x-backend header or "").
pub async fn get(client: &reqwest::Client, url: &str) -> (u16, String) {
    let resp = client.get(url).send().await.expect("request");
    let status = resp.status().as_u16();
    let backend = backend_of(&resp);
    (status, backend)
}

/// YAML for a list of backends: `[{address: A, name: N, weight: W}, ...]`.
pub fn backends_yaml(backends: &[(&Backend, u32)]) -> String {
    let items: Vec<String> = backends
        .iter()
        .map(|(b, w)| format!("{{address: \"{}\", name: {}, weight: {w}}}", b.addr, b.name))
        .collect();
    format!("[{}]", items.join(", "))
}

/// Count requests per backend name.
pub fn tally(names: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in names {
        *m.entry(n.clone()).or_insert(0) += 1;
    }
    m
}

/// A throwaway PKI made by the test (rcgen): a CA and leaf certificates it signs, written as
/// PEM files into a temp dir. Nothing here is ever committed.
pub struct TestPki {
    pub dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

/// A leaf certificate's files and DER.
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: Vec<u8>,
}

impl TestPki {
    pub fn new() -> TestPki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fulcrum test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        TestPki { dir, ca, ca_key }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A leaf for `names`, valid now (or expired in 2021 when `expired`).
    pub fn leaf(&self, file: &str, names: &[&str], expired: bool) -> Leaf {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or("leaf"),
        );
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let leaf = Leaf {
            cert: self.dir.path().join(format!("{file}.crt")),
            key: self.dir.path().join(format!("{file}.key")),
            der: cert.der().to_vec(),
        };
        std::fs::write(&leaf.cert, cert.pem()).unwrap();
        std::fs::write(&leaf.key, key.serialize_pem()).unwrap();
        leaf
    }

    /// A rustls client config trusting this CA, with the given ALPN protocols.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<tokio_rustls::rustls::ClientConfig> {
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let mut config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// A reqwest client trusting this CA that resolves `names` to 127.0.0.1:`port`.
    pub fn https_client(&self, names: &[&str], port: u16) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .use_rustls_tls()
            .tls_info(true)
            .timeout(Duration::from_secs(10))
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.ca.pem().as_bytes()).unwrap(),
            );
        for n in names {
            b = b.resolve(n, SocketAddr::from(([127, 0, 0, 1], port)));
        }
        b.build().unwrap()
    }
}

/// Write `pieces` to `s` one after another, each flushed (on TLS: a record each), pausing
/// `pause` between them: a slow client, where the pause is the stimulus, not a synchronisation.
pub async fn write_in_pieces<S: AsyncWrite + Unpin>(s: &mut S, pieces: &[&[u8]], pause: Duration) {
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(pause).await;
        }
        s.write_all(piece).await.unwrap();
        s.flush().await.unwrap();
    }
}

/// Read one HTTP/1.1 response with a Content-Length body from `s`; its head.
pub async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "no whole response within 5 s");
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("response bytes")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let head = &text[..end];
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .expect("content-length");
        if got.len() >= end + 4 + length {
            return head.to_string();
        }
    }
}

/// fulcrum's admin listener on a port of its own, read like an operator does.
pub struct Admin {
    pub port: u16,
}

impl Admin {
    pub fn new() -> Admin {
        Admin { port: free_port() }
    }

    /// The `admin:` line to put in the configuration.
    pub fn yaml(&self) -> String {
        format!("admin: {{listen: 127.0.0.1:{}}}\n", self.port)
    }

    /// GET `path` on the admin listener, which may start a moment after the proxy listener
    /// (connection errors are retried for up to 5 s).
    async fn get(&self, path: &str) -> reqwest::Response {
        let deadline = Instant::now() + Duration::from_secs(5);
        let resp = loop {
            match client()
                .get(format!("http://127.0.0.1:{}{path}", self.port))
                .send()
                .await
            {
                Ok(resp) => break resp,
                Err(e) if e.is_connect() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("admin {path}: {e}"),
            }
        };
        assert_eq!(resp.status(), 200, "admin {path}");
        resp
    }

    /// The /status document.
    pub async fn status(&self) -> serde_json::Value {
        self.get("/status")
            .await
            .json()
            .await
            .expect("/status JSON")
    }

    /// The /status entry of backend `name` in pool `pool` (`pools.POOL.backends[name=NAME]`).
    pub async fn backend(&self, pool: &str, name: &str) -> serde_json::Value {
        let status = self.status().await;
        status["pools"][pool]["backends"]
            .as_array()
            .and_then(|bs| bs.iter().find(|b| b["name"] == name))
            .unwrap_or_else(|| panic!("no backend {name} in pool {pool}: {status}"))
            .clone()
    }

    /// The /metrics exposition.
    pub async fn metrics(&self) -> String {
        self.get("/metrics")
            .await
            .text()
            .await
            .expect("/metrics text")
    }

    /// The sum of the samples of `name` whose labels include every pair of `filter`.
    pub async fn metric(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        metric_sum(&self.metrics().await, name, filter)
    }
}

impl Default for Admin {
    fn default() -> Self {
        Admin::new()
    }
}

/// The sum of the samples of `name` in the exposition `text` whose labels include every pair of
/// `filter` (label values without quotes, commas or escapes, as fulcrum's are).
pub fn metric_sum(text: &str, name: &str, filter: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = series.split_once('{').unwrap_or((series, ""));
            let labels = labels.trim_end_matches('}');
            let has =
                |(k, v): &(&str, &str)| labels.split(',').any(|kv| kv == format!("{k}=\"{v}\""));
            (n == name && filter.iter().all(has)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}
