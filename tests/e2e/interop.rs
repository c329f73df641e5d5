//! Interoperability with identity providers nobody here wrote, and the request shapes other
//! ecosystems send (real device clients are in `clients`).
//!
//! Real servers: django-oauth-toolkit (tests/idp3: issuer `/o`, trailing-slash endpoints) and
//! Glewlwyd (tests/idp4: issuer `/api/oidc`, its own device flow off, login web app and consent
//! screen, one-time refresh tokens, RS256/ES256/EdDSA keys, and an ES512 key refused), each with
//! the gateway at their origin or on its own; oidc-provider (tests/idp) under an issuer path
//! and in AWS Cognito's and Azure AD B2C's layouts. One helper,
//! `login_tokens_refresh_userinfo_at`, runs the same flow through each and prints a FLOW line.
//!
//! The mock (`oauth2-mock-server` as a Keycloak realm, tests/idp2) stays for what no server
//! installable here does: Keycloak's own paths and token fields (`refresh_expires_in`, JWT
//! access tokens) and a JWKS that also holds an encryption key. Keycloak itself ships from
//! GitHub, Maven Central and Quay, none of which this project's machines reach.

use base64::Engine;
use serde_json::{json, Value};

use crate::common::{browser, s, secret_of, Env, Idp, Options, DEVICE_GRANT};

fn jwt_part(jwt: &str, i: usize) -> Value {
    let part = jwt.split('.').nth(i).unwrap_or_default();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&raw).unwrap()
}

/// The gateway at the origin of `idp`, whose issuer has `issuer_path`: the environment, the
/// issuer, and the discovery document served under the issuer's path, which names the issuer
/// and the gateway's device endpoint.
async fn at_the_origin_of(idp: Idp, issuer_path: &str) -> (Env, String, Value) {
    let env = Env::start(Options {
        idp,
        ..Options::default()
    })
    .await;
    let issuer = format!("{}{issuer_path}", env.url);
    let disc: Value = env
        .get_json(&format!("{issuer_path}/.well-known/openid-configuration"))
        .await;
    assert_eq!(s(&disc["issuer"]), issuer);
    assert_eq!(
        s(&disc["device_authorization_endpoint"]),
        format!("{}/device/code", env.url)
    );
    (env, issuer, disc)
}

