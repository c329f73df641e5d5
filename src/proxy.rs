//! The Pingora `ProxyHttp` glue.
//!
//! [`Gateway::request_filter`] routes each request: the few paths devicegate owns (device
//! authorization, verification page, login callback, discovery documents, and device-code polls
//! at the IdP's token endpoint) are answered here, parse → act → write; everything else returns
//! `Ok(false)` and Pingora relays it to the IdP unchanged, `Host` included, with
//! `X-Forwarded-For`/`X-Forwarded-Proto` added.
//!
//! Handlers never panic and never answer 5xx for bad input: API endpoints answer RFC 6749 JSON
//! errors ([`OAuthError`]), browser endpoints answer readable pages ([`Message`]).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::{engine::general_purpose::STANDARD, engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::Method;
use pingora::http::ResponseHeader;
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::OnceCell;

use crate::admin::Admin;
use crate::config::{Backend, Client, Config, Limits as LimitsConfig};
use crate::device::code::{display_user_code, normalize_user_code, random_token};
use crate::device::service::{
    resolve_scopes, BrowserError, DeviceService, Requester, Timing, EXPIRED_GRACE_SECS,
};
use crate::device::{memory::MemoryStore, redis::RedisStore};
use crate::device::{Key, Login, Refusal, Status, Store, StoreError};
use crate::discovery::{self, DEVICE_GRANT};
use crate::error::OAuthError;
use crate::form::{is_form_content_type, Params};
use crate::limits::{ip_key, same_network, Limits};
use crate::metrics::{MeteredStore, Metrics};
use crate::oidc::{Oidc, UpstreamError};
use crate::pages::{self, security_headers, Catalog, CodeError, Consent, Message, Pages};

type HmacSha256 = Hmac<Sha256>;

/// Seconds since the Unix epoch: the one place the glue reads the clock.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The device-flow gateway.
pub struct Gateway {
    config: Arc<Config>,
    device: DeviceService,
    oidc: Arc<Oidc>,
    pages: Pages,
    limits: Limits,
    metrics: Arc<Metrics>,
    /// Keyed MAC for CSRF tokens and browser bindings, keyed with the store's shared secret
    /// (fetched on first use, so a Redis that is down at start-up only delays it).
    browser_mac: OnceCell<HmacSha256>,
    cookie_name: &'static str,
    secure_cookies: bool,
    discovery_paths: Vec<String>,
    /// With its own origin (public_url ≠ the issuer's origin): the gateway's origin, put in
    /// discovery's `token_endpoint`, and the IdP's authority, sent as `Host` upstream.
    own_origin: Option<(String, String)>,
    /// `X-Forwarded-Proto` for pass-through requests: public_url's scheme, built once.
    forwarded_proto: http::HeaderValue,
    /// The CSP `img-src` of pages: this origin plus the configured logos' origins.
    img_src: String,
    /// `{verification_path}/qr`: the QR code image of a user code's verification link.
    qr_path: String,
}

/// CSRF tokens and browser bindings, under a key every instance sharing the store knows.
#[derive(Clone, Copy)]
struct BrowserKeys<'a>(&'a HmacSha256);

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
    fn csrf_token(self, browser: &str, user_code: &str) -> String {
        URL_SAFE_NO_PAD.encode(
            self.mac("csrf", &[browser, user_code])
                .finalize()
                .into_bytes(),
        )
    }

    fn csrf_ok(self, browser: &str, user_code: &str, token: &str) -> bool {
        let Ok(raw) = URL_SAFE_NO_PAD.decode(token) else {
            return false;
        };
        // Constant-time comparison: the token is a secret an attacker may probe.
        self.mac("csrf", &[browser, user_code])
            .verify_slice(&raw)
            .is_ok()
    }

    /// What a grant's login is bound to: a keyed hash of the browser session cookie.
    fn browser_binding(self, browser: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.mac("bind", &[browser]).finalize().into_bytes())
    }
}

/// A request body that could not be read.
enum BodyError {
    TooLarge,
}

impl Gateway {
    /// Builds the gateway with the store the configuration names.
    pub fn new(config: Arc<Config>) -> Result<Self, String> {
        let retain = std::time::Duration::from_secs(config.device.expires_in + EXPIRED_GRACE_SECS);
        let max = config.store.max_pending;
        let store: Arc<dyn Store> = match &config.store.backend {
            Backend::Memory => Arc::new(MemoryStore::new(retain, max)),
            Backend::Redis(redis) => Arc::new(RedisStore::new(redis, retain, max)?),
        };
        let metrics = Arc::new(Metrics::new().map_err(|e| format!("metrics: {e}"))?);
        let store = Arc::new(MeteredStore {
            inner: store,
            metrics: metrics.clone(),
        });
        let device = DeviceService::new(
            store,
            Timing {
                expires_in: config.device.expires_in,
                interval: config.device.interval,
            },
            max,
        );
        let oidc = Arc::new(Oidc::new(config.clone()).map_err(|e| e.to_string())?);
        let pages = Pages::new(&config.ui)
            .map_err(|e| format!("loading page templates: {}", e.join("; ")))?;
        let logos = config
            .ui
            .logo_url
            .iter()
            .chain(config.clients.values().filter_map(|c| c.logo_url.as_ref()));
        let img_src = pages::image_sources(logos.map(String::as_str));
        let qr_path = format!(
            "{}/qr",
            config.device.verification_path.trim_end_matches('/')
        );
        let secure_cookies = config.public_url.scheme() == "https";
        Ok(Self {
            discovery_paths: discovery::well_known_paths(config.upstream.issuer.path()),
            own_origin: config.own_origin().then(|| {
                let issuer = &config.upstream.issuer;
                let authority = match issuer.port() {
                    Some(p) => format!("{}:{p}", issuer.host_str().unwrap_or_default()),
                    None => issuer.host_str().unwrap_or_default().to_string(),
                };
                (config.public_url.origin().ascii_serialization(), authority)
            }),
            device,
            oidc,
            pages,
            limits: Limits::new(&config.limits),
            metrics,
            browser_mac: OnceCell::new(),
            // `__Host-` pins the cookie to this origin, but browsers only take it when Secure.
            cookie_name: if secure_cookies {
                "__Host-devicegate"
            } else {
                "devicegate"
            },
            secure_cookies,
            img_src,
            qr_path,
            forwarded_proto: http::HeaderValue::from_static(
                if config.public_url.scheme() == "https" {
                    "https"
                } else {
                    "http"
                },
            ),
            config,
        })
    }

