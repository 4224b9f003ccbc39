"""The monthly report's figures, read from the warehouse: what the month cost, where, for whom, against
what, and what is not in the totals.

Every dollar figure is on the configured cost basis (what was delivered to Finout), except where a table
says "traced" (Langfuse's own cost) or "billed" (the providers' bills). Sums are exact (DECIMAL); a day the
warehouse does not know is listed as unknown and never counted as $0. Customer ids are shown as the
delivery shows them (salted hashes where FINOPS_HASHED_DIMENSIONS says so).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal
from importlib.metadata import version

import duckdb

from finops_pipeline.budgets import TOTAL, period_bounds, stage_spend
from finops_pipeline.cost_basis import UNATTRIBUTED
from finops_pipeline.destinations.finout import dimension_expressions, hashed_sql
from finops_pipeline.economics import (
    duplicate_note, duplicate_revenue_lines, load_outcomes, load_revenue, margin_sql,
)
from finops_pipeline.generations import UNALLOCATED
from finops_pipeline.projection import WINDOW, Forecast, forecast
from finops_pipeline.reconciliation import final_after
from finops_pipeline.settings import FinopsSettings

TOP_CUSTOMERS = 20
CENT = Decimal("0.01")
NOT_A_KEY = "(not an allocation key)"
NO_CALLS = "(no AI calls)"  # customers with revenue and no AI cost this month


@dataclass
class MonthFigures:
    """One month as the report shows it. Tables are lists of rows (dicts); money is Decimal (USD)."""
    month: date                       # its first day
    last: date                        # its last day
    through: date                     # the last day reported (the month's last, or yesterday in a month in progress)
    basis: str
    final: bool
    status: str                       # why final or provisional, in words
    unknown_days: list[date]          # days through `through` the warehouse has not allocated (or whose bills are unread)
    delivered_usd: Decimal            # on the cost basis, the known days
    traced_usd: Decimal               # Langfuse's priced cost of the known days
    billed: list[dict]                # per provider: billed_usd, traced_usd over the days it billed
    by_team_feature: list[dict]       # team, feature, cost_usd (sums to delivered_usd exactly), shown_usd (cents
                                      # that add up to delivered_usd in cents)
    daily: list[dict]                 # day, cost_usd (None: unknown)
    projection: Forecast | None       # the days left and the unknown days (None: a closed month)
    projected_daily: list[dict]       # each day left: day, expected, low, high (USD, 80% range)
    customers: list[dict]             # top customers and the rest: customer, ai_cost_usd, revenue_usd, margin_usd, ai_share_pct
    customer_count: int
    tiers: list[dict]
    unit_costs: list[dict]            # per feature, this month and the one before
    feature_margins: list[dict]
    budgets: list[dict]
    budget_alerts: list[dict]
    anomalies: list[dict]
    reconciliation: list[dict]        # per provider, the month
    gap_days: list[dict]              # days past the warning threshold
    unpriced: list[dict]
    unallocated: list[dict]
    unattributed_usd: Decimal
    quarantined: list[dict]
    provenance: list[tuple[str, str]]
    has_revenue: bool
    has_outcomes: bool
    missing_tables: list[str] = field(default_factory=list)  # other assets with no row this month

    @property
    def projected_usd(self) -> Decimal | None:
        return None if self.projection is None else self.delivered_usd + _money(self.projection.expected)


def month_figures(conn: duckdb.DuckDBPyConnection, month: date, settings: FinopsSettings, basis: str,
                  now: datetime | None = None) -> MonthFigures:
    """The figures of `month` (any day of it) as of `now` (default: the clock). Raises ValueError when no
    day of the month has ended yet."""
    now = now or datetime.now(timezone.utc)
    first, last = period_bounds("monthly", month)
    through = min(last, now.date() - timedelta(days=1))
    if through < first:
        raise ValueError(f"{first:%B %Y} has no complete day yet: nothing to report before {first + timedelta(days=1)}.")
    history = min(first, through - timedelta(days=WINDOW - 1))  # the projection's weeks before
    missing = stage_spend(conn, history, through, basis, settings.allocation_keys, settings.billed_providers)
    unknown = [d for d in missing if d >= first]
    if len(unknown) == (through - first).days + 1:
        raise ValueError(f"No day of {first:%B %Y} through {through} is known (allocated_costs has written none"
                         + (", or their bills are not read" if basis == "invoice" else "")
                         + "): nothing to report rather than $0. Materialize the month's days first.")
    settled_at = final_after(last, max(settings.settling_days, settings.lookback_days))
    final = through == last and not unknown and now >= settled_at
    status = ("every day allocated, and its bills and late Langfuse data settled on "
              f"{settled_at:%Y-%m-%d}" if final else
              f"{'the month is in progress' if through < last else 'the month has closed'}"
              + (f", {len(unknown)} of its days not known" if unknown else "")
              + f"; final once every day is in and settled ({settled_at:%Y-%m-%d})")
    params = {"first": first, "through": through}
    expressions = dimension_expressions(settings.allocation_keys, settings.hashed_dimensions)
    if settings.hashed_dimensions:
        params["salt"] = settings.hash_salt or ""
    conn.execute("CREATE OR REPLACE TEMP TABLE month_spend AS SELECT * FROM spend WHERE day BETWEEN $first AND $through",
                 {"first": first, "through": through})
    has_revenue = load_revenue(conn, settings.revenue_path)
    has_outcomes = load_outcomes(conn, settings.outcomes_path)

    def key(name: str) -> str:  # a dimension as delivered, or a placeholder when it is not an allocation key
        return expressions[name] if name in settings.allocation_keys else f"'{NOT_A_KEY}'"

    [(delivered,)] = conn.execute("SELECT coalesce(sum(cost_usd), 0) FROM month_spend").fetchall()
    [(traced,)] = _run(conn,
        "SELECT coalesce(sum(cost_usd), 0) FROM allocated_costs WHERE day BETWEEN $first AND $through AND day NOT IN "
        "(SELECT unnest($unknown::DATE[]))", {**params, "unknown": unknown}).fetchall()
    daily_cost = dict(conn.execute("SELECT day, sum(cost_usd) FROM spend GROUP BY day").fetchall())
    known = {history + timedelta(days=i) for i in range((through - history).days + 1)} - set(missing)
    left = [through + timedelta(days=i) for i in range(1, (last - through).days + 1)]
    daily_float = {d: float(v) for d, v in daily_cost.items()}
    projection = forecast(daily_float, through, unknown + left, known) \
        if left else None  # a closed month is not projected: its unknown days stay unknown

    by_team_feature = _records(conn, f"""
            SELECT team, feature, cost_usd FROM (
                SELECT {key('team')} AS team, {key('feature')} AS feature, sum(cost_usd) AS cost_usd
                FROM month_spend GROUP BY ALL)
            ORDER BY sum(cost_usd) OVER (PARTITION BY team) DESC, team, cost_usd DESC, feature""", params)
    for row, shown in zip(by_team_feature, cents_that_add([r["cost_usd"] for r in by_team_feature], delivered)):
        row["shown_usd"] = shown

    return MonthFigures(
        month=first, last=last, through=through, basis=basis, final=final, status=status, unknown_days=unknown,
        delivered_usd=delivered, traced_usd=traced,
        billed=_records(conn, """
            WITH billed AS (SELECT provider, sum(cost_usd) AS billed_usd, count(DISTINCT day) AS days
                            FROM provider_costs WHERE day BETWEEN $first AND $through GROUP BY ALL)
            SELECT provider, billed_usd, days,
                   (SELECT coalesce(sum(cost_usd), 0) FROM allocated_costs a WHERE a.provider = billed.provider
                    AND a.day IN (SELECT day FROM provider_costs p WHERE p.provider = billed.provider
                                  AND p.day BETWEEN $first AND $through)) AS traced_usd
            FROM billed ORDER BY billed_usd DESC""", params),
        by_team_feature=by_team_feature,
        # a known day without rows cost $0 (a quiet day); a day not known is None, never $0
        daily=[{"day": d, "cost_usd": daily_cost.get(d, Decimal(0)) if d in known else None}
               for d in (first + timedelta(days=i) for i in range((through - first).days + 1))],
        projection=projection,
        projected_daily=[{"day": d, **asdict(forecast(daily_float, through, [d], known))} for d in left],
        customers=_customers(conn, key("customer_id"), hashed_sql("customer_id", "m.customer_id")
                             if "customer_id" in settings.hashed_dimensions else "m.customer_id", has_revenue, params)
        if "customer_id" in settings.allocation_keys else [],
        customer_count=_run(conn, f"""SELECT count(DISTINCT allocation['customer_id']) FROM month_spend WHERE
                                      allocation['customer_id'] NOT IN ('{UNALLOCATED}', '{UNATTRIBUTED}')""",
                            params).fetchone()[0],
        tiers=_tiers(conn, has_revenue, params) if "tier" in settings.allocation_keys else [],
        unit_costs=_unit_costs(conn, first, through),
        feature_margins=_records(conn, f"""
            SELECT feature, revenue_usd, ai_cost_usd, margin_usd, ai_share_pct FROM ({margin_sql('feature')})
            WHERE revenue_usd IS NOT NULL ORDER BY margin_usd, feature""",
                                 {"day": through, "month": f"{first:%Y-%m}"}) if has_revenue and "feature" in
        settings.allocation_keys else [],
        budgets=_records(conn, """
            SELECT budget, scope, period, period_start, period_end, amount_usd, spend_usd, share_pct, projected_usd,
                   projected_share_pct, threshold_crossed, days_missing, day AS as_of
            FROM budget_status WHERE day = (SELECT max(day) FROM budget_status WHERE day BETWEEN $first AND $through)
            ORDER BY budget = $total, budget""", {**params, "total": TOTAL}),
        budget_alerts=_records(conn, """SELECT day, budget, threshold FROM budget_alerts
                                        WHERE day BETWEEN $first AND $through ORDER BY day, budget, threshold""",
                               params),
        anomalies=_records(conn, """SELECT day, dimension, value, direction, cost_usd, usual_usd, cause, explanation
                                    FROM cost_anomalies WHERE day BETWEEN $first AND $through
                                    ORDER BY day, abs(cost_usd - usual_usd) DESC""", params),
        reconciliation=_records(conn, """
            SELECT provider, count(*) AS days, sum(traced_usd) AS traced_usd, sum(billed_usd) AS billed_usd,
                   sum(gap_usd) AS gap_usd, 100 * sum(gap_usd)::DOUBLE / nullif(sum(billed_usd), 0) AS gap_pct,
                   count(*) FILTER (WHERE NOT final) AS provisional_days
            FROM cost_reconciliation WHERE depth = 'provider' AND has_bill AND day BETWEEN $first AND $through
            GROUP BY ALL ORDER BY billed_usd DESC""", params),
        gap_days=_records(conn, """
            SELECT day, provider, traced_usd, billed_usd, gap_usd, gap_pct, final  -- gap_pct is in % of the bill
            FROM cost_reconciliation WHERE depth = 'provider' AND has_bill AND day BETWEEN $first AND $through
              AND abs(gap_pct) > $warn ORDER BY day, provider""",
                          {**params, "warn": settings.reconciliation_warn_pct}),
        unpriced=_records(conn, """
            SELECT model, cost_source, count(*) AS generations, sum(total_tokens) AS tokens,
                   array_to_string(list_sort(list_distinct(flatten(list(coalesce(map_keys(unpriced_usage), []))))),
                                   ', ') AS unpriced_units, false AS retired
            FROM langfuse_generations
            WHERE day BETWEEN $first AND $through AND cost_source IN ('unpriced', 'partially_priced')
            GROUP BY ALL
            UNION ALL  -- days whose staged calls retention dropped: their unpriced calls as allocated_costs kept them
            SELECT model, 'unpriced', sum(unpriced_calls), NULL, NULL, true FROM allocated_costs
            WHERE day BETWEEN $first AND $through AND day IN (SELECT day FROM retired_days) GROUP BY ALL
            HAVING sum(unpriced_calls) > 0
            ORDER BY generations DESC, model""", params),
        unallocated=_records(conn, f"""
            SELECT k AS allocation_key, coalesce(sum(cost_usd) FILTER (WHERE allocation[k] = '{UNALLOCATED}'), 0)
                   AS cost_usd, 100 * coalesce(sum(cost_usd) FILTER (WHERE allocation[k] = '{UNALLOCATED}'), 0)::DOUBLE
                   / nullif(sum(cost_usd), 0) AS share_pct
            FROM month_spend, (SELECT unnest($keys::VARCHAR[]) AS k) GROUP BY ALL ORDER BY k""",
                             {"keys": settings.allocation_keys}),
        unattributed_usd=conn.execute("SELECT coalesce(sum(cost_usd), 0) FROM month_spend "
                                      "WHERE list_contains(map_values(allocation), $u)", {"u": UNATTRIBUTED}).fetchone()[0],
        quarantined=_records(conn, """SELECT source, reason, count(*) AS rows FROM quarantine
                                      WHERE day BETWEEN $first AND $through GROUP BY ALL ORDER BY rows DESC, source, reason""",
                             params),
        provenance=_provenance(conn, params, settings, basis, now),
        has_revenue=has_revenue, has_outcomes=has_outcomes,
        missing_tables=[t for t in ("unit_economics", "budget_status", "cost_anomalies", "cost_reconciliation")
                        if not conn.execute("SELECT count(*) FROM materialized_days WHERE asset = ? AND day BETWEEN "
                                            "? AND ?", [t, first, through]).fetchone()[0]],
    )


def _customers(conn, name: str, revenue_name: str, has_revenue: bool, params: dict) -> list[dict]:
    """The top customers by AI cost (shown as delivered: `name` over the spend, `revenue_name` over a revenue
    row's `m.customer_id`), then one row for the rest; revenue and margin where known (a customer with revenue
    and no AI cost is listed too)."""
    margin = margin_sql("customer_id") if has_revenue else \
        "SELECT NULL::VARCHAR AS customer_id, NULL::DECIMAL(38, 12) AS revenue_usd WHERE false"
    return _records(conn, f"""
        WITH cost AS (
            SELECT allocation['customer_id'] AS customer_id, any_value({name}) AS shown, sum(cost_usd) AS ai_cost_usd
            FROM month_spend GROUP BY ALL
        ), ranked AS (
            SELECT coalesce(c.shown, {revenue_name}) AS customer, coalesce(c.ai_cost_usd, 0) AS ai_cost_usd,
                   m.revenue_usd, row_number() OVER (ORDER BY coalesce(c.ai_cost_usd, 0) DESC, m.revenue_usd DESC NULLS LAST,
                                                     coalesce(c.shown, {revenue_name})) AS rank
            FROM cost c FULL JOIN ({margin}) m USING (customer_id)
        ), shown AS (
            SELECT rank, customer, ai_cost_usd, revenue_usd, revenue_usd IS NULL AS unknown FROM ranked
            WHERE rank <= {TOP_CUSTOMERS}
            UNION ALL
            SELECT min(rank), 'the other ' || count(*) || ' customers', sum(ai_cost_usd), sum(revenue_usd),
                   bool_or(revenue_usd IS NULL)
            FROM ranked WHERE rank > {TOP_CUSTOMERS} HAVING count(*) > 0
        )
        SELECT customer, ai_cost_usd, revenue_usd, CASE WHEN NOT unknown THEN revenue_usd - ai_cost_usd END AS margin_usd,
               CASE WHEN NOT unknown THEN 100 * ai_cost_usd::DOUBLE / nullif(revenue_usd, 0) END AS ai_share_pct
        FROM shown ORDER BY rank""", {**params, "day": params["through"], "month": f"{params['first']:%Y-%m}"}
                    if has_revenue else params)


def _tiers(conn, has_revenue: bool, params: dict) -> list[dict]:
    """Per tier: cost, its share, customers, calls, requests (from unit_economics) and, with revenue, the
    revenue of the customers whose spend is mostly in the tier and the margin: known only when every customer
    of the tier has a revenue row (else "—", with how many have none). Customers with revenue and no AI calls
    this month are a row of their own, so that the tiers' revenue adds up to the file's."""
    revenue = "SELECT NULL::VARCHAR AS tier, NULL::DECIMAL(38, 12) AS revenue_usd, 0 AS without_revenue WHERE false" \
        if not has_revenue else f"""
        WITH customer_tier AS (
            SELECT allocation['customer_id'] AS customer_id, arg_max(allocation['tier'], cost) AS tier FROM (
                SELECT allocation, sum(cost_usd) AS cost FROM month_spend GROUP BY ALL) GROUP BY ALL
        ), income AS (
            SELECT customer_id, sum(revenue_usd) AS revenue_usd FROM revenue WHERE month = $month GROUP BY ALL
        )
        SELECT coalesce(t.tier, '{NO_CALLS}') AS tier, sum(i.revenue_usd) AS revenue_usd,
               count(*) FILTER (WHERE i.revenue_usd IS NULL AND t.customer_id NOT IN ('{UNALLOCATED}', '{UNATTRIBUTED}'))
                   AS without_revenue
        FROM customer_tier t FULL JOIN income i USING (customer_id) GROUP BY ALL"""
    return _records(conn, f"""
        WITH cost AS (
            SELECT allocation['tier'] AS tier, sum(cost_usd) AS cost_usd, sum(calls) AS calls,
                   count(DISTINCT allocation['customer_id']) FILTER (
                       WHERE allocation['customer_id'] NOT IN ('{UNALLOCATED}', '{UNATTRIBUTED}')) AS customers
            FROM month_spend GROUP BY ALL
        ), requests AS (
            SELECT value AS tier, sum(requests) AS requests FROM unit_economics
            WHERE dimension = 'tier' AND day BETWEEN $first AND $through GROUP BY ALL
        )
        SELECT tier, coalesce(cost_usd, 0) AS cost_usd,
               100 * coalesce(cost_usd, 0)::DOUBLE / nullif(sum(cost_usd) OVER (), 0) AS share_pct,
               coalesce(customers, 0) AS customers, coalesce(calls, 0) AS calls, requests,
               1000 * cost_usd::DOUBLE / nullif(requests, 0) AS cost_per_1k_requests,
               CASE WHEN without_revenue = 0 THEN revenue_usd END AS revenue_usd,
               CASE WHEN without_revenue = 0 THEN revenue_usd - coalesce(cost_usd, 0) END AS margin_usd,
               coalesce(without_revenue, 0) AS without_revenue
        FROM cost FULL JOIN ({revenue}) USING (tier) LEFT JOIN requests USING (tier)
        ORDER BY cost_usd DESC NULLS LAST, tier""", {**params, "month": f"{params['first']:%Y-%m}"})


def _unit_costs(conn, first: date, through: date) -> list[dict]:
    """Per feature, from unit_economics (traced cost): cost per 1,000 requests and per outcome this month and
    the month before (the whole month before, or as much of it as is known)."""
    before, _ = period_bounds("monthly", first - timedelta(days=1))
    return _records(conn, """
        WITH months AS (
            SELECT value AS feature, day >= $first AS this, sum(spend_usd) AS spend_usd, sum(calls) AS calls,
                   sum(requests) AS requests, sum(outcomes) AS outcomes, any_value(outcome) AS outcome,
                   count(DISTINCT day) AS days
            FROM unit_economics WHERE dimension = 'feature' AND day BETWEEN $before AND $through GROUP BY ALL
        ), unit AS (
            SELECT *, 1000 * spend_usd::DOUBLE / nullif(requests, 0) AS per_1k,
                   spend_usd::DOUBLE / nullif(outcomes, 0) AS per_outcome FROM months
        )
        SELECT n.feature, n.spend_usd, n.requests, n.outcomes, n.outcome, n.per_1k AS cost_per_1k_requests,
               n.per_outcome AS cost_per_outcome, p.per_1k AS before_per_1k_requests, p.per_outcome AS before_per_outcome,
               100 * (n.per_1k / nullif(p.per_1k, 0) - 1) AS change_per_1k_pct,
               100 * (n.per_outcome / nullif(p.per_outcome, 0) - 1) AS change_per_outcome_pct, p.days AS before_days
        FROM unit n LEFT JOIN unit p ON p.feature = n.feature AND NOT p.this
        WHERE n.this ORDER BY n.spend_usd DESC, n.feature""", {"first": first, "through": through, "before": before})


def _provenance(conn, params: dict, settings: FinopsSettings, basis: str, now: datetime) -> list[tuple[str, str]]:
    """Where the month's figures come from: sources, files and requests, when they were written, versions."""
    sources = _run(conn, """
        SELECT regexp_replace(source_file, '/[^/]*$', '') AS place, count(DISTINCT source_file), count(*),
               count(DISTINCT project_id)
        FROM langfuse_generations WHERE day BETWEEN $first AND $through GROUP BY ALL ORDER BY 3 DESC LIMIT 5""", params).fetchall()
    bills = _run(conn, """SELECT provider, count(DISTINCT source), count(DISTINCT day) FROM provider_costs
                            WHERE day BETWEEN $first AND $through GROUP BY ALL ORDER BY provider""", params).fetchall()
    [(retired,)] = _run(conn, "SELECT count(*) FROM retired_days WHERE day BETWEEN $first AND $through", params).fetchall()
    written = _run(conn, """SELECT min(written_at), max(written_at) FROM materialized_days
                              WHERE asset = 'allocated_costs' AND day BETWEEN $first AND $through""", params).fetchone()
    rows = [("Cost basis", {"langfuse": "langfuse: the traced cost Langfuse priced (FINOPS_COST_BASIS)",
                            "invoice": "invoice: each provider's bill, split by the traces (FINOPS_COST_BASIS)"}[basis])]
    rows += [("Langfuse generations", f"{generations:,} from {files:,} files or requests in {place} "
                                      f"({projects} project{'s' if projects != 1 else ''})")
             for place, files, generations, projects in sources]
    rows += [(f"{provider} bill", f"{days} days from {count:,} files or API pages") for provider, count, days in bills]
    if retired:
        rows.append(("Retention", f"{retired} days of the month had their generation-level rows dropped "
                                  "(FINOPS_STAGED_RETENTION_DAYS): the generation and file counts above leave them "
                                  "out; their unpriced calls are counted from allocated_costs; their totals are whole"))
    if written[0]:
        rows.append(("Days allocated", f"between {written[0]:%Y-%m-%d %H:%M} and {written[1]:%Y-%m-%d %H:%M} UTC"))
    revenue = (str(settings.revenue_path) + duplicate_note(settings.revenue_path, duplicate_revenue_lines(conn))
               if settings.revenue_path.exists() else "none: margins left out")
    rows += [("Revenue file", revenue),
             ("Outcomes file", str(settings.outcomes_path) if settings.outcomes_path.exists() else "none"),
             ("Prices", f"Langfuse's cost; where it had none, genai-prices {version('genai-prices')}"),
             ("Warehouse", str(settings.duckdb_path)),
             ("Rendered", f"{now:%Y-%m-%d %H:%M} UTC by finops_pipeline {version('finops_pipeline')}")]
    return rows


def cents_that_add(values: list[Decimal], total: Decimal) -> list[Decimal]:
    """`values` in whole cents that sum to `total` in cents (rounded half up): each rounded down, then a cent
    more to those that lost the most (the largest remainder method), so a table's rows add up to its total."""
    floors = [v.quantize(CENT, ROUND_FLOOR) for v in values]
    short = int((total.quantize(CENT, ROUND_HALF_UP) - sum(floors, Decimal(0))) / CENT)
    order = sorted(range(len(values)), key=lambda i: values[i] - floors[i], reverse=True)
    for i in order[:max(0, min(short, len(values)))]:
        floors[i] += CENT
    return floors


def _run(conn, sql: str, params: dict):
    """`sql` with the `params` it names (DuckDB refuses a parameter the statement does not use)."""
    return conn.execute(sql, {k: v for k, v in params.items() if re.search(rf"\${k}\b", sql)})


def _records(conn, sql: str, params: dict) -> list[dict]:
    """Rows as dicts, DECIMAL kept exact."""
    cursor = _run(conn, sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]



def _money(value: float) -> Decimal:
    return Decimal(str(round(value, 6)))
