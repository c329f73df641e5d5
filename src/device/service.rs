//! The device-flow operations the HTTP layer calls: issue codes (§3.1, §3.2), answer polls
//! (§3.4, §3.5), and the browser side's approve / deny / callback transitions. Each takes `now`
//! (seconds since the Unix epoch) so tests drive time by hand.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::code;
use super::grant::{grown_interval, Grant, GrantView, Login, Refusal, Status, TokenSet};
use super::store::{Key, Store, StoreError};
use crate::clock::Time;
use crate::error::OAuthError;

/// Extra seconds a grant stays stored after it expires, so a late poll learns `expired_token`
/// (§3.5) instead of `invalid_grant`.
pub const EXPIRED_GRACE_SECS: u64 = 300;

/// Lifetime settings of new grants.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Seconds a grant lives (`expires_in`).
    pub expires_in: u64,
    /// Minimum polling interval in seconds (`interval`).
    pub interval: u64,
}

/// Where a device authorization request came from, as the consent page shows it (§5.4).
#[derive(Debug, Clone, Default)]
pub struct Requester {
    pub ip: Option<String>,
    /// The first product of the User-Agent, e.g. `curl/8.5.0`.
    pub software: Option<String>,
}

impl Requester {
    /// The first product token of a User-Agent header (RFC 9110 §10.1.5), printable ASCII and at
    /// most 64 characters: enough to recognise the software without echoing a fingerprint.
    pub fn software_from_user_agent(user_agent: Option<&str>) -> Option<String> {
        let product: String = user_agent?
            .split_whitespace()
            .next()?
            .chars()
            .filter(char::is_ascii_graphic)
            .take(64)
            .collect();
        (!product.is_empty()).then_some(product)
    }
}

/// What the device authorization endpoint returns (§3.2), before it is written as JSON.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The grant's id (for logs; never the device code).
    pub id: String,
    pub device_code: String,
    /// Canonical form (no dash); shown as `XXXX-XXXX`.
    pub user_code: String,
    pub expires_in: u64,
    pub interval: u64,
    /// The new grant as operators see it.
    pub view: GrantView,
}

/// What one poll found.
#[derive(Debug)]
pub struct Polled {
    /// The grant's id, when the device code named one.
    pub grant: Option<String>,
    /// Who approved it, when this poll took the tokens.
    pub subject: Option<String>,
    pub result: Result<TokenSet, OAuthError>,
    /// The grant after the poll, as operators see it.
    pub view: Option<GrantView>,
    /// This poll is the first look at the grant since it expired (reported once).
    pub first_expiry: bool,
}

/// Result of the browser side looking up or acting on a grant.
#[derive(Debug, Clone, PartialEq)]
pub enum BrowserError {
    /// No grant has this user code (never issued, or long expired).
    UnknownCode,
    /// The grant exists but cannot take this action.
    Refused(Refusal),
    /// The store could not answer.
    Store(StoreError),
}

impl From<StoreError> for BrowserError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// Device-flow operations over a [`Store`].
#[derive(Clone)]
pub struct DeviceService {
    store: Arc<dyn Store>,
    timing: Timing,
    gate: PollGate,
}

/// What this instance last told a device that is still waiting.
#[derive(Debug, Clone)]
struct Waiting {
    grant_id: String,
    client_id: String,
    /// When it last polled, to the millisecond: two polls 20 ms apart are too fast, even
    /// when a second boundary falls between them.
    last_poll: Time,
    interval: u64,
}

/// The instance-local memory of waiting devices, so polls that come faster than the configured
/// interval are answered `slow_down` here, with the same growth the grant would apply (§3.5),
/// and cost the store nothing: a device hammering the token endpoint reaches the store once per
/// interval at most.
///
/// The gate holds back only polls faster than the *configured* interval, not the grown one:
/// clients that add less than the 5 s §3.5 asks for after `slow_down` (oidc-agent adds 1 s)
/// would otherwise be held off forever, even once their tokens are waiting. Polls between the
/// two reach the grant, which answers `slow_down` itself, or delivers approved tokens at once.
///
/// Entries are shared and changed in place, so a held-back poll allocates nothing.
#[derive(Clone)]
struct PollGate(moka::sync::Cache<String, Arc<Mutex<Waiting>>>);

impl PollGate {
    fn new(capacity: u64, ttl: Duration) -> Self {
        Self(
            moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
        )
    }

