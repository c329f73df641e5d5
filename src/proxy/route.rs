//! Which route a request takes: one of the few paths devicegate owns, or pass-through to the
//! IdP. Every request is classified once, in `request_filter`, and the route is kept in the
//! per-request context.

use http::Method;

use crate::config::Device;
use crate::discovery::well_known_paths;

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The device authorization endpoint (RFC 8628 §3.1), at `authorization_path` and its
    /// `extra_authorization_paths`.
    DeviceAuthorization,
    /// A POST to the IdP's token endpoint: a device-code poll is answered here (§3.4), any
    /// other grant is relayed.
    Token,
    /// One of the IdP's discovery documents, relayed with the device flow added. `oidc` is the
    /// OpenID Connect document (the one the gateway also learns from).
    Discovery { oidc: bool },
    /// The verification page (§3.3).
    Verification,
    /// The IdP's login callback.
    Callback,
    /// `{verification_path}/qr`: the QR code of a user code's verification link.
    Qr,
    /// Another spelling of an owned path (`/device/../token`, `/%64evice`, `/Device`): an
    /// upstream that normalises paths would read it as the owned one, so it is refused.
    Disguised(String),
    /// Everything else: relayed to the IdP unchanged.
    PassThrough,
}

impl Route {
    /// The methods this route answers, as an `Allow` header lists them (RFC 9110 §10.2.1).
    /// One rule for every owned path: anything else gets 405 with this list.
    pub fn allow(&self) -> &'static str {
        match self {
            Self::DeviceAuthorization | Self::Token => "POST",
            Self::Verification => "GET, HEAD, POST",
            // The callback acts (it finishes a login), so it takes no HEAD.
            Self::Callback => "GET",
            Self::Discovery { .. } | Self::Qr => "GET, HEAD",
            Self::Disguised(_) | Self::PassThrough => "",
        }
    }

    pub fn allows(&self, method: &Method) -> bool {
        match self {
            Self::Disguised(_) | Self::PassThrough => true,
            _ => self.allow().split(", ").any(|m| m == method.as_str()),
        }
    }

    /// Routes a browser visits answer with pages; the others with RFC 6749 JSON.
    pub fn is_page(&self) -> bool {
        matches!(self, Self::Verification | Self::Callback)
    }

    /// The route's name in logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::DeviceAuthorization => "device_authorization",
            Self::Token => "token",
            Self::Discovery { .. } => "discovery",
            Self::Verification => "verification",
            Self::Callback => "callback",
            Self::Qr => "qr",
            Self::Disguised(_) => "disguised",
            Self::PassThrough => "pass_through",
        }
    }
}

/// The owned paths, fixed at start-up.
#[derive(Debug, Clone)]
pub struct Routes {
    authorization: Vec<String>,
    verification: String,
    callback: String,
    qr: String,
    /// The OpenID Connect document's path first (see [`well_known_paths`]).
    discovery: Vec<String>,
    /// How many of `discovery`'s first paths are the OpenID Connect document's.
    oidc_paths: usize,
}

impl Routes {
    /// `discovery_path`: the path of `upstream.discovery_url`, when configured: served as the
    /// OpenID Connect document too.
    pub fn new(device: &Device, issuer_path: &str, discovery_path: Option<&str>) -> Self {
        let mut authorization = vec![device.authorization_path.clone()];
        authorization.extend(device.extra_authorization_paths.iter().cloned());
        let mut discovery = well_known_paths(issuer_path);
        let oidc_paths = match discovery_path {
            Some(p) if !discovery.iter().any(|d| d == p) => {
                discovery.insert(1, p.to_string());
                2
            }
            _ => 1,
        };
        Self {
            authorization,
            verification: device.verification_path.clone(),
            callback: device.callback_path.clone(),
            qr: qr_path(&device.verification_path),
            discovery,
            oidc_paths,
        }
    }

    fn owned(&self) -> impl Iterator<Item = &String> + Clone {
        self.authorization
            .iter()
            .chain([&self.verification, &self.callback, &self.qr])
            .chain(&self.discovery)
    }

