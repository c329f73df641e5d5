//! The verification page (RFC 8628 §3.3): the user enters (or confirms) the code, sees who
//! asks for what, and approves or denies. Approve continues in [`super::login`].
//!
//! User codes are short (§5.1), so wrong ones are counted per address and overall, and once a
//! budget is spent no code is even looked up until its window ends.

use http::{HeaderValue, Method};

use super::browser::BrowserKeys;
use super::events::{self, Audit, By, Event, Fact};
use super::{policy, Gateway, Reply, Request};
use crate::device::code::{display_user_code, normalize_user_code, random_token};
use crate::device::service::BrowserError;
use crate::device::{Key, Refusal};
use crate::form::{is_form_content_type, Params};
use crate::limits::{Attempt, Refused};
use crate::pages::{Catalog, CodeError, Consent, Message, SignIn};

/// The browser session of a request: its id, and the cookie to set when it is new.
pub(super) struct BrowserSession {
    pub id: String,
    pub new_cookie: Option<String>,
}

impl BrowserSession {
    /// Sets the session cookie on a reply when the session is new.
    fn keep(&self, reply: Reply) -> Reply {
        match &self.new_cookie {
            Some(c) => reply.header_text("Set-Cookie", c),
            None => reply,
        }
    }
}

impl Gateway {
    pub(super) async fn verification(&self, req: &Request<'_>) -> Reply {
        let t = self.lang(req.head);
        let session = match self.browsers.session(req) {
            Some(id) => BrowserSession {
                id,
                new_cookie: None,
            },
            None => {
                let id = random_token(32);
                let new_cookie = Some(self.browsers.set_cookie(&id));
                BrowserSession { id, new_cookie }
            }
        };
        if req.head.method != Method::POST {
            // GET and HEAD (the route takes nothing else).
            return session.keep(self.enter_page(req, t).await);
        }
        let params = match Params::parse(&req.body) {
            Ok(p) if is_form_content_type(req.header("content-type")) => p,
            _ => return self.message(t, Message::BadRequest),
        };
        let now = req.now.secs();
        let action = params.get("action").unwrap_or("lookup");
        if !matches!(action, "lookup" | "approve" | "deny" | "signin") {
            return self.message(t, Message::BadRequest);
        }
        let keys = match self.browsers.keys(&self.device).await {
            Ok(k) => k,
            Err(e) => return self.browser_error(t, BrowserError::Store(e)),
        };
        let csrf = params.get("csrf").unwrap_or("");
        if action == "signin" {
            // The sign-in button of the page below: from a page this browser got from us.
            if session.new_cookie.is_some() || !keys.csrf_ok(&session.id, "signin", csrf) {
                tracing::warn!("sign-in form with a bad CSRF token");
                return self
                    .message(t, Message::LoginMismatch)
                    .fact(Fact::Verification("refused"));
            }
            return self.sign_in(t, &session.id, keys).await;
        }
        let typed = params.get("user_code").unwrap_or("");
        let mut attempt = None;
        if action == "lookup" {
            // §5.1: the attempt is spent before anything is looked up (a right code gives it
            // back), so neither a spent budget nor many guesses at once test any code.
            let ip = req.ip_key;
            let user = self
                .browsers
                .signed_in_cookie(req)
                .and_then(|v| keys.signed_in_user(&session.id, &v, now));
            match self.limits.code_attempt(ip, user.as_deref(), now).await {
                Ok(a) => attempt = Some(a),
                Err(Refused::Limited(secs)) => {
                    return self
                        .message_as(t, Message::TooManyAttempts, 429)
                        .header("Retry-After", HeaderValue::from(secs))
                        .facts(events::limited("code_failures"))
                        .fact(Fact::Verification("refused"));
                }
                Err(Refused::SignInFirst(secs)) => {
                    // Someone is spending everyone's budget: a person who signs in at the IdP
                    // gets a budget of their own, which a guesser with many addresses lacks.
                    let signin = SignIn {
                        action: &self.config.device.verification_path,
                        csrf: &keys.csrf_token(&session.id, "signin"),
                    };
                    let html = self.pages.message_with_signin(
                        t,
                        Message::SignInFirst,
                        &self.config.device.verification_path,
                        &signin,
                    );
                    let reply = self
                        .page(t, 429, html)
                        .header("Retry-After", HeaderValue::from(secs))
                        .facts(events::limited("code_failures"))
                        .fact(Fact::Verification("refused"));
                    return session.keep(reply);
                }
                Err(Refused::Unavailable(e)) => {
                    return self.browser_error(t, BrowserError::Store(e));
                }
            }
        }
        let Some(user_code) = normalize_user_code(typed) else {
            let shown: String = typed.chars().take(20).collect();
            return self
                .code_error(t, &shown, CodeError::Malformed)
                .fact(Fact::Verification("malformed_code"));
        };
        if let Some(attempt) = attempt {
            let reply = self
                .consent(req, t, &user_code, &session.id, keys, attempt)
                .await;
            return session.keep(reply);
        }
        // Approve and deny must come from a page this browser got from us. Their CSRF token
        // exists only for a code that was looked up (and counted) above, so these actions
        // cannot be used to guess codes, and are not counted again.
        if session.new_cookie.is_some() || !keys.csrf_ok(&session.id, &user_code, csrf) {
            tracing::warn!("verification form with a bad CSRF token");
            return self
                .message(t, Message::LoginMismatch)
                .fact(Fact::Verification("refused"));
        }
        if action == "deny" {
            return self.report(t, &user_code, now).await;
        }
        let binding = keys.browser_binding(&session.id);
        self.approve(req, t, &user_code, binding, now).await
    }

