"""Delivery: the Finout CSV to a real S3 API (moto's server on loopback), the invoice cost basis, what may
leave the building, and the FOCUS 1.2 file."""

import csv
import io
import json
import re
import socket
import threading
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import boto3
import dagster as dg
import pytest
import httpx

from finops_pipeline.destinations.focus import CUSTOM_COLUMNS, FOCUS_COLUMNS
from finops_pipeline.settings import FinopsSettings
from finops_pipeline_tests.conftest import (
    BUCKET,
    DAY,
    check_evaluation,
    failed_on_checks,
    cover_day,
    generation,
    materialization_metadata,
    materialize_day,
    usd,
    write_anthropic_bill,
    write_openai_bill,
)

KEY = "llm/llm-costs-2026-11-21.csv"


def rows(features: dict[str, float], model: str = "gpt-4o", **extra) -> list[dict]:
    return [generation(f"{model}-{n}", f"2026-11-21 09:{n:02d}:00", model=model, cost=cost,
                       metadata={"feature": feature, "team": "t", "customer_id": "acme", "tier": "pro"}, **extra)
            for n, (feature, cost) in enumerate(features.items())]


def deliver(settings, day_rows: list[dict], **overrides):
    cover_day(settings, {9: day_rows})
    result = materialize_day(settings, selection=["langfuse_generations", "allocated_costs", "finout_upload",
                                                  "focus_export"], **overrides)
    return result


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --- a real S3 API ------------------------------------------------------------------------------------
def object_text(client, key: str = KEY) -> str:
    return client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()


def test_redelivery_replaces_the_days_one_object(settings, s3):
    result = deliver(settings, rows({"chat": 1.25, "search": 0.75}), finout_s3_uri=f"s3://{BUCKET}/llm")
    assert result.success
    meta = materialization_metadata(result, "finout_upload")
    head = s3.head_object(Bucket=BUCKET, Key=KEY)
    assert (meta["s3_bucket"], meta["s3_key"], meta["s3_etag"]) == (BUCKET, KEY, head["ETag"].strip('"'))
    assert meta["dagster/row_count"] == 2 and meta["total_cost_usd"] == 2.0
    assert object_text(s3) == (Path(settings.finout_dir) / "llm-costs-2026-11-21.csv").read_text()

    result = deliver(settings, rows({"chat": 1.25, "search": 0.75, "summarise": 3.0}), finout_s3_uri=f"s3://{BUCKET}/llm")
    assert result.success
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]] == [KEY]  # replaced, not joined
    assert materialization_metadata(result, "finout_upload")["s3_etag"] != meta["s3_etag"]
    assert sum(Decimal(r["Cost"]) for r in csv.DictReader(io.StringIO(object_text(s3)))) == usd("5.0")


def test_the_object_name_is_a_template(settings, s3):
    result = deliver(settings, rows({"chat": 1.0}), finout_s3_uri=f"s3://{BUCKET}/finout/",
                     finout_object_name="{year}/{month}/llm-costs-{day}.csv")
    assert result.success
    assert materialization_metadata(result, "finout_upload")["s3_key"] == "finout/2026/11/llm-costs-2026-11-21.csv"
    with pytest.raises(ValueError, match="must contain"):
        FinopsSettings.from_env({"FINOPS_HOME": "/tmp/x", "FINOPS_FINOUT_OBJECT_NAME": "llm-costs.csv"})


def failure_message(result) -> str:
    assert not result.success
    [event] = result.get_step_failure_events()
    return str(event.step_failure_data.error)


def test_a_missing_bucket_fails_with_a_clear_message(settings, s3):
    message = failure_message(deliver(settings, rows({"chat": 1.0}), finout_s3_uri="s3://no-such-bucket/llm"))
    assert "NoSuchBucket" in message and "the bucket 'no-such-bucket' does not exist" in message


