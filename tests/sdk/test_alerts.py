"""Alert emails, received by a real SMTP server (aiosmtpd) from the real binary."""
import email
import email.policy
import http.server
import os
import queue
import re
import socket
import sqlite3
import threading
import time

import httpx
import pytest
from aiosmtpd.controller import Controller
from hookline_process import free_port, start_hookline

TOKEN = "alerts-test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GATHER_MS, DIGEST_MS = 1_000, 5_000


class Inbox:
    """An aiosmtpd handler keeping every message it is given."""

    def __init__(self):
        self.messages: "queue.Queue[email.message.EmailMessage]" = queue.Queue()
        self.refused: list[str] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        # Addresses at refused.example have no mailbox: a permanent refusal, as real servers answer.
        if address.endswith("@refused.example"):
            self.refused.append(address)
            return "550 5.1.1 No such user here"
        # Addresses at policy.example are refused once by a relay's policy (an unauthenticated
        # relay, a sender it does not take): the operator's to fix, then taken.
        if address.endswith("@policy.example") and address not in self.refused:
            self.refused.append(address)
            return "550 5.7.1 Relaying denied"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.put(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"

    def next(self, timeout: float = 30) -> email.message.EmailMessage:
        return self.messages.get(timeout=timeout)


class Failing:
    """An endpoint that answers 500 to everything."""

    def __init__(self):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                self.send_response(500)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class Smtp:
    """An SMTP server on a port of its own, which can be stopped and started again there."""

    def __init__(self):
        self.inbox, self.port = Inbox(), free_port()
        self.start()

    def start(self):
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self):
        self.controller.stop()


@pytest.fixture(scope="module")
def smtp():
    server = Smtp()
    yield server
    server.stop()


def alerts_env(smtp) -> dict:
    return {
        "HOOKLINE_ALERTS_SMTP_URL": f"smtp://127.0.0.1:{smtp.port}",
        "HOOKLINE_ALERTS_FROM": "Hookline <alerts@hookline.example>",
        "HOOKLINE_ALERTS_GATHER_MS": str(GATHER_MS),
        "HOOKLINE_ALERTS_DIGEST_MS": str(DIGEST_MS),
    }


@pytest.fixture(scope="module")
def hookline(smtp):
    process, url, _ = start_hookline(TOKEN, env=alerts_env(smtp))
    yield url
    process.terminate()
    process.wait(timeout=30)


def api(url, method, path, body=None):
    response = httpx.request(method, f"{url}/api/v1{path}", headers=AUTH, json=body)
    assert response.status_code < 300, response.text
    return response.json() if response.content else None


def ten_failing_messages(nodes, name, uid, address):
    """An application alerting `address`, whose endpoint `main` answers 500 (4 retries 100 ms
    apart), and ten messages published to it, in turn through each of `nodes` (each node
    sends what it takes). Returns the endpoint's server, the application, the endpoint, and
    when the first message was published."""
    failing = Failing()
    app = api(nodes[0], "POST", "/app", {"name": name, "uid": uid, "alertEmail": address})
    policy = {"delaysMs": [100, 100, 100, 100]}
    body = {"url": failing.url, "uid": "main", "retryPolicy": policy}
    ep = api(nodes[0], "POST", f"/app/{app['id']}/endpoint", body)
    started = time.time()
    for n in range(10):
        node = nodes[n % len(nodes)]
        api(node, "POST", f"/app/{app['id']}/msg", {"eventType": "charge.failed", "payload": {"n": n}})
    return failing, app, ep, started


def test_ten_messages_failing_at_once_make_one_summary(hookline, smtp):
    inbox = smtp.inbox
    failing, app, ep, started = ten_failing_messages([hookline], "Acme", "acme-digest", "ops@acme.example")
    subject = "[Hookline] Deliveries to endpoint main of Acme (acme-digest) are failing"
    summaries = one_summary_a_window(inbox, "ops@acme.example", subject, failing.url, started)
    assert summaries[0] >= GATHER_MS / 1000
    with pytest.raises(queue.Empty):
        inbox.next(timeout=2)
    metrics = httpx.get(f"{hookline}/metrics", headers=AUTH).text
    assert re.search(r'hookline_alert_emails_total\{outcome="sent"\} [1-9]', metrics), metrics
    api(hookline, "DELETE", f"/app/{app['id']}/endpoint/{ep['id']}")


