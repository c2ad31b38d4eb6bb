"""The health state machine (SPEC §3): one agent's view, advanced by messages and clock ticks, time passed in.

No clock reads, sockets or SQL here. Every function takes `now` (the monitor's clock, an aware
datetime) and returns the new view plus the transition it caused, if any.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from fleetpulse.publisher.protocol import HealthMessage, Kind, ReportedStatus

__all__ = [
    "AgentView",
    "Outcome",
    "State",
    "ThresholdPolicy",
    "Thresholds",
    "Transition",
    "apply_message",
    "broker_lost",
    "listening_resumed",
    "next_check_at",
    "tick",
]


class State(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNREACHABLE = "unreachable"
    KILLED = "killed"
    UNKNOWN = "unknown"


class Outcome(StrEnum):
    """What a message did, for counters and idempotence tests."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"  # same session and a seq already seen (amqtt's double retained delivery, replays)
    STALE_WILL = "stale_will"  # a will for a session that is no longer current, or after its own stop
    STALE_SESSION = "stale_session"  # a late heartbeat or stop of a session the agent has since replaced
    LATE = "late"  # an older heartbeat not seen before (queued while a newer retained copy overtook it):
    # stored for the history, but it changes nothing about the present
    CONFIRMED = "confirmed"  # the retained copy of the last heartbeat stored: nothing was sent since and no
    # will fired, so an agent a restart or a lost broker made unknown is as it was (no new row)


# Which of the last SEEN_WINDOW seqs of the current session were seen, as a bit mask (bit i: seq
# last_seq - i). Distinguishes a late first delivery from a duplicate without unbounded memory.
SEEN_WINDOW = 1024
_SEEN_ALL = (1 << SEEN_WINDOW) - 1


# Sessions an agent replaced, remembered so their late messages (paho resends unacknowledged QoS 1
# messages after a reconnect) cannot make them current again.
RETIRED_SESSIONS_KEPT = 8


