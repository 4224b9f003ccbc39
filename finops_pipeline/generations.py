"""From validated observation rows to the day's generations: dedup, price and allocate, all in SQL.

Input: `scratch.observations` and `scratch.sources` (see sources/observation_rows.py).
Output: the SELECT of the day's rows for `langfuse_generations`, and the temp table `day_quarantine`.
"""

from __future__ import annotations

from datetime import date

import duckdb
import pandas as pd

from finops_pipeline import pricing
from finops_pipeline.sources.observation_rows import Vocabulary
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
# An embedding: all its usage is input, whatever key it came under (often only `total`). Its type says so,
# or its price: the price table lists an input price and no output price.
_EMBEDDING = "(o.type = 'EMBEDDING' OR coalesce(p.input_rate IS NOT NULL AND p.output_rate IS NULL, false))"


def _allocation_sql(vocabulary: Vocabulary) -> str:
    """A MAP of key -> value: metadata (any spelling, see Vocabulary), else a `key:value` tag (the exact key
    first, then any spelling), else a first-class field, else unallocated."""
    parts = []
    for i, (key, spellings) in enumerate(zip(vocabulary.keys, vocabulary.spellings), start=1):
        # keys are validated identifiers (settings.py): safe to inline
        names = "[" + ", ".join(f"'{n}'" for n in spellings) + "]"
        tag = (f"coalesce(list_filter(o.tags, lambda t: starts_with(t, '{key}:'))[1], list_filter(o.tags, lambda t: "
               f"contains(t, ':') AND list_contains({names}, scratch.normal_key(split_part(t, ':', 1))))[1])")
        resolved = [
            f"nullif(trim(o.metadata_values[{i}]), '')",
            f"CASE WHEN len(o.tags) > 0 THEN nullif(trim(substr({tag}, strpos({tag}, ':') + 1)), '') END",
        ]
        if key in FIRST_CLASS_FIELDS:
            resolved.append(f"nullif(trim(o.{FIRST_CLASS_FIELDS[key]}), '')")
        parts.append(f"'{key}': coalesce({', '.join(resolved)}, '{UNALLOCATED}')")
    # A struct cast to a MAP: a MAP literal costs several times more per row.
    return "{" + ", ".join(parts) + "}::MAP(VARCHAR, VARCHAR)"


def register_model_prices(conn: duckdb.DuckDBPyConnection, models: dict[str, set[str]], day: date,
                          provider_map: dict[str, str]) -> None:
    """The temp table `model_prices`: per model, who serves it (`provider`), whether the price table lists
    it under that provider (`listed`), the rates of the staging table's token kinds, the request fee, and
    `unit_rates`, the rates of the other units its calls used (`models` maps each model to those units).
    A rate is NULL where the model is not priced in that unit."""
    rows = []
    for model, units in models.items():
        provider = pricing.provider_of(model, provider_map)
        price = pricing.rates(model, day, provider, frozenset(u for u in units if u in pricing.UNIT_NAMES))
        main = {kind: price and price.rate(unit) for kind, unit in pricing.MAIN_UNITS.items()}
        rows.append({
            "model": model, "provider": provider, "listed": price is not None,
            **{f"{kind}_rate": rate for kind, rate in main.items()},
            "per_call": price.per_call if price else None,
            "unit_keys": sorted(units),
            "unit_rates": [None if rate is None else str(rate) for rate in (price and price.rate(u) for u in sorted(units))],
        })
    frame = pd.DataFrame(rows, columns=["model", "provider", "listed", *(f"{k}_rate" for k in pricing.MAIN_UNITS),
                                        "per_call", "unit_keys", "unit_rates"])
    conn.register("model_prices_frame", frame.astype(object))
    kinds = ", ".join(f"{k}_rate::{RATE} AS {k}_rate" for k in pricing.MAIN_UNITS)
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE model_prices AS
        SELECT model::VARCHAR AS model, provider::VARCHAR AS provider, listed::BOOLEAN AS listed, {kinds},
               per_call::{RATE} AS per_call,
               map_from_entries(list_zip(unit_keys::VARCHAR[], unit_rates::VARCHAR[]::{RATE}[])
                                ::STRUCT(key VARCHAR, value {RATE})[]) AS unit_rates
        FROM model_prices_frame""")
    conn.unregister("model_prices_frame")


def prepare_day(conn: duckdb.DuckDBPyConnection, day: date, provider_map: dict[str, str]) -> None:
    """Price table rows for the models seen, and the temp table `day_quarantine`, for `day`."""
    models = dict(conn.execute("""
        SELECT model, list_distinct(flatten(list(map_keys(usage_other)))) FROM scratch.observations
        WHERE reason IS NULL AND model IS NOT NULL GROUP BY model""").fetchall())
    register_model_prices(conn, {m: set(units or ()) for m, units in models.items()}, day, provider_map)
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE day_quarantine AS
        SELECT 'langfuse_generations' AS source, $day AS day, f.file, o.line, nullif(trim(o.id), '') AS observation_id,
               o.reason
        FROM scratch.observations o JOIN scratch.sources f USING (file_rank)
        WHERE o.reason IS NOT NULL AND coalesce(o.start_time::DATE, f.file_day) = $day
    """, {"day": day})


