//! The gauges of backend state (`fulcrum_backend_up`, `fulcrum_backend_inflight`,
//! `fulcrum_health_transitions_total`): a Prometheus collector that reads the current runtime
//! snapshot at scrape time, registered with the metrics registry beside the admin endpoint.

use std::sync::atomic::Ordering;

use pingora_prometheus::prometheus::core::{Collector, Desc};
use pingora_prometheus::prometheus::proto::MetricFamily;
use pingora_prometheus::prometheus::{IntCounterVec, IntGaugeVec, Opts, Result as PromResult};

use crate::runtime::SharedRuntime;

/// `fulcrum_backend_up`, `fulcrum_backend_inflight` and `fulcrum_health_transitions_total`,
/// read from the current snapshot at scrape time (removed backends disappear with it).
pub struct BackendCollector {
    runtime: SharedRuntime,
    descs: Vec<Desc>,
}

fn backend_families() -> PromResult<(IntGaugeVec, IntGaugeVec, IntCounterVec)> {
    let up = IntGaugeVec::new(
        Opts::new(
            "fulcrum_backend_up",
            "1 when the backend may take traffic (healthy, admitted, not ejected), else 0.",
        ),
        &["pool", "backend"],
    )?;
    let inflight = IntGaugeVec::new(
        Opts::new(
            "fulcrum_backend_inflight",
            "Requests in flight to the backend.",
        ),
        &["pool", "backend"],
    )?;
    let transitions = IntCounterVec::new(
        Opts::new(
            "fulcrum_health_transitions_total",
            "Health transitions of the backend, by the state it went to (up, down).",
        ),
        &["pool", "backend", "to"],
    )?;
    Ok((up, inflight, transitions))
}

impl BackendCollector {
    pub fn new(runtime: SharedRuntime) -> Self {
        let descs = match backend_families() {
            Ok((up, inflight, transitions)) => [up.desc(), inflight.desc(), transitions.desc()]
                .into_iter()
                .flatten()
                .cloned()
                .collect(),
            Err(_) => Vec::new(),
        };
        BackendCollector { runtime, descs }
    }
}

impl Collector for BackendCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Ok((up, inflight, transitions)) = backend_families() else {
            return Vec::new();
        };
        let snapshot = self.runtime.load_full();
        for pool in &snapshot.pools {
            for (i, b) in pool.backends().iter().enumerate() {
                let labels = [pool.name.as_str(), b.name.as_str()];
                up.with_label_values(&labels)
                    .set(i64::from(pool.is_ready(i)));
                inflight.with_label_values(&labels).set(b.inflight() as i64);
                for (to, n) in [("up", &b.went_up), ("down", &b.went_down)] {
                    transitions
                        .with_label_values(&[labels[0], labels[1], to])
                        .inc_by(n.load(Ordering::Relaxed));
                }
            }
        }
        let mut out = up.collect();
        out.extend(inflight.collect());
        out.extend(transitions.collect());
        out
    }
}
