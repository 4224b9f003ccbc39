"""Staging the day from a Langfuse export: windows, day boundaries, dedup, formats, bad input."""

import gzip
import json
import zlib
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest

from finops_pipeline.demo.sample_data import write_export_file
from finops_pipeline.settings import FinopsSettings
from finops_pipeline_tests.conftest import (
    DAY,
    check_evaluation,
    cover_day,
    day_window,
    failed_on_checks,
    generation,
    materialization_metadata,
    materialize_day,
    query,
    usd,
)

STAGE = ["langfuse_generations"]


def export_dir(settings) -> Path:
    return Path(settings.langfuse_export_dir)


def staged_ids(settings) -> list[str]:
    return [r[0] for r in query(settings, "SELECT observation_id FROM langfuse_generations ORDER BY 1")]


def test_day_boundaries_are_half_open_utc(settings):
    cover_day(settings, {
        0: [generation("first", "2026-11-21 00:00:00.000000"), generation("before", "2026-11-20 23:59:59.999000")],
        23: [generation("last", "2026-11-21 23:59:59.999000"), generation("after", "2026-11-22 00:00:00.000000")],
    })
    assert materialize_day(settings, selection=STAGE).success
    assert staged_ids(settings) == ["first", "last"]


def test_iso_timestamps_with_zone_are_read_as_utc(settings):
    cover_day(settings, {10: [generation("z", "2026-11-21T23:30:00.000Z"), generation("tz", "2026-11-22T00:30:00+02:00")]})
    assert materialize_day(settings, selection=STAGE).success
    assert staged_ids(settings) == ["tz", "z"]  # 00:30+02:00 is 22:30 UTC on the 21st


def test_a_days_rows_in_the_next_days_first_file_are_staged(settings):
    cover_day(settings)
    start, end = day_window()
    # The run for the window [23:40, 00:20] is named after the next day.
    write_export_file(export_dir(settings), end - timedelta(minutes=20), end + timedelta(minutes=20),
                      [generation("late", "2026-11-21 23:50:00.000000"), generation("next", "2026-11-22 00:10:00.000000")])
    assert materialize_day(settings, selection=STAGE).success
    assert staged_ids(settings) == ["late"]


def test_dedup_across_files_latest_export_wins(settings):
    cover_day(settings, {
        3: [generation("dup", "2026-11-21 04:00:00.000000", cost=0.01)],
        4: [generation("dup", "2026-11-21 04:00:00.000000", cost=0.05)],  # re-exported on the shared bound
    })
    assert materialize_day(settings, selection=STAGE).success
    assert query(settings, "SELECT observation_id, cost_usd FROM langfuse_generations") == [("dup", usd("0.05"))]


def test_the_same_day_in_every_export_format_stages_the_same_rows(settings, tmp_path):
    rows = [generation(f"g{i}", f"2026-11-21 05:{i:02d}:00.000000", cost=0.001 * (i + 1),
                       usage={"input": 100 + i, "output": 10, "input_cached_tokens": 5, "total": 115 + i},
                       metadata={"feature": "chat, \"quoted\"\nline", "team": "ünïcode"}) for i in range(30)]
    results = {}
    for ext in ("jsonl.gz", "csv.gz", "parquet"):
        fmt_settings = FinopsSettings.from_env({"FINOPS_HOME": str(tmp_path / ext)})
        cover_day(fmt_settings, {5: rows}, ext)
        assert materialize_day(fmt_settings, selection=STAGE).success, ext
        results[ext] = query(fmt_settings, """
            SELECT observation_id, start_time, input_tokens, cached_tokens, cost_usd, allocation
            FROM langfuse_generations ORDER BY 1""")
    assert len(results["jsonl.gz"]) == 30
    assert results["csv.gz"] == results["jsonl.gz"]
    assert results["parquet"] == results["jsonl.gz"]
    assert results["jsonl.gz"][0][5]["feature"] == "chat, \"quoted\"\nline"


