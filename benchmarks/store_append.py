"""Measure what storing a heartbeat row costs the monitor: `Store.write` of heartbeat batches, Arrow vs pandas.

Run from the repository root: `python -m benchmarks.store_append [--rows N] [--pandas]` (default 100,000 rows;
`--rows 2000 --pandas` is the CI smoke run). Heartbeats are built as the monitor builds them: the JSON that
`benchmarks._ingest_publisher` publishes (identity, status, a one-model metrics window) for `--agents` agents
round-robin, parsed by `publisher.protocol.parse_health` and added with `WriteBatch.add_message`. Batches of
`--batch-rows` (the monitor's flush_rows) are written with `Store.write` into a fresh DuckDB file in a temporary
directory, after one untimed warm-up batch. With `--pandas`, the same batches also go into a second fresh file
through the DataFrame path `Store._append` had before the Arrow one (kept here, not in the product), batch by
batch with each path first every other batch, so both see the same machine load; then the two files'
heartbeats are compared row by row. CPU per row is the steadier figure on a busy machine; wall time adds
waits (writing the WAL at commit, DuckDB's automatic checkpoints: the slowest batch). `WriteBatch.add_message`
is timed too, with and without a per-model split. The figures are printed as a table and, on the last line,
as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa  # type: ignore[import-untyped]

from benchmarks._ingest_publisher import agent_id, heartbeat_template
from benchmarks.sdk_overhead import machine_description
from fleetpulse.monitor.store import Store, WriteBatch
from fleetpulse.publisher.protocol import HealthMessage, health_topic, parse_health
from fleetpulse.publisher.wire import format_timestamp

WARMUP_ROWS = 100
ADD_MESSAGE_CALLS = 5_000
ADD_MESSAGE_REPEATS = 5  # the median counts


def pandas_append(
    store: Store, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], replace: bool = False
) -> None:
    """`Store._append` as it was before the Arrow path: a DataFrame of the row tuples (the "before" figure)."""
    frame = pd.DataFrame.from_records(rows, columns=list(columns))
    verb = "INSERT OR REPLACE INTO" if replace else "INSERT INTO"
    quoted = ", ".join(f'"{column}"' for column in columns)
    store._connection.register("fleetpulse_batch", frame)
    try:
        store._connection.execute(f"{verb} {table} ({quoted}) SELECT {quoted} FROM fleetpulse_batch")
    finally:
        store._connection.unregister("fleetpulse_batch")


class PandasStore(Store):
    """A Store that appends through the old DataFrame path; everything else (transaction, batch) as the product."""

    def _append(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], replace: bool = False) -> None:
        pandas_append(self, table, columns, rows, replace)


def heartbeat_messages(count: int, agents: int) -> list[HealthMessage]:
    """`count` parsed heartbeats, round-robin over `agents` agents with seq 0, 1, 2 … each."""
    host, pid = socket.gethostname(), os.getpid()
    templates = [heartbeat_template(agent_id(n), secrets.token_hex(8), host, pid) for n in range(agents)]
    topics = [health_topic(agent_id(n)) for n in range(agents)]
    messages = []
    for index in range(count):
        agent = index % agents
        payload = templates[agent] % {"seq": index // agents, "sent_at": format_timestamp(datetime.now(UTC))}
        messages.append(parse_health(topics[agent], payload.encode()))
    return messages


def batches_of(messages: Sequence[HealthMessage], batch_rows: int) -> list[WriteBatch]:
    batches = []
    for start in range(0, len(messages), batch_rows):
        batch = WriteBatch()
        for message in messages[start : start + batch_rows]:
            batch.add_message(message, datetime.now(UTC), snapshot=False)
        batches.append(batch)
    return batches


@dataclass
class PathTimes:
    """Wall and CPU seconds of each `Store.write` of one path."""

    name: str
    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)

    def figures(self, rows: int) -> dict[str, float]:
        wall, cpu = sum(self.wall_s), sum(self.cpu_s)
        return {
            "rows_per_s": round(rows / wall),
            "us_per_row": round(wall / rows * 1e6, 2),
            "cpu_us_per_row": round(cpu / rows * 1e6, 2),  # the process's CPU: DuckDB's threads included
            "batch_ms_median": round(statistics.median(self.wall_s) * 1e3, 2),
            "batch_ms_max": round(max(self.wall_s) * 1e3, 2),
        }


def timed_write(store: Store, batch: WriteBatch, times: PathTimes) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    store.write(batch)
    times.wall_s.append(time.perf_counter() - wall)
    times.cpu_s.append(time.process_time() - cpu)


def add_message_us(messages: Sequence[HealthMessage]) -> float:
    """Median µs of one `WriteBatch.add_message` call over `messages`."""
    received_at = datetime.now(UTC)
    runs = []
    for _ in range(ADD_MESSAGE_REPEATS):
        batch = WriteBatch()
        add = batch.add_message
        started = time.perf_counter()
        for message in messages:
            add(message, received_at, False)
        runs.append((time.perf_counter() - started) / len(messages) * 1e6)
    return statistics.median(runs)


def without_by_model(message: HealthMessage) -> HealthMessage:
    assert message.metrics is not None
    return message.model_copy(update={"metrics": message.metrics.model_copy(update={"by_model": {}})})


def stored_heartbeats(store: Store) -> list[tuple[Any, ...]]:
    _, rows, _ = store.query("SELECT * FROM heartbeats ORDER BY agent, seq", limit=100_000_000)
    return rows


def run(directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    load_at_start = os.getloadavg()[0]
    messages = heartbeat_messages(WARMUP_ROWS + args.rows, args.agents)
    (warmup,) = batches_of(messages[:WARMUP_ROWS], WARMUP_ROWS)
    batches = batches_of(messages[WARMUP_ROWS:], args.batch_rows)
    paths: list[tuple[Store, PathTimes]] = [(Store(directory / "arrow.duckdb"), PathTimes("arrow"))]
    if args.pandas:
        paths.append((PandasStore(directory / "pandas.duckdb"), PathTimes("pandas")))
    try:
        for store, _ in paths:
            store.write(warmup)
        for index, batch in enumerate(batches):
            for store, times in paths[::-1] if index % 2 else paths:  # each path goes first every other batch
                timed_write(store, batch, times)
        figures: dict[str, Any] = {
            "rows": args.rows,
            "batch_rows": args.batch_rows,
            "batches": len(batches),
            "agents": args.agents,
            "warmup_rows": WARMUP_ROWS,
            **paths[0][1].figures(args.rows),
        }
        arrow_rows = stored_heartbeats(paths[0][0])
        figures["stored"] = len(arrow_rows) - WARMUP_ROWS
        if args.pandas:
            figures["pandas"] = paths[1][1].figures(args.rows)
            figures["pandas_over_arrow"] = round(figures["pandas"]["us_per_row"] / figures["us_per_row"], 2)
            figures["same_rows"] = stored_heartbeats(paths[1][0]) == arrow_rows
    finally:
        for store, _ in paths:
            store.close()
    sample = messages[:ADD_MESSAGE_CALLS]
    figures["add_message_us"] = {
        "with_by_model": round(add_message_us(sample), 3),
        "without_by_model": round(add_message_us([without_by_model(m) for m in sample]), 3),
    }
    figures["versions"] = {"pyarrow": pa.__version__, "pandas": pd.__version__}
    figures["load_at_start"] = round(load_at_start, 2)
    figures["machine"] = machine_description()
    return figures


def format_report(figures: dict[str, Any]) -> str:
    machine = figures["machine"]
    lines = [
        f"fleetpulse store append: {figures['rows']:,} heartbeat rows of {figures['agents']:,} agents, "
        f"Store.write in batches of {figures['batch_rows']:,} into a fresh DuckDB file",
        f"machine: {machine['platform']} ({machine['machine']}), {machine['cpu_count']} CPUs, "
        f"Python {machine['python']}; load {figures['load_at_start']:g} at start",
        "",
        f"{'path':24}{'rows/s':>10}{'us/row':>9}{'CPU us/row':>12}{'batch ms median':>17}{'max':>9}",
    ]
    rows = [("arrow (Store._append)", figures)]
    if "pandas" in figures:
        rows.append(("pandas (before)", figures["pandas"]))
    for label, path in rows:
        lines.append(
            f"{label:24}{path['rows_per_s']:>10,}{path['us_per_row']:>9.2f}{path['cpu_us_per_row']:>12.2f}"
            f"{path['batch_ms_median']:>17.2f}{path['batch_ms_max']:>9.2f}"
        )
    if "pandas" in figures:
        same = "the same rows" if figures["same_rows"] else "DIFFERENT rows"
        lines.append(f"pandas takes {figures['pandas_over_arrow']:g}x the time per row of arrow; both stored {same}")
    add = figures["add_message_us"]
    lines += [
        "",
        f"WriteBatch.add_message: {add['with_by_model']:.2f} us/row with a per-model split, "
        f"{add['without_by_model']:.2f} us/row without",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.store_append",
        description="Time Store.write of realistic heartbeat batches (and, with --pandas, the old DataFrame path).",
    )
    parser.add_argument("--rows", type=int, default=100_000, help="heartbeat rows timed (default 100,000)")
    parser.add_argument("--batch-rows", type=int, default=5_000, help="rows per Store.write (default 5,000)")
    parser.add_argument("--agents", type=int, default=1_000, help="agents the heartbeats come from (default 1,000)")
    parser.add_argument("--pandas", action="store_true", help="also time the old DataFrame path and compare")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.batch_rows < 1 or args.agents < 1:
        parser.error("need --rows, --batch-rows and --agents >= 1")
    with tempfile.TemporaryDirectory(prefix="fleetpulse-store-append-") as name:
        figures = run(Path(name), args)
    print(format_report(figures))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
