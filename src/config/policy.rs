//! Phishing defences per client (RFC 10027): the `policy:` section holds deployment-wide
//! defaults, and the same keys on a client (`clients[].device_networks`, …) replace them for
//! that client. Each key, once validated, becomes a field of [`Policy`]; the gateway enforces
//! it, and `--check` prints every client's effective policy ([`Policy::describe`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use serde::Deserialize;
use serde_norway::Value;

use super::Errors;
use crate::net::Cidr;

/// The policy keys, as written on a client or under `policy:`.
pub(super) const POLICY_KEYS: &[&str] = &[
    "device_networks",
    "approver_networks",
    "proximity",
    "proximity_ipv4_prefix",
    "proximity_ipv6_prefix",
    "require_claims",
    "acr_values",
    "max_age",
    "refresh_tokens",
    "verification_uri_complete",
    "max_pending",
];

/// The policy keys of one client or of `policy:`, each absent unless written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FilePolicy {
    device_networks: Option<Vec<String>>,
    approver_networks: Option<Vec<String>>,
    proximity: Option<String>,
    proximity_ipv4_prefix: Option<u8>,
    proximity_ipv6_prefix: Option<u8>,
    require_claims: Option<BTreeMap<String, Value>>,
    acr_values: Option<Vec<String>>,
    max_age: Option<u64>,
    refresh_tokens: Option<bool>,
    verification_uri_complete: Option<bool>,
    max_pending: Option<u64>,
}

/// `proximity:`: whether the browser approving a grant must be near the device that asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proximity {
    /// No comparison.
    Off,
    /// The consent page warns when the networks differ (the default).
    Warn,
    /// A grant approved from another network is denied.
    Require,
}

impl Proximity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Warn => "warn",
            Self::Require => "require",
        }
    }
}

/// One accepted value of a required claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimValue {
    Str(String),
    Bool(bool),
}

impl ClaimValue {
    /// Whether a claim's value is this one: equal, or (for an array such as `groups`) holding it.
    pub fn matches(&self, claim: &serde_json::Value) -> bool {
        use serde_json::Value as J;
        match (self, claim) {
            (Self::Str(want), J::String(s)) => want == s,
            (Self::Bool(want), J::Bool(b)) => want == b,
            (_, J::Array(items)) => items.iter().any(|i| !i.is_array() && self.matches(i)),
            _ => false,
        }
    }
}

impl std::fmt::Display for ClaimValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Str(s) => write!(f, "{s:?}"),
            Self::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// The effective policy of one client: its own keys, else `policy:`'s, else the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Device authorization requests only from these networks (`None`: from anywhere).
    pub device_networks: Option<Vec<Cidr>>,
    /// Approval only from browsers on these networks (`None`: from anywhere).
    pub approver_networks: Option<Vec<Cidr>>,
    pub proximity: Proximity,
    /// The network of an address, for proximity: its first this many bits.
    pub proximity_ipv4_prefix: u8,
    pub proximity_ipv6_prefix: u8,
    /// Claims the user's ID token (or userinfo) must carry, each with one of its values.
    pub require_claims: BTreeMap<String, Vec<ClaimValue>>,
    /// Sent upstream as `acr_values`; the ID token's `acr` must be one of them.
    pub acr_values: Vec<String>,
    /// Sent upstream as `max_age`; the ID token's `auth_time` must be at most this old.
    pub max_age: Option<u64>,
    /// `false`: `offline_access` is never asked upstream and no refresh token reaches the device.
    pub refresh_tokens: bool,
    /// `false`: no `verification_uri_complete`, no QR code, no prefilled code for this client.
    pub verification_uri_complete: bool,
    /// Grants of this client that may be alive at once (`None`: only `store.max_pending`).
    pub max_pending: Option<u64>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            device_networks: None,
            approver_networks: None,
            proximity: Proximity::Warn,
            proximity_ipv4_prefix: 24,
            proximity_ipv6_prefix: 64,
            require_claims: BTreeMap::new(),
            acr_values: Vec::new(),
            max_age: None,
            refresh_tokens: true,
            verification_uri_complete: true,
            max_pending: None,
        }
    }
}

/// The slack allowed between the IdP's clock and ours when `auth_time` is checked.
pub const AUTH_TIME_SKEW_SECS: u64 = 60;

impl Policy {
    /// Whether a device at `ip` may start a flow (`device_networks`).
    pub fn device_allowed(&self, ip: Option<IpAddr>) -> bool {
        allowed(self.device_networks.as_deref(), ip)
    }

    /// Whether a browser at `ip` may approve (`approver_networks`).
    pub fn approver_allowed(&self, ip: Option<IpAddr>) -> bool {
        allowed(self.approver_networks.as_deref(), ip)
    }

    /// Whether the device's and the browser's addresses are on one network, by this policy's
    /// prefix lengths. An unknown address is never near anything.
    pub fn near(&self, device: Option<IpAddr>, browser: Option<IpAddr>) -> bool {
        match (device, browser) {
            (Some(d), Some(b)) => crate::net::same_prefix(
                d,
                b,
                self.proximity_ipv4_prefix,
                self.proximity_ipv6_prefix,
            ),
            _ => false,
        }
    }

