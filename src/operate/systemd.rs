//! systemd integration, without libsystemd: the service notification protocol of sd_notify(3)
//! (one datagram per message to the unix socket named by `NOTIFY_SOCKET`; a name starting with
//! `@` is in the abstract namespace), readiness once the listeners listen, the watchdog, and the
//! journal as stderr of a daemon started by `ExecReload` (`-d -u`).
//!
//! On a graceful upgrade systemd must learn the new main process before the old one exits, or
//! it would take the service for dead. The new process sends `MAINPID=<its pid>` with `READY=1`
//! once it serves (accepted with `NotifyAccess=all`), and the old process, once it has handed
//! its sockets over, sends `MAINPID=` of the process that wrote `server.pid_file` (the new
//! daemon of `ExecReload`'s `-d -u`): accepted with `NotifyAccess=main`, which the unit uses
//! (a child may not change the service's state; systemd-analyze security counts that).

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownWatch};
use pingora::services::background::BackgroundService;
use tokio::sync::broadcast;

/// Where notifications go, and the watchdog interval systemd expects pings within.
#[derive(Debug, Default)]
pub struct Notifier {
    socket: Option<UnixAddr>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From this process's environment (read before any fork): `NOTIFY_SOCKET`, and
    /// `WATCHDOG_USEC` when `WATCHDOG_PID` is unset or this process. A new process started for
    /// a graceful upgrade (`-u`, from `ExecReload`) gets no `WATCHDOG_USEC` from systemd, which
    /// gives it to the main process only: it takes the interval from the environment of the
    /// main process it replaces (`MAINPID`, which systemd sets for `ExecReload` commands).
    pub fn from_env(upgrade: bool) -> Notifier {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let socket = var("NOTIFY_SOCKET").and_then(|path| match socket_addr(&path) {
            Ok(addr) => Some(addr),
            Err(e) => {
                tracing::warn!("systemd: NOTIFY_SOCKET={path} is unusable: {e}");
                None
            }
        });
        let ours = var("WATCHDOG_PID").is_none_or(|p| p == std::process::id().to_string());
        let mut watchdog = var("WATCHDOG_USEC")
            .filter(|_| ours)
            .and_then(|v| parse_usec(&v));
        if watchdog.is_none() && upgrade && socket.is_some() {
            watchdog = var("MAINPID")
                .and_then(|pid| std::fs::read(format!("/proc/{pid}/environ")).ok())
                .and_then(|env| watchdog_in_environ(&env));
        }
        Notifier { socket, watchdog }
    }

    /// Whether there is anything to tell systemd.
    pub fn is_active(&self) -> bool {
        self.socket.is_some()
    }

    /// The interval systemd's watchdog expects pings within, when it is on.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Send `state` (newline-separated `KEY=VALUE` lines); a failure is logged, never fatal.
    pub fn notify(&self, state: &str) {
        let Some(addr) = &self.socket else { return };
        // Never blocks a runtime thread: a receiver that does not keep up loses the message.
        let sent = UnixDatagram::unbound()
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .and_then(|s| s.send_to_addr(state.as_bytes(), addr));
        if let Err(e) = sent {
            tracing::warn!("systemd: cannot notify ({}): {e}", first_line(state));
        }
    }

    /// `RELOADING=1` with the `MONOTONIC_USEC` systemd asks for, and a status line.
    pub fn reloading(&self, status: &str) {
        self.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS={status}",
            monotonic_usec()
        ));
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// The address of `NOTIFY_SOCKET`: a path, or `@name` in the abstract namespace.
fn socket_addr(path: &str) -> std::io::Result<UnixAddr> {
    match path.strip_prefix('@') {
        #[cfg(target_os = "linux")]
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            UnixAddr::from_abstract_name(name.as_bytes())
        }
        #[cfg(not(target_os = "linux"))]
        Some(_) => Err(std::io::Error::other("abstract sockets need Linux")),
        None if path.starts_with('/') => UnixAddr::from_pathname(path),
        None => Err(std::io::Error::other(
            "neither an absolute path nor an abstract name (@...)",
        )),
    }
}

