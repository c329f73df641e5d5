//! The verification pages: server-rendered HTML from auto-escaping minijinja templates, with
//! no JavaScript, in the browser's language.
//!
//! - [`Pages`] renders. Templates are compiled in (`templates/`); an operator's
//!   `ui.templates_dir` replaces any of them by file name, and its `locales/` files replace
//!   messages ([`i18n`]). Branding (`ui.title`, `ui.logo_url`, `ui.colors`) reaches every
//!   template as `brand`, and the messages of the chosen language as `t`.
//! - [`Message`] names every outcome a browser can reach, so that each has its own heading and
//!   words and HTTP status.
//! - [`security_headers`] lists the headers every page carries; [`qr`] draws QR codes.

pub mod i18n;
pub mod qr;

use std::collections::BTreeMap;

use minijinja::{context, Environment, Value};
use serde::Serialize;

use crate::config::{ScopeText, Ui};
pub use i18n::Catalog;
use i18n::Catalogs;

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
    /// "Deny — I did not start this": denied, and reported as possible phishing.
    Reported,
    Expired,
    AlreadyUsed,
    AlreadyDenied,
    ClientDisabled,
    LoginFailed,
    LoginRetry,
    LoginMismatch,
    BadRequest,
    MethodNotAllowed,
    Unavailable,
    TooManyAttempts,
    /// Everyone's wrong-code budget is spent: sign in at the IdP first.
    SignInFirst,
    /// `approver_networks`: this browser's network may not approve (the grant is denied).
    NetworkNotAllowed,
    /// `proximity: require`: the browser is not on the device's network (the grant is denied).
    Proximity,
    /// `require_claims`, `acr_values` or `max_age`: this sign-in may not approve.
    PolicyRefused,
}

impl Message {
    pub const ALL: [Message; 17] = [
        Self::Approved,
        Self::Reported,
        Self::Expired,
        Self::AlreadyUsed,
        Self::AlreadyDenied,
        Self::ClientDisabled,
        Self::LoginFailed,
        Self::LoginRetry,
        Self::LoginMismatch,
        Self::BadRequest,
        Self::MethodNotAllowed,
        Self::Unavailable,
        Self::TooManyAttempts,
        Self::SignInFirst,
        Self::NetworkNotAllowed,
        Self::Proximity,
        Self::PolicyRefused,
    ];

    /// (HTTP status, message key, css class, offer a retry link)
    fn parts(self) -> (u16, &'static str, &'static str, bool) {
        match self {
            Self::Approved => (200, "approved", "success", false),
            Self::Reported => (200, "reported", "success", false),
            Self::Expired => (400, "expired", "error", true),
            Self::AlreadyUsed => (400, "already_used", "error", false),
            Self::AlreadyDenied => (400, "already_denied", "error", true),
            Self::ClientDisabled => (403, "client_disabled", "error", false),
            Self::LoginFailed => (400, "login_failed", "error", false),
            Self::LoginRetry => (502, "login_retry", "error", true),
            Self::LoginMismatch => (400, "login_mismatch", "error", true),
            Self::BadRequest => (400, "bad_request", "error", true),
            Self::MethodNotAllowed => (405, "method_not_allowed", "error", true),
            Self::TooManyAttempts => (429, "too_many_attempts", "error", false),
            Self::SignInFirst => (429, "sign_in_first", "error", false),
            Self::Unavailable => (503, "unavailable", "error", true),
            Self::NetworkNotAllowed => (403, "network_not_allowed", "error", false),
            Self::Proximity => (403, "proximity", "error", false),
            Self::PolicyRefused => (403, "policy_refused", "error", false),
        }
    }

    pub fn status(self) -> u16 {
        self.parts().0
    }

    /// The name templates and tests know the outcome by, e.g. `already_used`.
    pub fn name(self) -> &'static str {
        self.parts().1
    }
}

/// The sign-in form of [`Message::SignInFirst`]: where it posts, and its CSRF token.
pub struct SignIn<'a> {
    pub action: &'a str,
    pub csrf: &'a str,
}

/// An error shown above the code input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeError {
    Unknown,
    Malformed,
}

