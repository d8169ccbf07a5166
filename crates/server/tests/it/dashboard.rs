//! What the dashboard stands on, over HTTP: the operator's statistics routes, portal links
//! (single use, expiring, one application), sessions (ended with their token, expiring),
//! test messages to one endpoint, and the dashboard turned off. The pages themselves are
//! tested in Chromium (`tests/dashboard`).

use crate::harness::*;
use hookline_server::clock::ManualClock;
use serde_json::{json, Value};
use std::sync::Arc;

const MINUTE: i64 = 60_000;

/// A client that does not follow redirects, so a test sees where the dashboard sends it.
fn browser() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

fn sum(series: &Value, field: &str) -> u64 {
    series["data"][field].as_array().unwrap().iter().map(|n| n.as_u64().unwrap()).sum()
}

/// The session cookie (`name=value`) a dashboard answer sets.
fn session_cookie(response: &reqwest::Response) -> String {
    let set = response.headers().get("set-cookie").expect("a session cookie").to_str().unwrap();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/dashboard"), "{set}");
    set.split(';').next().unwrap().to_owned()
}

async fn app_token(gw: &Gateway, app: &str) -> String {
    gw.ok("POST", &format!("/api/v1/app/{app}/token"), None).await["token"].as_str().unwrap().to_owned()
}

/// Signs in with a new token of `app`: the session cookie.
async fn merchant_session(gw: &Gateway, app: &str) -> String {
    let token = app_token(gw, app).await;
    let signed_in =
        browser().post(format!("{}/dashboard/sign-in", gw.url)).form(&[("token", token)]).send().await.unwrap();
    session_cookie(&signed_in)
}

/// The page at `path` as the session `cookie` sees it (a 200).
async fn page_text(gw: &Gateway, cookie: &str, path: &str) -> String {
    let page = browser().get(format!("{}{path}", gw.url)).header("cookie", cookie).send().await.unwrap();
    assert_eq!(page.status(), 200, "{path}");
    page.text().await.unwrap()
}

