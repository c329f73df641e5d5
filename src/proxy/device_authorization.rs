//! The device authorization endpoint (RFC 8628 §3.1, §3.2): authenticate the client, check
//! its scopes and the flood limits, issue a grant, answer its codes.

use serde::Serialize;

use super::events::{self, Audit, Event, Fact};
use super::{auth, limit_error, Gateway, Reply, Request};
use crate::device::code::display_user_code;
use crate::device::code::random_token;
use crate::device::service::{resolve_scopes, Requester};
use crate::error::OAuthError;
use crate::limits::network_key;

/// The §3.2 answer, in its order.
#[derive(Serialize)]
struct Response<'a> {
    device_code: &'a str,
    user_code: &'a str,
    verification_uri: &'a str,
    /// Absent for a client with `verification_uri_complete: false`: its users type the code.
    #[serde(skip_serializing_if = "Option::is_none")]
    verification_uri_complete: Option<String>,
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
        let ip = req.ip_key;
        let now = req.now;
        // Before the client authenticates, so guessing a client secret is rate limited too.
        if let Err(r) = self.limits.device_request_from(ip, now.secs()).await {
            return refuse(limit_error(r, false));
        }
        let client = match auth::credentials(req, &params, &self.config.clients)
            .and_then(|creds| auth::authenticate(&self.config.clients, &self.switch, &creds))
        {
            Ok(c) => c,
            Err(e) => return refuse(e),
        };
        // RFC 10027 trusted networks: this client's devices start flows only from these.
        if !client.policy.device_allowed(req.client_ip) {
            let e = OAuthError::UnauthorizedClient(
                "this client may not start a device flow from this network".into(),
            );
            tracing::warn!(client_id = %client.client_id, "device request from outside device_networks");
            return refuse(e).facts(events::request_refused_by_policy(
                &client.client_id,
                "device_networks",
            ));
        }
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
        let mut scopes = match resolve_scopes(params.get("scope"), &client.allowed_scopes) {
            Ok(s) => s,
            Err(e) => return refuse(e),
        };
        if !client.policy.refresh_tokens {
            // Short-lived tokens only: nobody is asked to let the device stay signed in.
            scopes.retain(|s| s != "offline_access");
        }
        // The link tag needs the deployment's shared secret: fetched before anything is spent.
        let keys = if client.policy.verification_uri_complete {
            match self.browsers.keys(&self.device).await {
                Ok(k) => Some(k),
                Err(e) => {
                    tracing::warn!(error = %e, "store failed");
                    return refuse(OAuthError::TemporarilyUnavailable(
                        "the gateway cannot reach its grant store, try again later".into(),
                    ));
                }
            }
        } else {
            None
        };
        let requester = Requester {
            ip: req.ip_text(),
            software: Requester::software_from_user_agent(req.header("user-agent")),
        };
        // The network's share of the pending grants, so that a few networks cannot fill the
        // store for everyone else.
        if let Err(r) = self.limits.open_grant(&network, now.secs()).await {
            return refuse(limit_error(r, false));
        }
        // The client's own share (`max_pending`), so one client's flood leaves the others room.
        let mut slot = None;
        if let Some(max) = client.policy.max_pending {
            let until = now.secs_ceil() + self.config.device.expires_in;
            let member = slot.insert(random_token(16));
            let opened = self
                .limits
                .open_client_grant(&client.client_id, member, max, until, now.secs())
                .await;
            if let Err(r) = opened {
                self.limits.grant_not_opened(&network).await;
                let full = matches!(r, crate::limits::Refused::Limited(_));
                let e = limit_error(r, false);
                if !full {
                    return refuse(e);
                }
                // The client's policy, not a flood limit: counted and audited as the policy.
                tracing::warn!(client_id = %client.client_id, max, "client's pending grants at max_pending");
                return Reply::oauth_error(&e)
                    .fact(Fact::DeviceAuthorization {
                        client: client.client_id.clone(),
                        result: e.code(),
                    })
                    .facts(events::request_refused_by_policy(
                        &client.client_id,
                        "max_pending",
                    ));
            }
        }
        let issued = match self
            .device
            .authorize(&client.client_id, scopes, requester, now)
            .await
        {
            Ok(i) => i,
            Err(e) => {
                self.limits.grant_not_opened(&network).await;
                if let Some(member) = &slot {
                    self.limits
                        .client_grant_not_opened(&client.client_id, member)
                        .await;
                }
                return refuse(e);
            }
        };
        let user_code = display_user_code(&issued.user_code);
        let verification_uri = self.verification_uri.as_str();
        let body = Response {
            device_code: &issued.device_code,
            user_code: &user_code,
            verification_uri,
            verification_uri_complete: keys
                .map(|k| self.complete_uri(&user_code, &k.link_tag(&issued.user_code))),
            expires_in: issued.expires_in,
            interval: issued.interval,
            verification_url: client.verification_url.then_some(verification_uri),
        };
        Reply::json(200, &body)
            .fact(Fact::DeviceAuthorization {
                client: client.client_id.clone(),
                result: "issued",
            })
            .fact(Fact::Audit(
                Audit::grant(Event::Created, &issued.id, &client.client_id)
                    .with_view(Some(issued.view)),
            ))
    }

    /// `verification_uri_complete` (§3.3.1) for a canonical user code and its link tag.
    pub(super) fn verification_uri_complete(&self, user_code: &str, tag: &str) -> String {
        self.complete_uri(&display_user_code(user_code), tag)
    }

    /// The same, for a user code already in its displayed form (`WDJB-MJHT`): the URL is
    /// joined from its parts, without `format!`.
    fn complete_uri(&self, displayed_code: &str, tag: &str) -> String {
        let parts = [
            self.verification_uri.as_str(),
            "?user_code=",
            displayed_code,
            "&t=",
            tag,
        ];
        let mut uri = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        parts.iter().for_each(|p| uri.push_str(p));
        uri
    }
}
