//! Hostile-input corpus: raw HTTP/1 requests (framing conflicts, Transfer-Encoding and
//! Content-Length forms, chunk abuse, bare LF, obs-fold, bad names and values, request-line and
//! Host forms, hop-by-hop nomination, Upgrade with early data, pipelining) and hand-written h2c
//! frames (pseudo-header abuse, connection-specific headers, length mismatch, CR/LF/NUL in
//! values, rapid reset, CONTINUATION flood), each sent on its own raw socket to the real binary
//! in front of a recording backend. Every case asserts both what the client gets and exactly
//! what the backend receives; all cases run, and the failures are reported together at the end.
//!
//! Attribution: each case connects from its own loopback address (127.0.x.y), which fulcrum
//! appends to X-Forwarded-For; a request on an upstream connection that carries no such address
//! (bytes smuggled past fulcrum) is charged to the case of the request before it.
//!
//! `HOSTILE_TABLE=path cargo test --test hostile http1_corpus` also writes the verdict table
//! from the case table: the README's "Hostile input" section is that output.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use common::*;

/// How long a client waits, after its last byte, for something it does not expect to come.
const QUIET: Duration = Duration::from_millis(1500);
/// How long a client waits for more once it has every response it expects.
const GRACE: Duration = Duration::from_millis(300);
/// Cases run at once, each on its own connection.
const PARALLEL: usize = 16;

// ---------------------------------------------------------------------------------------------
// The recording backend
// ---------------------------------------------------------------------------------------------

/// One request as the backend parsed it.
#[derive(Clone, Debug)]
struct Received {
    conn: usize,
    method: String,
    target: String,
    version: String,
    /// Names lowercased, values as sent.
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    /// The whole body arrived (the backend answered it).
    complete: bool,
}

impl Received {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The address fulcrum appended to X-Forwarded-For (the case's client), if any.
    fn client(&self) -> Option<Ipv4Addr> {
        let xff = self.header("x-forwarded-for")?;
        let last = String::from_utf8_lossy(xff)
            .rsplit(',')
            .next()?
            .trim()
            .to_string();
        last.parse().ok()
    }

    fn summary(&self) -> String {
        let headers: Vec<String> = self
            .headers
            .iter()
            .filter(|(n, _)| !ADDED.contains(&n.as_str()))
            .map(|(n, v)| format!("{n}: {}", show(v)))
            .collect();
        format!(
            "{} {} {} [{}] body={}{}",
            self.method,
            self.target,
            self.version,
            headers.join(", "),
            show(&self.body),
            if self.complete { "" } else { " (incomplete)" }
        )
    }
}

#[derive(Default)]
struct ConnLog {
    bytes: Vec<u8>,
    closed: bool,
    /// What the backend could not parse (it answered 400 and closed).
    error: Option<String>,
}

#[derive(Default)]
struct RecState {
    conns: Vec<ConnLog>,
    requests: Vec<Received>,
}

/// A raw HTTP/1.1 backend that records every byte per connection and every request it parses,
/// answering each complete request with a fixed `200` (`content-length: 2`, body `ok`) and
/// keeping the connection open.
struct Recorder {
    addr: SocketAddr,
    state: Arc<Mutex<RecState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Parsed {
    /// Not even a whole head yet.
    Nothing,
    /// A head, and the body so far.
    Partial(Received),
    /// A whole request and the bytes it took.
    Whole(Received, usize),
    Bad(String),
}

impl Recorder {
    async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(RecState::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let id = {
                    let mut s = st.lock().unwrap();
                    s.conns.push(ConnLog::default());
                    s.conns.len() - 1
                };
                tokio::spawn(Recorder::serve(id, stream, st.clone()));
            }
        });
        Recorder { addr, state, task }
    }

    async fn serve(id: usize, mut stream: TcpStream, st: Arc<Mutex<RecState>>) {
        let mut buf = Vec::new();
        let mut pos = 0;
        // Index in `requests` of the request at `pos` once its head was recorded.
        let mut current: Option<usize> = None;
        let mut chunk = vec![0u8; 16384];
        loop {
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                st.lock().unwrap().conns[id].closed = true;
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            st.lock().unwrap().conns[id]
                .bytes
                .extend_from_slice(&chunk[..n]);
            loop {
                match parse_request(&buf[pos..], id) {
                    Parsed::Nothing => break,
                    Parsed::Partial(r) => {
                        let mut s = st.lock().unwrap();
                        match current {
                            Some(i) => s.requests[i] = r,
                            None => {
                                s.requests.push(r);
                                current = Some(s.requests.len() - 1);
                            }
                        }
                        break;
                    }
                    Parsed::Whole(r, used) => {
                        {
                            let mut s = st.lock().unwrap();
                            match current.take() {
                                Some(i) => s.requests[i] = r,
                                None => s.requests.push(r),
                            }
                        }
                        pos += used;
                        let ok =
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-backend: rec\r\n\r\nok";
                        if stream.write_all(ok).await.is_err() {
                            st.lock().unwrap().conns[id].closed = true;
                            return;
                        }
                    }
                    Parsed::Bad(why) => {
                        st.lock().unwrap().conns[id].error = Some(why);
                        let _ = stream
                            .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await;
                        st.lock().unwrap().conns[id].closed = true;
                        return;
                    }
                }
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A simple (lenient) request parser: request line, `name: value` lines, body by
/// Transfer-Encoding chunked (wins) or Content-Length.
fn parse_request(buf: &[u8], conn: usize) -> Parsed {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > 1 << 20 {
            Parsed::Bad("head over 1 MiB".into())
        } else {
            Parsed::Nothing
        };
    };
    let head = &buf[..end];
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let line = lines.next().unwrap_or_default();
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    if parts.len() != 3 {
        return Parsed::Bad(format!("request line {}", show(line)));
    }
    let mut req = Received {
        conn,
        method: String::from_utf8_lossy(parts[0]).into_owned(),
        target: String::from_utf8_lossy(parts[1]).into_owned(),
        version: String::from_utf8_lossy(parts[2]).into_owned(),
        headers: Vec::new(),
        body: Vec::new(),
        complete: false,
    };
    for l in lines {
        let Some(colon) = l.iter().position(|&b| b == b':') else {
            return Parsed::Bad(format!("header line {}", show(l)));
        };
        let name = String::from_utf8_lossy(&l[..colon]).to_ascii_lowercase();
        let value = l[colon + 1..].trim_ascii().to_vec();
        req.headers.push((name, value));
    }
    let rest = &buf[end + 4..];
    let chunked = req.headers.iter().any(|(n, _)| n == "transfer-encoding");
    if chunked {
        let mut p = 0;
        loop {
            let Some(eol) = find(&rest[p..], b"\r\n") else {
                return Parsed::Partial(req);
            };
            let size_text = String::from_utf8_lossy(&rest[p..p + eol]).into_owned();
            let size_text = size_text.split(';').next().unwrap_or("").trim();
            let Ok(size) = usize::from_str_radix(size_text, 16) else {
                return Parsed::Bad(format!("chunk size {size_text:?}"));
            };
            p += eol + 2;
            if size == 0 {
                // Trailers up to an empty line.
                loop {
                    let Some(eol) = find(&rest[p..], b"\r\n") else {
                        return Parsed::Partial(req);
                    };
                    p += eol + 2;
                    if eol == 0 {
                        req.complete = true;
                        return Parsed::Whole(req, end + 4 + p);
                    }
                }
            }
            if rest.len() < p + size + 2 {
                req.body
                    .extend_from_slice(&rest[p..rest.len().min(p + size)]);
                return Parsed::Partial(req);
            }
            req.body.extend_from_slice(&rest[p..p + size]);
            if &rest[p + size..p + size + 2] != b"\r\n" {
                return Parsed::Bad("no CRLF after chunk data".into());
            }
            p += size + 2;
        }
    }
    let length = match req.header("content-length") {
        None => 0,
        Some(v) => match String::from_utf8_lossy(v).parse::<usize>() {
            Ok(n) => n,
            Err(_) => return Parsed::Bad(format!("content-length {}", show(v))),
        },
    };
    if rest.len() < length {
        req.body = rest.to_vec();
        return Parsed::Partial(req);
    }
    req.body = rest[..length].to_vec();
    req.complete = true;
    Parsed::Whole(req, end + 4 + length)
}

/// Bytes as readable text: printable ASCII as is, the rest escaped.
fn show(b: &[u8]) -> String {
    let mut s = String::from("\"");
    for &c in b {
        match c {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            b'"' => s.push_str("\\\""),
            0x20..=0x7e => s.push(c as char),
            _ => {
                let _ = write!(s, "\\x{c:02x}");
            }
        }
    }
    if s.len() > 120 {
        let cut = s.char_indices().nth(100).map_or(s.len(), |(i, _)| i);
        s.truncate(cut);
        s.push_str("...");
    }
    s.push('"');
    s
}

/// What the backend got from one case's client: its requests (by X-Forwarded-For), each with
/// whether it was smuggled (no fulcrum address of its own: charged to the request before it on
/// the same upstream connection), and the parse errors of connections it was last on.
struct Attributed {
    requests: Vec<(Received, bool)>,
    conn_errors: Vec<String>,
    /// Whether every upstream connection that carried one of its requests is closed.
    conns_closed: bool,
}

fn attribute(state: &RecState, ip: Ipv4Addr) -> Attributed {
    let mut owner: BTreeMap<usize, Ipv4Addr> = BTreeMap::new();
    let mut requests = Vec::new();
    let mut conns = Vec::new();
    for r in &state.requests {
        let (who, smuggled) = match r.client().filter(is_case_ip) {
            Some(c) => (Some(c), false),
            None => (owner.get(&r.conn).copied(), true),
        };
        if let Some(c) = who {
            owner.insert(r.conn, c);
        }
        if who == Some(ip) {
            requests.push((r.clone(), smuggled));
            conns.push(r.conn);
        }
    }
    let conn_errors = owner
        .iter()
        .filter(|(_, &o)| o == ip)
        .filter_map(|(&c, _)| state.conns[c].error.clone())
        .collect();
    let conns_closed = conns.iter().all(|&c| state.conns[c].closed);
    Attributed {
        requests,
        conn_errors,
        conns_closed,
    }
}

/// The source address of case `i` (never 127.0.0.x, which other traffic may use).
fn case_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1 + (i / 200) as u8, 10 + (i % 200) as u8)
}

fn is_case_ip(ip: &Ipv4Addr) -> bool {
    let o = ip.octets();
    o[0] == 127 && o[1] == 0 && o[2] >= 1
}

// ---------------------------------------------------------------------------------------------
// Expectations
// ---------------------------------------------------------------------------------------------

/// Headers fulcrum adds or owns, checked apart: X-Forwarded-*, X-Request-Id, its own
/// Connection options, and the framing headers (the body is compared decoded).
const ADDED: [&str; 7] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
    "connection",
    "content-length",
    "transfer-encoding",
];

/// A header value that may be anything (but must be there once).
const ANY: &str = "\u{0}any";

/// One request the backend must receive.
#[derive(Clone)]
struct Fwd {
    method: &'static str,
    target: &'static str,
    /// Every header other than `ADDED`, lowercased names (`ANY`: present, any value).
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Vec<u8>,
    /// X-Forwarded-For, `{ip}` for the client's address.
    xff: &'static str,
}

