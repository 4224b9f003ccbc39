"""A deterministic, realistic week of LLM spend, written in the real formats the pipeline reads.

- Langfuse blob export: hourly windows per day as Langfuse writes them (file named after the window's end,
  mostly `.jsonl.gz`, one `.parquet` and one `.csv.gz` a day, manifests written last). The window ending at
  midnight holds the day's last hour, so a day's rows sit in a file named after the next day; a row at
  exactly midnight sits in two files (both window bounds are inclusive) and is deduped.
- Generations over several features, teams, customers and tiers, OpenAI and Anthropic models; some rows
  without metadata (unallocated), some with `key:value` tags only, some of a model no price table knows,
  some Langfuse could not price (priced from the price table), a few spans without cost.
- Provider bills in the providers' API formats, equal to the traced cost within ±1%, except on the
  `overbilled_day`: OpenAI bills ~15% more, for a model no trace mentions (a batch job without the SDK).

Everything is seeded by the day's place in the sample (the first day, the second, ...), not by its date:
the sample's figures are the same whichever week the demo writes, so the README can quote them.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import shutil
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import duckdb

from finops_pipeline import pricing

PROJECT_ID = "cm-demo-project"
UNPRICED_MODEL = "acme-support-ft-v2"  # a self-hosted fine-tune: no price anywhere
OVERBILL = Decimal("0.15")
UNTRACED_MODEL = "gpt-4.1-nano-2025-04-14"  # billed on the overbilled day, never traced

# feature -> (team, prompt, [(model, weight)], typical input tokens, typical output tokens)
FEATURES = {
    "ticket-summary": ("support", "summarize-ticket", [("gpt-4o-mini-2024-07-18", 6), ("claude-3-5-haiku-20241022", 3), (UNPRICED_MODEL, 1)], 1800, 250),
    "chat-assistant": ("product", "assistant-system", [("gpt-4o-2024-08-06", 5), ("claude-sonnet-4-20250514", 4), ("gpt-4.1-mini-2025-04-14", 3)], 3500, 600),
    "code-review": ("engineering", "review-diff", [("claude-sonnet-4-20250514", 6), ("o4-mini-2025-04-16", 3)], 9000, 1200),
    "report-writer": ("analytics", "weekly-report", [("gpt-4.1-2025-04-14", 4), ("claude-opus-4-1-20250805", 1)], 6000, 2000),
    "search-rerank": ("search", "rerank", [("gpt-4.1-mini-2025-04-14", 5), ("claude-haiku-4-5-20251001", 3)], 1200, 60),
}
FEATURE_WEIGHTS = {"ticket-summary": 30, "chat-assistant": 35, "code-review": 12, "report-writer": 5, "search-rerank": 18}
CUSTOMERS = {f"cust-{name}": tier for name, tier in [
    ("acme", "enterprise"), ("globex", "enterprise"), ("initech", "pro"), ("umbrella", "enterprise"),
    ("hooli", "pro"), ("stark", "enterprise"), ("wayne", "pro"), ("tyrell", "pro"), ("soylent", "free"),
    ("wonka", "free"), ("cyberdyne", "pro"), ("aperture", "free")]}
REGRESSED_FEATURE = "report-writer"  # the demo's last day ships a prompt version that costs ten times more
WEEKEND_VOLUME = 0.55  # the share of a weekday's calls made on a Saturday or Sunday
# Models that are new to Langfuse: it sends no cost, the price table knows them.
LANGFUSE_UNPRICED = {"claude-haiku-4-5-20251001"}


@dataclass(frozen=True)
class Sample:
    days: list[date]
    overbilled_day: date
    generations: int
    team_cost: dict[tuple[date, str], float]  # Langfuse's cost per day and team, of the rows that name one
    feature_calls: dict[tuple[date, str], int]  # generations per day and feature


def last_complete_days(n: int, today: date | None = None) -> list[date]:
    today = today or datetime.now(timezone.utc).date()
    return [today - timedelta(days=i) for i in range(n, 0, -1)]


def _ts(moment: datetime) -> str:
    """ClickHouse's default DateTime64(6) text, as the export writes it: UTC, no T, no zone."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def _usd(tokens: dict[str, int], price: pricing.Rates) -> dict[str, Decimal]:
    cost = {
        "input": tokens.get("input", 0) * price.rate("input_tokens"),
        "input_cached_tokens": tokens.get("input_cached_tokens", 0) * price.rate("cache_read_tokens"),
        "output": tokens.get("output", 0) * price.rate("output_tokens"),
    }
    if tokens.get("output_reasoning_tokens"):
        cost["output"] += tokens["output_reasoning_tokens"] * price.rate("output_reasoning_tokens")
    cost["total"] = sum(cost.values())
    return cost


