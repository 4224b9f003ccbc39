"""OpenAI's `GET /v1/organization/costs` and Anthropic's `GET /v1/organizations/cost_report` on a real socket,
as the providers document them (shared/reference/billing.md, openai-python 3.54's types, Anthropic's docs).

- OpenAI: `Authorization: Bearer <admin key>`, 401 `invalid_api_key` otherwise; `start_time` required,
  `end_time` exclusive, `bucket_width=1d`, `limit` 1..180, `group_by[]` (`line_item` and `project_id` are
  null unless grouped by); amounts are JSON numbers in USD with currency "usd".
- Anthropic: `x-api-key` and `anthropic-version` headers, 401 `authentication_error` / 400 otherwise;
  `starting_at` required (RFC 3339), `limit` 1..31, `group_by[]=description` fills model, token_type and
  service_tier, `group_by[]=workspace_id` the workspace (null otherwise); amounts are decimal strings in cents
  with currency "USD".
- Both: one bucket per day; `has_more` / `next_page` (an opaque token). A day's results are split into
  pages of `page_size`, so any day can be made to take several pages.
- Faults a test queues with `fail(kind, times)`, taken by the next requests: `429` (with `retry-after`),
  `500`, `503`, `529` (Anthropic's overloaded), `slow`, `drop` (no answer), `truncated` (half the JSON),
  `loop` (next_page names the same page again), `endless` (a new next_page, forever), and bad bills:
  `missing` (drops `field` from the first result), `currency` (EUR), `negative` (a negative amount).

Every OpenAI page is checked against openai-python's `UsageCostsResponse` before it is sent; a page that
does not parse is a test failure (`contract_errors`). Anthropic publishes no model of this endpoint.
"""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

from openai.types.admin.organization import UsageCostsResponse

from finops_pipeline_tests.http_double import DROP, HttpDouble, json_body

OPENAI_KEY = "sk-admin-double-0123456789"
ANTHROPIC_KEY = "sk-ant-admin01-double-0123456789"
OPENAI_PATH = "/v1/organization/costs"
ANTHROPIC_PATH = "/v1/organizations/cost_report"


def anthropic_result(model: str | None, token_type: str | None, cents: str, cost_type: str = "tokens",
                     workspace_id: str | None = None) -> dict:
    """A result of the cost report; `workspace_id` None is the default workspace."""
    kind = {"uncached_input_tokens": "Input Tokens", "output_tokens": "Output Tokens",
            "cache_read_input_tokens": "Cache Read Input Tokens"}.get(token_type or "", token_type or cost_type)
    return {"amount": cents, "currency": "USD", "cost_type": cost_type,
            "description": f"{model or 'Web Search'} Usage - {kind}", "model": model, "service_tier": "standard",
            "token_type": token_type, "context_window": "0-200k", "workspace_id": workspace_id}


