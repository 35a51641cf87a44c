//! Certificates that renew themselves (issue #17): for each TLS listener with `tls.acme`, a
//! background task keeps a certificate for its domains in the listener's `SniResolver`. It
//! serves what the state directory holds, orders a new certificate (account, order, HTTP-01
//! answered by the plain listeners, finalize) when there is none or it is due for renewal
//! (2/3 of its lifetime, or `renew_after`), under the directory's lock so that a fleet sharing
//! it orders once, and backs off after a failure. Until a certificate exists, the listener
//! serves its files, or else a self-signed fallback made at start.

pub mod store;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::model::AcmeConfig;
use crate::operate::certificates::AcmeState;
use crate::serve::challenge::Challenges;
use crate::tls::{unix_now, LoadedCert, SniResolver};
use store::Store;

/// First wait after a failed attempt; it doubles with each failure in a row, up to `MAX_BACKOFF`.
pub const MIN_BACKOFF: Duration = Duration::from_secs(10);
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Longest sleep between two looks at the state directory (another process may renew).
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// How long the ACME server may take to validate the challenges, and to issue.
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(90);
const ISSUE_TIMEOUT: Duration = Duration::from_secs(60);

/// A self-signed certificate for `domains`, served until the first order succeeds.
pub fn fallback(domains: &[String]) -> Result<LoadedCert, String> {
    let made = rcgen_fallback::generate_simple_self_signed(domains.to_vec())
        .map_err(|e| format!("self-signed fallback: {e}"))?;
    crate::tls::load_pem(
        &made.cert.pem(),
        &made.signing_key.serialize_pem(),
        "self-signed fallback",
        unix_now(),
    )
}

/// The state directories of every ACME listener (their pending challenges are answered).
pub fn state_dirs(config: &crate::config::Config) -> Vec<std::path::PathBuf> {
    config
        .listeners
        .iter()
        .filter_map(|l| l.tls.as_ref()?.acme.as_ref())
        .map(|a| a.state_dir.clone())
        .collect()
}

/// The resolver of an ACME listener at start: the stored certificate if it is usable, beside
/// the listener's files; with no files, a self-signed fallback until the first order.
pub fn resolver(
    listener: &str,
    config: &AcmeConfig,
    files: &[LoadedCert],
) -> Result<Option<SniResolver>, String> {
    let store = Store::open(&config.state_dir).map_err(|e| format!("listener {listener}: {e}"))?;
    let stored = store.certificate(&config.domains, unix_now());
    let fallback = match (&stored, files.is_empty()) {
        (None, true) => {
            tracing::warn!(
                "acme: listener {listener}: no certificate for {} yet: serving a self-signed fallback until the first order succeeds",
                config.domains.join(", ")
            );
            Some(fallback(&config.domains).map_err(|e| format!("listener {listener}: {e}"))?)
        }
        (None, false) => {
            tracing::info!(
                "acme: listener {listener}: no certificate for {} yet: serving the configured certificates until the first order succeeds",
                config.domains.join(", ")
            );
            None
        }
        // Served under the stored certificate, which comes first.
        (Some(c), _) => Some(c.clone()),
    };
    let resolver = SniResolver::with_fallback(files, fallback);
    if let (Some(r), Some(c)) = (&resolver, stored) {
        tracing::info!(
            "acme: listener {listener}: serving the stored certificate for {}",
            c.names.join(", ")
        );
        r.set_managed(&[c]);
    }
    Ok(resolver)
}

/// When `cert` is due for renewal (unix seconds).
pub fn renewal_time(cert: &LoadedCert, renew_after: Option<Duration>) -> i64 {
    let lifetime = cert.not_after.saturating_sub(cert.not_before).max(0);
    let after = renew_after.map_or(lifetime * 2 / 3, |d| {
        i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
    });
    cert.not_before
        .saturating_add(after.min(lifetime * 2 / 3).max(1))
}

/// The next wait after `failures` failed attempts in a row (1 or more).
pub fn backoff(failures: u32) -> Duration {
    let doubled = MIN_BACKOFF.saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)));
    doubled.min(MAX_BACKOFF)
}

/// One ACME listener.
pub struct Managed {
    pub listener: String,
    pub config: AcmeConfig,
    pub resolver: Arc<SniResolver>,
    /// What /status and /metrics report of it.
    pub state: Arc<AcmeState>,
}

/// The background service that keeps every ACME listener's certificate.
pub struct AcmeService {
    managed: Vec<Managed>,
    challenges: Arc<Challenges>,
}

impl AcmeService {
    pub fn new(managed: Vec<Managed>, challenges: Arc<Challenges>) -> Self {
        AcmeService {
            managed,
            challenges,
        }
    }
}

