"""The history queries (`monitor.history`) against a real DuckDB file filled with hand-written rows.

Every row is written through `Store.write` at a fixed time, minutes after T0 (never the wall clock), and
every expectation is computed by hand from the scenario described next to it. Costs are binary
fractions (0.25, 0.5, ...) so the sums are exact.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone

import pytest

from fleetpulse.monitor import history
from fleetpulse.monitor.health import AgentView, State, Transition
from fleetpulse.monitor.store import Store, WriteBatch
from fleetpulse.monitor.usage import AgentUsage, UsageBook
from fleetpulse.publisher.protocol import HealthMessage, Kind, Metrics, ModelUsage, ReportedStatus, parse_health

HEALTHY, DEGRADED, UNREACHABLE, KILLED, UNKNOWN = State  # members in definition order

T0 = datetime(2026, 3, 10, 8, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    """The monitor's clock, `minutes` after T0."""
    return T0 + timedelta(minutes=minutes)


def minutes(count: float) -> float:
    """A duration in seconds, as the queries report it."""
    return count * 60.0


# -- building rows ---------------------------------------------------------------------------------


def heartbeat(
    agent: str,
    seq: int,
    ok: int = 0,
    failed: int = 0,
    cost: float = 0.0,
    p50: float | None = None,
    p95: float | None = None,
    tokens_in: int = 0,
    tokens_out: int = 0,
    by_model: dict[str, tuple[float, int, int]] | None = None,
) -> HealthMessage:
    """A heartbeat with one metrics window; `by_model` maps a model to (cost, tokens in, tokens out)."""
    return HealthMessage(
        agent=agent,
        kind=Kind.HEARTBEAT,
        status=ReportedStatus.HEALTHY,
        session="s1",
        seq=seq,
        sent_at=T0,
        interval_s=30.0,
        metrics=Metrics(
            ok=ok,
            failed=failed,
            cost_usd=cost,
            latency_ms_p50=p50,
            latency_ms_p95=p95,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            by_model={
                m: ModelUsage(cost_usd=c, tokens_in=i, tokens_out=o) for m, (c, i, o) in (by_model or {}).items()
            },
        ),
    )


def agent_view(agent: str, state: State, first_seen: datetime, group: str | None = None) -> AgentView:
    """The agents row: `state` is the agent's current state, `first_seen` when the monitor first saw it."""
    return AgentView(
        agent=agent, state=state, reason="", since=first_seen, first_seen=first_seen, interval_s=30.0, group=group
    )


def change(agent: str, at_minute: float, from_state: State, to_state: State, reason: str = "") -> Transition:
    return Transition(agent, at(at_minute), from_state, to_state, reason or f"{from_state} -> {to_state}")


def write(
    store: Store,
    agents: Sequence[AgentView] = (),
    transitions: Sequence[Transition] = (),
    heartbeats: Sequence[tuple[datetime, HealthMessage]] = (),
    commands: Sequence[tuple[str, datetime, str, str, str, str]] = (),
) -> None:
    batch = WriteBatch(transitions=list(transitions), agents={v.agent: v for v in agents}, commands=list(commands))
    for received_at, message in heartbeats:
        batch.add_message(message, received_at, snapshot=False)
    store.write(batch)


def stay(agent: str, state: State, reason: str, start_minute: float, end_minute: float) -> dict:
    return {
        "agent": agent,
        "state": state.value,
        "reason": reason,
        "started_at": at(start_minute),
        "ended_at": at(end_minute),
    }


@pytest.fixture
def store(tmp_path) -> Iterator[Store]:
    opened = Store(tmp_path / "h.duckdb")
    yield opened
    opened.close()


# -- stays and availability ------------------------------------------------------------------------

# alpha: first seen healthy at 0 (no transition row for that), unreachable from 60, healthy again from 90.
# beta: first seen at 10 while degraded; its agents row says healthy (its state now), so its first stay
#       takes the first transition's from_state.
ALPHA = [
    change("alpha", 60, HEALTHY, UNREACHABLE, "no heartbeat for 300 s"),
    change("alpha", 90, UNREACHABLE, HEALTHY, "heartbeating"),
]
BETA = [change("beta", 20, DEGRADED, HEALTHY, "heartbeating")]


@pytest.fixture
def fleet(store: Store) -> Store:
    write(
        store,
        agents=[agent_view("alpha", HEALTHY, at(0)), agent_view("beta", HEALTHY, at(10))],
        transitions=ALPHA + BETA,
    )
    return store


