"""langfuse_generations from a server without the v2 API (self-hosted Langfuse v3): the legacy API, against
an HTTP double whose every response parses with the Langfuse SDK 4.x's models (langfuse_legacy_double.py)."""

import time

import dagster as dg
import pytest

from finops_pipeline.resources import LangfuseApiResource, LangfuseProject

from .conftest import (
    check_evaluation, failed_on_checks, materialization_metadata, materialize_day, query, replace_settings,
)
from .langfuse_double import LangfuseDouble, api_row
from .langfuse_legacy_double import LangfuseLegacyDouble
from .test_langfuse_api import FETCHED_IN_DAY, STAGED, _at, _failure_message, day_of_rows, langfuse_for, staged


@pytest.fixture
def legacy():
    with LangfuseLegacyDouble(day_of_rows()) as server:
        yield server
        assert not server.contract_errors, "the double served a response the SDK 4.x's models reject"


def test_a_day_through_the_legacy_api_equals_the_same_day_through_the_v2_api(settings, tmp_path, legacy):
    result = materialize_day(settings, selection=["langfuse_generations"], langfuse=langfuse_for(legacy))
    assert result.success
    meta = materialization_metadata(result, "langfuse_generations")
    assert meta["api_path"] == "legacy" and meta["dagster/row_count"] == STAGED
    assert meta["generations_without_trace"] == 0  # g00000 at midnight: its trace began the second before
    completeness = check_evaluation(result, "extraction_complete")
    assert completeness.passed and completeness.metadata["langfuse_observations"].value == FETCHED_IN_DAY

    # What was asked: pages of at most 100, one cost-carrying type at a time, traces without input or output,
    # and every window fetched in one page (rows sharing a millisecond never straddle a page).
    observations = [q for path, q in legacy.requests if path == "/api/public/observations"]
    traces = [q for path, q in legacy.requests if path == "/api/public/traces"]
    assert all(q["limit"] == "100" and q["page"] == "1" for q in observations + traces)
    assert {q["type"] for q in observations} == {"GENERATION", "AGENT", "TOOL", "CHAIN", "RETRIEVER", "EVALUATOR",
                                                  "EMBEDDING", "GUARDRAIL"}
    assert all(q["fields"] == "core" for q in traces)
    assert b"SECRET PROMPT TEXT" not in settings.duckdb_path.read_bytes()

    v2 = replace_settings(settings, home=str(tmp_path / "v2"))
    with LangfuseDouble(day_of_rows()) as server:
        assert materialize_day(v2, selection=["langfuse_generations"], langfuse=langfuse_for(server)).success
    assert staged(settings) == staged(v2)  # row for row: user, session and tags came from the traces



def test_a_trace_outside_the_day_is_looked_for_in_the_days_around_it_and_one_nowhere_is_counted(settings, legacy):
    legacy.trace_times = {"t-g01000": "2026-11-22T00:10:00.000Z",  # stamped after the day: the next day's
                          "t-g02000": "2026-11-18T09:00:00.000Z"}  # a long-running agent's: three days before
    result = materialize_day(settings, selection=["langfuse_generations"], langfuse=langfuse_for(legacy))
    assert result.success
    assert materialization_metadata(result, "langfuse_generations")["generations_without_trace"] == 1
    rows = dict(query(settings, "SELECT observation_id, user_id FROM langfuse_generations "
                                "WHERE observation_id IN ('g01000', 'g02000')"))
    assert rows == {"g01000": "u1", "g02000": None}
    # the day's traces first, then, as some generations had none there, the day before and the day after
    asked = {(q["fromTimestamp"], q["toTimestamp"]) for path, q in legacy.requests if path == "/api/public/traces"}
    assert {("2026-11-21T00:00:00.000Z", "2026-11-22T00:00:00.000Z"), ("2026-11-20T00:00:00.000Z",
            "2026-11-21T00:00:00.000Z"), ("2026-11-22T00:00:00.000Z", "2026-11-23T00:00:00.000Z")} <= asked

@pytest.mark.parametrize("fault, reason", [
    ("429", "HTTP 429 rate limited"), ("500", "HTTP 500"), ("503", "HTTP 503"), ("slow", "ReadTimeout"),
    ("drop", "RemoteProtocolError"),
    ("truncated", "malformed response body"), ("stray", None),
])
def test_the_legacy_path_retries_what_the_v2_path_retries_and_loses_nothing(settings, legacy, fault, reason):
    legacy.fail(fault, times=2, delay=12, retry_after=1)
    langfuse = langfuse_for(legacy, timeout_seconds=4 if fault == "slow" else 60, give_up_after_seconds=300)
    result = materialize_day(settings, selection=["langfuse_generations"], langfuse=langfuse)
    assert result.success
    meta = materialization_metadata(result, "langfuse_generations")
    assert meta["dagster/row_count"] == STAGED and meta["generations_without_trace"] == 0
    if reason:
        assert reason in meta["api_retry_reasons"]
    assert check_evaluation(result, "extraction_complete").passed


