"""The edges: bill parsing, export listing, settings and pricing, without Dagster."""

import json
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from finops_pipeline import pricing
from finops_pipeline.money import usd
from finops_pipeline.settings import FinopsSettings
from finops_pipeline.sources.export_listing import list_export_files
from finops_pipeline.sources.provider_billing import (
    BillingError,
    openai_line_item,
    openai_token_kind,
    read_bill_files,
    read_other_costs,
)
from finops_pipeline_tests.conftest import DAY, write_anthropic_bill, write_openai_bill


def test_openai_pages_are_all_read_and_line_items_split(tmp_path):
    write_openai_bill(tmp_path, DAY, {"gpt-4o-2024-08-06, input": 0.1, "gpt-4o-2024-08-06, cached input": 0.2,
                                      "o4-mini-2025-04-16, output": 0.3}, pages=3)
    costs = read_bill_files(tmp_path, "openai", DAY)
    assert [(c.model, c.token_type, c.token_kind, c.cost_usd) for c in costs] == [
        ("gpt-4o-2024-08-06", "input", "input", Decimal("0.1")),
        ("gpt-4o-2024-08-06", "cached input", "cached", Decimal("0.2")),
        ("o4-mini-2025-04-16", "output", "output", Decimal("0.3"))]
    assert costs[0].source.endswith("page-1.json") and costs[2].source.endswith("page-3.json")


@pytest.mark.parametrize(("line_item", "model", "kind"), [
    ("gpt-4o-2024-08-06, input", "gpt-4o-2024-08-06", "input"),
    ("gpt-4o-mini-2024-07-18, cached input", "gpt-4o-mini-2024-07-18", "cached"),
    ("gpt-5-2025-08-07, output, long context", "gpt-5-2025-08-07", "output"),
    ("priority | gpt-5-2025-08-07, input", "gpt-5-2025-08-07", "input"),
    ("gpt-5-2025-08-07, cache writes", "gpt-5-2025-08-07", "cache_write"),
    ("web search tool calls", "web search tool calls", "other"),
    (None, None, "other"),
])
def test_openai_line_items_name_model_and_token_kind(line_item, model, kind):
    parsed_model, token_type = openai_line_item(line_item)
    assert (parsed_model, openai_token_kind(token_type)) == (model, kind)


def test_anthropic_amounts_are_exact_decimal_cents(tmp_path):
    write_anthropic_bill(tmp_path, DAY, {"claude-sonnet-4-20250514": "123.78912"})
    [cost] = read_bill_files(tmp_path, "anthropic", DAY)
    assert cost.cost_usd == Decimal("1.2378912") and cost.token_kind == "input"


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda r: r.update(currency="EUR"), "field `data.0.results.0.amount`: currency 'EUR' is not USD"),
    (lambda r: r.update(amount="-5"), "field `data.0.results.0.amount`: negative amount -5"),
    (lambda r: r.pop("amount"), "field `data.0.results.0.amount`: Field required"),
])
def test_a_bill_that_cannot_be_trusted_names_provider_day_file_and_field(tmp_path, mutate, message):
    write_anthropic_bill(tmp_path, DAY, {"claude-sonnet-4-20250514": "100"})
    page = tmp_path / "anthropic" / DAY.isoformat() / "page-1.json"
    body = json.loads(page.read_text())
    mutate(body["data"][0]["results"][0])
    page.write_text(json.dumps(body))
    with pytest.raises(BillingError, match=f"anthropic bill for {DAY}") as exc:
        read_bill_files(tmp_path, "anthropic", DAY)
    assert message in str(exc.value) and str(page) in str(exc.value)


def test_bill_that_is_not_json_is_an_error(tmp_path):
    folder = tmp_path / "openai" / DAY.isoformat()
    folder.mkdir(parents=True)
    (folder / "page-1.json").write_text('{"data": [')
    with pytest.raises(BillingError, match="is not valid JSON"):
        read_bill_files(tmp_path, "openai", DAY)