def test_unlisted_files_are_skipped_and_manifestless_exports_use_file_names(settings):
    cover_day(settings, {8: [generation("listed", "2026-11-21 08:30:00.000000")]})
    start, _ = day_window()
    write_export_file(export_dir(settings), start + timedelta(hours=9), start + timedelta(hours=9, minutes=30),
                      [generation("in-flight", "2026-11-21 09:10:00.000000")], manifest=False)
    result = materialize_day(settings, selection=STAGE)
    assert result.success
    assert staged_ids(settings) == ["listed"]
    assert materialization_metadata(result, "langfuse_generations")["files_skipped_unlisted"] == 1


def test_export_without_manifests_reads_windows_from_file_names(settings):
    start, end = day_window()
    for hour in range(0, 25, 6):
        write_export_file(export_dir(settings), start, start + timedelta(hours=hour),
                          [generation(f"h{hour}", f"2026-11-21 {max(hour - 1, 0):02d}:00:00.000000")], manifest=False)
    assert materialize_day(settings, selection=STAGE).success
    assert staged_ids(settings) == ["h0", "h12", "h18", "h24", "h6"]


def test_an_export_without_manifests_whose_early_files_are_gone_proves_nothing_before_them(settings):
    """A lifecycle rule removed the files before 13:00: the first file left holds only its own hour, so
    neither the morning nor the day before is taken as empty."""
    start, _ = day_window()
    for hour in range(13, 25):
        write_export_file(export_dir(settings), start + timedelta(hours=hour - 1), start + timedelta(hours=hour),
                          [generation(f"h{hour}", f"2026-11-21 {hour - 1:02d}:30:00.000000")], manifest=False)
    for day in (DAY, DAY - timedelta(days=1)):
        result = materialize_day(settings, day, selection=STAGE)
        assert not result.success
        [failure] = [e for e in result.all_events if e.is_step_failure]
        message = failure.step_failure_data.error.message
        assert "observations_v2/2026-11-21T13-00-00.jsonl.gz is the export's first file and has no manifest, and " \
               "it holds no row from before 2026-11-21 12:00:00 UTC" in message
        assert f"nothing proves {day} before then empty" in message and "(not $0)" in message
    assert query(settings, "SELECT count(*) FROM langfuse_generations") == [(0,)]


def test_the_first_run_of_an_export_without_manifests_holds_the_days_before_it(settings):
    """Langfuse's first run exports from the oldest row on: its one file covers the days before it."""
    start, _ = day_window()
    history = [generation("old", "2026-11-19 10:00:00.000000"), generation("yesterday", "2026-11-20 08:00:00.000000"),
               generation("h0", "2026-11-21 00:30:00.000000")]
    write_export_file(export_dir(settings), start, start + timedelta(hours=1), history, manifest=False)
    for hour in range(2, 25):
        write_export_file(export_dir(settings), start + timedelta(hours=hour - 1), start + timedelta(hours=hour),
                          [], manifest=False)
    assert materialize_day(settings, DAY - timedelta(days=1), selection=STAGE).success
    assert staged_ids(settings) == ["yesterday"]
    assert materialize_day(settings, DAY, selection=STAGE).success


def test_tokens_by_kind_prompt_text_never_stored(settings):
    row = generation("o", "2026-11-21 10:00:00.000000", usage={
        "input": 100, "input_cached_tokens": 40, "cache_creation_input_tokens": 7, "output": 30,
        "output_reasoning_tokens": 12, "total": 189}, input="SECRET PROMPT TEXT", output="SECRET COMPLETION")
    cover_day(settings, {10: [row]})
    assert materialize_day(settings, selection=STAGE).success
    assert query(settings, """SELECT input_tokens, cached_tokens, cache_write_tokens, output_tokens,
                                     reasoning_tokens, total_tokens FROM langfuse_generations""") == [(100, 40, 7, 30, 12, 189)]
    db_bytes = Path(settings.duckdb_path).read_bytes()
    assert b"SECRET" not in db_bytes


