"""Measure the on-call latency: from `kill -9` of an agent process to its alert webhook POST arriving over HTTP.

Run from the repository root: `python -m benchmarks.alert_latency [--kills 50] [--broker amqtt|mosquitto|both]`
(default: 50 kills on each broker; `--kills 3 --broker amqtt` is the CI smoke run). The set-up is the one of
`benchmarks.detection` (a fresh broker, an in-process Monitor on a fresh database, real SDK agents in their own
processes started ten at a time, each SIGKILLed once the monitor lists it as healthy, with a random pause of
up to 0.1 s first), plus a webhook: the monitor runs with `notify=(receiver URL,)` and the default alert
settings, and a plain `http.server` on 127.0.0.1 in this process takes `time.monotonic()` as the first thing
it does with each POST (request line and headers read, body not yet). The latency is the arrival of the
`trigger` webhook for the killed agent minus the moment `os.kill` returned; the next kill waits for it.

Every kill uses a fresh agent id, so each kill is its own incident and the default flap damping (4 incidents
in 10 min make an agent "flapping") never applies; the alert settings stay the defaults. Two more clocks split
the latency: a plain paho subscriber notes when the broker's will reaches a client (the broker's part), and
the monitor's transition listener notes when the `unreachable` transition was committed to DuckDB. The monitor
calls its listeners after it has handed the batch to alerting (which queues the webhook on the channel's own
thread and stores the open incident), so "committed" is a little late and "committed -> webhook" a little
short; a webhook may even arrive before the listener runs (a negative share). Percentiles are nearest-rank
(with 50 kills, p99 is the maximum). The figures are printed as tables and, on the last line, as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from benchmarks._crash_child import INTERVAL_S, KEEPALIVE_S
from benchmarks.detection import (
    BATCH,
    BROKERS,
    KILL_JITTER_S,
    CrashChild,
    UnreachableWatcher,
    WillWatcher,
    monitor_timing,
    percentile,
    rounded,
    running_broker,
    wait_healthy,
)
from benchmarks.sdk_overhead import Target, cpu_model, machine_description
from fleetpulse.monitor.service import Monitor, MonitorConfig

ALERT_TIMEOUT_S = 10.0  # a kill without its trigger webhook by then counts as unalerted
COMMITTED_GRACE_S = 2.0  # the listener may run just after the webhook arrived: wait this long for it
TARGET_P99_MS = 500.0
SEGMENTS = ("kill -> will seen", "will -> committed", "committed -> webhook")


class WebhookReceiver:
    """An HTTP endpoint on 127.0.0.1 (free port) noting when each agent's first `trigger` webhook arrived."""

    def __init__(self) -> None:
        self._arrived: dict[str, float] = {}
        self.events: Counter[str] = Counter()  # every webhook by its `event`, to spot anything unexpected
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                arrived_at = time.monotonic()  # first thing: the request line and headers are in, the body not yet
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                receiver._note(arrived_at, body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        # Port 0: the kernel picks a free port when binding, so no other process can take it in between.
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="bench-webhook-receiver", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def _note(self, arrived_at: float, body: bytes) -> None:
        try:
            document = json.loads(body)
            event, agent = str(document["event"]), str(document["agent"])
        except (ValueError, KeyError, TypeError):
            event, agent = "unreadable", ""
        with self._changed:
            self.events[event] += 1
            if event == "trigger":
                self._arrived.setdefault(agent, arrived_at)
            self._changed.notify_all()

    def wait_trigger(self, agent: str, timeout_s: float) -> float | None:
        with self._changed:
            self._changed.wait_for(lambda: agent in self._arrived, timeout_s)
            return self._arrived.get(agent)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@dataclass(frozen=True)
class KillTimes:
    """The monotonic clock readings of one kill; None where that point was never reached."""

    killed_at: float
    will_seen_at: float | None  # the broker's will reached a plain paho subscriber
    committed_at: float | None  # the monitor's transition listener ran for the `unreachable` transition
    webhook_at: float | None  # the `trigger` POST reached the receiver

    def segments_ms(self) -> tuple[float, float, float] | None:
        """The three shares of the latency (SEGMENTS order), if every point was seen."""
        if self.will_seen_at is None or self.committed_at is None or self.webhook_at is None:
            return None
        return (
            (self.will_seen_at - self.killed_at) * 1000.0,
            (self.committed_at - self.will_seen_at) * 1000.0,
            (self.webhook_at - self.committed_at) * 1000.0,
        )


@dataclass(frozen=True)
class BrokerFigures:
    """All kills on one broker."""

    broker: str  # "amqtt 0.12.1 (embedded)", "mosquitto 2.0.11"
    kills: list[KillTimes]
    webhook_events: dict[str, int]

    @property
    def latencies_ms(self) -> list[float]:
        """Kill -> trigger webhook arrived, alerted kills only."""
        return [(kill.webhook_at - kill.killed_at) * 1000.0 for kill in self.kills if kill.webhook_at is not None]

    @property
    def unalerted(self) -> int:
        return sum(1 for kill in self.kills if kill.webhook_at is None)

    def percentile_ms(self, fraction: float) -> float:
        return percentile(self.latencies_ms, fraction)

    def segment_ms(self, index: int) -> list[float]:
        return [segments[index] for kill in self.kills if (segments := kill.segments_ms()) is not None]


def measure_broker(kind: str, kills: int, directory: Path, jitter: random.Random) -> BrokerFigures:
    """`kills` SIGKILLs of fresh agents on a fresh broker of `kind`, each waited for until its webhook arrives."""
    times: list[KillTimes] = []
    with running_broker(kind, directory) as (url, description):
        receiver = WebhookReceiver()
        watcher = UnreachableWatcher()
        config = MonitorConfig(broker=url, db_path=directory / f"alert-{kind}.duckdb", notify=(receiver.url,))
        monitor = Monitor(config)
        monitor.add_listener(watcher)
        monitor.start()
        wills = WillWatcher(url)
        children: list[CrashChild] = []
        try:
            deadline = time.monotonic() + 10
            while not monitor.connected and time.monotonic() < deadline:
                time.sleep(0.01)
            done = 0
            while done < kills:
                batch_ids = [f"alert-{kind}-{done + n}" for n in range(min(BATCH, kills - done))]
                children = [CrashChild(url, agent_id, directory) for agent_id in batch_ids]
                for child in children:
                    child.wait_born()
                wait_healthy(monitor, batch_ids)
                for child in children:
                    time.sleep(jitter.uniform(0, KILL_JITTER_S))
                    killed_at = child.kill()
                    webhook_at = receiver.wait_trigger(child.agent_id, ALERT_TIMEOUT_S)
                    committed_at = watcher.wait(child.agent_id, COMMITTED_GRACE_S)
                    times.append(KillTimes(killed_at, wills.seen_at(child.agent_id), committed_at, webhook_at))
                    child.reap()
                done += len(children)
                print(f"  {kind}: {done}/{kills} kills", file=sys.stderr, flush=True)
        finally:
            for child in children:
                child.reap()
            wills.close()
            monitor.stop()
            receiver.close()
    return BrokerFigures(description, times, dict(receiver.events))


def _knob(value: float | tuple[float, ...]) -> str:
    # alert_backoff_s is a tuple of waits, the other knobs single numbers.
    return ", ".join(f"{wait_s:g}" for wait_s in value).join("()") if isinstance(value, tuple) else f"{value:g}"


def _ms(value: float) -> str:
    return f"{'n/a':>9}" if math.isnan(value) else f"{value:>9.1f}"


def format_report(kills: int, figures: list[BrokerFigures], targets: list[Target]) -> str:
    machine = machine_description()
    timing = monitor_timing()
    lines = [
        "fleetpulse alert latency: SIGKILL of an agent process -> its `trigger` webhook POST arriving over HTTP",
        f"machine: {machine['platform']} ({machine['machine']}), {machine['cpu_count']} CPUs ({cpu_model()}), "
        f"Python {machine['python']}",
        f"{kills} kills per broker, a fresh agent id per kill; SDK agents with {INTERVAL_S:g} s heartbeats and "
        f"{KEEPALIVE_S} s keep-alive;",
        "in-process Monitor with the default MonitorConfig and alert settings, notify = one webhook to an",
        "http.server on 127.0.0.1 in this process:",
        *textwrap.wrap(
            ", ".join(f"{name} = {_knob(value)}" for name, value in timing.items()),
            width=110,
            initial_indent="  ",
            subsequent_indent="  ",
        ),
        f"note: the monitor holds each will for will_settle_s = {timing['will_settle_s']:g} s before acting on it",
        "  (a broker shutting down publishes every client's will first): that deliberate wait is part of every",
        "  figure below, inside `will -> committed`",
        "",
        f"{'broker':34}{'kills':>6}{'lost':>6}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}   target p99 (ms)",
    ]
    for broker, target in zip(figures, targets, strict=True):
        lines.append(
            f"{broker.broker:34}{len(broker.kills):>6}{broker.unalerted:>6}"
            f"{_ms(broker.percentile_ms(0.50))}{_ms(broker.percentile_ms(0.90))}"
            f"{_ms(broker.percentile_ms(0.99))}{_ms(broker.percentile_ms(1.0))}   {target.describe()}"
        )
    lines += ["", "breakdown, ms (p50 / p90 / max of each share, per kill):"]
    lines.append(f"{'broker':34}" + "".join(f"{segment:>26}" for segment in SEGMENTS))
    for broker in figures:
        cells = []
        for index in range(len(SEGMENTS)):
            shares = broker.segment_ms(index)
            cells.append(
                f"{percentile(shares, 0.5):.1f} / {percentile(shares, 0.9):.1f} / {percentile(shares, 1.0):.1f}"
            )
        lines.append(f"{broker.broker:34}" + "".join(f"{cell:>26}" for cell in cells))
    lines += [
        "",
        "webhooks received: "
        + "; ".join(
            f"{broker.broker}: "
            + ", ".join(f"{event} {count}" for event, count in sorted(broker.webhook_events.items()))
            for broker in figures
        ),
        f"lost: kills with no trigger webhook within {ALERT_TIMEOUT_S:g} s; "
        "p99 is nearest-rank: with 50 kills it is the worst one",
        "will seen: by a plain paho subscriber; committed: the monitor's transition listener, which runs after the",
        "  alert was queued, so `committed -> webhook` is a lower bound of the delivery share",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.alert_latency",
        description="On-call latency: SIGKILL an agent, time its alert webhook POST arriving at an HTTP receiver.",
    )
    parser.add_argument("--kills", type=int, default=50, help="agent processes killed per broker (default 50)")
    parser.add_argument("--broker", choices=[*BROKERS, "both"], default="both", help="which broker (default both)")
    args = parser.parse_args(argv)
    if args.kills < 1:
        parser.error("--kills must be >= 1")
    kinds = BROKERS if args.broker == "both" else (args.broker,)

    jitter = random.Random(20240601)
    figures: list[BrokerFigures] = []
    with tempfile.TemporaryDirectory(prefix="fleetpulse-alert-latency-") as directory:
        for kind in kinds:
            figures.append(measure_broker(kind, args.kills, Path(directory), jitter))

    targets = [  # a kill that never alerted is an infinite latency: the target is missed
        Target(f"{kind}_p99_ms", broker.percentile_ms(0.99) if not broker.unalerted else math.inf, TARGET_P99_MS, False)
        for kind, broker in zip(kinds, figures, strict=True)
    ]
    print(format_report(args.kills, figures, targets))
    met = all(target.met for target in targets)
    print(f"target p99 < {TARGET_P99_MS:g} ms on every broker run: {'met' if met else 'NOT met'}")
    summary: dict[str, Any] = {"kills": args.kills}
    for kind, broker, target in zip(kinds, figures, targets, strict=True):
        summary[kind] = {
            "broker": broker.broker,
            "count": len(broker.latencies_ms),
            "unalerted": broker.unalerted,
            "p50_ms": rounded(broker.percentile_ms(0.50)),
            "p90_ms": rounded(broker.percentile_ms(0.90)),
            "p99_ms": rounded(broker.percentile_ms(0.99)),
            "max_ms": rounded(broker.percentile_ms(1.0)),
            "breakdown_p50_ms": {
                segment: rounded(percentile(broker.segment_ms(index), 0.5)) for index, segment in enumerate(SEGMENTS)
            },
            "webhook_events": broker.webhook_events,
            "target_met": target.met,
        }
    summary["target_p99_ms"] = TARGET_P99_MS
    summary["targets_met"] = {target.name: target.met for target in targets}
    summary["fresh_agent_id_per_kill"] = True
    summary["monitor_config"] = monitor_timing()
    summary["machine"] = machine_description() | {"cpu_model": cpu_model()}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
