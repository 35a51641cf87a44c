//! What the TLS listeners serve, for the operator: `fulcrum_certificate_expiry_seconds`
//! (seconds until each served certificate expires, files and ACME alike),
//! `fulcrum_acme_failures_total` and `fulcrum_certificate_fallback`, read at scrape time; and
//! the `certificates` section of /status (what each listener serves, and its ACME state).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pingora_prometheus::prometheus::core::{Collector, Desc};
use pingora_prometheus::prometheus::proto::MetricFamily;
use pingora_prometheus::prometheus::{IntCounterVec, IntGaugeVec, Opts, Result as PromResult};
use serde_json::json;

use crate::tls::{unix_now, SniResolver};

/// The ACME side of a listener, written by the ACME service, read by /status and /metrics.
#[derive(Debug, Default)]
pub struct AcmeState {
    pub domains: Vec<String>,
    /// Failed attempts since start.
    pub failures: AtomicU64,
    /// The last failure's message and when (unix seconds); None once an attempt succeeded.
    pub last_error: Mutex<Option<(i64, String)>>,
    /// When the served certificate is due for renewal, or the next attempt (unix seconds).
    pub next_attempt: Mutex<Option<i64>>,
}

impl AcmeState {
    pub fn new(domains: Vec<String>) -> AcmeState {
        AcmeState {
            domains,
            ..AcmeState::default()
        }
    }

    pub fn failed(&self, error: &str, next: i64) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((unix_now(), error.to_string()));
        self.set_next(next);
    }

    pub fn succeeded(&self, next: i64) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.set_next(next);
    }

    fn set_next(&self, next: i64) {
        *self.next_attempt.lock().unwrap_or_else(|e| e.into_inner()) = Some(next);
    }
}

/// One TLS listener's certificates.
pub struct ListenerCerts {
    pub listener: String,
    pub resolver: Arc<SniResolver>,
    pub acme: Option<Arc<AcmeState>>,
}

/// Every TLS listener's certificates.
#[derive(Default)]
pub struct Certificates {
    pub listeners: Vec<ListenerCerts>,
}

