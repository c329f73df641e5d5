//! `GET {verification_path}/qr?user_code=…&t=…` (the query of a `verification_uri_complete`):
//! an SVG QR code of that link, for devices that can show an image but cannot draw a QR code.
//! Only a link this gateway issued is drawn: its tag (`t`) is checked, which needs no store
//! lookup, so the endpoint tells nothing about which codes exist, and a client with
//! `verification_uri_complete: false` (whose codes never get a tag) gets no QR code at all.

use http::HeaderValue;

use super::{Gateway, Reply, Request};
use crate::device::code::normalize_user_code;
use crate::error::OAuthError;
use crate::pages;

impl Gateway {
    pub(super) async fn qr_code(&self, req: &Request<'_>) -> Reply {
        let q = req.query().ok();
        let code = q
            .as_ref()
            .and_then(|q| q.get("user_code").and_then(normalize_user_code));
        let tag = q.as_ref().and_then(|q| q.get("t")).unwrap_or_default();
        let Some(code) = code else {
            let e = OAuthError::InvalidRequest("user_code is missing or malformed".into());
            return Reply::oauth_error(&e);
        };
        let keys = match self.browsers.keys(&self.device).await {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "store failed");
                let e = OAuthError::TemporarilyUnavailable("try again later".into());
                return Reply::oauth_error(&e);
            }
        };
        if !keys.link_tag_ok(&code, tag) {
            let e = OAuthError::InvalidRequest(
                "t is missing or wrong: pass the query of verification_uri_complete".into(),
            );
            return Reply::oauth_error(&e);
        }
        let Some(svg) = pages::qr::svg(&self.verification_uri_complete(&code, tag)) else {
            let e =
                OAuthError::InvalidRequest("the verification URI is too long for a QR code".into());
            return Reply::oauth_error(&e);
        };
        Reply::new(200, svg)
            .header("Content-Type", HeaderValue::from_static("image/svg+xml"))
            .header(
                "Content-Security-Policy",
                HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
            )
            .header(
                "X-Content-Type-Options",
                HeaderValue::from_static("nosniff"),
            )
            .header("Cache-Control", HeaderValue::from_static("no-store"))
    }
}
