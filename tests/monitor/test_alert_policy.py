"""The alert policy: transitions in, notifications out; scripted tables, exact flap counts and hypothesis pairing.

A `Fleet` keeps the agents' views and feeds committed transitions to one `AlertPolicy`, the way the
monitor's shell does. Time is always `NOW + seconds`, so nothing here sleeps or touches a socket.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetpulse.monitor.alert_policy import (
    DEFAULT_RULES,
    AlertPolicy,
    AlertSettings,
    CostPolicy,
    CostUsage,
    OpenIncident,
    Rule,
    Silence,
    load_settings,
    parse_duration,
)
from fleetpulse.monitor.health import AgentView, State, Transition
from fleetpulse.monitor.notification import Event, Notification, Severity

HEALTHY, DEGRADED, UNREACHABLE, KILLED, UNKNOWN = State  # members in definition order
TRIGGER, RESOLVE, FLAPPING, REMINDER = Event.TRIGGER, Event.RESOLVE, Event.FLAPPING, Event.REMINDER
CRITICAL, WARNING, INFO = Severity.CRITICAL, Severity.WARNING, Severity.INFO

NOW = datetime(2026, 11, 29, 6, 15, 2, 123000, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """The monitor's clock, `seconds` after NOW."""
    return NOW + timedelta(seconds=seconds)


def incident_id(agent: str, seconds: float) -> str:
    stamp = at(seconds)
    return f"{agent}/{stamp:%Y%m%dT%H%M%S}.{stamp.microsecond // 1000:03d}Z"


def view(
    agent: str,
    state: State = HEALTHY,
    *,
    group: str | None = None,
    labels: dict[str, str] | None = None,
    depends_on: tuple[str, ...] = (),
) -> AgentView:
    return AgentView(
        agent=agent,
        state=state,
        reason="heartbeating",
        since=NOW,
        first_seen=NOW,
        interval_s=10.0,
        group=group,
        depends_on=depends_on,
        labels=tuple(sorted((labels or {}).items())),
    )


def reason_for(state: State) -> str:
    return {
        HEALTHY: "heartbeat resumed",
        DEGRADED: "no heartbeat for 31 s",
        UNREACHABLE: "will: connection lost",
        KILLED: "stopped: deploy",
        UNKNOWN: "monitor lost the broker",
    }[state]


class Fleet:
    """Agents' views plus one policy: moves agents, ticks, and keeps everything that was sent."""

    def __init__(self, alert_settings: AlertSettings | None = None, *views: AgentView) -> None:
        self.policy = AlertPolicy(alert_settings or AlertSettings())
        self.views: dict[str, AgentView] = {v.agent: v for v in views} or {"a": view("a")}
        self.sent: list[Notification] = []

    def batch(self, seconds: float, *moves: tuple[str, State], snapshot: bool = False) -> list[Notification]:
        """Commit one transition per (agent, state), all in one observe() call, in the order given."""
        transitions = []
        for agent, state in moves:
            before = self.views[agent]
            self.views[agent] = replace(before, state=state, reason=reason_for(state), since=at(seconds))
            transitions.append(Transition(agent, at(seconds), before.state, state, reason_for(state), snapshot))
        sent = self.policy.observe(transitions, self.views, at(seconds))
        self.sent += sent
        return sent

    def move(self, seconds: float, state: State, agent: str = "a", snapshot: bool = False) -> list[Notification]:
        return self.batch(seconds, (agent, state), snapshot=snapshot)

    def tick(self, seconds: float) -> list[Notification]:
        sent = self.policy.tick(self.views, at(seconds))
        self.sent += sent
        return sent


def brief(notifications: list[Notification]) -> list[tuple[Event, str, str, Severity]]:
    """What people would see at a glance: event, agent, state, severity."""
    return [(n.event, n.agent, n.state, n.severity) for n in notifications]


# -- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "states",
    [frozenset({KILLED}), frozenset({UNKNOWN}), frozenset({HEALTHY}), frozenset({DEGRADED, KILLED}), frozenset()],
    ids=["killed", "unknown", "healthy", "degraded-and-killed", "empty"],
)
def test_a_rule_pages_only_on_degraded_or_unreachable(states: frozenset[State]) -> None:
    with pytest.raises(ValueError, match="states"):
        Rule("r", states, CRITICAL)


