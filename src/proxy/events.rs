//! What a reply reports: audit events and metric samples, as [`Fact`]s a handler attaches to
//! its [`super::Reply`] once the change they report has happened (a store transition that
//! succeeded, a limit that refused). [`record`] turns them into the `audit` log line and the
//! Prometheus counters in one place, so nothing is logged or counted on a path that failed.

use serde_json::{json, Value};

use crate::device::{Grant, GrantView};
use crate::error::OAuthError;
use crate::metrics::Metrics;
use crate::webhooks::Outbox;

/// Who denied a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// The user pressed Deny ("I did not start this").
    User,
    /// The IdP refused the login (or its answer failed validation).
    Idp,
    /// The operator's kill switch (`clients[].enabled: false`).
    Operator,
    /// A rule of the client's policy (`approver_networks`, `proximity`, `require_claims`,
    /// `acr_values`, `max_age`).
    Policy(&'static str),
}

impl By {
    fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Idp => "idp",
            Self::Operator => "operator",
            Self::Policy(_) => "policy",
        }
    }
}

/// One step of a grant's life, or a refusal, in the audit log (`target: "audit"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A device authorization issued a grant.
    Created,
    /// A user code was entered and its consent page shown.
    CodeEntered,
    /// The IdP login succeeded and the grant holds tokens.
    Approved,
    Denied(By),
    /// A poll found the grant expired.
    Expired,
    /// A poll took the tokens.
    Delivered,
    /// A limit refused a request (`device`, `poll`, `code_failures`).
    Refused(&'static str),
    /// A rule of the client's policy refused a device request (`device_networks`,
    /// `max_pending`).
    PolicyRefused(&'static str),
    /// The user denied the grant as "I did not start this": possible phishing.
    Reported,
    /// A user signed in at the IdP to enter codes while everyone's wrong-code budget was spent.
    SignedIn,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::CodeEntered => "code_entered",
            Self::Approved => "approved",
            Self::Denied(_) => "denied",
            Self::Expired => "expired",
            Self::Delivered => "delivered",
            Self::Refused(_) | Self::PolicyRefused(_) => "refused",
            Self::Reported => "reported",
            Self::SignedIn => "signed_in",
        }
    }
}

/// An audit event with what it is about. Never a code, a token or a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    pub event: Event,
    pub grant: Option<String>,
    pub client_id: Option<String>,
    /// The user's `sub` at the IdP, once known.
    pub sub: Option<String>,
    /// The IdP's error code, for a login it refused; why a policy rule refused.
    pub error: Option<String>,
    /// The device's address and software, for a report.
    pub device_ip: Option<String>,
    pub device_software: Option<String>,
    /// The grant as operators see it, sent with the event's webhook.
    pub view: Option<Box<GrantView>>,
}

impl Audit {
    pub fn new(event: Event) -> Self {
        Self {
            event,
            grant: None,
            client_id: None,
            sub: None,
            error: None,
            device_ip: None,
            device_software: None,
            view: None,
        }
    }

    /// The event about one grant, as it stands after the event.
    pub fn of(event: Event, g: &Grant) -> Self {
        let at = match event {
            Event::Expired => g.expires_at,
            _ => g.ended_at.unwrap_or(g.created_at),
        };
        Self {
            sub: g.subject.clone(),
            view: Some(Box::new(g.view(at))),
            ..Self::grant(event, &g.id, &g.client_id)
        }
    }

    /// With the grant's view (see [`Audit::of`]).
    pub fn with_view(mut self, view: Option<GrantView>) -> Self {
        self.view = view.map(Box::new);
        self
    }

    /// The event about one grant.
    pub fn grant(event: Event, grant: &str, client_id: &str) -> Self {
        Self {
            grant: Some(grant.to_string()),
            client_id: Some(client_id.to_string()),
            ..Self::new(event)
        }
    }

    pub fn subject(mut self, sub: Option<&str>) -> Self {
        self.sub = sub.map(str::to_string);
        self
    }

    pub fn error(mut self, error: &str) -> Self {
        self.error = Some(error.to_string());
        self
    }
}

