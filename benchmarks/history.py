"""Measure the history queries and retention over a month of a large fleet: query times, file size, roll-up cost.

Run from the repository root: `python -m benchmarks.history [--agents 1000] [--days 30] [--interval-s 30]`
(`--agents 20 --days 2` is the CI smoke run). A fresh DuckDB file gets the real schema (monitor.schema.migrate)
and a generated history, written directly through SQL (generate_series), no broker or monitor involved:

* heartbeats: every agent every `--interval-s` for `--days` up to now, in time order as the monitor appends
  them, agents spread over the interval; tasks, latency and, for half the agents (the "LLM" ones), cost, tokens
  and a two-model by_model JSON; none while the monitor was down (below). Agents keep heartbeating through
  their injected outages (an upper bound on volume: a dead agent sends nothing);
* transitions: about 3 outages per agent per week (80 % of 1-15 min, 15 % of 15 min-2 h, 5 % of 3-6 h, so
  some cross midnight; 70 % unreachable, 30 % degraded); agents come in groups of 10, where members 1-4
  depend on member 0 and members 5-9 on member 1, and every unreachable outage of a member 0 degrades its 9
  dependents shortly after (a 2-level dependency chain: `incidents` folds them under the root). Outages still
  going at the end stay open;
* monitor_events: `alive` every 15 s, one graceful restart (20 min gap), one crash (7 min gap) and one broker
  loss (2 min);
* agents: one row each, with depends_on.

Then, on a `monitor.store.Store` over the file (as the monitor and dashboard read it), the typical history
questions are timed (median of `--repeats` runs, every row fetched; a query over 5 s is run once): outages of
the last 7 days, availability per agent and day over the whole period, reliability (MTTR/MTBF) over 30 days,
incidents, cost per agent and day with the per-model split, and "what was down at T" from fleet_timeline.
This "raw" state is a monitor that never ran retention. Then retention runs with the monitor's defaults
(monitor/retention.py: raw 7 days, minutes 90 days; `--raw-retention-days` to change the first), one hour of
data per step and call, as the monitor's core thread calls it, until no backlog is left: the longest call is
the longest ingest would pause. The same queries are timed again. Sizes (file + WAL, blocks in use and free,
MiB per table): raw, after the roll-up, after a CHECKPOINT; then one more day of heartbeats is appended and
rolled up, to see whether the blocks the roll-up freed are reused or the file grows; and a compacted copy
(COPY FROM DATABASE into a fresh file, offline) shows the smallest file the same rows take. Figures are
printed as a table with the machine, and on the last line as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from benchmarks.sdk_overhead import Target, machine_description
from fleetpulse.monitor.retention import MINUTE_RETENTION_S, RAW_RETENTION_S, RollUp
from fleetpulse.monitor.schema import migrate
from fleetpulse.monitor.store import Store

TARGET_QUERY_MS = 1000.0  # "well under a second" (issue 6)
SLOW_QUERY_MS = 5000.0  # a query this slow is timed once
ALIVE_EVERY_S = 15
OUTAGE_SLOT_S = 56 * 3600  # one outage per agent per slot: 3 a week
MIB = 1024 * 1024
_STARTED = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - _STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class History:
    """The generated history's shape: every time in it is whole epoch seconds from `start_s` to `end_s`."""

    agents: int
    days: int
    interval_s: int
    start_s: int
    end_s: int

    @property
    def intervals(self) -> int:
        return self.days * 86_400 // self.interval_s

    def at(self, share: float) -> int:
        """A whole minute at `share` of the way through the history."""
        moment = self.start_s + int((self.end_s - self.start_s) * share)
        return moment - moment % 60

    @property
    def gaps(self) -> list[tuple[int, int, str]]:
        """The monitor's gaps: (start, end, kind); the crash's starts at the monitor's last `alive`."""
        return [
            (self.at(0.35), self.at(0.35) + 20 * 60, "restart"),
            (self.at(0.62), self.at(0.62) + 7 * 60, "crash"),
            (self.at(0.83), self.at(0.83) + 2 * 60, "broker"),
        ]


