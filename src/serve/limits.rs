//! Limits on client connections: how many a listener and one client address may hold at once,
//! how near the process may come to its file-descriptor limit (idle keep-alive connections are
//! then closed to make room, as nginx does), the deadline of a request header, and addresses cut
//! off for resetting HTTP/2 streams (resets.rs). Each cut is counted in
//! `fulcrum_limit_total{listener,limit}`.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::idle::IdleConnections;
use super::resets::{self, ResetLedger};

use crate::config::{ListenerConfig, ListenerLimits};
use crate::observe::metrics::Metrics;

/// Idle connections closed per connection that arrives beyond the soft cap (nginx drains 32).
const SHED_BATCH: usize = 32;
/// Only connections idle at least this long are closed to make room.
pub const SHED_MIN_IDLE: Duration = Duration::from_secs(1);

std::thread_local! {
    /// Raised by the request path when a request's header has arrived whole. It only means
    /// something during one poll of a `HeaderWatch`, which lowers it before and reads it after.
    static HEADER_ARRIVED: Cell<bool> = const { Cell::new(false) };
}

/// A request future that notes when its header has arrived (looking only until it has).
struct HeaderWatch<F> {
    request: F,
    arrived: bool,
}

impl<F: Future + Unpin> Future for HeaderWatch<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if self.arrived {
            return Pin::new(&mut self.request).poll(cx);
        }
        HEADER_ARRIVED.set(false);
        let polled = Pin::new(&mut self.request).poll(cx);
        if HEADER_ARRIVED.replace(false) {
            self.arrived = true;
        }
        polled
    }
}

/// Run `request` with a header that must arrive within `deadline`; None when it did not (the
/// request is dropped, which closes its connection). The first poll usually reads the whole
/// header (the loop waited for it to be readable), and then no timer is armed at all. (Not an
/// async fn, and the timer boxed: this future is part of every HTTP/1 connection's task, which
/// is allocated at its largest state; an async fn would keep its arguments twice,
/// rust-lang/rust#62958, and the timer is 128 bytes that the usual request never arms.)
pub fn with_header_deadline<T>(
    deadline: Duration,
    request: impl Future<Output = T> + Unpin,
) -> impl Future<Output = Option<T>> {
    let mut watch = HeaderWatch {
        request,
        arrived: false,
    };
    async move {
        if let Poll::Ready(done) = futures::poll!(&mut watch) {
            return Some(done);
        }
        if !watch.arrived {
            let mut timer = Box::pin(pingora::time::sleep(deadline));
            tokio::select! {
                biased;
                done = &mut watch => return Some(done),
                _ = &mut timer => {
                    if !watch.arrived {
                        return None;
                    }
                }
            }
        }
        Some((&mut watch.request).await)
    }
}

/// The request path's word that the current request's header has arrived whole.
pub fn header_arrived() {
    HEADER_ARRIVED.set(true);
}

struct ListenerSlot {
    name: String,
    addr: SocketAddr,
    open: AtomicUsize,
}

/// The connection counts of the process and the limits they are held to.
pub struct ConnectionLimits {
    listeners: Vec<ListenerSlot>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    open: AtomicUsize,
    /// Client connections the process holds before idle ones are closed to make room, and the
    /// count beyond which new ones are refused: both below the file-descriptor limit, so that
    /// accept() never fails for want of a descriptor.
    /// Measured at the first connection (the runtimes' own descriptors exist by then):
    /// `Caps::measure`.
    caps: OnceLock<Caps>,
    /// The process's file-descriptor limit.
    files: usize,
    /// Keep-alive connections idle long enough to be closed to make room, oldest first.
    idle: IdleConnections,
    /// Whether the process is at its soft cap (logged once per change).
    pressed: AtomicBool,
    /// HTTP/2 streams each client address reset, and the addresses cut off for it.
    resets: ResetLedger,
    metrics: Arc<Metrics>,
}

/// How many client connections the process holds before closing idle ones to make room (soft)
/// and before refusing new ones (hard).
#[derive(Clone, Copy, Debug)]
struct Caps {
    soft: usize,
    hard: usize,
}

impl Caps {
    /// The caps under a limit of `files` descriptors: what the process already holds (its
    /// runtimes' epoll and event descriptors, listeners, logs: ~60 with the default threads)
    /// is not for clients, and an eighth of the limit (at least 64) stays free for upstream
    /// connections; past half of that, new clients are refused, so accept() never fails.
    fn measure(files: usize) -> Caps {
        let in_use = std::fs::read_dir("/proc/self/fd").map_or(64, |d| d.count());
        let room = files.saturating_sub(in_use);
        let reserve = (files / 8).max(64);
        let caps = Caps {
            soft: room.saturating_sub(reserve).max(8),
            hard: room.saturating_sub(reserve / 2).max(16),
        };
        tracing::debug!("descriptor limit {files}, {in_use} in use at the first connection: client connections {caps:?}");
        caps
    }
}

/// Holds one admitted connection's place in the counts; released when dropped.
pub struct ConnectionGuard {
    limits: Arc<ConnectionLimits>,
    listener: Option<usize>,
    ip: Option<IpAddr>,
}

