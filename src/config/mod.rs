//! Configuration: the YAML file format, and the validated [`Config`] the server runs on.
//!
//! Two layers, as river does: `File*` structs mirror the YAML (serde, `deny_unknown_fields`),
//! and [`Config::from_yaml`] turns them into checked runtime values. That conversion is the one
//! place errors are found, and it collects all of them (each naming its key) instead of
//! stopping at the first, so `devicegate --check` shows an operator everything at once.
//!
//! `${NAME}` in any string value is replaced by the environment variable `NAME` (for secrets);
//! an unset variable is an error naming the key. `$${` writes a literal `${`.

use std::fmt;

use serde::de::DeserializeOwned;
use serde_norway::Value;

mod env;
mod events;
mod file;
mod policy;
mod runtime;
mod ui;
mod validate;

pub use events::{Events, Webhook, EVENT_TYPES};
pub use policy::{ClaimValue, Policy, Proximity, AUTH_TIME_SKEW_SECS};
pub use runtime::*;
pub use ui::{contrast, Colors, ScopeText, Ui};

use file::{FileAdmin, FileDevice, FileListenTls, FileServer, FileStore, FileUpstream};
use validate::*;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending key, e.g. `clients[1].client_id`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.0 {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "public_url",
    "upstream",
    "device",
    "store",
    "listen_tls",
    "limits",
    "admin",
    "events",
    "log",
    "clients",
    "server",
    "ui",
    "policy",
];

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                key: path.display().to_string(),
                message: format!("cannot read the file: {e}"),
            }])
        })?;
        Self::from_yaml(&text, &|name| std::env::var(name).ok())
    }

    /// Validates a configuration text; `env` looks up `${NAME}` variables.
    pub fn from_yaml(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigErrors> {
        let mut errs = Errors::default();
        let mut root: Value = match serde_norway::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                errs.push("(file)", format!("not valid YAML: {e}"));
                return Err(ConfigErrors(errs.0));
            }
        };
        env::expand_env(&mut root, "", env, &mut errs);
        let Value::Mapping(map) = &root else {
            errs.push(
                "(file)",
                "must be a mapping of keys such as `listen` and `upstream`",
            );
            return Err(ConfigErrors(errs.0));
        };
        for k in map.keys() {
            let name = k.as_str().unwrap_or("?");
            if !TOP_LEVEL_KEYS.contains(&name) {
                errs.push(
                    name,
                    format!(
                        "unknown key, expected one of: {}",
                        TOP_LEVEL_KEYS.join(", ")
                    ),
                );
            }
        }
        let get = |k: &str| map.get(k).cloned();

        let listen = match section::<String>(&mut errs, "listen", get("listen")) {
            Some(s) => parse_socket_addr(&mut errs, "listen", &s, false),
            None => None,
        };
        let public_url = section::<String>(&mut errs, "public_url", get("public_url"))
            .and_then(|s| parse_origin(&mut errs, "public_url", &s));
        let upstream = section::<FileUpstream>(&mut errs, "upstream", get("upstream"))
            .and_then(|u| validate_upstream(&mut errs, u));
        let device = section_or_default::<FileDevice>(&mut errs, "device", get("device"))
            .and_then(|d| validate_device(&mut errs, d));
        let store = section_or_default::<FileStore>(&mut errs, "store", get("store"))
            .and_then(|s| validate_store(&mut errs, s));
        let server = section_or_default::<FileServer>(&mut errs, "server", get("server"))
            .and_then(|s| validate_server(&mut errs, s));
        let limits = section_or_default::<Limits>(&mut errs, "limits", get("limits"))
            .and_then(|l| validate_limits(&mut errs, l));
        let mut admin_token = None;
        let admin_listen = match get("admin") {
            None | Some(Value::Null) => Some(None),
            Some(v) => deserialize::<FileAdmin>(&mut errs, "admin", v)
                .and_then(|a| {
                    admin_token = events::validate_admin_token(&mut errs, a.token);
                    parse_socket_addr(&mut errs, "admin.listen", &a.listen, false)
                })
                .map(Some),
        };
        let events = section_or_default::<events::FileEvents>(&mut errs, "events", get("events"))
            .and_then(|e| events::validate_events(&mut errs, e));
        let listen_tls = match get("listen_tls") {
            None | Some(Value::Null) => Some(None),
            Some(v) => deserialize::<FileListenTls>(&mut errs, "listen_tls", v)
                .and_then(|t| validate_listen_tls(&mut errs, t))
                .map(Some),
        };
        let log = section_or_default::<Log>(&mut errs, "log", get("log"));
        if let Some(l) = &log {
            if tracing_subscriber::EnvFilter::try_new(&l.level).is_err() {
                errs.push(
                    "log.level",
                    "not a log filter (e.g. info, debug, devicegate=debug)",
                );
            }
        }
        let policy = section_or_default::<policy::FilePolicy>(&mut errs, "policy", get("policy"))
            .map(|f| {
                let max = store.as_ref().map(|s| s.max_pending);
                policy::validate_policy(&mut errs, "policy", f, &Policy::default(), max)
            })
            .unwrap_or_default();
        let clients = validate_clients(
            &mut errs,
            get("clients"),
            public_url.as_ref(),
            &policy,
            store.as_ref().map(|s| s.max_pending),
        );
        let ui = section_or_default::<ui::FileUi>(&mut errs, "ui", get("ui"))
            .map(|f| ui::validate_ui(&mut errs, f, public_url.as_ref()));
        if let (Some(l), Some(Some(a))) = (listen, admin_listen) {
            if l == a {
                errs.push("admin.listen", "must differ from listen (the public port)");
            }
        }
        if let (Some(l), Some(Some(t))) = (listen, &listen_tls) {
            if l == t.listen {
                errs.push("listen_tls.listen", "must differ from listen");
            }
        }
        match (
            listen, public_url, upstream, device, store, limits, server, ui,
        ) {
            (
                Some(listen),
                Some(public_url),
                Some(upstream),
                Some(device),
                Some(store),
                Some(limits),
                Some(server),
                Some(ui),
            ) if errs.0.is_empty() => Ok(Config {
                ui,
                listen_tls: listen_tls.flatten(),
                admin_listen: admin_listen.flatten(),
                admin_token,
                events: events.unwrap_or_default(),
                log: log.unwrap_or_default(),
                listen,
                public_url,
                upstream,
                device,
                store,
                limits,
                clients,
                policy,
                server,
            }),
            _ => Err(ConfigErrors(errs.0)),
        }
    }
}

#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, key: &str, message: impl Into<String>) {
        self.0.push(ConfigError {
            key: key.to_string(),
            message: message.into(),
        });
    }
}

fn section<T: DeserializeOwned>(errs: &mut Errors, key: &str, v: Option<Value>) -> Option<T> {
    match v {
        None | Some(Value::Null) => {
            errs.push(key, "is required");
            None
        }
        Some(v) => deserialize(errs, key, v),
    }
}

fn section_or_default<T: DeserializeOwned + Default>(
    errs: &mut Errors,
    key: &str,
    v: Option<Value>,
) -> Option<T> {
    match v {
        None | Some(Value::Null) => Some(T::default()),
        Some(v) => deserialize(errs, key, v),
    }
}

fn deserialize<T: DeserializeOwned>(errs: &mut Errors, key: &str, v: Value) -> Option<T> {
    match serde_norway::from_value::<T>(v) {
        Ok(t) => Some(t),
        Err(e) => {
            errs.push(key, e.to_string());
            None
        }
    }
}

/// Replaces `${NAME}` in every string scalar; unset variables are errors naming the key.
#[cfg(test)]
mod tests;
