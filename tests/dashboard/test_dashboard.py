"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against the real
binary. Sign in, the overview's figures from published messages, a failing endpoint
resent until it succeeds (the attempt appearing without a reload), escaping of untrusted
payloads, an application's portal confined to it, CSRF, portal links used once, sign-out.

Screenshots of the overview and of an endpoint page are saved in
`$HOOKLINE_SCREENSHOT_DIR` (default `target/dashboard-screenshots`); `docs/` holds a copy."""
import http.server
import os
import secrets
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
from hookline_process import ROOT, start_hookline
from playwright.sync_api import Page, expect, sync_playwright

TOKEN = "dashboard-test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SCREENSHOTS = Path(os.environ.get("HOOKLINE_SCREENSHOT_DIR", ROOT / "target/dashboard-screenshots"))
XSS_PAYLOAD = {
    "note": "<script>window.__xss = 1</script>",
    "attr": '"><img src=x onerror="window.__xss = 2">',
    "amount": 1250,
}


class Merchant:
    """A merchant's webhook receiver: `/ok` answers 200; `/flaky` answers 500 until healed.
    `GET /attack` is a page of another origin that posts a form to the dashboard."""

    def __init__(self):
        self.healed = threading.Event()
        self.received = {"/ok": 0, "/flaky": 0}
        self.attack_target = ""
        merchant = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                merchant.received[self.path] = merchant.received.get(self.path, 0) + 1
                failing = self.path == "/flaky" and not merchant.healed.is_set()
                self.send_response(500 if failing else 200)
                self.end_headers()
                self.wfile.write(b"<b>down for maintenance</b>" if failing else b"ok")

            def do_GET(self):
                page = (
                    f'<form id="f" method="post" action="{merchant.attack_target}">'
                    '<input type="hidden" name="csrf" value="guessed"></form>'
                    '<button id="go" onclick="document.getElementById(\'f\').submit()">win</button>'
                ).encode()
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def wait_until(check, timeout=60, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def world():
    """A gateway, a merchant, and two applications: `shop` (an endpoint that works, one that
    fails) and `other` (someone else's)."""
    process, url, _ = start_hookline(TOKEN, env={"HOOKLINE_DASHBOARD_REFRESH_MS": "1000"})
    merchant = Merchant()
    api = httpx.Client(base_url=url, headers=AUTH, timeout=30)
    tag = secrets.token_hex(4)
    shop = api.post("/api/v1/app", json={"name": f"Shop {tag}", "uid": f"shop-{tag}"}).json()
    other = api.post("/api/v1/app", json={"name": f"Other {tag}", "uid": f"other-{tag}"}).json()
    ok = api.post(f"/api/v1/app/{shop['id']}/endpoint", json={"url": f"{merchant.url}/ok"}).json()
    flaky = api.post(
        f"/api/v1/app/{shop['id']}/endpoint",
        json={"url": f"{merchant.url}/flaky", "description": "<i>flaky</i> <script>window.__xss = 3</script>"},
    ).json()
    theirs = api.post(f"/api/v1/app/{other['id']}/endpoint", json={"url": f"{merchant.url}/ok"}).json()
    custom = {"headers": {"X-Shop": "shop-7", "Authorization": "Bearer merchant-private"}}
    assert api.put(f"/api/v1/app/{shop['id']}/endpoint/{ok['id']}/headers", json=custom).status_code == 204
    for n in range(3):
        api.post(f"/api/v1/app/{shop['id']}/msg", json={"eventType": "payment.succeeded", "payload": {"n": n}})
    xss = api.post(f"/api/v1/app/{shop['id']}/msg", json={"eventType": "payment.failed", "payload": XSS_PAYLOAD})
    their_msg = api.post(f"/api/v1/app/{other['id']}/msg", json={"eventType": "payment.succeeded", "payload": {}})
    wait_until(lambda: merchant.received["/ok"] >= 5 and merchant.received["/flaky"] >= 4, what="first attempts")
    browser_runner = sync_playwright().start()
    chromium = os.environ.get("HOOKLINE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    browser = browser_runner.chromium.launch(executable_path=chromium)
    yield {
        "url": url,
        "api": api,
        "merchant": merchant,
        "shop": shop,
        "other": other,
        "ok": ok,
        "flaky": flaky,
        "theirs": theirs,
        "xss_msg": xss.json(),
        "their_msg": their_msg.json(),
        "browser": browser,
    }
    browser.close()
    browser_runner.stop()
    merchant.server.shutdown()
    process.terminate()
    process.wait(timeout=30)


def signed_in(world, token=TOKEN, viewport=(1280, 900)) -> Page:
    """A new browser (its own cookies) signed in with `token`. Any dialog fails the test."""
    context = world["browser"].new_context(viewport={"width": viewport[0], "height": viewport[1]})
    page = context.new_page()
    page.on("dialog", lambda dialog: pytest.fail(f"a dialog opened: {dialog.message}"))
    page.goto(f"{world['url']}/dashboard")
    expect(page).to_have_url(f"{world['url']}/dashboard/sign-in")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    return page


def test_operator_sees_real_figures_and_resends_a_failing_endpoint(world):
    page = signed_in(world)
    expect(page).to_have_url(f"{world['url']}/dashboard")
    chart = page.locator("#chart-attempts")
    # Five deliveries to /ok succeeded (more on PostgreSQL, where other tests share the
    # database); the flaky endpoint failed at least four times.
    assert int(chart.get_attribute("data-succeeded")) >= 5
    assert int(chart.get_attribute("data-failed")) >= 4
    assert chart.locator("rect.ok").count() > 0, "the chart draws the figures"
    assert int(page.locator("#figures [data-figure=succeeded]").inner_text()) >= 5
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "overview.png"), full_page=True)

    # Live: a new delivery shows in the figures without a reload.
    before = int(page.locator("#figures [data-figure=succeeded]").inner_text())
    navigations = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    world["api"].post(f"/api/v1/app/{world['shop']['id']}/msg", json={"eventType": "payment.succeeded", "payload": {}})
    wait_until(
        lambda: int(page.locator("#figures [data-figure=succeeded]").inner_text()) > before,
        timeout=30,
        what="the overview to show the new delivery",
    )
    assert navigations == [], "the page was not reloaded"

    # The failing endpoint is listed; open it.
    page.locator(f"#failing a[href$='/endpoint/{world['flaky']['id']}']").click()
    expect(page.locator("#health [data-health=failing]")).to_be_visible()
    expect(page.locator("#attempt-strip rect.fail").first).to_be_attached()
    # Latency too: the 500s were answered, so the series has a p99.
    latency = page.locator("#chart-latency")
    assert int(latency.get_attribute("data-p99-max")) > 0
    expect(latency.locator("circle.p99").first).to_be_attached()
    failures = page.locator("#attempts tr[data-attempt]").count()
    assert failures >= 4
    expect(page.locator("#attempts .badge.ok")).to_have_count(0)
    # Untrusted text is shown as text.
    expect(page.locator("dl.settings")).to_contain_text("<i>flaky</i> <script>window.__xss = 3</script>")
    expect(page.locator("#attempts").first).to_contain_text("<b>down for maintenance</b>")

    # The merchant fixed their server; resend the newest failed message.
    world["merchant"].healed.set()
    page.locator("#attempts tr[data-attempt] button", has_text="Resend").first.click()
    expect(page.locator(".notice")).to_contain_text("Resent")
    # The new attempt appears (the page also refreshes its figures itself, without a
    # reload). The endpoint's own retries may succeed now too: at least one success.
    expect(page.locator("#attempts .badge.ok").first).to_be_visible(timeout=30_000)
    assert page.locator("#attempts tr[data-attempt]").count() >= failures + 1
    wait_until(lambda: page.evaluate("document.body.dataset.refreshedAt") is not None, what="a live refresh")
    page.screenshot(path=str(SCREENSHOTS / "endpoint.png"), full_page=True)
    assert page.evaluate("window.__xss") is None