    /// `slow_down` (and the grant id) when this device polls again within `base` seconds.
    fn too_fast(
        &self,
        hash: &str,
        client_id: &str,
        base: u64,
        now: Time,
    ) -> Option<(String, OAuthError)> {
        let entry = self.0.get(hash)?;
        let mut w = entry.lock().unwrap_or_else(PoisonError::into_inner);
        let since = now.millis().saturating_sub(w.last_poll.millis());
        // Another client's poll goes to the store, which answers invalid_grant.
        if w.client_id != client_id || since >= base.saturating_mul(1000) {
            return None;
        }
        w.interval = grown_interval(w.interval);
        w.last_poll = now;
        Some((
            w.grant_id.clone(),
            OAuthError::SlowDown {
                interval: w.interval,
            },
        ))
    }

    /// Remembers what the store told a waiting device.
    fn waiting(&self, hash: String, w: Waiting) {
        match self.0.get(&hash) {
            Some(entry) => *entry.lock().unwrap_or_else(PoisonError::into_inner) = w,
            None => self.0.insert(hash, Arc::new(Mutex::new(w))),
        }
    }
}

/// Maps a store failure to what a device is told: a full or unreachable store is temporary.
fn store_to_oauth(e: StoreError) -> OAuthError {
    match e {
        StoreError::Full => OAuthError::TemporarilyUnavailable(
            "too many pending device authorizations, try again later".into(),
        ),
        other => {
            // The detail (addresses, driver messages) is for the operator's log, not the device.
            tracing::warn!(error = %other, "grant store failed");
            OAuthError::TemporarilyUnavailable(
                "the gateway cannot reach its grant store, try again later".into(),
            )
        }
    }
}

/// Resolves the `scope` parameter against the client's allowed scopes (RFC 6749 §3.3). When the
/// parameter is absent or empty, the client gets all of its allowed scopes.
pub fn resolve_scopes(
    requested: Option<&str>,
    allowed: &[String],
) -> Result<Vec<String>, OAuthError> {
    let mut scopes: Vec<String> = Vec::new();
    for s in requested.unwrap_or("").split(' ').filter(|s| !s.is_empty()) {
        if !allowed.iter().any(|a| a == s) {
            return Err(OAuthError::InvalidScope(format!(
                "scope '{s}' is not allowed for this client"
            )));
        }
        if !scopes.iter().any(|x| x == s) {
            scopes.push(s.to_string());
        }
    }
    if scopes.is_empty() {
        scopes = allowed.to_vec();
    }
    Ok(scopes)
}

impl DeviceService {
    /// `max_pending` bounds the instance-local memory of waiting devices too.
    pub fn new(store: Arc<dyn Store>, timing: Timing, max_pending: u64) -> Self {
        let ttl = Duration::from_secs(timing.expires_in + EXPIRED_GRACE_SECS);
        Self {
            store,
            timing,
            gate: PollGate::new(max_pending, ttl),
        }
    }

    /// Issues a new grant for an already authenticated client (§3.1, §3.2). The lifetime counts
    /// from `now` rounded up to the next whole second, so the device always gets at least the
    /// `expires_in` it is told.
    pub async fn authorize(
        &self,
        client_id: &str,
        scopes: Vec<String>,
        requester: Requester,
        now: Time,
    ) -> Result<Issued, OAuthError> {
        let code::NewCodes {
            device_code,
            id,
            user_code,
        } = code::new_codes();
        let mut grant = Grant {
            id,
            device_code_hash: code::hash_device_code(&device_code),
            user_code,
            client_id: client_id.to_string(),
            scopes,
            requester_ip: requester.ip,
            requester_software: requester.software,
            created_at: now.secs(),
            expires_at: now.secs_ceil() + self.timing.expires_in,
            interval: self.timing.interval,
            last_poll: None,
            status: Status::Pending,
            subject: None,
            ended_at: None,
            denied_by: None,
            expiry_reported: false,
        };
        // User codes are short (§5.1), so a live one may be drawn twice: draw again.
        for _ in 0..8 {
            match self.store.insert(&grant).await {
                Ok(()) => {
                    return Ok(Issued {
                        view: grant.view(now.secs()),
                        id: grant.id,
                        device_code,
                        user_code: grant.user_code,
                        expires_in: self.timing.expires_in,
                        interval: self.timing.interval,
                    });
                }
                Err(StoreError::UserCodeTaken) => grant.user_code = code::new_user_code(),
                Err(e) => return Err(store_to_oauth(e)),
            }
        }
        Err(OAuthError::TemporarilyUnavailable(
            "could not allocate a unique user code".into(),
        ))
    }

    /// Answers one poll of the token endpoint (§3.4, §3.5).
    pub async fn poll(
        &self,
        client_id: &str,
        device_code: &str,
        now: u64,
    ) -> Result<TokenSet, OAuthError> {
        self.poll_grant(client_id, device_code, Time::from_secs(now))
            .await
            .result
    }

