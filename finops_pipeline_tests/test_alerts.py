"""Alerts for failed checks, on the instance `make dev` creates (SQLite, run-sharded event log), to a local
webhook receiver; the delivery deadline of yesterday's Finout file; the schedule's ticks at chosen times."""

import json
import os
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pytest
import time_machine

from finops_pipeline.alerts import AlertCursor, check_failure_alerts
from finops_pipeline.definitions import CHECKS, defs
from finops_pipeline.schedules import DELIVERY_CHECK, daily_finops_schedule, finout_deadline_sensor
from finops_pipeline_tests.conftest import (
    DAY,
    cover_day,
    generation,
    materialize_day,
    replace_settings,
    write_anthropic_bill,
    write_openai_bill,
)
from finops_pipeline_tests.webhook_double import Receiver

GAP = "billed_vs_traced_gap"


@pytest.fixture
def receiver():
    with Receiver() as server:
        yield server


def failing_day(settings, instance, day: date = DAY, billed: float = 3.0) -> None:
    """`day` with two failed checks: OpenAI billed above the $2.00 traced (ERROR when 50% over), one
    unpriced call (WARN). The run fails: the gap check is blocking."""
    stamp = f"{day} 09:00:00"
    cover_day(settings, {9: [generation(f"a-{day}", stamp, cost=2.0),
                             generation(f"u-{day}", stamp, model="acme-ft", cost=None)]}, day=day)
    write_openai_bill(Path(settings.billing_dir), day, {"gpt-4o-2024-08-06, input": billed})
    write_anthropic_bill(Path(settings.billing_dir), day, {})
    result = materialize_day(settings, day, instance=instance)
    assert not result.success and {e.check_name for e in result.get_asset_check_evaluations() if not e.passed} == {
        GAP, "unpriced_generations"}


def tick(instance, settings, cursor=None, sensor=check_failure_alerts):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"settings": settings},
                                      definitions=defs)
    sensor.evaluate_tick(context)
    return context.cursor


def test_alerts_keep_coming_on_the_instance_make_dev_creates(settings, settled, instance, receiver):
    assert type(instance.event_log_storage).__name__ == "SqliteEventLogStorage"  # run-sharded, as under make dev
    failing_day(settings, instance)
    webhook = replace_settings(settings, alert_webhook_url=receiver.webhook_url,
                               dagster_url="http://dagster.internal:3000")
    cursor = tick(instance, webhook)
    assert len(receiver.messages) == 2
    [gap] = [m for m in receiver.messages if GAP in m]
    assert gap.startswith(f"ERROR: cost_reconciliation {DAY}, check {GAP} failed: "
                          "openai: billed $3.00 vs traced $2.00, gap +1.00 USD (+33.3%) ERROR")
    [run_id] = {r.dagster_run.run_id for r in instance.get_run_records()}
    assert f"<http://dagster.internal:3000/runs/{run_id}|run {run_id[:8]}>" in gap
    [unpriced] = [m for m in receiver.messages if "unpriced_generations" in m]
    assert unpriced.startswith(f"WARN: langfuse_generations {DAY}, check unpriced_generations failed: 1 generation")

    for _ in range(3):  # however often it ticks, nothing is sent twice
        cursor = tick(instance, webhook, cursor)
    assert len(receiver.messages) == 2

    # The daemon restarts: a new instance object over the same storage, the cursor as the instance kept it.
    with dg.DagsterInstance.from_config(instance.root_directory) as restarted:
        cursor = tick(restarted, webhook, cursor)
        assert len(receiver.messages) == 2

        # Another day fails between ticks: exactly its alerts, once, naming that day.
        second = DAY - timedelta(days=1)
        failing_day(settings, restarted, second, billed=2.5)
        cursor = tick(restarted, webhook, cursor)
        cursor = tick(restarted, webhook, cursor)
        new = receiver.messages[2:]
        assert len(new) == 2 and all(f" {second}, check " in m for m in new)
        assert any(m.startswith(f"ERROR: cost_reconciliation {second}, check {GAP} failed: openai: billed $2.50") for m in new)

        # The first day re-run, failing again: a new evaluation, alerted again.
        failing_day(settings, restarted)
        tick(restarted, webhook, cursor)
        assert len(receiver.messages) == 6 and all(f" {DAY}, check " in m for m in receiver.messages[4:])