STAYS_CASES = {
    "window opens before first seen": (
        -30,
        120,
        [
            stay("alpha", HEALTHY, "first seen", 0, 60),
            stay("alpha", UNREACHABLE, "no heartbeat for 300 s", 60, 90),
            stay("alpha", HEALTHY, "heartbeating", 90, 120),
        ],
    ),
    "window opens between first seen and the outage": (
        30,
        120,
        [
            stay("alpha", HEALTHY, "first seen", 30, 60),
            stay("alpha", UNREACHABLE, "no heartbeat for 300 s", 60, 90),
            stay("alpha", HEALTHY, "heartbeating", 90, 120),
        ],
    ),
    "window closes inside the outage": (
        0,
        75,
        [stay("alpha", HEALTHY, "first seen", 0, 60), stay("alpha", UNREACHABLE, "no heartbeat for 300 s", 60, 75)],
    ),
    "window opens after the recovery": (100, 120, [stay("alpha", HEALTHY, "heartbeating", 100, 120)]),
    "window closes before first seen": (-60, -10, []),
}


@pytest.mark.parametrize(("since", "until", "expected"), STAYS_CASES.values(), ids=STAYS_CASES.keys())
def test_stays_of_one_agent(fleet: Store, since: float, until: float, expected: list[dict]) -> None:
    assert history.stays(fleet, at(since), at(until), agent="alpha") == expected


def test_first_stay_takes_the_first_transitions_from_state(fleet: Store) -> None:
    assert history.stays(fleet, at(0), at(120), agent="beta") == [
        stay("beta", DEGRADED, "first seen", 10, 20),
        stay("beta", HEALTHY, "heartbeating", 20, 120),
    ]


def test_stays_of_every_agent(fleet: Store) -> None:
    rows = history.stays(fleet, at(0), at(120))
    assert [(r["agent"], r["state"], r["started_at"]) for r in rows] == [
        ("alpha", "healthy", at(0)),
        ("alpha", "unreachable", at(60)),
        ("alpha", "healthy", at(90)),
        ("beta", "degraded", at(10)),
        ("beta", "healthy", at(20)),
    ]


def test_an_agent_without_transitions_stays_in_its_state(store: Store) -> None:
    write(store, agents=[agent_view("quiet", DEGRADED, at(5))])
    assert history.stays(store, at(0), at(30)) == [stay("quiet", DEGRADED, "first seen", 5, 30)]


def test_availability(fleet: Store) -> None:
    # gamma: healthy 0-20, unreachable 20-40, killed 40-80, unknown 80-100, healthy 100-120.
    # Observed (neither killed nor unknown): 20 + 20 + 20 = 60 minutes, 40 of them healthy.
    # delta: only ever killed -> never observed -> absent. late: first seen after the window -> absent.
    write(
        fleet,
        agents=[
            agent_view("gamma", HEALTHY, at(0)),
            agent_view("delta", KILLED, at(0)),
            agent_view("late", HEALTHY, at(200)),
        ],
        transitions=[
            change("gamma", 20, HEALTHY, UNREACHABLE),
            change("gamma", 40, UNREACHABLE, KILLED),
            change("gamma", 80, KILLED, UNKNOWN),
            change("gamma", 100, UNKNOWN, HEALTHY),
        ],
    )
    assert history.availability(fleet, at(-30), at(120)) == pytest.approx(
        {
            "alpha": 90 / 120,  # unreachable 60-90 of 0-120 (nothing observed before first seen)
            "beta": 100 / 110,  # degraded 10-20 of 10-120
            "gamma": 40 / 60,
        }
    )


def test_availability_clipped_to_the_window(fleet: Store) -> None:
    # alpha 75-105: unreachable 75-90, healthy 90-105 -> 15 of 30. beta: healthy throughout.
    assert history.availability(fleet, at(75), at(105)) == pytest.approx({"alpha": 0.5, "beta": 1.0})


# -- mttr ------------------------------------------------------------------------------------------


