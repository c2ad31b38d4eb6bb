"""The monitor against real brokers and real agent processes: kill -9, SIGSTOP, silence, restarts, bad input."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleetpulse.broker.mosquitto import MONITOR_QUEUE_CONFIG, MosquittoProcess
from fleetpulse.broker.netutil import free_port
from fleetpulse.monitor.client import MonitorClient, MonitorError
from fleetpulse.monitor.health import ThresholdPolicy, Thresholds
from fleetpulse.monitor.service import Monitor, MonitorConfig
from fleetpulse.monitor.store import Store
from fleetpulse.publisher import Agent
from tests.conftest import CLI, BrokerProcess, require_tool

AGENT_SCRIPT = "tests/e2e/_agent_process.py"
MonitorFactory = Callable[..., Monitor]


def eventually(check: Callable[[], Any], timeout_s: float = 10.0, interval_s: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout_s
    result = None
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval_s)
    raise AssertionError(f"not true within {timeout_s} s (last: {result!r})")


def state_of(monitor: Monitor, agent: str) -> str | None:
    for record in monitor.list_agents():
        if record["agent"] == agent:
            return str(record["health_status"])
    return None


def rows(monitor: Monitor, sql: str, *parameters: Any) -> list[tuple[Any, ...]]:
    return monitor.store.query(sql, list(parameters))[1]


def test_kill_9_opens_one_outage_and_a_restart_closes_it(
    any_broker: BrokerProcess, monitor_factory: MonitorFactory, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    monitor = monitor_factory(any_broker)
    agent = spawn(AGENT_SCRIPT, any_broker.url, "orders", "0.5", "5")
    eventually(lambda: state_of(monitor, "orders") == "healthy")
    os.kill(agent.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    eventually(lambda: state_of(monitor, "orders") == "unreachable", timeout_s=5)
    # The view changes first; the rows are committed right after (wills settle for 0.1 s first).
    expected = [("healthy", "unreachable", "will: connection lost")]
    eventually(lambda: rows(monitor, "SELECT from_state, to_state, reason FROM transitions") == expected)
    assert rows(monitor, "SELECT state, ended_at FROM outages WHERE agent = ?", "orders") == [("unreachable", None)]

    time.sleep(1.5)
    spawn(AGENT_SCRIPT, any_broker.url, "orders", "0.5", "5")
    eventually(lambda: state_of(monitor, "orders") == "healthy")
    gap_s = time.monotonic() - killed_at
    eventually(lambda: rows(monitor, "SELECT count(*) FROM transitions") == [(2,)])
    (state, ended_at, duration_s), *rest = rows(monitor, "SELECT state, ended_at, duration_s FROM outages")
    assert rest == [] and state == "unreachable" and ended_at is not None
    assert gap_s - 1.5 <= duration_s <= gap_s + 0.5
    reasons = [r[0] for r in rows(monitor, 'SELECT reason FROM transitions ORDER BY "at"')]
    assert reasons == ["will: connection lost", "recovered: new session"]


@pytest.mark.timeout(60)
def test_sigstop_is_unreachable_after_one_and_a_half_keepalives(
    any_broker: BrokerProcess, monitor_factory: MonitorFactory, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    monitor = monitor_factory(any_broker)
    agent = spawn(AGENT_SCRIPT, any_broker.url, "frozen", "30", "2")  # heartbeats far apart: the will decides
    eventually(lambda: state_of(monitor, "frozen") == "healthy")
    os.kill(agent.pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    bound_s = 1.5 * 2 + (1.0 if any_broker.kind == "amqtt" else 7.0)  # SPEC §2: Mosquitto sweeps every ~5 s
    eventually(lambda: state_of(monitor, "frozen") == "unreachable", timeout_s=bound_s + 2)
    assert time.monotonic() - frozen_at <= bound_s + 0.5
    eventually(lambda: rows(monitor, "SELECT reason FROM transitions") == [("will: connection lost",)])


def test_a_silent_but_connected_agent_degrades_then_becomes_unreachable_on_the_clock(
    any_broker: BrokerProcess, monitor_factory: MonitorFactory
) -> None:
    monitor = monitor_factory(any_broker)
    with hung_agent(any_broker.port, "hung", interval_s=0.3):
        eventually(lambda: state_of(monitor, "hung") == "healthy")
        eventually(lambda: state_of(monitor, "hung") == "degraded", timeout_s=3)  # 3 x 0.3 s
        eventually(lambda: state_of(monitor, "hung") == "unreachable", timeout_s=5)  # 10 x 0.3 s
    eventually(lambda: rows(monitor, "SELECT count(*) FROM transitions") == [(2,)])
    transitions = rows(monitor, 'SELECT from_state, to_state, reason FROM transitions ORDER BY "at"')
    assert [(t[0], t[1]) for t in transitions] == [("healthy", "degraded"), ("degraded", "unreachable")]
    assert all(t[2].startswith("no heartbeat for ") for t in transitions)


@contextlib.contextmanager
def hung_agent(port: int, agent_id: str, interval_s: float) -> Iterator[None]:
    """A hung agent: its connection lives (paho answers pings) but after its birth it never heartbeats."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"hung-{agent_id}")
    client.connect("127.0.0.1", port, keepalive=5)
    client.loop_start()
    birth = {
        "v": 1, "agent": agent_id, "kind": "heartbeat", "status": "healthy", "session": "s1", "seq": 0,
        "sent_at": datetime.now(UTC).isoformat(), "interval_s": interval_s,
    }  # fmt: skip
    client.publish(f"agents/{agent_id}/health", json.dumps(birth), qos=1, retain=True).wait_for_publish(5)
    try:
        yield
    finally:
        client.disconnect()
        client.loop_stop()


