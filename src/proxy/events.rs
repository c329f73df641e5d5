//! What a reply reports: audit events and metric samples, as [`Fact`]s a handler attaches to
//! its [`super::Reply`] once the change they report has happened (a store transition that
//! succeeded, a limit that refused). [`record`] turns them into the `audit` log line and the
//! Prometheus counters in one place, so nothing is logged or counted on a path that failed.

use crate::error::OAuthError;
use crate::metrics::Metrics;

/// Who denied a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// The user pressed Deny ("I did not start this").
    User,
    /// The IdP refused the login (or its answer failed validation).
    Idp,
    /// The operator's kill switch (`clients[].enabled: false`).
    Operator,
}

impl By {
    fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Idp => "idp",
            Self::Operator => "operator",
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
            Self::Refused(_) => "refused",
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
    /// The IdP's error code, for a login it refused.
    pub error: Option<String>,
}

impl Audit {
    pub fn new(event: Event) -> Self {
        Self {
            event,
            grant: None,
            client_id: None,
            sub: None,
            error: None,
        }
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

/// Logs and counts the facts of one reply; `client_ip` is the request's address key.
pub fn record(metrics: &Metrics, facts: &[Fact], client_ip: &str) {
    for fact in facts {
        match fact {
            Fact::Audit(a) => audit(a, client_ip),
            Fact::DeviceAuthorization { client, result } => metrics
                .device_authorizations
                .with_label_values(&[client.as_str(), result])
                .inc(),
            Fact::Poll(outcome) => metrics.polls.with_label_values(&[outcome]).inc(),
            Fact::Verification(outcome) => {
                metrics.verifications.with_label_values(&[outcome]).inc()
            }
            Fact::Limited(limit) => metrics.rate_limited.with_label_values(&[limit]).inc(),
        }
    }
}

fn audit(a: &Audit, client_ip: &str) {
    let by = match a.event {
        Event::Denied(by) => Some(by.as_str()),
        _ => None,
    };
    let limit = match a.event {
        Event::Refused(limit) => Some(limit),
        _ => None,
    };
    let (grant, client_id) = (a.grant.as_deref(), a.client_id.as_deref());
    let (sub, error) = (a.sub.as_deref(), a.error.as_deref());
    let event = a.event.name();
    if limit == Some("code_failures") {
        // Someone may be guessing codes: worth a warning.
        tracing::warn!(target: "audit", event, limit, client_ip);
    } else {
        tracing::info!(target: "audit", event, by, limit, grant, client_id, sub, error, client_ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        record(&m, &facts, "127.0.0.1");
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
