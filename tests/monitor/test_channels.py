"""Alert delivery over real sockets: webhook and apprise channels, and the Dispatcher's retries, order and resume.

Every channel talks to a real server on 127.0.0.1: an http.server receiver that records what it gets (and
can answer 503, or be down and come back on the same port), a socket that accepts but never answers (a
dead channel), and an aiosmtpd SMTP server for e-mail. Waits poll with generous deadlines.
"""

from __future__ import annotations

import base64
import email
import email.policy
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from fleetpulse.broker.netutil import free_port
from fleetpulse.monitor.alerts import DeliveryRecord, Dispatcher
from fleetpulse.monitor.channels import AppriseChannel, Channel, DeliveryError, WebhookChannel, channel_for, redact_url
from fleetpulse.monitor.notification import Event, Notification, Severity
from tests.http_receiver import Receiver

FAST_BACKOFF_S = (0.05, 0.1)
WAIT_S = 10.0  # generous: a loaded CI machine must not turn a slow poll into a failure


def notification(
    event: Event = Event.TRIGGER,
    incident_id: str = "inc-1",
    agent: str = "order-processor",
    severity: Severity = Severity.CRITICAL,
    channels: tuple[str, ...] = (),
) -> Notification:
    return Notification(
        event=event,
        incident_id=incident_id,
        agent=agent,
        state="healthy" if event is Event.RESOLVE else "unreachable",
        severity=severity,
        reason="will: connection lost",
        at=datetime.now(UTC),
        duration_s=42.0 if event is Event.RESOLVE else None,
        channels=channels,
    )


def wait_until(condition: Callable[[], object], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.01)


# -- real servers ------------------------------------------------------------------------------------


