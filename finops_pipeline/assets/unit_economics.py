"""unit_economics: the day's cost per call, request, user and outcome per feature, customer and tier; each
customer's month-to-date AI cost against its revenue, and the check that warns when it eats the margin."""

from datetime import date

import dagster as dg
from dagster_duckdb import DuckDBResource

from finops_pipeline.assets.finout_upload import delivery_asset_args
from finops_pipeline.budgets import period_bounds, stage_spend
from finops_pipeline.cost_basis import UNATTRIBUTED
from finops_pipeline.destinations.finout import hashed_sql
from finops_pipeline.economics import (
    UNIT_DIMENSIONS, BusinessFileError, duplicate_note, duplicate_revenue_lines, load_outcomes, load_revenue, margin_sql,
    unit_economics_sql,
)
from finops_pipeline.generations import UNALLOCATED
from finops_pipeline.partitions import daily_check, partition_day
from finops_pipeline.retention import RetiredDay, check_not_retired
from finops_pipeline.settings import FinopsSettings
from finops_pipeline.warehouse import connect, insert_new, replace_partition, transactions

MARGIN_CHECK = "ai_cost_within_revenue"


def build_unit_economics(basis: str) -> dg.AssetsDefinition:
    @dg.asset(
        name="unit_economics",
        kinds={"duckdb"},
        **{**delivery_asset_args(basis), "group_name": "economics"},
        description=(
            "Per feature, customer_id and tier, the day's traced spend, calls, requests (traces), users, cost per "
            "call, per 1,000 requests and per user, and per feature the cost per business outcome "
            "(FINOPS_OUTCOMES_FILE); per customer, the month-to-date AI cost on the "
            f"`{basis}` cost basis against the month's revenue (FINOPS_REVENUE_FILE) in `customer_margin`, and per "
            "feature in `feature_margin` where the revenue file gives features their revenue. A missing file "
            "leaves those figures out, never zero."),
        check_specs=[daily_check(
            MARGIN_CHECK, "unit_economics",
            description="WARN naming each customer whose month-to-date AI cost passes FINOPS_MARGIN_WARN_PCT of "
                        "its revenue, or whose margin is negative; each customer alerted once a month.")],
    )
    def unit_economics(context: dg.AssetExecutionContext, duckdb: DuckDBResource,
                       settings: FinopsSettings) -> dg.MaterializeResult:
        day = partition_day(context)
        dimensions = [d for d in UNIT_DIMENSIONS if d in settings.allocation_keys]
        month_start, _ = period_bounds("monthly", day)
        with connect(duckdb) as conn:
            try:
                check_not_retired(conn, day, "unit_economics")
                has_revenue = load_revenue(conn, settings.revenue_path)
                has_outcomes = load_outcomes(conn, settings.outcomes_path)
            except (BusinessFileError, RetiredDay) as exc:
                raise dg.Failure(str(exc)) from None
            duplicates = duplicate_revenue_lines(conn) if has_revenue else []
            # the month's spend on the cost basis is for the margins only: without revenue, nothing to stage
            missing = stage_spend(conn, month_start, day, basis, settings.allocation_keys,
                                  settings.billed_providers) if has_revenue else []
            for attempt in transactions(conn):
                with attempt:
                    rows = replace_partition(conn, "unit_economics", day, unit_economics_sql(dimensions, has_outcomes))
                    month = {"month": f"{day:%Y-%m}"}
                    # revenue unknown: no margin rows, rather than margins of $0 revenue
                    margins = replace_partition(conn, "customer_margin", day, margin_sql("customer_id"), month) \
                        if has_revenue else _clear(conn, "customer_margin", day)
                    by_feature = has_revenue and conn.execute(
                        "SELECT count(*) > 0 FROM revenue WHERE month = $month AND feature IS NOT NULL", month).fetchone()[0]
                    feature_margins = replace_partition(conn, "feature_margin", day, margin_sql("feature"), month) \
                        if by_feature else _clear(conn, "feature_margin", day)
                    flagged = _flagged(conn, day, settings)
                    new = [f for f in flagged if insert_new(conn, "margin_alerts", ["month", "customer_id", "kind"],
                                                            [f"{day:%Y-%m}", f["customer_id"], f["kind"], day])]
            shares = _shares(conn, day)
            features = conn.execute("SELECT value, cost_per_1k_requests FROM unit_economics WHERE day = ? AND "
                                    "dimension = 'feature' AND value <> ? ORDER BY value", [day, UNALLOCATED]).fetchall()
            feature_margin = conn.execute("SELECT feature, margin_usd FROM feature_margin WHERE day = ? AND "
                                          "margin_usd IS NOT NULL ORDER BY feature", [day]).fetchall()
            unmatched = conn.execute("""SELECT count(*), coalesce(sum(ai_cost_usd), 0) FROM customer_margin
                                        WHERE day = ? AND revenue_usd IS NULL AND customer_id NOT IN (?, ?)""",
                                     [day, UNALLOCATED, UNATTRIBUTED]).fetchone()
        check = _check(flagged, new, has_revenue, unmatched, len(missing), settings, duplicates)
        metadata = {"dagster/row_count": rows, "customers_with_margin": margins, "features_with_margin": feature_margins,
                    "free_tier_share_pct": shares[0], "top10_customers_share_pct": shares[1],
                    "revenue_file": str(settings.revenue_path) if has_revenue else "none: margins left out",
                    "outcomes_file": str(settings.outcomes_path) if has_outcomes else "none: cost per outcome left out",
                    "revenue_duplicate_lines": sum(len(lines) - 1 for lines in duplicates),
                    **({"month_days_not_known": len(missing)} if has_revenue else {})}
        for feature, per_1k in features:  # the UI plots each over the days
            if per_1k is not None:
                metadata[f"cost_per_1k_requests/{feature}"] = round(per_1k, 4)
        for feature, margin in feature_margin:
            metadata[f"margin_usd/{feature}"] = float(margin)
        return dg.MaterializeResult(metadata=metadata, check_results=[check])

    return unit_economics


