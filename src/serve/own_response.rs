//! fulcrum's own responses: the status an error ends a request with, the short plain-text body
//! and header it answers with itself (with the request id; Retry-After on 503), and the
//! `redirect_https` redirect.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::serve::forwarding::X_REQUEST_ID;

/// The status fulcrum answers for an error that ended a request (0: the client is gone).
pub fn status_for(e: &Error) -> u16 {
    match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        _ if *e.esource() == ErrorSource::Downstream => match e.etype() {
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => 0,
            _ => 400,
        },
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
        _ if *e.esource() == ErrorSource::Internal => 500,
        _ => 502,
    }
}

/// The header of a short plain-text response written by fulcrum itself.
pub fn own_response(status: u16, request_id: &HeaderValue, body: &Bytes) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(X_REQUEST_ID, request_id.clone())?;
    if status == 503 {
        resp.insert_header("retry-after", "1")?;
    }
    Ok(resp)
}

/// The body of fulcrum's own response: the status, its reason and the request id.
pub fn own_body(status: u16, request_id: &HeaderValue) -> Bytes {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let id = request_id.to_str().unwrap_or("-");
    Bytes::from(format!("{status} {reason}\nrequest id: {id}\n"))
}

/// `redirect_https`: a 308 to the same `host` (normalized) and `target` (path and query) on the
/// https `port`.
pub fn redirect(
    host: &str,
    port: u16,
    target: &str,
    request_id: &HeaderValue,
) -> Result<(ResponseHeader, Bytes)> {
    let port = if port == 443 {
        String::new()
    } else {
        format!(":{port}")
    };
    let location = format!("https://{host}{port}{target}");
    let body = Bytes::from(format!("308 Permanent Redirect\nlocation: {location}\n"));
    let mut resp = own_response(308, request_id, &body)?;
    resp.insert_header(LOCATION, location)?;
    Ok((resp, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_statuses() {
        let e = Error::explain(ErrorType::HTTPStatus(503), "x");
        assert_eq!(status_for(&e), 503);
        assert_eq!(status_for(&Error::new_up(ErrorType::ConnectTimedout)), 504);
        assert_eq!(status_for(&Error::new_up(ErrorType::ReadTimedout)), 504);
        assert_eq!(status_for(&Error::new_up(ErrorType::ConnectRefused)), 502);
        assert_eq!(status_for(&Error::new_down(ErrorType::ConnectionClosed)), 0);
        assert_eq!(
            status_for(&Error::new_down(ErrorType::InvalidHTTPHeader)),
            400
        );
        assert_eq!(status_for(&Error::new_in(ErrorType::InternalError)), 500);
    }

    #[test]
    fn own_responses_carry_the_request_id() {
        let id = HeaderValue::from_static("id-7");
        let body = own_body(503, &id);
        assert_eq!(&body[..], b"503 Service Unavailable\nrequest id: id-7\n");
        let resp = own_response(503, &id, &body).unwrap();
        assert_eq!(resp.status, 503);
        assert_eq!(resp.headers[X_REQUEST_ID], "id-7");
        assert_eq!(
            resp.headers[CONTENT_LENGTH],
            body.len().to_string().as_str()
        );
        assert_eq!(resp.headers["retry-after"], "1");
        let other = own_response(502, &id, &own_body(502, &id)).unwrap();
        assert!(!other.headers.contains_key("retry-after"));
        assert_eq!(&own_body(599, &id)[..], b"599 Error\nrequest id: id-7\n");
    }

    #[test]
    fn redirects_keep_host_and_target_and_drop_the_default_port() {
        let id = HeaderValue::from_static("id");
        let (resp, body) = redirect("example.com", 443, "/a?b=1", &id).unwrap();
        assert_eq!(resp.status, 308);
        assert_eq!(resp.headers[LOCATION], "https://example.com/a?b=1");
        assert!(body.ends_with(b"location: https://example.com/a?b=1\n"));
        let (resp, _) = redirect("example.com", 8443, "/", &id).unwrap();
        assert_eq!(resp.headers[LOCATION], "https://example.com:8443/");
    }
}
