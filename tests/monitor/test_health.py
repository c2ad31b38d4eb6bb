"""The health state machine (SPEC §3), message by message and tick by tick: scripted tables plus hypothesis properties.

Every scripted case replays a list of `(seconds after NOW, action)` steps through `monitor.health` and
checks the final state, its reason and the whole recorded transition history. Time is always passed
in, so nothing here sleeps or touches a socket. Agents heartbeat every 10 s unless a case says
otherwise: late after 30 s (`degraded_after`), gone after 100 s (`unreachable_after`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetpulse.monitor.health import (
    AgentView,
    Outcome,
    State,
    ThresholdPolicy,
    Thresholds,
    Transition,
    apply_message,
    broker_lost,
    listening_resumed,
    next_check_at,
    tick,
)
from fleetpulse.publisher.protocol import HealthMessage, Kind, Metrics, ProtocolError, ReportedStatus, parse_health

HEALTHY, DEGRADED, UNREACHABLE, KILLED, UNKNOWN = State  # members in definition order

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
INTERVAL_S = 10.0
DEFAULTS = Thresholds()
WILL_REASON = "will: connection lost"


# -- building messages -----------------------------------------------------------------------------


def at(seconds: float) -> datetime:
    """The monitor's clock, `seconds` after NOW."""
    return NOW + timedelta(seconds=seconds)


def work(ok: int = 0, failed: int = 0, progress_s: float | None = None) -> Metrics:
    """One heartbeat's metrics window; `progress_s`: last task progress, in seconds after NOW."""
    return Metrics(ok=ok, failed=failed, last_progress_at=None if progress_s is None else at(progress_s))


def heartbeat(
    seq: int = 0,
    *,
    session: str = "s1",
    agent: str = "a",
    degraded: str | None = None,
    paused: bool = False,
    metrics: Metrics | None = None,
    interval_s: float = INTERVAL_S,
) -> HealthMessage:
    """A heartbeat (seq 0 is the birth); `degraded="why"` makes the agent report itself degraded."""
    return HealthMessage(
        agent=agent,
        kind=Kind.HEARTBEAT,
        status=ReportedStatus.HEALTHY if degraded is None else ReportedStatus.DEGRADED,
        reason=degraded or None,
        session=session,
        seq=seq,
        sent_at=NOW,
        interval_s=interval_s,
        paused=paused,
        metrics=metrics,
    )


def will(session: str = "s1", agent: str = "a") -> HealthMessage:
    """The will the broker publishes when the agent's connection dies."""
    return HealthMessage(agent=agent, kind=Kind.WILL, session=session, sent_at=NOW, interval_s=INTERVAL_S)


def stop(reason: str | None = "deploy", session: str = "s1", agent: str = "a") -> HealthMessage:
    """A graceful stop (or the answer to a `kill` command)."""
    return HealthMessage(
        agent=agent, kind=Kind.STOP, reason=reason, session=session, sent_at=NOW, interval_s=INTERVAL_S
    )


# -- replaying scripts -----------------------------------------------------------------------------


class Event(StrEnum):
    """What happens to the monitor rather than to an agent."""

    TICK = "tick"
    BROKER_LOST = "broker lost"
    LISTENING_RESUMED = "listening resumed"


TICK, LOST, RESUMED = Event.TICK, Event.BROKER_LOST, Event.LISTENING_RESUMED


@dataclass(frozen=True)
class Snapshot:
    """A retained message delivered because the monitor (re)subscribed."""

    message: HealthMessage


Action = HealthMessage | Snapshot | Event
Step = tuple[float, Action]
Row = tuple[float, State, State, str]  # a transition: seconds after NOW, from, to, reason


@dataclass
class Replay:
    """Where a script ended: the view, every transition on the way, each message's outcome."""

    view: AgentView
    transitions: list[Transition]
    outcomes: list[Outcome]

    @property
    def rows(self) -> tuple[Row, ...]:
        return tuple(((t.at - NOW).total_seconds(), t.from_state, t.to_state, t.reason) for t in self.transitions)


def replay(steps: tuple[Step, ...], thresholds: Thresholds = DEFAULTS) -> Replay:
    """Run a script from nothing known; collect the transitions and the messages' outcomes."""
    view: AgentView | None = None
    transitions: list[Transition] = []
    outcomes: list[Outcome] = []
    for seconds, action in steps:
        now = at(seconds)
        transition: Transition | None = None
        if isinstance(action, Event):
            assert view is not None, "a script starts with a message"
            if action is TICK:
                view, transition = tick(view, now, thresholds)
            elif action is LOST:
                view = broker_lost(view, now)
            else:
                view = listening_resumed(view, now)
        else:
            message, snapshot = (action.message, True) if isinstance(action, Snapshot) else (action, False)
            if message.sent_at == NOW:  # the agent's clock runs with the script unless a case skews it
                message = message.model_copy(update={"sent_at": now})
            view, transition, outcome = apply_message(view, message, now, thresholds, snapshot=snapshot)
            outcomes.append(outcome)
        if transition is not None:
            transitions.append(transition)
    assert view is not None
    return Replay(view, transitions, outcomes)


@dataclass(frozen=True)
class Case:
    """A script and what the monitor must believe at its end."""

    steps: tuple[Step, ...]
    state: State
    reason: str
    transitions: tuple[Row, ...] = ()
    thresholds: Thresholds = field(default_factory=Thresholds)


def check(case: Case) -> Replay:
    result = replay(case.steps, case.thresholds)
    assert (result.view.state, result.view.reason) == (case.state, case.reason)
    assert result.rows == case.transitions
    return result


BIRTH: Step = (0, heartbeat(0))


# -- first sight -----------------------------------------------------------------------------------

FIRST_SIGHT = [
    pytest.param(Case((BIRTH,), HEALTHY, "heartbeating"), id="birth"),
    pytest.param(Case(((0, heartbeat(7)),), HEALTHY, "heartbeating"), id="first-heartbeat-mid-session"),
    pytest.param(
        Case(((0, heartbeat(0, degraded="warming up")),), DEGRADED, "reported: warming up"),
        id="birth-reporting-degraded",
    ),
    pytest.param(Case(((0, heartbeat(0, paused=True)),), HEALTHY, "paused by operator"), id="birth-paused"),
    pytest.param(
        Case(((0, heartbeat(0, metrics=work(4, 6))),), DEGRADED, "failing: 6 of 10 recent tasks failed"),
        id="birth-failing",
    ),
    pytest.param(Case(((0, will()),), UNREACHABLE, WILL_REASON), id="first-message-a-will"),
    pytest.param(Case(((0, stop("deploy")),), KILLED, "stopped: deploy"), id="first-message-a-stop"),
    pytest.param(Case(((0, stop(None)),), KILLED, "stopped: no reason given"), id="first-message-a-stop-no-reason"),
]


@pytest.mark.parametrize("case", FIRST_SIGHT)
def test_first_sight_is_a_state_not_a_transition(case: Case) -> None:
    result = check(case)
    assert result.outcomes == [Outcome.APPLIED]
    assert result.view.first_seen == result.view.since == NOW


def test_birth_creates_the_view_from_the_message() -> None:
    message = HealthMessage(
        agent="order-processor",
        name="Order processor",
        kind=Kind.HEARTBEAT,
        status=ReportedStatus.HEALTHY,
        session="s1",
        seq=0,
        sent_at=NOW - timedelta(seconds=3),  # the agent's clock: stored, never judged by
        interval_s=30,
        host="worker-7",
        pid=4242,
        version="1.2.3",
        group="orders",
        depends_on=["postgres", "llm-gateway"],
        labels={"team": "payments", "env": "prod"},
    )
    view, transition, outcome = apply_message(None, message, NOW, DEFAULTS)
    assert (transition, outcome) == (None, Outcome.APPLIED)
    assert view.agent == "order-processor"
    assert (view.state, view.reason, view.since, view.first_seen) == (HEALTHY, "heartbeating", NOW, NOW)
    assert (view.session, view.last_seq, view.last_heartbeat_at, view.heard_at) == ("s1", 0, NOW, NOW)
    assert (view.name, view.host, view.pid, view.version, view.group) == (
        "Order processor",
        "worker-7",
        4242,
        "1.2.3",
        "orders",
    )
    assert view.interval_s == 30
    assert view.depends_on == ("postgres", "llm-gateway")
    assert view.labels == (("env", "prod"), ("team", "payments"))  # sorted: a stable, hashable form


def test_first_will_or_stop_has_not_heard_a_heartbeat() -> None:
    for message in (will(), stop()):
        view, _, _ = apply_message(None, message, NOW, DEFAULTS)
        assert (view.last_heartbeat_at, view.heard_at, view.session) == (None, None, "s1")


