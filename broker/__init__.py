"""fleetpulse brokers: the embedded amqtt default (keep-alive enforced, auth, ACL, TLS) and Mosquitto configuration."""

from fleetpulse.broker.credentials import PasswordFile, Role
from fleetpulse.broker.embedded import EmbeddedBroker, PortInUseError, TlsFiles, start_embedded_broker

__all__ = ["EmbeddedBroker", "PasswordFile", "PortInUseError", "Role", "TlsFiles", "start_embedded_broker"]
