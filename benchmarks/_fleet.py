"""A fleet load generator: thousands of simulated agents, each a real MQTT connection, from a few processes.

`Fleet(broker_url, agents, ...)` (used by `benchmarks.fleet_sim`, `benchmarks.scale`, `benchmarks.recovery` and
`benchmarks.detection_reference`) starts `processes` worker processes, `python -m benchmarks._fleet CONFIG_JSON`.
Each worker runs one asyncio event loop (one thread) with a minimal MQTT 3.1.1 client written here, one TCP
connection per agent, all on the loop's single epoll selector: a paho `Client` per agent would cost a thread,
locks and ~tens of KiB each, and its pure-Python packet handling per client per loop pass does not reach
10,000 connections on two cores.

Every simulated agent behaves like `publisher.Agent` on the wire (SPEC §2):

* its own client id, clean session, keep-alive `keepalive_s` (the SDK's default is 10 s), a PINGREQ when it sent
  nothing for that long;
* a will registered in CONNECT: `kind:"will"`, the connection's `session`, retained, QoS 1 on `agents/<id>/health`;
* on CONNACK: SUBSCRIBE to `agents/<id>/control` (QoS 1) and the birth, a heartbeat with seq 0;
* heartbeats every `interval_s` (retained, QoS 1, seq +1), JSON exactly as the SDK builds it (same keys, same
  order, a metrics window with one model), with 64 pre-built metrics windows cycling so payloads vary;
* a lost connection (not one the fleet killed, froze or stopped) is retried the way paho does it: first after
  1 s, doubling to at most 30 s per failed attempt, reset by a CONNACK; every connection is a new session.

The first heartbeat after a birth comes after a fraction of `interval_s` spread evenly over the fleet (the golden
ratio of the agent's index), so a fleet connected in a few seconds does not heartbeat in lock-step.

Control commands arriving on the control topic are acknowledged (QoS 1) and counted, not acted on. A kill closes
an agent's socket without DISCONNECT (`shutdown(SHUT_RDWR)`, as the SDK's crash path and a SIGKILLed process do),
so the broker publishes its will; a freeze stops the agent reading and writing (no heartbeats, no PINGREQ), so
the broker's keep-alive check (1.5 x keep-alive, SPEC §2) has to notice. Neither agent comes back.

The parent talks to each worker with one JSON line per command on stdin and one JSON event per answer on stdout
(`benchmarks._child.EventChild`). Times are `time.monotonic()`, the same clock in every process of the machine.
At `stop` every worker reports a ledger: for each agent, each session with the number of heartbeats published
(seqs 0 .. n-1) and the seqs the broker never acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import math
import os
import random
import resource
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from benchmarks._child import EventChild
from fleetpulse.publisher.mqtt import parse_broker_url
from fleetpulse.publisher.wire import PROTOCOL_VERSION, format_timestamp, health_topic

__all__ = [
    "FdLimitError",
    "Fleet",
    "FleetStats",
    "HeartbeatTemplate",
    "Ledger",
    "agent_id",
    "birth_payload",
    "check_payloads",
    "heartbeat_payload",
    "metrics_variants",
    "raise_fd_limit",
    "wait_until",
    "will_payload",
]

WORKER_MODULE = "benchmarks._fleet"
CONNECT_TIMEOUT_S = 5.0  # paho's socket timeout for the TCP connect; the CONNACK gets as long again
RECONNECT_MIN_DELAY_S = 1.0  # publisher.Agent: client.reconnect_delay_set(min_delay=1, max_delay=30)
RECONNECT_MAX_DELAY_S = 30.0
RAMP_CONCURRENCY = 64  # initial connects in flight per worker (Mosquitto 2.0 listens with a backlog of 100)
ADDRESSES_PER_SOURCE = 25_000  # loopback source ports per source address (the ephemeral range holds ~28k)
METRICS_VARIANTS = 64
MODELS = ("gpt-4o-mini", "claude-3-5-haiku", "llama-3.1-8b")
_GOLDEN = (math.sqrt(5) - 1) / 2
_PROGRESS = "@progress@"

# MQTT 3.1.1 packet types (first byte, high nibble) this client handles.
_CONNACK, _PUBLISH, _PUBACK, _SUBACK, _PINGRESP = 2, 3, 4, 9, 13
_PINGREQ_PACKET = b"\xc0\x00"
_DISCONNECT_PACKET = b"\xe0\x00"


def agent_id(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}"


# -- payloads (built like publisher.Agent._message) ------------------------------------------------


def _identity(agent: str, kind: str, session: str, sent_at: str, interval_s: float, pid: int) -> dict[str, Any]:
    return {
        "v": PROTOCOL_VERSION,
        "agent": agent,
        "name": agent,
        "kind": kind,
        "session": session,
        "sent_at": sent_at,
        "interval_s": float(interval_s),
        "host": socket.gethostname(),
        "pid": pid,
        "version": "fleet-sim",
        "depends_on": [],
        "labels": {"team": "sim", "env": "bench"},
        "paused": False,
    }


def _dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, separators=(",", ":"), allow_nan=False)


def will_payload(agent: str, session: str, interval_s: float, pid: int) -> bytes:
    document = _identity(agent, "will", session, format_timestamp(datetime.now(UTC)), interval_s, pid)
    document["reason"] = "will: connection lost"
    return _dumps(document).encode()


def birth_payload(agent: str, session: str, interval_s: float, pid: int, sent_at: str) -> bytes:
    """Seq 0: the SDK drains an empty metrics window into it."""
    document = _identity(agent, "heartbeat", session, sent_at, interval_s, pid)
    document["status"] = "healthy"
    document["seq"] = 0
    document["metrics"] = {"ok": 0, "failed": 0, "cost_usd": 0.0, "tokens_in": 0, "tokens_out": 0, "by_model": {}}
    return _dumps(document).encode()


def metrics_variants(seed: int) -> list[tuple[str, str]]:
    """METRICS_VARIANTS windows as `MetricsWindow.drain()` makes them, split around last_progress_at."""
    rng = random.Random(seed)
    variants = []
    for _ in range(METRICS_VARIANTS):
        tasks = rng.randint(1, 8)
        failed = 1 if rng.random() < 0.05 else 0
        tokens_in, tokens_out = rng.randint(300, 4000) * tasks, rng.randint(50, 900) * tasks
        cost_usd = round((tokens_in * 0.15 + tokens_out * 0.6) / 1_000_000, 9)
        model = rng.choice(MODELS)
        latencies = sorted(rng.lognormvariate(5.0, 0.5) for _ in range(tasks))
        metrics = {
            "ok": tasks - failed,
            "failed": failed,
            "cost_usd": cost_usd,
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
            "by_model": {model: {"cost_usd": cost_usd, "tokens_in": tokens_in, "tokens_out": tokens_out}},
            "latency_ms_p50": round(latencies[max(0, math.ceil(0.5 * tasks) - 1)], 1),
            "latency_ms_p95": round(latencies[max(0, math.ceil(0.95 * tasks) - 1)], 1),
            "latency_ms_max": round(latencies[-1], 1),
            "last_progress_at": _PROGRESS,
        }
        head, tail = _dumps(metrics).split(_PROGRESS)
        variants.append((head, tail))
    return variants


class HeartbeatTemplate:
    """One session's heartbeat as string pieces: per message only seq, sent_at and a metrics window vary."""

    __slots__ = ("_head", "_middle", "_variants")

    def __init__(self, agent: str, session: str, interval_s: float, pid: int, variants: list[tuple[str, str]]) -> None:
        document = _identity(agent, "heartbeat", session, _PROGRESS, interval_s, pid)
        document["status"] = "healthy"
        encoded = _dumps(document)[:-1]  # without the closing brace: seq and metrics follow
        self._head, self._middle = encoded.split(_PROGRESS)
        self._variants = variants

    def render(self, seq: int, sent_at: str) -> bytes:
        head, tail = self._variants[seq % METRICS_VARIANTS]
        return f'{self._head}{sent_at}{self._middle},"seq":{seq},"metrics":{head}{sent_at}{tail}}}'.encode()