# -- wills -----------------------------------------------------------------------------------------

WILLS = [
    pytest.param(
        Case((BIRTH, (5, will())), UNREACHABLE, WILL_REASON, ((5, HEALTHY, UNREACHABLE, WILL_REASON),)),
        id="will-for-current-session",
    ),
    pytest.param(
        Case(
            ((0, heartbeat(0, degraded="slow")), (5, will())),
            UNREACHABLE,
            WILL_REASON,
            ((5, DEGRADED, UNREACHABLE, WILL_REASON),),
        ),
        id="will-while-degraded",
    ),
    pytest.param(
        Case(
            (BIRTH, (100, TICK), (120, will())),
            UNREACHABLE,
            WILL_REASON,
            ((100, HEALTHY, UNREACHABLE, "no heartbeat for 100 s"),),
        ),
        id="will-after-unreachable-by-age-only-updates-reason",
    ),
    pytest.param(
        Case(
            (BIRTH, (5, heartbeat(0, session="s2")), (6, will("s1"))),
            HEALTHY,
            "heartbeating",
        ),
        id="will-for-older-session-is-stale",
    ),
    pytest.param(
        Case(
            (BIRTH, (5, will("s1")), (10, heartbeat(0, session="s2")), (20, will("s2"))),
            UNREACHABLE,
            WILL_REASON,
            (
                (5, HEALTHY, UNREACHABLE, WILL_REASON),
                (10, UNREACHABLE, HEALTHY, "recovered: new session"),
                (20, HEALTHY, UNREACHABLE, WILL_REASON),
            ),
        ),
        id="will-for-the-new-session-counts",
    ),
    pytest.param(
        Case(
            (BIRTH, (5, will()), (6, will())),
            UNREACHABLE,
            WILL_REASON,
            ((5, HEALTHY, UNREACHABLE, WILL_REASON),),
        ),
        id="repeated-will-is-one-transition",
    ),
]


@pytest.mark.parametrize("case", WILLS)
def test_will(case: Case) -> None:
    check(case)


def test_stale_will_changes_nothing() -> None:
    result = replay((BIRTH, (5, heartbeat(0, session="s2"))))
    view, transition, outcome = apply_message(result.view, will("s1"), at(6), DEFAULTS)
    assert (view, transition, outcome) == (result.view, None, Outcome.STALE_WILL)
    assert view is result.view


# -- late heartbeats, measured on ticks ------------------------------------------------------------

LATE = [
    pytest.param(Case((BIRTH, (29.999, TICK)), HEALTHY, "heartbeating"), id="just-before-degraded-after"),
    pytest.param(
        Case(
            (BIRTH, (30, TICK)), DEGRADED, "no heartbeat for 30 s", ((30, HEALTHY, DEGRADED, "no heartbeat for 30 s"),)
        ),
        id="at-degraded-after",
    ),
    pytest.param(
        Case(
            (BIRTH, (30, TICK), (60, TICK)),
            DEGRADED,
            "no heartbeat for 30 s",
            ((30, HEALTHY, DEGRADED, "no heartbeat for 30 s"),),
        ),
        id="reason-stays-while-degraded",
    ),
    pytest.param(
        Case(
            (BIRTH, (30, TICK), (99.9, TICK)),
            DEGRADED,
            "no heartbeat for 30 s",
            ((30, HEALTHY, DEGRADED, "no heartbeat for 30 s"),),
        ),
        id="just-before-unreachable-after",
    ),
    pytest.param(
        Case(
            (BIRTH, (30, TICK), (100, TICK)),
            UNREACHABLE,
            "no heartbeat for 100 s",
            (
                (30, HEALTHY, DEGRADED, "no heartbeat for 30 s"),
                (100, DEGRADED, UNREACHABLE, "no heartbeat for 100 s"),
            ),
        ),
        id="at-unreachable-after",
    ),
    pytest.param(
        Case(
            (BIRTH, (250, TICK)),
            UNREACHABLE,
            "no heartbeat for 250 s",
            ((250, HEALTHY, UNREACHABLE, "no heartbeat for 250 s"),),
        ),
        id="first-tick-long-after-skips-degraded",
    ),
    pytest.param(
        Case(
            (BIRTH, (100, TICK), (10_000, TICK)),
            UNREACHABLE,
            "no heartbeat for 100 s",
            ((100, HEALTHY, UNREACHABLE, "no heartbeat for 100 s"),),
        ),
        id="unreachable-is-not-changed-by-ticks",
    ),
    pytest.param(
        Case((BIRTH, (20, heartbeat(1)), (49, TICK)), HEALTHY, "heartbeating"),
        id="age-counts-from-the-last-heartbeat",
    ),
    pytest.param(
        Case(
            (BIRTH, (20, heartbeat(1)), (50, TICK)),
            DEGRADED,
            "no heartbeat for 30 s",
            ((50, HEALTHY, DEGRADED, "no heartbeat for 30 s"),),
        ),
        id="late-after-the-last-heartbeat",
    ),
    pytest.param(
        Case(
            ((0, heartbeat(0, interval_s=30)), (89, TICK), (90, TICK), (300, TICK)),
            UNREACHABLE,
            "no heartbeat for 300 s",
            (
                (90, HEALTHY, DEGRADED, "no heartbeat for 90 s"),
                (300, DEGRADED, UNREACHABLE, "no heartbeat for 300 s"),
            ),
        ),
        id="spec-defaults-at-30s-interval",
    ),
    pytest.param(
        Case(
            ((0, heartbeat(0, interval_s=30)), (10, heartbeat(1, interval_s=5)), (25, TICK)),
            DEGRADED,
            "no heartbeat for 15 s",
            ((25, HEALTHY, DEGRADED, "no heartbeat for 15 s"),),
        ),
        id="latest-interval-wins",
    ),
    pytest.param(
        Case(
            ((0, heartbeat(0, degraded="slow")), (30, TICK)),
            DEGRADED,
            "reported: slow",
        ),
        id="already-degraded-agent-keeps-its-reason-when-late",
    ),
    pytest.param(
        Case(
            ((0, heartbeat(0, degraded="slow")), (30, TICK), (100, TICK)),
            UNREACHABLE,
            "no heartbeat for 100 s",
            ((100, DEGRADED, UNREACHABLE, "no heartbeat for 100 s"),),
        ),
        id="degraded-agent-goes-unreachable",
    ),
    pytest.param(
        Case(
            (BIRTH, (4.9, TICK), (5, TICK), (20, TICK)),
            UNREACHABLE,
            "no heartbeat for 20 s",
            (
                (5, HEALTHY, DEGRADED, "no heartbeat for 5 s"),
                (20, DEGRADED, UNREACHABLE, "no heartbeat for 20 s"),
            ),
            Thresholds(degraded_after_s=5, unreachable_after_s=20),
        ),
        id="global-override-both",
    ),
    pytest.param(
        Case(
            (BIRTH, (30, TICK), (50, TICK), (100, TICK)),
            UNREACHABLE,
            "no heartbeat for 100 s",
            (
                (50, HEALTHY, DEGRADED, "no heartbeat for 50 s"),
                (100, DEGRADED, UNREACHABLE, "no heartbeat for 100 s"),
            ),
            Thresholds(degraded_after_s=50),
        ),
        id="global-override-degraded-only",
    ),
    pytest.param(
        Case(
            (BIRTH, (40, TICK)),
            UNREACHABLE,
            "no heartbeat for 40 s",
            ((40, HEALTHY, UNREACHABLE, "no heartbeat for 40 s"),),
            Thresholds(unreachable_after_s=40),
        ),
        id="global-override-unreachable-only",
    ),
]


@pytest.mark.parametrize("case", LATE)
def test_late_heartbeat(case: Case) -> None:
    check(case)


@pytest.mark.parametrize(
    ("thresholds", "interval_s", "degraded_after_s", "unreachable_after_s"),
    [
        pytest.param(Thresholds(), 10, 30, 100, id="defaults-at-10s"),
        pytest.param(Thresholds(), 30, 90, 300, id="defaults-at-30s"),
        pytest.param(Thresholds(degraded_after_s=5), 10, 5, 100, id="degraded-override"),
        pytest.param(Thresholds(unreachable_after_s=50), 10, 30, 50, id="unreachable-override"),
        pytest.param(Thresholds(degraded_after_s=5, unreachable_after_s=20), 10, 5, 20, id="both-overrides"),
        pytest.param(
            Thresholds(degraded_after_s=60, unreachable_after_s=20), 10, 60, 60, id="unreachable-never-before-degraded"
        ),
        pytest.param(Thresholds(unreachable_after_s=10), 10, 30, 30, id="unreachable-below-default-degraded"),
    ],
)
def test_thresholds(
    thresholds: Thresholds, interval_s: float, degraded_after_s: float, unreachable_after_s: float
) -> None:
    assert thresholds.degraded_after(interval_s) == degraded_after_s
    assert thresholds.unreachable_after(interval_s) == unreachable_after_s


