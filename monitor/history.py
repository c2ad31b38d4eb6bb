"""Questions about the past, answered in DuckDB SQL over the store: stays, uptime, MTTR, cost over time.

Work and cost read `heartbeat_usage` / `model_usage` (schema v4), which cover raw heartbeats and the
retention roll-ups alike, so windows older than the raw retention keep their figures.

The dashboard's agent detail and fleet history views read these; every function takes the window
(`since`, `until`) as arguments, so results are reproducible and testable with fixed times.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fleetpulse.monitor.store import Store
from fleetpulse.monitor.usage import AgentUsage

__all__ = [
    "agent_commands",
    "agent_series",
    "agent_transitions",
    "availability",
    "cost_by_model",
    "cost_over_time",
    "mttr",
    "stays",
    "top_spenders",
    "usage_today",
]

# The views of monitor/schema.py (v3) hold the definitions: `fleet_timeline` (gap-aware stays),
# `outages`, `reliability(since, until)`. These functions clip them to a window.
_STAYS = """
SELECT agent, state, reason,
       greatest(started_at, $since) AS started_at,
       least(coalesce(ended_at, $until), $until) AS ended_at
FROM fleet_timeline
WHERE coalesce(ended_at, $until) > $since AND started_at < $until {and_agent}
"""


def _rows(store: Store, sql: str, parameters: dict[str, Any] | list[Any]) -> list[dict[str, Any]]:
    columns, rows, _ = store.query(sql, parameters, limit=1_000_000)
    return [dict(zip(columns, row, strict=True)) for row in rows]


def stays(store: Store, since: datetime, until: datetime, agent: str | None = None) -> list[dict[str, Any]]:
    """Every agent's (or one agent's) stays in each state within [since, until): agent, state, reason, bounds."""
    and_agent = "AND agent = $agent" if agent is not None else ""
    parameters: dict[str, Any] = {"since": since, "until": until}
    if agent is not None:
        parameters["agent"] = agent
    return _rows(store, _STAYS.format(and_agent=and_agent) + " ORDER BY agent, started_at", parameters)


def availability(store: Store, since: datetime, until: datetime) -> dict[str, float]:
    """Share of each agent's observed time in `healthy` within the window.

    Observed time leaves out `killed` (stopped on purpose) and `unknown` (the monitor could not see):
    neither is the agent's downtime. Agents with no observed time are absent.
    """
    sql = f"""
        SELECT agent,
               sum(epoch(ended_at) - epoch(started_at)) FILTER (WHERE state = 'healthy') AS healthy_s,
               sum(epoch(ended_at) - epoch(started_at))
                   FILTER (WHERE state NOT IN ('killed', 'unknown')) AS observed_s
        FROM ({_STAYS.format(and_agent="")}) GROUP BY agent
    """
    result: dict[str, float] = {}
    for row in _rows(store, sql, {"since": since, "until": until}):
        if row["observed_s"]:
            result[row["agent"]] = (row["healthy_s"] or 0.0) / row["observed_s"]
    return result


def mttr(store: Store, since: datetime, until: datetime) -> list[dict[str, Any]]:
    """Per agent: outages begun in the window, how many ended, mean repair time, observed downtime, MTBF."""
    sql = """
        SELECT agent, outages, recovered, mttr_s, downtime_s AS down_s, mtbf_s
        FROM reliability($since, $until) WHERE outages > 0 ORDER BY down_s DESC, agent
    """
    return _rows(store, sql, {"since": since, "until": until})


def agent_transitions(store: Store, agent: str, limit: int = 50) -> list[dict[str, Any]]:
    sql = """SELECT "at", from_state, to_state, reason, snapshot FROM transitions
             WHERE agent = $agent ORDER BY "at" DESC, id DESC LIMIT $limit"""
    return _rows(store, sql, {"agent": agent, "limit": limit})


def agent_commands(store: Store, agent: str, group: str | None, limit: int = 50) -> list[dict[str, Any]]:
    """The audit log rows aimed at the agent or at its group."""
    sql = """SELECT "at", command, issued_by, reason, target FROM commands
             WHERE target = $agent_target OR target = $group_target ORDER BY "at" DESC LIMIT $limit"""
    parameters = {"agent_target": f"agents/{agent}", "group_target": f"groups/{group}" if group else "", "limit": limit}
    return _rows(store, sql, parameters)


def agent_series(store: Store, agent: str, since: datetime, until: datetime, bucket_s: int) -> list[dict[str, Any]]:
    """Latency (worst p50/p95 per bucket), cost and tasks of one agent over time, in buckets of `bucket_s`."""
    sql = """
        SELECT time_bucket(to_seconds($bucket_s), started_at) AS bucket,
               max(latency_ms_p50_max) AS latency_ms_p50, max(latency_ms_p95_max) AS latency_ms_p95,
               sum(cost_usd) AS cost_usd, sum(ok) AS ok, sum(failed) AS failed
        FROM heartbeat_usage
        WHERE agent = $agent AND started_at >= $since AND started_at < $until
        GROUP BY bucket ORDER BY bucket
    """
    return _rows(store, sql, {"agent": agent, "since": since, "until": until, "bucket_s": bucket_s})


def cost_over_time(store: Store, since: datetime, until: datetime, bucket_s: int) -> list[dict[str, Any]]:
    """Cost per agent per time bucket."""
    sql = """
        SELECT time_bucket(to_seconds($bucket_s), started_at) AS bucket, agent, sum(cost_usd) AS cost_usd
        FROM heartbeat_usage WHERE started_at >= $since AND started_at < $until AND cost_usd > 0
        GROUP BY ALL ORDER BY bucket, agent
    """
    return _rows(store, sql, {"since": since, "until": until, "bucket_s": bucket_s})


def cost_by_model(store: Store, since: datetime, until: datetime) -> list[dict[str, Any]]:
    """Cost and tokens per model, summed over the agents' per-model windows."""
    sql = """
        SELECT model, sum(cost_usd) AS cost_usd, sum(tokens_in) AS tokens_in, sum(tokens_out) AS tokens_out
        FROM model_usage WHERE started_at >= $since AND started_at < $until
        GROUP BY model ORDER BY cost_usd DESC, model
    """
    return _rows(store, sql, {"since": since, "until": until})


