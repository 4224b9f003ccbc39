"""One partition = one UTC day. The last partition is the last complete day (yesterday)."""

import os
from datetime import date, datetime, timedelta, timezone

import dagster as dg

START_DATE = os.environ.get("FINOPS_START_DATE", "2025-01-01")

daily_partitions = dg.DailyPartitionsDefinition(start_date=START_DATE, timezone="UTC", end_offset=0)


def partition_day(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> date:
    return date.fromisoformat(context.partition_key)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The half-open UTC interval [start, end) of `day`."""
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    return start, start + timedelta(days=1)
