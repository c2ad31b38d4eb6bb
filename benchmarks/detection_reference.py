"""Detection against the classic pattern: a "Redis-style" heartbeat checker vs fleetpulse, same kills, same freezes.

Run from the repository root: `python -m benchmarks.detection_reference [--kills 20] [--freezes 10]
[--sdk-kills 10] [--broker amqtt|mosquitto|both]` (`--kills 3 --freezes 2 --sdk-kills 0` is the CI smoke run).

fleetpulse, measured: per broker (the embedded amqtt broker in this process, or a Mosquitto process on a free
port), an in-process Monitor (default MonitorConfig) with a transition listener (`benchmarks.detection`'s
`UnreachableWatcher`: the moment the `unreachable` row is committed) watches a `benchmarks._fleet` fleet (one
worker process; heartbeats every 5 s, keep-alive 2 s, so the late-heartbeat thresholds, 15 s / 50 s, never come
first). Kills: one agent at a time, after a random pause of 0-1 s, has its socket closed without DISCONNECT;
latency = committed minus the close. Freezes: an agent stops reading and writing (a SIGSTOPped process, a hung
event loop); one is frozen every 1.3 s (not a multiple of Mosquitto's ~5 s keep-alive sweep) and all are then
awaited; latency from the freeze, and from the agent's last packet (what the broker's 1.5 x keep-alive counts
from). `--sdk-kills` adds `benchmarks.detection.measure_broker`'s SIGKILLs of real SDK agent processes.

The classic pattern, simulated (simulated time, exact arithmetic; no Redis needed): every agent SETs
`heartbeat:<id>` with the time every 30 s; a checker polls every 30 s and calls an agent degraded once its key is
60 s old and dead once it is 90 s old. Each measured kill and freeze instant above is replayed against it: the
agent's writes are phased like the fleet's heartbeats (its birth plus the same golden-ratio fraction of the
interval) and the checker polls from the start of the run. A frozen agent stops writing, so the checker sees it
exactly like a dead one. 10,000 more kills at random phases give its distribution (dead: 60-120 s after
the kill, mean 90 s). The figures are printed as a table and, on the last line, as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._fleet import Fleet
from benchmarks.detection import (
    BROKERS,
    measure_broker,
    percentile,
    wait_healthy,
    watched_monitor,
)
from benchmarks.sdk_overhead import machine_description
from fleetpulse.broker.embedded import KEEPALIVE_GRACE_FACTOR

INTERVAL_S = 5.0  # fleetpulse agents here: heartbeats, far slower than the will
KEEPALIVE_S = 2  # the SPEC §2 measurements were made at 2 s
FREEZE_EVERY_S = 1.3
DETECTION_TIMEOUT_S = 30.0
CLASSIC_WRITE_S = 30.0  # the classic pattern: SET every 30 s
CLASSIC_POLL_S = 30.0  # checker polls every 30 s
CLASSIC_DEGRADED_S = 60.0
CLASSIC_DEAD_S = 90.0
CLASSIC_RANDOM_KILLS = 10_000
_GOLDEN = (math.sqrt(5) - 1) / 2


def classic_detection_s(kill_s: float, write_phase_s: float, poll_phase_s: float, after_s: float) -> float:
    """Seconds from a kill at `kill_s` until the classic checker calls the agent `after_s` stale.

    The agent wrote at write_phase_s + k * CLASSIC_WRITE_S up to the kill (a write at the very instant counts);
    the checker polls at poll_phase_s + k * CLASSIC_POLL_S and flags a key whose age is >= after_s.
    """
    last_write = write_phase_s + math.floor((kill_s - write_phase_s) / CLASSIC_WRITE_S) * CLASSIC_WRITE_S
    flagged_from = last_write + after_s
    first_poll = poll_phase_s + math.ceil((flagged_from - poll_phase_s) / CLASSIC_POLL_S) * CLASSIC_POLL_S
    return max(first_poll, kill_s) - kill_s


@dataclass(frozen=True)
class Event:
    """One kill or freeze of a fleet agent, in seconds since the run started."""

    agent_index: int
    at_s: float
    born_s: float  # the fleet's ready time: the agent's writes are phased from here


@dataclass(frozen=True)
class BrokerRun:
    broker: str
    kill_ms: list[float]  # kill -> unreachable committed
    freeze_s: list[float]  # freeze -> unreachable committed
    freeze_since_last_packet_s: list[float]  # the agent's last packet -> unreachable committed
    undetected: int
    sdk_kill_ms: list[float]  # real SDK processes SIGKILLed (benchmarks.detection)
    events: list[Event]


def measure(kind: str, args: argparse.Namespace, directory: Path, rng: random.Random, started: float) -> BrokerRun:
    agents = args.kills + args.freezes
    kill_ms: list[float] = []
    freeze_s: list[float] = []
    since_packet_s: list[float] = []
    events: list[Event] = []
    undetected = 0
    with watched_monitor(kind, directory, "reference") as (url, description, monitor, watcher):
        prefix = f"ref{kind}"
        with Fleet(url, agents, interval_s=INTERVAL_S, processes=1, keepalive_s=KEEPALIVE_S, prefix=prefix) as fleet:
            ids = fleet.agent_ids()
            wait_healthy(monitor, ids)
            born_s = fleet.ready_at - started
            for index in range(args.kills):
                time.sleep(rng.uniform(0, 1.0))
                killed_at = fleet.kill(ids[index])
                events.append(Event(index, killed_at - started, born_s))
                committed = watcher.wait(ids[index], DETECTION_TIMEOUT_S)
                if committed is None:
                    undetected += 1
                else:
                    kill_ms.append((committed - killed_at) * 1000)
            frozen: list[tuple[str, float, float]] = []
            for index in range(args.kills, agents):
                frozen_at, last_sent_at = fleet.freeze(ids[index])
                frozen.append((ids[index], frozen_at, last_sent_at))
                events.append(Event(index, frozen_at - started, born_s))
                time.sleep(FREEZE_EVERY_S)
            for agent, frozen_at, last_sent_at in frozen:
                committed = watcher.wait(agent, DETECTION_TIMEOUT_S)
                if committed is None:
                    undetected += 1
                else:
                    freeze_s.append(committed - frozen_at)
                    since_packet_s.append(committed - last_sent_at)
    sdk_kill_ms: list[float] = []
    if args.sdk_kills:
        sdk = measure_broker(kind, args.sdk_kills, directory, rng)
        sdk_kill_ms = sdk.latencies_ms
        undetected += sdk.undetected
    return BrokerRun(description, kill_ms, freeze_s, since_packet_s, undetected, sdk_kill_ms, events)


def classic_for(events: list[Event], poll_phase_s: float, after_s: float) -> list[float]:
    """The classic checker's detection, seconds, for the same kill/freeze instants."""
    return [
        classic_detection_s(
            event.at_s,
            event.born_s + CLASSIC_WRITE_S * ((event.agent_index * _GOLDEN) % 1.0),
            poll_phase_s,
            after_s,
        )
        for event in events
    ]


