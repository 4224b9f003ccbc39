"""The Dagster code location of the days: the daily graph, its resources, schedule and sensors (the monthly report is
in a location of its own: report_definitions.py)."""

import dagster as dg

from finops_pipeline.assets.allocated_costs import allocated_costs
from finops_pipeline.assets.budget_status import build_budget_status
from finops_pipeline.assets.cost_anomalies import cost_anomalies
from finops_pipeline.assets.unit_economics import build_unit_economics
from finops_pipeline.assets.cost_reconciliation import FAILED_DAY, build_cost_reconciliation
from finops_pipeline.assets.finout_upload import build_finout_upload
from finops_pipeline.assets.focus_export import build_focus_export
from finops_pipeline.assets.langfuse_generations import langfuse_generations
from finops_pipeline.assets.provider_costs import anthropic_costs, openai_costs, other_provider_costs
from finops_pipeline.cost_basis import COST_BASIS
from finops_pipeline.resources import CostApiResource, LangfuseApiResource
from finops_pipeline.alerts import check_failure_alerts
from finops_pipeline.schedules import daily_finops_job, daily_finops_schedule, delivered_by_deadline, finout_deadline_sensor
from finops_pipeline.settings import FinopsSettings
from finops_pipeline.warehouse import Warehouse


def build_resources(settings: FinopsSettings, langfuse: LangfuseApiResource | None = None,
                    openai: CostApiResource | None = None, anthropic: CostApiResource | None = None) -> dict:
    """Without `langfuse` (keys), the day is read from the blob export; without an admin key in `openai`
    or `anthropic`, that provider's bill from its saved pages."""
    duckdb = Warehouse(database=settings.warehouse or str(settings.duckdb_path), data_path=settings.warehouse_data_path,
                       connection_config={"memory_limit": settings.duckdb_memory_limit})
    return {
        "settings": settings, "duckdb": duckdb, "langfuse": langfuse or LangfuseApiResource(),
        "openai_api": openai or CostApiResource.from_env("openai", {}),
        "anthropic_api": anthropic or CostApiResource.from_env("anthropic", {}),
    }


def build_assets(cost_basis: str = COST_BASIS) -> list[dg.AssetsDefinition]:
    """The graph; the delivery assets depend on the bills under the `invoice` cost basis."""
    return [langfuse_generations, allocated_costs, openai_costs, anthropic_costs, other_provider_costs,
            build_cost_reconciliation(cost_basis), build_finout_upload(cost_basis), build_focus_export(cost_basis),
            build_budget_status(cost_basis), cost_anomalies, build_unit_economics(cost_basis)]


def is_check_failure(error) -> bool:
    """Did a step fail (`error`: its SerializableErrorInfo) because a check of its day failed with ERROR, rather
    than because something broke? A blocking check, or the reconciliation of a settled day."""
    return error.cls_name == "DagsterAssetCheckFailedError" or (
        error.cls_name == "Failure" and FAILED_DAY in error.message)


ASSETS = build_assets()
CHECKS = [delivered_by_deadline]  # checks defined apart from their asset

defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=CHECKS,
    # A run's steps run one after another in its process: they share the warehouse pool anyway, and a
    # process per step would cost more than the steps of a day.
    executor=dg.in_process_executor,
    jobs=[daily_finops_job],
    schedules=[daily_finops_schedule],
    sensors=[check_failure_alerts, finout_deadline_sensor],
    resources=build_resources(FinopsSettings.from_env(), LangfuseApiResource.from_env(),
                              CostApiResource.from_env("openai"), CostApiResource.from_env("anthropic")),
)
