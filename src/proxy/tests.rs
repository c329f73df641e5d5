//! Handler rules in-process: a real gateway with the memory store and a fixed clock, requests
//! built as values, replies and their facts inspected. No socket, no IdP (its address is a
//! closed port), so what needs the IdP's answers stays with the end-to-end suite.

use std::sync::Arc;

use base64::{engine::general_purpose::STANDARD, Engine};
use bytes::Bytes;
use pingora::http::RequestHeader;
use serde_json::Value;

use super::events::{self, Audit, By, Event, Fact};
use super::*;
use crate::clock::{Clock, ManualClock, Time};
use crate::device::{Key, Status, TokenSet};
use crate::discovery::DEVICE_GRANT;

const CONFIG: &str = r#"
listen: 127.0.0.1:8080
public_url: http://gw.test
upstream:
  address: 127.0.0.1:9
  issuer: http://gw.test
  token_path: /token
  timeout: 2
device:
  expires_in: 600
  interval: 5
clients:
  - client_id: tv-app
    name: Living-room TV
    allowed_scopes: [openid, profile]
  - client_id: kiosk
    client_secret: kiosk-secret
  - client_id: retired
    enabled: false
"#;

/// Issued at a time with a fraction of a second, as real requests are.
const START: Time = Time::from_millis(1_800_000_000_900);

struct Harness {
    gw: Gateway,
    clock: Arc<ManualClock>,
}

fn harness_with(yaml: &str) -> Harness {
    let config = crate::config::Config::from_yaml(yaml, &|_| None).unwrap();
    let pages = Pages::new(&config.ui).unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let gw = Gateway::new(Arc::new(config), pages, clock.clone()).unwrap();
    Harness { gw, clock }
}

fn harness() -> Harness {
    harness_with(CONFIG)
}

fn json(reply: &Reply) -> Value {
    serde_json::from_slice(&reply.body).unwrap_or(Value::Null)
}

fn text(reply: &Reply) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

/// The CSRF token of the form on a page ("" without one).
fn csrf_of(reply: &Reply) -> String {
    text(reply)
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|v| v.split('"').next())
        .unwrap_or_default()
        .to_string()
}

fn audits(reply: &Reply) -> Vec<&Audit> {
    reply
        .facts
        .iter()
        .filter_map(|f| match f {
            Fact::Audit(a) => Some(a),
            _ => None,
        })
        .collect()
}

fn events(reply: &Reply) -> Vec<Event> {
    audits(reply).iter().map(|a| a.event).collect()
}

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

impl Harness {
    /// The link tag this deployment gives a code's `verification_uri_complete`.
    async fn tag(&self, user_code: &str) -> String {
        let keys = self.gw.browsers.keys(&self.gw.device).await.unwrap();
        let code = crate::device::code::normalize_user_code(user_code).unwrap();
        keys.link_tag(&code)
    }

