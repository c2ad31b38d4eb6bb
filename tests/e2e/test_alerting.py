"""Alerting end to end: agent processes killed with kill -9, real brokers, a real HTTP receiver and SMTP server."""

from __future__ import annotations

import email
import email.policy
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from fleetpulse.broker.netutil import free_port
from fleetpulse.monitor.alert_policy import AlertSettings, CostPolicy
from fleetpulse.monitor.api import ApiServer
from fleetpulse.monitor.client import MonitorClient
from fleetpulse.monitor.service import Monitor
from fleetpulse.publisher import Agent
from tests.conftest import BrokerProcess
from tests.e2e.test_monitor import AGENT_SCRIPT, MonitorFactory, eventually, rows, state_of
from tests.http_receiver import Receiver

Spawn = Callable[..., subprocess.Popen[bytes]]
FAST_RETRIES = (0.2, 0.5)


def events(receiver: Receiver, agent: str | None = None) -> list[tuple[str, str]]:
    """(event, agent) of every alert the receiver accepted, in arrival order."""
    return [(body["event"], body["agent"]) for body in receiver.delivered() if agent in (None, body["agent"])]


def await_events(receiver: Receiver, expected: list[tuple[str, str]], timeout_s: float = 10.0) -> None:
    """Wait until the receiver accepted exactly `expected`; on timeout, fail showing what it did get."""
    try:
        eventually(lambda: events(receiver) == expected, timeout_s=timeout_s)
    except AssertionError:
        assert events(receiver) == expected


def quiet_for(seconds: float) -> None:
    """Let ticks and retries run, so a duplicate alert would have arrived."""
    time.sleep(seconds)


def start_agent(spawn: Spawn, broker: BrokerProcess, monitor: Monitor, agent: str) -> subprocess.Popen[bytes]:
    # A 2 s interval: deaths come as wills at once, and a busy CI machine that delays a heartbeat by a
    # second or two must not add `degraded` alerts to the exact sequences these tests expect.
    process = spawn(AGENT_SCRIPT, broker.url, agent, "2", "5")
    eventually(lambda: state_of(monitor, agent) == "healthy")
    return process


