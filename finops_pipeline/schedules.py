"""The daily job over the whole graph, its schedule, and the freshness checks that notice a missed day.

Every day at `FINOPS_SCHEDULE_TIME` (default 02:00 UTC): yesterday, and again the days before it that
may still change: `lookback_days` for Langfuse data that arrives late, `settling_days` for bills that
providers revise (whichever is longer). A re-run replaces each day whole, so running a day again is safe.
"""

import os
import re
from datetime import timedelta

import dagster as dg

from finops_pipeline.settings import FinopsSettings


def _hh_mm(variable: str, default: str) -> tuple[int, int]:
    value = os.environ.get(variable, default).strip()
    match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", value)
    if not match:
        raise ValueError(f"{variable} must be a UTC time HH:MM, got {value!r}")
    return int(match.group(1)), int(match.group(2))


SCHEDULE_HOUR, SCHEDULE_MINUTE = _hh_mm("FINOPS_SCHEDULE_TIME", "02:00")
DEADLINE_HOUR, DEADLINE_MINUTE = _hh_mm("FINOPS_FRESHNESS_DEADLINE", "06:00")

daily_finops_job = dg.define_asset_job(
    "daily_finops_job",
    selection=dg.AssetSelection.all(),
    description="Extract, allocate, deliver and reconcile one UTC day of LLM spend.",
)


@dg.schedule(
    job=daily_finops_job,
    cron_schedule=f"{SCHEDULE_MINUTE} {SCHEDULE_HOUR} * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Yesterday, and again the days before it whose Langfuse data or bills may still change.",
)
def daily_finops_schedule(context: dg.ScheduleEvaluationContext, settings: FinopsSettings):
    yesterday = context.scheduled_execution_time.date() - timedelta(days=1)
    for back in range(max(settings.lookback_days, settings.settling_days) + 1):
        day = (yesterday - timedelta(days=back)).isoformat()
        # The run key makes a tick that is evaluated twice launch each day once.
        yield dg.RunRequest(run_key=day, partition_key=day,
                            tags={"finops/run": "daily" if back == 0 else "lookback"})


# Yesterday's Finout file must exist by the deadline; the failed check goes out as an alert like any other.
freshness_checks = dg.build_time_partition_freshness_checks(
    assets=["finout_upload"], deadline_cron=f"{DEADLINE_MINUTE} {DEADLINE_HOUR} * * *", timezone="UTC",
    severity=dg.AssetCheckSeverity.ERROR,
)
freshness_sensor = dg.build_sensor_for_freshness_checks(
    freshness_checks=freshness_checks, default_status=dg.DefaultSensorStatus.RUNNING,
)