@pytest.fixture
def black_hole() -> Iterator[str]:
    """The URL of a socket that accepts connections but never answers: a hung webhook."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook"


class Recorder:
    """The `record` callback: every DeliveryRecord, in the order the dispatcher handed them over."""

    def __init__(self) -> None:
        self._records: list[DeliveryRecord] = []
        self._lock = threading.Lock()

    def __call__(self, record: DeliveryRecord) -> None:
        with self._lock:
            self._records.append(record)

    def history(self, delivery_id: str) -> list[DeliveryRecord]:
        with self._lock:
            return [record for record in self._records if record.id == delivery_id]

    def latest(self, delivery_id: str) -> DeliveryRecord | None:
        history = self.history(delivery_id)
        return history[-1] if history else None

    def delivered(self, delivery_id: str) -> bool:
        latest = self.latest(delivery_id)
        return latest is not None and latest.delivered_at is not None

    def failed_attempts(self, delivery_id: str) -> int:
        return sum(1 for record in self.history(delivery_id) if record.error is not None)


@pytest.fixture
def dispatchers() -> Iterator[Callable[..., Dispatcher]]:
    """Build and start Dispatchers (fast backoff by default) that are stopped after the test."""
    started: list[Dispatcher] = []

    def build(channels: Any, record: Callable[[DeliveryRecord], None], **options: Any) -> Dispatcher:
        options.setdefault("backoff_s", FAST_BACKOFF_S)
        dispatcher = Dispatcher(channels, record, **options).start()
        started.append(dispatcher)
        return dispatcher

    yield build
    for dispatcher in started:
        dispatcher.stop(timeout_s=0.5)


# -- Notification.from_webhook_body ------------------------------------------------------------------


@pytest.mark.parametrize("event", list(Event))
def test_webhook_body_round_trips_to_the_same_notification(event: Event) -> None:
    original = Notification(
        event=event,
        incident_id="inc-7f3a",
        agent="order-processor",
        state="unreachable",
        severity=Severity.WARNING,
        reason="no heartbeat for 95 s",
        at=datetime(2026, 11, 29, 12, 0, 5, 123000, tzinfo=UTC),  # the body keeps milliseconds
        duration_s=95.5 if event is Event.RESOLVE else None,
        impacted=("refund-agent", "mailer"),
        rule="critical-agents",
        labels=(("team", "payments"), ("env", "prod")),
        group="orders",
    )
    body = json.loads(json.dumps(original.webhook_body()))
    assert Notification.from_webhook_body(body) == original


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"event": "exploded"},
        {**notification().webhook_body(), "at": "yesterday"},
        {**notification().webhook_body(), "at": "2026-11-29T12:00:00"},
    ],
    ids=["empty", "unknown event", "bad time", "naive time"],
)
def test_from_webhook_body_rejects_what_is_not_a_body(body: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="not a webhook body"):
        Notification.from_webhook_body(body)


# -- channel names: redaction ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "name", "secret"),
    [
        ("http://127.0.0.1:8080/hook", "http://127.0.0.1:8080/hook", None),
        ("https://ops:hunter2@alerts.example.com/hook", "https://ops:***@alerts.example.com/hook", "hunter2"),
        (
            "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
            "https://hooks.slack.com/services/***/***/***",
            "XXXXXXXXXXXXXXXXXXXXXXXX",
        ),
        ("https://example.com/hook?token=abc123&team=ops#x", "https://example.com/hook?token=***&team=***", "abc123"),
        ("https://hc-ping.com/5b6e2a4f-7c4a-4b67-9bfa-1c7d2f0b1e11", "https://hc-ping.com/***", "5b6e2a4f"),
        (
            "mailto://fleet:hunter2@smtp.example.com:2525?from=fp@example.com&to=ops@example.com",
            "mailto://fleet:***@smtp.example.com:2525/ops@example.com",
            "hunter2",
        ),
        (
            "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#alerts",
            "slack://T...2/A...D/T...Q/#alerts",
            "TIiajkdnlazkcOXrIdevi7FQ",
        ),
        ("json://user:s3cret@127.0.0.1:9/path", "json://user:***@127.0.0.1:9/path", "s3cret"),
        ("ntfy://ntfy.sh/fleet-alerts", "ntfy://ntfy.sh/fleet-alerts", None),
    ],
)
def test_channel_names_never_show_a_secret(url: str, name: str, secret: str | None) -> None:
    channel = channel_for(url)
    assert channel.name == name
    assert isinstance(channel, Channel)
    if secret is not None:
        assert secret not in channel.name
        assert secret not in repr(channel)


def test_an_operator_name_replaces_the_url_and_redact_url_hides_unparseable_text() -> None:
    assert (
        channel_for("https://hooks.slack.com/services/T0/B0/XXXXXXXXXXXXXXXXXXXXXXXX", name="oncall").name == "oncall"
    )
    assert redact_url("not a url with hunter2") == "***"


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("nosuchscheme://user:hunter2@somewhere", "not a URL apprise understands"),
        ("mailto://", "not a URL apprise understands"),
        ("ftp://example.com/hunter2-and-more-secret-text", "not a URL apprise understands"),
        ("json://127.0.0.1:9/a, json://user:hunter2@127.0.0.1:9/b", "one URL per channel"),
    ],
)
def test_a_url_apprise_does_not_understand_fails_at_construction(url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint) as raised:
        AppriseChannel(url)
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize(
    ("url", "complaint"),
    [("ftp://example.com/hook", "not an http"), ("http:///hook", "not an http"), ("http://host:port/x", "port")],
)
def test_webhook_channels_take_only_usable_http_urls(url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        WebhookChannel(url)


# -- WebhookChannel ----------------------------------------------------------------------------------


def test_webhook_posts_the_body_with_its_headers(receiver: Receiver) -> None:
    sent = notification()
    WebhookChannel(receiver.url).send(sent, delivery_id="d-123")
    WebhookChannel(receiver.url).send(sent)

    with_id, without_id = receiver.requests
    assert with_id.path == "/hook"
    assert with_id.json() == sent.webhook_body()
    assert with_id.json()["version"] == 1
    assert with_id.headers["content-type"] == "application/json"
    assert with_id.headers["user-agent"].startswith("fleetpulse/")
    assert with_id.headers["idempotency-key"] == "d-123"
    assert "idempotency-key" not in without_id.headers


@pytest.mark.parametrize(
    ("userinfo", "credentials"),
    [("hook:s3cret-pw", b"hook:s3cret-pw"), ("a%40b:p%3Aw%2F1", b"a@b:p:w/1"), ("token-only", b"token-only:")],
)
def test_user_and_password_in_a_webhook_url_go_out_as_basic_auth(
    receiver: Receiver, userinfo: str, credentials: bytes
) -> None:
    url = receiver.url.replace("http://", f"http://{userinfo}@") + "?key=q-secret"
    channel = WebhookChannel(url)
    channel.send(notification())
    (request,) = receiver.requests
    assert request.headers["authorization"] == "Basic " + base64.b64encode(credentials).decode()
    assert request.path == "/hook?key=q-secret"
    assert "s3cret" not in channel.name and "p%3Aw" not in channel.name and "q-secret" not in channel.name
    receiver.answers.append(401)
    with pytest.raises(DeliveryError) as refused:
        channel.send(notification())
    assert "s3cret" not in str(refused.value) and "q-secret" not in str(refused.value)


@pytest.mark.parametrize("status", [201, 202, 204])
def test_any_2xx_counts_as_delivered(receiver: Receiver, status: int) -> None:
    receiver.answers.append(status)
    WebhookChannel(receiver.url).send(notification())
    assert [request.status for request in receiver.requests] == [status]


@pytest.mark.parametrize(
    ("status", "expected"), [(503, "HTTP 503 from"), (302, "HTTP 302 from"), (404, "HTTP 404 from")]
)
def test_a_non_2xx_answer_is_a_delivery_error(receiver: Receiver, status: int, expected: str) -> None:
    receiver.answers.append(status)
    with pytest.raises(DeliveryError) as raised:
        WebhookChannel(receiver.url).send(notification())
    assert str(raised.value) == f"{expected} {receiver.url}"
    assert len(receiver.requests) == 1  # a redirect is not followed


def test_a_refused_connection_is_a_delivery_error(receiver_down: Receiver) -> None:
    with pytest.raises(DeliveryError, match=f"connection refused: {receiver_down.url}"):
        WebhookChannel(receiver_down.url).send(notification())


def test_a_silent_server_is_a_delivery_error_after_the_timeout(black_hole: str) -> None:
    started = time.monotonic()
    with pytest.raises(DeliveryError, match=f"timed out after 0.3 s: {black_hole}"):
        WebhookChannel(black_hole, timeout_s=0.3).send(notification())
    assert time.monotonic() - started < 3.0


# -- AppriseChannel: a json:// endpoint and real e-mail -----------------------------------------------


def test_apprise_json_channel_posts_to_the_receiver(receiver: Receiver) -> None:
    sent = notification(event=Event.RESOLVE, severity=Severity.CRITICAL)
    AppriseChannel(f"json://127.0.0.1:{receiver.port}/apprise").send(sent)

    (request,) = receiver.requests
    assert request.path == "/apprise"
    posted = request.json()
    assert posted["title"] == sent.summary()
    assert posted["type"] == "success"  # a resolve is good news whatever the incident's severity
    assert "agent: order-processor" in posted["message"]
    assert "event: resolve" in posted["message"]
    assert f"incident: {sent.incident_id}" in posted["message"]


def test_apprise_failure_is_a_delivery_error_that_quotes_apprise(receiver_down: Receiver) -> None:
    channel = AppriseChannel(f"json://127.0.0.1:{receiver_down.port}/apprise")
    with pytest.raises(DeliveryError, match=r"json://127\.0\.0\.1:\d+/apprise: apprise reports failure: .*Connection"):
        channel.send(notification())


class MailBox:
    """aiosmtpd handler keeping every message, with a login that accepts exactly one user."""

    def __init__(self, user: str, password: str) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.logins: list[str] = []
        self._credentials = (user.encode(), password.encode())

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        accepted = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == self._credentials
        if accepted:
            self.logins.append(auth_data.login.decode())
        return AuthResult(success=accepted)


def test_email_through_apprise_reaches_a_local_smtp_server() -> None:
    mailbox = MailBox("fleet", "hunter2")
    port = free_port()
    # Plain SMTP with AUTH on a custom port, as a relay inside a private network is often configured.
    smtp = Controller(
        mailbox, hostname="127.0.0.1", port=port, authenticator=mailbox.authenticate, auth_require_tls=False
    )
    smtp.start()
    try:
        channel = channel_for(
            f"mailto://fleet:hunter2@127.0.0.1:{port}?from=fleetpulse@example.com&to=ops@example.com&mode=insecure"
        )
        channel.send(notification(agent="refund-agent"))
    finally:
        smtp.stop()

    assert "hunter2" not in channel.name
    assert mailbox.logins == ["fleet"]
    (message,) = mailbox.messages
    assert message["To"] == "ops@example.com"
    assert "fleetpulse@example.com" in message["From"]
    assert "refund-agent" in message["Subject"]
    part = message.get_body(preferencelist=("plain", "html"))
    assert part is not None
    text = part.get_content()
    assert "agent: refund-agent" in text
    assert "event: trigger" in text


def test_an_html_email_shows_an_agents_markup_as_text() -> None:
    # body_format=TEXT: apprise escapes the body for the services that render HTML (e-mail here) or Markdown.
    mailbox = MailBox("fleet", "hunter2")
    port = free_port()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=port)
    smtp.start()
    hostile = '<img src=x onerror="alert(1)"><script>alert(2)</script>[x](javascript:alert(3))'
    try:
        channel = channel_for(f"mailto://127.0.0.1:{port}?from=fp@example.com&to=ops@example.com&format=html")
        channel.send(replace(notification(), reason=f"reported: {hostile}"))
    finally:
        smtp.stop()

    (message,) = mailbox.messages
    part = message.get_body(preferencelist=("html",))
    assert part is not None and part.get_content_type() == "text/html"
    body = part.get_content()
    assert "<img" not in body and "<script" not in body
    assert "&lt;img" in body and "&lt;script&gt;alert(2)&lt;/script&gt;" in body


# -- Dispatcher ---------------------------------------------------------------------------------------


def test_a_receiver_that_comes_back_gets_the_alert_once(
    receiver_down: Receiver, dispatchers: Callable[..., Dispatcher]
) -> None:
    recorder = Recorder()
    dispatcher = dispatchers([WebhookChannel(receiver_down.url)], recorder)
    (delivery_id,) = dispatcher.submit(notification())

    wait_until(lambda: recorder.failed_attempts(delivery_id) >= 2, "two failed attempts")
    receiver_down.start()
    wait_until(lambda: recorder.delivered(delivery_id), "delivery after the receiver came back")

    history = recorder.history(delivery_id)
    assert (history[0].attempts, history[0].error, history[0].delivered_at) == (0, None, None)
    failures = [record for record in history if record.error is not None]
    assert all("connection refused" in str(record.error) for record in failures)
    assert [record.attempts for record in history] == list(range(len(history)))
    final = history[-1]
    assert final.attempts > 1
    assert (final.error, final.next_attempt_at, final.gave_up) == (None, None, False)
    (request,) = receiver_down.requests
    assert request.headers["idempotency-key"] == delivery_id
    assert json.loads(final.payload) == request.json()
    assert dispatcher.pending() == 0


def test_a_resolve_never_overtakes_its_trigger_while_other_incidents_proceed(
    receiver: Receiver, dispatchers: Callable[..., Dispatcher]
) -> None:
    failures_left = [4]

    def trigger_of_a_fails(body: Any) -> bool:
        if body["incident_id"] == "A" and failures_left[0] > 0:
            failures_left[0] -= 1
            return True
        return False

    receiver.fail_when = trigger_of_a_fails
    recorder = Recorder()
    dispatcher = dispatchers([WebhookChannel(receiver.url)], recorder)
    dispatcher.submit(notification(Event.TRIGGER, incident_id="A"))
    dispatcher.submit(notification(Event.RESOLVE, incident_id="A"))
    dispatcher.submit(notification(Event.TRIGGER, incident_id="B"))

    wait_until(lambda: len(receiver.delivered()) == 3, "all three delivered")
    delivered = [(body["incident_id"], body["event"]) for body in receiver.delivered()]
    assert delivered == [("B", "trigger"), ("A", "trigger"), ("A", "resolve")]
    sent_for_a = [
        (request.json()["event"], request.status)
        for request in receiver.requests
        if request.json()["incident_id"] == "A"
    ]
    assert sent_for_a == [("trigger", 503)] * 4 + [("trigger", 200), ("resolve", 200)]


def test_a_dead_channel_does_not_delay_a_healthy_one(
    receiver: Receiver, black_hole: str, dispatchers: Callable[..., Dispatcher]
) -> None:
    recorder = Recorder()
    dead = WebhookChannel(black_hole, timeout_s=5.0)
    dispatcher = dispatchers([dead, WebhookChannel(receiver.url)], recorder)
    started = time.monotonic()
    for number in range(3):
        dispatcher.submit(notification(incident_id=f"inc-{number}"))

    wait_until(lambda: len(receiver.delivered()) == 3, "the healthy channel got all three", timeout_s=2.0)
    assert time.monotonic() - started < 2.0
    assert dispatcher.pending() == 3  # the dead channel is still in its first attempt


def test_resume_after_a_restart_delivers_exactly_once_more(
    receiver_down: Receiver, dispatchers: Callable[..., Dispatcher]
) -> None:
    before = Recorder()
    first_run = dispatchers([WebhookChannel(receiver_down.url)], before)
    (delivery_id,) = first_run.submit(notification())
    wait_until(lambda: before.failed_attempts(delivery_id) >= 2, "two failed attempts")
    first_run.stop()
    left = before.latest(delivery_id)
    assert left is not None
    assert (left.delivered_at, left.gave_up) == (None, False)
    assert left.next_attempt_at is not None  # pending: a restart picks it up

    receiver_down.start()
    after = Recorder()
    second_run = dispatchers([WebhookChannel(receiver_down.url)], after)
    second_run.resume([left])
    wait_until(lambda: after.delivered(delivery_id), "the resumed delivery")
    time.sleep(0.3)  # room for a wrong second send to show up

    assert len(receiver_down.requests) == 1
    assert receiver_down.requests[0].headers["idempotency-key"] == delivery_id
    final = after.latest(delivery_id)
    assert final is not None
    assert final.attempts == left.attempts + 1
    assert second_run.pending() == 0


def test_resume_gives_up_rows_it_cannot_send(receiver: Receiver, dispatchers: Callable[..., Dispatcher]) -> None:
    recorder = Recorder()
    dispatcher = dispatchers([WebhookChannel(receiver.url)], recorder)
    sent = notification()
    row = DeliveryRecord(
        id="d-1",
        incident_id=sent.incident_id,
        agent=sent.agent,
        at=sent.at,
        severity=sent.severity.value,
        event=sent.event.value,
        channel="https://gone.example.com/hook",
        payload=json.dumps(sent.webhook_body()),
        attempts=3,
        delivered_at=None,
        error="HTTP 503 from https://gone.example.com/hook",
        next_attempt_at=sent.at,
        gave_up=False,
    )
    delivered_row = replace(row, id="d-2", delivered_at=sent.at, next_attempt_at=None)
    dispatcher.resume([row, delivered_row, replace(row, id="d-3", channel=receiver.url, payload="{}")])

    gone, unreadable = recorder.latest("d-1"), recorder.latest("d-3")
    assert gone is not None and unreadable is not None
    assert gone.gave_up and "no channel named 'https://gone.example.com/hook'" in str(gone.error)
    assert unreadable.gave_up and "unreadable payload" in str(unreadable.error)
    assert recorder.latest("d-2") is None  # delivered rows are left alone
    assert dispatcher.pending() == 0
    assert receiver.requests == []


def test_a_delivery_failing_for_too_long_is_given_up_after_backing_off(
    receiver_down: Receiver, dispatchers: Callable[..., Dispatcher]
) -> None:
    recorder = Recorder()
    backoff_s = (0.02, 0.05, 0.1)
    dispatcher = dispatchers([WebhookChannel(receiver_down.url)], recorder, backoff_s=backoff_s, give_up_after_s=0.5)
    (delivery_id,) = dispatcher.submit(notification())

    wait_until(lambda: (latest := recorder.latest(delivery_id)) is not None and latest.gave_up, "giving up")
    history = recorder.history(delivery_id)
    final = history[-1]
    assert "connection refused" in str(final.error)
    assert (final.delivered_at, final.next_attempt_at) == (None, None)
    assert final.attempts == len(history) - 1 >= 4
    assert dispatcher.pending() == 0
    # After the n-th failure the next attempt is due backoff_s[n - 1] later (the last step but one is cut
    # short at the give-up time, so it is left out).
    retries = history[1:-2]
    for earlier, later in itertools.pairwise(retries):
        assert earlier.next_attempt_at is not None and later.next_attempt_at is not None
        step_s = backoff_s[min(later.attempts - 1, len(backoff_s) - 1)]
        assert later.next_attempt_at - earlier.next_attempt_at >= timedelta(seconds=step_s)


def test_routing_by_name_by_url_and_to_everyone(receiver: Receiver, dispatchers: Callable[..., Dispatcher]) -> None:
    other = Receiver().start()
    try:
        recorder = Recorder()
        dispatcher = dispatchers({"ops": WebhookChannel(receiver.url), "audit": WebhookChannel(other.url)}, recorder)
        apprise_url = f"json://127.0.0.1:{other.port}/from-a-rule"

        assert len(dispatcher.submit(notification(incident_id="everyone"))) == 2
        (ops_id,) = dispatcher.submit(notification(incident_id="ops-only", channels=("ops", "ops")))
        (rule_id,) = dispatcher.submit(notification(incident_id="rule-url", channels=(apprise_url,)))
        assert dispatcher.submit(notification(incident_id="nowhere", channels=("no-such-channel",))) == []

        wait_until(lambda: len(receiver.delivered()) == 2 and len(other.requests) == 2, "four deliveries")
        assert [body["incident_id"] for body in receiver.delivered()] == ["everyone", "ops-only"]
        assert {request.path for request in other.requests} == {"/hook", "/from-a-rule"}
        wait_until(lambda: recorder.delivered(rule_id), "the rule URL's delivery recorded")
        assert (recorder.latest(ops_id) or pytest.fail("no record")).channel == receiver.url
        assert (
            recorder.latest(rule_id) or pytest.fail("no record")
        ).channel == f"json://127.0.0.1:{other.port}/from-a-rule"
    finally:
        other.stop()


def test_delivery_goes_on_when_recording_fails(receiver: Receiver, dispatchers: Callable[..., Dispatcher]) -> None:
    def broken_store(record: DeliveryRecord) -> None:
        raise RuntimeError("disk full")

    dispatcher = dispatchers([WebhookChannel(receiver.url)], broken_store)
    dispatcher.submit(notification())
    wait_until(lambda: len(receiver.delivered()) == 1, "delivery despite the broken store")
    wait_until(lambda: dispatcher.pending() == 0, "nothing pending")


def test_submitted_before_start_and_after_stop_is_recorded_as_pending(receiver: Receiver) -> None:
    recorder = Recorder()
    dispatcher = Dispatcher([WebhookChannel(receiver.url)], recorder, backoff_s=FAST_BACKOFF_S)
    early_id = dispatcher.submit(notification(incident_id="early"))[0]
    dispatcher.start()
    wait_until(lambda: recorder.delivered(early_id), "the early submission, once started")
    dispatcher.stop()

    (late_id,) = dispatcher.submit(notification(incident_id="late"))
    late = recorder.latest(late_id)
    assert late is not None
    assert (late.attempts, late.delivered_at, late.gave_up) == (0, None, False)
    assert late.next_attempt_at is not None
    assert dispatcher.pending() == 1


def test_two_channels_of_one_name_are_refused() -> None:
    slack = "https://hooks.slack.com/services/T00000000/B00000000/{}"
    twins = [WebhookChannel(slack.format("X" * 24)), WebhookChannel(slack.format("Y" * 24))]
    with pytest.raises(ValueError, match="both named"):
        Dispatcher(twins, Recorder())
    named = [
        WebhookChannel(slack.format("X" * 24), name="payments"),
        WebhookChannel(slack.format("Y" * 24), name="ops"),
    ]
    Dispatcher(named, Recorder())


def test_a_rule_url_is_never_mistaken_for_a_configured_channel_of_the_same_redacted_name(
    receiver: Receiver, dispatchers: Callable[..., Dispatcher]
) -> None:
    configured = WebhookChannel(f"{receiver.url}?token=configured")
    recorder = Recorder()
    dispatcher = dispatchers([configured], recorder)
    rule_url = f"{receiver.url}?token=from-a-rule"
    assert redact_url(rule_url) == configured.name

    (rule_id,) = dispatcher.submit(notification(channels=(rule_url,)))
    (by_name_id,) = dispatcher.submit(notification(incident_id="inc-2", channels=(configured.name,)))

    wait_until(lambda: recorder.delivered(rule_id) and recorder.delivered(by_name_id), "both delivered")
    assert sorted(request.path for request in receiver.requests) == [
        "/hook?token=configured",
        "/hook?token=from-a-rule",
    ]
    assert (recorder.latest(rule_id) or pytest.fail("no record")).channel == f"{configured.name} #2"
