"""People's SQL can neither write nor reach outside the database: hostile statements through the API and the CLI
(a monitor running, and the file opened directly) are each refused in one line, and nothing changes."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from fleetpulse.broker import EmbeddedBroker
from fleetpulse.broker.netutil import free_port
from fleetpulse.monitor import cli
from fleetpulse.monitor.alert_policy import Silence
from fleetpulse.monitor.api import ApiServer
from fleetpulse.monitor.service import Monitor, MonitorConfig
from fleetpulse.monitor.sql_sandbox import ReadOnlyViolation, check_read_only
from fleetpulse.monitor.store import Store, WriteBatch
from fleetpulse.publisher import Agent
from tests.conftest import CLI, ROOT
from tests.e2e.test_monitor import eventually, state_of

SECRET = "fleetpulse-canary-7f3a9c"  # the content of a file no statement may read

# {secret}: a readable file holding SECRET; {dir}: its folder; {out}: a path no statement may create;
# {url}: an http:// URL on a listening socket that no statement may connect to.
HOSTILE = [
    # data-modifying CTEs (DuckDB's extract_statements() calls every one of them a SELECT)
    "WITH x AS (COPY (SELECT 'pwned') TO '{out}') SELECT 1",
    "WITH d AS (DELETE FROM heartbeats RETURNING 1) SELECT count(*) FROM d",
    "WITH u AS (UPDATE agents SET state = 'healthy' RETURNING 1) SELECT * FROM u",
    "WITH i AS (INSERT INTO silences (id, pattern, starts_at, ends_at, reason, created_by, created_at) "
    "VALUES ('evil', '*', now(), now() + INTERVAL 3650 DAY, '', 'x', now()) RETURNING 1) SELECT * FROM i",
    "WITH d AS (DELETE FROM commands RETURNING *), k AS (SELECT 1) SELECT * FROM d, k",
    "WITH a AS (SELECT 1), b AS (UPDATE transitions SET reason = 'x' RETURNING 1) "
    "SELECT * FROM a UNION SELECT * FROM b",
    # plain writes and DDL
    "COPY (SELECT 1) TO '{out}'",
    "COPY agents TO '{out}' (FORMAT csv)",
    "COPY commands FROM '{secret}'",
    "DELETE FROM commands",
    "UPDATE transitions SET reason = 'x'",
    "INSERT INTO commands SELECT * FROM commands",
    "INSERT OR REPLACE INTO agents SELECT * FROM agents",
    "TRUNCATE heartbeats",
    "DROP TABLE heartbeats",
    "DROP VIEW outages",
    "CREATE TABLE evil AS SELECT 1",
    "CREATE OR REPLACE VIEW outages AS SELECT 1 AS agent",
    "CREATE MACRO evil() AS 1",
    "ALTER TABLE agents ADD COLUMN evil INT",
    "EXPORT DATABASE '{dir}/export'",
    "IMPORT DATABASE '{dir}'",
    # reading files and URLs, directly and tucked away in subqueries, CTEs and DESCRIBE
    "SELECT * FROM read_text('{secret}')",
    "FROM read_text('{secret}')",
    "SELECT * FROM read_text(['{secret}'])",
    "SELECT * FROM read_blob('{secret}')",
    "SELECT * FROM read_csv('{secret}')",
    "SELECT * FROM read_csv_auto('{secret}', header = false)",
    "SELECT * FROM read_json_auto('{secret}')",
    "SELECT * FROM read_json('{secret}')",
    "SELECT * FROM read_ndjson_objects('{secret}')",
    "SELECT * FROM read_parquet('{secret}')",
    "SELECT * FROM parquet_metadata('{secret}')",
    "SELECT * FROM sniff_csv('{secret}')",
    "SELECT * FROM glob('{dir}/*')",
    "SELECT (SELECT count(*) FROM glob('{dir}/*'))",
    "SELECT * FROM agents WHERE agent IN (SELECT content FROM read_text('{secret}'))",
    "WITH RECURSIVE w(n) AS (SELECT 1) SELECT * FROM w, read_text('{secret}')",
    "SELECT * FROM agents UNION ALL SELECT * FROM read_csv('{secret}')",
    "DESCRIBE SELECT * FROM read_text('{secret}')",
    "SUMMARIZE SELECT * FROM read_text('{secret}')",
    "SELECT * FROM '{secret}'",
    'SELECT * FROM "{secret}"',
    "SELECT * FROM read_csv('{url}/x.csv')",
    "SELECT * FROM '{url}/x.parquet'",
    "SELECT * FROM read_json('{url}/x.json')",
    # dynamic SQL, side effects, the environment, configuration and extensions
    "SELECT * FROM query('DELETE FROM commands')",
    "SELECT * FROM query_table('commands')",
    "SELECT nextval('evil')",
    "SELECT setseed(0.5)",
    "SELECT getenv('HOME')",
    "SELECT * FROM duckdb_settings()",
    "SELECT * FROM duckdb_secrets()",
    "SELECT * FROM duckdb_databases()",
    "SELECT * FROM pragma_database_list()",
    "SELECT * FROM checkpoint()",
    "ATTACH '{out}' AS evil",
    "ATTACH ':memory:' AS evil",
    "INSTALL httpfs",
    "LOAD httpfs",
    "CREATE SECRET evil (TYPE s3, KEY_ID 'x', SECRET 'y')",
    "SET enable_external_access = true",
    "SET lock_configuration = false",
    "RESET enable_external_access",
    "SET VARIABLE evil = 1",
    "PRAGMA database_list",
    "PRAGMA enable_profiling",
    "CHECKPOINT",
    "VACUUM",
    "BEGIN TRANSACTION",
    "CALL pragma_version()",
    "EXPLAIN ANALYZE SELECT * FROM read_text('{secret}')",
    "PIVOT agents ON state",
    # several statements in one string
    "SELECT 1; DELETE FROM heartbeats",
    "SELECT 1; SELECT 2",
    "SELECT 1; COPY (SELECT 1) TO '{out}'",
    # not SQL at all
    "",
    "   ;  ",
    "SELEC * FROM agents",
]


def readme_examples() -> list[str]:
    """The `fleetpulse sql "..."` lines of the README, verbatim."""
    examples = []
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("fleetpulse sql "):
            quoted = line.removeprefix("fleetpulse sql ")
            examples.append(quoted[1:-1])
    assert len(examples) >= 5
    return examples


# The README's examples and other reads keep working.
READS = [
    *readme_examples(),
    "WITH s AS (SELECT agent, max(seq) AS top FROM heartbeats GROUP BY ALL) SELECT count(*) FROM s",
    "SELECT table_name FROM information_schema.tables ORDER BY 1",
    "SELECT * FROM range(3) r, unnest([1, 2])",
    "DESCRIBE heartbeats",
    "SELECT * FROM mttr(now() - INTERVAL 1 DAY, now())",
]

FINGERPRINTED = ("heartbeats", "transitions", "agents", "commands", "silences", "alerts")


@dataclass
class Surroundings:
    """What a hostile statement aims at: a secret file, a path to write, a URL that counts connections."""

    folder: Path
    secret: Path
    out: Path
    url: str
    connections: list[str]

    def fill(self, statement: str) -> str:
        return statement.format(secret=self.secret, dir=self.folder, out=self.out, url=self.url)

    def untouched(self) -> None:
        assert not self.out.exists(), f"{self.out} was written"
        assert not (self.folder / "export").exists(), "a database export was written"
        assert self.connections == [], f"the database reached out to {self.connections}"


@pytest.fixture(scope="module")
def surroundings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Surroundings]:
    folder = tmp_path_factory.mktemp("target")
    secret = folder / "secret.csv"
    secret.write_text(f"{SECRET}\n{SECRET}\n")
    listener = socket.create_server(("127.0.0.1", 0))
    connections: list[str] = []

    def accept() -> None:
        while True:
            try:
                peer, address = listener.accept()
            except OSError:
                return
            connections.append(f"{address[0]}:{address[1]}")
            peer.close()

    threading.Thread(target=accept, daemon=True).start()
    yield Surroundings(
        folder, secret, folder / "written.txt", f"http://127.0.0.1:{listener.getsockname()[1]}", connections
    )
    listener.close()


def fingerprint(run: Callable[[str], list[tuple[Any, ...]]]) -> dict[str, tuple[Any, ...]]:
    """Row count and an order-free hash of every row of the tables people's SQL must not change."""
    return {table: run(f"SELECT count(*), sum(hash(t))::VARCHAR FROM {table} AS t")[0] for table in FINGERPRINTED}


