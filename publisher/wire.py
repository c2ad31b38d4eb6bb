"""Wire protocol v1 without dependencies (SPEC §2): ids, topics, kinds, control commands.

The agent imports only this module on its hot path, so a monitored process does not pay for pydantic;
`publisher.protocol` adds the validating models the monitor parses health messages with.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum

from fleetpulse.publisher.errors import FleetpulseError

__all__ = [
    "HEALTH_TOPIC_FILTER",
    "ID_PATTERN",
    "MAX_PAYLOAD_BYTES",
    "PROTOCOL_VERSION",
    "Command",
    "ControlCommand",
    "Kind",
    "ProtocolError",
    "ReportedStatus",
    "agent_id_from_health_topic",
    "control_topic",
    "format_timestamp",
    "group_control_topic",
    "health_topic",
    "is_valid_id",
    "monitor_status_topic",
    "parse_control",
    "validate_id",
]

PROTOCOL_VERSION = 1
MAX_PAYLOAD_BYTES = 16 * 1024
HEALTH_TOPIC_FILTER = "agents/+/health"

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_ID_RE = re.compile(ID_PATTERN)


class ProtocolError(FleetpulseError, ValueError):
    """A message that is not valid protocol v1; `reason` is for humans and the `rejected` table."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Kind(StrEnum):
    HEARTBEAT = "heartbeat"
    STOP = "stop"
    WILL = "will"


class ReportedStatus(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"


class Command(StrEnum):
    KILL = "kill"
    PAUSE = "pause"
    RESUME = "resume"
    REBIRTH = "rebirth"


def is_valid_id(value: object) -> bool:
    """True when `value` can be an agent or group id (no MQTT wildcards or separators)."""
    # fullmatch, not match: `$` would accept a trailing newline.
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def validate_id(value: object, what: str = "agent id") -> str:
    """Return `value` if it is a valid id, else raise a ValueError that says why."""
    if not is_valid_id(value):
        raise ValueError(
            f"invalid {what} {value!r}: use 1-64 characters A-Z a-z 0-9 _ . -, starting with a letter or digit "
            "(no '/', '+', '#' or spaces: the id becomes part of an MQTT topic)"
        )
    assert isinstance(value, str)
    return value


def health_topic(agent_id: str) -> str:
    return f"agents/{validate_id(agent_id)}/health"


def control_topic(agent_id: str) -> str:
    return f"agents/{validate_id(agent_id)}/control"


def group_control_topic(group: str) -> str:
    return f"groups/{validate_id(group, 'group')}/control"


def monitor_status_topic(monitor_id: str) -> str:
    return f"fleetpulse/monitor/{validate_id(monitor_id, 'monitor id')}/status"


def agent_id_from_health_topic(topic: str) -> str:
    """The `<id>` of `agents/<id>/health`; raises ProtocolError for any other topic."""
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != "agents" or parts[2] != "health":
        raise ProtocolError(f"not a health topic: {topic[:200]!r}")
    if not is_valid_id(parts[1]):
        raise ProtocolError(f"invalid agent id in topic: {parts[1][:100]!r}")
    return parts[1]


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 UTC with milliseconds and a `Z`, the only form the SDK sends."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_CONTROL_LIMITS = {"id": (1, 64), "issued_by": (1, 128), "reason": (0, 1024)}


@dataclass(frozen=True)
class ControlCommand:
    """One message on `agents/<id>/control` or `groups/<group>/control`."""

    command: Command
    id: str
    issued_by: str
    reason: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "command", Command(self.command))
        for name, (shortest, longest) in _CONTROL_LIMITS.items():
            value = getattr(self, name)
            if not isinstance(value, str) or not shortest <= len(value) <= longest:
                raise ValueError(f"{name} must be a string of {shortest}-{longest} characters, got {value!r}"[:300])

    def to_payload(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()


def parse_control(payload: bytes) -> ControlCommand:
    """Validate one control command; raise ProtocolError with a readable reason."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ProtocolError(f"invalid control command: malformed JSON: {error}"[:300]) from None
    if not isinstance(document, dict):
        raise ProtocolError("invalid control command: payload is not a JSON object")
    command = document.get("command")
    if command not in Command.__members__.values():
        raise ProtocolError(f"invalid control command: command must be one of {[c.value for c in Command]}")
    try:
        return ControlCommand(
            command=Command(str(command)),
            id=document.get("id"),  # type: ignore[arg-type]  # checked in __post_init__
            issued_by=document.get("issued_by"),  # type: ignore[arg-type]
            reason=document.get("reason", ""),
        )
    except ValueError as error:
        raise ProtocolError(f"invalid control command: {error}") from None