def test_allocation_keys_metadata_then_tags_then_fields_then_unallocated(settings):
    cover_day(settings, {11: [
        generation("meta", "2026-11-21 11:00:00.000000", metadata={"feature": "search", "team": "core"},
                   tags=["feature:ignored", "customer_id:globex"]),
        generation("none", "2026-11-21 11:01:00.000000", metadata={}, tags=[], environment="staging"),
    ]})
    assert materialize_day(settings, selection=STAGE).success
    allocation = dict(query(settings, "SELECT observation_id, allocation FROM langfuse_generations"))
    assert allocation["meta"] == {"feature": "search", "customer_id": "globex", "team": "core",
                                  "environment": "production", "tier": "unallocated"}
    assert allocation["none"] == {"feature": "unallocated", "customer_id": "unallocated", "team": "unallocated",
                                  "environment": "staging", "tier": "unallocated"}


def test_tags_that_are_not_a_list_are_no_tags_and_the_rest_of_the_day_is_staged(settings):
    cover_day(settings, {
        11: [generation("text-tags", "2026-11-21 11:00:00.000000", metadata={}, tags="team:search"),
             generation("listed", "2026-11-21 11:01:00.000000", metadata={}, tags=["team:search"])],
        12: [generation("other-file", "2026-11-21 12:00:00.000000")],
    })
    result = materialize_day(settings, selection=STAGE)
    assert result.success
    teams = dict(query(settings, "SELECT observation_id, allocation['team'] FROM langfuse_generations"))
    assert teams == {"text-tags": "unallocated", "listed": "search", "other-file": "product"}
    assert materialization_metadata(result, "langfuse_generations")["quarantined_rows"] == 0


def test_unpriced_models_are_priced_from_the_table_or_counted(settings):
    cover_day(settings, {12: [
        generation("langfuse", "2026-11-21 12:00:00.000000", cost=0.5),
        generation("table", "2026-11-21 12:01:00.000000", model="gpt-4o-mini-2024-07-18", cost=None,
                   usage={"input": 1_000_000, "output": 1_000_000, "total": 2_000_000}),
        generation("nobody", "2026-11-21 12:02:00.000000", model="acme-llama-ft", cost=None),
    ]})
    result = materialize_day(settings, selection=STAGE)
    assert result.success
    rows = {r[0]: r[1:] for r in query(settings, "SELECT observation_id, cost_source, provider, cost_usd FROM langfuse_generations")}
    assert rows["langfuse"] == ("langfuse", "openai", usd("0.5"))
    # gpt-4o-mini: $0.15 per 1M input tokens and $0.60 per 1M output tokens
    assert rows["table"] == ("price_table", "openai", usd("0.75"))
    assert rows["nobody"] == ("unpriced", "unknown", None)
    metadata = materialization_metadata(result, "langfuse_generations")
    assert metadata["unpriced_generations"] == 1
    [unpriced] = [e for e in result.get_asset_check_evaluations() if e.check_name == "unpriced_generations"]
    assert not unpriced.passed and "acme-llama-ft" in unpriced.description



@pytest.mark.parametrize("ext", ["jsonl.gz", "csv.gz", "parquet"])
def test_a_total_cost_of_zero_beside_no_cost_details_is_no_price_not_a_free_call(settings, ext):
    """In the events table (observations_v2, the v2 API) total_cost is an alias of cost_details['total'], which
    ClickHouse reads as 0 where Langfuse had no price: that 0 is unknown, not a price."""
    cover_day(settings, {12: [
        generation("no-price", "2026-11-21 12:00:00.000000", model="acme-llama-ft", cost=None, total_cost=0.0),
        generation("table", "2026-11-21 12:01:00.000000", model="gpt-4o-mini-2024-07-18", cost=None, total_cost=0.0,
                   usage={"input": 1_000_000, "output": 1_000_000, "total": 2_000_000}),
        generation("free", "2026-11-21 12:02:00.000000", model="acme-llama-ft", cost=0.0),  # priced at $0 by Langfuse
        generation("details", "2026-11-21 12:03:00.000000", cost=None, total_cost=0.0,
                   cost_details={"input": 0.25, "output": 0.5}),  # no total key: the sum of the details
    ]}, ext=ext)
    assert materialize_day(settings, selection=STAGE).success
    rows = {r[0]: r[1:] for r in query(settings, "SELECT observation_id, cost_source, cost_usd FROM langfuse_generations")}
    assert rows == {"no-price": ("unpriced", None), "table": ("price_table", usd("0.75")),
                    "free": ("langfuse", usd("0")), "details": ("langfuse", usd("0.75"))}

