"""Issue 14's flood stages of the alert policy: the page-rate guard (alert storms), the agent-cap alert, forget.

Time is always `NOW + seconds` (tests/monitor/test_alert_policy.py's helpers), so nothing sleeps.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetpulse.monitor.alert_policy import AlertPolicy, AlertSettings, load_settings
from fleetpulse.monitor.notification import Notification
from tests.monitor.test_alert_policy import (
    CRITICAL,
    HEALTHY,
    REMINDER,
    RESOLVE,
    TRIGGER,
    UNREACHABLE,
    Fleet,
    at,
    view,
)

MONITOR = "monitor:default"


def fleet_of(count: int, max_pages: int, **settings: object) -> Fleet:
    alert_settings = AlertSettings(max_pages_per_minute=max_pages, flap_count=0, **settings)  # type: ignore[arg-type]
    return Fleet(alert_settings, *(view(f"agent-{index:03d}") for index in range(count)))


def pages(sent: list[Notification]) -> list[str]:
    """Agents whose trigger went out (not the storm's own notifications)."""
    return [n.agent for n in sent if n.event is TRIGGER and n.agent != MONITOR]


def storm(sent: list[Notification]) -> list[Notification]:
    return [n for n in sent if n.rule == "alert-storm"]


def go_down(fleet: Fleet, seconds: float, agents: range) -> list[Notification]:
    return fleet.batch(seconds, *((f"agent-{index:03d}", UNREACHABLE) for index in agents))


# -- the guard -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("agents", "max_pages", "paged", "held"),
    [
        (3, 5, 3, 0),  # under the limit: every trigger goes out, no storm
        (5, 5, 5, 0),  # exactly the limit: still no storm
        (6, 5, 5, 1),  # one over: five pages, one storm notification standing for the sixth
        (200, 5, 5, 195),  # the flood of issue 14: five pages and one storm, not 200 pages
        (40, 0, 40, 0),  # 0 turns the guard off
    ],
    ids=["under", "at-limit", "one-over", "flood", "off"],
)
def test_beyond_the_limit_one_storm_notification_stands_for_the_rest(
    agents: int, max_pages: int, paged: int, held: int
) -> None:
    fleet = fleet_of(agents, max_pages)
    sent = go_down(fleet, 0, range(agents))
    assert len(pages(sent)) == paged
    held_now = fleet.policy.take_held()
    assert len(held_now) == held and fleet.policy.take_held() == []  # drained once, for the shell to record
    assert {n.agent for n in held_now}.isdisjoint(pages(sent))
    storms = storm(sent)
    if not held:
        assert storms == []
        return
    assert [(n.event, n.severity, n.agent) for n in storms] == [(TRIGGER, CRITICAL, MONITOR)]
    assert f"{held} held so far" in storms[0].reason
    assert storms[0].impacted == tuple(n.agent for n in held_now[:5])  # the first few, by name
    # Held incidents never resolve one by one; the paged ones do, storm or not.
    recovered = go_down_and_up(fleet, 30, agents)
    assert sorted(n.agent for n in recovered if n.event is RESOLVE) == sorted(pages(sent))
    assert fleet.tick(59) == []  # not a quiet minute yet (the last page was held at 0)
    over = fleet.tick(60)
    assert [(n.event, n.agent, n.incident_id) for n in over] == [(RESOLVE, MONITOR, storms[0].incident_id)]
    assert f"{held} alerts held in all" in over[0].reason and over[0].duration_s == 60.0
    assert fleet.tick(200) == []


def go_down_and_up(fleet: Fleet, seconds: float, agents: int) -> list[Notification]:
    return fleet.batch(seconds, *((f"agent-{index:03d}", HEALTHY) for index in range(agents)))


