"""fleetpulse agent SDK: `Agent` heartbeats with a broker-held last will (wire format in `protocol`)."""

from fleetpulse.publisher.agent import Agent, TaskRecord
from fleetpulse.publisher.wire import ControlCommand, ProtocolError

__all__ = ["Agent", "ControlCommand", "ProtocolError", "TaskRecord"]
