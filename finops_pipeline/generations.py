"""From raw observation rows to the staging table: validate, dedup, price and allocate, all in SQL.

Input: the temp table `export_rows` (see sources/langfuse_export.py) and `export_files` (file_rank ->
the day that file's window starts, used to place rows whose own time is unknown).
Output: the day's rows for `langfuse_generations` and for `quarantine`, as temp tables.
"""

from __future__ import annotations

from datetime import date

import duckdb
import pandas as pd

from finops_pipeline import pricing
from finops_pipeline.warehouse import MONEY

RATE = "DECIMAL(38, 18)"

# Allocation keys that fall back to a first-class observation field of the same meaning.
FIRST_CLASS_FIELDS = {
    "environment": "environment",
    "user_id": "user_id",
    "session_id": "session_id",
    "prompt_name": "prompt_name",
    "name": "name",
}
UNALLOCATED = "unallocated"

_MACROS = """
-- CSV cells carry objects and arrays as JSON text: decode that one level.
CREATE OR REPLACE TEMP MACRO decode_json(j) AS
    CASE WHEN json_type(j) = 'VARCHAR' AND json_valid(j ->> '$') AND (j ->> '$') <> '' THEN (j ->> '$')::JSON
         WHEN json_type(j) = 'VARCHAR' AND (j ->> '$') = '' THEN NULL
         ELSE j END;
CREATE OR REPLACE TEMP MACRO is_count(v) AS coalesce(
    json_type(v) = 'NULL'
    OR (TRY_CAST(v ->> '$' AS DOUBLE) >= 0 AND TRY_CAST(v ->> '$' AS DOUBLE) = floor(TRY_CAST(v ->> '$' AS DOUBLE))),
    false);
CREATE OR REPLACE TEMP MACRO is_amount(v) AS coalesce(json_type(v) = 'NULL' OR TRY_CAST(v ->> '$' AS DOUBLE) >= 0, false);
-- Langfuse usage keys are disjoint (detail keys are subtracted from input/output): sort them by kind.
CREATE OR REPLACE TEMP MACRO token_kind(k) AS CASE
    WHEN k = 'total' THEN 'total'
    WHEN k ILIKE '%reasoning%' THEN 'reasoning'
    WHEN k ILIKE '%cache%' AND (k ILIKE '%creation%' OR k ILIKE '%write%') THEN 'cache_write'
    WHEN k ILIKE '%cache%' THEN 'cached'
    WHEN k ILIKE 'input%' OR k ILIKE 'prompt%' THEN 'input'
    WHEN k ILIKE 'output%' OR k ILIKE 'completion%' THEN 'output'
    ELSE 'other' END;
CREATE OR REPLACE TEMP MACRO tokens_of(entries, kind) AS
    coalesce(list_sum([TRY_CAST(e.value ->> '$' AS DOUBLE)::BIGINT FOR e IN entries IF token_kind(e.key) = kind]), 0);
"""

