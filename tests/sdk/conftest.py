"""Fixtures for the Svix SDK acceptance test: a real `hookline serve` and a receiver."""
import http.server
import queue
import threading

import pytest
from hookline_process import start_hookline

TOKEN = "sdk-test-admin-token"


@pytest.fixture(scope="session")
def hookline_url():
    process, url, _ = start_hookline(TOKEN)
    yield url
    process.terminate()
    process.wait(timeout=30)


class Receiver:
    """An HTTP endpoint that queues every request it gets and answers 200."""

    def __init__(self):
        self.requests: "queue.Queue[tuple[str, dict, bytes]]" = queue.Queue()
        received = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                received.put((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"thanks")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def next(self, timeout: float = 30):
        return self.requests.get(timeout=timeout)


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()
