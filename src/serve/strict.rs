//! What fulcrum refuses of a request before routing it, as nginx does (RFC 9110, 9112): a Host
//! that is not `host[:port]`, a missing or repeated Host on HTTP/1.1, a request target that is
//! neither origin-form nor absolute-form (nor `*` for OPTIONS), bytes in the target that cannot
//! be there, Content-Length that is repeated, not a number or sent beside Transfer-Encoding,
//! framing headers spelled with underscores, and a Transfer-Encoding other than `chunked`. And
//! how an absolute-form target is forwarded: as origin-form, with its authority as Host (RFC
//! 9112 3.2.2). Pure functions over the parsed header: no I/O, never a panic, whatever the
//! bytes.

use http::header::{HeaderValue, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{Method, Version};
use pingora::http::RequestHeader;

/// Why a request is refused, and with which status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
}

const fn bad(reason: &'static str) -> Refusal {
    Refusal {
        status: 400,
        reason,
    }
}

/// What a request that passed `check` carries for framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// It has a Transfer-Encoding (`chunked`).
    pub chunked: bool,
}

/// Check `req`; `h2` says it came over HTTP/2 (no request line, `:authority` instead of Host).
/// One pass over the header fields (no hashed look-ups: this runs on every request).
pub fn check(req: &RequestHeader, h2: bool) -> Result<Framing, Refusal> {
    let (mut host, mut hosts) = (None, 0);
    let (mut length, mut lengths) = (None, 0);
    let (mut coding, mut codings) = (None, 0);
    for (name, value) in req.headers.iter() {
        if name == HOST {
            host = Some(value);
            hosts += 1;
        } else if name == CONTENT_LENGTH {
            length = Some(value);
            lengths += 1;
        } else if name == TRANSFER_ENCODING {
            coding = Some(value);
            codings += 1;
        } else if framing_with_underscore(name.as_str()) {
            return Err(bad("framing header spelled with an underscore"));
        }
    }
    if hosts > 1 {
        return Err(bad("more than one Host header"));
    }
    match host {
        Some(h) if !valid_authority(h.as_bytes()) => return Err(bad("Host is not host[:port]")),
        None if !h2 && req.version == Version::HTTP_11 => {
            return Err(bad("HTTP/1.1 request without Host"))
        }
        _ => {}
    }
    if let Some(authority) = req.uri.authority() {
        if !valid_authority(authority.as_str().as_bytes()) {
            return Err(bad("the request's authority is not host[:port]"));
        }
    }
    if !h2 {
        check_target(req)?;
    }
    check_framing(req, (length, lengths), (coding, codings))?;
    Ok(Framing {
        chunked: coding.is_some(),
    })
}

fn framing_with_underscore(name: &str) -> bool {
    matches!(name.len(), 14 | 17)
        && (name.eq_ignore_ascii_case("content_length")
            || name.eq_ignore_ascii_case("transfer_encoding"))
}

/// An absolute-form target's authority and its origin-form rest (`/` when it has no path).
pub fn absolute_form(raw: &[u8]) -> Option<(&[u8], Vec<u8>)> {
    let rest = strip_prefix_ignore_case(raw, b"http://")
        .or_else(|| strip_prefix_ignore_case(raw, b"https://"))?;
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let authority = rest.get(..end)?;
    let mut origin = rest.get(end..).unwrap_or_default().to_vec();
    if origin.first() != Some(&b'/') {
        origin.insert(0, b'/');
    }
    Some((authority, origin))
}

/// Whether a raw HTTP/1 header that carries Transfer-Encoding also has a Content-Length line
/// (Pingora drops the Content-Length and reads by Transfer-Encoding; nginx refuses such a
/// request, and so does fulcrum: the two framings disagree).
pub fn content_length_beside_te(raw_header: &[u8]) -> bool {
    raw_header.split(|&b| b == b'\n').skip(1).any(|line| {
        line.get(..15)
            .is_some_and(|name| name.eq_ignore_ascii_case(b"content-length:"))
    })
}

/// RFC 9112 3.2: origin-form (`/path?query`), absolute-form (`http://host/path`), or `*` for
/// OPTIONS; authority-form is for CONNECT, which a reverse proxy does not serve.
fn check_target(req: &RequestHeader) -> Result<(), Refusal> {
    let raw = req.raw_path();
    if raw.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return Err(bad("space or control byte in the request target"));
    }
    if req.method == Method::CONNECT {
        return Err(Refusal {
            status: 405,
            reason: "CONNECT is not served",
        });
    }
    match raw.first() {
        Some(b'/') => return Ok(()),
        Some(b'*') if raw.len() == 1 && req.method == Method::OPTIONS => return Ok(()),
        _ => {}
    }
    let (authority, _) =
        absolute_form(raw).ok_or(bad("request target is not origin-form or absolute-form"))?;
    if !valid_authority(authority) {
        return Err(bad("absolute-form authority is not host[:port]"));
    }
    Ok(())
}

