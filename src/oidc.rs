//! The upstream OpenID Connect client: discovery, the authorization URL, the code exchange and
//! ID token validation (with the `openidconnect` crate).
//!
//! Every back-channel request goes to `upstream.address` with the issuer's `Host`, whatever the
//! IdP's public DNS says: the gateway usually *is* the issuer's public origin, so asking that
//! origin would loop through ourselves. The HTTP client follows no redirects (no SSRF through a
//! redirect) and gives up after `upstream.timeout`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreIdToken, CoreIdTokenVerifier, CoreJsonWebKeySet, CoreJwsSigningAlgorithm,
};
use openidconnect::{
    ClientId, ClientSecret, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier,
};
use serde_json::{Map, Value};
use tokio::sync::RwLock;
use url::Url;

use crate::config::{Client, Config};
use crate::device::TokenSet;
use crate::metrics::Metrics;

/// How long discovery metadata and keys are reused before they are fetched again.
const METADATA_TTL: Duration = Duration::from_secs(300);
/// How long after a failed discovery fetch requests are answered from what is cached (or told
/// the IdP is unreachable) instead of trying again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// Largest response accepted from the IdP on the back channel.
const MAX_BODY: usize = 1024 * 1024;

/// A failure talking to the IdP.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The IdP could not be reached or did not answer in time: worth retrying.
    #[error("the identity provider is unreachable: {0}")]
    Unreachable(String),
    /// The IdP answered, but not with what the protocol requires.
    #[error("the identity provider sent an invalid response: {0}")]
    Invalid(String),
    /// The IdP refused (an OAuth error response).
    #[error("the identity provider refused: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        error: String,
        description: Option<String>,
    },
}

impl UpstreamError {
    /// True when trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable(_))
    }
}

/// The parts of the IdP's discovery document the gateway uses.
#[derive(Debug, Clone)]
pub struct Discovery {
    pub authorization_endpoint: Url,
    pub token_endpoint: Url,
    /// The token endpoint's origin, made once (every request's route compares it).
    pub token_origin: url::Origin,
    pub jwks_uri: Url,
    /// Where claims the ID token lacks can be read with the access token (OIDC Core §5.3).
    pub userinfo_endpoint: Option<Url>,
    /// Whether the IdP lists `client_secret_basic` (else secrets go in the form body).
    pub basic_auth: bool,
    fetched: Instant,
}

/// A raw response relayed from the IdP.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
}

/// Back-channel client for one upstream IdP.
pub struct Oidc {
    http: reqwest::Client,
    config: Arc<Config>,
    /// Every back-channel call is timed here, by operation (`discovery`, `token`, `jwks`).
    metrics: Arc<Metrics>,
    /// The loaded discovery. A plain lock, never held across an await: every request reads it
    /// (to know the token path) and must not queue behind an async lock.
    discovery: std::sync::RwLock<Option<Arc<Discovery>>>,
    /// One discovery fetch at a time.
    fetching: tokio::sync::Mutex<()>,
    /// A background load ([`Oidc::warm`]) is under way.
    warming: std::sync::atomic::AtomicBool,
    /// When the last discovery fetch failed, if it did.
    last_failure: std::sync::Mutex<Option<Instant>>,
    jwks: RwLock<Option<(Arc<CoreJsonWebKeySet>, Instant)>>,
    /// The origin of the loaded discovery's authorization endpoint, readable without waiting:
    /// the verification page lets its form lead there (CSP `form-action`).
    login_origin: std::sync::RwLock<Option<String>>,
}

/// The verified result of a login.
#[derive(Debug)]
pub struct LoginResult {
    pub tokens: TokenSet,
    /// `sub` of the ID token.
    pub subject: String,
    /// Every claim of the validated ID token.
    pub claims: Map<String, Value>,
}