class BillingDouble(HttpDouble):
    def __init__(self, openai: dict[date, dict[str, Decimal | str]] | None = None,
                 anthropic: dict[date, list[dict]] | None = None, page_size: int = 2):
        super().__init__()
        self.openai = openai or {}          # day -> line_item -> USD
        self.anthropic = anthropic or {}    # day -> results (anthropic_result)
        self.page_size = page_size

    def openai_url(self) -> str:
        return self.url + "/v1"  # as OPENAI_BASE_URL: with /v1

    def respond(self, path: str, query: dict[str, list[str]], headers) -> tuple[int, dict, bytes]:
        if path == OPENAI_PATH:
            if headers.get("Authorization") != f"Bearer {OPENAI_KEY}":
                given = (headers.get("Authorization") or "").removeprefix("Bearer ")
                return 401, {}, json_body({"error": {
                    "message": f"Incorrect API key provided: {given[:6]}****{given[-4:]}. You can find your API key "
                               "at https://platform.openai.com/account/api-keys.",
                    "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}})
            return self._answer("openai", query)
        if path == ANTHROPIC_PATH:
            if headers.get("x-api-key") != ANTHROPIC_KEY:
                return 401, {}, json_body({"type": "error", "error": {"type": "authentication_error",
                                                                      "message": "invalid x-api-key"}})
            if not headers.get("anthropic-version"):
                return 400, {}, json_body({"type": "error", "error": {
                    "type": "invalid_request_error", "message": "anthropic-version: header is required"}})
            return self._answer("anthropic", query)
        return 404, {}, json_body({"error": {"message": f"Invalid URL (GET {path})", "type": "invalid_request_error"}})

    # --- one page ---------------------------------------------------------------------------------
    def _answer(self, provider: str, query: dict[str, list[str]]) -> tuple[int, dict, bytes]:
        fault = self._next_fault() or {"kind": None}
        kind = fault["kind"]
        if kind == "429":
            wait = str(fault.get("retry_after", 1))
            return 429, {"retry-after": wait}, json_body({"error": {"type": "rate_limit_error" if provider == "anthropic"
                                                                    else "requests", "message": "Rate limit reached"}})
        if kind in ("500", "503", "529"):
            return int(kind), {}, json_body({"error": {"type": "overloaded_error" if kind == "529" else "api_error",
                                                       "message": "Internal server error"}})
        if kind == "drop":
            return DROP, {}, b""
        if kind == "slow":
            time.sleep(fault.get("delay", 2))
        try:
            days, grouped, limit, offset = self._query(provider, query)
        except (KeyError, ValueError, AssertionError) as exc:
            return 400, {}, json_body({"error": {"type": "invalid_request_error", "message": str(exc)}})
        # Every (day, result) of the range in order; a page holds up to page_size of them, in one bucket.
        items = [(day, r) for day in days for r in (self._results(provider, day, grouped) or [None])]
        page = items[offset:offset + self.page_size]
        page_days = sorted({d for d, _ in page}) or days[:1]
        more = offset + self.page_size < len(items)
        next_page = f"page_{offset + self.page_size}" if more else None
        if kind == "loop":
            more, next_page = True, f"page_{offset}"
        if kind == "endless":
            more, next_page = True, f"page_{offset + 1_000_000 + len(self.requests)}"
        buckets = [self._bucket(provider, d, [r for day, r in page if day == d and r is not None]) for d in page_days]
        body = {"data": buckets[:limit], "has_more": more, "next_page": next_page}
        if provider == "openai":
            body = {"object": "page", **body}
        results = [r for b in body["data"] for r in b["results"]]
        if kind in ("missing", "currency", "negative") and results:
            first = results[0]
            if kind == "missing":
                first.pop(fault["field"])
            elif provider == "openai":
                first["amount"] = {"value": -abs(first["amount"]["value"]) or -1.0, "currency": "usd"} \
                    if kind == "negative" else {**first["amount"], "currency": "eur"}
            else:
                first.update({"amount": "-" + first["amount"]} if kind == "negative" else {"currency": "EUR"})
        raw = json_body(body)
        if provider == "openai" and kind is None:
            self._contract("UsageCostsResponse", lambda: UsageCostsResponse.model_validate_json(raw))
        if kind == "truncated":
            raw = raw[: len(raw) // 2]
        return 200, {}, raw

    def _query(self, provider: str, query: dict[str, list[str]]) -> tuple[list[date], set[str], int, int]:
        if provider == "openai":
            start = datetime.fromtimestamp(int(query["start_time"][-1]), timezone.utc)
            end = (datetime.fromtimestamp(int(query["end_time"][-1]), timezone.utc) if "end_time" in query
                   else start + timedelta(days=7))
            max_limit = 180
        else:
            start = datetime.fromisoformat(query["starting_at"][-1].replace("Z", "+00:00"))
            end = (datetime.fromisoformat(query["ending_at"][-1].replace("Z", "+00:00")) if "ending_at" in query
                   else start + timedelta(days=7))
            max_limit = 31
        assert query.get("bucket_width", ["1d"])[-1] == "1d", "bucket_width must be 1d"
        limit = int(query.get("limit", ["7"])[-1])
        assert 1 <= limit <= max_limit, f"limit must be between 1 and {max_limit}"
        grouped = set(query.get("group_by[]", []))
        offset = int(query.get("page", ["page_0"])[-1].removeprefix("page_"))
        days = []
        while start < end:
            days.append(start.date())
            start += timedelta(days=1)
        return days, grouped, limit, offset

    def _results(self, provider: str, day: date, grouped: set[str]) -> list[dict]:
        if provider == "openai":
            return [{"object": "organization.costs.result", "amount": {"value": float(Decimal(str(usd))), "currency": "usd"},
                     "line_item": item if "line_item" in grouped else None,
                     "project_id": "proj_double" if "project_id" in grouped else None,
                     "api_key_id": None, "quantity": None}
                    for item, usd in self.openai.get(day, {}).items()]
        described = "description" in grouped
        return [{**r, **({} if described else {"model": None, "token_type": None, "service_tier": None,
                                                 "description": None}),
                 **({} if "workspace_id" in grouped else {"workspace_id": None})}
                for r in self.anthropic.get(day, [])]

    @staticmethod
    def _bucket(provider: str, day: date, results: list[dict]) -> dict:
        start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
        if provider == "openai":
            return {"object": "bucket", "start_time": int(start.timestamp()),
                    "end_time": int((start + timedelta(days=1)).timestamp()), "results": results}
        return {"starting_at": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "ending_at": (start + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"), "results": results}
