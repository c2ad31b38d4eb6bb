"""fleetpulse monitor: health state machine, history, alerting, dashboard and the `fleetpulse` CLI."""

from fleetpulse.monitor.client import MonitorClient

__all__ = ["MonitorClient"]