    /// The admin endpoints' view of this gateway.
    pub fn admin(&self) -> Admin {
        Admin {
            device: self.device.clone(),
            oidc: self.oidc.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// A client id as a metric label: configured ids only, so labels stay bounded.
    fn client_label<'a>(&'a self, client_id: &'a str) -> &'a str {
        if self.config.clients.contains_key(client_id) {
            client_id
        } else {
            "unknown"
        }
    }

    fn count_verification(&self, outcome: &str) {
        self.metrics
            .verifications
            .with_label_values(&[outcome])
            .inc();
    }

    // -----------------------------------------------------------------------------------------
    // Writing responses.

    async fn send(
        &self,
        session: &mut Session,
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
    ) -> Result<bool> {
        let mut resp = ResponseHeader::build(status, Some(headers.len() + 1))?;
        for (k, v) in headers {
            resp.append_header(k, v)?;
        }
        resp.insert_header("Content-Length", body.len().to_string())?;
        let head_only = session.req_header().method == Method::HEAD;
        session.write_response_header(Box::new(resp), false).await?;
        let body = if head_only {
            Bytes::new()
        } else {
            Bytes::from(body)
        };
        session.write_response_body(Some(body), true).await?;
        Ok(true)
    }

    /// JSON for devices; never cached (§3.2, RFC 6749 §5.1).
    async fn send_json(&self, session: &mut Session, status: u16, body: Vec<u8>) -> Result<bool> {
        self.send(session, status, json_headers(), body).await
    }

    async fn send_oauth_error(&self, session: &mut Session, e: &OAuthError) -> Result<bool> {
        let mut headers = json_headers();
        if e.status() == 401 {
            // RFC 6749 §5.2: a 401 carries WWW-Authenticate.
            headers.push(("WWW-Authenticate", "Basic realm=\"devicegate\"".into()));
        }
        if let OAuthError::RateLimited { poll, .. } = e {
            let limit = if *poll { "poll" } else { "device" };
            self.metrics.rate_limited.with_label_values(&[limit]).inc();
            let ip = ip_key(Self::client_ip(session));
            tracing::info!(target: "audit", event = "refused", limit, client_ip = %ip);
        }
        if let Some(secs) = e.retry_after() {
            // RFC 9110 §10.2.3: tell well-behaved clients when to come back.
            headers.push(("Retry-After", secs.to_string()));
        }
        self.send(session, e.status(), headers, e.to_json()).await
    }

    fn form_action(&self) -> String {
        let mut sources = vec!["'self'".to_string()];
        if let Ok(d) = self.oidc.discovery_url() {
            sources.push(d.origin().ascii_serialization());
        }
        sources.join(" ")
    }

    /// A page rendered in `t`'s language.
    async fn send_page(
        &self,
        session: &mut Session,
        t: &Catalog,
        status: u16,
        html: String,
        extra: Option<(&'static str, String)>,
    ) -> Result<bool> {
        let mut headers = security_headers(&self.form_action(), &self.img_src);
        headers.push(("Content-Type", "text/html; charset=utf-8".into()));
        headers.push(("Content-Language", t.lang.clone()));
        headers.push(("Vary", "Accept-Language".into()));
        headers.extend(extra);
        self.send(session, status, headers, html.into_bytes()).await
    }

    async fn send_message(&self, session: &mut Session, m: Message) -> Result<bool> {
        self.send_message_as(session, m, m.status(), None).await
    }

    /// An outcome page with another status than its own, and maybe one more header.
    async fn send_message_as(
        &self,
        session: &mut Session,
        m: Message,
        status: u16,
        extra: Option<(&'static str, String)>,
    ) -> Result<bool> {
        let t = self.lang(session);
        let html = self
            .pages
            .message(t, m, &self.config.device.verification_path);
        self.send_page(session, t, status, html, extra).await
    }

    // -----------------------------------------------------------------------------------------
    // Reading requests.

    /// Reads the whole request body (so the connection can be reused), up to the form limit.
    async fn read_body(&self, session: &mut Session) -> Result<Result<Bytes, BodyError>> {
        let declared = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let max = self.config.limits.max_body_bytes;
        if declared.is_some_and(|n| n > max) {
            // Not worth draining: answer and close.
            session.set_keepalive(None);
            return Ok(Err(BodyError::TooLarge));
        }
        let mut body = Vec::new();
        while let Some(chunk) = session.read_request_body().await? {
            body.extend_from_slice(&chunk);
            if body.len() > max {
                session.set_keepalive(None);
                return Ok(Err(BodyError::TooLarge));
            }
        }
        Ok(Ok(Bytes::from(body)))
    }

    fn header<'a>(session: &'a Session, name: &str) -> Option<&'a str> {
        session
            .req_header()
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
    }

    fn client_ip(session: &Session) -> Option<IpAddr> {
        session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
    }

    /// Query and header size limits of the endpoints devicegate owns.
    fn within_size_limits(session: &Session, limits: &LimitsConfig) -> Result<(), OAuthError> {
        let req = session.req_header();
        if req.uri.query().map_or(0, str::len) > limits.max_query_bytes {
            return Err(OAuthError::TooLarge {
                status: 414,
                description: format!("the query is longer than {} bytes", limits.max_query_bytes),
            });
        }
        let headers: usize = req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len())
            .sum();
        if headers > limits.max_header_bytes {
            return Err(OAuthError::TooLarge {
                status: 431,
                description: format!(
                    "the headers are larger than {} bytes",
                    limits.max_header_bytes
                ),
            });
        }
        Ok(())
    }

    fn query_params(session: &Session) -> Result<Params, OAuthError> {
        Params::parse(session.req_header().uri.query().unwrap_or("").as_bytes())
    }

    /// Reads the form body of an API endpoint (RFC 6749 §3.2: form-encoded, each parameter
    /// once). JSON bodies are refused on purpose: the RFCs define forms only, and a second
    /// parser is a second place for smuggling and confusion bugs.
    async fn read_api_form(&self, session: &mut Session) -> Result<Result<Params, OAuthError>> {
        if let Err(e) = Self::within_size_limits(session, &self.config.limits) {
            session.set_keepalive(None);
            return Ok(Err(e));
        }
        let body = match self.read_body(session).await? {
            Ok(b) => b,
            Err(BodyError::TooLarge) => return Ok(Err(self.body_too_large())),
        };
        if !is_form_content_type(Self::header(session, "content-type")) {
            return Ok(Err(OAuthError::InvalidRequest(
                "the body must be application/x-www-form-urlencoded".into(),
            )));
        }
        Ok(Params::parse(&body))
    }

    fn body_too_large(&self) -> OAuthError {
        OAuthError::TooLarge {
            status: 413,
            description: format!(
                "the body is larger than {} bytes",
                self.config.limits.max_body_bytes
            ),
        }
    }

    /// The client and its credentials, from HTTP Basic (RFC 6749 §2.3.1, `client_secret_basic`)
    /// or the form (`client_id`, and `client_secret` for `client_secret_post`).
    fn credentials(&self, session: &Session, params: &Params) -> Result<Credentials, OAuthError> {
        let Some(header) = Self::header(session, "authorization") else {
            return Ok(Credentials {
                client_id: params.require("client_id")?.to_string(),
                secrets: params
                    .get("client_secret")
                    .map(str::to_string)
                    .into_iter()
                    .collect(),
            });
        };
        let basic = basic_credentials(header)
            .ok_or_else(|| OAuthError::InvalidClient("malformed HTTP Basic credentials".into()))?;
        // §2.3.1 form-encodes both parts, but most clients (requests, Authlib, libcurl as
        // oidc-agent uses it) send them raw: take the decoded id if it is registered, else the
        // raw one, and accept the secret either way.
        let client_id = if self.config.clients.contains_key(&basic.id) {
            basic.id
        } else {
            basic.raw_id
        };
        let mut secrets = vec![basic.secret];
        if basic.raw_secret != secrets[0] {
            secrets.push(basic.raw_secret);
        }
        if params.get("client_id").is_some_and(|p| p != client_id) {
            return Err(OAuthError::InvalidRequest(
                "client_id differs from the HTTP Basic user".into(),
            ));
        }
        if params.get("client_secret").is_some() {
            // §2.3: a client uses one authentication method per request.
            return Err(OAuthError::InvalidRequest(
                "send the client secret once: HTTP Basic or client_secret, not both".into(),
            ));
        }
        secrets.retain(|s| !s.is_empty());
        Ok(Credentials { client_id, secrets })
    }

    /// The registered client, authenticated when it has a secret (confidential client).
    /// Public clients need none, and a secret they send is ignored.
    fn authenticate(&self, creds: &Credentials) -> Result<&Client, OAuthError> {
        let client = self
            .config
            .clients
            .get(&creds.client_id)
            .ok_or_else(|| OAuthError::InvalidClient("unknown client".into()))?;
        if let Some(expected) = &client.client_secret {
            if creds.secrets.is_empty() {
                return Err(OAuthError::InvalidClient(
                    "this client must authenticate".into(),
                ));
            }
            // Constant time, length included: compare digests, not the secrets; every candidate
            // is compared, so the time does not tell which one matched.
            let want = Sha256::digest(expected.expose().as_bytes());
            let same = creds
                .secrets
                .iter()
                .fold(subtle::Choice::from(0), |acc, presented| {
                    acc | Sha256::digest(presented.as_bytes()).ct_eq(&want)
                });
            if !bool::from(same) {
                return Err(OAuthError::InvalidClient(
                    "client authentication failed".into(),
                ));
            }
        }
        Ok(client)
    }

    /// The page language for this request's `Accept-Language`.
    fn lang(&self, session: &Session) -> &Catalog {
        self.pages
            .language(Self::header(session, "accept-language"))
    }

    fn known_client(&self, client_id: &str) -> Result<&Client, OAuthError> {
        self.config
            .clients
            .get(client_id)
            .filter(|c| c.enabled)
            .ok_or_else(|| OAuthError::InvalidClient("unknown or disabled client".into()))
    }

    fn rate_limited(poll: bool) -> impl Fn(u64) -> OAuthError {
        move |retry_after| OAuthError::RateLimited { poll, retry_after }
    }

    // -----------------------------------------------------------------------------------------
    // Device authorization endpoint (RFC 8628 §3.1, §3.2).

    async fn device_authorization(&self, session: &mut Session) -> Result<bool> {
        if session.req_header().method != Method::POST {
            return self.method_not_allowed(session, "POST").await;
        }
        let params = match self.read_api_form(session).await? {
            Ok(p) => p,
            Err(e) => return self.send_oauth_error(session, &e).await,
        };
        let ip = ip_key(Self::client_ip(session));
        let issued = async {
            let now = now();
            let limited = Self::rate_limited(false);
            self.limits
                .device_request_from(&ip, now)
                .map_err(&limited)?;
            let creds = self.credentials(session, &params)?;
            let client = self.authenticate(&creds)?;
            if !client.enabled {
                return Err(OAuthError::InvalidClient("this client is disabled".into()));
            }
            let client_id = &client.client_id;
            self.limits
                .device_request_by(client_id, now)
                .map_err(limited)?;
            let scopes = resolve_scopes(params.get("scope"), &client.allowed_scopes)?;
            let requester = Requester {
                ip: Self::client_ip(session).map(|ip| ip.to_string()),
                software: Requester::software_from_user_agent(Self::header(session, "user-agent")),
            };
            self.device
                .authorize(&client.client_id, scopes, requester, now)
                .await
                .map(|i| (i, client.client_id.clone()))
        }
        .await;
        let claimed = params.get("client_id").unwrap_or_default();
        let (issued, client_id) = match issued {
            Ok(x) => x,
            Err(e) => {
                let label = self.client_label(claimed);
                self.metrics
                    .device_authorizations
                    .with_label_values(&[label, e.code()])
                    .inc();
                tracing::info!(error = e.code(), "device authorization refused");
                return self.send_oauth_error(session, &e).await;
            }
        };
        self.metrics
            .device_authorizations
            .with_label_values(&[client_id.as_str(), "issued"])
            .inc();
        tracing::info!(target: "audit", event = "created", grant = %issued.id, client_id = %client_id, client_ip = %ip);
        /// §3.2, in its order.
        #[derive(serde::Serialize)]
        struct Response<'a> {
            device_code: &'a str,
            user_code: &'a str,
            verification_uri: &'a str,
            verification_uri_complete: &'a str,
            expires_in: u64,
            interval: u64,
            /// Google's name for verification_uri, for clients written against Google only.
            #[serde(skip_serializing_if = "Option::is_none")]
            verification_url: Option<&'a str>,
        }
        let verification_uri = self.config.public(&self.config.device.verification_path);
        let google = self
            .config
            .clients
            .get(&client_id)
            .is_some_and(|c| c.verification_url);
        let body = Response {
            device_code: &issued.device_code,
            user_code: &display_user_code(&issued.user_code),
            verification_uri: &verification_uri,
            verification_uri_complete: &self.verification_uri_complete(&issued.user_code),
            expires_in: issued.expires_in,
            interval: issued.interval,
            verification_url: google.then_some(verification_uri.as_str()),
        };
        let body = serde_json::to_vec(&body).unwrap_or_default();
        self.send_json(session, 200, body).await
    }

