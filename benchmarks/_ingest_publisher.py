"""One load generator for `benchmarks.ingest`: many agents' heartbeats, as fast as the broker acknowledges them.

Run by `benchmarks.ingest` as `python -m benchmarks._ingest_publisher URL FIRST_AGENT AGENTS SECONDS`. It
opens one paho connection for agents `ingest-FIRST_AGENT` .. `ingest-(FIRST_AGENT + AGENTS - 1)`, each with
its own session, and prints a `ready` JSON line. On a line on stdin it publishes valid protocol-v1
heartbeats (built like `publisher.Agent._message`, metrics window included; QoS 1, retained, on
`agents/<id>/health`) round-robin over its agents with seq 0, 1, 2 … per agent, keeping at most `WINDOW`
publishes unacknowledged. After SECONDS it stops publishing, waits for the outstanding acknowledgements and
prints a `done` JSON line: how many it published, which (agent, seq) were never acknowledged, and each
agent's session and number of heartbeats.
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

from fleetpulse.publisher.mqtt import make_client, parse_broker_url
from fleetpulse.publisher.wire import PROTOCOL_VERSION, format_timestamp, health_topic

WINDOW = 1_000  # QoS 1 publishes in flight per connection: enough to keep a local broker busy
ACK_TIMEOUT_S = 60.0
INTERVAL_S = 30.0  # what the heartbeats promise; the monitor's thresholds never fire during a run
_SEQ, _SENT_AT = "@seq@", "@sent_at@"  # placeholders in the per-agent JSON template


def agent_id(index: int) -> str:
    return f"ingest-{index:05d}"


def heartbeat_template(agent: str, session: str, host: str, pid: int) -> str:
    """A heartbeat as `publisher.Agent` sends it (identity, status, a one-model metrics window), as a
    %-template for `seq` and `sent_at`: the JSON is encoded once per agent, not once per message."""
    document = {
        "v": PROTOCOL_VERSION,
        "agent": agent,
        "name": agent,
        "kind": "heartbeat",
        "session": session,
        "sent_at": _SENT_AT,
        "interval_s": INTERVAL_S,
        "host": host,
        "pid": pid,
        "version": "bench",
        "depends_on": [],
        "labels": {"team": "bench"},
        "paused": False,
        "status": "healthy",
        "seq": _SEQ,
        "metrics": {
            "ok": 3,
            "failed": 0,
            "cost_usd": 0.000912,
            "tokens_in": 2400,
            "tokens_out": 600,
            "by_model": {"gpt-4o-mini": {"cost_usd": 0.000912, "tokens_in": 2400, "tokens_out": 600}},
            "latency_ms_p50": 148.2,
            "latency_ms_p95": 310.7,
            "latency_ms_max": 355.0,
            "last_progress_at": _SENT_AT,
        },
    }
    encoded = json.dumps(document, separators=(",", ":"), allow_nan=False).replace("%", "%%")
    return encoded.replace(f'"{_SEQ}"', "%(seq)d").replace(_SENT_AT, "%(sent_at)s")


class Publisher:
    """One connection publishing for a block of agents, with a window of unacknowledged publishes."""

    def __init__(self, broker_url: str, first_agent: int, agents: int) -> None:
        host, pid = socket.gethostname(), os.getpid()
        self.agents = [agent_id(first_agent + n) for n in range(agents)]
        self.topics = [health_topic(agent) for agent in self.agents]
        self.sessions = [secrets.token_hex(8) for _ in self.agents]
        self.templates = [
            heartbeat_template(agent, session, host, pid)
            for agent, session in zip(self.agents, self.sessions, strict=True)
        ]
        self.published = [0] * agents  # heartbeats published per agent: seqs 0 .. n-1
        self._window = threading.Semaphore(WINDOW)
        self._lock = threading.Lock()
        self._in_flight: dict[int, tuple[int, int]] = {}  # mid -> (agent index, seq)
        self._acked_early: set[int] = set()  # PUBACKs handled before publish() returned the mid
        self.acked = 0
        self._connected = threading.Event()
        url = parse_broker_url(broker_url)
        self._client = make_client(url, client_id=f"fp-bench-ingest-{first_agent}-{pid}")
        self._client.max_inflight_messages_set(WINDOW)
        self._client.on_connect = lambda *args: self._connected.set()
        self._client.on_publish = self._on_publish
        self._client.connect(url.host, url.port, keepalive=60)
        self._client.loop_start()
        if not self._connected.wait(10):
            raise SystemExit(f"publisher could not connect to {url.display}")

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self._lock:
            if self._in_flight.pop(mid, None) is None:
                self._acked_early.add(mid)
            self.acked += 1
        self._window.release()

    def run(self, seconds: float) -> float:
        """Publish round-robin until `seconds` have passed; the time spent publishing."""
        client, templates, topics, published = self._client, self.templates, self.topics, self.published
        started = time.monotonic()
        deadline = started + seconds
        while time.monotonic() < deadline:
            for index in range(len(templates)):
                seq = published[index]
                payload = (templates[index] % {"seq": seq, "sent_at": format_timestamp(datetime.now(UTC))}).encode()
                self._window.acquire()
                info = client.publish(topics[index], payload, qos=1, retain=True)
                if info.rc != paho.MQTT_ERR_SUCCESS:
                    raise SystemExit(f"publish failed: {paho.error_string(info.rc)}")
                published[index] = seq + 1
                with self._lock:
                    if info.mid in self._acked_early:
                        self._acked_early.discard(info.mid)
                    else:
                        self._in_flight[info.mid] = (index, seq)
                if index % 64 == 0 and time.monotonic() >= deadline:
                    break
        return time.monotonic() - started

    def wait_acknowledged(self) -> list[tuple[str, int]]:
        """Wait for the outstanding PUBACKs; the (agent, seq) still unacknowledged after the timeout."""
        deadline = time.monotonic() + ACK_TIMEOUT_S
        while time.monotonic() < deadline:
            with self._lock:
                if not self._in_flight:
                    break
            time.sleep(0.01)
        with self._lock:
            return [(self.agents[index], seq) for index, seq in self._in_flight.values()]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def main(argv: list[str]) -> None:
    url, first_agent, agents, seconds = argv[0], int(argv[1]), int(argv[2]), float(argv[3])
    publisher = Publisher(url, first_agent, agents)
    _emit("ready")
    sys.stdin.readline()
    cpu_started = time.process_time()
    publish_s = publisher.run(seconds)
    unacked = publisher.wait_acknowledged()
    publisher.close()
    _emit(
        "done",
        published=sum(publisher.published),
        acked=publisher.acked,
        unacked=unacked,
        publish_s=publish_s,
        cpu_s=time.process_time() - cpu_started,
        agents={
            agent: [session, count]
            for agent, session, count in zip(publisher.agents, publisher.sessions, publisher.published, strict=True)
        },
    )


if __name__ == "__main__":
    main(sys.argv[1:])
