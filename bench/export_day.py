"""Write one day of N generations as a Langfuse blob export, the way Langfuse writes it, fast.

24 hourly export runs (window [h, h+1h], file named after its end, manifest written last), in
`.jsonl.gz` and in Parquet, with the columns of an `observations_v2` row: ids, times, model, usage and
cost maps, metadata, tags, and the prompt and completion text (`input`, `output`) that make real export
lines heavy. Rows are built by DuckDB from `range(N)` with hash-based pseudo-randomness, so a size is
generated in seconds and the same N always gives the same files.

Mix: 2% spans (no model, no cost); models from OpenAI and Anthropic, one Langfuse had no price for
(priced from the price table), one self-hosted model nobody can price; 80% of calls carry allocation
metadata, 10% `key:value` tags only, the rest partial or nothing.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb

from finops_pipeline import pricing
from finops_pipeline.demo.sample_data import write_manifest

PROJECT_ID = "cm-bench-project"
FEATURES = [("ticket-summary", "support"), ("chat-assistant", "product"), ("code-review", "engineering"),
            ("report-writer", "analytics"), ("search-rerank", "search")]
CUSTOMERS = [(f"cust-{i:03d}", ["free", "pro", "enterprise"][i % 3]) for i in range(200)]
# (model, weight, Langfuse priced it?)
MODELS = [("gpt-4o-mini-2024-07-18", 30, True), ("gpt-4o-2024-08-06", 15, True), ("gpt-4.1-mini-2025-04-14", 15, True),
          ("o4-mini-2025-04-16", 5, True), ("claude-sonnet-4-20250514", 15, True),
          ("claude-3-5-haiku-20241022", 10, True), ("claude-haiku-4-5-20251001", 8, False),
          ("acme-support-ft-v2", 2, False)]
WORDS = ("the customer reports that invoice order account refund shipping delay error timeout please summarize "
         "review this diff function returns null pointer when config missing translate into french rerank the "
         "following documents by relevance to query answer concisely using only the context provided above "
         "json schema tool call weather report quarterly revenue growth churn cohort retention analysis").split()


def _text_pool(conn: duckdb.DuckDBPyConnection, size: int = 4096) -> None:
    """Paragraphs of 40 to 1200 characters: prompt-like text that compresses like real prompts."""
    rng = random.Random(7)
    paragraphs = []
    for k in range(size):
        words, length = [], rng.choice([40, 80, 150, 300, 600, 1200])
        while sum(len(w) + 1 for w in words) < length:
            words.append(rng.choice(WORDS) if rng.random() < 0.9 else f"{rng.randrange(10**6)}")
        paragraphs.append((k, " ".join(words)))
    conn.execute("CREATE OR REPLACE TABLE pool (k INTEGER, text VARCHAR)")
    conn.executemany("INSERT INTO pool VALUES (?, ?)", paragraphs)


def _lookup_tables(conn: duckdb.DuckDBPyConnection, day: date) -> None:
    rows = []
    for model, weight, langfuse_priced in MODELS:
        price = pricing.list_rates(model, day)
        rates = [str(price.rate(u)) if price and langfuse_priced else None
                 for u in ("input_tokens", "cache_read_tokens", "output_tokens")]
        rows += [(model, *rates)] * weight
    conn.execute("CREATE OR REPLACE TABLE models (k INTEGER, model VARCHAR, input_rate DECIMAL(38,18),"
                 " cached_rate DECIMAL(38,18), output_rate DECIMAL(38,18))")
    conn.executemany("INSERT INTO models VALUES (?, ?, ?, ?, ?)", [(k, *r) for k, r in enumerate(rows)])
    conn.execute("CREATE OR REPLACE TABLE features (k INTEGER, feature VARCHAR, team VARCHAR)")
    conn.executemany("INSERT INTO features VALUES (?, ?, ?)", [(k, *f) for k, f in enumerate(FEATURES)])
    conn.execute("CREATE OR REPLACE TABLE customers (k INTEGER, customer VARCHAR, tier VARCHAR)")
    conn.executemany("INSERT INTO customers VALUES (?, ?, ?)", [(k, *c) for k, c in enumerate(CUSTOMERS)])


def _rows_sql(day: date, n: int) -> str:
    """Rows i in [$lo, $hi]: row i starts at day + i * 86400 s / n (plus a hash jitter below one step)."""
    step_us = 86_400_000_000 / n
    midnight = f"TIMESTAMP '{day.isoformat()}'"
    return f"""
    WITH base AS (
        SELECT i, hash(i, 'bench') AS h, hash(i, 'more') AS g,
               {midnight} + to_microseconds((i * {step_us} + (hash(i, 'ts') % {max(int(step_us), 1)}))::BIGINT) AS ts
        FROM range($lo, $hi) t(i)
    ),
    picked AS (
        SELECT b.*, m.model, m.input_rate, m.cached_rate, m.output_rate, f.feature, f.team, c.customer, c.tier,
               (h % 100) < 2 AS is_span,
               greatest(1, (150 + (h >> 8) % 6000))::BIGINT AS prompt_tokens,
               greatest(1, (20 + (h >> 20) % 1200))::BIGINT AS completion_tokens,
               CASE WHEN (g % 3) = 0 THEN 0.5 ELSE 0 END AS cached_share,
               (g >> 12) % 100 AS style
        FROM base b
        JOIN models m ON m.k = (b.h >> 32) % 100
        JOIN features f ON f.k = (b.g >> 40) % {len(FEATURES)}
        JOIN customers c ON c.k = (b.g >> 24) % {len(CUSTOMERS)}
    ),
    usage AS (
        SELECT *, (prompt_tokens * cached_share)::BIGINT AS cached,
               CASE WHEN model LIKE 'o4%' THEN (completion_tokens * 0.7)::BIGINT ELSE 0 END AS reasoning
        FROM picked
    ),
    priced AS (
        SELECT *, prompt_tokens - cached AS uncached, completion_tokens - reasoning AS visible,
               ((prompt_tokens - cached) * input_rate)::DECIMAL(18, 12) AS c_in,
               (cached * cached_rate)::DECIMAL(18, 12) AS c_cached,
               (completion_tokens * output_rate)::DECIMAL(18, 12) AS c_out
        FROM usage
    )
    SELECT
        'obs-' || md5(i::VARCHAR)[:24] AS id,
        'trace-' || md5((i // 3)::VARCHAR)[:24] AS trace_id,
        strftime(ts, '%Y-%m-%d %H:%M:%S.%f') AS start_time,
        strftime(ts + to_milliseconds((400 + g % 9000)::BIGINT), '%Y-%m-%d %H:%M:%S.%f') AS end_time,
        strftime(ts + to_milliseconds((100 + g % 900)::BIGINT), '%Y-%m-%d %H:%M:%S.%f') AS completion_start_time,
        '{PROJECT_ID}' AS project_id,
        CASE WHEN (h % 7) = 0 THEN NULL ELSE 'parent-' || md5((i // 3)::VARCHAR)[:16] END AS parent_observation_id,
        CASE WHEN is_span THEN 'SPAN' ELSE 'GENERATION' END AS type,
        CASE WHEN is_span THEN 'vector-search' ELSE feature || '-llm-call' END AS name,
        'DEFAULT' AS level, NULL::VARCHAR AS status_message, NULL::VARCHAR AS version,
        CASE WHEN (g % 14) = 0 THEN 'staging' ELSE 'production' END AS environment,
        'user-' || (h % 5000) AS user_id, 'sess-' || (g % 40000) AS session_id,
        CASE WHEN is_span THEN NULL ELSE model END AS provided_model_name,
        NULL::VARCHAR AS model_id,
        CASE WHEN is_span THEN NULL ELSE '{{"temperature":0.2,"max_tokens":' || (256 + g % 4096) || '}}' END AS model_parameters,
        CASE WHEN is_span THEN MAP {{}}::MAP(VARCHAR, BIGINT)
             WHEN reasoning > 0 THEN MAP {{'input': uncached, 'input_cached_tokens': cached, 'output': visible,
                                          'output_reasoning_tokens': reasoning, 'total': prompt_tokens + completion_tokens}}
             ELSE MAP {{'input': uncached, 'input_cached_tokens': cached, 'output': visible,
                       'total': prompt_tokens + completion_tokens}} END AS usage_details,
        CASE WHEN is_span OR input_rate IS NULL THEN MAP {{}}::MAP(VARCHAR, DECIMAL(18, 12))
             ELSE MAP {{'input': c_in, 'input_cached_tokens': c_cached, 'output': c_out,
                       'total': c_in + c_cached + c_out}} END AS cost_details,
        -- the events table's total_cost is cost_details['total']: 0, not null, where Langfuse had no price
        CASE WHEN is_span OR input_rate IS NULL THEN 0::DECIMAL(18, 12) ELSE c_in + c_cached + c_out END AS total_cost,
        CASE WHEN is_span THEN NULL ELSE replace(feature, '-', '_') END AS prompt_name,
        CASE WHEN is_span THEN NULL ELSE 1 + g % 5 END AS prompt_version,
        CASE WHEN style >= 80 AND style < 90
             THEN ['feature:' || feature, 'team:' || team, 'customer_id:' || customer, 'tier:' || tier]
             ELSE []::VARCHAR[] END AS tags,
        CASE WHEN style < 80 THEN MAP {{'feature': feature, 'team': team, 'customer_id': customer, 'tier': tier,
                                       'request_id': md5(i::VARCHAR || 'r')[:16]}}
             WHEN style < 95 AND style >= 90 THEN MAP {{'feature': feature}}
             ELSE MAP {{}}::MAP(VARCHAR, VARCHAR) END AS metadata,
        -- The text a cost pipeline must never store: a chat prompt and its completion, as JSON text.
        to_json([{{'role': 'system', 'content': p1.text}}, {{'role': 'user', 'content': p2.text}}])::VARCHAR AS input,
        CASE WHEN is_span THEN NULL ELSE to_json({{'role': 'assistant', 'content': p3.text}})::VARCHAR END AS output,
        (400 + g % 9000) / 1000.0 AS latency,
        (100 + g % 900) / 1000.0 AS time_to_first_token
    FROM priced
    JOIN pool p1 ON p1.k = (h >> 40) % 4096
    JOIN pool p2 ON p2.k = (g >> 44) % 4096
    JOIN pool p3 ON p3.k = (h >> 48) % 4096
    ORDER BY ts
    """


def _ext(fmt: str) -> str:
    return {"jsonl": "jsonl.gz", "parquet": "parquet"}[fmt]


def write_export_day(dest: Path, day: date, n: int, fmt: str) -> Path:
    """Write `n` generations of `day` under `dest` as 24 hourly export runs in `fmt` (jsonl | parquet)."""
    table_dir = dest / PROJECT_ID / "observations_v2"
    table_dir.mkdir(parents=True, exist_ok=True)
    ext = _ext(fmt)
    options = "FORMAT json, COMPRESSION gzip" if fmt == "jsonl" else "FORMAT parquet, COMPRESSION snappy"
    sql = _rows_sql(day, n)
    midnight = datetime(day.year, day.month, day.day)

    def write_hour(conn: duckdb.DuckDBPyConnection, hour: int) -> None:
        lo, hi = midnight + timedelta(hours=hour), midnight + timedelta(hours=hour + 1)
        first, last = int(n * hour / 24) - 1, int(n * (hour + 1) / 24) + 1  # a row either side of the bounds
        stamp = hi.strftime("%Y-%m-%dT%H-%M-%S")
        path = table_dir / f"{stamp}.{ext}"
        # Windows are inclusive at both ends, as Langfuse's are: filter on the rendered time.
        conn.execute(f"""COPY (SELECT * FROM ({sql}) WHERE start_time BETWEEN $lo_text AND $hi_text)
                         TO '{path}' ({options})""",
                     {"lo": max(first, 0), "hi": min(last, n), "lo_text": lo.strftime("%Y-%m-%d %H:%M:%S.%f"),
                      "hi_text": hi.strftime("%Y-%m-%d %H:%M:%S.%f")})
        write_manifest(dest, PROJECT_ID, lo, hi, [(path, None)])

    with duckdb.connect() as conn:
        _text_pool(conn)
        _lookup_tables(conn, day)
        def write_hour_on_own_cursor(hour: int) -> None:
            with conn.cursor() as cursor:
                write_hour(cursor, hour)

        with ThreadPoolExecutor(2) as pool:  # gzip runs on one thread per file: write two at a time
            list(pool.map(write_hour_on_own_cursor, range(24)))
    return dest
