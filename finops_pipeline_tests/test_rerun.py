"""A re-run that finds the day's inputs as they were when the day was staged does not read them again (the
schedule re-runs the last days every morning); any changed or new file, or a setting that shapes the staged
rows, re-stages the day whole."""

import os
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest

from finops_pipeline_tests.conftest import (
    BUCKET, DAY, check_evaluation, cover_day, day_window, generation, materialization_metadata, materialize_day,
    query, replace_settings,
)
from finops_pipeline_tests.test_object_storage import upload
from finops_pipeline import staged_inputs
from finops_pipeline.assets.monthly_report import build_monthly_report
from finops_pipeline.definitions import build_resources
from finops_pipeline.demo.sample_data import write_export_file
from finops_pipeline_tests.langfuse_double import LangfuseDouble, api_row
from finops_pipeline_tests.test_langfuse_api import langfuse_for

STAGE = ["langfuse_generations"]
COLUMNS = "observation_id, cost_usd, allocation"


def _day(settings) -> None:
    cover_day(settings, {9: [generation("a", f"{DAY} 09:00:00", cost=0.5), generation("b", f"{DAY} 09:10:00", cost=0.25)],
                         14: [generation("c", f"{DAY} 14:00:00", cost=1.0)]})


def _file_of(settings, hour: int) -> Path:
    """The export file of the window [hour, hour + 1] (named after its end)."""
    [path] = Path(settings.langfuse_export_dir).rglob(f"observations_v2/{DAY}T{hour + 1:02d}-00-00.*")
    return path


def test_the_same_files_are_not_read_again_and_the_day_says_so(settings):
    _day(settings)
    first = materialize_day(settings, selection=STAGE)
    staged = query(settings, f"SELECT {COLUMNS} FROM langfuse_generations ORDER BY 1")
    assert materialization_metadata(first, "langfuse_generations")["inputs_unchanged"] is False
    # A file made unreadable behind the listing's back (same size, same time): a read would fail on it
    path = _file_of(settings, 9)
    stat = path.stat()
    path.write_bytes(b"\0" * stat.st_size)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = materialize_day(settings, selection=STAGE)
    assert again.success
    meta = materialization_metadata(again, "langfuse_generations")
    assert meta["inputs_unchanged"] is True and meta["files_read"] == 0 and meta["dagster/row_count"] == 3
    assert meta["total_cost_usd"] == 1.75
    assert query(settings, f"SELECT {COLUMNS} FROM langfuse_generations ORDER BY 1") == staged
    complete = check_evaluation(again, "extraction_complete")
    assert complete.passed and complete.description.startswith("Inputs unchanged since ")
    assert "; then: 24 export files read whole, 3 rows" in complete.description
    assert {e.check_name for e in again.get_asset_check_evaluations()} == {
        "extraction_complete", "unallocated_cost_share", "unpriced_generations"}


def test_a_changed_or_new_file_or_setting_re_stages_the_day_whole(settings):
    _day(settings)
    assert materialize_day(settings, selection=STAGE).success
    # late data: the 14:00 window written again with one more row
    start, _ = day_window()
    write_export_file(Path(settings.langfuse_export_dir), start + timedelta(hours=14), start + timedelta(hours=15),
                      [generation("c", f"{DAY} 14:00:00", cost=1.0), generation("d", f"{DAY} 14:30:00", cost=2.0)])
    late = materialize_day(settings, selection=STAGE)
    assert materialization_metadata(late, "langfuse_generations")["inputs_unchanged"] is False
    assert [i for (i,) in query(settings, "SELECT observation_id FROM langfuse_generations ORDER BY 1")] == \
        ["a", "b", "c", "d"]
    # a setting that shapes the rows: the same files, another allocation vocabulary
    renamed = replace_settings(settings, allocation_keys=["feature", "team", "customer_id", "tier", "environment",
                                                          "product"])
    result = materialize_day(renamed, selection=STAGE)
    assert materialization_metadata(result, "langfuse_generations")["inputs_unchanged"] is False
    assert query(settings, "SELECT DISTINCT allocation['product'] FROM langfuse_generations") == [("unallocated",)]


