//! Device clients nobody here wrote, run unchanged against the gateway: Python's Authlib and
//! oauthlib (requests-oauthlib), oidc-agent, and a curl script that follows RFC 8628 literally.
//! Each driver (`tests/clients/`) prints `USER_CODE <code> <verification_uri> [<complete>]`,
//! waits while a headless Chromium approves, then refreshes the tokens with the same library
//! and prints one JSON line with what it got. The Rust `openidconnect` client is the demo client
//! (`device_flow::demo_device_client_completes_a_login` and `interop`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::{browser, s, Env, Idp, Options, KIOSK_SECRET};

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// One run of a client driver.
struct Driver<'a> {
    name: &'a str,
    program: PathBuf,
    script: Option<PathBuf>,
    client_id: &'a str,
    secret: Option<&'a str>,
    env: Vec<(&'a str, &'a str)>,
    /// Wait this long after the code is shown before approving.
    approve_after: Duration,
    /// More arguments for the browser driver (e.g. `idp_action` for an IdP without a login
    /// page).
    browser: Value,
}

impl<'a> Driver<'a> {
    /// A Python client script run by the venv's interpreter.
    fn python(name: &'a str, script: &str, client_id: &'a str) -> Self {
        let mut d = Self::program(name, &python(), client_id);
        d.script = Some(clients_dir().join(script));
        d
    }

    /// A driver that is a program of its own (shell scripts).
    fn program(name: &'a str, program: &Path, client_id: &'a str) -> Self {
        Self {
            name,
            program: program.to_path_buf(),
            script: None,
            client_id,
            secret: None,
            env: Vec::new(),
            approve_after: Duration::ZERO,
            browser: json!({}),
        }
    }

    fn secret(mut self, secret: &'a str) -> Self {
        self.secret = Some(secret);
        self
    }

    /// Runs the driver against `issuer` to the end: approves its code in the browser when it
    /// prints it, and returns its final JSON line.
    async fn run(self, issuer: &str) -> Value {
        let name = self.name;
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(self.script.iter())
            .args([issuer, self.client_id])
            .env("DG_SCOPE", "openid profile offline_access")
            .env("DG_TIMEOUT", "90")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(secret) = self.secret {
            cmd.env("DG_CLIENT_SECRET", secret);
        }
        cmd.envs(self.env.iter().copied());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.program.display()));
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let err_task = tokio::spawn(async move {
            let mut buf = String::new();
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut buf).await;
            buf
        });
        let mut lines = BufReader::new(stdout).lines();
        let mut last = String::new();
        let run = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.strip_prefix("USER_CODE ") {
                    tokio::time::sleep(self.approve_after).await;
                    let parts: Vec<&str> = rest.split_whitespace().collect();
                    // Type the code on verification_uri (as a person reading a TV would) when
                    // the client did not get a complete URI to show.
                    let mut args = match parts.as_slice() {
                        [_, _, complete] => json!({"url": complete}),
                        [code, uri, ..] => json!({"url": uri, "user_code": code}),
                        _ => panic!("bad USER_CODE line from {name}: {line}"),
                    };
                    args["name"] = json!(format!("client-{name}"));
                    args["action"] = json!("approve");
                    args["username"] = json!(format!("{name}-user"));
                    if let (Some(a), Some(extra)) = (args.as_object_mut(), self.browser.as_object())
                    {
                        a.extend(extra.clone());
                    }
                    let report = browser(args).await;
                    assert_eq!(s(&report["title"]), "You're signed in", "{name}: {report}");
                } else if !line.trim().is_empty() {
                    last = line;
                }
            }
            child.wait().await.unwrap()
        };
        let status = tokio::time::timeout(Duration::from_secs(120), run)
            .await
            .unwrap_or_else(|_| panic!("{name} did not finish within 120 s"));
        let stderr = err_task.await.unwrap_or_default();
        let report: Value = serde_json::from_str(&last)
            .unwrap_or_else(|e| panic!("{name} printed no JSON result ({e}): {last}\n{stderr}"));
        assert!(
            status.success() && report["ok"] == true,
            "{name} failed: {report}\n{stderr}"
        );
        assert_eq!(report["refresh_ok"], true, "{name}: {report}");
        report
    }
}

fn python() -> PathBuf {
    let py = clients_dir().join(".venv/bin/python");
    assert!(
        py.exists(),
        "the Python clients are not installed: python3 -m venv tests/clients/.venv && \
         tests/clients/.venv/bin/pip install --require-hashes -r tests/clients/requirements.txt \
         (./scripts/test.sh does it)"
    );
    py
}

