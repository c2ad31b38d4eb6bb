"""fleetpulse brokers: the embedded amqtt default (keep-alive enforced) and Mosquitto configuration."""

from broker.embedded import EmbeddedBroker, PortInUseError, start_embedded_broker

__all__ = ["EmbeddedBroker", "PortInUseError", "start_embedded_broker"]
