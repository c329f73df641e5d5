//! The embedded store: one moka cache of grants that expires entries by itself, and two small
//! indexes (user code, grant id) that lose their entries when moka evicts the grant.
//!
//! Memory is what limits a single instance (a million pending grants is a plausible flood), so
//! a grant is kept compactly: its JSON in one allocation (the same form the Redis store keeps),
//! and every key is 16 bytes of the SHA-256 of the string it stands for. Each grant sits behind
//! its own mutex, so [`Store::update`] is atomic per grant and never blocks other grants.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use moka::future::Cache;
use rand::{rngs::OsRng, RngCore};
use sha2::{Digest, Sha256};

use super::grant::{Grant, GrantView};
use super::store::{Key, Store, StoreError, REMEMBER_MAX, REMEMBER_SECS};

/// A fixed-size stand-in for a key string, 16 bytes whatever its length. The keys the gateway
/// makes are random already and are used as they are: a device-code hash (hex SHA-256) gives
/// its first 16 bytes, a grant id (base64url of 16 random bytes) its bytes, a user code (8
/// letters) its letters. Any other string (tests) is replaced by 128 bits of its SHA-256. The
/// first byte tells the forms apart, so they cannot meet.
type Key16 = [u8; 16];

fn key16(s: &str) -> Key16 {
    let mut k = [0u8; 16];
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        k[0] = 1;
        for (i, pair) in s.as_bytes()[..30].chunks(2).enumerate() {
            let hex = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
            k[i + 1] = hex(pair[0]) << 4 | hex(pair[1]);
        }
        return k;
    }
    if s.len() == 22 {
        if let Ok(raw) = URL_SAFE_NO_PAD.decode(s) {
            k[0] = 2;
            k[1..].copy_from_slice(&raw[..15]);
            return k;
        }
    }
    if s.len() == 8 {
        k[0] = 3;
        k[1..9].copy_from_slice(s.as_bytes());
        return k;
    }
    let digest = Sha256::digest(s.as_bytes());
    k.copy_from_slice(&digest[..16]);
    k[0] = 0;
    k
}

/// One stored grant.
struct Slot {
    user_code: Key16,
    id: Key16,
    /// The grant as JSON.
    json: Mutex<Box<[u8]>>,
}

impl Slot {
    fn read(&self) -> Result<Grant, StoreError> {
        let json = self.json.lock().unwrap_or_else(PoisonError::into_inner);
        decode(&json)
    }
}

fn decode(json: &[u8]) -> Result<Grant, StoreError> {
    serde_json::from_slice(json)
        .map_err(|e| StoreError::Unavailable(format!("a stored grant does not parse: {e}")))
}

fn encode(grant: &Grant) -> Result<Box<[u8]>, StoreError> {
    serde_json::to_vec(grant)
        .map(Vec::into_boxed_slice)
        .map_err(|e| StoreError::Unavailable(format!("a grant does not serialize: {e}")))
}

/// An index to the grants' primary keys (device-code hashes).
type Index = Arc<Mutex<HashMap<Key16, Key16>>>;

fn lock(index: &Index) -> std::sync::MutexGuard<'_, HashMap<Key16, Key16>> {
    index.lock().unwrap_or_else(PoisonError::into_inner)
}

/// In-process grant storage for a single gateway instance.
pub struct MemoryStore {
    /// Grants by their device-code hash.
    grants: Cache<Key16, Arc<Slot>>,
    by_user_code: Index,
    by_id: Index,
    /// Live grants, kept exactly (moka's own count is eventually consistent).
    live: Arc<AtomicU64>,
    max_pending: u64,
    /// Only this process uses the store, so its secret is new at every start.
    secret: [u8; 32],
    /// Limit counters: spent events per key and window. Bounded: a flood of distinct keys
    /// evicts old counters instead of growing memory.
    counters: moka::sync::Cache<String, Arc<Mutex<Window>>>,
    /// Slot sets ([`Store::admit`]): member → until when it holds its slot.
    slots: moka::sync::Cache<String, Arc<Mutex<HashMap<String, u64>>>>,
    /// Ended grants' views by id, with when each was written ([`Store::remember`]).
    ended: Mutex<HashMap<String, (GrantView, u64)>>,
    /// The operators' run-time client states.
    clients: Mutex<HashMap<String, bool>>,
}

/// One limit window: opened at the first event.
struct Window {
    start: u64,
    count: u32,
}

/// Most limit counters kept at once.
const MAX_COUNTERS: u64 = 100_000;

