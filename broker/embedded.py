"""The embedded default broker: amqtt with keep-alive enforced (frozen clients' wills fire), optional auth, ACL, TLS."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.connack import BAD_USERNAME_PASSWORD, IDENTIFIER_REJECTED, NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import OUTGOING
from amqtt.utils import gen_client_id

from fleetpulse.broker.acl import may_publish, may_receive, may_subscribe
from fleetpulse.broker.credentials import CredentialsError, PasswordFile, Role, User, roles_path
from fleetpulse.broker.netutil import LoopThread, PortInUseError, ensure_port_free, free_port

__all__ = [  # PortInUseError: from broker.netutil
    "EmbeddedBroker",
    "PortInUseError",
    "TlsFiles",
    "start_embedded_broker",
]

_log = logging.getLogger(__name__)

# MQTT 3.1.1 §3.1.2.10: the server disconnects a client that sends nothing for 1.5 x its keep-alive.
KEEPALIVE_GRACE_FACTOR = 1.5
# No fleetpulse message comes near this (health payloads are <= 16 KiB, SPEC §2); a bigger one is dropped
# here instead of being held in memory by the monitor and every other subscriber. Mosquitto: max_packet_size.
MAX_MESSAGE_BYTES = 64 * 1024
PASSWORD_FILE_RECHECK_S = 1.0  # `fleetpulse credentials add/remove` takes effect within this, no restart


@dataclass(frozen=True)
class TlsFiles:
    """The broker's certificate chain and key (PEM); `ca` is what clients should trust (default: `cert`)."""

    cert: Path
    key: Path
    ca: Path | None = None


class _Access:
    """The users the broker lets in: those of a password file (re-read when it changes) and issued ones."""

    def __init__(self, password_file: Path) -> None:
        if not password_file.exists():
            raise CredentialsError(
                f"no password file at {password_file}: create it with `fleetpulse credentials add NAME --file "
                f"{password_file}`"
            )
        self._path = password_file
        self._file = PasswordFile(password_file)
        self._signature = self._stat()
        self._checked_at = time.monotonic()
        self._issued: dict[str, tuple[User, str]] = {}

    def _stat(self) -> tuple[int, ...]:
        signature: list[int] = []
        for path in (self._path, roles_path(self._path)):
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                signature += [stat.st_mtime_ns, stat.st_size, stat.st_ino]
        return tuple(signature)

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < PASSWORD_FILE_RECHECK_S:
            return
        self._checked_at = now
        signature = self._stat()
        if signature == self._signature:
            return
        try:
            self._file = PasswordFile(self._path)
        except (OSError, CredentialsError) as error:
            _log.warning("password file %s unreadable, keeping the users read before: %s", self._path, error)
            return
        self._signature = signature
        _log.info("password file %s re-read: %d user(s)", self._path, len(self._file.users()))

    def authenticate(self, name: str | None, password: str | None) -> User | None:
        if not name:
            return None
        issued = self._issued.get(name)
        if issued is not None and hmac.compare_digest(issued[1].encode(), (password or "").encode()):
            return issued[0]
        self._refresh()
        return self._file.check(name, password or "")

    def current(self, name: str) -> User | None:
        """The user as the password file says now: a removed user loses access on its open connection too."""
        issued = self._issued.get(name)
        if issued is not None:
            return issued[0]
        self._refresh()
        return self._file.user(name)

    def issue(self, user: User) -> str:
        password = secrets.token_urlsafe(18)
        self._issued[user.name] = (user, password)
        return password