def one_summary_a_window(inbox, to, subject, url, started, messages=10) -> list[float]:
    """Reads the summaries sent to `to` (skipping other tests' emails) until they have told
    that `messages` failed and ran out of retries, each once; returns when each came, in
    seconds after `started`. One summary per window: the first after the gathering pause, a
    second (if some failures came after it) only a whole window later; never one per message
    or per node."""
    failing_count = exhausted_count = 0
    summaries = []
    while exhausted_count < messages:
        message = inbox.next()
        if message["To"] != to:
            continue  # another test's email
        assert message["From"] == "Hookline <alerts@hookline.example>" and message["Subject"] == subject
        body = message.get_content()
        assert url in body
        summaries.append(time.time() - started)
        found = re.search(r"(\d+) messages? failed 4 attempts in a row", body)
        failing_count += int(found.group(1)) if found else 0
        found = re.search(r"(\d+) messages? ran out of retries", body)
        exhausted_count += int(found.group(1)) if found else 0
    assert (failing_count, exhausted_count) == (messages, messages)
    assert len(summaries) <= 2, summaries
    if len(summaries) == 2:
        assert summaries[1] - summaries[0] >= DIGEST_MS / 1000 - 0.5, summaries
    return summaries


@pytest.mark.skipif(not os.environ.get("HOOKLINE_DATABASE_URL"), reason="nodes share a database on PostgreSQL")
def test_two_nodes_failing_one_endpoint_send_one_summary_a_window(hookline, smtp):
    """Each node counts the failures of the deliveries it sends; the counts add up in the
    store, so the owner gets one summary a window with all of them, not one per node."""
    second, second_url, _ = start_hookline(TOKEN, env=alerts_env(smtp))
    try:
        failing, _, _, started = ten_failing_messages([hookline, second_url], "Hooli", "hooli", "ops@hooli.example")
        subject = "[Hookline] Deliveries to endpoint main of Hooli (hooli) are failing"
        one_summary_a_window(smtp.inbox, "ops@hooli.example", subject, failing.url, started)
    finally:
        second.kill()
        second.wait(timeout=30)


def counted_in_store(data_dir) -> tuple[int, int]:
    """The failures an SQLite data dir's digests hold (failing, exhausted)."""
    try:
        with sqlite3.connect(f"file:{data_dir}/hookline.db?mode=ro", uri=True) as db:
            row = db.execute("SELECT sum(failing), sum(exhausted) FROM alert_digests").fetchone()
    except sqlite3.OperationalError:
        return (0, 0)  # no such table (yet)
    return (row[0] or 0, row[1] or 0)


@pytest.mark.skipif(bool(os.environ.get("HOOKLINE_DATABASE_URL")), reason="reads the SQLite data dir")
def test_failures_counted_before_a_crash_are_summed_after_it(smtp):
    """Failure counts are in the store once noted: a summary not yet due when Hookline is
    killed is sent, with every failure, by the process started again on the same data."""
    waiting = dict(alerts_env(smtp), HOOKLINE_ALERTS_GATHER_MS="600000")  # not due before the crash
    process, url, data_dir = start_hookline(TOKEN, env=waiting)
    try:
        failing, _, _, started = ten_failing_messages([url], "Vandelay", "vandelay", "ops@vandelay.example")
        deadline = time.time() + 60
        while counted_in_store(data_dir) != (10, 10):
            assert time.time() < deadline, counted_in_store(data_dir)
            time.sleep(0.05)
        process.kill()
        process.wait(timeout=30)
        process, url, _ = start_hookline(TOKEN, env=alerts_env(smtp), data_dir=data_dir)
        subject = "[Hookline] Deliveries to endpoint main of Vandelay (vandelay) are failing"
        assert len(one_summary_a_window(smtp.inbox, "ops@vandelay.example", subject, failing.url, started)) == 1
    finally:
        process.kill()
        process.wait(timeout=30)


