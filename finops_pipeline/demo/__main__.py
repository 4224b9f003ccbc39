"""`python -m finops_pipeline.demo`: write five weeks of sample data and a budgets file, materialise every day,
print what finance sees."""

import argparse
import os
import sys
from pathlib import Path

import dagster as dg

from finops_pipeline.definitions import ASSETS, CHECKS, build_resources, is_check_failure
from finops_pipeline.demo.sample_data import last_complete_days, write_sample
from finops_pipeline.demo.budgets_file import write_demo_budgets
from finops_pipeline.demo.business_files import write_business_files
from finops_pipeline.demo.summary import print_controls, print_economics, print_report, print_summary
from finops_pipeline.assets.monthly_report import build_monthly_report
from finops_pipeline.cost_basis import COST_BASIS
from finops_pipeline.report_definitions import monthly_report_job
from finops_pipeline.schedules import daily_finops_job
from finops_pipeline.settings import FinopsSettings
from finops_pipeline.warehouse import connect

# The summary says what each day's checks found: Dagster's own log (a failed check's traceback among it)
# would say it again, less clearly. Anything else that fails is printed below.
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=35, help="how many complete days, ending yesterday (UTC)")
    parser.add_argument("--generations-per-day", type=int, default=3000, help="on a weekday; weekends make fewer")
    args = parser.parse_args()

    settings = FinopsSettings.from_env()
    days = last_complete_days(args.days)
    sample = write_sample(Path(settings.home), days, args.generations_per_day,
                          Path(settings.langfuse_export_dir), Path(settings.billing_dir))
    print(f"Wrote {sample.generations:,} generations for {days[0]} .. {days[-1]} to {settings.langfuse_export_dir}")
    print(f"and the OpenAI and Anthropic bills to {settings.billing_dir}")
    print(write_demo_budgets(settings.budgets_path, sample))
    print(write_business_files(settings.revenue_path, settings.outcomes_path, sample) + "\n")

    # Runs land in the Dagster instance `make dev` opens, so they show in the UI afterwards.
    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    # The daily job, as the schedule runs it, on the files just written (whatever keys the environment holds).
    defs = dg.Definitions(assets=ASSETS, asset_checks=CHECKS, jobs=[daily_finops_job],
                          resources=build_resources(settings))
    job = defs.resolve_job_def(daily_finops_job.name)
    checks: dict[str, list] = {}
    for day in days:
        result = job.execute_in_process(partition_key=day.isoformat(), instance=instance, raise_on_error=False,
                                        run_config=QUIET)
        checks[day.isoformat()] = result.get_asset_check_evaluations()
        errors = [e.event_specific_data.error for e in result.get_step_failure_events()]
        if result.success:
            status = "succeeded"
        elif all(is_check_failure(error) for error in errors):
            failed = sorted(f"{e.asset_key.to_user_string()} {e.check_name}" for e in checks[day.isoformat()]
                            if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR)
            status = f"FAILED: check {', '.join(failed)} (ERROR; see below)"
        else:
            print(f"materialised {day}: run {result.run_id[:8]} FAILED")
            for error in errors:
                print(f"  {error.message.strip()}")
            return 1
        print(f"materialised {day}: run {result.run_id[:8]} {status}")
    # The month of the last day, as the reports' code location renders it after the daily runs
    months = dg.Definitions(assets=[build_monthly_report(COST_BASIS)], jobs=[monthly_report_job],
                            resources=build_resources(settings))
    report = months.resolve_job_def(monthly_report_job.name).execute_in_process(
        partition_key=days[-1].replace(day=1).isoformat(), instance=instance, raise_on_error=False, run_config=QUIET)
    if not report.success:
        for error in (e.event_specific_data.error for e in report.get_step_failure_events()):
            print(f"monthly report FAILED: {error.message.strip()}")
        return 1
    with connect(build_resources(settings)["duckdb"]) as conn:  # the DuckDB file, or the lakehouse when set
        print_summary(conn, days[-7:], checks, settings)
        print_controls(conn, days[-1], checks[days[-1].isoformat()])
        print_economics(conn, days[-1], settings.margin_warn_pct)
    print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
