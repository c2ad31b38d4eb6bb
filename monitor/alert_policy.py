"""The alert policy: committed health transitions in, Notifications out (pure: no I/O, no clocks, `now` passed in)."""

from __future__ import annotations

import fnmatch
import math
import re
import tomllib
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from fleetpulse.monitor.health import AgentView, State, Transition
from fleetpulse.monitor.notification import Event, Notification, Severity

__all__ = [
    "DEFAULT_RULES",
    "AlertPolicy",
    "AlertSettings",
    "CostBreach",
    "CostPolicy",
    "CostUsage",
    "OpenIncident",
    "Rule",
    "Silence",
    "load_settings",
    "parse_duration",
]

# The only states that page (SPEC §3): killed is intentional, unknown is the monitor's own blindness.
_BAD = frozenset({State.DEGRADED, State.UNREACHABLE})
_CLOSING = frozenset({State.HEALTHY, State.KILLED})
_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}
_COST_ACTIONS = ("alert", "pause", "kill")
_BROKER_RULE = "broker"
_CAP_RULE = "agent-cap"
_STORM_RULE = "alert-storm"
# What the page-rate guard counts: notifications that ask a person to look. Resolves are not pages (each
# pairs with a trigger that was counted), and the monitor's own alerts (broker lost, agent cap) bypass it.
_PAGES = frozenset({Event.TRIGGER, Event.FLAPPING, Event.REMINDER})
STORM_WINDOW_S = 60.0  # the guard's rolling window; a storm ends after this long without a held page
_STORM_NAMES = 5  # agents named in a storm notification; the rest are counted


def _glob_matches(agents: str, group_glob: str | None, agent: str, group: str | None) -> bool:
    """Agent id glob plus optional group glob; an agent without a group matches only None or "*"."""
    if not fnmatch.fnmatchcase(agent, agents):
        return False
    if group_glob is None:
        return True
    if group is None:
        return group_glob == "*"
    return fnmatch.fnmatchcase(group, group_glob)


@dataclass(frozen=True)
class Rule:
    """Which agents, entering which bad state, open an incident: how severe, and to which channels."""

    name: str
    states: frozenset[State]  # entering one of these opens an incident (degraded / unreachable only)
    severity: Severity
    agents: str = "*"  # fnmatchcase glob on the agent id
    group: str | None = None  # glob on the agent's group; None: any
    labels: tuple[tuple[str, str], ...] = ()  # every pair must be among the agent's labels
    channels: tuple[str, ...] = ()  # empty: AlertSettings.notify

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a rule needs a name")
        states = frozenset(State(state) for state in self.states)  # "degraded" is accepted as State.DEGRADED
        if not states:
            raise ValueError(f"rule {self.name!r}: states must not be empty")
        if not states <= _BAD:
            wrong = ", ".join(sorted(states - _BAD))
            raise ValueError(
                f"rule {self.name!r}: states may only be degraded or unreachable, not {wrong} "
                "(killed and unknown never page, SPEC §3)"
            )
        object.__setattr__(self, "states", states)
        object.__setattr__(self, "severity", Severity(self.severity))


DEFAULT_RULES = (
    Rule("unreachable", frozenset({State.UNREACHABLE}), Severity.CRITICAL),
    Rule("degraded", frozenset({State.DEGRADED}), Severity.WARNING),
)


@dataclass(frozen=True)
class CostPolicy:
    """A spending limit per agent (UTC day and/or clock hour) and what to do when it is crossed."""

    name: str
    agents: str = "*"
    group: str | None = None
    per_day_usd: float | None = None
    per_hour_usd: float | None = None
    action: str = "alert"  # "alert" | "pause" | "kill": the shell carries it out, the policy only reports

    def __post_init__(self) -> None:
        if self.per_day_usd is None and self.per_hour_usd is None:
            raise ValueError(f"cost policy {self.name!r}: set per_day_usd, per_hour_usd or both")
        for limit_name in ("per_day_usd", "per_hour_usd"):
            limit = getattr(self, limit_name)
            if limit is not None and not (math.isfinite(limit) and limit > 0):
                raise ValueError(f"cost policy {self.name!r}: {limit_name} must be > 0, got {limit!r}")
        if self.action not in _COST_ACTIONS:
            raise ValueError(f"cost policy {self.name!r}: action must be one of {', '.join(_COST_ACTIONS)}")


@dataclass(frozen=True)
class AlertSettings:
    """Everything the rules file configures: rules, flap detection, reminders, channels, cost limits."""

    rules: tuple[Rule, ...] = DEFAULT_RULES  # in order: the first that matches wins
    flap_count: int = 4  # incidents opened within flap_window_s that make an agent flapping; 0 turns it off
    flap_window_s: float = 600.0
    flap_stable_s: float = 300.0  # a flapping agent is held until it made no transition for this long
    reminder_every_s: float | None = None  # None or 0: no reminders
    notify: tuple[str, ...] = ()  # default channels
    cost_policies: tuple[CostPolicy, ...] = ()
    # Page-rate guard (issue 14): beyond this many pages within a rolling minute, further ones are held and
    # one "alert storm" notification stands for them. 30 a minute is more than anyone reads one by one, and
    # far above a real fleet's bad minute at 20-20,000 agents with folding and flap damping; 0 turns it off.
    max_pages_per_minute: int = 30

    def __post_init__(self) -> None:
        # 1 would turn every incident into "flapping": surely a mistake, so refuse it.
        if self.flap_count != 0 and self.flap_count < 2:
            raise ValueError(f"flap_count must be 0 (off) or >= 2, got {self.flap_count!r}")
        if not self.flap_window_s > 0 or not self.flap_stable_s >= 0:
            raise ValueError("flap_window_s must be > 0 and flap_stable_s >= 0")
        if self.reminder_every_s is not None and not self.reminder_every_s >= 0:
            raise ValueError(f"reminder_every_s must be >= 0, got {self.reminder_every_s!r}")
        pages = self.max_pages_per_minute
        if isinstance(pages, bool) or not isinstance(pages, int) or pages < 0:
            raise ValueError(f"max_pages_per_minute must be a whole number >= 0 (0: off), got {pages!r}")