FAST = Thresholds(degraded_after_s=5, unreachable_after_s=20)
SLOW = Thresholds(degraded_after_s=600, unreachable_after_s=3600)
GLOBAL = Thresholds(degraded_after_s=40)
POLICY = ThresholdPolicy(default=GLOBAL, overrides=(("order-*", FAST), ("order-archive", SLOW), ("*-batch", SLOW)))


@pytest.mark.parametrize(
    ("agent", "expected"),
    [
        pytest.param("order-processor", FAST, id="glob-match"),
        pytest.param("order-archive", FAST, id="first-match-wins"),
        pytest.param("nightly-batch", SLOW, id="second-pattern"),
        pytest.param("billing", GLOBAL, id="no-match-global"),
        pytest.param("Order-processor", GLOBAL, id="case-sensitive"),
    ],
)
def test_threshold_policy_for_agent(agent: str, expected: Thresholds) -> None:
    assert POLICY.for_agent(agent) is expected


def test_threshold_policy_defaults() -> None:
    assert ThresholdPolicy().for_agent("anything") == Thresholds()


@pytest.mark.parametrize(
    ("agent", "tick_s", "state", "reason"),
    [
        pytest.param("order-processor", 5, DEGRADED, "no heartbeat for 5 s", id="override-degraded"),
        pytest.param("order-processor", 20, UNREACHABLE, "no heartbeat for 20 s", id="override-unreachable"),
        pytest.param("billing", 20, HEALTHY, "heartbeating", id="global-still-healthy"),
        pytest.param("billing", 40, DEGRADED, "no heartbeat for 40 s", id="global-degraded"),
        pytest.param("billing", 100, UNREACHABLE, "no heartbeat for 100 s", id="global-unreachable-from-interval"),
        pytest.param("nightly-batch", 500, HEALTHY, "heartbeating", id="slow-override"),
    ],
)
def test_per_agent_override(agent: str, tick_s: float, state: State, reason: str) -> None:
    thresholds = POLICY.for_agent(agent)
    result = replay(((0, heartbeat(0, agent=agent)), (tick_s, TICK)), thresholds)
    assert (result.view.state, result.view.reason) == (state, reason)


# -- the agent's own report ------------------------------------------------------------------------

REPORTED = [
    pytest.param(
        Case(
            (BIRTH, (10, heartbeat(1, degraded="downstream timeout"))),
            DEGRADED,
            "reported: downstream timeout",
            ((10, HEALTHY, DEGRADED, "reported: downstream timeout"),),
        ),
        id="reported-degraded",
    ),
    pytest.param(
        Case(
            (BIRTH, (10, heartbeat(1, degraded=""))),
            DEGRADED,
            "reported: degraded",
            ((10, HEALTHY, DEGRADED, "reported: degraded"),),
        ),
        id="reported-degraded-without-reason",
    ),
    pytest.param(
        Case(
            (BIRTH, (10, heartbeat(1, degraded="downstream timeout")), (20, heartbeat(2))),
            HEALTHY,
            "recovered from: reported: downstream timeout",
            (
                (10, HEALTHY, DEGRADED, "reported: downstream timeout"),
                (20, DEGRADED, HEALTHY, "recovered from: reported: downstream timeout"),
            ),
        ),
        id="back-to-healthy",
    ),
    pytest.param(
        Case(
            (BIRTH, (10, heartbeat(1, degraded="a")), (20, heartbeat(2, degraded="b"))),
            DEGRADED,
            "reported: b",
            ((10, HEALTHY, DEGRADED, "reported: a"),),
        ),
        id="new-reason-same-state-no-transition",
    ),
    pytest.param(
        Case(
            (BIRTH, (10, heartbeat(1)), (20, heartbeat(2))),
            HEALTHY,
            "heartbeating",
        ),
        id="healthy-heartbeats-no-transition",
    ),
    pytest.param(
        Case(
            ((0, heartbeat(0, metrics=work(progress_s=-700))), (10, heartbeat(1, degraded="x"))),
            DEGRADED,
            "reported: x",
        ),
        id="report-outranks-stall",
    ),
]


@pytest.mark.parametrize("case", REPORTED)
def test_reported_status(case: Case) -> None:
    check(case)


# -- recovery --------------------------------------------------------------------------------------

RECOVERY = [
    pytest.param(
        Case(
            (BIRTH, (30, TICK), (35, heartbeat(1))),
            HEALTHY,
            "recovered from: no heartbeat for 30 s",
            (
                (30, HEALTHY, DEGRADED, "no heartbeat for 30 s"),
                (35, DEGRADED, HEALTHY, "recovered from: no heartbeat for 30 s"),
            ),
        ),
        id="late-heartbeat-arrives",
    ),
    pytest.param(
        Case(
            (BIRTH, (100, TICK), (110, heartbeat(1))),
            HEALTHY,
            "heartbeat resumed",
            (
                (100, HEALTHY, UNREACHABLE, "no heartbeat for 100 s"),
                (110, UNREACHABLE, HEALTHY, "heartbeat resumed"),
            ),
        ),
        id="same-session-after-unreachable-by-age",
    ),
    pytest.param(
        Case(
            (BIRTH, (100, TICK), (110, heartbeat(0, session="s2"))),
            HEALTHY,
            "recovered: new session",
            (
                (100, HEALTHY, UNREACHABLE, "no heartbeat for 100 s"),
                (110, UNREACHABLE, HEALTHY, "recovered: new session"),
            ),
        ),
        id="new-session-after-unreachable-by-age",
    ),
    pytest.param(
        Case(
            (BIRTH, (5, will()), (10, heartbeat(0, session="s2"))),
            HEALTHY,
            "recovered: new session",
            ((5, HEALTHY, UNREACHABLE, WILL_REASON), (10, UNREACHABLE, HEALTHY, "recovered: new session")),
        ),
        id="new-session-after-will",
    ),
    pytest.param(
        Case(
            (BIRTH, (5, stop()), (10, heartbeat(0, session="s2"))),
            HEALTHY,
            "recovered: new session",
            ((5, HEALTHY, KILLED, "stopped: deploy"), (10, KILLED, HEALTHY, "recovered: new session")),
        ),
        id="new-session-after-stop",
    ),
    pytest.param(
        Case(
            (BIRTH, (5, stop()), (10, heartbeat(0, session="s2", degraded="warming up"))),
            DEGRADED,
            "reported: warming up",
            ((5, HEALTHY, KILLED, "stopped: deploy"), (10, KILLED, DEGRADED, "reported: warming up")),
        ),
        id="new-session-reporting-degraded",
    ),
    pytest.param(
        Case(
            (BIRTH, (30, TICK), (35, heartbeat(1, degraded="slow"))),
            DEGRADED,
            "reported: slow",
            ((30, HEALTHY, DEGRADED, "no heartbeat for 30 s"),),
        ),
        id="late-agent-arrives-degraded-no-second-transition",
    ),
    pytest.param(
        Case(
            ((0, heartbeat(0, degraded="slow")), (10, heartbeat(0, session="s2"))),
            HEALTHY,
            "recovered from: reported: slow",
            ((10, DEGRADED, HEALTHY, "recovered from: reported: slow"),),
        ),
        id="new-session-ends-a-degraded-stay",
    ),
]


@pytest.mark.parametrize("case", RECOVERY)
def test_recovery(case: Case) -> None:
    check(case)


# -- stalled: heartbeats arrive, but no task progress ----------------------------------------------

STALL_25 = Thresholds(stall_after_s=25)

