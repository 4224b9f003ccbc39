"""Finout custom costs: one CSV per day (`UsageDate`, `Cost`, then one column per dimension).

Finout re-ingests a file that changed and lets it overwrite what that file delivered before, so a
day is always delivered as the same file name, replaced whole: never a second file for the same day.
Only the configured dimensions leave the building: no other metadata, never prompt text.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb

from finops_pipeline.cost_basis import UNATTRIBUTED
from finops_pipeline.generations import UNALLOCATED


@dataclass(frozen=True)
class Delivery:
    path: Path
    rows: int


def file_name(day: date, template: str = "llm-costs-{day}.csv") -> str:
    return template.format(day=day.isoformat(), year=f"{day.year:04d}", month=f"{day.month:02d}")


def safe_text(expr: str) -> str:
    """A text value a spreadsheet will not run: a leading = + - @ (or tab, carriage return) makes Excel
    and Sheets evaluate the cell as a formula, so such a value gets a leading apostrophe, the
    spreadsheet convention for "this is text" (OWASP's advice for CSV injection). Quotes, commas,
    newlines and non-ASCII text need nothing here: the CSV writer quotes them, UTF-8 keeps them."""
    return f"CASE WHEN regexp_matches({expr}, '^[=+\\-@\\t\\r]') THEN '''' || {expr} ELSE {expr} END"


def dimension_expressions(allocation_keys: list[str], hashed: list[str]) -> dict[str, str]:
    """SQL of each dimension over the temp table `delivered` (parameter `$salt` when `hashed`)."""
    service = "allocation['feature']" if "feature" in allocation_keys else "'llm'"
    expressions = {
        "source": "source",
        "service_name": f"CASE WHEN source = 'invoice' THEN '{UNATTRIBUTED}' ELSE {service} END",
        "provider": "provider",
        "model": "model",
        # the Langfuse project; none on an invoice's unattributed row (or a row staged before version 4)
        "project_id": f"coalesce(project_id, CASE WHEN source = 'invoice' THEN '{UNATTRIBUTED}' ELSE 'unknown' END)",
    }
    for key in allocation_keys:  # keys are validated identifiers (settings.py): safe to inline
        value = f"allocation['{key}']"
        if key in hashed:  # the same value always gets the same hash; only the salt's holder can test a guess
            value = (f"CASE WHEN {value} IN ('{UNALLOCATED}', '{UNATTRIBUTED}') THEN {value} "
                     f"ELSE 'h_' || left(sha256($salt || '|{key}|' || {value}), 20) END")
        expressions[key] = value
    return expressions


def finout_rows_sql(dimensions: list[str], allocation_keys: list[str], hashed: list[str]) -> str:
    """The day's Finout rows from the temp table `delivered`: one per combination of the delivered dimensions
    (rows that differ only in a dimension not delivered, e.g. project_id, are summed, not repeated)."""
    expressions = dimension_expressions(allocation_keys, hashed)
    columns = ", ".join(f'{safe_text(expressions[d])} AS "{d}"' for d in dimensions)
    order = ", ".join(["Cost DESC", *(f'"{d}"' for d in dimensions)])
    return f"""
        SELECT strftime(day, '%Y-%m-%d') AS UsageDate, sum(cost_usd) AS Cost, {columns}
        FROM delivered
        GROUP BY ALL
        HAVING sum(cost_usd) <> 0
        ORDER BY {order}
    """


def write_day_csv(conn: duckdb.DuckDBPyConnection, select_sql: str, params: dict, path: Path) -> Delivery:
    """Write the rows of `select_sql` as the CSV at `path`, atomically replacing any earlier file.

    The file is written beside its final name and renamed into place, so a crash mid-write leaves the
    previous good file (and a reader never sees half a file).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        rows = conn.execute(f"COPY ({select_sql}) TO '{_sql_path(partial)}' (FORMAT csv, HEADER true)",
                            params).fetchall()[0][0]
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return Delivery(path, rows)


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")
