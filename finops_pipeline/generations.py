"""From validated observation rows to the day's generations: dedup, price and allocate, all in SQL.

Input: `scratch.observations`, `scratch.traces` and `scratch.sources` (see sources/observation_rows.py).
Output: the SELECT of the day's rows for `langfuse_generations`, and the temp table `day_quarantine`.
"""

from __future__ import annotations

from datetime import date

import duckdb
import pandas as pd

from finops_pipeline import pricing
from finops_pipeline.sources.observation_rows import COST_CARRYING, Vocabulary
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
_EMBEDDING = "(type = 'EMBEDDING' OR coalesce(input_rate IS NOT NULL AND output_rate IS NULL, false))"


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
        UNION ALL  -- a trace row that cannot be read, on its own day (the days around read it too)
        SELECT 'langfuse_generations', $day, f.file, t.line, NULL, t.reason
        FROM scratch.traces t JOIN scratch.sources f USING (file_rank)
        WHERE t.reason IS NOT NULL AND coalesce(t.timestamp::DATE, f.file_day) = $day
    """, {"day": day})


def generations_sql(vocabulary: Vocabulary) -> str:
    """The day's rows of `langfuse_generations` (parameter `$day`), from `scratch.observations`."""
    return f"""
        WITH valid AS NOT MATERIALIZED (  -- read twice, but materialising a day of rows costs more
            SELECT *, coalesce(project_id, '') AS project FROM scratch.observations WHERE reason IS NULL AND {COST_CARRYING}
        ),
        -- An id (of a project: ids are unique per project) in several files (a row on a window bound, a
        -- re-export, both export layouts): the latest export wins. Langfuse
        -- exports `FROM observations FINAL`, so one file holds an id once; should it not, keep the costlier.
        repeated AS (SELECT project, id FROM valid GROUP BY ALL HAVING count(*) > 1),
        latest AS (
            SELECT * FROM valid ANTI JOIN repeated USING (project, id)
            UNION ALL
            SELECT * FROM (SELECT * FROM valid SEMI JOIN repeated USING (project, id))
            QUALIFY row_number() OVER (PARTITION BY project, id ORDER BY file_rank DESC, langfuse_cost DESC NULLS LAST,
                                                              total_tokens DESC, line DESC NULLS LAST) = 1
        ),
        day_rows AS (
            SELECT o.*, f.file AS source_file, coalesce(p.provider, 'unknown') AS provider,
                   o.input_tokens + o.output_tokens + o.cached_tokens + o.cache_write_tokens + o.reasoning_tokens = 0
                   AND coalesce(cardinality(o.usage_other), 0) = 0 AND o.total_tokens > 0 AS total_only,
                   p.* EXCLUDE (model, provider)
            FROM latest o JOIN scratch.sources f USING (file_rank) LEFT JOIN model_prices p USING (model)
            WHERE o.start_time >= $day AND o.start_time < $day + INTERVAL 1 DAY
        ),
        -- What a call Langfuse did not price used, unit by unit, with the price table's rate (NULL: not priced in
        -- that unit). A chat call whose usage is only a total cannot be split into input and output: no rate.
        -- One pass over the day (its dedup is the costly part): CASE computes this only for the rows that need it.
        usage AS (
            SELECT * REPLACE (CASE WHEN total_only AND {_EMBEDDING} THEN total_tokens ELSE input_tokens END AS input_tokens),
                CASE WHEN langfuse_cost IS NULL THEN list_filter([
                    {{'unit': 'input_tokens', 'n': CASE WHEN total_only AND {_EMBEDDING} THEN total_tokens ELSE input_tokens END,
                      'rate': input_rate}},
                    {{'unit': 'cache_read_tokens', 'n': cached_tokens, 'rate': cached_rate}},
                    {{'unit': 'cache_write_tokens', 'n': cache_write_tokens, 'rate': cache_write_rate}},
                    {{'unit': 'output_tokens', 'n': output_tokens, 'rate': output_rate}},
                    {{'unit': 'output_reasoning_tokens', 'n': reasoning_tokens, 'rate': reasoning_rate}},
                    {{'unit': 'total_tokens', 'n': CASE WHEN total_only AND NOT {_EMBEDDING} THEN total_tokens ELSE 0 END,
                      'rate': NULL::{RATE}}}]
                    || list_transform(map_entries(coalesce(usage_other, MAP {{}}::MAP(VARCHAR, BIGINT))),
                                      lambda e: {{'unit': e.key, 'n': e.value, 'rate': map_extract_value(unit_rates, e.key)}}),
                    lambda x: x.n > 0) END AS used
            FROM day_rows
        ),
        rated AS (
            SELECT *, CASE WHEN langfuse_cost IS NULL THEN list_filter(used, lambda x: x.rate IS NOT NULL) END AS rated,
                      CASE WHEN langfuse_cost IS NULL THEN list_filter(used, lambda x: x.rate IS NULL) END AS unrated
            FROM usage
        ),
        priced AS (
            SELECT * EXCLUDE (used, rated, unrated),
                CASE WHEN langfuse_cost IS NOT NULL THEN langfuse_cost
                     WHEN coalesce(listed, false) AND len(rated) > 0
                     THEN (list_sum(list_transform(rated, lambda x: x.n * x.rate)) + coalesce(per_call, 0))::{MONEY}
                END AS cost_usd,
                CASE WHEN langfuse_cost IS NOT NULL THEN 'langfuse'
                     WHEN NOT coalesce(listed, false) OR len(rated) = 0 THEN 'unpriced'
                     WHEN len(unrated) > 0 THEN 'partially_priced' ELSE 'price_table' END AS cost_source,
                CASE WHEN langfuse_cost IS NULL THEN map_from_entries(list_transform(
                    CASE WHEN coalesce(listed, false) THEN unrated ELSE used END,
                    lambda x: {{'key': x.unit, 'value': x.n}})) END AS unpriced_usage
            FROM rated
        )
        SELECT start_time::DATE AS day, id AS observation_id, trace_id, project_id, type, name, start_time, model,
            provider, input_tokens, output_tokens, cached_tokens, cache_write_tokens, reasoning_tokens, total_tokens,
            usage_other, cost_usd, cost_source, unpriced_usage, environment, user_id, session_id, prompt_name,
            prompt_version, tags, {_allocation_sql(vocabulary)} AS allocation, source_file
        FROM priced o
    """
