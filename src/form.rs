//! Strict parsing of `application/x-www-form-urlencoded` bodies and query strings.
//!
//! RFC 6749 §3.1 / §3.2: parameters sent without a value are treated as omitted, unknown
//! parameters are ignored, and a parameter must not be repeated. Values must be UTF-8.

use std::collections::HashMap;

use crate::error::OAuthError;

/// Longest value of one parameter: far above any code, id, secret or scope list a client
/// sends, and far below what would make a value expensive to keep or log.
pub const MAX_VALUE_LEN: usize = 4096;

/// Parsed parameters; each name at most once.
#[derive(Debug, Default, Clone)]
pub struct Params(HashMap<String, String>);

impl Params {
    /// Parses a form body or query string, rejecting repeated parameters and invalid UTF-8.
    pub fn parse(input: &[u8]) -> Result<Self, OAuthError> {
        if std::str::from_utf8(input).is_err() {
            return Err(OAuthError::InvalidRequest("the body is not UTF-8".into()));
        }
        let mut map = HashMap::new();
        for (k, v) in form_urlencoded::parse(input) {
            if k.contains('\u{FFFD}') || v.contains('\u{FFFD}') {
                return Err(OAuthError::InvalidRequest(
                    "a parameter is not valid percent-encoded UTF-8".into(),
                ));
            }
            if k.len() > MAX_VALUE_LEN || v.len() > MAX_VALUE_LEN {
                return Err(OAuthError::InvalidRequest(format!(
                    "a parameter is longer than {MAX_VALUE_LEN} bytes"
                )));
            }
            if map.insert(k.to_string(), v.into_owned()).is_some() {
                return Err(OAuthError::InvalidRequest(format!(
                    "parameter '{k}' is repeated"
                )));
            }
        }
        Ok(Self(map))
    }

    /// The value of `name`; an empty value counts as absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The value of a required parameter.
    pub fn require(&self, name: &str) -> Result<&str, OAuthError> {
        self.get(name)
            .ok_or_else(|| OAuthError::InvalidRequest(format!("missing parameter '{name}'")))
    }
}

/// Checks that a request's `Content-Type` is a form (parameters such as `charset` allowed).
pub fn is_form_content_type(value: Option<&str>) -> bool {
    value.and_then(|v| v.split(';').next()).is_some_and(|v| {
        v.trim()
            .eq_ignore_ascii_case("application/x-www-form-urlencoded")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_repeats() {
        let p = Params::parse(b"client_id=tv&scope=openid+profile&x=").unwrap();
        assert_eq!(p.get("client_id"), Some("tv"));
        assert_eq!(p.get("scope"), Some("openid profile"));
        assert_eq!(p.get("x"), None);
        assert!(p.require("x").is_err());
        let e = Params::parse(b"client_id=a&client_id=b").unwrap_err();
        assert_eq!(e.code(), "invalid_request");
        assert!(Params::parse(b"a=%FF").is_err());
        assert!(Params::parse(&[b'a', b'=', 0xff]).is_err());
        let long = format!("scope={}", "a".repeat(MAX_VALUE_LEN + 1));
        assert!(Params::parse(long.as_bytes()).is_err());
        let fits = format!("scope={}", "a".repeat(MAX_VALUE_LEN));
        assert!(Params::parse(fits.as_bytes()).is_ok());
    }

    #[test]
    fn content_types() {
        assert!(is_form_content_type(Some(
            "application/x-www-form-urlencoded"
        )));
        assert!(is_form_content_type(Some(
            "Application/X-WWW-Form-Urlencoded; charset=utf-8"
        )));
        assert!(!is_form_content_type(Some("application/json")));
        assert!(!is_form_content_type(None));
    }
}
