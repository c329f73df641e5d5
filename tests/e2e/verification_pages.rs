//! The verification experience in a real headless Chromium: every outcome a person can reach,
//! in their language, with the operator's branding, each page checked with axe-core (by
//! `common::browser`) and screenshotted to `target/browser-screenshots/<name>/`.
//!
//! Outcomes covered here and in `device_flow` (approve, deny, already denied, IdP cancel,
//! expired): prefilled code needs confirmation, approved (German, branded), code already used,
//! unknown code then retry, device on another network, IdP unreachable, client disabled while
//! its grant was pending. Plus the QR code image and an operator's templates directory.

use std::net::{IpAddr, Ipv4Addr};

use crate::common::{browser, s, Env, Options};
use serde_json::json;

/// Three keys rebrand the pages.
const BRANDING: &str = "  title: Acme Streaming\n  logo_url: \"data:image/svg+xml,%3Csvg%20xmlns='http://www.w3.org/2000/svg'%20viewBox='0%200%2040%2040'%3E%3Ccircle%20cx='20'%20cy='20'%20r='18'%20fill='%238a1538'/%3E%3C/svg%3E\"\n  colors:\n    accent: \"#8a1538\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_in_german_with_branding_then_the_code_is_used() {
    let env = Env::start(Options {
        ui: Some(BRANDING.into()),
        ..Options::default()
    })
    .await;
    let dev = env
        .authorize("tv-app", "openid profile offline_access")
        .await;
    let code = s(&dev["user_code"]).to_string();
    let report = browser(json!({
        "name": "approve-de-branded",
        "url": dev["verification_uri_complete"],
        "action": "approve",
        "locale": "de-DE",
        "username": "greta",
    }))
    .await;
    let pages = report["pages"].as_array().unwrap();
    // §3.3.1: the complete URI only prefills the code; the first page asks to continue.
    assert_eq!(
        s(&pages[0]["title"]),
        "Gerät verbinden · Acme Streaming",
        "{report}"
    );
    assert_eq!(pages[0]["status"], 200);
    // The consent page names the client, its description and what it may do, in German.
    assert_eq!(
        s(&pages[1]["title"]),
        "Living-room TV Zugriff auf Ihr Konto erlauben? · Acme Streaming",
        "{report}"
    );
    assert_eq!(s(&report["lang"]), "de");
    assert!(
        s(&report["text"]).contains("Sie sind angemeldet"),
        "{report}"
    );

    let (status, body) = env.poll("tv-app", s(&dev["device_code"])).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["access_token"].is_string());

    // The same code again: already used, said plainly, with no way to approve it twice.
    let again = browser(json!({
        "name": "already-used",
        "url": format!("{}/device", env.url),
        "user_code": code.to_lowercase().replace('-', " "),
        "action": "enter",
    }))
    .await;
    assert_eq!(
        s(&again["title"]),
        "This code was already used · Acme Streaming",
        "{again}"
    );
    assert_eq!(again["status"], 400);
    assert!(!s(&again["text"]).contains("Approve"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_code_then_retry_and_a_device_on_another_network() {
    let env = Env::start(Options::default()).await;
    // The device asks from another network (127.1.0.1 is not in the browser's 127.0.0.0/24)
    // and says what software it runs.
    let device = reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 1, 0, 1)))
        .user_agent("SmartTV-OS/3.1 (Model X; build 4711)")
        .build()
        .unwrap();
    let dev: serde_json::Value = device
        .post(format!("{}/device/code", env.url))
        .form(&[("client_id", "tv-app"), ("scope", "openid email")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let code = s(&dev["user_code"]).to_string();
    // Users mistype: a wrong code gets an error next to the input, and the right one then works.
    let wrong = if code.starts_with('B') {
        "CCCC-CCCC"
    } else {
        "BBBB-BBBB"
    };
    let report = browser(json!({
        "name": "unknown-then-retry",
        "url": format!("{}/device", env.url),
        "user_code": wrong,
        "retry_code": code,
        "action": "lookup",
    }))
    .await;
    let pages = report["pages"].as_array().unwrap();
    assert_eq!(s(&pages[1]["name"]), "after-enter");
    assert_eq!(pages[1]["status"], 400);
    assert_eq!(s(&pages[1]["title"]), "Connect a device", "{report}");
    let text = s(&report["text"]);
    assert!(
        text.contains("Allow Living-room TV to use your account?"),
        "{report}"
    );
    assert!(
        text.contains("The TV in the living room, streaming films"),
        "{text}"
    );
    assert!(text.contains("from network address 127.1.0.1"), "{text}");
    assert!(
        text.contains("SmartTV-OS/3.1") && !text.contains("4711"),
        "{text}"
    );
    assert!(text.contains("See your email address (email)"), "{text}");
    assert!(
        text.contains("This request came from another network (127.1.0.1)"),
        "{text}"
    );

    // The same device asking from the browser's network shows no such warning.
    let near = env.authorize("tv-app", "openid").await;
    let report = browser(json!({
        "name": "same-network",
        "url": near["verification_uri_complete"],
        "action": "lookup",
    }))
    .await;
    assert!(!s(&report["text"]).contains("another network"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_unreachable_is_a_gateway_error_page_and_the_code_stays_valid() {
    let env = Env::start(Options {
        idp_down: true,
        ..Options::default()
    })
    .await;
    let dev = env.authorize("tv-app", "openid").await;
    let report = browser(json!({
        "name": "idp-unreachable",
        "url": dev["verification_uri_complete"],
        "action": "approve",
        "idp_action": "none",
        "locale": "fr-FR",
    }))
    .await;
    assert_eq!(report["status"], 502, "{report}");
    assert_eq!(
        s(&report["title"]),
        "La connexion n’a pas pu aboutir",
        "{report}"
    );
    assert!(s(&report["text"]).contains("Saisir un code à nouveau"));
    let (status, body) = env.poll("tv-app", s(&dev["device_code"])).await;
    assert_eq!((status, s(&body["error"])), (400, "authorization_pending"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_disabled_while_its_grant_waits_cannot_be_approved() {
    let mut env = Env::start(Options {
        redis: true,
        ..Options::default()
    })
    .await;
    let dev = env.authorize("tv-app", "openid").await;
    // The operator turns the client off and restarts; the grant survives in Redis.
    env.edit_config(|c| {
        c.replace(
            "    name: Living-room TV\n",
            "    name: Living-room TV\n    enabled: false\n",
        )
    });
    env.restart_gateway();
    let report = browser(json!({
        "name": "client-disabled",
        "url": dev["verification_uri_complete"],
        "action": "enter",
    }))
    .await;
    // Either the page refuses the disabled client, or, when the new process's sweep (every
    // 5 s) came first on a slow machine, the grant is already denied: never a consent page.
    let refused = (report["status"].as_u64(), s(&report["title"]));
    assert!(
        refused == (Some(403), "This application is not allowed")
            || refused == (Some(400), "This request was denied"),
        "{report}"
    );
    // New authorizations are refused, and the waiting device is refused too.
    let (status, _, body) = env
        .post_form("/device/code", &[("client_id", "tv-app")])
        .await;
    assert_eq!((status, s(&body["error"])), (401, "invalid_client"));
    let (status, body) = env.poll("tv-app", s(&dev["device_code"])).await;
    assert_eq!(
        (status, s(&body["error"])),
        (401, "invalid_client"),
        "{body}"
    );
    assert!(env.gateway_log().contains("by=\"operator\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qr_code_and_operator_templates() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("locales")).unwrap();
    std::fs::write(
        dir.path().join("locales/en.yaml"),
        "enter_heading: Pair your Acme TV\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("locales/sv.yaml"),
        "enter_button: Fortsätt\n",
    )
    .unwrap();
    let env = Env::start(Options {
        ui: Some(format!("  templates_dir: {}\n", dir.path().display())),
        ..Options::default()
    })
    .await;

    // QR code of verification_uri_complete, for devices that can show an image.
    let dev = env.authorize("tv-app", "openid").await;
    let code = s(&dev["user_code"]);
    let query = s(&dev["verification_uri_complete"])
        .split_once('?')
        .unwrap()
        .1;
    let resp = env.get(&format!("/device/qr?{query}")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/svg+xml");
    let svg = resp.text().await.unwrap();
    assert!(svg.starts_with("<?xml") && svg.contains("<svg"), "{svg}");
    for bad in [
        "/device/qr",
        "/device/qr?user_code=nope",
        "/device/qr?user_code=%FF",
        // Without the tag of an issued link, nothing is drawn.
        &format!("/device/qr?user_code={code}"),
        &format!("/device/qr?user_code={code}&t=AAAAAAAAAAAAAAAA"),
    ] {
        let resp = env.get(bad).await;
        assert_eq!(resp.status(), 400, "{bad}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(s(&body["error"]), "invalid_request");
    }
    // The operator's messages replace the built-in ones and add a language.
    let page = env.get("/device").await.text().await.unwrap();
    assert!(page.contains("Pair your Acme TV"), "{page}");
    let swedish = env
        .http
        .get(format!("{}/device", env.url))
        .header("Accept-Language", "sv-SE,sv;q=0.9")
        .send()
        .await
        .unwrap();
    assert_eq!(swedish.headers()["content-language"], "sv");
    assert!(swedish.text().await.unwrap().contains(">Fortsätt</button>"));
}

/// Guessers on other networks keep everyone's wrong-code budget spent: the user with the right
/// code is asked to sign in at the IdP first (a page axe checks too), then enters the code on a
/// budget of their own and approves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_guessers_spend_the_global_budget_a_user_signs_in_first_and_approves() {
    let env = Env::start(Options {
        limits: Some("  code_failures_global_per_minute: 2\n".into()),
        ..Options::default()
    })
    .await;
    for net in [2u8, 3] {
        let guesser = crate::common::client_from(&format!("127.0.{net}.1"));
        let resp = guesser
            .post(format!("{}/device", env.url))
            .form(&[("user_code", "BCDFGHJK")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
    }
    let dev = env.authorize("tv-app", "openid").await;
    let report = browser(json!({
        "name": "sign-in-first",
        "url": dev["verification_uri"],
        "user_code": dev["user_code"],
        "sign_in_first": true,
        "action": "approve",
        "username": "hana",
    }))
    .await;
    let titles: Vec<&str> = report["pages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| s(&p["title"]))
        .collect();
    assert!(titles.contains(&"Sign in to continue"), "{report}");
    assert!(s(&report["text"]).contains("You're signed in"), "{report}");
    let (status, tokens) = env
        .poll_until_done(
            "tv-app",
            s(&dev["device_code"]),
            1,
            std::time::Duration::from_secs(10),
        )
        .await;
    assert_eq!(status, 200, "{tokens}");
}
