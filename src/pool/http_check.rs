//! The HTTP active check of one backend: a GET of the configured path, passed when the status is
//! one of the expected ones; the load the backend reports in that answer (feedback: the header,
//! or the first word of the body) comes back with the verdict.

use std::net::SocketAddr;
use std::time::Duration;

use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

use crate::config::FeedbackConfig;
use crate::pool::feedback_share;

/// The most of a check's body read for a report; the rest is left unread (the connection is
/// not reused, as Pingora's own check does not reuse it).
const MAX_BODY: usize = 256;
/// Body chunks read at most (a backend dribbling bytes is bounded by the check's timeout too).
const MAX_CHUNKS: usize = 16;

/// The HTTP check of a pool: one connector for all its backends.
pub struct HttpCheck {
    connector: Connector,
    path: String,
    /// The Host to send; None: each backend's own address.
    host: Option<String>,
    expected: Vec<u16>,
    timeout: Duration,
    feedback: Option<FeedbackConfig>,
}

impl HttpCheck {
    pub fn new(
        path: &str,
        host: Option<String>,
        expected: Vec<u16>,
        timeout: Duration,
        feedback: Option<FeedbackConfig>,
    ) -> Self {
        HttpCheck {
            connector: Connector::new(None),
            path: path.to_string(),
            host,
            expected,
            timeout,
            feedback,
        }
    }

    /// Check `addr`: Ok with the share of its weight the backend's report leaves it (if the
    /// pool reads reports and the answer has one that is a load), Err when it did not answer an
    /// expected status in time.
    pub async fn check(&self, addr: SocketAddr) -> Result<Option<f64>> {
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(self.timeout);
        peer.options.read_timeout = Some(self.timeout);
        peer.options.write_timeout = Some(self.timeout);
        let mut req = RequestHeader::build("GET", self.path.as_bytes(), None)?;
        let host = self.host.clone().unwrap_or_else(|| addr.to_string());
        req.insert_header(http::header::HOST, host)?;
        let (mut session, _reused) = self.connector.get_http_session(&peer).await?;
        session.set_write_timeout(Some(self.timeout));
        session.write_request_header(Box::new(req)).await?;
        session.finish_request_body().await?;
        session.set_read_timeout(Some(self.timeout));
        session.read_response_header().await?;
        let Some(resp) = session.response_header() else {
            return Error::e_explain(ErrorType::InvalidHTTPHeader, "health check: no answer");
        };
        let status = resp.status.as_u16();
        if !self.expected.contains(&status) {
            return Error::e_explain(
                ErrorType::CustomCode("unexpected status", status),
                format!("health check answered {status}"),
            );
        }
        let Some(feedback) = &self.feedback else {
            return Ok(None);
        };
        let in_header = feedback
            .header
            .as_deref()
            .and_then(|h| resp.headers.get(h))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if in_header.is_some() || !feedback.check_body {
            return Ok(in_header.and_then(|v| feedback_share(feedback, &v)));
        }
        let mut body = Vec::new();
        for _ in 0..MAX_CHUNKS {
            match session.read_response_body().await? {
                Some(chunk) => body.extend_from_slice(&chunk),
                None => break,
            }
            if body.len() >= MAX_BODY {
                break;
            }
        }
        body.truncate(MAX_BODY);
        Ok(first_word(&body).and_then(|v| feedback_share(feedback, &v)))
    }
}

/// The first whitespace-separated word of a check's body, if it is text.
fn first_word(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    text.split_whitespace().next().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::first_word;

    #[test]
    fn the_report_is_the_bodys_first_word() {
        assert_eq!(first_word(b"0.75\n"), Some("0.75".into()));
        assert_eq!(
            first_word(b"  drain  because maintenance"),
            Some("drain".into())
        );
        assert_eq!(first_word(b"\n\t "), None);
        assert_eq!(first_word(b""), None);
    }
}