impl ConnectionLimits {
    /// Counts for `listeners`, with caps from the process's file-descriptor limit.
    pub fn new(listeners: &[ListenerConfig], metrics: Arc<Metrics>) -> Arc<ConnectionLimits> {
        let files = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| soft)
            .min(usize::MAX as u64) as usize;
        for l in listeners {
            for limit in LIMITS {
                metrics.limit_series(&l.name, limit);
            }
        }
        Arc::new(ConnectionLimits {
            listeners: listeners
                .iter()
                .map(|l| ListenerSlot {
                    name: l.name.clone(),
                    addr: l.addr,
                    open: AtomicUsize::new(0),
                })
                .collect(),
            per_ip: Mutex::new(HashMap::new()),
            open: AtomicUsize::new(0),
            caps: OnceLock::new(),
            files,
            idle: IdleConnections::default(),
            pressed: AtomicBool::new(false),
            resets: ResetLedger::default(),
            metrics,
        })
    }

    /// The listener a connection to `local` came in on.
    fn listener_of(&self, local: Option<SocketAddr>) -> Option<usize> {
        let local = local?;
        self.listeners
            .iter()
            .position(|l| crate::runtime::serves(l.addr, &local))
    }

    fn count(&self, listener: Option<usize>, limit: &str) {
        if let Some(slot) = listener.and_then(|i| self.listeners.get(i)) {
            self.metrics.limit(&slot.name, limit);
        }
    }

    /// Admit a new connection from `peer` to `local` under `limits`, or None (close it now).
    pub fn admit(
        self: &Arc<Self>,
        local: Option<SocketAddr>,
        peer: Option<IpAddr>,
        limits: &ListenerLimits,
    ) -> Option<ConnectionGuard> {
        let listener = self.listener_of(local);
        if peer.is_some_and(|ip| self.resets.cut_off(ip, Instant::now())) {
            self.count(listener, "h2_resets");
            return None;
        }
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        // From here on the guard undoes what was counted, whatever the verdict.
        let mut guard = ConnectionGuard {
            limits: self.clone(),
            listener: None,
            ip: None,
        };
        let caps = *self.caps.get_or_init(|| Caps::measure(self.files));
        if open > caps.soft {
            self.make_room(open, caps);
            if open > caps.hard {
                self.count(listener, "open_files");
                return None;
            }
        } else if self.pressed.swap(false, Ordering::Relaxed) {
            tracing::info!(
                "client connections back under the file-descriptor soft cap ({})",
                caps.soft
            );
        }
        if let Some(slot) = listener.and_then(|i| self.listeners.get(i)) {
            let n = slot.open.fetch_add(1, Ordering::Relaxed) + 1;
            guard.listener = listener;
            if limits.max_connections.is_some_and(|max| n > max) {
                self.count(listener, "max_connections");
                return None;
            }
        }
        if let (Some(ip), Some(max)) = (peer, limits.max_connections_per_ip) {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = per_ip.entry(ip).or_insert(0);
            *n += 1;
            let over = *n > max;
            drop(per_ip);
            guard.ip = Some(ip);
            if over {
                self.count(listener, "max_connections_per_ip");
                return None;
            }
        }
        Some(guard)
    }

    /// Ask up to `SHED_BATCH` idle connections to close; log the first time.
    fn make_room(&self, open: usize, caps: Caps) {
        if !self.pressed.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "{open} client connections, near the file-descriptor limit: closing idle keep-alive connections to make room (soft cap {}, refusing beyond {})",
                caps.soft,
                caps.hard
            );
        }
        self.idle.close_oldest(SHED_BATCH);
    }

    /// Client connections open now, on every listener.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The idle keep-alive connections that may be asked to make room.
    pub fn idle(&self) -> &IdleConnections {
        &self.idle
    }

    /// Count a request cut off on `listener` (by name) by `limit`.
    pub fn cut(&self, listener: &str, limit: &str) {
        self.metrics.limit(listener, limit);
    }

    /// `ip` reset an HTTP/2 stream on `listener` (by name) before it was answered; past
    /// `resets::MAX_RESETS` within `resets::WINDOW` the address is cut off (logged, counted).
    pub fn client_reset(&self, listener: &str, ip: IpAddr) {
        if self.resets.reset(ip, Instant::now()) {
            self.metrics.limit(listener, "h2_resets");
            tracing::warn!(
                "client {ip} reset {} HTTP/2 streams within {:?}: its connections are refused and its streams not forwarded for {:?}",
                resets::MAX_RESETS,
                resets::WINDOW,
                resets::PENALTY
            );
        }
    }

    /// Whether `ip` is cut off for resetting HTTP/2 streams.
    pub fn cut_off(&self, ip: IpAddr) -> bool {
        self.resets.cut_off(ip, Instant::now())
    }
}

/// Every limit a listener's series exist for from the start (so that alerts see 0 first).
const LIMITS: [&str; 9] = [
    "header_timeout",
    "max_header_bytes",
    "max_headers",
    "max_connections",
    "max_connections_per_ip",
    "open_files",
    "idle_closed",
    "body_timeout",
    "h2_resets",
];

impl ConnectionGuard {
    /// Count the connection's close to make room (it was among the oldest idle).
    pub fn closed_to_make_room(&self) {
        self.limits.count(self.listener, "idle_closed");
    }

    /// Count the connection's close for a request header that came too slowly.
    pub fn header_timed_out(&self) {
        self.limits.count(self.listener, "header_timeout");
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let l = &self.limits;
        l.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(slot) = self.listener.and_then(|i| l.listeners.get(i)) {
            slot.open.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(ip) = self.ip {
            let mut per_ip = l.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = per_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}
