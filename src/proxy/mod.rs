//! The Pingora glue: one [`Gateway`], and its `ProxyHttp` implementation.
//!
//! Each request is classified once into a [`Route`] ([`route`]), kept in the per-request
//! [`RequestCtx`] with the client address and the time. Pass-through requests go to the IdP
//! unchanged, `Host` included, with the forwarding headers replaced by devicegate's own
//! (`X-Forwarded-For` the client's address, `-Proto` and `-Host` the public origin's). For the few
//! routes devicegate owns, `request_filter` checks the method and the size limits, reads the
//! body whole ([`request`]), hands a [`Request`] to the route's handler, and sends the
//! [`Reply`] it returns with the one writer ([`reply`]); the reply's [`Fact`]s become the audit
//! log and the metrics ([`events`]).
//!
//! One file per endpoint, each parse → act → reply:
//! - [`device_authorization`]: RFC 8628 §3.1, §3.2.
//! - [`token`]: device-code polls, §3.4, §3.5 (other grants pass through).
//! - [`discovery`]: the IdP's discovery documents with the device flow added.
//! - [`verification`]: the verification page, §3.3 (enter, consent, deny).
//! - [`login`]: Approve → the IdP's login, and its callback.
//! - [`qr`]: the QR code of a verification link.
//!
//! And on the admin listener: [`admin`] (health, metrics, the operators' API), over
//! [`operator`] (deny, the run-time client switch, the upkeep sweep every instance runs).
//!
//! Shared by them: [`auth`] (client authentication) and [`browser`] (cookies, CSRF, login
//! bindings). Handlers never panic and never answer 5xx for bad input: API endpoints answer
//! RFC 6749 JSON errors, browser endpoints readable pages.

pub mod admin;
mod auth;
mod browser;
mod device_authorization;
mod discovery;
pub mod events;
mod login;
pub mod operator;
mod policy;
mod qr;
pub mod reply;
pub mod request;
pub mod route;
mod token;
mod verification;

#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use http::HeaderValue;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::Result;

use crate::clock::{Clock, Time};
use crate::config::{Backend, Config};
use crate::device::service::{DeviceService, Timing, EXPIRED_GRACE_SECS};
use crate::device::switch::ClientSwitch;
use crate::device::{memory::MemoryStore, redis::RedisStore, Store};
use crate::limits::{ip_key, Limits};
use crate::metrics::{MeteredStore, Metrics};
use crate::net::authority;
use crate::oidc::{Discovery, Oidc};
use crate::pages::{self, Catalog, Message, Pages};
use browser::Browsers;
pub use events::Fact;
pub use reply::Reply;
pub use request::Request;
pub use route::Route;
use route::Routes;

