//! The keep-alive connections idle long enough to be closed to make room, oldest first: each
//! registers when it has been idle `SHED_MIN_IDLE`, and leaves when its next request starts or
//! it closes. Near the file-descriptor limit the oldest are told to close (as nginx reuses its
//! least recently used keep-alive connections). Connections busier than that never touch it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Instant;

use futures::task::AtomicWaker;

/// Idle connections by the time they became idle (and a tie-breaking number).
#[derive(Default)]
pub struct IdleConnections {
    waiting: Mutex<BTreeMap<(Instant, u64), Arc<Asked>>>,
    next: AtomicU64,
}

/// Whether a registered connection was asked to make room, and its task, woken when it is. (A
/// flag and a waker rather than a `Notify`: an idle connection's task would hold a `Notified`
/// of ~70 bytes while it waits, and idle connections are what this registry has many of.)
#[derive(Default)]
struct Asked {
    asked: AtomicBool,
    task: AtomicWaker,
}

/// One registered idle connection; leaves the registry when dropped.
pub struct IdleTicket<'a> {
    registry: &'a IdleConnections,
    key: (Instant, u64),
    asked: Arc<Asked>,
}

impl IdleTicket<'_> {
    /// Resolves once the connection is asked to close to make room (also when it was asked
    /// before this was first polled).
    pub fn asked(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            if self.asked.asked.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            self.asked.task.register(cx.waker());
            // Asked between the check and the registration: the waker may have been missed.
            if self.asked.asked.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

impl IdleConnections {
    /// Register a connection idle since `since`.
    pub fn register(&self, since: Instant) -> IdleTicket<'_> {
        let key = (since, self.next.fetch_add(1, Ordering::Relaxed));
        let asked = Arc::new(Asked::default());
        self.lock().insert(key, asked.clone());
        IdleTicket {
            registry: self,
            key,
            asked,
        }
    }

    /// Ask the `n` connections idle the longest to close; how many were asked.
    pub fn close_oldest(&self, n: usize) -> usize {
        let mut waiting = self.lock();
        let mut asked = 0;
        while asked < n {
            let Some((_, connection)) = waiting.pop_first() else {
                break;
            };
            // The flag stays set if the connection is between two polls: it still closes.
            connection.asked.store(true, Ordering::Release);
            connection.task.wake();
            asked += 1;
        }
        asked
    }

    /// Connections registered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(Instant, u64), Arc<Asked>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for IdleTicket<'_> {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_oldest_are_asked_first_and_leavers_are_gone() {
        let idle = IdleConnections::default();
        let t0 = Instant::now();
        let young = idle.register(t0 + Duration::from_secs(5));
        let old = idle.register(t0);
        let middle = idle.register(t0 + Duration::from_secs(2));
        let gone = idle.register(t0 - Duration::from_secs(9));
        drop(gone);
        assert_eq!(idle.len(), 3);
        assert_eq!(idle.close_oldest(2), 2);
        // Not waiting yet: the two oldest are told all the same, the young one is not.
        tokio::time::timeout(Duration::from_secs(1), old.asked())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(1), middle.asked())
            .await
            .unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), young.asked())
                .await
                .is_err()
        );
        assert_eq!(idle.len(), 1);
        assert_eq!(idle.close_oldest(5), 1);
        assert_eq!(idle.close_oldest(5), 0);
    }
}
