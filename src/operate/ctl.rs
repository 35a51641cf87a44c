//! `fulcrum ctl`: the runtime API's command-line client (drain, enable, disable, weight, cache
//! purge), and
//! the fetch of the running configuration for `-t --diff running`. Plain HTTP/1.1 to the admin
//! listener (a loopback address in any sane setup), one request per connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How long a call may take in all.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read (the running configuration is at most 8 MiB).
const MAX_ANSWER: u64 = 9 << 20;

/// Where the admin listener is and the token to show it.
pub struct Admin {
    pub addr: SocketAddr,
    pub token: Option<Vec<u8>>,
}

/// An answer: status, headers (lower-case names), body.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `--admin`: `http://HOST:PORT`, `HOST:PORT` (a trailing `/` is ignored).
pub fn parse_admin(text: &str) -> Result<SocketAddr, String> {
    let hostport = text
        .strip_prefix("http://")
        .unwrap_or(text)
        .trim_end_matches('/');
    hostport
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("`{text}` is not an admin address: expected http://HOST:PORT"))
}

impl Admin {
    /// One call; Err when the listener cannot be reached or answers garbage.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<Answer, String> {
        let fail = |e: std::io::Error| format!("admin listener {}: {e}", self.addr);
        let mut s = TcpStream::connect_timeout(&self.addr, TIMEOUT).map_err(fail)?;
        s.set_read_timeout(Some(TIMEOUT)).map_err(fail)?;
        s.set_write_timeout(Some(TIMEOUT)).map_err(fail)?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        )
        .into_bytes();
        if let Some(token) = &self.token {
            req.extend_from_slice(b"Authorization: Bearer ");
            req.extend_from_slice(token);
            req.extend_from_slice(b"\r\n");
        }
        let body = body.unwrap_or_default();
        req.extend_from_slice(
            format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        s.write_all(&req).map_err(fail)?;
        let mut raw = Vec::new();
        s.take(MAX_ANSWER).read_to_end(&mut raw).map_err(fail)?;
        parse_answer(&raw)
            .ok_or_else(|| format!("admin listener {}: not an HTTP answer", self.addr))
    }
}

/// A whole HTTP/1.1 answer read to EOF (Content-Length bodies; the admin listener sends one).
fn parse_answer(raw: &[u8]) -> Option<Answer> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let (head, rest) = raw.split_at(end);
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Answer {
        status,
        headers,
        body: rest.get(4..)?.to_vec(),
    })
}

/// A change `fulcrum ctl` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Drain,
    Enable,
    Disable,
    /// A weight, or None to return to the configured one.
    Weight(Option<u32>),
}

/// Where the admin listener is and its token: `--admin` and `--token-file` when given, else
/// what the configuration file says (`admin.listen`, `admin.token_file`/`token_env`).
pub fn admin_for(
    config: Option<&crate::config::Config>,
    admin: Option<&str>,
    token_file: Option<&std::path::Path>,
) -> Result<Admin, String> {
    let addr = match (admin, config.and_then(|c| c.admin.as_ref())) {
        (Some(text), _) => parse_admin(text)?,
        (None, Some(a)) => a.listen,
        (None, None) => {
            return Err("no admin listener: give --admin URL, or -c a file with `admin:`".into())
        }
    };
    let token = match token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .trim()
                .as_bytes()
                .to_vec(),
        ),
        None => config
            .and_then(|c| c.admin.as_ref())
            .and_then(|a| a.token.as_ref())
            .and_then(|t| t.0.first().cloned()),
    };
    Ok(Admin { addr, token })
}

/// `fulcrum ctl ACTION POOL BACKEND`: the answer's body on success, why not otherwise.
pub fn change(admin: &Admin, pool: &str, backend: &str, change: Change) -> Result<String, String> {
    let base = format!(
        "/api/v1/pools/{}/backends/{}",
        percent_encode(pool),
        percent_encode(backend)
    );
    let body;
    let (method, path, body) = match change {
        Change::Drain => ("POST", format!("{base}/drain"), None),
        Change::Enable => ("POST", format!("{base}/enable"), None),
        Change::Disable => ("POST", format!("{base}/disable"), None),
        Change::Weight(w) => {
            body = match w {
                Some(w) => format!("{{\"weight\": {w}}}"),
                None => "{\"weight\": null}".to_string(),
            };
            ("PUT", format!("{base}/weight"), Some(body.as_str()))
        }
    };
    let answer = admin.call(method, &path, body)?;
    success(answer)
}

/// `fulcrum ctl purge URL|--route NAME`: `body` is the purge call's JSON.
pub fn purge(admin: &Admin, body: &str) -> Result<String, String> {
    success(admin.call("POST", "/api/v1/cache/purge", Some(body))?)
}

/// A 2xx answer's body, or why not.
fn success(answer: Answer) -> Result<String, String> {
    let text = String::from_utf8_lossy(&answer.body).into_owned();
    if (200..300).contains(&answer.status) {
        Ok(text)
    } else {
        Err(format!(
            "admin listener answered {}: {}",
            answer.status,
            text.trim()
        ))
    }
}

/// The running process's configuration (`--diff running`): its file and its text.
pub fn running_config(admin: &Admin) -> Result<(std::path::PathBuf, String), String> {
    let answer = admin.call("GET", "/api/v1/config", None)?;
    if answer.status != 200 {
        let text = String::from_utf8_lossy(&answer.body).into_owned();
        return Err(format!(
            "admin listener answered {}: {}",
            answer.status,
            text.trim()
        ));
    }
    let path = answer
        .header("x-fulcrum-config-path")
        .unwrap_or("running")
        .into();
    let text = String::from_utf8(answer.body).map_err(|_| "the configuration is not UTF-8")?;
    Ok((path, text))
}

/// Path-segment escaping for pool and backend names (`/`, `%`, space and other specials).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@[]".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_addresses_and_answers_parse() {
        assert_eq!(
            parse_admin("http://127.0.0.1:9901/").unwrap(),
            "127.0.0.1:9901".parse().unwrap()
        );
        assert_eq!(
            parse_admin("[::1]:9901").unwrap(),
            "[::1]:9901".parse().unwrap()
        );
        assert!(parse_admin("nowhere").is_err());
        let a = parse_answer(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\n\r\nno")
            .unwrap();
        assert_eq!(
            (a.status, a.header("www-authenticate"), a.body.as_slice()),
            (401, Some("Bearer"), b"no".as_slice())
        );
        assert!(parse_answer(b"garbage").is_none());
    }
}
