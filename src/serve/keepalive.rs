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
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::serve::idle::{Asked, IdleConnections, IdleSignal};
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

    /// The server is shutting down: idle connections close (those idle less than
    /// `SHED_MIN_IDLE` once they are that idle), requests in flight are answered.
    async fn cleanup(&self) {
        self.limits.idle().close_all();
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
/// part of an idle keep-alive connection (a 512-byte allocation of the ~1.8 KB; 1,536 when the
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
            let signal = Arc::new(IdleSignal::default());
            let mut settings = None;
            loop {
                // Pipelined requests already read wait in the settings, not in the socket.
                let pipelined = settings
                    .as_ref()
                    .is_some_and(HttpPersistentSettings::has_pipelined_prefix);
                if !pipelined {
                    let waited = next_request(
                        &mut conn.stream,
                        conn.idle_secs,
                        conn.app.limits.idle(),
                        &signal,
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
    /// Idle too long, or the server is shutting down, which closes idle connections as Pingora
    /// does (those idle less than `SHED_MIN_IDLE` once that long: a request may be on its way).
    Closed,
    /// The process is near its file-descriptor limit and asks idle connections to make room.
    AskedToMakeRoom,
}

/// Wait up to `idle_secs` for the next request's first bytes; once idle `SHED_MIN_IDLE`, also for
/// the registry of idle connections to ask it to close. (Not an async fn, for the reason
/// `Connection::serve` gives: this future is most of an idle connection's task.)
#[allow(clippy::manual_async_fn)]
fn next_request<'a>(
    stream: &'a mut Stream,
    idle_secs: u64,
    registry: &'a IdleConnections,
    signal: &'a Arc<IdleSignal>,
) -> impl Future<Output = Waited> + Send + 'a {
    async move {
        signal.reset();
        let mut readable = Readable { stream, signal };
        // Until idle `SHED_MIN_IDLE` the wait listens for nothing else (most requests arrive
        // sooner, and pay for one timer); from then on it is in the registry of idle
        // connections, which asks the oldest to close first, and all of them at shutdown.
        // (The spans are computed again after the wait rather than kept across it: what the
        // wait keeps, each idle connection does.)
        let first = |idle_secs| limits::SHED_MIN_IDLE.min(Duration::from_secs(idle_secs));
        if timeout(first(idle_secs), &mut readable).await.is_ok() {
            return Waited::Request;
        }
        // Idle since the first span began (within the timer's 10 ms).
        let idle_since = Instant::now()
            .checked_sub(first(idle_secs))
            .unwrap_or_else(Instant::now);
        let Some(ticket) = registry.register(idle_since, signal) else {
            return Waited::Closed;
        };
        let rest = Duration::from_secs(idle_secs).saturating_sub(first(idle_secs));
        tokio::select! {
            biased;
            ready = timeout(rest, &mut readable) => match ready {
                Ok(()) => Waited::Request,
                Err(_) => Waited::Closed,
            },
            asked = ticket.asked() => match asked {
                Asked::ToMakeRoom => Waited::AskedToMakeRoom,
                Asked::ToStop => Waited::Closed,
            },
        }
    }
}

/// Resolves when the stream has bytes to read, without taking any: a zero-length read registers
/// for readiness and costs no system call while the socket is drained (tokio-rustls answers it
/// once it holds plaintext, which stays buffered for the request reader).
struct Readable<'a> {
    stream: &'a mut Stream,
    /// The waker the socket is given: it records that the socket fired, then wakes the task.
    signal: &'a Arc<IdleSignal>,
}

impl Future for Readable<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Woken by the socket (not by a timer or the registry): ready, no need to ask again,
        // which would cost a read(2) of nothing.
        if self.signal.readable(cx.waker()) {
            return Poll::Ready(());
        }
        let waker = Waker::from(self.signal.clone());
        let mut probe = Context::from_waker(&waker);
        let mut nothing = ReadBuf::new(&mut []);
        match Pin::new(&mut *self.stream).poll_read(&mut probe, &mut nothing) {
            Poll::Pending => Poll::Pending,
            // Bytes, end of stream or an error: the request reader sees which.
            Poll::Ready(_) => Poll::Ready(()),
        }
    }
}