@dataclass
class Live:
    monitor: Monitor
    url: str
    db: Path


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A monitor with its API on a real broker, with a little history: an agent that came and stopped, a
    command, a silence. Nothing runs afterwards, so its tables change only if a statement changes them."""
    folder = tmp_path_factory.mktemp("live")
    broker = EmbeddedBroker("127.0.0.1", free_port()).start()
    monitor = Monitor(MonitorConfig(broker=broker.url, db_path=folder / "fleet.duckdb", tick_interval_s=0.1))
    api = ApiServer(monitor, "127.0.0.1", 0).start()
    monitor.start(api_url=api.url)
    try:
        eventually(lambda: monitor.connected)
        with Agent("sandboxed", broker=broker.url, interval_s=30) as agent:
            eventually(lambda: state_of(monitor, "sandboxed") == "healthy")
            agent.report_metric(success=True, latency_ms=12, cost_usd=0.01)
        eventually(lambda: state_of(monitor, "sandboxed") == "killed")
        call(api.url, "POST", "/api/agents/sandboxed/rebirth", {"reason": "history for the test"})
        call(api.url, "POST", "/api/silences", {"pattern": "sandboxed", "for": "1h", "reason": "test"})
        eventually(lambda: monitor.store.query("SELECT count(*) FROM commands")[1][0][0] == 1)
        eventually(lambda: monitor.store.query("SELECT count(*) FROM heartbeats")[1][0][0] >= 2)
        yield Live(monitor, api.url, monitor.config.db_path)
    finally:
        monitor.stop()
        api.stop()
        broker.stop()


@pytest.fixture(scope="module")
def at_rest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A history file that no monitor holds: the CLI opens it itself."""
    path = tmp_path_factory.mktemp("rest") / "fleet.duckdb"
    now = datetime.now(UTC)
    with closing(Store(path)) as store:
        store.write(
            WriteBatch(
                commands=[("c1", now, "agents/a1/control", "pause", "ops@host", "test")],
                events=[(now, "default", "alive", None)],
            )
        )
        store.add_silence(Silence("s1", "a1", now, now + timedelta(hours=1), "test", "ops"), now)
    return path


