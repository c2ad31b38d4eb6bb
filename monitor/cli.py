"""The `fleetpulse` command line (SPEC §5): up, monitor, broker, demo, status, outages, sql, kill/pause/resume."""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import gc
import getpass
import hmac
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from fleetpulse.monitor.client import MonitorError
from fleetpulse.monitor.markup import printable
from fleetpulse.publisher.errors import FleetpulseError
from fleetpulse.publisher.mqtt import DEFAULT_BROKER_URL, parse_broker_url
from fleetpulse.publisher.protocol import Command, ControlCommand, validate_id

__all__ = ["main"]

_log = logging.getLogger("fleetpulse.monitor.cli")  # (its module name; under `python -m` __name__ is __main__)
DEFAULT_DB = "fleetpulse.duckdb"
DEFAULT_HTTP_PORT = 8080


class CliError(FleetpulseError):
    """An operator mistake or an unusable environment: printed as one line, exit status 2."""


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not verbose:
        # amqtt and its state-machine library log every connection at INFO.
        for noisy in ("amqtt", "transitions", "asyncio", "tornado.access"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def _stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM, so long-running commands shut down cleanly and exit 0."""
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    return stop


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {port}")
    return port


def _issued_by() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"[:128]


# -- secrets: from the environment or a file, never only from argv ---------------------------------
# Anything in argv shows in every process listing (`ps`, /proc/<pid>/cmdline) and in shell history
# (issue 14 item 8). Each secret has an environment or file form; given on the command line it still
# works, with one warning line that names the other form.


def _warn_secret_in_argv(flag: str, shown: str, instead: str) -> None:
    _log.warning("%s %s: its secret shows in `ps` and shell history; use %s instead", flag, shown, instead)


def _resolve_broker(args: argparse.Namespace) -> None:
    """`--broker` from the command line, else env FLEETPULSE_BROKER, else the default (`up`: its own broker)."""
    if not hasattr(args, "broker"):
        return
    if args.broker is not None:
        with contextlib.suppress(ValueError):  # (a malformed URL is refused, redacted, where it is parsed)
            if urlsplit(args.broker).password:
                shown = parse_broker_url(args.broker).display
                _warn_secret_in_argv("--broker", shown, "env FLEETPULSE_BROKER")
        return
    args.broker = os.environ.get("FLEETPULSE_BROKER") or (None if args.command == "up" else DEFAULT_BROKER_URL)


def _notify_urls(args: argparse.Namespace) -> tuple[str, ...]:
    """Alert channel URLs: `--notify` (repeatable), `--notify-file` (one a line, # comments), env FLEETPULSE_NOTIFY."""
    from fleetpulse.monitor.channels import redact_url

    urls = list(args.notify)
    for url in urls:
        if "***" in redact_url(url):
            _warn_secret_in_argv("--notify", redact_url(url), "env FLEETPULSE_NOTIFY or --notify-file PATH")
    if args.notify_file:
        try:
            text = Path(args.notify_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise CliError(f"--notify-file {args.notify_file}: {getattr(error, 'strerror', None) or error}") from None
        lines = (line.strip() for line in text.splitlines())
        urls += [line for line in lines if line and not line.startswith("#")]
    urls += os.environ.get("FLEETPULSE_NOTIFY", "").split()
    return tuple(dict.fromkeys(urls))


# -- long-running commands ------------------------------------------------------------------------


def _tls_files(args: argparse.Namespace) -> Any:
    """--tls-cert/--tls-key/--tls-ca as broker.TlsFiles, or None without them."""
    from fleetpulse.broker.embedded import TlsFiles

    if not args.tls_cert and not args.tls_key:
        return None
    if not (args.tls_cert and args.tls_key):
        raise CliError("--tls-cert and --tls-key go together")
    for path in (args.tls_cert, args.tls_key, args.tls_ca):
        if path and not Path(path).is_file():
            raise CliError(f"no such file: {path}")
    return TlsFiles(Path(args.tls_cert), Path(args.tls_key), Path(args.tls_ca) if args.tls_ca else None)


def _start_broker(args: argparse.Namespace) -> Any:
    """The embedded broker as --host, --port, --password-file and --tls-* say; says who may connect."""
    from fleetpulse.broker.embedded import EmbeddedBroker, PortInUseError
    from fleetpulse.broker.netutil import is_loopback

    host, port = args.host, args.port
    password_file = Path(args.password_file) if args.password_file else None
    try:
        broker = EmbeddedBroker(host, port, password_file=password_file, tls=_tls_files(args)).start()
    except PortInUseError as error:
        raise CliError(error.strerror) from None
    except OSError as error:
        raise CliError(f"cannot start the embedded broker on {host}:{port}: {error.strerror or error}") from None
    if password_file is None and is_loopback(host):
        _log.info(
            "zero-config: anonymous access, so any local process can publish as any agent or send commands; "
            "--password-file PATH turns on authentication and per-agent ACLs (SECURITY.md)"
        )
    elif password_file is None:
        _log.warning(
            "anonymous access on %s, which is not loopback: anyone who can reach port %d can publish as any agent "
            "and kill any agent; use --password-file PATH (SECURITY.md)",
            host,
            port,
        )
    return broker


def _thresholds(args: argparse.Namespace) -> Any:
    from fleetpulse.monitor.health import ThresholdPolicy, Thresholds

    def build(base: Thresholds, settings: dict[str, float]) -> Thresholds:
        return Thresholds(**{**base.__dict__, **settings})

    default = build(
        Thresholds(),
        {
            name: value
            for name, value in (
                ("degraded_after_s", args.degraded_after),
                ("unreachable_after_s", args.unreachable_after),
                ("stall_after_s", args.stall_after),
            )
            if value is not None
        },
    )
    overrides = []
    for text in args.override or ():
        pattern, _, assignments = text.partition(":")
        settings: dict[str, float] = {}
        for assignment in filter(None, assignments.split(",")):
            name, _, value = assignment.partition("=")
            if name.strip() not in ("degraded_after_s", "unreachable_after_s", "stall_after_s", "failure_ratio"):
                raise CliError(
                    f"--override {text!r}: unknown setting {name!r} "
                    "(degraded_after_s, unreachable_after_s, stall_after_s, failure_ratio)"
                )
            try:
                settings[name.strip()] = float(value)
            except ValueError:
                raise CliError(f"--override {text!r}: {value!r} is not a number") from None
        if not pattern or not settings:
            raise CliError(
                f"--override {text!r}: use GLOB:setting=value[,setting=value], e.g. 'batch-*:degraded_after_s=600'"
            )
        overrides.append((pattern, build(default, settings)))
    return ThresholdPolicy(default=default, overrides=tuple(overrides))


def _api_auth(args: argparse.Namespace) -> Any:
    """`--auth` (one operator credential) and `--auth-file` (named credentials with roles), or None.

    Checked before anything starts, so a refusal (bad file, open server beyond loopback) is the only line.
    """
    from fleetpulse.monitor.api import ApiAuth, check_exposure

    auth = ApiAuth.parse(args.auth) if args.auth else None
    if args.auth_file:
        from_file = ApiAuth.load(Path(args.auth_file))
        auth = auth.merged(from_file) if auth else from_file
    if args.dashboard_port:
        check_exposure(args.http_host, auth, args.insecure_no_auth)
    return auth


def _start_monitor(args: argparse.Namespace, broker_url: str) -> tuple[Any, Any]:
    """Monitor plus its HTTP API; CliError (one line) for a held database or a taken port."""
    from fleetpulse.monitor.alert_policy import AlertSettings, load_settings
    from fleetpulse.monitor.api import ApiServer
    from fleetpulse.monitor.service import Monitor, MonitorConfig
    from fleetpulse.monitor.store import StoreLocked

    alerts = load_settings(Path(args.alerts)) if args.alerts else AlertSettings()
    if args.max_pages_per_minute is not None:  # the command line wins over the rules file
        alerts = dataclasses.replace(alerts, max_pages_per_minute=args.max_pages_per_minute)
    config = MonitorConfig(
        broker=broker_url,
        db_path=Path(args.db),
        monitor_id=args.monitor_id,
        thresholds=_thresholds(args),
        alerts=alerts,
        notify=_notify_urls(args),
        reader_process=args.mqtt_reader == "process",
        **({"max_agents": args.max_agents} if args.max_agents is not None else {}),
    )
    if args.auth and args.auth != os.environ.get("FLEETPULSE_AUTH"):
        _warn_secret_in_argv("--auth", args.auth.partition(":")[0] + ":***", "env FLEETPULSE_AUTH")
    monitor = Monitor(config)
    api = None
    if args.dashboard_port:
        try:
            api = ApiServer(
                monitor,
                args.http_host,
                args.dashboard_port,
                auth=args.api_auth,
                allowed_hosts=args.allowed_host,
                insecure_no_auth=args.insecure_no_auth,
            ).start()
        except OSError as error:
            raise CliError(error.strerror or str(error)) from None
    try:
        monitor.start(api_url=api.url if api else None)
    except StoreLocked as error:
        if api:
            api.stop()
        raise CliError(f"{error}; stop it, or use another --db") from None
    # What exists now (Panel, Bokeh, DuckDB, pandas: hundreds of thousands of objects) lives as long as the
    # process: keep it out of the cyclic collector, whose full passes over it stopped every thread for
    # ~120 ms (measured with the dashboard at 2,000 agents).
    gc.freeze()
    return monitor, api


def _print_transitions(transitions: list[Any]) -> None:
    for transition in transitions:
        when = transition.at.astimezone().strftime("%H:%M:%S")
        snapshot = " (from the retained snapshot)" if transition.snapshot else ""
        change = f"{transition.from_state} -> {transition.to_state}"
        print(f"{when} {transition.agent}: {change}: {transition.reason}{snapshot}", flush=True)


def _private_files() -> None:
    """Whatever this process creates from now on is its user's alone (files 0600, directories 0700).

    The database, its WAL (which DuckDB creates itself, so only the umask reaches it), the sidecar and
    anything else a long-running monitor writes hold the history, the audit log and rejected payloads
    (issue 14 item 7). Children (demo agents, the reader process) inherit it.
    """
    os.umask(0o077)


def _cmd_monitor(args: argparse.Namespace) -> int:
    _private_files()
    parse_broker_url(args.broker)
    args.api_auth = _api_auth(args)
    stop = _stop_on_signals()
    monitor, api = _start_monitor(args, args.broker)
    monitor.add_listener(_print_transitions)
    if api:
        _log.info("HTTP API: %s/api/agents (also /api/outages, POST /api/sql, /healthz)", api.url)
    stop.wait()
    monitor.stop()
    if api:
        api.stop()
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from fleetpulse.monitor.fleet import headline

    args.api_auth = _api_auth(args)
    _private_files()
    stop = _stop_on_signals()
    broker = None
    if args.broker:
        if args.password_file or args.tls_cert:
            raise CliError(
                "--password-file and --tls-* configure the embedded broker; with --broker or FLEETPULSE_BROKER, "
                "put credentials in its URL (mqtts://user:password@host:port)"
            )
        broker_url = args.broker
        _log.info("using the broker at %s (no embedded broker)", parse_broker_url(broker_url).display)
    else:
        broker = _start_broker(args)
        broker_url = broker.url
        if args.password_file:
            from fleetpulse.broker.credentials import Role

            # This process's monitor and demo agents get credentials valid only while this broker runs.
            broker_url = broker.issue_url(f"up-monitor-{uuid.uuid4().hex[:6]}", Role.MONITOR)
    children: list[subprocess.Popen[bytes]] = []
    monitor = api = None
    try:
        monitor, api = _start_monitor(args, broker_url)
        last_headline = [""]

        def on_transitions(transitions: list[Any]) -> None:
            _print_transitions(transitions)
            line = headline(monitor.list_agents())
            if line != last_headline[0]:
                last_headline[0] = line
                print(f"fleet: {line}", flush=True)

        monitor.add_listener(on_transitions)
        for n in range(1, args.demo + 1):
            agent_id = f"demo-{n}"
            demo_url = broker.issue_url(agent_id) if broker is not None and args.password_file else broker_url
            command = [sys.executable, "-m", "fleetpulse.monitor.cli", "demo", "--id", agent_id]
            command += ["--interval-s", str(args.interval_s), "--keepalive-s", str(args.keepalive_s)]
            if n > 1:  # a small dependency graph to look at: every other demo agent needs demo-1
                command += ["--depends-on", "demo-1"]
            # The URL (with issued or given credentials) goes in the child's environment, not its argv (`ps`).
            environment = {**os.environ, "FLEETPULSE_BROKER": demo_url}
            children.append(
                subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
            _log.info("demo agent %s runs as pid %d (try: kill -9 %d)", agent_id, children[-1].pid, children[-1].pid)
        if api:
            _log.info("fleet as JSON: %s/api/status; `fleetpulse status` prints it", api.url)
        if args.demo:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and len(monitor.list_agents()) < args.demo and not stop.is_set():
                time.sleep(0.1)
            print(f"fleet: {headline(monitor.list_agents())}", flush=True)
        stop.wait()
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + 10
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        if monitor is not None:
            time.sleep(0.3)  # let the monitor store the demo agents' stop messages
            monitor.stop()
        if api is not None:
            api.stop()
        if broker is not None:
            broker.stop()
    return 0


def _cmd_broker(args: argparse.Namespace) -> int:
    stop = _stop_on_signals()
    broker = _start_broker(args)
    _log.info("keep-alive enforced at 1.5x; Ctrl-C stops the broker")
    stop.wait()
    broker.stop()
    _log.info("embedded broker stopped")
    return 0


def _cmd_mosquitto_config(args: argparse.Namespace) -> int:
    from fleetpulse.broker.mosquitto import write_mosquitto_config

    if not args.password_file:
        raise CliError("--password-file PATH is required: Mosquitto gets the same users (fleetpulse credentials add)")
    written = write_mosquitto_config(
        Path(args.out), Path(args.password_file), args.host, args.port, tls=_tls_files(args)
    )
    for path in written:
        print(f"wrote {path}")
    print(f"run: mosquitto -c {written[0]}")
    return 0


def _cmd_credentials(args: argparse.Namespace) -> int:
    from fleetpulse.broker.credentials import CredentialsError, PasswordFile, Role, roles_path

    path = Path(args.file)
    try:
        if args.action == "list":
            users = PasswordFile(path).users() if path.exists() else []
            if args.json:
                print(json.dumps([{"name": u.name, "role": u.role.value, "group": u.group} for u in users]))
            for user in users if not args.json else ():
                print(f"{user.name:32} {user.role:8} {user.group or ''}".rstrip())
            return 0
        passwords = PasswordFile(path)
        if args.action == "remove":
            passwords.remove(args.name)
            passwords.save()
            print(f"removed {args.name} from {path}")
            return 0
        password = args.password
        if password is None:
            if sys.stdin.isatty():
                password = getpass.getpass(f"password for {args.name}: ")
                if getpass.getpass("again: ") != password:
                    raise CliError("the passwords differ")
            else:  # e.g. `pass show fleet/demo-1 | fleetpulse credentials add demo-1 --file ...`
                password = sys.stdin.readline().rstrip("\n")
        user = passwords.add(args.name, password, Role(args.role), args.group)
        if args.password is not None:  # (after add(): a refused name is still one line)
            _warn_secret_in_argv("--password", "***", "the prompt, or the first line of stdin")
        passwords.save()
    except CredentialsError as error:
        raise CliError(str(error)) from None
    group = f" in group {user.group}" if user.group else ""
    print(f"{user.name}: {user.role}{group}, in {path} (role in {roles_path(path)})")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from fleetpulse.monitor.demo import DemoAgent, run_demo

    parse_broker_url(args.broker)
    ids = [args.id] if args.id else [f"{args.prefix}-{n}" for n in range(1, args.agents + 1)]
    for agent_id in ids:
        validate_id(agent_id)
    for dependency in args.depends_on:
        validate_id(dependency, "--depends-on")
    agents = [
        DemoAgent(
            agent_id,
            args.broker,
            args.interval_s,
            args.keepalive_s,
            failure_ratio=args.failure_ratio,
            depends_on=args.depends_on,
        )
        for agent_id in ids
    ]
    stop = _stop_on_signals()
    _log.info(
        "demo: %d agent(s) on %s, pid %d: %s",
        len(agents),
        parse_broker_url(args.broker).display,
        os.getpid(),
        ", ".join(ids),
    )
    run_demo(agents, stop)
    return 0


# -- questions about the fleet ---------------------------------------------------------------------


def _api_authorization() -> str | None:
    """The Authorization header for a monitor's API, from FLEETPULSE_AUTH; None without one.

    The one place the CLI reads API credentials: `_running_monitor` sends them only to a proven monitor.
    """
    kind, _, rest = os.environ.get("FLEETPULSE_AUTH", "").partition(":")
    if kind == "token" and rest:
        return f"Bearer {rest}"
    if kind == "basic" and ":" in rest:
        return "Basic " + base64.b64encode(rest.encode()).decode()
    return None


def _unproven(sidecar: dict[str, Any], owner_uid: int, db: Path, client: Any, credentials: bool) -> str | None:
    """Why the API a sidecar names is not shown to be the monitor holding `db`; None once it is (issue 14 item 6).

    Two proofs, both needed: (1) the sidecar's pid is alive, runs as the sidecar file's owner (nobody else
    can write that file) and holds the database; (2) the API answers a fresh random challenge with the HMAC
    under the sidecar's nonce, which only the monitor and its user know (the file is 0600). After a
    `kill -9`, whoever binds the dead monitor's port fails both. Where (1) cannot be checked (no /proc),
    the API is used without credentials only.
    """
    from fleetpulse.monitor.client import MonitorError, MonitorUnavailable
    from fleetpulse.monitor.sidecar import holds_database, process_owner, proof

    pid, nonce = sidecar.get("pid"), sidecar.get("nonce")
    if not isinstance(pid, int) or not isinstance(nonce, str) or not nonce:
        return "it names no pid and nonce (written by an older fleetpulse?)"
    holding = holds_database(pid, db)
    if holding is None and credentials:
        return "this system cannot show which process holds the database; FLEETPULSE_AUTH goes only to a proven monitor"
    if holding is not None:
        process_uid = process_owner(pid)
        if process_uid is None:
            return f"its process {pid} is gone"
        if process_uid != owner_uid:
            return f"process {pid} runs as another user than the one who wrote the file"
        if not holding:
            return f"process {pid} does not hold {db}"
    challenge = secrets.token_hex(32)
    try:
        answer = client.healthz(challenge)
    except (MonitorUnavailable, MonitorError) as error:
        return str(error)
    if not hmac.compare_digest(str(answer.get("proof", "")), proof(nonce, challenge)):
        return f"{client.url} does not prove that it is the monitor which wrote the file"
    return None


def _running_monitor(db: Path) -> Any:
    """A client for the monitor holding `db`, if its sidecar names an API proven to be that monitor; else None."""
    from fleetpulse.monitor.client import MonitorClient
    from fleetpulse.monitor.sidecar import read_sidecar, sidecar_path

    found = read_sidecar(db)
    if found is None:
        return None
    sidecar, status = found
    api = sidecar.get("api")
    if not isinstance(api, str) or not api:
        return None
    try:
        client = MonitorClient(api, timeout_s=5)  # no credentials until it is proven
    except ValueError:
        return None
    authorization = _api_authorization()
    why = _unproven(sidecar, status.st_uid, db, client, credentials=authorization is not None)
    if why is not None:
        _log.warning("not using the API %s names (%s): %s", sidecar_path(db), api, why)
        return None
    return MonitorClient(api, timeout_s=5, authorization=authorization) if authorization else client


def _history(db: Path) -> Any:
    """Where `outages` and `sql` read from: the running monitor's API, else the file itself."""
    from fleetpulse.monitor.sidecar import read_sidecar
    from fleetpulse.monitor.store import Store, StoreLocked

    client = _running_monitor(db)
    if client is not None:
        return client
    if not db.exists():
        raise CliError(f"no history at {db}: start `fleetpulse monitor` or `fleetpulse up` first, or pass --db PATH")
    try:
        return Store(db, read_only=True)
    except StoreLocked as error:
        found = read_sidecar(db)
        if found is not None:
            sidecar = found[0]
            holder = f"monitor {sidecar.get('monitor_id')} (pid {sidecar.get('pid')}, API {sidecar.get('api')})"
        else:
            holder = f"process {error.pid}" if error.pid else "another process"
        raise CliError(
            f"{db} is held by {holder}, and no monitor API answers for it; retry, or stop that process"
        ) from None


def _cmd_status(args: argparse.Namespace) -> int:
    from fleetpulse.monitor.fleet import agent_record, format_status, sort_for_people, summary
    from fleetpulse.monitor.health import ThresholdPolicy
    from fleetpulse.monitor.snapshot import read_retained_health, views_from_snapshot
    from fleetpulse.monitor.store import Store, StoreLocked

    now = datetime.now(UTC)
    db = Path(args.db)
    source: str
    client = _running_monitor(db)
    if client is not None:
        records = client.list_agents()
        source = f"monitor at {client.url}"
    else:
        try:
            messages = read_retained_health(parse_broker_url(args.broker))
            records = [agent_record(v) for v in views_from_snapshot(messages, now, ThresholdPolicy())]
            source = f"the broker's retained snapshot at {parse_broker_url(args.broker).display} (no monitor running)"
        except ConnectionError as broker_error:
            if not db.exists():
                raise CliError(f"{broker_error}; and no history at {db}") from None
            try:
                store = Store(db, read_only=True)
            except StoreLocked as error:
                raise CliError(f"{broker_error}; and {error}") from None
            records = [agent_record(v) for v in store.load_views().values()]
            store.close()
            source = f"{db} as last stored ({broker_error})"
    records = sort_for_people(records)
    if args.json:
        print(json.dumps({"summary": summary(records), "agents": records}))
    else:
        print(format_status(records, now))
        print(f"\n(from {source})", file=sys.stderr)
    return 0


def _cmd_outages(args: argparse.Namespace) -> int:
    from fleetpulse.monitor.api import parse_since, to_json
    from fleetpulse.monitor.client import MonitorClient

    if args.agent:
        validate_id(args.agent)
    since = parse_since(args.since, datetime.now(UTC)) if args.since else None
    history = _history(Path(args.db))
    if isinstance(history, MonitorClient):
        rows = history.outages(agent=args.agent, since=args.since)
    else:
        rows = json.loads(to_json(history.outages(agent=args.agent, since=since)))
        history.close()
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print("no outages" + (f" since {args.since}" if args.since else ""))
        return 0
    print(f"{'AGENT':24} {'STATE':12} {'STARTED':24} {'ENDED':24} DURATION")
    for row in rows:
        ended = row["ended_at"] or "(still open)"
        print(f"{row['agent']:24} {row['state']:12} {row['started_at']:24} {ended:24} {row['duration_s']:.1f} s")
    return 0


def _cmd_sql(args: argparse.Namespace) -> int:
    from fleetpulse.monitor.api import to_json
    from fleetpulse.monitor.client import MonitorClient, MonitorError
    from fleetpulse.monitor.store import QueryBusy, QueryTimeout, ReadOnlyViolation

    history = _history(Path(args.db))
    try:
        if isinstance(history, MonitorClient):
            result = history.sql(args.statement)
        else:
            import duckdb

            try:
                columns, rows, truncated = history.read_only_query(args.statement)
            except duckdb.Error as error:
                raise CliError(str(error).splitlines()[0]) from None
            finally:
                history.close()
            result = json.loads(to_json({"columns": columns, "rows": [list(r) for r in rows], "truncated": truncated}))
    except (ReadOnlyViolation, QueryTimeout, QueryBusy, MonitorError) as error:
        raise CliError(str(error)) from None
    if args.json:
        print(json.dumps(result))
        return 0
    print("\t".join(result["columns"]))
    for row in result["rows"]:
        print("\t".join("NULL" if value is None else str(value) for value in row))
    if result["truncated"]:
        print(f"(first {len(result['rows'])} rows: the answer was cut at its row or byte limit)", file=sys.stderr)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    import duckdb

    from fleetpulse.monitor.api import parse_since
    from fleetpulse.monitor.client import MonitorClient
    from fleetpulse.monitor.report import build_report, format_html, format_text, history_sql

    now = datetime.now(UTC)
    since = parse_since(args.since, now)
    until = parse_since(args.until, now) if args.until else now
    if since >= until:
        raise CliError(f"--since {args.since} is not before --until {args.until or 'now'}")
    if not 0 < args.slo <= 100:
        raise CliError(f"--slo {args.slo:g}: give a percentage, e.g. 99.5")
    if args.top < 1:
        raise CliError(f"--top {args.top}: give at least 1")
    db = Path(args.db)
    history = _history(db)
    source = f"monitor at {history.url}" if isinstance(history, MonitorClient) else str(db)
    try:
        report = build_report(history_sql(history), since, until, slo=args.slo / 100, top=args.top, source=source)
    except duckdb.Error as error:  # e.g. a history written by an older fleetpulse, its views not migrated yet
        raise CliError(f"{db}: {str(error).splitlines()[0]}") from None
    finally:
        if not isinstance(history, MonitorClient):
            history.close()
    print(format_text(report), end="")
    if args.html:
        Path(args.html).write_text(format_html(report), encoding="utf-8")
        print(f"(wrote {args.html})", file=sys.stderr)
    return 0


def _cmd_command(args: argparse.Namespace) -> int:
    from fleetpulse.monitor.control import send_command

    url = parse_broker_url(args.broker)
    target = validate_id(args.target, "group" if args.group else "agent id")
    order = ControlCommand(
        command=Command(args.command), id=uuid.uuid4().hex, issued_by=args.issued_by or _issued_by(), reason=args.reason
    )
    kwargs = {"group": target} if args.group else {"agent": target}
    try:
        answer = send_command(url, order, wait_s=args.wait_s, **kwargs)
    except ConnectionError as error:
        raise CliError(str(error)) from None
    where = f"groups/{target}" if args.group else target
    if args.group:
        print(f"sent {order.command} to every instance of group {target} (command id {order.id})")
        return 0
    if answer is None:
        print(
            f"sent {order.command} to {where} (command id {order.id}), but it did not confirm within {args.wait_s:g} s"
        )
        return 1
    detail = f": {answer.reason}" if answer.reason else ""
    print(f"{where} confirmed {order.command} (command id {order.id}){detail}")
    return 0


def _cmd_silence(args: argparse.Namespace) -> int:
    from fleetpulse.monitor.alert_policy import parse_duration
    from fleetpulse.monitor.alerting import new_silence
    from fleetpulse.monitor.store import Store, StoreLocked

    duration_s = parse_duration(args.duration)
    db = Path(args.db)
    client = _running_monitor(db)
    if client is not None:
        silence = client.silence(args.pattern, args.duration, args.reason)
        where = f"monitor at {client.url}"
    else:
        created_by = f"{os.environ.get('USER', 'cli')}@cli"
        silence_object = new_silence(args.pattern, duration_s, args.reason, created_by, datetime.now(UTC))
        try:
            store = Store(db)
        except StoreLocked as error:
            raise CliError(f"{error}; and no monitor API answers for it") from None
        store.add_silence(silence_object, datetime.now(UTC))
        store.close()
        silence = {"id": silence_object.id, "ends_at": silence_object.ends_at.isoformat()}
        where = f"{db} (no monitor running: it takes effect when one starts)"
    print(f"silence {silence['id']} for {args.pattern!r} until {silence['ends_at']} ({where})")
    return 0


def _cmd_silences(args: argparse.Namespace) -> int:
    from fleetpulse.monitor.api import to_json
    from fleetpulse.monitor.client import MonitorClient

    history = _history(Path(args.db))
    if isinstance(history, MonitorClient):
        rows = history.silences(every=args.all)
    else:
        rows = json.loads(to_json(history.silences(None if args.all else datetime.now(UTC))))
        history.close()
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print("no silences" + ("" if args.all else " in force"))
        return 0
    print(f"{'ID':14} {'PATTERN':24} {'UNTIL':26} {'BY':24} REASON")
    for row in rows:
        until = row["ends_at"] + (" (removed)" if row.get("removed_at") else "")
        print(f"{row['id']:14} {row['pattern']:24} {until:26} {row['created_by']:24} {row['reason']}")
    return 0


def _cmd_unsilence(args: argparse.Namespace) -> int:
    from fleetpulse.monitor.store import Store, StoreLocked

    db = Path(args.db)
    client = _running_monitor(db)
    if client is not None:
        client.unsilence(args.id)
    else:
        try:
            store = Store(db)
        except StoreLocked as error:
            raise CliError(f"{error}; and no monitor API answers for it") from None
        removed = store.remove_silence(args.id, datetime.now(UTC))
        store.close()
        if not removed:
            raise CliError(f"no silence {args.id!r} in force in {db}")
    print(f"silence {args.id} removed")
    return 0


def _cmd_forget(args: argparse.Namespace) -> int:
    db = Path(args.db)
    client = _running_monitor(db)
    if client is None:
        # Only the running monitor can forget: it holds the views, and its broker connection clears the
        # agents' retained messages. Editing the file alone would be undone by the next start's snapshot.
        raise CliError(
            f"no monitor answers for {db}: forget needs the running monitor (it also clears the agents' "
            "retained messages on the broker, or the next start would learn them again); start it, or pass --db"
        )
    answer = client.forget(args.pattern, args.reason, every=args.all)
    listed = ", ".join(answer["agents"]) + (" ..." if answer["count"] > len(answer["agents"]) else "")
    print(
        f"forgot {answer['count']} agent(s) matching {args.pattern!r} ({answer['incidents_closed']} open "
        f"incident(s) closed, audit id {answer['command_id']}): {listed}"
    )
    return 0


# -- the parser ------------------------------------------------------------------------------------


def _add_monitor_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=DEFAULT_DB, help=f"DuckDB history file (default {DEFAULT_DB})")
    parser.add_argument("--monitor-id", default="default", help="names the monitor's MQTT session (default: default)")
    parser.add_argument("--http-host", default="127.0.0.1", help="address the HTTP API listens on (default 127.0.0.1)")
    parser.add_argument(
        "--dashboard-port",
        type=_port,
        default=DEFAULT_HTTP_PORT,
        help=f"HTTP API port (default {DEFAULT_HTTP_PORT}; 0 turns it off)",
    )
    parser.add_argument(
        "--auth",
        default=os.environ.get("FLEETPULSE_AUTH"),
        help="protect the dashboard and HTTP API with one operator credential: token:SECRET or "
        "basic:USER:PASSWORD (or env FLEETPULSE_AUTH)",
    )
    parser.add_argument(
        "--auth-file",
        metavar="PATH",
        default=os.environ.get("FLEETPULSE_AUTH_FILE"),
        help="credentials with roles, one 'NAME viewer|operator SECRET' a line, mode 0600 "
        "(or env FLEETPULSE_AUTH_FILE)",
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name the dashboard is reached by, e.g. behind a reverse proxy (repeatable; IP addresses, "
        "localhost and this machine's names are always accepted)",
    )
    parser.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve a non-loopback --http-host without --auth: anyone who reaches it reads everything",
    )
    parser.add_argument(
        "--alerts", metavar="PATH", help="alert rules, channels and cost policies (TOML; built-in defaults without it)"
    )
    parser.add_argument(
        "--notify",
        action="append",
        default=[],
        metavar="URL",
        help="send alerts here: http(s):// is the JSON webhook, anything else an apprise URL (repeatable; "
        "URLs with tokens belong in env FLEETPULSE_NOTIFY, whitespace-separated, or --notify-file, out of `ps`)",
    )
    parser.add_argument(
        "--notify-file", metavar="PATH", help="more --notify URLs, one a line (lines starting with # are comments)"
    )
    parser.add_argument(
        "--max-agents",
        type=int,
        metavar="N",
        help="known agents at most (default 20000; 0: no cap): messages from new ids beyond it are refused and "
        "counted, with one alert",
    )
    parser.add_argument(
        "--max-pages-per-minute",
        type=int,
        metavar="N",
        help="alerts sent within any minute at most, beyond it one 'alert storm' alert (default 30, or the rules "
        "file's; 0: off)",
    )
    parser.add_argument(
        "--mqtt-reader",
        choices=("process", "thread"),
        default="process",
        help="read MQTT in a child process, on a core of its own (default), or in a thread of the monitor's",
    )
    parser.add_argument(
        "--degraded-after", type=float, help="seconds without a heartbeat before degraded (3 x interval)"
    )
    parser.add_argument("--unreachable-after", type=float, help="seconds without a heartbeat before unreachable (10 x)")
    parser.add_argument("--stall-after", type=float, help="seconds without task progress before degraded (600; 0: off)")
    parser.add_argument(
        "--override",
        action="append",
        metavar="GLOB:SETTING=VALUE,...",
        help="per-agent thresholds, e.g. 'batch-*:degraded_after_s=600,unreachable_after_s=3600' (repeatable)",
    )


def _add_broker_security_options(parser: argparse.ArgumentParser, default: Any = None) -> None:
    parser.add_argument(
        "--password-file",
        metavar="PATH",
        default=default,
        help="only these users may connect, each limited to its role's topics (fleetpulse credentials add); "
        "without it anyone who can reach the port may publish anything",
    )
    parser.add_argument("--tls-cert", metavar="PEM", default=default, help="serve mqtts:// with this certificate chain")
    parser.add_argument("--tls-key", metavar="PEM", default=default, help="the certificate's private key")
    parser.add_argument(
        "--tls-ca", metavar="PEM", default=default, help="the CA clients should trust (default: the certificate)"
    )


_BROKER_HELP = (
    f"broker URL (default: env FLEETPULSE_BROKER, which keeps a password out of `ps`, else {DEFAULT_BROKER_URL})"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetpulse", description="Health monitoring for fleets of AI agents.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="embedded broker + monitor + HTTP API (+ N simulated agents)")
    up.add_argument("--host", default="127.0.0.1", help="address the embedded broker listens on (default 127.0.0.1)")
    up.add_argument("--port", type=_port, default=1883, help="embedded broker port (default 1883)")
    up.add_argument("--broker", help="use this broker instead of starting the embedded one (or env FLEETPULSE_BROKER)")
    up.add_argument("--demo", type=int, default=0, metavar="N", help="start N simulated agent processes")
    up.add_argument("--interval-s", type=float, default=2.0, help="demo heartbeat interval (default 2)")
    up.add_argument("--keepalive-s", type=int, default=2, help="demo MQTT keep-alive (default 2)")
    _add_broker_security_options(up)
    _add_monitor_options(up)
    up.set_defaults(handler=_cmd_up)

    monitor = commands.add_parser("monitor", help="watch the fleet: state machine, DuckDB history, HTTP API")
    monitor.add_argument("--broker", help=_BROKER_HELP)
    _add_monitor_options(monitor)
    monitor.set_defaults(handler=_cmd_monitor)

    broker = commands.add_parser("broker", help="run the embedded MQTT broker (amqtt, keep-alive enforced)")
    broker.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    broker.add_argument("--port", type=_port, default=1883, help="port to listen on (default 1883)")
    _add_broker_security_options(broker)
    broker.set_defaults(handler=_cmd_broker)
    broker_actions = broker.add_subparsers(dest="broker_action", metavar="[mosquitto-config]")
    mosquitto_config = broker_actions.add_parser(
        "mosquitto-config", help="write mosquitto.conf, passwd and acl with the same users and rules, for Mosquitto"
    )
    mosquitto_config.add_argument("--out", required=True, metavar="DIR", help="directory to write the files into")
    # SUPPRESS: `broker --port 8883 mosquitto-config` and `broker mosquitto-config --port 8883` both work.
    mosquitto_config.add_argument("--host", default=argparse.SUPPRESS, help="address Mosquitto listens on")
    mosquitto_config.add_argument("--port", type=_port, default=argparse.SUPPRESS, help="port Mosquitto listens on")
    _add_broker_security_options(mosquitto_config, default=argparse.SUPPRESS)
    mosquitto_config.set_defaults(handler=_cmd_mosquitto_config)

    credentials = commands.add_parser("credentials", help="manage the broker's password file (users and roles)")
    credential_actions = credentials.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = credential_actions.add_parser("add", help="add a user, or change its password, role or group")
    add.add_argument("name", help="the user name; an agent's is its agent id")
    add.add_argument("--password", help="the password (default: prompt, or the first line of stdin)")
    add.add_argument("--role", choices=["agent", "monitor"], default="agent", help="what it may do (default agent)")
    add.add_argument("--group", help="an agent's group: it may also read groups/GROUP/control")
    remove = credential_actions.add_parser("remove", help="remove a user")
    remove.add_argument("name")
    listing = credential_actions.add_parser("list", help="the users, their roles and groups (never passwords)")
    listing.add_argument("--json", action="store_true", help='print [{"name", "role", "group"}]')
    for action in (add, remove, listing):
        action.add_argument("--file", required=True, metavar="PATH", help="the password file (roles in PATH.roles)")
    credentials.set_defaults(handler=_cmd_credentials)

    demo = commands.add_parser("demo", help="run simulated agents against a broker")
    demo.add_argument("--broker", help=_BROKER_HELP)
    demo.add_argument("-n", "--agents", type=int, default=3, help="how many agents (default 3)")
    demo.add_argument("--prefix", default="demo", help="agent ids are PREFIX-1..N (default demo)")
    demo.add_argument("--id", help="run exactly one agent with this id")
    demo.add_argument("--interval-s", type=float, default=2.0, help="heartbeat interval (default 2)")
    demo.add_argument("--keepalive-s", type=int, default=2, help="MQTT keep-alive (default 2)")
    demo.add_argument("--failure-ratio", type=float, default=0.02, help="share of failing tasks (default 0.02)")
    demo.add_argument(
        "--depends-on", action="append", default=[], metavar="ID", help="an agent id these agents need (repeatable)"
    )
    demo.set_defaults(handler=_cmd_demo)

    silence = commands.add_parser("silence", help="no alerts for agents or groups matching a glob, for a while")
    silence.add_argument("pattern", help="glob over agent ids and groups, e.g. 'refund-*'")
    silence.add_argument("--for", dest="duration", required=True, help="how long: 30m, 2h, 1d")
    silence.add_argument("--reason", required=True, help="why (shown to whoever is on call)")
    silence.add_argument("--db", default=DEFAULT_DB, help=f"history file whose monitor to tell (default {DEFAULT_DB})")
    silence.set_defaults(handler=_cmd_silence)
    silences = commands.add_parser("silences", help="list the silences in force")
    silences.add_argument("--all", action="store_true", help="also expired and removed ones")
    silences.add_argument("--json", action="store_true", help="print a JSON list")
    silences.add_argument("--db", default=DEFAULT_DB, help=f"history file (default {DEFAULT_DB})")
    silences.set_defaults(handler=_cmd_silences)
    unsilence = commands.add_parser("unsilence", help="end a silence now")
    unsilence.add_argument("id", help="the silence id (from `fleetpulse silences`)")
    unsilence.add_argument("--db", default=DEFAULT_DB, help=f"history file (default {DEFAULT_DB})")
    unsilence.set_defaults(handler=_cmd_unsilence)

    forget = commands.add_parser(
        "forget", help="drop agents from the running monitor (views, agents rows, retained messages; history stays)"
    )
    forget.add_argument("pattern", help="agent id or glob, e.g. 'forged-*' (quote it from the shell)")
    forget.add_argument("--reason", default="", help="why: recorded in the audit log")
    forget.add_argument("--all", action="store_true", help="confirm the pattern '*', which forgets every agent")
    forget.add_argument("--db", default=DEFAULT_DB, help=f"history file whose monitor to tell (default {DEFAULT_DB})")
    forget.set_defaults(handler=_cmd_forget)

    status = commands.add_parser("status", help="the fleet now: from the running monitor, else the broker")
    status.add_argument("--json", action="store_true", help='print {"summary": ..., "agents": [...]}')
    status.add_argument("--broker", help=_BROKER_HELP)
    status.add_argument("--db", default=DEFAULT_DB, help=f"history file whose monitor to ask (default {DEFAULT_DB})")
    status.set_defaults(handler=_cmd_status)

    outages = commands.add_parser("outages", help="stays in degraded or unreachable, newest first")
    outages.add_argument("--agent", help="one agent's outages")
    outages.add_argument("--since", help="e.g. 7d, 12h, 30m, or an RFC 3339 time")
    outages.add_argument("--json", action="store_true", help="print a JSON list of outages rows")
    outages.add_argument("--db", default=DEFAULT_DB, help=f"history file (default {DEFAULT_DB})")
    outages.set_defaults(handler=_cmd_outages)

    sql = commands.add_parser("sql", help="a read-only SQL query over the history")
    sql.add_argument("statement", help='e.g. "SELECT agent, count(*) FROM heartbeats GROUP BY 1"')
    sql.add_argument("--json", action="store_true", help='print {"columns": [...], "rows": [[...]], "truncated": ...}')
    sql.add_argument("--db", default=DEFAULT_DB, help=f"history file (default {DEFAULT_DB})")
    sql.set_defaults(handler=_cmd_sql)

    report = commands.add_parser("report", help="availability, outages, MTTR/MTBF, incidents and cost over a window")
    report.add_argument("--since", default="7d", help="e.g. 7d, 12h, or an RFC 3339 time (default 7d)")
    report.add_argument("--until", help="end of the window, same forms (default now)")
    report.add_argument("--slo", type=float, default=99.5, metavar="PERCENT", help="availability target (99.5)")
    report.add_argument("--top", type=int, default=10, metavar="N", help="rows per list (default 10)")
    report.add_argument("--html", metavar="PATH", help="also write it as one standalone HTML page, chart included")
    report.add_argument("--db", default=DEFAULT_DB, help=f"history file (default {DEFAULT_DB})")
    report.set_defaults(handler=_cmd_report)

    for name, help_text in (
        ("kill", "stop an agent: its kill callback runs, then it publishes stop"),
        ("pause", "hold an agent's work loop (wait_if_paused)"),
        ("resume", "release a paused agent"),
        ("rebirth", "ask an agent to republish its full heartbeat now"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("target", help="agent id (or group, with --group)")
        command.add_argument("--group", action="store_true", help="send to every instance of this group")
        command.add_argument("--reason", default="", help="why: recorded in the audit log")
        command.add_argument("--issued-by", help="who (default user@host)")
        command.add_argument("--broker", help=_BROKER_HELP)
        command.add_argument("--wait-s", type=float, default=10.0, help="how long to wait for the agent to confirm")
        command.set_defaults(handler=_cmd_command, command=name)
    return parser


class _TerminalText:
    """A text stream that passes everything through `printable`: whatever the CLI prints or logs (an agent's
    name, reason, host, a model name...) is shown, never obeyed, by the terminal."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return int(self._stream.write(printable(text)))

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding, buffer...
        return getattr(self._stream, name)


@contextlib.contextmanager
def _terminal_text() -> Iterator[None]:
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _TerminalText(sys.stdout), _TerminalText(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = streams


def main(argv: Sequence[str] | None = None) -> int:
    with _terminal_text():
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        _resolve_broker(args)
        result: int = args.handler(args)
        return result
    except MonitorError as error:  # the monitor refused (e.g. 401 without FLEETPULSE_AUTH)
        print(f"fleetpulse {args.command}: the monitor said: {error}", file=sys.stderr)
        return 2
    except (FleetpulseError, ValueError, ConnectionError) as error:
        print(f"fleetpulse {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
