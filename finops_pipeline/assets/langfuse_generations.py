"""langfuse_generations: the day's cost-carrying observations, one row per generation, in DuckDB.

Read from the Langfuse API when keys are set (resources.py), else from the blob export (extraction.py); every
source lands in the scratch tables and goes through the same validation, dedup, pricing, allocation and
quarantine.
"""

from datetime import datetime, timezone

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource

from finops_pipeline.completeness import COMPLETENESS_CHECK
from finops_pipeline.extraction import api_day_totals, extract_from_api, extract_from_export, plan_export
from finops_pipeline.generations import UNALLOCATED, generations_sql, prepare_day
from finops_pipeline.money import usd
from finops_pipeline.partitions import daily_check, daily_partitions, partition_day
from finops_pipeline.resources import LangfuseApiResource
from finops_pipeline.retention import retire_staged_days, unretire
from finops_pipeline.settings import FinopsSettings
from finops_pipeline.staged_inputs import (
    Staged, api_fingerprint, completeness_then, export_fingerprint, record, staging_of, unchanged_since, was_staged,
)
from finops_pipeline.warehouse import WAREHOUSE_POOL, connect, replace_partition, transactions

ASSET = "langfuse_generations"
UNALLOCATED_CHECK = "unallocated_cost_share"
UNPRICED_CHECK = "unpriced_generations"


