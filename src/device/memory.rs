//! The embedded store: three moka caches (grants by id, and two indexes) that expire entries by
//! themselves. Each grant sits behind its own mutex, so [`Store::update`] is atomic per grant
//! and never blocks other grants.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use moka::future::Cache;
use rand::{rngs::OsRng, RngCore};

use super::grant::Grant;
use super::store::{Key, Store, StoreError};

/// In-process grant storage for a single gateway instance.
pub struct MemoryStore {
    grants: Cache<String, Arc<Mutex<Grant>>>,
    by_user_code: Cache<String, String>,
    by_device_code: Cache<String, String>,
    /// Live grants, kept exactly (moka's own count is eventually consistent).
    live: Arc<AtomicU64>,
    max_pending: u64,
    /// Only this process uses the store, so its secret is new at every start.
    secret: [u8; 32],
}

impl MemoryStore {
    /// A store keeping each grant `retain_for` after it is written, at most `max_pending` at once.
    pub fn new(retain_for: Duration, max_pending: u64) -> Self {
        let live = Arc::new(AtomicU64::new(0));
        let on_evict = live.clone();
        let grants = Cache::builder()
            .time_to_live(retain_for)
            .eviction_listener(move |_k, _v, _cause| {
                on_evict.fetch_sub(1, Ordering::AcqRel);
            })
            .build();
        let index = || Cache::builder().time_to_live(retain_for).build();
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut secret);
        Self {
            secret,
            grants,
            by_user_code: index(),
            by_device_code: index(),
            live,
            max_pending,
        }
    }

    async fn id_for(&self, key: Key<'_>) -> Option<String> {
        match key {
            Key::Id(id) => Some(id.to_string()),
            Key::DeviceCodeHash(h) => self.by_device_code.get(h).await,
            Key::UserCode(c) => self.by_user_code.get(c).await,
        }
    }

    async fn entry(&self, key: Key<'_>) -> Option<Arc<Mutex<Grant>>> {
        let id = self.id_for(key).await?;
        self.grants.get(&id).await
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn insert(&self, grant: &Grant) -> Result<(), StoreError> {
        // Reserve a slot first so concurrent inserts cannot overshoot max_pending.
        let reserved = self
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_pending).then_some(n + 1)
            });
        if reserved.is_err() {
            return Err(StoreError::Full);
        }
        // Claiming the user code is atomic: of two grants drawing the same code, one wins.
        let claim = self
            .by_user_code
            .entry(grant.user_code.clone())
            .or_insert(grant.id.clone())
            .await;
        if !claim.is_fresh() {
            self.live.fetch_sub(1, Ordering::AcqRel);
            return Err(StoreError::UserCodeTaken);
        }
        self.by_device_code
            .insert(grant.device_code_hash.clone(), grant.id.clone())
            .await;
        self.grants
            .insert(grant.id.clone(), Arc::new(Mutex::new(grant.clone())))
            .await;
        Ok(())
    }

    async fn get(&self, key: Key<'_>) -> Result<Option<Grant>, StoreError> {
        Ok(self
            .entry(key)
            .await
            .map(|g| g.lock().unwrap_or_else(PoisonError::into_inner).clone()))
    }

    async fn update(
        &self,
        key: Key<'_>,
        change: &mut (dyn for<'g> FnMut(&'g mut Grant) + Send),
    ) -> Result<bool, StoreError> {
        let Some(entry) = self.entry(key).await else {
            return Ok(false);
        };
        let mut grant = entry.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut grant);
        Ok(true)
    }

    async fn count(&self) -> Result<u64, StoreError> {
        Ok(self.live.load(Ordering::Acquire))
    }

    async fn shared_secret(&self) -> Result<[u8; 32], StoreError> {
        Ok(self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance() {
        super::super::store::conformance::run(MemoryStore::new).await;
    }

    #[tokio::test]
    async fn entries_expire_and_free_their_slot() {
        let store = MemoryStore::new(Duration::from_millis(50), 1);
        let g = crate::device::grant::tests::grant(0);
        store.insert(&g).await.unwrap();
        assert_eq!(store.insert(&g).await, Err(StoreError::Full));
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(store.get(Key::UserCode(&g.user_code)).await.unwrap(), None);
        store.grants.run_pending_tasks().await;
        assert_eq!(store.count().await.unwrap(), 0);
        store.by_user_code.run_pending_tasks().await;
        store.insert(&g).await.unwrap();
    }
}
