//! Telling the owner: operational webhook endpoints and the events they receive, automatic
//! disabling on the manual clock, and deliveries skipped while an endpoint is disabled.

use crate::harness::*;
use hookline_core::signature::{verify_standard, Secret};
use hookline_server::clock::Clock;
use serde_json::{json, Value};

const OPS: &str = "/api/v1/operational-webhook/endpoint";
const DAY: i64 = 86_400_000;

/// An operational endpoint receiving at `rx`, and its secret.
async fn operational_endpoint(gw: &Gateway, rx: &Receiver, types: Option<&[&str]>) -> (String, String) {
    let mut body = json!({"url": rx.url, "description": "on-call"});
    if let Some(types) = types {
        body["eventTypes"] = json!(types);
    }
    let created = gw.ok("POST", OPS, Some(body)).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = gw.ok("GET", &format!("{OPS}/{id}/secret"), None).await["key"].as_str().unwrap().to_owned();
    (id, secret)
}

/// The next `n` events the receiver gets, each checked against the operational endpoint's
/// signature, as `(type, data)` in arrival order.
async fn events(gw: &Gateway, rx: &Receiver, secret: &str, n: usize) -> Vec<(String, Value)> {
    let mut seen = Vec::new();
    for _ in 0..n {
        let got = rx.next().await;
        let secret = Secret::parse(secret).unwrap();
        let now_s = gw.clock.now_ms() / 1000;
        let (id, ts, sig) =
            (got.header("webhook-id"), got.header("webhook-timestamp"), got.header("webhook-signature"));
        verify_standard(id, ts, sig, &got.body, &[secret], now_s, 300).expect("signed with the operational secret");
        let event: Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(event.as_object().unwrap().len(), 2, "Svix's envelope: type and data: {event}");
        seen.push((event["type"].as_str().unwrap().to_owned(), event["data"].clone()));
    }
    seen
}

fn of_type<'a>(events: &'a [(String, Value)], event_type: &str) -> Vec<&'a Value> {
    events.iter().filter(|(t, _)| t == event_type).map(|(_, data)| data).collect()
}

