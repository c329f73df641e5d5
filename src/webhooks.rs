//! Security events to webhooks (`events.webhooks`), signed by the Standard Webhooks scheme.
//!
//! Each receiver has its own bounded queue and one sender task, on a thread of its own
//! (`devicegate-webhooks`), so a slow or dead receiver never delays a request: [`Outbox::send`]
//! only tries to queue, and a full queue drops the event, counts it
//! (`devicegate_webhook_events_total{outcome="dropped"}`) and logs it. A delivery that fails
//! (a refused connection, a timeout, a status other than 2xx) is tried again after 1 s, 2 s,
//! 4 s… up to `events.max_attempts` in all, with the same id and signature, so receivers can
//! drop duplicates by `webhook-id`.
//!
//! Each request carries `webhook-id`, `webhook-timestamp` (Unix seconds) and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with the
//! decoded `whsec_` secret. The body is `{"type", "timestamp", "data"}`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::{rngs::OsRng, RngCore};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::config::{Events, Webhook};
use crate::metrics::Metrics;

/// One signed event, ready to send to one receiver.
#[derive(Debug, Clone)]
pub struct Signed {
    pub id: String,
    pub timestamp: u64,
    pub signature: String,
    pub body: String,
}

/// Signs `body` for `key` (the decoded secret) as Standard Webhooks does.
pub fn sign(key: &[u8], id: &str, timestamp: u64, body: &str) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        // HMAC takes keys of any length: this arm is never taken.
        Err(_) => return String::new(),
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The body of an event: its type, when (RFC 3339, UTC), and what it is about.
pub fn body(kind: &str, timestamp: u64, data: &Value) -> String {
    let when = chrono::DateTime::from_timestamp(i64::try_from(timestamp).unwrap_or(0), 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    json!({"type": kind, "timestamp": when, "data": data}).to_string()
}

struct Receiver {
    /// The receiver's position in `events.webhooks`, its metric label.
    label: String,
    hook: Webhook,
    /// The HMAC key, decoded once.
    key: Vec<u8>,
    queue: mpsc::Sender<Arc<Signed>>,
    /// Events dropped since the last log line about drops.
    dropped: AtomicU64,
    /// When (Unix seconds) a drop was last logged.
    logged_at: AtomicU64,
}

/// Where security events are queued for the receivers that want them.
pub struct Outbox {
    receivers: Vec<Receiver>,
    metrics: Arc<Metrics>,
    /// When each throttled key last let an event through ([`Outbox::first_in`]).
    throttled: std::sync::Mutex<std::collections::HashMap<&'static str, u64>>,
}

/// Seconds between two log lines about dropped events of one receiver.
const DROP_LOG_EVERY: u64 = 10;

impl Outbox {
    /// No receivers: sending does nothing.
    pub fn none(metrics: Arc<Metrics>) -> Self {
        Self {
            receivers: Vec::new(),
            metrics,
            throttled: Default::default(),
        }
    }

    /// Starts the sender thread for the configured receivers (none when there are none).
    pub fn start(events: &Events, metrics: Arc<Metrics>) -> Result<Self, String> {
        if events.webhooks.is_empty() {
            return Ok(Self::none(metrics));
        }
        let mut receivers = Vec::new();
        let mut workers = Vec::new();
        for (i, hook) in events.webhooks.iter().enumerate() {
            let (tx, rx) = mpsc::channel(events.queue_size);
            let mut client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(events.timeout)
                .connect_timeout(events.timeout)
                .user_agent(concat!("devicegate/", env!("CARGO_PKG_VERSION")));
            if let Some(pem) = &hook.ca_pem {
                // Only the operator's CA: not the system roots as well.
                client = client.tls_built_in_root_certs(false);
                for cert in reqwest::Certificate::from_pem_bundle(pem)
                    .map_err(|e| format!("events.webhooks[{i}].ca_file: {e}"))?
                {
                    client = client.add_root_certificate(cert);
                }
            }
            let client = client
                .build()
                .map_err(|e| format!("events.webhooks[{i}]: {e}"))?;
            let worker = Worker {
                label: i.to_string(),
                url: hook.url.clone(),
                client,
                attempts: events.max_attempts,
                metrics: metrics.clone(),
            };
            workers.push((worker, rx));
            receivers.push(Receiver {
                label: i.to_string(),
                // Checked at load time (config::events): valid base64 of 24 to 64 bytes.
                key: STANDARD.decode(hook.key.expose()).unwrap_or_default(),
                hook: hook.clone(),
                queue: tx,
                dropped: AtomicU64::new(0),
                logged_at: AtomicU64::new(0),
            });
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("events: cannot start the webhook sender: {e}"))?;
        std::thread::Builder::new()
            .name("devicegate-webhooks".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let tasks: Vec<_> = workers
                        .into_iter()
                        .map(|(w, rx)| tokio::spawn(w.run(rx)))
                        .collect();
                    for t in tasks {
                        let _ = t.await;
                    }
                })
            })
            .map_err(|e| format!("events: cannot start the webhook sender: {e}"))?;
        Ok(Self {
            receivers,
            metrics,
            throttled: Default::default(),
        })
    }

    /// Whether any receiver wants events of `kind` (so callers can skip building them).
    pub fn wants(&self, kind: &str) -> bool {
        self.receivers.iter().any(|r| r.hook.wants(kind))
    }

    /// True for the first call with `key` in each `every` seconds: events that would come in
    /// floods (`limit.tripped`) are sent once per window.
    pub fn first_in(&self, key: &'static str, every: u64, now: u64) -> bool {
        let mut last = self
            .throttled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match last.get(key) {
            Some(at) if now < at.saturating_add(every) => false,
            _ => {
                last.insert(key, now);
                true
            }
        }
    }

    /// Queues an event of `kind` for every receiver that wants it; never waits.
    pub fn send(&self, kind: &str, data: &Value, now: u64) {
        let mut body_text = None;
        for r in self.receivers.iter().filter(|r| r.hook.wants(kind)) {
            let body = body_text.get_or_insert_with(|| body(kind, now, data));
            let id = message_id();
            let signed = Signed {
                signature: sign(&r.key, &id, now, body),
                id,
                timestamp: now,
                body: body.clone(),
            };
            if r.queue.try_send(Arc::new(signed)).is_err() {
                self.metrics.webhook_events.inc(&r.label, "dropped");
                let n = r.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                let last = r.logged_at.load(Ordering::Relaxed);
                if now >= last + DROP_LOG_EVERY
                    && r.logged_at
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    r.dropped.store(0, Ordering::Relaxed);
                    tracing::warn!(
                        webhook = %r.label,
                        receiver = %r.hook.url.origin().ascii_serialization(),
                        dropped = n,
                        event = kind,
                        "webhook queue full: events dropped (events.queue_size)"
                    );
                }
            }
        }
    }
}