_VALIDATE = f"""
CREATE OR REPLACE TEMP TABLE observations AS
WITH decoded AS (
    SELECT r.*, f.file_day,
           TRY_CAST(nullif(trim(r.start_time), '') AS TIMESTAMPTZ)::TIMESTAMP AS ts,
           decode_json(r.usage_details) AS usage_j,
           decode_json(r.cost_details) AS cost_j,
           nullif(r.total_cost ->> '$', '') AS total_text,
           decode_json(r.metadata) AS metadata_j,
           decode_json(r.tags) AS tags_j
    FROM export_rows r JOIN export_files f USING (file_rank)
),
entries AS (
    SELECT *,
           CASE WHEN json_type(usage_j) = 'OBJECT' THEN map_entries(usage_j::MAP(VARCHAR, JSON)) END AS usage_e,
           CASE WHEN json_type(cost_j) = 'OBJECT' THEN map_entries(cost_j::MAP(VARCHAR, JSON)) END AS cost_e
    FROM decoded
),
checked AS (
    SELECT *,
           list_filter(usage_e, lambda e: NOT is_count(e.value)) AS bad_usage,
           list_filter(cost_e, lambda e: NOT is_amount(e.value)) AS bad_cost,
           TRY_CAST(total_text AS {MONEY}) AS total_amount
    FROM entries
)
SELECT file_rank, file, line, id, file_day,
    CASE
        WHEN NOT is_object THEN 'malformed line: not a JSON object'
        WHEN coalesce(trim(id), '') = '' THEN 'missing id'
        WHEN coalesce(trim(start_time), '') = '' THEN 'missing start_time'
        WHEN ts IS NULL THEN 'unparseable start_time: ' || left(start_time, 40)
        WHEN usage_j IS NOT NULL AND json_type(usage_j) NOT IN ('OBJECT', 'NULL')
            THEN 'usage_details is not an object: ' || left(usage_j::VARCHAR, 40)
        WHEN len(bad_usage) > 0
            THEN 'usage_details.' || bad_usage[1].key || ' is not a non-negative whole number: '
                 || left(bad_usage[1].value::VARCHAR, 40)
        WHEN total_text IS NOT NULL AND total_amount IS NULL
            THEN 'total_cost is not a number: ' || left(total_text, 40)
        WHEN total_amount < 0 THEN 'negative total_cost: ' || total_text
        WHEN cost_j IS NOT NULL AND json_type(cost_j) NOT IN ('OBJECT', 'NULL')
            THEN 'cost_details is not an object: ' || left(cost_j::VARCHAR, 40)
        WHEN len(bad_cost) > 0
            THEN 'cost_details.' || bad_cost[1].key || ' is not a non-negative number: '
                 || left(bad_cost[1].value::VARCHAR, 40)
    END AS reason,
    trace_id, project_id, type, name, ts AS start_time, nullif(trim(model), '') AS model,
    tokens_of(usage_e, 'input') AS input_tokens,
    tokens_of(usage_e, 'output') AS output_tokens,
    tokens_of(usage_e, 'cached') AS cached_tokens,
    tokens_of(usage_e, 'cache_write') AS cache_write_tokens,
    tokens_of(usage_e, 'reasoning') AS reasoning_tokens,
    coalesce(
        list_sum([TRY_CAST(e.value ->> '$' AS DOUBLE)::BIGINT FOR e IN usage_e IF e.key = 'total']),
        list_sum([TRY_CAST(e.value ->> '$' AS DOUBLE)::BIGINT FOR e IN usage_e IF e.key <> 'total']),
        0) AS total_tokens,
    -- Langfuse's own price: totalCost, else costDetails.total, else the sum of costDetails.
    coalesce(
        total_amount,
        list_sum([TRY_CAST(e.value ->> '$' AS {MONEY}) FOR e IN cost_e IF e.key = 'total']),
        list_sum([TRY_CAST(e.value ->> '$' AS {MONEY}) FOR e IN cost_e IF e.key <> 'total'])
    ) AS langfuse_cost,
    environment, user_id, session_id, prompt_name, TRY_CAST(prompt_version AS INTEGER) AS prompt_version,
    CASE WHEN json_type(tags_j) = 'ARRAY' THEN TRY_CAST(tags_j AS VARCHAR[]) END AS tags,
    CASE WHEN json_type(metadata_j) = 'OBJECT' THEN metadata_j END AS metadata
FROM checked
"""


def _allocation_sql(keys: list[str]) -> str:
    """A MAP of key -> value: metadata, else a `key:value` tag, else a first-class field, else unallocated."""
    parts = []
    for key in keys:  # keys are validated identifiers (settings.py): safe to inline
        resolved = [
            f"nullif(trim(o.metadata ->> '$.\"{key}\"'), '')",
            f"nullif(trim(substr(list_filter(o.tags, lambda t: starts_with(t, '{key}:'))[1], {len(key) + 2})), '')",
        ]
        if key in FIRST_CLASS_FIELDS:
            resolved.append(f"nullif(trim(o.{FIRST_CLASS_FIELDS[key]}), '')")
        parts.append(f"'{key}': coalesce({', '.join(resolved)}, '{UNALLOCATED}')")
    return "MAP {" + ", ".join(parts) + "}"


