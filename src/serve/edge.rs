//! The request path's side of a route's edge (`crate::edge`): ask it whether the request is
//! admitted, and write its refusals (429 with `Retry-After`, 401 with `WWW-Authenticate`).

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use crate::edge::{Refusal, Verdict};
use crate::runtime::Runtime;

/// Whether route `route` of `runtime` admits the session's request (None: admitted, with
/// the header edits of its authentication applied).
pub async fn admit(
    session: &mut Session,
    runtime: &Runtime,
    route: usize,
) -> Result<Option<Refusal>> {
    let client_ip = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let verdict = runtime
        .edge
        .admit(route, session.req_header(), client_ip)
        .await?;
    match verdict {
        Verdict::Refuse(refusal) => Ok(Some(refusal)),
        Verdict::Admit(edits) => {
            let req = session.req_header_mut();
            for name in edits.remove {
                req.remove_header(&name);
            }
            for (name, value) in edits.insert {
                req.insert_header(name, value)?;
            }
            Ok(None)
        }
    }
}

/// Answer `refusal` (the request is done: `Ok(true)`).
pub async fn refuse(
    session: &mut Session,
    request_id: &HeaderValue,
    refusal: Refusal,
) -> Result<bool> {
    let (status, extra, own_body) = match refusal {
        Refusal::RateLimited { retry_after } => (
            429,
            vec![(RETRY_AFTER, HeaderValue::from(retry_after))],
            None,
        ),
        Refusal::Unauthorized { challenge } => (401, vec![(WWW_AUTHENTICATE, challenge)], None),
        Refusal::Relay {
            status,
            headers,
            body,
        } => (status, headers, Some(body)),
        Refusal::Unavailable => (503, Vec::new(), None),
    };
    let body = own_body.unwrap_or_else(|| {
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        let id = request_id.to_str().unwrap_or("-");
        Bytes::from(format!("{status} {reason}\nrequest id: {id}\n"))
    });
    let mut resp = ResponseHeader::build(status, Some(4 + extra.len()))?;
    for (name, value) in extra {
        resp.append_header(name, value)?;
    }
    if !resp.headers.contains_key(CONTENT_TYPE) {
        resp.insert_header(CONTENT_TYPE, "text/plain; charset=utf-8")?;
    }
    resp.insert_header(CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header("x-request-id", request_id.clone())?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(true)
}
