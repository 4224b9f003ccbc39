"""Unit economics and margin: the day's cost per call, request, user and business outcome, and each
customer's AI cost against its revenue.

Two optional CSV files in the data directory (a missing file leaves out the figures that need it, never
zero; a malformed one fails naming the file, the line and the field):

- revenue (`FINOPS_REVENUE_FILE`, default `$FINOPS_HOME/revenue.csv`): `month,customer_id,revenue_usd`
  and optionally `feature` (month `YYYY-MM`, revenue in USD, 0 or more). A customer's revenue for the month
  is the sum of its rows; a row with a feature is the part of it that feature earns (an add-on, a metered
  product), which gives the feature's margin. Features without such rows have no margin (unknown, not $0).
- outcomes (`FINOPS_OUTCOMES_FILE`, default `$FINOPS_HOME/outcomes.csv`): `day,feature,outcome,count`
  (day `YYYY-MM-DD`; what the business counts for the feature, e.g. `tickets resolved`; count 0 or more).
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from finops_pipeline.warehouse import MONEY

REVENUE_COLUMNS = ("month", "customer_id", "revenue_usd")
OUTCOME_COLUMNS = ("day", "feature", "outcome", "count")
UNIT_DIMENSIONS = ("feature", "customer_id", "tier")


class BusinessFileError(ValueError):
    """A revenue or outcomes file that cannot be used: the message names the file, the line and the field."""


def _read(conn: duckdb.DuckDBPyConnection, path: Path, columns: tuple[str, ...], table: str,
          checks: dict[str, tuple[str, str]], typed: str, optional: dict[str, str] | None = None) -> None:
    """Load `path` as text into temp table `table` (its `columns`, typed by `typed`), after checking each
    row: `checks` maps a field to (the SQL condition a good value meets, what a good value is, in words).
    `optional` maps a column the file may leave out to its SQL when present (NULL when absent)."""
    try:
        conn.execute(f"CREATE OR REPLACE TEMP TABLE raw_{table} AS SELECT *, row_number() OVER () + 1 AS line "
                     "FROM read_csv(?, header = true, all_varchar = true)", [str(path)])
    except duckdb.Error as exc:
        raise BusinessFileError(f"{path}: not a CSV file: {str(exc).splitlines()[0]}") from None
    have = [c for (c,) in conn.execute(f"SELECT column_name FROM (DESCRIBE raw_{table})").fetchall()]
    missing = [c for c in columns if c not in have]
    if missing:
        raise BusinessFileError(f"{path}: no column {', '.join(missing)} (the header must hold {', '.join(columns)})")
    for field, (good, meaning) in checks.items():
        bad = conn.execute(f"SELECT line, {field} FROM raw_{table} WHERE NOT coalesce({good}, false) ORDER BY line "
                           "LIMIT 1").fetchall()
        if bad:
            line, value = bad[0]
            raise BusinessFileError(f"{path}, line {line}, field {field}: {value!r} is not {meaning}")
    extra = "".join(f", {sql if name in have else 'NULL::VARCHAR'} AS {name}" for name, sql in (optional or {}).items())
    conn.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT {typed}{extra} "
                 f"FROM raw_{table}")


def load_revenue(conn: duckdb.DuckDBPyConnection, path: Path) -> bool:
    """Temp table `revenue` (month VARCHAR, customer_id, feature (NULL: not a feature's), revenue_usd MONEY)
    from `path`; False when there is no file (revenue unknown: margins are left out)."""
    if not path.exists():
        return False
    _read(conn, path, REVENUE_COLUMNS, "revenue", {
        "month": ("regexp_full_match(trim(month), '\\d{4}-(0[1-9]|1[0-2])')", "a month (YYYY-MM)"),
        "customer_id": ("trim(customer_id) <> ''", "a customer id"),
        "revenue_usd": (f"TRY_CAST(trim(revenue_usd) AS {MONEY}) >= 0", "an amount of 0 or more"),
    }, f"trim(month) AS month, trim(customer_id) AS customer_id, trim(revenue_usd)::{MONEY} AS revenue_usd",
       optional={"feature": "nullif(trim(feature), '')"})
    return True


def duplicate_revenue_lines(conn: duckdb.DuckDBPyConnection) -> list[list[int]]:
    """Lines of the loaded revenue file that repeat another line exactly, as groups of line numbers: summed
    like any rows of a customer and month, but more often a row pasted twice than two equal invoices."""
    fields = [c for (c,) in conn.execute("SELECT column_name FROM (DESCRIBE raw_revenue)").fetchall() if c != "line"]
    group = ", ".join(f"trim(coalesce({f}, ''))" for f in fields)
    return [lines for (lines,) in conn.execute(
        f"SELECT list(line ORDER BY line) FROM raw_revenue GROUP BY {group} HAVING count(*) > 1 ORDER BY min(line)"
    ).fetchall()]


def duplicate_note(path: Path, duplicates: list[list[int]]) -> str:
    """The sentence saying which revenue lines repeat one another ('' when none)."""
    if not duplicates:
        return ""
    groups = "; ".join(" and ".join(str(n) for n in lines) for lines in duplicates)
    return (f" {path}: lines {groups} repeat the same row and are summed (as every row of a customer and month is); "
            "remove the copies if they were pasted twice.")


def load_outcomes(conn: duckdb.DuckDBPyConnection, path: Path) -> bool:
    """Temp table `outcomes` (day DATE, feature, outcome, count BIGINT) from `path`; False when there is no file."""
    if not path.exists():
        return False
    _read(conn, path, OUTCOME_COLUMNS, "outcomes", {
        "day": ("TRY_CAST(trim(day) AS DATE) IS NOT NULL AND regexp_full_match(trim(day), '\\d{4}-\\d{2}-\\d{2}')",
                "a day (YYYY-MM-DD)"),
        "feature": ("trim(feature) <> ''", "a feature"),
        "outcome": ("trim(outcome) <> ''", "an outcome name"),
        # a pattern, not a cast: DuckDB's cast would round 2.5 to 3
        "count": ("regexp_full_match(trim(count), '\\d{1,18}')", "a whole count of 0 or more"),
    }, "trim(day)::DATE AS day, trim(feature) AS feature, trim(outcome) AS outcome, trim(count)::BIGINT AS count")
    return True


def unit_economics_sql(dimensions: list[str], with_outcomes: bool) -> str:
    """The day's rows of `unit_economics` from langfuse_generations (traced cost; `$day`), per value of each
    of `dimensions`; outcomes (per feature) from the temp table `outcomes` when `with_outcomes`."""
    parts = [f"""
        SELECT day, '{d}' AS dimension, allocation['{d}'] AS value, coalesce(sum(cost_usd), 0) AS spend_usd,
               count(*) AS calls, count(DISTINCT trace_id) AS requests, count(DISTINCT user_id) AS users,
               count(*) FILTER (WHERE cost_source = 'unpriced') AS unpriced_calls
        FROM langfuse_generations WHERE day = $day GROUP BY ALL""" for d in dimensions]
    outcomes = ("(SELECT feature AS value, sum(count) AS outcomes, string_agg(DISTINCT outcome, ', ' ORDER BY outcome) "
                "AS outcome FROM outcomes WHERE day = $day GROUP BY ALL)") if with_outcomes else \
        "(SELECT NULL::VARCHAR AS value, NULL::BIGINT AS outcomes, NULL::VARCHAR AS outcome WHERE false)"
    return f"""
        WITH units AS ({' UNION ALL '.join(parts)})
        SELECT u.*, u.spend_usd::DOUBLE / nullif(u.calls, 0) AS cost_per_call,
               1000 * u.spend_usd::DOUBLE / nullif(u.requests, 0) AS cost_per_1k_requests,
               u.spend_usd::DOUBLE / nullif(u.users, 0) AS cost_per_user,
               o.outcomes, o.outcome, u.spend_usd::DOUBLE / nullif(o.outcomes, 0) AS cost_per_outcome
        FROM units u LEFT JOIN {outcomes} o ON u.dimension = 'feature' AND o.value = u.value
    """


def margin_sql(key: str) -> str:
    """Month to date through `$day`, per value of `key` (customer_id or feature): the AI cost of the temp
    table `spend` (on the cost basis) against the month's (`$month`) revenue of the temp table `revenue`.
    Revenue NULL: no revenue row names the value (margin unknown, not the whole cost lost)."""
    return f"""
        WITH cost AS (
            SELECT allocation['{key}'] AS value, sum(cost_usd) AS ai_cost_usd FROM spend
            WHERE strftime(day, '%Y-%m') = $month AND day <= $day GROUP BY ALL
        ), income AS (
            SELECT {key} AS value, sum(revenue_usd) AS revenue_usd FROM revenue
            WHERE month = $month AND {key} IS NOT NULL GROUP BY ALL
        )
        SELECT $day AS day, $month AS month, value AS {key}, income.revenue_usd,
               coalesce(cost.ai_cost_usd, 0) AS ai_cost_usd, income.revenue_usd - coalesce(cost.ai_cost_usd, 0) AS margin_usd,
               100 * coalesce(cost.ai_cost_usd, 0)::DOUBLE / nullif(income.revenue_usd, 0) AS ai_share_pct
        FROM cost FULL JOIN income USING (value)
    """
