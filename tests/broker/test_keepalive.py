"""Broker behaviour the design rests on (SPEC §2), checked on both brokers with raw MQTT clients."""

from __future__ import annotations

import socket
import time

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleetpulse.broker import EmbeddedBroker, PortInUseError
from fleetpulse.publisher.protocol import Kind
from tests.conftest import BrokerProcess, HealthRecorder, subscribe_health


def _frozen_client(port: int, keepalive_s: int) -> paho.Client:
    """A client that connects with a will and then never runs its network loop again: no PINGREQ ever."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="frozen-raw", protocol=paho.MQTTv311)
    will = b'{"v":1,"agent":"raw","kind":"will","session":"s1","sent_at":"2026-01-01T00:00:00Z","interval_s":30}'
    client.will_set("agents/raw/health", will, qos=1, retain=True)
    client.connect("127.0.0.1", port, keepalive=keepalive_s)
    client.loop(timeout=1.0)  # process the CONNACK, then stay silent
    assert client.is_connected()
    return client


@pytest.mark.timeout(60)
def test_a_silent_client_is_dropped_and_its_will_published(any_broker: BrokerProcess) -> None:
    keepalive_s = 2
    recorder = HealthRecorder()
    watcher = subscribe_health(any_broker.port, recorder)
    client = _frozen_client(any_broker.port, keepalive_s)
    connected_at = time.monotonic()
    will = recorder.wait_for(lambda r: r.message.kind is Kind.WILL, timeout_s=20)
    waited_s = will.at - connected_at
    if any_broker.kind == "amqtt":
        # broker/embedded.py: exactly 1.5 x keep-alive after the client's last packet.
        assert 1.5 * keepalive_s - 0.5 <= waited_s <= 1.5 * keepalive_s + 1.0
    else:
        # Mosquitto 2.0.11 sweeps every ~5 s: 1.5 x keep-alive + 0-6 s (SPEC §2).
        assert 1.5 * keepalive_s - 0.5 <= waited_s <= 1.5 * keepalive_s + 7.0
    client.socket().close()
    watcher.disconnect()
    watcher.loop_stop()


def test_amqtt_may_deliver_a_retained_message_twice_to_a_new_subscriber(amqtt_broker: BrokerProcess) -> None:
    # The quirk the monitor must be idempotent to (SPEC §2): seen here on most subscriptions,
    # exact or wildcard, QoS 0 or 1. Both copies are the same message, so the (agent, session,
    # seq) identity lets ingest drop the second.
    from fleetpulse.publisher import Agent

    with Agent("retained-twice", broker=amqtt_broker.url, interval_s=30) as agent:
        time.sleep(0.5)  # the birth is stored as retained before anyone subscribes
        recorder = HealthRecorder()
        watcher = subscribe_health(amqtt_broker.port, recorder)
        recorder.wait_for(lambda r: r.message.agent == "retained-twice")
        time.sleep(1.0)
        copies = recorder.matching(lambda r: r.message.agent == "retained-twice")
        assert 1 <= len(copies) <= 2
        assert all(c.retained for c in copies)
        assert all(c.message == copies[0].message for c in copies)
        assert (copies[0].message.session, copies[0].message.seq) == (agent.session, 0)
        watcher.disconnect()
        watcher.loop_stop()


def test_a_taken_port_gives_one_clear_error() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(PortInUseError) as caught:
            EmbeddedBroker("127.0.0.1", port).start()
    text = caught.value.strerror
    assert f"port {port}" in text and "--port N" in text and f"--broker mqtt://127.0.0.1:{port}" in text


def test_port_zero_picks_a_free_port() -> None:
    with EmbeddedBroker("127.0.0.1", 0) as broker:
        assert broker.port > 0
        socket.create_connection(("127.0.0.1", broker.port), timeout=2).close()
