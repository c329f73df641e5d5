//! devicegate: a Pingora reverse proxy that adds the OAuth 2.0 Device Authorization Grant
//! (RFC 8628) in front of an existing OpenID Connect provider.
//!
//! The map (dependencies point down this list's layers: `server` → `proxy` → `pages`, `oidc`,
//! `device`, `limits` → `config`, `clock`, `error`; nothing points back up):
//! - [`server`]: start-up: the configuration and its pages checked together, then the
//!   Pingora server.
//! - [`proxy`]: the Pingora `ProxyHttp` glue: each request classified into one route, one
//!   handler per endpoint returning a `Reply`, one writer, audit events and metrics derived
//!   from the replies; the admin listener and API (`proxy::admin`) and the operators' actions
//!   with the upkeep task of every instance (`proxy::operator`).
//! - [`config`]: the YAML file and its validation into [`config::Config`], with each client's
//!   phishing-defence policy ([`config::Policy`]).
//! - [`clock`]: the injected clock (`Time` values), so tests fix the time.
//! - [`device`]: the RFC 8628 core (codes, grant state machine, `Store` and its backends), with
//!   no HTTP in it and time passed in as a parameter.
//! - [`oidc`]: the back-channel client of the upstream IdP (discovery, code exchange, ID token
//!   validation).
//! - [`pages`]: the verification pages (escaped templates).
//! - [`discovery`]: the rewrite of the IdP's discovery documents.
//! - [`form`]: strict form and query parsing.
//! - [`metrics`]: the Prometheus metrics.
//! - [`webhooks`]: security events, signed (Standard Webhooks), to the operators' receivers.
//! - [`cli`]: `devicegate admin …`, the operators' client of the admin API.
//! - [`logging`]: the log output, written by its own thread and flushed at shutdown.
//! - [`limits`]: rate limits (user-code brute force, device and token endpoint floods).
//! - [`net`]: CIDR blocks, the real client address behind trusted proxies, and
//!   `upstream.address` kept resolved ([`net::Resolving`]).
//! - [`error`]: the OAuth error enum and its JSON wire format.

pub mod cli;
pub mod clock;
pub mod config;
pub mod device;
pub mod discovery;
pub mod error;
pub mod form;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod oidc;
pub mod pages;
pub mod proxy;
pub mod server;
pub mod webhooks;
