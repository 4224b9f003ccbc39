"""The FOCUS 1.2 rules a file of ours can break, as the spec states them (FOCUS_Spec v1.2, specification/columns
and attributes). Rule ids are those of the requirements model `model-1.2.json` the FinOps Foundation's
focus_validator 2.x ships. That validator skips or cannot enforce several of these, e.g. the non-null rules
for Usage rows and the price x quantity products, so the tests apply them here. Only the features a file of
ours uses are checked: unit and public list prices, usage measurement, sub accounts, tags.

`focus_violations(paths)` -> the broken rules, each with its id, file and line. Nothing is returned for a
file that keeps every rule.
"""

from __future__ import annotations

import csv
import json
import re
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path

from finops_pipeline.destinations.focus import FOCUS_COLUMNS

MANDATORY = ["BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency", "BillingPeriodStart",
             "BillingPeriodEnd", "ChargeCategory", "ChargeClass", "ChargeDescription", "ChargePeriodStart",
             "ChargePeriodEnd", "ContractedCost", "EffectiveCost", "InvoiceIssuerName", "ListCost",
             "PricingQuantity", "PricingUnit", "ProviderName", "PublisherName", "ServiceCategory", "ServiceName"]
# Conditional columns the providers' features require (public unit prices, usage measurement, sub accounts,
# tags), and the recommended InvoiceId.
CONDITIONAL = ["ListUnitPrice", "SkuId", "SkuPriceId", "SkuMeter", "SkuPriceDetails", "ConsumedQuantity",
               "ConsumedUnit", "SubAccountId", "SubAccountName", "Tags", "InvoiceId"]
NOT_NULL = ["BilledCost", "BillingAccountId", "BillingCurrency", "BillingPeriodStart", "BillingPeriodEnd",
            "ChargeCategory", "ChargePeriodStart", "ChargePeriodEnd", "ContractedCost", "EffectiveCost",
            "InvoiceIssuerName", "ListCost", "ProviderName", "PublisherName", "ServiceCategory", "ServiceName",
            "ChargeFrequency"]
DECIMALS = ["BilledCost", "ContractedCost", "EffectiveCost", "ListCost", "ListUnitPrice", "PricingQuantity",
            "ConsumedQuantity"]
SERVICE_CATEGORIES = {"AI and Machine Learning", "Analytics", "Business Applications", "Compute", "Databases",
                      "Developer Tools", "Multicloud", "Identity", "Integration", "Internet of Things",
                      "Management and Governance", "Media", "Migration", "Mobile", "Networking", "Security",
                      "Storage", "Web", "Other"}
FOCUS_SKU_PRICE_PROPERTIES = {"CoreCount", "DiskMaxIops", "DiskSpace", "DiskType", "GpuCount", "InstanceType",
                              "InstanceSeries", "MemorySize", "NetworkMaxIops", "NetworkMaxThroughput",
                              "OperatingSystem", "Redundancy", "StorageClass"}
DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
# NumericFormat: no sign but a leading minus, an optional exponent without a plus. Written with a decimal point,
# as the Decimal type wants (focus_validator reads an integer column as not Decimal).
DECIMAL = re.compile(r"^-?\d+\.\d+([eE]-?\d+)?$")
UNIT = re.compile(r"^([1-9]\d* )?[A-Z][a-z]*( [A-Z][a-z]*)*(/[A-Z][a-z]*)?$")  # UnitFormat: "1000000 Tokens"


def focus_violations(paths: Path | list[Path]) -> list[str]:
    """The rules `paths` (FOCUS CSV files, read as one dataset) break, as "<rule id> <file>:<line>: <what>"."""
    problems: list[str] = []
    parents: dict[str, set[str]] = {}
    for path in [paths] if isinstance(paths, Path) else paths:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header, rows = reader.fieldnames or [], list(reader)
        problems += _columns(path, header)
        if any(p.startswith(("CostAndUsage", "ColumnHandling")) for p in problems):
            continue
        prices: dict[str, set[str]] = {}
        for line, row in enumerate(rows, start=2):
            where = f"{path.name}:{line}"
            problems += [f"{rule} {where}: {what}" for rule, what in _row(row)]
            if row["SkuPriceId"]:
                parents.setdefault(row["SkuPriceId"], set()).add(row["SkuId"])
                prices.setdefault(row["SkuPriceId"], set()).add(row["ListUnitPrice"])
        # a SKU price is one price (to look the list price up by it) at a time: one a day, in a day's file
        problems += [f"SkuPriceId-C-014-C {path.name}: {price} has the list prices {sorted(found)}"
                     for price, found in sorted(prices.items()) if len(found) > 1]
    problems += [f"SkuPriceId-C-008-M: {price} has the parents {sorted(skus)}"
                 for price, skus in sorted(parents.items()) if len(skus) > 1]
    return problems


