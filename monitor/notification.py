"""What an alert says: the Notification the alert policy produces and every channel delivers (webhook body v1)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from fleetpulse.publisher.protocol import format_timestamp

__all__ = ["WEBHOOK_VERSION", "Event", "Notification", "Severity"]

WEBHOOK_VERSION = 1


class Event(StrEnum):
    TRIGGER = "trigger"  # an incident opened
    RESOLVE = "resolve"  # the incident closed: the agent is healthy again (carries duration_s)
    FLAPPING = "flapping"  # the agent bounced too often: one alert, then held until it is stable
    REMINDER = "reminder"  # the incident is still open (only when reminders are configured)


class Severity(StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Notification:
    """One message to people about one incident. `incident_id` pairs trigger, reminders and resolve."""

    event: Event
    incident_id: str
    agent: str  # the agent id, or "monitor:<id>" for the monitor's own incidents (lost broker)
    state: str  # the agent's state when this was sent (a State value, or "lost" for the monitor)
    severity: Severity
    reason: str
    at: datetime  # monitor clock: when the transition (or tick) that caused it happened
    duration_s: float | None = None  # on resolve: how long the incident was open
    impacted: tuple[str, ...] = ()  # agents whose alerts were folded into this root cause
    rule: str = ""  # name of the rule that matched
    channels: tuple[str, ...] = ()  # channel names to deliver through; empty: every configured channel
    labels: tuple[tuple[str, str], ...] = field(default=())
    group: str | None = None

    def summary(self) -> str:
        """One human line: 'order-processor unreachable (will: connection lost); impacted: refund-agent'."""
        head = {
            Event.TRIGGER: f"{self.agent} {self.state}",
            Event.RESOLVE: f"{self.agent} recovered after {_duration_text(self.duration_s or 0.0)}",
            Event.FLAPPING: f"{self.agent} is flapping",
            Event.REMINDER: f"{self.agent} still {self.state}",
        }[self.event]
        line = f"{head} ({self.reason})" if self.reason else head
        return f"{line}; impacted: {', '.join(self.impacted)}" if self.impacted else line

    def webhook_body(self) -> dict[str, Any]:
        """The JSON webhook body, version WEBHOOK_VERSION (documented in the README; add fields, never rename)."""
        return {
            "version": WEBHOOK_VERSION,
            "event": self.event.value,
            "incident_id": self.incident_id,
            "agent": self.agent,
            "state": self.state,
            "severity": self.severity.value,
            "reason": self.reason,
            "at": format_timestamp(self.at),
            "duration_s": self.duration_s,
            "impacted": list(self.impacted),
            "rule": self.rule,
            "group": self.group,
            "labels": dict(self.labels),
            "summary": self.summary(),
        }

    @classmethod
    def from_webhook_body(cls, body: dict[str, Any]) -> Notification:
        """The Notification a webhook body was made from (to resend after a restart); ValueError if it is not one.

        Unknown fields are ignored (later versions only add fields); `summary` is derived, and `channels`
        is not part of the body, so the result routes to every channel unless the caller says otherwise.
        """
        try:
            at = datetime.fromisoformat(str(body["at"]).replace("Z", "+00:00"))
            if at.tzinfo is None:
                raise ValueError(f"timestamp without a timezone: {body['at']!r}")
            duration_s = body.get("duration_s")
            return cls(
                event=Event(body["event"]),
                incident_id=str(body["incident_id"]),
                agent=str(body["agent"]),
                state=str(body["state"]),
                severity=Severity(body["severity"]),
                reason=str(body.get("reason") or ""),
                at=at,
                duration_s=None if duration_s is None else float(duration_s),
                impacted=tuple(str(agent) for agent in body.get("impacted") or ()),
                rule=str(body.get("rule") or ""),
                labels=tuple((str(key), str(value)) for key, value in (body.get("labels") or {}).items()),
                group=None if body.get("group") is None else str(body["group"]),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            raise ValueError(f"not a webhook body v{WEBHOOK_VERSION}: {error!r}") from None


def _duration_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
