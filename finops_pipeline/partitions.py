"""One partition = one UTC day. The last partition is the last complete day (yesterday).

Every check of a daily asset is a check of that day (`daily_check`): the UI, the asset health and
GraphQL show each day's own result, and re-running one day changes only that day's status.
"""

import os
import warnings
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import dagster as dg

from finops_pipeline.sources.export_listing import first_export_day

def _start_date() -> str:
    """FINOPS_START_DATE, else the 1st of the month that holds the day before the local Langfuse export's
    first day (so the UI's partition bars and metadata plots start near the data, not a week squeezed into
    two years, and the days just before the export are partitions that fail saying why), else 2025-01-01."""
    if os.environ.get("FINOPS_START_DATE"):
        return os.environ["FINOPS_START_DATE"]
    home = Path(os.environ.get("FINOPS_HOME") or ".finops").resolve()
    first = first_export_day(os.environ.get("FINOPS_LANGFUSE_EXPORT_DIR") or str(home / "langfuse-export"))
    return (first - timedelta(days=1)).replace(day=1).isoformat() if first else "2025-01-01"


START_DATE = _start_date()

daily_partitions = dg.DailyPartitionsDefinition(start_date=START_DATE, timezone="UTC", end_offset=0)

# Partitioned asset checks are what makes a check's result belong to its day; Dagster 1.13 ships them
# as a preview and warns on every import. The warning says nothing a user can act on: silence that one.
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec",
                        category=dg.PreviewWarning)


def daily_check(name: str, asset: str, description: str, blocking: bool = False) -> dg.AssetCheckSpec:
    """A check of `asset`, partitioned like it: each day's result is that day's. `blocking`: a result that
    fails with ERROR fails the step (after the materialization and the result are recorded), so the day's
    run is failed in the runs list, and nothing downstream runs on the day."""
    return dg.AssetCheckSpec(name, asset=asset, description=description, blocking=blocking,
                             partitions_def=daily_partitions)


def partition_day(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> date:
    return date.fromisoformat(context.partition_key)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The half-open UTC interval [start, end) of `day`."""
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    return start, start + timedelta(days=1)


# The monthly report: one partition per calendar month (UTC), the month in progress included, so that its
# provisional report exists from its first complete day. A month maps to its days in the daily assets.
monthly_partitions = dg.MonthlyPartitionsDefinition(start_date=START_DATE[:8] + "01", timezone="UTC", end_offset=1)


def monthly_check(name: str, asset: str, description: str) -> dg.AssetCheckSpec:
    """A check of `asset`, partitioned by month: each month's result is that month's."""
    return dg.AssetCheckSpec(name, asset=asset, description=description, partitions_def=monthly_partitions)
