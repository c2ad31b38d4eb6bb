"""Shared fixtures: real brokers (embedded amqtt and a Mosquitto process) on free ports, and a health recorder."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleetpulse.broker import EmbeddedBroker
from fleetpulse.broker.mosquitto import MONITOR_QUEUE_CONFIG, MosquittoProcess
from fleetpulse.broker.netutil import free_port
from fleetpulse.publisher.protocol import HealthMessage, ProtocolError, parse_health
from tests.http_receiver import Receiver

ROOT = Path(__file__).resolve().parent.parent
IN_CI = bool(os.environ.get("CI"))


_DEBIAN_PACKAGES = {
    "mosquitto_pub": "mosquitto-clients",
    "mosquitto_sub": "mosquitto-clients",
    "mosquitto_passwd": "mosquitto",
}


def require_tool(name: str) -> str:
    """Path of an external tool; a missing tool skips locally but fails in CI, where nothing may be skipped."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        package = _DEBIAN_PACKAGES.get(name, name)
        message = (
            f"{name} is not installed (Debian: apt-get install -y {package}; the README's test command installs it)"
        )
        if IN_CI:
            pytest.fail(f"CI must not skip: {message}")
        pytest.skip(message)
    return path


def sync_playwright() -> Any:
    """playwright's `sync_playwright`; a missing playwright skips locally but fails in CI, like a missing tool."""
    try:
        from playwright.sync_api import sync_playwright as start
    except ImportError:
        message = "playwright is not installed (pip install -e '.[test]')"
        if IN_CI:
            pytest.fail(f"CI must not skip: {message}")
        pytest.skip(message)
    return start


@dataclass
class BrokerProcess:
    """A running broker the tests can stop and start again on the same port."""

    kind: str
    port: int
    stop: Callable[[], None]
    start: Callable[[], None]
    pid: Callable[[], int] | None = None  # the broker's process, where it has its own

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


@pytest.fixture
def amqtt_broker() -> Iterator[BrokerProcess]:
    port = free_port()
    holder = {"broker": EmbeddedBroker("127.0.0.1", port).start()}

    def start() -> None:
        holder["broker"] = EmbeddedBroker("127.0.0.1", port).start()

    yield BrokerProcess("amqtt", port, lambda: holder["broker"].stop(), start)
    holder["broker"].stop()


@pytest.fixture
def mosquitto_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    require_tool("mosquitto")
    mosquitto = MosquittoProcess(tmp_path, MONITOR_QUEUE_CONFIG).start()  # as `mosquitto-config` writes it
    yield BrokerProcess("mosquitto", mosquitto.port, mosquitto.stop, mosquitto.start, lambda: mosquitto.pid)
    mosquitto.stop()


@pytest.fixture(params=["amqtt", "mosquitto"])
def any_broker(request: pytest.FixtureRequest) -> BrokerProcess:
    """Each end-to-end test runs once on the embedded broker and once on Mosquitto."""
    broker: BrokerProcess = request.getfixturevalue(f"{request.param}_broker")
    return broker


@dataclass
class Received:
    message: HealthMessage
    retained: bool
    at: float  # time.monotonic() when the subscriber received it


@dataclass
class HealthRecorder:
    """A plain paho subscriber on `agents/+/health` that parses and keeps everything it receives."""

    received: list[Received] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        try:
            parsed = parse_health(message.topic, message.payload)
        except ProtocolError as error:
            with self._changed:
                self.rejected.append(error.reason)
                self._changed.notify_all()
            return
        with self._changed:
            self.received.append(Received(parsed, bool(message.retain), time.monotonic()))
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[Received], bool], timeout_s: float = 10.0) -> Received:
        """The first received message matching `predicate`, waiting up to `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for item in self.received:
                    if predicate(item):
                        return item
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [(r.message.agent, r.message.kind.value, r.message.seq) for r in self.received]
                    raise AssertionError(f"no matching health message within {timeout_s} s; saw {seen}")
                self._changed.wait(remaining)

    def matching(self, predicate: Callable[[Received], bool]) -> list[Received]:
        with self._changed:
            return [item for item in self.received if predicate(item)]


def subscribe_health(port: int, recorder: HealthRecorder, topic: str = "agents/+/health") -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-recorder-{time.monotonic_ns()}")
    client.on_message = recorder.on_message
    subscribed = threading.Event()
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect("127.0.0.1", port, keepalive=30)
    client.subscribe(topic, qos=1)
    client.loop_start()
    assert subscribed.wait(10), "subscription not acknowledged"
    return client


@pytest.fixture
def recorder_factory() -> Iterator[Callable[[BrokerProcess], HealthRecorder]]:
    clients: list[paho.Client] = []

    def make(broker: BrokerProcess) -> HealthRecorder:
        recorder = HealthRecorder()
        clients.append(subscribe_health(broker.port, recorder))
        return recorder

    yield make
    for client in clients:
        client.disconnect()
        client.loop_stop()


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start a Python subprocess; every one still running at the end is SIGCONTed and SIGKILLed."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
        process.wait(timeout=10)
        if process.stdout:
            process.stdout.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver().start()
    yield running
    running.stop()


@pytest.fixture
def receiver_down() -> Iterator[Receiver]:
    """A receiver whose port nobody listens on yet: connections are refused until the test starts it."""
    down = Receiver()
    yield down
    down.stop()


def read_until(process: subprocess.Popen[str], needle: str, timeout_s: float = 20.0) -> list[str]:
    """Read `process`'s stdout line by line until one contains `needle`; the lines read so far."""
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} not printed within {timeout_s} s; got:\n{''.join(lines)}")


CLI = [sys.executable, "-m", "fleetpulse.monitor.cli"]


@contextlib.contextmanager
def cli_process(*args: str, env: dict[str, str] | None = None, umask: int = -1) -> Iterator[subprocess.Popen[str]]:
    """`fleetpulse ARGS` in a process group of its own, stdout and stderr merged; killed at the end if it still runs.

    `env` replaces the environment, `umask` (unless -1) is the child's.
    """
    process = subprocess.Popen(
        [*CLI, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        cwd=ROOT,
        env=env,
        umask=umask,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        assert process.stdout is not None
        process.stdout.close()
