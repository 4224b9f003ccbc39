"""cost_reconciliation: billed vs traced cost per day at three depths, and the check that fails on a gap."""

from collections.abc import Iterator
from datetime import datetime, timezone

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource

from finops_pipeline.generations import register_model_prices
from finops_pipeline.money import usd
from finops_pipeline.partitions import daily_check, daily_partitions, partition_day
from finops_pipeline.reconciliation import (
    PREPARE_SQL,
    RECONCILE_SQL,
    final_after,
    label,
    provider_verdicts,
    reading,
    register_model_keys,
)
from finops_pipeline.settings import FinopsSettings
from finops_pipeline.warehouse import WAREHOUSE_POOL, connect, replace_partition, transactions

GAP_CHECK = "billed_vs_traced_gap"
MATCH_CHECK = "billed_models_matched"
FAILED_DAY = "Reconciliation failed for"  # how the step's failure starts when the gap check fails with ERROR
DEPTHS = ("provider", "model", "token_kind")
SHOWN_PER_DEPTH = 15  # rows of each depth in the check's tables; all of them are in the table


def build_cost_reconciliation(basis: str) -> dg.AssetsDefinition:
    """The reconciliation asset; `basis` (the cost basis) sets how hard a bill the traces do not meet fails."""

    @dg.asset(
        partitions_def=daily_partitions,
        pool=WAREHOUSE_POOL,
        group_name="reconciliation",
        kinds={"duckdb"},
        deps=["allocated_costs", "openai_costs", "anthropic_costs", "other_provider_costs"],
        description=(
            "Per day: what providers billed vs what Langfuse traced, per provider, per model and per token kind "
            "(input, cached, cache_write, output), with the gap in $ and % of the bill. The bill is the truth for "
            "how much; Langfuse for the breakdown. A model mapped to no provider is its own row. A day is "
            "provisional until its bills settle (FINOPS_SETTLING_DAYS after it ends)."
        ),
        check_specs=[
            daily_check(GAP_CHECK, "cost_reconciliation",
                        description="|billed − traced| per billing provider within the warn and error thresholds; "
                                    "a provisional day warns at most. An ERROR fails the day: its run and its partition."),
            daily_check(MATCH_CHECK, "cost_reconciliation",
                        description="No large share of a provider's bill is for models no trace names while traced models "
                                    "of that provider find no bill line: the two sides' names failed to meet. ERROR on the "
                                    "invoice cost basis, where such spend is delivered as `unattributed`; WARN otherwise."),
        ],
    )
    def cost_reconciliation(
        context: dg.AssetExecutionContext, duckdb: DuckDBResource, settings: FinopsSettings
    ) -> Iterator[dg.MaterializeResult | dg.AssetObservation | dg.AssetCheckResult]:
        day = partition_day(context)
        settled_at = final_after(day, settings.settling_days)
        final = datetime.now(timezone.utc) >= settled_at
        with connect(duckdb) as conn:
            models = {m: set() for (m,) in conn.execute("SELECT DISTINCT model FROM allocated_costs WHERE day = ?", [day]).fetchall()}
            register_model_prices(conn, models, day, settings.provider_map)
            register_model_keys(conn, day)
            for statement in PREPARE_SQL:
                conn.execute(statement, {"day": day} if "$day" in statement else [])
            for attempt in transactions(conn):
                with attempt:
                    rows = replace_partition(conn, "cost_reconciliation", day, RECONCILE_SQL,
                                             {"billed_providers": settings.billed_providers, "final": final})
            table = conn.execute(
                "SELECT * EXCLUDE (day) FROM cost_reconciliation WHERE day = ? ORDER BY depth, provider, model, token_kind",
                [day]).df()
        check = gap_check(table, settings, final, settled_at)
        matched = match_check(table, settings, final, basis)
        metadata: dict = {"dagster/row_count": rows, "final": final}
        for r in table[table.depth == "provider"].itertuples():
            if r.provider != "unknown":
                metadata[f"{r.provider}_traced_usd"] = float(r.traced_usd)
                metadata[f"{r.provider}_billed_usd"] = float(r.billed_usd)
        metadata["by_provider"] = check.metadata["by_provider"]
        failed = [c for c in (check, matched) if not c.passed and c.severity == dg.AssetCheckSeverity.ERROR]
        if not failed:
            yield dg.MaterializeResult(metadata=metadata, check_results=[check, matched])
            return
        # The bill disagrees with the traces on a settled day: the day fails, visibly wherever a user looks for
        # it. A blocking check would fail the run but record the partition as materialized, so the partition
        # view and a backfill would call the day done. Instead the day's figures are recorded (the table, an
        # observation for the plots, the check), and the step fails without a materialization.
        yield dg.AssetObservation(asset_key=context.asset_key, partition=context.partition_key, metadata=metadata)
        yield check
        yield matched
        raise dg.Failure(description=f"{FAILED_DAY} {day}: " + " ".join(c.description for c in failed), allow_retries=False)

    return cost_reconciliation