    async fn method_not_allowed(&self, session: &mut Session, allow: &str) -> Result<bool> {
        let e = OAuthError::InvalidRequest(format!("method not allowed, use {allow}"));
        let mut headers = json_headers();
        headers.push(("Allow", allow.to_string()));
        self.send(session, 405, headers, e.to_json()).await
    }

    // -----------------------------------------------------------------------------------------
    // Token endpoint: device-code polls (RFC 8628 §3.4, §3.5); other grants pass through.

    /// The owned path that `path` spells another way (percent-encoding, dot segments, doubled
    /// or back slashes, a trailing slash, letter case), if any.
    async fn disguised_owned_path(&self, path: &str) -> Option<String> {
        let d = &self.config.device;
        let fixed = [
            &d.authorization_path,
            &d.verification_path,
            &d.callback_path,
            &self.qr_path,
        ];
        let owned = fixed
            .into_iter()
            .chain(&d.extra_authorization_paths)
            .chain(&self.discovery_paths);
        if owned.clone().any(|o| o == path) {
            return None;
        }
        // Every pass-through request comes here: normalise (and allocate) only paths that have
        // something to normalise; others can differ from an owned path in letter case only.
        let needs_normalising = path.contains(['%', '\\'])
            || path.contains("//")
            || path.contains("/.")
            || (path.len() > 1 && path.ends_with('/'));
        let plain = if needs_normalising {
            std::borrow::Cow::Owned(normal_form(path))
        } else {
            std::borrow::Cow::Borrowed(path)
        };
        let disguises = |o: &str| o != path && o.eq_ignore_ascii_case(&plain);
        if let Some(o) = owned.into_iter().find(|o| disguises(o)) {
            return Some(o.clone());
        }
        match &self.config.upstream.token_path {
            Some(p) => disguises(p).then(|| p.clone()),
            None => {
                let disc = self.oidc.cached_discovery().await?;
                let p = disc.token_endpoint.path();
                disguises(p).then(|| p.to_string())
            }
        }
    }

