"""Where a Langfuse blob export's files are, which window each holds, and which to read for a day.

Layout (langfuse/langfuse worker/src/features/blobstorage):
    {prefix}{projectId}/observations_v2/{maxTimestamp}.{jsonl.gz|jsonl|csv.gz|csv|json.gz|json|parquet}
    {prefix}{projectId}/observations/{maxTimestamp}.{...}   the legacy layout: observations without their
    {prefix}{projectId}/traces/{maxTimestamp}.{...}         trace's user, session, tags and metadata
    {prefix}{projectId}/manifests/{maxTimestamp}.json       written last: the run's commit point
Export source `EVENTS` (Cloud, self-hosted v4) writes observations_v2; `TRACES_OBSERVATIONS` (self-hosted
v3) writes observations and traces; `TRACES_OBSERVATIONS_EVENTS` writes all three. The file name is the
export window's *end* (`YYYY-MM-DDTHH-MM-SS`, UTC). A window selects observations by `start_time` and
traces by `timestamp`, both bounds inclusive, so a row at exactly the bound sits in two files, and a day's
last rows sit in a file named after the next day's first minutes.

Where a project has manifests, only files listed in one are read (an unlisted file may still be being
written) and the window comes from the manifest. Older exports have no manifests: a file's window is
then the span from the previous file's name to its own.

The export is a local folder or a bucket (sources/object_storage.py): one listing of everything below its
root, then one read per manifest. A file is named by its URL (`s3://bucket/key`) or local path, as DuckDB
reads it. Reading the rows is sources/export_files.py.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from finops_pipeline.sources.object_storage import ExportLocationError, Location, locate

ENRICHED, LEGACY, TRACES = "observations_v2", "observations", "traces"
TABLE_DIRS = (ENRICHED, LEGACY, TRACES)
# A generation's trace may have started before the day, or been stamped after it: the legacy layout reads
# the traces of the windows this far around the day.
TRACE_MARGIN = timedelta(days=1)
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
    path: str  # its URL (s3://bucket/key) or local path, as DuckDB reads it
    format: str  # jsonl | csv | json | parquet
    window_start: datetime | None  # None: from the beginning (the first file of a manifest-less export)
    window_end: datetime
    row_count: int | None = None  # rows its manifest says it holds; None: not stated
    local: str | None = None  # where a copy of a bucket's object was fetched to (object_storage.fetch)
    absent: bool = False  # a manifest lists it, but the export does not hold it: nothing to read, a day not whole
    stamp: str = ""  # its size and modification time as the store lists them: a file rewritten changes it

    @property
    def readable(self) -> str:
        """The path DuckDB reads: the local copy of a bucket's object, else the file itself."""
        return self.local or self.path

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def table(self) -> str:
        """observations_v2, observations or traces: the folder it sits in."""
        return posixpath.basename(posixpath.dirname(self.path))

    @property
    def project(self) -> str:
        """The project folder (`{prefix}{projectId}`) it belongs to."""
        return posixpath.dirname(posixpath.dirname(self.path))

    @property
    def export(self) -> str:
        """The folder of the export this file belongs to (`{projectId}/{table}`): windows follow each other in it."""
        return posixpath.dirname(self.path)

    @property
    def short(self) -> str:
        """`{projectId}/{table}/{name}`: enough to find it in a message."""
        return "/".join(self.path.rsplit("/", 3)[-3:])

    def overlaps(self, start: datetime, end: datetime) -> bool:
        """Does the inclusive window [window_start, window_end] meet the half-open day [start, end)?"""
        return self.window_end >= start and (self.window_start is None or self.window_start < end)


@dataclass(frozen=True)
class Coverage:
    """What one export's windows say about a day: the span they cover, and the parts of the day they miss."""

    export: str  # what was judged: `{projectId}/{layout}`
    first: datetime | None  # None: from the beginning (a first file with no manifest)
    last: datetime | None  # None: there are no files at all
    holes: list[tuple[datetime, datetime]]


