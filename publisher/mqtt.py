"""Broker URLs (`mqtt://`, `mqtts://`, credentials, MQTT 5 on request) and paho clients made from them."""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

__all__ = ["DEFAULT_BROKER_URL", "BrokerUrl", "connect_and_wait", "make_client", "parse_broker_url"]

DEFAULT_BROKER_URL = "mqtt://127.0.0.1:1883"
_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
_PROTOCOLS = {"3.1.1": paho.MQTTv311, "4": paho.MQTTv311, "5": paho.MQTTv5}


@dataclass(frozen=True)
class BrokerUrl:
    """A parsed broker URL: `mqtt[s]://[user[:password]@]host[:port][?protocol=5&ca=/path/ca.pem]`."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    protocol_version: int = paho.MQTTv311
    ca_file: str | None = None

    @property
    def display(self) -> str:
        """The URL without its password, for logs and errors."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


def _without_password(url: str) -> str:
    """`url` with its password (if any) replaced by `***`."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return "(a URL that cannot be parsed)"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def parse_broker_url(url: str) -> BrokerUrl:
    """Parse and check a broker URL; raise ValueError naming what is wrong."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"broker URL must be a non-empty string like {DEFAULT_BROKER_URL!r}, got {url!r}")
    parts = urlsplit(url)
    shown = _without_password(url)  # errors end up in logs and on terminals: never with the password
    if parts.scheme not in _DEFAULT_PORTS:
        raise ValueError(f"broker URL {shown!r}: scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise ValueError(f"broker URL {shown!r} has no host")
    if parts.path not in ("", "/"):
        raise ValueError(f"broker URL {shown!r}: unexpected path {parts.path!r}")
    try:
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise ValueError(f"broker URL {shown!r}: port must be a number from 1 to 65535") from None
    query = parse_qs(parts.query, strict_parsing=False)
    unknown = set(query) - {"protocol", "ca"}
    if unknown:
        raise ValueError(f"broker URL {shown!r}: unknown option(s) {sorted(unknown)}; known: protocol, ca")
    protocol_name = query.get("protocol", ["3.1.1"])[-1]
    if protocol_name not in _PROTOCOLS:
        raise ValueError(f"broker URL {shown!r}: protocol must be 3.1.1 or 5")
    ca_file = query.get("ca", [None])[-1]
    if ca_file is not None and parts.scheme != "mqtts":
        raise ValueError(f"broker URL {shown!r}: ca= only makes sense with mqtts://")
    return BrokerUrl(
        host=parts.hostname,
        port=port,
        tls=parts.scheme == "mqtts",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        protocol_version=_PROTOCOLS[protocol_name],
        ca_file=ca_file,
    )


def make_client(url: BrokerUrl, client_id: str, clean_session: bool = True) -> paho.Client:
    """A paho client (callback API v2) configured for `url`; not yet connected."""
    if url.protocol_version == paho.MQTTv5:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    else:
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv311,
            clean_session=clean_session,
        )
    if url.username is not None:
        client.username_pw_set(url.username, url.password)
    if url.tls:
        client.tls_set(ca_certs=url.ca_file, cert_reqs=ssl.CERT_REQUIRED)
    return client


def connect_and_wait(client: paho.Client, url: BrokerUrl, timeout_s: float = 10.0) -> None:
    """Connect `client`, start its network loop and wait for the broker's answer (CONNACK).

    ConnectionError with a readable reason when the broker cannot be reached, refuses the credentials,
    or does not answer; on return the client is connected and its loop runs.
    """
    answered = threading.Event()
    refusal: list[str] = []

    def on_connect(client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            refusal.append(str(reason_code))
        answered.set()

    client.on_connect = on_connect
    try:
        client.connect(url.host, url.port, keepalive=10)
    except OSError as error:
        raise ConnectionError(f"cannot reach the broker at {url.display}: {error.strerror or error}") from None
    client.loop_start()
    if not answered.wait(timeout_s) or refusal:
        client.loop_stop()
        why = f"refused the connection: {refusal[0]}" if refusal else f"did not answer within {timeout_s:g} s"
        hint = " (check the user name and password in the broker URL)" if refusal else ""
        raise ConnectionError(f"the broker at {url.display} {why}{hint}")