def test_an_evaluation_still_running_is_alerted_when_its_result_comes(settings, settled, instance, receiver):
    """Execution rows are numbered when a run plans its checks: a run that planned first and finishes last
    must not be passed over by the watermark."""
    failing_day(settings, instance)
    webhook = replace_settings(settings, alert_webhook_url=receiver.webhook_url)
    cursor = tick(instance, webhook)
    assert len(receiver.messages) == 2
    # A run that has planned its checks (as a run does when it is created) and not finished: its rows wait.
    run = instance.create_run_for_job(defs.resolve_job_def("daily_finops_job"), run_config={},
                                      tags={"dagster/partition": str(DAY)})
    second = DAY - timedelta(days=1)
    failing_day(settings, instance, second)  # finishes while the planned rows wait
    state = AlertCursor.load(tick(instance, webhook, cursor))
    assert len(receiver.messages) == 4 and all(f" {second}, check " in m for m in receiver.messages[2:])
    key = dg.AssetCheckKey(dg.AssetKey("cost_reconciliation"), GAP)
    planned = min(r.id for r in instance.event_log_storage.get_asset_check_execution_history(key, limit=10)
                  if r.status.value == "PLANNED")
    assert state.watermark < planned and state.handled  # the later rows are handled above it
    state = AlertCursor.load(tick(instance, webhook, state.dump()))
    assert len(receiver.messages) == 4  # nothing sent twice while it waits
    instance.report_run_failed(run)  # its run ends without a result: the watermark moves on
    state = AlertCursor.load(tick(instance, webhook, state.dump()))
    assert state.watermark > planned and not state.handled and len(receiver.messages) == 4


def test_a_webhook_that_is_down_loses_nothing_and_the_url_stays_secret(settings, settled, instance, receiver, capsys):
    failing_day(settings, instance)
    webhook = replace_settings(settings, alert_webhook_url=receiver.webhook_url)
    receiver.status = 503
    capsys.readouterr()
    cursor = tick(instance, webhook)
    log = capsys.readouterr().err  # the sensor's log, as the daemon writes it
    assert receiver.messages == [] and len(json.loads(cursor)["pending"]) == 2
    assert "webhook down (HTTP 503 after 3 attempts): 2 alerts kept" in log
    assert "very-secret-token" not in log and "very-secret-token" not in cursor

    receiver.status = 200
    cursor = tick(instance, webhook, cursor)
    assert len(receiver.messages) == 2 and json.loads(cursor)["pending"] == []
    tick(instance, webhook, cursor)
    assert len(receiver.messages) == 2


def test_without_a_webhook_alerts_go_to_the_log(settings, settled, instance, capsys):
    failing_day(settings, instance)
    capsys.readouterr()
    cursor = tick(instance, settings)
    assert f"ERROR: cost_reconciliation {DAY}, check {GAP} failed" in capsys.readouterr().err
    assert json.loads(cursor)["pending"] == []


def deadline_tick(instance, at: datetime, cursor=None):
    with time_machine.travel(at, tick=False):
        context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
        skip = finout_deadline_sensor.evaluate_tick(context).skip_message
    return context.cursor, skip


def delivery_statuses(instance) -> dict[str, str]:
    """Each day's latest result of the delivery check, as the instance holds it."""
    key = dg.AssetCheckKey(dg.AssetKey("finout_upload"), DELIVERY_CHECK)
    latest: dict[str, str] = {}
    for row in instance.event_log_storage.get_asset_check_execution_history(key, limit=100):
        latest.setdefault(row.partition, row.status.value)
    return latest


