//! The line a process logs once every listener accepts: after a start, or after an upgrade
//! once it has taken the listening sockets over (what operators and the tests wait for).

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

/// Logs `ready: ...` once, when the services it depends on (those that listen) are up.
pub struct ReadyLine {
    pub upgrade: bool,
}

#[async_trait]
impl BackgroundService for ReadyLine {
    async fn start(&self, _shutdown: ShutdownWatch) {
        if self.upgrade {
            tracing::info!("ready: took the listening sockets over; accepting on every listener");
        } else {
            tracing::info!("ready: accepting on every listener");
        }
    }
}
