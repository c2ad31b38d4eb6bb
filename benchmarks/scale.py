"""Measure the monitor at fleet scale: 10,000 (or 100,000) agents as real MQTT connections through Mosquitto.

Run from the repository root: `python -m benchmarks.scale --agents 10000 [--interval-s 30] [--seconds 120]
[--processes 2] [--edge-brokers K]` (`--agents 200 --interval-s 1 --seconds 5` is the CI smoke run). On a fresh
Mosquitto (on a free port, `max_queued_messages 0`, `max_inflight_messages 0`):

1. a monitor in its own process (`benchmarks._monitor_child`: `fleetpulse monitor --dashboard-port 0` without
   the argument parsing) on a fresh DuckDB file;
2. the fleet (`benchmarks._fleet`): `--agents` connections from `--processes` worker processes, each agent with
   its own client id, will, birth and heartbeats every `--interval-s` (SDK keep-alive 10 s);
3. once the monitor lists every agent healthy and each agent has heartbeated at least once (one interval), a
   window of `--seconds`: the monitor's CPU (% of one core) and RSS (psutil, sampled every second), Mosquitto's
   and the fleet workers' likewise, heartbeats acknowledged by the broker per second (sent/s) against rows the
   monitor committed per second (stored/s), its event-queue depth, and the DuckDB file (+ WAL) sizes;
4. the fleet DISCONNECTs; the monitor drains, stops, and every acknowledged (agent, session, seq) is looked up
   in `heartbeats` (lost = acknowledged without a row). The file is then CHECKPOINTed, and a copy gets its
   heartbeats inserted once more and is checkpointed again: that growth over the rows added is the bytes per
   further row, times the fleet's heartbeats per day the growth per day (raw rows are rolled up after 7 days, so
   the raw part levels off at 7 days' worth);
5. the state machine's tick, in this process (a harness, not the live monitor): a `Monitor` that is never
   started, with a simulated clock, is fed the same payloads for `--agents` agents (1 % of them fall silent after
   one interval, so ticks have transitions to find) through its own `_handle_health`, for 6 intervals of
   simulated time, one 0.5 s tick (MonitorConfig.tick_interval_s) at a time. Each tick is timed two ways on the
   same views: the old way, `health.tick` over every view (on ~30 sampled ticks), and the monitor's due-only
   `Monitor._tick_all` (a heap of `health.next_check_at`; every tick). Both must find the same transitions.

One Mosquitto holds one file descriptor per connection, and without CAP_SYS_RESOURCE no process may raise its hard
limit (20,000 here): beyond ~19,900 agents, `--edge-brokers K` puts the agents on K edge Mosquittos, each bridged
(QoS 1, persistent bridge session) to the monitor's Mosquitto, as a large deployment would (`--processes` a multiple
of K; each fleet worker connects to one edge; the broker figures are summed over all of them).

The figures are printed as a table and, on the last line, as one JSON object. The machine is shared and noisy:
compare figures within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import math
import os
import secrets
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from benchmarks._fleet import (
    FdLimitError,
    Fleet,
    FleetStats,
    HeartbeatTemplate,
    agent_id,
    birth_payload,
    check_payloads,
    metrics_variants,
    raise_fd_limit,
)
from benchmarks._fleet_figures import MOSQUITTO_LIMITS, ProcessUsage, ResourceSampler, StoredCheck, check_stored, mib
from benchmarks._monitor_child import MonitorProcess
from benchmarks.sdk_overhead import machine_description
from fleetpulse.broker.mosquitto import MosquittoProcess
from fleetpulse.monitor.health import tick
from fleetpulse.monitor.service import Monitor, MonitorConfig
from fleetpulse.monitor.store import Store, WriteBatch
from fleetpulse.monitor.subscriber import Received
from fleetpulse.publisher.protocol import format_timestamp, health_topic

HARNESS_INTERVALS = 6  # simulated time of the tick harness, in heartbeat intervals
SILENT_EVERY = 100  # every 100th agent of the harness falls silent after one interval
FULL_TICK_SAMPLES = 30
FD_MARGIN = 64  # descriptors a broker or worker needs besides its connections
_GOLDEN = (math.sqrt(5) - 1) / 2


@dataclass(frozen=True)
class TickFigures:
    agents: int
    ticks: int
    messages: int
    due_only_us: list[float]  # Monitor._tick_all, every tick
    full_fleet_us: list[float]  # health.tick over every view, on sampled ticks
    due_only_sampled_us: list[float]  # Monitor._tick_all on the same sampled ticks
    transitions_due_only: int  # on the sampled ticks
    transitions_full_fleet: int
    transitions_total: int  # found by _tick_all over the whole run
    heap_entries: int  # Monitor._due at the end (stale entries included)

    @property
    def agree(self) -> bool:
        return self.transitions_due_only == self.transitions_full_fleet


def measure_ticks(agents: int, interval_s: float, directory: Path) -> TickFigures:
    """The tick harness (see the module docstring)."""
    started = datetime.now(UTC)
    now = [started]
    config = MonitorConfig(db_path=directory / "tick-harness.duckdb", retention_every_s=0)
    monitor = Monitor(config, clock=lambda: now[0])
    monitor._connected = True  # as after BrokerConnected; the monitor is never started
    thresholds = config.thresholds
    variants, pid = metrics_variants(0), os.getpid()
    ids = [agent_id("tick", n) for n in range(agents)]
    sessions = [secrets.token_hex(8) for _ in ids]
    templates = [HeartbeatTemplate(a, s, interval_s, pid, variants) for a, s in zip(ids, sessions, strict=True)]
    topics = [health_topic(agent) for agent in ids]
    arrivals = [(interval_s * ((n * _GOLDEN) % 1.0), n, 0) for n in range(agents)]  # (simulated s, agent, seq)
    heapq.heapify(arrivals)
    tick_s = config.tick_interval_s
    ticks = int(HARNESS_INTERVALS * interval_s / tick_s)
    sample_every = max(1, ticks // FULL_TICK_SAMPLES)
    due_only: list[float] = []
    full: list[float] = []
    due_sampled: list[float] = []
    transitions_due = transitions_full = transitions_total = messages = 0
    for step in range(1, ticks + 1):
        at_s = step * tick_s
        pending = WriteBatch()  # rows are not stored: only the state machine is measured
        while arrivals and arrivals[0][0] <= at_s:
            sent_s, n, seq = heapq.heappop(arrivals)
            received = now[0] = started + timedelta(seconds=sent_s)
            sent_at = format_timestamp(received)
            payload = (
                birth_payload(ids[n], sessions[n], interval_s, pid, sent_at)
                if seq == 0
                else templates[n].render(seq, sent_at)
            )
            monitor._handle_health(Received(topics[n], payload, False, received), pending)
            messages += 1
            if not (n % SILENT_EVERY == 0 and sent_s >= interval_s):
                heapq.heappush(arrivals, (sent_s + interval_s, n, seq + 1))
        now[0] = moment = started + timedelta(seconds=at_s)
        sampled = step % sample_every == 0
        if sampled:  # the old way first: it only reads the views
            begun = time.perf_counter()
            found = 0
            for agent, view in monitor._views.items():
                _, transition = tick(view, moment, thresholds.for_agent(agent))
                found += transition is not None
            full.append((time.perf_counter() - begun) * 1e6)
            transitions_full += found
        before = len(pending.transitions)
        begun = time.perf_counter()
        monitor._tick_all(pending)
        elapsed_us = (time.perf_counter() - begun) * 1e6
        due_only.append(elapsed_us)
        transitions_total += len(pending.transitions) - before
        if sampled:
            due_sampled.append(elapsed_us)
            transitions_due += len(pending.transitions) - before
    return TickFigures(
        agents=agents,
        ticks=ticks,
        messages=messages,
        due_only_us=due_only,
        full_fleet_us=full,
        due_only_sampled_us=due_sampled,
        transitions_due_only=transitions_due,
        transitions_full_fleet=transitions_full,
        transitions_total=transitions_total,
        heap_entries=len(monitor._due),
    )


def empty_database_bytes(directory: Path) -> int:
    """A fresh monitor database (schema only), checkpointed."""
    path = directory / "empty.duckdb"
    Store(path).close()
    connection = duckdb.connect(str(path))
    try:
        connection.execute("CHECKPOINT")
    finally:
        connection.close()
    return path.stat().st_size


def _files_bytes(db_path: Path) -> int:
    wal = db_path.with_name(db_path.name + ".wal")
    return sum(path.stat().st_size for path in (db_path, wal) if path.exists())


def checkpointed_bytes(db_path: Path) -> tuple[int, int, float]:
    """(file size after CHECKPOINT, heartbeat rows, marginal bytes per heartbeat row) of a database no process
    holds. The marginal figure: a copy of the file gets its heartbeats inserted once more and is checkpointed
    again; the growth over the rows added leaves out what every DuckDB file has (schema, half-empty blocks)."""
    connection = duckdb.connect(str(db_path))
    try:
        connection.execute("CHECKPOINT")
        row = connection.execute("SELECT count(*) FROM heartbeats").fetchone()
    finally:
        connection.close()
    size, rows = db_path.stat().st_size, int(row[0]) if row else 0
    copy = db_path.with_name("doubled-" + db_path.name)
    shutil.copyfile(db_path, copy)
    connection = duckdb.connect(str(copy))
    try:
        connection.execute("INSERT INTO heartbeats SELECT * FROM heartbeats")
        connection.execute("CHECKPOINT")
    finally:
        connection.close()
    marginal = (copy.stat().st_size - size) / max(1, rows)
    copy.unlink()
    return size, rows, marginal


@dataclass(frozen=True)
class Window:
    """The measured window of the live run."""

    seconds: float
    fleet: tuple[FleetStats, FleetStats]
    monitor: tuple[dict[str, Any], dict[str, Any]]  # the child's stats events at both ends
    usage: dict[str, ProcessUsage]
    db_bytes: tuple[int, int]  # database + WAL at both ends
    queued_max: int

    @property
    def sent_per_s(self) -> float:
        return (self.fleet[1].acked - self.fleet[0].acked) / (self.fleet[1].at - self.fleet[0].at)

    @property
    def stored_per_s(self) -> float:
        stored = self.monitor[1]["stats"].get("rows_stored", 0) - self.monitor[0]["stats"].get("rows_stored", 0)
        return float(stored) / (float(self.monitor[1]["at"]) - float(self.monitor[0]["at"]))

    @property
    def transitions(self) -> int:
        """Transitions committed during the window (a steady healthy fleet: 0)."""
        return int(self.monitor[1]["stats"].get("transitions", 0)) - int(self.monitor[0]["stats"].get("transitions", 0))


@dataclass(frozen=True)
class LiveRun:
    mosquitto: str
    ramp_s: float
    all_healthy_s: float  # fleet start -> the monitor lists every agent healthy (NaN: not within the timeout)
    states_after_ramp: dict[str, int]  # agents per state when that wait ended
    window: Window
    drain_s: float  # fleet stopped -> the monitor's last row committed
    stored: StoredCheck
    checkpointed_bytes: int
    empty_bytes: int
    heartbeat_rows: int
    bytes_per_row: float  # marginal, after CHECKPOINT
    monitor_stats: dict[str, int]


def bridge_config(central_port: int, edge: int) -> tuple[str, ...]:
    """An edge Mosquitto's bridge to the central one: health up, control commands down, QoS 1, a kept session."""
    return (
        f"connection fp-edge-{edge}",
        f"address 127.0.0.1:{central_port}",
        "bridge_protocol_version mqttv311",
        "cleansession false",
        f"remote_clientid fp-edge-{edge}",
        "topic agents/+/health out 1",
        "topic agents/+/control in 1",
    )


