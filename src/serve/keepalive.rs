//! The life of an HTTP/1 client connection (plain or TLS): between requests it waits for its
//! next bytes holding nothing but its socket.
//!
//! Pingora's own loop calls `process_new_http` at once, which boxes the whole request future
//! (~13 KB) and allocates a 4 KB header buffer, then waits inside it: ~38 KB per idle
//! keep-alive connection, and its connection task reserves ~9 KB for a TLS handshake. Here an
//! HTTP/1 connection gets a small task of its own once accepted (and TLS-handshaken), and an
//! idle connection waits for readable bytes (a zero-length read: no extra system call; on TLS,
//! rustls's buffered plaintext counts) before it enters Pingora's request path. h2 (by ALPN)
//! takes Pingora's path unchanged; h2c listeners have a plain Pingora service of their own.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use crate::serve::idle::IdleConnections;
use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use pingora::time::timeout;
use tokio::io::{AsyncRead, ReadBuf};

use crate::config::{ListenerLimits, DEFAULT_KEEPALIVE_TIMEOUT};
use crate::runtime::SharedRuntime;
use crate::serve::limits::{self, ConnectionLimits};
use crate::serve::proxy::Proxy;

/// The first bytes of an HTTP/2 connection with prior knowledge (RFC 9113 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The proxy service's application: fulcrum's keep-alive loop around Pingora's HTTP proxy, and
/// the connection limits every client connection is admitted under.
pub struct KeepAlive {
    proxy: Arc<HttpProxy<Proxy>>,
    /// The same proxy with h2c on, for connections that open with the HTTP/2 preface on a
    /// listener with `h2c: true`.
    h2c_proxy: Arc<HttpProxy<Proxy>>,
    runtime: SharedRuntime,
    limits: Arc<ConnectionLimits>,
}

/// What a connection's listener asks of it.
struct ListenerTerms {
    idle_secs: u64,
    h2c: bool,
    limits: ListenerLimits,
}

impl KeepAlive {
    pub fn new(
        proxy: HttpProxy<Proxy>,
        h2c_proxy: HttpProxy<Proxy>,
        runtime: SharedRuntime,
        limits: Arc<ConnectionLimits>,
    ) -> Self {
        KeepAlive {
            proxy: Arc::new(proxy),
            h2c_proxy: Arc::new(h2c_proxy),
            runtime,
            limits,
        }
    }

    /// The terms of the listener at `local`.
    fn terms(&self, local: Option<SocketAddr>) -> ListenerTerms {
        let runtime = self.runtime.load();
        let listener = runtime.listener_of(local.as_ref());
        if listener.is_none() {
            runtime.stray(local.as_ref());
        }
        match listener.and_then(|i| runtime.listeners.get(i)) {
            Some(l) => ListenerTerms {
                idle_secs: l.keepalive_secs,
                h2c: l.h2c,
                limits: l.limits,
            },
            None => ListenerTerms {
                idle_secs: DEFAULT_KEEPALIVE_TIMEOUT.as_secs(),
                h2c: false,
                limits: ListenerLimits::DEFAULT,
            },
        }
    }
}

/// The local and peer addresses of a client connection.
fn addresses(stream: &Stream) -> (Option<SocketAddr>, Option<std::net::IpAddr>) {
    let digest = stream.get_socket_digest();
    let local = digest
        .as_ref()
        .and_then(|d| d.local_addr())
        .and_then(|a| a.as_inet())
        .copied();
    let peer = digest
        .as_ref()
        .and_then(|d| d.peer_addr())
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    (local, peer)
}

#[async_trait]
impl ServerApp for KeepAlive {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let (local, peer) = addresses(&stream);
        let terms = self.terms(local);
        let guard = self.limits.admit(local, peer, &terms.limits)?;
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            let _guard = guard;
            return self.proxy.process_new(stream, shutdown).await;
        }
        if terms.h2c {
            let opening = timeout(terms.limits.header_timeout, opens_h2(&mut stream)).await;
            match opening {
                Ok(Some(true)) => {
                    let _guard = guard;
                    return self.h2c_proxy.process_new(stream, shutdown).await;
                }
                Ok(Some(false)) => {}
                Ok(None) => return None,
                Err(_) => {
                    self.limits.header_timed_out(local);
                    return None;
                }
            }
        }
        // Pingora's connection task is ~9 KB (it has room for a TLS handshake); the connection
        // moves to a task of its own size and Pingora's ends here.
        let app = self.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _guard = guard;
            app.serve(stream, shutdown, local, terms).await
        });
        None
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
        self.h2c_proxy.http_cleanup().await;
    }
}