impl Oidc {
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> Result<Self, UpstreamError> {
        let up = &config.upstream;
        let mut builder = reqwest::Client::builder();
        if let Some((_, pem)) = &up.ca_file {
            // A private CA: trust exactly it, not the public roots.
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| UpstreamError::Invalid(format!("upstream.ca_file: {e}")))?;
            builder = builder.tls_built_in_root_certs(false);
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(up.timeout)
            .timeout(up.timeout)
            // The issuer's host name resolves to the upstream address (keeps TLS SNI right).
            .resolve(&up.sni, up.addr)
            .user_agent(concat!("devicegate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| UpstreamError::Invalid(format!("building the HTTP client: {e}")))?;
        Ok(Self {
            http,
            config,
            metrics,
            discovery: std::sync::RwLock::new(None),
            fetching: tokio::sync::Mutex::new(()),
            warming: std::sync::atomic::AtomicBool::new(false),
            last_failure: std::sync::Mutex::new(None),
            jwks: RwLock::new(None),
            login_origin: std::sync::RwLock::new(None),
        })
    }

    /// Points a URL on the issuer's (or the gateway's) origin at `upstream.address`, keeping
    /// the original authority for the `Host` header. URLs on other origins are left alone.
    fn route(&self, url: &Url) -> (Url, Option<String>) {
        let up = &self.config.upstream;
        let same_origin = |o: &Url| o.origin() == url.origin();
        if !same_origin(&up.issuer) && !same_origin(&self.config.public_url) {
            return (url.clone(), None);
        }
        let authority = crate::net::authority(url);
        let mut target = url.clone();
        let scheme = if up.tls { "https" } else { "http" };
        let is_ip = matches!(url.host(), Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)));
        // Name hosts stay (SNI, and `resolve` maps them to the address); IP hosts are replaced.
        let _ = target.set_scheme(scheme);
        if !up.tls || is_ip || url.host_str() != Some(up.sni.as_str()) {
            let _ = target.set_ip_host(up.addr.ip());
        }
        let _ = target.set_port(Some(up.addr.port()));
        (target, Some(authority))
    }

    /// Sends one back-channel request and times it as `operation`.
    async fn send(
        &self,
        operation: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<RawResponse, UpstreamError> {
        let started = Instant::now();
        let result = self.fetch(req).await;
        let ok = result.as_ref().is_ok_and(|r| r.status < 500);
        self.metrics
            .upstream_seconds
            .observe(operation, ok, started.elapsed());
        result
    }

    async fn fetch(&self, req: reqwest::RequestBuilder) -> Result<RawResponse, UpstreamError> {
        let resp = req
            .send()
            .await
            .map_err(|e| UpstreamError::Unreachable(error_chain(&e)))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
            return Err(UpstreamError::Invalid("response too large".into()));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| UpstreamError::Unreachable(error_chain(&e)))?;
        if body.len() > MAX_BODY {
            return Err(UpstreamError::Invalid("response too large".into()));
        }
        Ok(RawResponse {
            status,
            headers,
            body,
        })
    }

    /// GETs a URL on the back channel, timed as `operation`.
    pub async fn get(
        &self,
        operation: &'static str,
        url: &Url,
    ) -> Result<RawResponse, UpstreamError> {
        let (target, host) = self.route(url);
        let mut req = self.http.get(target.as_str());
        if let Some(h) = host {
            req = req.header(http::header::HOST, h);
        }
        self.send(operation, req).await
    }

    /// The issuer's discovery document URL (OpenID Connect Discovery §4).
    pub fn discovery_url(&self) -> Result<Url, UpstreamError> {
        if let Some(url) = &self.config.upstream.discovery_url {
            return Ok(url.clone());
        }
        let issuer = self.config.upstream.issuer.as_str().trim_end_matches('/');
        Url::parse(&format!("{issuer}/.well-known/openid-configuration"))
            .map_err(|e| UpstreamError::Invalid(e.to_string()))
    }

    /// The cached discovery, fetched again when older than five minutes or never loaded.
    /// Concurrent callers share one fetch.
    pub async fn discovery(&self) -> Result<Arc<Discovery>, UpstreamError> {
        if let Some(d) = self.fresh_discovery() {
            return Ok(d);
        }
        let _one_fetch = self.fetching.lock().await;
        // Another caller may have fetched it while this one waited.
        if let Some(d) = self.fresh_discovery() {
            return Ok(d);
        }
        let fetched = async {
            let url = self.discovery_url()?;
            let resp = self.get("discovery", &url).await?;
            if resp.status != 200 {
                return Err(UpstreamError::Invalid(format!(
                    "discovery answered HTTP {}",
                    resp.status
                )));
            }
            self.learn_discovery(&resp.body).await
        }
        .await;
        let mut failed = self
            .last_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *failed = fetched.is_err().then(Instant::now);
        fetched
    }

    fn fresh_discovery(&self) -> Option<Arc<Discovery>> {
        self.cached_discovery()
            .filter(|d| d.fetched.elapsed() < METADATA_TTL)
    }

