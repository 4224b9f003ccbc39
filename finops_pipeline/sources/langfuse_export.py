"""Read a Langfuse blob-storage export folder, exactly as Langfuse writes it.

Layout (langfuse/langfuse worker/src/features/blobstorage):
    {prefix}{projectId}/observations_v2/{maxTimestamp}.{jsonl.gz|jsonl|csv.gz|csv|json.gz|json|parquet}
    {prefix}{projectId}/manifests/{maxTimestamp}.json      written last: the run's commit point
The file name is the export window's *end* (`YYYY-MM-DDTHH-MM-SS`, UTC). A window selects rows by
`start_time` with both bounds inclusive, so a row at exactly the bound sits in two files, and a day's
last rows sit in a file named after the next day's first minutes.

Where a project has manifests, only files listed in one are read (an unlisted file may still be being
written) and the window comes from the manifest. Older exports have no manifests: a file's window is
then the span from the previous file's name to its own.

Rows are read by DuckDB straight from the files into a temp table of the fields cost allocation needs:
the line text, which may hold prompt and completion text, never leaves the read statement.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb
from pydantic import BaseModel, ConfigDict, Field, ValidationError

TABLE_DIRS = ("observations_v2", "observations")
_NAME = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2})\.(jsonl\.gz|jsonl|csv\.gz|csv|json\.gz|json|parquet)$")


class ManifestWindow(BaseModel):
    min_timestamp: datetime = Field(alias="minTimestamp")
    max_timestamp: datetime = Field(alias="maxTimestamp")


class ManifestFile(BaseModel):
    model_config = ConfigDict(extra="ignore")
    key: str
    table: str


class ExportManifest(BaseModel):
    """`{projectId}/manifests/{ts}.json`, written by Langfuse after every file of a run is uploaded."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    version: int
    project_id: str = Field(alias="projectId")
    window: ManifestWindow
    created_at: datetime | None = Field(default=None, alias="createdAt")
    files: list[ManifestFile]


@dataclass(frozen=True)
class ExportFile:
    path: Path
    format: str  # jsonl | csv | json | parquet
    window_start: datetime | None  # None: unknown (first file of a manifest-less export)
    window_end: datetime

    def overlaps(self, start: datetime, end: datetime) -> bool:
        """Does the inclusive window [window_start, window_end] meet the half-open day [start, end)?"""
        return self.window_end >= start and (self.window_start is None or self.window_start < end)


@dataclass
class ExportListing:
    files: list[ExportFile]  # ordered oldest export first: later files win on duplicate ids
    unlisted: list[Path]  # files no manifest names yet (still being written?): skipped
    unreadable_manifests: list[tuple[Path, str]]


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def _name_time(path: Path) -> datetime | None:
    m = _NAME.match(path.name)
    return datetime.strptime(m.group(1), "%Y-%m-%dT%H-%M-%S").replace(tzinfo=timezone.utc) if m else None


def _format(path: Path) -> str:
    name = path.name.removesuffix(".gz")
    return name.rsplit(".", 1)[-1]


def list_export_files(export_dir: Path) -> ExportListing:
    """Every observation file of every project under `export_dir`, with its export window."""
    if not export_dir.is_dir():
        raise FileNotFoundError(
            f"Langfuse export folder not found: {export_dir} "
            "(set FINOPS_LANGFUSE_EXPORT_DIR, or run `make demo` to write sample data)"
        )
    files: list[ExportFile] = []
    unlisted: list[Path] = []
    bad_manifests: list[tuple[Path, str]] = []
    for table_dir in sorted(p for name in TABLE_DIRS for p in export_dir.rglob(name) if p.is_dir()):
        project_dir = table_dir.parent
        data_files = sorted(p for p in table_dir.iterdir() if _name_time(p))
        manifest_dir = project_dir / "manifests"
        if manifest_dir.is_dir():
            windows: dict[Path, tuple[datetime, datetime]] = {}
            for manifest_path in sorted(manifest_dir.glob("*.json")):
                try:
                    manifest = ExportManifest.model_validate_json(manifest_path.read_bytes())
                except (ValidationError, OSError) as exc:
                    bad_manifests.append((manifest_path, str(exc).splitlines()[0]))
                    continue
                window = (_utc(manifest.window.min_timestamp), _utc(manifest.window.max_timestamp))
                for entry in manifest.files:
                    # keys carry the bucket prefix; the file sits at the same place below the project folder
                    windows[project_dir / table_dir.name / Path(entry.key).name] = window
            for path in data_files:
                if path in windows:
                    start, end = windows[path]
                    files.append(ExportFile(path, _format(path), start, end))
                else:
                    unlisted.append(path)
        else:
            previous_end: datetime | None = None
            for path in data_files:
                end = _name_time(path)
                files.append(ExportFile(path, _format(path), previous_end, end))
                previous_end = end
    files.sort(key=lambda f: (f.window_end, str(f.path)))
    return ExportListing(files, unlisted, bad_manifests)