class _KeepAliveBroker(Broker):
    """amqtt 0.12.1 `Broker` that drops clients silent for 1.5 x keep-alive (SPEC §2) and keeps sessions.

    amqtt's reader loop already waits for each packet with `timeout=session.keep_alive`, but its
    broker-side `handle_read_timeout` does nothing, so a `kill -STOP`ped or partitioned client keeps its
    session forever and its will never fires. Two adjustments, both per connection: the read timeout
    becomes 1.5 x the client's keep-alive (the MQTT rule), and a timeout closes the connection the same
    way an EOF does, which makes amqtt publish the will. Pinned to amqtt 0.12.1 because this relies on
    `_initialize_client_session`; `tests/broker/test_keepalive.py` fails loudly if that ever changes.
    """

    def __init__(self, config: dict[str, Any], access: _Access | None = None) -> None:
        super().__init__(config)
        self.access = access

    async def _initialize_client_session(self, reader: Any, writer: Any, remote_address: str, remote_port: int) -> Any:
        if self.access is None:
            handler, session = await super()._initialize_client_session(reader, writer, remote_address, remote_port)
        else:
            handler, session = await self._initialize_admitted_session(self.access, reader, writer)
        if session.keep_alive > 0:
            # keep_alive is read once when the handler's reader loop starts, after this returns.
            session.keep_alive = session.keep_alive * KEEPALIVE_GRACE_FACTOR
            client_id = session.client_id

            def drop_silent_client() -> None:
                _log.info(
                    "client %s silent for %.1f s (1.5 x keep-alive): disconnecting",
                    client_id,
                    session.keep_alive,
                )
                # Resolves the broker's disconnect waiter with "no DISCONNECT packet": will + cleanup.
                # Kept on the handler so the task is not garbage-collected before it runs.
                handler.fleetpulse_drop_task = asyncio.ensure_future(handler.handle_connection_closed())

            handler.handle_read_timeout = drop_silent_client
        original_qos1_flow = handler._handle_qos1_message_flow
        handler._handle_qos1_message_flow = lambda message: _qos1_flow_keeping_unacked(
            handler, message, original_qos1_flow
        )
        return handler, session

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int], session: Any) -> None:
        # amqtt 0.12.1 calls this at every CONNECT for every topic filter *any* client subscribed to, so a
        # new agent was sent the whole fleet's retained health messages, and subscribers got them twice.
        # Retained messages go only to sessions that hold the subscription (MQTT 3.1.1 §3.3.1.3).
        subscribers = self._subscriptions.get(subscription[0], [])
        if any(subscriber.client_id == session.client_id for subscriber, _ in subscribers):
            await super()._publish_retained_messages_for_subscription(subscription, session)

    async def _initialize_admitted_session(self, access: _Access, reader: Any, writer: Any) -> Any:
        """amqtt 0.12.1's `_initialize_client_session`, with the client's credentials checked first.

        amqtt authenticates only after this step, which has by then deleted (clean session) or taken over
        the existing session of the same client id: anyone could have wiped the monitor's persistent
        session, or replaced its will, with a wrong password. Here nothing is touched before the client
        is known, and a client id stays with the user who first held it.
        """
        try:
            handler, incoming = await BrokerProtocolHandler.init_from_connect(reader, writer, self.plugins_manager)
        except MQTTError:
            await writer.close()
            raise
        except NoDataError as error:
            raise AMQTTError(error) from error
        user = access.authenticate(incoming.username, incoming.password)
        refusal = self._refusal(incoming, user)
        if refusal is not None or user is None:
            code, why = refusal or (NOT_AUTHORIZED, "")
            await ConnackPacket.build(0, code).to_stream(writer)
            await writer.close()
            # amqtt logs this as a warning ("Failed to initialize client session: ...").
            raise MQTTError(f"refused client {incoming.client_id!r} (user {incoming.username!r}): {why}")
        # From here as amqtt 0.12.1.
        if incoming.clean_session:
            if incoming.client_id:
                await self._delete_session(incoming.client_id)
            else:
                incoming.client_id = gen_client_id()
            incoming.parent = 0
            session = incoming
        elif incoming.client_id in self._sessions:
            session, _ = self._sessions[incoming.client_id]
            # (will_retain too, which amqtt forgets: a resumed session kept the previous connection's.)
            for name in ("will_flag", "will_message", "will_topic", "will_qos", "will_retain", "keep_alive"):
                setattr(session, name, getattr(incoming, name))
            session.username, session.password = incoming.username, incoming.password
            session.parent = 1
        else:
            incoming.parent = 0
            session = incoming
        session.fleetpulse_user = user
        return handler, session

    def _refusal(self, incoming: Any, user: User | None) -> tuple[int, str] | None:
        if user is None:
            why = "wrong user name or password" if incoming.username else "no user name (anonymous access is off)"
            return BAD_USERNAME_PASSWORD, why
        if incoming.will_flag and not may_publish(user, incoming.will_topic or ""):
            return NOT_AUTHORIZED, f"its will topic {incoming.will_topic!r} is not one it may publish"
        existing = self._sessions.get(incoming.client_id)
        owner = getattr(existing[0], "fleetpulse_user", None) if existing else None
        if owner is not None and owner.name != user.name:
            return IDENTIFIER_REJECTED, f"client id {incoming.client_id!r} belongs to user {owner.name!r}"
        return None

    async def _authenticate(self, session: Any, listener: Any) -> bool:
        if self.access is not None:
            session.is_anonymous = False
            return getattr(session, "fleetpulse_user", None) is not None  # decided at CONNECT, above
        authenticated: bool = await super()._authenticate(session, listener)
        # amqtt's AnonymousAuthPlugin marks every session of an open broker anonymous, and amqtt drops
        # anonymous sessions at disconnect even with clean session off. The monitor's persistent
        # session (messages queued while it restarts, SPEC §5 "nothing lost") needs them kept, as
        # Mosquitto keeps them.
        session.is_anonymous = False
        return authenticated

    async def _topic_filtering(self, session: Any, topic: str, action: Action) -> bool:
        if self.access is None:
            allowed: bool = await super()._topic_filtering(session, topic, action)
            return allowed
        admitted: User | None = getattr(session, "fleetpulse_user", None)
        user = self.access.current(admitted.name) if admitted is not None else None
        if user is None:
            return False
        if action == Action.PUBLISH:
            allowed = may_publish(user, topic)
        elif action == Action.SUBSCRIBE:
            allowed = may_subscribe(user, topic)
        else:
            allowed = may_receive(user, topic)
        if not allowed and action != Action.RECEIVE:
            _log.info("denied %s of %r to user %r", action.value, topic, user.name)
        return allowed

    async def _handle_message_delivery(self, session: Any, handler: Any, wait_deliver: Any) -> bool:
        message = wait_deliver.result()
        if message is not None and message.data is not None and len(message.data) > MAX_MESSAGE_BYTES:
            _log.info("dropped a %d-byte message from %s on %r", len(message.data), session.client_id, message.topic)
            return True
        delivered: bool = await super()._handle_message_delivery(session, handler, wait_deliver)
        return delivered


