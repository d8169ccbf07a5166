"""Starting a real `hookline serve` for the Python tests (the SDK acceptance test and the
schemathesis run): a free port, a scratch data directory, wait until healthy."""
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_hookline(
    token: str, log_level: str = "warn", env: dict | None = None, data_dir: str | None = None
) -> tuple[subprocess.Popen, str, str]:
    """`hookline serve --dev` with `token` as the admin token; its process, URL and data dir
    (a fresh one, or `data_dir` to start again on what a process before left).
    Inherits the environment (so `HOOKLINE_DATABASE_URL` puts it on PostgreSQL), plus `env`."""
    binary = os.environ.get("HOOKLINE_BIN", str(ROOT / "target/debug/hookline"))
    port = free_port()
    data_dir = data_dir or tempfile.mkdtemp(prefix="hookline-py-")
    env = dict(os.environ, HOOKLINE_ADMIN_TOKEN=token, HOOKLINE_LOG_LEVEL=log_level, **(env or {}))
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
                return process, url, data_dir
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("hookline did not become healthy")