def _agent_name(expression: str, agents: int) -> str:
    width = max(4, len(str(agents - 1)))
    return f"('agent-' || lpad(CAST({expression} AS VARCHAR), {width}, '0'))"


def _sql_list(values: list[str]) -> str:
    return "[" + ", ".join(values) + "]"


# An "LLM" agent's window: `ok` tasks on gpt-4o-mini and 0-3 extra calls on claude-3-5-haiku. Every combination
# is written here once, as the SDK would send it (json.dumps), and picked per row by index: building JSON
# per row in SQL would take most of the generation time.
_WINDOWS = [
    (
        {
            "gpt-4o-mini": (ok * 0.0015, ok * 900, ok * 120),
            "claude-3-5-haiku": (extra * 0.0007, extra * 400, extra * 60),
        }
        if ok
        else {}
    )
    for ok in range(6)
    for extra in range(4)
]
_WINDOW_JSON = _sql_list(
    [
        "'" + json.dumps({m: {"cost_usd": c, "tokens_in": i, "tokens_out": o} for m, (c, i, o) in w.items()}) + "'"
        for w in _WINDOWS
    ]
)
_WINDOW_FIGURES = {
    figure: _sql_list([repr(sum(model[index] for model in w.values())) for w in _WINDOWS])
    for index, figure in enumerate(("cost_usd", "tokens_in", "tokens_out"))
}


def _heartbeats_sql(history: History, k_from: int, k_to: int) -> str:
    """INSERT the heartbeats of intervals [k_from, k_to) for every agent, in time order (no sort needed)."""
    interval_ms = history.interval_s * 1000
    agents = history.agents
    outside_gaps = " AND ".join(f"NOT (s >= {start} AND s < {end})" for start, end, _ in history.gaps)
    name = _agent_name("a", agents)
    return f"""
    INSERT INTO heartbeats
    WITH g AS (
        SELECT i // {agents} AS k, i % {agents} AS a, hash(i) AS h,
               {history.start_s} + i // {agents} * {history.interval_s}
                 + (i % {agents} * 7919 % {interval_ms}) / 1000.0 AS s  -- agents spread over the interval
        FROM range({k_from * agents}, {k_to * agents}) t(i)
    ),
    w AS (
        SELECT a, k, h, to_timestamp(s) AS received_at, CAST(h % 6 AS BIGINT) AS ok,
               CASE WHEN a % 2 = 0 THEN CAST(h % 6 * 4 + (h >> 8) % 4 + 1 AS INTEGER) END AS slot
        FROM g WHERE {outside_gaps}
    )
    SELECT {name}, {name} || '/1', k, 'heartbeat', received_at, received_at - INTERVAL 15 MILLISECOND,
           'healthy', NULL, ok, CAST(h % 53 = 0 AS BIGINT), 180 + h % 400, 2.5 * (180 + h % 400),
           4 * (180 + h % 400),
           coalesce({_WINDOW_FIGURES["cost_usd"]}[slot], 0.0),
           coalesce({_WINDOW_FIGURES["tokens_in"]}[slot], 0),
           coalesce({_WINDOW_FIGURES["tokens_out"]}[slot], 0),
           coalesce({_WINDOW_JSON}[slot], '{{}}'),
           received_at - INTERVAL 3 SECOND, false, false
    FROM w
    """