    /// What `request_filter` does with a request, from classification to the reply.
    async fn send(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Option<Reply> {
        self.send_from("127.0.0.1", method, target, headers, body)
            .await
    }

    async fn send_from(
        &self,
        ip: &str,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Option<Reply> {
        let mut head = RequestHeader::build(method, target.as_bytes(), None).unwrap();
        for (k, v) in headers {
            head.append_header(k.to_string(), v.to_string()).unwrap();
        }
        if !body.is_empty() {
            // As clients send it.
            head.insert_header("content-length", body.len()).unwrap();
        }
        let route = self.gw.classify(&head);
        if route == Route::PassThrough {
            return None;
        }
        if let Some(reply) = self.gw.precheck(&route, &head) {
            return Some(reply);
        }
        let client_ip = Some(ip.parse().unwrap());
        let ip_key = crate::limits::ip_key(client_ip);
        let req = Request {
            head: &head,
            body: Bytes::from(body.to_string()),
            client_ip,
            ip_key: &ip_key,
            now: self.clock.now(),
        };
        self.gw.respond(&route, &req).await
    }

    async fn post(&self, target: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        self.post_from("127.0.0.1", target, headers, body).await
    }

    async fn post_from(
        &self,
        ip: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let mut all = vec![FORM];
        all.extend_from_slice(headers);
        self.send_from(ip, "POST", target, &all, body)
            .await
            .unwrap()
    }

    /// A device authorization for `tv-app`: (device code, canonical user code).
    async fn authorize(&self) -> (String, String) {
        let r = self.post("/device/code", &[], "client_id=tv-app").await;
        assert_eq!(r.status, 200, "{}", text(&r));
        let v = json(&r);
        let user_code = v["user_code"].as_str().unwrap().replace('-', "");
        (v["device_code"].as_str().unwrap().to_string(), user_code)
    }

    async fn poll(&self, client: &str, device_code: &str) -> Reply {
        self.post(
            "/token",
            &[],
            &format!("grant_type={DEVICE_GRANT}&client_id={client}&device_code={device_code}"),
        )
        .await
    }

    fn advance(&self, secs: u64) {
        self.clock.advance_millis(secs * 1000);
    }

    /// A browser session: the cookie header value and the session id.
    async fn browser(&self) -> (String, String) {
        let r = self.send("GET", "/device", &[], "").await.unwrap();
        let cookie = r.header_value("set-cookie").unwrap();
        let pair = cookie.split(';').next().unwrap().to_string();
        let id = pair.split_once('=').unwrap().1.to_string();
        (pair, id)
    }

    /// Enters a code in a browser session: the consent reply and its CSRF token.
    async fn enter(&self, cookie: &str, user_code: &str) -> (Reply, String) {
        self.enter_from("127.0.0.1", cookie, user_code).await
    }

    /// [`Self::enter`] from the browser address `ip`.
    async fn enter_from(&self, ip: &str, cookie: &str, user_code: &str) -> (Reply, String) {
        let r = self
            .post_from(
                ip,
                "/device",
                &[("cookie", cookie)],
                &format!("user_code={user_code}"),
            )
            .await;
        let csrf = csrf_of(&r);
        (r, csrf)
    }

    /// The IdP sends the browser back with this query.
    async fn callback(&self, query: &str, cookie: &str) -> Reply {
        let target = format!("/device/callback?{query}");
        self.send("GET", &target, &[("cookie", cookie)], "")
            .await
            .unwrap()
    }

    async fn act(&self, cookie: &str, user_code: &str, csrf: &str, action: &str) -> Reply {
        self.act_from("127.0.0.1", cookie, user_code, csrf, action)
            .await
    }

    /// [`Self::act`] from the browser address `ip`.
    async fn act_from(
        &self,
        ip: &str,
        cookie: &str,
        user_code: &str,
        csrf: &str,
        action: &str,
    ) -> Reply {
        self.post_from(
            ip,
            "/device",
            &[("cookie", cookie)],
            &format!("user_code={user_code}&csrf={csrf}&action={action}"),
        )
        .await
    }

    fn tokens() -> TokenSet {
        serde_json::json!({"access_token": "AT", "token_type": "Bearer", "expires_in": 300})
            .as_object()
            .cloned()
            .unwrap()
    }

    /// Approves a grant in the store as a successful callback would.
    async fn approve_in_store(&self, user_code: &str, subject: &str) {
        let now = self.clock.now().secs();
        self.gw
            .device
            .transition(Key::UserCode(user_code), |g| {
                g.status = Status::Approved {
                    tokens: Self::tokens(),
                    approved_at: now,
                    subject: Some(subject.into()),
                };
                Ok(())
            })
            .await
            .unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Device authorization.

#[tokio::test]
async fn device_authorization_issues_a_grant_and_reports_it() {
    let h = harness();
    let r = h
        .post("/device/code", &[], "client_id=tv-app&scope=openid")
        .await;
    assert_eq!(r.status, 200);
    let v = json(&r);
    assert_eq!(v["verification_uri"], "http://gw.test/device");
    assert_eq!(v["expires_in"], 600);
    assert!(v.get("verification_url").is_none());
    assert!(r.facts.contains(&Fact::DeviceAuthorization {
        client: "tv-app".into(),
        result: "issued"
    }));
    let a = audits(&r);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].event, Event::Created);
    assert_eq!(a[0].client_id.as_deref(), Some("tv-app"));
    assert_eq!(r.header_value("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn a_refusal_is_counted_under_the_client_that_basic_authentication_names() {
    let h = harness();
    let basic = format!("Basic {}", STANDARD.encode("kiosk:wrong"));
    let r = h
        .post("/device/code", &[("authorization", &basic)], "scope=openid")
        .await;
    assert_eq!(
        (r.status, json(&r)["error"].as_str()),
        (401, Some("invalid_client"))
    );
    // It used to be counted as `unknown`: the form carried no client_id.
    assert_eq!(
        r.facts,
        vec![Fact::DeviceAuthorization {
            client: "kiosk".into(),
            result: "invalid_client"
        }]
    );
    let r = h.post("/device/code", &[], "client_id=nobody").await;
    assert!(r.facts.contains(&Fact::DeviceAuthorization {
        client: "unknown".into(),
        result: "invalid_client"
    }));
}

#[tokio::test]
async fn a_device_flood_is_refused_audited_and_counted() {
    let h = harness_with(&format!(
        "{CONFIG}limits:\n  device_requests_per_ip_per_minute: 2\n"
    ));
    for _ in 0..2 {
        h.authorize().await;
    }
    let r = h.post("/device/code", &[], "client_id=tv-app").await;
    assert_eq!(r.status, 429);
    assert!(r.header_value("retry-after").is_some());
    assert!(r.facts.contains(&Fact::Limited("device")));
    assert_eq!(events(&r), [Event::Refused("device")]);
}

// ---------------------------------------------------------------------------------------------
// One method rule for every owned path.

#[tokio::test]
async fn every_owned_path_answers_a_wrong_method_with_405_and_allow() {
    let h = harness();
    for (method, path, allow, page) in [
        ("GET", "/device/code", "POST", false),
        ("DELETE", "/device", "GET, HEAD, POST", true),
        ("POST", "/device/callback", "GET", true),
        ("HEAD", "/device/callback", "GET", true),
        ("POST", "/device/qr", "GET, HEAD", false),
        (
            "POST",
            "/.well-known/openid-configuration",
            "GET, HEAD",
            false,
        ),
    ] {
        let r = h.send(method, path, &[], "").await.unwrap();
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.header_value("allow"), Some(allow), "{method} {path}");
        let ct = r.header_value("content-type").unwrap_or_default();
        if page {
            assert!(ct.starts_with("text/html"), "{method} {path}: {ct}");
            assert!(text(&r).contains("Method not allowed"), "{method} {path}");
        } else {
            assert_eq!(ct, "application/json", "{method} {path}");
            assert_eq!(json(&r)["error"], "invalid_request");
        }
    }
    // HEAD is served wherever GET is (the writer leaves the body out).
    let qr = format!(
        "/device/qr?user_code=BCDF-GHJK&t={}",
        h.tag("BCDF-GHJK").await
    );
    let r = h.send("HEAD", &qr, &[], "").await.unwrap();
    assert_eq!(r.status, 200);
    // Other methods at the IdP's token endpoint are the IdP's.
    assert!(h.send("GET", "/token", &[], "").await.is_none());
}

// ---------------------------------------------------------------------------------------------
// The token endpoint.

#[tokio::test]
async fn token_endpoint_answers_every_state_of_a_grant() {
    let h = harness();
    let (device_code, user_code) = h.authorize().await;
    let r = h.poll("tv-app", &device_code).await;
    assert_eq!(
        (r.status, json(&r)["error"].as_str()),
        (400, Some("authorization_pending"))
    );
    assert_eq!(r.facts, vec![Fact::Poll("authorization_pending")]);
    h.advance(1);
    let r = h.poll("tv-app", &device_code).await;
    assert_eq!(json(&r)["error"], "slow_down");
    assert_eq!(json(&r)["interval"], 10);
    // Another client's poll of this code is refused and changes nothing.
    let r = h.poll("kiosk", &device_code).await;
    assert_eq!(r.status, 401, "kiosk must authenticate");
    let basic = format!("Basic {}", STANDARD.encode("kiosk:kiosk-secret"));
    let r = h
        .post(
            "/token",
            &[("authorization", &basic)],
            &format!("grant_type={DEVICE_GRANT}&device_code={device_code}"),
        )
        .await;
    assert_eq!(json(&r)["error"], "invalid_grant");

    h.approve_in_store(&user_code, "alice").await;
    h.advance(20);
    let r = h.poll("tv-app", &device_code).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(json(&r)["access_token"], "AT");
    assert_eq!(json(&r)["expires_in"], 280, "the 20 s the tokens waited");
    let a = audits(&r);
    assert_eq!(a[0].event, Event::Delivered);
    assert_eq!(a[0].sub.as_deref(), Some("alice"));
    assert!(r.facts.contains(&Fact::Poll("delivered")));
    // Single use.
    h.advance(10);
    let r = h.poll("tv-app", &device_code).await;
    assert_eq!(json(&r)["error"], "invalid_grant");
    assert!(events(&r).is_empty());
    // Unknown codes, missing parameters, other grants.
    assert_eq!(
        json(&h.poll("tv-app", "nope").await)["error"],
        "invalid_grant"
    );
    let r = h
        .post(
            "/token",
            &[],
            &format!("grant_type={DEVICE_GRANT}&client_id=tv-app"),
        )
        .await;
    assert_eq!(json(&r)["error"], "invalid_request");
    let other = h
        .send(
            "POST",
            "/token",
            &[FORM],
            "grant_type=refresh_token&refresh_token=x",
        )
        .await;
    assert!(other.is_none(), "a refresh passes through");
}

#[tokio::test]
async fn an_expired_grant_is_audited_when_its_device_learns_it() {
    let h = harness();
    let (device_code, _) = h.authorize().await;
    // Issued at .900 of a second: the lifetime counts from the next whole second.
    h.advance(601);
    let r = h.poll("tv-app", &device_code).await;
    assert_eq!(json(&r)["error"], "expired_token");
    assert_eq!(events(&r), [Event::Expired]);
    assert!(audits(&r)[0].grant.is_some());
}

#[tokio::test]
async fn an_expiry_is_reported_once_by_the_poll_or_the_sweep_whichever_is_first() {
    let h = harness();
    let (device_code, _) = h.authorize().await;
    let (other, _) = h.authorize().await;
    h.advance(601);
    let r = h.poll("tv-app", &device_code).await;
    assert_eq!(events(&r), [Event::Expired]);
    // The next poll still says expired_token, but reports nothing again.
    h.advance(5);
    let r = h.poll("tv-app", &device_code).await;
    assert_eq!(json(&r)["error"], "expired_token");
    assert!(events(&r).is_empty(), "{:?}", events(&r));
    // The sweep reports the one no device polled, once, and remembers both as ended.
    let op = h.gw.operator();
    op.sweep().await.unwrap();
    op.sweep().await.unwrap();
    let listed = op.grants(true).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|v| v.status == "expired"), "{listed:?}");
    let stored = h.gw.device.store().list().await.unwrap();
    assert!(stored.iter().all(|g| g.expiry_reported), "{stored:?}");
    h.advance(5);
    let r = h.poll("tv-app", &other).await;
    assert_eq!(json(&r)["error"], "expired_token");
    assert!(events(&r).is_empty(), "the sweep had reported it");
}

#[tokio::test]
async fn an_operator_disables_a_client_at_run_time_and_enables_it_again() {
    let h = harness();
    let (device_code, _) = h.authorize().await;
    let op = h.gw.operator();
    assert_eq!(
        op.set_enabled("tv-app", false, "10.0.0.1").await.unwrap(),
        1
    );
    // Its grant is denied in the store, and the client is refused at both endpoints.
    let g =
        h.gw.device
            .store()
            .get(Key::DeviceCodeHash(&crate::device::code::hash_device_code(
                &device_code,
            )))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(g.denied_by.as_deref(), Some("operator"));
    let r = h.poll("tv-app", &device_code).await;
    assert_eq!(
        (r.status, json(&r)["error"].clone()),
        (401, "invalid_client".into())
    );
    let r = h
        .send(
            "POST",
            "/device/code",
            &[FORM],
            "client_id=tv-app&scope=openid",
        )
        .await
        .unwrap();
    assert_eq!(json(&r)["error"], "invalid_client");
    // A grant another instance made before it read the switch is denied by the sweep.
    h.gw.switch.set("tv-app", true);
    let (late, _) = h.authorize().await;
    h.gw.switch.set("tv-app", false);
    op.sweep().await.unwrap();
    let hash = crate::device::code::hash_device_code(&late);
    let g =
        h.gw.device
            .store()
            .get(Key::DeviceCodeHash(&hash))
            .await
            .unwrap()
            .unwrap();
    assert!(matches!(g.status, Status::Denied { .. }), "{g:?}");
    // The store holds the switch: refreshed from it, the instance agrees.
    op.refresh().await.unwrap();
    assert_eq!(h.gw.switch.operator("tv-app"), Some(false));
    assert_eq!(op.set_enabled("tv-app", true, "10.0.0.1").await.unwrap(), 0);
    let (_, _) = h.authorize().await;
    let pending = op.pending_by_client().await.unwrap();
    assert_eq!(pending.get("tv-app"), Some(&1));
}

#[tokio::test]
async fn an_operator_denies_an_approved_grant_before_its_device_collects_the_tokens() {
    let h = harness();
    let (device_code, _) = h.authorize().await;
    let hash = crate::device::code::hash_device_code(&device_code);
    let store = h.gw.device.store();
    let id = store
        .get(Key::DeviceCodeHash(&hash))
        .await
        .unwrap()
        .unwrap()
        .id;
    store
        .update(Key::Id(&id), &mut |g| {
            g.status = Status::Approved {
                tokens: TokenSet::new(),
                approved_at: START.secs(),
                subject: Some("alice".into()),
            }
        })
        .await
        .unwrap();
    let op = h.gw.operator();
    let view = op.deny(&id, "10.0.0.1").await.unwrap();
    assert_eq!(
        (view.status.as_ref(), view.denied_by.as_deref()),
        ("denied", Some("operator"))
    );
    let r = h.poll("tv-app", &device_code).await;
    assert_eq!(json(&r)["error"], "access_denied");
    assert!(matches!(
        op.deny(&id, "10.0.0.1").await,
        Err(operator::Refused::Ended(_))
    ));
    assert!(matches!(
        op.deny("nope", "10.0.0.1").await,
        Err(operator::Refused::Unknown)
    ));
}

#[tokio::test]
async fn a_device_gets_at_least_the_lifetime_it_was_told() {
    let h = harness_with(
        &CONFIG
            .replace("expires_in: 600", "expires_in: 3")
            .replace("interval: 5", "interval: 1"),
    );
    let (device_code, _) = h.authorize().await;
    // Issued at .900 of a second; 2.9 s later the grant must still be pending (it expired
    // after 2.1 s when the lifetime counted from the second cut down).
    h.clock.advance_millis(2_900);
    let r = h.poll("tv-app", &device_code).await;
    assert_eq!(json(&r)["error"], "authorization_pending", "{}", text(&r));
    h.clock.advance_millis(1_100);
    let r = h.poll("tv-app", &device_code).await;
    assert_eq!(json(&r)["error"], "expired_token");
}

#[tokio::test]
async fn a_poll_flood_is_refused_audited_and_counted() {
    let h = harness_with(&format!("{CONFIG}limits:\n  polls_per_ip_per_minute: 1\n"));
    let (device_code, _) = h.authorize().await;
    h.poll("tv-app", &device_code).await;
    let r = h.poll("tv-app", &device_code).await;
    assert_eq!(
        (r.status, json(&r)["error"].as_str()),
        (429, Some("slow_down"))
    );
    assert!(r.facts.contains(&Fact::Limited("poll")));
    assert_eq!(events(&r), [Event::Refused("poll")]);
}

// ---------------------------------------------------------------------------------------------
// The verification page.

#[tokio::test]
async fn verification_page_states() {
    let h = harness();
    // The entry form sets a browser session and only prefills a code, and only from a link
    // this gateway issued (its tag checks).
    let tag = h.tag("BCDF-GHJK").await;
    let r = h
        .send(
            "GET",
            &format!("/device?user_code=bcdf-ghjk&t={tag}"),
            &[],
            "",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(text(&r).contains("BCDF-GHJK"));
    for forged in ["", "&t=", "&t=AAAAAAAAAAAAAAAA", &format!("&t={tag}x")] {
        let r = h
            .send(
                "GET",
                &format!("/device?user_code=bcdf-ghjk{forged}"),
                &[],
                "",
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert!(!text(&r).contains("BCDF-GHJK"), "prefilled with {forged:?}");
    }
    assert!(r.header_value("set-cookie").unwrap().contains("HttpOnly"));
    assert!(r
        .header_value("content-security-policy")
        .unwrap()
        .contains("form-action 'self' http://gw.test"));
    let (cookie, _) = h.browser().await;

    // Malformed and unknown codes: the form again, counted.
    let r = h
        .post("/device", &[("cookie", &cookie)], "user_code=12")
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.facts, vec![Fact::Verification("malformed_code")]);
    let (r, _) = h.enter(&cookie, "BCDFGHJK").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.facts, vec![Fact::Verification("unknown_code")]);

    // A real code: the consent page, audited.
    let (_, user_code) = h.authorize().await;
    h.advance(40);
    let (r, csrf) = h.enter(&cookie, &user_code).await;
    assert_eq!(r.status, 200);
    assert!(text(&r).contains("Living-room TV") && text(&r).contains("40 seconds ago"));
    assert_eq!(events(&r), [Event::CodeEntered]);
    assert!(!csrf.is_empty());

    // A forged form changes nothing.
    let r = h.act(&cookie, &user_code, "forged", "deny").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.facts, vec![Fact::Verification("refused")]);