def heartbeat_payload(agent: str, session: str, interval_s: float, pid: int, seq: int, sent_at: str) -> bytes:
    """One heartbeat exactly as a fleet worker sends it (for checks and the tick harness)."""
    template = HeartbeatTemplate(agent, session, interval_s, pid, metrics_variants(0))
    return template.render(seq, sent_at)


def check_payloads(interval_s: float = 30.0) -> int:
    """Parse a will, a birth and every metrics variant with the monitor's parser; the largest size in bytes.

    Raises ProtocolError if the monitor would reject any of them (imports pydantic: call it in the parent).
    """
    from fleetpulse.publisher.protocol import parse_health

    agent, session, pid = agent_id("check", 0), secrets.token_hex(8), os.getpid()
    sent_at = format_timestamp(datetime.now(UTC))
    payloads = [will_payload(agent, session, interval_s, pid), birth_payload(agent, session, interval_s, pid, sent_at)]
    payloads += [heartbeat_payload(agent, session, interval_s, pid, seq, sent_at) for seq in range(METRICS_VARIANTS)]
    for payload in payloads:
        parse_health(health_topic(agent), payload)
    return max(len(payload) for payload in payloads)


# -- MQTT 3.1.1 packets ----------------------------------------------------------------------------


def _remaining_length(length: int) -> bytes:
    encoded = bytearray()
    while True:
        length, digit = divmod(length, 128)
        encoded.append(digit | (0x80 if length else 0))
        if not length:
            return bytes(encoded)


