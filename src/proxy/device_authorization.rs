//! The device authorization endpoint (RFC 8628 §3.1, §3.2): authenticate the client, check
//! its scopes and the flood limits, issue a grant, answer its codes.

use serde::Serialize;

use super::events::{self, Audit, Event, Fact};
use super::{auth, limit_error, Gateway, Reply, Request};
use crate::device::code::display_user_code;
use crate::device::service::{resolve_scopes, Requester};
use crate::error::OAuthError;
use crate::limits::network_key;

/// The §3.2 answer, in its order.
#[derive(Serialize)]
struct Response<'a> {
    device_code: &'a str,
    user_code: &'a str,
    verification_uri: &'a str,
    verification_uri_complete: &'a str,
    expires_in: u64,
    interval: u64,
    /// Google's name for verification_uri, for clients written against Google only.
    #[serde(skip_serializing_if = "Option::is_none")]
    verification_url: Option<&'a str>,
}

impl Gateway {
    pub(super) async fn device_authorization(&self, req: &Request<'_>) -> Reply {
        let params = req.form();
        // Refusals are counted under the client the request names, by HTTP Basic or the form.
        let claimed = auth::claimed_client_id(req, params.as_ref().ok());
        let refuse = |e: OAuthError| {
            tracing::info!(error = e.code(), "device authorization refused");
            Reply::oauth_error(&e)
                .fact(Fact::DeviceAuthorization {
                    client: self.client_label(claimed.as_deref()),
                    result: e.code(),
                })
                .facts(events::limited_by(&e))
        };
        let params = match params {
            Ok(p) => p,
            Err(e) => return refuse(e),
        };
        let ip = req.ip_key();
        let now = req.now;
        // Before the client authenticates, so guessing a client secret is rate limited too.
        if let Err(r) = self.limits.device_request_from(&ip, now.secs()).await {
            return refuse(limit_error(r, false));
        }
        let client = match auth::credentials(req, &params, &self.config.clients)
            .and_then(|creds| auth::authenticate(&self.config.clients, &creds))
        {
            Ok(c) => c,
            Err(e) => return refuse(e),
        };
        // Counted only once authenticated, so a stranger cannot spend a client's budget.
        let network = network_key(req.client_ip);
        let public = client.client_secret.is_none();
        if let Err(r) = self
            .limits
            .device_request_by(&client.client_id, public, &network, now.secs())
            .await
        {
            return refuse(limit_error(r, false));
        }
        let scopes = match resolve_scopes(params.get("scope"), &client.allowed_scopes) {
            Ok(s) => s,
            Err(e) => return refuse(e),
        };
        let requester = Requester {
            ip: req.client_ip.map(|ip| ip.to_string()),
            software: Requester::software_from_user_agent(req.header("user-agent")),
        };
        // The network's share of the pending grants, so that a few networks cannot fill the
        // store for everyone else.
        if let Err(r) = self.limits.open_grant(&network, now.secs()).await {
            return refuse(limit_error(r, false));
        }
        let issued = match self
            .device
            .authorize(&client.client_id, scopes, requester, now)
            .await
        {
            Ok(i) => i,
            Err(e) => {
                self.limits.grant_not_opened(&network).await;
                return refuse(e);
            }
        };
        let verification_uri = self.config.public(&self.config.device.verification_path);
        let body = Response {
            device_code: &issued.device_code,
            user_code: &display_user_code(&issued.user_code),
            verification_uri: &verification_uri,
            verification_uri_complete: &self.verification_uri_complete(&issued.user_code),
            expires_in: issued.expires_in,
            interval: issued.interval,
            verification_url: client.verification_url.then_some(verification_uri.as_str()),
        };
        Reply::json(200, &body)
            .fact(Fact::DeviceAuthorization {
                client: client.client_id.clone(),
                result: "issued",
            })
            .fact(Fact::Audit(Audit::grant(
                Event::Created,
                &issued.id,
                &client.client_id,
            )))
    }

    /// `verification_uri_complete` (§3.3.1) for a canonical user code.
    pub(super) fn verification_uri_complete(&self, user_code: &str) -> String {
        format!(
            "{}?user_code={}",
            self.config.public(&self.config.device.verification_path),
            display_user_code(user_code)
        )
    }
}
