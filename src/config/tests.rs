//! The configuration's own tests: every error names its key, and every shipped file validates.

use std::time::Duration;

use super::*;

const GOOD: &str = r#"
listen: 127.0.0.1:8080
public_url: http://localhost:8080/
upstream:
  address: 127.0.0.1:3000
  issuer: http://localhost:8080
clients:
  - client_id: tv-app
    name: Living-room TV
    client_secret: ${TV_APP_SECRET}
    allowed_scopes: [openid, profile]
"#;

fn env(name: &str) -> Option<String> {
    (name == "TV_APP_SECRET").then(|| "s3cret".to_string())
}

fn errors(yaml: &str) -> Vec<String> {
    match Config::from_yaml(yaml, &env) {
        Ok(_) => vec![],
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn good_config_with_defaults() {
    let c = Config::from_yaml(GOOD, &env).unwrap();
    assert_eq!(c.public_url.as_str(), "http://localhost:8080/");
    assert_eq!(c.upstream.issuer_id, "http://localhost:8080");
    let slash = GOOD.replace(
        "issuer: http://localhost:8080",
        "issuer: https://t.example/",
    );
    let c2 = Config::from_yaml(&slash, &env).unwrap();
    assert_eq!(
        c2.upstream.issuer_id, "https://t.example/",
        "kept as written (Auth0)"
    );
    assert_eq!(c.public("/device"), "http://localhost:8080/device");
    assert_eq!(c.device.verification_path, "/device");
    assert_eq!(c.device.interval, 5);
    assert_eq!(c.store.max_pending, 1000);
    assert_eq!(c.limits, Limits::default());
    // The defaults keep brute force below 1e-3 expected successes a day (README).
    assert!(c.brute_force_bound() < 1e-3, "{}", c.brute_force_bound());
    let tv = &c.clients["tv-app"];
    assert_eq!(
        tv.client_secret.as_ref().map(Secret::expose),
        Some("s3cret")
    );
    assert!(tv.enabled);
    // The secret never shows in debug output.
    assert!(!format!("{c:?}").contains("s3cret"));
}

#[test]
fn every_error_is_reported_with_its_key() {
    let yaml = r#"
listen: nowhere
public_url: localhost:8080
upstream:
  address: 127.0.0.1
  issuer: http://localhost:8080
  colour: blue
device:
  expires_in: 0
store:
  backend: etcd
clients:
  - client_id: a
  - client_id: a
  - client_id: b
    client_secret: ${MISSING_SECRET}
extra: 1
"#;
    let errs = errors(yaml);
    let has = |key: &str, text: &str| {
        assert!(
            errs.iter().any(|e| e.starts_with(key) && e.contains(text)),
            "no error for {key} containing '{text}' in {errs:#?}"
        )
    };
    has("listen", "host:port");
    has("public_url", "scheme");
    has("upstream", "unknown field `colour`");
    has("device.expires_in", "between 1");
    has("store.backend", "etcd");
    has("clients[1].client_id", "duplicate");
    has("clients[2].client_secret", "MISSING_SECRET is not set");
    has("extra", "unknown key");
}

#[test]
fn ui_section() {
    // Rebranding takes three keys.
    let yaml = format!(
            "{GOOD}    description: Streams films\n    logo_url: https://cdn.example/tv.png\nui:\n  title: Acme\n  logo_url: /static/logo.svg\n  colors: {{accent: '#8A1538'}}\n  scopes: {{files: Read your files, openid: {{de: Wer Sie sind}}}}\n"
        );
    let c = Config::from_yaml(&yaml, &env).unwrap();
    assert_eq!(c.ui.title.as_deref(), Some("Acme"));
    assert_eq!(c.ui.colors.accent, "#8a1538");
    assert_eq!(c.ui.default_language, "en");
    assert_eq!(
        c.clients["tv-app"].logo_url.as_deref(),
        Some("https://cdn.example/tv.png")
    );

    let bad = format!(
            "{GOOD}    logo_url: javascript:alert(1)\nui:\n  logo_url: ftp://evil.example/x.png\n  colors: {{accent: '#ffff00', text: red}}\n  default_language: xx\n  colour: blue\n  templates_dir: /nonexistent/dir\n"
        );
    let errs = errors(&bad);
    for key in ["clients[0].logo_url", "ui: unknown field `colour`"] {
        assert!(errs.iter().any(|e| e.starts_with(key)), "{key}: {errs:?}");
    }
    // deny_unknown_fields stops at the first unknown key; fix it and see the rest.
    let errs = errors(&bad.replace("  colour: blue\n", ""));
    for key in [
        "ui.logo_url",
        "ui.colors.accent",
        "ui.colors.text",
        "ui.templates_dir",
    ] {
        assert!(errs.iter().any(|e| e.starts_with(key)), "{key}: {errs:?}");
    }
}

#[test]
fn bad_addresses_and_paths() {
    let errs = errors(&GOOD.replace("127.0.0.1:3000", "127.0.0.1:99999"));
    assert!(
        errs.iter().any(|e| e.starts_with("upstream.address")),
        "{errs:?}"
    );
    let yaml =
        format!("{GOOD}device:\n  authorization_path: device/code\n  callback_path: /device\n");
    let errs = errors(&yaml);
    assert!(
        errs.iter()
            .any(|e| e.starts_with("device.authorization_path")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.contains("must all differ")),
        "{errs:?}"
    );
    let errs = errors(&GOOD.replace("http://localhost:8080/", "ftp://localhost"));
    assert!(errs.iter().any(|e| e.starts_with("public_url")), "{errs:?}");
    assert!(errors("[1, 2]").iter().any(|e| e.contains("mapping")));
    assert!(errors("listen: [").iter().any(|e| e.contains("YAML")));
}

#[test]
fn redis_store() {
    let yaml = format!(
            "{GOOD}store:\n  backend: redis\n  redis:\n    url: redis://:${{TV_APP_SECRET}}@127.0.0.1:6379/2\n"
        );
    let c = Config::from_yaml(&yaml, &env).unwrap();
    let Backend::Redis(r) = &c.store.backend else {
        panic!("not redis: {:?}", c.store.backend)
    };
    assert_eq!(r.url.expose(), "redis://:s3cret@127.0.0.1:6379/2");
    assert_eq!(r.key_prefix, "devicegate:");
    assert_eq!(r.pool_size, 4);
    assert_eq!(r.command_timeout, Duration::from_secs(1));
    // The password in the URL never shows in debug output.
    assert!(!format!("{c:?}").contains("s3cret"));

    let bad = |store: &str| errors(&format!("{GOOD}store:\n{store}"));
    let has = |errs: Vec<String>, key: &str, text: &str| {
        assert!(
            errs.iter().any(|e| e.starts_with(key) && e.contains(text)),
            "no error for {key} containing '{text}' in {errs:#?}"
        );
        // Errors describe the URL but never repeat its password.
        assert!(!errs.iter().any(|e| e.contains("hunter2")), "{errs:?}");
    };
    has(bad("  backend: redis\n"), "store.redis.url", "required");
    has(
        bad("  backend: memory\n  redis:\n    url: redis://x\n"),
        "store.redis",
        "only used with",
    );
    has(
        bad("  backend: redis\n  redis:\n    url: http://:hunter2@x\n"),
        "store.redis.url",
        "unsupported scheme 'http'",
    );
    has(
        bad("  backend: redis\n  redis:\n    url: redis://:hunter2@\n"),
        "store.redis.url",
        "",
    );
    let errs = bad(
            "  backend: redis\n  redis:\n    url: redis://h\n    key_prefix: ''\n    pool_size: 0\n    command_timeout_ms: 5\n    db: 1\n",
        );
    has(errs.clone(), "store", "unknown field `db`");
    let errs = bad(
            "  backend: redis\n  redis:\n    url: redis://h\n    key_prefix: ''\n    pool_size: 0\n    command_timeout_ms: 5\n",
        );
    has(errs.clone(), "store.redis.key_prefix", "non-empty");
    has(errs.clone(), "store.redis.pool_size", "between 1 and 64");
    has(errs, "store.redis.command_timeout_ms", "between 10");
    let ca = |url: &str, file: &str| {
        bad(&format!(
            "  backend: redis\n  redis:\n    url: {url}\n    ca_file: {file}\n"
        ))
    };
    has(
        ca("redis://h", "/etc/hostname"),
        "store.redis.ca_file",
        "only used with a rediss://",
    );
    has(
        ca("rediss://h", "/nonexistent.pem"),
        "store.redis.ca_file",
        "cannot read /nonexistent.pem",
    );
    has(
        ca("rediss://h", "/etc/hostname"),
        "store.redis.ca_file",
        "no PEM CERTIFICATE",
    );
}

#[test]
fn redis_sentinel_and_cluster_modes() {
    let load = |redis: &str| {
        let yaml = format!("{GOOD}store:\n  backend: redis\n  redis:\n{redis}");
        match Config::from_yaml(&yaml, &env).map(|c| c.store.backend) {
            Ok(Backend::Redis(r)) => Ok(r),
            Ok(other) => panic!("not redis: {other:?}"),
            Err(e) => Err(e.0.iter().map(|e| e.to_string()).collect::<Vec<_>>()),
        }
    };
    let r = load(
        "    mode: sentinel\n    url: rediss://devicegate:${TV_APP_SECRET}@main/3\n    sentinels: [10.0.0.1:26379, 10.0.0.2, '[::1]:26380']\n    sentinel_password: ${TV_APP_SECRET}\n",
    )
    .unwrap();
    assert_eq!(
        r.mode,
        RedisMode::Sentinel {
            master_name: "main".into(),
            sentinels: vec![
                ("10.0.0.1".into(), 26379),
                ("10.0.0.2".into(), 26379),
                ("::1".into(), 26380)
            ],
            username: None,
            password: Some(Secret::new("s3cret".into())),
        }
    );
    let described = Backend::Redis(r.clone()).describe();
    assert!(described.contains("sentinel, TLS: primary 'main' as named by 3 sentinel(s)"));
    assert!(!described.contains("s3cret") && !format!("{r:?}").contains("s3cret"));

    let r = load(
        "    mode: cluster\n    url: redis://devicegate:${TV_APP_SECRET}@10.0.0.5:7000\n    nodes: [10.0.0.6:7001, 10.0.0.7:7002]\n",
    )
    .unwrap();
    assert_eq!(
        r.mode,
        RedisMode::Cluster {
            nodes: vec![("10.0.0.6".into(), 7001), ("10.0.0.7".into(), 7002)]
        }
    );
    assert_eq!(
        Backend::Redis(r).describe(),
        "redis cluster: seed nodes 10.0.0.5:7000 10.0.0.6:7001 10.0.0.7:7002"
    );
    assert_eq!(
        load("    url: redis://h\n").map(|r| r.mode),
        Ok(RedisMode::Standalone)
    );

    let has = |redis: &str, key: &str, text: &str| {
        let errs = load(redis).expect_err("an error");
        assert!(
            errs.iter().any(|e| e.starts_with(key) && e.contains(text)),
            "no error for {key} containing '{text}' in {errs:#?}"
        );
        assert!(!errs.iter().any(|e| e.contains("hunter2")), "{errs:?}");
    };
    has(
        "    mode: primary\n    url: redis://h\n",
        "store.redis.mode",
        "unknown mode 'primary'",
    );
    has(
        "    mode: sentinel\n    url: redis://:hunter2@main/0\n",
        "store.redis.sentinels",
        "is required",
    );
    has(
        "    mode: sentinel\n    url: redis://:hunter2@main:6379/0\n    sentinels: [a:1]\n",
        "store.redis.url",
        "<master name>",
    );
    has(
        "    mode: sentinel\n    url: unix:///tmp/r.sock\n    sentinels: [a:1]\n",
        "store.redis.url",
        "<master name>",
    );
    has(
        "    mode: sentinel\n    url: redis://m\n    sentinels: ['u:hunter2@a:1', 'a:b']\n",
        "store.redis.sentinels[0]",
        "not host:port",
    );
    has(
        "    mode: sentinel\n    url: redis://m\n    sentinels: ['a:1', 'a:b']\n",
        "store.redis.sentinels[1]",
        "not host:port",
    );
    has(
        "    mode: sentinel\n    url: redis://m\n    sentinels: [a:1]\n    nodes: [b:2]\n",
        "store.redis.nodes",
        "only used with `mode: cluster`",
    );
    has(
        "    url: redis://h\n    sentinel_password: hunter2\n",
        "store.redis.sentinels",
        "only used with `mode: sentinel`",
    );
    has(
        "    url: redis://h\n    nodes: [a:1]\n",
        "store.redis.nodes",
        "only used with `mode: cluster`",
    );
    has(
        "    mode: cluster\n    url: redis://:hunter2@h:7000/2\n",
        "store.redis.url",
        "only database 0",
    );
    has(
        "    mode: cluster\n    url: unix:///r.sock\n",
        "store.redis.url",
        "one node of the cluster",
    );
    has(
        "    mode: cluster\n    url: redis://h:7000\n    nodes: [':7001']\n",
        "store.redis.nodes[0]",
        "not host:port",
    );
    has(
        "    mode: cluster\n    url: redis://h:7000\n    key_prefix: '{dg}:'\n",
        "store.redis.key_prefix",
        "one slot",
    );
}

#[test]
fn bodies_are_capped_at_what_can_be_relayed() {
    // A token-endpoint body is read to see its grant type, then relayed from Pingora's 64 KiB
    // retry buffer: a larger limit used to let refresh requests reach the IdP without a body.
    let errs = errors(&format!("{GOOD}limits:\n  max_body_bytes: 100000\n"));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("limits.max_body_bytes") && e.contains("65536")),
        "{errs:?}"
    );
    assert!(errors(&format!("{GOOD}limits:\n  max_body_bytes: 65536\n")).is_empty());
}