def top_spenders(store: Store, since: datetime, until: datetime, limit: int = 10) -> list[dict[str, Any]]:
    sql = """
        SELECT agent, sum(cost_usd) AS cost_usd, sum(tokens_in) AS tokens_in, sum(tokens_out) AS tokens_out,
               sum(ok) AS tasks_ok, sum(failed) AS tasks_failed
        FROM heartbeat_usage WHERE started_at >= $since AND started_at < $until
        GROUP BY agent HAVING sum(cost_usd) > 0 ORDER BY cost_usd DESC, agent LIMIT $limit
    """
    return _rows(store, sql, {"since": since, "until": until, "limit": limit})


def usage_today(store: Store, now: datetime) -> dict[str, AgentUsage]:
    """Today's (UTC) figures per agent, recomputed from the heartbeats: what a restarted monitor resumes from."""
    day_start = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    hour_start = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    sql = """
        SELECT agent, coalesce(sum(ok), 0) AS ok, coalesce(sum(failed), 0) AS failed,
               coalesce(sum(cost_usd), 0) AS cost,
               coalesce(sum(cost_usd) FILTER (WHERE received_at >= $hour), 0) AS hour,
               coalesce(sum(tokens_in), 0) AS tokens_in, coalesce(sum(tokens_out), 0) AS tokens_out,
               -- both from one window: the latest with tasks and a p50, as UsageBook.add keeps them
               arg_max({'p50': latency_ms_p50, 'p95': latency_ms_p95}, received_at)
                   FILTER (WHERE ok + failed > 0 AND latency_ms_p50 IS NOT NULL) AS latency
        FROM heartbeats WHERE received_at >= $day GROUP BY agent
    """
    books: dict[str, AgentUsage] = {}
    for row in _rows(store, sql, {"day": day_start, "hour": hour_start}):
        books[row["agent"]] = AgentUsage(
            day=day_start.date(),
            hour=hour_start,
            ok_today=int(row["ok"]),
            failed_today=int(row["failed"]),
            cost_today_usd=float(row["cost"]),
            cost_hour_usd=float(row["hour"]),
            tokens_in_today=int(row["tokens_in"]),
            tokens_out_today=int(row["tokens_out"]),
            latency_ms_p50=row["latency"]["p50"] if row["latency"] else None,
            latency_ms_p95=row["latency"]["p95"] if row["latency"] else None,
        )
    by_model_sql = """
        SELECT h.agent, m.key AS model, sum(CAST(json_extract(m.value, '$.cost_usd') AS DOUBLE)) AS cost
        FROM heartbeats h, json_each(h.by_model) m WHERE h.received_at >= $day GROUP BY ALL
    """
    for row in _rows(store, by_model_sql, {"day": day_start}):
        if row["agent"] in books:
            books[row["agent"]].cost_by_model_today_usd[row["model"]] = float(row["cost"] or 0.0)
    return books
