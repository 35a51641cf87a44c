//! Closes a start-up race in Pingora's `daemon_wait_for_ready`: the waiting parent registers
//! its SIGUSR1 handler only after the fork, so a daemon that boots quickly could signal too
//! early (killing the parent, or leaving it waiting for the full timeout). This service holds
//! the bootstrap back until the parent is seen to catch SIGUSR1 (`SigCgt` in /proc), at most
//! two seconds.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;

const LIMIT: Duration = Duration::from_secs(2);

/// Waits for process `parent` to catch SIGUSR1, then lets the bootstrap go on.
pub struct ParentReady {
    parent: u32,
}

impl ParentReady {
    pub fn new(parent: u32) -> Self {
        ParentReady { parent }
    }
}

/// Whether the `SigCgt` mask of /proc/PID/status includes SIGUSR1 (None: cannot tell).
pub fn catches_sigusr1(status: &str) -> Option<bool> {
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())?;
    Some(mask & (1 << (SIGUSR1 - 1)) != 0)
}

/// SIGUSR1's number on Linux.
const SIGUSR1: u32 = 10;

#[async_trait]
impl BackgroundService for ParentReady {
    async fn start_with_ready_notifier(
        &self,
        _shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        let start = Instant::now();
        let path = format!("/proc/{}/status", self.parent);
        while start.elapsed() < LIMIT {
            match std::fs::read_to_string(&path)
                .ok()
                .as_deref()
                .map(catches_sigusr1)
            {
                Some(Some(false)) => tokio::time::sleep(Duration::from_millis(2)).await,
                // Caught, or the parent is gone, or /proc says nothing: go on.
                _ => break,
            }
        }
        ready.notify_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_sigcgt_mask() {
        assert_eq!(
            catches_sigusr1("Name:\tx\nSigCgt:\t0000000000000200\n"),
            Some(true)
        );
        assert_eq!(catches_sigusr1("SigCgt:\t0000000000004002\n"), Some(false));
        assert_eq!(catches_sigusr1("Name:\tx\n"), None);
    }
}
