//! The `Store` trait: where pending grants live.
//!
//! The protocol code only ever calls these methods, so a backend (the embedded moka cache
//! in [`super::memory`], Redis in [`super::redis`]) is swapped without touching it. Changes go through
//! [`Store::update`], a read-modify-write that the backend makes atomic (Dex's
//! `UpdateDeviceToken` style): two polls at once cannot both take the tokens.

use async_trait::async_trait;

use super::grant::{Grant, GrantView};

/// How a grant is looked up.
#[derive(Debug, Clone, Copy)]
pub enum Key<'a> {
    /// The grant id (from the upstream `state`).
    Id(&'a str),
    /// SHA-256 (hex) of the device code (from a poll).
    DeviceCodeHash(&'a str),
    /// Canonical user code (from the verification page).
    UserCode(&'a str),
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// `store.max_pending` grants are live: refuse new ones rather than grow without bound.
    #[error("too many pending device authorizations")]
    Full,
    /// The user code is already held by a live grant; the caller draws another.
    #[error("user code already in use")]
    UserCodeTaken,
    /// The backend cannot answer (network, timeout).
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Storage of grants. Entries disappear by themselves once `retain_for` seconds pass after
/// creation (grant lifetime plus a grace period, so late polls still learn `expired_token`).
#[async_trait]
pub trait Store: Send + Sync {
    /// Adds a new grant, indexed by id, device-code hash and user code.
    async fn insert(&self, grant: &Grant) -> Result<(), StoreError>;

    /// A copy of the grant, if it is still stored.
    async fn get(&self, key: Key<'_>) -> Result<Option<Grant>, StoreError>;

    /// Atomically applies `change` to the stored grant and saves the result. `change` may run
    /// more than once (optimistic backends retry), so it must only touch the grant and its own
    /// captured output. Returns `false` when no grant matches.
    async fn update(
        &self,
        key: Key<'_>,
        change: &mut (dyn for<'g> FnMut(&'g mut Grant) + Send),
    ) -> Result<bool, StoreError>;

    /// How many grants are stored (an upper bound for backends that expire lazily).
    async fn count(&self) -> Result<u64, StoreError>;

    /// A random 32-byte secret, the same for every gateway instance sharing this store: it keys
    /// the browser's CSRF tokens and login bindings, so a login started on one instance can
    /// finish on another (and, with a persistent store, survives a restart).
    async fn shared_secret(&self) -> Result<[u8; 32], StoreError>;

    /// Spends one of the `max` events `key` may have in its current window: a window opens at
    /// the first event and lasts `window_secs` (in Redis, by Redis's clock, the one every
    /// instance shares; in memory, by `now`). Atomic: of any number of concurrent calls, at
    /// most `max` succeed per window. `Ok(Err(secs))`: spent up, for `secs` more seconds.
    async fn spend(
        &self,
        key: &str,
        max: u32,
        window_secs: u64,
        now: u64,
    ) -> Result<Result<(), u64>, StoreError>;

    /// Gives back one event spent in `key`'s current window (an attempt that turned out right).
    async fn refund(&self, key: &str) -> Result<(), StoreError>;

    /// Takes one of the `max` slots of `key` for `member` until `expires_at` (seconds): a slot
    /// is free again once its time has passed by `now`, or when released. Atomic across
    /// instances: of any number of concurrent calls, at most `max` hold a slot at once.
    /// `Ok(Err(secs))`: every slot is taken, the first frees in `secs` seconds.
    async fn admit(
        &self,
        key: &str,
        member: &str,
        max: u64,
        expires_at: u64,
        now: u64,
    ) -> Result<Result<(), u64>, StoreError>;

    /// Frees `member`'s slot of `key`, if it holds one.
    async fn release(&self, key: &str, member: &str) -> Result<(), StoreError>;

    /// Every stored grant (live, or ended and still kept for late polls).
    async fn list(&self) -> Result<Vec<Grant>, StoreError>;

    /// Keeps the view of a grant that ended at `ended_at` for an hour after `now`, so operators
    /// see it once the grant itself is gone. Writing the same grant again replaces it.
    async fn remember(&self, view: &GrantView, now: u64) -> Result<(), StoreError>;

    /// The views [`Store::remember`] still keeps.
    async fn remembered(&self, now: u64) -> Result<Vec<GrantView>, StoreError>;

    /// The operators' run-time kill switch: `client_id` enabled or not, whatever the
    /// configuration says, for every instance sharing the store, until set again. Kept for
    /// good (in Redis, across restarts).
    async fn set_client_enabled(&self, client_id: &str, enabled: bool) -> Result<(), StoreError>;

    /// Every client whose state an operator has set, with that state.
    async fn client_states(&self) -> Result<Vec<(String, bool)>, StoreError>;
}

/// How long [`Store::remember`] keeps an ended grant.
pub const REMEMBER_SECS: u64 = 3600;

/// The most ended grants [`Store::remember`] keeps; the oldest go first.
pub const REMEMBER_MAX: u64 = 10_000;

#[cfg(test)]
pub(crate) mod conformance {
    use super::*;
    use crate::device::grant::{tests::grant, Status};
    use crate::error::OAuthError;
    use std::sync::Arc;
    use std::time::Duration;

    fn numbered(n: u64) -> Grant {
        let mut g = grant(1000);
        g.id = format!("id{n}");
        g.device_code_hash = format!("hash{n}");
        g.user_code = format!("CODE{n:04}");
        g
    }

    /// `make(retain_for, max_pending)` builds a fresh, empty store keeping each grant
    /// `retain_for` and holding at most `max_pending` grants.
    pub(crate) async fn run<S: Store + 'static>(make: impl Fn(Duration, u64) -> S) {
        let long = Duration::from_secs(600);
        let store = make(long, 10);
        let g = numbered(1);
        store.insert(&g).await.unwrap();
        for key in [
            Key::Id("id1"),
            Key::DeviceCodeHash("hash1"),
            Key::UserCode("CODE0001"),
        ] {
            assert_eq!(store.get(key).await.unwrap().as_ref(), Some(&g), "{key:?}");
        }
        assert_eq!(store.get(Key::UserCode("NOPE")).await.unwrap(), None);
        assert_eq!(store.count().await.unwrap(), 1);

        // A second grant may not take a live user code.
        let mut dup = numbered(2);
        dup.user_code = g.user_code.clone();
        assert_eq!(store.insert(&dup).await, Err(StoreError::UserCodeTaken));

        // Updates persist and are visible through every key.
        let found = store
            .update(Key::UserCode("CODE0001"), &mut |g| {
                g.deny("user", "no", 1001).unwrap();
            })
            .await
            .unwrap();
        assert!(found);
        let denied = store
            .get(Key::DeviceCodeHash("hash1"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            denied.status,
            Status::Denied {
                reason: "no".into()
            }
        );
        assert!(!store.update(Key::Id("missing"), &mut |_| {}).await.unwrap());

        // The shared secret is stable and not trivially empty.
        let secret = store.shared_secret().await.unwrap();
        assert_eq!(store.shared_secret().await.unwrap(), secret);
        assert_ne!(secret, [0u8; 32]);

        // Capacity: max_pending grants and no more.
        let store = make(long, 3);
        for n in 0..3 {
            store.insert(&numbered(n)).await.unwrap();
        }
        assert_eq!(store.insert(&numbered(9)).await, Err(StoreError::Full));

        // Expiry: past `retain_for` a grant is gone under every key, and its user code is free.
        let store = make(Duration::from_millis(300), 10);
        store.insert(&numbered(7)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        for key in [
            Key::Id("id7"),
            Key::DeviceCodeHash("hash7"),
            Key::UserCode("CODE0007"),
        ] {
            assert_eq!(store.get(key).await.unwrap(), None, "{key:?}");
            assert!(!store.update(key, &mut |_| {}).await.unwrap(), "{key:?}");
        }
        let mut again = numbered(8);
        again.user_code = "CODE0007".into();
        store.insert(&again).await.unwrap();

        // Single-use delivery under concurrency: many pollers, exactly one gets the tokens.
        let store = Arc::new(make(long, 10));
        store.insert(&numbered(5)).await.unwrap();
        let approved = store
            .update(Key::Id("id5"), &mut |g| {
                g.status = Status::Approved {
                    tokens: serde_json::Map::new(),
                    approved_at: 1000,
                    subject: None,
                }
            })
            .await
            .unwrap();
        assert!(approved);
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut out = None;
                store
                    .update(Key::DeviceCodeHash("hash5"), &mut |g| {
                        out = Some(g.poll("tv", 1001))
                    })
                    .await
                    .unwrap();
                out
            }));
        }
        let mut delivered = 0;
        for t in tasks {
            match t.await.unwrap() {
                Some(Ok(_)) => delivered += 1,
                Some(Err(OAuthError::InvalidGrant(_))) => {}
                other => panic!("unexpected poll result {other:?}"),
            }
        }
        assert_eq!(delivered, 1);

        // Counters: at most `max` spends per window, however many come at once; a refund gives
        // one back; keys are independent; a window ends by itself.
        let store = Arc::new(make(long, 10));
        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store.spend("ip:192.0.2.1", 10, 60, now()).await.unwrap()
            }));
        }
        let mut spent = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(()) => spent += 1,
                Err(secs) => assert!((58..=60).contains(&secs), "{secs}"),
            }
        }
        assert_eq!(spent, 10, "concurrent spends beyond the budget");
        store.refund("ip:192.0.2.1").await.unwrap();
        assert_eq!(
            store.spend("ip:192.0.2.1", 10, 60, now()).await.unwrap(),
            Ok(())
        );
        assert!(store
            .spend("ip:192.0.2.1", 10, 60, now())
            .await
            .unwrap()
            .is_err());
        assert_eq!(
            store.spend("ip:192.0.2.2", 10, 60, now()).await.unwrap(),
            Ok(())
        );
        for _ in 0..2 {
            assert_eq!(store.spend("short", 2, 1, now()).await.unwrap(), Ok(()));
        }
        assert!(store.spend("short", 2, 1, now()).await.unwrap().is_err());
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(store.spend("short", 2, 1, now()).await.unwrap(), Ok(()));
        // A refund never goes below nothing spent.
        for _ in 0..3 {
            store.refund("fresh").await.unwrap();
        }
        for _ in 0..2 {
            assert_eq!(store.spend("fresh", 2, 60, now()).await.unwrap(), Ok(()));
        }
        assert!(store.spend("fresh", 2, 60, now()).await.unwrap().is_err());

        // Slots: at most `max` held at once however many ask together; a slot frees when its
        // time passes or when released; keys are independent.
        let t = now();
        let mut tasks = Vec::new();
        for i in 0..40 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .admit("client:tv", &format!("g{i}"), 5, t + 30 + i, t)
                    .await
                    .unwrap()
            }));
        }
        let mut held = Vec::new();
        for (i, task) in tasks.into_iter().enumerate() {
            match task.await.unwrap() {
                Ok(()) => held.push(i),
                Err(secs) => assert!((1..=70).contains(&secs), "{secs}"),
            }
        }
        assert_eq!(held.len(), 5, "concurrent admissions beyond the slots");
        assert!(store
            .admit("client:tv", "late", 5, t + 60, t)
            .await
            .unwrap()
            .is_err());
        assert_eq!(
            store
                .admit("client:tv2", "other", 5, t + 60, t)
                .await
                .unwrap(),
            Ok(())
        );
        store
            .release("client:tv", &format!("g{}", held[0]))
            .await
            .unwrap();
        store.release("client:tv", "never-admitted").await.unwrap();
        assert_eq!(
            store
                .admit("client:tv", "late", 5, t + 60, t)
                .await
                .unwrap(),
            Ok(())
        );
        assert!(store
            .admit("client:tv", "later", 5, t + 60, t)
            .await
            .unwrap()
            .is_err());
        // Listing, remembering ended grants, and the run-time client switch.
        let store = make(long, 10);
        assert!(store.list().await.unwrap().is_empty());
        for n in 0..3 {
            store.insert(&numbered(n)).await.unwrap();
        }
        let mut ids: Vec<String> = store
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|g| g.id)
            .collect();
        ids.sort();
        assert_eq!(ids, ["id0", "id1", "id2"]);
        let mut ended = numbered(1).view(2000);
        ended.status = "delivered".into();
        ended.ended_at = Some(2000);
        store.remember(&ended, 2000).await.unwrap();
        store.remember(&ended, 2001).await.unwrap();
        let mut other = numbered(2).view(2000);
        other.status = "denied".into();
        store.remember(&other, 2000).await.unwrap();
        let mut kept = store.remembered(2100).await.unwrap();
        kept.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(kept, [ended.clone(), other.clone()]);
        // An hour after it was written, a view is gone.
        let kept = store.remembered(2001 + REMEMBER_SECS + 1).await.unwrap();
        assert!(kept.is_empty(), "{kept:?}");
        assert!(store.client_states().await.unwrap().is_empty());
        store.set_client_enabled("tv", false).await.unwrap();
        store.set_client_enabled("kiosk", false).await.unwrap();
        store.set_client_enabled("kiosk", true).await.unwrap();
        let mut states = store.client_states().await.unwrap();
        states.sort();
        assert_eq!(
            states,
            [("kiosk".to_string(), true), ("tv".to_string(), false)]
        );

        // Past every slot's time, all are free again.
        for i in 0..5 {
            let m = format!("after{i}");
            assert_eq!(
                store
                    .admit("client:tv", &m, 5, t + 200, t + 100)
                    .await
                    .unwrap(),
                Ok(())
            );
        }
    }
}
