//! Time as a value: the one [`Clock`] the gateway reads, injected so that tests fix it.
//!
//! Protocol logic (`device`, `limits`) never reads a clock; it is handed a [`Time`] or whole
//! seconds taken from one. The gateway holds an `Arc<dyn Clock>`: [`SystemClock`] in
//! production, [`ManualClock`] in tests that step time by hand (as Dex's handlers hold `Now`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A point in time: milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Time(u64);

impl Time {
    pub const fn from_millis(millis: u64) -> Self {
        Self(millis)
    }

    pub const fn from_secs(secs: u64) -> Self {
        Self(secs.saturating_mul(1000))
    }

    pub const fn millis(self) -> u64 {
        self.0
    }

    /// Whole seconds, rounded down: "now" for comparisons against stored second counts.
    pub const fn secs(self) -> u64 {
        self.0 / 1000
    }

    /// Whole seconds, rounded up: the start of a lifetime that must not be cut short (a grant
    /// issued at 100.9 s with `expires_in: 3` expires at 104, never before 103.9).
    pub const fn secs_ceil(self) -> u64 {
        self.0.div_ceil(1000)
    }
}

/// Where the gateway gets the current time.
pub trait Clock: Send + Sync {
    fn now(&self) -> Time;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Time {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Time(millis)
    }
}

/// A clock that stands still until told to move (tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(at: Time) -> Self {
        Self(AtomicU64::new(at.0))
    }

    pub fn set(&self, at: Time) {
        self.0.store(at.0, Ordering::SeqCst);
    }

    pub fn advance_millis(&self, millis: u64) {
        self.0.fetch_add(millis, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Time {
        Time(self.0.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding() {
        let t = Time::from_millis(100_900);
        assert_eq!((t.secs(), t.secs_ceil()), (100, 101));
        let whole = Time::from_secs(100);
        assert_eq!((whole.secs(), whole.secs_ceil()), (100, 100));
        let c = ManualClock::new(t);
        c.advance_millis(150);
        assert_eq!(c.now(), Time::from_millis(101_050));
        assert!(SystemClock.now().secs() > 1_700_000_000);
    }
}