/// One scope as shown on the consent page.
#[derive(Debug, Serialize)]
struct ScopeView<'a> {
    name: &'a str,
    description: String,
}

/// What the consent page shows.
pub struct Consent<'a> {
    pub action: &'a str,
    pub client_id: &'a str,
    pub client_name: &'a str,
    pub client_description: Option<&'a str>,
    pub client_logo: Option<&'a str>,
    pub user_code: &'a str,
    pub scopes: &'a [String],
    pub age_secs: u64,
    pub requester_ip: Option<&'a str>,
    /// The product of the device's User-Agent, e.g. `curl/8.5.0`.
    pub requester_software: Option<&'a str>,
    /// The device asked from another network than the browser's.
    pub other_network: bool,
    pub csrf: &'a str,
}

/// "requested 40 seconds ago"
fn ago(t: &Catalog, secs: u64) -> String {
    match secs {
        0..=4 => t.get("ago_now").to_string(),
        5..=119 => t.fill("ago_seconds", &[("n", &secs.to_string())]),
        _ => t.fill("ago_minutes", &[("n", &(secs / 60).to_string())]),
    }
}

/// The template environment, languages and branding.
pub struct Pages {
    env: Environment<'static>,
    catalogs: Catalogs,
    brand: Value,
    scopes: BTreeMap<String, ScopeText>,
    education: Option<ScopeText>,
    report_text: Option<ScopeText>,
    report_url: Option<ScopeText>,
}

impl Pages {
    /// Compiles the templates (the operator's over the built-in ones) and loads the languages.
    /// Every problem is returned, each naming the file; each template is also rendered once with
    /// sample data so that a broken operator template fails at start-up, not in front of a user.
    pub fn new(ui: &Ui) -> Result<Self, Vec<String>> {
        let catalogs = Catalogs::load(ui);
        let mut env = Environment::new();
        let mut errors = catalogs.as_ref().err().cloned().unwrap_or_default();
        for (name, src) in TEMPLATES {
            if let Err(e) = env.add_template(name, src) {
                errors.push(format!("built-in {name}: {e}"));
            }
        }
        for (name, src) in &ui.templates {
            if let Err(e) = env.add_template_owned(name.clone(), src.clone()) {
                errors.push(format!("{name}: {e:#}"));
            }
        }
        let catalogs = match catalogs {
            Ok(c) if errors.is_empty() => c,
            _ => return Err(errors),
        };
        let brand = Value::from_serialize(BrandView {
            title: ui.title.as_deref(),
            logo_url: ui.logo_url.as_deref(),
            accent: &ui.colors.accent,
            background: &ui.colors.background,
            text: &ui.colors.text,
        });
        let pages = Self {
            env,
            catalogs,
            brand,
            scopes: ui.scopes.clone(),
            education: ui.education.clone(),
            report_text: ui.report_text.clone(),
            report_url: ui.report_url.clone(),
        };
        pages.try_every_page()?;
        // Said once per process: start-up builds the pages once, and `--check` once.
        tracing::info!(
            templates = TEMPLATES.len(),
            replaced = ui.templates.len(),
            languages = pages.catalogs.languages().count(),
            "verification pages compiled and tried in every language"
        );
        Ok(pages)
    }