    // "Deny — I did not start this": denied, and reported at warn level with the device's
    // address and software; counted; the page says what to do next.
    let r = h.act(&cookie, &user_code, &csrf, "deny").await;
    assert_eq!(r.status, 200);
    assert!(r.facts.contains(&Fact::Verification("reported")));
    assert!(r.facts.contains(&Fact::Reported {
        client: "tv-app".into()
    }));
    assert_eq!(events(&r), [Event::Reported]);
    let report = audits(&r)[0].clone();
    assert_eq!(report.client_id.as_deref(), Some("tv-app"));
    assert_eq!(report.device_ip.as_deref(), Some("127.0.0.1"));
    assert!(text(&r).contains("Denied and reported") && text(&r).contains("change your password"));
    // Already denied: its own page, nothing audited.
    let (r, _) = h.enter(&cookie, &user_code).await;
    assert_eq!(r.status, 400);
    assert!(text(&r).contains("already denied") || text(&r).contains("denied"));
    assert_eq!(r.facts, vec![Fact::Verification("refused")]);

    // Expired.
    let (_, code2) = h.authorize().await;
    h.advance(601);
    let (r, _) = h.enter(&cookie, &code2).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.facts, vec![Fact::Verification("refused")]);

    // Already used.
    let (_, code3) = h.authorize().await;
    h.approve_in_store(&code3, "bob").await;
    let (r, _) = h.enter(&cookie, &code3).await;
    assert_eq!(r.status, 400);
    assert!(events(&r).is_empty());
}

