//! What the backend is told about a request's origin: X-Forwarded-For (appended),
//! X-Forwarded-Proto, X-Forwarded-Host, X-Request-Id (kept if the client sent one, else new),
//! and a Host for HTTP/1 requests that came without one.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::header::{GetAll, HeaderName, HeaderValue, HOST};
use pingora::http::RequestHeader;
use pingora::Result;

pub const X_REQUEST_ID: &str = "x-request-id";
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
pub const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
pub const X_FORWARDED_HOST: &str = "x-forwarded-host";

/// The names looked up on every request, prebuilt: a `&str` name is parsed on each lookup.
static X_REQUEST_ID_NAME: HeaderName = HeaderName::from_static(X_REQUEST_ID);
static X_FORWARDED_FOR_NAME: HeaderName = HeaderName::from_static(X_FORWARDED_FOR);

/// The longest client-sent X-Request-Id that is kept.
const MAX_REQUEST_ID: usize = 200;

/// The request's id: the client's X-Request-Id when it sent a usable one, else a new one.
pub fn request_id(req: &RequestHeader) -> HeaderValue {
    req.headers
        .get(&X_REQUEST_ID_NAME)
        .filter(|v| !v.is_empty() && v.len() <= MAX_REQUEST_ID)
        .cloned()
        .unwrap_or_else(new_request_id)
}

/// A fresh request id: 128 random bits in hex. Written by hand into one buffer: `format!` and
/// then a copy into the value was ~1,400 instructions of every request.
fn new_request_id() -> HeaderValue {
    let bits = fastrand::u128(..);
    let id: Vec<u8> = (0..32)
        .rev()
        .map(|nibble| match ((bits >> (nibble * 4)) & 0xf) as u8 {
            digit @ 0..=9 => b'0' + digit,
            letter => b'a' + letter - 10,
        })
        .collect();
    HeaderValue::from_maybe_shared(Bytes::from(id))
        .unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// The request's host: the Host header, or the authority of an absolute URI / HTTP/2 request.
pub fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// The host the client asked for, as sent (for X-Forwarded-Host).
fn client_host(req: &RequestHeader) -> Option<HeaderValue> {
    req.headers.get(HOST).cloned().or_else(|| {
        req.uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    })
}

/// Where a request came from, as the backend is told.
pub struct Origin<'a> {
    /// The client's request, as it arrived.
    pub request: &'a RequestHeader,
    pub client_ip: Option<IpAddr>,
    /// Whether it came over TLS.
    pub tls: bool,
    pub request_id: &'a HeaderValue,
    /// Whether it came over HTTP/2 (which always carries an authority).
    pub http2: bool,
    /// The backend the request goes to.
    pub backend: Option<SocketAddr>,
}

/// Set the forwarding headers of `upstream` (the request as it goes to the backend).
pub fn apply(upstream: &mut RequestHeader, origin: &Origin) -> Result<()> {
    if let Some(ip) = origin.client_ip {
        let xff = forwarded_for(upstream.headers.get_all(&X_FORWARDED_FOR_NAME), ip);
        upstream.insert_header(X_FORWARDED_FOR, xff)?;
    }
    let proto = HeaderValue::from_static(if origin.tls { "https" } else { "http" });
    upstream.insert_header(X_FORWARDED_PROTO, proto)?;
    if let Some(host) = client_host(origin.request) {
        upstream.insert_header(X_FORWARDED_HOST, host)?;
    }
    upstream.insert_header(X_REQUEST_ID, origin.request_id.clone())?;
    if !upstream.headers.contains_key(HOST) && !origin.http2 {
        // An HTTP/1.0 client may omit Host; fulcrum speaks HTTP/1.1 upstream, which needs
        // one: the backend's address (as nginx's default `$proxy_host`).
        if let Some(addr) = origin.backend {
            upstream.insert_header(HOST, addr.to_string())?;
        }
    }
    Ok(())
}

/// X-Forwarded-For: the values the client sent, then its address. The common case (no header
/// yet, IPv4) is formatted by hand: `Ipv4Addr`'s Display was a measurable share of a request.
/// The buffer is allocated at its exact final length, so that the value takes it over without
/// a second allocation (`Bytes` from a `Vec` with spare capacity allocates a shared header).
fn forwarded_for(existing: GetAll<'_, HeaderValue>, ip: IpAddr) -> HeaderValue {
    // empty (no allocation) for IPv4
    let v6_text = match ip {
        IpAddr::V4(_) => String::new(),
        IpAddr::V6(v6) => v6.to_string(),
    };
    let address_len = match ip {
        IpAddr::V4(v4) => v4.octets().iter().map(|&o| decimal_len(o)).sum::<usize>() + 3,
        IpAddr::V6(_) => v6_text.len(),
    };
    let sent_len: usize = existing.iter().map(|v| v.len() + 2).sum();
    let mut out: Vec<u8> = Vec::with_capacity(sent_len + address_len);
    for v in existing.iter() {
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b", ");
    }
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(_) => out.extend_from_slice(v6_text.as_bytes()),
    }
    HeaderValue::from_maybe_shared(Bytes::from(out))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// How many decimal digits `n` has.
