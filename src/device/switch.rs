//! The operators' run-time kill switch (`POST /clients/{id}/disable`): which clients an
//! operator has turned off or on, over their `clients[].enabled` (the default).
//!
//! The store holds the switch ([`super::Store::set_client_enabled`]), so with Redis every
//! instance shares it and a restart keeps it. Each instance reads it from a copy that the
//! upkeep task refreshes every [`REFRESH`]: requests never wait for the store to learn it.
//! The instance an operator calls sets its copy at once; the others follow within
//! [`REFRESH`]. Grants are never left to that delay: disabling denies the client's pending
//! grants in the store, at once, and the upkeep sweep denies any created meanwhile.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use crate::config::Client;

/// How often each instance reads the switch again.
pub const REFRESH: Duration = Duration::from_secs(1);

/// What an operator has set, by client id.
#[derive(Debug, Default)]
pub struct ClientSwitch {
    set: RwLock<HashMap<String, bool>>,
}

impl ClientSwitch {
    /// Whether `client` may be used now: the operator's setting, else the configuration's.
    pub fn enabled(&self, client: &Client) -> bool {
        self.operator(&client.client_id).unwrap_or(client.enabled)
    }

    /// What an operator has set for `client_id`, if anything.
    pub fn operator(&self, client_id: &str) -> Option<bool> {
        self.set
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(client_id)
            .copied()
    }

    /// Records one setting (the instance an operator called, at once).
    pub fn set(&self, client_id: &str, enabled: bool) {
        self.set
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(client_id.to_string(), enabled);
    }

    /// Replaces the copy with what the store holds.
    pub fn replace(&self, states: Vec<(String, bool)>) {
        *self.set.write().unwrap_or_else(PoisonError::into_inner) = states.into_iter().collect();
    }
}
