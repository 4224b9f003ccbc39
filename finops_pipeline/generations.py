"""From validated observation rows to the day's generations: dedup, price and allocate, all in SQL.

Input: `scratch.observations` and `scratch.sources` (see sources/observation_rows.py).
Output: the SELECT of the day's rows for `langfuse_generations`, and the temp table `day_quarantine`.
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


def _allocation_sql(keys: list[str]) -> str:
    """A MAP of key -> value: metadata, else a `key:value` tag, else a first-class field, else unallocated."""
    parts = []
    for i, key in enumerate(keys, start=1):  # keys are validated identifiers (settings.py): safe to inline
        resolved = [
            f"nullif(trim(o.metadata_values[{i}]), '')",
            f"CASE WHEN len(o.tags) > 0 THEN nullif(trim(substr("
            f"list_filter(o.tags, lambda t: starts_with(t, '{key}:'))[1], {len(key) + 2})), '') END",
        ]
        if key in FIRST_CLASS_FIELDS:
            resolved.append(f"nullif(trim(o.{FIRST_CLASS_FIELDS[key]}), '')")
        parts.append(f"'{key}': coalesce({', '.join(resolved)}, '{UNALLOCATED}')")
    # A struct cast to a MAP: a MAP literal costs several times more per row.
    return "{" + ", ".join(parts) + "}::MAP(VARCHAR, VARCHAR)"


def register_model_prices(conn: duckdb.DuckDBPyConnection, models: list[str], day: date,
                          provider_map: dict[str, str]) -> None:
    """The temp table `model_prices`: provider and per-token rates on `day` of each of `models`."""
    rows = []
    for model in models:
        price = pricing.price_of(model, day)
        rows.append({
            "model": model,
            "provider": pricing.provider_of(model, provider_map),
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


def prepare_day(conn: duckdb.DuckDBPyConnection, day: date, provider_map: dict[str, str]) -> None:
    """Price table rows for the models seen, and the temp table `day_quarantine`, for `day`."""
    models = [row[0] for row in conn.execute(
        "SELECT DISTINCT model FROM scratch.observations WHERE reason IS NULL AND model IS NOT NULL").fetchall()]
    register_model_prices(conn, models, day, provider_map)
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE day_quarantine AS
        SELECT 'langfuse_generations' AS source, $day AS day, f.file, o.line, nullif(trim(o.id), '') AS observation_id,
               o.reason
        FROM scratch.observations o JOIN scratch.sources f USING (file_rank)
        WHERE o.reason IS NOT NULL AND coalesce(o.start_time::DATE, f.file_day) = $day
    """, {"day": day})


def generations_sql(allocation_keys: list[str]) -> str:
    """The day's rows of `langfuse_generations` (parameter `$day`), from `scratch.observations`."""
    return f"""
        WITH valid AS NOT MATERIALIZED (  -- read twice, but materialising a day of rows costs more
            SELECT * FROM scratch.observations
            WHERE reason IS NULL AND (type = 'GENERATION' OR langfuse_cost IS NOT NULL OR total_tokens > 0)
        ),
        -- An id in several files (a row on a window bound, a re-export): the latest export wins. Langfuse
        -- exports `FROM observations FINAL`, so one file holds an id once; should it not, keep the costlier.
        repeated AS (SELECT id FROM valid GROUP BY id HAVING count(*) > 1),
        latest AS (
            SELECT * FROM valid ANTI JOIN repeated USING (id)
            UNION ALL
            SELECT * FROM (SELECT * FROM valid SEMI JOIN repeated USING (id))
            QUALIFY row_number() OVER (PARTITION BY id ORDER BY file_rank DESC, langfuse_cost DESC NULLS LAST,
                                                              total_tokens DESC, line DESC NULLS LAST) = 1
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
            f.file AS source_file
        FROM latest o JOIN scratch.sources f USING (file_rank) LEFT JOIN model_prices p USING (model)
        WHERE o.start_time >= $day AND o.start_time < $day + INTERVAL 1 DAY
    """
