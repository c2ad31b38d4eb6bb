"""Operator commands (`kill`, `pause`, `resume`, `rebirth`) sent over MQTT, with the agent's answer awaited."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho

from fleetpulse.publisher.mqtt import BrokerUrl, connect_and_wait, make_client
from fleetpulse.publisher.protocol import (
    Command,
    ControlCommand,
    HealthMessage,
    Kind,
    ProtocolError,
    control_topic,
    group_control_topic,
    health_topic,
    parse_health,
)

__all__ = ["send_command"]


def _confirms(command: Command) -> Callable[[HealthMessage], bool]:
    """What the agent publishes once it obeyed (SPEC §2 control rules)."""
    if command is Command.KILL:
        return lambda m: m.kind is Kind.STOP
    if command is Command.PAUSE:
        return lambda m: m.kind is Kind.HEARTBEAT and m.paused
    if command is Command.RESUME:
        return lambda m: m.kind is Kind.HEARTBEAT and not m.paused
    return lambda m: m.kind is Kind.HEARTBEAT


def send_command(
    url: BrokerUrl,
    command: ControlCommand,
    agent: str | None = None,
    group: str | None = None,
    wait_s: float = 10.0,
) -> HealthMessage | None:
    """Publish `command` to one agent (waiting up to `wait_s` for its answer) or to a group (no wait).

    The monitor records every command it sees on a control topic in its audit log (`commands`), so
    this needs no database. Returns the agent's confirming message, or None (group, or no answer).
    """
    if (agent is None) == (group is None):
        raise ValueError("name exactly one of agent or group")
    topic = control_topic(agent) if agent is not None else group_control_topic(group or "")
    answered = threading.Event()
    answer: list[HealthMessage] = []
    confirms = _confirms(command.command)
    subscribed = threading.Event()

    def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if message.retain:
            return  # the retained state from before the command is not an answer
        try:
            health = parse_health(message.topic, bytes(message.payload))
        except ProtocolError:
            return
        if confirms(health):
            answer.append(health)
            answered.set()

    client = make_client(url, client_id=f"fleetpulse-ctl-{uuid.uuid4().hex[:8]}")
    client.on_message = on_message
    client.on_subscribe = lambda *args: subscribed.set()
    connect_and_wait(client, url)
    try:
        if agent is not None:
            client.subscribe(health_topic(agent), qos=1)
            subscribed.wait(5)
        client.publish(topic, command.to_payload(), qos=1).wait_for_publish(timeout=10)
        if agent is not None and answered.wait(wait_s):
            return answer[0]
        return None
    finally:
        client.disconnect()
        client.loop_stop()
