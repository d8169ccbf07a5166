//! What a merchant verifies: every scheme, rotation, callback URLs, exact bytes.

use crate::harness::*;
use hmac::{Hmac, Mac};
use hookline_core::signature::{verify_standard, verify_stripe, Secret};
use serde_json::json;

fn secret_of(value: &serde_json::Value) -> String {
    value["key"].as_str().unwrap().to_owned()
}

fn verify(received: &Received, secrets: &[&str], now_s: i64) -> Result<(), hookline_core::signature::VerifyError> {
    let secrets: Vec<Secret> = secrets.iter().map(|s| Secret::parse(s).unwrap()).collect();
    verify_standard(
        received.header("webhook-id"),
        received.header("webhook-timestamp"),
        received.header("webhook-signature"),
        &received.body,
        &secrets,
        now_s,
        300,
    )
}

#[tokio::test]
async fn standard_webhooks_signature_and_rotation() {
    let gw = start_gateway(dev_config()).await;
    let rx = Receiver::start(Answer::status(204)).await;
    let app = gw.app("merchant").await;
    let ep = gw.endpoint(&app, json!({"url": rx.url, "headers": {"X-Merchant": "42"}})).await;
    let ep = ep["id"].as_str().unwrap();
    let old = secret_of(&gw.ok("GET", &format!("/api/v1/app/{app}/endpoint/{ep}/secret"), None).await);
    let body = r#"{"amount":  1000, "note": "spacing kept"}"#;
    let msg = gw.publish_raw(&app, &format!(r#"{{"eventType":"payment.succeeded","payload":{body}}}"#)).await;
    let got = rx.next().await;
    assert_eq!(std::str::from_utf8(&got.body).unwrap(), body, "the payload bytes are sent exactly as published");
    assert_eq!((got.header("webhook-id"), got.header("x-merchant")), (msg.as_str(), "42"));
    verify(&got, &[&old], T0 / 1000).unwrap();

    gw.ok("POST", &format!("/api/v1/app/{app}/endpoint/{ep}/secret/rotate"), Some(json!({}))).await;
    let new = secret_of(&gw.ok("GET", &format!("/api/v1/app/{app}/endpoint/{ep}/secret"), None).await);
    assert_ne!(new, old);
    gw.publish(&app, json!({"eventType": "payment.succeeded", "payload": {}})).await;
    let during = rx.next().await;
    assert_eq!(during.header("webhook-signature").split(' ').count(), 2, "both secrets sign during the grace period");
    verify(&during, &[&old], T0 / 1000).unwrap();
    verify(&during, &[&new], T0 / 1000).unwrap();

    gw.advance(24 * 3_600_000 + 1);
    gw.publish(&app, json!({"eventType": "payment.succeeded", "payload": {}})).await;
    let after = rx.next().await;
    let now_s = (T0 + 24 * 3_600_000) / 1000;
    assert!(verify(&after, &[&old], now_s).is_err(), "the old secret stops signing after 24 h");
    verify(&after, &[&new], now_s).unwrap();
    gw.stop().await;
}

/// A PATCH with a `secret` (Svix's `EndpointPatch` has one) rotates to it, as a PUT's does;
/// one the endpoint holds already changes nothing; a malformed one is refused (the PATCH
/// refused the field, so an SDK's patch of the secret failed with 422).
#[tokio::test]
async fn a_patch_with_a_secret_rotates_to_it() {
    let gw = start_gateway(dev_config()).await;
    let rx = Receiver::start(Answer::status(204)).await;
    let app = gw.app("merchant").await;
    let ep = gw.endpoint(&app, json!({"url": rx.url})).await;
    let path = format!("/api/v1/app/{app}/endpoint/{}", ep["id"].as_str().unwrap());
    let old = secret_of(&gw.ok("GET", &format!("{path}/secret"), None).await);
    let given = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    gw.ok("PATCH", &path, Some(json!({"secret": given, "description": "rotated"}))).await;
    assert_eq!(secret_of(&gw.ok("GET", &format!("{path}/secret"), None).await), given);
    gw.ok("PATCH", &path, Some(json!({"secret": old}))).await;
    assert_eq!(secret_of(&gw.ok("GET", &format!("{path}/secret"), None).await), given, "an old one rolls nothing back");
    let (status, error) = gw.call("PATCH", &path, Some(json!({"secret": "not-a-secret"}))).await;
    assert_eq!((status, error["code"].as_str()), (422, Some("validation")), "{error}");
    gw.publish(&app, json!({"eventType": "payment.succeeded", "payload": {}})).await;
    let got = rx.next().await;
    verify(&got, &[given], T0 / 1000).unwrap();
    verify(&got, &[&old], T0 / 1000).unwrap();
    gw.stop().await;
}

#[tokio::test]
async fn stripe_and_hex_schemes_sign_what_merchants_verify() {
    let gw = start_gateway(dev_config()).await;
    let rx = Receiver::start(Answer::status(200)).await;
    let app = gw.app("merchant").await;
    let stripe = gw
        .endpoint(
            &app,
            json!({"url": format!("{}/stripe", rx.url), "signatureScheme": {"type": "stripe"}, "filterTypes": ["s"]}),
        )
        .await;
    let hex_ep = gw
        .endpoint(&app, json!({"url": format!("{}/hex", rx.url), "signatureScheme": {"type": "hmac-sha256-hex", "header": "X-Signature"}, "filterTypes": ["h"]}))
        .await;
    let secret = |ep: &serde_json::Value| {
        let path = format!("/api/v1/app/{app}/endpoint/{}/secret", ep["id"].as_str().unwrap());
        let gw = &gw;
        async move { secret_of(&gw.ok("GET", &path, None).await) }
    };
    let (stripe_secret, hex_secret) = (secret(&stripe).await, secret(&hex_ep).await);
    gw.publish(&app, json!({"eventType": "s", "payload": {"id": "evt_1"}})).await;
    let got = rx.next().await;
    verify_stripe(got.header("stripe-signature"), &got.body, &[&stripe_secret], T0 / 1000, 300).unwrap();
    gw.publish(&app, json!({"eventType": "h", "payload": {"id": "evt_2"}})).await;
    let got = rx.next().await;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(hex_secret.as_bytes()).unwrap();
    mac.update(&got.body);
    assert_eq!(got.header("x-signature"), hex::encode(mac.finalize().into_bytes()));
    // An own header of the signature header's name is not sent beside the signature.
    let path = format!("/api/v1/app/{app}/endpoint/{}/headers", hex_ep["id"].as_str().unwrap());
    gw.ok("PUT", &path, Some(json!({"headers": {"x-SIGNATURE": "forged", "X-Other": "kept"}}))).await;
    gw.publish(&app, json!({"eventType": "h", "payload": {"id": "evt_3"}})).await;
    let got = rx.next().await;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(hex_secret.as_bytes()).unwrap();
    mac.update(&got.body);
    let signatures: Vec<_> = got.headers.get_all("x-signature").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(signatures, [hex::encode(mac.finalize().into_bytes())]);
    assert_eq!(got.header("x-other"), "kept");
    // A signature header the HTTP layer sets (the deliveries went unsigned) or that Hookline
    // sends already (twice) is refused, as is such a header of the endpoint's own.
    for header in ["Content-Length", "host", "webhook-id", "Content-Type", "User-Agent"] {
        let scheme = json!({"type": "hmac-sha256-hex", "header": header});
        let (status, body) = gw
            .call(
                "POST",
                &format!("/api/v1/app/{app}/endpoint"),
                Some(json!({"url": rx.url, "signatureScheme": scheme})),
            )
            .await;
        assert_eq!(status, 422, "{header}: {body}");
        let (status, body) = gw
            .call(
                "POST",
                &format!("/api/v1/app/{app}/endpoint"),
                Some(json!({"url": rx.url, "headers": {header: "x"}})),
            )
            .await;
        assert_eq!(status, 422, "{header}: {body}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn callback_urls_are_signed_with_the_application_secret() {
    let gw = start_gateway(dev_config()).await;
    let rx = Receiver::start(Answer::status(200)).await;
    let app = gw.app("checkout").await;
    let app_secret = secret_of(&gw.ok("GET", &format!("/api/v1/app/{app}/secret"), None).await);
    let callback = format!("{}/checkout/cs_123", rx.url);
    let msg = gw
        .publish(&app, json!({"eventType": "payment.expired", "payload": {"id": "cs_123"}, "callbackUrl": callback}))
        .await;
    let got = rx.next().await;
    assert_eq!(got.path, "/checkout/cs_123");
    verify(&got, &[&app_secret], T0 / 1000).unwrap();
    let attempts = gw.wait_attempts(&app, &msg, 1).await;
    assert_eq!(attempts[0]["url"], callback.as_str());
    gw.stop().await;
}

/// The application's callback secret rotates as an endpoint's does: the new one signs at
/// once, the old one beside it for the grace period, then no more.
#[tokio::test]
async fn the_application_secret_rotates_with_a_grace_period() {
    let gw = start_gateway(dev_config()).await;
    let rx = Receiver::start(Answer::status(200)).await;
    let app = gw.app("checkout").await;
    let secret_path = format!("/api/v1/app/{app}/secret");
    let rotate = format!("{secret_path}/rotate");
    let old = secret_of(&gw.ok("GET", &secret_path, None).await);
    let given = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    assert_eq!(secret_of(&gw.ok("POST", &rotate, Some(json!({"key": given}))).await), given);
    assert_eq!(secret_of(&gw.ok("GET", &secret_path, None).await), given);
    let callback = format!("{}/checkout/cs_123", rx.url);
    let publish = json!({"eventType": "payment.expired", "payload": {"id": "cs_123"}, "callbackUrl": callback});
    gw.publish(&app, publish.clone()).await;
    let during = rx.next().await;
    assert_eq!(during.header("webhook-signature").split(' ').count(), 2, "both secrets sign during the grace period");
    verify(&during, &[&old], T0 / 1000).unwrap();
    verify(&during, &[given], T0 / 1000).unwrap();

    gw.advance(24 * 3_600_000 + 1);
    gw.publish(&app, publish.clone()).await;
    let after = rx.next().await;
    let now_s = (T0 + 24 * 3_600_000) / 1000;
    assert_eq!(after.header("webhook-signature").split(' ').count(), 1);
    assert!(verify(&after, &[&old], now_s).is_err(), "the old secret stops signing after 24 h");
    verify(&after, &[given], now_s).unwrap();

    // Without a body a secret is generated; a grace of 0 retires the previous one at once.
    let generated = secret_of(&gw.ok("POST", &rotate, Some(json!({"gracePeriodSeconds": 0}))).await);
    assert!(generated.starts_with("whsec_") && generated != given, "{generated}");
    gw.publish(&app, publish.clone()).await;
    let next = rx.next().await;
    assert_eq!(next.header("webhook-signature").split(' ').count(), 1, "a grace of 0: the new secret alone");
    verify(&next, &[&generated], now_s).unwrap();
    let fresh = secret_of(&gw.ok("POST", &rotate, None).await);
    assert_ne!(fresh, generated, "an absent body generates one");

    // Two rotations at once (one millisecond of the manual clock): neither is lost.
    let (first, second) = ("whsec_QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB", "whsec_QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJC");
    let (a, b) = tokio::join!(
        gw.call("POST", &rotate, Some(json!({"key": first}))),
        gw.call("POST", &rotate, Some(json!({"key": second})))
    );
    assert_eq!((a.0, b.0), (200, 200), "{a:?} {b:?}");
    gw.publish(&app, publish).await;
    let both = rx.next().await;
    verify(&both, &[first], now_s).unwrap();
    verify(&both, &[second], now_s).unwrap();
    let fresh = secret_of(&gw.ok("GET", &secret_path, None).await);

    for bad in [json!({"key": "not-a-secret"}), json!({"gracePeriodSeconds": 10_000_000_000u64})] {
        let (status, body) = gw.call("POST", &rotate, Some(bad.clone())).await;
        assert_eq!(status, 422, "{bad}: {body}");
    }
    assert_eq!(secret_of(&gw.ok("GET", &secret_path, None).await), fresh, "a refused rotation changes nothing");
    assert_eq!(gw.call("POST", "/api/v1/app/app_missing/secret/rotate", None).await.0, 404);
    gw.stop().await;
}