def test_mttr(store: Store) -> None:
    write(
        store,
        transitions=[
            # alpha: degraded 10-20 (10 min), unreachable 60-90 (30 min): both repaired.
            change("alpha", 10, HEALTHY, DEGRADED),
            change("alpha", 20, DEGRADED, HEALTHY),
            change("alpha", 60, HEALTHY, UNREACHABLE),
            change("alpha", 90, UNREACHABLE, HEALTHY),
            # beta: unreachable from 100, still open at `until` (120): 20 minutes down so far.
            change("beta", 100, HEALTHY, UNREACHABLE),
            # gamma: an outage that began and ended before the window: not counted.
            change("gamma", -30, HEALTHY, DEGRADED),
            change("gamma", -10, DEGRADED, HEALTHY),
            # delta: degraded 110-130: began in the window, its down time counts up to `until` only.
            change("delta", 110, HEALTHY, DEGRADED),
            change("delta", 130, DEGRADED, HEALTHY),
        ],
    )
    rows = [{k: v for k, v in row.items() if k != "mtbf_s"} for row in history.mttr(store, at(0), at(120))]
    assert rows == [
        {"agent": "alpha", "outages": 2, "recovered": 2, "mttr_s": pytest.approx(minutes(20)), "down_s": minutes(40)},
        {"agent": "beta", "outages": 1, "recovered": 0, "mttr_s": None, "down_s": minutes(20)},
        {"agent": "delta", "outages": 1, "recovered": 1, "mttr_s": pytest.approx(minutes(20)), "down_s": minutes(10)},
    ]


def test_mttr_counts_an_outage_the_agent_was_in_when_first_seen(fleet: Store) -> None:
    # beta was first seen degraded at 10 and recovered at 20 (see `fleet`).
    assert [r for r in history.mttr(fleet, at(0), at(120)) if r["agent"] == "beta"] == [
        # MTBF: healthy 20-120 (100 min) per outage begun in the window.
        {"agent": "beta", "outages": 1, "recovered": 1, "mttr_s": minutes(10), "down_s": minutes(10),
         "mtbf_s": minutes(100)}
    ]  # fmt: skip


# -- one agent's detail ----------------------------------------------------------------------------


def test_agent_transitions_newest_first(store: Store) -> None:
    write(store, transitions=[*ALPHA, change("beta", 70, HEALTHY, DEGRADED)])
    write(store, transitions=[Transition("alpha", at(120), HEALTHY, KILLED, "stopped: deploy", snapshot=True)])
    rows = history.agent_transitions(store, "alpha")
    assert [(r["at"], r["from_state"], r["to_state"], r["reason"], r["snapshot"]) for r in rows] == [
        (at(120), "healthy", "killed", "stopped: deploy", True),
        (at(90), "unreachable", "healthy", "heartbeating", False),
        (at(60), "healthy", "unreachable", "no heartbeat for 300 s", False),
    ]
    assert [r["at"] for r in history.agent_transitions(store, "alpha", limit=2)] == [at(120), at(90)]
    assert history.agent_transitions(store, "nobody") == []


def test_agent_commands_for_the_agent_and_its_group(store: Store) -> None:
    write(
        store,
        commands=[
            ("c1", at(10), "agents/alpha", "pause", "ops", "maintenance"),
            ("c2", at(20), "groups/batch", "resume", "ops", "done"),
            ("c3", at(30), "agents/beta", "kill", "ops", "runaway"),
            ("c4", at(40), "groups/other", "pause", "ops", ""),
            ("c5", at(50), "agents/alphabet", "kill", "ops", ""),
        ],
    )
    rows = history.agent_commands(store, "alpha", "batch")
    assert rows == [
        {"at": at(20), "command": "resume", "issued_by": "ops", "reason": "done", "target": "groups/batch"},
        {"at": at(10), "command": "pause", "issued_by": "ops", "reason": "maintenance", "target": "agents/alpha"},
    ]
    assert [r["target"] for r in history.agent_commands(store, "alpha", None)] == ["agents/alpha"]
    assert [r["target"] for r in history.agent_commands(store, "alpha", "batch", limit=1)] == ["groups/batch"]


def test_agent_series_buckets(store: Store) -> None:
    # 5-minute buckets over [0, 15): 0-5 has three windows, 5-10 one, 10-15 one; the row at 15 and beta's
    # row fall outside.
    write(
        store,
        heartbeats=[
            (at(0), heartbeat("alpha", 0, ok=1, cost=0.25, p50=100, p95=300)),
            (at(2), heartbeat("alpha", 1, ok=2, failed=1, cost=0.5, p50=150, p95=200)),
            (at(4), heartbeat("alpha", 2, p50=None, p95=None)),
            (at(6), heartbeat("alpha", 3, ok=1, cost=0.125, p50=80, p95=90)),
            (at(11), heartbeat("alpha", 4, failed=2, p50=500, p95=900)),
            (at(15), heartbeat("alpha", 5, ok=9, cost=8.0, p50=1, p95=1)),
            (at(1), heartbeat("beta", 0, ok=9, cost=8.0, p50=9999, p95=9999)),
        ],
    )
    rows = history.agent_series(store, "alpha", at(0), at(15), bucket_s=300)
    assert rows == [
        {"bucket": at(0), "latency_ms_p50": 150, "latency_ms_p95": 300, "cost_usd": 0.75, "ok": 3, "failed": 1},
        {"bucket": at(5), "latency_ms_p50": 80, "latency_ms_p95": 90, "cost_usd": 0.125, "ok": 1, "failed": 0},
        {"bucket": at(10), "latency_ms_p50": 500, "latency_ms_p95": 900, "cost_usd": 0.0, "ok": 0, "failed": 2},
    ]