BAD_LINES = {
    "malformed line: not a JSON object": '{"id": "broken", "start_time": "2026-11-21 13:00:00"',
    "usage_details.output is not a non-negative whole number": generation(
        "negative-tokens", "2026-11-21 13:01:00.000000", usage={"input": 5, "output": -3}),
    "usage_details.input is not a non-negative whole number": generation(
        "text-tokens", "2026-11-21 13:02:00.000000", usage={"input": "many", "output": 1}),
    "total_cost is not a number": generation("text-cost", "2026-11-21 13:03:00.000000", cost="abc"),
    "negative total_cost": generation("negative-cost", "2026-11-21 13:04:00.000000", cost=-0.2),
    "missing start_time": generation("no-time", None),
}


def test_bad_rows_are_quarantined_with_file_line_and_reason_not_fatal(settings):

    start, _ = day_window()
    good = generation("good", "2026-11-21 13:30:00.000000")
    lines = tuple(v if isinstance(v, str) else json.dumps(v) for v in BAD_LINES.values())
    cover_day(settings)
    path = write_export_file(export_dir(settings), start + timedelta(hours=13), start + timedelta(hours=14),
                             [good], extra_lines=lines)
    result = materialize_day(settings, selection=STAGE)
    assert result.success
    assert staged_ids(settings) == ["good"]
    quarantined = query(settings, "SELECT file, line, reason FROM quarantine ORDER BY line")
    assert [(f, line) for f, line, _ in quarantined] == [(str(path), n) for n in range(2, 2 + len(BAD_LINES))]
    for (_, _, reason), expected in zip(quarantined, BAD_LINES):
        assert reason.startswith(expected), (reason, expected)
    assert materialization_metadata(result, "langfuse_generations")["quarantined_rows"] == len(BAD_LINES)


def test_an_unreadable_file_is_quarantined_and_stops_the_days_delivery(settings):
    cover_day(settings, {14: [generation("fine", "2026-11-21 14:30:00.000000")]})
    start, _ = day_window()
    broken = write_export_file(export_dir(settings), start + timedelta(hours=15), start + timedelta(hours=16),
                               [generation("lost", "2026-11-21 15:30:00.000000")])
    broken.write_bytes(gzip.compress(b'{"id":"x"}\n')[:-12])  # truncated gzip
    result = materialize_day(settings, selection=[*STAGE, "allocated_costs", "finout_upload"])
    # the rows that could be read are staged and the file is quarantined; the day is not delivered
    assert failed_on_checks(result) == {"langfuse_generations"}
    assert staged_ids(settings) == ["fine"]
    [(file, line, reason)] = query(settings, "SELECT file, line, reason FROM quarantine")
    assert file == str(broken) and line is None and reason.startswith("unreadable jsonl file")
    complete = check_evaluation(result, "extraction_complete")
    assert not complete.passed and complete.severity == dg.AssetCheckSeverity.ERROR
    assert complete.description.startswith("1 of 24 export files not read whole: cm-demo-project/observations_v2/"
                                           "2026-11-21T16-00-00.jsonl.gz: read 0 rows, its manifest says 1 "
                                           "(unreadable jsonl file")
    assert not result.get_step_success_events()  # nothing downstream ran
    assert not (Path(settings.finout_dir) / "llm-costs-2026-11-21.csv").exists()


