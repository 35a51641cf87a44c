//! Affinity cookies: sealing and opening them, and choosing a session's next backend. Pure
//! functions, no I/O: a cookie value names a stable backend id, a random session id and an
//! expiry, signed with HMAC-SHA256 by the first configured key and verified against all of them
//! (so keys rotate without breaking live sessions).
//!
//! Format: `2.<backend id, 16 hex>.<session id, 16 hex>.<expiry, unix seconds>.<signature,
//! base64url>`; without a key the signature part is absent (an unsigned id, as HAProxy and
//! nginx set). Version 1 cookies (`1.<backend id>.<expiry>[.<signature>]`, no session id) are
//! still accepted: their session id is derived from the value.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::{digest, hmac};

/// The keys of one pool: the first signs, all verify. Empty: cookies are unsigned.
#[derive(Clone, Default)]
pub struct Keys {
    keys: Vec<hmac::Key>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} keys)", self.keys.len())
    }
}

impl Keys {
    pub fn new(secrets: &[Vec<u8>]) -> Keys {
        Keys {
            keys: secrets
                .iter()
                .map(|s| hmac::Key::new(hmac::HMAC_SHA256, s))
                .collect(),
        }
    }

    pub fn is_signed(&self) -> bool {
        !self.keys.is_empty()
    }
}

/// Why a cookie was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Not in the format fulcrum writes.
    Malformed,
    /// No configured key signed it (tampered, foreign, or signed by a removed key).
    BadSignature,
    Expired,
}

const VERSION: &str = "2";
const LEGACY_VERSION: &str = "1";

/// The stable id of a backend: derived from the pool's and the backend's names (the name
/// defaults to the address), never the raw address, and the same on every instance.
pub fn backend_id(pool: &str, backend: &str) -> u64 {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"fulcrum-affinity-v1\0");
    ctx.update(pool.as_bytes());
    ctx.update(b"\0");
    ctx.update(backend.as_bytes());
    let d = ctx.finish();
    // SHA-256 gives 32 bytes; the id is the first 8.
    let (id, _) = d
        .as_ref()
        .split_first_chunk::<8>()
        .unwrap_or((&[0; 8], &[]));
    u64::from_be_bytes(*id)
}

/// What is signed: the pool name is included, so a cookie of one pool means nothing in another.
fn signed_text(pool: &str, body: &str) -> Vec<u8> {
    let mut text = Vec::with_capacity(pool.len() + body.len() + 1);
    text.extend_from_slice(pool.as_bytes());
    text.push(b'|');
    text.extend_from_slice(body.as_bytes());
    text
}

/// What a valid cookie says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// The pinned backend's stable id.
    pub backend: u64,
    /// The session's id: what its re-pins hash on.
    pub session: u64,
    /// Unix seconds.
    pub expires: u64,
}

/// The cookie value pinning `pool`'s backend `id` for `session` until `expires` (unix seconds).
pub fn seal(keys: &Keys, pool: &str, id: u64, session: u64, expires: u64) -> String {
    let body = format!("{VERSION}.{id:016x}.{session:016x}.{expires}");
    match keys.keys.first() {
        None => body,
        Some(key) => {
            let tag = hmac::sign(key, &signed_text(pool, &body));
            format!("{body}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
        }
    }
}

/// A fresh session id.
pub fn new_session() -> u64 {
    fastrand::u64(..)
}

fn hex_id(text: &str) -> Result<u64, Rejected> {
    if text.len() != 16 {
        return Err(Rejected::Malformed);
    }
    u64::from_str_radix(text, 16).map_err(|_| Rejected::Malformed)
}

/// What a cookie value says, if it was sealed for `pool` by one of `keys` and has not expired
/// at `now` (unix seconds). Never panics, whatever the bytes.
pub fn open(keys: &Keys, pool: &str, value: &[u8], now: u64) -> Result<Opened, Rejected> {
    let value = std::str::from_utf8(value).map_err(|_| Rejected::Malformed)?;
    let mut parts = value.split('.');
    let (backend, session, expires) = match parts.next() {
        Some(VERSION) => {
            let (Some(id), Some(session), Some(expires)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(Rejected::Malformed);
            };
            (hex_id(id)?, Some(hex_id(session)?), expires)
        }
        Some(LEGACY_VERSION) => {
            let (Some(id), Some(expires)) = (parts.next(), parts.next()) else {
                return Err(Rejected::Malformed);
            };
            (hex_id(id)?, None, expires)
        }
        _ => return Err(Rejected::Malformed),
    };
    let signature = parts.next();
    if parts.next().is_some() {
        return Err(Rejected::Malformed);
    }
    if expires.is_empty() || expires.len() > 20 || !expires.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rejected::Malformed);
    }
    let expires: u64 = expires.parse().map_err(|_| Rejected::Malformed)?;
    let body = match signature {
        Some(sig) => value
            .get(..value.len() - sig.len() - 1)
            .ok_or(Rejected::Malformed)?,
        None => value,
    };
    if keys.is_signed() {
        let tag = signature
            .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
            .ok_or(Rejected::BadSignature)?;
        let text = signed_text(pool, body);
        if !keys
            .keys
            .iter()
            .any(|k| hmac::verify(k, &text, &tag).is_ok())
        {
            return Err(Rejected::BadSignature);
        }
    } else if signature.is_some() {
        // Signed by an instance that has keys while this one has none: not ours to trust.
        return Err(Rejected::BadSignature);
    }
    if expires <= now {
        return Err(Rejected::Expired);
    }
    let session = session.unwrap_or_else(|| legacy_session(body));
    Ok(Opened {
        backend,
        session,
        expires,
    })
}

