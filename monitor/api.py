"""The monitor's HTTP API (SPEC §5) on tornado: agents, outages, read-only SQL, health; JSON in and out."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import re
import threading
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import duckdb
import tornado.httpserver
import tornado.netutil
import tornado.web

from monitor.fleet import sort_for_people, summary
from monitor.service import Monitor
from monitor.store import ReadOnlyViolation
from publisher.protocol import format_timestamp

__all__ = ["ApiServer", "parse_since", "to_json"]

_log = logging.getLogger("fleetpulse.api")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_since(text: str, now: datetime) -> datetime:
    """`7d`, `12h`, `30m`, `90s`, `2w`, or an RFC 3339 timestamp -> the moment it means."""
    match = _DURATION.match(text.strip().lower())
    if match:
        return now - timedelta(seconds=float(match[1]) * _UNIT_S[match[2]])
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since {text!r}: use a duration like 7d, 12h, 30m or an RFC 3339 timestamp") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_timestamp(value if value.tzinfo else value.replace(tzinfo=UTC))
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def to_json(document: Any) -> str:
    return json.dumps(document, default=_plain)


class _Handler(tornado.web.RequestHandler):
    monitor: Monitor

    def initialize(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def send(self, document: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(to_json(document))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.send({"error": self._reason}, status_code)


class _Health(_Handler):
    def get(self) -> None:
        self.send({"ok": True, "broker_connected": self.monitor.connected, "monitor": self.monitor.config.monitor_id})


class _Agents(_Handler):
    def get(self) -> None:
        self.send(sort_for_people(self.monitor.list_agents()))


class _Agent(_Handler):
    def get(self, agent: str) -> None:
        for record in self.monitor.list_agents():
            if record["agent"] == agent:
                self.send(record)
                return
        self.send({"error": f"no agent {agent!r}"}, 404)


class _Status(_Handler):
    def get(self) -> None:
        agents = sort_for_people(self.monitor.list_agents())
        self.send({"summary": summary(agents), "agents": agents})


class _Outages(_Handler):
    def get(self) -> None:
        since_text = self.get_query_argument("since", None)
        try:
            since = parse_since(since_text, datetime.now(UTC)) if since_text else None
        except ValueError as error:
            self.send({"error": str(error)}, 400)
            return
        self.send(self.monitor.store.outages(agent=self.get_query_argument("agent", None), since=since))


class _Sql(_Handler):
    def post(self) -> None:
        try:
            body = json.loads(self.request.body or b"{}")
            sql = body["sql"]
            if not isinstance(sql, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            self.send({"error": 'send JSON {"sql": "SELECT ..."}'}, 400)
            return
        try:
            columns, rows, truncated = self.monitor.store.read_only_query(sql)
        except ReadOnlyViolation as error:
            self.send({"error": str(error)}, 403)
            return
        except duckdb.Error as error:
            self.send({"error": str(error).splitlines()[0]}, 400)
            return
        self.send({"columns": columns, "rows": [list(row) for row in rows], "truncated": truncated})


class _Stats(_Handler):
    def get(self) -> None:
        self.send(self.monitor.stats())


class ApiServer:
    """Serves the API on its own thread and event loop; `url` says where."""

    def __init__(self, monitor: Monitor, host: str = "127.0.0.1", port: int = 8080) -> None:
        self._monitor = monitor
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: tornado.httpserver.HTTPServer | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> ApiServer:
        """Bind now (OSError with a one-line message if the port is taken), then serve in the background."""
        try:
            sockets = tornado.netutil.bind_sockets(self.port, address=self.host)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise OSError(
                    error.errno,
                    f"HTTP port {self.port} on {self.host} is already in use: choose another with --dashboard-port N",
                ) from None
            raise
        self.port = sockets[0].getsockname()[1]
        routes: list[Any] = [
            (r"/healthz", _Health),
            (r"/api/agents", _Agents),
            (r"/api/agents/([A-Za-z0-9][A-Za-z0-9_.-]{0,63})", _Agent),
            (r"/api/status", _Status),
            (r"/api/outages", _Outages),
            (r"/api/sql", _Sql),
            (r"/api/stats", _Stats),
        ]
        application = tornado.web.Application(
            [(pattern, handler, {"monitor": self._monitor}) for pattern, handler in routes]
        )
        started = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            self._server = tornado.httpserver.HTTPServer(application)
            self._server.add_sockets(sockets)
            started.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=serve, name="fleetpulse-api", daemon=True)
        self._thread.start()
        started.wait()
        _log.info("HTTP API listening on %s", self.url)
        return self

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None or self._thread is None:
            return
        loop.call_soon_threadsafe(server.stop)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=10)
