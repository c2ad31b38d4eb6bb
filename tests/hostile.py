"""Strings an attacker puts into a heartbeat: HTML that runs script if it is ever parsed, Markdown links."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

__all__ = ["heartbeat", "hostile"]


def hostile(tag: str) -> str:
    """HTML, script and a Markdown javascript: link, each setting `window.__pwned`; `tag` says whose it is."""
    return (
        f'<img src=x onerror="window.__pwned=1">{tag}<script>window.__pwned=1</script>'
        f"[{tag}](javascript:window.__pwned=1)**{tag}**"
    )


def heartbeat(agent: str, session: str, seq: int, **fields: Any) -> bytes:
    """A valid protocol-v1 heartbeat whose every free-text field (name, host, version, labels, by_model) is hostile."""
    message = {
        "v": 1, "agent": agent, "name": f"{hostile('N')} {agent}", "kind": "heartbeat", "status": "healthy",
        "session": session, "seq": seq, "sent_at": datetime.now(UTC).isoformat(), "interval_s": 30,
        "host": hostile("H"), "pid": 4242, "version": hostile("V"), "labels": {hostile("LK"): hostile("LV")},
        "metrics": {"ok": 3, "cost_usd": 0.25, "by_model": {hostile("M"): {"cost_usd": 0.25, "tokens_in": 10}}},
    }  # fmt: skip
    message.update(fields)
    return json.dumps(message).encode()
