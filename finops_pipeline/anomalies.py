"""Cost anomalies: which series moved on a day against the same weekday of the previous weeks, and why.

A series is one value of one dimension (feature report-writer, customer cust-acme, model gpt-4.1, ...) plus
`total` (all spend). Its usual cost on a day is the median of the same weekday over the previous four weeks
(a weekend dip is usual at a weekend); its spread, their median absolute deviation, floored at a tenth of the
usual (four points rarely scatter) and at a quarter of the dollar floor. A day is an anomaly when all hold:
  - at least three of those weeks were allocated (a day not allocated is unknown, not $0);
  - the change is at least the dollar floor (`FINOPS_ANOMALY_FLOOR_USD`: a $0.02 series doubling is not news);
  - it is a ratio of at least RATIO either way (×1.8 up, ÷1.8 down: growth and weekend dips are not anomalies);
  - its robust score, change / (1.4826 × spread), is at least Z either way (not asked of all spend).
A day on which all spend drops is one anomaly of `total` (a holiday, or traffic stopped upstream): the
series' own drops that day are folded into it. Thresholds were set on the labelled synthetic quarter of
bench/anomaly_quarter.py, which measures them (README "Anomalies").

Each anomaly says why, from the data: the calls and the cost per call against the usual; a model that took
the series' calls; a prompt version first seen that day that costs at least half the rise, with its cost per
call against the version the series used before; for all spend, the series that moved it most.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

import duckdb
import pandas as pd

WEEKS = (7, 14, 21, 28)   # days back: the same weekday over the previous four weeks
MIN_WEEKS = 3
RATIO = 1.8
Z = 4
RELATIVE_SPREAD = 0.10
TOTAL = "total"
MODEL_TAKEOVER = 0.5      # a model with at least this share of the day's calls ...
MODEL_BEFORE = 0.1        # ... that had at most this share of the usual days' is a model switch
NEW_PROMPT_SHARE = 0.5    # a prompt version first seen that day that costs at least this share of the rise


def column_of(dimension: str) -> str:
    """SQL of a series dimension over allocated_costs / langfuse_generations rows."""
    return dimension if dimension in ("model", "provider", "project_id") else f"allocation['{dimension}']"


def stage_series(conn: duckdb.DuckDBPyConnection, dimensions: list[str], first: date, last: date) -> None:
    """Temp tables `calendar` (the days in [first, last] allocated_costs has written) and `series`
    (dimension, value, day, cost_usd, calls) from allocated_costs, traced cost."""
    conn.execute("""CREATE OR REPLACE TEMP TABLE calendar AS SELECT day FROM materialized_days
                    WHERE asset = 'allocated_costs' AND day BETWEEN ? AND ?""", [first, last])
    parts = [f"""SELECT '{d}' AS dimension, {column_of(d)} AS value, day, sum(cost_usd)::DOUBLE AS cost_usd,
                        sum(calls) AS calls
                 FROM allocated_costs WHERE day IN (SELECT day FROM calendar) AND {column_of(d)} IS NOT NULL
                 GROUP BY ALL""" for d in dimensions]
    parts.append(f"""SELECT '{TOTAL}', 'all spend', day, sum(cost_usd)::DOUBLE, sum(calls) FROM allocated_costs
                     WHERE day IN (SELECT day FROM calendar) GROUP BY ALL""")
    conn.execute("CREATE OR REPLACE TEMP TABLE series AS " + " UNION ALL ".join(parts))


DETECT = f"""
WITH keys AS (SELECT DISTINCT dimension, value FROM series),
grid AS (
    SELECT k.dimension, k.value, c.day, coalesce(s.cost_usd, 0) AS cost, coalesce(s.calls, 0) AS calls
    FROM keys k CROSS JOIN calendar c LEFT JOIN series s USING (dimension, value, day)
), hist AS (
    SELECT g.dimension, g.value, g.day, h.cost AS h_cost, h.calls AS h_calls
    FROM grid g CROSS JOIN (SELECT unnest({list(WEEKS)}) AS lag) l
    JOIN grid h ON h.dimension = g.dimension AND h.value = g.value AND h.day = g.day - l.lag::INTEGER
    WHERE g.day BETWEEN $first AND $last
), base AS (
    SELECT dimension, value, day, median(h_cost) AS usual, median(h_calls) AS usual_calls, count(*) AS weeks
    FROM hist GROUP BY ALL
), spread AS (
    SELECT h.dimension, h.value, h.day, median(abs(h.h_cost - b.usual)) AS mad
    FROM hist h JOIN base b USING (dimension, value, day) GROUP BY ALL
), scored AS (
    SELECT g.dimension, g.value, g.day, g.cost, g.calls, b.usual, b.usual_calls,
           (g.cost - b.usual) / greatest(1.4826 * s.mad, {RELATIVE_SPREAD} * b.usual, $floor / 4, 1e-9) AS score
    FROM grid g JOIN base b USING (dimension, value, day) JOIN spread s USING (dimension, value, day)
    WHERE b.weeks >= {MIN_WEEKS}
), flagged AS (
    SELECT *, CASE WHEN cost > usual THEN 'spike' ELSE 'drop' END AS direction FROM scored
    WHERE abs(cost - usual) >= $floor
      -- all spend, the steadiest series, moving by the ratio is news whatever its history's scatter
      AND ((cost >= {RATIO} * usual AND (score >= {Z} OR dimension = '{TOTAL}'))
           OR (cost <= usual / {RATIO} AND (score <= -{Z} OR dimension = '{TOTAL}')))
)
SELECT * FROM flagged f
WHERE NOT (f.direction = 'drop' AND f.dimension <> '{TOTAL}' AND EXISTS (
    SELECT 1 FROM flagged t WHERE t.dimension = '{TOTAL}' AND t.day = f.day AND t.direction = 'drop'))
