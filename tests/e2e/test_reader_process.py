"""The monitor reading MQTT in a child process (monitor/reader.py): same behaviour, and no orphan."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from fleetpulse.broker.netutil import free_port
from fleetpulse.monitor.store import Store
from fleetpulse.publisher.protocol import Command, ControlCommand
from tests.conftest import BrokerProcess, cli_process
from tests.e2e.test_monitor import AGENT_SCRIPT, MonitorFactory, eventually, rows, state_of


def reader_children(pid: int) -> list[psutil.Process]:
    """The reader processes of the process `pid` (multiprocessing's spawn children)."""
    children = []
    for child in psutil.Process(pid).children():
        try:
            if any("spawn_main" in part for part in child.cmdline()):
                children.append(child)
        except psutil.Error:
            pass  # gone meanwhile, or a zombie not reaped yet
    return children


def test_heartbeats_wills_and_commands_go_through_the_reader_process(
    any_broker: BrokerProcess, monitor_factory: MonitorFactory, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    monitor = monitor_factory(any_broker, reader_process=True)
    assert len(reader_children(os.getpid())) == 1
    agent = spawn(AGENT_SCRIPT, any_broker.url, "orders", "0.5", "5")
    eventually(lambda: state_of(monitor, "orders") == "healthy")
    eventually(lambda: rows(monitor, "SELECT count(*) > 3 FROM heartbeats WHERE agent = 'orders'") == [(True,)])
    command = ControlCommand(command=Command.PAUSE, id="reader-pause-1", issued_by="test", reason="maintenance")
    monitor.send_command(command, agent="orders")  # published by the child, audited when it comes back
    eventually(lambda: rows(monitor, "SELECT command, issued_by FROM commands") == [("pause", "test")])
    os.kill(agent.pid, signal.SIGKILL)
    eventually(lambda: state_of(monitor, "orders") == "unreachable", timeout_s=5)
    eventually(
        lambda: (
            rows(monitor, "SELECT to_state, reason FROM transitions")[-1:] == [("unreachable", "will: connection lost")]
        )
    )


def test_a_reader_process_that_dies_is_replaced_and_ingest_goes_on(
    any_broker: BrokerProcess, monitor_factory: MonitorFactory, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    monitor = monitor_factory(any_broker, reader_process=True)
    spawn(AGENT_SCRIPT, any_broker.url, "steady", "0.5", "5")
    eventually(lambda: state_of(monitor, "steady") == "healthy")
    (reader,) = reader_children(os.getpid())
    reader.kill()
    killed_at = time.monotonic()
    eventually(lambda: [child.pid for child in reader_children(os.getpid())] not in ([], [reader.pid]), 10)
    # The monitor judged no one meanwhile (a monitor-level event, no outage), then heard the agent again.
    eventually(lambda: state_of(monitor, "steady") == "healthy" and monitor.connected, 15)
    events = [r[0] for r in rows(monitor, "SELECT detail FROM monitor_events WHERE event = 'broker_lost'")]
    assert any("reader process ended" in detail for detail in events)
    assert rows(monitor, "SELECT * FROM outages") == []
    seen = rows(monitor, "SELECT count(*) FROM heartbeats WHERE agent = 'steady'")[0][0]
    eventually(lambda: rows(monitor, "SELECT count(*) FROM heartbeats WHERE agent = 'steady'")[0][0] > seen + 2)
    assert time.monotonic() - killed_at < 30


@pytest.mark.timeout(60)
def test_the_reader_process_ends_with_its_monitor_even_after_kill_9(
    amqtt_broker: BrokerProcess, tmp_path: Path
) -> None:
    port = free_port()
    with cli_process(
        "monitor", "--broker", amqtt_broker.url, "--db", str(tmp_path / "m.duckdb"), "--dashboard-port", str(port)
    ) as process:
        eventually(lambda: len(reader_children(process.pid)) == 1, 30)
        (reader,) = reader_children(process.pid)
        os.kill(process.pid, signal.SIGKILL)  # no atexit, no cleanup: only the pipe closing tells the child
        process.wait()
        reader.wait(timeout=10)  # psutil.TimeoutExpired if the orphan lives on (it would fight the next monitor)


@pytest.mark.timeout(60)
def test_sigterm_to_the_whole_group_is_one_graceful_stop(amqtt_broker: BrokerProcess, tmp_path: Path) -> None:
    # A service manager (systemd's default KillMode) sends SIGTERM to every process of the service.
    db = tmp_path / "group.duckdb"
    with cli_process("monitor", "--broker", amqtt_broker.url, "--db", str(db), "--dashboard-port", "0") as process:
        eventually(lambda: len(reader_children(process.pid)) == 1, 30)
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    store = Store(db, read_only=True)
    try:
        events = store.query("SELECT event, coalesce(detail, '') FROM monitor_events ORDER BY \"at\"")[1]
    finally:
        store.close()
    assert [event for event, _ in events][-1] == "stopped"
    assert not any("reader process ended" in detail for _, detail in events)