def write_csv(tmp_path, name: str, text: str):
    folder = tmp_path / "other"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def test_other_providers_csv_drop_is_read_for_its_day_exactly(tmp_path):
    write_csv(tmp_path, "november.csv",
              "day,provider,model,cost_usd,token_kind,description\n"
              "2026-11-20,bedrock,anthropic.claude-sonnet-4,9.99,,\n"
              "2026-11-21,bedrock,anthropic.claude-sonnet-4,0.1000000001,input,\"Claude, on-demand\"\n"
              "2026-11-21,Self_Hosted,acme-llama,2,,GPU hours at the internal rate\n")
    lines = read_other_costs(tmp_path, DAY, excluded={"openai", "anthropic"})
    assert [(c.provider, c.model, c.token_kind, c.line_item, c.cost_usd) for c in lines] == [
        ("aws", "anthropic.claude-sonnet-4", "input", "Claude, on-demand", Decimal("0.1000000001")),  # Bedrock's id
        ("self_hosted", "acme-llama", "other", "GPU hours at the internal rate", Decimal("2"))]
    assert lines[0].source.endswith("november.csv:3")


@pytest.mark.parametrize(("text", "message"), [
    ("day,provider,model,cost\n", "missing ['cost_usd'], unknown ['cost']"),
    ("day,provider,model,cost_usd\n2026-11-21,bedrock,m,1.5e\n", "november.csv:2: field `cost_usd`: 1.5e is not a number"),
    ("day,provider,model,cost_usd\n2026-11-21,bedrock,m,-1\n", "field `cost_usd`: negative amount -1"),
    ("day,provider,model,cost_usd,currency\n2026-11-21,bedrock,m,1,EUR\n", "currency 'EUR' is not USD"),
    ("day,provider,model,cost_usd\n21/11/2026,bedrock,m,1\n", "field `day`: '21/11/2026' is not a YYYY-MM-DD date"),
    ("day,provider,model,cost_usd\n2026-11-21,openai,gpt-4o,1\n", "openai is billed from its own cost API"),
    ("day,provider,model,cost_usd,token_kind\n2026-11-21,vertex,m,1,prompt\n", "field `token_kind`: 'prompt' is not one of"),
])
def test_a_bad_csv_line_names_file_line_and_field(tmp_path, text, message):
    write_csv(tmp_path, "november.csv", text)
    with pytest.raises(BillingError) as exc:
        read_other_costs(tmp_path, DAY, excluded={"openai", "anthropic"})
    assert message in str(exc.value) and "november.csv" in str(exc.value)


def test_a_provider_day_in_two_csv_files_would_count_twice_and_is_refused(tmp_path):
    write_csv(tmp_path, "a.csv", "day,provider,model,cost_usd\n2026-11-21,bedrock,m,1\n")
    write_csv(tmp_path, "b.csv", "day,provider,model,cost_usd\n2026-11-21,bedrock,m,1\n")
    with pytest.raises(BillingError, match="both .*a.csv and .*b.csv have lines for this day"):
        read_other_costs(tmp_path, DAY, excluded=set())


def test_manifest_windows_and_unlisted_files(tmp_path):
    project = tmp_path / "prefix" / "proj"
    (project / "observations_v2").mkdir(parents=True)
    (project / "manifests").mkdir()
    for name in ("2026-11-21T01-00-00.jsonl.gz", "2026-11-21T02-00-00.parquet", "notes.txt"):
        (project / "observations_v2" / name).write_bytes(b"")
    (project / "manifests" / "2026-11-21T01-00-00.json").write_text(json.dumps({
        "version": 1, "projectId": "proj", "window": {"minTimestamp": "2026-11-21T00:00:00.000Z",
                                                      "maxTimestamp": "2026-11-21T01:00:00.000Z"},
        "files": [{"key": "prefix/proj/observations_v2/2026-11-21T01-00-00.jsonl.gz", "table": "observations_v2"}]}))
    (project / "manifests" / "2026-11-21T02-00-00.json").write_text("{not json")
    listing = list_export_files(str(tmp_path))
    [listed] = listing.files
    assert listed.format == "jsonl" and listed.window_start == datetime(2026, 11, 21, tzinfo=timezone.utc)
    assert listing.unlisted == [str(project / "observations_v2" / "2026-11-21T02-00-00.parquet")]
    assert len(listing.unreadable_manifests) == 1


