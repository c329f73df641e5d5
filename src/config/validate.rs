//! Checking each section of the file and building its runtime value. Every check pushes an
//! error naming its key and carries on, so one run reports everything.

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use serde_norway::Value;
use url::Url;

use super::file::*;
use super::runtime::*;
use super::{deserialize, ui, Errors};

pub(super) fn parse_socket_addr(
    errs: &mut Errors,
    key: &str,
    s: &str,
    resolve: bool,
) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    let has_port = s
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    if !has_port {
        errs.push(
            key,
            format!("'{s}' is not an address of the form host:port"),
        );
        return None;
    }
    if !resolve {
        errs.push(
            key,
            format!("'{s}' is not an IP address and port, e.g. 127.0.0.1:8080"),
        );
        return None;
    }
    match s.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) => Some(a),
        _ => {
            errs.push(key, format!("cannot resolve '{s}'"));
            None
        }
    }
}

/// An http(s) URL with a host, no query or fragment; the trailing slash removed.
pub(super) fn parse_origin(errs: &mut Errors, key: &str, s: &str) -> Option<Url> {
    let url = match Url::parse(s) {
        Ok(u) => u,
        Err(e) => {
            errs.push(
                key,
                format!("'{s}' is not a URL with a scheme, e.g. https://id.example.com ({e})"),
            );
            return None;
        }
    };
    if url.scheme() != "http" && url.scheme() != "https" {
        errs.push(
            key,
            format!("scheme must be http or https, not '{}'", url.scheme()),
        );
        return None;
    }
    if url.host_str().is_none_or(str::is_empty) {
        errs.push(key, "must have a host");
        return None;
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        errs.push(key, "must not have a query, fragment or user name");
        return None;
    }
    let trimmed = s.trim_end_matches('/');
    Url::parse(trimmed).ok()
}

pub(super) fn validate_upstream(errs: &mut Errors, u: FileUpstream) -> Option<Upstream> {
    let addr = parse_socket_addr(errs, "upstream.address", &u.address, true);
    let issuer = parse_origin(errs, "upstream.issuer", &u.issuer);
    if u.timeout == 0 || u.timeout > 300 {
        errs.push("upstream.timeout", "must be between 1 and 300 seconds");
    }
    if let Some(p) = &u.token_path {
        validate_path(errs, "upstream.token_path", p);
    }
    let ca_file = match u.ca_file {
        Some(_) if !u.tls => {
            errs.push("upstream.ca_file", "is only used with `tls: true`");
            None
        }
        Some(path) => match read_pem(&path, "CERTIFICATE") {
            Ok(pem) => Some((path, pem)),
            Err(e) => {
                errs.push("upstream.ca_file", e);
                None
            }
        },
        None => None,
    };
    let discovery_url = u.discovery_url.as_deref().and_then(|d| {
        match Url::parse(d) {
            Ok(url)
                if matches!(url.scheme(), "http" | "https")
                    && url.host_str().is_some()
                    && url.fragment().is_none()
                    && url.username().is_empty() =>
            {
                Some(url)
            }
            _ => {
                errs.push(
                    "upstream.discovery_url",
                    format!("'{d}' must be an http(s) URL with a host and no fragment, e.g. https://t.b2clogin.com/t.onmicrosoft.com/B2C_1_signin/v2.0/.well-known/openid-configuration"),
                );
                None
            }
        }
    });
    let (addr, issuer) = (addr?, issuer?);
    let sni = issuer.host_str().unwrap_or_default().to_string();
    Some(Upstream {
        address: u.address,
        addr,
        issuer,
        issuer_id: u.issuer.trim().to_string(),
        tls: u.tls,
        sni,
        timeout: Duration::from_secs(u.timeout),
        token_path: u.token_path,
        ca_file,
        discovery_url,
    })
}

pub(super) fn validate_path(errs: &mut Errors, key: &str, p: &str) {
    let ok = p.starts_with('/')
        && p.len() > 1
        && !p.contains(['?', '#', '%', ' '])
        && !p.split('/').any(|seg| seg == "." || seg == "..")
        && !p.ends_with('/');
    if !ok {
        errs.push(
            key,
            format!("'{p}' must be an absolute path like /device/code, without a trailing slash, query, dot segments or escapes"),
        );
    }
}