@pytest.mark.parametrize("ext", ["jsonl.gz", "csv.gz"])
def test_a_gzip_file_cut_short_at_a_line_end_is_unreadable_not_its_first_lines(settings, ext):
    """A copy cut off mid-stream inflates to whole lines (here the first two of three): DuckDB's own gzip (1.5)
    returns them without an error. The day must not take them for the file."""
    cover_day(settings, {14: [generation("fine", "2026-11-21 14:30:00.000000")]})
    start, _ = day_window()
    cut = write_export_file(export_dir(settings), start + timedelta(hours=15), start + timedelta(hours=16),
                            [generation(f"cut-{n}", "2026-11-21 15:30:00.000000") for n in range(3)], ext=ext)
    lines = gzip.decompress(cut.read_bytes()).splitlines(keepends=True)
    deflate = zlib.compressobj(wbits=31)  # gzip framing
    cut.write_bytes(deflate.compress(b"".join(lines[:-1])) + deflate.flush(zlib.Z_FULL_FLUSH))  # no end, no trailer
    result = materialize_day(settings, selection=[*STAGE, "allocated_costs", "finout_upload"])
    assert failed_on_checks(result) == {"langfuse_generations"}
    assert staged_ids(settings) == ["fine"]
    [(file, line, reason)] = query(settings, "SELECT file, line, reason FROM quarantine")
    assert file == str(cut) and line is None and reason.startswith(f"unreadable {ext.split('.')[0]} file: gzip stream")
    assert not (Path(settings.finout_dir) / "llm-costs-2026-11-21.csv").exists()


def test_a_gzip_file_of_several_members_is_staged_whole(settings):
    """`cat a.jsonl.gz b.jsonl.gz` is valid gzip whose trailer sizes only the last member: the ISA-L reader
    must not stop there (it raises, and DuckDB's own gzip reads the file)."""
    more = [generation(f"more-{n}", "2026-11-21 14:20:00.000000") for n in range(3)]
    cover_day(settings, {14: [generation("first", "2026-11-21 14:10:00.000000"), *more]})
    [path] = [p for p in export_dir(settings).rglob("*.jsonl.gz") if p.name.startswith("2026-11-21T15")]
    first, *rest = gzip.decompress(path.read_bytes()).splitlines(keepends=True)
    path.write_bytes(gzip.compress(first) + gzip.compress(b"".join(rest)))  # the same 4 rows, as two members
    result = materialize_day(settings, selection=STAGE)
    assert result.success
    assert staged_ids(settings) == ["first", "more-0", "more-1", "more-2"]
    assert materialization_metadata(result, "langfuse_generations")["quarantined_rows"] == 0


def test_missing_export_folder_is_a_clear_error_naming_the_path(settings):
    result = materialize_day(settings, selection=STAGE)
    assert not result.success
    message = str(result.get_step_failure_events()[0].step_failure_data.error)
    assert settings.langfuse_export_dir in message and "not found" in message


def test_an_export_that_has_not_reached_the_days_end_fails_the_day(settings):
    start, _ = day_window()
    write_export_file(export_dir(settings), start, start + timedelta(hours=20), [generation("a", "2026-11-21 01:00:00")])
    result = materialize_day(settings, selection=STAGE)
    assert not result.success
    message = str(result.get_step_failure_events()[0].step_failure_data.error)
    assert ("does not cover 2026-11-21" in message and "covers 2026-11-21 00:00:00 UTC .. 2026-11-21 20:00:00 UTC; "
            "not covered: 2026-11-21 20:00:00 UTC .. 2026-11-22 00:00:00 UTC" in message)
    assert query(settings, "SELECT count(*) FROM langfuse_generations") == [(0,)]


