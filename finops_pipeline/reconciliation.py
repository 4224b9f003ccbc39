"""Billed vs traced for one day at three depths, in SQL, and the verdict that judges it.

- provider: each provider's bill against the traced cost of the models mapped to it. A model mapped to no
  provider is its own row (provider `unknown`, the model named), never folded into another's.
- model: for providers with a bill, per model, by a name both sides agree on (`register_model_keys`):
  "gpt-4o-2024-08-06" and "gpt-4o", "claude-sonnet-4-latest" and "claude-sonnet-4-20250514" are one row.
- token_kind: per model and input / cached / cache_write / output / other, where both sides can split:
  the bill names the kind of each line; the traced cost of a model is split in proportion to its tokens
  of each kind at the model's list prices (what Langfuse would charge), so the kinds sum to the model.

Inputs: `allocated_costs`, `provider_costs`, and the temp tables `model_prices` of the traced models and
`model_keys`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

import duckdb
import pandas as pd

from finops_pipeline import pricing
from finops_pipeline.warehouse import MONEY

# A bill line's model as both sides agree on it (the temp table `model_keys`); a line that names no model
# (web search calls) by its line item.
BILLED_KEY = "coalesce(k.model_key, lower(trim(b.line_item)), 'unspecified')"


def register_model_keys(conn: duckdb.DuckDBPyConnection, day: date) -> None:
    """The temp table `model_keys` (provider, model, model_key): one name for each model the day's traces
    (allocated_costs) and bills (provider_costs) name, so that they meet across spellings (pricing.model_key:
    region and vendor prefixes, Bedrock versions, snapshot dates, `-latest`, fine-tunes, modality words).
    Where a traced and a billed name of one provider still differ but the price table lists both as the same
    model (an alias such as `claude-sonnet-4-0` and its snapshot), the traced name takes the billed one's key."""
    traced = conn.execute("SELECT DISTINCT provider, model FROM allocated_costs WHERE day = ?", [day]).fetchall()
    billed = conn.execute("SELECT DISTINCT provider, model FROM provider_costs WHERE day = ? AND model IS NOT NULL",
                          [day]).fetchall()
    keys = {(p, m): pricing.model_key(m) for p, m in traced + billed}
    billed_keys = {keys[b] for b in billed}
    for provider, model in traced:
        if keys[(provider, model)] in billed_keys:
            continue
        listed = pricing.table_model(provider, model)
        same = {keys[(p, m)] for p, m in billed if p == provider and listed and pricing.table_model(p, m) == listed}
        if len(same) == 1:
            keys[(provider, model)] = same.pop()
    frame = pd.DataFrame([(p, m, k) for (p, m), k in keys.items()], columns=["provider", "model", "model_key"])
    conn.register("model_keys_frame", frame)
    conn.execute("CREATE OR REPLACE TEMP TABLE model_keys AS SELECT provider::VARCHAR AS provider, model::VARCHAR AS model,"
                 " model_key::VARCHAR AS model_key FROM model_keys_frame")
    conn.unregister("model_keys_frame")


PREPARE_SQL = ["""
CREATE OR REPLACE TEMP TABLE recon_traced AS
SELECT provider, model, k.model_key,
       sum(cost_usd) AS cost, sum(unpriced_calls) AS unpriced,
       sum(input_tokens) AS input, sum(cached_tokens) AS cached, sum(cache_write_tokens) AS cache_write,
       sum(output_tokens + reasoning_tokens) AS output
FROM allocated_costs LEFT JOIN model_keys k USING (provider, model) WHERE day = $day GROUP BY ALL
""", f"""
CREATE OR REPLACE TEMP TABLE recon_billed AS
SELECT provider, {BILLED_KEY} AS model_key, token_kind, sum(cost_usd) AS cost
FROM provider_costs b LEFT JOIN model_keys k USING (provider, model) WHERE day = $day GROUP BY ALL
""", f"""
-- Each traced model's cost split by token kind, in proportion to tokens x list price. A model key is
-- split only when every one of its priced models has list prices.
CREATE OR REPLACE TEMP TABLE recon_traced_kinds AS
WITH weights AS (
    SELECT t.provider, t.model_key, t.cost,
           coalesce(t.input * p.input_rate, 0)::DOUBLE AS input,
           coalesce(t.cached * p.cached_rate, 0)::DOUBLE AS cached,
           coalesce(t.cache_write * p.cache_write_rate, 0)::DOUBLE AS cache_write,
           coalesce(t.output * p.output_rate, 0)::DOUBLE AS output
    FROM recon_traced t LEFT JOIN model_prices p USING (model)
), totals AS (
    SELECT *, input + cached + cache_write + output AS total FROM weights
), splittable AS (
    SELECT * FROM totals
    SEMI JOIN (SELECT provider, model_key FROM totals GROUP BY ALL HAVING bool_and(total > 0 OR cost = 0))
         USING (provider, model_key)
), shares AS (
    UNPIVOT splittable ON input, cached, cache_write, output INTO NAME token_kind VALUE weight
)
SELECT provider, model_key, token_kind,
       sum(CASE WHEN total > 0 THEN cost::DOUBLE * weight / total ELSE 0 END)::{MONEY} AS cost
FROM shares GROUP BY ALL
"""]

