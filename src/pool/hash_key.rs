//! Extracts a hashing pool's key from a request: client IP, path, URI, a header, a cookie or a
//! query parameter. A request without the key yields None (and is spread evenly).

use std::borrow::Cow;
use std::net::IpAddr;

use pingora::http::RequestHeader;

use crate::config::HashKey;

/// The bytes to hash for `key`, or None when the request does not carry it.
pub fn extract<'a>(
    key: &HashKey,
    req: &'a RequestHeader,
    client_ip: Option<IpAddr>,
) -> Option<Cow<'a, [u8]>> {
    match key {
        HashKey::ClientIp => client_ip.map(|ip| match ip {
            IpAddr::V4(v4) => Cow::Owned(v4.octets().to_vec()),
            IpAddr::V6(v6) => Cow::Owned(v6.octets().to_vec()),
        }),
        HashKey::Path => Some(Cow::Borrowed(req.uri.path().as_bytes())),
        HashKey::Uri => Some(Cow::Borrowed(
            req.uri
                .path_and_query()
                .map_or(req.uri.path(), |pq| pq.as_str())
                .as_bytes(),
        )),
        HashKey::Header(name) => req
            .headers
            .get(name.as_str())
            .map(|v| Cow::Borrowed(v.as_bytes()))
            .filter(|v| !v.is_empty()),
        HashKey::Cookie(name) => req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .find_map(|h| cookie_value(h.as_bytes(), name.as_bytes()))
            .map(Cow::Borrowed),
        HashKey::Query(name) => req
            .uri
            .query()
            .and_then(|q| query_value(q.as_bytes(), name.as_bytes()))
            .map(Cow::Borrowed),
    }
}

/// The value of cookie `name` in one Cookie header (`a=1; b=2`), if present and not empty.
pub fn cookie_value<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let (k, v) = split_pair(pair.trim_ascii())?;
        (k.trim_ascii() == name)
            .then(|| v.trim_ascii())
            .filter(|v| !v.is_empty())
    })
}

/// The raw (not percent-decoded) value of parameter `name` in a query string.
fn query_value<'a>(query: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    query.split(|&b| b == b'&').find_map(|pair| {
        let (k, v) = split_pair(pair).unwrap_or((pair, b""));
        (k == name && !v.is_empty()).then_some(v)
    })
}

