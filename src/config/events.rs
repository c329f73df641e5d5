//! The `admin.token` and `events:` sections: the operators' API credential and the webhooks
//! security events go to.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use url::Url;

use super::validate::read_pem;
use super::{Errors, Secret};

/// Every event type a webhook can subscribe to (`events.webhooks[].events`).
pub const EVENT_TYPES: &[&str] = &[
    "grant.created",
    "grant.approved",
    "grant.denied",
    "grant.reported",
    "grant.expired",
    "grant.delivered",
    "limit.tripped",
    "policy.refused",
];

/// The shortest `admin.token` accepted: 128 bits of hex or base64 and more.
pub const MIN_ADMIN_TOKEN: usize = 24;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileEvents {
    #[serde(default)]
    pub(super) webhooks: Vec<FileWebhook>,
    /// Events waiting for each receiver, at most; more are dropped (and counted).
    #[serde(default = "default_queue_size")]
    pub(super) queue_size: usize,
    /// Attempts of one delivery (the first and its retries).
    #[serde(default = "default_max_attempts")]
    pub(super) max_attempts: u32,
    /// Milliseconds one attempt may take, connecting included.
    #[serde(default = "default_timeout_ms")]
    pub(super) timeout_ms: u64,
}

impl Default for FileEvents {
    fn default() -> Self {
        Self {
            webhooks: Vec::new(),
            queue_size: default_queue_size(),
            max_attempts: default_max_attempts(),
            timeout_ms: default_timeout_ms(),
        }
    }
}

fn default_queue_size() -> usize {
    1000
}
fn default_max_attempts() -> u32 {
    5
}
fn default_timeout_ms() -> u64 {
    5000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileWebhook {
    pub(super) url: String,
    pub(super) secret: String,
    /// The event types sent there; all of them when omitted.
    pub(super) events: Option<Vec<String>>,
    /// PEM CA certificates to verify an https:// receiver with, instead of the system roots.
    pub(super) ca_file: Option<String>,
}

/// Where security events go (`events:`).
#[derive(Debug, Clone)]
pub struct Events {
    pub webhooks: Vec<Webhook>,
    pub queue_size: usize,
    pub max_attempts: u32,
    pub timeout: Duration,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            webhooks: Vec::new(),
            queue_size: default_queue_size(),
            max_attempts: default_max_attempts(),
            timeout: Duration::from_millis(default_timeout_ms()),
        }
    }
}

/// One receiver of signed events (Standard Webhooks).
#[derive(Clone)]
pub struct Webhook {
    pub url: Url,
    /// The HMAC key: the base64 after `whsec_`, decoded.
    pub key: Secret,
    pub events: Vec<&'static str>,
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url.origin().ascii_serialization())
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// Whether events of `kind` go to this receiver.
    pub fn wants(&self, kind: &str) -> bool {
        self.events.contains(&kind)
    }
}

/// `admin.token`: the bearer token of the admin API.
pub(super) fn validate_admin_token(errs: &mut Errors, token: Option<String>) -> Option<Secret> {
    let token = token?;
    if token.len() < MIN_ADMIN_TOKEN {
        errs.push(
            "admin.token",
            format!(
                "is shorter than {MIN_ADMIN_TOKEN} characters: use a random token, e.g. \
                 `openssl rand -hex 32`, given as ${{DEVICEGATE_ADMIN_TOKEN}}"
            ),
        );
        return None;
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        errs.push(
            "admin.token",
            "must not contain spaces or control characters",
        );
        return None;
    }
    Some(Secret::new(token))
}

/// The `secret` of a webhook: `whsec_` and base64 (Standard Webhooks), or the base64 alone.
fn webhook_key(errs: &mut Errors, key: &str, secret: &str) -> Option<Secret> {
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    match STANDARD.decode(b64) {
        // The scheme's secrets are 24 to 64 bytes.
        // Kept as its base64 text, decoded when signing.
        Ok(bytes) if (24..=64).contains(&bytes.len()) => Some(Secret::new(b64.to_string())),
        Ok(bytes) => {
            errs.push(
                key,
                format!(
                    "decodes to {} bytes; Standard Webhooks secrets are 24 to 64 random bytes \
                     (e.g. whsec_ followed by `openssl rand -base64 32`)",
                    bytes.len()
                ),
            );
            None
        }
        Err(_) => {
            // Never repeat the value: it is a secret.
            errs.push(
                key,
                "is not `whsec_` followed by base64 (e.g. whsec_ and `openssl rand -base64 32`)",
            );
            None
        }
    }
}

pub(super) fn validate_events(errs: &mut Errors, f: FileEvents) -> Option<Events> {
    let before = errs.0.len();
    if !(1..=1_000_000).contains(&f.queue_size) {
        errs.push("events.queue_size", "must be between 1 and 1000000");
    }
    if !(1..=20).contains(&f.max_attempts) {
        errs.push("events.max_attempts", "must be between 1 and 20");
    }
    if !(100..=60_000).contains(&f.timeout_ms) {
        errs.push(
            "events.timeout_ms",
            "must be between 100 and 60000 milliseconds",
        );
    }
    let mut webhooks = Vec::new();
    for (i, w) in f.webhooks.into_iter().enumerate() {
        let at = |k: &str| format!("events.webhooks[{i}].{k}");
        let url = match Url::parse(&w.url) {
            Ok(u) if !matches!(u.scheme(), "http" | "https") => {
                errs.push(
                    &at("url"),
                    format!(
                        "unsupported scheme '{}', expected https:// or http://",
                        u.scheme()
                    ),
                );
                None
            }
            Ok(u) if u.host_str().is_none() => {
                errs.push(&at("url"), "has no host");
                None
            }
            Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                errs.push(
                    &at("url"),
                    "must not carry credentials: the receiver checks the signature instead",
                );
                None
            }
            Ok(u) => Some(u),
            Err(e) => {
                errs.push(&at("url"), format!("not a URL: {e}"));
                None
            }
        };
        let key = webhook_key(errs, &at("secret"), &w.secret);
        let events = match w.events {
            None => EVENT_TYPES.to_vec(),
            Some(list) if list.is_empty() => {
                errs.push(
                    &at("events"),
                    "is empty: list event types, or omit the key for all of them",
                );
                Vec::new()
            }
            Some(list) => list
                .iter()
                .filter_map(|e| {
                    let known = EVENT_TYPES.iter().find(|t| **t == e.as_str());
                    if known.is_none() {
                        errs.push(
                            &at("events"),
                            format!(
                                "unknown event type '{e}', expected one of: {}",
                                EVENT_TYPES.join(", ")
                            ),
                        );
                    }
                    known.copied()
                })
                .collect(),
        };
        let ca_pem = match (w.ca_file, &url) {
            (Some(_), Some(u)) if u.scheme() != "https" => {
                errs.push(&at("ca_file"), "is only used with an https:// url");
                None
            }
            (Some(path), _) => read_pem(&path, "CERTIFICATE")
                .map_err(|e| errs.push(&at("ca_file"), e))
                .ok(),
            (None, _) => None,
        };
        if let (Some(url), Some(key)) = (url, key) {
            webhooks.push(Webhook {
                url,
                key,
                events,
                ca_pem,
            });
        }
    }
    (errs.0.len() == before).then(|| Events {
        webhooks,
        queue_size: f.queue_size,
        max_attempts: f.max_attempts,
        timeout: Duration::from_millis(f.timeout_ms),
    })
}