def test_payloads_are_shown_as_text_and_run_nothing(world):
    page = signed_in(world)
    shop, msg = world["shop"], world["xss_msg"]
    answer = page.goto(f"{world['url']}/dashboard/app/{shop['id']}/msg/{msg['id']}")
    csp = answer.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "unsafe" not in csp, csp
    payload = page.locator("#payload").inner_text()
    assert XSS_PAYLOAD["note"] in payload and '"\\"><img src=x onerror=\\"window.__xss = 2\\">"' in payload
    assert page.locator("img").count() == 0, "no element was made from the payload"
    assert page.locator("main script").count() == 0
    assert page.evaluate("window.__xss") is None, "nothing from the payload ran"
    # Each attempt's request headers, secrets masked: here the attempt to the endpoint with
    # custom headers (by the time this runs, the flaky endpoint may have a 200 of its own).
    attempts = world["api"].get(f"/api/v1/app/{shop['id']}/attempt/msg/{msg['id']}").json()["data"]
    to_ok = next(a for a in attempts if a["endpointId"] == world["ok"]["id"] and a["responseStatusCode"] == 200)
    row = page.locator(f"#attempts tr[data-attempt='{to_ok['id']}']")
    row.locator("summary", has_text="Request headers").click()
    sent = row.locator("pre.headers").inner_text()
    assert f"webhook-id: {msg['id']}" in sent and "webhook-timestamp: " in sent, sent
    assert "webhook-signature: •••••• (masked)" in sent and "v1," not in sent, sent
    assert "X-Shop: shop-7" in sent and "Authorization: •••••• (masked)" in sent, sent
    assert "merchant-private" not in page.content()
    # The messages list shows it too, as text.
    page.goto(f"{world['url']}/dashboard/app/{shop['id']}/msg?eventType=payment.failed")
    expect(page.locator("#messages")).to_contain_text(msg["id"])
    assert page.evaluate("window.__xss") is None