def classic_random(rng: random.Random, after_s: float) -> list[float]:
    return [
        classic_detection_s(
            rng.uniform(1_000, 2_000), rng.uniform(0, CLASSIC_WRITE_S), rng.uniform(0, CLASSIC_POLL_S), after_s
        )
        for _ in range(CLASSIC_RANDOM_KILLS)
    ]


def _stats(values: list[float]) -> dict[str, float | None]:
    def rounded(value: float) -> float | None:
        return None if math.isnan(value) else round(value, 3)

    return {
        "count": len(values),
        "p50": rounded(percentile(values, 0.5)),
        "p99": rounded(percentile(values, 0.99)),
        "max": rounded(percentile(values, 1.0)),
        "min": rounded(min(values)) if values else None,
    }


def _row(label: str, values: list[float], unit: str, scale: float = 1.0) -> str:
    if not values:
        return f"  {label:58}{'n/a':>10}"
    cells = [percentile(values, f) * scale for f in (0.5, 0.99, 1.0)] + [min(values) * scale]
    return f"  {label:58}" + "".join(f"{cell:>10.3f}" for cell in cells) + f"  {unit}  (n={len(values)})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.detection_reference",
        description="fleetpulse's kill/freeze detection vs a classic 30 s heartbeat-key checker.",
    )
    parser.add_argument("--kills", type=int, default=20, help="socket kills per broker (default 20)")
    parser.add_argument("--freezes", type=int, default=10, help="frozen agents per broker (default 10)")
    parser.add_argument("--sdk-kills", type=int, default=10, help="SIGKILLed SDK processes per broker (default 10)")
    parser.add_argument("--broker", choices=[*BROKERS, "both"], default="both", help="which broker (default both)")
    args = parser.parse_args(argv)
    if args.kills < 1 or args.freezes < 1 or args.sdk_kills < 0:
        parser.error("need --kills >= 1, --freezes >= 1 and --sdk-kills >= 0")
    kinds = BROKERS if args.broker == "both" else (args.broker,)

    rng = random.Random(20241129)
    started = time.monotonic()
    poll_phase_s = rng.uniform(0, CLASSIC_POLL_S)  # when the classic checker's polls fall, from the run's start
    runs: list[BrokerRun] = []
    with tempfile.TemporaryDirectory(prefix="fleetpulse-detection-reference-") as directory:
        for kind in kinds:
            print(f"  {kind} ...", flush=True)
            runs.append(measure(kind, args, Path(directory), rng, started))

    machine = machine_description()
    grace = KEEPALIVE_GRACE_FACTOR * KEEPALIVE_S
    lines = [
        "crash and freeze detection: fleetpulse (broker-fired will) vs the classic pattern (Redis-style key + poller)",
        f"machine: {machine['platform']} ({machine['machine']}), {machine['cpu_count']} CPUs, "
        f"Python {machine['python']}",
        f"fleetpulse: fleet agents heartbeat every {INTERVAL_S:g} s, keep-alive {KEEPALIVE_S} s "
        f"(1.5 x keep-alive = {grace:g} s); in-process Monitor, default MonitorConfig; latency to the `unreachable` "
        "row committed",
        f"classic: SET every {CLASSIC_WRITE_S:g} s, poll every {CLASSIC_POLL_S:g} s, degraded at "
        f"{CLASSIC_DEGRADED_S:g} s, dead at {CLASSIC_DEAD_S:g} s without an update (simulated time)",
        "",
        f"  {'':58}{'p50':>10}{'p99':>10}{'max':>10}{'min':>10}",
    ]
    summary: dict[str, Any] = {"kills": args.kills, "freezes": args.freezes, "sdk_kills": args.sdk_kills}
    all_events: list[Event] = []
    for kind, run in zip(kinds, runs, strict=True):
        kills = [event for event in run.events if event.agent_index < args.kills]
        freezes = [event for event in run.events if event.agent_index >= args.kills]
        all_events += run.events
        classic_kill_dead = classic_for(kills, poll_phase_s, CLASSIC_DEAD_S)
        classic_freeze_dead = classic_for(freezes, poll_phase_s, CLASSIC_DEAD_S)
        lines += [
            f"{run.broker}:",
            _row("fleetpulse: socket closed -> unreachable", run.kill_ms, "ms"),
            _row("fleetpulse: SDK process SIGKILLed -> unreachable", run.sdk_kill_ms, "ms"),
            _row("fleetpulse: frozen -> unreachable", run.freeze_s, "s"),
            _row("fleetpulse: frozen agent's last packet -> unreachable", run.freeze_since_last_packet_s, "s"),
            _row("classic, same kill instants: -> dead", classic_kill_dead, "s"),
            _row("classic, same freeze instants: -> dead", classic_freeze_dead, "s"),
        ]
        summary[kind] = {
            "broker": run.broker,
            "undetected": run.undetected,
            "kill_ms": _stats(run.kill_ms),
            "sdk_kill_ms": _stats(run.sdk_kill_ms),
            "freeze_s": _stats(run.freeze_s),
            "freeze_since_last_packet_s": _stats(run.freeze_since_last_packet_s),
            "classic_kill_dead_s": _stats(classic_kill_dead),
            "classic_freeze_dead_s": _stats(classic_freeze_dead),
        }
    random_dead = classic_random(rng, CLASSIC_DEAD_S)
    random_degraded = classic_random(rng, CLASSIC_DEGRADED_S)
    same_degraded = classic_for(all_events, poll_phase_s, CLASSIC_DEGRADED_S)
    lines += [
        "classic pattern alone:",
        _row(f"{CLASSIC_RANDOM_KILLS:,} kills at random phases: -> dead", random_dead, "s"),
        _row(f"{CLASSIC_RANDOM_KILLS:,} kills at random phases: -> degraded", random_degraded, "s"),
        _row("all measured kill/freeze instants: -> degraded", same_degraded, "s"),
        "",
        f"1.5 x keep-alive = {grace:g} s. amqtt 0.12.1 never enforces keep-alive; fleetpulse's embedded broker does "
        "(read timeout of 1.5 x keep-alive after the last packet). Mosquitto 2.0.11 checks keep-alives only every "
        "~5 s (SPEC §2): expect 1.5 x keep-alive + 0-6 s there.",
        f"undetected: {', '.join(f'{kind} {run.undetected}' for kind, run in zip(kinds, runs, strict=True))}",
    ]
    print("\n".join(lines))
    summary["classic_random_dead_s"] = _stats(random_dead)
    summary["classic_random_degraded_s"] = _stats(random_degraded)
    summary["classic_mean_dead_s"] = round(sum(random_dead) / len(random_dead), 2)
    summary["keepalive_s"] = KEEPALIVE_S
    summary["keepalive_grace_s"] = grace
    summary["interval_s"] = INTERVAL_S
    summary["machine"] = machine
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
