"""Measure sustained heartbeat ingest through Mosquitto: a plain paho subscriber's ceiling, then the monitor's.

Run from the repository root: `python -m benchmarks.ingest [--seconds 10] [--agents 1000] [--publishers 2]`
(`--seconds 2 --agents 100` is the CI smoke run). Every phase gets the same load on a fresh Mosquitto
process: `--publishers` processes (`benchmarks._ingest_publisher`, one paho connection each, so they share
no GIL with the measured side) publish valid protocol-v1 heartbeats for `--agents` distinct agents
(per-agent session, seq 0, 1, 2 …, QoS 1, retained, on `agents/<id>/health`, a metrics window in each) as
fast as Mosquitto acknowledges them, for `--seconds`. Two sinks, in this process, each run twice:

* raw: a plain paho subscriber (QoS 1, `agents/+/health`) that only counts what arrives;
* monitor: a `Monitor` on a fresh database; its `rows_stored` counter is polled.

live (the headline): the sink is subscribed while the publishers run. Rate = messages (rows) / (first
publish -> the last one received (committed)): a sink that falls behind drains its backlog after the
publishers stop, and the drain counts against it. On a small machine the publishers compete with the sink
for CPU, so the offered load and the sink's share of the CPU both vary from run to run.

backlog: the sink subscribes with a persistent session (the monitor always does), goes offline, the same
load is queued for it by Mosquitto, then it reconnects and the drain is timed alone: each sink's ceiling
without load generators running, and the monitor's catch-up after a restart.

Lost = heartbeats the broker acknowledged to a publisher that are not in the `heartbeats` table, matched on
(agent, session, seq). Mosquitto runs with `max_queued_messages 0` and `max_inflight_messages 0` (both
unlimited; the defaults, 1000 and 20, drop or throttle a subscriber that falls behind). The figures are
printed as a table and, on the last line, as one JSON object. `--profile PREFIX` runs the live monitor phase
with cProfile on the monitor's core and MQTT threads (slower: such a run's figures are not the headline) and
prints where their time goes; `py-spy record --gil --threads` gives the same picture without the slowdown.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import pstats
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import duckdb
import paho.mqtt.client as paho
import pandas as pd

from benchmarks._child import EventChild
from benchmarks._ingest_publisher import INTERVAL_S, WINDOW, heartbeat_template
from benchmarks.sdk_overhead import Target, machine_description
from fleetpulse.broker.mosquitto import MosquittoProcess
from fleetpulse.monitor.service import Monitor, MonitorConfig
from fleetpulse.publisher.mqtt import make_client, parse_broker_url
from fleetpulse.publisher.protocol import HEALTH_TOPIC_FILTER, format_timestamp, health_topic

PUBLISHER_MODULE = "benchmarks._ingest_publisher"
MOSQUITTO_LIMITS = ("max_queued_messages 0", "max_inflight_messages 0")  # unlimited: never drop, never throttle
POLL_S = 0.01  # how often the received / stored count is sampled
STALL_S = 10.0  # once everything is published, a count unchanged this long is final
PROBE_AGENT = "ingest-probe"  # proves the monitor's subscription is live before the load starts
TARGET_RATIO = 0.60


class Counting:
    """Samples a growing count every POLL_S on its own thread: its latest value and when it last changed."""

    def __init__(self, count: Callable[[], int]) -> None:
        self._count = count
        self.started = time.monotonic()
        self.value = count()
        self.changed_at = self.started
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-counting", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            value = self._count()
            if value != self.value:
                self.value, self.changed_at = value, time.monotonic()

    def wait_final(self, expected: int) -> None:
        """Until the count reaches `expected`, or stops changing for STALL_S."""
        while self.value < expected and time.monotonic() - self.changed_at < STALL_S:
            time.sleep(POLL_S)
        self._stop.set()
        self._thread.join()

    @property
    def elapsed_s(self) -> float:
        return self.changed_at - self.started


class RawSubscriber:
    """The ceiling: a plain paho client that only counts the messages it receives.

    Persistent (`clean_session` off, fixed client id) for the backlog phase: `go_offline()` disconnects,
    Mosquitto queues what arrives meanwhile, `come_back()` reconnects without subscribing again.
    """

    def __init__(self, broker_url: str, persistent: bool = False) -> None:
        self.received = 0
        self._url = parse_broker_url(broker_url)
        self._persistent = persistent
        self._client = self._connect()
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *args: subscribed.set()
        self._client.subscribe(HEALTH_TOPIC_FILTER, qos=1)
        if not subscribed.wait(10):
            raise RuntimeError(f"could not subscribe to {HEALTH_TOPIC_FILTER} on {self._url.display}")

    def _connect(self) -> paho.Client:
        client = make_client(self._url, client_id="fp-bench-ingest-raw", clean_session=not self._persistent)
        client.on_message = self._on_message
        client.connect(self._url.host, self._url.port, keepalive=60)
        client.loop_start()
        return client

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self.received += 1  # only this (paho's network) thread writes it

    def go_offline(self) -> None:
        self.close()

    def come_back(self) -> None:
        self._client = self._connect()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class PublisherChild(EventChild):
    """One `benchmarks._ingest_publisher` process."""

    def __init__(self, broker_url: str, first_agent: int, agents: int, seconds: float) -> None:
        super().__init__("publisher", PUBLISHER_MODULE, broker_url, str(first_agent), str(agents), str(seconds))

    def go(self) -> None:
        self.send("go")

    def finish(self) -> None:
        self.wait_ok()


@dataclass(frozen=True)
class Load:
    """What the publishers of one phase did."""

    acked: int  # heartbeats the broker acknowledged
    unacked: list[tuple[str, int]]  # (agent, seq) published but never acknowledged
    sessions: dict[str, tuple[str, int]]  # agent -> (session, heartbeats published: seqs 0 .. n-1)
    publish_s: float  # the longest publisher's publishing time (acknowledgement wait excluded)

    @property
    def per_s(self) -> float:
        return self.acked / self.publish_s


def publish_load(broker_url: str, agents: int, publishers: int, seconds: float, on_go: Callable[[], None]) -> Load:
    """Start the publishers, call `on_go`, let them all go at once, and wait until they are done."""
    children: list[PublisherChild] = []
    try:
        blocks = [agents // publishers + (1 if n < agents % publishers else 0) for n in range(publishers)]
        first = 0
        for block in blocks:
            children.append(PublisherChild(broker_url, first, block, seconds))
            first += block
        for child in children:
            child.read_event("ready")
        on_go()
        for child in children:
            child.go()
        dones = [child.read_event("done") for child in children]
        for child in children:
            child.finish()
    finally:
        for child in children:
            child.kill()
    return Load(
        acked=sum(int(done["acked"]) for done in dones),
        unacked=[(str(agent), int(seq)) for done in dones for agent, seq in done["unacked"]],
        sessions={agent: (str(pair[0]), int(pair[1])) for done in dones for agent, pair in done["agents"].items()},
        publish_s=max(float(done["publish_s"]) for done in dones),
    )


@dataclass(frozen=True)
class Phase:
    """One sink under one load."""

    load: Load
    received: int  # messages counted (raw) or heartbeat rows stored (monitor)
    during_publishing: int  # ... of them by the time the publishers were done (0 for a backlog)
    elapsed_s: float  # live: first publish, backlog: reconnect -> last message received / row committed

    @property
    def per_s(self) -> float:
        return self.received / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def live_per_s(self) -> float:
        return self.during_publishing / self.load.publish_s

    @property
    def drain_s(self) -> float:
        return max(0.0, self.elapsed_s - self.load.publish_s)


def live_phase(broker_url: str, args: argparse.Namespace, count: Callable[[], int]) -> Phase:
    """The sink counts while the publishers run; then until it has everything (or stalls)."""
    counters: list[Counting] = []  # started right before the publishers go

    def start_counting() -> None:
        counters.append(Counting(count))

    load = publish_load(broker_url, args.agents, args.publishers, args.seconds, start_counting)
    counter = counters[0]
    during_publishing = counter.value
    counter.wait_final(load.acked)
    return Phase(load, counter.value, during_publishing, counter.elapsed_s)


def measure_raw(directory: Path, args: argparse.Namespace) -> tuple[Phase, Phase, str]:
    """(live, backlog) for the plain paho subscriber, and Mosquitto's version."""
    with MosquittoProcess(directory, MOSQUITTO_LIMITS) as mosquitto:
        subscriber = RawSubscriber(mosquitto.url)
        try:
            live = live_phase(mosquitto.url, args, lambda: subscriber.received)
        finally:
            subscriber.close()
    with MosquittoProcess(directory, MOSQUITTO_LIMITS) as mosquitto:
        subscriber = RawSubscriber(mosquitto.url, persistent=True)
        subscriber.go_offline()
        load = publish_load(mosquitto.url, args.agents, args.publishers, args.seconds, lambda: None)
        counter = Counting(lambda: subscriber.received)
        subscriber.come_back()
        try:
            counter.wait_final(load.acked)
        finally:
            subscriber.close()
        backlog = Phase(load, counter.value, 0, counter.elapsed_s)
        return live, backlog, mosquitto.version


