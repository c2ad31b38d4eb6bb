"""The running work figures (`monitor.usage`): per-UTC-day sums, hour and day roll-over, latency, per-model cost.

Pure bookkeeping, so every case feeds hand-built `Metrics` windows at fixed monitor-clock times and checks
the figures `UsageBook.get` hands out. Costs are binary fractions (0.25, 0.5, ...) so sums are exact.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from fleetpulse.monitor.usage import AgentUsage, UsageBook
from fleetpulse.publisher.protocol import Metrics, ModelUsage

DAY_1 = datetime(2026, 3, 10, tzinfo=UTC)  # midnight UTC
DAY_2 = DAY_1 + timedelta(days=1)


def at(hour: int, minute: int = 0, day: datetime = DAY_1) -> datetime:
    """The monitor's clock on `day` (UTC)."""
    return day + timedelta(hours=hour, minutes=minute)


def window(
    ok: int = 0,
    failed: int = 0,
    cost: float = 0.0,
    p50: float | None = None,
    p95: float | None = None,
    tokens_in: int = 0,
    tokens_out: int = 0,
    by_model: dict[str, float] | None = None,
) -> Metrics:
    """One heartbeat's metrics window; `by_model` maps a model to its cost."""
    return Metrics(
        ok=ok,
        failed=failed,
        cost_usd=cost,
        latency_ms_p50=p50,
        latency_ms_p95=p95,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        by_model={model: ModelUsage(cost_usd=model_cost) for model, model_cost in (by_model or {}).items()},
    )


def book_of(steps: list[tuple[datetime, Metrics]], agent: str = "a") -> UsageBook:
    book = UsageBook()
    for received_at, metrics in steps:
        book.add(agent, metrics, received_at)
    return book


def figures(book: UsageBook, now: datetime, agent: str = "a") -> AgentUsage:
    usage = book.get(agent, now)
    assert usage is not None
    return usage


# -- sums and roll-over, as a table ----------------------------------------------------------------

ROLL_OVER_CASES = {
    "one hour sums everything": (
        [
            (at(9, 5), window(ok=2, failed=1, cost=0.25, tokens_in=100, tokens_out=10, p50=80, p95=120)),
            (at(9, 35), window(ok=3, cost=0.5, tokens_in=200, tokens_out=20, p50=90, p95=150)),
        ],
        at(9, 40),
        {
            "ok_today": 5,
            "failed_today": 1,
            "cost_today_usd": 0.75,
            "cost_hour_usd": 0.75,
            "tokens_in_today": 300,
            "tokens_out_today": 30,
            "latency_ms_p50": 90,
            "latency_ms_p95": 150,
        },
    ),
    "a new hour resets only the hour's cost": (
        [(at(9, 50), window(ok=1, cost=0.25)), (at(10, 5), window(ok=1, cost=0.5))],
        at(10, 10),
        {"ok_today": 2, "cost_today_usd": 0.75, "cost_hour_usd": 0.5},
    ),
    "a late window of an earlier hour counts today, not this hour": (
        [(at(10, 5), window(ok=1, cost=0.5)), (at(9, 59), window(ok=1, cost=0.25))],
        at(10, 10),
        {"ok_today": 2, "cost_today_usd": 0.75, "cost_hour_usd": 0.5},
    ),
    "a new day resets everything but the last latency": (
        [
            (at(23, 50), window(ok=4, failed=1, cost=1.0, tokens_in=50, tokens_out=5, p50=100, p95=200)),
            (at(0, 10, day=DAY_2), window(cost=0.25, tokens_in=7)),
        ],
        at(0, 20, day=DAY_2),
        {
            "day": DAY_2.date(),
            "hour": at(0, day=DAY_2),
            "ok_today": 0,
            "failed_today": 0,
            "cost_today_usd": 0.25,
            "cost_hour_usd": 0.25,
            "tokens_in_today": 7,
            "tokens_out_today": 0,
            "latency_ms_p50": 100,
            "latency_ms_p95": 200,
            "cost_by_model_today_usd": {},
        },
    ),
    "a late window of yesterday does not count today": (
        [(at(0, 10, day=DAY_2), window(ok=1, cost=0.25)), (at(23, 59), window(ok=5, failed=5, cost=4.0, p50=999))],
        at(0, 20, day=DAY_2),
        {"day": DAY_2.date(), "ok_today": 1, "failed_today": 0, "cost_today_usd": 0.25, "latency_ms_p50": None},
    ),
    "latency comes only from windows with tasks": (
        [(at(9, 0), window(ok=1, p50=100, p95=200)), (at(9, 30), window(p50=5, p95=6))],
        at(9, 40),
        {"latency_ms_p50": 100, "latency_ms_p95": 200},
    ),
    "a window of failed tasks only has latency too": (
        [(at(9, 0), window(ok=1, p50=100, p95=200)), (at(9, 30), window(failed=2, p50=300, p95=400))],
        at(9, 40),
        {"latency_ms_p50": 300, "latency_ms_p95": 400},
    ),
    "no window with tasks: no latency": (
        [(at(9, 0), window(p50=5, p95=6))],
        at(9, 10),
        {"latency_ms_p50": None, "latency_ms_p95": None},
    ),
    "the hour passed with no heartbeat: the hour's cost reads zero": (
        [(at(9, 30), window(ok=1, cost=0.5))],
        at(10, 1),
        {"hour": at(10), "ok_today": 1, "cost_today_usd": 0.5, "cost_hour_usd": 0.0},
    ),
}


