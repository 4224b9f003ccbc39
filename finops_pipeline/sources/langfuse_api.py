"""The HTTP client both Langfuse API paths share (sources/api_v2.py, sources/api_legacy.py): keys, rate limit,
retries, time windows fetched concurrently, and the server's own totals of a time range.

HTTP and Langfuse only (no Dagster, no DuckDB). The day is split into disjoint time windows fetched
concurrently, all sharing one rate limiter set by the Langfuse plan (one per organisation: every project of
it draws on the same limit).
Transient failures (429, 5xx, timeouts, dropped connections, a body that is not the JSON promised) are
retried with exponential backoff and jitter, or after the server's `Retry-After`, up to a bounded time;
a window the server cannot query in time (422 "Request timed out") is split in two and fetched again.
Anything a user must fix (keys, host, server version) fails at once with a message that says so.

Each page's body goes, unparsed, to the caller's `load_page` (sources/api_pages.py), which parses it where its
rows go. DuckDB parses a page several times faster than Python can, and without holding the GIL that the
concurrent windows share.

The keys live only in the HTTP client's Basic auth: no message, log line or exception carries them.
"""

from __future__ import annotations

import json
import socket
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
PROJECTS_PATH = "/api/public/projects"
# Observation types that can carry a model, usage and cost: Langfuse's "generation-like" types, all but
# SPAN and EVENT (packages/shared/src/domain/observations.ts). Spans and events are most of a trace's
# observations and none of its cost, so they are not fetched.
COST_TYPES = ("GENERATION", "AGENT", "TOOL", "CHAIN", "RETRIEVER", "EVALUATOR", "EMBEDDING", "GUARDRAIL")
# A window the server times out on is halved down to this; below it, the server is the problem.
SMALLEST_WINDOW = timedelta(seconds=1)


class LangfuseApiError(RuntimeError):
    """A failure to act on. The message names the host, the window and the reason, never a key."""


class EndpointMissing(LangfuseApiError):
    """HTTP 404 on an endpoint: the server is a version without it."""


class BadRequest(LangfuseApiError):
    """HTTP 400: the server rejected a parameter (`message` says which)."""

    def __init__(self, text: str, message: str):
        super().__init__(text)
        self.message = message


class MalformedPage(ValueError):
    """Raised by `load_page` when a 200 response is not the page promised (e.g. truncated JSON)."""


class ServerTimedOut(Exception):
    """422 "Request timed out": the window holds too much for one query."""


# (where, window, body) -> what the page's `meta` says of what follows (a cursor, a count). Called from worker threads.
LoadPage = Callable[[str, "Window", str], "str | None"]
# A unit of work for `LangfuseApi.run`: fetch something, return the work it leaves (pages after it, halves).
Task = Callable[[], "list[Task]"]