    /// [`Self::poll`], also naming the grant polled when there is one, and who approved it
    /// when the tokens are delivered (for the audit log).
    pub async fn poll_grant(&self, client_id: &str, device_code: &str, at: Time) -> Polled {
        let now = at.secs();
        let hash = code::hash_device_code(device_code);
        let base = self.timing.interval;
        if let Some((grant_id, slow_down)) = self.gate.too_fast(&hash, client_id, base, at) {
            return Polled {
                grant: Some(grant_id),
                subject: None,
                result: Err(slow_down),
                view: None,
                first_expiry: false,
            };
        }
        let mut outcome = None;
        let mut interval = self.timing.interval;
        let mut grant_id = None;
        let mut subject = None;
        let mut view = None;
        let mut first_expiry = false;
        let found = self
            .store
            .update(Key::DeviceCodeHash(&hash), &mut |g| {
                subject = match &g.status {
                    Status::Approved { subject, .. } => subject.clone(),
                    _ => None,
                };
                let polled = g.poll(client_id, now);
                let polled_ok = polled.is_ok();
                // Set on every run of the closure: an optimistic store may run it again.
                first_expiry = polled == Err(OAuthError::ExpiredToken) && g.report_expiry(now);
                outcome = Some(polled);
                interval = g.interval;
                grant_id = Some(g.id.clone());
                // Only for the events that carry it, once per grant: not for every pending poll.
                view = (polled_ok || first_expiry).then(|| g.view(now));
            })
            .await;
        let result = match (found, outcome) {
            (Err(e), _) => Err(store_to_oauth(e)),
            (Ok(true), Some(result)) => result,
            _ => Err(OAuthError::InvalidGrant(
                "unknown or expired device code".into(),
            )),
        };
        match (&result, &grant_id) {
            (Err(OAuthError::AuthorizationPending | OAuthError::SlowDown { .. }), Some(id)) => {
                self.gate.waiting(
                    hash,
                    Waiting {
                        grant_id: id.clone(),
                        client_id: client_id.to_string(),
                        last_poll: at,
                        interval,
                    },
                );
            }
            _ => self.gate.0.invalidate(&hash),
        }
        Polled {
            subject: subject.filter(|_| result.is_ok()),
            grant: grant_id,
            result,
            view,
            first_expiry,
        }
    }

    /// The grant behind a canonical user code, if the browser may still act on it.
    pub async fn lookup(&self, user_code: &str, now: u64) -> Result<Grant, BrowserError> {
        let grant = self
            .store
            .get(Key::UserCode(user_code))
            .await?
            .ok_or(BrowserError::UnknownCode)?;
        grant.check_actionable(now).map_err(BrowserError::Refused)?;
        Ok(grant)
    }

    /// Applies a browser-side transition to the grant behind `key`.
    pub async fn transition(
        &self,
        key: Key<'_>,
        mut change: impl FnMut(&mut Grant) -> Result<(), Refusal> + Send,
    ) -> Result<Grant, BrowserError> {
        let mut outcome = None;
        let found = self
            .store
            .update(key, &mut |g| outcome = Some(change(g).map(|()| g.clone())))
            .await?;
        match outcome {
            Some(result) if found => result.map_err(BrowserError::Refused),
            _ => Err(BrowserError::UnknownCode),
        }
    }

    /// Approve pressed: records the login secrets and returns the updated grant.
    pub async fn begin_login(
        &self,
        user_code: &str,
        login: Login,
        now: u64,
    ) -> Result<Grant, BrowserError> {
        self.transition(Key::UserCode(user_code), |g| {
            g.begin_login(login.clone(), now)
        })
        .await
    }

    /// Deny pressed.
    pub async fn deny(&self, user_code: &str, now: u64) -> Result<Grant, BrowserError> {
        self.transition(Key::UserCode(user_code), |g| {
            g.deny("user", "the user denied the request", now)
        })
        .await
    }

    /// The grant named by an upstream `state`'s id part.
    pub async fn by_id(&self, id: &str) -> Result<Option<Grant>, StoreError> {
        self.store.get(Key::Id(id)).await
    }

    /// The secret every instance sharing the store knows (see [`Store::shared_secret`]).
    pub async fn shared_secret(&self) -> Result<[u8; 32], StoreError> {
        self.store.shared_secret().await
    }

    /// Number of stored grants.
    pub async fn stored(&self) -> Result<u64, StoreError> {
        self.store.count().await
    }