pub(super) fn validate_device(errs: &mut Errors, d: FileDevice) -> Option<Device> {
    let before = errs.0.len();
    validate_path(errs, "device.authorization_path", &d.authorization_path);
    validate_path(errs, "device.verification_path", &d.verification_path);
    validate_path(errs, "device.callback_path", &d.callback_path);
    for (i, p) in d.extra_authorization_paths.iter().enumerate() {
        validate_path(errs, &format!("device.extra_authorization_paths[{i}]"), p);
    }
    let qr = format!("{}/qr", d.verification_path.trim_end_matches('/'));
    let paths: Vec<&String> = [
        &d.authorization_path,
        &d.verification_path,
        &d.callback_path,
        &qr,
    ]
    .into_iter()
    .chain(&d.extra_authorization_paths)
    .collect();
    if paths.iter().collect::<HashSet<_>>().len() != paths.len() {
        errs.push(
            "device",
            "authorization_path, extra_authorization_paths, verification_path, callback_path and {verification_path}/qr must all differ",
        );
    }
    if !(1..=86_400).contains(&d.expires_in) {
        errs.push(
            "device.expires_in",
            "must be between 1 and 86400 seconds (RFC 8628 suggests minutes, e.g. 600)",
        );
    }
    if !(1..=60).contains(&d.interval) {
        errs.push("device.interval", "must be between 1 and 60 seconds");
    }
    (errs.0.len() == before).then_some(Device {
        authorization_path: d.authorization_path,
        extra_authorization_paths: d.extra_authorization_paths,
        verification_path: d.verification_path,
        callback_path: d.callback_path,
        expires_in: d.expires_in,
        interval: d.interval,
    })
}

pub(super) fn validate_store(errs: &mut Errors, s: FileStore) -> Option<StoreConfig> {
    let before = errs.0.len();
    let backend = match (s.backend.as_str(), s.redis) {
        ("memory", None) => Some(Backend::Memory),
        ("memory", Some(_)) => {
            errs.push(
                "store.redis",
                "is only used with `backend: redis`: set the backend or remove this section",
            );
            None
        }
        ("redis", Some(r)) => validate_redis(errs, r).map(Backend::Redis),
        ("redis", None) => {
            errs.push(
                "store.redis.url",
                "is required with `backend: redis` (e.g. redis://127.0.0.1:6379/0)",
            );
            None
        }
        (other, _) => {
            errs.push(
                "store.backend",
                format!("unknown backend '{other}', expected: memory or redis"),
            );
            None
        }
    };
    if s.max_pending == 0 {
        errs.push("store.max_pending", "must be at least 1");
    }
    (errs.0.len() == before).then_some(StoreConfig {
        backend: backend?,
        max_pending: s.max_pending,
    })
}

pub(super) fn validate_redis(errs: &mut Errors, r: FileRedis) -> Option<Redis> {
    let before = errs.0.len();
    let tls = r.url.starts_with("rediss://");
    let mode = validate_redis_mode(errs, &r);
    if let Some(RedisMode::Cluster { .. }) = &mode {
        if r.key_prefix.contains(['{', '}']) {
            errs.push(
                "store.redis.key_prefix",
                "must not hold `{` or `}` with mode: cluster: a hash tag in the prefix would put \
                 every key in one slot, on one node",
            );
        }
    }
    if r.key_prefix.is_empty() || r.key_prefix.chars().any(char::is_whitespace) {
        errs.push(
            "store.redis.key_prefix",
            "must be non-empty and without spaces (e.g. `devicegate:`)",
        );
    }
    if !(1..=64).contains(&r.pool_size) {
        errs.push("store.redis.pool_size", "must be between 1 and 64");
    }
    if !(10..=60_000).contains(&r.command_timeout_ms) {
        errs.push(
            "store.redis.command_timeout_ms",
            "must be between 10 and 60000 milliseconds",
        );
    }
    let ca_pem = match r.ca_file {
        Some(_) if !tls => {
            errs.push("store.redis.ca_file", "is only used with a rediss:// URL");
            None
        }
        Some(path) => read_pem(&path, "CERTIFICATE")
            .map_err(|e| errs.push("store.redis.ca_file", e))
            .ok(),
        None => None,
    };
    (errs.0.len() == before).then(|| Redis {
        mode: mode.unwrap_or(RedisMode::Standalone),
        url: Secret::new(r.url),
        key_prefix: r.key_prefix,
        pool_size: r.pool_size,
        command_timeout: Duration::from_millis(r.command_timeout_ms),
        ca_pem,
    })
}

