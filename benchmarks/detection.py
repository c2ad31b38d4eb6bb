"""Measure crash detection: from `kill -9` of an agent process to its `unreachable` transition committed in DuckDB.

Run from the repository root: `python -m benchmarks.detection [--kills 50] [--broker amqtt|mosquitto|both]`
(default: 50 kills on each broker; `--kills 3` is the CI smoke run). For each broker (the embedded amqtt
broker in this process, or a Mosquitto process on a free port with its own config) a Monitor runs in this
process on a fresh database, with a transition listener: the monitor calls it on its core thread right after
a batch of transitions is committed, so `time.monotonic()` there is "the row is in DuckDB". Agents are real
SDK agents in their own processes (`benchmarks._crash_child`: 1 s heartbeats, 5 s keep-alive), started ten
at a time; once the monitor lists one as healthy it is SIGKILLed, and the latency is committed minus the
moment `os.kill` returned. Each kill uses a fresh agent id and waits for its own transition, so kills never
overlap. A plain paho subscriber in this process also notes when the broker's will reaches it, which splits
the latency into the broker's part and the monitor's. Percentiles are nearest-rank (with 50 kills, p99 is
the maximum). The figures are printed as a table and, on the last line, as one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from importlib.metadata import version
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from benchmarks._crash_child import INTERVAL_S, KEEPALIVE_S
from benchmarks.sdk_overhead import Target, machine_description
from fleetpulse.broker import EmbeddedBroker
from fleetpulse.broker.mosquitto import MosquittoProcess
from fleetpulse.monitor.health import State, Transition
from fleetpulse.monitor.service import Monitor, MonitorConfig
from fleetpulse.publisher.mqtt import make_client, parse_broker_url
from fleetpulse.publisher.protocol import HEALTH_TOPIC_FILTER

REPO_ROOT = Path(__file__).resolve().parents[1]
CHILD_MODULE = "benchmarks._crash_child"
BROKERS = ("amqtt", "mosquitto")
BATCH = 10  # agents started together (process start-up dominates the run time), then killed one by one
BORN_TIMEOUT_S = 20.0
HEALTHY_TIMEOUT_S = 10.0
DETECTION_TIMEOUT_S = 10.0  # a kill not detected by then counts as undetected
KILL_JITTER_S = 0.1  # random pause before each kill, so kills do not phase-lock with heartbeats or ticks
TARGET_P99_MS = 250.0


@dataclass(frozen=True)
class BrokerFigures:
    """All kills on one broker."""

    broker: str  # "amqtt 0.12.1", "mosquitto 2.0.11"
    latencies_ms: list[float]  # kill -> unreachable transition committed, detected kills only
    will_seen_ms: list[float]  # kill -> will received by a plain paho subscriber
    undetected: int

    @property
    def count(self) -> int:
        return len(self.latencies_ms)

    def percentile_ms(self, fraction: float) -> float:
        return percentile(self.latencies_ms, fraction)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


class UnreachableWatcher:
    """The monitor's transition listener: when each agent's `unreachable` transition was committed."""

    def __init__(self) -> None:
        self._committed: dict[str, float] = {}
        self._changed = threading.Condition()

    def __call__(self, transitions: list[Transition]) -> None:
        committed_at = time.monotonic()  # first thing: the batch was committed just before this call
        with self._changed:
            for transition in transitions:
                if transition.to_state is State.UNREACHABLE:
                    self._committed.setdefault(transition.agent, committed_at)
            self._changed.notify_all()

    def wait(self, agent: str, timeout_s: float) -> float | None:
        with self._changed:
            self._changed.wait_for(lambda: agent in self._committed, timeout_s)
            return self._committed.get(agent)


class WillWatcher:
    """A plain paho subscriber on `agents/+/health`: when each agent's will reached a client of the broker."""

    def __init__(self, broker_url: str) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}
        subscribed = threading.Event()
        url = parse_broker_url(broker_url)
        self._client = make_client(url, client_id=f"fp-bench-will-watcher-{os.getpid()}")
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *args: subscribed.set()
        self._client.connect(url.host, url.port, keepalive=30)
        self._client.subscribe(HEALTH_TOPIC_FILTER, qos=1)
        self._client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError(f"could not subscribe to {HEALTH_TOPIC_FILTER} on {url.display}")

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        seen_at = time.monotonic()
        if b'"kind":"will"' not in message.payload:  # the SDK's compact JSON; no parsing on this path
            return
        agent = message.topic.split("/")[1]
        with self._lock:
            self._seen.setdefault(agent, seen_at)

    def seen_at(self, agent: str) -> float | None:
        with self._lock:
            return self._seen.get(agent)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class CrashChild:
    """One `benchmarks._crash_child` agent process."""

    def __init__(self, broker_url: str, agent_id: str, directory: Path) -> None:
        self.agent_id = agent_id
        args = [sys.executable, "-m", CHILD_MODULE, broker_url, agent_id]
        # The SDK's log goes to a file: shown if the agent fails, kept out of the report otherwise.
        self._log_path = directory / f"{agent_id}.log"
        with self._log_path.open("w") as log:
            self.process = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log, text=True)

    def wait_born(self) -> None:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # the child exits (EOF) if it cannot connect within 10 s
        if not line.startswith("born "):
            code = self.process.wait(timeout=BORN_TIMEOUT_S)
            log = self._log_path.read_text()[-2000:]
            raise RuntimeError(f"agent {self.agent_id} exited with {code} before it was born:\n{log}")

    def kill(self) -> float:
        """SIGKILL; the monotonic time right after the signal was sent."""
        os.kill(self.process.pid, signal.SIGKILL)
        return time.monotonic()

    def reap(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def wait_healthy(monitor: Monitor, agent_ids: list[str]) -> None:
    deadline = time.monotonic() + HEALTHY_TIMEOUT_S
    wanted = set(agent_ids)
    while True:
        healthy = {r["agent"] for r in monitor.list_agents() if r["health_status"] == State.HEALTHY.value}
        if wanted <= healthy:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the monitor does not list {sorted(wanted - healthy)} as healthy")
        time.sleep(0.02)


@contextlib.contextmanager
def running_broker(kind: str, directory: Path) -> Iterator[tuple[str, str]]:
    """(url, description) of a fresh broker of `kind`, stopped on exit."""
    if kind == "amqtt":
        with EmbeddedBroker("127.0.0.1", 0) as embedded:
            yield embedded.url, f"amqtt {version('amqtt')} (embedded)"
    else:
        with MosquittoProcess(directory) as mosquitto:
            yield mosquitto.url, f"mosquitto {mosquitto.version}"


@contextlib.contextmanager
def watched_monitor(kind: str, directory: Path, name: str) -> Iterator[tuple[str, str, Monitor, UnreachableWatcher]]:
    """(url, description, monitor, watcher): a fresh broker of `kind` and a started monitor on it (database
    `name-kind.duckdb`) whose committed `unreachable` transitions `watcher` times; both stopped on exit."""
    with running_broker(kind, directory) as (url, description):
        watcher = UnreachableWatcher()
        monitor = Monitor(MonitorConfig(broker=url, db_path=directory / f"{name}-{kind}.duckdb"))
        monitor.add_listener(watcher)
        monitor.start()
        try:
            yield url, description, monitor, watcher
        finally:
            monitor.stop()


def measure_broker(kind: str, kills: int, directory: Path, jitter: random.Random) -> BrokerFigures:
    """`kills` SIGKILLs of fresh agents on a fresh broker of `kind`, watched by a fresh monitor."""
    latencies_ms: list[float] = []
    will_seen_ms: list[float] = []
    undetected = 0
    with watched_monitor(kind, directory, "bench") as (url, description, monitor, watcher):
        wills = WillWatcher(url)
        children: list[CrashChild] = []
        try:
            deadline = time.monotonic() + 10
            while not monitor.connected and time.monotonic() < deadline:
                time.sleep(0.01)
            done = 0
            while done < kills:
                batch_ids = [f"crash-{kind}-{done + n}" for n in range(min(BATCH, kills - done))]
                children = [CrashChild(url, agent_id, directory) for agent_id in batch_ids]
                for child in children:
                    child.wait_born()
                wait_healthy(monitor, batch_ids)
                for child in children:
                    time.sleep(jitter.uniform(0, KILL_JITTER_S))
                    killed_at = child.kill()
                    committed_at = watcher.wait(child.agent_id, DETECTION_TIMEOUT_S)
                    seen_at = wills.seen_at(child.agent_id)
                    if committed_at is None:
                        undetected += 1
                    else:
                        latencies_ms.append((committed_at - killed_at) * 1000.0)
                    if seen_at is not None:
                        will_seen_ms.append((seen_at - killed_at) * 1000.0)
                    child.reap()
                done += len(children)
                print(f"  {kind}: {done}/{kills} kills", file=sys.stderr, flush=True)
        finally:
            for child in children:
                child.reap()
            wills.close()
    return BrokerFigures(description, latencies_ms, will_seen_ms, undetected)


def monitor_timing() -> dict[str, float]:
    """The default MonitorConfig's timing knobs (`*_s`), which bound the latency measured here."""
    config = MonitorConfig()
    return {
        f.name: getattr(config, f.name)
        for f in fields(config)
        if f.name.endswith("_s") and not f.name.endswith("_per_s") and isinstance(getattr(config, f.name), int | float)
    }


def _ms(value: float) -> str:
    return f"{'n/a':>9}" if math.isnan(value) else f"{value:>9.1f}"


def format_report(kills: int, figures: list[BrokerFigures], targets: list[Target]) -> str:
    machine = machine_description()
    lines = [
        "fleetpulse crash detection: SIGKILL of an agent process -> `unreachable` transition committed in DuckDB",
        f"machine: {machine['platform']} ({machine['machine']}), {machine['cpu_count']} CPUs, "
        f"Python {machine['python']}",
        f"{kills} kills per broker; SDK agents with {INTERVAL_S:g} s heartbeats and {KEEPALIVE_S} s keep-alive, "
        "in-process Monitor with the default MonitorConfig:",
        "  " + ", ".join(f"{name} = {value:g}" for name, value in monitor_timing().items()),
        "",
        f"{'broker':34}{'kills':>6}{'undet.':>7}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'will p50':>10}   target p99 (ms)",
    ]
    for broker, target in zip(figures, targets, strict=True):
        lines.append(
            f"{broker.broker:34}{broker.count + broker.undetected:>6}{broker.undetected:>7}"
            f"{_ms(broker.percentile_ms(0.50))}{_ms(broker.percentile_ms(0.99))}{_ms(broker.percentile_ms(1.0))}"
            f"{_ms(percentile(broker.will_seen_ms, 0.50)):>10}   {target.describe()}"
        )
    lines += [
        "",
        "will p50: kill -> the broker's will reached a plain paho subscriber (the broker's share of the latency)",
        "p99 is nearest-rank: with 50 kills it is the worst one",
    ]
    return "\n".join(lines)


def rounded(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.detection",
        description="Crash-to-unreachable latency: SIGKILL an agent, time its transition into DuckDB.",
    )
    parser.add_argument("--kills", type=int, default=50, help="agent processes killed per broker (default 50)")
    parser.add_argument("--broker", choices=[*BROKERS, "both"], default="both", help="which broker (default both)")
    args = parser.parse_args(argv)
    if args.kills < 1:
        parser.error("--kills must be >= 1")
    kinds = BROKERS if args.broker == "both" else (args.broker,)

    jitter = random.Random(20240601)
    figures: list[BrokerFigures] = []
    with tempfile.TemporaryDirectory(prefix="fleetpulse-detection-") as directory:
        for kind in kinds:
            figures.append(measure_broker(kind, args.kills, Path(directory), jitter))

    targets = [  # an undetected kill is an infinite latency: the target is missed
        Target(
            f"{kind}_p99_ms", broker.percentile_ms(0.99) if not broker.undetected else math.inf, TARGET_P99_MS, False
        )
        for kind, broker in zip(kinds, figures, strict=True)
    ]
    print(format_report(args.kills, figures, targets))
    summary: dict[str, Any] = {"kills": args.kills}
    for kind, broker, target in zip(kinds, figures, targets, strict=True):
        summary[kind] = {
            "broker": broker.broker,
            "count": broker.count,
            "undetected": broker.undetected,
            "p50_ms": rounded(broker.percentile_ms(0.50)),
            "p99_ms": rounded(broker.percentile_ms(0.99)),
            "max_ms": rounded(broker.percentile_ms(1.0)),
            "will_seen_p50_ms": rounded(percentile(broker.will_seen_ms, 0.50)),
            "will_seen_max_ms": rounded(percentile(broker.will_seen_ms, 1.0)),
            "target_met": target.met,
        }
    summary["target_p99_ms"] = TARGET_P99_MS
    summary["monitor_config"] = monitor_timing()
    summary["targets_met"] = {target.name: target.met for target in targets}
    summary["machine"] = machine_description()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