def _string(value: bytes) -> bytes:
    return len(value).to_bytes(2, "big") + value


def _connect_packet(
    client_id: str, keepalive_s: int, will_topic: bytes, will: bytes, username: str | None, password: str | None
) -> bytes:
    flags = 0x02 | 0x04 | 0x08 | 0x20  # clean session, will, will QoS 1, will retained
    payload = _string(client_id.encode()) + _string(will_topic) + _string(will)
    if username is not None:
        flags |= 0x80
        payload += _string(username.encode())
        if password is not None:
            flags |= 0x40
            payload += _string(password.encode())
    body = b"\x00\x04MQTT\x04" + bytes([flags]) + keepalive_s.to_bytes(2, "big") + payload
    return b"\x10" + _remaining_length(len(body)) + body


def _subscribe_packet(packet_id: int, topic: bytes) -> bytes:
    body = packet_id.to_bytes(2, "big") + _string(topic) + b"\x01"
    return b"\x82" + _remaining_length(len(body)) + body


def _publish_packet(encoded_topic: bytes, packet_id: int, payload: bytes) -> bytes:
    """QoS 1, retained."""
    return (
        b"\x33"
        + _remaining_length(len(encoded_topic) + 2 + len(payload))
        + encoded_topic
        + packet_id.to_bytes(2, "big")
        + payload
    )


# -- one worker process ----------------------------------------------------------------------------


@dataclass
class _Config:
    broker: str
    first: int
    count: int
    interval_s: float
    keepalive_s: int
    prefix: str
    sources: int  # loopback source addresses to spread the connections over (1: the default)


