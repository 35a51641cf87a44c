//! Ends the process as soon as a graceful shutdown or upgrade has nothing left to do. Pingora
//! sleeps out the whole grace period (10 s by default) however idle the process is; here, once
//! that grace period has begun and no client connection remains (in-flight requests answered,
//! idle keep-alive connections closed) and every access-log line is written, the process exits.
//! The grace period stays the upper bound.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownWatch};
use pingora::services::background::BackgroundService;
use tokio::sync::broadcast;

use crate::observe::access_log::AccessLog;
use crate::serve::limits::ConnectionLimits;

/// How often a draining process looks whether it is done.
const POLL: Duration = Duration::from_millis(20);
/// How long after the grace period begins the first look waits: a connection the listener
/// accepted just before it stopped is counted only once its task runs, and closing the
/// process under it would reset it.
const SETTLE: Duration = Duration::from_millis(250);

pub struct ExitWhenDone {
    phases: Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
    limits: Arc<ConnectionLimits>,
    access_log: Option<Arc<AccessLog>>,
}

impl ExitWhenDone {
    pub fn new(
        phases: broadcast::Receiver<ExecutionPhase>,
        limits: Arc<ConnectionLimits>,
        access_log: Option<Arc<AccessLog>>,
    ) -> Self {
        ExitWhenDone {
            phases: Mutex::new(Some(phases)),
            limits,
            access_log,
        }
    }

    fn done(&self) -> bool {
        self.limits.open_connections() == 0
            && self.access_log.as_ref().is_none_or(|l| l.is_drained())
    }
}

#[async_trait]
impl BackgroundService for ExitWhenDone {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let Some(mut phases) = self.phases.lock().ok().and_then(|mut p| p.take()) else {
            return;
        };
        loop {
            match phases.recv().await {
                Ok(ExecutionPhase::ShutdownGracePeriod) => break,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
        let since = Instant::now();
        tokio::time::sleep(SETTLE).await;
        while !self.done() {
            tokio::time::sleep(POLL).await;
        }
        tracing::info!(
            "graceful shutdown: every connection done after {:?} of the grace period; exiting",
            since.elapsed()
        );
        // Pingora's own exit waits out the whole grace period; every connection is done.
        #[allow(
            clippy::disallowed_methods,
            reason = "reached only once the access log has drained (done above); nothing else is left to drop"
        )]
        std::process::exit(0);
    }
}
