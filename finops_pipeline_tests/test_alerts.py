"""Alerts for failed checks, to a local HTTP receiver; the freshness check of yesterday's delivery; the
schedule's ticks at chosen times."""

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pytest
import time_machine

from finops_pipeline.alerts import check_failure_alerts
from finops_pipeline.definitions import build_assets, build_resources, defs
from finops_pipeline.schedules import daily_finops_schedule, freshness_checks
from finops_pipeline_tests.conftest import (
    DAY,
    cover_day,
    generation,
    materialize_day,
    replace_settings,
    write_anthropic_bill,
    write_openai_bill,
)
from finops_pipeline_tests.http_double import HttpDouble

SECRET_PATH = "/services/T000/B000/very-secret-token"


class Receiver(HttpDouble):
    """A Slack-compatible incoming webhook: answers `status` (200 unless a test takes it down)."""

    def __init__(self):
        super().__init__()
        self.status = 200
        self.messages: list[str] = []

    def respond(self, path, query, headers):
        if self.status == 200 and path == SECRET_PATH:
            self.messages.append(json.loads(query["body"][0])["text"])
            return 200, {"Content-Type": "text/plain"}, b"ok"
        return self.status, {"Content-Type": "text/plain"}, b"no_service"


@pytest.fixture
def receiver():
    with Receiver() as server:
        yield server


def failing_day(settings, instance) -> None:
    """DAY with two failed checks: OpenAI billed 50% above traced (ERROR), one unpriced call (WARN)."""
    cover_day(settings, {9: [generation("a", "2026-11-21 09:00:00", cost=2.0),
                             generation("u", "2026-11-21 09:01:00", model="acme-ft", cost=None)]})
    write_openai_bill(Path(settings.billing_dir), DAY, {"gpt-4o-2024-08-06, input": 3.0})
    write_anthropic_bill(Path(settings.billing_dir), DAY, {})
    assert materialize_day(settings, instance=instance).success


def tick(instance, settings, cursor=None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"settings": settings})
    check_failure_alerts.evaluate_tick(context)
    return context.cursor


def test_each_failed_check_is_sent_once_with_asset_day_numbers_and_link(settings, settled, receiver):
    instance = dg.DagsterInstance.ephemeral()
    failing_day(settings, instance)
    webhook = replace_settings(settings, alert_webhook_url=receiver.url + SECRET_PATH,
                               dagster_url="http://dagster.internal:3000")
    cursor = tick(instance, webhook)
    assert len(receiver.messages) == 2
    [gap] = [m for m in receiver.messages if "billed_vs_traced_gap" in m]
    assert gap.startswith("ERROR: cost_reconciliation 2026-11-21, check billed_vs_traced_gap failed: "
                          "openai: billed $3.00 vs traced $2.00, gap +1.00 USD (+33.3%) ERROR")
    [run_id] = {r.dagster_run.run_id for r in instance.get_run_records()}
    assert f"<http://dagster.internal:3000/runs/{run_id}|run {run_id[:8]}>" in gap
    [unpriced] = [m for m in receiver.messages if "unpriced_generations" in m]
    assert unpriced.startswith("WARN: langfuse_generations 2026-11-21, check unpriced_generations failed: 1 generation")

    for _ in range(3):  # however often it ticks, nothing is sent twice
        cursor = tick(instance, webhook, cursor)
    assert len(receiver.messages) == 2

    # a new failure of the same check on a re-run is a new alert
    assert materialize_day(settings, instance=instance).success
    tick(instance, webhook, cursor)
    assert len(receiver.messages) == 4


def test_a_webhook_that_is_down_loses_nothing_and_the_url_stays_secret(settings, settled, receiver, capsys):
    instance = dg.DagsterInstance.ephemeral()
    failing_day(settings, instance)
    webhook = replace_settings(settings, alert_webhook_url=receiver.url + SECRET_PATH)
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


def test_without_a_webhook_alerts_go_to_the_log(settings, settled, capsys):
    instance = dg.DagsterInstance.ephemeral()
    failing_day(settings, instance)
    capsys.readouterr()
    cursor = tick(instance, settings)
    assert "ERROR: cost_reconciliation 2026-11-21, check billed_vs_traced_gap failed" in capsys.readouterr().err
    assert json.loads(cursor)["pending"] == []


def run_freshness_check(settings, instance, at: datetime) -> dg.ExecuteInProcessResult:
    with time_machine.travel(at, tick=True):
        return dg.materialize([*build_assets(), *freshness_checks], instance=instance,
                              selection=dg.AssetSelection.checks(*freshness_checks),
                              resources=build_resources(settings), raise_on_error=False)


def test_a_missed_day_fails_the_freshness_check_after_the_deadline_and_alerts(settings, receiver):
    instance = dg.DagsterInstance.ephemeral()
    late = run_freshness_check(settings, instance, datetime(2026, 11, 22, 7, 0, tzinfo=timezone.utc))
    [evaluation] = late.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.asset_key.to_user_string() == "finout_upload"
    assert "expect partition 2026-11-21 to have arrived" in evaluation.description

    webhook = replace_settings(settings, alert_webhook_url=receiver.url + SECRET_PATH)
    tick(instance, webhook)
    [message] = receiver.messages
    assert message.startswith(f"ERROR: finout_upload, check {evaluation.check_name} failed")
    assert "2026-11-21" in message

    cover_day(settings, {9: [generation("a", "2026-11-21 09:00:00")]})
    with time_machine.travel(datetime(2026, 11, 22, 7, 30, tzinfo=timezone.utc), tick=True):
        assert materialize_day(settings, instance=instance,
                               selection=["langfuse_generations", "allocated_costs", "finout_upload"]).success
    fresh = run_freshness_check(settings, instance, datetime(2026, 11, 22, 8, 0, tzinfo=timezone.utc))
    assert fresh.get_asset_check_evaluations()[0].passed
    # the next day, before its deadline, 2026-11-22 is not due yet
    not_due = run_freshness_check(settings, instance, datetime(2026, 11, 23, 5, 30, tzinfo=timezone.utc))
    assert not_due.get_asset_check_evaluations()[0].passed


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


def test_the_schedule_time_and_freshness_deadline_are_settings():
    code = ("from finops_pipeline.schedules import daily_finops_schedule as s, freshness_checks as f; "
            "print(s.cron_schedule, s.execution_timezone)")
    env = {**os.environ, "FINOPS_SCHEDULE_TIME": "05:30", "FINOPS_FRESHNESS_DEADLINE": "09:00"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.stdout.split() == ["30", "5", "*", "*", "*", "UTC"], run.stderr[-500:]
    bad = subprocess.run([sys.executable, "-c", code], env={**env, "FINOPS_SCHEDULE_TIME": "25:00"},
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "FINOPS_SCHEDULE_TIME must be a UTC time HH:MM, got '25:00'" in bad.stderr