    /// The route of a request. `token_path` is the IdP's token endpoint path when the gateway
    /// answers polls there (known from the configuration or discovery).
    pub fn classify(&self, method: &Method, path: &str, token_path: Option<&str>) -> Route {
        if let Some(owned) = self.disguised(path, token_path) {
            return Route::Disguised(owned);
        }
        if self.authorization.iter().any(|p| p == path) {
            Route::DeviceAuthorization
        } else if path == self.verification {
            Route::Verification
        } else if path == self.callback {
            Route::Callback
        } else if path == self.qr {
            Route::Qr
        } else if let Some(i) = self.discovery.iter().position(|p| p == path) {
            Route::Discovery {
                oidc: i < self.oidc_paths,
            }
        } else if method == Method::POST && token_path == Some(path) {
            Route::Token
        } else {
            Route::PassThrough
        }
    }

    /// The owned path that `path` spells another way (percent-encoding, dot segments, doubled
    /// or back slashes, a trailing slash, letter case), if any.
    fn disguised(&self, path: &str, token_path: Option<&str>) -> Option<String> {
        if self.owned().any(|o| o == path) || token_path == Some(path) {
            return None;
        }
        // Every pass-through request comes here: normalise (and allocate) only paths that have
        // something to normalise; others can differ from an owned path in letter case only.
        let plain = if needs_normalising(path) {
            std::borrow::Cow::Owned(normal_form(path))
        } else {
            std::borrow::Cow::Borrowed(path)
        };
        let disguises = |o: &str| o != path && o.eq_ignore_ascii_case(&plain);
        self.owned()
            .map(String::as_str)
            .chain(token_path)
            .find(|o| disguises(o))
            .map(str::to_string)
    }
}

/// Whether `path` has anything [`normal_form`] would change besides letter case: `%`, `\\`,
/// `;`, `//`, `/.`, or a trailing slash. One pass over the bytes (every relayed request asks).
fn needs_normalising(path: &str) -> bool {
    let b = path.as_bytes();
    if b.len() > 1 && b[b.len() - 1] == b'/' {
        return true;
    }
    let mut prev = 0u8;
    for &c in b {
        if matches!(c, b'%' | b'\\' | b';') || (prev == b'/' && matches!(c, b'/' | b'.')) {
            return true;
        }
        prev = c;
    }
    false
}

/// `{verification_path}/qr`.
pub fn qr_path(verification_path: &str) -> String {
    format!("{}/qr", verification_path.trim_end_matches('/'))
}

/// `path` as a server that normalises paths may read it: percent-decoded (repeatedly, so
/// `%252e` counts), `\\` read as `/`, `;parameters` cut from each segment (Tomcat and Jetty
/// strip them), empty and `.` segments dropped, `..` applied, no trailing slash.
fn normal_form(path: &str) -> String {
    let mut decoded = path.to_string();
    for _ in 0..3 {
        let next = percent_decode_once(&decoded);
        if next == decoded {
            break;
        }
        decoded = next;
    }
    let decoded = decoded.replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        let seg = seg.split(';').next().unwrap_or_default();
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    format!("/{}", segments.join("/"))
}

