//! `form::Params::parse` on arbitrary bytes, then the accessors; and `is_form_content_type`.
#![no_main]

use devicegate::form::{is_form_content_type, Params};
use libfuzzer_sys::fuzz_target;

const NAMES: &[&str] = &[
    "client_id",
    "client_secret",
    "scope",
    "grant_type",
    "device_code",
    "user_code",
    "code",
    "state",
    "",
];

fuzz_target!(|data: &[u8]| {
    let text = std::str::from_utf8(data).ok();
    match Params::parse(data) {
        Ok(p) => {
            // Invalid UTF-8 must be rejected.
            assert!(text.is_some(), "parse accepted non-UTF-8 input");
            for name in NAMES {
                let got = p.get(name);
                // An empty value counts as absent.
                assert_ne!(got, Some(""), "get({name:?}) returned an empty value");
                match p.require(name) {
                    Ok(v) => assert_eq!(Some(v), got),
                    Err(e) => {
                        assert!(got.is_none());
                        assert_eq!(e.code(), "invalid_request");
                    }
                }
                if let Some(v) = got {
                    assert!(!v.contains('\u{FFFD}'));
                }
            }
        }
        Err(e) => assert_eq!(e.code(), "invalid_request"),
    }

    if let Some(s) = text {
        let is_form = is_form_content_type(Some(s));
        let head = s.split(';').next().unwrap_or("");
        assert_eq!(
            is_form,
            head.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        );
    }
    assert!(!is_form_content_type(None));
});
