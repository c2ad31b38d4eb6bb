"""The monitor's core: one thread turns queued MQTT events into state transitions and batched DuckDB rows."""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import heapq
import json
import logging
import os
import queue
import sys
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fleetpulse.monitor.alert_policy import AlertSettings
from fleetpulse.monitor.alerting import Alerting
from fleetpulse.monitor.fleet import agent_record
from fleetpulse.monitor.health import (
    AgentView,
    Outcome,
    ThresholdPolicy,
    Thresholds,
    Transition,
    apply_message,
    broker_lost,
    listening_resumed,
    next_check_at,
    tick,
)
from fleetpulse.monitor.history import usage_today
from fleetpulse.monitor.reader import ReaderProcess
from fleetpulse.monitor.retention import (
    MINUTE_RETENTION_S,
    RAW_RETENTION_S,
    RETENTION_EVERY_S,
    Retention,
    roll_up_limits,
)
from fleetpulse.monitor.sidecar import new_nonce, proof, sidecar_path, write_private
from fleetpulse.monitor.store import Store, WriteBatch
from fleetpulse.monitor.subscriber import BrokerConnected, BrokerLost, Event, Received, Subscriber
from fleetpulse.monitor.usage import AgentUsage, UsageBook
from fleetpulse.publisher.errors import FleetpulseError
from fleetpulse.publisher.mqtt import DEFAULT_BROKER_URL, parse_broker_url
from fleetpulse.publisher.protocol import (
    Command,
    ControlCommand,
    Kind,
    ProtocolError,
    agent_id_from_health_topic,
    control_topic,
    format_timestamp,
    group_control_topic,
    health_topic,
    is_valid_id,
    parse_control,
    parse_health,
    validate_id,
)

__all__ = ["ForgetResult", "Monitor", "MonitorConfig", "NothingToForget", "sidecar_path"]

_log = logging.getLogger(__name__)

TransitionListener = Callable[[list[Transition]], None]

AGENT_ROW_REFRESH_S = 5.0  # an agent row that only saw more heartbeats is rewritten at most this often
# The monitor's own sign of life in monitor_events: after a crash (no `stopped` row), the history's
# gap begins at the last one (SPEC §4 views count a gap as neither outage nor uptime).
ALIVE_EVERY_S = 15.0
HELD_BACK_GRACE_S = 5.0  # the reader held back this recently: the monitor is behind (and not flapping)
# A live message whose sent_at is further than this from the monitor's clock is refused: the agent's
# clock is broken (or the message forged), and its stall figures would be nonsense. Staleness is judged
# by receive time anyway (SPEC §2), so honest skew of minutes is fine.
MAX_CLOCK_SKEW_S = 86_400.0
FORGET_TIMEOUT_S = 30.0  # a forget waits this long for the core thread (behind a backlog) before giving up


@dataclass
class MonitorConfig:
    broker: str = DEFAULT_BROKER_URL
    db_path: Path = Path("fleetpulse.duckdb")
    monitor_id: str = "default"
    thresholds: ThresholdPolicy = field(default_factory=ThresholdPolicy)
    tick_interval_s: float = 0.5  # time-based rules are evaluated at least this often
    flush_interval_s: float = 0.25  # heartbeat rows wait at most this long; transitions never wait
    flush_rows: int = 5_000
    rejected_rows_per_s: float = 50.0  # beyond this (burst 500) rejections are only counted
    # Health messages per agent id: a flooding agent is rejected ("rate limit") without costing the rest
    # of the fleet its parsing, storage or state. Heartbeats come every few seconds; the burst covers a
    # monitor restart's queued backlog (10 min of 2 s heartbeats).
    agent_messages_per_s: float = 20.0
    agent_burst: int = 300
    # Known agents at most (issue 14): on an open broker anyone may invent ids, and each one costs memory,
    # a row and a line of /api/agents (100,000 forged ids: an 82 MB answer taking 4.1 s). 20,000 is the top
    # of the fleet size the SPEC designs for (20-20,000 agents) and well inside what the README measures
    # (10,000 and 100,000 agents), so an honest fleet never meets it; a bigger one raises it (--max-agents).
    # Beyond it, a message from a new id is refused before it creates any state, counted exactly
    # (refused_agent_cap), and the monitor alerts once. Known agents keep working. 0: no cap.
    max_agents: int = 20_000
    # A broker shutting down gracefully (Mosquitto on SIGTERM) publishes the will of every client it
    # drops, the monitor's own included, just before it drops the monitor. Will-caused transitions are
    # held this long; if the broker goes away meanwhile they were a shutdown, not deaths.
    will_settle_s: float = 0.1
    # After the monitor reconnects, the broker may hand it wills it published while it shut down (queued
    # for the monitor's persistent session, or retained): after a restart every agent's will arrives,
    # though the agents are alive and reconnecting. For this long after a reconnect, a will is held
    # until the window ends and dropped if its agent comes back with a new session meanwhile (the SDK
    # reconnects within 30 s, its longest backoff); an agent that does not come back is released as
    # unreachable. The cost: a crash-and-restart inside the window is not recorded as an outage.
    reconnect_settle_s: float = 30.0
    # The monitor sends itself a probe through the broker every tick. With no probe back for this long,
    # the broker has stopped delivering (stalled, partitioned, or shutting down without closing our
    # connection yet): agents become unknown and the clock stops judging them, rather than marking the
    # whole fleet late. Detected through paho alone this would take 1.5 x keep-alive (15 s).
    probe_timeout_s: float = 3.0
    gil_switch_interval_s: float = 0.0005
    # Read MQTT in a child process (monitor/reader.py) instead of a thread of this one: the socket
    # reading then has a core of its own instead of sharing the GIL with the core thread. (The child
    # stamps `received_at` with the real clock: a Monitor given a test clock should read in a thread.)
    reader_process: bool = False
    alerts: AlertSettings = field(default_factory=AlertSettings)  # rules; built-in defaults (SPEC §3)
    notify: tuple[str, ...] = ()  # channel URLs for every alert (--notify), besides the rules file's
    alert_backoff_s: tuple[float, ...] = (1, 2, 5, 15, 60, 300)  # waits between delivery attempts
    cost_check_interval_s: float = 5.0  # cost policies are evaluated this often
    # Retention (monitor/retention.py): heartbeats stay raw for raw_retention_s (7 days), then per minute
    # until minute_retention_s (90 days); per-hour sums, transitions and events are kept forever. The core
    # thread looks for work every retention_every_s (10 min; 0 turns retention off), one hour of data at a time.
    raw_retention_s: float = RAW_RETENTION_S
    minute_retention_s: float = MINUTE_RETENTION_S
    retention_every_s: float = RETENTION_EVERY_S

    def __post_init__(self) -> None:
        if isinstance(self.max_agents, bool) or not isinstance(self.max_agents, int) or self.max_agents < 0:
            raise ValueError(f"max_agents must be a whole number >= 0 (0: no cap), got {self.max_agents!r}")
        if self.retention_every_s > 0:
            roll_up_limits(self.raw_retention_s, self.minute_retention_s)  # ValueError now, not in the core