def live_run(args: argparse.Namespace, directory: Path) -> LiveRun:
    db_path = directory / "scale.duckdb"
    timeout_s = args.timeout_s if args.timeout_s is not None else 120 + args.agents / 500
    with contextlib.ExitStack() as brokers:
        mosquitto = brokers.enter_context(MosquittoProcess(directory, MOSQUITTO_LIMITS))
        edges = [
            brokers.enter_context(MosquittoProcess(directory, (*MOSQUITTO_LIMITS, *bridge_config(mosquitto.port, n))))
            for n in range(args.edge_brokers)
        ]
        monitor = MonitorProcess(mosquitto.url, db_path)
        try:
            if not monitor.wait("connected", timeout_s=30)["ok"]:
                raise RuntimeError("the monitor did not connect to Mosquitto")
            fleet = Fleet(
                [edge.url for edge in edges] or mosquitto.url,
                args.agents,
                interval_s=args.interval_s,
                processes=args.processes,
                keepalive_s=args.keepalive_s,
            )
            fleet_started = time.monotonic()
            with fleet:
                print(f"  {args.agents:,} agents born in {fleet.ramp_s:.1f} s", flush=True)
                healthy = monitor.wait("healthy", args.agents, timeout_s)
                all_healthy_s = float(healthy["at"]) - fleet_started if healthy["ok"] else math.nan
                if not healthy["ok"]:  # measured and reported all the same: the figures show what went wrong
                    print(f"  the monitor did not list every agent healthy within {timeout_s:.0f} s", flush=True)
                settle_until = fleet.ready_at + min(args.interval_s, 60.0) + 2.0  # every agent heartbeated once
                time.sleep(max(0.0, settle_until - time.monotonic()))
                print(f"  measuring {args.seconds:g} s", flush=True)
                sampler = ResourceSampler(
                    {
                        # with its MQTT reader process (and multiprocessing's resource tracker)
                        "monitor": [monitor.pid, *(child.pid for child in monitor.process.children(recursive=True))],
                        "mosquitto": [mosquitto.pid, *(edge.pid for edge in edges)],
                        "fleet": fleet.pids,
                    }
                ).start()
                first = (fleet.stats(), monitor.stats(), _files_bytes(db_path))
                queued_max = 0
                window_started = time.monotonic()
                while time.monotonic() - window_started < args.seconds:
                    time.sleep(min(5.0, max(0.0, args.seconds - (time.monotonic() - window_started))))
                    queued_max = max(queued_max, int(monitor.stats()["queued"]))
                last = (fleet.stats(), monitor.stats(), _files_bytes(db_path))
                usage = sampler.stop()
                window = Window(
                    seconds=time.monotonic() - window_started,
                    fleet=(first[0], last[0]),
                    monitor=(first[1], last[1]),
                    usage=usage,
                    db_bytes=(first[2], last[2]),
                    queued_max=queued_max,
                )
                ledger, _ = fleet.stop()
                fleet_stopped = time.monotonic()
            _, moved_at = monitor.wait_drained()
            drain_s = max(0.0, moved_at - fleet_stopped)
            stopped = monitor.stop()
        finally:
            monitor.kill()
        version = mosquitto.version
    stored = check_stored(db_path, ledger)
    size, rows, bytes_per_row = checkpointed_bytes(db_path)
    return LiveRun(
        mosquitto=version,
        ramp_s=fleet.ramp_s,
        all_healthy_s=all_healthy_s,
        states_after_ramp=healthy["states"],
        window=window,
        drain_s=drain_s,
        stored=stored,
        checkpointed_bytes=size,
        empty_bytes=empty_database_bytes(directory),
        heartbeat_rows=rows,
        bytes_per_row=bytes_per_row,
        monitor_stats=stopped["stats"],
    )


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)] if ordered else math.nan


