//! Behind a load balancer: nginx in front of the gateway, clients on distinct loopback
//! addresses, and clients that forge forwarding headers.

use serde_json::Value;

use crate::common::{client_from, s, start_nginx, Env, Options};

/// The status of a device authorization through `base`.
async fn device_request(http: &reqwest::Client, base: &str, xff: Option<&str>) -> u16 {
    crate::common::device_request(http, base, xff).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_client_keeps_its_own_address() {
    let env = Env::start(Options {
        limits: Some("  device_requests_per_ip_per_minute: 2\n".into()),
        trusted_proxies: Some("[127.0.0.1]".into()),
        json_logs: true,
        ..Options::default()
    })
    .await;
    let (_nginx, port) = start_nginx(env.dir.path(), env.port);
    let front = format!("http://127.0.0.1:{port}");
    let (a, b) = (client_from("127.3.0.1"), client_from("127.3.0.2"));

    // Client A spends its budget through the balancer, and a forged leftmost entry does not
    // give it a new one (nginx appends the address it saw).
    assert_eq!(device_request(&a, &front, None).await, 200);
    assert_eq!(device_request(&a, &front, Some("127.9.9.9")).await, 200);
    assert_eq!(device_request(&a, &front, Some("127.9.9.8")).await, 429);
    // Client B, behind the same balancer, has its own (it shared A's when every client had
    // the balancer's address).
    assert_eq!(device_request(&b, &front, None).await, 200);
    // A client talking to the gateway directly is not trusted: its X-Forwarded-For naming B
    // is ignored, and it is counted as itself.
    let direct = client_from("127.4.0.1");
    for _ in 0..2 {
        assert_eq!(
            device_request(&direct, &env.url, Some("127.3.0.2")).await,
            200
        );
    }
    assert_eq!(
        device_request(&b, &front, None).await,
        200,
        "B's budget untouched"
    );

    // The audit log names the real client.
    let log = env.gateway_log();
    let created: Vec<String> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "audit" && v["event"] == "created")
        .map(|v| s(&v["client_ip"]).to_string())
        .collect();
    assert_eq!(
        created,
        [
            "127.3.0.1",
            "127.3.0.1",
            "127.3.0.2",
            "127.4.0.1",
            "127.4.0.1",
            "127.3.0.2"
        ],
        "{log}"
    );
}
