"""The embedded default broker: amqtt with MQTT keep-alive actually enforced, so frozen clients' wills fire."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import Any

from amqtt.broker import Broker
from amqtt.session import OUTGOING

from broker.netutil import LoopThread, PortInUseError, ensure_port_free, free_port

__all__ = ["EmbeddedBroker", "PortInUseError", "start_embedded_broker"]  # PortInUseError: from broker.netutil

_log = logging.getLogger("fleetpulse.broker")

# MQTT 3.1.1 §3.1.2.10: the server disconnects a client that sends nothing for 1.5 x its keep-alive.
KEEPALIVE_GRACE_FACTOR = 1.5


class _KeepAliveBroker(Broker):
    """amqtt 0.12.1 `Broker` that drops clients silent for 1.5 x keep-alive (SPEC §2) and keeps sessions.

    amqtt's reader loop already waits for each packet with `timeout=session.keep_alive`, but its
    broker-side `handle_read_timeout` does nothing, so a `kill -STOP`ped or partitioned client keeps its
    session forever and its will never fires. Two adjustments, both per connection: the read timeout
    becomes 1.5 x the client's keep-alive (the MQTT rule), and a timeout closes the connection the same
    way an EOF does, which makes amqtt publish the will. Pinned to amqtt 0.12.1 because this relies on
    `_initialize_client_session`; `tests/broker/test_keepalive.py` fails loudly if that ever changes.
    """

    async def _initialize_client_session(self, reader: Any, writer: Any, remote_address: str, remote_port: int) -> Any:
        handler, session = await super()._initialize_client_session(reader, writer, remote_address, remote_port)
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

    async def _authenticate(self, session: Any, listener: Any) -> bool:
        authenticated: bool = await super()._authenticate(session, listener)
        # amqtt's AnonymousAuthPlugin marks every session of an open broker anonymous, and amqtt drops
        # anonymous sessions at disconnect even with clean session off. The monitor's persistent
        # session (messages queued while it restarts, SPEC §5 "nothing lost") needs them kept, as
        # Mosquitto keeps them.
        session.is_anonymous = False
        return authenticated


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


def _config(host: str, port: int) -> dict[str, Any]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": -1}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


def port_in_use_message(host: str, port: int) -> str:
    return (
        f"port {port} on {host} is already in use (another broker, e.g. Mosquitto, may be listening there): "
        f"choose another with --port N, or use the broker that is already there with --broker mqtt://{host}:{port}"
    )


async def start_embedded_broker(host: str = "127.0.0.1", port: int = 1883) -> Broker:
    """Start the broker on the running event loop; `await broker.shutdown()` stops it."""
    ensure_port_free(host, port, port_in_use_message(host, port))
    broker = _KeepAliveBroker(_config(host, port))
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
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        self.host = host
        self.port = free_port(host) if port == 0 else port
        self._loop_thread = LoopThread(f"fleetpulse-broker-{self.port}")
        self._broker: Broker | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    def start(self) -> EmbeddedBroker:
        self._broker = self._loop_thread.start(
            lambda loop: loop.run_until_complete(start_embedded_broker(self.host, self.port))
        )
        _log.info("embedded broker listening on %s", self.url)
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
