"""The lakehouse warehouse (FINOPS_WAREHOUSE=ducklake:postgres:...): DuckLake with its catalog in a real Postgres and
its files in a real S3 API (moto's server), against the DuckDB file it stands in for. Many runs at once through a
real `dagster dev` are in test_dagster_dev.py."""

import multiprocessing
import re
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from finops_pipeline.demo.budgets_file import write_demo_budgets
from finops_pipeline.demo.business_files import write_business_files
from finops_pipeline.demo.sample_data import write_sample
from finops_pipeline.settings import FinopsSettings
from finops_pipeline.warehouse import (SCHEMA, SCHEMA_VERSION, LakehouseError, Warehouse, connect, replace_partition,
                                       transactions)
from finops_pipeline_tests.conftest import materialize_day, replace_settings

DAYS = [date(2026, 11, 2) + timedelta(days=n) for n in range(3)]
pytestmark = pytest.mark.lakehouse  # in .venv-lakehouse (pyproject.toml)
# Written when they run: the rest of every table is compared to the last digit.
STAMPS = {"written_at", "staged_at", "retired_at"}


def rows_of(conn, day_tables: list[str]) -> dict[str, list[tuple]]:
    tables = {}
    for table in day_tables:
        columns = [c for (c,) in conn.execute(f"SELECT column_name FROM (DESCRIBE {table})").fetchall() if c not in STAMPS]
        tables[table] = conn.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY ALL").fetchall()
    return tables


def warehouse(settings: FinopsSettings) -> Warehouse:
    return Warehouse(database=settings.warehouse or str(settings.duckdb_path), data_path=settings.warehouse_data_path)


def test_days_written_to_the_lakehouse_equal_the_duckdb_file_table_by_table(tmp_path, lakehouse):
    file_settings = FinopsSettings.from_env({"FINOPS_HOME": str(tmp_path / "finops")})
    home = Path(file_settings.home)
    sample = write_sample(home, DAYS, 400, Path(file_settings.langfuse_export_dir), Path(file_settings.billing_dir))
    write_demo_budgets(file_settings.budgets_path, sample)
    write_business_files(file_settings.revenue_path, file_settings.outcomes_path, sample)
    lake_settings = replace_settings(file_settings, **lakehouse)
    for settings in (file_settings, lake_settings):
        for day in DAYS + [DAYS[0]]:  # a day run again replaces its rows, in both
            result = materialize_day(settings, day, cost_basis="invoice")
            assert not [e for e in result.get_step_failure_events() if "reconciliation" not in e.step_key], day

    with connect(warehouse(file_settings)) as conn:
        tables = [t for (t,) in conn.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = "
                                             "current_database() ORDER BY 1").fetchall()]
        in_file = rows_of(conn, tables)
    with connect(warehouse(lake_settings)) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("warehouse",)
        in_lake = rows_of(conn, tables)
        # the rows are Parquet files in the bucket, listed in the Postgres catalog
        files = conn.execute("SELECT count(*), bool_and(data_file LIKE 's3://finops-lakehouse/%') FROM "
                             "ducklake_list_files('warehouse', 'langfuse_generations')").fetchone()
    assert files[0] >= len(DAYS) and files[1]
    assert len(in_file["langfuse_generations"]) == sample.generations and len(in_file["quarantine"]) == 1
    for table in tables:
        assert in_lake[table] == in_file[table], table


def test_a_commit_that_conflicts_with_another_runs_is_tried_again_on_the_new_snapshot(tmp_path, lakehouse):
    settings = replace_settings(FinopsSettings.from_env({"FINOPS_HOME": str(tmp_path / "finops")}), **lakehouse)
    day1, day2 = DAYS[0], DAYS[1]
    one_call = "SELECT $day AS day, MAP {'team': 'search'} AS allocation, 'openai' AS provider, 'gpt-4o' AS model, " \
               "1 AS calls, 0 AS unpriced_calls, 10 AS input_tokens, 0 AS output_tokens, 0 AS cached_tokens, " \
               "0 AS cache_write_tokens, 0 AS reasoning_tokens, 10 AS total_tokens, 0.5 AS cost_usd"
    with connect(warehouse(settings)) as run_a, connect(warehouse(settings)) as run_b:
        for attempt in transactions(run_b):
            with attempt:
                replace_partition(run_b, "allocated_costs", day2, one_call)
        bodies = 0
        for attempt in transactions(run_a):
            with attempt:
                bodies += 1
                replace_partition(run_a, "allocated_costs", day1, one_call)
                if bodies == 1:  # meanwhile another run replaces its own day of the same table, and commits first
                    for other in transactions(run_b):
                        with other:
                            replace_partition(run_b, "allocated_costs", day2, one_call.replace("0.5", "0.7"))
        assert bodies == 2  # DuckLake refused the first commit (an insert into a table the other deleted from)
        assert run_a.execute("SELECT day, cost_usd FROM allocated_costs ORDER BY day").fetchall() == [
            (day1, Decimal("0.5")), (day2, Decimal("0.7"))]
        assert run_a.execute("SELECT asset, day FROM materialized_days ORDER BY day").fetchall() == [
            ("allocated_costs", day1), ("allocated_costs", day2)]


