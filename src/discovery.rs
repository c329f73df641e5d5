//! Rewriting the IdP's discovery documents (RFC 8414 §2, RFC 8628 §4) so device clients find the
//! device flow by themselves: `device_authorization_endpoint` is added and the device-code grant
//! type joins `grant_types_supported`. Everything else stays as the IdP wrote it, in its order.

use serde_json::{Map, Value};

/// The grant type URN of RFC 8628 §3.4.
pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// The discovery paths for an issuer (OIDC Discovery §4 and RFC 8414 §3, which inserts the
/// well-known segment before the issuer's path).
pub fn well_known_paths(issuer_path: &str) -> [String; 2] {
    let p = issuer_path.trim_end_matches('/');
    [
        format!("{p}/.well-known/openid-configuration"),
        format!("/.well-known/oauth-authorization-server{p}"),
    ]
}

/// Returns the rewritten document, or `None` when the body is not a JSON object (then it is
/// relayed untouched).
pub fn rewrite(body: &[u8], device_endpoint: &str) -> Option<Vec<u8>> {
    let mut doc: Map<String, Value> = serde_json::from_slice(body).ok()?;
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
                "/.well-known/oauth-authorization-server/realms/demo"
            ]
        );
    }
}