def test_settings_from_environment_and_validation(tmp_path):
    settings = FinopsSettings.from_env({"FINOPS_HOME": str(tmp_path), "FINOPS_ALLOCATION_KEYS": "team, product",
                                        "FINOPS_BILLING_DIR": "/bills", "FINOPS_RECONCILIATION_ERROR_PCT": "7.5"})
    assert settings.allocation_keys == ["team", "product"]
    assert settings.billing_dir == "/bills" and settings.finout_dir == str(tmp_path / "finout")
    assert settings.reconciliation_error_pct == 7.5
    for bad in ("cost", "team,team", "team,Team", "1st", "customer_id,customerId"):
        with pytest.raises(ValueError):
            FinopsSettings.from_env({"FINOPS_HOME": str(tmp_path), "FINOPS_ALLOCATION_KEYS": bad})
    # keys as people write them are the Finout column's snake case (metadata matches any spelling of them)
    spelled = FinopsSettings.from_env({"FINOPS_HOME": str(tmp_path), "FINOPS_ALLOCATION_KEYS": "customerId, Cost-Center, tier"})
    assert spelled.allocation_keys == ["customer_id", "cost_center", "tier"]
    aliased = FinopsSettings.from_env({"FINOPS_HOME": str(tmp_path), "FINOPS_METADATA_ALIASES": "accountId=customer_id, org=team"})
    assert aliased.metadata_aliases == {"accountId": "customer_id", "org": "team"}
    with pytest.raises(ValueError, match="metadata aliases"):
        FinopsSettings.from_env({"FINOPS_HOME": str(tmp_path), "FINOPS_METADATA_ALIASES": "accountId=account"})


@pytest.mark.parametrize(("model", "provider"), [
    # the vendors' own APIs
    ("gpt-4o-2024-08-06", "openai"), ("ft:gpt-4o-mini:acme::x1", "openai"), ("o3-mini", "openai"),
    ("text-embedding-3-small", "openai"), ("openai/gpt-4.1", "openai"), ("tts-1", "openai"),
    ("claude-3-5-haiku-20241022", "anthropic"), ("anthropic/claude-sonnet-4", "anthropic"),
    ("gemini-2.5-pro", "google"), ("gemini-embedding-001", "google"), ("mistral-large-latest", "mistral"),
    # Azure OpenAI: its own spelling of gpt-3.5, or a routing prefix
    ("gpt-35-turbo", "azure"), ("gpt-35-turbo-16k", "azure"), ("azure/gpt-4o", "azure"),
    # Bedrock: model ids, cross-region inference profiles, ARNs, routing prefixes (the price table's id: aws)
    ("anthropic.claude-sonnet-4-20250514-v1:0", "aws"), ("us.anthropic.claude-sonnet-4-20250514-v1:0", "aws"),
    ("eu.anthropic.claude-3-7-sonnet-20250219-v1:0", "aws"), ("apac.anthropic.claude-3-5-sonnet-20240620-v1:0", "aws"),
    ("global.anthropic.claude-sonnet-4-5-20250929-v1:0", "aws"), ("meta.llama3-70b-instruct-v1:0", "aws"),
    ("amazon.nova-pro-v1:0", "aws"), ("bedrock/anthropic.claude-3-haiku-20240307-v1:0", "aws"),
    ("arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-7-sonnet-20250219-v1:0", "aws"),
    # Vertex AI: `@` snapshots, routing prefixes
    ("claude-sonnet-4@20250514", "google"), ("claude-3-5-sonnet-v2@20241022", "google"),
    ("vertex_ai/gemini-1.5-pro", "google"),
    # open weights served by many hosts: only a host's prefix (or the map) says who bills
    ("gpt-oss-120b", "unknown"), ("gpt-oss-20b", "unknown"), ("llama-3.1-70b-instruct", "unknown"),
    ("groq/llama-3.1-8b-instant", "groq"), ("together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo", "together"),
    ("acme-llama-ft", "unknown"), (None, "unknown"),
])
def test_provider_of_model(model, provider):
    assert pricing.provider_of(model) == provider


