//! Shared fixtures for the integration tests: a real IdP (`oidc-provider`, run by node from
//! `tests/idp/`), the real gateway binary, and a real headless Chromium driven through
//! `tests/idp/browser.js`. Everything listens on 127.0.0.1 and is killed when the fixture drops.
//!
//! A missing prerequisite fails the test with what to install; nothing is skipped.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub mod redis_ha;
pub use redis_ha::test_certificates;

pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// A JSON string value, or "" for anything else.
pub fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

pub fn idp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/idp")
}

/// Fails with a clear message when a prerequisite is missing.
pub fn require_prerequisites() {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is not installed: run ./scripts/test.sh (or apt-get install nodejs npm)"
    );
    assert!(
        idp_dir().join("node_modules/oidc-provider").is_dir(),
        "the test IdP is not installed: run `npm ci --prefix tests/idp` (./scripts/test.sh does it)"
    );
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Options for one gateway + IdP pair.
#[derive(Clone)]
pub struct Options {
    pub expires_in: u64,
    pub interval: u64,
    pub max_pending: u64,
    /// Point the gateway at a port where nothing listens (IdP down).
    pub idp_down: bool,
    /// Point the gateway at this port on 127.0.0.1 instead of starting the IdP.
    pub upstream_port: Option<u16>,
    /// `upstream.timeout`, seconds.
    pub upstream_timeout: u64,
    /// The body of a `limits:` section (indented two spaces), if any.
    pub limits: Option<String>,
    /// Serve `/healthz`, `/readyz`, `/metrics` and the admin API (token [`ADMIN_TOKEN`]) on an
    /// admin listener (`Env::admin_url`).
    pub admin: bool,
    /// The body of an `events:` section (indented two spaces), if any.
    pub events: Option<String>,
    /// Log JSON lines (`log.format: json`) instead of text.
    pub json_logs: bool,
    /// Also listen with TLS (`Env::tls_port`), with these PEM certificate and key files.
    pub listen_tls: Option<(String, String)>,
    /// Start a `redis-server` and use the Redis store instead of the embedded one.
    pub redis: bool,
    /// The body of a `store:` section (indented two spaces) for a store the test runs itself.
    pub store: Option<String>,
    /// The body of a `ui:` section (indented two spaces), if any.
    pub ui: Option<String>,
    /// `server.trusted_proxies`, as a YAML flow list (`[127.0.0.1]`), if any.
    pub trusted_proxies: Option<String>,
    /// Policy keys for `tv-app` and for `kiosk` (one `key: value` per line, unindented).
    pub tv_policy: Option<String>,
    pub kiosk_policy: Option<String>,
    /// Which IdP plays the organisation's.
    pub idp: Idp,
    /// With `Idp::Keycloakish`: the user's IdP session began this many seconds ago, and the
    /// IdP reuses it whatever `max_age` asks (`IDP_SESSION_AGE`).
    pub idp_session_age: u64,
    /// The IdP on its own origin (its own port and issuer) and the gateway on another, instead
    /// of the gateway at the issuer's origin.
    pub own_origin: bool,
    /// With `own_origin`: Azure AD B2C's layout, discovery under a user flow's path
    /// ([`B2C_DISCOVERY_PATH`], `upstream.discovery_url`) and the issuer with a trailing slash.
    pub b2c_layout: bool,
    /// With `own_origin`: AWS Cognito's layout, the IdP's endpoints on a second origin
    /// (`Env::endpoints_url`), its issuer origin keeping discovery and the JWKS.
    pub cognito_layout: bool,
}

