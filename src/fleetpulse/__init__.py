"""fleetpulse: heartbeats, broker-announced deaths and outage history for fleets of long-running AI agents.

The public face: `Agent` (the agent SDK; needs only paho-mqtt and pydantic), `MonitorClient` (a running
monitor's HTTP API; the standard library), `EmbeddedBroker` (needs the `monitor` extra: imported on first
use, so an agent machine never loads amqtt), and the errors they raise, all of them `FleetpulseError`s.
Everything else lives in `fleetpulse.publisher`, `fleetpulse.monitor` and `fleetpulse.broker`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fleetpulse.monitor.client import MonitorClient, MonitorError, MonitorUnavailable
from fleetpulse.publisher import Agent, ControlCommand, ProtocolError
from fleetpulse.publisher.errors import FleetpulseError

if TYPE_CHECKING:
    from fleetpulse.broker import EmbeddedBroker, PortInUseError

__version__ = "0.1.0"
__all__ = [
    "Agent",
    "ControlCommand",
    "EmbeddedBroker",
    "FleetpulseError",
    "MonitorClient",
    "MonitorError",
    "MonitorUnavailable",
    "PortInUseError",
    "ProtocolError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in ("EmbeddedBroker", "PortInUseError"):
        from fleetpulse import broker

        return getattr(broker, name)
    raise AttributeError(f"module 'fleetpulse' has no attribute {name!r}")