def test_provider_map_from_settings_wins_over_the_built_in_mapping(tmp_path):
    settings = FinopsSettings.from_env({"FINOPS_HOME": str(tmp_path),
                                        "FINOPS_PROVIDER_MAP": "anthropic.claude-*=bedrock, acme-*=self_hosted, gpt-oss-*=groq"})
    assert settings.provider_map == {"anthropic.claude-*": "bedrock", "acme-*": "self_hosted", "gpt-oss-*": "groq"}
    # the README's pattern matches inference profiles too; `bedrock` is the price table's `aws`
    for model in ("Anthropic.Claude-Sonnet-4", "us.anthropic.claude-sonnet-4-20250514-v1:0"):
        assert pricing.provider_of(model, settings.provider_map) == "aws"
    assert pricing.provider_of("acme-llama-ft", settings.provider_map) == "self_hosted"
    assert pricing.provider_of("gpt-oss-120b", settings.provider_map) == "groq"
    assert pricing.provider_of("claude-sonnet-4-20250514", settings.provider_map) == "anthropic"
    with pytest.raises(ValueError, match="name=value"):
        FinopsSettings.from_env({"FINOPS_HOME": str(tmp_path), "FINOPS_PROVIDER_MAP": "acme-*"})
    with pytest.raises(ValueError, match="lower-case provider name"):
        FinopsSettings.from_env({"FINOPS_HOME": str(tmp_path), "FINOPS_PROVIDER_MAP": "acme-*=Self Hosted"})


@pytest.mark.parametrize(("name", "provider"), [
    ("bedrock", "aws"), ("amazon_bedrock", "aws"), ("aws", "aws"), ("vertex", "google"), ("vertex_ai", "google"),
    ("google", "google"), ("azure_openai", "azure"), ("azure", "azure"), ("together_ai", "together"),
    ("self_hosted", "self_hosted"), ("openai", "openai"),
])
def test_what_people_call_a_provider_is_read_as_the_price_tables_id(name, provider):
    assert pricing.canonical_provider(name) == provider


@pytest.mark.parametrize(("traced", "billed"), [
    ("gpt-4o", "gpt-4o-2024-08-06"),                                          # alias and snapshot
    ("claude-sonnet-4-latest", "claude-sonnet-4-20250514"),                   # -latest alias
    ("us.anthropic.claude-sonnet-4-20250514-v1:0", "anthropic.claude-sonnet-4-20250514-v1:0"),  # inference profile
    ("claude-sonnet-4@20250514", "claude-sonnet-4"),                          # Vertex snapshot
    ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "ft-gpt-4o-mini-2024-07-18"),  # fine-tune and its line item
    ("gpt-image-1", "gpt-image-1 image"),                                      # a line item's modality word
    ("gpt-35-turbo", "gpt-3.5-turbo"),                                         # Azure's spelling
])
def test_a_trace_and_a_bill_agree_on_a_models_name_across_spellings(traced, billed):
    assert pricing.model_key(traced) == pricing.model_key(billed)


def test_price_table_rates_come_from_the_maintained_table():
    price = pricing.list_rates("claude-sonnet-4-20250514", DAY)
    assert [price.rate(u) for u in ("input_tokens", "cache_read_tokens", "output_tokens", "output_reasoning_tokens")] == [
        Decimal("0.000003"), Decimal("0.0000003"), Decimal("0.000015"), Decimal("0.000015")]
    assert pricing.list_rates("acme-llama-ft", DAY) is None


def test_duckdb_memory_limit_reaches_the_warehouse_connection(tmp_path):
    from finops_pipeline.definitions import build_resources

    tmp_path.mkdir(exist_ok=True)
    for limit, shown in (("2GB", "1.8 GiB"), ("1.5 GiB", "1.5 GiB")):
        settings = FinopsSettings.from_env({"FINOPS_HOME": str(tmp_path), "FINOPS_DUCKDB_MEMORY_LIMIT": limit})
        with build_resources(settings)["duckdb"].get_connection() as conn:
            assert conn.execute("SELECT current_setting('memory_limit')").fetchone()[0] == shown
    assert FinopsSettings.from_env({"FINOPS_HOME": str(tmp_path), "FINOPS_DUCKDB_MEMORY_LIMIT": "80%"})
    with pytest.raises(ValueError, match="duckdb_memory_limit"):
        FinopsSettings.from_env({"FINOPS_HOME": str(tmp_path), "FINOPS_DUCKDB_MEMORY_LIMIT": "lots"})


@pytest.mark.parametrize(("amount", "text"), [
    (0, "0.00"), (Decimal("0.045"), "0.05"), (Decimal("41.535"), "41.54"), (1234.5, "1,234.50"),
    (Decimal("0.0008"), "0.0008"), (Decimal("0.00105"), "0.0011"), (Decimal("-0.0004"), "-0.0004"),
])
def test_an_amount_in_a_message_is_never_a_misleading_zero(amount, text):
    """Cents half up; under a cent, its first significant digits: a day of $0.0008 does not read $0.00."""
    assert usd(amount) == text

