//! HTTP Basic authentication against the htpasswd users a route's config carries: bcrypt
//! verification (constant-time comparison inside the `bcrypt` crate) off the event loop, and
//! a bounded cache of credentials already verified, so a client pays bcrypt's cost once.

use std::collections::HashSet;
use std::sync::Mutex;

use base64::Engine;
use http::HeaderValue;
use pingora::http::RequestHeader;
use pingora::{Error, ErrorType, Result};

use crate::config::BasicAuthConfig;
use crate::observe::edge_metrics::AuthResult;

/// Verified credentials kept per route; the cache starts over when full.
const CACHE_MAX: usize = 1024;
/// Longest Authorization header read (user and password together).
const MAX_CREDENTIALS: usize = 4096;

/// One route's `auth: {basic: ...}`.
pub struct BasicAuth {
    config: BasicAuthConfig,
    /// `WWW-Authenticate` of a 401.
    pub challenge: HeaderValue,
    /// SHA-256 of `user \0 password \0 hash` of credentials bcrypt accepted.
    verified: Mutex<HashSet<[u8; 32]>>,
}

impl BasicAuth {
    pub fn new(config: BasicAuthConfig) -> BasicAuth {
        let challenge = format!("Basic realm=\"{}\", charset=\"UTF-8\"", config.realm);
        BasicAuth {
            challenge: HeaderValue::from_str(&challenge)
                .unwrap_or_else(|_| HeaderValue::from_static("Basic realm=\"fulcrum\"")),
            config,
            verified: Mutex::new(HashSet::new()),
        }
    }

    /// Whether the request carries credentials of a user in the htpasswd file.
    pub async fn check(&self, req: &RequestHeader) -> Result<AuthResult> {
        let Some((user, password)) = credentials(req) else {
            return Ok(if req.headers.contains_key(http::header::AUTHORIZATION) {
                AuthResult::Invalid
            } else {
                AuthResult::Missing
            });
        };
        // An unknown user still costs one bcrypt run (against another user's hash), so that
        // timing does not tell which users exist; the answer is no whatever it says.
        let known = self.config.users.get(&user);
        let Some(hash) = known.or_else(|| self.config.users.values().next()).cloned() else {
            return Ok(AuthResult::Invalid);
        };
        let digest = cache_key(&user, &password, &hash);
        if known.is_some() && self.lock().contains(&digest) {
            return Ok(AuthResult::Ok);
        }
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .map_err(|e| Error::because(ErrorType::InternalError, "bcrypt verification", e))?
            .unwrap_or(false);
        if !(ok && known.is_some()) {
            return Ok(AuthResult::Invalid);
        }
        let mut cache = self.lock();
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(digest);
        Ok(AuthResult::Ok)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; 32]>> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `Authorization: Basic base64(user:password)` -> (user, password).
fn credentials(req: &RequestHeader) -> Option<(String, String)> {
    let value = req.headers.get(http::header::AUTHORIZATION)?.as_bytes();
    if value.len() > MAX_CREDENTIALS {
        return None;
    }
    let (scheme, token) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim_ascii())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn cache_key(user: &str, password: &str, hash: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [user, "\0", password, "\0", hash] {
        ctx.update(part.as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn auth() -> BasicAuth {
        let mut users = BTreeMap::new();
        users.insert("alice".to_string(), bcrypt::hash("secret", 4).unwrap());
        BasicAuth::new(BasicAuthConfig {
            htpasswd: "htpasswd".into(),
            realm: "area 51".into(),
            users: Arc::new(users),
        })
    }

    fn req(authorization: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        if let Some(a) = authorization {
            r.insert_header("authorization", a).unwrap();
        }
        r
    }

    fn basic(user_pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
    }

    #[tokio::test]
    async fn right_credentials_pass_and_others_do_not() {
        let a = auth();
        assert_eq!(a.challenge, "Basic realm=\"area 51\", charset=\"UTF-8\"");
        let check = |h: Option<String>| {
            let a = &a;
            async move { a.check(&req(h.as_deref())).await.unwrap() }
        };
        assert_eq!(check(Some(basic("alice:secret"))).await, AuthResult::Ok);
        // Again, from the cache.
        assert_eq!(check(Some(basic("alice:secret"))).await, AuthResult::Ok);
        assert_eq!(check(Some(basic("alice:wrong"))).await, AuthResult::Invalid);
        // Another user with alice's password is still refused.
        assert_eq!(check(Some(basic("bob:secret"))).await, AuthResult::Invalid);
        assert_eq!(check(Some("Bearer x".into())).await, AuthResult::Invalid);
        assert_eq!(check(Some("Basic !!!".into())).await, AuthResult::Invalid);
        assert_eq!(check(None).await, AuthResult::Missing);
        assert_eq!(
            check(Some(basic("alice:secret").replace("Basic", "bAsIc"))).await,
            AuthResult::Ok
        );
    }
}
