"""The fleet from the broker's retained snapshot alone: `fleetpulse status` where no monitor answers."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import paho.mqtt.client as paho

from fleetpulse.monitor.health import AgentView, ThresholdPolicy, apply_message, tick
from fleetpulse.publisher.mqtt import BrokerUrl, connect_and_wait, make_client
from fleetpulse.publisher.protocol import HEALTH_TOPIC_FILTER, HealthMessage, ProtocolError, parse_health

__all__ = ["read_retained_health", "views_from_snapshot"]


def read_retained_health(url: BrokerUrl, quiet_s: float = 0.3, timeout_s: float = 5.0) -> list[HealthMessage]:
    """Subscribe, collect the retained health messages, return once the broker has gone quiet.

    Raises ConnectionError when the broker cannot be reached.
    """
    messages: list[HealthMessage] = []
    lock = threading.Lock()
    subscribed = threading.Event()
    last_message_at = [time.monotonic()]

    def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if not message.retain:
            return
        try:
            parsed = parse_health(message.topic, bytes(message.payload))
        except ProtocolError:
            return
        with lock:
            messages.append(parsed)
            last_message_at[0] = time.monotonic()

    def on_subscribe(*args: Any) -> None:
        last_message_at[0] = time.monotonic()
        subscribed.set()

    client = make_client(url, client_id=f"fleetpulse-status-{uuid.uuid4().hex[:8]}")
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    connect_and_wait(client, url, timeout_s)
    client.subscribe(HEALTH_TOPIC_FILTER, qos=1)
    try:
        deadline = time.monotonic() + timeout_s
        if not subscribed.wait(timeout_s):
            raise ConnectionError(f"the broker at {url.display} did not acknowledge the subscription")
        while time.monotonic() < deadline and time.monotonic() - last_message_at[0] < quiet_s:
            time.sleep(0.02)
    finally:
        client.disconnect()
        client.loop_stop()
    with lock:
        return list(messages)


def views_from_snapshot(messages: Iterable[HealthMessage], now: datetime, policy: ThresholdPolicy) -> list[AgentView]:
    """Apply the monitor's own state machine to a snapshot.

    With no monitor there is no receive time to judge staleness by, so each message counts as heard
    at its `sent_at` (the agent's clock, capped at `now`): a retained heartbeat from an hour ago reads
    as an hour late. Duplicate deliveries (amqtt) are dropped by the state machine itself.
    """
    views: dict[str, AgentView] = {}
    for message in sorted(messages, key=lambda m: m.sent_at):
        heard_at = min(message.sent_at, now)
        view, _, _ = apply_message(views.get(message.agent), message, heard_at, policy.for_agent(message.agent))
        views[message.agent] = view
    return [tick(view, now, policy.for_agent(agent))[0] for agent, view in sorted(views.items())]