fn decimal_len(n: u8) -> usize {
    match n {
        0..=9 => 1,
        10..=99 => 2,
        _ => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_appends_the_client() {
        let none = http::HeaderMap::new();
        let mut sent = http::HeaderMap::new();
        sent.append(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        sent.append(X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.1"));
        let xff = |map: &http::HeaderMap, ip: &str| {
            forwarded_for(map.get_all(X_FORWARDED_FOR), ip.parse().unwrap())
        };
        assert_eq!(xff(&none, "10.0.255.7"), "10.0.255.7");
        assert_eq!(
            xff(&sent, "0.1.100.99"),
            "203.0.113.9, 198.51.100.1, 0.1.100.99"
        );
        assert_eq!(xff(&none, "::1"), "::1");
        assert_eq!(
            xff(&sent, "2001:db8::7"),
            "203.0.113.9, 198.51.100.1, 2001:db8::7"
        );
        for ip in ["0.0.0.0", "9.10.99.100", "255.255.255.255", "1.22.103.4"] {
            assert_eq!(xff(&none, ip), ip);
        }
    }

    #[test]
    fn request_ids_are_unique_hex() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        let hex = |v: &HeaderValue| {
            v.as_bytes()
                .iter()
                .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        };
        assert!(hex(&a) && hex(&b), "{a:?} {b:?}");
        // every nibble takes every value: 64 ids have 2,048 nibbles
        let mut seen = std::collections::HashSet::new();
        for _ in 0..64 {
            seen.extend(new_request_id().as_bytes().to_vec());
        }
        assert_eq!(seen.len(), 16, "{seen:?}");
    }

    #[test]
    fn a_usable_client_request_id_is_kept() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        assert_eq!(request_id(&req).len(), 32, "none sent: a new one");
        req.insert_header(X_REQUEST_ID, "abc").unwrap();
        assert_eq!(request_id(&req), "abc");
        req.insert_header(X_REQUEST_ID, "x".repeat(MAX_REQUEST_ID + 1))
            .unwrap();
        assert_eq!(request_id(&req).len(), 32, "too long: replaced");
    }

    #[test]
    fn the_backend_learns_the_origin() {
        let mut req = RequestHeader::build("GET", b"/a", None).unwrap();
        req.insert_header(HOST, "example.com").unwrap();
        let mut upstream = req.clone();
        upstream
            .insert_header(X_FORWARDED_FOR, "203.0.113.9")
            .unwrap();
        let id = HeaderValue::from_static("id-1");
        let origin = Origin {
            request: &req,
            client_ip: Some("10.0.0.1".parse().unwrap()),
            tls: true,
            request_id: &id,
            http2: false,
            backend: Some("127.0.0.1:9000".parse().unwrap()),
        };
        apply(&mut upstream, &origin).unwrap();
        let h = &upstream.headers;
        assert_eq!(h[X_FORWARDED_FOR], "203.0.113.9, 10.0.0.1");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h[X_FORWARDED_HOST], "example.com");
        assert_eq!(h[X_REQUEST_ID], "id-1");
        assert_eq!(h[HOST], "example.com", "Host is passed through");

        // HTTP/1.0 without Host: the backend's address; X-Forwarded-Host stays unset.
        let bare = RequestHeader::build("GET", b"/a", None).unwrap();
        let mut upstream = bare.clone();
        let origin = Origin {
            request: &bare,
            tls: false,
            client_ip: None,
            ..origin
        };
        apply(&mut upstream, &origin).unwrap();
        let h = &upstream.headers;
        assert_eq!(h[HOST], "127.0.0.1:9000");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert!(!h.contains_key(X_FORWARDED_HOST));
        assert!(!h.contains_key(X_FORWARDED_FOR));
    }

    /// X-Forwarded-For from whatever the client sent before.
    mod forwarded_for_props {
        use super::*;
        use proptest::prelude::*;

        /// Header values as a client may send them: visible ASCII, tabs, obs-text, commas.
        fn prior() -> impl Strategy<Value = HeaderValue> {
            proptest::collection::vec(
                prop_oneof![
                    3 => prop::sample::select(b"0123456789.:abcdef, \t[]".to_vec()),
                    1 => any::<u8>(),
                ],
                0..40,
            )
            .prop_filter_map("not a header value", |b| HeaderValue::from_bytes(&b).ok())
        }

        proptest! {
            /// Never a panic; always the prior values in order, then the client's address, which
            /// it ends with (never the `unknown` fallback).
            #[test]
            fn forwarded_for_keeps_priors_and_ends_with_the_client(
                priors in proptest::collection::vec(prior(), 0..5),
                ip in any::<IpAddr>(),
            ) {
                let mut sent = http::HeaderMap::new();
                for p in &priors {
                    sent.append(X_FORWARDED_FOR, p.clone());
                }
                let got = forwarded_for(sent.get_all(X_FORWARDED_FOR), ip);
                let client = ip.to_string();
                prop_assert!(got.as_bytes().ends_with(client.as_bytes()), "{:?}", got);
                let mut want = Vec::new();
                for p in &priors {
                    want.extend_from_slice(p.as_bytes());
                    want.extend_from_slice(b", ");
                }
                want.extend_from_slice(client.as_bytes());
                prop_assert_eq!(got.as_bytes(), &want[..]);
            }

            /// Whatever the client's Host (or its absence), protocol, TLS and prior forwarding
            /// headers: never a panic; X-Forwarded-Host is the client's Host byte for byte (or
            /// the authority); X-Forwarded-Proto matches TLS; exactly one X-Request-Id; an
            /// HTTP/1 request without Host gets the backend's address, an HTTP/2 one none.
            #[test]
            fn apply_sets_every_header_from_the_origin(
                host in proptest::option::of("[a-z0-9.-]{1,30}(:[0-9]{1,5})?"),
                authority in proptest::option::of("[a-z0-9.-]{1,20}"),
                tls in any::<bool>(),
                http2 in any::<bool>(),
                ip in proptest::option::of(any::<IpAddr>()),
                priors in proptest::collection::vec(prior(), 0..3),
                client_proto in proptest::option::of(prior()),
            ) {
                let uri = match &authority {
                    Some(a) => format!("http://{a}/p?q=1"),
                    None => "/p?q=1".to_string(),
                };
                let mut req = RequestHeader::build("GET", b"/", None).unwrap();
                req.set_uri(uri.parse::<http::Uri>().unwrap());
                if let Some(h) = &host {
                    req.insert_header(HOST, h.as_str()).unwrap();
                }
                for p in &priors {
                    req.append_header(X_FORWARDED_FOR, p.clone()).unwrap();
                }
                if let Some(p) = &client_proto {
                    req.insert_header(X_FORWARDED_PROTO, p.clone()).unwrap();
                    req.insert_header(X_REQUEST_ID, p.clone()).unwrap();
                }
                let mut upstream = req.clone();
                let id = HeaderValue::from_static("0123456789abcdef");
                let backend: SocketAddr = "10.0.0.1:8080".parse().unwrap();
                let origin = Origin {
                    request: &req,
                    client_ip: ip,
                    tls,
                    request_id: &id,
                    http2,
                    backend: Some(backend),
                };
                apply(&mut upstream, &origin).unwrap();
                let want_host = host.clone().or_else(|| authority.clone());
                let xfh = upstream.headers.get(X_FORWARDED_HOST).map(|v| v.as_bytes().to_vec());
                prop_assert_eq!(xfh, want_host.map(String::into_bytes));
                let protos: Vec<_> = upstream.headers.get_all(X_FORWARDED_PROTO).iter().collect();
                prop_assert_eq!(protos, vec![if tls { "https" } else { "http" }]);
                let ids: Vec<_> = upstream.headers.get_all(X_REQUEST_ID).iter().collect();
                prop_assert_eq!(ids, vec![&id]);
                let xff = upstream.headers.get_all(&X_FORWARDED_FOR_NAME).iter().count();
                prop_assert_eq!(xff, if ip.is_some() { 1 } else { priors.len() });
                let upstream_host = upstream.headers.get(HOST).map(|v| v.as_bytes().to_vec());
                match (&host, http2) {
                    (Some(h), _) => prop_assert_eq!(upstream_host, Some(h.clone().into_bytes())),
                    (None, false) => {
                        prop_assert_eq!(upstream_host, Some(backend.to_string().into_bytes()))
                    }
                    (None, true) => prop_assert_eq!(upstream_host, None),
                }
            }
        }
    }
}