def test_access_denied_fails_and_the_previous_object_stays(settings, s3, monkeypatch):
    assert deliver(settings, rows({"chat": 1.0}), finout_s3_uri=f"s3://{BUCKET}/llm").success
    before = object_text(s3)
    iam = boto3.session.Session().client("iam")
    iam.create_user(UserName="reader")
    iam.put_user_policy(UserName="reader", PolicyName="read", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"}]}))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    httpx.post(f"{s3.endpoint}/moto-api/reset-auth", content=b"0")  # from now on, IAM is enforced
    try:
        message = failure_message(deliver(settings, rows({"chat": 1.0, "search": 9.0}),
                                          finout_s3_uri=f"s3://{BUCKET}/llm"))
    finally:
        httpx.post(f"{s3.endpoint}/moto-api/reset-auth", content=b"inf")
    assert "AccessDenied" in message and "s3:PutObject" in message and "previous object" in message
    assert key["SecretAccessKey"] not in message
    assert object_text(s3) == before


class CuttingProxy:
    """Forwards to S3 and cuts every connection once the request body has started: an upload that dies
    half way, as on a flaky network."""

    def __init__(self, upstream: str):
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.cuts = 0
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._cut, args=(client,), daemon=True).start()

    def _cut(self, client: socket.socket) -> None:
        with client, socket.create_connection(self.upstream) as upstream:
            received = b""
            while b"\r\n\r\n" not in received:
                chunk = client.recv(65536)
                if not chunk:
                    return
                received += chunk
                upstream.sendall(chunk)
            head, _, body = received.partition(b"\r\n\r\n")
            if b"100-continue" in head.lower() and not body:
                client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = client.recv(16)
            upstream.sendall(body[:16])  # S3 sees the upload start, then the line goes dead
            self.cuts += 1


def test_an_upload_cut_off_half_way_fails_and_the_previous_object_stays(settings, s3, monkeypatch):
    assert deliver(settings, rows({"chat": 1.0}), finout_s3_uri=f"s3://{BUCKET}/llm").success
    before = object_text(s3)
    proxy = CuttingProxy(s3.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    message = failure_message(deliver(settings, rows({"chat": 1.0, "search": 9.0}), finout_s3_uri=f"s3://{BUCKET}/llm"))
    assert f"could not put s3://{BUCKET}/{KEY}" in message and "previous object" in message
    assert proxy.cuts == 2  # AWS_MAX_ATTEMPTS: botocore retried once
    assert object_text(s3) == before


def test_without_an_s3_uri_the_day_goes_to_the_local_folder_only(settings, s3):
    result = deliver(settings, rows({"chat": 1.0}))
    assert result.success and "s3_key" not in materialization_metadata(result, "finout_upload")
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)


# --- the invoice cost basis -----------------------------------------------------------------------
# Seven traced gpt-4o rows at awkward amounts across features, a Claude row, and a model of no provider.
TRACED = {f"f{n}": round(0.001 * p, 6) for n, p in enumerate([2, 3, 5, 7, 11, 13, 17])}


def test_invoice_basis_sums_to_each_bill_to_the_last_digit(settings, settled):
    day_rows = rows(TRACED) + rows({"code": 3.0}, model="claude-sonnet-4-20250514") + rows({"chat": 1.0}, model="acme-llama")
    billing = Path(settings.billing_dir)
    # gpt-4o's bill, $1.000000000001, does not split into the traced shares without a remainder
    write_openai_bill(billing, DAY, {"gpt-4o-2024-08-06, input": 0.700000000001, "gpt-4o-2024-08-06, output": 0.3,
                                     "gpt-4.1-nano-2025-04-14, input": 41.0}, pages=2)
    write_anthropic_bill(billing, DAY, {"claude-sonnet-4-20250514": "333.3333333"})
    cover_day(settings, {9: day_rows})
    result = materialize_day(settings, cost_basis="invoice")
    assert failed_on_checks(result) == {"cost_reconciliation"}  # $41 billed and never traced: delivered all the same

    delivered = read_csv(Path(settings.finout_dir) / "llm-costs-2026-11-21.csv")
    total = {p: sum(Decimal(r["Cost"]) for r in delivered if r["provider"] == p) for p in ("openai", "anthropic", "unknown")}
    assert total == {"openai": Decimal("42.000000000001"), "anthropic": Decimal("3.333333333"), "unknown": usd("1.0")}
    [unattributed] = [r for r in delivered if r["source"] == "invoice"]
    assert (unattributed["model"], Decimal(unattributed["Cost"])) == ("gpt-4.1-nano", usd("41.0"))
    assert {unattributed[k] for k in ("service_name", "feature", "team", "customer_id")} == {"unattributed"}
    # the traced breakdown keeps its shape: each feature's share of gpt-4o is its traced share
    gpt4o = {r["feature"]: Decimal(r["Cost"]) for r in delivered if r["model"] == "gpt-4o"}
    traced_total = sum(Decimal(str(v)) for v in TRACED.values())
    for feature, cost in gpt4o.items():
        assert abs(cost / Decimal("1.000000000001") - Decimal(str(TRACED[feature])) / traced_total) < Decimal("1e-9")

    check = check_evaluation(result, "delivered_cost_conserved")
    assert check.passed and "billed (traced where no bill) $46.333333" in check.description
    assert check_evaluation(result, "focus_cost_conserved").passed