STALLED = [
    pytest.param(
        Case(((0, heartbeat(0, metrics=work(progress_s=-599))),), HEALTHY, "heartbeating"),
        id="just-under-stall-after",
    ),
    pytest.param(
        Case(
            ((0, heartbeat(0, metrics=work(progress_s=-599))), (1, heartbeat(1))),
            DEGRADED,
            "stalled: no task for 600 s",
            ((1, HEALTHY, DEGRADED, "stalled: no task for 600 s"),),
        ),
        id="stalled-on-a-heartbeat",
    ),
    pytest.param(
        Case(
            ((0, heartbeat(0, interval_s=60, metrics=work(progress_s=-500))), (99, TICK), (100, TICK)),
            DEGRADED,
            "stalled: no task for 600 s",
            ((100, HEALTHY, DEGRADED, "stalled: no task for 600 s"),),
        ),
        id="stalled-on-a-tick",
    ),
    pytest.param(
        Case(
            (
                (0, heartbeat(0, metrics=work(progress_s=0))),
                (10, heartbeat(1)),
                (20, heartbeat(2, metrics=work(ok=0))),
                (25, heartbeat(3)),
            ),
            DEGRADED,
            "stalled: no task for 25 s",
            ((25, HEALTHY, DEGRADED, "stalled: no task for 25 s"),),
            STALL_25,
        ),
        id="progress-remembered-across-heartbeats-without-it",
    ),
    pytest.param(
        Case(
            ((0, heartbeat(0, metrics=work(progress_s=0))), (25, heartbeat(0, session="s2"))),
            HEALTHY,
            "heartbeating",
            (),
            STALL_25,
        ),
        id="new-session-forgets-progress",
    ),
    pytest.param(
        Case(
            (
                (0, heartbeat(0, metrics=work(progress_s=-599))),
                (1, heartbeat(1)),
                (11, heartbeat(2, metrics=work(ok=1, progress_s=10))),
            ),
            HEALTHY,
            "recovered from: stalled: no task for 600 s",
            (
                (1, HEALTHY, DEGRADED, "stalled: no task for 600 s"),
                (11, DEGRADED, HEALTHY, "recovered from: stalled: no task for 600 s"),
            ),
        ),
        id="progress-ends-the-stall",
    ),
    pytest.param(
        Case(
            ((0, heartbeat(0, metrics=work(progress_s=-10_000))), (29, TICK)),
            HEALTHY,
            "heartbeating",
            (),
            Thresholds(stall_after_s=0),
        ),
        id="stall-after-zero-turns-it-off",
    ),
    pytest.param(
        Case(
            ((0, heartbeat(0, paused=True, metrics=work(progress_s=-10_000))), (29, TICK)),
            HEALTHY,
            "paused by operator",
        ),
        id="paused-agent-is-not-stalled",
    ),
    pytest.param(
        Case(
            ((0, heartbeat(0, metrics=work(progress_s=-700))), (10, heartbeat(1, paused=True))),
            HEALTHY,
            "recovered from: stalled: no task for 700 s",
            ((10, DEGRADED, HEALTHY, "recovered from: stalled: no task for 700 s"),),
        ),
        id="pausing-a-stalled-agent",
    ),
    pytest.param(
        Case(((0, heartbeat(0, metrics=work(progress_s=10))), (5, TICK)), HEALTHY, "heartbeating"),
        id="progress-in-the-future-is-not-a-stall",
    ),
]


@pytest.mark.parametrize("case", STALLED)
def test_stalled(case: Case) -> None:
    check(case)


# -- failing: too many failed tasks in the recent window -------------------------------------------

FAILING = [
    pytest.param(
        Case(
            (BIRTH, (10, heartbeat(1, metrics=work(4, 6)))),
            DEGRADED,
            "failing: 6 of 10 recent tasks failed",
            ((10, HEALTHY, DEGRADED, "failing: 6 of 10 recent tasks failed"),),
        ),
        id="above-ratio",
    ),
    pytest.param(Case((BIRTH, (10, heartbeat(1, metrics=work(5, 5)))), HEALTHY, "heartbeating"), id="at-ratio"),
    pytest.param(
        Case((BIRTH, (10, heartbeat(1, metrics=work(0, 9)))), HEALTHY, "heartbeating"),
        id="below-min-tasks-never-failing",
    ),
    pytest.param(
        Case(
            (BIRTH, (10, heartbeat(1, metrics=work(0, 5))), (20, heartbeat(2, metrics=work(0, 5)))),
            DEGRADED,
            "failing: 10 of 10 recent tasks failed",
            ((20, HEALTHY, DEGRADED, "failing: 10 of 10 recent tasks failed"),),
        ),
        id="summed-over-the-window",
    ),
    pytest.param(
        Case(
            (BIRTH, (10, heartbeat(1, metrics=work(0, 10))), (20, heartbeat(2))),
            DEGRADED,
            "failing: 10 of 10 recent tasks failed",
            ((10, HEALTHY, DEGRADED, "failing: 10 of 10 recent tasks failed"),),
        ),
        id="heartbeat-without-metrics-keeps-the-window",
    ),
    pytest.param(
        Case(
            (
                BIRTH,
                (10, heartbeat(1, metrics=work(0, 10))),
                (20, heartbeat(2, metrics=work(4, 6))),
                (30, heartbeat(3, metrics=work(10, 0))),
            ),
            HEALTHY,
            "recovered from: failing: 16 of 20 recent tasks failed",
            (
                (10, HEALTHY, DEGRADED, "failing: 10 of 10 recent tasks failed"),
                (30, DEGRADED, HEALTHY, "recovered from: failing: 16 of 20 recent tasks failed"),
            ),
            Thresholds(failure_window=2),
        ),
        id="window-slides",
    ),
    pytest.param(
        Case(
            (BIRTH, (10, heartbeat(1, metrics=work(0, 10))), (20, heartbeat(0, session="s2", metrics=work(0, 5)))),
            HEALTHY,
            "recovered from: failing: 10 of 10 recent tasks failed",
            (
                (10, HEALTHY, DEGRADED, "failing: 10 of 10 recent tasks failed"),
                (20, DEGRADED, HEALTHY, "recovered from: failing: 10 of 10 recent tasks failed"),
            ),
        ),
        id="window-resets-on-new-session",
    ),
    pytest.param(
        Case(
            (BIRTH, (10, heartbeat(1, metrics=work(2, 1)))),
            DEGRADED,
            "failing: 1 of 3 recent tasks failed",
            ((10, HEALTHY, DEGRADED, "failing: 1 of 3 recent tasks failed"),),
            Thresholds(failure_ratio=0.25, failure_min_tasks=3),
        ),
        id="custom-ratio-and-minimum",
    ),
    pytest.param(
        Case(
            (BIRTH, (10, heartbeat(1, metrics=work(0, 10, progress_s=-700)))),
            DEGRADED,
            "stalled: no task for 710 s",
            ((10, HEALTHY, DEGRADED, "stalled: no task for 710 s"),),
        ),
        id="stall-reported-before-failing",
    ),
]


@pytest.mark.parametrize("case", FAILING)
def test_failing(case: Case) -> None:
    check(case)


@pytest.mark.parametrize("window", [0, 1, 3], ids=lambda window: f"window-{window}")
def test_failure_window_keeps_at_most_its_size(window: int) -> None:
    thresholds = Thresholds(failure_window=window, failure_min_tasks=1)
    steps: tuple[Step, ...] = (BIRTH, *((10 * n, heartbeat(n, metrics=work(0, 5))) for n in range(1, 6)))
    result = replay(steps, thresholds)
    assert len(result.view.recent_tasks) == window
    # A window of no heartbeats holds no tasks, so it can never be failing (it is not "all of history").
    assert result.view.state is (HEALTHY if window == 0 else DEGRADED)


# -- stop ------------------------------------------------------------------------------------------

STOPPED = [
    pytest.param(
        Case((BIRTH, (5, stop("deploy"))), KILLED, "stopped: deploy", ((5, HEALTHY, KILLED, "stopped: deploy"),)),
        id="stop-after-birth",
    ),
    pytest.param(
        Case(
            (BIRTH, (5, stop("killed by alice"))),
            KILLED,
            "stopped: killed by alice",
            ((5, HEALTHY, KILLED, "stopped: killed by alice"),),
        ),
        id="kill-command",
    ),
    pytest.param(
        Case(
            (BIRTH, (5, stop()), (10_000, TICK)),
            KILLED,
            "stopped: deploy",
            ((5, HEALTHY, KILLED, "stopped: deploy"),),
        ),
        id="killed-is-not-changed-by-ticks",
    ),
    pytest.param(
        Case(
            (BIRTH, (100, TICK), (110, stop())),
            KILLED,
            "stopped: deploy",
            ((100, HEALTHY, UNREACHABLE, "no heartbeat for 100 s"), (110, UNREACHABLE, KILLED, "stopped: deploy")),
        ),
        id="stop-while-unreachable",
    ),
    pytest.param(
        Case(
            (BIRTH, (5, stop()), (6, heartbeat(1))),
            KILLED,
            "stopped: deploy",
            ((5, HEALTHY, KILLED, "stopped: deploy"),),
        ),
        id="late-heartbeat-of-the-stopped-session",
    ),
    pytest.param(
        Case(
            (BIRTH, (5, stop()), (6, stop())),
            KILLED,
            "stopped: deploy",
            ((5, HEALTHY, KILLED, "stopped: deploy"),),
        ),
        id="repeated-stop",
    ),
]


@pytest.mark.parametrize("case", STOPPED)
def test_stop(case: Case) -> None:
    check(case)


