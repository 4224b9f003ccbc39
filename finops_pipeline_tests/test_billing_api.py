"""The providers' cost APIs against HTTP doubles that speak their documented schemas, faults included."""

from decimal import Decimal
from pathlib import Path

import pytest

from finops_pipeline.resources import CostApiResource
from finops_pipeline.sources.billing_api import ANTHROPIC, MAX_PAGES, OPENAI, CostApi, CostApiError
from finops_pipeline.sources.provider_billing import BillingError
from finops_pipeline_tests.billing_double import (
    ANTHROPIC_KEY,
    ANTHROPIC_PATH,
    OPENAI_KEY,
    OPENAI_PATH,
    BillingDouble,
    anthropic_result,
)
from finops_pipeline_tests.conftest import DAY, materialization_metadata, materialize_day, query, usd

OPENAI_BILL = {
    "gpt-4o-2024-08-06, input": "1.25", "gpt-4o-2024-08-06, output": "2.5", "gpt-4o-2024-08-06, cached input": "0.1",
    "o4-mini-2025-04-16, input": "0.333333", "web search tool calls": "0.03",
}
ANTHROPIC_BILL = [
    anthropic_result("claude-sonnet-4-20250514", "uncached_input_tokens", "123.78912"),
    anthropic_result("claude-sonnet-4-20250514", "output_tokens", "0.00001", workspace_id="wrkspc_batch"),
    anthropic_result("claude-sonnet-4-20250514", "cache_read_input_tokens", "10"),
    anthropic_result(None, None, "1", cost_type="web_search"),
]


@pytest.fixture
def double():
    with BillingDouble({DAY: OPENAI_BILL}, {DAY: ANTHROPIC_BILL}, page_size=2) as server:
        yield server
        assert server.contract_errors == []


def client(double: BillingDouble, provider: str, key: str | None = None, **options) -> CostApi:
    if provider == "openai":
        return CostApi(OPENAI, double.openai_url(), key or OPENAI_KEY, backoff_seconds=0.01, **options)
    return CostApi(ANTHROPIC, double.url, key or ANTHROPIC_KEY, backoff_seconds=0.01, **options)


def test_openai_day_is_every_line_item_across_pages(double):
    with client(double, "openai") as api:
        lines = api.day_lines(DAY)
    # line items are filled, so the request grouped by them (the double leaves them null otherwise)
    assert {line.line_item: line.cost_usd for line in lines} == {k: Decimal(v) for k, v in OPENAI_BILL.items()}
    assert api.stats.pages == 3 and api.stats.retries == 0
    kinds = {(line.model, line.token_kind) for line in lines}
    assert ("gpt-4o-2024-08-06", "cached") in kinds and ("web search tool calls", "other") in kinds
    assert {line.project_id for line in lines} == {"proj_double"}  # grouped by project too
    [first, *rest] = [q for path, q in double.requests if path == OPENAI_PATH]
    assert first["bucket_width"] == "1d" and int(first["end_time"]) - int(first["start_time"]) == 86400
    assert [q["page"] for q in rest] == ["page_2", "page_4"]


def test_anthropic_cents_are_converted_exactly_across_pages(double):
    with client(double, "anthropic") as api:
        lines = api.day_lines(DAY)
    assert [(line.model, line.token_kind, line.cost_usd) for line in lines] == [
        ("claude-sonnet-4-20250514", "input", Decimal("1.2378912")),
        ("claude-sonnet-4-20250514", "output", Decimal("0.0000001")),
        ("claude-sonnet-4-20250514", "cached", Decimal("0.1")),
        (None, "other", Decimal("0.01")),
    ]
    assert sum(line.cost_usd for line in lines) == Decimal("1.3478913")  # a float sum would not be exact
    # grouped by workspace too (the double leaves it null otherwise): the sub account of the FOCUS file
    assert [line.project_id for line in lines] == [None, "wrkspc_batch", None, None]
    assert api.stats.pages == 2
    assert all(q["starting_at"] == "2026-11-21T00:00:00Z" and q["ending_at"] == "2026-11-22T00:00:00Z"
               for path, q in double.requests if path == ANTHROPIC_PATH)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("fault", ["429", "500", "503", "529", "drop", "truncated", "slow"])
def test_transient_faults_are_retried_and_lose_nothing(double, provider, fault):
    with client(double, provider) as expected:
        lines = expected.day_lines(DAY)
    double.fail(fault, times=2, retry_after=0, delay=8)
    # Only the slow fault needs a short timeout; every other answer may take as long as a busy machine makes it.
    with client(double, provider, timeout_seconds=2 if fault == "slow" else 60) as api:
        assert api.day_lines(DAY) == lines
    reason = {"429": "HTTP 429 rate limited", "drop": "RemoteProtocolError", "truncated": "malformed response body",
              "slow": "ReadTimeout"}.get(fault, f"HTTP {fault}")
    if fault == "slow":  # the two the server held; on a busy machine, a normal answer may also pass 2 s
        assert set(api.stats.retry_reasons) == {reason} and api.stats.retry_reasons[reason] >= 2
    else:  # what the server sent: two faults, each retried once
        assert api.stats.retry_reasons == {reason: 2}


def test_429_waits_as_long_as_retry_after_says(double):
    double.fail("429", retry_after=1)
    with client(double, "anthropic") as api:
        api.day_lines(DAY)
    [(first, _, status), (second, _, _), *_] = double.arrivals
    assert status == 429 and second - first >= 0.95


