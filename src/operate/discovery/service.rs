//! The discovery service: the first answers at start-up (and for `fulcrum -t`), then each
//! source asked again when it is due, in a Pingora background service.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::{sources_of, Fleet, Key};
use crate::config::Config;
use crate::operate::dns::{Answer, Dns, Failure};

/// How long start-up (and `fulcrum -t`) waits for every source's first answer: more than one
/// query's timeout (2s), and short enough that a graceful upgrade's new process is ready well
/// within the 5s the old one waits for it. A source still unanswered starts empty.
const START_TIMEOUT: Duration = Duration::from_secs(3);

/// The first answers of every source of `config`, asked at once (bounded by START_TIMEOUT).
pub(super) fn resolve_all(config: &Config) -> Vec<(Key, Result<Answer, Failure>)> {
    let sources = sources_of(config);
    if sources.is_empty() {
        return Vec::new();
    }
    let fail_all = |why: String| {
        sources
            .iter()
            .map(|(k, _)| (k.clone(), Err(Failure::Error(why.clone()))))
            .collect()
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail_all(format!("cannot start the resolver: {e}")),
    };
    rt.block_on(async {
        let dns = match Dns::new(&config.resolvers) {
            Ok(d) => d,
            Err(e) => return fail_all(e),
        };
        let asks = sources.iter().map(|(k, s)| {
            let dns = &dns;
            async move {
                let answer = tokio::time::timeout(START_TIMEOUT, dns.resolve(&k.1, s.weight))
                    .await
                    .unwrap_or_else(|_| Err(Failure::Error("timed out".into())));
                (k.clone(), answer)
            }
        });
        futures::future::join_all(asks).await
    })
}

/// For `fulcrum -t`: resolve every name once; warnings for those that do not resolve, and an
/// error for each of them that is `required`.
pub fn check_names(config: &Config) -> (Vec<String>, Vec<String>) {
    let required: HashSet<Key> = sources_of(config)
        .into_iter()
        .filter(|(_, s)| s.required)
        .map(|(k, _)| k)
        .collect();
    let (mut warnings, mut errors) = (Vec::new(), Vec::new());
    for ((pool, source), answer) in resolve_all(config) {
        if let Err(f) = answer {
            let key = (pool, source);
            let line = format!(
                "pools.{}: {} does not resolve now ({})",
                key.0,
                key.1,
                f.message()
            );
            if required.contains(&key) {
                errors.push(format!("{line}, and it is required"));
            } else {
                warnings.push(format!(
                    "{line}: the pool would start without it and gain it once it resolves"
                ));
            }
        }
    }
    (warnings, errors)
}

/// The background service that asks each source again when it is due.
pub struct DiscoveryService {
    fleet: Arc<Fleet>,
}

impl DiscoveryService {
    pub fn new(fleet: Arc<Fleet>) -> Self {
        DiscoveryService { fleet }
    }
}

/// The longest the service sleeps without looking at its sources.
const MAX_SLEEP: Duration = Duration::from_secs(60);

#[async_trait]
impl BackgroundService for DiscoveryService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut dns: Option<(Vec<SocketAddr>, Dns)> = None;
        loop {
            let (due, servers, next) = self.fleet.due();
            if !due.is_empty() {
                // The resolver follows `resolvers:` across reloads.
                if dns.as_ref().is_none_or(|(s, _)| *s != servers) {
                    match Dns::new(&servers) {
                        Ok(d) => dns = Some((servers, d)),
                        Err(e) => {
                            tracing::error!("discovery: {e}");
                            dns = None;
                        }
                    }
                }
                let asks = due.into_iter().map(|(key, weight)| {
                    let dns = dns.as_ref().map(|(_, d)| d);
                    async move {
                        let answer = match dns {
                            Some(dns) => dns.resolve(&key.1, weight).await,
                            None => Err(Failure::Error("no resolver".into())),
                        };
                        (key, answer)
                    }
                });
                let answers = tokio::select! {
                    a = futures::future::join_all(asks) => a,
                    _ = shutdown.changed() => return,
                };
                for (key, answer) in answers {
                    self.fleet.apply(key, answer);
                }
                continue;
            }
            let wait = next.map_or(MAX_SLEEP, |t| {
                t.saturating_duration_since(Instant::now()).min(MAX_SLEEP)
            });
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.fleet.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
