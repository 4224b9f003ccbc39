"""focus_export: the day's cost as a FOCUS 1.2 file, for Finout's FOCUS intake or any other FinOps tool."""

from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from finops_pipeline.assets.finout_upload import deliver_day, delivery_asset_args
from finops_pipeline.destinations.focus import focus_rows_sql, prepare_focus
from finops_pipeline.partitions import daily_check, partition_day
from finops_pipeline.settings import FinopsSettings

FOCUS_CHECK = "focus_cost_conserved"


def build_focus_export(basis: str) -> dg.AssetsDefinition:
    @dg.asset(
        name="focus_export",
        kinds={"focus", "csv", "s3"},
        **delivery_asset_args(basis),
        description=(
            f"The day's LLM cost on the `{basis}` cost basis as a FOCUS 1.2 CSV (`$FINOPS_FOCUS_DIR/focus-YYYY-MM-DD.csv`, "
            "and S3 with FINOPS_FOCUS_S3_URI), for a FinOps tool's FOCUS intake (not for Finout beside the Finout file): "
            "one Usage row per allocation, model and usage unit, with its SKU (SkuId `openai/gpt-4o/input`), the list "
            "unit price per 1M tokens from genai-prices and ListCost; the delivered allocation keys that resolved in "
            "Tags; spend a bill holds and no trace covers as an Adjustment without a quantity; the OpenAI project or "
            "Anthropic workspace as SubAccountId where the bill says it."
        ),
        check_specs=[daily_check(
            FOCUS_CHECK, "focus_export", blocking=True,
            description=f"The file's BilledCost sums to the day's cost on the {basis} basis, exactly.")],
    )
    def focus_export(context: dg.AssetExecutionContext, duckdb: DuckDBResource,
                     settings: FinopsSettings) -> dg.MaterializeResult:
        day = partition_day(context)
        return deliver_day(context, duckdb, settings, basis,
                           focus_rows_sql(basis, settings.allocation_keys, settings.dimensions, settings.hashed_dimensions), "BilledCost",
                           Path(settings.focus_dir), f"focus-{day.isoformat()}.csv", settings.focus_s3_uri, FOCUS_CHECK,
                           prepare=lambda conn, day: prepare_focus(conn, day, basis, settings.provider_map))

    return focus_export
