"""Langfuse's public API v2 (Cloud, self-hosted v4): a day's observations from GET /api/public/v2/observations,
each already carrying its trace's user, session, tags and metadata, and the day's totals from
GET /api/public/v2/metrics.

One cursor chain is sequential, so the day is split into disjoint time windows fetched concurrently
(LangfuseApi.run); a window the server times out on (422) is halved and fetched again.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime

import duckdb

from finops_pipeline.sources.api_pages import PageLoader
from finops_pipeline.sources.langfuse_api import (
    COST_TYPES, LangfuseApi, LangfuseApiError, ServerTimedOut, ServerTotals, Task, Window, as_json, iso,
)
from finops_pipeline.sources.observation_rows import OBSERVATIONS, Vocabulary

OBSERVATIONS_PATH = "/api/public/v2/observations"
METRICS_PATH = "/api/public/v2/metrics"
# Everything cost allocation needs; never `io` (prompt and completion text).
FIELD_GROUPS = "core,basic,model,usage,metadata,prompt,trace_context"
PAGE_SIZE = 1000  # the API's maximum
# The staging fields as the v2 API names them. Its `totalCost` is not the stored total: the server sends
# `costDetails.total ?? 0`, a $0 for every call it could not price, so cost is taken from costDetails.
NAMES = {
    "id": "id", "trace_id": "traceId", "project_id": "projectId", "type": "type", "name": "name",
    "start_time": "startTime", "environment": "environment", "user_id": "userId", "session_id": "sessionId",
    "provided_model_name": "providedModelName", "model": "model", "usage_details": "usageDetails",
    "cost_details": "costDetails", "total_cost": None, "prompt_name": "promptName",
    "prompt_version": "promptVersion", "tags": "tags", "metadata": "metadata",
}
# Only the types that carry cost: spans and events are most of a trace and none of its cost.
_TYPE_FILTER = {"type": "stringOptions", "column": "type", "operator": "any of", "value": list(COST_TYPES)}


def loader(conn: duckdb.DuckDBPyConnection, vocabulary: Vocabulary, ranks: itertools.count) -> PageLoader:
    """Pages of v2 observations into `scratch.observations` (started by PageLoader.start, whose `ranks` it
    shares); each returns its `meta.cursor`."""
    return PageLoader(conn, OBSERVATIONS, NAMES, vocabulary, meta="$.meta.cursor", ranks=ranks)


def fetch_observations(api: LangfuseApi, start: datetime, end: datetime, load_page: PageLoader, *,
                       windows: int = 24, concurrency: int = 8, metadata_keys: Sequence[str] = ()) -> None:
    """Every cost-carrying observation that started in [start, end), page by page into `load_page`:
    `windows` cursor chains, `concurrency` at once. EndpointMissing: the server has no v2 API."""
    params = {"limit": PAGE_SIZE, "fields": FIELD_GROUPS, "filter": as_json([_TYPE_FILTER])}
    if metadata_keys:
        params["expandMetadata"] = ",".join(metadata_keys)  # so their values are not cut at 200 characters
    api.run([_chain(api, w, params, load_page) for w in Window.split(start, end, windows)], concurrency)
    load_page.flush()


def _chain(api: LangfuseApi, window: Window, params: dict, load_page: PageLoader) -> Task:
    """Follow one window's cursor chain to its last page. When the server times out on it, its halves are
    fetched instead (rows already loaded are fetched again; they are deduped by id)."""
    def task() -> list[Task]:
        cursor, number = None, 0
        while True:
            number += 1
            where = f"{OBSERVATIONS_PATH} {window} page {number}"
            query = {**params, "fromStartTime": iso(window.start), "toStartTime": iso(window.end)}
            if cursor:
                query["cursor"] = cursor
            try:
                next_cursor = api.get(OBSERVATIONS_PATH, query, where, lambda body: load_page(where, window, body))
            except ServerTimedOut:
                return [_chain(api, half, params, load_page) for half in api.split(window, where)]
            api.stats.add(pages=1)
            if not next_cursor:
                return []
            if next_cursor == cursor:
                raise LangfuseApiError(f"Langfuse at {api.host} returned the same cursor twice on {where}: "
                                       "stopping rather than looping.")
            cursor = next_cursor
    return task


def totals(api: LangfuseApi, start: datetime, end: datetime) -> ServerTotals:
    """The server's count and cost of the cost-carrying observations that started in [start, end)."""
    return api.totals(METRICS_PATH, start, end)