def test_a_day_before_the_exports_first_window_fails_and_delivers_nothing(settings):
    """The README's trap: a day the export never covered is unknown, not a $0 day."""
    cover_day(settings, {9: [generation("next", "2026-11-22 09:00:00")]}, day=DAY + timedelta(days=1))
    result = materialize_day(settings, selection=[*STAGE, "allocated_costs", "finout_upload", "focus_export"])
    assert not result.success and not result.get_step_success_events()
    message = str(result.get_step_failure_events()[0].step_failure_data.error)
    assert "The Langfuse export does not cover 2026-11-21, so its cost is unknown (not $0)" in message
    assert ("covers 2026-11-22 00:00:00 UTC .. 2026-11-23 00:00:00 UTC; not covered: 2026-11-21 00:00:00 UTC .. "
            "2026-11-22 00:00:00 UTC" in message)
    assert not Path(settings.finout_dir).exists() and not Path(settings.focus_dir).exists()


def test_a_hole_between_windows_fails_naming_it(settings):
    cover_day(settings, {9: [generation("a", "2026-11-21 09:00:00")]})
    # the run of 10:00..11:00 never finished: its file is there, its manifest is not
    [manifest] = export_dir(settings).rglob("manifests/2026-11-21T11-00-00.json")
    manifest.unlink()
    result = materialize_day(settings, selection=STAGE)
    assert not result.success
    message = str(result.get_step_failure_events()[0].step_failure_data.error)
    assert "not covered: 2026-11-21 10:00:00 UTC .. 2026-11-21 11:00:00 UTC" in message
    assert "A hole between windows: an export run failed or its manifest is missing" in message


@pytest.mark.parametrize("ext", ["jsonl.gz", "jsonl", "csv.gz", "parquet"])
def test_quiet_windows_make_a_genuine_zero_day_that_is_delivered(settings, ext):
    """Langfuse writes a file (and its manifest, rowCount 0) for every window, however quiet: a day of
    empty windows is covered and proved empty, and is delivered as $0."""
    cover_day(settings, ext=ext)
    result = materialize_day(settings, selection=[*STAGE, "allocated_costs", "finout_upload"])
    assert result.success
    complete = check_evaluation(result, "extraction_complete")
    assert complete.passed and complete.description.startswith("24 export files read whole, 0 rows")
    assert materialization_metadata(result, "finout_upload")["total_cost_usd"] == 0
    assert (Path(settings.finout_dir) / "llm-costs-2026-11-21.csv").read_text().startswith("UsageDate,Cost")


def test_a_file_short_of_its_manifest_fails_the_completeness_check_and_stops_delivery(settings):
    rows = [generation(f"r{n}", "2026-11-21 09:30:00") for n in range(3)]
    cover_day(settings, {9: rows})
    [path] = export_dir(settings).rglob("observations_v2/2026-11-21T10-00-00.jsonl.gz")
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()).splitlines(keepends=True)[0]))  # one of three
    result = materialize_day(settings, selection=[*STAGE, "allocated_costs", "finout_upload"])
    assert failed_on_checks(result) == {"langfuse_generations"}
    complete = check_evaluation(result, "extraction_complete")
    assert not complete.passed and complete.severity == dg.AssetCheckSeverity.ERROR
    assert ("1 of 24 export files not read whole: cm-demo-project/observations_v2/2026-11-21T10-00-00.jsonl.gz: "
            "read 1 rows, its manifest says 3 (-2 rows against its manifest)") in complete.description
    assert complete.metadata["files_not_read_whole"].value == 1
    assert not (Path(settings.finout_dir) / "llm-costs-2026-11-21.csv").exists()


def test_rerun_replaces_the_partition_and_keeps_other_days(settings):
    cover_day(settings, {1: [generation("a", "2026-11-21 01:00:00")]})
    prev = DAY - timedelta(days=1)
    start, _ = day_window(prev)
    for hour in range(24):
        write_export_file(export_dir(settings), start + timedelta(hours=hour), start + timedelta(hours=hour + 1),
                          [generation("yesterday", "2026-11-20 05:00:00")] if hour == 5 else [])
    assert materialize_day(settings, day=prev, selection=STAGE).success
    assert materialize_day(settings, selection=STAGE).success
    assert materialize_day(settings, selection=STAGE).success
    assert query(settings, "SELECT day, count(*) FROM langfuse_generations GROUP BY 1 ORDER BY 1") == [
        (prev, 1), (DAY, 1)]


