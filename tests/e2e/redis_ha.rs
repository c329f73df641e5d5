//! The Redis store when Redis itself fails over: a real Sentinel setup (1 primary, 1 replica,
//! 3 `redis-sentinel`s) whose primary is killed mid-flow while its first sentinel hangs, and a real 3-primary Redis Cluster
//! whose grant slot is resharded and whose node is restarted mid-flow, each behind two gateway
//! instances. Every answer in between must be 503 `temporarily_unavailable` with `Retry-After`
//! or a correct answer for the grant's state; the flow then completes. The `DRILL` lines are
//! the timings reported in the closing note of the work.

use std::time::{Duration, Instant};

use devicegate::device::code::hash_device_code;

use crate::common::redis_ha::{self, Cluster, Sentinels};
use crate::common::{approve_in_browser, s, Env, Gate, Instance, Options, DEVICE_GRANT};

/// One device poll, 1.1 s after this test's previous one (never too fast for the 1 s
/// interval, whichever instance answered it), checked: a 503 must be `temporarily_unavailable` with `Retry-After`, and
/// anything else must be one of `expected`. Returns the status and the error (or `tokens`).
async fn poll_checked(gate: &Gate, device_code: &str, expected: &[&str]) -> (u16, String) {
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let form = [
        ("grant_type", DEVICE_GRANT),
        ("device_code", device_code),
        ("client_id", "tv-app"),
    ];
    let (status, headers, body) = gate.post_form("/token", &form).await;
    let what = if status == 200 && body["access_token"].is_string() {
        "tokens".to_string()
    } else {
        s(&body["error"]).to_string()
    };
    if status == 503 {
        assert_eq!(what, "temporarily_unavailable", "{body}");
        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=30).contains(&retry), "Retry-After {retry}");
    } else {
        assert!(
            expected.contains(&what.as_str()),
            "poll answered {status} {body}, expected 503 or one of {expected:?}"
        );
    }
    (status, what)
}

/// A gateway (A) and a second instance (B) on the Redis store `redis` describes, and a flow
/// authorized on A and polled on B: (A, B, device code, user code).
async fn two_instances_with_a_flow(redis: &str) -> (Env, Instance, String, String) {
    let env = Env::start(Options {
        store: Some(format!(
            "  backend: redis\n  redis:\n{redis}    command_timeout_ms: 500\n"
        )),
        ..Options::default()
    })
    .await;
    let b = env.start_instance("gateway-b");
    let dev = env.authorize("tv-app", "openid profile").await;
    let device_code = s(&dev["device_code"]).to_string();
    let user_code = s(&dev["user_code"]).to_string();
    let (status, what) = poll_checked(&b.gate, &device_code, &["authorization_pending"]).await;
    assert_eq!((status, what.as_str()), (400, "authorization_pending"));
    (env, b, device_code, user_code)
}

/// The flow ends: approved in a browser on B, its tokens delivered on A, then never again.
async fn complete_once(env: &Env, b: &Instance, device_code: &str, user_code: &str, name: &str) {
    approve_in_browser(&b.gate, name, user_code).await;
    let (status, what) = poll_checked(&env.gate, device_code, &["tokens"]).await;
    assert_eq!((status, what.as_str()), (200, "tokens"));
    let (_, what) = poll_checked(&b.gate, device_code, &["invalid_grant"]).await;
    assert_eq!(what, "invalid_grant");
}

