"""Where the day's observations come from, as the asset `langfuse_generations` reads them: the blob export
(either layout, local or in a bucket) or the public API (v2, or the legacy API on older servers; one or
several projects). Each loads the scratch tables (sources/observation_rows.py) and says how to prove the
day was read whole (completeness.py).
"""

from __future__ import annotations

import posixpath
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import date, datetime, timezone

import dagster as dg
import duckdb

from finops_pipeline.completeness import ProjectTotals, api_completeness, export_completeness, uncovered_day_message
from finops_pipeline.partitions import day_bounds
from finops_pipeline.resources import DEFAULT_PAIR, KeyPair, LangfuseApiResource
from finops_pipeline.settings import FinopsSettings
from finops_pipeline.sources import api_legacy, api_v2
from finops_pipeline.sources.api_pages import PageLoader
from finops_pipeline.sources.export_files import read_files
from finops_pipeline.sources.export_listing import (
    ENRICHED, TRACE_MARGIN, ExportFile, list_export_files, plan_day, unproven,
)
from finops_pipeline.sources.langfuse_api import (
    EndpointMissing, FetchStats, LangfuseApi, LangfuseApiError, RateLimiter, ServerTotals, Window,
)
from finops_pipeline.sources.legacy_export import attach_traces, traces_missing
from finops_pipeline.sources.object_storage import ExportLocationError, fetch, locate
from finops_pipeline.sources.observation_rows import Rejected


@dataclass
class Extraction:
    """What a source loaded into scratch.observations, besides the rows, and how to prove it whole."""

    rejected: list[Rejected]
    metadata: dict
    # (conn, day) -> the extraction_complete result, once the rows are in scratch.observations
    completeness: Callable[[duckdb.DuckDBPyConnection, date], dg.AssetCheckResult]
    read_from: dict[str, str]  # project id (or key pair name when unknown) -> how it was read, e.g. "v2 API"
    api_totals: list[tuple] | None = None  # from the API: each project's (host, pair, count, cost) the server gave


@dataclass(frozen=True)
class ExportPlan:
    """The export files that hold a day, as listed (names, windows, manifests' row counts, sizes and times)."""

    files: list[ExportFile]
    layouts: dict[str, str]
    assumed: list
    unlisted: int


def plan_export(context, settings: FinopsSettings, day: date) -> ExportPlan:
    """List the export and choose the day's files; fails when the export does not cover the day."""
    start, end = day_bounds(day)
    export_dir = settings.langfuse_export_dir
    try:
        listing = list_export_files(export_dir)
    except ExportLocationError as exc:
        raise dg.Failure(str(exc)) from None
    wanted = set(settings.langfuse_projects)
    files = [f for f in listing.files if not wanted or posixpath.basename(f.project) in wanted]
    if wanted and not files:
        raise dg.Failure(f"No project of FINOPS_LANGFUSE_PROJECTS ({', '.join(sorted(wanted))}) under {export_dir}; "
                         f"it holds {', '.join(sorted({posixpath.basename(f.project) for f in listing.files}))}.")
    plan = plan_day(files, start, end)
    if plan.gaps or not plan.layouts:
        raise dg.Failure(uncovered_day_message(export_dir, day, plan.gaps))
    for path in listing.unlisted:
        context.log.warning(f"Skipped {path}: no manifest lists it yet (Langfuse may still be writing it).")
    for path, why in listing.unreadable_manifests:
        context.log.warning(f"Skipped manifest {path}: {why}")
    return ExportPlan(plan.files, plan.layouts, plan.assumed, len(listing.unlisted))


def extract_from_export(context, conn: duckdb.DuckDBPyConnection, settings: FinopsSettings, day: date,
                        plan: ExportPlan) -> Extraction:
    """Read the day's files of `plan` into the scratch tables."""
    export_dir = settings.langfuse_export_dir
    location = locate(export_dir)
    # A bucket's objects for the day are copied next to the warehouse and read there (object_storage.py)
    with tempfile.TemporaryDirectory(prefix="export-", dir=settings.home) as folder:
        try:
            copies = fetch(location, [f.path for f in plan.files if not f.absent], folder)
        except ExportLocationError as exc:
            raise dg.Failure(str(exc)) from None
        files = [replace(f, local=copies[f.path]) if location.remote and not f.absent else f for f in plan.files]
        rejected = read_files(conn, files, settings.vocabulary)
    rank = {f.path: i for i, f in enumerate(plan.files)}
    why = unproven(plan.assumed, lambda f, since: conn.execute(
        "SELECT count(*) FROM scratch.observations WHERE file_rank = ? AND start_time < ?",
        [rank[f.path], since.replace(tzinfo=None)]).fetchone()[0], day)
    if why:
        raise dg.Failure(why)
    layouts = sorted(set(plan.layouts.values()))
    metadata = {"source": f"blob export {export_dir}", "export_layout": ", ".join(layouts),
                "projects": len(plan.layouts), "files_read": len(files),
                "files_skipped_unlisted": plan.unlisted}
    if any(ENRICHED != layout for layout in layouts):  # the legacy layout: observations without their trace's fields
        metadata.update(_joined_traces(context, conn, settings, day))
    return Extraction(rejected, metadata, lambda conn, day: export_completeness(conn, files, rejected),
                      {posixpath.basename(project): f"export {layout}" for project, layout in plan.layouts.items()})