def test_rows_after_a_blank_line_are_quarantined_with_their_physical_line(settings):
    """The fast JSON reader skips blank lines, so a file with rows to quarantine is re-read line by line."""

    start, _ = day_window()
    cover_day(settings)
    path = write_export_file(export_dir(settings), start + timedelta(hours=13), start + timedelta(hours=14),
                             [generation("good", "2026-11-21 13:30:00.000000")],
                             extra_lines=("", json.dumps(generation("no-time", None)), "   ",
                                          json.dumps(generation("negative", "2026-11-21 13:31:00.000000", cost=-1))))
    assert materialize_day(settings, selection=STAGE).success
    assert staged_ids(settings) == ["good"]
    assert query(settings, "SELECT file, line, observation_id, reason FROM quarantine ORDER BY line") == [
        (str(path), 3, "no-time", "missing start_time"),
        (str(path), 5, "negative", "negative total_cost: -1"),
    ]


def test_parquet_from_another_writer_json_text_columns_and_absent_ones(settings):
    """Langfuse writes maps as Parquet MAPs; a file whose usage and metadata are JSON text, with no
    cost_details column and a DOUBLE total_cost, stages the same way, next to the day's typed files."""
    import duckdb

    cover_day(settings, {3: [generation("typed", "2026-11-21 03:00:00.000000", cost=0.5)]}, "parquet")
    start, _ = day_window()
    path = write_export_file(export_dir(settings), start + timedelta(hours=6), start + timedelta(hours=7), [],
                             ext="parquet")
    with duckdb.connect() as conn:
        conn.execute(f"""COPY (SELECT * FROM (VALUES
            ('j1', '2026-11-21 06:10:00', 'gpt-4o', '{{"input": 100, "input_cached_tokens": 40, "output": "7"}}',
             '{{"feature": "search", "team": 5}}', 0.25::DOUBLE),
            ('j2', '2026-11-21 06:20:00', 'gpt-4o', 'not json', '{{}}', 0.5::DOUBLE))
            t(id, start_time, provided_model_name, usage_details, metadata, total_cost)) TO '{path}' (FORMAT parquet)""")
    assert materialize_day(settings, selection=STAGE).success
    assert query(settings, """SELECT observation_id, input_tokens, cached_tokens, output_tokens, cost_usd,
                                     allocation['feature'], allocation['team'] FROM langfuse_generations
                              ORDER BY 1""") == [
        ("j1", 100, 40, 7, usd("0.25"), "search", "5"), ("typed", 100, 0, 20, usd("0.5"), "chat", "product")]
    assert query(settings, "SELECT file, line, reason FROM quarantine") == [
        (str(path), 2, "usage_details is not an object: \"not json\"")]


