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
Reading the rows is sources/observation_rows.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

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
