//! The request path (Pingora `ProxyHttp`) and its per-request context: route -> pool -> pick ->
//! peer, retries on another backend. Each phase stays small and delegates: forwarding headers
//! to `forwarding`, fulcrum's own responses to `own_response`, affinity to the pool's `sticky`,
//! the response cache's hooks to `cache`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::FutureExt;
use http::header::{HeaderValue, HOST};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::{ErrorSource, ErrorType};
use pingora_cache::{CacheKey, CacheMeta, RespCacheable};

use crate::config::ListenerLimits;
use crate::edge::cache::RouteCache;
use crate::observe::access_log::{AccessLog, Entry};
use crate::observe::edge_metrics::CacheResult;
use crate::observe::metrics::ErrorKind;
use crate::pool::sticky::{self, Decision};
use crate::pool::{hash_key, InflightGuard, Pool};
use crate::runtime::{ListenerInfo, PoolObserver, Runtime, SharedRuntime};
use crate::serve::challenge::Challenges;
use crate::serve::debug_header;
use crate::serve::forwarding::{self, request_host, Origin};
use crate::serve::limits::ConnectionLimits;
use crate::serve::own_response::{own_body, own_response, redirect, status_for};
use crate::serve::strict;

/// The proxy service's logic; holds only the shared runtime snapshot.
pub struct Proxy {
    runtime: SharedRuntime,
    access_log: Option<Arc<AccessLog>>,
    /// Set once a graceful shutdown or upgrade began: responses then close their connection,
    /// so that keep-alive clients move to the new process before this one stops reading.
    draining: Arc<AtomicBool>,
    /// Where cuts by a listener limit are counted.
    limits: Arc<ConnectionLimits>,
    /// Pending ACME HTTP-01 challenges, answered on plain listeners before routing.
    challenges: Option<Arc<Challenges>>,
}

impl Proxy {
    pub fn new(
        runtime: SharedRuntime,
        access_log: Option<Arc<AccessLog>>,
        draining: Arc<AtomicBool>,
        limits: Arc<ConnectionLimits>,
    ) -> Self {
        Proxy {
            runtime,
            access_log,
            draining,
            limits,
            challenges: None,
        }
    }

    /// Answer ACME HTTP-01 challenges from `challenges` (issue #17).
    pub fn with_challenges(mut self, challenges: Arc<Challenges>) -> Self {
        self.challenges = Some(challenges);
        self
    }

    /// A request for an ACME HTTP-01 challenge on a plain listener: answered with the key
    /// authorization (or 404). None: not such a request.
    async fn acme_challenge(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
    ) -> Option<Result<bool>> {
        if ctx.listener().is_none_or(|l| l.tls) {
            return None;
        }
        let answer = self
            .challenges
            .as_ref()?
            .answer(session.req_header().uri.path())?;
        let Some(key_authorization) = answer else {
            return Some(self.answer(session, ctx, 404).await);
        };
        let body = bytes::Bytes::from(key_authorization);
        let write = async {
            let mut resp = own_response(200, &ctx.request_id, &body)?;
            resp.insert_header(http::header::CONTENT_TYPE, "application/octet-stream")?;
            self.close_if_draining(session);
            session.write_response_header(Box::new(resp), false).await?;
            session.write_response_body(Some(body), true).await?;
            Ok(true)
        };
        Some(write.await)
    }

    /// `redirect_https`: 308 to the same host (on the https `port`) and path.
    async fn redirect_https(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        port: u16,
    ) -> Result<bool> {
        let req = session.req_header();
        let Some(host) = request_host(req).map(crate::route::normalize_host) else {
            return self.answer(session, ctx, 400).await;
        };
        let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let (resp, body) = redirect(host, port, target, &ctx.request_id)?;
        self.close_if_draining(session);
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await?;
        Ok(true)
    }

    /// Answer `status` with fulcrum's own short body; the request is done (`Ok(true)`).
    async fn answer(&self, session: &mut Session, ctx: &RequestCtx, status: u16) -> Result<bool> {
        self.close_if_draining(session);
        let body = own_body(status, &ctx.request_id);
        let resp = own_response(status, &ctx.request_id, &body)?;
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await?;
        Ok(true)
    }

    /// While draining, answer with `Connection: close`.
    fn close_if_draining(&self, session: &mut Session) {
        if self.draining.load(Ordering::Relaxed) {
            session.set_keepalive(None);
        }
    }
}

