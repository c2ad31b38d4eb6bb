"""The dashboard's pictures, built from plain rows: state timelines, latency and cost charts, the dependency graph."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from bokeh.models import ColumnDataSource, HoverTool, Range1d
from bokeh.plotting import figure

__all__ = [
    "STATE_COLOURS",
    "cost_chart",
    "cost_lines",
    "dependency_graph_svg",
    "dependency_layers",
    "impact_lines",
    "latency_chart",
    "outage_timeline",
    "state_timeline",
]

STATE_COLOURS = {
    "healthy": "#2e7d32",
    "degraded": "#ef6c00",
    "unreachable": "#c62828",
    "killed": "#616161",
    "unknown": "#6d4c41",
}
_BAD = ("degraded", "unreachable")
MAX_GRAPH_NODES = 300  # beyond this a drawing is unreadable; the page says how many were left out


def _figure(title: str, height: int, since: datetime, until: datetime, **options: Any) -> Any:
    plot = figure(
        title=title,
        height=height,
        sizing_mode="stretch_width",
        x_axis_type="datetime",
        x_range=Range1d(start=since, end=until),
        tools="xpan,xwheel_zoom,reset,save",
        toolbar_location="right",
        **options,
    )
    plot.xaxis.axis_label = "UTC"
    return plot


def state_timeline(stays: Sequence[Mapping[str, Any]], since: datetime, until: datetime) -> Any:
    """One agent's stays as coloured bands over the window."""
    plot = _figure("state over time", 130, since, until, y_range=(0, 1))
    source = ColumnDataSource(
        {
            "left": [s["started_at"] for s in stays],
            "right": [s["ended_at"] for s in stays],
            "state": [s["state"] for s in stays],
            "reason": [s["reason"] for s in stays],
            "colour": [STATE_COLOURS.get(s["state"], "#000") for s in stays],
        }
    )
    plot.quad(left="left", right="right", bottom=0, top=1, color="colour", source=source)
    plot.yaxis.visible = False
    plot.ygrid.visible = False
    # `@reason` is an agent's own text: Bokeh escapes a tooltip's values unless the field says `{safe}`.
    plot.add_tools(HoverTool(tooltips=[("state", "@state"), ("reason", "@reason")]))
    return plot


def latency_chart(series: Sequence[Mapping[str, Any]], since: datetime, until: datetime) -> Any:
    plot = _figure("task latency (ms, worst per bucket)", 220, since, until)
    source = ColumnDataSource(
        {
            "bucket": [row["bucket"] for row in series],
            "p50": [row["latency_ms_p50"] for row in series],
            "p95": [row["latency_ms_p95"] for row in series],
        }
    )
    plot.line("bucket", "p50", source=source, legend_label="p50", color="#1565c0", line_width=2)
    plot.line("bucket", "p95", source=source, legend_label="p95", color="#ad1457", line_width=2)
    plot.legend.location = "top_left"
    return plot


def cost_chart(series: Sequence[Mapping[str, Any]], since: datetime, until: datetime, bucket_s: int) -> Any:
    plot = _figure("cost (USD per bucket)", 200, since, until)
    source = ColumnDataSource(
        {"bucket": [row["bucket"] for row in series], "cost": [row["cost_usd"] or 0.0 for row in series]}
    )
    plot.vbar(x="bucket", top="cost", width=bucket_s * 1000 * 0.9, source=source, color="#6a1b9a")
    plot.add_tools(HoverTool(tooltips=[("USD", "@cost{0.0000}")]))
    return plot


