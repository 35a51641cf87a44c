//! The keep-alive connections idle long enough to be closed, oldest first: each registers when
//! it has been idle `SHED_MIN_IDLE`, and leaves when its next request starts or it closes. Near
//! the file-descriptor limit the oldest are told to close to make room (as nginx reuses its least
//! recently used keep-alive connections); when the server shuts down, all of them are, and none
//! registers again. Connections busier than that never touch it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Wake};
use std::time::Instant;

use futures::task::AtomicWaker;

/// Idle connections by the time they became idle (and a tie-breaking number).
#[derive(Default)]
pub struct IdleConnections {
    waiting: Mutex<Waiting>,
    next: AtomicU64,
}

#[derive(Default)]
struct Waiting {
    connections: BTreeMap<(Instant, u64), Arc<IdleSignal>>,
    /// The server is shutting down: every registered connection was told to close, and a
    /// connection that would register now closes instead.
    closing: bool,
}

/// Why a registered connection was told to close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asked {
    /// The process is near its file-descriptor limit.
    ToMakeRoom,
    /// The server is shutting down.
    ToStop,
}

const NOT_ASKED: u8 = 0;
const ASKED_TO_MAKE_ROOM: u8 = 1;
const ASKED_TO_STOP: u8 = 2;

/// What wakes an idle connection's task, one per connection: its socket turning readable (this
/// is the waker the socket holds), or the registry telling it to close. One allocation serves
/// both, for the life of the connection: an idle connection's memory is mostly what it holds
/// while it waits, and idle connections are what a server has many of.
#[derive(Default)]
pub struct IdleSignal {
    readable: AtomicBool,
    asked: AtomicU8,
    task: AtomicWaker,
}

impl IdleSignal {
    /// Forget what the previous wait saw; the next wait begins.
    pub fn reset(&self) {
        self.readable.store(false, Ordering::Release);
    }

    /// Whether the socket woke the task since `reset` (registering `task` to be woken next).
    pub fn readable(&self, task: &std::task::Waker) -> bool {
        self.task.register(task);
        self.readable.load(Ordering::Acquire)
    }

    fn asked(&self) -> Option<Asked> {
        match self.asked.load(Ordering::Acquire) {
            ASKED_TO_MAKE_ROOM => Some(Asked::ToMakeRoom),
            ASKED_TO_STOP => Some(Asked::ToStop),
            _ => None,
        }
    }

    fn ask(&self, why: u8) {
        self.asked.store(why, Ordering::Release);
        self.task.wake();
    }
}

impl Wake for IdleSignal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    /// The socket's wake-up: recorded, so that the waiting task knows it need not read to see.
    fn wake_by_ref(self: &Arc<Self>) {
        self.readable.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// One registered idle connection; leaves the registry when dropped.
pub struct IdleTicket<'a> {
    registry: &'a IdleConnections,
    key: (Instant, u64),
    signal: &'a IdleSignal,
}

impl IdleTicket<'_> {
    /// Resolves once the connection is told to close, and why (also when it was told before
    /// this was first polled).
    pub fn asked(&self) -> impl Future<Output = Asked> + '_ {
        std::future::poll_fn(|cx| {
            if let Some(why) = self.signal.asked() {
                return Poll::Ready(why);
            }
            self.signal.task.register(cx.waker());
            // Asked between the check and the registration: the waker may have been missed.
            match self.signal.asked() {
                Some(why) => Poll::Ready(why),
                None => Poll::Pending,
            }
        })
    }
}

