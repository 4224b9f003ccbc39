"""Prices and providers for models, from the maintained `genai-prices` tables shipped with the package.

Used for generations Langfuse could not price, and to say which provider a model belongs to. Rates are
looked up once per distinct model and day (prices as they were that day), then applied in SQL.
Tiered prices (e.g. above 200k context tokens) are not modelled: rates are those of a small call.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from functools import lru_cache

import genai_prices

# Name patterns win over the table: they are unambiguous and cover dated and fine-tuned variants
# (`ft:gpt-4o-mini:acme::abc`) the table does not know.
_PROVIDER_PATTERNS = [
    (re.compile(r"^(ft:)?(openai/)?(gpt-|chatgpt-|o\d(-|$)|text-embedding-|davinci|babbage|tts-|whisper|dall-e|omni-moderation|computer-use)"), "openai"),
    (re.compile(r"^(anthropic[/.])?claude"), "anthropic"),
]
_PROBE_TOKENS = 1000  # small enough to stay in the base tier of tiered prices


@dataclass(frozen=True)
class ModelPrice:
    """USD per token, by the token kinds of the staging table."""

    input: Decimal
    cached: Decimal
    cache_write: Decimal
    output: Decimal


def provider_of(model: str | None, provider_map: Mapping[str, str] | None = None) -> str:
    """Who bills for `model`: the first matching glob of `provider_map` (settings), else the name patterns,
    else the price table's provider, else "unknown". A Claude model served by Bedrock is billed by AWS,
    not Anthropic: that is what the map is for (`anthropic.claude-*` -> `bedrock`)."""
    if not model:
        return "unknown"
    name = model.strip().lower()
    for glob, provider in (provider_map or {}).items():
        if fnmatch.fnmatchcase(name, glob.strip().lower()):
            return provider
    for pattern, provider in _PROVIDER_PATTERNS:
        if pattern.match(name):
            return provider
    match = _lookup(name, None)
    return match[0] if match else "unknown"


def price_of(model: str | None, day: date) -> ModelPrice | None:
    """The model's per-token prices on `day`, or None when the price table does not know the model."""
    if not model:
        return None
    match = _lookup(model.strip().lower(), day)
    return match[1] if match else None


@lru_cache(maxsize=4096)
def _lookup(model: str, day: date | None) -> tuple[str, ModelPrice] | None:
    when = datetime(day.year, day.month, day.day, 12, tzinfo=timezone.utc) if day else None

    def per_token(**usage: int) -> tuple[str, Decimal]:
        calc = genai_prices.calc_price(genai_prices.Usage(**usage), model, genai_request_timestamp=when)
        return calc.provider.id, Decimal(calc.total_price) / _PROBE_TOKENS

    try:
        provider, input_rate = per_token(input_tokens=_PROBE_TOKENS)
        _, cached_rate = per_token(input_tokens=_PROBE_TOKENS, cache_read_tokens=_PROBE_TOKENS)
        _, write_rate = per_token(input_tokens=_PROBE_TOKENS, cache_write_tokens=_PROBE_TOKENS)
        _, output_rate = per_token(output_tokens=_PROBE_TOKENS)
    except LookupError:
        return None
    return provider, ModelPrice(input_rate, cached_rate, write_rate, output_rate)
