//! The phishing defences of a client's policy (RFC 10027), each refusing and allowing, with
//! many source addresses where the rule is about networks, and with a loopback IdP where it is
//! about the signed-in user.

use super::*;

/// [`CONFIG`] with these policy lines (indented for a client) on `tv-app`.
fn with_policy(lines: &str) -> Harness {
    harness_with(&policy_config(lines))
}

fn policy_config(lines: &str) -> String {
    let anchor = "    allowed_scopes: [openid, profile]\n";
    assert!(CONFIG.contains(anchor));
    let lines: String = lines.lines().map(|l| format!("    {l}\n")).collect();
    CONFIG.replacen(
        anchor,
        &format!("    allowed_scopes: [openid, profile, offline_access]\n{lines}"),
        1,
    )
}

impl Harness {
    /// A device authorization from `ip`: (device code, user code), or the refusal.
    async fn authorize_from(&self, ip: &str, scope: &str) -> Result<(String, String), Reply> {
        let r = self
            .post_from(
                ip,
                "/device/code",
                &[],
                &format!("client_id=tv-app&scope={scope}"),
            )
            .await;
        if r.status != 200 {
            return Err(r);
        }
        let v = json(&r);
        let user_code = v["user_code"].as_str().unwrap().replace('-', "");
        Ok((v["device_code"].as_str().unwrap().to_string(), user_code))
    }
}