@dg.asset(
    name=ASSET,
    group_name="ingestion",
    kinds={"langfuse", "duckdb"},
    description=(
        "Generation-level tokens and cost for the day, from the Langfuse API (when LANGFUSE_PUBLIC_KEY and "
        "LANGFUSE_SECRET_KEY are set, and for each LANGFUSE_PUBLIC_KEY_<NAME> pair: the v2 API, or the legacy "
        "observations and traces on a server without it) or the Langfuse blob export (observations_v2, or the "
        "legacy observations with their traces; local or in a bucket; every project folder): one row per "
        "observation that carries cost or usage, deduped by project and id, priced from the price table where "
        "Langfuse had no price, with the allocation keys resolved. Malformed rows go to the `quarantine` table "
        "with where they came from and why. Never prompt or completion text. A day the export's windows do not "
        "cover fails. Metadata says which path was read (`api_path`, `export_layout`). A re-run that finds the day's "
        "inputs as they were staged (the export's files, or the API's count and cost) takes the day as staged "
        "(`inputs_unchanged`); FINOPS_STAGED_RETENTION_DAYS drops old days' rows once they are allocated."
    ),
    partitions_def=daily_partitions,
    pool=WAREHOUSE_POOL,
    check_specs=[
        daily_check(UNALLOCATED_CHECK, ASSET,
                    description="Share of the day's cost with an allocation key left `unallocated`."),
        daily_check(UNPRICED_CHECK, ASSET,
                    description="Generations neither Langfuse nor the price table could price, wholly or in part."),
        daily_check(COMPLETENESS_CHECK, ASSET, blocking=True,
                    description="The day was extracted whole: from the export, every observation and trace file "
                                "read as its manifest counts it; from the API, each project's count and cost "
                                "match Langfuse's own totals (GET /api/public/v2/metrics, or the v1 "
                                "/api/public/metrics). An ERROR stops the day's delivery."),
    ],
)
def langfuse_generations(
    context: dg.AssetExecutionContext, duckdb: DuckDBResource, settings: FinopsSettings, langfuse: LangfuseApiResource
) -> dg.MaterializeResult:
    day = partition_day(context)
    with connect(duckdb) as conn:
        if langfuse.configured:
            totals = api_day_totals(langfuse, day) if was_staged(conn, day) else None
            fingerprint, source = (api_fingerprint(totals, settings) if totals else None), "the Langfuse API's totals"
        else:
            plan = plan_export(context, settings, day)
            fingerprint, source = export_fingerprint(plan.files, settings), "the export's files"
        staged = unchanged_since(conn, day, fingerprint) if fingerprint else None
        if staged is not None:  # the same inputs as when the day was staged: nothing to read again
            context.log.info(f"{day}: {source} are as they were when the day was staged "
                             f"({staged.staged_at:%Y-%m-%d %H:%M} UTC): not read again.")
            return _as_staged(conn, day, settings, staged, _retention(context, conn, settings, day))
        extraction = (extract_from_api(context, conn, langfuse, settings, day) if langfuse.configured
                      else extract_from_export(context, conn, settings, day, plan))
        prepare_day(conn, day, settings.provider_map)
        if extraction.rejected:
            conn.executemany(
                "INSERT INTO day_quarantine VALUES ('langfuse_generations', ?, ?, ?, NULL, ?)",
                [[day, str(r.file), r.line, r.reason] for r in extraction.rejected],
            )
        for attempt in transactions(conn):
            with attempt:
                rows = replace_partition(conn, "langfuse_generations", day, generations_sql(settings.vocabulary))
                conn.execute("DELETE FROM quarantine WHERE source = 'langfuse_generations' AND day = ?", [day])
                conn.execute("INSERT INTO quarantine SELECT * FROM day_quarantine")
                unretire(conn, day)
                # the inputs these rows came from are recorded once proven whole; until then, none (read again)
                conn.execute("DELETE FROM staged_inputs WHERE day = ?", [day])
                staged_at = staging_of(conn, day)  # this staging's own stamp, read in its transaction
        stats = generation_stats(conn, day, settings.allocation_keys)
        quarantined = conn.execute("SELECT count(*) FROM day_quarantine").fetchone()[0]
        quarantine_sample = conn.execute(
            "SELECT file, line, reason FROM day_quarantine ORDER BY file, line LIMIT 10").df()
        complete = extraction.completeness(conn, day)
        if langfuse.configured:  # what the server counted, as the read found it (proven equal when complete)
            fingerprint = api_fingerprint(extraction.api_totals, settings) if extraction.api_totals else None
        if fingerprint:
            record(conn, day, fingerprint, complete, staged_at)
        retired = _retention(context, conn, settings, day)
        by_project = conn.execute(
            "SELECT project_id, count(*), sum(cost_usd) FROM langfuse_generations WHERE day = ? GROUP BY ALL",
            [day]).fetchall() if len(extraction.read_from) > 1 else []

    for r in extraction.rejected:
        context.log.warning(f"Quarantined {r.file}{f' line {r.line}' if r.line else ''}: {r.reason}")
    metadata = {**_day_metadata(stats, rows, quarantined), **extraction.metadata, "inputs_unchanged": False, **retired}
    if by_project:  # several projects: what each contributed, and how it was read
        staged = {project: (n, cost) for project, n, cost in by_project}
        metadata["by_project"] = dg.MetadataValue.md(pd.DataFrame(
            [{"project_id": project, "read from": extraction.read_from.get(project, "(not a configured project)"),
              "generations": staged.get(project, (0, 0))[0], "cost_usd": float(staged.get(project, (0, 0))[1] or 0)}
             for project in sorted(set(extraction.read_from) | set(staged), key=str)]).to_markdown(index=False))
    if quarantined:
        metadata["quarantine_sample"] = dg.MetadataValue.md(quarantine_sample.to_markdown(index=False))
    stats["without_trace"] = extraction.metadata.get("generations_without_trace", 0)
    checks = [unallocated_check(stats, settings), unpriced_check(stats, settings), complete]
    return dg.MaterializeResult(metadata=metadata, check_results=checks)


def _retention(context, conn, settings: FinopsSettings, day) -> dict:
    """Drop the staged generations of the days past FINOPS_STAGED_RETENTION_DAYS (retention.py); say how many."""
    if settings.staged_retention_days is None:
        return {}
    days = retire_staged_days(conn, datetime.now(timezone.utc).date(), settings.staged_retention_days, day)
    if days:
        context.log.info(f"Retention: dropped the staged generations of {len(days)} days ({days[0]} .. {days[-1]}); "
                         "their allocated and delivered rows stay.")
    return {"staged_days_retired": len(days)}


