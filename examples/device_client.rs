//! A device client that knows only RFC 8628 and the issuer URL: it reads discovery, asks for a
//! device code, shows the code and the URL, polls the token endpoint (honouring `interval` and
//! `slow_down`), and prints what it receives. It is the demo's "TV".
//!
//! ```text
//! cargo run --example device_client -- http://localhost:8080 tv-app "openid profile offline_access"
//! ```
//!
//! A confidential client (one with `client_secret` in the gateway's config) authenticates with
//! `client_secret_post`: set `DEVICE_CLIENT_SECRET`.
//!
//! Then open the printed URL in a browser, check the code, press Approve, and log in with any
//! user name and password at the demo IdP. The client prints the tokens when they arrive. The
//! same steps by hand:
//!
//! ```text
//! curl -s http://localhost:8080/.well-known/openid-configuration | jq .device_authorization_endpoint
//! curl -s -d client_id=tv-app -d client_secret=$TV_APP_SECRET -d scope=openid \
//!      http://localhost:8080/device/code
//! curl -s -d grant_type=urn:ietf:params:oauth:grant-type:device_code -d client_id=tv-app \
//!      -d client_secret=$TV_APP_SECRET -d device_code=<device_code> http://localhost:8080/token
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::Value;

const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let issuer = args
        .next()
        .unwrap_or_else(|| "http://localhost:8080".into());
    let client_id = args.next().unwrap_or_else(|| "tv-app".into());
    let scope = args
        .next()
        .unwrap_or_else(|| "openid profile offline_access".into());
    let secret = std::env::var("DEVICE_CLIENT_SECRET").ok();
    let with_secret = |mut form: Vec<(&'static str, String)>| {
        if let Some(s) = &secret {
            form.push(("client_secret", s.clone()));
        }
        form
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()?;

    let disc: Value = http
        .get(format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        ))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let device_endpoint = disc["device_authorization_endpoint"]
        .as_str()
        .ok_or("the issuer does not advertise a device_authorization_endpoint")?;
    let token_endpoint = disc["token_endpoint"].as_str().ok_or("no token_endpoint")?;

    let dev: Value = http
        .post(device_endpoint)
        .form(&with_secret(vec![
            ("client_id", client_id.clone()),
            ("scope", scope.clone()),
        ]))
        .send()
        .await?
        .json()
        .await?;
    if let Some(e) = dev["error"].as_str() {
        return Err(format!(
            "device authorization refused: {e}: {}",
            dev["error_description"]
        )
        .into());
    }
    let device_code = dev["device_code"].as_str().ok_or("no device_code")?;
    let mut interval = dev["interval"].as_u64().unwrap_or(5);
    println!();
    println!(
        "  On your phone or computer, open:  {}",
        dev["verification_uri"].as_str().unwrap_or_default()
    );
    println!(
        "  and enter the code:               {}",
        dev["user_code"].as_str().unwrap_or_default()
    );
    println!();
    println!(
        "  (or open {} directly)",
        dev["verification_uri_complete"]
            .as_str()
            .unwrap_or_default()
    );
    println!();
    println!(
        "Waiting for approval (polling every {interval} s, code valid {} s)...",
        dev["expires_in"]
    );

    loop {
        tokio::time::sleep(Duration::from_secs(interval)).await;
        let resp: Value = http
            .post(token_endpoint)
            .form(&with_secret(vec![
                ("grant_type", DEVICE_GRANT.to_string()),
                ("device_code", device_code.to_string()),
                ("client_id", client_id.clone()),
            ]))
            .send()
            .await?
            .json()
            .await?;
        match resp["error"].as_str() {
            None => {
                println!("\nApproved. Tokens received:");
                for key in ["token_type", "expires_in", "scope"] {
                    println!("  {key}: {}", resp[key]);
                }
                for key in ["access_token", "refresh_token", "id_token"] {
                    if let Some(t) = resp[key].as_str() {
                        println!("  {key}: {}... ({} chars)", &t[..t.len().min(16)], t.len());
                    }
                }
                if let Some(claims) = resp["id_token"].as_str().and_then(id_token_claims) {
                    println!("  signed in as: {}", claims["sub"]);
                }
                return Ok(());
            }
            Some("authorization_pending") => {}
            Some("slow_down") => interval += 5,
            Some(e) => {
                println!(
                    "\nNo tokens: {e} ({})",
                    resp["error_description"].as_str().unwrap_or("")
                );
                std::process::exit(1);
            }
        }
    }
}

fn id_token_claims(jwt: &str) -> Option<Value> {
    use base64::Engine;
    let payload = jwt.split('.').nth(1)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&raw).ok()
}
