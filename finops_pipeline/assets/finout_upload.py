"""finout_upload: the day's allocated cost as a Finout custom-cost CSV, replacing the day's earlier file."""


from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from finops_pipeline.destinations.finout import write_day_csv
from finops_pipeline.partitions import daily_partitions, partition_day
from finops_pipeline.settings import FinopsSettings
from finops_pipeline.warehouse import WAREHOUSE_POOL, MONEY, connect

DELIVERED_CHECK = "delivered_cost_conserved"


def finout_rows_sql(keys: list[str]) -> str:
    """`UsageDate`, `Cost`, then one column per dimension. Rows with only unpriced calls carry no cost."""
    service = "allocation['feature']" if "feature" in keys else "'llm'"
    dims = ", ".join(f"allocation['{k}'] AS \"{k}\"" for k in keys)  # keys are validated identifiers
    order = ", ".join(["Cost DESC", "service_name", *(f'"{k}"' for k in keys), "provider", "model"])
    return f"""
        SELECT strftime(day, '%Y-%m-%d') AS UsageDate, cost_usd AS Cost, 'langfuse' AS source,
               {service} AS service_name, {dims}, provider, model
        FROM allocated_costs
        WHERE day = $day AND calls > unpriced_calls
        ORDER BY {order}
    """


@dg.asset(
    partitions_def=daily_partitions,
    pool=WAREHOUSE_POOL,
    group_name="delivery",
    kinds={"finout", "csv"},
    deps=["allocated_costs"],
    description=(
        "The day's allocated LLM cost as a Finout custom-cost CSV (UsageDate, Cost, source, service_name, the "
        "allocation keys, provider, model), written atomically to the Finout folder as one file per day: "
        "a re-run replaces the day's file, so Finout never counts a day twice."
    ),
    check_specs=[
        dg.AssetCheckSpec(DELIVERED_CHECK, asset="finout_upload",
                          description="The delivered file's Cost column sums to the allocated cost."),
    ],
)
def finout_upload(
    context: dg.AssetExecutionContext, duckdb: DuckDBResource, settings: FinopsSettings
) -> dg.MaterializeResult:
    day = partition_day(context)
    with connect(duckdb) as conn:
        delivery = write_day_csv(conn, finout_rows_sql(settings.allocation_keys), {"day": day},
                                 Path(settings.finout_dir), day)
        delivered, allocated = conn.execute(f"""
            SELECT (SELECT coalesce(sum(Cost::{MONEY}), 0) FROM read_csv($path, header=true, all_varchar=true)),
                   (SELECT coalesce(sum(cost_usd), 0) FROM allocated_costs WHERE day = $day)
        """, {"path": str(delivery.path), "day": day}).fetchone()
    context.log.info(f"Delivered {delivery.rows} rows, ${delivered:,.2f}, to {delivery.path}")
    passed = delivered == allocated
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(delivery.path)),
            "dagster/row_count": delivery.rows,
            "total_cost_usd": float(delivered),
        },
        check_results=[dg.AssetCheckResult(
            check_name=DELIVERED_CHECK,
            passed=passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"delivered ${delivered:,.6f}, allocated ${allocated:,.6f}"
                        + ("" if passed else f": off by {delivered - allocated:+.12f} USD"),
            metadata={"delivered_cost_usd": float(delivered), "allocated_cost_usd": float(allocated)},
        )],
    )
