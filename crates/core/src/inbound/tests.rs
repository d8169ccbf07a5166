//! The inbound vectors (made with the providers' libraries and documented examples), run
//! through `verify`.

use super::*;
use std::collections::HashMap;

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Vector {
    name: String,
    preset: Preset,
    secrets: Vec<String>,
    headers: HashMap<String, String>,
    body: String,
    now: i64,
    config: SourceConfig,
    expect: String,
    event_id: Option<String>,
    event_type: Option<String>,
}

fn vectors() -> Vec<Vector> {
    serde_json::from_str(include_str!("../../tests/vectors/inbound.json")).expect("vector file parses")
}

#[test]
fn every_inbound_vector_verifies_as_recorded() {
    let all = vectors();
    assert!(all.len() >= 20);
    for v in all {
        let headers = |name: &str| v.headers.get(name).map(String::as_str);
        let secrets: Vec<&str> = v.secrets.iter().map(String::as_str).collect();
        let got = verify(v.preset, &v.config, &headers, v.body.as_bytes(), &secrets, v.now);
        match v.expect.as_str() {
            "ok" => {
                let verified = got.unwrap_or_else(|e| panic!("{}: {e:?}", v.name));
                assert_eq!(verified.event_id, v.event_id, "{}", v.name);
                assert_eq!(verified.event_type, v.event_type, "{}", v.name);
            }
            code => assert_eq!(got.map_err(Rejection::code), Err(code), "{}", v.name),
        }
    }
}

#[test]
fn every_preset_is_covered_by_a_valid_and_a_rejected_vector() {
    let all = vectors();
    for preset in
        [Preset::Stripe, Preset::StandardWebhooks, Preset::Github, Preset::Shopify, Preset::Recharge, Preset::Hmac]
    {
        assert!(all.iter().any(|v| v.preset == preset && v.expect == "ok"), "{preset:?} valid");
        assert!(all.iter().any(|v| v.preset == preset && v.expect != "ok"), "{preset:?} rejected");
    }
}

#[test]
fn config_names_are_stable() {
    let config: SourceConfig = serde_json::from_str(r#"{"toleranceSeconds": 600, "eventIdHeader": "X-Id"}"#).unwrap();
    assert_eq!((config.tolerance_seconds, config.event_id_header.as_deref()), (Some(600), Some("X-Id")));
    assert!(serde_json::from_str::<SourceConfig>(r#"{"tolerance": 1}"#).is_err(), "unknown options are refused");
    let preset: Preset = serde_json::from_str(r#""standard-webhooks""#).unwrap();
    assert_eq!(preset, Preset::StandardWebhooks);
}
