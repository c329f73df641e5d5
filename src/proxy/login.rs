//! The upstream login: Approve binds a fresh login (state, nonce, PKCE verifier, browser
//! binding) to the grant and sends the browser to the IdP; the callback exchanges the code,
//! validates the ID token and approves the grant, so the device's next poll takes the tokens.
//!
//! Every audit event here is written only once the store has made the change it reports.

use bytes::Bytes;

use super::browser::BrowserKeys;
use super::events::{Audit, By, Event, Fact};
use super::verification::refusal_page;
use super::{Gateway, Reply, Request};
use crate::device::code::random_token;
use crate::device::service::BrowserError;
use crate::device::{Grant, Key, Login, Status};
use crate::oidc::{LoginResult, UpstreamError};
use crate::pages::{Catalog, Message};

/// How a sign-in's `state` starts: a grant's starts with its id, 22 characters, never this.
const SIGNIN_STATE: &str = "signin.";

/// How long a sign-in lets its browser enter codes on its own budget.
const SIGNED_IN_SECS: u64 = 900;

impl Gateway {
    /// Approve pressed: bind a fresh login to the grant and send the browser to the IdP.
    pub(super) async fn approve(
        &self,
        req: &Request<'_>,
        t: &Catalog,
        user_code: &str,
        browser_binding: String,
        now: u64,
    ) -> Reply {
        let disc = match self.oidc.discovery().await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the upstream login");
                return self
                    .message(t, Message::LoginRetry)
                    .fact(Fact::Verification("login_retry"));
            }
        };
        let login = Login {
            state_secret: random_token(16),
            nonce: random_token(16),
            pkce_verifier: random_token(32),
            browser_binding,
            claimed: false,
        };
        let grant = match self.device.begin_login(user_code, login.clone(), now).await {
            Ok(g) => g,
            Err(e) => return self.browser_error(t, e),
        };
        let Some(client) = self.enabled_client(&grant.client_id) else {
            return self.refuse_disabled_client(t, user_code, now).await;
        };
        // The network rules again: this request may come from elsewhere than the code entry.
        if let Some(refused) = self
            .network_refusal(t, &client.policy, &grant, req.client_ip, now)
            .await
        {
            return refused;
        }
        let state = format!("{}.{}", grant.id, login.state_secret);
        let url = self.oidc.authorize_url(
            &disc,
            client,
            &grant.scopes,
            &state,
            &login.nonce,
            &login.pkce_verifier,
        );
        tracing::info!(grant = %grant.id, client_id = %grant.client_id, "upstream login started");
        let mut reply = Reply::new(303, Bytes::new());
        reply.headers.extend(self.redirect_headers.iter().cloned());
        reply.header_text("Location", url.as_str())
    }

    /// The client a sign-in (no grant yet) goes to the IdP as: the first enabled one, whose
    /// redirect URI, this gateway's callback, the IdP knows.
    fn signin_client(&self) -> Option<&crate::config::Client> {
        self.config
            .clients
            .values()
            .find(|c| self.switch.enabled(c))
    }

    /// "Sign in" pressed on the page shown while everyone's wrong-code budget is spent: the
    /// browser goes to the IdP's login; no grant is involved, and nothing is stored.
    pub(super) async fn sign_in(&self, t: &Catalog, browser: &str, keys: BrowserKeys<'_>) -> Reply {
        let disc = match self.oidc.discovery().await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a sign-in");
                return self.message(t, Message::LoginRetry);
            }
        };
        let Some(client) = self.signin_client() else {
            return self.message(t, Message::Unavailable);
        };
        let random = random_token(16);
        let (nonce, verifier) = keys.signin_secrets(browser, &random);
        let state = format!("{SIGNIN_STATE}{random}");
        let scopes = ["openid".to_string()];
        let url = self
            .oidc
            .authorize_url(&disc, client, &scopes, &state, &nonce, &verifier);
        let mut reply = Reply::new(303, Bytes::new());
        reply.headers.extend(self.redirect_headers.iter().cloned());
        reply.header_text("Location", url.as_str())
    }

    /// The IdP's answer to a sign-in: the browser gets a signed-in cookie for 15 minutes and
    /// goes back to the code form.
    async fn sign_in_callback(
        &self,
        req: &Request<'_>,
        t: &Catalog,
        random: &str,
        q: &crate::form::Params,
    ) -> Reply {
        let keys = match self.browsers.keys(&self.device).await {
            Ok(k) => k,
            Err(e) => return self.browser_error(t, BrowserError::Store(e)),
        };
        // Only the browser that started the sign-in knows the secrets its state stands for.
        let Some(browser) = self.browsers.session(req) else {
            return self
                .message(t, Message::LoginMismatch)
                .fact(Fact::Verification("refused"));
        };
        if q.get("error").is_some() {
            return self.message(t, Message::LoginFailed);
        }
        let (Some(code), Some(client)) = (q.get("code"), self.signin_client()) else {
            return self.message(t, Message::BadRequest);
        };
        let (nonce, verifier) = keys.signin_secrets(&browser, random);
        let now = req.now.secs();
        match self
            .oidc
            .exchange_code(client, code, &verifier, &nonce, now)
            .await
        {
            Ok(res) => {
                let value = keys.signed_in(&browser, &res.subject, now + SIGNED_IN_SECS);
                let cookie = self.browsers.set_signed_in_cookie(&value, SIGNED_IN_SECS);
                let mut reply = Reply::new(303, Bytes::new());
                reply.headers.extend(self.redirect_headers.iter().cloned());
                reply
                    .header_text("Location", &self.verification_uri)
                    .header_text("Set-Cookie", &cookie)
                    .fact(Fact::Audit(Audit {
                        sub: Some(res.subject.clone()),
                        client_id: Some(client.client_id.clone()),
                        ..Audit::new(Event::SignedIn)
                    }))
            }
            Err(e) => {
                tracing::warn!(error = %e, "sign-in at the IdP failed");
                if e.is_transient() {
                    self.message(t, Message::LoginRetry)
                } else {
                    self.message(t, Message::LoginFailed)
                }
            }
        }
    }

    /// The IdP sends the browser back here with a code (or an error) and the `state`.
    pub(super) async fn callback(&self, req: &Request<'_>) -> Reply {
        let t = self.lang(req.head);
        let mismatch = || {
            self.message(t, Message::LoginMismatch)
                .fact(Fact::Verification("refused"))
        };
        let Ok(q) = req.query() else {
            return self.message(t, Message::BadRequest);
        };
        let Some(state) = q.get("state") else {
            return mismatch();
        };
        // RFC 9207: a response naming another issuer is a mix-up attempt; ignore it.
        if q.get("iss")
            .is_some_and(|iss| !self.config.upstream.is_issuer(iss))
        {
            tracing::warn!("login callback from another issuer refused");
            return mismatch();
        }
        if let Some(random) = state.strip_prefix(SIGNIN_STATE) {
            return self.sign_in_callback(req, t, random, &q).await;
        }
        let Some((id, secret)) = state.split_once('.') else {
            return mismatch();
        };
        let keys = match self.browsers.keys(&self.device).await {
            Ok(k) => k,
            Err(e) => return self.browser_error(t, BrowserError::Store(e)),
        };
        let binding = self
            .browsers
            .session(req)
            .map(|b| keys.browser_binding(&b))
            .unwrap_or_default();
        let grant = match self.device.by_id(id).await {
            Ok(Some(g)) => g,
            Ok(None) => return mismatch(),
            Err(e) => return self.browser_error(t, BrowserError::Store(e)),
        };
        // A missing, replayed or foreign state changes nothing.
        if let Err(r) = grant.check_login(secret, &binding) {
            tracing::warn!(grant = %grant.id, ?r, "login callback refused");
            return self
                .message(t, refusal_page(r))
                .fact(Fact::Verification("refused"));
        }
        let Status::Authorizing(login) = &grant.status else {
            return mismatch();
        };
        // Take the login before anything reaches the IdP: of two callbacks at once, one
        // exchanges the code and the other is refused.
        let claim = {
            let (secret, binding) = (secret.to_string(), binding.clone());
            move |g: &mut Grant| g.claim_login(&secret, &binding)
        };
        if let Err(e) = self.device.transition(Key::Id(id), claim).await {
            tracing::warn!(grant = %grant.id, error = ?e, "login callback refused: the login is taken");
            return self.browser_error(t, e);
        }
        let now = req.now.secs();
        let fail = |reason: String, retryable: bool| {
            let (secret, binding) = (secret.to_string(), binding.clone());
            move |g: &mut Grant| g.fail_login(&secret, &binding, &reason, retryable, now)
        };
        let Some(client) = self.enabled_client(&grant.client_id) else {
            // The kill switch, as on the verification page: the grant is denied.
            let (s, b) = (secret.to_string(), binding.clone());
            let deny = move |g: &mut Grant| {
                g.check_login(&s, &b)?;
                g.deny_by_operator("the client is disabled", now)
            };
            let denied = self.device.transition(Key::Id(id), deny).await;
            return self.disabled_client_page(t, denied);
        };
        if let Some(refused) = self
            .network_refusal(t, &client.policy, &grant, req.client_ip, now)
            .await
        {
            return refused;
        }
        if let Some(err) = q.get("error") {
            let reason = format!("the identity provider refused the login: {err}");
            return match self
                .device
                .transition(Key::Id(id), fail(reason, false))
                .await
            {
                Ok(g) => self
                    .message(t, Message::LoginFailed)
                    .fact(Fact::Verification("login_failed"))
                    .fact(Fact::Audit(
                        Audit::of(Event::Denied(By::Idp), &g).error(err),
                    )),
                Err(e) => self.unrecorded(t, &grant, "IdP refusal", e),
            };
        }
        let Some(code) = q.get("code") else {
            return self.message(t, Message::BadRequest);
        };
        let exchanged = self
            .oidc
            .exchange_code(client, code, &login.pkce_verifier, &login.nonce, now)
            .await;
        let exchanged = match exchanged {
            Ok(res) => self.judge_login(client, res, now).await,
            Err(e) => Err(e),
        };
        match exchanged {
            Ok(Err(rule)) => {
                let reason = format!("the sign-in does not meet the client's {rule} rule");
                self.deny_by_policy(t, &grant, rule, Message::PolicyRefused, fail(reason, false))
                    .await
            }
            Ok(Ok(res)) => {
                let (secret, binding) = (secret.to_string(), binding.clone());
                let (tokens, subject) = (res.tokens, res.subject);
                let approved = self
                    .device
                    .transition(Key::Id(id), |g| {
                        g.approve(
                            &secret,
                            &binding,
                            tokens.clone(),
                            Some(subject.clone()),
                            now,
                        )
                    })
                    .await;
                match approved {
                    Ok(g) => self
                        .message(t, Message::Approved)
                        .fact(Fact::Verification("approved"))
                        .fact(Fact::Audit(
                            Audit::of(Event::Approved, &g).subject(Some(&subject)),
                        )),
                    Err(e) => self.unrecorded(t, &grant, "approval", e),
                }
            }
            Err(e) => {
                let transient = e.is_transient();
                tracing::warn!(grant = %grant.id, error = %e, "upstream code exchange failed");
                let (reason, error) = match &e {
                    UpstreamError::Refused { error, .. } => (
                        format!("the identity provider refused the login: {error}"),
                        error.clone(),
                    ),
                    _ => (
                        "the login at the identity provider could not be verified".into(),
                        "invalid_response".into(),
                    ),
                };
                match self
                    .device
                    .transition(Key::Id(id), fail(reason, transient))
                    .await
                {
                    // The IdP could not be reached: the grant is pending again, so the user
                    // can retry.
                    Ok(_) if transient => self
                        .message(t, Message::LoginRetry)
                        .fact(Fact::Verification("login_retry")),
                    Ok(g) => self
                        .message(t, Message::LoginFailed)
                        .fact(Fact::Verification("login_failed"))
                        .fact(Fact::Audit(
                            Audit::of(Event::Denied(By::Idp), &g).error(&error),
                        )),
                    Err(e) => self.unrecorded(t, &grant, "login failure", e),
                }
            }
        }
    }

    /// The client's policy applied to a verified login: the login to approve with (without a
    /// refresh token when the policy withholds them), or the rule it breaks. An unreachable
    /// userinfo endpoint is an upstream error like any other.
    async fn judge_login(
        &self,
        client: &crate::config::Client,
        mut res: LoginResult,
        now: u64,
    ) -> Result<Result<LoginResult, &'static str>, UpstreamError> {
        let policy = &client.policy;
        if !policy.refresh_tokens && res.tokens.remove("refresh_token").is_some() {
            tracing::info!(client_id = %client.client_id, "refresh token withheld by policy");
        }
        if !policy.judges_login() {
            return Ok(Ok(res));
        }
        let claims = self.policy_claims(policy, &res).await?;
        Ok(match policy.claims_refusal(&claims, now) {
            Some((rule, why)) => {
                tracing::warn!(client_id = %client.client_id, sub = %res.subject, rule, why, "sign-in refused by policy");
                Err(rule)
            }
            None => Ok(res),
        })
    }

    /// A change the callback meant to make did not happen (the grant expired, another login
    /// replaced this one, the store failed): log what did happen, and say it on the page.
    fn unrecorded(&self, t: &Catalog, grant: &Grant, change: &str, e: BrowserError) -> Reply {
        tracing::warn!(grant = %grant.id, client_id = %grant.client_id, change, error = ?e, "login callback changed nothing");
        self.browser_error(t, e)
    }
}
