"""The DuckDB schema (SPEC §4) as numbered forward migrations; `migrate()` brings any database up to date."""

from __future__ import annotations

from datetime import UTC, datetime

import duckdb

from fleetpulse.publisher.errors import FleetpulseError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SchemaTooNew", "migrate"]

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

# History views (issue 6). Time the monitor did not watch is a gap: between a monitor's last sign of
# life (its `stopped` event, or for a crash its last `alive` beat, written every ALIVE_EVERY_S) and its
# next `started`, and while it had lost its broker. Gaps count neither as outage nor as uptime.
_V3 = """
-- `incidents` is the history view below (outages by root cause); alerting's open incidents move aside.
ALTER TABLE incidents RENAME TO alert_incidents;

CREATE OR REPLACE VIEW monitor_gaps AS
WITH life AS (
    SELECT "at", monitor_id, event, LAG("at") OVER (PARTITION BY monitor_id ORDER BY "at") AS previous_at
    FROM monitor_events
),
broker AS (
    SELECT "at", monitor_id, event, LEAD("at") OVER (PARTITION BY monitor_id ORDER BY "at") AS next_at
    FROM monitor_events WHERE event IN ('broker_lost', 'broker_connected', 'stopped', 'started')
)
SELECT monitor_id, previous_at AS started_at, "at" AS ended_at, 'monitor down' AS kind
FROM life WHERE event = 'started' AND previous_at IS NOT NULL
UNION ALL
SELECT monitor_id, "at" AS started_at, next_at AS ended_at, 'broker lost' AS kind
FROM broker WHERE event = 'broker_lost';

-- Every agent's stays in each state, gap-aware: a gap is a stay in 'unknown' (reason 'monitor down' or
-- 'broker lost'), after which the state held before it resumes until the next transition says otherwise.
-- The first state after an agent was first seen is no transition row: it is the from_state of its first
-- transition, or its state if it never changed.
CREATE OR REPLACE VIEW fleet_timeline AS
WITH known AS (
    SELECT agent, "at", id AS ordinal, to_state AS state, reason FROM transitions
    UNION ALL
    SELECT a.agent, a.first_seen, -1, coalesce(f.first_state, a.state), 'first seen'
    FROM agents a LEFT JOIN (
        SELECT agent, arg_min(from_state, "at") AS first_state FROM transitions GROUP BY agent
    ) f ON f.agent = a.agent
    WHERE a.first_seen IS NOT NULL
),
gaps AS (
    SELECT DISTINCT started_at, ended_at, kind FROM monitor_gaps WHERE ended_at IS NULL OR ended_at > started_at
),
gap_starts AS (
    SELECT a.agent, g.started_at AS "at", 9e18::BIGINT AS ordinal, 'unknown' AS state, g.kind AS reason
    FROM agents a JOIN gaps g ON a.first_seen < g.started_at
),
gap_ends AS (
    SELECT k.agent, g.ended_at AS "at", -2 AS ordinal, k.state, 'resumed after ' || g.kind AS reason
    FROM gaps g JOIN agents a ON a.first_seen < g.started_at
    ASOF JOIN known k ON k.agent = a.agent AND k."at" <= g.started_at
    WHERE g.ended_at IS NOT NULL
),
changes AS (
    SELECT * FROM known UNION ALL SELECT * FROM gap_starts UNION ALL SELECT * FROM gap_ends
)
SELECT agent, state, reason, "at" AS started_at,
       LEAD("at") OVER (PARTITION BY agent ORDER BY "at", ordinal) AS ended_at
FROM changes;

-- One row per stay in degraded or unreachable (SPEC §4). duration_s counts observed time only: the part
-- of an outage that fell into a monitor gap is unobserved_s, never downtime. Open: ended_at NULL.
CREATE OR REPLACE VIEW outages AS
WITH known AS (
    SELECT agent, "at", id AS ordinal, to_state AS state FROM transitions
    UNION ALL
    SELECT a.agent, a.first_seen, -1, coalesce(f.first_state, a.state)
    FROM agents a LEFT JOIN (
        SELECT agent, arg_min(from_state, "at") AS first_state FROM transitions GROUP BY agent
    ) f ON f.agent = a.agent
    WHERE a.first_seen IS NOT NULL
),
stays AS (
    SELECT agent, state, "at" AS started_at, LEAD("at") OVER (PARTITION BY agent ORDER BY "at", ordinal) AS ended_at
    FROM known
),
bad AS (
    SELECT agent, state, started_at, ended_at,
           epoch(coalesce(ended_at, current_timestamp)) - epoch(started_at) AS wall_s
    FROM stays WHERE state IN ('degraded', 'unreachable')
),
hidden AS (
    SELECT b.agent, b.started_at,
           sum(greatest(0, epoch(least(coalesce(b.ended_at, current_timestamp),
                                       coalesce(g.ended_at, current_timestamp)))
                          - epoch(greatest(b.started_at, g.started_at)))) AS unobserved_s
    FROM bad b JOIN (SELECT DISTINCT started_at, ended_at FROM monitor_gaps) g
      ON g.started_at < coalesce(b.ended_at, current_timestamp)
     AND coalesce(g.ended_at, current_timestamp) > b.started_at
    GROUP BY ALL
)
SELECT b.agent, b.state, b.started_at, b.ended_at,
       b.wall_s - coalesce(h.unobserved_s, 0) AS duration_s,
       coalesce(h.unobserved_s, 0) AS unobserved_s
FROM bad b LEFT JOIN hidden h ON h.agent = b.agent AND h.started_at = b.started_at;

-- Per agent and UTC day: time healthy, time down (degraded or unreachable), and uptime over the observed
-- time (healthy + down; killed = stopped on purpose, unknown = not watched, neither counts).
CREATE OR REPLACE VIEW availability_daily AS
WITH clipped AS (
    SELECT t.agent, t.state, d.day,
           epoch(least(coalesce(t.ended_at, current_timestamp), d.day + INTERVAL 1 DAY))
             - epoch(greatest(t.started_at, d.day)) AS seconds
    FROM fleet_timeline t,
         LATERAL (SELECT unnest(range(date_trunc('day', t.started_at),
                                      coalesce(t.ended_at, current_timestamp), INTERVAL 1 DAY)) AS day) d
)
SELECT agent, CAST(day AS DATE) AS day,
       sum(seconds) FILTER (WHERE state = 'healthy') AS uptime_s,
       coalesce(sum(seconds) FILTER (WHERE state IN ('degraded', 'unreachable')), 0) AS downtime_s,
       coalesce(sum(seconds) FILTER (WHERE state = 'unknown'), 0) AS unobserved_s,
       coalesce(sum(seconds) FILTER (WHERE state = 'healthy'), 0)
         / nullif(sum(seconds) FILTER (WHERE state IN ('healthy', 'degraded', 'unreachable')), 0) AS uptime_ratio
FROM clipped WHERE seconds > 0
GROUP BY ALL;

-- Outages grouped by root cause: an outage of an agent that depends_on (directly or further down) an
-- agent whose outage was under way when it began belongs to that agent's incident.
CREATE OR REPLACE VIEW incidents AS
WITH RECURSIVE o AS (
    SELECT agent, state, started_at, ended_at, duration_s,
           agent || '/' || strftime(started_at, '%Y%m%dT%H%M%S') AS outage_id
    FROM outages
),
parent AS (
    SELECT c.outage_id, min_by(p.outage_id, p.started_at) AS parent_id
    FROM o c JOIN agents a ON a.agent = c.agent
    JOIN o p ON list_contains(a.depends_on, p.agent)
            AND p.started_at <= c.started_at AND coalesce(p.ended_at, 'infinity'::TIMESTAMPTZ) > c.started_at
    GROUP BY c.outage_id
),
root(outage_id, root_id, depth) AS (
    SELECT outage_id, outage_id, 0 FROM o WHERE outage_id NOT IN (SELECT outage_id FROM parent)
    UNION ALL
    SELECT p.outage_id, r.root_id, r.depth + 1 FROM parent p JOIN root r ON p.parent_id = r.outage_id
    WHERE r.depth < 64
)
SELECT r.root_id AS incident_id,
       arg_min(o.agent, o.started_at) AS root_agent,
       min(o.started_at) AS started_at,
       CASE WHEN count(*) = count(o.ended_at) THEN max(o.ended_at) END AS ended_at,
       epoch(coalesce(CASE WHEN count(*) = count(o.ended_at) THEN max(o.ended_at) END, current_timestamp))
         - epoch(min(o.started_at)) AS duration_s,
       list(DISTINCT o.agent ORDER BY o.agent) AS agents,
       count(DISTINCT o.agent) - 1 AS impacted
FROM root r JOIN o ON o.outage_id = r.outage_id
GROUP BY r.root_id;

-- Cost and tokens per agent and UTC day, with the per-model split as a map of model -> USD.
CREATE OR REPLACE VIEW cost_daily_by_model AS
SELECT h.agent, CAST(date_trunc('day', h.received_at) AS DATE) AS day, m.key AS model,
       sum(CAST(json_extract(m.value, '$.cost_usd') AS DOUBLE)) AS cost_usd,
       sum(CAST(json_extract(m.value, '$.tokens_in') AS BIGINT)) AS tokens_in,
       sum(CAST(json_extract(m.value, '$.tokens_out') AS BIGINT)) AS tokens_out
FROM heartbeats h, json_each(h.by_model) m
GROUP BY ALL;

CREATE OR REPLACE VIEW cost_daily AS
WITH totals AS (
    SELECT agent, CAST(date_trunc('day', received_at) AS DATE) AS day,
           coalesce(sum(cost_usd), 0) AS cost_usd, coalesce(sum(tokens_in), 0) AS tokens_in,
           coalesce(sum(tokens_out), 0) AS tokens_out, coalesce(sum(ok), 0) AS tasks_ok,
           coalesce(sum(failed), 0) AS tasks_failed
    FROM heartbeats GROUP BY ALL
)
SELECT t.*, coalesce(m.by_model, MAP {}) AS by_model
FROM totals t LEFT JOIN (
    SELECT agent, day, map(list(model ORDER BY model), list(cost_usd ORDER BY model)) AS by_model
    FROM cost_daily_by_model GROUP BY ALL
) m ON m.agent = t.agent AND m.day = t.day;

-- MTTR and MTBF per agent over a window: SELECT * FROM reliability(TIMESTAMPTZ '2026-11-01', now()).
-- MTTR: mean observed duration of the outages that began in the window and have ended (also if after
-- it); MTBF: observed healthy time in the window per outage begun in it (NULL without an outage).
CREATE OR REPLACE MACRO reliability(since, until) AS TABLE
WITH up AS (
    SELECT agent,
           sum(epoch(least(coalesce(ended_at, current_timestamp), until)) - epoch(greatest(started_at, since)))
             FILTER (WHERE state = 'healthy') AS uptime_s
    FROM fleet_timeline
    WHERE coalesce(ended_at, current_timestamp) > since AND started_at < until
    GROUP BY agent
),
down AS (
    SELECT agent, count(*) AS outages, count(ended_at) AS recovered,
           avg(duration_s) FILTER (WHERE ended_at IS NOT NULL) AS mttr_s,
           -- an outage still going at `until` counts up to `until` (gap time excluded all the same)
           sum(least(duration_s, epoch(least(coalesce(ended_at, current_timestamp), until)) - epoch(started_at)))
             AS downtime_s
    FROM outages WHERE started_at >= since AND started_at < until
    GROUP BY agent
)
SELECT coalesce(u.agent, d.agent) AS agent, coalesce(d.outages, 0) AS outages,
       coalesce(d.recovered, 0) AS recovered, d.mttr_s, coalesce(d.downtime_s, 0) AS downtime_s,
       coalesce(u.uptime_s, 0) AS uptime_s,
       coalesce(u.uptime_s, 0) / nullif(d.outages, 0) AS mtbf_s
FROM up u FULL JOIN down d ON d.agent = u.agent;

CREATE OR REPLACE MACRO mttr(since, until) AS TABLE
SELECT agent, outages, recovered, mttr_s FROM reliability(since, until);

CREATE OR REPLACE MACRO mtbf(since, until) AS TABLE
SELECT agent, outages, uptime_s, mtbf_s FROM reliability(since, until);
"""