    /// [`Self::discovery`], but failing at once while the last fetch failed less than five
    /// seconds ago, so a dead IdP does not hold every device-code poll for the timeout.
    pub async fn discovery_if_due(&self) -> Result<Arc<Discovery>, UpstreamError> {
        let recently_failed = self
            .last_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|t| t.elapsed() < RETRY_AFTER_FAILURE);
        if recently_failed {
            if let Some(d) = self.cached_discovery() {
                return Ok(d);
            }
            return Err(UpstreamError::Unreachable(
                "discovery failed moments ago".into(),
            ));
        }
        self.discovery().await
    }

    /// Starts loading discovery in the background unless that is under way: requests that need
    /// only what is cached (routing) never wait for the IdP.
    pub fn warm(self: &Arc<Self>) {
        // While the last fetch failed moments ago there is nothing to start: the next try waits
        // for `discovery_if_due` (a task spawned per request would cost more than the request).
        let recently_failed = self
            .last_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|t| t.elapsed() < RETRY_AFTER_FAILURE);
        if recently_failed || self.warming.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let oidc = self.clone();
        tokio::spawn(async move {
            if let Err(e) = oidc.discovery_if_due().await {
                tracing::debug!(error = %e, "discovery not loaded yet");
            }
            oidc.warming
                .store(false, std::sync::atomic::Ordering::Release);
        });
    }

    /// The origin of the IdP's authorization endpoint, once discovery has loaded: where the
    /// browser goes to log in. Some IdPs (AWS Cognito) serve it from another origin than the
    /// issuer's.
    pub fn login_origin(&self) -> Option<String> {
        self.login_origin
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The discovery already loaded (possibly stale), without fetching.
    pub fn cached_discovery(&self) -> Option<Arc<Discovery>> {
        self.discovery
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Parses and caches a discovery document (also fed from documents relayed to clients).
    pub async fn learn_discovery(&self, body: &[u8]) -> Result<Arc<Discovery>, UpstreamError> {
        let doc: Map<String, Value> = serde_json::from_slice(body)
            .map_err(|e| UpstreamError::Invalid(format!("discovery is not a JSON object: {e}")))?;
        // OpenID Connect Discovery §4.3: the issuer in the document must be the one configured.
        let issuer = doc
            .get("issuer")
            .and_then(Value::as_str)
            .unwrap_or_default();
        // Exactly (§4.3): ID tokens carry this string in `iss`, and it is compared exactly.
        let want = self.config.upstream.issuer_id.as_str();
        if !self.config.upstream.is_issuer(issuer) {
            let hint = if issuer.trim_end_matches('/') == want.trim_end_matches('/') {
                " (they differ only by the trailing slash: write upstream.issuer exactly as the IdP does)"
            } else {
                ""
            };
            return Err(UpstreamError::Invalid(format!(
                "discovery names issuer '{issuer}', expected '{want}'{hint}"
            )));
        }
        // An IdP that signs ID tokens only with algorithms devicegate cannot verify would fail
        // every login: say so now (the log and /readyz), not at the first user's callback.
        if let Some(Value::Array(algs)) = doc.get("id_token_signing_alg_values_supported") {
            let names: Vec<&str> = algs.iter().filter_map(Value::as_str).collect();
            if !names.is_empty() && !names.iter().any(|a| VERIFIABLE_ALGS.contains(a)) {
                return Err(UpstreamError::Invalid(format!(
                    "the IdP signs ID tokens with {}; devicegate verifies {}",
                    names.join(", "),
                    VERIFIABLE_ALGS.join(", ")
                )));
            }
        }
        let endpoint = |name: &str| -> Result<Url, UpstreamError> {
            let s = doc
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| UpstreamError::Invalid(format!("discovery lacks {name}")))?;
            Url::parse(s).map_err(|e| UpstreamError::Invalid(format!("{name}: {e}")))
        };
        let basic_auth = doc
            .get("token_endpoint_auth_methods_supported")
            .and_then(Value::as_array)
            .is_none_or(|m| m.iter().any(|v| v == "client_secret_basic"));
        let token_endpoint = endpoint("token_endpoint")?;
        let d = Arc::new(Discovery {
            authorization_endpoint: endpoint("authorization_endpoint")?,
            token_origin: token_endpoint.origin(),
            token_endpoint,
            jwks_uri: endpoint("jwks_uri")?,
            userinfo_endpoint: endpoint("userinfo_endpoint").ok(),
            basic_auth,
            fetched: Instant::now(),
        });
        *self
            .login_origin
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(d.authorization_endpoint.origin().ascii_serialization());
        *self
            .discovery
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(d.clone());
        Ok(d)
    }

    /// The URL the browser is sent to for the upstream login (authorization code flow with PKCE
    /// S256, `state` and `nonce`). `offline_access` needs `prompt=consent` (OIDC Core §11).
    pub fn authorize_url(
        &self,
        disc: &Discovery,
        client: &Client,
        scopes: &[String],
        state: &str,
        nonce: &str,
        pkce_verifier: &str,
    ) -> Url {
        let challenge = PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(
            pkce_verifier.to_string(),
        ));
        let policy = &client.policy;
        let mut scope: Vec<&str> = vec!["openid"];
        // Without refresh tokens (RFC 10027 short-lived tokens), never ask for one.
        scope.extend(
            scopes
                .iter()
                .map(String::as_str)
                .filter(|s| *s != "openid" && (policy.refresh_tokens || *s != "offline_access")),
        );
        let mut url = disc.authorization_endpoint.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &client.client_id)
                .append_pair("redirect_uri", &self.redirect_uri())
                .append_pair("scope", &scope.join(" "))
                .append_pair("state", state)
                .append_pair("nonce", nonce)
                .append_pair("code_challenge", challenge.as_str())
                .append_pair("code_challenge_method", "S256");
            if scope.contains(&"offline_access") {
                q.append_pair("prompt", "consent");
            }
            if !policy.acr_values.is_empty() {
                q.append_pair("acr_values", &policy.acr_values.join(" "));
            }
            if let Some(max_age) = policy.max_age {
                q.append_pair("max_age", &max_age.to_string());
            }
        }
        url
    }

    /// Where the IdP sends the browser back.
    pub fn redirect_uri(&self) -> String {
        self.config.public(&self.config.device.callback_path)
    }

    /// Exchanges an authorization code at the IdP's token endpoint and validates the ID token
    /// (signature from the JWKS, issuer, audience, expiry, nonce).
    pub async fn exchange_code(
        &self,
        client: &Client,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
        now: u64,
    ) -> Result<LoginResult, UpstreamError> {
        let disc = self.discovery().await?;
        let redirect = self.redirect_uri();
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect.as_str()),
            ("code_verifier", pkce_verifier),
        ];
        let (target, host) = self.route(&disc.token_endpoint);
        let mut req = self.http.post(target.as_str());
        if let Some(h) = host {
            req = req.header(http::header::HOST, h);
        }
        match &client.client_secret {
            // RFC 6749 §2.3.1: Basic with form-urlencoded id and secret.
            Some(secret) if disc.basic_auth => {
                let enc =
                    |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                req = req.basic_auth(enc(&client.client_id), Some(enc(secret.expose())));
            }
            Some(secret) => {
                form.push(("client_id", &client.client_id));
                form.push(("client_secret", secret.expose()));
            }
            None => form.push(("client_id", &client.client_id)),
        }
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let resp = self
            .send(
                "token",
                req.header(
                    http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .header(http::header::ACCEPT, "application/json")
                .body(body),
            )
            .await?;
        let json: Map<String, Value> = serde_json::from_slice(&resp.body).map_err(|_| {
            if resp.status >= 500 {
                UpstreamError::Unreachable(format!("token endpoint answered HTTP {}", resp.status))
            } else {
                UpstreamError::Invalid(format!(
                    "token endpoint answered HTTP {} without JSON",
                    resp.status
                ))
            }
        })?;
        if resp.status != 200 {
            if resp.status >= 500 {
                return Err(UpstreamError::Unreachable(format!(
                    "token endpoint answered HTTP {}",
                    resp.status
                )));
            }
            return Err(UpstreamError::Refused {
                error: json
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("invalid_response")
                    .to_string(),
                description: json
                    .get("error_description")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            });
        }
        if json.get("access_token").and_then(Value::as_str).is_none() {
            return Err(UpstreamError::Invalid(
                "token response lacks access_token".into(),
            ));
        }
        let id_token = json
            .get("id_token")
            .and_then(Value::as_str)
            .ok_or_else(|| UpstreamError::Invalid("token response lacks id_token".into()))?;
        let (subject, claims) = self.verify_id_token(client, id_token, nonce, now).await?;
        Ok(LoginResult {
            tokens: json,
            subject,
            claims,
        })
    }

    /// The user's claims from the userinfo endpoint (OIDC Core §5.3), for claims a policy
    /// requires that the ID token lacks. Its `sub` must be the ID token's (§5.3.2).
    pub async fn userinfo(
        &self,
        access_token: &str,
        subject: &str,
    ) -> Result<Map<String, Value>, UpstreamError> {
        let disc = self.discovery().await?;
        let url = disc
            .userinfo_endpoint
            .clone()
            .ok_or_else(|| UpstreamError::Invalid("discovery names no userinfo_endpoint".into()))?;
        let (target, host) = self.route(&url);
        let mut req = self.http.get(target.as_str()).bearer_auth(access_token);
        if let Some(h) = host {
            req = req.header(http::header::HOST, h);
        }
        let resp = self
            .send(
                "userinfo",
                req.header(http::header::ACCEPT, "application/json"),
            )
            .await?;
        if resp.status >= 500 {
            return Err(UpstreamError::Unreachable(format!(
                "userinfo answered HTTP {}",
                resp.status
            )));
        }
        if resp.status != 200 {
            return Err(UpstreamError::Invalid(format!(
                "userinfo answered HTTP {}",
                resp.status
            )));
        }
        // A signed (JWT) userinfo response is not read: its claims count as absent.
        let claims: Map<String, Value> = serde_json::from_slice(&resp.body)
            .map_err(|_| UpstreamError::Invalid("userinfo is not a JSON object".into()))?;
        if claims.get("sub").and_then(Value::as_str) != Some(subject) {
            return Err(UpstreamError::Invalid(
                "userinfo names another subject than the ID token".into(),
            ));
        }
        Ok(claims)
    }

    async fn keys(&self, force: bool) -> Result<Arc<CoreJsonWebKeySet>, UpstreamError> {
        if !force {
            if let Some((k, at)) = self.jwks.read().await.as_ref() {
                if at.elapsed() < METADATA_TTL {
                    return Ok(k.clone());
                }
            }
        }
        let disc = self.discovery().await?;
        let resp = self.get("jwks", &disc.jwks_uri).await?;
        if resp.status != 200 {
            return Err(UpstreamError::Invalid(format!(
                "JWKS answered HTTP {}",
                resp.status
            )));
        }
        let set: CoreJsonWebKeySet = serde_json::from_slice(&resp.body)
            .map_err(|e| UpstreamError::Invalid(format!("JWKS is not a key set: {e}")))?;
        // Discovery may list an algorithm devicegate verifies while every key is for another
        // (Glewlwyd with a P-521 key lists ES256, ES384 and ES512): every login would fail.
        if let Err(e) = verifiable_signing_key(&resp.body) {
            tracing::warn!(error = %e, "the IdP's keys cannot verify its ID tokens");
            return Err(e);
        }
        let set = Arc::new(set);
        *self.jwks.write().await = Some((set.clone(), Instant::now()));
        Ok(set)
    }

    /// The IdP's signing keys, fetched when not cached: an error if none is one devicegate can
    /// verify ID tokens with (`/readyz` says so before the first login fails).
    pub async fn check_keys(&self) -> Result<(), UpstreamError> {
        self.keys(false).await.map(|_| ())
    }

    /// Validates an ID token and returns its subject. Keys are fetched again once when the
    /// signature does not verify (the IdP may have rotated them).
    pub async fn verify_id_token(
        &self,
        client: &Client,
        id_token: &str,
        nonce: &str,
        now: u64,
    ) -> Result<(String, Map<String, Value>), UpstreamError> {
        let issuer = self.config.upstream.issuer_id.as_str();
        let mut result = Err(IdTokenError::Malformed(String::new()));
        for force in [false, true] {
            let keys = self.keys(force).await?;
            result = check_id_token(client, issuer, &keys, id_token, nonce, now);
            // Only a signature problem can be cured by fresh keys.
            if !matches!(result, Err(IdTokenError::Signature(_))) {
                break;
            }
        }
        result.map_err(|e| UpstreamError::Invalid(format!("ID token rejected: {e}")))
    }
}

