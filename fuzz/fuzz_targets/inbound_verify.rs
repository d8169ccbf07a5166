//! Every inbound preset over arbitrary headers, bodies and secrets: refuse or accept, never panic.
#![no_main]
use hookline_core::inbound::{verify, Algorithm, Encoding, Preset, SourceConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Fields separated by NUL: header value, body, secret, timestamp header value.
    let mut parts = data.split(|b| *b == 0);
    let header = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let body = parts.next().unwrap_or_default();
    let secret = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let stamp = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let lookup = |name: &str| match name {
        "webhook-timestamp" | "svix-timestamp" | "x-ts" => Some(stamp.as_str()),
        "x-github-delivery" | "x-shopify-event-id" | "webhook-id" | "svix-id" => Some("id-1"),
        _ => Some(header.as_str()),
    };
    let generic = SourceConfig {
        signature_prefix: Some("sha256=".into()),
        encoding: Some(Encoding::Base64),
        algorithm: Some(Algorithm::Sha512),
        timestamp_header: Some("x-ts".into()),
        template: Some("{timestamp}.{body}.{timestamp}".into()),
        event_id_pointer: Some("/a/0/b".into()),
        notification_url: Some("https://hooks.example/in/square".into()),
        public_key: Some("pk".into()),
        ..Default::default()
    };
    let templated = SourceConfig {
        event_id_templates: Some(vec!["{/a}-{header:x-ts}-{body}{".into(), "{/a/0/b}{{/}".into()]),
        ..generic.clone()
    };
    for preset in Preset::ALL {
        let _ = verify(preset, &templated, &lookup, body, &[secret.as_str()], 1_700_000_000);
        let _ = verify(preset, &SourceConfig::default(), &lookup, body, &[secret.as_str()], 1_700_000_000);
        let _ = verify(preset, &generic, &lookup, body, &[secret.as_str(), "whsec_x"], 1_700_000_000);
    }
});
