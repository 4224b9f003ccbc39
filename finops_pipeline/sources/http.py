"""What every HTTP source needs from a response: the server's own words, and how long a 429 says to wait."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit, urlunsplit

import httpx


def without_userinfo(url: str) -> str:
    """The URL without `user:password@`, so it can name the server in a message."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def error_message(response: httpx.Response) -> str:
    """The server's own words, short. Langfuse sends `{"message", "error"}`; OpenAI and Anthropic
    `{"error": {"type", "message"}}`; anything else is the start of the text."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        nested = body.get("error")
        if isinstance(nested, dict):
            parts = [str(nested[k]) for k in ("type", "message") if nested.get(k)]
        else:
            parts = [str(body[k]) for k in ("message", "error") if body.get(k)]
        if parts:
            return ": ".join(parts)[:300]
    return (response.text.strip() or response.reason_phrase)[:300]


def retry_after(response: httpx.Response) -> float:
    """How long a 429 says to wait: `retry-after-ms` (OpenAI), `Retry-After`, the body's
    `details.retryAfterSeconds` (Langfuse), `X-RateLimit-Reset`; else a minute, the usual rate window."""
    milliseconds = response.headers.get("retry-after-ms")
    try:
        seconds = float(milliseconds) / 1000 if milliseconds else None
    except ValueError:
        seconds = None
    if seconds is None:
        seconds = seconds_until(response.headers.get("Retry-After"))
    if seconds is None:
        try:
            seconds = float(response.json()["details"]["retryAfterSeconds"])
        except (ValueError, KeyError, TypeError):
            seconds = seconds_until(response.headers.get("X-RateLimit-Reset"))
    return 60.0 if seconds is None else max(0.0, min(seconds, 3600.0))


def seconds_until(value: str | None) -> float | None:
    """Seconds, an epoch timestamp (seconds or ms), an HTTP or ISO date, or a JavaScript `Date.toString()`
    (what Langfuse sends as `X-RateLimit-Reset`), as seconds from now."""
    if not value:
        return None
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        js_date = value.split(" (")[0]  # "Sat Aug 22 2026 08:21:47 GMT+0000 (Coordinated Universal Time)"
        for parse in (parsedate_to_datetime, datetime.fromisoformat,
                      lambda v: datetime.strptime(js_date, "%a %b %d %Y %H:%M:%S GMT%z")):
            try:
                moment = parse(value)
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=timezone.utc)
                return max(0.0, (moment - datetime.now(timezone.utc)).total_seconds())
            except (TypeError, ValueError, IndexError):
                continue
        return None
    now = time.time()
    if number > 1e12:  # epoch milliseconds
        return max(0.0, number / 1000 - now)
    if number > 1e9:  # epoch seconds
        return max(0.0, number - now)
    return max(0.0, number)
