//! `Config::from_yaml` on arbitrary text: errors are fine, panics are not.
#![no_main]

use devicegate::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |_: &str| Some("x".to_string());
    match Config::from_yaml(text, &env) {
        Ok(c) => {
            let _ = c.public("/device");
        }
        Err(errs) => {
            assert!(!errs.0.is_empty(), "Err without any error for {text:?}");
            let _ = errs.to_string();
        }
    }
});