def _joined_traces(context, conn: duckdb.DuckDBPyConnection, settings: FinopsSettings, day: date) -> dict:
    """Give the legacy layout's observations their traces' user, session, tags and metadata; say how many
    found none."""
    match = attach_traces(conn, settings.vocabulary, day)
    if match.without_trace:
        context.log.warning(
            f"{match.without_trace:,} of {match.observations:,} generations found no trace (e.g. trace ids "
            f"{', '.join(match.sample)}): staged with their own fields only, so their trace-level allocation keys "
            "are unknown. Their trace may be outside the windows read, or not exported.")
    return {"traces_read": conn.execute("SELECT count(*) FROM scratch.traces WHERE reason IS NULL").fetchone()[0],
            "generations_without_trace": match.without_trace}


def api_day_totals(langfuse: LangfuseApiResource, day: date) -> list[tuple] | None:
    """Each configured project's count and cost of the day as its server's metrics give them (v2, else v1),
    before anything is read; None when any server cannot say (the day is then read). Asked only of a day
    staged before: a first run asks nothing more than its read does."""
    start, end = day_bounds(day)
    found = []
    for pair in langfuse.key_pairs():
        with langfuse.client(pair) as api:
            try:
                try:
                    totals = api_v2.totals(api, start, end)
                except EndpointMissing:
                    totals = api_legacy.totals(api, start, end)
            except LangfuseApiError:
                return None
        found.append(_totals_key(pair, totals))
    return found


@dataclass
class ProjectRead:
    """What reading one project's day from the API did."""

    pair: KeyPair
    project_id: str | None  # known when several projects are read (GET /api/public/projects)
    path: str  # "v2", or "legacy" on a server without the v2 API
    stats: FetchStats
    seconds: float
    totals: ServerTotals | None  # the server's own count and cost of the day; None when it could not say
    unavailable: str | None  # why not
    unknown_types: list[str]  # observation types the server's version does not know


def extract_from_api(context, conn: duckdb.DuckDBPyConnection, langfuse: LangfuseApiResource,
                      settings: FinopsSettings, day: date) -> Extraction:
    """Every configured project's day, each from the v2 API or, on a server without it, the legacy API; the
    projects of one organisation share its rate limiter."""
    pairs = langfuse.key_pairs()
    ranks = PageLoader.start(conn)
    # Until a project's organisation is known, its requests count against its host's limit (an organisation
    # is on one host); the first organisation found on a host keeps that limiter, another gets its own.
    by_host: dict[str, RateLimiter] = {}
    by_organisation: dict[tuple[str, str], RateLimiter] = {}
    with ExitStack() as clients:
        # Every pair is checked before any day is read: a wrong key of the third project fails in seconds,
        # not after the first two projects' fetch.
        projects: list[tuple[KeyPair, LangfuseApi, str | None]] = []
        read_by: dict[tuple[str, str], KeyPair] = {}
        for pair in pairs:
            host_limiter = by_host.setdefault(pair.host.rstrip("/"), RateLimiter(langfuse.requests_per_minute))
            api = clients.enter_context(langfuse.client(pair, host_limiter))
            project_id = None
            if len(pairs) > 1:  # which organisation's limit it draws on, and whose rows are whose
                try:
                    project_id, organisation = api.project()
                except LangfuseApiError as exc:
                    raise dg.Failure(str(exc)) from None
                # The same project twice (the same host, or the same keys under another name of the host):
                # read once, or its figures would be shown twice
                seen = [read_by[k] for k in ((api.host, project_id), (pair.public_key, project_id)) if k in read_by]
                if seen:
                    context.log.warning(f"{pair.variables} are keys of project {project_id} at {api.host}, as "
                                        f"{seen[0].variables} are: it is read once.")
                    continue
                read_by[(api.host, project_id)] = read_by[(pair.public_key, project_id)] = pair
                key = (api.host, organisation or api.host)
                if key not in by_organisation:
                    taken = any(limiter is host_limiter for limiter in by_organisation.values())
                    by_organisation[key] = RateLimiter(langfuse.requests_per_minute) if taken else host_limiter
                api.limiter = by_organisation[key]
            projects.append((pair, api, project_id))
        reads = [_read_project(context, conn, api, pair, project_id, langfuse, settings, day, ranks)
                 for pair, api, project_id in projects]
    metadata = {
        "source": "langfuse api " + ", ".join(sorted({r.pair.host for r in reads})),
        "api_path": ", ".join(sorted({r.path for r in reads})),
        "api_requests": sum(r.stats.requests for r in reads), "api_pages": sum(r.stats.pages for r in reads),
        "api_retries": sum(r.stats.retries for r in reads),
        "api_retry_reasons": ", ".join(f"{why} ×{n}" for why, n in sum((r.stats.retry_reasons for r in reads),
                                                                        Counter()).most_common()) or "none",
        "api_rate_limited": sum(r.stats.rate_limited for r in reads),
        "api_windows_split": sum(r.stats.windows_split for r in reads),
        "api_fetch_seconds": round(sum(r.seconds for r in reads), 2),
    }
    if len(reads) > 1:
        metadata["projects"] = len(reads)
    unknown = sorted({t for r in reads for t in r.unknown_types})
    if unknown:
        metadata["types_unknown_to_server"] = ", ".join(unknown)
    if any(r.path == "legacy" for r in reads):
        metadata.update(_joined_traces(context, conn, settings, day))
    checked = [ProjectTotals(r.pair.name, r.project_id, r.totals, r.unavailable) for r in reads]
    totals = [_totals_key(r.pair, r.totals) for r in reads] if all(r.totals for r in reads) else None
    return Extraction([], metadata, lambda conn, day: api_completeness(conn, day, checked,
                                                                       settings.completeness_tolerance_pct),
                      {r.project_id or r.pair.name: f"{r.path} API" for r in reads}, totals)