/// The upstream identity provider of a test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idp {
    /// `oidc-provider` (tests/idp): issuer without a path, RS256, login and consent pages.
    OidcProvider,
    /// The same, with an issuer that has this path (the provider mounted under it).
    OidcProviderAt(&'static str),
    /// `oauth2-mock-server` shaped like a Keycloak realm (tests/idp2): issuer `/realms/demo`,
    /// endpoints under `/protocol/openid-connect/`, ID tokens signed with this algorithm, JWT
    /// access tokens, rotating refresh tokens, and no login page (authorize signs in at once).
    /// A mock, kept only where no real server here can stand in: Keycloak's paths and token
    /// fields, a JWKS with an encryption key, and an IdP session of a chosen age (`max_age`).
    Keycloakish(&'static str),
    /// django-oauth-toolkit (PyPI, tests/idp3): issuer `/o`, endpoints with trailing slashes,
    /// RS256, rotating refresh tokens, a login page and no consent page.
    DjangoOauthToolkit,
    /// Glewlwyd 2.7.5 (Debian's `glewlwyd`, tests/idp4): issuer `/api/oidc`, its own device
    /// flow switched off, its login web app with a consent screen, one-time refresh tokens, ID
    /// tokens signed with this algorithm.
    Glewlwyd(&'static str),
}

impl Default for Options {
    fn default() -> Self {
        Self {
            expires_in: 600,
            interval: 1,
            max_pending: 1000,
            idp_down: false,
            upstream_port: None,
            upstream_timeout: 5,
            limits: None,
            admin: false,
            events: None,
            json_logs: false,
            listen_tls: None,
            trusted_proxies: None,
            redis: false,
            store: None,
            ui: None,
            tv_policy: None,
            kiosk_policy: None,
            idp: Idp::OidcProvider,
            idp_session_age: 0,
            own_origin: false,
            cognito_layout: false,
            b2c_layout: false,
        }
    }
}

/// Requests to one gateway instance, as a device and a browser send them.
pub struct Gate {
    pub url: String,
    pub http: reqwest::Client,
}

/// A running IdP and gateway (and Redis, when asked for). Derefs to the gateway's [`Gate`].
pub struct Env {
    pub gate: Gate,
    /// `http://127.0.0.1:<admin port>` when `Options::admin` is set.
    pub admin_url: Option<String>,
    /// The TLS listener's port when `Options::listen_tls` is set.
    pub tls_port: Option<u16>,
    /// The IdP's endpoints' origin when `Options::cognito_layout` is set.
    pub endpoints_url: Option<String>,
    pub dir: tempfile::TempDir,
    pub redis: Option<Redis>,
    pub port: u16,
    /// The gateway configuration, with `{LISTEN_PORT}` where the listening port goes.
    config: String,
    _idp: Option<Proc>,
    gateway: Option<Proc>,
}

impl std::ops::Deref for Env {
    type Target = Gate;
    fn deref(&self) -> &Gate {
        &self.gate
    }
}

/// Another gateway instance sharing the first one's configuration and store.
pub struct Instance {
    pub gate: Gate,
    _proc: Proc,
}

/// Where the IdP serves discovery in Azure AD B2C's layout (`Options::b2c_layout`).
pub const B2C_DISCOVERY_PATH: &str =
    "/devicegate.onmicrosoft.com/B2C_1_signin/v2.0/.well-known/openid-configuration";

pub const KIOSK_SECRET: &str = "kiosk-secret-value";

/// The TV client's logo on the consent page: a small SVG as a data: URL.
pub const TV_LOGO: &str = "data:image/svg+xml,%3Csvg%20xmlns='http://www.w3.org/2000/svg'%20viewBox='0%200%2048%2048'%3E%3Crect%20x='4'%20y='8'%20width='40'%20height='26'%20rx='3'%20fill='%231f5fbf'/%3E%3Crect%20x='18'%20y='36'%20width='12'%20height='4'%20fill='%23555'/%3E%3C/svg%3E";

/// The secret of the test clients that have one (confidential clients).
pub fn secret_of(client_id: &str) -> Option<&'static str> {
    (client_id == "kiosk").then_some(KIOSK_SECRET)
}
/// The password of the test Redis servers (the default user's, or the ACL user `devicegate`'s).
pub const REDIS_PASSWORD: &str = redis_ha::PASSWORD;
/// The admin API's token in the tests' configurations (`admin.token`).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client")
}

