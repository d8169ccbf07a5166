"""Acceptance: the official Svix Python SDK drives Hookline unchanged, and deliveries verify
with the official Standard Webhooks (and Stripe) libraries."""
import datetime
import json
import uuid

import httpx
import pytest
import stripe
from standardwebhooks import Webhook
from svix.api import (
    ApplicationIn,
    ApplicationPatch,
    EndpointHeadersIn,
    EndpointHeadersPatchIn,
    EndpointIn,
    EndpointPatch,
    EndpointSecretRotateIn,
    EndpointUpsertIn,
    EventTypeIn,
    EventTypePatch,
    MessageIn,
    OperationalWebhookEndpointHeadersIn,
    OperationalWebhookEndpointIn,
    OperationalWebhookEndpointSecretIn,
    OperationalWebhookEndpointUpsertIn,
    RecoverIn,
    Svix,
    SvixOptions,
)
from svix.api.message import MessageCreateOptions, MessageListOptions
from svix.api.message_attempt import MessageAttemptListByMsgOptions
from svix.api.application import ApplicationListOptions
from svix.api.endpoint import EndpointGetAttemptStatsOptions
from svix.api.errors.http_error import HttpError
from svix.api.errors.http_validation_error import HTTPValidationError

from conftest import TOKEN


@pytest.fixture
def svix(hookline_url):
    return Svix(TOKEN, SvixOptions(server_url=hookline_url))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def test_health(svix):
    svix.health.get()


def test_applications_crud_and_pagination(svix):
    uid = unique("merchant")
    app = svix.application.create(ApplicationIn(name="Acme", uid=uid, metadata={"tier": "gold"}))
    assert app.id.startswith("app_") and app.uid == uid and app.metadata == {"tier": "gold"}
    assert svix.application.get(uid).id == app.id
    assert svix.application.get_or_create(ApplicationIn(name="Other", uid=uid)).id == app.id
    assert svix.application.patch(app.id, ApplicationPatch(name="Acme Pay")).name == "Acme Pay"
    assert svix.application.upsert(app.id, ApplicationIn(name="Acme Ltd", uid=uid)).name == "Acme Ltd"
    created = svix.application.upsert(unique("upserted"), ApplicationIn(name="New"))
    assert created.id.startswith("app_")
    for n in range(3):
        svix.application.create(ApplicationIn(name=f"page-{n}"))
    seen, iterator = [], None
    while True:
        page = svix.application.list(ApplicationListOptions(limit=2, iterator=iterator))
        assert len(page.data) <= 2
        seen += [a.id for a in page.data]
        if page.done:
            break
        iterator = page.iterator
    assert app.id in seen and len(seen) == len(set(seen))
    svix.application.delete(app.id)
    with pytest.raises(HttpError) as gone:
        svix.application.get(app.id)
    assert gone.value.status_code == 404 and gone.value.code == "not_found"


def test_event_types(svix):
    name = unique("payment.succeeded")
    created = svix.event_type.create(EventTypeIn(name=name, description="A payment went through"))
    assert created.name == name and created.deprecated is False
    assert svix.event_type.get(name).description == "A payment went through"
    assert svix.event_type.patch(name, EventTypePatch(description="Paid")).description == "Paid"
    assert name in [t.name for t in svix.event_type.list().data]
    svix.event_type.delete(name)
    assert svix.event_type.get(name).archived is True


def test_endpoint_lifecycle(svix):
    app = svix.application.create(ApplicationIn(name="Acme"))
    ep = svix.endpoint.create(app.id, EndpointIn(url="https://merchant.example/hooks", event_types=["payment.succeeded"], uid="main"))
    assert ep.event_types == ["payment.succeeded"] and ep.uid == "main"
    assert svix.endpoint.get(app.id, "main").id == ep.id
    patched = svix.endpoint.patch(app.id, ep.id, EndpointPatch(description="primary", channels=["eu"]))
    assert patched.description == "primary" and patched.channels == ["eu"]
    upserted = svix.endpoint.upsert(app.id, ep.id, EndpointUpsertIn(url="https://merchant.example/v2"))
    assert upserted.url == "https://merchant.example/v2"
    svix.endpoint.set_headers(app.id, ep.id, EndpointHeadersIn(headers={"X-Shop": "7", "Authorization": "Bearer s3cret"}))
    svix.endpoint.patch_headers(app.id, ep.id, EndpointHeadersPatchIn(headers={"X-Extra": "1"}, delete_headers=["X-Shop"]))
    headers = svix.endpoint.get_headers(app.id, ep.id)
    assert headers.headers == {"X-Extra": "1"} and headers.sensitive == ["Authorization"]
    old = svix.endpoint.get_secret(app.id, ep.id).key
    svix.endpoint.rotate_secret(app.id, ep.id, EndpointSecretRotateIn())
    assert svix.endpoint.get_secret(app.id, ep.id).key != old
    assert [e.id for e in svix.endpoint.list(app.id).data] == [ep.id]
    with pytest.raises(HTTPValidationError) as invalid:
        svix.endpoint.create(app.id, EndpointIn(url="not a url"))
    assert invalid.value.status_code == 422 and invalid.value.detail[0].msg
    svix.endpoint.delete(app.id, ep.id)
    with pytest.raises(HttpError):
        svix.endpoint.get(app.id, ep.id)


