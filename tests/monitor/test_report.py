"""`fleetpulse report` over a hand-made history file: the figures against hand-computed expectations.

The story (minutes after T0; the window is [0, 120)):
  orders   unreachable 10-30 and degraded 60-64, healthy otherwise, stopped at 110
  refunds  (needs orders) degraded 12-31, healthy otherwise, stopped at 110
  mailer   healthy throughout, stopped at 110
  the monitor is down 40-45: that time is nobody's uptime nor downtime.
Costs are binary fractions so the sums are exact.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from fleetpulse.monitor.api import to_json
from fleetpulse.monitor.cli import main
from fleetpulse.monitor.report import (
    AgentFigures,
    Incident,
    ModelCost,
    Report,
    Spender,
    build_report,
    format_duration,
    format_html,
    format_percent,
    format_text,
    history_sql,
)
from fleetpulse.monitor.schema import migrate
from fleetpulse.monitor.store import Store
from tests.conftest import CLI, ROOT
from tests.hostile import hostile
from tests.parsed_html import ParsedHtml

T0 = datetime(2026, 3, 10, 8, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def minutes(count: float) -> float:
    return count * 60.0


def _history(connection: duckdb.DuckDBPyConnection) -> None:
    def agent(name: str, depends_on: list[str]) -> None:
        connection.execute(
            "INSERT INTO agents (agent, first_seen, state, depends_on) VALUES (?, ?, 'killed', ?)",
            [name, at(0), depends_on],
        )

    def transition(name: str, minute: float, old: str, new: str) -> None:
        connection.execute(
            'INSERT INTO transitions (agent, "at", from_state, to_state, reason, snapshot) '
            "VALUES (?, ?, ?, ?, ?, false)",
            [name, at(minute), old, new, f"{old} -> {new}"],
        )

    def event(minute: float, name: str) -> None:
        sql = 'INSERT INTO monitor_events ("at", monitor_id, event) VALUES (?, ?, ?)'
        connection.execute(sql, [at(minute), "monitor-1", name])

    def heartbeat(name: str, minute: float, cost_usd: float, model: str, tokens_in: int, tokens_out: int) -> None:
        by_model = {model: {"cost_usd": cost_usd, "tokens_in": tokens_in, "tokens_out": tokens_out}}
        connection.execute(
            "INSERT INTO heartbeats (agent, session, seq, kind, received_at, ok, failed, cost_usd, tokens_in, "
            "tokens_out, by_model, snapshot) VALUES (?, 's1', ?, 'heartbeat', ?, 3, 0, ?, ?, ?, ?, false)",
            [name, int(minute), at(minute), cost_usd, tokens_in, tokens_out, json.dumps(by_model)],
        )

    agent("orders", [])
    agent("refunds", ["orders"])
    agent("mailer", [])
    event(-1, "started")
    event(30, "alive")
    event(40, "stopped")
    event(45, "started")
    transition("orders", 10, "healthy", "unreachable")
    transition("refunds", 12, "healthy", "degraded")
    transition("orders", 30, "unreachable", "healthy")
    transition("refunds", 31, "degraded", "healthy")
    transition("orders", 60, "healthy", "degraded")
    transition("orders", 64, "degraded", "healthy")
    for name in ("orders", "refunds", "mailer"):
        transition(name, 110, "healthy", "killed")
    heartbeat("orders", 5, 0.5, "gpt", 100, 10)
    heartbeat("orders", 50, 0.25, "haiku", 40, 4)
    heartbeat("mailer", 70, 1.0, "gpt", 200, 20)
    heartbeat("mailer", 130, 8.0, "gpt", 999, 99)  # after the window


@pytest.fixture
def history_file(tmp_path: Path) -> Path:
    path = tmp_path / "history.duckdb"
    connection = duckdb.connect(str(path))
    connection.execute("SET TimeZone = 'UTC'")
    migrate(connection)
    _history(connection)
    connection.close()
    return path


@pytest.fixture
def store(history_file: Path) -> Iterator[Store]:
    opened = Store(history_file, read_only=True)
    yield opened
    opened.close()


@pytest.fixture
def report(store: Store) -> Report:
    return build_report(history_sql(store), at(0), at(120), slo=0.995, source="test")


def test_fleet_figures(report: Report) -> None:
    # Observed (healthy or down): 105 min each. Up: orders 81, refunds 86, mailer 105. Down: 24 + 19.
    assert report.agents_observed == 3
    assert report.availability == pytest.approx(272 / 315)
    assert report.below_slo == 2
    assert (report.outages, report.open_outages) == (3, 0)
    assert report.downtime_s == pytest.approx(minutes(43))
    assert report.mttr_s == pytest.approx(minutes((20 + 4 + 19) / 3))
    assert report.mtbf_s == pytest.approx(minutes(272 / 3))


def test_top_agents_by_downtime(report: Report) -> None:
    assert report.top_agents == (
        AgentFigures("orders", 2, 2, minutes(24), minutes(105), minutes(12), minutes(81 / 2)),
        AgentFigures("refunds", 1, 1, minutes(19), minutes(105), minutes(19), minutes(86)),
    )
    assert report.top_agents[0].availability == pytest.approx(81 / 105)


def test_incidents_name_their_root_cause_and_impacted_agents(report: Report) -> None:
    assert report.incident_count == 2
    first, second = report.incidents
    assert (first.root_agent, first.impacted) == ("orders", ("refunds",))
    assert (first.started_at, first.ended_at, first.duration_s) == (at(10), at(31), minutes(21))
    assert (second.root_agent, second.impacted, second.duration_s) == ("orders", (), minutes(4))


def test_cost_and_top_spenders_stay_in_the_window(report: Report) -> None:
    assert report.cost_usd == 1.75
    assert [(s.agent, s.cost_usd, s.tokens_in, s.tokens_out, s.tasks_ok) for s in report.top_spenders] == [
        ("mailer", 1.0, 200, 20, 3),
        ("orders", 0.75, 140, 14, 6),
    ]
    assert [(m.model, m.cost_usd) for m in report.top_models] == [("gpt", 1.5), ("haiku", 0.25)]


def test_the_timeline_rows_are_the_outages_of_the_window(report: Report) -> None:
    assert [(r["agent"], r["state"], r["started_at"], r["ended_at"]) for r in report.timeline] == [
        ("orders", "unreachable", at(10), at(30)),
        ("orders", "degraded", at(60), at(64)),
        ("refunds", "degraded", at(12), at(31)),
    ]


def test_a_window_opening_mid_outage_counts_its_downtime_but_not_the_outage(store: Store) -> None:
    report = build_report(history_sql(store), at(20), at(120))
    orders = next(f for f in report.top_agents if f.agent == "orders")
    assert (orders.outages, orders.downtime_s) == (1, minutes(10 + 4))  # unreachable 20-30 counts; began at 10
    assert report.outages == 1


def test_an_empty_window_says_so(store: Store) -> None:
    report = build_report(history_sql(store), at(200), at(300))
    assert (report.agents_observed, report.availability, report.outages, report.cost_usd) == (0, None, 0, 0.0)
    text = format_text(report)
    assert "no downtime" in text and "no cost reported" in text
    assert "no outages in the window" in format_html(report)


def test_the_api_answers_the_same_report(store: Store, report: Report) -> None:
    """Over POST /api/sql every value arrives as JSON (times as RFC 3339 text): the report parses them back."""
    over_store = history_sql(store)

    def over_json(sql: str) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = json.loads(to_json(over_store(sql)))
        return answer

    assert build_report(over_json, at(0), at(120), slo=0.995, source="test") == report


def test_the_text_report(report: Report) -> None:
    text = format_text(report)
    assert text.startswith("fleetpulse report 2026-03-10 08:00:00 .. 2026-03-10 10:00:00 UTC  (from test)\n")
    assert "Fleet availability  86.349 %  (3 agents; SLO 99.5 %: 2 agents below)" in text
    assert "Outages             3 begun; 43 min down in total" in text
    assert "MTTR / MTBF         14 min 20 s / 1 h 30 min" in text
    lines = text.splitlines()
    header = lines.index("Top agents by downtime") + 1
    assert lines[header].split() == ["AGENT", "OUTAGES", "DOWNTIME", "AVAILABILITY", "MTTR", "MTBF"]
    assert lines[header + 1].split() == ["orders", "2", "24", "min", "77.142", "%", "12", "min", "40", "min", "30", "s"]
    assert "2026-03-10 08:10:00  orders      21 min    refunds" in text
    assert "mailer  $1.0000  200 / 20" in text
    assert "by model: gpt $1.5000, haiku $0.2500" in text


def test_the_html_report_is_standalone(report: Report) -> None:
    page = format_html(report)
    assert page.startswith("<!DOCTYPE html>")
    assert "<td>orders</td><td>2</td><td>24 min</td><td>77.142 %</td>" in page
    assert "Bokeh" in page and "<script" in page  # the chart, its library inlined
    assert not re.search(r"<(script|link)[^>]*(src|href)=", page)  # opens offline: nothing to fetch


HOSTILE = hostile("report")


def hostile_report() -> Report:
    """A report whose every string carries HTML and script: model names are whatever agents sent; agent ids
    are validated at the boundary, and the report escapes them all the same."""
    agent, other = f"{HOSTILE}-agent", f"{HOSTILE}-impacted"
    return Report(
        since=at(0), until=at(120), source=f"{HOSTILE}.duckdb", slo=0.995, agents_observed=2, availability=0.5,
        below_slo=1, outages=1, open_outages=0, downtime_s=60.0, mttr_s=60.0, mtbf_s=None,
        top_agents=(AgentFigures(agent, 1, 1, 60.0, 120.0, 60.0, None),),
        incidents=(Incident(agent, at(10), at(11), 60.0, (agent, other)),), incident_count=3,
        cost_usd=1.0, top_spenders=(Spender(agent, 1.0, 10, 5, 3),), top_models=(ModelCost(f"{HOSTILE}-model", 1.0),),
        timeline=({"agent": agent, "state": "unreachable", "started_at": at(10), "ended_at": at(11),
                   "duration_s": 60.0},),
    )  # fmt: skip


def test_the_html_report_shows_every_string_as_text() -> None:
    page = format_html(hostile_report())
    parsed = ParsedHtml(page)
    assert "img" not in parsed.tags and "a" not in parsed.tags
    assert "<script>window" not in page  # the chart's own scripts only (its JSON carries the strings escaped)
    for shown in (f"from {HOSTILE}.duckdb", f"{HOSTILE}-agent", f"{HOSTILE}-impacted", f"{HOSTILE}-model $1.0000"):
        assert shown in parsed.text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "\u2014"), (0.25, "0.2 s"), (59.9, "59.9 s"), (60, "1 min"), (860, "14 min 20 s"), (5400, "1 h 30 min"),
     (86_400 * 2 + 3600 * 4 + 59, "2 d 4 h")],
)  # fmt: skip
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("ratio", "text"), [(None, "\u2014"), (1.0, "100 %"), (0.999999, "99.999 %"), (0.995, "99.500 %"), (0.0, "0.000 %")]
)
def test_format_percent_never_rounds_up_to_100(ratio: float | None, text: str) -> None:
    assert format_percent(ratio) == text


def test_the_report_command_prints_text_and_writes_html(history_file: Path, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    window = ["--since", at(0).isoformat(), "--until", at(120).isoformat()]
    result = subprocess.run(
        [*CLI, "report", *window, "--db", str(history_file), "--html", str(page)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "Fleet availability  86.349 %" in result.stdout
    assert f"(from {history_file})" in result.stdout
    assert f"(wrote {page})" in result.stderr
    assert "<td>refunds</td><td>1</td><td>19 min</td>" in page.read_text()


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        (["--since", "1d", "--until", "2d"], "--since 1d is not before --until 2d"),
        (["--slo", "0"], "--slo 0: give a percentage, e.g. 99.5"),
        (["--db", "/nonexistent/fleet.duckdb"], "no history at /nonexistent/fleet.duckdb"),
    ],
)
def test_the_report_command_refuses_in_one_line(
    arguments: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", *arguments]) == 2
    assert capsys.readouterr().err.startswith(f"fleetpulse report: {error}")