@dataclass(frozen=True)
class Silence:
    """An operator's "don't page me about these" for a time window (maintenance, known outage)."""

    id: str
    pattern: str  # glob matched against the agent id OR its group
    starts_at: datetime
    ends_at: datetime
    reason: str
    created_by: str

    def __post_init__(self) -> None:
        if self.ends_at < self.starts_at:
            raise ValueError(f"silence {self.id!r} ends before it starts")

    def active(self, now: datetime) -> bool:
        return self.starts_at <= now < self.ends_at

    def covers(self, agent: str, group: str | None, now: datetime) -> bool:
        if not self.active(now):
            return False
        return fnmatch.fnmatchcase(agent, self.pattern) or (
            group is not None and fnmatch.fnmatchcase(group, self.pattern)
        )


@dataclass(frozen=True)
class OpenIncident:
    """An open incident as the shell stores it, so that a restarted monitor pairs resolves with triggers."""

    incident_id: str
    agent: str
    state: str
    severity: Severity
    rule: str
    opened_at: datetime
    notified: bool  # False if it was silenced or folded: then it never sends a resolve
    root: str | None = None  # folded into this agent's incident
    channels: tuple[str, ...] = ()


@dataclass(frozen=True)
class CostUsage:
    """One agent's spending so far in the current UTC day and UTC clock hour (kept by the shell)."""

    day: date
    cost_day_usd: float
    hour: datetime  # start of the clock hour
    cost_hour_usd: float


@dataclass(frozen=True)
class CostBreach:
    """An agent spent more than its policy allows: the action for the shell, and the alert to send."""

    agent: str
    policy: str
    period: str  # "day" | "hour"
    spent_usd: float
    limit_usd: float
    action: str
    at: datetime
    notification: Notification


@dataclass(slots=True)
class _Incident:
    """The policy's own, mutable view of one open incident."""

    incident_id: str
    agent: str
    state: str  # a State value (the agent's latest, even while held), or "lost" for the monitor
    severity: Severity
    rule: str
    opened_at: datetime
    notified: bool
    reason: str  # the latest transition's reason: reminders and unfolded triggers repeat it
    root: str | None = None
    channels: tuple[str, ...] = ()
    group: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    impacted: list[str] = field(default_factory=list)  # every agent ever folded into this one, in order
    last_sent_at: datetime | None = None  # None: not sent since restore, reminders count from the next tick
    held: bool = False  # flapping: no trigger or resolve until the agent is quiet for flap_stable_s
    last_change_at: datetime | None = None  # while held: the agent's latest transition
    restored: bool = False  # brought back by restore(): tick() reconciles it with the agent's view
    paged: bool = False  # a trigger of it passed the page-rate guard: its resolve must follow, storm or not


def _compact_utc(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return f"{moment:%Y%m%dT%H%M%S}.{moment.microsecond // 1000:03d}Z"


def _stopped(reason: str) -> str:
    # health.py already words a stop "stopped: <why>"; don't say it twice.
    return reason if reason.startswith("stopped:") else f"stopped: {reason}"


def _as_state(value: str) -> State | None:
    try:
        return State(value)
    except ValueError:
        return None


def _union(first: tuple[str, ...], second: tuple[str, ...]) -> tuple[str, ...]:
    """Channels of both rules; empty means "every channel", which already includes the other's."""
    if not first or not second:
        return ()
    return tuple(dict.fromkeys((*first, *second)))


def _depends_on(agent: str, views: Mapping[str, AgentView]) -> tuple[str, ...]:
    view = views.get(agent)
    return view.depends_on if view is not None else ()


def _roots_first(transitions: Sequence[Transition], views: Mapping[str, AgentView]) -> list[Transition]:
    """The batch with every agent after the agents it (transitively) depends on; cycles keep arrival order.

    An agent's own transitions stay together and in order. Within one batch, this lets a root open its
    incident before its dependents look for one to fold into, whatever order the messages came in.
    """
    by_agent: dict[str, list[Transition]] = {}
    for transition in transitions:
        by_agent.setdefault(transition.agent, []).append(transition)
    if len(by_agent) <= 1:
        return list(transitions)
    ordered: list[str] = []
    visited: set[str] = set()
    for start in by_agent:
        if start in visited:
            continue
        visited.add(start)
        # Iterative depth-first post-order: dependency chains of thousands must not hit the recursion limit.
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(_depends_on(start, views)))]
        while stack:
            agent, dependencies = stack[-1]
            for dependency in dependencies:
                if dependency not in visited:  # also what stops a cycle
                    visited.add(dependency)
                    stack.append((dependency, iter(_depends_on(dependency, views))))
                    break
            else:
                stack.pop()
                if agent in by_agent:
                    ordered.append(agent)
    return [transition for agent in ordered for transition in by_agent[agent]]


@dataclass(slots=True)
class _Storm:
    """An alert storm in progress: pages held since `started_at`, the first few agents by name."""

    incident_id: str
    started_at: datetime
    last_held_at: datetime
    held: int = 0
    agents: list[str] = field(default_factory=list)
    announced: bool = False
    restored: bool = False  # open when the monitor restarted: `held` counts only what was held since


