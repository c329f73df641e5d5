//! Availability under attack: an attacker holding many addresses (50 loopback addresses in
//! distinct /24s) floods the device endpoint through a public client; a legitimate device on a
//! network of its own still gets a code.

use crate::common::{client_from, Env, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_attacking_networks_cannot_stop_a_device_from_getting_a_code() {
    // The defaults: max_pending 1000, 30 requests a minute per address, 600 a minute per
    // client, a share of 16 pending grants per network.
    let env = Env::start(Options {
        limits: Some("  pending_per_network: 16\n".into()),
        ..Options::default()
    })
    .await;
    let mut tasks = tokio::task::JoinSet::new();
    for net in 0..50u8 {
        let url = format!("{}/device/code", env.url);
        tasks.spawn(async move {
            let ip = format!("127.10.{net}.1");
            let http = client_from(&ip);
            let mut issued = 0;
            // More than the per-address budget: the attacker sends all it may.
            for _ in 0..32 {
                let resp = http
                    .post(&url)
                    .form(&[("client_id", "tv-app")])
                    .send()
                    .await
                    .unwrap();
                match resp.status().as_u16() {
                    200 => issued += 1,
                    429 => {}
                    other => panic!("{ip}: unexpected {other}"),
                }
            }
            issued
        });
    }
    let mut held = 0;
    while let Some(n) = tasks.join_next().await {
        let n = n.unwrap();
        assert!(n <= 16, "one network opened {n} grants");
        held += n;
    }
    assert_eq!(
        held,
        50 * 16,
        "every attacking network got exactly its share"
    );
    // A device on a network of its own still gets its code (it got 429 when the attack had
    // spent tv-app's per-client budget, or 503 once the store was full).
    let device = client_from("127.200.0.1");
    let resp = device
        .post(format!("{}/device/code", env.url))
        .form(&[("client_id", "tv-app")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
}
