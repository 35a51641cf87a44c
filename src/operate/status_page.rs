//! The admin listener's status page (`GET /`): one server-rendered HTML page, inline CSS, no
//! JavaScript, refreshed by the browser every 5 s. It shows what `/status` says (listeners,
//! pools, backends and their state, discovery) plus, per backend, the request rate, the error
//! rate, failed attempts and the p50/p99 of `fulcrum_upstream_response_seconds`, computed from
//! the registry over the window since an earlier view (a small ring of samples kept here; on a
//! first view, since the process started).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use pingora_prometheus::prometheus::proto::MetricFamily;
use serde_json::Value;

use crate::observe::metrics::Metrics;
use crate::runtime::Runtime;

/// How often the page asks to be reloaded, in seconds.
pub const REFRESH_SECONDS: u32 = 5;

/// Rates and percentiles are over at most this window (the oldest sample younger than it).
const WINDOW: Duration = Duration::from_secs(60);

/// At most this many samples are kept (one per second at most: a minute's worth).
const MAX_SAMPLES: usize = 64;

/// A sample is kept only if the previous one is at least this old (many viewers, one ring).
const MIN_SPACING: Duration = Duration::from_secs(1);

/// A backend's counters at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
struct Totals {
    requests: f64,
    /// Answers with a 5xx code.
    errors: f64,
    /// Failed attempts (`fulcrum_upstream_errors_total`), retried or not.
    failed: f64,
    /// `fulcrum_upstream_response_seconds`: (upper bound, cumulative count), finite bounds.
    buckets: Vec<(f64, f64)>,
    /// Observations in all buckets (+Inf included).
    count: f64,
}

/// (pool, backend) -> totals.
type Snapshot = HashMap<(String, String), Totals>;

struct Sample {
    at: Instant,
    totals: Snapshot,
}

/// What the page shows of one backend over the window.
#[derive(Debug, Clone, Default, PartialEq)]
struct Window {
    requests_total: f64,
    rate: f64,
    /// Share of 5xx answers in the window (None: no request in it).
    error_share: Option<f64>,
    /// Failed attempts in the window.
    failed: f64,
    p50: Option<Quantile>,
    p99: Option<Quantile>,
}

/// A quantile from histogram buckets: within the first bucket (below its bound: no finer
/// answer), a value interpolated within a later one, or beyond the last finite bound.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Quantile {
    Below(f64),
    At(f64),
    Above(f64),
}

/// The renderer; keeps the samples the rates are computed from (not global: one per admin
/// listener).
pub struct StatusPage {
    started: Instant,
    samples: Mutex<VecDeque<Sample>>,
}

impl Default for StatusPage {
    fn default() -> Self {
        StatusPage {
            started: Instant::now(),
            samples: Mutex::new(VecDeque::new()),
        }
    }
}

impl StatusPage {
    /// The page for `status` (the /status document), `runtime` (its listeners) and the
    /// registry's counters now.
    pub fn render(&self, status: &Value, runtime: &Runtime, metrics: &Metrics) -> String {
        let now = Instant::now();
        let current = totals(&metrics.gather());
        let (since, windows) = self.windows(now, current);
        page(status, runtime, &windows, since)
    }

    /// Each backend's window against the oldest sample younger than `WINDOW` (or zero at the
    /// start), and that window's length; records `current` in the ring.
    fn windows(
        &self,
        now: Instant,
        current: Snapshot,
    ) -> (Duration, HashMap<(String, String), Window>) {
        let mut samples = match self.samples.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        while samples
            .front()
            .is_some_and(|s| now.duration_since(s.at) > WINDOW)
        {
            samples.pop_front();
        }
        let empty = Snapshot::new();
        let (base_at, base) = match samples.front() {
            Some(s) if now.duration_since(s.at) >= MIN_SPACING => (s.at, &s.totals),
            _ => (self.started, &empty),
        };
        let since = now.duration_since(base_at);
        let windows = current
            .iter()
            .map(|(k, t)| (k.clone(), window(t, base.get(k), since)))
            .collect();
        let spaced = samples
            .back()
            .is_none_or(|s| now.duration_since(s.at) >= MIN_SPACING);
        if spaced {
            if samples.len() >= MAX_SAMPLES {
                samples.pop_front();
            }
            samples.push_back(Sample {
                at: now,
                totals: current,
            });
        }
        (since, windows)
    }
}