/// `k=v` split at the first `=` (None without one).
fn split_pair(pair: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = pair.iter().position(|&b| b == b'=')?;
    let (k, rest) = pair.split_at_checked(eq)?;
    Some((k, rest.get(1..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn get(key: HashKey, r: &RequestHeader) -> Option<Vec<u8>> {
        extract(&key, r, Some("10.1.2.3".parse().unwrap())).map(|c| c.into_owned())
    }

    #[test]
    fn each_kind_of_key() {
        let r = req(
            "/a/b?x=1&user=42&y",
            &[("X-User-Id", "u7"), ("Cookie", "a=1; sid=abc ; c=")],
        );
        assert_eq!(get(HashKey::ClientIp, &r), Some(vec![10, 1, 2, 3]));
        assert_eq!(get(HashKey::Path, &r), Some(b"/a/b".to_vec()));
        assert_eq!(get(HashKey::Uri, &r), Some(b"/a/b?x=1&user=42&y".to_vec()));
        assert_eq!(
            get(HashKey::Header("x-user-id".into()), &r),
            Some(b"u7".to_vec())
        );
        assert_eq!(
            get(HashKey::Cookie("sid".into()), &r),
            Some(b"abc".to_vec())
        );
        assert_eq!(get(HashKey::Query("user".into()), &r), Some(b"42".to_vec()));
    }

    #[test]
    fn missing_or_empty_keys_are_none() {
        let r = req("/p?y&z=", &[("Cookie", "c=")]);
        assert_eq!(get(HashKey::Header("x-user-id".into()), &r), None);
        assert_eq!(get(HashKey::Cookie("c".into()), &r), None);
        assert_eq!(get(HashKey::Cookie("sid".into()), &r), None);
        assert_eq!(get(HashKey::Query("y".into()), &r), None);
        assert_eq!(get(HashKey::Query("z".into()), &r), None);
    }

    #[test]
    fn garbage_never_panics() {
        for h in [&b"=;=;;"[..], b"", b";", b"sid", b"sid=", b"=sid"] {
            let _ = cookie_value(h, b"sid");
            let _ = query_value(h, b"sid");
        }
    }

    use proptest::prelude::*;

    /// Bytes that lean on the separators the parsers split on, with any other byte mixed in.
    fn untrusted(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                3 => prop::sample::select(b"=;&? \t%sidx".to_vec()),
                1 => any::<u8>(),
            ],
            0..max,
        )
    }

    /// Every kind of key, the names drawn from `names` (which the request may or may not use).
    fn every_key(name: &str) -> Vec<HashKey> {
        vec![
            HashKey::ClientIp,
            HashKey::Path,
            HashKey::Uri,
            HashKey::Header(name.to_ascii_lowercase()),
            HashKey::Cookie(name.to_string()),
            HashKey::Query(name.to_string()),
        ]
    }

    proptest! {
        /// Whatever a client sends (target, header values, several Cookie headers) and whatever
        /// name the configuration asks for, extraction never panics, gives the same bytes every
        /// time (also from a second parse of the same request), and never an empty key.
        #[test]
        fn extraction_of_untrusted_bytes_is_total_and_deterministic(
            target in proptest::collection::vec(
                prop_oneof![
                    8 => prop::sample::select(b"=;&?%sidx/.-_~+".to_vec()),
                    1 => any::<u8>(),
                ],
                0..40,
            ),
            cookies in proptest::collection::vec(untrusted(80), 0..3),
            value in untrusted(40),
            name in prop::sample::select(vec!["sid", "x", "s", "", "x-user-id", "a b", "é"]),
            ip in any::<std::net::IpAddr>(),
        ) {
            let mut path = b"/".to_vec();
            path.extend_from_slice(&target);
            let build = || -> Option<RequestHeader> {
                let mut r = RequestHeader::build("GET", &path, None).ok()?;
                for c in &cookies {
                    if let Ok(v) = http::HeaderValue::from_bytes(c) {
                        r.append_header("Cookie", v).unwrap();
                    }
                }
                if let Ok(v) = http::HeaderValue::from_bytes(&value) {
                    r.append_header("X-User-Id", v.clone()).unwrap();
                    r.append_header("x", v).unwrap();
                }
                Some(r)
            };
            // a target Pingora's own parser refuses never reaches fulcrum
            let (a, b) = (build(), build());
            prop_assume!(a.is_some() && b.is_some());
            let (a, b) = (a.unwrap(), b.unwrap());
            for key in every_key(name) {
                let first = extract(&key, &a, Some(ip)).map(|c| c.into_owned());
                prop_assert_eq!(&first, &extract(&key, &a, Some(ip)).map(|c| c.into_owned()));
                prop_assert_eq!(&first, &extract(&key, &b, Some(ip)).map(|c| c.into_owned()));
                prop_assert!(first.as_ref().is_none_or(|k| !k.is_empty()), "{key:?} gave an empty key");
            }
        }

        /// The cookie and query parsers on raw bytes: never a panic; what they return is a
        /// non-empty, trimmed piece of the input that contains no separator.
        #[test]
        fn cookie_and_query_values_are_pieces_of_their_input(
            raw in untrusted(120),
            name in prop::sample::select(vec![&b"sid"[..], b"x", b"", b"s i", b"="]),
        ) {
            if let Some(v) = cookie_value(&raw, name) {
                prop_assert!(!v.is_empty() && !v.contains(&b';'));
                prop_assert_eq!(v, v.trim_ascii());
                prop_assert!(raw.windows(v.len()).any(|w| w == v));
            }
            if let Some(v) = query_value(&raw, name) {
                prop_assert!(!v.is_empty() && !v.contains(&b'&'));
                prop_assert!(raw.windows(v.len()).any(|w| w == v));
            }
        }

        /// A cookie set among others is found, whatever its neighbours and spacing.
        #[test]
        fn a_cookie_among_others_is_found(
            value in "[!#-+\\--:<-\\[\\]-~]{1,20}", // RFC 6265 cookie-octets
            before in proptest::collection::vec("[a-z]{1,5}=[a-z0-9]{0,5}", 0..4),
            after in proptest::collection::vec("[a-z]{1,5}=[a-z0-9]{0,5}", 0..4),
            space in " {0,2}",
        ) {
            let mut pairs: Vec<String> = before.into_iter().filter(|p| !p.starts_with("sid=")).collect();
            pairs.push(format!("sid{space}={space}{value}"));
            pairs.extend(after);
            let header = pairs.join(&format!(";{space}"));
            prop_assert_eq!(cookie_value(header.as_bytes(), b"sid"), Some(value.as_bytes()));
        }
    }
}
