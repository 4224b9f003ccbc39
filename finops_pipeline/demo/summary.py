"""A summary a finance lead can read: traced vs billed per day, where the money went, where the files are.

Figures are rounded to cents first, and every gap and total is computed from the rounded figures shown, so
the printed columns add up. gap = billed − traced.
"""

from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import duckdb

from finops_pipeline.assets.cost_reconciliation import GAP_CHECK, provider_verdicts
from finops_pipeline.destinations.finout import file_name
from finops_pipeline.settings import FinopsSettings

CENT = Decimal("0.01")


def _cents(value) -> Decimal:
    return Decimal(str(value)).quantize(CENT, ROUND_HALF_UP)


def _row(day: date, what: str, traced: Decimal, billed: Decimal, verdict: str) -> str:
    gap = billed - traced
    pct = f"{100 * gap / billed:+.1f}" if billed else ""
    return f"{day.isoformat():<12}{what[:24]:<25}{traced:>12,.2f}{billed:>12,.2f}{gap:>+10,.2f}{pct:>8}  {verdict}"


def _check_word(evaluation) -> str:
    if evaluation is None:
        return "check not run"
    return "check PASS" if evaluation.passed else f"check FAIL ({evaluation.severity.value})"


def print_summary(conn: duckdb.DuckDBPyConnection, days: list[date], checks: dict[str, list],
                  settings: FinopsSettings) -> None:
    print("\nTraced (Langfuse) vs billed (provider), per day and provider; USD, gap = billed − traced")
    print(f"{'day':<12}{'provider':<25}{'traced $':>12}{'billed $':>12}{'gap $':>10}{'gap %':>8}  verdict")
    explained: list[str] = []
    for day in days:
        table = conn.execute(
            "SELECT * EXCLUDE (day) FROM cost_reconciliation WHERE day = ? AND depth = 'provider' ORDER BY provider, model",
            [day]).df()
        levels = {v.provider: v.level for v in provider_verdicts(
            table, settings.reconciliation_warn_pct, settings.reconciliation_error_pct)}
        provisional = " (provisional)" if len(table) and not table.final.iloc[0] else ""
        traced_total = billed_total = Decimal(0)
        unpriced: list[str] = []
        for r in table.itertuples():
            if r.provider not in levels:  # no bill to judge it against: named below the day's total
                if r.unpriced_generations:
                    unpriced.append(f"{r.model} ({r.unpriced_generations:,} generations, no price)")
                if not _cents(r.traced_usd):
                    continue
            traced, billed = _cents(r.traced_usd), _cents(r.billed_usd)
            traced_total, billed_total = traced_total + traced, billed_total + billed
            name = r.provider if r.provider != "unknown" else f"no provider: {r.model}"
            verdict = f"{levels[r.provider]}{provisional}" if r.provider in levels else "no bill"
            print(_row(day, name, traced, billed, verdict))
        evaluation = next((e for e in checks.get(day.isoformat(), []) if e.check_name == GAP_CHECK), None)
        print(_row(day, "total", traced_total, billed_total, _check_word(evaluation) + provisional))
        if unpriced:
            print(f"{'':<12}not in the totals: {'; '.join(unpriced)}")
        if evaluation is not None and not evaluation.passed and " Largest gaps: " in (evaluation.description or ""):
            explained.append(f"{day}: largest gaps: {evaluation.description.split(' Largest gaps: ', 1)[1]}")
    for line in explained:
        print(line)

    period = [days[0], days[-1]]
    total, unpriced_calls, quarantined = conn.execute("""
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
    print(f"\nNot in the totals: {unpriced_calls:,} generations of models with no price (see the unpriced check); "
          f"malformed rows quarantined: {quarantined} (table `quarantine`).")
    print(f"\nFinout files: {Path(settings.finout_dir) / file_name(days[0], settings.finout_object_name).replace(days[0].isoformat(), '*')}"
          + (f" (and {settings.finout_s3_uri})" if settings.finout_s3_uri else ""))
    print(f"FOCUS files:  {Path(settings.focus_dir)}/focus-*.csv")
    where = (f"the lakehouse {settings.warehouse} ({settings.warehouse_data_path or 'its data path'})"
             if settings.warehouse else settings.duckdb_path)
    print(f"Warehouse:    {where}  (tables langfuse_generations, allocated_costs, provider_costs, "
          "cost_reconciliation, quarantine)")
    print("Runs, checks and plots: `make dev`, then http://localhost:3000")



def print_controls(conn: duckdb.DuckDBPyConnection, day: date, evaluations: list) -> None:
    """Budgets, the month's projection and the day's anomalies, as of `day`, in a few lines."""
    rows = conn.execute("SELECT * FROM budget_status WHERE day = ? ORDER BY amount_usd IS NULL, budget", [day]).df()
    print(f"\nBudgets as of {day} (period to date; projected period end, 80% range)")
    for r in rows.itertuples():
        if r.amount_usd is None or r.amount_usd != r.amount_usd:  # the total: no amount
            trust = (f"; the forecast was off by {r.backtest_mape_pct:.0f}% on average over its last "
                     f"{r.backtest_forecasts} backtests" if r.backtest_forecasts else "; too new to backtest")
            print(f"  all spend: ${r.spend_usd:,.2f} this month; projected ${r.projected_usd:,.2f} "
                  f"(${r.projected_low_usd:,.2f}-${r.projected_high_usd:,.2f}) by {r.period_end:%m-%d}{trust}")
            continue
        crossed = f"crossed {r.threshold_crossed:g}%" if r.threshold_crossed == r.threshold_crossed and \
            r.threshold_crossed is not None else "under every threshold"
        print(f"  {r.budget:<15}{r.period:<10}${r.spend_usd:>9,.2f} of ${r.amount_usd:>9,.2f} ({r.share_pct:>4.0f}%)  "
              f"{crossed:<22} projected ${r.projected_usd:,.2f} ({r.projected_share_pct:.0f}%); largest: {r.contributors}")
    alerts = conn.execute("SELECT budget, threshold, day FROM budget_alerts ORDER BY day, budget, threshold").fetchall()
    for budget, threshold, when in alerts:
        if when.month == day.month or when >= day.replace(day=1):
            print(f"    alerted {when}: {budget} {threshold}{'' if threshold.startswith('projected') else '%'}")
    found = conn.execute("SELECT cause, explanation FROM cost_anomalies WHERE day = ? ORDER BY abs(cost_usd - usual_usd) DESC",
                         [day]).fetchall()
    print(f"\nAnomalies on {day} (against the same weekday of the four weeks before)")
    for cause, explanation in found:
        print(f"  [{cause}] {explanation}")
    if not found:
        print("  none")


def print_economics(conn: duckdb.DuckDBPyConnection, day: date, warn_pct: float) -> None:
    """Unit costs per feature on `day`, and the month's margins that need a look."""
    rows = conn.execute("""SELECT value, spend_usd, cost_per_1k_requests, cost_per_outcome, outcome FROM unit_economics
                           WHERE day = ? AND dimension = 'feature' AND value <> 'unallocated' ORDER BY spend_usd DESC""",
                        [day]).fetchall()
    print(f"\nUnit economics on {day}: per feature, cost per 1,000 requests and per outcome")
    for feature, spend, per_1k, per_outcome, outcome in rows:
        what = f"${per_outcome:,.4f} per outcome ({outcome})" if per_outcome else "no outcomes known"
        print(f"  {feature:<16}${spend:>8,.2f}  ${per_1k:>8,.2f} per 1k requests  {what}")
    margins = conn.execute("""SELECT customer_id, revenue_usd, ai_cost_usd, margin_usd, ai_share_pct FROM customer_margin
                              WHERE day = ? AND revenue_usd IS NOT NULL AND (margin_usd < 0 OR ai_share_pct > ?)
                              ORDER BY margin_usd""", [day, warn_pct]).fetchall()
    print(f"\nMargin, {day:%B} to date: customers whose AI cost is past {warn_pct:g}% of revenue or whose margin "
          "is negative")
    for customer, revenue, cost, margin, share in margins:
        print(f"  {customer:<16}revenue ${revenue:>9,.2f}  AI cost ${cost:>8,.2f}  margin ${margin:>9,.2f}"
              + (f"  ({share:.0f}% of revenue)" if share is not None else "  (free tier: pays nothing)"))
    features = conn.execute("""SELECT feature, revenue_usd, ai_cost_usd, margin_usd FROM feature_margin
                               WHERE day = ? AND revenue_usd IS NOT NULL ORDER BY margin_usd""", [day]).fetchall()
    if features:
        print(f"Features with their own revenue (add-ons), {day:%B} to date")
        for feature, revenue, cost, margin in features:
            print(f"  {feature:<16}revenue ${revenue:>9,.2f}  AI cost ${cost:>8,.2f}  margin ${margin:>9,.2f}")


def print_report(result) -> None:
    """Where the month's report is, what it says at the top, and whether it agrees with the Finout files."""
    [materialization] = result.get_asset_materialization_events()
    meta = materialization.materialization.metadata
    [check] = result.get_asset_check_evaluations()
    print(f"\nMonthly report ({meta['status'].value}, {meta['days_known'].value} days, "
          f"${meta['total_cost_usd'].value:,.2f}): {meta['path'].value}")
    print(f"  {'agrees with' if check.passed else 'DISAGREES with'} the Finout files: {check.description}")
    print("  Open it in any browser; `make report MONTH=YYYY-MM` renders another month.")