# -- outcomes: duplicates, replays, stale wills ----------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "last", "outcome"),
    [
        pytest.param((BIRTH, (10, heartbeat(1))), heartbeat(1), Outcome.DUPLICATE, id="same-seq-again"),
        pytest.param((BIRTH, (10, heartbeat(2))), heartbeat(1), Outcome.LATE, id="lower-seq-first-seen"),
        pytest.param((BIRTH, (10, heartbeat(2)), (11, heartbeat(1))), heartbeat(1), Outcome.DUPLICATE, id="late-twice"),
        pytest.param((BIRTH,), heartbeat(0), Outcome.DUPLICATE, id="birth-again"),
        pytest.param((BIRTH, (10, heartbeat(1))), heartbeat(0, degraded="x"), Outcome.DUPLICATE, id="old-seq-new-body"),
        pytest.param((BIRTH, (5, will())), will(), Outcome.DUPLICATE, id="will-again"),
        pytest.param((BIRTH, (5, stop())), stop(), Outcome.DUPLICATE, id="stop-again"),
        pytest.param((BIRTH, (5, stop())), stop("other reason"), Outcome.DUPLICATE, id="second-stop-of-session"),
        pytest.param((BIRTH, (5, stop())), heartbeat(1), Outcome.LATE, id="heartbeat-after-own-stop"),
        pytest.param((BIRTH, (5, heartbeat(0, session="s2"))), will("s1"), Outcome.STALE_WILL, id="stale-will"),
        pytest.param(
            (BIRTH, (5, heartbeat(0, session="s2")), (6, will("s2"))),
            will("s1"),
            Outcome.STALE_WILL,
            id="stale-will-when-down",
        ),
        pytest.param((BIRTH, (10, heartbeat(5))), heartbeat(6), Outcome.APPLIED, id="next-seq"),
        pytest.param((BIRTH, (10, heartbeat(5))), heartbeat(0, session="s2"), Outcome.APPLIED, id="new-session-seq-0"),
        pytest.param((BIRTH, (5, stop())), heartbeat(0, session="s2"), Outcome.APPLIED, id="new-session-after-stop"),
        pytest.param((BIRTH, (100, TICK)), will(), Outcome.APPLIED, id="will-after-unreachable-by-age"),
        pytest.param((BIRTH, (5, will())), heartbeat(1), Outcome.APPLIED, id="heartbeat-after-will"),
        pytest.param((BIRTH, (5, will()), (6, RESUMED)), will(), Outcome.APPLIED, id="retained-will-while-unknown"),
    ],
)
def test_outcome(steps: tuple[Step, ...], last: HealthMessage, outcome: Outcome) -> None:
    before = replay(steps).view
    after, transition, got = apply_message(before, last, at(200), DEFAULTS)
    assert got is outcome
    if outcome is Outcome.LATE:  # stored for the history; the present is untouched
        assert (after.state, after.reason, after.since, transition) == (before.state, before.reason, before.since, None)
    elif outcome is not Outcome.APPLIED:
        assert after is before  # nothing at all changed, not even a timestamp
        assert transition is None


# amqtt 0.12.1 delivers a retained message twice to a new wildcard subscriber (SPEC §2).
TWICE_AFTER = {
    "nothing-known": (),
    "healthy": (BIRTH,),
    "late": (BIRTH, (30, TICK)),
    "unreachable-by-will": (BIRTH, (5, will())),
    "killed": (BIRTH, (5, stop())),
    "unknown": (BIRTH, (5, LOST), (6, RESUMED)),
}
TWICE_MESSAGES = {
    "next-heartbeat": heartbeat(3),
    "degraded-heartbeat": heartbeat(3, degraded="x"),
    "failing-heartbeat": heartbeat(3, metrics=work(0, 20)),
    "new-session-birth": heartbeat(0, session="s2"),
    "will": will(),
    "will-of-another-session": will("s0"),
    "stop": stop(),
}


@pytest.mark.parametrize("snapshot", [False, True], ids=["live", "retained"])
@pytest.mark.parametrize("message_name", TWICE_MESSAGES)
@pytest.mark.parametrize("prefix_name", TWICE_AFTER)
def test_same_message_twice_is_applied_once(prefix_name: str, message_name: str, snapshot: bool) -> None:
    prefix, message = TWICE_AFTER[prefix_name], TWICE_MESSAGES[message_name]
    view = replay(prefix).view if prefix else None
    once, _, _ = apply_message(view, message, at(40), DEFAULTS, snapshot=snapshot)
    twice, transition, outcome = apply_message(once, message, at(40), DEFAULTS, snapshot=snapshot)
    assert outcome is not Outcome.APPLIED
    assert twice is once
    assert transition is None


# -- snapshot: retained messages at (re)subscribe restore, they never alert ------------------------


def test_transitions_from_retained_messages_are_marked_snapshot() -> None:
    result = replay(
        (
            BIRTH,
            (5, LOST),
            (6, RESUMED),
            (6, Snapshot(will())),  # died while the monitor was away: learned from the snapshot
            (10, heartbeat(0, session="s2")),  # live
            (20, Snapshot(heartbeat(1, session="s2", degraded="x"))),
            (30, Snapshot(stop(session="s2"))),
            (40, Snapshot(heartbeat(0, session="s3"))),
            (70, TICK),
        )
    )
    assert [(row[1], row[2]) for row in result.rows] == [
        (HEALTHY, UNREACHABLE),
        (UNREACHABLE, HEALTHY),
        (HEALTHY, DEGRADED),
        (DEGRADED, KILLED),
        (KILLED, HEALTHY),
        (HEALTHY, DEGRADED),
    ]
    assert [t.snapshot for t in result.transitions] == [True, False, True, True, True, False]


@pytest.mark.parametrize(
    ("steps", "retained", "received_s", "confirmed_state"),
    [
        pytest.param((BIRTH, (5, RESUMED)), heartbeat(0), 6, HEALTHY, id="healthy-restart"),
        pytest.param((BIRTH, (5, LOST), (6, RESUMED)), heartbeat(0), 7, HEALTHY, id="healthy-broker-back"),
        pytest.param(((0, heartbeat(0, degraded="slow")), (5, RESUMED)), heartbeat(0, degraded="slow"), 6, DEGRADED,
                     id="reported-degraded"),
        # Silent for degraded_after (30 s) since that heartbeat: not what was known; the clock decides.
        pytest.param((BIRTH, (29, RESUMED)), heartbeat(0), 31, None, id="silent-since"),
        pytest.param((BIRTH, (5, will()), (6, RESUMED)), heartbeat(0), 7, None, id="dead-agent"),
        pytest.param((BIRTH, (5, stop()), (6, RESUMED)), heartbeat(0), 7, None, id="stopped-agent"),
        pytest.param((BIRTH, (5, heartbeat(1)), (6, RESUMED)), heartbeat(0), 7, None, id="older-seq"),
    ],
)  # fmt: skip
def test_the_retained_copy_of_the_last_stored_heartbeat_confirms_the_known_state(
    steps: tuple[Step, ...], retained: HealthMessage, received_s: float, confirmed_state: State | None
) -> None:
    before = replay(steps).view
    assert before.state is UNKNOWN
    after, transition, outcome = apply_message(before, retained, at(received_s), DEFAULTS, snapshot=True)
    assert transition is None
    if confirmed_state is None:
        assert outcome is not Outcome.CONFIRMED and after.state is UNKNOWN
        return
    assert (outcome, after.state, after.known_state) == (Outcome.CONFIRMED, confirmed_state, None)
    assert after.since == before.since  # the same stay, not a new one
    # Silence counts from the heartbeat itself, not from the restart: a frozen agent is not given extra time.
    assert after.heard_at == before.last_heartbeat_at
    _, transition = tick(after, at(30), DEFAULTS)
    if confirmed_state is HEALTHY:
        assert transition is not None
        assert (transition.to_state, transition.reason) == (DEGRADED, "no heartbeat for 30 s")
    # A live copy (a replay of the same seq) confirms nothing.
    _, _, live = apply_message(before, retained, at(received_s), DEFAULTS)
    assert live is Outcome.DUPLICATE


def test_snapshot_first_sight_is_no_transition() -> None:
    for message in (heartbeat(0), will(), stop()):
        _, transition, outcome = apply_message(None, message, NOW, DEFAULTS, snapshot=True)
        assert (transition, outcome) == (None, Outcome.APPLIED)


# -- unknown: the monitor itself lost the broker or just (re)started -------------------------------