def format_report(args: argparse.Namespace, live: LiveRun, ticks: TickFigures, soft_fd: int) -> str:
    machine = machine_description()
    window = live.window
    per_day_rows = args.agents * 86_400 / args.interval_s
    lines = [
        f"fleetpulse at scale: {args.agents:,} agents x 1 MQTT connection through Mosquitto {live.mosquitto}, "
        f"heartbeat every {args.interval_s:g} s, keep-alive {args.keepalive_s} s, {args.processes} fleet process(es)",
        f"machine: {machine['platform']} ({machine['machine']}), {machine['cpu_count']} CPUs, "
        f"Python {machine['python']}; file descriptors: soft limit raised to {soft_fd:,}",
        f"mosquitto config: {', '.join(MOSQUITTO_LIMITS)}; monitor: its own process, default MonitorConfig"
        + (
            f"; agents on {args.edge_brokers} edge Mosquittos bridged to the monitor's (CPU/RSS: all brokers)"
            if args.edge_brokers
            else ""
        ),
        "",
        f"ramp: {args.agents:,} connections + births in {live.ramp_s:.1f} s; "
        + (
            f"the monitor listed all healthy {live.all_healthy_s:.1f} s after the fleet started"
            if not math.isnan(live.all_healthy_s)
            else f"the monitor did NOT list all healthy (then: {json.dumps(live.states_after_ramp)})"
        ),
        f"window: {window.seconds:.0f} s",
        f"  heartbeats sent (acknowledged by the broker) {window.sent_per_s:>10,.0f} /s",
        f"  heartbeats stored by the monitor             {window.stored_per_s:>10,.0f} /s   "
        f"(ratio {window.stored_per_s / window.sent_per_s:.3f}; event queue max {window.queued_max:,})",
        "",
        f"{'process':12}{'CPU % of 1 core':>17}{'RSS max MiB':>13}{'RSS end MiB':>13}",
    ]
    for usage in window.usage.values():
        lines.append(f"{usage.name:12}{usage.cpu_percent:>17.1f}{usage.rss_max_mib:>13.1f}{usage.rss_last_mib:>13.1f}")
    growth_day = live.bytes_per_row * per_day_rows
    lines += [
        "",
        f"after the fleet stopped: drained in {live.drain_s:.1f} s; acknowledged {live.stored.acked:,}, stored "
        f"{live.stored.stored:,} ({live.stored.stored_distinct:,} distinct), lost {live.stored.lost:,}; "
        f"transitions during the window {window.transitions:,}",
        f"DuckDB: file + WAL {mib(window.db_bytes[0]):.1f} MiB at the window's start, {mib(window.db_bytes[1]):.1f} "
        "MiB at its end (the WAL holds rows uncompressed until DuckDB checkpoints it, at ~16 MiB)",
        f"        after CHECKPOINT: {mib(live.checkpointed_bytes):.1f} MiB for {live.heartbeat_rows:,} rows (an empty "
        f"database: {mib(live.empty_bytes):.1f} MiB); each further row adds {live.bytes_per_row:.1f} bytes",
        f"        x {per_day_rows:,.0f} heartbeats/day = "
        f"{mib(growth_day / 24):.1f} MiB/h, {mib(growth_day) / 1024:.2f} GiB/day, ~{mib(growth_day * 7) / 1024:.1f} "
        "GiB for the 7 days kept raw",
        "",
        f"state machine tick (harness in this process, {ticks.agents:,} views, {ticks.ticks} ticks of 0.5 s, "
        f"{ticks.messages:,} messages, 1 in {SILENT_EVERY} agents silent after one interval):",
        f"  {'':34}{'median us':>11}{'p99 us':>11}{'max us':>11}",
        f"  {'old: health.tick over every view':34}{statistics.median(ticks.full_fleet_us):>11,.0f}"
        f"{_percentile(ticks.full_fleet_us, 0.99):>11,.0f}{max(ticks.full_fleet_us):>11,.0f}"
        f"   ({len(ticks.full_fleet_us)} sampled ticks)",
        f"  {'due-only: Monitor._tick_all':34}{statistics.median(ticks.due_only_us):>11,.1f}"
        f"{_percentile(ticks.due_only_us, 0.99):>11,.1f}{max(ticks.due_only_us):>11,.1f}   (every tick)",
        f"  same ticks: old {statistics.median(ticks.full_fleet_us) / 1000:.2f} ms vs due-only "
        f"{statistics.median(ticks.due_only_sampled_us) / 1000:.3f} ms (median); transitions found "
        f"{ticks.transitions_full_fleet} vs {ticks.transitions_due_only} ({'agree' if ticks.agree else 'DIFFER'}); "
        f"heap entries at the end {ticks.heap_entries:,}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scale", description="The monitor with N simulated agents on real connections."
    )
    parser.add_argument("--agents", type=int, default=10_000, help="simulated agents (default 10000)")
    parser.add_argument("--interval-s", type=float, default=30.0, help="heartbeat interval (default 30)")
    parser.add_argument("--seconds", type=float, default=120.0, help="measured window (default 120)")
    parser.add_argument("--processes", type=int, default=2, help="fleet worker processes (default 2)")
    parser.add_argument("--keepalive-s", type=int, default=10, help="the agents' MQTT keep-alive (default 10)")
    parser.add_argument(
        "--timeout-s", type=float, help="longest wait for every agent healthy after the ramp (default 120 + agents/500)"
    )
    parser.add_argument(
        "--edge-brokers",
        type=int,
        default=0,
        help="agents connect to this many edge Mosquittos bridged to the monitor's (default 0: directly)",
    )
    args = parser.parse_args(argv)
    if args.agents < 1 or not 1 <= args.processes <= args.agents or args.interval_s <= 0 or args.seconds <= 0:
        parser.error("need --agents >= 1, 1 <= --processes <= --agents, --interval-s > 0 and --seconds > 0")

    payload_bytes = check_payloads(args.interval_s)
    if args.edge_brokers and args.processes % args.edge_brokers:
        parser.error("--processes must be a multiple of --edge-brokers (each worker connects to one edge)")
    per_broker = math.ceil(args.agents / max(1, args.edge_brokers))
    try:  # Mosquitto, started from here, inherits it: one descriptor per connection
        soft_fd, _ = raise_fd_limit(per_broker + FD_MARGIN)
    except FdLimitError as error:
        parser.exit(2, f"scale: {error}; spread the agents over edge brokers (--edge-brokers N)\n")
    with tempfile.TemporaryDirectory(prefix="fleetpulse-scale-") as name:
        directory = Path(name)
        print("live run:", flush=True)
        live = live_run(args, directory)
        print("tick harness:", flush=True)
        ticks = measure_ticks(args.agents, args.interval_s, directory)

    print(format_report(args, live, ticks, soft_fd))
    window = live.window
    per_day_rows = args.agents * 86_400 / args.interval_s
    summary = {
        "agents": args.agents,
        "interval_s": args.interval_s,
        "seconds": round(window.seconds, 1),
        "processes": args.processes,
        "keepalive_s": args.keepalive_s,
        "edge_brokers": args.edge_brokers,
        "ramp_s": round(live.ramp_s, 2),
        "all_healthy_s": None if math.isnan(live.all_healthy_s) else round(live.all_healthy_s, 2),
        "states_after_ramp": live.states_after_ramp,
        "sent_per_s": round(window.sent_per_s, 1),
        "stored_per_s": round(window.stored_per_s, 1),
        "stored_ratio": round(window.stored_per_s / window.sent_per_s, 3),
        "queued_max": window.queued_max,
        "monitor_cpu_percent": round(window.usage["monitor"].cpu_percent, 1),
        "monitor_rss_mib": round(window.usage["monitor"].rss_max_mib, 1),
        "mosquitto_cpu_percent": round(window.usage["mosquitto"].cpu_percent, 1),
        "mosquitto_rss_mib": round(window.usage["mosquitto"].rss_max_mib, 1),
        "fleet_cpu_percent": round(window.usage["fleet"].cpu_percent, 1),
        "fleet_rss_mib": round(window.usage["fleet"].rss_max_mib, 1),
        "drain_s": round(live.drain_s, 2),
        "acked": live.stored.acked,
        "stored": live.stored.stored,
        "stored_distinct": live.stored.stored_distinct,
        "lost": live.stored.lost,
        "transitions": window.transitions,
        "db_mib_window_start": round(mib(window.db_bytes[0]), 2),
        "db_mib_window_end": round(mib(window.db_bytes[1]), 2),
        "db_bytes_per_row": round(live.bytes_per_row, 1),
        "db_checkpointed_mib": round(mib(live.checkpointed_bytes), 2),
        "db_empty_mib": round(mib(live.empty_bytes), 2),
        "db_growth_mib_per_h": round(mib(live.bytes_per_row * per_day_rows / 24), 2),
        "db_growth_gib_per_day": round(mib(live.bytes_per_row * per_day_rows) / 1024, 3),
        "tick_full_fleet_us_median": round(statistics.median(ticks.full_fleet_us), 1),
        "tick_full_fleet_us_max": round(max(ticks.full_fleet_us), 1),
        "tick_due_only_us_median": round(statistics.median(ticks.due_only_us), 1),
        "tick_due_only_us_p99": round(_percentile(ticks.due_only_us, 0.99), 1),
        "tick_due_only_us_max": round(max(ticks.due_only_us), 1),
        "tick_transitions_agree": ticks.agree,
        "tick_transitions_total": ticks.transitions_total,
        "tick_heap_entries": ticks.heap_entries,
        "tick_harness_messages": ticks.messages,
        "largest_payload_bytes": payload_bytes,
        "fd_soft_limit": soft_fd,
        "monitor_stats": live.monitor_stats,
        "mosquitto": live.mosquitto,
        "mosquitto_config": list(MOSQUITTO_LIMITS),
        "machine": machine_description(),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
