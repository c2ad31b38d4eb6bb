"""Brokers with authentication on (embedded and Mosquitto, same password file and rules), and a throwaway CA."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleetpulse.broker import EmbeddedBroker, PasswordFile, Role, TlsFiles
from fleetpulse.broker.mosquitto import MosquittoProcess, write_mosquitto_config
from fleetpulse.broker.netutil import free_port
from tests.conftest import require_tool

# name: (password, role, group)
USERS = {
    "a1": ("pw-a1", Role.AGENT, "workers"),
    "a2": ("pw-a2", Role.AGENT, None),
    "mon": ("pw-mon", Role.MONITOR, None),
}


def write_password_file(path: Path) -> Path:
    passwords = PasswordFile(path)
    for name, (password, role, group) in USERS.items():
        passwords.add(name, password, role, group)
    passwords.save()
    return path


@dataclass(frozen=True)
class Ca:
    cert: Path
    server_cert: Path
    server_key: Path


@pytest.fixture(scope="session")
def throwaway_ca(tmp_path_factory: pytest.TempPathFactory) -> Ca:
    """A CA made for this test run, and a certificate it signed for 127.0.0.1 and localhost."""
    openssl = require_tool("openssl")
    directory = tmp_path_factory.mktemp("ca")
    (directory / "server.ext").write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\n")

    def run(*arguments: str) -> None:
        subprocess.run([openssl, *arguments], cwd=directory, check=True, capture_output=True, timeout=30)

    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    run("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=fleetpulse test CA")
    run("req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    run(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
    )  # fmt: skip
    return Ca(directory / "ca.pem", directory / "server.pem", directory / "server.key")


@dataclass
class SecuredBroker:
    """A running broker that lets in only USERS, with the ACL of broker/acl.py."""

    kind: str
    port: int
    password_file: Path
    ca: Path | None = None
    clients: list[paho.Client] = field(default_factory=list)

    def url(self, user: str | None = None, password: str | None = None) -> str:
        scheme = "mqtts" if self.ca else "mqtt"
        credentials = ""
        if user is not None:
            password = USERS[user][0] if password is None else password
            credentials = f"{quote(user, safe='')}:{quote(password, safe='')}@"
        query = f"?ca={quote(str(self.ca))}" if self.ca else ""
        return f"{scheme}://{credentials}127.0.0.1:{self.port}{query}"

    def connect(
        self,
        user: str | None,
        password: str | None = None,
        client_id: str = "",
        will: tuple[str, bytes] | None = None,
        clean_session: bool = True,
    ) -> tuple[paho.Client, bool]:
        """A started paho client and whether the broker accepted it."""
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-{user}-{time.monotonic_ns()}",
            clean_session=clean_session,
        )
        if user is not None:
            client.username_pw_set(user, USERS[user][0] if password is None else password)
        if self.ca:
            client.tls_set(ca_certs=str(self.ca))
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True)
        answered = threading.Event()
        accepted: list[bool] = []

        def on_connect(client: paho.Client, userdata: object, flags: object, reason_code: Any, props: object) -> None:
            accepted.append(not reason_code.is_failure)
            answered.set()

        client.on_connect = on_connect
        client.on_disconnect = lambda *args: answered.set()
        client.reconnect_delay_set(60, 120)  # a refused client must not retry during the test
        client.connect("127.0.0.1", self.port, keepalive=30)
        client.loop_start()
        self.clients.append(client)
        assert answered.wait(10), "no CONNACK"
        return client, bool(accepted and accepted[0])

    def close(self) -> None:
        for client in self.clients:
            client.disconnect()
            client.loop_stop()


def start_secured(kind: str, directory: Path, ca: Ca | None = None) -> tuple[SecuredBroker, object]:
    """(broker, handle with .stop()) for kind "amqtt" or "mosquitto"."""
    password_file = write_password_file(directory / "fleet.passwd")
    tls = TlsFiles(ca.server_cert, ca.server_key, ca.cert) if ca else None
    if kind == "amqtt":
        embedded = EmbeddedBroker("127.0.0.1", 0, password_file=password_file, tls=tls).start()
        return SecuredBroker(kind, embedded.port, password_file, ca.cert if ca else None), embedded
    require_tool("mosquitto")
    port = free_port()
    config, _, _ = write_mosquitto_config(directory / "mosquitto", password_file, "127.0.0.1", port, tls)
    mosquitto = MosquittoProcess.from_config(directory, config, port).start()
    return SecuredBroker(kind, port, password_file, ca.cert if ca else None), mosquitto


@pytest.fixture(params=["amqtt", "mosquitto"])
def secured_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SecuredBroker]:
    broker, handle = start_secured(request.param, tmp_path)
    yield broker
    broker.close()
    handle.stop()  # type: ignore[attr-defined]
