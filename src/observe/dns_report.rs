//! What discovery last found, per pool and DNS source, for /status (`"discovery"` of a pool).
//! Written by the discovery service, read by the admin listener; shared by Arc, not global.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::{json, Value};

/// The last resolution of one source.
#[derive(Debug, Clone)]
pub struct SourceReport {
    pub at: SystemTime,
    /// `success`, `empty` or `failure` (as `fulcrum_dns_resolutions_total{result}`).
    pub result: &'static str,
    /// Addresses in the last answer (0 unless it succeeded).
    pub records: usize,
    /// Addresses the pool uses now: the last good answer's.
    pub in_use: usize,
    pub error: Option<String>,
    /// When the source is asked next.
    pub next_at: SystemTime,
}

/// Reports by pool, then by source (`app.internal:8080`, `srv _http._tcp.app.service.consul`).
#[derive(Debug, Default)]
pub struct DnsReports {
    pools: Mutex<BTreeMap<String, BTreeMap<String, SourceReport>>>,
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl DnsReports {
    pub fn record(&self, pool: &str, source: &str, report: SourceReport) {
        if let Ok(mut pools) = self.pools.lock() {
            pools
                .entry(pool.to_string())
                .or_default()
                .insert(source.to_string(), report);
        }
    }

    /// Forget the sources `keep` says no longer exist.
    pub fn retain(&self, keep: impl Fn(&str, &str) -> bool) {
        if let Ok(mut pools) = self.pools.lock() {
            for (pool, sources) in pools.iter_mut() {
                sources.retain(|source, _| keep(pool, source));
            }
            pools.retain(|_, sources| !sources.is_empty());
        }
    }

    /// `"discovery"` of `pool`: the latest resolution's time, the overall result (`success`
    /// when every source's last answer was good, else the first other), the records of the
    /// last answers, and each source (null when the pool discovers nothing).
    pub fn json(&self, pool: &str) -> Value {
        let Ok(pools) = self.pools.lock() else {
            return Value::Null;
        };
        let Some(sources) = pools.get(pool) else {
            return Value::Null;
        };
        let at = sources.values().map(|r| r.at).max();
        let result = sources
            .values()
            .map(|r| r.result)
            .find(|r| *r != "success")
            .unwrap_or("success");
        let list: Vec<Value> = sources
            .iter()
            .map(|(name, r)| {
                json!({
                    "name": name,
                    "at": time(r.at),
                    "result": r.result,
                    "records": r.records,
                    "in_use": r.in_use,
                    "error": r.error,
                    "next_at": time(r.next_at),
                })
            })
            .collect();
        json!({
            "at": at.map(time),
            "result": result,
            "records": sources.values().map(|r| r.records).sum::<usize>(),
            "sources": list,
        })
    }
}