impl MemoryStore {
    /// A store keeping each grant `retain_for` after it is written, at most `max_pending` at once.
    pub fn new(retain_for: Duration, max_pending: u64) -> Self {
        let live = Arc::new(AtomicU64::new(0));
        let by_user_code = Index::default();
        let by_id = Index::default();
        let (on_evict, users, ids) = (live.clone(), by_user_code.clone(), by_id.clone());
        let grants = Cache::builder()
            .time_to_live(retain_for)
            .eviction_listener(move |key: Arc<Key16>, slot: Arc<Slot>, _cause| {
                on_evict.fetch_sub(1, Ordering::AcqRel);
                // Only if they still point here: a user code can be drawn again by a newer grant
                // once this one expired.
                for (index, k) in [(&users, slot.user_code), (&ids, slot.id)] {
                    let mut map = lock(index);
                    if map.get(&k) == Some(&*key) {
                        map.remove(&k);
                    }
                }
            })
            .build();
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut secret);
        Self {
            secret,
            counters: moka::sync::Cache::builder()
                .max_capacity(MAX_COUNTERS)
                // No window is longer than a day (limits.code_failures_window_seconds).
                .time_to_live(Duration::from_secs(86_400 + 60))
                .build(),
            // A set unused for longer than any grant lives (a day) holds only expired slots.
            slots: moka::sync::Cache::builder()
                .max_capacity(MAX_COUNTERS)
                .time_to_idle(Duration::from_secs(86_400 + 60))
                .build(),
            grants,
            by_user_code,
            by_id,
            live,
            max_pending,
            ended: Mutex::default(),
            clients: Mutex::default(),
        }
    }

    /// Takes one of the `max_pending` slots, if one is free.
    fn reserve(&self) -> bool {
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_pending).then_some(n + 1)
            })
            .is_ok()
    }

    fn primary(&self, key: Key<'_>) -> Option<Key16> {
        match key {
            Key::DeviceCodeHash(h) => Some(key16(h)),
            Key::Id(id) => lock(&self.by_id).get(&key16(id)).copied(),
            Key::UserCode(c) => lock(&self.by_user_code).get(&key16(c)).copied(),
        }
    }

    async fn slot(&self, key: Key<'_>) -> Option<Arc<Slot>> {
        let primary = self.primary(key)?;
        self.grants.get(&primary).await
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn insert(&self, grant: &Grant) -> Result<(), StoreError> {
        let json = encode(grant)?;
        // Reserve a slot first so concurrent inserts cannot overshoot max_pending.
        if !self.reserve() {
            // moka evicts expired entries only as the cache is used: when only device requests
            // arrive, nothing else would ever free the slots of grants long gone.
            self.grants.run_pending_tasks().await;
            if !self.reserve() {
                return Err(StoreError::Full);
            }
        }
        let primary = key16(&grant.device_code_hash);
        let slot = Arc::new(Slot {
            user_code: key16(&grant.user_code),
            id: key16(&grant.id),
            json: Mutex::new(json),
        });
        {
            // Claiming the user code is atomic: of two grants drawing the same code, one wins.
            // A claim whose grant has expired (not yet evicted) is free to take.
            let mut users = lock(&self.by_user_code);
            if let Some(holder) = users.get(&slot.user_code) {
                if self.grants.contains_key(holder) {
                    drop(users);
                    self.live.fetch_sub(1, Ordering::AcqRel);
                    return Err(StoreError::UserCodeTaken);
                }
            }
            users.insert(slot.user_code, primary);
        }
        lock(&self.by_id).insert(slot.id, primary);
        self.grants.insert(primary, slot).await;
        Ok(())
    }

    async fn get(&self, key: Key<'_>) -> Result<Option<Grant>, StoreError> {
        match self.slot(key).await {
            Some(slot) => slot.read().map(Some),
            None => Ok(None),
        }
    }

    async fn update(
        &self,
        key: Key<'_>,
        change: &mut (dyn for<'g> FnMut(&'g mut Grant) + Send),
    ) -> Result<bool, StoreError> {
        let Some(slot) = self.slot(key).await else {
            return Ok(false);
        };
        let mut json = slot.json.lock().unwrap_or_else(PoisonError::into_inner);
        let mut grant = decode(&json)?;
        change(&mut grant);
        *json = encode(&grant)?;
        Ok(true)
    }

    async fn count(&self) -> Result<u64, StoreError> {
        Ok(self.live.load(Ordering::Acquire))
    }

    async fn shared_secret(&self) -> Result<[u8; 32], StoreError> {
        Ok(self.secret)
    }

    async fn spend(
        &self,
        key: &str,
        max: u32,
        window_secs: u64,
        now: u64,
    ) -> Result<Result<(), u64>, StoreError> {
        let window = window_secs.max(1);
        let counter = self.counters.get_with(key.to_string(), || {
            Arc::new(Mutex::new(Window {
                start: now,
                count: 0,
            }))
        });
        let mut w = counter.lock().unwrap_or_else(PoisonError::into_inner);
        if now >= w.start.saturating_add(window) {
            *w = Window {
                start: now,
                count: 0,
            };
        }
        if w.count >= max {
            return Ok(Err((w.start + window).saturating_sub(now).max(1)));
        }
        w.count += 1;
        Ok(Ok(()))
    }

    async fn refund(&self, key: &str) -> Result<(), StoreError> {
        if let Some(counter) = self.counters.get(key) {
            let mut w = counter.lock().unwrap_or_else(PoisonError::into_inner);
            w.count = w.count.saturating_sub(1);
        }
        Ok(())
    }

    async fn admit(
        &self,
        key: &str,
        member: &str,
        max: u64,
        expires_at: u64,
        now: u64,
    ) -> Result<Result<(), u64>, StoreError> {
        let slots = self
            .slots
            .get_with(key.to_string(), || Arc::new(Mutex::new(HashMap::new())));
        let mut s = slots.lock().unwrap_or_else(PoisonError::into_inner);
        s.retain(|_, until| *until > now);
        if s.len() as u64 >= max && !s.contains_key(member) {
            let first = s.values().min().copied().unwrap_or(now + 1);
            return Ok(Err(first.saturating_sub(now).max(1)));
        }
        s.insert(member.to_string(), expires_at);
        Ok(Ok(()))
    }

    async fn list(&self) -> Result<Vec<Grant>, StoreError> {
        // Expired entries are evicted first, so only stored grants are listed.
        self.grants.run_pending_tasks().await;
        self.grants.iter().map(|(_, slot)| slot.read()).collect()
    }

    async fn remember(&self, view: &GrantView, now: u64) -> Result<(), StoreError> {
        let mut ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
        ended.retain(|_, (_, at)| at.saturating_add(REMEMBER_SECS) >= now);
        ended.insert(view.id.clone(), (view.clone(), now));
        if ended.len() as u64 > REMEMBER_MAX {
            if let Some(oldest) = ended
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone())
            {
                ended.remove(&oldest);
            }
        }
        Ok(())
    }

    async fn remembered(&self, now: u64) -> Result<Vec<GrantView>, StoreError> {
        let ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(ended
            .values()
            .filter(|(_, at)| at.saturating_add(REMEMBER_SECS) >= now)
            .map(|(v, _)| v.clone())
            .collect())
    }

    async fn set_client_enabled(&self, client_id: &str, enabled: bool) -> Result<(), StoreError> {
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(client_id.to_string(), enabled);
        Ok(())
    }

    async fn client_states(&self) -> Result<Vec<(String, bool)>, StoreError> {
        let clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(clients.iter().map(|(k, v)| (k.clone(), *v)).collect())
    }

    async fn release(&self, key: &str, member: &str) -> Result<(), StoreError> {
        if let Some(slots) = self.slots.get(key) {
            slots
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(member);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_of_the_gateways_own_codes_are_their_bytes_and_never_meet() {
        let hash = crate::device::code::hash_device_code("dc");
        let codes = crate::device::code::new_codes();
        let keys = [
            key16(&hash),
            key16(&codes.id),
            key16(&codes.user_code),
            key16("hash1"),
        ];
        assert_eq!(keys[0][0], 1);
        assert_eq!(keys[1][0], 2);
        assert_eq!(keys[2][0], 3);
        assert_eq!(keys[3][0], 0);
        assert_eq!(&keys[2][1..9], codes.user_code.as_bytes());
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), 4);
        assert_ne!(
            key16(&hash),
            key16(&crate::device::code::hash_device_code("dd"))
        );
    }

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
        assert!(lock(&store.by_user_code).is_empty() && lock(&store.by_id).is_empty());
        store.insert(&g).await.unwrap();
    }

    #[tokio::test]
    async fn a_full_store_frees_the_slots_of_expired_grants_by_itself() {
        // Only inserts arrive (no poll, no lookup of a live grant): the store used to answer
        // Full for ever, since nothing made moka run its evictions.
        let store = MemoryStore::new(Duration::from_millis(50), 2);
        let numbered = |n: u8| {
            let mut g = crate::device::grant::tests::grant(0);
            g.id = format!("id{n}");
            g.device_code_hash = format!("hash{n}");
            g.user_code = format!("CODE000{n}");
            g
        };
        store.insert(&numbered(1)).await.unwrap();
        store.insert(&numbered(2)).await.unwrap();
        assert_eq!(store.insert(&numbered(3)).await, Err(StoreError::Full));
        tokio::time::sleep(Duration::from_millis(120)).await;
        store.insert(&numbered(3)).await.unwrap();
        assert_eq!(store.count().await.unwrap(), 1);
    }
}