class _PageRateGuard:
    """The last stage: at most `max_per_minute` pages within any rolling minute, then one storm notification.

    Beyond the limit a page is held: not sent, recorded (`held` is drained by the shell into the alerts
    table), and its incident no longer counts as notified, so its reminders and resolve are held too. An
    incident that was paged before the storm keeps its resolve: whoever got the trigger needs it. The
    storm ends after a quiet minute (no page held for STORM_WINDOW_S) with one resolve carrying the total.
    """

    def __init__(self, max_per_minute: int, monitor_agent: str, channels: tuple[str, ...]) -> None:
        self._max = max_per_minute
        self._monitor_agent = monitor_agent
        self._channels = channels
        self._sent: deque[datetime] = deque()  # when each page of the last minute went out
        self._storm: _Storm | None = None
        self.held: list[Notification] = []

    def admit(self, sent: Sequence[tuple[Notification, _Incident]], now: datetime) -> list[Notification]:
        """What of one batch goes out now (time: `now`, when it is sent, not when its transitions happened)."""
        if not self._max:
            for notification, incident in sent:
                incident.paged = incident.paged or notification.event in _PAGES
            return [notification for notification, _ in sent]
        while self._sent and (now - self._sent[0]).total_seconds() >= STORM_WINDOW_S:
            self._sent.popleft()
        out: list[Notification] = []
        held_incidents: set[str] = set()
        for notification, incident in sent:
            page = notification.event in _PAGES
            if not page and notification.incident_id not in held_incidents:
                out.append(notification)  # a resolve of a paged incident (held ones never get here, but below)
                continue
            if page and self._storm is None and len(self._sent) < self._max:
                self._sent.append(now)
                incident.paged = True
                out.append(notification)
                continue
            self._hold(notification, incident, now)
            held_incidents.add(notification.incident_id)
        if self._storm is not None and not self._storm.announced:
            self._storm.announced = True
            out.append(self._storm_notification(Event.TRIGGER, now))
        return out

    def open_storm(self) -> OpenIncident | None:
        """The storm as an incident the shell stores, so that a restarted monitor still sends its resolve."""
        storm = self._storm
        if storm is None or not storm.announced:
            return None
        return OpenIncident(
            storm.incident_id, self._monitor_agent, "storm", Severity.CRITICAL, _STORM_RULE, storm.started_at, True
        )

    def restore(self, incident: OpenIncident) -> None:
        # Held pages before the restart are in the alerts table; the quiet minute counts from the storm's start.
        self._storm = _Storm(
            incident.incident_id, incident.opened_at, incident.opened_at, announced=True, restored=True
        )

    def tick(self, now: datetime) -> list[Notification]:
        """The storm's resolve, once no page was held for a minute."""
        storm = self._storm
        if storm is None or (now - storm.last_held_at).total_seconds() < STORM_WINDOW_S:
            return []
        notification = self._storm_notification(Event.RESOLVE, now)
        self._storm = None
        return [notification]

    def _hold(self, notification: Notification, incident: _Incident, now: datetime) -> None:
        if notification.event is not Event.RESOLVE and not incident.paged:
            incident.notified = False  # nobody was told of it: no reminders, no resolve (silenced-like)
        storm = self._storm
        if storm is None:
            storm = self._storm = _Storm(f"{self._monitor_agent}/{_STORM_RULE}/{_compact_utc(now)}", now, now)
        if notification.event in _PAGES:
            storm.held += 1
        storm.last_held_at = now
        if len(storm.agents) < _STORM_NAMES and notification.agent not in storm.agents:
            storm.agents.append(notification.agent)
        self.held.append(notification)

    def _storm_notification(self, event: Event, now: datetime) -> Notification:
        storm = self._storm
        assert storm is not None
        named = ", ".join(storm.agents)
        more = f" and {storm.held - len(storm.agents)} more" if storm.held > len(storm.agents) else ""
        if event is Event.TRIGGER:
            reason = (
                f"alert storm: more than {self._max} alerts within a minute; {storm.held} held so far "
                f"({named}{more}); the rest are recorded, not sent, until a quiet minute"
            )
        elif storm.restored:
            reason = f"alert storm over: {storm.held} alerts held since the monitor restarted; see the alerts table"
        else:
            reason = f"alert storm over: {storm.held} alerts held in all ({named}{more}); see the alerts table"
        duration_s = None if event is Event.TRIGGER else max(0.0, (now - storm.started_at).total_seconds())
        return Notification(
            event=event,
            incident_id=storm.incident_id,
            agent=self._monitor_agent,
            state="storm" if event is Event.TRIGGER else State.HEALTHY.value,
            severity=Severity.CRITICAL,
            reason=reason,
            at=now,
            duration_s=duration_s,
            impacted=tuple(storm.agents),
            rule=_STORM_RULE,
            channels=self._channels,
        )


@dataclass
class _Batch:
    """What one call produces: notifications (each with its incident) and the closed roots still to unfold."""

    sent: list[tuple[Notification, _Incident]] = field(default_factory=list)
    closed_roots: list[tuple[_Incident, datetime]] = field(default_factory=list)

    def send(self, notification: Notification, incident: _Incident) -> None:
        self.sent.append((notification, incident))


