"""Measure what one heartbeat costs the monitor's core, without sockets: the whole path and each stage.

Run from the repository root: `python -m benchmarks.core_cost [--agents 1000] [--rounds 100]` (`--rounds 2` is
the CI smoke run). Realistic heartbeats (`benchmarks._ingest_publisher`'s payload: identity, labels, a one-model
metrics window) of `--agents` agents, `--rounds` each, are handed to a `Monitor` that is never started, as
`Received` events straight into its core's handler, and committed in batches of `flush_rows` (5,000) to a fresh
DuckDB file, as the core thread does. No MQTT, no GIL shared with a reader: the core's own ceiling.

Then each stage is timed alone on the same payloads: `parse_health` (pydantic, strict JSON mode), and of it the
JSON decoding alone (`pydantic_core.from_json`); `health.apply_message`; `health.next_check_at` (the tick heap's
scheduling); `WriteBatch.add_message` (the row); `UsageBook.add` (today's figures); and the per-agent rate limit.
The figures are printed as a table and, on the last line, as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydantic_core

from benchmarks._ingest_publisher import heartbeat_template
from benchmarks.sdk_overhead import machine_description
from fleetpulse.monitor.health import Thresholds, apply_message, next_check_at
from fleetpulse.monitor.service import Monitor, MonitorConfig
from fleetpulse.monitor.store import Store, WriteBatch
from fleetpulse.monitor.subscriber import Received
from fleetpulse.monitor.usage import UsageBook
from fleetpulse.publisher.protocol import HealthMessage, format_timestamp, health_topic, parse_health


def _events(agents: int, rounds: int) -> list[Received]:
    now = datetime.now(UTC)
    sent_at = format_timestamp(now)
    templates = [
        (health_topic(f"core-{n}"), heartbeat_template(f"core-{n}", f"session-{n}", "bench-host", 4242))
        for n in range(agents)
    ]
    return [
        Received(topic, (template % {"seq": seq, "sent_at": sent_at}).encode(), False, now)
        for seq in range(rounds)
        for topic, template in templates
    ]


def whole_path_us(events: list[Received], directory: Path) -> tuple[float, float, dict[str, int]]:
    """(handling, committing) in us per heartbeat, through Monitor._handle and Monitor._flush."""
    # The rate limit as configured for production; the rounds come faster than any agent would send them.
    config = MonitorConfig(db_path=directory / "core.duckdb", agent_messages_per_s=1e9, agent_burst=10**9)
    monitor = Monitor(config)
    monitor._store = Store(config.db_path)
    monitor._connected = True  # as after BrokerConnected; never started: nothing else runs
    handling = committing = 0.0
    try:
        pending = WriteBatch()
        for first in range(0, len(events), config.flush_rows):
            begun = time.perf_counter()
            for event in events[first : first + config.flush_rows]:
                monitor._handle(event, pending)
            handled = time.perf_counter()
            # As the core flushes: agents rows only when changed or every few seconds, carried otherwise.
            pending = WriteBatch(agents=monitor._flush(pending))
            handling += handled - begun
            committing += time.perf_counter() - handled
        stats = monitor.stats()
    finally:
        monitor._store.close()
    count = len(events)
    return handling / count * 1e6, committing / count * 1e6, stats


def _per_call_us(items: list[Any], call: Callable[[Any], Any]) -> float:
    begun = time.perf_counter()
    for item in items:
        call(item)
    return (time.perf_counter() - begun) / len(items) * 1e6


def stages_us(events: list[Received]) -> dict[str, float]:
    """Each stage alone, us per heartbeat, on the same payloads."""
    payloads = [(event.topic, event.payload) for event in events]
    messages: list[HealthMessage] = [parse_health(topic, payload) for topic, payload in payloads]
    now = events[0].received_at
    thresholds = Thresholds()
    views: dict[str, Any] = {}

    def apply(message: HealthMessage) -> None:
        views[message.agent] = apply_message(views.get(message.agent), message, now, thresholds)[0]

    batch, usage = WriteBatch(), UsageBook()
    monitor = Monitor(MonitorConfig(agent_messages_per_s=1e9, agent_burst=10**9))
    return {
        "parse_health": _per_call_us(payloads, lambda item: parse_health(*item)),
        "json_decode_only": _per_call_us(payloads, lambda item: pydantic_core.from_json(item[1])),
        "apply_message": _per_call_us(messages, apply),
        "next_check_at": _per_call_us(messages, lambda m: next_check_at(views[m.agent], thresholds)),
        "add_message": _per_call_us(messages, lambda m: batch.add_message(m, now, False)),
        "usage_add": _per_call_us(messages, lambda m: usage.add(m.agent, m.metrics, now)),
        "rate_limit": _per_call_us(events, lambda event: monitor._within_rate(event, batch)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.core_cost", description="What one heartbeat costs the monitor's core."
    )
    parser.add_argument("--agents", type=int, default=1000, help="distinct agents (default 1000)")
    parser.add_argument("--rounds", type=int, default=100, help="heartbeats per agent (default 100)")
    args = parser.parse_args(argv)
    if args.agents < 1 or args.rounds < 1:
        parser.error("need --agents >= 1 and --rounds >= 1")
    events = _events(args.agents, args.rounds)
    with tempfile.TemporaryDirectory(prefix="fleetpulse-core-cost-") as name:
        handling_us, committing_us, stats = whole_path_us(events, Path(name))
    stages = stages_us(events)
    total_us = handling_us + committing_us
    machine = machine_description()
    lines = [
        f"fleetpulse core cost: {len(events):,} heartbeats ({args.agents:,} agents x {args.rounds}), "
        f"{len(events[0].payload)} bytes each, no sockets",
        f"machine: {machine['platform']} ({machine['machine']}), {machine['cpu_count']} CPUs, "
        f"Python {machine['python']}",
        "",
        f"whole path: {total_us:.1f} us a heartbeat ({1e6 / total_us:,.0f}/s on one core): handling "
        f"{handling_us:.1f}, committing {committing_us:.1f}",
        "stages alone, us a heartbeat:",
        *(f"  {stage:18}{us:>8.1f}" for stage, us in stages.items()),
        f"monitor.stats(): {json.dumps(stats, sort_keys=True)}",
    ]
    print("\n".join(lines))
    summary = {
        "heartbeats": len(events),
        "payload_bytes": len(events[0].payload),
        "us_per_heartbeat": round(total_us, 2),
        "per_s": round(1e6 / total_us),
        "handling_us": round(handling_us, 2),
        "committing_us": round(committing_us, 2),
        "stages_us": {stage: round(us, 2) for stage, us in stages.items()},
        "stats": stats,
        "machine": machine,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
