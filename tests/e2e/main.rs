//! End-to-end tests, one binary (one link) for all of them: the real gateway binary in front of a
//! real IdP (`oidc-provider`), driven by a device client (reqwest) and a real headless Chromium,
//! with the embedded store ([`device_flow`]) and a real `redis-server` ([`redis_store`]).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;
mod device_flow;
mod redis_store;
