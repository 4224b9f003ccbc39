"""Provider bills saved as the providers' own API responses, one folder of pages per day.

    {billing_dir}/openai/{YYYY-MM-DD}/*.json      pages of GET /v1/organization/costs
    {billing_dir}/anthropic/{YYYY-MM-DD}/*.json   pages of GET /v1/organizations/cost_report

A day's folder is one complete fetch: re-fetching a day replaces the folder, so no page is counted twice.
A bill is the source of truth for how much was spent, so a page that does not parse fails the day
loudly (naming the file and field) instead of reconciling against half a bill.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError


class BillingError(ValueError):
    """A bill that is missing or cannot be trusted; the message names the provider, file and field."""


@dataclass(frozen=True)
class BilledCost:
    provider: str
    model: str | None
    token_type: str | None
    line_item: str | None
    cost_usd: Decimal
    source_file: str


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
    has_more: bool = False
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
    has_more: bool = False
    next_page: str | None = None


def day_folder(billing_dir: Path, provider: str, day: date) -> Path:
    return billing_dir / provider / day.isoformat()


def _pages(folder: Path, provider: str, day: date) -> list[Path]:
    pages = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not pages:
        raise BillingError(f"{provider}: no billing file for {day} at {folder}/*.json")
    return pages


def _load(path: Path, model: type[BaseModel], provider: str) -> BaseModel:
    try:
        # Amounts are money: parse JSON numbers straight to Decimal, never through a float.
        return model.model_validate(json.loads(path.read_bytes(), parse_float=Decimal))
    except json.JSONDecodeError as exc:
        raise BillingError(f"{provider}: {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BillingError(f"{provider}: {path}: field `{where}`: {first['msg']}") from None


def _check_amount(provider: str, path: Path, currency: str, amount: Decimal, where: str) -> None:
    if currency.lower() != "usd":
        raise BillingError(f"{provider}: {path}: {where}: currency {currency!r} is not USD")
    if amount < 0:
        raise BillingError(f"{provider}: {path}: {where}: negative amount {amount}")


def read_openai_costs(billing_dir: Path, day: date) -> list[BilledCost]:
    folder = day_folder(billing_dir, "openai", day)
    day_start = int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp())
    costs = []
    for path in _pages(folder, "openai", day):
        page = _load(path, OpenAICostsPage, "openai")
        for b, bucket in enumerate(page.data):
            if bucket.start_time != day_start:
                continue
            for r, result in enumerate(bucket.results):
                _check_amount("openai", path, result.amount.currency, result.amount.value, f"data[{b}].results[{r}]")
                model, _, token_type = (result.line_item or "").partition(", ")
                costs.append(BilledCost("openai", model or None, token_type or None, result.line_item,
                                        result.amount.value, str(path)))
    return costs


def read_anthropic_costs(billing_dir: Path, day: date) -> list[BilledCost]:
    folder = day_folder(billing_dir, "anthropic", day)
    costs = []
    for path in _pages(folder, "anthropic", day):
        page = _load(path, AnthropicCostReportPage, "anthropic")
        for b, bucket in enumerate(page.data):
            if bucket.starting_at.astimezone(timezone.utc).date() != day:
                continue
            for r, result in enumerate(bucket.results):
                _check_amount("anthropic", path, result.currency, result.amount, f"data[{b}].results[{r}]")
                costs.append(BilledCost("anthropic", result.model, result.token_type, result.description,
                                        result.amount / 100, str(path)))
    return costs