/// `msg_` and 16 random bytes, as Standard Webhooks ids look.
fn message_id() -> String {
    let mut raw = [0u8; 16];
    OsRng.fill_bytes(&mut raw);
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    format!("msg_{hex}")
}

/// Sends one receiver's events, one at a time, in order.
struct Worker {
    label: String,
    url: url::Url,
    client: reqwest::Client,
    attempts: u32,
    metrics: Arc<Metrics>,
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Arc<Signed>>) {
        while let Some(event) = rx.recv().await {
            self.deliver(&event).await;
        }
    }

    async fn deliver(&self, event: &Signed) {
        let mut wait = Duration::from_secs(1);
        for attempt in 1..=self.attempts {
            let sent = self
                .client
                .post(self.url.clone())
                .header("content-type", "application/json")
                .header("webhook-id", &event.id)
                .header("webhook-timestamp", event.timestamp.to_string())
                .header("webhook-signature", &event.signature)
                .body(event.body.clone())
                .send()
                .await;
            let error = match sent {
                Ok(r) if r.status().is_success() => {
                    self.metrics.webhook_events.inc(&self.label, "delivered");
                    return;
                }
                Ok(r) => format!("answered {}", r.status().as_u16()),
                Err(e) => describe(&e),
            };
            if attempt == self.attempts {
                self.metrics.webhook_events.inc(&self.label, "failed");
                tracing::warn!(webhook = %self.label, id = %event.id, attempts = attempt, error, "webhook event not delivered");
                return;
            }
            self.metrics.webhook_events.inc(&self.label, "retried");
            tracing::debug!(webhook = %self.label, id = %event.id, attempt, error, "webhook attempt failed; retrying");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(60));
        }
    }
}

/// A send error with its causes (the TLS verification failure, the refused connection),
/// without the URL.
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks specification's own example: secret, id, timestamp, body and the
    /// signature it gives.
    #[test]
    fn signs_the_specifications_example() {
        let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn the_body_names_type_time_and_data() {
        let b = body("grant.reported", 1_700_000_000, &json!({"id": "g1"}));
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["type"], "grant.reported");
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(v["data"]["id"], "g1");
    }
}
