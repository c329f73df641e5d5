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

pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

fn idp_dir() -> PathBuf {
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

fn free_port() -> u16 {
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
}

impl Default for Options {
    fn default() -> Self {
        Self {
            expires_in: 600,
            interval: 1,
            max_pending: 1000,
            idp_down: false,
            upstream_port: None,
        }
    }
}

/// A running IdP and gateway.
pub struct Env {
    pub url: String,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
    _idp: Option<Proc>,
    _gateway: Proc,
}

pub const KIOSK_SECRET: &str = "kiosk-secret-value";

impl Env {
    pub async fn start(opts: Options) -> Env {
        require_prerequisites();
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let (idp, idp_port) = if let Some(p) = opts.upstream_port {
            (None, p)
        } else if opts.idp_down {
            (None, free_port())
        } else {
            let (p, idp_port) = start_idp(&url);
            (Some(p), idp_port)
        };
        let config = format!(
            r#"
listen: 127.0.0.1:{port}
public_url: {url}
upstream:
  address: 127.0.0.1:{idp_port}
  issuer: {url}
  timeout: 5
{token_path}device:
  expires_in: {expires_in}
  interval: {interval}
store:
  max_pending: {max_pending}
server:
  threads: 2
  grace_period_seconds: 0
  graceful_shutdown_timeout_seconds: 1
clients:
  - client_id: tv-app
    name: Living-room TV
    allowed_scopes: [openid, profile, email, offline_access]
  - client_id: kiosk
    name: Lobby kiosk
    client_secret: ${{KIOSK_SECRET}}
    allowed_scopes: [openid, profile]
  - client_id: retired
    allowed_scopes: [openid]
    enabled: false
"#,
            expires_in = opts.expires_in,
            interval = opts.interval,
            max_pending = opts.max_pending,
            // With the IdP down, discovery cannot teach the token path: configure it.
            token_path = if opts.idp_down {
                "  token_path: /token\n"
            } else {
                ""
            },
        );
        let conf_path = dir.path().join("devicegate.yaml");
        std::fs::write(&conf_path, config).expect("write config");
        let log = std::fs::File::create(dir.path().join("gateway.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_devicegate"))
            .arg("--config")
            .arg(&conf_path)
            .env("KIOSK_SECRET", KIOSK_SECRET)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the gateway binary");
        let gateway = Proc(child);
        wait_for_port(port);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .expect("http client");
        Env {
            url,
            http,
            dir,
            _idp: idp,
            _gateway: gateway,
        }
    }

    pub fn gateway_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
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

    /// A device authorization request; returns the JSON response (asserting 200).
    pub async fn authorize(&self, client_id: &str, scope: &str) -> Value {
        let (status, headers, body) = self
            .post_form(
                "/device/code",
                &[("client_id", client_id), ("scope", scope)],
            )
            .await;
        assert_eq!(status, 200, "device authorization failed: {body}");
        assert_eq!(headers["cache-control"], "no-store");
        body
    }

    /// One device-code poll at the IdP's token endpoint (through the gateway).
    pub async fn poll(&self, client_id: &str, device_code: &str) -> (u16, Value) {
        let (status, headers, body) = self
            .post_form(
                "/token",
                &[
                    ("grant_type", DEVICE_GRANT),
                    ("device_code", device_code),
                    ("client_id", client_id),
                ],
            )
            .await;
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

/// Starts the IdP with issuer `issuer`; returns it and its port.
fn start_idp(issuer: &str) -> (Proc, u16) {
    let clients = json!([
        {"client_id": "tv-app", "redirect_uris": [format!("{issuer}/device/callback")]},
        {"client_id": "kiosk", "client_secret": KIOSK_SECRET, "redirect_uris": [format!("{issuer}/device/callback")]},
    ]);
    let mut child = Command::new("node")
        .arg("idp.js")
        .current_dir(idp_dir())
        .env("IDP_ISSUER", issuer)
        .env("IDP_PORT", "0")
        .env("IDP_CLIENTS", clients.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start node tests/idp/idp.js");
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
        .expect("the test IdP did not start within 30 s (see tests/idp/idp.js)");
    (proc, port)
}

fn wait_for_port(port: u16) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the gateway did not listen on port {port} within 30 s");
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
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad browser report ({e}): {stdout}"))
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

impl Env {
    pub async fn approve_via_http(&self, user_code: &str) -> HttpLogin {
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
        let form = |body: String| {
            self.http
                .post(format!("{}/device", self.url))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("cookie", cookie.clone())
                .body(body)
        };
        let consent = form(format!("action=lookup&user_code={user_code}"))
            .send()
            .await
            .expect("POST lookup")
            .text()
            .await
            .expect("consent page");
        let csrf = consent
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_else(|| panic!("no CSRF token on the consent page: {consent}"))
            .to_string();
        let resp = form(format!("action=approve&user_code={user_code}&csrf={csrf}"))
            .send()
            .await
            .expect("POST approve");
        HttpLogin {
            status: resp.status().as_u16(),
            location: resp
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body: resp.text().await.unwrap_or_default(),
            cookie,
        }
    }
}
