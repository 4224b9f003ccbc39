"""`python -m finops_pipeline.demo`: write a sample week, materialise every day, print what finance sees."""

import argparse
import os
import sys
from pathlib import Path

import dagster as dg
import duckdb

from finops_pipeline.definitions import ASSETS, build_resources
from finops_pipeline.demo.sample_data import last_complete_days, write_sample
from finops_pipeline.demo.summary import print_summary
from finops_pipeline.settings import FinopsSettings


QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=7, help="how many complete days, ending yesterday (UTC)")
    parser.add_argument("--generations-per-day", type=int, default=8000)
    args = parser.parse_args()

    settings = FinopsSettings.from_env()
    days = last_complete_days(args.days)
    sample = write_sample(Path(settings.home), days, args.generations_per_day,
                          Path(settings.langfuse_export_dir), Path(settings.billing_dir))
    print(f"Wrote {sample.generations:,} generations for {days[0]} .. {days[-1]} to {settings.langfuse_export_dir}")
    print(f"and the OpenAI and Anthropic bills to {settings.billing_dir}\n")

    # Runs land in the Dagster instance `make dev` opens, so they show in the UI afterwards.
    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    checks: dict[str, list] = {}
    for day in days:
        result = dg.materialize(ASSETS, partition_key=day.isoformat(), resources=build_resources(settings),
                                instance=instance, raise_on_error=False, run_config=QUIET)
        checks[day.isoformat()] = result.get_asset_check_evaluations()
        status = "ok" if result.success else "FAILED"
        print(f"materialised {day}: run {result.run_id[:8]} {status}")
        if not result.success:
            return 1
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as conn:
        print_summary(conn, days, checks, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
