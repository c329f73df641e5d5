//! The operators' controls against real components: the admin API and its CLI on running
//! gateways, two instances sharing a run-time kill switch through a real `redis-server`, and
//! security events checked by a receiver that verifies their signatures with an independent
//! Standard Webhooks library (`standardwebhooks` from npm, tests/idp/webhook-receiver.js).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// A webhook secret as Standard Webhooks writes them (`whsec_` + base64 of 24 bytes).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A real webhook receiver (node + the `standardwebhooks` library).
struct Receiver {
    _proc: Proc,
    url: String,
    record: PathBuf,
}

impl Receiver {
    /// `mode`: `ok`, or `hold` (no answer until [`Receiver::release`]); `tls`: (cert, key).
    fn start(dir: &std::path::Path, name: &str, mode: &str, tls: Option<(&str, &str)>) -> Self {
        let record = dir.join(format!("{name}.jsonl"));
        std::fs::write(&record, "").expect("record file");
        let mut cmd = Command::new("node");
        cmd.arg("webhook-receiver.js")
            .current_dir(idp_dir())
            .env("WEBHOOK_SECRET", SECRET)
            .env("RECORD", &record)
            .env("MODE", mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some((cert, key)) = tls {
            cmd.env("TLS_CERT", cert).env("TLS_KEY", key);
        }
        let mut child = cmd.spawn().expect(
            "node tests/idp/webhook-receiver.js (run ./scripts/test.sh: npm ci in tests/idp)",
        );
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the receiver's port");
        let port: u16 = line.trim().parse().unwrap_or_else(|_| {
            panic!("the receiver did not start: {line:?} (npm ci in tests/idp)")
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        Self {
            _proc: Proc(child),
            url: format!("{scheme}://127.0.0.1:{port}"),
            record,
        }
    }

    fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    /// Waits (at most 30 s, a guard against a hang, not a timing claim) until `done` holds for
    /// the events received.
    async fn wait_until(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let events = self.events();
            if done(&events) {
                return events;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{what}: the receiver got {events:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn release(&self) {
        let http = reqwest::Client::new();
        http.get(format!("{}/release", self.url))
            .send()
            .await
            .expect("release");
    }

    async fn stats(&self) -> Value {
        reqwest::get(format!("{}/stats", self.url))
            .await
            .expect("stats")
            .json()
            .await
            .expect("JSON")
    }
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

/// A `events:` section sending to these receivers (url, optional `ca_file`).
fn events_section(hooks: &[(&str, Option<&str>)], extra: &str) -> String {
    let mut s = String::from("  webhooks:\n");
    for (url, ca) in hooks {
        s.push_str(&format!(
            "    - url: {url}/hook\n      secret: ${{WEBHOOK_SECRET}}\n"
        ));
        if let Some(ca) = ca {
            s.push_str(&format!("      ca_file: {ca}\n"));
        }
    }
    s.push_str(extra);
    s
}

async fn admin(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, Option<String>, Value) {
    let http = reqwest::Client::new();
    let mut req = match method {
        "POST" => http.post(format!("{base}{path}")),
        _ => http.get(format!("{base}{path}")),
    };
    if let Some(t) = token {
        req = req.header("authorization", t);
    }
    let resp = req.send().await.expect("admin API");
    let status = resp.status().as_u16();
    let auth = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (status, auth, resp.json().await.unwrap_or(Value::Null))
}

/// A device authorization request of the public client `tv-app`.
async fn tv_device_request(gate: &Gate) -> (u16, reqwest::header::HeaderMap, Value) {
    gate.post_form(
        "/device/code",
        &[("client_id", "tv-app"), ("scope", "openid")],
    )
    .await
}

/// Waits (at most 30 s, a guard against a hang) until the metrics have a line starting with
/// `series`.
async fn wait_for_series(env: &Env, series: &str) -> String {
    let start = Instant::now();
    loop {
        let m = env.metrics().await;
        if m.lines().any(|l| l.starts_with(series)) {
            return m;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no {series} in {m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A gateway with the admin listener and API, and the listener's URL.
async fn with_admin() -> (Env, String) {
    let env = Env::start(Options {
        admin: true,
        ..Options::default()
    })
    .await;
    let base = env.admin_url.clone().expect("the admin listener");
    (env, base)
}

fn bearer() -> String {
    format!("Bearer {ADMIN_TOKEN}")
}

/// No token, a wrong one (also of the same length, and in another scheme): 401 with
/// `WWW-Authenticate`, and nothing done; the health and metrics endpoints stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_the_admin_token() {
    let (env, base) = with_admin().await;
    let issued = env.authorize("tv-app", "openid").await;
    let same_length = format!("Bearer {}", "x".repeat(ADMIN_TOKEN.len()));
    let basic = format!("Basic {ADMIN_TOKEN}");
    for token in [
        None,
        Some("Bearer wrong"),
        Some(same_length.as_str()),
        Some(basic.as_str()),
        Some("Bearer"),
    ] {
        for (method, path) in [
            ("GET", "/grants"),
            ("GET", "/clients"),
            ("POST", "/clients/tv-app/disable"),
        ] {
            let (status, auth, body) = admin(&base, method, path, token).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}: {body}");
            assert!(auth.is_some_and(|a| a.starts_with("Bearer")), "{path}");
            assert_eq!(body["error"], "unauthorized");
        }
    }
    // Nothing was disabled: the client still gets grants.
    assert!(env.authorize("tv-app", "openid").await["user_code"].is_string());
    let (status, _, body) = admin(&base, "GET", "/grants", Some(&bearer())).await;
    assert_eq!(status, 200, "{body}");
    let grants = body["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 2, "{body}");
    // Never a code or a token.
    let text = body.to_string();
    assert!(!text.contains(s(&issued["device_code"])), "{text}");
    assert!(!text.contains(s(&issued["user_code"])), "{text}");
    for g in grants {
        for key in [
            "id",
            "client_id",
            "status",
            "created_at",
            "expires_at",
            "device_address",
            "device_software",
            "subject",
        ] {
            assert!(g.get(key).is_some(), "{key} in {g}");
        }
        assert_eq!(g["status"], "pending");
        assert_eq!(g["device_address"], "127.0.0.1");
    }
    // Bad filters are clear errors.
    let (status, _, body) = admin(&base, "GET", "/grants?status=waiting", Some(&bearer())).await;
    assert_eq!(
        (status, s(&body["error"])),
        (400, "invalid_request"),
        "{body}"
    );
    let (status, _, _) = admin(&base, "GET", "/grants?client_id=nobody", Some(&bearer())).await;
    assert_eq!(status, 400);
    let (status, _, _) = admin(&base, "POST", "/grants", Some(&bearer())).await;
    assert_eq!(status, 405);
    let (status, _, _) = admin(&base, "POST", "/grants/nope/deny", Some(&bearer())).await;
    assert_eq!(status, 404);
    // Open endpoints.
    let (status, _, _) = admin(&base, "GET", "/readyz", None).await;
    assert_eq!(status, 200);
    assert!(env.metrics().await.contains("devicegate_polls_total"));
    // The public listener never serves the admin API: /grants there is the IdP's (404).
    let public = env.get("/grants").await;
    assert_ne!(public.status().as_u16(), 200);
    let log = env.gateway_log();
    assert!(log.contains("admin_refused"), "{log}");
    assert!(!log.contains(ADMIN_TOKEN), "the token was logged");
}

/// The phishing-wave drill, end to end, on two instances sharing a real `redis-server`:
/// 1. a user reports a grant ("I did not start this");
/// 2. the event arrives, its signature verified by the `standardwebhooks` library;
/// 3. the operator lists the client's pending grants (the CLI, on the other instance);
/// 4. the operator disables the client once, and both instances refuse it;
/// 5. its devices get `invalid_client`; the switch survives a restart and enabling it ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phishing_wave_drill_on_two_instances() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path(), "siem", "ok", None);
    std::env::set_var("WEBHOOK_SECRET", SECRET);
    let mut env = Env::start(Options {
        redis: true,
        admin: true,
        events: Some(events_section(&[(&receiver.url, None)], "")),
        ..Options::default()
    })
    .await;
    let b = env.start_instance("b");
    let b_admin = format!("http://127.0.0.1:{}", env.instance_admin_port("b"));
    wait_for_port(env.instance_admin_port("b"));

    // Devices of the wave: one a user reports, three still pending, one of another client.
    let reported = env.authorize("tv-app", "openid").await;
    let mut pending = Vec::new();
    for _ in 0..3 {
        pending.push(b.gate.authorize("tv-app", "openid").await);
    }
    let kiosk = env.authorize("kiosk", "openid").await;

    // 1. The user reports it on instance b's page.
    let code = s(&reported["user_code"]);
    let (cookie, csrf) = b.gate.consent_via_http(code).await;
    let page = b
        .gate
        .verification_form(&cookie, format!("action=deny&user_code={code}&csrf={csrf}"))
        .await;
    assert_eq!(page.status(), 200);

    // 2. The signed event arrives.
    let events = receiver
        .wait_until("grant.reported", |e| {
            !of_type(e, "grant.reported").is_empty()
        })
        .await;
    assert!(events.iter().all(|e| e["verified"] == true), "{events:#?}");
    let report = of_type(&events, "grant.reported")[0];
    let data = &report["data"];
    assert_eq!(data["client_id"], "tv-app");
    assert_eq!(data["status"], "denied");
    assert_eq!(data["by"], "user");
    assert_eq!(data["device_address"], "127.0.0.1");
    assert!(
        data["created_at"].is_u64() && data["expires_at"].is_u64(),
        "{data}"
    );
    let reported_id = s(&data["id"]).to_string();
    println!(
        "DRILL 1-2 reported on instance b; the receiver verified (standardwebhooks): {report}"
    );
    assert_eq!(of_type(&events, "grant.created").len(), 5, "{events:#?}");
    assert!(!events
        .iter()
        .any(|e| e.to_string().contains(s(&reported["device_code"]))));

    // 3. The operator lists tv-app's pending grants with the CLI, on the other instance.
    let (ok, out, err) = env.admin_cli(
        "b",
        &["grants", "--client-id", "tv-app", "--status", "pending"],
    );
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&out).expect("the CLI prints JSON");
    let listed = listed["grants"].as_array().unwrap();
    println!("DRILL 3 devicegate admin grants --client-id tv-app --status pending (instance b): {} grants, first {}", listed.len(), listed[0]);
    assert_eq!(listed.len(), 3, "{out}");
    assert!(listed
        .iter()
        .all(|g| g["client_id"] == "tv-app" && g["status"] == "pending"));
    // The reported one is listed as ended.
    let (ok, out, _) = env.admin_cli("gateway", &["grants", "--status", "denied"]);
    assert!(ok && out.contains(&reported_id), "{out}");

    // 4. One call, on instance a, disables the client everywhere.
    let (ok, out, err) = env.admin_cli("gateway", &["disable", "tv-app"]);
    assert!(ok, "{err}");
    let disabled: Value = serde_json::from_str(&out).unwrap();
    println!(
        "DRILL 4 devicegate admin disable tv-app (instance a): {}",
        disabled["client"]
    );
    assert_eq!(disabled["client"]["enabled"], false, "{out}");
    assert_eq!(disabled["client"]["set_by"], "operator");
    assert_eq!(disabled["client"]["denied_grants"], 3, "{out}");
    assert_eq!(disabled["client"]["pending_grants"], 0, "{out}");

    // 5. Its devices: at once no poll gets tokens (the grants are denied in the store), and
    // as soon as b has read the switch, `invalid_client`, at both instances.
    for (gate, name) in [(&env.gate, "a"), (&b.gate, "b")] {
        let start = Instant::now();
        loop {
            let (status, body) = gate.poll("tv-app", s(&pending[0]["device_code"])).await;
            match s(&body["error"]) {
                "invalid_client" => {
                    assert_eq!(status, 401, "{body}");
                    println!(
                        "DRILL 5 instance {name}: poll {status} {body} after {:?}",
                        start.elapsed()
                    );
                    break;
                }
                "access_denied" => {
                    println!("DRILL 5 instance {name}: poll {status} {body} (switch not read yet)")
                }
                other => panic!("{name}: a disabled client's poll got {status} {other}: {body}"),
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{name} never read the switch"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (status, _, body) = tv_device_request(gate).await;
        assert_eq!(
            (status, s(&body["error"])),
            (401, "invalid_client"),
            "{name}: {body}"
        );
        println!("DRILL 5 instance {name}: new device authorization {status} {body}");
    }
    // The other client is untouched.
    let (status, body) = b.gate.poll("kiosk", s(&kiosk["device_code"])).await;
    assert_eq!(
        (status, s(&body["error"])),
        (400, "authorization_pending"),
        "{body}"
    );

    let events = receiver
        .wait_until("grant.denied by operator", |e| {
            of_type(e, "grant.denied")
                .iter()
                .filter(|d| d["data"]["by"] == "operator")
                .count()
                == 3
        })
        .await;
    assert!(events.iter().all(|e| e["verified"] == true));

    // The switch is in Redis: a restarted instance still refuses the client.
    env.restart_gateway();
    let (status, _, body) = tv_device_request(&env.gate).await;
    assert_eq!(
        (status, s(&body["error"])),
        (401, "invalid_client"),
        "{body}"
    );
    let (status, _, body) = admin(&b_admin, "GET", "/clients", Some(&bearer())).await;
    assert_eq!(status, 200);
    let tv = body["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client_id"] == "tv-app")
        .cloned()
        .unwrap();
    assert_eq!(
        (tv["enabled"].clone(), tv["configured_enabled"].clone()),
        (Value::Bool(false), Value::Bool(true)),
        "{tv}"
    );
    assert!(tv["policy"]["proximity"].is_string(), "{tv}");

    // Enabling it on b lets both instances serve it again.
    let (ok, _, err) = env.admin_cli("b", &["enable", "tv-app"]);
    assert!(ok, "{err}");
    let start = Instant::now();
    loop {
        let (status, _, _) = tv_device_request(&env.gate).await;
        if status == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "a never read the switch: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = env.gateway_log();
    assert!(
        log.contains("client_disabled")
            || std::fs::read_to_string(env.dir.path().join("b.log"))
                .unwrap_or_default()
                .contains("client_disabled")
    );
}

/// `POST /grants/{id}/deny`: the device gets `access_denied`, the audit line says
/// `by=operator`; a second deny is a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_denies_one_grant() {
    let (env, base) = with_admin().await;
    let issued = env.authorize("tv-app", "openid").await;
    let (_, _, list) = admin(&base, "GET", "/grants", Some(&bearer())).await;
    let id = s(&list["grants"][0]["id"]).to_string();
    let deny = || async {
        let path = format!("/grants/{id}/deny");
        admin(&base, "POST", &path, Some(&bearer())).await
    };
    let (status, _, body) = deny().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (s(&body["grant"]["status"]), s(&body["grant"]["denied_by"])),
        ("denied", "operator")
    );
    let (status, body) = env.poll("tv-app", s(&issued["device_code"])).await;
    assert_eq!(
        (status, s(&body["error"])),
        (400, "access_denied"),
        "{body}"
    );
    let (status, _, body) = deny().await;
    assert_eq!(status, 409, "{body}");
    let log = env.gateway_log();
    let line = log
        .lines()
        .find(|l| l.contains("event=\"denied\"") || l.contains("event=denied"))
        .unwrap_or_else(|| panic!("no denied line: {log}"));
    assert!(line.contains("operator"), "{line}");
}

/// A receiver that never answers and one where nothing listens: device requests are all
/// answered while the held receiver has answered nothing; what does not fit its queue is
/// dropped, counted and logged; the dead one's events fail after their retries; once released,
/// the held one gets its queued events, signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_dead_receivers_never_delay_requests() {
    let dir = tempfile::tempdir().unwrap();
    let held = Receiver::start(dir.path(), "held", "hold", None);
    std::env::set_var("WEBHOOK_SECRET", SECRET);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let env = Env::start(Options {
        admin: true,
        limits: Some("  device_requests_per_ip_per_minute: 1000\n  device_requests_per_client_per_minute: 1000\n".into()),
        events: Some(events_section(
            &[(&held.url, None), (&dead, None)],
            "  queue_size: 4\n  max_attempts: 2\n  timeout_ms: 60000\n",
        )),
        ..Options::default()
    })
    .await;
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let http = env.http.clone();
        let url = env.url.clone();
        tasks.push(tokio::spawn(async move {
            device_request(&http, &url, None).await.0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    // Every request was answered while the receiver held its first event unanswered.
    let start = Instant::now();
    let stats = loop {
        let stats = held.stats().await;
        if stats["held"] == 1 {
            break stats;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(stats["answered"], 0, "{stats}");
    let metrics = env.metrics().await;
    let count = |webhook: &str, outcome: &str| -> u64 {
        let series = format!(
            "devicegate_webhook_events_total{{outcome=\"{outcome}\",webhook=\"{webhook}\"}} "
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    // 40 events for each: 4 queued, one in flight (taken off the queue before it filled, or
    // after), the rest dropped; the dead one's sender may have freed a place or two meanwhile.
    let dropped = count("0", "dropped");
    assert!((35..=36).contains(&dropped), "{metrics}");
    assert!((30..=36).contains(&count("1", "dropped")), "{metrics}");
    assert!(env.gateway_log().contains("webhook queue full"));

    held.release().await;
    let events = held
        .wait_until("the queued events", |e| e.len() as u64 == 40 - dropped)
        .await;
    assert!(
        events
            .iter()
            .all(|e| e["verified"] == true && e["type"] == "grant.created"),
        "{events:#?}"
    );
    // The dead receiver's events fail once their two attempts have.
    let m = wait_for_series(
        &env,
        "devicegate_webhook_events_total{outcome=\"failed\",webhook=\"1\"}",
    )
    .await;
    assert!(m.contains("devicegate_webhook_events_total{outcome=\"retried\",webhook=\"1\"}"));
    assert!(env.gateway_log().contains("webhook event not delivered"));
}

/// An https:// receiver is verified: with a self-made certificate its events fail until its CA
/// is configured as the webhook's `ca_file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_receivers_are_verified_against_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_certificates(dir.path());
    let trusted = Receiver::start(dir.path(), "trusted", "ok", Some((&cert, &key)));
    let untrusted = Receiver::start(dir.path(), "untrusted", "ok", Some((&cert, &key)));
    std::env::set_var("WEBHOOK_SECRET", SECRET);
    // The certificate names localhost.
    let name = |u: &str| u.replace("127.0.0.1", "localhost");
    let env = Env::start(Options {
        admin: true,
        events: Some(events_section(
            &[
                (&name(&trusted.url), Some(&ca)),
                (&name(&untrusted.url), None),
            ],
            "  max_attempts: 1\n",
        )),
        ..Options::default()
    })
    .await;
    env.authorize("tv-app", "openid").await;
    let events = trusted.wait_until("grant.created", |e| e.len() == 1).await;
    assert_eq!(events[0]["verified"], true);
    wait_for_series(
        &env,
        "devicegate_webhook_events_total{outcome=\"failed\",webhook=\"1\"} 1",
    )
    .await;
    assert!(untrusted.events().is_empty());
}

/// Every kind of event a flow makes reaches a real receiver, signed: created, approved (with
/// the subject) and delivered for a flow approved in Chromium; policy.refused for a device
/// outside the client's networks; limit.tripped once for a flood from another address; and
/// grant.expired, once, for a grant no device polled after it expired (the sweep reports it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_type_reaches_the_receiver_signed() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path(), "all", "ok", None);
    std::env::set_var("WEBHOOK_SECRET", SECRET);
    let env = Env::start(Options {
        admin: true,
        events: Some(events_section(&[(&receiver.url, None)], "")),
        kiosk_policy: Some("device_networks: [10.0.0.0/8]".into()),
        limits: Some("  device_requests_per_ip_per_minute: 3\n".into()),
        ..Options::default()
    })
    .await;
    let issued = env.authorize("tv-app", "openid").await;
    approve_in_browser(&env.gate, "webhook-events", s(&issued["user_code"])).await;
    let (status, body) = env.poll("tv-app", s(&issued["device_code"])).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = env
        .post_form(
            "/device/code",
            &[("client_id", "kiosk"), ("client_secret", KIOSK_SECRET)],
        )
        .await;
    assert_eq!(
        (status, s(&body["error"])),
        (400, "unauthorized_client"),
        "{body}"
    );
    let flood = client_from("127.0.0.2");
    let mut limited = 0;
    for _ in 0..8 {
        if device_request(&flood, &env.url, None).await.0 == 429 {
            limited += 1;
        }
    }
    assert_eq!(limited, 5);
    let events = receiver
        .wait_until("every event of the flow", |e| {
            [
                "grant.approved",
                "grant.delivered",
                "policy.refused",
                "limit.tripped",
            ]
            .iter()
            .all(|t| !of_type(e, t).is_empty())
        })
        .await;
    assert!(events.iter().all(|e| e["verified"] == true), "{events:#?}");
    let approved = of_type(&events, "grant.approved")[0];
    assert_eq!(approved["data"]["subject"], "bob", "{approved}");
    assert_eq!(approved["data"]["status"], "approved");
    let delivered = of_type(&events, "grant.delivered")[0];
    assert_eq!(delivered["data"]["status"], "delivered");
    assert!(
        !delivered.to_string().contains("access_token"),
        "{delivered}"
    );
    let refused = of_type(&events, "policy.refused")[0];
    assert_eq!(
        (
            s(&refused["data"]["client_id"]),
            s(&refused["data"]["rule"])
        ),
        ("kiosk", "device_networks"),
        "{refused}"
    );
    // Five refusals, one alert (the counts are in the metrics).
    let tripped = of_type(&events, "limit.tripped");
    assert_eq!(tripped.len(), 1, "{tripped:?}");
    assert_eq!(
        (
            s(&tripped[0]["data"]["limit"]),
            s(&tripped[0]["data"]["client_ip"])
        ),
        ("device", "127.0.0.2")
    );

    // A grant that expires unpolled is reported by the sweep, once.
    let short = Env::start(Options {
        expires_in: 2,
        events: Some(events_section(&[(&receiver.url, None)], "")),
        ..Options::default()
    })
    .await;
    let lapsing = short.authorize("tv-app", "openid").await;
    let events = receiver
        .wait_until("grant.expired", |e| !of_type(e, "grant.expired").is_empty())
        .await;
    let expired = of_type(&events, "grant.expired");
    assert_eq!(expired[0]["data"]["status"], "expired");
    // Its device learns it at its next poll, and nothing is reported again.
    let (_, body) = short.poll("tv-app", s(&lapsing["device_code"])).await;
    assert_eq!(body["error"], "expired_token");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(of_type(&receiver.events(), "grant.expired").len(), 1);
}
