//! Operations: the admin listener (`/healthz`, `/readyz`, `/metrics`) after a full flow, the
//! JSON audit log, and a clean exit on SIGTERM in the middle of a flow.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{browser, s, Env, Options};

async fn get(env: &Env, path: &str) -> (u16, String) {
    let url = format!("{}{path}", env.admin_url.as_deref().unwrap());
    let resp = env.http.get(url).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// The value of one sample line of the Prometheus text format.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_audit_log_after_a_full_flow() {
    let env = Env::start(Options {
        admin: true,
        json_logs: true,
        ..Options::default()
    })
    .await;
    assert_eq!(get(&env, "/healthz").await, (200, "ok\n".to_string()));
    let (status, body) = get(&env, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready, json!({"store": "ok", "upstream": "ok"}));

    let dev = env.authorize("tv-app", "openid profile").await;
    let device_code = s(&dev["device_code"]).to_string();
    let (_, body) = env.poll("tv-app", &device_code).await;
    assert_eq!(s(&body["error"]), "authorization_pending");
    let report = browser(json!({
        "name": "operations", "url": dev["verification_uri_complete"],
        "action": "approve", "username": "frank",
    }))
    .await;
    assert_eq!(s(&report["title"]), "You're signed in", "{report}");
    let (status, tokens) = env
        .poll_until_done("tv-app", &device_code, 1, Duration::from_secs(10))
        .await;
    assert_eq!(status, 200, "{tokens}");

    let (status, metrics) = get(&env, "/metrics").await;
    assert_eq!(status, 200);
    let m = |series: &str| sample(&metrics, series);
    assert_eq!(
        m(r#"devicegate_device_authorizations_total{client_id="tv-app",result="issued"}"#),
        1.0
    );
    assert!(m(r#"devicegate_polls_total{outcome="authorization_pending"}"#) >= 1.0);
    assert_eq!(m(r#"devicegate_polls_total{outcome="delivered"}"#), 1.0);
    assert_eq!(
        m(r#"devicegate_verifications_total{outcome="approved"}"#),
        1.0
    );
    assert_eq!(
        m(r#"devicegate_upstream_request_seconds_count{operation="token",result="ok"}"#),
        1.0
    );
    assert!(
        m(r#"devicegate_store_operation_seconds_count{operation="update",result="ok"}"#) >= 3.0
    );
    assert_eq!(m("devicegate_pending_grants"), 1.0);
    // The metrics are not on the public port: there the path belongs to the IdP.
    let public = env.get("/metrics").await;
    assert_eq!(public.status(), 404);

    // One JSON audit event per step of the grant's life, all naming the same grant, and
    // never a code, a token or a secret.
    let log = env.gateway_log();
    let events: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "audit")
        .collect();
    let names: Vec<&str> = events.iter().map(|e| s(&e["event"])).collect();
    assert_eq!(
        names,
        ["created", "code_entered", "approved", "delivered"],
        "{log}"
    );
    let grant = s(&events[0]["grant"]);
    assert!(grant.len() >= 16);
    for e in &events {
        assert_eq!(s(&e["grant"]), grant, "{e}");
        assert_eq!(s(&e["client_id"]), "tv-app", "{e}");
        assert_eq!(s(&e["client_ip"]), "127.0.0.1", "{e}");
    }
    assert_eq!(s(&events[2]["sub"]), "frank");
    for secret in [
        device_code.as_str(),
        s(&tokens["access_token"]),
        s(&tokens["id_token"]),
        &s(&dev["user_code"]).replace('-', ""),
    ] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_an_unreachable_upstream() {
    let env = Env::start(Options {
        admin: true,
        idp_down: true,
        ..Options::default()
    })
    .await;
    assert_eq!(get(&env, "/healthz").await.0, 200);
    let (status, body) = get(&env, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready, json!({"store": "ok", "upstream": "unavailable"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_pending_flow_exits_cleanly() {
    // The fixture's grace: grace_period_seconds 2, graceful_shutdown_timeout_seconds 1.
    let mut env = Env::start(Options::default()).await;
    let dev = env.authorize("tv-app", "openid").await;
    let (_, body) = env.poll("tv-app", s(&dev["device_code"])).await;
    assert_eq!(s(&body["error"]), "authorization_pending");
    let status = env.terminate_gateway(Duration::from_secs(15));
    let status = status.expect("the gateway did not exit after SIGTERM");
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_and_a_tls_upstream_with_a_private_ca() {
    let certs_dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = crate::common::test_certificates(certs_dir.path());
    let env = Env::start(Options {
        listen_tls: Some((cert, key)),
        ..Options::default()
    })
    .await;
    let tls_port = env.tls_port.unwrap();

    // Devices reach the gateway over TLS (rustls), certificate verified against the test CA.
    let ca_cert = reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
    let https = reqwest::Client::builder()
        .add_root_certificate(ca_cert)
        .build()
        .unwrap();
    let disc: Value = https
        .get(format!(
            "https://localhost:{tls_port}/.well-known/openid-configuration"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        s(&disc["device_authorization_endpoint"]),
        format!("{}/device/code", env.url)
    );
    let resp = https
        .post(format!("https://localhost:{tls_port}/device/code"))
        .form(&[("client_id", "tv-app")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A second gateway whose upstream is that TLS listener: with upstream.ca_file naming the
    // private CA its pass-through verifies and works; without it the certificate is refused.
    for (ca_line, expect) in [(format!("  ca_file: {ca}\n"), 200), (String::new(), 502)] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = certs_dir.path().join(format!("front-{expect}.yaml"));
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\npublic_url: {url}\nupstream:\n  address: 127.0.0.1:{tls_port}\n  issuer: {url}\n  tls: true\n  token_path: /token\n{ca_line}server:\n  grace_period_seconds: 1\n  graceful_shutdown_timeout_seconds: 1\nclients:\n  - client_id: tv-app\n",
                url = env.url
            ),
        )
        .unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_devicegate"))
            .arg("--config")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let _front = crate::common::Proc(child);
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "front gateway did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let resp = env
            .http
            .get(format!("http://127.0.0.1:{port}/jwks"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), expect, "ca_file {ca_line:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_with_the_memory_store_answers_in_flight_devices_without_5xx() {
    let mut env = Env::start(Options::default()).await;
    let dev = env.authorize("tv-app", "openid").await;
    tokio::task::block_in_place(|| env.upgrade_gateway());
    // The new process never saw the grant: the device learns to start over, not a 5xx.
    let (status, body) = env.poll("tv-app", s(&dev["device_code"])).await;
    assert_eq!(
        (status, s(&body["error"])),
        (400, "invalid_grant"),
        "{body}"
    );
    env.authorize("tv-app", "openid").await;
}

/// Start-up compiles and tries the page templates once (they used to be built twice: once to
/// check the configuration, once for the gateway).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_are_built_once_at_start_up() {
    let env = Env::start(Options::default()).await;
    env.get("/device").await;
    let log = env.gateway_log();
    let built = log
        .matches("verification pages compiled and tried in every language")
        .count();
    assert_eq!(built, 1, "{log}");
}

/// A taken port is a start-up failure a supervisor sees (exit status 1 and the reason), not a
/// process that runs on listening to nothing.
#[test]
fn a_taken_port_fails_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("busy.yaml");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{port}\npublic_url: http://127.0.0.1:{port}\nupstream:\n  address: 127.0.0.1:9\n  issuer: http://127.0.0.1:{port}\nclients:\n  - client_id: tv\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_devicegate"))
        .arg("--config")
        .arg(&conf)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("listen: cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
    drop(taken);
}

/// The log is written by a thread of its own (`src/logging.rs`), so an audit line is queued
/// when its request is answered and written a moment later. A SIGTERM in the middle of a burst
/// of device authorizations must still leave a `created` line for every grant a device
/// received: the process writes out its queue before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_audit_line_is_lost_when_the_gateway_stops_mid_burst() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let mut env = Env::start(Options {
        json_logs: true,
        max_pending: 100_000,
        limits: Some(
            "  device_requests_per_ip_per_minute: 0\n  device_requests_per_client_per_minute: 0\n  pending_per_network: 0\n"
                .into(),
        ),
        ..Options::default()
    })
    .await;
    let url = format!("{}/device/code", env.url);
    let issued = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (url, issued, sent, stop) = (url.clone(), issued.clone(), sent.clone(), stop.clone());
        senders.spawn(async move {
            let http = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                sent.fetch_add(1, Ordering::Relaxed);
                let req = http
                    .post(&url)
                    .form(&[("client_id", "tv-app"), ("scope", "openid")]);
                let Ok(resp) = req.send().await else { break };
                let ok = resp.status() == 200;
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                if ok && body["device_code"].is_string() {
                    issued.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    // SIGTERM while all sixteen are still sending.
    let started = std::time::Instant::now();
    while issued.load(Ordering::Relaxed) < 1500 && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = tokio::task::block_in_place(|| env.terminate_gateway(Duration::from_secs(20)));
    stop.store(true, Ordering::Relaxed);
    while senders.join_next().await.is_some() {}
    let status = status.expect("the gateway did not exit after SIGTERM");
    assert!(status.success(), "exit status {status}");

    let (issued, sent) = (issued.load(Ordering::Relaxed), sent.load(Ordering::Relaxed));
    assert!(
        issued >= 1500,
        "only {issued} grants were issued before the stop"
    );
    let log = env.gateway_log();
    let created = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "audit" && v["event"] == "created")
        .count();
    // Every grant a device got has its line; a request answered as the connection closed may
    // have a line its device never read, but no line is made up.
    assert!(
        (issued..=sent).contains(&created),
        "{created} created lines for {issued} grants issued ({sent} requests sent)"
    );
    // The gateway's last line, logged after the server stopped and before the queue was
    // written out: the process did not exit with lines still queued.
    let last = log
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert!(last.contains("devicegate stopped"), "last line: {last}");
}