/// The registry's per-backend totals: `fulcrum_requests_total` summed over listeners and codes
/// (5xx apart), and the buckets of `fulcrum_upstream_response_seconds`.
fn totals(families: &[MetricFamily]) -> Snapshot {
    let mut out = Snapshot::new();
    for f in families {
        let requests = f.name() == "fulcrum_requests_total";
        let failures = f.name() == "fulcrum_upstream_errors_total";
        let latency = f.name() == "fulcrum_upstream_response_seconds";
        if !requests && !failures && !latency {
            continue;
        }
        for m in &f.metric {
            let label = |name: &str| {
                m.label
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_string())
                    .unwrap_or_default()
            };
            let backend = label("backend");
            if backend.is_empty() {
                continue;
            }
            let t = out.entry((label("pool"), backend)).or_default();
            if requests {
                let v = m.counter.value();
                t.requests += v;
                if label("code").starts_with('5') {
                    t.errors += v;
                }
            } else if failures {
                t.failed += m.counter.value();
            } else {
                let h = &m.histogram;
                t.count = h.sample_count() as f64;
                t.buckets = h
                    .bucket
                    .iter()
                    .filter(|b| b.upper_bound().is_finite())
                    .map(|b| (b.upper_bound(), b.cumulative_count() as f64))
                    .collect();
            }
        }
    }
    out
}

/// `now` against `base` (None: zero) over `since`.
fn window(now: &Totals, base: Option<&Totals>, since: Duration) -> Window {
    let zero = Totals::default();
    let base = base.unwrap_or(&zero);
    let requests = (now.requests - base.requests).max(0.0);
    let errors = (now.errors - base.errors).max(0.0);
    let count = (now.count - base.count).max(0.0);
    let buckets: Vec<(f64, f64)> = now
        .buckets
        .iter()
        .enumerate()
        .map(|(i, &(bound, c))| {
            let before = base.buckets.get(i).map_or(0.0, |&(_, b)| b);
            (bound, (c - before).max(0.0))
        })
        .collect();
    let secs = since.as_secs_f64();
    Window {
        requests_total: now.requests,
        rate: if secs > 0.0 { requests / secs } else { 0.0 },
        error_share: (requests > 0.0).then(|| errors / requests),
        failed: (now.failed - base.failed).max(0.0),
        p50: quantile(0.5, &buckets, count),
        p99: quantile(0.99, &buckets, count),
    }
}

/// The `q` quantile of `count` observations in cumulative `buckets` (finite upper bounds,
/// ascending), interpolated within its bucket as Prometheus' `histogram_quantile` does.
fn quantile(q: f64, buckets: &[(f64, f64)], count: f64) -> Option<Quantile> {
    if count <= 0.0 {
        return None;
    }
    let rank = q * count;
    let mut lower = (0.0, 0.0);
    for &(bound, cumulative) in buckets {
        if cumulative >= rank {
            let (lo_bound, lo_count) = lower;
            if lo_bound <= 0.0 {
                return Some(Quantile::Below(bound));
            }
            let within = cumulative - lo_count;
            let share = if within > 0.0 {
                (rank - lo_count) / within
            } else {
                1.0
            };
            return Some(Quantile::At(lo_bound + (bound - lo_bound) * share));
        }
        lower = (bound, cumulative);
    }
    Some(Quantile::Above(lower.0))
}

/// `s` with the characters HTML gives a meaning escaped (text and quoted attributes).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON value as page text (escaped; null and missing as a dash).
fn text(v: &Value) -> String {
    match v {
        Value::Null => "–".to_string(),
        Value::String(s) => escape(s),
        Value::Bool(b) => if *b { "yes" } else { "no" }.to_string(),
        other => escape(&other.to_string()),
    }
}

fn seconds(d: f64) -> String {
    if d < 0.001 {
        format!("{:.2} ms", d * 1000.0)
    } else if d < 1.0 {
        format!("{:.1} ms", d * 1000.0)
    } else {
        format!("{d:.2} s")
    }
}

