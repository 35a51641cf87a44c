//! The pool's side of affinity: the backends' stable ids, reading the request's cookie into a
//! pin, the deterministic successor of a session whose backend may not serve it, and the
//! Set-Cookie header.

use std::collections::HashMap;
use std::sync::Arc;

use pingora::http::RequestHeader;

use crate::config::AffinityConfig;
use crate::pool::affinity::{self, Keys};
use crate::pool::hash_key::cookie_value;
use crate::pool::BackendState;

/// What affinity did for a request (kept for metrics and the access log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A valid cookie whose backend was ready: sent there.
    Hit,
    /// No cookie: balanced normally, cookie set.
    Miss,
    /// A valid cookie whose backend was not ready or is gone: the session's deterministic
    /// successor, new cookie.
    Repinned,
    /// A tampered, expired, unparsable or foreign cookie: balanced normally, new cookie.
    Invalid,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Hit => "hit",
            Decision::Miss => "miss",
            Decision::Repinned => "repinned",
            Decision::Invalid => "invalid",
        }
    }
}

/// What affinity makes of a request's first attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pinned {
    pub decision: Decision,
    /// The affinity session the request belongs to.
    pub session: u64,
    /// Whether the response must (re)set the cookie.
    pub set_cookie: bool,
    /// The backend (pool index) to send it to; None: balance normally.
    pub backend: Option<usize>,
}

/// Seconds since the Unix epoch (cookie expiry times).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the request's cookie says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// No affinity cookie.
    Absent,
    /// A cookie that is not valid for this pool now.
    Invalid,
    /// A valid cookie naming backend `index` for `session`, valid until `expires`.
    Backend {
        index: usize,
        session: u64,
        expires: u64,
    },
    /// A valid cookie of `session` whose backend is no longer in the pool.
    Unknown { session: u64 },
}

/// A pool's affinity settings, ready for the request path.
pub struct Sticky {
    pool: String,
    cookie: String,
    keys: Keys,
    max_age: u64,
    /// `; Max-Age=..; Path=..; [Domain=..;] SameSite=..; HttpOnly`, without Secure.
    attributes: String,
    secure: Option<bool>,
    /// Stable id and configured weight of each backend, by pool index.
    ids: Vec<(u64, u32)>,
    by_id: HashMap<u64, usize>,
}

impl Sticky {
    pub fn new(pool: &str, config: &AffinityConfig, backends: &[Arc<BackendState>]) -> Sticky {
        let ids: Vec<(u64, u32)> = backends
            .iter()
            .map(|b| (affinity::backend_id(pool, &b.name), b.weight()))
            .collect();
        let by_id = ids.iter().enumerate().map(|(i, id)| (id.0, i)).collect();
        let max_age = config.max_age.as_secs().max(1);
        let mut attributes = format!("; Max-Age={max_age}; Path={}", config.path);
        if let Some(d) = &config.domain {
            attributes.push_str(&format!("; Domain={d}"));
        }
        attributes.push_str(&format!("; SameSite={}; HttpOnly", config.same_site));
        Sticky {
            pool: pool.to_string(),
            cookie: config.cookie.clone(),
            keys: Keys::new(&config.keys.0),
            max_age,
            attributes,
            secure: config.secure,
            ids,
            by_id,
        }
    }

    /// Read the affinity cookie of `req` at `now` (unix seconds).
    pub fn read(&self, req: &RequestHeader, now: u64) -> Pin {
        let value = req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .find_map(|h| cookie_value(h.as_bytes(), self.cookie.as_bytes()));
        let Some(value) = value else {
            return Pin::Absent;
        };
        match affinity::open(&self.keys, &self.pool, value, now) {
            Err(_) => Pin::Invalid,
            Ok(opened) => match self.by_id.get(&opened.backend) {
                Some(&index) => Pin::Backend {
                    index,
                    session: opened.session,
                    expires: opened.expires,
                },
                None => Pin::Unknown {
                    session: opened.session,
                },
            },
        }
    }

    /// Apply affinity to a request's first attempt at `now` (unix seconds), with `ready` saying
    /// which backends (pool indices) may take it: the pinned backend if it is ready, else the
    /// session's deterministic successor among the ready backends, else none (balance
    /// normally). A request without a valid cookie starts a new session.
    /// `ready`: may take a new session; `keeps_pinned`: may still take the sessions pinned to it
    /// (a drained backend does, until its pool's drain_timeout).
    pub fn pin(
        &self,
        req: &RequestHeader,
        now: u64,
        ready: impl Fn(usize) -> bool,
        keeps_pinned: impl Fn(usize) -> bool,
    ) -> Pinned {
        let fresh = |decision| Pinned {
            decision,
            session: affinity::new_session(),
            set_cookie: true,
            backend: None,
        };
        match self.read(req, now) {
            Pin::Absent => fresh(Decision::Miss),
            Pin::Invalid => fresh(Decision::Invalid),
            Pin::Backend {
                index,
                session,
                expires,
            } if keeps_pinned(index) => Pinned {
                decision: Decision::Hit,
                session,
                set_cookie: self.needs_refresh(expires, now),
                backend: Some(index),
            },
            Pin::Backend { session, .. } | Pin::Unknown { session } => Pinned {
                decision: Decision::Repinned,
                session,
                set_cookie: true,
                backend: self.successor(session, (0..self.ids.len()).filter(|&i| ready(i))),
            },
        }
    }

    /// Whether a cookie valid until `expires` is worth renewing at `now` (half its life gone).
    pub fn needs_refresh(&self, expires: u64, now: u64) -> bool {
        expires.saturating_sub(now) < self.max_age / 2
    }

