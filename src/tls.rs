//! TLS material: loading and checking certificate/key pairs (missing file, key that does not
//! match, expired), the SNI resolver that picks a certificate per handshake (exact names,
//! wildcards, a default), and CA bundles for verifying upstreams. It takes paths and loaded
//! material, never configuration types: the configuration loads through it once, while
//! validating, and carries what it loaded.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{
    CertificateDer, ClientHello, CryptoProvider, PrivateKeyDer, ResolvesServerCert,
};
use pingora::utils::tls::{parse_x509, WrappedX509};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Which file of a pair a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Cert,
    Key,
}

/// A certificate chain with its key, checked, and the names it serves.
#[derive(Clone)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// DNS names from the leaf's subjectAltName (or its CN), lower-case; may start with `*.`.
    pub names: Vec<String>,
    /// The leaf's validity, unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

/// The same certificate chain for the same names (the key goes with the chain).
impl PartialEq for LoadedCert {
    fn eq(&self, other: &Self) -> bool {
        self.key.cert == other.key.cert && self.names == other.names
    }
}

impl Eq for LoadedCert {}

impl std::fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoadedCert({:?})", self.names)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// All PEM certificates of a file, in order.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path)?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut pem.as_slice()).collect();
    let certs = certs.map_err(|e| format!("{}: not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// Load and check one certificate chain and its key, as of `now` (unix seconds).
pub fn load_pair(cert: &Path, key: &Path, now: i64) -> Result<LoadedCert, (Part, String)> {
    let chain = certificates(cert).map_err(|e| (Part::Cert, e))?;
    let key_pem = read(key).map_err(|e| (Part::Key, e))?;
    let private: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| (Part::Key, format!("{}: not PEM: {e}", key.display())))?
        .ok_or_else(|| (Part::Key, format!("{} holds no private key", key.display())))?;
    check_pair(
        chain,
        private,
        &cert.display().to_string(),
        &key.display().to_string(),
        now,
    )
}

/// Like `load_pair`, from PEM text already in memory (`what` names it in messages).
pub fn load_pem(cert_pem: &str, key_pem: &str, what: &str, now: i64) -> Result<LoadedCert, String> {
    let chain: Result<Vec<_>, _> = rustls_pemfile::certs(&mut cert_pem.as_bytes()).collect();
    let chain = chain.map_err(|e| format!("{what}: certificate not PEM: {e}"))?;
    if chain.is_empty() {
        return Err(format!("{what} holds no PEM certificate"));
    }
    let private = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| format!("{what}: key not PEM: {e}"))?
        .ok_or_else(|| format!("{what} holds no private key"))?;
    check_pair(chain, private, what, what, now).map_err(|(_, e)| e)
}

fn check_pair(
    chain: Vec<CertificateDer<'static>>,
    private: PrivateKeyDer<'static>,
    cert: &str,
    key: &str,
    now: i64,
) -> Result<LoadedCert, (Part, String)> {
    // `certificates` refuses a file without one, so the chain has a first (leaf) certificate.
    let first = chain
        .first()
        .ok_or_else(|| (Part::Cert, format!("{cert} holds no PEM certificate")))?;
    let (_, leaf) = X509Certificate::from_der(first.as_ref())
        .map_err(|e| (Part::Cert, format!("{cert}: not an X.509 certificate: {e}")))?;
    let validity = leaf.validity();
    let (not_before, not_after) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    if validity.not_after.timestamp() < now {
        return Err((
            Part::Cert,
            format!("{cert} expired on {}", validity.not_after),
        ));
    }
    if validity.not_before.timestamp() > now {
        return Err((
            Part::Cert,
            format!("{cert} is not valid before {}", validity.not_before),
        ));
    }
    let mut names: Vec<String> = leaf
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names.extend(
            leaf.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }

    pingora::tls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default()
        .ok_or_else(|| (Part::Key, "no TLS crypto provider".to_string()))?;
    let certified = CertifiedKey::from_der(chain, private, provider)
        .map_err(|e| (Part::Key, format!("{key} does not go with {cert}: {e}")))?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        names,
        not_before,
        not_after,
    })
}

/// The certificates of one listener, by name.
#[derive(Debug)]
struct CertTable {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// For clients without SNI, or names no certificate covers: the first certificate.
    default: Arc<CertifiedKey>,
}