impl Env {
    pub async fn start(opts: Options) -> Env {
        require_prerequisites();
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let issuer_path = match opts.idp {
            Idp::OidcProvider => "",
            Idp::OidcProviderAt(path) => path,
            Idp::Keycloakish(_) => "/realms/demo",
            Idp::DjangoOauthToolkit => "/o",
            Idp::Glewlwyd(_) => "/api/oidc",
        };
        let own_port = opts.own_origin.then(free_port);
        let endpoints_port = opts.cognito_layout.then(free_port);
        let issuer = match own_port {
            Some(p) => format!("http://127.0.0.1:{p}{issuer_path}"),
            None => format!("{url}{issuer_path}"),
        };
        // B2C's issuers end in a slash.
        let issuer = if opts.b2c_layout {
            format!("{issuer}/")
        } else {
            issuer
        };
        let (idp, idp_port) = if let Some(p) = opts.upstream_port {
            (None, p)
        } else if opts.idp_down {
            (None, free_port())
        } else {
            let (p, idp_port) = start_idp(
                &opts,
                &issuer,
                &url,
                own_port.unwrap_or(0),
                endpoints_port,
                dir.path(),
            );
            (Some(p), idp_port)
        };
        let redis = opts.redis.then(Redis::start);
        let admin_port = opts.admin.then(free_port);
        let tls_port = opts.listen_tls.as_ref().map(|_| free_port());
        let store = match (&opts.store, &redis) {
            (Some(store), _) => store.clone(),
            (None, Some(r)) => format!(
                "  backend: redis\n  redis:\n    url: redis://:${{REDIS_PASSWORD}}@127.0.0.1:{}/0\n    command_timeout_ms: 500\n",
                r.port
            ),
            (None, None) => String::new(),
        };
        let config = format!(
            r#"
listen: 127.0.0.1:{{LISTEN_PORT}}
public_url: {url}
upstream:
  address: 127.0.0.1:{idp_port}
  issuer: {issuer}
{discovery_url}  timeout: {upstream_timeout}
{token_path}device:
  expires_in: {expires_in}
  interval: {interval}
store:
  max_pending: {max_pending}
{store}{limits}{admin}{log}{tls}{ui}server:
  threads: 2
  grace_period_seconds: 2
  graceful_shutdown_timeout_seconds: 1
  upgrade_sock: {upgrade_sock}
{trusted}clients:
  - client_id: tv-app
    name: Living-room TV
    description: The TV in the living room, streaming films
    logo_url: "{TV_LOGO}"
    allowed_scopes: [openid, profile, email, offline_access]
{tv_policy}  - client_id: kiosk
    name: Lobby kiosk
    client_secret: ${{KIOSK_SECRET}}
    allowed_scopes: [openid, profile, offline_access]
{kiosk_policy}  - client_id: retired
    allowed_scopes: [openid]
    enabled: false
"#,
            discovery_url = if opts.b2c_layout {
                format!(
                    "  discovery_url: {}{B2C_DISCOVERY_PATH}\n",
                    issuer.trim_end_matches('/')
                )
            } else {
                String::new()
            },
            tv_policy = indent(opts.tv_policy.as_deref(), 4),
            kiosk_policy = indent(opts.kiosk_policy.as_deref(), 4),
            expires_in = opts.expires_in,
            interval = opts.interval,
            max_pending = opts.max_pending,
            upstream_timeout = opts.upstream_timeout,
            upgrade_sock = dir.path().join("upgrade.sock").display(),
            trusted = opts
                .trusted_proxies
                .as_ref()
                .map(|t| format!("  trusted_proxies: {t}\n"))
                .unwrap_or_default(),
            admin = admin_port
                .map(|p| format!(
                    "admin:\n  listen: 127.0.0.1:{{ADMIN_PORT_{p}}}\n  token: ${{DEVICEGATE_ADMIN_TOKEN}}\n"
                ))
                .unwrap_or_default()
                + &opts
                    .events
                    .as_ref()
                    .map(|e| format!("events:\n{e}"))
                    .unwrap_or_default(),
            tls = match (&opts.listen_tls, tls_port) {
                (Some((cert, key)), Some(p)) => format!(
                    "listen_tls:\n  listen: 127.0.0.1:{p}\n  cert_file: {cert}\n  key_file: {key}\n"
                ),
                _ => String::new(),
            },
            log = if opts.json_logs {
                "log:\n  format: json\n"
            } else {
                ""
            },
            ui = opts
                .ui
                .as_ref()
                .map(|u| format!("ui:\n{u}"))
                .unwrap_or_default(),
            // Tests open many grants from 127.0.0.1: one network. Those about the per-network
            // share set it themselves.
            limits = {
                let l = opts.limits.clone().unwrap_or_default();
                let share = if l.contains("pending_per_network") {
                    ""
                } else {
                    "  pending_per_network: 1000\n"
                };
                format!("limits:\n{share}{l}")
            },
            // With the IdP down, discovery cannot teach the token path: configure it.
            token_path = if opts.idp_down {
                "  token_path: /token\n"
            } else {
                ""
            },
        );
        let mut env = Env {
            admin_url: admin_port.map(|p| format!("http://127.0.0.1:{p}")),
            endpoints_url: endpoints_port.map(|p| format!("http://127.0.0.1:{p}")),
            tls_port,
            gate: Gate {
                url,
                http: http_client(),
            },
            dir,
            redis,
            port,
            config,
            _idp: idp,
            gateway: None,
        };
        env.gateway = Some(env.spawn_gateway(port, "gateway"));
        for p in admin_port.into_iter().chain(tls_port) {
            wait_for_port(p);
        }
        env
    }