# -- fleet cost ------------------------------------------------------------------------------------

# Within [0, 120): alpha spends 0.25 + 0.5 + 1.0, beta 2.0, gamma 0.25 + 0.5 (a tie-free ranking),
# idle spends nothing; the rows at -5 and 120 are outside.
SPENDING = [
    (at(-5), heartbeat("alpha", 0, cost=64.0, by_model={"gpt": (64.0, 1, 1)})),
    (at(10), heartbeat("alpha", 1, ok=1, cost=0.25, tokens_in=10, tokens_out=1, by_model={"gpt": (0.25, 10, 1)})),
    (
        at(30),
        heartbeat("alpha", 2, ok=2, failed=1, cost=0.5, tokens_in=20, tokens_out=2, by_model={"gpt": (0.5, 20, 2)}),
    ),
    (
        at(70),
        heartbeat(
            "alpha",
            3,
            ok=1,
            cost=1.0,
            tokens_in=40,
            tokens_out=4,
            by_model={"gpt": (0.5, 30, 3), "claude": (0.5, 10, 1)},
        ),
    ),
    (at(20), heartbeat("beta", 0, ok=4, cost=2.0, tokens_in=80, tokens_out=8, by_model={"claude": (2.0, 80, 8)})),
    (at(50), heartbeat("gamma", 0, ok=1, cost=0.25, tokens_in=5, tokens_out=5, by_model={"local": (0.25, 5, 5)})),
    (at(65), heartbeat("gamma", 1, cost=0.5, tokens_in=5, tokens_out=5, by_model={"local": (0.5, 5, 5)})),
    (at(40), heartbeat("idle", 0, ok=3)),
    (at(120), heartbeat("beta", 1, cost=64.0, by_model={"claude": (64.0, 1, 1)})),
]


def test_cost_over_time_per_hour(store: Store) -> None:
    write(store, heartbeats=SPENDING)
    assert history.cost_over_time(store, at(0), at(120), bucket_s=3600) == [
        {"bucket": at(0), "agent": "alpha", "cost_usd": 0.75},
        {"bucket": at(0), "agent": "beta", "cost_usd": 2.0},
        {"bucket": at(0), "agent": "gamma", "cost_usd": 0.25},
        {"bucket": at(60), "agent": "alpha", "cost_usd": 1.0},
        {"bucket": at(60), "agent": "gamma", "cost_usd": 0.5},
    ]


def test_cost_by_model(store: Store) -> None:
    write(store, heartbeats=SPENDING)
    assert history.cost_by_model(store, at(0), at(120)) == [
        {"model": "claude", "cost_usd": 2.5, "tokens_in": 90, "tokens_out": 9},
        {"model": "gpt", "cost_usd": 1.25, "tokens_in": 60, "tokens_out": 6},
        {"model": "local", "cost_usd": 0.75, "tokens_in": 10, "tokens_out": 10},
    ]


def test_top_spenders(store: Store) -> None:
    write(store, heartbeats=SPENDING)
    beta = {"agent": "beta", "cost_usd": 2.0, "tokens_in": 80, "tokens_out": 8, "tasks_ok": 4, "tasks_failed": 0}
    alpha = {"agent": "alpha", "cost_usd": 1.75, "tokens_in": 70, "tokens_out": 7, "tasks_ok": 4, "tasks_failed": 1}
    gamma = {"agent": "gamma", "cost_usd": 0.75, "tokens_in": 10, "tokens_out": 10, "tasks_ok": 1, "tasks_failed": 0}
    assert history.top_spenders(store, at(0), at(120)) == [beta, alpha, gamma]  # idle spent nothing
    assert history.top_spenders(store, at(0), at(120), limit=2) == [beta, alpha]