impl CertTable {
    fn new(certs: &[LoadedCert]) -> Option<CertTable> {
        let default = certs.first()?.key.clone();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for c in certs {
            for n in &c.names {
                // The first certificate naming a host wins, as listed.
                match n.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()),
                    None => exact.entry(n.clone()),
                }
                .or_insert_with(|| c.key.clone());
            }
        }
        Some(CertTable {
            exact,
            wildcard,
            default,
        })
    }

    fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        if let Some(k) = self.exact.get(&name) {
            return k.clone();
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
            .clone()
    }
}

/// What a resolver's table is built from.
#[derive(Debug, Default)]
struct Sources {
    /// From the configuration's files (replaced on SIGHUP).
    files: Vec<LoadedCert>,
    /// Managed by fulcrum (ACME); they come first, so they win for their names.
    managed: Vec<LoadedCert>,
    /// Served only while there is nothing else (an ACME listener before its first order).
    fallback: Option<LoadedCert>,
}

impl Sources {
    fn table(&self) -> Option<CertTable> {
        let all: Vec<LoadedCert> = self.managed.iter().chain(&self.files).cloned().collect();
        if all.is_empty() {
            return CertTable::new(self.fallback.as_slice());
        }
        CertTable::new(&all)
    }
}

/// Chooses a listener's certificate by SNI; its table can be replaced (SIGHUP, ACME) while
/// serving.
#[derive(Debug)]
pub struct SniResolver {
    table: ArcSwap<CertTable>,
    sources: std::sync::Mutex<Sources>,
}

impl SniResolver {
    /// None when `certs` is empty.
    pub fn new(certs: &[LoadedCert]) -> Option<SniResolver> {
        SniResolver::with_fallback(certs, None)
    }

    /// Serves `certs`, or `fallback` while there is no other certificate. None: neither.
    pub fn with_fallback(
        certs: &[LoadedCert],
        fallback: Option<LoadedCert>,
    ) -> Option<SniResolver> {
        let sources = Sources {
            files: certs.to_vec(),
            managed: Vec::new(),
            fallback,
        };
        Some(SniResolver {
            table: ArcSwap::from_pointee(sources.table()?),
            sources: std::sync::Mutex::new(sources),
        })
    }

    fn update(&self, change: impl FnOnce(&mut Sources)) {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut sources);
        if let Some(t) = sources.table() {
            self.table.store(Arc::new(t));
        }
    }

    /// Serve `certs` (the configuration's files) from the next handshake on.
    pub fn replace(&self, certs: &[LoadedCert]) {
        self.update(|s| s.files = certs.to_vec());
    }

    /// What is served now, in order: (where it comes from, the certificate). `"acme"` first,
    /// then `"file"`; `"fallback"` only while there is neither.
    pub fn served(&self) -> Vec<(&'static str, LoadedCert)> {
        let s = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(&'static str, LoadedCert)> = s
            .managed
            .iter()
            .map(|c| ("acme", c.clone()))
            .chain(s.files.iter().map(|c| ("file", c.clone())))
            .collect();
        if out.is_empty() {
            out.extend(s.fallback.iter().map(|c| ("fallback", c.clone())));
        }
        out
    }

    /// Serve `certs` (managed by fulcrum) first, beside the files, from the next handshake on.
    pub fn set_managed(&self, certs: &[LoadedCert]) {
        self.update(|s| s.managed = certs.to_vec());
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.table.load().pick(hello.server_name()))
    }
}

/// A CA bundle for verifying upstream certificates, in Pingora's form.
#[derive(Clone)]
pub struct CaBundle(pub Arc<[WrappedX509]>);

/// The same certificates, in the same order.
impl PartialEq for CaBundle {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(other.0.iter())
                .all(|(a, b)| a.borrow_raw_cert() == b.borrow_raw_cert())
    }
}

impl Eq for CaBundle {}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CaBundle({} certificates)", self.0.len())
    }
}

/// Load and check a CA bundle (PEM).
pub fn load_ca(path: &Path) -> Result<CaBundle, String> {
    let certs = certificates(path)?;
    let mut out = Vec::with_capacity(certs.len());
    for c in certs {
        X509Certificate::from_der(c.as_ref())
            .map_err(|e| format!("{}: not an X.509 certificate: {e}", path.display()))?;
        out.push(WrappedX509::new(c.as_ref().to_vec(), parse_x509));
    }
    Ok(CaBundle(out.into()))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