def _totals_key(pair: KeyPair, totals: ServerTotals) -> tuple:
    return pair.host.rstrip("/"), pair.name, totals.observations, str(totals.total_cost)


def _read_project(context, conn: duckdb.DuckDBPyConnection, api: LangfuseApi, pair: KeyPair, project_id: str | None,
                  langfuse: LangfuseApiResource, settings: FinopsSettings, day: date, ranks) -> ProjectRead:
    start, end = day_bounds(day)
    project = "" if pair.name == DEFAULT_PAIR else f" (project {pair.name})"
    limit = f"at most {api.limiter.per_minute:g} requests/min" if api.limiter.per_minute else "no rate limit"
    context.log.info(f"Reading {day} from Langfuse at {api.host}{project}: {langfuse.windows} windows, "
                     f"{langfuse.concurrency} at once, {limit}.")
    started, unknown = time.monotonic(), []
    try:
        try:
            api_v2.fetch_observations(api, start, end, api_v2.loader(conn, settings.vocabulary, ranks),
                                      windows=langfuse.windows, concurrency=langfuse.concurrency,
                                      metadata_keys=[*settings.allocation_keys, *settings.metadata_aliases])
            path, totals_of = "v2", api_v2.totals
        except EndpointMissing:
            context.log.info(f"Langfuse at {api.host} has no v2 API (a version before v4): reading the legacy "
                             f"{api_legacy.OBSERVATIONS_PATH} and {api_legacy.TRACES_PATH}.")
            path, totals_of = "legacy", api_legacy.totals
            observations, traces = api_legacy.loaders(conn, settings.vocabulary, ranks)
            try:
                unknown = api_legacy.fetch_observations(api, start, end, observations, concurrency=langfuse.concurrency)
            except EndpointMissing:
                raise dg.Failure(f"Langfuse at {api.host} answers 404 to both {api_v2.OBSERVATIONS_PATH} and "
                                 f"{api_legacy.OBSERVATIONS_PATH}: it is not a Langfuse server, or not its API's base "
                                 f"URL. Check {api.host_from} (e.g. https://cloud.langfuse.com, or your server's "
                                 "address without /api).") from None
            api_legacy.fetch_traces(api, [Window(start, end)], traces, concurrency=langfuse.concurrency)
            if traces_missing(conn, day):  # a trace that began the day before, or was stamped after the day
                now = datetime.now(timezone.utc)
                around = [Window(start - TRACE_MARGIN, start)] + ([Window(end, min(end + TRACE_MARGIN, now))] if end < now else [])
                api_legacy.fetch_traces(api, around, traces, concurrency=langfuse.concurrency)
    except LangfuseApiError as exc:
        raise dg.Failure(str(exc)) from None
    seconds = time.monotonic() - started
    try:
        totals, unavailable = totals_of(api, start, end), None
    except LangfuseApiError as exc:
        totals, unavailable = None, str(exc)
    stats = api.stats
    if stats.retries or stats.windows_split:
        context.log.warning(f"Langfuse API{project}: {stats.retries} retries ({stats.rate_limited} rate-limited), "
                            f"{stats.windows_split} windows split (server timeouts, or more rows than a page).")
    return ProjectRead(pair, project_id, path, stats, seconds, totals, unavailable, unknown)


