"""Finout custom costs: one CSV per day (`UsageDate`, `Cost`, then one column per dimension).

Finout re-ingests a file that changed and lets it overwrite what that file delivered before, so a
day is always delivered as the same file name, replaced whole: never a second file for the same day.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb


@dataclass(frozen=True)
class Delivery:
    path: Path
    rows: int


def file_name(day: date) -> str:
    return f"llm-costs-{day.isoformat()}.csv"


def write_day_csv(conn: duckdb.DuckDBPyConnection, select_sql: str, params: dict, dest_dir: Path, day: date) -> Delivery:
    """Write the rows of `select_sql` as the day's CSV, atomically replacing any earlier file.

    The file is written beside its final name and renamed into place, so a crash mid-write leaves the
    previous good file (and a reader never sees half a file).
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / file_name(day)
    partial = dest_dir / f".{final.name}.partial"
    try:
        rows = conn.execute(f"COPY ({select_sql}) TO '{_sql_path(partial)}' (FORMAT csv, HEADER true)", params).fetchone()[0]
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    return Delivery(final, rows)


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")
