"""Budgets: the file that declares them, their calendar periods, and each day's spend against them.

The file (`FINOPS_BUDGETS_FILE`, else `$FINOPS_HOME/budgets.yaml`):

    budgets:
      - name: search-team
        scope: {team: search}          # allocation keys, provider, model, project_id; a list is any of; {} = all
        period: monthly                # monthly | quarterly | weekly: UTC calendar periods (weeks from Monday)
        amount_usd: 5000
        thresholds: [50, 80, 100, 120] # % of the amount; the default

Errors name the budget and the field (`BudgetsFileError`). Spend is on the configured cost basis
(cost_basis.py), period to date, from the days `allocated_costs` has written (a day it has not written is
counted as missing, never as $0).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Literal

import duckdb
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from finops_pipeline.cost_basis import prepare_delivered, unread_bills
from finops_pipeline.warehouse import MONEY

DEFAULT_THRESHOLDS = [50.0, 80.0, 100.0, 120.0]
TOTAL = "(all spend)"
FIXED_SCOPE_KEYS = ("provider", "model", "project_id")


class BudgetsFileError(ValueError):
    """The budgets file cannot be used: the message names the file, the budget and the field."""


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    scope: dict[str, str | list[str]] = Field(default_factory=dict)
    period: Literal["monthly", "quarterly", "weekly"]
    amount_usd: Decimal = Field(gt=0, le=Decimal("1e15"), allow_inf_nan=False)  # fits the warehouse's DECIMAL
    thresholds: list[float] = Field(default_factory=lambda: list(DEFAULT_THRESHOLDS), min_length=1)

    @field_validator("thresholds", mode="before")
    @classmethod
    def _numbers(cls, value):
        if isinstance(value, list) and any(isinstance(t, bool) or not isinstance(t, int | float) for t in value):
            raise ValueError("every threshold is a number, a percentage of the amount")
        return value

    @field_validator("thresholds")
    @classmethod
    def _positive_and_sorted(cls, value: list[float]) -> list[float]:
        if any(not 0 < t < float("inf") for t in value):
            raise ValueError("every threshold is a percentage above 0")
        return sorted(set(value))

    @field_validator("scope", mode="before")
    @classmethod
    def _ids_as_text(cls, value):
        """An id written as a number (customer_id: 12345) is its text: allocation values are text."""
        as_text = lambda v: str(v) if isinstance(v, int) and not isinstance(v, bool) else v  # noqa: E731
        if isinstance(value, dict):
            return {k: [as_text(x) for x in v] if isinstance(v, list) else as_text(v) for k, v in value.items()}
        return value

    @field_validator("scope")
    @classmethod
    def _values(cls, value: dict) -> dict:
        for key, wanted in value.items():
            values = wanted if isinstance(wanted, list) else [wanted]
            if not values or any(not v.strip() for v in values):
                raise ValueError(f"scope key {key!r} has an empty value")
        return value

    def scope_text(self) -> str:
        return ", ".join(f"{k}={'|'.join(v) if isinstance(v, list) else v}" for k, v in self.scope.items()) or "all spend"

    def predicate(self) -> str:
        """SQL over `spend` (allocation map, provider, model, project_id) that selects the budget's rows."""
        parts = []
        for key, wanted in self.scope.items():
            column = key if key in FIXED_SCOPE_KEYS else f"allocation['{key}']"
            values = wanted if isinstance(wanted, list) else [wanted]
            parts.append(f"{column} IN ({', '.join(_literal(v) for v in values)})")
        return " AND ".join(parts) or "TRUE"

    def period_of(self, day: date) -> tuple[date, date]:
        """(first day, last day) of the UTC calendar period that holds `day`."""
        return period_bounds(self.period, day)


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    budgets: list[Budget] = Field(default_factory=list)


