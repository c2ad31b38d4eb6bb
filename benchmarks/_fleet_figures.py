"""What the fleet benchmarks share: CPU and RSS of processes, and published-vs-stored accounting in DuckDB."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
import psutil

from benchmarks._fleet import Ledger

__all__ = ["MOSQUITTO_LIMITS", "ProcessUsage", "ResourceSampler", "StoredCheck", "check_stored", "mib"]

# Unlimited (0): Mosquitto's defaults (1000 queued, 20 in flight per client) drop heartbeats queued for a
# monitor that is restarting or behind. `benchmarks.ingest` runs with the same two lines.
MOSQUITTO_LIMITS = ("max_queued_messages 0", "max_inflight_messages 0")


def mib(size_bytes: float) -> float:
    return size_bytes / (1024 * 1024)


@dataclass(frozen=True)
class ProcessUsage:
    name: str
    cpu_percent: float  # of one core, over the sampled window
    rss_max_mib: float
    rss_last_mib: float


class ResourceSampler:
    """CPU time of named processes between `start()` and `stop()`, and their RSS sampled every `every_s`."""

    def __init__(self, pids: dict[str, list[int]], every_s: float = 1.0) -> None:
        self._processes = {name: [psutil.Process(pid) for pid in group] for name, group in pids.items()}
        self._every_s = every_s
        self._rss_max: dict[str, int] = dict.fromkeys(pids, 0)
        self._rss_last: dict[str, int] = dict.fromkeys(pids, 0)
        self._cpu_started: dict[str, float] = {}
        self._started = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-resources", daemon=True)

    def _cpu_s(self, name: str) -> float:
        total = 0.0
        for process in self._processes[name]:
            times = process.cpu_times()
            total += times.user + times.system
        return total

    def _sample(self) -> None:
        for name, group in self._processes.items():
            rss = sum(process.memory_info().rss for process in group)
            self._rss_last[name] = rss
            self._rss_max[name] = max(self._rss_max[name], rss)

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            self._sample()

    def start(self) -> ResourceSampler:
        self._cpu_started = {name: self._cpu_s(name) for name in self._processes}
        self._started = time.monotonic()
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> dict[str, ProcessUsage]:
        elapsed_s = time.monotonic() - self._started
        cpu = {name: self._cpu_s(name) - started for name, started in self._cpu_started.items()}
        self._stop.set()
        self._thread.join()
        self._sample()
        return {
            name: ProcessUsage(name, cpu[name] / elapsed_s * 100.0, mib(self._rss_max[name]), mib(self._rss_last[name]))
            for name in self._processes
        }


@dataclass(frozen=True)
class StoredCheck:
    """The `heartbeats` table against the fleet's ledger (kind = 'heartbeat' rows only)."""

    stored: int  # rows
    stored_distinct: int  # distinct (agent, session, seq)
    acked: int  # heartbeats the broker acknowledged to the fleet
    lost: int  # acknowledged, but no row

    @property
    def duplicates(self) -> int:
        return self.stored - self.stored_distinct


def check_stored(db_path: Path, ledger: Ledger) -> StoredCheck:
    """Match every acknowledged (agent, session, seq) of the ledger against the rows in `db_path`."""
    expected = pd.DataFrame.from_records(
        [(agent, session, published) for agent, runs in ledger.sessions.items() for session, published, _ in runs],
        columns=["agent", "session", "published"],
    )
    unacked = pd.DataFrame.from_records(
        [
            (agent, session, seq)
            for agent, runs in ledger.sessions.items()
            for session, _, missing in runs
            for seq in missing
        ]
        or [("", "", -1)],
        columns=["agent", "session", "seq"],
    )
    connection = duckdb.connect(str(db_path), read_only=True)
    try:
        connection.register("expected", expected)
        connection.register("unacked", unacked)
        stored, distinct = connection.execute(
            "SELECT count(*), count(DISTINCT (agent, session, seq)) FROM heartbeats WHERE kind = 'heartbeat'"
        ).fetchone() or (0, 0)
        row = connection.execute(
            """
            SELECT count(*) FROM (SELECT DISTINCT agent, session, seq FROM heartbeats WHERE kind = 'heartbeat') AS s
            JOIN expected AS e ON s.agent = e.agent AND s.session = e.session AND s.seq < e.published
            ANTI JOIN unacked AS u ON s.agent = u.agent AND s.session = u.session AND s.seq = u.seq
            """
        ).fetchone()
    finally:
        connection.close()
    matched = int(row[0]) if row else 0
    return StoredCheck(int(stored), int(distinct), ledger.acked, ledger.acked - matched)
