//! The RFC 8628 core, free of any HTTP framework.
//!
//! - [`code`]: device codes, user codes and their normalisation (§5.1, §5.2, §6.1).
//! - [`grant`]: one pending authorization and its state machine (§3.4, §3.5), with the
//!   `slow_down` interval growth.
//! - [`store`]: the `Store` trait every backend implements, with its conformance suite.
//! - [`memory`]: the embedded moka backend (the default).
//! - [`redis`]: the Redis backend shared by several gateway instances.
//! - [`switch`]: the operators' run-time kill switch, refreshed from the store.
//! - [`service`]: the operations the HTTP layer calls (authorize, poll, approve, deny), which
//!   combine the pieces above; the current time is always a parameter (whole seconds, or a
//!   [`crate::clock::Time`] where a lifetime starts).

pub mod code;
pub mod grant;
pub mod memory;
pub mod redis;
pub mod service;
pub mod store;
pub mod switch;

pub use grant::{Grant, GrantView, Login, Refusal, Status, TokenSet};
pub use store::{Key, Store, StoreError};
