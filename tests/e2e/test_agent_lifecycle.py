"""The SDK against real brokers (embedded amqtt and Mosquitto): birth, will, stop, reconnect, control, metrics."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleetpulse.broker import EmbeddedBroker
from fleetpulse.broker.netutil import free_port
from fleetpulse.publisher import Agent, ControlCommand
from fleetpulse.publisher.protocol import Command, Kind, ReportedStatus, control_topic
from tests.conftest import BrokerProcess, HealthRecorder, Received, subscribe_health

AGENT_SCRIPT = "tests/e2e/_agent_process.py"
Recorders = Callable[[BrokerProcess], HealthRecorder]


def _of(agent_id: str, kind: Kind | None = None, **fields: object) -> Callable[[Received], bool]:
    def match(item: Received) -> bool:
        message = item.message
        if message.agent != agent_id or (kind is not None and message.kind is not kind):
            return False
        return all(getattr(message, name) == value for name, value in fields.items())

    return match


def _born_session(process) -> str:  # type: ignore[no-untyped-def]
    line = process.stdout.readline().decode()
    assert line.startswith("born "), line
    return line.split()[1]


def _publish_command(
    port: int, agent_id: str, command: Command, reason: str = "test", topic: str | None = None
) -> ControlCommand:
    """Publish one command as an operator would, to the agent's control topic or to `topic`."""
    order = ControlCommand(command=command, id=uuid.uuid4().hex, issued_by="pytest", reason=reason)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-operator-{uuid.uuid4().hex[:6]}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.publish(topic or control_topic(agent_id), order.to_payload(), qos=1).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()
    return order


def test_birth_is_retained_for_a_late_subscriber(any_broker: BrokerProcess, recorder_factory: Recorders) -> None:
    with Agent("late-sub", broker=any_broker.url, interval_s=30, keepalive_s=5, labels={"team": "t"}) as agent:
        recorder = recorder_factory(any_broker)  # subscribes after the birth was published
        birth = recorder.wait_for(_of("late-sub", Kind.HEARTBEAT))
        assert birth.retained
        assert birth.message.seq == 0 and birth.message.is_birth
        assert birth.message.session == agent.session
        assert birth.message.status is ReportedStatus.HEALTHY
        assert birth.message.labels == {"team": "t"}
        assert birth.message.pid == os.getpid()


def test_kill_9_makes_the_broker_publish_the_will_of_the_current_session(
    any_broker: BrokerProcess, recorder_factory: Recorders, spawn: Callable[..., object]
) -> None:
    recorder = recorder_factory(any_broker)
    process = spawn(AGENT_SCRIPT, any_broker.url, "crasher", "30", "10")
    session = _born_session(process)
    recorder.wait_for(_of("crasher", Kind.HEARTBEAT, seq=0, session=session))
    killed_at = time.monotonic()
    os.kill(process.pid, signal.SIGKILL)  # type: ignore[attr-defined]
    will = recorder.wait_for(_of("crasher", Kind.WILL), timeout_s=5)
    assert will.message.session == session
    assert will.message.reason == "will: connection lost"
    # Broker-side detection of a closed socket is immediate on both brokers (SPEC §2): far below keep-alive.
    assert will.at - killed_at < 2.0


@pytest.mark.timeout(60)
def test_sigstop_makes_the_broker_publish_the_will_after_one_and_a_half_keepalives(
    any_broker: BrokerProcess, recorder_factory: Recorders, spawn: Callable[..., object]
) -> None:
    keepalive_s = 2
    recorder = recorder_factory(any_broker)
    process = spawn(AGENT_SCRIPT, any_broker.url, "frozen", "30", str(keepalive_s))
    session = _born_session(process)
    recorder.wait_for(_of("frozen", Kind.HEARTBEAT, seq=0))
    frozen_at = time.monotonic()
    os.kill(process.pid, signal.SIGSTOP)  # type: ignore[attr-defined]
    # amqtt: enforced by broker/embedded.py at exactly 1.5 x keep-alive after the last packet.
    # Mosquitto 2.0 sweeps keep-alives every ~5 s, adding up to 6 s (SPEC §2).
    bound_s = 1.5 * keepalive_s + (1.0 if any_broker.kind == "amqtt" else 7.0)
    will = recorder.wait_for(_of("frozen", Kind.WILL), timeout_s=bound_s + 5)
    assert will.message.session == session
    assert will.at - frozen_at <= bound_s, f"will after {will.at - frozen_at:.2f} s, bound {bound_s} s"


