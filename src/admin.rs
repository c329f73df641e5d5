//! The admin listener (`admin.listen`, off the public port): `/healthz` (the process answers),
//! `/readyz` (the grant store answers and the IdP's discovery is loaded) and `/metrics`
//! (Prometheus text format).

use std::sync::Arc;

use async_trait::async_trait;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::device::service::DeviceService;
use crate::metrics::Metrics;
use crate::oidc::Oidc;

/// What the admin endpoints look at.
pub struct Admin {
    pub device: DeviceService,
    pub oidc: Arc<Oidc>,
    pub metrics: Arc<Metrics>,
}

impl Admin {
    async fn ready(&self) -> (u16, Vec<u8>) {
        let store = self.device.stored().await;
        // Discovery, and keys that can verify the IdP's ID tokens.
        let upstream = match self.oidc.discovery().await {
            Ok(_) => self.oidc.check_keys().await,
            Err(e) => Err(e),
        };
        let word = |ok: bool| if ok { "ok" } else { "unavailable" };
        let body = json!({
            "store": word(store.is_ok()),
            "upstream": word(upstream.is_ok()),
        });
        let status = if store.is_ok() && upstream.is_ok() {
            200
        } else {
            503
        };
        (status, body.to_string().into_bytes())
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let (status, content_type, body) = match path.as_str() {
            "/healthz" => (200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                let (status, body) = self.ready().await;
                (status, "application/json", body)
            }
            "/metrics" => {
                if let Ok(n) = self.device.stored().await {
                    self.metrics
                        .pending_grants
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
                (200, "text/plain; version=0.0.4", self.metrics.render())
            }
            _ => (404, "text/plain", b"not found\n".to_vec()),
        };
        let len = body.len();
        Response::builder()
            .status(status)
            .header(CONTENT_TYPE, content_type)
            .header(CONTENT_LENGTH, len)
            .body(body)
            .unwrap_or_else(|e| {
                // Never an empty 200: say the answer failed.
                tracing::error!(error = %e, "admin answer not built");
                let mut failed = Response::new(b"server error\n".to_vec());
                *failed.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                failed
            })
    }
}
