"""The monitor's MQTT edge: a persistent paho session that only enqueues what arrives, plus the monitor's presence."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import paho.mqtt.client as paho

from fleetpulse.publisher.mqtt import BrokerUrl, make_client
from fleetpulse.publisher.protocol import HEALTH_TOPIC_FILTER, format_timestamp, monitor_status_topic

__all__ = ["BrokerConnected", "BrokerLost", "EventSink", "Received", "Subscriber"]

_log = logging.getLogger(__name__)

CONTROL_TOPIC_FILTERS = ("agents/+/control", "groups/+/control")
WILL_REASON = "will: connection lost"


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    retained: bool
    received_at: datetime


@dataclass(frozen=True, slots=True)
class BrokerConnected:
    at: datetime
    session_present: bool


@dataclass(frozen=True, slots=True)
class BrokerLost:
    at: datetime
    reason: str


Event = Received | BrokerConnected | BrokerLost


class EventSink(Protocol):
    """Where the subscriber puts what happens: the core's queue, or the reader process's batcher."""

    def put(self, event: Event) -> None: ...


class Subscriber:
    """Persistent MQTT session (fixed client id, clean session off, QoS 1) feeding `events`.

    Heartbeats sent while the monitor restarts are queued by the broker for this client id and
    delivered when it returns. paho's network thread does nothing but enqueue.
    """

    def __init__(
        self,
        url: BrokerUrl,
        monitor_id: str,
        events: EventSink,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        presence: dict[str, Any] | None = None,
    ) -> None:
        self._url = url
        self._events = events
        self._clock = clock
        self._presence_topic = monitor_status_topic(monitor_id)
        # Tells this run's own will apart from a queued or retained presence of an earlier run, and
        # (`_connection`, new before every connect) from the will of this run's earlier connections.
        self.instance = uuid.uuid4().hex
        self._connection = ""
        self.stale_own_wills = 0
        self._presence = {
            "monitor": monitor_id,
            "instance": self.instance,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": format_timestamp(clock()),
            **(presence or {}),
        }
        self._stopping = False
        self._probe_topic = f"fleetpulse/monitor/{monitor_id}/probe"
        # time.monotonic() when the broker last delivered anything to us (our probe, sent every tick,
        # makes sure something comes while all is quiet). Any message counts, not only the probe: behind a
        # queued backlog the probe waits its turn, and a broker draining a backlog is delivering. Written
        # by paho's thread on receipt (not when the core gets to it): a backlog in the core is no silence.
        self.last_delivery_at = time.monotonic()
        self.held_back_at = 0.0  # this subscriber never holds back: its queue is unbounded
        self._probe_topic_bytes = self._probe_topic.encode()
        self._presence_topic_bytes = self._presence_topic.encode()
        self._client = make_client(url, client_id=f"fleetpulse-monitor-{monitor_id}", clean_session=False)
        self._client.max_queued_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_pre_connect = self._on_pre_connect
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)

    def _presence_payload(self, state: str, reason: str) -> bytes:
        return json.dumps(
            {
                **self._presence,
                "connection": self._connection,
                "state": state,
                "reason": reason,
                "at": format_timestamp(self._clock()),
            }
        ).encode()

    def _on_pre_connect(self, client: paho.Client, userdata: Any) -> None:
        """Before every (re)connect: a fresh connection token in the will.

        A broker with persistence that shut down published our will into our own persistent session;
        after the restart it arrives as a live message. Only a will naming this connection means the
        broker is dropping us now.
        """
        self._connection = uuid.uuid4().hex[:12]
        client.will_set(self._presence_topic, self._presence_payload("offline", WILL_REASON), 1, True)

    def start(self) -> None:
        self._client.connect_async(self._url.host, self._url.port, keepalive=10)
        self._client.loop_start()

    def stop(self) -> None:
        """Announce a clean shutdown (retained `offline`), then disconnect so the will does not fire."""
        self._stopping = True
        if self._client.is_connected():
            info = self._client.publish(self._presence_topic, self._presence_payload("offline", "stopped"), 1, True)
            try:
                info.wait_for_publish(timeout=5)
            except (RuntimeError, ValueError):
                _log.warning("monitor presence 'offline' not acknowledged")
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=1, retain=retain)

    def send_probe(self) -> None:
        """A message to ourselves through the broker: proof that it still delivers."""
        if self._client.is_connected():
            self._client.publish(self._probe_topic, b"", qos=0)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            _log.error("broker %s refused the monitor: %s", self._url.display, reason_code)
            return
        # Subscribing again (even with the session present) makes the broker resend the retained
        # health messages: the snapshot that restores every agent's state (SPEC §2).
        topics = [HEALTH_TOPIC_FILTER, *CONTROL_TOPIC_FILTERS, self._presence_topic, self._probe_topic]
        self.last_delivery_at = time.monotonic()
        client.subscribe([(topic, 1) for topic in topics])
        client.publish(self._presence_topic, self._presence_payload("online", "running"), qos=1, retain=True)
        self._events.put(BrokerConnected(self._clock(), bool(flags.session_present)))
        _log.info("monitor connected to %s (session present: %s)", self._url.display, flags.session_present)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._events.put(BrokerLost(self._clock(), str(reason_code)))
        if self._stopping:
            return
        _log.warning("monitor lost the broker %s (%s); reconnecting", self._url.display, reason_code)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self.last_delivery_at = time.monotonic()
        if message._topic == self._probe_topic_bytes:
            return
        if message._topic == self._presence_topic_bytes:
            self._on_own_presence(message)
            return
        # Raw topic bytes: paho's `.topic` raises on invalid UTF-8, which would kill this thread.
        topic = message._topic.decode("utf-8", errors="replace")
        self._events.put(Received(topic, bytes(message.payload), bool(message.retain), self._clock()))

    def _on_own_presence(self, message: paho.MQTTMessage) -> None:
        """Our own will for this connection, delivered to us: the broker is dropping every client.

        That is a broker shutting down (Mosquitto publishes every will on SIGTERM, ours included, just
        before it closes our socket): the monitor treats it as losing the broker now, before the other
        wills land. Decided here on paho's thread, where `_connection` cannot change underneath.
        Anything else on our presence topic (our own `online`, a retained or queued will of an earlier
        connection or run) is an echo.
        """
        try:
            presence = json.loads(message.payload)
        except ValueError:
            return
        if not isinstance(presence, dict):
            return
        if (presence.get("state"), presence.get("reason")) != ("offline", WILL_REASON):
            return
        this_connection = presence.get("instance") == self.instance and presence.get("connection") == self._connection
        if message.retain or not this_connection:
            self.stale_own_wills += 1
            return
        self._events.put(BrokerLost(self._clock(), "the broker is shutting down (it published our will)"))