def test_disabling_and_enabling_email_at_once_and_a_down_smtp_server_is_retried(hookline, smtp):
    inbox = smtp.inbox
    # Svix's place for the address: the application's metadata `svix.email`.
    app = api(hookline, "POST", "/app", {"name": "Globex", "metadata": {"svix.email": "pay@globex.example"}})
    # A token in the query string, as many receivers have: emails never show it.
    ep = api(hookline, "POST", f"/app/{app['id']}/endpoint", {"url": "https://globex.example/hooks?token=s3cret"})
    path = f"/app/{app['id']}/endpoint/{ep['id']}"
    api(hookline, "PATCH", path, {"disabled": True})
    disabled = inbox.next()
    assert disabled["To"] == "pay@globex.example"
    assert disabled["Subject"] == f"[Hookline] Endpoint {ep['id']} of Globex ({app['id']}) is disabled"
    assert "It was disabled through the API" in disabled.get_content()
    assert "(https://globex.example/…)" in disabled.get_content() and "s3cret" not in disabled.as_string()

    smtp.stop()
    try:
        api(hookline, "PATCH", path, {"disabled": False})
        time.sleep(1.5)  # at least one try fails while the server is down
    finally:
        smtp.start()
    enabled = inbox.next()
    assert enabled["Subject"] == f"[Hookline] Endpoint {ep['id']} of Globex ({app['id']}) is enabled"
    metrics = httpx.get(f"{hookline}/metrics", headers=AUTH).text
    assert re.search(r'hookline_alert_emails_total\{outcome="failed"\} [1-9]', metrics), metrics


def test_alert_addresses_are_checked(hookline):
    refused = httpx.post(f"{hookline}/api/v1/app", headers=AUTH, json={"name": "x", "alertEmail": "not an address"})
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "alertEmail"]


def test_an_address_refused_for_good_is_not_tried_again(hookline, smtp):
    """A 5xx to an alert address is final: the email is dropped (and counted), not tried
    every few minutes until the outbox pushes it out."""
    app = api(hookline, "POST", "/app", {"name": "Initech", "alertEmail": "gone@refused.example"})
    ep = api(hookline, "POST", f"/app/{app['id']}/endpoint", {"url": "https://initech.example/hooks"})
    api(hookline, "PATCH", f"/app/{app['id']}/endpoint/{ep['id']}", {"disabled": True})
    deadline = time.time() + 30
    while "gone@refused.example" not in smtp.inbox.refused:
        assert time.time() < deadline, "the email was never tried"
        time.sleep(0.1)
    time.sleep(4)  # a retry would come after 1 s, then 2 s
    assert smtp.inbox.refused.count("gone@refused.example") == 1, smtp.inbox.refused
    metrics = httpx.get(f"{hookline}/metrics", headers=AUTH).text
    assert re.search(r'hookline_alert_emails_total\{outcome="dropped"\} [1-9]', metrics), metrics


def test_a_relay_refusing_by_policy_is_tried_again(hookline, smtp):
    """A 550 that is the relay's policy (5.7.1 relaying denied), not a missing mailbox, is
    the operator's to fix: the email is tried again, and sent once the relay takes it. It
    was dropped at the first try, and the owner never told."""
    app = api(hookline, "POST", "/app", {"name": "Umbrella", "alertEmail": "ops@policy.example"})
    ep = api(hookline, "POST", f"/app/{app['id']}/endpoint", {"url": "https://umbrella.example/hooks"})
    api(hookline, "PATCH", f"/app/{app['id']}/endpoint/{ep['id']}", {"disabled": True})
    message = smtp.inbox.next()
    while message["To"] != "ops@policy.example":  # another test's email, sent late
        message = smtp.inbox.next()
    assert message["Subject"].endswith("is disabled"), message["Subject"]
    assert smtp.inbox.refused.count("ops@policy.example") == 1


def failed_sends(url) -> int:
    metrics = httpx.get(f"{url}/metrics", headers=AUTH).text
    found = re.search(r'hookline_alert_emails_total\{outcome="failed"\} (\d+)', metrics)
    return int(found.group(1)) if found else 0


