"""Finout custom costs: one CSV per day (`UsageDate`, `Cost`, then one column per dimension).

Finout re-ingests a file that changed and lets it overwrite what that file delivered before, so a
day is always delivered as the same file name, replaced whole: never a second file for the same day.
Only the configured dimensions leave the building: no other metadata, never prompt text.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
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
    feature = "allocation['feature']"
    # the feature is the service: hashed when the feature is
    service = (hashed_sql("feature", feature) if "feature" in hashed else feature) if "feature" in allocation_keys else "'llm'"
    expressions = {
        "source": "source",
        "service_name": f"CASE WHEN source = 'invoice' THEN '{UNATTRIBUTED}' ELSE {service} END",
        "provider": "provider",
        "model": "model",
        # the Langfuse project; none on an invoice's unattributed row (or a row staged before version 4)
        "project_id": f"coalesce(project_id, CASE WHEN source = 'invoice' THEN '{UNATTRIBUTED}' ELSE 'unknown' END)",
    }
    for key in allocation_keys:  # keys are validated identifiers (settings.py): safe to inline
        expressions[key] = hashed_sql(key, f"allocation['{key}']") if key in hashed else f"allocation['{key}']"
    return expressions


def hashed_sql(key: str, value: str) -> str:
    """SQL of `value` (an expression) of allocation key `key` as a hashed dimension is delivered (`$salt`): the
    same value always gets the same hash, and only the salt's holder can test a guess. `hashed_value` in Python."""
    return (f"CASE WHEN {value} IN ('{UNALLOCATED}', '{UNATTRIBUTED}') THEN {value} "
            f"ELSE 'h_' || left(sha256($salt || '|{key}|' || {value}), 20) END")


def hashed_value(key: str, value: str, salt: str) -> str:
    """`value` of `key` as `hashed_sql` delivers it, for text written outside SQL (alerts, explanations)."""
    if value in (UNALLOCATED, UNATTRIBUTED):
        return value
    return "h_" + hashlib.sha256(f"{salt}|{key}|{value}".encode()).hexdigest()[:20]


def shown_as_delivered(hashed: list[str], salt: str | None) -> Callable[[str, str], str]:
    """(dimension, value) -> the value as the Finout file shows it: hashed for the hashed dimensions."""
    return lambda dimension, value: hashed_value(dimension, value, salt or "") if dimension in hashed else value


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
    # a name of this write's own: two runs delivering the same day (a lakehouse's) must not share it
    partial = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
    try:
        rows = conn.execute(f"COPY ({select_sql}) TO '{_sql_path(partial)}' (FORMAT csv, HEADER true)",
                            params).fetchall()[0][0]
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return Delivery(path, rows)


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")
