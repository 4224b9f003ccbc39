"""langfuse_generations read from the Langfuse API v2, against an HTTP double of the server (langfuse_double.py)."""

import base64
import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pytest

from finops_pipeline.resources import LangfuseApiResource
from finops_pipeline.sources.http import seconds_until
from finops_pipeline.sources.langfuse_api import RateLimiter

from .conftest import (
    DAY, check_evaluation, cover_day, failed_on_checks, materialization_metadata, materialize_day, query,
    replace_settings,
)
from .langfuse_double import LangfuseDouble, api_row

ROWS_IN_DAY = 2400  # with 2 windows: 1200 rows each, two pages of at most 1000
LONG_FEATURE = "long-feature-" + "x" * 300  # past the 200 characters metadata is cut at unless expanded


def _at(seconds: float) -> str:
    moment = datetime(DAY.year, DAY.month, DAY.day, tzinfo=timezone.utc) + timedelta(seconds=seconds)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def day_of_rows() -> list[dict]:
    """A day as the server holds it, with the edges a real one has."""
    step = 86400 / ROWS_IN_DAY
    rows = [api_row(f"g{i:05d}", _at(i * step), cost=round(0.001 + (i % 97) * 0.0001, 6),
                    metadata={"feature": f"f{i % 5}", "team": f"team{i % 3}", "customer_id": f"c{i % 7}", "tier": "pro"})
            for i in range(ROWS_IN_DAY)]
    rows += [
        api_row("yesterday", _at(-0.5)), api_row("tomorrow", _at(86400)),  # other days: never staged
        api_row("unpriced", _at(100.5), model="acme-ft-v2", cost=None),  # served with totalCost 0, not a price
        api_row("embedding", _at(200.5), obs_type="EMBEDDING", model="text-embedding-3-small", cost=0.0002,
                usage={"input": 1000, "total": 1000}),
        api_row("long-metadata", _at(300.5), metadata={"feature": LONG_FEATURE, "team": "t", "customer_id": "c",
                                                      "tier": "pro"}),
        api_row("negative-tokens", _at(400.5), usage={"input": -5, "output": 1}),  # quarantined
        api_row("tool-call", _at(500.5), obs_type="TOOL", model=None, cost=None, usage={}),  # fetched, not staged
    ]
    # Spans carry no cost: the type filter keeps them out of every page.
    rows += [api_row(f"span{i}", _at(i * 3600 + 7.5), obs_type="SPAN", model=None, cost=None, usage={})
             for i in range(24)]
    return rows


STAGED = ROWS_IN_DAY + 3  # + unpriced, embedding, long-metadata
FETCHED_IN_DAY = STAGED + 2  # + negative-tokens (quarantined) and the tool call


def langfuse_for(double: LangfuseDouble, **overrides) -> LangfuseApiResource:
    config = {"host": double.url, "public_key": double.public_key, "secret_key": double.secret_key,
              "windows": 2, "concurrency": 2, "requests_per_minute": 0, "timeout_seconds": 10,
              "give_up_after_seconds": 20}
    return LangfuseApiResource(**{**config, **overrides})


@pytest.fixture
def double():
    with LangfuseDouble(day_of_rows()) as server:
        yield server
        assert not server.contract_errors, "the double served a response the SDK's models reject"


def staged(settings) -> list[tuple]:
    return query(settings, "SELECT * EXCLUDE (source_file) FROM langfuse_generations WHERE day = ? "
                           "ORDER BY observation_id", [DAY])


