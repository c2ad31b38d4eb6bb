"""Measure what the agent SDK costs the process it monitors: CPU, RSS and `report_metric` throughput.

Run from the repository root: `python -m benchmarks.sdk_overhead [--seconds N]` (default 60; 3 is a
CI smoke run). Two child processes run the same 100 Hz work loop side by side for N seconds, one bare
and one with a started `Agent` heartbeating every second to an in-process embedded broker and calling
`report_metric` once per iteration; their steady-state CPU and RSS are compared. Then `report_metric`
is timed in a tight loop, on one thread and on two. The figures are printed as a table and, on the
last line, as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psutil

from benchmarks._child import EventChild
from benchmarks._overhead_child import AGENT_ID
from fleetpulse.broker import EmbeddedBroker
from fleetpulse.publisher import Agent, ProtocolError
from fleetpulse.publisher.mqtt import make_client, parse_broker_url
from fleetpulse.publisher.protocol import HealthMessage, Kind, health_topic, parse_health

CHILD_MODULE = "benchmarks._overhead_child"
THROUGHPUT_S = 2.0
THROUGHPUT_BATCH = 1_000  # calls between clock reads, so the clock is not what gets measured
THROUGHPUT_WARMUP_CALLS = 10_000  # past the latency reservoir's fill-up: time the steady state
MIB = 1024 * 1024

TARGET_OVERHEAD_CPU_PERCENT = 1.0
TARGET_EXTRA_RSS_MIB = 15.0
TARGET_CALLS_PER_S = 200_000


@dataclass(frozen=True)
class ChildFigures:
    """One child's steady-state loop, between its `ready` and `done` lines."""

    cpu_percent: float  # of one core
    rss_mib: float  # at the end of the loop
    rss_growth_mib: float  # end minus ready
    peak_rss_mib: float | None  # VmHWM over the child's whole life, set-up included; None off Linux
    iterations: int


@dataclass(frozen=True)
class Target:
    """A figure with the limit it should meet, shown as PASS/MISS; never adjusted to pass."""

    name: str
    value: float
    limit: float
    at_least: bool  # True: value must be >= limit; False: value must be < limit

    @property
    def met(self) -> bool:
        return self.value >= self.limit if self.at_least else self.value < self.limit

    def describe(self) -> str:
        sign = ">=" if self.at_least else "<"
        return f"{sign} {self.limit:g}  {'PASS' if self.met else 'MISS'}"


class _Child(EventChild):
    """A `benchmarks._overhead_child` process, read line by line, sampled with psutil while it waits."""

    def __init__(self, mode: str, seconds: float, broker_url: str) -> None:
        super().__init__(f"{mode} child", CHILD_MODULE, mode, str(seconds), broker_url)
        self.mode = mode
        self._ps = psutil.Process(self.pid)

    def rss_bytes(self) -> int:
        return int(self._ps.memory_info().rss)

    def peak_rss_bytes(self) -> int | None:
        """Linux's VmHWM. Not ru_maxrss: Linux carries that across exec, so it would be the parent's peak."""
        status = Path(f"/proc/{self.pid}/status")
        if not status.exists():
            return None
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # "VmHWM:   40872 kB"
        return None

    def finish(self) -> None:
        """Release the child (it is blocked on stdin) and wait for it to exit cleanly."""
        self.send("", close=True)
        self.wait_ok()


