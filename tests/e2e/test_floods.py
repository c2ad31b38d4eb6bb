"""Issue 14, item 12, end to end: forged ids on an open broker meet the agent cap, the page-rate guard and forget.

A real broker, a real `fleetpulse monitor` process (cap 20, 5 pages a minute) alerting a real HTTP
receiver, 200 forged ids published with paho, and `fleetpulse forget` run as a command against it.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleetpulse.broker.netutil import free_port
from fleetpulse.monitor.api import ApiServer
from fleetpulse.monitor.client import MonitorClient, MonitorError
from fleetpulse.monitor.service import Monitor, MonitorConfig, NothingToForget
from fleetpulse.monitor.store import Store
from fleetpulse.publisher.protocol import format_timestamp
from tests.conftest import CLI, ROOT, BrokerProcess, cli_process
from tests.e2e.test_monitor import MonitorFactory, eventually, rows
from tests.http_receiver import Receiver

CAP, PAGES, FORGED = 20, 5, 200


def _payload(agent: str, kind: str) -> bytes:
    document: dict[str, Any] = {
        "v": 1, "agent": agent, "kind": kind, "session": f"s-{agent}", "sent_at": format_timestamp(datetime.now(UTC)),
        "interval_s": 1,
    }  # fmt: skip
    if kind == "heartbeat":
        document |= {"status": "healthy", "seq": 0}
    return json.dumps(document).encode()


def _publish_all(port: int, messages: list[tuple[str, bytes]]) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"forger-{time.monotonic_ns()}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1, retain=True) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(30)
    finally:
        client.loop_stop()
        client.disconnect()


def _retained_agents(port: int, settle_s: float = 1.5) -> set[str]:
    """The agent ids whose health topic holds a retained message now (a fresh subscriber sees exactly those)."""
    seen: set[str] = set()
    lock = threading.Lock()

    def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if message.retain and message.payload:
            with lock:
                seen.add(message.topic.split("/")[1])

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"looker-{time.monotonic_ns()}")
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe("agents/+/health", qos=1)
    client.loop_start()
    time.sleep(settle_s)
    client.loop_stop()
    client.disconnect()
    with lock:
        return set(seen)


def _forged(agents: list[dict[str, Any]]) -> list[str]:
    return [record["agent"] for record in agents if record["agent"].startswith("forged-")]


@pytest.mark.timeout(120)
def test_forged_ids_meet_the_cap_the_storm_guard_and_forget(
    any_broker: BrokerProcess, receiver: Receiver, tmp_path: Path
) -> None:
    db, http_port = tmp_path / "flood.duckdb", free_port()
    with cli_process(
        "monitor", "--broker", any_broker.url, "--db", str(db), "--dashboard-port", str(http_port),
        "--max-agents", str(CAP), "--max-pages-per-minute", str(PAGES), "--notify", receiver.url,
    ) as monitor:  # fmt: skip
        client = MonitorClient(f"http://127.0.0.1:{http_port}", timeout_s=10)
        eventually(lambda: _answers(client) and client.healthz()["broker_connected"], timeout_s=30)
        ids = [f"forged-{index:03d}" for index in range(FORGED)]
        _publish_all(any_broker.port, [(f"agents/{agent}/health", _payload(agent, "heartbeat")) for agent in ids])
        eventually(lambda: client.stats().get("refused_agent_cap", 0) >= FORGED - CAP, timeout_s=30)
        # Every known one dies (its will); the refused ones' wills are refused too.
        _publish_all(any_broker.port, [(f"agents/{agent}/health", _payload(agent, "will")) for agent in ids])
        eventually(lambda: client.stats().get("refused_agent_cap", 0) >= 2 * (FORGED - CAP), timeout_s=30)

        agents = client.list_agents()
        assert len(agents) == CAP and len(_forged(agents)) == CAP  # the cap held; known agents kept working
        eventually(lambda: {a["health_status"] for a in client.list_agents()} == {"unreachable"}, timeout_s=20)
        assert len(json.dumps(client.list_agents())) < 100_000  # /api/agents stays small
        time.sleep(2)  # let the core and the dispatcher hand over everything they would send
        stats = client.stats()
        assert stats["refused_agent_cap"] == 2 * (FORGED - CAP)  # exact: each refused message counted once
        bodies = [body for body in receiver.delivered()]
        cap_alerts = [b for b in bodies if b["rule"] == "agent-cap"]
        storm_alerts = [b for b in bodies if b["rule"] == "alert-storm"]
        pages = [b for b in bodies if b["agent"].startswith("forged-")]
        assert [(b["event"], b["severity"]) for b in cap_alerts] == [("trigger", "critical")]
        assert "agent cap reached (20 known" in cap_alerts[0]["reason"]
        assert len(pages) <= PAGES and all(b["event"] == "trigger" for b in pages)
        assert [(b["event"], b["severity"]) for b in storm_alerts] == [("trigger", "critical")]
        held = client.sql("SELECT count(*) FROM alerts WHERE channel = 'held:alert-storm'")["rows"][0][0]
        assert held + len(pages) == CAP  # nothing lost: each trigger was sent or recorded as held

        known = set(_forged(client.list_agents()))
        assert known <= _retained_agents(any_broker.port)
        forget = subprocess.run(
            [*CLI, "forget", "forged-*", "--reason", "forged flood", "--db", str(db)],
            capture_output=True, text=True, cwd=ROOT, timeout=60,
        )  # fmt: skip
        assert forget.returncode == 0, forget.stderr
        assert forget.stdout.startswith(f"forgot {CAP} agent(s) matching 'forged-*'"), forget.stdout
        assert _forged(client.list_agents()) == []
        eventually(lambda: not known & _retained_agents(any_broker.port, settle_s=0.5), timeout_s=20)
        audit = client.sql("SELECT command, target, reason FROM commands WHERE command = 'forget'")["rows"]
        assert audit == [["forget", "forged-*", "forged flood"]]
        history = client.sql("SELECT count(DISTINCT agent) FROM transitions WHERE agent LIKE 'forged-%'")["rows"]
        assert history == [[CAP]]  # history is history: the transitions stay
        eventually(
            lambda: [b["event"] for b in receiver.delivered() if b["rule"] == "agent-cap"] == ["trigger", "resolve"]
        )
        assert len([b for b in receiver.delivered() if b["agent"].startswith("forged-")]) == len(pages)  # no resolves

        again = subprocess.run(
            [*CLI, "forget", "forged-*", "--db", str(db)], capture_output=True, text=True, cwd=ROOT, timeout=60
        )
        assert again.returncode == 2 and again.stderr.strip().count("\n") == 0
        assert "no known agent matches 'forged-*'" in again.stderr
        every = subprocess.run([*CLI, "forget", "*", "--db", str(db)], capture_output=True, text=True, cwd=ROOT)
        assert every.returncode == 2 and "--all" in every.stderr

        # A forgotten agent that heartbeats again is simply new again.
        _publish_all(any_broker.port, [("agents/forged-000/health", _payload("forged-000", "heartbeat"))])
        eventually(lambda: _forged(client.list_agents()) == ["forged-000"])
        assert monitor.poll() is None


def _answers(client: MonitorClient) -> bool:
    try:
        client.healthz()
    except ConnectionError:
        return False
    return True


@pytest.mark.timeout(90)
def test_the_retained_snapshot_counts_against_the_cap_and_a_restart_alerts_no_more(
    amqtt_broker: BrokerProcess, monitor_factory: MonitorFactory, tmp_path: Path
) -> None:
    ids = [f"old-{index:02d}" for index in range(30)]
    _publish_all(amqtt_broker.port, [(f"agents/{agent}/health", _payload(agent, "heartbeat")) for agent in ids])
    db = tmp_path / "snapshot.duckdb"
    monitor = monitor_factory(amqtt_broker, db=db, max_agents=10)
    # amqtt hands a new wildcard subscriber each retained message twice: both copies are refused and counted.
    eventually(lambda: monitor.stats().get("refused_agent_cap", 0) >= 20)
    assert len(monitor.list_agents()) == 10
    monitor.stop()
    cap_events = "SELECT count(*) FROM monitor_events WHERE event = 'agent_cap_reached'"
    incidents = "SELECT count(*) FROM alert_incidents WHERE rule = 'agent-cap'"
    store = Store(db, read_only=True)
    try:
        assert store.query(cap_events)[1] == [(1,)] and store.query(incidents)[1] == [(1,)]
    finally:
        store.close()

    again = monitor_factory(amqtt_broker, db=db, max_agents=10)
    eventually(lambda: again.stats().get("refused_agent_cap", 0) >= 20)
    assert len(again.list_agents()) == 10
    # Still the one incident from before the restart: reaching the cap again is no new alert.
    assert rows(again, incidents) == [(1,)]
    with pytest.raises(ValueError, match="--all"):
        again.forget("*", "", "test")
    with pytest.raises(NothingToForget):
        again.forget("nobody-*", "", "test")
    result = again.forget("old-*", "cleanup", "test", every=False)
    assert len(result.agents) == 10 and again.list_agents() == []
    assert rows(again, "SELECT count(*) FROM agents") == [(0,)]
    eventually(lambda: rows(again, "SELECT count(*) FROM alert_incidents WHERE closed_at IS NULL") == [(0,)])


@pytest.mark.timeout(60)
def test_the_forget_api_answers_bad_requests_with_one_clear_line(amqtt_broker: BrokerProcess, tmp_path: Path) -> None:
    monitor = Monitor(MonitorConfig(broker=amqtt_broker.url, db_path=tmp_path / "api.duckdb", tick_interval_s=0.1))
    api = ApiServer(monitor, "127.0.0.1", 0).start()
    monitor.start(api_url=api.url)
    try:
        client = MonitorClient(api.url)
        cases = [
            ({"pattern": "nobody-*"}, 404, "no known agent matches 'nobody-*'"),
            ({"pattern": "*"}, 400, "confirm with --all"),
            ({"pattern": ""}, 400, "1-256 characters"),
            ({"pattern": 7}, 400, '{"pattern"'),
            ({"pattern": "x", "all": "yes"}, 400, '{"pattern"'),
        ]
        for body, status, message in cases:
            with pytest.raises(MonitorError) as refused:
                client._call("/api/forget", body)
            assert (refused.value.status, message in str(refused.value)) == (status, True), body
        with pytest.raises(MonitorError) as nothing:
            client.forget("*", every=True)  # confirmed, but there is nothing to forget
        assert nothing.value.status == 404
    finally:
        monitor.stop()
        api.stop()
