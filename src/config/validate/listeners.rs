//! `listeners:`: names, addresses, the plain/TLS/h2c options and each listener's limits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_norway::Value;

use super::parse::{parse_duration, parse_socket_addr};
use super::{list_items, Checker};
use crate::config::model::*;
use crate::config::raw::*;

/// Smallest and largest `max_header_bytes` (Pingora reads at most 1 MiB of header whatever
/// the limit).
pub const MIN_HEADER_BYTES: u64 = 1024;
pub const MAX_HEADER_BYTES: u64 = 1_048_575;
/// Largest `max_headers` (Pingora reads at most 256 fields whatever the limit).
pub const MAX_HEADERS: u64 = 256;
/// Largest `max_connections` and `max_connections_per_ip`.
pub const MAX_CONNECTIONS: u64 = 10_000_000;

pub(super) fn check_listeners(
    ck: &mut Checker,
    value: Option<Value>,
) -> Option<Vec<ListenerConfig>> {
    let items = list_items(ck, "listeners", value)?;
    let mut out = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut addrs: HashMap<SocketAddr, usize> = HashMap::new();
    let mut ok = true;
    for (i, item) in items.into_iter().enumerate() {
        let path = format!("listeners[{i}]");
        let Some(mut raw) = ck.parse::<RawListener>(&path, item) else {
            ok = false;
            continue;
        };
        if raw.name.trim().is_empty() {
            ck.error(format!("{path}.name"), "must not be empty");
            ok = false;
        } else if let Some(first) = names.insert(raw.name.clone(), i) {
            ck.error(
                format!("{path}.name"),
                format!(
                    "duplicate listener name `{}` (also listeners[{first}])",
                    raw.name
                ),
            );
            ok = false;
        }
        let limits = check_limits(ck, &path, &raw);
        let debug_trusted = check_debug(ck, &path, raw.debug_header, raw.debug_trusted.take());
        let tls = raw
            .tls
            .map(|t| super::tls::check_listener_tls(ck, &format!("{path}.tls"), t));
        let redirect_https = raw.redirect_https.unwrap_or(false);
        let h2c = raw.h2c.unwrap_or(false);
        if h2c && tls.is_some() {
            ck.error(
                format!("{path}.h2c"),
                "h2c is HTTP/2 without TLS; a TLS listener offers h2 by ALPN (`tls.http2`)",
            );
            ok = false;
        }
        let keepalive_timeout = parse_duration(
            ck,
            &format!("{path}.keepalive_timeout"),
            raw.keepalive_timeout.as_deref(),
            DEFAULT_KEEPALIVE_TIMEOUT,
        )
        .max(Duration::from_secs(1));
        if redirect_https && tls.is_some() {
            ck.error(
                format!("{path}.redirect_https"),
                "only a plain listener redirects to https; this one has `tls`",
            );
            ok = false;
        }
        let tls = match tls {
            Some(None) => {
                ok = false;
                None
            }
            Some(t) => t,
            None => None,
        };
        match parse_socket_addr(&raw.listen) {
            Ok(addr) => {
                if let Some(first) = addrs.insert(addr, i) {
                    ck.error(
                        format!("{path}.listen"),
                        format!("duplicate listen address {addr} (also listeners[{first}])"),
                    );
                    ok = false;
                }
                out.push(ListenerConfig {
                    name: raw.name,
                    addr,
                    tls,
                    redirect_https,
                    keepalive_timeout,
                    h2c,
                    limits,
                    debug_trusted,
                });
            }
            Err(msg) => {
                ck.error(format!("{path}.listen"), msg);
                ok = false;
            }
        }
    }
    ok &= super::acme::check_acme_listeners(ck, &out);
    ok.then_some(out)
}

/// The limits of a listener (see `ListenerLimits`), each within a range that keeps it useful.
fn check_limits(ck: &mut Checker, path: &str, raw: &RawListener) -> ListenerLimits {
    let d = ListenerLimits::DEFAULT;
    let mut timeout = |key: &str, text: Option<&str>, default: Duration| {
        let kpath = format!("{path}.{key}");
        let t = parse_duration(ck, &kpath, text, default);
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&t) {
            ck.error(kpath, "must be between 1s and 1h");
        }
        t
    };
    let header_timeout = timeout(
        "header_timeout",
        raw.header_timeout.as_deref(),
        d.header_timeout,
    );
    let body_timeout = timeout("body_timeout", raw.body_timeout.as_deref(), d.body_timeout);
    // Each count within its range (`shape::whole`); out of range: reported, the default kept.
    let mut count = |key: &str, value: Option<u64>| {
        let v = value?;
        ck.in_range(&format!("{path}.{key}"), i128::from(v))
            .then_some(v as usize)
    };
    ListenerLimits {
        header_timeout,
        body_timeout,
        max_header_bytes: count("max_header_bytes", raw.max_header_bytes)
            .unwrap_or(d.max_header_bytes),
        max_headers: count("max_headers", raw.max_headers).unwrap_or(d.max_headers),
        max_connections: count("max_connections", raw.max_connections),
        max_connections_per_ip: count("max_connections_per_ip", raw.max_connections_per_ip),
    }
}