def test_a_day_from_the_api_is_staged_like_the_same_day_from_the_export(settings, tmp_path, double):
    result = materialize_day(settings, selection=["langfuse_generations"], langfuse=langfuse_for(double))
    assert result.success
    meta = materialization_metadata(result, "langfuse_generations")
    assert meta["dagster/row_count"] == STAGED
    assert meta["quarantined_rows"] == 1
    assert meta["api_pages"] >= 4 and meta["api_retries"] == 0

    rows = {r[0]: r for r in query(settings, "SELECT observation_id, cost_source, cost_usd, allocation['feature'] "
                                             "FROM langfuse_generations WHERE day = ?", [DAY])}
    assert rows["unpriced"][1:3] == ("unpriced", None)  # the API's totalCost 0 is not taken as a price
    assert rows["long-metadata"][3] == LONG_FEATURE  # allocation keys are fetched whole (expandMetadata)
    assert "yesterday" not in rows and "tomorrow" not in rows and "tool-call" not in rows
    [(where, line, reason)] = query(settings, "SELECT file, line, reason FROM quarantine WHERE day = ?", [DAY])
    assert "/api/public/v2/observations" in where and "page" in where and line >= 1
    assert reason == "usage_details.input is not a non-negative whole number: -5"

    # What was asked: cost-carrying types, every allocation key whole, never prompt or completion text.
    pages = [q for path, q in double.requests if path == "/api/public/v2/observations"]
    assert all("io" not in q["fields"].split(",") and q["limit"] == "1000" for q in pages)
    assert all(q["expandMetadata"] == "feature,customer_id,team,environment,tier" for q in pages)
    assert b"SECRET PROMPT TEXT" not in settings.duckdb_path.read_bytes()

    completeness = check_evaluation(result, "extraction_complete")
    assert completeness.passed, completeness.description
    assert completeness.metadata["extracted_observations"].value == FETCHED_IN_DAY
    assert completeness.metadata["langfuse_observations"].value == FETCHED_IN_DAY

    # The same rows through the blob export stage the same table.
    export_settings = replace_settings(settings, home=str(tmp_path / "export"),
                                       langfuse_export_dir=str(tmp_path / "export" / "langfuse-export"))
    by_hour: dict[int, list] = {}
    for row in day_of_rows():
        start = datetime.fromisoformat(row["startTime"].replace("Z", "+00:00"))
        if start.date() == DAY and row["type"] != "SPAN":
            by_hour.setdefault(start.hour, []).append(_as_export_row(row))
    cover_day(export_settings, by_hour)
    assert materialize_day(export_settings, selection=["langfuse_generations"]).success
    assert staged(export_settings) == staged(settings)


def _as_export_row(row: dict) -> dict:
    """The export's snake_case columns of an API row (total_cost is the stored total, NULL when unpriced)."""
    return {
        "id": row["id"], "trace_id": row["traceId"], "start_time": row["startTime"], "project_id": row["projectId"],
        "type": row["type"], "name": row["name"], "environment": row["environment"], "user_id": row["userId"],
        "session_id": row["sessionId"], "provided_model_name": row["model"], "usage_details": row["usageDetails"],
        "cost_details": row["costDetails"], "total_cost": row["costDetails"].get("total"),
        "prompt_name": row["promptName"], "prompt_version": row["promptVersion"], "tags": row["tags"],
        "metadata": row["metadata"],
    }


@pytest.mark.parametrize("fault, reason", [
    ("429", "HTTP 429 rate limited"), ("500", "HTTP 500"), ("503", "HTTP 503"), ("slow", "ReadTimeout"),
    ("drop", "RemoteProtocolError"), ("truncated", "malformed response body"),
])
def test_transient_failures_are_retried_and_lose_nothing(settings, double, fault, reason):
    double.fail(fault, times=2, delay=12, retry_after=1)
    # Only the slow fault needs a short timeout; the others leave room for a busy machine's slow answers.
    langfuse = langfuse_for(double, timeout_seconds=4 if fault == "slow" else 60, give_up_after_seconds=300)
    result = materialize_day(settings, selection=["langfuse_generations"], langfuse=langfuse)
    assert result.success
    meta = materialization_metadata(result, "langfuse_generations")
    assert meta["dagster/row_count"] == STAGED
    retried = {why: int(n) for why, _, n in (part.rpartition(" ×") for part in meta["api_retry_reasons"].split(", "))}
    if fault == "slow":  # the two the server held; on a busy machine, a normal answer may also pass 4 s
        assert set(retried) == {reason} and retried[reason] >= 2
    else:  # what the server sent: two faults, each retried once
        assert retried == {reason: 2}
    assert meta["api_rate_limited"] == (2 if fault == "429" else 0)
    assert check_evaluation(result, "extraction_complete").passed


def test_all_windows_share_one_rate_limit_and_a_429_holds_them_all(settings, double):
    double.fail("429", times=1, retry_after=2)
    langfuse = langfuse_for(double, windows=4, concurrency=4, requests_per_minute=240)  # one request per 250 ms
    result = materialize_day(settings, selection=["langfuse_generations"], langfuse=langfuse)
    assert result.success
    times = sorted(t for t, path, _ in double.arrivals if path == "/api/public/v2/observations")
    assert len(times) == 5  # a page per window, one of them asked twice
    # After the 429 every window held for its Retry-After: no request reached the server within 2 s of it
    # (the double runs in this process: its times are this clock's; a busy machine only makes them later).
    [rate_limited] = [t for t, _, status in double.arrivals if status == 429]
    after = [t for t in times if t > rate_limited]
    assert after and after[0] - rate_limited >= 1.95


