"""What a delivered dollar means: traced cost as Langfuse priced it, or each provider's invoice.

`FINOPS_COST_BASIS` is read when the code location loads, because it changes the graph: under `invoice`
the delivery assets depend on the day's bills.

- `langfuse` (default): each row's traced cost. Add it to Finout beside Finout's native OpenAI and
  Anthropic connectors only if you want both views; together they count the same spend twice.
- `invoice`: for each provider with a bill that day, each model's traced rows are scaled so that they
  sum exactly to what the bill says for that model; what the bill holds for models the traces do not
  cover (never traced, or traced without a price) is delivered as one `unattributed` row per model.
  The day's rows then sum exactly to the bill, so Finout's native connectors for those providers can
  be switched off without counting anything twice. Providers without a bill keep their traced cost.
"""

from __future__ import annotations

import os
from datetime import date

import duckdb

from finops_pipeline.reconciliation import BILLED_KEY, register_model_keys
from finops_pipeline.warehouse import MONEY

BASES = ("langfuse", "invoice")
UNATTRIBUTED = "unattributed"
COST_BASIS = os.environ.get("FINOPS_COST_BASIS", "langfuse").strip().lower()
if COST_BASIS not in BASES:
    raise ValueError(f"FINOPS_COST_BASIS must be one of {', '.join(BASES)}, got {COST_BASIS!r}")

_COLUMNS = """day, allocation, provider, model, calls, unpriced_calls, input_tokens, output_tokens, cached_tokens,
              cache_write_tokens, reasoning_tokens, total_tokens, project_id, priced_usage"""


def delivered_sql(basis: str, allocation_keys: list[str]) -> str:
    """The SELECT of the day's delivered rows (parameters `$day`, `$billed_providers`): the columns of
    `allocated_costs`, `cost_usd` on `basis`, and `source` (`langfuse`, or `invoice` for unattributed rows)."""
    if basis == "langfuse":
        return f"SELECT {_COLUMNS}, cost_usd, 'langfuse' AS source FROM allocated_costs WHERE day = $day"
    unattributed = "{" + ", ".join(f"'{k}': '{UNATTRIBUTED}'" for k in allocation_keys) + "}::MAP(VARCHAR, VARCHAR)"
    return f"""
        WITH billing AS (
            SELECT DISTINCT provider FROM provider_costs WHERE day = $day
            UNION SELECT unnest($billed_providers::VARCHAR[])
        ), traced AS (
            SELECT a.*, k.model_key FROM allocated_costs a LEFT JOIN model_keys k USING (provider, model)
            WHERE day = $day
        ), traced_models AS (
            SELECT provider, model_key, sum(cost_usd) AS traced FROM traced GROUP BY ALL
        ), billed_models AS (
            SELECT provider, {BILLED_KEY} AS model_key, sum(cost_usd) AS billed
            FROM provider_costs b LEFT JOIN model_keys k USING (provider, model) WHERE day = $day GROUP BY ALL
        ), scaled AS (
            SELECT t.*, m.traced, coalesce(b.billed, 0) AS billed,
                   CASE WHEN m.traced > 0 THEN (t.cost_usd::DOUBLE * (coalesce(b.billed, 0)::DOUBLE / m.traced::DOUBLE))::{MONEY}
                        ELSE 0 END AS scaled
            FROM traced t SEMI JOIN billing USING (provider)
            JOIN traced_models m USING (provider, model_key) LEFT JOIN billed_models b USING (provider, model_key)
        ), exact AS (  -- the rounding remainder goes to each model's costliest row: the model sums to its bill exactly
            SELECT * REPLACE (CASE WHEN traced > 0 AND row_number() OVER (
                                       PARTITION BY provider, model_key ORDER BY cost_usd DESC, calls DESC) = 1
                                   THEN scaled + billed - sum(scaled) OVER (PARTITION BY provider, model_key)
                                   ELSE scaled END::{MONEY} AS scaled)
            FROM scaled
        )
        SELECT {_COLUMNS}, scaled AS cost_usd, 'langfuse' AS source FROM exact
        UNION ALL
        SELECT {_COLUMNS}, cost_usd, 'langfuse' AS source FROM traced ANTI JOIN billing USING (provider)
        UNION ALL
        SELECT $day, {unattributed}, provider, model_key, 0, 0, 0, 0, 0, 0, 0, 0, NULL, NULL, billed, 'invoice'
        FROM billed_models b
        WHERE billed <> 0 AND NOT EXISTS (
            SELECT 1 FROM traced_models t WHERE t.provider = b.provider AND t.model_key = b.model_key AND t.traced > 0)
    """