def test_a_missed_day_fails_its_delivery_check_at_the_deadline_and_alerts(settings, instance, receiver):
    cursor, skip = deadline_tick(instance, datetime(2026, 11, 22, 5, 59, tzinfo=timezone.utc))
    assert delivery_statuses(instance) == {"2026-11-20": "FAILED"}  # the last day due before 06:00
    cursor, skip = deadline_tick(instance, datetime(2026, 11, 22, 6, 1, tzinfo=timezone.utc), cursor)
    assert delivery_statuses(instance) == {"2026-11-20": "FAILED", str(DAY): "FAILED"}
    cursor, skip = deadline_tick(instance, datetime(2026, 11, 22, 9, 0, tzinfo=timezone.utc), cursor)
    assert "already judged" in skip and len(delivery_statuses(instance)) == 2

    webhook = replace_settings(settings, alert_webhook_url=receiver.webhook_url)
    tick(instance, webhook)
    day_alert = [m for m in receiver.messages if f" {DAY}, check" in m]
    assert day_alert == [f"ERROR: finout_upload {DAY}, check {DELIVERY_CHECK} failed: No Finout file delivered for "
                         f"{DAY} by its deadline, 2026-11-22 06:00 UTC: the day's run failed or never ran. Look at "
                         "the day's runs, fix, and re-run the day. <http://localhost:3000/assets/finout_upload"
                         "?view=checks|finout_upload checks>"]

    # Delivered late: the day's run judges its delivery again, and passes, saying how late.
    cover_day(settings, {9: [generation("a", "2026-11-21 09:00:00")]})
    with time_machine.travel(datetime(2026, 11, 22, 7, 30, tzinfo=timezone.utc), tick=True):
        result = materialize_day(settings, instance=instance, checks=CHECKS,
                                 selection=["langfuse_generations", "allocated_costs", "finout_upload"])
    [judged] = [e for e in result.get_asset_check_evaluations() if e.check_name == DELIVERY_CHECK]
    assert judged.passed and judged.partition == str(DAY)
    assert judged.description.startswith("Delivered 2026-11-22 07:30 UTC, 1.5 h after its deadline")
    assert delivery_statuses(instance)[str(DAY)] == "SUCCEEDED"

    # The next day was delivered before its deadline: judged and passed, nothing alerted.
    with time_machine.travel(datetime(2026, 11, 23, 3, 0, tzinfo=timezone.utc), tick=True):
        cover_day(settings, {9: [generation("b", "2026-11-22 09:00:00")]}, day=DAY + timedelta(days=1))
        assert materialize_day(settings, DAY + timedelta(days=1), instance=instance,
                               selection=["langfuse_generations", "allocated_costs", "finout_upload"]).success
    deadline_tick(instance, datetime(2026, 11, 23, 6, 5, tzinfo=timezone.utc), cursor)
    assert delivery_statuses(instance)["2026-11-22"] == "SUCCEEDED"


@pytest.mark.parametrize(("lookback", "settling", "days"), [(3, 2, 4), (1, 2, 3), (0, 0, 1)])
def test_the_daily_tick_runs_yesterday_and_the_days_that_may_still_change(settings, lookback, settling, days):
    for at in (datetime(2026, 11, 22, 2, tzinfo=timezone.utc), datetime(2026, 12, 1, 2, tzinfo=timezone.utc)):
        context = dg.build_schedule_context(
            scheduled_execution_time=at, repository_def=defs.get_repository_def(),
            resources={"settings": replace_settings(settings, lookback_days=lookback, settling_days=settling)})
        requests = list(daily_finops_schedule.evaluate_tick(context).run_requests)
        yesterday = at.date() - timedelta(days=1)
        assert [r.partition_key for r in requests] == [(yesterday - timedelta(days=n)).isoformat() for n in range(days)]
        assert [r.run_key for r in requests] == [r.partition_key for r in requests]  # one run per day and tick
        assert all(r.asset_selection is None for r in requests)  # the whole graph: late data reaches the file


def test_the_schedule_time_and_delivery_deadline_are_settings():
    code = ("from datetime import date; from finops_pipeline.schedules import daily_finops_schedule as s, deadline_of; "
            "print(s.cron_schedule, s.execution_timezone, deadline_of(date(2026, 11, 21)).isoformat())")
    env = {**os.environ, "FINOPS_SCHEDULE_TIME": "05:30", "FINOPS_FRESHNESS_DEADLINE": "09:00"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.stdout.split() == ["30", "5", "*", "*", "*", "UTC", "2026-11-22T09:00:00+00:00"], run.stderr[-500:]
    bad = subprocess.run([sys.executable, "-c", code], env={**env, "FINOPS_SCHEDULE_TIME": "25:00"},
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "FINOPS_SCHEDULE_TIME must be a UTC time HH:MM, got '25:00'" in bad.stderr