/// Whether a plain connection opens with the HTTP/2 preface (None: it closed or failed). Looks
/// one byte, then two, then 24 ahead (Pingora's peek waits for all 24, which a short HTTP/1
/// request never sends): only an opening `PR` can be the preface, no HTTP/1 method starts so.
async fn opens_h2(stream: &mut Stream) -> Option<bool> {
    let mut buf = [0u8; 24];
    for n in [1, 2, H2_PREFACE.len()] {
        let head = buf.get_mut(..n)?;
        stream.try_peek(head).await.ok()?;
        if H2_PREFACE.get(..n) != Some(&*head) {
            return Some(false);
        }
    }
    Some(true)
}

impl KeepAlive {
    /// Serve HTTP/1 requests on `stream` until it is closed, idle too long, not reusable, or
    /// too slow to send a request header.
    async fn serve(
        &self,
        mut stream: Stream,
        mut shutdown: ShutdownWatch,
        local: Option<SocketAddr>,
        terms: ListenerTerms,
    ) {
        let idle = Duration::from_secs(terms.idle_secs);
        let mut settings = None;
        let mut fresh = true;
        loop {
            // Pipelined requests already read wait in the settings, not in the socket.
            let pipelined = settings.as_ref().is_some_and(has_pipelined_prefix);
            if !pipelined
                && !self
                    .await_request(&mut stream, idle, &mut shutdown, local, fresh)
                    .await
            {
                return;
            }
            let request = self.request(stream, settings.take(), terms.idle_secs, &shutdown);
            let Some(done) =
                limits::with_header_deadline(terms.limits.header_timeout, request).await
            else {
                self.limits.header_timed_out(local);
                return;
            };
            let Some(reused) = done else {
                return;
            };
            (stream, settings) = reused.consume();
            fresh = false;
        }
    }

    /// Wait until the next request starts to arrive (true), or the connection should close:
    /// idle for `idle`, the server shutting down, or asked to make room (among the oldest idle).
    /// A `fresh` connection (no request yet) is not closed by a shutdown at once: it was
    /// accepted a moment ago and its first request is on the way.
    async fn await_request(
        &self,
        stream: &mut Stream,
        idle: Duration,
        shutdown: &mut ShutdownWatch,
        local: Option<SocketAddr>,
        fresh: bool,
    ) -> bool {
        let idle_since = Instant::now();
        match next_request(
            stream,
            idle_since,
            idle,
            shutdown,
            self.limits.idle(),
            fresh,
        )
        .await
        {
            Waited::Request => true,
            Waited::Closed => false,
            Waited::AskedToMakeRoom => {
                self.limits.closed_to_make_room(local);
                false
            }
        }
    }

    /// Pingora's processing of the next request on `stream`. Not async itself: the session
    /// (~700 bytes) goes straight into Pingora's request future, not into the connection's.
    fn request<'a>(
        &'a self,
        stream: Stream,
        settings: Option<HttpPersistentSettings>,
        idle_secs: u64,
        shutdown: &'a ShutdownWatch,
    ) -> Pin<Box<dyn Future<Output = Option<ReusedHttpStream>> + Send + 'a>> {
        let mut session = ServerSession::new_http1(stream);
        match settings {
            Some(settings) => settings.apply_to_session(&mut session),
            None => {
                // Also bounds the reads of the first request's header, as Pingora's 60 s does.
                session.set_keepalive(Some(idle_secs));
                // Pipelined requests are answered in order (RFC 9112 9.3.2); the settings
                // carry this on to the connection's later requests.
                session.set_pipelining_enabled(true);
            }
        }
        self.proxy.process_new_http(session, shutdown)
    }
}

/// Whether `settings` carry pipelined bytes read past the previous request. Pingora keeps them
/// private (they go to the next session's parser) and says so only in its `Debug` output,
/// which is scanned here without allocating and cut short right after the field's first
/// letter (`Some(`/`None`), before any bytes of the prefix are formatted. A connection with
/// such bytes must not wait for its socket: the client has sent everything and waits for its
/// answers. (The hostile corpus's pipelining cases fail if this stops working.)
fn has_pipelined_prefix(settings: &HttpPersistentSettings) -> bool {
    use std::fmt::Write;
    /// `derive(Debug)` writes each field name as one piece, then `": "`, then the value.
    struct Scan {
        at_field: bool,
        found: Option<bool>,
    }
    impl Write for Scan {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            if self.at_field {
                if s == ": " {
                    return Ok(());
                }
                self.found = Some(s.starts_with('S'));
                // Stop the formatting: the rest is not needed.
                return Err(std::fmt::Error);
            }
            self.at_field = s == "pipelined_prefix";
            Ok(())
        }
    }
    let mut scan = Scan {
        at_field: false,
        found: None,
    };
    let _ = write!(scan, "{settings:?}");
    scan.found.unwrap_or(false)
}