@pytest.mark.parametrize(
    ("trigger_at", "passed"),
    [
        ([0, 1, 2, 60], [True, True, True, True]),  # the window rolls: the first page left it at 60 s
        ([0, 1, 2, 59.9], [True, True, True, False]),  # four within a minute: the fourth is held
        ([0, 0, 0, 0, 50], [True, True, True, False, False]),  # a storm holds until a quiet minute...
        ([0, 0, 0, 0, 61], [True, True, True, False, True]),  # ...after which pages go out again
    ],
    ids=["rolling", "within-a-minute", "storm-holds", "storm-over"],
)
def test_the_limit_is_a_rolling_minute_and_a_storm_holds_until_a_quiet_one(
    trigger_at: list[float], passed: list[bool]
) -> None:
    fleet = fleet_of(len(trigger_at), 3)
    outcome = []
    for index, seconds in enumerate(trigger_at):
        fleet.tick(seconds)
        sent = go_down(fleet, seconds, range(index, index + 1))
        outcome.append(pages(sent) == [f"agent-{index:03d}"])
    assert outcome == passed


def test_a_storm_lasts_while_pages_keep_being_held_and_resolves_once_with_the_total() -> None:
    fleet = fleet_of(12, 2)
    go_down(fleet, 0, range(4))  # 2 paged, 2 held: the storm starts
    go_down(fleet, 50, range(4, 8))  # held: the storm goes on
    assert fleet.tick(100) == []  # 50 s after the last hold
    go_down(fleet, 100, range(8, 12))
    assert fleet.tick(159) == []
    over = fleet.tick(160)
    assert [n.event for n in over] == [RESOLVE] and "10 alerts held in all" in over[0].reason
    assert len(storm(fleet.sent)) == 2  # one trigger, one resolve for the whole storm
    assert len(fleet.policy.take_held()) == 10


def test_a_storm_open_at_a_restart_still_resolves_once() -> None:
    fleet = fleet_of(4, 2)
    (storm_trigger,) = storm(go_down(fleet, 0, range(4)))
    stored = fleet.policy.open_incidents()
    assert [(i.incident_id, i.rule) for i in stored if i.rule == "alert-storm"] == [
        (storm_trigger.incident_id, "alert-storm")
    ]
    restarted = AlertPolicy(AlertSettings(max_pages_per_minute=2, flap_count=0))
    restarted.restore(stored)
    assert restarted.open_incidents() == stored  # the shell sees nothing to rewrite
    assert restarted.tick(fleet.views, at(30)) == []
    over = restarted.tick(fleet.views, at(60))
    assert [(n.event, n.incident_id) for n in over] == [(RESOLVE, storm_trigger.incident_id)]
    assert "since the monitor restarted" in over[0].reason
    assert restarted.tick(fleet.views, at(200)) == []
    assert [incident for incident in restarted.open_incidents() if incident.rule == "alert-storm"] == []


def test_reminders_are_pages_too_and_a_paged_incident_keeps_its_resolve() -> None:
    fleet = fleet_of(3, 2, reminder_every_s=30.0)
    go_down(fleet, 0, range(2))  # both paged
    go_down(fleet, 10, range(2, 3))  # held: a storm
    fleet.tick(11)
    reminders = fleet.tick(45)  # agent-000 and -001 are due a reminder inside the storm: held
    assert [n for n in reminders if n.event is REMINDER] == []
    resolved = fleet.move(50, HEALTHY, "agent-000")
    assert [(n.event, n.agent) for n in resolved] == [(RESOLVE, "agent-000")]
    assert fleet.move(51, HEALTHY, "agent-002") == []  # held trigger: no resolve


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 40), st.integers(0, 9), st.sampled_from([UNREACHABLE, HEALTHY])), min_size=1, max_size=80
    ),
    st.integers(1, 4),
)
def test_never_more_than_the_limit_of_pages_plus_two_storm_notifications_per_minute(
    steps: list[tuple[float, int, object]], max_pages: int
) -> None:
    fleet = fleet_of(10, max_pages)
    seconds = 0.0
    timeline: list[tuple[float, Notification]] = []
    for step_s, agent, state in steps:
        seconds += step_s
        for notification in fleet.tick(seconds):
            timeline.append((seconds, notification))
        for notification in fleet.move(seconds, state, f"agent-{agent:03d}"):  # type: ignore[arg-type]
            timeline.append((seconds, notification))
    for start, _ in timeline:
        window = [n for when, n in timeline if start <= when < start + 60]
        agent_pages = [n for n in window if n.agent != MONITOR and n.event is not RESOLVE]
        storms = storm(window)
        assert len(agent_pages) <= max_pages
        assert len(storms) <= 2
    # Every resolve of an agent answers a trigger that went out: held ones never resolve alone.
    triggered = {n.incident_id for _, n in timeline if n.event is TRIGGER}
    assert all(n.incident_id in triggered for _, n in timeline if n.event is RESOLVE)


