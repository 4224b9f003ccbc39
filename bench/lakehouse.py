"""`make bench-lakehouse`: DuckLake against Apache Iceberg on this pipeline's workload, both with their catalog in
a real Postgres (Debian's package, started here) and their files in a real S3 API (moto's server, in its own
process).

The workload is what a run does to the warehouse: replace one day of staged generations (N rows in the staging
table's shape: maps, decimals, text) in one commit, then read the month back grouped by an allocation key. It is
timed with one writer, then with W writers at once, each replacing its own days (a backfill on W machines), with
the commits a writer had to try again.

  DuckLake  the pipeline's own warehouse code (warehouse.py: DELETE + INSERT of the day in a transaction,
            retried on a conflict), DuckDB 1.5.5 with the ducklake, postgres_scanner and httpfs extensions;
  Iceberg   pyiceberg (SQL catalog on the same Postgres): table.overwrite(day's Arrow rows, day = D), the
            table partitioned by day; a CommitFailedException reloads the table and overwrites again.

    python bench/lakehouse.py [--rows 1M] [--days 8] [--writers 4]
Needs the `lakehouse-bench` dependency group (pyiceberg, pyarrow): `make bench-lakehouse` installs it in .venv-bench.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from finops_pipeline.warehouse import Warehouse, connect, replace_partition, transactions  # noqa: E402
from finops_pipeline_tests.postgres_server import PostgresServer  # noqa: E402

FIRST_DAY = date(2026, 11, 1)
BUCKET = "bench-lakehouse"

# One day of staged generations, in the staging table's columns and types (warehouse.SCHEMA).
DAY_ROWS = """
SELECT $day::DATE AS day, 'obs-' || $day || '-' || i AS observation_id, 'trace-' || (i // 3) AS trace_id,
       'project-1' AS project_id, 'GENERATION' AS type, 'llm-call' AS name,
       $day::TIMESTAMP + to_microseconds((i * 86400000000 // $rows)::BIGINT) AS start_time,
       ['gpt-4o-mini', 'claude-sonnet-4', 'gpt-4.1'][1 + i % 3] AS model,
       ['openai', 'anthropic', 'openai'][1 + i % 3] AS provider,
       (500 + i % 1000)::BIGINT AS input_tokens, (100 + i % 300)::BIGINT AS output_tokens,
       (i % 200)::BIGINT AS cached_tokens, 0::BIGINT AS cache_write_tokens, (i % 50)::BIGINT AS reasoning_tokens,
       (800 + i % 1500)::BIGINT AS total_tokens, NULL::MAP(VARCHAR, BIGINT) AS usage_other,
       ((i % 997) / 100000.0)::DECIMAL(38, 12) AS cost_usd, 'langfuse' AS cost_source,
       NULL::MAP(VARCHAR, BIGINT) AS unpriced_usage, 'production' AS environment, 'user-' || (i % 5000) AS user_id,
       'session-' || (i % 20000) AS session_id, NULL AS prompt_name, NULL::INTEGER AS prompt_version,
       ['feature:chat'] AS tags,
       MAP {'team': ['search', 'support', 'analytics', 'growth'][1 + i % 4],
            'feature': ['chat', 'rerank', 'summary'][1 + i % 3], 'customer_id': 'cust-' || (i % 300)} AS allocation,
       'observations_v2/' || $day || '.parquet' AS source_file
FROM range($rows) t(i)"""
MONTH_BY_TEAM = "SELECT allocation['team'] AS team, sum(cost_usd) AS cost, count(*) AS calls FROM {table} GROUP BY 1 ORDER BY 1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(s3_endpoint: str) -> None:
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_endpoint})


# --- DuckLake: the pipeline's warehouse code ------------------------------------------------------------------------

def ducklake_write(args: tuple) -> tuple[float, int]:
    """Replace each of `days` (rows each) in the lakehouse; (seconds, commits tried again)."""
    catalog, data_path, s3_endpoint, days, rows = args
    environment(s3_endpoint)
    lake = Warehouse(database=catalog, data_path=data_path, connection_config={"memory_limit": "1GB"})
    retried = 0
    started = time.perf_counter()
    with connect(lake) as conn:
        for day in days:
            tries = 0
            for attempt in transactions(conn):
                tries += 1
                with attempt:
                    replace_partition(conn, "langfuse_generations", day, DAY_ROWS, {"rows": rows})
            retried += tries - 1
    return time.perf_counter() - started, retried


def ducklake_read(catalog: str, data_path: str) -> tuple[float, list]:
    lake = Warehouse(database=catalog, data_path=data_path, connection_config={"memory_limit": "1GB"})
    started = time.perf_counter()
    with connect(lake) as conn:
        result = conn.execute(MONTH_BY_TEAM.format(table="langfuse_generations")).fetchall()
    return time.perf_counter() - started, result


# --- Iceberg: pyiceberg with a SQL catalog --------------------------------------------------------------------------

def iceberg_catalog(postgres_uri: str, s3_endpoint: str):
    from pyiceberg.catalog.sql import SqlCatalog

    return SqlCatalog("bench", uri=postgres_uri, warehouse=f"s3://{BUCKET}/iceberg",
                      **{"s3.endpoint": s3_endpoint, "s3.access-key-id": "bench", "s3.secret-access-key": "bench",
                         "s3.region": "us-east-1"})


def day_arrow(day: date, rows: int):
    with duckdb.connect() as conn:
        conn.execute("SET TimeZone = 'UTC'")
        return conn.execute(DAY_ROWS, {"day": day, "rows": rows}).fetch_arrow_table()


def iceberg_create(postgres_uri: str, s3_endpoint: str, rows: int) -> None:
    catalog = iceberg_catalog(postgres_uri, s3_endpoint)
    catalog.create_namespace_if_not_exists("finops")
    table = catalog.create_table("finops.langfuse_generations", schema=day_arrow(FIRST_DAY, 1).schema)
    with table.update_spec() as spec:
        spec.add_identity("day")


def iceberg_write(args: tuple) -> tuple[float, int]:
    from pyiceberg.exceptions import CommitFailedException
    from pyiceberg.expressions import EqualTo

    postgres_uri, s3_endpoint, days, rows = args
    environment(s3_endpoint)
    catalog = iceberg_catalog(postgres_uri, s3_endpoint)
    retried = 0
    started = time.perf_counter()
    for day in days:
        frame = day_arrow(day, rows)
        while True:
            table = catalog.load_table("finops.langfuse_generations")
            try:
                table.overwrite(frame, overwrite_filter=EqualTo("day", day.isoformat()))
                break
            except CommitFailedException:
                retried += 1
    return time.perf_counter() - started, retried


def iceberg_read(postgres_uri: str, s3_endpoint: str) -> tuple[float, list]:
    started = time.perf_counter()
    arrow = iceberg_catalog(postgres_uri, s3_endpoint).load_table("finops.langfuse_generations").scan().to_arrow()
    with duckdb.connect() as conn:
        conn.register("scanned", arrow)
        result = conn.execute(MONTH_BY_TEAM.format(table="scanned")).fetchall()
    return time.perf_counter() - started, result


# --- the measurement -----------------------------------------------------------------------------------------------

def measure(name: str, write, make_args, days: list[date], writers: int) -> dict:
    """One writer over the first half of the days, then `writers` at once over the rest (then all of it again:
    replacements of days that hold rows, as a re-run backfill makes)."""
    half = len(days) // 2
    one, retried_one = write(make_args(days[:half]))
    chunks = [days[half:][i::writers] for i in range(writers)]
    results = {}
    for label, batch in (("new days", chunks), ("days replaced", [days[i::writers] for i in range(writers)])):
        started = time.perf_counter()
        with multiprocessing.get_context("spawn").Pool(writers) as pool:
            outcomes = pool.map(write, [make_args(c) for c in batch])
        results[label] = (time.perf_counter() - started, sum(n for _, n in outcomes), sum(len(c) for c in batch))
    return {"name": name, "one_writer_s_per_day": one / half, "retried_one": retried_one, **{
        f"{label}": f"{sum_days / seconds:.2f} days/s ({seconds:.1f} s for {sum_days}), {retried} commits tried again"
        for label, (seconds, retried, sum_days) in results.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1M", help="staged generations a day: 100K, 1M, ...")
    parser.add_argument("--days", type=int, default=8)
    parser.add_argument("--writers", type=int, default=4)
    args = parser.parse_args()
    rows = int(float(args.rows.upper().rstrip("KM")) * {"K": 1_000, "M": 1_000_000}.get(args.rows.upper()[-1], 1))
    days = [FIRST_DAY + timedelta(days=n) for n in range(args.days)]

    port = free_port()
    moto = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        time.sleep(2)
        environment(endpoint)
        import boto3

        boto3.client("s3").create_bucket(Bucket=BUCKET)
        with PostgresServer() as postgres:
            catalog = f"ducklake:postgres:{postgres.database('ducklake')}"
            data_path = f"s3://{BUCKET}/ducklake/"
            lake = measure("DuckLake", ducklake_write, lambda d: (catalog, data_path, endpoint, d, rows), days, args.writers)
            lake_read, lake_result = ducklake_read(catalog, data_path)

            postgres.database("iceberg")
            uri = f"postgresql+psycopg2://{postgres.user}@127.0.0.1:{postgres.port}/iceberg"
            iceberg_create(uri, endpoint, rows)
            ice = measure("Iceberg", iceberg_write, lambda d: (uri, endpoint, d, rows), days, args.writers)
            ice_read, ice_result = iceberg_read(uri, endpoint)
            assert lake_result == ice_result, (lake_result, ice_result)
    finally:
        moto.terminate()
    print(f"\n{rows:,} staged generations a day, {args.days} days, catalog in Postgres, files in moto's S3")
    for m, read in ((lake, lake_read), (ice, ice_read)):
        print(f"  {m['name']:9} one writer: {m['one_writer_s_per_day']:.2f} s a day | {args.writers} writers, "
              f"{m['new days']} | again: {m['days replaced']} | month by team read: {read:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