UNKNOWN_CASES = [
    pytest.param(Case((BIRTH, (5, LOST)), UNKNOWN, "monitor lost the broker"), id="broker-lost"),
    pytest.param(Case((BIRTH, (5, RESUMED)), UNKNOWN, "monitor restarted"), id="listening-resumed"),
    pytest.param(Case((BIRTH, (5, LOST), (6, LOST)), UNKNOWN, "monitor lost the broker"), id="broker-lost-twice"),
    pytest.param(Case((BIRTH, (5, LOST), (6, RESUMED)), UNKNOWN, "monitor restarted"), id="lost-then-resumed"),
    pytest.param(
        Case(
            (BIRTH, (5, will()), (6, LOST), (7, RESUMED)),
            UNKNOWN,
            "monitor restarted",
            ((5, HEALTHY, UNREACHABLE, WILL_REASON),),
        ),
        id="unreachable-becomes-unknown",
    ),
    pytest.param(
        Case((BIRTH, (5, LOST), (6, RESUMED), (7, heartbeat(1))), HEALTHY, "heartbeating"),
        id="same-truth-healthy",
    ),
    pytest.param(
        Case(
            ((0, heartbeat(0, degraded="x")), (5, LOST), (6, RESUMED), (7, heartbeat(1, degraded="x"))),
            DEGRADED,
            "reported: x",
        ),
        id="same-truth-degraded",
    ),
    pytest.param(
        Case(
            (BIRTH, (5, LOST), (6, RESUMED), (7, heartbeat(1, degraded="x"))),
            DEGRADED,
            "reported: x",
            ((7, HEALTHY, DEGRADED, "reported: x"),),
        ),
        id="different-truth-degraded",
    ),
    pytest.param(
        Case(
            ((0, heartbeat(0, degraded="x")), (5, RESUMED), (6, heartbeat(1))),
            HEALTHY,
            "recovered from: reported: x",
            ((6, DEGRADED, HEALTHY, "recovered from: reported: x"),),
        ),
        id="different-truth-healthy",
    ),
    pytest.param(
        Case(
            (BIRTH, (5, RESUMED), (5, Snapshot(will()))),
            UNREACHABLE,
            WILL_REASON,
            ((5, HEALTHY, UNREACHABLE, WILL_REASON),),
        ),
        id="truth-is-a-will",
    ),
    pytest.param(
        Case(
            (BIRTH, (5, RESUMED), (5, Snapshot(stop()))),
            KILLED,
            "stopped: deploy",
            ((5, HEALTHY, KILLED, "stopped: deploy"),),
        ),
        id="truth-is-a-stop",
    ),
    pytest.param(
        Case(
            (BIRTH, (1, stop()), (5, RESUMED), (6, heartbeat(0, session="s2"))),
            HEALTHY,
            "recovered: new session",
            ((1, HEALTHY, KILLED, "stopped: deploy"), (6, KILLED, HEALTHY, "recovered: new session")),
        ),
        id="truth-is-a-new-session",
    ),
    pytest.param(
        Case(
            (BIRTH, (1, will()), (5, RESUMED), (5, Snapshot(will())), (5, Snapshot(will()))),
            UNREACHABLE,
            WILL_REASON,
            ((1, HEALTHY, UNREACHABLE, WILL_REASON),),
        ),
        id="retained-will-delivered-twice",
    ),
    pytest.param(
        Case(
            (BIRTH, (1, stop()), (5, RESUMED), (5, Snapshot(stop()))),
            KILLED,
            "stopped: deploy",
            ((1, HEALTHY, KILLED, "stopped: deploy"),),
        ),
        id="retained-stop-again",
    ),
    pytest.param(
        # Nothing sent since and no will: as it was, judged from when that heartbeat arrived.
        Case((BIRTH, (5, RESUMED), (5, Snapshot(heartbeat(0)))), HEALTHY, "heartbeating"),
        id="already-seen-retained-heartbeat-confirms-what-was-known",
    ),
    pytest.param(
        Case((BIRTH, (5, RESUMED), (5, heartbeat(0))), UNKNOWN, "monitor restarted"),
        id="already-seen-live-heartbeat-proves-nothing",
    ),
    pytest.param(
        Case(
            (BIRTH, (1, stop()), (5, RESUMED), (6, heartbeat(1))),
            UNKNOWN,
            "monitor restarted",
            ((1, HEALTHY, KILLED, "stopped: deploy"),),
        ),
        id="heartbeat-after-own-stop-while-unknown",
    ),
    pytest.param(
        Case((BIRTH, (100, RESUMED), (129, TICK)), UNKNOWN, "monitor restarted"),
        id="tick-within-grace-stays-unknown",
    ),
    pytest.param(
        Case((BIRTH, (5, LOST), (500, RESUMED), (529, TICK)), UNKNOWN, "monitor restarted"),
        id="grace-counts-from-resume-not-last-heartbeat",
    ),
    pytest.param(
        Case(
            (BIRTH, (100, RESUMED), (130, TICK)),
            DEGRADED,
            "no heartbeat for 30 s",
            ((130, HEALTHY, DEGRADED, "no heartbeat for 30 s"),),
        ),
        id="tick-after-grace-live-agent-degraded",
    ),
    pytest.param(
        Case(
            (BIRTH, (100, RESUMED), (200, TICK)),
            UNREACHABLE,
            "no heartbeat for 100 s",
            ((200, HEALTHY, UNREACHABLE, "no heartbeat for 100 s"),),
        ),
        id="tick-long-after-grace-unreachable",
    ),
    pytest.param(
        Case(
            ((0, heartbeat(0, degraded="x")), (100, RESUMED), (130, TICK)),
            DEGRADED,
            "no heartbeat for 30 s",
        ),
        id="tick-after-grace-known-degraded-no-transition",
    ),
    pytest.param(
        Case(
            (BIRTH, (5, will()), (10, RESUMED), (40, TICK)),
            UNREACHABLE,
            WILL_REASON,
            ((5, HEALTHY, UNREACHABLE, WILL_REASON),),
        ),
        id="tick-after-grace-dead-agent-restored-silently",
    ),
    pytest.param(
        Case(
            (BIRTH, (5, stop()), (10, LOST), (11, RESUMED), (41, TICK)),
            KILLED,
            "stopped: deploy",
            ((5, HEALTHY, KILLED, "stopped: deploy"),),
        ),
        id="tick-after-grace-killed-agent-restored-silently",
    ),
    pytest.param(
        Case(
            (BIRTH, (5, stop()), (10, RESUMED), (39, TICK)),
            UNKNOWN,
            "monitor restarted",
            ((5, HEALTHY, KILLED, "stopped: deploy"),),
        ),
        id="killed-agent-within-grace-stays-unknown",
    ),
    pytest.param(
        Case(
            (BIRTH, (100, TICK), (110, RESUMED), (111, heartbeat(0, session="s2"))),
            HEALTHY,
            "recovered: new session",
            (
                (100, HEALTHY, UNREACHABLE, "no heartbeat for 100 s"),
                (111, UNREACHABLE, HEALTHY, "recovered: new session"),
            ),
        ),
        id="known-unreachable-then-new-session",
    ),
    pytest.param(
        Case((BIRTH, (5, LOST), (10, TICK)), UNKNOWN, "monitor lost the broker"),
        id="tick-while-lost-within-degraded-after",
    ),
]


@pytest.mark.parametrize("case", UNKNOWN_CASES)
def test_unknown(case: Case) -> None:
    result = check(case)
    for transition in result.transitions:
        assert UNKNOWN not in (transition.from_state, transition.to_state)


def test_unknown_keeps_what_it_knew() -> None:
    healthy = replay((BIRTH,)).view
    lost = broker_lost(healthy, at(5))
    assert (lost.state, lost.known_state, lost.known_reason) == (UNKNOWN, HEALTHY, "heartbeating")
    assert (lost.since, lost.heard_at) == (NOW, NOW)  # losing the broker does not restart the clock
    resumed = listening_resumed(lost, at(9), "monitor reconnected to the broker")
    assert (resumed.state, resumed.reason, resumed.known_state) == (
        UNKNOWN,
        "monitor reconnected to the broker",
        HEALTHY,
    )
    assert (resumed.since, resumed.heard_at, resumed.last_heartbeat_at) == (NOW, at(9), NOW)


def test_same_truth_keeps_since_and_different_truth_moves_it() -> None:
    steps: tuple[Step, ...] = (BIRTH, (5, LOST), (6, RESUMED))
    same = replay((*steps, (7, heartbeat(1))))
    assert (same.view.since, same.view.known_state, same.view.known_reason) == (NOW, None, None)
    different = replay((*steps, (7, heartbeat(1, degraded="x"))))
    assert (different.view.since, different.view.known_state) == (at(7), None)


def test_restored_dead_agent_keeps_since() -> None:
    result = replay((BIRTH, (5, will()), (10, RESUMED), (40, TICK)))
    assert (result.view.since, result.view.known_state, result.view.known_reason) == (at(5), None, None)