/// Per-request state, kept small: it lives inside the request's future.
pub struct RequestCtx {
    /// The snapshot this request started with; it keeps it to the end.
    runtime: Arc<Runtime>,
    pool: Option<Arc<Pool>>,
    /// Index of `pool` in the runtime (for its observer).
    pool_index: Option<usize>,
    /// Index of the listener the request came in on (None: no listener serves its address).
    listener: Option<usize>,
    request_id: HeaderValue,
    /// The backend of the current attempt; dropping it releases the in-flight count.
    current: Option<(usize, InflightGuard)>,
    /// Backends (pool indices) already tried by this request.
    tried: Vec<usize>,
    attempts: u32,
    /// The status to answer when no further attempt is possible after failures.
    failure_status: u16,
    started: Instant,
    /// When the current attempt's request header went to its backend (None: not yet, or its
    /// response header was timed already): `fulcrum_upstream_response_seconds`.
    sent: Option<Instant>,
    /// What affinity decided (None: the pool has no affinity).
    affinity: Option<Decision>,
    /// The affinity session the request belongs to (set with `affinity`).
    session: u64,
    /// Whether the response must (re)set the affinity cookie.
    set_cookie: bool,
    /// The status of the backend's response, if one arrived.
    upstream_status: Option<u16>,
    /// The status fulcrum answered itself after a failure (0: client gone).
    error_status: Option<u16>,
    /// `X-Fulcrum-Debug`'s text, when this client gets it.
    debug: Option<String>,
    /// The cache of the request's route (None: the route does not cache).
    cache: Option<Arc<RouteCache>>,
    /// Whether the request came with `Authorization` (before an auth method could strip it),
    /// or its route checks credentials: what it gets is not stored unless the response allows.
    credentials: bool,
    /// How the cache answered (set with the response header; a bypass when not looked up).
    cache_result: Option<CacheResult>,
}

impl RequestCtx {
    /// The current attempt failed: remember its backend as tried and release it.
    fn end_attempt(&mut self, status: u16) {
        if let Some((i, _guard)) = self.current.take() {
            self.tried.push(i);
        }
        self.sent = None;
        self.failure_status = status;
    }

    /// Whether another attempt on another backend is allowed: retries and backends left, time
    /// left, and room in the pool's retry budget (taken from it when so).
    fn may_retry(&self) -> bool {
        let Some(p) = &self.pool else {
            return false;
        };
        let allowed = self.attempts <= p.retries
            && self.tried.len() < p.backends().len()
            && self.remaining(p).is_none_or(|r| !r.is_zero());
        if allowed && !p.retry_budget.try_retry() {
            if let Some(o) = self.observer() {
                o.metrics.retry_budget_exhausted();
            }
            return false;
        }
        allowed
    }

    /// Time left before the pool's overall request deadline (None: no deadline).
    fn remaining(&self, pool: &Pool) -> Option<Duration> {
        pool.timeouts
            .request
            .map(|total| total.saturating_sub(self.started.elapsed()))
    }

    /// Report the current attempt's failure to the pool (passive health; least_latency
    /// takes it as a penalty sample).
    fn report_failure(&self, kind: ErrorKind, why: &str) {
        if let (Some(pool), Some((i, guard))) = (&self.pool, &self.current) {
            pool.report_failure(*i, guard.generation(), why);
            pool.penalize_latency(*i, guard.started().elapsed());
            if let Some(o) = self.observer() {
                o.metrics.upstream_error(*i, kind);
            }
        }
    }

    /// The listener the request came in on.
    fn listener(&self) -> Option<&ListenerInfo> {
        self.listener.and_then(|i| self.runtime.listeners.get(i))
    }

    /// The metric handles and log limit of the request's pool (None before routing).
    fn observer(&self) -> Option<&PoolObserver> {
        self.pool_index.and_then(|i| self.runtime.observers.get(i))
    }
}

/// `strict::check` on the request, plus, for an HTTP/1 request with Transfer-Encoding, a look at
/// its raw header for a Content-Length line (which Pingora has dropped by now).
fn check_request(session: &Session) -> std::result::Result<(), strict::Refusal> {
    let framing = strict::check(session.req_header(), session.is_http2())?;
    if framing.chunked {
        let raw = session
            .as_downstream()
            .as_http1()
            .map(|h1| h1.get_headers_raw_bytes());
        if raw.is_some_and(|raw| strict::content_length_beside_te(&raw)) {
            return Err(strict::Refusal {
                status: 400,
                reason: "Content-Length beside Transfer-Encoding",
            });
        }
    }
    Ok(())
}