fn percent_decode_once(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied(),
            bytes.get(i + 2).copied(),
        ) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                let v = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_normalising_is_the_old_five_scans_in_one() {
        let old = |path: &str| {
            path.contains(['%', '\\', ';'])
                || path.contains("//")
                || path.contains("/.")
                || (path.len() > 1 && path.ends_with('/'))
        };
        for path in [
            "/",
            "/device",
            "/device/",
            "//device",
            "/a/./b",
            "/a/../b",
            "/.well-known/x",
            "/dev%69ce",
            "/device;x",
            "\\device",
            "/a.b/c",
            "/token",
            "",
            "/a//",
            "/ab.c",
        ] {
            assert_eq!(needs_normalising(path), old(path), "{path}");
        }
    }

    fn routes() -> Routes {
        let device = Device {
            authorization_path: "/device/code".into(),
            extra_authorization_paths: vec!["/oauth2/v1/device".into()],
            verification_path: "/device".into(),
            callback_path: "/device/callback".into(),
            expires_in: 600,
            interval: 5,
        };
        Routes::new(&device, "/", None)
    }

    #[test]
    fn a_configured_discovery_path_is_the_openid_connect_document_too() {
        let device = Device {
            authorization_path: "/device/code".into(),
            extra_authorization_paths: vec![],
            verification_path: "/device".into(),
            callback_path: "/device/callback".into(),
            expires_in: 600,
            interval: 5,
        };
        let b2c = "/t.onmicrosoft.com/B2C_1_x/v2.0/.well-known/openid-configuration";
        let r = Routes::new(&device, "/guid/v2.0/", Some(b2c));
        for (path, oidc) in [
            (b2c, true),
            ("/guid/v2.0/.well-known/openid-configuration", true),
            ("/.well-known/oauth-authorization-server/guid/v2.0", false),
        ] {
            assert_eq!(
                r.classify(&Method::GET, path, None),
                Route::Discovery { oidc },
                "{path}"
            );
        }
    }

    #[test]
    fn each_request_takes_one_route() {
        let r = routes();
        let token = Some("/token");
        let get = Method::GET;
        let post = Method::POST;
        for (method, path, route) in [
            (&post, "/device/code", Route::DeviceAuthorization),
            (&get, "/device/code", Route::DeviceAuthorization),
            (&post, "/oauth2/v1/device", Route::DeviceAuthorization),
            (&get, "/device", Route::Verification),
            (&get, "/device/callback", Route::Callback),
            (&get, "/device/qr", Route::Qr),
            (
                &get,
                "/.well-known/openid-configuration",
                Route::Discovery { oidc: true },
            ),
            (
                &Method::HEAD,
                "/.well-known/oauth-authorization-server",
                Route::Discovery { oidc: false },
            ),
            (&post, "/token", Route::Token),
            // Other methods at the IdP's token endpoint are the IdP's.
            (&get, "/token", Route::PassThrough),
            (&get, "/interaction/abc", Route::PassThrough),
            (&post, "/Token", Route::Disguised("/token".into())),
            (&get, "/device/", Route::Disguised("/device".into())),
            // Tomcat/Jetty-style path parameters are stripped by such IdPs.
            (
                &post,
                "/token;jsessionid=x",
                Route::Disguised("/token".into()),
            ),
            (
                &post,
                "/device/code;x",
                Route::Disguised("/device/code".into()),
            ),
        ] {
            assert_eq!(r.classify(method, path, token), route, "{method} {path}");
        }
        // Without a known token path, a POST there is the IdP's.
        assert_eq!(r.classify(&post, "/token", None), Route::PassThrough);
    }

    #[test]
    fn one_method_rule_for_every_owned_path() {
        assert!(Route::Qr.allows(&Method::HEAD));
        assert!(Route::Discovery { oidc: true }.allows(&Method::HEAD));
        assert!(!Route::Discovery { oidc: true }.allows(&Method::POST));
        assert!(!Route::Callback.allows(&Method::POST));
        assert!(!Route::Callback.allows(&Method::HEAD));
        assert!(Route::Verification.allows(&Method::HEAD));
        assert!(!Route::Verification.allows(&Method::DELETE));
        assert!(!Route::DeviceAuthorization.allows(&Method::GET));
        assert_eq!(Route::Qr.allow(), "GET, HEAD");
    }

    #[test]
    fn disguised_paths_have_a_normal_form() {
        for (raw, plain) in [
            ("/device/../token", "/token"),
            ("/%2e%2e/token", "/token"),
            ("/device%2Fcode", "/device/code"),
            ("/device%252Fcode", "/device/code"),
            ("//device///code/", "/device/code"),
            ("/device/./code", "/device/code"),
            ("\\device\\code", "/device/code"),
            ("/../../token", "/token"),
            ("/interaction/abc", "/interaction/abc"),
            ("/%zz/%", "/%zz/%"),
            ("/token;jsessionid=x", "/token"),
            ("/device;a=b/code;c", "/device/code"),
            ("/device/..;/token", "/token"),
        ] {
            assert_eq!(normal_form(raw), plain, "{raw}");
        }
    }
}
