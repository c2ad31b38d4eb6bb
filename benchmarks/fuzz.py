"""Fuzz the monitor with hostile MQTT input: nothing may crash, everything is counted, nothing stored changes.

Run from the repository root: `python -m benchmarks.fuzz [--seconds 60] [--seed N] [--known-gaps]` (CI runs
an ~8 s version in tests/security/test_fuzz.py). An embedded broker and a monitor on a fresh database run in
this process, with three victim agents (real SDK, born before the fuzzing starts). A plain paho client then
publishes hypothesis-generated hostile messages on `agents/<id>/health`, of these kinds, mixed at random:

* must be rejected (checked against `parse_health` per message, then against the monitor's `rejected` count):
  raw bytes, random JSON, truncated JSON, wrong types, NaN / Infinity / out-of-range numbers, deep nesting in
  typed fields, payloads over 16 KiB, ids with `/ + # $`, spaces, controls or look-alike unicode (in the topic or
  the payload), `agent` different from the topic's id (spoofing a victim, or spoofed by one);
* judged by the parser (counted, either way): huge-but-finite numbers, deep nesting in ignored fields, sent_at
  and last_progress_at far in the past or future;
* replays: a will for a victim from another session (must change nothing: a stale will).

Then: the monitor's counters must add up (every delivered message is rejected or has an outcome, and exactly the
parser's rejections are counted as `rejected`), no handler or store errors, the victims still healthy with the
very rows stored before, and a restarted monitor (which gets the retained hostile messages again as its
snapshot) must serve its agents as plain JSON without errors, hear the victims again when asked (rebirth) and
ingest a new agent. The figures are printed,
and on the last line as one JSON object; the exit status is 1 if anything was found.

KNOWN_GAPS are inputs this fuzzing found that once broke something; all four are fixed (the strict xfail tests
that pinned them in tests/security/test_hostile_input.py now pass as plain tests). They are left out unless
`--known-gaps` is given; with it, a run checks they stay fixed (2026-12-03, 20 s: 6,218 messages, no problem).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from fleetpulse.broker import EmbeddedBroker
from fleetpulse.monitor.api import to_json
from fleetpulse.monitor.service import MAX_CLOCK_SKEW_S, Monitor, MonitorConfig
from fleetpulse.publisher import Agent
from fleetpulse.publisher.protocol import (
    MAX_PAYLOAD_BYTES,
    Command,
    ControlCommand,
    ProtocolError,
    format_timestamp,
    is_valid_id,
    parse_health,
)

VICTIMS = ("victim-1", "victim-2", "victim-3")
# An empty payload is how a retained message is deleted: the monitor counts it as retained_cleared, unparsed.
OUTCOMES = ("applied", "duplicate", "stale_will", "stale_session", "late", "retained_cleared")
SETTLE_S = 30.0

# Characters of hostile ids: some legal, the rest what a topic level must never smuggle in.
_TOPIC_ID_CHARS = [*"aZ09_.-$ ~!@%&*()[]{}<>;:'\"\\,?=", "\t", "\n", "\u200b", "\u202e", "\ufeff", "\u0430", "\uff44"]
_TOPIC_ID_CHARS += ["é", "\u0131", "🙂", "\u0301"]  # (dotless i, combining acute)
_PAYLOAD_ID_CHARS = [*_TOPIC_ID_CHARS, "+", "#", "/", "\x00"]  # a topic with these is not even deliverable

KNOWN_GAPS = {
    "v: true": "accepted as protocol version 1 (publisher/protocol.py)",
    "seq jump": "a seq far ahead of the session's last one makes apply_message shift a bit mask by the gap "
    "(monitor/health.py): 2**63 - 1 is a MemoryError (handler error); a jump of 10**10 allocates 1.25 GB",
    "huge cost": "finite but unbounded cost_usd: two windows of 1e308 sum to inf, and /api/agents emits `Infinity`",
    "extreme time": "sent_at / last_progress_at within a day of year 1 or 9999 are accepted: datetime arithmetic "
    "on them overflows (handler errors), and out of range in UTC they come back from DuckDB as strings",
}

_FAR_TIMES = [
    "1000-01-01T00:00:00+14:00",
    "1677-09-21T00:12:43Z",  # the edges of pandas' nanosecond timestamps
    "1970-01-01T00:00:00Z",
    "2262-04-11T23:47:17Z",
    "9000-12-31T23:59:59-14:00",
]
_EXTREME_TIMES = [
    "0001-01-01T00:00:00+14:00",  # year 0 in UTC: out of Python's range once converted
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59-14:00",  # year 10000 in UTC
    "9999-12-31T23:59:59.999999Z",
]


@dataclass(frozen=True)
class Hostile:
    category: str
    topic: str
    payload: bytes
    must_reject: bool = True  # the boundary must refuse it; False: the parser decides (either is fine)
    retain: bool = False


def _heartbeat(agent: str, **changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "v": 1,
        "agent": agent,
        "name": agent,
        "kind": "heartbeat",
        "status": "healthy",
        "session": "fuzz-session",
        "seq": 1,
        "sent_at": format_timestamp(datetime.now(UTC)),
        "interval_s": 30,
        "host": "fuzz",
        "pid": 1,
        "version": "1",
        "depends_on": [],
        "labels": {},
        "paused": False,
        "metrics": {"ok": 1, "failed": 0, "cost_usd": 0.5, "by_model": {"m": {"cost_usd": 0.5, "tokens_in": 1}}},
    }
    document.update(changes)
    return document


def _encode(document: Any) -> bytes:
    return json.dumps(document, allow_nan=True, ensure_ascii=False).encode("utf-8", errors="surrogatepass")


def _set(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `document` with the dotted `path` set to `value`."""
    copy = json.loads(json.dumps(document))
    *parents, last = path.split(".")
    target = copy
    for name in parents:
        target = target[name]
    target[last] = value
    return copy


