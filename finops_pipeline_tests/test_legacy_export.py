"""The legacy export layout of self-hosted Langfuse v3 (`observations/` + `traces/`, export source
TRACES_OBSERVATIONS) stages what the enriched layout does: same generations, allocation and totals."""

import csv
import gzip
import io
import json
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from finops_pipeline.demo.legacy_layout import PROMPT_TEXT, observation, trace, write_legacy_days
from finops_pipeline.demo.sample_data import PROJECT_ID, day_rows, write_export_day, write_manifest, write_table_file

from .conftest import (
    DAY, check_evaluation, failed_on_checks, generation, materialization_metadata, materialize_day, query,
    replace_settings,
)

DAYS = [DAY - timedelta(days=1), DAY, DAY + timedelta(days=1)]
MIDNIGHT = datetime(DAY.year, DAY.month, DAY.day)


@pytest.fixture(scope="module")
def sample():
    """Three days of the demo's sample, 300 generations a day (the middle one is the test's DAY)."""
    return [(day, day_rows(day, 300, seed), seed) for seed, day in enumerate(DAYS)]


def staged(settings) -> list[tuple]:
    """The staged day, times to the millisecond (the legacy tables keep milliseconds, the enriched one micro-)."""
    return query(settings, "SELECT * EXCLUDE (source_file, start_time), date_trunc('millisecond', start_time) "
                           "FROM langfuse_generations WHERE day = ? ORDER BY observation_id", [DAY])


def allocated(settings) -> list[tuple]:
    return query(settings, "SELECT * FROM allocated_costs WHERE day = ? ORDER BY ALL", [DAY])


def home(settings, tmp_path: Path, name: str):
    return replace_settings(settings, home=str(tmp_path / name), langfuse_export_dir=str(tmp_path / name / "export"))


def export_dir(settings) -> Path:
    return Path(settings.langfuse_export_dir)


def test_the_demo_days_in_the_legacy_layout_stage_what_the_enriched_layout_does(settings, tmp_path, sample):
    enriched, legacy = home(settings, tmp_path, "enriched"), home(settings, tmp_path, "legacy")
    for day, rows, seed in sample:
        write_export_day(export_dir(enriched), day, rows, seed)
    write_legacy_days(export_dir(legacy), sample)

    results = {}
    for which in (enriched, legacy):
        results[which.home] = materialize_day(which, selection=["langfuse_generations", "allocated_costs"])
        assert results[which.home].success
    assert staged(legacy) == staged(enriched) and len(staged(legacy)) == 300
    assert allocated(legacy) == allocated(enriched)
    meta, reference = (materialization_metadata(results[s.home], "langfuse_generations") for s in (legacy, enriched))
    for figure in ("dagster/row_count", "total_cost_usd", "unallocated_cost_usd", "unpriced_generations"):
        assert meta[figure] == reference[figure]
    assert meta["export_layout"] == "observations" and reference["export_layout"] == "observations_v2"
    assert meta["generations_without_trace"] == 0 and meta["traces_read"] == 900  # the day and the days around it
    assert check_evaluation(results[legacy.home], "extraction_complete").passed

    # The trace of the generation at midnight began the evening before: it sits in the previous day's last
    # window. The trace of the day's last generation was stamped after midnight: in the next day's first.
    previous, following = (export_dir(legacy) / PROJECT_ID / "traces" / name for name in
                           ("2026-11-21T00-00-00.jsonl.gz", "2026-11-22T01-00-00.jsonl.gz"))
    assert "t-obs-2026-11-21-midnight" in gzip.open(previous, "rt").read()
    assert "t-obs-2026-11-21-last" in gzip.open(following, "rt").read()
    midnight = query(legacy, "SELECT user_id, allocation FROM langfuse_generations WHERE observation_id = ?",
                     ["obs-2026-11-21-midnight"])
    assert midnight == query(enriched, "SELECT user_id, allocation FROM langfuse_generations WHERE observation_id = ?",
                             ["obs-2026-11-21-midnight"]) and midnight[0][0] is not None
    assert PROMPT_TEXT.encode() not in legacy.duckdb_path.read_bytes()


