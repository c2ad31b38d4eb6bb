"""The `fleetpulse` command as an operator runs it: real processes, real ports, real signals."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from fleetpulse.broker.netutil import free_port, wait_for_port
from fleetpulse.publisher.protocol import Command, Kind
from tests.conftest import CLI, BrokerProcess, HealthRecorder, cli_process, read_until
from tests.e2e.test_agent_lifecycle import _of, _publish_command


def test_broker_on_a_taken_port_is_one_line_and_exit_2() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = subprocess.run([*CLI, "broker", "--port", str(port)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"port {port}" in lines[0] and "--port N" in lines[0] and "Traceback" not in result.stderr


def test_bad_arguments_are_one_line_errors() -> None:
    result = subprocess.run(
        [*CLI, "demo", "--broker", "http://nope", "-n", "1"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "scheme must be mqtt:// or mqtts://" in result.stderr and "Traceback" not in result.stderr


def test_up_with_demo_agents_announces_a_kill_9_and_stops_cleanly(tmp_path: Path) -> None:
    port, http_port = free_port(), free_port()
    with cli_process(
        "up",
        "--demo",
        "2",
        "--port",
        str(port),
        "--dashboard-port",
        str(http_port),
        "--db",
        str(tmp_path / "up.duckdb"),
    ) as up:
        lines = read_until(up, "fleet: 2/2 healthy")
        found = (re.search(r"demo agent (\S+) runs as pid (\d+)", line) for line in lines)
        pids = {match[1]: int(match[2]) for match in found if match}
        os.kill(pids["demo-1"], signal.SIGKILL)
        read_until(up, "demo-1: healthy -> unreachable: will: connection lost")
        read_until(up, "fleet: 1/2 healthy (1 unreachable)")
        os.killpg(up.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole process group
        assert up.wait(timeout=30) == 0


def test_demo_agents_obey_the_kill_command(
    any_broker: BrokerProcess, recorder_factory: Callable[[BrokerProcess], HealthRecorder]
) -> None:
    recorder = recorder_factory(any_broker)
    demo = subprocess.Popen(
        [*CLI, "demo", "--broker", any_broker.url, "-n", "2", "--prefix", "cli", "--interval-s", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for agent_id in ("cli-1", "cli-2"):
            recorder.wait_for(_of(agent_id, Kind.HEARTBEAT, seq=1), timeout_s=15)
        _publish_command(any_broker.port, "cli-1", Command.KILL)
        _publish_command(any_broker.port, "cli-2", Command.KILL)
        for agent_id in ("cli-1", "cli-2"):
            assert "killed by pytest" in (recorder.wait_for(_of(agent_id, Kind.STOP)).message.reason or "")
        assert demo.wait(timeout=15) == 0  # every agent killed: the demo process ends by itself
        with_work = recorder.matching(lambda r: r.message.metrics is not None and r.message.metrics.ok > 0)
        assert with_work, "demo agents heartbeat real (simulated) work"
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()


def test_broker_command_serves_until_sigterm() -> None:
    port = free_port()
    broker = subprocess.Popen([*CLI, "broker", "--port", str(port)], stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port)
        broker.send_signal(signal.SIGTERM)
        assert broker.wait(timeout=20) == 0
    finally:
        if broker.poll() is None:
            broker.kill()
            broker.wait()
        assert broker.stderr is not None
        assert "listening on mqtt://127.0.0.1:" in broker.stderr.read()


def test_silences_from_the_command_line_without_a_monitor(tmp_path: Path) -> None:
    db = str(tmp_path / "quiet.duckdb")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args, "--db", db], capture_output=True, text=True, timeout=60)

    added = run("silence", "refund-*", "--for", "2h", "--reason", "planned migration")
    assert added.returncode == 0, added.stderr
    silence_id = re.search(r"silence (\w+) for 'refund-\*'", added.stdout)
    assert silence_id, added.stdout
    listed = run("silences")
    assert "refund-*" in listed.stdout and "planned migration" in listed.stdout
    for bad in (["--for", "soon", "--reason", "x"], ["--for", "2h", "--reason", "  "]):
        refused = run("silence", "x-*", *bad)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert run("unsilence", silence_id[1]).returncode == 0
    assert "no silences in force" in run("silences").stdout
    assert "(removed)" in run("silences", "--all").stdout
    assert run("unsilence", silence_id[1]).returncode == 2