class _Agent(asyncio.Protocol):
    """One simulated agent and, while it is connected, the asyncio protocol of its connection."""

    __slots__ = (
        "_birth_id",
        "_buffer",
        "_generation",
        "_in_flight",
        "_next_packet_id",
        "_template",
        "_transport",
        "_worker",
        "agent",
        "born",
        "connack",
        "connected",
        "frozen",
        "index",
        "killed",
        "last_sent",
        "ledger",
        "phase_s",
        "reconnect_delay_s",
        "seq",
        "session",
        "source",
        "stopped",
        "topic",
    )

    def __init__(self, worker: _Worker, index: int) -> None:
        self._worker = worker
        self.index = index
        self.agent = agent_id(worker.config.prefix, index)
        self.topic = _string(health_topic(self.agent).encode())
        self.phase_s = worker.config.interval_s * ((index * _GOLDEN) % 1.0)
        sources = worker.config.sources
        self.source = f"127.0.0.{1 + index % sources}" if sources > 1 else None
        self.session = ""
        self.seq = -1
        self.ledger: list[list[Any]] = []  # per session: [session, published, {packet id: seq} in flight]
        self._template: HeartbeatTemplate | None = None
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._in_flight: dict[int, int] = {}
        self._next_packet_id = 0
        self._birth_id = -1
        self._generation = 0
        self.connack: asyncio.Future[bool] | None = None
        self.connected = self.born = self.frozen = self.stopped = self.killed = False
        self.last_sent = 0.0
        self.reconnect_delay_s: float | None = None

    # -- the connection

    def new_session(self) -> bytes:
        """A fresh session (SPEC §2: every connection is one): the CONNECT packet that carries its will."""
        worker = self._worker
        self.session = secrets.token_hex(8)
        self.seq = -1
        self._in_flight = {}
        self.ledger.append([self.session, 0, self._in_flight])
        self._generation += 1
        config = worker.config
        self._template = HeartbeatTemplate(self.agent, self.session, config.interval_s, worker.pid, worker.variants)
        will = will_payload(self.agent, self.session, config.interval_s, worker.pid)
        client_id = f"fp-{self.agent}-{worker.pid}-{secrets.token_hex(3)}"
        url = worker.url
        return _connect_packet(client_id, config.keepalive_s, self.topic[2:], will, url.username, url.password)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._buffer = bytearray()
        self._next_packet_id = 0
        self._send(self.new_session())

    def connection_lost(self, exc: Exception | None) -> None:
        was_connected = self.connected
        self._transport = None
        self.connected = self.born = False
        if self.connack is not None and not self.connack.done():
            self.connack.set_result(False)
        worker = self._worker
        if was_connected and not (self.stopped or self.killed):
            worker.counts["connections_lost"] += 1  # the broker's doing, not the fleet's
        if not (self.frozen or self.stopped or self.killed or worker.stopping):
            worker.reconnect_later(self)

    def _send(self, packet: bytes) -> None:
        transport = self._transport
        if transport is not None and not self.frozen:
            transport.write(packet)
            self.last_sent = time.monotonic()

    def _packet_id(self) -> int:
        self._next_packet_id = self._next_packet_id % 65_535 + 1
        return self._next_packet_id

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 2:
            length, shift, position = 0, 0, 1
            while True:  # the remaining length: 1-4 bytes of 7 bits
                if position >= len(buffer):
                    return
                byte = buffer[position]
                length |= (byte & 0x7F) << shift
                position += 1
                if not byte & 0x80:
                    break
                shift += 7
            end = position + length
            if len(buffer) < end:
                return
            self._handle(buffer[0], bytes(buffer[position:end]))
            del buffer[:end]

    def _handle(self, first_byte: int, body: bytes) -> None:
        kind = first_byte >> 4
        worker = self._worker
        if kind == _PUBACK:
            seq = self._in_flight.pop(int.from_bytes(body[:2], "big"), None)
            if seq is not None:
                worker.counts["acked"] += 1
                if seq == 0 and not self.born:
                    self.born = True
                    worker.counts["births"] += 1
                    worker.last_birth_at = time.monotonic()
                    worker.schedule(self, time.monotonic() + self.phase_s)
        elif kind == _CONNACK:
            accepted = len(body) >= 2 and body[1] == 0
            if accepted:
                self.connected = True
                self.reconnect_delay_s = None  # paho resets its backoff on a successful CONNACK
                self._send(_subscribe_packet(self._packet_id(), f"agents/{self.agent}/control".encode()))
                self.publish_heartbeat(worker.sent_at())  # the birth, seq 0
            else:
                worker.counts["refused"] += 1
                self.abort()
            if self.connack is not None and not self.connack.done():
                self.connack.set_result(accepted)
        elif kind == _PUBLISH:  # a control command for this agent
            qos = (first_byte >> 1) & 0x03
            topic_length = int.from_bytes(body[:2], "big")
            worker.counts["commands"] += 1
            if qos:
                packet_id = body[2 + topic_length : 4 + topic_length]
                self._send(b"\x40\x02" + packet_id)
        # SUBACK and PINGRESP need nothing.

    def publish_heartbeat(self, sent_at: str) -> None:
        if self._template is None or self._transport is None or self.frozen:
            return
        self.seq += 1
        payload = (
            birth_payload(self.agent, self.session, self._worker.config.interval_s, self._worker.pid, sent_at)
            if self.seq == 0
            else self._template.render(self.seq, sent_at)
        )
        packet_id = self._packet_id()
        self._in_flight[packet_id] = self.seq
        self.ledger[-1][1] = self.seq + 1
        self._send(_publish_packet(self.topic, packet_id, payload))
        self._worker.counts["published"] += 1

    def ping_if_idle(self, now: float, keepalive_s: float) -> None:
        if self.connected and not self.frozen and now - self.last_sent >= keepalive_s:
            self._send(_PINGREQ_PACKET)
            self._worker.counts["pings"] += 1

    def generation(self) -> int:
        return self._generation

    @property
    def has_transport(self) -> bool:
        return self._transport is not None

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- what the fleet does to it

    def kill(self) -> float:
        """Close the socket without DISCONNECT (the broker publishes the will); when it was closed."""
        transport = self._transport
        self.killed = True  # never reconnects
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # the FIN leaves now, not at the loop's next pass
            transport.abort()
        return time.monotonic()

    def freeze(self) -> tuple[float, float]:
        """Stop reading and writing, keep the socket: (frozen at, last packet sent at)."""
        if self._transport is not None:
            self._transport.pause_reading()
        self.frozen = True
        return time.monotonic(), self.last_sent

    def stop(self) -> None:
        """DISCONNECT: a clean end, no will."""
        self.stopped = True
        transport = self._transport
        if transport is not None and not self.frozen:
            transport.write(_DISCONNECT_PACKET)
            transport.close()

    def unacked(self) -> list[list[Any]]:
        return [[session, published, sorted(in_flight.values())] for session, published, in_flight in self.ledger]