#[test]
fn trusted_proxies_are_cidr_blocks() {
    let c = Config::from_yaml(
        &format!("{GOOD}server:\n  trusted_proxies: [10.0.0.0/8, 127.0.0.1, '2001:db8::/32']\n"),
        &env,
    )
    .unwrap();
    assert_eq!(c.server.trusted_proxies.len(), 3);
    let errs = errors(&format!(
        "{GOOD}server:\n  trusted_proxies: [10.0.0.0/8, 10.1.2.3/8, lb.example]\n"
    ));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("server.trusted_proxies[1]") && e.contains("10.0.0.0/8")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("server.trusted_proxies[2]")),
        "{errs:?}"
    );
}

#[test]
fn env_expansion() {
    let env = |n: &str| (n == "A").then(|| "x".to_string());
    assert_eq!(env::expand_str("a${A}b", &env).unwrap(), "axb");
    assert_eq!(env::expand_str("$${A} $5", &env).unwrap(), "${A} $5");
    assert!(env::expand_str("${B}", &env)
        .unwrap_err()
        .contains("B is not set"));
    assert!(env::expand_str("${A", &env).is_err());
    assert!(env::expand_str("${1A}", &env).is_err());
}

#[test]
fn shipped_configs_validate() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let text = std::fs::read_to_string(&path).unwrap();
            // Shipped examples take secrets from the environment: give every variable a value
            // of the shape its key needs.
            let value = |name: &str| {
                Some(match name {
                    n if n.contains("WEBHOOK") => "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
                    n if n.ends_with("_TOKEN") => "example-token-0123456789abcdef".into(),
                    _ => "example-secret".into(),
                })
            };
            if let Err(e) = Config::from_yaml(&text, &value) {
                panic!("{} does not validate:\n{e}", path.display());
            }
            n += 1;
        }
    }
    assert!(n >= 1, "no config files found in {}", dir.display());
}

