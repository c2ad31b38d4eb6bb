"""A flood from one agent id is rate-limited in the monitor; the rest of the fleet keeps its state and its rows."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleetpulse.monitor.service import Monitor
from fleetpulse.publisher import Agent
from fleetpulse.publisher.protocol import format_timestamp
from tests.conftest import BrokerProcess
from tests.e2e.test_monitor import eventually, rows, state_of

FLEET = ("steady-1", "steady-2", "steady-3")
FLOOD = 3000


def _heartbeat(seq: int) -> bytes:
    document = {
        "v": 1, "agent": "flooder", "kind": "heartbeat", "status": "healthy", "session": "flood", "seq": seq,
        "sent_at": format_timestamp(datetime.now(UTC)), "interval_s": 1,
    }  # fmt: skip
    return json.dumps(document).encode()


def _stored(monitor: Monitor, agent: str) -> int:
    return int(rows(monitor, "SELECT count(*) FROM heartbeats WHERE agent = ?", agent)[0][0])


def _fleet_transitions(monitor: Monitor) -> list[tuple[object, ...]]:
    return rows(monitor, "SELECT * FROM transitions WHERE agent LIKE 'steady-%' ORDER BY ALL")


@pytest.mark.timeout(90)
def test_a_flooding_agent_is_rate_limited_and_the_fleet_is_unaffected(
    any_broker: BrokerProcess, monitor_factory: Callable[..., Monitor]
) -> None:
    monitor = monitor_factory(any_broker)
    fleet = [Agent(agent_id, broker=any_broker.url, interval_s=0.2) for agent_id in FLEET]
    flooder = paho.Client(CallbackAPIVersion.VERSION2, client_id="flooder")
    try:
        for agent in fleet:
            assert agent.start()
        eventually(lambda: [state_of(monitor, agent_id) for agent_id in FLEET] == ["healthy"] * len(FLEET))
        time.sleep(0.5)  # their first transitions are committed just after the views change
        transitions_before = _fleet_transitions(monitor)
        stored_before = {agent_id: _stored(monitor, agent_id) for agent_id in FLEET}
        flooder.connect("127.0.0.1", any_broker.port)
        flooder.loop_start()
        started = time.monotonic()
        for seq in range(FLOOD):
            info = flooder.publish("agents/flooder/health", _heartbeat(seq), qos=1)
        info.wait_for_publish(60)
        flood_s = time.monotonic() - started
        handled = lambda: monitor.stats().get("rate_limited", 0) + monitor.stats().get("applied", 0)  # noqa: E731
        eventually(lambda: handled() >= FLOOD + len(FLEET), timeout_s=30)
        time.sleep(0.5)  # a flush
        stats = monitor.stats()
        # The flooder got its burst plus the sustained rate while it lasted; the rest was rejected.
        allowed = monitor.config.agent_burst + monitor.config.agent_messages_per_s * (time.monotonic() - started)
        assert stats["rate_limited"] >= FLOOD - allowed
        assert stats["rejected"] >= stats["rate_limited"]
        assert not stats.get("handler_errors") and not stats.get("store_errors")
        reasons = rows(monitor, "SELECT DISTINCT reason FROM rejected WHERE topic = 'agents/flooder/health'")
        assert reasons == [("rate limit: agent flooder sent more than 20 messages/s",)]
        # The fleet: same states, no transitions, and its heartbeats kept being stored during the flood.
        assert [state_of(monitor, agent_id) for agent_id in FLEET] == ["healthy"] * len(FLEET)
        assert _fleet_transitions(monitor) == transitions_before
        for agent_id in FLEET:
            assert _stored(monitor, agent_id) - stored_before[agent_id] >= 0.5 * flood_s / 0.2
    finally:
        flooder.disconnect()
        flooder.loop_stop()
        for agent in fleet:
            agent.stop()
