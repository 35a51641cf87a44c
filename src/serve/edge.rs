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
    let status = match refusal {
        Refusal::RateLimited { .. } => 429,
        Refusal::Unauthorized { .. } => 401,
    };
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let id = request_id.to_str().unwrap_or("-");
    let body = Bytes::from(format!("{status} {reason}\nrequest id: {id}\n"));
    let mut resp = ResponseHeader::build(status, Some(5))?;
    resp.insert_header(CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header("x-request-id", request_id.clone())?;
    match refusal {
        Refusal::RateLimited { retry_after } => {
            resp.insert_header(RETRY_AFTER, retry_after.to_string())?
        }
        Refusal::Unauthorized { challenge } => resp.insert_header(WWW_AUTHENTICATE, challenge)?,
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(true)
}
