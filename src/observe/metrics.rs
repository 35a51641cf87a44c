//! Prometheus metrics: one `Metrics` value owns its registry (no statics) and is passed by Arc.
//! Per-pool and per-backend handles are resolved when a pool is built, so that the request
//! path increments counters without label lookups; gauges of backend state are read from the
//! current runtime snapshot at scrape time.

use std::sync::{Arc, OnceLock};

use pingora_prometheus::prometheus::core::{Collector, Desc};
use pingora_prometheus::prometheus::proto::MetricFamily;
use pingora_prometheus::prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, Result as PromResult, TextEncoder,
};

use crate::pool::sticky::Decision;
use crate::pool::BackendState;
use crate::runtime::SharedRuntime;

/// Buckets for a proxy: from 0.5 ms to 30 s.
const DURATION_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Status codes whose request counters are resolved once and kept; others are looked up.
const COMMON_CODES: [u16; 20] = [
    200, 201, 204, 206, 301, 302, 304, 400, 401, 403, 404, 405, 408, 413, 429, 499, 500, 502, 503,
    504,
];

/// What an upstream error was, for `fulcrum_upstream_errors_total{kind}` (a fixed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    ConnectRefused,
    ConnectTimeout,
    Timeout,
    Closed,
    Protocol,
    Status,
    Other,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ConnectRefused => "connect_refused",
            ErrorKind::ConnectTimeout => "connect_timeout",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Closed => "closed",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Status => "status",
            ErrorKind::Other => "other",
        }
    }

    pub fn of(e: &pingora::Error) -> ErrorKind {
        use pingora::ErrorType::*;
        match e.etype() {
            ConnectRefused | ConnectNoRoute | ConnectError | SocketError | BindError => {
                ErrorKind::ConnectRefused
            }
            ConnectTimedout | TLSHandshakeTimedout => ErrorKind::ConnectTimeout,
            ReadTimedout | WriteTimedout => ErrorKind::Timeout,
            ConnectionClosed | ReadError | WriteError => ErrorKind::Closed,
            InvalidHTTPHeader | H1Error | H2Error | InvalidH2 | H2Downgrade
            | TLSHandshakeFailure | InvalidCert | HandshakeError => ErrorKind::Protocol,
            _ => ErrorKind::Other,
        }
    }
}

/// The process-wide metrics.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_errors: IntCounterVec,
    retries: IntCounterVec,
    retry_budget_exhausted: IntCounterVec,
    affinity: IntCounterVec,
    no_backend: IntCounterVec,
    reloads: IntCounterVec,
    limits: IntCounterVec,
    /// Rate limits and authentication (`edge_metrics`).
    pub edge: super::edge_metrics::EdgeMetrics,
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> PromResult<IntCounterVec> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