def test_publish_deliver_verify_and_inspect(svix, receiver):
    app = svix.application.create(ApplicationIn(name="Acme"))
    ep = svix.endpoint.create(app.id, EndpointIn(url=f"{receiver.url}/webhooks"))
    secret = svix.endpoint.get_secret(app.id, ep.id).key
    msg = svix.message.create(app.id, MessageIn(event_type="payment.succeeded", event_id=unique("evt"), payload={"amount": 1000, "currency": "EUR"}))
    path, headers, body = receiver.next()
    assert path == "/webhooks"
    verified = Webhook(secret).verify(body, headers)
    assert verified == {"amount": 1000, "currency": "EUR"}
    assert headers["webhook-id"] == msg.id

    assert svix.message.get(app.id, msg.id).event_type == "payment.succeeded"
    listed = svix.message.list(app.id, MessageListOptions(event_types=["payment.succeeded"]))
    assert [m.id for m in listed.data] == [msg.id]
    # The SDK asks without content by default (`with_content=false`, as Svix's v2 SDKs do):
    # the endpoint's answer is left out unless asked for.
    attempts = wait_for(lambda: svix.message_attempt.list_by_msg(app.id, msg.id).data)
    assert attempts[0].response_status_code == 200 and attempts[0].status == 0 and attempts[0].response == ""
    with_content = MessageAttemptListByMsgOptions(with_content=True)
    assert svix.message_attempt.list_by_msg(app.id, msg.id, with_content).data[0].response == "thanks"
    assert svix.message_attempt.get(app.id, msg.id, attempts[0].id).id == attempts[0].id
    assert [a.id for a in svix.message_attempt.list_by_endpoint(app.id, ep.id).data] == [attempts[0].id]
    destinations = svix.message_attempt.list_attempted_destinations(app.id, msg.id).data
    assert destinations[0].id == ep.id and destinations[0].status == 0
    assert [m.id for m in svix.message_attempt.list_attempted_messages(app.id, ep.id).data] == [msg.id]

    since = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    svix.message_attempt.resend(app.id, msg.id, ep.id)
    _, again, again_body = receiver.next()
    assert again["webhook-id"] == msg.id and Webhook(secret).verify(again_body, again)
    wait_for(lambda: len(svix.message_attempt.list_by_msg(app.id, msg.id).data) == 2 or None)
    stats = svix.endpoint.get_stats(app.id, ep.id)
    assert (stats.success, stats.pending, stats.fail) == (1, 0, 0)
    attempt_stats = svix.endpoint.get_attempt_stats(app.id, ep.id, EndpointGetAttemptStatsOptions(since=since))
    assert (attempt_stats.success, attempt_stats.fail) == (2, 0)
    recovered = svix.endpoint.recover(app.id, ep.id, RecoverIn(since=since))
    assert recovered.status == "finished"
    # An idempotency key reused for another message: the SDK's own 422 error, in Svix's
    # list form (a text `detail` made the SDK raise an AttributeError of its own).
    key = MessageCreateOptions(idempotency_key=unique("key"))
    svix.message.create(app.id, MessageIn(event_type="payment.refunded", payload={"n": 1}), key)
    receiver.next()
    with pytest.raises(HTTPValidationError) as reused:
        svix.message.create(app.id, MessageIn(event_type="payment.refunded", payload={"n": 2}), key)
    assert reused.value.status_code == 422 and "idempotency" in reused.value.detail[0].loc[1]


def test_rotation_signs_with_both_secrets(svix, receiver):
    app = svix.application.create(ApplicationIn(name="Acme"))
    ep = svix.endpoint.create(app.id, EndpointIn(url=receiver.url))
    old = svix.endpoint.get_secret(app.id, ep.id).key
    svix.endpoint.rotate_secret(app.id, ep.id, EndpointSecretRotateIn())
    new = svix.endpoint.get_secret(app.id, ep.id).key
    svix.message.create(app.id, MessageIn(event_type="charge.failed", payload={"id": "ch_1"}))
    _, headers, body = receiver.next()
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)