    /// Whether the signed-in user's claims are judged at all (`require_claims`, `acr_values`,
    /// `max_age`).
    pub fn judges_login(&self) -> bool {
        !self.require_claims.is_empty() || !self.acr_values.is_empty() || self.max_age.is_some()
    }

    /// The first rule the signed-in user's claims break, with why; `None` when they pass.
    /// `claims` are the validated ID token's, with userinfo's for claims it lacks.
    pub fn claims_refusal(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
        now: u64,
    ) -> Option<(&'static str, String)> {
        for (name, values) in &self.require_claims {
            let ok = claims
                .get(name)
                .is_some_and(|c| values.iter().any(|v| v.matches(c)));
            if !ok {
                return Some(("require_claims", format!("claim {name} is not allowed")));
            }
        }
        if !self.acr_values.is_empty() {
            let acr = claims.get("acr").and_then(|a| a.as_str());
            if !acr.is_some_and(|a| self.acr_values.iter().any(|v| v == a)) {
                return Some((
                    "acr_values",
                    format!(
                        "acr {} is not one of those required",
                        acr.unwrap_or("(none)")
                    ),
                ));
            }
        }
        if let Some(max_age) = self.max_age {
            let auth_time = claims.get("auth_time").and_then(|t| t.as_u64());
            match auth_time {
                None => return Some(("max_age", "the ID token has no auth_time".into())),
                Some(t) if now.saturating_sub(t) > max_age + AUTH_TIME_SKEW_SECS => {
                    return Some((
                        "max_age",
                        format!("the authentication is {} s old", now.saturating_sub(t)),
                    ))
                }
                Some(_) => {}
            }
        }
        None
    }

    /// The policy in one line per rule, as `--check` prints it.
    /// The policy as JSON (the admin API's `GET /clients`).
    pub fn to_json(&self) -> serde_json::Value {
        let nets = |n: &Option<Vec<Cidr>>| {
            n.as_ref()
                .map(|l| l.iter().map(ToString::to_string).collect::<Vec<_>>())
        };
        let claims: serde_json::Map<String, serde_json::Value> = self
            .require_claims
            .iter()
            .map(|(k, vs)| {
                let vs = vs
                    .iter()
                    .map(|v| match v {
                        ClaimValue::Str(s) => serde_json::Value::from(s.as_str()),
                        ClaimValue::Bool(b) => serde_json::Value::from(*b),
                    })
                    .collect();
                (k.clone(), serde_json::Value::Array(vs))
            })
            .collect();
        serde_json::json!({
            "device_networks": nets(&self.device_networks),
            "approver_networks": nets(&self.approver_networks),
            "proximity": self.proximity.as_str(),
            "proximity_ipv4_prefix": self.proximity_ipv4_prefix,
            "proximity_ipv6_prefix": self.proximity_ipv6_prefix,
            "require_claims": claims,
            "acr_values": self.acr_values,
            "max_age": self.max_age,
            "refresh_tokens": self.refresh_tokens,
            "verification_uri_complete": self.verification_uri_complete,
            "max_pending": self.max_pending,
        })
    }

    pub fn describe(&self) -> String {
        let nets = |n: &Option<Vec<Cidr>>| match n {
            None => "anywhere".to_string(),
            Some(list) => list
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        };
        let mut s = String::new();
        let _ = writeln!(s, "  device_networks: {}", nets(&self.device_networks));
        let _ = writeln!(s, "  approver_networks: {}", nets(&self.approver_networks));
        let _ = writeln!(
            s,
            "  proximity: {} (IPv4 /{}, IPv6 /{})",
            self.proximity.as_str(),
            self.proximity_ipv4_prefix,
            self.proximity_ipv6_prefix
        );
        if self.require_claims.is_empty() {
            let _ = writeln!(s, "  require_claims: none");
        }
        for (name, values) in &self.require_claims {
            let values: Vec<String> = values.iter().map(ToString::to_string).collect();
            let _ = writeln!(s, "  require_claims: {name} one of [{}]", values.join(", "));
        }
        let acr = if self.acr_values.is_empty() {
            "not checked".to_string()
        } else {
            self.acr_values.join(" ")
        };
        let _ = writeln!(s, "  acr_values: {acr}");
        let max_age = self
            .max_age
            .map_or("not checked".to_string(), |a| format!("{a} s"));
        let _ = writeln!(s, "  max_age: {max_age}");
        let _ = writeln!(s, "  refresh_tokens: {}", self.refresh_tokens);
        let _ = writeln!(
            s,
            "  verification_uri_complete: {}",
            self.verification_uri_complete
        );
        let pending = self
            .max_pending
            .map_or("store.max_pending only".to_string(), |m| m.to_string());
        let _ = write!(s, "  max_pending: {pending}");
        s
    }
}

fn allowed(networks: Option<&[Cidr]>, ip: Option<IpAddr>) -> bool {
    match (networks, ip) {
        (None, _) => true,
        (Some(list), Some(ip)) => list.iter().any(|c| c.contains(ip)),
        (Some(_), None) => false,
    }
}

