"""The README's walkthroughs, run as printed: every shell block of "Five minutes" and of
"Receiving Stripe webhooks", command by command, against a real `hookline serve`, with each
`# ...` line under a command checked as that command's expected output.

Three things differ from a person at a terminal, and only these:
- `cargo run --release --` is the binary the test suite built (`HOOKLINE_BIN`), so the test
  needs no release build (that `cargo run` picks that binary is checked on its own, from
  cargo's metadata); it runs in a scratch directory, so `./hookline-data` is fresh;
- a placeholder the README asks the reader to fill in (`whsec_...`) is replaced by the value
  an earlier command printed where the README shows that placeholder;
- a command whose expected output depends on a delivery that has not happened yet is asked
  again for a few seconds, as a person would look again;
- the queue sections' Redis is a private one on a free port (the README's 6379 is the
  machine's, which other runs share): its address in the config file, the endpoint URL and
  `redis-cli`'s commands is rewritten to it.
The README's ports (8071, 9000) are used as printed; the test says so if one is taken.
"""
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BINARY = Path(os.environ.get("HOOKLINE_BIN", ROOT / "target/debug/hookline")).resolve()
PLACEHOLDER = re.compile(r"\b([a-z]+_)\.\.\.")
LONG_RUNNING = ("cargo run", "scripts/receiver.py")


def section(heading: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def commands(markdown: str) -> list[tuple[str, list[str]]]:
    """Each shell command of the section's ```sh blocks (continuation lines joined), with the
    `# ` comment lines printed under it, which show its output."""
    out: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```sh\n(.*?)```", markdown, re.S):
        pending = ""
        for line in block.splitlines():
            stripped = line.strip()
            if stripped.startswith("# ") and not pending:
                out[-1][1].append(stripped[2:])
            elif stripped.endswith("\\"):
                pending += stripped[:-1] + " "
            elif stripped:
                out.append((pending + stripped, []))
                pending = ""
    return out


def expected_pattern(shown: str) -> re.Pattern:
    """The README's `...` is "anything"; `whsec_...` is a value to remember (and, shown again
    on the same line, the same value)."""
    pattern, position, named = "", 0, set()
    for match in re.finditer(r"([a-z]+_)?\.\.\.", shown):
        pattern += re.escape(shown[position : match.start()])
        if match.group(1):
            name = match.group(1)[:-1]
            # The same placeholder twice on a line is the same value twice.
            pattern += f"(?P={name})" if name in named else f"(?P<{name}>{re.escape(match.group(1))}[A-Za-z0-9+/=_-]+)"
            named.add(name)
        else:
            pattern += ".*?"
        position = match.end()
    return re.compile(pattern + re.escape(shown[position:]), re.S)


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


class Terminal:
    """Runs the README's commands: exports carry over from one command to the next, as in one
    shell; long-running commands (the server, the receiver) stay in the background."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.exports: list[str] = []
        self.values: dict[str, str] = {}
        self.background: list[tuple[subprocess.Popen, Path]] = []

    def fill_in(self, command: str) -> str:
        command = command.replace("cargo run --release --", f'"{BINARY}"')
        return PLACEHOLDER.sub(lambda m: self.values.get(m.group(1)[:-1], m.group(0)), command)

    def start(self, command: str) -> Path:
        log = self.workdir / f"background-{len(self.background)}.log"
        script = "\n".join(self.exports + [self.fill_in(command)])
        # The server keeps its data in ./hookline-data: a scratch directory; the receiver is
        # started from the repository, as the README's relative path says.
        cwd = self.workdir if "cargo run" in command else ROOT
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        process = subprocess.Popen(
            ["bash", "-c", script], cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )
        self.background.append((process, log))
        return log

    def run(self, command: str) -> str:
        if command.startswith("export "):
            self.exports.append(command)
        script = "\n".join(self.exports + [self.fill_in(command)])
        # curl's own config (not the command) makes an HTTP error a failed command, as a
        # person would see the error printed.
        env = dict(os.environ, CURL_HOME=str(self.workdir))
        result = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30, env=env)
        assert result.returncode == 0, f"{command!r} failed: {result.stdout} {result.stderr}"
        return result.stdout

    def check(self, command: str, shown: list[str]) -> None:
        pattern = expected_pattern("\n".join(shown))
        deadline = time.time() + 15
        while True:
            output = self.run(command).strip()
            match = pattern.fullmatch(output)
            if match or time.time() > deadline:
                break
            time.sleep(0.3)
        assert match, f"{command!r} printed {output!r}; the README shows {shown!r}"
        self.values.update({k: v for k, v in match.groupdict().items() if v})

    def stop(self) -> None:
        for process, _ in self.background:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=30)

    def stop_server(self) -> None:
        """Stops the first long-running command, the server (as Ctrl-C would)."""
        process, _ = self.background[0]
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        wait_for("the server to let go of port 8071", lambda: port_is_free(8071))


def wait_for(what: str, ready, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while not ready():
        assert time.time() < deadline, f"{what} did not happen within {seconds} s"
        time.sleep(0.1)


@pytest.fixture
def terminal():
    for port in (8071, 9000):
        assert port_is_free(port), f"port {port} is taken; the README's walkthrough needs it"
    with tempfile.TemporaryDirectory(prefix="hookline-readme-") as workdir:
        (Path(workdir) / ".curlrc").write_text("fail-with-body\n")
        t = Terminal(Path(workdir))
        yield t
        t.stop()


def run_all(terminal: Terminal, steps: list[tuple[str, list[str]]]) -> list[Path]:
    """Runs the steps in order; returns the logs of the long-running ones."""
    logs = []
    for command, shown in steps:
        if any(marker in command for marker in LONG_RUNNING):
            log = terminal.start(command)
            logs.append(log)
            port = 9000 if "receiver.py" in command else 8071
            process = terminal.background[-1][0]
            wait_for(f"{command!r} listening ({log.read_text()})", lambda: process.poll() is None and not port_is_free(port))
            assert process.poll() is None, f"{command!r} exited: {log.read_text()}"
        elif shown:
            terminal.check(command, shown)
        else:
            terminal.run(command)
    return logs


def test_cargo_run_runs_hookline():
    """`cargo run` with no `--bin` needs exactly one binary among the workspace's default
    members; with two it refuses, and the README's first command fails."""
    metadata = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT, capture_output=True, check=True
        ).stdout
    )
    defaults = set(metadata["workspace_default_members"])
    binaries = [
        target["name"]
        for package in metadata["packages"]
        if package["id"] in defaults
        for target in package["targets"]
        if "bin" in target["kind"]
    ]
    assert binaries == ["hookline"], binaries