    /// Starts the gateway binary listening on `port`, logging to `<name>.log`.
    fn spawn_gateway(&self, port: u16, name: &str) -> Proc {
        let mut proc = self.spawn_gateway_with(port, name, &[]);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            // A gateway that refused its configuration exits at once: say why, don't wait.
            if let Ok(Some(status)) = proc.0.try_wait() {
                let log = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")));
                panic!("the gateway exited ({status}): {}", log.unwrap_or_default());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the gateway did not listen on {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        proc
    }

    fn spawn_gateway_with(&self, port: u16, name: &str, args: &[&str]) -> Proc {
        let conf_path = self.dir.path().join(format!("{name}.yaml"));
        let config = self.config.replace("{LISTEN_PORT}", &port.to_string());
        // Another instance gets an admin port of its own.
        let config = match (self.admin_url.as_ref(), name) {
            (Some(url), "gateway") => {
                let p = url.rsplit(':').next().unwrap_or_default();
                config.replace(&format!("{{ADMIN_PORT_{p}}}"), p)
            }
            (Some(url), _) => {
                let p = url.rsplit(':').next().unwrap_or_default();
                let mine = self.instance_admin_port(name);
                config.replace(&format!("{{ADMIN_PORT_{p}}}"), &mine.to_string())
            }
            _ => config,
        };
        std::fs::write(&conf_path, config).expect("write config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_devicegate"))
            .arg("--config")
            .arg(&conf_path)
            .args(args)
            .env("KIOSK_SECRET", KIOSK_SECRET)
            .env("REDIS_PASSWORD", REDIS_PASSWORD)
            .env("DEVICEGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the gateway binary");
        Proc(child)
    }

    /// Zero-downtime upgrade: starts a new gateway with `--upgrade`, then sends SIGQUIT to the
    /// running one, which hands over its listening sockets and drains.
    pub fn upgrade_gateway(&mut self) {
        let sock = self.dir.path().join("upgrade.sock");
        let _ = std::fs::remove_file(&sock);
        let new = self.spawn_gateway_with(self.port, "gateway", &["--upgrade"]);
        let start = Instant::now();
        while !sock.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the new gateway did not open {sock:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut old = self.gateway.replace(new).expect("a running gateway");
        let pid = old.0.id().to_string();
        let sent = Command::new("kill").args(["-QUIT", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -QUIT {pid}");
        let start = Instant::now();
        while old.0.try_wait().expect("wait").is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the old gateway did not exit"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The admin port of the instance `name` (not the first gateway): the first free port
    /// found for it, written beside its configuration.
    pub fn instance_admin_port(&self, name: &str) -> u16 {
        let file = self.dir.path().join(format!("{name}.admin-port"));
        if let Some(p) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| t.parse().ok())
        {
            return p;
        }
        let p = free_port();
        std::fs::write(&file, p.to_string()).expect("write the admin port");
        p
    }

    /// The configuration file the instance `name` was started with (`gateway` for the first).
    pub fn config_path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(format!("{name}.yaml"))
    }

    /// Runs `devicegate --config <name's config> admin <args>`, with the environment the
    /// gateways have: (success, stdout, stderr).
    pub fn admin_cli(&self, name: &str, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_devicegate"))
            .arg("--config")
            .arg(self.config_path(name))
            .arg("admin")
            .args(args)
            .env("KIOSK_SECRET", KIOSK_SECRET)
            .env("REDIS_PASSWORD", REDIS_PASSWORD)
            .env("DEVICEGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
            .expect("run devicegate admin");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A second gateway instance on its own port, with the same configuration and store (as a
    /// load balancer would have behind the one public origin).
    pub fn start_instance(&self, name: &str) -> Instance {
        let port = free_port();
        let proc = self.spawn_gateway(port, name);
        Instance {
            gate: Gate {
                url: format!("http://127.0.0.1:{port}"),
                http: http_client(),
            },
            _proc: proc,
        }
    }

    /// Stops the gateway (SIGKILL: nothing is saved on the way out) and starts it again on the
    /// same port.
    /// Changes the configuration the next (re)started gateway reads.
    pub fn edit_config(&mut self, edit: impl FnOnce(&str) -> String) {
        self.config = edit(&self.config);
    }

    pub fn restart_gateway(&mut self) {
        drop(self.gateway.take());
        self.gateway = Some(self.spawn_gateway(self.port, "gateway"));
    }

    /// Sends SIGTERM to the gateway and waits (at most `limit`) for it to exit.
    pub fn terminate_gateway(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut proc = self.gateway.take().expect("the gateway runs");
        let pid = proc.0.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = proc.0.try_wait().expect("wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The gateway's log so far. Its lines are written by a thread of the gateway's own
    /// (`src/logging.rs`), a moment after the request that made them was answered, so this
    /// waits until the file has stopped growing for 300 ms (at most 10 s).
    pub fn gateway_log(&self) -> String {
        let path = self.dir.path().join("gateway.log");
        let size = || std::fs::metadata(&path).map_or(0, |m| m.len());
        let (start, mut last, mut still_since) = (Instant::now(), size(), Instant::now());
        while still_since.elapsed() < Duration::from_millis(300)
            && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(25));
            let now = size();
            if now != last {
                (last, still_since) = (now, Instant::now());
            }
        }
        std::fs::read_to_string(&path).unwrap_or_default()
    }

    /// The admin listener's `/metrics` text (needs `Options::admin`).
    pub async fn metrics(&self) -> String {
        let admin = self.admin_url.as_deref().expect("Options { admin: true }");
        let resp = self
            .http
            .get(format!("{admin}/metrics"))
            .send()
            .await
            .unwrap();
        resp.text().await.unwrap()
    }
}

impl Gate {
    /// GETs a path of this gateway.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("request to the gateway")
    }

    /// GETs a path of this gateway and returns its JSON body.
    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path).await.json().await.expect("a JSON body")
    }

    /// POSTs a form and returns (status, headers, JSON body or Null).
    pub async fn post_form(
        &self,
        path: &str,
        form: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        self.post_raw(path, "application/x-www-form-urlencoded", body.into_bytes())
            .await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.url))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request to the gateway");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body");
        (
            status,
            headers,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// A device authorization request; returns the JSON response (asserting 200). A
    /// confidential client sends its secret (`client_secret_post`).
    pub async fn authorize(&self, client_id: &str, scope: &str) -> Value {
        let mut form = vec![("client_id", client_id), ("scope", scope)];
        form.extend(secret_of(client_id).map(|s| ("client_secret", s)));
        let (status, headers, body) = self.post_form("/device/code", &form).await;
        assert_eq!(status, 200, "device authorization failed: {body}");
        assert_eq!(headers["cache-control"], "no-store");
        body
    }

    /// A refresh-token grant (RFC 6749 §6) of a public client at `token_path`, through the
    /// gateway (which passes it to the IdP).
    pub async fn refresh(
        &self,
        token_path: &str,
        client_id: &str,
        refresh_token: &str,
    ) -> (u16, Value) {
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", client_id),
        ];
        let (status, _, body) = self.post_form(token_path, &form).await;
        (status, body)
    }

    /// One device-code poll at the IdP's token endpoint (through the gateway), `/token`.
    pub async fn poll(&self, client_id: &str, device_code: &str) -> (u16, Value) {
        self.poll_at("/token", client_id, device_code).await
    }

    /// One device-code poll at `token_path` on the gateway, with the client's secret if it has
    /// one.
    pub async fn poll_at(
        &self,
        token_path: &str,
        client_id: &str,
        device_code: &str,
    ) -> (u16, Value) {
        let mut form = vec![
            ("grant_type", DEVICE_GRANT),
            ("device_code", device_code),
            ("client_id", client_id),
        ];
        form.extend(secret_of(client_id).map(|s| ("client_secret", s)));
        let (status, headers, body) = self.post_form(token_path, &form).await;
        assert_eq!(headers["cache-control"], "no-store", "{body}");
        (status, body)
    }

    /// Polls as a well-behaved device (at `interval`, +5 s after slow_down) until the answer is
    /// not `authorization_pending`, for at most `limit`.
    pub async fn poll_until_done(
        &self,
        client_id: &str,
        device_code: &str,
        mut interval: u64,
        limit: Duration,
    ) -> (u16, Value) {
        let start = Instant::now();
        loop {
            let (status, body) = self.poll(client_id, device_code).await;
            match body["error"].as_str() {
                Some("authorization_pending") if start.elapsed() < limit => {}
                Some("slow_down") => interval += 5,
                _ => return (status, body),
            }
            tokio::time::sleep(Duration::from_secs(interval)).await;
        }
    }
}

/// Starts the IdP with `issuer`, the test clients registered with the gateway's callback, on
/// `port` (0: any), keeping its files in `workdir`; returns it and its port.
fn start_idp(
    opts: &Options,
    issuer: &str,
    gateway: &str,
    port: u16,
    endpoints_port: Option<u16>,
    workdir: &Path,
) -> (Proc, u16) {
    let kind = opts.idp;
    let callback = format!("{gateway}/device/callback");
    let clients = json!([
        {"client_id": "tv-app", "redirect_uris": [callback]},
        {"client_id": "kiosk", "client_secret": KIOSK_SECRET, "redirect_uris": [callback]},
    ]);
    let (dir, alg) = match kind {
        Idp::OidcProvider | Idp::OidcProviderAt(_) => (idp_dir(), "RS256"),
        Idp::Keycloakish(alg) => {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/idp2");
            assert!(
                dir.join("node_modules/oauth2-mock-server").is_dir(),
                "the second test IdP is not installed: run `npm ci --prefix tests/idp2` (./scripts/test.sh does it)"
            );
            (dir, alg)
        }
        Idp::DjangoOauthToolkit => {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/idp3");
            assert!(
                dir.join(".venv/bin/python").exists(),
                "the third test IdP is not installed: python3 -m venv tests/idp3/.venv && tests/idp3/.venv/bin/pip install --require-hashes -r tests/idp3/requirements.txt (./scripts/test.sh does it)"
            );
            (dir, "RS256")
        }
        Idp::Glewlwyd(alg) => {
            assert!(
                Path::new("/usr/bin/glewlwyd").exists(),
                "the fourth test IdP is not installed: apt-get install glewlwyd (./scripts/test.sh does it)"
            );
            (
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/idp4"),
                alg,
            )
        }
    };
    let (program, script) = match kind {
        Idp::DjangoOauthToolkit => (".venv/bin/python", "idp.py"),
        Idp::Glewlwyd(_) => ("python3", "glewlwyd.py"),
        _ => ("node", "idp.js"),
    };
    let program = if program.starts_with('.') {
        dir.join(program).display().to_string()
    } else {
        program.to_string()
    };
    let mut child = Command::new(program)
        .arg(script)
        .current_dir(dir)
        .env("IDP_ISSUER", issuer)
        .env("IDP_PORT", port.to_string())
        .env("IDP_ALG", alg)
        .env("IDP_SESSION_AGE", opts.idp_session_age.to_string())
        .env(
            "IDP_DISCOVERY_PATH",
            if opts.b2c_layout {
                B2C_DISCOVERY_PATH
            } else {
                ""
            },
        )
        .env(
            "IDP_ENDPOINTS_PORT",
            endpoints_port.map(|p| p.to_string()).unwrap_or_default(),
        )
        .env("IDP_CLIENTS", clients.to_string())
        .env("IDP_WORKDIR", workdir)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(workdir.join("idp.log")).expect("idp.log"))
        .spawn()
        .expect("start the test IdP");
    let stdout = child.stdout.take().expect("idp stdout");
    let proc = Proc(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(p) = line.strip_prefix("IDP_READY ") {
                let _ = tx.send(p.trim().parse::<u16>().ok());
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(30))
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            panic!(
                "the test IdP exited or was not ready within 30 s; its log:\n{}",
                std::fs::read_to_string(workdir.join("idp.log")).unwrap_or_default()
            )
        });
    (proc, port)
}