_hostile_ids = st.from_regex(r"x-[a-z0-9]{1,12}", fullmatch=True)
_victims = st.sampled_from(VICTIMS)
_retain = st.integers(0, 9).map(lambda n: n == 0)  # one in ten: the restarted monitor's snapshot stays small

# Field -> values of the wrong type or out of range: each makes a heartbeat invalid (SPEC §2 table).
_WRONG: dict[str, list[Any]] = {
    "v": ["1", 2, None, 1.5],  # (and `true`, with --known-gaps)
    "agent": [1, None, ["a"], {"a": 1}],
    "kind": ["beat", 1, None, ""],
    "status": ["ok", 1, None, ""],
    "session": [1, "", "s" * 65, None],
    "seq": ["1", -1, 1.5, True, None, [1]],
    "sent_at": ["yesterday", 1, "2026-01-01T00:00:00", "2026-13-01T00:00:00Z", "", None],
    "interval_s": ["5", 0, -1, True, None, 86_401],
    "pid": [-1, "1", 1.5],
    "name": [1, "n" * 257],
    "reason": [1, "r" * 1025],
    "version": [1, "v" * 129],
    "host": [["h"], "h" * 257],
    "depends_on": ["a", [1], ["a/b"], [""], ["x"] * 257],
    "group": ["a/b", "", 1, "g+"],
    "labels": [[], {"a": 1}, {"k" * 129: "v"}, "a"],
    "paused": ["true", 1, None],
    "metrics": [[], "m", 1],
    "metrics.ok": [-1, "1", 1.5],
    "metrics.failed": [-1, True],
    "metrics.cost_usd": [-0.01, "1"],
    "metrics.last_progress_at": ["now", 5, "2026-01-01T00:00:00"],
    "metrics.by_model": [[], {"m": 1}, {"m" * 129: {}}],
}
# Numeric field -> non-finite or out-of-range values; JSON's own NaN/Infinity tokens included.
_NUMERIC = ["interval_s", "seq", "pid", "metrics.ok", "metrics.cost_usd", "metrics.latency_ms_p50"]
_NUMERIC += ["metrics.tokens_in", "metrics.by_model.m.cost_usd", "metrics.by_model.m.tokens_in"]
_NON_FINITE = [math.nan, math.inf, -math.inf, -1, 10**400, -(10**30)]


@st.composite
def _raw_bytes(draw: st.DrawFn) -> Hostile:
    return Hostile(
        "raw bytes", f"agents/{draw(_hostile_ids)}/health", draw(st.binary(max_size=600)), True, draw(_retain)
    )


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=25,
)


@st.composite
def _random_json(draw: st.DrawFn) -> Hostile:
    return Hostile("random JSON", f"agents/{draw(_hostile_ids)}/health", _encode(draw(_json)), True, draw(_retain))


@st.composite
def _truncated(draw: st.DrawFn) -> Hostile:
    agent = draw(_hostile_ids)
    payload = _encode(_heartbeat(agent))
    cut = draw(st.integers(0, len(payload) - 1))
    return Hostile("truncated JSON", f"agents/{agent}/health", payload[:cut], True, draw(_retain))


