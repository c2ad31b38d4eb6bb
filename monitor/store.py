"""The DuckDB store: where heartbeats, transitions and agent views become rows, and where queries read them."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa  # type: ignore[import-untyped]

from fleetpulse.monitor import retention
from fleetpulse.monitor.alert_policy import OpenIncident, Silence
from fleetpulse.monitor.alerts import DeliveryRecord
from fleetpulse.monitor.health import AgentView, State, Transition
from fleetpulse.monitor.notification import Severity
from fleetpulse.monitor.schema import migrate
from fleetpulse.monitor.sql_sandbox import ReadOnlyViolation, check_read_only, lock_down
from fleetpulse.publisher.errors import FleetpulseError
from fleetpulse.publisher.protocol import HealthMessage, ReportedStatus

__all__ = ["QueryBusy", "QueryTimeout", "ReadOnlyViolation", "Store", "StoreLocked", "WriteBatch", "check_read_only"]

ALERT_COLUMNS = (
    "id", "incident_id", "agent", "at", "severity", "event", "channel", "delivered_at", "attempts", "error",
    "next_attempt_at", "gave_up", "payload",
)  # fmt: skip
INCIDENT_COLUMNS = (
    "incident_id", "agent", "state", "severity", "rule", "opened_at", "notified", "root", "channels", "closed_at",
)  # fmt: skip
SILENCE_COLUMNS = ("id", "pattern", "starts_at", "ends_at", "reason", "created_by", "created_at", "removed_at")

HEARTBEAT_COLUMNS = (
    "agent", "session", "seq", "kind", "received_at", "sent_at", "status", "reason", "ok", "failed",
    "latency_ms_p50", "latency_ms_p95", "latency_ms_max", "cost_usd", "tokens_in", "tokens_out", "by_model",
    "last_progress_at", "paused", "snapshot",
)  # fmt: skip
AGENT_COLUMNS = (
    "agent", "name", "host", "pid", "version", "group", "interval_s", "depends_on", "labels", "first_seen",
    "last_seen", "state", "reason", "state_since", "session", "last_seq", "last_heartbeat_at", "reported_status",
    "reported_reason", "last_progress_at", "paused",
)  # fmt: skip
_log = logging.getLogger(__name__)
MAX_QUERY_ROWS = 10_000
QUERY_TIMEOUT_S = 10.0  # a statement typed by a person (API, CLI) is stopped after this long
# An answer to people's SQL stops growing past this many bytes (about its JSON size; `truncated` says so): one
# query of 300 rows x 1 MB once grew the monitor by 1.6 GB. Rows are fetched in small chunks to stay near it.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
_FETCH_CHUNK_ROWS = 64
# People's queries at once, and waiting behind them; beyond that QueryBusy (HTTP 429). The core keeps its own
# connection and ingests meanwhile.
PEOPLE_QUERIES_RUNNING = 2
PEOPLE_QUERIES_WAITING = 4


class StoreLocked(FleetpulseError, RuntimeError):
    """Another process holds the database file for writing (DuckDB allows one writer, no readers)."""

    def __init__(self, path: Path, pid: int | None, detail: str) -> None:
        holder = f"process {pid}" if pid else "another process"
        super().__init__(f"{path} is held by {holder} (a running fleetpulse monitor?): {detail}")
        self.path = path
        self.pid = pid


class QueryTimeout(FleetpulseError, RuntimeError):
    """A read ran longer than its time limit and was interrupted."""


class QueryBusy(FleetpulseError, RuntimeError):
    """Too many people's queries are running or waiting; try again shortly."""


