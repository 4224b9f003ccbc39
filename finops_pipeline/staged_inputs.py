"""Whether a day's inputs changed since the day was staged: a re-run that finds the same export files (names,
windows, manifests' row counts, sizes and modification times) and the same settings that shape the staged
rows does not read them again. The schedule re-runs the last days every morning for late data; on quiet days
that costs a listing, not a read.

The fingerprint is recorded with the day's rows only when the day was proven whole (extraction_complete
passed), with that check's result, so that a skipped run can say what it proved then.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from datetime import date, datetime
from importlib.metadata import version
from pathlib import Path

import dagster as dg
import duckdb

from finops_pipeline.settings import FinopsSettings
from finops_pipeline.sources.export_listing import ExportFile
from finops_pipeline.warehouse import SCHEMA_VERSION, transactions


@dataclass(frozen=True)
class Staged:
    """A day staged from the same inputs: when, and what its completeness check said then."""

    staged_at: datetime
    completeness: dict


def export_fingerprint(files: list[ExportFile], settings: FinopsSettings) -> str:
    """The day's export files: names, windows, manifests' row counts, sizes and times."""
    return fingerprint(sorted([f.path, f.format, str(f.window_start), str(f.window_end), f.row_count, f.absent,
                               f.stamp] for f in files), settings)


def api_fingerprint(totals: list[tuple], settings: FinopsSettings) -> str:
    """The day from the API: each project's (host, key pair name, observations, cost) as its metrics count
    them. A metadata edit in Langfuse that changes neither is not noticed: such a day is re-read by hand."""
    return fingerprint(sorted(totals), settings)


@functools.cache
def staging_code() -> str:
    """A digest of the code that turns inputs into staged rows (the sources, validation, pricing, allocation):
    a fix to it re-stages days on their next run, though the package's version number did not move."""
    package = Path(__file__).parent
    files = sorted([*package.joinpath("sources").glob("*.py"), package / "generations.py", package / "pricing.py",
                    package / "extraction.py"])
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()


def fingerprint(sources: list, settings: FinopsSettings) -> str:
    """A digest of `sources` and of everything else that decides the staged rows: the allocation
    vocabulary, the provider map, the projects read, the price table's and this package's versions."""
    inputs = {
        "sources": sources,
        "allocation_keys": settings.allocation_keys, "metadata_aliases": sorted(settings.metadata_aliases.items()),
        "provider_map": sorted(settings.provider_map.items()), "projects": sorted(settings.langfuse_projects),
        "versions": [version("finops_pipeline"), version("genai-prices"), SCHEMA_VERSION, staging_code()],
    }
    return hashlib.sha256(json.dumps(inputs, default=str).encode()).hexdigest()


def unchanged_since(conn: duckdb.DuckDBPyConnection, day: date, fingerprint: str) -> Staged | None:
    """The day's staging, when it was from inputs with this fingerprint and its rows are still there."""
    row = conn.execute("""
        SELECT s.staged_at, s.completeness FROM staged_inputs s JOIN materialized_days m
          ON m.asset = 'langfuse_generations' AND m.day = s.day
        WHERE s.day = ? AND s.fingerprint = ?""", [day, fingerprint]).fetchone()
    return Staged(row[0], json.loads(row[1])) if row else None


def was_staged(conn: duckdb.DuckDBPyConnection, day: date) -> bool:
    """Whether the day has a recorded staging at all (else there is nothing to compare with)."""
    return conn.execute("SELECT count(*) FROM staged_inputs WHERE day = ?", [day]).fetchone()[0] > 0


def staging_of(conn: duckdb.DuckDBPyConnection, day: date):
    """When the day's staged rows were written (`materialized_days`): which staging they are."""
    row = conn.execute("SELECT max(written_at) FROM materialized_days WHERE asset = 'langfuse_generations' "
                       "AND day = ?", [day]).fetchone()
    return row[0]


def record(conn: duckdb.DuckDBPyConnection, day: date, fingerprint: str, completeness: dg.AssetCheckResult,
           staged: object) -> bool:
    """Remember the day's inputs and what proved them whole (the staging transaction forgot the old ones), if
    the day's rows are still those of this run's staging (`staged`, from `staging_of` after it): on a lakehouse
    another run may have staged the day since, from other files. A day not proven whole, or staged again by
    another run, stays forgotten (read again next time). True when recorded."""
    if not completeness.passed:
        return False
    result = {"severity": completeness.severity.value, "description": completeness.description,
              "metadata": {k: getattr(v, "value", v) for k, v in completeness.metadata.items()
                           if isinstance(getattr(v, "value", v), (int, float, str, bool))}}
    for attempt in transactions(conn):
        with attempt:
            recorded = staging_of(conn, day) == staged
            if recorded:
                conn.execute("DELETE FROM staged_inputs WHERE day = ?", [day])
                conn.execute("INSERT INTO staged_inputs VALUES (?, ?, now(), ?)", [day, fingerprint, json.dumps(result)])
    return recorded


def completeness_then(check_name: str, staged: Staged) -> dg.AssetCheckResult:
    """The completeness result the day's staging proved, said again for a run that did not read the day."""
    then = staged.completeness
    return dg.AssetCheckResult(
        check_name=check_name, passed=True, severity=dg.AssetCheckSeverity(then["severity"]),
        description=f"Inputs unchanged since {staged.staged_at:%Y-%m-%d %H:%M} UTC (not read again); then: "
                    f"{then['description']}",
        metadata={**then["metadata"], "inputs_unchanged_since": staged.staged_at.isoformat()})
