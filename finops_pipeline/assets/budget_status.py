"""budget_status: each budget's period to date, share, projected end and thresholds crossed; its check alerts
each threshold once per period."""


from datetime import date, timedelta
from decimal import Decimal

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource

from finops_pipeline.assets.finout_upload import delivery_asset_args
from finops_pipeline.budgets import TOTAL, Budget, BudgetsFileError, contributors, load_budgets, stage_spend
from finops_pipeline.destinations.finout import shown_as_delivered
from finops_pipeline.partitions import daily_check, partition_day
from finops_pipeline.projection import backtest, forecast
from finops_pipeline.settings import FinopsSettings
from finops_pipeline.warehouse import connect, insert_new, replace_partition, transactions

BUDGET_CHECK = "budget_thresholds"
HISTORY_DAYS = 120  # behind the day: the forecast's 28 days and its backtest's origins
CONTRIBUTOR_DIMENSIONS = ("feature", "customer_id", "model")


def build_budget_status(basis: str) -> dg.AssetsDefinition:
    args = {**delivery_asset_args(basis), "group_name": "controls"}

    @dg.asset(
        name="budget_status",
        kinds={"duckdb"},
        **args,
        description=(
            f"Per budget (FINOPS_BUDGETS_FILE, else $FINOPS_HOME/budgets.yaml) and for all spend, on the `{basis}` "
            "cost basis: the period to date through the day, its share of the amount, the projected period end "
            "with an 80% range (weekday mix and trend of the last 28 days) and the highest threshold crossed. "
            "Days of the period not yet allocated are counted, never taken as $0. Re-running a day replaces it."),
        check_specs=[daily_check(
            BUDGET_CHECK, "budget_status",
            description="Every budget's state: WARN at a threshold under 100% or a projection past 100%, ERROR at "
                        "100% or more. Each threshold of each budget is alerted once per period, on the day it is "
                        "first crossed; on the other days the check shows the state without alerting.")],
    )
    def budget_status(context: dg.AssetExecutionContext, duckdb: DuckDBResource,
                      settings: FinopsSettings) -> dg.MaterializeResult:
        day = partition_day(context)
        if settings.budgets_file and not settings.budgets_path.exists():  # named, so meant: not "no budgets"
            raise dg.Failure(f"FINOPS_BUDGETS_FILE={settings.budgets_file} does not exist.")
        try:
            budgets = load_budgets(settings.budgets_path, settings.allocation_keys)
        except BudgetsFileError as exc:
            raise dg.Failure(str(exc)) from None
        dimensions = [d for d in CONTRIBUTOR_DIMENSIONS if d == "model" or d in settings.allocation_keys]
        with connect(duckdb) as conn:
            total = Budget(name=TOTAL, period="monthly", amount_usd=Decimal(1), thresholds=[100])
            first = min([day - timedelta(days=HISTORY_DAYS)] + [b.period_of(day)[0] for b in budgets])
            missing = stage_spend(conn, first, day, basis, settings.allocation_keys, settings.billed_providers)
            known = {first + timedelta(days=i) for i in range((day - first).days + 1)} - set(missing)
            shown = shown_as_delivered(settings.hashed_dimensions, settings.hash_salt)  # as the delivery names them
            rows = [_status(conn, b, day, missing, known, dimensions, shown,
                            amount=b.amount_usd if b is not total else None) for b in [*budgets, total]]
            frame = pd.DataFrame(rows)
            conn.register("budget_rows", frame.drop(columns=["thresholds", "history_days"]))
            for attempt in transactions(conn):
                with attempt:
                    replace_partition(conn, "budget_status", day, "SELECT * FROM budget_rows")
                    new_alerts = _record_alerts(conn, day, [r for r in rows if r["budget"] != TOTAL])
            conn.unregister("budget_rows")
        check = _check(rows, new_alerts, settings)
        all_spend = rows[-1]
        metadata = {
            "budgets": len(budgets),
            "all_spend_period_usd": float(all_spend["spend_usd"]),
            "all_spend_projected_usd": float(all_spend["projected_usd"]),
            "projection_backtest_mape_pct": (dg.MetadataValue.float(round(all_spend["backtest_mape_pct"], 1))
                                             if all_spend["backtest_mape_pct"] is not None else "not enough history"),
            "projection_backtest_forecasts": all_spend["backtest_forecasts"],
            "days_missing": all_spend["days_missing"],
            "status": dg.MetadataValue.md(_table(rows)),
        }
        for r in rows[:-1]:
            metadata[f"share_pct/{r['budget']}"] = round(r["share_pct"], 1)
        return dg.MaterializeResult(metadata=metadata, check_results=[check])

    return budget_status