@dataclass(frozen=True)
class Thresholds:
    """When an agent counts as late, gone, stalled or failing. `None` means "from interval_s"."""

    degraded_after_s: float | None = None  # default 3 x interval_s
    unreachable_after_s: float | None = None  # default 10 x interval_s
    stall_after_s: float = 600.0  # no task progress for this long -> degraded; 0 turns it off
    failure_ratio: float = 0.5  # failed / (ok + failed) above this over the window -> degraded
    failure_window: int = 10  # heartbeats the failure ratio looks back over; 0 turns it off
    failure_min_tasks: int = 10  # fewer tasks than this in the window never count as failing

    def __post_init__(self) -> None:
        for name in ("degraded_after_s", "unreachable_after_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
        if self.stall_after_s < 0 or not 0 <= self.failure_ratio <= 1:
            raise ValueError("stall_after_s must be >= 0 and failure_ratio between 0 and 1")
        if self.failure_window < 0 or self.failure_min_tasks < 0:
            raise ValueError("failure_window and failure_min_tasks must be >= 0")

    def degraded_after(self, interval_s: float) -> float:
        return self.degraded_after_s if self.degraded_after_s is not None else 3.0 * interval_s

    def unreachable_after(self, interval_s: float) -> float:
        after = self.unreachable_after_s if self.unreachable_after_s is not None else 10.0 * interval_s
        return max(after, self.degraded_after(interval_s))


@dataclass(frozen=True)
class ThresholdPolicy:
    """Global thresholds plus per-agent overrides matched by id glob (first match wins)."""

    default: Thresholds = field(default_factory=Thresholds)
    overrides: tuple[tuple[str, Thresholds], ...] = ()

    def for_agent(self, agent: str) -> Thresholds:
        for pattern, thresholds in self.overrides:
            if fnmatch.fnmatchcase(agent, pattern):
                return thresholds
        return self.default


@dataclass(frozen=True)
class Transition:
    """One recorded change of state (a `transitions` row)."""

    agent: str
    at: datetime
    from_state: State
    to_state: State
    reason: str
    snapshot: bool = False  # learned from the retained snapshot at (re)subscribe: never alerts


@dataclass(frozen=True)
class AgentView:
    """Everything the monitor believes about one agent."""

    agent: str
    state: State
    reason: str
    since: datetime  # when the current state began
    first_seen: datetime
    interval_s: float
    name: str = ""
    host: str = ""
    pid: int | None = None
    version: str = ""
    group: str | None = None
    depends_on: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    session: str = ""
    last_seq: int = -1
    last_heartbeat_at: datetime | None = None  # monitor clock, last heartbeat received
    # Staleness is measured from here: the last heartbeat, or the moment the monitor started listening
    # again (start, broker reconnect), whichever is later. The monitor cannot blame an agent for
    # silence it was not there to hear.
    heard_at: datetime | None = None
    reported_status: ReportedStatus = ReportedStatus.HEALTHY
    reported_reason: str | None = None
    last_progress_at: datetime | None = None  # agent clock
    last_sent_at: datetime | None = None  # agent clock, of the last heartbeat: stall is judged skew-free
    paused: bool = False
    recent_tasks: tuple[tuple[int, int], ...] = ()  # (ok, failed) of the last heartbeats
    # While `unknown` (monitor just started, or lost the broker): the last state it knew, so that
    # learning the truth again is a transition only when the truth differs.
    known_state: State | None = None
    known_reason: str | None = None
    retired_sessions: tuple[str, ...] = ()
    seen_mask: int = _SEEN_ALL  # resumed views assume everything up to last_seq was seen


def _with_identity(view: AgentView, message: HealthMessage) -> AgentView:
    depends_on = tuple(message.depends_on)
    labels = tuple(sorted(message.labels.items()))
    if (
        view.name == message.name
        and view.host == message.host
        and view.pid == message.pid
        and view.version == message.version
        and view.group == message.group
        and view.depends_on == depends_on
        and view.labels == labels
        and view.interval_s == message.interval_s
    ):
        return view  # the common case: no copy of the (large) view per heartbeat
    return _evolve(
        view,
        name=message.name,
        host=message.host,
        pid=message.pid,
        version=message.version,
        group=message.group,
        depends_on=depends_on,
        labels=labels,
        interval_s=message.interval_s,
    )


def _new_view(message: HealthMessage, now: datetime) -> AgentView:
    return _with_identity(
        AgentView(
            agent=message.agent,
            state=State.UNKNOWN,
            reason="first seen",
            since=now,
            first_seen=now,
            interval_s=message.interval_s,
        ),
        message,
    )


def _live_state(view: AgentView, now: datetime, thresholds: Thresholds) -> tuple[State, str]:
    """The state a heartbeating (neither stopped nor dead) agent is in at `now`."""
    if view.heard_at is not None:
        silent_s = (now - view.heard_at).total_seconds()
        if silent_s >= thresholds.unreachable_after(view.interval_s):
            return State.UNREACHABLE, f"no heartbeat for {int(silent_s)} s"
        if silent_s >= thresholds.degraded_after(view.interval_s):
            return State.DEGRADED, f"no heartbeat for {int(silent_s)} s"
    if view.reported_status is ReportedStatus.DEGRADED:
        return State.DEGRADED, f"reported: {view.reported_reason or 'degraded'}"
    if view.paused:
        return State.HEALTHY, "paused by operator"
    if (
        thresholds.stall_after_s > 0
        and view.last_progress_at is not None
        and view.last_sent_at is not None
        and view.last_heartbeat_at is not None
    ):
        # Idle on the agent's clock up to its last heartbeat, plus the monitor's time since receiving
        # it: no clock skew between the two machines enters.
        idle_s = (view.last_sent_at - view.last_progress_at).total_seconds()
        idle_s += (now - view.last_heartbeat_at).total_seconds()
        if idle_s >= thresholds.stall_after_s:
            return State.DEGRADED, f"stalled: no task for {int(idle_s)} s"
    ok = sum(tasks[0] for tasks in view.recent_tasks)
    failed = sum(tasks[1] for tasks in view.recent_tasks)
    if ok + failed >= thresholds.failure_min_tasks and failed > thresholds.failure_ratio * (ok + failed):
        return State.DEGRADED, f"failing: {failed} of {ok + failed} recent tasks failed"
    return State.HEALTHY, "heartbeating"


_VIEW_FIELDS = frozenset(f.name for f in fields(AgentView))


def _evolve(view: AgentView, **changes: Any) -> AgentView:
    """`dataclasses.replace` without re-running `__init__`: 5x faster, and this runs per heartbeat."""
    assert changes.keys() <= _VIEW_FIELDS, f"not AgentView fields: {changes.keys() - _VIEW_FIELDS}"
    evolved = object.__new__(AgentView)
    evolved.__dict__.update(view.__dict__, **changes)
    return evolved


def _current(view: AgentView) -> State | None:
    """The state the monitor last knew for sure (None: never known)."""
    return view.known_state if view.state is State.UNKNOWN else view.state


def _move(
    view: AgentView, state: State, reason: str, now: datetime, snapshot: bool = False
) -> tuple[AgentView, Transition | None]:
    """Enter `state`; a transition only when it differs from the last known state."""
    previous = _current(view)
    if previous is state:
        if view.state is state and view.reason == reason and view.known_state is None:
            return view, None
        # Unchanged, or the truth is what it was before a monitor restart / broker loss: `since` stays.
        return _evolve(view, state=state, reason=reason, known_state=None, known_reason=None), None
    moved = _evolve(view, state=state, reason=reason, since=now, known_state=None, known_reason=None)
    if previous is None:  # first sight of this agent: nothing changed, it just became known
        return moved, None
    return moved, Transition(view.agent, now, previous, state, reason, snapshot)


def apply_message(
    view: AgentView | None, message: HealthMessage, now: datetime, thresholds: Thresholds, snapshot: bool = False
) -> tuple[AgentView, Transition | None, Outcome]:
    """Advance `view` by one health message received at `now`.

    `snapshot`: the message was retained, delivered because the monitor (re)subscribed. It restores
    the view; a transition it causes is marked as learned from the snapshot (SPEC §2: never alerts).
    """
    if view is None:
        view = _new_view(message, now)
    current = _current(view)
    same_session = message.session == view.session
    if message.session in view.retired_sessions:
        return view, None, Outcome.STALE_WILL if message.kind is Kind.WILL else Outcome.STALE_SESSION
    if view.session and not same_session:
        retired = (*view.retired_sessions, view.session)[-RETIRED_SESSIONS_KEPT:]
    else:
        retired = view.retired_sessions

    if message.kind is Kind.WILL:
        if view.session and not same_session:
            return view, None, Outcome.STALE_WILL
        if current is State.KILLED and view.session:
            # The process died between its stop and its clean disconnect: the stop stands.
            return view, None, Outcome.STALE_WILL
        if current is State.UNREACHABLE and view.state is not State.UNKNOWN and view.reason.startswith("will"):
            return view, None, Outcome.DUPLICATE
        view = _evolve(_with_identity(view, message), session=message.session)
        moved, transition = _move(view, State.UNREACHABLE, "will: connection lost", now, snapshot)
        return moved, transition, Outcome.APPLIED

    if message.kind is Kind.STOP:
        if same_session and current is State.KILLED and view.state is not State.UNKNOWN:
            return view, None, Outcome.DUPLICATE
        view = _evolve(_with_identity(view, message), session=message.session, retired_sessions=retired)
        reason = f"stopped: {message.reason or 'no reason given'}"
        moved, transition = _move(view, State.KILLED, reason, now, snapshot)
        return moved, transition, Outcome.APPLIED

    assert message.seq is not None and message.status is not None  # HealthMessage enforces it for heartbeats
    if snapshot and same_session and message.seq == view.last_seq and view.state is State.UNKNOWN:
        confirmed = _confirmed(view, now, thresholds)
        if confirmed is not None:
            return confirmed, None, Outcome.CONFIRMED
    if same_session and message.seq <= view.last_seq:
        # Not newer. Either seen already (a replay, amqtt's second copy of a retained message) or a
        # first delivery that a newer retained copy overtook at (re)subscribe: keep that one for the
        # history, but it says nothing about now.
        offset = view.last_seq - message.seq
        if offset >= SEEN_WINDOW or (view.seen_mask >> offset) & 1:
            return view, None, Outcome.DUPLICATE
        return _evolve(view, seen_mask=view.seen_mask | (1 << offset)), None, Outcome.LATE
    gap = message.seq - view.last_seq  # > 0 in the same session; past the window, forget it (no huge shift)
    seen_mask = (((view.seen_mask << gap) | 1) & _SEEN_ALL if gap < SEEN_WINDOW else 1) if same_session else 1
    if same_session and current is State.KILLED:
        # Sent before this session's stop, delivered after it: history, not news.
        return _evolve(view, last_seq=message.seq, seen_mask=seen_mask), None, Outcome.LATE
    tasks = view.recent_tasks if same_session else ()
    if message.metrics is not None:
        tasks = (*tasks, (message.metrics.ok, message.metrics.failed))
        # The last `failure_window` windows. Not `[-failure_window:]`: with a window of 0 that slice keeps
        # everything, so the tuple would grow by one per heartbeat forever and judge all of history.
        tasks = tasks[max(0, len(tasks) - thresholds.failure_window) :]
    progress_at = message.metrics.last_progress_at if message.metrics is not None else None
    previous_reason = view.known_reason if view.state is State.UNKNOWN else view.reason
    view = _evolve(
        _with_identity(view, message),
        session=message.session,
        retired_sessions=retired,
        last_seq=message.seq,
        seen_mask=seen_mask,
        last_sent_at=message.sent_at,
        last_heartbeat_at=now,
        heard_at=now,
        reported_status=message.status,
        reported_reason=message.reason,
        last_progress_at=progress_at or (view.last_progress_at if same_session else None),
        paused=message.paused,
        recent_tasks=tasks,
    )
    state, reason = _live_state(view, now, thresholds)
    if state is State.HEALTHY and current is not None and current is not State.HEALTHY:
        if current in (State.UNREACHABLE, State.KILLED):
            reason = "heartbeat resumed" if same_session else "recovered: new session"
        else:
            reason = f"recovered from: {previous_reason}"
    moved, transition = _move(view, state, reason, now, snapshot)
    return moved, transition, Outcome.APPLIED


def _confirmed(view: AgentView, now: datetime, thresholds: Thresholds) -> AgentView | None:
    """The known state of an unknown view, if its last heartbeat, judged from when it arrived, still says so.

    Without this the agent stays unknown until its next heartbeat (up to one interval) after every
    monitor restart. A state that the silence since has changed is left to the clock (`tick`), which
    records the transition as news rather than as a snapshot.
    """
    if view.known_state not in (State.HEALTHY, State.DEGRADED) or view.last_heartbeat_at is None:
        return None
    view = _evolve(view, heard_at=view.last_heartbeat_at)  # silence counts from the heartbeat, not the restart
    state, reason = _live_state(view, now, thresholds)
    if state is not view.known_state:
        return None
    return _evolve(view, state=state, reason=reason, known_state=None, known_reason=None)


def tick(view: AgentView, now: datetime, thresholds: Thresholds) -> tuple[AgentView, Transition | None]:
    """Re-evaluate the time-based rules (late heartbeat, stall) at `now`.

    Only while the monitor hears the broker: silence it could not have heard proves nothing
    (after `broker_lost`, call `listening_resumed` before ticking again).
    """
    if view.state is State.UNKNOWN:
        if view.known_state is None or view.heard_at is None:
            return view, None
        if (now - view.heard_at).total_seconds() < thresholds.degraded_after(view.interval_s):
            return view, None  # still within the grace after listening resumed
        if view.known_state in (State.UNREACHABLE, State.KILLED):
            # No news of a dead or stopped agent: it is as it was (no transition).
            restored = _evolve(view, state=view.known_state, reason=view.known_reason or view.reason)
            return _evolve(restored, known_state=None, known_reason=None), None
        state, reason = _live_state(view, now, thresholds)
        return _move(view, state, reason, now)
    if view.state not in (State.HEALTHY, State.DEGRADED):
        return view, None  # unreachable and killed only leave on a message
    state, reason = _live_state(view, now, thresholds)
    if state is view.state:
        return view, None  # keep the reason stable while the state holds ("no heartbeat for N s" would churn)
    return _move(view, state, reason, now)


def _after(moment: datetime, seconds: float) -> datetime:
    # Rounded up to the microsecond (timedelta's resolution): a tick at the result is never early.
    return moment + timedelta(microseconds=math.ceil(seconds * 1_000_000))


def next_check_at(view: AgentView, thresholds: Thresholds) -> datetime | None:
    """When `tick` will next change `view` if no message comes first; None if only a message can.

    Time only makes things worse: silence and idleness grow, so a healthy view can turn degraded or
    unreachable, a degraded one unreachable, and an unknown one is judged when its grace ends. The
    answer may lie in the past (tick now). A monitor that ticks each view then, rescheduling it whenever
    it changes, sees the transitions of one that ticks every view all the time (the property test in
    tests/monitor/test_health.py), at a cost that does not grow with the fleet.
    """
    if view.heard_at is None:
        return None
    degraded_at = _after(view.heard_at, thresholds.degraded_after(view.interval_s))
    unreachable_at = _after(view.heard_at, thresholds.unreachable_after(view.interval_s))
    if view.state is State.UNKNOWN:
        return degraded_at if view.known_state is not None else None
    if view.state is State.DEGRADED:
        return unreachable_at  # degraded for being late, reported, stalled or failing: only worse by time
    if view.state is not State.HEALTHY:
        return None  # unreachable and killed only leave on a message
    if view.reported_status is ReportedStatus.DEGRADED:
        return min(degraded_at, unreachable_at)  # (cannot be healthy; defensive)
    deadlines = [degraded_at, unreachable_at]
    if (
        thresholds.stall_after_s > 0
        and not view.paused
        and view.last_progress_at is not None
        and view.last_sent_at is not None
        and view.last_heartbeat_at is not None
    ):
        idle_at_heartbeat_s = (view.last_sent_at - view.last_progress_at).total_seconds()
        deadlines.append(_after(view.last_heartbeat_at, thresholds.stall_after_s - idle_at_heartbeat_s))
    return min(deadlines)


def broker_lost(view: AgentView, now: datetime) -> AgentView:
    """The monitor lost the broker: it has no trustworthy view of anyone (no transition, no outage)."""
    if view.state is State.UNKNOWN:
        return _evolve(view, reason="monitor lost the broker")
    return _evolve(
        view, state=State.UNKNOWN, known_state=view.state, known_reason=view.reason, reason="monitor lost the broker"
    )


def listening_resumed(view: AgentView, now: datetime, reason: str = "monitor restarted") -> AgentView:
    """The monitor (re)subscribed at `now`: silence counts from here; unknown until the truth is known."""
    if view.state is State.UNKNOWN:
        return _evolve(view, reason=reason, heard_at=now)
    return _evolve(
        view, state=State.UNKNOWN, known_state=view.state, known_reason=view.reason, reason=reason, heard_at=now
    )