def expected_total_sql(basis: str) -> str:
    """What the delivered rows of the day must sum to, per provider (parameters as `delivered_sql`)."""
    if basis == "langfuse":
        return "SELECT provider, sum(cost_usd) AS expected FROM allocated_costs WHERE day = $day GROUP BY ALL"
    return """
        WITH billing AS (
            SELECT DISTINCT provider FROM provider_costs WHERE day = $day
            UNION SELECT unnest($billed_providers::VARCHAR[])
        )
        SELECT provider, sum(cost_usd) AS expected FROM provider_costs SEMI JOIN billing USING (provider)
        WHERE day = $day GROUP BY ALL
        UNION ALL
        SELECT provider, sum(cost_usd) FROM allocated_costs ANTI JOIN billing USING (provider)
        WHERE day = $day GROUP BY ALL
    """


class BillNotRead(ValueError):
    """On the invoice basis, a day whose bills were not read has an unknown cost, not $0."""


def bill_assets(billed_providers: list[str]) -> list[str]:
    """The assets that read the bills of `billed_providers` (and of the CSV drop)."""
    return sorted({f"{p}_costs" if p in ("openai", "anthropic") else "other_provider_costs" for p in billed_providers}
                  | {"other_provider_costs"})


def unread_bills(conn: duckdb.DuckDBPyConnection, day: date, billed_providers: list[str]) -> list[str]:
    """The bill assets that have not read `day` (materialized_days)."""
    read = {a for (a,) in conn.execute("SELECT asset FROM materialized_days WHERE day = ?", [day]).fetchall()}
    return [a for a in bill_assets(billed_providers) if a not in read]


def prepare_delivered(conn: duckdb.DuckDBPyConnection, day: date, basis: str, allocation_keys: list[str],
                      billed_providers: list[str]) -> dict:
    """The temp table `delivered`: the day's rows on `basis`. Returns the parameters its SQL took.
    Raises BillNotRead on the invoice basis when a bill asset has not read the day."""
    sql = delivered_sql(basis, allocation_keys)
    if basis == "invoice":
        unread = unread_bills(conn, day, billed_providers)
        if unread:
            raise BillNotRead(f"On the invoice cost basis, {day} needs its bills, and {', '.join(unread)} "
                              f"{'has' if len(unread) == 1 else 'have'} not read them: the day's cost is unknown, "
                              "not $0. Materialize the day's bills first (the daily job runs them before delivery).")
        register_model_keys(conn, day)
    params = {"day": day, **({"billed_providers": billed_providers} if "$billed_providers" in sql else {})}
    conn.execute(f"CREATE OR REPLACE TEMP TABLE delivered AS {sql}", params)
    return params


def delivered_and_expected(conn: duckdb.DuckDBPyConnection, basis: str, params: dict, costs: str) -> tuple:
    """(what `costs`, a query of one text or decimal column `cost`, sums to; what the day cost on `basis`),
    both exact: the allocated cost (`langfuse`), or each provider's bill plus the traced cost of providers
    without one (`invoice`)."""
    return conn.execute(f"""
        SELECT (SELECT coalesce(sum(cost::{MONEY}), 0) FROM ({costs})),
               (SELECT coalesce(sum(expected), 0) FROM ({expected_total_sql(basis)}))
    """, params).fetchall()[0]
