//! The management API: bad input, auth, idempotency, pagination, Svix field names.

use crate::harness::*;
use serde_json::{json, Value};

async fn raw(gw: &Gateway, method: &str, path: &str, token: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    let mut request = gw.http.request(method.parse().unwrap(), format!("{}{path}", gw.url)).body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn bad_input_gets_a_json_error_with_a_stable_code() {
    let mut config = dev_config();
    config.api.body_bytes_max = 4096;
    let gw = start_gateway(config).await;
    let app = gw.app("merchant").await;
    let msg_path = format!("/api/v1/app/{app}/msg");
    let ep_path = format!("/api/v1/app/{app}/endpoint");
    let big = format!(r#"{{"eventType":"x","payload":{{"pad":"{}"}}}}"#, "x".repeat(5000));
    // (method, path, token, body, expected status, expected code)
    type Case<'a> = (&'a str, String, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("GET", "/api/v1/app".into(), None, vec![], 401, "authentication_failed"),
        ("GET", "/api/v1/app".into(), Some("wrong"), vec![], 401, "authentication_failed"),
        ("POST", msg_path.clone(), Some(TOKEN), b"{not json".to_vec(), 400, "invalid_json"),
        ("POST", msg_path.clone(), Some(TOKEN), b"".to_vec(), 400, "invalid_json"),
        ("POST", msg_path.clone(), Some(TOKEN), b"\xff\xfe".to_vec(), 400, "invalid_json"),
        ("POST", msg_path.clone(), Some(TOKEN), big.into_bytes(), 413, "payload_too_large"),
        ("POST", msg_path.clone(), Some(TOKEN), br#"{"eventType":"x"}"#.to_vec(), 422, "validation"),
        ("POST", msg_path.clone(), Some(TOKEN), br#"{"eventType":"x","payload":[1]}"#.to_vec(), 422, "validation"),
        (
            "POST",
            msg_path.clone(),
            Some(TOKEN),
            br#"{"eventType":"x","payload":{},"evenId":"typo"}"#.to_vec(),
            422,
            "validation",
        ),
        ("POST", msg_path.clone(), Some(TOKEN), br#"{"eventType":"","payload":{}}"#.to_vec(), 422, "validation"),
        // A NUL in a channel or tag made PostgreSQL's listings filtered by either fail.
        (
            "POST",
            msg_path.clone(),
            Some(TOKEN),
            br#"{"eventType":"x","payload":{},"channels":["\u0000"]}"#.to_vec(),
            422,
            "validation",
        ),
        (
            "POST",
            msg_path.clone(),
            Some(TOKEN),
            br#"{"eventType":"x","payload":{},"tags":["a\u0007"]}"#.to_vec(),
            422,
            "validation",
        ),
        (
            "POST",
            msg_path.clone(),
            Some(TOKEN),
            br#"{"eventType":"x","payload":{},"tags":[""]}"#.to_vec(),
            422,
            "validation",
        ),
        (
            "POST",
            msg_path.clone(),
            Some(TOKEN),
            format!(r#"{{"eventType":"x","payload":{{}},"tags":{}}}"#, serde_json::to_string(&vec!["t"; 11]).unwrap())
                .into_bytes(),
            422,
            "validation",
        ),
        (
            "POST",
            msg_path.clone(),
            Some(TOKEN),
            br#"{"eventType":"x","payload":{},"deliverAt":"tomorrow"}"#.to_vec(),
            422,
            "validation",
        ),
        ("POST", ep_path.clone(), Some(TOKEN), br#"{"url":"not a url"}"#.to_vec(), 422, "validation"),
        (
            "POST",
            ep_path.clone(),
            Some(TOKEN),
            br#"{"url":"https://x.example","secret":"nope"}"#.to_vec(),
            422,
            "validation",
        ),
        (
            "POST",
            ep_path.clone(),
            Some(TOKEN),
            br#"{"url":"https://x.example","headers":{"webhook-id":"x"}}"#.to_vec(),
            422,
            "validation",
        ),
        (
            "POST",
            ep_path.clone(),
            Some(TOKEN),
            br#"{"url":"https://x.example","retryPolicy":{"delaysMs":[]}}"#.to_vec(),
            422,
            "validation",
        ),
        ("POST", "/api/v1/app".into(), Some(TOKEN), br#"{"name":"x","uid":"has space"}"#.to_vec(), 422, "validation"),
        ("POST", "/api/v1/app".into(), Some(TOKEN), br#"{"name":"x","uid":"merchant"}"#.to_vec(), 409, "conflict"),
        ("GET", "/api/v1/app/app_missing".into(), Some(TOKEN), vec![], 404, "not_found"),
        ("GET", format!("{msg_path}/msg_missing"), Some(TOKEN), vec![], 404, "not_found"),
        ("GET", "/api/v1/app?limit=abc".into(), Some(TOKEN), vec![], 400, "bad_request"),
        // Documented: a path parameter that is not UTF-8.
        ("GET", "/api/v1/app/%FF".into(), Some(TOKEN), vec![], 400, "bad_request"),
        ("GET", "/api/v1/app?order=sideways".into(), Some(TOKEN), vec![], 400, "bad_request"),
        ("DELETE", "/api/v1/health".into(), None, vec![], 405, "method_not_allowed"),
        ("GET", "/api/v1/nowhere".into(), Some(TOKEN), vec![], 404, "not_found"),
    ];
    for (method, path, token, body, status, code) in cases {
        let (got, value) = raw(&gw, method, &path, token, body).await;
        assert_eq!((got, value["code"].as_str()), (status, Some(code)), "{method} {path}: {value}");
        assert!(value["detail"].is_string() || value["detail"].is_array(), "{value}");
    }
    let listed = gw.ok("GET", &msg_path, None).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 0, "nothing was accepted");
    gw.stop().await;
}

#[tokio::test]
async fn private_and_plain_http_targets_are_refused_outside_dev_mode() {
    let mut config = dev_config();
    config.server.dev = false;
    let gw = start_gateway(config).await;
    let app = gw.app("merchant").await;
    for url in [
        "http://merchant.example/hook",
        "https://127.0.0.1/hook",
        "https://localhost/hook",
        "https://10.0.0.8/hook",
        "https://169.254.169.254/latest",
        "https://[::1]/hook",
        "https://2130706433/hook",
    ] {
        let (status, body) = gw.call("POST", &format!("/api/v1/app/{app}/endpoint"), Some(json!({"url": url}))).await;
        assert_eq!(status, 422, "{url}: {body}");
    }
    let (status, _) = gw
        .call(
            "POST",
            &format!("/api/v1/app/{app}/msg"),
            Some(json!({"eventType": "x", "payload": {}, "callbackUrl": "https://192.168.1.1/cb"})),
        )
        .await;
    assert_eq!(status, 422);
    gw.endpoint(&app, json!({"url": "https://merchant.example/hook"})).await;
    gw.stop().await;
}

/// A request with an `Idempotency-Key`; its status and JSON answer.
async fn keyed(gw: &Gateway, method: &str, path: String, key: &str, body: Value) -> (u16, Value) {
    let request = gw.http.request(method.parse().unwrap(), format!("{}{path}", gw.url)).bearer_auth(TOKEN);
    let r = request.header("idempotency-key", key).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json::<Value>().await.unwrap())
}

#[tokio::test]
async fn idempotency_keys_and_event_ids_publish_once() {
    let gw = start_gateway(dev_config()).await;
    let app = gw.app("merchant").await;
    let msgs = format!("/api/v1/app/{app}/msg");
    let post = |key: &'static str, body: Value| keyed(&gw, "POST", msgs.clone(), key, body);
    let first = post("k-1", json!({"eventType": "payment.succeeded", "payload": {"a": 1}})).await;
    let again = post("k-1", json!({"eventType": "payment.succeeded", "payload": {"a": 1}})).await;
    assert_eq!(first, again, "same key, same answer");
    assert_eq!(first.0, 202);
    let with_event =
        gw.publish(&app, json!({"eventType": "payment.succeeded", "eventId": "evt_9", "payload": {"b": 2}})).await;
    let (status, dup) = gw
        .call(
            "POST",
            &format!("/api/v1/app/{app}/msg"),
            Some(json!({"eventType": "payment.succeeded", "eventId": "evt_9", "payload": {"b": 2}})),
        )
        .await;
    assert_eq!((status, dup["id"].as_str()), (200, Some(with_event.as_str())));
    assert_eq!(dup["payload"], json!({"b": 2}));
    // The stored message's answer follows `with_content` as a new one's does.
    let (status, dup) = gw
        .call(
            "POST",
            &format!("/api/v1/app/{app}/msg?with_content=false"),
            Some(json!({"eventType": "payment.succeeded", "eventId": "evt_9", "payload": {"b": 2}})),
        )
        .await;
    assert_eq!((status, &dup["payload"]), (200, &json!({})), "{dup}");
    let listed = gw.ok("GET", &format!("/api/v1/app/{app}/msg"), None).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);
    // An answer of any size is kept and replayed: one over 256 KiB (an endpoint whose
    // metadata is large) was a 500 after the endpoint was made, and the retry a 500 calls
    // for (the SDKs make it with the same key) made it again.
    let endpoints = format!("/api/v1/app/{app}/endpoint");
    let big = json!({"url": "https://a.example/", "metadata": {"k": "x".repeat(300_000)}});
    let first = keyed(&gw, "POST", endpoints.clone(), "k-big", big.clone()).await;
    assert_eq!(first.0, 201);
    assert_eq!(keyed(&gw, "POST", endpoints.clone(), "k-big", big).await, first, "replayed");
    assert_eq!(gw.ok("GET", &endpoints, None).await["data"].as_array().unwrap().len(), 1);
    gw.stop().await;
}

/// What the OpenAPI document promises the API does: integers in any JSON notation, bodies
/// and nested objects never read from arrays, URIs as RFC 3986 spells them, an archived
/// event type restored by creating it again, a PUT that rotates to a new secret.
#[tokio::test]
async fn the_api_accepts_exactly_what_its_document_says() {
    let gw = start_gateway(dev_config()).await;
    let app = gw.app("merchant").await;
    let eps = format!("/api/v1/app/{app}/endpoint");
    // (method, path, body, expected status)
    let cases = [
        ("POST", "/api/v1/app".to_owned(), json!({"name": "a", "throttleRate": 5.0}), 201),
        ("POST", "/api/v1/app".to_owned(), json!({"name": "b", "throttleRate": 5.5}), 422),
        ("POST", "/api/v1/app".to_owned(), json!({"name": "c", "retryPolicy": {"delaysMs": [1e3, 2000.0]}}), 201),
        ("POST", "/api/v1/app".to_owned(), json!({"name": "d", "retryPolicy": [[1000]]}), 422),
        ("POST", "/api/v1/app".to_owned(), json!(["e"]), 422),
        ("POST", "/api/v1/app".to_owned(), json!({"name": " "}), 201),
        ("POST", "/api/v1/app".to_owned(), json!({"name": ""}), 422),
        ("POST", "/api/v1/app".to_owned(), json!({"name": "x".repeat(256 / 4).replace('x', "€€€€")}), 201),
        ("POST", "/api/v1/app".to_owned(), json!({"name": "€".repeat(257)}), 422),
        ("POST", eps.clone(), json!({"url": "https://b\u{fc}cher.example/"}), 422),
        ("POST", eps.clone(), json!({"url": "https://xn--bcher-kva.example/"}), 201),
        ("POST", eps.clone(), json!({"url": "HTTPS://upper.example/"}), 422),
        ("POST", eps.clone(), json!({"url": "https://a.example/a b"}), 422),
        (
            "POST",
            "/api/v1/source".to_owned(),
            json!({"name": "s", "preset": "github", "secrets": [["v", null]], "appId": app}),
            422,
        ),
        (
            "POST",
            "/api/v1/source".to_owned(),
            json!({"name": "s", "preset": "github", "secrets": [{"value": "v"}], "appId": app}),
            201,
        ),
        ("POST", format!("/api/v1/app/{app}/msg"), json!({"eventType": "x", "payload": {}, "application": ["x"]}), 422),
        // A source's apiKey as its schema says: 1 to 1024 visible ASCII characters.
        (
            "POST",
            "/api/v1/source".to_owned(),
            json!({"name": "k", "preset": "stripe", "secrets": ["whsec_k"], "appId": app, "apiKey": "rk a\n"}),
            422,
        ),
        (
            "POST",
            "/api/v1/source".to_owned(),
            json!({"name": "k", "preset": "stripe", "secrets": ["whsec_k"], "appId": app, "apiKey": ""}),
            422,
        ),
        ("PUT", "/api/v1/event-type/a.b".to_owned(), json!({"name": "a.b", "description": "d"}), 422),
        ("PUT", "/api/v1/event-type/a.b".to_owned(), json!({"description": "d"}), 201),
        ("PUT", "/api/v1/event-type/a.b".to_owned(), json!({"description": "e"}), 200),
        // An upsert creating the endpoint under the path's key still checks the body's uid.
        ("PUT", format!("/api/v1/app/{app}/endpoint/new-one"), json!({"url": "https://a.example", "uid": "×ø"}), 422),
    ];
    for (method, path, body, status) in cases {
        let (got, answer) = gw.call(method, &path, Some(body.clone())).await;
        assert_eq!(got, status, "{method} {path} {body}: {answer}");
    }
    // Archived by DELETE, readable, restored by creating it again.
    assert_eq!(gw.call("DELETE", "/api/v1/event-type/a.b", None).await.0, 204);
    assert_eq!(gw.ok("GET", "/api/v1/event-type/a.b", None).await["archived"], true);
    let (status, restored) =
        gw.call("POST", "/api/v1/event-type", Some(json!({"name": "a.b", "description": "f"}))).await;
    assert_eq!(
        (status, restored["archived"].as_bool(), restored["description"].as_str()),
        (201, Some(false), Some("f"))
    );
    let (status, _) = gw.call("POST", "/api/v1/event-type", Some(json!({"name": "a.b", "description": "g"}))).await;
    assert_eq!(status, 409, "a live name is taken");

    // A PUT with another secret rotates to it; the old one keeps signing for the grace period.
    let ep = gw.endpoint(&app, json!({"url": "https://r.example/"})).await["id"].as_str().unwrap().to_owned();
    let old = gw.ok("GET", &format!("{eps}/{ep}/secret"), None).await["key"].as_str().unwrap().to_owned();
    let new = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let put = json!({"url": "https://r.example/", "secret": new});
    assert_eq!(gw.call("PUT", &format!("{eps}/{ep}"), Some(put.clone())).await.0, 200);
    assert_eq!(gw.ok("GET", &format!("{eps}/{ep}/secret"), None).await["key"], new);
    assert_eq!(gw.call("PUT", &format!("{eps}/{ep}"), Some(put)).await.0, 200, "the same secret again changes nothing");
    let stale = json!({"url": "https://r.example/", "secret": old});
    assert_eq!(gw.call("PUT", &format!("{eps}/{ep}"), Some(stale)).await.0, 200);
    assert_eq!(
        gw.ok("GET", &format!("{eps}/{ep}/secret"), None).await["key"],
        new,
        "a secret still signing after the rotation does not roll it back"
    );
    gw.stop().await;
}

/// On PostgreSQL, nodes share what a key holds: requests with one key sent to two nodes at
/// once (a client's retry that a load balancer sends elsewhere) publish one message, and
/// every answer is that message's or a 409 while it runs. SQLite runs one node.
#[tokio::test]
async fn an_idempotency_key_runs_once_across_nodes() {
    if std::env::var("HOOKLINE_TEST_BACKEND").as_deref() != Ok("postgres") {
        return;
    }
    use std::sync::Arc;
    let (dir, clock) = (Arc::new(tempfile::tempdir().unwrap()), Arc::new(hookline_server::clock::ManualClock::new(T0)));
    let a = start_gateway_in(dev_config(), dir.clone(), clock.clone()).await;
    let b = start_gateway_in(dev_config(), dir, clock).await;
    let app = a.app("merchant").await;
    let msgs = format!("/api/v1/app/{app}/msg");
    let paid = json!({"eventType": "payment.succeeded", "payload": {"amount": 100}});
    let first = keyed(&a, "POST", msgs.clone(), "k-1", paid.clone()).await;
    assert_eq!(first.0, 202);
    assert_eq!(keyed(&b, "POST", msgs.clone(), "k-1", paid.clone()).await, first, "the other node replays it");
    for round in 0..5 {
        let key = format!("k-burst-{round}");
        let sends = (0..12).map(|n| keyed(if n % 2 == 0 { &a } else { &b }, "POST", msgs.clone(), &key, paid.clone()));
        let answers = futures_util::future::join_all(sends).await;
        let created: Vec<&Value> = answers.iter().filter(|(status, _)| *status == 202).map(|(_, body)| body).collect();
        assert!(!created.is_empty(), "{answers:?}");
        assert!(created.iter().all(|body| body["id"] == created[0]["id"]), "one message: {answers:?}");
        assert!(answers.iter().all(|(status, _)| [202, 409].contains(status)), "{answers:?}");
    }
    let listed = a.ok("GET", &format!("{msgs}?limit=100"), None).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 6, "one message a key");
    a.stop().await;
    b.stop().await;
}

/// The IETF Idempotency-Key draft, as Stripe applies it: one key names one request. The same
/// request replays the answer; another body or route is a 422 and executes nothing; while the
/// first request runs, the key answers 409.
#[tokio::test]
async fn an_idempotency_key_names_one_request() {
    use tokio::io::AsyncWriteExt;
    let gw = start_gateway(dev_config()).await;
    let app = gw.app("merchant").await;
    let send = |method: &'static str, path: String, key: &'static str, body: Value| keyed(&gw, method, path, key, body);
    let msgs = format!("/api/v1/app/{app}/msg");
    let paid = json!({"eventType": "payment.succeeded", "payload": {"amount": 100}});
    let first = send("POST", msgs.clone(), "k-1", paid.clone()).await;
    assert_eq!(first.0, 202);
    // (method, path, body, expected status, expected code)
    let cases = [
        ("POST", format!("{msgs}/"), paid.clone(), 202, None),
        (
            "POST",
            msgs.clone(),
            json!({"eventType": "payment.succeeded", "payload": {"amount": 999}}),
            422,
            Some("idempotency_key_reused"),
        ),
        ("POST", "/api/v1/app".to_owned(), json!({"name": "other"}), 422, Some("idempotency_key_reused")),
        (
            "POST",
            "/api/v1/event-type".to_owned(),
            json!({"name": "x.y", "description": "d"}),
            422,
            Some("idempotency_key_reused"),
        ),
        ("POST", format!("{msgs}?with_content=false"), paid.clone(), 422, Some("idempotency_key_reused")),
    ];
    for (method, path, body, status, code) in cases {
        let (got, answer) = send(method, path.clone(), "k-1", body).await;
        assert_eq!(got, status, "{method} {path}: {answer}");
        match code {
            Some(code) => {
                assert_eq!(answer["code"], code, "{answer}");
                // Svix's list form, as its SDKs read every 422.
                assert_eq!(answer["detail"][0]["loc"], json!(["header", "idempotency-key"]), "{answer}");
            }
            None => assert_eq!((got, answer), first, "the same request replays the first answer"),
        }
    }
    let listed = gw.ok("GET", &msgs, None).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1, "only the first request was executed");
    let (status, _) = gw.call("GET", "/api/v1/app/other", None).await;
    assert_eq!(status, 404, "the refused request created nothing");

    // A request whose body is still arriving is in progress: its key answers 409 meanwhile.
    // The competing request may reach the server before the slow one's head does; then it
    // runs first, the slow one is refused as another request (422), and a new key is tried.
    let slow_body = serde_json::to_vec(&json!({"eventType": "payment.failed", "payload": {}})).unwrap();
    let competing = json!({"eventType": "payment.failed", "payload": {"other": true}});
    let keys = ["k-2", "k-3", "k-4", "k-5", "k-6", "k-7", "k-8", "k-9"];
    let mut refused_while_running = None;
    for (n, key) in keys.into_iter().enumerate() {
        let mut slow = tokio::net::TcpStream::connect(gw.url.trim_start_matches("http://")).await.unwrap();
        let head = format!(
            "POST {msgs} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nIdempotency-Key: {key}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            slow_body.len()
        );
        slow.write_all(head.as_bytes()).await.unwrap();
        slow.write_all(&slow_body[..5]).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(10 << n)).await;
        let busy = send("POST", msgs.clone(), key, competing.clone()).await;
        slow.write_all(&slow_body[5..]).await.unwrap();
        let mut answer = vec![0u8; 4096];
        let read = tokio::io::AsyncReadExt::read(&mut slow, &mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer[..read]).to_string();
        if busy.0 == 409 {
            assert_eq!(busy.1["code"], "idempotency_key_in_use", "{busy:?}");
            assert!(answer.starts_with("HTTP/1.1 202"), "the first request went on: {answer}");
            refused_while_running = Some((key, answer));
            break;
        }
        assert_eq!(busy.0, 202, "{busy:?}");
        assert!(answer.starts_with("HTTP/1.1 422"), "ran second, so refused as another request: {answer}");
    }
    let (key, answer) = refused_while_running.expect("a request with a running key's key was refused with 409");
    let slow_request: Value = serde_json::from_slice(&slow_body).unwrap();
    let replayed = send("POST", msgs.clone(), key, slow_request).await;
    assert_eq!(replayed.0, 202, "once it has finished, the key replays: {replayed:?}");
    assert!(answer.contains(replayed.1["id"].as_str().unwrap()), "{answer} vs {replayed:?}");
    gw.stop().await;
}

#[tokio::test]
async fn pagination_iterates_without_gaps_or_repeats() {
    let gw = start_gateway(dev_config()).await;
    for n in 0..7 {
        gw.app(&format!("m{n}")).await;
    }
    let mut seen = Vec::new();
    let mut iterator = String::new();
    loop {
        let page = gw.ok("GET", &format!("/api/v1/app?limit=3&iterator={iterator}"), None).await;
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 3);
        seen.extend(data.iter().map(|a| a["uid"].as_str().unwrap().to_owned()));
        if page["done"] == true {
            break;
        }
        iterator = page["iterator"].as_str().unwrap().to_owned();
    }
    assert_eq!(seen, (0..7).map(|n| format!("m{n}")).collect::<Vec<_>>());
    gw.stop().await;
}

#[tokio::test]
async fn one_application_cannot_reach_another_applications_resources() {
    let gw = start_gateway(dev_config()).await;
    let a = gw.app("merchant-a").await;
    let b = gw.app("merchant-b").await;
    let ep = gw.endpoint(&a, json!({"url": "https://a.example/hook"})).await;
    let ep = ep["id"].as_str().unwrap();
    let msg = gw.publish(&a, json!({"eventType": "x", "payload": {}})).await;
    for (method, path) in [
        ("GET", format!("/api/v1/app/{b}/endpoint/{ep}")),
        ("DELETE", format!("/api/v1/app/{b}/endpoint/{ep}")),
        ("GET", format!("/api/v1/app/{b}/endpoint/{ep}/secret")),
        ("GET", format!("/api/v1/app/{b}/msg/{msg}")),
        ("GET", format!("/api/v1/app/{b}/attempt/msg/{msg}")),
        ("GET", format!("/api/v1/app/{b}/attempt/endpoint/{ep}")),
        ("POST", format!("/api/v1/app/{b}/msg/{msg}/endpoint/{ep}/resend")),
    ] {
        let (status, _) = gw.call(method, &path, None).await;
        assert_eq!(status, 404, "{method} {path}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn svix_field_names_old_and_new_are_both_understood() {
    let gw = start_gateway(dev_config()).await;
    let app = gw.app("merchant").await;
    let old = gw
        .endpoint(&app, json!({"url": "https://a.example/h", "filterTypes": ["a.b"], "rateLimit": 5, "version": 1}))
        .await;
    assert_eq!(
        (old["eventTypes"].clone(), old["filterTypes"].clone(), old["throttleRate"].clone()),
        (json!(["a.b"]), json!(["a.b"]), json!(5))
    );
    let id = old["id"].as_str().unwrap();
    let patched = gw.ok("PATCH", &format!("/api/v1/app/{app}/endpoint/{id}/"), Some(json!({"eventTypes": null}))).await;
    assert_eq!(patched["eventTypes"], Value::Null, "null clears; trailing slash works");
    let health = gw.http.get(format!("{}/api/v1/health/", gw.url)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    gw.stop().await;
}

/// The router and the document are built from one route table; this checks that every
/// documented operation is really routed (a handler answers, not the fallback).
#[tokio::test]
async fn the_openapi_document_and_the_router_agree() {
    let gw = start_gateway(dev_config()).await;
    let documented = hookline_server::openapi::operations();
    assert!(documented.len() >= 49, "{documented:?}");
    for (method, path) in &documented {
        let concrete = path
            .replace("{app_id}", "app_none")
            .replace("{endpoint_id}", "ep_none")
            .replace("{msg_id}", "msg_none")
            .replace("{attempt_id}", "atmpt_none")
            .replace("{event_type_name}", "none.none")
            .replace("{source_id}", "src_none")
            .replace("{source}", "src_none")
            .replace("{rest}", "x");
        let (status, body) = gw.call(&method.to_uppercase(), &concrete, Some(json!({}))).await;
        assert_ne!(status, 405, "{method} {path} is documented but not routed");
        assert_ne!(body["detail"], "route not found", "{method} {path} is documented but not routed");
    }
    let served = gw.http.get(format!("{}/api/v1/openapi.json", gw.url)).send().await.unwrap();
    let doc: Value = served.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(
        doc["components"]["schemas"]["EndpointIn"]["properties"]["filterTypes"].is_null(),
        "aliases are input-only"
    );
    assert!(doc["components"]["schemas"]["EndpointIn"]["properties"]["signatureScheme"].is_object());
    // Fields whose schema is written by hand are required only when the server requires
    // them: an operational endpoint without eventTypes takes every event.
    for name in ["OperationalEndpointIn", "OperationalEndpointUpsertIn"] {
        assert_eq!(doc["components"]["schemas"][name]["required"], json!(["url"]), "{name}");
    }
    let (status, created) =
        gw.call("POST", "/api/v1/operational-webhook/endpoint", Some(json!({"url": "https://ops.example"}))).await;
    assert_eq!((status, &created["eventTypes"]), (201, &Value::Null), "{created}");
    // A publish's inline application takes its uid from the path, so none is documented.
    let inline = &doc["components"]["schemas"]["MessageIn"]["properties"]["application"]["anyOf"][0];
    assert!(inline["properties"]["name"].is_object() && inline["properties"]["uid"].is_null(), "{inline}");
    gw.stop().await;
}

/// Header names ignore case: a PATCH in another spelling replaces the header, a delete in
/// another spelling removes it, and of one body naming a header twice one spelling is kept,
/// the last in byte order (both were kept, and every delivery carried both: the old
/// credential first; then such a body was a 422 the OpenAPI document could not say).
#[tokio::test]
async fn an_endpoints_headers_are_one_per_name_whatever_the_case() {
    let gw = start_gateway(dev_config()).await;
    let rx = Receiver::start(Answer::status(200)).await;
    let app = gw.app("merchant").await;
    let ep = gw.endpoint(&app, json!({"url": rx.url})).await["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/app/{app}/endpoint/{ep}/headers");
    gw.ok("PUT", &path, Some(json!({"headers": {"Authorization": "Bearer old", "X-Shop": "a"}}))).await;
    gw.ok("PATCH", &path, Some(json!({"headers": {"authorization": "Bearer new"}, "deleteHeaders": ["x-shop"]}))).await;
    let shown = gw.ok("GET", &path, None).await;
    assert_eq!((&shown["headers"], &shown["sensitive"]), (&json!({}), &json!(["authorization"])), "{shown}");
    gw.publish(&app, json!({"eventType": "payment.succeeded", "payload": {}})).await;
    let got = rx.next().await;
    let sent: Vec<&str> = got.headers.get_all("authorization").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(sent, ["Bearer new"]);
    assert!(got.headers.get("x-shop").is_none());
    let twice = json!({"X-A": "1", "x-a": "2", "X-a": "3"});
    gw.ok("PUT", &path, Some(json!({"headers": twice}))).await;
    assert_eq!(gw.ok("GET", &path, None).await["headers"], json!({"x-a": "2"}));
    gw.ok("PATCH", &path, Some(json!({"headers": {"x-A": "4", "X-A": "5"}}))).await;
    assert_eq!(gw.ok("GET", &path, None).await["headers"], json!({"x-A": "4"}));
    let created = gw.endpoint(&app, json!({"url": rx.url, "headers": twice})).await;
    let path = format!("/api/v1/app/{app}/endpoint/{}/headers", created["id"].as_str().unwrap());
    assert_eq!(gw.ok("GET", &path, None).await["headers"], json!({"x-a": "2"}));
    gw.stop().await;
}

/// A page's `prevIterator` leads to the page before it, in the same order (it was the
/// first item's id, which led to the same page less its first item).
#[tokio::test]
async fn a_prev_iterator_leads_to_the_page_before() {
    let gw = start_gateway(dev_config()).await;
    let app = gw.app("merchant").await;
    let mut published = Vec::new();
    for n in 0..5 {
        published.push(gw.publish(&app, json!({"eventType": "x", "payload": {"n": n}})).await);
        gw.advance(1);
    }
    let newest_first: Vec<String> = published.iter().rev().cloned().collect();
    for (order, all) in [("descending", newest_first), ("ascending", published.clone())] {
        let page = |iterator: Option<String>| {
            let gw = &gw;
            let path = match iterator {
                Some(it) => format!("/api/v1/app/{app}/msg?limit=2&order={order}&iterator={it}"),
                None => format!("/api/v1/app/{app}/msg?limit=2&order={order}"),
            };
            async move { gw.ok("GET", &path, None).await }
        };
        let ids = |page: &Value| -> Vec<String> {
            page["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect()
        };
        let first = page(None).await;
        let second = page(first["iterator"].as_str().map(str::to_owned)).await;
        let third = page(second["iterator"].as_str().map(str::to_owned)).await;
        assert_eq!([ids(&first), ids(&second), ids(&third)].concat(), all, "{order}: forwards");
        let back = page(third["prevIterator"].as_str().map(str::to_owned)).await;
        assert_eq!(ids(&back), ids(&second), "{order}: back from the third page");
        let front = page(back["prevIterator"].as_str().map(str::to_owned)).await;
        assert_eq!((ids(&front), &front["done"]), (ids(&first), &json!(true)), "{order}: back to the first page");
        let before_first = page(first["prevIterator"].as_str().map(str::to_owned)).await;
        assert_eq!((ids(&before_first), &before_first["done"]), (vec![], &json!(true)), "{order}: nothing before");
    }
    gw.stop().await;
}

/// Event types are listed by name, and a name may begin with `-`, the mark of a
/// `prevIterator`: a page's `iterator` still leads to the page after it (it led back, or to
/// the same page for ever).
#[tokio::test]
async fn event_types_whose_names_begin_with_a_dash_are_listed_page_by_page() {
    let gw = start_gateway(dev_config()).await;
    let names = ["-a", "-b", "-c", "a0", "a1"];
    for name in names {
        gw.ok("POST", "/api/v1/event-type", Some(json!({"name": name, "description": "d"}))).await;
    }
    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut iterator: Option<String> = None;
    loop {
        let path = match &iterator {
            Some(it) => format!("/api/v1/event-type?limit=1&iterator={}", it.replace('+', "%2B")),
            None => "/api/v1/event-type?limit=1".to_owned(),
        };
        let page = gw.ok("GET", &path, None).await;
        seen.extend(page["data"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_owned()));
        pages.push(page.clone());
        if page["done"] == json!(true) || pages.len() > names.len() {
            break;
        }
        iterator = page["iterator"].as_str().map(str::to_owned);
    }
    assert_eq!(seen, names, "each once, in order");
    let back = pages[3]["prevIterator"].as_str().unwrap().replace('+', "%2B");
    let before = gw.ok("GET", &format!("/api/v1/event-type?limit=2&iterator={back}"), None).await;
    let names_before: Vec<&str> =
        before["data"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names_before, ["-b", "-c"], "the page before `a0`");
    // A `+` not percent-encoded reads as a space, and still as the mark of an iterator.
    let after_b = gw.ok("GET", "/api/v1/event-type?limit=1&iterator=+-b", None).await;
    assert_eq!(after_b["data"][0]["name"], "-c", "{after_b}");
    gw.stop().await;
}

/// The listings' filters do what the document says: attempts and attempted messages by
/// the message's event type, channel and tag, messages by tag, and attempted messages by
/// when the message was created. (Attempts' and attempted messages' channel, event types
/// and tag were taken and ignored, `tag` everywhere; attempted messages went by when the
/// delivery last changed.)
#[tokio::test]
async fn listings_filter_by_the_messages_type_channel_tag_and_creation() {
    let gw = start_gateway(dev_config()).await;
    let rx = Receiver::start(Answer::status(200)).await;
    rx.then(Answer::status(500));
    let app = gw.app("merchant").await;
    let policy = json!({"delaysMs": [1000]});
    let ep = gw.endpoint(&app, json!({"url": rx.url, "retryPolicy": policy})).await["id"].as_str().unwrap().to_owned();
    let first = gw.publish(&app, json!({"eventType": "a.x", "channels": ["eu"], "tags": ["t1"], "payload": {}})).await;
    gw.wait_attempts(&app, &first, 1).await;
    // The first fails, and succeeds on its retry after the second is published.
    gw.advance(5_000);
    let second = gw.publish(&app, json!({"eventType": "b.y", "channels": ["us"], "tags": ["t2"], "payload": {}})).await;
    gw.wait_attempts(&app, &first, 2).await;
    gw.wait_attempts(&app, &second, 1).await;
    let ids = |listed: Value, field: &str| -> Vec<String> {
        let mut ids: Vec<String> =
            listed["data"].as_array().unwrap().iter().map(|v| v[field].as_str().unwrap().to_owned()).collect();
        ids.dedup();
        ids
    };
    for (filter, expected) in
        [("event_types=a.x", &first), ("channel=us", &second), ("tag=t1", &first), ("tag=t2&event_types=b.y", &second)]
    {
        let attempts = gw.ok("GET", &format!("/api/v1/app/{app}/attempt/endpoint/{ep}?{filter}"), None).await;
        assert_eq!(ids(attempts, "msgId"), std::slice::from_ref(expected), "attempts, {filter}");
        let sent = gw.ok("GET", &format!("/api/v1/app/{app}/endpoint/{ep}/msg?{filter}"), None).await;
        assert_eq!(ids(sent, "id"), std::slice::from_ref(expected), "attempted messages, {filter}");
    }
    let tagged = gw.ok("GET", &format!("/api/v1/app/{app}/msg?tag=t2"), None).await;
    assert_eq!(ids(tagged, "id"), std::slice::from_ref(&second));
    let between = hookline_server::wire::timestamp(T0 + 2_000).replace('+', "%2B");
    let after = gw.ok("GET", &format!("/api/v1/app/{app}/endpoint/{ep}/msg?after={between}"), None).await;
    assert_eq!(
        ids(after, "id"),
        std::slice::from_ref(&second),
        "created after, though the first's delivery ended later"
    );
    let before = gw.ok("GET", &format!("/api/v1/app/{app}/endpoint/{ep}/msg?before={between}"), None).await;
    assert_eq!(ids(before, "id"), std::slice::from_ref(&first), "created before");
    gw.stop().await;
}

/// Application B's data as the admin sees it, to show that A's token changed nothing.
async fn snapshot(gw: &Gateway, app: &str, ep: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for path in [
        format!("/api/v1/app/{app}"),
        format!("/api/v1/app/{app}/endpoint"),
        format!("/api/v1/app/{app}/endpoint/{ep}/secret"),
        format!("/api/v1/app/{app}/endpoint/{ep}/headers"),
        format!("/api/v1/app/{app}/msg"),
        format!("/api/v1/app/{app}/token"),
        "/api/v1/source".to_owned(),
        "/api/v1/event-type?include_archived=true".to_owned(),
    ] {
        out.push(gw.ok("GET", &path, None).await);
    }
    out
}

#[tokio::test]
async fn an_application_token_reaches_only_its_own_application_on_every_route() {
    let gw = start_gateway(dev_config()).await;
    let a = gw.app("merchant-a").await;
    let b = gw.app("merchant-b").await;
    let ep_b = gw.endpoint(&b, json!({"url": "https://b.example/hook", "headers": {"X-B": "1"}})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let msg_b = gw.publish(&b, json!({"eventType": "payment.succeeded", "payload": {"tenant": "b"}})).await;
    let attempt_b = "atmpt_0000000000000000000000";
    gw.ok("POST", "/api/v1/event-type", Some(json!({"name": "tenancy.test", "description": "x"}))).await;
    let source = gw
        .ok("POST", "/api/v1/source", Some(json!({"name": "s", "preset": "github", "secrets": ["x"], "appId": b})))
        .await;
    let token_b = gw.ok("POST", &format!("/api/v1/app/{b}/token"), None).await["id"].as_str().unwrap().to_owned();
    let token_a = gw.ok("POST", &format!("/api/v1/app/{a}/token"), None).await["token"].as_str().unwrap().to_owned();
    let as_a = |method: &str, path: &str, body: Option<Value>| {
        let mut request = gw.http.request(method.parse().unwrap(), format!("{}{path}", gw.url)).bearer_auth(&token_a);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let r = request.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // What A may do.
    assert_eq!(
        as_a("POST", &format!("/api/v1/app/{a}/endpoint"), Some(json!({"url": "https://a.example/hook"}))).await.0,
        201
    );
    assert_eq!(as_a("POST", "/api/v1/app/merchant-a/msg", Some(json!({"eventType": "x", "payload": {}}))).await.0, 202);
    assert_eq!(as_a("GET", &format!("/api/v1/app/{a}/msg"), None).await.0, 200);
    assert_eq!(as_a("GET", "/api/v1/event-type", None).await.0, 200);
    assert_eq!(as_a("DELETE", &format!("/api/v1/app/{a}"), None).await.0, 403, "an app token cannot delete its app");
    assert_eq!(as_a("POST", &format!("/api/v1/app/{a}/token"), None).await.0, 403, "nor mint tokens");
    let rotate = format!("/api/v1/app/{a}/secret/rotate");
    assert_eq!(as_a("POST", &rotate, None).await.0, 403, "nor rotate the application's callback secret");

    let before = snapshot(&gw, &b, &ep_b).await;
    let mut tried = 0;
    for (method, path) in hookline_server::openapi::operations() {
        if path.starts_with("/in/") || path == "/api/v1/health" || path == "/api/v1/openapi.json" {
            continue; // public by design: the provider's signature or nothing is the credential
        }
        let concrete = path
            .replace("{app_id}", &b)
            .replace("{endpoint_id}", &ep_b)
            .replace("{msg_id}", &msg_b)
            .replace("{attempt_id}", attempt_b)
            .replace("{event_type_name}", "tenancy.test")
            .replace("{source_id}", source["id"].as_str().unwrap())
            .replace("{token_id}", &token_b);
        let body = (method != "get" && method != "delete").then(
            || json!({"name": "x", "url": "https://evil.example", "eventType": "x", "payload": {}, "description": "x"}),
        );
        let (status, answer) = as_a(&method.to_uppercase(), &concrete, body).await;
        tried += 1;
        let catalog_read = method == "get" && path.starts_with("/api/v1/event-type");
        if catalog_read {
            assert_eq!(status, 200, "{method} {path}: the event-type catalog is shared");
        } else {
            assert!(
                status == 403 || status == 404,
                "{method} {path} answered {status} to another app's token: {answer}"
            );
        }
    }
    assert!(tried >= 45, "every documented route was tried ({tried})");
    assert_eq!(snapshot(&gw, &b, &ep_b).await, before, "application B is unchanged");
    gw.stop().await;
}

#[tokio::test]
async fn limits_rate_per_token_endpoints_per_app_and_json_depth() {
    let mut config = dev_config();
    config.api.token_rate_limit_per_s = 5;
    config.api.endpoints_per_app_max = 2;
    config.api.json_depth_max = 4;
    config.network.url_bytes_max = 64;
    let gw = start_gateway(config).await;
    let app = gw.app("merchant").await;
    let token = gw.ok("POST", &format!("/api/v1/app/{app}/token"), None).await["token"].as_str().unwrap().to_owned();
    let get = |token: String| {
        let request = gw.http.get(format!("{}/api/v1/app/{app}/msg", gw.url)).bearer_auth(token);
        async move {
            let r = request.send().await.unwrap();
            let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            (r.status().as_u16(), retry_after, r.json::<Value>().await.unwrap())
        }
    };
    for n in 0..10 {
        assert_eq!(get(token.clone()).await.0, 200, "request {n} is within the burst of 10");
    }
    let (status, retry_after, body) = get(token.clone()).await;
    assert_eq!((status, body["code"].as_str(), retry_after.as_deref()), (429, Some("rate_limited"), Some("1")));
    gw.advance(1_000);
    for n in 0..5 {
        assert_eq!(get(token.clone()).await.0, 200, "refilled by 5 after a second ({n})");
    }
    assert_eq!(get(token.clone()).await.0, 429);
    for _ in 0..30 {
        assert_eq!(get(TOKEN.to_owned()).await.0, 200, "the admin token is not limited");
    }

    gw.endpoint(&app, json!({"url": "https://a.example/1"})).await;
    gw.endpoint(&app, json!({"url": "https://a.example/2"})).await;
    let (status, body) =
        gw.call("POST", &format!("/api/v1/app/{app}/endpoint"), Some(json!({"url": "https://a.example/3"}))).await;
    assert_eq!((status, body["code"].as_str()), (422, Some("validation")), "{body}");

    let too_long = format!("https://a.example/{}", "x".repeat(100));
    let (status, body) = gw
        .call(
            "POST",
            &format!("/api/v1/app/{app}/msg"),
            Some(json!({"eventType": "x", "payload": {}, "callbackUrl": too_long})),
        )
        .await;
    assert_eq!((status, body["code"].as_str()), (422, Some("validation")), "network.url_bytes_max: {body}");
    let msg_path = format!("/api/v1/app/{app}/msg");
    let five_deep = br#"{"eventType":"x","payload":{"a":[[[1]]]}}"#.to_vec();
    let (status, body) = raw(&gw, "POST", &msg_path, Some(TOKEN), five_deep).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_json")), "api.json_depth_max = 4 refuses 5 levels");
    let deep = format!(r#"{{"eventType":"x","payload":{{"a":{}1{}}}}}"#, "[".repeat(300), "]".repeat(300));
    let (status, body) = raw(&gw, "POST", &msg_path, Some(TOKEN), deep.into_bytes()).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_json")));
    gw.stop().await;
}

/// Hostile bodies, each refused by every route that takes a body.
fn hostile_bodies() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let nul = r#"{"name":"a\u0000","description":"d\u0000","url":"https://a.example/\u0000","eventType":"e\u0000","payload":{},"since":"\u0000","headers":{"a\u0000":"b"},"key":"\u0000","preset":"stripe","secrets":["\u0000"],"appId":"\u0000","uid":"\u0000"}"#;
    let sql = r#"{"name":"x","uid":"'; DROP TABLE apps; --","url":"https://a.example/' OR 1=1 --","eventType":"x' OR '1'='1","payload":{},"since":"' OR 1=1","headers":{"x' --":"y"},"key":"whsec_'--","appId":"' OR 1=1 --","preset":"stripe'","secrets":[]}"#;
    vec![
        ("invalid JSON", b"{not json".to_vec(), "application/json"),
        ("empty body", Vec::new(), "application/json"),
        ("invalid UTF-8", b"{\"name\": \"\xff\xfe\"}".to_vec(), "application/json"),
        ("wrong types", br#"{"name":5,"url":5,"eventType":5,"payload":5,"since":5,"headers":5,"key":5,"description":5,"preset":5,"appId":5}"#.to_vec(), "application/json"),
        ("huge numbers", br#"{"name":1e999,"url":1e999,"eventType":1e999,"payload":1e999,"since":1e999,"headers":1e999,"description":1e999}"#.to_vec(), "application/json"),
        ("NUL bytes", nul.as_bytes().to_vec(), "application/json"),
        ("unknown fields only", br#"{"zzz":1,"yyy":[true]}"#.to_vec(), "application/json"),
        ("SQL metacharacters", sql.as_bytes().to_vec(), "application/json"),
        ("wrong content type", br#"{"name":"x","url":"https://a.example","eventType":"x","payload":{}}"#.to_vec(), "text/plain"),
        ("a JSON array", b"[]".to_vec(), "application/json"),
        ("deep nesting", format!("{}{}", "[".repeat(100), "]".repeat(100)).into_bytes(), "application/json"),
    ]
}

#[tokio::test]
async fn hostile_input_on_every_route_gets_a_json_4xx_and_changes_nothing() {
    let gw = start_gateway(dev_config()).await;
    let app = gw.app("merchant").await;
    let ep = gw.endpoint(&app, json!({"url": "https://a.example/hook"})).await["id"].as_str().unwrap().to_owned();
    let msg = gw.publish(&app, json!({"eventType": "payment.succeeded", "payload": {}})).await;
    // Its first attempt (which fails) marks the endpoint failing; the snapshot comes after
    // it, and the manual clock holds the retry back, so only hostile input could change it.
    gw.wait_attempts(&app, &msg, 1).await;
    gw.ok("POST", "/api/v1/event-type", Some(json!({"name": "hostile.test", "description": "x"}))).await;
    let source = gw
        .ok("POST", "/api/v1/source", Some(json!({"name": "s", "preset": "github", "secrets": ["x"], "appId": app})))
        .await;
    let source_id = source["id"].as_str().unwrap().to_owned();
    let doc = hookline_server::openapi::document();
    let before = snapshot(&gw, &app, &ep).await;
    let (mut tried, mut traversals) = (0, 0);
    for (method, path) in hookline_server::openapi::operations() {
        if path == "/api/v1/health" || path == "/api/v1/openapi.json" {
            continue;
        }
        let concrete = path
            .replace("{app_id}", &app)
            .replace("{endpoint_id}", &ep)
            .replace("{msg_id}", &msg)
            .replace("{attempt_id}", "atmpt_0000000000000000000000")
            .replace("{event_type_name}", "hostile.test")
            .replace("{source_id}", &source_id)
            .replace("{token_id}", "tok_0000000000000000000000")
            .replace("{source}", &source_id)
            .replace("{rest}", "x");
        let request_body = &doc["paths"][&path][&method]["requestBody"];
        if request_body.is_object() || path.starts_with("/in/") {
            let optional = request_body["required"] == false;
            for (name, body, content_type) in hostile_bodies() {
                if optional && body.is_empty() {
                    continue; // an optional body may be absent
                }
                let response = gw
                    .http
                    .request(method.to_uppercase().parse().unwrap(), format!("{}{concrete}", gw.url))
                    .bearer_auth(TOKEN)
                    .header("content-type", content_type)
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let answer: Value = response.json().await.unwrap_or(Value::Null);
                assert!((400..500).contains(&status), "{method} {path} with {name} answered {status}: {answer}");
                assert!(answer["code"].is_string(), "{method} {path} with {name}: not a JSON error: {answer}");
                tried += 1;
            }
        }
        // Path traversal and SQL in ids: never found, never a 5xx.
        for evil in ["..%2F..%2Fetc%2Fpasswd", "%27%20OR%201%3D1%20--", "app_%00"] {
            let attacked = concrete.replacen(&app, evil, 1).replacen(&ep, evil, 1).replacen(&msg, evil, 1);
            if attacked == concrete {
                continue;
            }
            let (status, answer) = gw.call(&method.to_uppercase(), &attacked, None).await;
            assert!(
                (400..500).contains(&status) && answer["code"].is_string(),
                "{method} {attacked} answered {status}: {answer}"
            );
            traversals += 1;
        }
    }
    assert!(tried >= 180 && traversals >= 80, "coverage: {tried} hostile bodies, {traversals} hostile ids");
    assert_eq!(snapshot(&gw, &app, &ep).await, before, "hostile input changed stored data");
    eprintln!("hostile input: {tried} bodies and {traversals} ids refused");
    gw.stop().await;
}

async fn raw_request(addr: &str, bytes: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_to_close(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let _ =
        tokio::time::timeout(PATIENCE, stream.read_to_end(&mut out)).await.expect("the server closed the connection");
    String::from_utf8_lossy(&out).into_owned()
}

/// A client that sends pipelined requests and never reads their answers loses its
/// connection `server.write_timeout_ms` after the answers stop fitting in the socket's
/// buffers: it held its slot for good, and with every slot so held nobody was answered.
#[tokio::test]
async fn a_client_that_stops_reading_its_answers_frees_its_slot() {
    use tokio::io::AsyncWriteExt;
    let mut config = dev_config();
    // One slot for the harness's own pooled connection, one for the client that stalls.
    // (An idle connection is closed at the head timeout: far off here.)
    config.server.max_connections = 2;
    config.server.header_read_timeout_ms = 60_000;
    config.server.write_timeout_ms = 300;
    let gw = start_gateway(config).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4_096).unwrap();
    let mut stalled = socket.connect(gw.url.trim_start_matches("http://").parse().unwrap()).await.unwrap();
    // Each answer is the whole OpenAPI document (about 250 KB): 64 of them fill any buffers.
    let request = "GET /api/v1/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n".repeat(64);
    stalled.write_all(request.as_bytes()).await.unwrap();
    let fresh = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let health = fresh.get(format!("{}/api/v1/health", gw.url)).timeout(std::time::Duration::from_secs(8));
    let answered = health.send().await.map(|r| r.status().as_u16());
    assert_eq!(answered.ok(), Some(200), "the stalled client's slot was freed for another");
    drop(stalled);
    gw.stop().await;
}

/// A body that has not arrived `server.body_read_timeout_ms` after its head gets a JSON 408
/// and its connection is closed, on an authenticated route and on a provider's
/// (unauthenticated) inbound route alike (and a dashboard form a 408 page); a body sent in
/// pieces within the time is served.
#[tokio::test]
async fn a_body_sent_too_slowly_is_refused_with_408() {
    use tokio::io::AsyncWriteExt;
    let mut config = dev_config();
    config.server.body_read_timeout_ms = 300;
    let gw = start_gateway(config).await;
    let addr = gw.url.trim_start_matches("http://").to_owned();
    let app = gw.app("merchant").await;
    let source = json!({"name": "stripe", "uid": "slow", "preset": "stripe", "secrets": ["whsec_x"], "appId": app});
    let source_id = gw.ok("POST", "/api/v1/source", Some(source)).await["id"].as_str().unwrap().to_owned();
    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    for (path, auth) in [("/api/v1/app", bearer.as_str()), ("/in/slow", "")] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"na"
        );
        let mut slow = raw_request(&addr, head.as_bytes()).await;
        let answered = read_to_close(&mut slow).await;
        assert!(answered.starts_with("HTTP/1.1 408"), "{path}: {answered}");
        let body: Value = serde_json::from_str(answered.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["code"], "request_timeout", "{path}: {answered}");
    }
    // A dashboard form too, answered with a page (axum's form reader answered 400).
    let head = "POST /dashboard/sign-in HTTP/1.1\r\nHost: x\r\n\
                Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ntoken=";
    let answered = read_to_close(&mut raw_request(&addr, head.as_bytes()).await).await;
    assert!(answered.starts_with("HTTP/1.1 408") && answered.contains("text/html"), "dashboard: {answered}");
    // Counted for the source, as its other refusals are.
    let metrics = gw.metrics().await;
    let counted = [("source", source_id.as_str()), ("outcome", "body_timeout")];
    let labels = |[a, b]: [(&str, &str); 2]| {
        format!("hookline_inbound_requests_total{{{}=\"{}\",{}=\"{}\"}} 1", a.0, a.1, b.0, b.1)
    };
    let (line, alt) = (labels(counted), labels([counted[1], counted[0]]));
    assert!(metrics.contains(&line) || metrics.contains(&alt), "the 408 is counted for the source");
    let body = r#"{"name": "sent in pieces"}"#;
    let head = format!(
        "POST /api/v1/app HTTP/1.1\r\nHost: x\r\n{bearer}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        &body[..5]
    );
    let mut pieces = raw_request(&addr, head.as_bytes()).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    pieces.write_all(&body.as_bytes()[5..]).await.unwrap();
    let answered = read_to_close(&mut pieces).await;
    assert!(answered.starts_with("HTTP/1.1 201"), "{answered}");
    gw.stop().await;
}

#[tokio::test]
async fn transport_limits_slow_heads_too_many_headers_and_connections() {
    let mut config = dev_config();
    config.server.header_read_timeout_ms = 300;
    config.server.headers_max = 16;
    let gw = start_gateway(config).await;
    let addr = gw.url.trim_start_matches("http://").to_owned();
    // A client that never finishes its request head is cut off.
    let mut slow = raw_request(&addr, b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
    let answered = read_to_close(&mut slow).await;
    assert!(!answered.contains("200 OK"), "a half-sent request is never served: {answered}");
    // So is one that sends nothing at all, or opens HTTP/2 (which has no head timeout):
    // each held a connection slot until shutdown.
    for opening in [&b""[..], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0"] {
        let mut silent = raw_request(&addr, opening).await;
        let answered = read_to_close(&mut silent).await;
        assert!(!answered.contains("200 OK"), "{answered}");
    }
    // More headers than allowed, or a head larger than header_bytes_max (default 16 KiB):
    // a JSON 431, on public and authenticated routes alike.
    let many: String = (0..40).map(|n| format!("X-H{n}: v\r\n")).collect();
    let big = format!("X-Big: {}\r\n", "b".repeat(40_000));
    for (path, extra) in [("/api/v1/health", &many), ("/api/v1/app", &many), ("/in/src_x", &big), ("/api/v1/app", &big)]
    {
        let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n");
        let mut crowded = raw_request(&addr, head.as_bytes()).await;
        let answered = read_to_close(&mut crowded).await;
        assert!(answered.starts_with("HTTP/1.1 431"), "{answered}");
        let body: Value = serde_json::from_str(answered.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["code"], "headers_too_large", "{answered}");
    }
    // A target in absolute form counts whole: its host was not counted.
    let host = "a".repeat(40_000);
    let head = format!("GET http://{host}.example/api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let answered = read_to_close(&mut raw_request(&addr, head.as_bytes()).await).await;
    assert!(answered.starts_with("HTTP/1.1 431") && answered.contains("headers_too_large"), "{}", &answered[..200]);
    // Beyond four times the limit the HTTP layer itself refuses the head, before any of it
    // is kept: still a 431, without a body.
    let head = format!("GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(70_000));
    let mut huge = raw_request(&addr, head.as_bytes()).await;
    let answered = read_to_close(&mut huge).await;
    assert!(answered.starts_with("HTTP/1.1 431"), "{answered}");
    gw.stop().await;

    // Three slots: the harness's own keep-alive connection (from its health check) holds one.
    let mut config = dev_config();
    config.server.max_connections = 3;
    let gw = start_gateway(config).await;
    let addr = gw.url.trim_start_matches("http://").to_owned();
    let (first, second) = (raw_request(&addr, b"").await, raw_request(&addr, b"").await);
    let fresh = || {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(std::time::Duration::from_millis(500))
            .build()
            .unwrap()
    };
    let waiting = fresh().get(format!("{}/api/v1/health", gw.url)).send().await;
    assert!(waiting.is_err(), "a new connection waits while the others hold every slot");
    drop(first);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(served) = fresh().get(format!("{}/api/v1/health", gw.url)).send().await {
            assert_eq!(served.status(), 200);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "a freed slot never served a new connection");
    }
    drop(second);
    gw.stop().await;
}

/// `/metrics` names every application's endpoints and sources: it answers an admin token,
/// or the scrapers' `metrics.token` when set, and nothing else (no token, another token,
/// an application's token). An empty `metrics.token` is no token.
#[tokio::test]
async fn metrics_need_an_admin_or_a_scraper_token() {
    let scrape = |gw: &Gateway, token: Option<String>| {
        let mut request = gw.http.get(format!("{}/metrics", gw.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    for scraper in [None, Some(""), Some("scrape-token")] {
        let mut config = dev_config();
        config.metrics.token = scraper.map(str::to_owned);
        let gw = start_gateway(config).await;
        let app = gw.app("merchant").await;
        gw.publish(&app, json!({"eventType": "x", "payload": {}})).await;
        let app_token = gw.ok("POST", &format!("/api/v1/app/{app}/token"), Some(json!({}))).await;
        let app_token = app_token["token"].as_str().unwrap().to_owned();
        let refused =
            [None, Some(String::new()), Some("wrong".to_owned()), Some("scrape-token".to_owned()), Some(app_token)];
        let scraper = scraper.filter(|t| !t.is_empty());
        for token in refused.into_iter().filter(|t| t.as_deref() != scraper) {
            let (status, body) = scrape(&gw, token.clone()).await;
            assert_eq!(status, 401, "{scraper:?}, {token:?}: {body}");
            assert!(body.contains("authentication_failed"), "{body}");
        }
        for token in [Some(TOKEN), scraper].into_iter().flatten() {
            let (status, body) = scrape(&gw, Some(token.to_owned())).await;
            assert_eq!(status, 200, "{token}");
            assert!(body.contains("hookline_messages_published_total"), "{body}");
        }
        gw.stop().await;
    }
}

#[tokio::test]
async fn a_publish_creates_its_application_under_the_key_in_the_path() {
    let gw = start_gateway(dev_config()).await;
    let publish = |key: &str, application: Value| {
        let (gw, path) = (&gw, format!("/api/v1/app/{key}/msg"));
        let body = json!({"eventType": "charge.succeeded", "payload": {}, "application": application});
        async move { raw(gw, "POST", &path, Some(TOKEN), body.to_string().into_bytes()).await }
    };
    // A different uid in the body would create an application the path does not name.
    let (status, error) = publish("shop-7", json!({"name": "Shop", "uid": "shop-8"})).await;
    assert_eq!((status, error["code"].as_str()), (422, Some("validation")), "{error}");
    // A key no uid may be is refused, not used to create an application under another uid.
    let (status, _) = publish("sh%C3%B6p", json!({"name": "Shop"})).await;
    assert_eq!(status, 422);
    let (status, _) = raw(&gw, "GET", "/api/v1/app/shop-8", Some(TOKEN), vec![]).await;
    assert_eq!(status, 404, "nothing was created by the refusals");
    // Created under the path's key (with or without the same uid in the body), and found
    // there by the next publish.
    let (status, first) = publish("shop-7", json!({"name": "Shop", "uid": "shop-7"})).await;
    assert_eq!(status, 202, "{first}");
    let (status, second) = publish("shop-7", json!({"name": "Shop"})).await;
    assert_eq!(status, 202, "{second}");
    let (status, app) = raw(&gw, "GET", "/api/v1/app/shop-7", Some(TOKEN), vec![]).await;
    assert_eq!((status, app["uid"].as_str()), (200, Some("shop-7")));
    let (_, apps) = raw(&gw, "GET", "/api/v1/app", Some(TOKEN), vec![]).await;
    let named_shop = apps["data"].as_array().unwrap().iter().filter(|a| a["name"] == "Shop").count();
    assert_eq!(named_shop, 1, "one application, made once: {apps}");
}

/// An endpoint of `app` and a Stripe source for it: their ids.
async fn endpoint_and_source(gw: &Gateway, app: &str) -> (String, String) {
    let endpoint = gw.endpoint(app, json!({"url": "https://a.example/"})).await["id"].as_str().unwrap().to_owned();
    let body = json!({"name": "s", "preset": "stripe", "secrets": ["whsec_x"], "appId": app});
    let source = gw.ok("POST", "/api/v1/source", Some(body)).await["id"].as_str().unwrap().to_owned();
    (endpoint, source)
}

/// A path's key names a resource by its id or its uid, so a uid in the form of an id of its
/// kind is refused: one that took another's id would answer for it once that one is deleted
/// (schemathesis's use-after-free check found an application's secret served that way). A
/// key in that form names nothing when no resource has it; no upsert or publish creates one.
#[tokio::test]
async fn a_uid_never_takes_the_form_of_an_id() {
    let gw = start_gateway(dev_config()).await;
    let first = gw.app("first").await;
    let second = gw.app("second").await;
    let eps = format!("/api/v1/app/{second}/endpoint");
    let (endpoint, source) = endpoint_and_source(&gw, &second).await;
    let app_form = |n: u8| format!("app_{}", ((b'A' + n) as char).to_string().repeat(22));
    let refused = [
        ("POST", "/api/v1/app".to_owned(), json!({"name": "b", "uid": first})),
        ("PUT", format!("/api/v1/app/{second}"), json!({"name": "b", "uid": first})),
        ("PATCH", format!("/api/v1/app/{second}"), json!({"uid": first})),
        ("POST", "/api/v1/app".to_owned(), json!({"name": "b", "uid": app_form(0)})),
        ("POST", eps.clone(), json!({"url": "https://b.example/", "uid": endpoint})),
        ("PATCH", format!("{eps}/{endpoint}"), json!({"uid": endpoint})),
        ("PUT", format!("{eps}/new-one"), json!({"url": "https://b.example/", "uid": endpoint})),
        (
            "POST",
            "/api/v1/operational-webhook/endpoint".to_owned(),
            json!({"url": "https://o.example/", "uid": endpoint}),
        ),
        (
            "POST",
            "/api/v1/source".to_owned(),
            json!({"name": "t", "preset": "stripe", "secrets": ["whsec_x"], "appId": second, "uid": source}),
        ),
        ("PATCH", format!("/api/v1/source/{source}"), json!({"uid": source})),
    ];
    for (method, path, body) in refused {
        let (status, error) = gw.call(method, &path, Some(body.clone())).await;
        assert_eq!((status, error["code"].as_str()), (422, Some("validation")), "{method} {path} {body}: {error}");
        assert!(error["detail"].to_string().contains("form of an id"), "{error}");
    }
    // Another kind's id is a fine uid: it cannot be mistaken for this kind's.
    let (status, other_kind) = gw.call("POST", "/api/v1/app", Some(json!({"name": "c", "uid": endpoint}))).await;
    assert_eq!((status, other_kind["uid"].as_str()), (201, Some(endpoint.as_str())), "{other_kind}");

    // A key in the form of an id that names nothing creates nothing.
    let absent = app_form(1);
    let (status, _) = gw.call("PUT", &format!("/api/v1/app/{absent}"), Some(json!({"name": "d"}))).await;
    assert_eq!(status, 404);
    let inline = json!({"eventType": "e", "payload": {}, "application": {"name": "d"}});
    let (status, error) = gw.call("POST", &format!("/api/v1/app/{absent}/msg"), Some(inline)).await;
    assert_eq!((status, error["code"].as_str()), (404, Some("not_found")), "{error}");
    // A publish refused for another field creates no application either (the body is
    // checked whole first).
    for refused in [json!({"deliverAt": "tomorrow"}), json!({"callbackUrl": "not a url"})] {
        let mut body = json!({"eventType": "e", "payload": {}, "application": {"name": "d"}});
        body.as_object_mut().unwrap().extend(refused.as_object().unwrap().clone());
        let (status, error) = gw.call("POST", "/api/v1/app/never-made/msg", Some(body)).await;
        assert_eq!((status, error["code"].as_str()), (422, Some("validation")), "{error}");
    }
    assert_eq!(gw.call("GET", "/api/v1/app/never-made", None).await.0, 404);
    let absent_endpoint = endpoint.replacen("ep_", "ep_0", 1)[..endpoint.len()].to_owned();
    let (status, _) =
        gw.call("PUT", &format!("{eps}/{absent_endpoint}"), Some(json!({"url": "https://b.example/"}))).await;
    assert_eq!(status, 404);
    assert_eq!(
        gw.ok("GET", "/api/v1/app?limit=250", None).await["data"].as_array().unwrap().len(),
        3,
        "first, second, c"
    );

    // A deleted application's id names nothing afterwards.
    assert_eq!(gw.call("DELETE", &format!("/api/v1/app/{first}"), None).await.0, 204);
    assert_eq!(gw.call("GET", &format!("/api/v1/app/{first}/secret"), None).await.0, 404);
    assert_eq!(gw.call("GET", &format!("/api/v1/app/{first}"), None).await.0, 404);
    gw.stop().await;
}

/// A uid stored before uids could not take an id's form stays valid through every later
/// change that keeps it (any edit of such an endpoint, its secret's rotation included, was
/// a 422); a change to another uid in an id's form is still refused.
#[tokio::test]
async fn a_uid_stored_in_the_form_of_an_id_is_kept_through_edits() {
    let gw = start_gateway(dev_config()).await;
    let app = gw.app("legacy").await;
    let (endpoint, source) = endpoint_and_source(&gw, &app).await;
    let legacy = |kind: &str| format!("{kind}_{}", "L".repeat(22));
    gw.behind_its_back(&format!("UPDATE apps SET uid = '{}' WHERE id = $1", legacy("app")), &app).await;
    gw.behind_its_back(&format!("UPDATE endpoints SET uid = '{}' WHERE id = $1", legacy("ep")), &endpoint).await;
    gw.behind_its_back(&format!("UPDATE sources SET uid = '{}' WHERE id = $1", legacy("src")), &source).await;
    let ep = format!("/api/v1/app/{app}/endpoint/{endpoint}");
    let kept = [
        ("PATCH", format!("/api/v1/app/{app}"), json!({"name": "renamed"})),
        ("PUT", format!("/api/v1/app/{app}"), json!({"name": "renamed", "uid": legacy("app")})),
        ("PATCH", ep.clone(), json!({"description": "kept"})),
        ("PUT", ep.clone(), json!({"url": "https://a.example/", "uid": legacy("ep")})),
        ("POST", format!("{ep}/secret/rotate"), json!({})),
        ("PATCH", format!("/api/v1/source/{source}"), json!({"name": "renamed"})),
    ];
    for (method, path, body) in kept {
        let (status, answer) = gw.call(method, &path, Some(body.clone())).await;
        assert!(status < 300, "{method} {path} {body}: {status} {answer}");
    }
    assert_eq!(gw.ok("GET", &ep, None).await["uid"], legacy("ep"));
    let (status, _) = gw.call("PATCH", &ep, Some(json!({"uid": format!("ep_{}", "M".repeat(22))}))).await;
    assert_eq!(status, 422, "a new uid in an id's form is refused");
    gw.stop().await;
}

/// A source's secrets are never shown: only the last 4 characters of one long enough that
/// they give little away (a short secret shows nothing).
#[tokio::test]
async fn a_source_shows_only_the_end_of_a_long_secret() {
    let gw = start_gateway(dev_config()).await;
    let app = gw.app("merchant").await;
    let body = json!({"name": "s", "preset": "stripe", "secrets": ["abcd", "whsec_0123456789abcdef"], "appId": app});
    let created = gw.ok("POST", "/api/v1/source", Some(body)).await;
    let read = gw.ok("GET", &format!("/api/v1/source/{}", created["id"].as_str().unwrap()), None).await;
    for source in [&created, &read] {
        let shown: Vec<&str> =
            source["secrets"].as_array().unwrap().iter().map(|s| s["endsWith"].as_str().unwrap()).collect();
        assert_eq!(shown, ["", "cdef"], "{source}");
        assert!(!source.to_string().contains("abcd"), "{source}");
    }
    gw.stop().await;
}

/// An application's token may name its application by uid in paths. When an admin has moved
/// that uid to another application and this node's cache has not heard yet (another node
/// made the change; its notification has not arrived), the token still reaches only its own
/// application: the tenant check asks the store as well as the cache.
#[tokio::test]
async fn a_moved_uid_never_lets_a_token_reach_another_application() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let clock = std::sync::Arc::new(hookline_server::clock::ManualClock::new(T0));
    let gw = start_gateway_in(dev_config(), dir.clone(), clock).await;
    let a = gw.app("shop").await;
    let b = gw.app("other").await;
    gw.endpoint(&b, json!({"url": "https://b.example/"})).await;
    let token =
        gw.ok("POST", &format!("/api/v1/app/{a}/token"), Some(json!({}))).await["token"].as_str().unwrap().to_owned();
    let as_a = |path: &str| {
        let request = gw.http.get(format!("{}{path}", gw.url)).bearer_auth(&token);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };
    let (status, listed) = as_a("/api/v1/app/shop/endpoint").await;
    assert_eq!((status, listed["data"].as_array().map(Vec::len)), (200, Some(0)), "its own, through its uid: {listed}");
    // Another node moves the uid: written to the store behind this node's cache.
    let other_node = open_store(dir.path()).await;
    let mut first = other_node.get_app(&a).await.unwrap();
    first.uid = None;
    other_node.update_app(first).await.unwrap();
    let mut second = other_node.get_app(&b).await.unwrap();
    second.uid = Some("shop".into());
    other_node.update_app(second).await.unwrap();
    for path in ["/api/v1/app/shop/endpoint", "/api/v1/app/shop"] {
        let (status, answer) = as_a(path).await;
        assert_eq!(status, 404, "{path}: {answer}");
    }
    let (status, _) = as_a(&format!("/api/v1/app/{a}/endpoint")).await;
    assert_eq!(status, 200, "its own, by id");
    gw.stop().await;
}

/// A change whose client goes before the answer still runs to its end. Each round caches
/// an endpoint (a publish routes through it), then PATCHes it disabled from a client that
/// gives up sooner or later, often while the write is being committed. Once
/// the endpoint reads as disabled, publishing must skip it: the handler, dropped mid-way,
/// left this node's cache with the endpoint enabled, and every later message went to it.
#[tokio::test]
async fn a_change_whose_client_went_away_still_finishes() {
    let gw = start_gateway(dev_config()).await;
    let rx = Receiver::start(Answer::status(204)).await;
    let mut committed = 0;
    for round in 0..20u64 {
        let app = gw.app(&format!("merchant-{round}")).await;
        gw.endpoint(&app, json!({"url": rx.url, "uid": "main"})).await;
        gw.publish(&app, json!({"eventType": "payment.succeeded", "payload": {}})).await;
        // From 0.3 ms on, longer each round (to 0.1 s): some land mid-commit on any machine.
        let patience = std::time::Duration::from_micros((300.0 * 1.35f64.powi(round as i32)) as u64);
        let impatient = reqwest::Client::builder().timeout(patience).build().unwrap();
        let path = format!("{}/api/v1/app/{app}/endpoint/main", gw.url);
        let _ = impatient.patch(path).bearer_auth(TOKEN).json(&json!({"disabled": true})).send().await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let endpoint = gw.ok("GET", &format!("/api/v1/app/{app}/endpoint/main"), None).await;
        if endpoint["disabled"] != true {
            continue; // Dropped before it wrote anything: nothing to finish.
        }
        committed += 1;
        eventually("a message published after the endpoint was disabled is skipped", async || {
            let msg = gw.publish(&app, json!({"eventType": "payment.succeeded", "payload": {}})).await;
            let (status, _) = gw.destination(&app, &msg).await;
            done_or(status == 5, status)
        })
        .await;
    }
    assert!(committed > 0, "no round's PATCH was committed");
}

/// Svix's raw payloads (its SDKs' `message_in_raw`): `transformationsParams.rawPayload` is
/// the body delivered, byte for byte, with its `content-type`; it was accepted and
/// dropped, and every endpoint got `{}`. Other transformation parameters are refused (none
/// run here).
#[tokio::test]
async fn a_raw_payload_is_delivered_as_given() {
    let gw = start_gateway(dev_config()).await;
    let rx = Receiver::start(Answer::status(200)).await;
    let app = gw.app("raw").await;
    gw.endpoint(&app, json!({"url": rx.url})).await;
    let raw = "id=pay_1&amount=100 {not json}";
    let body = json!({"eventType": "x", "payload": {},
        "transformationsParams": {"rawPayload": raw, "headers": {"content-type": "application/x-www-form-urlencoded"}}});
    let (status, answer) = gw.call("POST", &format!("/api/v1/app/{app}/msg"), Some(body)).await;
    assert_eq!(status, 202, "{answer}");
    let got = rx.next().await;
    assert_eq!(&got.body[..], raw.as_bytes());
    assert_eq!(got.header("content-type"), "application/x-www-form-urlencoded");
    let json_raw =
        json!({"eventType": "x", "payload": {}, "transformationsParams": {"rawPayload": "{\"id\":  \"pay_2\"}"}});
    gw.call("POST", &format!("/api/v1/app/{app}/msg"), Some(json_raw)).await;
    let got = rx.next().await;
    assert_eq!(&got.body[..], b"{\"id\":  \"pay_2\"}");
    assert_eq!(got.header("content-type"), "application/json");
    // A raw payload that is JSON but no object is delivered as given; the answer to the
    // publish holds an object, as Svix's SDKs read it, and reading the message shows it.
    let array = json!({"eventType": "x", "payload": {}, "transformationsParams": {"rawPayload": "[1,2]"}});
    let (status, answer) = gw.call("POST", &format!("/api/v1/app/{app}/msg"), Some(array)).await;
    assert_eq!((status, &answer["payload"]), (202, &json!({})), "{answer}");
    assert_eq!(&rx.next().await.body[..], b"[1,2]");
    let read = gw.ok("GET", &format!("/api/v1/app/{app}/msg/{}", answer["id"].as_str().unwrap()), None).await;
    assert_eq!(read["payload"], json!([1, 2]));
    let refused = [
        json!({"transform": "x"}),
        json!({"headers": {"x-other": "1"}}),
        json!({"rawPayload": 5}),
        // Never read from arrays (serde would take a struct's fields in order).
        json!([null, null]),
        json!({"headers": ["text/plain"]}),
    ];
    for params in refused {
        let body = json!({"eventType": "x", "payload": {}, "transformationsParams": params});
        let (status, answer) = gw.call("POST", &format!("/api/v1/app/{app}/msg"), Some(body)).await;
        assert_eq!(status, 422, "{params}: {answer}");
    }
    gw.stop().await;
}

/// Svix's attempt filters: `endpoint_id` (by id or uid) and `status_code_class` on a
/// message's attempts, `status_code_class` on an endpoint's. They were not read, and the
/// listing answered every attempt as if filtered.
#[tokio::test]
async fn attempt_listings_take_svix_filters() {
    let gw = start_gateway(dev_config()).await;
    let (ok_rx, bad_rx) = (Receiver::start(Answer::status(200)).await, Receiver::start(Answer::status(500)).await);
    let app = gw.app("filters").await;
    let policy = json!({"delaysMs": [3_600_000]});
    let ok = gw.endpoint(&app, json!({"url": ok_rx.url, "uid": "ok-one"})).await["id"].as_str().unwrap().to_owned();
    let bad =
        gw.endpoint(&app, json!({"url": bad_rx.url, "retryPolicy": policy})).await["id"].as_str().unwrap().to_owned();
    let msg = gw.publish(&app, json!({"eventType": "x", "payload": {}})).await;
    ok_rx.next().await;
    bad_rx.next().await;
    let list = |query: String| {
        let path = format!("/api/v1/app/{app}/attempt/msg/{msg}{query}");
        let gw = &gw;
        async move { gw.ok("GET", &path, None).await["data"].as_array().unwrap().clone() }
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while list(String::new()).await.len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "both attempts recorded");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let endpoints =
        |items: Vec<Value>| items.iter().map(|a| a["endpointId"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
    assert_eq!(endpoints(list(format!("?endpoint_id={bad}")).await), std::slice::from_ref(&bad));
    assert_eq!(endpoints(list("?endpoint_id=ok-one".into()).await), std::slice::from_ref(&ok));
    assert_eq!(endpoints(list("?status_code_class=500".into()).await), std::slice::from_ref(&bad));
    assert_eq!(endpoints(list("?status_code_class=200".into()).await), std::slice::from_ref(&ok));
    assert!(list("?status_code_class=400".into()).await.is_empty());
    let full = list("?status_code_class=500".into()).await;
    assert_eq!(full[0]["response"], "receiver says hi");
    let bare = list("?with_content=false&status_code_class=500".into()).await;
    assert_eq!(bare[0]["response"], "", "without content: {bare:?}");
    let by_endpoint =
        gw.ok("GET", &format!("/api/v1/app/{app}/attempt/endpoint/{ok}?status_code_class=500"), None).await;
    assert_eq!(by_endpoint["data"], json!([]));
    let (status, _) = gw.call("GET", &format!("/api/v1/app/{app}/attempt/msg/{msg}?status_code_class=250"), None).await;
    assert_eq!(status, 400);
    let (status, _) = gw.call("GET", &format!("/api/v1/app/{app}/attempt/msg/{msg}?endpoint_id=ep_nope"), None).await;
    assert_eq!(status, 404);
    // NUL in a listing's parameter is a 400 on both stores (PostgreSQL's text cannot hold
    // it: it answered an undocumented 422 where SQLite answered a page).
    for query in
        ["/api/v1/app?iterator=%00", "/api/v1/app/filters/msg?channel=a%00b", "/api/v1/app/filters/msg?tag=%00"]
    {
        let (status, body) = gw.call("GET", query, None).await;
        assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")), "{query}");
    }
    gw.stop().await;
}
