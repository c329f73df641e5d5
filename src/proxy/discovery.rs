//! The IdP's discovery documents (RFC 8414, OpenID Connect Discovery), fetched on the back
//! channel and relayed with the device flow added ([`crate::discovery::rewrite_for`]). HEAD gets
//! the same headers, `Content-Length` of the rewritten document included.

use super::{Gateway, Reply, Request};
use crate::discovery;
use crate::error::OAuthError;

/// The IdP's headers a discovery answer keeps, as written to the device.
const RELAYED: &[(&str, &str)] = &[
    ("content-type", "Content-Type"),
    ("cache-control", "Cache-Control"),
    ("expires", "Expires"),
    ("vary", "Vary"),
    ("access-control-allow-origin", "Access-Control-Allow-Origin"),
    (
        "access-control-allow-credentials",
        "Access-Control-Allow-Credentials",
    ),
    (
        "access-control-expose-headers",
        "Access-Control-Expose-Headers",
    ),
];

impl Gateway {
    /// `oidc`: the request is for the OpenID Connect document (the one the gateway learns the
    /// IdP's endpoints from).
    pub(super) async fn discovery(&self, req: &Request<'_>, oidc: bool) -> Reply {
        let path_and_query = req
            .head
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or_default();
        let mut origin = self.config.upstream.issuer.clone();
        origin.set_path("");
        let origin = origin.as_str().trim_end_matches('/').to_string();
        // The OpenID Connect document is where `upstream.discovery_url` says, when it says.
        let configured = self.config.upstream.discovery_url.as_ref().filter(|_| oidc);
        let target = match configured {
            Some(d) => {
                let mut d = d.clone();
                if let Some(q) = req.head.uri.query() {
                    d.set_query(Some(q));
                }
                Ok(d)
            }
            None => url::Url::parse(&format!("{origin}{path_and_query}")),
        };
        let Ok(url) = target else {
            let e = OAuthError::InvalidRequest("not a discovery URL".into());
            return Reply::oauth_error(&e);
        };
        let mut fetched = self.oidc.get("discovery", &url).await;
        if fetched.as_ref().is_ok_and(|r| r.status == 404) && !oidc {
            // An RFC 8414 path this IdP does not serve (Keycloak serves only one of the two):
            // answer with its OpenID Connect document, which has every field RFC 8414 needs.
            if let Ok(oidc_url) = self.oidc.discovery_url() {
                fetched = self.oidc.get("discovery", &oidc_url).await;
            }
        }
        let resp = match fetched {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "discovery fetch failed");
                let e = OAuthError::TemporarilyUnavailable(
                    "the identity provider is unreachable".into(),
                );
                return Reply::oauth_error_as(502, &e);
            }
        };
        let device_endpoint = self.config.public(&self.config.device.authorization_path);
        let body = if resp.status == 200 {
            // Learned only from the document's fixed URL: a query (Entra's `?appid=`) may make
            // the IdP answer another document, and whoever sends it must not choose the keys
            // the gateway trusts.
            if oidc && req.head.uri.query().is_none() {
                if let Err(e) = self.oidc.learn_discovery(&resp.body).await {
                    tracing::warn!(error = %e, "discovery document not usable");
                }
            }
            let gateway_origin = self.own_origin.as_ref().map(|(o, _)| o.as_str());
            match discovery::rewrite_for(&resp.body, &device_endpoint, gateway_origin) {
                Some(rewritten) => rewritten.into(),
                None => resp.body.clone(),
            }
        } else {
            resp.body.clone()
        };
        let mut reply = Reply::new(resp.status, body);
        for (name, written) in RELAYED {
            for v in resp.headers.get_all(*name) {
                reply = reply.header(written, v.clone());
            }
        }
        reply
    }
}