def _day_metadata(stats: dict, rows: int, quarantined: int) -> dict:
    """The staged day's figures, as the UI plots them (read or taken as staged alike)."""
    return {
        "dagster/row_count": rows,
        "total_cost_usd": stats["total_cost"],
        "langfuse_priced_cost_usd": stats["cost_langfuse"],
        "price_table_cost_usd": stats["cost_price_table"],
        "partially_priced_generations": stats["partially_priced"],
        "unpriced_generations": stats["unpriced"],
        "unallocated_cost_usd": stats["unallocated_cost"],
        "quarantined_rows": quarantined,
    }


def _as_staged(conn, day, settings: FinopsSettings, staged: Staged, retired: dict) -> dg.MaterializeResult:
    """The day as staged from the same inputs: its figures and checks from the warehouse, its completeness as
    proven then."""
    stats = generation_stats(conn, day, settings.allocation_keys)
    [(rows, quarantined)] = conn.execute(
        "SELECT (SELECT count(*) FROM langfuse_generations WHERE day = $day), "
        "(SELECT count(*) FROM quarantine WHERE source = 'langfuse_generations' AND day = $day)", {"day": day}).fetchall()
    metadata = {**_day_metadata(stats, rows, quarantined), "files_read": 0, "api_requests_for_rows": 0,
                "inputs_unchanged": True, "inputs_unchanged_since": staged.staged_at.isoformat(), **retired}
    checks = [unallocated_check(stats, settings), unpriced_check(stats, settings),
              completeness_then(COMPLETENESS_CHECK, staged)]
    return dg.MaterializeResult(metadata=metadata, check_results=checks)


def generation_stats(conn, day, keys: list[str]) -> dict:
    """Totals of the staged day, for metadata and checks. Dollar figures are floats for the UI's plots."""
    per_key = ", ".join(
        f"coalesce(sum(cost_usd) FILTER (WHERE allocation['{k}'] = '{UNALLOCATED}'), 0) AS \"{k}\"" for k in keys)
    row = conn.execute(f"""
        SELECT coalesce(sum(cost_usd), 0),
               coalesce(sum(cost_usd) FILTER (WHERE cost_source = 'langfuse'), 0),
               coalesce(sum(cost_usd) FILTER (WHERE cost_source = 'price_table'), 0),
               count(*) FILTER (WHERE cost_source = 'unpriced'),
               coalesce(sum(total_tokens) FILTER (WHERE cost_source = 'unpriced'), 0),
               coalesce(sum(cost_usd) FILTER (WHERE list_contains(map_values(allocation), '{UNALLOCATED}')), 0),
               count(*) FILTER (WHERE cost_source = 'partially_priced'),
               coalesce(sum(cost_usd) FILTER (WHERE cost_source = 'partially_priced'), 0),
               {per_key}
        FROM langfuse_generations WHERE day = ?""", [day]).fetchone()
    # Per model, what no price covers: unpriced calls, and the units the price table has no price for in
    # calls it priced otherwise (partially priced), with their counts.
    unpriced_models = conn.execute("""
        WITH unpriced AS (
            SELECT coalesce(model, '(no model)') AS model, provider, cost_source, total_tokens, unpriced_usage
            FROM langfuse_generations WHERE day = ? AND cost_source IN ('unpriced', 'partially_priced')
        ), units AS (
            SELECT model, provider, cost_source, e.key AS unit, sum(e.value) AS n
            FROM (SELECT *, unnest(map_entries(unpriced_usage)) AS e FROM unpriced) GROUP BY ALL
        ), labels AS (
            SELECT model, provider, cost_source, string_agg(unit || ' ' || format('{:,}', n), ', ' ORDER BY n DESC, unit)
                   AS without_price
            FROM units GROUP BY ALL
        )
        SELECT model, provider, cost_source, count(*) AS generations, sum(total_tokens) AS tokens,
               coalesce(any_value(l.without_price), '') AS without_price
        FROM unpriced LEFT JOIN labels l USING (model, provider, cost_source)
        GROUP BY model, provider, cost_source ORDER BY generations DESC, model""", [day]).df()
    return {
        "total_cost": float(row[0]),
        "cost_langfuse": float(row[1]),
        "cost_price_table": float(row[2]),
        "unpriced": row[3],
        "unpriced_tokens": row[4],
        "unallocated_cost": float(row[5]),
        "partially_priced": row[6],
        "cost_partially_priced": float(row[7]),
        "unallocated_by_key": {k: float(v) for k, v in zip(keys, row[8:])},
        "unpriced_models": unpriced_models,
    }