fn fwd(
    method: &'static str,
    target: &'static str,
    headers: &[(&'static str, &str)],
    body: &[u8],
) -> Fwd {
    Fwd {
        method,
        target,
        headers: headers
            .iter()
            .map(|(n, v)| (*n, v.as_bytes().to_vec()))
            .collect(),
        body: body.to_vec(),
        xff: "{ip}",
    }
}

fn host() -> Vec<(&'static str, &'static str)> {
    vec![("host", "t.example")]
}

#[derive(Clone, Copy, PartialEq)]
enum Close {
    /// The client connection must be closed after the last response.
    Must,
    Any,
}

#[derive(Clone)]
enum Upstream {
    /// Not one byte of a request from this client.
    Nothing,
    /// At most a head whose body never completes, on an upstream connection fulcrum closes.
    NoComplete,
    /// Exactly these requests, in order, each whole, none smuggled.
    Requests(Vec<Fwd>),
}

#[derive(Clone, Copy, PartialEq)]
enum Port {
    Plain,
    H2c,
}

/// One HTTP/1 case.
#[derive(Clone)]
struct Case {
    name: &'static str,
    source: &'static str,
    note: &'static str,
    send: Vec<u8>,
    port: Port,
    /// Each response in order: the statuses allowed for it.
    responses: Vec<&'static [u16]>,
    close: Close,
    upstream: Upstream,
    /// Also acceptable: only the first k responses, then close, the backend getting only the
    /// first k requests (a server may close instead of reading on).
    or_close_after: Option<usize>,
}

/// A request that must be refused with 400 and a closed connection, nothing forwarded.
fn bad(name: &'static str, source: &'static str, send: impl AsRef<[u8]>) -> Case {
    Case {
        name,
        source,
        note: "",
        send: send.as_ref().to_vec(),
        port: Port::Plain,
        responses: vec![&[400]],
        close: Close::Must,
        upstream: Upstream::Nothing,
        or_close_after: None,
    }
}

/// A request that must be forwarded as `fwds` (each answered 200 by the backend).
fn good(name: &'static str, source: &'static str, send: impl AsRef<[u8]>, fwds: Vec<Fwd>) -> Case {
    Case {
        name,
        source,
        note: "",
        send: send.as_ref().to_vec(),
        port: Port::Plain,
        responses: vec![&[200]; fwds.len()],
        close: Close::Any,
        upstream: Upstream::Requests(fwds),
        or_close_after: None,
    }
}

impl Case {
    fn note(mut self, note: &'static str) -> Case {
        self.note = note;
        self
    }
    /// The one response may have any of `codes`.
    fn codes(mut self, codes: &'static [u16]) -> Case {
        self.responses = vec![codes];
        self
    }
    /// A body-level error: the head may have been forwarded (fulcrum streams), the body never
    /// completes and the upstream connection is closed.
    fn body_error(mut self) -> Case {
        self.upstream = Upstream::NoComplete;
        self
    }
    fn responses(mut self, r: Vec<&'static [u16]>) -> Case {
        self.responses = r;
        self
    }
    fn closes(mut self) -> Case {
        self.close = Close::Must;
        self
    }
    fn or_close_after(mut self, k: usize) -> Case {
        self.or_close_after = Some(k);
        self
    }
    fn on_h2c(mut self) -> Case {
        self.port = Port::H2c;
        self
    }

    fn client_text(&self) -> String {
        let codes: Vec<String> = self
            .responses
            .iter()
            .map(|c| {
                c.iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(" or ")
            })
            .collect();
        let mut s = if codes.is_empty() {
            "no response".to_string()
        } else {
            codes.join(", then ")
        };
        if self.close == Close::Must {
            s.push_str(", then close");
        }
        if let Some(k) = self.or_close_after {
            let _ = write!(s, " (or the first {k}, then close)");
        }
        s
    }
}

fn upstream_text(u: &Upstream) -> String {
    match u {
        Upstream::Nothing => "nothing".into(),
        Upstream::NoComplete => {
            "no complete request (a streamed head is cut off, its connection closed)".into()
        }
        Upstream::Requests(f) => f
            .iter()
            .map(|f| {
                let body = if f.body.is_empty() {
                    String::new()
                } else {
                    format!(" body {}", show(&f.body))
                };
                format!("`{} {}`{body}", f.method, f.target)
            })
            .collect::<Vec<_>>()
            .join(", then "),
    }
}

// ---------------------------------------------------------------------------------------------
// The HTTP/1 case table
// ---------------------------------------------------------------------------------------------

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A body that is itself a whole request.
const EVIL: &str = "GET /evil HTTP/1.1\r\nHost: t.example\r\n\r\n";

fn http1_cases() -> Vec<Case> {
    let hello = b"hello".as_slice();
    let post = |extra: &str, body: &str| -> Vec<u8> {
        format!("POST / HTTP/1.1\r\nHost: t.example\r\n{extra}\r\n{body}").into_bytes()
    };
    let chunked_hello = "5\r\nhello\r\n0\r\n\r\n";
    let post_hello = || vec![fwd("POST", "/", &host(), hello)];
    let get_root = || vec![fwd("GET", "/", &host(), b"")];
    let mut v = vec![
        // --- valid requests, forwarded exactly ---------------------------------------------
        good(
            "valid-get",
            "RFC 9112 3.2.1 origin-form",
            "GET /a?b=c HTTP/1.1\r\nHost: t.example\r\nX-Custom: v\r\n\r\n",
            vec![fwd("GET", "/a?b=c", &[("host", "t.example"), ("x-custom", "v")], b"")],
        ),
        good("valid-post-content-length", "RFC 9112 6.2", post("Content-Length: 5\r\n", "hello"), post_hello()),
        good(
            "valid-post-chunked",
            "RFC 9112 7.1",
            post("Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            vec![fwd("POST", "/", &host(), b"hello world")],
        ),
        good(
            "valid-chunk-size-leading-zeros-uppercase",
            "RFC 9112 7.1 chunk-size = 1*HEXDIG",
            post("Transfer-Encoding: chunked\r\n", "00A\r\n0123456789\r\n0\r\n\r\n"),
            vec![fwd("POST", "/", &host(), b"0123456789")],
        ),
        good(
            "valid-chunk-extension",
            "RFC 9112 7.1.1 (unknown extensions ignored)",
            post("Transfer-Encoding: chunked\r\n", "5;ext=\"v\"\r\nhello\r\n0\r\n\r\n"),
            post_hello(),
        ),
        good(
            "valid-chunk-extension-bws",
            "RFC 9112 7.1.1 BWS before `;`",
            post("Transfer-Encoding: chunked\r\n", "5 ;ext=v\r\nhello\r\n0\r\n\r\n"),
            post_hello(),
        )
        .note("BWS is allowed before the `;` of a chunk extension."),
        good(
            "valid-chunked-trailer",
            "RFC 9112 7.1.2",
            post("Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n"),
            post_hello(),
        )
        .note("Trailer fields may be forwarded or dropped (RFC 9110 6.5.1); the body is exact."),
        good(
            "valid-te-chunked-mixed-case",
            "RFC 9112 7 (coding names are case-insensitive)",
            post("Transfer-Encoding: ChUnKeD\r\n", chunked_hello),
            post_hello(),
        ),
        good(
            "valid-te-tab-ows",
            "RFC 9110 5.6.3 OWS includes HTAB",
            post("Transfer-Encoding:\tchunked\r\n", chunked_hello),
            post_hello(),
        ),
        good(
            "valid-cl-leading-zeros",
            "RFC 9110 8.6 Content-Length = 1*DIGIT",
            post("Content-Length: 005\r\n", "hello"),
            post_hello(),
        )
        .note("nginx accepts leading zeros too."),
        good("valid-cl-no-space", "RFC 9112 5.1 OWS", post("Content-Length:5\r\n", "hello"), post_hello()),
        good(
            "valid-cl-trailing-ows",
            "RFC 9112 5.1 (OWS around the value is not part of it)",
            post("Content-Length: 5 \t\r\n", "hello"),
            post_hello(),
        ),
        good(
            "valid-header-name-mixed-case",
            "RFC 9110 5.1 (names are case-insensitive)",
            post("cOnTeNt-LeNgTh: 5\r\n", "hello"),
            post_hello(),
        ),
        good(
            "valid-get-with-body",
            "RFC 9110 9.3.1; Kettle 2019 (GET with a body)",
            "GET / HTTP/1.1\r\nHost: t.example\r\nContent-Length: 5\r\n\r\nhello",
            vec![fwd("GET", "/", &host(), hello)],
        )
        .note("The body is framed and forwarded with its length, never left for a second request."),
        good(
            "valid-get-chunked-empty",
            "RFC 9112 7.1",
            "GET / HTTP/1.1\r\nHost: t.example\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            get_root(),
        ),
        Case {
            upstream: Upstream::Requests(vec![Fwd {
                headers: vec![("host", b"t.example".to_vec()), ("x-text", b"caf\xe9".to_vec())],
                ..fwd("GET", "/", &[], b"")
            }]),
            ..good("valid-obs-text-value", "RFC 9110 5.5 obs-text", b"GET / HTTP/1.1\r\nHost: t.example\r\nX-Text: caf\xe9\r\n\r\n", vec![])
        }
        .responses(vec![&[200]])
        .note("obs-text (0x80-0xFF) in a value is forwarded byte for byte."),
        // --- conflicting framing -------------------------------------------------------------
        bad(
            "cl-te",
            "RFC 9112 6.3 rule 3; Kettle 2019 CL.TE",
            post("Content-Length: 13\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\nSMUGGLED"),
        )
        .note("The RFC lets a server let TE win and close; fulcrum refuses, as nginx does."),
        bad(
            "te-cl",
            "RFC 9112 6.3 rule 3; Kettle 2019 TE.CL",
            post("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", "8\r\nSMUGGLED\r\n0\r\n\r\n"),
        ),
        bad(
            "te-te-second-obfuscated",
            "Kettle 2019 TE.TE",
            post("Transfer-Encoding: chunked\r\nTransfer-Encoding: cow\r\n", "0\r\n\r\n"),
        )
        .codes(&[400, 501])
        .note("The combined value `chunked, cow` does not end in chunked."),
        bad(
            "cl-cl-different",
            "RFC 9112 6.3 rule 5; RFC 9110 8.6",
            post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
        ),
        bad(
            "cl-cl-identical",
            "RFC 9110 8.6",
            post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"),
        )
        .note("The RFC allows merging identical values; nginx refuses any duplicate."),
        bad("cl-list", "RFC 9110 8.6", post("Content-Length: 5, 5\r\n", "hello"))
            .note("As above: nginx refuses a list."),
        bad(
            "cl-cl-differing-case",
            "RFC 9110 5.1, 8.6",
            post("Content-Length: 5\r\ncontent-length: 5\r\n", "hello"),
        ),
        bad(
            "te-underscore-with-cl",
            "nginx underscores_in_headers; Kettle 2019 header-name variants",
            post("Transfer_Encoding: chunked\r\nContent-Length: 5\r\n", "0\r\n\r\n"),
        )
        .note("A backend that folds `_` into `-` would see TE.CL."),
        bad(
            "cl-underscore",
            "nginx underscores_in_headers",
            post("Content_Length: 5\r\n", "hello"),
        ),
        bad(
            "te-http10",
            "RFC 9112 6.1 (HTTP/1.0 with Transfer-Encoding)",
            format!("POST / HTTP/1.0\r\nHost: t.example\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_hello}"),
        ),
        bad(
            "te-http10-with-cl",
            "RFC 9112 6.1",
            "POST / HTTP/1.0\r\nHost: t.example\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello",
        ),
        // --- Transfer-Encoding obfuscations --------------------------------------------------
        bad("te-xchunked", "Kettle 2019 TE obfuscation", post("Transfer-Encoding: xchunked\r\n", chunked_hello))
            .codes(&[400, 501]),
        bad(
            "te-chunked-identity",
            "RFC 9112 6.3 rule 4 (chunked not final)",
            post("Transfer-Encoding: chunked, identity\r\n", chunked_hello),
        )
        .codes(&[400, 501])
        .note("The RFC says 400; nginx answers 501 for any coding but `chunked`."),
        bad(
            "te-identity",
            "RFC 9112 6.3 rule 4; RFC 9110 (identity is not a coding)",
            post("Transfer-Encoding: identity\r\nContent-Length: 5\r\n", "hello"),
        )
        .codes(&[400, 501]),
        bad(
            "te-gzip-chunked",
            "RFC 9112 6.1 (unknown coding: 501)",
            post("Transfer-Encoding: gzip, chunked\r\n", chunked_hello),
        )
        .codes(&[400, 501]),
        bad(
            "te-chunked-twice-in-list",
            "RFC 9112 7 (chunked at most once)",
            post("Transfer-Encoding: chunked, chunked\r\n", chunked_hello),
        )
        .codes(&[400, 501]),
        bad(
            "te-two-chunked-headers",
            "RFC 9112 7; Kettle 2019 TE.TE",
            post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", chunked_hello),
        )
        .codes(&[400, 501]),
        bad(
            "te-space-before-colon",
            "RFC 9112 5.1 (MUST 400); Kettle 2019",
            post("Transfer-Encoding : chunked\r\n", chunked_hello),
        ),
        bad(
            "te-line-with-leading-space",
            "RFC 9112 5.2 obs-fold; Kettle 2019 ` Transfer-Encoding`",
            post("X-A: b\r\n Transfer-Encoding: chunked\r\n", chunked_hello),
        ),
        bad(
            "te-value-obs-fold",
            "RFC 9112 5.2 obs-fold",
            post("Transfer-Encoding:\r\n chunked\r\n", chunked_hello),
        ),
        bad("te-quoted", "Kettle 2019 TE obfuscation", post("Transfer-Encoding: \"chunked\"\r\n", chunked_hello))
            .codes(&[400, 501]),
        bad(
            "te-vertical-tab",
            "RFC 9110 5.5 (CTL in a value); Kettle 2019",
            cat(&[b"POST / HTTP/1.1\r\nHost: t.example\r\nTransfer-Encoding: chunked\x0b\r\n\r\n", chunked_hello.as_bytes()]),
        ),
        bad(
            "te-empty-with-cl",
            "RFC 9112 6.3",
            post("Transfer-Encoding: \r\nContent-Length: 5\r\n", "hello"),
        )
        .codes(&[400, 501]),
        bad(
            "te-nul",
            "RFC 9110 5.5 (NUL in a value)",
            cat(&[b"POST / HTTP/1.1\r\nHost: t.example\r\nTransfer-Encoding: chunked\x00\r\n\r\n", chunked_hello.as_bytes()]),
        ),
        // --- Content-Length forms ------------------------------------------------------------
        bad("cl-plus", "RFC 9110 8.6 (1*DIGIT)", post("Content-Length: +5\r\n", "hello")),
        bad("cl-negative", "RFC 9110 8.6", post("Content-Length: -1\r\n", "hello")),
        bad("cl-hex", "RFC 9110 8.6", post("Content-Length: 0x5\r\n", "hello")),
        bad("cl-space-inside", "RFC 9110 8.6", post("Content-Length: 5 5\r\n", "hello")),
        bad("cl-decimal", "RFC 9110 8.6", post("Content-Length: 5.0\r\n", "hello")),
        bad(
            "cl-overflow",
            "RFC 9110 8.6 (integer overflow)",
            post("Content-Length: 99999999999999999999\r\n", "hello"),
        ),
        bad("cl-empty", "RFC 9110 8.6", post("Content-Length: \r\n", "hello")),
        // --- chunk-size and chunk-extension abuse --------------------------------------------
        bad(
            "chunk-size-overflow",
            "RFC 9112 7.1 (overflow must be caught)",
            post("Transfer-Encoding: chunked\r\n", "FFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n"),
        )
        .body_error(),
        bad(
            "chunk-size-negative",
            "RFC 9112 7.1",
            post("Transfer-Encoding: chunked\r\n", "-5\r\nhello\r\n0\r\n\r\n"),
        )
        .body_error(),
        bad(
            "chunk-size-0x",
            "RFC 9112 7.1",
            post("Transfer-Encoding: chunked\r\n", "0x5\r\nhello\r\n0\r\n\r\n"),
        )
        .body_error(),
        bad(
            "chunk-size-trailing-garbage",
            "RFC 9112 7.1",
            post("Transfer-Encoding: chunked\r\n", "5xyz\r\nhello\r\n0\r\n\r\n"),
        )
        .body_error(),
        good(
            "chunk-size-empty",
            "RFC 9112 7.1",
            post("Transfer-Encoding: chunked\r\n", "\r\nhello\r\n0\r\n\r\n"),
            vec![fwd("POST", "/", &host(), b"")],
        )
        .note("Pingora's chunked decoder reads an empty size line as the last chunk and drops what follows: the backend gets an empty body, framed by fulcrum. One reading, no desync; nginx answers 400."),

        bad(
            "chunk-missing-crlf-after-data",
            "RFC 9112 7.1",
            post("Transfer-Encoding: chunked\r\n", "5\r\nhello0\r\n\r\n"),
        )
        .body_error(),
        bad(
            "chunk-data-longer-than-size",
            "RFC 9112 7.1",
            post("Transfer-Encoding: chunked\r\n", "5\r\nhelloworld\r\n0\r\n\r\n"),
        )
        .body_error(),
        bad(
            "chunk-size-bare-lf",
            "RFC 9112 7.1; Kallus/Grenfeldt 2025 funky chunks",
            post("Transfer-Encoding: chunked\r\n", "5\nhello\r\n0\r\n\r\n"),
        )
        .body_error(),
        bad(
            "chunk-data-bare-lf",
            "RFC 9112 7.1; funky chunks",
            post("Transfer-Encoding: chunked\r\n", "5\r\nhello\n0\r\n\r\n"),
        )
        .body_error(),
        good(
            "chunk-ext-bare-lf",
            "RFC 9112 7.1.1; funky chunks (TERM.EXT)",
            post("Transfer-Encoding: chunked\r\n", "5;a=b\nc\r\nhello\r\n0\r\n\r\n"),
            post_hello(),
        )
        .note("Pingora reads the chunk line to its CRLF, the bare LF inside the extension included, and the backend gets `hello` re-framed by fulcrum: one reading, no desync. nginx answers 400."),
        bad(
            "chunk-ext-bare-cr",
            "RFC 9112 2.2, 7.1.1; funky chunks",
            post("Transfer-Encoding: chunked\r\n", "5;a=b\rc\r\nhello\r\n0\r\n\r\n"),
        )
        .body_error(),
        bad(
            "chunk-ext-64k",
            "RFC 9112 7.1.1 (limit extensions, answer 4xx)",
            post(
                "Transfer-Encoding: chunked\r\n",
                &format!("5;{}\r\nhello\r\n0\r\n\r\n", "a".repeat(65536)),
            ),
        )
        .codes(&[400, 413])
        .body_error()
        .note("A 64 KiB extension on one chunk: over any reasonable limit (hyper allows 16 KiB)."),
        bad(
            "chunk-last-missing-then-request",
            "RFC 9112 7.1; Kettle 2019",
            post(
                "Transfer-Encoding: chunked\r\n",
                "5\r\nhello\r\nGET /smuggled HTTP/1.1\r\nHost: t.example\r\n\r\n",
            ),
        )
        .body_error(),
        // --- bare LF, bare CR, obs-fold ------------------------------------------------------
        good("bare-lf-everywhere", "RFC 9112 2.2", "GET / HTTP/1.1\nHost: t.example\n\n", get_root())
            .note("The RFC lets a recipient accept a bare LF (nginx does); fulcrum accepts it too."),
        good("bare-lf-request-line", "RFC 9112 2.2", "GET / HTTP/1.1\nHost: t.example\r\n\r\n", get_root()),
        good(
            "bare-lf-header-line",
            "RFC 9112 2.2",
            "GET / HTTP/1.1\r\nHost: t.example\nX-A: b\r\n\r\n",
            vec![fwd("GET", "/", &[("host", "t.example"), ("x-a", "b")], b"")],
        ),
        bad("bare-cr-in-value", "RFC 9112 2.2 (bare CR: reject or replace)", "GET / HTTP/1.1\r\nHost: t.example\r\nX-A: a\rb\r\n\r\n"),
        bad("obs-fold-space", "RFC 9112 5.2 obs-fold", "GET / HTTP/1.1\r\nHost: t.example\r\nX-A: a\r\n b\r\n\r\n")
            .note("The RFC allows replacing the fold by SP; fulcrum refuses (400)."),
        bad("obs-fold-tab", "RFC 9112 5.2 obs-fold", "GET / HTTP/1.1\r\nHost: t.example\r\nX-A: a\r\n\tb\r\n\r\n"),
        bad(
            "whitespace-before-first-header",
            "RFC 9112 2.2",
            "GET / HTTP/1.1\r\n Host: t.example\r\nHost: t.example\r\n\r\n",
        ),
        // --- bad header names ----------------------------------------------------------------
        bad("name-with-space", "RFC 9110 5.1 field-name = token", "GET / HTTP/1.1\r\nHost: t.example\r\nX A: b\r\n\r\n"),
        bad("name-empty", "RFC 9110 5.1", "GET / HTTP/1.1\r\nHost: t.example\r\n: b\r\n\r\n"),
        bad("name-space-before-colon", "RFC 9112 5.1 (MUST 400)", "GET / HTTP/1.1\r\nHost: t.example\r\nX-A : b\r\n\r\n"),
        bad("name-tab-before-colon", "RFC 9112 5.1", post("Content-Length\t: 5\r\n", "hello")),
        bad("name-paren", "RFC 9110 5.6.2 tchar", "GET / HTTP/1.1\r\nHost: t.example\r\nX(A): b\r\n\r\n"),
        bad("name-ctl", "RFC 9110 5.6.2 tchar", b"GET / HTTP/1.1\r\nHost: t.example\r\nX\x01A: b\r\n\r\n"),
        bad("name-non-ascii", "RFC 9110 5.6.2 tchar", b"GET / HTTP/1.1\r\nHost: t.example\r\nX-\xc3\xa9: b\r\n\r\n"),
        bad("name-without-colon", "RFC 9112 5", "GET / HTTP/1.1\r\nHost: t.example\r\nX-A b\r\n\r\n"),
        // --- bad header values ---------------------------------------------------------------
        bad("value-nul", "RFC 9110 5.5 (NUL: reject)", b"GET / HTTP/1.1\r\nHost: t.example\r\nX-A: a\x00b\r\n\r\n"),
        bad("value-ctl", "RFC 9110 5.5 field-vchar", b"GET / HTTP/1.1\r\nHost: t.example\r\nX-A: a\x01b\r\n\r\n"),
        bad("value-del", "RFC 9110 5.5 field-vchar", b"GET / HTTP/1.1\r\nHost: t.example\r\nX-A: a\x7fb\r\n\r\n"),
        // --- request-line forms --------------------------------------------------------------
        good(
            "absolute-form",
            "RFC 9112 3.2.2; 3.2.1 (origin-form to the origin)",
            "GET http://t.example/abs?q=1 HTTP/1.1\r\nHost: t.example\r\n\r\n",
            vec![fwd("GET", "/abs?q=1", &host(), b"")],
        ),
        bad(
            "absolute-form-host-differs",
            "RFC 9112 3.2.2 (Host replaced by the target's authority); Kettle 2019 Host confusion",
            "GET http://t.example/abs HTTP/1.1\r\nHost: other.example\r\n\r\n",
        )
        .note("Pingora refuses an authority that differs from Host before fulcrum sees the request; the RFC would have the proxy use the authority. Refusing leaves no room for Host confusion."),
        bad(
            "absolute-form-without-host",
            "RFC 9112 3.2 (1.1 without Host: 400)",
            "GET http://t.example/abs HTTP/1.1\r\n\r\n",
        ),
        bad(
            "absolute-form-userinfo",
            "RFC 9110 4.2.4 (userinfo is an error)",
            "GET http://user@t.example/ HTTP/1.1\r\nHost: t.example\r\n\r\n",
        ),
        bad(
            "authority-form-on-get",
            "RFC 9112 3.2.3 (CONNECT only)",
            "GET admin.internal:80 HTTP/1.1\r\nHost: t.example\r\n\r\n",
        ),
        bad(
            "connect",
            "RFC 9110 9.3.6 (no tunnels here)",
            "CONNECT t.example:443 HTTP/1.1\r\nHost: t.example:443\r\n\r\n",
        )
        .codes(&[405, 501])
        .note("A reverse proxy opens no tunnel: nginx answers 405."),
        good(
            "asterisk-form-options",
            "RFC 9112 3.2.4",
            "OPTIONS * HTTP/1.1\r\nHost: t.example\r\n\r\n",
            vec![fwd("OPTIONS", "*", &host(), b"")],
        )
        .note("Valid; forwarded as is (nginx refuses `*` with 400)."),
        bad("asterisk-form-on-get", "RFC 9112 3.2.4", "GET * HTTP/1.1\r\nHost: t.example\r\n\r\n"),
        bad("relative-target", "RFC 9112 3.2", "GET a/b HTTP/1.1\r\nHost: t.example\r\n\r\n"),
        bad("request-line-double-space", "RFC 9112 3", "GET  / HTTP/1.1\r\nHost: t.example\r\n\r\n"),
        bad("request-line-trailing-space", "RFC 9112 3", "GET / HTTP/1.1 \r\nHost: t.example\r\n\r\n"),
        bad("request-line-tabs", "RFC 9112 3", "GET\t/\tHTTP/1.1\r\nHost: t.example\r\n\r\n"),
        bad("request-line-no-version", "RFC 9112 3 (no HTTP/0.9)", "GET /\r\nHost: t.example\r\n\r\n"),
        good(
            "target-with-space",
            "RFC 9112 3.2",
            "GET /a b HTTP/1.1\r\nHost: t.example\r\n\r\n",
            vec![fwd("GET", "/a%20b", &host(), b"")],
        )
        .note("Pingora percent-encodes what cannot be in a target: the backend gets a well-formed `/a%20b`. nginx answers 400."),
        good(
            "target-ctl",
            "RFC 9112 3.2",
            b"GET /a\x01 HTTP/1.1\r\nHost: t.example\r\n\r\n",
            vec![fwd("GET", "/a%01", &host(), b"")],
        )
        .note("Percent-encoded by Pingora, as above."),
        bad("method-not-token", "RFC 9110 9.1 method = token", "G(T / HTTP/1.1\r\nHost: t.example\r\n\r\n"),
        good(
            "method-lowercase",
            "RFC 9110 9.1 (methods are case-sensitive)",
            "get / HTTP/1.1\r\nHost: t.example\r\n\r\n",
            vec![fwd("get", "/", &host(), b"")],
        )
        .note("`get` is a valid (unknown) method token, forwarded as is, never turned into GET; nginx refuses it with 400."),
        bad(
            "version-1.2",
            "RFC 9112 2.3 (higher minor: treat as 1.1)",
            "GET / HTTP/1.2\r\nHost: t.example\r\n\r\n",
        )
        .note("Pingora's parser knows 1.0 and 1.1 only; the RFC would serve it as 1.1, as nginx does. No HTTP/1.2 client exists."),
        bad("version-2.0-in-http1", "RFC 9110 15.6.6 (505)", "GET / HTTP/2.0\r\nHost: t.example\r\n\r\n")
            .codes(&[400, 505])
            .note("nginx answers 505."),
        bad("version-lowercase", "RFC 9112 2.3 (HTTP-name is case-sensitive)", "GET / http/1.1\r\nHost: t.example\r\n\r\n"),
        bad("version-two-digit-minor", "RFC 9112 2.3", "GET / HTTP/1.10\r\nHost: t.example\r\n\r\n"),
        // --- Host forms ----------------------------------------------------------------------
        bad("host-missing", "RFC 9112 3.2 (MUST 400)", "GET / HTTP/1.1\r\nX-A: b\r\n\r\n"),
        good(
            "host-missing-http10",
            "RFC 9112 3.2; RFC 9110 2.5 (a proxy sends its own version)",
            "GET /ten HTTP/1.0\r\n\r\n",
            vec![fwd("GET", "/ten", &[("host", ANY)], b"")],
        )
        .closes()
        .note("Forwarded as HTTP/1.1 with a Host of fulcrum's choosing; the 1.0 client's connection closes."),
        bad(
            "host-twice-different",
            "RFC 9112 3.2 (MUST 400)",
            "GET / HTTP/1.1\r\nHost: t.example\r\nHost: admin.internal\r\n\r\n",
        ),
        bad(
            "host-twice-identical",
            "RFC 9112 3.2 (MUST 400)",
            "GET / HTTP/1.1\r\nHost: t.example\r\nHost: t.example\r\n\r\n",
        ),
        bad(
            "host-with-space",
            "RFC 9110 7.2; RFC 3986 3.2.2",
            "GET / HTTP/1.1\r\nHost: t.example admin.internal\r\n\r\n",
        ),
        bad("host-userinfo", "RFC 9110 7.2 (Host = uri-host [:port])", "GET / HTTP/1.1\r\nHost: user@t.example\r\n\r\n"),
        bad("host-bad-port", "RFC 3986 3.2.3 port = *DIGIT", "GET / HTTP/1.1\r\nHost: t.example:8o\r\n\r\n"),
        bad("host-with-path", "RFC 9110 7.2", "GET / HTTP/1.1\r\nHost: t.example/admin\r\n\r\n"),
        bad("host-ipv6-unbracketed", "RFC 3986 3.2.2", "GET / HTTP/1.1\r\nHost: ::1\r\n\r\n"),
        bad("host-empty", "RFC 9110 7.2", "GET / HTTP/1.1\r\nHost: \r\n\r\n")
            .note("An empty Host only fits a target without authority; nginx refuses it (400)."),
        good(
            "host-ipv6-bracketed",
            "RFC 3986 3.2.2 IP-literal",
            "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
            vec![fwd("GET", "/", &[("host", "[::1]:8080")], b"")],
        ),
        good(
            "host-ipv4-port",
            "RFC 3986 3.2.2",
            "GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
            vec![fwd("GET", "/", &[("host", "127.0.0.1:8080")], b"")],
        ),
        good(
            "host-underscore",
            "RFC 3986 3.2.2 reg-name (unreserved `_`)",
            "GET / HTTP/1.1\r\nHost: t_x.example\r\n\r\n",
            vec![fwd("GET", "/", &[("host", "t_x.example")], b"")],
        ),
        // --- hop-by-hop nomination -----------------------------------------------------------
        bad(
            "connection-nominates-xff",
            "RFC 9110 7.6.1; Davison 2019 hop-by-hop abuse",
            "GET / HTTP/1.1\r\nHost: t.example\r\nConnection: close, X-Forwarded-For\r\nX-Forwarded-For: 203.0.113.66\r\n\r\n",
        )
        .note("Pingora refuses a Connection header that nominates a protected field (X-Forwarded-For, Host, framing): the client cannot strip what the proxy vouches for."),
        good(
            "connection-nominates-content-length",
            "RFC 9110 7.6.1; Davison 2019",
            post("Connection: Content-Length\r\nContent-Length: 5\r\n", "hello"),
            post_hello(),
        )
        .note("Framing survives: the body reaches the backend framed, never as a second request."),
        good(
            "connection-nominates-transfer-encoding",
            "RFC 9110 7.6.1; Davison 2019",
            post("Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n", chunked_hello),
            post_hello(),
        ),
        bad(
            "connection-nominates-host",
            "RFC 9110 7.6.1; RFC 9112 3.2 (Host required)",
            "GET / HTTP/1.1\r\nHost: t.example\r\nConnection: Host\r\n\r\n",
        )
        .note("Refused by Pingora, as above."),
        good(
            "connection-nominates-custom",
            "RFC 9110 7.6.1 (MUST remove nominated fields)",
            "GET / HTTP/1.1\r\nHost: t.example\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\r\n",
            get_root(),
        ),
        good(
            "connection-keep-alive-header",
            "RFC 9110 7.6.1 (`keep-alive` option nominates Keep-Alive)",
            "GET / HTTP/1.1\r\nHost: t.example\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n",
            get_root(),
        ),
        // --- Upgrade with early data ---------------------------------------------------------
        good(
            "upgrade-refused-early-garbage",
            "RFC 9110 7.8; Egorov 2019 WebSocket smuggling",
            "GET /ws HTTP/1.1\r\nHost: t.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nEARLY BYTES\r\n\r\n",
            vec![fwd(
                "GET",
                "/ws",
                &[
                    ("host", "t.example"),
                    ("upgrade", "websocket"),
                    ("sec-websocket-version", "13"),
                    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ],
                b"",
            )],
        )
        .responses(vec![&[200], &[400]])
        .closes()
        .or_close_after(1)
        .note("The backend answers 200, not 101: no tunnel; the early bytes are the next (malformed) request, or the connection closes after the 200."),
        good(
            "upgrade-refused-early-request",
            "RFC 9110 7.8; Egorov 2019 WebSocket smuggling",
            "GET /ws HTTP/1.1\r\nHost: t.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nGET /second HTTP/1.1\r\nHost: t.example\r\n\r\n",
            vec![
                fwd(
                    "GET",
                    "/ws",
                    &[
                        ("host", "t.example"),
                        ("upgrade", "websocket"),
                        ("sec-websocket-version", "13"),
                        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                    ],
                    b"",
                ),
                fwd("GET", "/second", &host(), b""),
            ],
        )
        .or_close_after(1)
        .note("The early request is proxied as a request of its own (with fulcrum's headers), or the connection closes after the first response; never tunnelled."),
        good(
            "upgrade-h2c-stripped",
            "RFC 9113 3.1 (h2c upgrade deprecated); Bishop Fox 2020 h2c smuggling",
            "GET / HTTP/1.1\r\nHost: t.example\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
            get_root(),
        )
        .note("Upgrade and HTTP2-Settings are hop-by-hop (nominated) and h2c is not a protocol fulcrum tunnels."),
        // --- pipelining ----------------------------------------------------------------------
        good(
            "pipeline-two-gets",
            "RFC 9112 9.3.2",
            "GET /1 HTTP/1.1\r\nHost: t.example\r\n\r\nGET /2 HTTP/1.1\r\nHost: t.example\r\n\r\n",
            vec![fwd("GET", "/1", &host(), b""), fwd("GET", "/2", &host(), b"")],
        ),
        good(
            "pipeline-three-with-body",
            "RFC 9112 9.3.2",
            "GET /1 HTTP/1.1\r\nHost: t.example\r\n\r\nPOST /2 HTTP/1.1\r\nHost: t.example\r\nContent-Length: 5\r\n\r\nhelloGET /3 HTTP/1.1\r\nHost: t.example\r\n\r\n",
            vec![fwd("GET", "/1", &host(), b""), fwd("POST", "/2", &host(), hello), fwd("GET", "/3", &host(), b"")],
        ),
        good(
            "pipeline-chunked-then-get",
            "RFC 9112 9.3.2, 7.1",
            format!("POST /1 HTTP/1.1\r\nHost: t.example\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_hello}GET /2 HTTP/1.1\r\nHost: t.example\r\n\r\n"),
            vec![fwd("POST", "/1", &host(), hello), fwd("GET", "/2", &host(), b"")],
        ),
        good(
            "pipeline-body-looks-like-request",
            "Kettle 2019 (a body is never parsed as a request)",
            format!(
                "POST /1 HTTP/1.1\r\nHost: t.example\r\nContent-Length: {}\r\n\r\n{EVIL}GET /2 HTTP/1.1\r\nHost: t.example\r\n\r\n",
                EVIL.len()
            ),
            vec![
                fwd("POST", "/1", &host(), EVIL.as_bytes()),
                fwd("GET", "/2", &host(), b""),
            ],
        ),
        bad(
            "pipeline-after-400",
            "RFC 9112 9.6 (close after a refused request)",
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\nGET /after HTTP/1.1\r\nHost: t.example\r\n\r\n",
        ),
        good(
            "pipeline-after-connection-close",
            "RFC 9112 9.6",
            "GET /1 HTTP/1.1\r\nHost: t.example\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nHost: t.example\r\n\r\n",
            vec![fwd("GET", "/1", &host(), b"")],
        )
        .closes(),
        good(
            "pipeline-http10-no-keepalive",
            "RFC 9112 9.3",
            "GET /1 HTTP/1.0\r\nHost: t.example\r\n\r\nGET /2 HTTP/1.0\r\nHost: t.example\r\n\r\n",
            vec![fwd("GET", "/1", &host(), b"")],
        )
        .closes(),
        // --- the h2c listener speaking HTTP/1 ------------------------------------------------
        good(
            "h2c-listener-short-http10",
            "RFC 9113 3.3 (prior knowledge only when the preface comes)",
            "GET / HTTP/1.0\r\n\r\n",
            vec![fwd("GET", "/", &[("host", ANY)], b"")],
        )
        .closes()
        .on_h2c()
        .note("18 bytes, shorter than the 24-byte preface: still answered as HTTP/1."),
        good(
            "h2c-listener-http11",
            "RFC 9113 3.3",
            "GET /h1 HTTP/1.1\r\nHost: t.example\r\n\r\n",
            vec![fwd("GET", "/h1", &host(), b"")],
        )
        .on_h2c(),
    ];
    // Every name is unique (they name the rows of the verdict table).
    let mut names: Vec<&str> = v.iter().map(|c| c.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), v.len(), "duplicate case names");
    v.shrink_to_fit();
    v
}

// ---------------------------------------------------------------------------------------------
// Running HTTP/1 cases
// ---------------------------------------------------------------------------------------------

/// What a client read.
struct GotClient {
    statuses: Vec<u16>,
    closed: bool,
    /// Bytes that are not a response.
    garbage: Option<String>,
}

impl GotClient {
    fn text(&self) -> String {
        let mut s = if self.statuses.is_empty() {
            "no response".to_string()
        } else {
            self.statuses
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", then ")
        };
        s.push_str(if self.closed {
            ", then close"
        } else {
            " (left open)"
        });
        if let Some(g) = &self.garbage {
            let _ = write!(s, ", then unparsable {g}");
        }
        s
    }
}

/// Parse one response off the front of `buf`: its status and length, None if incomplete.
fn parse_response(buf: &[u8], closed: bool) -> Result<Option<(u16, usize)>, String> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status: u16 = head
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| show(&buf[..end.min(60)]))?;
    let field = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name)
                .then(|| v.trim().to_ascii_lowercase())
        })
    };
    let rest = &buf[end + 4..];
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Some((status, end + 4)));
    }
    if field("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        let mut p = 0;
        loop {
            let Some(eol) = find(&rest[p..], b"\r\n") else {
                return Ok(None);
            };
            let size_text = String::from_utf8_lossy(&rest[p..p + eol]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("chunk size {size_text:?}"))?;
            p += eol + 2;
            if size == 0 {
                let Some(t) = find(&rest[p..], b"\r\n") else {
                    return Ok(None);
                };
                // (no trailers expected from fulcrum)
                return Ok(Some((status, end + 4 + p + t + 2)));
            }
            if rest.len() < p + size + 2 {
                return Ok(None);
            }
            p += size + 2;
        }
    }
    match field("content-length") {
        Some(l) => {
            let l: usize = l.parse().map_err(|_| format!("content-length {l}"))?;
            Ok((rest.len() >= l).then_some((status, end + 4 + l)))
        }
        None if closed => Ok(Some((status, buf.len()))),
        None => Ok(None),
    }
}

