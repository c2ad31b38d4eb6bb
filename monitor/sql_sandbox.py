"""People's SQL (`POST /api/sql`, `fleetpulse sql`): refused unless DuckDB's own parser shows a pure read, and
run on a database that can neither write files nor reach outside it.

Three walls, each enough on its own for what it covers (SECURITY.md, "SQL typed by people"):

1. `check_read_only`: exactly one statement, classified SELECT by DuckDB, whose whole parse tree
   (`json_serialize_sql`) holds only allow-listed node types. DuckDB calls `WITH x AS (DELETE ... RETURNING 1)
   SELECT ...` a SELECT; its tree shows the DELETE node. Table functions are allow-listed by name (no
   `read_*`, `glob`, `query`...), table names must be plain identifiers (no `'/etc/passwd'` replacement scans),
   and functions with side effects (`nextval`, `setseed`...) are refused.
2. `lock_down`: every DuckDB database this package opens turns external access off (no file, no URL, no
   ATTACH, no COPY, no INSTALL/LOAD), extension auto-install/auto-load and community extensions off, and then
   locks its configuration, so no statement can turn any of it back on.
3. The statement runs in a `BEGIN TRANSACTION READ ONLY` that is always rolled back (`Store.read_only_query`).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import duckdb

from fleetpulse.publisher.errors import FleetpulseError

__all__ = ["ReadOnlyViolation", "check_read_only", "lock_down"]


class ReadOnlyViolation(FleetpulseError, ValueError):
    """A statement that is not a plain read was refused."""


_LOCKDOWN = (
    "SET GLOBAL enable_external_access = false",
    "SET GLOBAL autoinstall_known_extensions = false",
    "SET GLOBAL autoload_known_extensions = false",
    "SET GLOBAL allow_community_extensions = false",
    "SET GLOBAL lock_configuration = true",  # last: nothing after it can undo the lines above
)


def lock_down(connection: duckdb.DuckDBPyConnection) -> None:
    """Close the database instance behind `connection` to the outside world, for good.

    The monitor's own writes need none of it: they append Arrow tables registered by name (Store._append),
    which DuckDB still allows with external access off; its database file and WAL were opened before.
    """
    for statement in _LOCKDOWN:
        connection.execute(statement)


# Parse-tree node types (dicts without a "class": query nodes, table references, result modifiers and orders)
# that a read may contain. Anything else, e.g. DELETE_QUERY_NODE, COPY_QUERY_NODE, INSERT_QUERY_NODE,
# UPDATE_QUERY_NODE inside a CTE, or a node type a later DuckDB adds, is refused: an allow-list fails closed.
_READ_NODE_TYPES = frozenset(
    {
        "SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE",
        "BASE_TABLE", "EMPTY", "EXPRESSION_LIST", "JOIN", "PIVOT", "SHOW_REF", "SUBQUERY", "TABLE_FUNCTION",
        "DISTINCT_MODIFIER", "LIMIT_MODIFIER", "LIMIT_PERCENT_MODIFIER", "ORDER_MODIFIER",
        "ORDER_DEFAULT", "ASCENDING", "DESCENDING",
    }
)  # fmt: skip

# Table functions a person may call: generators, the history's own table macros (monitor/schema.py) and the
# catalog listings that show what there is to query. Not: read_*, glob, sniff_csv, parquet_*, query,
# query_table, duckdb_settings/databases/extensions/secrets (paths and configuration), pragma_*, checkpoint.
ALLOWED_TABLE_FUNCTIONS = frozenset(
    {
        "range", "generate_series", "unnest",
        "reliability", "mttr", "mtbf",
        "duckdb_tables", "duckdb_views", "duckdb_columns", "duckdb_schemas", "duckdb_types", "duckdb_constraints",
        "duckdb_indexes", "duckdb_functions", "duckdb_keywords",
    }
)  # fmt: skip

# Scalar functions with an effect beyond their answer (sequences, the random seed), that run SQL text, or that
# read the process's environment. File readers are table functions, refused above.
_REFUSED_FUNCTIONS = frozenset({"nextval", "currval", "setseed", "getenv", "query", "query_table"})
_REFUSED_FUNCTION_PREFIXES = ("read_", "pragma_", "parquet_", "duckdb_secret", "enable_", "disable_")

_PLAIN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PEOPLE_SCHEMAS = frozenset({"", "main", "information_schema", "pg_catalog"})

# Parsing only: an in-memory database with nothing in it, locked down like the others.
_parser_lock = threading.Lock()
_parser: duckdb.DuckDBPyConnection | None = None


def _parse_tree(sql: str) -> dict[str, Any]:
    global _parser
    with _parser_lock:
        if _parser is None:
            _parser = duckdb.connect(":memory:")
            lock_down(_parser)
        cursor = _parser.cursor()
        try:
            row = cursor.execute("SELECT json_serialize_sql($sql)", {"sql": sql}).fetchone()
        finally:
            cursor.close()
    tree: dict[str, Any] = json.loads(row[0]) if row else {"error": True, "error_message": "no parse tree"}
    return tree


def _nodes(tree: Any) -> Iterator[dict[str, Any]]:
    if isinstance(tree, dict):
        yield tree
        for value in tree.values():
            yield from _nodes(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _nodes(value)


def _refusal(node: dict[str, Any]) -> str | None:
    """Why `node` has no place in a read, or None."""
    if "class" in node:  # an expression
        if node["class"] == "FUNCTION":
            name = str(node.get("function_name", "")).lower()
            if name in _REFUSED_FUNCTIONS or name.startswith(_REFUSED_FUNCTION_PREFIXES):
                return f"the function {name}() is not allowed in people's SQL"
        return None
    kind = node.get("type")
    if not isinstance(kind, str):
        return None
    if kind not in _READ_NODE_TYPES:
        return f"only reads are allowed: the statement contains a {kind.removesuffix('_NODE').replace('_', ' ')}"
    if kind == "TABLE_FUNCTION":
        function = node.get("function") or {}
        name = str(function.get("function_name", "")).lower()
        if function.get("class") != "FUNCTION" or name not in ALLOWED_TABLE_FUNCTIONS:
            allowed = ", ".join(sorted(ALLOWED_TABLE_FUNCTIONS))
            return f"the table function {name or '?'}() is not allowed (allowed: {allowed})"
        if function.get("catalog") or function.get("schema") not in (None, "", "main"):
            return f"the table function {name}() must be called by its plain name"
    if kind == "BASE_TABLE":
        name = str(node.get("table_name", ""))
        if not _PLAIN_NAME.match(name):
            return f"{name!r} is not a table or view name (files and URLs cannot be queried)"
        if node.get("catalog_name") or node.get("schema_name", "") not in _PEOPLE_SCHEMAS:
            return f"{name!r}: only this database's tables and views can be queried"
    return None


def check_read_only(sql: str) -> None:
    """Raise ReadOnlyViolation unless `sql` is one statement that only reads this database."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as error:
        raise ReadOnlyViolation(f"not valid SQL: {str(error).splitlines()[0]}") from None
    if not statements:
        raise ReadOnlyViolation("no SQL statement given")
    if len(statements) > 1:
        raise ReadOnlyViolation(f"one statement at a time, please ({len(statements)} given)")
    kind = str(statements[0].type).rsplit(".", 1)[-1]
    if kind != "SELECT":
        raise ReadOnlyViolation(f"only read-only SELECT statements are allowed, not {kind}")
    tree = _parse_tree(sql)
    if tree.get("error"):
        raise ReadOnlyViolation(f"refused: {tree.get('error_message') or 'DuckDB could not show its parse tree'}")
    for node in _nodes(tree.get("statements", [])):
        reason = _refusal(node)
        if reason is not None:
            raise ReadOnlyViolation(reason)
