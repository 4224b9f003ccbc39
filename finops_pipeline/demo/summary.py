"""A summary a finance lead can read: traced vs billed per day, where the money went, where the files are."""

from datetime import date
from pathlib import Path

import duckdb
import pandas as pd

from finops_pipeline.assets.cost_reconciliation import GAP_CHECK, provider_verdicts
from finops_pipeline.destinations.finout import file_name
from finops_pipeline.settings import FinopsSettings


def _evaluation(evaluations: list, check_name: str):
    return next((e for e in evaluations if e.check_name == check_name), None)


def _check_word(evaluation) -> str:
    if evaluation is None:
        return "not run"
    return "PASS" if evaluation.passed else f"FAIL ({evaluation.severity.value})"


def print_summary(conn: duckdb.DuckDBPyConnection, days: list[date], checks: dict[str, list],
                  settings: FinopsSettings) -> None:
    print("\nTraced (Langfuse) vs billed (provider), per day and provider")
    print(f"{'day':<12}{'provider':<22}{'traced $':>12}{'billed $':>12}{'gap $':>10}{'gap %':>8}  provider, day's check")
    failing: dict[date, list[str]] = {}
    for day in days:
        table = conn.execute(
            "SELECT * EXCLUDE (day) FROM cost_reconciliation WHERE day = ? ORDER BY provider, model", [day]).df()
        levels = {v.provider: v.level for v in provider_verdicts(
            table, settings.reconciliation_warn_pct, settings.reconciliation_error_pct)}
        evaluation = _evaluation(checks.get(day.isoformat(), []), GAP_CHECK)
        verdict = _check_word(evaluation)
        if evaluation is not None and not evaluation.passed:
            failing[day] = [line for line in (evaluation.description or "").split(" Largest gaps: ")[1:]]
        for r in table[table.depth == "provider"].itertuples():
            if r.provider in levels:
                settling = "" if r.final else " (provisional)"
                note = f"{levels[r.provider]:<6} check {verdict}{settling}"
            else:
                note = f"no bill; {r.unpriced_generations:,} unpriced generations"
            name = r.provider if r.provider != "unknown" else f"none: {r.model}"
            pct = "" if pd.isna(r.gap_pct) else f"{r.gap_pct:+.1f}"
            print(f"{day.isoformat():<12}{name[:21]:<22}{r.traced_usd:>12,.2f}{r.billed_usd:>12,.2f}"
                  f"{r.gap_usd:>+10,.2f}{pct:>8}  {note}")
    for day, explanations in failing.items():
        for text in explanations:
            print(f"{day}: largest gaps: {text}")

    period = [days[0], days[-1]]
    total, unpriced, quarantined = conn.execute("""
        SELECT (SELECT sum(cost_usd) FROM allocated_costs WHERE day BETWEEN $1 AND $2),
               (SELECT sum(unpriced_calls) FROM allocated_costs WHERE day BETWEEN $1 AND $2),
               (SELECT count(*) FROM quarantine WHERE day BETWEEN $1 AND $2)""", period).fetchone()
    for key in ("feature", "team"):
        if key not in settings.allocation_keys:
            continue
        print(f"\nTop {key}s by cost, {days[0]} .. {days[-1]} (total ${total:,.2f})")
        for value, cost in conn.execute(f"""
                SELECT allocation['{key}'], sum(cost_usd) FROM allocated_costs WHERE day BETWEEN $1 AND $2
                GROUP BY 1 ORDER BY 2 DESC LIMIT 6""", period).fetchall():
            print(f"  {value:<24}{cost:>12,.2f}  {100 * cost / total:5.1f}%")
    print(f"\nNot in the totals: {unpriced:,} generations of models with no price (see the unpriced check); "
          f"{quarantined} malformed rows quarantined (table `quarantine`).")
    print(f"\nFinout files: {Path(settings.finout_dir) / file_name(days[0], settings.finout_object_name).replace(days[0].isoformat(), '*')}"
          + (f" (and {settings.finout_s3_uri})" if settings.finout_s3_uri else ""))
    print(f"FOCUS files:  {Path(settings.focus_dir)}/focus-*.csv")
    print(f"Warehouse:    {settings.duckdb_path}  (tables langfuse_generations, allocated_costs, provider_costs, "
          "cost_reconciliation, quarantine)")