def test_an_email_waiting_for_the_smtp_server_survives_a_crash(smtp):
    """The outbox is in the store: an alert email not sent yet (the SMTP server down) is
    sent after Hookline is killed and started again (it was kept in memory, and lost)."""
    process, url, data_dir = start_hookline(TOKEN, env=alerts_env(smtp))
    try:
        app = api(url, "POST", "/app", {"name": "Umbrella", "alertEmail": "ops@umbrella.example"})
        ep = api(url, "POST", f"/app/{app['id']}/endpoint", {"url": "https://umbrella.example/hooks"})
        smtp.stop()
        try:
            api(url, "PATCH", f"/app/{app['id']}/endpoint/{ep['id']}", {"disabled": True})
            deadline = time.time() + 30
            while failed_sends(url) == 0:  # tried, failed and put back for a retry
                assert time.time() < deadline, "the email was never tried"
                time.sleep(0.05)
            process.kill()
            process.wait(timeout=30)
        finally:
            smtp.start()
        process, url, _ = start_hookline(TOKEN, env=alerts_env(smtp), data_dir=data_dir)
        subject = f"[Hookline] Endpoint {ep['id']} of Umbrella ({app['id']}) is disabled"
        deadline = time.time() + 30
        while (message := smtp.inbox.next(timeout=max(deadline - time.time(), 0.1)))["Subject"] != subject:
            pass  # another test's email
        assert message["To"] == "ops@umbrella.example"
    finally:
        process.kill()
        process.wait(timeout=30)


class Stalling:
    """An SMTP server that takes connections and never says a word: a send waits on it."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.held = []
        threading.Thread(target=self.hold, daemon=True).start()

    def hold(self):
        while True:
            connection, _ = self.listener.accept()
            self.held.append(connection)


def outbox_subjects(data_dir) -> list[str]:
    with sqlite3.connect(f"file:{data_dir}/hookline.db?mode=ro", uri=True) as db:
        return [row[0] for row in db.execute("SELECT subject FROM alert_emails")]


def stalling_env(stalling, timeout_ms) -> dict:
    return {
        "HOOKLINE_ALERTS_SMTP_URL": f"smtp://127.0.0.1:{stalling.port}",
        "HOOKLINE_ALERTS_FROM": "Hookline <alerts@hookline.example>",
        "HOOKLINE_ALERTS_TIMEOUT_MS": str(timeout_ms),
    }


def disabled_during_a_stalled_exchange(url, stalling, name) -> str:
    """An application `name` with two endpoints: the first disabled (its email's exchange
    with the stalling server under way), then the second. Returns the second's subject."""
    domain = f"{name.lower()}.example"
    app = api(url, "POST", "/app", {"name": name, "alertEmail": f"ops@{domain}"})
    first = api(url, "POST", f"/app/{app['id']}/endpoint", {"url": f"https://{domain}/a"})
    second = api(url, "POST", f"/app/{app['id']}/endpoint", {"url": f"https://{domain}/b"})
    api(url, "PATCH", f"/app/{app['id']}/endpoint/{first['id']}", {"disabled": True})
    deadline = time.time() + 30
    while not stalling.held:  # the send loop is in its exchange with the stalling server
        assert time.time() < deadline, "the first email was never tried"
        time.sleep(0.05)
    api(url, "PATCH", f"/app/{app['id']}/endpoint/{second['id']}", {"disabled": True})
    return f"[Hookline] Endpoint {second['id']} of {name} ({app['id']}) is disabled"


@pytest.mark.skipif(bool(os.environ.get("HOOKLINE_DATABASE_URL")), reason="reads the SQLite data dir")
def test_an_email_noted_during_a_slow_smtp_exchange_is_kept_at_shutdown():
    """The send loop moves noted emails to the outbox between SMTP exchanges: an endpoint
    disabled while it waits on a slow server, then a stop, left its email in memory, and the
    owner was never told. The stop puts it in the outbox."""
    stalling = Stalling()
    process, url, data_dir = start_hookline(TOKEN, env=stalling_env(stalling, 60000))
    try:
        subject = disabled_during_a_stalled_exchange(url, stalling, "Hooli")
        time.sleep(0.5)
        process.terminate()
        process.wait(timeout=30)
        assert subject in outbox_subjects(data_dir), outbox_subjects(data_dir)
    finally:
        process.kill()
        process.wait(timeout=30)


