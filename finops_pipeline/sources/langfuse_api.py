"""Langfuse's public API v2: a day's observations, page by page, and the server's own totals of the day.

HTTP and Langfuse only (no Dagster, no DuckDB). One cursor chain is sequential, so the day is split into
disjoint time windows fetched concurrently, all sharing one rate limiter set by the Langfuse plan.
Transient failures (429, 5xx, timeouts, dropped connections, a body that is not the JSON promised) are
retried with exponential backoff and jitter, or after the server's `Retry-After`, up to a bounded time;
a window the server cannot query in time (422 "Request timed out") is split in two and fetched again.
Anything a user must fix (keys, host, server version) fails at once with a message that says so.

Each page's body goes, unparsed, to the caller's `load_page`, which parses it where its rows go and
returns the page's `meta.cursor`. DuckDB parses a page several times faster than Python can, and
without holding the GIL that the concurrent windows share.

The keys live only in the HTTP client's Basic auth: no message, log line or exception carries them.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
import tenacity
from pydantic import BaseModel, ConfigDict, ValidationError

from finops_pipeline.sources.http import error_message, retry_after, seconds_until, without_userinfo

DEFAULT_HOST = "https://cloud.langfuse.com"
OBSERVATIONS_PATH = "/api/public/v2/observations"
METRICS_PATH = "/api/public/v2/metrics"
# Everything cost allocation needs; never `io` (prompt and completion text).
FIELD_GROUPS = "core,basic,model,usage,metadata,prompt,trace_context"
PAGE_SIZE = 1000  # the API's maximum
# Observation types that can carry a model, usage and cost: Langfuse's "generation-like" types, all but
# SPAN and EVENT (packages/shared/src/domain/observations.ts). Spans and events are most of a trace's
# observations and none of its cost, so they are not fetched.
COST_TYPES = ("GENERATION", "AGENT", "TOOL", "CHAIN", "RETRIEVER", "EVALUATOR", "EMBEDDING", "GUARDRAIL")
# A window the server times out on is halved down to this; below it, the server is the problem.
SMALLEST_WINDOW = timedelta(seconds=1)


class LangfuseApiError(RuntimeError):
    """A failure to act on. The message names the host, the window and the reason, never a key."""


class MalformedPage(ValueError):
    """Raised by `load_page` when a 200 response is not a v2 observations page (e.g. truncated JSON)."""


# (where, window, body) -> the page's meta.cursor, None on the last page. Called from worker threads.
LoadPage = Callable[[str, "Window", str], "str | None"]


@dataclass(frozen=True)
class Window:
    """The half-open time range [start, end) of one cursor chain."""

    start: datetime
    end: datetime

    def __str__(self) -> str:
        return f"{_iso(self.start)}..{_iso(self.end)}"

    def halves(self) -> list[Window]:
        return Window.split(self.start, self.end, 2)

    @classmethod
    def split(cls, start: datetime, end: datetime, parts: int) -> list[Window]:
        step = (end - start) / parts
        bounds = [start + step * i for i in range(parts)] + [end]
        return [cls(a, b) for a, b in zip(bounds, bounds[1:])]


@dataclass(frozen=True)
class ServerTotals:
    """What the server counts for a time range: observations and the sum of their `totalCost`."""

    observations: int
    total_cost: Decimal


@dataclass
class FetchStats:
    requests: int = 0
    pages: int = 0
    retries: int = 0
    rate_limited: int = 0
    windows_split: int = 0
    retry_reasons: Counter = field(default_factory=Counter)  # "HTTP 503", "ReadTimeout", ...
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def retried(self, reason: str) -> None:
        with self._lock:
            self.retries += 1
            self.retry_reasons[reason.split(":")[0]] += 1  # the kind: "HTTP 503", "ReadTimeout", ...


class RateLimiter:
    """Spaces requests evenly at `per_minute` across all threads, and holds them all when the server says so.

    Langfuse counts requests per organisation and minute; evenly spaced requests never exceed it. A
    429's `Retry-After`, or `X-RateLimit-Remaining: 0`, holds every window, not just the one told.
    """

    def __init__(self, per_minute: float, stop: threading.Event):
        self._interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self._next = time.monotonic()
        self._hold_until = 0.0
        self._lock = threading.Lock()
        self._stop = stop

    def acquire(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                at = max(now, self._next, self._hold_until)
                self._next = at + self._interval
            _sleep(at - now, self._stop)
            with self._lock:  # a hold that came while this slot was waiting: queue again behind it
                if time.monotonic() >= self._hold_until:
                    return

    def hold(self, seconds: float) -> None:
        with self._lock:
            self._hold_until = max(self._hold_until, time.monotonic() + seconds)


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class _ServerTimedOut(Exception):
    """422 "Request timed out": the window holds too much for one query."""


class _Cancelled(Exception):
    """Another window failed: stop this one."""


def _sleep(seconds: float, stop: threading.Event) -> None:
    if seconds > 0 and stop.wait(seconds):
        raise _Cancelled()
    if stop.is_set():
        raise _Cancelled()


class _MetricsResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    data: list[dict[str, Any]]


class LangfuseApi:
    """A client of one Langfuse project (the keys name it). Thread-safe; use as a context manager."""

    def __init__(self, host: str, public_key: str, secret_key: str, *, requests_per_minute: float = 1000,
                 timeout_seconds: float = 60, give_up_after_seconds: float = 600, backoff_seconds: float = 1,
                 transport: httpx.BaseTransport | None = None):
        self.host = without_userinfo(host.rstrip("/"))  # it names the server in every message
        self._stop = threading.Event()
        self._limiter = RateLimiter(requests_per_minute, self._stop)
        self._give_up_after = give_up_after_seconds
        self._backoff = tenacity.wait_exponential_jitter(multiplier=backoff_seconds, max=60, jitter=backoff_seconds)
        self._http = httpx.Client(
            base_url=self.host, auth=httpx.BasicAuth(public_key, secret_key), transport=transport,
            timeout=httpx.Timeout(timeout_seconds, connect=min(timeout_seconds, 10)),
            headers={"Accept": "application/json", "User-Agent": "finops-pipeline"},
        )
        self.stats = FetchStats()

    def __enter__(self) -> LangfuseApi:
        return self

    def __exit__(self, *exc) -> None:
        self._http.close()

    # --- observations ------------------------------------------------------------------------------
    def fetch_observations(self, start: datetime, end: datetime, load_page: LoadPage, *, windows: int = 24,
                           concurrency: int = 8, metadata_keys: Sequence[str] = ()) -> FetchStats:
        """Every cost-carrying observation that started in [start, end), page by page into `load_page`.

        `windows` cursor chains, `concurrency` of them at once. The first failure that cannot be retried
        stops the others and is raised as a LangfuseApiError.
        """
        params = {"limit": PAGE_SIZE, "fields": FIELD_GROUPS, "filter": _json([_TYPE_FILTER])}
        if metadata_keys:
            params["expandMetadata"] = ",".join(metadata_keys)  # so their values are not cut at 200 characters
        self._stop.clear()
        with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="langfuse-window") as pool:
            pending = {pool.submit(self._fetch_window, w, params, load_page) for w in Window.split(start, end, windows)}
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        for half in future.result():  # a window the server timed out on comes back halved
                            pending.add(pool.submit(self._fetch_window, half, params, load_page))
            except BaseException:
                self._stop.set()
                raise
        return self.stats

    def _fetch_window(self, window: Window, params: dict, load_page: LoadPage) -> list[Window]:
        """Follow one window's cursor chain to its last page. Returns the halves to fetch instead when
        the server timed out on it (rows already loaded are fetched again; they are deduped by id)."""
        cursor, number = None, 0
        while True:
            number += 1
            where = f"{OBSERVATIONS_PATH} {window} page {number}"
            query = {**params, "fromStartTime": _iso(window.start), "toStartTime": _iso(window.end)}
            if cursor:
                query["cursor"] = cursor
            try:
                next_cursor = self._with_retries(where, lambda: load_page(where, window, self._get(OBSERVATIONS_PATH, query)))
            except _Cancelled:
                return []
            except _ServerTimedOut:
                if window.end - window.start <= SMALLEST_WINDOW:
                    raise LangfuseApiError(
                        f"Langfuse at {self.host} timed out (422) on {where}, a window already down to "
                        f"{SMALLEST_WINDOW.total_seconds():g} s: the server cannot serve this day; check its database.") from None
                self.stats.add(windows_split=1)
                return window.halves()
            self.stats.add(pages=1)
            if not next_cursor:
                return []
            if next_cursor == cursor:
                raise LangfuseApiError(f"Langfuse at {self.host} returned the same cursor twice on {where}: "
                                       "stopping rather than looping.")
            cursor = next_cursor

    # --- the server's own totals --------------------------------------------------------------------
    def totals(self, start: datetime, end: datetime) -> ServerTotals:
        """Count and summed totalCost of the cost-carrying observations that started in [start, end),
        from the metrics API (which has its own, much lower, rate limit: one call a day is the budget)."""
        query = {
            "view": "observations",
            "dimensions": [],
            "metrics": [{"measure": "count", "aggregation": "count"}, {"measure": "totalCost", "aggregation": "sum"}],
            "filters": [_TYPE_FILTER],
            "timeDimension": {"granularity": "day"},
            "fromTimestamp": _iso(start),
            # Unlike the observations API, metrics include `toTimestamp`: stop just before `end`.
            "toTimestamp": _iso(end - timedelta(microseconds=1), "microseconds"),
            "config": {"row_limit": 1000},  # the default of 100 would cut results silently
        }
        where = f"{METRICS_PATH} {Window(start, end)}"
        body = self._with_retries(where, lambda: self._get(METRICS_PATH, {"query": _json(query)}))
        try:
            rows = _MetricsResponse.model_validate_json(body).data
            count = sum(int(_number(row.get("count_count"), "count_count")) for row in rows)
            cost = sum((_number(row.get("sum_totalCost"), "sum_totalCost") for row in rows), Decimal(0))
        except (ValidationError, ValueError) as exc:
            raise LangfuseApiError(f"Langfuse at {self.host}: {where} is not a metrics response: {str(exc)[:300]}") from None
        return ServerTotals(count, cost)

    # --- one request ------------------------------------------------------------------------------
    def _with_retries(self, where: str, attempt: Callable[[], Any]) -> Any:
        started = time.monotonic()
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_Retryable),
            wait=self._wait,
            stop=tenacity.stop_before_delay(self._give_up_after),
            sleep=lambda seconds: _sleep(seconds, self._stop),
            before_sleep=lambda state: self.stats.retried(str(state.outcome.exception())),
            reraise=True,
        )
        try:
            return retrying(self._attempt, attempt)
        except _Retryable as exc:
            attempts = retrying.statistics.get("attempt_number", 1)
            raise LangfuseApiError(
                f"Langfuse at {self.host}: gave up on {where} after {attempts} attempts in "
                f"{time.monotonic() - started:.0f} s; last error: {exc}") from None

    @staticmethod
    def _attempt(attempt: Callable[[], Any]) -> Any:
        try:
            return attempt()
        except MalformedPage as exc:
            raise _Retryable(f"malformed response body: {exc}") from None

    def _wait(self, state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception()
        if isinstance(error, _Retryable) and error.retry_after is not None:
            return error.retry_after
        return self._backoff(state)

    def _get(self, path: str, params: dict) -> str:
        self._limiter.acquire()
        self.stats.add(requests=1)
        try:
            response = self._http.get(path, params=params)
        except httpx.TransportError as exc:  # timeouts, refused or dropped connections, broken HTTP
            raise _Retryable(f"{type(exc).__name__}: {exc or 'no detail'}") from None
        status = response.status_code
        if status == 200:
            self._respect_rate_headers(response)
            return response.text
        message = error_message(response)
        if status == 429:
            wait_for = retry_after(response)
            self._limiter.hold(wait_for)
            self.stats.add(rate_limited=1)
            raise _Retryable(f"HTTP 429 rate limited: {message}; Retry-After {wait_for:g} s", wait_for)
        if status >= 500:
            raise _Retryable(f"HTTP {status}: {message}")
        if status == 422 and "timed out" in message.lower():
            raise _ServerTimedOut()
        if status in (401, 403):
            raise LangfuseApiError(
                f"Langfuse at {self.host} rejected the API keys (HTTP {status}: {message}). Check that "
                "LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY are a pair of the same project, and that "
                "LANGFUSE_HOST is the region or server that project lives on.")
        if status == 404 and path == OBSERVATIONS_PATH:
            raise LangfuseApiError(
                f"Langfuse at {self.host} has no {OBSERVATIONS_PATH} (HTTP 404): the server is older than the "
                "v2 API. Upgrade it, or read the blob export instead (unset LANGFUSE_PUBLIC_KEY).")
        raise LangfuseApiError(f"Langfuse at {self.host} refused {path} (HTTP {status}): {message}")

    def _respect_rate_headers(self, response: httpx.Response) -> None:
        """The quota is spent (a proxy may say so on a 200): hold every window until it resets."""
        try:
            spent = int(response.headers.get("X-RateLimit-Remaining", "1")) <= 0
        except ValueError:
            return
        reset = seconds_until(response.headers.get("X-RateLimit-Reset")) if spent else None
        if reset:
            self._limiter.hold(min(reset, 60.0))


# Only the types that carry cost: spans and events are most of a trace and none of its cost.
_TYPE_FILTER = {"type": "stringOptions", "column": "type", "operator": "any of", "value": list(COST_TYPES)}


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _iso(moment: datetime, timespec: str = "milliseconds") -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec=timespec).replace("+00:00", "Z")


def _number(value: Any, field: str) -> Decimal:
    if value is None:
        return Decimal(0)  # a sum over no rows
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{field} is not a number: {str(value)[:40]}") from None
