"""Protocol v1 parsing and validation, without sockets: table-driven rejections plus hypothesis round trips."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetpulse.publisher.protocol import (
    MAX_PAYLOAD_BYTES,
    Command,
    ControlCommand,
    HealthMessage,
    Kind,
    Metrics,
    ProtocolError,
    ReportedStatus,
    agent_id_from_health_topic,
    control_topic,
    health_topic,
    is_valid_id,
    parse_control,
    parse_health,
)

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def heartbeat(**overrides: object) -> dict[str, object]:
    document: dict[str, object] = {
        "v": 1,
        "agent": "order-processor",
        "kind": "heartbeat",
        "status": "healthy",
        "session": "abc123",
        "seq": 0,
        "sent_at": "2026-11-29T12:00:00.000Z",
        "interval_s": 30,
    }
    document.update(overrides)
    return document


def encode(document: object) -> bytes:
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("agent_id", "valid"),
    [
        ("order-processor", True),
        ("a", True),
        ("A1_b.c-d", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("", False),
        ("-leading-dash", False),
        (".hidden", False),
        ("a/b", False),
        ("a+b", False),
        ("a#", False),
        ("$SYS", False),
        ("with space", False),
        ("trailing-newline\n", False),
        ("caf\u00e9", False),
        ("\u0430gent", False),  # Cyrillic a: a look-alike must not pass as "agent"
        (42, False),
        (None, False),
    ],
)
def test_agent_id_rule(agent_id: object, valid: bool) -> None:
    assert is_valid_id(agent_id) is valid


def test_topics() -> None:
    assert health_topic("a-1") == "agents/a-1/health"
    assert control_topic("a-1") == "agents/a-1/control"
    assert agent_id_from_health_topic("agents/a-1/health") == "a-1"
    with pytest.raises(ValueError, match="invalid agent id"):
        health_topic("a/b")


@pytest.mark.parametrize(
    "topic", ["agents/a/b/health", "agents//health", "agents/a/control", "agent/a/health", "agents/+/health"]
)
def test_non_health_topics_are_refused(topic: str) -> None:
    with pytest.raises(ProtocolError):
        agent_id_from_health_topic(topic)


def test_a_valid_birth_parses() -> None:
    message = parse_health("agents/order-processor/health", encode(heartbeat()))
    assert message.is_birth
    assert message.name == "order-processor"  # display name defaults to the id
    assert message.status is ReportedStatus.HEALTHY
    assert message.sent_at == NOW


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "malformed JSON"),
        (b"\xff\xfe", "malformed JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'"heartbeat"', "not a JSON object"),
        (encode(heartbeat(agent="someone-else")), "spoofed agent id"),
        (encode(heartbeat(v=2)), "v:"),
        (encode(heartbeat(kind="explode")), "kind:"),
        (encode(heartbeat(seq=-1)), "seq:"),
        (encode(heartbeat(seq="3")), "seq:"),
        (encode(heartbeat(seq=None)), "needs `seq`"),
        (encode(heartbeat(status=None)), "needs `seq` and `status`"),
        (encode(heartbeat(interval_s=0)), "interval_s:"),
        (encode(heartbeat(interval_s="30")), "interval_s:"),
        (
            b'{"v":1,"agent":"order-processor","kind":"heartbeat","status":"healthy","session":"s","seq":0,'
            b'"sent_at":"2026-11-29T12:00:00Z","interval_s":NaN}',
            "interval_s:",
        ),
        (encode(heartbeat(interval_s=1e400)), "interval_s:"),
        (encode(heartbeat(seq=True)), "seq:"),
        (encode(heartbeat(paused=1)), "paused:"),
        (encode(heartbeat(seq=2**63)), "seq:"),
        (encode(heartbeat(sent_at="2026-11-29T12:00:00")), "sent_at: Input should have timezone info"),
        (encode(heartbeat(sent_at="yesterday")), "sent_at:"),
        (encode(heartbeat(depends_on=["ok", "bad/id"])), "depends_on"),
        (encode(heartbeat(labels={"team": 7})), "labels"),
        (encode(heartbeat(metrics={"ok": -1})), "metrics.ok"),
        (encode(heartbeat(metrics={"cost_usd": "free"})), "metrics.cost_usd"),
        (encode(heartbeat(session="")), "session:"),
        (encode(heartbeat(name="n" * 300)), "name:"),
        (b"{" * 100_00 + b"}" * 100_00, "exceeds"),
        (encode(heartbeat(reason="x" * (MAX_PAYLOAD_BYTES + 1))), "exceeds"),
        (b"[" * 5000 + b"]" * 5000, "recursion limit"),
    ],
)
def test_bad_health_messages_are_rejected_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_health("agents/order-processor/health", payload)
    assert reason in caught.value.reason
    assert len(caught.value.reason) <= 600


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    assert parse_health("agents/order-processor/health", encode(heartbeat(future_field={"x": 1}))).seq == 0


def test_will_and_stop_need_no_seq() -> None:
    will = parse_health("agents/order-processor/health", encode(heartbeat(kind="will", seq=None, status=None)))
    assert will.kind is Kind.WILL and not will.is_birth


def test_control_commands() -> None:
    order = ControlCommand(command=Command.PAUSE, id="c1", issued_by="ops", reason="cost")
    assert parse_control(order.to_payload()) == order
    for bad in (b"{}", b'{"command":"explode","id":"1","issued_by":"x"}', b"kill", b'{"command":"kill"}'):
        with pytest.raises(ProtocolError):
            parse_control(bad)


_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,20}\Z")
_text = st.text(max_size=40)
_money = st.floats(min_value=0, max_value=1e6, allow_nan=False)


@st.composite
def health_messages(draw: st.DrawFn) -> HealthMessage:
    kind = draw(st.sampled_from(list(Kind)))
    heartbeat_kind = kind is Kind.HEARTBEAT
    return HealthMessage(
        agent=draw(_ids),
        name=draw(st.text(min_size=1, max_size=40)),
        kind=kind,
        status=draw(st.sampled_from(list(ReportedStatus))) if heartbeat_kind else None,
        reason=draw(st.none() | _text),
        session=draw(st.text(alphabet="0123456789abcdef", min_size=1, max_size=16)),
        seq=draw(st.integers(0, 2**53)) if heartbeat_kind else None,
        sent_at=draw(
            st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9000, 1, 1), timezones=st.just(UTC))
        ),
        interval_s=draw(st.floats(min_value=0.001, max_value=86_400)),
        host=draw(_text),
        pid=draw(st.none() | st.integers(0, 2**31)),
        depends_on=draw(st.lists(_ids, max_size=5)),
        group=draw(st.none() | _ids),
        labels=draw(st.dictionaries(st.text(min_size=1, max_size=10), _text, max_size=5)),
        paused=draw(st.booleans()),
        metrics=draw(
            st.none()
            | st.builds(
                Metrics,
                ok=st.integers(0, 10**9),
                failed=st.integers(0, 10**9),
                latency_ms_p50=st.none() | _money,
                cost_usd=_money,
            )
        ),
    )


@settings(max_examples=200, deadline=None)
@given(health_messages())
def test_any_valid_message_survives_the_wire(message: HealthMessage) -> None:
    assert parse_health(f"agents/{message.agent}/health", message.to_payload()) == message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_raise_anything_but_protocol_error(payload: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        parse_health("agents/a/health", payload)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "command": st.sampled_from(["kill", "pause", "resume", "rebirth", "KILL", ""]) | _json_values,
            "id": st.text(max_size=70) | _json_values,
            "issued_by": st.text(max_size=10) | _json_values,
            "reason": st.text(max_size=10) | _json_values,
        },
    )
)
def test_control_parsing_accepts_exactly_the_valid_commands(document: dict[str, object]) -> None:
    valid = (
        document.get("command") in ("kill", "pause", "resume", "rebirth")
        and isinstance(document.get("id"), str)
        and 1 <= len(document["id"]) <= 64  # type: ignore[arg-type]
        and isinstance(document.get("issued_by"), str)
        and 1 <= len(document["issued_by"]) <= 128  # type: ignore[arg-type]
        and isinstance(document.get("reason", ""), str)
    )
    try:
        parsed = parse_control(encode(document))
    except ProtocolError:
        assert not valid
    else:
        assert valid and parsed.command == document["command"]


def test_a_progress_time_without_offset_is_rejected_at_the_boundary() -> None:
    with pytest.raises(ProtocolError, match="last_progress_at"):
        parse_health(
            "agents/a/health", encode(heartbeat(agent="a", metrics={"last_progress_at": "2026-11-29T11:00:00"}))
        )