@dataclass
class WriteBatch:
    """Rows to commit together, built by the monitor's core thread between two flushes."""

    heartbeats: list[tuple[Any, ...]] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    agents: dict[str, AgentView] = field(default_factory=dict)
    rejected: list[tuple[datetime, str, str, str]] = field(default_factory=list)
    commands: list[tuple[str, datetime, str, str, str, str]] = field(default_factory=list)
    events: list[tuple[datetime, str, str, str | None]] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)  # agents whose `agents` rows go (their history stays)

    def __len__(self) -> int:
        return (
            len(self.forgotten)
            + len(self.heartbeats)
            + len(self.transitions)
            + len(self.agents)
            + len(self.rejected)
            + len(self.commands)
            + len(self.events)
        )

    def add_message(self, message: HealthMessage, received_at: datetime, snapshot: bool) -> None:
        metrics = message.metrics
        self.heartbeats.append(
            (
                message.agent,
                message.session,
                message.seq,
                message.kind.value,
                received_at,
                message.sent_at,
                message.status.value if message.status else None,
                message.reason,
                metrics.ok if metrics else None,
                metrics.failed if metrics else None,
                metrics.latency_ms_p50 if metrics else None,
                metrics.latency_ms_p95 if metrics else None,
                metrics.latency_ms_max if metrics else None,
                metrics.cost_usd if metrics else None,
                metrics.tokens_in if metrics else None,
                metrics.tokens_out if metrics else None,
                _by_model_json(metrics) if metrics else None,
                metrics.last_progress_at if metrics else None,
                message.paused,
                snapshot,
            )
        )


def _by_model_json(metrics: Any) -> str | None:
    # Attribute access, not model_dump(): this runs once per stored heartbeat. Without a per-model split the
    # column stays NULL, which json_each (the cost views, retention) reads like '{}'.
    if not metrics.by_model:
        return None
    return json.dumps(
        {
            m: {"cost_usd": u.cost_usd, "tokens_in": u.tokens_in, "tokens_out": u.tokens_out}
            for m, u in metrics.by_model.items()
        }
    )


def _arrow_column(values: Sequence[Any], arrow_type: pa.DataType) -> pa.Array:
    """One column of Python values as an Arrow array of its table column's type."""
    if pa.types.is_timestamp(arrow_type) and arrow_type.tz is not None:
        # pyarrow turns aware datetimes into UTC instants in a zone-less type at 0.3 us a value, but takes 3 us
        # into a zoned one: convert zone-less, then label the instants with the column's zone (no value changes).
        return pa.array(values, pa.timestamp(arrow_type.unit)).cast(arrow_type)
    return pa.array(values, arrow_type)


def _agent_row(view: AgentView) -> tuple[Any, ...]:
    # While unknown, the row keeps the last known state: the database records what was last true.
    state = view.known_state if view.state is State.UNKNOWN and view.known_state else view.state
    reason = view.known_reason if view.state is State.UNKNOWN and view.known_reason else view.reason
    return (
        view.agent, view.name, view.host, view.pid, view.version, view.group, view.interval_s,
        list(view.depends_on), json.dumps(dict(view.labels)), view.first_seen,
        view.last_heartbeat_at or view.first_seen, state.value, reason, view.since, view.session,
        view.last_seq, view.last_heartbeat_at, view.reported_status.value, view.reported_reason,
        view.last_progress_at, view.paused,
    )  # fmt: skip


def _answer_bytes(row: Sequence[Any]) -> int:
    """About how many bytes `row` takes in a JSON answer: what the byte cap counts, without encoding it."""
    return sum(len(value) if isinstance(value, str | bytes) else len(str(value)) for value in row) + 4 * len(row)


def _alert_row(record: DeliveryRecord) -> tuple[Any, ...]:
    return (
        record.id, record.incident_id, record.agent, record.at, record.severity, record.event, record.channel,
        record.delivered_at, record.attempts, record.error, record.next_attempt_at, record.gave_up,
        record.payload,
    )  # fmt: skip


_LOCK_PID = re.compile(r"PID (\d+)")


def _make_private(path: Path) -> None:
    """Make the database and its WAL 0600 if other users may read them (history, audit log, rejected payloads).

    New files are 0600 already when the CLI runs the monitor (it sets umask 077: DuckDB creates the WAL
    itself, so only the umask reaches it). This catches files made before that, or by a program using
    `Store` under a looser umask; a WAL DuckDB makes later follows that program's umask.
    """
    for file in (path, path.with_name(path.name + ".wal")):
        try:
            mode = file.stat().st_mode & 0o777
            if mode & 0o077:
                file.chmod(0o600)
                _log.warning("%s was readable by other users (mode %03o); made it 0600", file, mode)
        except FileNotFoundError:
            continue
        except OSError as error:  # not ours to change (another owner): say so, keep working
            _log.warning("%s is readable by other users and cannot be made 0600: %s", file, error.strerror)


