"""Running work figures per agent (tasks, latency, cost and tokens today and this hour), fed by heartbeats.

Pure bookkeeping: the caller passes the monitor-clock time of each heartbeat. The dashboard's fleet table
and the cost policies read it; the heartbeats table remains the full record (a restart seeds the book
from it, see `Store.usage_today`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from fleetpulse.publisher.protocol import Metrics

__all__ = ["AgentUsage", "UsageBook"]


@dataclass
class AgentUsage:
    """One agent's figures for the current UTC day (and clock hour); latency of its latest window with tasks."""

    day: date
    hour: datetime
    ok_today: int = 0
    failed_today: int = 0
    cost_today_usd: float = 0.0
    cost_hour_usd: float = 0.0
    tokens_in_today: int = 0
    tokens_out_today: int = 0
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    cost_by_model_today_usd: dict[str, float] = field(default_factory=dict)

    @property
    def success_ratio(self) -> float | None:
        tasks = self.ok_today + self.failed_today
        return self.ok_today / tasks if tasks else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "tasks_ok_today": self.ok_today,
            "tasks_failed_today": self.failed_today,
            "success_ratio_today": self.success_ratio,
            "latency_ms_p50": self.latency_ms_p50,
            "latency_ms_p95": self.latency_ms_p95,
            "cost_today_usd": self.cost_today_usd,
            "cost_hour_usd": self.cost_hour_usd,
            "tokens_in_today": self.tokens_in_today,
            "tokens_out_today": self.tokens_out_today,
        }


def _hour_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _day_of(moment: datetime) -> date:
    return moment.astimezone(UTC).date()  # the UTC day, whatever offset the clock's times carry


class UsageBook:
    """Figures per agent. Written by the monitor's core thread; `get`/`all` copy under the caller's lock."""

    def __init__(self) -> None:
        self._agents: dict[str, AgentUsage] = {}

    def _current(self, agent: str, at: datetime) -> AgentUsage:
        usage = self._agents.get(agent)
        day, hour = _day_of(at), _hour_of(at)
        if usage is None or usage.day < day:
            latency = (usage.latency_ms_p50, usage.latency_ms_p95) if usage else (None, None)
            usage = self._agents[agent] = AgentUsage(day=day, hour=hour)
            usage.latency_ms_p50, usage.latency_ms_p95 = latency
        elif usage.hour < hour:
            usage.hour, usage.cost_hour_usd = hour, 0.0
        return usage

    def add(self, agent: str, metrics: Metrics, received_at: datetime) -> None:
        """Count one heartbeat's window (each stored heartbeat exactly once: duplicates never reach here)."""
        usage = self._current(agent, received_at)
        if _day_of(received_at) < usage.day:
            return  # a late heartbeat of yesterday: the history has it, today's figures don't
        usage.ok_today += metrics.ok
        usage.failed_today += metrics.failed
        usage.cost_today_usd += metrics.cost_usd
        if _hour_of(received_at) == usage.hour:
            usage.cost_hour_usd += metrics.cost_usd
        usage.tokens_in_today += metrics.tokens_in
        usage.tokens_out_today += metrics.tokens_out
        if metrics.ok + metrics.failed and metrics.latency_ms_p50 is not None:
            usage.latency_ms_p50, usage.latency_ms_p95 = metrics.latency_ms_p50, metrics.latency_ms_p95
        for model, model_usage in metrics.by_model.items():
            by_model = usage.cost_by_model_today_usd
            by_model[model] = by_model.get(model, 0.0) + model_usage.cost_usd

    def seed(self, agent: str, usage: AgentUsage) -> None:
        """Figures recovered from the database at start."""
        self._agents[agent] = usage

    def get(self, agent: str, now: datetime) -> AgentUsage | None:
        """A copy of the agent's figures as of `now` (zeros once its day has passed with no new heartbeat)."""
        usage = self._agents.get(agent)
        if usage is None:
            return None
        if usage.day < _day_of(now):
            return AgentUsage(
                day=_day_of(now),
                hour=_hour_of(now),
                latency_ms_p50=usage.latency_ms_p50,
                latency_ms_p95=usage.latency_ms_p95,
            )
        copy = AgentUsage(**{**usage.__dict__, "cost_by_model_today_usd": dict(usage.cost_by_model_today_usd)})
        if copy.hour < _hour_of(now):
            copy.hour, copy.cost_hour_usd = _hour_of(now), 0.0
        return copy

    def agents(self) -> list[str]:
        return list(self._agents)

    def forget(self, agent: str) -> None:
        """Drop a forgotten agent's figures (the heartbeats table keeps its history)."""
        self._agents.pop(agent, None)