@pytest.mark.parametrize(("traced", "line_item"), [
    ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "ft-gpt-4o-mini-2024-07-18, input"),  # a fine-tune and its line item
    ("gpt-image-1", "gpt-image-1 image, output"),                                   # a line item's modality word
    ("gpt-4o", "gpt-4o-2024-08-06, input"),                                         # an alias and its snapshot
    ("openai/gpt-4.1-mini", "gpt-4.1-mini-2025-04-14, output"),                     # a routing prefix
])
def test_the_invoice_basis_matches_a_bill_line_to_the_traces_across_spellings(settings, settled, traced, line_item):
    write_openai_bill(Path(settings.billing_dir), DAY, {line_item: 0.9})
    write_anthropic_bill(Path(settings.billing_dir), DAY, {})
    cover_day(settings, {9: rows({"chat": 0.2, "search": 0.1}, model=traced)})
    result = materialize_day(settings, cost_basis="invoice")
    assert failed_on_checks(result) == {"cost_reconciliation"}  # billed 3x the traces: the gap fails the day
    assert check_evaluation(result, "billed_models_matched").passed
    delivered = {r["feature"]: Decimal(r["Cost"]) for r in read_csv(Path(settings.finout_dir) / "llm-costs-2026-11-21.csv")}
    assert delivered == {"chat": usd("0.6"), "search": usd("0.3")}  # the bill, in the traces' shares: nothing unattributed


def test_names_that_still_do_not_meet_fail_the_match_check_naming_both(settings, settled):
    """A proxy that renames the model: the bill's model and the traced one never meet. On the invoice basis the
    bill is then delivered as `unattributed`, so the check fails with ERROR, naming both names."""
    write_openai_bill(Path(settings.billing_dir), DAY, {})
    write_anthropic_bill(Path(settings.billing_dir), DAY, {"claude-sonnet-4-20250514": "30"})
    cover_day(settings, {9: rows({"chat": 0.3}, model="claude-acme-proxy")})
    result = materialize_day(settings, cost_basis="invoice")
    check = check_evaluation(result, "billed_models_matched")
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert check.description.startswith("anthropic: $0.30 (100.0% of the bill) is billed for `claude-sonnet-4` that no "
                                        "trace names, while traced `claude-acme-proxy` ($0.30) found no bill line")
    assert failed_on_checks(result) == {"cost_reconciliation"}
    [row] = read_csv(Path(settings.finout_dir) / "llm-costs-2026-11-21.csv")
    assert (row["feature"], row["model"], Decimal(row["Cost"])) == ("unattributed", "claude-sonnet-4", usd("0.3"))
    # on the langfuse basis the delivery does not depend on it: a warning
    langfuse = materialize_day(settings, selection=["cost_reconciliation"])
    assert check_evaluation(langfuse, "billed_models_matched").severity == dg.AssetCheckSeverity.WARN


def test_on_the_invoice_basis_delivery_waits_for_the_bills():
    from finops_pipeline.definitions import build_assets

    def parents(basis: str) -> set[str]:
        [finout] = [a for a in build_assets(basis) if a.key.to_user_string() == "finout_upload"]
        return {k.to_user_string() for deps in finout.asset_deps.values() for k in deps}

    assert parents("langfuse") == {"allocated_costs"}
    assert parents("invoice") == {"allocated_costs", "openai_costs", "anthropic_costs", "other_provider_costs"}


