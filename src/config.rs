//! Configuration: the YAML file format, and the validated [`Config`] the server runs on.
//!
//! Two layers, as river does: `File*` structs mirror the YAML (serde, `deny_unknown_fields`),
//! and [`Config::from_yaml`] turns them into checked runtime values. That conversion is the one
//! place errors are found, and it collects all of them (each naming its key) instead of
//! stopping at the first, so `devicegate --check` shows an operator everything at once.
//!
//! `${NAME}` in any string value is replaced by the environment variable `NAME` (for secrets);
//! an unset variable is an error naming the key. `$${` writes a literal `${`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_norway::Value;
use url::Url;

mod ui;
pub use ui::{contrast, Colors, ScopeText, Ui};

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending key, e.g. `clients[1].client_id`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.0 {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// ---------------------------------------------------------------------------------------------
// The file format.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUpstream {
    address: String,
    issuer: String,
    #[serde(default)]
    tls: bool,
    /// Seconds for connecting to and hearing from the IdP (back channel and pass-through).
    #[serde(default = "default_upstream_timeout")]
    timeout: u64,
    /// Path of the IdP's token endpoint; learned from discovery when omitted.
    token_path: Option<String>,
    /// PEM CA certificates to verify a TLS upstream with, instead of the system roots.
    ca_file: Option<String>,
}

/// The TLS listener (`listen_tls:`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileListenTls {
    listen: String,
    cert_file: String,
    key_file: String,
}

fn default_upstream_timeout() -> u64 {
    10
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileDevice {
    authorization_path: String,
    /// More paths answering as the device authorization endpoint, to mirror an existing URL
    /// layout (e.g. `/oauth2/v1/device`). Discovery names `authorization_path`.
    extra_authorization_paths: Vec<String>,
    verification_path: String,
    callback_path: String,
    expires_in: u64,
    interval: u64,
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
struct FileStore {
    backend: String,
    max_pending: u64,
    redis: Option<FileRedis>,
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
struct FileRedis {
    url: String,
    #[serde(default = "default_key_prefix")]
    key_prefix: String,
    #[serde(default = "default_pool_size")]
    pool_size: usize,
    #[serde(default = "default_command_timeout_ms")]
    command_timeout_ms: u64,
    ca_file: Option<String>,
}

fn default_key_prefix() -> String {
    "devicegate:".into()
}

fn default_pool_size() -> usize {
    4
}

fn default_command_timeout_ms() -> u64 {
    1000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileClient {
    client_id: String,
    name: Option<String>,
    client_secret: Option<String>,
    #[serde(default = "default_scopes")]
    allowed_scopes: Vec<String>,
    #[serde(default = "default_true")]
    enabled: bool,
    /// One line about the application, shown on the consent page.
    description: Option<String>,
    /// The application's logo on the consent page.
    logo_url: Option<String>,
    /// Also send Google's `verification_url` in device authorization responses, for clients
    /// written against Google's device flow. Off by default: serde-based clients (the Rust
    /// `oauth2` crate) refuse a response carrying both names.
    #[serde(default)]
    verification_url: bool,
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into()]
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileServer {
    threads: usize,
    grace_period_seconds: u64,
    graceful_shutdown_timeout_seconds: u64,
    upgrade_sock: String,
}

impl Default for FileServer {
    fn default() -> Self {
        Self {
            threads: 2,
            grace_period_seconds: 5,
            graceful_shutdown_timeout_seconds: 5,
            upgrade_sock: "/tmp/devicegate_upgrade.sock".into(),
        }
    }
}

/// Abuse limits (`limits:`). Rate limits count per gateway instance; 0 turns a rate limit off
/// (the user-code failure limits cannot be turned off).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wrong user codes one client address (IPv6: its /64) may enter per window (§5.1).
    pub code_failures_per_ip: u32,
    pub code_failures_window_seconds: u64,
    /// Wrong user codes everyone together may enter per minute: this bounds brute force.
    pub code_failures_global_per_minute: u32,
    pub device_requests_per_ip_per_minute: u32,
    pub device_requests_per_client_per_minute: u32,
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
            polls_per_ip_per_minute: 1200,
            polls_per_client_per_minute: 60_000,
            max_body_bytes: 64 * 1024,
            max_query_bytes: 4096,
            max_header_bytes: 16 * 1024,
        }
    }
}

/// The admin listener (`admin:`): health and metrics, never on the public port.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAdmin {
    listen: String,
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

/// Number of possible user codes: 8 letters from a 20-letter alphabet (RFC 8628 §6.1).
pub const USER_CODE_SPACE: f64 = 25_600_000_000.0;

const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "public_url",
    "upstream",
    "device",
    "store",
    "listen_tls",
    "limits",
    "admin",
    "log",
    "clients",
    "server",
    "ui",
];

