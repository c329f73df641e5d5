//! `discovery::rewrite`: output is a JSON object naming the device endpoint, and rewriting it
//! again changes nothing.
//!
//! Found by this target: `{"":4.5e100}` drifted by one ULP on every rewrite until devicegate
//! enabled serde_json's `float_roundtrip` (the input is kept in `regressions/`).
#![no_main]

use devicegate::discovery::{rewrite, DEVICE_GRANT};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    // The first line (if any, and if UTF-8) is the endpoint; the rest is the document.
    let (endpoint, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => match std::str::from_utf8(&data[..i]) {
            Ok(e) => (e, &data[i + 1..]),
            Err(_) => ("https://id.example/device/code", data),
        },
        None => ("https://id.example/device/code", data),
    };
    let Some(out) = rewrite(body, endpoint) else {
        return;
    };
    let doc: Map<String, Value> =
        serde_json::from_slice(&out).expect("rewrite output is not a JSON object");
    assert_eq!(
        doc.get("device_authorization_endpoint"),
        Some(&Value::String(endpoint.to_string()))
    );
    match doc.get("grant_types_supported") {
        Some(Value::Array(types)) => assert!(types.iter().any(|t| t == DEVICE_GRANT)),
        other => panic!("grant_types_supported is {other:?}"),
    }

    let again = rewrite(&out, endpoint).expect("rewriting the output failed");
    let doc2: Map<String, Value> =
        serde_json::from_slice(&again).expect("second output is not a JSON object");
    assert_eq!(doc, doc2, "rewrite is not idempotent");
    assert!(
        doc.keys().eq(doc2.keys()),
        "rewrite changed the key order on the second pass"
    );
});