    async fn is_token_path(&self, path: &str) -> bool {
        if let Some(p) = &self.config.upstream.token_path {
            return p == path;
        }
        let disc = match self.oidc.cached_discovery().await {
            Some(d) => Some(d),
            // Not loaded yet (first request, or the IdP was down): try now, at most every few
            // seconds so a dead IdP does not slow every POST.
            None => self.oidc.discovery_if_due().await,
        };
        // At the IdP's origin, the IdP's token endpoint is ours when it is on that origin; on
        // its own origin the gateway advertises the IdP's token path on itself.
        disc.is_some_and(|d| {
            d.token_endpoint.path() == path
                && (self.own_origin.is_some()
                    || d.token_endpoint.origin() == self.config.public_url.origin())
        })
    }

    async fn token(&self, session: &mut Session) -> Result<bool> {
        // Keep a copy of what is read so Pingora can still relay it when it is not ours.
        session.enable_retry_buffering();
        let body = match self.read_body(session).await? {
            Ok(b) => b,
            Err(BodyError::TooLarge) => {
                return self.send_oauth_error(session, &self.body_too_large()).await
            }
        };
        let ours = is_form_content_type(Self::header(session, "content-type"))
            && form_urlencoded::parse(&body).any(|(k, v)| k == "grant_type" && v == DEVICE_GRANT);
        if !ours {
            return Ok(false);
        }
        let ip = ip_key(Self::client_ip(session));
        let result = async {
            let now = now();
            Self::within_size_limits(session, &self.config.limits)?;
            let params = Params::parse(&body)?;
            // Limits come before the store: a flood of polls costs it nothing.
            let limited = Self::rate_limited(true);
            self.limits.poll_from(&ip, now).map_err(&limited)?;
            let creds = self.credentials(session, &params)?;
            let client = self.authenticate(&creds)?;
            if !client.enabled {
                // The kill switch also stops delivery of tokens approved before it was set.
                return Err(OAuthError::InvalidClient("this client is disabled".into()));
            }
            let device_code = params.require("device_code")?;
            self.limits
                .poll_by(&client.client_id, now)
                .map_err(limited)?;
            let (grant, result) = self
                .device
                .poll_grant(&client.client_id, device_code, now)
                .await;
            Ok::<_, OAuthError>((grant, client.client_id.clone(), result))
        }
        .await;
        let (grant, client_id, result) = match result {
            Ok((grant, client_id, result)) => (grant.unwrap_or_default(), client_id, result),
            Err(e) => (String::new(), String::new(), Err(e)),
        };
        match result {
            Ok(tokens) => {
                self.metrics.polls.with_label_values(&["delivered"]).inc();
                tracing::info!(target: "audit", event = "delivered", grant = %grant, client_id = %client_id, client_ip = %ip);
                let body = serde_json::to_vec(&tokens).unwrap_or_default();
                self.send_json(session, 200, body).await
            }
            Err(e) => {
                self.metrics.polls.with_label_values(&[e.code()]).inc();
                if e == OAuthError::ExpiredToken {
                    tracing::info!(target: "audit", event = "expired", grant = %grant, client_id = %client_id, client_ip = %ip);
                }
                self.send_oauth_error(session, &e).await
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Discovery documents (RFC 8414, OIDC Discovery), relayed with the device flow added.

    async fn discovery(&self, session: &mut Session) -> Result<bool> {
        if let Err(e) = Self::within_size_limits(session, &self.config.limits) {
            return self.send_oauth_error(session, &e).await;
        }
        let path_and_query = session
            .req_header()
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        let mut url = self.config.upstream.issuer.clone();
        url.set_path("");
        let origin = url.as_str().trim_end_matches('/').to_string();
        let url = match url::Url::parse(&format!("{origin}{path_and_query}")) {
            Ok(u) => u,
            Err(_) => return Ok(false),
        };
        let mut fetched = self.oidc.get(&url).await;
        if fetched.as_ref().is_ok_and(|r| r.status == 404) && url.path() != self.discovery_paths[0]
        {
            // An RFC 8414 path this IdP does not serve (Keycloak serves only one of the two):
            // answer with its OpenID Connect document, which has every field RFC 8414 needs.
            if let Ok(oidc_url) = url::Url::parse(&format!("{origin}{}", self.discovery_paths[0])) {
                fetched = self.oidc.get(&oidc_url).await;
            }
        }
        let resp = match fetched {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "discovery fetch failed");
                let e = OAuthError::TemporarilyUnavailable(
                    "the identity provider is unreachable".into(),
                );
                return self.send(session, 502, json_headers(), e.to_json()).await;
            }
        };
        let device_endpoint = self.config.public(&self.config.device.authorization_path);
        let body = if resp.status == 200 {
            if url.path() == self.discovery_paths[0] {
                if let Err(e) = self.oidc.learn_discovery(&resp.body).await {
                    tracing::warn!(error = %e, "discovery document not usable");
                }
            }
            let gateway_origin = self.own_origin.as_ref().map(|(o, _)| o.as_str());
            discovery::rewrite_for(&resp.body, &device_endpoint, gateway_origin)
                .unwrap_or_else(|| resp.body.to_vec())
        } else {
            resp.body.to_vec()
        };
        let mut headers = Vec::new();
        for name in [
            "content-type",
            "cache-control",
            "expires",
            "vary",
            "access-control-allow-origin",
            "access-control-allow-credentials",
            "access-control-expose-headers",
        ] {
            for v in resp.headers.get_all(name) {
                if let Ok(v) = v.to_str() {
                    headers.push((header_name(name), v.to_string()));
                }
            }
        }
        self.send(session, resp.status, headers, body).await
    }

    // -----------------------------------------------------------------------------------------
    // Verification page (RFC 8628 §3.3).

    fn session_cookie(session: &Session, name: &str) -> Option<String> {
        session
            .req_header()
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, v)| *k == name && v.len() == 43)
            .map(|(_, v)| v.to_string())
    }

    fn set_cookie(&self, value: &str) -> String {
        let secure = if self.secure_cookies { "; Secure" } else { "" };
        format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
            self.cookie_name,
            self.config.device.expires_in + EXPIRED_GRACE_SECS
        )
    }

    /// The browser MAC, keyed once from the store's shared secret.
    async fn browser_keys(&self) -> Result<BrowserKeys<'_>, StoreError> {
        self.browser_mac
            .get_or_try_init(|| async {
                let secret = self.device.shared_secret().await?;
                HmacSha256::new_from_slice(&secret)
                    .map_err(|e| StoreError::Unavailable(e.to_string()))
            })
            .await
            .map(BrowserKeys)
    }

    fn refusal_page(r: Refusal) -> Message {
        match r {
            Refusal::Expired => Message::Expired,
            Refusal::AlreadyUsed => Message::AlreadyUsed,
            Refusal::AlreadyDenied => Message::AlreadyDenied,
            Refusal::LoginMismatch => Message::LoginMismatch,
        }
    }

    async fn browser_error(&self, session: &mut Session, e: BrowserError) -> Result<bool> {
        match e {
            BrowserError::UnknownCode => self.code_error(session, "", CodeError::Unknown).await,
            BrowserError::Refused(r) => self.send_message(session, Self::refusal_page(r)).await,
            BrowserError::Store(e) => {
                tracing::error!(error = %e, "store failed");
                self.send_message(session, Message::Unavailable).await
            }
        }
    }

    /// The grant's client was disabled (`enabled: false`) after the device asked: the grant is
    /// denied, so the device learns it at its next poll, and the page says why.
    async fn refuse_disabled_client(
        &self,
        session: &mut Session,
        user_code: &str,
        now: u64,
    ) -> Result<bool> {
        let denied = self
            .device
            .transition(Key::UserCode(user_code), |g| {
                g.deny("the client is disabled", now)
            })
            .await;
        if let Ok(g) = denied {
            tracing::info!(target: "audit", event = "denied", by = "operator", grant = %g.id, client_id = %g.client_id);
        }
        self.send_message(session, Message::ClientDisabled).await
    }

    async fn code_error(
        &self,
        session: &mut Session,
        typed: &str,
        error: CodeError,
    ) -> Result<bool> {
        let t = self.lang(session);
        let html = self
            .pages
            .enter(t, &self.config.device.verification_path, typed, Some(error));
        self.send_page(session, t, 400, html, None).await
    }

    /// `verification_uri_complete` (§3.3.1) for a canonical user code.
    fn verification_uri_complete(&self, user_code: &str) -> String {
        format!(
            "{}?user_code={}",
            self.config.public(&self.config.device.verification_path),
            display_user_code(user_code)
        )
    }

    /// `GET {verification_path}/qr?user_code=…`: an SVG QR code of that code's
    /// `verification_uri_complete`, for devices that can show an image but cannot draw a QR
    /// code. It only encodes a URL built from a well-formed code (no store lookup), so it tells
    /// nothing about which codes exist.
    async fn qr_code(&self, session: &mut Session) -> Result<bool> {
        let method = session.req_header().method.clone();
        if method != Method::GET && method != Method::HEAD {
            return self.method_not_allowed(session, "GET").await;
        }
        if let Err(e) = Self::within_size_limits(session, &self.config.limits) {
            return self.send_oauth_error(session, &e).await;
        }
        let code = Self::query_params(session)
            .ok()
            .and_then(|q| q.get("user_code").and_then(normalize_user_code));
        let Some(code) = code else {
            let e = OAuthError::InvalidRequest("user_code is missing or malformed".into());
            return self.send_oauth_error(session, &e).await;
        };
        let Some(svg) = pages::qr::svg(&self.verification_uri_complete(&code)) else {
            let e =
                OAuthError::InvalidRequest("the verification URI is too long for a QR code".into());
            return self.send_oauth_error(session, &e).await;
        };
        let headers = vec![
            ("Content-Type", "image/svg+xml".to_string()),
            (
                "Content-Security-Policy",
                "default-src 'none'; style-src 'unsafe-inline'".to_string(),
            ),
            ("X-Content-Type-Options", "nosniff".to_string()),
            ("Cache-Control", "no-store".to_string()),
        ];
        self.send(session, 200, headers, svg.into_bytes()).await
    }

    /// Browser endpoints answer a request over the size limits with a page.
    async fn oversized_page(&self, session: &mut Session) -> Result<Option<bool>> {
        match Self::within_size_limits(session, &self.config.limits) {
            Ok(()) => Ok(None),
            Err(e) => {
                session.set_keepalive(None);
                self.send_message_as(session, Message::BadRequest, e.status(), None)
                    .await
                    .map(Some)
            }
        }
    }

    async fn verification(&self, session: &mut Session) -> Result<bool> {
        if let Some(done) = self.oversized_page(session).await? {
            return Ok(done);
        }
        let method = session.req_header().method.clone();
        let action = self.config.device.verification_path.clone();
        let existing = Self::session_cookie(session, self.cookie_name);
        let (browser, new_cookie) = match existing {
            Some(b) => (b, None),
            None => {
                let b = random_token(32);
                let c = self.set_cookie(&b);
                (b, Some(c))
            }
        };
        if method == Method::GET || method == Method::HEAD {
            let Ok(q) = Self::query_params(session) else {
                return self.send_message(session, Message::BadRequest).await;
            };
            // §3.3.1: a code from verification_uri_complete is only prefilled, never acted on.
            let typed = q.get("user_code").unwrap_or("");
            let shown = normalize_user_code(typed)
                .map(|c| display_user_code(&c))
                .unwrap_or_else(|| typed.chars().take(20).collect());
            let t = self.lang(session);
            let html = self.pages.enter(t, &action, &shown, None);
            return self
                .send_page(session, t, 200, html, new_cookie.map(|c| ("Set-Cookie", c)))
                .await;
        }
        if method != Method::POST {
            let mut headers = security_headers("'none'", "'none'");
            headers.push(("Allow", "GET, POST".into()));
            headers.push(("Content-Type", "text/plain; charset=utf-8".into()));
            return self
                .send(session, 405, headers, b"Method not allowed".to_vec())
                .await;
        }
        let body = match self.read_body(session).await? {
            Ok(b) => b,
            Err(BodyError::TooLarge) => {
                return self.send_message(session, Message::BadRequest).await
            }
        };
        let params = match Params::parse(&body) {
            Ok(p) if is_form_content_type(Self::header(session, "content-type")) => p,
            _ => return self.send_message(session, Message::BadRequest).await,
        };
        // §5.1: user codes are short, so wrong ones are counted per address and overall, and
        // once a budget is spent no code is even looked up until its window ends.
        let now = now();
        let ip = ip_key(Self::client_ip(session));
        if let Err(secs) = self.limits.code_entry_allowed(&ip, now) {
            self.metrics
                .rate_limited
                .with_label_values(&["code_failures"])
                .inc();
            tracing::warn!(target: "audit", event = "refused", limit = "code_failures", client_ip = %ip);
            let retry = Some(("Retry-After", secs.to_string()));
            return self
                .send_message_as(session, Message::TooManyAttempts, 429, retry)
                .await;
        }
        let typed = params.get("user_code").unwrap_or("");
        let Some(user_code) = normalize_user_code(typed) else {
            self.limits.code_failed(&ip, now);
            self.count_verification("malformed_code");
            let shown: String = typed.chars().take(20).collect();
            return self.code_error(session, &shown, CodeError::Malformed).await;
        };
        let keys = match self.browser_keys().await {
            Ok(k) => k,
            Err(e) => return self.browser_error(session, BrowserError::Store(e)).await,
        };
        match params.get("action").unwrap_or("lookup") {
            "lookup" => {
                let grant = match self.device.lookup(&user_code, now).await {
                    Ok(g) => g,
                    Err(e) => {
                        if e == BrowserError::UnknownCode {
                            tracing::info!(client_ip = %ip, "unknown user code entered");
                            self.limits.code_failed(&ip, now);
                            self.count_verification("unknown_code");
                        }
                        return self.browser_error(session, e).await;
                    }
                };
                let Ok(client) = self.known_client(&grant.client_id) else {
                    return self.refuse_disabled_client(session, &user_code, now).await;
                };
                let shown = display_user_code(&user_code);
                let csrf = keys.csrf_token(&browser, &user_code);
                tracing::info!(target: "audit", event = "code_entered", grant = %grant.id, client_id = %grant.client_id, client_ip = %ip);
                // §5.4: show where the request came from, and warn when that is not where the
                // person looking at this page is (a phished user is usually far from the device).
                let other_network = match (grant.requester_ip.as_deref(), Self::client_ip(session))
                {
                    (Some(device), Some(browser)) => device
                        .parse()
                        .is_ok_and(|device| !same_network(device, browser)),
                    _ => false,
                };
                let t = self.lang(session);
                let html = self.pages.consent(
                    t,
                    &Consent {
                        action: &action,
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
                self.send_page(session, t, 200, html, new_cookie.map(|c| ("Set-Cookie", c)))
                    .await
            }
            act @ ("approve" | "deny") => {
                // The approve/deny form must come from a page this browser got from us. Its
                // CSRF token exists only for a code that was looked up (and counted) above, so
                // these actions cannot be used to guess codes.
                let csrf = params.get("csrf").unwrap_or("");
                if new_cookie.is_some() || !keys.csrf_ok(&browser, &user_code, csrf) {
                    tracing::warn!("verification form with a bad CSRF token");
                    return self.send_message(session, Message::LoginMismatch).await;
                }
                if act == "deny" {
                    return match self.device.deny(&user_code, now).await {
                        Ok(g) => {
                            self.count_verification("denied");
                            tracing::info!(target: "audit", event = "denied", by = "user", grant = %g.id, client_id = %g.client_id, client_ip = %ip);
                            self.send_message(session, Message::Denied).await
                        }
                        Err(e) => self.browser_error(session, e).await,
                    };
                }
                let binding = keys.browser_binding(&browser);
                self.approve(session, &user_code, binding, now).await
            }
            _ => self.send_message(session, Message::BadRequest).await,
        }
    }

    /// Approve pressed: bind a fresh login to the grant and send the browser to the IdP.
    async fn approve(
        &self,
        session: &mut Session,
        user_code: &str,
        browser_binding: String,
        now: u64,
    ) -> Result<bool> {
        let started = std::time::Instant::now();
        let disc = self.oidc.discovery().await;
        let upstream = &self.metrics.upstream_seconds;
        Metrics::observe(upstream, "discovery", disc.is_ok(), started.elapsed());
        let disc = match disc {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the upstream login");
                return self.send_message(session, Message::LoginRetry).await;
            }
        };
        let login = Login {
            state_secret: random_token(16),
            nonce: random_token(16),
            pkce_verifier: random_token(32),
            browser_binding,
            started_at: now,
        };
        let grant = match self.device.begin_login(user_code, login.clone(), now).await {
            Ok(g) => g,
            Err(e) => return self.browser_error(session, e).await,
        };
        let Ok(client) = self.known_client(&grant.client_id) else {
            return self.refuse_disabled_client(session, user_code, now).await;
        };
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
        let mut headers = security_headers("'none'", "'none'");
        headers.push(("Location", url.to_string()));
        self.send(session, 303, headers, Vec::new()).await
    }

    // -----------------------------------------------------------------------------------------
    // Login callback from the IdP.

    async fn callback(&self, session: &mut Session) -> Result<bool> {
        if let Some(done) = self.oversized_page(session).await? {
            return Ok(done);
        }
        if session.req_header().method != Method::GET {
            return self.send_message(session, Message::BadRequest).await;
        }
        let Ok(q) = Self::query_params(session) else {
            return self.send_message(session, Message::BadRequest).await;
        };
        let Some((id, secret)) = q.get("state").and_then(|s| s.split_once('.')) else {
            return self.send_message(session, Message::LoginMismatch).await;
        };
        // RFC 9207: a response naming another issuer is a mix-up attempt; ignore it.
        let issuer = self.config.upstream.issuer.as_str().trim_end_matches('/');
        if q.get("iss")
            .is_some_and(|iss| iss.trim_end_matches('/') != issuer)
        {
            tracing::warn!("login callback from another issuer refused");
            return self.send_message(session, Message::LoginMismatch).await;
        }
        let keys = match self.browser_keys().await {
            Ok(k) => k,
            Err(e) => return self.browser_error(session, BrowserError::Store(e)).await,
        };
        let binding = Self::session_cookie(session, self.cookie_name)
            .map(|b| keys.browser_binding(&b))
            .unwrap_or_default();
        let grant = match self.device.by_id(id).await {
            Ok(Some(g)) => g,
            Ok(None) => return self.send_message(session, Message::LoginMismatch).await,
            Err(e) => return self.browser_error(session, BrowserError::Store(e)).await,
        };
        // A missing, replayed or foreign state changes nothing.
        if let Err(r) = grant.check_login(secret, &binding) {
            tracing::warn!(grant = %grant.id, ?r, "login callback refused");
            return self.send_message(session, Self::refusal_page(r)).await;
        }
        let Status::Authorizing(login) = &grant.status else {
            return self.send_message(session, Message::LoginMismatch).await;
        };
        let now = now();
        let fail = |reason: String, retryable: bool| {
            let (secret, binding) = (secret.to_string(), binding.clone());
            move |g: &mut crate::device::Grant| g.fail_login(&secret, &binding, &reason, retryable)
        };
        let client = match self.config.clients.get(&grant.client_id) {
            Some(c) if c.enabled => c,
            _ => {
                let _ = self
                    .device
                    .transition(Key::Id(id), fail("the client is disabled".into(), false))
                    .await;
                return self.send_message(session, Message::LoginFailed).await;
            }
        };
        if let Some(err) = q.get("error") {
            self.count_verification("login_failed");
            tracing::info!(target: "audit", event = "denied", by = "idp", grant = %grant.id, client_id = %grant.client_id, error = err);
            let reason = format!("the identity provider refused the login: {err}");
            return match self
                .device
                .transition(Key::Id(id), fail(reason, false))
                .await
            {
                Ok(_) => self.send_message(session, Message::LoginFailed).await,
                Err(e) => self.browser_error(session, e).await,
            };
        }
        let Some(code) = q.get("code") else {
            return self.send_message(session, Message::BadRequest).await;
        };
        let started = std::time::Instant::now();
        let exchanged = self
            .oidc
            .exchange_code(client, code, &login.pkce_verifier, &login.nonce, now)
            .await;
        let upstream = &self.metrics.upstream_seconds;
        Metrics::observe(upstream, "token", exchanged.is_ok(), started.elapsed());
        let (page, outcome) = match exchanged {
            Ok(res) => {
                let subject = res.subject.clone();
                let tokens = res.tokens;
                let (secret, binding) = (secret.to_string(), binding.clone());
                let r = self
                    .device
                    .transition(Key::Id(id), move |g| {
                        g.approve(
                            &secret,
                            &binding,
                            tokens.clone(),
                            Some(subject.clone()),
                            now,
                        )
                    })
                    .await;
                tracing::info!(target: "audit", event = "approved", grant = %grant.id, client_id = %grant.client_id, sub = %res.subject, client_ip = %ip_key(Self::client_ip(session)));
                (Message::Approved, r)
            }
            Err(e) => {
                let transient = e.is_transient();
                tracing::warn!(grant = %grant.id, error = %e, "upstream code exchange failed");
                let reason = match &e {
                    UpstreamError::Refused { error, .. } => {
                        format!("the identity provider refused the login: {error}")
                    }
                    _ => "the login at the identity provider could not be verified".into(),
                };
                let page = if transient {
                    Message::LoginRetry
                } else {
                    Message::LoginFailed
                };
                (
                    page,
                    self.device
                        .transition(Key::Id(id), fail(reason, transient))
                        .await,
                )
            }
        };
        match outcome {
            Ok(_) => {
                self.count_verification(match page {
                    Message::Approved => "approved",
                    Message::LoginRetry => "login_retry",
                    _ => "login_failed",
                });
                self.send_message(session, page).await
            }
            Err(e) => self.browser_error(session, e).await,
        }
    }
}

