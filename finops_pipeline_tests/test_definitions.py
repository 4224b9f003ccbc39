"""The code location as Dagster and its users see it."""

import os
import subprocess
import sys
from pathlib import Path
from datetime import datetime

import dagster as dg

from finops_pipeline.definitions import defs
from finops_pipeline.report_definitions import defs as report_defs
from finops_pipeline.demo.sample_data import write_export_file
from finops_pipeline.schedules import daily_finops_schedule

EXPECTED_ASSETS = {"langfuse_generations", "allocated_costs", "finout_upload", "openai_costs", "anthropic_costs",
                   "other_provider_costs", "cost_reconciliation", "focus_export", "budget_status", "cost_anomalies", "unit_economics"}


def test_dagster_definitions_validate(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "FINOPS_HOME": str(tmp_path / "finops")}
    run = subprocess.run([os.path.join(os.path.dirname(sys.executable), "dagster"), "definitions", "validate",
                          "-w", "workspace.yaml"], cwd=Path(__file__).resolve().parent.parent, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    for location in ("finops_pipeline.definitions", "finops_pipeline.report_definitions"):
        assert f"Validation successful for code location {location}." in run.stderr + run.stdout


def test_every_asset_is_described_grouped_kinded_and_daily():
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == EXPECTED_ASSETS
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description and node.group_name != "default" and node.kinds, key
        assert node.partitions_def.timezone == "UTC", key


def test_the_reports_location_holds_the_monthly_report_after_the_daily_assets():
    """A location of its own, so that a day of the whole daily graph (`--select '*' --partition DAY`) runs."""
    graph = report_defs.resolve_asset_graph()
    report = graph.get(dg.AssetKey("monthly_report"))
    assert report.description and report.group_name == "reports" and report.kinds == {"html"}
    assert isinstance(report.partitions_def, dg.MonthlyPartitionsDefinition) and report.partitions_def.timezone == "UTC"
    assert report.partitions_def.get_partition_keys(datetime(2026, 12, 1, 8))[-1] == "2026-12-01"  # the month in progress
    assert {p.to_user_string() for p in report.parent_keys} == {
        "finout_upload", "unit_economics", "budget_status", "cost_anomalies", "cost_reconciliation"}
    assert {p.to_user_string() for p in report.parent_keys} <= EXPECTED_ASSETS
    [sensor] = report_defs.sensors
    assert sensor.name == "monthly_report_automation" and sensor.default_status == dg.DefaultSensorStatus.RUNNING
    [check] = graph.asset_check_keys
    assert check.name == "report_matches_delivery" and graph.get(check).partitions_def == report.partitions_def


def test_blocking_conservation_check_and_lineage():
    graph = defs.resolve_asset_graph()
    parents = {k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys} for k in graph.get_all_asset_keys()}
    assert parents["allocated_costs"] == {"langfuse_generations"}
    assert parents["finout_upload"] == {"allocated_costs"}
    assert parents["cost_reconciliation"] == {"allocated_costs", "openai_costs", "anthropic_costs", "other_provider_costs"}
    specs = {s.name: s for s in defs.get_assets_def("allocated_costs").check_specs}
    assert specs["cost_conserved"].blocking


def test_schedule_runs_daily_at_two_utc():
    schedule = daily_finops_schedule
    assert schedule in defs.schedules
    assert schedule.cron_schedule == "0 2 * * *" and schedule.execution_timezone == "UTC"
    assert schedule.job_name == "daily_finops_job"
    # what each tick launches: test_reconciliation.py::test_the_daily_tick_re_runs_the_bills_of_the_settling_days


def test_alerts_and_the_delivery_deadline_run_by_default():
    sensors = {s.name: s for s in defs.sensors}
    assert set(sensors) == {"check_failure_alerts", "finout_deadline_sensor"}
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in sensors.values())
    [check] = [k for c in defs.asset_checks for k in c.check_keys]
    assert (check.asset_key.to_user_string(), check.name) == ("finout_upload", "delivered_by_deadline")


def test_every_check_of_a_daily_asset_is_a_check_of_its_day():
    graph = defs.resolve_asset_graph()
    keys = graph.asset_check_keys
    assert len(keys) == 12
    for key in keys:
        assert graph.get(key).partitions_def == graph.get(key.asset_key).partitions_def, key
    # the checks that fail with ERROR fail the day's run (the reconciliation's fails its partition too, see
    # test_downstream.py): the day shows failed in the runs list
    blocking = {k.name for k in keys if graph.get(k).blocking}
    assert blocking == {"extraction_complete", "cost_conserved", "delivered_cost_conserved", "focus_cost_conserved"}


def first_partition(env: dict) -> str:
    code = "from finops_pipeline.partitions import daily_partitions as p; print(p.start.date())"
    run = subprocess.run([sys.executable, "-c", code], env={k: v for k, v in {**os.environ, **env}.items() if v is not None},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout.strip()


def test_the_first_partition_is_where_the_data_starts_unless_set(tmp_path):
    """The UI draws partitions from the first one: a default two years back squeezes a week into a sliver."""
    home = tmp_path / "finops"
    assert first_partition({"FINOPS_HOME": str(home), "FINOPS_START_DATE": None}) == "2025-01-01"  # no export yet
    export = home / "langfuse-export"
    write_export_file(export, datetime(2026, 11, 21, 0), datetime(2026, 11, 21, 1), [])
    write_export_file(export, datetime(2026, 11, 21, 1), datetime(2026, 11, 21, 2), [])
    # the 1st of the month of the day before the export begins: the days just before it fail saying why
    assert first_partition({"FINOPS_HOME": str(home), "FINOPS_START_DATE": None}) == "2026-11-01"
    assert first_partition({"FINOPS_HOME": str(home), "FINOPS_START_DATE": "2026-01-01"}) == "2026-01-01"
    # an export without manifests (Langfuse before v3.213): the day of its oldest file's name
    other = tmp_path / "old-export"
    write_export_file(other, datetime(2025, 5, 31, 12), datetime(2025, 6, 1, 12), [], manifest=False)
    assert first_partition({"FINOPS_HOME": str(home), "FINOPS_LANGFUSE_EXPORT_DIR": str(other),
                            "FINOPS_START_DATE": None}) == "2025-05-01"


def test_a_lakehouse_named_where_its_extensions_are_not_installed_fails_at_load_saying_what_to_install():
    """.venv has DuckDB 2 and no DuckLake: the setting is refused when the code loads, not mid-run."""
    import pytest

    from finops_pipeline.settings import FinopsSettings

    with pytest.raises(ValueError, match="install the `lakehouse` extra"):
        FinopsSettings.from_env({"FINOPS_HOME": "/tmp/x", "FINOPS_WAREHOUSE": "ducklake:postgres:host=db dbname=finops"})