def unallocated_check(stats: dict, settings: FinopsSettings) -> dg.AssetCheckResult:
    total = stats["total_cost"]
    shares = {k: (100 * v / total if total else 0.0) for k, v in stats["unallocated_by_key"].items()}
    worst_key, worst = max(shares.items(), key=lambda kv: kv[1])
    passed = worst <= settings.unallocated_warn_share_pct
    table = pd.DataFrame(
        [{"key": k, "unallocated $": round(stats["unallocated_by_key"][k], 2), "share %": round(s, 2)}
         for k, s in shares.items()])
    return dg.AssetCheckResult(
        check_name=UNALLOCATED_CHECK,
        passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"{worst:.1f}% of ${usd(total)} has no `{worst_key}` "
            f"({'within' if passed else 'above'} the {settings.unallocated_warn_share_pct:g}% threshold)"
            + (f"; {stats['without_trace']:,} generations found no trace, so their trace-level keys are unknown"
               if stats.get("without_trace") else "")
        ),
        metadata={
            "worst_key": worst_key,
            "worst_share_pct": worst,
            "threshold_pct": settings.unallocated_warn_share_pct,
            "by_key": dg.MetadataValue.md(table.to_markdown(index=False)),
        },
    )


def unpriced_check(stats: dict, settings: FinopsSettings) -> dg.AssetCheckResult:
    """Generations neither Langfuse nor the price table could price, and those priced but for some of their
    usage (a unit the model has no price in, a usage key nothing recognises): never $0, always named."""
    unpriced, partial = stats["unpriced"], stats["partially_priced"]
    count = unpriced + partial
    passed = count <= settings.unpriced_warn_count
    metadata = {
        "unpriced_generations": unpriced,
        "unpriced_tokens": stats["unpriced_tokens"],
        "partially_priced_generations": partial,
        "partially_priced_cost_usd": stats["cost_partially_priced"],
        "threshold": settings.unpriced_warn_count,
    }
    models = stats["unpriced_models"]
    if count:
        metadata["models"] = dg.MetadataValue.md(models.head(50).rename(columns={
            "cost_source": "cost source", "without_price": "usage without a price"}).to_markdown(index=False))
    named = "; ".join(
        f"{r.model} ({r.provider}): {r.generations} {r.cost_source.replace('_', ' ')}"
        + (f", without a price: {r.without_price}" if r.without_price else "") for r in models.head(5).itertuples())
    return dg.AssetCheckResult(
        check_name=UNPRICED_CHECK,
        passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"{unpriced} generations ({stats['unpriced_tokens']:,} tokens) have no price and {partial} are priced "
            f"only in part (${usd(stats['cost_partially_priced'])} priced)" + (f": {named}" if count else "")
            + ("" if passed else f"; above the threshold of {settings.unpriced_warn_count}. Add a price in Langfuse, "
               "or map the model to the provider that serves it (FINOPS_PROVIDER_MAP): what has no price is not in "
               "the totals.")
        ),
        metadata=metadata,
    )
