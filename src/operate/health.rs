//! The health service: one background service that runs each pool's active checks (the pool's
//! `Probe`, pool/probe.rs) on the pool's interval, for the pools of the *current* runtime
//! snapshot, and ends passive ejections that are due. It owns the schedule.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;

use crate::pool::Pool;
use crate::runtime::SharedRuntime;

/// The longest the service sleeps: how late an ended ejection may be logged.
const MAX_SLEEP: Duration = Duration::from_millis(100);

/// When one pool's next round of checks is due, and whether one is running.
struct Slot {
    next: Mutex<Instant>,
    running: AtomicBool,
}

/// The schedule of one pool, by name. A reload builds every pool anew: the new one gets a fresh
/// slot, due at once (so backends it adds are checked, and admitted, without waiting).
struct Schedule {
    pool: Weak<Pool>,
    slot: Arc<Slot>,
}

impl Schedule {
    fn new(pool: &Arc<Pool>) -> Self {
        Schedule {
            pool: Arc::downgrade(pool),
            slot: Arc::new(Slot {
                next: Mutex::new(Instant::now()),
                running: AtomicBool::new(false),
            }),
        }
    }

    /// When `pool`'s next round is due (None: it has no checks, or a round is running).
    fn due(&self, pool: &Pool) -> Option<Instant> {
        if pool.health_check.is_none() || self.slot.running.load(Ordering::Relaxed) {
            return None;
        }
        self.slot.next.lock().map(|t| *t).ok()
    }
}

/// Every pool's schedule, by pool name.
#[derive(Default)]
struct Schedules(HashMap<String, Schedule>);

impl Schedules {
    /// The schedule of `pool` (a fresh one when the pool under that name was rebuilt).
    fn of(&mut self, pool: &Arc<Pool>) -> &Schedule {
        let s = self
            .0
            .entry(pool.name.clone())
            .or_insert_with(|| Schedule::new(pool));
        if !std::ptr::eq(s.pool.as_ptr(), Arc::as_ptr(pool)) {
            *s = Schedule::new(pool);
        }
        s
    }

    /// Forget the pools that are gone.
    fn keep_only(&mut self, pools: &[Arc<Pool>]) {
        self.0
            .retain(|name, _| pools.iter().any(|p| &p.name == name));
    }
}

/// One round of `pool`'s checks unless one is running; the next is due an interval after this
/// one began.
async fn round(pool: Arc<Pool>, slot: Arc<Slot>) {
    let Some(interval) = pool.health_check.as_ref().map(|h| h.interval) else {
        return;
    };
    if slot.running.swap(true, Ordering::Relaxed) {
        return;
    }
    let started = Instant::now();
    pool.check_round().await;
    if let Ok(mut next) = slot.next.lock() {
        *next = started + interval;
    }
    slot.running.store(false, Ordering::Relaxed);
}

/// The background service that drives every pool's checks from the current snapshot.
pub struct HealthService {
    runtime: SharedRuntime,
}

impl HealthService {
    pub fn new(runtime: SharedRuntime) -> Self {
        HealthService { runtime }
    }
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        let mut schedules = Schedules::default();
        // The first round of every pool, concurrently; the proxy accepts once it is done.
        let first = self.runtime.load_full();
        let rounds: Vec<_> = first
            .pools
            .iter()
            .map(|p| round(p.clone(), schedules.of(p).slot.clone()))
            .collect();
        futures::future::join_all(rounds).await;
        ready.notify_ready();
        loop {
            let snapshot = self.runtime.load_full();
            schedules.keep_only(&snapshot.pools);
            let now = Instant::now();
            let mut wake = now + MAX_SLEEP;
            for pool in &snapshot.pools {
                pool.end_due_ejections();
                let schedule = schedules.of(pool);
                match schedule.due(pool) {
                    Some(due) if due <= now => {
                        tokio::spawn(round(pool.clone(), schedule.slot.clone()));
                    }
                    Some(due) => wake = wake.min(due),
                    None => {}
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Algorithm, BackendConfig, CheckKind, HealthCheckConfig, PoolConfig};

    fn pool(name: &str, checked: bool) -> Arc<Pool> {
        let backends = vec![BackendConfig {
            name: "b".into(),
            // Nothing listens on port 1: a TCP check fails at once.
            addr: "127.0.0.1:1".parse().unwrap(),
            weight: 1,
        }];
        let mut c = PoolConfig::with_defaults(name, Algorithm::RoundRobin, backends);
        c.health_check = checked.then(|| HealthCheckConfig {
            kind: CheckKind::Tcp,
            interval: Duration::from_secs(60),
            timeout: Duration::from_millis(200),
            healthy_threshold: 1,
            unhealthy_threshold: 1,
        });
        Arc::new(Pool::build(&c))
    }

    #[tokio::test]
    async fn a_round_sets_the_next_and_a_rebuilt_pool_is_due_at_once() {
        let mut schedules = Schedules::default();
        let p = pool("p", true);
        let before = Instant::now();
        assert!(schedules
            .of(&p)
            .due(&p)
            .is_some_and(|t| t <= Instant::now()));
        round(p.clone(), schedules.of(&p).slot.clone()).await;
        let next = schedules.of(&p).due(&p).unwrap();
        assert!(next >= before + Duration::from_secs(60), "one interval on");

        // A reload rebuilt the pool: its first round is due now; the old one's is forgotten.
        let rebuilt = pool("p", true);
        assert!(schedules
            .of(&rebuilt)
            .due(&rebuilt)
            .is_some_and(|t| t <= Instant::now()));
        schedules.keep_only(&[]);
        assert!(schedules.0.is_empty());

        let unchecked = pool("q", false);
        assert_eq!(schedules.of(&unchecked).due(&unchecked), None);
    }
}
