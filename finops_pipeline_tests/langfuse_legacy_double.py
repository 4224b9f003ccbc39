"""A self-hosted Langfuse v3 for tests: the legacy public API on a real socket, as the server implements it
(langfuse/langfuse v3.225; the same routes in v4.16's web/src/features/public-api), and no v2 API (404).

- GET /api/public/observations: `page` >= 1, `limit` <= 100 (else 400), `type` one of the observation types
  the version knows (else zod's 400 naming `type`), `fromStartTime` inclusive, `toStartTime` exclusive; rows
  ordered by start_time descending, paged by offset; `meta` {page, limit, totalItems, totalPages}. Every
  field of the v1 observation, input and output included; no userId, sessionId or tags (stripped by
  `transformDbToApiObservation`); `calculatedTotalCost` 0 for a call Langfuse could not price.
- GET /api/public/traces: the same paging, `fromTimestamp`/`toTimestamp`, `fields` groups (core, io, scores,
  observations, metrics; an excluded list is [], excluded metrics are -1). One trace per trace id of the
  rows served, carrying their user, session, tags and metadata; its timestamp a second before its first
  observation unless `trace_times` says otherwise.
- GET /api/public/metrics (v1 query; from v3.57, else 404) and GET /api/public/projects, as the v2 double.
- The v2 double's faults (`fail`), taken by observation and trace requests; `max_rows_per_query` (422).

Every response is checked against the Langfuse SDK 4.x's models (`ObservationsViews`, `Traces`,
`MetricsResponse`, `Projects`), loaded beside the 5.x SDK (langfuse4.py): a response they reject is a
contract error.
"""

from __future__ import annotations

import bisect
import math
from datetime import datetime, timezone

from finops_pipeline_tests.http_double import json_body as _json
from finops_pipeline_tests.langfuse4 import load
from finops_pipeline_tests.langfuse_double import TIMED_OUT, LangfuseDouble, Project, _ts, not_found

load()
from langfuse4_api.core.pydantic_utilities import parse_obj_as  # noqa: E402
from langfuse4_api.legacy.metrics_v1 import MetricsResponse  # noqa: E402
from langfuse4_api.legacy.observations_v1 import ObservationsViews  # noqa: E402
from langfuse4_api.projects import Projects  # noqa: E402
from langfuse4_api.trace import Traces  # noqa: E402

