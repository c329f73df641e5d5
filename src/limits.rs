//! Rate limits: the brute-force defence of the short user codes (RFC 8628 §5.1) and the
//! flood limits of the device and token endpoints.
//!
//! Every limit is a fixed-window counter per key (a client IP, a client id, or one global key).
//! Counters live in a bounded moka cache: a flood of distinct keys evicts old counters instead
//! of growing memory. Time is a parameter (`now`, seconds), so windows are tested with numbers.
//! Limits are per gateway instance: with several instances, an attacker's budget is multiplied
//! by their number (the README's bound says so).

use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use moka::sync::Cache;

use crate::config::Limits as LimitsConfig;

/// Most distinct keys one limiter remembers.
const MAX_KEYS: u64 = 100_000;

/// One fixed window of one key.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: u64,
    count: u32,
}

/// At most `max` events per key in any window of `window` seconds.
pub struct Limiter {
    windows: Cache<String, Arc<Mutex<Window>>>,
    max: u32,
    window: u64,
}

impl Limiter {
    pub fn new(max: u32, window_secs: u64) -> Self {
        Self {
            windows: Cache::builder()
                .max_capacity(MAX_KEYS)
                .time_to_idle(Duration::from_secs(window_secs.max(1)))
                .build(),
            max,
            window: window_secs.max(1),
        }
    }

    fn with_window<T>(&self, key: &str, now: u64, f: impl FnOnce(&mut Window) -> T) -> T {
        let entry = self.windows.get_with(key.to_string(), || {
            Arc::new(Mutex::new(Window {
                start: now,
                count: 0,
            }))
        });
        let mut w = entry.lock().unwrap_or_else(PoisonError::into_inner);
        if now >= w.start.saturating_add(self.window) {
            *w = Window {
                start: now,
                count: 0,
            };
        }
        f(&mut w)
    }

    /// Whether `key` is still within its budget, without spending any. `Err` holds the seconds
    /// until the window ends (for `Retry-After`).
    pub fn check(&self, key: &str, now: u64) -> Result<(), u64> {
        if self.max == 0 {
            return Ok(());
        }
        self.with_window(key, now, |w| {
            if w.count < self.max {
                Ok(())
            } else {
                Err((w.start + self.window).saturating_sub(now).max(1))
            }
        })
    }

    /// Spends one event of `key`'s budget; `Err` (nothing spent) when it is used up.
    pub fn hit(&self, key: &str, now: u64) -> Result<(), u64> {
        if self.max == 0 {
            return Ok(());
        }
        self.with_window(key, now, |w| {
            if w.count < self.max {
                w.count += 1;
                Ok(())
            } else {
                Err((w.start + self.window).saturating_sub(now).max(1))
            }
        })
    }

    /// Records an event that already happened (a failure), even past the budget.
    pub fn record(&self, key: &str, now: u64) {
        if self.max > 0 {
            self.with_window(key, now, |w| w.count = w.count.saturating_add(1));
        }
    }
}

/// The key of a client address: IPv6 clients are grouped by /64, the block one subscriber
/// usually gets, so rotating addresses inside it does not reset the count.
pub fn ip_key(ip: Option<IpAddr>) -> String {
    match ip {
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        None => "unknown".into(),
    }
}

/// Whether two addresses are on the same coarse network: the same IPv4 /24 or IPv6 /64 (an
/// IPv4-mapped IPv6 address counts as IPv4). Used to warn on the consent page when a device
/// asked from somewhere else than the browser approving it.
pub fn same_network(a: IpAddr, b: IpAddr) -> bool {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match (canon(a), canon(b)) {
        (IpAddr::V4(a), IpAddr::V4(b)) => a.octets()[..3] == b.octets()[..3],
        (IpAddr::V6(a), IpAddr::V6(b)) => a.segments()[..4] == b.segments()[..4],
        _ => false,
    }
}

const GLOBAL: &str = "*";

/// Every limit of the gateway.
pub struct Limits {
    code_failures_ip: Limiter,
    code_failures_global: Limiter,
    device_ip: Limiter,
    device_client: Limiter,
    poll_ip: Limiter,
    poll_client: Limiter,
}