    /// The deterministic successor for `session` among `candidates` (pool indices): weighted
    /// rendezvous hashing, so that every instance picks the same backend and a lost backend's
    /// sessions spread over all candidates by weight. O(candidates), once per moved session.
    pub fn successor(
        &self,
        session: u64,
        candidates: impl Iterator<Item = usize>,
    ) -> Option<usize> {
        let candidates: Vec<(usize, (u64, u32))> = candidates
            .filter_map(|i| Some((i, *self.ids.get(i)?)))
            .collect();
        let winner = affinity::rendezvous(session, candidates.iter().map(|c| c.1))?;
        candidates.get(winner).map(|c| c.0)
    }

    /// The Set-Cookie value pinning backend `index` for `session` from `now`; `tls` says
    /// whether the client came over TLS (Secure by default there).
    pub fn set_cookie(&self, index: usize, session: u64, now: u64, tls: bool) -> Option<String> {
        let (id, _) = *self.ids.get(index)?;
        let value = affinity::seal(&self.keys, &self.pool, id, session, now + self.max_age);
        let secure = if self.secure.unwrap_or(tls) {
            "; Secure"
        } else {
            ""
        };
        Some(format!(
            "{}={value}{}{secure}",
            self.cookie, self.attributes
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secrets;
    use std::time::Duration;

    fn sticky(keys: &[&str]) -> Sticky {
        let backends: Vec<Arc<BackendState>> = (0..3)
            .map(|i| {
                Arc::new(BackendState::new(
                    format!("b{i}"),
                    format!("127.0.0.1:{}", 1000 + i).parse().unwrap(),
                    1,
                    false,
                    false,
                ))
            })
            .collect();
        let config = AffinityConfig {
            cookie: "sid".into(),
            max_age: Duration::from_secs(3600),
            domain: Some("example.com".into()),
            path: "/".into(),
            same_site: "Lax".into(),
            secure: None,
            keys: Secrets(keys.iter().map(|k| k.as_bytes().to_vec()).collect()),
        };
        Sticky::new("web", &config, &backends)
    }

    fn request(cookie: &str) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        r.append_header("cookie", cookie).unwrap();
        r
    }

    #[test]
    fn round_trip_through_set_cookie() {
        let s = sticky(&["0123456789abcdef0123"]);
        let header = s.set_cookie(2, 77, 1000, false).unwrap();
        assert!(
            header.ends_with("; Max-Age=3600; Path=/; Domain=example.com; SameSite=Lax; HttpOnly"),
            "{header}"
        );
        let value = header.split(';').next().unwrap();
        let pin = s.read(&request(&format!("a=1; {value}")), 1000);
        assert!(
            matches!(
                pin,
                Pin::Backend {
                    index: 2,
                    session: 77,
                    expires: 4600,
                }
            ),
            "{pin:?}"
        );
        assert!(!s.needs_refresh(4600, 1000));
        assert!(s.needs_refresh(4600, 3000));
        assert!(s.set_cookie(0, 1, 0, true).unwrap().ends_with("; Secure"));
    }

    #[test]
    fn pin_follows_a_ready_backend_and_repins_from_one_that_is_not() {
        let s = sticky(&["0123456789abcdef0123"]);
        let none = s.pin(&request("a=1"), 1000, |_| true, |_| true);
        assert_eq!(
            (none.decision, none.set_cookie, none.backend),
            (Decision::Miss, true, None)
        );
        let bad = s.pin(&request("sid=garbage"), 1000, |_| true, |_| true);
        assert_eq!(
            (bad.decision, bad.set_cookie, bad.backend),
            (Decision::Invalid, true, None)
        );
        assert_ne!(none.session, bad.session, "each gets a new session");

        let header = s.set_cookie(2, 77, 1000, false).unwrap();
        let cookie = request(header.split(';').next().unwrap());
        let hit = s.pin(&cookie, 1000, |_| true, |_| true);
        assert_eq!(
            hit,
            Pinned {
                decision: Decision::Hit,
                session: 77,
                set_cookie: false,
                backend: Some(2),
            }
        );
        assert!(
            s.pin(&cookie, 3000, |_| true, |_| true).set_cookie,
            "half its life gone"
        );

        let moved = s.pin(&cookie, 1000, |i| i != 2, |i| i != 2);
        assert_eq!((moved.decision, moved.session), (Decision::Repinned, 77));
        assert!(moved.set_cookie);
        assert_eq!(moved.backend, s.successor(77, [0, 1].into_iter()));
        assert!(moved.backend.is_some_and(|i| i != 2));
        let nowhere = s.pin(&cookie, 1000, |_| false, |_| false);
        assert_eq!(
            (nowhere.decision, nowhere.backend),
            (Decision::Repinned, None)
        );
    }

    #[test]
    fn every_decision_is_a_metric_label() {
        for d in [
            Decision::Hit,
            Decision::Miss,
            Decision::Repinned,
            Decision::Invalid,
        ] {
            assert!(
                crate::observe::metrics::AFFINITY_RESULTS.contains(&d.as_str()),
                "{d:?}"
            );
        }
    }

    #[test]
    fn bad_cookies_are_invalid_and_absent_is_absent() {
        let s = sticky(&["0123456789abcdef0123"]);
        assert_eq!(s.read(&request("a=1"), 0), Pin::Absent);
        assert_eq!(s.read(&request("sid=garbage"), 0), Pin::Invalid);
        let other = sticky(&["another-key-0123456789"])
            .set_cookie(0, 1, 0, false)
            .unwrap();
        let value = other.split(';').next().unwrap();
        assert_eq!(s.read(&request(value), 0), Pin::Invalid);
    }
}
