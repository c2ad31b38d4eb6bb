"""Retention (monitor/retention.py, schema v4) on real DuckDB files at fixed times: sums kept, history whole."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from fleetpulse.monitor import retention
from fleetpulse.monitor.retention import SETTLE_S, Retention, RollUp, roll_up, roll_up_all
from fleetpulse.monitor.store import HEARTBEAT_COLUMNS, Store, WriteBatch
from tests.conftest import BrokerProcess

DAY_S = 86_400
RAW_KEEP_S = 2 * DAY_S
MINUTE_KEEP_S = 4 * DAY_S
START = datetime(2026, 3, 1, tzinfo=UTC)
NOW = datetime(2026, 3, 7, 9, 41, 30, tzinfo=UTC)  # 6 days of history; raw kept from Mar 5 09:00, minutes from 3 09:00


def heartbeat(agent: str, at: datetime, seq: int | None, kind: str = "heartbeat", **metrics: Any) -> tuple[Any, ...]:
    row: dict[str, Any] = dict.fromkeys(HEARTBEAT_COLUMNS)
    row.update(agent=agent, session=f"{agent}/1", seq=seq, kind=kind, received_at=at, sent_at=at, snapshot=False)
    row.update(metrics)
    return tuple(row[column] for column in HEARTBEAT_COLUMNS)


def history(store: Store, start: datetime = START, until: datetime = NOW) -> None:
    """Two agents over [start, until): a heartbeat every 7 min with work figures, and now and then extra rows.

    Costs are multiples of 1/64 USD, so every sum is exact in any order and "unchanged" can mean equal.
    """
    rows = []
    step = timedelta(minutes=7)
    for agent_index, agent in enumerate(("api", "etl")):
        at, seq = start + timedelta(seconds=13 * agent_index), 0
        while at < until:
            models = f'{{"m1": {{"cost_usd": {seq % 3 / 64}, "tokens_in": {seq % 5}, "tokens_out": 2}}}}'
            if agent == "api" and seq % 4 == 0:
                models = f'{{"m1": {{"cost_usd": 0.25, "tokens_in": 7}}, "m2": {{"cost_usd": {seq % 7 / 32}}}}}'
            rows.append(
                heartbeat(
                    agent, at, seq, ok=seq % 4, failed=seq % 2, latency_ms_p50=float(seq % 50),
                    latency_ms_p95=float(seq % 90), latency_ms_max=float(seq % 300), cost_usd=(seq % 9) / 64,
                    tokens_in=seq % 11, tokens_out=seq % 13, by_model=models if agent == "api" else "{}",
                )
            )  # fmt: skip
            if seq % 97 == 0:  # a second message in the same minute, without metrics: a graceful stop
                rows.append(heartbeat(agent, at + timedelta(seconds=20), None, kind="stop"))
            at, seq = at + step, seq + 1
    store.write(WriteBatch(heartbeats=rows))


def outage_story(store: Store) -> None:
    """api dies on Mar 2 and is back an hour later; etl (needs api) degrades meanwhile; a monitor restart on Mar 4."""
    transitions = [
        ("api", datetime(2026, 3, 2, 10, 0, tzinfo=UTC), "healthy", "unreachable"),
        ("etl", datetime(2026, 3, 2, 10, 1, tzinfo=UTC), "healthy", "degraded"),
        ("api", datetime(2026, 3, 2, 11, 0, tzinfo=UTC), "unreachable", "healthy"),
        ("etl", datetime(2026, 3, 2, 11, 2, tzinfo=UTC), "degraded", "healthy"),
        ("api", datetime(2026, 3, 6, 23, 50, tzinfo=UTC), "healthy", "degraded"),
        ("api", datetime(2026, 3, 7, 0, 20, tzinfo=UTC), "degraded", "healthy"),
        ("api", datetime(2026, 3, 7, 9, 0, tzinfo=UTC), "healthy", "killed"),
        ("etl", datetime(2026, 3, 7, 9, 0, tzinfo=UTC), "healthy", "killed"),
    ]
    store.query(
        "INSERT INTO agents (agent, first_seen, state, depends_on) VALUES (?, ?, ?, ?), (?, ?, ?, ?)",
        ["api", START, "killed", [], "etl", START, "killed", ["api"]],
    )
    for agent, at, old, new in transitions:
        store.query(
            'INSERT INTO transitions (agent, "at", from_state, to_state, reason, snapshot) '
            "VALUES (?, ?, ?, ?, ?, false)",
            [agent, at, old, new, f"{old} -> {new}"],
        )
    events = [
        (START - timedelta(minutes=1), "started"),
        (datetime(2026, 3, 4, 12, 0, tzinfo=UTC), "stopped"),
        (datetime(2026, 3, 4, 12, 30, tzinfo=UTC), "started"),
    ]
    for at, event in events:
        store.query('INSERT INTO monitor_events ("at", monitor_id, event) VALUES (?, ?, ?)', [at, "default", event])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "fleet.duckdb")
    history(opened)
    yield opened
    opened.close()


def rows(store: Store, sql: str, *parameters: Any) -> list[tuple[Any, ...]]:
    return store.query(sql, list(parameters), limit=1_000_000)[1]


def table(store: Store, name: str) -> list[tuple[Any, ...]]:
    return rows(store, f"SELECT * FROM {name} ORDER BY ALL")


COST_DAILY = "SELECT * FROM cost_daily ORDER BY agent, day"
COST_BY_MODEL = "SELECT * FROM cost_daily_by_model ORDER BY agent, day, model"
# Everything heartbeat_usage can sum, per agent and day: what a chart over any window adds up.
USAGE_DAILY = """
    SELECT agent, CAST(to_timestamp(epoch_us(started_at) // 86400000000 * 86400) AS DATE) AS day,
           sum(messages), sum(heartbeats), sum(ok), sum(failed), sum(cost_usd), sum(tokens_in), sum(tokens_out),
           max(latency_ms_p50_max), max(latency_ms_p95_max), max(latency_ms_max)
    FROM heartbeat_usage GROUP BY ALL ORDER BY ALL
"""


def roll_all(store: Store, now: datetime = NOW) -> list[RollUp]:
    """Roll up until done, 6 hours of data per call (the monitor does 1; the tests of single steps too)."""
    results = [store.roll_up(now, RAW_KEEP_S, MINUTE_KEEP_S, chunk_s=6 * 3600)]
    while results[-1].backlog:
        results.append(store.roll_up(now, RAW_KEEP_S, MINUTE_KEEP_S, chunk_s=6 * 3600))
    return results


def test_sums_are_unchanged_after_every_single_step(store: Store) -> None:
    before = [rows(store, sql) for sql in (COST_DAILY, COST_BY_MODEL, USAGE_DAILY)]
    assert len(before[0]) == 2 * 7  # two agents, Mar 1-7
    results = [store.roll_up(NOW, RAW_KEEP_S, MINUTE_KEEP_S)]
    # A reader between any two calls (or steps: each is its own transaction) sees the same sums.
    assert [rows(store, sql) for sql in (COST_DAILY, COST_BY_MODEL, USAGE_DAILY)] == before
    while results[-1].backlog:
        results.append(store.roll_up(NOW, RAW_KEEP_S, MINUTE_KEEP_S))
        assert [rows(store, sql) for sql in (COST_DAILY, COST_BY_MODEL, USAGE_DAILY)] == before
    assert len(results) > 24  # one hour of data per call and step
    assert sum(r.summed_rows for r in results) == rows(store, "SELECT sum(messages) FROM heartbeats_hour")[0][0]


def test_rows_older_than_the_limits_move_and_newer_ones_stay(store: Store) -> None:
    count = rows(store, "SELECT count(*) FROM heartbeats")[0][0]
    results = roll_all(store)
    raw_cutoff = datetime(2026, 3, 5, 9, tzinfo=UTC)  # NOW - 2 days, floored to the hour
    minute_cutoff = datetime(2026, 3, 3, 9, tzinfo=UTC)
    hours_mark = datetime(2026, 3, 7, 9, tzinfo=UTC)  # the last hour that ended SETTLE_S ago
    assert SETTLE_S < (NOW - hours_mark).total_seconds() < 3600 + SETTLE_S
    assert rows(store, "SELECT min(received_at) >= ?, count(*) FROM heartbeats", raw_cutoff)[0] == (
        True,
        count - sum(r.raw_rows for r in results),
    )
    assert rows(store, "SELECT min(bucket) >= ?, max(bucket) < ? FROM heartbeats_minute", minute_cutoff, raw_cutoff)[
        0
    ] == (True, True)
    assert rows(store, "SELECT min(bucket), max(bucket) FROM heartbeats_hour")[0] == (
        START,
        hours_mark - timedelta(hours=1),
    )
    assert rows(store, "SELECT * FROM retention_marks ORDER BY mark") == [
        ("hours", hours_mark),
        ("minutes", minute_cutoff),
    ]
    # Every raw row before the hours mark is in exactly one hour; the newer ones are not yet.
    in_hours = rows(store, "SELECT sum(messages) FROM heartbeats_hour")[0][0]
    assert in_hours == count - rows(store, "SELECT count(*) FROM heartbeats WHERE received_at >= ?", hours_mark)[0][0]


def test_a_minute_row_sums_its_heartbeats_and_keeps_the_worst_latency(store: Store) -> None:
    ((minute,),) = rows(
        store,
        "SELECT date_trunc('minute', received_at) FROM heartbeats WHERE agent = 'api' AND kind = 'stop' "
        "AND received_at BETWEEN ? AND ? ORDER BY 1 LIMIT 1",
        datetime(2026, 3, 3, 10, tzinfo=UTC),
        datetime(2026, 3, 5, tzinfo=UTC),
    )
    raw = rows(
        store,
        "SELECT count(*), count(*) FILTER (WHERE kind = 'heartbeat'), sum(ok), sum(failed), sum(cost_usd), "
        "sum(tokens_in), max(latency_ms_p95) FROM heartbeats WHERE agent = 'api' AND received_at >= ? "
        "AND received_at < ?",
        minute,
        minute + timedelta(minutes=1),
    )
    assert raw[0][:2] == (2, 1)  # a heartbeat and a stop
    roll_all(store)
    assert (
        rows(
            store,
            "SELECT messages, heartbeats, ok, failed, cost_usd, tokens_in, latency_ms_p95_max FROM heartbeats_minute "
            "WHERE agent = 'api' AND bucket = ?",
            minute,
        )
        == raw
    )


def test_a_second_run_changes_nothing(store: Store) -> None:
    roll_all(store)
    names = ("heartbeats", "heartbeats_minute", "heartbeats_hour", "cost_hourly_by_model", "retention_marks")
    before = [table(store, name) for name in names]
    assert store.roll_up(NOW, RAW_KEEP_S, MINUTE_KEEP_S) == RollUp()
    assert [table(store, name) for name in names] == before


def test_the_per_model_split_is_kept_per_hour(store: Store) -> None:
    hour = datetime(2026, 3, 2, 14, tzinfo=UTC)
    sql = """SELECT m.key, sum(CAST(json_extract(m.value, '$.cost_usd') AS DOUBLE)),
                    sum(CAST(json_extract(m.value, '$.tokens_in') AS BIGINT)),
                    sum(CAST(json_extract(m.value, '$.tokens_out') AS BIGINT))
             FROM heartbeats h, json_each(h.by_model) m
             WHERE h.received_at >= ? AND h.received_at < ? GROUP BY 1 ORDER BY 1"""
    raw = rows(store, sql, hour, hour + timedelta(hours=1))
    assert [model for model, *_ in raw] == ["m1", "m2"]
    by_model_before = rows(store, COST_BY_MODEL)
    roll_all(store)
    kept = "SELECT model, cost_usd, tokens_in, tokens_out FROM cost_hourly_by_model WHERE hour = ? ORDER BY 1"
    assert rows(store, kept, hour) == raw
    assert rows(store, COST_BY_MODEL) == by_model_before
    assert rows(store, "SELECT count(*) FROM cost_hourly_by_model WHERE agent = 'etl'") == [(0,)]  # "{}" only


def test_transitions_events_agents_and_the_history_views_are_untouched(store: Store) -> None:
    outage_story(store)
    window = (START, NOW)
    queries = [
        ("SELECT * FROM transitions ORDER BY id", ()),
        ("SELECT * FROM monitor_events ORDER BY ALL", ()),
        ("SELECT * FROM agents ORDER BY agent", ()),
        ("SELECT * FROM outages ORDER BY agent, started_at", ()),
        ("SELECT * FROM fleet_timeline ORDER BY agent, started_at", ()),
        ("SELECT * FROM availability_daily WHERE day < ? ORDER BY agent, day", (NOW.date(),)),
        ("SELECT * FROM reliability(?, ?) ORDER BY agent", window),
        ("SELECT * FROM incidents ORDER BY started_at", ()),
    ]
    before = [rows(store, sql, *parameters) for sql, parameters in queries]
    assert before[3][0][:2] == ("api", "unreachable") and len(before[7]) == 2  # the story is really there
    roll_all(store)
    assert [rows(store, sql, *parameters) for sql, parameters in queries] == before


def test_cost_days_are_utc_whatever_the_session_time_zone(store: Store) -> None:
    roll_all(store)
    utc = rows(store, COST_DAILY)
    store.close()  # the store's own database is locked to UTC; a notebook's plain connection is not
    with closing(duckdb.connect(str(store.path), read_only=True)) as connection:
        connection.execute("SET TimeZone = 'Asia/Kolkata'")  # +05:30: its days would split UTC hours
        assert connection.execute(COST_DAILY).fetchall() == utc
    assert utc[0][:2] == ("api", date(2026, 3, 1))


def test_costs_that_are_not_exact_binary_fractions_agree_to_the_last_cent(tmp_path: Path) -> None:
    with closing(Store(tmp_path / "cents.duckdb")) as store:
        store.write(
            WriteBatch(
                heartbeats=[
                    heartbeat("a", START + timedelta(seconds=37 * i), i, cost_usd=0.0123 * (i % 7), ok=1)
                    for i in range(5_000)
                ]
            )
        )
        before = rows(store, COST_DAILY)
        roll_all(store)
        after = rows(store, COST_DAILY)
    assert [row[:2] + row[3:] for row in after] == [row[:2] + row[3:] for row in before]
    for old, new in zip(before, after, strict=True):
        assert new[2] == pytest.approx(old[2], rel=1e-12)  # doubles summed in another order


def test_a_roll_up_commits_while_ingest_has_a_transaction_open(store: Store) -> None:
    """The roll-up runs on its own cursor: an ingest transaction open meanwhile commits too, and is counted."""
    writer = store._connection.cursor()
    try:
        writer.execute("BEGIN TRANSACTION")
        writer.execute(
            "INSERT INTO heartbeats (agent, session, seq, kind, received_at, cost_usd, snapshot) "
            "VALUES ('api', 'api/2', 0, 'heartbeat', ?, 1.0, false)",
            [NOW],
        )
        first = store.roll_up(NOW, RAW_KEEP_S, MINUTE_KEEP_S)
        writer.execute("COMMIT")
    finally:
        writer.close()
    assert first.raw_rows > 0 and first.summed_rows > 0
    roll_all(store)
    assert rows(store, "SELECT count(*) FROM heartbeats WHERE session = 'api/2'") == [(1,)]


def test_the_minutes_mark_never_passes_raw_rows_still_waiting(tmp_path: Path) -> None:
    """A database kept whole for longer than both limits: hours, minutes and raw rows never overlap mid-way."""
    with closing(Store(tmp_path / "old.duckdb")) as store:
        history(store, start=START - timedelta(days=6))
        usage = rows(store, USAGE_DAILY)
        while store.roll_up(NOW, RAW_KEEP_S, MINUTE_KEEP_S, chunk_s=6 * 3600).backlog:
            assert rows(store, USAGE_DAILY) == usage
        assert rows(store, USAGE_DAILY) == usage
        assert rows(store, "SELECT count(*) FROM heartbeats_minute WHERE bucket < ?", NOW - timedelta(days=5)) == [(0,)]


def test_roll_up_takes_a_bare_connection_and_roll_up_all_drains(tmp_path: Path) -> None:
    with closing(Store(tmp_path / "bare.duckdb")) as store:
        history(store)
        cursor = store._connection.cursor()
        try:
            results = roll_up_all(cursor, NOW, RAW_KEEP_S, MINUTE_KEEP_S)
            assert not results[-1].backlog and all(r.backlog for r in results[:-1])
            assert roll_up(cursor, NOW, RAW_KEEP_S, MINUTE_KEEP_S) == RollUp()
        finally:
            cursor.close()


@pytest.mark.parametrize(
    ("raw_keep_s", "minute_keep_s", "chunk_s"),
    [(DAY_S - 1, MINUTE_KEEP_S, 3600), (5 * DAY_S, 4 * DAY_S, 3600), (RAW_KEEP_S, MINUTE_KEEP_S, 1800)],
)
def test_limits_that_make_no_sense_are_refused(
    store: Store, raw_keep_s: float, minute_keep_s: float, chunk_s: int
) -> None:
    with pytest.raises(ValueError, match="retention"):
        store.roll_up(NOW, raw_keep_s, minute_keep_s, chunk_s)
    with pytest.raises(ValueError, match="retention"):
        Retention(raw_keep_s, minute_keep_s, 600, chunk_s)


def test_the_schedule_runs_when_due_and_drains_a_backlog_sooner(store: Store) -> None:
    schedule = Retention(RAW_KEEP_S, MINUTE_KEEP_S, every_s=600)
    first = schedule.run_if_due(store, NOW, now_s=1000.0)
    assert first is not None and first.backlog
    assert schedule.run_if_due(store, NOW, now_s=1000.0 + retention.BACKLOG_PAUSE_S / 2) is None
    clock_s = 1000.0
    while schedule.last is not None and schedule.last.backlog:
        clock_s += retention.BACKLOG_PAUSE_S
        assert schedule.run_if_due(store, NOW, clock_s) is not None
    assert schedule.run_if_due(store, NOW, clock_s + 599) is None  # done: the next look is a period away
    assert schedule.run_if_due(store, NOW, clock_s + 600) == RollUp()
    assert rows(store, "SELECT count(*) FROM heartbeats WHERE received_at < ?", NOW - timedelta(days=3)) == [(0,)]


def test_the_schedule_logs_a_failure_and_goes_on(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    schedule = Retention(RAW_KEEP_S, MINUTE_KEEP_S, every_s=600)
    store.close()  # every statement now fails
    assert schedule.run_if_due(store, NOW, now_s=0.0) is None
    assert schedule.errors == 1 and "roll-up failed" in caplog.text
    assert schedule.run_if_due(store, NOW, now_s=1.0) is None and schedule.errors == 1  # next try: a period on


def test_retention_off_does_nothing(store: Store) -> None:
    assert Retention(RAW_KEEP_S, MINUTE_KEEP_S, every_s=0).run_if_due(store, NOW, 0.0) is None
    assert rows(store, "SELECT count(*) FROM heartbeats_hour") == [(0,)]


def test_a_running_monitor_rolls_up_what_is_older_than_its_limits(
    amqtt_broker: BrokerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleetpulse.monitor.service import Monitor, MonitorConfig

    monkeypatch.setattr(retention, "BACKLOG_PAUSE_S", 0.01)  # drain the 4-day backlog in seconds
    db = tmp_path / "monitor.duckdb"
    now = datetime.now(UTC)
    with closing(Store(db)) as seeded:
        history(seeded, start=now - timedelta(days=4), until=now - timedelta(hours=2))
        total = rows(seeded, COST_DAILY)
    config = MonitorConfig(
        broker=amqtt_broker.url, db_path=db, raw_retention_s=DAY_S, minute_retention_s=2 * DAY_S, tick_interval_s=0.1
    )
    monitor = Monitor(config).start()
    try:
        deadline = time.monotonic() + 30
        old = now - timedelta(days=1, hours=1)
        while rows(monitor.store, "SELECT count(*) FROM heartbeats WHERE received_at < ?", old) != [(0,)]:
            assert time.monotonic() < deadline, "the monitor did not roll up its backlog"
            time.sleep(0.2)
        assert rows(monitor.store, "SELECT count(*) FROM heartbeats_minute") != [(0,)]
        assert rows(monitor.store, COST_DAILY) == total
    finally:
        monitor.stop()


def test_monitor_config_refuses_limits_that_make_no_sense() -> None:
    from fleetpulse.monitor.service import MonitorConfig

    with pytest.raises(ValueError, match="retention"):
        MonitorConfig(raw_retention_s=3600)
    MonitorConfig(raw_retention_s=3600, retention_every_s=0)  # off: nothing to check
