//! Inbound sources end to end: every preset's vectors through `POST /in/{source}`, then
//! forwarding, dedupe across a restart, filtering, limits and the rejection log.

use crate::harness::*;
use hookline_core::signature::{stripe_header, verify_standard, Secret};
use hookline_server::clock::ManualClock;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Vector {
    name: String,
    preset: String,
    secrets: Vec<String>,
    headers: HashMap<String, String>,
    body: String,
    now: i64,
    config: Value,
    expect: String,
    event_id: Option<String>,
}

pub async fn post_in(gw: &Gateway, path: &str, headers: &[(String, String)], body: &str) -> (u16, Value) {
    let mut request = gw.http.post(format!("{}{path}", gw.url)).body(body.to_owned());
    for (k, v) in headers {
        request = request.header(k.as_str(), v.as_str());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub async fn source(gw: &Gateway, app: &str, preset: &str, secrets: Value, config: Value) -> Value {
    gw.ok(
        "POST",
        "/api/v1/source",
        Some(json!({"name": "provider", "preset": preset, "secrets": secrets, "config": config, "appId": app})),
    )
    .await
}

#[tokio::test]
async fn every_preset_vector_is_accepted_or_refused_over_http() {
    let mut vectors: Vec<Vector> =
        serde_json::from_str(include_str!("../../../core/tests/vectors/inbound.json")).unwrap();
    vectors.sort_by_key(|v| v.now);
    let start = vectors[0].now * 1000;
    let gw =
        start_gateway_in(dev_config(), Arc::new(tempfile::tempdir().unwrap()), Arc::new(ManualClock::new(start))).await;
    let rx = Receiver::start(Answer::status(200)).await;
    let app = gw.app("merchant").await;
    let ep = gw.endpoint(&app, json!({"url": rx.url})).await;
    let ep_secret =
        gw.ok("GET", &format!("/api/v1/app/{app}/endpoint/{}/secret", ep["id"].as_str().unwrap()), None).await;
    let ep_secret = Secret::parse(ep_secret["key"].as_str().unwrap()).unwrap();
    let mut now = start;
    for v in vectors {
        gw.advance(v.now * 1000 - now);
        now = v.now * 1000;
        let src = source(&gw, &app, &v.preset, json!(v.secrets), v.config.clone()).await;
        let path = format!("/in/{}", src["id"].as_str().unwrap());
        let headers: Vec<(String, String)> = v.headers.clone().into_iter().collect();
        let (status, answer) = post_in(&gw, &path, &headers, &v.body).await;
        if v.expect != "ok" {
            assert_eq!((status, answer["code"].as_str()), (401, Some(v.expect.as_str())), "{}: {answer}", v.name);
            continue;
        }
        assert_eq!((status, answer["status"].as_str()), (200, Some("accepted")), "{}: {answer}", v.name);
        let got = rx.next().await;
        assert_eq!(std::str::from_utf8(&got.body).unwrap(), v.body, "{}: the original bytes are forwarded", v.name);
        assert_eq!(got.header("x-hookline-source"), src["id"].as_str().unwrap(), "{}", v.name);
        for (name, value) in &v.headers {
            assert_eq!(
                got.header(&format!("x-hookline-forwarded-{name}")),
                value,
                "{}: provider header {name}",
                v.name
            );
        }
        let ts = got.header("webhook-timestamp");
        let resigned = verify_standard(
            got.header("webhook-id"),
            ts,
            got.header("webhook-signature"),
            &got.body,
            std::slice::from_ref(&ep_secret),
            v.now,
            300,
        );
        assert_eq!(resigned, Ok(()), "{}: re-signed with the endpoint's secret", v.name);
        let (status, again) = post_in(&gw, &path, &headers, &v.body).await;
        let expected = if v.event_id.is_some() { "duplicate" } else { "accepted" };
        assert_eq!((status, again["status"].as_str()), (200, Some(expected)), "{}: the provider's retry", v.name);
        if v.event_id.is_some() {
            assert!(!rx.gets_within(100).await, "{}: a duplicate is not delivered again", v.name);
        } else {
            rx.next().await;
        }
    }
    gw.stop().await;
}

pub fn stripe_request(secret: &str, body: &str, now_s: i64) -> Vec<(String, String)> {
    vec![
        ("stripe-signature".into(), stripe_header(&[secret], now_s, body.as_bytes())),
        ("content-type".into(), "application/json; charset=utf-8".into()),
    ]
}

#[tokio::test]
async fn a_provider_retry_after_a_restart_is_not_delivered_twice() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let clock = Arc::new(ManualClock::new(T0));
    let rx = Receiver::start(Answer::status(200)).await;
    let gw = start_gateway_in(dev_config(), dir.clone(), clock.clone()).await;
    let app = gw.app("merchant").await;
    gw.endpoint(&app, json!({"url": rx.url})).await;
    let src = source(&gw, &app, "stripe", json!(["whsec_live"]), json!({})).await;
    let path = format!("/in/{}/stripe/webhooks?x=1", src["id"].as_str().unwrap());
    let body = r#"{"id":"evt_restart","type":"charge.succeeded"}"#;
    let (status, first) = post_in(&gw, &path, &stripe_request("whsec_live", body, T0 / 1000), body).await;
    assert_eq!((status, first["status"].as_str()), (200, Some("accepted")));
    let got = rx.next().await;
    assert_eq!(got.header("content-type"), "application/json; charset=utf-8", "the provider's content type is kept");
    assert_eq!(got.header("x-hookline-original-path"), format!("{path}"));
    assert_eq!(got.header("x-hookline-original-method"), "POST");
    gw.stop().await;
    let gw = start_gateway_in(dev_config(), dir, clock).await;
    let (status, retry) = post_in(&gw, &path, &stripe_request("whsec_live", body, T0 / 1000), body).await;
    assert_eq!(
        (status, retry["status"].as_str(), retry["messageId"].as_str()),
        (200, Some("duplicate"), first["messageId"].as_str())
    );
    assert!(!rx.gets_within(300).await, "no second delivery");
    let events = gw.ok("GET", &format!("/api/v1/source/{}/event", src["id"].as_str().unwrap()), None).await;
    assert_eq!(events["data"].as_array().unwrap().len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn filters_limits_rotation_and_the_rejection_log() {
    let mut config = dev_config();
    config.api.body_bytes_max = 2048;
    let gw = start_gateway(config).await;
    let rx = Receiver::start(Answer::status(200)).await;
    let app = gw.app("merchant").await;
    gw.endpoint(&app, json!({"url": rx.url})).await;
    let secrets =
        json!(["whsec_new", {"value": "whsec_old", "expiresAt": hookline_server::wire::timestamp(T0 + 60_000)}]);
    let src = gw
        .ok("POST", "/api/v1/source", Some(json!({"name": "stripe", "uid": "stripe-live", "preset": "stripe", "secrets": secrets, "eventTypes": ["charge.succeeded"], "appId": "merchant"})))
        .await;
    assert!(src["ingestUrl"].as_str().unwrap().ends_with(&format!("/in/{}", src["id"].as_str().unwrap())));
    assert!(!src.to_string().contains("whsec_new"), "secrets are never shown back");
    // An appId that names no application answers 404 on every route that takes one (as the
    // document says of any id in a body), and changes nothing.
    let nowhere = json!({"name": "s", "preset": "stripe", "secrets": ["whsec_x"], "appId": "app_nowhere"});
    for (method, path, body) in [
        ("POST", "/api/v1/source", nowhere.clone()),
        ("PUT", "/api/v1/source/stripe-live", nowhere),
        ("PATCH", "/api/v1/source/stripe-live", json!({"appId": "app_nowhere"})),
    ] {
        let (status, error) = gw.call(method, path, Some(body)).await;
        assert_eq!((status, error["detail"].as_str()), (404, Some("application not found")), "{method}");
    }
    let unchanged = gw.ok("GET", "/api/v1/source/stripe-live", None).await;
    assert_eq!(unchanged["appId"], src["appId"], "a refused change changes nothing");
    let now_s = T0 / 1000;
    let charge = r#"{"id":"evt_1","type":"charge.succeeded"}"#;
    let refund = r#"{"id":"evt_2","type":"charge.refunded"}"#;
    // Both secrets of a rotation are accepted, and the uid works in the URL.
    let (status, _) = post_in(&gw, "/in/stripe-live", &stripe_request("whsec_old", charge, now_s), charge).await;
    assert_eq!(status, 200);
    rx.next().await;
    let other = r#"{"id":"evt_3","type":"charge.succeeded"}"#;
    let (status, _) = post_in(&gw, "/in/stripe-live", &stripe_request("whsec_new", other, now_s), other).await;
    assert_eq!(status, 200);
    rx.next().await;
    let (status, filtered) = post_in(&gw, "/in/stripe-live", &stripe_request("whsec_new", refund, now_s), refund).await;
    assert_eq!((status, filtered["status"].as_str()), (200, Some("filtered")));
    assert!(!rx.gets_within(200).await, "filtered events are not forwarded");
    // After its expiry the old secret no longer verifies.
    gw.advance(60_001);
    let late = r#"{"id":"evt_4","type":"charge.succeeded"}"#;
    let (status, refused) = post_in(&gw, "/in/stripe-live", &stripe_request("whsec_old", late, now_s + 60), late).await;
    assert_eq!((status, refused["code"].as_str()), (401, Some("bad_signature")));
    let (status, stale) = post_in(&gw, "/in/stripe-live", &stripe_request("whsec_new", late, now_s - 600), late).await;
    assert_eq!((status, stale["code"].as_str()), (401, Some("stale_timestamp")));
    let (status, missing) = post_in(&gw, "/in/stripe-live", &[], late).await;
    assert_eq!((status, missing["code"].as_str()), (401, Some("missing_signature")));
    let big = format!(r#"{{"id":"evt_5","pad":"{}"}}"#, "x".repeat(3000));
    let (status, oversized) =
        post_in(&gw, "/in/stripe-live", &stripe_request("whsec_new", &big, now_s + 60), &big).await;
    assert_eq!((status, oversized["code"].as_str()), (413, Some("payload_too_large")));
    let (status, unknown) = post_in(&gw, "/in/src_nothing", &[], "{}").await;
    assert_eq!((status, unknown["code"].as_str()), (404, Some("not_found")));
    let log = gw.ok("GET", "/api/v1/source/stripe-live/rejection", None).await;
    let codes: Vec<&str> = log.as_array().unwrap().iter().map(|r| r["code"].as_str().unwrap()).collect();
    assert_eq!(codes, vec!["missing_signature", "stale_timestamp", "bad_signature"], "newest first");
    let metrics = gw.metrics().await;
    let source_id = src["id"].as_str().unwrap();
    for outcome in ["accepted", "filtered", "bad_signature", "stale_timestamp", "oversized"] {
        let line = format!("hookline_inbound_requests_total{{source=\"{source_id}\",outcome=\"{outcome}\"}}");
        let alt = format!("hookline_inbound_requests_total{{outcome=\"{outcome}\",source=\"{source_id}\"}}");
        assert!(metrics.contains(&line) || metrics.contains(&alt), "metrics count {outcome}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn received_events_can_be_replayed() {
    let gw = start_gateway(dev_config()).await;
    let rx = Receiver::start(Answer::status(200)).await;
    let app = gw.app("merchant").await;
    gw.endpoint(&app, json!({"url": rx.url})).await;
    // An endpoint that takes other events gets none of this one, replayed or not.
    let other_rx = Receiver::start(Answer::status(200)).await;
    gw.endpoint(&app, json!({"url": other_rx.url, "filterTypes": ["issues"]})).await;
    let src = source(&gw, &app, "github", json!(["It's a Secret to Everybody"]), json!({})).await;
    let headers = vec![
        (
            "x-hub-signature-256".to_owned(),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".to_owned(),
        ),
        ("x-github-delivery".to_owned(), "d-1".to_owned()),
        ("x-github-event".to_owned(), "push".to_owned()),
    ];
    let src_id = src["id"].as_str().unwrap();
    let (status, accepted) = post_in(&gw, &format!("/in/{src_id}"), &headers, "Hello, World!").await;
    assert_eq!(status, 200);
    assert_eq!(&rx.next().await.body[..], b"Hello, World!");
    let msg = accepted["messageId"].as_str().unwrap();
    let out = gw.ok("POST", &format!("/api/v1/source/{src_id}/event/{msg}/replay"), None).await;
    assert_eq!(out["replayed"], 1);
    assert_eq!(&rx.next().await.body[..], b"Hello, World!");
    assert!(!other_rx.gets_within(300).await, "the filtering endpoint got the event");
    gw.stop().await;
}

/// A replayed event goes to an endpoint that orders what it gets (`fifo`) once, in its
/// lane's turn: the replay made the lane's head due in the store for whichever node claims
/// it, and once also put it in this node's memory as claimed, so it was sent twice.
#[tokio::test]
async fn a_replay_to_an_ordering_endpoint_is_sent_once() {
    let gw = start_gateway(dev_config()).await;
    let rx = Receiver::start(Answer::status(200)).await;
    let app = gw.app("merchant").await;
    gw.endpoint(&app, json!({"url": rx.url, "ordering": "fifo"})).await;
    let src = source(&gw, &app, "hmac", json!(["s"]), json!({})).await;
    let src_id = src["id"].as_str().unwrap();
    let body = r#"{"paid":1}"#;
    let (status, accepted) = post_in(&gw, &format!("/in/{src_id}"), &hmac_request("s", body), body).await;
    assert_eq!(status, 200, "{accepted}");
    assert_eq!(&rx.next().await.body[..], body.as_bytes());
    let msg = accepted["messageId"].as_str().unwrap();
    for round in 1..=5 {
        // Replayed once the last copy is recorded: while it is open in its lane, a replay
        // leaves it there (and counts nothing).
        gw.wait_attempts(&app, msg, round).await;
        let out = gw.ok("POST", &format!("/api/v1/source/{src_id}/event/{msg}/replay"), None).await;
        assert_eq!(out["replayed"], 1, "round {round}");
        assert_eq!(&rx.next().await.body[..], body.as_bytes(), "round {round}");
        assert!(!rx.gets_within(300).await, "round {round}: the replay arrived twice");
    }
    gw.stop().await;
}

/// A gateway with an application forwarding to a receiver, and a `preset` source of it with
/// `secrets`; answers the source's path.
async fn merchant_source(preset: &str, secrets: Value) -> (Gateway, Receiver, String) {
    let gw = start_gateway(dev_config()).await;
    let rx = Receiver::start(Answer::status(200)).await;
    let app = gw.app("merchant").await;
    gw.endpoint(&app, json!({"url": rx.url})).await;
    let src = source(&gw, &app, preset, secrets, json!({})).await;
    let path = format!("/in/{}", src["id"].as_str().unwrap());
    (gw, rx, path)
}

/// A generic `hmac` source with no event id setting keys its events by what it signs: with no
/// key at all, one captured request could be sent again as a new event for ever.
#[tokio::test]
async fn a_generic_hmac_source_drops_a_resent_body() {
    let (gw, rx, path) = merchant_source("hmac", json!(["s"])).await;
    let body = r#"{"paid":1}"#;
    let (status, first) = post_in(&gw, &path, &hmac_request("s", body), body).await;
    assert_eq!((status, first["status"].as_str()), (200, Some("accepted")), "{first}");
    assert_eq!(&rx.next().await.body[..], body.as_bytes());
    let (status, again) = post_in(&gw, &path, &hmac_request("s", body), body).await;
    assert_eq!(
        (status, again["status"].as_str(), again["messageId"].as_str()),
        (200, Some("duplicate"), first["messageId"].as_str())
    );
    assert!(!rx.gets_within(200).await, "a duplicate is not forwarded");
    let other = r#"{"paid":2}"#;
    let (_, answer) = post_in(&gw, &path, &hmac_request("s", other), other).await;
    assert_eq!(answer["status"], "accepted", "another body is another event");
    gw.stop().await;
}

/// A provider's headers are forwarded, credentials never: an API gateway before `/in` may
/// add its own key, which no endpoint of the application (the merchant's) may see.
#[tokio::test]
async fn credentials_sent_to_a_source_are_not_forwarded() {
    let gw = start_gateway(dev_config()).await;
    let rx = Receiver::start(Answer::status(200)).await;
    let app = gw.app("merchant").await;
    gw.endpoint(&app, json!({"url": rx.url})).await;
    let src = source(&gw, &app, "hmac", json!(["s"]), json!({})).await;
    let body = r#"{"paid":1}"#;
    let mut headers = hmac_request("s", body);
    for (name, value) in [
        ("authorization", "Bearer gw"),
        ("proxy-authorization", "Basic gw"),
        ("cookie", "session=gw"),
        ("x-api-key", "GW_KEY"),
        ("x-provider-trace", "t-1"),
    ] {
        headers.push((name.to_owned(), value.to_owned()));
    }
    let (status, answer) = post_in(&gw, &format!("/in/{}", src["id"].as_str().unwrap()), &headers, body).await;
    assert_eq!(status, 200, "{answer}");
    let got = rx.next().await;
    assert_eq!(got.header("x-hookline-forwarded-x-provider-trace"), "t-1");
    for credential in ["authorization", "proxy-authorization", "cookie", "x-api-key"] {
        let forwarded = format!("x-hookline-forwarded-{credential}");
        assert!(got.headers.get(forwarded.as_str()).is_none(), "{credential} was forwarded");
    }
    gw.stop().await;
}

/// GitHub signs the body only: its `X-GitHub-Delivery` header is no one's to trust. A
/// captured request sent again under a fresh delivery id is the same event (the key is the
/// body's hash), refused as a duplicate and not forwarded; so is GitHub's own redelivery.
#[tokio::test]
async fn a_signed_body_sent_again_under_a_fresh_delivery_id_is_a_duplicate() {
    let (gw, rx, path) = merchant_source("github", json!(["It's a Secret to Everybody"])).await;
    let delivered_as = |delivery: &str| {
        vec![
            (
                "x-hub-signature-256".to_owned(),
                "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".to_owned(),
            ),
            ("x-github-delivery".to_owned(), delivery.to_owned()),
            ("x-github-event".to_owned(), "push".to_owned()),
        ]
    };
    let (status, first) = post_in(&gw, &path, &delivered_as("d-1"), "Hello, World!").await;
    assert_eq!((status, first["status"].as_str()), (200, Some("accepted")), "{first}");
    rx.next().await;
    for delivery in ["d-1", "d-2", ""] {
        let (status, again) = post_in(&gw, &path, &delivered_as(delivery), "Hello, World!").await;
        assert_eq!(
            (status, again["status"].as_str(), again["messageId"].as_str()),
            (200, Some("duplicate"), first["messageId"].as_str()),
            "delivery id {delivery:?}: {again}"
        );
    }
    assert!(!rx.gets_within(200).await, "a replayed body was forwarded");
    gw.stop().await;
}

/// The generic HMAC preset's headers for `body`: hex HMAC-SHA256 in `X-Signature`.
fn hmac_request(secret: &str, body: &str) -> Vec<(String, String)> {
    use hmac::Mac;
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    vec![
        ("x-signature".into(), hex::encode(mac.finalize().into_bytes())),
        ("content-type".into(), "application/json".into()),
    ]
}

/// A provider with no event id dedupes on a key built from the body, with fallbacks (the
/// crypto payment provider's guide): `<event>-<session_id>`, else
/// `<event>-<data.customer_id>-<data.detected_at>`, else the event and the whole body.
#[tokio::test]
async fn dedupe_keys_built_from_the_body_with_fallbacks() {
    let gw = start_gateway(dev_config()).await;
    let rx = Receiver::start(Answer::status(200)).await;
    let app = gw.app("merchant").await;
    gw.endpoint(&app, json!({"url": rx.url})).await;
    let templates =
        json!(["{/event}-{/session_id}", "{/event}-{/data/customer_id}-{/data/detected_at}", "{/event}-{body}"]);
    let src = source(
        &gw,
        &app,
        "hmac",
        json!(["crypto_secret"]),
        json!({"eventIdTemplates": templates, "eventTypePointer": "/event"}),
    )
    .await;
    let path = format!("/in/{}", src["id"].as_str().unwrap());
    let cases = [
        // The same session twice (the detail differs: still one event).
        (
            r#"{"event":"payment.confirmed","session_id":"cs_1","data":{"amount":10}}"#,
            r#"{"event":"payment.confirmed","session_id":"cs_1","data":{"amount":10,"retry":true}}"#,
        ),
        // No session: the customer and the detection time.
        (
            r#"{"event":"payment.detected","data":{"customer_id":"cus_9","detected_at":1767225600}}"#,
            r#"{"data":{"detected_at":1767225600,"customer_id":"cus_9"},"event":"payment.detected"}"#,
        ),
        // Neither: the event and the whole body, byte for byte.
        (
            r#"{"event":"payment.pending","data":{"customer_id":"cus_9"}}"#,
            r#"{"event":"payment.pending","data":{"customer_id":"cus_9"}}"#,
        ),
    ];
    for (first, again) in cases {
        let (status, accepted) = post_in(&gw, &path, &hmac_request("crypto_secret", first), first).await;
        assert_eq!((status, accepted["status"].as_str()), (200, Some("accepted")), "{first}: {accepted}");
        let got = rx.next().await;
        assert_eq!(std::str::from_utf8(&got.body).unwrap(), first);
        let (status, repeated) = post_in(&gw, &path, &hmac_request("crypto_secret", again), again).await;
        assert_eq!(
            (status, repeated["status"].as_str(), repeated["messageId"].as_str()),
            (200, Some("duplicate"), accepted["messageId"].as_str()),
            "{again}: {repeated}"
        );
        assert!(!rx.gets_within(200).await, "a duplicate is not forwarded: {again}");
    }
    // A body that differs under the last template is a new event.
    let other = r#"{"event":"payment.pending","data":{"customer_id":"cus_10"}}"#;
    let (_, answer) = post_in(&gw, &path, &hmac_request("crypto_secret", other), other).await;
    assert_eq!(answer["status"], "accepted");
    rx.next().await;
    gw.stop().await;
}

/// A stand-in for Stripe's `GET /v1/events`: two pages, newest first, after one `429`;
/// records each request's query and `Authorization`.
async fn stripe_events_api(events: Vec<Value>) -> (String, Arc<std::sync::Mutex<Vec<(String, String)>>>) {
    let seen: Arc<std::sync::Mutex<Vec<(String, String)>>> = Arc::default();
    let recorded = seen.clone();
    let app = axum::Router::new().route(
        "/v1/events",
        axum::routing::get(move |uri: axum::http::Uri, headers: axum::http::HeaderMap| {
            let (recorded, events) = (recorded.clone(), events.clone());
            async move {
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                let query = uri.query().unwrap_or_default().to_owned();
                let first = {
                    let mut seen = recorded.lock().unwrap();
                    seen.push((query.clone(), auth));
                    seen.len() == 1
                };
                if first {
                    let limited = axum::http::StatusCode::TOO_MANY_REQUESTS;
                    return (limited, [("retry-after", "0")], String::from(r#"{"error":{"type":"rate_limit"}}"#));
                }
                let page = if query.contains("starting_after=evt_2") { &events[2..] } else { &events[..2] };
                let body = json!({"object": "list", "url": "/v1/events", "has_more": !query.contains("starting_after"), "data": page});
                (axum::http::StatusCode::OK, [("retry-after", "")], body.to_string())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

/// A gateway reading Stripe's events API at `api` (reconciling on demand only), with an
/// application whose one endpoint is the receiver.
async fn reconciling_gateway(api: String, pages_max: usize) -> (Gateway, Receiver, String) {
    let mut config = dev_config();
    config.inbound.stripe_api_base = api;
    config.inbound.reconcile_interval_ms = 0;
    config.inbound.reconcile_pages_max = pages_max;
    let gw = start_gateway(config).await;
    let rx = Receiver::start(Answer::status(200)).await;
    let app = gw.app("merchant").await;
    gw.endpoint(&app, json!({"url": rx.url})).await;
    (gw, rx, app)
}

#[tokio::test]
async fn reconciliation_ingests_what_the_provider_gave_up_on() {
    let event = |n: u32| json!({"id": format!("evt_{n}"), "object": "event", "type": "charge.succeeded", "created": T0 / 1000 - 600 + n as i64, "data": {"object": {"id": format!("ch_{n}")}}});
    let (api, requests) = stripe_events_api(vec![event(3), event(2), event(1)]).await;
    let (gw, rx, app) = reconciling_gateway(api, 100).await;
    let body = json!({"name": "stripe", "preset": "stripe", "secrets": ["whsec_live"], "appId": app, "apiKey": "rk_test_reads_events"});
    let src = gw.ok("POST", "/api/v1/source", Some(body)).await;
    assert_eq!(src["reconciles"], true);
    assert!(!src.to_string().contains("rk_test"), "the API key is never shown: {src}");
    let id = src["id"].as_str().unwrap().to_owned();

    // evt_1 arrived as a webhook; evt_2 and evt_3 never did.
    let webhook = serde_json::to_string(&event(1)).unwrap();
    let (status, _) =
        post_in(&gw, &format!("/in/{id}"), &stripe_request("whsec_live", &webhook, T0 / 1000), &webhook).await;
    assert_eq!(status, 200);
    rx.next().await;

    let run = gw.ok("POST", &format!("/api/v1/source/{id}/reconcile"), None).await;
    assert_eq!(
        (run["found"].as_u64(), run["alreadyHad"].as_u64(), run["ingested"].as_u64(), run["errors"].clone()),
        (Some(3), Some(1), Some(2), json!([])),
        "{run}"
    );
    assert_eq!(run["since"], "2025-12-29T00:00:00.000Z", "three days back");
    let mut got = Vec::new();
    for _ in 0..2 {
        let delivered = rx.next().await;
        assert_eq!(delivered.header("x-hookline-reconciled"), "true");
        let payload: Value = serde_json::from_slice(&delivered.body).unwrap();
        got.push(payload["id"].as_str().unwrap().to_owned());
    }
    got.sort();
    assert_eq!(got, vec!["evt_2", "evt_3"]);
    assert!(!rx.gets_within(200).await, "evt_1 is not delivered twice");

    // A minute later, again: everything is known now. Both runs are listed, newest first.
    gw.advance(60_000);
    let again = gw.ok("POST", &format!("/api/v1/source/{id}/reconcile"), None).await;
    assert_eq!((again["alreadyHad"].as_u64(), again["ingested"].as_u64()), (Some(3), Some(0)), "{again}");
    let runs = gw.ok("GET", &format!("/api/v1/source/{id}/reconcile"), None).await;
    assert_eq!(runs["data"].as_array().unwrap().len(), 2);
    assert_eq!(runs["data"][0]["alreadyHad"], 3);

    // The requests: the key as a bearer token, the window, Stripe's page size, and the
    // next page after the last event listed; the first, rate limited, was asked again.
    let requests = requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1 + 2 + 2, "{requests:?}");
    let (since, until) = ((T0 - 3 * 86_400_000) / 1000, (T0 - 300_000) / 1000);
    let window = format!("created%5Bgte%5D={since}&created%5Blte%5D={until}&limit=100");
    assert_eq!(requests[1].0, window);
    assert_eq!(requests[2].0, format!("{window}&starting_after=evt_2"));
    assert!(requests.iter().all(|(_, auth)| auth == "Bearer rk_test_reads_events"));

    // A source without a key is refused, and a key can be taken away.
    let plain = gw
        .ok("POST", "/api/v1/source", Some(json!({"name": "gh", "preset": "github", "secrets": ["x"], "appId": app})))
        .await;
    let (status, error) =
        gw.call("POST", &format!("/api/v1/source/{}/reconcile", plain["id"].as_str().unwrap()), None).await;
    assert_eq!((status, error["code"].as_str()), (409, Some("conflict")), "{error}");
    let patched = gw.ok("PATCH", &format!("/api/v1/source/{id}"), Some(json!({"apiKey": null}))).await;
    assert_eq!(patched["reconciles"], false);
    gw.stop().await;
}

/// An event in which the source's event id settings find no id is skipped, counted and
/// named, and the run goes on to the events after it (it stopped there, every run).
#[tokio::test]
async fn reconciliation_skips_an_event_without_an_id_and_goes_on() {
    let event = |n: u32, order: Option<&str>| {
        let metadata = order.map_or(json!({}), |order| json!({"order_id": order}));
        json!({"id": format!("evt_{n}"), "object": "event", "type": "charge.succeeded", "created": T0 / 1000 - 600 + n as i64, "data": {"object": {"id": format!("ch_{n}"), "metadata": metadata}}})
    };
    let (api, _) = stripe_events_api(vec![event(3, Some("o3")), event(2, None), event(1, Some("o1"))]).await;
    let (gw, rx, app) = reconciling_gateway(api, 100).await;
    let body = json!({"name": "stripe", "preset": "stripe", "secrets": ["whsec_live"], "appId": app, "apiKey": "rk_test",
        "config": {"eventIdTemplates": ["order-{/data/object/metadata/order_id}"]}});
    let id = gw.ok("POST", "/api/v1/source", Some(body)).await["id"].as_str().unwrap().to_owned();
    let counts = |run: &Value| {
        let n = |key: &str| run[key].as_u64().unwrap();
        (n("found"), n("withoutId"), n("ingested"), n("alreadyHad"))
    };
    let run = gw.ok("POST", &format!("/api/v1/source/{id}/reconcile"), None).await;
    assert_eq!(counts(&run), (3, 1, 2, 0), "{run}");
    let errors = run["errors"].as_array().unwrap();
    assert!(errors.len() == 1 && errors[0].as_str().unwrap().contains("evt_2"), "{run}");
    let mut got: Vec<String> = Vec::new();
    for _ in 0..2 {
        let payload: Value = serde_json::from_slice(&rx.next().await.body).unwrap();
        got.push(payload["id"].as_str().unwrap().into());
    }
    got.sort();
    assert_eq!(got, ["evt_1", "evt_3"], "the one after the event without an id too");
    let again = gw.ok("POST", &format!("/api/v1/source/{id}/reconcile"), None).await;
    assert_eq!(counts(&again), (3, 1, 0, 2), "{again}");
    assert!(!rx.gets_within(200).await, "nothing is taken twice");

    // Settings that read a header find no id in any event: refused before any page is read.
    // So are templates reading one before a template that reads none: a webhook is keyed by
    // the first, an API event by the later one.
    for templates in [json!(["{header:x-event-id}"]), json!(["{header:x-event-id}", "{/id}"])] {
        let config = json!({"eventIdTemplates": templates});
        gw.ok("PATCH", &format!("/api/v1/source/{id}"), Some(json!({"config": config}))).await;
        let refused = gw.ok("POST", &format!("/api/v1/source/{id}/reconcile"), None).await;
        assert_eq!(counts(&refused), (0, 0, 0, 0), "{refused}");
        assert!(refused["errors"][0].as_str().unwrap().contains("read a header"), "{refused}");
    }
    gw.stop().await;
}

/// A stand-in for Stripe's `GET /v1/events` over `events` (newest first), two a page,
/// going on after `starting_after`; the first page asked after `failing_after`, if given,
/// answers 500.
async fn paged_events_api(events: Vec<Value>, failing_after: Option<&'static str>) -> String {
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let app = axum::Router::new().route(
        "/v1/events",
        axum::routing::get(move |uri: axum::http::Uri| {
            let (events, failed) = (events.clone(), failed.clone());
            async move {
                let query = uri.query().unwrap_or_default().to_owned();
                let after = query.split('&').find_map(|pair| pair.strip_prefix("starting_after="));
                if after.is_some() && after == failing_after && !failed.swap(true, std::sync::atomic::Ordering::SeqCst)
                {
                    return Err(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
                }
                let from = after.map_or(0, |id| events.iter().position(|e| e["id"] == id).unwrap() + 1);
                let page = &events[from..(from + 2).min(events.len())];
                Ok(json!({"object": "list", "has_more": from + 2 < events.len(), "data": page}).to_string())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// Reconciliation keys an event as the source keys its webhooks (here an `eventIdTemplates`
/// setting: the first version keyed it by the bare event id, and so took every event the
/// webhooks brought again); and a run that stops at its page limit leaves where it stopped,
/// so older events are reached by the next run (the first version started every run from
/// the newest, so events past the newest 10,000 were never reconciled).
#[tokio::test]
async fn reconciliation_keys_events_as_the_webhooks_and_goes_on_where_it_stopped() {
    let event = |n: u32| json!({"id": format!("evt_{n}"), "object": "event", "type": "charge.succeeded", "created": T0 / 1000 - 600 + n as i64});
    let api = paged_events_api((1..=5).rev().map(event).collect(), None).await;
    let (gw, rx, app) = reconciling_gateway(api, 2).await;
    let body = json!({"name": "stripe", "preset": "stripe", "secrets": ["whsec_live"], "appId": app,
        "apiKey": "rk_test_reads_events", "config": {"eventIdTemplates": ["stripe:{/id}"]}});
    let id = gw.ok("POST", "/api/v1/source", Some(body)).await["id"].as_str().unwrap().to_owned();
    let webhook = serde_json::to_string(&event(5)).unwrap();
    let (status, _) =
        post_in(&gw, &format!("/in/{id}"), &stripe_request("whsec_live", &webhook, T0 / 1000), &webhook).await;
    assert_eq!(status, 200);
    rx.next().await;

    let path = format!("/api/v1/source/{id}/reconcile");
    let reconcile = || gw.ok("POST", &path, None);
    let figures = |run: &Value| {
        let n = |name: &str| run[name].as_u64().unwrap();
        (n("found"), n("alreadyHad"), n("ingested"), run["resumedAfter"].clone(), run["resumeAfter"].clone())
    };
    let first = reconcile().await;
    assert_eq!(figures(&first), (4, 1, 3, Value::Null, json!("evt_2")), "two pages, then stopped: {first}");
    let second = reconcile().await;
    assert_eq!(figures(&second), (1, 0, 1, json!("evt_2"), Value::Null), "on from evt_2, to the end: {second}");
    let third = reconcile().await;
    assert_eq!(figures(&third), (4, 4, 0, Value::Null, json!("evt_2")), "from the newest again: {third}");
    assert_eq!(third["errors"], json!([]));
    let mut got = Vec::new();
    for _ in 0..4 {
        let payload: Value = serde_json::from_slice(&rx.next().await.body).unwrap();
        got.push(payload["id"].as_str().unwrap().to_owned());
    }
    got.sort();
    assert_eq!(got, ["evt_1", "evt_2", "evt_3", "evt_4"]);
    assert!(!rx.gets_within(200).await, "evt_5, which came as a webhook, is not delivered again");
    gw.stop().await;
}

/// A run whose page fails leaves where it got to: the next goes on after the last event it
/// handled (it started over, and a page that failed often kept the older events out of
/// reach).
#[tokio::test]
async fn a_reconciliation_that_fails_goes_on_where_it_got_to() {
    let event = |n: u32| json!({"id": format!("evt_{n}"), "object": "event", "type": "charge.succeeded", "created": T0 / 1000 - 600 + n as i64});
    let api = paged_events_api((1..=6).rev().map(event).collect(), Some("evt_3")).await;
    let (gw, rx, app) = reconciling_gateway(api, 100).await;
    let body = json!({"name": "stripe", "preset": "stripe", "secrets": ["whsec_live"], "appId": app,
        "apiKey": "rk_test_reads_events"});
    let id = gw.ok("POST", "/api/v1/source", Some(body)).await["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/source/{id}/reconcile");
    let first = gw.ok("POST", &path, None).await;
    assert_eq!((first["ingested"].as_u64(), &first["resumeAfter"]), (Some(4), &json!("evt_3")), "{first}");
    assert_eq!(first["errors"].as_array().unwrap().len(), 1, "{first}");
    let second = gw.ok("POST", &path, None).await;
    assert_eq!((second["ingested"].as_u64(), &second["resumedAfter"]), (Some(2), &json!("evt_3")), "{second}");
    assert_eq!((&second["resumeAfter"], &second["errors"]), (&Value::Null, &json!([])), "{second}");
    for _ in 0..6 {
        rx.next().await;
    }
    assert!(!rx.gets_within(200).await, "each event once");
    gw.stop().await;
}

/// The leader reconciles every `inbound.reconcile_interval_ms`, but starts no run while the
/// last is still going: a provider that does not answer is asked once, not once per
/// interval.
#[tokio::test]
async fn a_reconciliation_still_running_is_not_started_again() {
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = asked.clone();
    let silent = axum::Router::new().route(
        "/v1/events",
        axum::routing::get(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::pending::<String>()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, silent).await.unwrap() });
    let mut config = dev_config();
    config.inbound.stripe_api_base = api;
    config.inbound.reconcile_interval_ms = 1_000;
    config.retention.interval_ms = 1_000;
    let gw = start_gateway(config).await;
    let app = gw.app("merchant").await;
    let body =
        json!({"name": "stripe", "preset": "stripe", "secrets": ["whsec_live"], "appId": app, "apiKey": "rk_test_x"});
    gw.ok("POST", "/api/v1/source", Some(body)).await;
    let asked_now = || asked.load(std::sync::atomic::Ordering::SeqCst);
    // The leader's clock moves a second at a time, so each turn of its loop finds a
    // reconciliation due; the first run to find the source asks and never hears back.
    let mut turns = 0;
    while asked_now() == 0 {
        assert!(turns < 200, "no reconciliation asked the provider");
        gw.advance(1_000);
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        turns += 1;
    }
    for _ in 0..10 {
        gw.advance(1_000);
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(asked_now(), 1, "a run was started while the last was still waiting for the provider");
    gw.stop().await;
}

/// A source's options are held to the bounds the OpenAPI document states them with
/// (schemathesis found an empty publicKey taken).
#[tokio::test]
async fn a_sources_options_keep_their_bounds() {
    let gw = start_gateway(dev_config()).await;
    let app = gw.app("merchant").await;
    let body = json!({"name": "p", "preset": "hmac", "secrets": ["s"], "appId": app});
    let created = gw.ok("POST", "/api/v1/source", Some(body)).await;
    let path = format!("/api/v1/source/{}", created["id"].as_str().unwrap());
    for config in [json!({"publicKey": ""}), json!({"notificationUrl": ""}), json!({"publicKey": "k".repeat(257)})] {
        let (status, error) = gw.call("PATCH", &path, Some(json!({"config": config.clone()}))).await;
        assert_eq!((status, error["code"].as_str()), (422, Some("validation")), "{config}: {error}");
    }
}

/// A deleted source's request counts leave `/metrics`, and so do the counts of a deleted
/// application's sources; another source's stay.
#[tokio::test]
async fn a_deleted_sources_series_leave_the_metrics() {
    let gw = start_gateway(dev_config()).await;
    let (kept_app, gone_app) = (gw.app("kept").await, gw.app("gone").await);
    let mut ids = Vec::new();
    for app in [&kept_app, &kept_app, &gone_app] {
        let id = source(&gw, app, "stripe", json!(["whsec_x"]), json!({})).await["id"].as_str().unwrap().to_owned();
        let (status, _) = post_in(&gw, &format!("/in/{id}"), &[], "{}").await;
        assert_eq!(status, 401, "unsigned: refused, and counted");
        ids.push(id);
    }
    let label = |id: &str| format!("source=\"{id}\"");
    let metrics = gw.metrics().await;
    assert!(ids.iter().all(|id| metrics.contains(&label(id))), "{metrics}");
    gw.ok("DELETE", &format!("/api/v1/source/{}", ids[0]), None).await;
    gw.ok("DELETE", &format!("/api/v1/app/{gone_app}"), None).await;
    eventually("the deleted sources' series leave", async || {
        let metrics = gw.metrics().await;
        let gone = !metrics.contains(&label(&ids[0])) && !metrics.contains(&label(&ids[2]));
        done_or(gone && metrics.contains(&label(&ids[1])), metrics)
    })
    .await;
    gw.stop().await;
}

/// A source keying events by `{body}` (the hash of the webhook's bytes) is not reconciled,
/// and the run says why: an event listed by the events API is laid out otherwise, so every
/// event delivered by webhook was taken again.
#[tokio::test]
async fn a_source_keyed_by_its_bodies_is_not_reconciled() {
    let event = json!({"id": "evt_1", "object": "event", "type": "charge.succeeded", "created": T0 / 1000 - 600});
    let mut config = dev_config();
    config.inbound.stripe_api_base = paged_events_api(vec![event.clone()], None).await;
    config.inbound.reconcile_interval_ms = 0;
    let gw = start_gateway(config).await;
    let rx = Receiver::start(Answer::status(200)).await;
    let app = gw.app("merchant").await;
    gw.endpoint(&app, json!({"url": rx.url})).await;
    let body = json!({"name": "stripe", "preset": "stripe", "secrets": ["whsec_live"], "appId": app,
        "apiKey": "rk_test_reads_events", "config": {"eventIdTemplates": ["{body}"]}});
    let id = gw.ok("POST", "/api/v1/source", Some(body)).await["id"].as_str().unwrap().to_owned();
    let webhook = serde_json::to_string_pretty(&event).unwrap();
    let (status, _) =
        post_in(&gw, &format!("/in/{id}"), &stripe_request("whsec_live", &webhook, T0 / 1000), &webhook).await;
    assert_eq!(status, 200);
    rx.next().await;
    let run = gw.ok("POST", &format!("/api/v1/source/{id}/reconcile"), None).await;
    assert_eq!(run["ingested"], 0, "{run}");
    assert!(run["errors"][0].as_str().unwrap().contains("{body}"), "{run}");
    assert!(!rx.gets_within(200).await, "the event is not delivered again");
    gw.stop().await;
}
