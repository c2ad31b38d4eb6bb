"""The Panel dashboard: the fleet at a glance, refreshed from the live views every second (first slice: fleet view)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pandas as pd
import panel as pn

from monitor.fleet import age_text, headline, sort_for_people
from monitor.service import Monitor

__all__ = ["fleet_frame", "fleet_view"]

REFRESH_MS = 1000
_STATE_COLOURS = {
    "healthy": "#2e7d32",
    "degraded": "#ef6c00",
    "unreachable": "#c62828",
    "killed": "#616161",
    "unknown": "#6d4c41",
}
_COLUMNS = ["state", "agent", "name", "group", "host", "last heartbeat", "interval (s)", "reason"]


def fleet_frame(records: list[dict[str, Any]], now: datetime) -> pd.DataFrame:
    """The fleet table's rows: urgent states first, ages relative to `now`."""
    rows = [
        {
            "state": record["health_status"],
            "agent": record["agent"],
            "name": record["display_name"],
            "group": record["group"] or "",
            "host": record["host"],
            "last heartbeat": age_text(record["last_heartbeat_at"], now),
            "interval (s)": record["interval_s"],
            "reason": record["reason"],
        }
        for record in sort_for_people(records)
    ]
    return pd.DataFrame(rows, columns=_COLUMNS)


def _state_badge(value: str) -> str:
    colour = _STATE_COLOURS.get(value, "#000")
    return f"color: white; background-color: {colour}; font-weight: bold"


def _title(monitor: Monitor) -> str:
    broker = "connected" if monitor.connected else "NOT connected: states are unknown"
    return f"# fleetpulse \u2014 monitor `{monitor.config.monitor_id}`, broker {broker}"


def fleet_view(monitor: Monitor) -> pn.viewable.Viewable:
    """One browser session's page. Each session polls the monitor's in-memory views (no SQL)."""
    records = monitor.list_agents()
    summary = pn.pane.Markdown(f"## {headline(records)}", name="headline", css_classes=["fleet-headline"])
    table = pn.widgets.Tabulator(
        fleet_frame(records, datetime.now(UTC)),
        show_index=False,
        disabled=True,
        sizing_mode="stretch_width",
        header_filters=True,
        pagination="remote",
        page_size=50,
        name="fleet",
    )
    table.style.map(_state_badge, subset=["state"])  # type: ignore[union-attr]  # set for DataFrame values

    title = pn.pane.Markdown(_title(monitor))

    def refresh() -> None:
        current = monitor.list_agents()
        title.object = _title(monitor)
        summary.object = f"## {headline(current)}"
        table.value = fleet_frame(current, datetime.now(UTC))

    pn.state.add_periodic_callback(refresh, period=REFRESH_MS)
    return pn.Column(
        title,
        summary,
        table,
        sizing_mode="stretch_width",
    )
