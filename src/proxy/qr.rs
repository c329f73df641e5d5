//! `GET {verification_path}/qr?user_code=…`: an SVG QR code of that code's
//! `verification_uri_complete`, for devices that can show an image but cannot draw a QR code.
//! It only encodes a URL built from a well-formed code (no store lookup), so it tells nothing
//! about which codes exist.

use http::HeaderValue;

use super::{Gateway, Reply, Request};
use crate::device::code::normalize_user_code;
use crate::error::OAuthError;
use crate::pages;

impl Gateway {
    pub(super) fn qr_code(&self, req: &Request<'_>) -> Reply {
        let code = req
            .query()
            .ok()
            .and_then(|q| q.get("user_code").and_then(normalize_user_code));
        let Some(code) = code else {
            let e = OAuthError::InvalidRequest("user_code is missing or malformed".into());
            return Reply::oauth_error(&e);
        };
        let Some(svg) = pages::qr::svg(&self.verification_uri_complete(&code)) else {
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