def test_kill_9_alerts_once_and_a_restart_resolves_once_with_the_duration(
    any_broker: BrokerProcess, monitor_factory: MonitorFactory, spawn: Spawn, receiver: Receiver
) -> None:
    monitor = monitor_factory(any_broker, notify=(receiver.url,), alert_backoff_s=FAST_RETRIES)
    process = start_agent(spawn, any_broker, monitor, "orders")
    os.kill(process.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    await_events(receiver, [("trigger", "orders")], timeout_s=5)
    quiet_for(1.5)  # ticks go on: still one alert
    (trigger,) = receiver.delivered()
    assert trigger["state"] == "unreachable" and trigger["severity"] == "critical"
    assert trigger["reason"] == "will: connection lost" and trigger["version"] == 1

    time.sleep(1.0)
    start_agent(spawn, any_broker, monitor, "orders")
    down_s = time.monotonic() - killed_at
    await_events(receiver, [("trigger", "orders"), ("resolve", "orders")])
    quiet_for(1.0)
    trigger, resolve = receiver.delivered()
    assert resolve["incident_id"] == trigger["incident_id"]
    assert down_s - 1.5 <= resolve["duration_s"] <= down_s + 0.5
    recorded = rows(monitor, 'SELECT event, attempts, delivered_at IS NOT NULL, error FROM alerts ORDER BY "at"')
    assert recorded == [("trigger", 1, True, None), ("resolve", 1, True, None)]
    assert rows(monitor, "SELECT count(*) FROM alert_incidents WHERE closed_at IS NULL") == [(0,)]


def test_a_flapping_agent_gets_one_flapping_alert_then_one_resolve_when_stable(
    amqtt_broker: BrokerProcess, monitor_factory: MonitorFactory, spawn: Spawn, receiver: Receiver
) -> None:
    settings = AlertSettings(flap_count=3, flap_window_s=120, flap_stable_s=2.0)
    monitor = monitor_factory(amqtt_broker, notify=(receiver.url,), alerts=settings, alert_backoff_s=FAST_RETRIES)
    for _ in range(3):
        process = start_agent(spawn, amqtt_broker, monitor, "bouncy")
        os.kill(process.pid, signal.SIGKILL)
        eventually(lambda: state_of(monitor, "bouncy") == "unreachable")
    start_agent(spawn, amqtt_broker, monitor, "bouncy")
    expected = [("trigger", "bouncy"), ("resolve", "bouncy")] * 2 + [("flapping", "bouncy"), ("resolve", "bouncy")]
    await_events(receiver, expected, timeout_s=10)
    quiet_for(1.0)
    assert events(receiver) == expected
    flapping, resolve = receiver.delivered()[-2:]
    assert flapping["incident_id"] == resolve["incident_id"]


def test_a_silence_holds_alerts_back_and_is_listed(
    amqtt_broker: BrokerProcess, monitor_factory: MonitorFactory, spawn: Spawn, receiver: Receiver
) -> None:
    monitor = monitor_factory(amqtt_broker, notify=(receiver.url,), alert_backoff_s=FAST_RETRIES)
    api = ApiServer(monitor, "127.0.0.1", 0).start()
    try:
        client = MonitorClient(f"http://127.0.0.1:{api.port}")
        silence = client.silence("maint-*", "2h", "database migration")
        assert [s["id"] for s in client.silences()] == [silence["id"]]
        assert client.silences()[0]["reason"] == "database migration"
        quiet = start_agent(spawn, amqtt_broker, monitor, "maint-1")
        loud = start_agent(spawn, amqtt_broker, monitor, "loud-1")
        os.kill(quiet.pid, signal.SIGKILL)
        os.kill(loud.pid, signal.SIGKILL)
        await_events(receiver, [("trigger", "loud-1")], timeout_s=5)  # the pipeline works...
        quiet_for(1.0)
        assert events(receiver, "maint-1") == []  # ...and the silenced agent stayed quiet
        (delivery,) = eventually(lambda: [a for a in client.alerts() if a["delivered_at"]])
        assert (delivery["agent"], delivery["event"], delivery["attempts"]) == ("loud-1", "trigger", 1)
        incidents = {i["agent"]: i["notified"] for i in client.incidents()}
        assert incidents == {"maint-1": False, "loud-1": True}
        client.unsilence(silence["id"])
        assert client.silences() == [] and len(client.silences(every=True)) == 1
    finally:
        api.stop()


def test_a_receiver_that_is_down_gets_the_alert_when_it_returns(
    amqtt_broker: BrokerProcess, monitor_factory: MonitorFactory, spawn: Spawn, receiver_down: Receiver
) -> None:
    monitor = monitor_factory(amqtt_broker, notify=(receiver_down.url,), alert_backoff_s=FAST_RETRIES)
    process = start_agent(spawn, amqtt_broker, monitor, "orders")
    os.kill(process.pid, signal.SIGKILL)
    failing = "SELECT attempts, error FROM alerts WHERE delivered_at IS NULL"
    eventually(lambda: any(attempts >= 3 for attempts, _ in rows(monitor, failing)), timeout_s=10)
    ((attempts, error),) = rows(monitor, failing)
    assert "refused" in error.lower() or "connection" in error.lower()
    receiver_down.start()
    await_events(receiver_down, [("trigger", "orders")], timeout_s=10)
    # The row is rewritten just after the receiver answered: wait for it.
    delivered = "SELECT attempts, error FROM alerts WHERE delivered_at IS NOT NULL"
    ((attempts, error),) = eventually(lambda: rows(monitor, delivered))
    assert attempts >= 3 and error is None
    log = rows(monitor, "SELECT attempt, delivered, error IS NULL FROM alert_attempts ORDER BY attempt")
    assert [a for a, _, _ in log] == list(range(1, attempts + 1))  # every attempt, in order
    assert [(d, ok) for _, d, ok in log] == [(False, False)] * (attempts - 1) + [(True, True)]


def test_undelivered_alerts_are_sent_after_a_monitor_restart(
    amqtt_broker: BrokerProcess, monitor_factory: MonitorFactory, spawn: Spawn, receiver_down: Receiver, tmp_path: Path
) -> None:
    db = tmp_path / "restart.duckdb"
    monitor = monitor_factory(amqtt_broker, db=db, notify=(receiver_down.url,), alert_backoff_s=FAST_RETRIES)
    process = start_agent(spawn, amqtt_broker, monitor, "orders")
    os.kill(process.pid, signal.SIGKILL)
    eventually(lambda: rows(monitor, "SELECT count(*) FROM alerts WHERE attempts >= 1") == [(1,)], timeout_s=5)
    monitor.stop()
    receiver_down.start()
    quiet_for(0.5)
    assert receiver_down.delivered() == []  # nobody sends while no monitor runs
    restarted = monitor_factory(amqtt_broker, db=db, notify=(receiver_down.url,), alert_backoff_s=FAST_RETRIES)
    await_events(receiver_down, [("trigger", "orders")], timeout_s=10)
    quiet_for(1.0)
    assert events(receiver_down) == [("trigger", "orders")]  # exactly once, not once per start
    # The incident survived the restart too: the agent's return resolves the pre-restart trigger.
    start_agent(spawn, amqtt_broker, restarted, "orders")
    await_events(receiver_down, [("trigger", "orders"), ("resolve", "orders")])
    trigger, resolve = receiver_down.delivered()
    assert trigger["incident_id"] == resolve["incident_id"]


def test_a_dependent_is_folded_into_its_root_cause(
    amqtt_broker: BrokerProcess, monitor_factory: MonitorFactory, spawn: Spawn, receiver: Receiver
) -> None:
    monitor = monitor_factory(amqtt_broker, notify=(receiver.url,), alert_backoff_s=FAST_RETRIES)
    root = start_agent(spawn, amqtt_broker, monitor, "order-processor")
    with Agent("refund-agent", broker=amqtt_broker.url, interval_s=2, depends_on=["order-processor"]) as refunds:
        eventually(lambda: state_of(monitor, "refund-agent") == "healthy")
        os.kill(root.pid, signal.SIGKILL)
        await_events(receiver, [("trigger", "order-processor")], timeout_s=5)
        refunds.set_degraded("order-processor does not answer")
        eventually(lambda: state_of(monitor, "refund-agent") == "degraded")
        quiet_for(1.0)
        assert events(receiver, "refund-agent") == []  # folded: no page of its own
        refunds.set_healthy()
        eventually(lambda: state_of(monitor, "refund-agent") == "healthy")
        start_agent(spawn, amqtt_broker, monitor, "order-processor")
        await_events(receiver, [("trigger", "order-processor"), ("resolve", "order-processor")])
    resolve = receiver.delivered()[-1]
    assert resolve["impacted"] == ["refund-agent"]
    assert "impacted: refund-agent" in resolve["summary"]


def test_a_cost_limit_alerts_and_pauses_the_agent(
    amqtt_broker: BrokerProcess, monitor_factory: MonitorFactory, receiver: Receiver
) -> None:
    settings = AlertSettings(
        cost_policies=(CostPolicy(name="llm budget", agents="spend*", per_day_usd=1.0, action="pause"),)
    )
    monitor = monitor_factory(
        amqtt_broker, notify=(receiver.url,), alerts=settings, cost_check_interval_s=0.2, alert_backoff_s=FAST_RETRIES
    )
    with Agent("spender", broker=amqtt_broker.url, interval_s=1) as agent:
        eventually(lambda: state_of(monitor, "spender") == "healthy")
        agent.report_metric(success=True, latency_ms=10, cost_usd=0.6, model="big")
        quiet_for(1.0)
        assert receiver.delivered() == [] and not agent.paused  # under the limit
        agent.report_metric(success=True, latency_ms=10, cost_usd=0.6, model="big")
        eventually(lambda: agent.paused, timeout_s=10)
        await_events(receiver, [("trigger", "spender")])  # the pause and the webhook race: both must come
        (alert,) = receiver.delivered()
        assert alert["agent"] == "spender" and alert["incident_id"].startswith("cost/spender/day/")
        assert "1.20" in alert["reason"] and "1.00" in alert["reason"]
        audit = eventually(lambda: rows(monitor, "SELECT command, issued_by FROM commands"))
        assert audit == [("pause", "cost-policy:llm budget")]
        quiet_for(1.0)
        assert len(receiver.delivered()) == 1  # once per day, not per check


def test_losing_the_broker_is_one_monitor_alert_not_one_per_agent(
    amqtt_broker: BrokerProcess, monitor_factory: MonitorFactory, spawn: Spawn, receiver: Receiver
) -> None:
    monitor = monitor_factory(amqtt_broker, notify=(receiver.url,), alert_backoff_s=FAST_RETRIES)
    for agent in ("a-1", "a-2", "a-3"):
        start_agent(spawn, amqtt_broker, monitor, agent)
    amqtt_broker.stop()
    await_events(receiver, [("trigger", "monitor:default")], timeout_s=10)
    amqtt_broker.start()
    await_events(receiver, [("trigger", "monitor:default"), ("resolve", "monitor:default")], timeout_s=20)
    eventually(lambda: all(state_of(monitor, a) == "healthy" for a in ("a-1", "a-2", "a-3")), timeout_s=20)
    quiet_for(1.0)
    assert [event for event, _ in events(receiver)] == ["trigger", "resolve"]


class _MailBox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"


def test_email_through_apprise_reaches_a_local_smtp_server(
    amqtt_broker: BrokerProcess, monitor_factory: MonitorFactory, spawn: Spawn
) -> None:
    mailbox, port = _MailBox(), free_port()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=port)
    smtp.start()
    try:
        url = f"mailto://127.0.0.1:{port}?from=fleetpulse@example.com&to=oncall@example.com"
        monitor = monitor_factory(amqtt_broker, notify=(url,), alert_backoff_s=FAST_RETRIES)
        process = start_agent(spawn, amqtt_broker, monitor, "mailed")
        os.kill(process.pid, signal.SIGKILL)
        eventually(lambda: len(mailbox.messages) == 1, timeout_s=15)
    finally:
        smtp.stop()
    (message,) = mailbox.messages
    assert message["To"] == "oncall@example.com" and "mailed" in message["Subject"]
    # The row is updated just after the SMTP server has the mail: wait for it.
    eventually(lambda: rows(monitor, "SELECT event, delivered_at IS NOT NULL FROM alerts") == [("trigger", True)])


