//! A client's phishing defences at the browser (RFC 10027): where the approver may be
//! (`approver_networks`, `proximity`) and who may approve (`require_claims`, `acr_values`,
//! `max_age`). A rule that refuses denies the grant, so the device stops polling at once, and
//! the page says why; the device-side rules (`device_networks`, `max_pending`) are in
//! [`super::device_authorization`].
//!
//! Why a refusal also denies the grant: a code entered from the wrong place is what device-code
//! phishing looks like (the victim is far from the attacker's device), and a denied grant is a
//! code the attacker can no longer get approved by anyone. Whoever could trigger it already
//! holds the code and could press Deny.

use std::net::IpAddr;

use serde_json::{Map, Value};

use super::events::{self, Audit, By, Event, Fact};
use super::{Gateway, Reply};
use crate::config::{Policy, Proximity};
use crate::device::service::BrowserError;
use crate::device::{Grant, Refusal};
use crate::oidc::LoginResult;
use crate::pages::{Catalog, Message};

/// The address the device asked from, as stored in its grant.
pub(super) fn device_ip(grant: &Grant) -> Option<IpAddr> {
    grant.requester_ip.as_deref().and_then(|ip| ip.parse().ok())
}

/// The rule a browser at `browser` breaks for this grant, and the page for it.
pub(super) fn browser_refusal(
    policy: &Policy,
    grant: &Grant,
    browser: Option<IpAddr>,
) -> Option<(&'static str, Message)> {
    if !policy.approver_allowed(browser) {
        return Some(("approver_networks", Message::NetworkNotAllowed));
    }
    if policy.proximity == Proximity::Require && !policy.near(device_ip(grant), browser) {
        return Some(("proximity", Message::Proximity));
    }
    None
}

/// Whether the consent page warns that the device is elsewhere (`proximity: warn`).
pub(super) fn warn_far(policy: &Policy, grant: &Grant, browser: Option<IpAddr>) -> bool {
    let device = device_ip(grant);
    policy.proximity == Proximity::Warn
        && device.is_some()
        && browser.is_some()
        && !policy.near(device, browser)
}

impl Gateway {
    /// The network rules for a browser at `browser` on this grant: `None` when they pass, else
    /// the grant is denied and the reply says why.
    pub(super) async fn network_refusal(
        &self,
        t: &Catalog,
        policy: &Policy,
        grant: &Grant,
        browser: Option<IpAddr>,
        now: u64,
    ) -> Option<Reply> {
        let (rule, page) = browser_refusal(policy, grant, browser)?;
        let reason = format!("the approval came from a network the client's {rule} rule refuses");
        Some(
            self.deny_by_policy(t, grant, rule, page, |g| g.deny("policy", &reason, now))
                .await,
        )
    }

    /// A policy rule refused the browser: deny the grant with `deny` (a transition), and show
    /// `page`. Audited as `denied` with `by=policy` once the store has denied it.
    pub(super) async fn deny_by_policy(
        &self,
        t: &Catalog,
        grant: &Grant,
        rule: &'static str,
        page: Message,
        deny: impl FnMut(&mut Grant) -> Result<(), Refusal> + Send,
    ) -> Reply {
        tracing::warn!(grant = %grant.id, client_id = %grant.client_id, rule, "policy refused the approval");
        let denied = self
            .device
            .transition(crate::device::Key::Id(&grant.id), deny)
            .await;
        let reply = self.message(t, page).fact(Fact::Verification("refused"));
        match denied {
            Ok(g) => {
                let audit = Audit {
                    device_ip: g.requester_ip.clone(),
                    ..Audit::of(Event::Denied(By::Policy(rule)), &g)
                };
                reply.facts(events::policy_refusal(audit, &g.client_id, rule))
            }
            Err(BrowserError::Refused(r)) => {
                // It ended meanwhile (expired, used, denied): say that instead.
                self.message(t, super::verification::refusal_page(r))
                    .fact(Fact::Verification("refused"))
            }
            Err(e) => self.browser_error(t, e),
        }
    }

    /// The claims a policy judges: the validated ID token's, with the userinfo endpoint's for
    /// required claims the token lacks (many IdPs put `groups` or `email_verified` only there).
    pub(super) async fn policy_claims(
        &self,
        policy: &Policy,
        login: &LoginResult,
    ) -> Result<Map<String, Value>, crate::oidc::UpstreamError> {
        let mut claims = login.claims.clone();
        let missing = policy
            .require_claims
            .keys()
            .any(|c| !claims.contains_key(c));
        if missing {
            let token = login
                .tokens
                .get("access_token")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let info = self.oidc.userinfo(token, &login.subject).await?;
            for (k, v) in info {
                claims.entry(k).or_insert(v);
            }
        }
        Ok(claims)
    }
}