/// Why an ID token was rejected.
#[derive(Debug, thiserror::Error)]
pub enum IdTokenError {
    #[error("not a valid JWT: {0}")]
    Malformed(String),
    #[error("signature: {0}")]
    Signature(String),
    #[error("{0}")]
    Claims(String),
}

/// Checks an ID token (OIDC Core §3.1.3.7): signature by a key of `keys` with an asymmetric
/// algorithm, `iss`, `aud` (and `azp`), `exp` against `now`, and `nonce`. Returns `sub` and
/// every claim of the token (read from the payload whose signature was just verified).
pub fn check_id_token(
    client: &Client,
    issuer: &str,
    keys: &CoreJsonWebKeySet,
    id_token: &str,
    nonce: &str,
    now: u64,
) -> Result<(String, Map<String, Value>), IdTokenError> {
    let token: CoreIdToken = id_token
        .parse()
        .map_err(|e: serde_json::Error| IdTokenError::Malformed(e.to_string()))?;
    let issuer =
        IssuerUrl::new(issuer.to_string()).map_err(|e| IdTokenError::Claims(e.to_string()))?;
    let client_id = ClientId::new(client.client_id.clone());
    let verifier = match &client.client_secret {
        Some(s) => CoreIdTokenVerifier::new_confidential_client(
            client_id,
            ClientSecret::new(s.expose().to_string()),
            issuer,
            keys.clone(),
        ),
        None => CoreIdTokenVerifier::new_public_client(client_id, issuer, keys.clone()),
    }
    // Keep in step with VERIFIABLE_ALGS.
    .set_allowed_algs([
        CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
        CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
        CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
        CoreJwsSigningAlgorithm::RsaSsaPssSha256,
        CoreJwsSigningAlgorithm::RsaSsaPssSha384,
        CoreJwsSigningAlgorithm::RsaSsaPssSha512,
        CoreJwsSigningAlgorithm::EcdsaP256Sha256,
        CoreJwsSigningAlgorithm::EcdsaP384Sha384,
        CoreJwsSigningAlgorithm::EdDsa,
    ])
    .set_time_fn(move || chrono::DateTime::from_timestamp(now as i64, 0).unwrap_or_default());
    match token.claims(&verifier, &Nonce::new(nonce.to_string())) {
        Ok(claims) => {
            let subject = claims.subject().to_string();
            Ok((subject, payload(id_token)?))
        }
        Err(openidconnect::ClaimsVerificationError::SignatureVerification(e)) => {
            Err(IdTokenError::Signature(e.to_string()))
        }
        Err(e) => Err(IdTokenError::Claims(e.to_string())),
    }
}