/// A device authorization of the public client `tv-app` (scope `openid`) sent with `http` to
/// `base`, with an `X-Forwarded-For` if given: (status, body).
pub async fn device_request(http: &reqwest::Client, base: &str, xff: Option<&str>) -> (u16, Value) {
    let mut req = http
        .post(format!("{base}/device/code"))
        .form(&[("client_id", "tv-app"), ("scope", "openid")]);
    if let Some(v) = xff {
        req = req.header("x-forwarded-for", v);
    }
    let resp = req.send().await.expect("request to the gateway");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The claims of a JWT (not verified: for looking at what the IdP put in a token).
pub fn id_token_claims(jwt: &str) -> Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).expect("JWT payload");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&raw).expect("JSON claims")
}

/// YAML lines indented by `n` spaces ("" for none).
fn indent(lines: Option<&str>, n: usize) -> String {
    let pad = " ".repeat(n);
    lines
        .unwrap_or_default()
        .lines()
        .map(|l| format!("{pad}{l}\n"))
        .collect()
}

pub fn wait_for_port(port: u16) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listened on port {port} within 30 s (see the gateway or redis-server log)");
}

/// Runs the headless-Chromium driver (`tests/idp/browser.js`) and returns its JSON report.
pub async fn browser(args: Value) -> Value {
    require_prerequisites();
    assert!(
        Path::new("/usr/bin/chromium").exists() || std::env::var_os("CHROMIUM").is_some(),
        "Chromium is not installed: apt-get install chromium (./scripts/test.sh does it)"
    );
    let mut args = args;
    args["screenshots"] = json!(screenshot_dir(args["name"].as_str().unwrap_or("run")));
    // Every devicegate page a test visits is also checked with axe-core (WCAG 2.1 AA).
    if args.get("axe").is_none() {
        args["axe"] = json!(true);
    }
    let out = tokio::process::Command::new("node")
        .arg("browser.js")
        .arg(args.to_string())
        .current_dir(idp_dir())
        .output()
        .await
        .expect("run node tests/idp/browser.js");
    assert!(
        out.status.success(),
        "the browser driver failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let report: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("bad browser report ({e}): {stdout}"));
    assert_eq!(
        report["axe"],
        json!([]),
        "accessibility violations on devicegate's pages: {report}"
    );
    report
}

/// Screenshots of each test's pages go to target/browser-screenshots/<test>/ (not committed).
fn screenshot_dir(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/browser-screenshots")
        .join(name)
        .display()
        .to_string()
}

/// The verification page driven with plain HTTP (no browser): what a browser sends for
/// "enter code → Approve". Returns the approve response's status, `Location` and body, and the
/// browser's session cookie.
pub struct HttpLogin {
    pub status: u16,
    pub location: Option<String>,
    pub body: String,
    pub cookie: String,
}

impl Gate {
    /// "Enter code" on the verification page: returns the browser's session cookie and the
    /// consent form's CSRF token.
    pub async fn consent_via_http(&self, user_code: &str) -> (String, String) {
        let resp = self
            .http
            .get(format!("{}/device", self.url))
            .send()
            .await
            .expect("GET /device");
        let cookie = resp.headers()["set-cookie"]
            .to_str()
            .expect("cookie")
            .split(';')
            .next()
            .unwrap_or_default()
            .to_string();
        let consent = self
            .verification_form(&cookie, format!("action=lookup&user_code={user_code}"))
            .await
            .text()
            .await
            .expect("consent page");
        let csrf = consent
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_else(|| panic!("no CSRF token on the consent page: {consent}"))
            .to_string();
        (cookie, csrf)
    }

    /// POSTs the verification form as the browser holding `cookie`.
    pub async fn verification_form(&self, cookie: &str, body: String) -> reqwest::Response {
        self.http
            .post(format!("{}/device", self.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", cookie)
            .body(body)
            .send()
            .await
            .expect("POST /device")
    }

    /// "Approve" on a consent page this browser got earlier.
    pub async fn approve_consent(&self, user_code: &str, cookie: &str, csrf: &str) -> HttpLogin {
        let resp = self
            .verification_form(
                cookie,
                format!("action=approve&user_code={user_code}&csrf={csrf}"),
            )
            .await;
        HttpLogin {
            status: resp.status().as_u16(),
            location: resp
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body: resp.text().await.unwrap_or_default(),
            cookie: cookie.to_string(),
        }
    }

    pub async fn approve_via_http(&self, user_code: &str) -> HttpLogin {
        let (cookie, csrf) = self.consent_via_http(user_code).await;
        self.approve_consent(user_code, &cookie, &csrf).await
    }
}

/// Approves `user_code` as `bob` in headless Chromium starting at `gate`'s verification page.
pub async fn approve_in_browser(gate: &Gate, name: &str, user_code: &str) {
    let report = browser(json!({
        "name": name,
        "url": format!("{}/device", gate.url),
        "user_code": user_code,
        "action": "approve",
        "username": "bob",
    }))
    .await;
    assert_eq!(s(&report["title"]), "You're signed in", "{report}");
}

/// A real `redis-server` on a free loopback port, with a password and no persistence.
pub struct Redis {
    pub port: u16,
    proc: Option<Proc>,
}

impl Redis {
    pub fn start() -> Redis {
        let mut r = Redis {
            port: free_port(),
            proc: None,
        };
        r.start_again();
        r
    }

    /// (Re)starts the server on the same port, empty.
    pub fn start_again(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--requirepass", REDIS_PASSWORD, "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}): apt-get install redis-server (./scripts/test.sh does it)")
            });
        self.proc = Some(Proc(child));
        wait_for_port(self.port);
    }

    /// Kills the server: connections are refused until [`Redis::start_again`].
    pub fn stop(&mut self) {
        drop(self.proc.take());
    }

    fn signal(&self, signal: &str) {
        let pid = self.proc.as_ref().expect("redis is running").0.id();
        let ok = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {signal} {pid} failed");
    }

    /// Freezes the server (SIGSTOP): connections open, but nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