class AlertPolicy:
    """Decides who hears what about which incident: triggers, resolves, flapping, reminders, folding, silences.

    Holds the open incidents in memory; the shell stores `open_incidents()` and hands them to
    `restore()` after a restart. Every method takes the time it runs at and returns what to send.
    """

    def __init__(self, settings: AlertSettings, monitor_id: str = "default") -> None:
        self._settings = settings
        self._monitor_agent = f"monitor:{monitor_id}"  # ":" is not allowed in agent ids: no clash (SPEC §2)
        self._open: dict[str, _Incident] = {}
        self._lost: _Incident | None = None
        self._cap: _Incident | None = None  # the monitor refuses new agents: its known-agent cap is reached
        self._guard = _PageRateGuard(settings.max_pages_per_minute, self._monitor_agent, settings.notify)
        self._silences: tuple[Silence, ...] = ()
        self._openings: dict[str, deque[datetime]] = {}  # per agent, for flap detection
        self._last_ids: dict[str, tuple[str, int]] = {}  # per agent: last incident id base and its repeat count
        self._cost_days: dict[str, date] = {}  # per agent, the last UTC day a daily breach was reported
        self._cost_hours: dict[str, datetime] = {}  # per agent, the last clock hour an hourly breach was reported

    # -- the public face -------------------------------------------------------------------------

    def restore(self, incidents: Iterable[OpenIncident]) -> None:
        """Take back the incidents that were open when the monitor stopped (not their flapping holds)."""
        for stored in incidents:
            if stored.agent == self._monitor_agent and stored.rule == _STORM_RULE:
                self._guard.restore(stored)
                continue
            incident = _Incident(
                incident_id=stored.incident_id,
                agent=stored.agent,
                state=stored.state,
                severity=Severity(stored.severity),
                rule=stored.rule,
                opened_at=stored.opened_at,
                notified=stored.notified,
                reason=f"{stored.state} since before the monitor restarted",
                root=stored.root,
                channels=tuple(stored.channels),
                restored=True,
                paged=stored.notified,
            )
            if stored.agent == self._monitor_agent and stored.rule == _CAP_RULE:
                self._cap = incident
            elif stored.agent == self._monitor_agent:
                self._lost = incident
            else:
                self._open[stored.agent] = incident
        for incident in self._open.values():
            root = self._open.get(incident.root) if incident.root is not None else None
            if root is None or root is incident:
                # The root closed without unfolding this one (the store lagged): it stays unannounced,
                # like a silence that ended, rather than paging out of the blue at startup.
                incident.root = None
            elif incident.agent not in root.impacted:
                root.impacted.append(incident.agent)

    def set_silences(self, silences: Sequence[Silence]) -> None:
        self._silences = tuple(silences)

    def open_incidents(self) -> list[OpenIncident]:
        monitor = [incident for incident in (self._lost, self._cap) if incident is not None]
        incidents = [*self._open.values(), *monitor]
        stored = [
            OpenIncident(
                incident_id=incident.incident_id,
                agent=incident.agent,
                state=str(incident.state),
                severity=incident.severity,
                rule=incident.rule,
                opened_at=incident.opened_at,
                notified=incident.notified,
                root=incident.root,
                channels=incident.channels,
            )
            for incident in sorted(incidents, key=lambda incident: (incident.opened_at, incident.agent))
        ]
        storm = self._guard.open_storm()
        return [*stored, storm] if storm is not None else stored

    def observe(
        self, transitions: Sequence[Transition], views: Mapping[str, AgentView], now: datetime
    ) -> list[Notification]:
        """Notifications for one batch of committed transitions; `views` are the agents after the batch.

        Incident times come from each transition's `at`; silences are judged at `now`, because they
        govern what is sent now.
        """
        batch = _Batch()
        for transition in _roots_first(transitions, views):
            self._apply(transition, views, now, batch)
        return self._finish(batch, views, now)

    def tick(self, views: Mapping[str, AgentView], now: datetime) -> list[Notification]:
        """Time-driven notifications: flapping agents released, restored incidents reconciled, reminders."""
        batch = _Batch()
        for incident in list(self._open.values()):  # a copy: releasing may close the incident
            view = views.get(incident.agent)
            if view is not None:
                incident.group, incident.labels = view.group, view.labels
            if incident.held:
                self._release_if_stable(incident, view, now, batch)
            elif incident.restored and view is not None and view.state is not State.UNKNOWN:
                self._reconcile_restored(incident, view, batch)
        self._remind(views, now, batch)
        return [*self._finish(batch, views, now), *self._guard.tick(now)]

    def take_held(self) -> list[Notification]:
        """Pages the page-rate guard held back since the last call, for the shell to record (never lost)."""
        held, self._guard.held = self._guard.held, []
        return held

    def broker_lost(self, now: datetime, reason: str) -> list[Notification]:
        """The monitor lost its broker: one critical trigger for the monitor itself, however often it is told."""
        if self._lost is not None:
            return []
        self._lost, sent = self._open_monitor_incident(
            self._new_id(self._monitor_agent, now), "lost", _BROKER_RULE, reason, now
        )
        return sent

    def _open_monitor_incident(
        self, incident_id: str, state: str, rule: str, reason: str, now: datetime
    ) -> tuple[_Incident, list[Notification]]:
        """A critical incident of the monitor itself, and its trigger unless silenced."""
        incident = _Incident(
            incident_id=incident_id,
            agent=self._monitor_agent,
            state=state,
            severity=Severity.CRITICAL,
            rule=rule,
            opened_at=now,
            notified=False,
            reason=reason,
            channels=self._settings.notify,
        )
        # A silence over "monitor:*" (or "*") is an operator's wish for quiet during broker maintenance.
        if self._silenced(self._monitor_agent, None, now):
            return incident, []
        incident.notified = True
        return incident, [self._send(incident, Event.TRIGGER, now, reason)]

    def broker_back(self, now: datetime) -> list[Notification]:
        """The monitor hears its broker again (call it on every connect: it sends only if it was lost)."""
        incident, self._lost = self._lost, None
        if incident is None or not incident.notified:
            return []
        duration_s = max(0.0, (now - incident.opened_at).total_seconds())
        return [self._send(incident, Event.RESOLVE, now, "broker connection restored", duration_s, State.HEALTHY.value)]

    def agent_cap_reached(self, now: datetime, known: int, cap: int) -> list[Notification]:
        """The monitor refuses new agent ids: one critical trigger for the monitor, however often it is told."""
        if self._cap is not None:
            return []
        reason = (
            f"agent cap reached ({known} known, cap {cap}): messages from new agent ids are refused and "
            "counted; forget agents (fleetpulse forget) or raise --max-agents"
        )
        incident_id = f"{self._monitor_agent}/{_CAP_RULE}/{_compact_utc(now)}"
        self._cap, sent = self._open_monitor_incident(incident_id, "capped", _CAP_RULE, reason, now)
        return sent

    def agent_cap_cleared(self, now: datetime, known: int, cap: int) -> list[Notification]:
        """Known agents are under the cap again (after a forget): the cap alert's resolve, if it was sent."""
        incident, self._cap = self._cap, None
        if incident is None or not incident.notified:
            return []
        duration_s = max(0.0, (now - incident.opened_at).total_seconds())
        reason = f"known agents under the cap again ({known} known, cap {cap})"
        return [self._send(incident, Event.RESOLVE, now, reason, duration_s, State.HEALTHY.value)]

    def forget(self, agents: Iterable[str]) -> int:
        """An operator forgot these agents: their incidents close without a word; how many were open.

        No resolve is sent: the agent did not recover, people chose to stop watching it. Agents folded
        into a forgotten root stay unannounced (as after a restart whose root closed unseen); a forgotten
        dependent leaves its root's impacted list.
        """
        closed = 0
        for agent in agents:
            incident = self._open.pop(agent, None)
            self._openings.pop(agent, None)  # a forgotten agent that comes back starts afresh
            self._last_ids.pop(agent, None)  # (memory bounded by the agents known, not ever seen)
            self._cost_days.pop(agent, None)
            self._cost_hours.pop(agent, None)
            if incident is None:
                continue
            closed += 1
            root = self._open.get(incident.root) if incident.root is not None else None
            if root is not None and agent in root.impacted:
                root.impacted.remove(agent)
            for dependent in incident.impacted:
                folded = self._open.get(dependent)
                if folded is not None and folded.root == agent:
                    folded.root = None
        return closed

    def costs(self, usage: Mapping[str, CostUsage], views: Mapping[str, AgentView], now: datetime) -> list[CostBreach]:
        """Breaches of the first matching cost policy, each reported once per agent, period and UTC day/hour.

        Silences do not apply: a breach carries the budget's action (pause, kill), which must happen.
        """
        breaches: list[CostBreach] = []
        for agent in sorted(usage):
            view = views.get(agent)
            group = view.group if view is not None else None
            policy = next(
                (p for p in self._settings.cost_policies if _glob_matches(p.agents, p.group, agent, group)), None
            )
            if policy is None:
                continue
            spent = usage[agent]
            # Remember only the latest period reported per agent: memory stays bounded, and an older
            # period handed in late cannot be reported again.
            last_day = self._cost_days.get(agent)
            if (
                policy.per_day_usd is not None
                and spent.cost_day_usd > policy.per_day_usd
                and (last_day is None or spent.day > last_day)
            ):
                self._cost_days[agent] = spent.day
                breaches.append(self._breach(agent, policy, "day", spent, view, now))
            last_hour = self._cost_hours.get(agent)
            if (
                policy.per_hour_usd is not None
                and spent.cost_hour_usd > policy.per_hour_usd
                and (last_hour is None or spent.hour > last_hour)
            ):
                self._cost_hours[agent] = spent.hour
                breaches.append(self._breach(agent, policy, "hour", spent, view, now))
        return breaches

    # -- transitions -----------------------------------------------------------------------------

    def _apply(self, transition: Transition, views: Mapping[str, AgentView], now: datetime, batch: _Batch) -> None:
        agent, state = transition.agent, transition.to_state
        view = views.get(agent)
        incident = self._open.get(agent)
        if incident is not None and view is not None:
            incident.group, incident.labels = view.group, view.labels
        if state is State.UNKNOWN:
            return  # the monitor's blindness, not the agent's fault (SPEC §3): no alert, no hold clock
        if incident is not None and incident.held:
            incident.state, incident.reason, incident.last_change_at = state, transition.reason, transition.at
            return
        if state in _CLOSING:
            if incident is not None:
                # Snapshots resolve too: the agent recovered while the monitor was away (restarted, or
                # reconnecting to the broker), and people holding the trigger need the resolve.
                reason = transition.reason if state is State.HEALTHY else _stopped(transition.reason)
                self._close(incident, transition.at, reason, state, batch)
            return
        if incident is not None:
            incident.state, incident.reason = state, transition.reason
            rule = None if transition.snapshot else self._rule_for(agent, state, view)
            if rule is not None and _RANK[rule.severity] > _RANK[incident.severity]:
                # Escalation: the same incident id again with the higher severity (an update, PagerDuty-style).
                # The channels widen to both rules', so whoever heard the trigger also hears the resolve.
                incident.severity, incident.rule = rule.severity, rule.name
                incident.channels = _union(incident.channels, self._channels(rule))
                if incident.notified:  # a silenced or folded incident stays quiet for its whole life
                    batch.send(self._send(incident, Event.TRIGGER, transition.at, transition.reason), incident)
            return
        if transition.snapshot:
            return  # state learned from retained messages never opens an incident (SPEC §2)
        rule = self._rule_for(agent, state, view)
        if rule is not None:
            self._open_incident(transition, rule, view, views, now, batch)

    def _open_incident(
        self,
        transition: Transition,
        rule: Rule,
        view: AgentView | None,
        views: Mapping[str, AgentView],
        now: datetime,
        batch: _Batch,
    ) -> None:
        agent = transition.agent
        incident = _Incident(
            incident_id=self._new_id(agent, transition.at),
            agent=agent,
            state=transition.to_state,
            severity=rule.severity,
            rule=rule.name,
            opened_at=transition.at,
            notified=False,
            reason=transition.reason,
            channels=self._channels(rule),
            group=view.group if view is not None else None,
            labels=view.labels if view is not None else (),
        )
        # Every opening counts towards flapping, also silenced and folded ones: the agent bounced all the same.
        openings = self._count_opening(agent, transition.at)
        root = self._find_root(agent, views)
        self._open[agent] = incident
        # Folding before silence: the root then lists this agent as impacted, and when the root
        # resolves the silence is judged again for this agent on its own.
        if root is not None:
            self._fold(incident, root)
            return
        if self._silenced(agent, incident.group, now):
            return
        incident.notified = True
        if self._settings.flap_count and openings >= self._settings.flap_count:
            incident.held, incident.last_change_at = True, transition.at
            reason = f"{openings} incidents within {self._settings.flap_window_s:g} s; latest: {transition.reason}"
            batch.send(self._send(incident, Event.FLAPPING, transition.at, reason), incident)
            return
        batch.send(self._send(incident, Event.TRIGGER, transition.at, transition.reason), incident)

    def _close(self, incident: _Incident, at: datetime, reason: str, state: State, batch: _Batch) -> None:
        del self._open[incident.agent]
        if incident.notified:
            duration_s = max(0.0, (at - incident.opened_at).total_seconds())
            batch.send(self._send(incident, Event.RESOLVE, at, reason, duration_s, state.value), incident)
        if incident.impacted:
            # Unfolded at the end of the batch: a dependent recovering in the same batch as its root then
            # stays silent instead of triggering and resolving at once.
            batch.closed_roots.append((incident, at))

    # -- flapping, restore, reminders ------------------------------------------------------------

    def _count_opening(self, agent: str, at: datetime) -> int:
        if not self._settings.flap_count:
            return 1
        openings = self._openings.setdefault(agent, deque())
        openings.append(at)
        # "Within flap_window_s" includes an opening exactly flap_window_s ago.
        while (at - openings[0]).total_seconds() > self._settings.flap_window_s:
            openings.popleft()
        return len(openings)

    def _release_if_stable(self, incident: _Incident, view: AgentView | None, now: datetime, batch: _Batch) -> None:
        assert incident.last_change_at is not None
        if (now - incident.last_change_at).total_seconds() < self._settings.flap_stable_s:
            return
        # Prefer the view (the truth now); without one, the latest transition seen.
        state = view.state if view is not None else _as_state(incident.state)
        if state is None or state is State.UNKNOWN:
            return  # the monitor cannot tell how the agent is: keep holding until it can
        reason = view.reason if view is not None else incident.reason
        incident.held, incident.last_change_at = False, None
        # A fresh start: the bounces before the hold must not make the next incident "flapping" again.
        self._openings.pop(incident.agent, None)
        if state in _CLOSING:
            # The resolve comes when the agent was judged stable, so its duration includes the hold.
            self._close(incident, now, reason if state is State.HEALTHY else _stopped(reason), state, batch)
            return
        # Settled in a bad state: people must act. The same incident id, now an ordinary trigger.
        rule = self._rule_for(incident.agent, state, view)
        if rule is not None:  # no rule for this state: keep the flapping incident's severity and channels
            incident.severity, incident.rule, incident.channels = rule.severity, rule.name, self._channels(rule)
        incident.state, incident.reason = state, reason
        batch.send(self._send(incident, Event.TRIGGER, now, f"settled after flapping: {reason}"), incident)

    def _reconcile_restored(self, incident: _Incident, view: AgentView, batch: _Batch) -> None:
        """A restored incident whose agent is known again without a transition (the state stored in the
        history said it had already recovered): close it, else it would stay open forever."""
        incident.restored = False
        if view.state in _CLOSING:
            at = max(view.since, incident.opened_at)
            reason = view.reason if view.state is State.HEALTHY else _stopped(view.reason)
            self._close(incident, at, reason, view.state, batch)

    def _remind(self, views: Mapping[str, AgentView], now: datetime, batch: _Batch) -> None:
        every_s = self._settings.reminder_every_s
        if not every_s:
            return
        incidents = [*self._open.values(), *([self._lost] if self._lost is not None else [])]
        for incident in incidents:
            if not incident.notified or incident.held:
                continue
            if incident is not self._lost:
                view = views.get(incident.agent)
                # Without the broker the monitor knows nothing of the agents: "still down" would be a guess.
                if self._lost is not None or (view is not None and view.state is State.UNKNOWN):
                    continue
            if incident.last_sent_at is None:  # restored: count from now, not from before the restart
                incident.last_sent_at = now
                continue
            if (now - incident.last_sent_at).total_seconds() < every_s:
                continue
            if self._silenced(incident.agent, incident.group, now):
                continue  # a silence set after the trigger quiets reminders (the resolve still goes out)
            batch.send(self._send(incident, Event.REMINDER, now, incident.reason), incident)

    # -- dependency folding ----------------------------------------------------------------------

    def _find_root(self, agent: str, views: Mapping[str, AgentView]) -> _Incident | None:
        """The open bad incident of the nearest agent `agent` depends on (transitively), or None."""
        seen = {agent}
        queue = deque(_depends_on(agent, views))
        while queue:
            dependency = queue.popleft()
            if dependency in seen:  # cycles in depends_on end here
                continue
            seen.add(dependency)
            incident = self._open.get(dependency)
            if incident is not None and incident.state in _BAD:
                top = self._top(incident)
                return top if top.agent != agent else None
            queue.extend(_depends_on(dependency, views))
        return None

    def _top(self, incident: _Incident) -> _Incident:
        """Follow folds up to the incident people were told about, so impacted lists are where they look."""
        seen = {incident.agent}
        while incident.root is not None and incident.root not in seen and incident.root in self._open:
            seen.add(incident.root)
            incident = self._open[incident.root]
        return incident

    @staticmethod
    def _fold(incident: _Incident, root: _Incident) -> None:
        incident.root = root.agent
        if incident.agent not in root.impacted:
            root.impacted.append(incident.agent)

    def _unfold(
        self, root: _Incident, at: datetime, views: Mapping[str, AgentView], now: datetime, batch: _Batch
    ) -> None:
        """The root closed: agents folded into it that are still down get their own trigger now."""
        for agent in root.impacted:
            incident = self._open.get(agent)
            if incident is None or incident.root != root.agent:
                continue  # recovered meanwhile (silently), or a newer incident of that agent
            incident.root = None  # still bad: a folded incident closes as soon as its agent recovers
            other_root = self._find_root(agent, views)
            if other_root is not None:  # still down because of another dependency
                self._fold(incident, other_root)
                continue
            if self._silenced(agent, incident.group, now):
                continue  # judged now, on its own: the root's silence (or lack of one) says nothing about it
            incident.notified = True
            batch.send(self._send(incident, Event.TRIGGER, at, incident.reason), incident)

    # -- small helpers ---------------------------------------------------------------------------

    def _rule_for(self, agent: str, state: State, view: AgentView | None) -> Rule | None:
        group = view.group if view is not None else None
        labels = set(view.labels) if view is not None else set()
        for rule in self._settings.rules:
            if (
                state in rule.states
                and _glob_matches(rule.agents, rule.group, agent, group)
                and labels.issuperset(rule.labels)
            ):
                return rule
        return None

    def _channels(self, rule: Rule) -> tuple[str, ...]:
        return rule.channels or self._settings.notify

    def _silenced(self, agent: str, group: str | None, now: datetime) -> bool:
        return any(silence.covers(agent, group, now) for silence in self._silences)

    def _new_id(self, agent: str, at: datetime) -> str:
        """`<agent>/<opened_at, compact UTC>`: stable across restarts, so channels deduplicate on it."""
        base = f"{agent}/{_compact_utc(at)}"
        last_base, repeats = self._last_ids.get(agent, ("", 0))
        # Two incidents of one agent opened within the same millisecond still get distinct ids.
        repeats = repeats + 1 if base == last_base else 1
        self._last_ids[agent] = (base, repeats)
        return base if repeats == 1 else f"{base}-{repeats}"

    @staticmethod
    def _send(
        incident: _Incident,
        event: Event,
        at: datetime,
        reason: str,
        duration_s: float | None = None,
        state: str | None = None,
    ) -> Notification:
        incident.last_sent_at = at
        return Notification(
            event=event,
            incident_id=incident.incident_id,
            agent=incident.agent,
            state=str(state if state is not None else incident.state),
            severity=incident.severity,
            reason=reason,
            at=at,
            duration_s=duration_s,
            impacted=tuple(incident.impacted),
            rule=incident.rule,
            channels=incident.channels,
            labels=incident.labels,
            group=incident.group,
        )

    def _finish(self, batch: _Batch, views: Mapping[str, AgentView], now: datetime) -> list[Notification]:
        """Unfold what closed roots leave behind; triggers list the agents folded into them in the same batch."""
        for root, at in batch.closed_roots:
            self._unfold(root, at, views, now, batch)
        sent = [
            (replace(notification, impacted=tuple(incident.impacted)), incident)
            if notification.event in (Event.TRIGGER, Event.FLAPPING) and incident.impacted
            else (notification, incident)
            for notification, incident in batch.sent
        ]
        return self._guard.admit(sent, now)

    def _breach(
        self, agent: str, policy: CostPolicy, period: str, spent: CostUsage, view: AgentView | None, now: datetime
    ) -> CostBreach:
        if period == "day":
            assert policy.per_day_usd is not None
            spent_usd, limit_usd, key = spent.cost_day_usd, policy.per_day_usd, spent.day.isoformat()
            reason = f"cost today ${spent_usd:.2f} over the ${limit_usd:.2f} daily limit"
        else:
            assert policy.per_hour_usd is not None
            spent_usd, limit_usd = spent.cost_hour_usd, policy.per_hour_usd
            key = spent.hour.astimezone(UTC).strftime("%Y-%m-%dT%H:00Z")
            reason = f"cost this hour ${spent_usd:.2f} over the ${limit_usd:.2f} hourly limit"
        notification = Notification(
            event=Event.TRIGGER,
            # One id per agent and period: a restarted monitor that reports it again is deduplicated downstream.
            incident_id=f"cost/{agent}/{period}/{key}",
            agent=agent,
            state=(view.state if view is not None else State.UNKNOWN).value,
            severity=Severity.WARNING,
            reason=f"{reason} (action: {policy.action})",
            at=now,
            rule=policy.name,
            channels=self._settings.notify,
            labels=view.labels if view is not None else (),
            group=view.group if view is not None else None,
        )
        return CostBreach(agent, policy.name, period, spent_usd, limit_usd, policy.action, now, notification)