fn strip_prefix_ignore_case<'a>(bytes: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let head = bytes.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| bytes.get(prefix.len()..))
        .flatten()
}

/// RFC 9112 6: one Content-Length of digits only; Transfer-Encoding only `chunked` (nginx
/// answers 501 for other codings); no underscore spellings of either, which some servers
/// behind a proxy take for the real thing.
fn check_framing(
    req: &RequestHeader,
    (length, lengths): (Option<&HeaderValue>, usize),
    (coding, codings): (Option<&HeaderValue>, usize),
) -> Result<(), Refusal> {
    if lengths > 1 {
        return Err(bad("more than one Content-Length"));
    }
    if let Some(cl) = length {
        let v = cl.as_bytes();
        if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
            return Err(bad("Content-Length is not a number"));
        }
    }
    if codings > 1 {
        return Err(bad("more than one Transfer-Encoding"));
    }
    if let Some(te) = coding {
        if req.version == Version::HTTP_10 {
            return Err(bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if !te.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Err(Refusal {
                status: 501,
                reason: "Transfer-Encoding other than chunked",
            });
        }
    }
    Ok(())
}

/// The bytes a reg-name may hold (RFC 3986: unreserved, pct-encoded, sub-delims).
#[allow(
    clippy::indexing_slicing,
    reason = "evaluated at compile time: an index out of bounds fails the build"
)]
const REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    table
};

