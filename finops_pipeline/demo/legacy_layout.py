"""The sample's days as a self-hosted Langfuse v3 exports them: the legacy layout (export source
TRACES_OBSERVATIONS), `observations/` and `traces/` side by side, in the shapes v3 writes
(langfuse/langfuse v3.150, worker blobstorage; see sources/legacy_export.py):

- observations carry only their own metadata (none here: the SDK set it on the trace) and no user, session
  or tags; times are DateTime64(3) text; usage counts are quoted (ClickHouse before 25.8 quotes UInt64 in
  JSON); `total_cost` is null when Langfuse had no price;
- traces carry the metadata, tags, user and session, each in the window of its `timestamp`: a trace begins
  just before its first generation, so a generation at midnight has its trace in the previous day's last
  window; the day's last generation's trace was stamped just after it, in the next day's first window;
- CSV as v3.146-v3.156 wrote it: every text cell a JSON string literal (the cell `"obs-1"` holds `obs-1`), objects and arrays
  JSON text; Parquet as ClickHouse writes it (maps, lists, millisecond timestamps).
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb

from finops_pipeline.demo.sample_data import PROJECT_ID, _midnight_row, _write_csv_gz, write_manifest, write_table_file

PROMPT_TEXT = "SECRET PROMPT TEXT"  # never to be stored
_TRACE_LEAD = timedelta(milliseconds=50)  # a trace begins this long before its generation
_LATE_TRACE = timedelta(milliseconds=2)  # the day's last generation's trace is stamped this long after it


def _ms(text: str) -> str:
    """DateTime64(3) text from the sample's DateTime64(6) text."""
    return text[:23]


