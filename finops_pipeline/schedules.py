"""The daily job over the whole graph, and its schedule: every day at 02:00 UTC, materialise yesterday."""

import dagster as dg

daily_finops_job = dg.define_asset_job(
    "daily_finops_job",
    selection=dg.AssetSelection.all(),
    description="Extract, allocate, deliver and reconcile one UTC day of LLM spend.",
)

# The last partition is yesterday (end_offset=0), so a tick at 02:00 UTC runs the day that just ended.
daily_finops_schedule = dg.build_schedule_from_partitioned_job(
    daily_finops_job, hour_of_day=2, minute_of_hour=0, default_status=dg.DefaultScheduleStatus.RUNNING
)
