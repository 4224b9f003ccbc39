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
from datetime import date, datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

TABLE_DIRS = ("observations_v2", "observations")
_NAME = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2})\.(jsonl\.gz|jsonl|csv\.gz|csv|json\.gz|json|parquet)$")


class ManifestWindow(BaseModel):
    min_timestamp: datetime = Field(alias="minTimestamp")
    max_timestamp: datetime = Field(alias="maxTimestamp")


class ManifestFile(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    key: str
    table: str
    # Rows written to the file (since Langfuse v3.213 with the manifests); null for Parquet, whose writer
    # cannot count its binary stream.
    row_count: int | None = Field(default=None, alias="rowCount", ge=0)


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
    window_start: datetime | None  # None: from the beginning (the first file of a manifest-less export)
    window_end: datetime
    row_count: int | None = None  # rows its manifest says it holds; None: not stated

    @property
    def export(self) -> Path:
        """The folder of the export this file belongs to (`{projectId}/{table}`): windows follow each other in it."""
        return self.path.parent

    def overlaps(self, start: datetime, end: datetime) -> bool:
        """Does the inclusive window [window_start, window_end] meet the half-open day [start, end)?"""
        return self.window_end >= start and (self.window_start is None or self.window_start < end)


@dataclass(frozen=True)
class Coverage:
    """What one export's windows say about a day: the span they cover, and the parts of the day they miss."""

    export: Path
    first: datetime | None  # None: from the beginning (a first file with no manifest)
    last: datetime
    holes: list[tuple[datetime, datetime]]


def coverage(files: list[ExportFile], start: datetime, end: datetime) -> list[Coverage]:
    """Per export folder, the parts of the half-open day [start, end) that none of its windows cover.
    Windows include both bounds (Langfuse selects `start_time >= min AND <= max`), so a window that starts
    where the previous one ends leaves no hole. A first file without a manifest covers everything before
    it: Langfuse's first run exports from the oldest row on."""
    by_export: dict[Path, list[ExportFile]] = {}
    for f in files:
        by_export.setdefault(f.export, []).append(f)
    result = []
    for export, windows in sorted(by_export.items()):
        windows.sort(key=lambda f: (f.window_start is not None, f.window_start or f.window_end, f.window_end))
        holes, reach = [], start
        for f in windows:
            if f.window_end < reach:
                continue
            if f.window_start is not None and f.window_start > reach and reach < end:
                holes.append((reach, min(f.window_start, end)))
            reach = max(reach, f.window_end)
        if reach < end:
            holes.append((reach, end))
        first = None if windows[0].window_start is None else min(f.window_start for f in windows)
        result.append(Coverage(export, first, max(f.window_end for f in windows), holes))
    return result


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
            windows: dict[Path, tuple[datetime, datetime, int | None]] = {}
            for manifest_path in sorted(manifest_dir.glob("*.json")):
                try:
                    manifest = ExportManifest.model_validate_json(manifest_path.read_bytes())
                except (ValidationError, OSError) as exc:
                    bad_manifests.append((manifest_path, str(exc).splitlines()[0]))
                    continue
                window = (_utc(manifest.window.min_timestamp), _utc(manifest.window.max_timestamp))
                for entry in manifest.files:
                    # keys carry the bucket prefix; the file sits at the same place below the project folder
                    windows[project_dir / table_dir.name / Path(entry.key).name] = (*window, entry.row_count)
            for path in data_files:
                if path in windows:
                    files.append(ExportFile(path, _format(path), *windows[path]))
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


# Langfuse's first run of a project with no data starts its window at the epoch: such a start says nothing.
_OLDEST_WINDOW = datetime(2023, 1, 1, tzinfo=timezone.utc)


def first_export_day(export_dir: Path) -> date | None:
    """The first UTC day a local export folder covers: its oldest file's manifest window start, else (no
    manifest, or a start before Langfuse existed) the day of its name. None when there is no such folder.
    Cheap enough for every load of the code: one directory listing per table folder and one manifest read."""
    if not export_dir.is_dir():
        return None
    oldest = min((p for name in TABLE_DIRS for d in export_dir.rglob(name) if d.is_dir()
                  for p in d.iterdir() if _name_time(p)), key=lambda p: p.name, default=None)
    if oldest is None:
        return None
    start = _name_time(oldest)
    try:
        manifest = ExportManifest.model_validate_json((oldest.parent.parent / "manifests" / f"{oldest.name.split('.')[0]}.json").read_bytes())
        if _utc(manifest.window.min_timestamp) >= _OLDEST_WINDOW:
            start = _utc(manifest.window.min_timestamp)
    except (OSError, ValidationError):
        pass
    return start.date()
