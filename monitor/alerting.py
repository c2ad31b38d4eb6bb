"""The alerting shell: the pure policy's decisions become deliveries; incidents and silences are kept in DuckDB.

The monitor's core thread calls `observe`, `tick`, `broker_lost` and `broker_back`; API threads call the
silence methods. Delivery happens on the dispatcher's own threads, so nothing here waits for a channel.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from fleetpulse.monitor.alert_policy import AlertPolicy, AlertSettings, CostBreach, CostUsage, OpenIncident, Silence
from fleetpulse.monitor.alerts import DeliveryRecord, Dispatcher
from fleetpulse.monitor.channels import Channel, channel_for, redact_url
from fleetpulse.monitor.health import AgentView
from fleetpulse.monitor.notification import Notification
from fleetpulse.monitor.store import Store
from fleetpulse.monitor.usage import AgentUsage

__all__ = ["Alerting", "build_channels", "new_silence"]

_log = logging.getLogger(__name__)

# The `alerts.channel` of a page the page-rate guard held back: recorded, never delivered (gave_up), so
# `SELECT * FROM alerts WHERE channel = 'held:alert-storm'` lists every alert a storm summarised.
HELD_CHANNEL = "held:alert-storm"


def stored_channel(channel: str) -> str:
    """How an open incident's channel is kept in the database: a URL with a secret as its redacted form and a digest.

    The rules file's channel URLs travel with each incident (the resolve goes where the trigger went), and
    the `alert_incidents` table is readable through SQL: a token there would be everyone's who may query
    (issue 14 item 8). The digest tells two URLs with the same redacted form apart, so a restarted monitor
    maps it back to the configured URL (`Alerting.start`).
    """
    shown = redact_url(channel) if "://" in channel else channel
    if "***" not in shown:
        return channel
    return f"{shown} #{hashlib.sha256(channel.encode()).hexdigest()[:16]}"


def build_channels(urls: Sequence[str]) -> dict[str, Channel]:
    """One channel per distinct URL, keyed by the URL (ValueError now, at startup, for a URL apprise refuses)."""
    channels: dict[str, Channel] = {}
    for url in urls:
        if url not in channels:
            channels[url] = channel_for(url)
    return channels


def new_silence(pattern: str, duration_s: float, reason: str, created_by: str, now: datetime) -> Silence:
    """A checked silence from now for `duration_s` (ValueError with what to fix)."""
    if not pattern or len(pattern) > 256:
        raise ValueError("a silence needs a glob pattern of 1-256 characters (e.g. 'refund-*')")
    if not 0 < duration_s <= 366 * 86_400:
        raise ValueError("a silence lasts more than 0 seconds and at most a year (--for 2h)")
    if not reason.strip():
        raise ValueError("say why (--reason): the next person on call will want to know")
    return Silence(
        id=uuid.uuid4().hex[:12],
        pattern=pattern,
        starts_at=now,
        ends_at=now + timedelta(seconds=duration_s),
        reason=reason.strip(),
        created_by=created_by,
    )


class Alerting:
    """Policy plus dispatcher plus persistence, for one monitor."""

    def __init__(
        self,
        settings: AlertSettings,
        notify: Sequence[str],
        monitor_id: str,
        backoff_s: Sequence[float] = (1, 2, 5, 15, 60, 300),
    ) -> None:
        if settings.notify and notify:
            # The rules file's default channels and --notify / FLEETPULSE_NOTIFY are one list: an incident
            # whose rule names no channels goes to all of them (without --notify, `notify = []` in the file
            # already means "the configured channels", and without the file, --notify alone is that).
            settings = replace(settings, notify=tuple(dict.fromkeys([*settings.notify, *notify])))
        self.settings = settings
        self.channels = build_channels([*settings.notify, *notify])
        self._policy = AlertPolicy(settings, monitor_id)
        self._lock = threading.Lock()  # the policy is used from the core thread and, for silences, API threads
        self._backoff_s = tuple(backoff_s)
        self._dispatcher: Dispatcher | None = None
        self._store: Store | None = None
        self._persisted: dict[str, OpenIncident] = {}

    def start(self, store: Store, now: datetime) -> None:
        """Restore open incidents and silences, re-queue undelivered alerts, start delivering."""
        self._store = store
        with self._lock:
            incidents = [self._restored(incident) for incident in store.open_incidents()]
            self._policy.restore(incidents)
            self._persisted = {incident.incident_id: incident for incident in incidents}
            self._load_silences(now)
        # The default channels are the configured ones, keyed by URL; a rule's own URL is built on first use.
        self._dispatcher = Dispatcher(self.channels, record=self._record, backoff_s=self._backoff_s)
        pending = store.pending_deliveries()
        self._dispatcher.resume(pending)
        self._dispatcher.start()
        names = ", ".join(channel.name for channel in self.channels.values()) or "none (add --notify URL)"
        _log.info(
            "alerts: channels %s; %d open incident(s) and %d undelivered alert(s) resumed",
            names,
            len(incidents),
            len(pending),
        )

    def _restored(self, incident: OpenIncident) -> OpenIncident:
        """An incident as stored, its channels mapped back to the configured URLs (see `stored_channel`)."""
        configured = [
            *self.channels,
            *(u for rule in self.settings.rules for u in rule.channels),
        ]  # (channels: notify too)
        urls = {stored_channel(url): url for url in configured}
        # A stored form whose URL is no longer configured cannot be sent to (its secret is gone): dropped,
        # the incident then goes to the configured channels.
        channels = tuple(
            urls.get(channel, channel) for channel in incident.channels if channel in urls or "***" not in channel
        )
        return incident if channels == incident.channels else replace(incident, channels=channels)

    def stop(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.stop()

    def pending(self) -> int:
        """Deliveries waiting for their first or next attempt."""
        return self._dispatcher.pending() if self._dispatcher is not None else 0

    def _record(self, record: Any) -> None:
        assert self._store is not None
        self._store.record_delivery(record, datetime.now(UTC))

    # -- called by the core thread -----------------------------------------------------------------

    def observe(self, transitions: Sequence[Any], views: Mapping[str, AgentView], now: datetime) -> None:
        with self._lock:
            self._send(self._policy.observe(transitions, views, now), now)

    def tick(
        self,
        views: Mapping[str, AgentView],
        usage: Callable[[], Mapping[str, AgentUsage]] | None,
        now: datetime,
    ) -> list[CostBreach]:
        """Reminders and flap releases; with `usage` (only when cost policies exist), the cost breaches to act on."""
        with self._lock:
            self._send(self._policy.tick(views, now), now)
            if usage is None or not self.settings.cost_policies:
                return []
            spent = {
                agent: CostUsage(
                    day=figures.day,
                    cost_day_usd=figures.cost_today_usd,
                    hour=figures.hour,
                    cost_hour_usd=figures.cost_hour_usd,
                )
                for agent, figures in usage().items()
            }
            breaches = self._policy.costs(spent, views, now)
            self._send([breach.notification for breach in breaches], now)
            return breaches

    def broker_lost(self, now: datetime, reason: str) -> None:
        with self._lock:
            self._send(self._policy.broker_lost(now, reason), now)

    def broker_back(self, now: datetime) -> None:
        with self._lock:
            self._send(self._policy.broker_back(now), now)

    def agent_cap_reached(self, now: datetime, known: int, cap: int) -> None:
        with self._lock:
            self._send(self._policy.agent_cap_reached(now, known, cap), now)

    def agent_cap_cleared(self, now: datetime, known: int, cap: int) -> None:
        with self._lock:
            self._send(self._policy.agent_cap_cleared(now, known, cap), now)

    def forget(self, agents: Sequence[str], now: datetime) -> int:
        """Close the forgotten agents' incidents without paging; how many were open."""
        with self._lock:
            closed = self._policy.forget(agents)
            self._persist_incidents(now)
        return closed

    def _send(self, notifications: Sequence[Notification], now: datetime) -> None:
        assert self._dispatcher is not None, "alerting not started"
        for notification in notifications:
            _log.info("alert: %s %s", notification.event, notification.summary())
            self._dispatcher.submit(notification)
        self._record_held(now)
        self._persist_incidents(now)

    def _record_held(self, now: datetime) -> None:
        """Pages the guard held during a storm become `alerts` rows that are never sent: nothing is lost."""
        held = self._policy.take_held()
        if not held:
            return
        _log.warning("alerts: alert storm: %d alert(s) held, recorded in the alerts table", len(held))
        assert self._store is not None
        records = [
            DeliveryRecord(
                id=uuid.uuid4().hex,
                incident_id=notification.incident_id,
                agent=notification.agent,
                at=notification.at,
                severity=notification.severity.value,
                event=notification.event.value,
                channel=HELD_CHANNEL,
                payload=json.dumps(notification.webhook_body()),
                attempts=0,
                delivered_at=None,
                error="held by the page-rate guard (alert storm)",
                next_attempt_at=None,
                gave_up=True,
            )
            for notification in held
        ]
        try:
            self._store.record_held(records)  # one transaction: a storm of thousands costs one commit
        except Exception:
            _log.exception("alerts: could not record %d held alert(s)", len(records))

    def _persist_incidents(self, now: datetime) -> None:
        current = {incident.incident_id: incident for incident in self._policy.open_incidents()}
        if current == self._persisted:
            return
        changed = [incident for key, incident in current.items() if self._persisted.get(key) != incident]
        closed = [key for key in self._persisted if key not in current]
        assert self._store is not None
        try:
            stored = [replace(i, channels=tuple(stored_channel(c) for c in i.channels)) for i in changed]
            self._store.save_incidents(stored, closed, now)
        except Exception:
            # The alerts themselves went out; only the restart memory of these incidents is behind. Retried
            # with the next change, as _persisted still holds the old picture.
            _log.exception("alerts: could not store the open incidents")
            return
        self._persisted = current

    # -- silences, from any thread -----------------------------------------------------------------

    def _load_silences(self, now: datetime) -> None:
        assert self._store is not None
        self._policy.set_silences(
            [
                Silence(
                    id=row["id"],
                    pattern=row["pattern"],
                    starts_at=row["starts_at"],
                    ends_at=row["ends_at"],
                    reason=row["reason"],
                    created_by=row["created_by"],
                )
                for row in self._store.silences(now)
            ]
        )

    def add_silence(self, pattern: str, duration_s: float, reason: str, created_by: str, now: datetime) -> Silence:
        """Silence agents (or groups) matching the glob `pattern` from now for `duration_s`; stored, then in force."""
        silence = new_silence(pattern, duration_s, reason, created_by, now)
        assert self._store is not None
        self._store.add_silence(silence, now)
        with self._lock:
            self._load_silences(now)
        return silence

    def remove_silence(self, silence_id: str, now: datetime) -> bool:
        assert self._store is not None
        removed = self._store.remove_silence(silence_id, now)
        with self._lock:
            self._load_silences(now)
        return removed
