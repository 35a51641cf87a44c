//! The admin listener: GET /metrics (Prometheus text), /healthz (200 while serving, 503 once
//! shutdown or an upgrade hand-over began), /status (JSON: pools, backends, config hash) and /
//! (the HTML status page, operate/status_page.rs). Anything else is 404. It is its own Pingora
//! service, never reachable through the proxy.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::{ExecutionPhase, ShutdownWatch};
use pingora::services::background::BackgroundService;
use serde_json::json;
use tokio::sync::broadcast;

use crate::observe::log_limit::Outage;
use crate::observe::metrics::Metrics;
use crate::operate::api::{self, Api, Call};
use crate::operate::certificates::Certificates;
use crate::runtime::SharedRuntime;

/// The admin endpoints' logic.
pub struct AdminApp {
    metrics: Arc<Metrics>,
    runtime: SharedRuntime,
    draining: Arc<AtomicBool>,
    /// Whether /metrics cannot be rendered now (said once each way).
    metrics_failing: Outage,
    /// The runtime API under /api/v1/ (None: 404 there).
    api: Option<Api>,
    status_page: crate::operate::status_page::StatusPage,
    /// What the TLS listeners serve (the `certificates` section of /status).
    certificates: Option<Arc<Certificates>>,
}

/// Largest runtime API request body read.
const MAX_API_BODY: usize = 4096;

impl AdminApp {
    pub fn new(metrics: Arc<Metrics>, runtime: SharedRuntime, draining: Arc<AtomicBool>) -> Self {
        AdminApp {
            metrics,
            runtime,
            draining,
            metrics_failing: Outage::default(),
            api: None,
            status_page: Default::default(),
            certificates: None,
        }
    }

    /// Serve the runtime API too.
    pub fn with_api(mut self, api: Api) -> Self {
        self.api = Some(api);
        self
    }