def test_windows_the_server_times_out_on_are_split_until_it_answers(settings):
    with LangfuseLegacyDouble(day_of_rows(), max_rows_per_query=400) as server:
        result = materialize_day(settings, selection=["langfuse_generations"], langfuse=langfuse_for(server))
        assert not server.contract_errors
    assert result.success
    meta = materialization_metadata(result, "langfuse_generations")
    assert meta["dagster/row_count"] == STAGED and meta["api_windows_split"] > 0
    assert any(status == 422 for _, _, status in server.arrivals)


def test_rows_sharing_a_millisecond_beyond_a_page_are_paged_and_kept(settings):
    """A batch job logged 250 generations in the same millisecond: no window can split them."""
    burst = [api_row(f"burst{i:03d}", _at(3600), cost=0.001) for i in range(250)]
    with LangfuseLegacyDouble(burst + [api_row("alone", _at(7200))]) as server:
        result = materialize_day(settings, selection=["langfuse_generations"], langfuse=langfuse_for(server))
        assert not server.contract_errors
    assert result.success
    assert materialization_metadata(result, "langfuse_generations")["dagster/row_count"] == 251
    pages = {q["page"] for path, q in server.requests if path == "/api/public/observations" and q["type"] == "GENERATION"}
    assert pages == {"1", "2", "3"}
    assert check_evaluation(result, "extraction_complete").passed


def test_a_server_older_than_the_agent_types_and_the_metrics_api_is_read_and_says_what_it_could_not_check(settings):
    """v3.50: observation types GENERATION, SPAN and EVENT only (400 for the others), no GET /api/public/metrics."""
    with LangfuseLegacyDouble(day_of_rows(), version=(3, 50)) as server:
        result = materialize_day(settings, selection=["langfuse_generations", "allocated_costs"],
                                 langfuse=langfuse_for(server))
        assert not server.contract_errors
    assert result.success
    meta = materialization_metadata(result, "langfuse_generations")
    assert meta["types_unknown_to_server"] == "AGENT, CHAIN, EMBEDDING, EVALUATOR, GUARDRAIL, RETRIEVER, TOOL"
    assert meta["dagster/row_count"] == STAGED - 1  # its EMBEDDING row cannot exist on such a server: not served
    check = check_evaluation(result, "extraction_complete")
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.description.startswith("Could not verify") and "/api/public/metrics (HTTP 404)" in check.description


def test_a_row_the_legacy_api_does_not_serve_fails_the_completeness_check(settings, legacy):
    legacy.hidden_ids = {f"g{i:05d}" for i in range(0, 2400, 3)}
    result = materialize_day(settings, selection=["langfuse_generations", "allocated_costs"], langfuse=langfuse_for(legacy))
    assert failed_on_checks(result) == {"langfuse_generations"}
    check = check_evaluation(result, "extraction_complete")
    assert check.severity == dg.AssetCheckSeverity.ERROR and "Langfuse counts 2,405" in check.description


def test_several_projects_are_read_in_one_run_each_from_the_api_its_server_has(settings):
    """One project on a v3 server (legacy API), two on a v4 server (v2 API) of one organisation."""
    cloud_rows = [api_row(f"c{i}", _at(60 * i + 5), cost=0.02, projectId="cloud-a") for i in range(300)]
    other_rows = [api_row(f"d{i}", _at(60 * i + 7), cost=0.03, projectId="cloud-b") for i in range(200)]
    with LangfuseLegacyDouble(day_of_rows(), project_id="p1") as v3, \
            LangfuseDouble(cloud_rows, "pk-lf-a", "sk-lf-a", project_id="cloud-a", organization="acme") as v4:
        v4.add_project(other_rows, "pk-lf-b", "sk-lf-b", project_id="cloud-b", organization="acme")
        langfuse = langfuse_for(v3, more_projects=[
            LangfuseProject(name="cloud_a", host=v4.url, public_key="pk-lf-a", secret_key="sk-lf-a"),
            LangfuseProject(name="cloud_b", host=v4.url, public_key="pk-lf-b", secret_key="sk-lf-b")])
        result = materialize_day(settings, selection=["langfuse_generations"], langfuse=langfuse)
        assert not v3.contract_errors and not v4.contract_errors
    assert result.success
    meta = materialization_metadata(result, "langfuse_generations")
    assert meta["projects"] == 3 and meta["api_path"] == "legacy, v2"
    assert dict(query(settings, "SELECT project_id, count(*) FROM langfuse_generations GROUP BY ALL")) == {
        "p1": STAGED, "cloud-a": 300, "cloud-b": 200}
    check = check_evaluation(result, "extraction_complete")
    assert check.passed and check.description == (
        "3 of 3 projects extracted whole: project p1 (default) 2,405 observations / $13.85, as Langfuse counts; "
        "project cloud-a (cloud_a) 300 observations / $6.00, as Langfuse counts; "
        "project cloud-b (cloud_b) 200 observations / $6.00, as Langfuse counts.")
    table = [line.split("|")[1:-1] for line in meta["by_project"].splitlines()[2:]]
    assert [(p.strip(), how.strip(), int(n)) for p, how, n, _ in table] == [
        ("cloud-a", "v2 API", 300), ("cloud-b", "v2 API", 200), ("p1", "legacy API", STAGED)]


