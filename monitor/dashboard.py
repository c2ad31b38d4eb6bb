"""The Panel dashboard: fleet table, agent detail with commands, fleet history, dependencies, monitor status.

Each browser session gets its own page (`dashboard_page`). The fleet view polls the monitor's in-memory
views every second (no SQL); the detail and history views query DuckDB, less often and only while shown.

Every string an agent (or any MQTT client, or a person) sent is text, never markup: Markdown and HTML panes
take such strings only through `markup.literal`; tables show them through Tabulator's default StringFormatter
(a text node) and charts through Bokeh tooltips without `{safe}` (escaped) -- never an html formatter.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import panel as pn

from fleetpulse.monitor import charts, history
from fleetpulse.monitor.fleet import age_text, headline, sort_for_people
from fleetpulse.monitor.markup import code, literal
from fleetpulse.monitor.service import Monitor
from fleetpulse.publisher.protocol import Command, ControlCommand

__all__ = ["DashboardAccess", "dashboard_page", "fleet_frame"]

REFRESH_MS = 1000
DETAIL_EVERY = 3  # refresh ticks between two queries of the agent detail (while its tab is shown)
HISTORY_EVERY = 30  # ... of the fleet history
UPTIME_CACHE_S = 15.0
RATE_WINDOW_S = 10.0
WINDOWS = {"24 h": timedelta(hours=24), "7 d": timedelta(days=7), "30 d": timedelta(days=30)}
CHART_BUCKETS = 120  # bars or points per chart, whatever the window


def _shown_span(window: timedelta, first_seen: datetime | None, now: datetime) -> tuple[datetime, int]:
    """Where a chart starts and its bucket size: an agent seen for 10 minutes gets 10 minutes, not an empty day."""
    since = now - window
    if first_seen is not None and first_seen > since:
        since = max(since, first_seen - timedelta(seconds=30))
    bucket_s = max(10, int((now - since).total_seconds() / CHART_BUCKETS))
    return since, bucket_s


_COLUMNS = [
    "state", "agent", "name", "group", "host", "last heartbeat", "interval (s)", "success %", "p50 ms", "p95 ms",
    "cost today $", "tokens today", "uptime 24 h %", "version", "reason",
]  # fmt: skip
_TABS = ("Fleet", "Agent", "History", "Dependencies", "Alerts", "Monitor")


@dataclass(frozen=True)
class DashboardAccess:
    """Whether this page may send commands, and who the caller is when no login names them."""

    commands_allowed: bool = True
    refusal: str = ""
    # With logins: the credential names whose role may command (operators); None: no logins at all.
    operators: frozenset[str] | None = None

    def allows(self, user: str | None) -> bool:
        """Whether `user` (the session's login, `pn.state.user`: a signed cookie) may send commands."""
        return self.commands_allowed and (self.operators is None or user in self.operators)

    def refusal_for(self, user: str | None) -> str:
        if not self.commands_allowed:
            return self.refusal
        return f"Commands are off: `{user}` is a viewer login; commands need an operator's."


def _percent(ratio: float | None) -> float | None:
    return round(100.0 * ratio, 1) if ratio is not None else None


def _rounded(value: float | None, digits: int) -> float | None:
    return round(value, digits) if value is not None else None


def fleet_frame(records: list[dict[str, Any]], now: datetime, uptime: dict[str, float] | None = None) -> pd.DataFrame:
    """The fleet table's rows: urgent states first, ages relative to `now`."""
    uptime = uptime or {}
    rows = [
        {
            "state": record["health_status"],
            "agent": record["agent"],
            "name": record["display_name"],
            "group": record["group"] or "",
            "host": record["host"],
            "last heartbeat": age_text(record["last_heartbeat_at"], now),
            "interval (s)": record["interval_s"],
            "success %": _percent(record.get("success_ratio_today")),
            "p50 ms": _rounded(record.get("latency_ms_p50"), 1),
            "p95 ms": _rounded(record.get("latency_ms_p95"), 1),
            "cost today $": _rounded(record.get("cost_today_usd"), 4),
            "tokens today": (record.get("tokens_in_today") or 0) + (record.get("tokens_out_today") or 0),
            "uptime 24 h %": _percent(uptime.get(record["agent"])),
            "version": record["version"],
            "reason": record["reason"],
        }
        for record in sort_for_people(records)
    ]
    return pd.DataFrame(rows, columns=_COLUMNS)


def _state_badge(value: str) -> str:
    colour = charts.STATE_COLOURS.get(value, "#000")
    return f"color: white; background-color: {colour}; font-weight: bold"


class _UptimeCache:
    """Uptime over 24 h per agent, shared by every page of one monitor and recomputed at most every UPTIME_CACHE_S."""

    def __init__(self, monitor: Monitor) -> None:
        self._monitor = monitor
        self._lock = threading.Lock()
        self._computed_at = float("-inf")
        self._value: dict[str, float] = {}

    def get(self) -> dict[str, float]:
        with self._lock:
            if time.monotonic() - self._computed_at >= UPTIME_CACHE_S:
                now = datetime.now(UTC)
                self._value = history.availability(self._monitor.store, now - timedelta(hours=24), now)
                self._computed_at = time.monotonic()
            return self._value


class _SharedFleet:
    """The agent records and the fleet table's rows, computed once per refresh period for every page and
    view of one monitor.

    Measured with 2,000 agents (benchmarks/dashboard.py): listing the agents and building the frame
    cost ~40 ms; per page and second that made each open tab cost the server ~100 ms/s. Pages now share
    one frame, and a page whose frame did not change sends the browser nothing.
    """

    def __init__(self, monitor: Monitor) -> None:
        self._monitor = monitor
        self._uptime = _UptimeCache(monitor)
        self._lock = threading.Lock()
        self._computed_at = float("-inf")
        self._records: list[dict[str, Any]] = []
        self._frame = fleet_frame([], datetime.now(UTC))

    def get(self) -> tuple[list[dict[str, Any]], pd.DataFrame]:
        with self._lock:
            if time.monotonic() - self._computed_at >= REFRESH_MS / 1000 * 0.9:
                self._records = self._monitor.list_agents()
                self._frame = fleet_frame(self._records, datetime.now(UTC), self._uptime.get())
                self._computed_at = time.monotonic()
            return self._records, self._frame


_shared_fleets: dict[int, _SharedFleet] = {}


def _shared(monitor: Monitor) -> _SharedFleet:
    fleet = _shared_fleets.get(id(monitor))
    if fleet is None:
        fleet = _shared_fleets[id(monitor)] = _SharedFleet(monitor)
    return fleet


def _table(frame: pd.DataFrame, name: str, page_size: int = 10) -> pn.widgets.Tabulator:
    return pn.widgets.Tabulator(
        frame,
        show_index=False,
        disabled=True,
        sizing_mode="stretch_width",
        pagination="local",
        page_size=page_size,
        name=name,
    )


def _frame(rows: list[dict[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(columns))


def _caller() -> str:
    """Who pressed the button: the logged-in user, else the browser's address."""
    user = pn.state.user
    context = pn.state.curdoc.session_context if pn.state.curdoc else None
    request = getattr(context, "request", None)
    address = getattr(request, "remote_ip", None) or "unknown"
    return f"{user}@{address}" if user and user != "guest" else f"dashboard@{address}"


class _MonitorStatus:
    """The monitor's own figures: broker, ingest rate, rejections, storage."""

    def __init__(self, monitor: Monitor) -> None:
        self._monitor = monitor
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self.pane = pn.pane.Markdown(name="monitor-status", css_classes=["monitor-status"])
        self.line = pn.pane.Markdown(css_classes=["monitor-line"])

    def _rate(self, received: int) -> str:
        """Messages per second over the last RATE_WINDOW_S of refreshes."""
        now = time.monotonic()
        self._samples.append((now, received))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW_S:
            self._samples.popleft()
        (then, before) = self._samples[0]
        return f"{(received - before) / (now - then):,.1f} msg/s" if now > then else "\u2026"

    def refresh(self, full: bool) -> None:
        monitor = self._monitor
        stats = monitor.stats()
        received = stats.get("received", 0)
        rate = self._rate(received)
        broker_state = "connected" if monitor.connected else "NOT connected"
        self.line.object = (
            f"broker {code(monitor.broker_display)} {broker_state} \u00b7 ingest {rate} \u00b7 "
            f"rejected {stats.get('rejected', 0):,} \u00b7 stored {stats.get('rows_stored', 0):,} heartbeats"
        )
        if not full:
            return
        size_mib = monitor.config.db_path.stat().st_size / 2**20 if monitor.config.db_path.exists() else 0.0
        broker = "connected" if monitor.connected else "**NOT connected** (states are unknown)"
        self.pane.object = "\n".join(
            [
                "| monitor | |",
                "|---|---|",
                f"| id | {code(monitor.config.monitor_id)} |",
                f"| broker | {code(monitor.broker_display)}: {broker} |",
                f"| ingest rate | {rate} |",
                f"| messages received | {received:,} |",
                f"| heartbeat rows stored | {stats.get('rows_stored', 0):,} |",
                f"| rejected | {stats.get('rejected', 0):,} (malformed, spoofed or oversize messages) |",
                f"| duplicates dropped | {stats.get('duplicate', 0):,} |",
                f"| transitions | {stats.get('transitions', 0):,} |",
                f"| database | {code(monitor.config.db_path)} ({size_mib:,.1f} MiB) |",
            ]
        )


class _AgentDetail:
    """One agent: facts, state timeline, latency and cost, outages, transitions, commands, and the buttons."""

    def __init__(self, monitor: Monitor, access: DashboardAccess) -> None:
        self._monitor = monitor
        self._access = access
        self.select = pn.widgets.Select(name="agent", options=[], width=280)
        self.window = pn.widgets.RadioButtonGroup(name="window", options=list(WINDOWS)[:2], value="24 h")
        # No heading anchors: they would make an element id (and a link) out of the agent's own name.
        self.facts = pn.pane.Markdown(name="agent-facts", css_classes=["agent-facts"], disable_anchors=True)
        self.timeline = pn.pane.Bokeh(sizing_mode="stretch_width")
        self.latency = pn.pane.Bokeh(sizing_mode="stretch_width")
        self.cost = pn.pane.Bokeh(sizing_mode="stretch_width")
        self.outages = _table(_frame([], ["state", "started", "ended", "duration (s)"]), "agent-outages")
        self.transitions = _table(_frame([], ["at", "from", "to", "reason"]), "agent-transitions")
        self.commands = _table(_frame([], ["at", "command", "issued by", "reason"]), "agent-commands")
        self.buttons = {
            command: pn.widgets.Button(name=command.value.title(), button_type=kind, width=100)
            for command, kind in ((Command.PAUSE, "warning"), (Command.RESUME, "success"), (Command.KILL, "danger"))
        }
        self.question = pn.pane.Markdown(css_classes=["command-question"])
        self.reason = pn.widgets.TextInput(placeholder="reason (recorded in the audit log)", width=360)
        self.confirm = pn.widgets.Button(name="Confirm", button_type="danger", width=100)
        self.cancel = pn.widgets.Button(name="Cancel", width=100)
        self.confirmation = pn.Column(self.question, pn.Row(self.reason, self.confirm, self.cancel), visible=False)
        self.result = pn.pane.Markdown(css_classes=["command-result"])
        self._pending: Command | None = None
        allowed = access.allows(pn.state.user)
        for command, button in self.buttons.items():
            button.on_click(functools.partial(self._ask, command))
            button.disabled = not allowed
        if not allowed:
            self.result.object = access.refusal_for(pn.state.user)
        self.confirm.on_click(lambda _event: self._send())
        self.cancel.on_click(lambda _event: self._close())
        self.select.param.watch(lambda _event: self.refresh(), "value")
        self.window.param.watch(lambda _event: self.refresh(), "value")
        self.panel = pn.Column(
            pn.Row(self.select, self.window),
            self.facts,
            pn.Row(*self.buttons.values()),
            self.confirmation,
            self.result,
            self.timeline,
            pn.Row(self.latency, self.cost, sizing_mode="stretch_width"),
            "### Outages",
            self.outages,
            "### Recent transitions",
            self.transitions,
            "### Commands (audit log)",
            self.commands,
            sizing_mode="stretch_width",
        )

    def _ask(self, command: Command, _event: Any = None) -> None:
        agent = self.select.value
        if not agent:
            return
        self._pending = command
        consequence = {
            Command.KILL: "its kill callback runs and it stops (state `killed`)",
            Command.PAUSE: "its work loop blocks until resumed",
            Command.RESUME: "its work loop continues",
        }.get(command, "")
        self.question.object = f"**{command.value.title()} {code(agent)}?** {consequence}."
        self.confirm.name = f"Confirm {command.value}"
        self.confirmation.visible = True

    def _close(self) -> None:
        self._pending = None
        self.confirmation.visible = False
        self.reason.value = ""

    def _send(self) -> None:
        agent, command = self.select.value, self._pending
        if not agent or command is None:
            return
        if not self._access.allows(pn.state.user):  # decided here, on the server: a disabled button is only a hint
            self.result.object = self._access.refusal_for(pn.state.user)
            self._close()
            return
        reason = (self.reason.value or "").strip() or "from the dashboard"
        control = ControlCommand(command=command, id=uuid.uuid4().hex, issued_by=_caller(), reason=reason)
        try:
            topic = self._monitor.send_command(control, agent=agent)
        except Exception as error:  # the broker may be gone: say so on the page, never break the session
            self.result.object = f"**{command.value} not sent:** {literal(error)}"
        else:
            self.result.object = (
                f"<code>{command.value}</code> sent to {code(topic)} by {literal(control.issued_by)} "
                f"(id <code>{control.id}</code>)."
            )
        self._close()

    def set_agents(self, agents: list[str]) -> None:
        if agents != self.select.options:
            self.select.options = agents
        if agents and self.select.value not in agents:
            self.select.value = agents[0]

    def refresh(self) -> None:
        agent = self.select.value
        if not agent:
            self.facts.object = "No agent has been seen yet."
            return
        record = next((r for r in _shared(self._monitor).get()[0] if r["agent"] == agent), None)
        if record is None:
            return
        now = datetime.now(UTC)
        first_seen = datetime.fromisoformat(record["first_seen"]) if record["first_seen"] else None
        since, bucket_s = _shown_span(WINDOWS[self.window.value], first_seen, now)
        store = self._monitor.store
        self.facts.object = _facts(record, now)
        self.timeline.object = charts.state_timeline(history.stays(store, since, now, agent=agent), since, now)
        series = history.agent_series(store, agent, since, now, bucket_s)
        self.latency.object = charts.latency_chart(series, since, now)
        self.cost.object = charts.cost_chart(series, since, now, bucket_s)
        self.outages.value = _frame(
            [
                {
                    "state": o["state"],
                    "started": o["started_at"],
                    "ended": o["ended_at"] if o["ended_at"] is not None else "still open",
                    "duration (s)": round(o["duration_s"], 1),
                }
                for o in store.outages(agent=agent, since=since)
            ],
            ["state", "started", "ended", "duration (s)"],
        )
        self.transitions.value = _frame(
            [
                {"at": t["at"], "from": t["from_state"], "to": t["to_state"], "reason": t["reason"]}
                for t in history.agent_transitions(store, agent)
            ],
            ["at", "from", "to", "reason"],
        )
        self.commands.value = _frame(
            [
                {"at": c["at"], "command": c["command"], "issued by": c["issued_by"], "reason": c["reason"]}
                for c in history.agent_commands(store, agent, record["group"])
            ],
            ["at", "command", "issued by", "reason"],
        )


def _facts(record: dict[str, Any], now: datetime) -> str:
    """The agent's facts as Markdown. Every value in it goes through `literal`: an agent's name, reason,
    host, version and labels are whatever it sent, shown as text and never as markup (issue 14, item 3)."""
    colour = charts.STATE_COLOURS.get(record["health_status"], "#000")
    badge = (
        f'<span class="state-badge" style="background:{colour};color:white;padding:2px 8px;border-radius:4px">'
        f"{literal(record['health_status'])}</span>"
    )
    labels = ", ".join(f"{literal(k)}={literal(v)}" for k, v in record["labels"].items()) or "none"
    depends_on = ", ".join(literal(agent) for agent in record["depends_on"]) or "nothing"
    success = _percent(record.get("success_ratio_today"))
    paused = " \u2014 <strong>paused</strong>" if record["paused"] else ""
    return "\n".join(
        [
            f"## {literal(record['display_name'])} ({code(record['agent'])}) {badge}",
            f"<strong>{literal(record['reason'] or '')}</strong> since {literal(record['state_since'])}; "
            f"last heartbeat {age_text(record['last_heartbeat_at'], now)}{paused}",
            "",
            f"host {code(record['host'])} pid {literal(record['pid'])} \u00b7 version "
            f"{code(record['version'])} \u00b7 group {code(record['group'] or '-')} "
            f"\u00b7 every {record['interval_s']} s \u00b7 depends on {depends_on} \u00b7 labels {labels}",
            "",
            f"today: {record.get('tasks_ok_today', 0)} ok, {record.get('tasks_failed_today', 0)} failed"
            f"{f' ({success} %)' if success is not None else ''} \u00b7 cost ${record.get('cost_today_usd', 0):.4f}",
        ]
    )


class _FleetHistory:
    """Outages across the fleet, availability and MTTR per agent, cost per agent and per model."""

    def __init__(self, monitor: Monitor) -> None:
        self._monitor = monitor
        self.window = pn.widgets.RadioButtonGroup(name="window", options=list(WINDOWS), value="24 h")
        self.timeline = pn.pane.Bokeh(sizing_mode="stretch_width")
        self.reliability = _table(
            _frame([], ["agent", "availability %", "outages", "recovered", "MTTR (s)", "downtime (s)"]),
            "reliability",
            page_size=15,
        )
        self.spenders = _table(_frame([], ["agent", "cost $", "tokens in", "tokens out", "tasks"]), "top-spenders")
        self.models = _table(_frame([], ["model", "cost $", "tokens in", "tokens out"]), "cost-by-model")
        self.cost = pn.pane.Bokeh(sizing_mode="stretch_width")
        self.window.param.watch(lambda _event: self.refresh(), "value")
        self.panel = pn.Column(
            self.window,
            self.timeline,
            "### Availability and MTTR per agent",
            self.reliability,
            pn.Row(
                pn.Column("### Top spenders", self.spenders, sizing_mode="stretch_width"),
                pn.Column("### Cost per model", self.models, sizing_mode="stretch_width"),
                sizing_mode="stretch_width",
            ),
            self.cost,
            sizing_mode="stretch_width",
        )

    def refresh(self) -> None:
        store = self._monitor.store
        now = datetime.now(UTC)
        records = _shared(self._monitor).get()[0]
        first_seen = min((r["first_seen"] for r in records if r["first_seen"]), default=None)
        since, bucket_s = _shown_span(
            WINDOWS[self.window.value], datetime.fromisoformat(first_seen) if first_seen else None, now
        )
        outages = store.outages(since=since)
        self.timeline.object = charts.outage_timeline(outages, since, now)
        availability = history.availability(store, since, now)
        repairs = {row["agent"]: row for row in history.mttr(store, since, now)}
        rows = []
        for agent in sorted(set(availability) | set(repairs), key=lambda a: (availability.get(a, 1.0), a)):
            repair = repairs.get(agent, {})
            rows.append(
                {
                    "agent": agent,
                    "availability %": _percent(availability.get(agent)),
                    "outages": repair.get("outages", 0),
                    "recovered": repair.get("recovered", 0),
                    "MTTR (s)": _rounded(repair.get("mttr_s"), 1),
                    "downtime (s)": _rounded(repair.get("down_s"), 1) or 0.0,
                }
            )
        self.reliability.value = _frame(rows, list(self.reliability.value.columns))
        spenders = history.top_spenders(store, since, now)
        self.spenders.value = _frame(
            [
                {
                    "agent": s["agent"],
                    "cost $": round(s["cost_usd"], 4),
                    "tokens in": s["tokens_in"],
                    "tokens out": s["tokens_out"],
                    "tasks": (s["tasks_ok"] or 0) + (s["tasks_failed"] or 0),
                }
                for s in spenders
            ],
            ["agent", "cost $", "tokens in", "tokens out", "tasks"],
        )
        self.models.value = _frame(
            [
                {
                    "model": m["model"],
                    "cost $": round(m["cost_usd"] or 0.0, 4),
                    "tokens in": m["tokens_in"],
                    "tokens out": m["tokens_out"],
                }
                for m in history.cost_by_model(store, since, now)
            ],
            ["model", "cost $", "tokens in", "tokens out"],
        )
        top = {s["agent"] for s in spenders[:8]}
        series = [row for row in history.cost_over_time(store, since, now, bucket_s) if row["agent"] in top]
        self.cost.object = charts.cost_lines(series, since, now)


class _AlertsView:
    """Open incidents, the latest deliveries with their attempts, and the silences in force."""

    _INCIDENTS = ("agent", "state", "severity", "rule", "opened", "notified", "folded into")
    _DELIVERIES = ("at", "event", "agent", "severity", "channel", "attempts", "delivered", "error")
    _SILENCES = ("id", "pattern", "until", "by", "reason")

    def __init__(self, monitor: Monitor) -> None:
        self._monitor = monitor
        channels = ", ".join(code(c.name) for c in monitor.alerting.channels.values())
        self.channels = pn.pane.Markdown(
            f"Channels: {channels or 'none configured (`--notify URL` or a rules file)'}. Silence with "
            "`fleetpulse silence 'glob' --for 2h --reason ...`."
        )
        self.incidents = _table(_frame([], self._INCIDENTS), "open-incidents")
        self.deliveries = _table(_frame([], self._DELIVERIES), "alert-deliveries", page_size=15)
        self.silences = _table(_frame([], self._SILENCES), "silences")
        self.panel = pn.Column(
            self.channels,
            "### Open incidents",
            self.incidents,
            "### Alerts sent (one row per channel)",
            self.deliveries,
            "### Silences in force",
            self.silences,
            sizing_mode="stretch_width",
        )

    def refresh(self) -> None:
        store = self._monitor.store
        self.incidents.value = _frame(
            [
                {
                    "agent": i.agent, "state": i.state, "severity": i.severity.value, "rule": i.rule,
                    "opened": i.opened_at, "notified": i.notified, "folded into": i.root or "",
                }
                for i in store.open_incidents()
            ],
            self._INCIDENTS,
        )  # fmt: skip
        _, rows, _ = store.query(
            "SELECT \"at\", event, agent, severity, channel, attempts, delivered_at, coalesce(error, '') "
            'FROM alerts ORDER BY "at" DESC LIMIT 200'
        )
        self.deliveries.value = _frame(
            [dict(zip(self._DELIVERIES, row, strict=True)) for row in rows], self._DELIVERIES
        )
        self.silences.value = _frame(
            [
                {"id": x["id"], "pattern": x["pattern"], "until": x["ends_at"], "by": x["created_by"],
                 "reason": x["reason"]}
                for x in store.silences(datetime.now(UTC))
            ],
            self._SILENCES,
        )  # fmt: skip


def dashboard_page(monitor: Monitor, access: DashboardAccess | None = None) -> pn.viewable.Viewable:
    """One browser session's page."""
    access = access or DashboardAccess()
    records, frame = _shared(monitor).get()
    title = pn.pane.Markdown()
    summary = pn.pane.Markdown(f"## {literal(headline(records))}", name="headline", css_classes=["fleet-headline"])
    table = pn.widgets.Tabulator(
        frame,
        show_index=False,
        disabled=True,
        sizing_mode="stretch_width",
        header_filters=True,
        pagination="remote",
        page_size=50,
        name="fleet",
    )
    table.style.map(_state_badge, subset=["state"])  # type: ignore[union-attr]  # set for DataFrame values
    detail = _AgentDetail(monitor, access)
    fleet_history = _FleetHistory(monitor)
    graph = pn.pane.HTML(sizing_mode="stretch_width", css_classes=["dependency-graph"])
    impact = pn.pane.Markdown(css_classes=["dependency-impact"])
    status = _MonitorStatus(monitor)
    alerts = _AlertsView(monitor)
    tabs = pn.Tabs(
        ("Fleet", pn.Column("Click a row for the agent's detail.", table, sizing_mode="stretch_width")),
        ("Agent", detail.panel),
        ("History", fleet_history.panel),
        ("Dependencies", pn.Column(impact, graph, sizing_mode="stretch_width")),
        ("Alerts", alerts.panel),
        ("Monitor", status.pane),
        dynamic=False,
        sizing_mode="stretch_width",
    )
    ticks = [0]

    def show_agent(agent: str) -> None:
        detail.set_agents([r["agent"] for r in _shared(monitor).get()[0]])
        detail.select.value = agent
        tabs.active = _TABS.index("Agent")
        detail.refresh()

    def on_row_click(event: Any) -> None:
        with contextlib.suppress(IndexError, KeyError, TypeError):  # a click on an emptied table
            show_agent(str(table.value.iloc[event.row]["agent"]))

    table.on_click(on_row_click)

    def refresh_dependencies(current: list[dict[str, Any]]) -> None:
        svg, left_out = charts.dependency_graph_svg(current)
        more = f"<p>{left_out} more agents not drawn.</p>" if left_out else ""
        graph.object = svg + more if svg else "<p>No agent declares <code>depends_on</code>.</p>"
        lines = charts.impact_lines(current)
        impact.object = (
            "\n".join(f"* {literal(line)}" for line in lines) if lines else "Every agent that others need is up."
        )

    def refresh() -> None:
        current, frame = _shared(monitor).get()
        broker = "connected" if monitor.connected else "NOT connected: states are unknown"
        title.object = f"# fleetpulse \u2014 monitor {code(monitor.config.monitor_id)}, broker {broker}"
        summary.object = f"## {literal(headline(current))}"
        if table.value is not frame:
            table.value = frame
        detail.set_agents([r["agent"] for r in current])
        active = _TABS[tabs.active]
        ticks[0] += 1
        if active == "Agent" and ticks[0] % DETAIL_EVERY == 0:
            detail.refresh()
        elif active == "History" and ticks[0] % HISTORY_EVERY == 0:
            fleet_history.refresh()
        elif active == "Dependencies":
            refresh_dependencies(current)
        elif active == "Alerts" and ticks[0] % DETAIL_EVERY == 0:
            alerts.refresh()
        status.refresh(full=active == "Monitor")

    def on_tab(event: Any) -> None:
        shown = _TABS[event.new]
        if shown == "Agent":
            detail.refresh()
        elif shown == "History":
            fleet_history.refresh()
        elif shown == "Dependencies":
            refresh_dependencies(_shared(monitor).get()[0])
        elif shown == "Alerts":
            alerts.refresh()
        elif shown == "Monitor":
            status.refresh(full=True)

    tabs.param.watch(on_tab, "active")
    refresh()
    wanted = pn.state.location.query_params.get("agent") if pn.state.location else None
    if isinstance(wanted, str) and wanted:
        show_agent(wanted)
    pn.state.add_periodic_callback(refresh, period=REFRESH_MS)
    return pn.Column(title, status.line, summary, tabs, sizing_mode="stretch_width")