// ---------------------------------------------------------------------------------------------
// The runtime configuration.

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
    /// `address` resolved once at start-up.
    pub addr: SocketAddr,
    /// The IdP's issuer URL, without a trailing slash (for building URLs).
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

/// Where the shared Redis store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redis {
    /// `redis://`, `rediss://` (TLS) or `unix://` URL; may hold a password, so it is a secret.
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
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub listen_tls: Option<ListenTls>,
    /// Origin devices and browsers use, without a trailing slash.
    pub public_url: Url,
    pub upstream: Upstream,
    pub device: Device,
    pub store: StoreConfig,
    pub limits: Limits,
    /// Where `/healthz`, `/readyz` and `/metrics` listen, if anywhere.
    pub admin_listen: Option<SocketAddr>,
    pub log: Log,
    pub clients: BTreeMap<String, Client>,
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

    /// Reads and validates a configuration file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                key: path.display().to_string(),
                message: format!("cannot read the file: {e}"),
            }])
        })?;
        Self::from_yaml(&text, &|name| std::env::var(name).ok())
    }

    /// Validates a configuration text; `env` looks up `${NAME}` variables.
    pub fn from_yaml(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigErrors> {
        let mut errs = Errors::default();
        let mut root: Value = match serde_norway::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                errs.push("(file)", format!("not valid YAML: {e}"));
                return Err(ConfigErrors(errs.0));
            }
        };
        expand_env(&mut root, "", env, &mut errs);
        let Value::Mapping(map) = &root else {
            errs.push(
                "(file)",
                "must be a mapping of keys such as `listen` and `upstream`",
            );
            return Err(ConfigErrors(errs.0));
        };
        for k in map.keys() {
            let name = k.as_str().unwrap_or("?");
            if !TOP_LEVEL_KEYS.contains(&name) {
                errs.push(
                    name,
                    format!(
                        "unknown key, expected one of: {}",
                        TOP_LEVEL_KEYS.join(", ")
                    ),
                );
            }
        }
        let get = |k: &str| map.get(k).cloned();

        let listen = match section::<String>(&mut errs, "listen", get("listen")) {
            Some(s) => parse_socket_addr(&mut errs, "listen", &s, false),
            None => None,
        };
        let public_url = section::<String>(&mut errs, "public_url", get("public_url"))
            .and_then(|s| parse_origin(&mut errs, "public_url", &s));
        let upstream = section::<FileUpstream>(&mut errs, "upstream", get("upstream"))
            .and_then(|u| validate_upstream(&mut errs, u));
        let device = section_or_default::<FileDevice>(&mut errs, "device", get("device"))
            .and_then(|d| validate_device(&mut errs, d));
        let store = section_or_default::<FileStore>(&mut errs, "store", get("store"))
            .and_then(|s| validate_store(&mut errs, s));
        let server = section_or_default::<FileServer>(&mut errs, "server", get("server"))
            .and_then(|s| validate_server(&mut errs, s));
        let limits = section_or_default::<Limits>(&mut errs, "limits", get("limits"))
            .and_then(|l| validate_limits(&mut errs, l));
        let admin_listen = match get("admin") {
            None | Some(Value::Null) => Some(None),
            Some(v) => deserialize::<FileAdmin>(&mut errs, "admin", v)
                .and_then(|a| parse_socket_addr(&mut errs, "admin.listen", &a.listen, false))
                .map(Some),
        };
        let listen_tls = match get("listen_tls") {
            None | Some(Value::Null) => Some(None),
            Some(v) => deserialize::<FileListenTls>(&mut errs, "listen_tls", v)
                .and_then(|t| validate_listen_tls(&mut errs, t))
                .map(Some),
        };
        let log = section_or_default::<Log>(&mut errs, "log", get("log"));
        if let Some(l) = &log {
            if tracing_subscriber::EnvFilter::try_new(&l.level).is_err() {
                errs.push(
                    "log.level",
                    "not a log filter (e.g. info, debug, devicegate=debug)",
                );
            }
        }
        let clients = validate_clients(&mut errs, get("clients"), public_url.as_ref());
        let ui = section_or_default::<ui::FileUi>(&mut errs, "ui", get("ui"))
            .map(|f| ui::validate_ui(&mut errs, f, public_url.as_ref()));
        if let Some(ui) = &ui {
            // The templates and messages are compiled (and tried) here, so that `--check`
            // reports a broken operator template.
            if errs.0.is_empty() {
                if let Err(list) = crate::pages::Pages::new(ui) {
                    for e in list {
                        match e.strip_prefix("ui.default_language: ") {
                            Some(m) => errs.push("ui.default_language", m),
                            None => errs.push("ui.templates_dir", e),
                        }
                    }
                }
            }
        }

        if let (Some(l), Some(Some(a))) = (listen, admin_listen) {
            if l == a {
                errs.push("admin.listen", "must differ from listen (the public port)");
            }
        }
        if let (Some(l), Some(Some(t))) = (listen, &listen_tls) {
            if l == t.listen {
                errs.push("listen_tls.listen", "must differ from listen");
            }
        }
        match (
            listen, public_url, upstream, device, store, limits, server, ui,
        ) {
            (
                Some(listen),
                Some(public_url),
                Some(upstream),
                Some(device),
                Some(store),
                Some(limits),
                Some(server),
                Some(ui),
            ) if errs.0.is_empty() => Ok(Config {
                ui,
                listen_tls: listen_tls.flatten(),
                admin_listen: admin_listen.flatten(),
                log: log.unwrap_or_default(),
                listen,
                public_url,
                upstream,
                device,
                store,
                limits,
                clients,
                server,
            }),
            _ => Err(ConfigErrors(errs.0)),
        }
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