class NothingToForget(FleetpulseError, LookupError):
    """`forget` was given a pattern that matches no known agent."""


@dataclass(frozen=True)
class ForgetResult:
    """What a forget did: the agents dropped, their incidents closed, its id in the `commands` audit log."""

    pattern: str
    agents: tuple[str, ...]
    incidents_closed: int
    command_id: str


@dataclass(frozen=True)
class _ForgetRequest:
    """Handed to the core thread through the event queue: views change only there."""

    pattern: str
    reason: str
    issued_by: str
    answer: Future[ForgetResult]


def check_forget_pattern(pattern: str, every: bool) -> None:
    """ValueError with what to fix, for a pattern forget must refuse before looking at any agent."""
    if not pattern or len(pattern) > 256:
        raise ValueError("forget needs an agent id or glob of 1-256 characters (e.g. 'forged-*')")
    if set(pattern) == {"*"} and not every:
        # Forgetting the whole fleet must be deliberate: a stray shell glob must not do it.
        raise ValueError("the pattern '*' forgets every agent: confirm with --all (API: \"all\": true)")


class _TokenBucket:
    def __init__(self, rate_per_s: float, burst: float, now_s: float | None = None) -> None:
        self._rate, self._burst = rate_per_s, burst
        self._tokens, self._at = burst, time.monotonic() if now_s is None else now_s

    def take(self, now_s: float | None = None) -> bool:
        now = time.monotonic() if now_s is None else now_s
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def full_at(self, now_s: float) -> bool:
        """True when the bucket has refilled: it is then the same as a new one."""
        return self._tokens + (now_s - self._at) * self._rate >= self._burst


class _PerAgentRateLimit:
    """One token bucket per agent id: O(1) per message, memory bounded by the agents active recently.

    Buckets are kept least recently used first. Each call forgets up to two of the oldest that have
    refilled (forgetting loses nothing: a new bucket starts full), and beyond `max_agents` the oldest goes
    regardless, so a stream of made-up ids cannot grow memory.
    """

    def __init__(self, rate_per_s: float, burst: float, max_agents: int = 100_000) -> None:
        self._rate, self._burst, self._max_agents = rate_per_s, burst, max_agents
        self._buckets: OrderedDict[str, _TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, agent: str, now_s: float) -> bool:
        bucket = self._buckets.get(agent)
        if bucket is None:
            bucket = self._buckets[agent] = _TokenBucket(self._rate, self._burst, now_s)
            if len(self._buckets) > self._max_agents:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(agent)
        allowed = bucket.take(now_s)
        for _ in range(2):
            oldest_agent, oldest = next(iter(self._buckets.items()))
            if oldest is bucket or not oldest.full_at(now_s):
                break
            del self._buckets[oldest_agent]
        return allowed