# --- what leaves the building --------------------------------------------------------------------
ODD_VALUES = ["acme, inc.", 'the "big" one', "two\nlines", "zürich", "東京", "emoji 🚀", "=1+2", "+cmd",
              "-2", "@SUM(A1)", "\tindent", "plain"]


def test_odd_values_survive_a_csv_round_trip_unchanged_in_meaning(settings):
    day_rows = rows({value: 1.0 + n for n, value in enumerate(ODD_VALUES)})
    assert deliver(settings, day_rows).success
    finout = read_csv(Path(settings.finout_dir) / "llm-costs-2026-11-21.csv")
    focus = read_csv(Path(settings.focus_dir) / "focus-2026-11-21.csv")
    assert len(finout) == len(focus) == len(ODD_VALUES)
    for delivered in ([r["feature"] for r in finout], [r["x_Feature"] for r in focus],
                      [json.loads(r["Tags"])["feature"] for r in focus]):
        assert sorted(spreadsheet_meaning(v) for v in delivered) == sorted(ODD_VALUES)
    # no cell a spreadsheet would run as a formula
    assert not [r["feature"] for r in finout if re.match(r"^[=+\-@\t\r]", r["feature"])]
    assert not [r["x_Feature"] for r in focus if re.match(r"^[=+\-@\t\r]", r["x_Feature"])]


def spreadsheet_meaning(cell: str) -> str:
    """What a spreadsheet shows: a leading apostrophe before a formula character only says "text"."""
    return cell[1:] if re.match(r"^'[=+\-@\t\r]", cell) else cell


def test_only_the_configured_dimensions_leave_and_identifiers_can_be_hashed(settings, monkeypatch):
    monkeypatch.setenv("FINOPS_HASH_SALT", "pepper-7b1f0c")
    hashed = FinopsSettings.from_env({"FINOPS_HOME": settings.home, "FINOPS_HASH_SALT": "set",
                                      "FINOPS_HASHED_DIMENSIONS": "customer_id",
                                      "FINOPS_FINOUT_DIMENSIONS": "service_name,customer_id,team,model"})
    day_rows = [generation("a", "2026-11-21 09:00:00", metadata={"feature": "chat", "customer_id": "acme",
                                                                "team": "t", "internal_note": "do not share"}),
                generation("b", "2026-11-21 09:01:00", model="claude-sonnet-4-20250514",
                           metadata={"feature": "chat", "customer_id": "acme", "team": "t"}),
                generation("c", "2026-11-21 09:02:00", metadata={"feature": "chat", "team": "t"}, user_id=None)]
    cover_day(hashed, {9: day_rows})
    result = materialize_day(hashed, selection=["langfuse_generations", "allocated_costs", "finout_upload",
                                                "focus_export"])
    assert result.success
    path = Path(hashed.finout_dir) / "llm-costs-2026-11-21.csv"
    delivered = read_csv(path)
    assert list(delivered[0]) == ["UsageDate", "Cost", "service_name", "customer_id", "team", "model"]
    customers = {r["customer_id"] for r in delivered}
    [digest] = customers - {"unallocated"}
    assert re.fullmatch(r"h_[0-9a-f]{20}", digest) and "unallocated" in customers  # one customer, one hash
    focus_tags = [json.loads(r["Tags"]) for r in read_csv(Path(hashed.focus_dir) / "focus-2026-11-21.csv")]
    assert {t["customer_id"] for t in focus_tags} == customers
    files = path.read_text() + (Path(hashed.focus_dir) / "focus-2026-11-21.csv").read_text()
    assert "acme" not in files and "do not share" not in files
    events = "".join(str(e) for e in result.all_events)
    assert "pepper-7b1f0c" not in events and "pepper-7b1f0c" not in files


# --- FOCUS 1.2 -----------------------------------------------------------------------------------
MANDATORY = ["BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency", "BillingPeriodStart",
             "BillingPeriodEnd", "ChargeCategory", "ChargeClass", "ChargeDescription", "ChargePeriodStart",
             "ChargePeriodEnd", "ContractedCost", "EffectiveCost", "InvoiceIssuerName", "ListCost",
             "PricingQuantity", "PricingUnit", "ProviderName", "PublisherName", "ServiceCategory", "ServiceName"]