def _outages_sql(history: History) -> str:
    """Every injected outage: (a, start_s, end_s, state, reason), own ones and the cascades down the chains."""
    half = OUTAGE_SLOT_S // 2
    slots = -(-(history.end_s - history.start_s) // OUTAGE_SLOT_S)
    return f"""
    WITH own AS (
        SELECT a, {history.start_s} + j * {OUTAGE_SLOT_S} + CASE WHEN a % 10 = 0 THEN {half} ELSE 0 END
                 + h % ({half} - 7 * 3600) AS start_s,
               CASE WHEN h % 100 < 80 THEN 60 + (h >> 8) % 840
                    WHEN h % 100 < 95 THEN 900 + (h >> 8) % 6300
                    ELSE 10800 + (h >> 8) % 10800 END AS duration_s,
               CASE WHEN (h >> 20) % 10 < 7 THEN 'unreachable' ELSE 'degraded' END AS state
        FROM (SELECT a, j, hash(a, j, 'outage') AS h FROM range({history.agents}) r(a), range({slots}) t(j))
    ),
    cascade AS (
        SELECT o.a + m AS a, o.start_s + CASE WHEN m < 5 THEN 20 ELSE 40 END + 2 * m AS start_s,
               o.start_s + o.duration_s + 15 + m AS end_s, 'degraded' AS state,
               'dependency agent ' || (CASE WHEN m < 5 THEN o.a ELSE o.a + 1 END) || ' is down' AS reason
        FROM own o, range(1, 10) d(m)
        WHERE o.a % 10 = 0 AND o.state = 'unreachable' AND o.a + m < {history.agents}
    )
    SELECT a, start_s, start_s + duration_s AS end_s, state,
           CASE WHEN state = 'unreachable' THEN 'will: connection lost' ELSE 'reported degraded' END AS reason
    FROM own
    UNION ALL
    SELECT * FROM cascade
    """


def generate(connection: duckdb.DuckDBPyConnection, history: History) -> dict[str, float]:
    """Write the whole history; return how long each part took (s)."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    per_day = 86_400 // history.interval_s
    for day in range(history.days):
        k_to = history.intervals if day == history.days - 1 else (day + 1) * per_day
        connection.execute(_heartbeats_sql(history, day * per_day, k_to))
        if day % 5 == 4 or day == history.days - 1:
            progress(f"heartbeats: {day + 1}/{history.days} days")
    timings["heartbeats_s"] = time.perf_counter() - started

    started = time.perf_counter()
    name = _agent_name("a", history.agents)
    end = history.end_s
    connection.execute(f"CREATE TEMP TABLE injected AS {_outages_sql(history)}")
    connection.execute(
        f"""INSERT INTO transitions (agent, "at", from_state, to_state, reason, snapshot)
        SELECT agent, "at", from_state, to_state, reason, false FROM (
            SELECT {name} AS agent, to_timestamp(start_s) AS "at", 'healthy' AS from_state, state AS to_state, reason
            FROM injected WHERE start_s < {end}
            UNION ALL
            SELECT {name}, to_timestamp(end_s), state, 'healthy', 'heartbeat resumed'
            FROM injected WHERE end_s < {end}
        ) ORDER BY "at", agent"""
    )
    connection.execute(
        f"""INSERT INTO agents (agent, name, host, pid, version, "group", interval_s, depends_on, labels,
                                first_seen, last_seen, state, reason, state_since, session, last_seq,
                                last_heartbeat_at, reported_status, reported_reason, paused)
        SELECT {name}, {name}, 'host-' || a // 10, 1000 + a, '1.4.2', NULL, {history.interval_s},
               CASE WHEN a % 10 = 0 THEN []
                    WHEN a % 10 < 5 THEN [{_agent_name("a - a % 10", history.agents)}]
                    ELSE [{_agent_name("a - a % 10 + 1", history.agents)}] END,
               '{{}}', to_timestamp({history.start_s}), to_timestamp({end}),
               coalesce(t.to_state, 'healthy'), coalesce(t.reason, 'heartbeat'), t."at", {name} || '/1',
               {history.intervals - 1}, to_timestamp({end}), 'healthy', NULL, false
        FROM range({history.agents}) r(a) LEFT JOIN (
            SELECT agent, arg_max(to_state, "at") AS to_state, arg_max(reason, "at") AS reason, max("at") AS "at"
            FROM transitions GROUP BY agent
        ) t ON t.agent = {name}"""
    )
    restart, crash, broker = history.gaps
    not_in_gaps = " AND ".join(f"NOT (s >= {start} AND s < {end_s})" for start, end_s, _ in history.gaps[:2])
    connection.execute(
        f"""INSERT INTO monitor_events ("at", monitor_id, event, detail)
        SELECT to_timestamp(s), 'default', 'alive', NULL
        FROM range({history.start_s - 45}, {end}, {ALIVE_EVERY_S}) t(s) WHERE {not_in_gaps}
        UNION ALL SELECT to_timestamp(s), 'default', event, NULL FROM (VALUES
            ({history.start_s - 60}, 'started'), ({restart[0]}, 'stopped'), ({restart[1]}, 'started'),
            ({crash[1]}, 'started'), ({broker[0]}, 'broker_lost'), ({broker[1]}, 'broker_connected')
        ) v(s, event)
        ORDER BY 1"""
    )
    timings["transitions_events_agents_s"] = time.perf_counter() - started
    started = time.perf_counter()
    connection.execute("CHECKPOINT")
    timings["checkpoint_s"] = time.perf_counter() - started
    return timings


def file_mib(path: Path) -> float:
    wal = path.with_name(path.name + ".wal")
    return (path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)) / MIB


TABLES = ("heartbeats", "heartbeats_minute", "heartbeats_hour", "cost_hourly_by_model", "transitions", "monitor_events")


def storage(store: Store, path: Path) -> dict[str, Any]:
    """The file's size, its blocks in use and free (free blocks are reused by new rows), and per table."""
    _, rows, _ = store.query("SELECT used_blocks, free_blocks, block_size FROM pragma_database_size()")
    used, free, block_size = (int(value) for value in rows[0])
    tables = {}
    for table in TABLES:
        _, counted, _ = store.query(
            f"SELECT (SELECT count(*) FROM {table}), count(DISTINCT block_id) FROM pragma_storage_info('{table}') "
            "WHERE block_id >= 0"
        )
        tables[table] = {"rows": int(counted[0][0]), "mib": round(int(counted[0][1]) * block_size / MIB, 1)}
    return {
        "file_mib": round(file_mib(path), 1),
        "used_mib": round(used * block_size / MIB, 1),
        "free_mib": round(free * block_size / MIB, 1),
        "tables": tables,
    }


@dataclass(frozen=True)
class Query:
    name: str
    label: str
    sql: str
    parameters: dict[str, Any]


def history_queries(now: datetime, down_at: datetime, days: int) -> list[Query]:
    month = now - timedelta(days=min(days, 30))
    week = now - timedelta(days=7)
    return [
        Query(
            "outages_7d",
            "outages of the last 7 days",
            "SELECT agent, state, started_at, ended_at, duration_s FROM outages "
            "WHERE ended_at IS NULL OR ended_at >= $since ORDER BY started_at DESC, agent",
            {"since": week},
        ),
        Query(
            "availability_daily",
            f"availability_daily, {days} days, all agents",
            "SELECT * FROM availability_daily WHERE day >= CAST($since AS DATE) ORDER BY agent, day",
            {"since": now - timedelta(days=days)},
        ),
        Query(
            "reliability_30d",
            "reliability(now - 30 d, now)",
            "SELECT * FROM reliability($since, $until) ORDER BY agent",
            {"since": month, "until": now},
        ),
        Query(
            "incidents",
            "incidents (by root cause)",
            "SELECT * FROM incidents WHERE started_at >= $since ORDER BY started_at, incident_id",
            {"since": month},
        ),
        Query(
            "cost_daily",
            f"cost_daily, {days} days, by_model split",
            "SELECT * FROM cost_daily ORDER BY agent, day",
            {},
        ),
        Query(
            "down_at",
            "what was down at T (fleet_timeline)",
            "SELECT agent, state, reason, started_at FROM fleet_timeline WHERE started_at <= $t "
            "AND (ended_at IS NULL OR ended_at > $t) AND state IN ('degraded', 'unreachable') ORDER BY agent",
            {"t": down_at},
        ),
    ]


@dataclass(frozen=True)
class Timed:
    median_ms: float
    first_ms: float
    rows: int
    result: list[tuple[Any, ...]]


def time_query(store: Store, query: Query, repeats: int) -> Timed:
    samples: list[float] = []
    rows: list[tuple[Any, ...]] = []
    for _ in range(repeats):
        started = time.perf_counter()
        _, rows, _ = store.query(query.sql, query.parameters, limit=10_000_000)
        samples.append((time.perf_counter() - started) * 1000)
        if samples[-1] > SLOW_QUERY_MS:
            break  # minutes of repeats would add nothing
    return Timed(statistics.median(samples), samples[0], len(rows), rows)


def time_queries(store: Store, queries: list[Query], repeats: int) -> dict[str, Timed]:
    timed = {}
    for query in queries:
        timed[query.name] = time_query(store, query, repeats)
        progress(f"{query.name}: {timed[query.name].median_ms:.0f} ms, {timed[query.name].rows:,} rows")
    return timed


@dataclass(frozen=True)
class RollUpRun:
    calls: int
    total_s: float
    max_call_ms: float
    p95_call_ms: float
    median_call_ms: float
    totals: dict[str, int]  # RollUp's counts, summed over the calls


def settled(name: str, rows: list[tuple[Any, ...]], today: date) -> list[tuple[Any, ...]]:
    """The rows of a query's result that do not move with the clock (open outages and today count up to now)."""
    if name in ("outages_7d", "incidents"):
        return [row for row in rows if row[3] is not None]  # ended_at
    if name == "availability_daily":
        return [row for row in rows if row[1] < today]
    return rows


def run_retention(store: Store, now: datetime, raw_keep_s: float, minute_keep_s: float) -> RollUpRun:
    """Roll up with the given limits, one chunk per call as the monitor does, until no backlog is left."""
    calls: list[tuple[float, RollUp]] = []
    started = time.perf_counter()
    while True:
        call_started = time.perf_counter()
        result = store.roll_up(now, raw_keep_s, minute_keep_s)
        calls.append((time.perf_counter() - call_started, result))
        if len(calls) % 100 == 0:
            progress(f"roll-up: {len(calls)} calls")
        if not result.backlog:
            break
    total_s = time.perf_counter() - started
    durations_ms = [seconds * 1000 for seconds, _ in calls]
    return RollUpRun(
        calls=len(calls),
        total_s=total_s,
        max_call_ms=max(durations_ms),
        p95_call_ms=statistics.quantiles(durations_ms, n=20)[-1] if len(durations_ms) > 1 else durations_ms[0],
        median_call_ms=statistics.median(durations_ms),
        totals={
            name: sum(getattr(r, name) for _, r in calls)
            for name in (
                "summed_rows",
                "hour_rows_added",
                "model_rows_added",
                "raw_rows",
                "minute_rows_added",
                "minute_rows",
            )
        },
    )


def compact(path: Path, target: Path) -> float:
    """COPY FROM DATABASE into a fresh file (DuckDB's documented way to shrink a file); the seconds it took."""
    connection = duckdb.connect()
    try:
        started = time.perf_counter()
        connection.execute(f"ATTACH '{path}' AS source (READ_ONLY)")
        connection.execute(f"ATTACH '{target}' AS compacted")
        connection.execute("COPY FROM DATABASE source TO compacted")
        connection.execute("DETACH compacted")
        return time.perf_counter() - started
    finally:
        connection.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.history",
        description="History query times, database size and retention over a generated month of a fleet.",
    )
    parser.add_argument("--agents", type=int, default=1000, help="agents (default 1000)")
    parser.add_argument("--days", type=int, default=30, help="days of history up to now (default 30)")
    parser.add_argument("--interval-s", type=int, default=30, help="heartbeat interval (default 30)")
    parser.add_argument(
        "--raw-retention-days",
        type=float,
        default=RAW_RETENTION_S / 86_400,
        help=f"raw heartbeats kept (default {RAW_RETENTION_S / 86_400:g}, the monitor's; at least 1)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each query; the median counts (default 3)")
    parser.add_argument("--db", type=Path, help="write the database here (kept) instead of a temporary directory")
    args = parser.parse_args(argv)
    if args.agents < 1 or args.days < 1 or not 1 <= args.interval_s <= 3600 or args.repeats < 1:
        parser.error("need --agents >= 1, --days >= 1, 1 <= --interval-s <= 3600, --repeats >= 1")
    if not 1 <= args.raw_retention_days <= MINUTE_RETENTION_S / 86_400:
        parser.error(f"need 1 <= --raw-retention-days <= {MINUTE_RETENTION_S / 86_400:g}")

    with tempfile.TemporaryDirectory(prefix="fleetpulse-history-") as name:
        path = args.db or Path(name) / "fleetpulse.duckdb"
        for stale in (path, path.with_name(path.name + ".wal")):
            stale.unlink(missing_ok=True)
        figures = run(path, Path(name) / "compacted.duckdb", args)
    print(format_report(figures))
    print(json.dumps(figures))


