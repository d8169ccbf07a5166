"""Reconciliation asks Stripe's events API what the `stripe` library's own `Event.list`
asks: the same path, query and credentials, checked against one recording server."""
import http.server
import threading
import time
import urllib.parse

import httpx
import pytest
import stripe
from hookline_process import start_hookline

TOKEN = "reconcile-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
KEY = "rk_test_reads_events_only"
WINDOW_MS = 3 * 86_400_000
# The source's event types, which Stripe filters the list by.
TYPES = ["charge.succeeded", "charge.refunded"]


class EventsApi:
    """Records each request to /v1/events and answers one empty page, as Stripe would."""

    def __init__(self):
        self.requests = []
        seen = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                seen.append((url.path, urllib.parse.parse_qs(url.query), self.headers.get("authorization")))
                body = b'{"object": "list", "url": "/v1/events", "has_more": false, "data": []}'
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def events_api():
    api = EventsApi()
    yield api
    api.server.shutdown()


@pytest.fixture(scope="module")
def hookline(events_api):
    process, url, _ = start_hookline(TOKEN, env={
        "HOOKLINE_INBOUND_STRIPE_API_BASE": events_api.url,
        "HOOKLINE_INBOUND_RECONCILE_INTERVAL_MS": "0",
    })
    yield url
    process.terminate()
    process.wait(timeout=30)


def test_reconciliation_asks_what_the_stripe_library_asks(hookline, events_api):
    since_s = int(time.time()) - WINDOW_MS // 1000
    client = stripe.StripeClient(KEY, base_addresses={"api": events_api.url})
    until_s = int(time.time()) - 300
    client.v1.events.list(params={"created": {"gte": since_s, "lte": until_s}, "limit": 100, "types": TYPES})
    library_path, library_query, library_auth = events_api.requests[-1]

    app = httpx.post(f"{hookline}/api/v1/app", headers=AUTH, json={"name": "shop", "uid": "shop"}).json()
    source = httpx.post(f"{hookline}/api/v1/source", headers=AUTH, json={
        "name": "stripe", "preset": "stripe", "secrets": ["whsec_x"], "appId": app["id"], "apiKey": KEY,
        "eventTypes": TYPES,
    }).json()
    run = httpx.post(f"{hookline}/api/v1/source/{source['id']}/reconcile", headers=AUTH, timeout=30).json()
    assert (run["found"], run["errors"]) == (0, []), run
    path, query, auth = events_api.requests[-1]

    assert path == library_path == "/v1/events"
    assert auth == library_auth == f"Bearer {KEY}"
    assert set(query) == set(library_query) == {"created[gte]", "created[lte]", "limit", "types[0]", "types[1]"}
    assert query["limit"] == library_query["limit"] == ["100"]
    assert [query["types[0]"], query["types[1]"]] == [library_query["types[0]"], library_query["types[1]"]] == [[t] for t in TYPES]
    assert abs(int(query["created[lte]"][0]) - int(library_query["created[lte]"][0])) <= 5
    # The window is measured from each one's own clock: a few seconds apart at most.
    assert abs(int(query["created[gte]"][0]) - int(library_query["created[gte]"][0])) <= 5