/// The most of a request body Pingora can relay after devicegate has read it (its retry buffer).
pub const MAX_RELAYED_BODY: usize = 64 * 1024;

pub(super) fn validate_limits(errs: &mut Errors, l: Limits) -> Option<Limits> {
    let before = errs.0.len();
    if l.code_failures_per_ip == 0 {
        errs.push(
            "limits.code_failures_per_ip",
            "must be at least 1: the user-code brute-force limit cannot be turned off",
        );
    }
    if l.code_failures_global_per_minute == 0 {
        errs.push(
            "limits.code_failures_global_per_minute",
            "must be at least 1: the user-code brute-force limit cannot be turned off",
        );
    }
    if !(60..=86_400).contains(&l.code_failures_window_seconds) {
        errs.push(
            "limits.code_failures_window_seconds",
            "must be between 60 and 86400",
        );
    }
    // A POST to the token endpoint is read to tell a device-code poll from other grants, and
    // Pingora keeps at most 64 KiB of what was read to relay it: a larger body would reach the
    // IdP as its headers only.
    if !(1024..=MAX_RELAYED_BODY).contains(&l.max_body_bytes) {
        errs.push(
            "limits.max_body_bytes",
            format!("must be between 1024 and {MAX_RELAYED_BODY}: a larger token-endpoint body cannot be relayed once read"),
        );
    }
    if !(256..=64 * 1024).contains(&l.max_query_bytes) {
        errs.push("limits.max_query_bytes", "must be between 256 and 65536");
    }
    if !(1024..=1024 * 1024).contains(&l.max_header_bytes) {
        errs.push(
            "limits.max_header_bytes",
            "must be between 1024 and 1048576",
        );
    }
    (errs.0.len() == before).then_some(l)
}

/// `store.redis.mode` with `url` and the keys that go with the mode. The URL may carry a
/// password: errors describe it but never repeat it.
fn validate_redis_mode(errs: &mut Errors, r: &FileRedis) -> Option<RedisMode> {
    let url = match Url::parse(&r.url) {
        Ok(u) => u,
        Err(e) => {
            errs.push("store.redis.url", format!("not a URL: {e}"));
            return None;
        }
    };
    let scheme = url.scheme();
    let network = matches!(scheme, "redis" | "rediss");
    let only = |errs: &mut Errors, key: &str, set: bool, mode: &str| {
        if set {
            errs.push(key, format!("is only used with `mode: {mode}`"));
        }
    };
    let sentinel_keys =
        !r.sentinels.is_empty() || r.sentinel_username.is_some() || r.sentinel_password.is_some();
    match r.mode.as_str() {
        "standalone" => {
            only(errs, "store.redis.nodes", !r.nodes.is_empty(), "cluster");
            only(errs, "store.redis.sentinels", sentinel_keys, "sentinel");
            if network && url.host_str().is_none() {
                errs.push("store.redis.url", "has no host");
            } else if !matches!(scheme, "redis" | "rediss" | "unix" | "redis+unix") {
                errs.push(
                    "store.redis.url",
                    format!(
                        "unsupported scheme '{scheme}', expected redis://, rediss:// (TLS) or unix://"
                    ),
                );
            } else if redis::Client::open(r.url.as_str()).is_err() {
                errs.push(
                    "store.redis.url",
                    "is not a valid Redis URL (expected redis://[user:password@]host[:port][/db])",
                );
            }
            Some(RedisMode::Standalone)
        }
        "sentinel" => {
            only(errs, "store.redis.nodes", !r.nodes.is_empty(), "cluster");
            let master = url.host_str().unwrap_or_default().to_string();
            if !network || master.is_empty() || url.port().is_some() {
                errs.push(
                    "store.redis.url",
                    "with `mode: sentinel` names the primary by its master name, and the \
                     sentinels say where it is: redis[s]://[user:password@]<master name>[/db], \
                     without a port",
                );
            }
            if r.sentinels.is_empty() {
                errs.push(
                    "store.redis.sentinels",
                    "is required with `mode: sentinel`: the sentinels' host:port (three or more, \
                     so that a majority is left when one fails)",
                );
            }
            let sentinels = nodes(errs, "store.redis.sentinels", &r.sentinels, 26379);
            Some(RedisMode::Sentinel {
                master_name: master,
                sentinels,
                username: r.sentinel_username.clone(),
                password: r.sentinel_password.clone().map(Secret::new),
            })
        }
        "cluster" => {
            only(errs, "store.redis.sentinels", sentinel_keys, "sentinel");
            if !network || url.host_str().is_none() {
                errs.push(
                    "store.redis.url",
                    "with `mode: cluster` is one node of the cluster: \
                     redis[s]://[user:password@]host:port",
                );
            } else if !matches!(url.path(), "" | "/" | "/0") {
                errs.push(
                    "store.redis.url",
                    "selects a database, but a Redis Cluster has only database 0",
                );
            }
            let nodes = nodes(errs, "store.redis.nodes", &r.nodes, 6379);
            Some(RedisMode::Cluster { nodes })
        }
        other => {
            errs.push(
                "store.redis.mode",
                format!("unknown mode '{other}', expected: standalone, sentinel or cluster"),
            );
            None
        }
    }
}

