"""The way operators run it: a real `dagster dev` (webserver and daemon) on loopback, with the instance of
dagster.yaml, a 30-day backfill launched as the UI launches it (GraphQL `launchPartitionBackfill`),
Langfuse and the providers' cost APIs as HTTP doubles, and the alert sensor posting to a webhook receiver."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import dagster as dg
import duckdb
import httpx
import pytest

from finops_pipeline.warehouse import Warehouse, connect
from finops_pipeline_tests.billing_double import ANTHROPIC_KEY, OPENAI_KEY, BillingDouble, anthropic_result
from finops_pipeline_tests.langfuse_double import LangfuseDouble, api_row
from finops_pipeline_tests.webhook_double import Receiver

REPO = Path(__file__).resolve().parent.parent
DAYS = [date(2026, 10, 23) + timedelta(days=n) for n in range(30)]  # the lakehouse's backfill
FILE_DAYS = DAYS[5:15]  # the DuckDB file's: its steps take turns, so fewer days keep the suite's time
OVERBILLED = DAYS[11]  # OpenAI bills a third above the traced cost: the day's reconciliation fails with ERROR
ASSETS = ["langfuse_generations", "allocated_costs", "openai_costs", "anthropic_costs", "other_provider_costs",
          "cost_reconciliation", "finout_upload", "focus_export", "budget_status", "cost_anomalies"]
CHECKS = {"unallocated_cost_share", "unpriced_generations", "extraction_complete", "cost_conserved",
          "billed_vs_traced_gap", "billed_models_matched", "delivered_cost_conserved", "focus_cost_conserved",
          "delivered_by_deadline", "budget_thresholds", "no_cost_anomaly"}
LAUNCH = """mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""
STATUS = """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
  __typename ... on PartitionBackfill { status numPartitions } ... on PythonError { message } } }"""
CHECK_DAYS = """query { assetNodes(assetKeys: [{path: ["cost_reconciliation"]}]) { assetChecksOrError {
  __typename ... on AssetChecks { checks { name partitionStatuses {
    __typename ... on AssetCheckTimePartitionStatuses { ranges { startKey endKey status } } } } } } } }"""