fn oidc_agent_installed() {
    assert!(
        Path::new("/usr/bin/oidc-gen").exists(),
        "oidc-agent is not installed: apt-get install oidc-agent-cli (./scripts/test.sh does it)"
    );
}

fn script(name: &str) -> PathBuf {
    clients_dir().join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authlib_public_and_confidential() {
    let env = Env::start(Options::default()).await;
    let r = Driver::python("authlib", "authlib_device.py", "tv-app")
        .run(&env.url)
        .await;
    assert_eq!(r["id_token_verified"], true, "{r}");
    assert_eq!(s(&r["sub"]), "authlib-user", "{r}");
    Driver::python("authlib", "authlib_device.py", "kiosk")
        .secret(KIOSK_SECRET)
        .run(&env.url)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauthlib_public_and_confidential() {
    let env = Env::start(Options::default()).await;
    let r = Driver::python("oauthlib", "oauthlib_device.py", "tv-app")
        .run(&env.url)
        .await;
    assert_eq!(s(&r["sub"]), "oauthlib-user", "{r}");
    Driver::python("oauthlib", "oauthlib_device.py", "kiosk")
        .secret(KIOSK_SECRET)
        .run(&env.url)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_agent() {
    oidc_agent_installed();
    let env = Env::start(Options::default()).await;
    let r = Driver::program("oidc-agent", &script("oidc_agent.sh"), "kiosk")
        .secret(KIOSK_SECRET)
        .run(&env.url)
        .await;
    assert_eq!(s(&r["sub"]), "oidc-agent-user", "{r}");
}

/// oidc-agent adds 1 s after `slow_down` where §3.5 asks for 5: after one poll too many (sent
/// by the driver with the agent's device code) it keeps polling faster than the grown
/// interval. It must still get its tokens once they are approved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_agent_after_a_slow_down_it_under_honours() {
    oidc_agent_installed();
    let env = Env::start(Options {
        interval: 3,
        ..Options::default()
    })
    .await;
    let mut d =
        Driver::program("oidc-agent", &script("oidc_agent.sh"), "kiosk").secret(KIOSK_SECRET);
    d.env.push(("DG_POLL_TOO_FAST", "1"));
    // Approve only once the extra poll has made the gateway say slow_down and the agent has
    // polled again (its first poll comes after 3 s).
    d.approve_after = Duration::from_secs(8);
    d.run(&env.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_following_rfc_8628_literally() {
    let env = Env::start(Options::default()).await;
    let curl = script("rfc8628_curl.sh");
    Driver::program("curl", &curl, "tv-app").run(&env.url).await;
    Driver::program("curl", &curl, "kiosk")
        .secret(KIOSK_SECRET)
        .run(&env.url)
        .await;
}

/// The same clients against a second real IdP, Glewlwyd (issuer `/api/oidc`, ES256 ID tokens,
/// one-time refresh tokens, its login web app and consent screen), each approved by the same
/// user: every client that reports the subject reports the same one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_with_glewlwyd() {
    oidc_agent_installed();
    let env = Env::start(Options {
        idp: Idp::Glewlwyd("ES256"),
        ..Options::default()
    })
    .await;
    let issuer = format!("{}/api/oidc", env.url);
    let drivers = [
        Driver::python("authlib", "authlib_device.py", "tv-app"),
        Driver::python("oauthlib", "oauthlib_device.py", "kiosk").secret(KIOSK_SECRET),
        Driver::program("oidc-agent", &script("oidc_agent.sh"), "kiosk").secret(KIOSK_SECRET),
        Driver::program("curl", &script("rfc8628_curl.sh"), "tv-app"),
    ];
    let mut subjects = Vec::new();
    for mut d in drivers {
        d.browser = json!({"username": "alice"});
        // Glewlwyd has no `offline_access` scope (it gives refresh tokens without one) and
        // drops it from the granted scope, which oauthlib reports as an error.
        d.env.push(("DG_SCOPE", "openid profile"));
        // Nor ID tokens in refresh answers (optional), where oidc-agent looks for one.
        d.env.push(("DG_ID_TOKEN_ON_REFRESH", "0"));
        let name = d.name;
        let r = d.run(&issuer).await;
        if let Some(sub) = r.get("sub").and_then(Value::as_str) {
            subjects.push((name, sub.to_string()));
        }
    }
    assert!(!subjects.is_empty());
    assert!(
        subjects
            .iter()
            .all(|(_, sub)| *sub == subjects[0].1 && !sub.is_empty()),
        "{subjects:?}"
    );
}
