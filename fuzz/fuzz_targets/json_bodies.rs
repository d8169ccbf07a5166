//! API bodies (message envelope, endpoint, source) through the API's own JSON parsing.
#![no_main]
use hookline_server::api::parse_json;
use hookline_server::config::ApiConfig;
use hookline_server::wire::{EndpointIn, MessageIn, SourceIn};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let depth_max = ApiConfig::default().json_depth_max;
    if let Ok(message) = parse_json::<MessageIn>(data, depth_max) {
        // The raw payload is kept as given: it must still be JSON text on its own. Checked
        // for syntax only, as the envelope's parse checked it: a `Value` would also refuse
        // valid JSON numbers beyond an f64 (the seed `out-of-range-number`).
        assert!(serde_json::from_str::<Box<serde_json::value::RawValue>>(message.payload.get()).is_ok());
    }
    let _ = parse_json::<EndpointIn>(data, depth_max);
    let _ = parse_json::<SourceIn>(data, depth_max);
});
