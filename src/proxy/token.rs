//! The IdP's token endpoint: device-code polls (RFC 8628 §3.4, §3.5) are answered here;
//! every other grant (authorization code, refresh token, …) passes through to the IdP.

use super::events::{self, Audit, Event, Fact};
use super::{auth, limit_error, request, Gateway, Reply, Request};
use crate::device::service::Polled;
use crate::discovery::DEVICE_GRANT;
use crate::error::OAuthError;
use crate::form::{is_form_content_type, Params};

impl Gateway {
    /// A device-code poll's answer, or `None` for a request that is not one (relayed).
    pub(super) async fn token(&self, req: &Request<'_>) -> Option<Reply> {
        let ours = is_form_content_type(req.header("content-type"))
            && form_urlencoded::parse(&req.body)
                .any(|(k, v)| k == "grant_type" && v == DEVICE_GRANT);
        if !ours {
            return None;
        }
        if self.config.upstream.token_path.is_none() {
            // Routed here before discovery had loaded: learn the token path now (one fetch
            // shared by every poll waiting for it), and relay what is not a poll of it.
            match self.oidc.discovery_if_due().await {
                Ok(d)
                    if self.answers_polls_at(&d)
                        && d.token_endpoint.path() == req.head.uri.path() => {}
                Ok(_) => return None,
                Err(e) => {
                    tracing::warn!(error = %e, "device-code poll before discovery could load");
                    let e = OAuthError::TemporarilyUnavailable(
                        "the identity provider is unreachable, try again later".into(),
                    );
                    return Some(Reply::oauth_error(&e).fact(Fact::Poll(e.code())));
                }
            }
        }
        Some(self.poll(req).await)
    }

    async fn poll(&self, req: &Request<'_>) -> Reply {
        let (client_id, polled) = match self.poll_grant(req).await {
            Ok(done) => done,
            Err(e) => (
                String::new(),
                Polled {
                    grant: None,
                    subject: None,
                    result: Err(e),
                    view: None,
                    first_expiry: false,
                },
            ),
        };
        let grant = polled.grant.as_deref().unwrap_or_default();
        match polled.result {
            Ok(tokens) => Reply::json(200, &tokens)
                .fact(Fact::Poll("delivered"))
                .fact(Fact::Audit(
                    Audit::grant(Event::Delivered, grant, &client_id)
                        .subject(polled.subject.as_deref())
                        .with_view(polled.view),
                )),
            Err(e) => {
                let mut reply = Reply::oauth_error(&e)
                    .fact(Fact::Poll(e.code()))
                    .facts(events::limited_by(&e));
                if polled.first_expiry {
                    // Once per grant, by whichever instance saw it first.
                    let audit = Audit::grant(Event::Expired, grant, &client_id);
                    reply = reply.fact(Fact::Audit(audit.with_view(polled.view)));
                }
                reply
            }
        }
    }

    /// Limits, client authentication, then the grant: the authenticated client and what the
    /// poll found.
    async fn poll_grant(&self, req: &Request<'_>) -> Result<(String, Polled), OAuthError> {
        let now = req.now.secs();
        request::within_size_limits(req.head, &self.config.limits)?;
        let params = Params::parse(&req.body)?;
        // Limits come before the grant: a flood of polls costs it nothing.
        let limited = |r| limit_error(r, true);
        self.limits
            .poll_from(req.ip_key, now)
            .await
            .map_err(limited)?;
        let creds = auth::credentials(req, &params, &self.config.clients)?;
        let client = auth::authenticate(&self.config.clients, &self.switch, &creds)?;
        let device_code = params.require("device_code")?;
        self.limits
            .poll_by(&client.client_id, now)
            .await
            .map_err(limited)?;
        let polled = self
            .device
            .poll_grant(&client.client_id, device_code, req.now)
            .await;
        Ok((client.client_id.clone(), polled))
    }
}