def traces_and_bills(days: list[date]) -> tuple[list[dict], dict, dict]:
    """Each day: 6 gpt-4o-mini calls at $0.01 and 4 Claude calls at $0.02, billed exactly but on OVERBILLED."""
    rows, openai, anthropic = [], {}, {}
    for day in days:
        for n in range(10):
            model, cost = ("gpt-4o-mini-2024-07-18", 0.01) if n < 6 else ("claude-sonnet-4-20250514", 0.02)
            rows.append(api_row(f"{day}-{n}", f"{day}T{2 * n:02d}:15:00.000Z", model=model, cost=cost))
        openai[day] = {"gpt-4o-mini-2024-07-18, input": "0.09" if day == OVERBILLED else "0.06"}
        anthropic[day] = [anthropic_result("claude-sonnet-4-20250514", "uncached_input_tokens", "8")]
    return rows, openai, anthropic


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_dagster_dev(tmp_path: Path, days: list[date], **settings: str):
    """`dagster dev` as `make dev` starts it, on the doubles of traces_and_bills(days), with `settings` (FINOPS_*)."""
    rows, openai, anthropic = traces_and_bills(days)
    home, dagster_home = tmp_path / "finops", tmp_path / "dagster"
    dagster_home.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    with LangfuseDouble(rows) as langfuse, BillingDouble(openai, anthropic, page_size=5) as bills, Receiver() as webhook:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FINOPS_", "LANGFUSE_", "OPENAI_", "ANTHROPIC_"))}
        env.update({
            "FINOPS_HOME": str(home), "DAGSTER_HOME": str(dagster_home),
            "LANGFUSE_BASE_URL": langfuse.url, "LANGFUSE_PUBLIC_KEY": langfuse.public_key,
            "LANGFUSE_SECRET_KEY": langfuse.secret_key, "FINOPS_LANGFUSE_REQUESTS_PER_MINUTE": "0",
            "OPENAI_BASE_URL": bills.openai_url(), "OPENAI_ADMIN_KEY": OPENAI_KEY,
            "ANTHROPIC_BASE_URL": bills.url, "ANTHROPIC_ADMIN_KEY": ANTHROPIC_KEY,
            "FINOPS_ALERT_WEBHOOK_URL": webhook.webhook_url, "FINOPS_START_DATE": "2026-10-01", **settings,
        })
        log = open(tmp_path / "dagster-dev.log", "w")
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml",  # as `make dev`: both locations
             "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                assert process.poll() is None, (tmp_path / "dagster-dev.log").read_text()[-3000:]
                try:
                    if httpx.get(f"{url}/server_info", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "dagster dev did not start in 3 minutes"
                time.sleep(1)
            yield url, home, dagster_home, langfuse, bills, webhook
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            log.close()


@pytest.fixture
def dagster_dev(tmp_path):
    with running_dagster_dev(tmp_path, FILE_DAYS) as running:
        yield running


def graphql(url: str, query: str, variables: dict) -> dict:
    response = httpx.post(f"{url}/graphql", json={"query": query, "variables": variables}, timeout=60)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


def sensor_ticks(instance: dg.DagsterInstance, name: str) -> list:
    """The sensor's finished ticks: the daemon may be in the middle of one as they are read (STARTED)."""
    [state] = [s for s in instance.all_instigator_state() if s.instigator_name == name]
    return [t for t in instance.get_ticks(state.instigator_origin_id, state.selector_id) if t.status.value != "STARTED"]


def run_backfill(url: str, days: list[date]) -> tuple[str, float]:
    """Launch `days` of every asset as the UI does; wait until it ends. Its id, and when it ended."""
    launched = graphql(url, LAUNCH, {"p": {"assetSelection": [{"path": [a]} for a in ASSETS],
                                           "partitionNames": [d.isoformat() for d in days], "fromFailure": False}})
    assert launched["launchPartitionBackfill"]["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["launchPartitionBackfill"]["backfillId"]
    deadline = time.monotonic() + 1200  # 20 minutes: room for a busy machine (idle, it takes about 3)
    while True:
        status = graphql(url, STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        if status.get("status") not in ("REQUESTED", "CANCELING", "FAILING"):
            break
        assert time.monotonic() < deadline, f"backfill still {status} after 20 minutes"
        time.sleep(3)
    # One day's reconciliation failed with ERROR: its run failed, so the backfill did not complete cleanly.
    assert status == {"__typename": "PartitionBackfill", "status": "COMPLETED_FAILED", "numPartitions": len(days)}
    return backfill_id, time.time()


def every_day_and_check(url: str, instance: dg.DagsterInstance, backfill_id: str, days: list[date]) -> list:
    """Assert what users rely on after the backfill: every warehouse step of every day ran and succeeded, but the
    one reconciliation that fails by design; every check evaluated in every run; each day's reconciliation check
    is that day's in the UI. The backfill's run records."""
    runs = instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
    assert sorted(r.dagster_run.tags["dagster/partition"] for r in runs) == [d.isoformat() for d in days]
    assert {r.dagster_run.tags["dagster/partition"]: r.dagster_run.status for r in runs} == {
        d.isoformat(): dg.DagsterRunStatus.FAILURE if d == OVERBILLED else dg.DagsterRunStatus.SUCCESS for d in days}
    outcomes: dict[tuple[str, str], str] = {}
    for run in runs:
        for record in instance.get_records_for_run(
                run.dagster_run.run_id, of_type={dg.DagsterEventType.STEP_SUCCESS,
                                                 dg.DagsterEventType.STEP_FAILURE}).records:
            if record.event_log_entry.step_key in ASSETS:  # the warehouse steps (not the delivery check's)
                outcomes[(run.dagster_run.tags["dagster/partition"], record.event_log_entry.step_key)] = \
                    record.event_log_entry.dagster_event.event_type_value
    assert len(outcomes) == len(days) * len(ASSETS)
    assert {k for k, v in outcomes.items() if v != "STEP_SUCCESS"} == {(OVERBILLED.isoformat(), "cost_reconciliation")}
    for run in runs:
        evaluated = {r.event_log_entry.dagster_event.event_specific_data.check_name
                     for r in instance.get_records_for_run(run.dagster_run.run_id,
                                                           of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records}
        assert evaluated == CHECKS, run.dagster_run.tags["dagster/partition"]

    # Each day's reconciliation check is that day's, as the UI reads it: failed on one day, passed on the others.
    [node] = graphql(url, CHECK_DAYS, {})["assetNodes"]
    [gap] = [c for c in node["assetChecksOrError"]["checks"] if c["name"] == "billed_vs_traced_gap"]
    by_day = {}
    for r in gap["partitionStatuses"]["ranges"]:
        for n in range((date.fromisoformat(r["endKey"]) - date.fromisoformat(r["startKey"])).days + 1):
            by_day[(date.fromisoformat(r["startKey"]) + timedelta(days=n)).isoformat()] = r["status"]
    assert by_day == {d.isoformat(): "FAILED" if d == OVERBILLED else "SUCCEEDED" for d in days}
    return runs


def assert_warehouse_totals(conn, days: list[date]) -> None:
    """Every day in every table, 10 calls and $0.14 a day; the traced total is the billed one but the overbilled
    day's extra $0.03."""
    for table in ("langfuse_generations", "allocated_costs", "provider_costs", "cost_reconciliation"):
        assert conn.execute(f"SELECT count(DISTINCT day) FROM {table}").fetchone()[0] == len(days), table
    assert conn.execute("SELECT count(*), sum(cost_usd) FROM langfuse_generations").fetchone() == (
        10 * len(days), conn.execute("SELECT sum(cost_usd) - 0.03 FROM provider_costs").fetchone()[0])
    assert conn.execute("SELECT sum(cost_usd) FROM allocated_costs").fetchone()[0] == Decimal("0.14") * len(days)


def test_a_backfill_from_the_ui_materialises_every_day_with_every_check(dagster_dev):
    url, home, dagster_home, langfuse, bills, webhook = dagster_dev
    backfill_id, finished = run_backfill(url, FILE_DAYS)
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    # Runs may overlap (dagster.yaml allows 4 at once); their warehouse steps take turns through the `duckdb`
    # pool of one slot. On SQLite, Dagster's slot claim can race (its SELECT ... FOR UPDATE SKIP LOCKED is a
    # no-op there), so two steps may start together now and then; DuckDB's file lock and the resource's
    # reconnect back-off then serialize them. What users rely on: every warehouse step of every day ran and
    # succeeded, but the one reconciliation that fails by design, whatever overlapped.
    every_day_and_check(url, instance, backfill_id, FILE_DAYS)

    # The alert sensor ticks cleanly on this instance (SQLite, run-sharded) and alerts the failed day once.
    deadline = time.monotonic() + 240
    while not [t for t in sensor_ticks(instance, "check_failure_alerts") if t.timestamp > finished + 1]:
        assert time.monotonic() < deadline, "the alert sensor did not tick after the backfill in 4 minutes"
        time.sleep(5)
    ticks = sensor_ticks(instance, "check_failure_alerts")
    assert len(ticks) >= 2 and {t.status.value for t in ticks} <= {"SUCCESS", "SKIPPED"}, [
        (t.status, t.error) for t in ticks if t.error]
    gap_alerts = [m for m in webhook.messages if "billed_vs_traced_gap" in m]
    assert len(gap_alerts) == 1 and gap_alerts[0].startswith(
        f"ERROR: cost_reconciliation {OVERBILLED}, check billed_vs_traced_gap failed: openai: billed $0.09 vs traced $0.06")

    # The months the backfill touched are rendered by the automation sensor once their days are in.
    expected = {"2026-10-01": sum(d.month == 10 for d in FILE_DAYS), "2026-11-01": sum(d.month == 11 for d in FILE_DAYS)}
    deadline = time.monotonic() + 300
    while True:
        latest = {}
        for month in expected:
            records = instance.fetch_materializations(dg.AssetRecordsFilter(
                asset_key=dg.AssetKey("monthly_report"), asset_partitions=[month]), limit=1).records
            if records:
                latest[month] = records[0].asset_materialization.metadata
        if {m: v["days_known"].value for m, v in latest.items()} == expected:
            break
        assert time.monotonic() < deadline, f"the months were not rendered after the backfill in 5 minutes: {latest}"
        time.sleep(5)
    for month, metadata in latest.items():
        assert Path(metadata["path"].value) == home / "reports" / f"llm-costs-{month[:7]}.html"
        assert metadata["total_cost_usd"].value == pytest.approx(0.14 * expected[month])  # traced: $0.06 + $0.08 a day
    ticks = sensor_ticks(instance, "monthly_report_automation")
    assert ticks and {t.status.value for t in ticks} <= {"SUCCESS", "SKIPPED"}, [(t.status, t.error) for t in ticks]

    with duckdb.connect(str(home / "finops.duckdb"), read_only=True) as conn:
        assert_warehouse_totals(conn, FILE_DAYS)
    assert len(list((home / "finout").glob("llm-costs-*.csv"))) == len(FILE_DAYS)
    assert len(list((home / "focus").glob("focus-*.csv"))) == len(FILE_DAYS)
    assert langfuse.contract_errors == [] and bills.contract_errors == []
    instance.dispose()


@pytest.mark.lakehouse
def test_a_30_day_backfill_into_the_lakehouse_writes_days_at_once(tmp_path, lakehouse):
    """The 30 days with FINOPS_WAREHOUSE on a DuckLake lakehouse (Postgres catalog, moto S3): no pool, so the four
    runs dagster.yaml allows write their days at the same time, and the totals are the DuckDB file's."""
    settings = {"FINOPS_WAREHOUSE": lakehouse["warehouse"], "FINOPS_WAREHOUSE_DATA_PATH": lakehouse["warehouse_data_path"]}
    with running_dagster_dev(tmp_path, DAYS, **settings) as (url, home, dagster_home, langfuse, bills, webhook):
        backfill_id, _ = run_backfill(url, DAYS)
        instance = dg.DagsterInstance.from_config(str(dagster_home))
        runs = every_day_and_check(url, instance, backfill_id, DAYS)
        # No step waited for a warehouse slot, and steps of different runs wrote at the same time
        events = [r.event_log_entry for run in runs for r in instance.get_records_for_run(run.dagster_run.run_id).records]
        assert not [e.user_message for e in events if "blocked by limit for pool" in (e.user_message or "")]
        began = {(e.run_id, e.step_key): e.timestamp for e in events
                 if e.dagster_event and e.dagster_event.event_type_value == "STEP_START" and e.step_key in ASSETS}
        spans = [(began[(e.run_id, e.step_key)], e.timestamp) for e in events if e.dagster_event and (
            e.dagster_event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE")) and e.step_key in ASSETS]
        at_once = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
        assert len(spans) == len(DAYS) * len(ASSETS) and at_once >= 2, at_once
        with connect(Warehouse(database=lakehouse["warehouse"], data_path=lakehouse["warehouse_data_path"])) as conn:
            assert_warehouse_totals(conn, DAYS)
        assert not (home / "finops.duckdb").exists()
        assert len(list((home / "finout").glob("llm-costs-*.csv"))) == len(DAYS)
        assert langfuse.contract_errors == [] and bills.contract_errors == []
        instance.dispose()
