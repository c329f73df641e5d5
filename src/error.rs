//! The one error type of the device endpoints and the token endpoint, and its wire format.
//!
//! Every variant maps to an error code registered by RFC 6749 §5.2 or RFC 8628 §3.5, plus the
//! two server-side codes of RFC 6749 §4.1.2.1 (`server_error`, `temporarily_unavailable`).
//! [`OAuthError::status`] decides the HTTP status and [`OAuthError::to_json`] the body, so the
//! HTTP glue never makes up an error body of its own.

/// An OAuth 2.0 error answered to a device client as JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    /// RFC 6749 §5.2 `invalid_request`: a required parameter is missing, a parameter is
    /// repeated, the body is not a form, or a value is malformed.
    #[error("invalid_request: {0}")]
    InvalidRequest(String),
    /// `invalid_request` for a request over a size limit, answered with the HTTP status that
    /// names the part: 413 body (RFC 9110 §15.5.14), 414 URI (§15.5.15), 431 headers
    /// (RFC 6585 §5).
    #[error("invalid_request: {description}")]
    TooLarge { status: u16, description: String },
    /// RFC 6749 §5.2 `invalid_client`: the client is unknown, disabled or failed to
    /// authenticate. Answered with HTTP 401.
    #[error("invalid_client: {0}")]
    InvalidClient(String),
    /// RFC 6749 §5.2 `invalid_grant`: the device code is unknown, was already used, or belongs
    /// to another client.
    #[error("invalid_grant: {0}")]
    InvalidGrant(String),
    /// RFC 6749 §5.2 `unauthorized_client`: the client may not use this grant from here (a
    /// per-client policy such as `device_networks` refused the request). HTTP 400.
    #[error("unauthorized_client: {0}")]
    UnauthorizedClient(String),
    /// RFC 6749 §3.3 / §5.2 `invalid_scope`: a requested scope is not allowed for the client.
    #[error("invalid_scope: {0}")]
    InvalidScope(String),
    /// RFC 8628 §3.5 `authorization_pending`: the user has not finished yet; keep polling.
    #[error("authorization_pending")]
    AuthorizationPending,
    /// RFC 8628 §3.5 `slow_down`: polled too fast; the interval for this and every later
    /// request grows by 5 seconds. The new interval is sent as an extension field.
    #[error("slow_down")]
    SlowDown {
        /// The interval in seconds the client must keep from now on.
        interval: u64,
    },
    /// RFC 8628 §3.5 `access_denied`: the user (or the upstream IdP) refused the request.
    #[error("access_denied: {0}")]
    AccessDenied(String),
    /// RFC 8628 §3.5 `expired_token`: the device code outlived `expires_in`.
    #[error("expired_token")]
    ExpiredToken,
    /// RFC 6749 §4.1.2.1 `temporarily_unavailable`: the store is full or unreachable. HTTP 503.
    #[error("temporarily_unavailable: {0}")]
    TemporarilyUnavailable(String),
    /// A rate limit was hit (RFC 8628 §5.1 brute force, floods). HTTP 429 (RFC 6585 §4) with
    /// `Retry-After`. The code is `slow_down` for device-code polls, so a device backs off as
    /// §3.5 tells it to, and RFC 6749 §4.1.2.1 `temporarily_unavailable` elsewhere.
    #[error("rate limited")]
    RateLimited {
        /// Whether the limited request was a device-code poll.
        poll: bool,
        /// Seconds until the limit resets.
        retry_after: u64,
    },
    /// RFC 6749 §4.1.2.1 `server_error`: an unexpected condition. HTTP 500.
    #[error("server_error: {0}")]
    ServerError(String),
}

