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

use crate::common::{browser, s, Env, Options, KIOSK_SECRET};

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Runs one driver to the end: approves its code in the browser when it prints it, and returns
/// its final JSON line.
async fn run_driver(
    name: &str,
    program: &Path,
    args: &[&str],
    env: &Env,
    secret: Option<&str>,
    extra_env: &[(&str, &str)],
    approve_after: Duration,
) -> Value {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("DG_ISSUER", &env.url)
        .env("DG_SCOPE", "openid profile offline_access")
        .env("DG_TIMEOUT", "90")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(secret) = secret {
        cmd.env("DG_CLIENT_SECRET", secret);
    }
    cmd.envs(extra_env.iter().copied());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
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
                tokio::time::sleep(approve_after).await;
                let parts: Vec<&str> = rest.split_whitespace().collect();
                // Type the code on verification_uri (as a person reading a TV would) when the
                // client did not get a complete URI to show.
                let args = match parts.as_slice() {
                    [_, _, complete] => json!({"url": complete}),
                    [code, uri, ..] => json!({"url": uri, "user_code": code}),
                    _ => panic!("bad USER_CODE line from {name}: {line}"),
                };
                let mut args = args;
                args["name"] = json!(format!("client-{name}"));
                args["action"] = json!("approve");
                args["username"] = json!(format!("{name}-user"));
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
    if let Some(sub) = report.get("sub") {
        assert_eq!(s(sub), format!("{name}-user"), "{name}: {report}");
    }
    report
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authlib_public_and_confidential() {
    let env = Env::start(Options::default()).await;
    let script = clients_dir().join("authlib_device.py");
    let script = script.to_str().unwrap();
    let r = run_driver(
        "authlib",
        &python(),
        &[script, &env.url, "tv-app"],
        &env,
        None,
        &[],
        Duration::ZERO,
    )
    .await;
    assert_eq!(r["id_token_verified"], true, "{r}");
    run_driver(
        "authlib",
        &python(),
        &[script, &env.url, "kiosk"],
        &env,
        Some(KIOSK_SECRET),
        &[],
        Duration::ZERO,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauthlib_public_and_confidential() {
    let env = Env::start(Options::default()).await;
    let script = clients_dir().join("oauthlib_device.py");
    let script = script.to_str().unwrap();
    run_driver(
        "oauthlib",
        &python(),
        &[script, &env.url, "tv-app"],
        &env,
        None,
        &[],
        Duration::ZERO,
    )
    .await;
    run_driver(
        "oauthlib",
        &python(),
        &[script, &env.url, "kiosk"],
        &env,
        Some(KIOSK_SECRET),
        &[],
        Duration::ZERO,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_agent() {
    assert!(
        Path::new("/usr/bin/oidc-gen").exists(),
        "oidc-agent is not installed: apt-get install oidc-agent-cli (./scripts/test.sh does it)"
    );
    let env = Env::start(Options::default()).await;
    let script = clients_dir().join("oidc_agent.sh");
    run_driver(
        "oidc-agent",
        &script,
        &[&env.url, "kiosk"],
        &env,
        Some(KIOSK_SECRET),
        &[],
        Duration::ZERO,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_following_rfc_8628_literally() {
    let env = Env::start(Options::default()).await;
    let script = clients_dir().join("rfc8628_curl.sh");
    run_driver(
        "curl",
        &script,
        &[&env.url, "tv-app"],
        &env,
        None,
        &[],
        Duration::ZERO,
    )
    .await;
    run_driver(
        "curl",
        &script,
        &[&env.url, "kiosk"],
        &env,
        Some(KIOSK_SECRET),
        &[],
        Duration::ZERO,
    )
    .await;
}

/// oidc-agent adds 1 s after `slow_down` where §3.5 asks for 5: after one poll too many (sent
/// by the driver with the agent's device code) it keeps polling faster than the grown
/// interval. It must still get its tokens once they are approved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_agent_after_a_slow_down_it_under_honours() {
    assert!(
        Path::new("/usr/bin/oidc-gen").exists(),
        "oidc-agent is not installed: apt-get install oidc-agent-cli (./scripts/test.sh does it)"
    );
    let env = Env::start(Options {
        interval: 3,
        ..Options::default()
    })
    .await;
    let script = clients_dir().join("oidc_agent.sh");
    let extra = [("DG_POLL_TOO_FAST", "1")];
    let args = [env.url.as_str(), "kiosk"];
    // Approve only once the extra poll has made the gateway say slow_down and the agent has
    // polled again (its first poll comes after 3 s).
    let wait = Duration::from_secs(8);
    run_driver(
        "oidc-agent",
        &script,
        &args,
        &env,
        Some(KIOSK_SECRET),
        &extra,
        wait,
    )
    .await;
}
