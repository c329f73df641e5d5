//! A device client built only on the `openidconnect` crate's RFC 8628 support and the issuer
//! URL, as a third-party client author would write it: it reads discovery (finding the
//! `device_authorization_endpoint` that devicegate adds), asks for a device code, shows the
//! code, the URL and a QR code in the terminal, polls the token endpoint (the crate honours
//! `interval` and `slow_down`), verifies the ID token against the IdP's keys, and uses the
//! refresh token once. It is the demo's "TV".
//!
//! ```text
//! cargo run --example device_client -- http://localhost:8080 tv-app "openid profile offline_access"
//! ```
//!
//! A confidential client (one with `client_secret` in the gateway's config) authenticates with
//! `client_secret_post`: set `DEVICE_CLIENT_SECRET`.
//!
//! Then open the printed URL in a browser (or scan the QR code), check the code, press Approve,
//! and log in with any user name and password at the demo IdP. The client prints the tokens
//! when they arrive. The same steps by hand:
//!
//! ```text
//! curl -s http://localhost:8080/.well-known/openid-configuration | jq .device_authorization_endpoint
//! curl -s -d client_id=tv-app -d client_secret=$TV_APP_SECRET -d scope=openid \
//!      http://localhost:8080/device/code
//! curl -s http://localhost:8080/device/qr?user_code=<user_code> > qr.svg   # the QR as an image
//! curl -s -d grant_type=urn:ietf:params:oauth:grant-type:device_code -d client_id=tv-app \
//!      -d client_secret=$TV_APP_SECRET -d device_code=<device_code> http://localhost:8080/token
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClient, CoreClientAuthMethod,
    CoreDeviceAuthorizationResponse, CoreGrantType, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreResponseMode,
    CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AdditionalProviderMetadata, AuthType, ClientId, ClientSecret, DeviceAuthorizationUrl,
    IssuerUrl, Nonce, OAuth2TokenResponse, ProviderMetadata, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};

/// Discovery with the one field the core metadata lacks (RFC 8628 §4).
#[derive(Clone, Debug, Deserialize, Serialize)]
struct DeviceEndpoint {
    device_authorization_endpoint: DeviceAuthorizationUrl,
}
impl AdditionalProviderMetadata for DeviceEndpoint {}

type Metadata = ProviderMetadata<
    DeviceEndpoint,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

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
    // Redirects off: an OAuth client must not follow them to other hosts (SSRF).
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        // Shown on the consent page as the device's software.
        .user_agent(concat!("devicegate-demo-tv/", env!("CARGO_PKG_VERSION")))
        .build()?;

    let metadata = Metadata::discover_async(IssuerUrl::new(issuer)?, &http).await?;
    let device_endpoint = metadata
        .additional_metadata()
        .device_authorization_endpoint
        .clone();
    let client = CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(client_id),
        secret.map(ClientSecret::new),
    )
    .set_device_authorization_url(device_endpoint)
    .set_auth_type(AuthType::RequestBody);

    let details: CoreDeviceAuthorizationResponse = client
        .exchange_device_code()
        .add_scopes(scope.split_whitespace().map(|s| Scope::new(s.into())))
        .request_async(&http)
        .await?;
    let code = details.user_code().secret();
    println!();
    println!(
        "  On your phone or computer, open:  {}",
        details.verification_uri().as_str()
    );
    println!("  and enter the code:               {code}");
    println!();
    if let Some(complete) = details.verification_uri_complete() {
        if let Some(qr) = devicegate::pages::qr::terminal(complete.secret()) {
            println!("  or scan:\n");
            for line in qr.lines() {
                println!("    {line}");
            }
            println!();
        }
        println!("  (or open {} directly)", complete.secret());
        println!();
    }
    println!(
        "Waiting for approval (polling every {} s, code valid {} s)...",
        details.interval().as_secs(),
        details.expires_in().as_secs()
    );

    let token = client
        .exchange_device_access_token(&details)?
        .request_async(&http, tokio::time::sleep, None)
        .await;
    let token = match token {
        Ok(t) => t,
        Err(e) => {
            println!("\nNo tokens: {e}");
            if let openidconnect::RequestTokenError::ServerResponse(r) = &e {
                println!("  ({})", r.error_description().map_or("", String::as_str));
            }
            std::process::exit(1);
        }
    };
    println!("\nApproved. Tokens received:");
    println!("  token_type: {:?}", token.token_type());
    if let Some(d) = token.expires_in() {
        println!("  expires_in: {} s", d.as_secs());
    }
    let scopes: Vec<&str> = token
        .scopes()
        .into_iter()
        .flatten()
        .map(|s| s.as_str())
        .collect();
    println!("  scope: {:?}", scopes.join(" "));
    let short = |t: &str| format!("{}... ({} chars)", &t[..t.len().min(16)], t.len());
    println!("  access_token: {}", short(token.access_token().secret()));
    if let Some(r) = token.refresh_token() {
        println!("  refresh_token: {}", short(r.secret()));
    }
    if let Some(id_token) = token.id_token() {
        // Signature (the IdP's JWKS), issuer, audience and expiry. There is no nonce in the
        // device flow (the device never sends an authorization request).
        let claims = id_token.claims(&client.id_token_verifier(), |_: Option<&Nonce>| Ok(()))?;
        println!(
            "  id_token: verified, signed in as: {:?}",
            claims.subject().as_str()
        );
    }
    if let Some(refresh) = token.refresh_token() {
        let fresh = client
            .exchange_refresh_token(refresh)?
            .request_async(&http)
            .await?;
        println!(
            "Refreshed: a new access token ({} chars) from the refresh token.",
            fresh.access_token().secret().len()
        );
    }
    Ok(())
}