impl IdleConnections {
    /// Register a connection idle since `since`, woken through `signal`; None once the server is
    /// shutting down (the connection closes instead).
    pub fn register<'a>(
        &'a self,
        since: Instant,
        signal: &'a Arc<IdleSignal>,
    ) -> Option<IdleTicket<'a>> {
        let key = (since, self.next.fetch_add(1, Ordering::Relaxed));
        let mut waiting = self.lock();
        if waiting.closing {
            return None;
        }
        // A request to close that reached the connection after its last wait ended is stale.
        signal.asked.store(NOT_ASKED, Ordering::Release);
        waiting.connections.insert(key, signal.clone());
        Some(IdleTicket {
            registry: self,
            key,
            signal,
        })
    }

    /// Ask the `n` connections idle the longest to close to make room; how many were asked.
    pub fn close_oldest(&self, n: usize) -> usize {
        let mut waiting = self.lock();
        let mut asked = 0;
        while asked < n {
            let Some((_, connection)) = waiting.connections.pop_first() else {
                break;
            };
            // The flag stays set if the connection is between two polls: it still closes.
            connection.ask(ASKED_TO_MAKE_ROOM);
            asked += 1;
        }
        asked
    }

    /// The server is shutting down: tell every registered connection to close, and refuse
    /// registrations from now on. (Connections idle less than `SHED_MIN_IDLE` close when they
    /// would have registered: a client that is about to send its next request has that long.)
    pub fn close_all(&self) {
        let mut waiting = self.lock();
        waiting.closing = true;
        for (_, connection) in std::mem::take(&mut waiting.connections) {
            connection.ask(ASKED_TO_STOP);
        }
    }

    /// Connections registered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().connections.len()
    }

    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for IdleTicket<'_> {
    fn drop(&mut self) {
        self.registry.lock().connections.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_oldest_are_asked_first_and_leavers_are_gone() {
        let idle = IdleConnections::default();
        let signals: Vec<Arc<IdleSignal>> = (0..4).map(|_| Arc::default()).collect();
        let t0 = Instant::now();
        let young = idle
            .register(t0 + Duration::from_secs(5), &signals[0])
            .unwrap();
        let old = idle.register(t0, &signals[1]).unwrap();
        let middle = idle
            .register(t0 + Duration::from_secs(2), &signals[2])
            .unwrap();
        let gone = idle
            .register(t0 - Duration::from_secs(9), &signals[3])
            .unwrap();
        drop(gone);
        assert_eq!(idle.len(), 3);
        assert_eq!(idle.close_oldest(2), 2);
        // Not waiting yet: the two oldest are told all the same, the young one is not.
        let asked = tokio::time::timeout(Duration::from_secs(1), old.asked()).await;
        assert_eq!(asked.unwrap(), Asked::ToMakeRoom);
        let asked = tokio::time::timeout(Duration::from_secs(1), middle.asked()).await;
        assert_eq!(asked.unwrap(), Asked::ToMakeRoom);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), young.asked())
                .await
                .is_err()
        );
        assert_eq!(idle.len(), 1);
        assert_eq!(idle.close_oldest(5), 1);
        assert_eq!(idle.close_oldest(5), 0);
    }

    #[tokio::test]
    async fn a_shutdown_asks_every_registered_connection_and_refuses_new_ones() {
        let idle = IdleConnections::default();
        let signals: Vec<Arc<IdleSignal>> = (0..3).map(|_| Arc::default()).collect();
        let t0 = Instant::now();
        let a = idle.register(t0, &signals[0]).unwrap();
        let b = idle.register(t0, &signals[1]).unwrap();
        idle.close_all();
        assert_eq!(idle.len(), 0);
        for ticket in [&a, &b] {
            let asked = tokio::time::timeout(Duration::from_secs(1), ticket.asked()).await;
            assert_eq!(asked.unwrap(), Asked::ToStop);
        }
        assert!(idle.register(t0, &signals[2]).is_none());
        assert_eq!(idle.close_oldest(5), 0);
    }

    #[tokio::test]
    async fn a_stale_request_to_close_does_not_reach_the_next_wait() {
        let idle = IdleConnections::default();
        let signal = Arc::default();
        let first = idle.register(Instant::now(), &signal).unwrap();
        assert_eq!(idle.close_oldest(1), 1);
        // The connection's next request had started: it never saw the request to close.
        drop(first);
        let again = idle.register(Instant::now(), &signal).unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), again.asked())
                .await
                .is_err()
        );
    }
}
