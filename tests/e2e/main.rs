//! End-to-end tests, one binary (one link) for all of them: the real gateway binary in front of a
//! real IdP (`oidc-provider`), driven by a device client (reqwest) and a real headless Chromium,
//! with the embedded store ([`device_flow`]), a real `redis-server` ([`redis_store`]), and
//! abusive clients and a hostile upstream ([`hardening`]), and what operators watch
//! ([`operations`]).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod availability;
mod clients;
#[path = "../common/mod.rs"]
mod common;
mod device_flow;
mod hardening;
mod interop;
mod operations;
mod operators;
mod policy;
mod redis_ha;
mod redis_store;
mod scripts;
mod trusted_proxy;
mod verification_pages;
