"""Shared fixtures: a throwaway project data directory, the Dagster instance `make dev` creates, and helpers
that write inputs in the real formats."""

import json
import os
import shutil
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import boto3
import dagster as dg
import duckdb
import httpx
import pytest
import time_machine
from moto.server import ThreadedMotoServer

# The tests' days are in 2026; the first partition must not follow whatever export a developer's own
# data directory holds (by default it is the first day of the local export: test_definitions.py).
os.environ["FINOPS_START_DATE"] = "2025-01-01"

from finops_pipeline.definitions import build_assets, build_resources, is_check_failure  # noqa: E402
from finops_pipeline.demo.sample_data import write_export_file
from finops_pipeline.settings import FinopsSettings

DAY = date(2026, 11, 21)
BUCKET = "finout-drop"
REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items):
    """The end-to-end run of `dagster dev` takes minutes: start it first, so the other worker runs the rest."""
    items.sort(key=lambda item: item.fspath.basename != "test_dagster_dev.py")


@pytest.fixture
def settings(tmp_path: Path) -> FinopsSettings:
    return FinopsSettings.from_env({"FINOPS_HOME": str(tmp_path / "finops")})


@pytest.fixture
def instance(tmp_path: Path):
    """The instance `make dev` and `make demo` use: the project's dagster.yaml in a DAGSTER_HOME of its own
    (SQLite storage, a run-sharded event log), not an in-memory one."""
    home = tmp_path / "dagster"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


@pytest.fixture
def s3(monkeypatch):
    """moto's S3 server on loopback, reached the standard AWS way (environment credentials, AWS_ENDPOINT_URL)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for name, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_MAX_ATTEMPTS": "2"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    httpx.post(f"{endpoint}/moto-api/reset")  # moto keeps its state per process, across servers
    client = boto3.session.Session().client("s3")
    client.create_bucket(Bucket=BUCKET)
    client.endpoint = endpoint
    yield client
    server.stop()


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server of the tests' own (postgres_server.py), one per test process."""
    from finops_pipeline_tests.postgres_server import PostgresServer

    with PostgresServer() as server:
        yield server


@pytest.fixture
def lakehouse(postgres, s3, request) -> dict:
    """The settings of a new DuckLake lakehouse: its catalog a new database of the tests' Postgres, its files in
    a bucket of moto's S3 server (reached the standard AWS way, as in production)."""
    name = "lake_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[-50:].lower()
    s3.create_bucket(Bucket="finops-lakehouse")
    return {"warehouse": f"ducklake:postgres:{postgres.database(name)}",
            "warehouse_data_path": f"s3://finops-lakehouse/{name}/"}


@pytest.fixture
def settled():
    """The clock a month after DAY: its bills have settled, its reconciliation is final."""
    with time_machine.travel(datetime(2026, 12, 21, 12, tzinfo=timezone.utc), tick=True):
        yield


def materialize_day(settings: FinopsSettings, day: date = DAY, selection=None, langfuse=None, instance=None,
                    openai=None, anthropic=None, cost_basis: str = "langfuse", checks=(),
                    **overrides) -> dg.ExecuteInProcessResult:
    """Materialise `day` of the whole graph (or `selection`, with `checks` defined apart from their assets)
    the way a Dagster run does; from the Langfuse API when `langfuse` (a LangfuseApiResource) is given, else
    from the export folder; the bills from the cost APIs in `openai` / `anthropic` (CostApiResource), else
    from the billing folder; delivered on `cost_basis`."""
    if overrides:
        settings = replace_settings(settings, **overrides)
    return dg.materialize(
        [*build_assets(cost_basis), *checks], selection=selection, partition_key=day.isoformat(),
        resources=build_resources(settings, langfuse, openai, anthropic),
        instance=instance or dg.DagsterInstance.ephemeral(), raise_on_error=False,
    )


def replace_settings(settings: FinopsSettings, **overrides) -> FinopsSettings:
    """A copy with some fields changed (resources are frozen; model_copy would not reach Dagster)."""
    return FinopsSettings(**{**{f: getattr(settings, f) for f in FinopsSettings.model_fields}, **overrides})


def query(settings: FinopsSettings, sql: str, params=None) -> list[tuple]:
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as conn:
        return conn.execute(sql, params or []).fetchall()