    /// The store, for the operators' calls (listing, the client switch).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// An operator stops the grant `id`.
    pub async fn deny_by_operator(&self, id: &str, now: u64) -> Result<Grant, BrowserError> {
        self.transition(Key::Id(id), |g| {
            g.deny_by_operator("an operator stopped this device login", now)
        })
        .await
    }

    /// Marks the grant `id` as reported expired, if no one has: true for the one caller that
    /// did (of every instance's).
    pub async fn report_expiry(&self, id: &str, now: u64) -> Result<Option<Grant>, StoreError> {
        let mut reported = None;
        self.store
            .update(Key::Id(id), &mut |g| {
                reported = g.report_expiry(now).then(|| g.clone());
            })
            .await?;
        Ok(reported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::grant::MAX_POLL_INTERVAL;
    use crate::device::memory::MemoryStore;

    fn service(max: u64) -> DeviceService {
        service_with(600, 5, max)
    }

    fn service_with(expires_in: u64, interval: u64, max: u64) -> DeviceService {
        let store = Arc::new(MemoryStore::new(Duration::from_secs(900), max));
        DeviceService::new(
            store,
            Timing {
                expires_in,
                interval,
            },
            max,
        )
    }

    #[test]
    fn software_is_the_first_product_only() {
        let sw = Requester::software_from_user_agent;
        assert_eq!(sw(Some("curl/8.5.0")).as_deref(), Some("curl/8.5.0"));
        assert_eq!(
            sw(Some("Mozilla/5.0 (X11; Linux x86_64) Chrome/120")).as_deref(),
            Some("Mozilla/5.0")
        );
        assert_eq!(sw(Some("   ")), None);
        assert_eq!(sw(None), None);
        assert_eq!(sw(Some(&"x".repeat(500))).map(|s| s.len()), Some(64));
        assert_eq!(sw(Some("tv\u{7}\u{e9}/1")).as_deref(), Some("tv/1"));
    }

    #[test]
    fn scopes() {
        let allowed: Vec<String> = ["openid", "profile"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(resolve_scopes(None, &allowed).unwrap(), allowed);
        assert_eq!(resolve_scopes(Some(""), &allowed).unwrap(), allowed);
        assert_eq!(
            resolve_scopes(Some("profile  profile"), &allowed).unwrap(),
            vec!["profile".to_string()]
        );
        assert!(matches!(
            resolve_scopes(Some("openid email"), &allowed),
            Err(OAuthError::InvalidScope(_))
        ));
    }

    #[tokio::test]
    async fn full_flow_through_the_store() {
        let svc = service(10);
        let issued = svc
            .authorize(
                "tv",
                vec!["openid".into()],
                Requester::default(),
                Time::from_secs(100),
            )
            .await
            .unwrap();
        assert_eq!(issued.expires_in, 600);
        assert_eq!(
            svc.poll("tv", &issued.device_code, 100).await,
            Err(OAuthError::AuthorizationPending)
        );
        assert!(matches!(
            svc.poll("tv", "not-a-code", 100).await,
            Err(OAuthError::InvalidGrant(_))
        ));
        let g = svc.lookup(&issued.user_code, 110).await.unwrap();
        assert_eq!(g.client_id, "tv");
        let login = Login {
            state_secret: "s".into(),
            nonce: "n".into(),
            pkce_verifier: "v".into(),
            browser_binding: "b".into(),
            claimed: false,
        };
        let g = svc
            .begin_login(&issued.user_code, login, 111)
            .await
            .unwrap();
        let mut tokens = TokenSet::new();
        tokens.insert("access_token".into(), "AT".into());
        svc.transition(Key::Id(&g.id), |g| {
            g.approve("s", "b", tokens.clone(), None, 112)
        })
        .await
        .unwrap();
        assert_eq!(
            svc.poll("tv", &issued.device_code, 120).await.unwrap(),
            tokens
        );
        assert!(matches!(
            svc.poll("tv", &issued.device_code, 130).await,
            Err(OAuthError::InvalidGrant(_))
        ));
        assert_eq!(
            svc.lookup(&issued.user_code, 131).await,
            Err(BrowserError::Refused(Refusal::AlreadyUsed))
        );
    }

    #[tokio::test]
    async fn polls_faster_than_the_interval_never_reach_the_store() {
        let svc = service(10);
        let issued = svc
            .authorize("tv", vec![], Requester::default(), Time::from_secs(100))
            .await
            .unwrap();
        let stored = || async {
            let hash = code::hash_device_code(&issued.device_code);
            let g = svc
                .store
                .get(Key::DeviceCodeHash(&hash))
                .await
                .unwrap()
                .unwrap();
            (g.last_poll, g.interval)
        };
        assert_eq!(
            svc.poll("tv", &issued.device_code, 100).await,
            Err(OAuthError::AuthorizationPending)
        );
        assert_eq!(stored().await, (Some(100), 5));
        // Too fast: slow_down with the §3.5 growth, answered without touching the grant.
        for (at, interval) in [(101, 10), (102, 15), (104, 20)] {
            assert_eq!(
                svc.poll("tv", &issued.device_code, at).await,
                Err(OAuthError::SlowDown { interval })
            );
        }
        assert_eq!(stored().await, (Some(100), 5));
        // Another client's poll is the store's to refuse.
        assert!(matches!(
            svc.poll("kiosk", &issued.device_code, 111).await,
            Err(OAuthError::InvalidGrant(_))
        ));
        // Once the grown interval has passed, the poll reaches the store again.
        assert_eq!(
            svc.poll("tv", &issued.device_code, 130).await,
            Err(OAuthError::AuthorizationPending)
        );
        assert_eq!(stored().await, (Some(130), 5));
    }

    #[tokio::test]
    async fn a_client_adding_too_little_after_slow_down_still_gets_its_tokens() {
        let svc = service(10);
        let issued = svc
            .authorize("tv", vec![], Requester::default(), Time::from_secs(100))
            .await
            .unwrap();
        let code = &issued.device_code;
        assert_eq!(
            svc.poll("tv", code, 100).await,
            Err(OAuthError::AuthorizationPending)
        );
        assert_eq!(
            svc.poll("tv", code, 101).await,
            Err(OAuthError::SlowDown { interval: 10 })
        );
        let hash = code::hash_device_code(code);
        let mut tokens = TokenSet::new();
        tokens.insert("access_token".into(), "AT".into());
        svc.store
            .update(Key::DeviceCodeHash(&hash), &mut |g| {
                g.status = Status::Approved {
                    tokens: tokens.clone(),
                    approved_at: 102,
                    subject: None,
                };
            })
            .await
            .unwrap();
        // oidc-agent adds 1 s, not 5, and polls 6 s later: less than the 10 s it was told,
        // more than the configured 5 s, so the poll reaches the grant and the tokens go out.
        assert_eq!(svc.poll("tv", code, 107).await.unwrap(), tokens);
    }

    #[tokio::test]
    async fn a_grant_lives_at_least_the_lifetime_it_advertised() {
        let svc = service_with(3, 1, 10);
        // Issued at 100.9 s: 2.9 s later (103.8 s) the device must still be waiting. Counted from
        // the creation second cut to 100, it used to expire at 103.0, 2.1 s after issue.
        let issued = svc
            .authorize(
                "tv",
                vec![],
                Requester::default(),
                Time::from_millis(100_900),
            )
            .await
            .unwrap();
        assert_eq!(issued.expires_in, 3);
        let at = |ms: u64| Time::from_millis(ms).secs();
        assert_eq!(
            svc.poll("tv", &issued.device_code, at(103_800)).await,
            Err(OAuthError::AuthorizationPending)
        );
        assert_eq!(
            svc.poll("tv", &issued.device_code, at(104_000)).await,
            Err(OAuthError::ExpiredToken)
        );
    }

    #[tokio::test]
    async fn two_polls_moments_apart_are_too_fast_even_across_a_second_boundary() {
        let svc = service_with(600, 1, 10);
        let issued = svc
            .authorize("tv", vec![], Requester::default(), Time::from_secs(100))
            .await
            .unwrap();
        let poll = |ms| svc.poll_grant("tv", &issued.device_code, Time::from_millis(ms));
        assert_eq!(
            poll(100_990).await.result,
            Err(OAuthError::AuthorizationPending)
        );
        // 20 ms later, in the next second: counted in whole seconds this passed as 1 s apart.
        assert_eq!(
            poll(101_010).await.result,
            Err(OAuthError::SlowDown { interval: 6 })
        );
    }

    #[test]
    fn slow_down_growth_is_capped() {
        assert_eq!(grown_interval(5), 10);
        assert_eq!(grown_interval(58), MAX_POLL_INTERVAL);
        assert_eq!(grown_interval(60), 60);
    }

    #[tokio::test]
    async fn full_store_is_temporarily_unavailable() {
        let svc = service(1);
        svc.authorize("tv", vec![], Requester::default(), Time::from_secs(0))
            .await
            .unwrap();
        let err = svc
            .authorize("tv", vec![], Requester::default(), Time::from_secs(0))
            .await
            .unwrap_err();
        assert_eq!(err.status(), 503);
        assert_eq!(err.code(), "temporarily_unavailable");
    }
}
