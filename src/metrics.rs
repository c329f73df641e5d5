//! Prometheus metrics, served on the admin listener (`admin.rs`).
//!
//! One [`Metrics`] value holds every family in its own registry (no globals), so tests and
//! several gateways in one process do not share counters. Label values are bounded: client ids
//! come from the configuration (anything else is `unknown`), outcomes from fixed lists.
//!
//! Because those lists are known at start-up, every series is made then ([`Counters`],
//! [`PerClient`], [`Timings`]): counting is a scan of a few static strings and an atomic add,
//! with no hashing of labels and no lock on a request path, and every series is exported from
//! the first scrape (at 0), as Prometheus advises. A value outside the lists is still counted,
//! through the family itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::device::{Grant, GrantView, Key, Store, StoreError};
use crate::error::OAuthError;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// A counter family with one label, its series made once for the values it is known to take.
pub struct Counters {
    family: IntCounterVec,
    known: Vec<(Box<str>, IntCounter)>,
}

impl Counters {
    fn new(family: IntCounterVec, values: &[&str]) -> Self {
        let known = values
            .iter()
            .map(|v| (Box::from(*v), family.with_label_values(&[*v])))
            .collect();
        Self { family, known }
    }

    /// Counts one, under `value`.
    pub fn inc(&self, value: &str) {
        match self.known.iter().find(|(k, _)| **k == *value) {
            Some((_, c)) => c.inc(),
            None => self.family.with_label_values(&[value]).inc(),
        }
    }
}