def test_an_application_token_sees_its_application_only(world):
    api, shop, other = world["api"], world["shop"], world["other"]
    token = api.post(f"/api/v1/app/{shop['id']}/token").json()["token"]
    page = signed_in(world, token)
    expect(page).to_have_url(f"{world['url']}/dashboard/app/{shop['id']}")
    expect(page.locator("#endpoints")).to_contain_text(world["ok"]["url"])
    base = world["url"]
    forbidden = [
        f"/dashboard/app/{other['id']}",
        f"/dashboard/app/{other['uid']}",
        f"/dashboard/app/{other['id']}/endpoint/{world['theirs']['id']}",
        f"/dashboard/app/{shop['id']}/endpoint/{world['theirs']['id']}",
        f"/dashboard/app/{other['id']}/msg",
        f"/dashboard/app/{other['id']}/msg/{world['their_msg']['id']}",
        f"/dashboard/app/{shop['id']}/msg/{world['their_msg']['id']}",
        "/dashboard/source",
        "/dashboard/operational",
    ]
    for path in forbidden:
        answer = page.goto(base + path)
        assert answer.status == 404, path
        assert other["name"] not in page.content() and world["theirs"]["id"] not in page.content(), path
    # The console's pages send it back to its own application.
    page.goto(f"{base}/dashboard")
    expect(page).to_have_url(f"{base}/dashboard/app/{shop['id']}")
    page.goto(f"{base}/dashboard/app")
    expect(page).to_have_url(f"{base}/dashboard/app/{shop['id']}")
    # Acting on another application's endpoint is refused too, with a valid CSRF token.
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    answer = page.request.post(
        f"{base}/dashboard/app/{other['id']}/endpoint/{world['theirs']['id']}/disable", form={"csrf": csrf}
    )
    assert answer.status == 404
    assert api.get(f"/api/v1/app/{other['id']}/endpoint/{world['theirs']['id']}").json()["disabled"] is False