/// One request as a scripted upstream saw it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub request_line: String,
    pub path: String,
    pub headers: serde_json::Map<String, Value>,
    pub body: Vec<u8>,
}

/// What a scripted upstream answers.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Wait this long before answering (a slow upstream).
    pub delay: Duration,
}

impl Reply {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            content_type,
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    pub fn json(v: Value) -> Reply {
        Reply::new(200, "application/json", v.to_string())
    }
}

/// An HTTP client whose connections come from `ip` (any 127.x.y.z address works on Linux).
pub fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().expect("an IP address"))
        .build()
        .expect("http client")
}

/// Enters `code` on the verification page at `base` (`action=lookup`): (status, Retry-After,
/// page text).
pub async fn enter_code(
    http: &reqwest::Client,
    base: &str,
    code: &str,
) -> (u16, Option<reqwest::header::HeaderValue>, String) {
    let resp = http
        .post(format!("{base}/device"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("action=lookup&user_code={code}"))
        .send()
        .await
        .expect("request to the gateway");
    let status = resp.status().as_u16();
    let retry = resp.headers().get("retry-after").cloned();
    (status, retry, resp.text().await.unwrap_or_default())
}

/// nginx (Debian's nginx-light) on 127.0.0.1 as a reverse proxy in front of `upstream_port`,
/// appending the peer to `X-Forwarded-For` as load balancers do. Returns (process, port).
pub fn start_nginx(dir: &Path, upstream_port: u16) -> (Proc, u16) {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("nginx not found: apt-get install nginx-light (./scripts/test.sh installs it)");
    let port = free_port();
    let root = dir.join("nginx");
    std::fs::create_dir_all(root.join("tmp")).expect("nginx dir");
    let conf = format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {root}/tmp/body;
  proxy_temp_path {root}/tmp/proxy;
  fastcgi_temp_path {root}/tmp/fastcgi;
  uwsgi_temp_path {root}/tmp/uwsgi;
  scgi_temp_path {root}/tmp/scgi;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://127.0.0.1:{upstream_port};
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
  }}
}}
"#,
        root = root.display()
    );
    let path = root.join("nginx.conf");
    std::fs::write(&path, conf).expect("nginx.conf");
    let child = Command::new(nginx)
        .arg("-p")
        .arg(&root)
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let proc = Proc(child);
    wait_for_port(port);
    (proc, port)
}

