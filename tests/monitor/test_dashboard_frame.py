"""The fleet table's rows, without a browser: urgent states first, ages from the monitor's clock."""

from __future__ import annotations

from datetime import UTC, datetime

from fleetpulse.monitor.dashboard import fleet_frame

NOW = datetime(2026, 11, 29, 12, 0, 30, tzinfo=UTC)


def record(agent: str, state: str, heartbeat: str | None = "2026-11-29T12:00:00Z") -> dict[str, object]:
    return {
        "agent": agent, "display_name": agent.title(), "health_status": state, "group": None, "host": "h1",
        "last_heartbeat_at": heartbeat, "interval_s": 30.0, "reason": f"{state} because", "version": "1.2",
        "cost_today_usd": 0.123456, "tokens_in_today": 10, "tokens_out_today": 5, "success_ratio_today": 0.75,
        "latency_ms_p50": 12.345, "latency_ms_p95": None,
    }  # fmt: skip


def test_urgent_rows_come_first_and_ages_are_relative() -> None:
    frame = fleet_frame(
        [record("b", "healthy"), record("a", "healthy"), record("c", "unreachable"), record("d", "degraded", None)],
        NOW,
    )
    assert list(frame["agent"]) == ["c", "d", "a", "b"]
    assert list(frame["last heartbeat"]) == ["30 s ago", "never", "30 s ago", "30 s ago"]
    assert list(frame.columns)[:2] == ["state", "agent"]


def test_work_figures_are_rounded_for_people_and_uptime_is_a_percentage() -> None:
    (row,) = fleet_frame([record("a", "healthy")], NOW, uptime={"a": 0.98765}).to_dict("records")
    assert row["success %"] == 75.0 and row["p50 ms"] == 12.3 and row["p95 ms"] is None
    assert row["cost today $"] == 0.1235 and row["tokens today"] == 15 and row["uptime 24 h %"] == 98.8
    assert row["version"] == "1.2"


def test_an_empty_fleet_is_an_empty_table_with_its_columns() -> None:
    frame = fleet_frame([], NOW)
    assert frame.empty and "reason" in frame.columns