/// What waiting for the next request ended with.
enum Waited {
    /// Its first bytes are readable (or the client closed or failed: the reader sees which).
    Request,
    /// Idle too long, or the server began to shut down, which closes idle connections as
    /// Pingora does.
    Closed,
    /// The process is near its file-descriptor limit and asks idle connections to make room.
    AskedToMakeRoom,
}

/// How long a connection accepted just before a shutdown still waits for its first request.
const FRESH_GRACE: Duration = Duration::from_secs(1);

/// Wait for the next request's first bytes until `deadline`; from `sheddable_at` on, also for a
/// request to make room.
async fn next_request(
    stream: &mut Stream,
    idle_since: Instant,
    idle: Duration,
    shutdown: &mut ShutdownWatch,
    registry: &IdleConnections,
    fresh: bool,
) -> Waited {
    let deadline = idle_since + idle;
    let sheddable_at = idle_since + limits::SHED_MIN_IDLE;
    let now = Instant::now();
    let idle = deadline.saturating_duration_since(now);
    let mut readable = Readable::new(stream);
    // Only a connection idle since `sheddable_at` may be asked to make room: until then the
    // wait listens for nothing else (most requests arrive sooner, and pay for one timer); from
    // then on it is in the registry of idle connections, which asks the oldest first.
    let first = sheddable_at.saturating_duration_since(now).min(idle);
    let mut ticket = None;
    for (span, sheddable) in [(first, false), (idle.saturating_sub(first), true)] {
        if sheddable {
            ticket = Some(registry.register(idle_since));
        }
        let asked = async {
            match &ticket {
                Some(t) => t.asked.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(asked);
        let wait = timeout(span, &mut readable);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                biased;
                ready = &mut wait => match ready {
                    Ok(()) => return Waited::Request,
                    Err(_) => break,
                },
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        if !fresh {
                            return Waited::Closed;
                        }
                        // Accepted, maybe from the accept queue, just as the process began
                        // to stop: closing it now would lose a request that is on its way.
                        return match timeout(FRESH_GRACE, &mut wait).await {
                            Ok(Ok(())) => Waited::Request,
                            _ => Waited::Closed,
                        };
                    }
                }
                () = &mut asked, if sheddable => return Waited::AskedToMakeRoom,
            }
        }
    }
    Waited::Closed
}

/// Resolves when the stream has bytes to read, without taking any: a zero-length read registers
/// for readiness and costs no system call while the socket is drained (tokio-rustls answers it
/// once it holds plaintext, which stays buffered for the request reader).
struct Readable<'a> {
    stream: &'a mut Stream,
    registered: Option<Arc<ReadinessFlag>>,
}

impl<'a> Readable<'a> {
    fn new(stream: &'a mut Stream) -> Self {
        Readable {
            stream,
            registered: None,
        }
    }
}

impl Future for Readable<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Woken by the socket (not by a timer or the shutdown watch): ready, no need to ask
        // again, which would cost a read(2) of nothing.
        if self
            .registered
            .as_ref()
            .is_some_and(|flag| flag.ready.load(Ordering::Acquire))
        {
            return Poll::Ready(());
        }
        let flag = Arc::new(ReadinessFlag {
            ready: AtomicBool::new(false),
            task: cx.waker().clone(),
        });
        let waker = Waker::from(flag.clone());
        let mut probe = Context::from_waker(&waker);
        let mut nothing = ReadBuf::new(&mut []);
        match Pin::new(&mut *self.stream).poll_read(&mut probe, &mut nothing) {
            Poll::Pending => {
                self.registered = Some(flag);
                Poll::Pending
            }
            // Bytes, end of stream or an error: the request reader sees which.
            Poll::Ready(_) => Poll::Ready(()),
        }
    }
}

/// The waker handed to the socket: it records that the socket fired, then wakes the task.
struct ReadinessFlag {
    ready: AtomicBool,
    task: Waker,
}

impl Wake for ReadinessFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}
