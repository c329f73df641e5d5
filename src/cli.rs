//! `devicegate admin …`: the operators' client of the admin API, reading the address
//! (`admin.listen`) and the token (`admin.token`) from the same configuration file as the
//! gateway.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use clap::Subcommand;

use crate::config::Config;

/// One admin API call.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// Pending grants and those that ended in the last hour (GET /grants).
    Grants {
        /// Only this client's.
        #[arg(long)]
        client_id: Option<String>,
        /// Only these statuses, comma-separated (pending, authorizing, approved, delivered,
        /// denied, expired).
        #[arg(long)]
        status: Option<String>,
    },
    /// Stop one device login: the device gets access_denied (POST /grants/{id}/deny).
    Deny { grant_id: String },
    /// Each client's policy, state and pending grants (GET /clients).
    Clients,
    /// Turn a client off on every instance, denying its pending grants.
    Disable { client_id: String },
    /// Turn a client on again.
    Enable { client_id: String },
}

impl AdminCommand {
    /// The method and path (with its query) of the call.
    pub fn request(&self) -> (&'static str, String) {
        let seg = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        match self {
            Self::Grants { client_id, status } => {
                let mut q = form_urlencoded::Serializer::new(String::new());
                if let Some(c) = client_id {
                    q.append_pair("client_id", c);
                }
                if let Some(s) = status {
                    q.append_pair("status", s);
                }
                let q = q.finish();
                let path = if q.is_empty() {
                    "/grants".to_string()
                } else {
                    format!("/grants?{q}")
                };
                ("GET", path)
            }
            Self::Deny { grant_id } => ("POST", format!("/grants/{}/deny", seg(grant_id))),
            Self::Clients => ("GET", "/clients".into()),
            Self::Disable { client_id } => ("POST", format!("/clients/{}/disable", seg(client_id))),
            Self::Enable { client_id } => ("POST", format!("/clients/{}/enable", seg(client_id))),
        }
    }
}

/// Where to reach a listener bound to `addr`: a wildcard address is reached on loopback.
pub fn reach(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// Runs one call against the gateway `config` describes: the answer's JSON, pretty, on
/// success; a readable error otherwise.
pub fn run(config: &Config, command: &AdminCommand) -> Result<String, String> {
    let addr = config
        .admin_listen
        .ok_or("admin.listen is not set: the admin API has no listener")?;
    let token = config
        .admin_token
        .as_ref()
        .ok_or("admin.token is not set: the admin API is off")?;
    let (method, path) = command.request();
    let url = format!("http://{}{path}", reach(addr));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start: {e}"))?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| format!("cannot start: {e}"))?;
        let request = match method {
            "POST" => client.post(&url),
            _ => client.get(&url),
        };
        let answer = request
            .bearer_auth(token.expose())
            .send()
            .await
            .map_err(|e| format!("cannot reach the admin API at {}: {e}", reach(addr)))?;
        let status = answer.status();
        let text = answer
            .text()
            .await
            .map_err(|e| format!("the admin API's answer could not be read: {e}"))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|_| format!("the admin API answered {status} with: {text}"))?;
        if status.is_success() {
            Ok(serde_json::to_string_pretty(&json).unwrap_or(text))
        } else {
            let what = json["error_description"]
                .as_str()
                .or_else(|| json["error"].as_str())
                .unwrap_or("failed");
            Err(format!("{method} {path}: {} {what}", status.as_u16()))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_become_their_paths() {
        let grants = AdminCommand::Grants {
            client_id: Some("tv app".into()),
            status: Some("pending,authorizing".into()),
        };
        assert_eq!(
            grants.request(),
            (
                "GET",
                "/grants?client_id=tv+app&status=pending%2Cauthorizing".into()
            )
        );
        assert_eq!(
            AdminCommand::Disable {
                client_id: "a/b".into()
            }
            .request(),
            ("POST", "/clients/a%2Fb/disable".into())
        );
        assert_eq!(
            reach("0.0.0.0:9100".parse().unwrap()),
            "127.0.0.1:9100".parse().unwrap()
        );
    }
}
