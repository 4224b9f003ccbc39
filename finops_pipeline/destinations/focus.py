"""The day's cost as a FOCUS 1.2 file (FinOps Open Cost and Usage Specification), for a FinOps tool's
FOCUS intake.

One `Usage` row per delivered row (day x allocation x provider x model) and token kind, because each kind
has its own unit price (FOCUS_Spec v1.2, columns/skuid.md, listunitprice.md):

- The SKU is the model and token kind: `SkuId` `gpt-4o/input`, `SkuMeter` "Input Tokens". Reasoning tokens
  are output tokens, unless the price table prices them apart.
- `PricingUnit` is "1000000 Tokens", as the providers' price lists are. `PricingQuantity` is the tokens
  divided by a million, and `ListUnitPrice` is the price table's (genai-prices) USD per million for the day.
  `ListCost` = `ListUnitPrice` x `PricingQuantity`, exactly. `ConsumedQuantity` is the tokens.
- `BilledCost` = `EffectiveCost` = `ContractedCost` is the delivered row's cost on the cost basis, split
  across its kinds in proportion to their list cost. The remainder goes to the costliest kind, so the kinds
  sum to the row exactly. Where Langfuse's price or the bill differs from the list (batch, discounts, custom
  prices), `BilledCost` and `ListCost` differ.
- A row whose model the price table does not price in every kind it used cannot be split. It stays one row
  of all its tokens (or its requests, when it has no tokens). Its `ListUnitPrice` is the charged price, and
  `x_ListPriceSource` says `charged` rather than `genai-prices`.
- On the invoice basis, a bill's spend that no trace covers has no known quantity. FOCUS allows no missing
  quantity on `Usage`, so it is an `Adjustment`: one row per bill model, token kind and sub account, cost
  columns all the billed dollars, and quantities, unit price and `SkuPriceId` null. No tokens are made up.
- `SubAccountId` is the OpenAI project or Anthropic workspace. It is filled only where the bill says it: the
  invoice basis, where the model's bill for the day is all in one project, and every `Adjustment`.
  Elsewhere it is unknown, so null. No cost API names projects, so `SubAccountName` repeats the id.
- `Tags` carry the allocation keys that resolved to a value: a key left `unallocated` (or `unattributed`)
  is absent, not a tag value. The same for `x_Feature`.
- `InvoiceId` is null: the cost APIs give no invoice number.
- Quantities and prices are written with a decimal point (`55110.0`), as the spec's Decimal type wants.
"""

from __future__ import annotations

from datetime import date

import duckdb
from genai_prices.data_snapshot import get_snapshot

from finops_pipeline.cost_basis import UNATTRIBUTED
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
CUSTOM_COLUMNS = ["x_Model", "x_Feature", "x_Calls", "x_CostSource", "x_ListPriceSource", "x_LangfuseProjectId"]

# Token kind -> (SkuId suffix, SkuMeter). The kinds are the bill's (provider_costs.token_kind) and the
# staging table's columns; `tokens` and `requests` are the rows that cannot be split by kind.
KINDS = {
    "input": ("input", "Input Tokens"),
    "cached": ("cached-input", "Cached Input Tokens"),
    "cache_write": ("cache-write", "Cache Write Tokens"),
    "output": ("output", "Output Tokens"),
    "reasoning": ("reasoning-output", "Reasoning Output Tokens"),
    "tokens": ("tokens", "Tokens"),
    "requests": ("requests", "Requests"),
}
PER_MILLION = "1000000 Tokens"
PRICE = "DECIMAL(38, 12)"     # USD per PricingUnit
QUANTITY = "DECIMAL(38, 6)"   # millions of tokens, to the token