ORDER BY day, abs(cost - usual) DESC, dimension, value
"""


def detect(conn: duckdb.DuckDBPyConnection, first: date, last: date, floor_usd: float) -> pd.DataFrame:
    """The anomalies of the days in [first, last] over the temp tables `series` and `calendar`: dimension,
    value, day, cost, calls, usual, usual_calls, score, direction."""
    return conn.execute(DETECT, {"first": first, "last": last, "floor": floor_usd}).df()


@dataclass
class Cause:
    cause: str
    explanation: str


def explain(conn: duckdb.DuckDBPyConnection, found: pd.DataFrame, day: date,
            shown: Callable[[str, str], str] = lambda dimension, value: value) -> list[Cause]:
    """Why each anomaly of `day` (rows of `detect`) happened, from allocated_costs and langfuse_generations;
    series named by `shown(dimension, value)` (as the delivery names them: hashed where it hashes)."""
    usual_days = [day.fromordinal(day.toordinal() - lag) for lag in WEEKS]
    causes = []
    for row in found.itertuples():  # a handful of anomalies a day: each is a small query
        label = "all spend" if row.dimension == TOTAL else f"{row.dimension} {shown(row.dimension, row.value)}"
        factor = row.cost / row.usual if row.usual else math.inf
        head = f"{label}: ${row.cost:,.2f} vs ${row.usual:,.2f} usual (×{factor:.1f})"
        if not row.usual:
            causes.append(Cause("new", f"{label}: ${row.cost:,.2f}, none usual: a new series ({row.calls:,} calls)"))
            continue
        if row.calls == 0:
            causes.append(Cause("silent", f"{head}; no calls today, {row.usual_calls:,.0f} usual: the series went silent"))
            continue
        calls_x = row.calls / row.usual_calls if row.usual_calls else math.inf
        per_call_x = (row.cost / row.calls) / (row.usual / row.usual_calls) if row.usual and row.usual_calls else math.inf
        parts = [head, f"calls ×{calls_x:.1f}, cost per call ×{per_call_x:.1f}"]
        where = "TRUE" if row.dimension == TOTAL else f"{column_of(row.dimension)} = $value"
        params = {"day": day, "usual": usual_days, **({} if row.dimension == TOTAL else {"value": row.value})}
        prompt = _new_prompt(conn, where, {**params, "change": row.cost - row.usual}) if row.cost > row.usual else None
        model = _model_switch(conn, where, params)
        if prompt:
            parts.append(prompt)
        if model:
            parts.append(model)
        if abs(math.log(calls_x or 1e-9)) >= abs(math.log(per_call_x or 1e-9)):
            cause = "volume"
        else:
            cause = "prompt version" if prompt else "model switch" if model else "unit cost"
        if row.dimension == TOTAL:  # which series moved it
            others = found[(found.dimension != TOTAL) & (found.day == row.day)]
            if len(others):
                top = others.assign(change=others.cost - others.usual).sort_values("change", key=abs).iloc[-1]
                parts.append(f"mostly {top.dimension} {shown(top.dimension, top.value)} ({top.change:+,.2f} USD)")
        causes.append(Cause(cause, "; ".join(parts)))
    return causes


def _new_prompt(conn, where: str, params: dict) -> str | None:
    """A prompt version first seen on the day (in the 28 days before it: none) whose cost is at least half the
    day's rise, with its cost per call against the version of that prompt most used before. None when some of
    those 28 days' calls were dropped by retention: "first seen" could not be known."""
    if conn.execute("SELECT count(*) FROM retired_days WHERE day BETWEEN $day - 28 AND $day",
                    {"day": params["day"]}).fetchone()[0]:
        return None
    rows = conn.execute(f"""
        WITH calls AS (
            SELECT day, prompt_name, prompt_version, count(*) AS n, sum(cost_usd)::DOUBLE AS cost
            FROM langfuse_generations
            WHERE day BETWEEN $day - 28 AND $day AND prompt_name IS NOT NULL AND prompt_version IS NOT NULL
              AND {where}
            GROUP BY ALL
        ), today AS (
            SELECT prompt_name, prompt_version, n, cost FROM calls WHERE day = $day
        ), before AS (
            SELECT prompt_name, prompt_version, sum(n) AS n, sum(cost) AS cost FROM calls WHERE day < $day GROUP BY ALL
        )
        SELECT t.prompt_name, t.prompt_version, t.cost / t.n AS per_call,
               (SELECT b.prompt_version FROM before b WHERE b.prompt_name = t.prompt_name ORDER BY b.n DESC LIMIT 1),
               (SELECT b.cost / b.n FROM before b WHERE b.prompt_name = t.prompt_name ORDER BY b.n DESC LIMIT 1)
        FROM today t ANTI JOIN before USING (prompt_name, prompt_version)
        WHERE t.cost >= {NEW_PROMPT_SHARE} * $change ORDER BY t.cost DESC LIMIT 1""",
                        {k: v for k, v in params.items() if k != "usual"}).fetchall()
    if not rows:
        return None
    name, version, per_call, previous, previous_per_call = rows[0]
    text = f"prompt {name} v{version} (first seen today)"
    if previous is not None and previous_per_call:
        text += f" costs ×{per_call / previous_per_call:.1f} per call of v{previous}"
    return text


def _model_switch(conn, where: str, params: dict) -> str | None:
    rows = conn.execute(f"""
        WITH shares AS (  -- of the calls: a switch moves calls to a model (a model's cost share moves on its own)
            SELECT model, sum(calls) FILTER (WHERE day = $day)::DOUBLE AS today,
                   sum(calls) FILTER (WHERE list_contains($usual, day))::DOUBLE AS usual
            FROM allocated_costs WHERE (day = $day OR list_contains($usual, day)) AND {where} GROUP BY ALL
        )
        SELECT model, coalesce(today, 0) / sum(coalesce(today, 0)) OVER () AS now,
               coalesce(usual, 0) / nullif(sum(coalesce(usual, 0)) OVER (), 0) AS was
        FROM shares QUALIFY now >= {MODEL_TAKEOVER} AND coalesce(was, 0) <= {MODEL_BEFORE}""", params).fetchall()
    if not rows:
        return None
    model, now, was = rows[0]
    return f"model switch: {model} now {now:.0%} of the calls (was {was or 0:.0%})"