#[tokio::test]
async fn the_operator_sees_every_application_and_merchants_do_not() {
    let gw = start_gateway(dev_config()).await;
    let good_rx = Receiver::start(Answer::status(200)).await;
    let bad_rx = Receiver::start(Answer::status(500)).await;
    let (shop, other) = (gw.app("shop").await, gw.app("other").await);
    gw.endpoint(&shop, json!({"url": good_rx.url})).await;
    let policy = json!({"delaysMs": [3_600_000]});
    let bad =
        gw.endpoint(&other, json!({"url": bad_rx.url, "retryPolicy": policy})).await["id"].as_str().unwrap().to_owned();
    let msg = gw.publish(&shop, json!({"eventType": "charge.succeeded", "payload": {}})).await;
    good_rx.next().await;
    gw.wait_attempts(&shop, &msg, 1).await;
    gw.advance(MINUTE);
    let msg = gw.publish(&other, json!({"eventType": "charge.succeeded", "payload": {}})).await;
    bad_rx.next().await;
    gw.wait_attempts(&other, &msg, 1).await;

    // Attempts of every application, per minute: one success, then a failure a minute later.
    let series = gw
        .ok(
            "GET",
            "/api/v1/stats/attempt?period=OneMinute&startDate=2026-01-01T00:00:00Z&endDate=2026-01-01T00:09:59Z",
            None,
        )
        .await;
    assert_eq!(series["period"], "OneMinute");
    assert_eq!(series["data"]["successCount"].as_array().unwrap().len(), 10);
    assert_eq!(
        (series["data"]["successCount"][0].as_u64(), series["data"]["failureCount"][1].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!((sum(&series, "successCount"), sum(&series, "failureCount")), (1, 1), "{series}");

    // The failed delivery waits for its retry: open; nothing is being attempted. The
    // attempt is listed once its record commits, a moment before its task ends and leaves
    // the in-flight count, so the count is waited for.
    let queue = eventually("a delivery stayed in flight", async || {
        let queue = gw.ok("GET", "/api/v1/stats/queue", None).await;
        if queue["inFlight"] == 0 {
            Ok(queue)
        } else {
            Err(queue.to_string())
        }
    })
    .await;
    assert_eq!(queue, json!({"open": 1, "inFlight": 0}));
    let failing = gw.ok("GET", "/api/v1/stats/failing-endpoint", None).await;
    let listed: Vec<&str> =
        failing["data"].as_array().unwrap().iter().map(|f| f["endpoint"]["id"].as_str().unwrap()).collect();
    assert_eq!(listed, [bad.as_str()], "{failing}");
    assert_eq!(failing["data"][0]["appId"], other);
    assert_eq!(failing["data"][0]["endpoint"]["health"]["status"], "failing");

    // A merchant's token reads none of it.
    let token = app_token(&gw, &shop).await;
    for path in ["/api/v1/stats/attempt", "/api/v1/stats/queue", "/api/v1/stats/failing-endpoint"] {
        let answer = gw.http.get(format!("{}{path}", gw.url)).bearer_auth(&token).send().await.unwrap();
        assert_eq!(answer.status(), 403, "{path}");
    }
    gw.stop().await;
}

/// Uses a portal link as a browser would: the form post that signs in.
async fn use_link(gw: &Gateway, code: &str) -> reqwest::Response {
    browser().post(format!("{}/dashboard/portal", gw.url)).form(&[("code", code)]).send().await.unwrap()
}

#[tokio::test]
async fn a_portal_link_signs_in_once_to_one_application_before_it_expires() {
    let mut config = dev_config();
    config.api.public_url = Some("https://hooks.example.com/".into());
    let gw = start_gateway(config).await;
    let (shop, other) = (gw.app("shop").await, gw.app("other").await);
    let link = gw.ok("POST", "/api/v1/auth/app-portal-access/shop", None).await;
    let code = link["token"].as_str().unwrap();
    assert_eq!(link["url"], format!("https://hooks.example.com/dashboard/portal?code={code}"));

    // Only the operator mints links, for an application that exists, with no options it
    // would silently ignore.
    let token = app_token(&gw, &shop).await;
    let path = format!("{}/api/v1/auth/app-portal-access/{shop}", gw.url);
    assert_eq!(gw.http.post(&path).bearer_auth(&token).send().await.unwrap().status(), 403);
    assert_eq!(gw.call("POST", "/api/v1/auth/app-portal-access/nope", None).await.0, 404);
    let (status, error) = gw.call("POST", "/api/v1/auth/app-portal-access/shop", Some(json!({"readOnly": true}))).await;
    assert_eq!((status, error["code"].as_str()), (422, Some("validation")), "{error}");

    // Opening the link shows a button and uses nothing up (a link previewer may fetch it).
    let page = browser().get(format!("{}/dashboard/portal?code={code}", gw.url)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let signed_in = use_link(&gw, code).await;
    assert_eq!(signed_in.status(), 303);
    assert_eq!(signed_in.headers()["location"], format!("/dashboard/app/{shop}"));
    let cookie = session_cookie(&signed_in);
    let visit = |path: String| browser().get(format!("{}{path}", gw.url)).header("cookie", cookie.clone()).send();
    assert_eq!(visit(format!("/dashboard/app/{shop}")).await.unwrap().status(), 200);
    assert_eq!(visit(format!("/dashboard/app/{other}")).await.unwrap().status(), 404);
    assert_eq!(visit("/dashboard/source".into()).await.unwrap().status(), 404);
    // Once.
    assert_eq!(use_link(&gw, code).await.status(), 410);
    assert_eq!(use_link(&gw, "made-up").await.status(), 410);

    // An answer holding a secret (a link, a token, a rotated signing secret) is never kept for
    // an Idempotency-Key replay: the same key runs the request again.
    for path in ["/api/v1/auth/app-portal-access/shop".to_owned(), format!("/api/v1/app/{shop}/token")] {
        let keyed =
            || gw.http.post(format!("{}{path}", gw.url)).bearer_auth(TOKEN).header("idempotency-key", "k-1").send();
        let (first, second) = (keyed().await.unwrap(), keyed().await.unwrap());
        assert!(first.status().is_success() && second.status().is_success(), "{path}");
        assert!(second.headers().get("idempotent-replayed").is_none(), "{path}");
        assert_ne!(first.text().await.unwrap(), second.text().await.unwrap(), "{path}: a new secret each time");
    }

    // A link not used within `dashboard.link_ttl_ms` (10 minutes) signs no one in.
    let late = gw.ok("POST", "/api/v1/auth/app-portal-access/shop", None).await;
    gw.advance(10 * MINUTE);
    assert_eq!(use_link(&gw, late["token"].as_str().unwrap()).await.status(), 410);
    gw.stop().await;
}

#[tokio::test]
async fn expire_all_ends_an_applications_portal_sessions_and_links_and_no_others() {
    let gateway = start_gateway(dev_config()).await;
    let gw = &gateway;
    let (shop, other) = (gw.app("shop").await, gw.app("other").await);
    let mint = move |app: String| async move {
        let link = gw.ok("POST", &format!("/api/v1/auth/app-portal-access/{app}"), None).await;
        link["token"].as_str().unwrap().to_owned()
    };
    let signed_in = move |code: String| async move { session_cookie(&use_link(gw, &code).await) };
    let visit = |cookie: String, app: String| {
        browser().get(format!("{}/dashboard/app/{app}", gw.url)).header("cookie", cookie).send()
    };
    let (first, later) = (signed_in(mint(shop.clone()).await).await, signed_in(mint(shop.clone()).await).await);
    let theirs = signed_in(mint(other.clone()).await).await;
    assert_eq!(visit(first.clone(), shop.clone()).await.unwrap().status(), 200);

    // Only the operator expires them, for an application that exists, within Svix's limits,
    // and Svix's `sessionIds` (which Hookline has no use for) is refused, not ignored.
    let path = format!("/api/v1/auth/app/{shop}/expire-all");
    let token = app_token(gw, &shop).await;
    assert_eq!(gw.http.post(format!("{}{path}", gw.url)).bearer_auth(&token).send().await.unwrap().status(), 403);
    assert_eq!(gw.call("POST", "/api/v1/auth/app/nope/expire-all", None).await.0, 404);
    for refused in [json!({"expiry": -1}), json!({"expiry": 259_201}), json!({"sessionIds": ["s"]})] {
        let (status, error) = gw.call("POST", &path, Some(refused.clone())).await;
        assert_eq!((status, error["code"].as_str()), (422, Some("validation")), "{refused}: {error}");
    }
    assert_eq!(visit(first.clone(), shop.clone()).await.unwrap().status(), 200, "refused calls change nothing");

    // With an expiry the sessions last that long, but a link not yet used ends at once (used
    // later, it would open a session outliving the expiry); without one everything ends at
    // once. Another application's session stays. (An application token never reaches the
    // handler: the API refuses `/api/v1/auth/` to it; the handler checks again.)
    let waiting = mint(shop.clone()).await;
    assert_eq!(gw.call("POST", &path, Some(json!({"expiry": 60}))).await.0, 204);
    assert_eq!(use_link(gw, &waiting).await.status(), 410, "an unused link ends at once");
    gw.advance(59_000);
    assert_eq!(visit(first.clone(), shop.clone()).await.unwrap().status(), 200, "within the expiry");
    gw.advance(1_000);
    let after = visit(first.clone(), shop.clone()).await.unwrap();
    assert_eq!((after.status().as_u16(), after.headers()["location"].to_str().unwrap()), (303, "/dashboard/sign-in"));
    assert_eq!(visit(later.clone(), shop.clone()).await.unwrap().status(), 303);
    let (fresh, unused) = (signed_in(mint(shop.clone()).await).await, mint(shop.clone()).await);
    assert_eq!(gw.call("POST", &path, None).await.0, 204);
    assert_eq!(visit(fresh, shop.clone()).await.unwrap().status(), 303, "ended at once");
    assert_eq!(use_link(gw, &unused).await.status(), 410, "the unused link is spent");
    assert_eq!(visit(theirs, other.clone()).await.unwrap().status(), 200, "another application's session");
    gateway.stop().await;
}

#[tokio::test]
async fn a_session_lasts_while_its_token_does_and_until_it_expires() {
    let gw = start_gateway(dev_config()).await;
    let shop = gw.app("shop").await;
    let token = app_token(&gw, &shop).await;
    let sign_in =
        |token: String| browser().post(format!("{}/dashboard/sign-in", gw.url)).form(&[("token", token)]).send();
    assert_eq!(sign_in("wrong".into()).await.unwrap().status(), 401);
    let merchant = session_cookie(&sign_in(token.clone()).await.unwrap());
    let admin = session_cookie(&sign_in(TOKEN.into()).await.unwrap());
    let visit = |cookie: &str| {
        browser().get(format!("{}/dashboard/app/{shop}", gw.url)).header("cookie", cookie.to_owned()).send()
    };
    assert_eq!(visit(&merchant).await.unwrap().status(), 200);
    assert_eq!(visit(&admin).await.unwrap().status(), 200);
    // Revoking the token ends its sessions.
    let tokens = gw.ok("GET", &format!("/api/v1/app/{shop}/token"), None).await;
    let token_id = tokens["data"][0]["id"].as_str().unwrap();
    gw.ok("DELETE", &format!("/api/v1/app/{shop}/token/{token_id}"), None).await;
    let after = visit(&merchant).await.unwrap();
    assert_eq!((after.status().as_u16(), after.headers()["location"].to_str().unwrap()), (303, "/dashboard/sign-in"));
    // Sessions expire after `dashboard.session_ttl_ms` (12 hours).
    gw.advance(12 * 60 * MINUTE);
    assert_eq!(visit(&admin).await.unwrap().status(), 303);
    gw.stop().await;
}

/// Signing in again, with a token or a portal link, ends the session the browser held:
/// an operator who opened a merchant's portal to see what it sees left the operator's
/// session valid for its whole time, with nothing in the dashboard to end it.
#[tokio::test]
async fn signing_in_again_ends_the_session_the_browser_held() {
    let gw = start_gateway(dev_config()).await;
    let shop = gw.app("shop").await;
    let sign_in = |token: &str, held: Option<&str>| {
        let request = browser().post(format!("{}/dashboard/sign-in", gw.url)).form(&[("token", token)]);
        match held {
            Some(cookie) => request.header("cookie", cookie),
            None => request,
        }
        .send()
    };
    let visit = |cookie: &str| browser().get(format!("{}/dashboard", gw.url)).header("cookie", cookie).send();
    let admin = session_cookie(&sign_in(TOKEN, None).await.unwrap());
    assert_eq!(visit(&admin).await.unwrap().status(), 200);
    let link = gw.ok("POST", &format!("/api/v1/auth/app-portal-access/{shop}"), None).await;
    let code = link["url"].as_str().unwrap().rsplit_once("code=").unwrap().1.to_owned();
    let portal = browser()
        .post(format!("{}/dashboard/portal", gw.url))
        .header("cookie", admin.as_str())
        .form(&[("code", code)])
        .send()
        .await
        .unwrap();
    assert_eq!(portal.status(), 303);
    let merchant = session_cookie(&portal);
    assert_eq!(visit(&admin).await.unwrap().status(), 303, "the operator's session ended");
    let again = session_cookie(&sign_in(TOKEN, Some(merchant.as_str())).await.unwrap());
    let merchant_page = browser().get(format!("{}/dashboard/app/{shop}", gw.url)).header("cookie", merchant.as_str());
    assert_eq!(merchant_page.send().await.unwrap().status(), 303, "the portal session ended");
    assert_eq!(visit(&again).await.unwrap().status(), 200);
    gw.stop().await;
}

/// A message page shows every attempt, whatever it went to: an attempt to a callback URL
/// names its delivery where an endpoint would be, and one to a deleted endpoint names an
/// endpoint gone; reading their headers failed, and the whole page with it.
#[tokio::test]
async fn a_message_page_shows_attempts_to_a_callback_url_and_a_deleted_endpoint() {
    let gw = start_gateway(dev_config()).await;
    let rx = Receiver::start(Answer::status(200)).await;
    let shop = gw.app("shop").await;
    let kept = gw.endpoint(&shop, json!({"url": rx.url})).await["id"].as_str().unwrap().to_owned();
    let gone = gw.endpoint(&shop, json!({"url": rx.url})).await["id"].as_str().unwrap().to_owned();
    let callback = format!("{}/checkout/cs_1", rx.url);
    let msg = gw.publish(&shop, json!({"eventType": "payment.expired", "payload": {}, "callbackUrl": callback})).await;
    gw.wait_attempts(&shop, &msg, 3).await;
    gw.ok("DELETE", &format!("/api/v1/app/{shop}/endpoint/{gone}"), None).await;
    let signed_in = browser().post(format!("{}/dashboard/sign-in", gw.url)).form(&[("token", TOKEN)]).send().await;
    let cookie = session_cookie(&signed_in.unwrap());
    let page = browser()
        .get(format!("{}/dashboard/app/{shop}/msg/{msg}", gw.url))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert_eq!(html.matches("data-attempt=").count(), 3, "every attempt is listed");
    assert!(html.contains("Request headers") && html.contains(&kept), "the kept endpoint's headers are shown");
    gw.stop().await;
}

/// The configured admin token is revoked by changing it: the operator's sessions opened
/// with the old value end at the restart with the new one (they lasted their 12 hours,
/// kept in the store under the setting's one id).
#[tokio::test]
async fn changing_the_configured_admin_token_ends_the_sessions_of_the_old_one() {
    let (dir, clock) = (Arc::new(tempfile::tempdir().unwrap()), Arc::new(ManualClock::new(T0)));
    let gw = start_gateway_in(dev_config(), dir.clone(), clock.clone()).await;
    let sign_in = |gw: &Gateway, token: &str| {
        browser().post(format!("{}/dashboard/sign-in", gw.url)).form(&[("token", token.to_owned())]).send()
    };
    let visit = |gw: &Gateway, cookie: &str| {
        browser().get(format!("{}/dashboard", gw.url)).header("cookie", cookie.to_owned()).send()
    };
    let old = session_cookie(&sign_in(&gw, TOKEN).await.unwrap());
    assert_eq!(visit(&gw, &old).await.unwrap().status(), 200);
    gw.stop().await;
    // The same token again: the session stays.
    let gw = start_gateway_in(dev_config(), dir.clone(), clock.clone()).await;
    assert_eq!(visit(&gw, &old).await.unwrap().status(), 200, "a restart alone ends nothing");
    gw.stop().await;
    let mut changed = dev_config();
    changed.api.admin_token = Some("a-new-admin-token".into());
    let gw = start_gateway_in(changed, dir, clock).await;
    let after = visit(&gw, &old).await.unwrap();
    assert_eq!((after.status().as_u16(), after.headers()["location"].to_str().unwrap()), (303, "/dashboard/sign-in"));
    let new = session_cookie(&sign_in(&gw, "a-new-admin-token").await.unwrap());
    assert_eq!(visit(&gw, &new).await.unwrap().status(), 200);
    assert_eq!(sign_in(&gw, TOKEN).await.unwrap().status(), 401, "the old token signs no one in");
    gw.stop().await;
}

#[tokio::test]
async fn a_test_message_goes_to_one_endpoint_only() {
    let gw = start_gateway(dev_config()).await;
    let (one_rx, other_rx) = (Receiver::start(Answer::status(200)).await, Receiver::start(Answer::status(200)).await);
    let shop = gw.app("shop").await;
    let filtered = json!({"url": one_rx.url, "filterTypes": ["charge.refunded"]});
    let one = gw.endpoint(&shop, filtered).await["id"].as_str().unwrap().to_owned();
    let other = gw.endpoint(&shop, json!({"url": other_rx.url})).await["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/app/{shop}/endpoint/{one}/send-example");
    let (status, message) = gw.call("POST", &path, Some(json!({"eventType": "hookline.test"}))).await;
    assert_eq!(status, 202, "{message}");
    assert_eq!(message["eventType"], "hookline.test");
    // Sent though the endpoint filters other types; signed like any message.
    let received = one_rx.next().await;
    let payload: Value = serde_json::from_slice(&received.body).unwrap();
    assert_eq!((payload["type"].as_str(), payload["test"].as_bool()), (Some("hookline.test"), Some(true)));
    assert_eq!(received.header("webhook-id"), message["id"].as_str().unwrap());
    let sent_to_other = gw.ok("GET", &format!("/api/v1/app/{shop}/endpoint/{other}/msg"), None).await;
    assert_eq!(sent_to_other["data"], json!([]), "only the chosen endpoint has a delivery");
    assert!(!other_rx.gets_within(300).await, "only the chosen endpoint");

    let (status, error) = gw.call("POST", &path, Some(json!({"eventType": ""}))).await;
    assert_eq!((status, error["code"].as_str()), (422, Some("validation")));
    // The dashboard's form says what was wrong (a validation's detail is a list, and the
    // page said only "Unprocessable Entity").
    let signed_in = browser().post(format!("{}/dashboard/sign-in", gw.url)).form(&[("token", TOKEN)]).send().await;
    let cookie = session_cookie(&signed_in.unwrap());
    let page_url = format!("{}/dashboard/app/{shop}/endpoint/{one}", gw.url);
    let page = browser().get(&page_url).header("cookie", cookie.clone()).send().await.unwrap().text().await.unwrap();
    let csrf = page.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let refused = browser()
        .post(format!("{page_url}/test"))
        .header("cookie", cookie)
        .form(&[("csrf", csrf.as_str()), ("eventType", "")])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    let said = refused.text().await.unwrap();
    assert!(said.contains(error["detail"][0]["msg"].as_str().unwrap()), "{said}");
    gw.ok("PATCH", &format!("/api/v1/app/{shop}/endpoint/{one}"), Some(json!({"disabled": true}))).await;
    assert_eq!(gw.call("POST", &path, Some(json!({"eventType": "hookline.test"}))).await.0, 409);
    gw.stop().await;
}

#[tokio::test]
async fn the_dashboard_can_be_turned_off() {
    let mut config = dev_config();
    config.dashboard.enabled = false;
    let gw = start_gateway(config).await;
    gw.app("shop").await;
    let (status, error) = gw.call("GET", "/dashboard", None).await;
    assert_eq!((status, error["code"].as_str()), (404, Some("not_found")));
    assert_eq!(gw.call("POST", "/api/v1/auth/app-portal-access/shop", None).await.0, 409);
    gw.stop().await;
}

/// A search by name reads past the first page of applications (it searched only the 100
/// shown, and its next page forgot the words).
#[tokio::test]
async fn searching_applications_by_name_reads_past_the_first_page() {
    let gw = start_gateway(dev_config()).await;
    for n in 0..150 {
        gw.ok("POST", "/api/v1/app", Some(json!({"name": format!("shop {n}")}))).await;
    }
    let acme = gw.ok("POST", "/api/v1/app", Some(json!({"name": "ACME payments"}))).await;
    let signed_in =
        browser().post(format!("{}/dashboard/sign-in", gw.url)).form(&[("token", TOKEN)]).send().await.unwrap();
    let cookie = session_cookie(&signed_in);
    let search = async |words: &str| {
        let url = format!("{}/dashboard/app?q={words}", gw.url);
        let page = browser().get(url).header("cookie", cookie.clone()).send().await.unwrap();
        assert_eq!(page.status(), 200);
        page.text().await.unwrap()
    };
    let found = search("acme").await;
    assert!(found.contains(acme["id"].as_str().unwrap()), "{found}");
    assert!(found.contains("1 of 151 applications searched match."), "{found}");
    let many = search("shop%201").await;
    // shop 1, shop 10 to 19, shop 100 to 149.
    assert!(many.contains("61 of 151 applications searched match."), "{many}");
    gw.stop().await;
}

/// "Resend to every endpoint" goes on past an endpoint that refuses (an ordered delivery
/// still open in its lane) and says which were resent and which not: it stopped at the
/// first refusal, with nothing said of the ones before it or after it.
#[tokio::test]
async fn resending_to_every_endpoint_says_which_were_refused() {
    let gw = start_gateway(dev_config()).await;
    let (good_rx, failing_rx) =
        (Receiver::start(Answer::status(200)).await, Receiver::start(Answer::status(500)).await);
    let shop = gw.app("shop").await;
    let failing = gw.endpoint(&shop, json!({"url": failing_rx.url, "ordering": "fifo"})).await;
    gw.endpoint(&shop, json!({"url": good_rx.url})).await;
    let msg = gw.publish(&shop, json!({"eventType": "a", "payload": {}})).await;
    gw.wait_attempts(&shop, &msg, 2).await;
    good_rx.next().await;
    let resend = resend_to_every_endpoint(&gw, &shop, &msg).await;
    assert_eq!(resend.status(), 409);
    let said = resend.text().await.unwrap();
    let failing_id = failing["id"].as_str().unwrap();
    assert!(said.contains("Resent to 1 of 2 endpoints.") && said.contains(&format!("Not to {failing_id}:")), "{said}");
    let again = good_rx.next().await;
    assert_eq!(again.body.as_ref(), b"{}", "the other endpoint has it again");
    gw.stop().await;
}

/// "Resend to every endpoint" reaches every one, past the API's pages of 250 (it resent the
/// first page's and said it had resent to every endpoint), and the message page's endpoint
/// list and the messages page's choice of endpoint show them all.
#[tokio::test]
async fn resending_to_every_endpoint_goes_past_one_page() {
    let mut config = dev_config();
    config.api.token_rate_limit_per_s = 0; // 252 resends on a clock that never refills
    let gw = start_gateway(config).await;
    let rx = Receiver::start(Answer::status(200)).await;
    let shop = gw.app("shop").await;
    let mut last = Value::Null;
    for _ in 0..252 {
        last = gw.endpoint(&shop, json!({"url": rx.url})).await;
    }
    let msg = gw.publish(&shop, json!({"eventType": "a", "payload": {}})).await;
    for _ in 0..252 {
        rx.next().await;
    }
    let resend = resend_to_every_endpoint(&gw, &shop, &msg).await;
    assert_eq!(resend.status(), 303, "{:?}", resend.text().await);
    assert!(resend.headers()["location"].to_str().unwrap().ends_with("done=resent-all"));
    for _ in 0..252 {
        rx.next().await;
    }
    let cookie = merchant_session(&gw, &shop).await;
    let last_id = last["id"].as_str().unwrap();
    for page in [format!("/dashboard/app/{shop}"), format!("/dashboard/app/{shop}/msg")] {
        assert!(page_text(&gw, &cookie, &page).await.contains(last_id), "the 252nd endpoint is listed");
    }
    gw.stop().await;
}

/// The messages page goes back past its newest 50, its search kept (older messages were
/// out of reach but by their event id).
#[tokio::test]
async fn the_messages_page_goes_back_page_by_page() {
    let gw = start_gateway(dev_config()).await;
    let shop = gw.app("shop").await;
    let mut first = String::new();
    for n in 0..52 {
        let msg = gw.publish(&shop, json!({"eventType": "payment.failed", "payload": {"n": n}})).await;
        if n == 0 {
            first = msg;
        }
        gw.publish(&shop, json!({"eventType": "payment.other", "payload": {"n": n}})).await;
    }
    let cookie = merchant_session(&gw, &shop).await;
    let newest = page_text(&gw, &cookie, &format!("/dashboard/app/{shop}/msg?eventType=payment.failed")).await;
    assert!(!newest.contains(&first), "the oldest is not among the newest 50");
    let link = newest.split("href=\"").find(|h| h.contains("iterator=")).expect("a link to older messages");
    let link = link.split('"').next().unwrap().replace("&amp;", "&");
    assert!(link.contains("eventType=payment.failed"), "{link}");
    let older = page_text(&gw, &cookie, &link).await;
    assert!(older.contains(&first) && !older.contains("payment.other"), "the search is kept");
    assert!(!older.contains("Older messages"), "two messages were left, and nothing after them");
    gw.stop().await;
}

/// A merchant's dashboard page costs one request of its token's budget, and each change it
/// makes one more: a resend to every endpoint was one request however many endpoints (250
/// writes and deliveries for one unit of a budget of 100 a second).
#[tokio::test]
async fn each_change_a_dashboard_page_makes_is_charged() {
    let mut config = dev_config();
    config.api.token_rate_limit_per_s = 2; // a burst of 4, never refilled on the manual clock
    let gw = start_gateway(config).await;
    let rx = Receiver::start(Answer::status(200)).await;
    let shop = gw.app("shop").await;
    for _ in 0..5 {
        gw.endpoint(&shop, json!({"url": rx.url})).await;
    }
    let msg = gw.publish(&shop, json!({"eventType": "a", "payload": {}})).await;
    for _ in 0..5 {
        rx.next().await;
    }
    // Signing in, the page and the form take three; one resend is left.
    let resend = resend_to_every_endpoint(&gw, &shop, &msg).await;
    assert_eq!(resend.status(), 429, "no resend is free");
    assert_eq!(resend.headers()["retry-after"], "1", "as the API says when to come back");
    assert!(resend.text().await.unwrap().contains("Resent to 1 of 5 endpoints."));
}

/// Each sign-in writes a session: one with a merchant's token costs a request of its
/// budget (signing in again and again cost nothing). Portal sign-ins take no budget (one
/// shared by every visitor would let anyone lock the merchants out).
#[tokio::test]
async fn signing_in_is_charged() {
    let mut config = dev_config();
    config.api.token_rate_limit_per_s = 1; // a burst of 2, never refilled on the manual clock
    let gw = start_gateway(config).await;
    let shop = gw.app("shop").await;
    let token = app_token(&gw, &shop).await;
    let sign_in = || browser().post(format!("{}/dashboard/sign-in", gw.url)).form(&[("token", token.clone())]).send();
    for expected in [303, 303, 429] {
        assert_eq!(sign_in().await.unwrap().status(), expected);
    }
    for _ in 0..3 {
        assert_eq!(use_link(&gw, "not-a-link").await.status(), 410);
    }
    gw.stop().await;
}

/// Signs in with a token of `app`, opens the message's page and presses "Resend to every
/// endpoint" on it.
async fn resend_to_every_endpoint(gw: &Gateway, app: &str, msg: &str) -> reqwest::Response {
    let cookie = merchant_session(gw, app).await;
    let page = page_text(gw, &cookie, &format!("/dashboard/app/{app}/msg/{msg}")).await;
    let csrf = page.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    browser()
        .post(format!("{}/dashboard/app/{app}/msg/{msg}/resend", gw.url))
        .header("cookie", cookie)
        .form(&[("csrf", csrf.as_str()), ("endpoint", "all")])
        .send()
        .await
        .unwrap()
}