def cover(label: str, files: list[ExportFile], start: datetime, end: datetime) -> Coverage:
    """The parts of the half-open day [start, end) that none of the windows of `files` cover. Windows include
    both bounds (Langfuse selects `start_time >= min AND <= max`), so a window that starts where the previous
    one ends leaves no hole. A first file without a manifest covers everything before it: Langfuse's first
    run exports from the oldest row on."""
    if not files:
        return Coverage(label, None, None, [(start, end)])
    windows = sorted(files, key=lambda f: (f.window_start is not None, f.window_start or f.window_end, f.window_end))
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
    return Coverage(label, first, max(f.window_end for f in windows), holes)


@dataclass(frozen=True)
class DayPlan:
    """The files to read for a day, and how each project's day is covered."""

    files: list[ExportFile]  # legacy observations, then enriched ones (which win on an id in both), then traces
    layouts: dict[str, str]  # project folder -> the layout read: observations_v2, observations, or both
    gaps: list[Coverage]  # projects whose day no layout covers: the day cannot be read
    # A first file without a manifest, read for time before `since` (its end less its successors' window):
    # it covers that time only if it holds rows from before `since` (see `unproven`)
    assumed: list[tuple[ExportFile, datetime]] = field(default_factory=list)


def plan_day(files: list[ExportFile], start: datetime, end: datetime) -> DayPlan:
    """Per project, the observations of the day [start, end) from the first layout whose windows cover it:
    the enriched `observations_v2` (complete rows), else the legacy `observations` with the `traces` of the
    windows within TRACE_MARGIN of the day, else both (an export switched from one to the other that day;
    the enriched row wins on an id in both). An export of source TRACES_OBSERVATIONS_EVENTS holds the same
    observations in both layouts: only the enriched ones are read. A project whose day no layout covers is
    a gap, named with what covers it."""
    by_project: dict[str, dict[str, list[ExportFile]]] = {}
    for f in files:
        by_project.setdefault(f.project, {}).setdefault(f.table, []).append(f)
    legacy_files, enriched_files, trace_files, layouts, gaps, assumed = [], [], [], {}, [], []
    for project, tables in sorted(by_project.items()):
        enriched, legacy = tables.get(ENRICHED, []), tables.get(LEGACY, [])
        if not enriched and not legacy:
            continue  # traces (or scores) only: no observations to read
        options = [(ENRICHED, enriched, [])] if enriched else []
        options += [(LEGACY, [], legacy)] if legacy else []
        options += [(f"{ENRICHED}+{LEGACY}", enriched, legacy)] if enriched and legacy else []
        covered = next(((name, e, l) for name, e, l in options if not cover(name, e + l, start, end).holes), None)
        if covered is None:
            name, e, l = options[-1]
            gaps.append(cover(f"{posixpath.basename(project)}/{name}", e + l, start, end))
            continue
        name, e, l = covered
        read = [f for f in l if f.overlaps(start, end)]
        if read:  # the traces of what the legacy layout covers of the day must be there: they hold its allocation
            low = max(start, min((f.window_start or start) for f in read))
            high = min(end, max(f.window_end for f in read))
            traces = cover(f"{posixpath.basename(project)}/{TRACES}", tables.get(TRACES, []), low, high)
            if traces.holes:
                gaps.append(traces)
                continue
        layouts[project] = name
        enriched_files += [f for f in e if f.overlaps(start, end)]
        legacy_files += read
        window = _typical_window(e + l)
        assumed += [(f, f.window_end - window) for f in e + l
                    if f.window_start is None and start < f.window_end - window and f.overlaps(start, end)]
        if l:
            trace_files += [f for f in tables.get(TRACES, []) if f.overlaps(start - TRACE_MARGIN, end + TRACE_MARGIN)]
    order = lambda f: (f.window_end, f.path)  # noqa: E731
    return DayPlan(sorted(legacy_files, key=order) + sorted(enriched_files, key=order) + sorted(trace_files, key=order),
                   layouts, gaps, assumed)


