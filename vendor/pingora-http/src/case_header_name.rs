// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

use crate::*;
use bytes::Bytes;
use http::header;

#[derive(Debug, Clone)]
pub struct CaseHeaderName(Bytes);

impl CaseHeaderName {
    pub fn new(name: String) -> Self {
        CaseHeaderName(name.into())
    }
}

impl CaseHeaderName {
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    pub fn from_slice(buf: &[u8]) -> Self {
        CaseHeaderName(Bytes::copy_from_slice(buf))
    }
}

/// A trait that converts into case-sensitive header names.
pub trait IntoCaseHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName;

    /// The name as a [`HeaderName`] keys it, and its case-sensitive form.
    ///
    /// The default parses the case-sensitive form, which allocates for every name `http` does
    /// not know (`X-Forwarded-For`, say). A [`HeaderName`], and a `&'static str` that is already
    /// a lowercase header name, are taken as they are: no parse and no allocation.
    fn into_header_names(self) -> Result<(HeaderName, CaseHeaderName)>
    where
        Self: Sized,
    {
        let case_header_name = self.into_case_header_name();
        let header_name = HeaderName::from_bytes(case_header_name.as_slice())
            .or_err(InvalidHTTPHeader, "invalid header name")?;
        Ok((header_name, case_header_name))
    }
}

impl IntoCaseHeaderName for CaseHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        self
    }
}

impl IntoCaseHeaderName for String {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self.into())
    }
}

impl IntoCaseHeaderName for &'static str {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self.into())
    }

    fn into_header_names(self) -> Result<(HeaderName, CaseHeaderName)> {
        if !is_lowercase_header_name(self) {
            let case_header_name = self.into_case_header_name();
            let header_name = HeaderName::from_bytes(case_header_name.as_slice())
                .or_err(InvalidHTTPHeader, "invalid header name")?;
            return Ok((header_name, case_header_name));
        }
        // cannot panic: `from_static` accepts exactly the names checked above
        Ok((HeaderName::from_static(self), self.into_case_header_name()))
    }
}

impl IntoCaseHeaderName for HeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(titled_header_name(&self))
    }

    fn into_header_names(self) -> Result<(HeaderName, CaseHeaderName)> {
        let case_header_name = CaseHeaderName(titled_header_name(&self));
        Ok((self, case_header_name))
    }
}

impl IntoCaseHeaderName for &HeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(titled_header_name(self))
    }

    fn into_header_names(self) -> Result<(HeaderName, CaseHeaderName)> {
        Ok((self.clone(), CaseHeaderName(titled_header_name(self))))
    }
}

/// Whether `name` is a header name as `http` keys it (RFC 9110 token characters, lowercase)
/// and not longer than `http` accepts: names [`HeaderName::from_bytes`] would parse to themselves,
/// all of which [`HeaderName::from_static`] takes without panicking (it also takes `"`, which
/// `from_bytes` refuses).
fn is_lowercase_header_name(name: &str) -> bool {
    const MAX_HEADER_NAME_LEN: usize = (1 << 16) - 1;
    !name.is_empty()
        && name.len() <= MAX_HEADER_NAME_LEN
        && name.bytes().all(|b| LOWERCASE_TOKEN[b as usize])
}

/// The bytes of a lowercase header name, as a table: one lookup per byte.
static LOWERCASE_TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = matches!(
            b as u8,
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'!' | b'#'..=b'\'' | b'*' | b'+' | b'.'
                | b'^' | b'`' | b'|' | b'~'
        );
        b += 1;
    }
    table
};

impl IntoCaseHeaderName for Bytes {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self)
    }
}

fn titled_header_name(header_name: &HeaderName) -> Bytes {
    titled_header_name_str(header_name).map_or_else(
        || Bytes::copy_from_slice(header_name.as_str().as_bytes()),
        |s| Bytes::from_static(s.as_bytes()),
    )
}

pub(crate) fn titled_header_name_str(header_name: &HeaderName) -> Option<&'static str> {
    Some(match *header_name {
        header::ACCEPT_RANGES => "Accept-Ranges",
        header::AGE => "Age",
        header::CACHE_CONTROL => "Cache-Control",
        header::CONNECTION => "Connection",
        header::CONTENT_TYPE => "Content-Type",
        header::CONTENT_ENCODING => "Content-Encoding",
        header::CONTENT_LENGTH => "Content-Length",
        header::DATE => "Date",
        header::TRANSFER_ENCODING => "Transfer-Encoding",
        header::HOST => "Host",
        header::SERVER => "Server",
        header::SET_COOKIE => "Set-Cookie",
        // TODO: add more const header here to map to their titled case
        // TODO: automatically upper case the first letter?
        _ => {
            return None;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_header_names_without_a_parse() {
        // a lowercase static name: keyed and written as it is
        let (name, case) = "x-forwarded-for".into_header_names().unwrap();
        assert_eq!(name, HeaderName::from_static("x-forwarded-for"));
        assert_eq!(case.as_slice(), b"x-forwarded-for");
        let (name, _) = "content-length".into_header_names().unwrap();
        assert_eq!(name, header::CONTENT_LENGTH);
        // any other static name is parsed, as before: keyed lowercase, written as given
        let (name, case) = "X-Forwarded-For".into_header_names().unwrap();
        assert_eq!(name, HeaderName::from_static("x-forwarded-for"));
        assert_eq!(case.as_slice(), b"X-Forwarded-For");
        assert!("bad name".into_header_names().is_err());
        assert!("".into_header_names().is_err());
        assert!("x\u{e9}".into_header_names().is_err());
        // every byte `http` accepts in a lowercase name takes the fast path and agrees with
        // the parse; every other byte is refused by both paths or parsed
        for b in 0u8..=255 {
            let Ok(one) = std::str::from_utf8(std::slice::from_ref(&b)) else {
                continue;
            };
            let one: &'static str = Box::leak(one.to_string().into_boxed_str());
            let parsed = HeaderName::from_bytes(one.as_bytes());
            match one.into_header_names() {
                Ok((name, case)) => {
                    assert_eq!(Some(&name), parsed.as_ref().ok(), "{b}");
                    assert_eq!(case.as_slice(), one.as_bytes());
                }
                Err(_) => assert!(parsed.is_err(), "{b}"),
            }
        }
        // a HeaderName: the name itself, titled on the wire where Pingora knows the title
        let (name, case) = header::SERVER.into_header_names().unwrap();
        assert_eq!(name, header::SERVER);
        assert_eq!(case.as_slice(), b"Server");
        let custom = HeaderName::from_static("x-cache");
        let (name, case) = (&custom).into_header_names().unwrap();
        assert_eq!(name, custom);
        assert_eq!(case.as_slice(), b"x-cache");
    }

    #[test]
    fn test_case_header_name() {
        assert_eq!("FoO".into_case_header_name().as_slice(), b"FoO");
        assert_eq!("FoO".to_string().into_case_header_name().as_slice(), b"FoO");
        assert_eq!(header::SERVER.into_case_header_name().as_slice(), b"Server");
    }
}
