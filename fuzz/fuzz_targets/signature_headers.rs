//! The signature-header parsers and verifiers over arbitrary strings.
#![no_main]
use hookline_core::signature::{verify_standard, verify_stripe, Secret};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let (header, timestamp, body) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let _ = Secret::parse(header);
    let secret = Secret::from_key([7; 24]);
    let _ = verify_standard("msg_1", timestamp, header, body.as_bytes(), &[secret], 1_700_000_000, 300);
    let _ = verify_stripe(header, body.as_bytes(), &["whsec_x"], 1_700_000_000, 300);
});