#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, key: &str, message: impl Into<String>) {
        self.0.push(ConfigError {
            key: key.to_string(),
            message: message.into(),
        });
    }
}

fn section<T: DeserializeOwned>(errs: &mut Errors, key: &str, v: Option<Value>) -> Option<T> {
    match v {
        None | Some(Value::Null) => {
            errs.push(key, "is required");
            None
        }
        Some(v) => deserialize(errs, key, v),
    }
}

fn section_or_default<T: DeserializeOwned + Default>(
    errs: &mut Errors,
    key: &str,
    v: Option<Value>,
) -> Option<T> {
    match v {
        None | Some(Value::Null) => Some(T::default()),
        Some(v) => deserialize(errs, key, v),
    }
}

fn deserialize<T: DeserializeOwned>(errs: &mut Errors, key: &str, v: Value) -> Option<T> {
    match serde_norway::from_value::<T>(v) {
        Ok(t) => Some(t),
        Err(e) => {
            errs.push(key, e.to_string());
            None
        }
    }
}

/// Replaces `${NAME}` in every string scalar; unset variables are errors naming the key.
fn expand_env(v: &mut Value, path: &str, env: &dyn Fn(&str) -> Option<String>, errs: &mut Errors) {
    match v {
        Value::String(s) if s.contains('$') => match expand_str(s, env) {
            Ok(x) => *s = x,
            Err(m) => errs.push(path, m),
        },
        Value::Mapping(m) => {
            for (k, val) in m.iter_mut() {
                let name = k.as_str().unwrap_or("?");
                let p = if path.is_empty() {
                    name.to_string()
                } else {
                    format!("{path}.{name}")
                };
                expand_env(val, &p, env, errs);
            }
        }
        Value::Sequence(seq) => {
            for (i, val) in seq.iter_mut().enumerate() {
                expand_env(val, &format!("{path}[{i}]"), env, errs);
            }
        }
        _ => {}
    }
}

fn expand_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(r) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = r;
        } else if let Some(r) = after.strip_prefix("${") {
            let end = r
                .find('}')
                .ok_or_else(|| "`${` without a closing `}`".to_string())?;
            let name = &r[..end];
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "`${{{name}}}` is not a valid environment variable name"
                ));
            }
            match env(name) {
                Some(val) => out.push_str(&val),
                None => return Err(format!("environment variable {name} is not set")),
            }
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn parse_socket_addr(errs: &mut Errors, key: &str, s: &str, resolve: bool) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    let has_port = s
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    if !has_port {
        errs.push(
            key,
            format!("'{s}' is not an address of the form host:port"),
        );
        return None;
    }
    if !resolve {
        errs.push(
            key,
            format!("'{s}' is not an IP address and port, e.g. 127.0.0.1:8080"),
        );
        return None;
    }
    match s.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) => Some(a),
        _ => {
            errs.push(key, format!("cannot resolve '{s}'"));
            None
        }
    }
}

/// An http(s) URL with a host, no query or fragment; the trailing slash removed.
fn parse_origin(errs: &mut Errors, key: &str, s: &str) -> Option<Url> {
    let url = match Url::parse(s) {
        Ok(u) => u,
        Err(e) => {
            errs.push(
                key,
                format!("'{s}' is not a URL with a scheme, e.g. https://id.example.com ({e})"),
            );
            return None;
        }
    };
    if url.scheme() != "http" && url.scheme() != "https" {
        errs.push(
            key,
            format!("scheme must be http or https, not '{}'", url.scheme()),
        );
        return None;
    }
    if url.host_str().is_none_or(str::is_empty) {
        errs.push(key, "must have a host");
        return None;
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        errs.push(key, "must not have a query, fragment or user name");
        return None;
    }
    let trimmed = s.trim_end_matches('/');
    Url::parse(trimmed).ok()
}