@st.composite
def _wrong_type(draw: st.DrawFn, known_gaps: bool) -> Hostile:
    agent = draw(_hostile_ids)
    path = draw(st.sampled_from(sorted(_WRONG)))
    values = [*_WRONG[path], True] if known_gaps and path == "v" else _WRONG[path]
    document = _set(_heartbeat(agent), path, draw(st.sampled_from(values)))
    return Hostile("wrong type", f"agents/{agent}/health", _encode(document), True, draw(_retain))


@st.composite
def _non_finite(draw: st.DrawFn) -> Hostile:
    agent = draw(_hostile_ids)
    document = _set(_heartbeat(agent), draw(st.sampled_from(_NUMERIC)), draw(st.sampled_from(_NON_FINITE)))
    return Hostile("NaN / huge number", f"agents/{agent}/health", _encode(document), True, draw(_retain))


# (field, value): legal, and at the edge of what each field allows.
_HUGE_FINITE = [
    ("interval_s", 86_400), ("seq", 10**6), ("pid", 2**63 - 1), ("metrics.ok", 2**63 - 1),
    ("metrics.tokens_in", 2**63 - 1), ("metrics.by_model.m.tokens_in", 2**63 - 1),
    ("metrics.latency_ms_p50", 1.7976931348623157e308), ("metrics.latency_ms_p50", 2**63),
    ("metrics.cost_usd", 5e-324), ("metrics.cost_usd", 2**40),
]  # fmt: skip
_HUGE_FINITE_GAPS = [
    ("seq", 2**63 - 1), ("metrics.cost_usd", 1e308), ("metrics.cost_usd", 1.7976931348623157e308),
    ("metrics.by_model.m.cost_usd", 1e308),
]  # fmt: skip


@st.composite
def _huge_finite(draw: st.DrawFn, known_gaps: bool) -> Hostile:
    agent = draw(_hostile_ids)
    path, value = draw(st.sampled_from(_HUGE_FINITE + (_HUGE_FINITE_GAPS if known_gaps else [])))
    document = _set(_heartbeat(agent), path, value)
    return Hostile("huge finite number", f"agents/{agent}/health", _encode(document), False, draw(_retain))


@st.composite
def _deep(draw: st.DrawFn) -> Hostile:
    agent = draw(_hostile_ids)
    depth = draw(st.integers(2, 4000))
    opening, closing = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    nested = opening * depth + "1" + closing * depth
    typed = draw(st.booleans())  # where no nesting is valid, or in an unknown field (ignored, forward compatible)
    where = draw(st.sampled_from(["labels", "depends_on", "labels.team"])) if typed else "extra"
    placeholder = "__nested__"
    document = _set(_heartbeat(agent), where, placeholder)
    payload = _encode(document).replace(f'"{placeholder}"'.encode(), nested.encode())
    category = "deep nesting (typed field)" if typed else "deep nesting (ignored field)"
    return Hostile(category, f"agents/{agent}/health", payload, typed, draw(_retain))


@st.composite
def _oversize(draw: st.DrawFn) -> Hostile:
    agent = draw(_hostile_ids)
    size = draw(st.integers(MAX_PAYLOAD_BYTES + 1, 60_000))  # under the broker's 64 KiB cap, so it is delivered
    document = _heartbeat(agent, padding="")
    padding = size - len(_encode(document))
    payload = _encode(_heartbeat(agent, padding="p" * max(0, padding)))
    return Hostile("over 16 KiB", f"agents/{agent}/health", payload, True, draw(_retain))


@st.composite
def _bad_id(draw: st.DrawFn) -> Hostile:
    if draw(st.booleans()):  # in the topic (and the payload)
        agent = draw(st.text(st.sampled_from(_TOPIC_ID_CHARS), max_size=70).filter(lambda s: not is_valid_id(s)))
        topic = f"agents/{agent}/health"
    else:  # in the payload only, under a valid topic
        agent = draw(st.text(st.sampled_from(_PAYLOAD_ID_CHARS), max_size=70).filter(lambda s: not is_valid_id(s)))
        topic = f"agents/{draw(_hostile_ids)}/health"
    field_name = draw(st.sampled_from(["agent", "group", "depends_on"]))
    value: Any = [agent] if field_name == "depends_on" else agent
    document = _heartbeat(topic.split("/")[1])
    document[field_name] = value
    return Hostile("bad id", topic, _encode(document), True, draw(_retain))


