"""A Langfuse server for tests and the bench: GET /api/public/v2/observations and /api/public/v2/metrics on a
real socket, as the server (langfuse/langfuse v4.16) implements them.

- Basic auth; 401 with Langfuse's body on a wrong key pair. The keys pick the project: `add_project` hosts
  another one on the same server (GET /api/public/projects names it and its organisation). `v2=False`
  plays a server older than the v2 API (Next.js's HTML 404).
- Rows sorted `start_time DESC, hash(trace_id) DESC, id DESC`; `fromStartTime` inclusive, `toStartTime`
  exclusive; `limit` at most 1000 (else 400); the cursor is base64 of the last row's sort key and is
  only sent when more rows follow; `fields` groups (never `io` unless asked), `expandMetadata`
  (other metadata values cut at 200 characters), the `filter` param's `type any of`.
- `totalCost` as the server computes it: `costDetails.total`, else 0 (even for a call it could not price).
- Metrics: the observations view, count and sum of totalCost by day, both time bounds inclusive.
- Faults a test queues with `fail(kind, times)`, taken by the next observation requests: 429 with
  Retry-After and X-RateLimit-*, 500, 503, `slow` (answers after `delay` seconds), `drop` (closes the
  connection unanswered), `truncated` (half the JSON), 422 "Request timed out", `repeat` (the page
  repeats the previous page's last rows), `stray` (the page carries rows from before its window). `max_rows_per_query` makes every query over a window holding
  more rows time out (422), as ClickHouse does. `hidden_ids` are never served but still counted by metrics.

Every response is checked against the official SDK's models (`ObservationsV2Response`, `MetricsV2Response`)
before it is sent: a response that does not parse is a test failure (`contract_errors`), so the double
cannot drift from the real schema. The bench checks one response in `validate_every`.
"""

from __future__ import annotations

import base64
import bisect
import json
import time
import zlib
from datetime import datetime, timezone

from langfuse.api import MetricsV2Response, ObservationsV2Response, Projects
from langfuse.api.core.pydantic_utilities import parse_obj_as

from finops_pipeline_tests.http_double import DROP, HttpDouble, json_body as _json

FIELD_GROUPS = {
    "core": ["id", "traceId", "startTime", "endTime", "projectId", "parentObservationId", "type"],
    "basic": ["name", "level", "statusMessage", "version", "environment", "bookmarked", "public", "userId",
              "sessionId", "isRootObservation"],
    "time": ["completionStartTime", "createdAt", "updatedAt"],
    "io": ["input", "output"],
    "metadata": ["metadata"],
    "model": ["model", "internalModelId", "modelParameters"],
    "usage": ["usageDetails", "costDetails", "totalCost", "usagePricingTierName"],
    "prompt": ["promptId", "promptName", "promptVersion"],
    "metrics": ["latency", "timeToFirstToken"],
    "trace_context": ["tags", "release", "traceName"],
}
BAD_KEYS = {"message": "Invalid credentials. Confirm that you've configured the correct host."}


def not_found() -> tuple[int, dict, bytes]:
    """Next.js's answer to a route the server's version does not have."""
    return 404, {"Content-Type": "text/html"}, b"<!DOCTYPE html><h1>404</h1><h2>This page could not be found.</h2>"


TIMED_OUT = {"message": "Your query could not be completed. Please narrow your request by adding more specific "
                        "filters (e.g., a shorter date range).", "error": "Request timed out"}


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _sort_key(row: dict) -> tuple:
    return (_ts(row["startTime"]), zlib.crc32(str(row.get("traceId") or "").encode()), row["id"])


class Project:
    """One project the server hosts: its keys, its organisation and its observations (sorted as served)."""

    def __init__(self, rows: list[dict], public_key: str, secret_key: str, project_id: str, organization: str):
        self.public_key, self.secret_key, self.id, self.organization = public_key, secret_key, project_id, organization
        self.rows = sorted(rows, key=_sort_key)
        self.keys = [_sort_key(r) for r in self.rows]
        self.rendered: dict[tuple, list[str]] = {}

    @property
    def authorization(self) -> str:
        return "Basic " + base64.b64encode(f"{self.public_key}:{self.secret_key}".encode()).decode()


