//! Bearer-token (JWT) authentication: the signature by one of the route's keys (the algorithm
//! limited to the key's family), `exp` required, `nbf`, `iss` and `aud` checked; claims copied
//! into request headers for the backend.

use http::HeaderValue;
use jsonwebtoken::{decode, decode_header, Validation};
use pingora::http::RequestHeader;
use serde_json::{Map, Value};

use crate::config::JwtAuthConfig;
use crate::observe::edge_metrics::AuthResult;

/// Longest token read.
const MAX_TOKEN: usize = 16 * 1024;
/// Most keys tried for one token (a JWKS without `kid`s).
const MAX_TRIES: usize = 16;

/// One route's `auth: {jwt: ...}`.
pub struct JwtAuth {
    pub config: JwtAuthConfig,
    /// `WWW-Authenticate` when no token came, and when it was refused (RFC 6750).
    pub challenge_missing: HeaderValue,
    pub challenge_invalid: HeaderValue,
}

impl JwtAuth {
    pub fn new(config: JwtAuthConfig) -> JwtAuth {
        let realm = &config.realm;
        let header = |text: String| {
            HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
        };
        JwtAuth {
            challenge_missing: header(format!("Bearer realm=\"{realm}\"")),
            challenge_invalid: header(format!("Bearer realm=\"{realm}\", error=\"invalid_token\"")),
            config,
        }
    }

    /// The verdict on the request's bearer token, and the claims to forward when it passes.
    pub fn check(&self, req: &RequestHeader) -> (AuthResult, Vec<(String, HeaderValue)>) {
        let Some(value) = req.headers.get(http::header::AUTHORIZATION) else {
            return (AuthResult::Missing, Vec::new());
        };
        let token = value
            .to_str()
            .ok()
            .filter(|v| v.len() <= MAX_TOKEN)
            .and_then(|v| {
                let (scheme, token) = v.split_at_checked(7)?;
                scheme.eq_ignore_ascii_case("bearer ").then(|| token.trim())
            });
        let Some(claims) = token.and_then(|t| self.verify(t)) else {
            return (AuthResult::Invalid, Vec::new());
        };
        let forward = self
            .config
            .forward_claims
            .iter()
            .filter_map(|(claim, header)| {
                let text = match claims.get(claim)? {
                    Value::String(s) => s.clone(),
                    Value::Null => return None,
                    other => other.to_string(),
                };
                Some((header.clone(), HeaderValue::from_str(&text).ok()?))
            })
            .collect();
        (AuthResult::Ok, forward)
    }

    /// The token's claims if one of the keys verifies it and its claims hold.
    fn verify(&self, token: &str) -> Option<Map<String, Value>> {
        let header = decode_header(token).ok()?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_nbf = true;
        match &self.config.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &self.config.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        self.config
            .keys
            .keys
            .iter()
            .filter(|k| k.algorithms.contains(&header.alg))
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            })
            .take(MAX_TRIES)
            .find_map(|k| decode::<Map<String, Value>>(token, &k.key, &validation).ok())
            .map(|data| data.claims)
    }
}
