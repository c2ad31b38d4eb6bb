"""Retention: heartbeats' work figures kept per hour forever, per minute for a while, raw for a week.

Transitions, monitor events and agents are never touched: the outage history is kept whole, forever. Only the
heartbeats' work figures (tasks, cost, tokens, latency) lose resolution with age; their sums never change.
Every step does at most one chunk (an hour of data) in one transaction, and what it writes, deletes and the
mark that tells readers where each tier begins change together, so a reader counts every heartbeat exactly
once, before, during and after a roll-up. Tables and views: schema v4 (monitor/schema.py). Times come in as
arguments; the caller's connection does the I/O.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb

if TYPE_CHECKING:
    from fleetpulse.monitor.store import Store

_T = TypeVar("_T")

__all__ = [
    "MINUTE_RETENTION_S",
    "RAW_RETENTION_S",
    "RETENTION_EVERY_S",
    "Retention",
    "RollUp",
    "checkpoint",
    "roll_up",
    "roll_up_all",
    "roll_up_limits",
]

_log = logging.getLogger(__name__)

RAW_RETENTION_S = 7 * 86_400.0  # raw heartbeats: a week at full resolution
MINUTE_RETENTION_S = 90 * 86_400.0  # then per-minute rows for a quarter; per-hour rows are kept forever
RETENTION_EVERY_S = 600.0  # how often the monitor looks for work (while a backlog lasts: sooner)
BACKLOG_PAUSE_S = 1.0  # between two chunks of a backlog, so the core thread ingests in between
# An hour is summed this long after it ends. received_at is the monitor's clock when it received the message,
# and rows are stored within a flush (well under a second): later, nothing can still arrive for that hour
# unless the clock steps back this far (such a row would stay raw, outside the cost views).
SETTLE_S = 300
# Today's usage is reseeded from raw rows at a restart (history.usage_today), so a day of them must stay raw.
MIN_RAW_RETENTION_S = 86_400.0
_HOUR_S = 3_600

# Raw rows the hours do not hold yet ($since: the hours mark, or none before the first): the cost views read them
# raw. The mark is passed as a value, not a subquery, so DuckDB can skip row groups by their min/max.
_HOURS_MARK = "SELECT CASE WHEN isfinite(until) THEN until END FROM retention_marks WHERE mark = 'hours'"
_OLDEST_UNSUMMED = "SELECT min(received_at) FROM heartbeats WHERE {since} received_at < $until"
_COUNT_UNSUMMED = "SELECT count(*) FROM heartbeats WHERE {since} received_at < $until"
_SUM_HOURS = """
INSERT INTO heartbeats_hour
SELECT agent, to_timestamp(epoch_us(received_at) // 3600000000 * 3600) AS bucket,
       count(*), count(*) FILTER (WHERE kind = 'heartbeat'), sum(ok), sum(failed), sum(cost_usd),
       sum(tokens_in), sum(tokens_out), max(latency_ms_p50), max(latency_ms_p95), max(latency_ms_max)
FROM heartbeats WHERE {since} received_at < $until
GROUP BY ALL
"""
_SUM_MODELS = """
INSERT INTO cost_hourly_by_model
SELECT agent, to_timestamp(epoch_us(received_at) // 3600000000 * 3600) AS hour, m.key AS model,
       sum(CAST(json_extract(m.value, '$.cost_usd') AS DOUBLE)),
       sum(CAST(json_extract(m.value, '$.tokens_in') AS BIGINT)),
       sum(CAST(json_extract(m.value, '$.tokens_out') AS BIGINT))
FROM (SELECT agent, received_at, by_model FROM heartbeats WHERE {since} received_at < $until), json_each(by_model) m
GROUP BY ALL
"""
_OLDEST_RAW = "SELECT min(received_at) FROM heartbeats WHERE received_at < $cutoff"
# Everything older than $until goes, not only the chunk's own hour: a straggler is swept up with the next chunk.
_RAW_TO_MINUTE = """
INSERT INTO heartbeats_minute
SELECT agent, to_timestamp(epoch_us(received_at) // 60000000 * 60) AS bucket,
       count(*), count(*) FILTER (WHERE kind = 'heartbeat'), sum(ok), sum(failed), sum(cost_usd),
       sum(tokens_in), sum(tokens_out), max(latency_ms_p50), max(latency_ms_p95), max(latency_ms_max)
FROM heartbeats WHERE received_at < $until
GROUP BY ALL
"""


@dataclass(frozen=True)
class RollUp:
    """What one `roll_up` call did, and whether work older than the limits remains (call again)."""

    summed_rows: int = 0  # raw heartbeats summed into heartbeats_hour (they stay raw)
    hour_rows_added: int = 0
    model_rows_added: int = 0  # cost_hourly_by_model rows, from those heartbeats' by_model
    raw_rows: int = 0  # raw heartbeats moved into heartbeats_minute (deleted)
    minute_rows_added: int = 0
    minute_rows: int = 0  # minute rows deleted (older than the minute retention; their hours remain)
    backlog: bool = False

    @property
    def changed(self) -> int:
        return self.summed_rows + self.raw_rows + self.minute_rows


def _hour_floor(moment: datetime) -> datetime:
    seconds = int(moment.timestamp())
    return datetime.fromtimestamp(seconds - seconds % _HOUR_S, UTC)


def _scalar(connection: duckdb.DuckDBPyConnection, sql: str, parameters: dict[str, datetime] | None = None) -> Any:
    row = connection.execute(sql, parameters or {}).fetchone()
    return row[0] if row else None


def _in_transaction(connection: duckdb.DuckDBPyConnection, step: Callable[[], _T]) -> _T:
    connection.execute("BEGIN TRANSACTION")
    try:
        result = step()
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return result


def _sum_hours(
    connection: duckdb.DuckDBPyConnection, limit: datetime, chunk_s: int
) -> tuple[int, int, int, bool, datetime | None]:
    """Sum the next chunk of whole hours after the hours mark (up to `limit`) and advance the mark past them.

    Return the raw rows summed, hour and by-model rows added, whether more is due, and the mark after.
    """

    def step() -> tuple[int, int, int, bool]:
        since = _scalar(connection, _HOURS_MARK)
        bounds: dict[str, datetime] = {"until": limit} | ({"since": since} if since is not None else {})
        lower = "received_at >= $since AND" if since is not None else ""
        oldest = _scalar(connection, _OLDEST_UNSUMMED.format(since=lower), bounds)
        # Empty hours (the monitor was down) are skipped: the mark jumps to the next heartbeat's hour.
        until = limit if oldest is None else min(limit, _hour_floor(oldest) + timedelta(seconds=chunk_s))
        bounds["until"] = until
        counts = [0, 0, 0]
        if oldest is not None:
            statements = (_COUNT_UNSUMMED, _SUM_HOURS, _SUM_MODELS)
            counts = [_scalar(connection, sql.format(since=lower), bounds) for sql in statements]
        connection.execute(
            "UPDATE retention_marks SET until = greatest(until, $until) WHERE mark = 'hours'", {"until": until}
        )
        return int(counts[0]), int(counts[1]), int(counts[2]), until < limit

    summed, hours, models, backlog = _in_transaction(connection, step)
    return summed, hours, models, backlog, _scalar(connection, _HOURS_MARK)


def _move_raw(connection: duckdb.DuckDBPyConnection, cutoff: datetime, chunk_s: int) -> tuple[int, int, bool]:
    """Move the oldest chunk of raw heartbeats before `cutoff` into heartbeats_minute, in one transaction."""

    def step() -> tuple[int, int, bool]:
        # The filter lets DuckDB skip every row group that starts after the cutoff (zone maps): rows are
        # appended in time order, so this reads the old end of the table only.
        oldest = _scalar(connection, _OLDEST_RAW, {"cutoff": cutoff})
        if oldest is None:
            return 0, 0, False
        until = min(cutoff, _hour_floor(oldest) + timedelta(seconds=chunk_s))
        minutes = _scalar(connection, _RAW_TO_MINUTE, {"until": until})
        moved = _scalar(connection, "DELETE FROM heartbeats WHERE received_at < $until", {"until": until})
        return int(moved), int(minutes), until < cutoff

    return _in_transaction(connection, step)


def _drop_minutes(connection: duckdb.DuckDBPyConnection, cutoff: datetime, chunk_s: int) -> tuple[int, bool]:
    """Delete the oldest chunk of minute rows before `cutoff` (their hours remain) and advance the minutes mark."""

    def step() -> tuple[int, bool]:
        # heartbeat_usage counts hours before the mark: no raw row may be left there (a raw backlog not moved yet).
        oldest_raw = _scalar(connection, _OLDEST_RAW, {"cutoff": cutoff})
        limit = cutoff if oldest_raw is None else min(cutoff, _hour_floor(oldest_raw))
        oldest = _scalar(
            connection, "SELECT min(bucket) FROM heartbeats_minute WHERE bucket < $limit", {"limit": limit}
        )
        until = limit if oldest is None else min(limit, _hour_floor(oldest) + timedelta(seconds=chunk_s))
        deleted = _scalar(connection, "DELETE FROM heartbeats_minute WHERE bucket < $until", {"until": until})
        connection.execute(
            "UPDATE retention_marks SET until = greatest(until, $until) WHERE mark = 'minutes'", {"until": until}
        )
        return int(deleted or 0), until < limit

    return _in_transaction(connection, step)


def roll_up_limits(raw_keep_s: float, minute_keep_s: float, chunk_s: int = _HOUR_S) -> None:
    """ValueError unless the limits make sense: a day <= raw <= minutes, chunks of whole hours."""
    if chunk_s <= 0 or chunk_s % _HOUR_S:
        raise ValueError(f"retention chunk must be whole hours, not {chunk_s} s")
    if not MIN_RAW_RETENTION_S <= raw_keep_s <= minute_keep_s:
        raise ValueError(
            f"retention: need {MIN_RAW_RETENTION_S:g} s <= raw retention <= minute retention, "
            f"got {raw_keep_s:g} s and {minute_keep_s:g} s"
        )


def roll_up(
    connection: duckdb.DuckDBPyConnection,
    now: datetime,
    raw_keep_s: float = RAW_RETENTION_S,
    minute_keep_s: float = MINUTE_RETENTION_S,
    chunk_s: int = _HOUR_S,
) -> RollUp:
    """Do at most one chunk (`chunk_s`, whole hours) of each retention step, each in its own transaction.

    1. sum the hours that ended SETTLE_S ago or more into heartbeats_hour / cost_hourly_by_model;
    2. move raw heartbeats older than `raw_keep_s` (and already summed) into heartbeats_minute;
    3. delete minute rows older than `minute_keep_s`.
    Limits are counted in whole hours (cutoffs floored to the hour), so no bucket is ever split between two
    calls. Idempotent: with nothing due, nothing changes. `connection` must not be inside a transaction.
    """
    roll_up_limits(raw_keep_s, minute_keep_s, chunk_s)
    summed, hours, models, hours_backlog, hours_mark = _sum_hours(
        connection, _hour_floor(now - timedelta(seconds=SETTLE_S)), chunk_s
    )
    # Only rows already in their hours may leave the raw table: the cost views read raw rows after the mark.
    moved, minutes, raw_backlog = 0, 0, False
    if hours_mark is not None:
        raw_cutoff = min(_hour_floor(now - timedelta(seconds=raw_keep_s)), hours_mark)
        moved, minutes, raw_backlog = _move_raw(connection, raw_cutoff, chunk_s)
    dropped, minute_backlog = _drop_minutes(connection, _hour_floor(now - timedelta(seconds=minute_keep_s)), chunk_s)
    return RollUp(summed, hours, models, moved, minutes, dropped, hours_backlog or raw_backlog or minute_backlog)


def roll_up_all(
    connection: duckdb.DuckDBPyConnection,
    now: datetime,
    raw_keep_s: float = RAW_RETENTION_S,
    minute_keep_s: float = MINUTE_RETENTION_S,
    chunk_s: int = _HOUR_S,
) -> list[RollUp]:
    """`roll_up` until nothing older than the limits is left (an offline catch-up); one RollUp per call."""
    results = [roll_up(connection, now, raw_keep_s, minute_keep_s, chunk_s)]
    while results[-1].backlog:
        results.append(roll_up(connection, now, raw_keep_s, minute_keep_s, chunk_s))
    return results


def checkpoint(connection: duckdb.DuckDBPyConnection) -> bool:
    """Write the deletions into the file so their blocks are free for new rows; False if DuckDB declined now.

    A plain CHECKPOINT fails while another transaction is running (a dashboard query, say): the next
    roll-up tries again. (FORCE CHECKPOINT would instead wait for them, stalling the caller.)
    """
    try:
        connection.execute("CHECKPOINT")
    except duckdb.TransactionException as error:
        _log.debug("retention: checkpoint postponed: %s", error)
        return False
    return True


class Retention:
    """When to roll up, for the monitor's core thread: every `every_s`, and while a backlog lasts, sooner.

    The core thread calls `run_if_due` between two flushes, not a thread of its own: a roll-up then never runs
    while the core commits a batch, the monitor's shutdown needs no extra step (the core has returned before
    the store closes), and the pause it costs ingest is one bounded chunk per step, measured by
    benchmarks/history.py. Messages queue meanwhile and are handled right after. A backlog (a first start
    with retention on a database kept whole, or after a long stop) drains one chunk per BACKLOG_PAUSE_S.
    """

    def __init__(
        self,
        raw_keep_s: float = RAW_RETENTION_S,
        minute_keep_s: float = MINUTE_RETENTION_S,
        every_s: float = RETENTION_EVERY_S,
        chunk_s: int = _HOUR_S,
    ) -> None:
        if every_s > 0:  # fail at startup, not at the first roll-up
            roll_up_limits(raw_keep_s, minute_keep_s, chunk_s)
        self.raw_keep_s, self.minute_keep_s, self.every_s, self.chunk_s = raw_keep_s, minute_keep_s, every_s, chunk_s
        self._next_s = 0.0  # monotonic; the first call (right after the monitor starts) is due
        self._deleted_since_checkpoint = 0
        self.last: RollUp | None = None
        self.last_elapsed_s = 0.0
        self.errors = 0

    def run_if_due(self, store: Store, now: datetime, now_s: float) -> RollUp | None:
        """Roll up one chunk if due (`now`: the monitor's clock; `now_s`: time.monotonic()). Never raises."""
        if self.every_s <= 0 or now_s < self._next_s:
            return None
        started = time.perf_counter()
        try:
            result = store.roll_up(now, self.raw_keep_s, self.minute_keep_s, self.chunk_s)
            self._deleted_since_checkpoint += result.raw_rows + result.minute_rows
            # Once a backlog is through, and after each steady chunk that deleted rows: the deleted rows' blocks
            # are free for new rows only once a checkpoint has written the deletion.
            if self._deleted_since_checkpoint and not result.backlog and store.checkpoint():
                self._deleted_since_checkpoint = 0
        except Exception:
            # Retention must never stop the monitor: log, count, try again at the next period.
            _log.exception("retention: roll-up failed")
            self.errors += 1
            self._next_s = now_s + self.every_s
            return None
        self.last, self.last_elapsed_s = result, time.perf_counter() - started
        self._next_s = now_s + (BACKLOG_PAUSE_S if result.backlog else self.every_s)
        if result.changed:
            _log.info(
                "retention: %d heartbeats summed into hours, %d moved to minutes, %d minute rows dropped, in %.0f ms%s",
                result.summed_rows,
                result.raw_rows,
                result.minute_rows,
                self.last_elapsed_s * 1000,
                " (backlog: more to come)" if result.backlog else "",
            )
        return result
