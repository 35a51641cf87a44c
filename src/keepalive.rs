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
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use pingora::time::timeout;
use tokio::io::{AsyncRead, ReadBuf};

use crate::config::DEFAULT_KEEPALIVE_TIMEOUT;
use crate::proxy::Proxy;
use crate::runtime::SharedRuntime;

/// The proxy service's application: fulcrum's keep-alive loop around Pingora's HTTP proxy.
pub struct KeepAlive {
    proxy: Arc<HttpProxy<Proxy>>,
    runtime: SharedRuntime,
}

impl KeepAlive {
    pub fn new(proxy: HttpProxy<Proxy>, runtime: SharedRuntime) -> Self {
        KeepAlive {
            proxy: Arc::new(proxy),
            runtime,
        }
    }

    /// How long a connection may sit idle: its listener's `keepalive_timeout`.
    fn idle_timeout(&self, stream: &Stream) -> u64 {
        let digest = stream.get_socket_digest();
        let local = digest.as_ref().and_then(|d| d.local_addr());
        let runtime = self.runtime.load();
        let listener = runtime.listener_of(local.and_then(|a| a.as_inet()));
        runtime
            .listeners
            .get(listener)
            .map_or(DEFAULT_KEEPALIVE_TIMEOUT.as_secs(), |l| l.keepalive_secs)
    }
}

#[async_trait]
impl ServerApp for KeepAlive {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.proxy.process_new(stream, shutdown).await;
        }
        // Pingora's connection task is ~9 KB (it has room for a TLS handshake); the connection
        // moves to a task of its own size and Pingora's ends here.
        let app = self.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { app.serve(stream, shutdown).await });
        None
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

impl KeepAlive {
    /// Serve HTTP/1 requests on `stream` until it is closed, idle too long, or not reusable.
    async fn serve(&self, mut stream: Stream, mut shutdown: ShutdownWatch) {
        let idle_secs = self.idle_timeout(&stream);
        let idle = Duration::from_secs(idle_secs);
        let mut settings = None;
        loop {
            if !next_request(&mut stream, idle, &mut shutdown).await {
                return;
            }
            let request = self.request(stream, settings.take(), idle_secs, &shutdown);
            let Some(reused) = request.await else {
                return;
            };
            (stream, settings) = reused.consume();
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
            // Also bounds the reads of the first request's header, as Pingora's 60 s does.
            None => session.set_keepalive(Some(idle_secs)),
        }
        self.proxy.process_new_http(session, shutdown)
    }
}

/// Whether the next request has started to arrive (or the client closed or failed: the request
/// reader reports that) before the connection was idle for `idle` or the server began to shut
/// down, which closes idle connections as Pingora does.
async fn next_request(stream: &mut Stream, idle: Duration, shutdown: &mut ShutdownWatch) -> bool {
    let readable = timeout(idle, Readable::new(stream));
    tokio::pin!(readable);
    loop {
        tokio::select! {
            biased;
            ready = &mut readable => return ready.is_ok(),
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return false;
                }
            }
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
