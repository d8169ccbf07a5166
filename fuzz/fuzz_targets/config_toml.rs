//! The configuration parser and validator over arbitrary TOML.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = toml::from_str::<hookline_server::config::Config>(text) {
            let _ = config.validate();
            let _ = config.address_policy();
        }
    }
});