def test_an_action_without_the_csrf_token_is_refused(world):
    page = signed_in(world)
    base, shop, ok = world["url"], world["shop"], world["ok"]
    action = f"{base}/dashboard/app/{shop['id']}/endpoint/{ok['id']}/disable"
    for form in [{}, {"csrf": "guessed"}]:
        answer = page.request.post(action, form=form)
        assert answer.status == 403, form
        assert "CSRF" in answer.text()
    # A page of another origin posting the form, in the signed-in browser.
    world["merchant"].attack_target = action
    page.goto(f"{world['merchant'].url}/attack")
    page.click("#go")
    page.wait_for_load_state()
    assert "CSRF" in page.content() or "/dashboard/sign-in" in page.url
    endpoint = world["api"].get(f"/api/v1/app/{shop['id']}/endpoint/{ok['id']}").json()
    assert endpoint["disabled"] is False, "nothing was done"
    # With the page's own token it works.
    page.goto(f"{base}/dashboard/app/{shop['id']}/endpoint/{ok['id']}")
    page.locator("button", has_text="Disable").click()
    expect(page.locator(".notice")).to_contain_text("Disabled")
    assert world["api"].get(f"/api/v1/app/{shop['id']}/endpoint/{ok['id']}").json()["disabled"] is True
    page.locator("button", has_text="Enable").click()
    expect(page.locator(".notice")).to_contain_text("Enabled")


def test_a_portal_link_signs_a_merchant_in_once(world):
    admin = signed_in(world)
    shop = world["shop"]
    admin.goto(f"{world['url']}/dashboard/app/{shop['id']}")
    admin.locator("button", has_text="Make a portal link").click()
    link = admin.locator("#portal-link").inner_text().strip()
    assert link.startswith(f"{world['url']}/dashboard/portal?code=")

    merchant = world["browser"].new_context().new_page()
    merchant.goto(link)
    merchant.locator("button", has_text="Continue").click()
    expect(merchant).to_have_url(f"{world['url']}/dashboard/app/{shop['id']}")
    expect(merchant.locator("#endpoints")).to_contain_text(world["flaky"]["url"])
    assert merchant.goto(f"{world['url']}/dashboard/app/{world['other']['id']}").status == 404

    again = world["browser"].new_context().new_page()
    again.goto(link)
    again.locator("button", has_text="Continue").click()
    expect(again.locator(".error")).to_contain_text("already used")
    assert again.goto(f"{world['url']}/dashboard/app/{shop['id']}").url.endswith("/dashboard/sign-in")

    # The admin ends the application's portal sessions: the merchant's next page is the
    # sign-in, and the admin's own session goes on.
    admin.goto(f"{world['url']}/dashboard/app/{shop['id']}")
    admin.locator("button", has_text="End portal sessions").click()
    expect(admin.locator(".notice")).to_contain_text("has ended")
    assert merchant.goto(f"{world['url']}/dashboard/app/{shop['id']}").url.endswith("/dashboard/sign-in")
    expect(admin.locator("#endpoints")).to_contain_text(world["flaky"]["url"])


