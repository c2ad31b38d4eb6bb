"""Delivering alerts: a worker thread per channel, retries with backoff, and a DeliveryRecord after every attempt."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from fleetpulse.monitor.channels import Channel, DeliveryError, channel_for, redact_url
from fleetpulse.monitor.notification import Notification
from fleetpulse.publisher.protocol import format_timestamp

__all__ = ["DeliveryRecord", "Dispatcher"]

log = logging.getLogger(__name__)

# Upper bound on an idle worker's sleep while retries are scheduled, so an injected clock that jumps
# (tests, or NTP stepping the wall clock) is noticed within a second.
_MAX_IDLE_WAIT_S = 1.0
# Delivery ids are UUIDv5 of (incident, event, at, channel): the same notification on the same channel
# always gets the same id, across retries and restarts, and receivers can use it to drop duplicates.
_DELIVERY_ID_NAMESPACE = uuid.UUID("6f4d1b1e-55c3-4f0a-9a53-6a0f2f1c7d10")


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class DeliveryRecord:
    """The `alerts` row (SPEC §4) after each step of one delivery; the store writes it INSERT OR REPLACE by `id`."""

    id: str  # unique per (notification, channel); stable across retries and restarts
    incident_id: str
    agent: str
    at: datetime  # the notification's `at` (monitor clock), not the time of sending
    severity: str
    event: str
    channel: str  # Channel.name: safe to show, never a secret
    payload: str  # json of notification.webhook_body(): enough to resend after a restart
    attempts: int
    delivered_at: datetime | None
    error: str | None  # the last attempt's error; None once delivered
    next_attempt_at: datetime | None  # None once delivered or given up
    gave_up: bool


@dataclass
class _Delivery:
    notification: Notification
    record: DeliveryRecord  # its latest state; `next_attempt_at` is when it is due
    give_up_at: datetime
    recorded: bool  # the queued row has been handed to `record`


def _delivery_id(notification: Notification, channel_name: str) -> str:
    at = format_timestamp(notification.at)
    key = "\n".join((notification.incident_id, notification.event.value, at, channel_name))
    return str(uuid.uuid5(_DELIVERY_ID_NAMESPACE, key))


class _ChannelWorker:
    """The deliveries of one channel, sent in order by one thread so a dead channel only ever delays itself."""

    def __init__(self, channel: Channel, dispatcher: Dispatcher) -> None:
        self.channel = channel
        self._dispatcher = dispatcher
        self._queue: list[_Delivery] = []  # submission order
        self._condition = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            name = f"fleetpulse-alerts {self.channel.name}"
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    def add(self, deliveries: Sequence[_Delivery], *, in_front: bool = False) -> None:
        with self._condition:
            known = {delivery.record.id for delivery in self._queue}
            # The same notification submitted twice is one delivery (same id), not two messages.
            fresh = [delivery for delivery in deliveries if delivery.record.id not in known]
            self._queue = [*fresh, *self._queue] if in_front else [*self._queue, *fresh]
            self._condition.notify()

    def pending(self) -> int:
        with self._condition:
            return len(self._queue)

    def signal_stop(self) -> None:
        with self._condition:
            self._stopping = True
            self._condition.notify()

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout=max(0.0, timeout_s))

    def take_unrecorded(self) -> list[DeliveryRecord]:
        """Queued rows the worker never wrote (stopped first): the caller writes them so a restart resumes them."""
        with self._condition:
            unrecorded = [delivery for delivery in self._queue if not delivery.recorded]
            for delivery in unrecorded:
                delivery.recorded = True
            return [delivery.record for delivery in unrecorded]

    def _run(self) -> None:
        while True:
            fresh = self.take_unrecorded()
            for record in fresh:
                self._dispatcher._record_safely(record)
            with self._condition:
                if self._stopping:
                    return
                if fresh or any(not delivery.recorded for delivery in self._queue):
                    continue
                delivery, wait_s = self._next_due(self._dispatcher._clock())
                if delivery is None:
                    self._condition.wait(wait_s)
                    continue
            self._attempt(delivery)

    def _next_due(self, now: datetime) -> tuple[_Delivery | None, float | None]:
        """The first due delivery in submission order whose incident has no earlier delivery still waiting here.

        A resolve must never reach a channel before its trigger, so a delivery waiting for a retry holds back
        the later deliveries of its incident on this channel; other incidents go past it.
        """
        held_incidents: set[str] = set()
        earliest: datetime | None = None
        for delivery in self._queue:
            incident = delivery.notification.incident_id
            if incident in held_incidents:
                continue
            due = delivery.record.next_attempt_at or now
            if due <= now:
                return delivery, None
            held_incidents.add(incident)
            earliest = due if earliest is None else min(earliest, due)
        if earliest is None:
            return None, None  # nothing queued: sleep until add() or stop
        return None, min(_MAX_IDLE_WAIT_S, max(0.0, (earliest - now).total_seconds()))

    def _attempt(self, delivery: _Delivery) -> None:
        record = delivery.record
        error: str | None = None
        try:
            self.channel.send(delivery.notification, delivery_id=record.id)
        except DeliveryError as failure:
            error = str(failure) or type(failure).__name__
        except Exception as failure:  # a channel breaking its contract must not kill the worker
            log.exception("channel %s raised instead of DeliveryError", self.channel.name)
            error = f"{type(failure).__name__}: {failure}"
        now = self._dispatcher._clock()
        attempts = record.attempts + 1
        if error is None:
            updated = replace(record, attempts=attempts, delivered_at=now, error=None, next_attempt_at=None)
            log.info("alert %s delivered to %s (attempt %d)", record.id, self.channel.name, attempts)
        elif now >= delivery.give_up_at:
            updated = replace(record, attempts=attempts, error=error, next_attempt_at=None, gave_up=True)
            log.error("gave up on alert %s to %s after %d attempts: %s", record.id, self.channel.name, attempts, error)
        else:
            wait_s = self._dispatcher._backoff_for(retry=attempts - 1)
            # The last retry happens at the give-up time itself, not after it.
            next_attempt_at = min(now + timedelta(seconds=wait_s), delivery.give_up_at)
            updated = replace(record, attempts=attempts, error=error, next_attempt_at=next_attempt_at)
            # The first failure is news; the retries after it would flood the log while a channel is down.
            level = logging.WARNING if attempts == 1 else logging.INFO
            log.log(level, "alert %s to %s failed (attempt %d): %s", record.id, self.channel.name, attempts, error)
        with self._condition:
            delivery.record = updated
            if updated.next_attempt_at is None:
                self._queue.remove(delivery)
        self._dispatcher._record_safely(updated)


class Dispatcher:
    """Sends Notifications through channels without ever blocking the caller, retrying until delivered or given up.

    Channels are given as a sequence (routed by `Channel.name`) or a mapping (routed by key and by name).
    `record` receives every DeliveryRecord from the worker threads: queued (attempts 0), then after each
    attempt. The n-th retry (n = 0 for the first) waits `backoff_s[min(n, len - 1)]`; a delivery still failing
    `give_up_after_s` after it was first queued is given up with its last error.
    """

    def __init__(
        self,
        channels: Mapping[str, Channel] | Sequence[Channel],
        record: Callable[[DeliveryRecord], None],
        clock: Callable[[], datetime] = _utc_now,
        backoff_s: Sequence[float] = (1, 2, 5, 15, 60, 300),
        give_up_after_s: float = 86_400.0,
    ) -> None:
        if not backoff_s or any(wait_s < 0 for wait_s in backoff_s):
            raise ValueError(f"backoff_s must be a non-empty list of non-negative seconds, not {backoff_s!r}")
        if give_up_after_s < 0:
            raise ValueError(f"give_up_after_s must not be negative, not {give_up_after_s!r}")
        self._record = record
        self._clock = clock
        self._backoff_s = tuple(float(wait_s) for wait_s in backoff_s)
        self._give_up_after = timedelta(seconds=give_up_after_s)
        self._lock = threading.Lock()  # guards the routing tables and the started/stopped flags
        self._workers: dict[str, _ChannelWorker] = {}  # by Channel.name, which the records carry
        self._by_key: dict[str, _ChannelWorker] = {}  # by mapping key, and by URL for channels built on demand
        self._configured: list[_ChannelWorker] = []  # what an empty `notification.channels` means
        self._started = False
        self._stopped = False
        keyed = channels.items() if isinstance(channels, Mapping) else [(None, channel) for channel in channels]
        for key, channel in keyed:
            worker = self._workers.get(channel.name)
            if worker is not None and worker.channel is not channel:
                # Records name their channel by Channel.name; two channels of one name could not be told
                # apart when resuming after a restart.
                raise ValueError(
                    f"two channels are both named {channel.name!r}: "
                    "give them names of their own (channel_for(url, name=...))"
                )
            if worker is None:
                worker = self._workers[channel.name] = _ChannelWorker(channel, self)
                self._configured.append(worker)
            if key is not None:
                self._by_key[key] = worker

    def start(self) -> Dispatcher:
        """Start one worker thread per channel; deliveries submitted before this wait for it."""
        with self._lock:
            if self._started or self._stopped:
                return self
            self._started = True
            workers = list(self._workers.values())
        for worker in workers:
            worker.start()
        return self

    def submit(self, notification: Notification) -> list[str]:
        """Queue one notification on each channel it routes to and return the delivery ids; never blocks or raises.

        `notification.channels` selects channels by mapping key or by name; a URL selects the channel whose
        name is that URL with nothing redacted, else a channel of its own, built on first use. Names that match
        nothing are logged and skipped. An empty selection means every configured channel.
        """
        delivery_ids: list[str] = []
        try:
            now = self._clock()
            payload = json.dumps(notification.webhook_body())
            for worker in self._route(notification):
                record = DeliveryRecord(
                    id=_delivery_id(notification, worker.channel.name),
                    incident_id=notification.incident_id,
                    agent=notification.agent,
                    at=notification.at,
                    severity=notification.severity.value,
                    event=notification.event.value,
                    channel=worker.channel.name,
                    payload=payload,
                    attempts=0,
                    delivered_at=None,
                    error=None,
                    next_attempt_at=now,
                    gave_up=False,
                )
                worker.add([_Delivery(notification, record, give_up_at=now + self._give_up_after, recorded=False)])
                delivery_ids.append(record.id)
                if self._stopped:
                    # No worker will write the queued row any more; write it here so a restart resumes it.
                    for unrecorded in worker.take_unrecorded():
                        self._record_safely(unrecorded)
        except Exception:  # ingest must go on whatever alerting does
            log.exception("could not queue alert %s for %s", notification.incident_id, notification.agent)
        return delivery_ids

    def resume(self, records: Iterable[DeliveryRecord]) -> None:
        """Queue again the undelivered rows a previous run left (attempts and next_attempt_at carry on).

        Call it before the first submit. A row whose channel is no longer configured (or that was sent to a
        URL only a rule named, which is not kept across restarts) is recorded as given up, with the reason.
        """
        now = self._clock()
        resumed: dict[str, list[_Delivery]] = {}
        # Oldest first, so a trigger goes out before its resolve on every channel.
        for record in sorted(records, key=lambda row: row.at):
            if record.delivered_at is not None or record.gave_up:
                continue
            with self._lock:
                worker = self._workers.get(record.channel)
            try:
                notification = Notification.from_webhook_body(json.loads(record.payload))
            except ValueError as error:
                self._give_up_on(record, f"not resumed: unreadable payload ({error})")
                continue
            if worker is None:
                self._give_up_on(record, f"not resumed: no channel named {record.channel!r} is configured")
                continue
            delivery = _Delivery(
                notification,
                replace(record, next_attempt_at=record.next_attempt_at or now),
                # The first queueing is not stored; the notification's own time is when it was queued.
                give_up_at=record.at + self._give_up_after,
                recorded=True,
            )
            resumed.setdefault(record.channel, []).append(delivery)
        for channel_name, deliveries in resumed.items():
            self._workers[channel_name].add(deliveries, in_front=True)
            log.info("resumed %d undelivered alert(s) for %s", len(deliveries), channel_name)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the workers (waiting up to `timeout_s` for attempts in flight); undelivered rows stay pending."""
        with self._lock:
            self._stopped = True
            workers = list(self._workers.values())
        for worker in workers:
            worker.signal_stop()
        deadline = time.monotonic() + timeout_s
        for worker in workers:
            worker.join(deadline - time.monotonic())
        for worker in workers:
            for record in worker.take_unrecorded():
                self._record_safely(record)

    def pending(self) -> int:
        """Deliveries neither delivered nor given up yet, over every channel."""
        with self._lock:
            workers = list(self._workers.values())
        return sum(worker.pending() for worker in workers)

    def _route(self, notification: Notification) -> list[_ChannelWorker]:
        if not notification.channels:
            return list(self._configured)
        selected: list[_ChannelWorker] = []
        for wanted in dict.fromkeys(notification.channels):
            worker = self._worker_for(wanted)
            if worker is not None and worker not in selected:
                selected.append(worker)
        return selected

    def _worker_for(self, wanted: str) -> _ChannelWorker | None:
        with self._lock:
            keyed = self._by_key.get(wanted)
            named = self._workers.get(wanted)
        if keyed is not None:
            return keyed
        # A URL equal to a channel's display name is that channel only if the name hid nothing: another
        # Slack webhook has the same redacted name as the configured one, and must not be sent there.
        if named is not None and ("://" not in wanted or redact_url(wanted) == wanted):
            return named
        if "://" not in wanted:
            log.error("an alert names channel %r, which is not configured; skipped", wanted)
            return None
        try:
            channel = channel_for(wanted)
        except ValueError as error:
            log.error("an alert names a channel URL that cannot be used: %s", error)
            return None
        with self._lock:
            if wanted in self._by_key:
                return self._by_key[wanted]  # another thread built it meanwhile
            name, suffix = channel.name, 2
            while name in self._workers:
                # Records and delivery ids carry the name: it must stay unique.
                name, suffix = f"{channel.name} #{suffix}", suffix + 1
            if name != channel.name:
                channel = channel_for(wanted, name=name)
            worker = self._workers[name] = self._by_key[wanted] = _ChannelWorker(channel, self)
            if self._started and not self._stopped:
                worker.start()
        log.info("built channel %s for a URL an alert rule names", name)
        return worker

    def _backoff_for(self, retry: int) -> float:
        return self._backoff_s[min(max(retry, 0), len(self._backoff_s) - 1)]

    def _give_up_on(self, record: DeliveryRecord, error: str) -> None:
        log.error("alert %s to %s: %s", record.id, record.channel, error)
        self._record_safely(replace(record, error=error, next_attempt_at=None, gave_up=True))

    def _record_safely(self, record: DeliveryRecord) -> None:
        try:
            self._record(record)
        except Exception:  # storage trouble must not stop delivery
            log.exception("could not record alert delivery %s (attempt %d)", record.id, record.attempts)