def run(path: Path, compacted: Path, args: argparse.Namespace) -> dict[str, Any]:
    load_at_start = os.getloadavg()[0]
    end_s = int(time.time()) // 60 * 60
    history = History(args.agents, args.days, args.interval_s, end_s - args.days * 86_400, end_s)
    raw_keep_s = args.raw_retention_days * 86_400
    figures: dict[str, Any] = {"agents": args.agents, "days": args.days, "interval_s": args.interval_s}

    connection = duckdb.connect(str(path))
    connection.execute("SET TimeZone = 'UTC'")
    migrate(connection)
    progress(f"generating {history.agents:,} agents x {history.days} days every {history.interval_s} s into {path}")
    generation = generate(connection, history)
    connection.close()

    store = Store(path)
    raw = storage(store, path)
    figures |= {
        "heartbeats": raw["tables"]["heartbeats"]["rows"],
        "transitions": raw["tables"]["transitions"]["rows"],
        "generation_s": round(sum(generation.values()), 1),
        "generation": {name: round(seconds, 1) for name, seconds in generation.items()},
    }
    progress(f"generated {figures['heartbeats']:,} heartbeats in {figures['generation_s']:.0f} s")
    now = datetime.now(UTC)
    # "What was down at T": halfway through the longest outage of the first dependency root, when its whole
    # group is degraded with it.
    _, rows, _ = store.query(
        "SELECT started_at + (ended_at - started_at) / 2 FROM outages WHERE agent = $root AND state = 'unreachable' "
        "AND ended_at IS NOT NULL ORDER BY duration_s DESC LIMIT 1",
        {"root": "agent-" + "0" * max(4, len(str(args.agents - 1)))},
    )
    queries = history_queries(now, rows[0][0] if rows else now - timedelta(hours=1), args.days)
    before = time_queries(store, queries, args.repeats)

    progress(f"retention: raw {args.raw_retention_days:g} days, minutes {MINUTE_RETENTION_S / 86_400:g} days")
    rolled = run_retention(store, now, raw_keep_s, MINUTE_RETENTION_S)
    rolled_up = storage(store, path)
    started = time.perf_counter()
    checkpointed = store.checkpoint()
    checkpoint_s = time.perf_counter() - started
    after_checkpoint = storage(store, path)
    after = time_queries(store, queries, args.repeats)
    store.close()

    progress("steady state: one more day of raw heartbeats, then its roll-up")
    connection = duckdb.connect(str(path))
    per_day = 86_400 // args.interval_s
    connection.execute(_heartbeats_sql(history, history.intervals, history.intervals + per_day))
    connection.execute("CHECKPOINT")
    connection.close()
    store = Store(path)
    plus_day = storage(store, path)
    next_day = run_retention(store, now + timedelta(days=1), raw_keep_s, MINUTE_RETENTION_S)
    store.checkpoint()
    plus_day_rolled = storage(store, path)
    store.close()

    progress("compacting a copy")
    compaction_s = compact(path, compacted)

    today = now.date()
    unchanged = {
        name: settled(name, before[name].result, today) == settled(name, after[name].result, today)
        for name in ("outages_7d", "availability_daily", "reliability_30d", "incidents", "down_at")
    }
    # cost_daily is a sum of doubles: summed in another order, only the last bits may change.
    cost_before = {(row[0], row[1]): row[2] for row in before["cost_daily"].result}
    cost_after = {(row[0], row[1]): row[2] for row in after["cost_daily"].result}
    slowest = max(t.median_ms for t in (*before.values(), *after.values()))
    slowest_after = max(t.median_ms for t in after.values())
    target = Target("slowest_query_ms_after_rollup", slowest_after, TARGET_QUERY_MS, False)
    return figures | {
        "db_mib_raw": raw["file_mib"],
        "db_mib_after_rollup": rolled_up["file_mib"],
        "db_mib_after_checkpoint": after_checkpoint["file_mib"],
        "db_used_mib_after_checkpoint": after_checkpoint["used_mib"],
        "db_mib_plus_one_day": plus_day["file_mib"],
        "db_mib_plus_one_day_rolled_up": plus_day_rolled["file_mib"],
        "db_mib_compacted": round(file_mib(compacted), 1),
        "compaction_s": round(compaction_s, 1),
        "storage": {
            "raw": raw,
            "after_rollup": rolled_up,
            "after_checkpoint": after_checkpoint,
            "plus_one_day": plus_day,
            "plus_one_day_rolled_up": plus_day_rolled,
        },
        "rollup_calls": rolled.calls,
        "rollup_s": round(rolled.total_s, 1),
        "rollup_max_call_ms": round(rolled.max_call_ms, 1),
        "rollup_p95_call_ms": round(rolled.p95_call_ms, 1),
        "rollup_median_call_ms": round(rolled.median_call_ms, 1),
        "rollup": rolled.totals,
        "rollup_checkpoint_s": round(checkpoint_s, 2),
        "rollup_checkpointed": checkpointed,
        "next_day_rollup_calls": next_day.calls,
        "next_day_rollup_max_call_ms": round(next_day.max_call_ms, 1),
        "next_day_rollup_median_call_ms": round(next_day.median_call_ms, 1),
        "query_ms": {name: round(t.median_ms, 1) for name, t in before.items()},
        "query_ms_after_rollup": {name: round(t.median_ms, 1) for name, t in after.items()},
        "query_rows": {name: t.rows for name, t in before.items()},
        "query_rows_after_rollup": {name: t.rows for name, t in after.items()},
        "history_views_unchanged_by_rollup": unchanged,
        "cost_daily_max_abs_difference_usd": max(
            (abs(cost - cost_after.get(key, 0.0)) for key, cost in cost_before.items()), default=0.0
        ),
        "slowest_query_ms": round(slowest, 1),
        "slowest_query_ms_after_rollup": round(slowest_after, 1),
        "target_met": target.met,
        "target": target.describe(),
        "raw_retention_s": raw_keep_s,
        "minute_retention_s": MINUTE_RETENTION_S,
        "duckdb": duckdb.__version__,
        "machine": machine_description()
        | {"load_average_1m_at_start": round(load_at_start, 2), "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
    }


def format_report(figures: dict[str, Any]) -> str:
    labels = {q.name: q.label for q in history_queries(datetime.now(UTC), datetime.now(UTC), figures["days"])}
    machine, rollup, sizes = figures["machine"], figures["rollup"], figures["storage"]
    lines = [
        f"history benchmark: {figures['agents']:,} agents x {figures['days']} days, a heartbeat every "
        f"{figures['interval_s']} s = {figures['heartbeats']:,} heartbeats, {figures['transitions']:,} transitions",
        f"machine: {machine['platform']}, {machine['cpu_count']} CPUs, Python {machine['python']}, DuckDB "
        f"{figures['duckdb']}; load average {machine['load_average_1m_at_start']} at the start, "
        f"{machine['load_average_1m_at_end']} at the end",
        f"generated through SQL in {figures['generation_s']:.0f} s ({json.dumps(figures['generation'])})",
        "",
        f"{'query (median, every row fetched)':46}{'raw ms':>10}{'rolled up ms':>14}{'rows':>9}   same result",
    ]
    for name, label in labels.items():
        same = figures["history_views_unchanged_by_rollup"].get(name)
        verdict = {True: "yes", False: "NO", None: "sums: below"}[same]
        lines.append(
            f"{label:46}{figures['query_ms'][name]:>10,.0f}{figures['query_ms_after_rollup'][name]:>14,.0f}"
            f"{figures['query_rows'][name]:>9,}   {verdict}"
        )
    lines += [
        f"slowest after the roll-up: {figures['slowest_query_ms_after_rollup']:,.0f} ms   target {figures['target']}"
        f"   (raw: the monitor before retention, cost_daily parsing every by_model JSON)",
        f"cost_daily before vs after: largest difference {figures['cost_daily_max_abs_difference_usd']:.2g} USD"
        " (doubles summed in another order)",
        "",
        f"retention, raw {figures['raw_retention_s'] / 86_400:g} d and minutes {MINUTE_RETENTION_S / 86_400:g} d, "
        "one hour of data per step and call as the monitor's core runs it:",
        f"  {rollup['summed_rows']:,} heartbeats summed into {rollup['hour_rows_added']:,} hour rows and "
        f"{rollup['model_rows_added']:,} by-model hour rows; {rollup['raw_rows']:,} moved into "
        f"{rollup['minute_rows_added']:,} minute rows",
        f"  {figures['rollup_calls']:,} calls in {figures['rollup_s']:.0f} s: median "
        f"{figures['rollup_median_call_ms']:.0f} ms, p95 {figures['rollup_p95_call_ms']:.0f} ms, longest "
        f"{figures['rollup_max_call_ms']:.0f} ms (ingest pauses this long per call); the next day's 24 hours: "
        f"{figures['next_day_rollup_calls']} calls, median {figures['next_day_rollup_median_call_ms']:.0f} ms",
        "",
        f"{'database':46}{'file MiB':>10}{'in use':>10}{'free':>10}   MiB by table",
    ]
    stages = (
        ("raw", "raw, as generated"),
        ("after_rollup", "after the roll-up"),
        ("after_checkpoint", f"after CHECKPOINT ({figures['rollup_checkpoint_s']:.1f} s)"),
        ("plus_one_day", "+ one more day of raw heartbeats"),
        ("plus_one_day_rolled_up", "+ that day rolled up, CHECKPOINT"),
    )
    for key, label in stages:
        stage = sizes[key]
        tables = ", ".join(f"{name} {table['mib']:,.0f}" for name, table in stage["tables"].items() if table["mib"])
        lines.append(
            f"{label:46}{stage['file_mib']:>10,.0f}{stage['used_mib']:>10,.0f}{stage['free_mib']:>10,.0f}   {tables}"
        )
    lines += [
        f"{'compacted copy (COPY FROM DATABASE, offline)':46}{figures['db_mib_compacted']:>10,.0f}"
        f"   ({figures['compaction_s']:.0f} s)",
        "rows after the roll-up: "
        + ", ".join(f"{name} {table['rows']:,}" for name, table in sizes["after_checkpoint"]["tables"].items()),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
