"""`make bench`: time the pipeline on one day of N generations, against a per-row loop and DuckDB's floor.

For each size, writes (once, cached under --data) a day of N generations as a Langfuse blob export in
`.jsonl.gz` and in Parquet (bench/export_day.py), then times, each in a fresh process so that peak memory
is its own:
  pipeline  the real Dagster run of langfuse_generations -> allocated_costs -> finout_upload for the day,
            stage by stage (Dagster's step events) and in total, with peak RSS;
  per-row   bench/per_row_loop.py: json.loads per line, Python dicts (JSONL only);
  floor     DuckDB reading the same files and grouping cost by the Finout dimensions: no validation,
            no dedup, no writes; no pipeline on DuckDB's own readers beats it. For JSONL, the same
            query also through the ISA-L gzip reader the pipeline uses (sources/isal_gzip.py).
and prints the figures, the ratios per-row/pipeline and pipeline/floor, and how time and memory scale.

Format `api` instead serves the day from the Langfuse API double on loopback, in its own process
(bench/api_day.py), and times the same run reading it through the API client with no rate limit:
generations per second, requests and peak memory.

    python bench/run.py --sizes 0.25M,0.5M,1M --formats jsonl,parquet,api [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

BENCH = Path(__file__).resolve().parent
DAY = date(2026, 11, 20)
EXTENSIONS = {"jsonl": "jsonl.gz", "parquet": "parquet"}


def parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("KM")) * scale)


def export_dir(data: Path, n: int, fmt: str) -> Path:
    """The day's export for (n, fmt), written on first use; `.complete` marks a finished write."""
    folder = data / f"{n}" / fmt
    if not (folder / ".complete").exists():
        started = time.perf_counter()
        print(f"  writing {n:,} generations as {fmt} to {folder} ...", flush=True)
        # in a child: on Linux a child's peak RSS starts at its parent's when it forks, so a parent grown by
        # writing the day would inflate every measurement after it
        subprocess.run([sys.executable, "-c", "import sys; from export_day import write_export_day; from datetime "
                        "import date; write_export_day(__import__('pathlib').Path(sys.argv[1]), "
                        "date.fromisoformat(sys.argv[2]), int(sys.argv[3]), sys.argv[4])",
                        str(folder), DAY.isoformat(), str(n), fmt], cwd=BENCH, check=True)
        (folder / ".complete").touch()
        print(f"  written in {time.perf_counter() - started:.0f} s", flush=True)
    return folder


