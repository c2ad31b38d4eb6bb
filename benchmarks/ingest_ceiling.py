"""Ingest against the broker's own ceiling: the monitor, a plain paho subscriber, and Mosquitto's C clients.

Run from the repository root: `python -m benchmarks.ingest_ceiling [--seconds 10] [--agents 1000] [--publishers 2]
[--messages 200000]` (`--seconds 2 --agents 100 --messages 20000` is the CI smoke run). Three live phases, each on a
fresh Mosquitto (on a free port, `max_queued_messages 0`, `max_inflight_messages 0`):

* monitor and raw paho: exactly `benchmarks.ingest`'s live phases (its functions, imported): `--publishers` paho
  publisher processes send valid heartbeats of `--agents` agents (QoS 1, retained) for `--seconds`, into a `Monitor`
  (rows committed to DuckDB; lost = acknowledged heartbeats without a row) and into a plain paho subscriber; plus
  its raw backlog phase (the paho subscriber draining what was queued for it, with no publisher running);
* C clients: `--publishers` `mosquitto_pub -l -q 1 -r` processes, each reading `--messages / --publishers` lines
  (the same heartbeat JSON, ~590 bytes, seq 0, 1, 2 ... of one agent per publisher) from a file, into one
  `mosquitto_sub -q 1 -C N -t agents/+/health` that counts them (its `-d` output, read in 64 KiB chunks here; it
  resumes a persistent session subscribed beforehand, so nothing is missed while it connects). Rate = messages
  received / (publishers started -> the last one received, i.e. the subscriber's exit: its output is
  block-buffered). Lost = messages published minus received.

The rate of each is "first publish -> last message received (row committed)", so a sink that falls behind pays for
its backlog. Mosquitto's C clients are the ceiling of this machine and broker: neither Python nor DuckDB is in the
path. The figures are printed as a table and, on the last line, as one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from benchmarks._fleet import HeartbeatTemplate, agent_id, metrics_variants
from benchmarks.ingest import MOSQUITTO_LIMITS, add_mqtt_reader_option, measure_monitor_live, measure_raw
from benchmarks.sdk_overhead import machine_description
from fleetpulse.broker.mosquitto import MosquittoProcess
from fleetpulse.publisher.protocol import HEALTH_TOPIC_FILTER, format_timestamp, health_topic

SUBSCRIBED_TIMEOUT_S = 10.0
RECEIVE_TIMEOUT_S = 120.0
_RECEIVED = b"received PUBLISH"


@dataclass(frozen=True)
class CClients:
    published: int
    received: int
    elapsed_s: float  # publishers started -> last message received
    version: str

    @property
    def per_s(self) -> float:
        return self.received / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def lost(self) -> int:
        return self.published - self.received


class _SubscriberOutput:
    """Reads `mosquitto_sub -d` output on a thread: how many PUBLISH it received, and when the last chunk came."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._process = process
        self.received = 0
        self.last_received_at = 0.0
        self._tail = b""
        self._thread = threading.Thread(target=self._run, name="bench-mosquitto-sub", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._process.stdout is not None
        descriptor = self._process.stdout.fileno()
        while chunk := os.read(descriptor, 65_536):
            text = self._tail + chunk
            found = text.count(_RECEIVED)
            if found:
                self.received += found
                self.last_received_at = time.monotonic()
            # Keep a marker split across two chunks: the part of it at the end of this one is looked at again.
            cut = max(text.rfind(_RECEIVED) + len(_RECEIVED), len(text) - len(_RECEIVED) + 1)
            self._tail = text[max(0, cut) :]

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)


def _payload_file(directory: Path, publisher: int, lines: int) -> tuple[Path, str]:
    """`lines` heartbeats of one agent, one JSON document per line; the file and the agent's topic."""
    agent = agent_id("ceiling", publisher)
    template = HeartbeatTemplate(agent, secrets.token_hex(8), 30.0, os.getpid(), metrics_variants(publisher))
    sent_at = format_timestamp(datetime.now(UTC))
    path = directory / f"ceiling-{publisher}.lines"
    with path.open("wb") as file:
        for seq in range(lines):
            file.write(template.render(seq, sent_at) + b"\n")
    return path, health_topic(agent)


def _feed(path: Path, sender: subprocess.Popen[bytes]) -> None:
    """Write the file into mosquitto_pub's input, and leave the input open."""
    assert sender.stdin is not None
    with path.open("rb") as lines, contextlib.suppress(OSError):
        shutil.copyfileobj(lines, sender.stdin)
        sender.stdin.flush()