@st.composite
def _spoofed(draw: st.DrawFn) -> Hostile:
    victim, other = draw(_victims), draw(_hostile_ids | _victims)
    topic_id, payload_id = (victim, other) if draw(st.booleans()) else (other, victim)
    if topic_id == payload_id:
        payload_id = f"{payload_id}-spoof"
    kind = draw(st.sampled_from(["heartbeat", "stop", "will"]))
    document = _heartbeat(payload_id, kind=kind, reason="spoofed")
    # Never retained on a victim's topic: replacing its retained birth is for the broker's ACL to prevent, and
    # would leave a restarted monitor without a snapshot of the victim (`unknown` until it heartbeats).
    retain = draw(_retain) and topic_id not in VICTIMS
    return Hostile("agent != topic id", f"agents/{topic_id}/health", _encode(document), True, retain)


def _timestamps(draw: st.DrawFn, known_gaps: bool) -> str:
    if draw(st.booleans()):
        return draw(st.sampled_from(_FAR_TIMES + (_EXTREME_TIMES if known_gaps else [])))
    earliest, latest = (
        (datetime(1, 1, 2), datetime(9999, 12, 30)) if known_gaps else (datetime(1000, 1, 1), datetime(9000, 1, 1))
    )
    moment = draw(st.datetimes(min_value=earliest, max_value=latest))
    offset = timezone(timedelta(minutes=draw(st.integers(-23 * 60 - 59, 23 * 60 + 59))))
    return moment.replace(tzinfo=offset).isoformat()


@st.composite
def _far_time(draw: st.DrawFn, known_gaps: bool) -> Hostile:
    agent = draw(_hostile_ids)
    document = _heartbeat(agent)
    if draw(st.booleans()):
        document["sent_at"] = _timestamps(draw, known_gaps)
    else:
        document["metrics"]["last_progress_at"] = _timestamps(draw, known_gaps)
    return Hostile("far past/future time", f"agents/{agent}/health", _encode(document), False, draw(_retain))


@st.composite
def _stale_will(draw: st.DrawFn) -> Hostile:
    victim = draw(_victims)
    session = f"old-{draw(st.from_regex(r'[0-9a-f]{16}', fullmatch=True))}"
    document = _heartbeat(victim, kind="will", session=session, reason="will: connection lost")
    del document["seq"], document["status"]
    return Hostile("will of another session", f"agents/{victim}/health", _encode(document), False, retain=False)


def hostile_messages(known_gaps: bool = False) -> st.SearchStrategy[Hostile]:
    """Every category; `known_gaps` adds the inputs of KNOWN_GAPS."""
    return st.one_of(
        _raw_bytes(),
        _random_json(),
        _truncated(),
        _wrong_type(known_gaps),
        _non_finite(),
        _huge_finite(known_gaps),
        _deep(),
        _oversize(),
        _bad_id(),
        _spoofed(),
        _far_time(known_gaps),
        _stale_will(),
    )


CATEGORY_COUNT = 12


def parser_rejects(message: Hostile) -> bool:
    """Whether the monitor must refuse `message`: its parser does, or its clock rule (a live message whose
    sent_at is more than MAX_CLOCK_SKEW_S from now; every message here arrives live, retained or not)."""
    try:
        parsed = parse_health(message.topic, message.payload)
    except ProtocolError:
        return True
    skew_s = (parsed.sent_at - datetime.now(UTC)).total_seconds()
    return abs(skew_s) > MAX_CLOCK_SKEW_S


