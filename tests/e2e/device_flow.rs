//! The device flow with the embedded store: a device client (reqwest), the real gateway binary,
//! a real IdP (`oidc-provider`) and a real headless Chromium on the verification page.

use std::time::{Duration, Instant};

use crate::common::{
    browser, id_token_claims, s, scripted_upstream, Env, Options, Reply, DEVICE_GRANT,
};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_flow_delivers_tokens_once_and_refresh_passes_through() {
    let env = Env::start(Options::default()).await;

    // 1. A client that knows only the issuer discovers the device flow.
    let disc: Value = env.get_json("/.well-known/openid-configuration").await;
    assert_eq!(s(&disc["issuer"]), env.url);
    assert_eq!(
        s(&disc["device_authorization_endpoint"]),
        format!("{}/device/code", env.url)
    );
    assert!(disc["grant_types_supported"]
        .as_array()
        .unwrap()
        .contains(&json!(DEVICE_GRANT)));
    let token_endpoint = s(&disc["token_endpoint"]).to_string();
    assert_eq!(token_endpoint, format!("{}/token", env.url));

    // 2. Device authorization.
    let dev = env
        .authorize("tv-app", "openid profile offline_access")
        .await;
    let user_code = s(&dev["user_code"]).to_string();
    assert_eq!(user_code.len(), 9, "XXXX-XXXX: {user_code}");
    assert!(user_code
        .chars()
        .all(|c| c == '-' || "BCDFGHJKLMNPQRSTVWXZ".contains(c)));
    assert!(s(&dev["device_code"]).len() >= 43);
    assert_eq!(s(&dev["verification_uri"]), format!("{}/device", env.url));
    // The complete URI carries this gateway's tag: only links it issued prefill the code.
    let complete = s(&dev["verification_uri_complete"]);
    let prefix = format!("{}/device?user_code={user_code}&t=", env.url);
    assert!(complete.starts_with(&prefix), "{complete}");
    assert_eq!(complete.len(), prefix.len() + 16, "{complete}");
    assert_eq!(dev["expires_in"], 600);
    assert_eq!(dev["interval"], 1);
    let device_code = s(&dev["device_code"]).to_string();

    let (status, body) = env.poll("tv-app", &device_code).await;
    assert_eq!((status, s(&body["error"])), (400, "authorization_pending"));

    // 3. The user approves in a real browser and logs in at the IdP.
    let report = browser(json!({
        "name": "approve",
        "url": dev["verification_uri_complete"],
        "action": "approve",
        "username": "alice",
    }))
    .await;
    assert_eq!(s(&report["title"]), "You're signed in", "{report}");
    assert!(s(&report["text"]).contains("return to your device"));
    let consent = &report["pages"][1];
    assert_eq!(
        s(&consent["title"]),
        "Allow Living-room TV to use your account?",
        "{report}"
    );

    // 4. The next poll gets the IdP's tokens, once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, tokens) = env.poll("tv-app", &device_code).await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(s(&tokens["token_type"]), "Bearer");
    assert!(!s(&tokens["access_token"]).is_empty());
    assert!(!s(&tokens["id_token"]).is_empty());
    assert!(!s(&tokens["refresh_token"]).is_empty(), "{tokens}");
    let scope: Vec<&str> = s(&tokens["scope"]).split(' ').collect();
    for want in ["openid", "profile", "offline_access"] {
        assert!(scope.contains(&want), "{tokens}");
    }
    let expires_in = tokens["expires_in"].as_u64().unwrap();
    assert!(
        (3590..=3600).contains(&expires_in),
        "expires_in {expires_in}"
    );

    let (status, again) = env.poll("tv-app", &device_code).await;
    assert_eq!((status, s(&again["error"])), (400, "invalid_grant"));

    // The ID token is for alice (the gateway validated it; the device can read it).
    let claims = id_token_claims(s(&tokens["id_token"]));
    assert_eq!(s(&claims["sub"]), "alice");
    assert_eq!(s(&claims["aud"]), "tv-app");

    // 5. Everything else passes through: userinfo with the access token, JWKS, refresh.
    let me = env
        .http
        .get(s(&disc["userinfo_endpoint"]))
        .bearer_auth(s(&tokens["access_token"]))
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    let me: Value = me.json().await.unwrap();
    assert_eq!(s(&me["sub"]), "alice");
    assert_eq!(s(&me["name"]), "User alice");
    let jwks = env.http.get(s(&disc["jwks_uri"])).send().await.unwrap();
    assert_eq!(jwks.status(), 200);
    let (status, refreshed) = env
        .refresh("/token", "tv-app", s(&tokens["refresh_token"]))
        .await;
    assert_eq!(status, 200, "{refreshed}");
    assert!(!s(&refreshed["access_token"]).is_empty());
    assert_ne!(refreshed["access_token"], tokens["access_token"]);

    // A replayed callback URL changes nothing and says so.
    let replay = env.http.get(s(&report["url"])).send().await.unwrap();
    assert_eq!(replay.status(), 400);
    let text = replay.text().await.unwrap();
    assert!(text.contains("already used"), "{text}");

    // The log never carries codes or tokens.
    let log = env.gateway_log();
    for secret in [
        device_code.as_str(),
        s(&tokens["access_token"]),
        &user_code.replace('-', ""),
    ] {
        assert!(!log.contains(secret), "a secret leaked into the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confidential_client_flow_uses_its_secret_upstream() {
    let env = Env::start(Options::default()).await;
    let dev = env.authorize("kiosk", "").await;
    // Typed by hand: lowercase, with spaces instead of the dash.
    let typed = s(&dev["user_code"]).to_lowercase().replace('-', " ");
    let report = browser(json!({
        "name": "kiosk",
        "url": dev["verification_uri"],
        "user_code": typed,
        "action": "approve",
        "username": "bob",
    }))
    .await;
    assert_eq!(s(&report["title"]), "You're signed in", "{report}");
    let (status, tokens) = env
        .poll_until_done("kiosk", s(&dev["device_code"]), 1, Duration::from_secs(20))
        .await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(s(&id_token_claims(s(&tokens["id_token"]))["sub"]), "bob");
    // Scope omitted: the client's allowed scopes were requested.
    assert!(s(&tokens["scope"]).contains("profile"), "{tokens}");
    assert!(s(&tokens["scope"]).contains("offline_access"), "{tokens}");
    assert!(tokens.get("refresh_token").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_reaches_the_device() {
    let env = Env::start(Options::default()).await;
    let dev = env.authorize("tv-app", "openid").await;
    let report = browser(json!({
        "name": "deny",
        "url": dev["verification_uri_complete"],
        "action": "deny",
    }))
    .await;
    assert_eq!(s(&report["title"]), "Denied and reported", "{report}");
    let (status, body) = env.poll("tv-app", s(&dev["device_code"])).await;
    assert_eq!((status, s(&body["error"])), (400, "access_denied"));
    // The code cannot be approved afterwards.
    let again = browser(json!({
        "name": "deny-again",
        "url": dev["verification_uri_complete"],
        "action": "enter",
    }))
    .await;
    assert_eq!(s(&again["title"]), "This request was denied", "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_cancelled_at_the_idp_denies_the_device() {
    let env = Env::start(Options::default()).await;
    let dev = env.authorize("tv-app", "openid").await;
    let report = browser(json!({
        "name": "idp-abort",
        "url": dev["verification_uri_complete"],
        "action": "approve",
        "idp_action": "abort",
    }))
    .await;
    assert_eq!(s(&report["title"]), "Sign-in did not complete", "{report}");
    let (status, body) = env.poll("tv-app", s(&dev["device_code"])).await;
    assert_eq!(
        (status, s(&body["error"])),
        (400, "access_denied"),
        "{body}"
    );
    assert!(s(&body["error_description"]).contains("access_denied"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_codes() {
    let env = Env::start(Options {
        expires_in: 2,
        ..Options::default()
    })
    .await;
    let dev = env.authorize("tv-app", "openid").await;
    assert_eq!(dev["expires_in"], 2);
    // A grant lives at least the 2 s it advertised, and less than a second more (its lifetime
    // starts at the next whole second).
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let (status, body) = env.poll("tv-app", s(&dev["device_code"])).await;
    assert_eq!((status, s(&body["error"])), (400, "expired_token"));
    let report = browser(json!({
        "name": "expired",
        "url": dev["verification_uri_complete"],
        "action": "enter",
    }))
    .await;
    assert_eq!(s(&report["title"]), "This code has expired", "{report}");
    assert_eq!(report["status"], 400);
    // The audit log names the grant that expired (the same one that was created).
    let log = env.gateway_log();
    let grant_of = |event: &str| {
        log.lines()
            .find(|l| l.contains("audit") && l.contains(&format!("event=\"{event}\"")))
            .and_then(|l| l.split("grant=").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no {event} audit event in {log}"))
    };
    assert_eq!(grant_of("expired"), grant_of("created"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_endpoint_errors() {
    let env = Env::start(Options::default()).await;
    type Case<'a> = (&'a str, &'a str, Vec<u8>, u16, &'a str);
    let form = "application/x-www-form-urlencoded";
    let cases: Vec<Case> = vec![
        (
            "missing client_id",
            form,
            b"scope=openid".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "unknown client",
            form,
            b"client_id=nobody".to_vec(),
            401,
            "invalid_client",
        ),
        (
            "disabled client",
            form,
            b"client_id=retired".to_vec(),
            401,
            "invalid_client",
        ),
        (
            "scope not allowed",
            form,
            b"client_id=tv-app&scope=openid%20admin".to_vec(),
            400,
            "invalid_scope",
        ),
        (
            "repeated parameter",
            form,
            b"client_id=tv-app&client_id=tv-app".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "JSON body",
            "application/json",
            br#"{"client_id":"tv-app"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "not UTF-8",
            form,
            b"client_id=tv-app&scope=%FF".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "too large",
            form,
            vec![b'a'; 70_000],
            413,
            "invalid_request",
        ),
    ];
    for (name, ct, body, status, error) in cases {
        let (got, headers, json) = env.post_raw("/device/code", ct, body).await;
        assert_eq!((got, s(&json["error"])), (status, error), "{name}: {json}");
        if status == 401 {
            assert!(headers.contains_key("www-authenticate"), "{name}");
        }
    }
    // Unknown parameters (Oracle-style response_type) are ignored.
    let (status, _, body) = env
        .post_form(
            "/device/code",
            &[("client_id", "tv-app"), ("response_type", "device_code")],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Wrong method.
    let resp = env.get("/device/code").await;
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_errors_and_slow_down() {
    let env = Env::start(Options {
        interval: 2,
        ..Options::default()
    })
    .await;
    let dev = env.authorize("tv-app", "openid").await;
    let code = s(&dev["device_code"]);

    let (status, body) = env.poll("tv-app", "not-a-device-code").await;
    assert_eq!((status, s(&body["error"])), (400, "invalid_grant"));
    let (status, body) = env.poll("kiosk", code).await;
    assert_eq!(
        (status, s(&body["error"])),
        (400, "invalid_grant"),
        "another client's code"
    );
    let (status, body) = env.poll("nobody", code).await;
    assert_eq!((status, s(&body["error"])), (401, "invalid_client"));
    let (status, _, body) = env
        .post_form(
            "/token",
            &[("grant_type", DEVICE_GRANT), ("client_id", "tv-app")],
        )
        .await;
    assert_eq!(
        (status, s(&body["error"])),
        (400, "invalid_request"),
        "{body}"
    );
    let (status, _, body) = env
        .post_form(
            "/token",
            &[
                ("grant_type", DEVICE_GRANT),
                ("client_id", "tv-app"),
                ("device_code", code),
                ("device_code", code),
            ],
        )
        .await;
    assert_eq!(
        (status, s(&body["error"])),
        (400, "invalid_request"),
        "{body}"
    );

    // slow_down: the interval grows by 5 s and stays grown.
    let (_, body) = env.poll("tv-app", code).await;
    assert_eq!(s(&body["error"]), "authorization_pending");
    let (_, body) = env.poll("tv-app", code).await;
    assert_eq!(
        (s(&body["error"]), &body["interval"]),
        ("slow_down", &json!(7))
    );
    let (_, body) = env.poll("tv-app", code).await;
    assert_eq!(
        (s(&body["error"]), &body["interval"]),
        ("slow_down", &json!(12))
    );

    // Other grants at the token endpoint are the IdP's business, not ours.
    let (status, _, body) = env
        .post_form(
            "/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "tv-app"),
            ],
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_ne!(s(&body["error"]), "invalid_grant");
    assert!(
        !s(&body["error"]).is_empty(),
        "the IdP answers with its own error: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_grants_are_bounded() {
    let env = Env::start(Options {
        max_pending: 2,
        ..Options::default()
    })
    .await;
    env.authorize("tv-app", "").await;
    env.authorize("tv-app", "").await;
    let (status, _, body) = env
        .post_form("/device/code", &[("client_id", "tv-app")])
        .await;
    assert_eq!(
        (status, s(&body["error"])),
        (503, "temporarily_unavailable")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_page_errors_are_pages_not_failures() {
    let env = Env::start(Options::default()).await;
    let page = |path: &str| env.http.get(format!("{}{path}", env.url));

    let resp = page("/device").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert!(s(&json!(h["content-security-policy"].to_str().unwrap()))
        .contains("frame-ancestors 'none'"));
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["cache-control"], "no-store");
    let cookie = h["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );

    // A prefill that is not this gateway's link is not reflected at all; a typed code is,
    // escaped.
    let body = page("/device?user_code=%3Cscript%3Ex")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!body.contains("script"), "{body}");
    let body = env
        .http
        .post(format!("{}/device", env.url))
        .form(&[("user_code", "<script>x")])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("&lt;script&gt;") && !body.contains("<script>x"));

    let form = "application/x-www-form-urlencoded";
    let cases: Vec<(&str, &str, u16, &str)> = vec![
        (
            "malformed code",
            "action=lookup&user_code=hello",
            400,
            "codes are 8 letters",
        ),
        (
            "unknown code",
            "action=lookup&user_code=BCDF-GHJK",
            400,
            "recognise that code",
        ),
        (
            "approve without CSRF",
            "action=approve&user_code=BCDF-GHJK",
            400,
            "not valid here",
        ),
        (
            "repeated parameter",
            "user_code=BCDFGHJK&user_code=BCDFGHJK",
            400,
            "Something is missing",
        ),
    ];
    for (name, body, status, text) in cases {
        let resp = env
            .http
            .post(format!("{}/device", env.url))
            .header("content-type", form)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{name}");
        let html = resp.text().await.unwrap();
        assert!(html.contains(text), "{name}: {html}");
    }

    for (name, path, text) in [
        ("no state", "/device/callback?code=x", "not valid here"),
        (
            "forged state",
            "/device/callback?code=x&state=abc.def",
            "not valid here",
        ),
        (
            "repeated state",
            "/device/callback?state=a.b&state=a.b",
            "Something is missing",
        ),
    ] {
        let resp = page(path).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{name}");
        assert!(resp.text().await.unwrap().contains(text), "{name}");
    }

    // A callback for a real login, opened in a browser that did not start it, changes nothing.
    let dev = env.authorize("tv-app", "openid").await;
    let login = env.approve_via_http(s(&dev["user_code"])).await;
    assert_eq!(login.status, 303, "{}", login.body);
    let authorize = url::Url::parse(login.location.as_deref().unwrap()).unwrap();
    let q: std::collections::HashMap<String, String> =
        authorize.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], "tv-app");
    assert_eq!(q["redirect_uri"], format!("{}/device/callback", env.url));
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["response_type"], "code");
    assert!(!q["nonce"].is_empty());
    // A response claiming another issuer (RFC 9207 mix-up) is refused, even from the right browser.
    let mixup = format!(
        "/device/callback?code=x&iss=https%3A%2F%2Fevil.test&state={}",
        q["state"]
    );
    let resp = page(&mixup)
        .header("cookie", &login.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let callback = format!("/device/callback?error=access_denied&state={}", q["state"]);
    let resp = page(&callback).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("started in another browser"));
    let (status, body) = env.poll("tv-app", s(&dev["device_code"])).await;
    assert_eq!((status, s(&body["error"])), (400, "authorization_pending"));
    // The right browser's callback with an IdP error denies the device.
    let resp = page(&callback)
        .header("cookie", &login.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("Sign-in did not complete"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, body) = env.poll("tv-app", s(&dev["device_code"])).await;
    assert_eq!((status, s(&body["error"])), (400, "access_denied"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_down_gives_502_fast_and_device_endpoint_keeps_working() {
    let env = Env::start(Options {
        idp_down: true,
        ..Options::default()
    })
    .await;
    let start = Instant::now();
    let resp = env.get("/jwks").await;
    assert_eq!(resp.status(), 502);
    let resp = env.get("/.well-known/openid-configuration").await;
    assert_eq!(resp.status(), 502);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "502 took {:?}",
        start.elapsed()
    );
    let dev = env.authorize("tv-app", "openid").await;
    assert!(!s(&dev["user_code"]).is_empty());
    // Approving while the IdP is down keeps the code usable and says so.
    let login = env.approve_via_http(s(&dev["user_code"])).await;
    assert_eq!(login.status, 502);
    assert!(
        login.body.contains("Your code is still valid"),
        "{}",
        login.body
    );
    let (status, body) = env.poll("tv-app", s(&dev["device_code"])).await;
    assert_eq!((status, s(&body["error"])), (400, "authorization_pending"));
}

#[test]
fn check_flag_lists_every_error() {
    let bin = env!("CARGO_BIN_EXE_devicegate");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "listen: nowhere\npublic_url: localhost\nupstream:\n  address: 127.0.0.1:1\n  issuer: http://x\nclients:\n  - client_id: a\n    client_secret: ${DG_TEST_UNSET_VAR}\n  - client_id: a\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin)
        .args(["--check", "--config"])
        .arg(&bad)
        .env_remove("DG_TEST_UNSET_VAR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "listen:",
        "public_url:",
        "clients[0].client_secret:",
        "clients[1].client_id:",
    ] {
        assert!(err.contains(key), "no error for {key}: {err}");
    }
    assert!(err.contains("DG_TEST_UNSET_VAR is not set"), "{err}");

    // Every shipped example passes `--check` with its `${NAME}` secrets in the environment.
    let conf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut checked = 0;
    for entry in std::fs::read_dir(&conf).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let vars: Vec<&str> = text
            .split("${")
            .skip(1)
            .filter_map(|rest| rest.split('}').next())
            .collect();
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["--check", "--config"]).arg(&path);
        for v in vars {
            // Values of the shapes their keys need.
            let value = match v {
                v if v.contains("WEBHOOK") => "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                v if v.ends_with("_TOKEN") => "example-token-0123456789abcdef",
                _ => "example-secret",
            };
            cmd.env(v, value);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(": OK"),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 7, "only {checked} files in conf/");
}

/// A plain HTTP/1.1 upstream that answers every request with a description of what it received
/// (method, target, headers, body length and hash), to check what pass-through does to requests.
async fn echo_upstream() -> u16 {
    use sha2::{Digest, Sha256};
    scripted_upstream(|req| {
        let report = json!({
            "request_line": req.request_line,
            "headers": req.headers,
            "body_len": req.body.len(),
            "body_sha256": format!("{:x}", Sha256::digest(&req.body)),
        });
        let mut reply = Reply::json(report);
        reply.status = 418;
        reply
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_keeps_requests_intact() {
    use sha2::{Digest, Sha256};
    let port = echo_upstream().await;
    let env = Env::start(Options {
        upstream_port: Some(port),
        ..Options::default()
    })
    .await;
    let host = env.url.trim_start_matches("http://").to_string();
    let big: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let resp = env
            .http
            .request(
                method.parse().unwrap(),
                format!("{}/some/path?x=1&y=%20", env.url),
            )
            .header("x-custom", "kept")
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-host", "evil.example")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-port", "8443")
            .header("forwarded", "for=203.0.113.9;host=evil.example")
            .header("x-real-ip", "203.0.113.9")
            .body(big.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 418, "{method}: upstream status relayed");
        assert_eq!(
            resp.headers()["content-type"],
            "application/json",
            "upstream headers relayed"
        );
        let seen: Value = resp.json().await.unwrap();
        assert_eq!(
            s(&seen["request_line"]),
            format!("{method} /some/path?x=1&y=%20 HTTP/1.1")
        );
        let h = &seen["headers"];
        assert_eq!(s(&h["host"]), host, "Host is kept");
        assert_eq!(s(&h["x-custom"]), "kept");
        // A client's own forwarding headers are replaced, not relayed: the IdP sees the
        // address devicegate saw, and the public origin's scheme and host.
        assert_eq!(s(&h["x-forwarded-for"]), "127.0.0.1");
        assert_eq!(s(&h["x-forwarded-proto"]), "http");
        assert_eq!(s(&h["x-forwarded-host"]), host);
        for spoofable in ["forwarded", "x-real-ip", "x-forwarded-port"] {
            assert!(h.get(spoofable).is_none(), "{spoofable} relayed: {h}");
        }
        assert_eq!(seen["body_len"], big.len(), "{method}");
        assert_eq!(
            s(&seen["body_sha256"]),
            format!("{:x}", Sha256::digest(&big)),
            "{method}: body bytes unchanged"
        );
    }
    // A GET to a path devicegate does not own passes too.
    let resp = env.get("/interaction/abc").await;
    assert_eq!(resp.status(), 418);
}

/// The demo's device client (`examples/device_client.rs`, on the `openidconnect` crate), as
/// `scripts/demo.sh` runs it, with a confidential client: it must authenticate, find everything
/// by discovery, verify the ID token, and refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_device_client_completes_a_login() {
    let env = Env::start(Options::default()).await;
    crate::common::run_demo_client(
        &env.url,
        "kiosk",
        Some(crate::common::KIOSK_SECRET),
        json!({"name": "demo-client", "username": "dora"}),
        "dora",
    )
    .await;
}
