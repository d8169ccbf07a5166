"""Regenerates the inbound verification vectors.

Run: .venv/bin/python crates/core/tests/vectors/generate_inbound.py > crates/core/tests/vectors/inbound.json
Stripe and Standard Webhooks requests are signed with the providers' own libraries; GitHub's
is the example from GitHub's documentation; Shopify, Recharge and generic HMAC follow their
documented algorithms. Each valid case is followed by cases that must be rejected.
"""
import base64
import hashlib
import hmac
import json
import os
from datetime import datetime, timezone

import stripe
from standardwebhooks import Webhook

NOW = 1_700_000_000
cases = []


def body_key(body):
    """The event id of presets whose signature covers none: the body's SHA-256 (an id in an
    unsigned header would let a replay of the signed body pass as a new event)."""
    return "sha256:" + hashlib.sha256(body.encode()).hexdigest()


def case(name, preset, secrets, headers, body, expect, event_id=None, event_type=None, config=None, now=NOW):
    cases.append({"name": name, "preset": preset, "secrets": secrets, "headers": headers, "body": body,
                  "now": now, "config": config or {}, "expect": expect, "eventId": event_id, "eventType": event_type})


# Stripe, signed by the stripe library's own signer.
stripe_secret = "whsec_test_secret_for_vectors"
stripe_body = '{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWy","object":"event","type":"payment_intent.succeeded"}'
sig = stripe.WebhookSignature._compute_signature(f"{NOW}.{stripe_body}", stripe_secret)
header = f"t={NOW},v1={sig},v0=ignored"
stripe.WebhookSignature.verify_header(stripe_body, header, stripe_secret, tolerance=None)
case("stripe valid", "stripe", [stripe_secret], {"stripe-signature": header}, stripe_body, "ok",
     "evt_1NG8Du2eZvKYlo2CUI79vXWy", "payment_intent.succeeded", now=NOW + 10)
case("stripe rotated: old secret first", "stripe", ["whsec_old", stripe_secret], {"stripe-signature": header}, stripe_body, "ok",
     "evt_1NG8Du2eZvKYlo2CUI79vXWy", "payment_intent.succeeded")
case("stripe tampered body", "stripe", [stripe_secret], {"stripe-signature": header}, stripe_body.replace("succeeded", "failed"), "bad_signature")
case("stripe wrong secret", "stripe", ["whsec_wrong"], {"stripe-signature": header}, stripe_body, "bad_signature")
case("stripe stale", "stripe", [stripe_secret], {"stripe-signature": header}, stripe_body, "stale_timestamp", now=NOW + 301)
# stripe.WebhookSignature.verify_header refuses only `timestamp < now - tolerance`.
case("stripe future timestamp (accepted, as by Stripe's libraries)", "stripe", [stripe_secret], {"stripe-signature": header},
     stripe_body, "ok", "evt_1NG8Du2eZvKYlo2CUI79vXWy", "payment_intent.succeeded", now=NOW - 1000)
case("stripe missing header", "stripe", [stripe_secret], {}, stripe_body, "missing_signature")