# -- the protocol boundary -------------------------------------------------------------------------


def test_parsed_payload_with_naive_progress_time_cannot_crash_the_state_machine() -> None:
    payload = (
        b'{"agent":"a","kind":"heartbeat","status":"healthy","session":"s1","seq":0,'
        b'"sent_at":"2026-11-29T12:00:00Z","interval_s":10,"metrics":{"last_progress_at":"2026-11-29T11:00:00"}}'
    )
    with contextlib.suppress(ProtocolError):  # rejecting it at the boundary is a fine answer too
        apply_message(None, parse_health("agents/a/health", payload), NOW, DEFAULTS)


# -- properties over random fleets -----------------------------------------------------------------

AGENTS = ("a", "b", "c")
SESSIONS = ("s1", "s2", "s3")
THRESHOLD_CHOICES = (
    Thresholds(),
    Thresholds(degraded_after_s=15, unreachable_after_s=40),
    Thresholds(stall_after_s=0),
    Thresholds(stall_after_s=60, failure_window=3, failure_min_tasks=4, failure_ratio=0.3),
    Thresholds(unreachable_after_s=10),  # clamped up to degraded_after
)


@dataclass(frozen=True)
class Beat:
    agent: str
    session: str
    seq: int
    degraded: str | None
    paused: bool
    tasks: tuple[int, int] | None  # (ok, failed) when the heartbeat carries metrics
    progress_ago_s: int | None  # last task progress, seconds before it is sent
    snapshot: bool


@dataclass(frozen=True)
class Will:
    agent: str
    session: str
    snapshot: bool


@dataclass(frozen=True)
class Stop:
    agent: str
    session: str
    snapshot: bool


Op = tuple[int, Beat | Will | Stop | Event]  # seconds after the previous op, what happens


def _ops(agents: tuple[str, ...]) -> st.SearchStrategy[Op]:
    agent, snapshot = st.sampled_from(agents), st.booleans()
    session = st.sampled_from(SESSIONS[:1] * 3 + SESSIONS)  # mostly the same session, sometimes a restart
    beat = st.builds(
        Beat,
        agent=agent,
        session=session,
        seq=st.integers(0, 12),
        degraded=st.none() | st.sampled_from(["slow", "downstream timeout"]),
        paused=st.booleans(),
        tasks=st.none() | st.tuples(st.integers(0, 8), st.integers(0, 8)),
        progress_ago_s=st.none() | st.integers(0, 900),
        snapshot=snapshot,
    )
    what = st.one_of(
        beat,
        beat,  # heartbeats are most of the traffic
        st.builds(Will, agent=agent, session=session, snapshot=snapshot),
        st.builds(Stop, agent=agent, session=session, snapshot=snapshot),
        st.just(TICK),
        st.just(TICK),
        st.sampled_from(Event),
    )
    step_s = st.one_of(st.integers(0, 12), st.integers(0, 150))  # on time, or late enough to matter
    return st.tuples(step_s, what)


@dataclass(frozen=True)
class Plan:
    """A random fleet: thresholds (agent "b" has its own), each agent's interval, and what happens."""

    policy: ThresholdPolicy
    intervals: dict[str, float]
    ops: list[Op]


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    agents = AGENTS[: draw(st.integers(1, 3))]
    choice = st.sampled_from(THRESHOLD_CHOICES)
    policy = ThresholdPolicy(default=draw(choice), overrides=(("b", draw(choice)),))
    intervals = {agent: draw(st.sampled_from([5.0, 10.0, 30.0])) for agent in agents}
    return Plan(policy, intervals, draw(st.lists(_ops(agents), min_size=3, max_size=50)))


def known_state(view: AgentView) -> State | None:
    """What the monitor last knew for sure about the agent (its state, or what it was before `unknown`)."""
    return view.known_state if view.state is UNKNOWN else view.state


@dataclass
class Fleet:
    """Runs a plan the way the monitor's core does, recording everything the properties look at."""

    plan: Plan
    now: datetime = NOW
    views: dict[str, AgentView] = field(default_factory=dict)
    history: dict[str, list[Transition]] = field(default_factory=dict)
    # After every op: (when, the state the monitor knew), per agent, to check the history against.
    timeline: dict[str, list[tuple[datetime, State | None]]] = field(default_factory=dict)
    # (transition, what caused it): "tick", "message" or "snapshot"
    causes: list[tuple[Transition, str]] = field(default_factory=list)
    # (outcome of the first delivery, outcome of the second, view unchanged by the second, its transition)
    second_deliveries: list[tuple[Outcome, Outcome, bool, Transition | None]] = field(default_factory=list)
    # (view unchanged by a second tick at the same instant, its transition)
    second_ticks: list[tuple[bool, Transition | None]] = field(default_factory=list)

    def message(self, op: Beat | Will | Stop) -> HealthMessage:
        common = {
            "agent": op.agent,
            "session": op.session,
            "sent_at": self.now,
            "interval_s": self.plan.intervals[op.agent],
        }
        if isinstance(op, Will):
            return HealthMessage(kind=Kind.WILL, **common)
        if isinstance(op, Stop):
            return HealthMessage(kind=Kind.STOP, reason="deploy", **common)
        metrics = None
        if op.tasks is not None or op.progress_ago_s is not None:
            ok, failed = op.tasks or (0, 0)
            progress_at = None if op.progress_ago_s is None else self.now - timedelta(seconds=op.progress_ago_s)
            metrics = Metrics(ok=ok, failed=failed, last_progress_at=progress_at)
        status = ReportedStatus.HEALTHY if op.degraded is None else ReportedStatus.DEGRADED
        return HealthMessage(
            kind=Kind.HEARTBEAT,
            seq=op.seq,
            status=status,
            reason=op.degraded,
            paused=op.paused,
            metrics=metrics,
            **common,
        )

    def record(self, transition: Transition | None, cause: str) -> None:
        if transition is not None:
            self.history.setdefault(transition.agent, []).append(transition)
            self.causes.append((transition, cause))

    def tick_all(self) -> None:
        for agent, view in list(self.views.items()):
            thresholds = self.plan.policy.for_agent(agent)
            self.views[agent], transition = tick(view, self.now, thresholds)
            self.record(transition, "tick")
            again, again_transition = tick(self.views[agent], self.now, thresholds)
            self.second_ticks.append((again is self.views[agent], again_transition))

    def deliver(self, op: Beat | Will | Stop) -> None:
        message, thresholds = self.message(op), self.plan.policy.for_agent(op.agent)
        view, transition, first = apply_message(
            self.views.get(op.agent), message, self.now, thresholds, snapshot=op.snapshot
        )
        self.views[op.agent] = view
        self.record(transition, "snapshot" if op.snapshot else "message")
        # amqtt's second copy of a retained message, or a QoS 1 redelivery: straight after the first.
        again, again_transition, second = apply_message(view, message, self.now, thresholds, snapshot=op.snapshot)
        self.second_deliveries.append((first, second, again is view, again_transition))

    def run(self) -> Fleet:
        for step_s, what in self.plan.ops:
            self.now += timedelta(seconds=step_s)
            if what is TICK:
                self.tick_all()
            elif what is LOST:
                self.views = {agent: broker_lost(view, self.now) for agent, view in self.views.items()}
            elif what is RESUMED:
                self.views = {agent: listening_resumed(view, self.now) for agent, view in self.views.items()}
            else:
                assert not isinstance(what, Event)
                self.deliver(what)
            for agent, view in self.views.items():
                self.timeline.setdefault(agent, []).append((self.now, known_state(view)))
        return self


def time_in_state(stays: list[tuple[datetime, State | None]], until: datetime) -> dict[State | None, float]:
    """Seconds spent in each state, given when each stay began (each lasts until the next one, the last `until`)."""
    totals: Counter[State | None] = Counter()
    for (began, state), ended in zip(stays, [began for began, _ in stays[1:]] + [until], strict=True):
        assert ended >= began
        totals[state] += (ended - began).total_seconds()
    return {state: seconds for state, seconds in totals.items() if seconds}


# Two properties over the same kind of random fleet (generating fleets is what costs time here).