#[test]
fn policies_default_per_deployment_and_are_replaced_per_client() {
    let yaml = format!(
        "{GOOD}  - client_id: kiosk\n    proximity: require\n    device_networks: [10.0.0.0/8]\n    require_claims:\n      groups: [lobby]\n      email_verified: [true]\n    refresh_tokens: false\n    max_pending: 5\npolicy:\n  proximity: off\n  approver_networks: [192.0.2.0/24]\n  acr_values: [urn:mfa]\n  max_age: 300\n  verification_uri_complete: false\n"
    );
    let c = Config::from_yaml(&yaml, &env).unwrap();
    let tv = &c.clients["tv-app"].policy;
    // The deployment's defaults, and the built-in ones for what it does not say.
    assert_eq!(tv.proximity, Proximity::Off);
    assert_eq!(
        tv.approver_networks.as_ref().unwrap()[0].to_string(),
        "192.0.2.0/24"
    );
    assert_eq!(tv.acr_values, ["urn:mfa"]);
    assert_eq!(tv.max_age, Some(300));
    assert!(!tv.verification_uri_complete && tv.refresh_tokens);
    assert_eq!(
        (tv.proximity_ipv4_prefix, tv.proximity_ipv6_prefix),
        (24, 64)
    );
    assert!(tv.device_networks.is_none() && tv.max_pending.is_none());
    // The client's own keys replace them; the rest still comes from `policy:`.
    let kiosk = &c.clients["kiosk"].policy;
    assert_eq!(kiosk.proximity, Proximity::Require);
    assert_eq!(kiosk.max_pending, Some(5));
    assert!(!kiosk.refresh_tokens);
    assert_eq!(
        kiosk.require_claims["email_verified"],
        [ClaimValue::Bool(true)]
    );
    assert_eq!(kiosk.acr_values, ["urn:mfa"]);
    assert!(kiosk
        .describe()
        .contains("require_claims: groups one of [\"lobby\"]"));
    assert!(kiosk.describe().contains("device_networks: 10.0.0.0/8"));
    // No policy anywhere: today's behaviour (warn, everything allowed).
    let plain = Config::from_yaml(GOOD, &env).unwrap();
    assert_eq!(plain.clients["tv-app"].policy, Policy::default());
    assert_eq!(Policy::default().proximity, Proximity::Warn);
}