fn validate_upstream(errs: &mut Errors, u: FileUpstream) -> Option<Upstream> {
    let addr = parse_socket_addr(errs, "upstream.address", &u.address, true);
    let issuer = parse_origin(errs, "upstream.issuer", &u.issuer);
    if u.timeout == 0 || u.timeout > 300 {
        errs.push("upstream.timeout", "must be between 1 and 300 seconds");
    }
    if let Some(p) = &u.token_path {
        validate_path(errs, "upstream.token_path", p);
    }
    let ca_file = match u.ca_file {
        Some(_) if !u.tls => {
            errs.push("upstream.ca_file", "is only used with `tls: true`");
            None
        }
        Some(path) => match read_pem(&path, "CERTIFICATE") {
            Ok(pem) => Some((path, pem)),
            Err(e) => {
                errs.push("upstream.ca_file", e);
                None
            }
        },
        None => None,
    };
    let (addr, issuer) = (addr?, issuer?);
    let sni = issuer.host_str().unwrap_or_default().to_string();
    Some(Upstream {
        address: u.address,
        addr,
        issuer,
        issuer_id: u.issuer.trim().to_string(),
        tls: u.tls,
        sni,
        timeout: Duration::from_secs(u.timeout),
        token_path: u.token_path,
        ca_file,
    })
}

fn validate_path(errs: &mut Errors, key: &str, p: &str) {
    let ok = p.starts_with('/')
        && p.len() > 1
        && !p.contains(['?', '#', '%', ' '])
        && !p.split('/').any(|seg| seg == "." || seg == "..")
        && !p.ends_with('/');
    if !ok {
        errs.push(
            key,
            format!("'{p}' must be an absolute path like /device/code, without a trailing slash, query, dot segments or escapes"),
        );
    }
}

fn validate_device(errs: &mut Errors, d: FileDevice) -> Option<Device> {
    let before = errs.0.len();
    validate_path(errs, "device.authorization_path", &d.authorization_path);
    validate_path(errs, "device.verification_path", &d.verification_path);
    validate_path(errs, "device.callback_path", &d.callback_path);
    for (i, p) in d.extra_authorization_paths.iter().enumerate() {
        validate_path(errs, &format!("device.extra_authorization_paths[{i}]"), p);
    }
    let qr = format!("{}/qr", d.verification_path.trim_end_matches('/'));
    let paths: Vec<&String> = [
        &d.authorization_path,
        &d.verification_path,
        &d.callback_path,
        &qr,
    ]
    .into_iter()
    .chain(&d.extra_authorization_paths)
    .collect();
    if paths.iter().collect::<HashSet<_>>().len() != paths.len() {
        errs.push(
            "device",
            "authorization_path, extra_authorization_paths, verification_path, callback_path and {verification_path}/qr must all differ",
        );
    }
    if !(1..=86_400).contains(&d.expires_in) {
        errs.push(
            "device.expires_in",
            "must be between 1 and 86400 seconds (RFC 8628 suggests minutes, e.g. 600)",
        );
    }
    if !(1..=60).contains(&d.interval) {
        errs.push("device.interval", "must be between 1 and 60 seconds");
    }
    (errs.0.len() == before).then_some(Device {
        authorization_path: d.authorization_path,
        extra_authorization_paths: d.extra_authorization_paths,
        verification_path: d.verification_path,
        callback_path: d.callback_path,
        expires_in: d.expires_in,
        interval: d.interval,
    })
}

fn validate_store(errs: &mut Errors, s: FileStore) -> Option<StoreConfig> {
    let before = errs.0.len();
    let backend = match (s.backend.as_str(), s.redis) {
        ("memory", None) => Some(Backend::Memory),
        ("memory", Some(_)) => {
            errs.push(
                "store.redis",
                "is only used with `backend: redis`: set the backend or remove this section",
            );
            None
        }
        ("redis", Some(r)) => validate_redis(errs, r).map(Backend::Redis),
        ("redis", None) => {
            errs.push(
                "store.redis.url",
                "is required with `backend: redis` (e.g. redis://127.0.0.1:6379/0)",
            );
            None
        }
        (other, _) => {
            errs.push(
                "store.backend",
                format!("unknown backend '{other}', expected: memory or redis"),
            );
            None
        }
    };
    if s.max_pending == 0 {
        errs.push("store.max_pending", "must be at least 1");
    }
    (errs.0.len() == before).then_some(StoreConfig {
        backend: backend?,
        max_pending: s.max_pending,
    })
}