#[tokio::test]
async fn a_disabled_clients_grant_is_denied_by_the_operator() {
    let h = harness();
    let issued =
        h.gw.device
            .authorize("retired", vec![], Default::default(), h.clock.now())
            .await
            .unwrap();
    let (cookie, _) = h.browser().await;
    let (r, _) = h.enter(&cookie, &issued.user_code).await;
    assert_eq!(r.status, 403);
    assert_eq!(events(&r), [Event::Denied(By::Operator)]);
    let grant = h.gw.device.by_id(&issued.id).await.unwrap().unwrap();
    assert!(matches!(grant.status, Status::Denied { .. }));
}

#[tokio::test]
async fn too_many_wrong_codes_are_refused_before_the_lookup() {
    let h = harness_with(&format!("{CONFIG}limits:\n  code_failures_per_ip: 2\n"));
    let (cookie, _) = h.browser().await;
    for _ in 0..2 {
        h.enter(&cookie, "BCDFGHJK").await;
    }
    let (_, user_code) = h.authorize().await;
    let (r, _) = h.enter(&cookie, &user_code).await;
    assert_eq!(r.status, 429);
    assert!(r.header_value("retry-after").is_some());
    assert!(r.facts.contains(&Fact::Limited("code_failures")));
    assert!(r.facts.contains(&Fact::Verification("refused")));
    assert_eq!(events(&r), [Event::Refused("code_failures")]);
    // Another address is not held back by this one's failures.
    let r = h
        .send_from(
            "127.0.0.2",
            "POST",
            "/device",
            &[FORM, ("cookie", &cookie)],
            &format!("user_code={user_code}"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

// ---------------------------------------------------------------------------------------------
// Approve and the login callback.

/// Loads a discovery document as the IdP would serve it.
async fn learn_discovery(h: &Harness) {
    let doc = r#"{"issuer":"http://gw.test","authorization_endpoint":"http://gw.test/auth","token_endpoint":"http://gw.test/token","jwks_uri":"http://gw.test/jwks"}"#;
    h.gw.oidc.learn_discovery(doc.as_bytes()).await.unwrap();
}

/// Approve pressed: (cookie, user code, grant id, state) of the login begun.
async fn begin_login(h: &Harness, client: Option<&str>) -> (String, String, String, String) {
    learn_discovery(h).await;
    let (cookie, _) = h.browser().await;
    let user_code = match client {
        None => h.authorize().await.1,
        Some(c) => {
            h.gw.device
                .authorize(c, vec![], Default::default(), h.clock.now())
                .await
                .unwrap()
                .user_code
        }
    };
    let keys = h.gw.browsers.keys(&h.gw.device).await.unwrap();
    let id = cookie.split_once('=').unwrap().1;
    let csrf = keys.csrf_token(id, &user_code);
    let r = if client.is_none() {
        h.act(&cookie, &user_code, &csrf, "approve").await
    } else {
        // A client disabled after the device asked: put the login in place as Approve would.
        let login = crate::device::Login {
            state_secret: "secret".into(),
            nonce: "n".into(),
            pkce_verifier: "v".into(),
            browser_binding: keys.browser_binding(id),
            claimed: false,
        };
        let g =
            h.gw.device
                .begin_login(&user_code, login, h.clock.now().secs())
                .await
                .unwrap();
        let location = format!("http://gw.test/auth?state={}.secret", g.id);
        Reply::new(303, Bytes::new()).header_text("Location", &location)
    };
    assert_eq!(r.status, 303, "{}", text(&r));
    let location = url::Url::parse(r.header_value("location").unwrap()).unwrap();
    let q: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
    let state = q["state"].clone();
    let grant = state.split_once('.').unwrap().0.to_string();
    (cookie, user_code, grant, state)
}

#[tokio::test]
async fn approve_sends_the_browser_to_the_idp_with_pkce_state_and_nonce() {
    let h = harness();
    // No discovery yet and the IdP unreachable: try again later, the grant stays pending.
    let (cookie, _) = h.browser().await;
    let (_, user_code) = h.authorize().await;
    let (_, csrf) = h.enter(&cookie, &user_code).await;
    let r = h.act(&cookie, &user_code, &csrf, "approve").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.facts, vec![Fact::Verification("login_retry")]);

    learn_discovery(&h).await;
    let r = h.act(&cookie, &user_code, &csrf, "approve").await;
    assert_eq!(r.status, 303);
    let location = r.header_value("location").unwrap();
    for part in [
        "http://gw.test/auth?",
        "response_type=code",
        "client_id=tv-app",
        "code_challenge_method=S256",
        "nonce=",
        "redirect_uri=http%3A%2F%2Fgw.test%2Fdevice%2Fcallback",
    ] {
        assert!(location.contains(part), "{part} in {location}");
    }
    assert!(r.facts.is_empty(), "nothing is approved yet");
}

#[tokio::test]
async fn an_idp_refusal_is_audited_once_the_grant_is_denied() {
    let h = harness();
    let (cookie, _, grant, state) = begin_login(&h, None).await;
    let r = h
        .callback(&format!("state={state}&error=access_denied"), &cookie)
        .await;
    assert_eq!(r.status, 400);
    assert!(r.facts.contains(&Fact::Verification("login_failed")));
    let a = audits(&r);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].event, Event::Denied(By::Idp));
    assert_eq!(a[0].error.as_deref(), Some("access_denied"));
    let g = h.gw.device.by_id(&grant).await.unwrap().unwrap();
    assert!(matches!(g.status, Status::Denied { .. }));
    // The same callback again: the grant is already denied, nothing more is audited.
    let r = h
        .callback(&format!("state={state}&error=access_denied"), &cookie)
        .await;
    assert_eq!(r.status, 400);
    assert!(events(&r).is_empty());
}