    /// The code entry form. §3.3.1: a code from `verification_uri_complete` is only
    /// prefilled, never acted on; and only from a link this gateway issued (its tag `t`
    /// checks), so a client with `verification_uri_complete: false` gets no prefilled links.
    async fn enter_page(&self, req: &Request<'_>, t: &Catalog) -> Reply {
        let Ok(q) = req.query() else {
            return self.message(t, Message::BadRequest);
        };
        let code = q.get("user_code").and_then(normalize_user_code);
        let tag = q.get("t").unwrap_or_default();
        let shown = match code {
            Some(code) if !tag.is_empty() => match self.browsers.keys(&self.device).await {
                Ok(keys) if keys.link_tag_ok(&code, tag) => display_user_code(&code),
                Ok(_) => String::new(),
                Err(e) => return self.browser_error(t, BrowserError::Store(e)),
            },
            _ => String::new(),
        };
        if shown.is_empty() && q.get("user_code").is_some() {
            tracing::info!("a prefilled code without this gateway's link tag was ignored");
        }
        let html = self
            .pages
            .enter(t, &self.config.device.verification_path, &shown, None);
        self.page(t, 200, html)
    }

    /// The code entry form again, with an error above the input (400).
    fn code_error(&self, t: &Catalog, typed: &str, error: CodeError) -> Reply {
        let html = self
            .pages
            .enter(t, &self.config.device.verification_path, typed, Some(error));
        self.page(t, 400, html)
    }