async def _qos1_flow_keeping_unacked(handler: Any, message: Any, original: Any) -> None:
    """amqtt 0.12.1's QoS 1 delivery to a subscriber, except that an unacknowledged message stays in flight.

    amqtt drops an outgoing QoS 1 message from the session's in-flight set when its PUBACK does not come
    (timeout, or the subscriber disconnecting), even for a persistent session, so the message is lost
    instead of being resent on reconnect (MQTT 3.1.1 §4.4). A monitor restarting at the wrong moment lost
    a heartbeat that way. Here it stays in flight and amqtt's own `_retry_deliveries` resends it.
    """
    if message.direction != OUTGOING or message.puback_packet or handler.session is None:
        await original(message)
        return
    handler.session.inflight_out[message.packet_id] = message
    dup = message.publish_packet is not None
    packet = message.build_publish_packet(dup=True) if dup else message.build_publish_packet()
    await handler._send_packet(packet)
    message.publish_packet = packet
    waiter: asyncio.Future[Any] = asyncio.Future()
    handler._puback_waiters[message.packet_id] = waiter
    try:
        message.puback_packet = await asyncio.wait_for(waiter, timeout=5)
    except TimeoutError:
        raise TimeoutError(f"Timeout waiting for PUBACK for packet ID {message.packet_id}") from None
    finally:
        handler._puback_waiters.pop(message.packet_id, None)
    handler.session.inflight_out.pop(message.packet_id, None)  # acknowledged: now it may go


