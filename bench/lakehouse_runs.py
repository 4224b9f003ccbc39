"""`make bench-lakehouse-runs`: how a backfill's throughput grows with runs at once, on the lakehouse warehouse.

D days of N generations each (a Parquet Langfuse export, bench/export_day.py, cached under bench/data/runs-N/)
are materialised as a backfill does it: one run a day, each a `dagster asset materialize` process of its own
(langfuse_generations -> allocated_costs -> finout_upload), at most W at once, for W = 1, 2 and 4, each W on a new
lakehouse (DuckLake, catalog in a real Postgres, files in moto's S3 server). The DuckDB file is timed at W = 1:
a file takes one writer, so more runs at once only take turns (the `duckdb` pool).

Every run on one machine shares its cores: here the figures show that lakehouse runs do not wait on each other,
up to what the machine's cores allow; on many machines (one pod a run) each run has its own.

    .venv-lakehouse/bin/python bench/lakehouse_runs.py [--days 8] [--generations 250K] [--writers 1,2,4]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from finops_pipeline_tests.postgres_server import PostgresServer  # noqa: E402

FIRST_DAY = date(2026, 11, 2)
SELECTION = "langfuse_generations,allocated_costs,finout_upload"


def export(days: list[date], n: int) -> Path:
    from export_day import write_export_day

    folder = BENCH / "data" / f"runs-{n}"
    if not (folder / f".complete-{len(days)}").exists():
        shutil.rmtree(folder, ignore_errors=True)
        for day in days:
            print(f"  writing {n:,} generations of {day} as parquet ...", flush=True)
            write_export_day(folder, day, n, "parquet")
        (folder / f".complete-{len(days)}").touch()
    return folder


def one_run(day: date, env: dict) -> float:
    # the DuckDB file as users run it, on .venv's DuckDB 2; the lakehouse on this environment's (the extra's)
    venv = REPO / ".venv" if "FINOPS_WAREHOUSE" not in env and (REPO / ".venv").exists() else Path(sys.executable).parent.parent
    # a Dagster instance a run (SQLite storage created by several processes at once races on its migrations)
    instance = Path(env["FINOPS_HOME"]) / f"dagster-{day}"
    instance.mkdir(parents=True, exist_ok=True)
    env = {**env, "DAGSTER_HOME": str(instance)}
    started = time.perf_counter()
    done = subprocess.run([str(venv / "bin" / "dagster"), "asset", "materialize", "-m",
                           "finops_pipeline.definitions", "--select", SELECTION, "--partition", day.isoformat()],
                          cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the run of {day} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def backfill(days: list[date], writers: int, env: dict) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(lambda d: one_run(d, env), days))
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=8)
    parser.add_argument("--generations", default="250K")
    parser.add_argument("--writers", default="1,2,4")
    args = parser.parse_args()
    n = int(float(args.generations.upper().rstrip("KM")) * {"K": 1_000, "M": 1_000_000}.get(args.generations.upper()[-1], 1))
    days = [FIRST_DAY + timedelta(days=i) for i in range(args.days)]
    folder = export(days, n)

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moto = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FINOPS_", "LANGFUSE_", "OPENAI_", "ANTHROPIC_"))}
    base.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "FINOPS_START_DATE": "2026-01-01",
                 "FINOPS_LANGFUSE_EXPORT_DIR": str(folder)})
    results = []
    try:
        time.sleep(2)
        import boto3

        os.environ.update({k: base[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")})
        boto3.client("s3").create_bucket(Bucket="bench-runs")
        with PostgresServer() as postgres, tempfile.TemporaryDirectory() as scratch:
            home = Path(scratch) / "file"
            file_env = {**base, "FINOPS_HOME": str(home)}
            results.append(("DuckDB file", 1, backfill(days, 1, file_env)))
            for w in [int(x) for x in args.writers.split(",")]:
                home = Path(scratch) / f"lake-{w}"
                env = {**base, "FINOPS_HOME": str(home),
                       "FINOPS_WAREHOUSE": f"ducklake:postgres:{postgres.database(f'runs{w}')}",
                       "FINOPS_WAREHOUSE_DATA_PATH": f"s3://bench-runs/lake-{w}/"}
                results.append(("lakehouse", w, backfill(days, w, env)))
    finally:
        moto.terminate()
    cores = os.cpu_count()
    print(f"\n{len(days)} days of {n:,} generations (Parquet export), one run a day ({SELECTION}), {cores} cores")
    print("| warehouse | runs at once | backfill s | days per hour | generations per s | vs 1 run |")
    print("|---|---:|---:|---:|---:|---:|")
    one = next(s for kind, w, s in results if kind == "lakehouse" and w == 1)
    for kind, w, seconds in results:
        print(f"| {kind} | {w} | {seconds:.1f} | {len(days) * 3600 / seconds:,.0f} | {len(days) * n / seconds:,.0f} | "
              f"{one / seconds:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
