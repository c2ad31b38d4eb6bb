"""Simulate a fleet of agents against a broker: N real MQTT connections with wills, births and heartbeats.

Run from the repository root: `python -m benchmarks.fleet_sim --agents N [--interval-s S] [--broker URL]
[--processes P] [--keepalive-s K] [--seconds T] [--kill ID@T] [--freeze ID@T]`. Without `--broker` it starts its
own Mosquitto on a free port (with `max_queued_messages 0` and `max_inflight_messages 0`, as the benchmarks do)
and prints its URL, so a monitor can be pointed at it: `python -m fleetpulse.monitor.cli monitor --broker URL ...`.

The agents (`benchmarks._fleet`: one asyncio loop per worker process, a minimal MQTT 3.1.1 client per agent)
speak protocol v1 like `publisher.Agent`. `--kill sim-000042@30` closes that agent's socket without DISCONNECT
30 s after every agent was born (the broker publishes its will); `--freeze sim-000043@30` makes it stop reading
and writing (the broker's keep-alive check must notice). On a terminal, the same works interactively: type
`kill ID`, `freeze ID`, `stats` or `quit`. Every 5 s a line of counters is printed; at the end (after
`--seconds`, `quit` or Ctrl-C) the agents DISCONNECT and one JSON object is printed on the last line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks._fleet import FdLimitError, Fleet, FleetStats, check_payloads, raise_fd_limit
from benchmarks.sdk_overhead import machine_description
from fleetpulse.broker.mosquitto import MosquittoProcess

MOSQUITTO_LIMITS = ("max_queued_messages 0", "max_inflight_messages 0")
REPORT_EVERY_S = 5.0


def _timed_action(text: str) -> tuple[str, float]:
    agent, _, seconds = text.rpartition("@")
    if not agent or not seconds:
        raise argparse.ArgumentTypeError(f"expected AGENT@SECONDS, got {text!r}")
    return agent, float(seconds)


@contextlib.contextmanager
def broker_for(url: str | None, directory: Path) -> Iterator[tuple[str, str]]:
    """(url, description): the given broker, or a private Mosquitto on a free port."""
    if url is not None:
        yield url, url
        return
    with MosquittoProcess(directory, MOSQUITTO_LIMITS) as mosquitto:
        yield mosquitto.url, f"mosquitto {mosquitto.version} (pid {mosquitto.pid}, {', '.join(MOSQUITTO_LIMITS)})"


def _console_commands(commands: queue.SimpleQueue[str]) -> None:
    if not sys.stdin.isatty():
        return

    def read() -> None:
        for line in sys.stdin:
            commands.put(line.strip())
        commands.put("quit")

    threading.Thread(target=read, name="fleet-sim-console", daemon=True).start()


def _line(stats: FleetStats, previous: FleetStats) -> str:
    elapsed_s = max(stats.at - previous.at, 1e-9)
    return (
        f"connected {stats.connected:>7,}  published/s {(stats.published - previous.published) / elapsed_s:>9,.0f}"
        f"  acked/s {(stats.acked - previous.acked) / elapsed_s:>9,.0f}  reconnects {stats.reconnects:,}"
        f"  lost {stats.connections_lost:,}  workers' CPU {(stats.cpu_s - previous.cpu_s) / elapsed_s * 100:.0f} %"
    )


def run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    actions = sorted(
        [(at, "kill", agent) for agent, at in args.kill] + [(at, "freeze", agent) for agent, at in args.freeze]
    )
    commands: queue.SimpleQueue[str] = queue.SimpleQueue()
    _console_commands(commands)
    fleet = Fleet(url, args.agents, interval_s=args.interval_s, processes=args.processes, keepalive_s=args.keepalive_s)
    done: list[dict[str, Any]] = []
    with fleet:
        print(
            f"{args.agents:,} agents connected and born in {fleet.ramp_s:.1f} s "
            f"({args.agents / fleet.ramp_s:,.0f} connections/s) on {args.processes} worker process(es)",
            flush=True,
        )
        first = previous = fleet.stats()
        deadline = fleet.ready_at + args.seconds if args.seconds else None
        next_report = time.monotonic() + REPORT_EVERY_S
        try:
            while deadline is None or time.monotonic() < deadline:
                while actions and time.monotonic() >= fleet.ready_at + actions[0][0]:
                    _, action, agent = actions.pop(0)
                    commands.put(f"{action} {agent}")
                try:
                    command = commands.get(timeout=0.05)
                except queue.Empty:
                    command = ""
                verb, _, agent = command.partition(" ")
                if verb == "quit":
                    break
                if verb == "kill":
                    at = fleet.kill(agent)
                    done.append({"action": "kill", "agent": agent, "at_s": round(at - fleet.ready_at, 3)})
                    print(f"killed {agent} (socket closed without DISCONNECT)", flush=True)
                elif verb == "freeze":
                    at, last_sent_at = fleet.freeze(agent)
                    done.append({"action": "freeze", "agent": agent, "at_s": round(at - fleet.ready_at, 3)})
                    print(f"froze {agent} ({at - last_sent_at:.2f} s after its last packet)", flush=True)
                elif verb == "stats" or time.monotonic() >= next_report:
                    stats = fleet.stats()
                    print(_line(stats, previous), flush=True)
                    previous = stats
                    next_report = time.monotonic() + REPORT_EVERY_S
                elif verb:
                    print(f"unknown command {command!r}: kill ID, freeze ID, stats, quit", flush=True)
        except KeyboardInterrupt:
            pass
        ledger, last = fleet.stop()
    elapsed_s = max(last.at - first.at, 1e-9)
    return {
        "agents": args.agents,
        "processes": args.processes,
        "interval_s": args.interval_s,
        "keepalive_s": args.keepalive_s,
        "ramp_s": round(fleet.ramp_s, 3),
        "connections_per_s": round(args.agents / fleet.ramp_s),
        "seconds": round(elapsed_s, 3),
        "published": last.published,
        "acked": last.acked,
        "ledger_acked": ledger.acked,
        "published_per_s": round((last.published - first.published) / elapsed_s, 1),
        "reconnects": last.reconnects,
        "connect_failures": last.connect_failures,
        "connections_lost": last.connections_lost,
        "pings": last.pings,
        "commands": last.commands,
        "workers_cpu_percent": round((last.cpu_s - first.cpu_s) / elapsed_s * 100, 1),
        "worker_max_rss_mib": round(last.max_rss_kib / 1024, 1),
        "actions": done,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fleet_sim", description="N simulated agents as real MQTT connections."
    )
    parser.add_argument("--agents", type=int, required=True, help="how many agents")
    parser.add_argument("--interval-s", type=float, default=30.0, help="heartbeat interval (default 30)")
    parser.add_argument("--broker", help="broker URL (default: start a private Mosquitto on a free port)")
    parser.add_argument("--processes", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--keepalive-s", type=int, default=10, help="MQTT keep-alive (default 10, the SDK's)")
    parser.add_argument("--seconds", type=float, default=0.0, help="run this long after the ramp (default: forever)")
    parser.add_argument("--kill", type=_timed_action, action="append", default=[], metavar="ID@SECONDS")
    parser.add_argument("--freeze", type=_timed_action, action="append", default=[], metavar="ID@SECONDS")
    args = parser.parse_args(argv)
    if args.agents < 1 or not 1 <= args.processes <= args.agents or args.interval_s <= 0:
        parser.error("need --agents >= 1, 1 <= --processes <= --agents and --interval-s > 0")

    payload_bytes = check_payloads(args.interval_s)  # the monitor's parser accepts every payload kind
    try:  # a private Mosquitto, started from here, inherits it: one descriptor per connection
        soft, hard = raise_fd_limit(args.agents + 64 if args.broker is None else 0)
    except FdLimitError as error:
        parser.exit(2, f"fleet_sim: {error}; or use --broker URL\n")
    with (
        tempfile.TemporaryDirectory(prefix="fleetpulse-fleet-sim-") as name,
        broker_for(args.broker, Path(name)) as (
            url,
            description,
        ),
    ):
        print(f"broker: {description} at {url}", flush=True)
        print(f"file descriptor limit: soft {soft:,}, hard {hard:,}; largest payload {payload_bytes} bytes", flush=True)
        summary = run(args, url)
    summary["largest_payload_bytes"] = payload_bytes
    summary["fd_limit"] = [soft, hard]
    summary["machine"] = machine_description()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