class LangfuseDouble(HttpDouble):
    def __init__(self, rows: list[dict], public_key: str = "pk-lf-double", secret_key: str = "sk-lf-double",
                 v2: bool = True, validate_every: int = 1, max_rows_per_query: int | None = None,
                 project_id: str = "p1", organization: str = "o1"):
        self.public_key, self.secret_key, self.v2 = public_key, secret_key, v2
        self.validate_every = validate_every
        self.max_rows_per_query = max_rows_per_query
        self.hidden_ids: set[str] = set()
        self.metrics_hidden: set[str] = set()  # rows the metrics do not count (not yet aggregated, say)
        self.metrics_enabled = True  # False: the 404 of a server without the metrics API
        super().__init__()
        self._served = 0
        self._parse = parse_obj_as  # the SDK whose models the responses must parse with
        self.projects = [Project(rows, public_key, secret_key, project_id, organization)]

    def add_project(self, rows: list[dict], public_key: str, secret_key: str, project_id: str,
                    organization: str) -> None:
        """Host another project on this server, read with its own key pair."""
        self.projects.append(Project(rows, public_key, secret_key, project_id, organization))

    def respond(self, path: str, query: dict[str, list[str]], headers) -> tuple[int, dict, bytes]:
        project = next((p for p in self.projects if p.authorization == headers.get("Authorization")), None)
        if project is None:
            return 401, {}, _json(BAD_KEYS)
        query = {k: v[-1] for k, v in query.items()}
        if path == "/api/public/projects":
            return self.project_info(project)
        if path == "/api/public/v2/observations" and self.v2:
            return self.observations(project, query)
        if path == "/api/public/v2/metrics" and self.v2 and self.metrics_enabled:
            return self.metrics(project, query, MetricsV2Response)
        return not_found()

    # --- the endpoints ---------------------------------------------------------------------------
    def project_info(self, project: Project) -> tuple[int, dict, bytes]:
        body = _json({"data": [{"id": project.id, "name": f"project {project.id}", "metadata": {},
                                "organization": {"id": project.organization, "name": f"org {project.organization}"}}]})
        self._check(self.projects_model(), body)
        return 200, {}, body

    @staticmethod
    def projects_model():
        return Projects

    def observations(self, project: Project, query: dict) -> tuple[int, dict, bytes]:
        fault = self._next_fault()
        if fault:
            answer = self._fault(fault)
            if answer:
                return answer
        try:
            limit = int(query.get("limit", "50"))
            assert 0 <= limit <= 1000, "limit must be at most 1000"
            lo = _ts(query["fromStartTime"]) if "fromStartTime" in query else float("-inf")
            hi = _ts(query["toStartTime"]) if "toStartTime" in query else float("inf")
            groups = {"core"} | set((query.get("fields") or "core,basic").split(","))
            expand = set(filter(None, (query.get("expandMetadata") or "").split(",")))
            types = self._types(query)
            cursor = json.loads(base64.b64decode(query["cursor"])) if query.get("cursor") else None
        except (AssertionError, ValueError, KeyError) as exc:
            return 400, {}, _json({"message": "Invalid request data", "error": str(exc)})
        first, end = bisect.bisect_left(project.keys, (lo,)), bisect.bisect_left(project.keys, (hi,))
        if self.max_rows_per_query and end - first > self.max_rows_per_query:
            return 422, {}, _json(TIMED_OUT)
        upper = end
        if cursor:
            last = (_ts(cursor["lastStartTimeTo"]), zlib.crc32(cursor["lastTraceId"].encode()), cursor["lastId"])
            upper = min(end, bisect.bisect_left(project.keys, last))
        if fault and fault["kind"] == "repeat":
            upper = min(end, upper + fault.get("rows", 3))
        rendered = self._render(project, tuple(sorted(groups)), tuple(sorted(expand)))
        page, i = [], upper - 1
        while i >= first and len(page) <= limit:
            row = project.rows[i]
            if row["id"] not in self.hidden_ids and (types is None or row["type"] in types):
                page.append(i)
            i -= 1
        more = len(page) > limit
        page = page[:limit]
        meta = "{}"
        if more:
            last = project.rows[page[-1]]
            meta = json.dumps({"cursor": base64.b64encode(json.dumps(
                {"lastStartTimeTo": last["startTime"], "lastTraceId": last.get("traceId") or "",
                 "lastId": last["id"]}).encode()).decode()})
        if fault and fault["kind"] == "stray":  # rows from before the window, which the client must ignore
            page += [j for j in range(first - 1, max(-1, first - 1 - fault.get("rows", 3)), -1)]
        body = ('{"data":[' + ",".join(rendered[i] for i in page) + '],"meta":' + meta + "}").encode()
        self._check(ObservationsV2Response, body)
        if fault and fault["kind"] == "truncated":
            body = body[: len(body) // 2]
        return 200, {}, body

    def metrics(self, project: Project, query: dict, model) -> tuple[int, dict, bytes]:
        try:
            spec = json.loads(query["query"])
            assert spec["view"] == "observations", "only the observations view is served"
            lo, hi = _ts(spec["fromTimestamp"]), _ts(spec["toTimestamp"])
            row_limit = spec.get("config", {}).get("row_limit", 100)
            types = None
            for f in spec.get("filters", []):
                assert f["column"] == "type" and f["operator"] == "any of", f"unsupported filter {f}"
                types = set(f["value"])
        except (AssertionError, ValueError, KeyError) as exc:
            return 400, {}, _json({"message": "Invalid request data", "error": str(exc)})
        by_day: dict[str, list] = {}
        for row, key in zip(project.rows, project.keys):
            if lo <= key[0] <= hi and (types is None or row["type"] in types) and row["id"] not in self.metrics_hidden:
                day = datetime.fromtimestamp(key[0], timezone.utc).strftime("%Y-%m-%dT00:00:00.000Z")
                count_cost = by_day.setdefault(day, [0, None])
                count_cost[0] += 1
                total = (row.get("costDetails") or {}).get("total")  # the stored total_cost column
                if total is not None:
                    count_cost[1] = (count_cost[1] or 0) + total
        data = [{"time_dimension": day, "count_count": str(n), "sum_totalCost": cost}
                for day, (n, cost) in sorted(by_day.items())][:row_limit]
        body = _json({"data": data})
        self._check(model, body)
        return 200, {}, body

    def prepare(self, fields: str, expand_metadata: str) -> None:
        """Render the rows for a request shape now, not on the first request (the bench's timing)."""
        self._render(self.projects[0], tuple(sorted({"core"} | set(fields.split(",")))),
                     tuple(sorted(filter(None, expand_metadata.split(",")))))

    # --- helpers ---------------------------------------------------------------------------------
    def _types(self, query: dict) -> set[str] | None:
        if query.get("filter"):
            for f in json.loads(query["filter"]):
                if f.get("column") == "type":
                    assert f["operator"] == "any of" and f["value"], f"unsupported type filter {f}"
                    return set(f["value"])
        return {query["type"]} if query.get("type") else None

    def _render(self, project: Project, groups: tuple, expand: tuple) -> list[str]:
        """Each row as JSON with only the requested field groups, computed once per request shape."""
        with self._lock:
            if (groups, expand) not in project.rendered:
                fields = [f for g in groups for f in FIELD_GROUPS.get(g, [])]
                project.rendered[(groups, expand)] = [json.dumps(self._served_row(r, fields, expand)) for r in project.rows]
            return project.rendered[(groups, expand)]

    @staticmethod
    def _served_row(row: dict, fields: list[str], expand: tuple) -> dict:
        out = {f: row.get(f) for f in fields}
        if "totalCost" in out:
            out["totalCost"] = float((row.get("costDetails") or {}).get("total", 0))
        if isinstance(out.get("metadata"), dict):
            out["metadata"] = {k: (v if k in expand or not isinstance(v, str) or len(v) <= 200 else v[:200] + "...")
                               for k, v in out["metadata"].items()}
        return out

    @staticmethod
    def _fault(fault: dict) -> tuple[int, dict, bytes] | None:
        kind = fault["kind"]
        if kind == "429":
            wait = fault.get("retry_after", 1)
            return 429, {"Retry-After": str(wait), "X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": "0",
                         "X-RateLimit-Reset": "Sat Aug 22 2026 08:21:47 GMT+0000 (Coordinated Universal Time)"}, _json(
                {"message": "Rate limit exceeded", "code": "rate_limited",
                 "details": {"retryAfterSeconds": wait, "limit": 1000, "remaining": 0}})
        if kind in ("500", "503"):
            return int(kind), {}, _json({"message": "Internal Server Error", "error": "upstream unavailable"})
        if kind == "422":
            return 422, {}, _json(TIMED_OUT)
        if kind == "slow":
            time.sleep(fault.get("delay", 2))
            return None
        if kind == "drop":
            return DROP, {}, b""
        return None  # truncated, repeat, stray: shape the page itself

    def _check(self, model, body: bytes) -> None:
        with self._lock:
            self._served += 1
            if (self._served - 1) % self.validate_every:
                return
        self._contract(model.__name__, lambda: self._parse(model, json.loads(body)))


def api_row(obs_id: str, start_time: str, model: str | None = "gpt-4o-2024-08-06", cost: float | None = 0.01,
            usage: dict | None = None, metadata: dict | None = None, tags: list | None = None,
            obs_type: str = "GENERATION", **extra) -> dict:
    """One observation as the server holds it (every field group, prompt text included)."""
    return {
        "id": obs_id, "traceId": f"t-{obs_id}", "startTime": start_time, "endTime": start_time,
        "projectId": "p1", "parentObservationId": None, "type": obs_type, "name": "chat", "level": "DEFAULT",
        "statusMessage": None, "version": None, "environment": "production", "bookmarked": False, "public": False,
        "userId": "u1", "sessionId": "s1", "isRootObservation": False,
        "input": {"messages": [{"role": "user", "content": "SECRET PROMPT TEXT"}]},
        "output": "SECRET COMPLETION TEXT",
        "metadata": metadata if metadata is not None else {"feature": "chat", "team": "product",
                                                           "customer_id": "acme", "tier": "pro"},
        "model": model, "internalModelId": "m1", "modelParameters": {"temperature": 0},
        "usageDetails": usage if usage is not None else {"input": 100, "output": 20, "total": 120},
        "costDetails": {} if cost is None else {"total": cost},
        "usagePricingTierName": "Standard" if cost is not None else None,
        "promptId": "pr1", "promptName": "p", "promptVersion": 1,
        "tags": tags or [], "release": "v1", "traceName": "chat-trace",
        **extra,
    }