    /// Renders every page in every language with sample data.
    fn try_every_page(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        let scopes = ["openid".to_string(), "offline_access".to_string()];
        for lang in self.catalogs.languages() {
            let t = self.catalogs.negotiate(Some(lang));
            let sample = Consent {
                action: "/device",
                client_id: "tv",
                client_name: "TV",
                client_description: Some("A TV"),
                client_logo: Some("/logo.png"),
                user_code: "BCDF-GHJK",
                scopes: &scopes,
                age_secs: 40,
                requester_ip: Some("192.0.2.1"),
                requester_software: Some("curl/8"),
                other_network: true,
                csrf: "x",
            };
            let mut results = vec![
                self.try_render("enter.html", self.enter_context(t, "/device", "", None)),
                self.try_render("consent.html", self.consent_context(t, &sample)),
            ];
            for m in Message::ALL {
                results.push(
                    self.try_render("message.html", self.message_context(t, m, "/device", None)),
                );
            }
            let signin = SignIn {
                action: "/device",
                csrf: "x",
            };
            results.push(self.try_render(
                "message.html",
                self.message_context(t, Message::SignInFirst, "/device", Some(&signin)),
            ));
            for r in results {
                if let Err(e) = r {
                    errors.push(format!("rendering in '{lang}': {e:#}"));
                }
            }
            if !errors.is_empty() {
                break;
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The catalogue for a request's `Accept-Language`.
    pub fn language(&self, accept_language: Option<&str>) -> &Catalog {
        self.catalogs.negotiate(accept_language)
    }

    fn try_render(&self, name: &str, ctx: Value) -> Result<String, minijinja::Error> {
        self.env.get_template(name).and_then(|t| t.render(ctx))
    }

    fn render(&self, name: &str, ctx: Value) -> String {
        match self.try_render(name, ctx) {
            Ok(html) => html,
            Err(e) => {
                tracing::error!(template = name, error = %e, "page rendering failed");
                "<!doctype html><title>Error</title><p>This page could not be shown.</p>".into()
            }
        }
    }

    fn base_context(&self, t: &Catalog) -> Value {
        context! {
            t => t.value.clone(),
            lang => t.lang.as_str(),
            dir => t.get("direction"),
            brand => self.brand.clone(),
            education => self.localized(&self.education, t, "education"),
        }
    }

    /// An operator's text for this language (`ui.education`, …), else the catalogue's `key`.
    fn localized<'a>(
        &'a self,
        text: &'a Option<ScopeText>,
        t: &'a Catalog,
        key: &'a str,
    ) -> &'a str {
        text.as_ref()
            .and_then(|x| x.for_language(&t.lang))
            .unwrap_or_else(|| t.get(key))
    }

    fn enter_context(
        &self,
        t: &Catalog,
        action: &str,
        user_code: &str,
        error: Option<CodeError>,
    ) -> Value {
        let error = error.map(|e| match e {
            CodeError::Unknown => t.get("error_unknown_code"),
            CodeError::Malformed => t.get("error_malformed_code"),
        });
        context! {
            ..self.base_context(t),
            ..context! { action, user_code, error, prefilled => !user_code.is_empty() && error.is_none() }
        }
    }

    /// The code entry form, optionally prefilled and with an error.
    pub fn enter(
        &self,
        t: &Catalog,
        action: &str,
        user_code: &str,
        error: Option<CodeError>,
    ) -> String {
        self.render(
            "enter.html",
            self.enter_context(t, action, user_code, error),
        )
    }

    /// A scope in plain words: the operator's `ui.scopes`, else the catalogue, else its name.
    fn scope_description(&self, t: &Catalog, scope: &str) -> String {
        let default = &self.catalogs.default_catalog().lang;
        self.scopes
            .get(scope)
            .and_then(|x| x.for_language(&t.lang).or_else(|| x.for_language(default)))
            .or_else(|| t.scope(scope))
            .unwrap_or(scope)
            .to_string()
    }

    fn consent_context(&self, t: &Catalog, c: &Consent<'_>) -> Value {
        let scopes: Vec<ScopeView<'_>> = c
            .scopes
            .iter()
            .map(|s| ScopeView {
                name: s,
                description: self.scope_description(t, s),
            })
            .collect();
        let ip = c.requester_ip.unwrap_or("?");
        context! {
            ..self.base_context(t),
            ..context! {
                action => c.action,
                client_id => c.client_id,
                client_name => c.client_name,
                client_description => c.client_description,
                client_logo => c.client_logo,
                title => t.fill("consent_title", &[("client", c.client_name)]),
                user_code => c.user_code,
                scopes,
                requested_ago => ago(t, c.age_secs),
                requested_from => c.requester_ip.map(|ip| t.fill("consent_from", &[("ip", ip)])),
                requester_software => c.requester_software,
                other_network => c.other_network.then(|| t.fill("consent_other_network", &[("ip", ip)])),
                csrf => c.csrf,
            }
        }
    }

    pub fn consent(&self, t: &Catalog, c: &Consent<'_>) -> String {
        self.render("consent.html", self.consent_context(t, c))
    }

    fn message_context(
        &self,
        t: &Catalog,
        m: Message,
        retry_url: &str,
        signin: Option<&SignIn<'_>>,
    ) -> Value {
        let (_, key, kind, retry) = m.parts();
        let signin = signin.map(|s| context! { action => s.action, csrf => s.csrf });
        // After "I did not start this": what to do next, and where to report it.
        let report = (m == Message::Reported).then(|| {
            let url = self
                .report_url
                .as_ref()
                .and_then(|u| u.for_language(&t.lang));
            context! {
                text => self.localized(&self.report_text, t, "report_text"),
                url,
            }
        });
        context! {
            ..self.base_context(t),
            ..context! {
                outcome => key,
                heading => t.get(&format!("msg_{key}_heading")),
                message => t.get(&format!("msg_{key}_text")),
                kind,
                retry_url => retry.then_some(retry_url),
                signin,
                report,
            }
        }
    }

    /// An outcome page; `retry_url` is the verification page.
    pub fn message(&self, t: &Catalog, m: Message, retry_url: &str) -> String {
        self.render("message.html", self.message_context(t, m, retry_url, None))
    }

    /// An outcome page with a sign-in button (for [`Message::SignInFirst`]).
    pub fn message_with_signin(
        &self,
        t: &Catalog,
        m: Message,
        retry_url: &str,
        signin: &SignIn<'_>,
    ) -> String {
        self.render(
            "message.html",
            self.message_context(t, m, retry_url, Some(signin)),
        )
    }
}

#[derive(Serialize)]
struct BrandView<'a> {
    title: Option<&'a str>,
    logo_url: Option<&'a str>,
    accent: &'a str,
    background: &'a str,
    text: &'a str,
}

