//! SIGHUP: re-read and validate the configuration file; if it is valid, build the new runtime
//! (keeping the state of unchanged backends) and swap it in atomically; if not, keep serving
//! the old one and say why. Requests in flight finish on the snapshot they started with.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::{self, Config};
use crate::observe::metrics::Metrics;
use crate::operate::systemd::Notifier;
use crate::runtime::{Runtime, SharedRuntime};
use crate::tls::SniResolver;

/// Whether `a` and `b` have the same listening sockets (what a reload cannot change).
fn same_sockets(a: &Config, b: &Config) -> bool {
    a.listeners.len() == b.listeners.len()
        && a.listeners.iter().zip(&b.listeners).all(|(x, y)| {
            x.name == y.name
                && x.addr == y.addr
                && x.redirect_https == y.redirect_https
                && x.h2c == y.h2c
                && x.tls.is_some() == y.tls.is_some()
                && x.tls.as_ref().map(|t| t.http2) == y.tls.as_ref().map(|t| t.http2)
                // The ACME service keeps the `acme` it started with.
                && x.tls.as_ref().map(|t| &t.acme) == y.tls.as_ref().map(|t| &t.acme)
        })
}

/// The sections of `new` that differ from the `running` configuration's but only a graceful
/// upgrade applies.
fn needs_upgrade(running: &Config, new: &Config) -> Vec<&'static str> {
    [
        ("listeners", !same_sockets(new, running)),
        ("admin", new.admin != running.admin),
        ("access_log", new.access_log != running.access_log),
        ("server", new.server != running.server),
    ]
    .into_iter()
    .filter_map(|(what, changed)| changed.then_some(what))
    .collect()
}

/// The background service that reloads on SIGHUP.
pub struct ReloadService {
    path: PathBuf,
    runtime: SharedRuntime,
    metrics: Arc<Metrics>,
    /// The configuration now applied (listeners and process settings as started).
    current: Mutex<Config>,
    /// The SNI resolver of each TLS listener, by name: certificates are reloaded in place.
    certificates: Vec<(String, Arc<SniResolver>)>,
    /// Tells systemd about each reload (RELOADING=1, then READY=1).
    notifier: Arc<Notifier>,
    /// Applies the new configuration with the backends discovered by DNS (None: rebuilt here).
    fleet: Option<Arc<crate::operate::discovery::Fleet>>,
}

impl ReloadService {
    pub fn new(
        config: &Config,
        runtime: SharedRuntime,
        metrics: Arc<Metrics>,
        certificates: Vec<(String, Arc<SniResolver>)>,
    ) -> Self {
        ReloadService {
            path: config.source.clone(),
            runtime,
            metrics,
            current: Mutex::new(config.clone()),
            certificates,
            notifier: Arc::new(Notifier::default()),
            fleet: None,
        }
    }

    /// Report reloads to systemd through `notifier`.
    pub fn with_notifier(mut self, notifier: Arc<Notifier>) -> Self {
        self.notifier = notifier;
        self
    }

    /// Apply configurations through `fleet`, which keeps the backends it discovered.
    pub fn with_fleet(mut self, fleet: Arc<crate::operate::discovery::Fleet>) -> Self {
        self.fleet = Some(fleet);
        self
    }

    /// Reload the certificates of every TLS listener whose address did not change (loaded and
    /// checked by the validation that just passed).
    fn reload_certificates(&self, running: &Config, new: &Config) {
        for (name, resolver) in &self.certificates {
            let find = |c: &Config| c.listeners.iter().find(|l| &l.name == name).cloned();
            let (Some(old), Some(new)) = (find(running), find(new)) else {
                continue;
            };
            let Some(tls) = new
                .tls
                .as_ref()
                .filter(|_| old.addr == new.addr && old.tls.is_some())
            else {
                continue;
            };
            let certs = tls.loaded();
            resolver.replace(&certs);
            tracing::info!(
                "reload: listener {name}: {} certificate(s) loaded",
                certs.len()
            );
        }
    }