/// A minimal HTTP/1.1 server on 127.0.0.1 that answers every request with `script(request)`
/// and closes the connection: an upstream whose every byte a test decides.
pub async fn scripted_upstream(
    script: impl Fn(&SeenRequest) -> Reply + Send + Sync + 'static,
) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let script = std::sync::Arc::new(script);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let script = script.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                let head_end = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let mut lines = head.split("\r\n");
                let request_line = lines.next().unwrap_or_default().to_string();
                let mut headers = serde_json::Map::new();
                let mut length = 0usize;
                for l in lines.filter(|l| !l.is_empty()) {
                    if let Some((k, v)) = l.split_once(':') {
                        let k = k.trim().to_ascii_lowercase();
                        if k == "content-length" {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        headers.insert(k, json!(v.trim()));
                    }
                }
                let mut body = buf[head_end..].to_vec();
                while body.len() < length {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
                let path = request_line
                    .split(' ')
                    .nth(1)
                    .unwrap_or("/")
                    .split('?')
                    .next()
                    .unwrap_or("/")
                    .to_string();
                let seen = SeenRequest {
                    request_line,
                    path,
                    headers,
                    body,
                };
                let reply = script(&seen);
                tokio::time::sleep(reply.delay).await;
                let head = format!(
                    "HTTP/1.1 {} X\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    reply.status,
                    reply.content_type,
                    reply.body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&reply.body).await;
            });
        }
    });
    port
}