def _run_monitor_process(
    broker: BrokerProcess, db: Path, started: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [*CLI, "monitor", "--broker", broker.url, "--db", str(db), "--dashboard-port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    started.append(process)
    connected = threading.Event()

    def drain() -> None:  # keeps the pipe from filling, and notices the line we wait for
        assert process.stderr is not None
        for line in process.stderr:
            if b"monitor connected to" in line:
                connected.set()

    threading.Thread(target=drain, daemon=True).start()
    assert connected.wait(30), "the monitor process never logged 'monitor connected to'"
    return process


@pytest.mark.timeout(90)
def test_a_monitor_restart_loses_no_heartbeat_and_invents_no_outage(any_broker: BrokerProcess, tmp_path: Path) -> None:
    db = tmp_path / "restart.duckdb"
    started: list[subprocess.Popen[bytes]] = []
    agents = [Agent(f"steady-{n}", broker=any_broker.url, interval_s=0.2, keepalive_s=5) for n in range(3)]
    try:
        monitor = _run_monitor_process(any_broker, db, started)
        for agent in agents:
            assert agent.start()
        time.sleep(2)
        monitor.send_signal(signal.SIGTERM)
        assert monitor.wait(timeout=20) == 0
        time.sleep(2)  # agents keep beating while no monitor listens: the broker queues for its session
        monitor = _run_monitor_process(any_broker, db, started)
        time.sleep(2)
        for agent in agents:
            agent.stop("test over")
        time.sleep(0.5)
        monitor.send_signal(signal.SIGTERM)
        assert monitor.wait(timeout=20) == 0
    finally:  # a failure above must leave no monitor process or agent behind
        for agent in agents:
            agent.stop("test over")
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait(10)

    store = Store(db, read_only=True)
    try:
        for agent in agents:
            (count, distinct, top), *_ = store.query(
                "SELECT count(*), count(DISTINCT seq), max(seq) FROM heartbeats "
                "WHERE agent = ? AND session = ? AND kind = 'heartbeat'",
                [agent.agent_id, agent.session],
            )[1]
            seqs = {row[0] for row in store.query("SELECT seq FROM heartbeats WHERE session = ?", [agent.session])[1]}
            missing = sorted(set(range(top + 1)) - seqs)
            assert count == distinct == top + 1, f"{agent.agent_id}: {count} rows, max seq {top}, missing {missing}"
            assert top >= 20
        assert store.query("SELECT * FROM outages")[1] == []
        to_states = store.query("SELECT DISTINCT to_state FROM transitions")[1]
        assert to_states == [("killed",)]
        events = [r[0] for r in store.query('SELECT event FROM monitor_events ORDER BY "at"')[1]]
        assert events.count("started") == 2 and events.count("stopped") == 2
    finally:
        store.close()


def restart_under_three_agents(broker: BrokerProcess, monitor: Monitor, prefix: str) -> list[Agent]:
    """Three healthy agents, a broker restart, and every agent healthy again in the monitor."""
    # 2 s heartbeats: degraded after 6 s, well beyond the monitor's 3 s probe timeout.
    agents = [Agent(f"{prefix}-{n}", broker=broker.url, interval_s=2, keepalive_s=2) for n in range(3)]
    for agent in agents:
        assert agent.start()
    eventually(lambda: [state_of(monitor, a.agent_id) for a in agents] == ["healthy"] * 3)
    broker.restart()
    # In between, the monitor may or may not have noticed; once it reconnects every agent is back.
    eventually(lambda: monitor.connected and [state_of(monitor, a.agent_id) for a in agents] == ["healthy"] * 3, 30)
    return agents


@pytest.mark.timeout(90)
def test_losing_the_broker_makes_agents_unknown_not_outages(
    any_broker: BrokerProcess, monitor_factory: MonitorFactory
) -> None:
    monitor = monitor_factory(any_broker)
    agents = restart_under_three_agents(any_broker, monitor, "fleet")
    for agent in agents:
        agent.stop()
    eventually(lambda: [state_of(monitor, a.agent_id) for a in agents] == ["killed"] * 3)
    assert rows(monitor, "SELECT * FROM outages") == []
    # The views change first; the transition rows are committed right after.
    eventually(lambda: {r[0] for r in rows(monitor, "SELECT DISTINCT to_state FROM transitions")} == {"killed"})
    events = [r[0] for r in rows(monitor, 'SELECT event FROM monitor_events ORDER BY "at"')]
    assert events.count("broker_lost") == 1 and events.count("broker_connected") == 2


@pytest.mark.mosquitto
def test_a_persistent_mosquitto_restart_is_no_outage_and_the_monitor_goes_on_listening(
    tmp_path: Path, monitor_factory: MonitorFactory
) -> None:
    # With persistence, Mosquitto publishes every client's will as it shuts down (the monitor's own
    # included) and keeps them, retained and queued for the monitor's session, across the restart.
    require_tool("mosquitto")
    persistence = tmp_path / "persistence"
    persistence.mkdir()
    config = (*MONITOR_QUEUE_CONFIG, "persistence true", f"persistence_location {persistence}/")
    mosquitto = MosquittoProcess(tmp_path, (*config, f"user {getpass.getuser()}")).start()
    try:
        broker = BrokerProcess("mosquitto", mosquitto.port, mosquitto.stop, mosquitto.start)
        monitor = monitor_factory(broker)
        agents = restart_under_three_agents(broker, monitor, "persist")
        # Still listening, not taking its old will for a new shutdown: the new sessions' heartbeats are stored.
        sessions = [agent.session for agent in agents]
        eventually(
            lambda: (
                rows(
                    monitor,
                    "SELECT count(DISTINCT session) FROM heartbeats WHERE seq >= 2 AND list_contains(?, session)",
                    sessions,
                )
                == [(3,)]
            ),
            15,
        )
        assert monitor.stats().get("stale_own_wills", 0) >= 1
        assert (
            monitor.stats().get("wills_settled_after_reconnect", 0)
            + monitor.stats().get("wills_discarded_at_broker_shutdown", 0)
            >= 3
        )  # every agent's will was published; none became a transition
        assert rows(monitor, "SELECT * FROM outages") == []
        assert rows(monitor, "SELECT count(*) FROM transitions WHERE to_state = 'unreachable'") == [(0,)]
        for agent in agents:
            agent.stop()
    finally:
        mosquitto.stop()


def test_unknown_while_the_broker_is_gone(amqtt_broker: BrokerProcess, monitor_factory: MonitorFactory) -> None:
    monitor = monitor_factory(amqtt_broker)
    # 2 s: degraded only after 6 s of silence, beyond the 3 s in which the monitor notices a dead broker even
    # on a busy machine (at 0.5 s a late notice under load made a false `degraded` outage).
    with Agent("lonely", broker=amqtt_broker.url, interval_s=2, keepalive_s=2):
        eventually(lambda: state_of(monitor, "lonely") == "healthy")
        amqtt_broker.stop()
        eventually(lambda: state_of(monitor, "lonely") == "unknown", timeout_s=15)
        amqtt_broker.start()
        eventually(lambda: state_of(monitor, "lonely") == "healthy", timeout_s=30)
    assert rows(monitor, "SELECT * FROM outages") == []


def test_bad_input_is_rejected_with_a_reason_and_the_loop_goes_on(
    any_broker: BrokerProcess, monitor_factory: MonitorFactory
) -> None:
    monitor = monitor_factory(any_broker)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="attacker")
    client.connect("127.0.0.1", any_broker.port)
    client.loop_start()
    spoofed = {
        "v": 1,
        "agent": "victim",
        "kind": "will",
        "session": "x",
        "sent_at": "2026-01-01T00:00:00Z",
        "interval_s": 1,
    }
    for topic, payload in [
        ("agents/evil/health", b"{not json"),
        ("agents/evil/health", b'{"v": 1, "agent": "evil", "kind": "heartbeat", "seq": "1"}'),
        ("agents/evil/health", json.dumps(spoofed).encode()),
        ("agents/evil/health", b"x" * 20_000),
        ("agents/bad id/health", b"{}"),
        ("agents/evil/control", b'{"command": "explode"}'),
    ]:
        client.publish(topic, payload, qos=1).wait_for_publish(5)
    with Agent("victim", broker=any_broker.url, interval_s=30):
        eventually(lambda: state_of(monitor, "victim") == "healthy")
    client.disconnect()
    client.loop_stop()
    rejected = eventually(lambda: rows(monitor, "SELECT topic, reason FROM rejected ORDER BY received_at"), 5)
    eventually(lambda: len(rows(monitor, "SELECT * FROM rejected")) == 6, 5)
    reasons = " | ".join(r[1] for r in rows(monitor, "SELECT topic, reason FROM rejected"))
    for expected in ("malformed JSON", "seq", "spoofed agent id", "exceeds", "invalid agent id", "command must be"):
        assert expected in reasons
    assert rejected
    assert state_of(monitor, "evil") is None
    assert monitor.stats()["rejected"] == 6


def test_the_retained_snapshot_restores_state_without_transitions(
    any_broker: BrokerProcess, monitor_factory: MonitorFactory, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    alive = Agent("alive", broker=any_broker.url, interval_s=30)
    assert alive.start()
    dead = spawn(AGENT_SCRIPT, any_broker.url, "dead", "30", "5")
    assert dead.stdout is not None and dead.stdout.readline().startswith(b"born")
    dead.kill()
    dead.wait()
    time.sleep(0.3)  # the broker publishes and retains the will
    monitor = monitor_factory(any_broker)
    eventually(lambda: (state_of(monitor, "alive"), state_of(monitor, "dead")) == ("healthy", "unreachable"))
    time.sleep(0.5)
    assert rows(monitor, "SELECT * FROM transitions") == []
    # amqtt delivers retained messages twice: still one row per message.
    assert rows(monitor, "SELECT count(*), count(DISTINCT (session, seq)) FROM heartbeats WHERE agent = 'alive'") == [
        (1, 1)
    ]
    alive.stop()


def test_commands_are_recorded_in_the_audit_log(any_broker: BrokerProcess, monitor_factory: MonitorFactory) -> None:
    monitor = monitor_factory(any_broker)
    with Agent("obedient", broker=any_broker.url, interval_s=30, on_kill=lambda command: None):
        eventually(lambda: state_of(monitor, "obedient") == "healthy")
        result = subprocess.run(
            [*CLI, "pause", "obedient", "--reason", "cost spike", "--broker", any_broker.url, "--issued-by", "ops"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert "obedient confirmed pause" in result.stdout
        result = subprocess.run(
            [*CLI, "kill", "obedient", "--reason", "runaway", "--broker", any_broker.url],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        eventually(lambda: state_of(monitor, "obedient") == "killed")
    audit = eventually(
        lambda: rows(monitor, 'SELECT target, command, issued_by, reason FROM commands ORDER BY "at"'), 5
    )
    eventually(lambda: len(rows(monitor, "SELECT * FROM commands")) == 2, 5)
    audit = rows(monitor, 'SELECT target, command, issued_by, reason FROM commands ORDER BY "at"')
    assert audit[0] == ("agents/obedient", "pause", "ops", "cost spike")
    assert audit[1][:2] == ("agents/obedient", "kill") and audit[1][3] == "runaway"
    reason = rows(monitor, "SELECT reason FROM transitions WHERE to_state = 'killed'")[0][0]
    assert reason.startswith("stopped: killed by ") and reason.endswith(": runaway")


def test_per_agent_thresholds_override_the_defaults(
    amqtt_broker: BrokerProcess, monitor_factory: MonitorFactory
) -> None:
    policy = ThresholdPolicy(overrides=(("patient-*", Thresholds(degraded_after_s=60, unreachable_after_s=120)),))
    monitor = monitor_factory(amqtt_broker, thresholds=policy)
    with hung_agent(amqtt_broker.port, "quick-1", 0.2), hung_agent(amqtt_broker.port, "patient-1", 0.2):
        eventually(lambda: state_of(monitor, "quick-1") == "degraded", timeout_s=3)
        assert state_of(monitor, "patient-1") == "healthy"


def test_the_http_api_and_monitor_client(any_broker: BrokerProcess, tmp_path: Path) -> None:
    from fleetpulse.monitor.api import ApiServer

    monitor = Monitor(MonitorConfig(broker=any_broker.url, db_path=tmp_path / "api.duckdb", tick_interval_s=0.1))
    api = ApiServer(monitor, "127.0.0.1", 0).start()
    monitor.start(api_url=api.url)
    try:
        with Agent("api-agent", broker=any_broker.url, interval_s=30, display_name="API agent", group="apis"):
            client = MonitorClient(api.url)
            agents = eventually(lambda: client.list_agents())
            record = agents[0]
            for key in ("agent", "display_name", "health_status", "last_heartbeat_at", "reason", "host", "group"):
                assert key in record
            assert (record["display_name"], record["health_status"], record["group"]) == (
                "API agent",
                "healthy",
                "apis",
            )
            assert datetime.fromisoformat(record["last_heartbeat_at"]).tzinfo is not None
            assert client.status()["summary"]["healthy"] == 1
            assert client.agent("api-agent")["agent"] == "api-agent"
            with pytest.raises(MonitorError) as missing:
                client.agent("nobody")
            assert missing.value.status == 404
            result = eventually(lambda: client.sql("SELECT agent, kind FROM heartbeats"))
            eventually(lambda: client.sql("SELECT agent, kind FROM heartbeats")["rows"] == [["api-agent", "heartbeat"]])
            assert result["columns"] == ["agent", "kind"]
            for statement in ("DELETE FROM heartbeats", "DROP TABLE agents", "SELECT 1; DELETE FROM agents"):
                with pytest.raises(MonitorError) as refused:
                    client.sql(statement)
                assert refused.value.status == 403
            assert client.sql("SELECT count(*) FROM heartbeats")["rows"] == [[1]]
            with pytest.raises(MonitorError) as broken:
                client.sql("SELECT * FROM no_such_table")
            assert broken.value.status == 400
        eventually(lambda: client.list_agents()[0]["health_status"] == "killed")
        assert client.outages() == []
        assert client.outages(since="7d") == []
    finally:
        monitor.stop()
        api.stop()


def test_cli_reads_history_from_the_file_when_no_monitor_runs(
    amqtt_broker: BrokerProcess, monitor_factory: MonitorFactory, tmp_path: Path, spawn: Callable[..., Any]
) -> None:
    db = tmp_path / "offline.duckdb"
    monitor = monitor_factory(amqtt_broker, db=db)
    agent = spawn(AGENT_SCRIPT, amqtt_broker.url, "flaky", "0.5", "5")
    eventually(lambda: state_of(monitor, "flaky") == "healthy")
    agent.kill()
    eventually(lambda: state_of(monitor, "flaky") == "unreachable")
    monitor.stop()

    result = subprocess.run([*CLI, "outages", "--db", str(db), "--json"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    (outage,) = json.loads(result.stdout)
    assert (outage["agent"], outage["state"], outage["ended_at"]) == ("flaky", "unreachable", None)
    result = subprocess.run(
        [*CLI, "sql", "SELECT to_state FROM transitions", "--db", str(db), "--json"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert json.loads(result.stdout)["rows"] == [["unreachable"]]
    result = subprocess.run(
        [*CLI, "sql", "UPDATE agents SET state = 'healthy'", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "only read-only SELECT" in result.stderr


def test_cli_status_from_the_broker_snapshot(amqtt_broker: BrokerProcess, tmp_path: Path) -> None:
    with Agent("snap", broker=amqtt_broker.url, interval_s=30, display_name="Snapshot"):
        result = subprocess.run(
            [*CLI, "status", "--json", "--broker", amqtt_broker.url, "--db", str(tmp_path / "none.duckdb")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["summary"]["healthy"] == 1
    assert [(a["agent"], a["display_name"], a["health_status"]) for a in document["agents"]] == [
        ("snap", "Snapshot", "healthy")
    ]


def test_cli_says_which_monitor_holds_the_file(amqtt_broker: BrokerProcess, tmp_path: Path) -> None:
    db = tmp_path / "held.duckdb"
    port = free_port()
    holder = subprocess.Popen(
        [*CLI, "monitor", "--broker", amqtt_broker.url, "--db", str(db), "--dashboard-port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        eventually(lambda: (db.parent / (db.name + ".monitor.json")).exists())
        time.sleep(0.5)
        # A monitor holds the file: questions go to its API.
        result = subprocess.run([*CLI, "outages", "--db", str(db)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and "no outages" in result.stdout, result.stderr
        # A second monitor on the same file: one line naming the holder.
        second = subprocess.run(
            [*CLI, "monitor", "--broker", amqtt_broker.url, "--db", str(db), "--dashboard-port", "0"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert second.returncode == 2
        assert f"is held by process {holder.pid}" in second.stderr and "Traceback" not in second.stderr
    finally:
        holder.send_signal(signal.SIGTERM)
        assert holder.wait(timeout=20) == 0


def test_a_restart_resumes_an_open_outage_instead_of_opening_a_new_one(
    any_broker: BrokerProcess, tmp_path: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    db = tmp_path / "resume.duckdb"
    monitor = Monitor(MonitorConfig(broker=any_broker.url, db_path=db, tick_interval_s=0.1)).start()
    eventually(lambda: monitor.connected)
    agent = spawn(AGENT_SCRIPT, any_broker.url, "gone", "0.5", "5")
    eventually(lambda: state_of(monitor, "gone") == "healthy")
    agent.kill()
    eventually(lambda: rows(monitor, "SELECT count(*) FROM outages WHERE ended_at IS NULL") == [(1,)])
    (started_at,) = rows(monitor, "SELECT started_at FROM outages")[0]
    monitor.stop()

    again = Monitor(MonitorConfig(broker=any_broker.url, db_path=db, tick_interval_s=0.1)).start()
    try:
        eventually(lambda: state_of(again, "gone") == "unreachable")  # the retained will restores it
        time.sleep(2)  # > degraded_after (1.5 s): the clock had its chance to invent something
        assert rows(again, "SELECT started_at, ended_at FROM outages") == [(started_at, None)]
        assert rows(again, "SELECT count(*) FROM transitions") == [(1,)]
    finally:
        again.stop()


def test_a_graceful_stop_leaves_the_presence_offline(amqtt_broker: BrokerProcess, tmp_path: Path) -> None:
    monitor = Monitor(MonitorConfig(broker=amqtt_broker.url, db_path=tmp_path / "p.duckdb")).start()
    eventually(lambda: monitor.connected)
    seen: list[dict[str, Any]] = []

    def watch() -> paho.Client:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"presence-{len(seen)}-{time.monotonic_ns()}")
        client.on_message = lambda c, u, m: seen.append(json.loads(m.payload))
        client.connect("127.0.0.1", amqtt_broker.port)
        client.subscribe("fleetpulse/monitor/+/status", qos=1)
        client.loop_start()
        return client

    watcher = watch()
    eventually(lambda: any(p["state"] == "online" for p in seen))
    monitor.stop()
    eventually(lambda: any(p["state"] == "offline" and p["reason"] == "stopped" for p in seen))
    watcher.disconnect()
    watcher.loop_stop()
    seen.clear()
    late = watch()  # a newcomer learns from the retained message that the monitor is gone
    eventually(lambda: seen and seen[-1]["state"] == "offline")
    late.disconnect()
    late.loop_stop()


@pytest.mark.timeout(90)
def test_a_frozen_broker_makes_agents_unknown_then_known_again_without_outages(
    mosquitto_broker: BrokerProcess, monitor_factory: MonitorFactory
) -> None:
    # The nastiest broker failure: the process hangs (SIGSTOP), every TCP connection stays open, nothing
    # is delivered. paho would notice after 1.5 x keep-alive; the monitor's probe notices in 3 s.
    assert mosquitto_broker.pid is not None
    monitor = monitor_factory(mosquitto_broker)
    agents = [Agent(f"calm-{n}", broker=mosquitto_broker.url, interval_s=2, keepalive_s=30) for n in range(2)]
    for agent in agents:
        assert agent.start()
    eventually(lambda: [state_of(monitor, a.agent_id) for a in agents] == ["healthy"] * 2)
    os.kill(mosquitto_broker.pid(), signal.SIGSTOP)
    try:
        eventually(lambda: [state_of(monitor, a.agent_id) for a in agents] == ["unknown"] * 2, timeout_s=6)
        time.sleep(4)  # past degraded_after (6 s) since the last heartbeats: still unknown, not degraded
        assert [state_of(monitor, a.agent_id) for a in agents] == ["unknown"] * 2
    finally:
        os.kill(mosquitto_broker.pid(), signal.SIGCONT)
    eventually(lambda: [state_of(monitor, a.agent_id) for a in agents] == ["healthy"] * 2, timeout_s=15)
    for agent in agents:
        agent.stop()
    assert rows(monitor, "SELECT * FROM outages") == []
    events = [r[0] for r in rows(monitor, 'SELECT event FROM monitor_events ORDER BY "at"')]
    assert events.count("broker_lost") == 1


QUEUED = 8_000


@pytest.mark.timeout(90)
@pytest.mark.parametrize("reader_process", [False, True], ids=["reader-thread", "reader-process"])
def test_a_backlog_behind_the_probe_is_no_broker_silence(
    mosquitto_broker: BrokerProcess, monitor_factory: MonitorFactory, tmp_path: Path, reader_process: bool
) -> None:
    # After a restart the broker delivers the queued backlog first, and the probe waits its turn behind
    # it: a broker that is draining a backlog into the monitor is delivering, not silent. The reader
    # process reads faster than the core stores, so it also holds back (backpressure) meanwhile.
    db = tmp_path / "backlog.duckdb"
    monitor_factory(mosquitto_broker, db=db, reader_process=reader_process).stop()  # the broker queues for it
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="backlog-publisher")
    client.connect("127.0.0.1", mosquitto_broker.port)
    client.loop_start()
    template = json.dumps(
        {"v": 1, "agent": "AGENT", "kind": "heartbeat", "status": "healthy", "session": "s", "seq": 0,
         "sent_at": datetime.now(UTC).isoformat(), "interval_s": 30, "labels": {"pad": "x" * 400}}
    )  # fmt: skip
    infos = []
    for n in range(QUEUED):  # 400 agents x 20 heartbeats, ~0.5 KB each
        payload = template.replace('"AGENT"', f'"queued-{n % 400}"').replace('"seq": 0', f'"seq": {n // 400}')
        infos.append(client.publish(f"agents/queued-{n % 400}/health", payload, qos=1))
    for info in infos:
        info.wait_for_publish(30)
    client.disconnect()
    client.loop_stop()
    # A probe that must come back within 0.3 s: well under what the drain takes on any machine here.
    monitor = monitor_factory(mosquitto_broker, db=db, probe_timeout_s=0.3, reader_process=reader_process)
    eventually(lambda: monitor.stats().get("rows_stored", 0) >= QUEUED, timeout_s=60)
    events = [r[0] for r in rows(monitor, 'SELECT event FROM monitor_events ORDER BY "at"')]
    assert "broker_lost" not in events
    assert monitor.stats().get("rows_stored") == QUEUED and not monitor.stats().get("transitions")
