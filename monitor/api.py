"""The monitor's HTTP API (SPEC §5) on tornado: agents, outages, read-only SQL, health; JSON in and out."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import re
import secrets
import socket
import sys
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import duckdb
import tornado.escape
import tornado.routing
import tornado.web
from panel.auth import BasicAuthProvider, BasicLoginHandler
from panel.io.server import ComponentResourceHandler, get_server
from prometheus_client import CONTENT_TYPE_LATEST
from tornado.ioloop import IOLoop

from fleetpulse.broker.netutil import LoopThread, ensure_port_free, free_port, is_loopback
from fleetpulse.monitor.access import (
    UNSAFE_METHODS,
    ApiAuth,
    Credential,
    FailureBackoff,
    Role,
    cross_site_refusal,
    host_allowed,
)
from fleetpulse.monitor.alert_policy import parse_duration
from fleetpulse.monitor.dashboard import DashboardAccess, dashboard_page
from fleetpulse.monitor.fleet import sort_for_people, summary
from fleetpulse.monitor.metrics import render_metrics
from fleetpulse.monitor.service import Monitor, NothingToForget, check_forget_pattern
from fleetpulse.monitor.store import (
    PEOPLE_QUERIES_RUNNING,
    PEOPLE_QUERIES_WAITING,
    QueryBusy,
    QueryTimeout,
    ReadOnlyViolation,
)
from fleetpulse.publisher.protocol import Command, ControlCommand, format_timestamp

__all__ = ["ApiAuth", "ApiServer", "check_exposure", "parse_since", "to_json"]

_log = logging.getLogger(__name__)
# Threads for people's SQL: one more than the store admits, so the one past the limit hears 429 at once.
_PEOPLE_SQL = ThreadPoolExecutor(PEOPLE_QUERIES_RUNNING + PEOPLE_QUERIES_WAITING + 1, thread_name_prefix="people-sql")
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


def check_exposure(host: str, auth: ApiAuth | None, insecure_no_auth: bool) -> None:
    """ValueError (one line) for a server beyond loopback without auth, unless the operator insisted."""
    if auth is None and not is_loopback(host) and not insecure_no_auth:
        # Issue 14, item 4: the fleet, its history and /api/sql would be open to the network.
        raise ValueError(
            f"--http-host {host} is beyond loopback: protect it with --auth or --auth-file "
            "(or accept an open dashboard and API with --insecure-no-auth)"
        )


class _Handler(tornado.web.RequestHandler):
    monitor: Monitor
    auth: ApiAuth | None
    loopback: bool
    backoff: FailureBackoff
    caller: str
    # Whether this handler's unsafe methods change something (commands, silences, forget): operators only,
    # and refused beyond loopback without auth. /api/sql says False: a read, if a dangerous one.
    changes_state = True

    def initialize(self, monitor: Monitor, auth: ApiAuth | None, loopback: bool, backoff: FailureBackoff) -> None:
        self.monitor = monitor
        self.auth = auth
        self.loopback = loopback
        self.backoff = backoff

    def prepare(self) -> None:
        """Every request passes here (the Host was checked before routing, for every route): who, role, origin."""
        self.caller = f"api@{self.request.remote_ip}"
        if self.request.path == "/healthz":  # liveness checks need no secret
            return
        unsafe = self.request.method in UNSAFE_METHODS
        if self.auth is not None:
            credential = self._authenticate()
            if credential is None:
                return
            if unsafe and self.changes_state and credential.role is not Role.OPERATOR:
                self.send({"error": f"{credential.name!r} is a {credential.role}: this needs an operator"}, 403)
                return
            self.caller = f"{credential.name}@{self.request.remote_ip}"
        if unsafe:
            headers = self.request.headers
            refusal = cross_site_refusal(headers.get("Content-Type"), headers.get("Origin"), self.request.host)
            if refusal is not None:
                self.send({"error": refusal[1]}, refusal[0])
                return
            if self.changes_state and self.auth is None and not self.loopback:
                self.send({"error": "changes over the network need --auth; this server listens beyond loopback"}, 403)

    def _authenticate(self) -> Credential | None:
        """The caller's credential, or None after answering 401 (or 429 while this address must wait)."""
        assert self.auth is not None
        address = self.request.remote_ip or "unknown"
        header = self.request.headers.get("Authorization")
        credential = None
        if header:
            # Only a presented secret is a guess: a logged-in browser's reads are never held back.
            wait_s = self.backoff.retry_after(address, time.monotonic())
            if wait_s > 0:
                self.set_header("Retry-After", str(math.ceil(wait_s)))
                self.send({"error": f"too many wrong credentials from {address}: retry in {math.ceil(wait_s)} s"}, 429)
                return None
            credential = self.auth.identify(header)
            if credential is None:
                self.backoff.failed(address, time.monotonic())
            else:
                self.backoff.succeeded(address)
        elif self.request.method in ("GET", "HEAD"):
            # A browser that logged in on the dashboard's page carries Panel's signed user cookie (naming the
            # credential). Reads only: a cookie rides along with requests other sites make (CSRF), a header
            # does not; the dashboard's own buttons act over its websocket, not this API.
            cookie = self.get_secure_cookie("user")
            name = cookie.decode("utf-8", errors="replace") if cookie else None
            credential = next((c for c in self.auth.credentials if c.name == name), None)
        if credential is None:
            self.set_header("WWW-Authenticate", self.auth.challenge)
            self.send({"error": "authentication required"}, 401)
        return credential

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
    changes_state = False

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
            # On worker threads of their own: a slow query must not stall the event loop (the dashboard shares
            # it) nor take the default executor's threads; the store bounds how many run and wait.
            loop = asyncio.get_running_loop()
            columns, rows, truncated = await loop.run_in_executor(_PEOPLE_SQL, self.monitor.store.read_only_query, sql)
        except ReadOnlyViolation as error:
            self.send({"error": str(error)}, 403)
            return
        except QueryTimeout as error:
            self.send({"error": str(error)}, 408)
            return
        except QueryBusy as error:
            self.set_header("Retry-After", "1")
            self.send({"error": str(error)}, 429)
            return
        except duckdb.Error as error:
            self.send({"error": str(error).splitlines()[0]}, 400)
            return
        self.send({"columns": columns, "rows": [list(row) for row in rows], "truncated": truncated})


