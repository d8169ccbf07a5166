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
    for preset in Preset::ALL {
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

#[test]
fn event_id_templates_take_the_first_alternative_found() {
    let templates: Vec<String> =
        ["{/event}-{/session_id}", "{/event}-{/data/customer_id}-{/data/detected_at}", "{/event}-{body}"]
            .map(String::from)
            .to_vec();
    let none = |_: &str| -> Option<&str> { None };
    let key = |body: &str| from_templates(&templates, &none, &Json::new(body.as_bytes()));
    assert_eq!(key(r#"{"event":"paid","session_id":"cs_1","data":{"customer_id":"c"}}"#).as_deref(), Some("paid-cs_1"));
    assert_eq!(
        key(r#"{"event":"seen","data":{"customer_id":"cus_9","detected_at":1767225600}}"#).as_deref(),
        Some("seen-cus_9-1767225600"),
        "numbers are written as JSON writes them"
    );
    let body = r#"{"event":"pending","session_id":"","data":{}}"#;
    let expected = format!("pending-{}", hex::encode(Sha256::digest(body.as_bytes())));
    assert_eq!(key(body), Some(expected), "an empty session id does not count");
    assert_eq!(key("not json"), None, "nothing found: no key, no dedupe");
    // Headers, text around placeholders, and braces that are not placeholders.
    let headers = |name: &str| (name == "x-delivery").then_some("d-7");
    let mixed = vec!["id:{header:X-Delivery}/{nope}{/n}".to_owned()];
    assert_eq!(from_templates(&mixed, &headers, &Json::new(br#"{"n": 5}"#)).as_deref(), Some("id:d-7/{nope}5"));
    // A key longer than 256 bytes is hashed.
    let long = format!(r#"{{"event":"x","session_id":"{}"}}"#, "s".repeat(300));
    let hashed = key(&long).unwrap();
    assert!(hashed.starts_with("sha256:") && hashed.len() == 7 + 64, "{hashed}");
}

#[test]
fn templates_win_over_the_presets_event_id() {
    let config = SourceConfig { event_id_templates: Some(vec!["{/event}-{/session_id}".into()]), ..Default::default() };
    let body = br#"{"event":"paid","session_id":"cs_1"}"#;
    let signature = hmac_hex("s", body);
    let headers = |name: &str| (name == "x-signature").then_some(signature.as_str());
    let verified = verify(Preset::Hmac, &config, &headers, body, &["s"], 0).unwrap();
    assert_eq!(verified.event_id.as_deref(), Some("paid-cs_1"));
}

/// An id over 256 bytes, from a header or a pointer, is a hashed key: dropped, it left its
/// event without dedupe, so every retry of it passed as new.
#[test]
fn a_long_event_id_is_hashed_not_dropped() {
    let long = "e".repeat(300);
    let body = format!(r#"{{"id":"{long}"}}"#);
    let signature = hmac_hex("s", body.as_bytes());
    let headers = |name: &str| match name {
        "x-signature" => Some(signature.as_str()),
        "x-id" => Some(long.as_str()),
        _ => None,
    };
    let hashed = format!("sha256:{}", hex::encode(Sha256::digest(long.as_bytes())));
    for config in [
        SourceConfig { event_id_pointer: Some("/id".into()), ..Default::default() },
        SourceConfig { event_id_header: Some("X-Id".into()), ..Default::default() },
    ] {
        let verified = verify(Preset::Hmac, &config, &headers, body.as_bytes(), &["s"], 0).unwrap();
        assert_eq!(verified.event_id.as_deref(), Some(hashed.as_str()), "{config:?}");
    }
    // An event type that long is not kept: the preset's default names it.
    let config = SourceConfig { event_type_pointer: Some("/id".into()), ..Default::default() };
    let verified = verify(Preset::Hmac, &config, &headers, body.as_bytes(), &["s"], 0).unwrap();
    assert_eq!(verified.event_type, None);
}

/// A source none of whose secrets a key can be read from (a Standard Webhooks key that is
/// not base64, an Adyen key that is not hex) is misconfigured: every request would fail
/// its signature, and the rejection log says the setup is at fault, not the request.
#[test]
fn secrets_no_key_can_be_read_from_are_a_misconfiguration() {
    let headers = |name: &str| match name {
        "webhook-id" => Some("msg_1"),
        "webhook-timestamp" => Some("1700000000"),
        "webhook-signature" => Some("v1,c2lnbmF0dXJl"),
        _ => None,
    };
    let config = SourceConfig::default();
    for bad in ["whsec_not base64!", "%%%"] {
        let got = verify(Preset::StandardWebhooks, &config, &headers, b"{}", &[bad], 1_700_000_000);
        assert_eq!(got.map_err(Rejection::code), Err("source_misconfigured"), "{bad}");
    }
    let got = verify(Preset::StandardWebhooks, &config, &headers, b"{}", &["c2l4dGVlbi1ieXRlLWtleQ"], 1_700_000_000);
    assert_eq!(got.map_err(Rejection::code), Err("bad_signature"), "a key without whsec_ or padding is read");
    let mut adyen = valid(Preset::Adyen);
    for bad in ["not hex", ""] {
        adyen.secrets = vec![bad.to_owned()];
        assert_eq!(verify_vector(&adyen).map_err(Rejection::code), Err("source_misconfigured"), "{bad:?}");
    }
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[test]
fn presets_that_need_an_option_say_so() {
    let none = |_: &str| -> Option<&str> { Some("c2lnbmF0dXJl") };
    let square = verify(Preset::Square, &SourceConfig::default(), &none, b"{}", &["key"], 0);
    assert_eq!(square.map_err(Rejection::code), Err("source_misconfigured"));
    let form = b"bt_signature=pk%7Cabc&bt_payload=YQ%3D%3D";
    let braintree = verify(Preset::Braintree, &SourceConfig::default(), &none, form, &["private"], 0);
    assert_eq!(braintree.map_err(Rejection::code), Err("source_misconfigured"));
    // A generic HMAC source signs the timestamp it checks, and checks the one it signs.
    let stamped = |name: &str| -> Option<&str> { Some(if name == "x-ts" { "1700000000" } else { "00" }) };
    for (header, template) in [(Some("X-Ts"), None), (Some("X-Ts"), Some("{body}")), (None, Some("{timestamp}.{body}"))]
    {
        let config = SourceConfig {
            timestamp_header: header.map(str::to_owned),
            template: template.map(str::to_owned),
            ..Default::default()
        };
        let generic = verify(Preset::Hmac, &config, &stamped, b"{}", &["s"], 1_700_000_000);
        assert_eq!(generic.map_err(Rejection::code), Err("source_misconfigured"), "{header:?} {template:?}");
    }
}

/// The first valid vector of a preset.
fn valid(preset: Preset) -> Vector {
    vectors().into_iter().find(|v| v.preset == preset && v.expect == "ok").expect("a valid vector")
}

fn verify_vector(v: &Vector) -> Result<Verified, Rejection> {
    let headers = |name: &str| v.headers.get(name).map(String::as_str);
    let secrets: Vec<&str> = v.secrets.iter().map(String::as_str).collect();
    verify(v.preset, &v.config, &headers, v.body.as_bytes(), &secrets, v.now)
}

#[test]
fn every_adyen_item_must_be_signed() {
    let mut v = valid(Preset::Adyen);
    assert!(verify_vector(&v).is_ok());
    let mut body: serde_json::Value = serde_json::from_str(&v.body).unwrap();
    let items = body["notificationItems"].as_array_mut().unwrap();
    let mut forged = items[0].clone();
    forged["NotificationRequestItem"]["pspReference"] = "8816178952380553".into();
    items.push(forged);
    v.body = body.to_string();
    assert_eq!(verify_vector(&v).map_err(Rejection::code), Err("bad_signature"), "a second item, not signed");
    let items = body["notificationItems"].as_array_mut().unwrap();
    items.pop();
    items.push(serde_json::json!({"NotificationRequestItem": {"pspReference": "8816178952380553"}}));
    v.body = body.to_string();
    assert_eq!(verify_vector(&v).map_err(Rejection::code), Err("missing_signature"), "a second item, no signature");
    body["notificationItems"] = serde_json::json!([]);
    v.body = body.to_string();
    assert_eq!(verify_vector(&v).map_err(Rejection::code), Err("missing_signature"), "no item");
}

#[test]
fn a_braintree_field_given_twice_is_refused() {
    let mut v = valid(Preset::Braintree);
    assert!(verify_vector(&v).is_ok());
    let signed = v.body.clone();
    v.body = format!("{signed}&bt_payload=PGtpbmQ%2Bc3Vic2NyaXB0aW9uX2NhbmNlbGVkPC9raW5kPg%3D%3D");
    assert_eq!(verify_vector(&v).map_err(Rejection::code), Err("malformed_signature"), "bt_payload twice");
    v.body = format!("{signed}&bt_signature=pk%7C00");
    assert_eq!(verify_vector(&v).map_err(Rejection::code), Err("malformed_signature"), "bt_signature twice");
}

/// A Braintree notification is keyed by its signed payload: the same one in a form with
/// another field, or with its payload encoded otherwise, is the same event (each was a new
/// body, so a new event to the dedupe, replayable at will).
#[test]
fn a_braintree_event_is_keyed_by_its_payload_not_its_form() {
    let mut v = valid(Preset::Braintree);
    let key = verify_vector(&v).unwrap().event_id.unwrap();
    let signed = v.body.clone();
    v.body = format!("{signed}&replay=1");
    assert_eq!(verify_vector(&v).unwrap().event_id.unwrap(), key, "another field");
    v.body = signed.replacen("bt_payload=C", "bt_payload=%43", 1);
    assert_ne!(v.body, signed, "the payload starts with C");
    assert_eq!(verify_vector(&v).unwrap().event_id.unwrap(), key, "re-encoded");
}

/// Recharge's SHA-256(secret ‖ body) extends: a body followed by SHA-256's padding and bytes
/// of one's own gets a valid signature from a captured one without the secret. Such a body
/// is not JSON, and is refused.
#[test]
fn a_recharge_signature_extended_past_the_body_is_refused() {
    let mut v = valid(Preset::Recharge);
    assert!(verify_vector(&v).is_ok());
    // What an extension signs: the body, 0x80, zeros, the length, more. Signed here with the
    // secret (as the attack's result would be), to show only the body's form refuses it.
    let secret = v.secrets[0].clone();
    let mut body = v.body.clone().into_bytes();
    body.extend_from_slice(b"\x80\0\0{\"id\": 1}");
    let digest = Sha256::new().chain_update(secret.as_bytes()).chain_update(&body).finalize();
    v.headers.insert("x-recharge-hmac-sha256".into(), hex::encode(digest));
    let headers = |name: &str| v.headers.get(name).map(String::as_str);
    let got = verify(v.preset, &v.config, &headers, &body, &[secret.as_str()], v.now);
    assert_eq!(got.map_err(Rejection::code), Err("bad_signature"));
}

/// A timestamp at either end of `i64` is out of the window, never an overflow (a panic in
/// a debug build).
#[test]
fn extreme_timestamps_are_stale() {
    type Form = fn(i64) -> String;
    let forms: [(Preset, &str, Form); 4] = [
        (Preset::Stripe, "stripe-signature", |t| format!("t={t},v1=00")),
        (Preset::StandardWebhooks, "webhook-timestamp", |t| t.to_string()),
        (Preset::Paddle, "paddle-signature", |t| format!("ts={t};h1=00")),
        (Preset::Hmac, "x-ts", |t| t.to_string()),
    ];
    for (preset, header, at) in forms {
        let mut v = valid(preset);
        if preset == Preset::Hmac {
            v.config.timestamp_header = Some("X-Ts".into());
            v.config.template = Some("{timestamp}.{body}".into());
        }
        for t in [i64::MIN, i64::MAX] {
            v.headers.insert(header.into(), at(t));
            let got = verify_vector(&v).map_err(Rejection::code);
            // Stripe's libraries refuse only old timestamps; a future one fails on its signature.
            let expected = if preset == Preset::Stripe && t == i64::MAX { "bad_signature" } else { "stale_timestamp" };
            assert_eq!(got, Err(expected), "{preset:?} at {t}");
        }
    }
}

/// A header of thousands of signatures costs one MAC per secret, not one per signature: a
/// header of empty `v1=` made one HMAC of the whole body each, seconds of a core for one
/// unsigned request of a megabyte, on the thread that answers every request.
#[test]
fn many_signatures_cost_one_mac_per_secret() {
    // Each preset's signature header, where its signatures begin, and an empty signature.
    let forms = [
        (Preset::Stripe, "stripe-signature", ",v1=", ",v1="),
        (Preset::StandardWebhooks, "webhook-signature", "v1,", "v1, "),
        (Preset::Paddle, "paddle-signature", ";h1=", ";h1="),
    ];
    let macs_during = |v: &Vector| {
        let before = crate::signature::MACS_COMPUTED.with(|n| n.get());
        let got = verify_vector(v).map(|_| ()).map_err(Rejection::code);
        (got, crate::signature::MACS_COMPUTED.with(|n| n.get()) - before)
    };
    for (preset, header, marker, empty) in forms {
        let mut v = valid(preset);
        let secrets = v.secrets.len();
        let signed = v.headers[header].clone();
        let at = signed.find(marker).expect("the vector's signature");
        let crowded = format!("{}{}{}", &signed[..at], empty.repeat(3_000), &signed[at..]);
        v.headers.insert(header.into(), crowded);
        assert_eq!(macs_during(&v), (Ok(()), secrets), "{preset:?}: the valid signature after 3,000 others");
        // The crowd alone: refused, for the same work.
        v.headers.insert(header.into(), format!("{}{}", &signed[..at], empty.repeat(3_000)));
        let (got, macs) = macs_during(&v);
        assert!(got.is_err(), "{preset:?}: no valid signature");
        assert_eq!(macs, secrets, "{preset:?}: refused for one MAC per secret");
    }
}

/// A generic `hmac` source with no event id setting keys an event by what is signed: its
/// body, with its timestamp when one is signed, so a captured request sent again within the
/// replay window is a duplicate, and the same body under a later timestamp (a heartbeat)
/// another event.
#[test]
fn a_generic_source_keys_by_what_is_signed() {
    let config = SourceConfig {
        timestamp_header: Some("X-Ts".into()),
        template: Some("{timestamp}.{body}".into()),
        ..Default::default()
    };
    let body = br#"{"status":"alive"}"#;
    let id_at = |ts: i64| {
        let signed = [ts.to_string().as_bytes(), b".", body].concat();
        let (signature, ts) = (hmac_hex("s", &signed), ts.to_string());
        let headers = |name: &str| match name {
            "x-signature" => Some(signature.as_str()),
            "x-ts" => Some(ts.as_str()),
            _ => None,
        };
        verify(Preset::Hmac, &config, &headers, body, &["s"], 1_700_000_000).unwrap().event_id.unwrap()
    };
    let signed = [b"1700000000.".as_slice(), body].concat();
    assert_eq!(id_at(1_700_000_000), format!("sha256:{}", hex::encode(Sha256::digest(&signed))));
    assert_eq!(id_at(1_700_000_000), id_at(1_700_000_000), "sent again: a duplicate");
    assert_ne!(id_at(1_700_000_000), id_at(1_700_000_060), "a later heartbeat: another event");
}
