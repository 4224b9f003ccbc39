"""The day's cost as a FOCUS 1.2 file (FinOps Open Cost and Usage Specification), for a FinOps tool's
FOCUS intake. The README's "FOCUS 1.2" section is the user's account; in short:

One `Usage` row per delivered row (day x allocation x provider x model x Langfuse project) and usage unit,
because each unit has its own price (FOCUS_Spec v1.2, columns/skuid.md, listunitprice.md):

- The SKU is the provider, model and unit: `SkuId` `openai/gpt-4o/input`, `SkuMeter` "Input Tokens". The
  units are genai-prices' (`allocated_costs.priced_usage`: what the cost paid for). Reasoning tokens are
  output tokens, unless the price table prices them apart. `SkuPriceId` = `SkuId`.
- Tokens and characters are priced per million ("1000000 Tokens"), as the price lists are, other units one
  by one. `ListUnitPrice` is genai-prices' price for the day, `ListCost` = `ListUnitPrice` x
  `PricingQuantity` exactly, `ConsumedQuantity` the units.
- `BilledCost` = `EffectiveCost` = `ContractedCost` is the delivered row's cost on the cost basis, split
  across its units in proportion to their list cost; the costliest unit takes the remainder, so the units
  sum to the row exactly.
- A row the price table does not price in every unit it used stays one row of all its tokens (or its
  requests) at the price charged: `x_ListPriceSource` `charged`, not `genai-prices`.
- A bill's spend that no trace covers (invoice basis) has no known quantity, and FOCUS allows none missing
  on `Usage`: it is an `Adjustment` per bill model, token kind and project, its quantities and unit price
  null. No tokens are made up.
- `SubAccountId` (the OpenAI project, Anthropic workspace) only where a bill says it. `Tags` and
  `x_Feature`: the delivered allocation keys that resolved, hashed as configured. `InvoiceId` null.
- Numbers are written with a decimal point (`55110.0`), as the spec's Decimal type wants.
"""

from __future__ import annotations

import re
from datetime import date
from functools import lru_cache

import duckdb
import pandas as pd
from genai_prices.data_snapshot import get_snapshot
from genai_prices.data_units import unit_data

from finops_pipeline import pricing
from finops_pipeline.destinations.finout import dimension_expressions, safe_text
from finops_pipeline.generations import UNALLOCATED, register_model_prices
from finops_pipeline.reconciliation import BILLED_KEY, register_model_keys
from finops_pipeline.warehouse import MONEY

SERVICE_NAMES = {"openai": "OpenAI API", "anthropic": "Claude API"}

# In the spec's order (alphabetical): the mandatory columns, then the conditional and recommended ones used.
FOCUS_COLUMNS = [
    "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency", "BillingPeriodEnd",
    "BillingPeriodStart", "ChargeCategory", "ChargeClass", "ChargeDescription", "ChargeFrequency",
    "ChargePeriodEnd", "ChargePeriodStart", "ConsumedQuantity", "ConsumedUnit", "ContractedCost", "EffectiveCost",
    "InvoiceId", "InvoiceIssuerName", "ListCost", "ListUnitPrice", "PricingQuantity", "PricingUnit", "ProviderName",
    "PublisherName", "ServiceCategory", "ServiceName", "ServiceSubcategory", "SkuId", "SkuMeter", "SkuPriceDetails",
    "SkuPriceId", "SubAccountId", "SubAccountName", "Tags",
]
CUSTOM_COLUMNS = ["x_Model", "x_Feature", "x_Calls", "x_CostSource", "x_CostBasis", "x_ListPriceSource",
                  "x_LangfuseProjectId"]

# The bill's token kinds (provider_costs.token_kind) as usage units.
BILL_UNITS = {"input": "input_tokens", "cached": "cache_read_tokens", "cache_write": "cache_write_tokens",
              "output": "output_tokens"}
