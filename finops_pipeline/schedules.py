"""The daily job over the whole graph, its schedule, and the check that notices a missed day.

Every day at `FINOPS_SCHEDULE_TIME` (default 02:00 UTC): yesterday, and again the days before it that
may still change: `lookback_days` for Langfuse data that arrives late, `settling_days` for bills that
providers revise (whichever is longer). A re-run replaces each day whole, so running a day again is safe.
"""

import os
import re
from datetime import date, datetime, time, timedelta, timezone

import dagster as dg

from finops_pipeline.partitions import daily_partitions, partition_day
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


DELIVERY_CHECK = "delivered_by_deadline"
FINOUT = dg.AssetKey("finout_upload")


def deadline_of(day: date) -> datetime:
    """When `day`'s Finout file must be there: FINOPS_FRESHNESS_DEADLINE (UTC) on the next day."""
    return datetime.combine(day + timedelta(days=1), time(DEADLINE_HOUR, DEADLINE_MINUTE), timezone.utc)


def delivery_result(instance: dg.DagsterInstance, day: date) -> dg.AssetCheckResult:
    """Passed when the day has a delivery in `instance` (saying when, against its deadline); else ERROR."""
    deadline = deadline_of(day)
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=FINOUT, asset_partitions=[day.isoformat()]), limit=1).records
    if not records:
        return dg.AssetCheckResult(
            asset_key=FINOUT, check_name=DELIVERY_CHECK, passed=False, severity=dg.AssetCheckSeverity.ERROR,
            description=f"No Finout file delivered for {day} by its deadline, {deadline:%Y-%m-%d %H:%M} UTC: the "
                        "day's run failed or never ran. Look at the day's runs, fix, and re-run the day.",
            metadata={"deadline": deadline.isoformat()})
    delivered = datetime.fromtimestamp(records[0].timestamp, timezone.utc)
    late_hours = (delivered - deadline).total_seconds() / 3600
    late = ("before" if late_hours <= 0 else f"{late_hours:.1f} h after" if late_hours < 48
            else f"{late_hours / 24:.0f} days after (a backfill or a late re-run)")
    return dg.AssetCheckResult(
        asset_key=FINOUT, check_name=DELIVERY_CHECK, passed=True,
        description=f"Delivered {delivered:%Y-%m-%d %H:%M} UTC, {late} its deadline ({deadline:%Y-%m-%d %H:%M} UTC).",
        metadata={"delivered_at": delivered.isoformat(), "deadline": deadline.isoformat(),
                  "hours_late": round(max(late_hours, 0.0), 2)})


@dg.asset_check(
    asset=FINOUT, name=DELIVERY_CHECK, partitions_def=daily_partitions,
    description=f"The day's Finout file was delivered. Judged after every delivery of the day, and for "
                f"yesterday at FINOPS_FRESHNESS_DEADLINE ({DEADLINE_HOUR:02d}:{DEADLINE_MINUTE:02d} UTC) by "
                "the sensor `finout_deadline_sensor`, which fails it with ERROR when the file is missing.",
)
def delivered_by_deadline(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    return delivery_result(context.instance, partition_day(context))


@dg.sensor(
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Once yesterday's deadline (FINOPS_FRESHNESS_DEADLINE, UTC) has passed, judges whether its Finout "
                "file was delivered: a missed day fails `delivered_by_deadline` for that day with ERROR (alerted "
                "like any failed check). No run: the result is recorded on the instance.",
)
def finout_deadline_sensor(context: dg.SensorEvaluationContext):
    now = datetime.now(timezone.utc)
    due = now.date() - timedelta(days=1 if now >= deadline_of(now.date() - timedelta(days=1)) else 2)
    if context.cursor and date.fromisoformat(context.cursor) >= due:
        return dg.SkipReason(f"{due} already judged; the next deadline is {deadline_of(due + timedelta(days=1)):%Y-%m-%d %H:%M} UTC")
    context.update_cursor(due.isoformat())
    if due < date.fromisoformat(daily_partitions.start.strftime("%Y-%m-%d")):
        return dg.SkipReason(f"{due} is before the first partition")
    result = delivery_result(context.instance, due)
    # What the check records when a run judges it, for that day; no run to record it, so the instance does.
    context.instance.report_runless_asset_event(dg.AssetCheckEvaluation(
        asset_key=FINOUT, check_name=DELIVERY_CHECK, passed=result.passed, severity=result.severity,
        description=result.description, metadata=result.metadata, partition=due.isoformat()))
    return dg.SkipReason(f"{due} judged: {result.description}")