fn policy_facts(r: &Reply) -> Vec<&'static str> {
    r.facts
        .iter()
        .filter_map(|f| match f {
            Fact::Policy { rule, .. } => Some(*rule),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn device_networks_refuse_every_address_outside_and_admit_those_inside() {
    let h = with_policy("device_networks: [10.20.0.0/16, 2001:db8:7::/48]");
    // An attacker with many addresses: every one outside is refused, counted and audited.
    for i in 0..64 {
        let ip = format!("198.51.{}.{}", i % 4, i + 1);
        let r = h.authorize_from(&ip, "openid").await.unwrap_err();
        assert_eq!(
            (r.status, json(&r)["error"].as_str()),
            (400, Some("unauthorized_client"))
        );
        assert!(json(&r)["error_description"]
            .as_str()
            .unwrap()
            .contains("network"));
        assert_eq!(policy_facts(&r), ["device_networks"]);
        assert_eq!(events(&r), [Event::PolicyRefused("device_networks")]);
    }
    // Inside (IPv4, IPv6, IPv4-mapped IPv6): issued.
    for ip in [
        "10.20.0.1",
        "10.20.255.254",
        "2001:db8:7:1::5",
        "::ffff:10.20.3.4",
    ] {
        assert!(h.authorize_from(ip, "openid").await.is_ok(), "{ip}");
    }
    // The facts become the metric as request_filter records them.
    let r = h
        .authorize_from("198.51.100.1", "openid")
        .await
        .unwrap_err();
    events::record(&h.gw.metrics, &h.gw.outbox, &r.facts, "198.51.100.1", 0);
    let metrics = String::from_utf8(h.gw.metrics.render()).unwrap();
    let series = r#"devicegate_policy_refusals_total{client_id="tv-app",rule="device_networks"} 1"#;
    assert!(metrics.contains(series), "{metrics}");
    // Another client without the rule is not affected.
    let r = h
        .post_from(
            "198.51.100.1",
            "/device/code",
            &[("authorization", "Basic a2lvc2s6a2lvc2stc2VjcmV0")],
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
}

/// A code of a device at `device` entered from `browser`: refused by `rule` with the page
/// `outcome` and no consent form, the grant denied (the device's poll says so), audited and
/// counted.
async fn refused_on_entry(
    h: &Harness,
    cookie: &str,
    device: &str,
    browser: &str,
    rule: &'static str,
    outcome: &str,
) {
    let (device_code, user_code) = h.authorize_from(device, "openid").await.unwrap();
    let (r, csrf) = h.enter_from(browser, cookie, &user_code).await;
    assert_eq!(r.status, 403, "{}", text(&r));
    assert!(text(&r).contains(&format!("data-outcome=\"{outcome}\"")));
    assert!(csrf.is_empty(), "no consent form");
    assert_eq!(policy_facts(&r), [rule]);
    assert_eq!(events(&r), [Event::Denied(By::Policy(rule))]);
    let poll = h.poll("tv-app", &device_code).await;
    assert_eq!(json(&poll)["error"], "access_denied");
}

#[tokio::test]
async fn approver_networks_deny_the_grant_entered_from_elsewhere() {
    let h = with_policy("approver_networks: [10.9.0.0/16]");
    let (cookie, _) = h.browser().await;
    // From outside: a page that says why, and the grant is denied for the device.
    refused_on_entry(
        &h,
        &cookie,
        "10.9.1.1",
        "203.0.113.7",
        "approver_networks",
        "network_not_allowed",
    )
    .await;
    // From inside: the consent page, and approve goes on to the IdP.
    let (_, user_code) = h.authorize_from("10.9.1.1", "openid").await.unwrap();
    let (r, csrf) = h.enter_from("10.9.200.3", &cookie, &user_code).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert!(!csrf.is_empty());
    // Approve pressed from outside (another address than the code entry): refused too.
    learn_discovery(&h).await;
    let r = h
        .act_from("203.0.113.7", &cookie, &user_code, &csrf, "approve")
        .await;
    assert_eq!(r.status, 403, "{}", text(&r));
    assert_eq!(events(&r), [Event::Denied(By::Policy("approver_networks"))]);
}

#[tokio::test]
async fn proximity_require_denies_a_browser_on_another_network() {
    let h = with_policy("proximity: require");
    let (cookie, _) = h.browser().await;
    refused_on_entry(
        &h,
        &cookie,
        "192.0.2.10",
        "198.51.100.20",
        "proximity",
        "proximity",
    )
    .await;
    // Same /24: the consent page, without the other-network warning.
    let (_, user_code) = h.authorize_from("192.0.2.10", "openid").await.unwrap();
    let (r, csrf) = h.enter_from("192.0.2.99", &cookie, &user_code).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert!(!text(&r).contains("another network"));
    // Approve from elsewhere after the code was entered nearby: refused.
    learn_discovery(&h).await;
    let r = h
        .act_from("198.51.100.20", &cookie, &user_code, &csrf, "approve")
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(events(&r), [Event::Denied(By::Policy("proximity"))]);

    // The prefix lengths are the operator's: /16 makes 192.0.9.1 near 192.0.2.10.
    let h = with_policy("proximity: require\nproximity_ipv4_prefix: 16\nproximity_ipv6_prefix: 48");
    let (cookie, _) = h.browser().await;
    for (device, browser, status) in [
        ("192.0.2.10", "192.0.9.1", 200),
        ("192.0.2.10", "192.1.2.10", 403),
        ("2001:db8:1:2::1", "2001:db8:1:ffff::9", 200),
        ("2001:db8:1:2::1", "2001:db8:2::9", 403),
    ] {
        let (_, user_code) = h.authorize_from(device, "openid").await.unwrap();
        let (r, _) = h.enter_from(browser, &cookie, &user_code).await;
        assert_eq!(r.status, status, "{device} / {browser}");
    }
}

#[tokio::test]
async fn proximity_warn_warns_and_off_does_not() {
    for (mode, warned) in [("warn", true), ("off", false)] {
        let h = with_policy(&format!("proximity: {mode}"));
        let (cookie, _) = h.browser().await;
        let (_, user_code) = h.authorize_from("192.0.2.10", "openid").await.unwrap();
        let (r, _) = h.enter_from("198.51.100.20", &cookie, &user_code).await;
        assert_eq!(r.status, 200);
        assert_eq!(text(&r).contains("another network"), warned, "{mode}");
    }
}

#[tokio::test]
async fn without_verification_uri_complete_there_is_no_link_no_qr_and_no_prefill() {
    let h = with_policy("verification_uri_complete: false");
    let r = h.post("/device/code", &[], "client_id=tv-app").await;
    let v = json(&r);
    assert!(v.get("verification_uri_complete").is_none(), "{v}");
    let user_code = v["user_code"].as_str().unwrap().to_string();
    // A phisher's link with the code: the form is not prefilled; no QR code is drawn.
    for target in [
        format!("/device?user_code={user_code}"),
        format!("/device?user_code={user_code}&t=AAAAAAAAAAAAAAAA"),
    ] {
        let r = h.send("GET", &target, &[], "").await.unwrap();
        assert_eq!(r.status, 200);
        assert!(!text(&r).contains(&user_code), "{target}");
    }
    let r = h
        .send("GET", &format!("/device/qr?user_code={user_code}"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    // A client that keeps it gets a link that prefills and draws.
    let r = h
        .post(
            "/device/code",
            &[],
            "client_id=kiosk&client_secret=kiosk-secret",
        )
        .await;
    let link = json(&r)["verification_uri_complete"]
        .as_str()
        .unwrap()
        .to_string();
    let query = link.split_once('?').unwrap().1;
    let code = json(&r)["user_code"].as_str().unwrap().to_string();
    let page = h
        .send("GET", &format!("/device?{query}"), &[], "")
        .await
        .unwrap();
    assert!(text(&page).contains(&code));
    let qr = h
        .send("GET", &format!("/device/qr?{query}"), &[], "")
        .await
        .unwrap();
    assert_eq!(qr.status, 200);
}

#[tokio::test]
async fn without_refresh_tokens_offline_access_is_neither_shown_nor_asked() {
    let h = with_policy("refresh_tokens: false");
    let (_, user_code) = h
        .authorize_from("127.0.0.1", "openid%20offline_access")
        .await
        .unwrap();
    let g =
        h.gw.device
            .lookup(&user_code, h.clock.now().secs())
            .await
            .unwrap();
    assert_eq!(g.scopes, ["openid"]);
    let (cookie, _) = h.browser().await;
    let (r, csrf) = h.enter(&cookie, &user_code).await;
    assert!(!text(&r).contains("offline_access"));
    learn_discovery(&h).await;
    let r = h.act(&cookie, &user_code, &csrf, "approve").await;
    let location = r.header_value("location").unwrap();
    assert!(
        !location.contains("offline_access") && !location.contains("prompt=consent"),
        "{location}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_pending_bounds_one_clients_live_grants_even_when_asked_at_once() {
    let h = Arc::new(with_policy("max_pending: 5"));
    let mut tasks = Vec::new();
    for i in 0..40 {
        let h = h.clone();
        // Many networks, so only this rule (not the per-network share) can refuse.
        tasks.push(tokio::spawn(async move {
            h.authorize_from(&format!("10.{i}.0.1"), "openid").await
        }));
    }
    let mut issued = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => issued += 1,
            Err(r) => {
                assert_eq!(r.status, 429, "{}", text(&r));
                assert!(r.header_value("retry-after").is_some());
                assert_eq!(policy_facts(&r), ["max_pending"]);
                assert_eq!(events(&r), [Event::PolicyRefused("max_pending")]);
            }
        }
    }
    assert_eq!(issued, 5);
    // Other clients keep their room.
    let r = h
        .post(
            "/device/code",
            &[],
            "client_id=kiosk&client_secret=kiosk-secret",
        )
        .await;
    assert_eq!(r.status, 200);
    // Once those grants expire, their slots are free.
    h.advance(601);
    assert!(h.authorize_from("10.99.0.1", "openid").await.is_ok());
}

/// A login at a loopback IdP whose ID token carries `acr` and `auth_time` (seconds before
/// now), and whose userinfo says `userinfo`: the callback's reply and the grant id.
async fn login_under(
    policy: &str,
    acr: Option<&str>,
    auth_age: Option<u64>,
    userinfo: Value,
    refresh_token: bool,
) -> (Harness, Reply, String) {
    let answers = Answers::default();
    let addr = test_idp(answers.clone()).await;
    let h = harness_with(&policy_config(policy).replace("127.0.0.1:9", &addr.to_string()));
    let doc = r#"{"issuer":"http://gw.test","authorization_endpoint":"http://gw.test/auth","token_endpoint":"http://gw.test/token","jwks_uri":"http://gw.test/jwks","userinfo_endpoint":"http://gw.test/userinfo"}"#;
    h.gw.oidc.learn_discovery(doc.as_bytes()).await.unwrap();
    let (cookie, _) = h.browser().await;
    let (_, user_code) = h.authorize().await;
    let (_, csrf) = h.enter(&cookie, &user_code).await;
    let r = h.act(&cookie, &user_code, &csrf, "approve").await;
    assert_eq!(r.status, 303, "{}", text(&r));
    let location = url::Url::parse(r.header_value("location").unwrap()).unwrap();
    let q: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
    let state = q["state"].clone();
    let grant = state.split_once('.').unwrap().0.to_string();
    let g = h.gw.device.by_id(&grant).await.unwrap().unwrap();
    let Status::Authorizing(login) = &g.status else {
        panic!("not authorizing")
    };
    let now = h.clock.now().secs();
    let (mut tokens, jwks) = signed_tokens_with(
        "tv-app",
        &login.nonce,
        "alice",
        now,
        acr,
        auth_age.map(|a| now - a),
    );
    if refresh_token {
        let mut t: serde_json::Map<String, Value> = serde_json::from_str(&tokens).unwrap();
        t.insert("refresh_token".into(), "RT".into());
        tokens = Value::Object(t).to_string();
    }
    *answers.lock().unwrap() = vec![
        ("post /token ".into(), tokens),
        ("get /jwks ".into(), jwks),
        ("get /userinfo ".into(), userinfo.to_string()),
    ];
    let r = h
        .callback(&format!("state={state}&code=abc"), &cookie)
        .await;
    (h, r, grant)
}

fn denied_by(r: &Reply, rule: &'static str) {
    assert_eq!(r.status, 403, "{}", text(r));
    assert!(text(r).contains("data-outcome=\"policy_refused\""));
    assert_eq!(events(r), [Event::Denied(By::Policy(rule))]);
    assert_eq!(policy_facts(r), [rule]);
}

#[tokio::test]
async fn require_claims_read_userinfo_and_deny_a_user_without_them() {
    let rule = "require_claims:\n  groups: [tv-admins]\n  email_verified: [true]";
    let ok = serde_json::json!({"sub": "alice", "groups": ["staff", "tv-admins"], "email_verified": true});
    let (h, r, grant) = login_under(rule, None, None, ok, false).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert!(matches!(
        h.gw.device.by_id(&grant).await.unwrap().unwrap().status,
        Status::Approved { .. }
    ));
    for bad in [
        serde_json::json!({"sub": "alice", "groups": ["staff"], "email_verified": true}),
        serde_json::json!({"sub": "alice", "groups": ["tv-admins"], "email_verified": false}),
        serde_json::json!({"sub": "alice", "groups": "tv-admins-not"}),
        serde_json::json!({"sub": "alice"}),
        // Another subject's userinfo is not this user's.
        serde_json::json!({"sub": "mallory", "groups": ["tv-admins"], "email_verified": true}),
    ] {
        let (h, r, grant) = login_under(rule, None, None, bad.clone(), false).await;
        if bad["sub"] == "mallory" {
            assert_eq!(r.status, 400, "{}", text(&r));
        } else {
            denied_by(&r, "require_claims");
        }
        let g = h.gw.device.by_id(&grant).await.unwrap().unwrap();
        assert!(matches!(g.status, Status::Denied { .. }), "{bad}");
    }
}

#[tokio::test]
async fn acr_values_are_asked_upstream_and_checked() {
    let (_, r, _) = login_under(
        "acr_values: [urn:mfa]",
        Some("urn:mfa"),
        None,
        Value::Null,
        false,
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let (_, r, _) = login_under(
        "acr_values: [urn:mfa]",
        Some("urn:pwd"),
        None,
        Value::Null,
        false,
    )
    .await;
    denied_by(&r, "acr_values");
    let (_, r, _) = login_under("acr_values: [urn:mfa]", None, None, Value::Null, false).await;
    denied_by(&r, "acr_values");
}

#[tokio::test]
async fn max_age_is_asked_upstream_and_auth_time_checked() {
    let (_, r, _) = login_under("max_age: 0", None, Some(5), Value::Null, false).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    // An hour-old authentication, or none stated: refused.
    let (_, r, _) = login_under("max_age: 0", None, Some(3600), Value::Null, false).await;
    denied_by(&r, "max_age");
    let (_, r, _) = login_under("max_age: 600", None, None, Value::Null, false).await;
    denied_by(&r, "max_age");
}

#[tokio::test]
async fn a_refresh_token_the_idp_sends_anyway_never_reaches_the_device() {
    let (h, r, grant) = login_under("refresh_tokens: false", None, None, Value::Null, true).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let Status::Approved { tokens, .. } = h.gw.device.by_id(&grant).await.unwrap().unwrap().status
    else {
        panic!("not approved")
    };
    assert!(tokens.contains_key("access_token") && !tokens.contains_key("refresh_token"));
    // With refresh tokens allowed, it is kept.
    let (h, _, grant) = login_under("refresh_tokens: true", None, None, Value::Null, true).await;
    let Status::Approved { tokens, .. } = h.gw.device.by_id(&grant).await.unwrap().unwrap().status
    else {
        panic!("not approved")
    };
    assert_eq!(tokens["refresh_token"], "RT");
}

#[tokio::test]
async fn the_upstream_login_carries_acr_values_and_max_age() {
    let h = with_policy("acr_values: [urn:mfa, urn:hwk]\nmax_age: 0");
    let (cookie, _) = h.browser().await;
    let (_, user_code) = h.authorize().await;
    let (_, csrf) = h.enter(&cookie, &user_code).await;
    learn_discovery(&h).await;
    let r = h.act(&cookie, &user_code, &csrf, "approve").await;
    let location = url::Url::parse(r.header_value("location").unwrap()).unwrap();
    let q: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
    assert_eq!(q["acr_values"], "urn:mfa urn:hwk");
    assert_eq!(q["max_age"], "0");
}
