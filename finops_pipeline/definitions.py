"""The Dagster code location: the daily graph, its resources and its schedule."""

import dagster as dg
from dagster_duckdb import DuckDBResource

from finops_pipeline.assets.allocated_costs import allocated_costs
from finops_pipeline.assets.cost_reconciliation import cost_reconciliation
from finops_pipeline.assets.finout_upload import finout_upload
from finops_pipeline.assets.langfuse_generations import langfuse_generations
from finops_pipeline.assets.provider_costs import anthropic_costs, openai_costs
from finops_pipeline.resources import LangfuseApiResource
from finops_pipeline.schedules import daily_finops_job, daily_finops_schedule
from finops_pipeline.settings import FinopsSettings


def build_resources(settings: FinopsSettings, langfuse: LangfuseApiResource | None = None) -> dict:
    """Without `langfuse` (keys), the day is read from the blob export."""
    duckdb = DuckDBResource(database=str(settings.duckdb_path),
                            connection_config={"memory_limit": settings.duckdb_memory_limit})
    return {"settings": settings, "duckdb": duckdb, "langfuse": langfuse or LangfuseApiResource()}


ASSETS = [langfuse_generations, allocated_costs, finout_upload, openai_costs, anthropic_costs, cost_reconciliation]

defs = dg.Definitions(
    assets=ASSETS,
    jobs=[daily_finops_job],
    schedules=[daily_finops_schedule],
    resources=build_resources(FinopsSettings.from_env(), LangfuseApiResource.from_env()),
)