/// Sends `request` as raw bytes to the gateway (no client-side normalisation of paths) and
/// returns (status, head, body). The request should carry `Connection: close`.
pub async fn raw_request(url: &str, request: &[u8]) -> (u16, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), sock.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the gateway did not answer (hang)");
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {}", String::from_utf8_lossy(&out)));
    let head = String::from_utf8_lossy(&out[..end]).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    (status, head, out[end + 4..].to_vec())
}

/// Runs the demo client (`examples/device_client.rs`, built by `cargo build --example
/// device_client`; scripts/test.sh does it first) against `issuer` with the scope
/// `openid profile offline_access`, approves the code it prints in the browser (`browser_args`
/// adds to the driver's arguments), and checks that it verified an ID token for `subject` and
/// refreshed. Returns what it printed after the approval.
pub async fn run_demo_client(
    issuer: &str,
    client_id: &str,
    secret: Option<&str>,
    browser_args: Value,
    subject: &str,
) -> String {
    let scope = "openid profile offline_access";
    let exe = Path::new(env!("CARGO_BIN_EXE_devicegate"))
        .parent()
        .expect("target dir")
        .join("examples/device_client");
    assert!(
        exe.exists(),
        "{} is missing: run `cargo build --example device_client` (./scripts/test.sh does)",
        exe.display()
    );
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.args([issuer, client_id, scope])
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    if let Some(secret) = secret {
        cmd.env("DEVICE_CLIENT_SECRET", secret);
    }
    let mut child = cmd.spawn().expect("run the demo client");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let mut url = None;
    let mut before = String::new();
    while let Some(line) = lines.next_line().await.expect("read") {
        if let Some(u) = line.trim().strip_prefix("(or open ") {
            url = u.strip_suffix(" directly)").map(str::to_string);
            break;
        }
        before.push_str(&line);
        before.push('\n');
    }
    let url =
        url.unwrap_or_else(|| panic!("the client printed no verification_uri_complete: {before}"));
    let mut args = json!({"url": url, "action": "approve"});
    if let (Some(a), Some(extra)) = (args.as_object_mut(), browser_args.as_object()) {
        a.extend(extra.clone());
    }
    let report = browser(args).await;
    assert_eq!(s(&report["title"]), "You're signed in", "{report}");
    let mut rest = String::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read") {
            rest.push_str(&line);
            rest.push('\n');
        }
    })
    .await;
    assert!(read.is_ok(), "the client did not finish: {rest}");
    assert!(rest.contains("Approved. Tokens received"), "{rest}");
    assert!(child.wait().await.expect("wait").success(), "{rest}");
    let verified = format!("id_token: verified, signed in as: \"{subject}\"");
    assert!(rest.contains(&verified), "{rest}");
    assert!(rest.contains("Refreshed: a new access token"), "{rest}");
    rest
}