/// Connect from `ip`, send `bytes`, and read responses until the connection closes, or it has
/// been quiet for `QUIET` (`GRACE` once `want` responses arrived); at most 8 s in all.
async fn exchange(port: u16, ip: Ipv4Addr, bytes: &[u8], want: usize) -> GotClient {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(ip), 0)).unwrap();
    let mut s = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap();
    let mut got = GotClient {
        statuses: Vec::new(),
        closed: false,
        garbage: None,
    };
    if s.write_all(bytes).await.is_err() {
        got.closed = true;
    }
    let hard = Instant::now() + Duration::from_secs(8);
    let mut buf = Vec::new();
    let mut pos = 0;
    let mut chunk = vec![0u8; 16384];
    while !got.closed && Instant::now() < hard {
        let quiet = if got.statuses.len() >= want {
            GRACE
        } else {
            QUIET
        };
        match tokio::time::timeout(quiet, s.read(&mut chunk)).await {
            Err(_) => break,
            Ok(Ok(0)) | Ok(Err(_)) => got.closed = true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        loop {
            match parse_response(&buf[pos..], got.closed) {
                Ok(Some((status, used))) => {
                    if status >= 200 {
                        got.statuses.push(status);
                    }
                    pos += used;
                }
                Ok(None) => break,
                Err(g) => {
                    got.garbage = Some(g);
                    pos = buf.len();
                    break;
                }
            }
        }
    }
    if !got.closed && pos < buf.len() {
        got.garbage = Some(format!("partial {}", show(&buf[pos..])));
    }
    got
}