    /// A runtime API call: read its (small) body, answer it.
    async fn api_reply(&self, api: &Api, session: &mut ServerSession) -> Response<Vec<u8>> {
        let mut body = Vec::new();
        while body.len() <= MAX_API_BODY {
            match session.read_request_body().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(_) => return reply(400, "text/plain", b"unreadable body\n".to_vec()),
            }
        }
        if body.len() > MAX_API_BODY {
            return reply(413, "text/plain", b"body too large\n".to_vec());
        }
        let req = session.req_header();
        let client = session
            .client_addr()
            .map_or_else(|| "?".into(), |a| a.to_string());
        let answer = api.answer(&Call {
            method: &req.method,
            path: req.uri.path(),
            authorization: req.headers.get("authorization").map(|v| v.as_bytes()),
            body: &body,
            client,
        });
        let mut resp = reply(answer.status, answer.content_type, answer.body);
        if answer.challenge {
            resp.headers_mut().insert(
                "www-authenticate",
                http::HeaderValue::from_static("Bearer realm=\"fulcrum\""),
            );
        }
        if let Some(path) = answer
            .config_path
            .and_then(|p| http::HeaderValue::from_str(&p).ok())
        {
            resp.headers_mut().insert("x-fulcrum-config-path", path);
        }
        resp
    }

    /// Report what the TLS listeners serve in /status.
    pub fn with_certificates(mut self, certificates: Arc<Certificates>) -> Self {
        self.certificates = Some(certificates);
        self
    }

    /// The /metrics answer: the exposition, or 500 when it cannot be rendered (logged when
    /// that begins and when it ends, not on every scrape).
    fn metrics_reply(&self) -> Response<Vec<u8>> {
        match self.metrics.render() {
            Ok(text) => {
                if self.metrics_failing.set(false) {
                    tracing::info!("admin: /metrics renders again");
                }
                reply(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    text.into_bytes(),
                )
            }
            Err(e) => {
                if self.metrics_failing.set(true) {
                    tracing::error!(
                        "admin: /metrics cannot be rendered ({e}): scrapes get 500 until it can"
                    );
                }
                let body = format!("metrics cannot be rendered: {e}\n").into_bytes();
                reply(500, "text/plain", body)
            }
        }
    }

    /// The /status document.
    pub fn status(&self) -> serde_json::Value {
        let rt = self.runtime.load_full();
        let pools: serde_json::Map<String, serde_json::Value> = rt
            .pools
            .iter()
            .map(|p| {
                let backends: Vec<serde_json::Value> = p
                    .backends()
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        let t = b.last_transition();
                        json!({
                            "name": b.name,
                            "address": b.addr.to_string(),
                            "weight": b.weight(),
                            "effective_weight": b.effective_weight_milli(p.slow_start) as f64 / 1000.0,
                            "slow_start_until": b.ramp_until(p.slow_start)
                                .map(|t| humantime::format_rfc3339_millis(t).to_string()),
                            "state": b.readiness().as_str(),
                            "ready": p.is_ready(i),
                            "healthy": b.is_healthy(),
                            "admitted": b.is_admitted(),
                            "ejected": b.is_ejected(),
                            "inflight": b.inflight(),
                            "ewma_ms": p.ewma_ms(i),
                            "operator_weight": b.operator.weight(),
                            "since": humantime::format_rfc3339_seconds(t.at).to_string(),
                            "reason": t.reason,
                        })
                    })
                    .collect();
                (
                    p.name.clone(),
                    json!({
                        "algorithm": p.algorithm.as_str(),
                        "health_check": p.health_check.is_some(),
                        "passive_health": p.passive_health.is_some(),
                        "slow_start": p.slow_start.map(|d| humantime::format_duration(d).to_string()),
                        "balance_factor": p.balance_factor(),
                        "affinity": p.affinity.is_some(),
                        "discovery": rt.discovery.as_ref().map(|d| d.json(&p.name)),
                        "backends": backends,
                    }),
                )
            })
            .collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "draining": self.draining.load(Ordering::Relaxed),
            "config": {
                "sha256": rt.config_hash,
                "loaded_at": humantime::format_rfc3339_seconds(rt.loaded_at).to_string(),
            },
            "pools": pools,
            "certificates": self.certificates.as_ref().map(|c| c.json()),
        })
    }
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        if let Some(api) = &self.api {
            if session.req_header().uri.path().starts_with(api::PREFIX) {
                return self.api_reply(api, session).await;
            }
        }
        let req = session.req_header();
        let get = req.method == http::Method::GET || req.method == http::Method::HEAD;
        match (get, req.uri.path()) {
            (true, "/metrics") => self.metrics_reply(),
            (true, "/") => reply(
                200,
                "text/html; charset=utf-8",
                self.status_page
                    .render(&self.status(), &self.runtime.load(), &self.metrics)
                    .into_bytes(),
            ),
            (true, "/healthz") if self.draining.load(Ordering::Relaxed) => {
                reply(503, "text/plain", b"draining\n".to_vec())
            }
            (true, "/healthz") => reply(200, "text/plain", b"ok\n".to_vec()),
            (true, "/status") => {
                let mut body = serde_json::to_vec_pretty(&self.status()).unwrap_or_default();
                body.push(b'\n');
                reply(200, "application/json", body)
            }
            _ => reply(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}

/// Sets `draining` when Pingora begins a graceful shutdown or an upgrade hand-over.
pub struct DrainWatch {
    phases: Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
    draining: Arc<AtomicBool>,
}

impl DrainWatch {
    pub fn new(phases: broadcast::Receiver<ExecutionPhase>, draining: Arc<AtomicBool>) -> Self {
        DrainWatch {
            phases: Mutex::new(Some(phases)),
            draining,
        }
    }
}

#[async_trait]
impl BackgroundService for DrainWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut phases) = self.phases.lock().ok().and_then(|mut p| p.take()) else {
            return;
        };
        loop {
            tokio::select! {
                phase = phases.recv() => match phase {
                    Ok(ExecutionPhase::GracefulUpgradeTransferringFds
                        | ExecutionPhase::GracefulUpgradeCloseTimeout
                        | ExecutionPhase::GracefulTerminate
                        | ExecutionPhase::ShutdownStarted) => {
                        self.draining.store(true, Ordering::Relaxed);
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = shutdown.changed() => {
                    self.draining.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arc_swap::ArcSwap;
    use pingora_prometheus::prometheus::core::{Collector, Desc};
    use pingora_prometheus::prometheus::proto::{Metric, MetricFamily, MetricType};

    use crate::runtime::Runtime;

    /// A collector whose family has a sample but no name: it cannot be encoded.
    struct Nameless(Vec<Desc>);

    impl Collector for Nameless {
        fn desc(&self) -> Vec<&Desc> {
            self.0.iter().collect()
        }

        fn collect(&self) -> Vec<MetricFamily> {
            let mut family = MetricFamily::default();
            family.set_field_type(MetricType::GAUGE);
            family.mut_metric().push(Metric::default());
            vec![family]
        }
    }

    #[test]
    fn metrics_that_cannot_be_rendered_answer_500_not_an_empty_200() {
        let yaml = "listeners: [{name: a, listen: 127.0.0.1:8080}]\nroutes: [{pool: p}]\npools:\n  p:\n    backends: [{address: 127.0.0.1:9000}]\n";
        let config = crate::config::parse(std::path::Path::new("t.yaml"), yaml).unwrap();
        let metrics = Metrics::new().unwrap();
        let runtime = Arc::new(ArcSwap::from_pointee(Runtime::build(&config, &metrics)));
        let admin = AdminApp::new(metrics.clone(), runtime, Arc::default());
        let ok = admin.metrics_reply();
        assert_eq!(ok.status(), 200);
        assert!(String::from_utf8_lossy(ok.body()).contains("fulcrum_build_info"));

        let desc = Desc::new(
            "fulcrum_nameless".into(),
            "test".into(),
            vec![],
            Default::default(),
        )
        .unwrap();
        metrics.register(Box::new(Nameless(vec![desc]))).unwrap();
        for _ in 0..2 {
            let failed = admin.metrics_reply();
            assert_eq!(failed.status(), 500);
            assert!(String::from_utf8_lossy(failed.body()).contains("cannot be rendered"));
        }
        assert!(!admin.metrics_failing.set(true), "still failing: said once");
    }
}
