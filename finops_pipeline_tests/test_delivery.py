"""Delivery: the Finout CSV to a real S3 API (moto's server on loopback), the invoice cost basis, what may
leave the building, and the FOCUS 1.2 file."""

import csv
import io
import json
import re
import socket
import threading
from datetime import date, timedelta
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path

import boto3
import dagster as dg
import duckdb
import pytest
import httpx

from finops_pipeline import pricing
from finops_pipeline.demo.sample_data import write_sample
from finops_pipeline.destinations.finout import hashed_value
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
from finops_pipeline_tests.focus_rules import focus_violations

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
    assert len(finout) == len(ODD_VALUES) and len(focus) == 2 * len(ODD_VALUES)  # input and output tokens
    for delivered in ([r["feature"] for r in finout], {r["x_Feature"] for r in focus},
                      {json.loads(r["Tags"])["feature"] for r in focus}):
        assert sorted(spreadsheet_meaning(v) for v in delivered) == sorted(ODD_VALUES)
    # no cell a spreadsheet would run as a formula
    assert not [r["feature"] for r in finout if re.match(r"^[=+\-@\t\r]", r["feature"])]
    assert not [r["x_Feature"] for r in focus if re.match(r"^[=+\-@\t\r]", r["x_Feature"])]


def spreadsheet_meaning(cell: str) -> str:
    """What a spreadsheet shows: a leading apostrophe before a formula character only says "text"."""
    return cell[1:] if re.match(r"^'[=+\-@\t\r]", cell) else cell


def test_a_hashed_feature_is_hashed_wherever_it_is_delivered(settings, monkeypatch):
    monkeypatch.setenv("FINOPS_HASH_SALT", "pepper-7b1f0c")
    hashed = FinopsSettings.from_env({"FINOPS_HOME": settings.home, "FINOPS_HASH_SALT": "set",
                                      "FINOPS_HASHED_DIMENSIONS": "feature"})
    cover_day(hashed, {9: [generation("a", "2026-11-21 09:00:00", metadata={"feature": "project-atlas-for-bigbank"})]})
    assert materialize_day(hashed, selection=["langfuse_generations", "allocated_costs", "finout_upload",
                                              "focus_export"]).success
    [finout] = read_csv(Path(hashed.finout_dir) / "llm-costs-2026-11-21.csv")
    focus = read_csv(focus_file(hashed))
    digest = hashed_value("feature", "project-atlas-for-bigbank", "pepper-7b1f0c")
    assert finout["service_name"] == finout["feature"] == digest
    assert {r["x_Feature"] for r in focus} == {json.loads(r["Tags"])["feature"] for r in focus} == {digest}
    assert "atlas" not in focus_file(hashed).read_text() + (Path(hashed.finout_dir) / "llm-costs-2026-11-21.csv").read_text()


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
    assert {t.get("customer_id") for t in focus_tags} == {digest, None}  # unallocated: no tag
    assert set().union(*focus_tags) == {"customer_id", "team"}  # the FOCUS file carries the delivered keys only
    # rows that differ only in a key not delivered are one row, as in the Finout file: no count of what is hidden
    focus = read_csv(Path(hashed.focus_dir) / "focus-2026-11-21.csv")
    assert len({(r["Tags"], r["x_Model"], r["SkuId"]) for r in focus}) == len(focus)
    files = path.read_text() + (Path(hashed.focus_dir) / "focus-2026-11-21.csv").read_text()
    assert "acme" not in files and "do not share" not in files
    events = "".join(str(e) for e in result.all_events)
    assert "pepper-7b1f0c" not in events and "pepper-7b1f0c" not in files


# --- FOCUS 1.2 -----------------------------------------------------------------------------------
def focus_file(settings, day=DAY) -> Path:
    return Path(settings.focus_dir) / f"focus-{day.isoformat()}.csv"


def finout_total(settings, day=DAY) -> Decimal:
    return sum(Decimal(r["Cost"]) for r in read_csv(Path(settings.finout_dir) / f"llm-costs-{day.isoformat()}.csv"))