/// Headers of every JSON answer: never cached (§3.2, RFC 6749 §5.1).
fn json_headers() -> Vec<(&'static str, String)> {
    vec![
        ("Content-Type", "application/json".to_string()),
        ("Cache-Control", "no-store".to_string()),
        ("Pragma", "no-cache".to_string()),
    ]
}

fn header_name(lower: &str) -> &'static str {
    match lower {
        "content-type" => "Content-Type",
        "cache-control" => "Cache-Control",
        "expires" => "Expires",
        "vary" => "Vary",
        "access-control-allow-origin" => "Access-Control-Allow-Origin",
        "access-control-allow-credentials" => "Access-Control-Allow-Credentials",
        _ => "Access-Control-Expose-Headers",
    }
}

/// `path` as a server that normalises paths may read it: percent-decoded (repeatedly, so
/// `%252e` counts), `\\` read as `/`, empty and `.` segments dropped, `..` applied, no trailing
/// slash.
fn normal_form(path: &str) -> String {
    let mut decoded = path.to_string();
    for _ in 0..3 {
        let next = percent_decode_once(&decoded);
        if next == decoded {
            break;
        }
        decoded = next;
    }
    let decoded = decoded.replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    format!("/{}", segments.join("/"))
}

fn percent_decode_once(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied(),
            bytes.get(i + 2).copied(),
        ) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                let v = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Client credentials presented with a request.