/// Discovery at the issuer's path, a device login approved in the browser, the tokens once,
/// and a refresh through the gateway, against the Keycloak-like mock signing with `alg`:
/// Keycloak's paths, its RFC 8414 variant and its token fields.
async fn flow_with_keycloakish(alg: &'static str) {
    let (env, issuer, disc) = at_the_origin_of(Idp::Keycloakish(alg), "/realms/demo").await;
    let token_endpoint = s(&disc["token_endpoint"]).to_string();
    assert_eq!(
        token_endpoint,
        format!("{issuer}/protocol/openid-connect/token")
    );
    // RFC 8414 clients find it too: Keycloak's appended path is rewritten, and the inserted
    // path, which Keycloak does not serve, answers with the OpenID Connect document.
    for path in [
        "/realms/demo/.well-known/oauth-authorization-server",
        "/.well-known/oauth-authorization-server/realms/demo",
    ] {
        let doc: Value = env.get_json(path).await;
        assert_eq!(s(&doc["issuer"]), issuer, "{path}");
        assert!(
            doc["device_authorization_endpoint"].is_string(),
            "{path}: {doc}"
        );
    }

    let dev = env
        .authorize("tv-app", "openid profile offline_access")
        .await;
    let token_path = token_endpoint.trim_start_matches(&env.url).to_string();
    let poll = |code: String| {
        let env = &env;
        let path = token_path.clone();
        async move {
            env.post_form(
                &path,
                &[
                    ("grant_type", DEVICE_GRANT),
                    ("device_code", &code),
                    ("client_id", "tv-app"),
                ],
            )
            .await
        }
    };
    let (status, _, body) = poll(s(&dev["device_code"]).to_string()).await;
    assert_eq!((status, s(&body["error"])), (400, "authorization_pending"));
    // This IdP has no login page: authorize signs the user in and redirects back at once.
    let report = browser(json!({
        "name": format!("keycloakish-{alg}"),
        "url": dev["verification_uri_complete"],
        "action": "approve",
        "idp_action": "none",
    }))
    .await;
    assert_eq!(s(&report["title"]), "You're signed in", "{report}");

    let (status, _, tokens) = poll(s(&dev["device_code"]).to_string()).await;
    assert_eq!(status, 200, "{tokens}");
    let id_token = s(&tokens["id_token"]);
    assert_eq!(s(&jwt_part(id_token, 0)["alg"]), alg);
    assert_eq!(s(&jwt_part(id_token, 1)["iss"]), issuer);
    assert_eq!(s(&jwt_part(s(&tokens["access_token"]), 0)["typ"]), "at+jwt");
    // Keycloak's extra fields come through, refresh_expires_in aged like expires_in.
    assert!(tokens["refresh_expires_in"].as_u64().is_some(), "{tokens}");
    let (status, _, again) = poll(s(&dev["device_code"]).to_string()).await;
    assert_eq!((status, s(&again["error"])), (400, "invalid_grant"));

    let (status, refreshed) = env
        .refresh(&token_path, "tv-app", s(&tokens["refresh_token"]))
        .await;
    assert_eq!(status, 200, "{refreshed}");
    assert_ne!(refreshed["access_token"], tokens["access_token"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_like_idp_rs256() {
    flow_with_keycloakish("RS256").await;
}

/// The Rust `openidconnect` crate's device flow (the demo client) against the Keycloak-like
/// mock: it discovers at the issuer's path, verifies the EdDSA-signed ID token with the JWKS
/// (which also holds an encryption key it must skip, what no real server here publishes), and
/// refreshes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_openidconnect_client_with_the_keycloak_like_idp() {
    let env = Env::start(Options {
        idp: Idp::Keycloakish("EdDSA"),
        ..Options::default()
    })
    .await;
    crate::common::run_demo_client(
        &format!("{}/realms/demo", env.url),
        "kiosk",
        Some(crate::common::KIOSK_SECRET),
        json!({"name": "rust-client-keycloakish", "idp_action": "none"}),
        "demo-user",
    )
    .await;
}

/// ID tokens signed with ES256 and EdDSA by a real IdP (Glewlwyd with a P-256 and an Ed25519
/// key): a login in the browser, the tokens. (Not ES384: Glewlwyd 2.7.5 labels its P-384 key
/// `ES512`, which the gateway rightly refuses, as it does a real ES512 key below.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glewlwyd_signing_with_es256_and_eddsa() {
    for alg in ["ES256", "EdDSA"] {
        let env = Env::start(Options {
            idp: Idp::Glewlwyd(alg),
            ..Options::default()
        })
        .await;
        let dev = env.authorize("tv-app", "openid").await;
        let report = browser(json!({
            "name": format!("glewlwyd-{alg}"),
            "url": dev["verification_uri_complete"],
            "action": "approve",
            "username": "alice",
        }))
        .await;
        assert_eq!(
            s(&report["title"]),
            "You're signed in",
            "{alg}: {report}\n{}",
            env.gateway_log()
        );
        let (status, tokens) = env
            .poll_at("/api/oidc/token", "tv-app", s(&dev["device_code"]))
            .await;
        assert_eq!(status, 200, "{alg}: {tokens}");
        assert_eq!(s(&jwt_part(s(&tokens["id_token"]), 0)["alg"]), alg);
    }
}

/// Glewlwyd with a P-521 key signs with ES512, which `openidconnect` cannot verify, while its
/// discovery lists ES256 and ES384 too: the keys themselves say it. The gateway reports the IdP
/// not ready and why; a user who approves anyway gets a readable page, and the device an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idp_signing_only_with_an_unverifiable_algorithm_is_reported_not_trusted() {
    let env = Env::start(Options {
        idp: Idp::Glewlwyd("ES512"),
        admin: true,
        ..Options::default()
    })
    .await;
    let disc = env.get("/api/oidc/.well-known/openid-configuration").await;
    assert_eq!(disc.status(), 200, "discovery is still relayed");
    let disc: Value = disc.json().await.unwrap();
    assert!(
        disc["id_token_signing_alg_values_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("ES256")),
        "{disc}"
    );
    let ready = env
        .http
        .get(format!("{}/readyz", env.admin_url.as_ref().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let log = env.gateway_log();
    assert!(
        log.contains("the IdP's keys sign ID tokens with ES512; devicegate verifies RS256"),
        "{log}"
    );
    let dev = env.authorize("tv-app", "openid").await;
    let report = browser(json!({
        "name": "glewlwyd-ES512",
        "url": dev["verification_uri_complete"],
        "action": "approve",
        "username": "alice",
    }))
    .await;
    assert_eq!(
        (report["status"].as_u64(), s(&report["title"])),
        (Some(400), "Sign-in did not complete"),
        "{report}"
    );
    let (status, body) = env
        .poll_at("/api/oidc/token", "tv-app", s(&dev["device_code"]))
        .await;
    assert_eq!(
        (status, s(&body["error"])),
        (400, "access_denied"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_on_its_own_origin() {
    let env = Env::start(Options {
        own_origin: true,
        ..Options::default()
    })
    .await;
    // Devices are configured with the gateway's URL; the document is the IdP's (its issuer),
    // with the device endpoint and the token endpoint on the gateway.
    let disc: Value = env.get_json("/.well-known/openid-configuration").await;
    let issuer = s(&disc["issuer"]).to_string();
    assert_ne!(issuer, env.url);
    assert_eq!(
        s(&disc["device_authorization_endpoint"]),
        format!("{}/device/code", env.url)
    );
    assert_eq!(s(&disc["token_endpoint"]), format!("{}/token", env.url));
    assert!(s(&disc["authorization_endpoint"]).starts_with(&issuer));

    let dev = env
        .authorize("tv-app", "openid profile offline_access")
        .await;
    // The browser logs in at the IdP's own origin and comes back to the gateway's callback.
    let report = browser(json!({
        "name": "own-origin",
        "url": dev["verification_uri_complete"],
        "action": "approve",
        "username": "olga",
    }))
    .await;
    assert_eq!(s(&report["title"]), "You're signed in", "{report}");
    assert!(report["pages"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| s(&p["url"]).starts_with(&issuer)));
    let (status, tokens) = env.poll("tv-app", s(&dev["device_code"])).await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(s(&jwt_part(s(&tokens["id_token"]), 1)["iss"]), issuer);
    // Refresh and userinfo through the gateway reach the IdP under its own name (Host).
    let (status, refreshed) = env
        .refresh("/token", "tv-app", s(&tokens["refresh_token"]))
        .await;
    assert_eq!(status, 200, "{refreshed}\n{}", env.gateway_log());
    let me = env
        .http
        .get(format!("{}/me", env.url))
        .bearer_auth(s(&refreshed["access_token"]))
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    assert_eq!(s(&me.json::<Value>().await.unwrap()["sub"]), "olga");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_shapes_of_other_ecosystems() {
    let mut env = Env::start(Options::default()).await;
    env.edit_config(|c| {
        c.replace(
            "device:\n",
            "device:\n  extra_authorization_paths: [/oauth2/v1/device]\n",
        )
        .replace(
            "    name: Lobby kiosk\n",
            "    name: Lobby kiosk\n    verification_url: true\n",
        )
        .replace(
            "clients:\n",
            "clients:\n  - client_id: special\n    client_secret: \"p+ss/w=rd%41\"\n",
        )
    });
    env.restart_gateway();
    // Oracle-style: response_type=device_code and the secret in the body, at a mirrored path.
    let (status, _, dev) = env
        .post_form(
            "/oauth2/v1/device",
            &[
                ("response_type", "device_code"),
                ("client_id", "kiosk"),
                ("client_secret", crate::common::KIOSK_SECRET),
                ("scope", "openid"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{dev}");
    // Google-style clients read verification_url: sent for the clients configured so, and
    // only them (serde-based clients such as the Rust oauth2 crate refuse both names at once).
    assert_eq!(dev["verification_url"], dev["verification_uri"]);
    let plain = env.authorize("tv-app", "openid").await;
    assert!(plain.get("verification_url").is_none(), "{plain}");
    // Polling with HTTP Basic client authentication (RFC 6749 §2.3.1: form-encoded parts).
    let resp = env
        .http
        .post(format!("{}/token", env.url))
        .basic_auth("kiosk", Some(crate::common::KIOSK_SECRET))
        .form(&[
            ("grant_type", DEVICE_GRANT),
            ("device_code", s(&dev["device_code"])),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(s(&body["error"]), "authorization_pending");
    // HTTP Basic: RFC 6749 §2.3.1 form-encodes the secret, most clients (requests, Authlib,
    // libcurl) send it raw; both are accepted, nothing else is.
    for (secret, status) in [
        ("p+ss/w=rd%41", 200),
        ("p%2Bss%2Fw%3Drd%2541", 200),
        ("p ss/w=rdA", 401),
        ("p+ss/w=rd", 401),
    ] {
        let resp = env
            .http
            .post(format!("{}/device/code", env.url))
            .basic_auth("special", Some(secret))
            .form(&[("scope", "openid")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{secret}");
    }
    // The mirrored path is owned like the main one: its disguises are refused, not relayed.
    let (status, _, _) = env
        .post_form("/oauth2/v1/%64evice", &[("client_id", "kiosk")])
        .await;
    assert_eq!(status, 400);
}

/// AWS Cognito's layout: the issuer's origin has discovery and the JWKS, every endpoint is on a
/// second origin (the hosted UI), and the gateway has its own origin. The browser's login, the
/// back channel and a refresh sent to the gateway each reach the origin the endpoint really
/// has (the IdP answers 404 for those paths on its issuer's origin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_on_another_origin_than_the_issuer_like_cognito() {
    let env = Env::start(Options {
        own_origin: true,
        cognito_layout: true,
        ..Options::default()
    })
    .await;
    let endpoints = env.endpoints_url.clone().unwrap();
    let disc: Value = env.get_json("/.well-known/openid-configuration").await;
    let issuer = s(&disc["issuer"]).to_string();
    assert_eq!(s(&disc["token_endpoint"]), format!("{}/token", env.url));
    assert_eq!(
        s(&disc["authorization_endpoint"]),
        format!("{endpoints}/auth")
    );
    assert!(s(&disc["jwks_uri"]).starts_with(&issuer), "{disc}");
    let on_issuer = env
        .http
        .post(format!("{issuer}/token"))
        .form(&[("grant_type", "refresh_token")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        on_issuer.status(),
        404,
        "the fixture keeps the token endpoint off the issuer"
    );

    let idp = own_origin_oidc_provider("cognito-layout", &disc);
    let report = login_tokens_refresh_userinfo_at(&env, &idp, "tv-app", "carmen").await;
    assert!(
        report["pages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| s(&p["url"]).starts_with(&endpoints)),
        "{report}"
    );
}

/// Azure AD B2C's layout: the issuer ends in a slash and its well-known path answers 404, the
/// discovery document is under the user flow's path (`upstream.discovery_url`), and the
/// gateway has its own origin, where devices find the document under the same path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_under_another_path_than_the_issuer_like_b2c() {
    let env = Env::start(Options {
        own_origin: true,
        b2c_layout: true,
        ..Options::default()
    })
    .await;
    let disc: Value = env.get_json(crate::common::B2C_DISCOVERY_PATH).await;
    let issuer = s(&disc["issuer"]).to_string();
    assert!(issuer.ends_with('/'), "{disc}");
    assert_eq!(
        s(&disc["device_authorization_endpoint"]),
        format!("{}/device/code", env.url)
    );
    assert_eq!(s(&disc["token_endpoint"]), format!("{}/token", env.url));
    let standard = env
        .http
        .get(format!("{issuer}.well-known/openid-configuration"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        standard.status(),
        404,
        "the fixture serves discovery only under the flow"
    );

    let idp = own_origin_oidc_provider("b2c-layout", &disc);
    login_tokens_refresh_userinfo_at(&env, &idp, "tv-app", "bianca").await;
}

/// django-oauth-toolkit (PyPI), a real OpenID Connect server, at the gateway's origin with an
/// issuer path (`/o`) and endpoints ending in `/`: a public and a confidential client each
/// approved in the browser, tokens, a refresh (rotating) and userinfo through the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_oauth_toolkit_behind_the_gateway() {
    let (env, issuer, disc) = at_the_origin_of(Idp::DjangoOauthToolkit, "/o").await;
    let token_path = "/o/token/";
    assert_eq!(
        s(&disc["token_endpoint"]),
        format!("{}{token_path}", env.url)
    );
    let idp = Upstream {
        name: "django",
        issuer: &issuer,
        token_path,
        userinfo: format!("{issuer}/userinfo/"),
        scope: "openid profile",
        consent_screen: false,
        one_time_refresh: true,
    };
    for (client, user) in [("tv-app", "dora"), ("kiosk", "kim")] {
        login_tokens_refresh_userinfo_at(&env, &idp, client, user).await;
    }
}

/// oidc-provider as [`login_tokens_refresh_userinfo_at`] sees it with the gateway on its own
/// origin, `disc` being the gateway's discovery document.
fn own_origin_oidc_provider<'a>(name: &'a str, disc: &'a Value) -> Upstream<'a> {
    Upstream {
        name,
        issuer: s(&disc["issuer"]),
        token_path: "/token",
        userinfo: s(&disc["userinfo_endpoint"]).to_string(),
        scope: "openid profile offline_access",
        consent_screen: true,
        one_time_refresh: false,
    }
}

/// Glewlwyd 2.7.5, Debian's single-sign-on server, with its own device flow switched off:
/// the gateway at its origin adds one. Both test clients (public and confidential) log in
/// through Glewlwyd's login web app and consent screen in the browser; then tokens, a one-time
/// refresh through the gateway and userinfo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glewlwyd_with_its_own_device_flow_off_behind_the_gateway() {
    let (env, issuer, disc) = at_the_origin_of(Idp::Glewlwyd("RS256"), "/api/oidc").await;
    let token_path = "/api/oidc/token";
    assert_eq!(
        s(&disc["token_endpoint"]),
        format!("{}{token_path}", env.url)
    );
    // The IdP's own device endpoint, passed through, refuses: its flow is off.
    let (status, _, own) = env
        .post_form(
            "/api/oidc/device_authorization",
            &[("client_id", "tv-app"), ("scope", "openid")],
        )
        .await;
    assert_ne!(status, 200, "{own}");
    let glewlwyd = glewlwyd(&issuer, token_path);
    for (client, user) in [("tv-app", "alice"), ("kiosk", "bob")] {
        login_tokens_refresh_userinfo_at(&env, &glewlwyd, client, user).await;
    }
}

/// Glewlwyd again, with the gateway on its own origin: the browser logs in at Glewlwyd's origin,
/// and the device's polls and refreshes go to the gateway's token endpoint, which relays the
/// refresh to Glewlwyd's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glewlwyd_with_the_gateway_on_its_own_origin() {
    let env = Env::start(Options {
        idp: Idp::Glewlwyd("RS256"),
        own_origin: true,
        ..Options::default()
    })
    .await;
    // The document under the issuer's path on the gateway's origin.
    let disc: Value = env
        .get_json("/api/oidc/.well-known/openid-configuration")
        .await;
    let issuer = s(&disc["issuer"]).to_string();
    assert!(issuer.ends_with("/api/oidc") && !issuer.starts_with(&env.url));
    let token_path = "/api/oidc/token";
    assert_eq!(
        s(&disc["token_endpoint"]),
        format!("{}{token_path}", env.url)
    );
    login_tokens_refresh_userinfo_at(&env, &glewlwyd(&issuer, token_path), "kiosk", "alice").await;
}

/// An IdP as [`login_tokens_refresh_userinfo_at`] checks it.
struct Upstream<'a> {
    /// For the screenshots' folder and the FLOW line.
    name: &'a str,
    issuer: &'a str,
    /// Where devices poll and refresh, on the gateway.
    token_path: &'a str,
    userinfo: String,
    /// What the device asks for (refresh tokens need `offline_access` at some IdPs, and are
    /// not a scope at others).
    scope: &'a str,
    /// The IdP shows a consent (grant) screen of its own.
    consent_screen: bool,
    /// Refresh tokens are one-time: a new one comes back and the spent one is refused.
    one_time_refresh: bool,
}

/// One device login of `client` approved in the browser as `user` at `idp`; the tokens at the
/// gateway's token path (the ID token's `iss` and `aud`); a refresh there; userinfo with the new
/// access token naming the ID token's subject. Returns the browser's report.
async fn login_tokens_refresh_userinfo_at(
    env: &Env,
    idp: &Upstream<'_>,
    client: &str,
    user: &str,
) -> Value {
    let Upstream {
        name,
        issuer,
        token_path,
        ..
    } = *idp;
    let mode = if issuer.starts_with(&env.url) {
        "at the gateway's origin"
    } else {
        "with the gateway on its own origin"
    };
    let dev = env.authorize(client, idp.scope).await;
    let report = browser(json!({
        "name": format!("{name}-{client}-{}", if issuer.starts_with(&env.url) { "proxy" } else { "own-origin" }),
        "url": dev["verification_uri_complete"],
        "action": "approve",
        "username": user,
    }))
    .await;
    assert_eq!(s(&report["title"]), "You're signed in", "{report}");
    if idp.consent_screen {
        assert!(
            report["pages"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| s(&p["name"]) == "idp-consent"),
            "{name}'s consent screen was shown: {report}"
        );
    }
    let secret = secret_of(client);
    let (status, tokens) = env
        .poll_at(token_path, client, s(&dev["device_code"]))
        .await;
    assert_eq!(status, 200, "{tokens}");
    let claims = jwt_part(s(&tokens["id_token"]), 1);
    assert_eq!(s(&claims["iss"]), issuer);
    assert_eq!(s(&claims["aud"]), client, "{claims}");
    let mut refresh = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", s(&tokens["refresh_token"])),
        ("client_id", client),
    ];
    refresh.extend(secret.map(|v| ("client_secret", v)));
    let (status, _, refreshed) = env.post_form(token_path, &refresh).await;
    assert_eq!(status, 200, "{refreshed}\n{}", env.gateway_log());
    if idp.one_time_refresh {
        assert_ne!(s(&refreshed["refresh_token"]), s(&tokens["refresh_token"]));
        let (status, _, again) = env.post_form(token_path, &refresh).await;
        assert_eq!(status, 400, "a spent refresh token: {again}");
    }
    let me = env
        .http
        .get(&idp.userinfo)
        .bearer_auth(s(&refreshed["access_token"]))
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    let me: Value = me.json().await.unwrap();
    assert_eq!(s(&me["sub"]), s(&claims["sub"]), "{me}");
    println!(
        "FLOW {name} {mode}, {client}: issuer {issuer}; browser login{}; tokens 200; refresh 200 at {}{token_path}{}; userinfo 200 sub={}",
        if idp.consent_screen { " and consent screen" } else { "" },
        env.url,
        if idp.one_time_refresh { " (one-time: the spent one 400)" } else { "" },
        s(&me["sub"])
    );
    report
}

/// Glewlwyd as [`login_tokens_refresh_userinfo_at`] sees it.
fn glewlwyd<'a>(issuer: &'a str, token_path: &'a str) -> Upstream<'a> {
    Upstream {
        name: "glewlwyd",
        issuer,
        token_path,
        userinfo: format!("{issuer}/userinfo"),
        scope: "openid profile",
        consent_screen: true,
        one_time_refresh: true,
    }
}

/// oidc-provider with an issuer that has a path (`/tenants/acme`, the provider mounted under it
/// and nothing served elsewhere): discovery, the login and consent pages, the token endpoint
/// and userinfo all under the path, behind the gateway; a public and a confidential client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_provider_with_an_issuer_path() {
    let (env, issuer, disc) =
        at_the_origin_of(Idp::OidcProviderAt("/tenants/acme"), "/tenants/acme").await;
    let token_path = "/tenants/acme/token";
    assert_eq!(
        s(&disc["token_endpoint"]),
        format!("{}{token_path}", env.url)
    );
    let idp = Upstream {
        name: "oidc-provider-path",
        issuer: &issuer,
        token_path,
        userinfo: s(&disc["userinfo_endpoint"]).to_string(),
        scope: "openid profile offline_access",
        consent_screen: true,
        one_time_refresh: false,
    };
    for (client, user) in [("tv-app", "paula"), ("kiosk", "pedro")] {
        login_tokens_refresh_userinfo_at(&env, &idp, client, user).await;
    }
}