/// RFC 3986 authority without userinfo: `reg-name | IPv4 | [IPv6]`, then an optional `:port`
/// of at most five digits. A reg-name is unreserved, percent-encoded and sub-delim bytes.
pub fn valid_authority(a: &[u8]) -> bool {
    let (host, port) = match a.first() {
        Some(b'[') => match a.iter().position(|&b| b == b']') {
            Some(end) => {
                let inside = a.get(1..end).unwrap_or_default();
                let ipv6 = std::str::from_utf8(inside)
                    .ok()
                    .and_then(|s| s.parse::<std::net::Ipv6Addr>().ok());
                if ipv6.is_none() {
                    return false;
                }
                (&[][..], a.get(end + 1..).unwrap_or_default())
            }
            None => return false,
        },
        _ => match a.iter().rposition(|&b| b == b':') {
            Some(colon) => (
                a.get(..colon).unwrap_or_default(),
                a.get(colon..).unwrap_or_default(),
            ),
            None => (a, &[][..]),
        },
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    let reg_name_ok = host
        .iter()
        .all(|&b| REG_NAME.get(usize::from(b)).copied().unwrap_or(false));
    let bracketed = a.first() == Some(&b'[');
    // nginx refuses empty labels too: a leading dot or two in a row (one trailing dot, the
    // root, is fine).
    let labels_ok = host.first() != Some(&b'.') && !host.windows(2).any(|w| w == b"..");
    port_ok && reg_name_ok && labels_ok && (bracketed || !host.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(method: &str, target: &[u8], headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, target, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn status(r: &RequestHeader) -> u16 {
        check(r, false).map_or_else(|e| e.status, |_| 200)
    }

    #[test]
    fn hosts() {
        for ok in [
            "example.com",
            "example.com:8080",
            "10.0.0.1",
            "10.0.0.1:80",
            "[::1]",
            "[::1]:443",
            "a_b.example",
            "xn--bcher-kva.example",
            "example.com:",
        ] {
            assert!(valid_authority(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "t.example admin.internal",
            "",
            "user@example.com",
            "example.com:80:80",
            "example.com:8o",
            "example.com:123456",
            "[::1",
            "[zz]",
            "[::1]x",
            "exa\tmple",
            "example.com/",
            "ex\"ample",
            "example.com..",
            ".example.com",
            "a..b:80",
        ] {
            assert!(!valid_authority(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn host_presence() {
        assert_eq!(status(&req("GET", b"/", &[("host", "a")])), 200);
        assert_eq!(status(&req("GET", b"/", &[])), 400, "1.1 without Host");
        let mut old = req("GET", b"/", &[]);
        old.set_version(Version::HTTP_10);
        assert_eq!(status(&old), 200, "1.0 may omit Host");
        assert_eq!(
            status(&req("GET", b"http://a/", &[])),
            400,
            "1.1 absolute-form without Host"
        );
        assert_eq!(
            status(&req("GET", b"/", &[("host", "a"), ("host", "a")])),
            400
        );
        assert_eq!(status(&req("GET", b"/", &[("host", "a b")])), 400);
        assert_eq!(
            check(&req("GET", b"/", &[]), true),
            Ok(Framing { chunked: false }),
            "h2: :authority"
        );
    }

    #[test]
    fn targets() {
        let h = [("host", "a")];
        assert_eq!(status(&req("GET", b"/a?b", &h)), 200);
        assert_eq!(status(&req("GET", b"http://a/x", &h)), 200);
        assert_eq!(status(&req("GET", b"HTTP://A?x", &h)), 200);
        assert_eq!(
            status(&req("GET", b"http://b/x", &h)),
            200,
            "Host gives way to the authority"
        );
        assert_eq!(status(&req("GET", b"http://a b/x", &h)), 400);
        assert_eq!(status(&req("OPTIONS", b"*", &h)), 200);
        assert_eq!(status(&req("GET", b"*", &h)), 400);
        assert_eq!(status(&req("GET", b"admin.internal:80", &h)), 400);
        assert_eq!(status(&req("GET", b"ftp://a/x", &h)), 400);
        assert_eq!(status(&req("CONNECT", b"a:443", &h)), 405);
        assert_eq!(status(&req("GET", b" /c074", &h)), 400);
    }

    #[test]
    fn absolute_forms_become_origin_forms() {
        let (a, o) = absolute_form(b"http://t.example/abs?q=1").unwrap();
        assert_eq!((a, o.as_slice()), (&b"t.example"[..], &b"/abs?q=1"[..]));
        let (a, o) = absolute_form(b"HTTPS://t.example:8443?q").unwrap();
        assert_eq!((a, o.as_slice()), (&b"t.example:8443"[..], &b"/?q"[..]));
        assert_eq!(absolute_form(b"http://t.example").unwrap().1, b"/");
        assert!(absolute_form(b"/x").is_none());
        assert!(absolute_form(b"ftp://x/").is_none());
    }

    #[test]
    fn content_length_beside_transfer_encoding_is_seen_in_the_raw_header() {
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(content_length_beside_te(raw));
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\ncontent-LENGTH:5\r\n\r\n";
        assert!(content_length_beside_te(raw));
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nX-Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(!content_length_beside_te(raw));
    }

    #[test]
    fn framing() {
        let with = |extra: &[(&str, &str)]| {
            let mut h = vec![("host", "a")];
            h.extend_from_slice(extra);
            status(&req("POST", b"/", &h))
        };
        assert_eq!(with(&[("content-length", "5")]), 200);
        assert_eq!(
            with(&[("content-length", "5"), ("content-length", "5")]),
            400
        );
        for cl in ["+5", "-1", "0x5", "5 5", "5,5", ""] {
            assert_eq!(with(&[("content-length", cl)]), 400, "{cl:?}");
        }
        assert_eq!(with(&[("transfer-encoding", "chunked")]), 200);
        assert_eq!(with(&[("transfer-encoding", "Chunked")]), 200);
        assert_eq!(with(&[("transfer-encoding", "xchunked")]), 501);
        assert_eq!(with(&[("transfer-encoding", "chunked, identity")]), 501);
        assert_eq!(
            with(&[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked")
            ]),
            400
        );
        assert_eq!(with(&[("transfer_encoding", "chunked")]), 400);
        assert_eq!(with(&[("Content_Length", "5")]), 400);
        let mut old = req("POST", b"/", &[("transfer-encoding", "chunked")]);
        old.set_version(Version::HTTP_10);
        assert_eq!(status(&old), 400);
    }

    proptest! {
        #[test]
        fn any_authority_bytes_are_judged_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = valid_authority(&bytes);
        }

        #[test]
        fn reg_names_with_ports_are_valid(name in "[a-z0-9]{1,8}(\\.[a-z0-9-]{1,8}){0,4}\\.?", port in 0u32..65536) {
            let authority = format!("{name}:{port}");
            prop_assert!(valid_authority(authority.as_bytes()));
        }

        /// Whatever method, target and headers Pingora's `RequestHeader` lets through, `check`
        /// answers (400, 405 or 501 when it refuses) without a panic, HTTP/1.0, 1.1 or 2; and an
        /// absolute-form HTTP/1 target it accepts (only HTTP/1 targets are rewritten) always has
        /// a valid authority and yields an origin-form starting with `/`.
        #[test]
        fn check_judges_any_request_without_panic(
            method in prop_oneof![
                prop::sample::select(vec!["GET", "POST", "OPTIONS", "CONNECT", "HEAD", "PUT"]).prop_map(String::from),
                "[!-~]{1,10}",
            ],
            target in prop_oneof![
                untrusted(60),
                untrusted(60).prop_map(|t| [&b"http://"[..], &t].concat()),
                untrusted(60).prop_map(|t| [&b"/"[..], &t].concat()),
            ],
            headers in proptest::collection::vec((header_name(), untrusted(30)), 0..6),
            version in prop::sample::select(vec![Version::HTTP_10, Version::HTTP_11, Version::HTTP_2]),
            h2 in any::<bool>(),
        ) {
            let built = RequestHeader::build(method.as_str(), &target, None);
            prop_assume!(built.is_ok()); // what Pingora refuses never reaches fulcrum
            let mut r = built.unwrap();
            r.set_version(version);
            for (name, value) in &headers {
                if let Ok(v) = http::HeaderValue::from_bytes(value) {
                    let _ = r.append_header(name.clone(), v);
                }
            }
            match check(&r, h2) {
                Ok(_) if !h2 => {
                    if let Some((authority, origin)) = absolute_form(r.raw_path()) {
                        prop_assert!(valid_authority(authority));
                        prop_assert_eq!(origin.first(), Some(&b'/'));
                    }
                }
                Ok(_) => {}
                Err(refusal) => prop_assert!([400, 405, 501].contains(&refusal.status)),
            }
            let _ = content_length_beside_te(&target);
        }

        /// `valid_authority` agrees with a model written differently: an authority is valid
        /// when it splits somewhere into a host (a non-empty reg-name, or an IPv6 literal in
        /// brackets) and a port (nothing, or `:` and at most five digits).
        #[test]
        fn valid_authority_agrees_with_a_model(
            host in prop_oneof![
                "[a-zA-Z0-9._~%!$&'()*+,;=-]{0,12}",
                any::<std::net::Ipv6Addr>().prop_map(|a| format!("[{a}]")),
                any::<std::net::Ipv4Addr>().prop_map(|a| a.to_string()),
                "\\[[0-9a-fA-F:.]{0,12}\\]?",
                "[a-z0-9 @/\"\t:\\[\\]é\u{0}-]{0,8}",
            ],
            port in prop_oneof![
                Just(String::new()),
                "[0-9]{0,7}".prop_map(|p| format!(":{p}")),
                ":[0-9a-z: ]{0,6}",
            ],
        ) {
            let authority = format!("{host}{port}");
            let bytes = authority.as_bytes();
            prop_assert_eq!(valid_authority(bytes), model_authority(bytes), "{:?}", authority);
        }

        #[test]
        fn valid_authority_agrees_with_the_model_on_any_bytes(bytes in untrusted(24)) {
            prop_assert_eq!(valid_authority(&bytes), model_authority(&bytes));
        }
    }

    /// Bytes leaning on what authorities and targets are made of, any other byte mixed in.
    fn untrusted(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                3 => prop::sample::select(b"/:?#[]@%. aZ09*\t\r\n".to_vec()),
                1 => any::<u8>(),
            ],
            0..max,
        )
    }

    /// Header names, the framing ones and their look-alikes most of all.
    fn header_name() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "host",
                "Host",
                "content-length",
                "transfer-encoding",
                "content_length",
                "Transfer_Encoding",
                "x-forwarded-for",
            ])
            .prop_map(String::from),
            "[a-zA-Z0-9_-]{1,12}",
        ]
    }

    /// The model: try every split of `a` into host and port.
    fn model_authority(a: &[u8]) -> bool {
        let port_ok = |p: &[u8]| {
            p.is_empty() || (p[0] == b':' && p.len() <= 6 && p[1..].iter().all(u8::is_ascii_digit))
        };
        let host_ok = |h: &[u8]| {
            // Labels: none empty but the last (a leading dot or ".." is refused).
            let labels = h.split(|&b| b == b'.').collect::<Vec<_>>();
            let labels_ok = labels
                .iter()
                .take(labels.len().saturating_sub(1))
                .all(|l| !l.is_empty());
            let reg_name = !h.is_empty()
                && labels_ok
                && h.iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b));
            let ipv6 = h
                .strip_prefix(b"[")
                .and_then(|h| h.strip_suffix(b"]"))
                .and_then(|inner| std::str::from_utf8(inner).ok())
                .is_some_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok());
            reg_name || ipv6
        };
        (0..=a.len()).any(|i| host_ok(&a[..i]) && port_ok(&a[i..]))
    }
}