class FuzzTarget:
    """An embedded broker, a monitor on a fresh database, the victim agents and a hostile MQTT client."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.sent: Counter[str] = Counter()
        self.parser_rejected = 0
        self.problems: list[str] = []
        self.elapsed_s = 0.0
        self.broker = EmbeddedBroker("127.0.0.1", 0)
        self.victims = [Agent(v, broker=self.broker.url, interval_s=3600, keepalive_s=60) for v in VICTIMS]
        self.monitor: Monitor | None = None
        self.baseline: tuple[list[tuple[Any, ...]], ...] = ()
        self.stats_before: dict[str, int] = {}
        self._retained: set[str] = set(f"agents/{victim}/health" for victim in VICTIMS)
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id="fuzz-hostile")
        self._client.max_queued_messages_set(0)

    @property
    def running(self) -> Monitor:
        assert self.monitor is not None, "not started"
        return self.monitor

    def start(self) -> FuzzTarget:
        self.broker.start()
        self.monitor = self._start_monitor()
        for victim in self.victims:
            if not victim.start():
                raise RuntimeError(f"{victim.agent_id} could not connect")
        _wait(lambda: self._victim_states() == ["healthy"] * len(VICTIMS), "victims healthy")
        _wait(lambda: len(self._victim_rows()[0]) == len(VICTIMS), "victims' births stored")
        self.baseline = self._victim_rows()
        self.stats_before = self.running.stats()
        self._client.connect("127.0.0.1", self.broker.port, keepalive=60)
        self._client.loop_start()
        self.started = time.monotonic()
        return self

    def _start_monitor(self) -> Monitor:
        config = MonitorConfig(
            broker=self.broker.url,
            db_path=self.directory / "fuzz.duckdb",
            tick_interval_s=0.1,
            agent_burst=10**9,  # rate limiting has its own test; here every message must reach the parser
        )
        monitor = Monitor(config).start()
        _wait(lambda: monitor.connected, "monitor connected")
        return monitor

    def send(self, message: Hostile) -> None:
        """Publish one hostile message; record a problem if the parser accepts what it must refuse."""
        rejected = parser_rejects(message)
        if message.must_reject and not rejected:
            self.problems.append(f"parse_health accepted a {message.category} message: {message.payload[:300]!r}")
        self.sent[message.category] += 1
        self.parser_rejected += rejected and bool(message.payload)  # (empty: retained_cleared, never parsed)
        if message.retain:
            self._retained.add(message.topic)
        self._client.publish(message.topic, message.payload, qos=1, retain=message.retain)

    def _victim_states(self) -> list[str | None]:
        states = {record["agent"]: record["health_status"] for record in self.running.list_agents()}
        return [states.get(victim) for victim in VICTIMS]

    def _victim_rows(self) -> tuple[list[tuple[Any, ...]], ...]:
        victims = list(VICTIMS)
        query = self.running.store.query
        return (
            query("SELECT * FROM heartbeats WHERE agent IN (SELECT unnest(?)) ORDER BY ALL", [victims])[1],
            query("SELECT * FROM transitions WHERE agent IN (SELECT unnest(?)) ORDER BY ALL", [victims])[1],
            query(
                "SELECT agent, state, session, last_seq, last_heartbeat_at FROM agents "
                "WHERE agent IN (SELECT unnest(?)) ORDER BY ALL",
                [victims],
            )[1],
        )

    @property
    def retained_topics(self) -> int:
        return len(self._retained)

    def delta(self, name: str) -> int:
        return self.running.stats().get(name, 0) - self.stats_before.get(name, 0)

    def settle(self) -> None:
        """Wait until the monitor has handled every message sent, and stored what it will store."""
        total = sum(self.sent.values())
        deadline = time.monotonic() + SETTLE_S
        while self.delta("received") < total and time.monotonic() < deadline:
            time.sleep(0.05)
        self.elapsed_s = time.monotonic() - self.started
        time.sleep(0.5)  # a flush (0.25 s) and a tick
        if self.delta("received") != total:
            self.problems.append(f"the monitor received {self.delta('received')} of {total} messages sent")

    def check(self) -> None:
        """Counters add up, nothing failed, the victims are as they were; then the same after a restart."""
        for counter in ("handler_errors", "store_errors", "alert_errors"):
            if self.delta(counter):
                self.problems.append(f"{counter}: {self.delta(counter)}")
        if self.delta("rejected") != self.parser_rejected:
            self.problems.append(f"rejected {self.delta('rejected')}, but the parser refused {self.parser_rejected}")
        handled = self.delta("rejected") + sum(self.delta(outcome) for outcome in OUTCOMES)
        if handled != self.delta("received"):
            self.problems.append(f"{self.delta('received')} received but {handled} rejected or with an outcome")
        if self.delta("stale_will") < self.sent["will of another session"]:
            self.problems.append(f"{self.sent['will of another session']} stale wills, {self.delta('stale_will')} seen")
        self._check_victims("after fuzzing")
        self.running.stop()
        self.monitor = self._start_monitor()  # the retained hostile messages come back as its snapshot
        _wait(lambda: self.running.stats().get("received", 0) >= self.retained_topics, "the snapshot", SETTLE_S)
        time.sleep(0.5)
        # A restarted monitor calls an agent it knew `unknown` until it hears from it (its retained birth,
        # already stored, counts as a duplicate): ask the victims for a heartbeat, as an operator could.
        states = self._victim_states()
        if not set(states) <= {"healthy", "unknown"}:
            self.problems.append(f"after a restart: victims are {states}")
        for victim in VICTIMS:
            rebirth = ControlCommand(Command.REBIRTH, id=f"fuzz-{victim}", issued_by="fuzz")
            self.running.send_command(rebirth, agent=victim)
        try:
            _wait(lambda: self._victim_states() == ["healthy"] * len(VICTIMS), "victims heartbeat again", SETTLE_S)
        except TimeoutError as error:
            self.problems.append(f"after a restart: {error}")
        for counter in ("handler_errors", "store_errors"):
            if self.running.stats().get(counter):
                self.problems.append(f"restarted monitor: {counter}: {self.running.stats()[counter]}")
        if Counter(self.baseline[0]) - Counter(self._victim_rows()[0]):  # the rebirths are new rows; the rest stay
            self.problems.append("after a restart: the victims' stored heartbeats changed")
        try:
            json.dumps(json.loads(to_json(self.running.list_agents())), allow_nan=False)
        except (ValueError, TypeError, OverflowError) as error:
            self.problems.append(f"restarted monitor: its agents are not plain JSON: {type(error).__name__}: {error}")
        with Agent("after-fuzz", broker=self.broker.url, interval_s=30):
            try:
                _wait(lambda: "after-fuzz" in {a["agent"] for a in self.running.list_agents()}, "a new agent seen")
            except TimeoutError as error:
                self.problems.append(f"restarted monitor: {error}")

    def _check_victims(self, when: str) -> None:
        states = self._victim_states()
        if states != ["healthy"] * len(VICTIMS):
            self.problems.append(f"{when}: victims are {states}")
        if self._victim_rows() != self.baseline:
            self.problems.append(f"{when}: the victims' stored rows changed")

    def figures(self) -> dict[str, Any]:
        """Call after `settle()` and before `check()` (which restarts the monitor)."""
        sent = sum(self.sent.values())
        return {
            "seconds": round(self.elapsed_s, 1),
            "sent": sent,
            "sent_per_s": round(sent / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            "by_category": dict(sorted(self.sent.items())),
            "rejected": self.delta("rejected"),
            "parser_rejected": self.parser_rejected,
            "stale_will": self.delta("stale_will"),
            "rate_limited": self.delta("rate_limited"),
        }

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        for victim in self.victims:
            victim.stop()
        if self.monitor is not None:
            self.monitor.stop()
        self.broker.stop()


def _wait(check: Any, what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout_s} s: {what}")
        time.sleep(0.05)


def fuzz(
    target: FuzzTarget,
    seconds: float,
    examples_per_round: int = 300,
    run_seed: int | None = None,
    known_gaps: bool = False,
) -> None:
    """Feed `target` hypothesis-generated hostile messages for about `seconds`."""
    deadline = time.monotonic() + seconds
    rounds = [0]

    @settings(
        max_examples=examples_per_round,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(hostile_messages(known_gaps))
    def one_round(message: Hostile) -> None:
        if time.monotonic() < deadline:
            target.send(message)

    while time.monotonic() < deadline:
        seeded = seed(run_seed + rounds[0]) if run_seed is not None else (lambda test: test)
        seeded(one_round)()
        rounds[0] += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to send hostile messages (default 60)")
    parser.add_argument("--seed", type=int, help="make the run repeatable")
    parser.add_argument("--known-gaps", action="store_true", help="also send KNOWN_GAPS' inputs (all fixed now)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="fleetpulse-fuzz-") as directory:
        target = FuzzTarget(Path(directory))
        try:
            target.start()
            fuzz(target, args.seconds, run_seed=args.seed, known_gaps=args.known_gaps)
            target.settle()
            figures = target.figures()
            target.check()
            figures["problems"] = target.problems
            figures["known_gaps"] = "sent" if args.known_gaps else "left out: " + ", ".join(KNOWN_GAPS)
        finally:
            target.close()
    print(f"{'category':32} sent")
    for category, count in figures["by_category"].items():
        print(f"{category:32} {count}")
    print(
        f"{figures['sent']} hostile messages in {figures['seconds']} s ({figures['sent_per_s']}/s); "
        f"rejected {figures['rejected']} (parser: {figures['parser_rejected']}), stale wills {figures['stale_will']}"
    )
    for problem in figures["problems"]:
        print(f"PROBLEM: {problem}")
    print(json.dumps(figures | {"at": datetime.now(UTC).isoformat(timespec="seconds")}))
    return 1 if figures["problems"] else 0


if __name__ == "__main__":
    threading.current_thread().name = "fuzz-main"
    sys.exit(main())