def _generation(rng: random.Random, day: date, moment: datetime, obs_id: str, regression: bool = False) -> dict:
    feature = rng.choices(list(FEATURE_WEIGHTS), weights=list(FEATURE_WEIGHTS.values()))[0]
    team, prompt, models, typical_in, typical_out = FEATURES[feature]
    model = rng.choices([m for m, _ in models], weights=[w for _, w in models])[0]
    customer = rng.choice(list(CUSTOMERS))
    environment = "production" if rng.random() < 0.93 else "staging"
    input_tokens = max(1, int(rng.lognormvariate(0, 0.5) * typical_in))
    cached = int(input_tokens * rng.choice([0, 0, 0.3, 0.6])) if not model.startswith(UNPRICED_MODEL) else 0
    output = max(1, int(rng.lognormvariate(0, 0.6) * typical_out))
    version = rng.choice([3, 4])
    if feature == REGRESSED_FEATURE:  # its prompt is at v6; the regression ships v7, which writes ten times more
        version = 7 if regression else 6
        output *= 10 if regression else 1
    reasoning = int(output * 0.8) if model.startswith("o4") else 0
    usage = {"input": input_tokens - cached, "output": output - reasoning, "input_cached_tokens": cached}
    if reasoning:
        usage["output_reasoning_tokens"] = reasoning
    usage["total"] = sum(usage.values())

    price = pricing.list_rates(model, day)
    cost_details: dict[str, float] = {}
    if price is not None and model not in LANGFUSE_UNPRICED:
        cost_details = {k: float(v) for k, v in _usd(usage, price).items()}

    metadata: dict[str, str] = {}
    tags: list[str] = []
    style = rng.random()
    if style < 0.80:  # the SDK sets metadata
        metadata = {"feature": feature, "team": team, "customer_id": customer, "tier": CUSTOMERS[customer]}
    elif style < 0.90:  # an older service tags its traces instead
        tags = [f"feature:{feature}", f"team:{team}", f"customer_id:{customer}", f"tier:{CUSTOMERS[customer]}"]
    elif style < 0.95:  # partly instrumented: feature only
        metadata = {"feature": feature}
    # else: no allocation keys at all -> unallocated
    return {
        "id": obs_id,
        "trace_id": f"t-{obs_id}",
        "start_time": _ts(moment),
        "end_time": _ts(moment + timedelta(milliseconds=rng.randint(300, 9000))),
        "project_id": PROJECT_ID,
        "parent_observation_id": None,
        "type": "GENERATION",
        "name": f"{feature}-llm-call",
        "level": "DEFAULT",
        "environment": environment,
        "user_id": f"user-{rng.randint(1, 400)}",
        "session_id": f"sess-{rng.randint(1, 3000)}",
        "provided_model_name": model,
        "model_id": None,
        "usage_details": usage,
        "cost_details": cost_details,
        # the events table's total_cost is cost_details['total']: 0, not null, when Langfuse had no price
        "total_cost": cost_details.get("total", 0.0),
        "prompt_name": prompt,
        "prompt_version": version,
        "tags": tags,
        "trace_name": feature,
        "metadata": metadata,
    }


def _span(rng: random.Random, moment: datetime, obs_id: str) -> dict:
    """A retrieval span: no model, no usage, no cost. The pipeline must skip it."""
    return {"id": obs_id, "trace_id": f"t-{obs_id}", "start_time": _ts(moment), "project_id": PROJECT_ID,
            "type": "SPAN", "name": "vector-search", "environment": "production", "usage_details": {},
            "cost_details": {}, "total_cost": None, "tags": [], "metadata": {"feature": "search-rerank"}}


def _midnight_row(day: date, seed: int) -> dict:
    """The generation at exactly 00:00:00.000000 of `day` (the `seed`-th of the sample): in the previous day's
    last file and this day's first."""
    rng = random.Random(f"midnight-{seed}")
    return _generation(rng, day, datetime(day.year, day.month, day.day), f"obs-{day.isoformat()}-midnight")