def cost_lines(series: Sequence[Mapping[str, Any]], since: datetime, until: datetime) -> Any:
    """Cost per time bucket, one line per agent (the caller picks which agents)."""
    plot = _figure("cost per agent (USD per bucket)", 240, since, until)
    palette = ("#1565c0", "#ad1457", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#5d4037", "#455a64")
    agents = sorted({row["agent"] for row in series})
    for index, agent in enumerate(agents):
        rows = [row for row in series if row["agent"] == agent]
        source = ColumnDataSource({"bucket": [r["bucket"] for r in rows], "cost": [r["cost_usd"] for r in rows]})
        plot.line("bucket", "cost", source=source, legend_label=agent, color=palette[index % len(palette)])
    if agents:
        plot.legend.location = "top_left"
    return plot


def outage_timeline(outages: Sequence[Mapping[str, Any]], since: datetime, until: datetime) -> Any:
    """Every agent's outages in the window, one row per agent."""
    agents = sorted({row["agent"] for row in outages}, reverse=True)
    plot = _figure("outages across the fleet", max(160, 28 * len(agents) + 70), since, until, y_range=agents or [""])
    source = ColumnDataSource(
        {
            "agent": [row["agent"] for row in outages],
            "left": [max(row["started_at"], since) for row in outages],
            "right": [min(row["ended_at"] or until, until) for row in outages],
            "state": [row["state"] for row in outages],
            "duration": [row["duration_s"] for row in outages],
            "colour": [STATE_COLOURS.get(row["state"], "#000") for row in outages],
        }
    )
    plot.hbar(y="agent", left="left", right="right", height=0.7, color="colour", source=source)
    plot.add_tools(HoverTool(tooltips=[("agent", "@agent"), ("state", "@state"), ("seconds", "@duration{0.0}")]))
    return plot


def dependency_layers(depends_on: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Column per agent: 0 for agents that need nothing, else 1 + the deepest of what it needs (cycles cut)."""
    layers: dict[str, int] = {}

    def depth(agent: str, path: frozenset[str]) -> int:
        if agent in layers:
            return layers[agent]
        needs = [d for d in depends_on.get(agent, ()) if d not in path]
        layers[agent] = 0 if not needs else 1 + max(depth(d, path | {agent}) for d in needs)
        return layers[agent]

    for agent in sorted(depends_on):
        depth(agent, frozenset())
    return layers


def dependency_graph_svg(records: Sequence[Mapping[str, Any]]) -> tuple[str, int]:
    """An SVG of `depends_on` among agents that take part in it, nodes coloured by state; and how many were left out.

    Plain SVG rather than a canvas plot: the names stay text a browser test (and a screen reader) can find.
    """
    state = {r["agent"]: r["health_status"] for r in records}
    edges = [(r["agent"], dependency) for r in records for dependency in r["depends_on"]]
    involved = sorted({a for edge in edges for a in edge})
    left_out = max(0, len(involved) - MAX_GRAPH_NODES)
    involved = involved[:MAX_GRAPH_NODES]
    if not involved:
        return "", 0
    shown = set(involved)
    graph = {a: [d for src, d in edges if src == a and d in shown] for a in involved}
    layers = dependency_layers(graph)
    columns: dict[int, list[str]] = {}
    for agent in involved:
        columns.setdefault(layers[agent], []).append(agent)
    x_step, y_step, width, height = 230, 54, 180, 34
    position = {
        agent: (20 + layer * x_step, 20 + row * y_step)
        for layer, agents in columns.items()
        for row, agent in enumerate(agents)
    }
    svg_width = 40 + (max(columns) + 1) * x_step
    svg_height = 40 + max(len(agents) for agents in columns.values()) * y_step
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{svg_width}" height="{svg_height}" role="img" '
        'aria-label="agent dependencies"><defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" '
        'markerWidth="8" markerHeight="8" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>'
    ]
    for source, target in edges:
        if source in position and target in position:
            (x1, y1), (x2, y2) = position[source], position[target]
            parts.append(
                f'<line x1="{x1}" y1="{y1 + height / 2}" x2="{x2 + width}" y2="{y2 + height / 2}" '
                'stroke="#555" stroke-width="1.5" marker-end="url(#arrow)"/>'
            )
    for agent, (x, y) in position.items():
        agent_state = state.get(agent, "not seen")
        colour = STATE_COLOURS.get(agent_state, "#9e9e9e")
        dash = ' stroke-dasharray="4 3"' if agent not in state else ""
        label = html.escape(f"{agent} \u2014 {agent_state}")
        parts.append(
            f'<g class="dependency-node" data-agent="{html.escape(agent)}" data-state="{html.escape(agent_state)}">'
            f'<rect x="{x}" y="{y}" width="{width}" height="{height}" rx="6" fill="{colour}" stroke="#333"{dash}/>'
            f'<text x="{x + 8}" y="{y + 22}" fill="white" font-size="13" font-family="sans-serif">{label}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts), left_out


def impact_lines(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """'order-processor is unreachable; impacted: refund-agent (degraded)' for every down agent others need."""
    state = {r["agent"]: r["health_status"] for r in records}
    needed_by: dict[str, list[str]] = {}
    for record in records:
        for dependency in record["depends_on"]:
            needed_by.setdefault(dependency, []).append(record["agent"])
    lines = []
    for agent in sorted(needed_by):
        agent_state = state.get(agent, "not seen")
        if agent_state in (*_BAD, "killed", "not seen"):
            impacted = ", ".join(f"{a} ({state.get(a, '?')})" for a in sorted(needed_by[agent]))
            lines.append(f"{agent} is {agent_state}; impacted: {impacted}")
    return lines