/// Compare what the backend got from one case with what it must get; None when it matches.
fn check_upstream(want: &Upstream, got: &Attributed, ip: Ipv4Addr) -> Option<String> {
    let list = || {
        let all: Vec<String> = got
            .requests
            .iter()
            .map(|(r, smuggled)| {
                format!(
                    "{}{}",
                    if *smuggled { "SMUGGLED " } else { "" },
                    r.summary()
                )
            })
            .collect();
        if all.is_empty() {
            "nothing".to_string()
        } else {
            all.join(" | ")
        }
    };
    if !got.conn_errors.is_empty() {
        return Some(format!(
            "{}; backend could not parse: {}",
            list(),
            got.conn_errors.join("; ")
        ));
    }
    match want {
        Upstream::Nothing => (!got.requests.is_empty()).then(list),
        Upstream::NoComplete => {
            if got.requests.iter().any(|(r, s)| r.complete || *s) || got.requests.len() > 1 {
                Some(list())
            } else if !got.conns_closed {
                Some(format!("{}; the upstream connection was left open", list()))
            } else {
                None
            }
        }
        Upstream::Requests(fwds) => {
            if got.requests.len() != fwds.len() {
                return Some(list());
            }
            for ((r, smuggled), f) in got.requests.iter().zip(fwds) {
                if let Some(why) = check_one(r, *smuggled, f, ip) {
                    return Some(format!("{}: {why}", list()));
                }
            }
            None
        }
    }
}

