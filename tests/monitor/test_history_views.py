"""The history views of SPEC §4 and issue 6 against hand-computed expectations, monitor gaps included."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import duckdb
import pytest

from fleetpulse.monitor.schema import migrate

T0 = datetime(2026, 3, 10, 8, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


@pytest.fixture
def db() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'UTC'")
    migrate(connection)
    yield connection
    connection.close()


def agent(db: duckdb.DuckDBPyConnection, name: str, first_seen: datetime, state: str, depends_on: list[str]) -> None:
    db.execute(
        'INSERT INTO agents (agent, first_seen, state, depends_on, "group") VALUES (?, ?, ?, ?, NULL)',
        [name, first_seen, state, depends_on],
    )


def transition(db: duckdb.DuckDBPyConnection, name: str, when: datetime, old: str, new: str) -> None:
    db.execute(
        'INSERT INTO transitions (agent, "at", from_state, to_state, reason, snapshot) VALUES (?, ?, ?, ?, ?, false)',
        [name, when, old, new, f"{old} -> {new}"],
    )


def monitor_event(db: duckdb.DuckDBPyConnection, when: datetime, event: str) -> None:
    db.execute('INSERT INTO monitor_events ("at", monitor_id, event) VALUES (?, ?, ?)', [when, "default", event])


def rows(db: duckdb.DuckDBPyConnection, sql: str, *parameters: Any) -> list[tuple[Any, ...]]:
    return db.execute(sql, list(parameters)).fetchall()


@pytest.fixture
def story(db: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """orders dies at 10 min and returns at 30; refunds (needs orders) degrades 12-31; the monitor is
    down from 20 to 25 min; both are stopped on purpose at 60 min."""
    agent(db, "orders", at(0), "killed", [])
    agent(db, "refunds", at(0), "killed", ["orders"])
    monitor_event(db, at(-1), "started")
    for minute in range(0, 20, 5):
        monitor_event(db, at(minute + 0.5), "alive")
    monitor_event(db, at(20), "stopped")
    monitor_event(db, at(25), "started")
    transition(db, "orders", at(10), "healthy", "unreachable")
    transition(db, "refunds", at(12), "healthy", "degraded")
    transition(db, "orders", at(30), "unreachable", "healthy")
    transition(db, "refunds", at(31), "degraded", "healthy")
    transition(db, "orders", at(60), "healthy", "killed")
    transition(db, "refunds", at(60), "healthy", "killed")
    return db


def test_monitor_gaps_come_from_stopped_and_started(story: duckdb.DuckDBPyConnection) -> None:
    assert rows(story, "SELECT started_at, ended_at, kind FROM monitor_gaps") == [(at(20), at(25), "monitor down")]


def test_a_crashed_monitor_gap_starts_at_its_last_sign_of_life(db: duckdb.DuckDBPyConnection) -> None:
    monitor_event(db, at(0), "started")
    monitor_event(db, at(5), "alive")
    monitor_event(db, at(9), "started")  # kill -9 somewhere after 5 min: no `stopped`
    monitor_event(db, at(11), "broker_lost")
    monitor_event(db, at(12), "broker_connected")
    monitor_event(db, at(14), "broker_lost")  # still lost
    assert rows(db, "SELECT started_at, ended_at, kind FROM monitor_gaps ORDER BY started_at") == [
        (at(5), at(9), "monitor down"),
        (at(11), at(12), "broker lost"),
        (at(14), None, "broker lost"),
    ]


def test_outages_count_only_observed_time(story: duckdb.DuckDBPyConnection) -> None:
    sql = "SELECT agent, state, started_at, ended_at, duration_s, unobserved_s FROM outages ORDER BY 1"
    assert rows(story, sql) == [
        ("orders", "unreachable", at(10), at(30), 15 * 60.0, 5 * 60.0),  # 20 min, 5 of them unwatched
        ("refunds", "degraded", at(12), at(31), 14 * 60.0, 5 * 60.0),
    ]


def test_an_open_outage_stops_counting_when_the_broker_is_lost(db: duckdb.DuckDBPyConnection) -> None:
    agent(db, "batch", at(0), "unreachable", [])
    monitor_event(db, at(0), "started")
    transition(db, "batch", at(10), "healthy", "unreachable")
    monitor_event(db, at(15), "broker_lost")
    ((ended_at, duration_s),) = rows(db, "SELECT ended_at, duration_s FROM outages")
    assert ended_at is None and duration_s == pytest.approx(300.0)


def test_an_outage_the_agent_was_already_in_when_first_seen(db: duckdb.DuckDBPyConnection) -> None:
    agent(db, "late", at(0), "healthy", [])
    transition(db, "late", at(4), "degraded", "healthy")
    assert rows(db, "SELECT state, started_at, ended_at, duration_s FROM outages") == [
        ("degraded", at(0), at(4), 240.0)
    ]


def test_the_fleet_timeline_marks_the_gap_unknown_and_resumes_after_it(story: duckdb.DuckDBPyConnection) -> None:
    timeline = rows(
        story, "SELECT state, started_at, ended_at FROM fleet_timeline WHERE agent = 'orders' ORDER BY started_at"
    )
    assert timeline == [
        ("healthy", at(0), at(10)),
        ("unreachable", at(10), at(20)),
        ("unknown", at(20), at(25)),
        ("unreachable", at(25), at(30)),
        ("healthy", at(30), at(60)),
        ("killed", at(60), None),
    ]


def test_availability_per_day_leaves_out_gaps_and_killed_time(story: duckdb.DuckDBPyConnection) -> None:
    day = rows(
        story,
        "SELECT uptime_s, downtime_s, unobserved_s, uptime_ratio FROM availability_daily WHERE agent = ? AND day = ?",
        "orders",
        date(2026, 3, 10),
    )
    # healthy 0-10 and 30-60 = 40 min; down 10-20 and 25-30 = 15 min; the gap 20-25 is neither.
    assert day == [(2400.0, 900.0, 300.0, pytest.approx(2400 / 3300))]


def test_incidents_group_a_dependent_under_its_root_cause(story: duckdb.DuckDBPyConnection) -> None:
    assert rows(story, "SELECT root_agent, started_at, ended_at, agents, impacted FROM incidents") == [
        ("orders", at(10), at(31), ["orders", "refunds"], 1)
    ]


def test_an_unrelated_outage_is_its_own_incident(story: duckdb.DuckDBPyConnection) -> None:
    agent(story, "mailer", at(0), "healthy", [])
    transition(story, "mailer", at(15), "healthy", "degraded")
    transition(story, "mailer", at(16), "degraded", "healthy")
    incidents = rows(story, "SELECT root_agent, agents FROM incidents ORDER BY started_at")
    assert incidents == [("orders", ["orders", "refunds"]), ("mailer", ["mailer"])]


def test_reliability_mttr_and_mtbf_over_a_window(story: duckdb.DuckDBPyConnection) -> None:
    window = (at(0), at(120))
    result = rows(
        story,
        "SELECT agent, outages, recovered, mttr_s, downtime_s, uptime_s, mtbf_s FROM reliability(?, ?) ORDER BY 1",
        *window,
    )
    assert result == [
        ("orders", 1, 1, 900.0, 900.0, 2400.0, 2400.0),
        ("refunds", 1, 1, 840.0, 840.0, 12 * 60.0 + 29 * 60.0, 12 * 60.0 + 29 * 60.0),
    ]
    assert rows(story, "SELECT agent, mttr_s FROM mttr(?, ?) ORDER BY 1", *window) == [
        ("orders", 900.0),
        ("refunds", 840.0),
    ]
    assert rows(story, "SELECT count(*) FROM reliability(?, ?) WHERE outages > 0", at(40), at(120)) == [(0,)]


def test_cost_per_agent_and_day_with_the_model_split(db: duckdb.DuckDBPyConnection) -> None:
    def heartbeat(name: str, when: datetime, cost: float, by_model: str) -> None:
        db.execute(
            "INSERT INTO heartbeats (agent, session, seq, kind, received_at, cost_usd, tokens_in, tokens_out, ok, "
            "failed, by_model, snapshot) VALUES (?, 's', 0, 'heartbeat', ?, ?, 10, 5, 1, 0, ?, false)",
            [name, when, cost, by_model],
        )

    heartbeat("a", at(1), 0.5, '{"m1": {"cost_usd": 0.25, "tokens_in": 5}, "m2": {"cost_usd": 0.25}}')
    heartbeat("a", at(2), 0.25, '{"m1": {"cost_usd": 0.25}}')
    heartbeat("a", at(60 * 24), 1.0, '{"m2": {"cost_usd": 1.0}}')  # the next day
    sql = "SELECT agent, day, cost_usd, tokens_in, tokens_out, tasks_ok, by_model FROM cost_daily ORDER BY 2"
    assert rows(db, sql) == [
        ("a", date(2026, 3, 10), 0.75, 20, 10, 2, {"m1": 0.5, "m2": 0.25}),
        ("a", date(2026, 3, 11), 1.0, 10, 5, 1, {"m2": 1.0}),
    ]
