"""Serve one day of N generations from the Langfuse API double (finops_pipeline_tests/langfuse_double.py), on
loopback, in its own process: `python bench/api_day.py N` prints the server's URL, then serves until its
stdin closes.

The rows mix models (one Langfuse could not price), allocation metadata, tags and spans like
bench/export_day.py, without the prompt text (the API is never asked for it). The double checks one
response in 500 against the SDK's models: each check costs the server about half a second of the CPU the
client being measured shares (the tests check every response).
"""

from __future__ import annotations

import random
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from finops_pipeline.settings import DEFAULT_ALLOCATION_KEYS  # noqa: E402
from finops_pipeline.sources.api_v2 import FIELD_GROUPS  # noqa: E402
from finops_pipeline_tests.langfuse_double import LangfuseDouble  # noqa: E402

DAY = date(2026, 11, 20)
PUBLIC_KEY, SECRET_KEY = "pk-lf-bench", "sk-lf-bench"
FEATURES = [("ticket-summary", "support"), ("chat-assistant", "product"), ("code-review", "engineering"),
            ("report-writer", "analytics"), ("search-rerank", "search")]
MODELS = [("gpt-4o-mini-2024-07-18", 0.15e-6, 0.6e-6), ("gpt-4o-2024-08-06", 2.5e-6, 10e-6),
          ("claude-sonnet-4-20250514", 3e-6, 15e-6), ("claude-haiku-4-5-20251001", None, None)]


def day_rows(n: int, day: date = DAY) -> list[dict]:
    rng = random.Random(n)
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    step = 86400 / n
    rows = []
    for i in range(n):
        model, input_rate, output_rate = MODELS[i % len(MODELS)]
        feature, team = FEATURES[rng.randrange(len(FEATURES))]
        tokens_in, tokens_out = rng.randrange(50, 4000), rng.randrange(10, 800)
        is_span = i % 50 == 0
        cost = {} if is_span or input_rate is None else {
            "input": round(tokens_in * input_rate, 9), "output": round(tokens_out * output_rate, 9),
            "total": round(tokens_in * input_rate + tokens_out * output_rate, 9)}
        rows.append({
            "id": f"obs-{i:08d}", "traceId": f"trace-{i // 4:08d}",
            "startTime": (start + timedelta(seconds=i * step)).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "projectId": "cm-bench-project", "type": "SPAN" if is_span else "GENERATION", "name": "chat",
            "level": "DEFAULT", "environment": "production", "userId": f"user-{i % 5000}",
            "sessionId": f"session-{i // 10}", "model": None if is_span else model,
            "usageDetails": {} if is_span else {"input": tokens_in, "output": tokens_out, "total": tokens_in + tokens_out},
            "costDetails": cost,
            "metadata": {"feature": feature, "team": team, "customer_id": f"cust-{rng.randrange(200):03d}",
                         "tier": ["free", "pro", "enterprise"][i % 3], "request_id": f"req-{i:x}"},
            "promptName": feature, "promptVersion": 1 + i % 3, "tags": [f"feature:{feature}"],
            "traceName": feature,
        })
    return rows


if __name__ == "__main__":
    with LangfuseDouble(day_rows(int(sys.argv[1])), PUBLIC_KEY, SECRET_KEY, validate_every=500) as double:
        double.prepare(FIELD_GROUPS, ",".join(DEFAULT_ALLOCATION_KEYS))  # the pipeline's requests
        print(double.url, flush=True)
        sys.stdin.read()  # serve until the bench closes our stdin
        if double.contract_errors:
            sys.exit(f"the double served responses the SDK rejects: {double.contract_errors[:3]}")