def test_the_rate_limiter_never_hands_out_two_slots_within_its_interval():
    """Eight threads asking at once get slots 250 ms apart: the k-th returns no earlier than k intervals after
    the limiter began (late is possible on a busy machine, early never)."""
    began = time.monotonic()
    limiter, stop = RateLimiter(240), threading.Event()
    returned: list[float] = []
    threads = [threading.Thread(target=lambda: (limiter.acquire(stop), returned.append(time.monotonic())))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(returned) == 8
    assert all(t - began >= 0.25 * k - 1e-3 for k, t in enumerate(sorted(returned)))


def test_a_window_the_server_times_out_on_is_split(settings):
    with LangfuseDouble(day_of_rows(), max_rows_per_query=700) as double:  # 1200 rows a window: 422
        result = materialize_day(settings, selection=["langfuse_generations"], langfuse=langfuse_for(double))
        assert not double.contract_errors
    assert result.success
    meta = materialization_metadata(result, "langfuse_generations")
    assert meta["api_windows_split"] >= 2
    assert meta["dagster/row_count"] == STAGED


@pytest.mark.parametrize("fault", ["repeat", "stray"])
def test_rows_repeated_across_pages_or_outside_the_window_are_not_counted_twice(settings, double, fault):
    double.fail(fault, times=4, rows=5)
    result = materialize_day(settings, selection=["langfuse_generations"], langfuse=langfuse_for(double))
    assert result.success
    assert materialization_metadata(result, "langfuse_generations")["dagster/row_count"] == STAGED
    assert query(settings, "SELECT count(*), count(DISTINCT observation_id) FROM langfuse_generations")[0] == (STAGED, STAGED)
    assert check_evaluation(result, "extraction_complete").passed


def test_a_page_the_api_does_not_serve_fails_the_completeness_check_and_stops_delivery(settings, double):
    double.hidden_ids = {f"g{i:05d}" for i in range(1000, 2000)}  # a page's worth the metrics still count
    result = materialize_day(settings, langfuse=langfuse_for(double))
    check = check_evaluation(result, "extraction_complete")
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert check.metadata["extracted_observations"].value == FETCHED_IN_DAY - 1000
    assert check.metadata["langfuse_observations"].value == FETCHED_IN_DAY
    assert check.metadata["count_gap_pct"].value > 40
    assert "Langfuse counts 2,405" in check.description
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "langfuse_generations" in materialized
    assert "allocated_costs" not in materialized and "finout_upload" not in materialized


def test_when_langfuse_cannot_give_its_totals_completeness_warns_and_delivery_goes_on(settings, double):
    double.metrics_enabled = False
    result = materialize_day(settings, langfuse=langfuse_for(double))
    check = check_evaluation(result, "extraction_complete")
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.description.startswith("Could not verify") and "/api/public/v2/metrics" in check.description
    assert check.metadata["extracted_observations"].value == FETCHED_IN_DAY
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert {"allocated_costs", "finout_upload"} <= materialized


@pytest.mark.parametrize("metrics", [True, False])
def test_an_empty_day_is_delivered_as_zero_only_when_langfuse_confirms_it(settings, metrics):
    with LangfuseDouble([api_row("yesterday", _at(-0.5)), api_row("tomorrow", _at(86400))]) as double:
        double.metrics_enabled = metrics
        result = materialize_day(settings, selection=["langfuse_generations", "allocated_costs", "finout_upload"],
                                 langfuse=langfuse_for(double))
    check = check_evaluation(result, "extraction_complete")
    delivered = Path(settings.finout_dir) / "llm-costs-2026-11-21.csv"
    if metrics:  # Langfuse counts 0 too: a verified $0 day
        assert result.success and check.passed and delivered.exists()
        assert check.description.startswith("Extracted 0 observations / $0.00; Langfuse counts 0 / $0.00")
    else:  # nobody confirmed the empty answer: not delivered as $0
        assert failed_on_checks(result) == {"langfuse_generations"} and not delivered.exists()
        assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
        assert check.description.startswith("Langfuse's API returned no observations for 2026-11-21, and its totals "
                                            "could not be had to confirm that")


def test_a_server_that_keeps_failing_fails_the_run_naming_the_window(settings, double):
    double.fail("503", times=1000)
    result = materialize_day(settings, selection=["langfuse_generations"],
                             langfuse=langfuse_for(double, give_up_after_seconds=3))
    assert not result.success
    message = _failure_message(result)
    assert "gave up on /api/public/v2/observations 2026-11-21T" in message
    assert "page 1" in message and "HTTP 503" in message


def test_a_host_without_either_api_is_named_as_not_langfuse(settings):
    with LangfuseDouble([], v2=False) as not_langfuse:  # 404 on every route
        result = materialize_day(settings, selection=["langfuse_generations"], langfuse=langfuse_for(not_langfuse))
    assert not result.success
    message = _failure_message(result)
    assert "answers 404 to both /api/public/v2/observations and /api/public/observations" in message
    assert "Check LANGFUSE_BASE_URL or LANGFUSE_HOST" in message


def test_the_secret_key_never_reaches_logs_events_metadata_or_errors(settings, double, monkeypatch, caplog):
    secret = "sk-lf-0123-very-secret-value"
    leaks = [secret, base64.b64encode(f"{double.public_key}:{secret}".encode()).decode()]
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", double.public_key)
    caplog.set_level(logging.DEBUG)
    for key in (secret, double.secret_key):  # a wrong key (401), then the right one
        monkeypatch.setenv("LANGFUSE_SECRET_KEY", key)
        langfuse = LangfuseApiResource.from_env({"LANGFUSE_PUBLIC_KEY": "set", "LANGFUSE_SECRET_KEY": "set",
                                                 "LANGFUSE_HOST": double.url})
        langfuse = langfuse_for(double, public_key=langfuse.public_key, secret_key=langfuse.secret_key)
        instance = dg.DagsterInstance.ephemeral()
        result = materialize_day(settings, selection=["langfuse_generations"], langfuse=langfuse, instance=instance)
        records = [dg.serialize_value(entry) for entry in instance.all_logs(result.run_id)]
        records += [str(instance.get_run_by_id(result.run_id))]
        for leak in leaks:
            assert not any(leak in r for r in records), "a secret reached the event log"
            assert leak not in caplog.text, "a secret reached a log line"
        if key == secret:
            assert not result.success
            message = _failure_message(result)
            assert "rejected the API keys (HTTP 401" in message and "LANGFUSE_SECRET_KEY" in message
            assert all(leak not in message for leak in leaks)
        else:
            assert result.success
    secret_logs = [r for r in caplog.records if secret in r.getMessage()]
    assert not secret_logs


def test_host_and_keys_come_from_the_environment_as_the_sdk_reads_them():
    langfuse = LangfuseApiResource.from_env({"LANGFUSE_HOST": "https://us.cloud.langfuse.com"})
    assert not langfuse.configured and langfuse.host == "https://us.cloud.langfuse.com"
    both = LangfuseApiResource.from_env({"LANGFUSE_PUBLIC_KEY": "pk", "LANGFUSE_SECRET_KEY": "sk",
                                         "LANGFUSE_HOST": "https://us.cloud.langfuse.com",
                                         "LANGFUSE_BASE_URL": "https://langfuse.internal",
                                         "FINOPS_LANGFUSE_REQUESTS_PER_MINUTE": "30"})
    assert both.host == "https://langfuse.internal" and both.requests_per_minute == 30
    # The keys stay environment variables, resolved when a run starts: the config never holds them.
    assert isinstance(both.secret_key, dg.EnvVar) and both.secret_key.env_var_name == "LANGFUSE_SECRET_KEY"
    assert LangfuseApiResource.from_env({}).host == "https://cloud.langfuse.com"


@pytest.mark.parametrize("header_format, seconds", [
    ("7", 7), ("0", 0), ("soon", None),
    ("%a %b %d %Y %H:%M:%S GMT+0000 (Coordinated Universal Time)", 30),  # Langfuse: JavaScript's Date.toString()
    ("%a, %d %b %Y %H:%M:%S GMT", 30),  # an HTTP date
])
def test_rate_limit_headers_are_read_in_the_formats_servers_send(header_format, seconds):
    value = (datetime.now(timezone.utc) + timedelta(seconds=30)).strftime(header_format)
    parsed = seconds_until(value)
    assert parsed is None if seconds is None else parsed == pytest.approx(seconds, abs=2)


def _failure_message(result) -> str:
    failures = [e for e in result.all_events if e.is_step_failure]
    assert failures, "expected a step failure"
    error = failures[0].step_failure_data.error
    return error.message + "".join(c.message for c in error.cause and [error.cause] or [])