#[tokio::test]
async fn operational_endpoints_hear_endpoint_changes_and_failing_messages() {
    let gw = start_gateway(dev_config()).await;
    let ops_rx = Receiver::start(Answer::status(204)).await;
    let failed_rx = Receiver::start(Answer::status(204)).await;
    // No event types: every type but `message.attempt.failed`, which only an endpoint that
    // names it gets (one event a failed attempt, each a commit the attempt waits on).
    let (_, ops_secret) = operational_endpoint(&gw, &ops_rx, None).await;
    // The internal application takes no message, not even with the admin token: it would
    // reach the operators' endpoints as a forged alert.
    let forged = json!({"eventType": "endpoint.disabled", "payload": {"data": {"endpointId": "ep_x"}}});
    let (status, refused) = gw.call("POST", "/api/v1/app/app_00000000000operational/msg", Some(forged)).await;
    assert_eq!((status, refused["code"].as_str()), (404, Some("not_found")), "{refused}");
    let (_, failed_secret) = operational_endpoint(&gw, &failed_rx, Some(&["message.attempt.failed"])).await;
    let (status, refused) =
        gw.call("POST", OPS, Some(json!({"url": ops_rx.url, "eventTypes": ["payment.done"]}))).await;
    assert_eq!((status, refused["code"].as_str()), (422, Some("validation")), "{refused}");
    // At most one of each of the nine types, as the document says (`maxItems`).
    let ten = vec!["endpoint.created"; 10];
    let (status, refused) = gw.call("POST", OPS, Some(json!({"url": ops_rx.url, "eventTypes": ten}))).await;
    assert_eq!((status, refused["code"].as_str()), (422, Some("validation")), "{refused}");
    let listed = gw.ok("GET", OPS, None).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);
    let apps = gw.ok("GET", "/api/v1/app", None).await;
    assert!(apps["data"].as_array().unwrap().is_empty(), "the operational application is not listed: {apps}");

    let merchant_rx = Receiver::start(Answer::status(500)).await;
    let app = gw.app("merchant-7").await;
    let ep = gw
        .endpoint(
            &app,
            json!({"url": merchant_rx.url, "uid": "main", "retryPolicy": {"delaysMs": [1000, 1000, 1000, 1000, 1000]}}),
        )
        .await;
    let ep_id = ep["id"].as_str().unwrap().to_owned();
    let created = events(&gw, &ops_rx, &ops_secret, 1).await;
    assert_eq!(created[0].0, "endpoint.created");
    assert_eq!(created[0].1, json!({"appId": app, "appUid": "merchant-7", "endpointId": ep_id, "endpointUid": "main"}));

    // Four failed attempts in a row: `failing`, with the last attempt; then a success: `recovered`.
    let msg = gw.publish(&app, json!({"eventType": "charge.failed", "eventId": "evt_42", "payload": {}})).await;
    for n in 1..=4 {
        merchant_rx.next().await;
        gw.wait_attempts(&app, &msg, n).await;
        if n < 4 {
            gw.advance(1000);
        }
    }
    let failed = events(&gw, &failed_rx, &failed_secret, 4).await;
    assert!(failed.iter().all(|(t, data)| t == "message.attempt.failed" && data["msgId"] == msg.as_str()));
    let failing = events(&gw, &ops_rx, &ops_secret, 1).await;
    assert_eq!(failing[0].0, "message.attempt.failing");
    let data = &failing[0].1;
    let attempts = gw.attempts_of(&app, &msg).await;
    let last = attempts.last().unwrap();
    assert_eq!((data["msgId"].as_str(), data["msgEventId"].as_str()), (Some(msg.as_str()), Some("evt_42")));
    assert_eq!((data["appUid"].as_str(), data["endpointId"].as_str()), (Some("merchant-7"), Some(ep_id.as_str())));
    assert_eq!(data["lastAttempt"]["id"], last["id"]);
    assert_eq!(data["lastAttempt"]["responseStatusCode"], 500);
    assert_eq!(data["lastAttempt"]["timestamp"], last["timestamp"]);
    let health = gw.ok("GET", &format!("/api/v1/app/{app}/endpoint/{ep_id}"), None).await["health"].clone();
    assert_eq!(health["status"], "failing");
    assert_eq!(health["failSince"], attempts[0]["timestamp"], "failing since the first failure");

    merchant_rx.set_fallback(Answer::status(200));
    gw.advance(1000);
    merchant_rx.next().await;
    let recovered = events(&gw, &ops_rx, &ops_secret, 1).await;
    assert_eq!((recovered[0].0.as_str(), &recovered[0].1["msgId"]), ("message.attempt.recovered", &json!(msg)));
    assert_eq!(recovered[0].1["lastAttempt"]["responseStatusCode"], 200);
    let health = gw.ok("GET", &format!("/api/v1/app/{app}/endpoint/{ep_id}"), None).await["health"].clone();
    assert_eq!(health, json!({"status": "healthy", "failSince": null}), "a success resets the health");

    // Retries used up: `exhausted` (a one-retry policy, failing twice).
    merchant_rx.set_fallback(Answer::status(503));
    gw.ok("PATCH", &format!("/api/v1/app/{app}/endpoint/{ep_id}"), Some(json!({"retryPolicy": {"delaysMs": [1000]}})))
        .await;
    let updated = events(&gw, &ops_rx, &ops_secret, 1).await;
    assert_eq!(updated[0].0, "endpoint.updated");
    let doomed = gw.publish(&app, json!({"eventType": "charge.failed", "payload": {}})).await;
    merchant_rx.next().await;
    gw.wait_attempts(&app, &doomed, 1).await;
    gw.advance(1000);
    merchant_rx.next().await;
    let exhausted = events(&gw, &ops_rx, &ops_secret, 1).await;
    assert_eq!((exhausted[0].0.as_str(), &exhausted[0].1["msgId"]), ("message.attempt.exhausted", &json!(doomed)));
    assert_eq!(exhausted[0].1["msgEventId"], Value::Null);
    assert_eq!(events(&gw, &failed_rx, &failed_secret, 2).await.len(), 2, "one `failed` per failed attempt");

    // Disabled and enabled by hand; deleted.
    let path = format!("/api/v1/app/{app}/endpoint/{ep_id}");
    gw.ok("PATCH", &path, Some(json!({"disabled": true}))).await;
    let changes = events(&gw, &ops_rx, &ops_secret, 2).await;
    let disabled = of_type(&changes, "endpoint.disabled");
    assert_eq!(of_type(&changes, "endpoint.updated").len(), 1);
    assert_eq!(disabled.len(), 1, "{changes:?}");
    assert_eq!(disabled[0]["trigger"], "manual");
    assert!(disabled[0]["failSince"].is_string(), "it had been failing: {}", disabled[0]);
    gw.ok("PATCH", &path, Some(json!({"disabled": false}))).await;
    let changes = events(&gw, &ops_rx, &ops_secret, 2).await;
    assert_eq!(of_type(&changes, "endpoint.enabled").len(), 1, "{changes:?}");
    let health = gw.ok("GET", &path, None).await["health"].clone();
    assert_eq!(health["status"], "healthy", "enabling restarts the failure clock");
    gw.ok("DELETE", &path, None).await;
    let deleted = events(&gw, &ops_rx, &ops_secret, 1).await;
    assert_eq!((deleted[0].0.as_str(), &deleted[0].1["endpointUid"]), ("endpoint.deleted", &json!("main")));
    gw.stop().await;
}