def test_focus_rows_are_one_per_model_and_usage_unit_at_the_list_price(settings):
    keys = {"team": "t", "customer_id": "acme", "tier": "pro"}
    cover_day(settings, {9: [
        generation("a", "2026-11-21 09:00:00", model="gpt-4o-2024-08-06", cost=0.004,
                   usage={"input": 1000, "input_cached_tokens": 400, "output": 200}, metadata={"feature": "chat", **keys}),
        generation("b", "2026-11-21 09:01:00", model="o4-mini-2025-04-16", cost=0.002,
                   usage={"input": 500, "output": 100, "output_reasoning_tokens": 300}, metadata={"feature": "chat", **keys}),
        # a custom model Langfuse priced and the price table does not list, beside a call no price covers
        generation("c", "2026-11-21 09:02:00", model="acme-ft-v1", cost=0.5, usage={"input": 3000, "output": 1000},
                   metadata={"feature": "chat", **keys}),
        generation("c2", "2026-11-21 09:02:30", model="acme-ft-v1", cost=None, usage={"input": 3000, "output": 1000},
                   metadata={"feature": "chat", **keys}),
        generation("d", "2026-11-21 09:03:00", model="gpt-4o-2024-08-06", cost=0.02, usage={},
                   metadata={"feature": "speech", **keys}),
        generation("e", "2026-11-21 09:04:00", model="gpt-4o-2024-08-06", cost=0.001, usage={"input": 100, "output": 10},
                   metadata={"team": "t", "tier": "pro"}),  # no feature, no customer
        # Anthropic's one-hour cache writes and OpenAI's audio tokens: units of their own, at their own prices
        generation("f", "2026-11-21 09:05:00", model="claude-sonnet-4-20250514", cost=None,
                   usage={"input": 1000, "cache_creation_input_tokens": 1000, "ephemeral_1h_input_tokens": 100000,
                          "output": 100}, metadata={"feature": "agent", **keys}),
        generation("g", "2026-11-21 09:06:00", model="gpt-realtime", cost=None,
                   usage={"input": 100, "input_audio_tokens": 1000, "output": 50}, metadata={"feature": "voice", **keys}),
        # the audio tokens of a model the table gives no audio price: priced only in part
        generation("g2", "2026-11-21 09:06:30", model="gpt-4o-audio-preview-2024-12-17", cost=None,
                   usage={"input": 100, "input_audio_tokens": 1000, "output": 50}, metadata={"feature": "voice", **keys}),
        # usage priced at $0 (a free tier): its tokens stay, at a list cost it did not pay
        generation("h", "2026-11-21 09:07:00", model="gpt-4o-2024-08-06", cost=0, usage={"input": 10000, "output": 1000},
                   metadata={"feature": "free", **keys}),
        # a snapshot the price table prices apart from the model's name
        generation("i", "2026-11-21 09:08:00", model="gpt-4o-2024-05-13", cost=None, usage={"input": 1000, "output": 100},
                   metadata={"feature": "chat", **keys}),
        # a usage key no price table unit fits: no SKU, and no reason to lose the list prices of the others
        generation("k", "2026-11-21 09:10:00", model="gpt-4o-mini-2024-07-18", cost=0.001,
                   usage={"input": 1000, "output": 100, "foo_count": 3}, metadata={"feature": "chat", **keys}),
        # only a total reported, by a model no price lists: its tokens, at the day's charged price of the model
        generation("l", "2026-11-21 09:11:00", model="acme-ft-v1", cost=0.3, usage={"total": 2000},
                   metadata={"feature": "summary", **keys}),
        # Claude on Bedrock: AWS bills it, Anthropic made it
        generation("m", "2026-11-21 09:12:00", model="us.anthropic.claude-3-7-sonnet-20250219-v1:0", cost=None,
                   usage={"input": 1000, "output": 100}, metadata={"feature": "chat", **keys}),
        # a feature someone named `unattributed`: on the langfuse basis a value like any other
        generation("j", "2026-11-21 09:09:00", model="gpt-4o-2024-08-06", cost=0.001, usage={"input": 100, "output": 10},
                   metadata={"feature": "unattributed", **keys}),
    ]})
    result = materialize_day(settings, selection=["langfuse_generations", "allocated_costs", "finout_upload", "focus_export"])
    assert result.success
    path = focus_file(settings)
    assert focus_violations(path) == []
    focus = read_csv(path)
    assert list(focus[0]) == FOCUS_COLUMNS + CUSTOM_COLUMNS
    assert sum(Decimal(r["BilledCost"]) for r in focus) == finout_total(settings)
    assert sum(int(r["x_Calls"]) for r in focus) == 14  # the priced calls, counted once, on each row's costliest unit

    def of(model: str, feature: str = "chat") -> dict[str, dict]:
        return {r["SkuId"]: r for r in focus if r["x_Model"] == model and r["x_Feature"] == feature}

    # gpt-4o: one row per token kind, at the price table's price per million tokens
    gpt = of("gpt-4o-2024-08-06")
    assert set(gpt) == {"openai/gpt-4o/input", "openai/gpt-4o/cached-input", "openai/gpt-4o/output"}
    rates = pricing.rates("gpt-4o-2024-08-06", DAY, "openai")
    for sku, unit, tokens in [("input", "input_tokens", 1000), ("cached-input", "cache_read_tokens", 400),
                              ("output", "output_tokens", 200)]:
        row = gpt[f"openai/gpt-4o/{sku}"]
        assert Decimal(row["ListUnitPrice"]) == rates.rate(unit) * 1_000_000
        assert (row["PricingUnit"], Decimal(row["PricingQuantity"])) == ("1000000 Tokens", Decimal(tokens) / 1_000_000)
        assert (row["ConsumedUnit"], row["ConsumedQuantity"]) == ("Tokens", f"{tokens}.0")
        assert row["SkuPriceId"] == row["SkuId"] and json.loads(row["SkuPriceDetails"])["x_UsageUnit"] == unit
        assert (row["ChargeCategory"], row["x_ListPriceSource"], row["ProviderName"]) == ("Usage", "genai-prices", "OpenAI")
    assert Decimal(gpt["openai/gpt-4o/input"]["ListUnitPrice"]) == Decimal("2.5")  # OpenAI's published $2.50 / 1M
    # Langfuse's cost, split across the kinds in proportion to their list cost, summing to it exactly
    assert sum(Decimal(r["BilledCost"]) for r in gpt.values()) == usd("0.004")
    list_total = sum(Decimal(r["ListCost"]) for r in gpt.values())
    for row in gpt.values():
        assert abs(Decimal(row["BilledCost"]) - usd("0.004") * Decimal(row["ListCost"]) / list_total) < Decimal("1e-11")
    # gpt-4o-2024-05-13 has a price of its own ($5): a SKU of its own
    assert {sku: r["ListUnitPrice"] for sku, r in of("gpt-4o-2024-05-13").items()} == {
        "openai/gpt-4o-2024-05-13/input": "5.000000000000000", "openai/gpt-4o-2024-05-13/output": "15.000000000000000"}

    # reasoning tokens are output tokens at the output price
    o4 = {r["SkuMeter"]: r for r in focus if r["x_Model"] == "o4-mini-2025-04-16"}
    assert set(o4) == {"Input Tokens", "Output Tokens"} and o4["Output Tokens"]["ConsumedQuantity"] == "400.0"
    # each cache write at its own price: the one-hour writes are a SKU of their own, as is audio
    claude = of("claude-sonnet-4-20250514", "agent")
    assert {sku: r["ConsumedQuantity"] for sku, r in claude.items()} == {
        "anthropic/claude-sonnet-4/input": "1000.0", "anthropic/claude-sonnet-4/cache-write": "1000.0",
        "anthropic/claude-sonnet-4/cache-write-1h": "100000.0", "anthropic/claude-sonnet-4/output": "100.0"}
    hour = claude["anthropic/claude-sonnet-4/cache-write-1h"]
    assert (hour["SkuMeter"], hour["ListUnitPrice"]) == ("Cache Write 1h Tokens", "6.000000000000000")  # 2x input
    assert all(r["BilledCost"] == f"{Decimal(r['ListCost']):.12f}" for r in claude.values())  # priced by the table
    voice = of("gpt-realtime", "voice")
    audio = voice["openai/gpt-realtime/input-audio"]
    assert (audio["SkuMeter"], audio["ListUnitPrice"], audio["ConsumedQuantity"]) == (
        "Input Audio Tokens", "32.000000000000000", "1000.0")
    assert all(r["BilledCost"] == f"{Decimal(r['ListCost']):.12f}" for r in voice.values())
    # what no price covers is in no row: the cost of the audio tokens is unknown, not $0
    assert set(of("gpt-4o-audio-preview-2024-12-17", "voice")) == {"openai/gpt-4o-audio-preview/input",
                                                                    "openai/gpt-4o-audio-preview/output"}

    # no list price: one row of the priced call's tokens, at the price Langfuse charged, said so; the call no
    # price covers is in no row (its cost is unknown, not $0)
    [custom] = [r for r in focus if r["x_Model"] == "acme-ft-v1" and r["x_Feature"] == "chat"]
    assert (custom["SkuId"], custom["SkuMeter"], custom["ConsumedQuantity"]) == ("unknown/acme-ft-v1/tokens", "Tokens", "4000.0")
    assert (custom["x_ListPriceSource"], custom["BilledCost"], custom["x_Calls"]) == ("charged", "0.500000000000", "1")
    assert "the price table does not list" in custom["ChargeDescription"]
    # one price for the SKU that day: the model's charged price over its rows, $0.80 for 6,000 tokens, per million
    [total_only] = [r for r in focus if r["x_Model"] == "acme-ft-v1" and r["x_Feature"] == "summary"]
    assert total_only["ConsumedQuantity"] == "2000.0"
    charged = (Decimal("0.8") / Decimal("0.006")).quantize(Decimal("1e-15"), rounding=ROUND_FLOOR)
    assert Decimal(custom["ListUnitPrice"]) == Decimal(total_only["ListUnitPrice"]) == charged
    assert Decimal(custom["ListCost"]) + Decimal(total_only["ListCost"]) - usd("0.8") < Decimal("1e-9")
    assert {sku: r["x_ListPriceSource"] for sku, r in of("gpt-4o-mini-2024-07-18").items()} == {
        "openai/gpt-4o-mini/input": "genai-prices", "openai/gpt-4o-mini/output": "genai-prices"}
    bedrock = of("us.anthropic.claude-3-7-sonnet-20250219-v1:0")
    assert {(r["SkuId"], r["ProviderName"], r["PublisherName"], r["BillingAccountId"]) for r in bedrock.values()} == {
        ("aws/claude-3-7-sonnet/input", "AWS Bedrock", "Anthropic", "aws"),
        ("aws/claude-3-7-sonnet/output", "AWS Bedrock", "Anthropic", "aws")}
    assert {r["x_CostBasis"] for r in focus} == {"langfuse"}
    # a cost without tokens: its requests
    [speech] = [r for r in focus if r["x_Feature"] == "speech"]
    assert (speech["SkuId"], speech["PricingUnit"], speech["PricingQuantity"], speech["ConsumedUnit"]) == (
        "openai/gpt-4o/requests", "Requests", "1.000000", "Requests")
    assert "no usage by unit reported" in speech["ChargeDescription"]
    # $0 usage: there, at $0, with what the list would have charged
    free = of("gpt-4o-2024-08-06", "free")
    assert {r["BilledCost"] for r in free.values()} == {"0.000000000000"}
    assert sum(Decimal(r["ListCost"]) for r in free.values()) == usd("0.035")

    # an allocation key that did not resolve is no tag, and no feature
    [(tags, feature)] = {(r["Tags"], r["x_Feature"]) for r in focus if "customer_id" not in json.loads(r["Tags"])}
    assert json.loads(tags) == {"team": "t", "environment": "production", "tier": "pro"} and feature == ""
    assert "unallocated" not in path.read_text()
    assert {json.loads(r["Tags"]).get("feature") for r in of("gpt-4o-2024-08-06", "unattributed").values()} == {
        "unattributed"}
    # the langfuse basis reads no bill: which project spent is not known
    assert {r["SubAccountId"] for r in focus} == {""} and {r["InvoiceId"] for r in focus} == {""}