/// A counter family labelled by client and one more label, its series made once for each
/// configured client (and `unknown`) and each known value of the other label.
pub struct PerClient {
    family: IntCounterVec,
    clients: std::collections::HashMap<Box<str>, Vec<(&'static str, IntCounter)>>,
}

impl PerClient {
    fn new(family: IntCounterVec, clients: &[&str], values: &[&'static str]) -> Self {
        let clients = clients
            .iter()
            .map(|c| {
                let known = values
                    .iter()
                    .map(|v| (*v, family.with_label_values(&[*c, *v])))
                    .collect();
                (Box::from(*c), known)
            })
            .collect();
        Self { family, clients }
    }

    /// Counts one for `client`, under `value`.
    pub fn inc(&self, client: &str, value: &str) {
        let known = self
            .clients
            .get(client)
            .and_then(|k| k.iter().find(|(v, _)| *v == value));
        match known {
            Some((_, c)) => c.inc(),
            None => self.family.with_label_values(&[client, value]).inc(),
        }
    }
}

/// A histogram family labelled by operation and result (`ok`, `error`), its series made once
/// for each known operation.
pub struct Timings {
    family: HistogramVec,
    known: Vec<(&'static str, [Histogram; 2])>,
}

impl Timings {
    fn new(family: HistogramVec, operations: &[&'static str]) -> Self {
        let known = operations
            .iter()
            .map(|op| {
                let series = [
                    family.with_label_values(&[*op, "ok"]),
                    family.with_label_values(&[*op, "error"]),
                ];
                (*op, series)
            })
            .collect();
        Self { family, known }
    }

    /// Records one timed operation.
    pub fn observe(&self, operation: &str, ok: bool, took: Duration) {
        let secs = took.as_secs_f64();
        match self.known.iter().find(|(k, _)| *k == operation) {
            Some((_, [ok_series, error_series])) => {
                if ok { ok_series } else { error_series }.observe(secs)
            }
            None => self
                .family
                .with_label_values(&[operation, if ok { "ok" } else { "error" }])
                .observe(secs),
        }
    }
}

/// The gateway's metrics.
pub struct Metrics {
    registry: Registry,
    /// Device authorization requests by client and result (`issued` or the OAuth error code).
    pub device_authorizations: PerClient,
    /// Device-code polls by outcome: `delivered`, or the OAuth error code (`authorization_pending`,
    /// `slow_down`, `access_denied`, `expired_token`, `invalid_grant`, ...).
    pub polls: Counters,
    /// Verification-page and login outcomes: `approved`, `denied`, `login_failed`,
    /// `login_retry`, `unknown_code`, `malformed_code`, `refused`.
    pub verifications: Counters,
    /// Requests refused by a limit, by limit (`code_failures`, `device`, `poll`).
    pub rate_limited: Counters,
    /// Requests and approvals a client's policy refused, by client and rule
    /// (`device_networks`, `approver_networks`, `proximity`, `require_claims`, `acr_values`,
    /// `max_age`, `max_pending`).
    pub policy_refusals: PerClient,
    /// Grants a user denied as "I did not start this", by client.
    pub reported: Counters,
    /// Back-channel calls to the IdP by operation (`discovery`, `token`, `jwks`) and result.
    pub upstream_seconds: Timings,
    /// Grant store operations by operation and result.
    pub store_seconds: Timings,
    /// Grants in the store (set at scrape time).
    pub pending_grants: IntGauge,
    /// Security events by webhook (its position in `events.webhooks`) and outcome:
    /// `delivered`, `retried` (an attempt failed and another follows), `failed` (every
    /// attempt failed), `dropped` (the receiver's queue was full).
    pub webhook_events: PerClient,
}

type Result<T> = std::result::Result<T, prometheus::Error>;

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<HistogramVec> {
    let buckets = vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    /// The metrics with no client known in advance (tests): every client's series is made
    /// when first counted.
    pub fn new() -> Result<Self> {
        Self::with_clients(&[])
    }

    /// The metrics of a gateway serving these clients (`unknown` is added).
    pub fn with_clients(clients: &[&str]) -> Result<Self> {
        let mut clients = clients.to_vec();
        clients.push("unknown");
        let mut results = vec!["issued"];
        results.extend_from_slice(OAuthError::CODES);
        let mut outcomes = vec!["delivered"];
        outcomes.extend_from_slice(OAuthError::CODES);
        let r = Registry::new_custom(Some("devicegate".into()), None)?;
        let pending_grants = IntGauge::new("pending_grants", "Grants in the store")?;
        r.register(Box::new(pending_grants.clone()))?;
        Ok(Self {
            device_authorizations: PerClient::new(
                counter(
                    &r,
                    "device_authorizations_total",
                    "Device authorization requests by client and result",
                    &["client_id", "result"],
                )?,
                &clients,
                &results,
            ),
            polls: Counters::new(
                counter(
                    &r,
                    "polls_total",
                    "Device-code polls by outcome",
                    &["outcome"],
                )?,
                &outcomes,
            ),
            verifications: Counters::new(
                counter(
                    &r,
                    "verifications_total",
                    "Verification page and login outcomes",
                    &["outcome"],
                )?,
                &[
                    "approved",
                    "denied",
                    "login_failed",
                    "login_retry",
                    "unknown_code",
                    "malformed_code",
                    "refused",
                ],
            ),
            rate_limited: Counters::new(
                counter(
                    &r,
                    "rate_limited_total",
                    "Requests refused by a limit",
                    &["limit"],
                )?,
                &["code_failures", "device", "poll"],
            ),
            policy_refusals: PerClient::new(
                counter(
                    &r,
                    "policy_refusals_total",
                    "Requests and approvals refused by a client's policy",
                    &["client_id", "rule"],
                )?,
                &clients,
                &[
                    "device_networks",
                    "approver_networks",
                    "proximity",
                    "require_claims",
                    "acr_values",
                    "max_age",
                    "max_pending",
                ],
            ),
            reported: Counters::new(
                counter(
                    &r,
                    "reported_total",
                    "Grants denied as not started by the user (possible phishing)",
                    &["client_id"],
                )?,
                &clients,
            ),
            upstream_seconds: Timings::new(
                histogram(
                    &r,
                    "upstream_request_seconds",
                    "Back-channel calls to the identity provider",
                    &["operation", "result"],
                )?,
                &["discovery", "token", "jwks"],
            ),
            store_seconds: Timings::new(
                histogram(
                    &r,
                    "store_operation_seconds",
                    "Grant store operations",
                    &["operation", "result"],
                )?,
                &[
                    "insert",
                    "get",
                    "update",
                    "count",
                    "shared_secret",
                    "spend",
                    "refund",
                    "admit",
                    "release",
                ],
            ),
            webhook_events: PerClient::new(
                counter(
                    &r,
                    "webhook_events_total",
                    "Security events sent to webhooks, by webhook and outcome",
                    &["webhook", "outcome"],
                )?,
                &[],
                &[],
            ),
            pending_grants,
            registry: r,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// A [`Store`] that times every operation of the store it wraps.
pub struct MeteredStore {
    pub inner: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
}

impl MeteredStore {
    async fn timed<T>(
        &self,
        operation: &str,
        op: impl std::future::Future<Output = std::result::Result<T, StoreError>>,
    ) -> std::result::Result<T, StoreError> {
        let start = Instant::now();
        let r = op.await;
        self.metrics
            .store_seconds
            .observe(operation, r.is_ok(), start.elapsed());
        r
    }
}

#[async_trait]
impl Store for MeteredStore {
    async fn insert(&self, grant: &Grant) -> std::result::Result<(), StoreError> {
        self.timed("insert", self.inner.insert(grant)).await
    }

    async fn get(&self, key: Key<'_>) -> std::result::Result<Option<Grant>, StoreError> {
        self.timed("get", self.inner.get(key)).await
    }

    async fn update(
        &self,
        key: Key<'_>,
        change: &mut (dyn for<'g> FnMut(&'g mut Grant) + Send),
    ) -> std::result::Result<bool, StoreError> {
        self.timed("update", self.inner.update(key, change)).await
    }

    async fn count(&self) -> std::result::Result<u64, StoreError> {
        self.timed("count", self.inner.count()).await
    }

    async fn shared_secret(&self) -> std::result::Result<[u8; 32], StoreError> {
        self.timed("shared_secret", self.inner.shared_secret())
            .await
    }

    async fn spend(
        &self,
        key: &str,
        max: u32,
        window_secs: u64,
        now: u64,
    ) -> std::result::Result<std::result::Result<(), u64>, StoreError> {
        self.timed("spend", self.inner.spend(key, max, window_secs, now))
            .await
    }

    async fn refund(&self, key: &str) -> std::result::Result<(), StoreError> {
        self.timed("refund", self.inner.refund(key)).await
    }

    async fn admit(
        &self,
        key: &str,
        member: &str,
        max: u64,
        expires_at: u64,
        now: u64,
    ) -> std::result::Result<std::result::Result<(), u64>, StoreError> {
        self.timed("admit", self.inner.admit(key, member, max, expires_at, now))
            .await
    }

    async fn release(&self, key: &str, member: &str) -> std::result::Result<(), StoreError> {
        self.timed("release", self.inner.release(key, member)).await
    }

    // The operators' calls are not timed: they are rare, and not what devices wait for.
    async fn list(&self) -> std::result::Result<Vec<Grant>, StoreError> {
        self.inner.list().await
    }

    async fn remember(&self, view: &GrantView, now: u64) -> std::result::Result<(), StoreError> {
        self.inner.remember(view, now).await
    }

    async fn remembered(&self, now: u64) -> std::result::Result<Vec<GrantView>, StoreError> {
        self.inner.remembered(now).await
    }

    async fn set_client_enabled(
        &self,
        client_id: &str,
        enabled: bool,
    ) -> std::result::Result<(), StoreError> {
        self.inner.set_client_enabled(client_id, enabled).await
    }

    async fn client_states(&self) -> std::result::Result<Vec<(String, bool)>, StoreError> {
        self.inner.client_states().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_what_was_counted() {
        let m = Metrics::new().unwrap();
        m.polls.inc("delivered");
        m.store_seconds
            .observe("update", true, Duration::from_millis(2));
        m.pending_grants.set(3);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains("devicegate_polls_total{outcome=\"delivered\"} 1"),
            "{text}"
        );
        assert!(text.contains("devicegate_pending_grants 3"), "{text}");
        assert!(
            text.contains(
                "devicegate_store_operation_seconds_count{operation=\"update\",result=\"ok\"} 1"
            ),
            "{text}"
        );
    }
}