/// The device-flow gateway: what every handler needs, injected (store, pages, IdP client,
/// limits, metrics, clock).
pub struct Gateway {
    config: Arc<Config>,
    device: DeviceService,
    oidc: Arc<Oidc>,
    pages: Pages,
    limits: Limits,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    routes: Routes,
    browsers: Browsers,
    /// With its own origin (public_url ≠ the issuer's origin): the gateway's origin, put in
    /// discovery's `token_endpoint`, and the IdP's authority, sent as `Host` upstream.
    own_origin: Option<(String, String)>,
    /// `X-Forwarded-Proto` for pass-through requests: public_url's scheme.
    forwarded_proto: HeaderValue,
    /// The verification page's public URL (§3.2 `verification_uri`), made once.
    verification_uri: String,
    /// `X-Forwarded-Host` for pass-through requests: the host the IdP is reached as (the
    /// public origin's, or on its own origin the IdP's).
    forwarded_host: HeaderValue,
    /// The security headers of every page, built once, and again only if discovery names a
    /// login origin elsewhere (the CSP names the IdP's origins as form targets and the logos'
    /// origins as image sources).
    page_headers: PageHeaders,
    /// The same for the redirect to the IdP's login.
    redirect_headers: Vec<(&'static str, HeaderValue)>,
    /// Resolved relay origins ([`Relay`]), by origin, with when they were resolved.
    relays: tokio::sync::Mutex<std::collections::HashMap<String, (Arc<Relay>, std::time::Instant)>>,
    /// `upstream.address`, resolved again once a minute when it is a host name.
    upstream_addr: Arc<crate::net::Resolving>,
    /// `public_url`'s origin, made once.
    public_origin: url::Origin,
    /// Where security events go (`events.webhooks`).
    outbox: Arc<crate::webhooks::Outbox>,
    /// The operators' run-time kill switch.
    switch: Arc<ClientSwitch>,
}

/// The pages' security headers. The CSP's `form-action` must let the consent form's redirect
/// reach the IdP's authorization endpoint (Chromium checks the redirect too), which is on the
/// issuer's origin except at IdPs such as AWS Cognito, whose login is on another origin that
/// only discovery names.
/// Header pairs ready to send.
type Headers = Arc<Vec<(&'static str, HeaderValue)>>;

struct PageHeaders {
    form_action: String,
    img_src: String,
    /// The headers for a login origin (the last one discovery named), shared by every page.
    current: std::sync::RwLock<(Option<String>, Headers)>,
}

impl PageHeaders {
    fn new(form_action: String, img_src: String) -> Result<Self, String> {
        let headers = header_values(pages::security_headers(&form_action, &img_src))?;
        Ok(Self {
            form_action,
            img_src,
            current: std::sync::RwLock::new((None, Arc::new(headers))),
        })
    }

    /// The headers when the IdP's login is at `login_origin` (known once discovery loaded).
    fn get(&self, login_origin: Option<String>) -> Headers {
        let read = |c: &Self| {
            c.current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        };
        let (origin, headers) = read(self);
        let named = |o: &str| self.form_action.split(' ').any(|x| x == o);
        if origin == login_origin || login_origin.as_deref().is_none_or(named) {
            return headers;
        }
        let form_action = format!(
            "{} {}",
            self.form_action,
            login_origin.as_deref().unwrap_or_default()
        );
        match header_values(pages::security_headers(&form_action, &self.img_src)) {
            Ok(h) => {
                let h = Arc::new(h);
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = (login_origin, h.clone());
                h
            }
            Err(e) => {
                tracing::warn!(error = %e, "the IdP's login origin cannot be named in the CSP");
                headers
            }
        }
    }
}

/// Per-request state: filled once at the start of `request_filter`.
pub struct RequestCtx {
    route: Route,
    client_ip: Option<IpAddr>,
    /// `client_ip` as limits and the audit log name it, for the owned routes only.
    ip_key: String,
    now: Time,
    /// Where a relayed request goes instead of `upstream.address` (see [`Relay`]).
    relay: Option<Arc<Relay>>,
}

/// Another origin a relayed request must reach: on its own origin the gateway advertises the
/// IdP's token endpoint path on itself, and when the IdP serves that endpoint from another
/// origin than its issuer's (AWS Cognito: the hosted-UI domain), refresh and other grants sent
/// there go to that origin, not to `upstream.address`.
#[derive(Debug)]
pub struct Relay {
    addr: std::net::SocketAddr,
    tls: bool,
    sni: String,
    /// `Host` and `X-Forwarded-Host` upstream.
    authority: HeaderValue,
}

/// How long a resolved address of the IdP (a relay origin's, `upstream.address`) is reused.
const RELAY_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// The IdP's token endpoint path, where the gateway answers device-code polls.
enum TokenPath<'a> {
    Configured(&'a str),
    Discovered(Arc<Discovery>),
    /// Discovery is loaded, and the token endpoint is on another origin than the gateway's.
    NotOurs,
    /// Not configured, and discovery has not loaded yet.
    Unknown,
}

impl TokenPath<'_> {
    fn path(&self) -> Option<&str> {
        match self {
            Self::Configured(p) => Some(p),
            Self::Discovered(d) => Some(d.token_endpoint.path()),
            Self::NotOurs | Self::Unknown => None,
        }
    }
}

impl Gateway {
    /// Builds the gateway with the store the configuration names and the pages built from it.
    pub fn new(config: Arc<Config>, pages: Pages, clock: Arc<dyn Clock>) -> Result<Self, String> {
        let retain = std::time::Duration::from_secs(config.device.expires_in + EXPIRED_GRACE_SECS);
        let max = config.store.max_pending;
        let store: Arc<dyn Store> = match &config.store.backend {
            Backend::Memory => Arc::new(MemoryStore::new(retain, max)),
            Backend::Redis(redis) => Arc::new(RedisStore::new(redis, retain, max)?),
        };
        let clients: Vec<&str> = config.clients.keys().map(String::as_str).collect();
        let metrics =
            Arc::new(Metrics::with_clients(&clients).map_err(|e| format!("metrics: {e}"))?);
        let store = Arc::new(MeteredStore {
            inner: store,
            metrics: metrics.clone(),
        });
        let store: Arc<dyn Store> = store;
        let device = DeviceService::new(
            store.clone(),
            Timing {
                expires_in: config.device.expires_in,
                interval: config.device.interval,
            },
            max,
        );
        let oidc = Arc::new(Oidc::new(config.clone(), metrics.clone()).map_err(|e| e.to_string())?);
        let logos = config
            .ui
            .logo_url
            .iter()
            .chain(config.clients.values().filter_map(|c| c.logo_url.as_ref()));
        let img_src = pages::image_sources(logos.map(String::as_str));
        let mut form_action = "'self'".to_string();
        if let Ok(d) = oidc.discovery_url() {
            form_action.push(' ');
            form_action.push_str(&d.origin().ascii_serialization());
        }
        let secure = config.public_url.scheme() == "https";
        let own_origin = config.own_origin().then(|| {
            (
                config.public_url.origin().ascii_serialization(),
                authority(&config.upstream.issuer),
            )
        });
        let forwarded_host = own_origin
            .as_ref()
            .map_or_else(|| authority(&config.public_url), |(_, idp)| idp.clone());
        let forwarded_host = HeaderValue::try_from(forwarded_host)
            .map_err(|e| format!("public_url's host as a header: {e}"))?;
        Ok(Self {
            forwarded_host,
            routes: Routes::new(
                &config.device,
                config.upstream.issuer.path(),
                config.upstream.discovery_url.as_ref().map(url::Url::path),
            ),
            browsers: Browsers::new(secure, config.device.expires_in + EXPIRED_GRACE_SECS),
            page_headers: PageHeaders::new(form_action, img_src)?,
            redirect_headers: header_values(pages::security_headers("'none'", "'none'"))?,
            forwarded_proto: HeaderValue::from_static(if secure { "https" } else { "http" }),
            verification_uri: config.public(&config.device.verification_path),
            own_origin,
            relays: Default::default(),
            public_origin: config.public_url.origin(),
            upstream_addr: crate::net::Resolving::new(
                &config.upstream.address,
                config.upstream.addr,
                std::time::Instant::now(),
                RELAY_TTL,
                config.upstream.timeout,
            ),
            switch: Arc::default(),
            outbox: Arc::new(crate::webhooks::Outbox::start(
                &config.events,
                metrics.clone(),
            )?),
            device,
            oidc,
            pages,
            limits: Limits::new(&config.limits, store, config.device.expires_in),
            metrics,
            clock,
            config,
        })
    }