/// The size of a request header as sent: request line and fields, with their separators.
fn header_bytes(req: &RequestHeader) -> usize {
    let line = req.method.as_str().len() + req.raw_path().len() + 12;
    req.headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// Whether the request is an HTTP/2 stream its client has already reset (`RST_STREAM`): one look,
/// without waiting. HTTP/1 has no such signal (a closed connection shows up on the first write).
/// The client's address, without its port.
fn client_ip(session: &Session) -> Option<std::net::IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

fn client_reset_its_stream(session: &mut Session) -> bool {
    session
        .as_downstream_mut()
        .watch_h2_stream_close()
        .and_then(FutureExt::now_or_never)
        .is_some()
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            runtime: self.runtime.load_full(),
            pool: None,
            pool_index: None,
            listener: None,
            request_id: HeaderValue::from_static("-"),
            current: None,
            tried: Vec::new(),
            attempts: 0,
            failure_status: 502,
            started: Instant::now(),
            sent: None,
            affinity: None,
            session: 0,
            set_cookie: false,
            upstream_status: None,
            error_status: None,
            debug: None,
            cache: None,
            credentials: false,
            cache_result: None,
        }
    }

    fn init_downstream_modules(&self, _modules: &mut HttpModules) {
        // fulcrum does not compress: no downstream modules at all.
    }

    /// The header has arrived: its id, its listener, and the listener's limits on its size;
    /// the body's reads are bounded by the listener's `body_timeout`.
    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        crate::serve::limits::header_arrived();
        let req = session.req_header();
        ctx.request_id = forwarding::request_id(req);
        let local = session.server_addr().and_then(|a| a.as_inet());
        ctx.listener = ctx.runtime.listener_of(local);
        if ctx.listener.is_none() {
            ctx.runtime.stray(local);
        }
        let listener = ctx.listener();
        let name = listener.map_or("", |l| l.name.as_str());
        let limits = listener.map_or(&ListenerLimits::DEFAULT, |l| &l.limits);
        let over = if req.headers.len() > limits.max_headers {
            Some("max_headers")
        } else if header_bytes(req) > limits.max_header_bytes {
            Some("max_header_bytes")
        } else {
            None
        };
        if let Some(limit) = over {
            self.limits.cut(name, limit);
            return Error::e_explain(
                ErrorType::HTTPStatus(431),
                format!("request header over the listener's {limit}"),
            );
        }
        // A client cut off for resetting streams: nothing more of it reaches a backend, also
        // on the connections it opened before.
        if session.is_http2() && client_ip(session).is_some_and(|ip| self.limits.cut_off(ip)) {
            self.limits.cut(name, "h2_resets");
            return Error::e_explain(
                ErrorType::HTTPStatus(429),
                "client cut off for resetting HTTP/2 streams",
            );
        }
        session
            .as_downstream_mut()
            .set_read_timeout(Some(limits.body_timeout));
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if let Err(refused) = check_request(session) {
            tracing::debug!("refused a request ({}): {}", refused.status, refused.reason);
            // What follows a refused header cannot be trusted to be the next request.
            session.set_keepalive(None);
            return self.answer(session, ctx, refused.status).await;
        }
        if !session.is_http2() {
            // Absolute-form: the target's authority is the Host, and the backend gets the
            // origin-form (RFC 9112 3.2.2).
            if let Some((authority, origin)) =
                strict::absolute_form(session.req_header().raw_path())
            {
                let host = HeaderValue::from_bytes(authority)
                    .map_err(|_| Error::explain(ErrorType::HTTPStatus(400), "bad authority"))?;
                let req = session.req_header_mut();
                req.insert_header(HOST, host)?;
                req.set_raw_path(&origin)?;
            }
        }
        let listener = ctx.listener();
        // Pingora keeps an idle client connection forever ("0"); bound it. `None` (closing)
        // is left alone.
        if session.get_keepalive() == Some(0) {
            session.set_keepalive(listener.map(|l| l.keepalive_secs));
        }
        if let Some(done) = self.acme_challenge(session, ctx).await {
            return done;
        }
        if let Some(port) = listener.and_then(|l| l.redirect_to) {
            return self.redirect_https(session, ctx, port).await;
        }
        let req = session.req_header();
        let found = ctx
            .runtime
            .router
            .find_route(request_host(req), req.uri.path());
        let index = found.map(|(_, pool)| pool);
        if let Some(pool) = index.and_then(|i| ctx.runtime.pools.get(i).cloned()) {
            ctx.pool = Some(pool);
            ctx.pool_index = index;
            let route = found.map_or(0, |(route, _)| route);
            ctx.cache = ctx.runtime.edge.caches.get(route).cloned();
            if let Some(c) = &ctx.cache {
                ctx.credentials =
                    c.protected || crate::edge::cache::has_authorization(session.req_header());
            }
            if let Some(refusal) = crate::serve::edge::admit(session, &ctx.runtime, route).await? {
                self.close_if_draining(session);
                return crate::serve::edge::refuse(session, &ctx.request_id, refusal).await;
            }
            return Ok(false);
        }
        self.answer(session, ctx, 404).await
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        if let Some(c) = &ctx.cache {
            if !crate::serve::cache::enable(session, c) {
                ctx.cache_result = Some(CacheResult::Bypass);
            }
        }
        Ok(())
    }

    /// After the cache lookup, before the backend: a request the cache's predictor bypassed
    /// (its URL's last response could not be stored) is counted so.
    async fn proxy_upstream_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        if ctx.cache.is_some() && session.cache.bypassing() {
            ctx.cache_result.get_or_insert(CacheResult::Bypass);
        }
        Ok(true)
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        crate::serve::cache::key(session, ctx.listener().is_some_and(|l| l.tls))
    }

    fn response_cache_filter(
        &self,
        _session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        Ok(match &ctx.cache {
            Some(c) => c.cacheable(resp, ctx.credentials),
            None => RespCacheable::Uncacheable(pingora_cache::NoCacheReason::NeverEnabled),
        })
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<pingora_cache::key::HashBinary> {
        crate::edge::cache::variance(meta, req)
    }

    /// Stale while revalidating (no error) within the object's window; stale on any failure
    /// but the client's own (no backend ready, connect errors, 5xx) within its stale-if-error
    /// window.
    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        error.is_none_or(|e| *e.esource() != ErrorSource::Downstream)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(pool) = ctx.pool.clone() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "request has no pool",
            ));
        };
        if ctx.attempts == 0 && client_reset_its_stream(session) {
            // Rapid reset (CVE-2023-44487): h2 hands over streams the client already reset.
            if let Some(ip) = client_ip(session) {
                let listener = ctx.listener().map_or("", |l| l.name.as_str());
                self.limits.client_reset(listener, ip);
            }
            return Err(Error::create(
                ErrorType::ConnectionClosed,
                ErrorSource::Downstream,
                Some("the client reset its HTTP/2 stream before it was forwarded".into()),
                None,
            ));
        }
        let pinned = match (&pool.affinity, ctx.attempts) {
            (Some(sticky), 0) => {
                let now = sticky::unix_now();
                let pinned = sticky.pin(
                    session.req_header(),
                    now,
                    |i| pool.is_ready(i),
                    |i| pool.keeps_pinned(i),
                );
                ctx.affinity = Some(pinned.decision);
                ctx.session = pinned.session;
                ctx.set_cookie = pinned.set_cookie;
                pinned.backend
            }
            (Some(_), _) => {
                // A retry moves the request to another backend: the cookie must follow it.
                ctx.set_cookie = true;
                None
            }
            (None, _) => None,
        };
        let picked = pinned.or_else(|| {
            let client_ip = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip());
            let key = pool
                .hash_key
                .as_ref()
                .and_then(|k| hash_key::extract(k, session.req_header(), client_ip));
            let tried = &ctx.tried;
            pool.select(key.as_deref(), |i| tried.contains(&i), ctx.attempts == 0)
        });
        if ctx.attempts == 0 {
            pool.retry_budget.request();
        } else {
            if let Some(o) = ctx.observer() {
                o.metrics.retry();
            }
        }
        let Some(i) = picked else {
            if ctx.attempts == 0 {
                if let Some(o) = ctx.observer() {
                    o.metrics.no_backend();
                }
            }
            let (status, why) = if ctx.attempts == 0 {
                (503, "no ready backend")
            } else {
                (ctx.failure_status, "no other backend to retry on")
            };
            return Err(Error::explain(
                ErrorType::HTTPStatus(status),
                format!("pool {}: {why}", pool.name),
            ));
        };
        let not_in_pool = || {
            Error::explain(
                ErrorType::InternalError,
                "picked backend is not in its pool",
            )
        };
        let backend = pool.backends().get(i).cloned().ok_or_else(not_in_pool)?;
        let mut peer = pool.peer(i).ok_or_else(not_in_pool)?;
        if session.is_upgrade_req() {
            // A WebSocket (or other upgraded) connection may be quiet for up to `idle`.
            peer.options.read_timeout = Some(pool.timeouts.idle);
        }
        if let Some(left) = ctx.remaining(&pool) {
            if left.is_zero() {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(504),
                    format!("pool {}: request deadline passed", pool.name),
                ));
            }
            // Each attempt's timeouts are cut to what is left of the deadline.
            let o = &mut peer.options;
            for t in [
                &mut o.connection_timeout,
                &mut o.read_timeout,
                &mut o.write_timeout,
            ] {
                *t = Some(t.map_or(left, |t| t.min(left)));
            }
        }
        ctx.current = Some((i, InflightGuard::acquire(backend)));
        ctx.attempts += 1;
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing reached the backend: always safe to try another one.
        let status = if *e.etype() == ErrorType::ConnectTimedout {
            504
        } else {
            502
        };
        ctx.report_failure(ErrorKind::of(&e), e.etype().as_str());
        ctx.end_attempt(status);
        if ctx.may_retry() {
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let upstream_fault = *e.esource() != ErrorSource::Downstream;
        if upstream_fault {
            ctx.report_failure(ErrorKind::of(&e), e.etype().as_str());
        }
        ctx.end_attempt(status_for(&e).max(502));
        // Replay only what is safe: an idempotent request whose body is empty or fully
        // buffered, failed by the backend before any response byte reached the client.
        let replayable = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && session.response_written().is_none();
        e.set_retry(upstream_fault && replayable && ctx.may_retry());
        e
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        ctx.upstream_status = Some(status);
        // Timed to the final header: a 1xx (100 Continue) is not the backend's answer yet.
        if status >= 200 {
            if let (Some(sent), Some((i, _)), Some(o)) =
                (ctx.sent.take(), &ctx.current, ctx.observer())
            {
                o.metrics
                    .upstream_response(*i, sent.elapsed().as_secs_f64());
            }
        }
        let failed = ctx
            .pool
            .as_ref()
            .and_then(|p| p.passive_health.as_ref())
            .is_some_and(|p| p.fail_on_status.contains(&status));
        if failed {
            ctx.report_failure(ErrorKind::Status, &format!("answered {status}"));
        } else if let (Some(pool), Some((i, guard))) = (&ctx.pool, &ctx.current) {
            pool.observe_latency(*i, guard.started().elapsed());
        }
        if let (Some(pool), Some((i, _))) = (&ctx.pool, &ctx.current) {
            pool.take_feedback(*i, &upstream_response.headers);
        }
        // A success is reported in `logging`, once the whole response has been relayed.
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.sent = Some(Instant::now());
        let tls = ctx.listener().is_some_and(|l| l.tls);
        let backend = ctx
            .pool
            .as_ref()
            .zip(ctx.current.as_ref())
            .and_then(|(p, (i, _))| p.backends().get(*i))
            .map(|b| b.addr);
        let origin = Origin {
            request: session.req_header(),
            client_ip: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            tls,
            request_id: &ctx.request_id,
            http2: session.is_http2(),
            backend,
        };
        forwarding::apply(upstream, &origin)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.close_if_draining(session);
        if ctx.cache.is_some() {
            let result = *ctx
                .cache_result
                .get_or_insert_with(|| crate::serve::cache::result(session));
            response.insert_header("x-cache", crate::serve::cache::header(result))?;
        }
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        if let Some(pool) = ctx
            .pool
            .as_ref()
            .filter(|_| debug_header::trusted(ctx.listener(), client))
        {
            let req = session.req_header();
            let route = ctx
                .runtime
                .router
                .matching(request_host(req), req.uri.path())
                .map(|(i, r)| (i, crate::route::route_text(r)));
            let text = debug_header::Trace {
                route,
                pool,
                affinity: ctx.affinity,
                tried: &ctx.tried,
                served: ctx.current.as_ref().map(|(i, _)| *i),
            }
            .render();
            response.insert_header("x-fulcrum-debug", text.as_str())?;
            ctx.debug = Some(text);
        }
        if !ctx.set_cookie {
            return Ok(());
        }
        if ctx.session == 0 {
            // A retry moved a request that had no session yet.
            ctx.session = crate::pool::affinity::new_session();
        }
        if let (Some(pool), Some((i, _))) = (&ctx.pool, &ctx.current) {
            if let Some(cookie) = pool.affinity.as_ref().and_then(|s| {
                let tls = ctx.listener().is_some_and(|l| l.tls);
                s.set_cookie(*i, ctx.session, sticky::unix_now(), tls)
            }) {
                response.append_header(http::header::SET_COOKIE, cookie)?;
            }
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let status = status_for(e);
        tracing::debug!("answering {status}: {e}");
        ctx.error_status = Some(status);
        if status > 0 {
            let body = own_body(status, &ctx.request_id);
            if let Ok(resp) = own_response(status, &ctx.request_id, &body) {
                if let Err(err) = session
                    .as_downstream_mut()
                    .write_error_response(resp, body)
                    .await
                {
                    tracing::debug!("could not send the {status} response: {err}");
                }
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _e: &Error) -> bool {
        // `logging` reports failures itself, with pool and backend, rate-limited.
        true
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
        _e: &Error,
        _context: ProxyWarnLogContext,
    ) -> bool {
        // Retries are counted (fulcrum_retries_total) and failures logged once, in `logging`.
        true
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let client_too_slow = e.is_some_and(|e| {
            *e.esource() == ErrorSource::Downstream && *e.etype() == ErrorType::ReadTimedout
        });
        if client_too_slow {
            let name = ctx.listener().map_or("", |l| l.name.as_str());
            self.limits.cut(name, "body_timeout");
        }
        if let (None, Some(upstream), Some(pool), Some((i, _))) =
            (e, ctx.upstream_status, &ctx.pool, &ctx.current)
        {
            let failed = pool
                .passive_health
                .as_ref()
                .is_some_and(|p| p.fail_on_status.contains(&upstream));
            if !failed {
                pool.report_success(*i);
            }
        }
        let status = match (session.response_written(), ctx.error_status) {
            (Some(resp), _) => resp.status.as_u16(),
            (None, Some(code)) if code > 0 => code,
            // The client went away before any response: nginx's 499.
            _ => 499,
        };
        let backend = ctx
            .current
            .as_ref()
            .map(|(i, _)| *i)
            .or(ctx.tried.last().copied());
        if let Some(c) = &ctx.cache {
            c.count(ctx.cache_result.unwrap_or(CacheResult::Miss));
        }
        let elapsed = ctx.started.elapsed();
        let rt = &ctx.runtime;
        let observer = ctx.observer().unwrap_or(&rt.unrouted);
        observer
            .metrics
            .request(ctx.listener, backend, status, elapsed.as_secs_f64());
        if let Some(d) = ctx.affinity {
            observer.metrics.affinity(d.as_str());
        }
        let pool_name = ctx.pool.as_ref().map_or("", |p| p.name.as_str());
        let backend_name = ctx
            .pool
            .as_ref()
            .zip(backend)
            .and_then(|(p, i)| p.backends().get(i))
            .map_or("", |b| b.name.as_str());
        if let Some(e) = e.filter(|_| status >= 500) {
            if let Some(suppressed) = observer.error_log.allow() {
                let more = if suppressed > 0 {
                    format!(" ({suppressed} similar messages suppressed)")
                } else {
                    String::new()
                };
                tracing::warn!(
                    "pool {pool_name} backend {backend_name}: answered {status} after {} attempt(s): {e}; request id {}{more}",
                    ctx.attempts,
                    ctx.request_id.to_str().unwrap_or("-"),
                );
            }
        }
        if let Some(log) = &self.access_log {
            let req = session.req_header();
            log.send(&Entry {
                time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                listener: ctx.listener().map_or("", |l| l.name.as_str()),
                client: session
                    .client_addr()
                    .and_then(|a| a.as_inet())
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default(),
                method: req.method.as_str(),
                host: request_host(req).unwrap_or(""),
                path: req.uri.path(),
                status,
                bytes_in: session.as_downstream().body_bytes_read(),
                bytes_out: session.as_downstream().body_bytes_sent(),
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                pool: pool_name,
                backend: backend_name,
                attempts: ctx.attempts,
                upstream_status: ctx.upstream_status,
                request_id: ctx.request_id.to_str().unwrap_or("-"),
                affinity: ctx.affinity.map(Decision::as_str),
                debug: ctx.debug.as_deref(),
            });
        }
        ctx.current = None;
    }
}