def test_hookline_extensions_stripe_scheme_and_callback_url(hookline_url, svix, receiver):
    app = svix.application.create(ApplicationIn(name="Checkout"))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    ep = httpx.post(
        f"{hookline_url}/api/v1/app/{app.id}/endpoint",
        headers=auth,
        json={"url": f"{receiver.url}/stripe", "signatureScheme": {"type": "stripe"}, "filterTypes": ["payment_intent.succeeded"]},
    ).json()
    stripe_secret = svix.endpoint.get_secret(app.id, ep["id"]).key
    svix.message.create(app.id, MessageIn(event_type="payment_intent.succeeded", payload={"id": "evt_1", "object": "event", "type": "payment_intent.succeeded"}))
    path, headers, body = receiver.next()
    assert path == "/stripe"
    event = stripe.Webhook.construct_event(body, headers["stripe-signature"], stripe_secret)
    assert event["id"] == "evt_1"

    app_secret = httpx.get(f"{hookline_url}/api/v1/app/{app.id}/secret", headers=auth).json()["key"]
    raw = '{"eventType": "payment.expired", "payload": {"id":"cs_1",  "status":"expired"}, "callbackUrl": "%s/cb/cs_1"}' % receiver.url
    sent = httpx.post(f"{hookline_url}/api/v1/app/{app.id}/msg", headers={**auth, "content-type": "application/json"}, content=raw)
    assert sent.status_code == 202, sent.text
    path, headers, body = receiver.next()
    assert path == "/cb/cs_1" and body == b'{"id":"cs_1",  "status":"expired"}'
    Webhook(app_secret).verify(body, headers)


def test_openapi_document_lists_the_api(hookline_url):
    doc = httpx.get(f"{hookline_url}/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert "/api/v1/app/{app_id}/msg" in doc["paths"]
    schema = doc["components"]["schemas"]["MessageIn"]["properties"]
    assert "callbackUrl" in schema and "deliverAt" in schema


def wait_for(read, timeout: float = 30):
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        found = read()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_operational_webhook_endpoints(svix, receiver):
    ops = svix.operational_webhook.endpoint
    uid = unique("on-call")
    created = ops.create(OperationalWebhookEndpointIn(
        url=receiver.url, uid=uid, description="pager", event_types=["endpoint.created", "endpoint.disabled"],
        metadata={"team": "payments"},
    ))
    assert created.id.startswith("ep_") and created.uid == uid and created.metadata == {"team": "payments"}
    assert ops.get(uid).id == created.id
    assert created.id in [e.id for e in ops.list().data]
    updated = ops.upsert(created.id, OperationalWebhookEndpointUpsertIn(
        url=receiver.url, uid=uid, description="pager duty", throttle_rate=20,
        event_types=["endpoint.created", "endpoint.disabled"],
    ))
    assert (updated.description, updated.throttle_rate) == ("pager duty", 20)
    old_secret = ops.get_secret(created.id).key
    ops.rotate_secret(created.id, OperationalWebhookEndpointSecretIn())
    secret = ops.get_secret(created.id).key
    assert secret.startswith("whsec_") and secret != old_secret
    ops.set_headers(created.id, OperationalWebhookEndpointHeadersIn(headers={"X-Team": "payments"}))
    assert ops.get_headers(created.id).headers == {"X-Team": "payments"}
    with pytest.raises(HTTPValidationError) as refused:
        ops.create(OperationalWebhookEndpointIn(url=receiver.url, event_types=["payment.succeeded"]))
    assert refused.value.detail[0].loc == ["body", "eventTypes"]

    # A merchant's endpoint is created and disabled: the operational endpoint hears both,
    # signed with its own secret.
    app = svix.application.create(ApplicationIn(name="Merchant"))
    merchant = svix.endpoint.create(app.id, EndpointIn(url="https://merchant.example/hooks", uid="main"))
    svix.endpoint.patch(app.id, merchant.id, EndpointPatch(disabled=True))
    seen = {}
    for _ in range(2):
        _, headers, body = receiver.next()
        event = Webhook(secret).verify(body, headers)
        assert headers["x-team"] == "payments"
        seen[event["type"]] = event["data"]
    assert seen["endpoint.created"] == {
        "appId": app.id, "appUid": None, "endpointId": merchant.id, "endpointUid": "main",
    }
    assert seen["endpoint.disabled"]["trigger"] == "manual"
    ops.delete(created.id)
    with pytest.raises(HttpError) as gone:
        ops.get(created.id)
    assert gone.value.status_code == 404
