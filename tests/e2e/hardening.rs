//! Abuse and hostile input: client authentication, the bad-input table (raw bytes, so no
//! client library tidies the requests up), user-code brute force, rate limits, and an upstream
//! that misbehaves in every way a test can script.

use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use crate::common::{
    raw_request, s, scripted_upstream, secret_of, Env, Options, Reply, DEVICE_GRANT, KIOSK_SECRET,
};

fn basic(id: &str, secret: &str) -> String {
    let raw = format!("{id}:{secret}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// POSTs a form with an optional `Authorization` header; returns (status, headers, JSON).
async fn post(
    env: &Env,
    path: &str,
    form: &[(&str, &str)],
    auth: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let mut req = env
        .http
        .post(format!("{}{path}", env.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confidential_clients_must_authenticate() {
    let env = Env::start(Options::default()).await;
    let code = "/device/code";
    let kiosk = [("client_id", "kiosk")];

    // No secret, a wrong one (post or Basic): 401 invalid_client with WWW-Authenticate.
    for (form, auth) in [
        (kiosk.to_vec(), None),
        (
            vec![("client_id", "kiosk"), ("client_secret", "wrong")],
            None,
        ),
        (vec![], Some(basic("kiosk", "wrong"))),
        (vec![], Some(basic("kiosk", &format!("{KIOSK_SECRET}x")))),
        (vec![], Some(basic("kiosk", ""))),
    ] {
        let (status, headers, body) = post(&env, code, &form, auth.as_deref()).await;
        assert_eq!(
            (status, s(&body["error"])),
            (401, "invalid_client"),
            "{form:?} {auth:?}"
        );
        assert!(s(&body["error_description"]).len() > 5);
        assert_eq!(headers["www-authenticate"], "Basic realm=\"devicegate\"");
    }
    // The right secret, by client_secret_post or client_secret_basic.
    let (status, _, body) = post(
        &env,
        code,
        &[("client_id", "kiosk"), ("client_secret", KIOSK_SECRET)],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let device_code = s(&body["device_code"]).to_string();
    let (status, _, body) = post(&env, code, &[], Some(&basic("kiosk", KIOSK_SECRET))).await;
    assert_eq!(status, 200, "{body}");
    // Two methods at once, or a Basic user that is not the client_id: invalid_request.
    let (status, _, body) = post(
        &env,
        code,
        &[("client_secret", KIOSK_SECRET)],
        Some(&basic("kiosk", KIOSK_SECRET)),
    )
    .await;
    assert_eq!((status, s(&body["error"])), (400, "invalid_request"));
    let (status, _, body) = post(
        &env,
        code,
        &[("client_id", "tv-app")],
        Some(&basic("kiosk", KIOSK_SECRET)),
    )
    .await;
    assert_eq!((status, s(&body["error"])), (400, "invalid_request"));
    // A public client needs no secret, and one it sends anyway is ignored.
    for form in [
        vec![("client_id", "tv-app")],
        vec![("client_id", "tv-app"), ("client_secret", "anything")],
    ] {
        let (status, _, body) = post(&env, code, &form, None).await;
        assert_eq!(status, 200, "{form:?}: {body}");
    }

    // Polling: the confidential client authenticates there too.
    let poll = [
        ("grant_type", DEVICE_GRANT),
        ("device_code", device_code.as_str()),
        ("client_id", "kiosk"),
    ];
    let (status, _, body) = post(&env, "/token", &poll, None).await;
    assert_eq!(
        (status, s(&body["error"])),
        (401, "invalid_client"),
        "{body}"
    );
    let (status, _, body) = post(&env, "/token", &poll[..2], Some(&basic("kiosk", "nope"))).await;
    assert_eq!(
        (status, s(&body["error"])),
        (401, "invalid_client"),
        "{body}"
    );
    let (status, _, body) = post(
        &env,
        "/token",
        &poll[..2],
        Some(&basic("kiosk", secret_of("kiosk").unwrap())),
    )
    .await;
    assert_eq!(
        (status, s(&body["error"])),
        (400, "authorization_pending"),
        "{body}"
    );
}

/// One bad request, and what it must get.
struct Case {
    name: &'static str,
    request: String,
    status: u16,
    /// The OAuth `error` for JSON answers, or text the page must contain.
    expect: &'static str,
}

fn request(method: &str, target: &str, headers: &[(&str, String)], body: &[u8]) -> String {
    let mut r = format!("{method} {target} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    let chunked = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"));
    if (!body.is_empty() || method == "POST") && !chunked {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    r.push_str(&String::from_utf8_lossy(body));
    r
}

fn form_post(target: &str, body: &str) -> String {
    let ct = [(
        "Content-Type",
        "application/x-www-form-urlencoded".to_string(),
    )];
    request("POST", target, &ct, body.as_bytes())
}

fn case(name: &'static str, request: String, status: u16, expect: &'static str) -> Case {
    Case {
        name,
        request,
        status,
        expect,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_error_never_a_failure() {
    let env = Env::start(Options::default()).await;
    // Discovery once, so the gateway knows the IdP's token path for the path-trick cases.
    let resp = env.get("/.well-known/openid-configuration").await;
    assert_eq!(resp.status(), 200);

    let poll = format!("grant_type={DEVICE_GRANT}&client_id=tv-app&device_code=x");
    let long = "a".repeat(5000);
    let json_ct = [("Content-Type", "application/json".to_string())];
    let form_ct = (
        "Content-Type",
        "application/x-www-form-urlencoded".to_string(),
    );
    #[rustfmt::skip]
    let cases = vec![
        // The device authorization endpoint.
        case("GET device endpoint", request("GET", "/device/code", &[], b""), 405, "invalid_request"),
        case("PUT device endpoint", request("PUT", "/device/code", &[], b"client_id=tv-app"), 405, "invalid_request"),
        case("no content type", request("POST", "/device/code", &[], b"client_id=tv-app"), 400, "invalid_request"),
        case("JSON body", request("POST", "/device/code", &json_ct, br#"{"client_id":"tv-app"}"#), 400, "invalid_request"),
        case("text body", request("POST", "/device/code", &[("Content-Type", "text/plain".into())], b"client_id=tv-app"), 400, "invalid_request"),
        case("missing client_id", form_post("/device/code", "scope=openid"), 400, "invalid_request"),
        case("empty client_id", form_post("/device/code", "client_id="), 400, "invalid_request"),
        case("unknown client", form_post("/device/code", "client_id=nobody"), 401, "invalid_client"),
        case("disabled client", form_post("/device/code", "client_id=retired"), 401, "invalid_client"),
        case("client_id twice", form_post("/device/code", "client_id=tv-app&client_id=tv-app"), 400, "invalid_request"),
        case("scope twice", form_post("/device/code", "client_id=tv-app&scope=openid&scope=openid"), 400, "invalid_request"),
        case("scope not allowed", form_post("/device/code", "client_id=tv-app&scope=openid%20admin"), 400, "invalid_scope"),
        case("raw non-UTF-8", request("POST", "/device/code", std::slice::from_ref(&form_ct), b"client_id=tv\xff\xfe"), 400, "invalid_request"),
        case("encoded non-UTF-8", form_post("/device/code", "client_id=%C0%AF"), 400, "invalid_request"),
        case("over-long value", form_post("/device/code", &format!("client_id=tv-app&scope={long}")), 400, "invalid_request"),
        case("over-long name", form_post("/device/code", &format!("client_id=tv-app&{long}=1")), 400, "invalid_request"),
        case("body over the limit", form_post("/device/code", &format!("client_id=tv-app&x={}", "b".repeat(70_000))), 413, "invalid_request"),
        case("query over the limit", form_post(&format!("/device/code?{long}"), "client_id=tv-app"), 414, "invalid_request"),
        case("headers over the limit", request("POST", "/device/code", &[form_ct.clone(), ("X-Big", "h".repeat(20_000))], b"client_id=tv-app"), 431, "invalid_request"),
        case("unknown parameter ignored", form_post("/device/code", "client_id=tv-app&response_type=device_code"), 200, ""),
        case("chunked body", request("POST", "/device/code", &[form_ct.clone(), ("Transfer-Encoding", "chunked".into())], b"10\r\nclient_id=tv-app\r\n0\r\n\r\n"), 200, ""),
        // Path tricks that a normalising upstream would read as an owned path.
        case("dot-dot to token", form_post("/device/../token", &poll), 400, "invalid_request"),
        case("encoded dots", form_post("/device/%2e%2e/token", &poll), 400, "invalid_request"),
        case("double-encoded dots", form_post("/x/%252e%252e/token", &poll), 400, "invalid_request"),
        case("encoded letter", form_post("/%64evice/code", "client_id=tv-app"), 400, "invalid_request"),
        case("encoded slash", form_post("/device%2Fcode", "client_id=tv-app"), 400, "invalid_request"),
        case("upper case", form_post("/DEVICE/CODE", "client_id=tv-app"), 400, "invalid_request"),
        case("upper-case token", form_post("/Token", &poll), 400, "invalid_request"),
        case("trailing slash", form_post("/device/code/", "client_id=tv-app"), 400, "invalid_request"),
        case("double slash", form_post("//device//code", "client_id=tv-app"), 400, "invalid_request"),
        case("dot segment", request("GET", "/device/./", &[], b""), 400, "invalid_request"),
        case("backslash", request("GET", "/device\\callback", &[], b""), 400, "invalid_request"),
        case("discovery via dot-dot", request("GET", "/x/../.well-known/openid-configuration", &[], b""), 400, "invalid_request"),
        // The token endpoint, device-code grant.
        case("poll without device_code", form_post("/token", &format!("grant_type={DEVICE_GRANT}&client_id=tv-app")), 400, "invalid_request"),
        case("poll without client_id", form_post("/token", &format!("grant_type={DEVICE_GRANT}&device_code=x")), 400, "invalid_request"),
        case("poll with unknown code", form_post("/token", &poll), 400, "invalid_grant"),
        case("poll by unknown client", form_post("/token", &format!("grant_type={DEVICE_GRANT}&client_id=nobody&device_code=x")), 401, "invalid_client"),
        case("device_code twice", form_post("/token", &format!("{poll}&device_code=y")), 400, "invalid_request"),
        case("poll with malformed Basic", request("POST", "/token", &[form_ct.clone(), ("Authorization", "Basic !!!".into())], poll.as_bytes()), 401, "invalid_client"),
        case("poll over the body limit", form_post("/token", &format!("{poll}&x={}", "b".repeat(70_000))), 413, "invalid_request"),
        // The verification page answers with pages.
        case("page: DELETE", request("DELETE", "/device", &[], b""), 405, "Method not allowed"),
        case("page: text body", request("POST", "/device", &[("Content-Type", "text/plain".into())], b"user_code=BCDFGHJK"), 400, "Something is missing"),
        case("page: repeated code", form_post("/device", "user_code=BCDFGHJK&user_code=BCDFGHJK"), 400, "Something is missing"),
        case("page: malformed code", form_post("/device", "user_code=12345"), 400, "look like a code"),
        case("page: unknown action", form_post("/device", "user_code=BCDF-GHJK&action=explode"), 400, "Something is missing"),
        case("page: unknown code", form_post("/device", "user_code=BCDF-GHJK"), 400, "recognise that code"),
        case("page: script in prefill", request("GET", "/device?user_code=%3Cscript%3Ealert(1)%3C%2Fscript%3E", &[], b""), 200, "value=\"\""),
        case("page: script in a typed code", form_post("/device", "user_code=%3Cscript%3Ealert(1)"), 400, "&lt;script&gt;"),
        case("page: query over the limit", request("GET", &format!("/device?user_code={long}"), &[], b""), 414, "Something is missing"),
        case("callback: no state", request("GET", "/device/callback?code=x", &[], b""), 400, "not valid here"),
        case("callback: POST", request("POST", "/device/callback", &[], b""), 405, "Method not allowed"),
        case("callback: state twice", request("GET", "/device/callback?state=a.b&state=c.d", &[], b""), 400, "Something is missing"),
        case("callback: unknown grant", request("GET", "/device/callback?state=nope.nope&code=x", &[], b""), 400, "not valid here"),
        case("discovery: query over the limit", request("GET", &format!("/.well-known/openid-configuration?{long}"), &[], b""), 414, "invalid_request"),
    ];
    assert!(cases.len() >= 50, "{} cases", cases.len());
    for c in cases {
        let (status, head, body) = raw_request(&env.url, c.request.as_bytes()).await;
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, c.status, "{}: {head}\n{text}", c.name);
        assert!(status < 500, "{}: a server error", c.name);
        let lower = head.to_ascii_lowercase();
        assert!(
            lower.contains("content-length:"),
            "{}: no Content-Length",
            c.name
        );
        if lower.contains("content-type: application/json") {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if status != 200 {
                assert_eq!(s(&v["error"]), c.expect, "{}: {text}", c.name);
                assert!(lower.contains("cache-control: no-store"), "{}", c.name);
            }
        } else {
            assert!(
                text.contains(c.expect),
                "{}: expected '{}' in {text}",
                c.name,
                c.expect
            );
        }
    }
    // The gateway is still healthy after all of that.
    env.authorize("tv-app", "openid").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_codes_is_refused_before_the_eleventh_failure() {
    let env = Env::start(Options {
        limits: Some("  code_failures_global_per_minute: 15\n".into()),
        ..Options::default()
    })
    .await;
    let dev = env.authorize("tv-app", "openid").await;
    let real_code = s(&dev["user_code"]).to_string();
    let from = crate::common::client_from;
    let lookup = |client: reqwest::Client, code: String| {
        let base = env.url.clone();
        async move { crate::common::enter_code(&client, &base, &code).await }
    };
    // Wrong codes that differ from the real one in every letter.
    let wrong = |i: usize| {
        let letters = "BCDFGHJKLMNPQRSTVWXZ";
        let pick = |k: usize| letters.chars().nth((k + i) % 20).unwrap();
        let code: String = (0..8).map(pick).collect();
        if code == real_code.replace('-', "") {
            "ZZZZZZZZ".to_string()
        } else {
            code
        }
    };
    let attacker = from("127.0.0.1");
    for i in 0..10 {
        let (status, _, text) = lookup(attacker.clone(), wrong(i)).await;
        assert_eq!(status, 400, "attempt {}: {text}", i + 1);
        assert!(text.contains("recognise that code"));
    }
    // The 11th attempt is refused before any lookup, even with the right code.
    for code in [wrong(10), real_code.clone()] {
        let (status, retry, text) = lookup(attacker.clone(), code).await;
        assert_eq!(status, 429, "{text}");
        assert!(text.contains("Too many attempts"));
        let secs: u64 = retry.unwrap().to_str().unwrap().parse().unwrap();
        assert!((1..=900).contains(&secs), "Retry-After {secs}");
    }
    // Another address still has its own budget, until everyone's budget (15) is spent.
    let other = from("127.0.0.2");
    let (status, _, text) = lookup(other.clone(), real_code.clone()).await;
    assert_eq!(
        status, 200,
        "the real code works from another address: {text}"
    );
    for i in 0..5 {
        let (status, _, _) = lookup(other.clone(), wrong(20 + i)).await;
        assert_eq!(status, 400);
    }
    let (status, _, _) = lookup(from("127.0.0.3"), real_code).await;
    assert_eq!(status, 429, "the global failure budget is spent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_and_token_endpoints_are_rate_limited() {
    let env = Env::start(Options {
        limits: Some(
            "  device_requests_per_ip_per_minute: 3\n  polls_per_client_per_minute: 5\n  polls_per_ip_per_minute: 8\n".into(),
        ),
        ..Options::default()
    })
    .await;
    let dev = env.authorize("tv-app", "openid").await;
    let device_code = s(&dev["device_code"]).to_string();
    env.authorize("tv-app", "openid").await;
    env.authorize("kiosk", "openid").await;
    let (status, headers, body) = env
        .post_form("/device/code", &[("client_id", "tv-app")])
        .await;
    assert_eq!(
        (status, s(&body["error"])),
        (429, "temporarily_unavailable"),
        "{body}"
    );
    assert!(headers.contains_key("retry-after"));

    // Five polls a minute for tv-app: the first pending, then slow_down from the poll gate,
    // then 429 — with `slow_down` as the code, so a device that reads only that backs off.
    let mut answers = Vec::new();
    for _ in 0..6 {
        let (status, body) = env.poll("tv-app", &device_code).await;
        answers.push((status, s(&body["error"]).to_string()));
    }
    assert_eq!(answers[0], (400, "authorization_pending".into()));
    assert_eq!(answers[1], (400, "slow_down".into()));
    assert_eq!(answers[5], (429, "slow_down".into()), "{answers:?}");
    // Another client is not limited by tv-app's budget.
    let (status, body) = env.poll("kiosk", "unknown-code").await;
    assert_eq!((status, s(&body["error"])), (400, "invalid_grant"));
    // The address's budget (8) is checked before authentication, so guessing a client secret
    // by polling is limited too.
    let guess = [
        ("grant_type", DEVICE_GRANT),
        ("device_code", "x"),
        ("client_id", "kiosk"),
        ("client_secret", "guess"),
    ];
    let (status, _, body) = env.post_form("/token", &guess).await;
    assert_eq!((status, s(&body["error"])), (401, "invalid_client"));
    let (status, _, body) = env.post_form("/token", &guess).await;
    assert_eq!((status, s(&body["error"])), (429, "slow_down"), "{body}");
}

/// What the hostile IdP does at its token and JWKS endpoints.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Trick {
    GarbageToken,
    TokenWithoutIdToken,
    ForgedIdToken,
    GarbageJwks,
    SlowToken,
    ErrorPage,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_upstream_never_approves() {
    use std::sync::{Arc, Mutex};
    let trick = Arc::new(Mutex::new(Trick::GarbageToken));
    let issuer = Arc::new(Mutex::new(String::new()));
    let port = {
        let (trick, issuer) = (trick.clone(), issuer.clone());
        scripted_upstream(move |req| {
            let iss = issuer.lock().unwrap().clone();
            let t = *trick.lock().unwrap();
            match req.path.as_str() {
                "/.well-known/openid-configuration" => Reply::json(json!({
                    "issuer": iss,
                    "authorization_endpoint": format!("{iss}/auth"),
                    "token_endpoint": format!("{iss}/token"),
                    "jwks_uri": format!("{iss}/jwks"),
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                })),
                "/token" => match t {
                    Trick::GarbageToken => Reply::new(200, "application/json", "<html>{{{"),
                    Trick::TokenWithoutIdToken => Reply::json(json!({
                        "access_token": "a", "token_type": "Bearer", "expires_in": 60
                    })),
                    Trick::ForgedIdToken | Trick::GarbageJwks => Reply::json(json!({
                        "access_token": "a", "token_type": "Bearer", "expires_in": 60,
                        // RS256 header, claims for tv-app, a signature that is not one.
                        "id_token": "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJpc3MiOiJ4Iiwic3ViIjoieCIsImF1ZCI6InR2LWFwcCJ9.c2lnbmF0dXJl",
                    })),
                    Trick::SlowToken => Reply {
                        delay: Duration::from_secs(3),
                        ..Reply::json(json!({"access_token": "late"}))
                    },
                    Trick::ErrorPage => Reply::new(500, "text/html", "<h1>oops</h1>"),
                },
                "/jwks" if t == Trick::GarbageJwks => Reply::new(200, "application/json", "[1,2"),
                "/jwks" => Reply::json(json!({"keys": []})),
                "/slow" => Reply {
                    delay: Duration::from_secs(3),
                    ..Reply::new(200, "text/plain", "late")
                },
                _ => Reply::new(404, "text/plain", "no"),
            }
        })
        .await
    };
    let env = Env::start(Options {
        upstream_port: Some(port),
        upstream_timeout: 1,
        ..Options::default()
    })
    .await;
    *issuer.lock().unwrap() = env.url.clone();

    // Every trick: the user sees an error page, and the grant is never approved. A broken
    // answer (garbage, no or a bad ID token) denies the grant: the IdP answered, and what it
    // answered cannot be trusted, so the device learns `access_denied` at once. An IdP that is
    // slow or failing (timeout, 5xx) may recover: the grant stays pending for a retry.
    for (t, page_status, device_error) in [
        (Trick::GarbageToken, 400, "access_denied"),
        (Trick::TokenWithoutIdToken, 400, "access_denied"),
        (Trick::ForgedIdToken, 400, "access_denied"),
        (Trick::GarbageJwks, 400, "access_denied"),
        (Trick::SlowToken, 502, "authorization_pending"),
        (Trick::ErrorPage, 502, "authorization_pending"),
    ] {
        *trick.lock().unwrap() = t;
        let dev = env.authorize("tv-app", "openid").await;
        let login = env.approve_via_http(s(&dev["user_code"])).await;
        assert_eq!(login.status, 303, "{t:?}: {}", login.body);
        let location = url::Url::parse(login.location.as_deref().unwrap()).unwrap();
        assert_eq!(location.path(), "/auth");
        let state = location
            .query_pairs()
            .find(|(k, _)| k == "state")
            .map(|(_, v)| v.into_owned())
            .unwrap();
        let resp = env
            .http
            .get(format!("{}/device/callback", env.url))
            .query(&[("code", "c"), ("state", state.as_str())])
            .header("cookie", &login.cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), page_status, "{t:?}");
        let page = resp.text().await.unwrap();
        assert!(page.contains("<h1"), "{t:?}: a readable page: {page}");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (status, body) = env.poll("tv-app", s(&dev["device_code"])).await;
        assert_eq!(
            (status, s(&body["error"])),
            (400, device_error),
            "{t:?}: {body}"
        );
    }

    // Pass-through to a slow upstream ends at the timeout with a gateway error, not a hang.
    let resp = env.get("/slow").await;
    assert!(
        [502, 504].contains(&resp.status().as_u16()),
        "{}",
        resp.status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_discovery_is_relayed_but_never_trusted() {
    let port = scripted_upstream(|req| match req.path.as_str() {
        "/.well-known/openid-configuration" => Reply::new(200, "application/json", "not json"),
        _ => Reply::new(404, "text/plain", "no"),
    })
    .await;
    let env = Env::start(Options {
        upstream_port: Some(port),
        idp_down: true, // configures upstream.token_path, as discovery cannot teach it
        ..Options::default()
    })
    .await;
    let resp = env.get("/.well-known/openid-configuration").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.text().await.unwrap(),
        "not json",
        "relayed as the IdP sent it"
    );
    // The device flow still starts; Approve cannot build a login from garbage: retry page,
    // and the device keeps waiting.
    let dev = env.authorize("tv-app", "openid").await;
    let login = env.approve_via_http(s(&dev["user_code"])).await;
    assert_eq!(login.status, 502, "{}", login.body);
    assert!(login.body.contains("could not be completed"));
    let (status, body) = env.poll("tv-app", s(&dev["device_code"])).await;
    assert_eq!((status, s(&body["error"])), (400, "authorization_pending"));
}