/// `host:port` addresses (a bare host gets `default_port`).
fn nodes(errs: &mut Errors, key: &str, list: &[String], default_port: u16) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let parsed = Url::parse(&format!("redis://{entry}"))
            .ok()
            .filter(|u| {
                u.username().is_empty() && u.password().is_none() && matches!(u.path(), "" | "/")
            })
            .and_then(|u| {
                let host = u.host_str()?.trim_matches(['[', ']']).to_string();
                Some((host, u.port().unwrap_or(default_port)))
            });
        match parsed {
            Some(node) => out.push(node),
            // Not repeated: a misplaced `user:password@` would be echoed.
            None => errs.push(
                &format!("{key}[{i}]"),
                "is not host:port (credentials belong in store.redis.url, or for sentinels in \
                 sentinel_username and sentinel_password)",
            ),
        }
    }
    out
}

/// Reads a PEM file holding at least one `-----BEGIN {label}` block (a label ending in it, such
/// as `PRIVATE KEY` for `RSA PRIVATE KEY`, counts).
pub(super) fn read_pem(path: &str, label: &str) -> Result<Vec<u8>, String> {
    let pem = read_small_file(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let text = String::from_utf8_lossy(&pem);
    let found = text.split("-----BEGIN ").skip(1).any(|block| {
        block
            .split("-----")
            .next()
            .is_some_and(|l| l.ends_with(label))
    });
    if found {
        Ok(pem)
    } else {
        Err(format!("{path} holds no PEM {label}"))
    }
}

pub(super) fn validate_listen_tls(errs: &mut Errors, t: FileListenTls) -> Option<ListenTls> {
    let listen = parse_socket_addr(errs, "listen_tls.listen", &t.listen, false);
    let cert =
        read_pem(&t.cert_file, "CERTIFICATE").map_err(|e| errs.push("listen_tls.cert_file", e));
    let key = read_pem(&t.key_file, "PRIVATE KEY").map_err(|e| errs.push("listen_tls.key_file", e));
    match (listen, cert, key) {
        (Some(listen), Ok(_), Ok(_)) => Some(ListenTls {
            listen,
            cert_file: t.cert_file,
            key_file: t.key_file,
        }),
        _ => None,
    }
}

/// Reads a file of at most 1 MiB (a CA bundle), so a path such as `/dev/zero` fails instead of
/// filling memory.
pub(super) fn read_small_file(path: &str) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    const MAX: u64 = 1024 * 1024;
    let mut data = Vec::new();
    std::fs::File::open(path)?
        .take(MAX + 1)
        .read_to_end(&mut data)?;
    if data.len() as u64 > MAX {
        return Err(std::io::Error::other("larger than 1 MiB"));
    }
    Ok(data)
}

