//! The validated configuration the server runs on. Every value here has been checked by
//! [`super::validate`]; `Limits` and `Log` are read as written, so they derive `Deserialize`
//! themselves.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::ui::Ui;

/// Number of possible user codes: 8 letters from a 20-letter alphabet (RFC 8628 §6.1).
pub const USER_CODE_SPACE: f64 = 25_600_000_000.0;

/// Abuse limits (`limits:`). Counted in the grant store (with Redis, for the whole
/// deployment); 0 turns a rate limit off (the user-code failure limits cannot be turned off).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wrong user codes one client address (IPv6: its /64) may enter per window (§5.1).
    pub code_failures_per_ip: u32,
    pub code_failures_window_seconds: u64,
    /// Wrong user codes everyone together may enter per minute: this bounds brute force.
    pub code_failures_global_per_minute: u32,
    pub device_requests_per_ip_per_minute: u32,
    /// Device authorizations per client a minute. For a public client, whom anyone can name,
    /// the budget is per client *and network* (IPv4 /24, IPv6 /64), so strangers cannot spend
    /// a legitimate device's share.
    pub device_requests_per_client_per_minute: u32,
    /// Grants one network (IPv4 /24, IPv6 /64) may open per grant lifetime (`expires_in`):
    /// its share of `store.max_pending`, so a few networks cannot fill the store for everyone.
    pub pending_per_network: u32,
    pub polls_per_ip_per_minute: u32,
    pub polls_per_client_per_minute: u32,
    /// Largest request body on the endpoints devicegate owns (413 beyond).
    pub max_body_bytes: usize,
    /// Longest query string on the endpoints devicegate owns (414 beyond).
    pub max_query_bytes: usize,
    /// Largest total of header names and values on the endpoints devicegate owns (431 beyond).
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            code_failures_per_ip: 10,
            code_failures_window_seconds: 900,
            code_failures_global_per_minute: 10,
            device_requests_per_ip_per_minute: 30,
            device_requests_per_client_per_minute: 600,
            pending_per_network: 16,
            polls_per_ip_per_minute: 1200,
            polls_per_client_per_minute: 60_000,
            max_body_bytes: 64 * 1024,
            max_query_bytes: 4096,
            max_header_bytes: 16 * 1024,
        }
    }
}

/// Logging (`log:`). `RUST_LOG`, when set, overrides `level`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// A `tracing` filter: `info`, `debug`, `devicegate=debug,pingora=warn`, ...
    pub level: String,
    /// `text` for people, `json` for log pipelines (one object per line).
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// A secret string (client secret, password): never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where and how to reach the IdP.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The `address` as written (`host:port`).
    pub address: String,
    /// `address` resolved at start-up (the gateway resolves a host name again once a minute).
    pub addr: SocketAddr,
    /// The IdP's issuer as a URL, for building URLs: a trailing slash is removed from its path
    /// (`https://id.example/realms/x`), though an issuer without a path still prints with the
    /// `/` every parsed origin has (`https://id.example/`). Compare issuers with
    /// [`Upstream::is_issuer`], never with this.
    pub issuer: Url,
    /// The issuer identifier exactly as configured: ID tokens' `iss` must equal it
    /// (OpenID Connect Core §3.1.3.7), and some IdPs' ends in `/` (Auth0).
    pub issuer_id: String,
    pub tls: bool,
    /// Host of the issuer: the TLS SNI, and the `Host` of back-channel requests.
    pub sni: String,
    pub timeout: Duration,
    /// Path of the IdP's token endpoint when configured; otherwise learned from discovery.
    pub token_path: Option<String>,
    /// CA file for a TLS upstream (pass-through and back channel), and its PEM content.
    pub ca_file: Option<(String, Vec<u8>)>,
    /// Where the discovery document is, when not at the issuer's well-known path (Azure AD
    /// B2C serves it under the user flow's path, while its issuer names the tenant's id).
    pub discovery_url: Option<Url>,
}

impl Upstream {
    /// Whether `iss` names this IdP: exactly the configured identifier, as OpenID Connect
    /// Discovery §4.3, Core §3.1.3.7 and RFC 9207 §2.4 compare it (no trailing-slash leniency:
    /// `https://id.example` and `https://id.example/` are two issuers).
    pub fn is_issuer(&self, iss: &str) -> bool {
        iss == self.issuer_id
    }
}

/// The public TLS listener (rustls).
#[derive(Debug, Clone)]
pub struct ListenTls {
    pub listen: SocketAddr,
    /// PEM certificate chain and private key files, read by the server at start-up.
    pub cert_file: String,
    pub key_file: String,
}

/// Device-flow settings.
#[derive(Debug, Clone)]
pub struct Device {
    pub authorization_path: String,
    pub extra_authorization_paths: Vec<String>,
    pub verification_path: String,
    pub callback_path: String,
    pub expires_in: u64,
    pub interval: u64,
}

/// Grant storage backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// The embedded moka cache: one gateway instance.
    Memory,
    /// A Redis server shared by every gateway instance.
    Redis(Redis),
}

/// How the gateway finds its Redis primaries (`store.redis.mode`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisMode {
    /// One server, at `url`.
    Standalone,
    /// The primary that these sentinels name `master_name`, followed across failovers.
    Sentinel {
        master_name: String,
        sentinels: Vec<(String, u16)>,
        /// Credentials of the sentinels themselves (often none, or not the data nodes' ones).
        username: Option<String>,
        password: Option<Secret>,
    },
    /// A Redis or Valkey Cluster, found from `url`'s node and these further seed nodes.
    Cluster { nodes: Vec<(String, u16)> },
}