def _typical_window(files: list[ExportFile]) -> timedelta:
    """The median window of files whose start is known; an hour (Langfuse's shortest export frequency) else."""
    spans = sorted(f.window_end - f.window_start for f in files if f.window_start is not None)
    return spans[len(spans) // 2] if spans else timedelta(hours=1)


def unproven(assumed: list[tuple[ExportFile, datetime]], rows_before: Callable[[ExportFile, datetime], int],
             day: date) -> str | None:
    """Why the day is not proven, when a first file without a manifest is all that covers part of it and holds
    no row from before its own window: Langfuse's first run exports from the oldest row on, so such a file
    holds history; one without it is not the first run (earlier files were removed, or the export started
    later), and nothing proves the time before it empty. None when every such file holds history."""
    for f, since in assumed:
        if not rows_before(f, since):
            return (f"{f.short} is the export's first file and has no manifest, and it holds no row from before "
                    f"{since:%Y-%m-%d %H:%M:%S} UTC: it is not Langfuse's first run (which exports from the oldest "
                    f"row on), so nothing proves {day} before then empty. Earlier files were removed, or the "
                    "export started later: restore the files, or set FINOPS_START_DATE after the days the export "
                    "does not hold. The day's cost is unknown (not $0) and nothing is delivered.")
    return None


@dataclass
class ExportListing:
    files: list[ExportFile]  # ordered oldest export first: later files win on duplicate ids
    unlisted: list[str]  # files no manifest names yet (still being written?): skipped
    unreadable_manifests: list[tuple[str, str]]


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def _name_time(path: str) -> datetime | None:
    m = _NAME.match(posixpath.basename(path))
    return datetime.strptime(m.group(1), "%Y-%m-%dT%H-%M-%S").replace(tzinfo=timezone.utc) if m else None


def _format(path: str) -> str:
    return posixpath.basename(path).removesuffix(".gz").rsplit(".", 1)[-1]


def _tables(location: Location) -> tuple[dict[str, dict[str, list[str]]], dict[str, str]]:
    """(project folder -> {table folder name or "manifests": the files in it}, path -> its stamp), from one
    listing of the root."""
    projects: dict[str, dict[str, list[str]]] = {}
    listed = location.fs.find(location.root, detail=True)
    stamps = {path: _stamp(info) for path, info in listed.items()}
    for path in sorted(listed):
        folder = posixpath.dirname(path)
        table = posixpath.basename(folder)
        if (table in TABLE_DIRS and _name_time(path)) or (table == "manifests" and path.endswith(".json")):
            projects.setdefault(posixpath.dirname(folder), {}).setdefault(table, []).append(path)
    return projects, stamps


def _stamp(info: dict) -> str:
    """Size and modification time, as each filesystem names them (local `mtime`, S3 `LastModified`, GCS
    `updated`, Azure `last_modified`), with the ETag where there is one."""
    changed = next((info[k] for k in ("mtime", "LastModified", "updated", "last_modified") if info.get(k)), "")
    return f"{info.get('size')}|{changed}|{info.get('ETag') or info.get('etag') or ''}"


def list_export_files(export_dir: str) -> ExportListing:
    """Every observation and trace file of every project under `export_dir` (a folder or a bucket URL), with
    its export window."""
    location = locate(export_dir)
    try:
        found = location.fs.isdir(location.root)
        projects, stamps = _tables(location) if found else ({}, {})
    except Exception as exc:  # each cloud's SDK has its own errors: access denied, no such bucket, no network
        raise ExportLocationError(f"Cannot list the Langfuse export at {export_dir}: "
                                  f"{type(exc).__name__}: {str(exc)[:300]}") from None
    if not found:
        raise ExportLocationError(_not_found(location, export_dir))
    files: list[ExportFile] = []
    unlisted: list[str] = []
    bad_manifests: list[tuple[str, str]] = []
    for project, tables in projects.items():
        manifests = tables.pop("manifests", [])
        windows: dict[tuple[str, str], tuple[datetime, datetime, int | None]] = {}
        # all of a project's manifests in one call: a bucket's filesystem fetches them concurrently
        bodies = location.fs.cat(manifests, on_error="return") if manifests else {}
        for manifest_path in manifests:
            body = bodies.get(manifest_path) if isinstance(bodies, dict) else None
            try:
                if isinstance(body, Exception) or body is None:
                    raise OSError(f"cannot read it: {body}")
                manifest = ExportManifest.model_validate_json(body)
            except (ValidationError, OSError) as exc:
                bad_manifests.append((location.url(manifest_path), str(exc).splitlines()[0]))
                continue
            window = (_utc(manifest.window.min_timestamp), _utc(manifest.window.max_timestamp))
            for entry in manifest.files:
                # keys carry the bucket prefix; the file sits at the same place below the project folder
                windows[(entry.table, posixpath.basename(entry.key))] = (*window, entry.row_count)
        present = {(table, posixpath.basename(path)) for table, paths in tables.items() for path in paths}
        for (table, name), window in windows.items():  # a manifest lists it, the store does not hold it
            if table in TABLE_DIRS and (table, name) not in present:
                files.append(ExportFile(location.url(posixpath.join(project, table, name)), _format(name), *window,
                                        absent=True))
        for table, data_files in tables.items():
            previous_end: datetime | None = None
            for path in data_files:
                url = location.url(path)
                if manifests and (table, posixpath.basename(path)) in windows:
                    files.append(ExportFile(url, _format(path), *windows[(table, posixpath.basename(path))],
                                            stamp=stamps.get(path, "")))
                elif manifests:
                    unlisted.append(url)
                else:
                    end = _name_time(path)
                    files.append(ExportFile(url, _format(path), previous_end, end, stamp=stamps.get(path, "")))
                    previous_end = end
    files.sort(key=lambda f: (f.window_end, f.path))
    return ExportListing(files, unlisted, bad_manifests)


def _not_found(location: Location, export_dir: str) -> str:
    """Why there is nothing at `export_dir`: for a bucket, whether the bucket itself can be seen."""
    if location.remote:
        bucket = location.root.split("/", 1)[0]
        try:
            seen = location.fs.exists(bucket)
        except Exception:  # noqa: BLE001 - any cloud error: the bucket cannot be seen
            seen = False
        if not seen:
            return (f"The Langfuse export's bucket {location.protocol}://{bucket} does not exist, or these credentials "
                    f"cannot see it (FINOPS_LANGFUSE_EXPORT_DIR={export_dir}).")
        return (f"Nothing under {export_dir}: the bucket exists but holds no export at that prefix. Check "
                "FINOPS_LANGFUSE_EXPORT_DIR against the prefix the Langfuse export writes to.")
    return (f"Langfuse export folder not found: {export_dir} "
            "(set FINOPS_LANGFUSE_EXPORT_DIR, or run `make demo` to write sample data)")


# Langfuse's first run of a project with no data starts its window at the epoch: such a start says nothing.
_OLDEST_WINDOW = datetime(2023, 1, 1, tzinfo=timezone.utc)


def first_export_day(export_dir: str) -> date | None:
    """The first UTC day a local export folder covers: its oldest file's manifest window start, else (no
    manifest, or a start before Langfuse existed) the day of its name. None when there is no such folder,
    or the export is in a bucket (the code location does not list a bucket when it loads).
    Cheap enough for every load of the code: one listing and one manifest read."""
    location = locate(export_dir)
    if location.remote or not location.fs.isdir(location.root):
        return None
    projects, _ = _tables(location)
    oldest = min((p for tables in projects.values() for table, paths in tables.items() if table != "manifests"
                  for p in paths), key=posixpath.basename, default=None)
    if oldest is None:
        return None
    start = _name_time(oldest)
    manifest = posixpath.join(posixpath.dirname(posixpath.dirname(oldest)), "manifests",
                              posixpath.basename(oldest).split(".")[0] + ".json")
    try:
        window = ExportManifest.model_validate_json(location.fs.cat_file(manifest)).window
        if _utc(window.min_timestamp) >= _OLDEST_WINDOW:
            start = _utc(window.min_timestamp)
    except (OSError, ValidationError):
        pass
    return start.date()