@settings(max_examples=300, deadline=None)
@given(plans())
def test_history_is_a_consistent_chain_and_outages_add_up(plan: Plan) -> None:
    fleet = Fleet(plan).run()
    for agent, transitions in fleet.history.items():
        for transition in transitions:
            assert transition.from_state is not transition.to_state  # (1) never a transition to the same state
            assert UNKNOWN not in (transition.from_state, transition.to_state)  # (2) never to or from unknown
        for previous, following in itertools.pairwise(transitions):
            assert following.from_state is previous.to_state  # (3) a chain, no silent jumps
            assert following.at >= previous.at
        # The view agrees with its own history: the state the monitor knows is the last one recorded,
        # and it has held since that transition (so `since` and the `transitions` table tell one story).
        view = fleet.views[agent]
        assert known_state(view) is transitions[-1].to_state
        assert view.since == transitions[-1].at

        # (4) From the transitions alone: every moment from the first transition to the end is in
        # exactly one state, so the stays add up to the whole span and none is negative...
        start = transitions[0].at
        from_history = time_in_state([(t.at, t.to_state) for t in transitions], fleet.now)
        assert sum(from_history.values()) == pytest.approx((fleet.now - start).total_seconds())
        assert UNKNOWN not in from_history  # an outage of the monitor is nobody's outage
        # ...and they are the time the monitor really believed each state, observed after every op.
        observed = [(when, state) for when, state in fleet.timeline[agent] if when >= start]
        assert from_history == pytest.approx(time_in_state(observed, fleet.now))


@settings(max_examples=300, deadline=None)
@given(plans())
def test_redelivery_is_a_no_op_and_time_alone_never_heals(plan: Plan) -> None:
    fleet = Fleet(plan).run()
    for first, second, unchanged, transition in fleet.second_deliveries:
        # (5) Applying any message twice in a row is one application: the second is not news.
        if first in (Outcome.STALE_WILL, Outcome.STALE_SESSION):
            assert second is first
        else:
            assert second in (Outcome.DUPLICATE, Outcome.STALE_WILL)  # a will twice after a stop is stale twice
        assert unchanged
        assert transition is None
    for transition, cause in fleet.causes:
        if cause == "tick":
            assert transition.to_state in (DEGRADED, UNREACHABLE)  # recovery needs a message
        assert transition.snapshot is (cause == "snapshot")  # only retained messages are snapshot news
    for unchanged, transition in fleet.second_ticks:
        assert unchanged  # a second tick at the same instant changes nothing
        assert transition is None


# -- replaced sessions, deaths after a stop, clock skew ---------------------------------------------


def test_late_messages_of_a_replaced_session_cannot_make_it_current_again() -> None:
    # paho resends unacknowledged QoS 1 messages after reconnecting: s1's heartbeat may land after s2's birth.
    result = replay(((0, heartbeat(0)), (1, will()), (2, heartbeat(0, session="s2")), (3, heartbeat(5)), (4, stop())))
    assert result.outcomes[-2:] == [Outcome.STALE_SESSION, Outcome.STALE_SESSION]
    assert result.view.session == "s2" and result.view.state is HEALTHY
    # ...so s2's own will is still believed at once.
    after = replay(((0, heartbeat(0)), (2, heartbeat(0, session="s2")), (3, heartbeat(5)), (4, will("s2"))))
    assert after.view.state is UNREACHABLE and after.outcomes[-1] is Outcome.APPLIED


def test_a_will_after_the_sessions_own_stop_does_not_turn_killed_into_unreachable() -> None:
    result = replay(((0, heartbeat(0)), (1, stop()), (1.01, will())))
    assert result.view.state is KILLED and result.outcomes[-1] is Outcome.STALE_WILL
    assert result.rows == ((1, HEALTHY, KILLED, "stopped: deploy"),)


def test_stall_is_judged_without_clock_skew_between_agent_and_monitor() -> None:
    # The agent's clock is an hour behind the monitor's; its last task was 10 s before its heartbeat.
    skewed = heartbeat(0, interval_s=300, metrics=work(progress_s=-3600 - 10)).model_copy(update={"sent_at": at(-3600)})
    view, transition, _ = apply_message(None, skewed, at(0), DEFAULTS)
    assert view.state is HEALTHY and transition is None
    view, transition = tick(view, at(589), DEFAULTS)
    assert view.state is HEALTHY
    view, transition = tick(view, at(590), DEFAULTS)
    assert view.state is DEGRADED and view.reason == "stalled: no task for 600 s"


@pytest.mark.parametrize(
    "settings",
    [{"degraded_after_s": 0}, {"unreachable_after_s": -1}, {"stall_after_s": -5}, {"failure_ratio": 1.5}],
)
def test_nonsense_thresholds_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Thresholds(**settings)  # type: ignore[arg-type]


# -- ticking only at next_check_at is the same as ticking all the time -------------------------------


def _scripted_actions() -> st.SearchStrategy[list[tuple[float, Action]]]:
    """Messages and monitor events of one agent at increasing times, with gaps long enough to go stale."""
    action = st.one_of(
        st.builds(
            lambda seq, degraded, paused, progress: heartbeat(
                seq, degraded=degraded, paused=paused, metrics=work(ok=1, progress_s=progress)
            ),
            st.integers(0, 40),
            st.sampled_from([None, None, None, "slow downstream"]),
            st.booleans(),
            st.one_of(st.none(), st.floats(-900, 900)),
        ),
        st.just(will()),
        st.just(stop()),
        st.sampled_from([LOST, RESUMED]),
    )
    return st.lists(st.tuples(st.floats(0.1, 400.0), action), min_size=1, max_size=12)


def _run(steps: list[tuple[float, Action]], thresholds: Thresholds, dense: bool, end_s: float) -> list[Row]:
    """Apply `steps`; tick every second and before each event (dense), or only at next_check_at
    (scheduled, up to and including an event's instant, as the monitor does); transitions as rows."""
    view: AgentView | None = None
    rows: list[Row] = []
    clock, listening = 0.0, True
    due: datetime | None = None

    def record(transition: Transition | None) -> None:
        if transition is not None:
            rows.append(((transition.at - NOW).total_seconds(), transition.from_state, transition.to_state, ""))

    def advance(until_s: float) -> None:
        nonlocal view, due
        if view is None or not listening:
            return
        if dense:  # every whole second, and the instant of the next event
            second = math.floor(clock) + 1.0
            for moment in [*range(int(second), math.ceil(until_s)), until_s]:
                view, transition = tick(view, at(moment), thresholds)
                record(transition)
            return
        while due is not None and due <= at(until_s):
            ticked, transition = tick(view, due, thresholds)
            record(transition)
            # The monitor's guard: a tick that changed nothing (a deadline a float's ulp early) retries 1 ms on.
            due = next_check_at(ticked, thresholds) if ticked is not view else due + timedelta(milliseconds=1)
            view = ticked

    for gap_s, action in [*steps, (end_s, TICK)]:
        advance(clock + gap_s)
        clock += gap_s
        now = at(clock)
        before = view
        if isinstance(action, Event):
            if view is None or action is TICK:
                continue
            if action is LOST:
                view, listening = broker_lost(view, now), False
            else:
                view, listening = listening_resumed(view, now), True
        elif listening:
            message = action.model_copy(update={"sent_at": now})
            view, transition, _ = apply_message(view, message, now, thresholds)
            record(transition)
        if view is not None and view is not before:  # as the monitor does: reschedule what changed
            due = next_check_at(view, thresholds)
    return rows


@settings(max_examples=300, deadline=None)
@given(steps=_scripted_actions(), stall_s=st.sampled_from([0.0, 45.0, 600.0]))
def test_ticking_at_next_check_at_sees_every_transition_of_ticking_always(
    steps: list[tuple[float, Action]], stall_s: float
) -> None:
    thresholds = Thresholds(stall_after_s=stall_s)
    dense = _run(steps, thresholds, dense=True, end_s=600.0)
    scheduled = _run(steps, thresholds, dense=False, end_s=600.0)
    # The same changes in the same order; the scheduled one sees each at its deadline, the dense one at
    # the next whole second after it.
    assert [(old, new) for _, old, new, _ in scheduled] == [(old, new) for _, old, new, _ in dense]
    for (scheduled_s, *_), (dense_s, *_) in zip(scheduled, dense, strict=True):
        assert scheduled_s - 1e-5 <= dense_s <= scheduled_s + 1.0


def test_next_check_at_names_the_next_deadline() -> None:
    view = replay((BIRTH,)).view  # heard at 0, interval 10 s: degraded at 30 s, unreachable at 100 s
    assert next_check_at(view, DEFAULTS) == at(30)
    late, _ = tick(view, at(30), DEFAULTS)
    assert late.state is DEGRADED and next_check_at(late, DEFAULTS) == at(100)
    gone, _ = tick(late, at(100), DEFAULTS)
    assert gone.state is UNREACHABLE and next_check_at(gone, DEFAULTS) is None  # only a message brings it back
    idle = replay((BIRTH, (20, heartbeat(1, metrics=work(ok=1, progress_s=-560))))).view  # idle 580 s at 20
    assert next_check_at(idle, DEFAULTS) == at(40)  # stalled (600 s) before late (50 s)
