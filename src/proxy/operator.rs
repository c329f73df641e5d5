//! What operators can do to grants and clients, shared by the admin API ([`super::admin`]) and
//! the upkeep task that runs on every instance ([`Upkeep`]).
//!
//! Each action reports what it did as the gateway's other handlers do: audit events and their
//! webhooks, through [`events::record`], only once the store has changed.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::events::{self, Audit, By, Event, Fact};
use crate::clock::Clock;
use crate::config::{Client, Config};
use crate::device::service::{BrowserError, DeviceService};
use crate::device::switch::{ClientSwitch, REFRESH};
use crate::device::{GrantView, StoreError};
use crate::metrics::Metrics;
use crate::webhooks::Outbox;

/// How often each instance sweeps the store: reports expiries no poll saw, keeps ended grants
/// for the operators' list, and denies grants of disabled clients made meanwhile.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// The most ended-grant ids an instance keeps to avoid writing a grant's view twice; past it
/// the set starts again (a view written twice is harmless).
const REMEMBERED_IDS: usize = 100_000;

/// The operators' actions, and what they need.
pub struct Operator {
    pub config: Arc<Config>,
    pub device: DeviceService,
    pub switch: Arc<ClientSwitch>,
    pub outbox: Arc<Outbox>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    /// Ended grants this instance has already written to the store's list of ended grants.
    remembered: Mutex<HashSet<String>>,
}

/// Why an operator's action on a grant did nothing.
#[derive(Debug)]
pub enum Refused {
    /// No grant (or client) has this id.
    Unknown,
    /// The grant has already ended: its view says how.
    Ended(Box<GrantView>),
    Store(StoreError),
}

impl Operator {
    pub fn new(
        config: Arc<Config>,
        device: DeviceService,
        switch: Arc<ClientSwitch>,
        outbox: Arc<Outbox>,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            config,
            device,
            switch,
            outbox,
            metrics,
            clock,
            remembered: Mutex::default(),
        }
    }

    fn now(&self) -> u64 {
        self.clock.now().secs()
    }

    fn record(&self, audit: Audit, caller: &str) {
        events::record(
            &self.metrics,
            &self.outbox,
            &[Fact::Audit(audit)],
            caller,
            self.now(),
        );
    }

    /// Pending grants (and, with `ended`, those that ended in the last hour), newest first.
    pub async fn grants(&self, ended: bool) -> Result<Vec<GrantView>, StoreError> {
        let now = self.now();
        let store = self.device.store();
        let mut views: Vec<GrantView> = store.list().await?.iter().map(|g| g.view(now)).collect();
        if ended {
            let seen: HashSet<String> = views.iter().map(|v| v.id.clone()).collect();
            let kept = store.remembered(now).await?;
            views.extend(kept.into_iter().filter(|v| !seen.contains(&v.id)));
        }
        views.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        Ok(views)
    }

    /// `POST /grants/{id}/deny`: the device gets `access_denied` at its next poll.
    pub async fn deny(&self, id: &str, caller: &str) -> Result<GrantView, Refused> {
        let now = self.now();
        match self.device.deny_by_operator(id, now).await {
            Ok(g) => {
                self.record(Audit::of(Event::Denied(By::Operator), &g), caller);
                Ok(g.view(now))
            }
            Err(BrowserError::UnknownCode) => Err(Refused::Unknown),
            Err(BrowserError::Store(e)) => Err(Refused::Store(e)),
            Err(BrowserError::Refused(_)) => match self.device.by_id(id).await {
                Ok(Some(g)) => Err(Refused::Ended(Box::new(g.view(now)))),
                Ok(None) => Err(Refused::Unknown),
                Err(e) => Err(Refused::Store(e)),
            },
        }
    }

    /// A configured client.
    pub fn client(&self, client_id: &str) -> Option<&Client> {
        self.config.clients.get(client_id)
    }

    /// `POST /clients/{id}/disable` and `/enable`: sets the switch for every instance sharing
    /// the store; disabling also denies the client's pending grants. How many it denied.
    pub async fn set_enabled(
        &self,
        client_id: &str,
        enabled: bool,
        caller: &str,
    ) -> Result<usize, StoreError> {
        self.device
            .store()
            .set_client_enabled(client_id, enabled)
            .await?;
        self.switch.set(client_id, enabled);
        let event = if enabled {
            "client_enabled"
        } else {
            "client_disabled"
        };
        tracing::warn!(target: "audit", event, by = "operator", client_id, client_ip = caller);
        if enabled {
            return Ok(0);
        }
        self.deny_pending_of(client_id, caller).await
    }

    /// Denies every pending grant of `client_id`.
    async fn deny_pending_of(&self, client_id: &str, caller: &str) -> Result<usize, StoreError> {
        let now = self.now();
        let mut denied = 0;
        for g in self.device.store().list().await? {
            if g.client_id != client_id || !g.is_pending(now) {
                continue;
            }
            match self.deny(&g.id, caller).await {
                Ok(_) => denied += 1,
                Err(Refused::Store(e)) => return Err(e),
                // It ended meanwhile.
                Err(_) => {}
            }
        }
        Ok(denied)
    }

    /// Pending grants of each client (`GET /clients`).
    pub async fn pending_by_client(
        &self,
    ) -> Result<std::collections::HashMap<String, usize>, StoreError> {
        let now = self.now();
        let mut counts = std::collections::HashMap::new();
        for g in self.device.store().list().await? {
            if g.is_pending(now) {
                *counts.entry(g.client_id).or_insert(0) += 1;
            }
        }
        Ok(counts)
    }

    /// Reads the switch again from the store.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let states = self.device.store().client_states().await?;
        self.switch.replace(states);
        Ok(())
    }

    /// One sweep of the store (see [`SWEEP_EVERY`]).
    pub async fn sweep(&self) -> Result<(), StoreError> {
        let now = self.now();
        let store = self.device.store();
        for g in store.list().await? {
            if g.status_name(now) == "expired" && !g.expiry_reported {
                // Once, by whichever instance (or poll) gets there first.
                if let Some(g) = self.device.report_expiry(&g.id, now).await? {
                    self.record(Audit::of(Event::Expired, &g), "");
                }
            }
            if g.is_pending(now) {
                let disabled = self
                    .client(&g.client_id)
                    .is_some_and(|c| !self.switch.enabled(c));
                if disabled {
                    let _ = self.deny(&g.id, "").await;
                }
                continue;
            }
            let first = self
                .remembered
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(g.id.clone());
            if first {
                if let Err(e) = store.remember(&g.view(now), now).await {
                    self.forget(&g.id);
                    return Err(e);
                }
            }
        }
        // Bounded: the ids of grants the store no longer holds are not needed.
        let mut remembered = self
            .remembered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if remembered.len() > REMEMBERED_IDS {
            remembered.clear();
        }
        Ok(())
    }

    fn forget(&self, id: &str) {
        self.remembered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }
}

/// The upkeep task of every instance: the switch read again every [`REFRESH`], and the store
/// swept every [`SWEEP_EVERY`].
pub struct Upkeep(pub Arc<Operator>);

#[async_trait]
impl BackgroundService for Upkeep {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let every = (SWEEP_EVERY.as_millis() / REFRESH.as_millis()).max(1) as u64;
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            if let Err(e) = self.0.refresh().await {
                tracing::debug!(error = %e, "the client switch was not read again");
            }
            n += 1;
            if n.is_multiple_of(every) {
                if let Err(e) = self.0.sweep().await {
                    tracing::debug!(error = %e, "the store sweep did not finish");
                }
            }
        }
    }
}
