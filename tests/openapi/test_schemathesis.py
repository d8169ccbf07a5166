"""The OpenAPI document tells the truth: schemathesis, with every check, against a real
`hookline serve --dev` for a bounded time, finds no request the server answers differently
from what the document says."""
import os
import subprocess
import sys
from pathlib import Path

from hookline_process import start_hookline

HERE = Path(__file__).resolve().parent
TOKEN = "openapi-test-token"
# Seconds of generated requests; the whole run takes a little longer.
MAX_TIME = os.environ.get("HOOKLINE_SCHEMATHESIS_SECONDS", "120")


def test_schemathesis_finds_no_disagreement():
    server, url, data_dir = start_hookline(TOKEN, log_level="error")
    try:
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