impl Limits {
    pub fn new(c: &LimitsConfig) -> Self {
        Self {
            code_failures_ip: Limiter::new(c.code_failures_per_ip, c.code_failures_window_seconds),
            code_failures_global: Limiter::new(c.code_failures_global_per_minute, 60),
            device_ip: Limiter::new(c.device_requests_per_ip_per_minute, 60),
            device_client: Limiter::new(c.device_requests_per_client_per_minute, 60),
            poll_ip: Limiter::new(c.polls_per_ip_per_minute, 60),
            poll_client: Limiter::new(c.polls_per_client_per_minute, 60),
        }
    }

    /// May this address try a user code now? Refused once it, or everyone together, used up
    /// the failure budget: the check comes before the lookup, so a refused guess tests nothing.
    pub fn code_entry_allowed(&self, ip: &str, now: u64) -> Result<(), u64> {
        self.code_failures_ip.check(ip, now)?;
        self.code_failures_global.check(GLOBAL, now)
    }

    /// A user code entered from `ip` was wrong.
    pub fn code_failed(&self, ip: &str, now: u64) {
        self.code_failures_ip.record(ip, now);
        self.code_failures_global.record(GLOBAL, now);
    }

    /// One device authorization request from `ip`: checked before the client authenticates,
    /// so guessing a client secret is rate limited too.
    pub fn device_request_from(&self, ip: &str, now: u64) -> Result<(), u64> {
        self.device_ip.hit(ip, now)
    }

    /// One device authorization request by an authenticated client (counted only then, so a
    /// stranger cannot spend a client's budget by naming it).
    pub fn device_request_by(&self, client_id: &str, now: u64) -> Result<(), u64> {
        self.device_client.hit(client_id, now)
    }

    /// One device-code poll from `ip` (before authentication, as above).
    pub fn poll_from(&self, ip: &str, now: u64) -> Result<(), u64> {
        self.poll_ip.hit(ip, now)
    }

    /// One device-code poll by an authenticated client.
    pub fn poll_by(&self, client_id: &str, now: u64) -> Result<(), u64> {
        self.poll_client.hit(client_id, now)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn networks() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(same_network(ip("192.0.2.1"), ip("192.0.2.200")));
        assert!(!same_network(ip("192.0.2.1"), ip("192.0.3.1")));
        assert!(same_network(ip("::ffff:192.0.2.1"), ip("192.0.2.9")));
        assert!(same_network(
            ip("2001:db8:1:2::1"),
            ip("2001:db8:1:2:ffff::9")
        ));
        assert!(!same_network(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1")));
        assert!(!same_network(ip("2001:db8::1"), ip("192.0.2.1")));
    }

    use super::*;

    #[test]
    fn fixed_window() {
        let l = Limiter::new(3, 60);
        for _ in 0..3 {
            assert_eq!(l.hit("a", 100), Ok(()));
        }
        assert_eq!(l.hit("a", 110), Err(50));
        assert_eq!(l.check("a", 159), Err(1));
        // Other keys have their own budget; a new window starts a new budget.
        assert_eq!(l.hit("b", 110), Ok(()));
        assert_eq!(l.hit("a", 160), Ok(()));
        // Zero disables the limit.
        let off = Limiter::new(0, 60);
        for _ in 0..1000 {
            assert_eq!(off.hit("a", 0), Ok(()));
        }
    }

    #[test]
    fn failures_are_checked_before_and_recorded_after() {
        let c = LimitsConfig {
            code_failures_per_ip: 10,
            code_failures_window_seconds: 900,
            code_failures_global_per_minute: 15,
            ..LimitsConfig::default()
        };
        let l = Limits::new(&c);
        for _ in 0..10 {
            assert_eq!(l.code_entry_allowed("1.2.3.4", 0), Ok(()));
            l.code_failed("1.2.3.4", 0);
        }
        // The 11th attempt from that address is refused for the rest of the 15 minutes.
        assert_eq!(l.code_entry_allowed("1.2.3.4", 1), Err(899));
        assert_eq!(l.code_entry_allowed("1.2.3.4", 899), Err(1));
        assert_eq!(l.code_entry_allowed("1.2.3.4", 900), Ok(()));
        // The global budget: 15 failures a minute from everyone together.
        let l = Limits::new(&c);
        for i in 0..15 {
            l.code_failed(&format!("10.0.0.{i}"), 10);
        }
        assert_eq!(l.code_entry_allowed("10.9.9.9", 30), Err(40));
        assert_eq!(l.code_entry_allowed("10.9.9.9", 70), Ok(()));
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