fn parse_usec(v: &str) -> Option<Duration> {
    v.trim()
        .parse::<u64>()
        .ok()
        .filter(|&us| us > 0)
        .map(Duration::from_micros)
}

/// `WATCHDOG_USEC` in a /proc/PID/environ (NUL-separated `KEY=VALUE`).
pub fn watchdog_in_environ(environ: &[u8]) -> Option<Duration> {
    environ
        .split(|&b| b == 0)
        .find_map(|kv| kv.strip_prefix(b"WATCHDOG_USEC="))
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(parse_usec)
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares `MONOTONIC_USEC` with.
fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0)
}

/// Whether `addr` is a TCP socket in the LISTEN state in /proc/net/tcp (`tcp`) or tcp6 (`tcp6`).
/// The kernel prints addresses as 32-bit words in host byte order, ports in hex.
pub fn is_listening(addr: &SocketAddr, tcp: &str, tcp6: &str) -> bool {
    let word = |b: [u8; 4]| format!("{:08X}", u32::from_ne_bytes(b));
    let (table, ip) = match addr {
        SocketAddr::V4(a) => (tcp, word(a.ip().octets())),
        SocketAddr::V6(a) => (
            tcp6,
            a.ip()
                .octets()
                .as_chunks::<4>()
                .0
                .iter()
                .map(|c| word(*c))
                .collect(),
        ),
    };
    let want = format!("{ip}:{:04X}", addr.port());
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1);
        let state = fields.nth(1);
        local == Some(want.as_str()) && state == Some("0A")
    })
}

/// How long readiness waits for the listeners before it is sent anyway (with a warning).
const LISTEN_LIMIT: Duration = Duration::from_secs(10);

/// Tells systemd the service is ready once every listening address listens (started after the
/// listening services), pings the watchdog, and reports the process's phases as `STATUS=`.
pub struct NotifyService {
    notifier: Arc<Notifier>,
    addresses: Vec<SocketAddr>,
    phases: Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
    pid_file: PathBuf,
}

impl NotifyService {
    pub fn new(
        notifier: Arc<Notifier>,
        addresses: Vec<SocketAddr>,
        phases: broadcast::Receiver<ExecutionPhase>,
        pid_file: PathBuf,
    ) -> Self {
        NotifyService {
            notifier,
            addresses,
            phases: Mutex::new(Some(phases)),
            pid_file,
        }
    }

    /// After the hand-over: the pid of the new process, from the pid file a daemon (`-d -u`)
    /// wrote when it started, if it is another live process.
    fn successor(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        (pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists()).then_some(pid)
    }