fn validate_redis(errs: &mut Errors, r: FileRedis) -> Option<Redis> {
    let before = errs.0.len();
    // The URL may carry a password: errors describe it but never repeat it.
    let tls = r.url.starts_with("rediss://");
    match Url::parse(&r.url) {
        Ok(u) if matches!(u.scheme(), "redis" | "rediss") && u.host_str().is_none() => {
            errs.push("store.redis.url", "has no host");
        }
        Ok(u) if matches!(u.scheme(), "redis" | "rediss" | "unix" | "redis+unix") => {
            if redis::Client::open(r.url.as_str()).is_err() {
                errs.push(
                    "store.redis.url",
                    "is not a valid Redis URL (expected redis://[:password@]host[:port][/db])",
                );
            }
        }
        Ok(u) => errs.push(
            "store.redis.url",
            format!(
                "unsupported scheme '{}', expected redis://, rediss:// (TLS) or unix://",
                u.scheme()
            ),
        ),
        Err(e) => errs.push("store.redis.url", format!("not a URL: {e}")),
    }
    if r.key_prefix.is_empty() || r.key_prefix.chars().any(char::is_whitespace) {
        errs.push(
            "store.redis.key_prefix",
            "must be non-empty and without spaces (e.g. `devicegate:`)",
        );
    }
    if !(1..=64).contains(&r.pool_size) {
        errs.push("store.redis.pool_size", "must be between 1 and 64");
    }
    if !(10..=60_000).contains(&r.command_timeout_ms) {
        errs.push(
            "store.redis.command_timeout_ms",
            "must be between 10 and 60000 milliseconds",
        );
    }
    let ca_pem = match r.ca_file {
        Some(_) if !tls => {
            errs.push("store.redis.ca_file", "is only used with a rediss:// URL");
            None
        }
        Some(path) => read_pem(&path, "CERTIFICATE")
            .map_err(|e| errs.push("store.redis.ca_file", e))
            .ok(),
        None => None,
    };
    (errs.0.len() == before).then(|| Redis {
        url: Secret(r.url),
        key_prefix: r.key_prefix,
        pool_size: r.pool_size,
        command_timeout: Duration::from_millis(r.command_timeout_ms),
        ca_pem,
    })
}

fn validate_limits(errs: &mut Errors, l: Limits) -> Option<Limits> {
    let before = errs.0.len();
    if l.code_failures_per_ip == 0 {
        errs.push(
            "limits.code_failures_per_ip",
            "must be at least 1: the user-code brute-force limit cannot be turned off",
        );
    }
    if l.code_failures_global_per_minute == 0 {
        errs.push(
            "limits.code_failures_global_per_minute",
            "must be at least 1: the user-code brute-force limit cannot be turned off",
        );
    }
    if !(60..=86_400).contains(&l.code_failures_window_seconds) {
        errs.push(
            "limits.code_failures_window_seconds",
            "must be between 60 and 86400",
        );
    }
    if !(1024..=1024 * 1024).contains(&l.max_body_bytes) {
        errs.push("limits.max_body_bytes", "must be between 1024 and 1048576");
    }
    if !(256..=64 * 1024).contains(&l.max_query_bytes) {
        errs.push("limits.max_query_bytes", "must be between 256 and 65536");
    }
    if !(1024..=1024 * 1024).contains(&l.max_header_bytes) {
        errs.push(
            "limits.max_header_bytes",
            "must be between 1024 and 1048576",
        );
    }
    (errs.0.len() == before).then_some(l)
}

/// Reads a PEM file holding at least one `-----BEGIN {label}` block (a label ending in it, such
/// as `PRIVATE KEY` for `RSA PRIVATE KEY`, counts).
fn read_pem(path: &str, label: &str) -> Result<Vec<u8>, String> {
    let pem = read_small_file(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let text = String::from_utf8_lossy(&pem);
    let found = text.split("-----BEGIN ").skip(1).any(|block| {
        block
            .split("-----")
            .next()
            .is_some_and(|l| l.ends_with(label))
    });
    if found {
        Ok(pem)
    } else {
        Err(format!("{path} holds no PEM {label}"))
    }
}

fn validate_listen_tls(errs: &mut Errors, t: FileListenTls) -> Option<ListenTls> {
    let listen = parse_socket_addr(errs, "listen_tls.listen", &t.listen, false);
    let cert =
        read_pem(&t.cert_file, "CERTIFICATE").map_err(|e| errs.push("listen_tls.cert_file", e));
    let key = read_pem(&t.key_file, "PRIVATE KEY").map_err(|e| errs.push("listen_tls.key_file", e));
    match (listen, cert, key) {
        (Some(listen), Ok(_), Ok(_)) => Some(ListenTls {
            listen,
            cert_file: t.cert_file,
            key_file: t.key_file,
        }),
        _ => None,
    }
}

/// Reads a file of at most 1 MiB (a CA bundle), so a path such as `/dev/zero` fails instead of
/// filling memory.
fn read_small_file(path: &str) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    const MAX: u64 = 1024 * 1024;
    let mut data = Vec::new();
    std::fs::File::open(path)?
        .take(MAX + 1)
        .read_to_end(&mut data)?;
    if data.len() as u64 > MAX {
        return Err(std::io::Error::other("larger than 1 MiB"));
    }
    Ok(data)
}

