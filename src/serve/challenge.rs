//! ACME HTTP-01 answers (issue #17): the key authorizations of pending challenges, by token,
//! which plain listeners serve at `/.well-known/acme-challenge/TOKEN` before routing. A token
//! is looked up in memory (orders this process placed), then as a file in each ACME state
//! directory (orders another instance of a fleet sharing it placed).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::RwLock;

/// Where HTTP-01 challenges are asked for (RFC 8555 8.3).
pub const PREFIX: &str = "/.well-known/acme-challenge/";

/// The directory under a state directory where pending challenges are kept, one file a token.
pub const DIR: &str = "challenges";

/// Pending HTTP-01 challenges: token -> key authorization.
#[derive(Debug, Default)]
pub struct Challenges {
    pending: RwLock<HashMap<String, String>>,
    /// The state directories of the ACME listeners (for tokens another process wrote).
    state_dirs: Vec<PathBuf>,
}

/// A token as ACME makes them: base64url, so it is safe as a file name.
pub fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Challenges {
    pub fn new(state_dirs: Vec<PathBuf>) -> Challenges {
        Challenges {
            pending: RwLock::default(),
            state_dirs,
        }
    }

    /// Answer `token` with `key_authorization` until `remove`.
    pub fn insert(&self, token: &str, key_authorization: &str) {
        let mut p = self.pending.write().unwrap_or_else(|e| e.into_inner());
        p.insert(token.to_string(), key_authorization.to_string());
    }

    pub fn remove(&self, token: &str) {
        let mut p = self.pending.write().unwrap_or_else(|e| e.into_inner());
        p.remove(token);
    }

    /// The answer to a request for `path`: None when it is no challenge path (route it);
    /// Some(None) when it is one without a pending challenge (404).
    pub fn answer(&self, path: &str) -> Option<Option<String>> {
        let token = path.strip_prefix(PREFIX)?;
        if self.state_dirs.is_empty() || !valid_token(token) {
            return (!self.state_dirs.is_empty()).then_some(None);
        }
        let found = {
            let p = self.pending.read().unwrap_or_else(|e| e.into_inner());
            p.get(token).cloned()
        };
        Some(found.or_else(|| {
            self.state_dirs.iter().find_map(|d| {
                std::fs::read_to_string(d.join(DIR).join(token))
                    .ok()
                    .map(|s| s.trim().to_string())
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_answered_from_memory_then_from_the_shared_state() {
        let dir = tempfile::tempdir().unwrap();
        let none = Challenges::new(Vec::new());
        assert_eq!(none.answer("/.well-known/acme-challenge/abc"), None);
        let c = Challenges::new(vec![dir.path().to_path_buf()]);
        assert_eq!(c.answer("/index.html"), None);
        assert_eq!(c.answer("/.well-known/acme-challenge/abc"), Some(None));
        c.insert("abc", "abc.thumb");
        assert_eq!(
            c.answer("/.well-known/acme-challenge/abc"),
            Some(Some("abc.thumb".into()))
        );
        c.remove("abc");
        std::fs::create_dir(dir.path().join(DIR)).unwrap();
        std::fs::write(dir.path().join(DIR).join("xyz"), "xyz.other\n").unwrap();
        assert_eq!(
            c.answer("/.well-known/acme-challenge/xyz"),
            Some(Some("xyz.other".into()))
        );
        assert_eq!(
            c.answer("/.well-known/acme-challenge/../../etc"),
            Some(None)
        );
    }
}
