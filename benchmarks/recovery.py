"""Measure recovery with a live fleet: a monitor restart and a broker restart, 10,000 agents heartbeating.

Run from the repository root: `python -m benchmarks.recovery --agents 10000 [--interval-s 30] [--down-s 10]
[--only monitor|broker] [--mosquitto-defaults]` (`--agents 200 --interval-s 2 --down-s 2` is the CI smoke run).
Agents are `benchmarks._fleet` connections (SDK wire behaviour, keep-alive 10 s); the monitor runs in its own
process (`benchmarks._monitor_child`), which reports how many agents it knows (state not `unknown`) and how many
are healthy, polled every ~40 ms.

(i) monitor restart, on Mosquitto with `max_queued_messages 0` and `max_inflight_messages 0` (`--mosquitto-defaults`
keeps Mosquitto's 1000 / 20, which drop what is queued for a monitor that is away): once the monitor lists every
agent healthy, it is stopped gracefully (its persistent session stays with the broker, which queues its messages);
the agents heartbeat on for `--down-s`; a new monitor process opens the same database. Timed from its spawn: the
broker connection, every agent known again (from the retained snapshot, the queued heartbeats and then live ones),
every agent healthy. After one more heartbeat interval the fleet stops and every (agent, session, seq) the broker
acknowledged is looked up in DuckDB (lost must be 0); transitions recorded from the stop on must be 0.

(ii) broker restart, on Mosquitto with persistence on (`persistence true` in a private directory, so retained
messages and the monitor's persistent session with its queue survive): the monitor runs with `--notify` to a local
HTTP receiver (`tests.http_receiver.Receiver`). Once every agent is healthy, Mosquitto gets SIGTERM (it publishes
every client's will as it shuts down, and saves its database), and is started again on the same port; the agents
reconnect the way paho does (1 s, then doubling) with new sessions. Timed from the SIGTERM: Mosquitto back, every
agent reconnected and born, every agent healthy in the monitor. Then the webhook deliveries are counted (expected:
at most one monitor-level trigger and its resolve, no agent trigger) and the transitions recorded since the
SIGTERM (to `unreachable`, and whether from the retained snapshot).

The figures are printed as tables and, on the last line, as one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from benchmarks._fleet import FdLimitError, Fleet, FleetStats, check_payloads, raise_fd_limit
from benchmarks._fleet_figures import MOSQUITTO_LIMITS, StoredCheck, check_stored
from benchmarks._monitor_child import MonitorProcess
from benchmarks.sdk_overhead import machine_description
from fleetpulse.broker.mosquitto import MosquittoProcess
from tests.http_receiver import Receiver

SETTLE_S = 5.0  # at most this long after every agent is healthy, before the restart: rows are committed
ALERT_GRACE_S = 3.0  # after the fleet is back: alerts arriving meanwhile still count


@contextlib.contextmanager
def healthy_fleet(monitor: MonitorProcess, broker_url: str, args: argparse.Namespace, prefix: str) -> Iterator[Fleet]:
    """The monitor connected, then `--agents` agents started and all listed healthy by it, rows settled."""
    if not monitor.wait("connected", timeout_s=30)["ok"]:
        raise RuntimeError("the monitor did not connect")
    with Fleet(broker_url, args.agents, interval_s=args.interval_s, processes=args.processes, prefix=prefix) as fleet:
        if not monitor.wait("healthy", args.agents, args.timeout_s)["ok"]:
            raise RuntimeError("the monitor never listed every agent healthy")
        time.sleep(min(SETTLE_S, args.interval_s))
        yield fleet


def _milestones(reached: dict[str, Any], kind: str, since: float) -> dict[str, float]:
    """Seconds from `since` until this fraction of the agents was known / healthy."""
    return {fraction: round(float(at) - since, 3) for fraction, at in reached["milestones"][kind].items()}


def transitions_since(db_path: Path, since: datetime) -> list[tuple[str, str, bool, str, int]]:
    """(from, to, snapshot, reason, count) of the transitions recorded at or after `since`."""
    connection = duckdb.connect(str(db_path), read_only=True)
    try:
        rows = connection.execute(
            """
            SELECT from_state, to_state, snapshot, regexp_replace(reason, '[0-9]+', 'N', 'g') AS why, count(*)
            FROM transitions WHERE "at" >= ? GROUP BY ALL ORDER BY 5 DESC
            """,
            [since],
        ).fetchall()
    finally:
        connection.close()
    return [(str(a), str(b), bool(c), str(d), int(e)) for a, b, c, d, e in rows]


@dataclass(frozen=True)
class MonitorRestart:
    stop_s: float  # graceful stop of the first monitor
    down_s: float  # no monitor
    ready_s: float  # spawn -> the new monitor started (imports, database opened, views resumed)
    connected_s: float  # spawn -> connected to the broker
    known: dict[str, float]  # spawn -> this fraction of the agents known again
    healthy: dict[str, float]  # spawn -> this fraction healthy
    all_known: bool
    stored: StoredCheck
    transitions: list[tuple[str, str, bool, str, int]]
    stats: dict[str, int]  # the second monitor's, at its stop
    mosquitto_config: tuple[str, ...]


def monitor_restart(args: argparse.Namespace, directory: Path) -> MonitorRestart:
    db_path = directory / "monitor-restart.duckdb"
    limits = () if args.mosquitto_defaults else MOSQUITTO_LIMITS
    timeout_s = args.timeout_s
    with MosquittoProcess(directory, limits) as mosquitto:
        first = MonitorProcess(mosquitto.url, db_path)
        second: MonitorProcess | None = None
        try:
            with healthy_fleet(first, mosquitto.url, args, "restart") as fleet:
                print("  stopping the monitor", flush=True)
                stopped_wall = datetime.now(UTC)
                stopping = time.monotonic()
                first.stop()
                stopped = time.monotonic()
                time.sleep(args.down_s)
                print("  starting it again", flush=True)
                second = MonitorProcess(mosquitto.url, db_path)
                spawned = second.spawned_at
                down_s = spawned - stopped
                connected = second.wait("connected", timeout_s=30)
                healthy = second.wait("healthy", args.agents, timeout_s)  # every agent known and healthy
                # One more interval: every agent has heartbeated live to the new monitor since it started.
                time.sleep(max(0.0, spawned + args.interval_s + 2.0 - time.monotonic()))
                ledger, _ = fleet.stop()
            second.wait_drained()
            final = second.stop()
        finally:
            first.kill()
            if second is not None:
                second.kill()
    return MonitorRestart(
        stop_s=stopped - stopping,
        down_s=down_s,
        ready_s=second.ready_at - spawned,
        connected_s=float(connected["at"]) - spawned,
        known=_milestones(healthy, "known", spawned),
        healthy=_milestones(healthy, "healthy", spawned),
        all_known="1.0" in healthy["milestones"]["known"],
        stored=check_stored(db_path, ledger),
        transitions=transitions_since(db_path, stopped_wall),
        stats=final["stats"],
        mosquitto_config=limits,
    )


@dataclass(frozen=True)
class BrokerRestart:
    broker_stop_s: float  # SIGTERM -> Mosquitto exited
    broker_up_s: float  # SIGTERM -> listening again
    fleet_reborn_s: float  # SIGTERM -> the last agent's new birth acknowledged
    known: dict[str, float]  # SIGTERM -> this fraction known (not unknown) in the monitor again
    healthy: dict[str, float]  # SIGTERM -> this fraction healthy in the monitor
    all_healthy: bool
    fleet: FleetStats
    alerts: Counter[tuple[str, str]]  # (event, "monitor" | "agent") -> deliveries
    alert_reasons: list[str]
    transitions: list[tuple[str, str, bool, str, int]]
    stored: StoredCheck
    stats: dict[str, int]
    mosquitto_config: tuple[str, ...]


def broker_restart(args: argparse.Namespace, directory: Path) -> BrokerRestart:
    db_path = directory / "broker-restart.duckdb"
    persistence = directory / "mosquitto-persistence"
    persistence.mkdir()
    limits = () if args.mosquitto_defaults else MOSQUITTO_LIMITS
    config = (
        *limits,
        "persistence true",  # after MosquittoProcess's own `persistence false`: the last one counts
        f"persistence_location {persistence}/",
        f"user {getpass.getuser()}",  # started as root, Mosquitto would drop to an account that cannot write there
    )
    timeout_s = args.timeout_s
    receiver = Receiver().start()
    mosquitto = MosquittoProcess(directory, config).start()
    monitor = MonitorProcess(mosquitto.url, db_path, notify=(receiver.url,))
    try:
        with healthy_fleet(monitor, mosquitto.url, args, "brokerrestart") as fleet:
            births_before = fleet.stats().births
            print("  restarting Mosquitto", flush=True)
            restarted_wall = datetime.now(UTC)
            terminated = time.monotonic()
            mosquitto.stop()
            exited = time.monotonic()
            mosquitto.start()
            listening = time.monotonic()
            healthy = monitor.wait("healthy", args.agents, timeout_s)
            deadline = time.monotonic() + timeout_s
            while (stats := fleet.stats()).births < births_before + args.agents and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(ALERT_GRACE_S)
            ledger, fleet_stats = fleet.stop()
        monitor.wait_drained()
        final = monitor.stop()
    finally:
        monitor.kill()
        mosquitto.stop()
        receiver.stop()
    alerts: Counter[tuple[str, str]] = Counter()
    reasons = []
    for body in receiver.delivered():
        who = "monitor" if str(body.get("agent", "")).startswith("monitor:") else "agent"
        alerts[(str(body.get("event")), who)] += 1
        reasons.append(f"{body.get('event')} {body.get('agent')}: {body.get('reason')}")
    return BrokerRestart(
        broker_stop_s=exited - terminated,
        broker_up_s=listening - terminated,
        fleet_reborn_s=stats.last_birth_at - terminated,
        known=_milestones(healthy, "known", terminated),
        healthy=_milestones(healthy, "healthy", terminated),
        all_healthy=bool(healthy["ok"]),
        fleet=fleet_stats,
        alerts=alerts,
        alert_reasons=reasons,
        transitions=transitions_since(db_path, restarted_wall),
        stored=check_stored(db_path, ledger),
        stats=final["stats"],
        mosquitto_config=config,
    )


def _transition_lines(transitions: list[tuple[str, str, bool, str, int]]) -> list[str]:
    if not transitions:
        return ["  transitions since: none"]
    lines = ["  transitions since:"]
    for from_state, to_state, snapshot, reason, count in transitions:
        origin = "retained snapshot" if snapshot else "live"
        lines.append(f"    {count:>7,}  {from_state} -> {to_state} ({origin}): {reason}")
    return lines


def _fractions(figures: dict[str, float]) -> str:
    return ", ".join(f"{float(fraction) * 100:g} % {seconds:.2f} s" for fraction, seconds in figures.items())


def format_report(args: argparse.Namespace, restart: MonitorRestart | None, broker: BrokerRestart | None) -> str:
    machine = machine_description()
    lines = [
        f"fleetpulse recovery: {args.agents:,} agents heartbeating every {args.interval_s:g} s (keep-alive 10 s) "
        f"through Mosquitto, monitor in its own process",
        f"machine: {machine['platform']} ({machine['machine']}), {machine['cpu_count']} CPUs, "
        f"Python {machine['python']}",
    ]
    if restart is not None:
        stored = restart.stored
        lines += [
            "",
            f"(i) monitor restart (mosquitto config: {', '.join(restart.mosquitto_config) or 'defaults'})",
            f"  graceful stop {restart.stop_s:.2f} s, no monitor for {restart.down_s:.2f} s; from the new process's "
            f"spawn: started {restart.ready_s:.2f} s, connected {restart.connected_s:.2f} s",
            f"  agents known again: {_fractions(restart.known)}",
            f"  agents healthy:     {_fractions(restart.healthy)}",
            f"  heartbeats acknowledged {stored.acked:,}, stored {stored.stored:,} ({stored.duplicates:,} duplicate "
            f"rows), lost {stored.lost:,}",
            *_transition_lines(restart.transitions),
        ]
    if broker is not None:
        stored = broker.stored
        lines += [
            "",
            f"(ii) broker restart (mosquitto config: {', '.join(broker.mosquitto_config)})",
            f"  from SIGTERM: Mosquitto exited {broker.broker_stop_s:.2f} s, listening again "
            f"{broker.broker_up_s:.2f} s, every agent reconnected and born {broker.fleet_reborn_s:.2f} s",
            f"  agents known in the monitor:   {_fractions(broker.known) or 'none'}",
            f"  agents healthy in the monitor: {_fractions(broker.healthy) or 'none'}"
            + ("" if broker.all_healthy else f" (not all within {args.timeout_s:g} s)"),
            f"  fleet: {broker.fleet.reconnects:,} reconnect attempts, {broker.fleet.connect_failures:,} failed",
            "  alerts delivered to the webhook: "
            + (", ".join(f"{event} ({who}) x {n}" for (event, who), n in sorted(broker.alerts.items())) or "none"),
            *[f"    {reason}" for reason in broker.alert_reasons[:10]],
            *_transition_lines(broker.transitions),
            f"  heartbeats acknowledged {stored.acked:,}, stored {stored.stored:,}, lost {stored.lost:,} "
            "(heartbeats queued for the monitor survive in Mosquitto's persistence file)",
        ]
    return "\n".join(lines)


def _transitions_json(transitions: list[tuple[str, str, bool, str, int]]) -> list[dict[str, Any]]:
    return [
        {"from": a, "to": b, "snapshot": snapshot, "reason": reason, "count": count}
        for a, b, snapshot, reason, count in transitions
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.recovery", description="Monitor and broker restarts with a live fleet."
    )
    parser.add_argument("--agents", type=int, default=10_000, help="simulated agents (default 10000)")
    parser.add_argument("--interval-s", type=float, default=30.0, help="heartbeat interval (default 30)")
    parser.add_argument("--down-s", type=float, default=10.0, help="how long no monitor runs (default 10)")
    parser.add_argument("--processes", type=int, default=2, help="fleet worker processes (default 2)")
    parser.add_argument("--only", choices=["monitor", "broker"], help="run one of the two scenarios")
    parser.add_argument(
        "--timeout-s", type=float, help="longest wait for every agent known / healthy (default 120 + agents / 200)"
    )
    parser.add_argument(
        "--mosquitto-defaults",
        action="store_true",
        help="keep Mosquitto's max_queued_messages 1000 / max_inflight_messages 20 (default: unlimited)",
    )
    args = parser.parse_args(argv)
    if args.agents < 1 or not 1 <= args.processes <= args.agents or args.interval_s <= 0 or args.down_s < 0:
        parser.error("need --agents >= 1, 1 <= --processes <= --agents, --interval-s > 0 and --down-s >= 0")

    if args.timeout_s is None:
        args.timeout_s = 120.0 + args.agents / 200
    check_payloads(args.interval_s)
    try:  # Mosquitto, started from here, inherits it: one descriptor per connection
        raise_fd_limit(args.agents + 64)
    except FdLimitError as error:
        parser.exit(2, f"recovery: {error}\n")
    restart = broker = None
    with tempfile.TemporaryDirectory(prefix="fleetpulse-recovery-") as name:
        if args.only in (None, "monitor"):
            print("(i) monitor restart:", flush=True)
            restart = monitor_restart(args, Path(name))
        if args.only in (None, "broker"):
            print("(ii) broker restart:", flush=True)
            broker = broker_restart(args, Path(name))

    print(format_report(args, restart, broker))
    summary: dict[str, Any] = {"agents": args.agents, "interval_s": args.interval_s, "down_s": args.down_s}
    if restart is not None:
        summary["monitor_restart"] = {
            "stop_s": round(restart.stop_s, 3),
            "down_s": round(restart.down_s, 3),
            "ready_s": round(restart.ready_s, 3),
            "connected_s": round(restart.connected_s, 3),
            "known_s": restart.known,
            "healthy_s": restart.healthy,
            "all_known_s": restart.known.get("1.0"),
            "all_known": restart.all_known,
            "acked": restart.stored.acked,
            "stored": restart.stored.stored,
            "duplicates": restart.stored.duplicates,
            "lost": restart.stored.lost,
            "transitions": sum(row[4] for row in restart.transitions),
            "transitions_detail": _transitions_json(restart.transitions),
            "monitor_stats": restart.stats,
            "mosquitto_config": list(restart.mosquitto_config),
        }
    if broker is not None:
        summary["broker_restart"] = {
            "broker_stop_s": round(broker.broker_stop_s, 3),
            "broker_up_s": round(broker.broker_up_s, 3),
            "fleet_reborn_s": round(broker.fleet_reborn_s, 3),
            "known_s": broker.known,
            "healthy_s": broker.healthy,
            "all_healthy_s": broker.healthy.get("1.0"),
            "all_healthy": broker.all_healthy,
            "reconnects": broker.fleet.reconnects,
            "connect_failures": broker.fleet.connect_failures,
            "monitor_triggers": broker.alerts[("trigger", "monitor")],
            "monitor_resolves": broker.alerts[("resolve", "monitor")],
            "agent_triggers": broker.alerts[("trigger", "agent")],
            "alerts": {f"{event}/{who}": n for (event, who), n in broker.alerts.items()},
            "unreachable_transitions": sum(row[4] for row in broker.transitions if row[1] == "unreachable"),
            "unreachable_live": sum(row[4] for row in broker.transitions if row[1] == "unreachable" and not row[2]),
            "transitions_detail": _transitions_json(broker.transitions),
            "acked": broker.stored.acked,
            "stored": broker.stored.stored,
            "lost": broker.stored.lost,
            "monitor_stats": broker.stats,
            "mosquitto_config": list(broker.mosquitto_config),
        }
    summary["machine"] = machine_description()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