struct Credentials {
    client_id: String,
    /// The secret as presented; for HTTP Basic, form-decoded and (when different) raw.
    secrets: Vec<String>,
}

/// The parts of an `Authorization: Basic` header, form-decoded (RFC 6749 §2.3.1) and raw.
#[derive(Debug, PartialEq, Eq)]
struct Basic {
    id: String,
    raw_id: String,
    secret: String,
    raw_secret: String,
}

/// The client id and secret of an `Authorization: Basic` header (RFC 6749 §2.3.1: both parts
/// are form-urlencoded before base64).
fn basic_credentials(header: &str) -> Option<Basic> {
    let (scheme, creds) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = STANDARD.decode(creds.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    let decode = |part: &str| {
        form_urlencoded::parse(format!("x={part}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    (!id.is_empty()).then(|| Basic {
        id: decode(id),
        raw_id: id.to_string(),
        secret: decode(secret),
        raw_secret: secret.to_string(),
    })
}

/// Per-request state.
#[derive(Default)]
pub struct RequestCtx {}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, _ctx: &mut Self::CTX) -> Result<bool> {
        let path = session.req_header().uri.path().to_string();
        let method = session.req_header().method.clone();
        let d = &self.config.device;
        if let Some(owned) = self.disguised_owned_path(&path).await {
            // `/device/../token`, `/%64evice`, `/Device`: an upstream that normalises paths
            // would read these as a path devicegate owns, so they are refused, not relayed.
            tracing::info!(path = %owned, "ambiguous spelling of an owned path refused");
            let e = OAuthError::InvalidRequest(format!(
                "ambiguous path: use {owned} exactly as written"
            ));
            return self.send_oauth_error(session, &e).await;
        }
        if path == d.authorization_path || d.extra_authorization_paths.contains(&path) {
            return self.device_authorization(session).await;
        }
        if path == d.verification_path {
            return self.verification(session).await;
        }
        if path == d.callback_path {
            return self.callback(session).await;
        }
        if path == self.qr_path {
            return self.qr_code(session).await;
        }
        if method == Method::GET && self.discovery_paths.contains(&path) {
            return self.discovery(session).await;
        }
        if method == Method::POST && self.is_token_path(&path).await {
            return self.token(session).await;
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let up = &self.config.upstream;
        let mut peer = HttpPeer::new(up.addr, up.tls, up.sni.clone());
        peer.options.connection_timeout = Some(up.timeout);
        peer.options.total_connection_timeout = Some(up.timeout);
        peer.options.read_timeout = Some(up.timeout);
        peer.options.write_timeout = Some(up.timeout);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut pingora::http::RequestHeader,
        _ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(ip) = Self::client_ip(session) {
            let mut xff = match upstream_request
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(prev) => format!("{prev}, "),
                None => String::with_capacity(15),
            };
            let _ = write!(xff, "{ip}");
            upstream_request.insert_header("X-Forwarded-For", xff)?;
        }
        // The gateway is the public origin: the scheme clients used is public_url's.
        upstream_request.insert_header("X-Forwarded-Proto", self.forwarded_proto.clone())?;
        if let Some((_, idp_authority)) = &self.own_origin {
            // On its own origin the gateway is not the IdP's public name: ask for the IdP's.
            upstream_request.insert_header("Host", idp_authority)?;
        }
        Ok(())
    }
}