pub(super) fn validate_server(errs: &mut Errors, s: FileServer) -> Option<Server> {
    let before = errs.0.len();
    if !(1..=256).contains(&s.threads) {
        errs.push("server.threads", "must be between 1 and 256");
    }
    // At shutdown and at a zero-downtime upgrade, requests in flight (and connections accepted
    // just before the listener closed) are cut off when the grace period ends: 0 would drop
    // them every time.
    if !(1..=3600).contains(&s.grace_period_seconds) {
        errs.push(
            "server.grace_period_seconds",
            "must be between 1 and 3600: requests in flight are cut off when it ends",
        );
    }
    let mut trusted_proxies = Vec::new();
    for (i, c) in s.trusted_proxies.iter().enumerate() {
        match crate::net::Cidr::parse(c) {
            Ok(c) => trusted_proxies.push(c),
            Err(e) => errs.push(&format!("server.trusted_proxies[{i}]"), e),
        }
    }
    (errs.0.len() == before).then_some(Server {
        threads: s.threads,
        grace_period_seconds: s.grace_period_seconds,
        graceful_shutdown_timeout_seconds: s.graceful_shutdown_timeout_seconds,
        upgrade_sock: s.upgrade_sock,
        trusted_proxies,
    })
}

pub(super) fn validate_clients(
    errs: &mut Errors,
    v: Option<Value>,
    public_url: Option<&Url>,
    base: &super::Policy,
    max_pending: Option<u64>,
) -> BTreeMap<String, Client> {
    let mut out = BTreeMap::new();
    let list = match v {
        Some(Value::Sequence(list)) if !list.is_empty() => list,
        None | Some(Value::Null) | Some(Value::Sequence(_)) => {
            errs.push("clients", "at least one client is required");
            return out;
        }
        Some(_) => {
            errs.push("clients", "must be a list of clients");
            return out;
        }
    };
    for (i, mut item) in list.into_iter().enumerate() {
        let key = format!("clients[{i}]");
        let policy_keys = super::policy::split_policy(&mut item);
        let policy = deserialize::<super::policy::FilePolicy>(errs, &key, policy_keys)
            .map(|f| super::policy::validate_policy(errs, &key, f, base, max_pending));
        let Some(c) = deserialize::<FileClient>(errs, &key, item) else {
            continue;
        };
        let Some(policy) = policy else {
            continue;
        };
        let id_ok = !c.client_id.is_empty()
            && c.client_id.len() <= 255
            && c.client_id.chars().all(|ch| ch.is_ascii_graphic());
        if !id_ok {
            errs.push(
                &format!("{key}.client_id"),
                "must be 1 to 255 printable ASCII characters without spaces",
            );
            continue;
        }
        if c.allowed_scopes.is_empty()
            || c.allowed_scopes.iter().any(|s| {
                s.is_empty()
                    || !s
                        .chars()
                        .all(|ch| ch.is_ascii_graphic() && ch != '"' && ch != '\\')
            })
        {
            errs.push(
                &format!("{key}.allowed_scopes"),
                "must list at least one scope; scopes are printable ASCII without spaces, quotes or backslashes",
            );
        }
        if c.client_secret.as_deref() == Some("") {
            errs.push(
                &format!("{key}.client_secret"),
                "is empty: remove it for a public client",
            );
        }
        if c.description
            .as_ref()
            .is_some_and(|d| d.trim().is_empty() || d.chars().count() > 300)
        {
            errs.push(&format!("{key}.description"), "must be 1 to 300 characters");
        }
        let logo_url = c
            .logo_url
            .as_deref()
            .and_then(|l| ui::check_image_url(errs, &format!("{key}.logo_url"), l, public_url));
        if out.contains_key(&c.client_id) {
            errs.push(
                &format!("{key}.client_id"),
                format!("duplicate client id '{}'", c.client_id),
            );
            continue;
        }
        out.insert(
            c.client_id.clone(),
            Client {
                name: c
                    .name
                    .filter(|n| !n.trim().is_empty())
                    .unwrap_or_else(|| c.client_id.clone()),
                client_id: c.client_id,
                client_secret: c.client_secret.filter(|s| !s.is_empty()).map(Secret::new),
                allowed_scopes: c.allowed_scopes,
                enabled: c.enabled,
                description: c.description,
                logo_url,
                verification_url: c.verification_url,
                policy,
            },
        );
    }
    out
}