def test_the_rules_file_sets_the_limit(tmp_path: Path) -> None:
    rules = tmp_path / "alerts.toml"
    rules.write_text("[defaults]\nmax_pages_per_minute = 7\n")
    assert load_settings(rules).max_pages_per_minute == 7
    assert AlertSettings().max_pages_per_minute == 30
    rules.write_text("[defaults]\nmax_pages_per_minute = -1\n")
    with pytest.raises(ValueError, match="max_pages_per_minute"):
        load_settings(rules)
    with pytest.raises(ValueError, match="max_pages_per_minute"):
        AlertSettings(max_pages_per_minute=True)


# -- the agent cap ---------------------------------------------------------------------------------


def test_the_agent_cap_alerts_once_and_resolves_once_and_survives_a_restart() -> None:
    policy = AlertPolicy(AlertSettings())
    first = policy.agent_cap_reached(at(0), 20, 20)
    assert [(n.event, n.agent, n.severity, n.state) for n in first] == [(TRIGGER, MONITOR, CRITICAL, "capped")]
    assert "agent cap reached (20 known, cap 20)" in first[0].reason
    assert policy.agent_cap_reached(at(1), 20, 20) == []  # a flood of refusals is one alert
    lost = policy.broker_lost(at(2), "gone")  # the monitor's other incident is independent of it
    assert len(lost) == 1
    restarted = AlertPolicy(AlertSettings())
    restarted.restore(policy.open_incidents())
    assert restarted.agent_cap_reached(at(3), 20, 20) == []  # still open after the restart: no new alert
    cleared = restarted.agent_cap_cleared(at(10), 19, 20)
    assert [(n.event, n.incident_id, n.duration_s) for n in cleared] == [(RESOLVE, first[0].incident_id, 10.0)]
    assert restarted.agent_cap_cleared(at(11), 19, 20) == []
    assert [n.event for n in restarted.broker_back(at(12))] == [RESOLVE]


# -- forget ----------------------------------------------------------------------------------------


def test_forgetting_closes_incidents_without_a_word() -> None:
    fleet = fleet_of(3, 30)
    go_down(fleet, 0, range(3))
    assert fleet.policy.forget(["agent-000", "agent-001", "never-known"]) == 2
    assert [n.incident_id for n in fleet.policy.open_incidents()] == [f"agent-002/{compact(at(0))}"]
    # If the forgotten agents come back they are new: no resolve for the closed incidents.
    assert fleet.batch(5, ("agent-000", HEALTHY), ("agent-001", HEALTHY)) == []
    assert [n.event for n in fleet.move(6, HEALTHY, "agent-002")] == [RESOLVE]


def test_forgetting_a_root_leaves_its_dependents_unannounced_and_a_dependent_leaves_the_root() -> None:
    fleet = Fleet(
        AlertSettings(flap_count=0),
        view("db"),
        view("api", depends_on=("db",)),
        view("web", depends_on=("db",)),
    )
    fleet.batch(0, ("db", UNREACHABLE), ("api", UNREACHABLE), ("web", UNREACHABLE))
    assert fleet.policy.forget(["web"]) == 1
    assert fleet.policy.forget(["db"]) == 1
    assert fleet.move(5, HEALTHY, "api") == []  # it was folded, nobody heard of it: nothing to resolve


def compact(moment: datetime) -> str:
    return f"{moment:%Y%m%dT%H%M%S}.{moment.microsecond // 1000:03d}Z"
