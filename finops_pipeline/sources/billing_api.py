"""The providers' own cost APIs, one UTC day at a time: OpenAI's organization costs and Anthropic's cost report.

HTTP only (no Dagster, no DuckDB). Pages are followed to the end, sequentially (a day is a page or a few).
Transient failures (429, 408, 409, 5xx and Anthropic's 529, timeouts, dropped connections, a body that is
not JSON) are retried with exponential backoff and jitter, or after the server's `retry-after`, for a
bounded time. A bill that cannot be trusted (a missing field, another currency, a negative amount, a
page chain that never ends) fails at once, naming the provider, the day, the page and the field.
The admin key lives only in the request headers: no message carries it.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time as clock, timedelta, timezone

import httpx
import tenacity

from finops_pipeline.sources.http import error_message, retry_after, without_userinfo
from finops_pipeline.sources.provider_billing import BilledCost, BillingError, page_lines, parse_page

# A day is one bucket; its results page at most a few times. A chain longer than this is a server bug.
MAX_PAGES = 1000
_SECRET = re.compile(r"sk-[A-Za-z0-9_*.-]+")  # providers echo (masked) keys in 401 messages


class CostApiError(RuntimeError):
    """A cost API that cannot be read; the message names the provider, the server, the day and the reason."""


@dataclass(frozen=True)
class CostApiSpec:
    """How one provider's cost API is called."""

    provider: str
    path: str  # relative to the base URL, as the provider's SDK joins them
    default_base_url: str
    base_url_env: str
    key_env: str
    headers: Callable[[str], dict[str, str]]
    params: Callable[[date], dict]


# One day is one bucket (`limit` counts buckets). Arrays go as `group_by[]=`, the way both SDKs send them.
def _openai_params(day: date) -> dict:
    start = int(datetime.combine(day, clock(), timezone.utc).timestamp())
    return {"start_time": start, "end_time": start + 86400, "bucket_width": "1d",
            "group_by[]": ["line_item", "project_id"], "limit": 1}


def _anthropic_params(day: date) -> dict:
    start = datetime.combine(day, clock(), timezone.utc)
    return {"starting_at": _rfc3339(start), "ending_at": _rfc3339(start + timedelta(days=1)), "bucket_width": "1d",
            "group_by[]": ["workspace_id", "description"], "limit": 1}  # workspace_id is null unless grouped by


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


OPENAI = CostApiSpec(
    provider="openai", path="organization/costs", default_base_url="https://api.openai.com/v1",
    base_url_env="OPENAI_BASE_URL", key_env="OPENAI_ADMIN_KEY",
    headers=lambda key: {"Authorization": f"Bearer {key}"}, params=_openai_params,
)
ANTHROPIC = CostApiSpec(
    provider="anthropic", path="v1/organizations/cost_report", default_base_url="https://api.anthropic.com",
    base_url_env="ANTHROPIC_BASE_URL", key_env="ANTHROPIC_ADMIN_KEY",
    headers=lambda key: {"x-api-key": key, "anthropic-version": "2023-06-01"}, params=_anthropic_params,
)
SPECS = {spec.provider: spec for spec in (OPENAI, ANTHROPIC)}


