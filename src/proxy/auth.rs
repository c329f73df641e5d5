//! Client authentication at the device and token endpoints: HTTP Basic (RFC 6749 §2.3.1,
//! `client_secret_basic`) or the form (`client_id`, and `client_secret` for
//! `client_secret_post`); public clients send no secret.

use std::collections::BTreeMap;

use base64::{engine::general_purpose::STANDARD, Engine};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Request;
use crate::config::Client;
use crate::device::switch::ClientSwitch;
use crate::error::OAuthError;
use crate::form::Params;

/// Client credentials presented with a request.
pub struct Credentials {
    pub client_id: String,
    /// The secret as presented; for HTTP Basic, form-decoded and (when different) raw.
    secrets: Vec<String>,
}

/// The parts of an `Authorization: Basic` header, form-decoded (RFC 6749 §2.3.1) and raw.
#[derive(Debug, PartialEq, Eq)]
struct Basic {
    id: String,
    raw_id: String,
    secret: String,
    raw_secret: String,
}

/// The client id and secret of an `Authorization: Basic` header (RFC 6749 §2.3.1: both parts
/// are form-urlencoded before base64).
fn basic_credentials(header: &str) -> Option<Basic> {
    let (scheme, creds) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = STANDARD.decode(creds.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    let decode = |part: &str| {
        form_urlencoded::parse(format!("x={part}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    (!id.is_empty()).then(|| Basic {
        id: decode(id),
        raw_id: id.to_string(),
        secret: decode(secret),
        raw_secret: secret.to_string(),
    })
}

/// The client id a request names, from HTTP Basic or the form, before anything is checked
/// (for counting refusals by client).
pub fn claimed_client_id(req: &Request<'_>, params: Option<&Params>) -> Option<String> {
    match req.header("authorization").and_then(basic_credentials) {
        Some(b) => Some(b.id),
        None => params.and_then(|p| p.get("client_id")).map(str::to_string),
    }
}

/// The credentials of a request, from HTTP Basic or the form.
pub fn credentials(
    req: &Request<'_>,
    params: &Params,
    clients: &BTreeMap<String, Client>,
) -> Result<Credentials, OAuthError> {
    let Some(header) = req.header("authorization") else {
        return Ok(Credentials {
            client_id: params.require("client_id")?.to_string(),
            secrets: params
                .get("client_secret")
                .map(str::to_string)
                .into_iter()
                .collect(),
        });
    };
    let basic = basic_credentials(header)
        .ok_or_else(|| OAuthError::InvalidClient("malformed HTTP Basic credentials".into()))?;
    // §2.3.1 form-encodes both parts, but most clients (requests, Authlib, libcurl as
    // oidc-agent uses it) send them raw: take the decoded id if it is registered, else the
    // raw one, and accept the secret either way.
    let client_id = if clients.contains_key(&basic.id) {
        basic.id
    } else {
        basic.raw_id
    };
    let mut secrets = vec![basic.secret];
    if basic.raw_secret != secrets[0] {
        secrets.push(basic.raw_secret);
    }
    if params.get("client_id").is_some_and(|p| p != client_id) {
        return Err(OAuthError::InvalidRequest(
            "client_id differs from the HTTP Basic user".into(),
        ));
    }
    if params.get("client_secret").is_some() {
        // §2.3: a client uses one authentication method per request.
        return Err(OAuthError::InvalidRequest(
            "send the client secret once: HTTP Basic or client_secret, not both".into(),
        ));
    }
    secrets.retain(|s| !s.is_empty());
    Ok(Credentials { client_id, secrets })
}

/// The registered client, authenticated when it has a secret (confidential client). Public
/// clients need none, and a secret they send is ignored. A disabled client is refused.
pub fn authenticate<'c>(
    clients: &'c BTreeMap<String, Client>,
    switch: &ClientSwitch,
    creds: &Credentials,
) -> Result<&'c Client, OAuthError> {
    let client = clients
        .get(&creds.client_id)
        .ok_or_else(|| OAuthError::InvalidClient("unknown client".into()))?;
    if let Some(expected) = &client.client_secret {
        if creds.secrets.is_empty() {
            return Err(OAuthError::InvalidClient(
                "this client must authenticate".into(),
            ));
        }
        // Constant time, length included: compare digests, not the secrets; every candidate
        // is compared, so the time does not tell which one matched.
        let want = Sha256::digest(expected.expose().as_bytes());
        let same = creds
            .secrets
            .iter()
            .fold(subtle::Choice::from(0), |acc, presented| {
                acc | Sha256::digest(presented.as_bytes()).ct_eq(&want)
            });
        if !bool::from(same) {
            return Err(OAuthError::InvalidClient(
                "client authentication failed".into(),
            ));
        }
    }
    if !switch.enabled(client) {
        // The kill switch (the configuration's, or an operator's at run time): no new grants,
        // and no delivery of tokens approved before it was set.
        return Err(OAuthError::InvalidClient("this client is disabled".into()));
    }
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_decoded() {
        let h = format!("Basic {}", STANDARD.encode("tv%3Aapp:s%2Bcret:x"));
        let b = basic_credentials(&h).unwrap();
        assert_eq!((b.id.as_str(), b.secret.as_str()), ("tv:app", "s+cret:x"));
        assert_eq!(
            (b.raw_id.as_str(), b.raw_secret.as_str()),
            ("tv%3Aapp", "s%2Bcret:x")
        );
        assert_eq!(basic_credentials("Bearer x"), None);
        assert_eq!(basic_credentials("Basic !!!"), None);
        assert_eq!(
            basic_credentials(&format!("Basic {}", STANDARD.encode(":x"))),
            None
        );
        let b = basic_credentials(&format!("Basic {}", STANDARD.encode("tv-app:"))).unwrap();
        assert_eq!((b.id.as_str(), b.secret.as_str()), ("tv-app", ""));
    }
}