def call(url: str, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = cli.main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("statement", HOSTILE)
def test_the_parser_check_refuses(statement: str, surroundings: Surroundings) -> None:
    with pytest.raises(ReadOnlyViolation) as refused:
        check_read_only(surroundings.fill(statement))
    assert str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("statement", HOSTILE)
def test_the_api_refuses(statement: str, live: Live, surroundings: Surroundings) -> None:
    def run(sql: str) -> list[tuple[Any, ...]]:
        return live.monitor.store.query(sql)[1]

    before = fingerprint(run)
    status, answer = call(live.url, "POST", "/api/sql", {"sql": surroundings.fill(statement)})
    assert status in (400, 403), answer
    assert answer["error"] and "\n" not in answer["error"]
    assert SECRET not in json.dumps(answer)
    assert fingerprint(run) == before
    surroundings.untouched()


@pytest.mark.parametrize("statement", HOSTILE)
def test_the_cli_refuses_through_a_running_monitor(
    statement: str, live: Live, surroundings: Surroundings, capsys: pytest.CaptureFixture[str]
) -> None:
    before = fingerprint(lambda sql: live.monitor.store.query(sql)[1])
    status, out, err = run_cli(capsys, "sql", "--db", str(live.db), surroundings.fill(statement))
    assert status == 2 and out == ""
    assert err.startswith("fleetpulse sql: ") and err.count("\n") == 1, err
    assert SECRET not in err
    assert fingerprint(lambda sql: live.monitor.store.query(sql)[1]) == before
    surroundings.untouched()


@pytest.mark.parametrize("statement", HOSTILE)
def test_the_cli_refuses_on_the_file_itself(
    statement: str, at_rest: Path, surroundings: Surroundings, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(sql: str) -> list[tuple[Any, ...]]:
        with closing(Store(at_rest, read_only=True)) as store:
            return store.query(sql)[1]

    before = fingerprint(run)
    status, out, err = run_cli(capsys, "sql", "--db", str(at_rest), surroundings.fill(statement))
    assert status == 2 and out == ""
    assert err.startswith("fleetpulse sql: ") and err.count("\n") == 1, err
    assert SECRET not in err
    assert fingerprint(run) == before
    surroundings.untouched()


def test_the_database_itself_is_closed_to_the_outside_even_past_the_parser(
    live: Live, at_rest: Path, surroundings: Surroundings
) -> None:
    """Defence in depth: were the parser check ever fooled, the store's own connection still cannot read a file,
    write one, reach a URL or change its configuration, on the monitor's database and on one opened read-only."""
    with closing(Store(at_rest, read_only=True)) as resting:
        for store in (live.monitor.store, resting):
            for statement in (
                "SELECT * FROM read_text('{secret}')",
                "COPY (SELECT 1) TO '{out}'",
                "SELECT * FROM read_csv('{url}/x.csv')",
                "ATTACH '{out}' AS evil",
                "INSTALL httpfs",
                "SET enable_external_access = true",
                "SET lock_configuration = false",
            ):
                with pytest.raises(duckdb.Error, match=r"disabled by configuration|configuration has been locked"):
                    store.query(surroundings.fill(statement))
    surroundings.untouched()


@pytest.mark.parametrize("statement", READS)
def test_reads_still_answer_everywhere(
    statement: str, live: Live, at_rest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, answer = call(live.url, "POST", "/api/sql", {"sql": statement})
    assert status == 200, answer
    assert run_cli(capsys, "sql", "--json", "--db", str(live.db), statement)[0] == 0
    assert run_cli(capsys, "sql", "--json", "--db", str(at_rest), statement)[0] == 0


def test_the_real_command_refuses_a_data_modifying_cte(at_rest: Path, surroundings: Surroundings) -> None:
    """The console entry point itself, in a process of its own, on the file."""
    statement = surroundings.fill("WITH x AS (COPY (SELECT 'pwned') TO '{out}') SELECT 1")
    finished = subprocess.run(
        [*CLI, "sql", "--db", str(at_rest), statement], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert finished.returncode == 2 and finished.stdout == ""
    assert finished.stderr.startswith("fleetpulse sql: ") and "COPY" in finished.stderr
    surroundings.untouched()


def test_answers_are_cut_by_bytes_and_queries_are_bounded(live: Live) -> None:
    """300 rows of 1 MB come back as about 16 MB with `truncated`; the monitor goes on ingesting."""
    status, answer = call(live.url, "POST", "/api/sql", {"sql": "SELECT repeat('x', 1000000) AS big FROM range(300)"})
    assert status == 200 and answer["truncated"] is True
    assert 1 <= len(answer["rows"]) <= 17
    results: list[int] = []

    def slow() -> None:
        statement = "SELECT count(*) FROM range(3000000000) WHERE hash(range) % 7 = 3"  # 13 s on one core here
        results.append(call(live.url, "POST", "/api/sql", {"sql": statement})[0])

    def stored(agent: str) -> int:
        return int(live.monitor.store.query("SELECT count(*) FROM heartbeats WHERE agent = $1", [agent])[1][0][0])

    threads = [threading.Thread(target=slow) for _ in range(10)]
    with Agent("beating-meanwhile", broker=live.monitor.config.broker, interval_s=0.5):
        for thread in threads:
            thread.start()
        eventually(lambda: stored("beating-meanwhile") >= 3, timeout_s=30)  # ingest goes on under the queries
        assert any(thread.is_alive() for thread in threads)
        for thread in threads:
            thread.join(60)
    assert results.count(429) >= 10 - 6, results  # 2 run and 4 wait at most; the rest hear 429 at once
    assert set(results) <= {200, 408, 429}
    assert call(live.url, "POST", "/api/sql", {"sql": "SELECT 42"}) == (
        200,
        {"columns": ["42"], "rows": [[42]], "truncated": False},
    )