def test_a_server_that_keeps_failing_gives_up_naming_provider_day_and_error(double):
    double.fail("503", times=1000)
    with client(double, "openai", give_up_after_seconds=0.3) as api, pytest.raises(CostApiError) as exc:
        api.day_lines(DAY)
    message = str(exc.value)
    assert f"openai bill for {DAY}: gave up on GET {double.openai_url()}/organization/costs page 1" in message
    assert "last error: HTTP 503" in message


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_wrong_admin_key_says_which_setting_and_never_shows_the_key(double, provider):
    wrong = "sk-admin-WRONGKEY-abcdefwxyz"  # its tail in letters: a loopback port's digits may hold any number
    with client(double, provider, key=wrong) as api, pytest.raises(CostApiError) as exc:
        api.day_lines(DAY)
    message = str(exc.value)
    assert "rejected the admin key (HTTP 401" in message and f"{provider.upper()}_ADMIN_KEY" in message
    assert "WRONGKEY" not in message and "wxyz" not in message and api.stats.retries == 0


@pytest.mark.parametrize(("provider", "fault", "options", "message"), [
    ("openai", "missing", {"field": "amount"}, "page 1: field `data.0.results.0.amount`: Field required"),
    ("anthropic", "missing", {"field": "currency"}, "field `data.0.results.0.currency`: Field required"),
    ("openai", "currency", {}, "field `data.0.results.0.amount`: currency 'eur' is not USD"),
    ("anthropic", "currency", {}, "field `data.0.results.0.amount`: currency 'EUR' is not USD"),
    ("openai", "negative", {}, "field `data.0.results.0.amount`: negative amount -1.25"),
    ("anthropic", "negative", {}, "field `data.0.results.0.amount`: negative amount -123.78912"),
    ("openai", "loop", {"times": 2}, "page 2: field `next_page`: 'page_0' was already followed; the pages never end"),
])
def test_a_bill_that_cannot_be_trusted_names_provider_day_page_and_field(double, provider, fault, options, message):
    double.fail(fault, **options)
    with client(double, provider) as api, pytest.raises(BillingError) as exc:
        api.day_lines(DAY)
    assert f"{provider} bill for {DAY}: GET " in str(exc.value) and message in str(exc.value)


def test_pages_that_never_end_stop_at_a_bound(double):
    double.fail("endless", times=MAX_PAGES + 1)
    with client(double, "anthropic") as api, pytest.raises(BillingError, match=f"more than {MAX_PAGES} pages"):
        api.day_lines(DAY)


def test_base_urls_follow_the_sdks_conventions(double):
    env = {"OPENAI_BASE_URL": double.openai_url(), "ANTHROPIC_BASE_URL": double.url,
           "OPENAI_ADMIN_KEY": OPENAI_KEY, "ANTHROPIC_ADMIN_KEY": ANTHROPIC_KEY}
    for provider in ("openai", "anthropic"):
        resource = CostApiResource.from_env(provider, env)
        assert resource.configured and resource.admin_key.env_var_name == f"{provider.upper()}_ADMIN_KEY"
    assert CostApiResource.from_env("openai", {}).base_url == "https://api.openai.com/v1"
    assert CostApiResource.from_env("anthropic", {}).base_url == "https://api.anthropic.com"
    assert not CostApiResource.from_env("openai", {}).configured


# --- the assets --------------------------------------------------------------------------------------
@pytest.fixture
def admin_keys(monkeypatch, double):
    for name, value in {"OPENAI_ADMIN_KEY": OPENAI_KEY, "ANTHROPIC_ADMIN_KEY": ANTHROPIC_KEY,
                        "OPENAI_BASE_URL": double.openai_url(), "ANTHROPIC_BASE_URL": double.url}.items():
        monkeypatch.setenv(name, value)
    return {"openai": CostApiResource.from_env("openai"), "anthropic": CostApiResource.from_env("anthropic")}


def test_with_admin_keys_the_bill_assets_read_the_apis(settings, admin_keys):
    result = materialize_day(settings, selection=["openai_costs", "anthropic_costs"], **admin_keys)
    assert result.success
    totals = dict(query(settings, "SELECT provider, sum(cost_usd) FROM provider_costs GROUP BY 1"))
    assert totals == {"openai": sum(usd(v) for v in OPENAI_BILL.values()), "anthropic": usd("1.3478913")}
    meta = materialization_metadata(result, "openai_costs")
    assert meta["source"] == "openai cost API" and meta["api_pages"] == 3 and meta["dagster/row_count"] == 5
    assert not Path(settings.billing_dir).exists()  # nothing was read from, or written to, the billing folder


def test_a_bad_page_fails_the_asset_and_keeps_the_previous_bill(settings, admin_keys, double):
    assert materialize_day(settings, selection=["anthropic_costs"], **admin_keys).success
    before = query(settings, "SELECT * FROM provider_costs ORDER BY cost_usd")
    double.fail("truncated")  # retried: page 1 is fine the second time
    double.anthropic[DAY] = ANTHROPIC_BILL + [anthropic_result("claude-opus-4-1-20250805", "output_tokens", "500")]
    double.fail("currency")
    result = materialize_day(settings, selection=["anthropic_costs"], **admin_keys)
    assert not result.success
    message = str(result.get_step_failure_events()[0].step_failure_data.error)
    assert f"anthropic bill for {DAY}" in message and "currency 'EUR' is not USD" in message
    assert query(settings, "SELECT * FROM provider_costs ORDER BY cost_usd") == before


def test_the_admin_key_reaches_no_event_or_log(settings, admin_keys):
    result = materialize_day(settings, selection=["openai_costs", "anthropic_costs"], **admin_keys)
    assert result.success
    text = "".join(str(event) for event in result.all_events)
    text += "".join(str(record) for record in result.dagster_run.run_config.values())
    assert OPENAI_KEY not in text and ANTHROPIC_KEY not in text