class HeartbeatCounter:
    """Subscribes to the bench agent's health topic and counts the distinct heartbeats that arrive."""

    def __init__(self, broker_url: str) -> None:
        self._lock = threading.Lock()
        self._heartbeats: dict[tuple[str, int], HealthMessage] = {}  # keyed by (session, seq): idempotent
        self._stops: list[HealthMessage] = []
        self.stopped = threading.Event()
        self._subscribed = threading.Event()
        url = parse_broker_url(broker_url)
        self._client = make_client(url, client_id="fp-bench-heartbeat-counter")
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.connect(url.host, url.port, keepalive=10)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError(f"could not subscribe to {health_topic(AGENT_ID)} on {url.display}")

    @property
    def heartbeats(self) -> int:
        with self._lock:
            return len(self._heartbeats)

    @property
    def reported_ok(self) -> int:
        """Work items the heartbeats and the final stop carried: proof the metrics really went out."""
        with self._lock:
            messages = [*self._heartbeats.values(), *self._stops]
            return sum(message.metrics.ok for message in messages if message.metrics)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        client.subscribe(health_topic(AGENT_ID), qos=1)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            health = parse_health(message.topic, bytes(message.payload))
        except ProtocolError:
            return
        if health.kind is Kind.STOP:
            with self._lock:
                self._stops.append(health)
            self.stopped.set()
        elif health.kind is Kind.HEARTBEAT and health.seq is not None:
            with self._lock:
                self._heartbeats[(health.session, health.seq)] = health


def _figures(child: _Child, ready: dict[str, Any], rss_at_ready: int, done: dict[str, Any]) -> ChildFigures:
    rss_at_end = child.rss_bytes()
    peak_rss = child.peak_rss_bytes()
    wall_s = done["wall_s"] - ready["wall_s"]
    return ChildFigures(
        cpu_percent=100.0 * (done["cpu_s"] - ready["cpu_s"]) / wall_s,
        rss_mib=rss_at_end / MIB,
        rss_growth_mib=(rss_at_end - rss_at_ready) / MIB,
        peak_rss_mib=None if peak_rss is None else peak_rss / MIB,
        iterations=int(done["iterations"]),
    )


def measure_children(broker_url: str, seconds: float) -> tuple[ChildFigures, ChildFigures]:
    """Run the bare and the SDK loop concurrently (same load on a small machine); (baseline, fleetpulse)."""
    children = [_Child("baseline", seconds, broker_url), _Child("fleetpulse", seconds, broker_url)]
    try:
        readies = [child.read_event("ready") for child in children]
        rss_at_ready = [child.rss_bytes() for child in children]
        figures = [
            _figures(child, ready, rss, child.read_event("done"))
            for child, ready, rss in zip(children, readies, rss_at_ready, strict=True)
        ]
        for child in children:
            child.finish()
    finally:
        for child in children:
            child.kill()
    return figures[0], figures[1]