NULLABLE = {"BillingAccountName", "ChargeClass", "ChargeDescription", "PricingQuantity", "PricingUnit"}
SERVICE_CATEGORIES = {"AI and Machine Learning", "Analytics", "Business Applications", "Compute", "Databases",
                      "Developer Tools", "Multicloud", "Identity", "Integration", "Internet of Things",
                      "Management and Governance", "Media", "Migration", "Mobile", "Networking", "Security",
                      "Storage", "Web", "Other"}
DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
DECIMAL = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")


def focus_violations(path: Path) -> list[str]:
    """The FOCUS 1.2 column rules (FOCUS_Spec v1.2, specification/columns) that this file breaks.
    The FinOps Foundation's focus-validator on PyPI (1.0.0) knows FOCUS up to 1.0 only."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header, rows_ = reader.fieldnames, list(reader)
    problems = [f"missing mandatory column {c}" for c in MANDATORY if c not in header]
    custom = [c for c in header if c not in FOCUS_COLUMNS]
    problems += [f"custom column {c} lacks the x_ prefix" for c in custom if not c.startswith("x_")]
    if custom and header[-len(custom):] != custom:
        problems.append("custom columns must come after the FOCUS columns")
    for n, r in enumerate(rows_, start=2):
        for c in MANDATORY:
            if r[c] == "" and c not in NULLABLE:
                problems.append(f"line {n}: {c} is null")
        for c in ("BilledCost", "ContractedCost", "EffectiveCost", "ListCost", "PricingQuantity", "ConsumedQuantity"):
            if r[c] and not DECIMAL.match(r[c]):
                problems.append(f"line {n}: {c} {r[c]!r} is not a decimal")
        periods = {}
        for c in ("BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd"):
            if DATETIME.match(r[c]):
                periods[c] = datetime.fromisoformat(r[c].replace("Z", "+00:00"))
            else:
                problems.append(f"line {n}: {c} {r[c]!r} is not YYYY-MM-DDTHH:mm:ssZ")
        if len(periods) == 4:
            start, end = periods["ChargePeriodStart"], periods["ChargePeriodEnd"]
            if end - start != timedelta(days=1):
                problems.append(f"line {n}: the charge period is not the day (end exclusive)")
            if not periods["BillingPeriodStart"] <= start < end <= periods["BillingPeriodEnd"]:
                problems.append(f"line {n}: the charge period is outside the billing period")
        if r["ChargeCategory"] not in {"Usage", "Purchase", "Tax", "Credit", "Adjustment"}:
            problems.append(f"line {n}: ChargeCategory {r['ChargeCategory']!r}")
        if r["ChargeClass"] not in {"", "Correction"}:
            problems.append(f"line {n}: ChargeClass {r['ChargeClass']!r}")
        if r["ServiceCategory"] not in SERVICE_CATEGORIES:
            problems.append(f"line {n}: ServiceCategory {r['ServiceCategory']!r}")
        if r["BillingCurrency"] != "USD":
            problems.append(f"line {n}: BillingCurrency {r['BillingCurrency']!r}")
        if (r["PricingQuantity"] == "") != (r["PricingUnit"] == ""):
            problems.append(f"line {n}: PricingUnit must be null exactly when PricingQuantity is")
        if r["ChargeCategory"] == "Usage" and r["ChargeClass"] != "Correction" and r["PricingQuantity"] == "":
            problems.append(f"line {n}: Usage needs a PricingQuantity")
        if r.get("ConsumedQuantity") and r["ChargeCategory"] != "Usage":
            problems.append(f"line {n}: ConsumedQuantity outside Usage")
        if r.get("ChargeFrequency") not in {None, "One-Time", "Recurring", "Usage-Based"}:
            problems.append(f"line {n}: ChargeFrequency {r['ChargeFrequency']!r}")
        try:
            tags = json.loads(r["Tags"])
            if not isinstance(tags, dict) or any(isinstance(v, (dict, list)) for v in tags.values()):
                problems.append(f"line {n}: Tags must be a JSON object of scalar values")
        except ValueError:
            problems.append(f"line {n}: Tags is not JSON")
    return problems


def test_focus_file_follows_the_focus_1_2_column_rules(settings, settled):
    billing = Path(settings.billing_dir)
    write_openai_bill(billing, DAY, {"gpt-4o-2024-08-06, input": 0.03, "gpt-4.1-nano-2025-04-14, input": 2.0})
    write_anthropic_bill(billing, DAY, {"claude-sonnet-4-20250514": "300"})
    cover_day(settings, {9: rows({"chat": 0.01, "search": 0.02}) + rows({"code": 3.0}, model="claude-sonnet-4-20250514")})
    result = materialize_day(settings, cost_basis="invoice")
    assert failed_on_checks(result) == {"cost_reconciliation"}  # $2 billed and never traced: delivered all the same
    path = Path(settings.focus_dir) / "focus-2026-11-21.csv"
    assert focus_violations(path) == []
    focus = read_csv(path)
    assert list(focus[0]) == FOCUS_COLUMNS + CUSTOM_COLUMNS
    by_model = {r["x_Model"]: r for r in focus}
    claude = by_model["claude-sonnet-4-20250514"]
    assert (claude["ServiceCategory"], claude["ServiceSubcategory"], claude["ChargeCategory"]) == (
        "AI and Machine Learning", "Generative AI", "Usage")
    assert (claude["ConsumedQuantity"], claude["ConsumedUnit"], claude["ProviderName"]) == ("120", "Tokens", "anthropic")
    assert (claude["ChargePeriodStart"], claude["ChargePeriodEnd"]) == ("2026-11-21T00:00:00Z", "2026-11-22T00:00:00Z")
    assert (claude["BillingPeriodStart"], claude["BillingPeriodEnd"]) == ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z")
    assert json.loads(claude["Tags"]) == {"feature": "code", "customer_id": "acme", "team": "t",
                                          "environment": "production", "tier": "pro"}
    assert by_model["gpt-4.1-nano"]["x_CostSource"] == "invoice"
    assert sum(Decimal(r["BilledCost"]) for r in focus) == usd("5.03")  # the two bills, exactly
    assert focus_violations(path) == [] and check_evaluation(result, "focus_cost_conserved").passed


def test_the_focus_rules_catch_a_broken_file(tmp_path):
    path = tmp_path / "focus.csv"
    good = {c: "" for c in FOCUS_COLUMNS} | {
        "BilledCost": "1.5", "BillingAccountId": "openai", "BillingCurrency": "USD", "ChargeFrequency": "Usage-Based",
        "BillingPeriodStart": "2026-11-01T00:00:00Z", "BillingPeriodEnd": "2026-12-01T00:00:00Z",
        "ChargeCategory": "Usage", "ChargePeriodStart": "2026-11-21T00:00:00Z", "ChargePeriodEnd": "2026-11-22T00:00:00Z",
        "ContractedCost": "1.5", "EffectiveCost": "1.5", "InvoiceIssuerName": "openai", "ListCost": "1.5",
        "PricingQuantity": "10", "PricingUnit": "Tokens", "ProviderName": "openai", "PublisherName": "openai",
        "ServiceCategory": "AI and Machine Learning", "ServiceName": "OpenAI API", "Tags": "{}"}

    def violations(**changes) -> list[str]:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(good))
            writer.writeheader()
            writer.writerow(good | changes)
        return focus_violations(path)

    assert violations() == []
    assert violations(ServiceCategory="LLM") == ["line 2: ServiceCategory 'LLM'"]
    assert violations(ChargePeriodEnd="2026-11-22 00:00:00") == [
        "line 2: ChargePeriodEnd '2026-11-22 00:00:00' is not YYYY-MM-DDTHH:mm:ssZ"]
    assert violations(PricingUnit="") == ["line 2: PricingUnit must be null exactly when PricingQuantity is"]
    assert violations(Tags='{"a": {"b": 1}}') == ["line 2: Tags must be a JSON object of scalar values"]
    assert violations(BilledCost="$1.50") == ["line 2: BilledCost '$1.50' is not a decimal"]

