"""Wire protocol v1 (SPEC §2) as validating models: `parse_health` is where a payload becomes a typed message.

Dependency-free parts (ids, topics, kinds, control commands) live in `publisher.wire` and are
re-exported here, so the monitor imports everything protocol from this one module.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from fleetpulse.publisher.wire import (
    HEALTH_TOPIC_FILTER,
    ID_PATTERN,
    MAX_PAYLOAD_BYTES,
    PROTOCOL_VERSION,
    Command,
    ControlCommand,
    Kind,
    ProtocolError,
    ReportedStatus,
    agent_id_from_health_topic,
    control_topic,
    format_timestamp,
    group_control_topic,
    health_topic,
    is_valid_id,
    monitor_status_topic,
    parse_control,
    validate_id,
)

__all__ = [
    "HEALTH_TOPIC_FILTER",
    "MAX_PAYLOAD_BYTES",
    "PROTOCOL_VERSION",
    "Command",
    "ControlCommand",
    "HealthMessage",
    "Kind",
    "Metrics",
    "ModelUsage",
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
    "parse_health",
    "validate_id",
]

AgentId = Annotated[str, Field(pattern=ID_PATTERN)]


_Count = Annotated[int, Field(ge=0, le=2**63 - 1)]  # fits a DuckDB BIGINT
# Per-window bounds: finite is not enough. Sums of windows must stay finite (JSON has no Infinity), and
# no real window of one agent costs a million dollars or a trillion tokens.
_WindowUsd = Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]
_WindowTokens = Annotated[int, Field(ge=0, le=10**12)]
_LatencyMs = Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)]  # ~11.6 days
EARLIEST_YEAR, LATEST_YEAR = 1970, 9000


def _sane_moment(moment: datetime) -> datetime:
    # Far-off times overflow date arithmetic (year 1 at +14:00 is year 0 in UTC) and come back from
    # DuckDB as strings: refused at the boundary. (How far from *now* is the monitor's call.)
    try:
        year = moment.astimezone(UTC).year
    except OverflowError:
        year = 0
    if not EARLIEST_YEAR <= year <= LATEST_YEAR:
        raise ValueError(f"a time between the years {EARLIEST_YEAR} and {LATEST_YEAR} is expected")
    return moment


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):  # JSON `true` would otherwise pass for the integer 1
        raise ValueError("`v` must be the number 1")
    return value


_Moment = Annotated[AwareDatetime, AfterValidator(_sane_moment)]


class _Strict(BaseModel):
    # Unknown fields are ignored (forward compatible); parse_* validate in strict JSON mode.
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)


class ModelUsage(_Strict):
    cost_usd: _WindowUsd = 0.0
    tokens_in: _WindowTokens = 0
    tokens_out: _WindowTokens = 0


class Metrics(_Strict):
    """Work done since the previous heartbeat (one window)."""

    ok: _WindowTokens = 0
    failed: _WindowTokens = 0
    latency_ms_p50: _LatencyMs | None = None
    latency_ms_p95: _LatencyMs | None = None
    latency_ms_max: _LatencyMs | None = None
    cost_usd: _WindowUsd = 0.0
    tokens_in: _WindowTokens = 0
    tokens_out: _WindowTokens = 0
    by_model: dict[Annotated[str, Field(max_length=128)], ModelUsage] = Field(default_factory=dict, max_length=64)
    last_progress_at: _Moment | None = None  # an offset is required (checked in pydantic's core)


class HealthMessage(_Strict):
    """One message on `agents/<id>/health`: heartbeat (seq 0 is the birth), stop, or will."""

    v: Annotated[Literal[1], BeforeValidator(_no_bool)] = 1  # PROTOCOL_VERSION
    agent: AgentId
    name: Annotated[str, Field(max_length=256)] = ""
    kind: Kind
    status: ReportedStatus | None = None
    reason: Annotated[str, Field(max_length=1024)] | None = None
    session: Annotated[str, Field(min_length=1, max_length=64)]
    seq: _Count | None = None
    sent_at: _Moment  # RFC 3339 with an offset: a naive time could not be compared with the monitor's
    interval_s: Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)]
    host: Annotated[str, Field(max_length=256)] = ""
    pid: _Count | None = None
    version: Annotated[str, Field(max_length=128)] = ""
    depends_on: list[AgentId] = Field(default_factory=list, max_length=256)
    group: AgentId | None = None
    labels: dict[Annotated[str, Field(max_length=128)], Annotated[str, Field(max_length=512)]] = Field(
        default_factory=dict, max_length=64
    )
    paused: bool = False
    metrics: Metrics | None = None

    @model_validator(mode="after")
    def _kind_rules(self) -> HealthMessage:
        if self.kind is Kind.HEARTBEAT and (self.seq is None or self.status is None):
            raise ValueError("a heartbeat needs `seq` and `status`")
        if not self.name:
            object.__setattr__(self, "name", self.agent)
        return self

    @property
    def is_birth(self) -> bool:
        return self.kind is Kind.HEARTBEAT and self.seq == 0

    def to_payload(self) -> bytes:
        """Compact JSON as sent on the wire (None fields left out)."""
        return self.model_dump_json(exclude_none=True).encode()


def _check_size(payload: bytes) -> None:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    if first["type"] == "json_invalid":
        return f"malformed JSON: {first['msg'].removeprefix('Invalid JSON: ')}"[:300]
    if first["type"] == "model_type":
        return "payload is not a JSON object"
    parts = []
    for detail in error.errors()[:3]:
        where = ".".join(str(p) for p in detail["loc"]) or "payload"
        parts.append(f"{where}: {detail['msg']}")
    return "; ".join(parts)[:500]


def parse_health(topic: str, payload: bytes) -> HealthMessage:
    """Validate one health message at the boundary; raise ProtocolError with a readable reason."""
    agent_id = agent_id_from_health_topic(topic)
    _check_size(payload)
    try:
        # Strict JSON mode: wrong types ("3" for a number, 1 for a bool) are rejected, not coerced.
        message = HealthMessage.model_validate_json(payload, strict=True)
    except ValidationError as error:
        raise ProtocolError(f"invalid health message: {_describe(error)}") from None
    if message.agent != agent_id:
        raise ProtocolError(f"spoofed agent id: payload says {message.agent!r}, topic says {agent_id!r}")
    return message
