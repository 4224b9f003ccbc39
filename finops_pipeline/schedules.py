"""The daily job over the whole graph, and its schedule.

Every day at 02:00 UTC: the whole graph for yesterday, and the bills and reconciliation of the
`settling_days` days before it again, since providers revise recent bills; the last of those days
settles with this run, so its gap check can fail with ERROR for the first time.
"""

from datetime import timedelta

import dagster as dg

from finops_pipeline.cost_basis import COST_BASIS
from finops_pipeline.settings import FinopsSettings

daily_finops_job = dg.define_asset_job(
    "daily_finops_job",
    selection=dg.AssetSelection.all(),
    description="Extract, allocate, deliver and reconcile one UTC day of LLM spend.",
)

BILLING_ASSETS = ["openai_costs", "anthropic_costs", "other_provider_costs", "cost_reconciliation"]
# On the invoice basis the delivered files follow the bills, so they are delivered again too.
SETTLING_ASSETS = BILLING_ASSETS + (["finout_upload", "focus_export"] if COST_BASIS == "invoice" else [])


@dg.schedule(
    job=daily_finops_job,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="02:00 UTC: yesterday in full; the bills and reconciliation of the days still settling.",
)
def daily_finops_schedule(context: dg.ScheduleEvaluationContext, settings: FinopsSettings):
    yesterday = context.scheduled_execution_time.date() - timedelta(days=1)
    # Run keys make a re-evaluated tick launch nothing twice.
    yield dg.RunRequest(run_key=yesterday.isoformat(), partition_key=yesterday.isoformat())
    for back in range(1, settings.settling_days + 1):
        day = (yesterday - timedelta(days=back)).isoformat()
        yield dg.RunRequest(run_key=f"{day} billing", partition_key=day,
                            asset_selection=[dg.AssetKey(key) for key in SETTLING_ASSETS],
                            tags={"finops/rerun": "settling bills"})