def test_a_channel_url_nobody_understands_fails_at_startup(amqtt_broker: BrokerProcess, tmp_path: Path) -> None:
    from fleetpulse.monitor.service import MonitorConfig

    with pytest.raises(ValueError, match="not a URL apprise understands"):
        Monitor(MonitorConfig(broker=amqtt_broker.url, db_path=tmp_path / "x.duckdb", notify=("nonsense://",)))
    assert not (tmp_path / "x.duckdb").exists()


def test_the_rules_files_channels_and_notify_both_get_a_page(
    amqtt_broker: BrokerProcess, monitor_factory: MonitorFactory, spawn: Spawn, receiver: Receiver
) -> None:
    """`[defaults] notify` in the rules file adds to --notify (as the README says), it does not replace it."""
    from_file = Receiver().start()
    try:
        settings = AlertSettings(notify=(from_file.url,))
        monitor = monitor_factory(amqtt_broker, notify=(receiver.url,), alerts=settings, alert_backoff_s=FAST_RETRIES)
        process = start_agent(spawn, amqtt_broker, monitor, "both-channels")
        os.kill(process.pid, signal.SIGKILL)
        await_events(receiver, [("trigger", "both-channels")])
        await_events(from_file, [("trigger", "both-channels")])
    finally:
        from_file.stop()
