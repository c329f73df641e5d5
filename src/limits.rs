//! Rate limits: the brute-force defence of the short user codes (RFC 8628 §5.1) and the
//! flood limits of the device and token endpoints.
//!
//! Every limit is a window counter per key (a client address, a client id, or one global key),
//! kept in the grant store ([`Store::spend`]): in memory for one instance, in Redis for a whole
//! deployment, so N instances share one budget instead of multiplying it. A budget is spent
//! *before* the work it guards, atomically, so concurrent requests cannot all pass a check that
//! only one of them should (a user code is looked up only after its attempt was spent; a right
//! code gives its attempt back). Time is a parameter (`now`, seconds).

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::Limits as LimitsConfig;
use crate::device::{Store, StoreError};

/// Why a limit let a request through no further.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The budget is spent: come back in this many seconds.
    Limited(u64),
    /// Everyone's wrong-code budget is spent (someone is guessing): a user who signs in at the
    /// IdP may still enter codes, counted against their own budget.
    SignInFirst(u64),
    /// The store that keeps the counts cannot answer: refused too (fail closed).
    Unavailable(StoreError),
}

/// The key of a client address: IPv6 clients are grouped by /64, the block one subscriber
/// usually gets, so rotating addresses inside it does not reset the count.
pub fn ip_key(ip: Option<IpAddr>) -> String {
    match ip.map(crate::net::canonical) {
        Some(IpAddr::V4(v4)) => v4.to_string(),
        v6 => network_key(v6),
    }
}

/// The coarse network of an address: its IPv4 /24 or IPv6 /64 (an IPv4-mapped IPv6 address
/// counts as IPv4), as the block's first address.
fn network(ip: IpAddr) -> IpAddr {
    match crate::net::canonical(ip) {
        IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & 0xffff_ff00).into()),
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
    }
}

