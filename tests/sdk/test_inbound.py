"""Inbound sources against the real binary, signed by the providers' own libraries."""
import json
import time
import uuid
from datetime import datetime, timezone

import httpx
import stripe
from standardwebhooks import Webhook

from conftest import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def setup(hookline_url, receiver, preset, secrets, event_types=None):
    app = httpx.post(f"{hookline_url}/api/v1/app", headers=AUTH, json={"name": "merchant"}).json()
    ep = httpx.post(f"{hookline_url}/api/v1/app/{app['id']}/endpoint", headers=AUTH, json={"url": receiver.url}).json()
    body = {"name": preset, "preset": preset, "secrets": secrets, "appId": app["id"]}
    if event_types:
        body["eventTypes"] = event_types
    source = httpx.post(f"{hookline_url}/api/v1/source", headers=AUTH, json=body).json()
    secret = httpx.get(f"{hookline_url}/api/v1/app/{app['id']}/endpoint/{ep['id']}/secret", headers=AUTH).json()["key"]
    return source, secret


def test_stripe_signed_by_the_stripe_library(hookline_url, receiver):
    source, endpoint_secret = setup(hookline_url, receiver, "stripe", ["whsec_inbound_test"])
    event_id = f"evt_{uuid.uuid4().hex[:16]}"
    payload = json.dumps({"id": event_id, "object": "event", "type": "payment_intent.succeeded"}, separators=(",", ":"))
    now = int(time.time())
    signature = stripe.WebhookSignature._compute_signature(f"{now}.{payload}", "whsec_inbound_test")
    headers = {"Stripe-Signature": f"t={now},v1={signature}", "Content-Type": "application/json"}
    url = f"{hookline_url}/in/{source['id']}"
    first = httpx.post(url, content=payload, headers=headers)
    assert first.status_code == 200 and first.json()["status"] == "accepted", first.text
    _, got, body = receiver.next()
    assert body.decode() == payload
    # The merchant's app verifies Hookline's own signature, and can re-check Stripe's.
    Webhook(endpoint_secret).verify(body, got)
    stripe.Webhook.construct_event(body, got["x-hookline-forwarded-stripe-signature"], "whsec_inbound_test")
    again = httpx.post(url, content=payload, headers=headers)
    assert again.json() == {"status": "duplicate", "messageId": first.json()["messageId"]}
    tampered = httpx.post(url, content=payload.replace("succeeded", "failed"), headers=headers)
    assert tampered.status_code == 401 and tampered.json()["code"] == "bad_signature"
    stale_ts = now - 3600
    stale_sig = stripe.WebhookSignature._compute_signature(f"{stale_ts}.{payload}", "whsec_inbound_test")
    stale = httpx.post(url, content=payload, headers={"Stripe-Signature": f"t={stale_ts},v1={stale_sig}"})
    assert stale.status_code == 401 and stale.json()["code"] == "stale_timestamp"


def test_standard_webhooks_signed_by_its_library(hookline_url, receiver):
    provider_secret = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"
    source, endpoint_secret = setup(hookline_url, receiver, "standard-webhooks", [provider_secret], ["invoice.paid"])
    payload = '{"type":"invoice.paid","data":{"id":"in_1"}}'
    msg_id = f"msg_{uuid.uuid4().hex}"
    now = datetime.now(timezone.utc)
    signature = Webhook(provider_secret).sign(msg_id, now, payload)
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": signature}
    accepted = httpx.post(f"{hookline_url}/in/{source['id']}/extra/path", content=payload, headers=headers)
    assert accepted.status_code == 200 and accepted.json()["status"] == "accepted", accepted.text
    _, got, body = receiver.next()
    assert body.decode() == payload
    Webhook(endpoint_secret).verify(body, got)
    assert got["x-hookline-original-path"] == f"/in/{source['id']}/extra/path"
    other_type = '{"type":"invoice.created"}'
    signature = Webhook(provider_secret).sign(msg_id + "x", now, other_type)
    filtered = httpx.post(f"{hookline_url}/in/{source['id']}", content=other_type,
                          headers={**headers, "webhook-id": msg_id + "x", "webhook-signature": signature})
    assert filtered.json()["status"] == "filtered"
