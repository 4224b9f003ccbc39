"""Proof that a day was extracted whole, the `extraction_complete` check of `langfuse_generations`.

- Blob export: the day's windows must cover it (else the run fails before anything is written, see
  `uncovered_day_message`), and every file must give as many rows as its manifest's `rowCount` says it
  holds (quarantined rows included: they were read). A file that could not be read at all, or is short of
  (or over) its count, fails the check with ERROR, which is blocking: the day is not delivered.
- API: the day's observations and their Langfuse cost against the metrics API's own count and sum. When
  the metrics API cannot answer, a day with rows warns ("could not verify"); a day with none fails, since
  an empty answer nobody confirmed is not a verified $0.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

import dagster as dg
import duckdb
import pandas as pd

from finops_pipeline.money import usd
from finops_pipeline.sources.langfuse_api import COST_TYPES, ServerTotals
from finops_pipeline.sources.export_listing import Coverage, ExportFile
from finops_pipeline.sources.observation_rows import Rejected

COMPLETENESS_CHECK = "extraction_complete"
SHOWN = 10  # files named in a failing description; all of them are in the metadata table


def _instant(moment: datetime | None) -> str:
    return "the beginning" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def uncovered_day_message(export_dir: str, day: date, gaps: list[Coverage]) -> str:
    """Why `day` cannot be read from the export: no files at all, or the holes its windows leave."""
    if not gaps:
        return (f"The Langfuse export in {export_dir} has no observation files yet: {day} is not covered. "
                "Check FINOPS_LANGFUSE_EXPORT_DIR, and that the export has run.")
    parts = []
    for gap in gaps:
        holes = ", ".join(f"{_instant(a)} .. {_instant(b)}" for a, b in gap.holes)
        span = "has no files" if gap.last is None else f"covers {_instant(gap.first)} .. {_instant(gap.last)}"
        parts.append(f"{gap.export} {span}; not covered: {holes}")
    return (f"The Langfuse export does not cover {day}, so its cost is unknown (not $0) and nothing is "
            f"delivered: {'; '.join(parts)}. A day past the last window: re-run once the export has caught up. "
            "A day before the first: the export was started later (its start date or mode), so Langfuse never "
            "exported it. A hole between windows: an export run failed or its manifest is missing. One project "
            "of several that was retired or started later: name the projects to read in FINOPS_LANGFUSE_PROJECTS.")


def export_completeness(conn: duckdb.DuckDBPyConnection, files: list[ExportFile],
                        rejected: list[Rejected]) -> dg.AssetCheckResult:
    """Each file's rows read (scratch.observations and scratch.traces by file_rank, plus CSV records the reader
    rejected) against its manifest's rowCount; a file that could not be read at all fails whatever its manifest.
    Trace files count too: a trace lost is its generations' allocation lost."""
    read = dict(conn.execute("SELECT file_rank, count(*) FROM (SELECT file_rank FROM scratch.observations "
                             "UNION ALL SELECT file_rank FROM scratch.traces) GROUP BY ALL").fetchall())
    rank_of = {f.path: rank for rank, f in enumerate(files)}
    unreadable: dict[int, str] = {}
    for r in rejected:
        if r.line is None:
            unreadable[rank_of[r.file]] = r.reason
        else:  # a CSV record the reader could not parse: read, and quarantined
            read[rank_of[r.file]] = read.get(rank_of[r.file], 0) + 1
    table, bad = [], []
    for rank, f in enumerate(files):
        rows, expected = read.get(rank, 0), f.row_count
        problem = ("listed in its manifest, missing from the export" if f.absent else unreadable.get(rank)) or (
            "" if expected is None or expected == rows else f"{rows - expected:+,} rows against its manifest")
        table.append({"file": f.short, "rows read": rows,
                      "manifest rowCount": expected, "problem": problem})
        if problem:
            bad.append(f"{table[-1]['file']}: read {rows:,} rows"
                       + (f", its manifest says {expected:,}" if expected is not None else "") + f" ({problem})")
    total = sum(read.values())
    traces = conn.execute("SELECT count(*) FROM scratch.traces").fetchone()[0]
    rows_read = f"{total:,} rows" + (f" ({total - traces:,} observations, {traces:,} traces)" if traces else "")
    counted = sum(1 for f in files if f.row_count is not None)
    if bad:
        description = (f"{len(bad)} of {len(files)} export files not read whole: {'; '.join(bad[:SHOWN])}"
                       + (f"; and {len(bad) - SHOWN} more" if len(bad) > SHOWN else "")
                       + ". The day is not delivered: re-export or restore the files, then re-run the day.")
    else:
        description = (f"{len(files)} export files read whole, {rows_read}"
                       + (f"; {counted} of them hold exactly the rows their manifest counts" if counted else "")
                       + (f"; {len(files) - counted} {'has' if len(files) - counted == 1 else 'have'} no rowCount in a manifest (Parquet, whose writer cannot count, "
                          "an older manifest, or no manifest): for those, only their windows' coverage of the day is "
                          "proved" if counted < len(files) else "")
                       + ".")
    shown = [t for t in table if t["problem"]] or table
    return dg.AssetCheckResult(
        check_name=COMPLETENESS_CHECK,
        passed=not bad,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={"files": len(files), "files_checked_against_manifest": counted, "files_not_read_whole": len(bad),
                  "rows_read": total, "by_file": dg.MetadataValue.md(pd.DataFrame(shown[:50]).to_markdown(index=False))},
    )