#[tokio::test]
async fn a_callback_for_a_disabled_client_denies_its_grant_and_says_so() {
    let h = harness();
    let (cookie, _, grant, state) = begin_login(&h, Some("retired")).await;
    let r = h
        .callback(&format!("state={state}&code=abc"), &cookie)
        .await;
    assert_eq!(r.status, 403, "{}", text(&r));
    assert_eq!(events(&r), [Event::Denied(By::Operator)]);
    let g = h.gw.device.by_id(&grant).await.unwrap().unwrap();
    assert!(matches!(g.status, Status::Denied { .. }));
}

#[tokio::test]
async fn a_callback_naming_the_issuer_with_another_trailing_slash_is_refused() {
    let h = harness();
    let (cookie, _, grant, state) = begin_login(&h, None).await;
    // The issuer is `http://gw.test`: `http://gw.test/` is another issuer (RFC 9207), as
    // discovery already treats it.
    let r = h
        .callback(
            &format!("state={state}&error=x&iss=http%3A%2F%2Fgw.test%2F"),
            &cookie,
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(events(&r).is_empty());
    let g = h.gw.device.by_id(&grant).await.unwrap().unwrap();
    assert!(
        matches!(g.status, Status::Authorizing(_)),
        "nothing changed"
    );
}

#[tokio::test]
async fn an_unreachable_idp_at_the_callback_lets_the_user_retry() {
    let h = harness();
    let (cookie, _, grant, state) = begin_login(&h, None).await;
    let r = h
        .callback(&format!("state={state}&code=abc"), &cookie)
        .await;
    assert_eq!(r.status, 502, "{}", text(&r));
    assert_eq!(r.facts, vec![Fact::Verification("login_retry")]);
    let g = h.gw.device.by_id(&grant).await.unwrap().unwrap();
    assert_eq!(g.status, Status::Pending);
    // A callback from another browser is refused and changes nothing.
    let (other, _) = h.browser().await;
    let r = h.callback(&format!("state={state}&code=abc"), &other).await;
    assert_eq!(r.status, 400);
    assert!(events(&r).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Built once.

#[tokio::test]
async fn page_headers_are_built_once_not_per_page() {
    let h = harness();
    let a = h.send("GET", "/device", &[], "").await.unwrap();
    let b = h.send("GET", "/device", &[], "").await.unwrap();
    let csp = |r: &Reply| {
        r.headers
            .iter()
            .find(|(k, _)| *k == "Content-Security-Policy")
            .map(|(_, v)| v.as_bytes().as_ptr())
            .unwrap()
    };
    // Clones of one value built at start-up share its bytes.
    assert_eq!(csp(&a), csp(&b));
}

#[tokio::test]
async fn the_pages_let_their_form_reach_a_login_on_another_origin() {
    // AWS Cognito's layout: the issuer on one origin, the authorization endpoint on another.
    let h = harness();
    let csp = |r: &Reply| {
        r.header_value("content-security-policy")
            .unwrap()
            .to_string()
    };
    let before = csp(&h.send("GET", "/device", &[], "").await.unwrap());
    assert!(
        before.contains("form-action 'self' http://gw.test;"),
        "{before}"
    );
    let doc = r#"{"issuer":"http://gw.test","authorization_endpoint":"https://login.example.test/oauth2/authorize","token_endpoint":"https://login.example.test/oauth2/token","jwks_uri":"http://gw.test/jwks"}"#;
    h.gw.oidc.learn_discovery(doc.as_bytes()).await.unwrap();
    let a = h.send("GET", "/device", &[], "").await.unwrap();
    let b = h.send("GET", "/device", &[], "").await.unwrap();
    assert!(
        csp(&a).contains("form-action 'self' http://gw.test https://login.example.test;"),
        "{}",
        csp(&a)
    );
    // Built once for that origin, then shared.
    let ptr = |r: &Reply| {
        r.headers
            .iter()
            .find(|(k, _)| *k == "Content-Security-Policy")
            .map(|(_, v)| v.as_bytes().as_ptr())
            .unwrap()
    };
    assert_eq!(ptr(&a), ptr(&b));
}

// ---------------------------------------------------------------------------------------------
// A callback whose code exchange succeeds, against a minimal IdP on loopback.

/// What the test IdP answers: the JSON body for the first request line (lower case) that
/// starts with the prefix; 404 for others. Set as the test goes.
type Answers = Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// A minimal IdP on 127.0.0.1, one request per connection, answering what `Answers` holds at
/// the time. Returns the address.
async fn test_idp(answers: Answers) -> std::net::SocketAddr {
    test_idp_logging(answers, Hits::default()).await
}

/// The request lines a test IdP was sent.
type Hits = Arc<std::sync::Mutex<Vec<String>>>;

async fn test_idp_logging(answers: Answers, hits: Hits) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (answers, hits) = (answers.clone(), hits.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // The head, then as much body as Content-Length says.
                let (head, body_len) = loop {
                    let n = stream.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (head, end + 4 + len);
                    }
                };
                while buf.len() < body_len {
                    let n = stream.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                hits.lock()
                    .unwrap()
                    .push(head.lines().next().unwrap_or_default().to_string());
                let found = answers
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|(prefix, _)| head.starts_with(prefix.as_str()))
                    .map(|(_, body)| body.clone());
                let (status, body) = match found {
                    Some(body) => ("200 OK", body),
                    None => ("404 Not Found", "{}".to_string()),
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    addr
}

/// A gateway whose IdP answers the code exchange of the login begun on it with a valid ID
/// token for `sub`: (harness, cookie, grant id, state).
async fn with_a_working_idp(sub: &str) -> (Harness, String, String, String) {
    let (h, cookie, grant, state, _) = with_a_working_idp_logging(sub).await;
    (h, cookie, grant, state)
}

/// [`with_a_working_idp`], and the request lines the IdP is sent.
async fn with_a_working_idp_logging(sub: &str) -> (Harness, String, String, String, Hits) {
    let (answers, hits) = (Answers::default(), Hits::default());
    let addr = test_idp_logging(answers.clone(), hits.clone()).await;
    let h = harness_with(&CONFIG.replace("127.0.0.1:9", &addr.to_string()));
    let (cookie, _, grant, state) = begin_login(&h, None).await;
    let g = h.gw.device.by_id(&grant).await.unwrap().unwrap();
    let Status::Authorizing(login) = &g.status else {
        panic!("not authorizing: {:?}", g.status)
    };
    let now = h.clock.now().secs();
    let (tokens, jwks) = signed_tokens("tv-app", &login.nonce, sub, now);
    *answers.lock().unwrap() = vec![("post /token ".into(), tokens), ("get /jwks ".into(), jwks)];
    (h, cookie, grant, state, hits)
}

/// A token response with an ID token for `aud`, `nonce` and `sub`, and the key set that
/// verifies it: (token response, JWKS), as JSON.
fn signed_tokens(aud: &str, nonce: &str, sub: &str, now: u64) -> (String, String) {
    signed_tokens_with(aud, nonce, sub, now, None, None)
}

/// [`signed_tokens`] with an `acr` and an `auth_time` in the ID token.
fn signed_tokens_with(
    aud: &str,
    nonce: &str,
    sub: &str,
    now: u64,
    acr: Option<&str>,
    auth_time: Option<u64>,
) -> (String, String) {
    use openidconnect::core::{
        CoreIdToken, CoreIdTokenClaims, CoreJsonWebKeySet, CoreJwsSigningAlgorithm,
        CoreRsaPrivateSigningKey,
    };
    use openidconnect::{
        Audience, EmptyAdditionalClaims, IssuerUrl, JsonWebKeyId, Nonce, PrivateSigningKey,
        StandardClaims, SubjectIdentifier,
    };
    use rsa::pkcs1::EncodeRsaPrivateKey;

    let rsa_key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
    let pem = rsa_key.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).unwrap();
    let key =
        CoreRsaPrivateSigningKey::from_pem(&pem, Some(JsonWebKeyId::new("k1".into()))).unwrap();
    let now = now as i64;
    let claims = CoreIdTokenClaims::new(
        IssuerUrl::new("http://gw.test".into()).unwrap(),
        vec![Audience::new(aud.into())],
        chrono::DateTime::from_timestamp(now + 3600, 0).unwrap(),
        chrono::DateTime::from_timestamp(now - 10, 0).unwrap(),
        StandardClaims::new(SubjectIdentifier::new(sub.into())),
        EmptyAdditionalClaims {},
    )
    .set_nonce(Some(Nonce::new(nonce.into())))
    .set_auth_context_ref(acr.map(|a| openidconnect::AuthenticationContextClass::new(a.into())))
    .set_auth_time(auth_time.and_then(|t| chrono::DateTime::from_timestamp(t as i64, 0)));
    let id_token = CoreIdToken::new(
        claims,
        &key,
        CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
        None,
        None,
    )
    .unwrap();
    let tokens = serde_json::json!({
        "access_token": "AT", "token_type": "Bearer", "expires_in": 300,
        "id_token": id_token.to_string(),
    });
    let jwks = CoreJsonWebKeySet::new(vec![key.as_verification_key()]);
    (tokens.to_string(), serde_json::to_string(&jwks).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_callbacks_at_once_exchange_the_code_once() {
    let (h, cookie, grant, state, hits) = with_a_working_idp_logging("alice").await;
    let query = format!("state={state}&code=abc");
    let (a, b) = tokio::join!(h.callback(&query, &cookie), h.callback(&query, &cookie));
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [200, 400], "{} / {}", text(&a), text(&b));
    let exchanges = hits
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("post /token"))
        .count();
    assert_eq!(exchanges, 1, "the code went to the IdP {exchanges} times");
    let approved: usize = [&a, &b]
        .iter()
        .map(|r| events(r).iter().filter(|e| **e == Event::Approved).count())
        .sum();
    assert_eq!(approved, 1);
    let g = h.gw.device.by_id(&grant).await.unwrap().unwrap();
    assert!(matches!(g.status, Status::Approved { .. }));
}

#[tokio::test]
async fn a_verified_login_approves_the_grant_and_is_audited_with_its_subject() {
    let (h, cookie, grant, state) = with_a_working_idp("alice").await;
    let r = h
        .callback(&format!("state={state}&code=abc"), &cookie)
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert!(r.facts.contains(&Fact::Verification("approved")));
    let a = audits(&r);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].event, Event::Approved);
    assert_eq!(a[0].grant.as_deref(), Some(grant.as_str()));
    assert_eq!(a[0].sub.as_deref(), Some("alice"));
    let g = h.gw.device.by_id(&grant).await.unwrap().unwrap();
    assert!(matches!(g.status, Status::Approved { .. }));
    // Both back-channel calls are timed where they happen (the JWKS one was documented but
    // never emitted).
    let metrics = String::from_utf8(h.gw.metrics.render()).unwrap();
    for op in ["token", "jwks"] {
        let series = format!(
            "devicegate_upstream_request_seconds_count{{operation=\"{op}\",result=\"ok\"}} 1"
        );
        assert!(metrics.contains(&series), "{series} in {metrics}");
    }
}

