//! `X-Fulcrum-Debug`: why a request went where it went, for the trusted clients of a listener
//! with `debug_header: true`: the route, the pool and its algorithm, affinity, each attempt,
//! and the backends passed over with the reason (not ready: checking, unhealthy, ejected,
//! draining, disabled; or `bounded`: at its bounded-load limit). The access log carries the same text in its `debug` field.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::pool::sticky::Decision;
use crate::pool::Pool;
use crate::runtime::ListenerInfo;

/// Whether `client` on `listener` gets the header.
pub fn trusted(listener: Option<&ListenerInfo>, client: Option<IpAddr>) -> bool {
    let (Some(cidrs), Some(ip)) = (listener.and_then(|l| l.debug_trusted.as_ref()), client) else {
        return false;
    };
    cidrs.iter().any(|c| c.contains(ip))
}

/// What one request went through, as the header's value (ASCII, `; `-separated `key=value`).
pub struct Trace<'a> {
    /// The route's index in `routes:` and how it matches.
    pub route: Option<(usize, String)>,
    pub pool: &'a Pool,
    pub affinity: Option<Decision>,
    /// Backends tried and given up on, in order.
    pub tried: &'a [usize],
    /// The backend that answered (None: none did).
    pub served: Option<usize>,
}

impl Trace<'_> {
    pub fn render(&self) -> String {
        let name = |i: usize| {
            self.pool
                .backends()
                .get(i)
                .map_or_else(|| format!("#{i}"), |b| b.name.clone())
        };
        let mut out = String::new();
        if let Some((i, how)) = &self.route {
            let _ = write!(out, "route={i} ({how}); ");
        }
        let _ = write!(
            out,
            "pool={}; algorithm={}",
            self.pool.name,
            self.pool.algorithm.as_str()
        );
        if let Some(d) = self.affinity {
            let _ = write!(out, "; affinity={}", d.as_str());
        }
        let attempts = self.tried.len() + usize::from(self.served.is_some());
        let _ = write!(out, "; attempts={attempts}");
        if !self.tried.is_empty() {
            let tried: Vec<String> = self.tried.iter().map(|&i| name(i)).collect();
            let _ = write!(out, "; failed={}", tried.join(","));
        }
        if let Some(i) = self.served {
            let _ = write!(out, "; backend={}", name(i));
        }
        let passed: Vec<String> = self
            .pool
            .backends()
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.tried.contains(i) && Some(*i) != self.served)
            .filter_map(|(i, b)| {
                if !b.is_ready() {
                    Some(format!("{}({})", b.name, b.readiness().as_str()))
                } else if self.pool.at_bound(i) {
                    Some(format!("{}(bounded)", b.name))
                } else {
                    None
                }
            })
            .collect();
        if !passed.is_empty() {
            let _ = write!(out, "; passed_over={}", passed.join(","));
        }
        // Header values are visible ASCII: names from the configuration or DNS are, but keep
        // anything else out rather than fail the response.
        out.retain(|c| c.is_ascii_graphic() || c == ' ');
        out
    }
}