# Standard Webhooks, signed by the standardwebhooks library.
sw_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
sw_body = '{"type":"invoice.paid","data":{"id":"in_1"}}'
sw_sig = Webhook(sw_secret).sign("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", datetime.fromtimestamp(NOW, tz=timezone.utc), sw_body)
sw_headers = {"webhook-id": "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", "webhook-timestamp": str(NOW), "webhook-signature": sw_sig}
case("standard-webhooks valid", "standard-webhooks", [sw_secret], sw_headers, sw_body, "ok", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", "invoice.paid")
svix_headers = {k.replace("webhook-", "svix-"): v for k, v in sw_headers.items()}
case("standard-webhooks svix headers", "standard-webhooks", [sw_secret], svix_headers, sw_body, "ok", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", "invoice.paid")
case("standard-webhooks tampered", "standard-webhooks", [sw_secret], sw_headers, sw_body + " ", "bad_signature")
case("standard-webhooks future", "standard-webhooks", [sw_secret], sw_headers, sw_body, "stale_timestamp", now=NOW - 301)
case("standard-webhooks stale", "standard-webhooks", [sw_secret], sw_headers, sw_body, "stale_timestamp", now=NOW + 301)
# A sender's secret as the reference library reads it: whsec_ optional, a key of any length. Given
# without its base64 padding too, which the library wants and we take.
sw_short_key = base64.b64encode(b"sixteen-byte-key").decode()
assert sw_short_key.endswith("=")
sw_short_sig = Webhook(sw_short_key).sign("msg_short", datetime.fromtimestamp(NOW, tz=timezone.utc), sw_body)
sw_short_headers = {"webhook-id": "msg_short", "webhook-timestamp": str(NOW), "webhook-signature": sw_short_sig}
case("standard-webhooks 16-byte key without whsec_", "standard-webhooks", [sw_short_key], sw_short_headers, sw_body, "ok",
     "msg_short", "invoice.paid")
case("standard-webhooks key without its padding", "standard-webhooks", ["whsec_" + sw_short_key.rstrip("=")], sw_short_headers,
     sw_body, "ok", "msg_short", "invoice.paid")

# GitHub's documented example.
gh_headers = {"x-hub-signature-256": "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
              "x-github-delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958", "x-github-event": "push"}
case("github documented example", "github", ["It's a Secret to Everybody"], gh_headers, "Hello, World!", "ok",
     body_key("Hello, World!"), "push")
case("github replayed under another delivery id: the same event", "github", ["It's a Secret to Everybody"],
     {**gh_headers, "x-github-delivery": "00000000-0000-0000-0000-000000000000"}, "Hello, World!", "ok",
     body_key("Hello, World!"), "push")
case("github wrong secret", "github", ["It's a secret to everybody"], gh_headers, "Hello, World!", "bad_signature")
case("github no prefix", "github", ["It's a Secret to Everybody"], {**gh_headers, "x-hub-signature-256": gh_headers["x-hub-signature-256"][7:]}, "Hello, World!", "malformed_signature")

# Shopify: base64 HMAC-SHA256 of the body.
shop_secret, shop_body = "shpss_vectors", '{"id":820982911946154508,"email":"jon@example.com"}'
shop_sig = base64.b64encode(hmac.new(shop_secret.encode(), shop_body.encode(), hashlib.sha256).digest()).decode()
shop_headers = {"x-shopify-hmac-sha256": shop_sig, "x-shopify-event-id": "98880550-7158-44d4-b7cd-2c97c8a091b5", "x-shopify-topic": "orders/create"}
case("shopify valid", "shopify", [shop_secret], shop_headers, shop_body, "ok", body_key(shop_body), "orders/create")
case("shopify tampered", "shopify", [shop_secret], shop_headers, shop_body.replace("jon", "ann"), "bad_signature")

# Recharge: hex SHA-256 of client secret + body.
rc_secret, rc_body = "rc_client_secret", '{"subscription":{"id":42}}'
rc_sig = hashlib.sha256((rc_secret + rc_body).encode()).hexdigest()
rc_headers = {"x-recharge-hmac-sha256": rc_sig, "x-recharge-topic": "subscription/created"}
case("recharge valid", "recharge", [rc_secret], rc_headers, rc_body, "ok", body_key(rc_body), "subscription/created")
case("recharge event id from config", "recharge", [rc_secret], rc_headers, rc_body, "ok", "42", "subscription/created",
     config={"eventIdPointer": "/subscription/id"})
case("recharge hmac is not accepted", "recharge", [rc_secret],
     {**rc_headers, "x-recharge-hmac-sha256": hmac.new(rc_secret.encode(), rc_body.encode(), hashlib.sha256).hexdigest()}, rc_body, "bad_signature")

# Generic HMAC: timestamped template, SHA-512, base64, prefix.
gen_secret, gen_body = "generic-secret", '{"event":"paid","ref":"r1"}'
signed = f"{NOW}.{gen_body}".encode()
gen_sig = "sha512=" + base64.b64encode(hmac.new(gen_secret.encode(), signed, hashlib.sha512).digest()).decode()
gen_config = {"signatureHeader": "X-Acme-Signature", "signaturePrefix": "sha512=", "encoding": "base64", "algorithm": "sha512",
              "timestampHeader": "X-Acme-Timestamp", "template": "{timestamp}.{body}", "eventIdPointer": "/ref", "eventTypePointer": "/event"}
gen_headers = {"x-acme-signature": gen_sig, "x-acme-timestamp": str(NOW)}
case("hmac generic valid", "hmac", [gen_secret], gen_headers, gen_body, "ok", "r1", "paid", config=gen_config)
case("hmac generic stale", "hmac", [gen_secret], gen_headers, gen_body, "stale_timestamp", config=gen_config, now=NOW + 301)
plain_sig = hmac.new(gen_secret.encode(), gen_body.encode(), hashlib.sha256).hexdigest()
# No event id configured: keyed by the body, as the presets whose signature covers no id.
case("hmac generic defaults", "hmac", [gen_secret], {"x-signature": plain_sig}, gen_body, "ok", body_key(gen_body))

# Every valid case, varied the three ways a provider setup goes wrong or rotates.
for valid in [c for c in cases if c["expect"] == "ok"]:
    other = "whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=" if valid["preset"] in ("stripe", "standard-webhooks") else "not-the-secret"
    cases.append({**valid, "name": valid["name"] + " / tampered body", "body": valid["body"] + " ", "expect": "bad_signature",
                  "eventId": None, "eventType": None})
    cases.append({**valid, "name": valid["name"] + " / wrong secret", "secrets": [other], "expect": "bad_signature",
                  "eventId": None, "eventType": None})
    cases.append({**valid, "name": valid["name"] + " / rotation, both secrets active", "secrets": [other] + valid["secrets"]})

# The payment providers' vectors, proven by their official libraries (generate_payments.py).
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "payments.json"), encoding="utf-8") as f:
    cases += json.load(f)

print(json.dumps(cases, indent=2, ensure_ascii=False))
