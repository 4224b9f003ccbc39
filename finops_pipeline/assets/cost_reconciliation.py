"""cost_reconciliation: billed vs traced cost per day and provider, and the check that fails on a gap."""


import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource

from finops_pipeline.partitions import daily_partitions, partition_day
from finops_pipeline.settings import FinopsSettings
from finops_pipeline.warehouse import WAREHOUSE_POOL, connect, replace_partition, transaction

GAP_CHECK = "billed_vs_traced_gap"

_RECONCILE = """
WITH traced AS (
    SELECT provider, sum(cost_usd) AS traced, sum(unpriced_calls) AS unpriced
    FROM allocated_costs WHERE day = $day GROUP BY provider
), billed AS (
    SELECT provider, sum(cost_usd) AS billed FROM provider_costs WHERE day = $day GROUP BY provider
)
SELECT $day, provider, coalesce(traced, 0), coalesce(billed, 0), coalesce(billed, 0) - coalesce(traced, 0),
       CASE WHEN billed > 0 THEN 100 * (billed - coalesce(traced, 0)) / billed END,
       coalesce(unpriced, 0)
FROM traced FULL JOIN billed USING (provider)
"""


@dg.asset(
    partitions_def=daily_partitions,
    pool=WAREHOUSE_POOL,
    group_name="reconciliation",
    kinds={"duckdb"},
    deps=["allocated_costs", "openai_costs", "anthropic_costs"],
    description=(
        "Per day and provider: what the provider billed vs what Langfuse traced, the gap in $ and % of the "
        "bill. The bill is the truth for how much; Langfuse for the breakdown. Providers that send no bill "
        "(unknown models, other clouds) are listed with billed $0."
    ),
    check_specs=[
        dg.AssetCheckSpec(GAP_CHECK, asset="cost_reconciliation",
                          description="|billed − traced| within the warn and error thresholds, per billed provider."),
    ],
)
def cost_reconciliation(
    context: dg.AssetExecutionContext, duckdb: DuckDBResource, settings: FinopsSettings
) -> dg.MaterializeResult:
    day = partition_day(context)
    with connect(duckdb) as conn:
        with transaction(conn):
            rows = replace_partition(conn, "cost_reconciliation", day, _RECONCILE)
        table = conn.execute(
            "SELECT * EXCLUDE (day) FROM cost_reconciliation WHERE day = ? ORDER BY provider", [day]).df()
    check = gap_check(table, settings)
    metadata: dict = {"dagster/row_count": rows}
    for r in table.itertuples():
        metadata[f"{r.provider}_traced_usd"] = float(r.traced_usd)
        metadata[f"{r.provider}_billed_usd"] = float(r.billed_usd)
    metadata["reconciliation"] = check.metadata["providers"]
    return dg.MaterializeResult(metadata=metadata, check_results=[check])


def provider_verdicts(table: pd.DataFrame, settings: FinopsSettings) -> list[dict]:
    """Each billed provider's numbers and level: ERROR past the error threshold, WARN past the warn one."""
    verdicts = []
    for r in table.itertuples():
        if r.provider not in settings.billed_providers:
            continue
        traced, billed = float(r.traced_usd), float(r.billed_usd)
        known = r.gap_pct is not None and not pd.isna(r.gap_pct)
        size = abs(r.gap_pct) if known else (0.0 if traced == 0 else float("inf"))
        level = ("ERROR" if size > settings.reconciliation_error_pct
                 else "WARN" if size > settings.reconciliation_warn_pct else "ok")
        verdicts.append({
            "provider": r.provider, "traced $": round(traced, 2), "billed $": round(billed, 2),
            "gap $": round(billed - traced, 2), "gap %": round(float(r.gap_pct), 2) if known else None,
            "result": level,
        })
    return verdicts


def gap_check(table: pd.DataFrame, settings: FinopsSettings) -> dg.AssetCheckResult:
    verdicts = provider_verdicts(table, settings)
    severity = (dg.AssetCheckSeverity.ERROR if any(v["result"] == "ERROR" for v in verdicts)
                else dg.AssetCheckSeverity.WARN)
    failing = [v for v in verdicts if v["result"] != "ok"]
    if failing:
        description = "; ".join(
            f"{v['provider']}: billed ${v['billed $']:,.2f} vs traced ${v['traced $']:,.2f}, gap "
            f"{v['gap $']:+,.2f} USD ({_pct(v['gap %'])}) {v['result']}"
            for v in failing
        ) + f" (warn > {settings.reconciliation_warn_pct:g}%, error > {settings.reconciliation_error_pct:g}%)"
    else:
        description = "; ".join(f"{v['provider']}: gap {v['gap %']:+.2f}%" for v in verdicts) or "no billed provider"
    return dg.AssetCheckResult(
        check_name=GAP_CHECK,
        passed=not failing,
        severity=severity,
        description=description,
        metadata={
            "providers": dg.MetadataValue.md(pd.DataFrame(verdicts).to_markdown(index=False) if verdicts else "none"),
            "max_abs_gap_pct": max((abs(v["gap %"]) for v in verdicts if v["gap %"] is not None), default=0.0),
            "warn_pct": settings.reconciliation_warn_pct,
            "error_pct": settings.reconciliation_error_pct,
        },
    )


def _pct(gap_pct: float | None) -> str:
    return "nothing billed" if gap_pct is None else f"{gap_pct:+.1f}%"