def test_focus_on_the_invoice_basis_carries_sub_accounts_and_untraced_spend_without_a_quantity(settings, settled):
    billing = Path(settings.billing_dir)
    write_openai_bill(billing, DAY, {
        "gpt-4o-2024-08-06, input": 0.03, "gpt-4o-2024-08-06, output": 0.01,        # two projects
        "gpt-4.1-mini-2025-04-14, input": 0.2,                                       # one project
        "gpt-4.1-nano-2025-04-14, input": 2.0, "gpt-4.1-nano-2025-04-14, output": 0.5,  # never traced
    }, projects={"gpt-4o-2024-08-06, output": "proj_2", "gpt-4.1-mini-2025-04-14, input": "proj_3",
                 "gpt-4.1-nano-2025-04-14, output": "proj_2"})
    write_anthropic_bill(billing, DAY, {"claude-sonnet-4-20250514": "300"})  # the default workspace
    cover_day(settings, {9: rows({"chat": 0.01, "search": 0.02}) + rows({"code": 3.0}, model="claude-sonnet-4-20250514")
                         + rows({"summarise": 0.1}, model="gpt-4.1-mini-2025-04-14")})
    result = materialize_day(settings, cost_basis="invoice")
    assert failed_on_checks(result) == {"cost_reconciliation"}  # $2.50 billed and never traced: delivered all the same
    path = focus_file(settings)
    assert focus_violations(path) == [] and check_evaluation(result, "focus_cost_conserved").passed
    focus = read_csv(path)
    assert sum(Decimal(r["BilledCost"]) for r in focus) == finout_total(settings) == usd("5.74")  # the bills, exactly

    # the bill's project where the model's bill is all in one; unknown (null) where it is not
    projects = {(r["x_Model"], r["SubAccountId"], r["SubAccountName"]) for r in focus if r["ChargeCategory"] == "Usage"}
    assert projects == {("gpt-4o", "", ""), ("gpt-4.1-mini-2025-04-14", "proj_3", "proj_3"),
                        ("claude-sonnet-4-20250514", "", "")}
    # spend no trace covers: an Adjustment per kind and project, its dollars and no quantity
    adjustments = sorted((r["SkuId"], r["SubAccountId"], r["BilledCost"], r["ListCost"], r["PricingQuantity"],
                          r["ConsumedQuantity"], r["ListUnitPrice"], r["Tags"], r["x_CostSource"])
                         for r in focus if r["ChargeCategory"] == "Adjustment")
    assert adjustments == [
        ("openai/gpt-4.1-nano/input", "proj_1", "2.000000000000", "2.000000000000000000000", "", "", "", "{}", "invoice"),
        ("openai/gpt-4.1-nano/output", "proj_2", "0.500000000000", "0.500000000000000000000", "", "", "", "{}", "invoice")]
    claude = [r for r in focus if r["x_Model"] == "claude-sonnet-4-20250514"]
    assert sum(Decimal(r["BilledCost"]) for r in claude) == usd("3.00")  # the bill, where the traces said $3
    assert {r["ServiceName"] for r in claude} == {"Claude API"} and {r["x_Feature"] for r in claude} == {"code"}


