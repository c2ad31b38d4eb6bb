"""`fleetpulse report`: the history's headline figures over a window, as plain text or one standalone HTML page.

`build_report` asks SQL over the v3 views (`fleet_timeline`, `outages`, `reliability`, `incidents`) and the
heartbeats through a `RunSql` — a read-only `Store`, or a running monitor's `POST /api/sql` — and returns a
plain `Report`; `format_text` and `format_html` only format one, so each half is testable without the other.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fleetpulse.monitor.client import MonitorClient, MonitorError
from fleetpulse.monitor.store import Store

__all__ = [
    "AgentFigures",
    "Incident",
    "ModelCost",
    "Report",
    "RunSql",
    "Spender",
    "build_report",
    "format_duration",
    "format_html",
    "format_percent",
    "format_text",
    "history_sql",
]

RunSql = Callable[[str], list[dict[str, Any]]]
"""Runs one SELECT and answers its rows as dicts (column name -> value)."""

TIMELINE_AGENTS = 30  # the outage timeline shows the agents with the most downtime; more rows are unreadable
_TIMELINE_ROWS = 5_000  # the API answers at most 10,000 rows


@dataclass(frozen=True)
class AgentFigures:
    """One agent over the window. Downtime and availability are clipped to the window; outage counts,
    MTTR and MTBF are those of `reliability(since, until)`: outages that began in it."""

    agent: str
    outages: int
    recovered: int
    downtime_s: float
    observed_s: float  # healthy + degraded + unreachable: killed and unwatched time are neither up nor down
    mttr_s: float | None
    mtbf_s: float | None

    @property
    def availability(self) -> float | None:
        return 1.0 - self.downtime_s / self.observed_s if self.observed_s > 0 else None


@dataclass(frozen=True)
class Incident:
    """Outages grouped by root cause (view `incidents`)."""

    root_agent: str
    started_at: datetime
    ended_at: datetime | None  # None while any of its outages is open
    duration_s: float
    agents: tuple[str, ...]

    @property
    def impacted(self) -> tuple[str, ...]:
        return tuple(agent for agent in self.agents if agent != self.root_agent)


@dataclass(frozen=True)
class Spender:
    agent: str
    cost_usd: float
    tokens_in: int
    tokens_out: int
    tasks_ok: int


@dataclass(frozen=True)
class ModelCost:
    model: str
    cost_usd: float


@dataclass(frozen=True)
class Report:
    since: datetime
    until: datetime
    source: str  # where the figures came from: a file, or a monitor's URL
    slo: float  # target availability, 0-1
    agents_observed: int
    availability: float | None  # fleet-wide: healthy agent-seconds over observed agent-seconds
    below_slo: int  # agents whose own availability is under `slo`
    outages: int
    open_outages: int
    downtime_s: float
    mttr_s: float | None  # mean observed duration of the outages begun in the window that have ended
    mtbf_s: float | None  # healthy agent-seconds per outage begun in the window
    top_agents: tuple[AgentFigures, ...]  # by downtime, those that had any
    incidents: tuple[Incident, ...]  # most agents impacted first, then longest
    incident_count: int
    cost_usd: float
    top_spenders: tuple[Spender, ...]
    top_models: tuple[ModelCost, ...]
    timeline: tuple[Mapping[str, Any], ...]  # outages rows of the agents with the most downtime, for the chart


# -- fetching --------------------------------------------------------------------------------------


def history_sql(history: Store | MonitorClient) -> RunSql:
    """A `RunSql` over a read-only store or a running monitor's API (which answers JSON: times as RFC 3339)."""
    if isinstance(history, MonitorClient):
        client = history

        def over_api(sql: str) -> list[dict[str, Any]]:
            result = client.sql(sql)
            if result.get("truncated"):
                raise MonitorError(413, f"the monitor cut the answer to {len(result['rows'])} rows")
            return [dict(zip(result["columns"], row, strict=True)) for row in result["rows"]]

        return over_api
    store = history

    def over_store(sql: str) -> list[dict[str, Any]]:
        columns, rows, _ = store.query(sql, limit=1_000_000)
        return [dict(zip(columns, row, strict=True)) for row in rows]

    return over_store


def _literal(moment: datetime) -> str:
    """A TIMESTAMPTZ literal: the API takes no query parameters, and these values are ours, never typed in."""
    return f"TIMESTAMPTZ '{moment.astimezone(UTC).isoformat()}'"