/// Where the shared Redis store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redis {
    pub mode: RedisMode,
    /// `redis://`, `rediss://` (TLS) or `unix://` URL; may hold a password, so it is a secret.
    /// With Sentinel its host is the master name; with Cluster it is one seed node. Its scheme,
    /// user name, password and database apply to every data node.
    pub url: Secret,
    /// Prepended to every key, so several deployments can share one Redis.
    pub key_prefix: String,
    /// Multiplexed connections opened to Redis.
    pub pool_size: usize,
    /// Bound on every store operation, connecting included: past it the store is unavailable.
    pub command_timeout: Duration,
    /// PEM certificates to trust for `rediss://` instead of the system and Mozilla roots.
    pub ca_pem: Option<Vec<u8>>,
}

impl Backend {
    /// One line for `--check`: which store, and how it is reached (no secrets).
    pub fn describe(&self) -> String {
        let Backend::Redis(r) = self else {
            return "memory (this process only)".into();
        };
        let tls = if r.url.expose().starts_with("rediss://") {
            ", TLS"
        } else {
            ""
        };
        match &r.mode {
            RedisMode::Standalone => format!("redis standalone{tls}"),
            RedisMode::Sentinel {
                master_name,
                sentinels,
                ..
            } => format!(
                "redis sentinel{tls}: primary '{master_name}' as named by {} sentinel(s) ({})",
                sentinels.len(),
                join_nodes(sentinels)
            ),
            RedisMode::Cluster { nodes } => format!(
                "redis cluster{tls}: seed nodes {}{}",
                url_node(r.url.expose()).map_or(String::new(), |n| format!("{n} ")),
                join_nodes(nodes)
            ),
        }
    }
}

fn join_nodes(nodes: &[(String, u16)]) -> String {
    nodes
        .iter()
        .map(|(h, p)| format!("{h}:{p}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn url_node(url: &str) -> Option<String> {
    let u = Url::parse(url).ok()?;
    Some(format!("{}:{}", u.host_str()?, u.port().unwrap_or(6379)))
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub backend: Backend,
    pub max_pending: u64,
}

/// A device client, registered at the IdP with the same `client_id`.
#[derive(Debug, Clone)]
pub struct Client {
    pub client_id: String,
    /// Display name on the consent page.
    pub name: String,
    /// Used to authenticate the upstream code exchange.
    pub client_secret: Option<Secret>,
    pub allowed_scopes: Vec<String>,
    pub enabled: bool,
    pub description: Option<String>,
    pub logo_url: Option<String>,
    /// Also send `verification_url` (Google's name) in device authorization responses.
    pub verification_url: bool,
    /// The phishing defences of this client: its own keys over `policy:`.
    pub policy: super::Policy,
}

/// Process settings handed to Pingora.
#[derive(Debug, Clone)]
pub struct Server {
    pub threads: usize,
    pub grace_period_seconds: u64,
    pub graceful_shutdown_timeout_seconds: u64,
    /// Unix socket through which a running gateway hands its listeners to one started with
    /// `--upgrade` (zero-downtime upgrade, on SIGQUIT).
    pub upgrade_sock: String,
    /// Peers whose `X-Forwarded-For` (or `Forwarded`) names the client: every limit, audit
    /// event and page then uses that address. Empty: every peer is its own client.
    pub trusted_proxies: Vec<crate::net::Cidr>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub listen_tls: Option<ListenTls>,
    /// The origin devices and browsers use. As a parsed URL it prints with a trailing `/`
    /// (`https://id.example/`): join paths to it with [`Config::public`].
    pub public_url: Url,
    pub upstream: Upstream,
    pub device: Device,
    pub store: StoreConfig,
    pub limits: Limits,
    /// Where `/healthz`, `/readyz` and `/metrics` listen, if anywhere.
    pub admin_listen: Option<SocketAddr>,
    /// The admin API's bearer token (`admin.token`); without it `/grants` and `/clients`
    /// answer 401 to everyone.
    pub admin_token: Option<Secret>,
    /// Where security events are sent (`events:`).
    pub events: super::Events,
    pub log: Log,
    pub clients: BTreeMap<String, Client>,
    /// The deployment-wide policy defaults (`policy:`); each client's effective policy is
    /// [`Client::policy`].
    pub policy: super::Policy,
    pub server: Server,
    pub ui: Ui,
}

impl Config {
    /// Expected number of user codes an attacker guesses right per day when every instance's
    /// global failure budget is spent on guessing and `max_pending` grants are live:
    /// attempts/day × pending grants ÷ 20^8 (RFC 8628 §5.1), for one instance.
    pub fn brute_force_bound(&self) -> f64 {
        let attempts_per_day = f64::from(self.limits.code_failures_global_per_minute) * 1440.0;
        attempts_per_day * self.store.max_pending as f64 / USER_CODE_SPACE
    }

    /// Whether the gateway has its own origin instead of sitting at the IdP's issuer origin
    /// (README: "The gateway on its own origin").
    pub fn own_origin(&self) -> bool {
        self.public_url.origin() != self.upstream.issuer.origin()
    }

    /// `public_url` joined with an absolute path.
    pub fn public(&self, path: &str) -> String {
        format!("{}{}", self.public_url.as_str().trim_end_matches('/'), path)
    }
}