#[tokio::test]
async fn a_login_that_ends_after_the_grant_expired_approves_nothing_and_audits_nothing() {
    let (h, cookie, grant, state) = with_a_working_idp("alice").await;
    // The user took longer at the IdP than the grant lives: the exchange succeeds, the
    // approval does not (the audit event used to be written before the store said so).
    h.advance(601);
    let r = h
        .callback(&format!("state={state}&code=abc"), &cookie)
        .await;
    assert_eq!(r.status, 400, "{}", text(&r));
    assert_eq!(r.facts, vec![Fact::Verification("refused")]);
    let g = h.gw.device.by_id(&grant).await.unwrap().unwrap();
    assert!(matches!(g.status, Status::Authorizing(_)), "{:?}", g.status);
}

#[tokio::test]
async fn discovery_is_learned_from_its_fixed_url_only() {
    let answers = Answers::default();
    let addr = test_idp(answers.clone()).await;
    let doc = |jwks: &str| {
        format!(
            r#"{{"issuer":"http://gw.test","authorization_endpoint":"http://gw.test/auth","token_endpoint":"http://gw.test/token","jwks_uri":"{jwks}"}}"#
        )
    };
    // Entra varies discovery by `?appid=`: whoever adds a query must not choose the keys the
    // gateway trusts.
    *answers.lock().unwrap() = vec![
        (
            "get /.well-known/openid-configuration?".into(),
            doc("http://evil.example/keys"),
        ),
        (
            "get /.well-known/openid-configuration ".into(),
            doc("http://gw.test/jwks"),
        ),
    ];
    let h = harness_with(&CONFIG.replace("127.0.0.1:9", &addr.to_string()));
    let r = h
        .send("GET", "/.well-known/openid-configuration?appid=x", &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        json(&r)["device_authorization_endpoint"],
        "http://gw.test/device/code"
    );
    assert!(
        h.gw.oidc.cached_discovery().is_none(),
        "a document fetched with a query was learned"
    );
    let r = h
        .send("GET", "/.well-known/openid-configuration", &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let learned = h.gw.oidc.cached_discovery().unwrap();
    assert_eq!(learned.jwks_uri.as_str(), "http://gw.test/jwks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_are_answered_from_the_very_first_request() {
    let answers = Answers::default();
    let addr = test_idp(answers.clone()).await;
    *answers.lock().unwrap() = vec![(
        "get /.well-known/openid-configuration ".into(),
        r#"{"issuer":"http://gw.test","authorization_endpoint":"http://gw.test/auth","token_endpoint":"http://gw.test/token","jwks_uri":"http://gw.test/jwks"}"#.into(),
    )];
    // No upstream.token_path: the token path comes from discovery, which has not loaded.
    let h = harness_with(
        &CONFIG
            .replace("127.0.0.1:9", &addr.to_string())
            .replace("  token_path: /token\n", ""),
    );
    let (device_code, _) = h.authorize().await;
    let body = format!("grant_type={DEVICE_GRANT}&client_id=tv-app&device_code={device_code}");
    let h = Arc::new(h);
    let polls: Vec<_> = (0..30)
        .map(|i| {
            let (body, h) = (body.clone(), h.clone());
            tokio::spawn(async move {
                let ip = format!("127.0.1.{i}");
                h.send_from(&ip, "POST", "/token", &[FORM], &body).await
            })
        })
        .collect();
    for poll in polls {
        // Relayed (None) used to happen to the polls that came while the first fetch ran.
        let r = poll.await.unwrap();
        let r = r
            .as_ref()
            .expect("a device-code poll was relayed to the IdP");
        assert!(
            matches!(
                json(r)["error"].as_str(),
                Some("authorization_pending" | "slow_down")
            ),
            "{}",
            text(r)
        );
    }
    // Other grants still pass through, and so do other POSTs.
    assert!(h
        .send(
            "POST",
            "/token",
            &[FORM],
            "grant_type=refresh_token&refresh_token=x"
        )
        .await
        .is_none());
    assert!(h
        .send("POST", "/interaction/x/login", &[FORM], "login=a")
        .await
        .is_none());
}

#[tokio::test]
async fn a_poll_while_the_idp_cannot_be_asked_is_told_to_come_back() {
    let h = harness_with(&CONFIG.replace("  token_path: /token\n", ""));
    let body = format!("grant_type={DEVICE_GRANT}&client_id=tv-app&device_code=x");
    let r = h.send("POST", "/token", &[FORM], &body).await.unwrap();
    assert_eq!(r.status, 503, "{}", text(&r));
    assert_eq!(json(&r)["error"], "temporarily_unavailable");
    assert!(r.header_value("retry-after").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_guessers_hold_the_global_budget_a_signed_in_user_still_enters_their_code() {
    let answers = Answers::default();
    let addr = test_idp(answers.clone()).await;
    let h = harness_with(&format!(
        "{}limits:\n  code_failures_global_per_minute: 2\n",
        CONFIG.replace("127.0.0.1:9", &addr.to_string())
    ));
    learn_discovery(&h).await;
    // Guessers on two networks spend everyone's budget.
    for ip in ["127.0.2.1", "127.0.3.1"] {
        let r = h
            .send_from(ip, "POST", "/device", &[FORM], "user_code=BCDFGHJK")
            .await
            .unwrap();
        assert_eq!(r.status, 400);
    }
    let (_, user_code) = h.authorize().await;
    let (cookie, _) = h.browser().await;
    let lookup = |cookies: String| {
        let h = &h;
        let body = format!("user_code={user_code}");
        async move {
            h.send_from(
                "127.0.9.1",
                "POST",
                "/device",
                &[FORM, ("cookie", &cookies)],
                &body,
            )
            .await
            .unwrap()
        }
    };
    // The right code is refused before its lookup (the budget is everyone's), but the page
    // offers a way a guesser lacks: sign in first.
    let r = lookup(cookie.clone()).await;
    assert_eq!(r.status, 429, "{}", text(&r));
    assert!(text(&r).contains("Sign in to continue"), "{}", text(&r));
    let csrf = csrf_of(&r);
    assert!(!csrf.is_empty(), "no sign-in form: {}", text(&r));
    // A forged signed-in cookie changes nothing.
    let forged = format!("{cookie}; devicegate-user=9999999999.Y2Fyb2w.AAAA");
    assert_eq!(lookup(forged).await.status, 429);

    let r = h
        .post(
            "/device",
            &[("cookie", &cookie)],
            &format!("action=signin&csrf={csrf}"),
        )
        .await;
    assert_eq!(r.status, 303, "{}", text(&r));
    let location = url::Url::parse(r.header_value("location").unwrap()).unwrap();
    let q: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], "kiosk", "the first enabled client");
    assert!(q["state"].starts_with("signin."));
    let (tokens, jwks) = signed_tokens("kiosk", &q["nonce"], "carol", h.clock.now().secs());
    *answers.lock().unwrap() = vec![("post /token ".into(), tokens), ("get /jwks ".into(), jwks)];
    let r = h
        .callback(&format!("state={}&code=abc", q["state"]), &cookie)
        .await;
    assert_eq!(r.status, 303, "{}", text(&r));
    assert_eq!(events(&r), [Event::SignedIn]);
    let signed_in = r.header_value("set-cookie").unwrap();
    assert!(signed_in.contains("HttpOnly"));
    let signed_in = signed_in.split(';').next().unwrap();

    // Signed in, the code is looked up, on the user's own budget.
    let r = lookup(format!("{cookie}; {signed_in}")).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(events(&r), [Event::CodeEntered]);
    // The signed-in cookie is this browser's only.
    let (other, _) = h.browser().await;
    assert_eq!(lookup(format!("{other}; {signed_in}")).await.status, 429);
}

mod policy;
