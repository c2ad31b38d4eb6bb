"""The DuckDB schema (SPEC §4) as numbered forward migrations; `migrate()` brings any database up to date."""

from __future__ import annotations

from datetime import UTC, datetime

import duckdb

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate"]

# `at` is a reserved word in DuckDB's grammar: the SPEC's column keeps its name, quoted here, and
# queries write "at" (or t.at). The README says so.
_V1 = """
CREATE SEQUENCE transitions_id;
CREATE TABLE heartbeats (
    agent VARCHAR NOT NULL,
    session VARCHAR NOT NULL,
    seq BIGINT,                  -- NULL for stop and will
    kind VARCHAR NOT NULL,       -- heartbeat | stop | will
    received_at TIMESTAMPTZ NOT NULL,
    sent_at TIMESTAMPTZ,
    status VARCHAR,
    reason VARCHAR,
    ok BIGINT,
    failed BIGINT,
    latency_ms_p50 DOUBLE,
    latency_ms_p95 DOUBLE,
    latency_ms_max DOUBLE,
    cost_usd DOUBLE,
    tokens_in BIGINT,
    tokens_out BIGINT,
    by_model JSON,
    last_progress_at TIMESTAMPTZ,
    paused BOOLEAN,
    snapshot BOOLEAN NOT NULL    -- delivered as a retained message at (re)subscribe
);
CREATE TABLE transitions (
    id BIGINT NOT NULL DEFAULT nextval('transitions_id'),
    agent VARCHAR NOT NULL,
    "at" TIMESTAMPTZ NOT NULL,
    from_state VARCHAR NOT NULL,
    to_state VARCHAR NOT NULL,
    reason VARCHAR NOT NULL,
    snapshot BOOLEAN NOT NULL    -- learned from the retained snapshot: never alerts
);
CREATE TABLE agents (
    agent VARCHAR PRIMARY KEY,
    name VARCHAR,
    host VARCHAR,
    pid BIGINT,
    version VARCHAR,
    "group" VARCHAR,
    interval_s DOUBLE,
    depends_on VARCHAR[],
    labels JSON,
    first_seen TIMESTAMPTZ,
    last_seen TIMESTAMPTZ,
    state VARCHAR,
    reason VARCHAR,
    state_since TIMESTAMPTZ,
    session VARCHAR,
    last_seq BIGINT,
    last_heartbeat_at TIMESTAMPTZ,
    reported_status VARCHAR,
    reported_reason VARCHAR,
    last_progress_at TIMESTAMPTZ,
    paused BOOLEAN
);
CREATE TABLE alerts (
    id VARCHAR,
    agent VARCHAR,
    "at" TIMESTAMPTZ,
    severity VARCHAR,
    event VARCHAR,
    channel VARCHAR,
    delivered_at TIMESTAMPTZ,
    attempts INTEGER,
    error VARCHAR
);
CREATE TABLE rejected (
    received_at TIMESTAMPTZ NOT NULL,
    topic VARCHAR NOT NULL,
    reason VARCHAR NOT NULL,
    payload_prefix VARCHAR
);
CREATE TABLE commands (
    id VARCHAR NOT NULL,
    "at" TIMESTAMPTZ NOT NULL,
    target VARCHAR NOT NULL,     -- agents/<id> or groups/<group>
    command VARCHAR NOT NULL,
    issued_by VARCHAR NOT NULL,
    reason VARCHAR
);
CREATE TABLE monitor_events (
    "at" TIMESTAMPTZ NOT NULL,
    monitor_id VARCHAR NOT NULL,
    event VARCHAR NOT NULL,      -- started | stopped | broker_connected | broker_lost
    detail VARCHAR
);
-- One row per stay in degraded or unreachable; an open outage has ended_at NULL and its
-- duration_s counts up to now.
CREATE VIEW outages AS
WITH ordered AS (
    SELECT agent, to_state, "at",
           LEAD("at") OVER (PARTITION BY agent ORDER BY "at", id) AS next_at
    FROM transitions
)
SELECT agent,
       to_state AS state,
       "at" AS started_at,
       next_at AS ended_at,
       epoch(COALESCE(next_at, current_timestamp)) - epoch("at") AS duration_s
FROM ordered
WHERE to_state IN ('degraded', 'unreachable');
"""