fn check_one(r: &Received, smuggled: bool, f: &Fwd, ip: Ipv4Addr) -> Option<String> {
    if smuggled {
        return Some("a request without fulcrum's headers".into());
    }
    if !r.complete {
        return Some("incomplete body".into());
    }
    if r.method != f.method || r.target != f.target {
        return Some(format!("request line `{} {}`", r.method, r.target));
    }
    if r.version != "HTTP/1.1" {
        return Some(format!(
            "version {} (a proxy sends its own, HTTP/1.1)",
            r.version
        ));
    }
    if r.body != f.body {
        return Some(format!("body {}", show(&r.body)));
    }
    let framing: Vec<&String> = r
        .headers
        .iter()
        .filter(|(n, _)| n == "content-length" || n == "transfer-encoding")
        .map(|(n, _)| n)
        .collect();
    if framing.len() > 1 {
        return Some(format!("framing headers {framing:?}"));
    }
    if let Some(te) = r.header("transfer-encoding") {
        if !te.eq_ignore_ascii_case(b"chunked") {
            return Some(format!("transfer-encoding {}", show(te)));
        }
    }
    let xff = f.xff.replace("{ip}", &ip.to_string());
    let all_xff: Vec<&[u8]> = r
        .headers
        .iter()
        .filter(|(n, _)| n == "x-forwarded-for")
        .map(|(_, v)| v.as_slice())
        .collect();
    if all_xff != [xff.as_bytes()] {
        let got: Vec<String> = all_xff.iter().map(|v| show(v)).collect();
        return Some(format!("x-forwarded-for {got:?}, want {xff:?}"));
    }
    if r.header("x-forwarded-proto") != Some(b"http") {
        return Some("x-forwarded-proto is not `http`".into());
    }
    if r.header("x-request-id").is_none_or(|v| v.is_empty()) {
        return Some("no x-request-id".into());
    }
    // X-Forwarded-Host is the Host the client asked for; a 1.0 client that sent none gets
    // none, while the backend gets a Host of fulcrum's choosing.
    if r.header("x-forwarded-host").is_some() && r.header("x-forwarded-host") != r.header("host") {
        return Some(format!(
            "x-forwarded-host {} differs from host {}",
            show(r.header("x-forwarded-host").unwrap_or(b"(none)")),
            show(r.header("host").unwrap_or(b"(none)"))
        ));
    }
    for (n, v) in r.headers.iter().filter(|(n, _)| n == "connection") {
        let own = String::from_utf8_lossy(v).to_ascii_lowercase();
        if own
            .split(',')
            .map(str::trim)
            .any(|o| !["keep-alive", "close", "upgrade", ""].contains(&o))
        {
            return Some(format!("{n}: {own} (the client's connection options)"));
        }
    }
    // The rest, as multisets per name (the order of different names carries no meaning).
    let mut have: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for (n, v) in r
        .headers
        .iter()
        .filter(|(n, _)| !ADDED.contains(&n.as_str()))
    {
        have.entry(n.clone()).or_default().push(v.clone());
    }
    let mut want: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for (n, v) in &f.headers {
        want.entry(n.to_string()).or_default().push(v.clone());
    }
    for (n, vs) in want.iter_mut() {
        if let Some(h) = have.get(n) {
            if vs.len() == 1 && vs[0] == ANY.as_bytes() && h.len() == 1 {
                vs[0] = h[0].clone();
            }
        }
    }
    if have != want {
        let fmt = |m: &BTreeMap<String, Vec<Vec<u8>>>| {
            m.iter()
                .flat_map(|(n, vs)| vs.iter().map(move |v| format!("{n}: {}", show(v))))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Some(format!("headers [{}], want [{}]", fmt(&have), fmt(&want)));
    }
    None
}

/// fulcrum with a plain listener and an h2c one in front of one recording backend.
struct Rig {
    rec: Recorder,
    fulcrum: Fulcrum,
    plain: u16,
    h2c: u16,
}

async fn rig() -> Rig {
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let plain = free_port();
    let h2c = free_port();
    let yaml = format!(
        "{}listeners:\n  - {{name: plain, listen: 127.0.0.1:{plain}}}\n  - {{name: h2c, listen: 127.0.0.1:{h2c}, h2c: true}}\nroutes: [{{pool: p}}]\npools:\n  p:\n    retries: 0\n    passive_health: off\n    timeouts: {{read: 3s}}\n    backends: [{{address: \"{}\"}}]\n",
        Fulcrum::server_block(dir.path()),
        rec.addr
    );
    let fulcrum = Fulcrum::start_yaml(dir, plain, &yaml).await;
    wait_for_async(Duration::from_secs(10), "the h2c listener", || async {
        TcpStream::connect(("127.0.0.1", h2c)).await.is_ok()
    })
    .await;
    Rig {
        rec,
        fulcrum,
        plain,
        h2c,
    }
}

/// A failed case: its name, what was expected and what came.
struct Failure {
    name: String,
    want: String,
    got: String,
}

/// What differs between a case's expectations and what its client and the backend got.
fn verdict(
    responses: &[&[u16]],
    close: Close,
    want: &Upstream,
    got: &GotClient,
    upstream: &Attributed,
    ip: Ipv4Addr,
) -> Vec<String> {
    let mut problems = Vec::new();
    let client_ok = got.statuses.len() == responses.len()
        && got
            .statuses
            .iter()
            .zip(responses)
            .all(|(s, ok)| ok.contains(s))
        && (close == Close::Any || got.closed)
        && got.garbage.is_none();
    if !client_ok {
        problems.push(format!("client: {}", got.text()));
    }
    if let Some(why) = check_upstream(want, upstream, ip) {
        problems.push(format!("backend: {why}"));
    }
    problems
}

async fn run_case(r: &Rig, i: usize, c: &Case) -> Option<Failure> {
    let ip = case_ip(i);
    let port = if c.port == Port::H2c { r.h2c } else { r.plain };
    let got = exchange(port, ip, &c.send, c.responses.len()).await;
    // Forwarded requests reached the backend before their responses; give a body-level
    // error time to be cut off upstream.
    if matches!(c.upstream, Upstream::NoComplete) {
        let deadline = Instant::now() + Duration::from_secs(4);
        while Instant::now() < deadline && !attribute(&r.rec.state.lock().unwrap(), ip).conns_closed
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let upstream = attribute(&r.rec.state.lock().unwrap(), ip);
    let mut problems = verdict(&c.responses, c.close, &c.upstream, &got, &upstream, ip);
    if let (Some(k), Upstream::Requests(fwds)) = (c.or_close_after, &c.upstream) {
        let fwds = Upstream::Requests(fwds[..k].to_vec());
        if verdict(&c.responses[..k], Close::Must, &fwds, &got, &upstream, ip).is_empty() {
            problems.clear();
        }
    }
    (!problems.is_empty()).then(|| Failure {
        name: c.name.to_string(),
        want: format!(
            "client: {}; backend: {}",
            c.client_text(),
            upstream_text(&c.upstream)
        ),
        got: problems.join("; "),
    })
}

/// Print every failure as a table and fail if there is any.
fn report(what: &str, total: usize, failures: &[Failure]) {
    let mut out = String::new();
    for f in failures {
        let _ = writeln!(
            out,
            "\n- {}\n    want: {}\n    got:  {}",
            f.name, f.want, f.got
        );
    }
    println!("{what}: {} of {total} cases pass", total - failures.len());
    assert!(
        failures.is_empty(),
        "{what}: {} of {total} cases fail:{out}",
        failures.len()
    );
}

/// Requests the backend got that no case owns (no address of a case at all).
fn orphans(state: &RecState) -> Vec<String> {
    let mut owned: BTreeMap<usize, bool> = BTreeMap::new();
    let mut out = Vec::new();
    for r in &state.requests {
        if r.client().filter(is_case_ip).is_some() {
            owned.insert(r.conn, true);
        } else if !owned.contains_key(&r.conn) {
            out.push(r.summary());
        }
    }
    for (i, c) in state.conns.iter().enumerate() {
        if let (Some(e), false) = (&c.error, owned.contains_key(&i)) {
            out.push(format!("unparsable bytes on a connection of no case: {e}"));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_corpus() {
    let cases = http1_cases();
    if let Ok(path) = std::env::var("HOSTILE_TABLE") {
        std::fs::write(path, verdict_table(&cases, &h2_cases())).unwrap();
    }
    let r = rig().await;
    let start = Instant::now();
    let results: Vec<(usize, Option<Failure>)> = futures::stream::iter(cases.iter().enumerate())
        .map(|(i, c)| {
            let r = &r;
            async move { (i, run_case(r, i, c).await) }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let mut results = results;
    results.sort_by_key(|(i, _)| *i);
    let mut failures: Vec<Failure> = results.into_iter().filter_map(|(_, f)| f).collect();
    let stray = orphans(&r.rec.state.lock().unwrap());
    if !stray.is_empty() {
        failures.push(Failure {
            name: "(no case)".into(),
            want: "every request the backend gets carries a case's address".into(),
            got: stray.join(" | "),
        });
    }
    println!("{} cases in {:?}", cases.len(), start.elapsed());
    drop(r.fulcrum);
    report("HTTP/1 corpus", cases.len(), &failures);
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 (h2c, prior knowledge), frames by hand
// ---------------------------------------------------------------------------------------------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;
const PROTOCOL_ERROR: u32 = 1;
const CANCEL: u32 = 8;

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A header block of literal fields without indexing, new names (RFC 7541 6.2.2), no Huffman.
fn block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in fields {
        out.push(0);
        hpack_int(&mut out, 0, 7, n.len());
        out.extend_from_slice(n);
        hpack_int(&mut out, 0, 7, v.len());
        out.extend_from_slice(v);
    }
    out
}

/// The `:status` of a response header block, from the first fields fulcrum's encoder writes
/// (static-table index or indexed name with a plain or Huffman-coded digit string).
fn decode_status(b: &[u8]) -> Option<u16> {
    let mut p = 0;
    while p < b.len() && b[p] & 0xe0 == 0x20 {
        // dynamic table size update
        p += 1;
        while p < b.len() && b[p - 1] & 0x1f == 0x1f && b[p] & 0x80 != 0 {
            p += 1;
        }
    }
    let first = *b.get(p)?;
    if first & 0x80 != 0 {
        return [200, 204, 206, 304, 400, 404, 500]
            .get(((first & 0x7f) as usize).checked_sub(8)?)
            .copied();
    }
    let idx = if first & 0x40 != 0 {
        first & 0x3f
    } else {
        first & 0x0f
    };
    if !(8..=14).contains(&idx) {
        return None;
    }
    let lenb = *b.get(p + 1)?;
    let len = (lenb & 0x7f) as usize;
    let v = b.get(p + 2..p + 2 + len)?;
    let text = if lenb & 0x80 == 0 {
        String::from_utf8_lossy(v).into_owned()
    } else {
        // Huffman: '0'-'2' are 5-bit codes 0-2, '3'-'9' 6-bit codes 0x19-0x1f.
        let bits: Vec<u8> = v
            .iter()
            .flat_map(|x| (0..8).rev().map(move |i| (x >> i) & 1))
            .collect();
        let mut s = String::new();
        let mut i = 0;
        while i + 5 <= bits.len() {
            let five = bits[i..i + 5].iter().fold(0u8, |a, b| a << 1 | b);
            if five <= 2 {
                s.push((b'0' + five) as char);
                i += 5;
            } else if i + 6 <= bits.len() {
                let six = five << 1 | bits[i + 5];
                if (0x19..=0x1f).contains(&six) {
                    s.push((b'3' + six - 0x19) as char);
                    i += 6;
                } else {
                    break;
                }
            } else {
                break;
            }
        }
        s
    };
    text.parse().ok()
}

#[derive(Debug, PartialEq)]
enum Event {
    Status(u32, Option<u16>),
    /// END_STREAM from the server on this stream.
    End(u32),
    Rst(u32, u32),
    GoAway(u32),
    Closed,
}

/// Read frames until stream `watch` ends or is reset, a GOAWAY, EOF, or `QUIET` of silence;
/// SETTINGS are acknowledged. At most `limit` in all.
async fn read_events(s: &mut TcpStream, watch: u32, limit: Duration) -> Vec<Event> {
    let mut events = Vec::new();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16384];
    let hard = Instant::now() + limit;
    // header blocks being assembled, by stream
    let mut pending: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    loop {
        while buf.len() >= 9 {
            let len = (buf[0] as usize) << 16 | (buf[1] as usize) << 8 | buf[2] as usize;
            if buf.len() < 9 + len {
                break;
            }
            let (ty, flags) = (buf[3], buf[4]);
            let id = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let payload: Vec<u8> = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            match ty {
                SETTINGS if flags & 1 == 0 => {
                    let _ = s.write_all(&frame(SETTINGS, 1, 0, &[])).await;
                }
                HEADERS | CONTINUATION => {
                    let mut p = payload.as_slice();
                    if ty == HEADERS {
                        let pad = if flags & 0x8 != 0 { p[0] as usize } else { 0 };
                        if flags & 0x8 != 0 {
                            p = &p[1..];
                        }
                        if flags & 0x20 != 0 {
                            p = &p[5..];
                        }
                        p = &p[..p.len() - pad];
                    }
                    pending.entry(id).or_default().extend_from_slice(p);
                    if flags & END_HEADERS != 0 {
                        let b = pending.remove(&id).unwrap_or_default();
                        events.push(Event::Status(id, decode_status(&b)));
                    }
                    if flags & END_STREAM != 0 {
                        events.push(Event::End(id));
                    }
                }
                DATA if flags & END_STREAM != 0 => events.push(Event::End(id)),
                RST_STREAM => {
                    let code = payload
                        .get(..4)
                        .map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                    events.push(Event::Rst(id, code));
                }
                GOAWAY => {
                    let code = payload
                        .get(4..8)
                        .map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                    events.push(Event::GoAway(code));
                    return events;
                }
                _ => {}
            }
        }
        if events
            .iter()
            .any(|e| matches!(e, Event::End(i) | Event::Rst(i, _) if *i == watch))
        {
            return events;
        }
        let left = hard.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return events;
        }
        match tokio::time::timeout(QUIET.min(left), s.read(&mut chunk)).await {
            Err(_) => return events,
            Ok(Ok(0)) | Ok(Err(_)) => {
                events.push(Event::Closed);
                return events;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn events_text(events: &[Event]) -> String {
    if events.is_empty() {
        return "nothing within the deadline".into();
    }
    events
        .iter()
        .map(|e| match e {
            Event::Status(i, Some(s)) => format!("stream {i} :status {s}"),
            Event::Status(i, None) => format!("stream {i} headers (status unreadable)"),
            Event::End(i) => format!("stream {i} end"),
            Event::Rst(i, c) => format!("RST_STREAM({i}, code {c})"),
            Event::GoAway(c) => format!("GOAWAY(code {c})"),
            Event::Closed => "connection closed".into(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Clone, Copy)]
enum H2Want {
    /// A response with this status on stream 1, the connection kept.
    Status(u16),
    /// RST_STREAM(PROTOCOL_ERROR) on stream 1, or a 400 on it (RFC 9113 8.1.1); a GOAWAY
    /// (PROTOCOL_ERROR) too, as an endpoint may treat a stream error as a connection error
    /// (RFC 9113 5.4.1).
    Malformed,
}

/// One HTTP/2 case: frames after the preface and an empty SETTINGS, on stream 1.
struct H2Case {
    name: &'static str,
    source: &'static str,
    note: &'static str,
    frames: Vec<u8>,
    want: H2Want,
    upstream: Upstream,
}

fn h2_get(extra: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut fields: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", b"t.example"),
        (b":path", b"/h2"),
    ];
    fields.extend_from_slice(extra);
    frame(HEADERS, END_STREAM | END_HEADERS, 1, &block(&fields))
}

fn h2_bad(name: &'static str, source: &'static str, fields: &[(&[u8], &[u8])]) -> H2Case {
    H2Case {
        name,
        source,
        note: "",
        frames: frame(HEADERS, END_STREAM | END_HEADERS, 1, &block(fields)),
        want: H2Want::Malformed,
        upstream: Upstream::Nothing,
    }
}

fn h2_cases() -> Vec<H2Case> {
    let m: (&[u8], &[u8]) = (b":method", b"GET");
    let s: (&[u8], &[u8]) = (b":scheme", b"http");
    let a: (&[u8], &[u8]) = (b":authority", b"t.example");
    let p: (&[u8], &[u8]) = (b":path", b"/h2");
    let post = |cl: &[u8], data: &[u8]| {
        let mut f = frame(
            HEADERS,
            END_HEADERS,
            1,
            &block(&[
                (b":method", b"POST"),
                s,
                a,
                (b":path", b"/h2"),
                (b"content-length", cl),
            ]),
        );
        f.extend(frame(DATA, END_STREAM, 1, data));
        f
    };
    let get = |extra: &[(&[u8], &[u8])]| H2Case {
        name: "",
        source: "",
        note: "",
        frames: h2_get(extra),
        want: H2Want::Malformed,
        upstream: Upstream::Nothing,
    };
    vec![
        H2Case {
            name: "h2-valid-get",
            source: "RFC 9113 8.3.1; 8.3.1 (Host from :authority for HTTP/1.1)",
            want: H2Want::Status(200),
            upstream: Upstream::Requests(vec![fwd("GET", "/h2", &host(), b"")]),
            ..get(&[])
        },
        H2Case {
            name: "h2-valid-post",
            source: "RFC 9113 8.1.1",
            frames: post(b"5", b"hello"),
            want: H2Want::Status(200),
            upstream: Upstream::Requests(vec![fwd("POST", "/h2", &host(), b"hello")]),
            ..get(&[])
        },
        h2_bad("h2-missing-method", "RFC 9113 8.3.1", &[s, a, p]),
        h2_bad("h2-missing-path", "RFC 9113 8.3.1", &[m, s, a]),
        h2_bad("h2-missing-scheme", "RFC 9113 8.3.1", &[m, a, p]),
        h2_bad(
            "h2-duplicate-path",
            "RFC 9113 8.3.1",
            &[m, s, a, p, (b":path", b"/admin")],
        ),
        h2_bad(
            "h2-pseudo-after-regular",
            "RFC 9113 8.3",
            &[m, s, a, (b"x-a", b"b"), p],
        ),
        h2_bad(
            "h2-unknown-pseudo",
            "RFC 9113 8.3",
            &[m, s, a, p, (b":foo", b"bar")],
        ),
        h2_bad(
            "h2-empty-path",
            "RFC 9113 8.3.1",
            &[m, s, a, (b":path", b"")],
        ),
        h2_bad(
            "h2-path-without-slash",
            "RFC 9113 8.3.1",
            &[m, s, a, (b":path", b"admin")],
        ),
        H2Case {
            name: "h2-connection-header",
            source: "RFC 9113 8.2.2",
            ..get(&[(b"connection", b"keep-alive")])
        },
        H2Case {
            name: "h2-transfer-encoding",
            source: "RFC 9113 8.2.2",
            ..get(&[(b"transfer-encoding", b"chunked")])
        },
        H2Case {
            name: "h2-keep-alive-header",
            source: "RFC 9113 8.2.2",
            ..get(&[(b"keep-alive", b"timeout=5")])
        },
        H2Case {
            name: "h2-upgrade-header",
            source: "RFC 9113 8.2.2",
            ..get(&[(b"upgrade", b"websocket")])
        },
        H2Case {
            name: "h2-te-gzip",
            source: "RFC 9113 8.2.2 (te: only `trailers`)",
            ..get(&[(b"te", b"gzip")])
        },
        H2Case {
            name: "h2-uppercase-name",
            source: "RFC 9113 8.2.1",
            ..get(&[(b"X-Upper", b"1")])
        },
        H2Case {
            name: "h2-cr-in-value",
            source: "RFC 9113 8.2.1",
            ..get(&[(b"x-a", b"a\rb")])
        },
        H2Case {
            name: "h2-lf-in-value",
            source: "RFC 9113 8.2.1; Kettle 2021 HTTP/2 request splitting",
            ..get(&[(b"x-a", b"a\r\nTransfer-Encoding: chunked")])
        },
        H2Case {
            name: "h2-nul-in-value",
            source: "RFC 9113 8.2.1",
            ..get(&[(b"x-a", b"a\x00b")])
        },
        H2Case {
            name: "h2-colon-in-name",
            source: "RFC 9113 8.2.1; Kettle 2021",
            ..get(&[(b"x-a:b", b"c")])
        },
        h2_bad(
            "h2-authority-with-space",
            "RFC 9113 8.3.1; RFC 3986 3.2.2",
            &[m, s, (b":authority", b"t.example admin.internal"), p],
        ),
        h2_bad(
            "h2-host-differs-from-authority",
            "RFC 9113 8.3.1 (SHOULD treat as malformed)",
            &[m, s, a, p, (b"host", b"admin.internal")],
        ),
        H2Case {
            name: "h2-content-length-short",
            source: "RFC 9113 8.1.1 (DATA longer than content-length)",
            frames: post(b"5", b"hello world"),
            upstream: Upstream::NoComplete,
            ..get(&[])
        },
        H2Case {
            name: "h2-content-length-long",
            source: "RFC 9113 8.1.1 (DATA shorter than content-length)",
            frames: post(b"10", b"hello"),
            upstream: Upstream::NoComplete,
            ..get(&[])
        },
    ]
}

/// Open an h2c connection from `ip`: preface and an empty SETTINGS sent.
async fn h2_connect(port: u16, ip: Ipv4Addr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(ip), 0)).unwrap();
    let mut s = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap();
    s.write_all(&cat(&[PREFACE, &frame(SETTINGS, 0, 0, &[])]))
        .await
        .unwrap();
    s
}

async fn run_h2_case(r: &Rig, i: usize, c: &H2Case) -> Option<Failure> {
    let ip = case_ip(i);
    let mut s = h2_connect(r.h2c, ip).await;
    let _ = s.write_all(&c.frames).await;
    let events = read_events(&mut s, 1, Duration::from_secs(6)).await;
    if matches!(c.upstream, Upstream::NoComplete) {
        let deadline = Instant::now() + Duration::from_secs(4);
        while Instant::now() < deadline && !attribute(&r.rec.state.lock().unwrap(), ip).conns_closed
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let client_ok = match c.want {
        H2Want::Status(st) => {
            events.contains(&Event::Status(1, Some(st)))
                && !events
                    .iter()
                    .any(|e| matches!(e, Event::GoAway(_) | Event::Rst(..)))
        }
        H2Want::Malformed => {
            events.iter().any(|e| {
                matches!(
                    e,
                    Event::Rst(1, PROTOCOL_ERROR)
                        | Event::Status(1, Some(400))
                        | Event::GoAway(PROTOCOL_ERROR)
                )
            }) && !events
                .iter()
                .any(|e| matches!(e, Event::Status(1, Some(s)) if *s != 400))
        }
    };
    let mut problems = Vec::new();
    if !client_ok {
        problems.push(format!("client: {}", events_text(&events)));
    }
    let upstream = attribute(&r.rec.state.lock().unwrap(), ip);
    if let Some(why) = check_upstream(&c.upstream, &upstream, ip) {
        problems.push(format!("backend: {why}"));
    }
    (!problems.is_empty()).then(|| Failure {
        name: c.name.to_string(),
        want: format!(
            "client: {}; backend: {}",
            h2_want_text(c.want),
            upstream_text(&c.upstream)
        ),
        got: problems.join("; "),
    })
}

fn h2_want_text(w: H2Want) -> String {
    match w {
        H2Want::Status(s) => format!(":status {s}"),
        H2Want::Malformed => {
            "RST_STREAM(PROTOCOL_ERROR) or :status 400 (or GOAWAY(PROTOCOL_ERROR), RFC 9113 5.4.1)"
                .into()
        }
    }
}

/// Rapid reset (CVE-2023-44487): 100 streams, each HEADERS (a whole GET) then RST_STREAM(CANCEL)
/// at once. The client is cut off with GOAWAY and almost none reach the backend: fulcrum drops a
/// stream already reset when it is about to pick a backend, but a reset read after that look is
/// for a request already on its way (before that look existed, 12-14 of 100 got through).
///
/// With `post`, each stream is a POST whose 5-byte body never comes (HEADERS without
/// END_STREAM): no request may reach the backend whole, and an upstream connection that carried
/// a head is closed.
/// How many of the 100 reset GETs may reach the backend: those whose reset was read after them.
const RAPID_RESET_LET_THROUGH: usize = 5;

async fn rapid_reset(r: &Rig, i: usize, post: bool) -> Option<Failure> {
    let ip = case_ip(i);
    let mut s = h2_connect(r.h2c, ip).await;
    let mut bytes = Vec::new();
    let (method, flags): (&[u8], u8) = if post {
        (b"POST", END_HEADERS)
    } else {
        (b"GET", END_STREAM | END_HEADERS)
    };
    let mut fields: Vec<(&[u8], &[u8])> = vec![
        (b":method", method),
        (b":scheme", b"http"),
        (b":authority", b"t.example"),
        (b":path", b"/rr"),
    ];
    if post {
        fields.push((b"content-length", b"5"));
    }
    for k in 0..100u32 {
        let id = 1 + 2 * k;
        bytes.extend(frame(HEADERS, flags, id, &block(&fields)));
        bytes.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    // One write per pair, as a client that resets each request as soon as it sent it.
    for pair in bytes.chunks(bytes.len() / 100) {
        if s.write_all(pair).await.is_err() {
            break;
        }
    }
    // Stream 0 never ends: this reads until GOAWAY, EOF or silence.
    let events = read_events(&mut s, u32::MAX, Duration::from_secs(6)).await;
    // Requests that were let through reach the backend soon after; read until a deadline.
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (forwarded, whole, open) = {
        let st = r.rec.state.lock().unwrap();
        let a = attribute(&st, ip);
        let whole = a.requests.iter().filter(|(r, _)| r.complete).count();
        (a.requests.len(), whole, !a.conns_closed)
    };
    let goaway = events.iter().any(|e| matches!(e, Event::GoAway(_)));
    let ok = goaway
        && if post {
            whole == 0 && !open
        } else {
            forwarded <= RAPID_RESET_LET_THROUGH
        };
    (!ok).then(|| Failure {
        name: if post { "h2-rapid-reset-post" } else { "h2-rapid-reset" }.into(),
        want: if post {
            "client: GOAWAY; backend: no whole request, every upstream connection with a head closed"
        } else {
            "client: GOAWAY; backend: at most 5 of the 100 reset requests"
        }
        .into(),
        got: format!(
            "client: {}; backend: {forwarded} of 100 requests ({whole} whole){}",
            if goaway { "GOAWAY".to_string() } else { format!("no GOAWAY ({})", events_text(&events)) },
            if open { ", upstream connection left open" } else { "" }
        ),
    })
}

/// Rapid reset in small batches over many connections, the pattern that stays under h2's own
/// per-connection limit (20 resets before a stream is accepted): `RECONNECTS` connections in a
/// row from one address, each with `BATCH` HEADERS + RST_STREAM(CANCEL) pairs. fulcrum counts
/// resets per client address across connections: past 30 in 10 s the address is cut off (its
/// new connections are closed at once, its streams not forwarded).
const RECONNECTS: usize = 30;
const BATCH: u32 = 10;

async fn rapid_reset_reconnects(r: &Rig, i: usize) -> Option<Failure> {
    let ip = case_ip(i);
    let fields: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", b"t.example"),
        (b":path", b"/rr"),
    ];
    let (mut refused, mut goaways, mut first_refused) = (0, 0, None);
    for c in 0..RECONNECTS {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(IpAddr::V4(ip), 0)).unwrap();
        let Ok(mut s) = socket
            .connect(SocketAddr::from(([127, 0, 0, 1], r.h2c)))
            .await
        else {
            refused += 1;
            continue;
        };
        let _ = s
            .write_all(&cat(&[PREFACE, &frame(SETTINGS, 0, 0, &[])]))
            .await;
        for k in 0..BATCH {
            let id = 1 + 2 * k;
            let mut pair = frame(HEADERS, END_STREAM | END_HEADERS, id, &block(&fields));
            pair.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
            if s.write_all(&pair).await.is_err() {
                break;
            }
        }
        let events = read_events(&mut s, u32::MAX, Duration::from_millis(300)).await;
        if events.iter().any(|e| matches!(e, Event::GoAway(_))) {
            goaways += 1;
        } else if events == [Event::Closed] {
            refused += 1;
            first_refused.get_or_insert(c);
        }
    }
    // Requests that were let through reach the backend soon after; read until a deadline.
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = RECONNECTS * BATCH as usize;
    let forwarded = attribute(&r.rec.state.lock().unwrap(), ip).requests.len();
    println!(
        "rapid reset over {RECONNECTS} connections of {BATCH}: {forwarded} of {sent} forwarded, \
         {goaways} GOAWAY, {refused} refused (the first: connection {first_refused:?})"
    );
    let ok = forwarded <= sent / 20 && refused >= RECONNECTS / 2;
    (!ok).then(|| Failure {
        name: "h2-rapid-reset-reconnects".into(),
        want: format!(
            "client: cut off (at least half of {RECONNECTS} connections refused); backend: at most {} of {sent} reset requests",
            sent / 20
        ),
        got: format!(
            "{refused} connections refused, {goaways} GOAWAY; backend: {forwarded} requests"
        ),
    })
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| {
                    l.strip_prefix("VmRSS:")
                        .map(|v| v.trim().trim_end_matches(" kB").parse().ok())
                })
                .flatten()
        })
        .unwrap_or(0)
}

/// CONTINUATION flood (CVE-2024-27316 family): HEADERS without END_HEADERS, then up to 32 MiB
/// of CONTINUATION frames that never end the block. fulcrum must cut the connection (GOAWAY or
/// close) before all of it is sent, forward nothing and keep its memory bounded (< 64 MiB more).
async fn continuation_flood(r: &Rig, i: usize) -> Option<Failure> {
    let ip = case_ip(i);
    let pid = r.fulcrum.child.id();
    let before = rss_kib(pid);
    let s = h2_connect(r.h2c, ip).await;
    let (mut rd, mut wr) = s.into_split();
    let head = frame(
        HEADERS,
        END_STREAM,
        1,
        &block(&[
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", b"t.example"),
            (b":path", b"/flood"),
        ]),
    );
    let writer = tokio::spawn(async move {
        let mut sent = 0usize;
        if wr.write_all(&head).await.is_err() {
            return sent;
        }
        let value = vec![b'a'; 1000];
        for k in 0..32768usize {
            let name = format!("x-flood-{k}");
            let f = frame(CONTINUATION, 0, 1, &block(&[(name.as_bytes(), &value)]));
            match tokio::time::timeout(Duration::from_secs(3), wr.write_all(&f)).await {
                Ok(Ok(())) => sent += f.len(),
                _ => return sent,
            }
        }
        sent
    });
    let mut chunk = vec![0u8; 16384];
    let mut got = Vec::new();
    let hard = Instant::now() + Duration::from_secs(20);
    let mut closed = false;
    while Instant::now() < hard {
        match tokio::time::timeout(Duration::from_secs(3), rd.read(&mut chunk)).await {
            Err(_) => break,
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
    let peak = rss_kib(pid);
    let sent = writer.await.unwrap_or(0);
    let goaway = {
        let mut p = 0;
        let mut seen = false;
        while p + 9 <= got.len() {
            let len = (got[p] as usize) << 16 | (got[p + 1] as usize) << 8 | got[p + 2] as usize;
            seen |= got[p + 3] == GOAWAY;
            p += 9 + len;
        }
        seen
    };
    let forwarded = attribute(&r.rec.state.lock().unwrap(), ip).requests.len();
    let grew = peak.saturating_sub(before) / 1024;
    let all_sent = sent >= 32768 * 1000;
    let ok = (goaway || closed) && !all_sent && forwarded == 0 && grew < 64;
    (!ok).then(|| Failure {
        name: "h2-continuation-flood".into(),
        want: "client: GOAWAY or close before 32 MiB of CONTINUATION; backend: nothing; fulcrum RSS +< 64 MiB".into(),
        got: format!(
            "client: {}{}, {} KiB sent; backend: {forwarded} requests; RSS +{grew} MiB",
            if goaway { "GOAWAY" } else { "no GOAWAY" },
            if closed { ", closed" } else { ", open" },
            sent / 1024
        ),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_corpus() {
    let cases = h2_cases();
    let r = rig().await;
    let start = Instant::now();
    let mut results: Vec<(usize, Option<Failure>)> =
        futures::stream::iter(cases.iter().enumerate())
            .map(|(i, c)| {
                let r = &r;
                async move { (i, run_h2_case(r, i, c).await) }
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
    results.sort_by_key(|(i, _)| *i);
    let mut failures: Vec<Failure> = results.into_iter().filter_map(|(_, f)| f).collect();
    // The two connection-level cases run alone (the flood measures fulcrum's memory).
    let n = cases.len();
    failures.extend(rapid_reset(&r, n, false).await);
    failures.extend(rapid_reset(&r, n + 1, true).await);
    failures.extend(continuation_flood(&r, n + 2).await);
    failures.extend(rapid_reset_reconnects(&r, n + 3).await);
    println!("{} cases in {:?}", n + 4, start.elapsed());
    report("HTTP/2 corpus", n + 4, &failures);
}

// ---------------------------------------------------------------------------------------------
// The verdict table (HOSTILE.md)
// ---------------------------------------------------------------------------------------------

fn verdict_table(h1: &[Case], h2: &[H2Case]) -> String {
    let cell = |s: &str| s.replace('|', "\\|");
    let mut out = String::from(
        "## Hostile input\n\nfulcrum's own hostile corpus (`tests/hostile.rs`, run by `make test`) sends each case below on a\nfresh raw connection to the real binary in front of a recording backend, and asserts both\nwhat the client gets and exactly what the backend receives (request line, headers other than\nthe ones fulcrum adds, body bytes; never a second request; an upstream connection that carried\nan incomplete body is closed, never reused). Where the RFC allows either a refusal or a\nnormalisation, fulcrum mostly does what nginx does; where Pingora's parser decides first (bare\nLF accepted, a target's illegal bytes percent-encoded, an empty chunk size read as the last\nchunk), the notes say so, and in every such case the backend gets exactly the one reading\nfulcrum made, re-framed: no desync. Host is validated as `host[:port]` (reg-name, IPv4 or\nbracketed IPv6, RFC 3986). Each client\nconnects from its own loopback address, so a request reaching the backend without fulcrum's\nX-Forwarded-For address is known to have been smuggled past it.\n\n### HTTP/1\n\n| case | source | fulcrum answers | the backend sees | note |\n| --- | --- | --- | --- | --- |\n",
    );
    for c in h1 {
        let where_ = if c.port == Port::H2c {
            " (h2c listener)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "| `{}`{where_} | {} | {} | {} | {} |",
            c.name,
            cell(c.source),
            cell(&c.client_text()),
            cell(&upstream_text(&c.upstream)),
            cell(c.note)
        );
    }
    out.push_str("\n### HTTP/2 (h2c, prior knowledge)\n\n| case | source | fulcrum answers | the backend sees | note |\n| --- | --- | --- | --- | --- |\n");
    for c in h2 {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} |",
            c.name,
            cell(c.source),
            cell(&h2_want_text(c.want)),
            cell(&upstream_text(&c.upstream)),
            cell(c.note)
        );
    }
    out.push_str("| `h2-rapid-reset` | RFC 9113 5.4.2, 6.4; CVE-2023-44487 | GOAWAY | at most 5 of the 100 reset requests (one whose reset is read after it is already on its way) | 100 HEADERS + RST_STREAM(CANCEL) pairs, one write each |\n");
    out.push_str("| `h2-rapid-reset-post` | RFC 9113 5.4.2, 6.4; CVE-2023-44487 | GOAWAY | no whole request; a connection that carried a head is closed | the same with POST heads whose body never comes |\n");
    out.push_str("| `h2-rapid-reset-reconnects` | RFC 9113 5.4.2; CVE-2023-44487 | its address cut off: later connections closed at once | at most 15 of the 300 reset requests | 30 connections from one address, 10 HEADERS + RST_STREAM(CANCEL) pairs each |\n");
    out.push_str("| `h2-continuation-flood` | RFC 9113 6.10; CVE-2024-27316 family | GOAWAY or close before 32 MiB is sent | nothing | memory grows by less than 64 MiB |\n");
    out
}