@pytest.mark.parametrize(("steps", "now", "expected"), ROLL_OVER_CASES.values(), ids=ROLL_OVER_CASES.keys())
def test_figures_after_windows(steps: list[tuple[datetime, Metrics]], now: datetime, expected: dict) -> None:
    usage = figures(book_of(steps), now)
    assert {name: getattr(usage, name) for name in expected} == expected


def test_cost_per_model_sums_today_and_resets_with_the_day() -> None:
    book = book_of(
        [
            (at(9, 0), window(cost=0.75, by_model={"gpt": 0.25, "claude": 0.5})),
            (at(9, 30), window(cost=0.25, by_model={"gpt": 0.25})),
        ]
    )
    assert figures(book, at(9, 40)).cost_by_model_today_usd == {"gpt": 0.5, "claude": 0.5}

    book.add("a", window(cost=0.125, by_model={"mistral": 0.125}), at(0, 5, day=DAY_2))
    assert figures(book, at(0, 10, day=DAY_2)).cost_by_model_today_usd == {"mistral": 0.125}


def test_agents_are_counted_apart() -> None:
    book = UsageBook()
    book.add("a", window(ok=1, cost=0.25), at(9))
    book.add("b", window(ok=2, cost=0.5), at(9))
    assert (figures(book, at(9, 5), "a").ok_today, figures(book, at(9, 5), "b").ok_today) == (1, 2)
    assert sorted(book.agents()) == ["a", "b"]


@pytest.mark.parametrize(
    ("ok", "failed", "ratio"),
    [(0, 0, None), (5, 0, 1.0), (0, 2, 0.0), (3, 1, 0.75)],
)
def test_success_ratio(ok: int, failed: int, ratio: float | None) -> None:
    usage = AgentUsage(day=DAY_1.date(), hour=at(9), ok_today=ok, failed_today=failed)
    assert usage.success_ratio == ratio
    assert usage.as_dict()["success_ratio_today"] == ratio


def test_as_dict_names_the_figures() -> None:
    usage = figures(
        book_of([(at(9), window(ok=3, failed=1, cost=0.5, tokens_in=10, tokens_out=2, p50=1, p95=2))]), at(9)
    )
    assert usage.as_dict() == {
        "tasks_ok_today": 3,
        "tasks_failed_today": 1,
        "success_ratio_today": 0.75,
        "latency_ms_p50": 1,
        "latency_ms_p95": 2,
        "cost_today_usd": 0.5,
        "cost_hour_usd": 0.5,
        "tokens_in_today": 10,
        "tokens_out_today": 2,
    }


# -- get() -----------------------------------------------------------------------------------------


def test_get_of_an_unknown_agent_is_none() -> None:
    assert UsageBook().get("nobody", at(9)) is None


def test_get_returns_a_copy() -> None:
    book = book_of([(at(9), window(ok=1, cost=0.25, by_model={"gpt": 0.25}))])
    copy = figures(book, at(9, 5))
    copy.ok_today = 100
    copy.cost_today_usd = 100.0
    copy.cost_by_model_today_usd["gpt"] = 100.0
    copy.cost_by_model_today_usd["other"] = 1.0

    again = figures(book, at(9, 5))
    assert (again.ok_today, again.cost_today_usd, again.cost_by_model_today_usd) == (1, 0.25, {"gpt": 0.25})


def test_get_after_the_hour_leaves_the_book_alone() -> None:
    book = book_of([(at(9, 30), window(cost=0.5))])
    assert figures(book, at(10, 5)).cost_hour_usd == 0.0
    # Looking later did not move the book on: the 9 o'clock figures are still there for 9 o'clock.
    assert figures(book, at(9, 45)).cost_hour_usd == 0.5


def test_get_of_an_agent_whose_day_has_passed_reads_zeros_but_keeps_latency() -> None:
    book = book_of([(at(22), window(ok=3, failed=1, cost=2.0, tokens_in=9, p50=40, p95=90, by_model={"gpt": 2.0}))])
    now = at(8, 15, day=DAY_2)
    assert figures(book, now) == AgentUsage(
        day=DAY_2.date(), hour=at(8, day=DAY_2), latency_ms_p50=40, latency_ms_p95=90
    )
    assert figures(book, now).success_ratio is None


def test_seeded_figures_continue() -> None:
    book = UsageBook()
    book.seed("a", AgentUsage(day=DAY_1.date(), hour=at(9), ok_today=10, cost_today_usd=1.0, cost_hour_usd=0.5))
    book.add("a", window(ok=1, cost=0.25), at(9, 30))
    usage = figures(book, at(9, 31))
    assert (usage.ok_today, usage.cost_today_usd, usage.cost_hour_usd) == (11, 1.25, 0.75)


def test_the_day_is_the_utc_day_whatever_the_clock_offset() -> None:
    plus_two = timezone(timedelta(hours=2))
    # 01:30 on 11 March at +02:00 is 23:30 on 10 March UTC.
    late_evening_utc = datetime(2026, 3, 11, 1, 30, tzinfo=plus_two)
    book = book_of([(late_evening_utc, window(ok=1, cost=0.25))])
    usage = figures(book, at(23, 45))
    assert usage.day == date(2026, 3, 10)
    assert (usage.ok_today, usage.cost_today_usd) == (1, 0.25)