@pytest.mark.timeout(60)
def test_an_idle_but_alive_client_is_not_dropped(any_broker: BrokerProcess, recorder_factory: Recorders) -> None:
    # Heartbeats far apart, keep-alive 1 s: only paho's PINGREQs keep the connection; the enforcement
    # must not mistake that for silence.
    recorder = recorder_factory(any_broker)
    with Agent("idle", broker=any_broker.url, interval_s=60, keepalive_s=1) as agent:
        time.sleep(7)
        assert agent.connected
        assert recorder.matching(_of("idle", Kind.WILL)) == []
        assert len(recorder.matching(_of("idle", Kind.HEARTBEAT, seq=0))) == 1


def test_clean_stop_publishes_stop_and_no_will(any_broker: BrokerProcess, recorder_factory: Recorders) -> None:
    recorder = recorder_factory(any_broker)
    agent = Agent("graceful", broker=any_broker.url, interval_s=30, keepalive_s=1)
    assert agent.start()
    agent.stop("deploy v2")
    stop = recorder.wait_for(_of("graceful", Kind.STOP))
    assert stop.message.reason == "deploy v2"
    assert stop.message.session == agent.session
    time.sleep(2.5)  # more than 1.5 x keep-alive: a will would have fired by now
    assert recorder.matching(_of("graceful", Kind.WILL)) == []


@pytest.mark.timeout(60)
def test_reconnect_after_broker_restart_is_a_new_session_with_a_new_birth_and_will(
    any_broker: BrokerProcess, recorder_factory: Recorders
) -> None:
    agent = Agent("phoenix", broker=any_broker.url, interval_s=30, keepalive_s=2)
    assert agent.start()
    first_session = agent.session
    any_broker.restart()
    recorder = recorder_factory(any_broker)
    rebirth = recorder.wait_for(_of("phoenix", Kind.HEARTBEAT, seq=0), timeout_s=20)
    assert rebirth.message.session != first_session
    assert rebirth.message.session == agent.session
    # The new connection carries a will for the new session: a crash now is announced as that session.
    client = agent._client
    assert client is not None
    client._sock_close()  # an abrupt TCP close, as a crash would leave it
    will = recorder.wait_for(_of("phoenix", Kind.WILL), timeout_s=10)
    assert will.message.session == rebirth.message.session
    agent.stop()


def test_kill_command_runs_the_callback_then_publishes_stop(
    any_broker: BrokerProcess, recorder_factory: Recorders
) -> None:
    recorder = recorder_factory(any_broker)
    called = threading.Event()
    seen: list[ControlCommand] = []

    def on_kill(command: ControlCommand) -> None:
        seen.append(command)
        called.set()

    agent = Agent("victim", broker=any_broker.url, interval_s=30, keepalive_s=2, on_kill=on_kill)
    assert agent.start()
    order = _publish_command(any_broker.port, "victim", Command.KILL, reason="runaway cost")
    assert called.wait(10)
    assert seen[0].id == order.id and seen[0].issued_by == "pytest"
    stop = recorder.wait_for(_of("victim", Kind.STOP))
    assert stop.message.reason == "killed by pytest: runaway cost"
    time.sleep(3.5)
    assert recorder.matching(_of("victim", Kind.WILL)) == []
    assert not agent.connected


def test_kill_without_callback_ends_the_process_after_the_stop(
    any_broker: BrokerProcess, recorder_factory: Recorders, spawn: Callable[..., object]
) -> None:
    recorder = recorder_factory(any_broker)
    process = spawn(AGENT_SCRIPT, any_broker.url, "default-kill", "30", "5")
    _born_session(process)
    _publish_command(any_broker.port, "default-kill", Command.KILL)
    recorder.wait_for(_of("default-kill", Kind.STOP))
    assert process.wait(timeout=10) == -signal.SIGTERM  # type: ignore[attr-defined]


def test_metrics_between_two_heartbeats_arrive_aggregated_in_the_next(
    any_broker: BrokerProcess, recorder_factory: Recorders
) -> None:
    recorder = recorder_factory(any_broker)
    with Agent("worker", broker=any_broker.url, interval_s=1.5, keepalive_s=5) as agent:
        recorder.wait_for(_of("worker", Kind.HEARTBEAT, seq=0))
        # Right after a heartbeat, so all reports land in the same window.
        recorder.wait_for(_of("worker", Kind.HEARTBEAT, seq=1))
        for latency_ms in (100, 200, 300, 400):
            agent.report_metric(success=True, latency_ms=latency_ms, cost_usd=0.01, tokens_in=10, model="m1")
        agent.report_metric(success=False, latency_ms=1000, cost_usd=0.02, tokens_out=5, model="m2")
        with pytest.raises(RuntimeError), agent.task():
            raise RuntimeError("task failed")
        heartbeat = recorder.wait_for(_of("worker", Kind.HEARTBEAT, seq=2), timeout_s=5).message
    metrics = heartbeat.metrics
    assert metrics is not None
    assert (metrics.ok, metrics.failed) == (4, 2)
    assert metrics.cost_usd == pytest.approx(0.06)
    assert (metrics.tokens_in, metrics.tokens_out) == (40, 5)
    # Nearest rank over the 6 samples (~0 ms for the failed task, 100, 200, 300, 400, 1000).
    assert (metrics.latency_ms_p50, metrics.latency_ms_p95) == (200, 1000)
    assert metrics.latency_ms_max == 1000
    assert metrics.by_model["m1"].cost_usd == pytest.approx(0.04)
    assert metrics.by_model["m2"].tokens_out == 5
    assert metrics.last_progress_at is not None


