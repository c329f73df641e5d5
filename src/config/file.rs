//! The file format: serde structs that mirror the YAML, each `deny_unknown_fields`, with the
//! defaults of every optional key. [`super::validate`] turns them into the runtime types of
//! [`super::runtime`]; nothing here checks a value.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileUpstream {
    pub(super) address: String,
    pub(super) issuer: String,
    #[serde(default)]
    pub(super) tls: bool,
    /// Seconds for connecting to and hearing from the IdP (back channel and pass-through).
    #[serde(default = "default_upstream_timeout")]
    pub(super) timeout: u64,
    /// Path of the IdP's token endpoint; learned from discovery when omitted.
    pub(super) token_path: Option<String>,
    /// PEM CA certificates to verify a TLS upstream with, instead of the system roots.
    pub(super) ca_file: Option<String>,
    /// The OpenID Connect discovery document's URL when it is not `issuer` +
    /// `/.well-known/openid-configuration` (Azure AD B2C: under the user flow's path).
    pub(super) discovery_url: Option<String>,
}

/// The TLS listener (`listen_tls:`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileListenTls {
    pub(super) listen: String,
    pub(super) cert_file: String,
    pub(super) key_file: String,
}

pub(super) fn default_upstream_timeout() -> u64 {
    10
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileDevice {
    pub(super) authorization_path: String,
    /// More paths answering as the device authorization endpoint, to mirror an existing URL
    /// layout (e.g. `/oauth2/v1/device`). Discovery names `authorization_path`.
    pub(super) extra_authorization_paths: Vec<String>,
    pub(super) verification_path: String,
    pub(super) callback_path: String,
    pub(super) expires_in: u64,
    pub(super) interval: u64,
}

impl Default for FileDevice {
    fn default() -> Self {
        Self {
            authorization_path: "/device/code".into(),
            extra_authorization_paths: Vec::new(),
            verification_path: "/device".into(),
            callback_path: "/device/callback".into(),
            expires_in: 600,
            interval: 5,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileStore {
    pub(super) backend: String,
    pub(super) max_pending: u64,
    pub(super) redis: Option<FileRedis>,
}

impl Default for FileStore {
    fn default() -> Self {
        Self {
            backend: "memory".into(),
            max_pending: 1000,
            redis: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRedis {
    /// `standalone`, `sentinel` or `cluster`.
    #[serde(default = "default_redis_mode")]
    pub(super) mode: String,
    pub(super) url: String,
    /// Cluster: more seed nodes (`host:port`), reached like `url`.
    #[serde(default)]
    pub(super) nodes: Vec<String>,
    /// Sentinel: the sentinels' `host:port`.
    #[serde(default)]
    pub(super) sentinels: Vec<String>,
    pub(super) sentinel_username: Option<String>,
    pub(super) sentinel_password: Option<String>,
    #[serde(default = "default_key_prefix")]
    pub(super) key_prefix: String,
    #[serde(default = "default_pool_size")]
    pub(super) pool_size: usize,
    #[serde(default = "default_command_timeout_ms")]
    pub(super) command_timeout_ms: u64,
    pub(super) ca_file: Option<String>,
}

pub(super) fn default_redis_mode() -> String {
    "standalone".into()
}

pub(super) fn default_key_prefix() -> String {
    "devicegate:".into()
}

pub(super) fn default_pool_size() -> usize {
    4
}

pub(super) fn default_command_timeout_ms() -> u64 {
    1000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileClient {
    pub(super) client_id: String,
    pub(super) name: Option<String>,
    pub(super) client_secret: Option<String>,
    #[serde(default = "default_scopes")]
    pub(super) allowed_scopes: Vec<String>,
    #[serde(default = "default_true")]
    pub(super) enabled: bool,
    /// One line about the application, shown on the consent page.
    pub(super) description: Option<String>,
    /// The application's logo on the consent page.
    pub(super) logo_url: Option<String>,
    /// Also send Google's `verification_url` in device authorization responses, for clients
    /// written against Google's device flow. Off by default: serde-based clients (the Rust
    /// `oauth2` crate) refuse a response carrying both names.
    #[serde(default)]
    pub(super) verification_url: bool,
}

pub(super) fn default_scopes() -> Vec<String> {
    vec!["openid".into()]
}

pub(super) fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileServer {
    pub(super) threads: usize,
    pub(super) grace_period_seconds: u64,
    pub(super) graceful_shutdown_timeout_seconds: u64,
    pub(super) upgrade_sock: String,
    /// Peers (load balancers, reverse proxies) whose `X-Forwarded-For` names the client.
    pub(super) trusted_proxies: Vec<String>,
}

impl Default for FileServer {
    fn default() -> Self {
        Self {
            threads: 2,
            grace_period_seconds: 5,
            graceful_shutdown_timeout_seconds: 5,
            upgrade_sock: "/tmp/devicegate_upgrade.sock".into(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// The admin listener (`admin:`): health and metrics, never on the public port.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAdmin {
    pub(super) listen: String,
    /// The bearer token of the admin API (`/grants`, `/clients`); the API is off without it.
    pub(super) token: Option<String>,
}
