"""The monitor's core judging silence, driven without sockets: a fake clock and events put on its queue."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from fleetpulse.monitor.service import Monitor, MonitorConfig
from fleetpulse.monitor.store import WriteBatch
from fleetpulse.monitor.subscriber import Received

START = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def heartbeat(agent: str, seq: int, at: datetime) -> Received:
    payload = (
        f'{{"v": 1, "agent": "{agent}", "kind": "heartbeat", "status": "healthy", "session": "s", '
        f'"seq": {seq}, "sent_at": "{at.isoformat()}", "interval_s": 10}}'
    ).encode()
    return Received(f"agents/{agent}/health", payload, False, at)


def test_a_core_that_is_behind_judges_silence_only_up_to_what_it_has_read(tmp_path: Path) -> None:
    now = [START]
    monitor = Monitor(MonitorConfig(db_path=tmp_path / "core.duckdb"), clock=lambda: now[0])
    monitor._connected = True  # as after BrokerConnected; never started, so nothing else reads the queue
    pending = WriteBatch()
    monitor._handle(heartbeat("slow", 0, START), pending)
    monitor._handle(heartbeat("slow", 1, START + timedelta(seconds=10)), pending)
    # 40 s later (degraded after 30 s of silence) the next heartbeat, received on time at 20 s, still waits
    # in the core's queue: the agent was not silent, the monitor was busy.
    monitor._events.put(heartbeat("slow", 2, START + timedelta(seconds=20)))
    now[0] = START + timedelta(seconds=50)
    assert monitor._judged_until() == START + timedelta(seconds=10)
    monitor._tick_all(pending, monitor._judged_until())
    assert pending.transitions == []
    assert monitor.list_agents()[0]["health_status"] == "healthy"
    # Once read, the clock judges from that heartbeat: 30 s after it, with nothing more, it is late.
    event = monitor._events.get_nowait()
    assert isinstance(event, Received)
    monitor._handle(event, pending)
    assert monitor._judged_until() == now[0]
    monitor._tick_all(pending, monitor._judged_until())
    assert [(t.from_state, t.to_state) for t in pending.transitions] == [("healthy", "degraded")]