@dataclass(frozen=True)
class ProjectTotals:
    """One project's side of the API check: what the server counts for the day, or why it could not say."""

    name: str  # the key pair's name ("default": LANGFUSE_PUBLIC_KEY)
    project_id: str | None  # whose rows are its rows; None when a single project is read (all rows are)
    server: ServerTotals | None
    unavailable: str | None

    @property
    def label(self) -> str:
        """How messages name it: `project <id> (<key pair name>)`."""
        return f"project {self.project_id} ({self.name})" if self.project_id else f"project {self.name}"


def api_completeness(conn: duckdb.DuckDBPyConnection, day: date, projects: list[ProjectTotals],
                     tolerance: float) -> dg.AssetCheckResult:
    """Per project, the day's extracted observations (quarantined ones included: they were fetched), each id
    once, and their Langfuse cost, against the server's own totals, within `tolerance` % of the server's
    figure. A gap fails (ERROR); totals the server could not give warn, unless nothing was extracted: an
    empty day nobody confirmed fails."""
    extracted = {p: conn.execute("""
        SELECT count(*), coalesce(sum(cost), 0) FROM (
            SELECT o.id, max(o.langfuse_cost) AS cost
            FROM scratch.observations o JOIN scratch.sources s USING (file_rank)
            WHERE coalesce(o.start_time::DATE, s.file_day) = $day AND ($project IS NULL OR o.project_id = $project)
            GROUP BY coalesce(o.project_id, ''), o.id)""", {"day": day, "project": p.project_id}).fetchone()
                 for p in projects}
    results = [_project_completeness(p, *extracted[p], day, tolerance) for p in projects]
    if len(results) == 1:
        return results[0]
    failed = [r for r in results if not r.passed]
    errors = [r for r in failed if r.severity == dg.AssetCheckSeverity.ERROR]
    table = pd.DataFrame([{"project": p.label, "extracted": r.metadata["extracted_observations"].value,
                           "langfuse counts": r.metadata.get("langfuse_observations") and r.metadata["langfuse_observations"].value,
                           "verdict": "ok" if r.passed else r.severity.value}
                          for p, r in zip(projects, results)])
    return dg.AssetCheckResult(
        check_name=COMPLETENESS_CHECK, passed=not failed,
        severity=dg.AssetCheckSeverity.ERROR if errors else dg.AssetCheckSeverity.WARN,
        description=f"{len(projects) - len(failed)} of {len(projects)} projects extracted whole: " + "; ".join(
            f"{p.label} {extracted[p][0]:,} observations / ${extracted[p][1]:,.2f}, as Langfuse counts" if r.passed
            else f"{p.label}: {r.description.rstrip('.')}" for p, r in zip(projects, results)) + ".",
        metadata={"projects": len(projects), "extracted_observations": sum(c for c, _ in extracted.values()),
                  "extracted_cost_usd": float(sum(cost for _, cost in extracted.values())),
                  "by_project": dg.MetadataValue.md(table.to_markdown(index=False))})


def _project_completeness(project: ProjectTotals, count: int, cost: Decimal, day: date,
                          tolerance: float) -> dg.AssetCheckResult:
    server, unavailable = project.server, project.unavailable
    if server is None:
        if count == 0:
            return dg.AssetCheckResult(
                check_name=COMPLETENESS_CHECK, passed=False, severity=dg.AssetCheckSeverity.ERROR,
                description=f"Langfuse's API returned no observations for {day}, and its totals could not be had to "
                            f"confirm that ({unavailable}). An empty day nobody confirmed is not a verified $0: "
                            "not delivered. Re-run the day when the metrics API answers.",
                metadata={"extracted_observations": 0, "extracted_cost_usd": 0.0})
        return dg.AssetCheckResult(
            check_name=COMPLETENESS_CHECK, passed=False, severity=dg.AssetCheckSeverity.WARN,
            description=f"Could not verify {count:,} observations / ${usd(cost)}: Langfuse's totals for the day are "
                        f"unavailable ({unavailable})",
            metadata={"extracted_observations": count, "extracted_cost_usd": float(cost)},
        )

    def gap_pct(ours, theirs) -> float:
        return float(abs(Decimal(ours) - Decimal(theirs)) * 100 / Decimal(theirs)) if theirs else (0.0 if not ours else 100.0)

    count_gap, cost_gap = gap_pct(count, server.observations), gap_pct(cost, server.total_cost)
    passed = count_gap <= tolerance and cost_gap <= tolerance
    description = (
        f"Extracted {count:,} observations / ${usd(cost)}; Langfuse counts {server.observations:,} / "
        f"${usd(server.total_cost)} (gaps {count_gap:.2f}% and {cost_gap:.2f}%, "
        f"{'within' if passed else 'above'} the {tolerance:g}% tolerance)"
    )
    if not passed:
        description += (". Rows are missing from the extraction (or arrived since): re-run the day; if it "
                        "persists, the API is not serving every row.")
    return dg.AssetCheckResult(
        check_name=COMPLETENESS_CHECK,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={
            "extracted_observations": count,
            "langfuse_observations": server.observations,
            "extracted_cost_usd": float(cost),
            "langfuse_cost_usd": float(server.total_cost),
            "count_gap_pct": count_gap,
            "cost_gap_pct": cost_gap,
            "tolerance_pct": tolerance,
            "observation_types": ", ".join(COST_TYPES),
        },
    )
