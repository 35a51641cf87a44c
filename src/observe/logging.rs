//! Process logging: tracing to stderr (the journal under systemd), with Pingora's `log`
//! records bridged in. `RUST_LOG` overrides the default level (info) and then shows everything.
//! Without it, Pingora's lines about routine client behaviour (a client that leaves mid-header,
//! a failed TLS handshake, a reusable upstream connection that was gone) are left out, and any
//! other Pingora warning or error is limited to a few a second per source: a storm of them
//! cost megabytes of log and told nothing new.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata};
use tracing_log::NormalizeEvent;
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::observe::log_limit::LogLimit;

/// Pingora messages that describe what clients and networks routinely do, or that fulcrum
/// says better itself.
const ROUTINE: [&str; 8] = [
    // A health check flipped a backend: the probe logs it with pool, backend and a short reason
    // (Pingora's line dumps the whole peer, ~900 characters).
    "becomes unhealthy",
    // A client closed or reset its connection while sending a request header.
    "Fail to proxy: Downstream",
    // A TLS handshake failed (scanners, old clients, wrong names) or never finished.
    "Downstream handshake error",
    "Downstream handshake timeout",
    // An idle upstream keep-alive connection was closed by the backend.
    "failed to acquire reusable stream",
    // A new process waiting for the old one's sockets during an upgrade.
    "No incoming socket transfer",
    // A client went away while fulcrum was answering it.
    "failed to send error response to downstream",
    // pingora-cache, once, on the first stored response: cached headers are compressed
    // without a zstd dictionary (fine for an in-memory cache; nothing to configure).
    "no header compression dictionary loaded",
];

/// Pingora's INFO lines an operator wants (signals, the upgrade hand-over, the grace period);
/// its other INFO lines are internal steps (each service starting), shown with `RUST_LOG`.
const KEPT_INFO: [&str; 5] = [
    "received",
    "sockets sent",
    "No socks to send",
    "grace period",
    "Daemon",
];

pub fn init() {
    let from_env = EnvFilter::try_from_default_env().ok();
    let quiet = from_env.is_none();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new("info"));
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(Quiet {
            on: quiet,
            limits: Mutex::new(HashMap::new()),
        });
    // try_init: a second call (tests, demo) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init();
}

/// Leaves out Pingora's routine lines and rate-limits its other warnings and errors.
struct Quiet {
    on: bool,
    /// Per Pingora module (its log target).
    limits: Mutex<HashMap<String, LogLimit>>,
}

impl<S> Filter<S> for Quiet {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        if !self.on || *meta.level() > Level::INFO || !meta.target().starts_with("pingora") {
            return true;
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        if *meta.level() == Level::INFO {
            return KEPT_INFO.iter().any(|k| message.0.contains(k));
        }
        if ROUTINE.iter().any(|r| message.0.contains(r)) {
            return false;
        }
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        limits
            .entry(meta.target().to_string())
            .or_default()
            .allow()
            .is_some()
    }
}

/// The `message` field of an event.
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_string();
        }
    }
}