@pytest.mark.parametrize("basis", ["langfuse", "invoice"])
def test_the_demos_focus_files_keep_the_focus_1_2_rules(tmp_path, basis):
    home = tmp_path / "finops"
    settings = FinopsSettings.from_env({"FINOPS_HOME": str(home)})
    days = [date(2026, 11, 2) + timedelta(days=n) for n in range(4)]
    sample = write_sample(home, days, 300, Path(settings.langfuse_export_dir), Path(settings.billing_dir))
    for day in days:
        materialize_day(settings, day, cost_basis=basis)
    files = [focus_file(settings, day) for day in days]
    assert focus_violations(files) == []
    for day, path in zip(days, files):
        focus = read_csv(path)
        assert sum(Decimal(r["BilledCost"]) for r in focus) == finout_total(settings, day)
        adjustments = [r for r in focus if r["ChargeCategory"] != "Usage"]
        if basis == "invoice" and day == sample.overbilled_day:  # the model billed and never traced
            assert {r["SkuId"] for r in adjustments} == {"openai/gpt-4.1-nano/input", "openai/gpt-4.1-nano/output"}
            assert {(r["ChargeCategory"], r["PricingQuantity"], r["ConsumedQuantity"]) for r in adjustments} == {
                ("Adjustment", "", "")}
        else:
            assert adjustments == []
        assert {r["SkuMeter"] for r in focus} >= {"Input Tokens", "Cached Input Tokens", "Output Tokens"}