/// The network an address belongs to, for per-network shares: its IPv4 /24 or IPv6 /64.
pub fn network_key(ip: Option<IpAddr>) -> String {
    match ip.map(network) {
        Some(IpAddr::V4(net)) => format!("{net}/24"),
        Some(IpAddr::V6(net)) => {
            let s = net.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        None => "unknown".into(),
    }
}

/// One user-code attempt, spent: the budgets it came from, to give back if the code was right.
#[derive(Debug)]
pub struct Attempt {
    keys: [String; 2],
}

/// Every limit of the gateway, counted in the grant store.
pub struct Limits {
    store: Arc<dyn Store>,
    c: LimitsConfig,
    /// Seconds a grant lives: the window of a network's share of pending grants.
    grant_lifetime: u64,
}

impl Limits {
    pub fn new(c: &LimitsConfig, store: Arc<dyn Store>, grant_lifetime: u64) -> Self {
        Self {
            store,
            c: c.clone(),
            grant_lifetime,
        }
    }

    /// Spends one event of `key`'s budget (`max` a window); 0 turns the limit off.
    async fn spend(&self, key: &str, max: u32, window: u64, now: u64) -> Result<(), Refused> {
        if max == 0 {
            return Ok(());
        }
        match self.store.spend(key, max, window, now).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(secs)) => Err(Refused::Limited(secs)),
            Err(e) => Err(Refused::Unavailable(e)),
        }
    }

    /// A user code from `ip` is about to be looked up: one attempt of this address's budget
    /// and of everyone's is spent first, so a refused guess tests nothing and concurrent
    /// guesses cannot all slip through. Give it back with [`Self::code_was_right`].
    ///
    /// When everyone's budget is spent, an attacker with many addresses may be keeping it so:
    /// a user signed in at the IdP (`user`, their `sub`) then spends from their own budget
    /// instead, which a guesser would need an account per handful of guesses to get.
    pub async fn code_attempt(
        &self,
        ip: &str,
        user: Option<&str>,
        now: u64,
    ) -> Result<Attempt, Refused> {
        let per_ip = format!("code:ip:{ip}");
        let window = self.c.code_failures_window_seconds;
        self.spend(&per_ip, self.c.code_failures_per_ip, window, now)
            .await?;
        let spent = match self
            .spend("code:*", self.c.code_failures_global_per_minute, 60, now)
            .await
        {
            Ok(()) => Ok(Attempt {
                keys: [per_ip.clone(), "code:*".into()],
            }),
            Err(Refused::Limited(secs)) => match user {
                None => Err(Refused::SignInFirst(secs)),
                Some(sub) => {
                    let mine = format!("code:user:{sub}");
                    self.spend(&mine, self.c.code_failures_per_ip, window, now)
                        .await
                        .map(|()| Attempt {
                            keys: [per_ip.clone(), mine],
                        })
                }
            },
            Err(e) => Err(e),
        };
        if spent.is_err() {
            // Not looked up after all: this address keeps its attempt.
            let _ = self.store.refund(&per_ip).await;
        }
        spent
    }

    /// The code was a real one: only wrong codes count against the budgets.
    pub async fn code_was_right(&self, attempt: Attempt) {
        for key in attempt.keys {
            if let Err(e) = self.store.refund(&key).await {
                tracing::warn!(error = %e, "a right code's attempt was not given back");
            }
        }
    }

    /// One device authorization request from `ip`: spent before the client authenticates,
    /// so guessing a client secret is rate limited too.
    pub async fn device_request_from(&self, ip: &str, now: u64) -> Result<(), Refused> {
        let max = self.c.device_requests_per_ip_per_minute;
        self.spend(&format!("device:ip:{ip}"), max, 60, now).await
    }

    /// One device authorization request by an authenticated client (counted only then, so a
    /// stranger cannot spend a confidential client's budget by naming it). A public client is
    /// authenticated by its name alone, so its budget is counted per network: one network's
    /// flood leaves every other network its own.
    pub async fn device_request_by(
        &self,
        client_id: &str,
        public: bool,
        network: &str,
        now: u64,
    ) -> Result<(), Refused> {
        let max = self.c.device_requests_per_client_per_minute;
        let key = if public {
            format!("device:client:{client_id}:net:{network}")
        } else {
            format!("device:client:{client_id}")
        };
        self.spend(&key, max, 60, now).await
    }

    /// A grant is about to be opened for a device on `network`: its share of the pending
    /// grants. Give it back with [`Self::grant_not_opened`] when the grant was not stored.
    pub async fn open_grant(&self, network: &str, now: u64) -> Result<(), Refused> {
        let key = format!("pending:net:{network}");
        self.spend(&key, self.c.pending_per_network, self.grant_lifetime, now)
            .await
    }

    pub async fn grant_not_opened(&self, network: &str) {
        if self.c.pending_per_network > 0 {
            let _ = self.store.refund(&format!("pending:net:{network}")).await;
        }
    }

    /// A grant of `client_id` is about to be opened, to live until `expires_at`: one of the
    /// client's `max` slots (`clients[].max_pending`), held by `member` until then. Give it back
    /// with [`Self::client_grant_not_opened`] when the grant was not stored.
    pub async fn open_client_grant(
        &self,
        client_id: &str,
        member: &str,
        max: u64,
        expires_at: u64,
        now: u64,
    ) -> Result<(), Refused> {
        let key = format!("pending:client:{client_id}");
        match self.store.admit(&key, member, max, expires_at, now).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(secs)) => Err(Refused::Limited(secs)),
            Err(e) => Err(Refused::Unavailable(e)),
        }
    }

    pub async fn client_grant_not_opened(&self, client_id: &str, member: &str) {
        let key = format!("pending:client:{client_id}");
        let _ = self.store.release(&key, member).await;
    }

    /// One device-code poll from `ip` (before authentication, as above).
    pub async fn poll_from(&self, ip: &str, now: u64) -> Result<(), Refused> {
        let max = self.c.polls_per_ip_per_minute;
        self.spend(&format!("poll:ip:{ip}"), max, 60, now).await
    }

    /// One device-code poll by an authenticated client.
    pub async fn poll_by(&self, client_id: &str, now: u64) -> Result<(), Refused> {
        let max = self.c.polls_per_client_per_minute;
        self.spend(&format!("poll:client:{client_id}"), max, 60, now)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::memory::MemoryStore;

    fn limits(c: LimitsConfig) -> Limits {
        let store = Arc::new(MemoryStore::new(std::time::Duration::from_secs(60), 10));
        Limits::new(&c, store, 600)
    }

    #[tokio::test]
    async fn attempts_are_spent_before_the_lookup_and_right_codes_give_them_back() {
        let c = LimitsConfig {
            code_failures_per_ip: 10,
            code_failures_window_seconds: 900,
            code_failures_global_per_minute: 15,
            ..LimitsConfig::default()
        };
        let l = limits(c.clone());
        // Right codes cost nothing.
        for _ in 0..50 {
            let a = l.code_attempt("1.2.3.4", None, 0).await.unwrap();
            l.code_was_right(a).await;
        }
        for _ in 0..10 {
            l.code_attempt("1.2.3.4", None, 0).await.unwrap();
        }
        // The 11th attempt from that address is refused for the rest of the 15 minutes.
        let refused = |r: Result<Attempt, Refused>| r.err();
        assert_eq!(
            refused(l.code_attempt("1.2.3.4", None, 1).await),
            Some(Refused::Limited(899))
        );
        assert_eq!(
            refused(l.code_attempt("1.2.3.4", None, 899).await),
            Some(Refused::Limited(1))
        );
        assert!(l.code_attempt("1.2.3.4", None, 900).await.is_ok());
        // The global budget: 15 failures a minute from everyone together; an address refused
        // by it keeps its own attempt, and is asked to sign in.
        let l = limits(c);
        for i in 0..15 {
            l.code_attempt(&format!("10.0.0.{i}"), None, 10)
                .await
                .unwrap();
        }
        assert_eq!(
            refused(l.code_attempt("10.9.9.9", None, 30).await),
            Some(Refused::SignInFirst(40))
        );
        // Signed in, a user spends from a budget of their own, however spent everyone's is.
        for _ in 0..10 {
            l.code_attempt("10.9.9.9", Some("alice"), 30).await.unwrap();
        }
        assert!(matches!(
            l.code_attempt("10.9.9.8", Some("alice"), 30).await,
            Err(Refused::Limited(_))
        ));
        // A right code gives back what it spent, the user's budget included.
        let a = l.code_attempt("10.9.9.7", Some("bob"), 30).await.unwrap();
        l.code_was_right(a).await;
        assert!(l.code_attempt("10.9.9.7", None, 70).await.is_ok());
    }

    #[tokio::test]
    async fn a_public_clients_budget_is_per_network_and_so_is_a_networks_share_of_grants() {
        let l = limits(LimitsConfig {
            device_requests_per_client_per_minute: 3,
            pending_per_network: 2,
            ..LimitsConfig::default()
        });
        for _ in 0..3 {
            l.device_request_by("tv", true, "198.51.100.0/24", 0)
                .await
                .unwrap();
        }
        assert!(l
            .device_request_by("tv", true, "198.51.100.0/24", 0)
            .await
            .is_err());
        // Another network still gets codes for the same public client.
        l.device_request_by("tv", true, "203.0.113.0/24", 0)
            .await
            .unwrap();
        // A confidential client (authenticated by its secret) has one budget.
        for _ in 0..3 {
            l.device_request_by("kiosk", false, "198.51.100.0/24", 0)
                .await
                .unwrap();
        }
        assert!(l
            .device_request_by("kiosk", false, "203.0.113.0/24", 0)
            .await
            .is_err());
        // Two grants per network per lifetime; one not stored is given back.
        l.open_grant("198.51.100.0/24", 0).await.unwrap();
        l.open_grant("198.51.100.0/24", 0).await.unwrap();
        assert_eq!(
            l.open_grant("198.51.100.0/24", 10).await,
            Err(Refused::Limited(590))
        );
        l.grant_not_opened("198.51.100.0/24").await;
        l.open_grant("198.51.100.0/24", 10).await.unwrap();
        l.open_grant("203.0.113.0/24", 10).await.unwrap();
        assert_eq!(
            network_key(Some("198.51.100.7".parse().unwrap())),
            "198.51.100.0/24"
        );
        assert_eq!(
            network_key(Some("2001:db8:1:2:3::9".parse().unwrap())),
            "2001:db8:1:2::/64"
        );
    }

    #[tokio::test]
    async fn zero_turns_a_rate_limit_off() {
        let l = limits(LimitsConfig {
            device_requests_per_ip_per_minute: 0,
            ..LimitsConfig::default()
        });
        for _ in 0..1000 {
            l.device_request_from("a", 0).await.unwrap();
        }
    }

    #[test]
    fn ipv6_clients_are_grouped_by_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(Some(a)), ip_key(Some(b)));
        assert_ne!(ip_key(Some(a)), ip_key(Some(c)));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(ip_key(Some(mapped)), "192.0.2.7");
    }
}