def day_rows(day: date, generations: int, seed: int, regression: bool = False) -> list[dict]:
    """The observations of `day`, the `seed`-th day of the sample, ordered by start time: generations, a
    few spans, and the boundary rows. `regression`: the day report-writer's prompt v7 ships."""
    rng = random.Random(f"finops-demo-{seed}")
    start = datetime(day.year, day.month, day.day)
    rows = [_midnight_row(day, seed)]
    for i in range(generations - 2):
        moment = start + timedelta(microseconds=rng.randrange(1, 86_400_000_000))
        rows.append(_generation(rng, day, moment, f"obs-{day.isoformat()}-{i:07d}", regression))
    rows.append(_generation(rng, day, start + timedelta(days=1, microseconds=-1000), f"obs-{day.isoformat()}-last",
                            regression))
    for i in range(generations // 100):
        rows.append(_span(rng, start + timedelta(microseconds=rng.randrange(0, 86_400_000_000)), f"span-{day}-{i}"))
    rows.sort(key=lambda r: r["start_time"])
    return rows


def _write_jsonl_gz(path: Path, rows: list[dict], extra_lines: tuple[str, ...] = ()) -> None:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")
        for line in extra_lines:
            f.write(line + "\n")


def _cell(value) -> str:
    """A CSV cell as Langfuse v3.157 and later write it: text as it is, objects and arrays as JSON."""
    return "" if value is None else json.dumps(value) if isinstance(value, (dict, list)) else value


def _write_csv_gz(path: Path, rows: list[dict], cell=_cell) -> None:
    """As Langfuse writes CSV: a header (none for an empty window: the file is empty), every cell quoted,
    each value as `cell` renders it. Every row of a Langfuse export has every column; the sample's spans
    carry fewer keys, so the header is every key any row has (from the first row alone, a window that
    opens with a span would lose the generations' model and usage)."""
    if not rows:
        with gzip.open(path, "wt", encoding="utf-8"):
            return
    header = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([cell(row.get(k)) for k in header])
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(buffer.getvalue())


def _write_parquet(path: Path, rows: list[dict]) -> None:
    """Maps and arrays as Parquet MAP and LIST and times as instants (UTC-adjusted timestamps), as ClickHouse's
    Parquet output has them."""
    tmp = path.with_suffix(".tmp.jsonl")
    tmp.write_text("".join(json.dumps({**r, "cost_details": {k: str(v) for k, v in r.get("cost_details", {}).items()}})
                           + "\n" for r in rows))
    columns = {
        "id": "VARCHAR", "trace_id": "VARCHAR", "start_time": "TIMESTAMPTZ", "project_id": "VARCHAR",
        "type": "VARCHAR", "name": "VARCHAR", "environment": "VARCHAR", "user_id": "VARCHAR",
        "session_id": "VARCHAR", "provided_model_name": "VARCHAR", "usage_details": "MAP(VARCHAR, UBIGINT)",
        "cost_details": "MAP(VARCHAR, DECIMAL(18, 12))", "total_cost": "DECIMAL(18, 12)",
        "prompt_name": "VARCHAR", "prompt_version": "INTEGER", "tags": "VARCHAR[]", "metadata": "MAP(VARCHAR, VARCHAR)",
    }
    with duckdb.connect() as conn:
        conn.execute("SET TimeZone = 'UTC'")  # a time written without a zone is UTC, as Langfuse's are
        conn.execute(f"COPY (SELECT * FROM read_json(?, format='newline_delimited', columns={columns!r})) TO "
                     f"'{path}' (FORMAT parquet)", [str(tmp)])
    tmp.unlink()


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def write_export_file(export_dir: Path, lo: datetime, hi: datetime, rows: list[dict], ext: str = "jsonl.gz",
                      extra_lines: tuple[str, ...] = (), manifest: bool = True, project_id: str = PROJECT_ID,
                      table: str = "observations_v2") -> Path:
    """One export run as Langfuse writes it: the file for the window [lo, hi] (named after hi), then its
    manifest. `extra_lines` are appended raw to a JSONL file (to write what a broken writer would)."""
    path = write_table_file(export_dir / project_id / table, hi, rows, ext, extra_lines)
    if manifest:  # Langfuse counts the rows it wrote (a line damaged since is still one); Parquet it cannot count
        count = len(rows) + sum(1 for line in extra_lines if line.strip())
        write_manifest(export_dir, project_id, lo, hi, [(path, None if ext == "parquet" else count)])
    return path


def write_table_file(table_dir: Path, hi: datetime, rows: list[dict], ext: str, extra_lines: tuple[str, ...] = (),
                     writers: dict | None = None) -> Path:
    """The file of one table for the window ending at `hi`, in the format `ext`; `writers` (ext -> function)
    replace the enriched layout's."""
    table_dir.mkdir(parents=True, exist_ok=True)
    path = table_dir / f"{hi.strftime('%Y-%m-%dT%H-%M-%S')}.{ext}"
    if ext in ("jsonl.gz", "jsonl"):
        _write_jsonl_gz(path, rows, extra_lines)
    elif extra_lines:
        raise ValueError(f"raw extra lines only go into JSONL files, not {ext}")
    else:
        ({"parquet": _write_parquet, "csv.gz": _write_csv_gz} | (writers or {}))[ext](path, rows)
    return path


def write_manifest(export_dir: Path, project_id: str, lo: datetime, hi: datetime, files: list[tuple[Path, int | None]],
                   source: str = "EVENTS") -> None:
    """The manifest Langfuse writes last for the export run of window [lo, hi] that wrote `files` (each with
    its row count; None for Parquet). A run of source TRACES_OBSERVATIONS_EVENTS writes both layouts and one
    manifest: a second call for the same window adds its files to the first's."""
    manifest_dir = export_dir / project_id / "manifests"
    manifest_dir.mkdir(parents=True, exist_ok=True)
    path = manifest_dir / f"{hi.strftime('%Y-%m-%dT%H-%M-%S')}.json"
    earlier = json.loads(path.read_text()) if path.exists() else None
    if earlier and earlier["window"]["minTimestamp"] == _iso(lo) and earlier["exportSource"] != source:
        source = "TRACES_OBSERVATIONS_EVENTS"
    entries = earlier["files"] if earlier and earlier["window"]["minTimestamp"] == _iso(lo) else []
    entries = [e for e in entries if e["table"] not in {file.parent.name for file, _ in files}]
    for file, row_count in files:
        ext = file.name.split(".", 1)[1]
        entries.append({"key": f"{project_id}/{file.parent.name}/{file.name}", "table": file.parent.name,
                        "fileType": ext, "format": ext.replace(".gz", "-gzip"), "compressed": ext.endswith(".gz"),
                        "contentType": "application/gzip" if ext.endswith(".gz") else "application/octet-stream",
                        "sizeBytes": file.stat().st_size, "rowCount": row_count})
    body = {
        "version": 1, "projectId": project_id, "exportSource": source,
        "window": {"minTimestamp": _iso(lo), "maxTimestamp": _iso(hi)}, "maxTimestamp": _iso(hi),
        "createdAt": _iso(hi + timedelta(minutes=20)), "tables": sorted({e["table"] for e in entries}),
        "files": entries,
    }
    path.write_text(json.dumps(body, indent=2) + "\n")


def write_export_day(export_dir: Path, day: date, rows: list[dict], seed: int, corrupt_line: bool = False,
                     project_id: str = PROJECT_ID) -> None:
    """24 hourly export runs for `day` (the `seed`-th of the sample), each window [h, h+1h] inclusive. The
    last also holds the next day's midnight row: a row on a window bound is exported twice."""
    start = datetime(day.year, day.month, day.day)
    next_midnight = _midnight_row(day + timedelta(days=1), seed + 1)
    for hour in range(24):
        lo, hi = start + timedelta(hours=hour), start + timedelta(hours=hour + 1)
        window = [r for r in rows if _ts(lo) <= r["start_time"] <= _ts(hi)]
        if hour == 23:
            window.append(next_midnight)
        broken = ('{"id":"obs-truncated","start_time":"' + _ts(lo) + '","usage_details":{"inp',)
        write_export_file(export_dir, lo, hi, window, {6: "parquet", 12: "csv.gz"}.get(hour, "jsonl.gz"),
                          extra_lines=broken if corrupt_line and hour == 9 else (), project_id=project_id)


def _billed_lines(day: date, rows: list[dict], overbill: bool, rng: random.Random) -> dict[str, dict[tuple[str, str], Decimal]]:
    """Per provider, (model, token kind) -> USD: what each call really cost, whether Langfuse priced it or not."""
    lines: dict[str, dict[tuple[str, str], Decimal]] = {"openai": {}, "anthropic": {}}
    for row in rows:
        model = row.get("provided_model_name")
        provider = pricing.provider_of(model)
        price = pricing.list_rates(model, day)
        if provider not in lines or price is None:
            continue
        for kind, usd in _usd(row["usage_details"], price).items():
            if kind != "total":
                lines[provider][(model, kind)] = lines[provider].get((model, kind), Decimal(0)) + usd
    for provider, items in lines.items():
        for key in items:  # the provider's own metering differs a little from the traces
            items[key] *= Decimal(1) + Decimal(rng.randint(-80, 80)) / Decimal(10_000)
    if overbill:  # untraced calls: a batch job on a model no traced feature uses, bypassing the Langfuse SDK
        openai = lines["openai"]
        untraced = sum(openai.values()) * OVERBILL
        openai[(UNTRACED_MODEL, "input")] = untraced * Decimal("0.7")
        openai[(UNTRACED_MODEL, "output")] = untraced * Decimal("0.3")
    return lines


_OPENAI_KIND = {"input": "input", "input_cached_tokens": "cached input", "output": "output"}
_ANTHROPIC_KIND = {"input": ("uncached_input_tokens", "Input Tokens"),
                   "input_cached_tokens": ("cache_read_input_tokens", "Cache Read Input Tokens"),
                   "output": ("output_tokens", "Output Tokens")}


def write_billing_day(billing_dir: Path, day: date, rows: list[dict], overbill: bool, seed: int) -> None:
    rng = random.Random(f"finops-bill-{seed}")
    lines = _billed_lines(day, rows, overbill, rng)
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    end = start + timedelta(days=1)

    openai = [{"object": "organization.costs.result", "amount": {"value": float(usd.quantize(Decimal("0.000001"))), "currency": "usd"},
               "line_item": f"{model}, {_OPENAI_KIND[kind]}", "project_id": "proj_demo", "api_key_id": None, "quantity": None}
              for (model, kind), usd in sorted(lines["openai"].items())]
    anthropic = [{"amount": str((usd * 100).quantize(Decimal("0.00001"), ROUND_HALF_UP)), "currency": "USD",
                  "cost_type": "tokens", "description": f"{model} Usage - {_ANTHROPIC_KIND[kind][1]}", "model": model,
                  "service_tier": "standard", "token_type": _ANTHROPIC_KIND[kind][0], "context_window": "0-200k",
                  "workspace_id": None}
                 for (model, kind), usd in sorted(lines["anthropic"].items())]

    for provider, results in (("openai", openai), ("anthropic", anthropic)):
        folder = billing_dir / provider / day.isoformat()
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        pages = [results[i:i + 5] for i in range(0, len(results), 5)] or [[]]
        for n, page_results in enumerate(pages, start=1):
            more = n < len(pages)
            if provider == "openai":
                page = {"object": "page", "data": [{"object": "bucket", "start_time": int(start.timestamp()),
                        "end_time": int(end.timestamp()), "results": page_results}],
                        "has_more": more, "next_page": f"page_{n + 1}" if more else None}
            else:
                page = {"data": [{"starting_at": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                  "ending_at": end.strftime("%Y-%m-%dT%H:%M:%SZ"), "results": page_results}],
                        "has_more": more, "next_page": f"page_{n + 1}" if more else None}
            (folder / f"page-{n}.json").write_text(json.dumps(page, indent=1))


def write_sample(home: Path, days: list[date], generations_per_day: int = 8000,
                 export_dir: Path | None = None, billing_dir: Path | None = None) -> Sample:
    """Write the export and the bills for `days`; the fourth day of the last week is overbilled. Weekends make
    WEEKEND_VOLUME of a weekday's calls. With four weeks or more before it, the last day ships
    report-writer's costly prompt v7 (the demo's anomaly)."""
    export_dir = export_dir or home / "langfuse-export"
    billing_dir = billing_dir or home / "billing"
    overbilled = days[max(0, len(days) - 7) + min(3, len(days) - 1)]
    total, team_cost, feature_calls = 0, {}, {}
    for seed, day in enumerate(days):
        volume = WEEKEND_VOLUME if day.weekday() >= 5 else 1.0
        rows = day_rows(day, max(2, round(generations_per_day * volume)), seed,
                        regression=len(days) > 28 and day == days[-1])
        total += sum(1 for r in rows if r["type"] == "GENERATION")
        for r in rows:
            team = (r.get("metadata") or {}).get("team") or next(
                (t.split(":", 1)[1] for t in r.get("tags") or [] if t.startswith("team:")), None)
            if team and r["type"] == "GENERATION":
                team_cost[(day, team)] = team_cost.get((day, team), 0.0) + (r.get("total_cost") or 0.0)
            if r["type"] == "GENERATION":
                feature = r.get("trace_name")
                feature_calls[(day, feature)] = feature_calls.get((day, feature), 0) + 1
        write_export_day(export_dir, day, rows, seed, corrupt_line=(day == days[0]))
        write_billing_day(billing_dir, day, rows, overbill=(day == overbilled), seed=seed)
    return Sample(days, overbilled, total, team_cost, feature_calls)