def _model_prices(conn: duckdb.DuckDBPyConnection, day: date) -> None:
    models = [row[0] for row in conn.execute(
        "SELECT DISTINCT model FROM observations WHERE reason IS NULL AND model IS NOT NULL").fetchall()]
    rows = []
    for model in models:
        price = pricing.price_of(model, day)
        rows.append({
            "model": model,
            "provider": pricing.provider_of(model),
            "input_rate": price and price.input,
            "cached_rate": price and price.cached,
            "cache_write_rate": price and price.cache_write,
            "output_rate": price and price.output,
        })
    frame = pd.DataFrame(rows, columns=["model", "provider", "input_rate", "cached_rate", "cache_write_rate", "output_rate"])
    conn.register("model_prices_frame", frame.astype(object))
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE model_prices AS SELECT model::VARCHAR AS model, provider::VARCHAR AS provider,
            input_rate::{RATE} AS input_rate, cached_rate::{RATE} AS cached_rate,
            cache_write_rate::{RATE} AS cache_write_rate, output_rate::{RATE} AS output_rate
        FROM model_prices_frame""")
    conn.unregister("model_prices_frame")


def stage_day(conn: duckdb.DuckDBPyConnection, day: date, allocation_keys: list[str]) -> None:
    """Build temp tables `day_generations` and `day_quarantine` for `day` from `export_rows`."""
    conn.execute(_MACROS)
    conn.execute(_VALIDATE)
    _model_prices(conn, day)
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE day_generations AS
        WITH latest AS (   -- one row per observation id: the latest export wins, across all files read
            SELECT * FROM observations
            WHERE reason IS NULL
              AND (type = 'GENERATION' OR langfuse_cost IS NOT NULL OR total_tokens > 0)
            QUALIFY row_number() OVER (PARTITION BY id ORDER BY file_rank DESC, line DESC) = 1
        )
        SELECT o.start_time::DATE AS day, o.id AS observation_id, o.trace_id, o.project_id, o.type, o.name,
            o.start_time, o.model, coalesce(p.provider, 'unknown') AS provider,
            o.input_tokens, o.output_tokens, o.cached_tokens, o.cache_write_tokens, o.reasoning_tokens,
            o.total_tokens,
            CASE WHEN o.langfuse_cost IS NOT NULL THEN o.langfuse_cost
                 WHEN p.input_rate IS NOT NULL THEN (
                      o.input_tokens * p.input_rate + o.cached_tokens * p.cached_rate
                    + o.cache_write_tokens * p.cache_write_rate
                    + (o.output_tokens + o.reasoning_tokens) * p.output_rate)::{MONEY}
            END AS cost_usd,
            CASE WHEN o.langfuse_cost IS NOT NULL THEN 'langfuse'
                 WHEN p.input_rate IS NOT NULL THEN 'price_table'
                 ELSE 'unpriced' END AS cost_source,
            o.environment, o.user_id, o.session_id, o.prompt_name, o.prompt_version, o.tags,
            {_allocation_sql(allocation_keys)} AS allocation,
            o.file AS source_file
        FROM latest o LEFT JOIN model_prices p USING (model)
        WHERE o.start_time >= $day AND o.start_time < $day + INTERVAL 1 DAY
    """, {"day": day})
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE day_quarantine AS
        SELECT 'langfuse_generations' AS source, $day AS day, file, line, nullif(trim(id), '') AS observation_id,
               reason
        FROM observations
        WHERE reason IS NOT NULL AND coalesce(start_time::DATE, file_day) = $day
    """, {"day": day})
