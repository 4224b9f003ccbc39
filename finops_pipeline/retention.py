"""Retention of staged generations: days older than FINOPS_STAGED_RETENTION_DAYS lose their generation-level
rows, while everything derived from them (allocated_costs, the deliveries, unit_economics, reconciliation,
budgets, anomalies, reports) stays. The warehouse then grows with the days' aggregates, not their calls.

A day is retired only once every asset that reads its staged rows (allocated_costs and unit_economics) has
written it since it was last staged; a retired day is recorded, so that those assets fail on it (saying to
stage it again) rather than write it from no rows, and a re-run of the day reads its inputs again.
"""

from __future__ import annotations

from datetime import date, timedelta

import duckdb

from finops_pipeline.warehouse import transactions

READERS = ("allocated_costs", "unit_economics")  # the assets that read langfuse_generations
MIN_DAYS = 35  # the anomalies' four weeks of same-weekday history, the prompt versions' 28 days, the lookback


class RetiredDay(ValueError):
    """The day's staged generations were dropped by retention: stage it again before reading it."""


def retire_staged_days(conn: duckdb.DuckDBPyConnection, today: date, keep_days: int, running: date) -> list[date]:
    """Drop the staged generations of the days before `today - keep_days` whose readers are up to date with
    them, in one transaction; returns those days. Never `running`, the day whose run is staging it: its
    readers come next in the same run."""
    cutoff = today - timedelta(days=keep_days)
    days = [d for (d,) in conn.execute(f"""
        SELECT s.day FROM materialized_days s
        WHERE s.asset = 'langfuse_generations' AND s.day < ? AND s.day <> ?
          AND (SELECT count(*) FROM materialized_days r WHERE r.day = s.day AND r.asset IN {READERS}
               AND r.written_at >= s.written_at) = {len(READERS)}
        ORDER BY s.day""", [cutoff, running]).fetchall()]
    if days:
        for attempt in transactions(conn):
            with attempt:
                conn.execute("DELETE FROM langfuse_generations WHERE list_contains(?, day)", [days])
                conn.execute("DELETE FROM staged_inputs WHERE list_contains(?, day)", [days])
                conn.execute("DELETE FROM materialized_days WHERE asset = 'langfuse_generations' "
                             "AND list_contains(?, day)", [days])
                conn.execute("DELETE FROM retired_days WHERE list_contains(?, day)", [days])
                conn.execute("INSERT INTO retired_days SELECT unnest(?::DATE[]), now()", [days])
    return days


def check_not_retired(conn: duckdb.DuckDBPyConnection, day: date, reader: str) -> None:
    """Raise RetiredDay when `day`'s staged generations were dropped (and it was not staged again since)."""
    row = conn.execute("SELECT retired_at FROM retired_days WHERE day = ?", [day]).fetchone()
    if row:
        raise RetiredDay(f"{reader} of {day} reads its staged generations, which retention dropped on "
                         f"{row[0]:%Y-%m-%d} (FINOPS_STAGED_RETENTION_DAYS): its rows stay as they were. To write it "
                         "again, materialize langfuse_generations for the day first (it reads the day's inputs again).")


def unretire(conn: duckdb.DuckDBPyConnection, day: date) -> None:
    """The day was staged again: its readers may read it."""
    conn.execute("DELETE FROM retired_days WHERE day = ?", [day])
