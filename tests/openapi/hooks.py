"""Schemathesis hooks for Hookline's OpenAPI run.

An `Idempotency-Key` names one request: the same key sent with a different request is
answered 422 by design (the IETF draft; `an_idempotency_key_names_one_request` in the server
suite tests it). A generator that draws keys at random repeats them across unrelated requests,
and would be testing key reuse where it means to test one request. So every key that is
well-formed is made unique before the request goes out; malformed ones are sent as drawn, so
the server's refusal of them is still checked.
"""
import re
import uuid

import schemathesis

WELL_FORMED = re.compile(r"[\x21-\x7e]{1,255}")


def _unique(headers):
    if not headers:
        return
    for name in list(headers):
        if name.lower() == "idempotency-key" and isinstance(headers[name], str) and WELL_FORMED.fullmatch(headers[name]):
            headers[name] = f"st-{uuid.uuid4().hex}"


@schemathesis.hook
def before_call(context, case, kwargs):
    _unique(case.headers)
    _unique(kwargs.get("headers"))
