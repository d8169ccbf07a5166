"""Fixtures for the Svix SDK acceptance test: a real `hookline serve` and a receiver."""
import http.server
import os
import queue
import socket
import subprocess
import tempfile
import threading
import time

import httpx
import pytest

TOKEN = "sdk-test-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def hookline_url():
    binary = os.environ.get("HOOKLINE_BIN", "target/debug/hookline")
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="hookline-sdk-")
    env = dict(os.environ, HOOKLINE_ADMIN_TOKEN=TOKEN, HOOKLINE_LOG_LEVEL="warn")
    process = subprocess.Popen(
        [binary, "serve", "--dev", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/api/v1/health").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    else:
        process.kill()
        raise RuntimeError("hookline did not become healthy")
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
