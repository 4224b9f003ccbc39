"""openai_costs, anthropic_costs: what each provider billed for the day, into the `provider_costs` table."""


from collections.abc import Callable
from datetime import date
from pathlib import Path

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource

from finops_pipeline.partitions import daily_partitions, partition_day
from finops_pipeline.settings import FinopsSettings
from finops_pipeline.sources.provider_billing import (
    BilledCost,
    BillingError,
    read_anthropic_costs,
    read_openai_costs,
)
from finops_pipeline.warehouse import WAREHOUSE_POOL, MONEY, connect, transaction

_COLUMNS = ["provider", "model", "token_type", "line_item", "cost_usd", "source_file"]


def _provider_cost_asset(
    provider: str, reader: Callable[[Path, date], list[BilledCost]], api: str
) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"{provider}_costs",
        partitions_def=daily_partitions,
        pool=WAREHOUSE_POOL,
        group_name="billing",
        kinds={provider, "duckdb"},
        description=(
            f"What {provider.title()} billed for the day, by line item, read from billing files saved in the "
            f"format of {api} (`$FINOPS_BILLING_DIR/{provider}/YYYY-MM-DD/*.json`), into `provider_costs`."
        ),
    )
    def _asset(context: dg.AssetExecutionContext, duckdb: DuckDBResource, settings: FinopsSettings) -> dg.MaterializeResult:
        day = partition_day(context)
        if provider not in settings.billed_providers:
            lines: list[BilledCost] = []
            context.log.info(f"{provider} is not in FINOPS_BILLED_PROVIDERS: no bill read for {day}.")
        else:
            try:
                lines = reader(Path(settings.billing_dir), day)
            except BillingError as exc:
                raise dg.Failure(str(exc)) from None
        # Amounts cross into DuckDB as decimal text, so no float ever touches them.
        frame = pd.DataFrame(
            [[line.provider, line.model, line.token_type, line.line_item, str(line.cost_usd), line.source_file]
             for line in lines], columns=_COLUMNS, dtype=object)
        with connect(duckdb) as conn:
            conn.register("billed", frame)
            with transaction(conn):
                conn.execute("DELETE FROM provider_costs WHERE day = ? AND provider = ?", [day, provider])
                conn.execute(f"""
                    INSERT INTO provider_costs
                    SELECT ?, provider, model, token_type, line_item, cost_usd::VARCHAR::{MONEY}, source_file FROM billed""",
                             [day])
            total = conn.execute("SELECT coalesce(sum(cost_usd), 0) FROM provider_costs WHERE day = ? AND provider = ?",
                                 [day, provider]).fetchone()[0]
        return dg.MaterializeResult(metadata={
            "dagster/row_count": len(lines),
            "billed_cost_usd": float(total),
            "billed": provider in settings.billed_providers,
        })

    return _asset


openai_costs = _provider_cost_asset("openai", read_openai_costs, "GET /v1/organization/costs")
anthropic_costs = _provider_cost_asset("anthropic", read_anthropic_costs, "GET /v1/organizations/cost_report")
