"""Langfuse's legacy layout, in the blob export (`observations/` + `traces/`, export source TRACES_OBSERVATIONS:
self-hosted v3) and in the legacy API (GET /api/public/observations + /api/public/traces: v3, and v4 in dual
mode): observations that do not carry their trace's user, session, tags or metadata, joined to their traces
in DuckDB.

Quirks of the legacy export this reading handles (langfuse/langfuse v3.120-v3.225, worker blobstorage):
- CSV text cells wrapped in a JSON string literal (v3.146-v3.156 every text cell; earlier, text with a
  comma): decoded by `from_text(csv=True)` in observation_rows.py. Objects and arrays are JSON text.
- usage_details values as quoted numbers (`{"input":"100"}`: ClickHouse before 25.8 quotes UInt64 in JSON
  output): validation reads numeric text as numbers.
- `total_cost` only since v3.164: before, the cost is cost_details' total.
- times as ClickHouse's DateTime64(3) text, `2026-07-01 10:00:00.123`, UTC without a zone.
- traces cut by their `timestamp`, observations by `start_time`: a generation's trace may sit in an earlier
  or later window (export_listing.TRACE_MARGIN).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from finops_pipeline.sources.observation_rows import COST_CARRYING, Vocabulary


@dataclass(frozen=True)
class TraceMatch:
    """How the day's cost-carrying observations found their traces."""

    observations: int
    without_trace: int  # no trace with their trace_id was read: staged with what they carry themselves
    sample: list[str]  # some of the trace ids not found


def attach_traces(conn: duckdb.DuckDBPyConnection, vocabulary: Vocabulary, day) -> TraceMatch:
    """Give each legacy observation in `scratch.observations` (its source marked `legacy`) its trace's (same
    project, id = trace_id; the latest read wins): user and session where it has none, tags after its own, and
    each allocation key's value where its own metadata has none. Allocation then resolves observation
    metadata, trace metadata, tags, first-class fields, in that order. Observations of other sources, and
    those whose trace was not read, keep what they have."""
    merged = ", ".join(f"coalesce(nullif(trim(o.metadata_values[{i}]), ''), t.metadata_values[{i}])"
                       for i in range(1, len(vocabulary.keys) + 1))
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE day_traces AS
        SELECT coalesce(project_id, '') AS project, id, user_id, session_id, tags, metadata_values
        FROM scratch.traces WHERE reason IS NULL
        QUALIFY row_number() OVER (PARTITION BY coalesce(project_id, ''), id ORDER BY file_rank DESC, line DESC) = 1""")
    joined = """scratch.observations o JOIN scratch.sources s USING (file_rank)
        LEFT JOIN day_traces t ON s.legacy AND t.project = coalesce(o.project_id, '') AND t.id = o.trace_id"""
    observations, missing, sample = conn.execute(f"""
        SELECT count(DISTINCT [project, id]), count(DISTINCT [project, id]) FILTER (WHERE found IS NULL),
               list(DISTINCT trace_id) FILTER (WHERE found IS NULL)[:5]
        FROM (SELECT o.*, coalesce(o.project_id, '') AS project, t.id AS found FROM {joined} WHERE s.legacy)
        WHERE reason IS NULL AND {COST_CARRYING} AND start_time >= $day AND start_time < $day + INTERVAL 1 DAY
    """, {"day": day}).fetchone()
    conn.execute(f"""
        CREATE OR REPLACE TABLE scratch.observations AS
        SELECT o.* REPLACE (coalesce(o.user_id, t.user_id) AS user_id, coalesce(o.session_id, t.session_id) AS session_id,
                            CASE WHEN t.id IS NULL THEN o.tags WHEN len(o.tags) > 0 THEN list_concat(o.tags, t.tags)
                                 ELSE t.tags END AS tags,
                            CASE WHEN t.id IS NULL THEN o.metadata_values ELSE [{merged}] END AS metadata_values)
        FROM {joined}""")
    return TraceMatch(observations, missing, [s for s in sample or [] if s is not None])


def traces_missing(conn: duckdb.DuckDBPyConnection, day) -> int:
    """How many of the day's cost-carrying observations have no trace read yet."""
    return conn.execute(f"""
        SELECT count(*) FROM scratch.observations o JOIN scratch.sources s USING (file_rank)
        WHERE s.legacy AND o.reason IS NULL AND {COST_CARRYING} AND o.start_time >= $day AND o.start_time < $day + INTERVAL 1 DAY
          AND NOT EXISTS (SELECT 1 FROM scratch.traces t WHERE t.reason IS NULL AND t.id = o.trace_id
                          AND coalesce(t.project_id, '') = coalesce(o.project_id, ''))""", {"day": day}).fetchone()[0]