class _Worker:
    """One process's share of the fleet, on one event loop."""

    def __init__(self, config: _Config) -> None:
        self.config = config
        self.url = parse_broker_url(config.broker)
        self.pid = os.getpid()
        self.variants = metrics_variants(config.first)
        self.agents = [_Agent(self, config.first + n) for n in range(config.count)]
        self.by_id = {agent.agent: agent for agent in self.agents}
        self.counts: dict[str, int] = dict.fromkeys(
            ("published", "acked", "births", "pings", "reconnects", "connect_failures", "connections_lost"), 0
        )
        self.counts.update(refused=0, commands=0)
        self.stopping = False
        self.last_birth_at = 0.0
        self._due: list[tuple[float, int, int]] = []  # (monotonic due, agent index in this worker, generation)
        self._sent_at_ms = -1
        self._sent_at = ""
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()

    def sent_at(self) -> str:
        """RFC 3339 now, formatted once per millisecond."""
        now_ms = int(time.time() * 1000)
        if now_ms != self._sent_at_ms:
            self._sent_at_ms = now_ms
            self._sent_at = format_timestamp(datetime.fromtimestamp(now_ms / 1000, UTC))
        return self._sent_at

    def schedule(self, agent: _Agent, due: float) -> None:
        heapq.heappush(self._due, (due, agent.index - self.config.first, agent.generation()))

    def spawn(self, coroutine: Any) -> None:
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def connect(self, agent: _Agent) -> bool:
        """One connection attempt: TCP, CONNECT, CONNACK. False if any step failed."""
        agent.connack = self._loop.create_future()
        local_addr = (agent.source, 0) if agent.source else None
        try:
            await asyncio.wait_for(
                self._loop.create_connection(lambda: agent, self.url.host, self.url.port, local_addr=local_addr),
                CONNECT_TIMEOUT_S,
            )
            accepted = await asyncio.wait_for(agent.connack, CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError):
            accepted = False
        if not accepted:
            self.counts["connect_failures"] += 1
            agent.abort()
        return accepted

    def reconnect_later(self, agent: _Agent) -> None:
        """paho's backoff: wait 1 s after a loss, then double (at most 30 s) after each failed attempt."""
        if agent.reconnect_delay_s is None:
            agent.reconnect_delay_s = RECONNECT_MIN_DELAY_S
        else:
            agent.reconnect_delay_s = min(agent.reconnect_delay_s * 2, RECONNECT_MAX_DELAY_S)
        self._loop.call_later(agent.reconnect_delay_s, lambda: self.spawn(self._reconnect(agent)))

    async def _reconnect(self, agent: _Agent) -> None:
        if self.stopping or agent.stopped or agent.frozen or agent.killed:
            return
        self.counts["reconnects"] += 1
        # A failure after the TCP connect ends in connection_lost, which tries again; one before it, here.
        if not await self.connect(agent) and not agent.has_transport and not self.stopping:
            self.reconnect_later(agent)

    async def ramp(self) -> float:
        """Connect every agent, RAMP_CONCURRENCY at a time, until all are born; the seconds it took."""
        started = time.monotonic()
        gate = asyncio.Semaphore(RAMP_CONCURRENCY)

        async def first_connect(agent: _Agent) -> None:
            async with gate:
                if not await self.connect(agent) and not agent.has_transport:
                    self.reconnect_later(agent)

        await asyncio.gather(*(first_connect(agent) for agent in self.agents))
        while self.counts["births"] < len(self.agents) and not self.stopping:
            await asyncio.sleep(0.01)
        return time.monotonic() - started

    async def heartbeats(self) -> None:
        """Send each born agent's heartbeats on time (a heap of due times), yielding to the loop often."""
        interval_s, due, agents = self.config.interval_s, self._due, self.agents
        while not self.stopping:
            now = time.monotonic()
            sent = 0
            while due and due[0][0] <= now:
                due_at, slot, generation = heapq.heappop(due)
                agent = agents[slot]
                if agent.generation() != generation or not agent.born or agent.frozen:
                    continue  # reconnected since (its new birth scheduled it again), frozen or gone
                agent.publish_heartbeat(self.sent_at())
                heapq.heappush(due, (due_at + interval_s, slot, generation))
                sent += 1
                if sent % 256 == 0:
                    await asyncio.sleep(0)
                    now = time.monotonic()
            wait_s = due[0][0] - time.monotonic() if due else 0.05
            await asyncio.sleep(min(max(wait_s, 0.0005), 0.05))

    async def keepalives(self) -> None:
        keepalive_s = float(self.config.keepalive_s)
        sweep_s = min(1.0, keepalive_s / 4)
        while not self.stopping:
            await asyncio.sleep(sweep_s)
            now = time.monotonic()
            for agent in self.agents:
                agent.ping_if_idle(now, keepalive_s)

    def stats(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        connected = sum(1 for agent in self.agents if agent.connected)
        born = sum(1 for agent in self.agents if agent.born)
        return {
            **self.counts,
            "connected": connected,
            "born_now": born,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "max_rss_kib": usage.ru_maxrss,
            "last_birth_at": self.last_birth_at,
            "at": time.monotonic(),
        }

    def stop(self) -> dict[str, Any]:
        self.stopping = True
        for agent in self.agents:
            agent.stop()
        return {agent.agent: agent.unacked() for agent in self.agents}


class FdLimitError(RuntimeError):
    """More file descriptors are needed in one process than this machine lets it have."""


def raise_fd_limit(needed: int) -> tuple[int, int]:
    """Raise RLIMIT_NOFILE to at least `needed`; the (soft, hard) limits now. Children (Mosquitto, workers) inherit it.

    The hard limit can only be raised with CAP_SYS_RESOURCE (root in a container may lack it): FdLimitError then,
    saying what the limit is.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft, hard
    if hard == resource.RLIM_INFINITY or hard >= needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        return resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
    except (ValueError, PermissionError):
        raise FdLimitError(
            f"{needed:,} file descriptors are needed in one process, but the hard limit is {hard:,} and this process "
            "may not raise it (no CAP_SYS_RESOURCE): one Mosquitto holds one descriptor per connection"
        ) from None
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def _serve(config: _Config) -> None:
    worker = _Worker(config)
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def read_stdin() -> None:  # a thread: the loop must never block on the parent
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, json.loads(line))
        loop.call_soon_threadsafe(commands.put_nowait, None)  # EOF: the parent is gone

    threading.Thread(target=read_stdin, name="fleet-commands", daemon=True).start()
    worker.spawn(worker.heartbeats())
    worker.spawn(worker.keepalives())
    ramp_s = await worker.ramp()
    _emit("ready", ramp_s=ramp_s, **worker.stats())
    while True:
        command = await commands.get()
        if command is None:
            worker.stop()
            return
        name = command["cmd"]
        if name == "stats":
            _emit("stats", **worker.stats())
        elif name == "kill":
            _emit("killed", agent=command["agent"], at=worker.by_id[command["agent"]].kill())
        elif name == "freeze":
            frozen_at, last_sent_at = worker.by_id[command["agent"]].freeze()
            _emit("frozen", agent=command["agent"], at=frozen_at, last_sent_at=last_sent_at)
        elif name == "stop":
            ledger = worker.stop()
            await asyncio.sleep(0.2)  # let the DISCONNECTs leave
            _emit("done", ledger=ledger, **worker.stats())
            return


def _worker_main(argv: list[str]) -> None:
    config = _Config(**json.loads(argv[0]))
    raise_fd_limit(config.count + 64)
    asyncio.run(_serve(config))


# -- the parent's side -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetStats:
    """Counters summed over the workers (each a running total since the worker started)."""

    connected: int
    births: int
    published: int
    acked: int
    pings: int
    reconnects: int
    connect_failures: int
    connections_lost: int
    commands: int
    cpu_s: float
    max_rss_kib: int  # the largest worker's peak
    last_birth_at: float  # monotonic, the latest birth acknowledged by the broker
    at: float  # monotonic, when the last worker answered

    @classmethod
    def sum(cls, events: list[dict[str, Any]]) -> FleetStats:
        def total(name: str) -> int:
            return sum(int(event[name]) for event in events)

        return cls(
            connected=total("connected"),
            births=total("births"),
            published=total("published"),
            acked=total("acked"),
            pings=total("pings"),
            reconnects=total("reconnects"),
            connect_failures=total("connect_failures"),
            connections_lost=total("connections_lost"),
            commands=total("commands"),
            cpu_s=sum(float(event["cpu_s"]) for event in events),
            max_rss_kib=max(int(event["max_rss_kib"]) for event in events),
            last_birth_at=max(float(event["last_birth_at"]) for event in events),
            at=max(float(event["at"]) for event in events),
        )


@dataclass
class Ledger:
    """What the fleet published: agent -> [(session, heartbeats published, seqs never acknowledged)]."""

    sessions: dict[str, list[tuple[str, int, list[int]]]] = field(default_factory=dict)

    @property
    def acked(self) -> int:
        return sum(published - len(unacked) for runs in self.sessions.values() for _, published, unacked in runs)

    def acked_rows(self) -> list[tuple[str, str, int]]:
        """Every acknowledged (agent, session, seq)."""
        rows: list[tuple[str, str, int]] = []
        for agent, runs in self.sessions.items():
            for session, published, unacked in runs:
                missing = set(unacked)
                rows.extend((agent, session, seq) for seq in range(published) if seq not in missing)
        return rows


class _WorkerChild(EventChild):
    def command(self, name: str, **fields: Any) -> None:
        self.send(json.dumps({"cmd": name, **fields}))


class Fleet:
    """`agents` simulated agents on `processes` worker processes; `start()` returns once every one is born."""

    def __init__(
        self,
        broker_url: str | Sequence[str],
        agents: int,
        *,
        interval_s: float = 30.0,
        processes: int = 2,
        keepalive_s: int = 10,
        prefix: str = "sim",
        first_index: int = 0,
    ) -> None:
        if agents < 1 or not 1 <= processes <= agents:
            raise ValueError("need agents >= 1 and 1 <= processes <= agents")
        if not 1 <= keepalive_s <= 65_535 or interval_s <= 0:
            raise ValueError("need 1 <= keepalive_s <= 65535 and interval_s > 0")
        # Several URLs: worker n connects its agents to broker n modulo their number (edge brokers).
        self.broker_urls = [broker_url] if isinstance(broker_url, str) else list(broker_url)
        self.agents = agents
        self.interval_s = interval_s
        self.processes = processes
        self.keepalive_s = keepalive_s
        self.prefix = prefix
        self.first_index = first_index
        # Loopback connections to one broker port: ~28k source ports per source address.
        self.sources = max(1, math.ceil(agents / len(self.broker_urls) / ADDRESSES_PER_SOURCE))
        self._children: list[_WorkerChild] = []
        self._blocks: list[tuple[int, int]] = []  # (first index, count) per worker
        self.ramp_s = 0.0
        self.ready_at = 0.0

    def agent_ids(self) -> list[str]:
        return [agent_id(self.prefix, self.first_index + n) for n in range(self.agents)]

    def start(self) -> Fleet:
        first = self.first_index
        for n in range(self.processes):
            count = self.agents // self.processes + (1 if n < self.agents % self.processes else 0)
            config = _Config(
                self.broker_urls[n % len(self.broker_urls)],
                first,
                count,
                self.interval_s,
                self.keepalive_s,
                self.prefix,
                self.sources,
            )
            self._blocks.append((first, count))
            self._children.append(_WorkerChild(f"fleet worker {n}", WORKER_MODULE, json.dumps(config.__dict__)))
            first += count
        try:
            readies = [child.read_event("ready") for child in self._children]
        except BaseException:
            self.close()
            raise
        self.ramp_s = max(float(ready["ramp_s"]) for ready in readies)
        self.ready_at = time.monotonic()
        return self

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self._children]

    def _child_of(self, agent: str) -> _WorkerChild:
        index = int(agent.rsplit("-", 1)[1])
        for child, (first, count) in zip(self._children, self._blocks, strict=True):
            if first <= index < first + count:
                return child
        raise KeyError(f"no simulated agent {agent!r}")

    def stats(self) -> FleetStats:
        for child in self._children:
            child.command("stats")
        return FleetStats.sum([child.read_event("stats") for child in self._children])

    def kill(self, agent: str) -> float:
        """Close `agent`'s socket without DISCONNECT; monotonic time right after it was closed."""
        child = self._child_of(agent)
        child.command("kill", agent=agent)
        return float(child.read_event("killed")["at"])

    def freeze(self, agent: str) -> tuple[float, float]:
        """Stop `agent` reading and writing: (monotonic time frozen, its last packet sent before)."""
        child = self._child_of(agent)
        child.command("freeze", agent=agent)
        event = child.read_event("frozen")
        return float(event["at"]), float(event["last_sent_at"])

    def stop(self) -> tuple[Ledger, FleetStats]:
        """DISCONNECT every agent; the ledger of what was published and the final counters."""
        for child in self._children:
            child.command("stop")
        dones = [child.read_event("done") for child in self._children]
        for child in self._children:
            child.wait_ok()
        self._children = []
        ledger = Ledger(
            {agent: [(s, int(p), list(u)) for s, p, u in runs] for d in dones for agent, runs in d["ledger"].items()}
        )
        return ledger, FleetStats.sum(dones)

    def close(self) -> None:
        for child in self._children:
            child.kill()
        self._children = []

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def wait_until(condition: Callable[[], bool], timeout_s: float, poll_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