def test_projects_of_one_organisation_share_its_rate_limit(settings):
    """Langfuse counts requests per organisation: two projects of one are spaced as one client would be."""
    with LangfuseDouble([api_row("a1", _at(100), projectId="a")], "pk-lf-a", "sk-lf-a", project_id="a",
                        organization="acme") as server:
        server.add_project([api_row("b1", _at(200), projectId="b")], "pk-lf-b", "sk-lf-b", project_id="b",
                           organization="acme")
        langfuse = LangfuseApiResource(host=server.url, public_key="pk-lf-a", secret_key="sk-lf-a", windows=2,
                                       concurrency=2, requests_per_minute=240, timeout_seconds=10,
                                       more_projects=[LangfuseProject(name="b", public_key="pk-lf-b", secret_key="sk-lf-b")])
        result = materialize_day(settings, selection=["langfuse_generations"], langfuse=langfuse)
    assert result.success
    times = sorted(t for t, path, _ in server.arrivals)
    assert len(times) == 8  # per project: its identity, two windows, the day's totals
    # one slot per 250 ms across both projects: 8 requests span at least 7 slots (two limiters would take
    # about half that). The span, not each gap: a busy machine can deliver one request late and the next on time.
    assert times[-1] - times[0] >= 7 * 0.25 - 0.1


def test_a_rejected_key_pair_is_named_by_its_variables(settings, legacy):
    langfuse = langfuse_for(legacy, more_projects=[
        LangfuseProject(name="support", public_key="pk-lf-wrong", secret_key="sk-lf-wrong")])
    result = materialize_day(settings, selection=["langfuse_generations"], langfuse=langfuse)
    assert not result.success
    message = _failure_message(result)
    assert "LANGFUSE_PUBLIC_KEY_SUPPORT and LANGFUSE_SECRET_KEY_SUPPORT" in message and "sk-lf-wrong" not in message
    assert "LANGFUSE_BASE_URL_SUPPORT or LANGFUSE_HOST_SUPPORT, else LANGFUSE_BASE_URL or LANGFUSE_HOST" in message
    # every pair is checked before any day is read: the first project's observations were not fetched for nothing
    assert {path for _, path, _ in legacy.arrivals} == {"/api/public/projects"}


@pytest.mark.parametrize("host", [None, "localhost"], ids=["same host", "another name of the host"])
def test_two_key_pairs_of_one_project_read_it_once(settings, legacy, capfd, host):
    langfuse = langfuse_for(legacy, more_projects=[
        LangfuseProject(name="again", public_key=legacy.public_key, secret_key=legacy.secret_key,
                        host=host and legacy.url.replace("127.0.0.1", host))])
    result = materialize_day(settings, selection=["langfuse_generations"], langfuse=langfuse)
    assert result.success
    assert query(settings, "SELECT count(*) FROM langfuse_generations")[0][0] == STAGED
    assert check_evaluation(result, "extraction_complete").passed
    assert "LANGFUSE_PUBLIC_KEY_AGAIN and LANGFUSE_SECRET_KEY_AGAIN are keys of project p1" in capfd.readouterr().err


def test_a_host_no_resolver_knows_fails_at_once_naming_its_variable(settings):
    langfuse = LangfuseApiResource(host="http://langfuse.invalid", public_key="pk-lf-1", secret_key="sk-lf-1",
                                   give_up_after_seconds=600)
    started = time.monotonic()
    result = materialize_day(settings, selection=["langfuse_generations"], langfuse=langfuse)
    assert not result.success and time.monotonic() - started < 120  # not retried for the 10 minutes a outage gets
    message = _failure_message(result)
    assert "Langfuse at http://langfuse.invalid: no such host" in message
    assert "Check LANGFUSE_BASE_URL or LANGFUSE_HOST" in message


