"""The OpenAPI document tells the truth: schemathesis, with every check, against a real
`hookline serve --dev` for a bounded time, finds no request the server answers differently
from what the document says."""
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TOKEN = "openapi-test-token"
# Seconds of generated requests; the whole run takes a little longer.
MAX_TIME = os.environ.get("HOOKLINE_SCHEMATHESIS_SECONDS", "120")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_schemathesis_finds_no_disagreement():
    binary = os.environ.get("HOOKLINE_BIN", str(ROOT / "target/debug/hookline"))
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="hookline-openapi-")
    env = dict(os.environ, HOOKLINE_ADMIN_TOKEN=TOKEN, HOOKLINE_LOG_LEVEL="error")
    server = subprocess.Popen(
        [binary, "serve", "--dev", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            try:
                if httpx.get(f"{url}/api/v1/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "hookline did not become healthy"
            time.sleep(0.05)
        st = Path(sys.executable).with_name("st")
        run = subprocess.run(
            [
                str(st), "--no-color", "--config-file", str(HERE / "schemathesis.toml"), "run",
                f"{url}/api/v1/openapi.json", "--max-time", MAX_TIME,
                # One worker: hypothesis's lambda descriptions call ast.parse, which CPython
                # 3.11 does not run safely on several threads at once.
                "--workers", "1",
            ],
            env=dict(os.environ, SCHEMATHESIS_HOOKS="hooks", PYTHONPATH=str(HERE), HOOKLINE_ST_TOKEN=TOKEN),
            cwd=HERE,
            capture_output=True,
            text=True,
        )
        report = Path(data_dir) / "schemathesis.txt"
        report.write_text(run.stdout + run.stderr)
        print(run.stdout)
        assert run.returncode == 0, f"schemathesis found disagreements; the whole report is in {report}"
    finally:
        server.terminate()
        server.wait(timeout=30)