def _config(host: str, port: int, tls: TlsFiles | None) -> dict[str, Any]:
    listener: dict[str, Any] = {"type": "tcp", "bind": f"{host}:{port}", "max_connections": -1}
    if tls is not None:
        listener |= {"ssl": True, "certfile": str(tls.cert), "keyfile": str(tls.key)}
    return {
        "listeners": {"default": listener},
        # With a password file the broker's own hooks above authenticate; this plugin then never answers.
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


def port_in_use_message(host: str, port: int) -> str:
    return (
        f"port {port} on {host} is already in use (another broker, e.g. Mosquitto, may be listening there): "
        f"choose another with --port N, or use the broker that is already there with --broker mqtt://{host}:{port}"
    )


async def start_embedded_broker(
    host: str = "127.0.0.1", port: int = 1883, *, password_file: Path | None = None, tls: TlsFiles | None = None
) -> Broker:
    """Start the broker on the running event loop; `await broker.shutdown()` stops it.

    With `password_file` only its users get in (anonymous access off), each limited by broker/acl.py.
    """
    access = _Access(password_file) if password_file is not None else None
    ensure_port_free(host, port, port_in_use_message(host, port))
    broker = _KeepAliveBroker(_config(host, port, tls), access)
    await broker.start()
    return broker


async def _close_listeners(broker: Broker) -> None:
    for server in broker._servers.values():
        instance = getattr(server, "instance", None)
        if instance is not None:
            instance.close()


class EmbeddedBroker:
    """The embedded broker on its own thread and event loop, for use inside a process or a test.

    `with EmbeddedBroker(port=0) as broker: Agent("a", broker=broker.url)`; port 0 picks a free port.
    `password_file` turns authentication and the ACL on (broker/acl.py); `tls` makes the listener mqtts://.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        password_file: Path | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.host = host
        self.port = free_port(host) if port == 0 else port
        self.password_file = password_file
        self.tls = tls
        self._loop_thread = LoopThread(f"fleetpulse-broker-{self.port}")
        self._broker: _KeepAliveBroker | None = None

    @property
    def url(self) -> str:
        """The URL clients connect to (no credentials; with TLS it names the CA to trust)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.tls is None:
            return f"mqtt://{host}:{self.port}"
        return f"mqtts://{host}:{self.port}?ca={quote(str(self.tls.ca or self.tls.cert))}"

    def issue_url(self, name: str, role: Role = Role.AGENT) -> str:
        """`url` with credentials for `name` that the broker accepts until it stops; they are never written down.

        For clients the same process starts (`fleetpulse up`: its monitor and demo agents) when a password
        file is in force.
        """
        assert self._broker is not None and self._broker.access is not None, "needs a started broker with auth"
        password = self._broker.access.issue(User(name, role))
        scheme, rest = self.url.split("://", 1)
        return f"{scheme}://{quote(name, safe='')}:{quote(password, safe='')}@{rest}"

    def start(self) -> EmbeddedBroker:
        self._broker = self._loop_thread.start(
            lambda loop: loop.run_until_complete(
                start_embedded_broker(self.host, self.port, password_file=self.password_file, tls=self.tls)
            )
        )
        access = f"users of {self.password_file} only" if self.password_file else "anonymous access"
        _log.info("embedded broker listening on %s (%s)", self.url.split("?")[0], access)
        return self

    def stop(self) -> None:
        broker = self._broker
        if broker is None:
            return
        try:
            self._loop_thread.run(broker.shutdown(), timeout_s=10)
        except Exception:
            _log.debug("embedded broker shutdown raised", exc_info=True)
        # amqtt closes its listeners last in shutdown(); if anything before that failed, the port
        # would stay bound until garbage collection. Close them for sure, so a restart can bind again.
        with contextlib.suppress(Exception):
            self._loop_thread.run(_close_listeners(broker), timeout_s=5)
        self._loop_thread.stop()
        self._broker = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
