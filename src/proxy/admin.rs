//! The admin listener (`admin.listen`, never the public port).
//!
//! Open to whoever reaches the listener: `/healthz` (the process answers), `/readyz` (the
//! grant store answers and the IdP's discovery is loaded) and `/metrics` (Prometheus text).
//!
//! The admin API, behind `Authorization: Bearer <admin.token>` (compared in constant time; a
//! missing or wrong token, or no `admin.token` configured, is 401):
//! - `GET /grants[?client_id=…&status=…]`: pending grants and those that ended in the last
//!   hour, newest first; `status` may list several, comma-separated.
//! - `POST /grants/{id}/deny`: the device gets `access_denied` at its next poll.
//! - `GET /clients`: each client's effective policy, state and pending grants.
//! - `POST /clients/{client_id}/disable`, `/enable`: the run-time kill switch, shared by every
//!   instance on the store; disabling also denies the client's pending grants.
//!
//! Answers are JSON; errors are `{"error", "error_description"}`.

use std::sync::Arc;

use async_trait::async_trait;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::operator::{Operator, Refused};
use crate::device::StoreError;
use crate::metrics::Metrics;
use crate::oidc::Oidc;

/// The statuses `GET /grants?status=` accepts.
pub const STATUSES: &[&str] = &[
    "pending",
    "authorizing",
    "approved",
    "delivered",
    "denied",
    "expired",
];

/// The most of a request body the admin API reads (its requests carry none).
const MAX_BODY: usize = 4096;

/// What the admin endpoints look at.
pub struct Admin {
    pub operator: Arc<Operator>,
    pub oidc: Arc<Oidc>,
    pub metrics: Arc<Metrics>,
}

/// One admin answer.
struct Answer {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    /// `WWW-Authenticate` (401) or `Allow` (405).
    extra: Option<(&'static str, &'static str)>,
}

impl Answer {
    fn json(status: u16, body: &Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: body.to_string().into_bytes(),
            extra: None,
        }
    }

    fn error(status: u16, error: &str, description: &str) -> Self {
        Self::json(
            status,
            &json!({"error": error, "error_description": description}),
        )
    }

    fn store(e: &StoreError) -> Self {
        tracing::warn!(error = %e, "admin API: the store did not answer");
        Self::error(
            503,
            "temporarily_unavailable",
            "the grant store did not answer",
        )
    }

    fn allow(mut self, methods: &'static str) -> Self {
        self.extra = Some(("allow", methods));
        self
    }
}

impl Admin {
    async fn ready(&self) -> Answer {
        let store = self.operator.device.stored().await;
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
        Answer::json(status, &body)
    }