def test_a_change_to_the_staging_code_re_stages_the_day(settings, monkeypatch):
    """A fix to pricing or validation pulled into the same package version still reaches the staged days."""
    _day(settings)
    assert materialize_day(settings, selection=STAGE).success
    monkeypatch.setattr(staged_inputs, "staging_code", lambda: "the code after a fix")
    result = materialize_day(settings, selection=STAGE)
    assert materialization_metadata(result, "langfuse_generations")["inputs_unchanged"] is False


def test_a_day_not_proven_whole_is_read_again(settings):
    _day(settings)
    path = _file_of(settings, 14)
    path.write_bytes(path.read_bytes()[:20])  # cut short: fewer rows than its manifest counts
    first = materialize_day(settings, selection=STAGE)
    assert not check_evaluation(first, "extraction_complete").passed
    again = materialize_day(settings, selection=STAGE)
    assert materialization_metadata(again, "langfuse_generations")["inputs_unchanged"] is False


def test_in_a_bucket_an_object_written_again_is_read_again(settings, s3, tmp_path):
    _day(settings)
    upload(s3, Path(settings.langfuse_export_dir), "langfuse")
    bucket = replace_settings(settings, home=str(tmp_path / "b"), langfuse_export_dir=f"s3://{BUCKET}/langfuse")
    assert materialize_day(bucket, selection=STAGE).success
    again = materialize_day(bucket, selection=STAGE)
    assert materialization_metadata(again, "langfuse_generations")["inputs_unchanged"] is True
    key = f"langfuse/{_file_of(settings, 9).relative_to(settings.langfuse_export_dir)}"
    s3.put_object(Bucket=BUCKET, Key=key, Body=s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())  # rewritten
    rewritten = materialize_day(bucket, selection=STAGE)
    assert materialization_metadata(rewritten, "langfuse_generations")["inputs_unchanged"] is False


OCT = [DAY.replace(month=10, day=d) for d in (1, 2, 3)]  # older than 35 days by the clock of any run of the suite
READ = ["langfuse_generations", "allocated_costs", "unit_economics"]


def test_retention_drops_old_staged_days_once_read_and_keeps_what_was_derived(settings):
    keep = replace_settings(settings, staged_retention_days=35)
    for day in OCT:
        cover_day(keep, {9: [generation(f"{day}-a", f"{day} 09:00:00", cost=0.5),
                             generation(f"{day}-ft", f"{day} 09:05:00", model="acme-llama-ft", cost=None)]}, day=day)
        result = materialize_day(keep, day, selection=READ)
        assert result.success
    # each run retires the old days whose readers are up to date: all but the last one run
    assert materialization_metadata(result, "langfuse_generations")["staged_days_retired"] == 1
    assert query(keep, "SELECT DISTINCT day FROM langfuse_generations") == [(OCT[2],)]
    assert query(keep, "SELECT day, sum(cost_usd)::DOUBLE FROM allocated_costs GROUP BY 1 ORDER BY 1") == [
        (d, 0.5) for d in OCT]
    assert query(keep, "SELECT count(DISTINCT day) FROM unit_economics") == [(3,)]
    # the last day run again with its inputs unchanged: its own run never retires it under its readers
    rerun = materialize_day(keep, OCT[2], selection=READ)
    assert rerun.success and materialization_metadata(rerun, "langfuse_generations")["inputs_unchanged"] is True
    # the month's report still counts the retired days' unpriced calls (from allocated_costs), saying so
    report = dg.materialize([build_monthly_report("langfuse")], partition_key="2026-10-01",
                            resources=build_resources(keep))
    html = " ".join((Path(keep.home) / "reports" / "llm-costs-2026-10.html").read_text().split())
    assert report.success and "acme-llama-ft: 1 with no price (1" in html
    assert "acme-llama-ft: 2 with no price (on days whose calls retention dropped: tokens not kept)" in html
    assert "2 days of the month had their generation-level rows dropped" in html
    # a reader of a retired day fails saying so, rather than writing the day from no rows
    failed = materialize_day(keep, OCT[0], selection=["allocated_costs"])
    [failure] = failed.get_step_failure_events()
    assert "allocated_costs of 2026-10-01 reads its staged generations, which retention dropped" in \
        failure.event_specific_data.error.message
    assert query(keep, "SELECT sum(cost_usd)::DOUBLE FROM allocated_costs WHERE day = ?", [OCT[0]]) == [(0.5,)]
    # the day run again reads its inputs again (they are not "unchanged": its rows are gone)
    again = materialize_day(keep, OCT[0], selection=READ)
    assert again.success and materialization_metadata(again, "langfuse_generations")["inputs_unchanged"] is False
    assert query(keep, "SELECT count(*) FROM langfuse_generations WHERE day = ?", [OCT[0]]) == [(2,)]


