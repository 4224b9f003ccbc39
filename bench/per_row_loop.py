"""The baseline: what the usual export script does. One `json.loads` per line, Python dicts to dedup and
aggregate, a CSV at the end. It does the same job as the pipeline for one day of `.jsonl.gz` files:
keep the day's generations, dedup by id (later file wins), take Langfuse's cost or price from the
table, allocate by metadata or `key:value` tags, sum per allocation × provider × model, write the CSV.

Usage: python bench/per_row_loop.py EXPORT_DIR DAY OUT_CSV
"""

from __future__ import annotations

import csv
import gzip
import json
import sys
from datetime import date, datetime, timedelta
from pathlib import Path

from finops_pipeline import pricing

KEYS = ["feature", "customer_id", "team", "environment", "tier"]


def run(export_dir: Path, day: date, out: Path) -> int:
    lo = datetime(day.year, day.month, day.day)
    hi = lo + timedelta(days=1)
    latest: dict[str, dict] = {}
    for path in sorted(export_dir.rglob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            for line in lines:
                row = json.loads(line)
                started = datetime.fromisoformat(row["start_time"])
                # total_cost is 0, not null, where Langfuse had no price: cost_details says whether it had one
                if lo <= started < hi and (row.get("type") == "GENERATION" or row.get("cost_details")):
                    row.pop("input", None), row.pop("output", None)  # keep what cost needs, not the text
                    latest[row["id"]] = row
    totals: dict[tuple, float] = {}
    for row in latest.values():
        model = row.get("provided_model_name")
        details = row.get("cost_details") or {}
        cost = details.get("total", sum(details.values())) if details else None
        if cost is None:
            price = pricing.list_rates(model, day)
            if price is None:
                continue
            usage = row.get("usage_details") or {}
            cost = float(usage.get("input", 0) * price.rate("input_tokens")
                         + usage.get("input_cached_tokens", 0) * price.rate("cache_read_tokens")
                         + (usage.get("output", 0) + usage.get("output_reasoning_tokens", 0)) * price.rate("output_tokens"))
        metadata = row.get("metadata") or {}
        tags = dict(t.split(":", 1) for t in row.get("tags") or [] if ":" in t)
        allocation = tuple(metadata.get(k) or tags.get(k) or row.get(k) or "unallocated" for k in KEYS)
        key = (*allocation, pricing.provider_of(model), model)
        totals[key] = totals.get(key, 0.0) + cost
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["UsageDate", "Cost", *KEYS, "provider", "model"])
        for key, cost in sorted(totals.items(), key=lambda kv: -kv[1]):
            writer.writerow([day.isoformat(), f"{cost:.6f}", *key])
    return len(latest)


if __name__ == "__main__":
    n = run(Path(sys.argv[1]), date.fromisoformat(sys.argv[2]), Path(sys.argv[3]))
    print(f"{n} generations")