/// The claims of a JWS compact token's payload.
fn payload(jwt: &str) -> Result<Map<String, Value>, IdTokenError> {
    use base64::Engine as _;
    let part = jwt
        .split('.')
        .nth(1)
        .ok_or_else(|| IdTokenError::Malformed("no payload".into()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|e| IdTokenError::Malformed(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| IdTokenError::Malformed(e.to_string()))
}

/// The ID token signature algorithms devicegate verifies (those `openidconnect` implements;
/// ES512 and Ed448 it cannot). HMAC (HS*) is not accepted: it would need the client secret
/// shared as a verification key.
pub const VERIFIABLE_ALGS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// Ok when the JWKS `body` holds a signing key of an algorithm in [`VERIFIABLE_ALGS`] (or no
/// key at all, which fails later with its own message). A key's algorithm is its `alg`, else
/// what its type and curve imply; keys marked `"use": "enc"` are skipped.
fn verifiable_signing_key(body: &[u8]) -> Result<(), UpstreamError> {
    let set: Value = serde_json::from_slice(body).unwrap_or_default();
    let keys = set["keys"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut seen = Vec::new();
    for key in keys.iter().filter(|k| k["use"] != "enc") {
        // Ed448 first: its `alg` says EdDSA, but only Ed25519 is verifiable.
        let alg = match (
            key["crv"].as_str(),
            key["alg"].as_str(),
            key["kty"].as_str(),
        ) {
            (Some("Ed448"), _, _) => "EdDSA (Ed448)",
            (_, Some(alg), _) => alg,
            (_, None, Some("RSA")) => "RS256",
            (Some("P-256"), None, Some("EC")) => "ES256",
            (Some("P-384"), None, Some("EC")) => "ES384",
            (Some("P-521"), None, Some("EC")) => "ES512",
            (Some("Ed25519"), None, Some("OKP")) => "EdDSA",
            (_, None, kty) => kty.unwrap_or("a key of no type"),
        };
        if VERIFIABLE_ALGS.contains(&alg) {
            return Ok(());
        }
        if !seen.contains(&alg) {
            seen.push(alg);
        }
    }
    if seen.is_empty() {
        return Ok(());
    }
    Err(UpstreamError::Invalid(format!(
        "the IdP's keys sign ID tokens with {}; devicegate verifies {}",
        seen.join(", "),
        VERIFIABLE_ALGS.join(", ")
    )))
}

/// An error with its sources, for messages that say what really failed.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use openidconnect::core::{CoreIdTokenClaims, CoreRsaPrivateSigningKey};
    use openidconnect::{
        Audience, EmptyAdditionalClaims, JsonWebKeyId, PrivateSigningKey, StandardClaims,
        SubjectIdentifier,
    };
    use rsa::pkcs1::EncodeRsaPrivateKey;

    const ISSUER: &str = "https://id.example.test";
    const NOW: u64 = 1_800_000_000;

    fn signing_key(kid: &str) -> CoreRsaPrivateSigningKey {
        let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
        let pem = key.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).unwrap();
        CoreRsaPrivateSigningKey::from_pem(&pem, Some(JsonWebKeyId::new(kid.into()))).unwrap()
    }

    #[derive(Clone, Copy)]
    struct Token<'a> {
        issuer: &'a str,
        aud: &'a str,
        nonce: &'a str,
        exp: u64,
    }

    fn sign(key: &CoreRsaPrivateSigningKey, t: Token<'_>) -> String {
        let claims = CoreIdTokenClaims::new(
            IssuerUrl::new(t.issuer.into()).unwrap(),
            vec![Audience::new(t.aud.into())],
            chrono::DateTime::from_timestamp(t.exp as i64, 0).unwrap(),
            chrono::DateTime::from_timestamp(NOW as i64 - 10, 0).unwrap(),
            StandardClaims::new(SubjectIdentifier::new("alice".into())),
            EmptyAdditionalClaims {},
        )
        .set_nonce(Some(Nonce::new(t.nonce.into())));
        let token = CoreIdToken::new(
            claims,
            key,
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
            None,
            None,
        )
        .unwrap();
        token.to_string()
    }

    fn client() -> Client {
        Client {
            client_id: "tv".into(),
            name: "TV".into(),
            client_secret: None,
            allowed_scopes: vec!["openid".into()],
            enabled: true,
            description: None,
            logo_url: None,
            verification_url: false,
            policy: Default::default(),
        }
    }

    #[test]
    fn id_token_checks() {
        let key = signing_key("k1");
        let other = signing_key("k1");
        let keys = CoreJsonWebKeySet::new(vec![key.as_verification_key()]);
        let good = Token {
            issuer: ISSUER,
            aud: "tv",
            nonce: "n1",
            exp: NOW + 300,
        };
        let check = |jwt: &str, nonce: &str, now: u64| {
            check_id_token(&client(), ISSUER, &keys, jwt, nonce, now)
        };

        let (sub, claims) = check(&sign(&key, good), "n1", NOW).unwrap();
        assert_eq!(sub, "alice");
        // The token's own claims, for policies (require_claims, acr_values, max_age).
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["nonce"], "n1");
        assert_eq!(claims["exp"], NOW + 300);

        let bad = [
            ("wrong nonce", sign(&key, Token { ..good }), "n2", NOW),
            ("expired", sign(&key, Token { ..good }), "n1", NOW + 301),
            (
                "other issuer",
                sign(
                    &key,
                    Token {
                        issuer: "https://evil.test",
                        ..good
                    },
                ),
                "n1",
                NOW,
            ),
            (
                "other audience",
                sign(
                    &key,
                    Token {
                        aud: "someone-else",
                        ..good
                    },
                ),
                "n1",
                NOW,
            ),
            (
                "signed by another key",
                sign(&other, Token { ..good }),
                "n1",
                NOW,
            ),
            ("not a JWT", "abc.def".to_string(), "n1", NOW),
        ];
        for (name, jwt, nonce, now) in bad {
            assert!(check(&jwt, nonce, now).is_err(), "{name} was accepted");
        }
        assert!(matches!(
            check(&sign(&other, Token { ..good }), "n1", NOW),
            Err(IdTokenError::Signature(_))
        ));
        // A token with its payload swapped keeps no valid signature.
        let jwt = sign(&key, good);
        let evil = sign(&key, Token { aud: "x", ..good });
        let parts: Vec<&str> = jwt.split('.').collect();
        let evil_parts: Vec<&str> = evil.split('.').collect();
        let spliced = format!("{}.{}.{}", parts[0], evil_parts[1], parts[2]);
        assert!(check(&spliced, "n1", NOW).is_err());
    }
}