def statistics_steps(of_sources: bool) -> list[tuple[str, list[str]]]:
    """The Endpoint health section's commands: those about the acme endpoint, or those about
    the stripe source (each walkthrough makes one of them)."""
    steps = commands(section("Endpoint health"))
    chosen = [step for step in steps if ("/stats/source/" in step[0]) == of_sources]
    assert chosen, steps
    return chosen


@pytest.fixture
def redis_port():
    """A private Redis for the queue sections, with nothing in it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(f"redis-server on {port}", lambda: not port_is_free(port))
    yield port
    process.terminate()
    process.wait(timeout=30)


def on_private_redis(text: str, port: int) -> str:
    return text.replace("127.0.0.1:6379", f"127.0.0.1:{port}").replace("redis-cli ", f"redis-cli -p {port} ")


def queue_steps(terminal: Terminal, port: int) -> list[tuple[str, list[str]]]:
    """The queue sections: the config file's Redis table written to ./hookline.toml, then
    the commands of "Consuming from a queue" (a restart with that file) and "Delivering to a
    queue"."""
    consuming = section("Consuming from a queue")
    table = re.search(r"```toml\n(.*?)```", consuming, re.S).group(1).split("\n\n")[0]
    assert table.startswith("[[ingest.redis]]"), table
    (terminal.workdir / "hookline.toml").write_text(on_private_redis(table, port))
    steps = commands(consuming) + commands(section("Delivering to a queue"))
    assert any("XADD" in c for c, _ in steps) and any("XRANGE" in c for c, _ in steps), steps
    return [(on_private_redis(command, port), shown) for command, shown in steps]


def test_five_minutes_walkthrough_runs_as_printed(terminal, redis_port):
    steps = commands(section("Five minutes"))
    assert any("receiver.py" in c for c, _ in steps) and any("/msg" in c for c, _ in steps), steps
    # Then, on the same server, the Ordering section and the endpoint's statistics.
    ordering = commands(section("Ordering"))
    assert any("orderingKey" in c for c, _ in ordering), ordering
    # And the Dashboard section's portal link for the same application.
    portal = commands(section("Dashboard"))
    assert any("app-portal-access" in c for c, _ in portal), portal
    logs = run_all(terminal, steps + ordering + statistics_steps(of_sources=False) + portal)
    receiver_log = logs[1]
    assert "signature valid: True" in receiver_log.read_text(), receiver_log.read_text()
    assert "signature valid: False" not in receiver_log.read_text()
    assert '"pay_123"' in receiver_log.read_text()
    # Then the queue sections, on the same data: the server restarted with the config file.
    terminal.stop_server()
    run_all(terminal, queue_steps(terminal, redis_port))
    # The message put on the stream reached the receiver, signed like any other.
    wait_for("the queued payment at the receiver", lambda: '"pay_1"' in receiver_log.read_text(), 15)
    assert "signature valid: False" not in receiver_log.read_text()


def test_stripe_walkthrough_runs_as_printed(terminal):
    five = commands(section("Five minutes"))
    server = [step for step in five if "cargo run" in step[0]]
    exports = [step for step in five if step[0].startswith("export ")]
    steps = commands(section("Receiving Stripe webhooks"))
    assert any("/api/v1/source" in c for c, _ in steps), steps
    run_all(terminal, server + exports + steps + statistics_steps(of_sources=True))