def failed_on_checks(result: dg.ExecuteInProcessResult) -> set[str]:
    """The steps of a run that failed, each on a check that failed with ERROR: a blocking check (after its
    asset's materialization was recorded), or the reconciliation of a settled day (which fails the day)."""
    failures = result.get_step_failure_events()
    assert failures and all(is_check_failure(e.event_specific_data.error) for e in failures), [
        e.event_specific_data.error.message for e in failures]
    return {e.step_key for e in failures}


def check_evaluation(result: dg.ExecuteInProcessResult, check_name: str):
    matches = [e for e in result.get_asset_check_evaluations() if e.check_name == check_name]
    assert len(matches) == 1, f"expected one evaluation of {check_name}, got {matches}"
    return matches[0]


def materialization_metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def generation(obs_id: str, start_time: str, model: str = "gpt-4o-2024-08-06", cost: float | None = 0.01,
               usage: dict | None = None, metadata: dict | None = None, tags: list | None = None, **extra) -> dict:
    """One observation row as the Langfuse export writes it (snake_case)."""
    return {
        "id": obs_id, "trace_id": f"t-{obs_id}", "start_time": start_time, "project_id": "p1",
        "type": "GENERATION", "name": "chat", "environment": "production", "user_id": "u1", "session_id": "s1",
        "provided_model_name": model,
        "usage_details": usage if usage is not None else {"input": 100, "output": 20, "total": 120},
        "cost_details": {} if cost is None else {"total": cost},
        "total_cost": cost,
        "prompt_name": "p", "prompt_version": 1, "tags": tags or [],
        "metadata": metadata if metadata is not None else {"feature": "chat", "team": "product",
                                                           "customer_id": "acme", "tier": "pro"},
        **extra,
    }


def day_window(day: date = DAY) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day)
    return start, start + timedelta(days=1)


def cover_day(settings: FinopsSettings, rows_by_hour: dict[int, list[dict]] | None = None,
              ext: str = "jsonl.gz", day: date = DAY) -> None:
    """Hourly export runs across `day`, with `rows_by_hour[h]` in the window [h, h+1]."""
    start, _ = day_window(day)
    for hour in range(24):
        write_export_file(Path(settings.langfuse_export_dir), start + timedelta(hours=hour),
                          start + timedelta(hours=hour + 1), (rows_by_hour or {}).get(hour, []), ext)


def write_openai_bill(billing_dir: Path, day: date, line_items: dict[str, float], pages: int = 1,
                      projects: dict[str, str] | None = None) -> None:
    """`projects`: the project of a line item, where not `proj_1`."""
    start = int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp())
    results = [{"object": "organization.costs.result", "amount": {"value": v, "currency": "usd"},
                "line_item": k, "project_id": (projects or {}).get(k, "proj_1")} for k, v in line_items.items()]
    folder = billing_dir / "openai" / day.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    size = max(1, -(-len(results) // pages))
    chunks = [results[i:i + size] for i in range(0, len(results), size)] or [[]]
    for n, chunk in enumerate(chunks, 1):
        page = {"object": "page", "data": [{"object": "bucket", "start_time": start, "end_time": start + 86400,
                                            "results": chunk}],
                "has_more": n < len(chunks), "next_page": f"p{n + 1}" if n < len(chunks) else None}
        (folder / f"page-{n}.json").write_text(json.dumps(page))


def write_anthropic_bill(billing_dir: Path, day: date, cents_by_model: dict[str, str]) -> None:
    """Amounts are decimal strings in cents, as the cost report sends them."""
    starting = f"{day.isoformat()}T00:00:00Z"
    ending = f"{(day + timedelta(days=1)).isoformat()}T00:00:00Z"
    results = [{"amount": cents, "currency": "USD", "cost_type": "tokens", "description": f"{m} Usage - Input Tokens",
                "model": m, "token_type": "uncached_input_tokens", "service_tier": "standard"}
               for m, cents in cents_by_model.items()]
    folder = billing_dir / "anthropic" / day.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "page-1.json").write_text(json.dumps(
        {"data": [{"starting_at": starting, "ending_at": ending, "results": results}], "has_more": False,
         "next_page": None}))


def usd(value) -> Decimal:
    return Decimal(str(value))