/// The CSP `img-src` for pages showing these logos: this origin, `data:` and each logo's
/// origin.
pub fn image_sources<'a>(logos: impl Iterator<Item = &'a str>) -> String {
    let mut sources = vec!["'self'".to_string(), "data:".to_string()];
    for logo in logos {
        if let Some(u) = url::Url::parse(logo)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
        {
            let origin = u.origin().ascii_serialization();
            if !sources.contains(&origin) {
                sources.push(origin);
            }
        }
    }
    sources.join(" ")
}

/// Headers on every page: no framing (clickjacking), no referrer leaking codes, no caching,
/// and a CSP that allows nothing but inline styles, images from `img_src` and form posts to
/// `form_action`.
pub fn security_headers(form_action: &str, img_src: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "Content-Security-Policy",
            format!("default-src 'none'; style-src 'unsafe-inline'; img-src {img_src}; form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"),
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

    fn sample<'a>(scopes: &'a [String]) -> Consent<'a> {
        Consent {
            action: "/device",
            client_id: "tv",
            client_name: "TV <evil>",
            client_description: Some("Streams <b>video</b>"),
            client_logo: None,
            user_code: "BCDF-GHJK",
            scopes,
            age_secs: 40,
            requester_ip: Some("10.0.0.1"),
            requester_software: Some("curl/8.5.0"),
            other_network: false,
            csrf: "tok",
        }
    }

    #[test]
    fn every_template_renders_and_escapes() {
        let p = Pages::new(&Ui {
            default_language: "en".into(),
            ..Ui::default()
        })
        .unwrap();
        let en = p.language(None);
        let html = p.enter(
            en,
            "/device",
            "<script>alert(1)</script>",
            Some(CodeError::Unknown),
        );
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("<script>"));
        assert!(html.contains("autocomplete=\"one-time-code\""));
        assert!(html.contains("We don&#x27;t recognise that code"), "{html}");
        let scopes = vec!["openid".to_string(), "x<y".to_string()];
        let html = p.consent(en, &sample(&scopes));
        assert!(html.contains("TV &lt;evil&gt;") && !html.contains("<evil>"));
        assert!(html.contains("Streams &lt;b&gt;video"), "{html}");
        assert!(html.contains("40 seconds ago") && html.contains("x&lt;y"));
        assert!(html.contains("Know who you are") && html.contains("curl&#x2f;8.5.0"));
        assert!(!html.contains("another network"));
        let mut other = sample(&scopes);
        other.other_network = true;
        assert!(p
            .consent(en, &other)
            .contains("came from another network (10.0.0.1)"));
        for m in Message::ALL {
            let html = p.message(en, m, "/device");
            let key = format!("msg_{}_heading", m.name());
            let heading = en.get(&key);
            assert!(html.contains(&heading.replace('\'', "&#x27;")), "{html}");
        }
        assert!(p
            .message(en, Message::Expired, "/device")
            .contains("href=\"&#x2f;device\""));
        assert!(!p
            .message(en, Message::Approved, "/device")
            .contains("href="));
    }

    #[test]
    fn pages_follow_the_language_and_the_brand() {
        let ui = Ui {
            title: Some("Acme <Corp>".into()),
            logo_url: Some("https://cdn.example/logo.svg".into()),
            colors: crate::config::Colors {
                accent: "#8a1538".into(),
                ..Default::default()
            },
            default_language: "en".into(),
            scopes: BTreeMap::from([
                (
                    "files".to_string(),
                    ScopeText::All("Read your files".into()),
                ),
                (
                    "openid".to_string(),
                    ScopeText::PerLanguage(BTreeMap::from([(
                        "de".to_string(),
                        "Sie erkennen".to_string(),
                    )])),
                ),
            ]),
            ..Ui::default()
        };
        let p = Pages::new(&ui).unwrap();
        let de = p.language(Some("de-DE,de;q=0.9"));
        let scopes = vec![
            "openid".to_string(),
            "files".to_string(),
            "email".to_string(),
        ];
        let html = p.consent(de, &sample(&scopes));
        assert!(html.contains("<html lang=\"de\""), "{html}");
        assert!(html.contains("Sie erkennen") && html.contains("Read your files"));
        assert!(html.contains("Ihre E-Mail-Adresse sehen") && html.contains("vor 40 Sekunden"));
        assert!(
            html.contains("Acme &lt;Corp&gt;")
                && html.contains("https:&#x2f;&#x2f;cdn.example&#x2f;logo.svg")
        );
        assert!(html.contains("--accent: #8a1538"), "{html}");
        let fr = p.language(Some("fr"));
        assert!(p
            .message(fr, Message::Reported, "/device")
            .contains("Refusé et signalé"));
        // English falls back to the catalogue for openid: the German override is German only.
        assert!(p
            .consent(p.language(None), &sample(&scopes))
            .contains("Know who you are"));
        assert_eq!(
            image_sources(
                [
                    "https://cdn.example/a.png",
                    "/local.png",
                    "https://cdn.example/b.png"
                ]
                .into_iter()
            ),
            "'self' data: https://cdn.example"
        );
    }

    #[test]
    fn operator_templates_replace_built_in_ones_and_broken_ones_are_reported() {
        let mut ui = Ui {
            default_language: "en".into(),
            ..Ui::default()
        };
        ui.templates.push((
            "message.html".into(),
            "<p id=mine>{{ heading }} / {{ t.x_support }}</p>".into(),
        ));
        ui.locales.insert(
            "en".into(),
            BTreeMap::from([("x_support".to_string(), "Call 555".to_string())]),
        );
        let p = Pages::new(&ui).unwrap();
        let html = p.message(p.language(None), Message::Reported, "/device");
        assert_eq!(html, "<p id=mine>Denied and reported / Call 555</p>");

        ui.templates.push(("enter.html".into(), "{% if %}".into()));
        let errs = Pages::new(&ui).err().unwrap();
        assert!(errs[0].starts_with("enter.html"), "{errs:?}");
        ui.templates.pop();
        ui.templates
            .push(("consent.html".into(), "{{ 1 + }}".into()));
        assert!(Pages::new(&ui).is_err());
        ui.templates.pop();
        ui.templates.push((
            "consent.html".into(),
            "{{ t.enter_label | nosuchfilter }}".into(),
        ));
        let errs = Pages::new(&ui).err().unwrap();
        assert!(errs.iter().any(|e| e.contains("nosuchfilter")), "{errs:?}");
    }
}