#[cfg(test)]
mod discovery_tests {
    use super::*;

    fn oidc(issuer: &str) -> Oidc {
        let yaml = format!(
            "listen: 127.0.0.1:8080\npublic_url: {issuer}\nupstream:\n  address: 127.0.0.1:3000\n  issuer: {issuer}\nclients:\n  - client_id: tv\n"
        );
        let config = Config::from_yaml(&yaml, &|_| None).unwrap();
        Oidc::new(Arc::new(config), Arc::new(Metrics::new().unwrap())).unwrap()
    }

    fn doc(issuer: &str, algs: &str) -> Vec<u8> {
        format!(
            r#"{{"issuer":"{issuer}","authorization_endpoint":"{issuer}/auth","token_endpoint":"{issuer}/token","jwks_uri":"{issuer}/certs"{algs}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn a_key_set_needs_one_key_devicegate_can_verify_with() {
        let check =
            |keys: &str| verifiable_signing_key(format!(r#"{{"keys":[{keys}]}}"#).as_bytes());
        for ok in [
            r#"{"kty":"RSA","n":"x","e":"AQAB"}"#,
            r#"{"kty":"EC","crv":"P-521","alg":"ES512"},{"kty":"EC","crv":"P-256"}"#,
            r#"{"kty":"OKP","crv":"Ed25519","alg":"EdDSA"}"#,
            r#"{"kty":"RSA","use":"enc","alg":"RSA-OAEP"},{"kty":"EC","crv":"P-384"}"#,
            "",
        ] {
            assert!(check(ok).is_ok(), "{ok}");
        }
        for (bad, named) in [
            (r#"{"kty":"EC","crv":"P-521","alg":"ES512"}"#, "with ES512;"),
            (r#"{"kty":"EC","crv":"P-521"}"#, "with ES512;"),
            (
                r#"{"kty":"OKP","crv":"Ed448","alg":"EdDSA"},{"kty":"oct","alg":"HS256"}"#,
                "with EdDSA (Ed448), HS256;",
            ),
            (
                r#"{"kty":"RSA","use":"enc"},{"kty":"EC","crv":"P-521"}"#,
                "with ES512;",
            ),
        ] {
            let e = check(bad).unwrap_err().to_string();
            assert!(
                e.contains(named) && e.contains("devicegate verifies RS256"),
                "{bad}: {e}"
            );
        }
    }

    #[tokio::test]
    async fn discovery_is_checked_exactly_and_for_verifiable_algorithms() {
        let o = oidc("http://localhost:8080/realms/demo");
        let ok = o
            .learn_discovery(&doc("http://localhost:8080/realms/demo", ""))
            .await
            .unwrap();
        assert_eq!(ok.token_endpoint.path(), "/realms/demo/token");
        // A trailing slash is another issuer: every ID token would fail, so discovery does.
        let e = o
            .learn_discovery(&doc("http://localhost:8080/realms/demo/", ""))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("trailing slash"), "{e}");
        for (algs, ok) in [
            (
                r#","id_token_signing_alg_values_supported":["ES512"]"#,
                false,
            ),
            (
                r#","id_token_signing_alg_values_supported":["HS256","Ed25519"]"#,
                false,
            ),
            (
                r#","id_token_signing_alg_values_supported":["ES512","ES256"]"#,
                true,
            ),
            (
                r#","id_token_signing_alg_values_supported":["EdDSA"]"#,
                true,
            ),
            (r#","id_token_signing_alg_values_supported":[]"#, true),
        ] {
            let r = o
                .learn_discovery(&doc("http://localhost:8080/realms/demo", algs))
                .await;
            assert_eq!(
                r.is_ok(),
                ok,
                "{algs}: {:?}",
                r.err().map(|e| e.to_string())
            );
            if let Err(e) = r {
                assert!(e.to_string().contains("devicegate verifies RS256"), "{e}");
            }
        }
    }
}