# What the SKU calls the main units; every other unit is named after itself (input_audio_tokens: `input-audio`,
# "Input Audio Tokens").
_NAMES = {"input_tokens": ("input", "Input Tokens"), "cache_read_tokens": ("cached-input", "Cached Input Tokens"),
          "cache_write_tokens": ("cache-write", "Cache Write Tokens"), "output_tokens": ("output", "Output Tokens"),
          "output_reasoning_tokens": ("reasoning-output", "Reasoning Output Tokens"),
          "tokens": ("tokens", "Tokens"), "requests": ("requests", "Requests")}
PRICE = "DECIMAL(38, 15)"     # USD per PricingUnit
QUANTITY = "DECIMAL(38, 6)"   # PricingUnits: millions of tokens or characters to the unit, else units


def usage_units() -> list[dict]:
    """Every usage unit a row may carry, with its SKU suffix, meter, pricing unit, consumed unit and how many
    consumed units one pricing unit is: tokens and characters priced per million, as the price lists are."""
    units = []
    for unit, data in {**unit_data, "tokens": {"dimensions": {"family": "tokens"}},
                       "requests": {"dimensions": {"family": "requests"}}}.items():
        family = data["dimensions"]["family"]
        suffix, meter = _NAMES.get(unit) or (re.sub(r"_tokens$", "", unit).replace("_", "-"),
                                             " ".join(w.capitalize() for w in unit.split("_")))
        consumed = {"tokens": "Tokens", "characters": "Characters", "durations": "Seconds",
                    "document_pages": "Pages"}.get(family) or meter.split()[-1]
        scale = 1_000_000 if family in ("tokens", "characters") else 1
        units.append({"unit": unit, "suffix": suffix, "meter": meter, "consumed_unit": consumed,
                      "pricing_unit": f"{scale} {consumed}" if scale > 1 else consumed, "scale": scale})
    return units


def sku_model(provider: str, model: str) -> str:
    """The model part of a SKU: the name traces and bills agree on (`pricing.model_key`), unless the price
    table lists several models under that name (gpt-4o and gpt-4o-2024-05-13, Titan embeddings v1 and v2, each
    priced apart): then the table's own name of this one. A model the table does not list: as named."""
    key = pricing.model_key(model) or model
    listed = _table_models_by_key(provider).get(key, set())
    if len(listed) > 1:
        return pricing.table_model(provider, model) or model.strip().lower()
    # a model no price lists keeps its name (`acme-ft-v1`: the key would drop a version)
    return key if listed or pricing.table_model(provider, model) or pricing.table_model(provider, key) else model


@lru_cache(maxsize=None)
def _table_models_by_key(provider: str) -> dict[str, set[str]]:
    """model_key -> the price table's models of `provider` that share it."""
    by_key: dict[str, set[str]] = {}
    for listed in get_snapshot().providers:
        if listed.id == provider:
            for m in listed.models:
                by_key.setdefault(pricing.model_key(m.id), set()).add(m.id)
    return by_key


def publisher_of(provider: str, model: str) -> str:
    """Who made the model: its vendor where a cloud resells it (Claude on Bedrock: anthropic), else `provider`."""
    vendor = pricing.provider_of(pricing.model_key(model))
    return vendor if vendor != pricing.UNKNOWN else provider


