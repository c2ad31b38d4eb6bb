"""The fleet as people and programs read it: agent dicts (SPEC §5), the per-state summary, the status table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from fleetpulse.monitor.health import AgentView, State
from fleetpulse.publisher.protocol import format_timestamp

__all__ = ["age_text", "agent_record", "format_status", "headline", "sort_for_people", "summary"]

# Rows people must act on first (SPEC dashboard rule, also used by `fleetpulse status`).
_URGENCY = {State.UNREACHABLE: 0, State.DEGRADED: 1, State.UNKNOWN: 2, State.KILLED: 3, State.HEALTHY: 4}


def _timestamp(moment: datetime | None) -> str | None:
    return format_timestamp(moment) if moment is not None else None


def agent_record(view: AgentView) -> dict[str, Any]:
    """One agent as `list_agents()`, `status --json` and `GET /api/agents` return it."""
    return {
        "agent": view.agent,
        "display_name": view.name or view.agent,
        "health_status": view.state.value,
        "reason": view.reason,
        "state_since": _timestamp(view.since),
        "last_heartbeat_at": _timestamp(view.last_heartbeat_at),
        "host": view.host,
        "pid": view.pid,
        "version": view.version,
        "group": view.group,
        "interval_s": view.interval_s,
        "depends_on": list(view.depends_on),
        "labels": dict(view.labels),
        "session": view.session,
        "paused": view.paused,
        "reported_status": view.reported_status.value,
        "first_seen": _timestamp(view.first_seen),
    }


def sort_for_people(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(records, key=lambda r: (_URGENCY.get(State(r["health_status"]), 9), r["agent"]))


def summary(records: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Count per state, every state present (zeros included) so consumers need no defaults."""
    counts = Counter(record["health_status"] for record in records)
    return {state.value: counts.get(state.value, 0) for state in State}


def headline(records: Sequence[dict[str, Any]]) -> str:
    """'19/20 healthy', plus what the rest are."""
    counts = summary(records)
    line = f"{counts['healthy']}/{len(records)} healthy"
    others = [f"{counts[s.value]} {s.value}" for s in State if s is not State.HEALTHY and counts[s.value]]
    return f"{line} ({', '.join(others)})" if others else line


def age_text(moment: str | None, now: datetime) -> str:
    """'12 s ago', '5 min ago', '3 h ago' or 'never', for an RFC 3339 time from an agent record."""
    if moment is None:
        return "never"
    seconds = max(0, int((now - datetime.fromisoformat(moment)).total_seconds()))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def format_status(records: Sequence[dict[str, Any]], now: datetime) -> str:
    """The `fleetpulse status` table."""
    rows = [("AGENT", "NAME", "STATE", "LAST HEARTBEAT", "HOST", "REASON")]
    for record in sort_for_people(records):
        rows.append(
            (
                record["agent"],
                record["display_name"],
                record["health_status"],
                age_text(record["last_heartbeat_at"], now),
                record["host"] or "",
                record["reason"] or "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1] for row in rows
    ]
    return "\n".join([headline(records), "", *(line.rstrip() for line in lines)])
