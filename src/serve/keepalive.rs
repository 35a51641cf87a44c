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

use crate::serve::idle::{IdleConnections, IdleTicket};
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
use crate::serve::limits::{self, ConnectionGuard, ConnectionLimits};
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
                    guard.header_timed_out();
                    return None;
                }
            }
        }
        // Pingora's connection task is ~9 KB (it has room for a TLS handshake); the connection
        // moves to a task of its own size and Pingora's ends here.
        let connection = Connection {
            app: self.clone(),
            stream,
            shutdown: shutdown.clone(),
            idle_secs: terms.idle_secs,
            header_timeout: terms.limits.header_timeout,
            guard,
        };
        tokio::spawn(connection.serve());
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

/// An HTTP/1 client connection (plain or TLS), as its own task holds it. The task is the largest
/// part of an idle keep-alive connection (a 640-byte allocation of the ~2 KB; 1,536 when the
/// loop was nested async fns), so what it keeps between requests is kept small: the listener's
/// two timeouts (not all its terms), the guard (which knows the listener for the counters), and
/// no async fn's second copy of its arguments.
struct Connection {
    app: Arc<KeepAlive>,
    stream: Stream,
    shutdown: ShutdownWatch,
    idle_secs: u64,
    header_timeout: Duration,
    /// Counts the connection as open until it closes, and the limits it runs into.
    guard: ConnectionGuard,
}

impl Connection {
    /// Serve HTTP/1 requests until the connection is closed, idle too long, not reusable, or
    /// too slow to send a request header. An `async move` block rather than an async fn: an
    /// async fn's future keeps its arguments twice (once as passed, once as its locals;
    /// rust-lang/rust#62958), and the task is allocated at its largest state, the idle wait.
    fn serve(self) -> impl Future<Output = ()> + Send {
        let mut conn = self;
        async move {
            let mut settings = None;
            let mut fresh = true;
            loop {
                // Pipelined requests already read wait in the settings, not in the socket.
                let pipelined = settings
                    .as_ref()
                    .is_some_and(HttpPersistentSettings::has_pipelined_prefix);
                if !pipelined {
                    let waited = next_request(
                        &mut conn.stream,
                        conn.idle_secs,
                        &mut conn.shutdown,
                        conn.app.limits.idle(),
                        fresh,
                    )
                    .await;
                    match waited {
                        Waited::Request => {}
                        Waited::Closed => return,
                        Waited::AskedToMakeRoom => {
                            conn.guard.closed_to_make_room();
                            return;
                        }
                    }
                }
                let request =
                    conn.app
                        .request(conn.stream, settings.take(), conn.idle_secs, &conn.shutdown);
                let Some(done) = limits::with_header_deadline(conn.header_timeout, request).await
                else {
                    conn.guard.header_timed_out();
                    return;
                };
                let Some(reused) = done else {
                    return;
                };
                (conn.stream, settings) = reused.consume();
                fresh = false;
            }
        }
    }
}

impl KeepAlive {
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

/// Wait up to `idle_secs` for the next request's first bytes; once idle `SHED_MIN_IDLE`, also for
/// a request to make room. (Not an async fn, for the reason `Connection::serve` gives: this
/// future is most of an idle connection's task.)
#[allow(clippy::manual_async_fn)]
fn next_request<'a>(
    stream: &'a mut Stream,
    idle_secs: u64,
    shutdown: &'a mut ShutdownWatch,
    registry: &'a IdleConnections,
    fresh: bool,
) -> impl Future<Output = Waited> + Send + 'a {
    async move {
        let mut readable = Readable::new(stream);
        // Only a connection idle `SHED_MIN_IDLE` may be asked to make room: until then the wait
        // listens for nothing else (most requests arrive sooner, and pay for one timer); from
        // then on it is in the registry of idle connections, which asks the oldest first.
        let mut ticket: Option<IdleTicket> = None;
        loop {
            let sheddable = ticket.is_some();
            // Computed again rather than kept: what the wait keeps, each idle connection does.
            let idle = Duration::from_secs(idle_secs);
            let first = limits::SHED_MIN_IDLE.min(idle);
            let span = if sheddable {
                idle.saturating_sub(first)
            } else {
                first
            };
            {
                let asked = async {
                    match &ticket {
                        Some(ticket) => ticket.asked().await,
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
            if sheddable {
                return Waited::Closed;
            }
            // Idle since the first span began (within the timer's 10 ms).
            let idle_since = Instant::now()
                .checked_sub(first)
                .unwrap_or_else(Instant::now);
            ticket = Some(registry.register(idle_since));
        }
    }
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