@pytest.mark.skipif(bool(os.environ.get("HOOKLINE_DATABASE_URL")), reason="reads the SQLite data dir")
def test_an_email_noted_during_a_slow_smtp_exchange_survives_a_crash():
    """Noted emails reach the outbox while the send loop waits on a slow server, not only
    between its exchanges: killed meanwhile, Hookline lost them, and the owner was never
    told."""
    stalling = Stalling()
    process, url, data_dir = start_hookline(TOKEN, env=stalling_env(stalling, 60000))
    try:
        subject = disabled_during_a_stalled_exchange(url, stalling, "Initech")
        deadline = time.time() + 30
        while subject not in outbox_subjects(data_dir):
            assert time.time() < deadline, f"never in the outbox: {outbox_subjects(data_dir)}"
            time.sleep(0.05)
        process.kill()
        process.wait(timeout=30)
        assert subject in outbox_subjects(data_dir)
    finally:
        process.kill()
        process.wait(timeout=30)


def test_a_server_that_never_answers_is_given_up_on_and_tried_again():
    """One SMTP exchange is bounded as a whole (`alerts.timeout_ms` a step, five steps):
    lettre's own timeout covers the connect only, and a server that took the connection
    and said nothing held every email after it for ever."""
    stalling = Stalling()
    process, url, _ = start_hookline(TOKEN, env=stalling_env(stalling, 200))
    try:
        app = api(url, "POST", "/app", {"name": "Vandelay", "alertEmail": "ops@vandelay.example"})
        ep = api(url, "POST", f"/app/{app['id']}/endpoint", {"url": "https://vandelay.example/hooks"})
        api(url, "PATCH", f"/app/{app['id']}/endpoint/{ep['id']}", {"disabled": True})
        deadline = time.time() + 30
        while failed_sends(url) < 2:  # given up on, then tried again and given up on again
            assert time.time() < deadline, f"{failed_sends(url)} sends given up on: the exchange has no bound"
            time.sleep(0.1)
        assert len(stalling.held) >= 2, "each try is a new connection"
    finally:
        process.kill()
        process.wait(timeout=30)


@pytest.mark.skipif(bool(os.environ.get("HOOKLINE_DATABASE_URL")), reason="writes the SQLite data dir")
def test_a_state_email_the_endpoint_no_longer_has_is_not_sent(smtp):
    """A "disabled" email queued late (its notice retried while the store was down, or
    noted on another node), after the "enabled" that followed it, is the owner's last word
    about an enabled endpoint: checked against the endpoint when it is sent, and dropped.
    Queued here by hand, as the late notice would queue it."""
    process, url, data_dir = start_hookline(TOKEN, env=alerts_env(smtp))
    try:
        app = api(url, "POST", "/app", {"name": "Soylent", "alertEmail": "ops@soylent.example"})
        stale = api(url, "POST", f"/app/{app['id']}/endpoint", {"url": "https://soylent.example/a"})
        other = api(url, "POST", f"/app/{app['id']}/endpoint", {"url": "https://soylent.example/b"})
        stale_subject = f"[Hookline] Endpoint {stale['id']} of Soylent ({app['id']}) is disabled"
        with sqlite3.connect(f"{data_dir}/hookline.db", timeout=10) as db:
            db.execute(
                "INSERT INTO alert_emails (id, app_id, about, to_addr, subject, body, tries, not_before) "
                "VALUES ('aem_000000000stale', ?, ?, 'ops@soylent.example', ?, 'late', 0, 0)",
                (app["id"], stale["id"], stale_subject),
            )
        api(url, "PATCH", f"/app/{app['id']}/endpoint/{other['id']}", {"disabled": True})
        wanted = f"[Hookline] Endpoint {other['id']} of Soylent ({app['id']}) is disabled"
        seen = []
        deadline = time.time() + 30
        while not seen or seen[-1] != wanted:
            seen.append(smtp.inbox.next(timeout=max(deadline - time.time(), 0.1))["Subject"])
        assert stale_subject not in seen, seen
        # And out of the outbox (left there, it was taken again after every hold).
        assert stale_subject not in outbox_subjects(data_dir)
    finally:
        process.kill()
        process.wait(timeout=30)
