"""monthly_report: the month finance opens, as one self-contained HTML file per month
($FINOPS_HOME/reports/llm-costs-YYYY-MM.html, and FINOPS_REPORTS_S3_URI), provisional while the month is in
progress or its last days may still change, final once they have settled.

It is re-rendered after the daily runs that touch its month (an automation condition: its days updated, none
still running), so the daily schedule keeps the month in progress current and re-renders a closed month
until its last day's lookback and settling are over.
"""

import os
import threading
from datetime import date
from decimal import Decimal
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from finops_pipeline.destinations.finout import file_name
from finops_pipeline.destinations.s3 import S3DeliveryError, put_file
from finops_pipeline.economics import BusinessFileError
from finops_pipeline.partitions import monthly_check, monthly_partitions
from finops_pipeline.report.figures import month_figures
from finops_pipeline.report.html import markdown_tables, render, usd
from finops_pipeline.settings import FinopsSettings
from finops_pipeline.warehouse import WAREHOUSE_POOL, connect

REPORT = "monthly_report"
DELIVERY_CHECK = "report_matches_delivery"
SOURCES = ["finout_upload", "unit_economics", "budget_status", "cost_anomalies", "cost_reconciliation"]

# After the daily runs: some day of the month was written since the last render, and none is being written now.
AFTER_ITS_DAYS = (dg.AutomationCondition.any_deps_updated().since_last_handled()
                  & ~dg.AutomationCondition.any_deps_in_progress() & ~dg.AutomationCondition.in_progress())


def report_name(month: date) -> str:
    return f"llm-costs-{month:%Y-%m}.html"


def build_monthly_report(basis: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=REPORT,
        group_name="reports",
        kinds={"html"},
        partitions_def=monthly_partitions,
        pool=WAREHOUSE_POOL,
        deps=SOURCES,  # each month depends on its days (Dagster's daily-to-monthly time window mapping)
        automation_condition=AFTER_ITS_DAYS,
        description=(
            f"The month's LLM cost report on the `{basis}` cost basis, one HTML file readable offline (charts as "
            "static SVG): 1. spend by team and feature, with the month's delivered, traced and billed totals; "
            "2. the daily trend and the projection to month end; 3. cost per customer (top 20) with revenue and "
            "margin, and per tier; 4. unit costs per feature against the month before; 5. budgets, anomalies and "
            "reconciliation gaps; 6. what is not in the totals, and provenance. Written to "
            "$FINOPS_HOME/reports/llm-costs-YYYY-MM.html (and FINOPS_REPORTS_S3_URI). PROVISIONAL until every day "
            "of the month is in and settled, then FINAL."),
        check_specs=[monthly_check(
            DELIVERY_CHECK, REPORT,
            description="The report's month total equals the sum of the month's delivered Finout files, day by day, "
                        "to the last digit (ERROR naming the days that differ).")],
    )
    def monthly_report(context: dg.AssetExecutionContext, duckdb: DuckDBResource,
                       settings: FinopsSettings) -> dg.MaterializeResult:
        month = date.fromisoformat(context.partition_key)
        with connect(duckdb) as conn:
            try:
                figures = month_figures(conn, month, settings, basis)
            except (ValueError, BusinessFileError) as exc:
                raise dg.Failure(str(exc)) from None
            check = _matches_delivery(conn, figures, settings)
        path = settings.reports_dir / report_name(month)
        _write_atomically(path, render(figures, settings.reconciliation_warn_pct))
        metadata = {
            "path": dg.MetadataValue.path(str(path)),
            "file": dg.MetadataValue.url(path.resolve().as_uri()),
            "status": "final" if figures.final else "provisional",
            "status_reason": figures.status,
            "total_cost_usd": float(figures.delivered_usd),
            "traced_cost_usd": float(figures.traced_usd),
            "billed_cost_usd": float(sum((b["billed_usd"] for b in figures.billed), Decimal(0))),
            "days_known": sum(1 for d in figures.daily if d["cost_usd"] is not None),
            "days_unknown": len(figures.unknown_days),
            "cost_basis": basis,
            **({"projected_month_end_usd": float(figures.projected_usd)} if figures.projection else {}),
            **{name: dg.MetadataValue.md(text) for name, text in markdown_tables(figures).items()},
        }
        if settings.reports_s3_uri:
            try:
                put = put_file(path, settings.reports_s3_uri, report_name(month), content_type="text/html; charset=utf-8")
            except S3DeliveryError as exc:
                raise dg.Failure(str(exc)) from None
            metadata["uri"] = dg.MetadataValue.url(put.uri)
        context.log.info(f"{figures.month:%B %Y} ({'final' if figures.final else 'provisional'}): "
                         f"{usd(figures.delivered_usd)} over {metadata['days_known']} days, written to {path}")
        return dg.MaterializeResult(metadata=metadata, check_results=[check])

    return monthly_report


def _matches_delivery(conn, figures, settings: FinopsSettings) -> dg.AssetCheckResult:
    """The report's known days against the Finout files delivered for them, day by day."""
    days = [d["day"] for d in figures.daily if d["cost_usd"] is not None]
    paths = {day: Path(settings.finout_dir) / file_name(day, settings.finout_object_name) for day in days}
    absent = [day for day, p in paths.items() if not p.exists()]
    present = [str(p) for day, p in paths.items() if day not in absent]
    delivered = dict(conn.execute(
        "SELECT filename, sum(Cost::DECIMAL(38, 12)) FROM read_csv($files, header = true, all_varchar = true, "
        "filename = true, union_by_name = true) GROUP BY ALL", {"files": present}).fetchall()) if present else {}
    reported = {d["day"]: d["cost_usd"] for d in figures.daily if d["cost_usd"] is not None}
    differing = [(day, reported[day], delivered.get(str(paths[day]), Decimal(0))) for day in days
                 if day not in absent and reported[day] != delivered.get(str(paths[day]), Decimal(0))]
    total = sum(delivered.values(), Decimal(0))
    passed = not absent and not differing
    description = (f"The report's {usd(figures.delivered_usd)} over {len(days)} days equals the {len(present)} Finout "
                   f"files delivered for them ({total:,.6f} USD), day by day." if passed else
                   f"The report (the warehouse) says {usd(figures.delivered_usd)}; the Finout files delivered for its "
                   f"days sum to {usd(total)}."
                   + (f" No file for {', '.join(d.isoformat() for d in absent)}." if absent else "")
                   + (" Differing days (report vs file): " + "; ".join(f"{d}: {usd(a, 6)} vs {usd(b, 6)}"
                                                                        for d, a, b in differing) + "." if differing else "")
                   + " Re-run those days' delivery (or the days) so that Finout and the report agree.")
    return dg.AssetCheckResult(
        check_name=DELIVERY_CHECK, passed=passed, severity=dg.AssetCheckSeverity.ERROR, description=description,
        metadata={"report_total_usd": float(figures.delivered_usd), "delivered_total_usd": float(total),
                  "days_compared": len(days), "days_without_file": len(absent), "days_differing": len(differing)})


def _write_atomically(path: Path, text: str) -> None:
    """The new report or the previous one, never half of one; readable as the process's umask allows, like
    the delivered files (a temporary file would be private to its owner)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