def _moment(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


# Per agent over the window: time healthy and time down from the gap-aware timeline, clipped to the window,
# and the outage figures of `reliability`. {since} and {until} are TIMESTAMPTZ literals.
_PER_AGENT = """
WITH stays AS (
    SELECT agent, state,
           epoch(least(coalesce(ended_at, current_timestamp), {until})) - epoch(greatest(started_at, {since})) AS s
    FROM fleet_timeline
    WHERE coalesce(ended_at, current_timestamp) > {since} AND started_at < {until}
),
observed AS (
    SELECT agent,
           coalesce(sum(s) FILTER (WHERE state IN ('degraded', 'unreachable')), 0) AS downtime_s,
           coalesce(sum(s) FILTER (WHERE state IN ('healthy', 'degraded', 'unreachable')), 0) AS observed_s,
           coalesce(sum(s) FILTER (WHERE state = 'healthy'), 0) AS uptime_s
    FROM stays WHERE s > 0 GROUP BY agent
),
per_agent AS (
    SELECT coalesce(o.agent, r.agent) AS agent, coalesce(r.outages, 0) AS outages,
           coalesce(r.recovered, 0) AS recovered, coalesce(o.downtime_s, 0) AS downtime_s,
           coalesce(o.observed_s, 0) AS observed_s, coalesce(o.uptime_s, 0) AS uptime_s, r.mttr_s, r.mtbf_s
    FROM observed o FULL JOIN reliability({since}, {until}) r ON r.agent = o.agent
)
"""

_FLEET = """
SELECT count(*) FILTER (WHERE observed_s > 0) AS agents_observed,
       sum(uptime_s) / nullif(sum(observed_s), 0) AS availability,
       count(*) FILTER (WHERE observed_s > 0 AND downtime_s / observed_s > 1 - {slo}) AS below_slo,
       coalesce(sum(outages), 0) AS outages, coalesce(sum(outages - recovered), 0) AS open_outages,
       coalesce(sum(downtime_s), 0) AS downtime_s,
       sum(mttr_s * recovered) / nullif(sum(recovered), 0) AS mttr_s,
       sum(uptime_s) / nullif(sum(outages), 0) AS mtbf_s
FROM per_agent
"""

_TOP_AGENTS = """
SELECT agent, outages, recovered, downtime_s, observed_s, mttr_s, mtbf_s FROM per_agent
WHERE downtime_s > 0 OR outages > 0 ORDER BY downtime_s DESC, outages DESC, agent LIMIT {limit}
"""

_TIMELINE = """
SELECT agent, state, started_at, ended_at, duration_s FROM outages
WHERE started_at < {until} AND coalesce(ended_at, current_timestamp) > {since}
  AND agent IN (SELECT agent FROM per_agent WHERE downtime_s > 0 ORDER BY downtime_s DESC, agent LIMIT {agents})
ORDER BY agent, started_at LIMIT {rows}
"""

_INCIDENTS = """
SELECT root_agent, started_at, ended_at, duration_s, agents, count(*) OVER () AS total FROM incidents
WHERE started_at < {until} AND coalesce(ended_at, current_timestamp) > {since}
ORDER BY impacted DESC, duration_s DESC, started_at LIMIT {limit}
"""

_SPENDERS = """
SELECT agent, sum(cost_usd) AS cost_usd, coalesce(sum(tokens_in), 0) AS tokens_in,
       coalesce(sum(tokens_out), 0) AS tokens_out, coalesce(sum(ok), 0) AS tasks_ok,
       sum(sum(cost_usd)) OVER () AS total_usd
FROM heartbeat_usage WHERE started_at >= {since} AND started_at < {until}
GROUP BY agent HAVING sum(cost_usd) > 0 ORDER BY cost_usd DESC, agent LIMIT {limit}
"""

_MODELS = """
SELECT model, sum(cost_usd) AS cost_usd
FROM model_usage WHERE started_at >= {since} AND started_at < {until}
GROUP BY model HAVING sum(cost_usd) > 0
ORDER BY cost_usd DESC, model LIMIT {limit}
"""


def build_report(
    run_sql: RunSql, since: datetime, until: datetime, slo: float = 0.995, top: int = 10, source: str = ""
) -> Report:
    """The figures of [since, until) as `run_sql` answers them; `slo` is a ratio (0.995 for 99.5 %)."""
    window = {"since": _literal(since), "until": _literal(until)}
    per_agent = _PER_AGENT.format(**window)
    (fleet,) = run_sql(per_agent + _FLEET.format(slo=float(slo)))
    top_agents = tuple(
        AgentFigures(
            agent=row["agent"],
            outages=int(row["outages"]),
            recovered=int(row["recovered"]),
            downtime_s=float(row["downtime_s"]),
            observed_s=float(row["observed_s"]),
            mttr_s=row["mttr_s"],
            mtbf_s=row["mtbf_s"],
        )
        for row in run_sql(per_agent + _TOP_AGENTS.format(limit=int(top)))
    )
    timeline = tuple(
        {**row, "started_at": _moment(row["started_at"]), "ended_at": _moment(row["ended_at"])}
        for row in run_sql(per_agent + _TIMELINE.format(**window, agents=TIMELINE_AGENTS, rows=_TIMELINE_ROWS))
    )
    incident_rows = run_sql(_INCIDENTS.format(**window, limit=int(top)))
    incidents = tuple(
        Incident(
            root_agent=row["root_agent"],
            started_at=_moment(row["started_at"]) or since,
            ended_at=_moment(row["ended_at"]),
            duration_s=float(row["duration_s"]),
            agents=tuple(row["agents"]),
        )
        for row in incident_rows
    )
    spender_rows = run_sql(_SPENDERS.format(**window, limit=int(top)))
    return Report(
        since=since,
        until=until,
        source=source,
        slo=slo,
        agents_observed=int(fleet["agents_observed"] or 0),
        availability=fleet["availability"],
        below_slo=int(fleet["below_slo"] or 0),
        outages=int(fleet["outages"]),
        open_outages=int(fleet["open_outages"]),
        downtime_s=float(fleet["downtime_s"]),
        mttr_s=fleet["mttr_s"],
        mtbf_s=fleet["mtbf_s"],
        top_agents=top_agents,
        incidents=incidents,
        incident_count=int(incident_rows[0]["total"]) if incident_rows else 0,
        cost_usd=float(spender_rows[0]["total_usd"]) if spender_rows else 0.0,
        top_spenders=tuple(
            Spender(
                agent=row["agent"],
                cost_usd=float(row["cost_usd"]),
                tokens_in=int(row["tokens_in"]),
                tokens_out=int(row["tokens_out"]),
                tasks_ok=int(row["tasks_ok"]),
            )
            for row in spender_rows
        ),
        top_models=tuple(
            ModelCost(row["model"], float(row["cost_usd"])) for row in run_sql(_MODELS.format(**window, limit=int(top)))
        ),
        timeline=timeline,
    )


# -- formatting ------------------------------------------------------------------------------------


def format_duration(seconds: float | None) -> str:
    """`4.2 s`, `12 min 5 s`, `3 h 12 min`, `2 d 4 h`; an em dash for None (or NaN: a DataFrame's None)."""
    if seconds is None or math.isnan(seconds):
        return "\u2014"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    for unit_s, unit, sub_s, sub in ((86_400, "d", 3600, "h"), (3600, "h", 60, "min"), (60, "min", 1, "s")):
        if whole >= unit_s:
            count, rest = divmod(whole, unit_s)
            return f"{count} {unit} {rest // sub_s} {sub}" if rest // sub_s else f"{count} {unit}"
    return f"{whole} s"


def format_percent(ratio: float | None) -> str:
    """Availability as people read it: truncated (never rounded up to 100 %), 3 decimals; an em dash for None/NaN."""
    if ratio is None or math.isnan(ratio):
        return "\u2014"
    if ratio >= 1:
        return "100 %"
    return f"{math.floor(ratio * 100_000) / 1000:.3f} %"


def _moment_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    return [
        indent + "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in (header, *rows)
    ]


def _headline(report: Report) -> list[tuple[str, str]]:
    """(label, value) pairs shared by the text and the HTML."""
    slo = f"SLO {report.slo * 100:g} %: {report.below_slo} agent{'s' * (report.below_slo != 1)} below"
    still_open = f", {report.open_outages} still open" if report.open_outages else ""
    incidents = f"{report.incident_count} (outages grouped by root cause)"
    return [
        ("Fleet availability", f"{format_percent(report.availability)}  ({report.agents_observed} agents; {slo})"),
        ("Outages", f"{report.outages} begun{still_open}; {format_duration(report.downtime_s)} down in total"),
        ("MTTR / MTBF", f"{format_duration(report.mttr_s)} / {format_duration(report.mtbf_s)}"),
        ("Incidents", incidents),
        ("Cost", f"${report.cost_usd:,.2f}"),
    ]


def _agent_cells(figures: AgentFigures) -> list[str]:
    return [
        figures.agent,
        str(figures.outages),
        format_duration(figures.downtime_s),
        format_percent(figures.availability),
        format_duration(figures.mttr_s),
        format_duration(figures.mtbf_s),
    ]


def _incident_cells(incident: Incident) -> list[str]:
    return [
        _moment_text(incident.started_at),
        incident.root_agent,
        format_duration(incident.duration_s) + ("" if incident.ended_at else " (open)"),
        ", ".join(incident.impacted) or "\u2014",
    ]


def _spender_cells(spender: Spender) -> list[str]:
    return [spender.agent, f"${spender.cost_usd:,.4f}", f"{spender.tokens_in:,} / {spender.tokens_out:,}"]


_AGENT_HEADER = ("AGENT", "OUTAGES", "DOWNTIME", "AVAILABILITY", "MTTR", "MTBF")
_INCIDENT_HEADER = ("STARTED (UTC)", "ROOT CAUSE", "DURATION", "IMPACTED")
_SPENDER_HEADER = ("AGENT", "COST", "TOKENS IN / OUT")


def format_text(report: Report) -> str:
    """The report as plain text for a terminal (and for e-mail)."""
    lines = [
        f"fleetpulse report {_moment_text(report.since)} .. {_moment_text(report.until)} UTC"
        + (f"  (from {report.source})" if report.source else ""),
        "",
    ]
    width = max(len(label) for label, _ in _headline(report))
    lines += [f"{label.ljust(width)}  {value}" for label, value in _headline(report)]
    lines += ["", "Top agents by downtime"]
    if report.top_agents:
        lines += _table(_AGENT_HEADER, [_agent_cells(f) for f in report.top_agents])
    else:
        lines.append("  no downtime")
    lines += ["", "Incidents (most agents impacted first)"]
    if report.incidents:
        lines += _table(_INCIDENT_HEADER, [_incident_cells(i) for i in report.incidents])
        if report.incident_count > len(report.incidents):
            lines.append(f"  ... and {report.incident_count - len(report.incidents)} more")
    else:
        lines.append("  none")
    lines += ["", "Top spenders"]
    if report.top_spenders:
        lines += _table(_SPENDER_HEADER, [_spender_cells(s) for s in report.top_spenders])
        models = ", ".join(f"{m.model} ${m.cost_usd:,.4f}" for m in report.top_models)
        if models:
            lines.append(f"  by model: {models}")
    else:
        lines.append("  no cost reported")
    return "\n".join(lines) + "\n"


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], empty: str) -> str:
    if not rows:
        return f"<p class='empty'>{html.escape(empty)}</p>"
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; padding: 0 1rem; color: #212121; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; } .source { color: #616161; }
dl { display: grid; grid-template-columns: max-content auto; gap: .3rem 1.5rem; } dt { font-weight: 600; }
table { border-collapse: collapse; width: 100%; } th, td { text-align: left; padding: .3rem .6rem; }
thead { border-bottom: 2px solid #9e9e9e; } tbody tr:nth-child(odd) { background: #f5f5f5; }
.empty { color: #616161; }
"""


def format_html(report: Report) -> str:
    """One standalone page: the headline, the outage timeline (bokeh, its JavaScript inlined) and the tables."""
    from bokeh.embed import components
    from bokeh.embed.bundle import bundle_for_objs_and_resources
    from bokeh.resources import INLINE

    from fleetpulse.monitor.charts import outage_timeline

    chart_resources = chart = ""
    if report.timeline:
        figure = outage_timeline(report.timeline, report.since, report.until)
        script, div = components(figure)
        # Only the JavaScript this figure needs, inlined: `scripts()` leaves out the URL-only files that other
        # imported extensions register (Panel's, once it is imported), which would not load offline.
        bundle = bundle_for_objs_and_resources([figure], INLINE)
        chart_resources = bundle.scripts() + "".join(f"<style>{css}</style>" for css in bundle.css_raw)
        chart = f"{script}{div}"
    title = f"fleetpulse report {_moment_text(report.since)} .. {_moment_text(report.until)} UTC"
    headline = "".join(
        f"<dt>{html.escape(label)}</dt><dd>{html.escape(value)}</dd>" for label, value in _headline(report)
    )
    more = report.incident_count - len(report.incidents)
    models = ", ".join(f"{m.model} ${m.cost_usd:,.4f}" for m in report.top_models)
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='source'>from {html.escape(report.source)}</p>" if report.source else "",
        f"<dl>{headline}</dl>",
        "<h2>Outages across the fleet</h2>",
        chart or "<p class='empty'>no outages in the window</p>",
        "<h2>Top agents by downtime</h2>",
        _html_table(_AGENT_HEADER, [_agent_cells(f) for f in report.top_agents], "no downtime"),
        "<h2>Incidents (most agents impacted first)</h2>",
        _html_table(_INCIDENT_HEADER, [_incident_cells(i) for i in report.incidents], "none"),
        f"<p>... and {more} more</p>" if more > 0 else "",
        "<h2>Top spenders</h2>",
        _html_table(_SPENDER_HEADER, [_spender_cells(s) for s in report.top_spenders], "no cost reported"),
        f"<p>by model: {html.escape(models)}</p>" if models else "",
    ]
    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style>{chart_resources}</head><body>{''.join(sections)}</body></html>\n"
    )
