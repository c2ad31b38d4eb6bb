"""The agent SDK: will, birth, heartbeats, metrics and control commands over one paho connection."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import paho.mqtt.client as paho

from fleetpulse.publisher._metrics import MetricsWindow
from fleetpulse.publisher.mqtt import DEFAULT_BROKER_URL, make_client, parse_broker_url
from fleetpulse.publisher.wire import (
    MAX_PAYLOAD_BYTES,
    PROTOCOL_VERSION,
    Command,
    ControlCommand,
    Kind,
    ProtocolError,
    ReportedStatus,
    control_topic,
    format_timestamp,
    group_control_topic,
    health_topic,
    parse_control,
    validate_id,
)

__all__ = ["Agent", "TaskRecord"]

_log = logging.getLogger(__name__)

KillCallback = Callable[[ControlCommand], object]

# What identity and labels may take of a heartbeat; the rest is for the metrics window (<= 32 models).
_MAX_STATIC_PAYLOAD_BYTES = 10 * 1024


@dataclass
class TaskRecord:
    """Yielded by `Agent.task()`: set what the task cost before it ends."""

    cost_usd: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    model: str | None = None


def _now() -> datetime:
    return datetime.now(UTC)


def _check_number(name: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not low < value <= high:
        raise ValueError(f"{name} must be > {low} and <= {high}, got {value!r}")
    return float(value)


class Agent:
    """One monitored agent: `start()`, do work (`task()`, `report_metric()`), `stop()`.

    The broker announces this agent's death itself: the will (`kind: "will"`, retained, QoS 1, the
    connection's `session`) is registered before connecting, so a crash, OOM kill or a connection that
    goes silent for 1.5 x `keepalive_s` is published by the broker without any help from this process.
    """

    def __init__(
        self,
        agent_id: str,
        broker: str = DEFAULT_BROKER_URL,
        *,
        interval_s: float = 30.0,
        keepalive_s: int = 10,
        display_name: str | None = None,
        depends_on: Iterable[str] = (),
        group: str | None = None,
        labels: Mapping[str, str] | None = None,
        version: str = "",
        on_kill: KillCallback | None = None,
    ) -> None:
        self.agent_id = validate_id(agent_id)
        self._url = parse_broker_url(broker)
        self.interval_s = _check_number("interval_s", interval_s, 0, 86_400)
        if isinstance(keepalive_s, bool) or not isinstance(keepalive_s, int) or not 1 <= keepalive_s <= 65_535:
            raise ValueError(f"keepalive_s must be a whole number of seconds from 1 to 65535, got {keepalive_s!r}")
        self.keepalive_s = keepalive_s
        if display_name is not None and (not isinstance(display_name, str) or not 0 < len(display_name) <= 256):
            raise ValueError(f"display_name must be a string of 1-256 characters, got {display_name!r}")
        self.display_name = display_name or self.agent_id
        if isinstance(depends_on, str):
            raise ValueError("depends_on must be a list of agent ids, not a single string")
        self.depends_on = [validate_id(dep, "depends_on id") for dep in depends_on]
        self.group = validate_id(group, "group") if group is not None else None
        labels = dict(labels or {})
        for key, value in labels.items():
            if not isinstance(key, str) or not isinstance(value, str) or not key or len(key) > 128 or len(value) > 512:
                raise ValueError(f"labels must map non-empty str keys (<=128) to str values (<=512): {key!r}")
        if len(labels) > 64:
            raise ValueError("at most 64 labels")
        self.labels = labels
        if not isinstance(version, str) or len(version) > 128:
            raise ValueError(f"version must be a string of at most 128 characters, got {version!r}")
        self.version = version
        self._on_kill = on_kill

        self._host = socket.gethostname()
        self._pid = os.getpid()
        self._metrics = MetricsWindow()
        self._status = ReportedStatus.HEALTHY
        self._reason: str | None = None
        self._resumed = threading.Event()
        self._resumed.set()

        # _publish_lock orders seq numbers and session changes between the heartbeat thread, the
        # paho network thread (birth on connect) and user threads (set_degraded, stop).
        self._publish_lock = threading.RLock()
        self._session = ""
        self._seq = -1
        self._connected = threading.Event()
        self._born = threading.Event()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._started = False
        self._stopped = False
        self._client: paho.Client | None = None
        self._heartbeat_thread: threading.Thread | None = None
        self._birth_mid: int | None = None
        static_bytes = len(self._message(Kind.HEARTBEAT, "x" * 1024))
        if static_bytes > _MAX_STATIC_PAYLOAD_BYTES:
            raise ValueError(
                f"labels, depends_on and names make a {static_bytes}-byte heartbeat; keep it under "
                f"{_MAX_STATIC_PAYLOAD_BYTES} so metrics fit in the protocol's {MAX_PAYLOAD_BYTES}-byte limit"
            )

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self, wait_s: float = 10.0) -> bool:
        """Connect (will first), publish the birth and start heartbeating.

        Returns True once the birth is acknowledged by the broker, False if that took longer than
        `wait_s`: the agent keeps trying in the background (reconnects with backoff forever), because a
        monitoring outage must never stop the work it monitors.
        """
        if self._started:
            raise RuntimeError("Agent.start() was already called")
        self._started = True
        self._new_session()
        client = make_client(self._url, client_id=self._client_id())
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._set_will(client)
        self._client = client
        client.connect_async(self._url.host, self._url.port, keepalive=self.keepalive_s)
        client.loop_start()
        self._heartbeat_thread = threading.Thread(
            target=self._heartbeat_loop, name=f"fleetpulse-heartbeat-{self.agent_id}", daemon=True
        )
        self._heartbeat_thread.start()
        if self._born.wait(wait_s):
            return True
        _log.warning("agent %s: no connection to %s yet; retrying in the background", self.agent_id, self._url.display)
        return False

    def stop(self, reason: str = "graceful shutdown") -> None:
        """Publish `kind: "stop"` and disconnect cleanly, so the broker does not fire the will."""
        if not isinstance(reason, str):
            raise ValueError(f"stop reason must be a string, got {reason!r}")
        client = self._end_heartbeats()
        if client is None:
            return
        with self._publish_lock:
            if self._connected.is_set():
                # The stop carries the last window, so work reported after the last heartbeat is not lost.
                payload = self._message(Kind.STOP, reason[:1024], self._metrics.drain())
                info = client.publish(health_topic(self.agent_id), payload, qos=1, retain=True)
                with contextlib.suppress(RuntimeError, ValueError):
                    info.wait_for_publish(timeout=5)
        client.disconnect()
        client.loop_stop()
        self._connected.clear()

    def _end_heartbeats(self) -> paho.Client | None:
        """Stop the heartbeat thread once; the client to finish with, or None if there is nothing to do."""
        if not self._started or self._stopped:
            return None
        self._stopped = True
        self._stopping.set()
        self._wake.set()
        if self._heartbeat_thread is not None and self._heartbeat_thread is not threading.current_thread():
            self._heartbeat_thread.join(timeout=5)
        return self._client

    def _crash(self, reason: str) -> None:
        """Say why in one last heartbeat, then drop the connection without DISCONNECT: the will fires.

        A crash is not an intentional stop: the monitor must see the agent `unreachable` (and alert),
        not `killed`.
        """
        client = self._end_heartbeats()
        if client is None:
            return
        with self._publish_lock:
            self._status, self._reason = ReportedStatus.DEGRADED, reason[:1024]
        info = self._publish_heartbeat()
        if info is not None:
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=5)
        client.loop_stop()
        sock = client.socket()
        if isinstance(sock, socket.socket):  # ssl.SSLSocket included
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._connected.clear()

    def __enter__(self) -> Agent:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(exc, Exception):
            self._crash(f"crashed: {type(exc).__name__}: {exc}")
        else:  # normal exit, Ctrl-C or sys.exit(): an intentional stop
            self.stop("graceful shutdown" if exc is None else f"interrupted: {type(exc).__name__}")

    # -- what the agent reports --------------------------------------------------------------------

    def report_metric(
        self,
        success: bool = True,
        latency_ms: float | None = None,
        cost_usd: float = 0.0,
        tokens_in: int = 0,
        tokens_out: int = 0,
        model: str | None = None,
    ) -> None:
        """Record one finished unit of work; thread-safe, no I/O: it goes out with the next heartbeat."""
        if latency_ms is not None and not (latency_ms >= 0 and latency_ms != math.inf):
            raise ValueError(f"latency_ms must be a finite number >= 0, got {latency_ms!r}")
        if not (cost_usd >= 0 and cost_usd != math.inf):
            raise ValueError(f"cost_usd must be a finite number >= 0, got {cost_usd!r}")
        if tokens_in < 0 or tokens_out < 0:
            raise ValueError("token counts must be >= 0")
        self._metrics.record(bool(success), latency_ms, cost_usd, tokens_in, tokens_out, model, time.time())

    @contextlib.contextmanager
    def task(self) -> Iterator[TaskRecord]:
        """Time one unit of work; an exception counts as a failure and is re-raised."""
        record = TaskRecord()
        started = time.perf_counter()
        success = False
        try:
            yield record
            success = True
        finally:
            latency_ms = (time.perf_counter() - started) * 1000.0
            self.report_metric(success, latency_ms, record.cost_usd, record.tokens_in, record.tokens_out, record.model)

    def progress(self) -> None:
        """Mark progress without a finished task (keeps a long task from looking stalled)."""
        self._metrics.mark_progress(time.time())

    def set_degraded(self, reason: str) -> None:
        """Report the agent's own view as degraded, with a reason; sent at once."""
        if not isinstance(reason, str) or not reason:
            raise ValueError("set_degraded() needs a non-empty reason")
        self._set_status(ReportedStatus.DEGRADED, reason[:1024])

    def set_healthy(self) -> None:
        self._set_status(ReportedStatus.HEALTHY, None)

    def on_kill(self, callback: KillCallback) -> None:
        """Run `callback(command)` on a `kill` command, then publish `stop` and disconnect.

        Without a callback a `kill` ends the process with SIGTERM after the `stop` is out, which is
        what an operator pressing Kill expects.
        """
        self._on_kill = callback

    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    def wait_if_paused(self, timeout_s: float | None = None) -> bool:
        """Block the work loop while an operator's `pause` holds; True when running again."""
        return self._resumed.wait(timeout_s)

    @property
    def session(self) -> str:
        return self._session

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # -- internals ---------------------------------------------------------------------------------

    def _client_id(self) -> str:
        # Unique per process: two processes never take over each other's connection (and will).
        return f"fp-{self.agent_id}-{self._pid}-{secrets.token_hex(3)}"

    def _new_session(self) -> None:
        with self._publish_lock:
            self._session = secrets.token_hex(8)
            self._seq = -1

    def _set_will(self, client: paho.Client) -> None:
        client.will_set(
            health_topic(self.agent_id), self._message(Kind.WILL, "will: connection lost"), qos=1, retain=True
        )

    def _message(self, kind: Kind, reason: str | None = None, metrics: dict[str, Any] | None = None) -> bytes:
        # Built as plain JSON, not through publisher.protocol's pydantic models, to keep the monitored
        # process small; every test parses these payloads with the monitor's strict parser.
        document: dict[str, Any] = {
            "v": PROTOCOL_VERSION,
            "agent": self.agent_id,
            "name": self.display_name,
            "kind": kind.value,
            "session": self._session,
            "sent_at": format_timestamp(_now()),
            "interval_s": self.interval_s,
            "host": self._host,
            "pid": self._pid,
            "version": self.version,
            "depends_on": self.depends_on,
            "labels": self.labels,
            "paused": self.paused,
        }
        if kind is Kind.HEARTBEAT:
            document["status"] = self._status.value
            document["seq"] = self._seq
        if reason is not None:
            document["reason"] = reason
        if self.group is not None:
            document["group"] = self.group
        if metrics is not None:
            document["metrics"] = metrics
        return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()

    def _publish_heartbeat(self) -> paho.MQTTMessageInfo | None:
        """Publish the next heartbeat of this session (seq 0 is the birth); None if not connected."""
        client = self._client
        with self._publish_lock:
            if client is None or not self._connected.is_set():
                return None
            metrics = self._metrics.drain()
            self._seq += 1
            payload = self._message(Kind.HEARTBEAT, self._reason, metrics)
            info = client.publish(health_topic(self.agent_id), payload, qos=1, retain=True)
            if info.rc != paho.MQTT_ERR_SUCCESS:
                self._seq -= 1
                self._metrics.restore(metrics)
                return None
            return info

    def _heartbeat_loop(self) -> None:
        next_due = time.monotonic() + self.interval_s
        while not self._stopping.is_set():
            woken = self._wake.wait(timeout=max(0.0, next_due - time.monotonic()))
            if self._stopping.is_set():
                return
            if woken:
                self._wake.clear()
            elif time.monotonic() < next_due:
                continue
            if self._born.is_set() and self._publish_heartbeat() is not None:
                next_due = time.monotonic() + self.interval_s
            else:
                next_due = time.monotonic() + min(self.interval_s, 1.0)

    def _set_status(self, status: ReportedStatus, reason: str | None) -> None:
        with self._publish_lock:
            changed = (status, reason) != (self._status, self._reason)
            self._status, self._reason = status, reason
        if changed:
            self._wake.set()

    # paho callbacks run in paho's network thread: keep them short and never raise.

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            _log.warning(
                "agent %s: broker %s refused the connection: %s",
                self.agent_id,
                self._url.display,
                reason_code,
            )
            return
        topics = [(control_topic(self.agent_id), 1)]
        if self.group is not None:
            topics.append((group_control_topic(self.group), 1))
        client.subscribe(topics)
        self._connected.set()
        birth = self._publish_heartbeat()  # seq 0 of this session
        # on_publish runs on this same thread, so the mid is stored before its PUBACK can be handled.
        self._birth_mid = birth.mid if birth is not None else None

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        if mid == self._birth_mid:
            # Born once the broker holds the birth, so a subscriber arriving now gets it as retained.
            self._born.set()
            _log.info("agent %s: connected to %s, session %s", self.agent_id, self._url.display, self._session)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._connected.clear()
        self._born.clear()
        self._birth_mid = None
        if self._stopping.is_set():
            return
        _log.warning("agent %s: lost %s (%s); reconnecting", self.agent_id, self._url.display, reason_code)
        # SPEC §2: every connection is a new session with its own will. paho reconnects with the will
        # set here, so the old session's will (if the broker still fires it) is recognisably stale.
        self._new_session()
        self._set_will(client)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            command = parse_control(bytes(message.payload))
        except ProtocolError as error:
            _log.warning("agent %s: ignored control message on %s: %s", self.agent_id, message.topic, error.reason)
            return
        _log.info(
            "agent %s: %s by %s (%s), id %s",
            self.agent_id,
            command.command,
            command.issued_by,
            command.reason,
            command.id,
        )
        if command.command is Command.KILL:
            threading.Thread(target=self._kill, args=(command,), name="fleetpulse-kill", daemon=True).start()
        elif command.command is Command.PAUSE:
            self._resumed.clear()
            self._wake.set()
        elif command.command is Command.RESUME:
            self.progress()  # a long pause is not a stall
            self._resumed.set()
            self._wake.set()
        elif command.command is Command.REBIRTH:
            self._wake.set()

    def _kill(self, command: ControlCommand) -> None:
        callback = self._on_kill
        if callback is not None:
            try:
                callback(command)
            except Exception:
                _log.exception("agent %s: kill callback failed; stopping anyway", self.agent_id)
        reason = f"killed by {command.issued_by}" + (f": {command.reason}" if command.reason else "")
        self.stop(reason[:1024])
        if callback is None:
            os.kill(os.getpid(), signal.SIGTERM)