/// An operational endpoint that fails makes no events about itself, and one of another
/// type is not told what it did not ask for.
#[tokio::test]
async fn operational_endpoints_failing_make_no_events() {
    let gw = start_gateway(dev_config()).await;
    let broken_rx = Receiver::start(Answer::status(500)).await;
    let watcher_rx = Receiver::start(Answer::status(204)).await;
    operational_endpoint(&gw, &broken_rx, None).await;
    let (_, secret) = operational_endpoint(&gw, &watcher_rx, None).await;
    let app = gw.app("merchant").await;
    gw.endpoint(&app, json!({"url": "http://127.0.0.1:9/never"})).await;
    // Both hear endpoint.created; the broken one fails and is retried, and nobody hears of it.
    broken_rx.next().await;
    let heard = events(&gw, &watcher_rx, &secret, 1).await;
    assert_eq!(heard[0].0, "endpoint.created");
    // Its retry (about 5 s later; the clock moves until it comes, as the first attempt may
    // be recorded after a step).
    let mut retried = false;
    for _ in 0..20 {
        gw.advance(5_000);
        if broken_rx.gets_within(300).await {
            retried = true;
            break;
        }
    }
    assert!(retried, "the failing operational endpoint is retried");
    assert!(!watcher_rx.gets_within(500).await, "an operational endpoint's failures make no events");
    gw.stop().await;
}

/// An operational endpoint Hookline disables after failing makes no event, but is counted
/// (`hookline_operational_endpoints_disabled_total`): its owners' alert channel stopped.
#[tokio::test]
async fn an_operational_endpoint_disabled_for_failing_is_counted() {
    let mut config = dev_config();
    config.delivery.disable_after_ms = DAY as u64;
    let gw = start_gateway(config).await;
    let broken_rx = Receiver::start(Answer::status(500)).await;
    let (id, _) = operational_endpoint(&gw, &broken_rx, None).await;
    let app = gw.app("merchant").await;
    gw.endpoint(&app, json!({"url": "http://127.0.0.1:9/never"})).await;
    broken_rx.next().await;
    // Its retries (Svix's schedule, hours apart by the third) until it has failed a day.
    eventually("the operational endpoint was never disabled", async || {
        gw.advance(3_600_000);
        let _ = broken_rx.gets_within(50).await;
        let endpoint = gw.ok("GET", &format!("{OPS}/{id}"), None).await;
        done_or(endpoint["disabled"] == true, endpoint.to_string())
    })
    .await;
    eventually("the disabled operational endpoint was not counted", async || {
        let metrics = gw.metrics().await;
        let counted = metrics.lines().any(|l| l == "hookline_operational_endpoints_disabled_total 1");
        done_or(counted, metrics.lines().filter(|l| l.contains("operational")).collect::<Vec<_>>().join("\n"))
    })
    .await;
    gw.stop().await;
}

