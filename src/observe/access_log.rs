//! The access log: one JSON object per request. The request path only formats the line and
//! hands it to a bounded channel (never blocking: a full channel drops and counts); a
//! background service writes it, and reopens the file on SIGUSR1 (what logrotate expects). It
//! keeps writing through a graceful shutdown (requests still finish then), and says when
//! every queued line is written, so that the process may exit early without losing any.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::AccessLogConfig;
use crate::observe::log_limit::{LogLimit, Outage};

/// Lines that may wait for the writer before new ones are dropped.
const QUEUE: usize = 65_536;

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub listener: &'a str,
    pub client: String,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub duration_ms: f64,
    pub pool: &'a str,
    pub backend: &'a str,
    pub attempts: u32,
    pub upstream_status: Option<u16>,
    pub request_id: &'a str,
    pub affinity: Option<&'a str>,
    /// `X-Fulcrum-Debug`'s text, when the client got it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug: Option<&'a str>,
}

/// The request path's handle.
pub struct AccessLog {
    tx: mpsc::Sender<String>,
    dropped: AtomicU64,
    complaints: LogLimit,
    progress: Arc<Progress>,
}

/// Lines queued and lines written (and flushed) so far.
#[derive(Default)]
struct Progress {
    queued: AtomicU64,
    written: AtomicU64,
}

impl AccessLog {
    /// Queue one entry; never waits.
    pub fn send(&self, entry: &Entry) {
        let Ok(mut line) = serde_json::to_string(entry) else {
            return;
        };
        line.push('\n');
        if self.tx.try_send(line).is_ok() {
            self.progress.queued.fetch_add(1, Ordering::Relaxed);
        } else {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if self.complaints.allow().is_some() {
                tracing::warn!("access log: writer behind, {n} lines dropped so far");
            }
        }
    }
}

impl AccessLog {
    /// Whether every line queued so far has been written and flushed.
    pub fn is_drained(&self) -> bool {
        self.progress.written.load(Ordering::Acquire)
            >= self.progress.queued.load(Ordering::Relaxed)
    }
}

/// The background service that writes the lines.
pub struct AccessLogWriter {
    target: AccessLogConfig,
    rx: Mutex<Option<mpsc::Receiver<String>>>,
    progress: Arc<Progress>,
}

/// The handle for the request path and the writer service that drains it.
pub fn channel(target: AccessLogConfig) -> (AccessLog, AccessLogWriter) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let progress = Arc::new(Progress::default());
    (
        AccessLog {
            tx,
            dropped: AtomicU64::new(0),
            complaints: LogLimit::default(),
            progress: progress.clone(),
        },
        AccessLogWriter {
            target,
            rx: Mutex::new(Some(rx)),
            progress,
        },
    )
}

impl AccessLogWriter {
    fn open(&self) -> Box<dyn Write + Send> {
        match &self.target {
            AccessLogConfig::Stdout => Box::new(std::io::stdout()),
            AccessLogConfig::File(path) => {
                match std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                {
                    Ok(f) => Box::new(std::io::BufWriter::new(f)),
                    Err(e) => {
                        tracing::error!("access log: cannot open {}: {e}", path.display());
                        Box::new(std::io::sink())
                    }
                }
            }
        }
    }
}

/// Log a change between writing and failing to write (`lines` lines were at stake).
fn report_write(result: std::io::Result<()>, failing: &Outage, lines: u64) {
    match result {
        Err(e) if failing.set(true) => {
            tracing::error!("access log: cannot write ({e}): lines are lost until it can again");
        }
        Ok(()) if failing.set(false) => {
            tracing::info!("access log: writing again ({lines} lines just written)");
        }
        _ => {}
    }
}

#[async_trait]
impl BackgroundService for AccessLogWriter {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let Some(mut rx) = self.rx.lock().ok().and_then(|mut r| r.take()) else {
            return;
        };
        let mut reopen =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!("access log: no SIGUSR1 handler, cannot reopen: {e}");
                    None
                }
            };
        let mut out = self.open();
        // Whether writing fails now (a full disk, a removed mount): said once each way.
        let failing = Outage::default();
        loop {
            tokio::select! {
                line = rx.recv() => {
                    let Some(line) = line else { break };
                    let mut result = out.write_all(line.as_bytes());
                    // Write what is queued, then flush once.
                    let mut lines = 1;
                    while let Ok(more) = rx.try_recv() {
                        result = result.and(out.write_all(more.as_bytes()));
                        lines += 1;
                    }
                    result = result.and(out.flush());
                    report_write(result, &failing, lines);
                    self.progress.written.fetch_add(lines, Ordering::Release);
                }
                Some(()) = async { match reopen.as_mut() { Some(s) => s.recv().await, None => None } } => {
                    let _ = out.flush();
                    out = self.open();
                    tracing::info!("access log: reopened on SIGUSR1");
                }
            }
        }
        let _ = out.flush();
    }
}
