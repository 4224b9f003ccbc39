"""The Dagster code location of the months: the monthly report, its job, and the sensor that renders a month
after the daily runs that changed it (workspace.yaml loads it beside the daily location).

A location of its own because Dagster runs one partitions definition per run: a monthly asset beside the
daily ones would make `dagster asset materialize -m finops_pipeline.definitions --select '*' --partition DAY`
(a day of the whole graph) fail. Its dependencies on the daily assets cross the two locations: the UI draws
them, and the sensor reads them from the whole workspace.
"""

import dagster as dg

from finops_pipeline.assets.monthly_report import REPORT, build_monthly_report
from finops_pipeline.cost_basis import COST_BASIS
from finops_pipeline.definitions import build_resources
from finops_pipeline.settings import FinopsSettings

monthly_report_job = dg.define_asset_job(
    "monthly_report_job", selection=dg.AssetSelection.assets(REPORT),
    description="Render one month's report (partition: the month's first day). The sensor "
                "`monthly_report_automation` runs it after the daily runs of the month.")

monthly_report_automation = dg.AutomationConditionSensorDefinition(
    "monthly_report_automation", target=dg.AssetSelection.assets(REPORT), default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="Renders a month's report again once the daily runs that changed its days have finished "
                "(monthly_report's automation condition): the month in progress after each morning's schedule, a "
                "closed month until its last day has settled.")

_resources = build_resources(FinopsSettings.from_env())

defs = dg.Definitions(
    assets=[build_monthly_report(COST_BASIS)],
    jobs=[monthly_report_job],
    sensors=[monthly_report_automation],
    executor=dg.in_process_executor,
    resources={"settings": _resources["settings"], "duckdb": _resources["duckdb"]},
)