#[test]
fn every_policy_mistake_names_its_key() {
    let yaml = format!(
        "{GOOD}    device_networks: [10.0.0.1/8, nonsense]\n    approver_networks: []\n    proximity: nearby\n    proximity_ipv4_prefix: 40\n    require_claims:\n      groups: []\n      level: [3]\n      nested: {{a: b}}\n    acr_values: []\n    max_pending: 5000\n    max_age: 99999999999\npolicy:\n  proximity: sometimes\n  max_pending: 0\n"
    );
    let errs = errors(&yaml);
    for (key, words) in [
        ("clients[0].device_networks[0]", "bits set past"),
        ("clients[0].device_networks[1]", "not an IP address"),
        ("clients[0].approver_networks", "empty"),
        ("clients[0].proximity", "off, warn or require"),
        ("clients[0].proximity_ipv4_prefix", "between 8 and 32"),
        ("clients[0].require_claims.groups", "no values"),
        ("clients[0].require_claims.level[0]", "quote it"),
        ("clients[0].require_claims.nested", "accepted values"),
        ("clients[0].acr_values", "at least one"),
        ("clients[0].max_pending", "store.max_pending"),
        ("clients[0].max_age", "at most"),
        ("policy.proximity", "off, warn or require"),
        ("policy.max_pending", "at least 1"),
    ] {
        assert!(
            errs.iter()
                .any(|e| e.starts_with(&format!("{key}:")) && e.contains(words)),
            "{key} ({words}) in {errs:?}"
        );
    }
    // An unknown policy key is named like any other.
    let errs = errors(&format!("{GOOD}policy:\n  refresh_token: false\n"));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("policy:") && e.contains("refresh_token")),
        "{errs:?}"
    );
    let errs = errors(&format!("{GOOD}    proximty: warn\n"));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("clients[0]:") && e.contains("proximty")),
        "{errs:?}"
    );
}