def test_a_day_allocated_before_version_6_is_still_written_as_focus_from_its_token_columns(settings):
    assert deliver(settings, rows({"chat": 0.01, "search": 0.02})).success
    with duckdb.connect(str(settings.duckdb_path)) as conn:  # as version 5 left it: no priced_usage
        conn.execute("ALTER TABLE allocated_costs DROP COLUMN priced_usage")
        conn.execute("UPDATE schema_version SET version = 5")
    result = materialize_day(settings, selection=["focus_export"])  # the upgrade adds the column, empty
    assert result.success and check_evaluation(result, "focus_cost_conserved").passed
    assert focus_violations(focus_file(settings)) == []
    focus = read_csv(focus_file(settings))
    assert {r["SkuId"] for r in focus} == {"openai/gpt-4o/input", "openai/gpt-4o/output"}
    assert sum(Decimal(r["BilledCost"]) for r in focus) == finout_total(settings) == usd("0.03")


def test_the_focus_rules_catch_a_broken_file(tmp_path):
    path = tmp_path / "focus.csv"
    good = {c: "" for c in FOCUS_COLUMNS} | {
        "BilledCost": "1.5", "BillingAccountId": "openai", "BillingCurrency": "USD", "ChargeFrequency": "Usage-Based",
        "BillingPeriodStart": "2026-11-01T00:00:00Z", "BillingPeriodEnd": "2026-12-01T00:00:00Z",
        "ChargeCategory": "Usage", "ChargePeriodStart": "2026-11-21T00:00:00Z", "ChargePeriodEnd": "2026-11-22T00:00:00Z",
        "ContractedCost": "1.5", "EffectiveCost": "1.5", "InvoiceIssuerName": "OpenAI", "ListCost": "1.25",
        "ListUnitPrice": "2.5", "PricingQuantity": "0.5", "PricingUnit": "1000000 Tokens", "ConsumedQuantity": "500000.0",
        "ConsumedUnit": "Tokens", "ProviderName": "OpenAI", "PublisherName": "OpenAI",
        "ServiceCategory": "AI and Machine Learning", "ServiceName": "OpenAI API", "SkuId": "gpt-4o/input",
        "SkuMeter": "Input Tokens", "SkuPriceId": "gpt-4o/input", "SkuPriceDetails": '{"x_TokenKind": "Input Tokens"}',
        "Tags": "{}"}

    def violations(*changes: dict) -> list[str]:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(good))
            writer.writeheader()
            for change in changes or ({},):
                writer.writerow(good | change)
        return [v.split(" focus.csv:")[0] for v in focus_violations(path)]

    assert violations() == []
    assert violations({"ServiceCategory": "LLM"}) == ["ServiceCategory-C-003-M"]
    assert violations({"ChargePeriodEnd": "2026-11-22 00:00:00"}) == ["ChargePeriodEnd-C-002-M"]
    assert violations({"PricingUnit": ""}) == ["PricingUnit-C-005-C/C-006-C"]
    assert violations({"Tags": '{"a": {"b": 1}}'}) == ["Tags-C-001-M"]
    assert violations({"BilledCost": "$1.50"}) == ["BilledCost-C-001-M"]
    assert violations({"ConsumedQuantity": "500000"}) == ["ConsumedQuantity-C-001-M"]  # an integer is not a Decimal
    assert violations({"ListCost": "1.2500001"}) == ["ListCost-C-009-C"]
    assert violations({"ListUnitPrice": "", "ListCost": "1.5"}) == ["ListUnitPrice-C-005-C"]
    assert violations({"PricingQuantity": "", "PricingUnit": ""}) == ["PricingQuantity-C-005-C"]
    assert violations({"ConsumedQuantity": "", "ConsumedUnit": ""}) == ["ConsumedQuantity-C-006-C"]
    assert violations({"SkuId": "", "SkuMeter": ""}) == ["SkuId-C-005-C"]
    assert violations({"SkuPriceId": "", "SkuPriceDetails": ""}) == ["SkuPriceId-C-005-C"]
    assert violations({"SkuPriceDetails": '{"TokenKind": "Input"}'}) == ["SkuPriceDetails-C-017-C"]
    assert violations({"SubAccountId": "proj_1"}) == ["SubAccountName-C-004-C/C-005-C"]
    assert violations({}, {"ListUnitPrice": "2.6", "ListCost": "1.3"}) == ["SkuPriceId-C-014-C"]  # two prices a day
    assert violations({}, {"SkuId": "gpt-4o/output"}) == ["SkuPriceId-C-008-M: gpt-4o/input has the parents "
                                                          "['gpt-4o/input', 'gpt-4o/output']"]
    adjustment = {"ChargeCategory": "Adjustment", "PricingQuantity": "", "PricingUnit": "", "ListUnitPrice": "",
                  "SkuPriceId": "", "SkuPriceDetails": "", "ConsumedQuantity": "", "ConsumedUnit": "", "ListCost": "1.5"}
    assert violations(adjustment) == []
    assert violations(adjustment | {"ConsumedQuantity": "10.0", "ConsumedUnit": "Tokens"}) == ["ConsumedQuantity-C-004-C"]
    assert violations(adjustment | {"ListCost": "0.0"}) == ["ListCost-C-008-C"]
    assert violations({"InvoiceId": "inv_1"}) == []