    /// A code was entered: the consent page, showing who asks for what and from where.
    async fn consent(
        &self,
        req: &Request<'_>,
        t: &Catalog,
        user_code: &str,
        browser: &str,
        keys: BrowserKeys<'_>,
        attempt: Attempt,
    ) -> Reply {
        let now = req.now.secs();
        let ip = req.ip_key;
        let grant = match self.device.lookup(user_code, now).await {
            Ok(g) => g,
            Err(BrowserError::UnknownCode) => {
                // The attempt stays spent: only wrong codes count.
                tracing::info!(client_ip = %ip, "unknown user code entered");
                return self
                    .code_error(t, "", CodeError::Unknown)
                    .fact(Fact::Verification("unknown_code"));
            }
            Err(e) => {
                self.limits.code_was_right(attempt).await;
                return self.browser_error(t, e);
            }
        };
        self.limits.code_was_right(attempt).await;
        let Some(client) = self.enabled_client(&grant.client_id) else {
            return self.refuse_disabled_client(t, user_code, now).await;
        };
        if let Some(refused) = self
            .network_refusal(t, &client.policy, &grant, req.client_ip, now)
            .await
        {
            return refused;
        }
        let shown = display_user_code(user_code);
        let csrf = keys.csrf_token(browser, user_code);
        // §5.4: show where the request came from, and warn when that is not where the person
        // looking at this page is (a phished user is usually far from the device).
        let other_network = policy::warn_far(&client.policy, &grant, req.client_ip);
        let html = self.pages.consent(
            t,
            &Consent {
                action: &self.config.device.verification_path,
                client_id: &client.client_id,
                client_name: &client.name,
                client_description: client.description.as_deref(),
                client_logo: client.logo_url.as_deref(),
                user_code: &shown,
                scopes: &grant.scopes,
                age_secs: now.saturating_sub(grant.created_at),
                requester_ip: grant.requester_ip.as_deref(),
                requester_software: grant.requester_software.as_deref(),
                other_network,
                csrf: &csrf,
            },
        );
        self.page(t, 200, html).fact(Fact::Audit(Audit::grant(
            Event::CodeEntered,
            &grant.id,
            &grant.client_id,
        )))
    }

    /// "Deny — I did not start this": the grant is denied (the device learns it at its next
    /// poll) and reported as possible phishing: a warning naming the client, the device's
    /// address and software, and the browser's address (the event's `client_ip`).
    async fn report(&self, t: &Catalog, user_code: &str, now: u64) -> Reply {
        match self.device.deny(user_code, now).await {
            Ok(g) => {
                let audit = Audit {
                    device_ip: g.requester_ip.clone(),
                    device_software: g.requester_software.clone(),
                    ..Audit::of(Event::Reported, &g)
                };
                self.message(t, Message::Reported)
                    .fact(Fact::Verification("reported"))
                    .fact(Fact::Reported {
                        client: g.client_id.clone(),
                    })
                    .fact(Fact::Audit(audit))
            }
            Err(e) => self.browser_error(t, e),
        }
    }

    /// The grant's client was disabled (`enabled: false`) after the device asked: the grant is
    /// denied, so the device learns it at its next poll, and the page says why.
    pub(super) async fn refuse_disabled_client(
        &self,
        t: &Catalog,
        user_code: &str,
        now: u64,
    ) -> Reply {
        let denied = self
            .device
            .transition(Key::UserCode(user_code), |g| {
                g.deny("operator", "the client is disabled", now)
            })
            .await;
        self.disabled_client_page(t, denied)
    }

    /// The page for a disabled client's grant, with the denial's audit event when the store
    /// recorded it.
    pub(super) fn disabled_client_page(
        &self,
        t: &Catalog,
        denied: Result<crate::device::Grant, BrowserError>,
    ) -> Reply {
        let reply = self
            .message(t, Message::ClientDisabled)
            .fact(Fact::Verification("refused"));
        match denied {
            Ok(g) => reply.fact(Fact::Audit(Audit::of(Event::Denied(By::Operator), &g))),
            Err(e) => {
                // Already ended (or the store failed): nothing was denied now.
                tracing::info!(error = ?e, "the disabled client's grant was not denied");
                reply
            }
        }
    }

    /// The page for a grant the browser could not act on.
    pub(super) fn browser_error(&self, t: &Catalog, e: BrowserError) -> Reply {
        match e {
            BrowserError::UnknownCode => self.code_error(t, "", CodeError::Unknown),
            BrowserError::Refused(r) => self
                .message(t, refusal_page(r))
                .fact(Fact::Verification("refused")),
            BrowserError::Store(e) => {
                tracing::error!(error = %e, "store failed");
                self.message(t, Message::Unavailable)
            }
        }
    }
}

pub(super) fn refusal_page(r: Refusal) -> Message {
    match r {
        Refusal::Expired => Message::Expired,
        Refusal::AlreadyUsed => Message::AlreadyUsed,
        Refusal::AlreadyDenied => Message::AlreadyDenied,
        Refusal::LoginMismatch => Message::LoginMismatch,
    }
}