    /// Reload once; true if the new configuration was applied.
    pub fn reload(&self) -> bool {
        let Ok(mut current) = self.current.lock() else {
            return false;
        };
        let new = match config::load(&self.path) {
            Ok(c) => c,
            Err(e) => {
                self.metrics.reload(false);
                for line in e.to_string().lines() {
                    tracing::error!("reload refused: {line}");
                }
                tracing::error!(
                    "reload refused: still serving {} as loaded before (sha256 {})",
                    self.path.display(),
                    current.hash
                );
                return false;
            }
        };
        for w in &new.warnings {
            tracing::warn!("reload: {w}");
        }
        self.reload_certificates(&current, &new);
        let mut applied = new;
        for what in needs_upgrade(&current, &applied) {
            tracing::warn!(
                "reload: `{what}` changed, which needs a graceful upgrade (fulcrum -u); the running `{what}` is kept, the rest is applied"
            );
        }
        // Sockets stay as they are; what a listener asks of its connections (idle time,
        // limits) is read per connection from the snapshot, so it changes now.
        let sockets_kept = same_sockets(&applied, &current);
        let mut listeners = current.listeners.clone();
        if sockets_kept {
            for (running, wanted) in listeners.iter_mut().zip(&applied.listeners) {
                running.keepalive_timeout = wanted.keepalive_timeout;
                running.limits = wanted.limits;
                running.debug_trusted = wanted.debug_trusted.clone();
            }
        }
        applied.listeners = listeners;
        applied.admin = current.admin.clone();
        applied.access_log = current.access_log.clone();
        applied.server = current.server.clone();

        if let Some(fleet) = &self.fleet {
            fleet.install(&applied);
        } else {
            let old = self.runtime.load_full();
            let next = Runtime::rebuild(&applied, &self.metrics, Some(&old));
            self.runtime.store(Arc::new(next));
        }
        self.metrics.reload(true);
        tracing::info!(
            "reload: applied {} (sha256 {}): {} pools, {} routes",
            self.path.display(),
            applied.hash,
            applied.pools.len(),
            applied.routes.len()
        );
        *current = applied;
        true
    }
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("reload: cannot handle SIGHUP: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                Some(()) = hup.recv() => {
                    tracing::info!("reload: SIGHUP received, reading {}", self.path.display());
                    self.notifier.reloading(&format!("reloading {}", self.path.display()));
                    let status = if self.reload() {
                        "serving; the last reload was applied"
                    } else {
                        "serving the previous configuration; the last reload was refused (see the log)"
                    };
                    self.notifier.notify(&format!("READY=1\nSTATUS={status}"));
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(server: &str, listen: &str) -> Config {
        let yaml = format!(
            "{server}listeners:\n  - {{name: a, listen: \"{listen}\"}}\nroutes: [{{pool: p}}]\npools:\n  p:\n    backends: [{{address: 127.0.0.1:9000}}]\n"
        );
        config::parse(std::path::Path::new("t.yaml"), &yaml).unwrap()
    }

    #[test]
    fn sections_only_an_upgrade_applies_are_named() {
        let running = config(
            "server: {threads: 2, pid_file: /tmp/a.pid}\n",
            "127.0.0.1:8080",
        );
        let same = config(
            "server: {threads: 2, pid_file: /tmp/a.pid}\n",
            "127.0.0.1:8080",
        );
        assert!(needs_upgrade(&running, &same).is_empty());
        let threads = config(
            "server: {threads: 3, pid_file: /tmp/a.pid}\n",
            "127.0.0.1:8080",
        );
        assert_eq!(needs_upgrade(&running, &threads), ["server"]);
        let dropped = config("", "127.0.0.1:8080");
        assert_eq!(needs_upgrade(&running, &dropped), ["server"]);
        let moved = config(
            "server: {threads: 2, pid_file: /tmp/a.pid}\n",
            "127.0.0.1:8081",
        );
        assert_eq!(needs_upgrade(&running, &moved), ["listeners"]);
    }
}