/// Polls `gate` until `done` says the
/// outage is over and a poll answered correctly; returns when the first 503 and the first
/// correct answer after it came, counted from `since`.
async fn ride_out(
    gate: &Gate,
    device_code: &str,
    since: Instant,
    limit: Duration,
    done: impl Fn() -> bool,
) -> (Option<Duration>, Duration, usize) {
    let mut first_503 = None;
    let mut answered = 0;
    loop {
        assert!(
            since.elapsed() < limit,
            "the store did not recover within {limit:?}"
        );
        let (status, _) = poll_checked(gate, device_code, &["authorization_pending"]).await;
        answered += 1;
        if status == 503 {
            first_503.get_or_insert(since.elapsed());
        } else if first_503.is_some() || done() {
            return (first_503, since.elapsed(), answered);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_follows_a_sentinel_failover_mid_flow() {
    let mut setup = tokio::task::spawn_blocking(Sentinels::start).await.unwrap();
    let (env, b, device_code, user_code) = two_instances_with_a_flow(&format!(
        "    mode: sentinel\n    url: redis://{}:${{REDIS_PASSWORD}}@{}/0\n    sentinels: [{}]\n",
        redis_ha::USER,
        redis_ha::MASTER,
        setup.addresses().join(", ")
    ))
    .await;

    // The grant has reached the replica (asynchronous replication, quick on loopback): the
    // failover must keep it. A grant that had not would be lost (see README).
    let old = setup.primary_port().unwrap();
    let replica = *setup.data_ports().iter().find(|p| **p != old).unwrap();
    let key = format!("devicegate:grant:{}", hash_device_code(&device_code));
    redis_ha::wait_until("the grant on the replica", Duration::from_secs(10), || {
        redis_ha::cli(replica, &["EXISTS", &key]) == "1"
    });

    // A second device's grant, written after the replica was cut off: the primary has it, the
    // replica never will, as when a primary dies before replicating its last writes.
    setup.cut_replication(old);
    let lost = b.gate.authorize("tv-app", "openid").await;
    let lost_code = s(&lost["device_code"]).to_string();
    let (_, what) = poll_checked(&env.gate, &lost_code, &["authorization_pending"]).await;
    assert_eq!(what, "authorization_pending");

    // A prober beside the device: every 100 ms a poll with an unknown device code, whose
    // correct answer needs the store (invalid_grant), to time the outage to a tenth of a second.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let (gate, stop) = (
            Gate {
                url: env.url.clone(),
                http: env.http.clone(),
            },
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let started = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let form = [
                    ("grant_type", DEVICE_GRANT),
                    ("device_code", "no-such-device-code"),
                    ("client_id", "tv-app"),
                ];
                let (status, _, body) = gate.post_form("/token", &form).await;
                seen.push((started.elapsed(), status, s(&body["error"]).to_string()));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (started, seen)
        })
    };

    // The first sentinel of the configuration hangs (connections accepted, nothing answered):
    // the other two still make the failover, and the gateway must not wait for the first.
    setup.freeze(0);

    // Kill the primary mid-flow, and poll through the failover.
    let killed = Instant::now();
    setup.kill(old);
    // When the sentinels name the replica, watched every 50 ms beside the polls.
    let sentinel = setup.awake_sentinel();
    let watcher = std::thread::spawn(move || {
        while killed.elapsed() < Duration::from_secs(60) {
            let named = redis_ha::sentinel_cli(
                sentinel,
                &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", redis_ha::MASTER],
            );
            if named.lines().nth(1) == Some(replica.to_string().as_str()) {
                return Some(killed.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    });
    let (first_503, recovered, polls) = ride_out(
        &env.gate,
        &device_code,
        killed,
        Duration::from_secs(60),
        || watcher.is_finished(),
    )
    .await;
    // The other instance follows the new primary too.
    let (status, what) = poll_checked(&b.gate, &device_code, &["authorization_pending"]).await;
    let b_recovered = killed.elapsed();
    let promoted = watcher.join().unwrap();
    println!(
        "DRILL sentinel: primary :{old} killed; first 503 after {first_503:?}; sentinels named \
         :{replica} after {promoted:?}; instance a answered {status} correctly again after \
         {recovered:?} ({polls} polls, each 503 or authorization_pending); instance b after \
         {b_recovered:?}: {what}"
    );
    assert!(first_503.is_some(), "no poll saw the outage");
    assert_eq!(setup.primary_port(), Some(replica));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (probe_start, seen) = prober.await.unwrap();
    let at = |d: Duration| (probe_start + d).saturating_duration_since(killed);
    let mut down = (None, None);
    for (when, status, error) in &seen {
        let ok = matches!(
            (status, error.as_str()),
            (400, "invalid_grant") | (503, "temporarily_unavailable")
        );
        assert!(ok, "the prober got {status} {error}");
        if *status == 503 {
            down.0.get_or_insert(at(*when));
            down.1 = Some(at(*when));
        }
    }
    let unavailable = seen.iter().filter(|(_, status, _)| *status == 503).count();
    println!(
        "DRILL sentinel prober (every 100 ms, {} answers: {unavailable} × 503 temporarily_unavailable, \
         the rest invalid_grant): 503 from {:?} to {:?} after the kill",
        seen.len(),
        down.0,
        down.1
    );

    // The grant that never reached the replica is gone: its device is told to start over
    // (invalid_grant), and does so on the new primary.
    let (status, what) = poll_checked(&b.gate, &lost_code, &["invalid_grant"]).await;
    assert_eq!((status, what.as_str()), (400, "invalid_grant"));
    let again = b.gate.authorize("tv-app", "openid").await;
    let (_, what) = poll_checked(
        &env.gate,
        s(&again["device_code"]),
        &["authorization_pending"],
    )
    .await;
    println!("DRILL sentinel: the unreplicated grant's device got {status} invalid_grant, then started over: {what}");

    // The flow completes on the promoted primary.
    complete_once(&env, &b, &device_code, &user_code, "sentinel-failover").await;

    // The frozen sentinel wakes, and the old primary comes back as a replica of the new one;
    // new flows go on meanwhile.
    setup.thaw(0);
    setup.restart(old);
    redis_ha::wait_until(
        "the old primary turned replica",
        Duration::from_secs(30),
        || redis_ha::cli(old, &["INFO", "replication"]).contains("role:slave"),
    );
    let dev = b.gate.authorize("tv-app", "openid").await;
    let (_, what) = poll_checked(
        &env.gate,
        s(&dev["device_code"]),
        &["authorization_pending"],
    )
    .await;
    assert_eq!(what, "authorization_pending");
    let log = env.gateway_log();
    assert!(log.contains("following the new primary"), "{log}");
    assert!(
        !log.contains(crate::common::REDIS_PASSWORD),
        "the password was logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_serves_one_flow_through_a_reshard_and_a_node_restart() {
    let mut cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    let (url, rest) = cluster.url_with_password("${REDIS_PASSWORD}");
    let (env, b, device_code, user_code) = two_instances_with_a_flow(&format!(
        "    mode: cluster\n    url: {url}\n    nodes: [{}]\n",
        rest.join(", ")
    ))
    .await;

    // Reshard the grant's slot to another node while both instances serve the flow: polls
    // while the slot is half moved (ASK), and after it moved (MOVED).
    let key = format!("devicegate:grant:{}", hash_device_code(&device_code));
    let from = cluster.owner(&key);
    let to = (from + 1) % 3;
    let started = Instant::now();
    let half = cluster.begin_move(&key, to);
    let (_, during) = poll_checked(&env.gate, &device_code, &["authorization_pending"]).await;
    cluster.finish_move(half);
    let (_, after) = poll_checked(&b.gate, &device_code, &["authorization_pending"]).await;
    assert_eq!(cluster.owner(&key), to);
    println!(
        "DRILL cluster reshard: grant slot moved from node {from} to node {to} in {:?}; \
         poll while half moved: {during}; after: {after}",
        started.elapsed()
    );
    assert_eq!(
        (during.as_str(), after.as_str()),
        ("authorization_pending", "authorization_pending")
    );

    // Restart the node that now holds the grant: its slots are down meanwhile (503), and it
    // comes back with its keys (append-only file).
    let killed = Instant::now();
    cluster.kill(to);
    let (status, _) = poll_checked(&env.gate, &device_code, &["authorization_pending"]).await;
    assert_eq!(status, 503, "the grant's node is down");
    let down = killed.elapsed();
    // A new flow meanwhile: answered 200 if its keys' slots are up, else 503, never a 5xx.
    let form = [("client_id", "tv-app"), ("scope", "openid")];
    let (other, _, body) = b.gate.post_form("/device/code", &form).await;
    assert!(
        other == 200 || (other == 503 && s(&body["error"]) == "temporarily_unavailable"),
        "{other} {body}"
    );
    tokio::task::block_in_place(|| cluster.restart(to));
    let restarted = killed.elapsed();
    let (_, recovered, polls) = ride_out(
        &b.gate,
        &device_code,
        killed,
        Duration::from_secs(60),
        || true,
    )
    .await;
    println!(
        "DRILL cluster node restart: node {to} killed; poll 503 after {down:?}; a new device \
         request meanwhile {other}; node back after {restarted:?}; correct answer after \
         {recovered:?} ({polls} poll)"
    );

    complete_once(&env, &b, &device_code, &user_code, "cluster-flow").await;

    // Grants of new flows spread over the three primaries.
    let mut owners = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let dev = b.gate.authorize("tv-app", "openid").await;
        owners.insert(cluster.owner(&format!(
            "devicegate:grant:{}",
            hash_device_code(s(&dev["device_code"]))
        )));
    }
    assert!(owners.len() >= 2, "12 grants all on node(s) {owners:?}");
}
