//! Rewriting the IdP's discovery documents (RFC 8414 §2, RFC 8628 §4) so device clients find the
//! device flow by themselves: `device_authorization_endpoint` is added and the device-code grant
//! type joins `grant_types_supported`. Everything else stays as the IdP wrote it, in its order.

use serde_json::{Map, Value};

/// The grant type URN of RFC 8628 §3.4.
pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// The discovery paths for an issuer, the OpenID Connect one (OIDC Discovery §4) first: then
/// RFC 8414 §3's, which inserts the well-known segment before the issuer's path, and, for an
/// issuer with a path, the appended form many IdPs serve instead (Keycloak:
/// `/realms/demo/.well-known/oauth-authorization-server`).
pub fn well_known_paths(issuer_path: &str) -> Vec<String> {
    let p = issuer_path.trim_end_matches('/');
    let mut paths = vec![
        format!("{p}/.well-known/openid-configuration"),
        format!("/.well-known/oauth-authorization-server{p}"),
    ];
    if !p.is_empty() {
        paths.push(format!("{p}/.well-known/oauth-authorization-server"));
    }
    paths
}

/// Returns the rewritten document, or `None` when the body is not a JSON object (then it is
/// relayed untouched).
pub fn rewrite(body: &[u8], device_endpoint: &str) -> Option<Vec<u8>> {
    rewrite_for(body, device_endpoint, None)
}

/// [`rewrite`], and when the gateway has its own origin (`gateway_origin`, e.g.
/// `https://device.example.com`), `token_endpoint` is moved to it (same path), so that device
/// polls reach the gateway; every other grant sent there passes through to the IdP.
pub fn rewrite_for(
    body: &[u8],
    device_endpoint: &str,
    gateway_origin: Option<&str>,
) -> Option<Vec<u8>> {
    let mut doc: Map<String, Value> = serde_json::from_slice(body).ok()?;
    if let Some(origin) = gateway_origin {
        let moved = doc
            .get("token_endpoint")
            .and_then(Value::as_str)
            .and_then(|t| url::Url::parse(t).ok())
            .map(|t| {
                format!(
                    "{}{}",
                    origin.trim_end_matches('/'),
                    &t[url::Position::BeforePath..]
                )
            });
        if let Some(t) = moved {
            doc.insert("token_endpoint".into(), Value::String(t));
        }
    }
    doc.insert(
        "device_authorization_endpoint".into(),
        Value::String(device_endpoint.into()),
    );
    match doc.get_mut("grant_types_supported") {
        Some(Value::Array(types)) => {
            if !types.iter().any(|t| t == DEVICE_GRANT) {
                types.push(DEVICE_GRANT.into());
            }
        }
        _ => {
            // RFC 8414 §2: when omitted the default is ["authorization_code", "implicit"].
            doc.insert(
                "grant_types_supported".into(),
                serde_json::json!(["authorization_code", "implicit", DEVICE_GRANT]),
            );
        }
    }
    serde_json::to_vec(&doc).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_endpoint_and_grant_keeping_the_rest() {
        let doc = br#"{"issuer":"https://id.example","token_endpoint":"https://id.example/token","grant_types_supported":["authorization_code","refresh_token"]}"#;
        let out: Value =
            serde_json::from_slice(&rewrite(doc, "https://id.example/device/code").unwrap())
                .unwrap();
        assert_eq!(
            out["device_authorization_endpoint"],
            "https://id.example/device/code"
        );
        assert_eq!(
            out["grant_types_supported"],
            serde_json::json!(["authorization_code", "refresh_token", DEVICE_GRANT])
        );
        assert_eq!(out["token_endpoint"], "https://id.example/token");
        // Key order is kept: issuer stays first.
        let text = String::from_utf8(rewrite(doc, "x").unwrap()).unwrap();
        assert!(text.starts_with(r#"{"issuer""#), "{text}");
    }

    #[test]
    fn default_grant_types_and_idempotence() {
        let out = rewrite(br#"{"issuer":"x"}"#, "e").unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["grant_types_supported"][2], DEVICE_GRANT);
        let again: Value = serde_json::from_slice(&rewrite(&out, "e").unwrap()).unwrap();
        assert_eq!(again, v);
        assert!(rewrite(b"[1]", "e").is_none());
        assert!(rewrite(b"not json", "e").is_none());
    }

    #[test]
    fn numbers_survive_the_rewrite() {
        // Found by the discovery_rewrite fuzz target: without serde_json's float_roundtrip,
        // 4.5e100 came back as 4.4999999999999996e+100 and flipped on every pass.
        let mut doc = br#"{"x":4.5e100,"y":0.1,"z":18446744073709551615}"#.to_vec();
        for _ in 0..3 {
            doc = rewrite(&doc, "e").unwrap();
            let v: Value = serde_json::from_slice(&doc).unwrap();
            assert_eq!(v["x"].as_f64(), Some(4.5e100));
            assert_eq!(v["y"].as_f64(), Some(0.1));
            assert_eq!(v["z"].as_u64(), Some(u64::MAX));
        }
    }

    #[test]
    fn own_origin_moves_the_token_endpoint_only() {
        let doc = br#"{"issuer":"https://id.example/realms/x","token_endpoint":"https://id.example/realms/x/token?a=1","jwks_uri":"https://id.example/certs"}"#;
        let out: Value = serde_json::from_slice(
            &rewrite_for(
                doc,
                "https://gw.example/device/code",
                Some("https://gw.example"),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            out["token_endpoint"],
            "https://gw.example/realms/x/token?a=1"
        );
        assert_eq!(out["issuer"], "https://id.example/realms/x");
        assert_eq!(out["jwks_uri"], "https://id.example/certs");
    }

    #[test]
    fn paths() {
        assert_eq!(
            well_known_paths("/"),
            [
                "/.well-known/openid-configuration",
                "/.well-known/oauth-authorization-server"
            ]
        );
        assert_eq!(
            well_known_paths("/realms/demo"),
            [
                "/realms/demo/.well-known/openid-configuration",
                "/.well-known/oauth-authorization-server/realms/demo",
                "/realms/demo/.well-known/oauth-authorization-server"
            ]
        );
    }
}