class ThreadProfiles:
    """cProfile on the threads whose names start with given prefixes, switched on as each one starts."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        self._prefixes = prefixes
        self.profiles: dict[str, cProfile.Profile] = {}

    def _hook(self, frame: FrameType, event: str, arg: Any) -> None:
        sys.setprofile(None)  # threading.setprofile installed this hook in a new thread: decide once
        name = threading.current_thread().name
        if name.startswith(self._prefixes):
            profile = cProfile.Profile()
            self.profiles[name] = profile
            profile.enable()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        threading.setprofile(self._hook)
        try:
            yield
        finally:
            threading.setprofile(None)

    def report(self, prefix: str, top: int = 20) -> str:
        parts = []
        for name, profile in self.profiles.items():
            path = f"{prefix}.{name}.prof"
            profile.dump_stats(path)
            text = io.StringIO()
            pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(top)
            parts.append(f"== thread {name} (saved as {path}) ==\n{text.getvalue()}")
        return "\n".join(parts)


def wait_monitor_subscribed(monitor: Monitor, broker_url: str) -> None:
    """Publish non-retained probe heartbeats until the monitor has one: its subscription is live."""
    url = parse_broker_url(broker_url)
    client = make_client(url, client_id="fp-bench-ingest-probe")
    client.connect(url.host, url.port, keepalive=60)
    client.loop_start()
    template = heartbeat_template(PROBE_AGENT, "probe", "bench", 0)
    try:
        deadline = time.monotonic() + 10
        seq = 0
        while not any(record["agent"] == PROBE_AGENT for record in monitor.list_agents()):
            if time.monotonic() > deadline:
                raise RuntimeError("the monitor never received the probe heartbeat")
            payload = (template % {"seq": seq, "sent_at": format_timestamp(datetime.now(UTC))}).encode()
            client.publish(health_topic(PROBE_AGENT), payload, qos=1).wait_for_publish(5)
            seq += 1
            time.sleep(0.05)
    finally:
        client.disconnect()
        client.loop_stop()
    time.sleep(2 * monitor.config.flush_interval_s)  # until the probe rows are committed


def rows_stored(monitor: Monitor) -> int:
    return monitor.stats().get("rows_stored", 0)


def count_lost(db_path: Path, load: Load) -> tuple[int, int, int]:
    """(stored rows, distinct (agent, session, seq) stored, acknowledged heartbeats missing from the table)."""
    expected = pd.DataFrame.from_records(
        [(agent, session, count) for agent, (session, count) in load.sessions.items()],
        columns=["agent", "session", "published"],
    )
    unacked = pd.DataFrame.from_records(load.unacked or [("", -1)], columns=["agent", "seq"])
    connection = duckdb.connect(str(db_path), read_only=True)
    try:
        connection.register("expected", expected)
        connection.register("unacked", unacked)
        stored, distinct = connection.execute(
            "SELECT count(*), count(DISTINCT (agent, session, seq)) FROM heartbeats WHERE agent <> ?", [PROBE_AGENT]
        ).fetchone() or (0, 0)
        row = connection.execute(
            """
            SELECT count(*) FROM (SELECT DISTINCT agent, session, seq FROM heartbeats) AS s
            JOIN expected AS e ON s.agent = e.agent AND s.session = e.session AND s.seq < e.published
            ANTI JOIN unacked AS u ON s.agent = u.agent AND s.seq = u.seq
            """
        ).fetchone()
    finally:
        connection.close()
    matched = int(row[0]) if row else 0
    return int(stored), int(distinct), load.acked - matched


@dataclass(frozen=True)
class MonitorRun:
    phase: Phase
    stored: int  # rows in `heartbeats`, the probe's excluded
    stored_distinct: int
    lost: int
    stats: dict[str, int]


def measure_monitor_live(directory: Path, args: argparse.Namespace, profiles: ThreadProfiles | None) -> MonitorRun:
    db_path = directory / "live.duckdb"
    with MosquittoProcess(directory, MOSQUITTO_LIMITS) as mosquitto:
        monitor = Monitor(
            MonitorConfig(broker=mosquitto.url, db_path=db_path, reader_process=args.mqtt_reader == "process")
        )
        with profiles.installed() if profiles else contextlib.nullcontext():
            monitor.start()
        try:
            wait_monitor_subscribed(monitor, mosquitto.url)
            baseline = rows_stored(monitor)
            phase = live_phase(mosquitto.url, args, lambda: rows_stored(monitor) - baseline)
            _, rows, _ = monitor.store.query("SELECT count(*) FROM heartbeats WHERE agent <> ?", [PROBE_AGENT])
            if rows[0][0] != phase.received:
                print(f"note: rows_stored says {phase.received}, the table {rows[0][0]}", file=sys.stderr)
            stats = monitor.stats()
        finally:
            monitor.stop()
    stored, distinct, lost = count_lost(db_path, phase.load)
    return MonitorRun(phase, stored, distinct, lost, stats)


def measure_monitor_backlog(directory: Path, args: argparse.Namespace) -> MonitorRun:
    """Subscribe, stop (the broker keeps the session), queue the load, start again and time the catch-up."""
    db_path = directory / "backlog.duckdb"
    with MosquittoProcess(directory, MOSQUITTO_LIMITS) as mosquitto:
        config = MonitorConfig(broker=mosquitto.url, db_path=db_path, reader_process=args.mqtt_reader == "process")
        first = Monitor(config).start()
        try:
            wait_monitor_subscribed(first, mosquitto.url)
        finally:
            first.stop()
        load = publish_load(mosquitto.url, args.agents, args.publishers, args.seconds, lambda: None)
        monitor = Monitor(config)
        counter = Counting(lambda: rows_stored(monitor))
        monitor.start()
        try:
            counter.wait_final(load.acked)
            stats = monitor.stats()
        finally:
            monitor.stop()
    stored, distinct, lost = count_lost(db_path, load)
    return MonitorRun(Phase(load, counter.value, 0, counter.elapsed_s), stored, distinct, lost, stats)


def add_mqtt_reader_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mqtt-reader",
        choices=("process", "thread"),
        default="process",
        help="the monitor reads MQTT in a child process (the CLI's default) or in a thread of its own process",
    )


def format_report(
    args: argparse.Namespace,
    mosquitto_version: str,
    raw: tuple[Phase, Phase],
    live: MonitorRun,
    backlog: MonitorRun,
    targets: tuple[Target, Target],
) -> str:
    machine = machine_description()

    def row(label: str, phase: Phase) -> str:
        live_per_s = f"{phase.live_per_s:>11,.0f}" if phase.during_publishing else f"{'-':>11}"
        return (
            f"{label:18}{phase.load.acked:>10,}{phase.load.per_s:>11,.0f}{phase.received:>10,}"
            f"{live_per_s}{phase.drain_s if phase.during_publishing else phase.elapsed_s:>9.2f}{phase.per_s:>10,.0f}"
        )

    ratio, backlog_ratio = targets
    lines = [
        f"fleetpulse ingest through Mosquitto {mosquitto_version}: {args.agents} agents over {args.publishers} "
        f"publisher process(es), QoS 1, retained, {args.seconds:g} s of publishing per phase",
        f"machine: {machine['platform']} ({machine['machine']}), {machine['cpu_count']} CPUs, "
        f"Python {machine['python']}",
        f"monitor: MQTT read in a {'child process' if args.mqtt_reader == 'process' else 'thread'} (--mqtt-reader)",
        f"mosquitto config: {', '.join(MOSQUITTO_LIMITS)} (unlimited; the defaults 1000 / 20 drop or throttle); "
        f"publishers keep <= {WINDOW} publishes unacknowledged each",
        "",
        f"{'':18}{'published':>10}{'publish/s':>11}{'received':>10}{'live /s':>11}{'drain s':>9}{'per s':>10}",
        row("live: raw paho", raw[0]),
        row("live: monitor", live.phase),
        row("backlog: raw paho", raw[1]),
        row("backlog: monitor", backlog.phase),
        "",
        "published: acknowledged by the broker (publish/s: the offered load); received: messages counted (raw) or",
        "rows stored (monitor); live /s: of them while the publishers ran; drain s: after the publishers were done",
        "(live) or from reconnect (backlog); per s: received / (first publish or reconnect -> last one received)",
        "",
        f"raw_paho_per_s: {raw[0].per_s:>8,.0f}    backlog: {raw[1].per_s:>8,.0f}",
        f"stored_per_s:   {live.phase.per_s:>8,.0f}    backlog: {backlog.phase.per_s:>8,.0f}",
        f"ratio:          {ratio.value:>8.3f}    backlog: {backlog_ratio.value:>8.3f}"
        f"    target {ratio.describe()} / {backlog_ratio.describe()}",
        f"live:    published {live.phase.load.acked:,}, stored {live.stored:,} ({live.stored_distinct:,} distinct), "
        f"lost {live.lost:,}; the raw subscriber received {raw[0].received:,} of {raw[0].load.acked:,}",
        f"backlog: published {backlog.phase.load.acked:,}, stored {backlog.stored:,} "
        f"({backlog.stored_distinct:,} distinct), lost {backlog.lost:,}; "
        f"the raw subscriber received {raw[1].received:,} of {raw[1].load.acked:,}",
        f"monitor.stats() live:    {json.dumps(live.stats, sort_keys=True)}",
        f"monitor.stats() backlog: {json.dumps(backlog.stats, sort_keys=True)}",
    ]
    if args.profile:
        lines.append("profiled run (cProfile on the live monitor's threads): its live figures are lower than usual")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ingest",
        description="Sustained heartbeat ingest through Mosquitto: plain paho subscriber vs the monitor.",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="publishing time per phase (default 10)")
    parser.add_argument("--agents", type=int, default=1000, help="distinct agents (default 1000)")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes (default 2)")
    add_mqtt_reader_option(parser)
    parser.add_argument("--profile", metavar="PREFIX", help="cProfile the live monitor's threads into PREFIX.*.prof")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.agents < 1 or not 1 <= args.publishers <= args.agents:
        parser.error("need --seconds > 0, --agents >= 1 and 1 <= --publishers <= --agents")

    profiles = ThreadProfiles(("fleetpulse-core", "paho-mqtt-client-fleetpulse-monitor")) if args.profile else None
    with tempfile.TemporaryDirectory(prefix="fleetpulse-ingest-") as name:
        directory = Path(name)
        raw_live, raw_backlog, mosquitto_version = measure_raw(directory, args)
        live = measure_monitor_live(directory, args, profiles)
        backlog = measure_monitor_backlog(directory, args)

    targets = (
        Target("ratio", live.phase.per_s / raw_live.per_s, TARGET_RATIO, True),
        Target("backlog_ratio", backlog.phase.per_s / raw_backlog.per_s, TARGET_RATIO, True),
    )
    print(format_report(args, mosquitto_version, (raw_live, raw_backlog), live, backlog, targets))
    if profiles is not None:
        print(profiles.report(args.profile), file=sys.stderr)
    summary = {
        "seconds": args.seconds,
        "mqtt_reader": args.mqtt_reader,
        "agents": args.agents,
        "publishers": args.publishers,
        "heartbeat_interval_s": INTERVAL_S,
        "raw_paho_per_s": round(raw_live.per_s),
        "stored_per_s": round(live.phase.per_s),
        "ratio": round(targets[0].value, 3),
        "published": live.phase.load.acked,
        "unacked": len(live.phase.load.unacked),
        "stored": live.stored,
        "stored_distinct": live.stored_distinct,
        "lost": live.lost,
        "raw_published": raw_live.load.acked,
        "raw_received": raw_live.received,
        "raw_publish_per_s": round(raw_live.load.per_s),
        "monitor_publish_per_s": round(live.phase.load.per_s),
        "raw_live_per_s": round(raw_live.live_per_s),
        "monitor_live_per_s": round(live.phase.live_per_s),
        "raw_drain_s": round(raw_live.drain_s, 3),
        "monitor_drain_s": round(live.phase.drain_s, 3),
        "monitor_stats": live.stats,
        "backlog_raw_paho_per_s": round(raw_backlog.per_s),
        "backlog_stored_per_s": round(backlog.phase.per_s),
        "backlog_ratio": round(targets[1].value, 3),
        "backlog_published": backlog.phase.load.acked,
        "backlog_stored": backlog.stored,
        "backlog_lost": backlog.lost,
        "backlog_raw_received": raw_backlog.received,
        "backlog_monitor_stats": backlog.stats,
        "mosquitto": mosquitto_version,
        "mosquitto_config": list(MOSQUITTO_LIMITS),
        "profiled": bool(args.profile),
        "targets_met": {target.name: target.met for target in targets},
        "machine": machine_description(),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