/// Turns a construction failure into a Pingora error.
pub fn startup_error(msg: String) -> Box<Error> {
    Error::explain(ErrorType::InternalError, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disguised_paths_have_a_normal_form() {
        for (raw, plain) in [
            ("/device/../token", "/token"),
            ("/%2e%2e/token", "/token"),
            ("/device%2Fcode", "/device/code"),
            ("/device%252Fcode", "/device/code"),
            ("//device///code/", "/device/code"),
            ("/device/./code", "/device/code"),
            ("\\device\\code", "/device/code"),
            ("/../../token", "/token"),
            ("/interaction/abc", "/interaction/abc"),
            ("/%zz/%", "/%zz/%"),
        ] {
            assert_eq!(normal_form(raw), plain, "{raw}");
        }
    }

    #[test]
    fn basic_credentials_are_decoded() {
        let h = format!("Basic {}", STANDARD.encode("tv%3Aapp:s%2Bcret:x"));
        let b = basic_credentials(&h).unwrap();
        assert_eq!((b.id.as_str(), b.secret.as_str()), ("tv:app", "s+cret:x"));
        assert_eq!(
            (b.raw_id.as_str(), b.raw_secret.as_str()),
            ("tv%3Aapp", "s%2Bcret:x")
        );
        assert_eq!(basic_credentials("Bearer x"), None);
        assert_eq!(basic_credentials("Basic !!!"), None);
        assert_eq!(
            basic_credentials(&format!("Basic {}", STANDARD.encode(":x"))),
            None
        );
        let b = basic_credentials(&format!("Basic {}", STANDARD.encode("tv-app:"))).unwrap();
        assert_eq!((b.id.as_str(), b.secret.as_str()), ("tv-app", ""));
    }
}