def _status(conn, budget: Budget, day: date, missing: list[date], known: set[date], dimensions: list[str],
            shown, amount: Decimal | None) -> dict:
    start, end = budget.period_of(day)
    predicate = budget.predicate()
    daily = {d: float(c) for d, c in conn.execute(
        f"SELECT day, sum(cost_usd) FROM spend WHERE {predicate} GROUP BY day").fetchall()}
    spend = conn.execute(f"SELECT coalesce(sum(cost_usd), 0) FROM spend WHERE {predicate} AND day BETWEEN ? AND ?",
                         [start, day]).fetchone()[0]
    left = [day + timedelta(days=i) for i in range(1, (end - day).days + 1)]
    unknown = [d for d in missing if start <= d <= day]  # forecast like the days left: never $0
    ahead = forecast(daily, day, unknown + left, known)
    mape, compared = backtest(daily, day, max(len(left), 7), known=known)
    history = sum(1 for d in known if day - timedelta(days=27) <= d <= day)
    share = float(spend / amount * 100) if amount else None
    crossed = [t for t in budget.thresholds if share is not None and share >= t]
    top = contributors(conn, predicate, start, day, dimensions)
    money = lambda v: Decimal(str(round(v, 6)))  # noqa: E731 - the forecast is a float; the table holds DECIMAL
    projected = spend + money(ahead.expected)
    return {
        "day": day, "budget": budget.name, "scope": budget.scope_text(), "period": budget.period,
        "period_start": start, "period_end": end, "amount_usd": amount, "spend_usd": spend,
        "share_pct": share, "projected_usd": projected, "projected_low_usd": spend + money(ahead.low),
        "projected_high_usd": spend + money(ahead.high),
        "projected_share_pct": float(projected / amount * 100) if amount else None,
        "threshold_crossed": max(crossed) if crossed else None,
        "days_missing": sum(1 for d in missing if start <= d <= day),
        "contributors": ", ".join(f"{'customer' if c.dimension == 'customer_id' else c.dimension} {shown(c.dimension, c.value)} "
                                  f"${c.cost:,.2f}" for c in top),
        "backtest_mape_pct": mape, "backtest_forecasts": compared, "thresholds": budget.thresholds,
        "history_days": history,
    }


def _record_alerts(conn, day: date, rows: list[dict]) -> list[tuple[dict, str]]:
    """The thresholds first crossed in this run (and projections first past 100%), recorded so that no
    later run of any day of the period alerts them again."""
    new = []
    for r in rows:
        keys = [f"{t:g}" for t in r["thresholds"] if r["share_pct"] >= t]
        # a projection from under a week of days is too unsure to alert on (it still shows)
        if (r["projected_share_pct"] or 0) > 100 and r["share_pct"] < 100 and r["history_days"] >= 7:
            keys.append("projected 100")
        for key in keys:
            if insert_new(conn, "budget_alerts", ["budget", "period_start", "threshold"],
                          [r["budget"], r["period_start"], key, day]):
                new.append((r, key))
    return new


def _sentence(r: dict) -> str:
    through = r["day"].strftime("%m-%d")
    text = (f"{r['budget']} ({r['scope']}, {r['period']} from {r['period_start']}): ${r['spend_usd']:,.2f} of "
            f"${r['amount_usd']:,.2f} ({r['share_pct']:.0f}%) through {through}")
    if r["days_missing"]:
        text += (f" with {r['days_missing']} day{'s' if r['days_missing'] > 1 else ''} of the period not yet "
                 "allocated (so at least this; the projection estimates them)")
    if r["period_end"] > r["day"] or r["days_missing"]:
        text += (f"; projected ${r['projected_usd']:,.2f} ({r['projected_share_pct']:.0f}%, range "
                 f"${r['projected_low_usd']:,.2f}-${r['projected_high_usd']:,.2f}) by {r['period_end']:%m-%d}")
    if r["contributors"]:
        text += f"; largest: {r['contributors']}"
    return text


def _check(rows: list[dict], new_alerts: list[tuple[dict, str]], settings: FinopsSettings) -> dg.AssetCheckResult:
    budgets = [r for r in rows if r["budget"] != TOTAL]
    over = [r for r in budgets if r["share_pct"] >= 100]
    warned = [r for r in budgets if r not in over and (r["threshold_crossed"] is not None
                                                       or (r["projected_share_pct"] or 0) > 100)]
    missing = [r for r in budgets if r["days_missing"]]
    if not budgets:
        gap = rows[-1]["days_missing"]
        description = (f"No budgets in {settings.budgets_path}: only all spend is projected "
                       f"(${rows[-1]['projected_usd']:,.2f} by {rows[-1]['period_end']:%m-%d}"
                       + (f", {gap} unknown day{'s' if gap > 1 else ''} of the month estimated" if gap else "") + ").")
    else:
        description = (f"{len(over)} of {len(budgets)} budgets at or over 100%, {len(warned)} warned. "
                       + " ".join(f"{_sentence(r)}." for r in budgets))
    alert = "; ".join(f"{r['budget']} {'projected past 100%' if key == 'projected 100' else f'crossed {key}%'}: "
                      f"{_sentence(r)}" for r, key in new_alerts)
    return dg.AssetCheckResult(
        check_name=BUDGET_CHECK,
        passed=not (over or warned or missing),
        severity=dg.AssetCheckSeverity.ERROR if over else dg.AssetCheckSeverity.WARN,
        description=description,
        metadata={"budgets_over": len(over), "budgets_warned": len(warned), "new_alerts": len(new_alerts),
                  "alert": alert or "none"},
    )


def _table(rows: list[dict]) -> str:
    frame = pd.DataFrame([{
        "budget": r["budget"], "period": f"{r['period']} {r['period_start']}",
        "spend": f"${r['spend_usd']:,.2f}", "amount": f"${r['amount_usd']:,.2f}" if r["amount_usd"] else "",
        "share": f"{r['share_pct']:.0f}%" if r["share_pct"] is not None else "",
        "projected": f"${r['projected_usd']:,.2f} ({r['projected_low_usd']:,.0f}-{r['projected_high_usd']:,.0f})",
        "crossed": f"{r['threshold_crossed']:g}%" if r["threshold_crossed"] is not None else "",
        "days missing": r["days_missing"]} for r in rows])
    return frame.to_markdown(index=False)