class _Command(_Handler):
    def post(self, agent: str, verb: str) -> None:
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
        if self.monitor.alerting.remove_silence(silence_id, datetime.now(UTC)):
            self.send({"removed": silence_id})
        else:
            self.send({"error": f"no silence {silence_id!r} in force"}, 404)


class _Forget(_Handler):
    FORM = 'send JSON {"pattern": "forged-*", "reason": "why", "all": false}'
    LISTED = 100  # agent ids named in the answer; `count` says how many were forgotten

    async def post(self) -> None:  # (operators only, same-origin JSON: _Handler.prepare)
        try:
            body = json.loads(self.request.body or b"{}")
            if not isinstance(body, dict):
                raise ValueError(self.FORM)
            pattern, reason, every = body.get("pattern"), body.get("reason", ""), body.get("all", False)
            if not isinstance(pattern, str) or not isinstance(reason, str) or not isinstance(every, bool):
                raise ValueError(self.FORM)
            check_forget_pattern(pattern, every)
        except ValueError as error:
            self.send({"error": str(error)}, 400)
            return
        forget = functools.partial(self.monitor.forget, pattern, reason, self.caller, every)
        try:
            # The core thread does it (it may be busy for a moment): wait on a worker, not on the event loop.
            result = await asyncio.get_running_loop().run_in_executor(None, forget)
        except NothingToForget as error:
            self.send({"error": str(error)}, 404)
            return
        except (TimeoutError, RuntimeError) as error:
            self.send({"error": f"the monitor could not forget now: {error or 'timed out'}"}, 503)
            return
        self.send(
            {
                "pattern": result.pattern,
                "count": len(result.agents),
                "agents": list(result.agents[: self.LISTED]),
                "incidents_closed": result.incidents_closed,
                "command_id": result.command_id,
                "issued_by": self.caller,
            }
        )


class _Metrics(_Handler):
    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(render_metrics(self.monitor))


class _Stats(_Handler):
    def get(self) -> None:
        self.send(self.monitor.stats())


class _Misdirected(tornado.web.RequestHandler):
    """Any request whose Host names another server (DNS rebinding, a stray proxy): 421, nothing served."""

    def prepare(self) -> None:
        self.set_status(421)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(to_json({"error": f"Host {self.request.host[:100]!r} is not this server (see --allowed-host)"}))


class _ForeignHost(tornado.routing.Matcher):
    """Matches requests whose Host header is not one of ours (`host_allowed`)."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def match(self, request: Any) -> dict[str, Any] | None:
        return None if host_allowed(request.host or "", self.names) else {}


class _Components(ComponentResourceHandler):
    """Panel's /components/<module>/<class>/<attribute>/<path>, closed down (issue 14, item 10).

    Upstream imports the module the URL names, for anyone. Here: only modules this process has
    already imported, and with auth only for a logged-in browser.
    """

    auth: ApiAuth | None = None

    def prepare(self) -> None:
        if self.auth is not None and not self.get_secure_cookie("user"):
            raise tornado.web.HTTPError(403)

    def parse_url_path(self, path: str) -> str:
        if path.split("/", 1)[0] not in sys.modules:
            raise tornado.web.HTTPError(404)
        result: str = super().parse_url_path(path)
        return result


class _Login(BasicLoginHandler):
    """Panel's login form, with our credentials: constant-time comparisons and the per-address backoff."""

    auth: ApiAuth
    backoff: FailureBackoff

    def post(self) -> None:
        address = self.request.remote_ip or "unknown"
        wait_s = self.backoff.retry_after(address, time.monotonic())
        if wait_s > 0:
            self.set_status(429)
            self.set_header("Retry-After", str(math.ceil(wait_s)))
            self.finish(f"Too many failed logins from {address}: try again in {math.ceil(wait_s)} s.")
            return
        credential = self.auth.login(self.get_argument("username", ""), self.get_argument("password", ""))
        if credential is None:
            self.backoff.failed(address, time.monotonic())
            self.redirect(self.request.uri + "?error=" + tornado.escape.url_escape("Invalid username or password!"))
            return
        self.backoff.succeeded(address)
        self.set_current_user(credential.name)  # the cookie names the credential, not what was typed
        next_url = self.get_cookie("next_url") or "/"
        same_site = next_url.startswith("/") and not next_url.startswith("//") and "\\" not in next_url
        self.redirect(next_url if same_site else "/")


