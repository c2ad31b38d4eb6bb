"""Authentication and the ACL (broker/acl.py) on both brokers, over real sockets: who gets in, who may say what."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from fleetpulse.broker import EmbeddedBroker, PasswordFile, Role
from fleetpulse.broker.netutil import free_port
from fleetpulse.monitor.cli import main
from fleetpulse.monitor.control import send_command
from fleetpulse.monitor.service import Monitor, MonitorConfig
from fleetpulse.publisher import Agent
from fleetpulse.publisher.mqtt import parse_broker_url
from fleetpulse.publisher.protocol import Command, ControlCommand
from tests.broker.conftest import SecuredBroker, start_secured
from tests.conftest import cli_process, read_until
from tests.e2e.test_monitor import eventually, state_of


class Inbox:
    """Everything a client receives, as (topic, payload)."""

    def __init__(self, client: paho.Client) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.granted: dict[str, int] = {}
        self._pending: dict[int, str] = {}
        self._acknowledged = threading.Event()
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._client = client

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload)))

    def _on_subscribe(self, client: paho.Client, userdata: object, mid: int, codes: list[Any], props: object) -> None:
        with self._lock:  # (the SUBACK may come before subscribe() has returned its mid)
            self.granted[self._pending[mid]] = codes[0].value
        self._acknowledged.set()

    def subscribe(self, topic_filter: str) -> int:
        """Subscribe and wait for the SUBACK; its code (0-2 granted QoS, 128 refused)."""
        self._acknowledged.clear()
        with self._lock:
            _, mid = self._client.subscribe(topic_filter, qos=1)
            assert mid is not None
            self._pending[mid] = topic_filter
        assert self._acknowledged.wait(10), f"no SUBACK for {topic_filter}"
        return self.granted[topic_filter]

    def topics(self) -> set[str]:
        with self._lock:
            return {topic for topic, _ in self.messages}

    def payloads(self, topic: str) -> list[bytes]:
        with self._lock:
            return [payload for seen, payload in self.messages if seen == topic]


def test_a_wrong_password_an_unknown_user_and_anonymous_are_refused(secured_broker: SecuredBroker) -> None:
    assert not secured_broker.connect("a1", "wrong")[1]
    assert not secured_broker.connect("a1", "")[1]
    assert not secured_broker.connect("nobody", "pw-a1")[1]
    assert not secured_broker.connect(None)[1]
    assert secured_broker.connect("a1")[1]


def test_an_agent_cannot_publish_as_another_agent_nor_send_commands(secured_broker: SecuredBroker) -> None:
    watcher = Inbox(secured_broker.connect("mon")[0])
    assert watcher.subscribe("#") == 1
    agent, accepted = secured_broker.connect("a1")
    assert accepted
    for topic in (
        "agents/a2/health",
        "agents/a2/control",
        "agents/a1/control",
        "groups/workers/control",
        "fleetpulse/monitor/default/status",
        "anything/else",
    ):
        agent.publish(topic, b"from a1", qos=1)
    agent.publish("agents/a1/health", b"marker", qos=1)  # same connection, QoS 1: delivered in order
    eventually(lambda: watcher.payloads("agents/a1/health") == [b"marker"])
    time.sleep(0.3)
    assert watcher.topics() == {"agents/a1/health"}


def test_an_agent_reads_only_its_own_and_its_groups_control(secured_broker: SecuredBroker) -> None:
    a2 = secured_broker.connect("a2")[0]
    a2.publish("agents/a2/health", b"a2 retained", qos=1, retain=True).wait_for_publish(5)
    inbox = Inbox(secured_broker.connect("a1")[0])
    refused = ["#", "agents/#", "agents/+/control", "agents/a2/control", "agents/a2/health", "groups/+/control"]
    codes = {topic_filter: inbox.subscribe(topic_filter) for topic_filter in refused}
    assert inbox.subscribe("agents/a1/control") == 1
    assert inbox.subscribe("groups/workers/control") == 1
    if secured_broker.kind == "amqtt":
        assert codes == dict.fromkeys(refused, 0x80)  # refused outright
    # (Mosquitto 2.0 grants such subscriptions and then delivers only what the ACL lets the user read.)
    operator = secured_broker.connect("mon")[0]
    for topic in ("agents/a2/control", "groups/others/control", "agents/a1/control", "groups/workers/control"):
        operator.publish(topic, topic.encode(), qos=1)
    a2.publish("agents/a2/health", b"a2 live", qos=1)
    eventually(lambda: {"agents/a1/control", "groups/workers/control"} <= inbox.topics())
    time.sleep(0.3)
    assert inbox.topics() == {"agents/a1/control", "groups/workers/control"}


def _drop_without_disconnect(client: paho.Client) -> None:
    client.loop_stop()
    sock = client.socket()
    assert sock is not None
    sock.close()  # no DISCONNECT packet: the broker must publish the will


def test_a_will_for_another_agent_never_reaches_anyone(secured_broker: SecuredBroker) -> None:
    watcher = Inbox(secured_broker.connect("mon")[0])
    watcher.subscribe("agents/+/health")
    spoofer, accepted = secured_broker.connect("a1", will=("agents/a2/health", b"spoofed will"))
    # The embedded broker refuses the connection; Mosquitto 2.0 accepts it and drops the will when it fires.
    assert accepted == (secured_broker.kind == "mosquitto")
    if accepted:
        _drop_without_disconnect(spoofer)
    honest, accepted = secured_broker.connect("a1", will=("agents/a1/health", b"own will"))
    assert accepted
    _drop_without_disconnect(honest)
    eventually(lambda: watcher.payloads("agents/a1/health") == [b"own will"])  # wills do fire here
    time.sleep(0.5)
    assert watcher.payloads("agents/a2/health") == []


def _monitor(url: str, db: Path) -> Monitor:
    monitor = Monitor(MonitorConfig(broker=url, db_path=db, tick_interval_s=0.1)).start()
    eventually(lambda: monitor.connected)
    return monitor


def test_the_monitor_and_sdk_agents_work_with_credentials_and_a_spoof_never_arrives(
    secured_broker: SecuredBroker, tmp_path: Path
) -> None:
    monitor = _monitor(secured_broker.url("mon"), tmp_path / "fleet.duckdb")
    paused = threading.Event()
    try:
        with (
            Agent("a1", broker=secured_broker.url("a1"), group="workers", interval_s=30) as a1,
            Agent("a2", broker=secured_broker.url("a2"), interval_s=30, on_kill=lambda command: None),
        ):
            eventually(lambda: (state_of(monitor, "a1"), state_of(monitor, "a2")) == ("healthy", "healthy"))
            # a1's credentials try to stop a2, in a2's name and through a2's control topic.
            spoof = {
                "v": 1, "agent": "a2", "kind": "stop", "reason": "spoofed", "session": a1.session,
                "sent_at": "2026-01-01T00:00:00Z", "interval_s": 30,
            }  # fmt: skip
            attacker = secured_broker.connect("a1")[0]
            attacker.publish("agents/a2/health", json.dumps(spoof).encode(), qos=1)
            kill = ControlCommand(Command.KILL, id=uuid.uuid4().hex, issued_by="a1", reason="spoofed")
            assert send_command(parse_broker_url(secured_broker.url("a1")), kill, agent="a2", wait_s=1.0) is None
            # The monitor's credentials may command: a pause to a1's group reaches it.
            pause = ControlCommand(Command.PAUSE, id=uuid.uuid4().hex, issued_by="ops", reason="test")
            monitor.send_command(pause, group="workers")
            eventually(lambda: a1.paused)
            paused.set()
            eventually(lambda: monitor.stats().get("commands", 0) == 1)  # the audit log saw the pause only
            assert state_of(monitor, "a2") == "healthy"
            assert monitor.stats().get("rejected", 0) == 0  # the spoof never reached the monitor at all
    finally:
        monitor.stop()
    assert paused.is_set()


@pytest.fixture
def embedded_secured(tmp_path: Path) -> Any:
    broker, handle = start_secured("amqtt", tmp_path)
    yield broker
    broker.close()
    handle.stop()  # type: ignore[attr-defined]


def test_a_wrong_password_cannot_disturb_the_monitors_session_nor_can_the_embedded_brokers_other_users(
    secured_broker: SecuredBroker,
) -> None:
    # amqtt deletes or takes over the session of a client id before authenticating (see broker/embedded.py).
    monitor_id = "fleetpulse-monitor-default"
    watcher = Inbox(secured_broker.connect("mon", client_id=monitor_id, clean_session=False)[0])
    watcher.subscribe("agents/+/health")
    assert not secured_broker.connect("mon", "wrong", client_id=monitor_id)[1]
    if secured_broker.kind == "amqtt":
        # (Mosquitto lets any authenticated user take a client id over: SECURITY.md.)
        assert not secured_broker.connect("a1", client_id=monitor_id)[1]
    agent = secured_broker.connect("a1")[0]
    agent.publish("agents/a1/health", b"still subscribed", qos=1)
    eventually(lambda: watcher.payloads("agents/a1/health") == [b"still subscribed"])


def test_embedded_rereads_the_password_file_and_a_removed_user_loses_access(embedded_secured: SecuredBroker) -> None:
    assert not embedded_secured.connect("late", "pw-late")[1]
    passwords = PasswordFile(embedded_secured.password_file)
    passwords.add("late", "pw-late")
    passwords.save()
    time.sleep(1.1)  # PASSWORD_FILE_RECHECK_S
    late, accepted = embedded_secured.connect("late", "pw-late")
    assert accepted
    watcher = Inbox(embedded_secured.connect("mon")[0])
    watcher.subscribe("agents/+/health")
    late.publish("agents/late/health", b"before", qos=1)
    eventually(lambda: watcher.payloads("agents/late/health") == [b"before"])
    passwords.remove("late")
    passwords.save()
    time.sleep(1.1)
    late.publish("agents/late/health", b"after", qos=1)  # the open connection is no longer allowed to
    agent = embedded_secured.connect("a1")[0]
    agent.publish("agents/a1/health", b"marker", qos=1)
    eventually(lambda: watcher.payloads("agents/a1/health") == [b"marker"])
    time.sleep(0.3)
    assert watcher.payloads("agents/late/health") == [b"before"]
    assert not embedded_secured.connect("late", "pw-late")[1]


def test_up_with_a_password_file_runs_its_monitor_and_demo_agents_with_issued_credentials(tmp_path: Path) -> None:
    password_file = tmp_path / "fleet.passwd"
    add = ["credentials", "add", "ops", "--password", "pw", "--role", "monitor", "--file", str(password_file)]
    assert main(add) == 0
    port = free_port()
    up_args = ["up", "--demo", "1", "--port", str(port), "--dashboard-port", "0", "--password-file", str(password_file)]
    with cli_process(*up_args, "--db", str(tmp_path / "up.duckdb")) as up:
        lines = read_until(up, "fleet: 1/1 healthy")
        assert any(f"users of {password_file} only" in line for line in lines)
        assert not any("zero-config" in line for line in lines)
        # The file's own users get in; anonymous clients do not.
        ops = parse_broker_url(f"mqtt://ops:pw@127.0.0.1:{port}")
        command = ControlCommand(Command.REBIRTH, id=uuid.uuid4().hex, issued_by="ops")
        assert send_command(ops, command, agent="demo-1", wait_s=10) is not None
        anonymous = SecuredBroker("amqtt", port, password_file)
        assert not anonymous.connect(None)[1]
        anonymous.close()
        os.killpg(up.pid, signal.SIGINT)
        assert up.wait(timeout=30) == 0


def test_without_a_password_file_the_broker_says_it_is_zero_config(tmp_path: Path) -> None:
    # (`up` starts its broker through the same code, and says the same.)
    port = free_port()
    with cli_process("broker", "--port", str(port)) as up:
        lines = read_until(up, "Ctrl-C stops the broker")
        assert re.search(r"zero-config: anonymous access", "".join(lines))
        os.killpg(up.pid, signal.SIGINT)
        assert up.wait(timeout=30) == 0


def test_operator_tools_say_when_the_broker_refuses_their_credentials(tmp_path: Path) -> None:
    from fleetpulse.monitor.snapshot import read_retained_health

    passwords = PasswordFile(tmp_path / "fleet.passwd")
    passwords.add("ops", "right-password-123", Role.MONITOR)
    passwords.save()
    with EmbeddedBroker(port=0, password_file=passwords.path) as broker:
        wrong = parse_broker_url(broker.url.replace("mqtt://", "mqtt://ops:not-the-password@"))
        with pytest.raises(ConnectionError, match="refused the connection: Bad user name or password"):
            read_retained_health(wrong)
        order = ControlCommand(command=Command.KILL, id="c1", issued_by="test", reason="")
        with pytest.raises(ConnectionError, match="refused the connection") as refused:
            send_command(wrong, order, agent="someone")
        assert "not-the-password" not in str(refused.value)