# Alerting (issue 5). `alerts` was created empty in v1; it becomes one row per delivery (notification x
# channel), rewritten after every attempt, with what is needed to resend it after a restart.
_V2 = """
DROP TABLE alerts;
CREATE TABLE alerts (
    id VARCHAR PRIMARY KEY,          -- delivery id: stable across retries and restarts
    incident_id VARCHAR NOT NULL,    -- pairs trigger, reminders and resolve
    agent VARCHAR NOT NULL,          -- or monitor:<id> for the monitor's own incidents
    "at" TIMESTAMPTZ NOT NULL,       -- when what it reports happened (monitor clock)
    severity VARCHAR NOT NULL,
    event VARCHAR NOT NULL,          -- trigger | resolve | flapping | reminder
    channel VARCHAR NOT NULL,        -- the channel's name, secrets redacted
    delivered_at TIMESTAMPTZ,
    attempts INTEGER NOT NULL,
    error VARCHAR,                   -- the last attempt's error
    next_attempt_at TIMESTAMPTZ,     -- NULL once delivered or given up
    gave_up BOOLEAN NOT NULL,
    payload JSON NOT NULL            -- the webhook body (version 1)
);
CREATE TABLE alert_attempts (        -- one row per attempt: the delivery log behind alerts.attempts
    alert_id VARCHAR NOT NULL,
    attempt INTEGER NOT NULL,
    "at" TIMESTAMPTZ NOT NULL,
    delivered BOOLEAN NOT NULL,
    error VARCHAR
);
CREATE TABLE incidents (
    incident_id VARCHAR PRIMARY KEY,
    agent VARCHAR NOT NULL,
    state VARCHAR NOT NULL,
    severity VARCHAR NOT NULL,
    rule VARCHAR NOT NULL,
    opened_at TIMESTAMPTZ NOT NULL,
    notified BOOLEAN NOT NULL,       -- false: silenced or folded into another agent's incident
    root VARCHAR,                    -- the agent whose incident this one was folded into
    channels VARCHAR[] NOT NULL,
    closed_at TIMESTAMPTZ            -- NULL while open
);
CREATE TABLE silences (
    id VARCHAR PRIMARY KEY,
    pattern VARCHAR NOT NULL,        -- glob over agent ids and groups
    starts_at TIMESTAMPTZ NOT NULL,
    ends_at TIMESTAMPTZ NOT NULL,
    reason VARCHAR NOT NULL,
    created_by VARCHAR NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    removed_at TIMESTAMPTZ           -- ended early by an operator
);
"""

MIGRATIONS: tuple[str, ...] = (_V1, _V2)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(connection: duckdb.DuckDBPyConnection) -> int:
    """Apply every migration the database has not seen, each in its own transaction; return the version."""
    connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at TIMESTAMPTZ)")
    row = connection.execute("SELECT max(version) FROM schema_version").fetchone()
    current = int(row[0]) if row and row[0] is not None else 0
    if current > SCHEMA_VERSION:
        raise RuntimeError(
            f"database schema version {current} is newer than this fleetpulse ({SCHEMA_VERSION}): upgrade fleetpulse"
        )
    for version in range(current + 1, SCHEMA_VERSION + 1):
        connection.execute("BEGIN TRANSACTION")
        connection.execute(MIGRATIONS[version - 1])
        connection.execute("INSERT INTO schema_version VALUES (?, ?)", [version, datetime.now(UTC)])
        connection.execute("COMMIT")
    return SCHEMA_VERSION
