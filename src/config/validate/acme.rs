//! `tls.acme:` of a listener (issue #17): the ACME directory, the domains, the CA bundle that
//! verifies the server, the state directory; and the rules across listeners (a plain listener
//! to answer HTTP-01 on, one state directory per listener).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use super::parse::parse_duration;
use super::Checker;
use crate::config::model::*;
use crate::config::raw::*;

/// `tls.acme:` at `path`. None: invalid (every problem reported).
pub(super) fn check_acme(ck: &mut Checker, path: &str, raw: RawAcme) -> Option<AcmeConfig> {
    let mut ok = true;
    let directory = raw.directory.trim().to_string();
    if !directory.starts_with("https://") || directory.len() <= "https://".len() {
        ck.error(
            format!("{path}.directory"),
            format!("`{directory}` is not an https URL (the ACME directory, RFC 8555 7.1.1)"),
        );
        ok = false;
    }
    if let Some(email) = &raw.email {
        if !email.contains('@') || email.contains(char::is_whitespace) {
            ck.error(
                format!("{path}.email"),
                format!("`{email}` is not an email address"),
            );
            ok = false;
        }
    }
    if raw.domains.is_empty() {
        ck.error(format!("{path}.domains"), "needs at least one domain");
        ok = false;
    }
    let mut domains = Vec::new();
    for (i, d) in raw.domains.iter().enumerate() {
        let name = d.trim().trim_end_matches('.').to_ascii_lowercase();
        if let Err(msg) = check_domain(&name) {
            ck.error(format!("{path}.domains[{i}]"), msg);
            ok = false;
        } else if domains.contains(&name) {
            ck.error(
                format!("{path}.domains[{i}]"),
                format!("`{name}` is listed twice"),
            );
            ok = false;
        } else {
            domains.push(name);
        }
    }
    let ca_file = raw.ca_file.map(|f| ck.base.join(f));
    if let Some(f) = &ca_file {
        if let Err(e) = crate::tls::load_ca(f) {
            ck.error(format!("{path}.ca_file"), e);
            ok = false;
        }
    }
    let state_dir = ck.base.join(raw.state_dir.trim());
    if raw.state_dir.trim().is_empty() {
        ck.error(format!("{path}.state_dir"), "must not be empty");
        ok = false;
    } else if state_dir.exists() && !state_dir.is_dir() {
        ck.error(
            format!("{path}.state_dir"),
            format!("{} is not a directory", state_dir.display()),
        );
        ok = false;
    }
    let renew_after = raw
        .renew_after
        .as_deref()
        .map(|t| parse_duration(ck, &format!("{path}.renew_after"), Some(t), Duration::ZERO));
    if renew_after.is_some_and(|d| !d.is_zero() && d < Duration::from_secs(86400)) {
        ck.warn(
            format!("{path}.renew_after"),
            "below a day: a new certificate that often meets a public CA's rate limits (Let's Encrypt: 5 a week for the same names); meant for test CAs",
        );
    }
    ok.then_some(AcmeConfig {
        directory,
        email: raw.email,
        domains,
        ca_file,
        state_dir,
        renew_after,
    })
}

/// A name HTTP-01 can prove: letters, digits, hyphens and dots, at least two labels, no
/// wildcard, not an IP address.
fn check_domain(name: &str) -> Result<(), String> {
    if name.starts_with("*.") {
        return Err(format!(
            "`{name}`: a wildcard needs the DNS-01 challenge, which fulcrum does not answer"
        ));
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!("`{name}` is an IP address, not a DNS name"));
    }
    let labels: Vec<&str> = name.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if name.len() > 253 || labels.len() < 2 || !labels.iter().all(label_ok) {
        return Err(format!("`{name}` is not a DNS name (e.g. www.example.com)"));
    }
    Ok(())
}

/// Across listeners: HTTP-01 is answered on a plain listener, so an ACME listener needs one;
/// and two ACME listeners cannot keep their certificates in the same state directory.
pub(super) fn check_acme_listeners(ck: &mut Checker, listeners: &[ListenerConfig]) -> bool {
    let mut ok = true;
    let has_plain = listeners.iter().any(|l| l.tls.is_none());
    let mut dirs: HashMap<PathBuf, usize> = HashMap::new();
    for (i, l) in listeners.iter().enumerate() {
        let Some(acme) = l.tls.as_ref().and_then(|t| t.acme.as_ref()) else {
            continue;
        };
        let path = format!("listeners[{i}].tls.acme");
        if !has_plain {
            ck.error(
                &path,
                "the HTTP-01 challenge is answered on a plain listener (port 80 for a public CA): add one",
            );
            ok = false;
        }
        if let Some(first) = dirs.insert(acme.state_dir.clone(), i) {
            ck.error(
                format!("{path}.state_dir"),
                format!(
                    "also the state_dir of listeners[{first}]: give each ACME listener its own"
                ),
            );
            ok = false;
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    fn conf(acme: &str, plain: bool) -> String {
        let plain = if plain {
            "  - name: web\n    listen: 127.0.0.1:8080\n"
        } else {
            ""
        };
        format!(
            "listeners:\n{plain}  - name: s\n    listen: 127.0.0.1:8443\n    tls:\n      acme: {acme}\nroutes: [{{pool: p}}]\npools:\n  p:\n    backends: [{{address: 127.0.0.1:9}}]\n"
        )
    }

    #[test]
    fn acme_needs_a_directory_domains_and_a_plain_listener() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.yaml");
        let good = "{directory: 'https://127.0.0.1:14000/dir', email: a@example.com, domains: [www.example.com, Example.com.], state_dir: acme, renew_after: 1h}";
        assert_eq!(problems_in(&file, &conf(good, true)), Vec::<String>::new());
        let c = crate::config::validate::validate(&file, &conf(good, true)).unwrap();
        let acme = c.listeners[1].tls.as_ref().unwrap().acme.clone().unwrap();
        assert_eq!(acme.domains, ["www.example.com", "example.com"]);
        assert_eq!(acme.state_dir, dir.path().join("acme"));
        assert_eq!(acme.renew_after, Some(std::time::Duration::from_secs(3600)));
        assert!(c.listeners[1].tls.as_ref().unwrap().certificates.is_empty());

        let p = problems_in(&file, &conf(good, false));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("listeners[0].tls.acme: the HTTP-01 challenge"),
            "{p:?}"
        );

        let bad = "{directory: 'http://x/dir', email: nobody, domains: ['*.example.com', 10.0.0.1, localhost], state_dir: acme, ca_file: none.pem}";
        let p = problems_in(&file, &conf(bad, true));
        assert_eq!(p.len(), 6, "{p:?}");
        assert!(
            p[0].contains("directory: `http://x/dir` is not an https URL"),
            "{p:?}"
        );
        assert!(p[1].contains("email: `nobody`"), "{p:?}");
        assert!(
            p[2].contains("domains[0]: `*.example.com`: a wildcard"),
            "{p:?}"
        );
        assert!(
            p[3].contains("domains[1]: `10.0.0.1` is an IP address"),
            "{p:?}"
        );
        assert!(
            p[4].contains("domains[2]: `localhost` is not a DNS name"),
            "{p:?}"
        );
        assert!(p[5].contains("ca_file: cannot read"), "{p:?}");

        let p = problems_in(
            &file,
            &conf(
                "{directory: 'https://x/d', domains: [], state_dir: a}",
                true,
            ),
        );
        assert!(
            p.len() == 1 && p[0].contains("domains: needs at least one domain"),
            "{p:?}"
        );
    }
}