def test_without_retention_every_staged_day_stays(settings):
    for day in OCT[:2]:
        cover_day(settings, {9: [generation(f"{day}-a", f"{day} 09:00:00", cost=0.5)]}, day=day)
        result = materialize_day(settings, day, selection=READ)
    assert "staged_days_retired" not in materialization_metadata(result, "langfuse_generations")
    assert query(settings, "SELECT count(DISTINCT day) FROM langfuse_generations") == [(2,)]


def test_retention_shorter_than_the_anomalies_history_is_refused(settings):
    with pytest.raises(ValueError, match="greater than or equal to 35"):
        replace_settings(settings, staged_retention_days=10)


def test_from_the_api_the_same_totals_are_not_read_again_and_late_rows_are(settings):
    """The metrics API's count and cost of the day, asked before anything is read, stand for the day's inputs."""
    late = api_row("late", f"{DAY}T12:00:00.000Z", cost=0.5)
    rows = [api_row(f"g{i}", f"{DAY}T{i:02d}:30:00.000Z", cost=0.01) for i in range(20)] + [late]
    with LangfuseDouble(rows) as double:
        double.hidden_ids.add("late")
        double.metrics_hidden.add("late")  # not there yet: neither served nor counted
        langfuse = langfuse_for(double)
        first = materialize_day(settings, selection=STAGE, langfuse=langfuse)
        assert materialization_metadata(first, "langfuse_generations")["inputs_unchanged"] is False
        double.requests.clear()
        again = materialize_day(settings, selection=STAGE, langfuse=langfuse)
        meta = materialization_metadata(again, "langfuse_generations")
        assert meta["inputs_unchanged"] is True and meta["dagster/row_count"] == 20
        assert {path for path, _ in double.requests} == {"/api/public/v2/metrics"}  # no observation page
        assert check_evaluation(again, "extraction_complete").description.startswith("Inputs unchanged since ")
        double.hidden_ids.clear()
        double.metrics_hidden.clear()  # the late row arrives: the totals change, the day is read again
        arrived = materialize_day(settings, selection=STAGE, langfuse=langfuse)
        assert materialization_metadata(arrived, "langfuse_generations")["inputs_unchanged"] is False
        assert query(settings, "SELECT count(*) FROM langfuse_generations") == [(21,)]
        assert not double.contract_errors


def test_inputs_are_not_recorded_for_rows_another_run_staged_since(settings):
    """Two runs of a day on a lakehouse, from different files: B stages, A stages (A's rows stand), B records
    its fingerprint. B's fingerprint must not vouch for A's rows, or the day would never be read again."""
    from finops_pipeline.warehouse import connect, mark_written, transactions

    cover_day(settings)
    assert materialize_day(settings, selection=["langfuse_generations"]).success
    complete = dg.AssetCheckResult(check_name="extraction_complete", passed=True, description="24 of 24 files")
    with connect(build_resources(settings)["duckdb"]) as conn:
        for attempt in transactions(conn):  # run B's staging
            with attempt:
                conn.execute("DELETE FROM staged_inputs")
                mark_written(conn, "langfuse_generations", DAY)
                b_staged = staged_inputs.staging_of(conn, DAY)
        for attempt in transactions(conn):  # run A's, committed before B records
            with attempt:
                mark_written(conn, "langfuse_generations", DAY)
        assert not staged_inputs.record(conn, DAY, "fingerprint of B's files", complete, b_staged)
        assert conn.execute("SELECT count(*) FROM staged_inputs").fetchone() == (0,)  # read again next time
        a_staged = staged_inputs.staging_of(conn, DAY)
        assert staged_inputs.record(conn, DAY, "fingerprint of A's files", complete, a_staged)
        assert conn.execute("SELECT fingerprint FROM staged_inputs").fetchall() == [("fingerprint of A's files",)]
