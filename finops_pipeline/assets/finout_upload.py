"""finout_upload: the day's cost as a Finout custom-cost CSV, replacing the day's earlier file (and S3 object).

`deliver_day` is shared with focus_export: write the file, check it sums to the day's cost, put it to S3.
"""

from collections.abc import Callable
from datetime import date
from pathlib import Path

import dagster as dg
from duckdb import DuckDBPyConnection
from dagster_duckdb import DuckDBResource

from finops_pipeline.cost_basis import BillNotRead, delivered_and_expected, prepare_delivered
from finops_pipeline.destinations.finout import file_name, finout_rows_sql, write_day_csv
from finops_pipeline.destinations.s3 import S3DeliveryError, put_file
from finops_pipeline.partitions import daily_check, daily_partitions, partition_day
from finops_pipeline.settings import FinopsSettings
from finops_pipeline.warehouse import WAREHOUSE_POOL, connect

DELIVERED_CHECK = "delivered_cost_conserved"
BILL_ASSETS = ["openai_costs", "anthropic_costs", "other_provider_costs"]


def deliver_day(context: dg.AssetExecutionContext, duckdb: DuckDBResource, settings: FinopsSettings, basis: str,
                rows_sql: str, cost_column: str, folder: Path, name: str, s3_uri: str | None,
                check_name: str, prepare: Callable[[DuckDBPyConnection, date], None] | None = None,
                ) -> dg.MaterializeResult:
    """Write `rows_sql` over the day's delivered rows (the temp table `delivered`, and whatever `prepare`
    adds) to `folder`/`name` (atomically), check that its `cost_column` sums to the day's cost on `basis`
    to the last digit, and put the file to `s3_uri`/`name`."""
    day = partition_day(context)
    path = folder / name
    with connect(duckdb) as conn:
        try:
            params = prepare_delivered(conn, day, basis, settings.allocation_keys, settings.billed_providers)
        except BillNotRead as exc:
            raise dg.Failure(str(exc)) from None
        if prepare:
            prepare(conn, day)
        delivery = write_day_csv(conn, rows_sql, {"salt": settings.hash_salt} if "$salt" in rows_sql else {}, path)
        quoted = str(path).replace("'", "''")
        delivered, expected = delivered_and_expected(
            conn, basis, params, f"SELECT {cost_column} AS cost FROM read_csv('{quoted}', header=true, all_varchar=true)")
    what = "allocated (traced)" if basis == "langfuse" else "billed (traced where no bill)"
    check = dg.AssetCheckResult(
        check_name=check_name,
        passed=delivered == expected,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"delivered ${delivered:,.6f}, {what} ${expected:,.6f}"
                    + ("" if delivered == expected else f": off by {delivered - expected:+.12f} USD"),
        metadata={"delivered_cost_usd": float(delivered), "expected_cost_usd": float(expected), "cost_basis": basis},
    )
    metadata = {"path": dg.MetadataValue.path(str(delivery.path)), "dagster/row_count": delivery.rows,
                "total_cost_usd": float(delivered), "cost_basis": basis}
    if s3_uri:
        try:
            put = put_file(delivery.path, s3_uri, name)
        except S3DeliveryError as exc:
            raise dg.Failure(str(exc)) from None
        metadata.update({"s3_bucket": put.bucket, "s3_key": put.key, "s3_etag": put.etag,
                         "uri": dg.MetadataValue.url(put.uri)})
    context.log.info(f"Delivered {delivery.rows} rows, ${float(delivered):,.2f}, to {put.uri if s3_uri else delivery.path}")
    return dg.MaterializeResult(metadata=metadata, check_results=[check])


def delivery_asset_args(basis: str) -> dict:
    """What the delivery assets share: daily, in the warehouse pool, after the allocation (and, on the
    invoice basis, the bills)."""
    return {"partitions_def": daily_partitions, "pool": WAREHOUSE_POOL, "group_name": "delivery",
            "deps": ["allocated_costs", *(BILL_ASSETS if basis == "invoice" else [])]}


def build_finout_upload(basis: str) -> dg.AssetsDefinition:
    @dg.asset(
        name="finout_upload",
        kinds={"finout", "csv", "s3"},
        **delivery_asset_args(basis),
        description=(
            f"The day's LLM cost on the `{basis}` cost basis as a Finout custom-cost CSV (UsageDate, Cost, then the "
            "configured dimensions), written atomically as one file per day to the Finout folder and, with "
            "FINOPS_FINOUT_S3_URI, put to S3 as the day's one object: a re-run replaces the day, so Finout never "
            "counts a day twice."
        ),
        check_specs=[daily_check(
            DELIVERED_CHECK, "finout_upload", blocking=True,
            description=f"The delivered file's Cost column sums to the day's cost on the {basis} basis, exactly.")],
    )
    def finout_upload(context: dg.AssetExecutionContext, duckdb: DuckDBResource,
                      settings: FinopsSettings) -> dg.MaterializeResult:
        day = partition_day(context)
        rows = finout_rows_sql(settings.dimensions, settings.allocation_keys, settings.hashed_dimensions)
        return deliver_day(context, duckdb, settings, basis, rows, "Cost", Path(settings.finout_dir),
                           file_name(day, settings.finout_object_name), settings.finout_s3_uri, DELIVERED_CHECK)

    return finout_upload