def match_check(table: pd.DataFrame, settings: FinopsSettings, final: bool, basis: str) -> dg.AssetCheckResult:
    """Per billing provider, at model depth: the share of its bill for models no trace names, when some traced
    model of that provider found no bill line either (so the names, not the traces, are what is missing)."""
    models = table[(table.depth == "model") & table.has_bill]
    findings, worst = [], 0.0
    for provider, rows in models.groupby("provider"):
        billed = rows.billed_usd.astype(float).sum()
        orphans = rows[(rows.traced_usd.astype(float) == 0) & (rows.billed_usd.astype(float) > 0)]
        strays = rows[(rows.billed_usd.astype(float) == 0) & (rows.traced_usd.astype(float) > 0)]
        share = 100 * orphans.billed_usd.astype(float).sum() / billed if billed else 0.0
        if len(strays) and share > settings.unmatched_bill_pct:
            worst = max(worst, share)
            findings.append(
                f"{provider}: ${usd(orphans.billed_usd.astype(float).sum())} ({share:.1f}% of the bill) is billed for "
                + ", ".join(f"`{m}`" for m in orphans.model) + " that no trace names, while traced "
                + ", ".join(f"`{r.model}` (${usd(r.traced_usd)})" for r in strays.itertuples())
                + " found no bill line")
    error = basis == "invoice" and final
    if findings:
        description = ("; ".join(findings) + ". If these are one model under two names, map them (FINOPS_PROVIDER_MAP "
                       "for the provider; the model names must meet as pricing.model_key reads them)"
                       + (": on the invoice basis this spend is delivered as `unattributed`." if basis == "invoice" else "."))
    else:
        description = (f"Every billing provider's bill meets its traces at model depth (no more than "
                       f"{settings.unmatched_bill_pct:g}% billed for untraced models while traced ones found no bill line).")
    return dg.AssetCheckResult(
        check_name=MATCH_CHECK, passed=not findings,
        severity=dg.AssetCheckSeverity.ERROR if error else dg.AssetCheckSeverity.WARN,
        description=description,
        metadata={"worst_unmatched_share_pct": float(worst), "threshold_pct": settings.unmatched_bill_pct,
                  "cost_basis": basis},
    )


