"""The monitor's HTTP API (SPEC §5) on tornado: agents, outages, read-only SQL, health; JSON in and out."""

from __future__ import annotations

import asyncio
import base64
import hmac
import ipaddress
import json
import logging
import re
import secrets
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import duckdb
import tornado.web
from panel.io.server import get_server
from prometheus_client import CONTENT_TYPE_LATEST
from tornado.ioloop import IOLoop

from broker.netutil import LoopThread, ensure_port_free, free_port
from monitor.alert_policy import parse_duration
from monitor.dashboard import DashboardAccess, dashboard_page
from monitor.fleet import sort_for_people, summary
from monitor.metrics import render_metrics
from monitor.service import Monitor
from monitor.store import QueryTimeout, ReadOnlyViolation
from publisher.protocol import Command, ControlCommand, format_timestamp

__all__ = ["ApiAuth", "ApiServer", "parse_since", "to_json"]

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


@dataclass(frozen=True)
class ApiAuth:
    """`--auth token:SECRET` (Authorization: Bearer SECRET) or `--auth basic:USER:PASSWORD`."""

    token: str | None = None
    user: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, text: str) -> ApiAuth:
        kind, _, rest = text.partition(":")
        if kind == "token" and len(rest) >= 16:
            return cls(token=rest)
        user, _, password = rest.partition(":")
        if kind == "basic" and user and len(password) >= 8:
            return cls(user=user, password=password)
        raise ValueError("--auth takes token:SECRET (16+ characters) or basic:USER:PASSWORD (8+ characters)")

    def panel_basic_auth(self) -> str | dict[str, str]:
        """The same credentials for Panel's login page: user and password, or any user name with the token."""
        if self.token is not None:
            return self.token
        return {self.user or "": self.password or ""}

    def who(self, authorization: str | None) -> str | None:
        """The caller's name if `authorization` (the HTTP header) is right, else None."""
        if not authorization:
            return None
        scheme, _, credentials = authorization.partition(" ")
        if self.token is not None and scheme.lower() == "bearer":
            return "api-token" if hmac.compare_digest(credentials.strip(), self.token) else None
        if self.user is not None and scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(credentials.strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            matches = hmac.compare_digest(user, self.user) & hmac.compare_digest(password, self.password or "")
            return user if matches else None
        return None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class _Handler(tornado.web.RequestHandler):
    monitor: Monitor
    auth: ApiAuth | None
    loopback: bool
    caller: str

    def initialize(self, monitor: Monitor, auth: ApiAuth | None, loopback: bool) -> None:
        self.monitor = monitor
        self.auth = auth
        self.loopback = loopback

    def prepare(self) -> None:
        self.caller = f"api@{self.request.remote_ip}"
        if self.auth is None or self.request.path == "/healthz":  # liveness checks need no secret
            return
        who = self.auth.who(self.request.headers.get("Authorization"))
        if who is None and self.request.method in ("GET", "HEAD"):
            # A browser that logged in on the dashboard's page carries Panel's signed user cookie. Reads
            # only: a cookie rides along with requests other sites make (CSRF), a header does not; the
            # dashboard's own buttons act over its websocket, not this API.
            cookie = self.get_secure_cookie("user")
            who = cookie.decode("utf-8", errors="replace") if cookie else None
        if who is None:
            self.set_header("WWW-Authenticate", 'Basic realm="fleetpulse"' if self.auth.user else "Bearer")
            self.send({"error": "authentication required"}, 401)
            return
        self.caller = f"{who}@{self.request.remote_ip}"

    def send(self, document: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(to_json(document))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.send({"error": self._reason}, status_code)


_CHALLENGE = re.compile(r"[0-9a-f]{32,128}")


class _Health(_Handler):
    def get(self) -> None:
        document: dict[str, Any] = {
            "ok": True,
            "broker_connected": self.monitor.connected,
            "monitor": self.monitor.config.monitor_id,
        }
        challenge = self.get_query_argument("challenge", None)
        if challenge is not None:
            # The CLI's check before it sends a credential (monitor/sidecar.py): asked without one, so it
            # stays outside auth like the rest of /healthz. The answer is useless for any other challenge.
            if not _CHALLENGE.fullmatch(challenge):
                self.send({"error": "challenge: 32 to 128 lower-case hex digits"}, 400)
                return
            document["proof"] = self.monitor.prove(challenge)
        self.send(document)


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
    async def post(self) -> None:
        try:
            body = json.loads(self.request.body or b"{}")
            sql = body["sql"]
            if not isinstance(sql, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            self.send({"error": 'send JSON {"sql": "SELECT ..."}'}, 400)
            return
        try:
            # On a worker thread: a slow query must not stall the event loop (the dashboard shares it).
            loop = asyncio.get_running_loop()
            columns, rows, truncated = await loop.run_in_executor(None, self.monitor.store.read_only_query, sql)
        except ReadOnlyViolation as error:
            self.send({"error": str(error)}, 403)
            return
        except QueryTimeout as error:
            self.send({"error": str(error)}, 408)
            return
        except duckdb.Error as error:
            self.send({"error": str(error).splitlines()[0]}, 400)
            return
        self.send({"columns": columns, "rows": [list(row) for row in rows], "truncated": truncated})


class _Command(_Handler):
    def post(self, agent: str, verb: str) -> None:
        if self.auth is None and not self.loopback:
            self.send({"error": "commands over the network need --auth; this server listens beyond loopback"}, 403)
            return
        try:
            body = json.loads(self.request.body or b"{}")
            reason = body.get("reason", "") if isinstance(body, dict) else ""
            command = ControlCommand(command=Command(verb), id=uuid.uuid4().hex, issued_by=self.caller, reason=reason)
        except ValueError as error:
            self.send({"error": str(error)}, 400)
            return
        topic = self.monitor.send_command(command, agent=agent)
        self.send({"id": command.id, "topic": topic, "command": verb, "issued_by": self.caller}, 202)


class _Alerts(_Handler):
    def get(self) -> None:
        try:
            limit = max(1, min(int(self.get_query_argument("limit", "100")), 10_000))
        except ValueError:
            self.send({"error": "limit must be a number"}, 400)
            return
        columns, rows, _ = self.monitor.store.query(
            'SELECT id, incident_id, agent, "at", severity, event, channel, delivered_at, attempts, error, '
            'next_attempt_at, gave_up FROM alerts ORDER BY "at" DESC, event LIMIT $limit',
            {"limit": limit},
        )
        self.send([dict(zip(columns, row, strict=True)) for row in rows])


class _Incidents(_Handler):
    def get(self) -> None:
        self.send([asdict(incident) for incident in self.monitor.store.open_incidents()])


class _Silences(_Handler):
    def get(self) -> None:
        every = self.get_query_argument("all", "") in ("1", "true", "yes")
        self.send(self.monitor.store.silences(None if every else datetime.now(UTC)))

    def post(self) -> None:
        if self.auth is None and not self.loopback:
            self.send({"error": "silences over the network need --auth; this server listens beyond loopback"}, 403)
            return
        try:
            body = json.loads(self.request.body or b"{}")
            if not isinstance(body, dict):
                raise ValueError("send a JSON object")
            duration_s = parse_duration(body.get("for", ""))
            silence = self.monitor.alerting.add_silence(
                str(body.get("pattern", "")), duration_s, str(body.get("reason", "")), self.caller, datetime.now(UTC)
            )
        except ValueError as error:
            self.send({"error": str(error)}, 400)
            return
        self.send(asdict(silence), 201)


class _Silence(_Handler):
    def delete(self, silence_id: str) -> None:
        if self.auth is None and not self.loopback:
            self.send({"error": "silences over the network need --auth; this server listens beyond loopback"}, 403)
            return
        if self.monitor.alerting.remove_silence(silence_id, datetime.now(UTC)):
            self.send({"removed": silence_id})
        else:
            self.send({"error": f"no silence {silence_id!r} in force"}, 404)


class _Metrics(_Handler):
    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(render_metrics(self.monitor))


class _Stats(_Handler):
    def get(self) -> None:
        self.send(self.monitor.stats())


class ApiServer:
    """Serves the API on its own thread and event loop; `url` says where."""

    def __init__(
        self, monitor: Monitor, host: str = "127.0.0.1", port: int = 8080, auth: ApiAuth | None = None
    ) -> None:
        self._monitor = monitor
        self._auth = auth
        self.host = host
        self.port = port
        self._loop_thread = LoopThread("fleetpulse-http")
        self._server: Any = None  # bokeh's Server, as Panel builds it

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> ApiServer:
        """Check the port now (OSError with a one-line message if taken), then serve in the background."""
        self.port = self.port or free_port(self.host)
        ensure_port_free(
            self.host,
            self.port,
            f"HTTP port {self.port} on {self.host} is already in use: choose another with --dashboard-port N",
        )
        routes: list[Any] = [
            (r"/healthz", _Health),
            (r"/api/agents", _Agents),
            (r"/api/agents/([A-Za-z0-9][A-Za-z0-9_.-]{0,63})", _Agent),
            (r"/api/status", _Status),
            (r"/api/outages", _Outages),
            (r"/api/sql", _Sql),
            (r"/api/stats", _Stats),
            (r"/api/agents/([A-Za-z0-9][A-Za-z0-9_.-]{0,63})/(kill|pause|resume|rebirth)", _Command),
            (r"/api/alerts", _Alerts),
            (r"/api/incidents", _Incidents),
            (r"/api/silences", _Silences),
            (r"/api/silences/([0-9a-f]{1,64})", _Silence),
            (r"/metrics", _Metrics),
        ]
        settings = {"monitor": self._monitor, "auth": self._auth, "loopback": _is_loopback(self.host)}
        patterns = [(pattern, handler, settings) for pattern, handler in routes]
        # The dashboard and the API share Panel's (tornado) server. With --auth, the page asks for the
        # same credentials on Panel's login form (a signed cookie then carries them, to the API too).
        monitor = self._monitor
        loopback = _is_loopback(self.host)
        access = DashboardAccess(
            commands_allowed=self._auth is not None or loopback,
            refusal="Commands are off: this server listens beyond loopback without `--auth`.",
        )

        def page() -> Any:  # a plain function: Panel renders a functools.partial as its repr
            return dashboard_page(monitor, access)

        origins = [f"{host}:{self.port}" for host in {self.host, "127.0.0.1", "localhost"}]
        auth_options: dict[str, Any] = {}
        if self._auth is not None:
            auth_options = {"basic_auth": self._auth.panel_basic_auth(), "cookie_secret": secrets.token_hex(32)}

        def serve(loop: asyncio.AbstractEventLoop) -> Any:
            server = get_server(
                {"/": page},
                port=self.port,
                address=self.host,
                websocket_origin=origins,
                loop=IOLoop.current(),
                start=False,
                show=False,
                extra_patterns=patterns,
                title="fleetpulse",
                # A closed tab's session keeps refreshing until Bokeh drops it (15 s after, checked every
                # 17 s, by default): at 2,000 agents each costs what an open tab does. Drop them sooner.
                unused_session_lifetime_milliseconds=3_000,
                check_unused_sessions_milliseconds=1_000,
                **auth_options,
            )
            server.start()
            return server

        self._server = self._loop_thread.start(serve)
        _log.info("dashboard and HTTP API listening on %s", self.url)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._loop_thread.stop(before=self._server.stop)
