//! `auth: {jwt: ...}` of a route: the verification keys (a PEM public key, a JWKS, or an HMAC
//! secret), read here and carried in the model, and the claims checked and forwarded.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::parse::parse_duration;
use super::Checker;
use crate::config::edge::*;
use crate::config::raw_edge::RawJwtAuth;

const RSA: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const EC: [Algorithm; 2] = [Algorithm::ES256, Algorithm::ES384];
const HMAC: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
/// Shortest HMAC secret accepted (RFC 7518 3.2: at least the hash's size).
const MIN_SECRET: usize = 32;

pub(super) fn check_jwt(ck: &mut Checker, path: &str, raw: RawJwtAuth) -> Option<AuthConfig> {
    let mut ok = true;
    let (file_key, file, secret) = match (&raw.key_file, &raw.secret_file) {
        (Some(f), None) => ("key_file", f.clone(), false),
        (None, Some(f)) => ("secret_file", f.clone(), true),
        _ => {
            ck.error(
                path,
                "give `key_file` (PEM or JWKS) or `secret_file` (HS256), one of them",
            );
            return None;
        }
    };
    let at = format!("{path}.{file_key}");
    let resolved = ck.base.join(&file);
    let keys = match std::fs::read(&resolved) {
        Err(e) => {
            ck.error(&at, format!("cannot read {file}: {e}"));
            None
        }
        Ok(bytes) => {
            let loaded = if secret {
                load_secret(&bytes)
            } else {
                load_keys(&bytes)
            };
            match loaded {
                Ok(keys) => Some(JwtKeys {
                    content: Arc::new(bytes),
                    keys: Arc::new(keys),
                }),
                Err(msg) => {
                    ck.error(&at, format!("{file}: {msg}"));
                    None
                }
            }
        }
    };
    let mut forward_claims = Vec::new();
    for (claim, header) in raw.forward_claims.unwrap_or_default() {
        match http::HeaderName::from_bytes(header.trim().as_bytes()) {
            Ok(h) => forward_claims.push((claim, h.as_str().to_string())),
            Err(_) => {
                ck.error(
                    format!("{path}.forward_claims.{claim}"),
                    format!("`{header}` is not a header name"),
                );
                ok = false;
            }
        }
    }
    let leeway = parse_duration(
        ck,
        &format!("{path}.leeway"),
        raw.leeway.as_deref(),
        Duration::from_secs(60),
    );
    let realm = raw.realm.unwrap_or_else(|| "fulcrum".into());
    ok &= super::edge::check_realm(ck, path, &realm);
    let keys = keys?;
    ok.then_some(AuthConfig::Jwt(JwtAuthConfig {
        key_file: resolved,
        keys,
        issuer: raw.issuer,
        audience: raw.audience,
        forward_claims,
        strip_token: raw.strip_token.unwrap_or(false),
        leeway,
        realm,
    }))
}

/// An HMAC secret: the file's bytes without trailing line ends.
fn load_secret(bytes: &[u8]) -> Result<Vec<JwtKey>, String> {
    let secret = bytes.trim_ascii_end();
    if secret.len() < MIN_SECRET {
        return Err(format!("the secret must be at least {MIN_SECRET} bytes"));
    }
    Ok(vec![JwtKey {
        kid: None,
        key: DecodingKey::from_secret(secret),
        algorithms: HMAC.to_vec(),
    }])
}