class _AuthProvider(BasicAuthProvider):
    """Panel's basic login page and cookie, with `_Login` instead of Panel's `==` comparison."""

    def __init__(self, auth: ApiAuth, backoff: FailureBackoff) -> None:
        # Panel configures its handler classes through class attributes; a subclass per server keeps ours apart.
        self._login = type("_ServerLogin", (_Login,), {"auth": auth, "backoff": backoff})
        super().__init__()  # which already asks for login_handler

    @property
    def login_handler(self) -> Any:
        handler = super().login_handler  # sets Panel's template and endpoint on BasicLoginHandler
        assert issubclass(self._login, handler)
        return self._login


def local_names(allowed_hosts: Iterable[str] = ()) -> frozenset[str]:
    """The names a `Host` header may give for this server: localhost, this machine's names, --allowed-host."""
    names = {"localhost", socket.gethostname(), socket.getfqdn(), *allowed_hosts}
    return frozenset(name.lower().rstrip(".") for name in names if name)


class ApiServer:
    """Serves the API on its own thread and event loop; `url` says where."""

    def __init__(
        self,
        monitor: Monitor,
        host: str = "127.0.0.1",
        port: int = 8080,
        auth: ApiAuth | None = None,
        allowed_hosts: Iterable[str] = (),
        insecure_no_auth: bool = False,
    ) -> None:
        check_exposure(host, auth, insecure_no_auth)
        self._monitor = monitor
        self._auth = auth
        self._names = local_names(allowed_hosts)
        self._backoff = FailureBackoff()
        self.host = host
        self.port = port
        if auth is None and not is_loopback(host):
            _log.warning(
                "INSECURE: --insecure-no-auth on --http-host %s: anyone who can reach port %s reads the fleet, "
                "its history, the audit log and runs /api/sql; only commands and silences stay refused",
                host,
                port,
            )
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
            (r"/api/forget", _Forget),
            (r"/metrics", _Metrics),
        ]
        loopback = is_loopback(self.host)
        settings = {"monitor": self._monitor, "auth": self._auth, "loopback": loopback, "backoff": self._backoff}
        patterns = [(pattern, handler, settings) for pattern, handler in routes]
        # The dashboard and the API share Panel's (tornado) server. With --auth, the page asks for the
        # same credentials on Panel's login form (a signed cookie then carries them, to the API too).
        monitor = self._monitor
        access = DashboardAccess(
            commands_allowed=self._auth is not None or loopback,
            refusal="Commands are off: this server listens beyond loopback without `--auth`.",
            operators=self._auth.operators() if self._auth is not None else None,
        )

        def page() -> Any:  # a plain function: Panel renders a functools.partial as its repr
            return dashboard_page(monitor, access)

        origins = sorted({f"{host}:{self.port}" for host in {self.host, "127.0.0.1", *self._names}} | self._names)
        auth_options: dict[str, Any] = {}
        if self._auth is not None:
            auth_options = {
                "auth_provider": _AuthProvider(self._auth, self._backoff),
                "cookie_secret": secrets.token_hex(32),
            }
        components = type("_ServerComponents", (_Components,), {"auth": self._auth})

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
            # Before any of Panel's and Bokeh's routes: a Host that is not ours gets 421 on every path
            # (page, websocket, static, API); /components/ gets the closed-down handler.
            router = server._tornado.default_router  # bokeh's Server keeps its tornado Application there
            router.rules[:0] = [
                router.process_rule(tornado.routing.Rule(_ForeignHost(self._names), _Misdirected)),
                router.process_rule(tornado.routing.Rule(tornado.routing.PathMatches(r"/components/(.*)"), components)),
            ]
            server.start()
            return server

        self._server = self._loop_thread.start(serve)
        _log.info("dashboard and HTTP API listening on %s", self.url)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._loop_thread.stop(before=self._server.stop)