/// Takes the policy keys out of a client's mapping, leaving the rest for its own struct.
pub(super) fn split_policy(item: &mut Value) -> Value {
    let mut policy = serde_norway::Mapping::new();
    if let Value::Mapping(m) = item {
        for key in POLICY_KEYS {
            if let Some(v) = m.remove(*key) {
                policy.insert(Value::String((*key).to_string()), v);
            }
        }
    }
    Value::Mapping(policy)
}

/// Validates a policy's keys (`prefix` is `policy` or `clients[i]`) over `base`: each key
/// written replaces the base's value.
pub(super) fn validate_policy(
    errs: &mut Errors,
    prefix: &str,
    f: FilePolicy,
    base: &Policy,
    max_pending: Option<u64>,
) -> Policy {
    let key = |k: &str| format!("{prefix}.{k}");
    let mut p = base.clone();
    let networks = |errs: &mut Errors, name: &str, list: Vec<String>| {
        if list.is_empty() {
            errs.push(
                &key(name),
                "is empty, which would refuse everyone: remove it to allow every network",
            );
        }
        let mut out = Vec::new();
        for (i, c) in list.iter().enumerate() {
            match Cidr::parse(c) {
                Ok(c) => out.push(c),
                Err(e) => errs.push(&format!("{}[{i}]", key(name)), e),
            }
        }
        out
    };
    if let Some(list) = f.device_networks {
        p.device_networks = Some(networks(errs, "device_networks", list));
    }
    if let Some(list) = f.approver_networks {
        p.approver_networks = Some(networks(errs, "approver_networks", list));
    }
    if let Some(mode) = f.proximity {
        p.proximity = match mode.as_str() {
            "off" => Proximity::Off,
            "warn" => Proximity::Warn,
            "require" => Proximity::Require,
            other => {
                errs.push(
                    &key("proximity"),
                    format!("unknown mode '{other}', expected: off, warn or require"),
                );
                p.proximity
            }
        };
    }
    if let Some(bits) = f.proximity_ipv4_prefix {
        if !(8..=32).contains(&bits) {
            errs.push(&key("proximity_ipv4_prefix"), "must be between 8 and 32");
        }
        p.proximity_ipv4_prefix = bits;
    }
    if let Some(bits) = f.proximity_ipv6_prefix {
        if !(16..=128).contains(&bits) {
            errs.push(&key("proximity_ipv6_prefix"), "must be between 16 and 128");
        }
        p.proximity_ipv6_prefix = bits;
    }
    if let Some(rules) = f.require_claims {
        p.require_claims = BTreeMap::new();
        for (name, v) in rules {
            let k = format!("{}.{name}", key("require_claims"));
            if name.trim().is_empty() {
                errs.push(&key("require_claims"), "a claim name is empty");
                continue;
            }
            let list = match v {
                Value::Sequence(list) => list,
                scalar @ (Value::String(_) | Value::Bool(_)) => vec![scalar],
                _ => {
                    errs.push(
                        &k,
                        "must list the accepted values, e.g. [tv-admins] or [true]",
                    );
                    continue;
                }
            };
            if list.is_empty() {
                errs.push(
                    &k,
                    "has no values, so no one could approve: list the accepted values",
                );
                continue;
            }
            let mut values = Vec::new();
            for (i, v) in list.into_iter().enumerate() {
                match v {
                    Value::String(s) if !s.is_empty() => values.push(ClaimValue::Str(s)),
                    Value::Bool(b) => values.push(ClaimValue::Bool(b)),
                    Value::Number(n) => errs.push(
                        &format!("{k}[{i}]"),
                        format!("{n} is a number: quote it (\"{n}\") to match a string claim"),
                    ),
                    _ => errs.push(
                        &format!("{k}[{i}]"),
                        "must be a non-empty string or true/false",
                    ),
                }
            }
            p.require_claims.insert(name, values);
        }
    }
    if let Some(acr) = f.acr_values {
        if acr.is_empty()
            || acr
                .iter()
                .any(|a| a.is_empty() || !a.chars().all(|c| c.is_ascii_graphic()))
        {
            errs.push(
                &key("acr_values"),
                "must list at least one value, each printable ASCII without spaces",
            );
        }
        p.acr_values = acr;
    }
    if let Some(age) = f.max_age {
        if age > 31_536_000 {
            errs.push(&key("max_age"), "must be at most 31536000 seconds (a year)");
        }
        p.max_age = Some(age);
    }
    if let Some(r) = f.refresh_tokens {
        p.refresh_tokens = r;
    }
    if let Some(v) = f.verification_uri_complete {
        p.verification_uri_complete = v;
    }
    if let Some(m) = f.max_pending {
        if m == 0 {
            errs.push(&key("max_pending"), "must be at least 1");
        } else if max_pending.is_some_and(|store| m > store) {
            errs.push(
                &key("max_pending"),
                format!(
                    "{m} is more than store.max_pending ({}), which bounds every client together",
                    max_pending.unwrap_or_default()
                ),
            );
        }
        p.max_pending = Some(m);
    }
    p
}
