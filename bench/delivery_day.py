"""`make bench-delivery`: the two delivery files of a day with many allocation rows, at the default memory limit.

A day of N generations (the bench's export, bench/export_day.py, Parquet) is staged and allocated by the
default keys plus `user_id` (5,000 users), which gives nearly one allocation row per generation: the hardest
case for the delivery steps, which work per allocation row. Then `finout_upload` and `focus_export` each run
in a fresh process on that warehouse, and the time and peak RSS of each are printed. The FOCUS file has a
row per allocation row and usage unit, so it is the larger one.

    python bench/delivery_day.py --sizes 0.2M,0.4M
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BENCH, DAY, export_dir, in_child, parse_size  # noqa: E402

KEYS = "feature,customer_id,team,environment,tier,user_id"


def child(home: str, export: str, assets: str) -> None:
    """In a fresh process: materialise `assets` (comma-separated) for DAY on the warehouse in `home`."""
    import dagster as dg

    from finops_pipeline.definitions import ASSETS, build_resources
    from finops_pipeline.settings import FinopsSettings

    settings = FinopsSettings.from_env({**os.environ, "FINOPS_HOME": home, "FINOPS_LANGFUSE_EXPORT_DIR": export,
                                        "FINOPS_ALLOCATION_KEYS": KEYS})
    selection = [a for a in ASSETS if a.key.to_user_string() in assets.split(",")]
    started = time.perf_counter()
    result = dg.materialize(selection, partition_key=DAY.isoformat(), instance=dg.DagsterInstance.ephemeral(),
                            run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
                            resources=build_resources(settings), raise_on_error=False)
    rows = {e.asset_key.to_user_string(): e.materialization.metadata["dagster/row_count"].value
            for e in result.get_asset_materialization_events()}
    print(json.dumps({"ok": result.success, "seconds": time.perf_counter() - started, "rows": rows}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="0.2M", help="generations a day, comma-separated")
    parser.add_argument("--data", type=Path, default=BENCH / "data", help="where generated exports are kept")
    args = parser.parse_args()
    print("| generations | allocation rows | Finout rows | Finout s | Finout peak MB | FOCUS rows | FOCUS s | FOCUS peak MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in (parse_size(s) for s in args.sizes.split(",")):
        export = str(export_dir(args.data, n, "parquet"))
        with tempfile.TemporaryDirectory() as home:
            staged, _ = in_child(__file__, "--child", home, export, "langfuse_generations,allocated_costs")
            finout, finout_mb = in_child(__file__, "--child", home, export, "finout_upload")
            focus, focus_mb = in_child(__file__, "--child", home, export, "focus_export")
        if not (staged["ok"] and finout["ok"] and focus["ok"]):
            raise SystemExit(f"a step failed: staging {staged['ok']}, Finout {finout['ok']}, FOCUS {focus['ok']}")
        print(f"| {n:,} | {staged['rows']['allocated_costs']:,} | {finout['rows']['finout_upload']:,} "
              f"| {finout['seconds']:.2f} | {finout_mb:.0f} | {focus['rows']['focus_export']:,} "
              f"| {focus['seconds']:.2f} | {focus_mb:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(*sys.argv[2:5])
    else:
        sys.exit(main())
