//! The shared Redis store with a real `redis-server` (password set, no persistence): several
//! gateway instances serving one flow, a gateway restart in the middle of a flow, and Redis
//! going away and coming back.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{approve_in_browser, s, Env, Gate, Options, REDIS_PASSWORD};

fn redis_env(interval: u64) -> Options {
    Options {
        redis: true,
        interval,
        ..Options::default()
    }
}

/// Retries `poll` for a few seconds while the gateway still answers 503 (store reconnecting).
async fn first_answer_after_outage(gate: &Gate, device_code: &str) -> (u16, Value) {
    let start = Instant::now();
    loop {
        let (status, body) = gate.poll("tv-app", device_code).await;
        if status != 503 || start.elapsed() > Duration::from_secs(10) {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_flow() {
    // interval 3: two polls in a row, one on each instance, are always too fast.
    let env = Env::start(redis_env(3)).await;
    let b = env.start_instance("gateway-b");

    // Authorized on A.
    let dev = env.authorize("tv-app", "openid profile").await;
    let device_code = s(&dev["device_code"]).to_string();
    let user_code = s(&dev["user_code"]).to_string();

    // Polled on both: B knows the grant, and A's poll counts against B's (shared last poll).
    let (status, body) = env.poll("tv-app", &device_code).await;
    assert_eq!((status, s(&body["error"])), (400, "authorization_pending"));
    let (status, body) = b.gate.poll("tv-app", &device_code).await;
    assert_eq!((status, s(&body["error"])), (400, "slow_down"), "{body}");
    assert_eq!(body["interval"], 8);
    let slowed_at = Instant::now();

    // Approved in a browser on B. The IdP sends the browser back to the public origin (A here),
    // so A checks a login that B started: the browser binding key is shared through Redis.
    approve_in_browser(&b.gate, "redis-two-instances", &user_code).await;

    // Both instances polled at the same instant: exactly one gets the tokens.
    let wait = Duration::from_secs(9).saturating_sub(slowed_at.elapsed());
    tokio::time::sleep(wait).await;
    let (a_poll, b_poll) = tokio::join!(
        env.poll("tv-app", &device_code),
        b.gate.poll("tv-app", &device_code)
    );
    let mut answers = [a_poll, b_poll];
    answers.sort_by_key(|(status, _)| *status);
    let [(ok, tokens), (refused, again)] = answers;
    assert_eq!(ok, 200, "{tokens}");
    assert!(!s(&tokens["access_token"]).is_empty());
    assert!(!s(&tokens["id_token"]).is_empty());
    assert_eq!(
        (refused, s(&again["error"])),
        (400, "invalid_grant"),
        "{again}"
    );

    // The Redis password never reaches a log.
    for log in ["gateway.log", "gateway-b.log"] {
        let text = std::fs::read_to_string(env.dir.path().join(log)).unwrap();
        assert!(
            !text.contains(REDIS_PASSWORD),
            "{log} holds the Redis password"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_restart_loses_nothing() {
    let mut env = Env::start(redis_env(1)).await;
    let dev = env.authorize("tv-app", "openid").await;
    let device_code = s(&dev["device_code"]).to_string();
    let user_code = s(&dev["user_code"]).to_string();

    // The user reaches the consent page, then the gateway restarts (SIGKILL: no clean-up).
    let (cookie, csrf) = env.consent_via_http(&user_code).await;
    env.restart_gateway();

    // The grant survived, and so did the key behind the consent form's CSRF token: Approve on
    // the page loaded before the restart still works.
    let (status, body) = env.poll("tv-app", &device_code).await;
    assert_eq!((status, s(&body["error"])), (400, "authorization_pending"));
    let approved = env.approve_consent(&user_code, &cookie, &csrf).await;
    assert_eq!(approved.status, 303, "{}", approved.body);

    // And the flow completes in a browser after the restart.
    approve_in_browser(&env.gate, "redis-restart", &user_code).await;
    let (status, tokens) = env
        .poll_until_done("tv-app", &device_code, 1, Duration::from_secs(10))
        .await;
    assert_eq!(status, 200, "{tokens}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_closed_and_recovers() {
    let mut env = Env::start(redis_env(1)).await;
    let dev = env.authorize("tv-app", "openid").await;
    let device_code = s(&dev["device_code"]).to_string();
    let user_code = s(&dev["user_code"]).to_string();

    // Redis hangs (SIGSTOP): owned endpoints answer 503 once the command timeout passes.
    env.redis.as_ref().unwrap().pause();
    let (status, headers, body) = env
        .post_form("/device/code", &[("client_id", "tv-app")])
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(s(&body["error"]), "temporarily_unavailable");
    assert_eq!(headers["retry-after"], "5");
    assert!(
        !s(&body["error_description"]).contains("127.0.0.1"),
        "{body}"
    );
    let (status, body) = env.poll("tv-app", &device_code).await;
    assert_eq!(
        (status, s(&body["error"])),
        (503, "temporarily_unavailable")
    );
    let page = env
        .verification_form("", format!("action=lookup&user_code={user_code}"))
        .await;
    assert_eq!(page.status(), 503);
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("Temporarily unavailable"));

    // Pass-through does not need the store.
    for path in ["/.well-known/openid-configuration", "/jwks"] {
        let resp = env.get(path).await;
        assert_eq!(resp.status(), 200, "{path}");
    }

    // Redis answers again: the pending flow goes on and completes.
    env.redis.as_ref().unwrap().resume();
    let (status, body) = first_answer_after_outage(&env.gate, &device_code).await;
    assert_eq!(
        (status, s(&body["error"])),
        (400, "authorization_pending"),
        "{body}"
    );
    approve_in_browser(&env.gate, "redis-outage", &user_code).await;
    let (status, tokens) = env
        .poll_until_done("tv-app", &device_code, 1, Duration::from_secs(10))
        .await;
    assert_eq!(status, 200, "{tokens}");

    // Redis killed (connections refused) and restarted empty: 503 meanwhile, then the gateway
    // reconnects by itself. Grants kept only in the lost Redis are unknown now.
    env.redis.as_mut().unwrap().stop();
    let (status, _, body) = env
        .post_form("/device/code", &[("client_id", "tv-app")])
        .await;
    assert_eq!(
        (status, s(&body["error"])),
        (503, "temporarily_unavailable")
    );
    env.redis.as_mut().unwrap().start_again();
    let (status, body) = first_answer_after_outage(&env.gate, &device_code).await;
    assert_eq!(
        (status, s(&body["error"])),
        (400, "invalid_grant"),
        "{body}"
    );
    let fresh = env.authorize("tv-app", "openid").await;
    assert!(!s(&fresh["user_code"]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_downtime_upgrade_keeps_pending_grants_and_refuses_no_connection() {
    let mut env = Env::start(redis_env(1)).await;
    let dev = env.authorize("tv-app", "openid").await;
    let device_code = s(&dev["device_code"]).to_string();
    let user_code = s(&dev["user_code"]).to_string();
    let (_, body) = env.poll("tv-app", &device_code).await;
    assert_eq!(s(&body["error"]), "authorization_pending");

    // Traffic keeps flowing while the listeners change hands: every request on a new
    // connection is accepted by one process or the other. (A request racing the old process's
    // close of an idle keep-alive connection is the usual client-retry case of any restart, so
    // this client does not keep connections.)
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Three clients at once, so connections keep arriving while the old process stops
    // accepting: one it accepted just before its listener closed must still be answered.
    let hammers: Vec<_> = (0..3)
        .map(|_| {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            let (stop, url) = (stop.clone(), env.url.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match http.get(format!("{url}/jwks")).send().await {
                        Ok(r) if r.status() == 200 => ok += 1,
                        Ok(r) => failed.push(r.status().to_string()),
                        Err(e) => failed.push(e.to_string()),
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (ok, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::task::block_in_place(|| env.upgrade_gateway());
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for hammer in hammers {
        let (ok, failed) = hammer.await.unwrap();
        assert!(
            ok > 10 && failed.is_empty(),
            "{ok} ok, failures: {failed:?}"
        );
    }

    // The new process serves the pending grant from Redis, and the flow completes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, body) = env.poll("tv-app", &device_code).await;
    assert_eq!(
        (status, s(&body["error"])),
        (400, "authorization_pending"),
        "{body}"
    );
    approve_in_browser(&env.gate, "redis-upgrade", &user_code).await;
    let (status, tokens) = env
        .poll_until_done("tv-app", &device_code, 1, Duration::from_secs(10))
        .await;
    assert_eq!(status, 200, "{tokens}");
}

/// `rediss://` is verified against `store.redis.ca_file`: a real TLS-only `redis-server` with a
/// certificate from a throwaway CA is refused without the CA and used with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_is_verified_against_the_configured_ca() {
    use devicegate::config::{Redis as RedisConfig, Secret};
    use devicegate::device::redis::RedisStore;
    use devicegate::device::{Grant, Key, Status, Store, StoreError};

    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = crate::common::test_certificates(dir.path());
    let port = crate::common::free_port();
    let child = std::process::Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"])
        .args([
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    let _redis = crate::common::Proc(child);
    crate::common::wait_for_port(port);

    let store = |ca_pem: Option<Vec<u8>>| {
        let cfg = RedisConfig {
            mode: devicegate::config::RedisMode::Standalone,
            url: Secret::new(format!("rediss://localhost:{port}")),
            key_prefix: "tls:".into(),
            pool_size: 1,
            command_timeout: Duration::from_secs(2),
            ca_pem,
        };
        RedisStore::new(&cfg, Duration::from_secs(60), 10).unwrap()
    };
    let grant = Grant {
        id: "g1".into(),
        device_code_hash: "h1".into(),
        user_code: "BCDFGHJK".into(),
        client_id: "tv-app".into(),
        scopes: vec!["openid".into()],
        requester_ip: None,
        requester_software: None,
        created_at: 0,
        expires_at: 600,
        interval: 5,
        last_poll: None,
        status: Status::Pending,
        subject: None,
        ended_at: None,
        denied_by: None,
        expiry_reported: false,
    };
    // Never unverified TLS: the self-made certificate is refused without the operator's CA.
    assert!(matches!(
        store(None).insert(&grant).await,
        Err(StoreError::Unavailable(_))
    ));
    let trusted = store(Some(std::fs::read(&ca).unwrap()));
    trusted.insert(&grant).await.unwrap();
    assert_eq!(trusted.get(Key::Id("g1")).await.unwrap(), Some(grant));
}

/// 300 wrong codes at the same moment from one address, spread over two instances sharing one
/// Redis: the per-address budget (10) is spent before each lookup, atomically in Redis, so
/// exactly 10 are looked up, whatever the instance or the timing. (Counted per instance and
/// checked before an awaited lookup, 100 of 100 concurrent guesses used to be looked up.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_guesses_on_two_instances_get_one_budget() {
    let env = Env::start(Options {
        limits: Some(
            "  code_failures_per_ip: 10\n  code_failures_global_per_minute: 1000\n".into(),
        ),
        ..redis_env(1)
    })
    .await;
    let second = env.start_instance("second");
    let urls = [env.url.clone(), second.gate.url.clone()];
    let attacker = reqwest::Client::builder()
        .local_address("127.5.0.1".parse::<std::net::IpAddr>().unwrap())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..300usize {
        let url = urls[i % 2].clone();
        let http = attacker.clone();
        tasks.spawn(async move {
            let letters = "BCDFGHJKLMNPQRSTVWXZ";
            let code: String = (0..8)
                .map(|k| {
                    letters
                        .chars()
                        .nth((i / 20usize.pow(k % 2) + k as usize) % 20)
                        .unwrap()
                })
                .collect();
            let (status, _, text) = crate::common::enter_code(&http, &url, &code).await;
            (status, text)
        });
    }
    let (mut looked_up, mut refused) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        let (status, text) = done.unwrap();
        match status {
            400 if text.contains("recognise that code") => looked_up += 1,
            429 => refused += 1,
            other => panic!("unexpected {other}: {text}"),
        }
    }
    assert_eq!((looked_up, refused), (10, 290));
    // Another address has its own budget, on either instance.
    let other = crate::common::client_from("127.5.0.2");
    let (status, _, _) = crate::common::enter_code(&other, &urls[1], "BCDFGHJK").await;
    assert_eq!(status, 400);
}