impl Metrics {
    /// All metrics, registered; backend gauges follow `runtime` once `watch` is called.
    pub fn new() -> PromResult<Arc<Metrics>> {
        let registry = Registry::new();
        let requests = counter_vec(
            "fulcrum_requests_total",
            "Requests answered, by listener, pool, backend (empty when none was reached) and status code.",
            &["listener", "pool", "backend", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "fulcrum_request_duration_seconds",
                "Time from the request's arrival to the end of its response, by pool.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["pool"],
        )?;
        let upstream_errors = counter_vec(
            "fulcrum_upstream_errors_total",
            "Failed attempts to backends, by kind (connect_refused, connect_timeout, timeout, closed, protocol, status, other).",
            &["pool", "backend", "kind"],
        )?;
        let retries = counter_vec(
            "fulcrum_retries_total",
            "Attempts made after a failed one, by pool.",
            &["pool"],
        )?;
        let retry_budget_exhausted = counter_vec(
            "fulcrum_retry_budget_exhausted_total",
            "Failed attempts answered instead of retried because the pool's retry budget was spent.",
            &["pool"],
        )?;
        let affinity = counter_vec(
            "fulcrum_affinity_total",
            "Affinity decisions (hit, miss, repinned, invalid), by pool.",
            &["pool", "result"],
        )?;
        let no_backend = counter_vec(
            "fulcrum_no_backend_total",
            "Requests answered 503 because no backend of the pool was ready.",
            &["pool"],
        )?;
        let limits = counter_vec(
            "fulcrum_limit_total",
            "Clients cut off by a listener limit, by listener and limit (header_timeout, max_header_bytes, max_headers, max_connections, max_connections_per_ip, open_files, idle_closed).",
            &["listener", "limit"],
        )?;
        let reloads = counter_vec(
            "fulcrum_config_reloads_total",
            "Configuration reloads (SIGHUP), by result (success, failure).",
            &["result"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "fulcrum_build_info",
                "Always 1; the version is in the label.",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for c in [
            &requests,
            &upstream_errors,
            &retries,
            &retry_budget_exhausted,
            &affinity,
            &no_backend,
            &reloads,
            &limits,
        ] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(
            pingora_prometheus::prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        // Both results exist from the start, so that an alert on failures sees 0 first.
        reloads.with_label_values(&["success"]);
        reloads.with_label_values(&["failure"]);
        let edge = super::edge_metrics::EdgeMetrics::register(&registry)?;
        Ok(Arc::new(Metrics {
            edge,
            registry,
            requests,
            duration,
            upstream_errors,
            retries,
            retry_budget_exhausted,
            affinity,
            no_backend,
            reloads,
            limits,
        }))
    }

    /// Export the backends of whatever runtime snapshot is current at scrape time.
    pub fn watch(&self, runtime: SharedRuntime) -> PromResult<()> {
        self.registry
            .register(Box::new(BackendCollector::new(runtime)))
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Create `listener`'s series for `limit` at 0.
    pub fn limit_series(&self, listener: &str, limit: &str) {
        self.limits.with_label_values(&[listener, limit]);
    }

    /// A client was cut off on `listener` by `limit`.
    pub fn limit(&self, listener: &str, limit: &str) {
        self.limits.with_label_values(&[listener, limit]).inc();
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.with_label_values(&[result]).inc();
    }

    /// Handles for one pool (`pool` empty: requests no route matched).
    pub fn pool(
        &self,
        pool: &str,
        backends: &[Arc<BackendState>],
        listeners: &[String],
    ) -> PoolMetrics {
        let per_listener = |backend: &str| -> Vec<CodeCounters> {
            listeners
                .iter()
                .map(|l| CodeCounters::new(&self.requests, [l, pool, backend]))
                .collect()
        };
        PoolMetrics {
            name: pool.to_string(),
            duration: self.duration.with_label_values(&[pool]),
            retries: self.retries.with_label_values(&[pool]),
            retry_budget_exhausted: self.retry_budget_exhausted.with_label_values(&[pool]),
            no_backend: self.no_backend.with_label_values(&[pool]),
            affinity: [
                Decision::Hit,
                Decision::Miss,
                Decision::Repinned,
                Decision::Invalid,
            ]
            .map(|d| self.affinity.with_label_values(&[pool, d.as_str()])),
            requests: backends.iter().map(|b| per_listener(&b.name)).collect(),
            requests_without_backend: per_listener(""),
            upstream_errors: self.upstream_errors.clone(),
            backend_names: backends.iter().map(|b| b.name.clone()).collect(),
        }
    }
}

/// `fulcrum_requests_total` for one (listener, pool, backend): common codes resolved lazily
/// once, others looked up.
struct CodeCounters {
    vec: IntCounterVec,
    labels: [String; 3],
    common: [OnceLock<IntCounter>; COMMON_CODES.len()],
}

impl CodeCounters {
    fn new(vec: &IntCounterVec, labels: [&str; 3]) -> Self {
        CodeCounters {
            vec: vec.clone(),
            labels: labels.map(str::to_string),
            common: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    fn inc(&self, code: u16) {
        let code_label = || code.to_string();
        let lookup = || {
            let [l, p, b] = &self.labels;
            self.vec
                .with_label_values(&[l.as_str(), p, b, &code_label()])
        };
        match COMMON_CODES.iter().position(|&c| c == code) {
            Some(i) => self.common[i].get_or_init(lookup).inc(),
            None => lookup().inc(),
        }
    }
}

/// A pool's metric handles, built with the pool.
pub struct PoolMetrics {
    pub name: String,
    duration: Histogram,
    retries: IntCounter,
    retry_budget_exhausted: IntCounter,
    no_backend: IntCounter,
    affinity: [IntCounter; 4],
    /// [backend][listener]
    requests: Vec<Vec<CodeCounters>>,
    /// [listener]: requests that reached no backend.
    requests_without_backend: Vec<CodeCounters>,
    upstream_errors: IntCounterVec,
    backend_names: Vec<String>,
}

impl PoolMetrics {
    /// One finished request.
    pub fn request(&self, listener: usize, backend: Option<usize>, code: u16, seconds: f64) {
        let row = match backend.and_then(|b| self.requests.get(b)) {
            Some(row) => row,
            None => &self.requests_without_backend,
        };
        if let Some(c) = row.get(listener) {
            c.inc(code);
        }
        self.duration.observe(seconds);
    }

    pub fn retry(&self) {
        self.retries.inc();
    }

    pub fn no_backend(&self) {
        self.no_backend.inc();
    }

    pub fn retry_budget_exhausted(&self) {
        self.retry_budget_exhausted.inc();
    }

    pub fn affinity(&self, d: Decision) {
        let i = match d {
            Decision::Hit => 0,
            Decision::Miss => 1,
            Decision::Repinned => 2,
            Decision::Invalid => 3,
        };
        self.affinity[i].inc();
    }

    pub fn upstream_error(&self, backend: usize, kind: ErrorKind) {
        if let Some(name) = self.backend_names.get(backend) {
            self.upstream_errors
                .with_label_values(&[&self.name, name, kind.as_str()])
                .inc();
        }
    }
}

/// `fulcrum_backend_up`, `fulcrum_backend_inflight` and `fulcrum_health_transitions_total`,
/// read from the current snapshot at scrape time (removed backends disappear with it).
struct BackendCollector {
    runtime: SharedRuntime,
    descs: Vec<Desc>,
}

fn backend_families() -> PromResult<(IntGaugeVec, IntGaugeVec, IntCounterVec)> {
    let up = IntGaugeVec::new(
        Opts::new(
            "fulcrum_backend_up",
            "1 when the backend may take traffic (healthy, admitted, not ejected), else 0.",
        ),
        &["pool", "backend"],
    )?;
    let inflight = IntGaugeVec::new(
        Opts::new(
            "fulcrum_backend_inflight",
            "Requests in flight to the backend.",
        ),
        &["pool", "backend"],
    )?;
    let transitions = counter_vec(
        "fulcrum_health_transitions_total",
        "Health transitions of the backend, by the state it went to (up, down).",
        &["pool", "backend", "to"],
    )?;
    Ok((up, inflight, transitions))
}

impl BackendCollector {
    fn new(runtime: SharedRuntime) -> Self {
        let descs = match backend_families() {
            Ok((up, inflight, transitions)) => [up.desc(), inflight.desc(), transitions.desc()]
                .into_iter()
                .flatten()
                .cloned()
                .collect(),
            Err(_) => Vec::new(),
        };
        BackendCollector { runtime, descs }
    }
}

impl Collector for BackendCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Ok((up, inflight, transitions)) = backend_families() else {
            return Vec::new();
        };
        let snapshot = self.runtime.load_full();
        for pool in &snapshot.pools {
            for (i, b) in pool.backends().iter().enumerate() {
                let labels = [pool.name.as_str(), b.name.as_str()];
                up.with_label_values(&labels)
                    .set(i64::from(pool.is_ready(i)));
                inflight.with_label_values(&labels).set(b.inflight() as i64);
                for (to, n) in [("up", &b.went_up), ("down", &b.went_down)] {
                    transitions
                        .with_label_values(&[labels[0], labels[1], to])
                        .inc_by(n.load(std::sync::atomic::Ordering::Relaxed));
                }
            }
        }
        let mut out = up.collect();
        out.extend(inflight.collect());
        out.extend(transitions.collect());
        out
    }
}
