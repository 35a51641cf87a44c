//! The admin listener: GET /metrics (Prometheus text), /healthz (200 while serving, 503 once
//! shutdown or an upgrade hand-over began) and /status (JSON: pools, backends, config hash).
//! Anything else is 404. It is its own Pingora service, never reachable through the proxy.

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

use crate::observe::metrics::Metrics;
use crate::runtime::SharedRuntime;

/// The admin endpoints' logic.
pub struct AdminApp {
    metrics: Arc<Metrics>,
    runtime: SharedRuntime,
    draining: Arc<AtomicBool>,
}

impl AdminApp {
    pub fn new(metrics: Arc<Metrics>, runtime: SharedRuntime, draining: Arc<AtomicBool>) -> Self {
        AdminApp {
            metrics,
            runtime,
            draining,
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
        let req = session.req_header();
        let get = req.method == http::Method::GET || req.method == http::Method::HEAD;
        match (get, req.uri.path()) {
            (true, "/metrics") => reply(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics.render().into_bytes(),
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
