//! Browser state on the verification page: the session cookie, CSRF tokens for the consent
//! form, and the binding of an upstream login to the browser that started it. Tokens and
//! bindings are HMACs keyed with the store's shared secret, so every instance sharing the
//! store checks what another one issued.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::OnceCell;

use super::Request;
use crate::device::service::DeviceService;
use crate::device::StoreError;

type HmacSha256 = Hmac<Sha256>;

/// The browser session cookie's settings and the MAC key (fetched on first use, so a Redis
/// that is down at start-up only delays it).
pub struct Browsers {
    mac: OnceCell<HmacSha256>,
    cookie_name: &'static str,
    secure: bool,
    max_age: u64,
}

impl Browsers {
    /// `secure`: the public URL is https. `max_age`: how long a grant can be acted on.
    pub fn new(secure: bool, max_age: u64) -> Self {
        Self {
            mac: OnceCell::new(),
            // `__Host-` pins the cookie to this origin, but browsers only take it when Secure.
            cookie_name: if secure {
                "__Host-devicegate"
            } else {
                "devicegate"
            },
            secure,
            max_age,
        }
    }

    /// The browser session id from the request's cookie, when it has a well-formed one.
    pub fn session(&self, req: &Request<'_>) -> Option<String> {
        self.cookie(req, "").filter(|v| v.len() == 43)
    }

    /// A cookie of this browser by name (the session cookie's name plus `suffix`).
    fn cookie(&self, req: &Request<'_>, suffix: &str) -> Option<String> {
        let name = format!("{}{suffix}", self.cookie_name);
        req.head
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }

    /// The signed-in cookie's value, if the request has one.
    pub fn signed_in_cookie(&self, req: &Request<'_>) -> Option<String> {
        self.cookie(req, "-user")
    }

    /// The `Set-Cookie` value of a sign-in that lasts `max_age` seconds.
    pub fn set_signed_in_cookie(&self, value: &str, max_age: u64) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!(
            "{}-user={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}",
            self.cookie_name
        )
    }

    /// The `Set-Cookie` value that starts a browser session.
    pub fn set_cookie(&self, session: &str) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!(
            "{}={session}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
            self.cookie_name, self.max_age
        )
    }

    /// The keys, from the store's shared secret.
    pub async fn keys(&self, device: &DeviceService) -> Result<BrowserKeys<'_>, StoreError> {
        self.mac
            .get_or_try_init(|| async {
                let secret = device.shared_secret().await?;
                HmacSha256::new_from_slice(&secret)
                    .map_err(|e| StoreError::Unavailable(e.to_string()))
            })
            .await
            .map(BrowserKeys)
    }
}

/// CSRF tokens and browser bindings, under a key every instance sharing the store knows.
#[derive(Clone, Copy)]
pub struct BrowserKeys<'a>(&'a HmacSha256);

impl BrowserKeys<'_> {
    fn mac(self, purpose: &str, parts: &[&str]) -> HmacSha256 {
        let mut mac = self.0.clone();
        mac.update(purpose.as_bytes());
        for p in parts {
            mac.update(&[0]);
            mac.update(p.as_bytes());
        }
        mac
    }

    /// CSRF token for the consent form: bound to the browser session and the user code.
    pub fn csrf_token(self, browser: &str, user_code: &str) -> String {
        URL_SAFE_NO_PAD.encode(
            self.mac("csrf", &[browser, user_code])
                .finalize()
                .into_bytes(),
        )
    }

    pub fn csrf_ok(self, browser: &str, user_code: &str, token: &str) -> bool {
        let Ok(raw) = URL_SAFE_NO_PAD.decode(token) else {
            return false;
        };
        // Constant-time comparison: the token is a secret an attacker may probe.
        self.mac("csrf", &[browser, user_code])
            .verify_slice(&raw)
            .is_ok()
    }

    /// The tag of a `verification_uri_complete` link (`&t=`): a prefilled code is honoured, and
    /// its QR code drawn, only with it, so a link a phisher builds for a code whose client has
    /// `verification_uri_complete: false` prefills nothing. No store lookup, so a tag tells
    /// nothing about which codes exist.
    pub fn link_tag(self, user_code: &str) -> String {
        let mac = self.mac("link", &[user_code]).finalize().into_bytes();
        URL_SAFE_NO_PAD.encode(&mac[..12])
    }

    pub fn link_tag_ok(self, user_code: &str, tag: &str) -> bool {
        let Ok(raw) = URL_SAFE_NO_PAD.decode(tag) else {
            return false;
        };
        // Constant time, like every MAC check here.
        raw.len() == 12
            && self
                .mac("link", &[user_code])
                .verify_truncated_left(&raw)
                .is_ok()
    }

    /// What a grant's login is bound to: an HMAC of the browser session cookie, so the store
    /// never holds the cookie itself.
    pub fn browser_binding(self, browser: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.mac("bind", &[browser]).finalize().into_bytes())
    }

    /// The nonce and PKCE verifier of a sign-in (no grant yet, so nothing stored): derived from
    /// the state's random part and this browser, so only this browser's callback can redeem
    /// the code, and the verifier never travels in a URL.
    pub fn signin_secrets(self, browser: &str, random: &str) -> (String, String) {
        let derive = |purpose: &str| {
            URL_SAFE_NO_PAD.encode(
                self.mac(purpose, &[browser, random])
                    .finalize()
                    .into_bytes(),
            )
        };
        (derive("signin-nonce"), derive("signin-pkce"))
    }

    /// The signed-in cookie's value for `sub` until `expires` (seconds), bound to this browser.
    pub fn signed_in(self, browser: &str, sub: &str, expires: u64) -> String {
        let exp = expires.to_string();
        let sub64 = URL_SAFE_NO_PAD.encode(sub);
        let mac = self.mac("user", &[browser, &sub64, &exp]).finalize();
        format!("{exp}.{sub64}.{}", URL_SAFE_NO_PAD.encode(mac.into_bytes()))
    }

    /// The `sub` a signed-in cookie value names, if it is this browser's and not expired.
    pub fn signed_in_user(self, browser: &str, value: &str, now: u64) -> Option<String> {
        let mut parts = value.splitn(3, '.');
        let (exp, sub64, mac) = (parts.next()?, parts.next()?, parts.next()?);
        let raw = URL_SAFE_NO_PAD.decode(mac).ok()?;
        // Constant time: the MAC is what a forger would probe.
        self.mac("user", &[browser, sub64, exp])
            .verify_slice(&raw)
            .ok()?;
        (exp.parse::<u64>().ok()? > now).then_some(())?;
        String::from_utf8(URL_SAFE_NO_PAD.decode(sub64).ok()?).ok()
    }
}