class Store:
    """One DuckDB file. Writes come from one thread (`write`); reads may come from any (`query`)."""

    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        self.path = Path(path)
        try:
            self._connection = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.IOException as error:
            text = str(error)
            if "lock" in text.lower():
                match = _LOCK_PID.search(text)
                raise StoreLocked(self.path, int(match[1]) if match else None, text.splitlines()[0]) from None
            raise
        if not read_only:
            _make_private(self.path)
        # GLOBAL: every cursor (a connection of its own) inherits it, and after lock_down nothing can SET it.
        self._connection.execute("SET GLOBAL TimeZone = 'UTC'")
        self._write_lock = threading.Lock()
        self._arrow_schemas: dict[tuple[str, tuple[str, ...]], pa.Schema] = {}
        self._people_running = threading.BoundedSemaphore(PEOPLE_QUERIES_RUNNING)
        self._people_admitted = 0
        self._people_lock = threading.Lock()
        if not read_only:
            migrate(self._connection)
        lock_down(self._connection)  # no file, URL or extension from here on, for the monitor's SQL and people's

    def close(self) -> None:
        self._connection.close()

    # -- writing -----------------------------------------------------------------------------------

    def _arrow_schema(self, table: str, columns: Sequence[str]) -> pa.Schema:
        """The Arrow types of `columns` of `table`, as DuckDB itself maps its column types (monitor/schema.py)."""
        key = (table, tuple(columns))
        schema = self._arrow_schemas.get(key)
        if schema is None:
            quoted = ", ".join(f'"{column}"' for column in columns)
            schema = self._connection.sql(f"SELECT {quoted} FROM {table} LIMIT 0").to_arrow_table().schema
            self._arrow_schemas[key] = schema
        return schema

    def _append(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], replace: bool = False) -> None:
        # Columnar Arrow, each column converted straight to its table type, nothing inferred per value: half the
        # CPU of a pandas DataFrame (benchmarks/store_append.py compares both); executemany is ~1,000x slower.
        if not rows:
            return
        schema = self._arrow_schema(table, columns)
        arrays = [
            _arrow_column(values, arrow_type)
            for values, arrow_type in zip(zip(*rows, strict=True), schema.types, strict=True)
        ]
        verb = "INSERT OR REPLACE INTO" if replace else "INSERT INTO"
        quoted = ", ".join(f'"{column}"' for column in columns)
        # Registered by name, not found by a replacement scan of Python locals: lock_down turned those off with
        # external access (benchmarks/store_append.py measures the difference).
        self._connection.register("fleetpulse_batch", pa.Table.from_arrays(arrays, schema=schema))
        try:
            self._connection.execute(f"{verb} {table} ({quoted}) SELECT {quoted} FROM fleetpulse_batch")
        finally:
            self._connection.unregister("fleetpulse_batch")

    def write(self, batch: WriteBatch) -> None:
        """Commit one batch atomically: either every row of it is stored or none."""
        if not len(batch):
            return
        with self._write_lock:
            connection = self._connection
            connection.execute("BEGIN TRANSACTION")
            try:
                if batch.heartbeats:
                    self._append("heartbeats", HEARTBEAT_COLUMNS, batch.heartbeats)
                if batch.transitions:
                    rows = [
                        (t.agent, t.at, t.from_state.value, t.to_state.value, t.reason, t.snapshot)
                        for t in batch.transitions
                    ]
                    self._append("transitions", ("agent", "at", "from_state", "to_state", "reason", "snapshot"), rows)
                if batch.agents:
                    self._append("agents", AGENT_COLUMNS, [_agent_row(v) for v in batch.agents.values()], replace=True)
                if batch.forgotten:
                    connection.execute(
                        "DELETE FROM agents WHERE agent IN (SELECT unnest($agents))", {"agents": batch.forgotten}
                    )
                if batch.rejected:
                    self._append("rejected", ("received_at", "topic", "reason", "payload_prefix"), batch.rejected)
                if batch.commands:
                    self._append("commands", ("id", "at", "target", "command", "issued_by", "reason"), batch.commands)
                if batch.events:
                    self._append("monitor_events", ("at", "monitor_id", "event", "detail"), batch.events)
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise

    # -- reading -----------------------------------------------------------------------------------

    def load_views(self) -> dict[str, AgentView]:
        """The agents as last stored, to resume from after a restart."""
        columns = ", ".join(f'a."{c}"' for c in AGENT_COLUMNS if c != "last_seq")
        # The agents row is refreshed every few seconds; the heartbeats table knows the last seq exactly
        # (after a kill -9 too), and idempotent ingest needs it exact.
        rows = (
            self._connection.cursor()
            .execute(
                f"""SELECT {columns}, coalesce(h.max_seq, a.last_seq) AS last_seq
                FROM agents a LEFT JOIN (
                    SELECT agent, session, max(seq) AS max_seq FROM heartbeats
                    WHERE seq IS NOT NULL AND (agent, session) IN (SELECT agent, session FROM agents)
                    GROUP BY ALL
                ) h ON h.agent = a.agent AND h.session = a.session"""
            )
            .fetchall()
        )
        names = [c for c in AGENT_COLUMNS if c != "last_seq"] + ["last_seq"]
        views: dict[str, AgentView] = {}
        for row in rows:
            record = dict(zip(names, row, strict=True))
            views[record["agent"]] = AgentView(
                agent=record["agent"],
                state=State(record["state"]),
                reason=record["reason"] or "",
                since=record["state_since"],
                first_seen=record["first_seen"],
                interval_s=record["interval_s"],
                name=record["name"] or record["agent"],
                host=record["host"] or "",
                pid=record["pid"],
                version=record["version"] or "",
                group=record["group"],
                depends_on=tuple(record["depends_on"] or ()),
                labels=tuple(sorted(json.loads(record["labels"] or "{}").items())),
                session=record["session"] or "",
                last_seq=record["last_seq"] if record["last_seq"] is not None else -1,
                last_heartbeat_at=record["last_heartbeat_at"],
                heard_at=record["last_heartbeat_at"],
                reported_status=ReportedStatus(record["reported_status"] or "healthy"),
                reported_reason=record["reported_reason"],
                last_progress_at=record["last_progress_at"],
                paused=bool(record["paused"]),
            )
        return views

    def query(
        self,
        sql: str,
        parameters: Sequence[Any] | Mapping[str, Any] | None = None,
        limit: int = MAX_QUERY_ROWS,
        timeout_s: float | None = None,
    ) -> tuple[list[str], list[tuple[Any, ...]], bool]:
        """Run a read; return column names, at most `limit` rows, and whether rows were cut off.

        With `timeout_s`, a query still running then is interrupted (QueryTimeout); the store goes on.
        """
        with self._cursor(timeout_s) as cursor:
            result = cursor.execute(sql, parameters if parameters is not None else [])
            columns = [d[0] for d in result.description or []]
            rows = result.fetchmany(limit + 1)
        return columns, rows[:limit], len(rows) > limit

    @contextlib.contextmanager
    def _cursor(self, timeout_s: float | None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor of its own (a connection: reads see committed rows), interrupted after `timeout_s`
        (QueryTimeout; the store goes on) and closed afterwards."""
        cursor = self._connection.cursor()
        timer = threading.Timer(timeout_s, cursor.interrupt) if timeout_s is not None else None
        try:
            if timer is not None:
                timer.start()
            yield cursor
        except duckdb.InterruptException:
            raise QueryTimeout(f"the query ran longer than {timeout_s:g} s and was stopped") from None
        finally:
            if timer is not None:
                timer.cancel()
            cursor.close()

    def read_only_query(
        self, sql: str, limit: int = MAX_QUERY_ROWS, timeout_s: float | None = None, max_bytes: int = MAX_ANSWER_BYTES
    ) -> tuple[list[str], list[tuple[Any, ...]], bool]:
        """`query` for statements typed by a person (monitor/sql_sandbox.py): refused unless a pure read
        (ReadOnlyViolation), run in a read-only transaction that is rolled back, stopped after `timeout_s`
        (QueryTimeout), cut at `limit` rows or about `max_bytes` (truncated), and at most
        PEOPLE_QUERIES_RUNNING at once with PEOPLE_QUERIES_WAITING behind them (QueryBusy beyond)."""
        check_read_only(sql)
        timeout_s = QUERY_TIMEOUT_S if timeout_s is None else timeout_s
        with self._people_lock:
            if self._people_admitted >= PEOPLE_QUERIES_RUNNING + PEOPLE_QUERIES_WAITING:
                raise QueryBusy(f"{self._people_admitted} queries are running or waiting; try again in a moment")
            self._people_admitted += 1
        try:
            if not self._people_running.acquire(timeout=timeout_s):
                raise QueryBusy(f"no query slot came free within {timeout_s:g} s; try again in a moment")
            try:
                return self._people_query(sql, limit, timeout_s, max_bytes)
            finally:
                self._people_running.release()
        finally:
            with self._people_lock:
                self._people_admitted -= 1

    def _people_query(
        self, sql: str, limit: int, timeout_s: float, max_bytes: int
    ) -> tuple[list[str], list[tuple[Any, ...]], bool]:
        rows: list[tuple[Any, ...]] = []
        size = 0
        truncated = False
        with self._cursor(timeout_s) as cursor:
            cursor.execute("BEGIN TRANSACTION READ ONLY")
            try:
                result = cursor.execute(sql)
                columns = [d[0] for d in result.description or []]
                while not truncated:
                    chunk = result.fetchmany(_FETCH_CHUNK_ROWS)
                    if not chunk:
                        break
                    for row in chunk:
                        size += _answer_bytes(row)
                        if len(rows) >= limit or size > max_bytes:
                            truncated = True
                            break
                        rows.append(row)
            finally:
                with contextlib.suppress(duckdb.Error):  # (closing the cursor would roll back too)
                    cursor.execute("ROLLBACK")
        return columns, rows, truncated

    def outages(self, agent: str | None = None, since: datetime | None = None) -> list[dict[str, Any]]:
        """Rows of the `outages` view, newest first, optionally one agent's and/or still open after `since`."""
        clauses: list[str] = []
        parameters: list[Any] = []
        if agent is not None:
            clauses.append("agent = ?")
            parameters.append(agent)
        if since is not None:
            clauses.append("(ended_at IS NULL OR ended_at >= ?)")
            parameters.append(since)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        columns, rows, _ = self.query(
            f"SELECT agent, state, started_at, ended_at, duration_s FROM outages {where} ORDER BY started_at DESC",
            parameters,
            limit=1_000_000,
        )
        return [dict(zip(columns, row, strict=True)) for row in rows]

    # -- alerting ----------------------------------------------------------------------------------

    def _upsert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        with self._write_lock:
            self._connection.execute("BEGIN TRANSACTION")
            try:
                self._append(table, columns, rows, replace=True)
                self._connection.execute("COMMIT")
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise

    def record_delivery(self, record: DeliveryRecord, at: datetime) -> None:
        """One `alerts` row as it stands after an attempt, and the attempt in `alert_attempts` (delivery threads)."""
        row = _alert_row(record)
        with self._write_lock:
            self._connection.execute("BEGIN TRANSACTION")
            try:
                self._append("alerts", ALERT_COLUMNS, [row], replace=True)
                if record.attempts > 0 and (record.error is not None or record.delivered_at is not None):
                    attempt = (record.id, record.attempts, at, record.delivered_at is not None, record.error)
                    self._append("alert_attempts", ("alert_id", "attempt", "at", "delivered", "error"), [attempt])
                self._connection.execute("COMMIT")
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise

    def record_held(self, records: Sequence[DeliveryRecord]) -> None:
        """`alerts` rows of notifications held back by the page-rate guard (never sent, never retried)."""
        self._upsert("alerts", ALERT_COLUMNS, [_alert_row(record) for record in records])

    def pending_deliveries(self) -> list[DeliveryRecord]:
        """Deliveries neither done nor given up: what a restarted monitor must still send."""
        quoted = ", ".join(f'"{c}"' for c in ALERT_COLUMNS)
        _, rows, _ = self.query(
            f'SELECT {quoted} FROM alerts WHERE delivered_at IS NULL AND NOT gave_up ORDER BY "at"', limit=1_000_000
        )
        return [DeliveryRecord(**dict(zip(ALERT_COLUMNS, row, strict=True))) for row in rows]

    def save_incidents(self, opened_or_changed: Sequence[OpenIncident], closed: Sequence[str], at: datetime) -> None:
        """Keep the open incidents current: changed ones rewritten, closed ones stamped with `at`."""
        rows: list[tuple[Any, ...]] = [
            (i.incident_id, i.agent, i.state, i.severity.value, i.rule, i.opened_at, i.notified, i.root,
             list(i.channels), None)
            for i in opened_or_changed
        ]  # fmt: skip
        if closed:
            quoted = ", ".join(f'"{c}"' for c in INCIDENT_COLUMNS if c != "closed_at")
            sql = f"SELECT {quoted} FROM alert_incidents WHERE incident_id IN (SELECT unnest($ids))"
            _, old, _ = self.query(sql, {"ids": list(closed)})
            rows.extend((*row, at) for row in old)
        if rows:
            self._upsert("alert_incidents", INCIDENT_COLUMNS, rows)

    def open_incidents(self) -> list[OpenIncident]:
        quoted = ", ".join(f'"{c}"' for c in INCIDENT_COLUMNS if c != "closed_at")
        _, rows, _ = self.query(f"SELECT {quoted} FROM alert_incidents WHERE closed_at IS NULL", limit=1_000_000)
        names = [c for c in INCIDENT_COLUMNS if c != "closed_at"]
        incidents = []
        for row in rows:
            fields = dict(zip(names, row, strict=True))
            fields["severity"], fields["channels"] = Severity(fields["severity"]), tuple(fields["channels"] or ())
            incidents.append(OpenIncident(**fields))
        return incidents

    def add_silence(self, silence: Silence, created_at: datetime) -> None:
        row = (
            silence.id, silence.pattern, silence.starts_at, silence.ends_at, silence.reason, silence.created_by,
            created_at, None,
        )  # fmt: skip
        self._upsert("silences", SILENCE_COLUMNS, [row])

    def remove_silence(self, silence_id: str, at: datetime) -> bool:
        """End a silence now; False if there is no such silence still in force."""
        with self._write_lock:
            cursor = self._connection.cursor()
            try:
                found = cursor.execute(
                    "UPDATE silences SET removed_at = $at WHERE id = $id AND removed_at IS NULL AND ends_at > $at "
                    "RETURNING id",
                    {"at": at, "id": silence_id},
                ).fetchall()
            finally:
                cursor.close()
        return bool(found)

    def silences(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Silences in force at `now` (or every silence ever, newest first, when `now` is None)."""
        quoted = ", ".join(f'"{c}"' for c in SILENCE_COLUMNS)
        where = "WHERE removed_at IS NULL AND starts_at <= $now AND ends_at > $now" if now is not None else ""
        columns, rows, _ = self.query(
            f"SELECT {quoted} FROM silences {where} ORDER BY created_at DESC",
            {"now": now} if now is not None else None,
            limit=1_000_000,
        )
        return [dict(zip(columns, row, strict=True)) for row in rows]

    # -- retention ---------------------------------------------------------------------------------

    def roll_up(self, now: datetime, raw_keep_s: float, minute_keep_s: float, chunk_s: int = 3_600) -> retention.RollUp:
        """Move one chunk of old heartbeats into minutes and of old minutes into hours (monitor/retention.py).

        On a cursor of its own, i.e. its own DuckDB transaction, without the write lock: it touches no row the
        other writers touch (they append new heartbeats, alerts, ...; it deletes old ones), so DuckDB's MVCC
        lets both commit, and alert deliveries never wait for a roll-up.
        """
        cursor = self._connection.cursor()
        try:
            return retention.roll_up(cursor, now, raw_keep_s, minute_keep_s, chunk_s)
        finally:
            cursor.close()

    def checkpoint(self) -> bool:
        """Write the WAL into the file, freeing deleted rows' blocks for reuse; False if DuckDB declined now."""
        cursor = self._connection.cursor()
        try:
            return retention.checkpoint(cursor)
        finally:
            cursor.close()