def test_more_projects_come_from_suffixed_key_pairs_in_the_environment():
    langfuse = LangfuseApiResource.from_env({
        "LANGFUSE_PUBLIC_KEY": "pk", "LANGFUSE_SECRET_KEY": "sk", "LANGFUSE_HOST": "https://langfuse.internal",
        "LANGFUSE_PUBLIC_KEY_SUPPORT": "pk2", "LANGFUSE_SECRET_KEY_SUPPORT": "sk2",
        "LANGFUSE_PUBLIC_KEY_EU": "pk3", "LANGFUSE_SECRET_KEY_EU": "sk3", "LANGFUSE_HOST_EU": "https://cloud.langfuse.com"})
    pairs = langfuse.key_pairs()
    assert [(p.name, p.host) for p in pairs] == [("default", "https://langfuse.internal"),
                                                 ("eu", "https://cloud.langfuse.com"),
                                                 ("support", "https://langfuse.internal")]
    assert [p.secret_key.env_var_name for p in pairs] == ["LANGFUSE_SECRET_KEY", "LANGFUSE_SECRET_KEY_EU",
                                                         "LANGFUSE_SECRET_KEY_SUPPORT"]
    with pytest.raises(ValueError, match="LANGFUSE_SECRET_KEY_BILLING is not"):
        LangfuseApiResource.from_env({"LANGFUSE_PUBLIC_KEY_BILLING": "pk"})


def test_a_key_pair_suffix_is_taken_as_written():
    [pair] = LangfuseApiResource.from_env({"LANGFUSE_PUBLIC_KEY_Staging": "pk", "LANGFUSE_SECRET_KEY_Staging": "sk",
                                           "LANGFUSE_HOST_Staging": "https://staging.internal"}).key_pairs()
    assert (pair.name, pair.host, pair.variables) == (
        "staging", "https://staging.internal", "LANGFUSE_PUBLIC_KEY_Staging and LANGFUSE_SECRET_KEY_Staging")
    assert pair.secret_key.env_var_name == "LANGFUSE_SECRET_KEY_Staging"
    for env, message in [
        ({"LANGFUSE_PUBLIC_KEY": "pk"}, "LANGFUSE_PUBLIC_KEY is set but LANGFUSE_SECRET_KEY is not"),
        ({"LANGFUSE_SECRET_KEY": "sk"}, "LANGFUSE_SECRET_KEY is set but LANGFUSE_PUBLIC_KEY is not"),
        ({"LANGFUSE_SECRET_KEY_EU": "sk"}, "LANGFUSE_SECRET_KEY_EU is set but LANGFUSE_PUBLIC_KEY_EU is not"),
        ({"LANGFUSE_PUBLIC_KEY_b": "pk", "LANGFUSE_SECRET_KEY_B": "sk"}, "(there is LANGFUSE_SECRET_KEY_B: the name is "
                                                                          "taken as written)"),
        ({"LANGFUSE_PUBLIC_KEY_DEFAULT": "pk", "LANGFUSE_SECRET_KEY_DEFAULT": "sk"}, "give this project another name"),
    ]:
        with pytest.raises(ValueError) as error:
            LangfuseApiResource.from_env(env)
        assert message in str(error.value)
    with pytest.raises(ValueError, match="LANGFUSE_PUBLIC_KEY_STAGING and LANGFUSE_PUBLIC_KEY_Staging name the same"):
        LangfuseApiResource.from_env({"LANGFUSE_PUBLIC_KEY_Staging": "pk", "LANGFUSE_SECRET_KEY_Staging": "sk",
                                      "LANGFUSE_PUBLIC_KEY_STAGING": "pk", "LANGFUSE_SECRET_KEY_STAGING": "sk"})


def test_an_empty_day_on_a_server_without_metrics_is_not_delivered_as_zero(settings):
    with LangfuseLegacyDouble([api_row("yesterday", _at(-0.5))], version=(3, 40)) as server:
        result = materialize_day(settings, selection=["langfuse_generations", "allocated_costs"],
                                 langfuse=langfuse_for(server))
    assert failed_on_checks(result) == {"langfuse_generations"}
    check = check_evaluation(result, "extraction_complete")
    assert "An empty day nobody confirmed is not a verified $0" in check.description
    assert "/api/public/metrics (HTTP 404)" in check.description