def _literal(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        twice = sorted({str(k) for k in keys if keys.count(k) > 1})
        if twice:
            raise yaml.constructor.ConstructorError(None, None, f"{', '.join(twice)} written twice", node.start_mark)
        return super().construct_mapping(node, deep=deep)


def period_bounds(period: str, day: date) -> tuple[date, date]:
    if period == "weekly":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=6)
    months = 1 if period == "monthly" else 3
    first_month = day.month if months == 1 else 3 * ((day.month - 1) // 3) + 1
    start = date(day.year, first_month, 1)
    after = date(start.year + (start.month + months - 1) // 12, (start.month + months - 1) % 12 + 1, 1)
    return start, after - timedelta(days=1)


def load_budgets(path: Path, scope_keys: list[str]) -> list[Budget]:
    """The budgets in `path` ([] when there is no file). `scope_keys`: the allocation keys a scope may use,
    besides provider, model and project_id."""
    if not path.exists():
        return []
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeys) or {}
    except yaml.YAMLError as exc:
        raise BudgetsFileError(f"{path}: not YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise BudgetsFileError(f"{path}: expected a mapping with a `budgets` list, got {type(raw).__name__}")
    if raw.get("budgets", ()) is None:  # `budgets:` and nothing under it
        raw = {**raw, "budgets": []}
    entries = raw.get("budgets") if isinstance(raw.get("budgets"), list) else []
    try:
        budgets = _File.model_validate(raw).budgets
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = list(error["loc"])
            where = "the file"
            if len(loc) >= 2 and loc[0] == "budgets" and isinstance(loc[1], int):
                entry = entries[loc[1]] if loc[1] < len(entries) else None
                name = entry.get("name") if isinstance(entry, dict) else None
                where = f"budget {name!r}" if name else f"budget #{loc[1] + 1}"
                loc = loc[2:]
            field = ".".join(str(part) for part in loc) or "(the entry)"
            problems.append(f"{where}, field {field}: {error['msg']}")
        raise BudgetsFileError(f"{path}: " + "; ".join(problems)) from None
    allowed = set(scope_keys) | set(FIXED_SCOPE_KEYS)
    seen: set[str] = set()
    for budget in budgets:
        if budget.name in seen or budget.name == TOTAL:
            raise BudgetsFileError(f"{path}: budget {budget.name!r}, field name: used twice (or reserved)")
        seen.add(budget.name)
        unknown = sorted(set(budget.scope) - allowed)
        if unknown:
            raise BudgetsFileError(f"{path}: budget {budget.name!r}, field scope: {', '.join(unknown)} is not an "
                                   f"allocation key, provider, model or project_id (keys: {', '.join(sorted(allowed))})")
    return budgets


def stage_spend(conn: duckdb.DuckDBPyConnection, first: date, last: date, basis: str, allocation_keys: list[str],
                billed_providers: list[str]) -> list[date]:
    """The temp table `spend` (day, allocation, provider, model, project_id, calls, cost_usd) of the days in
    [first, last] that allocated_costs has written (and, on the invoice basis, whose bills were read), on
    `basis`. Returns the days of that span that are not known."""
    written = [d for (d,) in conn.execute(
        "SELECT day FROM materialized_days WHERE asset = 'allocated_costs' AND day BETWEEN ? AND ? ORDER BY day",
        [first, last]).fetchall()]
    columns = "day, allocation, provider, model, project_id, calls, cost_usd"
    if basis == "langfuse":  # set-based over the whole span
        conn.execute(f"""CREATE OR REPLACE TEMP TABLE spend AS SELECT {columns} FROM allocated_costs
                         WHERE day IN (SELECT day FROM materialized_days WHERE asset = 'allocated_costs'
                                       AND day BETWEEN $first AND $last)""", {"first": first, "last": last})
    else:  # the invoice basis scales each day by its own bills: the delivery's SQL, day by day
        conn.execute(f"CREATE OR REPLACE TEMP TABLE spend (day DATE, allocation MAP(VARCHAR, VARCHAR), provider VARCHAR, "
                     f"model VARCHAR, project_id VARCHAR, calls BIGINT, cost_usd {MONEY})")
        written = [d for d in written if not unread_bills(conn, d, billed_providers)]  # no bill read: unknown
        for day in written:
            prepare_delivered(conn, day, basis, allocation_keys, billed_providers)
            conn.execute(f"INSERT INTO spend SELECT {columns} FROM delivered")
    span = (last - first).days + 1
    have = set(written)
    return [first + timedelta(days=i) for i in range(span) if first + timedelta(days=i) not in have]


@dataclass(frozen=True)
class Contributor:
    dimension: str
    value: str
    cost: Decimal


def contributors(conn: duckdb.DuckDBPyConnection, predicate: str, first: date, last: date,
                 dimensions: list[str], per_dimension: int = 1) -> list[Contributor]:
    """The largest values of each of `dimensions` (allocation keys, or model) in `spend` over [first, last]."""
    out = []
    for dimension in dimensions:
        column = "model" if dimension == "model" else f"allocation['{dimension}']"
        rows = conn.execute(f"""
            SELECT {column} AS value, sum(cost_usd) AS cost FROM spend
            WHERE day BETWEEN ? AND ? AND ({predicate}) AND {column} IS NOT NULL
            GROUP BY ALL HAVING sum(cost_usd) > 0 ORDER BY cost DESC, value LIMIT ?""",
                            [first, last, per_dimension]).fetchall()
        out += [Contributor(dimension, value, cost) for value, cost in rows]
    return out
