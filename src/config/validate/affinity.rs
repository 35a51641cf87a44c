//! `affinity:` of a pool: the sticky-session cookie's attributes and its signing keys (read
//! here, from `keys_file` or `keys_env`, and carried in the model).

use std::time::Duration;

use super::parse::secret_text;
use super::parse::{parse_duration, parse_host};
use super::Checker;
use crate::config::model::*;
use crate::config::raw::*;

/// Shortest accepted affinity key, in bytes.
pub const MIN_KEY_LEN: usize = 16;

pub(super) fn check_affinity(ck: &mut Checker, path: &str, raw: RawAffinity) -> AffinityConfig {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !token(&raw.cookie) {
        ck.error(
            format!("{path}.cookie"),
            format!("`{}` is not a valid cookie name", raw.cookie),
        );
    }
    let max_age = parse_duration(
        ck,
        &format!("{path}.max_age"),
        raw.max_age.as_deref(),
        Duration::from_secs(3600),
    );
    let cookie_path = raw.path.unwrap_or_else(|| "/".into());
    if !cookie_path.starts_with('/') || cookie_path.contains([';', ',', ' ']) {
        ck.error(format!("{path}.path"), "must be a path starting with `/`");
    }
    if let Some(d) = &raw.domain {
        if parse_host(d).is_err() || d.starts_with("*.") {
            ck.error(format!("{path}.domain"), format!("`{d}` is not a domain"));
        }
    }
    let same_site = match raw.same_site.as_deref().unwrap_or("Lax") {
        s @ ("Lax" | "Strict" | "None") => s.to_string(),
        other => {
            ck.error(
                format!("{path}.same_site"),
                format!("`{other}`: expected Lax, Strict or None"),
            );
            "Lax".into()
        }
    };
    if same_site == "None" && raw.secure == Some(false) {
        ck.error(
            format!("{path}.same_site"),
            "SameSite=None needs a Secure cookie (browsers drop it otherwise)",
        );
    }
    let text = secret_text(
        ck,
        path,
        "keys",
        raw.keys_file.as_deref(),
        raw.keys_env.as_deref(),
    );
    if raw.keys_file.is_none() && raw.keys_env.is_none() {
        ck.warn(
            path,
            "no keys_file or keys_env: affinity cookies are unsigned (a client can pick its backend)",
        );
    }
    let mut keys = Vec::new();
    if let Some((kpath, text)) = text {
        // One key per line (or comma-separated); blank lines and `#` comments are skipped.
        for key in text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .filter(|k| !k.is_empty())
        {
            if key.len() < MIN_KEY_LEN {
                ck.error(
                    &kpath,
                    format!(
                        "a key is {} bytes long: keys need at least {MIN_KEY_LEN}",
                        key.len()
                    ),
                );
            }
            keys.push(key.as_bytes().to_vec());
        }
        if keys.is_empty() {
            ck.error(&kpath, "holds no key");
        }
    }
    AffinityConfig {
        cookie: raw.cookie,
        max_age,
        domain: raw.domain,
        path: cookie_path,
        same_site,
        secure: raw.secure,
        keys: Secrets(keys),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    fn pool(body: &str) -> Vec<String> {
        problems(&format!(
            "{FRONT}pools:\n  p:\n    backends: [{{address: 127.0.0.1:9}}]\n{body}"
        ))
    }

    #[test]
    fn cookie_attributes() {
        assert_eq!(
            pool("    affinity:\n      cookie: 'a b'\n      path: x\n      domain: '*.example.com'\n      same_site: None\n      secure: false\n      keys_env: FULCRUM_TEST_UNSET_VARIABLE\n"),
            [
                "7:7: pools.p.affinity.cookie: `a b` is not a valid cookie name",
                "8:7: pools.p.affinity.path: must be a path starting with `/`",
                "9:7: pools.p.affinity.domain: `*.example.com` is not a domain",
                "10:7: pools.p.affinity.same_site: SameSite=None needs a Secure cookie (browsers drop it otherwise)",
                "12:7: pools.p.affinity.keys_env: environment variable FULCRUM_TEST_UNSET_VARIABLE is not set",
            ]
        );
    }

    #[test]
    fn keys_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keys"), "# keys\nshort\n").unwrap();
        std::fs::write(dir.path().join("good"), "0123456789abcdef0123\n").unwrap();
        let conf = dir.path().join("f.yaml");
        let text = |file: &str| {
            format!("{FRONT}pools:\n  p:\n    backends: [{{address: 127.0.0.1:9}}]\n    affinity: {{cookie: s, keys_file: {file}}}\n")
        };
        assert_eq!(
            problems_in(&conf, &text("keys")),
            ["6:27: pools.p.affinity.keys_file: a key is 5 bytes long: keys need at least 16"]
        );
        assert_eq!(problems_in(&conf, &text("good")), Vec::<String>::new());
        let c = crate::config::validate::validate(&conf, &text("good")).unwrap();
        let keys = &c.pools[0].affinity.as_ref().unwrap().keys;
        assert_eq!(keys.0, [b"0123456789abcdef0123".to_vec()]);
    }

    #[test]
    fn a_missing_cookie_name_does_not_hide_the_pools_other_problems() {
        assert_eq!(
            pool("    affinity: {max_age: 1h}\n    retries: 99\n"),
            [
                "6:5: pools.p.affinity: `cookie` is required",
                "7:5: pools.p.retries: a whole number from 0 to 10, got 99",
            ]
        );
    }
}