def _columns(path: Path, header: list[str]) -> list[str]:
    problems = [f"CostAndUsage {path.name}: column {c} is missing" for c in MANDATORY + CONDITIONAL if c not in header]
    custom = [c for c in header if c not in FOCUS_COLUMNS]
    problems += [f"ColumnHandling-A-010-M {path.name}: custom column {c} lacks the x_ prefix"
                 for c in custom if not c.startswith("x_")]
    if custom and header[-len(custom):] != custom:
        problems.append(f"ColumnHandling {path.name}: custom columns must come after the FOCUS columns")
    return problems


def _row(r: dict[str, str]) -> list[tuple[str, str]]:  # noqa: C901 - one rule a line, in the spec's order
    broken: list[tuple[str, str]] = []

    def rule(rule_id: str, holds: bool, what: str) -> None:
        if not holds:
            broken.append((rule_id, what))

    for c in NOT_NULL:
        rule(f"{c}-not-null", r[c] != "", f"{c} is null")
    values: dict[str, Decimal | None] = {}
    for c in DECIMALS:
        values[c] = None
        if r[c]:
            rule(f"{c}-C-001-M", bool(DECIMAL.match(r[c])), f"{c} {r[c]!r} is not a decimal")
            try:
                values[c] = Decimal(r[c])
            except InvalidOperation:
                pass
    category, correction = r["ChargeCategory"], r["ChargeClass"] == "Correction"
    usage_or_purchase = category in ("Usage", "Purchase") and not correction
    rule("ChargeCategory-C-003-M", category in {"Usage", "Purchase", "Tax", "Credit", "Adjustment"},
         f"ChargeCategory {category!r}")
    rule("ChargeClass-C-005-C", r["ChargeClass"] in {"", "Correction"}, f"ChargeClass {r['ChargeClass']!r}")
    rule("ChargeFrequency-C-003-M", r["ChargeFrequency"] in {"One-Time", "Recurring", "Usage-Based"},
         f"ChargeFrequency {r['ChargeFrequency']!r}")
    rule("ChargeFrequency-C-004-C", not (category == "Purchase" and r["ChargeFrequency"] == "Usage-Based"),
         "a Purchase is Usage-Based")
    rule("ServiceCategory-C-003-M", r["ServiceCategory"] in SERVICE_CATEGORIES, f"ServiceCategory {r['ServiceCategory']!r}")
    rule("BillingCurrency-C-003-M", r["BillingCurrency"] == "USD", f"BillingCurrency {r['BillingCurrency']!r}")

    # Periods: UTC datetimes, the charge period a day within its billing period.
    periods = {}
    for c in ("BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd"):
        rule(f"{c}-C-002-M", bool(DATETIME.match(r[c])), f"{c} {r[c]!r} is not YYYY-MM-DDTHH:mm:ssZ")
        if DATETIME.match(r[c]):
            periods[c] = datetime.fromisoformat(r[c].replace("Z", "+00:00"))
    if len(periods) == 4:
        start, end = periods["ChargePeriodStart"], periods["ChargePeriodEnd"]
        rule("ChargePeriodEnd", end - start == timedelta(days=1), "the charge period is not the day (end exclusive)")
        rule("BillingPeriod", periods["BillingPeriodStart"] <= start < end <= periods["BillingPeriodEnd"],
             "the charge period is outside the billing period")

    # Quantities and units.
    rule("PricingQuantity-C-004-C", not (category == "Tax" and r["PricingQuantity"]), "a Tax row has a PricingQuantity")
    rule("PricingQuantity-C-005-C", not usage_or_purchase or r["PricingQuantity"] != "",
         f"a {category} row has no PricingQuantity")
    rule("PricingUnit-C-005-C/C-006-C", (r["PricingQuantity"] == "") == (r["PricingUnit"] == ""),
         "PricingUnit must be null exactly when PricingQuantity is")
    rule("PricingUnit-C-003-O", not r["PricingUnit"] or bool(UNIT.match(r["PricingUnit"])),
         f"PricingUnit {r['PricingUnit']!r} is not in UnitFormat")
    rule("ConsumedQuantity-C-004-C", category == "Usage" or r["ConsumedQuantity"] == "",
         f"a {category} row has a ConsumedQuantity")
    rule("ConsumedQuantity-C-006-C", category != "Usage" or correction or r["ConsumedQuantity"] != "",
         "a Usage row has no ConsumedQuantity")
    rule("ConsumedUnit-C-005-C/C-006-C", (r["ConsumedQuantity"] == "") == (r["ConsumedUnit"] == ""),
         "ConsumedUnit must be null exactly when ConsumedQuantity is")
    rule("ConsumedUnit-C-003-O", not r["ConsumedUnit"] or bool(UNIT.match(r["ConsumedUnit"])),
         f"ConsumedUnit {r['ConsumedUnit']!r} is not in UnitFormat")

    # Prices and costs.
    price, quantity, billed = values["ListUnitPrice"], values["PricingQuantity"], values["BilledCost"]
    rule("ListUnitPrice-C-004-C", not (category == "Tax" and r["ListUnitPrice"]), "a Tax row has a ListUnitPrice")
    rule("ListUnitPrice-C-005-C", not usage_or_purchase or r["ListUnitPrice"] != "", f"a {category} row has no ListUnitPrice")
    rule("ListUnitPrice-C-008-M", price is None or price >= 0, f"ListUnitPrice {price} is negative")
    if price is not None and quantity is not None and values["ListCost"] is not None and not correction:
        rule("ListCost-C-009-C", price * quantity == values["ListCost"],
             f"ListUnitPrice {price} x PricingQuantity {quantity} = {price * quantity}, not ListCost {values['ListCost']}")
    if r["ListUnitPrice"] == "" and category not in ("Tax", "Usage", "Purchase"):
        rule("ListCost-C-008-C", values["ListCost"] == billed, f"ListCost {values['ListCost']} is not BilledCost {billed}")
    if category not in ("Usage", "Purchase", "Tax"):
        rule("EffectiveCost-C-010-C", values["EffectiveCost"] == billed, "EffectiveCost is not BilledCost")
        rule("ContractedCost-C-008-C", values["ContractedCost"] == billed, "ContractedCost is not BilledCost")

    # SKUs.
    for c in ("SkuId", "SkuPriceId"):
        rule(f"{c}-C-004-C", not (category == "Tax" and r[c]), f"a Tax row has a {c}")
        rule(f"{c}-C-005-C", not usage_or_purchase or r[c] != "", f"a {category} row has no {c}")
    rule("SkuMeter-C-004-C", r["SkuId"] != "" or r["SkuMeter"] == "", "a SkuMeter without a SkuId")
    rule("SkuMeter-C-005-C", r["SkuId"] == "" or r["SkuMeter"] != "", "a SkuId without a SkuMeter")
    rule("SkuPriceDetails-C-004-C", r["SkuPriceId"] != "" or r["SkuPriceDetails"] == "",
         "SkuPriceDetails without a SkuPriceId")
    if r["SkuPriceDetails"]:
        details = _key_values(r["SkuPriceDetails"])
        rule("SkuPriceDetails-C-001-M", details is not None, "SkuPriceDetails is not a JSON object of scalar values")
        for key in details or {}:
            rule("SkuPriceDetails-C-017-C", key.startswith("x_") or key in FOCUS_SKU_PRICE_PROPERTIES,
                 f"SkuPriceDetails property {key!r} is neither FOCUS-defined nor x_")

    # Sub accounts, invoice, tags.
    rule("SubAccountName-C-004-C/C-005-C", (r["SubAccountId"] == "") == (r["SubAccountName"] == ""),
         "SubAccountName must be null exactly when SubAccountId is")
    if r["Tags"]:
        rule("Tags-C-001-M", _key_values(r["Tags"]) is not None, "Tags is not a JSON object of scalar values")
    return broken


def _key_values(text: str) -> dict | None:
    """KeyValueFormat: a JSON object whose values are strings, numbers, booleans or null."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or any(isinstance(v, (dict, list)) for v in value.values()):
        return None
    return value
