"""`MonitorClient`: a running monitor's HTTP API from Python (SPEC §5)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from fleetpulse.publisher.errors import FleetpulseError

__all__ = ["MonitorClient", "MonitorError", "MonitorUnavailable"]


class MonitorError(FleetpulseError, RuntimeError):
    """The monitor answered with an error (bad request, refused statement, unknown agent)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class MonitorUnavailable(FleetpulseError, ConnectionError):
    """Nothing answers at the monitor's URL."""


class MonitorClient:
    """`MonitorClient("http://127.0.0.1:8080").list_agents()`."""

    def __init__(
        self, url: str, timeout_s: float = 10.0, token: str | None = None, *, authorization: str | None = None
    ) -> None:
        """`token` is sent as `Authorization: Bearer TOKEN`; `authorization` is a whole header value (Basic ...)."""
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"monitor URL must look like http://127.0.0.1:8080, got {url!r}")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        header = authorization or (f"Bearer {token}" if token else None)
        self._headers = {"Authorization": header} if header else {}

    def _call(self, path: str, body: dict[str, Any] | None = None, method: str | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {**self._headers, **({"Content-Type": "application/json"} if data is not None else {})}
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            try:
                message = json.loads(error.read()).get("error", error.reason)
            except ValueError:
                message = str(error.reason)
            raise MonitorError(error.code, message) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise MonitorUnavailable(f"no fleetpulse monitor answers at {self.url}: {reason}") from None

    def healthz(self, challenge: str | None = None) -> dict[str, Any]:
        """`{"ok": true, ...}`; with a `challenge` (hex), also the monitor's `proof` of its sidecar's nonce."""
        query = "?" + urllib.parse.urlencode({"challenge": challenge}) if challenge is not None else ""
        result: dict[str, Any] = self._call("/healthz" + query)
        return result

    def list_agents(self) -> list[dict[str, Any]]:
        """Every agent: `agent`, `display_name`, `health_status`, `last_heartbeat_at`, `reason`, `host`, `group`, ..."""
        result: list[dict[str, Any]] = self._call("/api/agents")
        return result

    def agent(self, agent_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call(f"/api/agents/{urllib.parse.quote(agent_id, safe='')}")
        return result

    def status(self) -> dict[str, Any]:
        """`{"summary": {state: count}, "agents": [...]}`, as `fleetpulse status --json` prints it."""
        result: dict[str, Any] = self._call("/api/status")
        return result

    def outages(self, agent: str | None = None, since: str | None = None) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({k: v for k, v in (("agent", agent), ("since", since)) if v is not None})
        result: list[dict[str, Any]] = self._call("/api/outages" + (f"?{query}" if query else ""))
        return result

    def command(self, agent_id: str, command: str, reason: str = "") -> dict[str, Any]:
        """`kill`, `pause`, `resume` or `rebirth` one agent; answers the command id (202)."""
        path = f"/api/agents/{urllib.parse.quote(agent_id, safe='')}/{urllib.parse.quote(command, safe='')}"
        result: dict[str, Any] = self._call(path, {"reason": reason})
        return result

    def alerts(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest alert deliveries (one row per notification and channel), newest first."""
        result: list[dict[str, Any]] = self._call(f"/api/alerts?limit={int(limit)}")
        return result

    def incidents(self) -> list[dict[str, Any]]:
        """Open incidents: the agent, state, severity, rule, when it opened, whether people were told."""
        result: list[dict[str, Any]] = self._call("/api/incidents")
        return result

    def silences(self, every: bool = False) -> list[dict[str, Any]]:
        """Silences in force (or every silence ever, with `every`)."""
        result: list[dict[str, Any]] = self._call("/api/silences" + ("?all=1" if every else ""))
        return result

    def silence(self, pattern: str, duration: str, reason: str) -> dict[str, Any]:
        """Silence agents or groups matching the glob `pattern` for `duration` ("2h", "30m", ...)."""
        result: dict[str, Any] = self._call("/api/silences", {"pattern": pattern, "for": duration, "reason": reason})
        return result

    def unsilence(self, silence_id: str) -> dict[str, Any]:
        path = f"/api/silences/{urllib.parse.quote(silence_id, safe='')}"
        result: dict[str, Any] = self._call(path, {}, method="DELETE")  # a JSON body: the server wants JSON
        return result

    def forget(self, pattern: str, reason: str = "", every: bool = False) -> dict[str, Any]:
        """Forget the agents matching the glob `pattern` (MonitorError 404 if none); `every` confirms "*".

        Answers `pattern`, `count`, `agents` (the first 100), `incidents_closed`, `command_id`.
        """
        result: dict[str, Any] = self._call("/api/forget", {"pattern": pattern, "reason": reason, "all": every})
        return result

    def stats(self) -> dict[str, int]:
        """The monitor's own counters: received, applied, duplicate, rejected, rows_stored, transitions..."""
        result: dict[str, int] = self._call("/api/stats")
        return result

    def metrics(self) -> str:
        """The Prometheus text of `GET /metrics`."""
        request = urllib.request.Request(self.url + "/metrics", headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return str(response.read().decode())
        except (urllib.error.URLError, OSError) as error:
            raise MonitorUnavailable(f"no fleetpulse monitor answers at {self.url}: {error}") from None

    def sql(self, statement: str) -> dict[str, Any]:
        """`{"columns": [...], "rows": [[...]], "truncated": bool}`; MonitorError(403) for anything but SELECT."""
        result: dict[str, Any] = self._call("/api/sql", {"sql": statement})
        return result