#[tokio::test]
async fn an_endpoint_failing_for_days_is_disabled_and_what_it_missed_is_kept() {
    let mut config = dev_config();
    config.delivery.disable_after_ms = 3 * DAY as u64;
    let gw = start_gateway(config).await;
    let ops_rx = Receiver::start(Answer::status(204)).await;
    let (_, secret) = operational_endpoint(&gw, &ops_rx, Some(&["endpoint.disabled", "endpoint.enabled"])).await;
    let merchant_rx = Receiver::start(Answer::status(500)).await;
    let app = gw.app("merchant").await;
    let policy = json!({"delaysMs": [DAY, DAY, DAY, DAY, DAY]});
    let ep = gw.endpoint(&app, json!({"url": merchant_rx.url, "retryPolicy": policy})).await;
    let ep_id = ep["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/app/{app}/endpoint/{ep_id}");

    let first = gw.publish(&app, json!({"eventType": "charge.failed", "payload": {"n": 1}})).await;
    for n in 1..=3 {
        merchant_rx.next().await;
        gw.wait_attempts(&app, &first, n).await;
        gw.advance(DAY);
    }
    assert!(!gw.ok("GET", &path, None).await["disabled"].as_bool().unwrap(), "not after two days of failures");
    merchant_rx.next().await;
    let disabled = events(&gw, &ops_rx, &secret, 1).await;
    assert_eq!(disabled[0].0, "endpoint.disabled");
    assert_eq!(disabled[0].1["trigger"], "automatic");
    assert_eq!(disabled[0].1["failSince"], "2026-01-01T00:00:00.000Z");
    let e = gw.ok("GET", &path, None).await;
    assert_eq!((e["disabled"].as_bool(), &e["health"]["status"]), (Some(true), &json!("disabled")));

    // While disabled: published messages are recorded as skipped, never attempted.
    let missed = gw.publish(&app, json!({"eventType": "charge.succeeded", "payload": {"n": 2}})).await;
    let destinations = gw.ok("GET", &format!("/api/v1/app/{app}/msg/{missed}/endpoint"), None).await;
    let d = &destinations["data"][0];
    assert_eq!((d["status"].as_i64(), d["statusText"].as_str()), (Some(5), Some("skipped")), "{destinations}");
    let skipped = gw.ok("GET", &format!("/api/v1/app/{app}/endpoint/{ep_id}/msg?status=5"), None).await;
    assert_eq!(skipped["data"].as_array().unwrap().len(), 1, "listed with their status: {skipped}");
    gw.advance(DAY);
    assert!(!merchant_rx.gets_within(300).await, "a disabled endpoint gets nothing");
    // The first message's next retry came due meanwhile: skipped too, not attempted.
    eventually("the retry due while disabled was never skipped", async || {
        let (status, _) = gw.destination(&app, &first).await;
        done_or(status == 5, format!("status {status}"))
    })
    .await;

    // Enabled and recovered: what it missed is sent.
    merchant_rx.set_fallback(Answer::status(200));
    gw.ok("PATCH", &path, Some(json!({"disabled": false}))).await;
    assert_eq!(events(&gw, &ops_rx, &secret, 1).await[0].0, "endpoint.enabled");
    let recovered = gw.ok("POST", &format!("{path}/recover"), Some(json!({"since": "2026-01-01T00:00:00Z"}))).await;
    assert_eq!(recovered["recovered"], 2, "the skipped message and the one skipped mid-retries: {recovered}");
    let mut bodies = vec![merchant_rx.next().await.body, merchant_rx.next().await.body];
    bodies.sort();
    assert_eq!(bodies, vec![&b"{\"n\":1}"[..], &b"{\"n\":2}"[..]]);
    gw.stop().await;
}

/// A provider's webhook that the merchant's application keeps refusing: the events name
/// the inbound source it came from.
#[tokio::test]
async fn events_about_inbound_messages_name_their_source() {
    let gw = start_gateway(dev_config()).await;
    let ops_rx = Receiver::start(Answer::status(204)).await;
    let (_, secret) = operational_endpoint(&gw, &ops_rx, Some(&["message.attempt.failing"])).await;
    let app_rx = Receiver::start(Answer::status(502)).await;
    let app = gw.app("payments-service").await;
    gw.endpoint(&app, json!({"url": app_rx.url, "retryPolicy": {"delaysMs": [1000, 1000, 1000, 1000]}})).await;
    let body = json!({"preset": "stripe", "secrets": ["whsec_stripe_test"], "appId": app, "name": "stripe"});
    let source = gw.ok("POST", "/api/v1/source", Some(body)).await;
    let source_id = source["id"].as_str().unwrap();
    let payload = r#"{"id":"evt_1","type":"payment_intent.succeeded"}"#;
    let signature = hookline_core::signature::stripe_header(&["whsec_stripe_test"], T0 / 1000, payload.as_bytes());
    let response = gw
        .http
        .post(format!("{}/in/{source_id}", gw.url))
        .header("stripe-signature", signature)
        .header("content-type", "application/json")
        .body(payload)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let msg = response.json::<Value>().await.unwrap()["messageId"].as_str().unwrap().to_owned();
    for n in 1..=4 {
        app_rx.next().await;
        gw.wait_attempts(&app, &msg, n).await;
        gw.advance(1000);
    }
    let failing = events(&gw, &ops_rx, &secret, 1).await;
    assert_eq!(failing[0].0, "message.attempt.failing");
    assert_eq!(
        (failing[0].1["sourceId"].as_str(), failing[0].1["msgId"].as_str()),
        (Some(source_id), Some(msg.as_str()))
    );
    assert_eq!(failing[0].1["lastAttempt"]["responseStatusCode"], 502);
    gw.stop().await;
}
