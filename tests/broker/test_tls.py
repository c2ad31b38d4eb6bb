"""mqtts:// on both brokers with a CA made for the test: agent -> broker -> monitor, and an untrusted server refused."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleetpulse.monitor.service import Monitor, MonitorConfig
from fleetpulse.publisher import Agent
from tests.broker.conftest import Ca, SecuredBroker, start_secured
from tests.e2e.test_monitor import eventually, rows, state_of


@pytest.fixture(params=["amqtt", "mosquitto"])
def tls_broker(request: pytest.FixtureRequest, tmp_path: Path, throwaway_ca: Ca) -> Iterator[SecuredBroker]:
    broker, handle = start_secured(request.param, tmp_path, throwaway_ca)
    yield broker
    broker.close()
    handle.stop()  # type: ignore[attr-defined]


def test_a_heartbeat_goes_agent_to_monitor_over_tls_with_credentials(tls_broker: SecuredBroker, tmp_path: Path) -> None:
    assert tls_broker.url("a1").startswith("mqtts://a1:pw-a1@127.0.0.1:")
    config = MonitorConfig(broker=tls_broker.url("mon"), db_path=tmp_path / "fleet.duckdb", tick_interval_s=0.1)
    monitor = Monitor(config).start()
    try:
        eventually(lambda: monitor.connected)
        with Agent("a1", broker=tls_broker.url("a1"), interval_s=0.2) as agent:
            eventually(lambda: state_of(monitor, "a1") == "healthy")
            eventually(lambda: rows(monitor, "SELECT count(*) FROM heartbeats WHERE agent = 'a1'")[0][0] >= 3)
            session = agent.session
        eventually(lambda: state_of(monitor, "a1") == "killed")
        stored = rows(monitor, "SELECT DISTINCT session FROM heartbeats WHERE agent = 'a1'")
        assert stored == [(session,)]
    finally:
        monitor.stop()


def test_a_client_that_does_not_trust_the_ca_is_refused_by_itself(tls_broker: SecuredBroker) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="untrusting")
    client.username_pw_set("a1", "pw-a1")
    client.tls_set(cert_reqs=ssl.CERT_REQUIRED)  # the system's CAs only
    with pytest.raises(ssl.SSLCertVerificationError):
        client.connect("127.0.0.1", tls_broker.port, keepalive=10)


def test_plain_mqtt_gets_nothing_from_a_tls_listener(tls_broker: SecuredBroker) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="plain")
    client.username_pw_set("a1", "pw-a1")
    client.connect("127.0.0.1", tls_broker.port, keepalive=10)
    client.loop(timeout=2.0)
    client.loop(timeout=0.5)
    assert not client.is_connected()
    client.disconnect()