#[async_trait]
impl BackgroundService for AcmeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let tasks = self.managed.iter().map(|m| keep(m, &self.challenges));
        tokio::select! {
            _ = futures::future::join_all(tasks) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Keep `m`'s certificate, forever.
async fn keep(m: &Managed, challenges: &Challenges) {
    let mut serving: Option<LoadedCert> = None;
    let mut failures = 0u32;
    loop {
        let wait = match round(m, challenges, &mut serving).await {
            Ok(wait) => {
                failures = 0;
                m.state.succeeded(unix_now().saturating_add(secs(wait)));
                wait
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait = backoff(failures);
                let what = if serving.is_some() {
                    "the current certificate stays"
                } else {
                    "the fallback certificate stays"
                };
                m.state.failed(&e, unix_now().saturating_add(secs(wait)));
                tracing::warn!(
                    "acme: listener {}: {e}; {what}; attempt {failures} failed, next in {}s",
                    m.listener,
                    wait.as_secs()
                );
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// An error with its causes (hyper's "client error (Connect)" says why only in its sources).
fn why(e: &instant_acme::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Serve `cert` if it is not what is served already.
fn install(m: &Managed, cert: LoadedCert, serving: &mut Option<LoadedCert>) {
    if serving.as_ref() == Some(&cert) {
        return;
    }
    m.resolver.set_managed(std::slice::from_ref(&cert));
    tracing::info!(
        "acme: listener {}: serving the certificate for {} (valid until {}, renewal from {})",
        m.listener,
        cert.names.join(", "),
        time_text(cert.not_after),
        time_text(renewal_time(&cert, m.config.renew_after)),
    );
    *serving = Some(cert);
}

fn time_text(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Serve what the state directory holds; order when it holds nothing usable or it is due.
/// Returns how long to wait before the next look.
async fn round(
    m: &Managed,
    challenges: &Challenges,
    serving: &mut Option<LoadedCert>,
) -> Result<Duration, String> {
    let store = Store::open(&m.config.state_dir)?;
    if let Some(wait) = serve_stored(m, &store, serving) {
        return Ok(wait);
    }
    let _lock = store
        .lock(|| {
            tracing::info!(
                "acme: listener {}: another process holds {}; waiting for its order",
                m.listener,
                store.path(store::LOCK).display()
            );
        })
        .await?;
    // Another process may have ordered while this one waited for the lock.
    if let Some(wait) = serve_stored(m, &store, serving) {
        return Ok(wait);
    }
    let renewing = serving.is_some();
    tracing::info!(
        "acme: listener {}: {} a certificate for {} from {}",
        m.listener,
        if renewing { "renewing" } else { "ordering" },
        m.config.domains.join(", "),
        m.config.directory
    );
    let (chain, key) = order(m, &store, challenges).await?;
    store.save_certificate(&chain, &key)?;
    let cert = crate::tls::load_pem(&chain, &key, "the issued certificate", unix_now())?;
    let wait = until_renewal(m, &cert);
    install(m, cert, serving);
    Ok(wait)
}

/// Serve the stored certificate if it is usable and not due; Some(wait until due).
fn serve_stored(m: &Managed, store: &Store, serving: &mut Option<LoadedCert>) -> Option<Duration> {
    let cert = store.certificate(&m.config.domains, unix_now())?;
    let wait = until_renewal(m, &cert);
    let due = wait.is_zero();
    install(m, cert, serving);
    (!due).then_some(wait)
}

fn until_renewal(m: &Managed, cert: &LoadedCert) -> Duration {
    let secs = renewal_time(cert, m.config.renew_after).saturating_sub(unix_now());
    Duration::from_secs(u64::try_from(secs).unwrap_or(0)).min(MAX_SLEEP)
}

/// An HTTPS client for the ACME server that trusts every certificate of `ca_file` (and no
/// other root).
fn https_trusting(ca_file: &std::path::Path) -> Result<Box<dyn instant_acme::HttpClient>, String> {
    let pem = std::fs::read(ca_file).map_err(|e| format!("{}: {e}", ca_file.display()))?;
    let mut roots = pingora::tls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        let c = c.map_err(|e| format!("{}: {e}", ca_file.display()))?;
        roots
            .add(c)
            .map_err(|e| format!("{}: {e}", ca_file.display()))?;
    }
    let tls = pingora::tls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(https);
    Ok(Box::new(client))
}

/// The account of the state directory, created on first use.
async fn account(m: &Managed, store: &Store) -> Result<Account, String> {
    pingora::tls::install_default_crypto_provider();
    let builder = || match &m.config.ca_file {
        Some(ca) => https_trusting(ca).map(Account::builder_with_http),
        None => Account::builder().map_err(|e| why(&e)),
    };
    let e = |e: instant_acme::Error| format!("ACME account: {}", why(&e));
    if let Some(json) = store.account() {
        let credentials: AccountCredentials = serde_json::from_str(&json)
            .map_err(|e| format!("{}: {e}", store.path(store::ACCOUNT).display()))?;
        return builder()?.from_credentials(credentials).await.map_err(e);
    }
    let contact = m.config.email.as_ref().map(|a| format!("mailto:{a}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder()?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            m.config.directory.clone(),
            None,
        )
        .await
        .map_err(e)?;
    let json = serde_json::to_string(&credentials).map_err(|e| format!("account: {e}"))?;
    store.save_account(&json)?;
    tracing::info!(
        "acme: listener {}: account {} created",
        m.listener,
        account.id()
    );
    Ok(account)
}

/// Order a certificate for the domains; (chain PEM, key PEM).
async fn order(
    m: &Managed,
    store: &Store,
    challenges: &Challenges,
) -> Result<(String, String), String> {
    let account = account(m, store).await?;
    let ids: Vec<Identifier> = m
        .config
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(|e| format!("new order: {}", why(&e)))?;
    let mut tokens = Vec::new();
    let answered = answer_challenges(&mut order, store, challenges, &mut tokens).await;
    let ready = match answered {
        Ok(()) => order
            .poll_ready(&RetryPolicy::new().timeout(VALIDATION_TIMEOUT))
            .await
            .map_err(|e| format!("validation: {}", why(&e))),
        Err(e) => Err(e),
    };
    for t in &tokens {
        challenges.remove(t);
        store.remove_challenge(t);
    }
    let status = ready?;
    if status != OrderStatus::Ready {
        return Err(format!(
            "the order is {status:?}: {}",
            why_invalid(&mut order).await
        ));
    }
    let key = order
        .finalize()
        .await
        .map_err(|e| format!("finalize: {}", why(&e)))?;
    let chain = order
        .poll_certificate(&RetryPolicy::new().timeout(ISSUE_TIMEOUT))
        .await
        .map_err(|e| format!("certificate: {}", why(&e)))?;
    Ok((chain, key))
}

/// Offer the HTTP-01 answer of every pending authorization and tell the server it is ready.
async fn answer_challenges(
    order: &mut instant_acme::Order,
    store: &Store,
    challenges: &Challenges,
    tokens: &mut Vec<String>,
) -> Result<(), String> {
    let mut authorizations = order.authorizations();
    while let Some(a) = authorizations.next().await {
        let mut authz = a.map_err(|e| format!("authorization: {}", why(&e)))?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(format!(
                    "authorization for {} is {other:?}",
                    authz.identifier()
                ))
            }
        }
        let name = authz.identifier().to_string();
        let mut challenge = authz
            .challenge(ChallengeType::Http01)
            .ok_or_else(|| format!("the server offers no HTTP-01 challenge for {name}"))?;
        let token = challenge.token.clone();
        let key_authorization = challenge.key_authorization().as_str().to_string();
        store.save_challenge(&token, &key_authorization)?;
        challenges.insert(&token, &key_authorization);
        tokens.push(token);
        challenge
            .set_ready()
            .await
            .map_err(|e| format!("challenge for {name}: {}", why(&e)))?;
    }
    Ok(())
}

/// What the server said about the failed challenges of an invalid order.
async fn why_invalid(order: &mut instant_acme::Order) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        for c in &authz.challenges {
            if let Some(p) = &c.error {
                reasons.push(format!("{}: {p}", authz.identifier()));
            }
        }
    }
    if reasons.is_empty() {
        "no reason given".to_string()
    } else {
        reasons.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_at_two_thirds_or_after_the_configured_age_and_backoff_doubles() {
        let mut cert = fallback(&["a.example.com".to_string()]).unwrap();
        assert_eq!(cert.names, ["a.example.com"]);
        cert.not_before = 1000;
        cert.not_after = 1000 + 90 * 86400;
        assert_eq!(renewal_time(&cert, None), 1000 + 60 * 86400);
        assert_eq!(renewal_time(&cert, Some(Duration::from_secs(5))), 1005);
        // Never later than 2/3 of the lifetime, whatever `renew_after` says.
        assert_eq!(
            renewal_time(&cert, Some(Duration::from_secs(365 * 86400))),
            1000 + 60 * 86400
        );
        assert_eq!(backoff(1), MIN_BACKOFF);
        assert_eq!(backoff(2), MIN_BACKOFF * 2);
        assert_eq!(backoff(4), MIN_BACKOFF * 8);
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}