def test_two_runs_writing_the_same_new_day_at_once_store_it_once(tmp_path, lakehouse):
    """The schedule's run of a day and a backfill's: the DELETE of a day not yet written finds nothing for
    DuckLake to see a conflict in; the claim each transaction makes (warehouse.transactions) gives it one."""
    settings = replace_settings(FinopsSettings.from_env({"FINOPS_HOME": str(tmp_path / "finops")}), **lakehouse)
    day = DAYS[0]
    rows = "SELECT $day AS day, 'run-' || $run AS source, $day AS file, NULL AS line, 'obs-' || i AS observation_id, " \
           "'duplicate' AS reason FROM range(100) t(i)"
    with connect(warehouse(settings)) as run_a, connect(warehouse(settings)) as run_b:
        bodies = 0
        for attempt in transactions(run_a):
            with attempt:
                bodies += 1
                replace_partition(run_a, "quarantine", day, rows, {"run": "a"})
                if bodies == 1:  # the other run writes the same day, and commits first
                    for other in transactions(run_b):
                        with other:
                            replace_partition(run_b, "quarantine", day, rows, {"run": "b"})
        assert bodies == 2
        assert run_a.execute("SELECT source, count(*) FROM quarantine GROUP BY ALL").fetchall() == [("run-a", 100)]
        assert run_a.execute("SELECT count(*) FROM materialized_days WHERE asset = 'quarantine'").fetchone()[0] == 1


def test_a_failed_transaction_leaves_the_lakehouse_as_it_was(tmp_path, lakehouse):
    settings = replace_settings(FinopsSettings.from_env({"FINOPS_HOME": str(tmp_path / "finops")}), **lakehouse)
    with connect(warehouse(settings)) as conn:
        conn.execute("INSERT INTO retired_days VALUES (DATE '2026-11-01', now())")
        with pytest.raises(duckdb.ConversionException):
            for attempt in transactions(conn):
                with attempt:
                    conn.execute("DELETE FROM retired_days")
                    conn.execute("SELECT 'not a date'::DATE")
        assert conn.execute("SELECT day FROM retired_days").fetchall() == [(date(2026, 11, 1),)]


def open_and_count(catalog: str, data_path: str) -> int:
    """What a run's first step does to the warehouse (in a process of its own)."""
    with connect(Warehouse(database=catalog, data_path=data_path)) as conn:
        return conn.execute("SELECT count(*) FROM langfuse_generations").fetchone()[0]


def test_runs_opening_a_new_lakehouse_at_once_all_find_its_tables(lakehouse):
    """Four run processes start on a catalog no run has opened: each ATTACH creates DuckLake's tables in Postgres,
    each connection our tables; the ones that lose those races try again and find them."""
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        counts = pool.starmap(open_and_count, [(lakehouse["warehouse"], lakehouse["warehouse_data_path"])] * 4)
    assert counts == [0, 0, 0, 0]
    with connect(Warehouse(database=lakehouse["warehouse"], data_path=lakehouse["warehouse_data_path"])) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        tables = {t for (t,) in conn.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = 'warehouse'").fetchall()}
    assert tables == {"schema_version", "write_claim", *re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", SCHEMA)}


def test_a_data_path_that_cannot_be_written_fails_the_first_open_and_the_catalog_does_not_keep_it(lakehouse):
    """A typo in the bucket would pass every small write (DuckLake keeps those in the catalog) and tie the new
    catalog to the wrong path; it is tried first."""
    wrong = Warehouse(database=lakehouse["warehouse"], data_path="s3://no-such-bucket/finops/")
    with pytest.raises(LakehouseError, match="s3://no-such-bucket/finops/.*(NoSuchBucket|Not Found)"):
        with connect(wrong):
            pass
    with connect(Warehouse(database=lakehouse["warehouse"], data_path=lakehouse["warehouse_data_path"])) as conn:
        assert conn.execute("SELECT count(*) FROM langfuse_generations").fetchone() == (0,)


@pytest.mark.parametrize("value", ["ducklake:postgres:host=db dbname=finops password=hunter2",
                                   "ducklake:postgres:postgresql://finops:hunter2@db/finops",
                                   "postgres://finops:hunter2@db/finops",
                                   "ducklake:postgres:postgresql://finops@db/finops?sslmode=require&password=hunter2"])
def test_a_password_in_the_warehouse_setting_is_refused_without_repeating_it(value):
    with pytest.raises(ValueError, match="FINOPS_WAREHOUSE") as raised:
        FinopsSettings.from_env({"FINOPS_HOME": "/tmp/x", "FINOPS_WAREHOUSE": value})
    assert "hunter2" not in str(raised.value)