@dataclass
class FetchStats:
    requests: int = 0
    pages: int = 0
    retries: int = 0
    retry_reasons: Counter = field(default_factory=Counter)  # "HTTP 503", "ReadTimeout", ...


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class CostApi:
    """One provider's cost API with its admin key. Use as a context manager."""

    def __init__(self, spec: CostApiSpec, base_url: str, admin_key: str, *, timeout_seconds: float = 60,
                 give_up_after_seconds: float = 300, backoff_seconds: float = 1,
                 transport: httpx.BaseTransport | None = None):
        self.spec = spec
        # The SDKs' convention: OPENAI_BASE_URL ends in /v1, ANTHROPIC_BASE_URL does not.
        self.base_url = without_userinfo(base_url.rstrip("/")) + "/"
        self._key = admin_key
        self._give_up_after = give_up_after_seconds
        self._backoff = tenacity.wait_exponential_jitter(multiplier=backoff_seconds, max=60, jitter=backoff_seconds)
        self._http = httpx.Client(
            base_url=base_url.rstrip("/") + "/", transport=transport,
            timeout=httpx.Timeout(timeout_seconds, connect=min(timeout_seconds, 10)),
            headers={**spec.headers(admin_key), "Accept": "application/json", "User-Agent": "finops-pipeline"},
        )
        self.stats = FetchStats()

    def __enter__(self) -> CostApi:
        return self

    def __exit__(self, *exc) -> None:
        self._http.close()

    def day_lines(self, day: date) -> list[BilledCost]:
        """Every line item billed for `day`, from the first page to the last."""
        provider = self.spec.provider
        lines: list[BilledCost] = []
        params = self.spec.params(day)
        seen: set[str] = set()
        for number in range(1, MAX_PAGES + 1):
            where = f"GET {self.base_url}{self.spec.path} page {number}"
            page = parse_page(provider, day, where, self._get_with_retries(where, params, day))
            self.stats.pages += 1
            lines += page_lines(provider, day, where, page)
            if not page.has_more:
                return lines
            if not page.next_page:
                raise BillingError(f"{provider} bill for {day}: {where}: field `next_page`: missing while "
                                   "`has_more` is true")
            if page.next_page in seen:
                raise BillingError(f"{provider} bill for {day}: {where}: field `next_page`: {page.next_page!r} was "
                                   "already followed; the pages never end")
            seen.add(page.next_page)
            params = {**self.spec.params(day), "page": page.next_page}
        raise BillingError(f"{provider} bill for {day}: more than {MAX_PAGES} pages for one day; the pages never end")

    def _get_with_retries(self, where: str, params: dict, day: date) -> bytes:
        started = time.monotonic()
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_Retryable),
            wait=self._wait,
            stop=tenacity.stop_before_delay(self._give_up_after),
            before_sleep=self._count_retry,
            reraise=True,
        )
        try:
            return retrying(self._get, where, params, day)
        except _Retryable as exc:
            attempts = retrying.statistics.get("attempt_number", 1)
            raise CostApiError(
                f"{self.spec.provider} bill for {day}: gave up on {where} after {attempts} attempts in "
                f"{time.monotonic() - started:.0f} s; last error: {exc}") from None

    def _count_retry(self, state: tenacity.RetryCallState) -> None:
        self.stats.retries += 1
        self.stats.retry_reasons[str(state.outcome.exception()).split(":")[0]] += 1

    def _wait(self, state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception()
        if isinstance(error, _Retryable) and error.retry_after is not None:
            return error.retry_after
        return self._backoff(state)

    def _get(self, where: str, params: dict, day: date) -> bytes:
        self.stats.requests += 1
        try:
            response = self._http.get(self.spec.path, params=params)
        except httpx.TransportError as exc:  # timeouts, refused or dropped connections, broken HTTP
            raise _Retryable(f"{type(exc).__name__}: {exc or 'no detail'}") from None
        status = response.status_code
        if status == 200:
            try:
                json.loads(response.content)
            except ValueError:  # a body cut short, or a proxy's HTML: ask again
                raise _Retryable(f"malformed response body: not JSON ({len(response.content)} bytes)") from None
            return response.content
        message = self._redacted(error_message(response))
        if status == 429:
            wait_for = retry_after(response)
            raise _Retryable(f"HTTP 429 rate limited: {message}; retry after {wait_for:g} s", wait_for)
        if status in (408, 409) or status >= 500:
            raise _Retryable(f"HTTP {status}: {message}")
        provider, key_env, url_env = self.spec.provider, self.spec.key_env, self.spec.base_url_env
        if status in (401, 403):
            raise CostApiError(
                f"{provider} bill for {day}: {self.base_url} rejected the admin key (HTTP {status}: {message}). "
                f"{key_env} must be an admin key of the organisation (not a project API key), and {url_env} "
                "the provider's API or a proxy that forwards its admin endpoints.")
        if status == 404:
            raise CostApiError(f"{provider} bill for {day}: {where} does not exist (HTTP 404: {message}); check "
                               f"{url_env} (default {self.spec.default_base_url}).")
        raise CostApiError(f"{provider} bill for {day}: {where} was refused (HTTP {status}: {message})")

    def _redacted(self, text: str) -> str:
        return _SECRET.sub("sk-…", text.replace(self._key, "…")) if self._key else text