    async fn wait_listening(&self) {
        let start = Instant::now();
        loop {
            let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
            let (tcp, tcp6) = (read("/proc/self/net/tcp"), read("/proc/self/net/tcp6"));
            let missing: Vec<_> = self
                .addresses
                .iter()
                .filter(|a| !is_listening(a, &tcp, &tcp6))
                .collect();
            if missing.is_empty() {
                return;
            }
            if start.elapsed() > LISTEN_LIMIT {
                tracing::warn!("systemd: ready although {missing:?} do not listen yet");
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[async_trait]
impl BackgroundService for NotifyService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut phases = self.phases.lock().ok().and_then(|mut p| p.take());
        self.wait_listening().await;
        let pid = std::process::id();
        self.notifier.notify(&format!(
            "READY=1\nMAINPID={pid}\nSTATUS=serving on {} address(es), pid {pid}",
            self.addresses.len()
        ));
        tracing::info!("systemd: ready (MAINPID={pid})");
        // Pings at half the interval, as sd_watchdog_enabled(3) advises.
        let mut ping = self.notifier.watchdog().map(|d| {
            let mut t = tokio::time::interval(d / 2);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        // Whether this process is handing its sockets to a new one (else a shutdown is a stop).
        let mut upgrading = false;
        loop {
            tokio::select! {
                biased;
                phase = async { match phases.as_mut() { Some(p) => Some(p.recv().await), None => None } }, if phases.is_some() => {
                    match phase {
                        Some(Ok(ExecutionPhase::GracefulUpgradeTransferringFds)) => {
                            upgrading = true;
                            self.notifier
                                .notify("STATUS=handing the listening sockets to a new process");
                        }
                        Some(Ok(ExecutionPhase::GracefulUpgradeCloseTimeout)) => match self.successor() {
                            Some(new) => self.notifier.notify(&format!(
                                "MAINPID={new}\nSTATUS=handed the sockets to pid {new}; draining"
                            )),
                            None => self
                                .notifier
                                .notify("STATUS=handed the sockets to a new process; draining"),
                        },
                        Some(Err(broadcast::error::RecvError::Closed)) | None => phases = None,
                        Some(_) => {}
                    }
                }
                // Pingora signals the shutdown before it broadcasts the phase of a SIGTERM, so a
                // stop is told by the shutdown itself. Only a stop: an upgrade's old process
                // must not say STOPPING=1, which would stop the service the new process carries.
                _ = shutdown.changed() => {
                    if !upgrading {
                        self.notifier
                            .notify("STOPPING=1\nSTATUS=stopping: finishing requests in flight");
                    }
                    return;
                }
                Some(_) = async { match ping.as_mut() { Some(t) => Some(t.tick().await), None => None } } => {
                    self.notifier.notify("WATCHDOG=1");
                }
            }
        }
    }
}

/// Puts a saved stderr back on fd 2 in a daemon: Pingora's daemonize points stderr at
/// /dev/null unless `server.error_log` is set, which under systemd (`ExecReload`'s `-d -u`)
/// would lose every log line of the upgraded process instead of sending it to the journal.
pub struct RestoreStderr {
    saved: Mutex<Option<OwnedFd>>,
}

impl RestoreStderr {
    /// A copy of this process's stderr (close-on-exec), taken before the fork.
    pub fn save() -> std::io::Result<RestoreStderr> {
        use std::os::fd::AsFd;
        let saved = std::io::stderr().as_fd().try_clone_to_owned()?;
        Ok(RestoreStderr {
            saved: Mutex::new(Some(saved)),
        })
    }
}

#[async_trait]
impl BackgroundService for RestoreStderr {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let Some(fd) = self.saved.lock().ok().and_then(|mut s| s.take()) else {
            return;
        };
        if let Err(e) = nix::unistd::dup2_stderr(&fd) {
            tracing::warn!("systemd: cannot restore stderr: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n   1: 00000000:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n   2: 0100007F:1F92 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n";
    const TCP6: &str = "  sl  local_address                         remote_address                        st\n   0: 00000000000000000000000001000000:1F93 00000000000000000000000000000000:0000 0A\n";

    #[test]
    fn finds_listening_sockets_in_proc_net_tcp() {
        let listening = |a: &str| is_listening(&a.parse().unwrap(), TCP, TCP6);
        assert!(listening("127.0.0.1:8080"));
        assert!(listening("0.0.0.0:8081"));
        assert!(!listening("127.0.0.1:8082"), "established, not listening");
        assert!(!listening("127.0.0.2:8080"));
        assert!(listening("[::1]:8083"));
        assert!(!listening("[::]:8083"));
    }

    #[test]
    fn reads_the_watchdog_interval_of_another_process() {
        let env = b"PATH=/usr/bin\0WATCHDOG_PID=12\0WATCHDOG_USEC=30000000\0";
        assert_eq!(watchdog_in_environ(env), Some(Duration::from_secs(30)));
        assert_eq!(watchdog_in_environ(b"PATH=/usr/bin\0"), None);
        assert_eq!(watchdog_in_environ(b"WATCHDOG_USEC=0\0"), None);
    }

    #[test]
    fn socket_names() {
        assert!(socket_addr("/run/systemd/notify").is_ok());
        assert!(socket_addr("@abstract/name").is_ok());
        assert!(socket_addr("relative").is_err());
    }
}
