//! The grant state machine (RFC 8628 §3.4, §3.5).
//!
//! ```text
//!             approve (browser)          callback ok             poll
//!  Pending ──────────────────▶ Authorizing ─────────▶ Approved ───────▶ Delivered
//!     │ ▲                          │  │ transient failure: back to Pending
//!     │ └──────────────────────────┘  │
//!     │ deny           deny / IdP error│
//!     └──────────────▶ Denied ◀────────┘
//! ```
//!
//! Every transition takes `now` (seconds since the Unix epoch) as a parameter; nothing here reads
//! a clock, so expiry and `slow_down` are tested with plain numbers.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

use crate::error::OAuthError;

/// The interval after a `slow_down`: 5 s more (§3.5), up to [`MAX_POLL_INTERVAL`].
pub fn grown_interval(interval: u64) -> u64 {
    (interval + 5).min(MAX_POLL_INTERVAL.max(interval))
}

/// The slowest polling `slow_down` asks for: a device that keeps polling too fast is never told
/// to wait more than a minute between polls.
pub const MAX_POLL_INTERVAL: u64 = 60;

/// The token response of the upstream IdP, kept as its JSON object so the device gets every
/// field the IdP sent.
pub type TokenSet = Map<String, Value>;

/// One pending device authorization.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Grant {
    /// Random id: names the grant in the upstream `state` and in logs (never the device code).
    pub id: String,
    /// SHA-256 (hex) of the device code: the code itself is never stored.
    pub device_code_hash: String,
    /// Canonical user code (8 letters, no dash).
    pub user_code: String,
    pub client_id: String,
    pub scopes: Vec<String>,
    /// Where the device request came from, shown on the consent page.
    pub requester_ip: Option<String>,
    /// The product of the device request's User-Agent (e.g. `curl/8.5.0`), shown on the
    /// consent page. Absent in grants written by versions before it existed.
    #[serde(default)]
    pub requester_software: Option<String>,
    pub created_at: u64,
    pub expires_at: u64,
    /// Current minimum polling interval in seconds; grows by 5 with every `slow_down`.
    pub interval: u64,
    pub last_poll: Option<u64>,
    pub status: Status,
    /// The user's `sub` at the IdP once the login succeeded, kept after delivery for the
    /// operators' list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// When the grant was delivered or denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<u64>,
    /// Who denied it: `user`, `idp`, `operator` or `policy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied_by: Option<String>,
    /// One instance has reported the grant's expiry (a poll saw it, or the sweep did), so it
    /// is reported once however many instances look.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expiry_reported: bool,
}

/// What operators see of a grant (the admin API's `GET /grants`, the webhooks' grant events):
/// never a code, a token or a login secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GrantView {
    pub id: String,
    pub client_id: String,
    /// `pending`, `authorizing`, `approved`, `delivered`, `denied` or `expired`.
    pub status: std::borrow::Cow<'static, str>,
    /// Unix seconds, as JWT claims count time.
    pub created_at: u64,
    pub expires_at: u64,
    pub device_address: Option<String>,
    pub device_software: Option<String>,
    pub subject: Option<String>,
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied_by: Option<String>,
}

impl GrantView {
    /// Whether the grant still waits for the user or the device.
    pub fn is_pending(&self) -> bool {
        is_pending_status(&self.status)
    }
}

/// The statuses of a grant that still waits for the user or the device.
fn is_pending_status(status: &str) -> bool {
    matches!(status, "pending" | "authorizing" | "approved")
}

/// Where a grant stands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    /// Waiting for the user.
    Pending,
    /// The user approved on the verification page and was sent to the IdP's login.
    Authorizing(Login),
    /// The IdP returned tokens; the next poll takes them.
    Approved {
        tokens: TokenSet,
        approved_at: u64,
        subject: Option<String>,
    },
    /// The user or the IdP refused. `reason` goes to the device as `error_description`.
    Denied { reason: String },
    /// Tokens were handed out: any later poll is `invalid_grant` (single use).
    Delivered,
}