def test_signing_out_ends_the_session(world):
    page = signed_in(world)
    cookie = next(c for c in page.context.cookies() if c["name"] == "hookline_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.locator("button", has_text="Sign out").click()
    expect(page).to_have_url(f"{world['url']}/dashboard/sign-in")
    # The old cookie, replayed, no longer signs anyone in: the session is gone from the store.
    replay = httpx.get(f"{world['url']}/dashboard", cookies={"hookline_session": cookie["value"]})
    assert replay.status_code == 303 and replay.headers["location"] == "/dashboard/sign-in"
    wrong = signed_in(world, "not-a-token")
    expect(wrong.locator(".error")).to_contain_text("not valid")


def test_skipped_messages_are_recovered_and_a_test_event_is_sent(world):
    api, shop, merchant = world["api"], world["shop"], world["merchant"]
    late = api.post(
        f"/api/v1/app/{shop['id']}/endpoint", json={"url": f"{merchant.url}/late", "disabled": True}
    ).json()
    api.post(f"/api/v1/app/{shop['id']}/msg", json={"eventType": "payment.expired", "payload": {"late": True}})
    page = signed_in(world)
    page.goto(f"{world['url']}/dashboard/app/{shop['id']}/endpoint/{late['id']}")
    page.locator("button", has_text="Enable").click()
    expect(page.locator(".notice")).to_contain_text("Enabled")
    assert merchant.received.get("/late", 0) == 0, "skipped while disabled"
    hour_ago = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 3600))
    page.fill("input[name=since]", hour_ago)
    page.locator("button", has_text="Recover").click()
    expect(page.locator(".notice")).to_contain_text("Recovery started")
    wait_until(lambda: merchant.received.get("/late", 0) >= 1, what="the skipped message to be delivered")

    page.locator("button", has_text="Send test event").click()
    expect(page.locator(".notice")).to_contain_text("Test message sent")
    wait_until(lambda: merchant.received.get("/late", 0) >= 2, what="the test message")
    sent = api.get(f"/api/v1/app/{shop['id']}/endpoint/{late['id']}/msg").json()["data"]
    assert any(m["eventType"] == "hookline.test" for m in sent)
    # Only this endpoint got it.
    flaky_msgs = api.get(f"/api/v1/app/{shop['id']}/endpoint/{world['flaky']['id']}/msg").json()["data"]
    assert not any(m["eventType"] == "hookline.test" for m in flaky_msgs)

    # The test message's page lists its one delivery; resending it to every endpoint works.
    test_msg = next(m for m in sent if m["eventType"] == "hookline.test")
    page.goto(f"{world['url']}/dashboard/app/{shop['id']}/msg/{test_msg['id']}")
    expect(page.locator("#deliveries")).to_contain_text(late["url"])
    expect(page.locator("#deliveries tbody tr")).to_have_count(1)
    page.locator("button", has_text="Resend to every endpoint").click()
    expect(page.locator(".notice")).to_contain_text("Resent")
    wait_until(lambda: merchant.received.get("/late", 0) >= 3, what="the resent test message")
    # Messages filtered by endpoint and status.
    page.goto(f"{world['url']}/dashboard/app/{shop['id']}/msg?endpoint={late['id']}&status=0")
    expect(page.locator("#messages")).to_contain_text(test_msg["id"])
    expect(page.locator("#messages .badge").first).to_contain_text("success")


def test_pages_fit_a_phone(world):
    page = signed_in(world, viewport=(390, 844))
    shop = world["shop"]
    for path in [
        "/dashboard",
        "/dashboard/app",
        f"/dashboard/app/{shop['id']}",
        f"/dashboard/app/{shop['id']}/endpoint/{world['flaky']['id']}",
        f"/dashboard/app/{shop['id']}/msg",
        f"/dashboard/app/{shop['id']}/msg/{world['xss_msg']['id']}",
        "/dashboard/source",
    ]:
        assert page.goto(world["url"] + path).status == 200, path
        # Nothing sticks out sideways: wide tables scroll inside their own box.
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} is {overflow} px wider than the phone"


def test_inbound_pages_show_refused_requests_and_their_reasons(world):
    api, shop = world["api"], world["shop"]
    # Named uniquely: on PostgreSQL the other Python tests' sources share the database.
    name = f"Stripe live {secrets.token_hex(4)}"
    source = api.post(
        "/api/v1/source",
        json={"name": name, "preset": "stripe", "secrets": ["whsec_dashboardtest"], "appId": shop["id"]},
    ).json()
    forged = httpx.post(
        f"{world['url']}/in/{source['id']}",
        content=b'{"id":"evt_1","type":"charge.succeeded"}',
        headers={"Stripe-Signature": f"t={int(time.time())},v1={'0' * 64}", "Content-Type": "application/json"},
    )
    assert forged.status_code == 401, forged.text
    page = signed_in(world)
    page.goto(f"{world['url']}/dashboard/source/{source['id']}")
    rejections = page.locator("#rejections tbody tr")
    expect(rejections).to_have_count(1)
    expect(rejections.first).to_contain_text(forged.json()["code"])
    page.goto(f"{world['url']}/dashboard")
    row = page.locator("#inbound tr", has_text=name)
    expect(row.locator("td").nth(2)).to_have_text("1")
    # A notice is one of the dashboard's own lines, never text from the link.
    page.goto(f"{world['url']}/dashboard/app/{shop['id']}?done=Your+account+is+locked")
    expect(page.locator(".notice")).to_have_count(0)
