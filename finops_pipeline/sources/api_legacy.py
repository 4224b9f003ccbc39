"""Langfuse's legacy public API (self-hosted v3; v4 serves it too): the path taken when the server has no v2
observations API (it answers 404).

- GET /api/public/observations, one `type` at a time (the types that carry cost; a type the server's version
  does not know, 400, has no observations there). It has no userId, sessionId, tags or trace metadata:
- GET /api/public/traces (`fields=core`: no input or output) holds them, joined in DuckDB
  (sources/legacy_export.py) as for the legacy export.
- GET /api/public/metrics (v3.57 and later) counts the day for the completeness check.

Both list endpoints page by number (`page` >= 1, `limit` <= 100, `meta.totalItems`) over rows ordered by
time alone, so deep pages cost the server more and rows sharing a millisecond can move between pages.
Hence a window is fetched whole in one page: a window holding more than a page is split into as many
windows as its count needs, until each fits (only a window narrower than SMALLEST_PAGED holding more
than a page is read page by page). Unlike the v2 API, the observations endpoint sends input and output
with every row: they are parsed past, never selected or stored, but they do cross the network.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from datetime import datetime, timedelta

import duckdb

from finops_pipeline.sources.api_pages import PageLoader
from finops_pipeline.sources.langfuse_api import (
    COST_TYPES, BadRequest, LangfuseApi, MalformedPage, ServerTimedOut, ServerTotals, Task, Window, iso,
)
from finops_pipeline.sources.observation_rows import OBSERVATIONS, TRACES, Vocabulary

OBSERVATIONS_PATH = "/api/public/observations"
TRACES_PATH = "/api/public/traces"
METRICS_PATH = "/api/public/metrics"
PAGE_SIZE = 100  # the API's maximum
# A window this narrow holding more than a page is read page by page, not split further.
SMALLEST_PAGED = timedelta(milliseconds=10)
# The staging fields as the legacy API names them. Its `calculatedTotalCost` is 0, not null, for a call
# Langfuse could not price, so cost is taken from costDetails.
OBSERVATION_NAMES = {
    "id": "id", "trace_id": "traceId", "project_id": "projectId", "type": "type", "name": "name",
    "start_time": "startTime", "environment": "environment", "user_id": None, "session_id": None,
    "provided_model_name": None, "model": "model", "usage_details": "usageDetails", "cost_details": "costDetails",
    "total_cost": None, "prompt_name": "promptName", "prompt_version": "promptVersion", "tags": None,
    "metadata": "metadata",
}
TRACE_NAMES = {"id": "id", "project_id": "projectId", "timestamp": "timestamp", "user_id": "userId",
               "session_id": "sessionId", "tags": "tags", "metadata": "metadata"}


def loaders(conn: duckdb.DuckDBPyConnection, vocabulary: Vocabulary,
            ranks: itertools.count) -> tuple[PageLoader, PageLoader]:
    """Pages of observations and of traces into `scratch.observations` and `scratch.traces` (started by
    PageLoader.start, whose `ranks` they share); each returns its page's `meta.totalItems`."""
    return (PageLoader(conn, OBSERVATIONS, OBSERVATION_NAMES, vocabulary, "$.meta.totalItems", ranks=ranks, legacy=True),
            PageLoader(conn, TRACES, TRACE_NAMES, vocabulary, "$.meta.totalItems", ranks=ranks))


def fetch_observations(api: LangfuseApi, start: datetime, end: datetime, load_page: PageLoader, *,
                       concurrency: int = 8, types: Sequence[str] = COST_TYPES) -> list[str]:
    """Every observation of `types` that started in [start, end), into `load_page`. Returns the types the
    server does not know (a version older than them: it holds none)."""
    unknown: list[str] = []
    tasks = [_window(api, OBSERVATIONS_PATH, ("fromStartTime", "toStartTime"), {"type": t}, Window(start, end),
                     load_page, unknown) for t in types]
    api.run(tasks, concurrency)
    load_page.flush()
    return unknown


def fetch_traces(api: LangfuseApi, windows: Sequence[Window], load_page: PageLoader, *, concurrency: int = 8) -> None:
    """Every trace whose timestamp falls in one of `windows`, into `load_page`."""
    api.run([_window(api, TRACES_PATH, ("fromTimestamp", "toTimestamp"), {"fields": "core"}, w, load_page, [])
             for w in windows], concurrency)
    load_page.flush()


def _window(api: LangfuseApi, path: str, bounds: tuple[str, str], params: dict, window: Window,
            load_page: PageLoader, unknown: list[str], page: int = 1) -> Task:
    """One page of one window. The first page says how many rows the window holds: when more than a page,
    the window is split into windows a page each can hold (this page's rows are fetched again there), or,
    when it is too narrow to split, its other pages are fetched."""
    def task() -> list[Task]:
        query = {**params, bounds[0]: iso(window.start), bounds[1]: iso(window.end), "limit": PAGE_SIZE, "page": page}
        what = " ".join(f"{k}={v}" for k, v in params.items() if k == "type")
        where = f"{path} {what + ' ' if what else ''}{window} page {page}"
        try:
            body, items = api.get(path, query, where, lambda body: (body, _count(load_page.check(body))))
        except ServerTimedOut:
            return [_window(api, path, bounds, params, half, load_page, unknown) for half in api.split(window, where)]
        except BadRequest as exc:
            if params.get("type") and params["type"] in exc.message and "type" in exc.message:
                unknown.append(params["type"])  # an older server: no observation can be of a type it does not know
                return []
            raise
        narrow = window.end - window.start < SMALLEST_PAGED
        if items > PAGE_SIZE and not narrow:
            # a share of a page per window: rows are rarely spread evenly, and a window still over is split again
            parts = min(math.ceil(items / (PAGE_SIZE * 0.8)), int((window.end - window.start) / timedelta(milliseconds=1)))
            api.stats.add(windows_split=1)
            return [_window(api, path, bounds, params, part, load_page, unknown)
                    for part in Window.split(window.start, window.end, max(2, parts))]
        load_page.add(where, window, body)
        api.stats.add(pages=1)
        if page == 1 and items > PAGE_SIZE:  # narrow: page by page
            return [_window(api, path, bounds, params, window, load_page, unknown, n)
                    for n in range(2, math.ceil(items / PAGE_SIZE) + 1)]
        return []
    return task


def _count(total_items: str | None) -> int:
    try:
        return int(total_items)
    except (TypeError, ValueError):
        raise MalformedPage(f"meta.totalItems is not a count: {str(total_items)[:40]}") from None


def totals(api: LangfuseApi, start: datetime, end: datetime) -> ServerTotals:
    """The server's count and cost of the cost-carrying observations that started in [start, end)
    (EndpointMissing before v3.57)."""
    return api.totals(METRICS_PATH, start, end)