/// `debug_header` and `debug_trusted`: the CIDRs whose clients get `X-Fulcrum-Debug`
/// (default loopback only); None when the header is off.
fn check_debug(
    ck: &mut Checker,
    path: &str,
    on: Option<bool>,
    trusted: Option<Vec<String>>,
) -> Option<Vec<Cidr>> {
    if on != Some(true) {
        if trusted.is_some() {
            ck.error(
                format!("{path}.debug_trusted"),
                "applies with `debug_header: true`",
            );
        }
        return None;
    }
    let Some(items) = trusted else {
        return Some(vec![
            Cidr {
                addr: std::net::Ipv4Addr::LOCALHOST.into(),
                prefix: 8,
            },
            Cidr {
                addr: std::net::Ipv6Addr::LOCALHOST.into(),
                prefix: 128,
            },
        ]);
    };
    let mut out = Vec::new();
    for (i, text) in items.iter().enumerate() {
        match parse_cidr(text) {
            Some(c) => out.push(c),
            None => ck.error(
                format!("{path}.debug_trusted[{i}]"),
                format!("`{text}` is not an address block: expected e.g. 10.0.0.0/8, 192.0.2.7 or 2001:db8::/32"),
            ),
        }
    }
    Some(out)
}

/// `ADDR/PREFIX` or a single address.
fn parse_cidr(text: &str) -> Option<Cidr> {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (
            a.parse::<std::net::IpAddr>().ok()?,
            Some(p.parse::<u8>().ok()?),
        ),
        None => (text.parse().ok()?, None),
    };
    let width = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = prefix.unwrap_or(width);
    (prefix <= width).then_some(Cidr { addr, prefix })
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    const REST: &str = "routes: [{pool: p}]\npools: {p: {backends: [{address: 127.0.0.1:9}]}}\n";

    #[test]
    fn duplicate_names_and_addresses_are_located() {
        let p = problems(&format!(
            "listeners:\n  - {{name: a, listen: 127.0.0.1:8080}}\n  - {{name: a, listen: 127.0.0.1:8080}}\n  - {{name: b, listen: localhost:80}}\n{REST}"
        ));
        assert_eq!(
            p,
            [
                "3:6: listeners[1].name: duplicate listener name `a` (also listeners[0])",
                "3:15: listeners[1].listen: duplicate listen address 127.0.0.1:8080 (also listeners[0])",
                "4:15: listeners[2].listen: `localhost:80` is not an address: expected IP:PORT, e.g. 127.0.0.1:8080 or [::1]:8080",
            ]
        );
    }

    #[test]
    fn every_shape_error_of_a_listener_is_reported_with_its_other_problems() {
        let p = problems(&format!(
            "listeners:\n  - name: a\n    listen: nowhere\n    h2c: yes please\n    max_headers: -3\n    max_connections: 0\n    header_timeout: 2h\n{REST}"
        ));
        assert_eq!(
            p,
            [
                "3:5: listeners[0].listen: `nowhere` is not an address: expected IP:PORT, e.g. 127.0.0.1:8080 or [::1]:8080",
                "4:5: listeners[0].h2c: true or false, got `yes please`",
                "5:5: listeners[0].max_headers: a whole number from 1 to 256, got -3",
                "6:5: listeners[0].max_connections: a whole number from 1 to 10000000, got 0",
                "7:5: listeners[0].header_timeout: must be between 1s and 1h",
            ]
        );
    }

    #[test]
    fn tls_excludes_h2c_and_redirects() {
        let p = problems(&format!(
            "listeners:\n  - {{name: a, listen: 127.0.0.1:8443, h2c: true, redirect_https: true, tls: {{certificates: []}}}}\n{REST}"
        ));
        assert_eq!(
            p,
            [
                "2:39: listeners[0].h2c: h2c is HTTP/2 without TLS; a TLS listener offers h2 by ALPN (`tls.http2`)",
                "2:50: listeners[0].redirect_https: only a plain listener redirects to https; this one has `tls`",
                "2:78: listeners[0].tls.certificates: needs at least one {cert, key} pair (or `acme`)",
            ]
        );
    }
}