def test_degraded_pause_and_rebirth_are_heartbeated_at_once(
    any_broker: BrokerProcess, recorder_factory: Recorders
) -> None:
    recorder = recorder_factory(any_broker)
    with Agent("moody", broker=any_broker.url, interval_s=60, keepalive_s=5) as agent:
        recorder.wait_for(_of("moody", Kind.HEARTBEAT, seq=0))
        agent.set_degraded("downstream timeout")
        degraded = recorder.wait_for(_of("moody", Kind.HEARTBEAT, seq=1), timeout_s=3).message
        assert (degraded.status, degraded.reason) == (ReportedStatus.DEGRADED, "downstream timeout")
        agent.set_healthy()
        assert recorder.wait_for(_of("moody", Kind.HEARTBEAT, seq=2), timeout_s=3).message.reason is None

        _publish_command(any_broker.port, "moody", Command.PAUSE)
        assert recorder.wait_for(_of("moody", Kind.HEARTBEAT, seq=3), timeout_s=3).message.paused
        assert agent.paused and not agent.wait_if_paused(timeout_s=0.1)
        _publish_command(any_broker.port, "moody", Command.RESUME)
        assert not recorder.wait_for(_of("moody", Kind.HEARTBEAT, seq=4), timeout_s=3).message.paused
        assert agent.wait_if_paused(timeout_s=1)

        _publish_command(any_broker.port, "moody", Command.REBIRTH)
        recorder.wait_for(_of("moody", Kind.HEARTBEAT, seq=5), timeout_s=3)


def test_group_control_reaches_every_replica(any_broker: BrokerProcess) -> None:
    killed: list[str] = []
    replicas = [
        Agent(
            f"refund-{n}",
            broker=any_broker.url,
            group="refunds",
            interval_s=30,
            on_kill=lambda c, n=n: killed.append(n),
        )
        for n in range(2)
    ]
    for replica in replicas:
        assert replica.start()
    _publish_command(any_broker.port, "", Command.KILL, reason="rollout", topic="groups/refunds/control")
    deadline = time.monotonic() + 10
    while len(killed) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(killed) == [0, 1]


@pytest.mark.timeout(60)
def test_start_without_a_broker_returns_false_then_connects_when_it_appears() -> None:
    port = free_port()
    agent = Agent("patient", broker=f"mqtt://127.0.0.1:{port}", interval_s=30, keepalive_s=2)
    assert agent.start(wait_s=0.5) is False  # no exception: monitoring must never stop the agent's work
    with EmbeddedBroker("127.0.0.1", port):
        deadline = time.monotonic() + 30
        while not agent.connected and time.monotonic() < deadline:
            time.sleep(0.1)
        assert agent.connected
        recorder = HealthRecorder()
        client = subscribe_health(port, recorder)
        birth = recorder.wait_for(_of("patient", Kind.HEARTBEAT, seq=0))
        assert birth.retained and birth.message.session == agent.session
        agent.stop()
        client.disconnect()
        client.loop_stop()


def test_an_exception_out_of_the_with_block_is_a_crash_not_a_stop(
    any_broker: BrokerProcess, recorder_factory: Recorders
) -> None:
    recorder = recorder_factory(any_broker)
    with pytest.raises(RuntimeError), Agent("fragile", broker=any_broker.url, interval_s=30) as agent:
        session = agent.session
        raise RuntimeError("database gone")
    last_word = recorder.wait_for(_of("fragile", Kind.HEARTBEAT, seq=1)).message
    assert (last_word.status, last_word.reason) == (ReportedStatus.DEGRADED, "crashed: RuntimeError: database gone")
    will = recorder.wait_for(_of("fragile", Kind.WILL), timeout_s=5).message
    assert will.session == session
    assert recorder.matching(_of("fragile", Kind.STOP)) == []


def test_stop_carries_the_work_reported_after_the_last_heartbeat(
    any_broker: BrokerProcess, recorder_factory: Recorders
) -> None:
    recorder = recorder_factory(any_broker)
    with Agent("finisher", broker=any_broker.url, interval_s=60) as agent:
        agent.report_metric(success=True, latency_ms=5, cost_usd=0.5)
    stop = recorder.wait_for(_of("finisher", Kind.STOP)).message
    assert stop.metrics is not None and (stop.metrics.ok, stop.metrics.cost_usd) == (1, 0.5)
