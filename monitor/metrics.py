"""Prometheus exposition of the monitor (`GET /metrics`), read from the live views at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fleetpulse.monitor.fleet import summary
from fleetpulse.monitor.service import Monitor

__all__ = ["render_metrics"]

# Counters of Monitor.stats() exported as fleetpulse_<name>_total.
_COUNTERS = {
    "received": "MQTT messages received",
    "applied": "health messages that advanced an agent's state",
    "duplicate": "health messages dropped as already seen (replays, duplicate retained deliveries)",
    "late": "heartbeats stored late (a newer retained copy overtook them)",
    "stale_will": "wills ignored: for a replaced session, or after the session's own stop",
    "stale_session": "messages of a replaced session ignored",
    "rejected": "messages refused at the boundary (malformed, spoofed, oversize)",
    "rejected_unstored": "rejections only counted, beyond the rate at which they are stored",
    "refused_agent_cap": "messages from new agent ids refused because the known agents reached --max-agents",
    "forgotten": "agents forgotten by operators (fleetpulse forget)",
    "commands": "operator commands seen on control topics",
    "transitions": "state transitions recorded",
    "rows_stored": "health message rows committed to DuckDB",
    "store_errors": "batches that could not be committed",
    "handler_errors": "events the core could not handle",
    "alert_errors": "alerting steps that failed (the monitor went on)",
}


class _MonitorCollector(Collector):
    def __init__(self, monitor: Monitor) -> None:
        self._monitor = monitor

    def collect(self) -> Iterator[Metric]:
        agents = self._monitor.list_agents()
        per_state = GaugeMetricFamily("fleetpulse_agents", "agents per health state", labels=["state"])
        for state, count in summary(agents).items():
            per_state.add_metric([state], count)
        yield per_state
        up = GaugeMetricFamily(
            "fleetpulse_agent_up", "1 while the agent is healthy or degraded, else 0", labels=["agent", "group"]
        )
        for record in agents:
            alive = record["health_status"] in ("healthy", "degraded")
            up.add_metric([record["agent"], record["group"] or ""], 1.0 if alive else 0.0)
        yield up
        yield GaugeMetricFamily(
            "fleetpulse_broker_connected",
            "1 while the monitor is connected to its broker",
            1.0 if self._monitor.connected else 0.0,
        )
        yield GaugeMetricFamily(
            "fleetpulse_alerts_pending",
            "alert deliveries waiting for their first or next attempt",
            float(self._monitor.alerting.pending()),
        )
        stats = self._monitor.stats()
        for name, documentation in _COUNTERS.items():
            yield CounterMetricFamily(f"fleetpulse_{name}", documentation, value=stats.get(name, 0))


def render_metrics(monitor: Monitor) -> bytes:
    """The Prometheus text format for `monitor`, as of now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_MonitorCollector(monitor))
    return generate_latest(registry)