/// A version 1 cookie's session id: derived from its body, the same on every instance.
fn legacy_session(body: &str) -> u64 {
    let d = digest::digest(&digest::SHA256, body.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(d.as_ref().get(..8).unwrap_or(&[0; 8]));
    u64::from_be_bytes(id)
}

/// The backend a session moves to when its own may not serve it: weighted rendezvous hashing
/// of (session, backend id) over `candidates` (backend id, weight). Every instance of a fleet
/// picks the same one; a lost backend's sessions spread over all the others in proportion to
/// their weights; and only the sessions of a lost backend move. Returns the winner's position.
pub fn rendezvous(session: u64, candidates: impl Iterator<Item = (u64, u32)>) -> Option<usize> {
    candidates
        .enumerate()
        .map(|(i, (id, weight))| {
            // Schindelhauer and Schomaker's weighted form: -w / ln(u), largest wins.
            let u = crate::pool::mix::unit_fraction(session ^ crate::pool::mix::mix64(id));
            (i, -f64::from(weight.max(1)) / u.ln())
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys(list: &[&str]) -> Keys {
        Keys::new(
            &list
                .iter()
                .map(|k| k.as_bytes().to_vec())
                .collect::<Vec<_>>(),
        )
    }

    const NOW: u64 = 1_800_000_000;

    fn opened(backend: u64, session: u64, expires: u64) -> Result<Opened, Rejected> {
        Ok(Opened {
            backend,
            session,
            expires,
        })
    }

    #[test]
    fn seal_then_open() {
        let k = keys(&["first-key-0123456789", "old-key-0123456789"]);
        let v = seal(&k, "web", 42, 9, NOW + 60);
        assert_eq!(open(&k, "web", v.as_bytes(), NOW), opened(42, 9, NOW + 60));
        assert_eq!(
            open(&k, "web", v.as_bytes(), NOW + 60),
            Err(Rejected::Expired)
        );
        assert_eq!(
            open(&k, "api", v.as_bytes(), NOW),
            Err(Rejected::BadSignature)
        );
    }

    /// A version 1 cookie as fulcrum 0.1 sealed it.
    fn legacy_seal(keys: &Keys, pool: &str, id: u64, expires: u64) -> String {
        let body = format!("1.{id:016x}.{expires}");
        match keys.keys.first() {
            None => body,
            Some(key) => {
                let tag = hmac::sign(key, &signed_text(pool, &body));
                format!("{body}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
            }
        }
    }

    #[test]
    fn version_1_cookies_stay_valid_with_a_derived_session() {
        let k = keys(&["first-key-0123456789"]);
        let v = legacy_seal(&k, "web", 42, NOW + 60);
        let o = open(&k, "web", v.as_bytes(), NOW).unwrap();
        assert_eq!((o.backend, o.expires), (42, NOW + 60));
        assert_eq!(o, open(&k, "web", v.as_bytes(), NOW).unwrap(), "stable");
        let other = legacy_seal(&k, "web", 42, NOW + 61);
        assert_ne!(
            o.session,
            open(&k, "web", other.as_bytes(), NOW).unwrap().session
        );
        let forged = v.replacen(&(NOW + 60).to_string(), &(NOW + 600).to_string(), 1);
        assert_eq!(
            open(&k, "web", forged.as_bytes(), NOW),
            Err(Rejected::BadSignature)
        );
    }

    #[test]
    fn rotation_keeps_old_cookies() {
        let old = keys(&["old-key-0123456789"]);
        let v = seal(&old, "web", 7, 1, NOW + 60);
        let rotated = keys(&["new-key-0123456789", "old-key-0123456789"]);
        assert_eq!(
            open(&rotated, "web", v.as_bytes(), NOW),
            opened(7, 1, NOW + 60)
        );
        let fresh = seal(&rotated, "web", 7, 1, NOW + 60);
        assert_eq!(
            open(&old, "web", fresh.as_bytes(), NOW),
            Err(Rejected::BadSignature)
        );
        let gone = keys(&["new-key-0123456789"]);
        assert_eq!(
            open(&gone, "web", v.as_bytes(), NOW),
            Err(Rejected::BadSignature)
        );
    }

    #[test]
    fn tampering_is_detected() {
        let k = keys(&["first-key-0123456789"]);
        let v = seal(&k, "web", 42, 5, NOW + 60);
        let other_id = v.replacen(&format!("{:016x}", 42), &format!("{:016x}", 43), 1);
        assert_eq!(
            open(&k, "web", other_id.as_bytes(), NOW),
            Err(Rejected::BadSignature)
        );
        let other_session = v.replacen(&format!("{:016x}", 5), &format!("{:016x}", 6), 1);
        assert_eq!(
            open(&k, "web", other_session.as_bytes(), NOW),
            Err(Rejected::BadSignature)
        );
        let later = v.replacen(&(NOW + 60).to_string(), &(NOW + 6000).to_string(), 1);
        assert_eq!(
            open(&k, "web", later.as_bytes(), NOW),
            Err(Rejected::BadSignature)
        );
        let unsigned = seal(&Keys::default(), "web", 42, 5, NOW + 60);
        assert_eq!(
            open(&k, "web", unsigned.as_bytes(), NOW),
            Err(Rejected::BadSignature)
        );
    }

    #[test]
    fn unsigned_cookies_carry_only_the_ids() {
        let none = Keys::default();
        let v = seal(&none, "web", 0xabc, 0xd, NOW + 60);
        assert_eq!(
            v,
            format!("2.0000000000000abc.000000000000000d.{}", NOW + 60)
        );
        assert_eq!(
            open(&none, "web", v.as_bytes(), NOW),
            opened(0xabc, 0xd, NOW + 60)
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let k = keys(&["first-key-0123456789"]);
        for g in [
            "",
            ".",
            "1",
            "1..",
            "2.0000000000000001.5.x",
            "3.0000000000000001.5.x",
            "1.zz00000000000001.5.x",
            "1.0000000000000001.-5.x",
            "1.0000000000000001.99999999999999999999999.x",
            "2.0000000000000001.000000000000000z.5.x",
            "2.0000000000000001.0000000000000001.5.x.y",
        ] {
            assert_eq!(
                open(&k, "web", g.as_bytes(), NOW),
                Err(Rejected::Malformed),
                "{g}"
            );
        }
    }

    #[test]
    fn backend_ids_are_stable_and_distinct() {
        assert_eq!(backend_id("web", "app1"), backend_id("web", "app1"));
        assert_ne!(backend_id("web", "app1"), backend_id("web", "app2"));
        assert_ne!(backend_id("web", "app1"), backend_id("api", "app1"));
        // Pinned: a change here would break every live session of a fleet on upgrade.
        assert_eq!(backend_id("web", "app1"), 0xde4f_77d8_2e03_be60);
    }

    #[test]
    fn rendezvous_moves_only_the_lost_backends_sessions() {
        let all: Vec<(u64, u32)> = (0..5)
            .map(|i| (backend_id("web", &format!("b{i}")), 1))
            .collect();
        for session in 0..500u64 {
            let winner = rendezvous(session, all.iter().copied()).unwrap();
            // drop some other backend: the winner stays
            let lost = (winner + 1) % all.len();
            let rest: Vec<(u64, u32)> = all
                .iter()
                .copied()
                .enumerate()
                .filter(|(i, _)| *i != lost)
                .map(|(_, b)| b)
                .collect();
            let again = rendezvous(session, rest.iter().copied()).unwrap();
            assert_eq!(rest[again], all[winner]);
        }
        assert_eq!(rendezvous(1, std::iter::empty()), None);
    }

    #[test]
    fn rendezvous_spreads_by_weight() {
        let backends: Vec<(u64, u32)> = (1..=4)
            .map(|w| (backend_id("web", &format!("b{w}")), w))
            .collect();
        let mut wins = [0usize; 4];
        for session in 0..20_000u64 {
            wins[rendezvous(mix64_session(session), backends.iter().copied()).unwrap()] += 1;
        }
        for (i, w) in wins.iter().enumerate() {
            let ideal = 20_000.0 * (i + 1) as f64 / 10.0;
            assert!((*w as f64 / ideal - 1.0).abs() < 0.05, "{wins:?}");
        }
    }

    fn mix64_session(i: u64) -> u64 {
        crate::pool::mix::mix64(i ^ 0x5555)
    }

    proptest! {
        #[test]
        fn no_byte_string_panics_or_is_accepted_unsealed(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let k = keys(&["first-key-0123456789"]);
            prop_assert!(open(&k, "web", &bytes, 0).is_err());
        }

        #[test]
        fn almost_valid_strings_are_rejected(id in any::<u64>(), exp in any::<u64>(), sig in "[A-Za-z0-9_-]{0,50}") {
            let k = keys(&["first-key-0123456789"]);
            let forged = format!("1.{id:016x}.{exp}.{sig}");
            prop_assert!(open(&k, "web", forged.as_bytes(), 0).is_err());
            let forged = format!("2.{id:016x}.{id:016x}.{exp}.{sig}");
            prop_assert!(open(&k, "web", forged.as_bytes(), 0).is_err());
        }

        #[test]
        fn sealed_values_open(id in any::<u64>(), session in any::<u64>(), ttl in 1u64..1_000_000) {
            let k = keys(&["first-key-0123456789", "second-key-0123456789"]);
            let v = seal(&k, "web", id, session, NOW + ttl);
            prop_assert_eq!(open(&k, "web", v.as_bytes(), NOW), opened(id, session, NOW + ttl));
        }
    }
}
