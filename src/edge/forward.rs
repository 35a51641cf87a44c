//! Forward authentication: a subrequest (the client's header, no body) to an auth server
//! whose 2xx admits the request and whose other answers go back to the client, as nginx
//! `auth_request` and Traefik ForwardAuth. Pingora's HTTP connector keeps its connections.

use std::net::IpAddr;

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

use crate::config::ForwardAuthConfig;

/// Largest auth-server body relayed to a client.
const MAX_BODY: usize = 64 * 1024;
/// Most body chunks read (each read returns at least one byte, so this bounds the loop).
const MAX_CHUNKS: usize = 1024;
/// Headers not copied into the subrequest or out of its answer.
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
    "expect",
];

/// What the auth server said.
pub enum Answer {
    /// 2xx: these headers go to the backend.
    Admit(Vec<(String, HeaderValue)>),
    /// Anything else: relayed to the client.
    Deny {
        status: u16,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    },
}

/// One route's `auth: {forward: ...}`.
pub struct ForwardAuth {
    pub config: ForwardAuthConfig,
    connector: Connector,
}

impl ForwardAuth {
    pub fn new(config: ForwardAuthConfig) -> ForwardAuth {
        ForwardAuth {
            config,
            connector: Connector::new(None),
        }
    }

    /// Ask the auth server about `req` (within the configured timeout).
    pub async fn check(&self, req: &RequestHeader, client_ip: Option<IpAddr>) -> Result<Answer> {
        let sub = self.subrequest(req, client_ip)?;
        match tokio::time::timeout(self.config.timeout, self.exchange(sub)).await {
            Ok(answer) => answer,
            Err(_) => Error::e_explain(
                ErrorType::ReadTimedout,
                format!(
                    "forward auth {}: no answer within {:?}",
                    self.config.url, self.config.timeout
                ),
            ),
        }
    }

    /// GET the auth URL with the client's headers and X-Forwarded-Method/Host/Uri/For.
    fn subrequest(&self, req: &RequestHeader, client_ip: Option<IpAddr>) -> Result<RequestHeader> {
        let mut sub = RequestHeader::build("GET", self.config.path.as_bytes(), None)?;
        for (name, value) in req.headers.iter() {
            if !HOP_BY_HOP.contains(&name.as_str()) {
                sub.append_header(name.clone(), value.clone())?;
            }
        }
        sub.insert_header(http::header::HOST, self.config.authority.as_str())?;
        sub.insert_header("x-forwarded-method", req.method.as_str())?;
        if let Some(host) = req.headers.get(http::header::HOST) {
            sub.insert_header("x-forwarded-host", host.clone())?;
        }
        let uri = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
        sub.insert_header("x-forwarded-uri", uri)?;
        if let Some(ip) = client_ip {
            sub.insert_header("x-forwarded-for", ip.to_string())?;
        }
        Ok(sub)
    }

    async fn exchange(&self, sub: RequestHeader) -> Result<Answer> {
        let peer = HttpPeer::new(self.config.addr, false, String::new());
        let (mut session, _reused) = self.connector.get_http_session(&peer).await?;
        session.write_request_header(Box::new(sub)).await?;
        session.finish_request_body().await?;
        session.read_response_header().await?;
        let Some(resp) = session.response_header().cloned() else {
            return Error::e_explain(
                ErrorType::InvalidHTTPHeader,
                "forward auth: no response header",
            );
        };
        let status = resp.status.as_u16();
        let mut body = BytesMut::new();
        for _ in 0..MAX_CHUNKS {
            match session.read_response_body().await? {
                None => break,
                Some(chunk) if body.len() + chunk.len() <= MAX_BODY => {
                    body.extend_from_slice(&chunk)
                }
                Some(_) => {
                    return Error::e_explain(
                        ErrorType::InvalidHTTPHeader,
                        format!("forward auth: answer body over {MAX_BODY} bytes"),
                    )
                }
            }
        }
        if session.response_done() {
            self.connector
                .release_http_session(session, &peer, None)
                .await;
        }
        if resp.status.is_success() {
            let copied = self
                .config
                .response_headers
                .iter()
                .filter_map(|h| Some((h.clone(), resp.headers.get(h.as_str())?.clone())))
                .collect();
            return Ok(Answer::Admit(copied));
        }
        let headers = resp
            .headers
            .iter()
            .filter(|(n, _)| !HOP_BY_HOP.contains(&n.as_str()))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        Ok(Answer::Deny {
            status,
            headers,
            body: body.freeze(),
        })
    }
}