def test_typed_parquet_rows_are_checked_on_their_types_and_keys_sorted_like_json(settings):
    """Parquet with signed counts and exact costs is validated on its types: a negative count or cost is
    quarantined at its row, and keys of every spelling (a quote in one too) sort into the units JSON's do."""
    import duckdb

    cover_day(settings)
    start, _ = day_window()
    path = write_export_file(export_dir(settings), start + timedelta(hours=6), start + timedelta(hours=7), [],
                             ext="parquet")
    with duckdb.connect() as conn:
        conn.execute(f"""COPY (SELECT id, start_time::TIMESTAMP AS start_time, 'gpt-4o-2024-08-06' AS provided_model_name,
                usage::MAP(VARCHAR, BIGINT) AS usage_details, cost::MAP(VARCHAR, DECIMAL(18, 12)) AS cost_details,
                total::INTEGER AS total_cost FROM (VALUES  -- a whole-dollar total: another exact type
            ('ok', '2026-11-21 06:10:00', MAP {{'promptTokens': 100, 'cache_read_input_tokens': 40, 'completion': 7,
                                               'weird''key': 3}}, MAP {{'total': 0.5}}, 1),
            ('total-only', '2026-11-21 06:11:00', MAP {{'totalTokens': 9}}, NULL, NULL),
            ('negative-tokens', '2026-11-21 06:12:00', MAP {{'input': 5, 'output': -3}}, NULL, NULL),
            ('negative-detail', '2026-11-21 06:13:00', MAP {{'input': 5}}, MAP {{'input': 0.1, 'output': -0.2}}, NULL),
            ('negative-total', '2026-11-21 06:14:00', MAP {{'input': 5}}, NULL, -10))
            t(id, start_time, usage, cost, total)) TO '{path}' (FORMAT parquet)""")
    assert materialize_day(settings, selection=STAGE).success
    assert query(settings, """SELECT observation_id, input_tokens, cached_tokens, output_tokens, total_tokens, usage_other,
                                     cost_usd FROM langfuse_generations ORDER BY 1""") == [
        ("ok", 100, 40, 7, 150, {"unsorted:weird'key": 3}, usd("0.5")), ("total-only", 0, 0, 0, 9, None, None)]
    assert query(settings, "SELECT line, observation_id, reason FROM quarantine ORDER BY line") == [
        (3, "negative-tokens", "usage_details.output is not a non-negative whole number: -3"),
        (4, "negative-detail", "cost_details.output is not a non-negative number: -0.2"),
        (5, "negative-total", "negative total_cost: -10")]


def test_a_parquet_file_whose_footer_does_not_decode_is_quarantined_not_a_crash(settings):
    """Bytes flipped in a Parquet file's metadata make DuckDB raise its bare Error ("Variable-length int over 10
    bytes"), not an IO error: still a file that cannot be read, quarantined, and the day not delivered."""
    cover_day(settings, {5: [generation("fine", "2026-11-21 05:10:00")]}, "parquet")
    [broken] = export_dir(settings).rglob("observations_v2/2026-11-21T08-00-00.parquet")
    data = bytearray(broken.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 40):
        data[i] ^= 0xFF
    broken.write_bytes(bytes(data))
    result = materialize_day(settings, selection=STAGE)
    assert failed_on_checks(result) == {"langfuse_generations"} and staged_ids(settings) == ["fine"]
    [(file, line, reason)] = query(settings, "SELECT file, line, reason FROM quarantine")
    assert (file, line) == (str(broken), None) and reason.startswith("unreadable parquet file: "), reason


@pytest.mark.parametrize("ext", ["jsonl.gz", "parquet"])
def test_a_null_total_or_counts_past_what_a_count_holds_cost_only_their_row(settings, ext):
    """A `total` of null is no total (the token kinds add up instead); counts no BIGINT holds (2^64 - 1, what
    ClickHouse's UInt64 makes of -1, or two that add up past 2^63) quarantine their row, not their file."""
    cover_day(settings, {5: [
        generation("fine", "2026-11-21 05:00:00", cost=1.25),
        generation("null-total", "2026-11-21 05:01:00", cost=0.5, usage={"input": 4, "output": 3, "total": None}),
        generation("huge", "2026-11-21 05:02:00", usage={"input": 2**64 - 1, "output": 1}),
        generation("overflow", "2026-11-21 05:03:00", usage={"input": 5 * 10**18, "output": 5 * 10**18}),
    ]}, ext)
    assert materialize_day(settings, selection=STAGE).success
    assert query(settings, "SELECT observation_id, total_tokens, cost_usd FROM langfuse_generations ORDER BY 1") == [
        ("fine", 120, usd("1.25")), ("null-total", 7, usd("0.5"))]
    assert [(line, observation_id, reason.split(" to ")[0]) for line, observation_id, reason in query(
        settings, "SELECT line, observation_id, reason FROM quarantine ORDER BY line")] == [
        (3, "huge", "usage_details counts add up"), (4, "overflow", "usage_details counts add up")]