def prepare_focus(conn: duckdb.DuckDBPyConnection, day: date, basis: str, provider_map: dict[str, str]) -> None:
    """The temp tables `focus_rows_sql` reads beside `delivered`: `model_prices` (the list prices of the day's
    traced models), `model_keys`, `focus_sub_accounts` (provider, model_key, project: the one project of a
    model's bill) and `focus_billed_lines` (the bill's lines that no trace covers, by kind and project)."""
    models = {m: set() for (m,) in conn.execute("SELECT DISTINCT model FROM delivered WHERE source = 'langfuse'").fetchall()}
    register_model_prices(conn, models, day, provider_map)
    register_model_keys(conn, day)
    # Only a bill says which project spent; on the langfuse basis the bills are not this asset's input.
    bills = "WHERE day = $day" if basis == "invoice" else "WHERE false"
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE focus_billed AS
        SELECT provider, {BILLED_KEY} AS model_key, token_kind, project_id, cost_usd
        FROM provider_costs b LEFT JOIN model_keys k USING (provider, model) {bills}""", {"day": day} if "$day" in bills else [])
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE focus_sub_accounts AS
        SELECT provider, model_key, any_value(project_id) AS project FROM focus_billed GROUP BY ALL
        HAVING count(DISTINCT project_id) = 1 AND count(project_id) = count(*)""")
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE focus_billed_lines AS
        SELECT provider, model_key, token_kind, project_id, sum(cost_usd) AS cost_usd
        FROM focus_billed SEMI JOIN (SELECT provider, model AS model_key FROM delivered WHERE source = 'invoice')
             USING (provider, model_key)
        GROUP BY ALL HAVING sum(cost_usd) <> 0""")


def provider_names() -> dict[str, str]:
    """Provider id -> its name as the price table gives it (`aws` -> "AWS Bedrock")."""
    return {p.id: p.name for p in get_snapshot().providers}


def _sql_map(values: dict[str, str]) -> str:
    quote = lambda s: "'" + s.replace("'", "''") + "'"  # noqa: E731
    return "MAP {" + ", ".join(f"{quote(k)}: {quote(v)}" for k, v in sorted(values.items())) + "}"


def focus_rows_sql(allocation_keys: list[str], hashed: list[str]) -> str:
    """The day's FOCUS rows from the temp tables of `prepare_focus` and `delivered` (parameter `$salt` when
    `hashed`)."""
    expressions = dimension_expressions(allocation_keys, hashed)
    unset = f"('{UNALLOCATED}', '{UNATTRIBUTED}')"
    tags = ("to_json(map_from_entries(list_filter([" + ", ".join(
        f"{{'key': '{k}', 'value': {expressions[k]}}}" for k in allocation_keys) + f"], lambda t: t.value NOT IN {unset})))")
    names = _sql_map(provider_names())
    provider_name = "provider_name"
    service = ("CASE provider " + " ".join(f"WHEN '{p}' THEN '{n}'" for p, n in SERVICE_NAMES.items())
               + " ELSE provider_name END")
    kinds = "[" + ", ".join(
        f"{{'kind': '{kind}', 'tokens': {tokens}, 'rate': {rate}}}" for kind, tokens, rate in [
            ("input", "input_tokens", "input_rate"),
            ("cached", "cached_tokens", "cached_rate"),
            ("cache_write", "cache_write_tokens", "cache_write_rate"),
            # reasoning is billed as output, unless the price table prices it apart
            ("output", "output_tokens + CASE WHEN reasoning_rate IS NOT DISTINCT FROM output_rate "
                       "THEN reasoning_tokens ELSE 0 END", "output_rate"),
            ("reasoning", "CASE WHEN reasoning_rate IS DISTINCT FROM output_rate THEN reasoning_tokens ELSE 0 END",
             "reasoning_rate"),
        ]) + "]"
    suffix = "CASE kind " + " ".join(f"WHEN '{k}' THEN '{s}'" for k, (s, _) in KINDS.items()) + " END"
    meter = "CASE kind " + " ".join(f"WHEN '{k}' THEN '{m}'" for k, (_, m) in KINDS.items()) + " END"
    sku = f"CASE WHEN kind IS NOT NULL THEN sku_model || '/' || {suffix} END"
    utc = "'%Y-%m-%dT%H:%M:%SZ'"
    return f"""
        WITH traced AS (
            SELECT d.*, row_number() OVER () AS row_id,
                   -- the SKU's model: the name traces and bills agree on, or as traced where no price lists it
                   CASE WHEN p.listed THEN coalesce(k.model_key, d.model) ELSE d.model END AS sku_model,
                   s.project AS sub_account,
                   p.input_rate, p.cached_rate, p.cache_write_rate, p.output_rate, p.reasoning_rate
            FROM delivered d
            LEFT JOIN model_keys k USING (provider, model)
            LEFT JOIN focus_sub_accounts s ON s.provider = d.provider AND s.model_key = coalesce(k.model_key, d.model)
            LEFT JOIN model_prices p ON p.model = d.model AND p.provider = d.provider
            WHERE d.source = 'langfuse' AND d.cost_usd <> 0
        ), kinds AS (
            SELECT * EXCLUDE (k), k.kind, k.tokens, k.rate
            FROM (SELECT t.*, unnest({kinds}) AS k FROM traced t)
            WHERE k.tokens > 0
        ), split AS (  -- rows priced in every kind they used: one row per kind, at list price
            SELECT *, tokens * rate AS weight FROM kinds
            QUALIFY bool_and(rate IS NOT NULL) OVER (PARTITION BY row_id) AND sum(tokens * rate) OVER (PARTITION BY row_id) > 0
        ), shares AS (
            SELECT *, (cost_usd::DOUBLE * weight::DOUBLE / sum(weight) OVER (PARTITION BY row_id)::DOUBLE)::{MONEY} AS share,
                   row_number() OVER (PARTITION BY row_id ORDER BY weight DESC, kind) AS rank
            FROM split
        ), by_kind AS (
            SELECT *, (rate * 1000000)::{PRICE} AS unit_price,
                   (tokens::DECIMAL(38, 0) * 0.000001)::{QUANTITY} AS quantity,
                   CASE WHEN rank = 1 THEN share + cost_usd - sum(share) OVER (PARTITION BY row_id) ELSE share END::{MONEY}
                       AS billed
            FROM shares
        ), whole AS (  -- rows the price table cannot split: all their tokens (or requests) at the charged price
            SELECT *, CASE WHEN tokens > 0 THEN (tokens::DECIMAL(38, 0) * 0.000001)::{QUANTITY}
                           ELSE calls::{QUANTITY} END AS quantity
            FROM (SELECT t.*, CASE WHEN n > 0 THEN 'tokens' ELSE 'requests' END AS kind, n AS tokens
                  FROM (SELECT *, input_tokens + cached_tokens + cache_write_tokens + output_tokens + reasoning_tokens AS n
                        FROM traced) t
                  ANTI JOIN split USING (row_id))
        ), rows AS (
            SELECT day, provider, model, sku_model, kind, allocation, project_id, source, sub_account,
                   'Usage' AS category, billed, quantity, CASE WHEN kind = 'requests' THEN 'Requests' ELSE '{PER_MILLION}' END AS unit,
                   tokens AS consumed, unit_price, CASE WHEN rank = 1 THEN calls ELSE 0 END AS calls,
                   'genai-prices' AS price_source
            FROM by_kind
            UNION ALL
            SELECT day, provider, model, sku_model, kind, allocation, project_id, source, sub_account,
                   'Usage', cost_usd, quantity, CASE WHEN kind = 'requests' THEN 'Requests' ELSE '{PER_MILLION}' END,
                   CASE WHEN kind = 'requests' THEN calls ELSE tokens END,
                   (cost_usd::DOUBLE / quantity::DOUBLE)::{PRICE}, calls, 'charged'
            FROM whole
            UNION ALL  -- billed, and no trace covers it: dollars without a quantity
            SELECT d.day, b.provider, b.model_key, b.model_key, CASE WHEN b.token_kind <> 'other' THEN b.token_kind END,
                   d.allocation, NULL, 'invoice', b.project_id,
                   'Adjustment', b.cost_usd, NULL, NULL, NULL, NULL, 0, NULL
            FROM focus_billed_lines b JOIN delivered d ON d.source = 'invoice' AND d.provider = b.provider
                 AND d.model = b.model_key
        ), named AS (
            SELECT *, coalesce({names}[provider], provider) AS provider_name FROM rows
        )
        SELECT
            billed AS BilledCost,
            provider AS BillingAccountId,
            {provider_name} AS BillingAccountName,
            'USD' AS BillingCurrency,
            strftime(date_trunc('month', day) + INTERVAL 1 MONTH, {utc}) AS BillingPeriodEnd,
            strftime(date_trunc('month', day), {utc}) AS BillingPeriodStart,
            category AS ChargeCategory,
            NULL AS ChargeClass,
            {safe_text(f'''model || ': ' || CASE WHEN category = 'Adjustment'
                THEN coalesce(lower({meter}) || ' ', '') || 'billed, not attributed to a traced call (no quantity known)'
                ELSE lower({meter}) || CASE WHEN price_source = 'charged' THEN ' at the charged price (no list price known)'
                ELSE '' END END''')} AS ChargeDescription,
            'Usage-Based' AS ChargeFrequency,
            strftime(day + INTERVAL 1 DAY, {utc}) AS ChargePeriodEnd,
            strftime(day, {utc}) AS ChargePeriodStart,
            consumed::DECIMAL(38, 1) AS ConsumedQuantity,
            CASE WHEN consumed IS NOT NULL THEN CASE WHEN kind = 'requests' THEN 'Requests' ELSE 'Tokens' END END
                AS ConsumedUnit,
            billed AS ContractedCost,
            billed AS EffectiveCost,
            NULL::VARCHAR AS InvoiceId,
            {provider_name} AS InvoiceIssuerName,
            coalesce(unit_price * quantity, billed)::DECIMAL(38, 18) AS ListCost,
            unit_price AS ListUnitPrice,
            quantity AS PricingQuantity,
            unit AS PricingUnit,
            {provider_name} AS ProviderName,
            {provider_name} AS PublisherName,
            'AI and Machine Learning' AS ServiceCategory,
            {service} AS ServiceName,
            'Generative AI' AS ServiceSubcategory,
            {safe_text(sku)} AS SkuId,
            CASE WHEN kind IS NOT NULL THEN {meter} END AS SkuMeter,
            CASE WHEN unit_price IS NOT NULL THEN json_object('x_Model', sku_model, 'x_TokenKind', {meter},
                                                              'x_PriceSource', price_source) END AS SkuPriceDetails,
            CASE WHEN unit_price IS NOT NULL
                 THEN {safe_text(sku)} || ':' || CASE WHEN price_source = 'charged' THEN 'charged:' ELSE '' END
                      || rtrim(rtrim(unit_price::VARCHAR, '0'), '.') END AS SkuPriceId,
            {safe_text("sub_account")} AS SubAccountId,
            {safe_text("sub_account")} AS SubAccountName,
            {tags} AS Tags,
            {safe_text("model")} AS x_Model,
            {safe_text(f"nullif(nullif({expressions['service_name']}, '{UNALLOCATED}'), '{UNATTRIBUTED}')")} AS x_Feature,
            calls AS x_Calls,
            source AS x_CostSource,
            price_source AS x_ListPriceSource,
            -- the Langfuse project traced in: rows of several projects stay apart (and say whose they are)
            {safe_text("project_id")} AS x_LangfuseProjectId
        FROM named
        ORDER BY BilledCost DESC, x_Model, Tags, x_LangfuseProjectId, SkuId, SubAccountId
    """