    /// The operators' actions on this gateway's store and clients.
    pub fn operator(&self) -> Arc<operator::Operator> {
        Arc::new(operator::Operator::new(
            self.config.clone(),
            self.device.clone(),
            self.switch.clone(),
            self.outbox.clone(),
            self.metrics.clone(),
            self.clock.clone(),
        ))
    }

    /// The admin endpoints' view of this gateway.
    pub fn admin(&self, operator: Arc<operator::Operator>) -> admin::Admin {
        admin::Admin {
            operator,
            oidc: self.oidc.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// A client id as a metric label: configured ids only, so labels stay bounded.
    fn client_label(&self, client_id: Option<&str>) -> String {
        match client_id {
            Some(id) if self.config.clients.contains_key(id) => id.to_string(),
            _ => "unknown".into(),
        }
    }

    /// Where a request of `route` that is relayed goes, when not to `upstream.address`: on
    /// its own origin, a request to the token path goes to the origin the IdP's token endpoint
    /// really has. A relay origin that cannot be resolved is a 502 answer.
    async fn token_relay(&self, route: &Route) -> Result<Option<Arc<Relay>>, Reply> {
        if *route != Route::Token || self.own_origin.is_none() {
            return Ok(None);
        }
        let Some(disc) = self.oidc.cached_discovery() else {
            return Ok(None);
        };
        let token = &disc.token_endpoint;
        if token.origin() == self.config.upstream.issuer.origin() {
            return Ok(None);
        }
        let origin = token.origin().ascii_serialization();
        let mut relays = self.relays.lock().await;
        if let Some((relay, at)) = relays.get(&origin) {
            if at.elapsed() < RELAY_TTL {
                return Ok(Some(relay.clone()));
            }
        }
        let host = token.host_str().unwrap_or_default().to_string();
        let port = token.port_or_known_default().unwrap_or(443);
        let lookup = tokio::net::lookup_host((host.trim_matches(['[', ']']), port));
        let addr = match tokio::time::timeout(self.config.upstream.timeout, lookup).await {
            Ok(Ok(mut addrs)) => addrs.next(),
            _ => None,
        };
        let authority = HeaderValue::try_from(authority(token)).ok();
        let (Some(addr), Some(authority)) = (addr, authority) else {
            tracing::warn!(origin, "the IdP's token endpoint cannot be resolved");
            let e = crate::error::OAuthError::TemporarilyUnavailable(
                "the identity provider's token endpoint is unreachable".into(),
            );
            return Err(Reply::oauth_error_as(502, &e));
        };
        let relay = Arc::new(Relay {
            addr,
            tls: token.scheme() == "https",
            sni: host.trim_matches(['[', ']']).to_string(),
            authority,
        });
        relays.insert(origin, (relay.clone(), std::time::Instant::now()));
        Ok(Some(relay))
    }

    /// A configured client that is not switched off.
    fn enabled_client(&self, client_id: &str) -> Option<&crate::config::Client> {
        self.config
            .clients
            .get(client_id)
            .filter(|c| self.switch.enabled(c))
    }

    /// The IdP's token path, when it is known without waiting: configured, or from the
    /// discovery already loaded.
    fn token_path(&self) -> TokenPath<'_> {
        if let Some(p) = &self.config.upstream.token_path {
            return TokenPath::Configured(p);
        }
        match self.oidc.cached_discovery() {
            Some(d) if self.answers_polls_at(&d) => TokenPath::Discovered(d),
            Some(_) => TokenPath::NotOurs,
            None => {
                self.oidc.warm();
                TokenPath::Unknown
            }
        }
    }

    /// At the IdP's origin, the IdP's token endpoint is ours when it is on that origin; on its
    /// own origin the gateway advertises the IdP's token path on itself.
    fn answers_polls_at(&self, disc: &Discovery) -> bool {
        self.own_origin.is_some() || disc.token_origin == self.public_origin
    }

    /// Whether a POST could be a device-code poll: a form of a declared size the gateway
    /// reads. Anything else (uploads, JSON, chunked bodies) is relayed untouched.
    fn may_be_a_poll(&self, head: &RequestHeader) -> bool {
        let header = |name: &str| head.headers.get(name).and_then(|v| v.to_str().ok());
        crate::form::is_form_content_type(header("content-type"))
            && header("content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .is_some_and(|n| n <= self.config.limits.max_body_bytes)
    }

    /// The route of a request.
    pub fn classify(&self, head: &RequestHeader) -> Route {
        let token = self.token_path();
        let route = self
            .routes
            .classify(&head.method, head.uri.path(), token.path());
        // Before discovery has loaded, any POST may be a device-code poll: the token handler
        // reads it, and waits for discovery only if it is one (a poll relayed to an IdP without
        // the device flow would get `unsupported_grant_type`, which ends the device's flow).
        if route == Route::PassThrough
            && head.method == http::Method::POST
            && matches!(token, TokenPath::Unknown)
            && self.may_be_a_poll(head)
        {
            return Route::Token;
        }
        route
    }

    /// What is answered before the body is read: a method the route does not take, a request
    /// over the size limits, a disguised owned path.
    pub fn precheck(&self, route: &Route, head: &RequestHeader) -> Option<Reply> {
        if let Route::Disguised(owned) = route {
            // `/device/../token`, `/%64evice`, `/Device`: an upstream that normalises paths
            // would read these as a path devicegate owns, so they are refused, not relayed.
            tracing::info!(path = %owned, "ambiguous spelling of an owned path refused");
            let e = crate::error::OAuthError::InvalidRequest(format!(
                "ambiguous path: use {owned} exactly as written"
            ));
            return Some(Reply::oauth_error(&e));
        }
        if !route.allows(&head.method) {
            return Some(if route.is_page() {
                let t = self.lang(head);
                self.message_as(t, Message::MethodNotAllowed, 405)
                    .header("Allow", HeaderValue::from_static(route.allow()))
            } else {
                Reply::method_not_allowed(route.allow())
            });
        }
        // The token endpoint checks its limits once it knows the request is a device poll:
        // other grants pass through as they are.
        if *route == Route::Token {
            return None;
        }
        let e = request::within_size_limits(head, &self.config.limits).err()?;
        Some(self.too_large(route, head, &e))
    }

    /// A request over a limit: JSON for API routes, a page for browsers; the connection closes.
    fn too_large(
        &self,
        route: &Route,
        head: &RequestHeader,
        e: &crate::error::OAuthError,
    ) -> Reply {
        let reply = if route.is_page() {
            self.message_as(self.lang(head), Message::BadRequest, e.status())
        } else {
            Reply::oauth_error(e)
        };
        reply.closing()
    }

    /// Answers an owned route once its body is read; `None` relays the request (a token
    /// request that is not a device-code poll).
    pub async fn respond(&self, route: &Route, req: &Request<'_>) -> Option<Reply> {
        Some(match route {
            Route::DeviceAuthorization => self.device_authorization(req).await,
            Route::Token => return self.token(req).await,
            Route::Discovery { oidc } => self.discovery(req, *oidc).await,
            Route::Verification => self.verification(req).await,
            Route::Callback => self.callback(req).await,
            Route::Qr => self.qr_code(req).await,
            Route::Disguised(_) | Route::PassThrough => return None,
        })
    }

    // ---------------------------------------------------------------------------------------
    // Pages.

    /// The page language for a request's `Accept-Language`.
    fn lang(&self, head: &RequestHeader) -> &Catalog {
        let accept = head
            .headers
            .get("accept-language")
            .and_then(|v| v.to_str().ok());
        self.pages.language(accept)
    }

    /// A page rendered in `t`'s language.
    fn page(&self, t: &Catalog, status: u16, html: String) -> Reply {
        let mut reply = Reply::new(status, html);
        let headers = self.page_headers.get(self.oidc.login_origin());
        reply.headers.extend(headers.iter().cloned());
        reply
            .header(
                "Content-Type",
                HeaderValue::from_static("text/html; charset=utf-8"),
            )
            .header_text("Content-Language", &t.lang)
            .header("Vary", HeaderValue::from_static("Accept-Language"))
    }

    /// An outcome page with its own status.
    fn message(&self, t: &Catalog, m: Message) -> Reply {
        self.message_as(t, m, m.status())
    }

    /// An outcome page with another status than its own.
    fn message_as(&self, t: &Catalog, m: Message, status: u16) -> Reply {
        let html = self
            .pages
            .message(t, m, &self.config.device.verification_path);
        self.page(t, status, html)
    }
}

/// Forwarding headers a client could forge: removed from every relayed request, and replaced
/// by the ones devicegate sets (`X-Forwarded-For`, `-Proto`, `-Host`).
const SPOOFABLE: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-proto",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-original-forwarded-for",
];

/// What a device is told when a limit refused its request: `slow_down` for polls, and 503 when
/// the counts could not be kept (the store is down: fail closed).
fn limit_error(refused: crate::limits::Refused, poll: bool) -> crate::error::OAuthError {
    match refused {
        crate::limits::Refused::Limited(retry_after)
        | crate::limits::Refused::SignInFirst(retry_after) => {
            crate::error::OAuthError::RateLimited { poll, retry_after }
        }
        crate::limits::Refused::Unavailable(e) => {
            tracing::warn!(error = %e, "limit counts unavailable");
            crate::error::OAuthError::TemporarilyUnavailable(
                "the gateway cannot reach its grant store, try again later".into(),
            )
        }
    }
}

/// Header pairs as values, checked once at start-up.
fn header_values(
    headers: Vec<(&'static str, String)>,
) -> Result<Vec<(&'static str, HeaderValue)>, String> {
    headers
        .into_iter()
        .map(|(k, v)| {
            HeaderValue::try_from(v)
                .map(|v| (k, v))
                .map_err(|e| format!("page header {k}: {e}"))
        })
        .collect()
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    /// No downstream modules. Pingora's default is a response-compression module at level 0
    /// (compressing nothing): a per-request context and header checks that change no byte.
    /// Compression, where wanted, belongs to the IdP or to a CDN in front.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx {
            route: Route::PassThrough,
            client_ip: None,
            ip_key: String::new(),
            now: Time::from_millis(0),
            relay: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        ctx.now = self.clock.now();
        ctx.client_ip = request::client_ip(session, &self.config.server.trusted_proxies);
        ctx.route = self.classify(session.req_header());
        if ctx.route == Route::PassThrough {
            return Ok(false);
        }
        ctx.ip_key = ip_key(ctx.client_ip);
        let route = ctx.route.clone();
        let reply = match self.precheck(&route, session.req_header()) {
            Some(reply) => reply,
            None => {
                if route == Route::Token {
                    // Keep a copy of what is read so Pingora can still relay it when it is
                    // not a device-code poll.
                    session.enable_retry_buffering();
                }
                let max = self.config.limits.max_body_bytes;
                match request::read_body(session, max).await? {
                    None => {
                        let e = request::body_too_large(&self.config.limits);
                        self.too_large(&route, session.req_header(), &e)
                    }
                    Some(body) => {
                        let req = Request {
                            head: session.req_header(),
                            body,
                            client_ip: ctx.client_ip,
                            ip_key: &ctx.ip_key,
                            now: ctx.now,
                        };
                        match self.respond(&route, &req).await {
                            Some(reply) => reply,
                            None => match self.token_relay(&route).await {
                                Ok(relay) => {
                                    ctx.relay = relay;
                                    return Ok(false);
                                }
                                Err(reply) => reply,
                            },
                        }
                    }
                }
            }
        };
        events::record(
            &self.metrics,
            &self.outbox,
            &reply.facts,
            &ctx.ip_key,
            ctx.now.secs(),
        );
        reply::write(session, reply).await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let up = &self.config.upstream;
        let mut peer = match &ctx.relay {
            Some(r) => HttpPeer::new(r.addr, r.tls, r.sni.clone()),
            None => HttpPeer::new(
                self.upstream_addr.current(std::time::Instant::now()),
                up.tls,
                // No SNI without TLS: and no string to copy per request.
                if up.tls {
                    up.sni.clone()
                } else {
                    String::new()
                },
            ),
        };
        peer.options.connection_timeout = Some(up.timeout);
        peer.options.total_connection_timeout = Some(up.timeout);
        peer.options.read_timeout = Some(up.timeout);
        peer.options.write_timeout = Some(up.timeout);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // What a client says about where it came from, or which host and scheme it used, is
        // not relayed: the IdP sees exactly the forwarding headers set here (a spoofed
        // `X-Forwarded-Host` would make it build its login URLs on the attacker's host).
        // One pass over the few headers a request has; removal only when one is there.
        let spoofed = upstream_request
            .headers
            .keys()
            .any(|k| SPOOFABLE.contains(&k.as_str()));
        if spoofed {
            for name in SPOOFABLE {
                upstream_request.remove_header(*name);
            }
        }
        if let Some(ip) = ctx.client_ip {
            upstream_request.insert_header("X-Forwarded-For", crate::net::header_value(ip))?;
        }
        // The gateway is the public origin: the scheme and host clients used are public_url's.
        upstream_request.insert_header("X-Forwarded-Proto", self.forwarded_proto.clone())?;
        if let Some(relay) = &ctx.relay {
            upstream_request.insert_header("X-Forwarded-Host", relay.authority.clone())?;
            upstream_request.insert_header("Host", relay.authority.clone())?;
            return Ok(());
        }
        upstream_request.insert_header("X-Forwarded-Host", self.forwarded_host.clone())?;
        if let Some((_, idp_authority)) = &self.own_origin {
            // On its own origin the gateway is not the IdP's public name: ask for the IdP's.
            upstream_request.insert_header("Host", idp_authority)?;
        }
        Ok(())
    }
}