#[test]
fn education_and_report_texts_are_checked_per_language() {
    let yaml = format!(
        "{GOOD}ui:\n  education: {{en: Never share codes, DE: x}}\n  report_text: \"\"\n  report_url: javascript:alert(1)\n"
    );
    let errs = errors(&yaml);
    for key in ["ui.education.DE", "ui.report_text", "ui.report_url"] {
        assert!(
            errs.iter().any(|e| e.starts_with(&format!("{key}:"))),
            "{key} in {errs:?}"
        );
    }
    let ok = format!(
        "{GOOD}ui:\n  education: {{en: Never share codes, de: Nie teilen}}\n  report_url: {{en: \"https://sec.example/report\", de: \"mailto:sec@example.test\"}}\n"
    );
    let c = Config::from_yaml(&ok, &env).unwrap();
    assert_eq!(
        c.ui.education.as_ref().unwrap().for_language("de"),
        Some("Nie teilen")
    );
}

#[test]
fn a_discovery_url_elsewhere_is_a_url_or_an_error_naming_its_key() {
    let at = |d: &str| {
        GOOD.replace(
            "  issuer: http://localhost:8080\n",
            &format!("  issuer: http://localhost:8080\n  discovery_url: {d}\n"),
        )
    };
    let c = Config::from_yaml(
        &at("http://localhost:8080/t/B2C_1/v2.0/.well-known/openid-configuration"),
        &env,
    )
    .unwrap();
    assert_eq!(
        c.upstream.discovery_url.unwrap().path(),
        "/t/B2C_1/v2.0/.well-known/openid-configuration"
    );
    for bad in ["not a url", "ftp://x/y", "http://x/y#f"] {
        let errs = errors(&at(&format!("\"{bad}\"")));
        assert!(
            errs.iter()
                .any(|e| e.starts_with("upstream.discovery_url:")),
            "{bad}: {errs:?}"
        );
    }
}