def _generations(n: int = 6) -> list[dict]:
    """Generations whose text fields hold what broke older CSV writers: commas, quotes, non-ASCII."""
    rows = []
    for i in range(n):
        row = generation(f"g{i}", f"2026-11-21 09:{i:02d}:00.000", cost=0.01 * (i + 1),
                         metadata={"feature": f"summarize, then answer #{i}", "team": 'the "core" team',
                                   "customer_id": f"café-{i}", "tier": "pro"},
                         tags=["campaign:spring, 2026", f"env:{i}"])
        row.update(user_id=f"user {i}", session_id=f"s-{i}", trace_name="chat, v2")
        rows.append(row)
    # what CSV writes as an empty cell (or, v3.146-v3.156, as the literal ""): nulls, not empty text
    rows[-1].update(user_id=None, project_id=None, cost_details={}, total_cost=None, model="acme-llama-ft",
                    provided_model_name="acme-llama-ft")
    return rows


def _stringify(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _csv(rows: list[dict], cell) -> str:
    """A CSV file with a header of quoted names and each row's cells as `cell(value)` writes them, raw."""
    header = list(rows[0])
    lines = [",".join(f'"{k}"' for k in header)]
    lines += [",".join(cell("" if r.get(k) is None else r[k]) for k in header) for r in rows]
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _v3_120(value) -> str:
    """v3.145 and before: JSON.stringify, CSV-quoted only when it holds a comma; else written raw."""
    text = _stringify(value)
    return _escape(text) if "," in text else text


def _v3_150(value) -> str:
    """v3.146-v3.156: every value JSON.stringify-ed, then CSV-quoted: text is a JSON string literal in its cell."""
    return _escape(_stringify(value))


def _v3_157(value) -> str:
    """v3.157 and later: text as it is, other values as JSON, all CSV-quoted."""
    return _escape(value if isinstance(value, str) else _stringify(value))


def write_legacy_csv(settings, rows: list[dict], cell) -> None:
    """One legacy export run over [08:00, 10:00] of DAY, observations and traces as CSV written by `cell`;
    and runs before and after it, so that the day is covered."""
    root = export_dir(settings) / PROJECT_ID
    obs = [observation(r) for r in rows]
    traces = [trace(r, datetime.strptime(r["start_time"], "%Y-%m-%d %H:%M:%S.%f") - timedelta(seconds=1)) for r in rows]
    if cell is not _v3_157:  # v3 before 3.164 exported no total_cost column; the cost is cost_details' total
        obs = [{k: v for k, v in o.items() if k != "total_cost"} for o in obs]
    for lo, hi, window_obs, window_traces in ((MIDNIGHT, MIDNIGHT + timedelta(hours=8), [], []),
                                              (MIDNIGHT + timedelta(hours=8), MIDNIGHT + timedelta(hours=10), obs, traces),
                                              (MIDNIGHT + timedelta(hours=10), MIDNIGHT + timedelta(days=1), [], [])):
        written = []
        for table, table_rows in (("observations", window_obs), ("traces", window_traces)):
            folder = root / table
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{hi:%Y-%m-%dT%H-%M-%S}.csv"
            path.write_text(_csv(table_rows, cell) if table_rows else "")
            written.append((path, len(table_rows)))
        write_manifest(export_dir(settings), PROJECT_ID, lo, hi, written, source="TRACES_OBSERVATIONS")


@pytest.mark.parametrize("cell", [_v3_120, _v3_150, _v3_157], ids=["v3.120", "v3.150", "v3.157"])
def test_every_csv_encoding_v3_wrote_stages_the_same_rows(settings, tmp_path, cell):
    rows = _generations()
    reference = home(settings, tmp_path, "jsonl")
    write_legacy_days_as_jsonl(reference, rows)
    csv_export = home(settings, tmp_path, "csv")
    write_legacy_csv(csv_export, rows, cell)
    for which in (reference, csv_export):
        result = materialize_day(which, selection=["langfuse_generations"])
        assert result.success and check_evaluation(result, "extraction_complete").passed
        assert materialization_metadata(result, "langfuse_generations")["quarantined_rows"] == 0
    assert staged(csv_export) == staged(reference)
    [allocation, user, tags] = query(csv_export, "SELECT allocation, user_id, tags FROM langfuse_generations "
                                                 "WHERE observation_id = 'g1'")[0]
    assert allocation["feature"] == "summarize, then answer #1" and allocation["team"] == 'the "core" team'
    assert allocation["customer_id"] == "café-1" and user == "user 1" and tags == ["campaign:spring, 2026", "env:1"]
    [(project, user, source, cost)] = query(csv_export, "SELECT project_id, user_id, cost_source, cost_usd "
                                                        "FROM langfuse_generations WHERE observation_id = 'g5'")
    assert (project, user, source, cost) == (PROJECT_ID, None, "unpriced", None)  # its folder's project; no user


def write_legacy_days_as_jsonl(settings, rows: list[dict]) -> None:
    root = export_dir(settings) / PROJECT_ID
    obs = [observation(r) for r in rows]
    traces = [trace(r, datetime.strptime(r["start_time"], "%Y-%m-%d %H:%M:%S.%f") - timedelta(seconds=1)) for r in rows]
    hi = MIDNIGHT + timedelta(days=1)
    written = [(write_table_file(root / table, hi, table_rows, "jsonl"), len(table_rows))
               for table, table_rows in (("observations", obs), ("traces", traces))]
    write_manifest(export_dir(settings), PROJECT_ID, MIDNIGHT, hi, written, source="TRACES_OBSERVATIONS")


def test_a_generation_whose_trace_is_nowhere_is_staged_with_what_it_has_and_counted(settings):
    rows = _generations(4)
    write_legacy_days_as_jsonl(settings, rows)
    # the trace of g2 began three days before (a long-running agent): outside every window read
    traces = export_dir(settings) / PROJECT_ID / "traces" / "2026-11-22T00-00-00.jsonl"
    kept = [line for line in traces.read_text().splitlines() if '"t-g2"' not in line]
    traces.write_text("\n".join(kept) + "\n")
    write_manifest(export_dir(settings), PROJECT_ID, MIDNIGHT, MIDNIGHT + timedelta(days=1),
                   [(export_dir(settings) / PROJECT_ID / "observations" / "2026-11-22T00-00-00.jsonl", 4), (traces, 3)],
                   source="TRACES_OBSERVATIONS")
    instance = dg.DagsterInstance.ephemeral()
    result = materialize_day(settings, selection=["langfuse_generations"], instance=instance)
    assert result.success
    meta = materialization_metadata(result, "langfuse_generations")
    assert meta["dagster/row_count"] == 4 and meta["generations_without_trace"] == 1
    [(user, allocation)] = query(settings, "SELECT user_id, allocation FROM langfuse_generations WHERE observation_id = 'g2'")
    assert user is None and allocation == {"feature": "unallocated", "customer_id": "unallocated", "team": "unallocated",
                                           "environment": "production", "tier": "unallocated"}  # the observation's own
    logs = " ".join(entry.user_message for entry in instance.all_logs(result.run_id))
    assert "1 of 4 generations found no trace (e.g. trace ids t-g2)" in logs
    unallocated = check_evaluation(result, "unallocated_cost_share")
    assert "1 generations found no trace, so their trace-level keys are unknown" in unallocated.description


def test_an_export_with_both_layouts_counts_each_generation_once(settings, tmp_path, sample):
    """TRACES_OBSERVATIONS_EVENTS writes the same observations to observations/ and observations_v2/."""
    both = home(settings, tmp_path, "both")
    for day, rows, seed in sample:
        write_export_day(export_dir(both), day, rows, seed)
    write_legacy_days(export_dir(both), sample)
    enriched = home(settings, tmp_path, "enriched")
    for day, rows, seed in sample:
        write_export_day(export_dir(enriched), day, rows, seed)
    for which in (both, enriched):
        assert materialize_day(which, selection=["langfuse_generations"]).success
    assert query(both, "SELECT * EXCLUDE (source_file) FROM langfuse_generations ORDER BY observation_id") == \
        query(enriched, "SELECT * EXCLUDE (source_file) FROM langfuse_generations ORDER BY observation_id")


def write_hours(settings, rows: list[dict], layout: str, hours: range, project_id: str = PROJECT_ID) -> None:
    """Hourly export runs of DAY over `hours`, in one `layout` (observations_v2 or observations + traces)."""
    root = export_dir(settings) / project_id
    for hour in hours:
        lo, hi = MIDNIGHT + timedelta(hours=hour), MIDNIGHT + timedelta(hours=hour + 1)
        low, high = (f"{t:%Y-%m-%d %H:%M:%S.%f}" for t in (lo, hi))
        window = [r for r in rows if low <= r["start_time"] <= high]
        if layout == "observations_v2":
            tables = {"observations_v2": window}
        else:
            tables = {"observations": [observation(r) for r in window],
                      "traces": [trace(r, datetime.strptime(r["start_time"], "%Y-%m-%d %H:%M:%S.%f")) for r in window]}
        written = [(write_table_file(root / table, hi, table_rows, "jsonl.gz"), len(table_rows))
                   for table, table_rows in tables.items()]
        write_manifest(export_dir(settings), project_id, lo, hi, written,
                       source="EVENTS" if layout == "observations_v2" else "TRACES_OBSERVATIONS")


def test_a_day_the_export_switched_layouts_reads_each_part_from_its_own(settings, tmp_path, sample):
    """The export moved from TRACES_OBSERVATIONS to EVENTS at noon: the morning is legacy, the afternoon enriched."""
    [(day, rows, seed)] = [s for s in sample if s[0] == DAY]
    write_hours(settings, rows, "observations", range(0, 12))
    write_hours(settings, rows, "observations_v2", range(12, 24))
    enriched = home(settings, tmp_path, "enriched")
    write_hours(enriched, rows, "observations_v2", range(0, 24))
    layouts = {}
    for which in (settings, enriched):
        result = materialize_day(which, selection=["langfuse_generations"])
        assert result.success
        layouts[which.home] = materialization_metadata(result, "langfuse_generations")["export_layout"]
    assert layouts == {settings.home: "observations_v2+observations", enriched.home: "observations_v2"}
    assert staged(settings) == staged(enriched) and len(staged(settings)) == 300


def test_a_day_neither_layout_covers_fails_naming_what_each_covers(settings, sample):
    [(day, rows, seed)] = [s for s in sample if s[0] == DAY]
    write_hours(settings, rows, "observations", range(0, 10))
    write_hours(settings, rows, "observations_v2", range(12, 24))
    result = materialize_day(settings, selection=["langfuse_generations"])
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert "cm-demo-project/observations_v2+observations covers 2026-11-21 00:00:00 UTC .. 2026-11-22 00:00:00 UTC" in message
    assert "not covered: 2026-11-21 10:00:00 UTC .. 2026-11-21 12:00:00 UTC" in message


def test_a_trace_row_that_cannot_be_read_is_quarantined_on_its_own_day_and_counted(settings):
    rows = _generations(3)
    write_legacy_days_as_jsonl(settings, rows)
    traces = export_dir(settings) / PROJECT_ID / "traces" / "2026-11-22T00-00-00.jsonl"
    traces.write_text(traces.read_text() + '{"id": "t-broken", "timestamp": "2026-11-21 10:00:00.000", "tags": [\n')
    observations = export_dir(settings) / PROJECT_ID / "observations" / "2026-11-22T00-00-00.jsonl"
    write_manifest(export_dir(settings), PROJECT_ID, MIDNIGHT, MIDNIGHT + timedelta(days=1),
                   [(observations, 3), (traces, 4)], source="TRACES_OBSERVATIONS")  # the writer counted it
    result = materialize_day(settings, selection=["langfuse_generations"])
    assert result.success
    [(line, reason)] = query(settings, "SELECT line, reason FROM quarantine WHERE day = ?", [DAY])
    assert (line, reason) == (4, "malformed trace line: not a JSON object")
    meta = materialization_metadata(result, "langfuse_generations")
    assert meta["quarantined_rows"] == 1 and meta["generations_without_trace"] == 0
    complete = check_evaluation(result, "extraction_complete")  # read whole: 4 trace rows, one of them quarantined
    assert complete.passed and complete.description.startswith("2 export files read whole, 7 rows (3 observations, 4 traces)")
    # the next day reads the same traces file (its generations' traces may be there) but does not quarantine it again
    next_day = materialize_day(settings, DAY + timedelta(days=1), selection=["langfuse_generations"])
    assert not next_day.success or query(settings, "SELECT count(*) FROM quarantine")[0][0] == 1


def test_a_traces_file_short_of_its_manifest_fails_the_day(settings):
    rows = _generations(3)
    write_legacy_days_as_jsonl(settings, rows)
    traces = export_dir(settings) / PROJECT_ID / "traces" / "2026-11-22T00-00-00.jsonl"
    traces.write_text(traces.read_text().splitlines()[0] + "\n")  # two traces lost in transfer
    result = materialize_day(settings, selection=["langfuse_generations", "allocated_costs"])
    assert failed_on_checks(result) == {"langfuse_generations"}
    complete = check_evaluation(result, "extraction_complete")
    assert complete.severity == dg.AssetCheckSeverity.ERROR
    assert "traces/2026-11-22T00-00-00.jsonl: read 1 rows, its manifest says 3 (-2 rows against its manifest)" in \
        complete.description


def test_a_traces_file_its_manifest_lists_but_the_export_lacks_fails_the_day(settings):
    rows = _generations(3)
    write_legacy_days_as_jsonl(settings, rows)
    (export_dir(settings) / PROJECT_ID / "traces" / "2026-11-22T00-00-00.jsonl").unlink()  # lost: allocation with it
    result = materialize_day(settings, selection=["langfuse_generations", "allocated_costs"])
    assert failed_on_checks(result) == {"langfuse_generations"}
    complete = check_evaluation(result, "extraction_complete")
    assert "traces/2026-11-22T00-00-00.jsonl: read 0 rows, its manifest says 3 (listed in its manifest, missing " \
        "from the export)" in complete.description
    assert not query(settings, "SELECT count(*) FROM allocated_costs WHERE day = ?", [DAY])[0][0]


def test_a_day_whose_traces_stop_short_of_its_observations_fails_naming_the_hole(settings, sample):
    """An export older than v3.213 writes no manifests: only the files say what is covered."""
    [(day, rows, seed)] = [s for s in sample if s[0] == DAY]
    write_hours(settings, rows, "observations", range(0, 24))
    for manifest in (export_dir(settings) / PROJECT_ID / "manifests").iterdir():
        manifest.unlink()
    for late in sorted((export_dir(settings) / PROJECT_ID / "traces").iterdir())[18:]:
        late.unlink()  # the evening's traces never arrived
    result = materialize_day(settings, selection=["langfuse_generations"])
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert f"{PROJECT_ID}/traces covers the beginning .. 2026-11-21 18:00:00 UTC" in message
    assert "not covered: 2026-11-21 18:00:00 UTC .. 2026-11-22 00:00:00 UTC" in message


def test_several_projects_under_one_prefix_are_all_read_and_project_id_is_a_finout_dimension(settings, sample):
    """A v3 project in the legacy layout and a Cloud project in the enriched one, under one export prefix."""
    [(day, rows, seed)] = [s for s in sample if s[0] == DAY]
    cloud = [{**r, "id": f"cloud-{r['id']}", "project_id": "cm-cloud"} for r in rows]
    write_legacy_days(export_dir(settings), [(day, rows, seed)])
    write_export_day(export_dir(settings), day, cloud, seed, project_id="cm-cloud")
    dimensions = replace_settings(settings, finout_dimensions=["project_id", "feature", "provider"])
    result = materialize_day(dimensions, selection=["langfuse_generations", "allocated_costs", "finout_upload",
                                                    "focus_export"])
    assert result.success
    meta = materialization_metadata(result, "langfuse_generations")
    assert meta["projects"] == 2 and meta["export_layout"] == "observations, observations_v2"
    table = [[cell.strip() for cell in line.split("|")[1:-1]] for line in meta["by_project"].splitlines()[2:]]
    assert [row[:3] for row in table] == [["cm-cloud", "export observations_v2", "300"],
                                          [PROJECT_ID, "export observations", "300"]]
    by_project = dict(query(settings, "SELECT project_id, count(*) FROM langfuse_generations GROUP BY ALL"))
    assert by_project == {PROJECT_ID: 300, "cm-cloud": 300}
    delivered = (Path(settings.finout_dir) / "llm-costs-2026-11-21.csv").read_text().splitlines()
    assert delivered[0] == "UsageDate,Cost,project_id,feature,provider"
    cost: dict[str, float] = {}
    for line in csv.reader(io.StringIO("\n".join(delivered[1:]))):
        cost[line[2]] = cost.get(line[2], 0) + float(line[1])
    assert set(cost) == {PROJECT_ID, "cm-cloud"} and cost[PROJECT_ID] == pytest.approx(cost["cm-cloud"])
    # the FOCUS file keeps the projects' rows apart and says whose they are: no two rows are the same
    focus = list(csv.DictReader(io.StringIO((Path(settings.focus_dir) / "focus-2026-11-21.csv").read_text())))
    assert {r["x_LangfuseProjectId"] for r in focus} == {PROJECT_ID, "cm-cloud"}
    assert len({tuple(r.values()) for r in focus}) == len(focus)
    # without project_id among the dimensions, the two projects' rows of one feature and provider are one row
    undivided = replace_settings(settings, finout_dimensions=["feature", "provider"])
    assert materialize_day(undivided, selection=["finout_upload"]).success
    lines = list(csv.reader(io.StringIO((Path(settings.finout_dir) / "llm-costs-2026-11-21.csv").read_text())))
    keys = [tuple(line[2:]) for line in lines[1:]]
    assert lines[0] == ["UsageDate", "Cost", "feature", "provider"] and len(keys) == len(set(keys))
    assert sum(float(line[1]) for line in lines[1:]) == pytest.approx(sum(cost.values()))


def test_a_retired_project_under_the_prefix_is_left_out_by_naming_the_projects_to_read(settings, sample):
    """One project stopped exporting three days before the day: it blocks the day (its cost is unknown) until
    the projects to read are named."""
    [(day, rows, seed)] = [s for s in sample if s[0] == DAY]
    write_export_day(export_dir(settings), day, rows, seed)
    old = DAY - timedelta(days=3)
    write_export_day(export_dir(settings), old, day_rows(old, 50, 9), 9, project_id="cm-retired")
    result = materialize_day(settings, selection=["langfuse_generations"])
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "cm-retired/observations_v2 covers" in failure.step_failure_data.error.message
    assert "name the projects to read in FINOPS_LANGFUSE_PROJECTS" in failure.step_failure_data.error.message
    chosen = replace_settings(settings, langfuse_projects=[PROJECT_ID])
    assert materialize_day(chosen, selection=["langfuse_generations"]).success
    assert query(settings, "SELECT DISTINCT project_id FROM langfuse_generations") == [(PROJECT_ID,)]
    wrong = materialize_day(replace_settings(settings, langfuse_projects=["cm-typo"]), selection=["langfuse_generations"])
    [failure] = [e for e in wrong.all_events if e.is_step_failure]
    assert f"No project of FINOPS_LANGFUSE_PROJECTS (cm-typo) under {export_dir(settings)}; it holds cm-demo-project, " \
           "cm-retired" in failure.step_failure_data.error.message
