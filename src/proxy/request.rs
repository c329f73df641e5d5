//! The request side: the client address, size limits, reading the whole body, and the
//! [`Request`] value every handler gets (head, body, address, time), so handlers never touch
//! the Pingora session and run in tests without a socket.

use std::net::IpAddr;

use bytes::{Bytes, BytesMut};
use pingora::http::RequestHeader;
use pingora::proxy::Session;

use crate::clock::Time;
use crate::config::Limits;
use crate::error::OAuthError;
use crate::form::{is_form_content_type, Params};
use crate::net::{client_address, Cidr};

/// One request to an owned route, read whole.
pub struct Request<'a> {
    pub head: &'a RequestHeader,
    pub body: Bytes,
    /// The client's address (the TCP peer's, or behind a trusted proxy the one it names).
    pub client_ip: Option<IpAddr>,
    /// That address as limits count it (IPv6 by /64), made into text once per request
    /// ([`crate::limits::ip_key`]).
    pub ip_key: &'a str,
    /// When the request arrived (the gateway's clock).
    pub now: Time,
}

impl Request<'_> {
    /// A header as text; `None` when absent or not visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The client's address as text, for what is stored with a grant: the limits' key when
    /// that is the whole address (IPv4), so an IPv4 address is formatted once.
    pub fn ip_text(&self) -> Option<String> {
        self.client_ip.map(|ip| match ip {
            IpAddr::V4(_) => self.ip_key.to_string(),
            IpAddr::V6(_) => ip.to_string(),
        })
    }

    /// The query string's parameters.
    pub fn query(&self) -> Result<Params, OAuthError> {
        Params::parse(self.head.uri.query().unwrap_or("").as_bytes())
    }

    /// The form body of an API endpoint (RFC 6749 §3.2: form-encoded, each parameter once).
    /// JSON bodies are refused on purpose: the RFCs define forms only, and a second parser is a
    /// second place for smuggling and confusion bugs.
    pub fn form(&self) -> Result<Params, OAuthError> {
        if !is_form_content_type(self.header("content-type")) {
            return Err(OAuthError::InvalidRequest(
                "the body must be application/x-www-form-urlencoded".into(),
            ));
        }
        Params::parse(&self.body)
    }
}

/// The client's address: the TCP peer's, or, when the peer is a trusted proxy, the one its
/// forwarding headers name ([`crate::net::client_address`]).
pub fn client_ip(session: &Session, trusted: &[Cidr]) -> Option<IpAddr> {
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())?;
    if trusted.is_empty() {
        return Some(peer);
    }
    let headers = &session.req_header().headers;
    let values = |name: &'static str| {
        headers
            .get_all(name)
            .into_iter()
            .filter_map(|v| v.to_str().ok())
    };
    Some(client_address(
        peer,
        trusted,
        values("x-forwarded-for"),
        values("forwarded"),
    ))
}

/// Query and header size limits of the endpoints devicegate owns.
pub fn within_size_limits(head: &RequestHeader, limits: &Limits) -> Result<(), OAuthError> {
    if head.uri.query().map_or(0, str::len) > limits.max_query_bytes {
        return Err(OAuthError::TooLarge {
            status: 414,
            description: format!("the query is longer than {} bytes", limits.max_query_bytes),
        });
    }
    let headers: usize = head
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if headers > limits.max_header_bytes {
        return Err(OAuthError::TooLarge {
            status: 431,
            description: format!(
                "the headers are larger than {} bytes",
                limits.max_header_bytes
            ),
        });
    }
    Ok(())
}

/// A body over `limits.max_body_bytes`.
pub fn body_too_large(limits: &Limits) -> OAuthError {
    OAuthError::TooLarge {
        status: 413,
        description: format!("the body is larger than {} bytes", limits.max_body_bytes),
    }
}

/// Reads the whole request body (so the connection can be reused), up to `max` bytes; `None`
/// when it is larger (then the connection is not worth draining and is closed).
pub async fn read_body(session: &mut Session, max: usize) -> pingora::Result<Option<Bytes>> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Ok(None);
    }
    // A form body almost always arrives as one chunk: that chunk is the body, not copied.
    // Only a body in several chunks is joined.
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    while let Some(chunk) = session.read_request_body().await? {
        let len = match (&mut joined, first.take()) {
            (Some(all), _) => {
                all.extend_from_slice(&chunk);
                all.len()
            }
            (None, None) => {
                let len = chunk.len();
                first = Some(chunk);
                len
            }
            (None, Some(head)) => {
                let mut all = BytesMut::with_capacity(head.len() + chunk.len());
                all.extend_from_slice(&head);
                all.extend_from_slice(&chunk);
                let len = all.len();
                joined = Some(all);
                len
            }
        };
        if len > max {
            return Ok(None);
        }
    }
    Ok(Some(match joined {
        Some(all) => all.freeze(),
        None => first.unwrap_or_default(),
    }))
}