fn rfc3339(unix: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Certificates {
    /// The `certificates` section of /status, by listener.
    pub fn json(&self) -> serde_json::Value {
        let now = unix_now();
        let map: serde_json::Map<String, serde_json::Value> = self
            .listeners
            .iter()
            .map(|l| {
                let served: Vec<serde_json::Value> = l
                    .resolver
                    .served()
                    .into_iter()
                    .map(|(source, c)| {
                        json!({
                            "source": source,
                            "names": c.names,
                            "not_after": rfc3339(c.not_after),
                            "expires_in_seconds": c.not_after - now,
                        })
                    })
                    .collect();
                let fallback = served.iter().any(|s| s["source"] == "fallback");
                let acme = l.acme.as_ref().map(|a| {
                    let error = a
                        .last_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    let next = *a.next_attempt.lock().unwrap_or_else(|e| e.into_inner());
                    json!({
                        "domains": a.domains,
                        "failures": a.failures.load(Ordering::Relaxed),
                        "last_error": error.as_ref().map(|(_, e)| e),
                        "last_error_at": error.as_ref().map(|(t, _)| rfc3339(*t)),
                        "next_attempt": next.map(rfc3339),
                    })
                });
                (
                    l.listener.clone(),
                    json!({"serving_fallback": fallback, "served": served, "acme": acme}),
                )
            })
            .collect();
        serde_json::Value::Object(map)
    }
}

fn families() -> PromResult<(IntGaugeVec, IntGaugeVec, IntCounterVec)> {
    let expiry = IntGaugeVec::new(
        Opts::new(
            "fulcrum_certificate_expiry_seconds",
            "Seconds until the certificate a TLS listener serves expires (name: its first DNS name).",
        ),
        &["listener", "name"],
    )?;
    let fallback = IntGaugeVec::new(
        Opts::new(
            "fulcrum_certificate_fallback",
            "1 while an ACME listener serves its self-signed fallback (no certificate yet).",
        ),
        &["listener"],
    )?;
    let failures = IntCounterVec::new(
        Opts::new(
            "fulcrum_acme_failures_total",
            "Failed ACME attempts (order, challenge, issuance) of the listener.",
        ),
        &["listener"],
    )?;
    Ok((expiry, fallback, failures))
}

/// The certificate metrics, read from the resolvers at scrape time.
pub struct CertificateCollector {
    certificates: Arc<Certificates>,
    descs: Vec<Desc>,
}

impl CertificateCollector {
    pub fn new(certificates: Arc<Certificates>) -> Self {
        let descs = match families() {
            Ok((a, b, c)) => [a.desc(), b.desc(), c.desc()]
                .into_iter()
                .flatten()
                .cloned()
                .collect(),
            Err(_) => Vec::new(),
        };
        CertificateCollector {
            certificates,
            descs,
        }
    }
}

impl Collector for CertificateCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Ok((expiry, fallback, failures)) = families() else {
            return Vec::new();
        };
        let now = unix_now();
        for l in &self.certificates.listeners {
            // One series per name: the soonest expiry when two certificates share a name.
            let mut soonest: BTreeMap<String, i64> = BTreeMap::new();
            let mut on_fallback = false;
            for (source, c) in l.resolver.served() {
                on_fallback |= source == "fallback";
                let name = c.names.first().cloned().unwrap_or_default();
                let e = soonest.entry(name).or_insert(c.not_after);
                *e = (*e).min(c.not_after);
            }
            for (name, not_after) in soonest {
                expiry
                    .with_label_values(&[l.listener.as_str(), name.as_str()])
                    .set(not_after - now);
            }
            if let Some(a) = &l.acme {
                fallback
                    .with_label_values(&[l.listener.as_str()])
                    .set(i64::from(on_fallback));
                failures
                    .with_label_values(&[l.listener.as_str()])
                    .inc_by(a.failures.load(Ordering::Relaxed));
            }
        }
        [expiry.collect(), fallback.collect(), failures.collect()]
            .into_iter()
            .flatten()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(name: &str) -> crate::tls::LoadedCert {
        crate::operate::acme::fallback(&[name.to_string()]).unwrap()
    }

    #[test]
    fn the_fallback_is_served_until_a_managed_certificate_and_files_come_first_after_it() {
        let resolver = Arc::new(SniResolver::with_fallback(&[], Some(cert("a.example"))).unwrap());
        let state = Arc::new(AcmeState::new(vec!["a.example".into()]));
        let certs = Arc::new(Certificates {
            listeners: vec![ListenerCerts {
                listener: "tls".into(),
                resolver: resolver.clone(),
                acme: Some(state.clone()),
            }],
        });
        let j = certs.json();
        assert_eq!(j["tls"]["serving_fallback"], true, "{j}");
        assert_eq!(j["tls"]["served"][0]["source"], "fallback", "{j}");
        state.failed("connection refused", 0);
        let collector = CertificateCollector::new(certs.clone());
        let text = {
            use pingora_prometheus::prometheus::{Encoder, TextEncoder};
            let mut out = Vec::new();
            TextEncoder::new()
                .encode(&collector.collect(), &mut out)
                .unwrap();
            String::from_utf8(out).unwrap()
        };
        assert!(
            text.contains("fulcrum_certificate_fallback{listener=\"tls\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("fulcrum_acme_failures_total{listener=\"tls\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "fulcrum_certificate_expiry_seconds{listener=\"tls\",name=\"a.example\"}"
            ),
            "{text}"
        );

        resolver.set_managed(&[cert("a.example")]);
        resolver.replace(&[cert("b.example")]);
        state.succeeded(0);
        let j = certs.json();
        let sources: Vec<_> = j["tls"]["served"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["source"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(sources, ["acme", "file"], "{j}");
        assert_eq!(j["tls"]["serving_fallback"], false, "{j}");
        assert_eq!(j["tls"]["acme"]["failures"], 1, "{j}");
        assert!(j["tls"]["acme"]["last_error"].is_null(), "{j}");
    }
}