def generations_sql(vocabulary: Vocabulary) -> str:
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
            -- an embedding's usage is all input, whatever key it came under (often only `total`)
            CASE WHEN o.total_only AND {_EMBEDDING} THEN o.total_tokens ELSE o.input_tokens END AS input_tokens,
            o.output_tokens, o.cached_tokens, o.cache_write_tokens, o.reasoning_tokens, o.total_tokens, o.usage_other,
            CASE WHEN o.langfuse_cost IS NOT NULL THEN o.langfuse_cost
                 WHEN coalesce(p.listed, false) AND len(list_filter(u.used, lambda x: x.rate IS NOT NULL)) > 0
                 THEN (list_sum(list_transform(list_filter(u.used, lambda x: x.rate IS NOT NULL),
                                               lambda x: x.n * x.rate)) + coalesce(p.per_call, 0))::{MONEY}
            END AS cost_usd,
            CASE WHEN o.langfuse_cost IS NOT NULL THEN 'langfuse'
                 WHEN NOT coalesce(p.listed, false) OR len(list_filter(u.used, lambda x: x.rate IS NOT NULL)) = 0
                 THEN 'unpriced'
                 WHEN len(list_filter(u.used, lambda x: x.rate IS NULL)) > 0 THEN 'partially_priced'
                 ELSE 'price_table' END AS cost_source,
            CASE WHEN o.langfuse_cost IS NULL THEN map_from_entries(list_transform(
                list_filter(u.used, lambda x: x.rate IS NULL OR NOT coalesce(p.listed, false)),
                lambda x: {{'key': x.unit, 'value': x.n}})) END AS unpriced_usage,
            o.environment, o.user_id, o.session_id, o.prompt_name, o.prompt_version, o.tags,
            {_allocation_sql(vocabulary)} AS allocation,
            f.file AS source_file
        FROM (SELECT *, input_tokens + output_tokens + cached_tokens + cache_write_tokens + reasoning_tokens = 0
                        AND coalesce(cardinality(usage_other), 0) = 0 AND total_tokens > 0 AS total_only
              FROM latest) o
        JOIN scratch.sources f USING (file_rank) LEFT JOIN model_prices p USING (model),
        -- What the call used, unit by unit, with the price table's rate (NULL: not priced in that unit). A chat
        -- call whose usage is only a total cannot be split into input and output: its tokens have no rate.
        LATERAL (SELECT CASE WHEN o.langfuse_cost IS NULL THEN list_filter([
            {{'unit': 'input_tokens', 'n': CASE WHEN o.total_only AND {_EMBEDDING} THEN o.total_tokens
                                               ELSE o.input_tokens END, 'rate': p.input_rate}},
            {{'unit': 'cache_read_tokens', 'n': o.cached_tokens, 'rate': p.cached_rate}},
            {{'unit': 'cache_write_tokens', 'n': o.cache_write_tokens, 'rate': p.cache_write_rate}},
            {{'unit': 'output_tokens', 'n': o.output_tokens, 'rate': p.output_rate}},
            {{'unit': 'output_reasoning_tokens', 'n': o.reasoning_tokens, 'rate': p.reasoning_rate}},
            {{'unit': 'total_tokens', 'n': CASE WHEN o.total_only AND NOT {_EMBEDDING} THEN o.total_tokens ELSE 0 END,
              'rate': NULL::{RATE}}}]
            || list_transform(map_entries(coalesce(o.usage_other, MAP {{}}::MAP(VARCHAR, BIGINT))),
                              lambda e: {{'unit': e.key, 'n': e.value, 'rate': map_extract_value(p.unit_rates, e.key)}}),
            lambda x: x.n > 0) END AS used) u
        WHERE o.start_time >= $day AND o.start_time < $day + INTERVAL 1 DAY
    """
