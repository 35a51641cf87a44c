//! TLS material: the certificate/key pairs of TLS listeners and the CA bundle a pool verifies
//! its backends with, each loaded and checked here, once, and carried in the model.

use super::Checker;
use crate::config::model::*;
use crate::config::raw::*;

/// `tls:` of a listener: every pair is loaded and checked now, so that `-t` catches a missing
/// file, a key that does not match, or an expired certificate. None: invalid.
pub(super) fn check_listener_tls(
    ck: &mut Checker,
    path: &str,
    raw: RawListenerTls,
) -> Option<ListenerTls> {
    let certs_path = format!("{path}.certificates");
    // A list whose items had the wrong shape was reported already (and read as empty).
    let reported = ck.problems.iter().any(|p| p.path.starts_with(&certs_path));
    if raw.certificates.is_empty() && raw.acme.is_none() {
        if reported {
            return None;
        }
        ck.error(
            format!("{path}.certificates"),
            "needs at least one {cert, key} pair (or `acme`)",
        );
        return None;
    }
    let acme = raw
        .acme
        .map(|a| super::acme::check_acme(ck, &format!("{path}.acme"), a));
    let now = crate::tls::unix_now();
    let mut ok = true;
    let mut certificates = Vec::new();
    for (j, pair) in raw.certificates.into_iter().enumerate() {
        let ppath = format!("{path}.certificates[{j}]");
        let cert = ck.base.join(&pair.cert);
        let key = ck.base.join(&pair.key);
        match crate::tls::load_pair(&cert, &key, now) {
            Ok(loaded) => certificates.push(CertPair { cert, key, loaded }),
            Err((part, msg)) => {
                let which = match part {
                    crate::tls::Part::Cert => "cert",
                    crate::tls::Part::Key => "key",
                };
                ck.error(format!("{ppath}.{which}"), msg);
                ok = false;
            }
        }
    }
    let acme = match acme {
        Some(None) => return None,
        Some(a) => a,
        None => None,
    };
    ok.then_some(ListenerTls {
        certificates,
        http2: raw.http2.unwrap_or(true),
        acme,
    })
}

/// `tls:` of a pool: SNI, verification, and the CA bundle (loaded and checked now).
pub(super) fn check_upstream_tls(ck: &mut Checker, path: &str, raw: RawUpstreamTls) -> UpstreamTls {
    let ca_file = raw.ca_file.map(|f| ck.base.join(f));
    let ca = ca_file
        .as_deref()
        .and_then(|f| match crate::tls::load_ca(f) {
            Ok(ca) => Some(ca),
            Err(e) => {
                ck.error(format!("{path}.ca_file"), e);
                None
            }
        });
    UpstreamTls {
        sni: raw.sni.unwrap_or_default(),
        verify: raw.verify.unwrap_or(true),
        ca_file,
        ca,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    /// A self-signed certificate for `localhost` and its key, written in `dir`.
    fn pair(dir: &std::path::Path) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(dir.join("c.pem"), c.cert.pem()).unwrap();
        std::fs::write(dir.join("k.pem"), c.key_pair.serialize_pem()).unwrap();
    }

    #[test]
    fn certificate_files_are_loaded_relative_to_the_file_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        pair(dir.path());
        let conf = dir.path().join("f.yaml");
        let text = |cert: &str, key: &str| {
            format!(
                "listeners:\n  - name: s\n    listen: 127.0.0.1:8443\n    tls: {{certificates: [{{cert: {cert}, key: {key}}}]}}\nroutes: [{{pool: p}}]\npools:\n  p:\n    tls: {{ca_file: {cert}}}\n    backends: [{{address: 127.0.0.1:9}}]\n"
            )
        };
        assert_eq!(
            problems_in(&conf, &text("c.pem", "k.pem")),
            Vec::<String>::new()
        );
        // Loaded once, here: serving needs the files no more.
        let c = crate::config::validate::validate(&conf, &text("c.pem", "k.pem")).unwrap();
        let tls = c.listeners[0].tls.as_ref().unwrap();
        assert_eq!(tls.loaded()[0].names, ["localhost"]);
        let ca = c.pools[0]
            .upstream_tls
            .as_ref()
            .unwrap()
            .ca
            .as_ref()
            .unwrap();
        assert_eq!(ca.0.len(), 1);
        let again = crate::config::validate::validate(&conf, &text("c.pem", "k.pem")).unwrap();
        assert_eq!(again.listeners, c.listeners);
        let p = problems_in(&conf, &text("c.pem", "c.pem"));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("4:40: listeners[0].tls.certificates[0].key: ")
                && p[0].contains("holds no private key"),
            "{p:?}"
        );
        let p = problems_in(&conf, &text("none.pem", "k.pem"));
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].starts_with("4:27: listeners[0].tls.certificates[0].cert: cannot read"),
            "{p:?}"
        );
        assert!(
            p[1].starts_with("8:11: pools.p.tls.ca_file: cannot read"),
            "{p:?}"
        );
        std::fs::remove_file(dir.path().join("c.pem")).unwrap();
        std::fs::remove_file(dir.path().join("k.pem")).unwrap();
        assert!(crate::tls::SniResolver::new(&tls.loaded()).is_some());
        assert_eq!(ca.0.len(), 1);
    }
}