def _moment(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f")


def observation(row: dict) -> dict:
    """A sample observation as v3's `observations` table exports it."""
    priced = bool(row.get("cost_details"))
    return {
        "id": row["id"], "trace_id": row["trace_id"], "project_id": row["project_id"],
        "environment": row["environment"], "type": row["type"], "parent_observation_id": None,
        "start_time": _ms(row["start_time"]), "end_time": _ms(row.get("end_time") or row["start_time"]),
        "name": row["name"], "metadata": {}, "level": "DEFAULT", "status_message": None, "version": None,
        "input": json.dumps([{"role": "user", "content": PROMPT_TEXT}]), "output": None,
        "provided_model_name": row.get("provided_model_name"), "model_parameters": {"temperature": "0"},
        "usage_details": {k: str(v) for k, v in row["usage_details"].items()},
        "cost_details": row["cost_details"], "completion_start_time": None,
        "prompt_name": row.get("prompt_name"), "prompt_version": row.get("prompt_version"),
        "total_cost": row["cost_details"]["total"] if priced else None,
    }


def trace(row: dict, timestamp: datetime) -> dict:
    """The trace of a sample generation (one trace per generation) as v3's `traces` table exports it."""
    return {
        "id": row["trace_id"], "timestamp": timestamp.strftime("%Y-%m-%d %H:%M:%S.%f")[:23],
        "name": row.get("trace_name"), "environment": row["environment"], "project_id": row["project_id"],
        "metadata": row.get("metadata") or {}, "user_id": row.get("user_id"), "session_id": row.get("session_id"),
        "release": None, "version": None, "public": False, "bookmarked": False, "tags": row.get("tags") or [],
        "input": json.dumps({"question": PROMPT_TEXT, "locale": "en"}), "output": None,
    }


def _csv_v3_150(path: Path, rows: list[dict]) -> None:
    """CSV as Langfuse v3.146-v3.156 wrote it: `escapeCsvField(JSON.stringify(value))` for every cell, so text
    is a JSON string literal inside the CSV quoting; null is written as ""."""
    _write_csv_gz(path, rows, cell=lambda value: json.dumps("" if value is None else value, separators=(",", ":")))


_PARQUET = {
    "observations": {
        "id": "VARCHAR", "trace_id": "VARCHAR", "project_id": "VARCHAR", "environment": "VARCHAR", "type": "VARCHAR",
        "start_time": "TIMESTAMP_MS", "name": "VARCHAR", "metadata": "MAP(VARCHAR, VARCHAR)",
        "provided_model_name": "VARCHAR", "usage_details": "MAP(VARCHAR, UBIGINT)",
        "cost_details": "MAP(VARCHAR, DECIMAL(18, 12))", "total_cost": "DECIMAL(18, 12)", "prompt_name": "VARCHAR",
        "prompt_version": "USMALLINT", "input": "VARCHAR", "output": "VARCHAR",
    },
    "traces": {
        "id": "VARCHAR", "timestamp": "TIMESTAMP_MS", "name": "VARCHAR", "environment": "VARCHAR",
        "project_id": "VARCHAR", "metadata": "MAP(VARCHAR, VARCHAR)", "user_id": "VARCHAR", "session_id": "VARCHAR",
        "tags": "VARCHAR[]", "input": "VARCHAR", "output": "VARCHAR",
    },
}


def _parquet_of(table: str):
    def write(path: Path, rows: list[dict]) -> None:
        """As ClickHouse's Parquet output: maps as MAP, arrays as LIST, DateTime64(3) as millisecond timestamps."""
        tmp = path.with_suffix(".tmp.jsonl")
        tmp.write_text("".join(json.dumps({**r, "cost_details": {k: str(v) for k, v in (r.get("cost_details") or {}).items()}})
                               + "\n" for r in rows))
        with duckdb.connect() as conn:
            conn.execute(f"COPY (SELECT * FROM read_json(?, format='newline_delimited', columns={_PARQUET[table]!r})) "
                         f"TO '{path}' (FORMAT parquet)", [str(tmp)])
        tmp.unlink()
    return write


def write_legacy_days(export_dir: Path, days: list[tuple[date, list[dict], int]], project_id: str = PROJECT_ID) -> None:
    """The sample `days` ((day, its rows from sample_data.day_rows, its seed)) as hourly legacy export runs:
    each window [h, h+1] inclusive writes its observations and its traces, then one manifest for both."""
    first = datetime.combine(days[0][0], datetime.min.time())
    last = datetime.combine(days[-1][0], datetime.min.time()) + timedelta(days=1)
    observations, traces = [], []
    for day, rows, seed in days:
        generations = [r for r in rows if r["type"] == "GENERATION"]
        observations += [observation(r) for r in rows]
        for r in generations:
            at = _moment(r["start_time"]) - _TRACE_LEAD
            if r["id"].endswith("-last"):
                at = _moment(r["start_time"]) + _LATE_TRACE
            traces.append(trace(r, min(max(at, first), last)))  # within the windows the sample writes
        if day == days[-1][0]:  # the last window also holds the next day's midnight row, as the enriched one does
            observations.append(observation(_midnight_row(day + timedelta(days=1), seed + 1)))
    hours = int((last - first) / timedelta(hours=1))
    for hour in range(hours):
        lo, hi = first + timedelta(hours=hour), first + timedelta(hours=hour + 1)
        low, high = lo.strftime("%Y-%m-%d %H:%M:%S.%f")[:23], hi.strftime("%Y-%m-%d %H:%M:%S.%f")[:23]
        ext = {6: "parquet", 12: "csv.gz"}.get(hour % 24, "jsonl.gz")
        written = []
        for table, rows, time in (("observations", observations, "start_time"), ("traces", traces, "timestamp")):
            window = [r for r in rows if low <= r[time] <= high]
            path = write_table_file(export_dir / project_id / table, hi, window, ext,
                                    writers={"csv.gz": _csv_v3_150, "parquet": _parquet_of(table)})
            written.append((path, None if ext == "parquet" else len(window)))
        write_manifest(export_dir, project_id, lo, hi, written, source="TRACES_OBSERVATIONS")