# Retention (issue 6), monitor/retention.py. Three tiers of the heartbeats' work figures, plus the per-model split:
# * heartbeats_hour and cost_hourly_by_model: one row per agent (and model) and UTC hour, for every hour before
#   the 'hours' mark, written once the hour is over (a few minutes after it) and kept forever. The cost views
#   read them, and raw rows only from the mark on: summing a month of raw by_model JSON would take seconds.
# * heartbeats (raw) for raw_retention_s; then the rows move into heartbeats_minute (deleted in the transaction
#   that adds their minutes), which are deleted after minute_retention_s, below the 'minutes' mark.
# A mark advances in the transaction that writes or deletes what it stands for, so a reader never counts a
# heartbeat twice or misses one. Transitions, monitor events and agents are never deleted. Buckets and days are
# UTC (epoch arithmetic: neither the session's time zone nor per-row time zone conversion).
# v4 also redefines `incidents` (same rows) for speed at a month of a 1,000-agent fleet.
_V4 = """
CREATE TABLE retention_marks (
    mark VARCHAR PRIMARY KEY,
    until TIMESTAMPTZ NOT NULL
);
-- hours: every heartbeat received before it is summed in heartbeats_hour and cost_hourly_by_model.
-- minutes: heartbeats_minute rows before it have been deleted (their hours remain).
INSERT INTO retention_marks VALUES ('hours', '-infinity'), ('minutes', '-infinity');

CREATE TABLE heartbeats_minute (
    agent VARCHAR NOT NULL,
    bucket TIMESTAMPTZ NOT NULL,     -- the minute's start
    messages BIGINT NOT NULL,        -- raw rows of every kind
    heartbeats BIGINT NOT NULL,      -- of them kind = 'heartbeat'
    ok BIGINT,                       -- sums; NULL when no raw row had the figure
    failed BIGINT,
    cost_usd DOUBLE,
    tokens_in BIGINT,
    tokens_out BIGINT,
    latency_ms_p50_max DOUBLE,       -- the worst window's figure
    latency_ms_p95_max DOUBLE,
    latency_ms_max DOUBLE
);
CREATE TABLE heartbeats_hour (
    agent VARCHAR NOT NULL,
    bucket TIMESTAMPTZ NOT NULL,     -- the hour's start
    messages BIGINT NOT NULL,
    heartbeats BIGINT NOT NULL,
    ok BIGINT,
    failed BIGINT,
    cost_usd DOUBLE,
    tokens_in BIGINT,
    tokens_out BIGINT,
    latency_ms_p50_max DOUBLE,
    latency_ms_p95_max DOUBLE,
    latency_ms_max DOUBLE
);
CREATE TABLE cost_hourly_by_model (  -- the by_model JSON of the same hours, summed per model
    agent VARCHAR NOT NULL,
    hour TIMESTAMPTZ NOT NULL,
    model VARCHAR NOT NULL,
    cost_usd DOUBLE,
    tokens_in BIGINT,
    tokens_out BIGINT
);

-- Work figures at the finest grain still kept, for charts over any window: raw heartbeats (a bucket of 0 s),
-- then minutes, then hours where the minutes are gone.
CREATE OR REPLACE VIEW heartbeat_usage AS
SELECT agent, received_at AS started_at, 0 AS bucket_s, 1 AS messages,
       CAST(kind = 'heartbeat' AS BIGINT) AS heartbeats, ok, failed, cost_usd, tokens_in, tokens_out,
       latency_ms_p50 AS latency_ms_p50_max, latency_ms_p95 AS latency_ms_p95_max, latency_ms_max
FROM heartbeats
UNION ALL
SELECT agent, bucket, 60, messages, heartbeats, ok, failed, cost_usd, tokens_in, tokens_out,
       latency_ms_p50_max, latency_ms_p95_max, latency_ms_max
FROM heartbeats_minute
UNION ALL
SELECT agent, bucket, 3600, messages, heartbeats, ok, failed, cost_usd, tokens_in, tokens_out,
       latency_ms_p50_max, latency_ms_p95_max, latency_ms_max
FROM heartbeats_hour WHERE bucket < (SELECT until FROM retention_marks WHERE mark = 'minutes');

-- The per-model split: whole hours before the hours mark, raw heartbeats' by_model after it.
CREATE OR REPLACE VIEW model_usage AS
SELECT agent, hour AS started_at, 3600 AS bucket_s, model, cost_usd, tokens_in, tokens_out
FROM cost_hourly_by_model
UNION ALL
SELECT h.agent, h.received_at, 0, m.key,
       CAST(json_extract(m.value, '$.cost_usd') AS DOUBLE),
       CAST(json_extract(m.value, '$.tokens_in') AS BIGINT),
       CAST(json_extract(m.value, '$.tokens_out') AS BIGINT)
FROM (SELECT agent, received_at, by_model FROM heartbeats   -- filtered before json_each parses anything
      WHERE received_at >= (SELECT until FROM retention_marks WHERE mark = 'hours')) h, json_each(h.by_model) m;

-- v3's cost views (same columns), now over the hours and the raw heartbeats after them.
CREATE OR REPLACE VIEW cost_daily_by_model AS
SELECT agent, DATE '1970-01-01' + CAST(epoch_us(started_at) // 86400000000 AS INTEGER) AS day, model,
       sum(cost_usd) AS cost_usd, sum(tokens_in) AS tokens_in, sum(tokens_out) AS tokens_out
FROM model_usage
GROUP BY ALL;

CREATE OR REPLACE VIEW cost_daily AS
WITH parts AS (
    SELECT agent, bucket AS started_at, cost_usd, tokens_in, tokens_out, ok, failed FROM heartbeats_hour
    UNION ALL
    SELECT agent, received_at, cost_usd, tokens_in, tokens_out, ok, failed FROM heartbeats
    WHERE received_at >= (SELECT until FROM retention_marks WHERE mark = 'hours')
),
totals AS (
    SELECT agent, DATE '1970-01-01' + CAST(epoch_us(started_at) // 86400000000 AS INTEGER) AS day,
           coalesce(sum(cost_usd), 0) AS cost_usd, coalesce(sum(tokens_in), 0) AS tokens_in,
           coalesce(sum(tokens_out), 0) AS tokens_out, coalesce(sum(ok), 0) AS tasks_ok,
           coalesce(sum(failed), 0) AS tasks_failed
    FROM parts GROUP BY ALL
)
SELECT t.*, coalesce(m.by_model, MAP {}) AS by_model
FROM totals t LEFT JOIN (
    SELECT agent, day, map(list(model ORDER BY model), list(cost_usd ORDER BY model)) AS by_model
    FROM cost_daily_by_model GROUP BY ALL
) m ON m.agent = t.agent AND m.day = t.day;

-- v3's incidents, same rows, 20x faster (benchmarks/history.py: 30 days x 1,000 agents, 21,000 outages): the
-- dependency is joined on equality (depends_on unnested) instead of list_contains over every pair of outages.
CREATE OR REPLACE VIEW incidents AS
WITH RECURSIVE o AS MATERIALIZED (
    SELECT agent, state, started_at, ended_at, duration_s,
           agent || '/' || strftime(started_at, '%Y%m%dT%H%M%S') AS outage_id
    FROM outages
),
dependency AS (
    SELECT agent, unnest(depends_on) AS needs FROM agents
),
parent AS (
    SELECT c.outage_id, min_by(p.outage_id, p.started_at) AS parent_id
    FROM o c JOIN dependency d ON d.agent = c.agent
    JOIN o p ON p.agent = d.needs
            AND p.started_at <= c.started_at AND coalesce(p.ended_at, 'infinity'::TIMESTAMPTZ) > c.started_at
    GROUP BY c.outage_id
),
root(outage_id, root_id, depth) AS (
    SELECT outage_id, outage_id, 0 FROM o WHERE outage_id NOT IN (SELECT outage_id FROM parent)
    UNION ALL
    SELECT p.outage_id, r.root_id, r.depth + 1 FROM parent p JOIN root r ON p.parent_id = r.outage_id
    WHERE r.depth < 64
)
SELECT r.root_id AS incident_id,
       arg_min(o.agent, o.started_at) AS root_agent,
       min(o.started_at) AS started_at,
       CASE WHEN count(*) = count(o.ended_at) THEN max(o.ended_at) END AS ended_at,
       epoch(coalesce(CASE WHEN count(*) = count(o.ended_at) THEN max(o.ended_at) END, current_timestamp))
         - epoch(min(o.started_at)) AS duration_s,
       list(DISTINCT o.agent ORDER BY o.agent) AS agents,
       count(DISTINCT o.agent) - 1 AS impacted
FROM root r JOIN o ON o.outage_id = r.outage_id
GROUP BY r.root_id;
"""

MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3, _V4)
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(FleetpulseError, RuntimeError):
    """The database was written by a newer fleetpulse than this one."""


def migrate(connection: duckdb.DuckDBPyConnection) -> int:
    """Apply every migration the database has not seen, each in its own transaction; return the version."""
    connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at TIMESTAMPTZ)")
    # fetchall, not fetchone: a result left open keeps its transaction open, and while it is, no CHECKPOINT
    # (manual or automatic) can run once another connection has written: the WAL would grow without bound.
    (row,) = connection.execute("SELECT max(version) FROM schema_version").fetchall()
    current = int(row[0]) if row[0] is not None else 0
    if current > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"database schema version {current} is newer than this fleetpulse ({SCHEMA_VERSION}): upgrade fleetpulse"
        )
    for version in range(current + 1, SCHEMA_VERSION + 1):
        connection.execute("BEGIN TRANSACTION")
        connection.execute(MIGRATIONS[version - 1])
        connection.execute("INSERT INTO schema_version VALUES (?, ?)", [version, datetime.now(UTC)])
        connection.execute("COMMIT")
    return SCHEMA_VERSION