def gap_check(table: pd.DataFrame, settings: FinopsSettings, final: bool, settled_at: datetime) -> dg.AssetCheckResult:
    verdicts = provider_verdicts(table, settings.reconciliation_warn_pct, settings.reconciliation_error_pct)
    failing = [v for v in verdicts if v.level != "ok"]
    # Bills still move for a few days: a gap on a provisional day is worth a look, not an alarm.
    error = final and any(v.level == "ERROR" for v in failing)
    status = "" if final else f"Provisional until {settled_at:%Y-%m-%d %H:%M} UTC (bills still settle; ERROR only after): "
    if failing:
        description = status + "; ".join(
            f"{v.provider}: billed ${usd(v.billed)} vs traced ${usd(v.traced)}, gap {usd(v.gap, signed=True)} USD "
            f"({_pct(v.gap_pct)}) {v.level}" for v in failing
        ) + f" (warn > {settings.reconciliation_warn_pct:g}%, error > {settings.reconciliation_error_pct:g}%)."
        explained = _largest_gaps(table, {v.provider for v in failing})
        if explained:
            description += " Largest gaps: " + "; ".join(explained) + "."
    else:
        description = status + ("; ".join(f"{v.provider}: gap {_pct(v.gap_pct)}" for v in verdicts) or "no billing provider")
    metadata: dict = {
        f"by_{depth}": dg.MetadataValue.md(_depth_table(table, depth)) for depth in DEPTHS
    }
    metadata.update({
        "max_abs_gap_pct": max((abs(v.gap_pct) for v in verdicts if v.gap_pct is not None), default=0.0),
        "warn_pct": settings.reconciliation_warn_pct,
        "error_pct": settings.reconciliation_error_pct,
        "final": final,
        "final_after": settled_at.isoformat(),
    })
    return dg.AssetCheckResult(
        check_name=GAP_CHECK,
        passed=not failing,
        severity=dg.AssetCheckSeverity.ERROR if error else dg.AssetCheckSeverity.WARN,
        description=description,
        metadata=metadata,
    )


def _ranked(table: pd.DataFrame, depth: str) -> pd.DataFrame:
    rows = table[table.depth == depth]
    return rows.iloc[rows.gap_usd.astype(float).abs().argsort()[::-1]]


def _largest_gaps(table: pd.DataFrame, providers: set[str], n: int = 3) -> list[str]:
    """The rows that explain the failing providers' gaps, largest first, each at the deepest depth it has:
    "openai gpt-4.1-nano: +5.53 USD (billed, not traced)"."""
    kinds = table[table.depth == "token_kind"]
    split = set(zip(kinds.provider, kinds.model))
    unsplit = pd.Series([(p, m) not in split for p, m in zip(table.provider, table.model)], index=table.index)
    models = table[(table.depth == "model") & unsplit]
    rows = pd.concat([kinds, models])
    rows = rows[rows.provider.isin(providers) & (rows.gap_usd.astype(float).abs() > 1e-9)]
    rows = rows.iloc[rows.gap_usd.astype(float).abs().argsort()[::-1]]
    explained = []
    for r in rows.itertuples():
        if len(explained) == n:
            break
        explained.append(f"{label(r)}: {usd(r.gap_usd, signed=True)} USD ({reading(float(r.traced_usd), float(r.billed_usd))})")
    return explained


def _depth_table(table: pd.DataFrame, depth: str) -> str:
    rows = _ranked(table, depth)
    if rows.empty:
        return "no rows at this depth (one side cannot split its cost this way)"
    shown = pd.DataFrame({
        "what": [label(r) for r in rows.itertuples()],
        "traced $": rows.traced_usd.astype(float).round(2).to_numpy(),
        "billed $": rows.billed_usd.astype(float).round(2).to_numpy(),
        "gap $": rows.gap_usd.astype(float).round(2).to_numpy(),
        "gap %": [None if pd.isna(p) else round(float(p), 1) for p in rows.gap_pct],
        "reading": [reading(float(t), float(b)) for t, b in zip(rows.traced_usd, rows.billed_usd)],
    })
    more = len(shown) - SHOWN_PER_DEPTH
    text = shown.head(SHOWN_PER_DEPTH).to_markdown(index=False)
    return text + (f"\n\n… and {more} smaller rows in table `cost_reconciliation`." if more > 0 else "")


def _pct(gap_pct: float | None) -> str:
    return "nothing billed" if gap_pct is None else f"{gap_pct:+.1f}%"