ALL_TYPES = ["GENERATION", "SPAN", "EVENT", "AGENT", "TOOL", "CHAIN", "RETRIEVER", "EVALUATOR", "EMBEDDING", "GUARDRAIL"]
OLD_TYPES = ["GENERATION", "SPAN", "EVENT"]  # before v3.8x added the agent types


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class LangfuseLegacyDouble(LangfuseDouble):
    """`rows` as the v2 double takes them (api_row); `version` (major, minor) picks what the server knows."""

    def __init__(self, rows: list[dict], public_key: str = "pk-lf-double", secret_key: str = "sk-lf-double",
                 version: tuple[int, int] = (3, 225), **options):
        super().__init__(rows, public_key, secret_key, v2=False, **options)
        self.version = version
        self.types = ALL_TYPES if version >= (3, 100) else OLD_TYPES
        self.trace_times: dict[str, str] = {}
        self._parse = parse_obj_as  # the 4.x SDK's  # trace id -> its timestamp, where not a second before its first row

    def respond(self, path: str, query: dict[str, list[str]], headers) -> tuple[int, dict, bytes]:
        project = next((p for p in self.projects if p.authorization == headers.get("Authorization")), None)
        if project is None:
            return 401, {}, _json({"message": "Invalid credentials. Confirm that you've configured the correct host."})
        query = {k: v[-1] for k, v in query.items()}
        if path == "/api/public/projects":
            return self.project_info(project)
        if path == "/api/public/observations":
            return self.legacy_observations(project, query)
        if path == "/api/public/traces":
            return self.traces(project, query)
        if path == "/api/public/metrics" and self.version >= (3, 57) and self.metrics_enabled:
            return self.metrics(project, query, MetricsResponse)
        return not_found()

    @staticmethod
    def projects_model():
        return Projects

    # --- the endpoints ---------------------------------------------------------------------------
    def legacy_observations(self, project: Project, query: dict) -> tuple[int, dict, bytes]:
        fault = self._next_fault()
        if fault and (answer := self._fault(fault)):
            return answer
        try:
            page, limit = self._paging(query)
            if query.get("type") and query["type"] not in self.types:
                return 400, {}, _json({"message": "Invalid request data", "error": [{
                    "received": query["type"], "code": "invalid_enum_value", "options": self.types, "path": ["type"],
                    "message": f"Invalid enum value. Expected {' | '.join(repr(t) for t in self.types)}, "
                               f"received '{query['type']}'"}]})
            lo, hi = self._bounds(query, "fromStartTime", "toStartTime")
        except (AssertionError, ValueError) as exc:
            return 400, {}, _json({"message": "Invalid request data", "error": str(exc)})
        first, end = bisect.bisect_left(project.keys, (lo,)), bisect.bisect_left(project.keys, (hi,))
        rows = [r for r in reversed(project.rows[first:end])  # start_time descending
                if r["id"] not in self.hidden_ids and (not query.get("type") or r["type"] == query["type"])]
        if self.max_rows_per_query and len(rows) > self.max_rows_per_query:
            return 422, {}, _json(TIMED_OUT)
        served = rows[(page - 1) * limit: page * limit]
        if fault and fault["kind"] == "repeat" and page > 1:  # a row that moved pages while paging
            served = rows[(page - 1) * limit - fault.get("rows", 3): page * limit]
        if fault and fault["kind"] == "stray":  # rows from before the window, which the client must ignore
            served += project.rows[max(0, first - fault.get("rows", 3)):first]
        body = _json({"data": [self._observation(r) for r in served], "meta": self._meta(page, limit, len(rows))})
        self._check(ObservationsViews, body)
        if fault and fault["kind"] == "truncated":
            body = body[: len(body) // 2]
        return 200, {}, body

    def traces(self, project: Project, query: dict) -> tuple[int, dict, bytes]:
        fault = self._next_fault()
        if fault and (answer := self._fault(fault)):
            return answer
        try:
            page, limit = self._paging(query)
            lo, hi = self._bounds(query, "fromTimestamp", "toTimestamp")
            groups = set((query.get("fields") or "core,io,scores,observations,metrics").split(","))
            assert groups <= {"core", "io", "scores", "observations", "metrics"}, f"unknown fields {groups}"
        except (AssertionError, ValueError) as exc:
            return 400, {}, _json({"message": "Invalid request data", "error": str(exc)})
        traces = [t for t in self._traces(project) if lo <= _ts(t["timestamp"]) < hi]
        traces.sort(key=lambda t: (t["timestamp"], t["id"]), reverse=True)
        if self.max_rows_per_query and len(traces) > self.max_rows_per_query:
            return 422, {}, _json(TIMED_OUT)
        served = [self._trace_fields(t, groups) for t in traces[(page - 1) * limit: page * limit]]
        body = _json({"data": served, "meta": self._meta(page, limit, len(traces))})
        self._check(Traces, body)
        if fault and fault["kind"] == "truncated":
            body = body[: len(body) // 2]
        return 200, {}, body

    # --- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _paging(query: dict) -> tuple[int, int]:
        page, limit = int(query.get("page", "1")), int(query.get("limit", "50"))
        assert page >= 1, "page must be at least 1"
        assert 1 <= limit <= 100, "limit must be at most 100"
        return page, limit

    @staticmethod
    def _bounds(query: dict, low: str, high: str) -> tuple[float, float]:
        for name in (low, high):  # zod: an ISO datetime with an offset
            if name in query:
                assert query[name].endswith("Z") or "+" in query[name][10:], f"{name} needs an offset"
        return (_ts(query[low]) if low in query else float("-inf"), _ts(query[high]) if high in query else float("inf"))

    @staticmethod
    def _meta(page: int, limit: int, total: int) -> dict:
        return {"page": page, "limit": limit, "totalItems": total, "totalPages": math.ceil(total / limit)}

    @staticmethod
    def _observation(row: dict) -> dict:
        """A row as v1 serves it: every field of APIObservation, the trace's fields stripped, metadata its own."""
        usage, cost = row.get("usageDetails") or {}, row.get("costDetails") or {}
        return {
            "id": row["id"], "projectId": row["projectId"], "traceId": row.get("traceId"),
            "parentObservationId": row.get("parentObservationId"), "name": row.get("name"), "type": row["type"],
            "environment": row.get("environment") or "default", "startTime": row["startTime"],
            "endTime": row.get("endTime"), "version": row.get("version"), "createdAt": row["startTime"],
            "updatedAt": row["startTime"], "input": row.get("input"), "output": row.get("output"),
            "metadata": row.get("observationMetadata", {}), "level": row.get("level") or "DEFAULT",
            "statusMessage": row.get("statusMessage"), "model": row.get("model"),
            "modelParameters": row.get("modelParameters"), "completionStartTime": None,
            "promptId": row.get("promptId"), "promptName": row.get("promptName"),
            "promptVersion": row.get("promptVersion"), "usageDetails": usage, "costDetails": cost,
            "usage": {"unit": "TOKENS", "input": usage.get("input", 0), "output": usage.get("output", 0),
                      "total": usage.get("total", 0)},
            "unit": "TOKENS", "promptTokens": usage.get("input", 0), "completionTokens": usage.get("output", 0),
            "totalTokens": usage.get("total", 0), "usagePricingTierName": row.get("usagePricingTierName"),
            "usagePricingTierId": None, "modelId": row.get("internalModelId"), "inputPrice": None,
            "outputPrice": None, "totalPrice": None, "calculatedInputCost": cost.get("input"),
            "calculatedOutputCost": cost.get("output"), "calculatedTotalCost": cost.get("total", 0),
            "latency": 1.2, "timeToFirstToken": None,
        }

    def _traces(self, project: Project) -> list[dict]:
        """One trace per trace id among the project's rows, with the trace-level fields of its rows."""
        first: dict[str, dict] = {}
        for row in project.rows:  # sorted by start time
            if row.get("traceId") and row["traceId"] not in first:
                first[row["traceId"]] = row
        traces = []
        for trace_id, row in first.items():
            at = self.trace_times.get(trace_id) or _iso(_ts(row["startTime"]) - 1)
            traces.append({
                "id": trace_id, "timestamp": at, "name": row.get("traceName"), "input": {"question": "SECRET PROMPT TEXT"},
                "output": "SECRET COMPLETION TEXT", "sessionId": row.get("sessionId"), "release": row.get("release"),
                "version": None, "userId": row.get("userId"), "metadata": row.get("metadata") or {},
                "tags": row.get("tags") or [], "public": False, "environment": row.get("environment") or "default",
                "htmlPath": f"/project/{row['projectId']}/traces/{trace_id}", "latency": 2.5, "totalCost": 0.01,
                "observations": [row["id"]], "scores": [], "projectId": row["projectId"], "bookmarked": False,
                "createdAt": at, "updatedAt": at,
            })
        return traces

    @staticmethod
    def _trace_fields(trace: dict, groups: set[str]) -> dict:
        out = dict(trace)
        if "io" not in groups:
            out["input"] = out["output"] = None
        for group in ("scores", "observations"):
            if group not in groups:
                out[group] = []
        if "metrics" not in groups:
            out["totalCost"] = out["latency"] = -1
        return out