/// Something that happened while answering a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    Audit(Audit),
    /// A device authorization request: the client (configured ids only, else `unknown`) and
    /// `issued` or the OAuth error code.
    DeviceAuthorization {
        client: String,
        result: &'static str,
    },
    /// A device-code poll: `delivered` or the OAuth error code.
    Poll(&'static str),
    /// A verification-page or login outcome: `approved`, `denied`, `login_failed`,
    /// `login_retry`, `unknown_code`, `malformed_code`, or `refused` (the page would not act:
    /// expired, already used or denied, a mismatched login, a disabled client, too many
    /// attempts).
    Verification(&'static str),
    /// A request refused by a limit (`code_failures`, `device`, `poll`).
    Limited(&'static str),
    /// A request or approval refused by a client's policy rule.
    Policy {
        client: String,
        rule: &'static str,
    },
    /// A grant denied as "I did not start this".
    Reported {
        client: String,
    },
}

/// The facts of a policy refusal: the count, and the audit event (`refused` for a device
/// request, `denied` when it denied a grant).
pub fn policy_refusal(audit: Audit, client: &str, rule: &'static str) -> [Fact; 2] {
    [
        Fact::Policy {
            client: client.to_string(),
            rule,
        },
        Fact::Audit(audit),
    ]
}

/// [`policy_refusal`] of a device request (no grant yet): `refused` with `by=policy`.
pub fn request_refused_by_policy(client: &str, rule: &'static str) -> [Fact; 2] {
    let audit = Audit {
        client_id: Some(client.to_string()),
        ..Audit::new(Event::PolicyRefused(rule))
    };
    policy_refusal(audit, client, rule)
}

/// The facts of a request a limit refused: the `rate_limited` count and a `refused` event.
pub fn limited(limit: &'static str) -> [Fact; 2] {
    [
        Fact::Limited(limit),
        Fact::Audit(Audit::new(Event::Refused(limit))),
    ]
}

/// [`limited`] for an endpoint error that is a rate limit; nothing for any other error.
pub fn limited_by(e: &OAuthError) -> Vec<Fact> {
    match e {
        OAuthError::RateLimited { poll, .. } => {
            limited(if *poll { "poll" } else { "device" }).to_vec()
        }
        _ => Vec::new(),
    }
}

/// Logs and counts the facts of one reply, and sends their security events to the webhooks
/// that want them; `client_ip` is the request's address key, `now` Unix seconds.
pub fn record(metrics: &Metrics, outbox: &Outbox, facts: &[Fact], client_ip: &str, now: u64) {
    for fact in facts {
        match fact {
            Fact::Audit(a) => {
                audit(a, client_ip);
                webhooks(outbox, a, client_ip, now);
            }
            Fact::DeviceAuthorization { client, result } => {
                metrics.device_authorizations.inc(client, result)
            }
            Fact::Poll(outcome) => metrics.polls.inc(outcome),
            Fact::Verification(outcome) => metrics.verifications.inc(outcome),
            Fact::Limited(limit) => metrics.rate_limited.inc(limit),
            Fact::Policy { client, rule } => metrics.policy_refusals.inc(client, rule),
            Fact::Reported { client } => metrics.reported.inc(client),
        }
    }
}

/// The webhook event types of an audit event (a report is also a denial by the user, and a
/// policy's denial also a policy refusal).
pub fn webhook_types(event: Event) -> &'static [&'static str] {
    match event {
        Event::Created => &["grant.created"],
        Event::Approved => &["grant.approved"],
        Event::Denied(By::Policy(_)) => &["grant.denied", "policy.refused"],
        Event::Denied(_) => &["grant.denied"],
        Event::Reported => &["grant.reported", "grant.denied"],
        Event::Expired => &["grant.expired"],
        Event::Delivered => &["grant.delivered"],
        Event::Refused(_) => &["limit.tripped"],
        Event::PolicyRefused(_) => &["policy.refused"],
        Event::CodeEntered | Event::SignedIn => &[],
    }
}

/// What a webhook event says: the grant's view when it is about a grant, and why.
pub fn webhook_data(a: &Audit, client_ip: &str) -> Value {
    let mut data = match &a.view {
        Some(v) => serde_json::to_value(v).unwrap_or_else(|_| json!({})),
        None => json!({}),
    };
    if let Value::Object(m) = &mut data {
        if a.view.is_none() {
            if let Some(c) = &a.client_id {
                m.insert("client_id".into(), c.as_str().into());
            }
        }
        match a.event {
            Event::Denied(By::Policy(rule)) | Event::PolicyRefused(rule) => {
                m.insert("by".into(), "policy".into());
                m.insert("rule".into(), rule.into());
            }
            Event::Denied(by) => {
                m.insert("by".into(), by.as_str().into());
            }
            Event::Reported => {
                m.insert("by".into(), "user".into());
            }
            Event::Refused(limit) => {
                m.insert("limit".into(), limit.into());
            }
            _ => {}
        }
        if let Some(e) = &a.error {
            m.insert("error".into(), e.as_str().into());
        }
        // The address of the request behind the event: the device's for device requests and
        // polls, the browser's for the pages.
        if !client_ip.is_empty() {
            m.insert("client_ip".into(), client_ip.into());
        }
    }
    data
}

/// Seconds between two `limit.tripped` events of one limit, per instance: a flood is one
/// alert a minute, with its count in the metrics.
pub const LIMIT_EVENT_EVERY: u64 = 60;

fn webhooks(outbox: &Outbox, a: &Audit, client_ip: &str, now: u64) {
    // Made once, for the first type a receiver wants (a report is sent as two).
    let mut data = None;
    for kind in webhook_types(a.event) {
        if !outbox.wants(kind) {
            continue;
        }
        if let Event::Refused(limit) = a.event {
            if !outbox.first_in(limit, LIMIT_EVENT_EVERY, now) {
                continue;
            }
        }
        let data = data.get_or_insert_with(|| webhook_data(a, client_ip));
        outbox.send(kind, data, now);
    }
}

fn audit(a: &Audit, client_ip: &str) {
    let (by, rule) = match a.event {
        Event::Denied(By::Policy(rule)) | Event::PolicyRefused(rule) => {
            (Some("policy"), Some(rule))
        }
        Event::Denied(by) => (Some(by.as_str()), None),
        _ => (None, None),
    };
    let limit = match a.event {
        Event::Refused(limit) => Some(limit),
        _ => None,
    };
    let (device_ip, device_software) = (a.device_ip.as_deref(), a.device_software.as_deref());
    let (grant, client_id) = (a.grant.as_deref(), a.client_id.as_deref());
    let (sub, error) = (a.sub.as_deref(), a.error.as_deref());
    let event = a.event.name();
    if limit == Some("code_failures") {
        // Someone may be guessing codes: worth a warning.
        tracing::warn!(target: "audit", event, limit, client_ip);
    } else if a.event == Event::Reported || rule.is_some() {
        // Possible phishing, or a policy at work: what security teams alert on.
        tracing::warn!(target: "audit", event, by, rule, grant, client_id, sub, error, device_ip, device_software, client_ip);
    } else {
        tracing::info!(target: "audit", event, by, limit, grant, client_id, sub, error, client_ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn facts_become_the_documented_series() {
        let m = Metrics::new().unwrap();
        let mut facts = vec![
            Fact::Verification("refused"),
            Fact::Poll("delivered"),
            Fact::DeviceAuthorization {
                client: "tv".into(),
                result: "issued",
            },
        ];
        facts.extend(limited("code_failures"));
        record(
            &m,
            &Outbox::none(Arc::new(Metrics::new().unwrap())),
            &facts,
            "127.0.0.1",
            0,
        );
        let text = String::from_utf8(m.render()).unwrap();
        for series in [
            r#"devicegate_verifications_total{outcome="refused"} 1"#,
            r#"devicegate_polls_total{outcome="delivered"} 1"#,
            r#"devicegate_device_authorizations_total{client_id="tv",result="issued"} 1"#,
            r#"devicegate_rate_limited_total{limit="code_failures"} 1"#,
        ] {
            assert!(text.contains(series), "{series} in {text}");
        }
    }
}