fn quantile_text(q: Option<Quantile>) -> String {
    match q {
        None => "–".to_string(),
        Some(Quantile::Below(v)) => format!("&lt; {}", seconds(v)),
        Some(Quantile::At(v)) => seconds(v),
        Some(Quantile::Above(v)) => format!("&gt; {}", seconds(v)),
    }
}

/// A window length as the page says it ("62 s", "3 min").
fn span(d: Duration) -> String {
    let s = d.as_secs();
    if s < 120 {
        format!("{s} s")
    } else if s < 7200 {
        format!("{} min", s / 60)
    } else {
        format!("{} h", s / 3600)
    }
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}\
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.15em;margin:1.6em 0 .4em}\
.meta{color:#555}.meta code{background:#eee;padding:0 .3em}\
table{border-collapse:collapse;background:#fff;margin:.4em 0}\
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top;white-space:nowrap}\
td.why{white-space:normal;min-width:14em}\
th{background:#f0f0f0;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.state{display:inline-block;padding:0 .5em;border-radius:.6em;font-weight:600;color:#fff;background:#777}\
.ready{background:#2e7d32}.checking{background:#1565c0}.unhealthy{background:#c62828}\
.ejected{background:#ad1457}.draining{background:#ef6c00}.disabled{background:#616161}\
.slow-start{background:#f9a825;color:#222}.warn{color:#c62828;font-weight:600}";

/// The whole document.
fn page(
    status: &Value,
    runtime: &Runtime,
    windows: &HashMap<(String, String), Window>,
    since: Duration,
) -> String {
    let mut h = String::with_capacity(8192);
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str(&format!(
        "<meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">"
    ));
    h.push_str("<meta name=\"viewport\" content=\"width=device-width\">");
    h.push_str(&format!(
        "<title>fulcrum {}</title>",
        text(&status["version"])
    ));
    h.push_str(&format!("<style>{STYLE}</style></head><body>\n"));
    h.push_str(&format!(
        "<h1>fulcrum {}{}</h1>\n",
        text(&status["version"]),
        if status["draining"].as_bool() == Some(true) {
            " <span class=\"state draining\">shutting down</span>"
        } else {
            ""
        }
    ));
    let now = humantime::format_rfc3339_seconds(SystemTime::now());
    let null = Value::Null;
    let hash = status.pointer("/config/sha256").unwrap_or(&null);
    let loaded = status.pointer("/config/loaded_at").unwrap_or(&null);
    h.push_str(&format!(
        "<p class=\"meta\" id=\"config\">configuration sha256 <code title=\"{hash}\">{short}</code>, loaded {loaded}; page rendered {now}, refreshed every {REFRESH_SECONDS} s; rates and percentiles over the last {window}</p>\n",
        hash = text(hash),
        short = escape(hash.as_str().unwrap_or("").get(..12).unwrap_or("")),
        loaded = text(loaded),
        window = span(since),
    ));
    listeners(&mut h, runtime);
    if let Some(pools) = status["pools"].as_object() {
        for (name, pool) in pools {
            pool_section(&mut h, name, pool, windows);
        }
    }
    h.push_str("</body></html>\n");
    h
}

fn listeners(h: &mut String, runtime: &Runtime) {
    h.push_str("<h2>Listeners</h2>\n<table id=\"listeners\"><tr><th>name</th><th>address</th><th>protocol</th></tr>\n");
    for l in &runtime.listeners {
        let protocol = match (l.tls, l.h2c, l.redirect_to) {
            (_, _, Some(port)) => format!("http (redirects to https on port {port})"),
            (true, _, None) => "https".to_string(),
            (false, true, None) => "http, h2c".to_string(),
            (false, false, None) => "http".to_string(),
        };
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            escape(&l.name),
            escape(&l.addr.to_string()),
            escape(&protocol)
        ));
    }
    h.push_str("</table>\n");
}

fn pool_section(
    h: &mut String,
    name: &str,
    pool: &Value,
    windows: &HashMap<(String, String), Window>,
) {
    let id = escape(name);
    h.push_str(&format!("<h2 id=\"pool-{id}\">Pool {id}</h2>\n"));
    let slow_start = match &pool["slow_start"] {
        Value::String(s) => format!(", slow start {}", escape(s)),
        _ => String::new(),
    };
    h.push_str(&format!(
        "<p class=\"meta\">{} · health check {} · passive health {}{slow_start}</p>\n",
        text(&pool["algorithm"]),
        text(&pool["health_check"]),
        text(&pool["passive_health"]),
    ));
    discovery(h, &pool["discovery"]);
    h.push_str(concat!(
        "<table class=\"backends\"><tr><th>backend</th><th>address</th><th>state</th>",
        "<th>since</th><th>reason</th><th>weight</th><th>in flight</th><th>req/s</th>",
        "<th title=\"share of 5xx answers\">5xx</th><th title=\"failed attempts, retried or not\">failed</th><th>p50</th><th>p99</th><th>requests</th></tr>\n"
    ));
    for b in pool["backends"].as_array().map_or(&[][..], Vec::as_slice) {
        let backend = b["name"].as_str().unwrap_or_default();
        let w = windows
            .get(&(name.to_string(), backend.to_string()))
            .cloned()
            .unwrap_or_default();
        let (class, label) = state(b);
        let weight = match (b["weight"].as_f64(), b["effective_weight"].as_f64()) {
            (Some(w), Some(e)) if (w - e).abs() > f64::EPSILON => format!("{e:.1} of {w}"),
            (Some(w), _) => format!("{w}"),
            _ => "–".to_string(),
        };
        let weight = if b["operator_weight"].is_number() {
            format!("{weight} (set by operator)")
        } else {
            weight
        };
        let errors = match w.error_share {
            Some(share) if share > 0.0 => {
                format!("<span class=\"warn\">{:.1} %</span>", share * 100.0)
            }
            Some(share) => format!("{:.1} %", share * 100.0),
            None => "–".to_string(),
        };
        h.push_str(&format!(
            "<tr class=\"backend\" data-backend=\"{name_attr}\" data-state=\"{class}\"><td>{name}</td><td>{addr}</td><td><span class=\"state {class}\">{label}</span></td><td title=\"{since}\">{since_short}</td><td class=\"why\">{reason}</td><td class=\"n\">{weight}</td><td class=\"n\">{inflight}</td><td class=\"n\">{rate:.2}</td><td class=\"n\">{errors}</td><td class=\"n\">{failed}</td><td class=\"n\">{p50}</td><td class=\"n\">{p99}</td><td class=\"n\">{total}</td></tr>\n",
            name_attr = escape(backend),
            name = escape(backend),
            addr = text(&b["address"]),
            since = text(&b["since"]),
            since_short = text(&b["since"]).split('T').next_back().unwrap_or_default(),
            reason = text(&b["reason"]),
            inflight = text(&b["inflight"]),
            rate = w.rate,
            failed = if w.failed > 0.0 {
                format!("<span class=\"warn\">{}</span>", w.failed)
            } else {
                "0".to_string()
            },
            p50 = quantile_text(w.p50),
            p99 = quantile_text(w.p99),
            total = w.requests_total,
        ));
    }
    h.push_str("</table>\n");
}

/// The state badge of a backend: its `state`, or `slow start` while a ready backend ramps up
/// (escaped class and label).
fn state(b: &Value) -> (String, String) {
    let s = b["state"].as_str().unwrap_or("unknown");
    if s == "ready" {
        if let Some(until) = b["slow_start_until"].as_str() {
            return (
                "slow-start".to_string(),
                format!("slow start (until {})", escape(until)),
            );
        }
    }
    let class: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    (class, escape(s))
}

fn discovery(h: &mut String, d: &Value) {
    let Some(sources) = d["sources"].as_array() else {
        return;
    };
    h.push_str(&format!(
        "<p class=\"meta\">DNS discovery: {}, {} records, last asked {}</p>\n",
        text(&d["result"]),
        text(&d["records"]),
        text(&d["at"]),
    ));
    h.push_str("<table class=\"discovery\"><tr><th>source</th><th>result</th><th>records</th><th>in use</th><th>error</th><th>asked</th><th>next</th></tr>\n");
    for s in sources {
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            text(&s["name"]),
            text(&s["result"]),
            text(&s["records"]),
            text(&s["in_use"]),
            text(&s["error"]),
            text(&s["at"]),
            text(&s["next_at"]),
        ));
    }
    h.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_leaves_no_markup() {
        assert_eq!(
            escape("<b a=\"x\">&'"),
            "&lt;b a=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn quantiles_interpolate_like_histogram_quantile() {
        let buckets = [(0.01, 10.0), (0.1, 90.0), (1.0, 100.0)];
        assert_eq!(quantile(0.05, &buckets, 100.0), Some(Quantile::Below(0.01)));
        let at = |q: f64| match quantile(q, &buckets, 100.0) {
            Some(Quantile::At(v)) => v,
            other => panic!("{other:?}"),
        };
        assert!((at(0.5) - 0.055).abs() < 1e-9, "{}", at(0.5));
        assert!((at(0.95) - 0.55).abs() < 1e-9, "{}", at(0.95));
        assert_eq!(quantile(0.5, &buckets, 0.0), None);
        assert_eq!(
            quantile(0.99, &[(0.01, 1.0)], 10.0),
            Some(Quantile::Above(0.01))
        );
    }

    #[test]
    fn a_first_view_counts_since_the_start_and_later_ones_since_an_earlier_view() {
        let page = StatusPage::default();
        let key = ("p".to_string(), "b".to_string());
        let totals = |requests: f64| {
            let t = Totals {
                requests,
                ..Totals::default()
            };
            Snapshot::from([(key.clone(), t)])
        };
        let t0 = page.started + Duration::from_secs(10);
        let (since, w) = page.windows(t0, totals(100.0));
        assert_eq!(since, Duration::from_secs(10));
        assert_eq!(w[&key].rate, 10.0);
        let (since, w) = page.windows(t0 + Duration::from_secs(5), totals(110.0));
        assert_eq!(since, Duration::from_secs(5));
        assert_eq!(w[&key].rate, 2.0);
        // Two minutes later both samples are too old: the window starts at the latest one
        // only if it is younger than a minute, else at the start again.
        let late = t0 + Duration::from_secs(125);
        let (since, _) = page.windows(late, totals(200.0));
        assert_eq!(since, Duration::from_secs(135));
        for i in 0..100 {
            page.windows(late + Duration::from_secs(i + 1), totals(200.0));
        }
        let kept = page.samples.lock().unwrap().len();
        assert!(kept <= MAX_SAMPLES, "{kept}");
    }

    #[test]
    fn a_window_is_the_difference_with_its_base() {
        let base = Totals {
            requests: 10.0,
            errors: 1.0,
            failed: 2.0,
            buckets: vec![(0.01, 10.0), (0.1, 10.0)],
            count: 10.0,
        };
        let now = Totals {
            requests: 30.0,
            errors: 1.0,
            failed: 5.0,
            buckets: vec![(0.01, 10.0), (0.1, 30.0)],
            count: 30.0,
        };
        let w = window(&now, Some(&base), Duration::from_secs(10));
        assert_eq!(w.rate, 2.0);
        assert_eq!(w.error_share, Some(0.0));
        assert_eq!(w.failed, 3.0);
        assert_eq!(w.requests_total, 30.0);
        assert!(matches!(w.p50, Some(Quantile::At(v)) if v > 0.01 && v <= 0.1));
    }

    #[test]
    fn names_from_the_configuration_are_escaped_on_the_page() {
        let yaml = "listeners: [{name: a, listen: 127.0.0.1:8080}]\nroutes: [{pool: p}]\npools:\n  p:\n    backends: [{address: 127.0.0.1:9000, name: \"<img src=x>\"}]\n";
        let config = crate::config::parse(std::path::Path::new("t.yaml"), yaml).unwrap();
        let metrics = Metrics::new().unwrap();
        let rt = Runtime::build(&config, &metrics);
        let status = serde_json::json!({
            "version": "1",
            "config": {"sha256": "abc", "loaded_at": "now"},
            "pools": {"p": {"algorithm": "round_robin", "backends": [
                {"name": "<img src=x>", "state": "ready", "address": "127.0.0.1:9000"}
            ]}},
        });
        let html = StatusPage::default().render(&status, &rt, &metrics);
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;img src=x&gt;"));
        assert!(html.contains("http-equiv=\"refresh\""));
    }
}
