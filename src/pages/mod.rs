//! The verification pages: server-rendered HTML from auto-escaping minijinja templates
//! (`src/pages/templates/`), with no JavaScript.
//!
//! [`Pages`] renders; [`Message`] names every outcome a browser can reach so that each has its
//! own heading and words; [`security_headers`] lists the headers every page carries.

use minijinja::{context, Environment};
use serde::Serialize;

/// The page templates, compiled in.
const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("enter.html", include_str!("templates/enter.html")),
    ("consent.html", include_str!("templates/consent.html")),
    ("message.html", include_str!("templates/message.html")),
];

/// An outcome page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    Approved,
    Denied,
    Expired,
    AlreadyUsed,
    AlreadyDenied,
    LoginFailed,
    LoginRetry,
    LoginMismatch,
    BadRequest,
    Unavailable,
    TooManyAttempts,
}

impl Message {
    /// (HTTP status, heading, text, css class, offer a retry link)
    fn parts(self) -> (u16, &'static str, &'static str, &'static str, bool) {
        match self {
            Self::Approved => (200, "You're signed in", "You may return to your device: it will continue in a few seconds. You can close this page.", "success", false),
            Self::Denied => (200, "Request denied", "The device was not given access to your account. You can close this page.", "success", false),
            Self::Expired => (400, "This code has expired", "Start again on your device to get a new code.", "error", true),
            Self::AlreadyUsed => (400, "This code was already used", "The device already has access. If that was not you, sign out of it from your account settings.", "error", false),
            Self::AlreadyDenied => (400, "This request was denied", "The device was refused access. Start again on your device if that was a mistake.", "error", true),
            Self::LoginFailed => (400, "Sign-in did not complete", "The identity provider did not sign you in, so the device was refused access. Start again on your device to retry.", "error", false),
            Self::LoginRetry => (502, "Sign-in could not be completed", "The identity provider could not be reached. Your code is still valid: enter it again to retry.", "error", true),
            Self::LoginMismatch => (400, "This sign-in link is not valid here", "It was already used, or it was started in another browser. Nothing was changed. Enter the code from your device to start again.", "error", true),
            Self::BadRequest => (400, "Something is missing", "The request was incomplete. Enter the code from your device to start again.", "error", true),
            Self::TooManyAttempts => (429, "Too many attempts", "Too many wrong codes were entered from your network. Wait a few minutes, then enter the code shown on your device again.", "error", false),
            Self::Unavailable => (503, "Temporarily unavailable", "The service cannot handle device sign-ins right now. Please try again in a minute.", "error", true),
        }
    }

    pub fn status(self) -> u16 {
        self.parts().0
    }
}

/// One scope as shown on the consent page.
#[derive(Debug, Serialize)]
struct ScopeView<'a> {
    name: &'a str,
    description: &'a str,
}

/// Plain words for the common OpenID Connect scopes; others are shown by name.
pub fn scope_description(scope: &str) -> &str {
    match scope {
        "openid" => "Know who you are (your account identifier)",
        "profile" => "See your name and basic profile",
        "email" => "See your email address",
        "address" => "See your postal address",
        "phone" => "See your phone number",
        "offline_access" => "Stay signed in on the device, even when you are away",
        other => other,
    }
}

/// What the consent page shows.
pub struct Consent<'a> {
    pub action: &'a str,
    pub client_id: &'a str,
    pub client_name: &'a str,
    pub user_code: &'a str,
    pub scopes: &'a [String],
    pub age_secs: u64,
    pub requester_ip: Option<&'a str>,
    pub csrf: &'a str,
}

/// "requested 40 seconds ago"
fn ago(secs: u64) -> String {
    match secs {
        0..=4 => "Just now".into(),
        5..=119 => format!("{secs} seconds ago"),
        _ => format!("{} minutes ago", secs / 60),
    }
}

/// The template environment.
pub struct Pages {
    env: Environment<'static>,
}

impl Pages {
    pub fn new() -> Result<Self, minijinja::Error> {
        let mut env = Environment::new();
        for (name, src) in TEMPLATES {
            env.add_template(name, src)?;
        }
        Ok(Self { env })
    }

    fn render(&self, name: &str, ctx: minijinja::Value) -> String {
        match self.env.get_template(name).and_then(|t| t.render(ctx)) {
            Ok(html) => html,
            Err(e) => {
                tracing::error!(template = name, error = %e, "page rendering failed");
                "<!doctype html><title>Error</title><p>This page could not be shown.</p>".into()
            }
        }
    }

    /// The code entry form, optionally prefilled and with an error.
    pub fn enter(&self, action: &str, user_code: &str, error: Option<&str>) -> String {
        self.render(
            "enter.html",
            context! { action, user_code, error, prefilled => !user_code.is_empty() && error.is_none() },
        )
    }

    pub fn consent(&self, c: &Consent<'_>) -> String {
        let scopes: Vec<ScopeView<'_>> = c
            .scopes
            .iter()
            .map(|s| ScopeView {
                name: s,
                description: scope_description(s),
            })
            .collect();
        self.render(
            "consent.html",
            context! {
                action => c.action,
                client_id => c.client_id,
                client_name => c.client_name,
                user_code => c.user_code,
                scopes,
                requested_ago => ago(c.age_secs),
                requester_ip => c.requester_ip,
                csrf => c.csrf,
            },
        )
    }

    /// An outcome page; `retry_url` is the verification page.
    pub fn message(&self, m: Message, retry_url: &str) -> String {
        let (_, heading, message, kind, retry) = m.parts();
        self.render(
            "message.html",
            context! { heading, message, kind, retry_url => retry.then_some(retry_url) },
        )
    }
}

/// Headers on every page: no framing (clickjacking), no referrer leaking codes, no caching,
/// and a CSP that allows nothing but inline styles and form posts to `form_action`.
pub fn security_headers(form_action: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "Content-Security-Policy",
            format!("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"),
        ),
        ("X-Frame-Options", "DENY".into()),
        ("Referrer-Policy", "no-referrer".into()),
        ("X-Content-Type-Options", "nosniff".into()),
        ("Cache-Control", "no-store".into()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_renders_and_escapes() {
        let p = Pages::new().unwrap();
        let html = p.enter("/device", "<script>alert(1)</script>", Some("bad <b>"));
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("<script>"));
        assert!(html.contains("autocomplete=\"one-time-code\""));
        let scopes = vec!["openid".to_string(), "x<y".to_string()];
        let html = p.consent(&Consent {
            action: "/device",
            client_id: "tv",
            client_name: "TV <evil>",
            user_code: "BCDF-GHJK",
            scopes: &scopes,
            age_secs: 40,
            requester_ip: Some("10.0.0.1"),
            csrf: "tok",
        });
        assert!(html.contains("TV &lt;evil&gt;") && !html.contains("<evil>"));
        assert!(html.contains("40 seconds ago") && html.contains("x&lt;y"));
        assert!(html.contains("Know who you are"));
        for m in [Message::Approved, Message::Expired, Message::LoginMismatch] {
            let html = p.message(m, "/device");
            assert!(
                html.contains(&m.parts().1.replace('\'', "&#x27;")),
                "{html}"
            );
        }
        assert!(p
            .message(Message::Expired, "/device")
            .contains("href=\"&#x2f;device\""));
        assert!(!p.message(Message::Approved, "/device").contains("href="));
    }
}