# -- the rules file --------------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | float | int) -> float:
    """Seconds from "90s", "10m", "2h", "1d", "1.5h", or a plain number of seconds (ValueError otherwise)."""
    if isinstance(text, bool):  # a bool is an int to Python, never a duration to a person
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, int | float):
        seconds = float(text)
    elif isinstance(text, str):
        match = _DURATION.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 10m, 2h, 1d)")
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    else:
        raise ValueError(f"not a duration: {text!r}")
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"a duration must be a finite number >= 0, got {text!r}")
    return seconds


_TOP_KEYS = frozenset({"defaults", "rule", "cost"})
_DEFAULTS_KEYS = frozenset(
    {"notify", "flap_count", "flap_window", "flap_stable", "reminder_every", "max_pages_per_minute"}
)
_RULE_KEYS = frozenset({"name", "agents", "group", "labels", "states", "severity", "notify"})
_COST_KEYS = frozenset({"name", "agents", "group", "per_day_usd", "per_hour_usd", "action"})


class _FileReader:
    """Typed reads out of the parsed TOML, every error naming the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, where: str, problem: str) -> ValueError:
        return ValueError(f"{self.path}: {where}: {problem}")

    def table(self, value: Any, where: str, allowed: frozenset[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(where, "must be a table")
        unknown = sorted(set(value) - allowed)
        if unknown:
            key = f"{where}.{unknown[0]}" if where else unknown[0]
            raise self.error(key, f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return value

    def tables(self, value: Any, where: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.error(where, f"must be an array of tables ([[{where}]])")
        return value

    def text(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.error(where, "must be a non-empty string")
        return value

    def texts(self, value: Any, where: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
            raise self.error(where, "must be a list of non-empty strings")
        return tuple(value)

    def number(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(where, "must be a number")
        return float(value)

    def duration(self, value: Any, where: str) -> float:
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise self.error(where, str(exc)) from None

    def rule(self, value: Any, where: str) -> Rule:
        raw = self.table(value, where, _RULE_KEYS)
        for required in ("name", "states", "severity"):
            if required not in raw:
                raise self.error(f"{where}.{required}", "missing")
        name = self.text(raw["name"], f"{where}.name")
        states: list[State] = []
        for state_name in self.texts(raw["states"], f"{where}.states"):
            state = _as_state(state_name)
            if state is None or state not in _BAD:
                raise self.error(
                    f"{where}.states",
                    f"{state_name!r} cannot page: use degraded and/or unreachable (killed and unknown never alert)",
                )
            states.append(state)
        severity_name = self.text(raw["severity"], f"{where}.severity")
        if severity_name not in set(Severity):
            raise self.error(f"{where}.severity", f"{severity_name!r} is not one of {', '.join(Severity)}")
        labels = raw.get("labels", {})
        if not isinstance(labels, dict) or not all(isinstance(item, str) for item in labels.values()):
            raise self.error(f"{where}.labels", 'must be a table of strings, like { team = "payments" }')
        group = raw.get("group")
        return Rule(
            name=name,
            states=frozenset(states),
            severity=Severity(severity_name),
            agents=self.text(raw.get("agents", "*"), f"{where}.agents"),
            group=None if group is None else self.text(group, f"{where}.group"),
            labels=tuple(sorted(labels.items())),
            channels=self.texts(raw.get("notify", []), f"{where}.notify"),
        )

    def cost(self, value: Any, where: str) -> CostPolicy:
        raw = self.table(value, where, _COST_KEYS)
        if "name" not in raw:
            raise self.error(f"{where}.name", "missing")
        name = self.text(raw["name"], f"{where}.name")
        group = raw.get("group")
        per_day, per_hour = raw.get("per_day_usd"), raw.get("per_hour_usd")
        agents = self.text(raw.get("agents", "*"), f"{where}.agents")
        group_glob = None if group is None else self.text(group, f"{where}.group")
        per_day_usd = None if per_day is None else self.number(per_day, f"{where}.per_day_usd")
        per_hour_usd = None if per_hour is None else self.number(per_hour, f"{where}.per_hour_usd")
        action = self.text(raw.get("action", "alert"), f"{where}.action")
        try:
            return CostPolicy(name, agents, group_glob, per_day_usd, per_hour_usd, action)
        except ValueError as exc:  # limits and action are checked by CostPolicy itself
            raise self.error(where, str(exc)) from None


def load_settings(path: Path) -> AlertSettings:
    """Read the alert rules file (TOML). Every error is a ValueError naming the file and the key.

    Format::

        [defaults]
        notify = ["https://hooks.example.com/fleet"]   # default channels (Apprise URLs)
        flap_count = 4               # incidents within flap_window that make an agent flapping; 0: off
        flap_window = "10m"
        flap_stable = "5m"           # a flapping agent stays held until quiet this long
        reminder_every = "1h"        # absent or "0": no reminders
        max_pages_per_minute = 30    # beyond: one "alert storm" alert, the rest held and recorded; 0: off

        [[rule]]                     # in order: the FIRST rule matching the agent and its new state wins
        name = "payments down"
        agents = "payment-*"         # glob on the agent id (case-sensitive); default "*"
        group = "payments"           # optional glob on the agent's group
        labels = { team = "payments" }   # optional: every pair must be among the agent's labels
        states = ["unreachable", "degraded"]   # only these two can page
        severity = "critical"        # critical | warning | info
        notify = ["slack://T/B/C"]   # optional: this rule's channels instead of the defaults

        [[cost]]                     # the first matching policy applies to an agent
        name = "llm budget"
        agents = "*"                 # and optional group, as for rules
        per_day_usd = 10             # per UTC day; at least one of the two limits
        per_hour_usd = 2             # per UTC clock hour
        action = "pause"             # alert | pause | kill

    Durations are "90s", "10m", "2h", "1d" or a number of seconds. If the file has any [[rule]],
    those replace the built-in rules (unreachable: critical, degraded: warning) entirely. Unknown
    keys are errors: a typo must not silently disable alerting.
    """
    reader = _FileReader(path)
    try:
        with path.open("rb") as source:
            raw = tomllib.load(source)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the alert rules: {exc.strerror or exc}") from None
    raw = reader.table(raw, "", _TOP_KEYS)
    defaults = reader.table(raw.get("defaults", {}), "defaults", _DEFAULTS_KEYS)
    settings: dict[str, Any] = {}
    if "notify" in defaults:
        settings["notify"] = reader.texts(defaults["notify"], "defaults.notify")
    if "flap_count" in defaults:
        flap_count = defaults["flap_count"]
        if isinstance(flap_count, bool) or not isinstance(flap_count, int) or not (flap_count == 0 or flap_count >= 2):
            raise reader.error("defaults.flap_count", "must be a whole number >= 2, or 0 to turn flap detection off")
        settings["flap_count"] = flap_count
    if "flap_window" in defaults:
        settings["flap_window_s"] = reader.duration(defaults["flap_window"], "defaults.flap_window")
        if settings["flap_window_s"] <= 0:
            raise reader.error("defaults.flap_window", "must be longer than 0")
    if "flap_stable" in defaults:
        settings["flap_stable_s"] = reader.duration(defaults["flap_stable"], "defaults.flap_stable")
    if "reminder_every" in defaults:
        settings["reminder_every_s"] = reader.duration(defaults["reminder_every"], "defaults.reminder_every") or None
    if "max_pages_per_minute" in defaults:
        pages = defaults["max_pages_per_minute"]
        if isinstance(pages, bool) or not isinstance(pages, int) or pages < 0:
            raise reader.error("defaults.max_pages_per_minute", "must be a whole number >= 0 (0 turns the guard off)")
        settings["max_pages_per_minute"] = pages
    rules = reader.tables(raw.get("rule", []), "rule")
    if rules:
        settings["rules"] = tuple(reader.rule(rule, f"rule[{index}]") for index, rule in enumerate(rules, 1))
    costs = reader.tables(raw.get("cost", []), "cost")
    settings["cost_policies"] = tuple(reader.cost(cost, f"cost[{index}]") for index, cost in enumerate(costs, 1))
    return AlertSettings(**settings)
