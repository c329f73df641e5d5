//! The reply side: a [`Reply`] is a value (status, headers, body, and the [`Fact`]s it reports)
//! that handlers return, and [`write`] is the one place that sends it. Every reply carries
//! `Content-Length`; a HEAD request gets the headers without the body.

use bytes::Bytes;
use http::{HeaderValue, Method};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde::Serialize;

use super::events::Fact;
use crate::error::OAuthError;

/// The body answered when a reply could not be serialized: still RFC 6749 JSON.
const SERIALIZATION_FAILED: &[u8] =
    br#"{"error":"server_error","error_description":"the answer could not be written"}"#;

/// One answer of an owned endpoint.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, HeaderValue)>,
    pub body: Bytes,
    /// Close the connection after this reply (a body left unread, a request over a limit).
    pub close: bool,
    /// What happened, for the audit log and the metrics (see [`super::events`]).
    pub facts: Vec<Fact>,
}

impl Reply {
    pub fn new(status: u16, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
            close: false,
            facts: Vec::new(),
        }
    }

    /// JSON for devices, never cached (§3.2, RFC 6749 §5.1). A value that cannot be serialized
    /// is a 500 `server_error`, never an empty 200.
    pub fn json(status: u16, value: &impl Serialize) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self::json_bytes(status, body),
            Err(e) => {
                tracing::error!(error = %e, "answer not serializable");
                Self::json_bytes(500, SERIALIZATION_FAILED)
            }
        }
    }

    fn json_bytes(status: u16, body: impl Into<Bytes>) -> Self {
        Self::new(status, body)
            .header("Content-Type", HeaderValue::from_static("application/json"))
            .header("Cache-Control", HeaderValue::from_static("no-store"))
            .header("Pragma", HeaderValue::from_static("no-cache"))
    }

    /// An RFC 6749 §5.2 error with its own status.
    pub fn oauth_error(e: &OAuthError) -> Self {
        Self::oauth_error_as(e.status(), e)
    }

    /// An RFC 6749 §5.2 error with another status (502 for an unreachable IdP).
    pub fn oauth_error_as(status: u16, e: &OAuthError) -> Self {
        let mut reply = match e.to_json() {
            Ok(body) => Self::json_bytes(status, body),
            Err(err) => {
                tracing::error!(error = %err, "error not serializable");
                Self::json_bytes(500, SERIALIZATION_FAILED)
            }
        };
        if e.status() == 401 {
            // RFC 6749 §5.2: a 401 carries WWW-Authenticate.
            reply = reply.header(
                "WWW-Authenticate",
                HeaderValue::from_static("Basic realm=\"devicegate\""),
            );
        }
        if let Some(secs) = e.retry_after() {
            // RFC 9110 §10.2.3: tell well-behaved clients when to come back.
            reply = reply.header("Retry-After", HeaderValue::from(secs));
        }
        reply
    }

    /// 405 with the methods the route takes (RFC 9110 §15.5.6).
    pub fn method_not_allowed(allow: &'static str) -> Self {
        let e = OAuthError::InvalidRequest(format!("method not allowed, use {allow}"));
        Self::oauth_error_as(405, &e).header("Allow", HeaderValue::from_static(allow))
    }

    pub fn header(mut self, name: &'static str, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Adds a header from text; text that cannot be a header value is left out and logged.
    pub fn header_text(self, name: &'static str, value: &str) -> Self {
        match HeaderValue::from_str(value) {
            Ok(v) => self.header(name, v),
            Err(_) => {
                tracing::error!(header = name, "header value not valid, left out");
                self
            }
        }
    }

    pub fn fact(mut self, fact: Fact) -> Self {
        self.facts.push(fact);
        self
    }

    pub fn facts(mut self, facts: impl IntoIterator<Item = Fact>) -> Self {
        self.facts.extend(facts);
        self
    }

    /// Closes the connection after this reply.
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// The first value of a header (tests and logs).
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.to_str().ok())
    }
}

/// Sends a reply: the one writer of every owned endpoint.
pub async fn write(session: &mut Session, reply: Reply) -> pingora::Result<()> {
    // No case-preserving name map: these names are the gateway's own, so there is no client's
    // spelling to keep, and each header is one map insert, not two. Standard names go out in
    // their usual case, the others in lower case (RFC 9110 §5.1: names are case-insensitive).
    let mut resp = ResponseHeader::build_no_case(reply.status, Some(reply.headers.len() + 1))?;
    for (k, v) in reply.headers {
        resp.append_header(k, v)?;
    }
    resp.append_header(http::header::CONTENT_LENGTH, reply.body.len())?;
    if reply.close {
        session.set_keepalive(None);
    }
    let head_only = session.req_header().method == Method::HEAD;
    session.write_response_header(Box::new(resp), false).await?;
    let body = if head_only { Bytes::new() } else { reply.body };
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value whose serialization fails, as a map with a non-string key does.
    struct Unwritable;

    impl Serialize for Unwritable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("cannot"))
        }
    }

    #[test]
    fn a_failed_serialization_is_a_500_json_error_not_an_empty_200() {
        let r = Reply::json(200, &Unwritable);
        assert_eq!(r.status, 500);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"], "server_error");
        assert_eq!(r.header_value("content-type"), Some("application/json"));
        assert_eq!(r.header_value("cache-control"), Some("no-store"));
    }

    #[test]
    fn errors_carry_their_headers() {
        let r = Reply::oauth_error(&OAuthError::InvalidClient("x".into()));
        assert_eq!(r.status, 401);
        assert!(r.header_value("www-authenticate").is_some());
        let r = Reply::oauth_error(&OAuthError::RateLimited {
            poll: false,
            retry_after: 7,
        });
        assert_eq!((r.status, r.header_value("retry-after")), (429, Some("7")));
        let r = Reply::method_not_allowed("GET, HEAD");
        assert_eq!(
            (r.status, r.header_value("allow")),
            (405, Some("GET, HEAD"))
        );
    }
}