def measure_c_clients(directory: Path, publishers: int, messages: int) -> CClients:
    pub, sub = shutil.which("mosquitto_pub"), shutil.which("mosquitto_sub")
    if pub is None or sub is None:
        raise FileNotFoundError("mosquitto_pub / mosquitto_sub not found (Debian: apt-get install mosquitto-clients)")
    blocks = [messages // publishers + (1 if n < messages % publishers else 0) for n in range(publishers)]
    files = [_payload_file(directory, n, block) for n, block in enumerate(blocks)]
    with MosquittoProcess(directory, MOSQUITTO_LIMITS) as mosquitto:
        port = str(mosquitto.port)
        session = [sub, "-h", "127.0.0.1", "-p", port, "-q", "1", "-c", "-i", "fp-ceiling", "-t", HEALTH_TOPIC_FILTER]
        # mosquitto_sub's output to a pipe is block-buffered, so its SUBACK cannot be waited for. Instead a first
        # run creates the persistent session and its subscription (-E: exit once subscribed); the counting run
        # resumes that session, so whatever the publishers send before it is connected is queued for it.
        subprocess.run([*session, "-E"], check=True, timeout=SUBSCRIBED_TIMEOUT_S, capture_output=True)
        subscriber = subprocess.Popen(
            [*session, "-d", "-F", "%t", "-C", str(messages)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        output = _SubscriberOutput(subscriber)
        senders: list[subprocess.Popen[bytes]] = []
        try:
            started = time.monotonic()
            for path, topic in files:
                sender = subprocess.Popen(
                    [pub, "-h", "127.0.0.1", "-p", port, "-q", "1", "-r", "-t", topic, "-l"], stdin=subprocess.PIPE
                )
                senders.append(sender)
                # mosquitto_pub 2.0.11 -l disconnects at end of input without sending what it still queues
                # (measured: 26,555 of 100,000 lines arrived), so its input stays open until all has arrived.
                threading.Thread(target=_feed, args=(path, sender), daemon=True).start()
            try:
                subscriber.wait(timeout=RECEIVE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                subscriber.kill()
            output.join(5)
        finally:
            for sender in senders:
                if sender.stdin is not None:
                    with contextlib.suppress(OSError):
                        sender.stdin.close()
            for process in (*senders, subscriber):
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        return CClients(
            published=messages,
            received=output.received,
            elapsed_s=output.last_received_at - started,
            version=mosquitto.version,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ingest_ceiling",
        description="Live ingest: the monitor vs a plain paho subscriber vs Mosquitto's own C clients.",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="publishing time of the paho phases (default 10)")
    parser.add_argument("--agents", type=int, default=1000, help="distinct agents of the paho phases (default 1000)")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes, each phase (default 2)")
    parser.add_argument("--messages", type=int, default=200_000, help="messages the C clients send (default 200000)")
    add_mqtt_reader_option(parser)
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.agents < 1 or not 1 <= args.publishers <= args.agents or args.messages < 1:
        parser.error("need --seconds > 0, --agents >= 1, 1 <= --publishers <= --agents and --messages >= 1")
    args.profile = None  # benchmarks.ingest's phases read it

    with tempfile.TemporaryDirectory(prefix="fleetpulse-ingest-ceiling-") as name:
        directory = Path(name)
        print("  C clients ...", flush=True)
        c_clients = measure_c_clients(directory, args.publishers, args.messages)
        print("  raw paho ...", flush=True)
        raw_live, raw_backlog, _ = measure_raw(directory, args)
        print("  monitor ...", flush=True)
        monitor = measure_monitor_live(directory, args, None)

    machine = machine_description()
    stored_per_s, raw_per_s, c_per_s = monitor.phase.per_s, raw_live.per_s, c_clients.per_s
    rows = [
        ("fleetpulse monitor (rows in DuckDB)", monitor.phase.load.acked, monitor.stored, stored_per_s, monitor.lost),
        (
            "plain paho subscriber",
            raw_live.load.acked,
            raw_live.received,
            raw_per_s,
            raw_live.load.acked - raw_live.received,
        ),
        ("mosquitto_pub -> mosquitto_sub (C)", c_clients.published, c_clients.received, c_per_s, c_clients.lost),
        (
            "plain paho, draining a queued backlog",
            raw_backlog.load.acked,
            raw_backlog.received,
            raw_backlog.per_s,
            raw_backlog.load.acked - raw_backlog.received,
        ),
    ]
    lines = [
        f"live ingest through Mosquitto {c_clients.version} ({', '.join(MOSQUITTO_LIMITS)}), QoS 1, retained, "
        f"{args.publishers} publisher process(es) per phase",
        f"machine: {machine['platform']} ({machine['machine']}), {machine['cpu_count']} CPUs, "
        f"Python {machine['python']}",
        f"paho phases: {args.agents} agents for {args.seconds:g} s (benchmarks.ingest); C clients: {args.messages:,} "
        f"lines from files, one agent topic per mosquitto_pub",
        "",
        f"{'sink':38}{'published':>11}{'received':>11}{'per s':>10}{'lost':>9}{'of C':>7}",
    ]
    for label, published, received, per_s, lost in rows:
        lines.append(f"{label:38}{published:>11,}{received:>11,}{per_s:>10,.0f}{lost:>9,}{per_s / c_per_s:>7.2f}")
    lines += [
        "",
        "per s: received / (first publish -> last received or committed); of C: the C clients' rate = 1.00",
        "the backlog row (benchmarks.ingest's raw backlog phase) is a paho subscriber without publishers competing",
        "for the CPU: the Python subscriber's own ceiling",
        f"paho publishers offered {monitor.phase.load.per_s:,.0f} msg/s (monitor phase), {raw_live.load.per_s:,.0f} "
        "msg/s (raw phase); the C publishers send as fast as their 20 unacknowledged QoS 1 messages allow",
    ]
    print("\n".join(lines))
    summary = {
        "seconds": args.seconds,
        "agents": args.agents,
        "publishers": args.publishers,
        "messages": args.messages,
        "stored_per_s": round(stored_per_s),
        "raw_paho_per_s": round(raw_per_s),
        "c_clients_per_s": round(c_per_s),
        "stored_vs_raw": round(stored_per_s / raw_per_s, 3),
        "stored_vs_c": round(stored_per_s / c_per_s, 3),
        "raw_vs_c": round(raw_per_s / c_per_s, 3),
        "published": monitor.phase.load.acked,
        "stored": monitor.stored,
        "lost": monitor.lost,
        "raw_paho_backlog_per_s": round(raw_backlog.per_s),
        "raw_published": raw_live.load.acked,
        "raw_received": raw_live.received,
        "c_clients_published": c_clients.published,
        "c_clients_received": c_clients.received,
        "c_clients_lost": c_clients.lost,
        "c_clients_elapsed_s": round(c_clients.elapsed_s, 3),
        "mosquitto": c_clients.version,
        "mosquitto_config": list(MOSQUITTO_LIMITS),
        "machine": machine,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