/// A PEM public key (RSA, EC or Ed25519), or a JWKS.
fn load_keys(bytes: &[u8]) -> Result<Vec<JwtKey>, String> {
    let text = bytes.trim_ascii_start();
    if text.starts_with(b"-----BEGIN") {
        let one = |key, algorithms: &[Algorithm]| {
            Ok(vec![JwtKey {
                kid: None,
                key,
                algorithms: algorithms.to_vec(),
            }])
        };
        if let Ok(k) = DecodingKey::from_rsa_pem(text) {
            return one(k, &RSA);
        }
        if let Ok(k) = DecodingKey::from_ec_pem(text) {
            return one(k, &EC);
        }
        if let Ok(k) = DecodingKey::from_ed_pem(text) {
            return one(k, &[Algorithm::EdDSA]);
        }
        return Err("not a PEM public key (RSA, EC or Ed25519)".into());
    }
    if text.starts_with(b"{") {
        let set: JwkSet = serde_json::from_slice(text).map_err(|e| format!("not a JWKS: {e}"))?;
        if set.keys.is_empty() {
            return Err("the JWKS has no keys".into());
        }
        return set
            .keys
            .iter()
            .enumerate()
            .map(|(i, jwk)| {
                let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("keys[{i}]: {e}"))?;
                let family: Vec<Algorithm> = match &jwk.algorithm {
                    AlgorithmParameters::RSA(_) => RSA.to_vec(),
                    AlgorithmParameters::EllipticCurve(p) => match p.curve {
                        EllipticCurve::P256 => vec![Algorithm::ES256],
                        EllipticCurve::P384 => vec![Algorithm::ES384],
                        _ => return Err(format!("keys[{i}]: unsupported curve")),
                    },
                    AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
                    AlgorithmParameters::OctetKey(_) => HMAC.to_vec(),
                };
                // A key that names its algorithm verifies only that one.
                let algorithms = match jwk.common.key_algorithm.map(|a| a.to_string()) {
                    None => family,
                    Some(name) => family
                        .into_iter()
                        .filter(|a| format!("{a:?}") == name)
                        .collect(),
                };
                if algorithms.is_empty() {
                    return Err(format!("keys[{i}]: its `alg` does not fit its key type"));
                }
                Ok(JwtKey {
                    kid: jwk.common.key_id.clone(),
                    key,
                    algorithms,
                })
            })
            .collect();
    }
    Err("expected a PEM public key or a JWKS (JSON with `keys`)".into())
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn key_files_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(dir.path().join("ec.pem"), key.public_key_pem()).unwrap();
        std::fs::write(
            dir.path().join("junk.pem"),
            "-----BEGIN PUBLIC KEY-----\nxx\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("empty.jwks"), "{\"keys\": []}").unwrap();
        std::fs::write(dir.path().join("short"), "abc\n").unwrap();
        let yaml = |auth: &str| {
            format!(
                "listeners: [{{name: main, listen: 127.0.0.1:8080}}]\nroutes:\n  - {{pool: p, auth: {{jwt: {auth}}}}}\npools: {{p: {{backends: [{{address: 127.0.0.1:9}}]}}}}\n"
            )
        };
        let f = dir.path().join("f.yaml");
        let check = |auth: &str| problems_in(&f, &yaml(auth));
        assert_eq!(
            check("{key_file: ec.pem, forward_claims: {sub: X-Sub}}"),
            Vec::<String>::new()
        );
        assert_eq!(
            check("{key_file: junk.pem}"),
            ["3:28: routes[0].auth.jwt.key_file: junk.pem: not a PEM public key (RSA, EC or Ed25519)"]
        );
        assert_eq!(
            check("{key_file: empty.jwks}"),
            ["3:28: routes[0].auth.jwt.key_file: empty.jwks: the JWKS has no keys"]
        );
        assert_eq!(
            check("{secret_file: short, forward_claims: {sub: 'a b'}, leeway: x}"),
            [
                "3:28: routes[0].auth.jwt.secret_file: short: the secret must be at least 32 bytes",
                "3:65: routes[0].auth.jwt.forward_claims.sub: `a b` is not a header name",
                "3:78: routes[0].auth.jwt.leeway: `x` is not a duration: expected e.g. `500ms`, `2s`, `1m`, `1h`",
            ]
        );
        assert_eq!(
            check("{issuer: x}"),
            ["3:22: routes[0].auth.jwt: give `key_file` (PEM or JWKS) or `secret_file` (HS256), one of them"]
        );
    }
}
