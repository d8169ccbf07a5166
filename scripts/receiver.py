#!/usr/bin/env python3
"""A tiny webhook receiver for trying Hookline locally: prints each delivery and, given the
endpoint's secret, verifies its Standard Webhooks signature. Standard library only.

    python3 scripts/receiver.py 9000 whsec_...
"""
import base64
import hashlib
import hmac
import http.server
import sys


def verify(secret: str, headers, body: bytes) -> bool:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    given = [s.split(",", 1)[1] for s in headers.get("webhook-signature", "").split() if s.startswith("v1,")]
    return any(hmac.compare_digest(expected, g) for g in given)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        print(f"POST {self.path}  webhook-id={self.headers.get('webhook-id')}")
        print(f"  body: {body.decode(errors='replace')}")
        if len(sys.argv) > 2:
            print(f"  signature valid: {verify(sys.argv[2], self.headers, body)}")
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
print(f"listening on http://127.0.0.1:{port}")
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
