//! Prometheus metrics: one `Metrics` value owns its registry (no statics) and is passed by Arc.
//! Per-pool and per-backend handles are resolved when a pool is built, so that the request
//! path increments counters without label lookups. Knows no pool or runtime type: backends come
//! as names, affinity results as labels, and the gauges of backend state are a collector that
//! the operate layer registers (operate/backend_metrics.rs).

use std::sync::{Arc, OnceLock};

use pingora_prometheus::prometheus::core::Collector;
use pingora_prometheus::prometheus::proto::MetricFamily;
use pingora_prometheus::prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    Result as PromResult, TextEncoder,
};

/// Buckets for a proxy: from 0.5 ms to 30 s.
const DURATION_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets of `fulcrum_upstream_response_seconds`: a backend's time to its response header,
/// from 1 ms to 10 s (a longer wait is a timeout to fix, not a latency to resolve finely).
const UPSTREAM_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Status codes whose request counters are resolved once and kept; others are looked up.
const COMMON_CODES: [u16; 20] = [
    200, 201, 204, 206, 301, 302, 304, 400, 401, 403, 404, 405, 408, 413, 429, 499, 500, 502, 503,
    504,
];

/// The results of `fulcrum_affinity_total{result}` (a fixed set; their series exist from the
/// pool's start).
pub const AFFINITY_RESULTS: [&str; 4] = ["hit", "miss", "repinned", "invalid"];

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
    upstream_response: HistogramVec,
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
        let upstream_response = HistogramVec::new(
            HistogramOpts::new(
                "fulcrum_upstream_response_seconds",
                "Time from sending the request to a backend to its response header (connection setup and response body not included), by pool and backend.",
            )
            .buckets(UPSTREAM_BUCKETS.to_vec()),
            &["pool", "backend"],
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
        registry.register(Box::new(upstream_response.clone()))?;
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
            upstream_response,
            upstream_errors,
            retries,
            retry_budget_exhausted,
            affinity,
            no_backend,
            reloads,
            limits,
        }))
    }

    /// Export what `collector` reads at scrape time (the backends' state).
    pub fn register(&self, collector: Box<dyn Collector>) -> PromResult<()> {
        self.registry.register(collector)
    }

    /// The Prometheus text exposition of everything, or why it cannot be written (then none
    /// of it: a scrape cut short would look like series that vanished).
    pub fn render(&self) -> PromResult<String> {
        TextEncoder::new().encode_to_string(&self.registry.gather())
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

    /// Remove the series of `pool`'s `backend`, gone from the configuration or from DNS (a
    /// snapshot still serving a request with it observes into a handle no scrape sees).
    pub fn forget_backend(&self, pool: &str, backend: &str) {
        // Err: the series never existed; nothing to remove.
        let _ = self.upstream_response.remove_label_values(&[pool, backend]);
    }

    /// The registry's current samples (what the status page reads).
    pub fn gather(&self) -> Vec<MetricFamily> {
        self.registry.gather()
    }

    /// Handles for one pool (`pool` empty: requests no route matched) and its `backends`, by
    /// name in pool order.
    pub fn pool<'a>(
        &self,
        pool: &str,
        backends: impl IntoIterator<Item = &'a str>,
        listeners: &[String],
    ) -> PoolMetrics {
        let backend_names: Vec<String> = backends.into_iter().map(str::to_string).collect();
        // One column per listener, then one for requests no listener serves (label "").
        let per_listener = |backend: &str| -> Vec<CodeCounters> {
            listeners
                .iter()
                .map(String::as_str)
                .chain([""])
                .map(|l| CodeCounters::new(&self.requests, [l, pool, backend]))
                .collect()
        };
        PoolMetrics {
            name: pool.to_string(),
            duration: self.duration.with_label_values(&[pool]),
            retries: self.retries.with_label_values(&[pool]),
            retry_budget_exhausted: self.retry_budget_exhausted.with_label_values(&[pool]),
            no_backend: self.no_backend.with_label_values(&[pool]),
            affinity: AFFINITY_RESULTS.map(|r| self.affinity.with_label_values(&[pool, r])),
            requests: backend_names.iter().map(|b| per_listener(b)).collect(),
            upstream_response: backend_names
                .iter()
                .map(|b| {
                    self.upstream_response
                        .with_label_values(&[pool, b.as_str()])
                })
                .collect(),
            requests_without_backend: per_listener(""),
            upstream_errors: self.upstream_errors.clone(),
            backend_names,
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
        let common = COMMON_CODES.iter().position(|&c| c == code);
        match common.and_then(|i| self.common.get(i)) {
            Some(c) => c.get_or_init(lookup).inc(),
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
    /// [backend][listener], the last listener column for requests no listener serves.
    requests: Vec<Vec<CodeCounters>>,
    /// [listener] as above: requests that reached no backend.
    requests_without_backend: Vec<CodeCounters>,
    /// `fulcrum_upstream_response_seconds`, by backend.
    upstream_response: Vec<Histogram>,
    upstream_errors: IntCounterVec,
    backend_names: Vec<String>,
}

impl PoolMetrics {
    /// One finished request, on `listener` (None: no listener serves its address).
    pub fn request(
        &self,
        listener: Option<usize>,
        backend: Option<usize>,
        code: u16,
        seconds: f64,
    ) {
        let row = match backend.and_then(|b| self.requests.get(b)) {
            Some(row) => row,
            None => &self.requests_without_backend,
        };
        // The last column is the one of no listener.
        let column = listener.filter(|&l| l + 1 < row.len());
        if let Some(c) = column.map_or_else(|| row.last(), |l| row.get(l)) {
            c.inc(code);
        }
        self.duration.observe(seconds);
    }

    /// `backend`'s response header arrived `seconds` after the request was sent to it.
    pub fn upstream_response(&self, backend: usize, seconds: f64) {
        if let Some(h) = self.upstream_response.get(backend) {
            h.observe(seconds);
        }
    }

    /// The pool's backends, by name in pool order (as the handles were built).
    pub fn backend_names(&self) -> &[String] {
        &self.backend_names
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

    /// An affinity decision, by its label (one of `AFFINITY_RESULTS`; others are not counted).
    pub fn affinity(&self, result: &str) {
        let i = AFFINITY_RESULTS.iter().position(|r| *r == result);
        if let Some(c) = i.and_then(|i| self.affinity.get(i)) {
            c.inc();
        }
    }

    pub fn upstream_error(&self, backend: usize, kind: ErrorKind) {
        if let Some(name) = self.backend_names.get(backend) {
            self.upstream_errors
                .with_label_values(&[&self.name, name, kind.as_str()])
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_of_no_listener_are_not_put_on_another() {
        let m = Metrics::new().unwrap();
        let p = m.pool("p", ["b"], &["public".to_string()]);
        p.request(Some(0), Some(0), 200, 0.1);
        p.request(None, Some(0), 200, 0.1);
        p.request(None, None, 503, 0.1);
        let text = m.render().unwrap();
        // The value of the series with exactly these label values (listener, backend, code).
        let count = |listener: &str, backend: &str, code: &str| {
            let want = [
                format!("listener=\"{listener}\""),
                format!("backend=\"{backend}\""),
                format!("code=\"{code}\""),
            ];
            text.lines()
                .filter(|l| l.starts_with("fulcrum_requests_total{"))
                .find(|l| want.iter().all(|w| l.contains(w.as_str())))
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_string)
        };
        assert_eq!(count("public", "b", "200").as_deref(), Some("1"));
        assert_eq!(count("", "b", "200").as_deref(), Some("1"), "not on public");
        assert_eq!(count("", "", "503").as_deref(), Some("1"));
    }
}