#[test]
fn admin_token_and_webhooks_are_checked_key_by_key() {
    let e = |name: &str| match name {
        "TV_APP_SECRET" => Some("s3cret".to_string()),
        "SHORT" => Some("abc".to_string()),
        "TOKEN" => Some("0123456789abcdef0123456789abcdef".to_string()),
        "HOOK" => Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string()),
        _ => None,
    };
    let with = |extra: &str| {
        let text = format!("{GOOD}{extra}");
        match Config::from_yaml(&text, &e) {
            Ok(c) => Ok(c),
            Err(errs) => Err(errs.0.iter().map(|x| x.to_string()).collect::<Vec<_>>()),
        }
    };
    let c = with(
        "admin:\n  listen: 127.0.0.1:9100\n  token: ${TOKEN}\nevents:\n  webhooks:\n    - url: https://siem.example/h\n      secret: ${HOOK}\n      events: [grant.reported]\n",
    )
    .unwrap();
    assert_eq!(
        c.admin_token.as_ref().map(Secret::expose),
        Some("0123456789abcdef0123456789abcdef")
    );
    assert_eq!(c.events.webhooks.len(), 1);
    assert!(c.events.webhooks[0].wants("grant.reported"));
    assert!(!c.events.webhooks[0].wants("grant.created"));
    // Every event type when `events` is left out, and the defaults.
    let c = with("events:\n  webhooks:\n    - url: http://127.0.0.1:9/h\n      secret: ${HOOK}\n")
        .unwrap();
    assert_eq!(c.events.webhooks[0].events, EVENT_TYPES);
    assert_eq!((c.events.queue_size, c.events.max_attempts), (1000, 5));
    // The secrets never appear in a message or in Debug.
    assert!(!format!("{c:?}").contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));

    let cases: &[(&str, &str)] = &[
        ("admin:\n  listen: 127.0.0.1:9100\n  token: ${SHORT}\n", "admin.token: is shorter than 24"),
        ("admin:\n  listen: 127.0.0.1:9100\n  token: ${MISSING}\n", "admin.token"),
        ("events:\n  webhooks:\n    - url: ftp://x/h\n      secret: ${HOOK}\n", "events.webhooks[0].url: unsupported scheme 'ftp'"),
        ("events:\n  webhooks:\n    - url: https://u:p@x.example/h\n      secret: ${HOOK}\n", "events.webhooks[0].url: must not carry credentials"),
        ("events:\n  webhooks:\n    - url: https://x.example/h\n      secret: not base64!\n", "events.webhooks[0].secret: is not `whsec_`"),
        ("events:\n  webhooks:\n    - url: https://x.example/h\n      secret: whsec_c2hvcnQ=\n", "events.webhooks[0].secret: decodes to 5 bytes"),
        ("events:\n  webhooks:\n    - url: https://x.example/h\n      secret: ${HOOK}\n      events: [grant.stolen]\n", "events.webhooks[0].events: unknown event type 'grant.stolen'"),
        ("events:\n  webhooks:\n    - url: https://x.example/h\n      secret: ${HOOK}\n      events: []\n", "events.webhooks[0].events: is empty"),
        ("events:\n  webhooks:\n    - url: http://x.example/h\n      secret: ${HOOK}\n      ca_file: /etc/hosts\n", "events.webhooks[0].ca_file: is only used with an https:// url"),
        ("events:\n  webhooks:\n    - url: https://x.example/h\n      secret: ${HOOK}\n      ca_file: /nonexistent.pem\n", "events.webhooks[0].ca_file: cannot read"),
        ("events:\n  queue_size: 0\n", "events.queue_size: must be between"),
        ("events:\n  max_attempts: 99\n", "events.max_attempts: must be between"),
        ("events:\n  timeout_ms: 5\n", "events.timeout_ms: must be between"),
        ("events:\n  webhook: []\n", "events"),
    ];
    for (extra, want) in cases {
        let errs = with(extra).err().unwrap_or_default();
        assert!(
            errs.iter().any(|m| m.contains(want)),
            "{extra}: want {want:?} in {errs:?}"
        );
        assert!(
            errs.iter()
                .all(|m| !m.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                    && !m.contains("not base64!")),
            "{errs:?}"
        );
    }
}
