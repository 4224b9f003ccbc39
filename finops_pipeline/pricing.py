"""Who serves a model, what that provider charges for it, and one name for a model across its spellings.

Prices come from the maintained `genai-prices` tables shipped with the package (never fetched at run time).
They are looked up once per distinct model, provider and day, as rates per usage unit, then applied in SQL.

- Provider (`provider_of`): `FINOPS_PROVIDER_MAP` first; then the naming conventions of the clouds that
  resell models (Bedrock model and inference-profile ids, Vertex `@` snapshots, Azure OpenAI names, routing
  prefixes such as `bedrock/` or `azure/`); then the vendor's name (`gpt-*` openai, `claude*` anthropic,
  `gemini*` google); then the price table's own matching; else `unknown`. Open-weight models that many
  hosts serve (`gpt-oss-*`, Llama, Qwen, Gemma, Phi) name no provider: `unknown` unless mapped or prefixed.
  Provider ids are the price table's (`openai`, `anthropic`, `aws` for Bedrock, `google` for Vertex and
  Gemini, `azure`, `groq`, ...); the names people use for them (`bedrock`, `vertex`, `azure_openai`) are
  read as those ids wherever a provider is named (the map, the CSV drop).
- Price (`rates`): the price of the provider that serves the call, in each usage unit (genai-prices' unit
  names: `input_tokens`, `cache_read_tokens`, `output_reasoning_tokens`, `input_audio_tokens`,
  `input_characters`, `audio_seconds`, ...), each unit at its own price or, where the table has none for
  it, at its parent's (audio input at the input price, reasoning at the output price), as genai-prices
  charges it. A unit the model is not priced in at all is `None`: a probe that costs exactly $0 is never
  taken as a price. A model the provider does not list has no rates: it is unpriced, never priced at
  another vendor's list. Tiered prices (e.g. above 200k context tokens) are those of a small call.
- Model name (`model_key`): the name both a trace and a bill can agree on: no routing, region or vendor
  prefix, no Bedrock version suffix, no snapshot date (`-2024-08-06`, `@20250514`), no `-latest`, a
  fine-tune as `ft-<base>`, Azure's `gpt-35` as `gpt-3.5`, a bill's modality words dropped.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from functools import lru_cache

import genai_prices
from genai_prices.data_snapshot import get_snapshot
from genai_prices.data_units import unit_data

UNKNOWN = "unknown"
# The token kinds the staging table keeps as columns, as genai-prices' units.
MAIN_UNITS = {"input": "input_tokens", "cached": "cache_read_tokens", "cache_write": "cache_write_tokens",
              "output": "output_tokens", "reasoning": "output_reasoning_tokens"}
UNIT_NAMES = frozenset(unit_data)  # every unit genai-prices can price
_PROBE = 1000  # units per probe: small enough to stay in the base tier of tiered prices

# What people call providers, as the price table's ids. (The table's own `provider_match` would read
# `azure_openai` as openai: these come first.)
PROVIDER_ALIASES = {
    "bedrock": "aws", "amazon_bedrock": "aws", "aws_bedrock": "aws", "amazon": "aws",
    "vertex": "google", "vertex_ai": "google", "vertexai": "google", "google_vertex": "google",
    "google-vertex": "google", "gemini": "google", "google_ai_studio": "google",
    "azure_openai": "azure", "azure-openai": "azure", "azure_ai": "azure", "azureopenai": "azure",
    "together_ai": "together", "together-ai": "together", "xai": "x-ai", "mistralai": "mistral",
}

_REGION = r"(?:us|eu|apac|global|us-gov|jp|au|ca)\."
_BEDROCK_VENDOR = r"(?:anthropic|meta|amazon|mistral|cohere|ai21|deepseek|openai|qwen|writer|twelvelabs|stability)\."
_ARN = r"arn:aws[a-z-]*:bedrock:[^:]*:[^:]*:(?:foundation-model|inference-profile|application-inference-profile)/"
# Routing prefixes (LiteLLM's and others'): `bedrock/...`, `azure/...`, `vertex_ai/...`.
_ROUTE = re.compile(r"^([a-z][a-z0-9_-]*)/")
# Cloud naming conventions, tried before the vendor's name: the cloud bills, not the vendor.
_CLOUD_PATTERNS = [
    (re.compile(rf"^(?:{_ARN})?(?:{_REGION})?{_BEDROCK_VENDOR}[a-z0-9._-]+(?::\d+)?$"), "aws"),
    (re.compile(r"^(?:publishers/[a-z-]+/models/)?[a-z0-9.-]+@[a-z0-9.-]+$"), "google"),  # Vertex snapshots
    (re.compile(r"^gpt-35"), "azure"),  # Azure OpenAI's spelling of gpt-3.5
]
# Models open-weight and served by many hosts: their name says nothing about who bills for them.
_OPEN_WEIGHT = re.compile(r"^(gpt-oss|llama|meta-llama|qwen|gemma|phi-|mixtral-8x)")
_VENDOR_PATTERNS = [
    (re.compile(r"^(ft:)?(gpt-|chatgpt-|o\d(-|$)|text-embedding-|davinci|babbage|tts-|whisper|dall-e|omni-moderation|"
                r"computer-use|codex-)"), "openai"),
    (re.compile(r"^claude"), "anthropic"),
    (re.compile(r"^(gemini|gemma-3n|imagen|veo|text-embedding-00|gemini-embedding)"), "google"),
]


@dataclass(frozen=True)
class Rates:
    """USD per unit for one model as one provider charges it on one day. `units` maps genai-prices' unit
    names to a rate, or None where the model is not priced in that unit."""

    provider: str
    units: dict[str, Decimal | None] = field(default_factory=dict)
    per_call: Decimal = Decimal(0)  # a fee per request (e.g. Perplexity), else 0

    def rate(self, unit: str) -> Decimal | None:
        return self.units.get(unit)


def canonical_provider(name: str) -> str:
    """`name` as the price table's provider id where it names one of its providers (`bedrock` -> `aws`),
    else unchanged (`self_hosted`)."""
    key = name.strip().lower()
    if key in PROVIDER_ALIASES:
        return PROVIDER_ALIASES[key]
    ids = _provider_ids()
    if key in ids:
        return key
    try:
        return get_snapshot().find_provider(None, key, None).id
    except LookupError:
        return key


def provider_of(model: str | None, provider_map: Mapping[str, str] | None = None) -> str:
    """Who bills for `model` (see the module doc); "unknown" when nothing says."""
    if not model:
        return UNKNOWN
    name = model.strip().lower()
    bare = _strip_region(name)
    for glob, provider in (provider_map or {}).items():
        pattern = glob.strip().lower()
        if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(bare, pattern):
            return canonical_provider(provider)
    routed = _ROUTE.match(name)
    if routed and not name.startswith("publishers/"):
        route = canonical_provider(routed.group(1))
        if route in _provider_ids():
            return route
        name = name[routed.end():]  # an unknown router (e.g. a gateway's own name): judge the model
    for pattern, provider in _CLOUD_PATTERNS:
        if pattern.match(name):
            return provider
    if _OPEN_WEIGHT.match(name):
        return UNKNOWN
    for pattern, provider in _VENDOR_PATTERNS:
        if pattern.match(name):
            return provider
    return _table_provider(name) or UNKNOWN


def rates(model: str | None, day: date, provider: str, units: frozenset[str] = frozenset()) -> Rates | None:
    """The rates of `model` as `provider` prices it on `day`: the main token units and `units`. None when the
    price table does not list the model under that provider (or knows no such provider). A name the table
    does not list as written is looked up as `model_key` reads it (`claude-sonnet-4-latest` as
    `claude-sonnet-4`, Azure's `gpt-35-turbo-0125` as `gpt-3.5-turbo-0125`)."""
    if not model or provider not in _provider_ids():
        return None
    wanted = frozenset(MAIN_UNITS.values()) | units
    for name in dict.fromkeys([_serving_name(model), model_key(model)]):
        found = _rates(name, provider, day, wanted)
        if found is not None:
            return found
    return None


def list_rates(model: str | None, day: date) -> Rates | None:
    """`rates` at the provider `provider_of` finds for `model` with no map: its list price."""
    return rates(model, day, provider_of(model))


@lru_cache(maxsize=4096)
def _rates(model: str, provider: str, day: date, units: frozenset[str]) -> Rates | None:
    when = datetime(day.year, day.month, day.day, 12, tzinfo=timezone.utc)

    def price(**usage: int) -> Decimal:
        return genai_prices.calc_price(genai_prices.Usage(**usage), model, provider_id=provider,
                                       genai_request_timestamp=when).total_price

    try:
        per_call = price()  # a request's own fee (usually 0): taken out of every probe
    except LookupError:
        return None
    listed = get_snapshot().find_provider_model(model, None, provider, None)[1].get_prices(when)
    found: dict[str, Decimal | None] = {}
    for unit in sorted(units):
        try:
            probe = (price(**{u: _PROBE for u in _with_parents(unit)}) - per_call) / _PROBE
        except (LookupError, ValueError):  # a unit this model's usage cannot have
            probe = Decimal(0)
        # $0 from a probe is not a price. Nor is text's price for audio, image or video tokens: providers
        # charge those several times more, so a model the table gives no such price leaves them unpriced.
        own_price_needed = unit_data[unit]["dimensions"].get("modality", "text") != "text"
        if probe <= 0 or (own_price_needed and getattr(listed, unit_data[unit]["price_key"], None) is None):
            found[unit] = None
        else:
            found[unit] = probe
    return Rates(provider, found, per_call)


@lru_cache(maxsize=None)
def _with_parents(unit: str) -> tuple[str, ...]:
    """`unit` and the units that contain it (genai-prices counts a child inside its parents: cache reads
    inside input tokens), so a probe of N units of a leaf is well formed."""
    dims = unit_data[unit]["dimensions"]
    return tuple(u for u, data in unit_data.items()
                 if data["dimensions"].items() <= dims.items())


def model_key(model: str | None) -> str | None:
    """The name a trace and a bill can agree on (see the module doc): "us.anthropic.claude-sonnet-4-20250514-v1:0"
    -> "claude-sonnet-4", "ft:gpt-4o-mini-2024-07-18:acme::x1" -> "ft-gpt-4o-mini", "gpt-image-1 image" ->
    "gpt-image-1", "claude-sonnet-4-latest" -> "claude-sonnet-4"."""
    if not model or not model.strip():
        return None
    name = model.strip().lower().split()[0]  # a bill's modality words: "gpt-image-1 image"
    while (routed := _ROUTE.match(name)) and not name.startswith("publishers/"):
        name = name[routed.end():]
    name = re.sub(rf"^(?:{_ARN})", "", name)
    name = re.sub(r"^publishers/[a-z-]+/models/", "", name)
    name = re.sub(rf"^(?:{_REGION})?{_BEDROCK_VENDOR}", "", name)
    fine_tune = re.match(r"^ft:([^:]+)", name)
    if fine_tune:
        name = f"ft-{fine_tune.group(1)}"
    name = re.sub(r"-v\d+(?::\d+)?$", "", name)     # Bedrock's -v1:0
    name = re.sub(r"@.*$", "", name)                 # Vertex's @20250514, @001
    name = re.sub(r"-(?:\d{4}-\d{2}-\d{2}|\d{8})$", "", name)
    name = re.sub(r"-latest$", "", name)
    return re.sub(r"^gpt-35", "gpt-3.5", name)


def table_model(provider: str, model: str | None) -> str | None:
    """The price table's id of `model` as `provider` lists it (aliases and snapshots share it), or None."""
    if not model or provider not in _provider_ids():
        return None
    try:
        return get_snapshot().find_provider_model(_serving_name(model), None, provider, None)[1].id
    except LookupError:
        return None


def _serving_name(model: str) -> str:
    """The model as the provider that serves it names it: without a routing prefix."""
    name = model.strip().lower()
    routed = _ROUTE.match(name)
    return name[routed.end():] if routed and not name.startswith("publishers/") else name


def _strip_region(name: str) -> str:
    return re.sub(rf"^(?:{_ARN})?{_REGION}", "", name)


@lru_cache(maxsize=1)
def _provider_ids() -> frozenset[str]:
    return frozenset(p.id for p in get_snapshot().providers)


@lru_cache(maxsize=4096)
def _table_provider(name: str) -> str | None:
    try:
        return genai_prices.calc_price(genai_prices.Usage(input_tokens=1), name).provider.id
    except LookupError:
        return None