def prepare_focus(conn: duckdb.DuckDBPyConnection, day: date, basis: str, provider_map: dict[str, str]) -> None:
    """The temp tables `focus_rows_sql` reads beside `delivered`: `model_prices` (the list prices of the
    units the day's traced models used), `model_keys`, `focus_units`, `focus_skus` (provider, model,
    sku_model), `focus_sub_accounts` (provider, model_key, project: the one project of a model's bill) and
    `focus_billed_lines` (the bill's lines that no trace covers, by model, kind and project)."""
    models = dict(conn.execute("""
        SELECT model, list_distinct(flatten(list(map_keys(priced_usage)))) FROM delivered
        WHERE source = 'langfuse' GROUP BY model""").fetchall())
    register_model_prices(conn, {m: {*(units or ()), *pricing.MAIN_UNITS.values()} for m, units in models.items()},
                          day, provider_map)
    register_model_keys(conn, day)
    _register(conn, "focus_units", pd.DataFrame(usage_units()))
    # Only a bill says which project spent; on the langfuse basis the bills are not this asset's input.
    bills = "WHERE day = $day" if basis == "invoice" else "WHERE false"
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE focus_billed AS
        SELECT provider, b.model, {BILLED_KEY} AS model_key, token_kind, line_item, project_id, cost_usd
        FROM provider_costs b LEFT JOIN model_keys k USING (provider, model) {bills}""", {"day": day} if "$day" in bills else [])
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE focus_sub_accounts AS
        SELECT provider, model_key, any_value(project_id) AS project FROM focus_billed GROUP BY ALL
        HAVING count(DISTINCT project_id) = 1 AND count(project_id) = count(*)""")
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE focus_billed_lines AS
        SELECT provider, model_key, coalesce(model, line_item) AS model, token_kind, project_id, sum(cost_usd) AS cost_usd
        FROM focus_billed SEMI JOIN (SELECT provider, model AS model_key FROM delivered WHERE source = 'invoice')
             USING (provider, model_key)
        GROUP BY ALL HAVING sum(cost_usd) <> 0""")
    named = conn.execute("""
        SELECT DISTINCT provider, model FROM delivered WHERE source = 'langfuse'
        UNION SELECT DISTINCT provider, model FROM focus_billed_lines""").fetchall()
    _register(conn, "focus_skus", pd.DataFrame([(p, m, sku_model(p, m), publisher_of(p, m)) for p, m in named],
                                               columns=["provider", "model", "sku_model", "publisher"]))


def _register(conn: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame) -> None:
    conn.register(f"{table}_frame", frame)
    conn.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT * FROM {table}_frame")
    conn.unregister(f"{table}_frame")


def provider_names() -> dict[str, str]:
    """Provider id -> its name as the price table gives it (`aws` -> "AWS Bedrock")."""
    return {p.id: p.name for p in get_snapshot().providers}


def _sql_map(values: dict[str, str]) -> str:
    quote = lambda s: "'" + s.replace("'", "''") + "'"  # noqa: E731
    return "MAP {" + ", ".join(f"{quote(k)}: {quote(v)}" for k, v in sorted(values.items())) + "}"


def focus_rows_sql(basis: str, allocation_keys: list[str], dimensions: list[str], hashed: list[str]) -> str:
    """The day's FOCUS rows on `basis` from the temp tables of `prepare_focus` and `delivered` (parameter
    `$salt` when `hashed`). Of the allocation keys, only those among the delivered `dimensions` leave, hashed as
    configured: rows that differ only in one not delivered are summed into one, as in the Finout file."""
    expressions = dimension_expressions(allocation_keys, hashed)
    delivered_keys = [k for k in allocation_keys if k in dimensions]
    kept = delivered_keys + (["feature"] if "feature" in allocation_keys and "feature" not in delivered_keys
                             and "service_name" in dimensions else [])
    sum_maps = ("map_from_entries(list_transform(list_distinct(flatten(list_transform({maps}, lambda m: map_keys(m)))), "
                "lambda k: {{'key': k, 'value': list_sum(list_transform({maps}, lambda m: coalesce(m[k], 0)))::BIGINT}}))")
    tags = ("to_json(map_from_entries(list_filter([" + ", ".join(
        f"{{'key': '{k}', 'value': {expressions[k]}}}" for k in delivered_keys) + f"]::STRUCT(key VARCHAR, value VARCHAR)[], "
        f"lambda t: t.value <> '{UNALLOCATED}')))")
    feature = (f"nullif({expressions['feature']}, '{UNALLOCATED}')"
               if "feature" in allocation_keys and {"feature", "service_name"} & set(dimensions) else "NULL")
    names = _sql_map(provider_names())
    service = ("CASE provider " + " ".join(f"WHEN '{p}' THEN '{n}'" for p, n in SERVICE_NAMES.items())
               + " ELSE provider_name END")
    sku = "CASE WHEN u.suffix IS NOT NULL THEN provider || '/' || sku_model || '/' || u.suffix END"
    utc = "'%Y-%m-%dT%H:%M:%SZ'"
    description = """model || ': ' || CASE
        WHEN category = 'Adjustment' THEN coalesce(lower(meter) || ' ', '')
             || 'billed, not attributed to a traced call (no quantity known)'
        WHEN price_source = 'charged' AND unit = 'requests' THEN 'requests at the price charged (no usage by unit reported)'
        WHEN price_source = 'charged' THEN 'tokens at the price charged (the price table does not list the price of '
             || 'every unit used)'
        ELSE lower(meter) END"""
    return f"""
        WITH grouped AS (  -- the delivered rows, by the dimensions that leave (and the Langfuse project)
            SELECT day, provider, model, project_id, source,
                   map_from_entries(list_filter(map_entries(allocation), lambda e: list_contains({kept!r}::VARCHAR[], e.key)))
                       AS allocation,
                   sum(cost_usd)::{MONEY} AS cost_usd, sum(calls) AS calls, sum(unpriced_calls) AS unpriced_calls,
                   sum(total_tokens) AS total_tokens,
                   -- what the cost paid for; a day allocated before version 6 has only its token columns
                   CASE WHEN bool_and(priced_usage IS NOT NULL) THEN {sum_maps.format(maps="list(priced_usage)")}
                        ELSE map_from_entries(list_filter([
                       {{'key': 'input_tokens', 'value': sum(input_tokens)}}, {{'key': 'cache_read_tokens', 'value': sum(cached_tokens)}},
                       {{'key': 'cache_write_tokens', 'value': sum(cache_write_tokens)}}, {{'key': 'output_tokens', 'value': sum(output_tokens)}},
                       {{'key': 'output_reasoning_tokens', 'value': sum(reasoning_tokens)}}], lambda e: e.value > 0)) END AS usage,
                   bool_and(priced_usage IS NOT NULL) AS has_priced_usage
            FROM delivered WHERE source = 'langfuse' GROUP BY ALL
        ), traced AS (
            SELECT g.*, row_number() OVER () AS row_id, g.calls - g.unpriced_calls AS priced_calls,
                   f.sku_model, f.publisher, s.project AS sub_account, p.unit_rates, p.per_call
            FROM grouped g
            LEFT JOIN focus_skus f USING (provider, model)
            LEFT JOIN model_keys k USING (provider, model)
            LEFT JOIN focus_sub_accounts s ON s.provider = g.provider AND s.model_key = coalesce(k.model_key, g.model)
            LEFT JOIN model_prices p ON p.model = g.model AND p.provider = g.provider
        ), priced AS (  -- a cost, or usage priced at $0 (a free tier, a 100% discount): not calls no price covers
            SELECT * FROM traced WHERE cost_usd <> 0 OR (has_priced_usage AND cardinality(usage) > 0)
        ), units AS (
            SELECT row_id, unit, sum(n)::BIGINT AS n, any_value(rate) AS rate
            FROM (SELECT row_id, e.value AS n,
                         -- reasoning is billed as output, unless the price table prices it apart
                         CASE WHEN e.key = 'output_reasoning_tokens'
                                   AND unit_rates['output_reasoning_tokens'] IS NOT DISTINCT FROM unit_rates['output_tokens']
                              THEN 'output_tokens' ELSE e.key END AS unit,
                         unit_rates[CASE WHEN e.key = 'output_reasoning_tokens'
                                   AND unit_rates['output_reasoning_tokens'] IS NOT DISTINCT FROM unit_rates['output_tokens']
                              THEN 'output_tokens' ELSE e.key END] AS rate
                  -- a usage key no price table unit fits (`unsorted:...`) is no SKU: its cost, if any, is the others'
                  FROM (SELECT row_id, unit_rates, unnest(map_entries(usage)) AS e FROM priced)
                  WHERE e.key IN (SELECT unit FROM focus_units)
                  UNION ALL  -- a fee per request (Perplexity's)
                  SELECT row_id, priced_calls, 'requests', per_call FROM priced WHERE per_call > 0 AND priced_calls > 0)
            GROUP BY ALL
        ), judged AS (  -- (aggregates joined back, not windows: a large day then streams in little memory)
            SELECT row_id, sum(n * rate) AS total,
                   -- the costliest unit (the first by name of equals) takes the rounding remainder
                   arg_min(unit, {{'weight': -(n * rate), 'unit': unit}}) AS top
            FROM units GROUP BY row_id HAVING bool_and(rate IS NOT NULL) AND sum(n * rate) > 0
        ), shares AS (  -- rows priced in every unit they used: a row per unit, at its list price
            SELECT u.*, j.top, t.cost_usd,
                   (t.cost_usd::DOUBLE * (n * rate)::DOUBLE / j.total::DOUBLE)::{MONEY} AS share
            FROM units u JOIN judged j USING (row_id) JOIN priced t USING (row_id)
        ), remainders AS (
            SELECT row_id, any_value(cost_usd) - sum(share) AS remainder FROM shares GROUP BY row_id
        ), by_unit AS (
            SELECT row_id, unit, n, CASE WHEN unit = top THEN 1 ELSE 2 END AS rank, 'genai-prices' AS price_source,
                   CASE WHEN unit = top THEN share + remainder ELSE share END::{MONEY} AS billed,
                   (rate * f.scale)::{PRICE} AS unit_price
            FROM shares JOIN remainders USING (row_id) JOIN focus_units f USING (unit)
        ), whole AS (  -- the rest: all their tokens (or requests) at the price charged, which is all that is known
            SELECT row_id, CASE WHEN tokens > 0 THEN 'tokens' ELSE 'requests' END AS unit,
                   CASE WHEN tokens > 0 THEN tokens ELSE priced_calls END AS n, 1 AS rank, 'charged' AS price_source,
                   cost_usd AS billed, NULL AS unit_price
            FROM (SELECT *, CASE WHEN by_unit > 0 THEN by_unit
                                 -- only a total reported (and no unpriced call in it): the total
                                 WHEN unpriced_calls = 0 THEN total_tokens ELSE 0 END AS tokens
                  FROM (SELECT *, coalesce(list_sum(list_transform(map_entries(usage), lambda e: CASE WHEN e.key LIKE '%tokens'
                                                                                   THEN e.value ELSE 0 END)), 0) AS by_unit
                        FROM priced ANTI JOIN judged USING (row_id)))
        ), rows AS (
            SELECT t.day, t.provider, t.model, t.sku_model, t.publisher, t.allocation, t.project_id, t.source,
                   t.sub_account, 'Usage' AS category, r.billed, r.n, r.unit, r.price_source,
                   CASE WHEN r.rank = 1 THEN t.priced_calls ELSE 0 END AS calls, r.unit_price
            FROM (SELECT * FROM by_unit UNION ALL BY NAME SELECT * FROM whole) r JOIN priced t USING (row_id)
            UNION ALL  -- billed, and no trace covers it: dollars without a quantity
            SELECT d.day, b.provider, b.model_key, coalesce(f.sku_model, b.model_key), coalesce(f.publisher, b.provider),
                   d.allocation, NULL, 'invoice', b.project_id, 'Adjustment', b.cost_usd, NULL,
                   {_sql_map(BILL_UNITS)}[b.token_kind], NULL, 0, NULL
            FROM focus_billed_lines b JOIN delivered d ON d.source = 'invoice' AND d.provider = b.provider
                 AND d.model = b.model_key
            LEFT JOIN focus_skus f ON f.provider = b.provider AND f.model = b.model
        ), measured AS (
            SELECT r.*, u.suffix, u.meter, u.pricing_unit, u.consumed_unit, u.scale,
                   coalesce({names}[provider], provider) AS provider_name,
                   coalesce({names}[publisher], publisher) AS publisher_name,
                   CASE WHEN r.n IS NOT NULL THEN (r.n::DECIMAL(38, 0) / u.scale)::{QUANTITY} END AS quantity
            FROM rows r LEFT JOIN focus_units u USING (unit)
        ), charged AS (  -- a SKU has one price a day: where no list price is known, the day's charged price of it
            -- billed / quantity to 15 places, in integers: a DECIMAL division would go through a DOUBLE
            SELECT provider, sku_model, unit, ((sum(billed) * 1000000000000)::HUGEINT * 1000000000
                   // (sum(quantity) * 1000000)::HUGEINT)::DECIMAL(38, 0) * 0.000000000000001 AS charged_price
            FROM measured WHERE price_source = 'charged' GROUP BY ALL
        ), named AS (
            SELECT m.* REPLACE (coalesce(m.unit_price, c.charged_price)::{PRICE} AS unit_price)
            FROM measured m LEFT JOIN charged c ON m.price_source = 'charged' AND c.provider = m.provider
                 AND c.sku_model = m.sku_model AND c.unit = m.unit
        )
        SELECT
            billed AS BilledCost,
            provider AS BillingAccountId,
            provider_name AS BillingAccountName,
            'USD' AS BillingCurrency,
            strftime(date_trunc('month', day) + INTERVAL 1 MONTH, {utc}) AS BillingPeriodEnd,
            strftime(date_trunc('month', day), {utc}) AS BillingPeriodStart,
            category AS ChargeCategory,
            NULL AS ChargeClass,
            {safe_text(description)} AS ChargeDescription,
            'Usage-Based' AS ChargeFrequency,
            strftime(day + INTERVAL 1 DAY, {utc}) AS ChargePeriodEnd,
            strftime(day, {utc}) AS ChargePeriodStart,
            n::DECIMAL(38, 1) AS ConsumedQuantity,
            CASE WHEN n IS NOT NULL THEN consumed_unit END AS ConsumedUnit,
            billed AS ContractedCost,
            billed AS EffectiveCost,
            NULL::VARCHAR AS InvoiceId,
            provider_name AS InvoiceIssuerName,
            coalesce(unit_price * quantity, billed::DECIMAL(38, 21)) AS ListCost,
            unit_price AS ListUnitPrice,
            quantity AS PricingQuantity,
            CASE WHEN n IS NOT NULL THEN pricing_unit END AS PricingUnit,
            provider_name AS ProviderName,
            publisher_name AS PublisherName,
            'AI and Machine Learning' AS ServiceCategory,
            {service} AS ServiceName,
            'Generative AI' AS ServiceSubcategory,
            {safe_text(sku.replace("u.suffix", "suffix"))} AS SkuId,
            meter AS SkuMeter,
            CASE WHEN unit_price IS NOT NULL THEN json_object('x_Model', sku_model, 'x_UsageUnit', unit,
                                                              'x_PriceSource', price_source) END AS SkuPriceDetails,
            CASE WHEN unit_price IS NOT NULL THEN {safe_text(sku.replace("u.suffix", "suffix"))} END AS SkuPriceId,
            {safe_text("sub_account")} AS SubAccountId,
            {safe_text("sub_account")} AS SubAccountName,
            CASE WHEN source = 'invoice' THEN '{{}}' ELSE {tags} END AS Tags,
            {safe_text("model")} AS x_Model,
            CASE WHEN source <> 'invoice' THEN {safe_text(feature)} END AS x_Feature,
            calls AS x_Calls,
            source AS x_CostSource,
            '{basis}' AS x_CostBasis,
            price_source AS x_ListPriceSource,
            -- the Langfuse project traced in: rows of several projects stay apart (and say whose they are)
            {safe_text("project_id")} AS x_LangfuseProjectId
        -- in no order: sorting a large day's wide rows needs more than DuckDB's default memory limit
        FROM named
    """
