//! Table tests for signing and verifying, including the published vectors.

use super::*;

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Vector {
    name: String,
    scheme: String,
    secret: String,
    msg_id: String,
    timestamp: i64,
    body: String,
    expected: String,
}

fn vectors() -> Vec<Vector> {
    serde_json::from_str(include_str!("../../tests/vectors/outbound.json")).expect("vector file parses")
}

#[test]
fn published_vectors_sign_and_verify() {
    for v in vectors() {
        let body = v.body.as_bytes();
        match v.scheme.as_str() {
            "standard-webhooks" => {
                let secret = Secret::parse(&v.secret).expect(&v.name);
                assert_eq!(standard_signature(&secret, &v.msg_id, v.timestamp, body), v.expected, "{}", v.name);
                let check = verify_standard(
                    &v.msg_id,
                    &v.timestamp.to_string(),
                    &v.expected,
                    body,
                    &[secret],
                    v.timestamp,
                    300,
                );
                assert_eq!(check, Ok(()), "{}", v.name);
            }
            "stripe" => {
                assert_eq!(stripe_header(&[&v.secret], v.timestamp, body), v.expected, "{}", v.name);
                assert_eq!(verify_stripe(&v.expected, body, &[&v.secret], v.timestamp, 300), Ok(()), "{}", v.name);
            }
            other => panic!("unknown scheme {other} in {}", v.name),
        }
    }
}

fn secret(n: u8) -> Secret {
    Secret::from_key([n; SECRET_BYTES_GENERATED])
}

/// One row: what the receiver holds and sees, and what verification must say.
fn check_standard(
    sign_with: &[Secret],
    verify_with: &[Secret],
    tamper: bool,
    now_offset_s: i64,
    expect: Result<(), VerifyError>,
) {
    let ts = 1_700_000_000;
    let headers = sign_headers(&SignatureScheme::StandardWebhooks, "msg_1", ts, b"{\"a\":1}", sign_with);
    let sig = &headers.iter().find(|(k, _)| k == "webhook-signature").unwrap().1;
    let body: &[u8] = if tamper { b"{\"a\":2}" } else { b"{\"a\":1}" };
    assert_eq!(verify_standard("msg_1", &ts.to_string(), sig, body, verify_with, ts + now_offset_s, 300), expect);
}

#[test]
fn standard_verification_table() {
    check_standard(&[secret(1)], &[secret(1)], false, 0, Ok(()));
    check_standard(&[secret(1)], &[secret(2)], false, 0, Err(VerifyError::NoMatch));
    check_standard(&[secret(1)], &[secret(1)], true, 0, Err(VerifyError::NoMatch));
    check_standard(&[secret(1)], &[secret(1)], false, 301, Err(VerifyError::StaleTimestamp));
    check_standard(&[secret(1)], &[secret(1)], false, -301, Err(VerifyError::StaleTimestamp));
    // Rotation: new and old both sign; a receiver holding either one accepts.
    check_standard(&[secret(2), secret(1)], &[secret(1)], false, 0, Ok(()));
    check_standard(&[secret(2), secret(1)], &[secret(2)], false, 0, Ok(()));
}

#[test]
fn stripe_verification_table() {
    let body = b"{\"id\":\"evt_1\"}";
    let header = stripe_header(&["whsec_new", "whsec_old"], 100, body);
    assert_eq!(verify_stripe(&header, body, &["whsec_old"], 100, 300), Ok(()));
    assert_eq!(verify_stripe(&header, body, &["whsec_other"], 100, 300), Err(VerifyError::NoMatch));
    assert_eq!(verify_stripe(&header, b"{}", &["whsec_new"], 100, 300), Err(VerifyError::NoMatch));
    assert_eq!(verify_stripe(&header, body, &["whsec_new"], 401, 300), Err(VerifyError::StaleTimestamp));
    assert_eq!(
        verify_stripe(&header, body, &["whsec_new"], -1000, 300),
        Ok(()),
        "like Stripe's libraries: only stale is refused"
    );
    assert_eq!(verify_stripe("v1=abc", body, &["whsec_new"], 100, 300), Err(VerifyError::MalformedHeader));
    assert_eq!(verify_stripe("t=100,v0=abc", body, &["whsec_new"], 100, 300), Err(VerifyError::NoMatch));
}

#[test]
fn hmac_hex_scheme_signs_body_with_secret_text() {
    let s = secret(3);
    let scheme = SignatureScheme::HmacSha256Hex { header: "X-Sig".into() };
    let headers = sign_headers(&scheme, "msg_1", 5, b"body", std::slice::from_ref(&s));
    let value = &headers.iter().find(|(k, _)| k == "X-Sig").unwrap().1;
    let mut mac = <HmacSha256 as Mac>::new_from_slice(s.as_str().as_bytes()).unwrap();
    mac.update(b"body");
    assert_eq!(value, &hex::encode(mac.finalize().into_bytes()));
}

#[test]
fn secret_parsing_table() {
    assert!(Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
    assert_eq!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), Err(SecretError::MissingPrefix));
    assert_eq!(Secret::parse("whsec_!!!"), Err(SecretError::NotBase64));
    assert_eq!(Secret::parse("whsec_c2hvcnQ="), Err(SecretError::BadLength));
    assert_eq!(format!("{:?}", secret(1)), "Secret(***)");
}

#[test]
fn scheme_json_names_are_stable() {
    let parsed: SignatureScheme = serde_json::from_str(r#"{"type":"hmac-sha256-hex","header":"X-Sig"}"#).unwrap();
    assert_eq!(parsed, SignatureScheme::HmacSha256Hex { header: "X-Sig".into() });
    let stripe: SignatureScheme = serde_json::from_str(r#"{"type":"stripe"}"#).unwrap();
    assert_eq!(stripe, SignatureScheme::Stripe);
}