def test_a_rule_accepts_state_names() -> None:
    rule = Rule("r", frozenset({"degraded"}), "critical")  # type: ignore[arg-type]
    assert rule.states == {DEGRADED} and rule.severity is CRITICAL


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({}, "per_day_usd, per_hour_usd or both"),
        ({"per_day_usd": 0.0}, "per_day_usd must be > 0"),
        ({"per_hour_usd": -1.0}, "per_hour_usd must be > 0"),
        ({"per_day_usd": 1.0, "action": "shout"}, "action must be one of alert, pause, kill"),
    ],
)
def test_cost_policy_validation(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CostPolicy("budget", **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        {"flap_count": 1},
        {"flap_count": -1},
        {"flap_window_s": 0.0},
        {"flap_stable_s": -1.0},
        {"reminder_every_s": -5.0},
    ],
)
def test_alert_settings_validation(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        AlertSettings(**changes)  # type: ignore[arg-type]


SILENCE = Silence("s1", "pay*", at(100), at(200), "maintenance", "ops")


@pytest.mark.parametrize(
    ("agent", "group", "seconds", "covered"),
    [
        ("payment-1", None, 150, True),
        ("worker", "payments", 150, True),  # by group
        ("worker", None, 150, False),
        ("Payment-1", None, 150, False),  # case-sensitive
        ("payment-1", None, 100, True),  # starts inclusive
        ("payment-1", None, 200, False),  # ends exclusive
        ("payment-1", None, 99, False),
    ],
)
def test_silence_covers_agent_or_group_while_active(
    agent: str, group: str | None, seconds: float, covered: bool
) -> None:
    assert SILENCE.covers(agent, group, at(seconds)) is covered
    assert SILENCE.active(at(seconds)) is (100 <= seconds < 200)


def test_a_silence_cannot_end_before_it_starts() -> None:
    with pytest.raises(ValueError, match="ends before it starts"):
        Silence("s", "*", at(10), at(5), "", "ops")


# -- trigger, escalate, resolve --------------------------------------------------------------------

Expected = list[tuple[Event, str, Severity]]  # event, state, severity, for agent "a"

SCRIPTS = [
    pytest.param(
        [(10, UNREACHABLE), (70, HEALTHY)],
        [(TRIGGER, "unreachable", CRITICAL), (RESOLVE, "healthy", CRITICAL)],
        id="down-and-up",
    ),
    pytest.param(
        [(10, DEGRADED), (20, UNREACHABLE), (30, DEGRADED), (40, UNREACHABLE), (50, HEALTHY)],
        [(TRIGGER, "degraded", WARNING), (TRIGGER, "unreachable", CRITICAL), (RESOLVE, "healthy", CRITICAL)],
        id="escalates-once-then-stays",
    ),
    pytest.param(
        [(10, UNREACHABLE), (20, DEGRADED), (30, HEALTHY)],
        [(TRIGGER, "unreachable", CRITICAL), (RESOLVE, "healthy", CRITICAL)],
        id="less-bad-says-nothing",
    ),
    pytest.param(
        [(10, DEGRADED), (20, KILLED)],
        [(TRIGGER, "degraded", WARNING), (RESOLVE, "killed", WARNING)],
        id="stopped-resolves",
    ),
    pytest.param(
        [(10, UNREACHABLE), (20, UNKNOWN), (30, UNREACHABLE), (40, HEALTHY)],
        [(TRIGGER, "unreachable", CRITICAL), (RESOLVE, "healthy", CRITICAL)],
        id="unknown-says-nothing",
    ),
    pytest.param([(10, KILLED), (20, UNKNOWN), (30, HEALTHY)], [], id="killed-and-unknown-never-page"),
    pytest.param(
        [(10, UNREACHABLE), (20, HEALTHY), (30, UNREACHABLE)],
        [(TRIGGER, "unreachable", CRITICAL), (RESOLVE, "healthy", CRITICAL), (TRIGGER, "unreachable", CRITICAL)],
        id="a-new-incident-after-a-resolve",
    ),
]


@pytest.mark.parametrize(("moves", "expected"), SCRIPTS)
def test_scripted_incidents(moves: list[tuple[float, State]], expected: Expected) -> None:
    fleet = Fleet()
    for seconds, state in moves:
        fleet.move(seconds, state)
    assert [(n.event, n.state, n.severity) for n in fleet.sent] == expected
    ids = [n.incident_id for n in fleet.sent]
    first = incident_id("a", moves[0][0])
    assert ids[:2] == [first] * len(ids[:2]), "escalation and resolve reuse the trigger's incident id"


def test_trigger_and_resolve_in_detail() -> None:
    fleet = Fleet()
    [trigger] = fleet.move(10, UNREACHABLE)
    assert trigger == Notification(
        event=TRIGGER,
        incident_id="a/20261129T061512.123Z",
        agent="a",
        state="unreachable",
        severity=CRITICAL,
        reason="will: connection lost",
        at=at(10),
        rule="unreachable",
    )
    assert fleet.move(11, UNREACHABLE) == [], "a repeated transition never duplicates the trigger"
    assert fleet.tick(500) == []
    [resolve] = fleet.move(95.5, HEALTHY)
    assert (resolve.event, resolve.incident_id, resolve.duration_s, resolve.at) == (
        RESOLVE,
        trigger.incident_id,
        85.5,
        at(95.5),
    )
    assert resolve.reason == "heartbeat resumed"
    assert fleet.policy.open_incidents() == []


@pytest.mark.parametrize(
    ("reason", "expected"),
    [("kill command", "stopped: kill command"), ("stopped: deploy", "stopped: deploy")],
)
def test_a_stop_resolves_with_a_stopped_reason(reason: str, expected: str) -> None:
    fleet = Fleet()
    fleet.move(10, DEGRADED)
    transition = Transition("a", at(20), DEGRADED, KILLED, reason)
    [resolve] = fleet.policy.observe([transition], {"a": view("a", KILLED)}, at(20))
    assert (resolve.event, resolve.state, resolve.reason, resolve.duration_s) == (RESOLVE, "killed", expected, 10.0)


def test_no_rule_no_incident() -> None:
    only_down = AlertSettings(rules=(Rule("down", frozenset({UNREACHABLE}), CRITICAL),))
    fleet = Fleet(only_down)
    assert fleet.move(10, DEGRADED) == []
    assert fleet.move(20, HEALTHY) == []
    assert fleet.policy.open_incidents() == []
    # An agent already degraded (no incident) that gets worse enters a rule's state: that opens one.
    fleet.move(30, DEGRADED)
    assert brief(fleet.move(40, UNREACHABLE)) == [(TRIGGER, "a", "unreachable", CRITICAL)]


def test_escalation_widens_channels_and_takes_the_new_rule() -> None:
    rules = (
        Rule("page", frozenset({UNREACHABLE}), CRITICAL, channels=("pagerduty://key",)),
        Rule("chat", frozenset({DEGRADED}), WARNING, channels=("slack://T/B/C",)),
    )
    fleet = Fleet(AlertSettings(rules=rules, notify=("mailto://ops",)))
    [first] = fleet.move(10, DEGRADED)
    [update] = fleet.move(20, UNREACHABLE)
    [resolve] = fleet.move(30, HEALTHY)
    assert (first.rule, first.channels) == ("chat", ("slack://T/B/C",))
    assert (update.rule, update.channels, update.incident_id) == (
        "page",
        ("slack://T/B/C", "pagerduty://key"),
        first.incident_id,
    )
    assert resolve.channels == update.channels


# -- rules: matching, channels, what notifications carry ------------------------------------------

MATCHING_RULES = (
    Rule("payments", frozenset({UNREACHABLE}), CRITICAL, agents="payment-*", channels=("slack://pay",)),
    Rule("batch group", frozenset({UNREACHABLE}), INFO, group="batch-*"),
    Rule("any group", frozenset({DEGRADED}), INFO, group="*"),
    Rule("team ml", frozenset({UNREACHABLE, DEGRADED}), WARNING, labels=(("team", "ml"),)),
    Rule("rest", frozenset({UNREACHABLE}), CRITICAL),
)


@pytest.mark.parametrize(
    ("agent_view", "state", "rule", "channels"),
    [
        (view("payment-1"), UNREACHABLE, "payments", ("slack://pay",)),
        (view("Payment-1"), UNREACHABLE, "rest", ("mailto://ops",)),  # fnmatchcase
        (view("w", group="batch-eu"), UNREACHABLE, "batch group", ("mailto://ops",)),
        (view("w", group="online"), UNREACHABLE, "rest", ("mailto://ops",)),
        (view("w"), DEGRADED, "any group", ("mailto://ops",)),  # no group still matches "*"
        (view("w", group="x"), DEGRADED, "any group", ("mailto://ops",)),
        (view("w", labels={"team": "ml", "env": "prod"}), UNREACHABLE, "team ml", ("mailto://ops",)),
        (view("w", labels={"team": "web"}), UNREACHABLE, "rest", ("mailto://ops",)),
        (view("payment-2", labels={"team": "ml"}), UNREACHABLE, "payments", ("slack://pay",)),  # first wins
    ],
)
def test_the_first_matching_rule_wins(
    agent_view: AgentView, state: State, rule: str, channels: tuple[str, ...]
) -> None:
    fleet = Fleet(AlertSettings(rules=MATCHING_RULES, notify=("mailto://ops",)), agent_view)
    [trigger] = fleet.move(10, state, agent=agent_view.agent)
    assert (trigger.rule, trigger.channels) == (rule, channels)


def test_no_group_rule_skips_agents_without_a_group() -> None:
    rules = (Rule("batch", frozenset({UNREACHABLE}), INFO, group="batch-*"),)
    fleet = Fleet(AlertSettings(rules=rules), view("w"))
    assert fleet.move(10, UNREACHABLE, agent="w") == []


def test_notifications_carry_group_and_labels() -> None:
    fleet = Fleet(AlertSettings(), view("w", group="workers", labels={"team": "ml"}))
    [trigger] = fleet.move(10, UNREACHABLE, agent="w")
    [resolve] = fleet.move(20, HEALTHY, agent="w")
    for notification in (trigger, resolve):
        assert (notification.group, notification.labels) == ("workers", (("team", "ml"),))


# -- snapshots and restarts ------------------------------------------------------------------------


def test_snapshot_transitions_never_trigger() -> None:
    fleet = Fleet()
    assert fleet.move(10, UNREACHABLE, snapshot=True) == []
    assert fleet.move(20, HEALTHY, snapshot=True) == []
    assert fleet.policy.open_incidents() == []


def restored_fleet(notified: bool = True, state: State = UNREACHABLE) -> tuple[Fleet, OpenIncident]:
    stored = OpenIncident(incident_id("a", -600), "a", state.value, CRITICAL, "unreachable", at(-600), notified)
    fleet = Fleet(AlertSettings(), view("a", state))
    fleet.policy.restore([stored])
    return fleet, stored


def test_restore_then_snapshot_recovery_resolves() -> None:
    fleet, stored = restored_fleet()
    assert fleet.policy.open_incidents() == [stored]
    [resolve] = fleet.move(5, HEALTHY, snapshot=True)
    assert (resolve.event, resolve.incident_id, resolve.duration_s) == (RESOLVE, stored.incident_id, 605.0)
    assert fleet.policy.open_incidents() == []


def test_restore_then_snapshot_stop_resolves() -> None:
    fleet, stored = restored_fleet()
    [resolve] = fleet.move(5, KILLED, snapshot=True)
    assert (resolve.event, resolve.incident_id, resolve.state, resolve.reason) == (
        RESOLVE,
        stored.incident_id,
        "killed",
        "stopped: deploy",
    )


def test_restore_then_still_down_stays_open_and_resolves_later() -> None:
    fleet, stored = restored_fleet()
    assert fleet.move(5, DEGRADED, snapshot=True) == []
    [resolve] = fleet.move(50, HEALTHY)
    assert resolve.incident_id == stored.incident_id


def test_restored_silenced_incident_resolves_silently() -> None:
    fleet, _ = restored_fleet(notified=False)
    assert fleet.move(5, HEALTHY, snapshot=True) == []
    assert fleet.policy.open_incidents() == []


def test_restored_incident_of_an_agent_known_healthy_resolves_on_tick() -> None:
    # The history already said healthy, so restarting produced no transition: tick() reconciles.
    fleet, stored = restored_fleet()
    fleet.views["a"] = replace(view("a"), since=at(-100))
    [resolve] = fleet.tick(5)
    assert (resolve.event, resolve.incident_id, resolve.at, resolve.duration_s) == (
        RESOLVE,
        stored.incident_id,
        at(-100),
        500.0,
    )
    assert fleet.tick(6) == []


def test_restore_waits_while_the_view_is_unknown() -> None:
    fleet, _ = restored_fleet()
    fleet.views["a"] = view("a", UNKNOWN)
    assert fleet.tick(5) == []
    assert len(fleet.policy.open_incidents()) == 1


def test_open_incidents_round_trip_through_a_restart() -> None:
    before = Fleet(AlertSettings(), view("db"), view("api", depends_on=("db",)))
    before.batch(10, ("db", UNREACHABLE), ("api", UNREACHABLE))
    stored = before.policy.open_incidents()
    assert [(i.agent, i.notified, i.root) for i in stored] == [("api", False, "db"), ("db", True, None)]

    after = Fleet(AlertSettings(), *before.views.values())
    after.policy.restore(stored)
    assert after.policy.open_incidents() == stored
    [resolve, trigger] = after.move(20, HEALTHY, agent="db")
    assert (resolve.event, resolve.agent, resolve.impacted) == (RESOLVE, "db", ("api",))
    assert (trigger.event, trigger.agent, trigger.incident_id) == (TRIGGER, "api", stored[0].incident_id)


# -- silences --------------------------------------------------------------------------------------


def silence(pattern: str, start_s: float, end_s: float) -> Silence:
    return Silence(f"silence-{pattern}", pattern, at(start_s), at(end_s), "maintenance", "ops")


def test_silenced_incident_never_notifies_even_after_the_silence_ends() -> None:
    fleet = Fleet()
    fleet.policy.set_silences([silence("a", 0, 100)])
    assert fleet.move(10, DEGRADED) == []
    assert [(i.notified, i.state) for i in fleet.policy.open_incidents()] == [(False, "degraded")]
    assert fleet.move(120, UNREACHABLE) == [], "no retro-sent trigger and no escalation"
    assert fleet.move(130, HEALTHY) == [], "no resolve for what was never triggered"
    assert brief(fleet.move(140, UNREACHABLE)) == [(TRIGGER, "a", "unreachable", CRITICAL)]


def test_silence_by_group_and_expired_silences() -> None:
    fleet = Fleet(AlertSettings(), view("w", group="batch"), view("x"))
    fleet.policy.set_silences([silence("batch", 0, 100), silence("x", -100, 5)])
    assert fleet.move(10, UNREACHABLE, agent="w") == []
    assert brief(fleet.move(10, UNREACHABLE, agent="x")) == [(TRIGGER, "x", "unreachable", CRITICAL)]


def test_a_silence_set_after_the_trigger_keeps_the_resolve() -> None:
    fleet = Fleet(AlertSettings(reminder_every_s=60))
    fleet.move(10, UNREACHABLE)
    fleet.policy.set_silences([silence("*", 20, 1000)])
    assert fleet.tick(200) == [], "reminders are quiet while silenced"
    assert brief(fleet.move(300, HEALTHY)) == [(RESOLVE, "a", "healthy", CRITICAL)]


# -- flapping --------------------------------------------------------------------------------------

FLAPPY = AlertSettings(flap_count=3, flap_window_s=600, flap_stable_s=300)


def bounce(fleet: Fleet, start_s: float, times: int, every_s: float = 100) -> None:
    """Down at start, start + every_s, ...; up again 10 s after each."""
    for n in range(times):
        fleet.move(start_s + n * every_s, UNREACHABLE)
        fleet.move(start_s + n * every_s + 10, HEALTHY)


def test_the_opening_that_reaches_flap_count_sends_flapping_instead() -> None:
    fleet = Fleet(FLAPPY)
    bounce(fleet, 0, 2)
    assert [n.event for n in fleet.sent] == [TRIGGER, RESOLVE, TRIGGER, RESOLVE]
    [flapping] = fleet.move(200, UNREACHABLE)
    assert (flapping.event, flapping.incident_id, flapping.severity) == (FLAPPING, incident_id("a", 200), CRITICAL)
    assert flapping.reason == "3 incidents within 600 s; latest: will: connection lost"
    # Held: bouncing on sends nothing, and no further incidents open.
    bounce(fleet, 210, 5, every_s=20)
    assert len(fleet.sent) == 5
    assert [i.incident_id for i in fleet.policy.open_incidents()] == [flapping.incident_id]


@pytest.mark.parametrize(
    ("flap_count", "openings", "flapping_at"),
    [
        (4, 3, None),  # default count: three bounces are not flapping
        (4, 4, 3),  # the fourth opening is
        (4, 8, 3),  # and only one FLAPPING however long it bounces
        (3, 3, 2),
        (0, 10, None),  # 0: off
    ],
)
def test_flap_counts(flap_count: int, openings: int, flapping_at: int | None) -> None:
    fleet = Fleet(replace(FLAPPY, flap_count=flap_count))
    bounce(fleet, 0, openings, every_s=50)
    events = [n.event for n in fleet.sent]
    if flapping_at is None:
        assert events == [TRIGGER, RESOLVE] * openings
    else:
        assert events == [TRIGGER, RESOLVE] * flapping_at + [FLAPPING]


def test_openings_outside_the_window_do_not_count() -> None:
    fleet = Fleet(FLAPPY)
    fleet.move(0, UNREACHABLE)
    fleet.move(10, HEALTHY)
    bounce(fleet, 601, 2)  # 601 s after the first: outside the 600 s window
    assert FLAPPING not in [n.event for n in fleet.sent]
    fleet.move(800, UNREACHABLE)  # 601, 701, 800 within 600 s: the third
    assert fleet.sent[-1].event is FLAPPING


def test_the_window_includes_its_edge() -> None:
    fleet = Fleet(FLAPPY)
    bounce(fleet, 0, 2, every_s=300)
    assert fleet.move(600, UNREACHABLE)[0].event is FLAPPING  # 0, 300, 600: exactly 600 s


def test_flapping_released_healthy_resolves() -> None:
    fleet = Fleet(FLAPPY)
    bounce(fleet, 0, 2)
    [flapping] = fleet.move(200, UNREACHABLE)
    fleet.move(250, HEALTHY)
    assert fleet.tick(549) == [], "299 s quiet is not yet stable"
    [resolve] = fleet.tick(550)
    assert (resolve.event, resolve.incident_id, resolve.state, resolve.duration_s) == (
        RESOLVE,
        flapping.incident_id,
        "healthy",
        350.0,
    )
    assert fleet.tick(2000) == [] and fleet.policy.open_incidents() == []
    # Released with a fresh count: the next bounce is an ordinary incident again.
    assert [n.event for n in fleet.move(2100, UNREACHABLE)] == [TRIGGER]


def test_flapping_released_down_triggers_the_same_incident() -> None:
    fleet = Fleet(FLAPPY)
    bounce(fleet, 0, 2)
    [flapping] = fleet.move(200, DEGRADED)
    fleet.move(220, HEALTHY)
    fleet.move(240, UNREACHABLE)
    [trigger] = fleet.tick(540)
    assert (trigger.event, trigger.incident_id, trigger.state, trigger.severity) == (
        TRIGGER,
        flapping.incident_id,
        "unreachable",
        CRITICAL,
    )
    assert trigger.reason == "settled after flapping: will: connection lost"
    [resolve] = fleet.move(900, HEALTHY)
    assert (resolve.event, resolve.incident_id) == (RESOLVE, flapping.incident_id)


def test_a_flapping_agent_that_is_stopped_resolves_on_release() -> None:
    fleet = Fleet(FLAPPY)
    bounce(fleet, 0, 2)
    fleet.move(200, UNREACHABLE)
    fleet.move(210, KILLED)
    [resolve] = fleet.tick(510)
    assert (resolve.event, resolve.state, resolve.reason) == (RESOLVE, "killed", "stopped: deploy")


def test_a_flapping_agent_is_not_released_while_unknown() -> None:
    fleet = Fleet(FLAPPY)
    bounce(fleet, 0, 2)
    fleet.move(200, UNREACHABLE)
    fleet.views["a"] = view("a", UNKNOWN)
    assert fleet.tick(1000) == []
    fleet.views["a"] = view("a", HEALTHY)
    assert [n.event for n in fleet.tick(1001)] == [RESOLVE]


# -- reminders -------------------------------------------------------------------------------------


def test_reminders_are_off_by_default() -> None:
    fleet = Fleet()
    fleet.move(10, UNREACHABLE)
    assert [fleet.tick(seconds) for seconds in (3600, 7200, 86400)] == [[], [], []]


def test_reminders_every_interval_after_the_last_notification() -> None:
    fleet = Fleet(AlertSettings(reminder_every_s=3600))
    [trigger] = fleet.move(10, DEGRADED)
    assert fleet.tick(3609) == []
    [reminder] = fleet.tick(3610)
    assert (reminder.event, reminder.incident_id, reminder.state) == (REMINDER, trigger.incident_id, "degraded")
    assert fleet.tick(5000) == []
    fleet.move(6000, UNREACHABLE)  # the escalation is a notification: the next reminder counts from it
    assert fleet.tick(7210) == []
    assert [n.event for n in fleet.tick(9600)] == [REMINDER]
    fleet.move(9700, HEALTHY)
    assert fleet.tick(20000) == []


def test_no_reminders_for_silenced_or_held_incidents() -> None:
    fleet = Fleet(replace(FLAPPY, reminder_every_s=60), view("a"), view("b"))
    fleet.policy.set_silences([silence("b", 0, 10)])
    fleet.move(5, UNREACHABLE, agent="b")
    for n in range(2):
        fleet.move(n * 20, UNREACHABLE)
        fleet.move(n * 20 + 10, HEALTHY)
    fleet.move(40, UNREACHABLE)  # flapping, held
    assert fleet.tick(200) == []


def test_restored_incidents_remind_from_the_restart() -> None:
    stored = OpenIncident(incident_id("a", -9000), "a", "unreachable", CRITICAL, "unreachable", at(-9000), True)
    fleet = Fleet(AlertSettings(reminder_every_s=3600), view("a", UNREACHABLE))
    fleet.policy.restore([stored])
    assert fleet.tick(0) == []
    assert [n.event for n in fleet.tick(3600)] == [REMINDER]


# -- dependency folding ----------------------------------------------------------------------------


def shop() -> Fleet:
    return Fleet(AlertSettings(), view("order-processor"), view("refund-agent", depends_on=("order-processor",)))


def test_same_batch_root_first_carries_impacted() -> None:
    fleet = shop()
    # The dependent arrives first in the batch; the root is still handled first.
    sent = fleet.batch(10, ("refund-agent", UNREACHABLE), ("order-processor", UNREACHABLE))
    assert brief(sent) == [(TRIGGER, "order-processor", "unreachable", CRITICAL)]
    assert sent[0].impacted == ("refund-agent",)
    assert [(i.agent, i.notified, i.root) for i in fleet.policy.open_incidents()] == [
        ("order-processor", True, None),
        ("refund-agent", False, "order-processor"),
    ]


def test_root_resolves_then_a_still_down_dependent_triggers() -> None:
    fleet = shop()
    fleet.batch(10, ("refund-agent", DEGRADED), ("order-processor", UNREACHABLE))
    resolve, trigger = fleet.move(70, HEALTHY, agent="order-processor")
    assert (resolve.event, resolve.agent, resolve.impacted, resolve.duration_s) == (
        RESOLVE,
        "order-processor",
        ("refund-agent",),
        60.0,
    )
    assert (trigger.event, trigger.agent, trigger.state, trigger.severity, trigger.at) == (
        TRIGGER,
        "refund-agent",
        "degraded",
        WARNING,
        at(70),
    )
    assert trigger.incident_id == incident_id("refund-agent", 10)
    assert brief(fleet.move(80, HEALTHY, agent="refund-agent")) == [(RESOLVE, "refund-agent", "healthy", WARNING)]


def test_a_folded_dependent_that_recovers_sends_nothing() -> None:
    fleet = shop()
    fleet.move(10, UNREACHABLE, agent="order-processor")
    assert fleet.move(20, UNREACHABLE, agent="refund-agent") == [], "a later batch folds too"
    assert fleet.move(30, HEALTHY, agent="refund-agent") == []
    [resolve] = fleet.move(40, HEALTHY, agent="order-processor")
    assert resolve.impacted == ("refund-agent",)


def test_root_and_dependent_recovering_together_send_one_resolve() -> None:
    fleet = shop()
    fleet.batch(10, ("refund-agent", UNREACHABLE), ("order-processor", UNREACHABLE))
    sent = fleet.batch(20, ("refund-agent", HEALTHY), ("order-processor", HEALTHY))
    assert brief(sent) == [(RESOLVE, "order-processor", "healthy", CRITICAL)]


def test_an_unfolded_dependent_under_a_silence_stays_quiet() -> None:
    fleet = shop()
    fleet.batch(10, ("refund-agent", UNREACHABLE), ("order-processor", UNREACHABLE))
    fleet.policy.set_silences([silence("refund-*", 50, 500)])
    assert brief(fleet.move(60, HEALTHY, agent="order-processor")) == [
        (RESOLVE, "order-processor", "healthy", CRITICAL)
    ]
    assert [(i.agent, i.notified, i.root) for i in fleet.policy.open_incidents()] == [("refund-agent", False, None)]
    assert fleet.move(70, HEALTHY, agent="refund-agent") == []


def test_reminders_of_the_root_carry_impacted() -> None:
    fleet = Fleet(
        AlertSettings(reminder_every_s=60),
        view("order-processor"),
        view("refund-agent", depends_on=("order-processor",)),
    )
    fleet.move(10, UNREACHABLE, agent="order-processor")
    fleet.move(20, DEGRADED, agent="refund-agent")
    [reminder] = fleet.tick(70)
    assert (reminder.event, reminder.agent, reminder.impacted) == (REMINDER, "order-processor", ("refund-agent",))


def test_folding_is_transitive_and_goes_to_the_announced_root() -> None:
    fleet = Fleet(AlertSettings(), view("db"), view("api", depends_on=("db",)), view("ui", depends_on=("api",)))
    fleet.move(10, UNREACHABLE, agent="db")
    fleet.move(20, UNREACHABLE, agent="api")
    assert fleet.move(30, DEGRADED, agent="ui") == []
    assert {i.agent: i.root for i in fleet.policy.open_incidents()} == {"db": None, "api": "db", "ui": "db"}
    sent = fleet.move(40, HEALTHY, agent="db")
    # api is down on its own now; ui is still down because of api, so it folds into api instead.
    assert [(n.event, n.agent, n.impacted) for n in sent] == [
        (RESOLVE, "db", ("api", "ui")),
        (TRIGGER, "api", ("ui",)),
    ]


def test_folding_through_a_healthy_middle_agent() -> None:
    fleet = Fleet(AlertSettings(), view("db"), view("api", depends_on=("db",)), view("ui", depends_on=("api",)))
    fleet.move(10, UNREACHABLE, agent="db")
    assert fleet.move(20, UNREACHABLE, agent="ui") == []
    assert fleet.policy.open_incidents()[-1].root == "db"


@pytest.mark.parametrize(
    "depends",
    [{"a": ("b",), "b": ("a",)}, {"a": ("a",), "b": ("b",)}, {"a": ("b",), "b": ("c",), "c": ("a",)}],
    ids=["two-cycle", "self", "three-cycle"],
)
def test_cycles_in_depends_on_terminate_and_fold_once(depends: dict[str, tuple[str, ...]]) -> None:
    agents = sorted({*depends, *(d for deps in depends.values() for d in deps)})
    fleet = Fleet(AlertSettings(), *(view(a, depends_on=depends.get(a, ())) for a in agents))
    sent = fleet.batch(10, *((a, UNREACHABLE) for a in agents))
    triggers = [n for n in sent if n.event is TRIGGER]
    folded = sum(1 for i in fleet.policy.open_incidents() if i.root is not None)
    assert len(triggers) + folded == len(agents)
    assert sorted(a for n in triggers for a in (n.agent, *n.impacted)) == agents
    sent = fleet.batch(20, *((a, HEALTHY) for a in agents))
    assert [n.event for n in sent] == [RESOLVE] * len(triggers)


def test_no_folding_into_a_dependency_without_an_open_incident() -> None:
    only_down = AlertSettings(rules=(Rule("down", frozenset({UNREACHABLE}), CRITICAL),))
    fleet = Fleet(only_down, view("db"), view("api", depends_on=("db",)))
    sent = fleet.batch(10, ("db", DEGRADED), ("api", UNREACHABLE))  # db degraded: no rule, no incident
    assert brief(sent) == [(TRIGGER, "api", "unreachable", CRITICAL)]


# -- the monitor's own broker ----------------------------------------------------------------------


def test_broker_lost_and_back() -> None:
    policy = AlertPolicy(AlertSettings(notify=("mailto://ops",)), monitor_id="eu-1")
    [trigger] = policy.broker_lost(at(0), "connection refused")
    assert (trigger.event, trigger.agent, trigger.state, trigger.severity, trigger.reason, trigger.channels) == (
        TRIGGER,
        "monitor:eu-1",
        "lost",
        CRITICAL,
        "connection refused",
        ("mailto://ops",),
    )
    assert trigger.incident_id == incident_id("monitor:eu-1", 0)
    assert policy.broker_lost(at(5), "still refused") == []
    [resolve] = policy.broker_back(at(42))
    assert (resolve.event, resolve.incident_id, resolve.duration_s) == (RESOLVE, trigger.incident_id, 42.0)
    assert policy.broker_back(at(50)) == []
    assert policy.open_incidents() == []


def test_the_lost_broker_incident_survives_a_restart_and_pauses_agent_reminders() -> None:
    fleet = Fleet(AlertSettings(reminder_every_s=60))
    fleet.move(0, UNREACHABLE)
    fleet.policy.broker_lost(at(10), "gone")
    assert [n.agent for n in fleet.tick(70)] == ["monitor:default"], "no guesses about agents while blind"

    restarted = AlertPolicy(AlertSettings())
    restarted.restore(fleet.policy.open_incidents())
    [resolve] = restarted.broker_back(at(100))
    assert (resolve.agent, resolve.duration_s) == ("monitor:default", 90.0)


def test_a_silence_quiets_the_lost_broker_too() -> None:
    policy = AlertPolicy(AlertSettings())
    policy.set_silences([silence("monitor:*", 0, 100)])
    assert policy.broker_lost(at(10), "broker upgrade") == []
    assert [i.notified for i in policy.open_incidents()] == [False]
    assert policy.broker_back(at(20)) == []


def test_agents_going_unknown_never_alert() -> None:
    fleet = Fleet(AlertSettings(), view("a"), view("b"))
    assert fleet.batch(10, ("a", UNKNOWN), ("b", UNKNOWN)) == []


# -- costs -----------------------------------------------------------------------------------------

BUDGETS = AlertSettings(
    notify=("mailto://finance",),
    cost_policies=(
        CostPolicy("gpu team", group="gpu", per_hour_usd=50, action="kill"),
        CostPolicy("llm budget", per_day_usd=10, per_hour_usd=2, action="pause"),
    ),
)


def usage(day_usd: float, hour_usd: float, day_offset: int = 0, hour: int = 6) -> CostUsage:
    day = date(2026, 11, 29) + timedelta(days=day_offset)
    return CostUsage(day, day_usd, datetime(day.year, day.month, day.day, hour, tzinfo=UTC), hour_usd)


def test_cost_breaches_once_per_period_and_again_the_next() -> None:
    policy = AlertPolicy(BUDGETS)
    views = {"a": view("a", group="llm", labels={"team": "ml"})}
    [breach] = policy.costs({"a": usage(12.3, 1.0)}, views, at(0))
    assert (breach.agent, breach.policy, breach.period, breach.spent_usd, breach.limit_usd, breach.action) == (
        "a",
        "llm budget",
        "day",
        12.3,
        10.0,
        "pause",
    )
    notification = breach.notification
    assert (notification.event, notification.severity, notification.incident_id, notification.reason) == (
        TRIGGER,
        WARNING,
        "cost/a/day/2026-11-29",
        "cost today $12.30 over the $10.00 daily limit (action: pause)",
    )
    assert (notification.rule, notification.channels, notification.group, notification.labels) == (
        "llm budget",
        ("mailto://finance",),
        "llm",
        (("team", "ml"),),
    )
    assert policy.costs({"a": usage(15.0, 1.0)}, views, at(60)) == [], "the same day: reported already"
    [hourly] = policy.costs({"a": usage(15.0, 2.5)}, views, at(120))
    assert (hourly.period, hourly.notification.incident_id, hourly.notification.reason) == (
        "hour",
        "cost/a/hour/2026-11-29T06:00Z",
        "cost this hour $2.50 over the $2.00 hourly limit (action: pause)",
    )
    assert policy.costs({"a": usage(16.0, 3.0)}, views, at(180)) == []
    assert [b.period for b in policy.costs({"a": usage(16.0, 2.1, hour=7)}, views, at(3600))] == ["hour"]
    assert [b.period for b in policy.costs({"a": usage(10.5, 2.1, day_offset=1)}, views, at(86400))] == [
        "day",
        "hour",
    ]


@pytest.mark.parametrize(
    ("agent_view", "spent", "periods"),
    [
        (view("a"), usage(9.99, 1.99), []),
        (view("a"), usage(10.0, 2.0), []),  # at the limit is not over it
        (view("a"), usage(11, 3), ["day", "hour"]),
        (view("g", group="gpu"), usage(500, 3), []),  # first matching policy: the gpu one, hourly only
        (view("g", group="gpu"), usage(500, 51), ["hour"]),
    ],
)
def test_cost_first_matching_policy(agent_view: AgentView, spent: CostUsage, periods: list[str]) -> None:
    breaches = AlertPolicy(BUDGETS).costs({agent_view.agent: spent}, {agent_view.agent: agent_view}, at(0))
    assert [b.period for b in breaches] == periods


def test_no_cost_policy_no_breach() -> None:
    assert AlertPolicy(AlertSettings()).costs({"a": usage(1e6, 1e6)}, {}, at(0)) == []


# -- the rules file --------------------------------------------------------------------------------

RULES_FILE = """
[defaults]
notify = ["https://hooks.example.com/fleet"]
flap_count = 5
flap_window = "10m"
flap_stable = "5m"
reminder_every = "1h"

[[rule]]
name = "payments down"
agents = "payment-*"
group = "payments"
labels = { team = "payments" }
states = ["unreachable", "degraded"]
severity = "critical"
notify = ["slack://T/B/C"]

[[rule]]
name = "rest"
states = ["unreachable"]
severity = "warning"

[[cost]]
name = "llm budget"
agents = "*"
per_day_usd = 10
per_hour_usd = 2.5
action = "pause"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "alerts.toml"
    path.write_text(text)
    return path


def test_load_settings_reads_every_key(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, RULES_FILE)) == AlertSettings(
        rules=(
            Rule(
                "payments down",
                frozenset({UNREACHABLE, DEGRADED}),
                CRITICAL,
                agents="payment-*",
                group="payments",
                labels=(("team", "payments"),),
                channels=("slack://T/B/C",),
            ),
            Rule("rest", frozenset({UNREACHABLE}), WARNING),
        ),
        flap_count=5,
        flap_window_s=600.0,
        flap_stable_s=300.0,
        reminder_every_s=3600.0,
        notify=("https://hooks.example.com/fleet",),
        cost_policies=(CostPolicy("llm budget", per_day_usd=10.0, per_hour_usd=2.5, action="pause"),),
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", AlertSettings()),
        ("[defaults]\nnotify = ['ntfy://x']\n", AlertSettings(notify=("ntfy://x",))),
        ("[defaults]\nreminder_every = '0'\n", AlertSettings(reminder_every_s=None)),
        ("[defaults]\nreminder_every = 90\nflap_count = 0\n", AlertSettings(reminder_every_s=90.0, flap_count=0)),
    ],
    ids=["empty", "defaults-keep-default-rules", "reminders-off", "numbers"],
)
def test_load_settings_defaults(tmp_path: Path, text: str, expected: AlertSettings) -> None:
    settings = load_settings(write(tmp_path, text))
    assert settings == expected
    assert settings.rules == DEFAULT_RULES


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[defualts]\n", "defualts: unknown key"),
        ("[defaults]\nflap_cuont = 3\n", "defaults.flap_cuont: unknown key"),
        ("[[rule]]\nname='r'\nstates=['degraded']\nseverity='warning'\nagent='x'\n", "rule[1].agent: unknown key"),
        ("[[cost]]\nname='c'\nper_day=3\n", "cost[1].per_day: unknown key"),
        ("[[rule]]\nname='r'\nstates=['killed']\nseverity='critical'\n", "rule[1].states: 'killed' cannot page"),
        ("[[rule]]\nname='r'\nstates=['unknown']\nseverity='critical'\n", "rule[1].states: 'unknown' cannot page"),
        ("[[rule]]\nname='r'\nstates=['down']\nseverity='critical'\n", "rule[1].states: 'down' cannot page"),
        ("[[rule]]\nname='r'\nstates=['degraded']\nseverity='page'\n", "rule[1].severity: 'page' is not one of"),
        ("[[rule]]\nname='r'\nseverity='info'\n", "rule[1].states: missing"),
        ("[[rule]]\nname='r'\nstates='degraded'\nseverity='info'\n", "rule[1].states: must be a list"),
        ("[[rule]]\nname='r'\nstates=['degraded']\nseverity='info'\nlabels={team=1}\n", "rule[1].labels"),
        ("[defaults]\nflap_window = '10 minutes'\n", "defaults.flap_window: not a duration"),
        ("[defaults]\nflap_window = 0\n", "defaults.flap_window: must be longer than 0"),
        ("[defaults]\nflap_count = 1\n", "defaults.flap_count: must be a whole number >= 2"),
        ("[defaults]\nflap_count = true\n", "defaults.flap_count"),
        ("[defaults]\nnotify = 'slack://x'\n", "defaults.notify: must be a list"),
        ("[[cost]]\nname='c'\n", "cost[1]: cost policy 'c': set per_day_usd, per_hour_usd or both"),
        ("[[cost]]\nname='c'\nper_day_usd=5\naction='nuke'\n", "cost[1]: cost policy 'c': action must be one of"),
        ("[[cost]]\nname='c'\nper_day_usd='5'\n", "cost[1].per_day_usd: must be a number"),
        ("rule = 3\n", "rule: must be an array of tables"),
        ("[defaults\n", "not valid TOML"),
    ],
)
def test_load_settings_errors_name_the_file_and_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert key in message


def test_load_settings_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the alert rules"):
        load_settings(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("10m", 600),
        ("2h", 7200),
        ("1d", 86400),
        ("1.5h", 5400),
        (" 30 ", 30),
        ("0", 0),
        (45, 45),
        (2.5, 2.5),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten", "10 minutes", "-5s", "5w", "1h30m", -1, True, float("nan"), float("inf")])
def test_parse_duration_rejects(text: str | float) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


# -- properties ------------------------------------------------------------------------------------


@dataclass
class Pairing:
    """Checks notifications as they come: every incident triggers (or flaps) before anything else, resolves once."""

    opened: set[str]
    resolved: set[str]

    def check(self, notifications: list[Notification]) -> None:
        for n in notifications:
            assert not (n.event is TRIGGER and n.state in ("killed", "unknown")), n
            assert n.incident_id not in self.resolved, f"{n.event} after the resolve of {n.incident_id}"
            if n.event is FLAPPING:
                assert n.incident_id not in self.opened, "flapping opens its own incident"
                self.opened.add(n.incident_id)
            elif n.event is TRIGGER:
                self.opened.add(n.incident_id)
            else:
                assert n.incident_id in self.opened, f"{n.event} without a trigger of {n.incident_id}"
                if n.event is RESOLVE:
                    self.resolved.add(n.incident_id)


SETTINGS = st.builds(
    AlertSettings,
    flap_count=st.sampled_from([0, 2, 2, 3]),
    flap_window_s=st.just(600.0),
    flap_stable_s=st.sampled_from([0.0, 30.0, 300.0]),
    reminder_every_s=st.sampled_from([None, 20.0]),
)
STEP = st.one_of(
    # gap_s, new state, snapshot (rarer: most transitions are live)
    st.tuples(st.integers(1, 200), st.sampled_from(list(State)), st.sampled_from([False, False, False, True])),
    st.tuples(st.integers(1, 200), st.none(), st.just(False)),  # gap_s, tick
)


@settings(max_examples=300, deadline=None)
@given(
    alert_settings=SETTINGS,
    steps=st.lists(STEP, min_size=10, max_size=60),
    restored=st.sampled_from([None, True, False]),
    silenced=st.tuples(st.integers(0, 2000), st.integers(0, 1000)),
)
def test_one_agent_notifications_are_well_paired(
    alert_settings: AlertSettings,
    steps: list[tuple[int, State | None, bool]],
    restored: bool | None,
    silenced: tuple[int, int],
) -> None:
    fleet = Fleet(alert_settings)
    pairing = Pairing(set(), set())
    fleet.policy.set_silences([silence("a", silenced[0], silenced[0] + silenced[1])])
    if restored is not None:
        stored = OpenIncident(incident_id("a", -1), "a", "unreachable", CRITICAL, "unreachable", at(-1), restored)
        fleet.views["a"] = view("a", UNREACHABLE)
        fleet.policy.restore([stored])
        if restored:
            pairing.opened.add(stored.incident_id)
    seconds = 0
    for gap_s, state, snapshot in steps:
        seconds += gap_s
        if state is None:
            pairing.check(fleet.tick(seconds))
        elif state is not fleet.views["a"].state:  # health.py never commits a state to itself
            pairing.check(fleet.move(seconds, state, snapshot=snapshot))
    # However it ended: back to healthy and quiet long enough resolves everything that was announced.
    if fleet.views["a"].state is not HEALTHY:
        pairing.check(fleet.move(seconds + 1, HEALTHY))
    pairing.check(fleet.tick(seconds + 10_000))
    assert fleet.policy.open_incidents() == []
    assert pairing.opened == pairing.resolved


AGENTS = ("a", "b", "c")


@settings(max_examples=300, deadline=None)
@given(
    alert_settings=SETTINGS,
    depends=st.fixed_dictionaries({agent: st.lists(st.sampled_from(AGENTS), max_size=2) for agent in AGENTS}),
    steps=st.lists(
        st.tuples(
            st.integers(1, 100),
            st.lists(st.tuples(st.sampled_from(AGENTS), st.sampled_from(list(State))), max_size=3),
        ),
        max_size=30,
    ),
)
def test_fleet_notifications_are_well_paired(
    alert_settings: AlertSettings,
    depends: dict[str, list[str]],
    steps: list[tuple[int, list[tuple[str, State]]]],
) -> None:
    fleet = Fleet(alert_settings, *(view(agent, depends_on=tuple(depends[agent])) for agent in AGENTS))
    pairing = Pairing(set(), set())
    seconds = 0
    for gap_s, moves in steps:
        seconds += gap_s
        if not moves:
            pairing.check(fleet.tick(seconds))
            continue
        latest = {agent: state for agent, state in moves}  # one transition per agent and batch, like health.py
        pairing.check(fleet.batch(seconds, *((a, s) for a, s in latest.items() if s is not fleet.views[a].state)))
    recover = [(agent, HEALTHY) for agent in AGENTS if fleet.views[agent].state is not HEALTHY]
    pairing.check(fleet.batch(seconds + 1, *recover))
    pairing.check(fleet.tick(seconds + 10_000))
    assert fleet.policy.open_incidents() == []
    assert pairing.opened == pairing.resolved