# The fields cost allocation needs, as DuckDB reads them from one JSON object per row. Nested values stay
# JSON so that validation can say exactly what was wrong; `io` fields are never named, so never read.
_FIELDS = {
    "id": "VARCHAR", "trace_id": "VARCHAR", "project_id": "VARCHAR", "type": "VARCHAR", "name": "VARCHAR",
    "start_time": "VARCHAR", "environment": "VARCHAR", "user_id": "VARCHAR", "session_id": "VARCHAR",
    "provided_model_name": "VARCHAR", "model": "VARCHAR", "usage_details": "JSON", "cost_details": "JSON",
    "total_cost": "JSON", "prompt_name": "VARCHAR", "prompt_version": "VARCHAR", "tags": "JSON", "metadata": "JSON",
}
ROW_STRUCT = "'" + json.dumps(_FIELDS) + "'"

EXPORT_ROWS_DDL = """
CREATE OR REPLACE TEMP TABLE export_rows (
    file_rank INTEGER, file VARCHAR, line BIGINT, is_object BOOLEAN,
    id VARCHAR, trace_id VARCHAR, project_id VARCHAR, type VARCHAR, name VARCHAR, start_time VARCHAR,
    environment VARCHAR, user_id VARCHAR, session_id VARCHAR, model VARCHAR,
    usage_details JSON, cost_details JSON, total_cost JSON,
    prompt_name VARCHAR, prompt_version VARCHAR, tags JSON, metadata JSON
)
"""

# One statement a file: `{lines}` yields (line, text) where text is one JSON object's text (or not).
_READ_FILE = f"""
INSERT INTO export_rows
WITH lines AS ({{lines}}),
parsed AS (
    -- CASE, not AND: only CASE keeps json_type from seeing text that is not JSON.
    SELECT line, CASE WHEN json_valid(text) THEN json_type(text) = 'OBJECT' ELSE false END AS is_object, text
    FROM lines WHERE text IS NOT NULL AND trim(text) <> ''
),
rows AS (
    SELECT line, is_object, CASE WHEN is_object THEN from_json(text, {ROW_STRUCT}) END AS r FROM parsed
)
SELECT $rank, $file, line, is_object,
       r.id, r.trace_id, r.project_id, r.type, r.name, r.start_time, r.environment, r.user_id, r.session_id,
       coalesce(r.provided_model_name, r.model), r.usage_details, r.cost_details, r.total_cost,
       r.prompt_name, r.prompt_version, r.tags, r.metadata
FROM rows
"""

_LINES = {
    # Each physical line is one value: no delimiter or quote can split it.
    "jsonl": "SELECT row_number() OVER () AS line, text FROM read_csv($file, columns={'text': 'VARCHAR'},"
    " header=false, delim=chr(1), quote='', escape='', auto_detect=false, max_line_size=268435456)",
    "json": "SELECT row_number() OVER () AS line, json::VARCHAR AS text"
    " FROM read_json($file, format='array', records=false, maximum_object_size=268435456)",
    # Langfuse quotes every CSV cell and writes objects and arrays as JSON strings; `line` is the record
    # number counting the header as line 1.
    "csv": "SELECT row_number() OVER () + 1 AS line, to_json(t)::VARCHAR AS text"
    " FROM read_csv($file, header=true, all_varchar=true, auto_detect=true,"
    " store_rejects=true, rejects_scan='csv_rejects_scan', rejects_table='csv_rejects') t",
    "parquet": "SELECT file_row_number + 1 AS line, to_json(t)::VARCHAR AS text"
    " FROM read_parquet($file, file_row_number=true) t",
}


# What a broken file raises. Anything else (a binder or parser error) is a bug here, and must fail loudly.
_UNREADABLE = (duckdb.IOException, duckdb.InvalidInputException, duckdb.ConversionException)


@dataclass(frozen=True)
class Rejected:
    """What could not be read at all: a whole file (line None) or one CSV record."""

    file: Path
    line: int | None
    reason: str


def read_export_files(conn: duckdb.DuckDBPyConnection, files: list[ExportFile]) -> list[Rejected]:
    """Load `files` into the temp table `export_rows`; return what could not be read, and why.

    Also fills `export_files` (file_rank -> the day the file's window starts): where rows that carry no
    readable time of their own are filed. A file that fails to read (corrupt gzip, truncated parquet, ...)
    adds no rows: each file is one statement, and the day goes on with the others.
    """
    conn.execute(EXPORT_ROWS_DDL)
    conn.execute("CREATE OR REPLACE TEMP TABLE export_files (file_rank INTEGER, file_day DATE)")
    conn.execute("INSERT INTO export_files SELECT unnest($ranks), unnest($days)",
                 {"ranks": list(range(len(files))), "days": [(f.window_start or f.window_end).date() for f in files]})
    rejected: list[Rejected] = []
    for rank, export_file in enumerate(files):
        sql = _READ_FILE.replace("{lines}", _LINES[export_file.format])
        try:
            conn.execute(sql, {"rank": rank, "file": str(export_file.path)})
        except _UNREADABLE as exc:
            rejected.append(Rejected(export_file.path, None, f"unreadable {export_file.format} file: {_first_line(exc)}"))
            continue
        if export_file.format == "csv":
            for line, error in conn.execute("SELECT line, error_message FROM csv_rejects ORDER BY line").fetchall():
                rejected.append(Rejected(export_file.path, line, f"malformed CSV record: {error[:200]}"))
    return rejected


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:300]
