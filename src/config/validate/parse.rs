//! Parsing helpers shared by the sections: key paths, durations, socket addresses, host names.

use std::net::SocketAddr;
use std::time::Duration;

use super::Checker;
use crate::config::model::HostMatch;

/// `parent.key` (or `key` at the top).
pub(super) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// A host to match (`api.example.com`, `*.example.com`), lower-case.
pub(super) fn parse_host(host: &str) -> Result<HostMatch, String> {
    let host = host.trim().to_ascii_lowercase();
    if host.is_empty() {
        return Err("must not be empty".into());
    }
    let (suffix, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host.as_str()),
    };
    let valid = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Err(format!(
            "`{host}` is not a host name (expected e.g. `api.example.com` or `*.example.com`, without port)"
        ));
    }
    Ok(if suffix {
        HostMatch::Suffix(format!(".{name}"))
    } else {
        HostMatch::Exact(name.to_string())
    })
}

pub(super) fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse::<SocketAddr>().map_err(|_| {
        format!("`{text}` is not an address: expected IP:PORT, e.g. 127.0.0.1:8080 or [::1]:8080")
    })
}

/// The duration `text` (`500ms`, `2s`, `1h`), or `default` when absent or invalid (reported).
pub(super) fn parse_duration(
    ck: &mut Checker,
    path: &str,
    text: Option<&str>,
    default: Duration,
) -> Duration {
    let Some(text) = text else {
        return default;
    };
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d.is_zero() => {
            ck.error(path, "must be greater than zero");
            default
        }
        Ok(d) => d,
        Err(_) => {
            ck.error(
                path,
                format!("`{text}` is not a duration: expected e.g. `500ms`, `2s`, `1m`, `1h`"),
            );
            default
        }
    }
}

/// Secret text given by `{name}_file` (relative to the configuration's directory) or
/// `{name}_env` (an environment variable), read once here: (the key path it came from, the
/// text). None when neither is given or it cannot be read (then located errors are recorded).
pub(super) fn secret_text(
    ck: &mut Checker,
    path: &str,
    name: &str,
    file: Option<&str>,
    env: Option<&str>,
) -> Option<(String, String)> {
    match (file, env) {
        (Some(_), Some(_)) => {
            ck.error(
                path,
                format!("give `{name}_file` or `{name}_env`, not both"),
            );
            None
        }
        (Some(file), None) => match std::fs::read_to_string(ck.base.join(file)) {
            Ok(t) => Some((format!("{path}.{name}_file"), t)),
            Err(e) => {
                ck.error(
                    format!("{path}.{name}_file"),
                    format!("cannot read {file}: {e}"),
                );
                None
            }
        },
        (None, Some(var)) => match std::env::var(var) {
            Ok(t) => Some((format!("{path}.{name}_env"), t)),
            Err(_) => {
                ck.error(
                    format!("{path}.{name}_env"),
                    format!("environment variable {var} is not set"),
                );
                None
            }
        },
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn durations_and_addresses_are_checked_where_they_stand() {
        let p = problems(&format!(
            "{FRONT}pools:\n  p:\n    backends: [{{address: 10.0.0.1}}]\n    timeouts: {{connect: soon, read: 0s}}\n"
        ));
        assert_eq!(
            p,
            [
                "5:17: pools.p.backends[0].address: `10.0.0.1` is not an address: expected IP:PORT (e.g. 127.0.0.1:8080 or [::1]:8080) or NAME:PORT (e.g. app.internal:8080)",
                "6:16: pools.p.timeouts.connect: `soon` is not a duration: expected e.g. `500ms`, `2s`, `1m`, `1h`",
                "6:31: pools.p.timeouts.read: must be greater than zero",
            ]
        );
    }

    #[test]
    fn hosts() {
        use crate::config::model::HostMatch;
        assert_eq!(
            super::parse_host("*.Example.com"),
            Ok(HostMatch::Suffix(".example.com".into()))
        );
        assert!(super::parse_host("a..b").is_err());
        assert!(super::parse_host("a.b:80").is_err());
    }
}