    /// Whether the request carries the admin token. Digests are compared, so neither the
    /// time nor the length tells how much of a guess was right.
    fn authorized(&self, authorization: Option<&[u8]>) -> bool {
        let Some(token) = &self.operator.config.admin_token else {
            return false;
        };
        let presented = authorization
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| {
                let (scheme, rest) = h.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            });
        let Some(presented) = presented else {
            return false;
        };
        let want = Sha256::digest(token.expose().as_bytes());
        bool::from(Sha256::digest(presented.as_bytes()).ct_eq(&want))
    }

    async fn api(&self, method: &str, path: &str, query: Option<&str>, caller: &str) -> Answer {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method, parts.as_slice()) {
            ("GET", ["grants"]) => self.list_grants(query).await,
            (_, ["grants"]) => Answer::error(405, "invalid_request", "use GET").allow("GET"),
            ("POST", ["grants", id, "deny"]) => self.deny(id, caller).await,
            (_, ["grants", _, "deny"]) => {
                Answer::error(405, "invalid_request", "use POST").allow("POST")
            }
            ("GET", ["clients"]) => self.clients().await,
            (_, ["clients"]) => Answer::error(405, "invalid_request", "use GET").allow("GET"),
            ("POST", ["clients", id, action @ ("disable" | "enable")]) => {
                self.switch(id, *action == "enable", caller).await
            }
            (_, ["clients", _, "disable" | "enable"]) => {
                Answer::error(405, "invalid_request", "use POST").allow("POST")
            }
            _ => Answer::error(404, "not_found", "no such admin endpoint"),
        }
    }

    async fn list_grants(&self, query: Option<&str>) -> Answer {
        let mut client = None;
        let mut statuses: Option<Vec<String>> = None;
        for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match k.as_ref() {
                "client_id" => client = Some(v.into_owned()),
                "status" => {
                    let list: Vec<String> = v.split(',').map(str::to_string).collect();
                    if let Some(bad) = list.iter().find(|s| !STATUSES.contains(&s.as_str())) {
                        return Answer::error(
                            400,
                            "invalid_request",
                            &format!(
                                "unknown status '{bad}', expected one of: {}",
                                STATUSES.join(", ")
                            ),
                        );
                    }
                    statuses = Some(list);
                }
                other => {
                    return Answer::error(
                        400,
                        "invalid_request",
                        &format!("unknown parameter '{other}', expected client_id or status"),
                    )
                }
            }
        }
        if let Some(c) = &client {
            if self.operator.client(c).is_none() {
                return Answer::error(
                    400,
                    "invalid_request",
                    &format!("no client '{c}' is configured"),
                );
            }
        }
        match self.operator.grants(true).await {
            Ok(views) => {
                let views: Vec<_> = views
                    .into_iter()
                    .filter(|v| client.as_ref().is_none_or(|c| *c == v.client_id))
                    .filter(|v| {
                        statuses
                            .as_ref()
                            .is_none_or(|s| s.iter().any(|x| *x == v.status))
                    })
                    .collect();
                Answer::json(200, &json!({ "grants": views }))
            }
            Err(e) => Answer::store(&e),
        }
    }

    async fn deny(&self, id: &str, caller: &str) -> Answer {
        match self.operator.deny(id, caller).await {
            Ok(view) => Answer::json(200, &json!({ "grant": view })),
            Err(Refused::Unknown) => Answer::error(404, "not_found", "no grant has this id"),
            Err(Refused::Ended(view)) => Answer::json(
                409,
                &json!({
                    "error": "conflict",
                    "error_description": format!("the grant has already ended ({})", view.status),
                    "grant": view,
                }),
            ),
            Err(Refused::Store(e)) => Answer::store(&e),
        }
    }

    fn client_json(&self, client_id: &str, pending: usize) -> Value {
        let Some(c) = self.operator.client(client_id) else {
            return Value::Null;
        };
        let set = self.operator.switch.operator(client_id);
        json!({
            "client_id": c.client_id,
            "enabled": self.operator.switch.enabled(c),
            "set_by": if set.is_some() { "operator" } else { "config" },
            "configured_enabled": c.enabled,
            "pending_grants": pending,
            "policy": c.policy.to_json(),
        })
    }

    async fn clients(&self) -> Answer {
        // The switch as the store holds it now, not as last refreshed.
        if let Err(e) = self.operator.refresh().await {
            return Answer::store(&e);
        }
        match self.operator.pending_by_client().await {
            Ok(counts) => {
                let list: Vec<Value> = self
                    .operator
                    .config
                    .clients
                    .keys()
                    .map(|id| self.client_json(id, counts.get(id).copied().unwrap_or(0)))
                    .collect();
                Answer::json(200, &json!({ "clients": list }))
            }
            Err(e) => Answer::store(&e),
        }
    }

    async fn switch(&self, client_id: &str, enabled: bool, caller: &str) -> Answer {
        if self.operator.client(client_id).is_none() {
            return Answer::error(404, "not_found", "no client has this id");
        }
        match self.operator.set_enabled(client_id, enabled, caller).await {
            Ok(denied) => {
                let pending = match self.operator.pending_by_client().await {
                    Ok(c) => c.get(client_id).copied().unwrap_or(0),
                    Err(e) => return Answer::store(&e),
                };
                let mut body = self.client_json(client_id, pending);
                if let Value::Object(m) = &mut body {
                    m.insert("denied_grants".into(), denied.into());
                }
                Answer::json(200, &json!({ "client": body }))
            }
            Err(e) => Answer::store(&e),
        }
    }

    async fn answer(&self, session: &mut ServerSession) -> Answer {
        let head = session.req_header();
        let path = head.uri.path().to_string();
        let query = head.uri.query().map(str::to_string);
        let method = head.method.as_str().to_string();
        let authorization = head
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes().to_vec());
        match path.as_str() {
            "/healthz" => {
                return Answer {
                    status: 200,
                    content_type: "text/plain",
                    body: b"ok\n".to_vec(),
                    extra: None,
                }
            }
            "/readyz" => return self.ready().await,
            "/metrics" => {
                if let Ok(n) = self.operator.device.stored().await {
                    self.metrics
                        .pending_grants
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
                return Answer {
                    status: 200,
                    content_type: "text/plain; version=0.0.4",
                    body: self.metrics.render(),
                    extra: None,
                };
            }
            _ => {}
        }
        // The API's requests carry no body; one is read (and dropped) so the connection stays
        // usable, up to a bound.
        let mut read = 0;
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    read += chunk.len();
                    if read > MAX_BODY {
                        return Answer::error(
                            413,
                            "invalid_request",
                            "the admin API takes no body",
                        );
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    return Answer::error(400, "invalid_request", "the body could not be read")
                }
            }
        }
        let caller = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        if !self.authorized(authorization.as_deref()) {
            tracing::warn!(target: "audit", event = "admin_refused", path, client_ip = caller, "admin API call without the admin token");
            let mut a = Answer::error(
                401,
                "unauthorized",
                if self.operator.config.admin_token.is_some() {
                    "send Authorization: Bearer <admin.token>"
                } else {
                    "the admin API is off: set admin.token"
                },
            );
            a.extra = Some(("www-authenticate", "Bearer realm=\"devicegate admin\""));
            return a;
        }
        self.api(&method, &path, query.as_deref(), &caller).await
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let a = self.answer(session).await;
        let len = a.body.len();
        let mut builder = Response::builder()
            .status(a.status)
            .header(CONTENT_TYPE, a.content_type)
            .header(CONTENT_LENGTH, len)
            .header("cache-control", "no-store");
        if let Some((name, value)) = a.extra {
            builder = builder.header(name, value);
        }
        builder.body(a.body).unwrap_or_else(|e| {
            // Never an empty 200: say the answer failed.
            tracing::error!(error = %e, "admin answer not built");
            let mut failed = Response::new(b"server error\n".to_vec());
            *failed.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            failed
        })
    }
}
