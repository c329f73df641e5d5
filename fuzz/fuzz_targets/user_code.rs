//! `normalize_user_code` and its round trip with `display_user_code`.
#![no_main]

use devicegate::device::code::{display_user_code, normalize_user_code};
use libfuzzer_sys::fuzz_target;

const ALPHABET: &str = "BCDFGHJKLMNPQRSTVWXZ";

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(c) = normalize_user_code(input) {
        assert_eq!(c.len(), 8, "normalized {input:?} to {c:?}");
        assert!(
            c.chars().all(|ch| ALPHABET.contains(ch)),
            "normalized {input:?} to {c:?} outside the alphabet"
        );
        let shown = display_user_code(&c);
        assert_eq!(shown.len(), 9, "display of {c:?} is {shown:?}");
        assert_eq!(
            normalize_user_code(&shown).as_deref(),
            Some(c.as_str()),
            "round trip of {c:?} via {shown:?}"
        );
        // Normalising is idempotent.
        assert_eq!(normalize_user_code(&c).as_deref(), Some(c.as_str()));
    }
    // display_user_code never panics, whatever it is given.
    let _ = display_user_code(input);
});