def in_child(*args: str, env: dict | None = None) -> tuple[dict, float]:
    """Run `args` in a fresh Python; return its JSON line and its own peak RSS in MB."""
    # The bench's day is a partition whatever export the project's own data directory holds.
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True, cwd=BENCH.parent,
                            env={**os.environ, "FINOPS_START_DATE": "2025-01-01", **(env or {})})
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed with exit code {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    result["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    return result, usage.ru_maxrss / 1024


def serve_api_day(n: int) -> tuple[subprocess.Popen, dict]:
    """The API double serving a day of `n` generations, in its own process; and the environment that
    points the pipeline at it."""
    server = subprocess.Popen([sys.executable, str(BENCH / "api_day.py"), str(n)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    url = server.stdout.readline().strip()
    if not url:
        raise SystemExit("the API double did not start")
    sys.path.insert(0, str(BENCH))
    from api_day import PUBLIC_KEY, SECRET_KEY

    return server, {"LANGFUSE_HOST": url, "LANGFUSE_PUBLIC_KEY": PUBLIC_KEY, "LANGFUSE_SECRET_KEY": SECRET_KEY,
                    "FINOPS_LANGFUSE_REQUESTS_PER_MINUTE": "0"}


def child_pipeline(export: str, profile: bool) -> None:
    """In a fresh process: the three assets for DAY through Dagster, on a throwaway FINOPS_HOME; from the
    Langfuse API when LANGFUSE_* keys are set."""
    import dagster as dg

    from finops_pipeline.definitions import ASSETS, build_resources
    from finops_pipeline.resources import LangfuseApiResource
    from finops_pipeline.settings import FinopsSettings

    with tempfile.TemporaryDirectory() as home:
        settings = FinopsSettings.from_env({**os.environ, "FINOPS_HOME": home, "FINOPS_LANGFUSE_EXPORT_DIR": export})
        instance = dg.DagsterInstance.ephemeral()
        selection = [a for a in ASSETS if a.key.to_user_string() in ("langfuse_generations", "allocated_costs", "finout_upload")]
        quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
        profiler = None
        if profile:
            from pyinstrument import Profiler

            profiler = Profiler()
            profiler.start()
        started = time.perf_counter()
        langfuse = LangfuseApiResource.from_env()
        result = dg.materialize(selection, partition_key=DAY.isoformat(), instance=instance, run_config=quiet,
                                resources=build_resources(settings, langfuse if langfuse.configured else None))
        total = time.perf_counter() - started
        if profiler:
            profiler.stop()
            print(profiler.output_text(color=False, show_all=False), file=sys.stderr)
        steps, begun = {}, {}
        for entry in instance.all_logs(result.run_id):
            event = entry.dagster_event
            if event and event.event_type_value == "STEP_START":
                begun[entry.step_key] = entry.timestamp
            elif event and event.event_type_value == "STEP_SUCCESS":
                steps[entry.step_key] = entry.timestamp - begun[entry.step_key]
        [staged] = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == "langfuse_generations"]
        metadata = {k: v.value for k, v in staged.materialization.metadata.items()}
        # the schedule's lookback on a quiet day: the same inputs again (export days are not read twice)
        started = time.perf_counter()
        dg.materialize(selection, partition_key=DAY.isoformat(), instance=instance, run_config=quiet,
                       resources=build_resources(settings, langfuse if langfuse.configured else None))
        rerun = time.perf_counter() - started
    api = {k: metadata[k] for k in ("api_requests", "api_fetch_seconds", "api_retries") if k in metadata}
    print(json.dumps({"total": total, "rows": metadata["dagster/row_count"], "rerun": rerun, **steps, **api}))


def child_floor(export: str, fmt: str, inflate: str) -> None:
    """DuckDB alone: read the fields the Finout file needs and group cost by its dimensions. `inflate`:
    `duckdb` (its own gzip: the floor) or `isal` (through the pipeline's ISA-L reader)."""
    import duckdb

    from finops_pipeline.sources import isal_gzip

    files = sorted(str(p) for p in Path(export).rglob(f"*.{EXTENSIONS[fmt]}"))
    compression = "auto_detect"
    source = ("read_json($files, format='newline_delimited', records=true, compression=$compression, columns={"
              "'start_time': 'VARCHAR', 'provided_model_name': 'VARCHAR', 'total_cost': 'DECIMAL(38, 12)', "
              "'metadata': 'JSON', 'usage_details': 'JSON', 'environment': 'VARCHAR'})" if fmt == "jsonl"
              else "read_parquet($files)")
    metadata = ("metadata ->> '$.{}'" if fmt == "jsonl" else "metadata['{}']").format
    started = time.perf_counter()
    with duckdb.connect() as conn:
        if inflate == "isal":
            isal_gzip.register(conn)
            files, compression = isal_gzip.for_duckdb(files)
        groups = conn.execute(f"""
            SELECT left(start_time::VARCHAR, 10), provided_model_name, {metadata('feature')}, {metadata('team')},
                   {metadata('customer_id')}, {metadata('tier')}, environment, count(*), sum(total_cost)
            FROM {source} GROUP BY ALL""", {"files": files, **({"compression": compression} if fmt == "jsonl" else {})}
        ).fetchall()
    print(json.dumps({"total": time.perf_counter() - started, "groups": len(groups)}))


def child_floor_write(export: str, fmt: str) -> None:
    """What any staging pipeline must do, with DuckDB alone: read the same files and write the staged table's
    columns (those of `langfuse_generations`: ids, day and time, model, the token kinds, cost, who, prompt,
    tags, metadata as the allocation map, the source file) to a table in a DuckDB file, under the same memory
    limit; no validation, no dedup, no pricing (provider and cost source constant, no unpriced usage)."""
    import duckdb

    files = sorted(str(p) for p in Path(export).rglob(f"*.{EXTENSIONS[fmt]}"))
    if fmt == "jsonl":
        source = ("read_json($files, format='newline_delimited', records=true, filename=true, columns={'id': 'VARCHAR', "
                  "'trace_id': 'VARCHAR', 'project_id': 'VARCHAR', 'type': 'VARCHAR', 'name': 'VARCHAR', "
                  "'start_time': 'VARCHAR', 'provided_model_name': 'VARCHAR', 'usage_details': 'MAP(VARCHAR, BIGINT)', "
                  "'total_cost': 'DECIMAL(38, 12)', 'environment': 'VARCHAR', 'user_id': 'VARCHAR', "
                  "'session_id': 'VARCHAR', 'prompt_name': 'VARCHAR', 'prompt_version': 'INTEGER', "
                  "'tags': 'VARCHAR[]', 'metadata': 'MAP(VARCHAR, VARCHAR)'})")
    else:
        source = "read_parquet($files, filename=true)"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder, duckdb.connect(f"{folder}/floor.duckdb") as conn:
        conn.execute(f"SET memory_limit = '{os.environ.get('FINOPS_DUCKDB_MEMORY_LIMIT', '500MB')}'")
        conn.execute("SET preserve_insertion_order = false")
        conn.execute(f"""
            CREATE TABLE staged AS SELECT start_time::DATE AS day, id AS observation_id, trace_id, project_id, type,
                   name, start_time::TIMESTAMP AS start_time, provided_model_name AS model, 'unknown' AS provider,
                   usage_details['input'] AS input_tokens, usage_details['output'] AS output_tokens,
                   usage_details['input_cached_tokens'] AS cached_tokens,
                   usage_details['cache_creation_input_tokens'] AS cache_write_tokens,
                   usage_details['output_reasoning_tokens'] AS reasoning_tokens, usage_details['total'] AS total_tokens,
                   NULL::MAP(VARCHAR, BIGINT) AS usage_other, total_cost::DECIMAL(38, 12) AS cost_usd,
                   'langfuse' AS cost_source, NULL::MAP(VARCHAR, BIGINT) AS unpriced_usage, environment, user_id,
                   session_id, prompt_name, prompt_version::INTEGER AS prompt_version, tags, metadata AS allocation,
                   filename AS source_file
            FROM {source}""", {"files": files})
        rows = conn.execute("SELECT count(*) FROM staged").fetchone()[0]
    print(json.dumps({"total": time.perf_counter() - started, "rows": rows}))


def child_loop(export: str) -> None:
    sys.path.insert(0, str(BENCH))
    from per_row_loop import run

    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        rows = run(Path(export), DAY, Path(out) / "loop.csv")
    print(json.dumps({"total": time.perf_counter() - started, "rows": rows}))


def print_file_table(results: list[dict]) -> None:
    print()
    print("| generations | format | staging s | allocation s | Finout file s | pipeline total s | peak MB "
          "| per-row loop s | loop peak MB | DuckDB floor s | loop / pipeline | pipeline / floor "
          "| floor, ISA-L inflate s | pipeline / that floor | read-and-write floor s | pipeline / read-and-write "
          "| staging / read-and-write | re-run, same files s |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        p = r["pipeline"]
        loop = f"{r['loop']:.1f}" if r["loop"] else "n/a"
        loop_mb = f"{r['loop_mb']:.0f}" if r["loop_mb"] else "n/a"
        speedup = f"{r['loop'] / p['total']:.1f}x" if r["loop"] else "n/a"
        isal = (f"{r['isal_floor']:.2f} | {p['total'] / r['isal_floor']:.2f}x" if r["isal_floor"] else "n/a | n/a")
        print(f"| {r['n']:,} | {r['format']} | {p['langfuse_generations']:.2f} | {p['allocated_costs']:.2f} "
              f"| {p['finout_upload']:.2f} | {p['total']:.2f} | {r['pipeline_mb']:.0f} | {loop} | {loop_mb} "
              f"| {r['floor']:.2f} | {speedup} | {p['total'] / r['floor']:.2f}x | {isal} | {r['write_floor']:.2f} "
              f"| {p['total'] / r['write_floor']:.2f}x | {p['langfuse_generations'] / r['write_floor']:.2f}x "
              f"| {p['rerun']:.2f} |")


def bench_api(n: int, profile: bool) -> dict:
    print(f"{n:>10,} api      (starting the API double) ...", end=" ", flush=True)
    server, env = serve_api_day(n)
    try:
        extra = ["--profile"] if profile else []
        pipeline, pipeline_mb = in_child(__file__, "_pipeline", "", *extra, env=env)
    finally:
        server.stdin.close()
        if server.wait(timeout=60):
            raise SystemExit("the API double reported contract errors (see above)")
    served = n - len(range(0, n, 50))  # every 50th row is a span, which is never fetched
    print(f"pipeline {pipeline['total']:.1f} s, {served / pipeline['api_fetch_seconds']:,.0f} generations/s", flush=True)
    return {"n": n, "format": "api", "pipeline": pipeline, "pipeline_mb": pipeline_mb, "served": served,
            "floor": None, "loop": None, "loop_mb": None}


def bench_s3(n: int, data: Path, profile: bool) -> dict:
    """The JSONL day read in place from a bucket: moto's S3 server on loopback, in its own process."""
    folder = export_dir(data, n, "jsonl")
    print(f"{n:>10,} jsonl-s3 (uploading the day to moto's S3) ...", end=" ", flush=True)
    server = subprocess.Popen([sys.executable, str(BENCH / "s3_day.py"), str(folder)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    endpoint = server.stdout.readline().strip()
    if not endpoint:
        raise SystemExit("moto's S3 server did not start")
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        extra = ["--profile"] if profile else []
        pipeline, pipeline_mb = in_child(__file__, "_pipeline", "s3://bench/export", *extra, env=env)
    finally:
        server.stdin.close()
        server.wait(timeout=60)
    print(f"pipeline {pipeline['total']:.1f} s", flush=True)
    return {"n": n, "format": "jsonl-s3", "pipeline": pipeline, "pipeline_mb": pipeline_mb}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1M", help="generations a day, comma-separated: 0.25M, 0.5M, 1M, 2M, 10M")
    parser.add_argument("--formats", default="jsonl,parquet,api",
                        help="jsonl, parquet (export files), jsonl-s3 (the JSONL day in moto's S3), api (the API double)")
    parser.add_argument("--data", type=Path, default=BENCH / "data", help="where generated exports are kept")
    parser.add_argument("--no-loop", action="store_true", help="skip the per-row loop (slow at large sizes)")
    parser.add_argument("--profile", action="store_true", help="print a pyinstrument profile of each pipeline run")
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    formats = [f.strip() for f in args.formats.split(",")]

    results = []
    for n in sizes:
        for fmt in formats:
            if fmt == "api":
                results.append(bench_api(n, args.profile))
                continue
            if fmt == "jsonl-s3":
                results.append(bench_s3(n, args.data, args.profile))
                continue
            export = str(export_dir(args.data, n, fmt))
            print(f"{n:>10,} {fmt:8s}", end=" ", flush=True)
            extra = ["--profile"] if args.profile else []
            pipeline, pipeline_mb = in_child(__file__, "_pipeline", export, *extra)
            floor, _ = in_child(__file__, "_floor", export, fmt)
            write_floor, _ = in_child(__file__, "_floor_write", export, fmt)
            isal_floor = in_child(__file__, "_floor", export, fmt, "isal")[0]["total"] if fmt == "jsonl" else None
            loop, loop_mb = (in_child(__file__, "_loop", export) if fmt == "jsonl" and not args.no_loop
                             else ({"total": None}, None))
            results.append({"n": n, "format": fmt, "pipeline": pipeline, "pipeline_mb": pipeline_mb,
                            "floor": floor["total"], "isal_floor": isal_floor, "loop": loop["total"], "loop_mb": loop_mb,
                            "write_floor": write_floor["total"]})
            print(f"pipeline {pipeline['total']:.1f} s", flush=True)

    if any(r["format"] in ("jsonl", "parquet") for r in results):
        print_file_table([r for r in results if r["format"] in ("jsonl", "parquet")])
    s3_runs = [r for r in results if r["format"] == "jsonl-s3"]
    if s3_runs:
        print("\n| generations | read from | staging s | pipeline total s | pipeline CPU s | peak MB |")
        print("|---:|---|---:|---:|---:|---:|")
        for r in [r for r in results if r["format"] == "jsonl"] + s3_runs:
            p = r["pipeline"]
            where = "moto S3 (loopback)" if r["format"] == "jsonl-s3" else "local disk"
            print(f"| {r['n']:,} | {where} | {p['langfuse_generations']:.2f} | {p['total']:.2f} "
                  f"| {p['cpu_seconds']:.1f} | {r['pipeline_mb']:.0f} |")
    api_runs = [r for r in results if r["format"] == "api"]
    if api_runs:
        print("\n| generations served | requests | API fetch s | generations/s | staging s | pipeline total s "
              "| pipeline CPU s | peak MB |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in api_runs:
            p = r["pipeline"]
            print(f"| {r['n']:,} | {p['api_requests']:,} | {p['api_fetch_seconds']:.2f} "
                  f"| {r['served'] / p['api_fetch_seconds']:,.0f} | {p['langfuse_generations']:.2f} "
                  f"| {p['total']:.2f} | {p['cpu_seconds']:.1f} | {r['pipeline_mb']:.0f} |")
    for fmt in formats:
        runs = [r for r in results if r["format"] == fmt]
        if len(runs) > 1:
            first = runs[0]
            print(f"\nscaling ({fmt}, relative to {first['n']:,}): " + ", ".join(
                f"{r['n'] / first['n']:g}x rows -> {r['pipeline']['total'] / first['pipeline']['total']:.2f}x time, "
                f"{r['pipeline_mb'] / first['pipeline_mb']:.2f}x peak memory" for r in runs[1:]))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_pipeline":
        child_pipeline(sys.argv[2], profile="--profile" in sys.argv)
    elif len(sys.argv) > 1 and sys.argv[1] == "_floor":
        child_floor(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "duckdb")
    elif len(sys.argv) > 1 and sys.argv[1] == "_floor_write":
        child_floor_write(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "_loop":
        child_loop(sys.argv[2])
    else:
        sys.exit(main())