def _clear(conn, table: str, day: date) -> int:
    conn.execute(f"DELETE FROM {table} WHERE day = ?", [day])
    return 0


def _flagged(conn, day: date, settings: FinopsSettings) -> list[dict]:
    """Customers whose AI cost passes the share of their revenue, or whose margin is negative; named as the
    delivery names them (hashed where it hashes customer_id)."""
    name = "customer_id"
    params: dict = {"day": day, "limit": settings.margin_warn_pct}
    if "customer_id" in settings.hashed_dimensions:
        name = hashed_sql("customer_id", "customer_id")
        params["salt"] = settings.hash_salt or ""
    rows = conn.execute(f"""
        SELECT customer_id, {name} AS shown, revenue_usd, ai_cost_usd, margin_usd, ai_share_pct,
               CASE WHEN margin_usd < 0 THEN 'negative margin' ELSE 'share' END AS kind
        FROM customer_margin
        WHERE day = $day AND revenue_usd IS NOT NULL AND (margin_usd < 0 OR ai_share_pct > $limit)
        ORDER BY margin_usd, customer_id""", params).df()
    return rows.to_dict("records")


def _shares(conn, day: date) -> tuple[float, float]:
    """(% of the day's spend from the free tier, % from the top 10 customers)."""
    free, top = conn.execute(f"""
        WITH total AS (SELECT nullif(sum(cost_usd), 0)::DOUBLE AS t FROM langfuse_generations WHERE day = $day),
        customers AS (
            SELECT allocation['customer_id'] AS c, sum(cost_usd)::DOUBLE AS s FROM langfuse_generations
            WHERE day = $day AND allocation['customer_id'] IS NOT NULL AND allocation['customer_id'] <> '{UNALLOCATED}'
            GROUP BY ALL ORDER BY s DESC LIMIT 10)
        SELECT 100 * (SELECT coalesce(sum(cost_usd), 0)::DOUBLE FROM langfuse_generations
                      WHERE day = $day AND allocation['tier'] = 'free') / (SELECT t FROM total),
               100 * (SELECT coalesce(sum(s), 0) FROM customers) / (SELECT t FROM total)""", {"day": day}).fetchone()
    return round(free or 0.0, 2), round(top or 0.0, 2)


def _check(flagged: list[dict], new: list[dict], has_revenue: bool, unmatched: tuple, missing: int,
           settings: FinopsSettings, duplicates: list[list[int]]) -> dg.AssetCheckResult:
    if not has_revenue:
        return dg.AssetCheckResult(
            check_name=MARGIN_CHECK, passed=True,
            description=f"No revenue file at {settings.revenue_path}: margins are left out (not zero).",
            metadata={"new_alerts": 0, "alert": "none"})

    def sentence(f: dict) -> str:
        return (f"customer {f['shown']}: AI cost ${f['ai_cost_usd']:,.2f} of revenue ${f['revenue_usd']:,.2f} "
                f"({f['ai_share_pct']:.0f}%), margin ${f['margin_usd']:,.2f}" if f["revenue_usd"] else
                f"customer {f['shown']}: AI cost ${f['ai_cost_usd']:,.2f} against no revenue this month")

    count, cost = unmatched
    notes = (f" {count} customers with AI cost have no revenue row this month (${cost:,.2f}): their margin is "
             "unknown." if count else "") + (f" {missing} days of the month not known: costs are at least these."
                                              if missing else "") + duplicate_note(settings.revenue_path, duplicates)
    description = (f"{len(flagged)} customers past {settings.margin_warn_pct:g}% of revenue or below zero margin, "
                   f"month to date: " + "; ".join(sentence(f) for f in flagged) + "." if flagged else
                   f"Every customer with revenue keeps its AI cost within {settings.margin_warn_pct:g}% of it, month "
                   "to date.") + notes
    return dg.AssetCheckResult(
        check_name=MARGIN_CHECK, passed=not flagged, severity=dg.AssetCheckSeverity.WARN, description=description,
        metadata={"customers_flagged": len(flagged), "new_alerts": len(new),
                  "alert": "; ".join(sentence(f) for f in new) or "none"})