impl OAuthError {
    /// Every code [`Self::code`] can answer (the metrics make a series for each at start-up).
    pub const CODES: &'static [&'static str] = &[
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "invalid_scope",
        "unauthorized_client",
        "authorization_pending",
        "slow_down",
        "access_denied",
        "expired_token",
        "temporarily_unavailable",
        "server_error",
    ];

    /// The registered error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) | Self::TooLarge { .. } => "invalid_request",
            Self::InvalidClient(_) => "invalid_client",
            Self::InvalidGrant(_) => "invalid_grant",
            Self::InvalidScope(_) => "invalid_scope",
            Self::UnauthorizedClient(_) => "unauthorized_client",
            Self::AuthorizationPending => "authorization_pending",
            Self::SlowDown { .. } => "slow_down",
            Self::AccessDenied(_) => "access_denied",
            Self::ExpiredToken => "expired_token",
            Self::TemporarilyUnavailable(_) => "temporarily_unavailable",
            Self::RateLimited { poll: true, .. } => "slow_down",
            Self::RateLimited { poll: false, .. } => "temporarily_unavailable",
            Self::ServerError(_) => "server_error",
        }
    }

    /// HTTP status: 400 for every RFC 6749 §5.2 error, 401 for `invalid_client`, 503/500 for the
    /// server-side ones.
    pub fn status(&self) -> u16 {
        match self {
            Self::InvalidClient(_) => 401,
            Self::TemporarilyUnavailable(_) => 503,
            Self::RateLimited { .. } => 429,
            Self::TooLarge { status, .. } => *status,
            Self::ServerError(_) => 500,
            _ => 400,
        }
    }

    fn description(&self) -> Option<&str> {
        match self {
            Self::InvalidRequest(d)
            | Self::InvalidClient(d)
            | Self::InvalidGrant(d)
            | Self::InvalidScope(d)
            | Self::UnauthorizedClient(d)
            | Self::AccessDenied(d)
            | Self::TemporarilyUnavailable(d)
            | Self::ServerError(d)
            | Self::TooLarge { description: d, .. } => Some(d.as_str()),
            Self::AuthorizationPending => Some("the user has not approved the request yet"),
            Self::SlowDown { .. } => Some("polling too fast: add 5 seconds to the interval"),
            Self::ExpiredToken => Some("the device code has expired: start a new request"),
            Self::RateLimited { .. } => Some("too many requests: wait for Retry-After seconds"),
        }
    }

    /// The RFC 6749 §5.2 JSON body, or the serializer's error (answered as a 500 by the
    /// caller, never as an empty body).
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        /// The body, in the order RFC 6749 §5.2 lists the fields.
        #[derive(serde::Serialize)]
        struct Body<'a> {
            error: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            error_description: Option<&'a str>,
            /// Extension field (as GitHub does): clients need not track the growth themselves.
            #[serde(skip_serializing_if = "Option::is_none")]
            interval: Option<u64>,
        }
        let body = Body {
            error: self.code(),
            error_description: self.description().filter(|d| !d.is_empty()),
            interval: match self {
                Self::SlowDown { interval } => Some(*interval),
                _ => None,
            },
        };
        serde_json::to_vec(&body)
    }

    /// Seconds a client should wait before trying again (`Retry-After`), when that is known.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            Self::TemporarilyUnavailable(_) => Some(5),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let e = OAuthError::SlowDown { interval: 10 };
        let v: serde_json::Value = serde_json::from_slice(&e.to_json().unwrap()).unwrap();
        assert_eq!(v["error"], "slow_down");
        assert_eq!(v["interval"], 10);
        assert_eq!(e.status(), 400);
        assert_eq!(OAuthError::InvalidClient("x".into()).status(), 401);
        assert_eq!(OAuthError::TemporarilyUnavailable("x".into()).status(), 503);
        let v: serde_json::Value =
            serde_json::from_slice(&OAuthError::InvalidGrant(String::new()).to_json().unwrap())
                .unwrap();
        assert!(v.get("error_description").is_none());
        let limited = OAuthError::RateLimited {
            poll: true,
            retry_after: 7,
        };
        assert_eq!((limited.status(), limited.code()), (429, "slow_down"));
        assert_eq!(limited.retry_after(), Some(7));
        let limited = OAuthError::RateLimited {
            poll: false,
            retry_after: 7,
        };
        assert_eq!(limited.code(), "temporarily_unavailable");
    }

    #[test]
    fn codes_lists_every_code() {
        let every = [
            OAuthError::InvalidRequest(String::new()),
            OAuthError::TooLarge {
                status: 413,
                description: String::new(),
            },
            OAuthError::InvalidClient(String::new()),
            OAuthError::InvalidGrant(String::new()),
            OAuthError::InvalidScope(String::new()),
            OAuthError::UnauthorizedClient(String::new()),
            OAuthError::AuthorizationPending,
            OAuthError::SlowDown { interval: 5 },
            OAuthError::AccessDenied(String::new()),
            OAuthError::ExpiredToken,
            OAuthError::TemporarilyUnavailable(String::new()),
            OAuthError::RateLimited {
                poll: true,
                retry_after: 1,
            },
            OAuthError::ServerError(String::new()),
        ];
        for e in &every {
            assert!(OAuthError::CODES.contains(&e.code()), "{}", e.code());
        }
        let answered: std::collections::BTreeSet<_> = every.iter().map(|e| e.code()).collect();
        assert_eq!(answered.len(), OAuthError::CODES.len());
    }
}
