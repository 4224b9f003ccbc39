"""Real-world cost data: the shared cases (cases/, each with its right result computed by hand) and a regression
file with one input per kind (real_world_kinds.json), run through the whole chain."""

import csv
import json
import os
import subprocess
import sys
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from finops_pipeline.demo.sample_data import write_export_file
from finops_pipeline.settings import FinopsSettings
from finops_pipeline_tests.conftest import (
    REPO,
    check_evaluation,
    generation,
    materialize_day,
    query,
    write_anthropic_bill,
    write_openai_bill,
)
from finops_pipeline_tests.focus_rules import focus_violations
from finops_pipeline_tests.langfuse_double import LangfuseDouble, api_row

CASES = Path(__file__).parent / "cases"
KINDS = json.loads((Path(__file__).parent / "real_world_kinds.json").read_text())
JUNE = date(2025, 6, 10)
JULY = date(2025, 7, 20)


def run_case(settings, case: str, day: date, **overrides):
    """The case's day through the whole graph, reading its export and bills where they are."""
    return materialize_day(settings, day, langfuse_export_dir=str(CASES / case / "input" / "export"),
                           billing_dir=str(CASES / case / "input" / "billing"), **overrides)


def staged(settings, *columns: str) -> dict[str, tuple]:
    return {r[0]: r[1:] for r in query(settings, f"SELECT observation_id, {', '.join(columns)} FROM langfuse_generations")}


def recon(settings, depth: str) -> dict[tuple, tuple]:
    return {(p, m): (t, b) for p, m, t, b in query(settings, """
        SELECT provider, model, traced_usd, billed_usd FROM cost_reconciliation WHERE depth = ?""", [depth])}