def test_top_spenders_ties_by_agent(store: Store) -> None:
    write(store, heartbeats=[(at(1), heartbeat(agent, 0, cost=0.5)) for agent in ("zed", "amy", "kim")])
    assert [r["agent"] for r in history.top_spenders(store, at(0), at(10))] == ["amy", "kim", "zed"]


# -- today's usage, as a restarted monitor resumes it ----------------------------------------------

NOW = datetime(2026, 3, 10, 10, 20, tzinfo=UTC)
TODAY = datetime(2026, 3, 10, tzinfo=UTC)


def today(hour: int, minute: int) -> datetime:
    return TODAY + timedelta(hours=hour, minutes=minute)


# alpha: yesterday 23:50 (not today), then 00:10, 09:30, 10:05 (this hour), 10:15 (this hour, no tasks:
# its latency is not the latest with tasks), and a stop at 10:16 (no metrics at all).
# beta: only yesterday -> absent.
TODAY_ROWS = [
    (today(-1, 50), heartbeat("alpha", 0, ok=9, cost=16.0, p50=1, p95=1, tokens_in=99, by_model={"gpt": (16.0, 0, 0)})),
    (
        today(0, 10),
        heartbeat("alpha", 1, ok=2, cost=0.25, p50=100, p95=200, tokens_in=10, by_model={"gpt": (0.25, 0, 0)}),
    ),
    (
        today(9, 30),
        heartbeat(
            "alpha", 2, ok=1, failed=1, cost=0.5, p50=110, p95=210, tokens_out=5, by_model={"claude": (0.5, 0, 0)}
        ),
    ),
    (
        today(10, 5),
        heartbeat("alpha", 3, failed=1, cost=1.0, p50=120, p95=220, tokens_in=20, by_model={"gpt": (1.0, 0, 0)}),
    ),
    (today(10, 15), heartbeat("alpha", 4, cost=0.125, p50=5, p95=6, by_model={"gpt": (0.125, 0, 0)})),
    (today(-2, 0), heartbeat("beta", 0, ok=1, cost=1.0, p50=1, p95=1)),
]
ALPHA_TODAY = AgentUsage(
    day=TODAY.date(),
    hour=today(10, 0),
    ok_today=3,
    failed_today=2,
    cost_today_usd=1.875,
    cost_hour_usd=1.125,
    tokens_in_today=30,
    tokens_out_today=5,
    latency_ms_p50=120,
    latency_ms_p95=220,
    cost_by_model_today_usd={"gpt": 1.375, "claude": 0.5},
)


def stop_message(agent: str) -> HealthMessage:
    payload = f'{{"v":1,"agent":"{agent}","kind":"stop","reason":"deploy","session":"s1",'
    payload += '"sent_at":"2026-03-10T10:16:00Z","interval_s":30}'
    return parse_health(f"agents/{agent}/health", payload.encode())


@pytest.mark.parametrize("now", [NOW, NOW.astimezone(timezone(timedelta(hours=-5)))], ids=["utc", "utc-5"])
def test_usage_today(store: Store, now: datetime) -> None:
    write(store, heartbeats=[*TODAY_ROWS, (today(10, 16), stop_message("alpha"))])
    assert history.usage_today(store, now) == {"alpha": ALPHA_TODAY}


def test_usage_today_agrees_with_the_running_book(store: Store) -> None:
    write(store, heartbeats=TODAY_ROWS)
    book = UsageBook()
    for received_at, message in TODAY_ROWS:
        assert message.metrics is not None
        book.add(message.agent, message.metrics, received_at)
    assert history.usage_today(store, NOW)["alpha"] == book.get("alpha", NOW)


def test_usage_today_of_an_empty_store(store: Store) -> None:
    assert history.usage_today(store, NOW) == {}


def test_usage_today_takes_both_latencies_from_one_window(store: Store) -> None:
    # alpha's latest window with tasks reports no p95; beta's reports no p50.
    rows = [
        (today(9, 30), heartbeat("alpha", 1, ok=1, p50=110, p95=210)),
        (today(10, 5), heartbeat("alpha", 2, ok=1, p50=120, p95=None)),
        (today(9, 0), heartbeat("beta", 1, ok=1, p50=50, p95=60)),
        (today(10, 0), heartbeat("beta", 2, ok=1, p50=None, p95=70)),
    ]
    write(store, heartbeats=rows)
    resumed = history.usage_today(store, NOW)
    assert (resumed["alpha"].latency_ms_p50, resumed["alpha"].latency_ms_p95) == (120, None)  # the book's figures
    assert (resumed["beta"].latency_ms_p50, resumed["beta"].latency_ms_p95) == (50, 60)