/// The secrets of one upstream login attempt, bound to the grant.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct Login {
    /// Random part of the upstream `state` (the state is `{grant id}.{secret}`).
    pub state_secret: String,
    pub nonce: String,
    pub pkce_verifier: String,
    /// HMAC (keyed with the store's shared secret) of the browser session cookie that started
    /// the login: a callback URL replayed in another browser cannot approve this device.
    pub browser_binding: String,
    /// A callback has taken this login and is exchanging its code: a second callback (a
    /// double click, a replay in the same browser) must not exchange it again.
    #[serde(default)]
    pub claimed: bool,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login").finish_non_exhaustive()
    }
}

/// Why the browser side cannot act on a grant; each becomes its own page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `expires_in` has passed.
    Expired,
    /// Already approved or delivered.
    AlreadyUsed,
    /// Already denied.
    AlreadyDenied,
    /// The `state` or the browser does not match the login in progress (replay, forgery, or a
    /// second login started since).
    LoginMismatch,
}

impl Grant {
    /// Where the grant stands at `now`, as the admin API names it.
    pub fn status_name(&self, now: u64) -> &'static str {
        match self.status {
            Status::Delivered => "delivered",
            Status::Denied { .. } => "denied",
            _ if self.is_expired(now) => "expired",
            Status::Pending => "pending",
            Status::Authorizing(_) => "authorizing",
            Status::Approved { .. } => "approved",
        }
    }

    /// Whether the grant still waits for the user or the device at `now` (not ended, not
    /// expired).
    pub fn is_pending(&self, now: u64) -> bool {
        is_pending_status(self.status_name(now))
    }

    /// The operators' view of the grant at `now`.
    pub fn view(&self, now: u64) -> GrantView {
        let status = self.status_name(now);
        GrantView {
            id: self.id.clone(),
            client_id: self.client_id.clone(),
            status: status.into(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            device_address: self.requester_ip.clone(),
            device_software: self.requester_software.clone(),
            subject: self.subject.clone(),
            scopes: self.scopes.clone(),
            ended_at: match status {
                "expired" => Some(self.expires_at),
                _ => self.ended_at,
            },
            denied_by: self.denied_by.clone(),
        }
    }

    /// The first look at this grant since it expired: marks it reported and says so once.
    pub fn report_expiry(&mut self, now: u64) -> bool {
        if self.status_name(now) == "expired" && !self.expiry_reported {
            self.expiry_reported = true;
            return true;
        }
        false
    }

    /// True once `expires_in` has passed.
    pub fn is_expired(&self, now: u64) -> bool {
        now >= self.expires_at
    }

    /// The device's poll (§3.4, §3.5). Terminal answers (tokens, denial, expiry, reuse) come
    /// before the rate check: `slow_down` only ever means "still pending, poll slower".
    pub fn poll(&mut self, client_id: &str, now: u64) -> Result<TokenSet, OAuthError> {
        // A device code presented by another client is treated as unknown, and changes nothing.
        if client_id != self.client_id {
            return Err(OAuthError::InvalidGrant(
                "the device code was not issued to this client".into(),
            ));
        }
        match &self.status {
            Status::Delivered => {
                // Single use (§3.5, RFC 6749 §4.1.2): a replayed device code gets nothing.
                return Err(OAuthError::InvalidGrant(
                    "the device code was already used".into(),
                ));
            }
            Status::Denied { reason } => return Err(OAuthError::AccessDenied(reason.clone())),
            _ if self.is_expired(now) => return Err(OAuthError::ExpiredToken),
            Status::Approved { .. } => {
                let Status::Approved {
                    mut tokens,
                    approved_at,
                    ..
                } = std::mem::replace(&mut self.status, Status::Delivered)
                else {
                    return Err(OAuthError::ServerError("grant state changed".into()));
                };
                self.last_poll = Some(now);
                self.ended_at = Some(now);
                // The tokens aged while the device waited for its next poll (Keycloak also
                // says how long its refresh token lives).
                let waited = now.saturating_sub(approved_at);
                for key in ["expires_in", "refresh_expires_in"] {
                    if let Some(exp) = tokens.get(key).and_then(Value::as_u64) {
                        tokens.insert(key.into(), exp.saturating_sub(waited).into());
                    }
                }
                return Ok(tokens);
            }
            Status::Pending | Status::Authorizing(_) => {}
        }
        if let Some(last) = self.last_poll {
            if now.saturating_sub(last) < self.interval {
                // §3.5: the interval grows by 5 s for this and all later requests, and the clock
                // restarts, so a client that obeys is never told to slow down again.
                self.interval = grown_interval(self.interval);
                self.last_poll = Some(now);
                return Err(OAuthError::SlowDown {
                    interval: self.interval,
                });
            }
        }
        self.last_poll = Some(now);
        Err(OAuthError::AuthorizationPending)
    }

    /// Whether the browser may still approve or deny this grant.
    pub fn check_actionable(&self, now: u64) -> Result<(), Refusal> {
        match self.status {
            Status::Approved { .. } | Status::Delivered => Err(Refusal::AlreadyUsed),
            Status::Denied { .. } => Err(Refusal::AlreadyDenied),
            _ if self.is_expired(now) => Err(Refusal::Expired),
            Status::Pending | Status::Authorizing(_) => Ok(()),
        }
    }

    /// The user pressed Approve: remember the login secrets. A second Approve (another tab)
    /// replaces the first login, whose callback then fails as a mismatch.
    pub fn begin_login(&mut self, login: Login, now: u64) -> Result<(), Refusal> {
        self.check_actionable(now)?;
        self.status = Status::Authorizing(login);
        Ok(())
    }

    /// The grant is refused by `by` (`user`, `operator`, `policy`; `reason` goes to the device).
    pub fn deny(&mut self, by: &str, reason: &str, now: u64) -> Result<(), Refusal> {
        self.check_actionable(now)?;
        self.end_denied(by, reason, now);
        Ok(())
    }

    /// An operator stops the grant: also one the user has approved but the device has not
    /// yet collected, whose tokens are dropped.
    pub fn deny_by_operator(&mut self, reason: &str, now: u64) -> Result<(), Refusal> {
        match self.status {
            Status::Approved { .. } if !self.is_expired(now) => {
                self.end_denied("operator", reason, now);
                Ok(())
            }
            _ => self.deny("operator", reason, now),
        }
    }

    fn end_denied(&mut self, by: &str, reason: &str, now: u64) {
        self.status = Status::Denied {
            reason: reason.to_string(),
        };
        self.ended_at = Some(now);
        self.denied_by = Some(by.to_string());
    }

    /// Checks that a callback belongs to the login in progress: same state secret, same browser.
    /// Comparisons are constant-time: both values are secrets an attacker might probe.
    pub fn check_login(&self, state_secret: &str, browser_binding: &str) -> Result<(), Refusal> {
        match &self.status {
            Status::Authorizing(login) => {
                let state_ok = login.state_secret.as_bytes().ct_eq(state_secret.as_bytes());
                let browser_ok = login
                    .browser_binding
                    .as_bytes()
                    .ct_eq(browser_binding.as_bytes());
                if bool::from(state_ok & browser_ok) {
                    Ok(())
                } else {
                    Err(Refusal::LoginMismatch)
                }
            }
            Status::Approved { .. } | Status::Delivered => Err(Refusal::AlreadyUsed),
            Status::Denied { .. } => Err(Refusal::AlreadyDenied),
            Status::Pending => Err(Refusal::LoginMismatch),
        }
    }

    /// A callback takes the login in progress before it exchanges the code, so that of two
    /// callbacks at once only one reaches the IdP (a code exchanged twice is revoked by IdPs
    /// that detect reuse, RFC 6749 §4.1.2).
    pub fn claim_login(
        &mut self,
        state_secret: &str,
        browser_binding: &str,
    ) -> Result<(), Refusal> {
        self.check_login(state_secret, browser_binding)?;
        match &mut self.status {
            Status::Authorizing(login) if !login.claimed => {
                login.claimed = true;
                Ok(())
            }
            _ => Err(Refusal::LoginMismatch),
        }
    }

    /// The IdP returned valid tokens for the login in progress.
    pub fn approve(
        &mut self,
        state_secret: &str,
        browser_binding: &str,
        tokens: TokenSet,
        subject: Option<String>,
        now: u64,
    ) -> Result<(), Refusal> {
        self.check_login(state_secret, browser_binding)?;
        if self.is_expired(now) {
            return Err(Refusal::Expired);
        }
        self.subject.clone_from(&subject);
        self.status = Status::Approved {
            tokens,
            approved_at: now,
            subject,
        };
        Ok(())
    }

    /// The login in progress ended without tokens. `retryable` (the IdP was unreachable) puts
    /// the grant back to Pending so the user can try again; otherwise the device is told
    /// `access_denied` with `reason`.
    pub fn fail_login(
        &mut self,
        state_secret: &str,
        browser_binding: &str,
        reason: &str,
        retryable: bool,
        now: u64,
    ) -> Result<(), Refusal> {
        self.check_login(state_secret, browser_binding)?;
        if retryable {
            self.status = Status::Pending;
        } else {
            self.end_denied("idp", reason, now);
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn grant(now: u64) -> Grant {
        Grant {
            id: "g1".into(),
            device_code_hash: "h".into(),
            user_code: "BCDFGHJK".into(),
            client_id: "tv".into(),
            scopes: vec!["openid".into()],
            requester_ip: None,
            requester_software: None,
            created_at: now,
            expires_at: now + 600,
            interval: 5,
            last_poll: None,
            status: Status::Pending,
            subject: None,
            ended_at: None,
            denied_by: None,
            expiry_reported: false,
        }
    }

    fn login() -> Login {
        Login {
            state_secret: "s".into(),
            nonce: "n".into(),
            pkce_verifier: "v".into(),
            browser_binding: "b".into(),
            claimed: false,
        }
    }

    fn tokens() -> TokenSet {
        serde_json::json!({"access_token": "at", "token_type": "Bearer", "expires_in": 3600, "refresh_expires_in": 1800})
            .as_object()
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn pending_slow_down_approved_delivered_then_invalid() {
        let mut g = grant(1000);
        assert_eq!(g.poll("tv", 1000), Err(OAuthError::AuthorizationPending));
        assert_eq!(g.poll("tv", 1005), Err(OAuthError::AuthorizationPending));
        // 2 s after the last poll: too fast.
        assert_eq!(
            g.poll("tv", 1007),
            Err(OAuthError::SlowDown { interval: 10 })
        );
        // The grown interval stays: 5 s is now too fast, 10 s is fine.
        assert_eq!(
            g.poll("tv", 1012),
            Err(OAuthError::SlowDown { interval: 15 })
        );
        assert_eq!(g.poll("tv", 1027), Err(OAuthError::AuthorizationPending));
        assert_eq!(g.interval, 15);

        g.begin_login(login(), 1030).unwrap();
        assert_eq!(g.poll("tv", 1045), Err(OAuthError::AuthorizationPending));
        g.approve("s", "b", tokens(), Some("alice".into()), 1050)
            .unwrap();
        // Approved answers at once, even when polled too fast: slow_down means "still pending".
        let t = g.poll("tv", 1052).unwrap();
        assert_eq!(t["access_token"], "at");
        assert_eq!(
            t["expires_in"], 3598,
            "expires_in counts the 2 s the tokens waited"
        );
        assert_eq!(t["refresh_expires_in"], 1798);
        assert_eq!(g.status, Status::Delivered);
        assert!(matches!(
            g.poll("tv", 1100),
            Err(OAuthError::InvalidGrant(_))
        ));
    }

    #[test]
    fn deny_reaches_the_device() {
        let mut g = grant(0);
        g.deny("user", "the user denied the request", 10).unwrap();
        assert_eq!(
            g.poll("tv", 11),
            Err(OAuthError::AccessDenied(
                "the user denied the request".into()
            ))
        );
        assert_eq!(g.deny("user", "again", 12), Err(Refusal::AlreadyDenied));
        assert_eq!(g.begin_login(login(), 12), Err(Refusal::AlreadyDenied));
    }

    #[test]
    fn expiry() {
        let mut g = grant(0);
        assert_eq!(g.poll("tv", 599), Err(OAuthError::AuthorizationPending));
        assert_eq!(g.poll("tv", 600), Err(OAuthError::ExpiredToken));
        assert_eq!(g.check_actionable(600), Err(Refusal::Expired));
        // Tokens that arrive after expiry are refused.
        let mut g = grant(0);
        g.begin_login(login(), 10).unwrap();
        assert_eq!(
            g.approve("s", "b", tokens(), None, 600),
            Err(Refusal::Expired)
        );
    }

    #[test]
    fn another_clients_poll_changes_nothing() {
        let mut g = grant(0);
        let before = g.clone();
        assert!(matches!(
            g.poll("evil", 1),
            Err(OAuthError::InvalidGrant(_))
        ));
        assert_eq!(g, before);
    }

    #[test]
    fn callback_must_match_state_and_browser() {
        let mut g = grant(0);
        assert_eq!(g.check_login("s", "b"), Err(Refusal::LoginMismatch));
        g.begin_login(login(), 1).unwrap();
        assert_eq!(g.check_login("x", "b"), Err(Refusal::LoginMismatch));
        assert_eq!(g.check_login("s", "x"), Err(Refusal::LoginMismatch));
        assert_eq!(
            g.approve("s", "other browser", tokens(), None, 2),
            Err(Refusal::LoginMismatch)
        );
        g.approve("s", "b", tokens(), None, 2).unwrap();
        // A replayed callback finds the grant already approved.
        assert_eq!(
            g.approve("s", "b", tokens(), None, 3),
            Err(Refusal::AlreadyUsed)
        );
    }

    #[test]
    fn a_login_is_claimed_once() {
        let mut g = grant(0);
        g.begin_login(login(), 1).unwrap();
        assert_eq!(g.claim_login("x", "b"), Err(Refusal::LoginMismatch));
        g.claim_login("s", "b").unwrap();
        assert_eq!(g.claim_login("s", "b"), Err(Refusal::LoginMismatch));
        // The claimed login still completes.
        g.approve("s", "b", tokens(), None, 2).unwrap();
    }

    #[test]
    fn failed_logins() {
        let mut g = grant(0);
        g.begin_login(login(), 1).unwrap();
        g.fail_login("s", "b", "IdP unreachable", true, 11).unwrap();
        assert_eq!(g.status, Status::Pending);
        g.begin_login(login(), 2).unwrap();
        g.fail_login("s", "b", "login cancelled", false, 12)
            .unwrap();
        assert_eq!(
            g.poll("tv", 3),
            Err(OAuthError::AccessDenied("login cancelled".into()))
        );
    }

    #[test]
    fn login_secrets_stay_out_of_debug_output() {
        let mut g = grant(0);
        g.begin_login(login(), 1).unwrap();
        let shown = format!("{g:?}");
        assert!(
            !shown.contains("pkce_verifier") && !shown.contains("nonce"),
            "{shown}"
        );
    }
}
