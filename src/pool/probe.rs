//! The active check of one pool: fulcrum's HTTP check (http_check.rs) or Pingora's
//! TcpHealthCheck in a `Probe` that bounds each check by the pool's timeout, gates new backends
//! until they pass and hands on the load they report. When checks run is the health service's
//! business (operate/health.rs).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pingora::{Error, ErrorType, Result};
use pingora_load_balancing::health_check::{HealthCheck, TcpHealthCheck};
use pingora_load_balancing::Backend;

use crate::config::{CheckKind, FeedbackConfig, HealthCheckConfig};
use crate::pool::http_check::HttpCheck;
use crate::pool::BackendState;

/// The check of one pool: fulcrum's HTTP check (each backend gets its own address as Host unless
/// the config names one; the load a backend reports in the answer scales its weight) or
/// Pingora's TCP check, bounded by `timeout`.
pub struct Probe {
    pool: String,
    config: HealthCheckConfig,
    http: Option<HttpCheck>,
    tcp: Option<Box<TcpHealthCheck>>,
    /// The pool's backends, sorted by address.
    states: Arc<[Arc<BackendState>]>,
    /// Each backend's last failed check, in a few words, for the line that says it is down.
    failures: Mutex<HashMap<SocketAddr, String>>,
}

/// Why a check failed, in a few words: "connection refused", "answered 503", ...
fn failure_reason(e: &Error) -> String {
    let context = e.context.as_ref().map(|c| c.as_str().to_string());
    match e.etype() {
        ErrorType::ConnectRefused => "connection refused".into(),
        ErrorType::ConnectTimedout => context.unwrap_or_else(|| "connect timed out".into()),
        ErrorType::ReadTimedout => "no answer in time".into(),
        ErrorType::CustomCode(_, status) => format!("answered {status}"),
        other => match context {
            Some(c) => format!("{}: {c}", other.as_str()),
            None => other.as_str().to_string(),
        },
    }
}

impl Probe {
    pub fn new(
        pool: &str,
        config: &HealthCheckConfig,
        feedback: Option<FeedbackConfig>,
        states: Arc<[Arc<BackendState>]>,
    ) -> Self {
        let (http, tcp) = match &config.kind {
            CheckKind::Http {
                path,
                expect_status,
                host,
            } => {
                let check = HttpCheck::new(
                    path,
                    host.clone(),
                    expect_status.clone(),
                    config.timeout,
                    feedback,
                );
                (Some(check), None)
            }
            CheckKind::Tcp => {
                let mut check = TcpHealthCheck::new();
                check.peer_template.options.connection_timeout = Some(config.timeout);
                (None, Some(check))
            }
        };
        Probe {
            pool: pool.to_string(),
            config: config.clone(),
            http,
            tcp,
            states,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn state(&self, target: &Backend) -> Option<&Arc<BackendState>> {
        let addr = target.addr.as_inet()?;
        let i = self.states.binary_search_by_key(addr, |s| s.addr).ok()?;
        self.states.get(i)
    }

    /// Probe `target`: Ok with the share of its weight its report leaves it (feedback), if any.
    async fn probe(&self, target: &Backend) -> Result<Option<f64>> {
        match (&self.http, &self.tcp, target.addr.as_inet()) {
            (Some(check), _, Some(addr)) => check.check(*addr).await,
            (_, Some(check), _) => check.check(target).await.map(|()| None),
            _ => Error::e_explain(ErrorType::InternalError, "no probe for this backend"),
        }
    }
}

#[async_trait]
impl HealthCheck for Probe {
    async fn check(&self, target: &Backend) -> Result<()> {
        let result = match tokio::time::timeout(self.config.timeout, self.probe(target)).await {
            Ok(r) => r,
            Err(_) => Error::e_explain(
                ErrorType::ConnectTimedout,
                format!("no answer within {:?}", self.config.timeout),
            ),
        };
        match &result {
            Ok(reported) => {
                if let Some(state) = self.state(target) {
                    if let Some(share) = *reported {
                        state.report_share(share);
                    }
                    if state.check_passed() {
                        state.record_admitted();
                        // Backends of the file a process started with are summed up by the
                        // ready line; one that joined later (reload) is worth a line.
                        if state.joined() {
                            tracing::info!(
                                "pool {} backend {} ({}) is up: passed its first health check",
                                self.pool,
                                state.name,
                                state.addr
                            );
                        }
                    }
                }
            }
            Err(e) => {
                if let Some(addr) = target.addr.as_inet() {
                    let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
                    failures.insert(*addr, failure_reason(e));
                }
            }
        }
        result.map(|_| ())
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        // Pingora logs the flip itself (with `backend_summary` and the error); mirror it.
        if let Some(state) = self.state(target) {
            let (verb, n) = if healthy {
                ("passed", self.config.healthy_threshold)
            } else {
                ("failed", self.config.unhealthy_threshold)
            };
            let reason = format!("{verb} {n} health check{}", if n == 1 { "" } else { "s" });
            let ended_ejection = state.set_healthy(healthy, reason.clone());
            if healthy && ended_ejection {
                tracing::info!(
                    "pool {} backend {} ({}) returns to service: {reason} (ejection ended)",
                    self.pool,
                    state.name,
                    state.addr
                );
            } else if healthy {
                tracing::info!(
                    "pool {} backend {} ({}) is up: {reason}",
                    self.pool,
                    state.name,
                    state.addr
                );
            } else {
                let why = target
                    .addr
                    .as_inet()
                    .and_then(|a| {
                        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
                        failures.get(a).cloned()
                    })
                    .unwrap_or_else(|| "no answer".into());
                tracing::warn!(
                    "pool {} backend {} ({}) is down: {reason}: {why}",
                    self.pool,
                    state.name,
                    state.addr
                );
            }
        }
    }

    fn backend_summary(&self, target: &Backend) -> String {
        match self.state(target) {
            Some(s) => format!("pool {} backend {} ({})", self.pool, s.name, s.addr),
            None => format!("pool {} backend {:?}", self.pool, target.addr),
        }
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.config.healthy_threshold as usize
        } else {
            self.config.unhealthy_threshold as usize
        }
    }
}
