//! Affinity cookies: sealing and opening them. Pure functions, no I/O: a cookie value names a
//! stable backend id and an expiry, signed with HMAC-SHA256 by the first configured key and
//! verified against all of them (so keys rotate without breaking live sessions).
//!
//! Format: `1.<backend id, 16 hex>.<expiry, unix seconds>.<signature, base64url>`; without a
//! key the signature part is absent (an unsigned id, as HAProxy and nginx set).

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

const VERSION: &str = "1";

/// The stable id of a backend: derived from the pool's and the backend's names (the name
/// defaults to the address), never the raw address, and the same on every instance.
pub fn backend_id(pool: &str, backend: &str) -> u64 {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"fulcrum-affinity-v1\0");
    ctx.update(pool.as_bytes());
    ctx.update(b"\0");
    ctx.update(backend.as_bytes());
    let d = ctx.finish();
    let mut id = [0u8; 8];
    id.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(id)
}

/// What is signed: the pool name is included, so a cookie of one pool means nothing in another.
fn signed_text(pool: &str, body: &str) -> Vec<u8> {
    let mut text = Vec::with_capacity(pool.len() + body.len() + 1);
    text.extend_from_slice(pool.as_bytes());
    text.push(b'|');
    text.extend_from_slice(body.as_bytes());
    text
}

/// The cookie value pinning `pool`'s backend `id` until `expires` (unix seconds).
pub fn seal(keys: &Keys, pool: &str, id: u64, expires: u64) -> String {
    let body = format!("{VERSION}.{id:016x}.{expires}");
    match keys.keys.first() {
        None => body,
        Some(key) => {
            let tag = hmac::sign(key, &signed_text(pool, &body));
            format!("{body}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
        }
    }
}

/// The backend id a cookie value pins, if it was sealed for `pool` by one of `keys` and has
/// not expired at `now` (unix seconds). Never panics, whatever the bytes.
pub fn open(keys: &Keys, pool: &str, value: &[u8], now: u64) -> Result<u64, Rejected> {
    let value = std::str::from_utf8(value).map_err(|_| Rejected::Malformed)?;
    let mut parts = value.split('.');
    let (Some(version), Some(id), Some(expires)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejected::Malformed);
    };
    let signature = parts.next();
    if version != VERSION || parts.next().is_some() || id.len() != 16 {
        return Err(Rejected::Malformed);
    }
    let id = u64::from_str_radix(id, 16).map_err(|_| Rejected::Malformed)?;
    if expires.is_empty() || expires.len() > 20 || !expires.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rejected::Malformed);
    }
    let expires: u64 = expires.parse().map_err(|_| Rejected::Malformed)?;
    if keys.is_signed() {
        let tag = signature
            .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
            .ok_or(Rejected::BadSignature)?;
        let body_len = value.len() - signature.map_or(0, |s| s.len() + 1);
        let text = signed_text(pool, &value[..body_len]);
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
    Ok(id)
}

/// Deterministic choice of a successor for a pinned id among `candidates` (backend ids):
/// rendezvous hashing, so that every instance of a fleet re-pins a cookie the same way and
/// only the cookies of a lost backend move. Returns the index of the winner.
pub fn rendezvous(pinned: u64, candidates: impl Iterator<Item = u64>) -> Option<usize> {
    candidates
        .enumerate()
        .max_by_key(|(_, id)| splitmix64(pinned ^ id))
        .map(|(i, _)| i)
}

/// A fixed, well-mixed 64-bit hash (stable across versions and machines).
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
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

    #[test]
    fn seal_then_open() {
        let k = keys(&["first-key-0123456789", "old-key-0123456789"]);
        let v = seal(&k, "web", 42, NOW + 60);
        assert_eq!(open(&k, "web", v.as_bytes(), NOW), Ok(42));
        assert_eq!(
            open(&k, "web", v.as_bytes(), NOW + 60),
            Err(Rejected::Expired)
        );
        assert_eq!(
            open(&k, "api", v.as_bytes(), NOW),
            Err(Rejected::BadSignature)
        );
    }

    #[test]
    fn rotation_keeps_old_cookies() {
        let old = keys(&["old-key-0123456789"]);
        let v = seal(&old, "web", 7, NOW + 60);
        let rotated = keys(&["new-key-0123456789", "old-key-0123456789"]);
        assert_eq!(open(&rotated, "web", v.as_bytes(), NOW), Ok(7));
        let fresh = seal(&rotated, "web", 7, NOW + 60);
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
        let v = seal(&k, "web", 42, NOW + 60);
        let other_id = v.replacen(&format!("{:016x}", 42), &format!("{:016x}", 43), 1);
        assert_eq!(
            open(&k, "web", other_id.as_bytes(), NOW),
            Err(Rejected::BadSignature)
        );
        let later = v.replacen(&(NOW + 60).to_string(), &(NOW + 6000).to_string(), 1);
        assert_eq!(
            open(&k, "web", later.as_bytes(), NOW),
            Err(Rejected::BadSignature)
        );
        let unsigned = seal(&Keys::default(), "web", 42, NOW + 60);
        assert_eq!(
            open(&k, "web", unsigned.as_bytes(), NOW),
            Err(Rejected::BadSignature)
        );
    }

    #[test]
    fn unsigned_cookies_carry_only_the_id() {
        let none = Keys::default();
        let v = seal(&none, "web", 0xabc, NOW + 60);
        assert_eq!(v, format!("1.0000000000000abc.{}", NOW + 60));
        assert_eq!(open(&none, "web", v.as_bytes(), NOW), Ok(0xabc));
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
            "1.zz00000000000001.5.x",
            "1.0000000000000001.-5.x",
            "1.0000000000000001.99999999999999999999999.x",
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
    fn rendezvous_moves_only_the_lost_backends_cookies() {
        let all: Vec<u64> = (0..5)
            .map(|i| backend_id("web", &format!("b{i}")))
            .collect();
        for pinned in 0..500u64 {
            let winner = rendezvous(pinned, all.iter().copied()).unwrap();
            // drop some other backend: the winner stays
            let lost = (winner + 1) % all.len();
            let rest: Vec<u64> = all
                .iter()
                .copied()
                .enumerate()
                .filter(|(i, _)| *i != lost)
                .map(|(_, id)| id)
                .collect();
            let again = rendezvous(pinned, rest.iter().copied()).unwrap();
            assert_eq!(rest[again], all[winner]);
        }
        assert_eq!(rendezvous(1, std::iter::empty()), None);
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
        }

        #[test]
        fn sealed_values_open(id in any::<u64>(), ttl in 1u64..1_000_000) {
            let k = keys(&["first-key-0123456789", "second-key-0123456789"]);
            let v = seal(&k, "web", id, NOW + ttl);
            prop_assert_eq!(open(&k, "web", v.as_bytes(), NOW), Ok(id));
        }
    }
}