def report_metric_calls_per_s(seconds: float, threads: int) -> float:
    """Total `report_metric` calls per second from `threads` threads sharing one Agent."""
    # Never started: report_metric only records into the in-memory window, it needs no connection.
    agent = Agent("bench-throughput")
    report: Callable[..., None] = agent.report_metric
    for _ in range(THROUGHPUT_WARMUP_CALLS):
        report(success=True, latency_ms=12.5, cost_usd=0.001, tokens_in=100, tokens_out=20, model="m")
    calls = [0] * threads
    barrier = threading.Barrier(threads + 1)

    def hammer(slot: int) -> None:
        barrier.wait()
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            for _ in range(THROUGHPUT_BATCH):
                report(success=True, latency_ms=12.5, cost_usd=0.001, tokens_in=100, tokens_out=20, model="m")
            calls[slot] += THROUGHPUT_BATCH

    workers = [threading.Thread(target=hammer, args=(slot,)) for slot in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    return sum(calls) / (time.perf_counter() - started)


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU model"


def machine_description() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _table_row(label: str, bare: float | None, sdk: float | None, target: Target | None, spec: str) -> str:
    def cell(value: float | None, width: int) -> str:
        return f"{'n/a':>{width}}" if value is None else f"{value:>{width}{spec}}"

    difference = None if bare is None or sdk is None else sdk - bare
    verdict = target.describe() if target else ""
    return f"{label:28}{cell(bare, 10)}{cell(sdk, 12)}{cell(difference, 12)}   {verdict}".rstrip()


def format_report(
    seconds: float,
    baseline: ChildFigures,
    agent: ChildFigures,
    heartbeats: int,
    reported_ok: int,
    targets: dict[str, Target],
) -> str:
    """The human-readable table; every target is shown next to the figure it judges."""
    machine = machine_description()
    one_thread, two_threads = targets["calls_per_s"], targets["calls_per_s_2_threads"]
    return "\n".join(
        [
            f"fleetpulse SDK overhead: {seconds:g} s loop at 100 Hz, Agent heartbeating every 1 s",
            f"machine: {machine['platform']} ({machine['machine']}), {machine['cpu_count']} CPUs, "
            f"Python {machine['python']}",
            "",
            f"{'':28}{'baseline':>10}{'fleetpulse':>12}{'difference':>12}   target (on the difference)",
            _table_row("CPU, % of one core", baseline.cpu_percent, agent.cpu_percent, targets["overhead_cpu"], ".2f"),
            _table_row("RSS at end, MiB", baseline.rss_mib, agent.rss_mib, targets["extra_rss"], ".1f"),
            _table_row("RSS growth over loop, MiB", baseline.rss_growth_mib, agent.rss_growth_mib, None, ".1f"),
            _table_row("peak RSS, MiB", baseline.peak_rss_mib, agent.peak_rss_mib, None, ".1f"),
            f"{'loop iterations':28}{baseline.iterations:>10}{agent.iterations:>12}",
            "",
            f"heartbeats received: {heartbeats}; with the stop they carried"
            f" {reported_ok} of the {agent.iterations} work items",
            f"report_metric, 1 thread:  {one_thread.value:>12,.0f} calls/s   {one_thread.describe()}",
            f"report_metric, 2 threads: {two_threads.value:>12,.0f} calls/s   {two_threads.describe()}",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sdk_overhead",
        description="Measure what the agent SDK costs: CPU, RSS, report_metric calls/s.",
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the measured loop (default 60)")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be > 0")

    with EmbeddedBroker("127.0.0.1", 0) as embedded:
        counter = HeartbeatCounter(embedded.url)
        try:
            baseline, agent = measure_children(embedded.url, args.seconds)
            counter.stopped.wait(5)  # the stop follows every heartbeat the agent sent
        finally:
            counter.close()
    one_thread = report_metric_calls_per_s(THROUGHPUT_S, 1)
    two_threads = report_metric_calls_per_s(THROUGHPUT_S, 2)

    overhead_cpu = agent.cpu_percent - baseline.cpu_percent
    extra_rss = agent.rss_mib - baseline.rss_mib
    targets = {
        "overhead_cpu": Target("overhead_cpu_percent", overhead_cpu, TARGET_OVERHEAD_CPU_PERCENT, False),
        "extra_rss": Target("extra_rss_mib", extra_rss, TARGET_EXTRA_RSS_MIB, False),
        "calls_per_s": Target("report_metric_calls_per_s", one_thread, TARGET_CALLS_PER_S, True),
        "calls_per_s_2_threads": Target("report_metric_calls_per_s_2_threads", two_threads, TARGET_CALLS_PER_S, True),
    }
    print(format_report(args.seconds, baseline, agent, counter.heartbeats, counter.reported_ok, targets))
    summary = {
        "seconds": args.seconds,
        "baseline_cpu_percent": round(baseline.cpu_percent, 3),
        "agent_cpu_percent": round(agent.cpu_percent, 3),
        "overhead_cpu_percent": round(overhead_cpu, 3),
        "baseline_rss_mib": round(baseline.rss_mib, 2),
        "agent_rss_mib": round(agent.rss_mib, 2),
        "extra_rss_mib": round(extra_rss, 2),
        "baseline_peak_rss_mib": _round(baseline.peak_rss_mib, 2),
        "agent_peak_rss_mib": _round(agent.peak_rss_mib, 2),
        "agent_rss_growth_mib": round(agent.rss_growth_mib, 2),
        "iterations": agent.iterations,
        "heartbeats_received": counter.heartbeats,
        "reported_ok_received": counter.reported_ok,
        "report_metric_calls_per_s": round(one_thread),
        "report_metric_calls_per_s_2_threads": round(two_threads),
        "targets_met": {target.name: target.met for target in targets.values()},
        "machine": machine_description(),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
