"""langfuse_generations: the day's cost-carrying observations, one row per generation, in DuckDB."""


from pathlib import Path

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource

from finops_pipeline.generations import UNALLOCATED, generations_sql, prepare_day
from finops_pipeline.partitions import daily_partitions, day_bounds, partition_day
from finops_pipeline.settings import FinopsSettings
from finops_pipeline.sources.langfuse_export import list_export_files
from finops_pipeline.sources.observation_rows import read_observations
from finops_pipeline.warehouse import WAREHOUSE_POOL, connect, replace_partition, transaction

UNALLOCATED_CHECK = "unallocated_cost_share"
UNPRICED_CHECK = "unpriced_generations"


@dg.asset(
    partitions_def=daily_partitions,
    pool=WAREHOUSE_POOL,
    group_name="ingestion",
    kinds={"langfuse", "duckdb"},
    description=(
        "Generation-level tokens and cost for the day, read from the Langfuse blob export: one row per "
        "observation that carries cost or usage, deduped by id (latest export wins), priced from the "
        "price table where Langfuse had no price, with the allocation keys resolved. Malformed rows go "
        "to the `quarantine` table with file, line and reason. Never prompt or completion text."
    ),
    check_specs=[
        dg.AssetCheckSpec(UNALLOCATED_CHECK, asset="langfuse_generations",
                          description="Share of the day's cost with an allocation key left `unallocated`."),
        dg.AssetCheckSpec(UNPRICED_CHECK, asset="langfuse_generations",
                          description="Generations neither Langfuse nor the price table could price."),
    ],
)
def langfuse_generations(
    context: dg.AssetExecutionContext, duckdb: DuckDBResource, settings: FinopsSettings
) -> dg.MaterializeResult:
    day = partition_day(context)
    start, end = day_bounds(day)
    export_dir = Path(settings.langfuse_export_dir)
    listing = list_export_files(export_dir)
    files = [f for f in listing.files if f.overlaps(start, end)]
    covered_until = max((f.window_end for f in listing.files), default=None)
    if covered_until is None or covered_until < end:
        raise dg.Failure(
            f"The Langfuse export in {export_dir} does not cover {day} yet: its last file's window ends at "
            f"{covered_until.isoformat() if covered_until else 'never (no export files)'}; the day ends at "
            f"{end.isoformat()}. Re-run once the export has caught up."
        )
    for path in listing.unlisted:
        context.log.warning(f"Skipped {path}: no manifest lists it yet (Langfuse may still be writing it).")
    for path, why in listing.unreadable_manifests:
        context.log.warning(f"Skipped manifest {path}: {why}")

    with connect(duckdb) as conn:
        rejected = read_observations(conn, files, settings.allocation_keys)
        prepare_day(conn, day)
        if rejected:
            conn.executemany(
                "INSERT INTO day_quarantine VALUES ('langfuse_generations', ?, ?, ?, NULL, ?)",
                [[day, str(r.file), r.line, r.reason] for r in rejected],
            )
        with transaction(conn):
            rows = replace_partition(conn, "langfuse_generations", day, generations_sql(settings.allocation_keys))
            conn.execute("DELETE FROM quarantine WHERE source = 'langfuse_generations' AND day = ?", [day])
            conn.execute("INSERT INTO quarantine SELECT * FROM day_quarantine")
        stats = generation_stats(conn, day, settings.allocation_keys)
        quarantined = conn.execute("SELECT count(*) FROM day_quarantine").fetchone()[0]
        quarantine_sample = conn.execute(
            "SELECT file, line, reason FROM day_quarantine ORDER BY file, line LIMIT 10").df()

    for r in rejected:
        context.log.warning(f"Quarantined {r.file}{f' line {r.line}' if r.line else ''}: {r.reason}")
    metadata = {
        "dagster/row_count": rows,
        "total_cost_usd": stats["total_cost"],
        "langfuse_priced_cost_usd": stats["cost_langfuse"],
        "price_table_cost_usd": stats["cost_price_table"],
        "unpriced_generations": stats["unpriced"],
        "unallocated_cost_usd": stats["unallocated_cost"],
        "quarantined_rows": quarantined,
        "files_read": len(files),
        "files_skipped_unlisted": len(listing.unlisted),
    }
    if quarantined:
        metadata["quarantine_sample"] = dg.MetadataValue.md(quarantine_sample.to_markdown(index=False))
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[unallocated_check(stats, settings), unpriced_check(stats, settings)],
    )


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
               {per_key}
        FROM langfuse_generations WHERE day = ?""", [day]).fetchone()
    unpriced_models = conn.execute("""
        SELECT coalesce(model, '(no model)') AS model, count(*) AS generations, sum(total_tokens) AS tokens
        FROM langfuse_generations WHERE day = ? AND cost_source = 'unpriced' GROUP BY 1 ORDER BY 2 DESC""",
        [day]).df()
    return {
        "total_cost": float(row[0]),
        "cost_langfuse": float(row[1]),
        "cost_price_table": float(row[2]),
        "unpriced": row[3],
        "unpriced_tokens": row[4],
        "unallocated_cost": float(row[5]),
        "unallocated_by_key": {k: float(v) for k, v in zip(keys, row[6:])},
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
            f"{worst:.1f}% of ${total:,.2f} has no `{worst_key}` "
            f"({'within' if passed else 'above'} the {settings.unallocated_warn_share_pct:g}% threshold)"
        ),
        metadata={
            "worst_key": worst_key,
            "worst_share_pct": worst,
            "threshold_pct": settings.unallocated_warn_share_pct,
            "by_key": dg.MetadataValue.md(table.to_markdown(index=False)),
        },
    )


def unpriced_check(stats: dict, settings: FinopsSettings) -> dg.AssetCheckResult:
    count = stats["unpriced"]
    passed = count <= settings.unpriced_warn_count
    metadata = {
        "unpriced_generations": count,
        "unpriced_tokens": stats["unpriced_tokens"],
        "threshold": settings.unpriced_warn_count,
    }
    if count:
        metadata["models"] = dg.MetadataValue.md(stats["unpriced_models"].to_markdown(index=False))
    models = ", ".join(stats["unpriced_models"]["model"].head(5)) if count else ""
    return dg.AssetCheckResult(
        check_name=UNPRICED_CHECK,
        passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"{count} generations ({stats['unpriced_tokens']:,} tokens) have no price"
            + (f": {models}" if count else "")
            + ("" if passed else f"; above the threshold of {settings.unpriced_warn_count}. Add a price in Langfuse"
               " or the model is missing from the price table: this spend is not in the totals.")
        ),
        metadata=metadata,
    )