@dataclass(frozen=True)
class Window:
    """The half-open time range [start, end) of one cursor chain."""

    start: datetime
    end: datetime

    def __str__(self) -> str:
        return f"{iso(self.start)}..{iso(self.end)}"

    def halves(self) -> list[Window]:
        return Window.split(self.start, self.end, 2)

    @classmethod
    def split(cls, start: datetime, end: datetime, parts: int) -> list[Window]:
        """`parts` windows of about equal width. Bounds inside fall on whole milliseconds, the precision the
        API takes (`iso`): a window's request asks exactly for the rows its loader keeps."""
        step = (end - start) / parts
        inner = [start + step * i for i in range(1, parts)]
        bounds = sorted({start, end, *(b - timedelta(microseconds=b.microsecond % 1000) for b in inner)})
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
    429's `Retry-After`, or `X-RateLimit-Remaining: 0`, holds every window (of every project sharing the
    limiter), not just the one told.
    """

    def __init__(self, per_minute: float):
        self.per_minute = per_minute
        self._interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self._next = time.monotonic()
        self._hold_until = 0.0
        self._lock = threading.Lock()

    def acquire(self, stop: threading.Event) -> None:
        """Wait for a slot; `stop` set while waiting cancels (raises _Cancelled)."""
        while True:
            with self._lock:
                now = time.monotonic()
                at = max(now, self._next, self._hold_until)
                self._next = at + self._interval
            _sleep(at - now, stop)
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


class _Organization(BaseModel):
    id: str


class _Project(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    organization: _Organization | None = None  # since Langfuse v3.143


class _Projects(BaseModel):
    data: list[_Project]


class LangfuseApi:
    """A client of one Langfuse project (the keys name it). Thread-safe; use as a context manager.

    `keys`: where the key pair comes from (e.g. "LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY"), for messages;
    `host_from`: where the host comes from, likewise.
    `limiter`: the organisation's, when several projects share its plan; else one of `requests_per_minute`.
    """

    def __init__(self, host: str, public_key: str, secret_key: str, *, keys: str = "the API keys",
                 host_from: str = "LANGFUSE_BASE_URL or LANGFUSE_HOST",
                 requests_per_minute: float = 1000, limiter: RateLimiter | None = None, timeout_seconds: float = 60, give_up_after_seconds: float = 600,
                 backoff_seconds: float = 1, transport: httpx.BaseTransport | None = None):
        self.host = without_userinfo(host.rstrip("/"))  # it names the server in every message
        self.keys = keys  # where the keys come from (variable names, never values), for messages
        self.host_from = host_from
        self._stop = threading.Event()
        self.limiter = limiter or RateLimiter(requests_per_minute)
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

    # --- work in parallel ---------------------------------------------------------------------------
    def run(self, tasks: Sequence[Task], concurrency: int) -> None:
        """Run `tasks`, `concurrency` at once, and the tasks each returns, until none is left. The first failure
        that cannot be retried stops the others (a request waiting on them raises _Cancelled, and its task
        ends with nothing more) and is raised."""
        self._stop.clear()
        with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="langfuse") as pool:
            pending = {pool.submit(self._unless_cancelled, task) for task in tasks}
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        pending |= {pool.submit(self._unless_cancelled, task) for task in future.result()}
            except BaseException:
                self._stop.set()
                raise

    @staticmethod
    def _unless_cancelled(task: Task) -> list[Task]:
        try:
            return task()
        except _Cancelled:
            return []

    def split(self, window: Window, where: str) -> list[Window]:
        """The halves of a window the server timed out on; a failure when it cannot be split further."""
        if window.end - window.start <= SMALLEST_WINDOW:
            raise LangfuseApiError(
                f"Langfuse at {self.host} timed out (422) on {where}, a window already down to "
                f"{SMALLEST_WINDOW.total_seconds():g} s: the server cannot serve this day; check its database.")
        self.stats.add(windows_split=1)
        return window.halves()

    # --- the server's own totals --------------------------------------------------------------------
    def totals(self, path: str, start: datetime, end: datetime, types: Sequence[str] = COST_TYPES) -> ServerTotals:
        """Count and summed totalCost of the observations of `types` that started in [start, end), from a
        metrics API (`path`: /api/public/v2/metrics, or /api/public/metrics on older servers; both take this
        query). Its rate limit is much lower than the other endpoints': one call a day is the budget."""
        query = {
            "view": "observations",
            "dimensions": [],
            "metrics": [{"measure": "count", "aggregation": "count"}, {"measure": "totalCost", "aggregation": "sum"}],
            "filters": [{"type": "stringOptions", "column": "type", "operator": "any of", "value": list(types)}],
            "timeDimension": {"granularity": "day"},
            "fromTimestamp": iso(start),
            # Unlike the observations API, metrics include `toTimestamp`: stop just before `end`.
            "toTimestamp": iso(end - timedelta(microseconds=1), "microseconds"),
            "config": {"row_limit": 1000},  # the default of 100 would cut results silently
        }
        where = f"{path} {Window(start, end)}"
        body = self.get(path, {"query": as_json(query)}, where)
        try:
            rows = _MetricsResponse.model_validate_json(body).data
            count = sum(int(_number(row.get("count_count"), "count_count")) for row in rows)
            cost = sum((_number(row.get("sum_totalCost"), "sum_totalCost") for row in rows), Decimal(0))
        except (ValidationError, ValueError) as exc:
            raise LangfuseApiError(f"Langfuse at {self.host}: {where} is not a metrics response: {str(exc)[:300]}") from None
        return ServerTotals(count, cost)

    def project(self) -> tuple[str, str | None]:
        """(project id, organisation id or None) of the keys, from GET /api/public/projects (the organisation
        since Langfuse v3.143): projects of one organisation share its rate limit."""
        body = self.get(PROJECTS_PATH, {}, PROJECTS_PATH)
        try:
            [project] = _Projects.model_validate_json(body).data
        except (ValidationError, ValueError) as exc:
            raise LangfuseApiError(f"Langfuse at {self.host}: {PROJECTS_PATH} is not one project of the keys: "
                                   f"{str(exc)[:300]}") from None
        return project.id, project.organization.id if project.organization else None

    def get(self, path: str, params: dict, where: str, load: Callable[[str], Any] | None = None) -> Any:
        """GET `path`, retried as the module says; `load(body)` (default: the body itself) raising
        MalformedPage retries it too. `where` names the request in messages."""
        return self._with_retries(where, lambda: (load or str)(self._get(path, params)))

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
        self.limiter.acquire(self._stop)
        self.stats.add(requests=1)
        try:
            response = self._http.get(path, params=params)
        except httpx.TransportError as exc:  # timeouts, refused or dropped connections, broken HTTP
            if _no_such_host(exc):  # a name no resolver knows: a typo to fix, not an outage to wait out
                raise LangfuseApiError(f"Langfuse at {self.host}: no such host ({exc}). Check {self.host_from}.") from None
            raise _Retryable(f"{type(exc).__name__}: {exc or 'no detail'}") from None
        status = response.status_code
        if status == 200:
            self._respect_rate_headers(response)
            return response.text
        message = error_message(response)
        if status == 429:
            wait_for = retry_after(response)
            self.limiter.hold(wait_for)
            self.stats.add(rate_limited=1)
            raise _Retryable(f"HTTP 429 rate limited: {message}; Retry-After {wait_for:g} s", wait_for)
        if status >= 500:
            raise _Retryable(f"HTTP {status}: {message}")
        if status == 422 and "timed out" in message.lower():
            raise ServerTimedOut()
        if status in (401, 403):
            raise LangfuseApiError(
                f"Langfuse at {self.host} rejected the API keys (HTTP {status}: {message}). Check that "
                f"{self.keys} are a pair of the same project, and that the host is the region or server that "
                f"project lives on ({self.host_from}).")
        if status == 404:
            raise EndpointMissing(f"Langfuse at {self.host} has no {path} (HTTP 404): the server is a version without it.")
        if status == 400:
            raise BadRequest(f"Langfuse at {self.host} refused {path} (HTTP 400): {message}", message)
        raise LangfuseApiError(f"Langfuse at {self.host} refused {path} (HTTP {status}): {message}")

    def _respect_rate_headers(self, response: httpx.Response) -> None:
        """The quota is spent (a proxy may say so on a 200): hold every window until it resets."""
        try:
            spent = int(response.headers.get("X-RateLimit-Remaining", "1")) <= 0
        except ValueError:
            return
        reset = seconds_until(response.headers.get("X-RateLimit-Reset")) if spent else None
        if reset:
            self.limiter.hold(min(reset, 60.0))


def _no_such_host(exc: BaseException) -> bool:
    """The resolver answered that the name does not exist (EAI_NONAME, EAI_NODATA); a resolver that could not
    be reached (EAI_AGAIN) may be a passing outage and is retried."""
    definite = {getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA") if hasattr(socket, name)}
    while exc is not None:
        if isinstance(exc, socket.gaierror):
            return exc.errno in definite
        exc = exc.__cause__ or exc.__context__
    return False


def as_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def iso(moment: datetime, timespec: str = "milliseconds") -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec=timespec).replace("+00:00", "Z")


def _number(value: Any, field: str) -> Decimal:
    if value is None:
        return Decimal(0)  # a sum over no rows
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{field} is not a number: {str(value)[:40]}") from None
