//! The phishing defences of RFC 10027, per client, end to end: the real gateway, the real IdP
//! (oidc-provider, whose test accounts carry `groups` and an `acr`), headless Chromium for
//! every page (axe-checked by `common::browser`), nginx as a trusted proxy, and devices and
//! attackers on many loopback addresses. Each rule is shown refusing and allowing.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{
    browser, client_from, device_request, s, start_nginx, Env, Gate, Idp, Options,
};

/// The audit events of a JSON gateway log.
fn audit_events(env: &Env) -> Vec<Value> {
    env.gateway_log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "audit")
        .collect()
}

/// The browser enters `dev`'s code by hand and does `action` (the IdP login as `username`).
async fn in_browser(name: &str, gate: &Gate, dev: &Value, action: &str, username: &str) -> Value {
    browser(json!({
        "name": name,
        "url": format!("{}/device", gate.url),
        "user_code": dev["user_code"],
        "action": action,
        "username": username,
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_networks_behind_a_trusted_proxy_refuse_spoofers_from_many_addresses() {
    let env = Env::start(Options {
        tv_policy: Some("device_networks: [127.1.0.0/16]".into()),
        trusted_proxies: Some("[127.0.0.1]".into()),
        json_logs: true,
        admin: true,
        ..Options::default()
    })
    .await;
    let (_nginx, port) = start_nginx(env.dir.path(), env.port);
    let front = format!("http://127.0.0.1:{port}");

    // A device on the named network, through the balancer: issued, and it completes.
    let device = client_from("127.1.0.1");
    let (status, dev) = device_request(&device, &front, None).await;
    assert_eq!(status, 200, "{dev}");
    let report = in_browser(
        "device-networks-allowed",
        &env.gate,
        &dev,
        "approve",
        "alice",
    )
    .await;
    assert_eq!(s(&report["title"]), "You're signed in", "{report}");

    // Attackers on 32 other addresses at once, each claiming the named network in
    // X-Forwarded-For: nginx appends what it saw, so every one is refused.
    let mut tasks = Vec::new();
    for i in 0..32u8 {
        let front = front.clone();
        tasks.push(tokio::spawn(async move {
            let http = client_from(&format!("127.2.{i}.1"));
            device_request(&http, &front, Some("127.1.0.1")).await
        }));
    }
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(
            (status, s(&body["error"])),
            (400, "unauthorized_client"),
            "{body}"
        );
        assert!(s(&body["error_description"]).contains("network"), "{body}");
    }
    // Straight at the gateway, the forged header is not even read.
    let (status, _) = device_request(&client_from("127.2.99.1"), &env.url, Some("127.1.0.1")).await;
    assert_eq!(status, 400);

    // Each refusal audited with the attacker's real address, and counted.
    let refused: Vec<String> = audit_events(&env)
        .into_iter()
        .filter(|v| v["event"] == "refused" && v["rule"] == "device_networks")
        .map(|v| s(&v["client_ip"]).to_string())
        .collect();
    assert_eq!(refused.len(), 33, "{refused:?}");
    assert!(
        refused.iter().all(|ip| ip.starts_with("127.2.")),
        "{refused:?}"
    );
    let metrics = env.metrics().await;
    assert!(
        metrics.contains(
            r#"devicegate_policy_refusals_total{client_id="tv-app",rule="device_networks"} 33"#
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approver_networks_in_the_browser_approve_inside_and_deny_outside() {
    // The browser is 127.0.0.1: inside tv-app's approver networks, outside the kiosk's.
    let env = Env::start(Options {
        tv_policy: Some("approver_networks: [127.0.0.0/24]".into()),
        kiosk_policy: Some("approver_networks: [127.77.0.0/16, 10.0.0.0/8]".into()),
        json_logs: true,
        ..Options::default()
    })
    .await;
    let dev = env.authorize("tv-app", "openid").await;
    let report = in_browser("approver-inside", &env.gate, &dev, "approve", "alice").await;
    assert_eq!(s(&report["title"]), "You're signed in", "{report}");

    let dev = env.authorize("kiosk", "openid").await;
    let report = in_browser("approver-outside", &env.gate, &dev, "enter", "alice").await;
    assert_eq!(
        s(&report["title"]),
        "Not allowed from this network",
        "{report}"
    );
    assert_eq!(report["status"], 403);
    assert!(
        s(&report["text"]).contains("organisation's network"),
        "{report}"
    );
    // The grant is denied: the device stops at once.
    let (status, body) = env.poll("kiosk", s(&dev["device_code"])).await;
    assert_eq!(
        (status, s(&body["error"])),
        (400, "access_denied"),
        "{body}"
    );
    let denied = audit_events(&env)
        .into_iter()
        .filter(|v| v["event"] == "denied" && v["by"] == "policy")
        .map(|v| (s(&v["rule"]).to_string(), s(&v["client_id"]).to_string()))
        .collect::<Vec<_>>();
    assert_eq!(
        denied,
        [("approver_networks".to_string(), "kiosk".to_string())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proximity_required_through_a_trusted_proxy() {
    let env = Env::start(Options {
        tv_policy: Some("proximity: require".into()),
        trusted_proxies: Some("[127.0.0.1]".into()),
        json_logs: true,
        ..Options::default()
    })
    .await;
    let (_nginx, port) = start_nginx(env.dir.path(), env.port);
    let front = format!("http://127.0.0.1:{port}");

    // The device is far from the browser (127.1.0.0/24 vs 127.0.0.0/24): refused, denied.
    let (_, far) = device_request(&client_from("127.1.0.1"), &front, None).await;
    let report = in_browser("proximity-far", &env.gate, &far, "enter", "alice").await;
    assert_eq!(
        s(&report["title"]),
        "The device is not near you",
        "{report}"
    );
    assert_eq!(report["status"], 403);
    let (status, body) = env.poll("tv-app", s(&far["device_code"])).await;
    assert_eq!(
        (status, s(&body["error"])),
        (400, "access_denied"),
        "{body}"
    );

    // A device next to the browser (same /24, behind the same balancer): approved.
    let (_, near) = device_request(&client_from("127.0.0.7"), &front, None).await;
    let report = in_browser("proximity-near", &env.gate, &near, "approve", "alice").await;
    assert_eq!(s(&report["title"]), "You're signed in", "{report}");
    let (status, tokens) = env
        .poll_until_done(
            "tv-app",
            s(&near["device_code"]),
            1,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(status, 200, "{tokens}");
    assert!(audit_events(&env)
        .iter()
        .any(|v| v["event"] == "denied" && v["rule"] == "proximity"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_claims_admit_a_group_member_and_deny_everyone_else() {
    let env = Env::start(Options {
        tv_policy: Some("require_claims:\n  groups: [tv-admins]".into()),
        json_logs: true,
        ..Options::default()
    })
    .await;
    // The IdP puts `groups` in userinfo only: read there.
    let dev = env.authorize("tv-app", "openid").await;
    let report = in_browser("claims-member", &env.gate, &dev, "approve", "admin-ana").await;
    assert_eq!(s(&report["title"]), "You're signed in", "{report}");
    let (status, tokens) = env
        .poll_until_done("tv-app", s(&dev["device_code"]), 1, Duration::from_secs(10))
        .await;
    assert_eq!(status, 200, "{tokens}");

    let dev = env.authorize("tv-app", "openid").await;
    let report = in_browser("claims-outsider", &env.gate, &dev, "approve", "bob").await;
    assert_eq!(
        s(&report["title"]),
        "This account cannot approve this application",
        "{report}"
    );
    assert_eq!(report["status"], 403);
    let (status, body) = env.poll("tv-app", s(&dev["device_code"])).await;
    assert_eq!(
        (status, s(&body["error"])),
        (400, "access_denied"),
        "{body}"
    );
    let denied: Vec<Value> = audit_events(&env)
        .into_iter()
        .filter(|v| v["event"] == "denied" && v["by"] == "policy")
        .collect();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["rule"], "require_claims");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acr_values_are_asked_for_and_a_weaker_login_is_refused() {
    let env = Env::start(Options {
        tv_policy: Some("acr_values: [urn:devicegate:test:mfa]".into()),
        json_logs: true,
        ..Options::default()
    })
    .await;
    let dev = env.authorize("tv-app", "openid").await;
    let report = in_browser("acr-strong", &env.gate, &dev, "approve", "mfa-mia").await;
    assert_eq!(s(&report["title"]), "You're signed in", "{report}");
    // The IdP was asked for it.
    let idp_login = report["pages"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| s(&p["name"]) == "idp-login");
    assert!(idp_login, "{report}");

    let dev = env.authorize("tv-app", "openid").await;
    let report = in_browser("acr-weak", &env.gate, &dev, "approve", "bob").await;
    assert_eq!(
        s(&report["title"]),
        "This account cannot approve this application",
        "{report}"
    );
    let (status, body) = env.poll("tv-app", s(&dev["device_code"])).await;
    assert_eq!(
        (status, s(&body["error"])),
        (400, "access_denied"),
        "{body}"
    );
    assert!(audit_events(&env)
        .iter()
        .any(|v| v["event"] == "denied" && v["rule"] == "acr_values"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_needs_a_fresh_authentication_time() {
    // oidc-provider honours max_age and states auth_time: approved.
    let env = Env::start(Options {
        tv_policy: Some("max_age: 0".into()),
        ..Options::default()
    })
    .await;
    let dev = env.authorize("tv-app", "openid").await;
    let report = in_browser("max-age-fresh", &env.gate, &dev, "approve", "alice").await;
    assert_eq!(s(&report["title"]), "You're signed in", "{report}");
    let (status, tokens) = env
        .poll_until_done("tv-app", s(&dev["device_code"]), 1, Duration::from_secs(10))
        .await;
    assert_eq!(status, 200, "{tokens}");
    let claims = crate::common::id_token_claims(s(&tokens["id_token"]));
    assert!(claims["auth_time"].is_u64(), "{claims}");

    // An IdP that ignores max_age and reuses an hour-old session (oauth2-mock-server): refused.
    // The same IdP with a fresh session is accepted, so it is the age that is refused.
    for (age, title) in [
        (0, "You're signed in"),
        (3600, "This account cannot approve this application"),
    ] {
        let env = Env::start(Options {
            tv_policy: Some("max_age: 0".into()),
            idp: Idp::Keycloakish("RS256"),
            idp_session_age: age,
            ..Options::default()
        })
        .await;
        let dev = env.authorize("tv-app", "openid").await;
        let report = browser(json!({
            "name": format!("max-age-session-{age}"),
            "url": format!("{}/device", env.url),
            "user_code": dev["user_code"],
            "action": "approve",
            "idp_action": "none",
        }))
        .await;
        assert_eq!(s(&report["title"]), title, "{report}");
        let form = [
            ("grant_type", crate::common::DEVICE_GRANT),
            ("device_code", s(&dev["device_code"])),
            ("client_id", "tv-app"),
        ];
        let token_path = "/realms/demo/protocol/openid-connect/token";
        let (status, _, body) = env.post_form(token_path, &form).await;
        if age > 0 {
            assert_eq!(
                (status, s(&body["error"])),
                (400, "access_denied"),
                "{body}"
            );
        } else {
            assert_eq!(status, 200, "{body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_refresh_tokens_the_device_gets_none() {
    let env = Env::start(Options {
        tv_policy: Some("refresh_tokens: false".into()),
        ..Options::default()
    })
    .await;
    let dev = env.authorize("tv-app", "openid offline_access").await;
    let report = in_browser("no-refresh", &env.gate, &dev, "approve", "alice").await;
    assert_eq!(s(&report["title"]), "You're signed in", "{report}");
    // The consent page did not offer "stay signed in".
    let consent = &report["pages"][1];
    assert!(s(&consent["title"]).starts_with("Allow"), "{report}");
    let (status, tokens) = env
        .poll_until_done("tv-app", s(&dev["device_code"]), 1, Duration::from_secs(10))
        .await;
    assert_eq!(status, 200, "{tokens}");
    assert!(tokens.get("refresh_token").is_none(), "{tokens}");
    assert!(!s(&tokens["scope"]).contains("offline_access"), "{tokens}");
    // The kiosk keeps them (its policy is the default).
    let dev = env.authorize("kiosk", "openid offline_access").await;
    let report = in_browser("with-refresh", &env.gate, &dev, "approve", "bob").await;
    assert_eq!(s(&report["title"]), "You're signed in", "{report}");
    let (_, tokens) = env
        .poll_until_done("kiosk", s(&dev["device_code"]), 1, Duration::from_secs(10))
        .await;
    assert!(tokens.get("refresh_token").is_some(), "{tokens}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_verification_uri_complete_a_phishing_link_prefills_nothing() {
    let env = Env::start(Options {
        tv_policy: Some("verification_uri_complete: false".into()),
        ..Options::default()
    })
    .await;
    let dev = env.authorize("tv-app", "openid").await;
    assert!(dev.get("verification_uri_complete").is_none(), "{dev}");
    let code = s(&dev["user_code"]).to_string();
    // The link a phisher would send: opened in the browser, the code is not filled in.
    let report = browser(json!({
        "name": "no-complete-link",
        "url": format!("{}/device?user_code={code}", env.url),
        "action": "open",
    }))
    .await;
    assert_eq!(report["prefilled"], "", "{report}");
    assert_eq!(
        env.get(&format!("/device/qr?user_code={code}"))
            .await
            .status(),
        400
    );
    // Typed by the user, it works.
    let report = in_browser("no-complete-typed", &env.gate, &dev, "approve", "alice").await;
    assert_eq!(s(&report["title"]), "You're signed in", "{report}");
    // The kiosk's link prefills (and its QR code is drawn).
    let dev = env.authorize("kiosk", "openid").await;
    let report = browser(json!({
        "name": "complete-link",
        "url": dev["verification_uri_complete"],
        "action": "open",
    }))
    .await;
    assert_eq!(report["prefilled"], dev["user_code"], "{report}");
    let query = s(&dev["verification_uri_complete"])
        .split_once('?')
        .unwrap()
        .1
        .to_string();
    assert_eq!(env.get(&format!("/device/qr?{query}")).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_pending_holds_across_two_instances_sharing_redis() {
    let env = Env::start(Options {
        redis: true,
        tv_policy: Some("max_pending: 4".into()),
        ..Options::default()
    })
    .await;
    let b = env.start_instance("gateway-b");
    let mut tasks = Vec::new();
    for i in 0..24u8 {
        // Alternating instances, each request from its own network.
        let base = if i % 2 == 0 {
            env.url.clone()
        } else {
            b.gate.url.clone()
        };
        tasks.push(tokio::spawn(async move {
            device_request(&client_from(&format!("127.{}.0.1", 10 + i)), &base, None).await
        }));
    }
    let mut issued = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            200 => issued += 1,
            429 => assert_eq!(s(&body["error"]), "temporarily_unavailable", "{body}"),
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(issued, 4, "the deployment-wide bound");
    // Other clients keep their room.
    env.authorize("kiosk", "openid").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i_did_not_start_this_is_reported_with_what_to_do_next() {
    let env = Env::start(Options {
        ui: Some("  report_url: https://security.example.test/report\n".into()),
        json_logs: true,
        admin: true,
        ..Options::default()
    })
    .await;
    let device = reqwest::Client::builder()
        .local_address("127.1.0.9".parse::<std::net::IpAddr>().unwrap())
        .user_agent("SmartTV-OS/3.1 (Model X)")
        .build()
        .unwrap();
    let dev: Value = device
        .post(format!("{}/device/code", env.url))
        .form(&[("client_id", "tv-app"), ("scope", "openid")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let report = in_browser("reported", &env.gate, &dev, "deny", "").await;
    assert_eq!(s(&report["title"]), "Denied and reported", "{report}");
    let text = s(&report["text"]);
    assert!(text.contains("change your password"), "{report}");
    assert!(
        text.contains("Tell the security team what happened"),
        "{report}"
    );
    let (status, body) = env.poll("tv-app", s(&dev["device_code"])).await;
    assert_eq!((status, s(&body["error"])), (400, "access_denied"));
    let reported: Vec<Value> = audit_events(&env)
        .into_iter()
        .filter(|v| v["event"] == "reported")
        .collect();
    assert_eq!(reported.len(), 1, "{reported:?}");
    let r = &reported[0];
    assert_eq!(r["level"], "WARN", "{r}");
    assert_eq!(
        (
            s(&r["client_id"]),
            s(&r["device_ip"]),
            s(&r["device_software"]),
            s(&r["client_ip"])
        ),
        ("tv-app", "127.1.0.9", "SmartTV-OS/3.1", "127.0.0.1"),
        "{r}"
    );
    let metrics = env.metrics().await;
    assert!(
        metrics.contains(r#"devicegate_reported_total{client_id="tv-app"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_language_with_its_direction_and_the_education_line() {
    let env = Env::start(Options {
        ui: Some("  education:\n    de: Die Acme-IT fragt nie nach diesem Code.\n".into()),
        ..Options::default()
    })
    .await;
    let dev = env.authorize("tv-app", "openid").await;
    for (locale, lang, dir) in [
        ("es-ES", "es", "ltr"),
        ("it-IT", "it", "ltr"),
        ("nl-NL", "nl", "ltr"),
        ("pt-PT", "pt", "ltr"),
        ("pl-PL", "pl", "ltr"),
        ("ja-JP", "ja", "ltr"),
        ("zh-CN", "zh", "ltr"),
        ("ar-EG", "ar", "rtl"),
        ("de-DE", "de", "ltr"),
        ("en-GB", "en", "ltr"),
    ] {
        // The code-entry page and the consent page, axe-checked in each language.
        let report = browser(json!({
            "name": format!("language-{lang}"),
            "url": format!("{}/device", env.url),
            "user_code": dev["user_code"],
            "action": "lookup",
            "locale": locale,
        }))
        .await;
        assert_eq!(
            (s(&report["lang"]), s(&report["dir"])),
            (lang, dir),
            "{report}"
        );
        assert_eq!(report["status"], 200, "{report}");
        let text = s(&report["text"]);
        match lang {
            "de" => assert!(text.contains("Die Acme-IT fragt nie"), "{report}"),
            "en" => assert!(
                text.contains("We will never ask you for this code"),
                "{report}"
            ),
            _ => assert!(
                !text.contains("We will never ask you"),
                "{lang} shows English: {report}"
            ),
        }
    }
}

#[test]
fn check_names_every_policy_mistake_and_prints_each_clients_policy() {
    let bin = env!("CARGO_BIN_EXE_devicegate");
    let dir = tempfile::tempdir().unwrap();
    let head = "listen: 127.0.0.1:1\npublic_url: http://localhost:1\nupstream:\n  address: 127.0.0.1:1\n  issuer: http://localhost:1\n";
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        format!("{head}policy:\n  proximity: nearby\nclients:\n  - client_id: tv\n    device_networks: [10.0.0.300/8]\n    require_claims:\n      groups: []\n    max_pending: 0\n"),
    )
    .unwrap();
    let out = std::process::Command::new(bin)
        .args(["--check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "policy.proximity: unknown mode 'nearby', expected: off, warn or require",
        "clients[0].device_networks[0]:",
        "clients[0].require_claims.groups:",
        "clients[0].max_pending:",
    ] {
        assert!(err.contains(key), "no error for {key}: {err}");
    }

    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        format!("{head}policy:\n  refresh_tokens: false\nclients:\n  - client_id: tv\n  - client_id: kiosk\n    proximity: require\n    approver_networks: [10.0.0.0/8]\n    acr_values: [urn:mfa]\n"),
    )
    .unwrap();
    let out = std::process::Command::new(bin)
        .args(["--check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let kiosk = stdout
        .split("client kiosk:")
        .nth(1)
        .unwrap()
        .split("client tv:")
        .next()
        .unwrap();
    for line in [
        "approver_networks: 10.0.0.0/8",
        "proximity: require (IPv4 /24, IPv6 /64)",
        "acr_values: urn:mfa",
        "refresh_tokens: false",
    ] {
        assert!(kiosk.contains(line), "{line} in {stdout}");
    }
    let tv = stdout.split("client tv:").nth(1).unwrap();
    assert!(
        tv.contains("proximity: warn") && tv.contains("refresh_tokens: false"),
        "{stdout}"
    );
}
