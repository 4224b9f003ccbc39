"""Langfuse observations into validated rows: the fields cost needs, typed, each row either clean or
carrying the reason it is quarantined. Two sources, one set of rules: export files (`read_observations`)
and pages of the v2 API (`ApiPageLoader`).

All JSONL files of the day are read in one statement, by DuckDB's JSON reader, on all its threads, a
`.gz` inflated by ISA-L (sources/isal_gzip.py: three times as fast as DuckDB's own gzip); all Parquet
files in another, straight from their typed columns. A statement adds all its rows or none: when one
file breaks it (DuckDB's JSON reader stops at the first line that is not a JSON object), each file is
read on its own, so a broken file costs only itself. That reader cannot number lines (it skips blank
ones), so a JSONL file where it fails, or that holds any row to quarantine, is read again line by line:
every row of it then has its exact line number. Parquet has row numbers, so it needs no second way. CSV
(objects and arrays as JSON text in cells) and JSON-array files are always read line by line, a file per
statement, concurrently.

An API page is parsed by DuckDB too, straight from the response body: each row keeps its position in
the page as its line number.

The rows land in `scratch.observations`, an in-memory database attached to the connection (shared by
its cursors; spilled to disk by DuckDB above its memory limit; compressed for API pages, whose many
small inserts spill slowly: 37k -> 46k generations/s at a million), and `scratch.sources` names where each
came from. The prompt and completion text is read by the parser, never selected: it never reaches a table.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path

import duckdb

from finops_pipeline.sources import isal_gzip
from finops_pipeline.sources.langfuse_api import MalformedPage, Window
from finops_pipeline.sources.langfuse_export import ExportFile
from finops_pipeline.warehouse import MONEY, utc_cursor

# The export columns cost allocation needs. Nested values are read as JSON text, parsed further only
# for the parts used, so validation can name exactly what is wrong. `input`/`output` are never named.
RAW_COLUMNS = {
    "id": "VARCHAR", "trace_id": "VARCHAR", "project_id": "VARCHAR", "type": "VARCHAR", "name": "VARCHAR",
    "start_time": "VARCHAR", "environment": "VARCHAR", "user_id": "VARCHAR", "session_id": "VARCHAR",
    "provided_model_name": "VARCHAR", "model": "VARCHAR", "usage_details": "JSON", "cost_details": "JSON",
    "total_cost": "JSON", "prompt_name": "VARCHAR", "prompt_version": "VARCHAR", "tags": "JSON", "metadata": "JSON",
}
_NESTED = [name for name, kind in RAW_COLUMNS.items() if kind == "JSON"]
# The same fields as the v2 API names them. Its `totalCost` is not the stored total: the server sends
# `costDetails.total ?? 0`, a $0 for every call it could not price, so cost is taken from costDetails.
API_NAMES = {
    "id": "id", "trace_id": "traceId", "project_id": "projectId", "type": "type", "name": "name",
    "start_time": "startTime", "environment": "environment", "user_id": "userId", "session_id": "sessionId",
    "provided_model_name": "providedModelName", "model": "model", "usage_details": "usageDetails",
    "cost_details": "costDetails", "total_cost": None, "prompt_name": "promptName",
    "prompt_version": "promptVersion", "tags": "tags", "metadata": "metadata",
}

OBSERVATIONS_DDL = f"""
CREATE OR REPLACE TABLE scratch.observations (
    file_rank INTEGER, line BIGINT, reason VARCHAR,
    id VARCHAR, trace_id VARCHAR, project_id VARCHAR, type VARCHAR, name VARCHAR, start_time TIMESTAMP,
    model VARCHAR, environment VARCHAR, user_id VARCHAR, session_id VARCHAR, prompt_name VARCHAR,
    prompt_version INTEGER, tags VARCHAR[], metadata_values VARCHAR[],
    input_tokens BIGINT, output_tokens BIGINT, cached_tokens BIGINT, cache_write_tokens BIGINT,
    reasoning_tokens BIGINT, total_tokens BIGINT, usage_other MAP(VARCHAR, BIGINT), langfuse_cost {MONEY}
)
"""

_MACROS = """
-- A time as naive UTC whatever the session's time zone: text with a zone after its date (Z, +09:00, -05) is
-- converted to UTC; text without one is UTC already (Langfuse's exports write UTC with no zone).
CREATE OR REPLACE MACRO scratch.utc_time(t) AS CASE
    WHEN upper(right(t, 1)) = 'Z' OR contains(substr(t, 12), '+') OR contains(substr(t, 12), '-')
    THEN timezone('UTC', TRY_CAST(upper(t) AS TIMESTAMPTZ))
    ELSE TRY_CAST(t AS TIMESTAMP) END;
-- Each usage key (lower case) as the unit it counts, in genai-prices' unit names. Langfuse's keys are disjoint
-- (a detail key is subtracted from input or output), whatever the provider called them: OpenAI's
-- input_cached_tokens, Anthropic's cache_creation_input_tokens (and its 1-hour TTL), Gemini's
-- thoughts_token_count, audio and image tokens. A key nothing here recognises is 'unsorted:<key>'.
CREATE OR REPLACE MACRO scratch.usage_unit(k) AS CASE
    -- Langfuse's own keys first: most keys of most rows stop here
    WHEN k = 'input' THEN 'input_tokens' WHEN k = 'output' THEN 'output_tokens' WHEN k = 'total' THEN 'total'
    WHEN k = 'input_cached_tokens' OR k = 'cache_read_input_tokens' THEN 'cache_read_tokens'
    WHEN k = 'output_reasoning_tokens' THEN 'output_reasoning_tokens'
    WHEN k = 'cache_creation_input_tokens' THEN 'cache_write_tokens'
    WHEN k LIKE 'total%' THEN 'total'
    WHEN k LIKE '%char%' THEN 'input_characters'
    WHEN k LIKE '%second%' OR k LIKE '%duration%' THEN CASE
        WHEN k LIKE '%output%' OR k LIKE '%completion%' THEN 'output_audio_seconds'
        WHEN k LIKE '%input%' OR k LIKE '%prompt%' THEN 'input_audio_seconds' ELSE 'audio_seconds' END
    WHEN k LIKE '%reason%' OR k LIKE '%thought%' OR k LIKE '%thinking%' THEN 'output_reasoning_tokens'
    WHEN (k LIKE '%cache%' AND (k LIKE '%creat%' OR k LIKE '%write%')) OR k LIKE '%ephemeral%' THEN CASE
        WHEN k LIKE '%1h%' OR k LIKE '%hour%' THEN 'cache_write_1h_tokens' ELSE 'cache_write_tokens' END
    WHEN k LIKE '%cache%' THEN CASE WHEN k LIKE '%audio%' THEN 'cache_audio_read_tokens'
        WHEN k LIKE '%image%' THEN 'cache_image_read_tokens' ELSE 'cache_read_tokens' END
    WHEN k LIKE '%tool%' THEN 'input_tool_tokens'
    WHEN k LIKE '%citation%' THEN 'output_citation_tokens'
    WHEN k LIKE '%search%' THEN 'web_searches'
    WHEN k IN ('images', 'image', 'image_count', 'num_images', 'output_images', 'input_images') THEN 'images'
    WHEN k LIKE '%audio%' OR k LIKE '%image%' OR k LIKE '%video%' THEN
        (CASE WHEN k LIKE '%output%' OR k LIKE '%completion%' OR k LIKE '%candidate%' THEN 'output_' ELSE 'input_' END)
        || (CASE WHEN k LIKE '%audio%' THEN 'audio' WHEN k LIKE '%image%' THEN 'image' ELSE 'video' END) || '_tokens'
    WHEN k LIKE '%output%' OR k LIKE '%completion%' OR k LIKE '%candidate%' THEN 'output_tokens'
    WHEN k LIKE '%input%' OR k LIKE '%prompt%' THEN 'input_tokens'
    ELSE 'unsorted:' || k END;
-- Values of `values` whose kind (same position in `kinds`) is `kind`; NULL when there are none.
CREATE OR REPLACE MACRO scratch.sum_of(values, kinds, kind) AS
    list_sum(list_where(values, list_transform(kinds, lambda k: k = kind)));
CREATE OR REPLACE MACRO scratch.sum_except(values, kinds, kind) AS
    list_sum(list_where(values, list_transform(kinds, lambda k: k <> kind)));
-- The units beyond the five the staging table keeps as columns, with their counts: {unit: count}.
CREATE OR REPLACE MACRO scratch.other_usage(counts, units) AS map_from_entries(list_transform(
    list_distinct(list_filter(units, lambda u: u NOT IN ('input_tokens', 'output_tokens', 'cache_read_tokens',
                                                          'cache_write_tokens', 'output_reasoning_tokens', 'total'))),
    lambda u: {'key': u, 'value': scratch.sum_of(counts, units, u)::BIGINT}));
-- The first position where `texts` holds a value that is not a whole number >= 0 (`numbers`: the same, cast).
CREATE OR REPLACE MACRO scratch.bad_count_at(texts, numbers) AS list_position(list_transform(list_zip(texts, numbers),
    lambda p: p[1] IS NULL OR coalesce(p[2] >= 0 AND p[2] % 1 = 0, false)), false);
-- A key without case and separators (_ - . and spaces), as `normal_key` in Python: replace() costs far less
-- than a regular expression, for every key of every tag of every row.
CREATE OR REPLACE MACRO scratch.normal_key(k) AS
    lower(replace(replace(replace(replace(k, '_', ''), '-', ''), '.', ''), ' ', ''));
CREATE OR REPLACE MACRO scratch.bad_amount_at(texts, amounts) AS list_position(list_transform(list_zip(texts, amounts),
    lambda p: p[1] IS NULL OR coalesce(p[2] >= 0, false)), false);
"""


def normal_key(key: str) -> str:
    """A metadata key with case and separators (_ - . and spaces) gone: `customerId`, `customer-id`,
    `Customer_ID` -> `customerid` (the macro scratch.normal_key does the same in SQL)."""
    return re.sub(r"[_\-. ]", "", key.lower())


@dataclass(frozen=True)
class Vocabulary:
    """The allocation keys read from metadata, in order: each by its exact name, else by the first key of the
    object that differs from it only in case and separators (`customerId` for `customer_id`) or is one of
    its aliases (FINOPS_METADATA_ALIASES, e.g. `accountId` for `customer_id`)."""

    keys: tuple[str, ...]
    spellings: tuple[tuple[str, ...], ...]  # per key: the normal forms (`normal_key`) that stand for it

    @classmethod
    def of(cls, keys: list[str], aliases: dict[str, str] | None = None) -> Vocabulary:
        return cls(tuple(keys), tuple(tuple(sorted({normal_key(k), *(normal_key(a) for a, target in (aliases or {}).items()
                                                                      if target == k)})) for k in keys))


def _metadata_values(metadata: str, vocabulary: Vocabulary, is_map: bool = False) -> str:
    """The vocabulary's values from `metadata` (SQL of a JSON object, or of a MAP(VARCHAR, VARCHAR)): the exact
    keys in one call; only a row missing a key that holds another spelling of it looks through its keys."""
    spellings = "[" + ", ".join("[" + ", ".join(f"'{n}'" for n in names) + "]" for names in vocabulary.spellings) + "]"
    if is_map:
        exact = "[" + ", ".join(f"map_extract_value({metadata}, '{k}')" for k in vocabulary.keys) + "]"
        other = (f"map_extract_value({metadata}, list_filter(map_keys({metadata}), "
                 "lambda k: list_contains(p[2], scratch.normal_key(k)))[1])")
        text = f"scratch.normal_key(',' || array_to_string(map_keys({metadata}), ',') || ',')"
        found = [" OR ".join(f"contains({text}, ',{n},')" for n in names) for names in vocabulary.spellings]
    else:  # keys are validated identifiers: safe in a path; a key with a quote cannot be one
        exact = f"json_extract_string({metadata}, [" + ", ".join(f"'$.\"{k}\"'" for k in vocabulary.keys) + "])"
        other = (f"json_extract_string({metadata}, '$.\"' || list_filter(json_keys({metadata}), "
                 "lambda k: NOT contains(k, '\"') AND list_contains(p[2], scratch.normal_key(k)))[1] || '\"')")
        # a quoted spelling in the object's text, case and separators gone: cheaper than parsing its keys
        text = f"scratch.normal_key({metadata}::VARCHAR)"
        found = [" OR ".join(f"contains({text}, '\"{n}\"')" for n in names) for names in vocabulary.spellings]
    missing = " OR ".join(f"({exact}[{i}] IS NULL AND ({f}))" for i, f in enumerate(found, start=1))
    # (`exact` repeated in one expression: DuckDB computes a repeated subexpression once)
    return (f"CASE WHEN {missing} THEN list_transform(list_zip({exact}, {spellings}), "
            f"lambda p: coalesce(p[1], {other})) ELSE {exact} END")


def _nested_json(name: str, json_sql: str) -> str:
    """`_validate_sql`'s columns for usage_details or cost_details (`name`), from its value as JSON."""
    return (f"json_type({json_sql}) AS {name}_type, json_keys({json_sql}) AS {name}_keys, "
            f"json_extract_string({json_sql}, '$.*') AS {name}_text, {json_sql} AS {name}")


def _json_fields(vocabulary: Vocabulary) -> str:
    """The columns `_validate_sql` takes, from raw columns (RAW_COLUMNS) whose nested values are JSON."""
    nested = ", ".join(_nested_json(n, n) for n in ("usage_details", "cost_details"))
    return f"""file_rank, line, is_object, id, trace_id, project_id, type, name, start_time, environment, user_id,
        session_id, provided_model_name, model, prompt_name, prompt_version,
        TRY_CAST(tags AS VARCHAR[]) AS tags,  -- NULL where tags is not an array
        {_metadata_values('metadata', vocabulary)} AS metadata_values,  -- NULLs where not an object
        {nested}, nullif(total_cost ->> '$', '') AS total_text"""


def _validate_sql(fields_sql: str) -> str:
    """Rows of scratch.observations from `fields_sql`, whose columns are: file_rank, line, is_object; the
    plain fields of RAW_COLUMNS as text; tags (VARCHAR[]), metadata_values (VARCHAR[]); for each of
    usage_details and cost_details, its _type ('OBJECT', 'NULL' or another JSON type), _keys and _text
    (its keys and values, as text, in order) and the value itself for messages; total_text."""
    return f"""
WITH parsed AS (
    SELECT *,
        scratch.utc_time(nullif(trim(start_time), '')) AS ts,
        list_transform(usage_details_text, lambda v: TRY_CAST(v AS DOUBLE)) AS usage_numbers,
        list_transform(usage_details_keys, lambda k: scratch.usage_unit(lower(k))) AS usage_units,
        list_transform(cost_details_text, lambda v: TRY_CAST(v AS {MONEY})) AS amounts,
        TRY_CAST(total_text AS {MONEY}) AS total_amount
    FROM ({fields_sql})
),
checked AS (
    SELECT *,
        -- token counts are whole numbers >= 0 (JSON numbers, or numeric text: ClickHouse quotes UInt64)
        coalesce(list_count(usage_numbers) = list_count(usage_details_text) AND coalesce(list_min(usage_numbers) >= 0, true)
                 AND list_sum(list_transform(usage_numbers, lambda n: n % 1)) = 0, true) AS usage_ok,
        coalesce(list_count(amounts) = list_count(cost_details_text) AND coalesce(list_min(amounts) >= 0, true), true) AS cost_ok,
        usage_numbers::BIGINT[] AS counts
    FROM parsed
)
SELECT file_rank, line,
    CASE
        WHEN NOT is_object THEN 'malformed ' || $unit || ': not a JSON object'
        WHEN coalesce(trim(id), '') = '' THEN 'missing id'
        WHEN coalesce(trim(start_time), '') = '' THEN 'missing start_time'
        WHEN ts IS NULL THEN 'unparseable start_time: ' || left(start_time, 40)
        WHEN usage_details_type NOT IN ('OBJECT', 'NULL') THEN 'usage_details is not an object: ' || left(usage_details::VARCHAR, 40)
        WHEN NOT usage_ok THEN 'usage_details.' || usage_details_keys[scratch.bad_count_at(usage_details_text, usage_numbers)]
            || ' is not a non-negative whole number: '
            || left(usage_details_text[scratch.bad_count_at(usage_details_text, usage_numbers)], 40)
        WHEN total_text IS NOT NULL AND total_amount IS NULL THEN 'total_cost is not a number: ' || left(total_text, 40)
        WHEN total_amount < 0 THEN 'negative total_cost: ' || total_text
        WHEN cost_details_type NOT IN ('OBJECT', 'NULL') THEN 'cost_details is not an object: ' || left(cost_details::VARCHAR, 40)
        WHEN NOT cost_ok THEN 'cost_details.' || cost_details_keys[scratch.bad_amount_at(cost_details_text, amounts)]
            || ' is not a non-negative number: ' || left(cost_details_text[scratch.bad_amount_at(cost_details_text, amounts)], 40)
    END AS reason,
    id, trace_id, project_id, type, name, ts AS start_time, nullif(trim(coalesce(provided_model_name, model)), ''),
    environment, user_id, session_id, prompt_name, TRY_CAST(prompt_version AS INTEGER), tags, metadata_values,
    coalesce(scratch.sum_of(counts, usage_units, 'input_tokens'), 0),
    coalesce(scratch.sum_of(counts, usage_units, 'output_tokens'), 0),
    coalesce(scratch.sum_of(counts, usage_units, 'cache_read_tokens'), 0),
    coalesce(scratch.sum_of(counts, usage_units, 'cache_write_tokens'), 0),
    coalesce(scratch.sum_of(counts, usage_units, 'output_reasoning_tokens'), 0),
    -- the total key, else the sum of the token counts (not characters, seconds or searches)
    CASE WHEN list_contains(usage_units, 'total') THEN scratch.sum_of(counts, usage_units, 'total')
         ELSE coalesce(list_sum(list_where(counts, list_transform(usage_units,
                  lambda u: u LIKE '%tokens' OR u LIKE 'unsorted:%'))), 0) END,
    CASE WHEN list_bool_or(list_transform(usage_units, lambda u: u NOT IN ('input_tokens', 'output_tokens',
              'cache_read_tokens', 'cache_write_tokens', 'output_reasoning_tokens', 'total')))
         THEN scratch.other_usage(counts, usage_units) END,
    -- Langfuse's own price: totalCost, else costDetails.total, else the sum of costDetails.
    coalesce(total_amount, scratch.sum_of(amounts, cost_details_keys, 'total'),
             scratch.sum_except(amounts, cost_details_keys, 'total'))
FROM checked
"""


def _from_text(lines_sql: str, decode_nested: bool, names: dict[str, str | None] | None = None,
               valid_json: bool = False) -> str:
    """Raw columns from `lines_sql` (file_rank, line, text), where text should be one JSON object whose
    keys are `names` (raw column -> key; None: not sent), by default the export's. `valid_json`: every
    text is known to be JSON (an element of a parsed array), so only its type is checked."""
    names = names or {n: n for n in RAW_COLUMNS}
    struct = "'" + json.dumps({names[n]: kind for n, kind in RAW_COLUMNS.items() if names[n]}) + "'"
    fields = {n: f'r."{names[n]}"' if names[n] else f"NULL::{RAW_COLUMNS[n]}" for n in RAW_COLUMNS}
    # CASE, not AND: only CASE keeps json_type from seeing text that is not JSON.
    nested = {n: (f"CASE WHEN json_type({f}) = 'VARCHAR' THEN (CASE WHEN json_valid({f} ->> '$') "
                  f"THEN ({f} ->> '$')::JSON WHEN ({f} ->> '$') <> '' THEN {f} END) ELSE {f} END"
                  if decode_nested else f) for n, f in fields.items() if n in _NESTED}
    columns = ", ".join(f"{nested.get(n, fields[n])} AS {n}" for n in RAW_COLUMNS)
    if valid_json:  # JSON by construction, never blank; from_json makes a non-object all NULLs
        is_object, parsed, lines = "json_type(text) = 'OBJECT'", f"from_json(text, {struct})", lines_sql
    else:  # skip blank lines (trim only where the first character is blank: it copies the line)
        is_object = "CASE WHEN json_valid(text) THEN json_type(text) = 'OBJECT' ELSE false END"
        parsed = f"CASE WHEN is_object THEN from_json(text, {struct}) END"
        lines = f"SELECT * FROM ({lines_sql}) WHERE text IS NOT NULL AND (ascii(text) > 32 OR trim(text) <> '')"
    return f"""
        SELECT file_rank, line, is_object, {columns}
        FROM (SELECT file_rank, line, is_object, {parsed} AS r
              FROM (SELECT file_rank, line, {is_object} AS is_object, text FROM ({lines})))
    """


# The rank of each of several files read in one statement (`filename=true`): `$files` and `$ranks` pair up.
_RANK_OF_FILE = "JOIN (SELECT unnest($files) AS filename, unnest($ranks) AS file_rank) s USING (filename)"

# Tags typed as Langfuse writes them (an array: a list costs less than JSON text to read); any other
# value fails the statement, and its file is read line by line.
_FAST_COLUMNS = {**RAW_COLUMNS, "tags": "VARCHAR[]"}

# Every JSONL file of the day in one statement, on all of DuckDB's threads.
_FAST_JSONL = ("SELECT s.file_rank, NULL::BIGINT AS line, true AS is_object, " + ", ".join(f"r.{n}" for n in RAW_COLUMNS)
               + " FROM read_json($files, format='newline_delimited', records=true, filename=true, "
               f"compression=$compression, columns={_FAST_COLUMNS!r}) r {_RANK_OF_FILE}")

_LINES = {
    # Each physical line is one value: no delimiter or quote can split it; a blank line is a NULL row.
    "jsonl": "SELECT $rank AS file_rank, row_number() OVER () AS line, text FROM read_csv($file, columns={'text': 'VARCHAR'},"
    " header=false, delim=chr(1), quote='', escape='', auto_detect=false, max_line_size=16777216, buffer_size=33554432)",
    "json": "SELECT $rank AS file_rank, row_number() OVER () AS line, json::VARCHAR AS text"
    " FROM read_json($file, format='array', records=false)",
    # Langfuse quotes every CSV cell and writes objects and arrays as JSON text; `line` is the record
    # number counting the header as line 1.
    "csv": "SELECT $rank AS file_rank, row_number() OVER () + 1 AS line, to_json(t)::VARCHAR AS text"
    " FROM read_csv($file, header=true, all_varchar=true, auto_detect=true,"
    " store_rejects=true, rejects_scan='csv_rejects_scan', rejects_table='csv_rejects') t",
    # Only when a Parquet file's columns do not have the types Langfuse writes.
    "parquet": "SELECT $rank AS file_rank, file_row_number + 1 AS line, to_json(t)::VARCHAR AS text"
    " FROM read_parquet($file, file_row_number=true) t",
}


_SCALAR = r"(VARCHAR|BOOLEAN|U?(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT)|FLOAT|DOUBLE|DECIMAL\(\d+,\d+\))"


def _parquet_sql(conn: duckdb.DuckDBPyConnection, paths: list[str], vocabulary: Vocabulary) -> str:
    """`_validate_sql`'s columns straight from Parquet's typed columns, for every file in `paths` (`$files`)
    in one statement. Maps of scalars (Langfuse's usage, cost and metadata) are read as maps, with no
    detour through JSON; a column of another type is read as JSON (text as the JSON it holds); an absent
    one is NULL."""
    types = dict(row[:2] for row in conn.execute(
        "DESCRIBE SELECT * FROM read_parquet($files, union_by_name=true)", {"files": paths}).fetchall())

    def text(name: str) -> str:
        return f"{name}::VARCHAR" if name in types else "NULL::VARCHAR"

    def as_json(name: str) -> str:
        if name not in types:
            return "NULL::JSON"
        if types[name] == "VARCHAR":  # JSON written as text by another tool; other text stays a JSON string
            return f"(CASE WHEN json_valid({name}) THEN {name}::JSON ELSE to_json({name}) END)"
        return f"to_json({name})"

    fields = [f"{text(n)} AS {n}" for n, kind in RAW_COLUMNS.items() if kind == "VARCHAR"]
    for name in ("usage_details", "cost_details"):
        if name not in types:
            fields.append(f"NULL::VARCHAR AS {name}_type, NULL::VARCHAR[] AS {name}_keys, "
                          f"NULL::VARCHAR[] AS {name}_text, NULL::VARCHAR AS {name}")
        elif re.fullmatch(rf"MAP\(VARCHAR, {_SCALAR}\)", types[name]):
            fields.append(f"CASE WHEN {name} IS NULL THEN 'NULL' ELSE 'OBJECT' END AS {name}_type, "
                          f"map_keys({name}) AS {name}_keys, map_values({name})::VARCHAR[] AS {name}_text, {name}")
        else:
            fields.append(_nested_json(name, as_json(name)))
    fields.append("tags" if types.get("tags") == "VARCHAR[]" else f"TRY_CAST({as_json('tags')} AS VARCHAR[]) AS tags")
    if types.get("metadata") == "MAP(VARCHAR, VARCHAR)":
        fields.append(f"{_metadata_values('metadata', vocabulary, is_map=True)} AS metadata_values")
    else:
        fields.append(f"{_metadata_values(as_json('metadata'), vocabulary)} AS metadata_values")
    total = types.get("total_cost", "")
    fields.append("nullif(total_cost::VARCHAR, '') AS total_text" if re.fullmatch(_SCALAR, total)
                  else f"nullif({as_json('total_cost')} ->> '$', '') AS total_text")
    return (f"SELECT s.file_rank, file_row_number + 1 AS line, true AS is_object, {', '.join(fields)}"
            f" FROM read_parquet($files, file_row_number=true, filename=true, union_by_name=true) r {_RANK_OF_FILE}")


# What a broken file raises. Anything else (a binder or parser error) is a bug here, and must fail loudly.
_UNREADABLE = (duckdb.IOException, duckdb.InvalidInputException, duckdb.ConversionException)


@dataclass(frozen=True)
class Rejected:
    """What could not be read at all: a whole file (line None) or one CSV record."""

    file: str  # a URL or local path
    line: int | None
    reason: str


def start_scratch(conn: duckdb.DuckDBPyConnection, compress: bool = False) -> None:
    """Empty `scratch.observations` and `scratch.sources` (file_rank, file, file_day: the day where rows
    with no readable time of their own are filed; lo, hi: an API page's window, the times its rows may have). `compress`: for many small inserts (API pages), which
    spill badly; big file inserts are faster uncompressed."""
    conn.execute(f"ATTACH IF NOT EXISTS ':memory:' AS scratch{' (COMPRESS)' if compress else ''}")
    conn.execute(_MACROS)
    conn.execute(OBSERVATIONS_DDL)
    conn.execute("CREATE OR REPLACE TABLE scratch.sources "
                 "(file_rank INTEGER, file VARCHAR, file_day DATE, lo TIMESTAMP, hi TIMESTAMP)")


def read_observations(conn: duckdb.DuckDBPyConnection, files: list[ExportFile], vocabulary: Vocabulary) -> list[Rejected]:
    """Load export `files` into `scratch.observations` (see module doc); return what could not be read, and why.

    `metadata_values` holds the values of the `vocabulary`'s keys, in that order. Later files rank higher: they
    win on duplicate ids. A file's rows with no readable time are filed under the day its window starts.
    """
    start_scratch(conn)
    isal_gzip.register(conn)
    conn.execute("INSERT INTO scratch.sources BY NAME SELECT unnest($ranks) AS file_rank, unnest($files) AS file, "
                 "unnest($days) AS file_day", {
        "ranks": list(range(len(files))), "files": [str(f.path) for f in files],
        "days": [(f.window_start or f.window_end).date() for f in files]})
    rejected: list[Rejected] = []
    by_format: dict[str, list[int]] = {}
    for rank, export_file in enumerate(files):
        by_format.setdefault(export_file.format, []).append(rank)
    for fmt, ranks in by_format.items():
        if fmt in ("jsonl", "parquet") and _read_fast(conn, fmt, {r: files[r].readable for r in ranks}, vocabulary):
            continue
        # No fast way, or one file broke it: each file on its own, the fast way first where there is one.
        rejected += _each_file(conn, ranks, lambda cursor, rank: _read_file(cursor, rank, files[rank], vocabulary))
    # Rows the fast JSON reader read carry no line number: a file with any row to quarantine is read
    # again line by line, so that every quarantined row says where it is.
    to_number = [rank for (rank,) in conn.execute(
        "SELECT DISTINCT file_rank FROM scratch.observations WHERE reason IS NOT NULL AND line IS NULL").fetchall()]
    if to_number:
        conn.execute("DELETE FROM scratch.observations WHERE list_contains($ranks, file_rank)", {"ranks": to_number})
        rejected += _each_file(conn, to_number, lambda cursor, rank: _read_lines(cursor, rank, files[rank], vocabulary))
    return rejected


# Pages, each a response body, as (file_rank, line, text): one row per element of its `data` array.
_PAGE_ROWS = ("SELECT file_rank, generate_subscripts(rows, 1) AS line, unnest(rows)::VARCHAR AS text FROM"
              " (SELECT unnest($ranks) AS file_rank, json_extract(unnest($bodies), '$.data[*]') AS rows)")


class ApiPageLoader:
    """Loads pages of GET /api/public/v2/observations into `scratch.observations`: a `LoadPage` for
    `LangfuseApi.fetch_observations`, called from its worker threads.

    Each page is checked (is it JSON with a `data` array?) and its cursor read when it arrives; its rows
    are inserted `batch` pages at a time, in one statement (a statement costs as much as a page's rows,
    whatever its size), so memory holds at most a batch of bodies. Call `flush()` after the last page.
    A row's line number is its position in the page; its source is the request (window and page).
    Rows the server sent for another window are ignored: that window's own chain fetches them.
    """

    def __init__(self, conn: duckdb.DuckDBPyConnection, vocabulary: Vocabulary, batch: int = 8):
        start_scratch(conn, compress=True)
        self._conn = conn
        self._batch = batch
        self._pending: list[tuple[int, str, Window, str]] = []  # rank, where, window, body
        self._lock = threading.Lock()
        # As many batches at once as DuckDB has threads: more only add memory (a batch parsing in
        # DuckDB holds several times its bodies), and under the memory limit that fails the day.
        threads = int(conn.execute("SELECT current_setting('threads')").fetchone()[0])
        self._loading = threading.BoundedSemaphore(max(1, threads))
        self._ranks = itertools.count()  # fetch order: a row fetched again wins, like a later export
        self._insert = (
            "INSERT INTO scratch.observations SELECT v.* FROM "
            f"({_validate_json(_from_text(_PAGE_ROWS, False, API_NAMES, valid_json=True), vocabulary)}) v "
            "JOIN scratch.sources w USING (file_rank) "
            "WHERE v.start_time IS NULL OR (v.start_time >= w.lo AND v.start_time < w.hi)")

    def __call__(self, where: str, window: Window, body: str) -> str | None:
        with utc_cursor(self._conn) as cursor:
            try:
                data, next_cursor = cursor.execute(
                    "SELECT json_type($body, '$.data'), $body ->> '$.meta.cursor'", {"body": body}).fetchone()
            except duckdb.InvalidInputException as exc:
                raise MalformedPage(_first_line(exc)) from None
            if data != "ARRAY":
                raise MalformedPage(f"no `data` array ({data or 'missing'})")
        with self._lock:
            self._pending.append((next(self._ranks), where, window, body))
            batch = self._pending if len(self._pending) >= self._batch else None
            if batch:
                self._pending = []
        if batch:
            self._load(batch)
        return next_cursor

    def flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        if batch:
            self._load(batch)

    def _load(self, pages: list[tuple[int, str, Window, str]]) -> None:
        ranks, wheres, windows, bodies = (list(column) for column in zip(*pages))
        with self._loading, utc_cursor(self._conn) as cursor:
            cursor.execute("INSERT INTO scratch.sources SELECT unnest($ranks), unnest($wheres), unnest($days),"
                           " unnest($los), unnest($his)",
                           {"ranks": ranks, "wheres": wheres, "days": [w.start.date() for w in windows],
                            "los": [_naive(w.start) for w in windows], "his": [_naive(w.end) for w in windows]})
            cursor.execute(self._insert, {"ranks": ranks, "bodies": bodies, "unit": "row"})


def _naive(moment) -> object:
    """UTC, without the zone: scratch.observations holds naive UTC timestamps."""
    return moment.astimezone(timezone.utc).replace(tzinfo=None)


def _each_file(conn: duckdb.DuckDBPyConnection, ranks, read) -> list[Rejected]:
    """`read(cursor, rank)` for each file, as many at once as DuckDB has threads."""
    threads = int(conn.execute("SELECT current_setting('threads')").fetchone()[0])

    def on_own_cursor(rank: int) -> list[Rejected]:
        with utc_cursor(conn) as cursor:
            return read(cursor, rank)

    with ThreadPoolExecutor(max(1, threads)) as pool:
        return [r for rejected in pool.map(on_own_cursor, ranks) for r in rejected]


def _read_fast(conn: duckdb.DuckDBPyConnection, fmt: str, paths: dict[int, str], vocabulary: Vocabulary) -> bool:
    """The files `paths` (rank -> path; all JSONL or all Parquet) in one statement; False, having added
    nothing, if one of them cannot be read that way."""
    local = [str(path) for path in paths.values()]
    params = {"files": local, "ranks": list(paths), "unit": "line"}
    try:
        if fmt == "parquet":
            sql = _validate_sql(_parquet_sql(conn, local, vocabulary))
        else:
            params["files"], params["compression"] = isal_gzip.for_duckdb(local)
            sql = _validate_json(_FAST_JSONL, vocabulary)
        conn.execute(f"INSERT INTO scratch.observations {sql}", params)
        return True
    except duckdb.Error as exc:
        if isinstance(exc, _UNREADABLE) or isal_gzip.failed_on(local):
            return False
        raise


def _read_file(conn: duckdb.DuckDBPyConnection, rank: int, export_file: ExportFile, vocabulary: Vocabulary) -> list[Rejected]:
    """One file: the fast way where the format has one, else (or when it fails) line by line."""
    if export_file.format in ("jsonl", "parquet") and _read_fast(conn, export_file.format, {rank: export_file.readable}, vocabulary):
        return []
    return _read_lines(conn, rank, export_file, vocabulary)


def _read_lines(conn: duckdb.DuckDBPyConnection, rank: int, export_file: ExportFile, vocabulary: Vocabulary) -> list[Rejected]:
    fmt = export_file.format
    try:  # one statement: a file that fails to read adds nothing
        conn.execute("INSERT INTO scratch.observations "
                     + _validate_json(_from_text(_LINES[fmt], decode_nested=fmt == "csv"), vocabulary),
                     {"rank": rank, "file": export_file.readable, "unit": "line"})
    except _UNREADABLE as exc:
        return [Rejected(export_file.path, None, f"unreadable {fmt} file: {_first_line(exc)}")]
    if fmt == "csv":
        return [Rejected(export_file.path, line, f"malformed CSV record: {error[:200]}") for line, error in
                conn.execute("SELECT line, error_message FROM csv_rejects ORDER BY line").fetchall()]
    return []


def _validate_json(raw_sql: str, vocabulary: Vocabulary) -> str:
    """Rows of scratch.observations from rows of raw columns whose nested values are JSON."""
    return _validate_sql(f"SELECT {_json_fields(vocabulary)} FROM ({raw_sql})")


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:300]