fn validate_server(errs: &mut Errors, s: FileServer) -> Option<Server> {
    if !(1..=256).contains(&s.threads) {
        errs.push("server.threads", "must be between 1 and 256");
        return None;
    }
    Some(Server {
        threads: s.threads,
        grace_period_seconds: s.grace_period_seconds,
        graceful_shutdown_timeout_seconds: s.graceful_shutdown_timeout_seconds,
        upgrade_sock: s.upgrade_sock,
    })
}

fn validate_clients(
    errs: &mut Errors,
    v: Option<Value>,
    public_url: Option<&Url>,
) -> BTreeMap<String, Client> {
    let mut out = BTreeMap::new();
    let list = match v {
        Some(Value::Sequence(list)) if !list.is_empty() => list,
        None | Some(Value::Null) | Some(Value::Sequence(_)) => {
            errs.push("clients", "at least one client is required");
            return out;
        }
        Some(_) => {
            errs.push("clients", "must be a list of clients");
            return out;
        }
    };
    for (i, item) in list.into_iter().enumerate() {
        let key = format!("clients[{i}]");
        let Some(c) = deserialize::<FileClient>(errs, &key, item) else {
            continue;
        };
        let id_ok = !c.client_id.is_empty()
            && c.client_id.len() <= 255
            && c.client_id.chars().all(|ch| ch.is_ascii_graphic());
        if !id_ok {
            errs.push(
                &format!("{key}.client_id"),
                "must be 1 to 255 printable ASCII characters without spaces",
            );
            continue;
        }
        if c.allowed_scopes.is_empty()
            || c.allowed_scopes.iter().any(|s| {
                s.is_empty()
                    || !s
                        .chars()
                        .all(|ch| ch.is_ascii_graphic() && ch != '"' && ch != '\\')
            })
        {
            errs.push(
                &format!("{key}.allowed_scopes"),
                "must list at least one scope; scopes are printable ASCII without spaces, quotes or backslashes",
            );
        }
        if c.client_secret.as_deref() == Some("") {
            errs.push(
                &format!("{key}.client_secret"),
                "is empty: remove it for a public client",
            );
        }
        if c.description
            .as_ref()
            .is_some_and(|d| d.trim().is_empty() || d.chars().count() > 300)
        {
            errs.push(&format!("{key}.description"), "must be 1 to 300 characters");
        }
        let logo_url = c
            .logo_url
            .as_deref()
            .and_then(|l| ui::check_image_url(errs, &format!("{key}.logo_url"), l, public_url));
        if out.contains_key(&c.client_id) {
            errs.push(
                &format!("{key}.client_id"),
                format!("duplicate client id '{}'", c.client_id),
            );
            continue;
        }
        out.insert(
            c.client_id.clone(),
            Client {
                name: c
                    .name
                    .filter(|n| !n.trim().is_empty())
                    .unwrap_or_else(|| c.client_id.clone()),
                client_id: c.client_id,
                client_secret: c.client_secret.filter(|s| !s.is_empty()).map(Secret),
                allowed_scopes: c.allowed_scopes,
                enabled: c.enabled,
                description: c.description,
                logo_url,
                verification_url: c.verification_url,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen: 127.0.0.1:8080
public_url: http://localhost:8080/
upstream:
  address: 127.0.0.1:3000
  issuer: http://localhost:8080
clients:
  - client_id: tv-app
    name: Living-room TV
    client_secret: ${TV_APP_SECRET}
    allowed_scopes: [openid, profile]
"#;

    fn env(name: &str) -> Option<String> {
        (name == "TV_APP_SECRET").then(|| "s3cret".to_string())
    }

    fn errors(yaml: &str) -> Vec<String> {
        match Config::from_yaml(yaml, &env) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn good_config_with_defaults() {
        let c = Config::from_yaml(GOOD, &env).unwrap();
        assert_eq!(c.public_url.as_str(), "http://localhost:8080/");
        assert_eq!(c.upstream.issuer_id, "http://localhost:8080");
        let slash = GOOD.replace(
            "issuer: http://localhost:8080",
            "issuer: https://t.example/",
        );
        let c2 = Config::from_yaml(&slash, &env).unwrap();
        assert_eq!(
            c2.upstream.issuer_id, "https://t.example/",
            "kept as written (Auth0)"
        );
        assert_eq!(c.public("/device"), "http://localhost:8080/device");
        assert_eq!(c.device.verification_path, "/device");
        assert_eq!(c.device.interval, 5);
        assert_eq!(c.store.max_pending, 1000);
        assert_eq!(c.limits, Limits::default());
        // The defaults keep brute force below 1e-3 expected successes a day (README).
        assert!(c.brute_force_bound() < 1e-3, "{}", c.brute_force_bound());
        let tv = &c.clients["tv-app"];
        assert_eq!(
            tv.client_secret.as_ref().map(Secret::expose),
            Some("s3cret")
        );
        assert!(tv.enabled);
        // The secret never shows in debug output.
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn every_error_is_reported_with_its_key() {
        let yaml = r#"
listen: nowhere
public_url: localhost:8080
upstream:
  address: 127.0.0.1
  issuer: http://localhost:8080
  colour: blue
device:
  expires_in: 0
store:
  backend: etcd
clients:
  - client_id: a
  - client_id: a
  - client_id: b
    client_secret: ${MISSING_SECRET}
extra: 1
"#;
        let errs = errors(yaml);
        let has = |key: &str, text: &str| {
            assert!(
                errs.iter().any(|e| e.starts_with(key) && e.contains(text)),
                "no error for {key} containing '{text}' in {errs:#?}"
            )
        };
        has("listen", "host:port");
        has("public_url", "scheme");
        has("upstream", "unknown field `colour`");
        has("device.expires_in", "between 1");
        has("store.backend", "etcd");
        has("clients[1].client_id", "duplicate");
        has("clients[2].client_secret", "MISSING_SECRET is not set");
        has("extra", "unknown key");
    }

    #[test]
    fn ui_section() {
        // Rebranding takes three keys.
        let yaml = format!(
            "{GOOD}    description: Streams films\n    logo_url: https://cdn.example/tv.png\nui:\n  title: Acme\n  logo_url: /static/logo.svg\n  colors: {{accent: '#8A1538'}}\n  scopes: {{files: Read your files, openid: {{de: Wer Sie sind}}}}\n"
        );
        let c = Config::from_yaml(&yaml, &env).unwrap();
        assert_eq!(c.ui.title.as_deref(), Some("Acme"));
        assert_eq!(c.ui.colors.accent, "#8a1538");
        assert_eq!(c.ui.default_language, "en");
        assert_eq!(
            c.clients["tv-app"].logo_url.as_deref(),
            Some("https://cdn.example/tv.png")
        );

        let bad = format!(
            "{GOOD}    logo_url: javascript:alert(1)\nui:\n  logo_url: ftp://evil.example/x.png\n  colors: {{accent: '#ffff00', text: red}}\n  default_language: xx\n  colour: blue\n  templates_dir: /nonexistent/dir\n"
        );
        let errs = errors(&bad);
        for key in ["clients[0].logo_url", "ui: unknown field `colour`"] {
            assert!(errs.iter().any(|e| e.starts_with(key)), "{key}: {errs:?}");
        }
        // deny_unknown_fields stops at the first unknown key; fix it and see the rest.
        let errs = errors(&bad.replace("  colour: blue\n", ""));
        for key in [
            "ui.logo_url",
            "ui.colors.accent",
            "ui.colors.text",
            "ui.templates_dir",
        ] {
            assert!(errs.iter().any(|e| e.starts_with(key)), "{key}: {errs:?}");
        }
        let errs = errors(&format!("{GOOD}ui:\n  default_language: xx\n"));
        assert!(
            errs.iter()
                .any(|e| e.starts_with("ui.default_language") && e.contains("en, fr")),
            "{errs:?}"
        );
    }

    #[test]
    fn templates_dir_overrides_are_compiled_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("locales")).unwrap();
        std::fs::write(dir.path().join("message.html"), "{% extends \"base.html\" %}{% block content %}<h1>{{ heading }}</h1><p>{{ t.x_help }}</p>{% endblock %}").unwrap();
        std::fs::write(
            dir.path().join("locales/en.yaml"),
            "x_help: Call the help desk\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("locales/es.yaml"),
            "enter_button: Continuar\n",
        )
        .unwrap();
        let yaml = format!(
            "{GOOD}ui:\n  templates_dir: {}\n  default_language: es\n",
            dir.path().display()
        );
        let c = Config::from_yaml(&yaml, &env).unwrap();
        let pages = crate::pages::Pages::new(&c.ui).unwrap();
        let html = pages.message(
            pages.language(Some("en")),
            crate::pages::Message::Denied,
            "/d",
        );
        assert!(
            html.contains("<h1>Request denied</h1><p>Call the help desk</p>"),
            "{html}"
        );
        assert_eq!(pages.language(None).lang, "es");

        std::fs::write(dir.path().join("consent.html"), "{% for %}").unwrap();
        std::fs::write(dir.path().join("locales/de.yaml"), "enter_buton: Los\n").unwrap();
        let errs = errors(&yaml);
        assert!(
            errs.iter()
                .any(|e| e.starts_with("ui.templates_dir: consent.html")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.contains("locales/de.yaml") && e.contains("enter_buton")),
            "{errs:?}"
        );
    }

    #[test]
    fn bad_addresses_and_paths() {
        let errs = errors(&GOOD.replace("127.0.0.1:3000", "127.0.0.1:99999"));
        assert!(
            errs.iter().any(|e| e.starts_with("upstream.address")),
            "{errs:?}"
        );
        let yaml =
            format!("{GOOD}device:\n  authorization_path: device/code\n  callback_path: /device\n");
        let errs = errors(&yaml);
        assert!(
            errs.iter()
                .any(|e| e.starts_with("device.authorization_path")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.contains("must all differ")),
            "{errs:?}"
        );
        let errs = errors(&GOOD.replace("http://localhost:8080/", "ftp://localhost"));
        assert!(errs.iter().any(|e| e.starts_with("public_url")), "{errs:?}");
        assert!(errors("[1, 2]").iter().any(|e| e.contains("mapping")));
        assert!(errors("listen: [").iter().any(|e| e.contains("YAML")));
    }

    #[test]
    fn redis_store() {
        let yaml = format!(
            "{GOOD}store:\n  backend: redis\n  redis:\n    url: redis://:${{TV_APP_SECRET}}@127.0.0.1:6379/2\n"
        );
        let c = Config::from_yaml(&yaml, &env).unwrap();
        let Backend::Redis(r) = &c.store.backend else {
            panic!("not redis: {:?}", c.store.backend)
        };
        assert_eq!(r.url.expose(), "redis://:s3cret@127.0.0.1:6379/2");
        assert_eq!(r.key_prefix, "devicegate:");
        assert_eq!(r.pool_size, 4);
        assert_eq!(r.command_timeout, Duration::from_secs(1));
        // The password in the URL never shows in debug output.
        assert!(!format!("{c:?}").contains("s3cret"));

        let bad = |store: &str| errors(&format!("{GOOD}store:\n{store}"));
        let has = |errs: Vec<String>, key: &str, text: &str| {
            assert!(
                errs.iter().any(|e| e.starts_with(key) && e.contains(text)),
                "no error for {key} containing '{text}' in {errs:#?}"
            );
            // Errors describe the URL but never repeat its password.
            assert!(!errs.iter().any(|e| e.contains("hunter2")), "{errs:?}");
        };
        has(bad("  backend: redis\n"), "store.redis.url", "required");
        has(
            bad("  backend: memory\n  redis:\n    url: redis://x\n"),
            "store.redis",
            "only used with",
        );
        has(
            bad("  backend: redis\n  redis:\n    url: http://:hunter2@x\n"),
            "store.redis.url",
            "unsupported scheme 'http'",
        );
        has(
            bad("  backend: redis\n  redis:\n    url: redis://:hunter2@\n"),
            "store.redis.url",
            "",
        );
        let errs = bad(
            "  backend: redis\n  redis:\n    url: redis://h\n    key_prefix: ''\n    pool_size: 0\n    command_timeout_ms: 5\n    db: 1\n",
        );
        has(errs.clone(), "store", "unknown field `db`");
        let errs = bad(
            "  backend: redis\n  redis:\n    url: redis://h\n    key_prefix: ''\n    pool_size: 0\n    command_timeout_ms: 5\n",
        );
        has(errs.clone(), "store.redis.key_prefix", "non-empty");
        has(errs.clone(), "store.redis.pool_size", "between 1 and 64");
        has(errs, "store.redis.command_timeout_ms", "between 10");
        let ca = |url: &str, file: &str| {
            bad(&format!(
                "  backend: redis\n  redis:\n    url: {url}\n    ca_file: {file}\n"
            ))
        };
        has(
            ca("redis://h", "/etc/hostname"),
            "store.redis.ca_file",
            "only used with a rediss://",
        );
        has(
            ca("rediss://h", "/nonexistent.pem"),
            "store.redis.ca_file",
            "cannot read /nonexistent.pem",
        );
        has(
            ca("rediss://h", "/etc/hostname"),
            "store.redis.ca_file",
            "no PEM CERTIFICATE",
        );
    }

    #[test]
    fn env_expansion() {
        let env = |n: &str| (n == "A").then(|| "x".to_string());
        assert_eq!(expand_str("a${A}b", &env).unwrap(), "axb");
        assert_eq!(expand_str("$${A} $5", &env).unwrap(), "${A} $5");
        assert!(expand_str("${B}", &env)
            .unwrap_err()
            .contains("B is not set"));
        assert!(expand_str("${A", &env).is_err());
        assert!(expand_str("${1A}", &env).is_err());
    }

    #[test]
    fn shipped_configs_validate() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                let text = std::fs::read_to_string(&path).unwrap();
                // Shipped examples take secrets from the environment: give every variable a value.
                if let Err(e) = Config::from_yaml(&text, &|_| Some("example-secret".into())) {
                    panic!("{} does not validate:\n{e}", path.display());
                }
                n += 1;
            }
        }
        assert!(n >= 1, "no config files found in {}", dir.display());
    }
}
