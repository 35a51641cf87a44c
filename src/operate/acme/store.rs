//! The state directory of an ACME listener: the account, the certificate and its key, the lock
//! that lets one process of a fleet order at a time, and the pending HTTP-01 challenges that any
//! process sharing the directory answers. Files are replaced by rename, so a reader never sees
//! half of one.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::serve::challenge;
use crate::tls::LoadedCert;

pub const ACCOUNT: &str = "account.json";
pub const CERT: &str = "cert.pem";
pub const KEY: &str = "key.pem";
pub const LOCK: &str = "lock";

/// One ACME state directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// Held while this process orders; the lock goes with the file (also when the process dies).
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl Store {
    /// The directory, created (with its challenges directory) if missing.
    pub fn open(dir: &Path) -> Result<Store, String> {
        std::fs::create_dir_all(dir.join(challenge::DIR))
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The stored certificate, if there is one that is valid `now` and names every domain.
    pub fn certificate(&self, domains: &[String], now: i64) -> Option<LoadedCert> {
        let (cert, key) = (self.path(CERT), self.path(KEY));
        if !cert.exists() {
            return None;
        }
        match crate::tls::load_pair(&cert, &key, now) {
            Ok(c) if domains.iter().all(|d| c.names.contains(d)) => Some(c),
            Ok(_) => {
                tracing::info!(
                    "acme: {} does not name every domain; ordering a new one",
                    cert.display()
                );
                None
            }
            Err((_, e)) => {
                tracing::warn!("acme: stored certificate unusable: {e}");
                None
            }
        }
    }

    /// Keep a new certificate chain and its key (the key first: a reader that sees the new
    /// certificate then finds its key).
    pub fn save_certificate(&self, chain_pem: &str, key_pem: &str) -> Result<(), String> {
        self.write(KEY, key_pem)?;
        self.write(CERT, chain_pem)
    }

    pub fn account(&self) -> Option<String> {
        std::fs::read_to_string(self.path(ACCOUNT)).ok()
    }

    pub fn save_account(&self, json: &str) -> Result<(), String> {
        self.write(ACCOUNT, json)
    }

    /// Offer `key_authorization` for `token` to every process sharing the directory.
    pub fn save_challenge(&self, token: &str, key_authorization: &str) -> Result<(), String> {
        if !challenge::valid_token(token) {
            return Err(format!("the ACME server sent an unusable token `{token}`"));
        }
        self.write(&format!("{}/{token}", challenge::DIR), key_authorization)
    }

    pub fn remove_challenge(&self, token: &str) {
        if challenge::valid_token(token) {
            let _ = std::fs::remove_file(self.dir.join(challenge::DIR).join(token));
        }
    }

    /// Write `name` whole: a temporary file (owner-only: keys) renamed over it.
    fn write(&self, name: &str, text: &str) -> Result<(), String> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let target = self.path(name);
        let tmp = self.path(&format!("{name}.{}.tmp", std::process::id()));
        let result = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &target));
        result.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write {}: {e}", target.display())
        })
    }

    /// Take the directory's lock, waiting while another process holds it (polled, so that the
    /// wait never blocks a runtime thread). The lock is advisory (flock): it is released when
    /// the holder's file closes, also when that process dies, so it never goes stale.
    pub async fn lock(&self, waited: impl Fn()) -> Result<Lock, String> {
        let path = self.path(LOCK);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Lock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) => {
                    if !told {
                        waited();
                        told = true;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(format!("cannot lock {}: {e}", path.display()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_of_the_lock_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        let first = store.lock(|| panic!("free lock waited for")).await.unwrap();
        let waited = std::sync::atomic::AtomicBool::new(false);
        let second = store.lock(|| waited.store(true, std::sync::atomic::Ordering::SeqCst));
        let second = tokio::time::timeout(Duration::from_millis(600), second).await;
        assert!(second.is_err(), "the lock was taken twice");
        assert!(waited.load(std::sync::atomic::Ordering::SeqCst));
        drop(first);
        tokio::time::timeout(Duration::from_secs(2), store.lock(|| ()))
            .await
            .unwrap()
            .unwrap();
        store.save_challenge("tok-1_x", "tok-1_x.thumb").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("state/challenges/tok-1_x")).unwrap(),
            "tok-1_x.thumb"
        );
        assert!(store.save_challenge("../x", "y").is_err());
        store.remove_challenge("tok-1_x");
        assert!(!dir.path().join("state/challenges/tok-1_x").exists());
        assert!(store.certificate(&["a.example".into()], 0).is_none());
    }
}
