"""The fleet for `benchmarks.dashboard`: N agents' births, then a heartbeat each every INTERVAL_S, spread evenly.

Run by `benchmarks.dashboard` as `python -m benchmarks._dashboard_publisher URL AGENTS CONNECTIONS`. It opens
CONNECTIONS paho connections for agents `fleet-00000` .. `fleet-(AGENTS - 1)` (agent i on connection
i % CONNECTIONS), each agent with its own session, and prints a `ready` JSON line. Then it obeys its stdin:

* `go`: publish every agent's birth (seq 0) as fast as the broker acknowledges, print `births`, then keep
  publishing heartbeats (seq 1, 2 …) on a fixed schedule: agent i's next one is due INTERVAL_S x (j + 1) / AGENTS
  after the births, for the j-th heartbeat overall, so the fleet's AGENTS / INTERVAL_S messages per second
  arrive evenly and each agent heartbeats every INTERVAL_S.
* `will I`: agent I stops heartbeating and its will (`kind: "will"`, same session) is published on its
  health topic, as the broker would publish it for a dead connection; prints `will` once acknowledged.
* `stop` (or the end of stdin): stop, disconnect cleanly, print `done`.

Every message is valid protocol v1 (QoS 1, retained, on `agents/<id>/health`), built like `publisher.Agent`
builds it, with a metrics window (ok, failed, latency, cost, tokens, by_model) in every heartbeat.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as paho

from benchmarks._ingest_publisher import INTERVAL_S, heartbeat_template
from fleetpulse.publisher.mqtt import make_client, parse_broker_url
from fleetpulse.publisher.wire import PROTOCOL_VERSION, format_timestamp, health_topic

WINDOW = 500  # QoS 1 publishes in flight over all connections while the births go out
ACK_TIMEOUT_S = 60.0


def agent_id(index: int) -> str:
    return f"fleet-{index:05d}"


class FleetPublisher:
    """The whole fleet over a few connections; heartbeats on a schedule, wills on demand."""

    def __init__(self, broker_url: str, agents: int, connections: int) -> None:
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.agents = [agent_id(n) for n in range(agents)]
        self.topics = [health_topic(agent) for agent in self.agents]
        self.sessions = [secrets.token_hex(8) for _ in self.agents]
        self.templates = [
            heartbeat_template(agent, session, self.host, self.pid)
            for agent, session in zip(self.agents, self.sessions, strict=True)
        ]
        self.published = 0
        self.acked = 0
        self.error: str | None = None
        self._silenced: set[int] = set()  # agents whose will went out: no heartbeat after it
        self._lock = threading.Lock()  # one agent's heartbeat and will never overtake each other
        self._acked_lock = threading.Lock()
        self._window = threading.Semaphore(WINDOW)
        self._stopping = threading.Event()
        self._scheduler: threading.Thread | None = None
        url = parse_broker_url(broker_url)
        self._clients: list[paho.Client] = []
        for number in range(connections):
            connected = threading.Event()
            client = make_client(url, client_id=f"fp-bench-dashboard-{number}-{self.pid}")
            client.max_inflight_messages_set(WINDOW)
            client.on_connect = lambda *args, connected=connected: connected.set()
            client.on_publish = self._on_publish
            client.connect(url.host, url.port, keepalive=60)
            client.loop_start()
            self._clients.append(client)
            if not connected.wait(10):
                raise SystemExit(f"publisher could not connect to {url.display}")

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self._acked_lock:
            self.acked += 1
        self._window.release()

    def _publish(self, index: int, payload: bytes) -> paho.MQTTMessageInfo:
        self._window.acquire()
        info = self._clients[index % len(self._clients)].publish(self.topics[index], payload, qos=1, retain=True)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"publish failed: {paho.error_string(info.rc)}")
        self.published += 1
        return info

    def _heartbeat(self, index: int, seq: int) -> None:
        payload = (self.templates[index] % {"seq": seq, "sent_at": format_timestamp(datetime.now(UTC))}).encode()
        with self._lock:
            if index not in self._silenced:
                self._publish(index, payload)

    def births(self) -> float:
        """Every agent's seq 0, once each acknowledged; the seconds it took."""
        started = time.monotonic()
        for index in range(len(self.agents)):
            self._heartbeat(index, 0)
        deadline = started + ACK_TIMEOUT_S
        while self.acked < self.published and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.acked < self.published:
            raise SystemExit(f"births: {self.published - self.acked} never acknowledged")
        return time.monotonic() - started

    def start_heartbeats(self) -> None:
        self._scheduler = threading.Thread(target=self._run_schedule, name="bench-heartbeats", daemon=True)
        self._scheduler.start()

    def _run_schedule(self) -> None:
        agents = len(self.agents)
        started = time.monotonic()
        count = 0
        try:
            while not self._stopping.is_set():
                due = started + INTERVAL_S * (count + 1) / agents
                if self._stopping.wait(max(0.0, due - time.monotonic())):
                    break
                self._heartbeat(count % agents, count // agents + 1)
                count += 1
        except Exception as error:  # reported in `done`; the benchmark fails on it
            self.error = f"heartbeats stopped: {error}"

    def will(self, index: int) -> float:
        """Silence agent `index` and publish its will; time.monotonic() once the broker acknowledged it."""
        document = {
            "v": PROTOCOL_VERSION,
            "agent": self.agents[index],
            "name": self.agents[index],
            "kind": "will",
            "reason": "will: connection lost",
            "session": self.sessions[index],
            "sent_at": format_timestamp(datetime.now(UTC)),
            "interval_s": INTERVAL_S,
            "host": self.host,
            "pid": self.pid,
            "version": "bench",
            "depends_on": [],
            "labels": {"team": "bench"},
            "paused": False,
        }
        with self._lock:
            self._silenced.add(index)
            info = self._publish(index, json.dumps(document, separators=(",", ":")).encode())
        info.wait_for_publish(ACK_TIMEOUT_S)
        return time.monotonic()

    def stop(self) -> None:
        self._stopping.set()
        if self._scheduler is not None:
            self._scheduler.join(timeout=10)
        for client in self._clients:
            client.disconnect()
            client.loop_stop()


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def main(argv: list[str]) -> None:
    url, agents, connections = argv[0], int(argv[1]), int(argv[2])
    fleet = FleetPublisher(url, agents, connections)
    _emit("ready", agents=fleet.agents[0:1] + fleet.agents[-1:])
    try:
        for line in sys.stdin:
            command = line.split()
            if command == ["go"]:
                births_s = fleet.births()
                fleet.start_heartbeats()
                _emit("births", published=fleet.published, acked=fleet.acked, births_s=births_s)
            elif len(command) == 2 and command[0] == "will":
                index = int(command[1])
                acked_at = fleet.will(index)
                _emit("will", agent=fleet.agents[index], acked_at_monotonic=acked_at)
            elif command == ["stop"]:
                break
    finally:
        fleet.stop()
    _emit("done", published=fleet.published, acked=fleet.acked, error=fleet.error)


if __name__ == "__main__":
    main(sys.argv[1:])