RECONCILE_SQL = """
WITH billing AS (
    SELECT DISTINCT provider FROM provider_costs WHERE day = $day
    UNION SELECT unnest($billed_providers::VARCHAR[])
), by_provider AS (
    SELECT 'provider' AS depth, provider, t.model, NULL AS token_kind, traced, billed, unpriced
    FROM (SELECT provider, CASE WHEN provider = 'unknown' THEN model END AS model,
                 sum(cost) AS traced, sum(unpriced) AS unpriced
          FROM recon_traced GROUP BY ALL) t
    FULL JOIN (SELECT provider, sum(cost) AS billed FROM recon_billed GROUP BY ALL) b USING (provider)
), by_model AS (
    SELECT 'model' AS depth, provider, model_key AS model, NULL AS token_kind, traced, billed, unpriced
    FROM (SELECT provider, model_key, sum(cost) AS traced, sum(unpriced) AS unpriced FROM recon_traced GROUP BY ALL) t
    FULL JOIN (SELECT provider, model_key, sum(cost) AS billed FROM recon_billed GROUP BY ALL) b
         USING (provider, model_key)
    SEMI JOIN billing USING (provider)
), kind_models AS (  -- both sides can say how the model's cost splits by kind
    SELECT provider, model_key FROM recon_traced_kinds
    INTERSECT
    SELECT provider, model_key FROM recon_billed WHERE token_kind <> 'other'
), by_kind AS (
    SELECT 'token_kind' AS depth, provider, model_key AS model, token_kind, t.cost AS traced, b.cost AS billed,
           0 AS unpriced
    FROM (SELECT * FROM recon_traced_kinds SEMI JOIN kind_models USING (provider, model_key)) t
    FULL JOIN (SELECT provider, model_key, token_kind, sum(cost) AS cost
               FROM recon_billed SEMI JOIN kind_models USING (provider, model_key) GROUP BY ALL) b
         USING (provider, model_key, token_kind)
    WHERE coalesce(t.cost, 0) <> 0 OR coalesce(b.cost, 0) <> 0
), rows AS (
    SELECT * FROM by_provider UNION ALL SELECT * FROM by_model UNION ALL SELECT * FROM by_kind
)
SELECT $day AS day, depth, provider, model, token_kind, coalesce(traced, 0) AS traced_usd,
       coalesce(billed, 0) AS billed_usd, coalesce(billed, 0) - coalesce(traced, 0) AS gap_usd,
       CASE WHEN billed > 0 THEN 100 * (billed - coalesce(traced, 0)) / billed END AS gap_pct,
       coalesce(unpriced, 0) AS unpriced_generations, provider IN (SELECT provider FROM billing) AS has_bill,
       $final AS final
FROM rows
"""


def final_after(day: date, settling_days: int) -> datetime:
    """When `day`'s bills have settled: `settling_days` after the day ends (UTC)."""
    return datetime.combine(day + timedelta(days=1 + settling_days), time(), timezone.utc)


@dataclass(frozen=True)
class Verdict:
    provider: str
    traced: float
    billed: float
    gap_pct: float | None  # of the bill; None when nothing was billed
    level: str             # ok | WARN | ERROR, as judged on a final day (a provisional one warns at most)

    @property
    def gap(self) -> float:
        return self.billed - self.traced


def provider_verdicts(table: pd.DataFrame, warn_pct: float, error_pct: float) -> list[Verdict]:
    """Each billing provider's gap, judged: ERROR past the error threshold, WARN past the warn one.
    Traced cost with nothing billed is an infinite gap."""
    verdicts = []
    for r in table[(table.depth == "provider") & table.has_bill].itertuples():
        traced, billed = float(r.traced_usd), float(r.billed_usd)
        known = not pd.isna(r.gap_pct)
        size = abs(r.gap_pct) if known else (0.0 if traced == 0 else float("inf"))
        level = "ERROR" if size > error_pct else "WARN" if size > warn_pct else "ok"
        verdicts.append(Verdict(r.provider, traced, billed, float(r.gap_pct) if known else None, level))
    return verdicts


def reading(traced: float, billed: float) -> str:
    """A gap in words."""
    if round(billed, 2) == round(traced, 2):
        return "matches"
    if round(traced, 2) == 0:
        return "billed, not traced"
    if round(billed, 2) == 0:
        return "traced, not billed"
    return "billed above traced" if billed > traced else "traced above billed"


def label(row) -> str:
    """What a row is about: "openai", "openai gpt-4o", "openai gpt-4o cached", "no provider: acme-llama"."""
    if row.depth == "provider":
        return f"no provider: model {row.model}" if row.provider == "unknown" else row.provider
    return " ".join(str(part) for part in (row.provider, row.model, row.token_kind if row.depth == "token_kind" else "")
                    if part).strip()
