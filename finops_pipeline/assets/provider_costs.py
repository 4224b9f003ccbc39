"""openai_costs, anthropic_costs, other_provider_costs: what each provider billed for the day, into `provider_costs`."""

from datetime import date
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource

from finops_pipeline.partitions import daily_partitions, partition_day
from finops_pipeline.resources import CostApiResource
from finops_pipeline.settings import FinopsSettings
from finops_pipeline.sources.billing_api import CostApiError
from finops_pipeline.sources.provider_billing import (
    BilledCost,
    BillingError,
    read_bill_files,
    read_other_costs,
)
from finops_pipeline.warehouse import MONEY, WAREHOUSE_POOL, connect, mark_written, transactions

_COLUMNS = ["provider", "model", "token_type", "token_kind", "line_item", "project_id", "cost_usd", "source"]


def _replace_bill(duckdb: DuckDBResource, day: date, lines: list[BilledCost], replaced: str, provider_param,
                  asset: str) -> dict:
    """Replace the day's lines of the providers that `replaced` (a condition on `provider` and `$p`) selects,
    in one transaction: the table holds the old bill or the new one, never half of either. Returns the new
    bill's total per provider."""
    # Amounts cross into DuckDB as decimal text, so no float ever touches them.
    frame = pd.DataFrame([[line.provider, line.model, line.token_type, line.token_kind, line.line_item,
                           line.project_id, str(line.cost_usd), line.source] for line in lines],
                         columns=_COLUMNS, dtype=object)
    with connect(duckdb) as conn:
        conn.register("billed", frame)
        for attempt in transactions(conn):
            with attempt:
                conn.execute(f"DELETE FROM provider_costs WHERE day = $day AND {replaced}", {"day": day, "p": provider_param})
                conn.execute(f"""
                    INSERT INTO provider_costs BY NAME
                    SELECT ?::DATE AS day, * REPLACE (cost_usd::VARCHAR::{MONEY} AS cost_usd) FROM billed""", [day])
                # the day's bill is known, an empty one included (the invoice basis reads this: cost_basis.py)
                mark_written(conn, asset, day)
    totals: dict[str, Decimal] = {}
    for line in lines:
        totals[line.provider] = totals.get(line.provider, Decimal(0)) + line.cost_usd
    return {provider: float(total) for provider, total in sorted(totals.items())}


def _provider_cost_asset(provider: str, api: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"{provider}_costs",
        partitions_def=daily_partitions,
        pool=WAREHOUSE_POOL,
        group_name="billing",
        kinds={provider, "duckdb"},
        required_resource_keys={"duckdb", "settings", f"{provider}_api"},
        description=(
            f"What {provider.title()} billed for the day, by line item (model × token kind), into `provider_costs`. "
            f"From {api} when `{provider.upper()}_ADMIN_KEY` is set, else from its saved pages in "
            f"`$FINOPS_BILLING_DIR/{provider}/YYYY-MM-DD/*.json`."
        ),
    )
    def _asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        day = partition_day(context)
        settings: FinopsSettings = context.resources.settings
        cost_api: CostApiResource = getattr(context.resources, f"{provider}_api")
        metadata: dict = {}
        if provider not in settings.billed_providers:
            lines: list[BilledCost] = []
            context.log.info(f"{provider} is not in FINOPS_BILLED_PROVIDERS: no bill read for {day}.")
            metadata["source"] = "none (not billed)"
        elif cost_api.configured:
            try:
                with cost_api.client() as client:
                    lines = client.day_lines(day)
            except (BillingError, CostApiError) as exc:
                raise dg.Failure(str(exc)) from None
            stats = client.stats
            metadata.update({
                "source": f"{provider} cost API", "api_requests": stats.requests, "api_pages": stats.pages,
                "api_retries": stats.retries,
                "api_retry_reasons": ", ".join(f"{r} ×{n}" for r, n in stats.retry_reasons.most_common()) or "none",
            })
        else:
            try:
                lines = read_bill_files(Path(settings.billing_dir), provider, day)
            except BillingError as exc:
                raise dg.Failure(str(exc)) from None
            metadata["source"] = "billing files"
        totals = _replace_bill(context.resources.duckdb, day, lines, "provider = $p", provider, f"{provider}_costs")
        return dg.MaterializeResult(metadata={"dagster/row_count": len(lines),
                                              "billed_cost_usd": totals.get(provider, 0.0), **metadata})

    return _asset


openai_costs = _provider_cost_asset("openai", "GET /v1/organization/costs")
anthropic_costs = _provider_cost_asset("anthropic", "GET /v1/organizations/cost_report")


@dg.asset(
    partitions_def=daily_partitions,
    pool=WAREHOUSE_POOL,
    group_name="billing",
    kinds={"csv", "duckdb"},
    description=(
        "What other providers (Azure OpenAI, Bedrock, Vertex, a self-hosted model at an internal price, ...) billed "
        "for the day, from the CSV drop `$FINOPS_BILLING_DIR/other/*.csv` (columns day, provider, model, cost_usd; "
        "optional token_kind, description, currency), into `provider_costs`."
    ),
)
def other_provider_costs(context: dg.AssetExecutionContext, duckdb: DuckDBResource,
                         settings: FinopsSettings) -> dg.MaterializeResult:
    day = partition_day(context)
    billing_dir = Path(settings.billing_dir)
    try:
        lines = read_other_costs(billing_dir, day, excluded=set(settings.billed_providers))
    except BillingError as exc:
        raise dg.Failure(str(exc)) from None
    # Every provider not billed from its own API is replaced, so a line removed from the CSV goes too.
    totals = _replace_bill(duckdb, day, lines, "NOT list_contains($p::VARCHAR[], provider)", settings.billed_providers,
                           "other_provider_costs")
    return dg.MaterializeResult(metadata={
        "dagster/row_count": len(lines),
        "billed_cost_usd": sum(totals.values()),
        "by_provider": dg.MetadataValue.json(totals),
        "source": f"{billing_dir / 'other'}/*.csv",
    })