class Monitor:
    """Subscribe, judge, store. `start()` returns once the core runs; `stop()` flushes and says goodbye."""

    def __init__(self, config: MonitorConfig, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        validate_id(config.monitor_id, "monitor id")
        self.config = config
        self._url = parse_broker_url(config.broker)
        self._clock = clock
        self._events: queue.SimpleQueue[Event | list[Event] | _ForgetRequest] = queue.SimpleQueue()
        self._views: dict[str, AgentView] = {}
        self._usage = UsageBook()  # guarded by _views_lock, like the views
        # When each view must next be ticked (health.next_check_at): a heap with lazy deletion, so a
        # tick costs the agents that are due, not the fleet (issue 8: 100,000 agents).
        self._due: list[tuple[datetime, int, str]] = []
        self._due_at: dict[str, datetime] = {}
        self._due_order = 0
        self._views_lock = threading.Lock()
        self._stats: Counter[str] = Counter()
        self._listeners: list[TransitionListener] = []
        self._recent_commands: OrderedDict[str, None] = OrderedDict()
        self._agents_written: dict[str, tuple[tuple[Any, ...], float]] = {}
        # Wills acted on but not yet committed, by agent, in release order: (release at, monotonic),
        # the transition, and the view before the will while the reconnect settle window holds it.
        self._held_wills: dict[str, tuple[float, Transition, AgentView | None]] = {}
        self._settle_until = 0.0  # monotonic: the end of the window after a reconnect
        self._heard_until: datetime | None = None  # received_at of the last message handled
        self._was_behind = False
        self._rejections = _TokenBucket(config.rejected_rows_per_s, 500)
        self._agent_rates = _PerAgentRateLimit(config.agent_messages_per_s, config.agent_burst)
        self._cap_reached = False  # the agent cap refused a new id since the known agents were last under it
        self._connected = False
        self._broker_silent = False
        self._ever_connected = False
        self._stopping = threading.Event()
        self._shutting_down = False
        self._store: Store | None = None
        self._subscriber: Subscriber | ReaderProcess | None = None
        self._core: threading.Thread | None = None
        self.api_url: str | None = None
        self._nonce = new_nonce()  # made again at every start(): the sidecar's secret (monitor/sidecar.py)
        # Channels are built now, so a URL apprise cannot use is an error at startup, not at 3 am.
        self.alerting = Alerting(config.alerts, config.notify, config.monitor_id, config.alert_backoff_s)
        self._last_cost_check = 0.0

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self, api_url: str | None = None) -> Monitor:
        """Open the database (StoreLocked if another process holds it), resume, subscribe, run."""
        self.api_url = api_url
        self._nonce = new_nonce()
        # paho's network thread and the core thread share the GIL. With CPython's default 5 ms switch
        # interval the busy core starves the socket reader (measured: the core waited on an empty queue
        # half the time while the broker had thousands queued). A shorter interval lets the reader in.
        sys.setswitchinterval(min(sys.getswitchinterval(), self.config.gil_switch_interval_s))
        self._store = Store(self.config.db_path)
        now = self._clock()
        with self._views_lock:
            self._views = {
                agent: listening_resumed(view, now, "monitor starting")
                for agent, view in self._store.load_views().items()
            }
            self._schedule_all()
            for agent, usage in usage_today(self._store, now).items():
                self._usage.seed(agent, usage)
        self._store.write(WriteBatch(events=[(now, self.config.monitor_id, "started", self._url.display)]))
        self.alerting.start(self._store, now)
        if len(self._views) < self.config.max_agents or not self.config.max_agents:
            # A cap alert restored from before a restart whose known agents are now under the cap: resolve it.
            self.alerting.agent_cap_cleared(now, len(self._views), self.config.max_agents)
        self._write_sidecar()
        if self.config.reader_process:
            self._subscriber = ReaderProcess(self._url, self.config.monitor_id, self._events, {"api": api_url})
        else:
            self._subscriber = Subscriber(
                self._url, self.config.monitor_id, self._events, self._clock, presence={"api": api_url}
            )
        self._core = threading.Thread(target=self._run, name="fleetpulse-core", daemon=True)
        self._core.start()
        self._subscriber.start()
        _log.info(
            "monitor %s: broker %s, database %s (%d agents resumed)",
            self.config.monitor_id,
            self._url.display,
            self.config.db_path,
            len(self._views),
        )
        return self

    def stop(self) -> None:
        """Flush pending rows, set presence offline, disconnect; safe to call twice."""
        if self._core is None or self._stopping.is_set():
            return
        self._shutting_down = True
        # Disconnect first, so everything received is in the queue; the core then stores all of it.
        # What the broker sends after the DISCONNECT it keeps for this persistent session.
        if self._subscriber is not None:
            self._subscriber.stop()
        self._stopping.set()
        # The core stores everything already received before it ends: never close the database under
        # it (DuckDB aborts the process). A big backlog can take a while; say so.
        while self._core.is_alive():
            self._core.join(timeout=10)
            if self._core.is_alive():
                _log.warning("monitor %s: still storing what was received before the stop", self.config.monitor_id)
        self.alerting.stop()  # what is not delivered yet stays recorded; the next start resumes it
        assert self._store is not None
        self._store.close()
        with contextlib.suppress(FileNotFoundError):
            sidecar_path(self.config.db_path).unlink()
        _log.info("monitor %s stopped", self.config.monitor_id)

    def add_listener(self, listener: TransitionListener) -> None:
        """Called on the core thread with each committed batch of transitions."""
        self._listeners.append(listener)

    def prove(self, challenge: str) -> str:
        """The answer to a CLI's challenge: shows that this API belongs to the monitor that wrote the sidecar."""
        return proof(self._nonce, challenge)

    def _write_sidecar(self) -> None:
        # 0600 and atomic: the nonce is what a CLI checks before it sends this API a credential, so only
        # the monitor's user may read it, and nobody may see a half-written file.
        document = {
            "pid": os.getpid(),
            "monitor_id": self.config.monitor_id,
            "api": self.api_url,
            "broker": self._url.display,
            "started_at": format_timestamp(self._clock()),
            "nonce": self._nonce,
        }
        write_private(sidecar_path(self.config.db_path), json.dumps(document) + "\n")

    # -- reads, from any thread --------------------------------------------------------------------

    @property
    def store(self) -> Store:
        assert self._store is not None, "monitor not started"
        return self._store

    @property
    def broker_display(self) -> str:
        """The broker's URL without its password."""
        return self._url.display

    @property
    def connected(self) -> bool:
        return self._connected

    def list_agents(self) -> list[dict[str, Any]]:
        """Every agent as a dict (SPEC §5), with today's work figures (`cost_today_usd`, `success_ratio_today`...)."""
        now = self._clock()
        with self._views_lock:
            views = sorted(self._views.values(), key=lambda v: v.agent)
            usages = [self._usage.get(view.agent, now) for view in views]
        empty = AgentUsage(day=now.date(), hour=now).as_dict()
        return [
            agent_record(view) | (usage.as_dict() if usage is not None else empty)
            for view, usage in zip(views, usages, strict=True)
        ]

    def usage(self, agent: str) -> AgentUsage | None:
        """A copy of one agent's work figures today."""
        now = self._clock()
        with self._views_lock:
            return self._usage.get(agent, now)

    def stats(self) -> dict[str, int]:
        stats = dict(self._stats)
        if self._subscriber is not None and self._subscriber.stale_own_wills:
            stats["stale_own_wills"] = self._subscriber.stale_own_wills
        return stats

    def send_command(self, command: ControlCommand, agent: str | None = None, group: str | None = None) -> str:
        """Publish an operator command (QoS 1); the audit row is written when it comes back on the wire."""
        if (agent is None) == (group is None):
            raise ValueError("name exactly one of agent or group")
        topic = control_topic(agent) if agent is not None else group_control_topic(group or "")
        assert self._subscriber is not None, "monitor not started"
        self._subscriber.publish(topic, command.to_payload())
        return topic

    def forget(self, pattern: str, reason: str, issued_by: str, every: bool = False) -> ForgetResult:
        """Drop the known agents matching the glob `pattern` (NothingToForget if none; ValueError if refused).

        Done by the core thread: views, the `agents` rows and open incidents (closed without a page) go,
        the broker's retained health message of each is cleared (so a restart does not learn them again),
        and an audit row is written. Heartbeats and transitions stay: history is history. An agent that
        heartbeats again afterwards is simply new again.
        """
        check_forget_pattern(pattern, every)
        if self._core is None or not self._core.is_alive():
            raise RuntimeError("the monitor is not running")
        answer: Future[ForgetResult] = Future()
        self._events.put(_ForgetRequest(pattern, reason.strip(), issued_by, answer))
        return answer.result(timeout=FORGET_TIMEOUT_S)

    # -- the core thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        pending = WriteBatch()
        last_flush = last_tick = last_alive = time.monotonic()
        config = self.config
        retention = Retention(config.raw_retention_s, config.minute_retention_s, config.retention_every_s)
        while True:
            events: list[Event | _ForgetRequest] = []
            try:
                # Wake for the next held will on time, not up to one idle wait after it is due.
                wait_s = 0.05
                if self._held_wills:
                    release_at = next(iter(self._held_wills.values()))[0]
                    wait_s = min(wait_s, max(0.0, release_at - time.monotonic()))
                item = self._events.get(timeout=wait_s)
                while True:
                    # A reader process sends lists of events; the in-process subscriber single ones.
                    if isinstance(item, list):
                        events.extend(item)
                    else:
                        events.append(item)
                    if len(events) >= 20_000:
                        break
                    item = self._events.get_nowait()
            except queue.Empty:
                pass
            with self._views_lock:
                for event in events:
                    try:
                        self._handle(event, pending)
                    except Exception:
                        # One bad event must never stop the monitor: log it, count it, go on.
                        _log.exception("monitor: could not handle %r", event)
                        self._stats["handler_errors"] += 1
                self._release_wills(pending)
                if time.monotonic() - last_tick >= self.config.tick_interval_s:
                    if self._connected and self._broker_delivers(pending) and not self._behind(pending):
                        self._tick_all(pending, self._judged_until())
                    self._tick_alerts()  # also while the broker is gone: its own alert may remind
                    last_tick = time.monotonic()
            if time.monotonic() - last_alive >= ALIVE_EVERY_S:
                pending.events.append((self._clock(), self.config.monitor_id, "alive", None))
                last_alive = time.monotonic()
            elapsed_s = time.monotonic() - last_flush
            rows_waiting = len(pending) - len(pending.agents)
            due = (rows_waiting and elapsed_s >= self.config.flush_interval_s) or (pending.agents and elapsed_s >= 1.0)
            if pending.transitions or rows_waiting >= self.config.flush_rows or due:
                carried = self._flush(pending)
                pending = WriteBatch(agents=carried)
                last_flush = time.monotonic()
            # Between flushes: at most one hour of data per step, then back to the queue (never raises).
            retention.run_if_due(self.store, self._clock(), time.monotonic())
            if self._stopping.is_set() and self._events.empty():
                break
        pending.transitions.extend(transition for _, transition, _ in self._held_wills.values())
        pending.events.append((self._clock(), self.config.monitor_id, "stopped", "graceful shutdown"))
        self._flush(pending, final=True)

    def _agent_rows_due(self, agents: dict[str, AgentView], final: bool) -> dict[str, AgentView]:
        """Split changed views into rows to write now and views to carry to a later flush.

        A view whose state, session or identity changed is written at once; one that only heard another
        heartbeat is refreshed at most every AGENT_ROW_REFRESH_S (the heartbeats table has every
        heartbeat anyway), which keeps the agents upsert off the ingest path.
        """
        now = time.monotonic()
        carried: dict[str, AgentView] = {}
        for agent, view in list(agents.items()):
            signature = (
                view.state, view.reason, view.since, view.session, view.known_state, view.name, view.host,
                view.pid, view.version, view.group, view.interval_s, view.paused, view.reported_status,
                view.reported_reason, view.depends_on, view.labels,
            )  # fmt: skip
            written = self._agents_written.get(agent)
            if final or written is None or written[0] != signature or now - written[1] >= AGENT_ROW_REFRESH_S:
                self._agents_written[agent] = (signature, now)
            else:
                carried[agent] = agents.pop(agent)
        return carried

    def _flush(self, pending: WriteBatch, final: bool = False) -> dict[str, AgentView]:
        """Commit what is due; return the agent views carried to a later flush."""
        carried = self._agent_rows_due(pending.agents, final)
        if not len(pending):
            return carried
        assert self._store is not None
        try:
            self._store.write(pending)
        except Exception:
            # Never let a storage error kill the core: log it, count it, keep judging. The rows of
            # this batch are lost; the agents table is rewritten with the next change of each agent.
            _log.exception("monitor: could not store a batch of %d rows", len(pending))
            self._stats["store_errors"] += 1
            self._alert(pending.transitions)  # a full disk must not also silence the page
            return carried
        self._stats["flushes"] += 1
        self._stats["rows_stored"] += len(pending.heartbeats)
        if pending.transitions:
            self._stats["transitions"] += len(pending.transitions)
            self._alert(pending.transitions)  # after the commit: the history holds what an alert reports
            for listener in self._listeners:
                try:
                    listener(pending.transitions)
                except Exception:
                    _log.exception("monitor: transition listener failed")
        return carried

    def _alert(self, transitions: list[Transition]) -> None:
        # A transition of an agent forgotten since it happened is history, not news: no incident for it.
        transitions = [transition for transition in transitions if transition.agent in self._views]
        if not transitions:
            return
        try:
            self.alerting.observe(transitions, self._views, self._clock())
        except Exception:
            _log.exception("monitor: alerting failed for a batch of transitions")
            self._stats["alert_errors"] += 1

    def _handle(self, event: Event | _ForgetRequest, pending: WriteBatch) -> None:
        if isinstance(event, _ForgetRequest):
            try:
                event.answer.set_result(self._forget(event, pending))
            except Exception as error:  # the caller hears it (NothingToForget, a storage error), the core goes on
                event.answer.set_exception(error)
            return
        if isinstance(event, Received):
            self._stats["received"] += 1
            self._heard_until = event.received_at
            if event.topic.startswith("agents/") and event.topic.endswith("/health"):
                self._handle_health(event, pending)
            elif event.topic.endswith("/control"):
                self._handle_command(event, pending)
            else:
                self._reject(event, "unexpected topic", pending)
        elif isinstance(event, BrokerConnected):
            self._connected = True
            self._broker_silent = False
            if self._ever_connected:
                self._settle_until = time.monotonic() + self.config.reconnect_settle_s
            reason = "monitor reconnected to the broker" if self._ever_connected else "monitor started"
            self._ever_connected = True
            self._views = {agent: listening_resumed(view, event.at, reason) for agent, view in self._views.items()}
            self._schedule_all()
            pending.events.append((event.at, self.config.monitor_id, "broker_connected", self._url.display))
            self._alert_broker(back=True, at=event.at)
        elif isinstance(event, BrokerLost):
            if self._shutting_down or not self._connected:
                return
            self._connected = False
            if self._broker_silent:
                return  # already recorded when the probes stopped coming back
            # One monitor-level event: every agent becomes unknown, no per-agent outage (SPEC §3).
            self._discard_held_wills(pending)
            self._views = {agent: broker_lost(view, event.at) for agent, view in self._views.items()}
            self._schedule_all()
            pending.events.append((event.at, self.config.monitor_id, "broker_lost", event.reason))
            self._alert_broker(back=False, at=event.at, reason=event.reason)

    def _broker_delivers(self, pending: WriteBatch) -> bool:
        """Send the next probe; notice when the broker stops delivering (even our probe), and when it resumes."""
        assert self._subscriber is not None
        self._subscriber.send_probe()
        silent_s = time.monotonic() - self._subscriber.last_delivery_at
        now = self._clock()
        if silent_s > self.config.probe_timeout_s:
            if not self._broker_silent:
                self._broker_silent = True
                self._discard_held_wills(pending)
                self._views = {agent: broker_lost(view, now) for agent, view in self._views.items()}
                self._schedule_all()
                detail = f"the broker stopped delivering (nothing, not even our probe, for {silent_s:.1f} s)"
                pending.events.append((now, self.config.monitor_id, "broker_lost", detail))
                _log.warning("monitor: %s; agents are unknown until it delivers again", detail)
                self._alert_broker(back=False, at=now, reason=detail)
            return False
        if self._broker_silent:
            self._broker_silent = False
            resumed = "the broker delivers again"
            self._views = {agent: listening_resumed(view, now, resumed) for agent, view in self._views.items()}
            self._schedule_all()
            pending.events.append((now, self.config.monitor_id, "broker_connected", resumed))
            _log.info("monitor: %s", resumed)
            self._alert_broker(back=True, at=now)
        return True

    def _release_wills(self, pending: WriteBatch) -> None:
        now = time.monotonic()
        while self._held_wills:
            agent, (release_at, transition, _) = next(iter(self._held_wills.items()))
            if release_at > now:
                break
            del self._held_wills[agent]
            pending.transitions.append(transition)

    def _hold_will(self, transition: Transition, before: AgentView | None) -> None:
        now = time.monotonic()
        self._held_wills.pop(transition.agent, None)  # (re-inserted last: release times stay in order)
        if now < self._settle_until:
            self._held_wills[transition.agent] = (self._settle_until, transition, before)
        else:
            self._held_wills[transition.agent] = (now + self.config.will_settle_s, transition, None)

    def _settle_will(self, agent: str, session: str, pending: WriteBatch) -> None:
        """A new session of an agent whose will the reconnect window holds: that will was the broker's restart."""
        held = self._held_wills.get(agent)
        view = self._views.get(agent)
        if held is None or held[2] is None or view is None or session == view.session:
            return
        if session in view.retired_sessions:
            return  # an older session's message, not a comeback
        del self._held_wills[agent]
        self._views[agent] = pending.agents[agent] = held[2]
        self._schedule(agent, held[2])
        self._stats["wills_settled_after_reconnect"] += 1

    def _discard_held_wills(self, pending: WriteBatch) -> None:
        """The broker went away right after these wills: it was shutting down, not the agents dying."""
        for _, transition, _ in self._held_wills.values():
            view = self._views.get(transition.agent)
            if view is not None:
                view = replace(view, state=transition.from_state, reason="broker shutting down")
                self._views[transition.agent] = pending.agents[transition.agent] = view
                self._schedule(transition.agent, view)
            self._stats["wills_discarded_at_broker_shutdown"] += 1
        self._held_wills.clear()

    def _forget(self, request: _ForgetRequest, pending: WriteBatch) -> ForgetResult:
        agents = sorted(agent for agent in self._views if fnmatch.fnmatchcase(agent, request.pattern))
        if not agents:
            raise NothingToForget(f"no known agent matches {request.pattern!r}")
        now = self._clock()
        command_id = uuid.uuid4().hex
        assert self._store is not None and self._subscriber is not None
        # Its own batch, committed now: the caller's answer means the rows are gone and the audit row is there.
        audit = (command_id, now, request.pattern, "forget", request.issued_by, request.reason)
        self._store.write(WriteBatch(forgotten=agents, commands=[audit]))
        for agent in agents:
            del self._views[agent]
            self._due_at.pop(agent, None)  # (its heap entries are skipped as stale)
            self._usage.forget(agent)
            self._agents_written.pop(agent, None)
            held = self._held_wills.pop(agent, None)
            if held is not None:
                pending.transitions.append(held[1])  # stored as history; _alert pages nobody about it
            pending.agents.pop(agent, None)  # a carried row must not bring it back
            # An empty retained message deletes the retained one (MQTT 3.1.1 §3.3.1.3); we ignore its echo.
            self._subscriber.publish(health_topic(agent), b"", retain=True)
        closed = self.alerting.forget(agents, now)
        self._stats["forgotten"] += len(agents)
        _log.warning(
            "monitor: %s forgot %d agent(s) matching %r (%d open incident(s) closed): %s",
            request.issued_by, len(agents), request.pattern, closed, request.reason or "no reason given",
        )  # fmt: skip
        cap = self.config.max_agents
        if cap and len(self._views) < cap:
            if self._cap_reached:
                detail = f"{len(self._views)} known"
                pending.events.append((now, self.config.monitor_id, "agent_cap_cleared", detail))
            self._cap_reached = False
            # Also a cap alert restored at startup and not hit since: the policy resolves only an open one.
            self.alerting.agent_cap_cleared(now, len(self._views), cap)
        return ForgetResult(request.pattern, tuple(agents), closed, command_id)

    def _within_cap(self, event: Received, pending: WriteBatch) -> bool:
        """False (refused, counted) for a message of a new agent id while the known agents are at the cap.

        Judged on the topic's id before parsing or rate limiting: a flood of invented ids then costs no
        state at all (not even a rate bucket) and hardly any CPU. A retained snapshot at startup counts
        the same way. Rows of refusals are rate-limited like every rejection; the counters stay exact.
        """
        cap = self.config.max_agents
        if not cap or len(self._views) < cap:
            return True
        try:
            agent = agent_id_from_health_topic(event.topic)
        except ProtocolError:
            return True  # (parse_health rejects it with its own reason)
        if agent in self._views:
            return True
        self._stats["refused_agent_cap"] += 1
        known = len(self._views)
        self._reject(event, f"agent cap reached ({known} known, --max-agents {cap})", pending)
        if not self._cap_reached:
            self._cap_reached = True
            detail = f"{known} agents known, cap {cap}: new agent ids are refused and counted"
            _log.warning("monitor: agent cap reached: %s", detail)
            pending.events.append((event.received_at, self.config.monitor_id, "agent_cap_reached", detail))
            try:
                self.alerting.agent_cap_reached(event.received_at, known, cap)
            except Exception:
                _log.exception("monitor: alerting failed on reaching the agent cap")
                self._stats["alert_errors"] += 1
        return False

    def _handle_health(self, event: Received, pending: WriteBatch) -> None:
        if not self._connected:
            # After our own will: the broker is shutting down, what it says now is not news.
            self._stats["dropped_broker_shutting_down"] += 1
            return
        if not event.payload:
            # How a retained message is deleted (forget does it; so may an operator with mosquitto_pub -r -n):
            # no health message, no rejection worth a row.
            self._stats["retained_cleared"] += 1
            return
        if not self._within_cap(event, pending) or not self._within_rate(event, pending):
            return
        try:
            message = parse_health(event.topic, event.payload)
        except ProtocolError as error:
            self._reject(event, error.reason, pending)
            return
        skew_s = (message.sent_at - event.received_at).total_seconds()
        if skew_s > MAX_CLOCK_SKEW_S or (-skew_s > MAX_CLOCK_SKEW_S and not event.retained):
            # A retained message may be old (a will from last month restores state); a live one is not.
            self._reject(event, f"sent_at is {skew_s:+.0f} s from the monitor's clock", pending)
            return
        if message.agent in self._held_wills:
            self._settle_will(message.agent, message.session, pending)
        thresholds = self.config.thresholds.for_agent(message.agent)
        before = self._views.get(message.agent)
        received_at, snapshot = event.received_at, event.retained
        view, transition, outcome = apply_message(before, message, received_at, thresholds, snapshot=snapshot)
        self._stats[outcome.value] += 1
        if outcome is Outcome.LATE:
            self._views[message.agent] = view
            self._schedule(message.agent, view, thresholds)
            pending.add_message(message, event.received_at, event.retained)
            if message.metrics is not None:
                self._usage.add(message.agent, message.metrics, event.received_at)
            return
        if outcome is Outcome.CONFIRMED:
            self._views[message.agent] = pending.agents[message.agent] = view
            self._schedule(message.agent, view, thresholds)
            return
        if outcome is not Outcome.APPLIED:
            return
        self._views[message.agent] = view
        self._schedule(message.agent, view, thresholds)
        pending.agents[message.agent] = view
        if not (event.retained and transition is None and message.kind is not Kind.HEARTBEAT):
            # (A retained will or stop that only restores what was known is no new message: its row
            # was stored when it first arrived. Heartbeats are deduplicated by seq instead.)
            pending.add_message(message, event.received_at, event.retained)
            if message.metrics is not None:  # counted once, like the row it came with
                self._usage.add(message.agent, message.metrics, event.received_at)
        if transition is None:
            return
        if message.kind is Kind.WILL and (not event.retained or time.monotonic() < self._settle_until):
            self._hold_will(transition, before)
        else:
            pending.transitions.append(transition)

    def _handle_command(self, event: Received, pending: WriteBatch) -> None:
        parts = event.topic.split("/")
        if len(parts) != 3 or parts[0] not in ("agents", "groups") or not is_valid_id(parts[1]):
            self._reject(event, "invalid control topic", pending)
            return
        try:
            command = parse_control(event.payload)
        except ProtocolError as error:
            self._reject(event, error.reason, pending)
            return
        if command.id in self._recent_commands:  # QoS 1 may deliver twice
            return
        self._recent_commands[command.id] = None
        if len(self._recent_commands) > 10_000:
            self._recent_commands.popitem(last=False)
        target = f"{parts[0]}/{parts[1]}"
        pending.commands.append(
            (command.id, event.received_at, target, command.command.value, command.issued_by, command.reason)
        )
        self._stats["commands"] += 1

    def _within_rate(self, event: Received, pending: WriteBatch) -> bool:
        """Charge the topic's agent id, before parsing: a flood costs its sender, not the fleet.

        Keyed by the topic, the only identity MQTT 3.1.1 gives a message, which the broker's ACL binds to
        the agent's credentials (broker/acl.py). On an open broker anyone may spend any agent's budget.
        """
        agent = event.topic[len("agents/") : -len("/health")]
        if not is_valid_id(agent) or self._agent_rates.allow(agent, time.monotonic()):
            return True  # (an invalid id is rejected by parse_health with its own reason)
        self._stats["rate_limited"] += 1
        rate = self.config.agent_messages_per_s
        self._reject(event, f"rate limit: agent {agent} sent more than {rate:g} messages/s", pending)
        return False

    def _reject(self, event: Received, reason: str, pending: WriteBatch) -> None:
        self._stats["rejected"] += 1
        if not self._rejections.take():
            self._stats["rejected_unstored"] += 1  # a flood: counted, not stored row by row
            return
        prefix = event.payload[:200].decode("utf-8", errors="replace").replace("\x00", "\\0")
        pending.rejected.append((event.received_at, event.topic[:500], reason, prefix))

    def _alert_broker(self, back: bool, at: datetime, reason: str = "") -> None:
        """One monitor-level alert when the broker is lost, and its resolve; never one per agent."""
        try:
            if back:
                self.alerting.broker_back(at)
            else:
                self.alerting.broker_lost(at, reason)
        except Exception:
            _log.exception("monitor: alerting failed on a broker event")
            self._stats["alert_errors"] += 1

    def _usage_now(self, now: datetime) -> dict[str, AgentUsage]:
        return {agent: usage for agent in self._usage.agents() if (usage := self._usage.get(agent, now))}

    def _tick_alerts(self) -> None:
        """Reminders, flap releases and, every cost_check_interval_s, cost policies (acting on breaches)."""
        now = self._clock()
        check_costs = bool(self.config.alerts.cost_policies) and (
            time.monotonic() - self._last_cost_check >= self.config.cost_check_interval_s
        )
        if check_costs:
            self._last_cost_check = time.monotonic()
        usage = functools.partial(self._usage_now, now) if check_costs else None
        try:
            breaches = self.alerting.tick(self._views, usage, now)
        except Exception:
            _log.exception("monitor: alerting tick failed")
            self._stats["alert_errors"] += 1
            return
        for breach in breaches:
            if breach.action in ("pause", "kill"):
                command = ControlCommand(
                    command=Command(breach.action),
                    id=uuid.uuid4().hex,
                    issued_by=f"cost-policy:{breach.policy}",
                    reason=breach.notification.reason,
                )
                self.send_command(command, agent=breach.agent)
                _log.warning("monitor: %s %s: %s", breach.action, breach.agent, breach.notification.reason)

    def _schedule(self, agent: str, view: AgentView, thresholds: Thresholds | None = None) -> None:
        """Remember when `view` must next be ticked (called whenever a view is replaced)."""
        due = next_check_at(view, thresholds if thresholds is not None else self.config.thresholds.for_agent(agent))
        if due is None:
            self._due_at.pop(agent, None)
        elif self._due_at.get(agent) != due:
            self._push(agent, due)

    def _push(self, agent: str, due: datetime) -> None:
        self._due_at[agent] = due
        self._due_order += 1
        heapq.heappush(self._due, (due, self._due_order, agent))

    def _schedule_all(self) -> None:
        self._due, self._due_at = [], {}
        for agent, view in self._views.items():
            self._schedule(agent, view)

    def _behind(self, pending: WriteBatch) -> bool:
        """True while the reader holds messages back in the broker because the core cannot keep up.

        Heartbeats that wait in the broker are no silence, and the monitor cannot know which agents
        they are from: it judges no silence until it has caught up (wills and heartbeats still apply).
        """
        assert self._subscriber is not None
        behind = time.monotonic() - self._subscriber.held_back_at < HELD_BACK_GRACE_S
        if behind != self._was_behind:
            self._was_behind = behind
            now = self._clock()
            if behind:
                detail = "messages wait in the broker for us; silence is not judged until we catch up"
                _log.warning("monitor: behind the broker: %s", detail)
                pending.events.append((now, self.config.monitor_id, "behind", detail))
            else:
                _log.info("monitor: caught up with the broker")
                pending.events.append((now, self.config.monitor_id, "caught_up", None))
        if behind:
            self._stats["ticks_skipped_behind"] += 1
        return behind

    def _judged_until(self) -> datetime:
        """The moment up to which the monitor has heard everything: now, unless the core is behind.

        Messages are handled in the order they arrived, so with more waiting in the queue, everything
        received up to the last one handled is known and nothing after it. Silence is judged up to there:
        a heartbeat that waits in our own queue is not late (an overloaded core would otherwise turn the
        fleet degraded while their heartbeats sat unread).
        """
        now = self._clock()
        if self._heard_until is not None and not self._events.empty():
            return min(now, self._heard_until)
        return now

    def _tick_all(self, pending: WriteBatch, now: datetime | None = None) -> None:
        """Tick the views that are due at `now` (default: the clock), a heap pop each, not every view."""
        now = now or self._clock()
        while self._due and self._due[0][0] <= now:
            due, _, agent = heapq.heappop(self._due)
            if self._due_at.get(agent) != due:
                continue  # rescheduled since: a stale entry
            del self._due_at[agent]
            view = self._views.get(agent)
            if view is None:
                continue
            thresholds = self.config.thresholds.for_agent(agent)
            new_view, transition = tick(view, now, thresholds)
            if new_view is view:
                # Nothing changed (a deadline a float's ulp early): look again shortly, never spin.
                self._push(agent, now + timedelta(milliseconds=1))
                continue
            self._views[agent] = pending.agents[agent] = new_view
            self._schedule(agent, new_view, thresholds)
            if transition is not None:
                pending.transitions.append(transition)
