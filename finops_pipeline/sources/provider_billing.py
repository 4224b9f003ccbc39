"""Provider bills as line items: parsed from the providers' cost API pages, or from a CSV drop.

A page is the same JSON whether it came over HTTP (sources/billing_api.py) or was saved as a file:

    {billing_dir}/openai/{YYYY-MM-DD}/*.json      pages of GET /v1/organization/costs
    {billing_dir}/anthropic/{YYYY-MM-DD}/*.json   pages of GET /v1/organizations/cost_report
    {billing_dir}/other/*.csv                     other providers: day,provider,model,cost_usd[,token_kind,...]

A day's folder is one complete fetch: re-fetching a day replaces the folder, so no page is counted twice.
A bill is the source of truth for how much was spent, so anything that does not parse fails the day
loudly, naming the provider, the day, where (file or request) and the field, instead of reconciling
against half a bill. Amounts never pass through a float.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from finops_pipeline.pricing import canonical_provider

# What a line of a bill is for, in the staging table's token kinds; `other` is everything not a token
# (web search, code execution, fine-tuning hours, ...).
TOKEN_KINDS = ("input", "cached", "cache_write", "output", "other")
_TIER_PREFIX = re.compile(r"^\s*\w+\s*\|\s*")
_PROVIDER_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")


class BillingError(ValueError):
    """A bill that is missing or cannot be trusted; the message names the provider, day, where and field."""


@dataclass(frozen=True)
class BilledCost:
    provider: str
    model: str | None        # as the bill names it
    token_type: str | None   # as the bill names it
    token_kind: str          # one of TOKEN_KINDS
    line_item: str | None    # OpenAI's line_item, Anthropic's description, the CSV's description
    cost_usd: Decimal
    source: str              # the file (and line), or the request, it came from
    project_id: str | None = None  # OpenAI's project, Anthropic's workspace


# --- OpenAI: GET /v1/organization/costs -------------------------------------------------------------
class OpenAIAmount(BaseModel):
    value: Decimal
    currency: str


class OpenAICostResult(BaseModel):
    model_config = ConfigDict(extra="ignore")
    amount: OpenAIAmount
    line_item: str | None = None
    project_id: str | None = None


class OpenAICostBucket(BaseModel):
    model_config = ConfigDict(extra="ignore")
    start_time: int
    end_time: int
    results: list[OpenAICostResult]


class OpenAICostsPage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    data: list[OpenAICostBucket]
    has_more: bool
    next_page: str | None = None


# --- Anthropic: GET /v1/organizations/cost_report ---------------------------------------------------
class AnthropicCostResult(BaseModel):
    model_config = ConfigDict(extra="ignore")
    amount: Decimal  # a decimal string in cents: "123.78912" is $1.2378912
    currency: str
    cost_type: str | None = None
    description: str | None = None
    model: str | None = None
    token_type: str | None = None
    service_tier: str | None = None
    workspace_id: str | None = None


class AnthropicCostBucket(BaseModel):
    model_config = ConfigDict(extra="ignore")
    starting_at: datetime
    ending_at: datetime
    results: list[AnthropicCostResult]


class AnthropicCostReportPage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    data: list[AnthropicCostBucket]
    has_more: bool
    next_page: str | None = None


CostPage = OpenAICostsPage | AnthropicCostReportPage
PAGE_MODELS: dict[str, type[BaseModel]] = {"openai": OpenAICostsPage, "anthropic": AnthropicCostReportPage}


def parse_page(provider: str, day: date, where: str, body: bytes | str) -> CostPage:
    """One page of `provider`'s cost API. JSON numbers become Decimal, never float."""
    def not_a_number(constant: str):
        raise BillingError(f"{provider} bill for {day}: {where}: {constant} is not an amount")

    try:
        return PAGE_MODELS[provider].model_validate(json.loads(body, parse_float=Decimal, parse_constant=not_a_number))
    except json.JSONDecodeError as exc:
        raise BillingError(f"{provider} bill for {day}: {where} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise BillingError(f"{provider} bill for {day}: {where}: field `{field}`: {first['msg']}") from None


def page_lines(provider: str, day: date, where: str, page: CostPage) -> list[BilledCost]:
    """The page's line items for `day` (buckets of other days are not this day's bill)."""
    lines = []
    for b, bucket in enumerate(page.data):
        if isinstance(bucket, OpenAICostBucket):
            if datetime.fromtimestamp(bucket.start_time, timezone.utc).date() != day:
                continue
            for r, result in enumerate(bucket.results):
                field = f"data.{b}.results.{r}.amount"
                _check_amount(provider, day, where, field, result.amount.currency, result.amount.value)
                model, token_type = openai_line_item(result.line_item)
                lines.append(BilledCost(provider, model or None, token_type or None, openai_token_kind(token_type),
                                        result.line_item, result.amount.value, where, result.project_id))
        else:
            if bucket.starting_at.astimezone(timezone.utc).date() != day:
                continue
            for r, result in enumerate(bucket.results):
                field = f"data.{b}.results.{r}.amount"
                _check_amount(provider, day, where, field, result.currency, result.amount)
                lines.append(BilledCost(provider, result.model, result.token_type,
                                        anthropic_token_kind(result.token_type), result.description,
                                        result.amount / 100, where, result.workspace_id))
    return lines


def openai_line_item(line_item: str | None) -> tuple[str | None, str | None]:
    """"gpt-4o-2024-08-06, cached input" -> ("gpt-4o-2024-08-06", "cached input"). A service tier prefix
    ("priority | gpt-5, input") is not part of the model; "web search tool calls" has no token type."""
    item = _TIER_PREFIX.sub("", line_item or "")
    model, _, token_type = item.partition(", ")
    return model.strip() or None, token_type.strip() or None


def openai_token_kind(token_type: str | None) -> str:
    """The part of OpenAI's line item after the model: "input", "cached input", "cache writes", "output",
    with tails such as ", long context"."""
    words = (token_type or "").lower()
    if words.startswith("cached"):
        return "cached"
    if words.startswith("cache write"):
        return "cache_write"
    if words.startswith("input"):
        return "input"
    if words.startswith("output"):
        return "output"
    return "other"


def anthropic_token_kind(token_type: str | None) -> str:
    if token_type == "uncached_input_tokens":
        return "input"
    if token_type == "output_tokens":
        return "output"
    if token_type == "cache_read_input_tokens":
        return "cached"
    if token_type and token_type.startswith("cache_creation"):
        return "cache_write"
    return "other"


def _check_amount(provider: str, day: date, where: str, field: str, currency: str, amount: Decimal) -> None:
    if currency.lower() != "usd":
        raise BillingError(f"{provider} bill for {day}: {where}: field `{field}`: currency {currency!r} is not USD")
    if amount < 0:
        raise BillingError(f"{provider} bill for {day}: {where}: field `{field}`: negative amount {amount}")


# --- saved pages ------------------------------------------------------------------------------------
def day_folder(billing_dir: Path, provider: str, day: date) -> Path:
    return billing_dir / provider / day.isoformat()


def read_bill_files(billing_dir: Path, provider: str, day: date) -> list[BilledCost]:
    folder = day_folder(billing_dir, provider, day)
    pages = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not pages:
        raise BillingError(f"{provider} bill for {day}: no billing file at {folder}/*.json")
    lines = []
    for path in pages:
        lines += page_lines(provider, day, str(path), parse_page(provider, day, str(path), path.read_bytes()))
    return lines


# --- other providers: the CSV drop ------------------------------------------------------------------
CSV_REQUIRED = ("day", "provider", "model", "cost_usd")
CSV_OPTIONAL = ("token_kind", "description", "currency")


def other_bill_files(billing_dir: Path) -> list[Path]:
    return sorted((billing_dir / "other").glob("*.csv"))


def read_other_costs(billing_dir: Path, day: date, excluded: set[str]) -> list[BilledCost]:
    """`day`'s lines of every CSV in `{billing_dir}/other/`. A provider's day comes from one file only
    (two would count it twice), and never names a provider whose bill is read from its own API."""
    lines: list[BilledCost] = []
    origin: dict[str, Path] = {}
    for path in other_bill_files(billing_dir):
        for line in _read_csv(path, day, excluded):
            first = origin.setdefault(line.provider, path)
            if first != path:
                raise BillingError(f"{line.provider} bill for {day}: both {first} and {path} have lines for this "
                                   "day; it would be counted twice. Keep one file per provider and day.")
            lines.append(line)
    return lines


def _read_csv(path: Path, day: date, excluded: set[str]) -> list[BilledCost]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in CSV_REQUIRED if c not in columns]
        unknown = [c for c in columns if c not in CSV_REQUIRED + CSV_OPTIONAL]
        if missing or unknown:
            raise BillingError(f"other bill: {path}: header must have columns {', '.join(CSV_REQUIRED)} (optional: "
                               f"{', '.join(CSV_OPTIONAL)}); missing {missing}, unknown {unknown}")
        reader.fieldnames = columns
        lines = []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            values = {k: (v or "").strip() for k, v in row.items() if k is not None}
            try:
                row_day = date.fromisoformat(values["day"])
            except ValueError:
                raise BillingError(f"other bill: {where}: field `day`: {values['day']!r} is not a YYYY-MM-DD date") from None
            if row_day != day:
                continue
            provider = values["provider"].lower()
            if not _PROVIDER_NAME.match(provider):
                raise BillingError(f"other bill for {day}: {where}: field `provider`: {values['provider']!r} is not a "
                                   "provider name (lower-case letters, digits, _ . -)")
            provider = canonical_provider(provider)  # as the price table names it: `bedrock` is `aws`
            if provider == "unknown":
                raise BillingError(f"other bill for {day}: {where}: field `provider`: `unknown` stands for models mapped "
                                   "to no provider; name the provider, and map its models with FINOPS_PROVIDER_MAP")
            if provider in excluded:
                raise BillingError(f"{provider} bill for {day}: {where}: field `provider`: {provider} is billed from its "
                                   "own cost API; a CSV line would count it twice")
            try:
                cost = Decimal(values["cost_usd"])
            except InvalidOperation:
                cost = Decimal("NaN")
            if not cost.is_finite():
                raise BillingError(f"{provider} bill for {day}: {where}: field `cost_usd`: {values['cost_usd']} "
                                   "is not a number")
            _check_amount(provider, day, where, "cost_usd", values.get("currency") or "USD", cost)
            kind = values.get("token_kind") or "other"
            if kind not in TOKEN_KINDS:
                raise BillingError(f"{provider} bill for {day}: {where}: field `token_kind`: {kind!r} is not one of "
                                   f"{', '.join(TOKEN_KINDS)}")
            lines.append(BilledCost(provider, values["model"] or None, values.get("token_kind") or None, kind,
                                    values.get("description") or None, cost, where))
        return lines