def finout_rows(settings, day: date) -> list[dict]:
    with open(Path(settings.finout_dir) / f"llm-costs-{day}.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def materialize_from_the_command_line(home: Path, day: date, select: str, env: dict) -> FinopsSettings:
    """`dagster asset materialize` as a user types it, in a process of its own with `env` over this one's."""
    run = subprocess.run([str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m",
                          "finops_pipeline.definitions", "--select", select, "--partition", str(day)],
                         cwd=REPO, env={**os.environ, "FINOPS_HOME": str(home), **env}, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return FinopsSettings.from_env({"FINOPS_HOME": str(home)})


def test_c02_gemini_thinking_tokens_are_priced_at_the_output_rate(settings):
    result = run_case(settings, "C02-gemini-thoughts", JUNE)
    assert result.success
    assert staged(settings, "provider", "cost_usd", "cost_source", "reasoning_tokens") == {
        "g1": ("google", Decimal("0.0013385"), "price_table", 382)}
    assert check_evaluation(result, "unpriced_generations").passed


def test_c03_an_embeddings_total_is_input_and_a_chat_total_is_unpriced_never_zero(settings):
    result = run_case(settings, "C03-embedding-total-only", JUNE)
    assert staged(settings, "cost_usd", "cost_source", "input_tokens", "unpriced_usage") == {
        "e1": (Decimal("0.018"), "price_table", 120000, {}),
        "e2": (None, "unpriced", 0, {"total_tokens": 200})}
    unpriced = check_evaluation(result, "unpriced_generations")
    assert not unpriced.passed and "gpt-4o-2024-08-06 (openai): 1 unpriced, without a price: total_tokens 200" in unpriced.description
    [row] = finout_rows(settings, JUNE)
    assert (row["service_name"], Decimal(row["Cost"])) == ("rag-index", Decimal("0.018"))


def test_c05_azures_gpt35_belongs_to_azure(settings):
    result = run_case(settings, "C05-azure-gpt35", JUNE)
    assert result.success and check_evaluation(result, "billed_vs_traced_gap").passed
    assert staged(settings, "provider") == {"z1": ("azure",), "z2": ("openai",)}
    provider = recon(settings, "provider")
    assert provider[("azure", None)] == (Decimal("0.00105"), Decimal("0.00105"))
    assert provider[("openai", None)] == (Decimal("0.0006"), Decimal("0.0006"))


@pytest.mark.parametrize("provider_map", [{"anthropic.claude-*": "bedrock"}, {}])
def test_c07_claude_on_bedrock_through_an_inference_profile(settings, provider_map):
    """With the README's map (whose pattern now meets the `us.` profile, `bedrock` being the price table's
    `aws`), and without it: the profile's name says Bedrock."""
    result = run_case(settings, "C07-bedrock-profile", JULY, provider_map=provider_map)
    assert result.success and check_evaluation(result, "billed_vs_traced_gap").passed
    assert staged(settings, "provider") == {"b1": ("aws",)}
    assert recon(settings, "provider")[("aws", None)] == (Decimal("0.045"), Decimal("0.045"))
    assert recon(settings, "model")[("aws", "claude-sonnet-4")] == (Decimal("0.045"), Decimal("0.045"))


def test_c07_as_the_cases_readme_runs_it_from_the_command_line(tmp_path):
    """The case's own command: the CLI, the map in the environment, a Dagster instance of its own."""
    (tmp_path / "dagster").mkdir()
    (tmp_path / "dagster" / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    settings = materialize_from_the_command_line(tmp_path / "finops", JULY, "*", {
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "FINOPS_LANGFUSE_EXPORT_DIR": str(CASES / "C07-bedrock-profile/input/export"),
        "FINOPS_BILLING_DIR": str(CASES / "C07-bedrock-profile/input/billing"),
        "FINOPS_PROVIDER_MAP": "anthropic.claude-*=bedrock",
        "FINOPS_START_DATE": ""})  # the first partition is the export's first day
    assert query(settings, "SELECT provider, traced_usd, billed_usd FROM cost_reconciliation WHERE depth = 'provider'") == [
        ("aws", Decimal("0.045"), Decimal("0.045"))]


def test_c09_the_invoice_basis_keeps_the_allocation_when_the_trace_names_the_alias(settings):
    result = run_case(settings, "C09-claude-latest-invoice", JULY, cost_basis="invoice")
    assert result.success and check_evaluation(result, "billed_models_matched").passed
    rows = sorted((r["service_name"], r["customer_id"], Decimal(r["Cost"]), r["source"]) for r in finout_rows(settings, JULY))
    assert rows == [("coding", "c8", Decimal("0.045"), "langfuse"), ("search", "c9", Decimal("0.09"), "langfuse")]


def test_c15_camel_case_metadata_fills_the_allocation_key(settings):
    assert run_case(settings, "C15-camelcase-metadata", JUNE).success
    assert query(settings, "SELECT allocation['customer_id'], allocation['tier'], allocation['feature'] "
                           "FROM langfuse_generations") == [("cust_123", "enterprise", "support-agent")]


@pytest.mark.parametrize("zone", ["Asia/Seoul", "America/Los_Angeles"])
def test_the_hosts_time_zone_never_changes_what_the_api_path_stages(tmp_path, zone):
    """Three generations at 00:30, 12:00 and 23:30 UTC, read through the API by a host whose clock is not UTC."""
    rows = [api_row(f"tz{n}", f"2025-06-10T{t}Z", cost=cost)
            for n, (t, cost) in enumerate([("00:30:00.000", 0.01), ("12:00:00.000", 0.02), ("23:30:00.000", 0.03)])]
    rows += [api_row("before", "2025-06-09T23:59:59.999Z"), api_row("after", "2025-06-11T00:00:00.000Z")]
    with LangfuseDouble(rows) as double:
        settings = materialize_from_the_command_line(tmp_path / "finops", JUNE, "langfuse_generations", {
            "TZ": zone, "DAGSTER_HOME": "", "LANGFUSE_BASE_URL": double.url, "LANGFUSE_PUBLIC_KEY": double.public_key,
            "LANGFUSE_SECRET_KEY": double.secret_key, "FINOPS_LANGFUSE_REQUESTS_PER_MINUTE": "0"})
    assert query(settings, "SELECT count(*), sum(cost_usd), min(start_time), max(start_time) FROM langfuse_generations") == [
        (3, Decimal("0.06"), datetime(2025, 6, 10, 0, 30), datetime(2025, 6, 10, 23, 30))]


# Parquet as Langfuse writes it (typed maps) is validated on its types, JSONL by parsing: every kind both ways
@pytest.mark.parametrize("ext", ["jsonl.gz", "parquet"])
def test_each_kind_of_real_world_input_is_priced_attributed_and_allocated_right(settings, ext):
    day = date.fromisoformat(KINDS["day"])
    rows = []
    for n, kind in enumerate(KINDS["rows"]):
        row = generation(f"k{n:02d}", kind.get("start_time", f"{day} 12:{n:02d}:00"), model=kind["model"],
                         cost=kind.get("cost"), usage=kind["usage"], metadata=kind.get("metadata"), tags=kind.get("tags"))
        rows.append({**row, "type": kind.get("type", "GENERATION")})
    start = datetime(day.year, day.month, day.day)
    export = Path(settings.langfuse_export_dir)
    write_export_file(export, start, start + timedelta(hours=12), [r for r in rows if r["start_time"] < f"{day} 12"], ext)
    write_export_file(export, start + timedelta(hours=12), start + timedelta(days=1),
                      [r for r in rows if r["start_time"] >= f"{day} 12"], ext)
    write_openai_bill(Path(settings.billing_dir), day, {})
    write_anthropic_bill(Path(settings.billing_dir), day, {})
    result = materialize_day(settings, day, metadata_aliases={"accountId": "customer_id"},
                             selection=["langfuse_generations", "allocated_costs", "finout_upload", "focus_export"])
    assert result.success
    columns = ["provider", "cost_source", "cost_usd", "input_tokens", "output_tokens", "cached_tokens",
               "cache_write_tokens", "reasoning_tokens", "total_tokens", "unpriced_usage", "allocation", "start_time"]
    got = staged(settings, *columns)
    wrong = []
    for n, kind in enumerate(KINDS["rows"]):
        actual = dict(zip(columns, got[f"k{n:02d}"]))
        for field, expected in kind["expect"].items():
            value = actual[field]
            if field == "cost_usd":
                ok = value == (None if expected is None else Decimal(expected))
            elif field == "allocation":
                ok = all(value.get(k) == v for k, v in expected.items())
            elif field == "start_time":
                ok = str(value) == expected
            else:
                ok = value == expected
            if not ok:
                wrong.append(f"{kind['kind']}: {field} is {value!r}, should be {expected!r}")
    assert wrong == []
    # what no price covers is delivered as nothing, named by the check, and never $0
    [(delivered,)] = query(settings, "SELECT sum(Cost::DECIMAL(38, 12)) FROM read_csv(?, all_varchar=true)",
                           [str(Path(settings.finout_dir) / f"llm-costs-{day}.csv")])
    priced = sum(Decimal(k["expect"]["cost_usd"]) for k in KINDS["rows"] if k["expect"].get("cost_usd"))
    langfuse_only = sum(Decimal(str(k["cost"])) for k in KINDS["rows"] if k.get("cost") and "cost_usd" not in k["expect"])
    assert delivered == priced + langfuse_only
    # every kind in the FOCUS file too: its rules kept, the same dollars
    focus = Path(settings.focus_dir) / f"focus-{day}.csv"
    assert focus_violations(focus) == []
    with open(focus, newline="") as handle:
        rows = list(csv.DictReader(handle))
    # each unit a SKU at its list price: audio, characters, seconds, one-hour cache writes, not only tokens
    assert {r["SkuMeter"] for r in rows} >= {"Input Audio Tokens", "Input Characters", "Audio Seconds",
                                             "Cache Write 1h Tokens", "Cache Write Tokens", "Output Tokens"}
    assert {r["x_ListPriceSource"] for r in rows} == {"genai-prices"}
    assert query(settings, "SELECT sum(BilledCost::DECIMAL(38, 12)) FROM read_csv(?, all_varchar=true)",
                 [str(focus)]) == [(delivered,)]
    unpriced = check_evaluation(result, "unpriced_generations")
    assert not unpriced.passed and "unsorted:weird_units 7" in unpriced.description
