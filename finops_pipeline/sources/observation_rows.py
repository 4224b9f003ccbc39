"""The one validation every Langfuse source feeds: observations and traces as typed rows, each clean or
carrying the reason it is quarantined, in the tables of an in-memory `scratch` database.

Each source reads rows its own way (export files: sources/export_files.py; API pages: sources/api_pages.py)
as raw columns (text; nested values as JSON) or, from Parquet, typed columns, and hands them here with
their kind:
- OBSERVATIONS -> `scratch.observations`: what cost allocation needs of each observation.
- TRACES -> `scratch.traces`: the trace fields the legacy layouts keep off their observations (user,
  session, tags, metadata); `attach_traces` gives each observation its trace's.
`scratch.sources` names where each row came from (file_rank: a file, or an API request). The scratch
database is attached to the warehouse connection (shared by its cursors; spilled to disk by DuckDB above
its memory limit; compressed for API pages, whose many small inserts spill slowly: 37k -> 46k
generations/s at a million). The prompt and completion text is read by the parser, never selected: it
never reaches a table.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

import duckdb

from finops_pipeline.warehouse import MONEY


@dataclass(frozen=True)
class RowKind:
    """One kind of Langfuse row: the raw fields read of it, and what validation makes of them."""

    table: str  # the scratch table its rows go to
    columns: dict[str, str]  # raw field (the export's snake_case name) -> VARCHAR, or JSON for nested values
    validate: Callable[[str], str]  # SQL of the table's rows, from SQL of `fields` (see json_fields)
    ddl: str


# Observations: the fields cost allocation needs. Nested values are read as JSON text, parsed further only
# for the parts used, so validation can name exactly what is wrong. `input`/`output` are never named.
OBSERVATION_COLUMNS = {
    "id": "VARCHAR", "trace_id": "VARCHAR", "project_id": "VARCHAR", "type": "VARCHAR", "name": "VARCHAR",
    "start_time": "VARCHAR", "environment": "VARCHAR", "user_id": "VARCHAR", "session_id": "VARCHAR",
    "provided_model_name": "VARCHAR", "model": "VARCHAR", "usage_details": "JSON", "cost_details": "JSON",
    "total_cost": "JSON", "prompt_name": "VARCHAR", "prompt_version": "VARCHAR", "tags": "JSON", "metadata": "JSON",
}
# Traces (the legacy export's `traces/`, GET /api/public/traces): what their observations lack.
TRACE_COLUMNS = {
    "id": "VARCHAR", "project_id": "VARCHAR", "timestamp": "VARCHAR", "user_id": "VARCHAR",
    "session_id": "VARCHAR", "tags": "JSON", "metadata": "JSON",
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
TRACES_DDL = """
CREATE OR REPLACE TABLE scratch.traces (
    file_rank INTEGER, line BIGINT, reason VARCHAR, id VARCHAR, project_id VARCHAR, timestamp TIMESTAMP,
    user_id VARCHAR, session_id VARCHAR, tags VARCHAR[], metadata_values VARCHAR[]
)
"""
# The token kinds the staging table keeps as columns (genai-prices' unit names), and with `total` what is not
# `usage_other`.
MAIN_UNITS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "output_reasoning_tokens")
_KEPT_UNITS = (*MAIN_UNITS, "total")
_KEPT = "(" + ", ".join(f"'{u}'" for u in _KEPT_UNITS) + ")"
# The observations that can carry cost: a generation, or any type Langfuse priced or counted tokens for.
COST_CARRYING = "(type = 'GENERATION' OR langfuse_cost IS NOT NULL OR total_tokens > 0)"

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
-- Numbers of `amounts` whose kind (same position in `kinds`) is `kind`; NULL when there are none.
CREATE OR REPLACE MACRO scratch.sum_of(amounts, kinds, kind) AS
    list_sum(list_where(amounts, list_transform(kinds, lambda k: k = kind)));
CREATE OR REPLACE MACRO scratch.sum_except(amounts, kinds, kind) AS
    list_sum(list_where(amounts, list_transform(kinds, lambda k: k <> kind)));
-- The units beyond the five the staging table keeps as columns, with their counts: {unit: count}.
CREATE OR REPLACE MACRO scratch.other_usage(counts, units) AS map_from_entries(list_transform(
    list_distinct(list_filter(units, lambda u: u NOT IN ('input_tokens', 'output_tokens', 'cache_read_tokens',
                                                          'cache_write_tokens', 'output_reasoning_tokens', 'total'))),
    lambda u: {'key': u, 'value': TRY_CAST(scratch.sum_of(counts, units, u) AS BIGINT)}));
-- The first position where `texts` holds a value that is not a whole number >= 0 (`numbers`: the same, cast).
CREATE OR REPLACE MACRO scratch.bad_count_at(texts, numbers) AS list_position(list_transform(list_zip(texts, numbers),
    lambda p: p[1] IS NULL OR coalesce(p[2] >= 0 AND p[2] % 1 = 0, false)), false);
-- A key without case and separators (_ - . and spaces), as `normal_key` in Python: replace() costs far less
-- than a regular expression, for every key of every tag of every row.
CREATE OR REPLACE MACRO scratch.normal_key(k) AS
    lower(replace(replace(replace(replace(k, '_', ''), '-', ''), '.', ''), ' ', ''));
-- A CSV cell's text (Langfuse's older writers wrapped text in a JSON string literal: "\"obs-1\"" is obs-1, and
-- null was written as ""); empty is NULL, CSV has no other null. And a nested value from its cell (JSON text,
-- or a JSON string literal of JSON text).
CREATE OR REPLACE MACRO scratch.csv_text(t) AS nullif(CASE
    WHEN starts_with(t, '"') AND json_valid(t) THEN t::JSON ->> '$' ELSE t END, '');
CREATE OR REPLACE MACRO scratch.csv_json(cell) AS CASE
    WHEN json_type(cell) <> 'VARCHAR' THEN cell  -- a JSON reader's value (a CSV cell is always a string)
    WHEN scratch.csv_text(cell ->> '$') IS NULL THEN NULL
    WHEN json_valid(scratch.csv_text(cell ->> '$')) THEN scratch.csv_text(cell ->> '$')::JSON
    ELSE cell END;  -- text that is not JSON: kept, for validation to name
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


def metadata_values_sql(metadata: str, vocabulary: Vocabulary, is_map: bool = False) -> str:
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


def nested_json(name: str, json_sql: str) -> str:
    """The `fields` columns of usage_details or cost_details (`name`), from its value as JSON."""
    return (f"json_type({json_sql}) AS {name}_type, json_keys({json_sql}) AS {name}_keys, "
            f"json_extract_string({json_sql}, '$.*') AS {name}_text, {json_sql} AS {name}")


def json_fields(kind: RowKind, vocabulary: Vocabulary) -> str:
    """The columns a kind's `validate` takes (`fields`), from its raw columns whose nested values are JSON:
    file_rank, line, is_object; the VARCHAR fields as text; tags (VARCHAR[]: NULL where not an array);
    metadata_values (the vocabulary's values, VARCHAR[]); for usage_details and cost_details, their _type
    ('OBJECT', 'NULL' or another JSON type), _keys and _text (keys and values as text, in order) and the value
    itself for messages; total_text."""
    columns = ["file_rank", "line", "is_object"]
    for name, sql_type in kind.columns.items():
        if sql_type == "VARCHAR":
            columns.append(name)
        elif name in ("usage_details", "cost_details"):
            columns.append(nested_json(name, name))
        elif name == "tags":
            columns.append("TRY_CAST(tags AS VARCHAR[]) AS tags")
        elif name == "metadata":
            columns.append(f"{metadata_values_sql('metadata', vocabulary)} AS metadata_values")
        elif name == "total_cost":
            columns.append("nullif(total_cost ->> '$', '') AS total_text")
    return ", ".join(columns)


def _observation_rows(parsed_sql: str, reasons: str, usage: dict[str, str]) -> str:
    """Rows of scratch.observations from `parsed_sql`: `fields` plus `ts` (start_time as naive UTC). `reasons`:
    the CASE branches that name what is wrong with usage and cost; `usage`: SQL of the token columns, `other`
    and `cost` (see _validate_observations and typed_usage)."""
    return f"""
SELECT file_rank, line,
    CASE
        WHEN NOT is_object THEN 'malformed ' || $unit || ': not a JSON object'
        WHEN coalesce(trim(id), '') = '' THEN 'missing id'
        WHEN coalesce(trim(start_time), '') = '' THEN 'missing start_time'
        WHEN ts IS NULL THEN 'unparseable start_time: ' || left(start_time, 40)
        {reasons}
    END AS reason,
    id, trace_id, project_id, type, name, ts AS start_time, nullif(trim(coalesce(provided_model_name, model)), ''),
    environment, user_id, session_id, prompt_name, TRY_CAST(prompt_version AS INTEGER), tags, metadata_values,
    {usage['input_tokens']}, {usage['output_tokens']}, {usage['cache_read_tokens']}, {usage['cache_write_tokens']},
    {usage['output_reasoning_tokens']}, {usage['total']}, {usage['other']}, {usage['cost']}
FROM ({parsed_sql})
"""


def _validate_observations(fields_sql: str) -> str:
    """Rows of scratch.observations from `fields` of observations (`$unit`: what a row is, for messages), whose
    usage and cost are JSON or text: every value is parsed and checked, every key sorted into its unit."""
    parsed = f"""
WITH parsed AS (
    SELECT *,
        scratch.utc_time(nullif(trim(start_time), '')) AS ts,
        list_transform(usage_details_text, lambda v: TRY_CAST(v AS DOUBLE)) AS usage_numbers,
        list_transform(usage_details_keys, lambda k: scratch.usage_unit(lower(k))) AS usage_units,
        list_transform(cost_details_text, lambda v: TRY_CAST(v AS {MONEY})) AS amounts,
        TRY_CAST(total_text AS {MONEY}) AS total_amount
    FROM ({fields_sql})
)
SELECT *,
    -- token counts are whole numbers >= 0 (JSON numbers, or numeric text: ClickHouse quotes UInt64)
    coalesce(list_count(usage_numbers) = list_count(usage_details_text) AND coalesce(list_min(usage_numbers) >= 0, true)
             AND list_sum(list_transform(usage_numbers, lambda n: n % 1)) = 0, true) AS usage_ok,
    coalesce(list_count(amounts) = list_count(cost_details_text) AND coalesce(list_min(amounts) >= 0, true), true) AS cost_ok,
    list_transform(usage_numbers, lambda n: TRY_CAST(n AS BIGINT)) AS counts
FROM parsed
"""
    reasons = """
        WHEN usage_details_type NOT IN ('OBJECT', 'NULL') THEN 'usage_details is not an object: ' || left(usage_details::VARCHAR, 40)
        WHEN NOT usage_ok THEN 'usage_details.' || usage_details_keys[scratch.bad_count_at(usage_details_text, usage_numbers)]
            || ' is not a non-negative whole number: '
            || left(usage_details_text[scratch.bad_count_at(usage_details_text, usage_numbers)], 40)
        WHEN list_sum(usage_numbers) >= 9223372036854775807 THEN 'usage_details counts add up to '
            || list_sum(usage_numbers)::VARCHAR || ', more than a count can hold (2^63 - 1)'
        WHEN total_text IS NOT NULL AND total_amount IS NULL THEN 'total_cost is not a number: ' || left(total_text, 40)
        WHEN total_amount < 0 THEN 'negative total_cost: ' || total_text
        WHEN cost_details_type NOT IN ('OBJECT', 'NULL') THEN 'cost_details is not an object: ' || left(cost_details::VARCHAR, 40)
        WHEN NOT cost_ok THEN 'cost_details.' || cost_details_keys[scratch.bad_amount_at(cost_details_text, amounts)]
            || ' is not a non-negative number: ' || left(cost_details_text[scratch.bad_amount_at(cost_details_text, amounts)], 40)"""
    # (TRY_CAST: counts past what BIGINT holds are on a row the range check quarantines)
    usage = {kind: f"coalesce(TRY_CAST(scratch.sum_of(counts, usage_units, '{kind}') AS BIGINT), 0)" for kind in MAIN_UNITS}
    usage |= {
        # the total key, else the sum of the token counts (not characters, seconds or searches)
        "total": """coalesce(TRY_CAST(scratch.sum_of(counts, usage_units, 'total') AS BIGINT), TRY_CAST(list_sum(list_where(
                  counts, list_transform(usage_units, lambda u: u LIKE '%tokens' OR u LIKE 'unsorted:%'))) AS BIGINT), 0)""",
        "other": f"""CASE WHEN list_bool_or(list_transform(usage_units, lambda u: u NOT IN {_KEPT}))
         THEN scratch.other_usage(counts, usage_units) END""",
        # Langfuse's own price: cost_details.total, else the sum of cost_details, else a total_cost above 0. Not a
        # total_cost of 0 beside no details: in the events table (observations_v2, the v2 API) total_cost is an
        # alias of cost_details['total'], which ClickHouse reads as 0 when Langfuse had no price.
        "cost": """coalesce(scratch.sum_of(amounts, cost_details_keys, 'total'),
             scratch.sum_except(amounts, cost_details_keys, 'total'), CASE WHEN total_amount > 0 THEN total_amount END)""",
    }
    return _observation_rows(parsed, reasons, usage)


def typed_usage(units: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The reasons and `usage` of _observation_rows for fields whose `usage_details` is a MAP of whole numbers,
    `cost_details` a MAP of exact numbers and `total_cost` an exact number (Parquet as Langfuse writes it): no
    value to parse, and, the keys being known (`units`: each key the day's files hold -> its unit, as
    scratch.usage_unit sorts it), each unit is the sum of its keys' values, looked up. Same rows as the JSON
    way, in half the time."""
    def total(keys: list[str]) -> str:  # NULL where the row holds none of `keys` (or only NULLs); too big: NULL too,
        # on a row the range check quarantines
        return ("TRY_CAST(list_sum([" + ", ".join(f"usage_details['{_quoted(k)}']" for k in keys) + "]) AS BIGINT)"
                if keys else "NULL")

    def present(keys: list[str]) -> str:
        return " OR ".join(f"map_contains(usage_details, '{_quoted(k)}')" for k in keys) or "false"

    of = {unit: [k for k, u in units.items() if u == unit] for unit in dict.fromkeys(units.values())}
    usage = {kind: f"coalesce({total(of.get(kind, []))}, 0)" for kind in MAIN_UNITS}
    # the total key, else the sum of the token counts (not characters, seconds or searches)
    tokens = [k for k, u in units.items() if u.endswith("tokens") or u.startswith("unsorted:")]
    usage["total"] = f"coalesce({total(of.get('total', []))}, {total(tokens)}, 0)"
    others = [f"CASE WHEN {present(keys)} THEN {{'key': '{_quoted(unit)}', 'value': {total(keys)}}} END"
              for unit, keys in of.items() if unit not in _KEPT_UNITS]
    usage["other"] = (f"nullif(map_from_entries(list_filter([{', '.join(others)}], lambda e: e IS NOT NULL)), MAP {{}})"
                      if others else "NULL::MAP(VARCHAR, BIGINT)")
    usage["cost"] = (f"coalesce(cost_details['total'], list_sum(map_values(cost_details)),"
                     f" CASE WHEN total_cost > 0 THEN total_cost END)::{MONEY}")
    first_bad = "list_position(list_transform(map_values({0}), lambda n: coalesce(n >= 0, true)), false)"
    # a cost as its text would be in JSON: -0.5, not -0.500000000000 (and -10 stays -10)
    text = "(CASE WHEN contains(({0})::VARCHAR, '.') THEN rtrim(rtrim(({0})::VARCHAR, '0'), '.') ELSE ({0})::VARCHAR END)"
    reasons = f"""
        WHEN NOT coalesce(list_min(map_values(usage_details)) >= 0, true) THEN 'usage_details.'
            || map_keys(usage_details)[{first_bad.format('usage_details')}] || ' is not a non-negative whole number: '
            || map_values(usage_details)[{first_bad.format('usage_details')}]::VARCHAR
        WHEN list_sum(map_values(usage_details)::HUGEINT[]) > 9223372036854775807 THEN 'usage_details counts add up to '
            || list_sum(map_values(usage_details)::HUGEINT[])::VARCHAR || ', more than a count can hold (2^63 - 1)'
        WHEN total_cost < 0 THEN 'negative total_cost: ' || {text.format('total_cost')}
        WHEN NOT coalesce(list_min(map_values(cost_details)) >= 0, true) THEN 'cost_details.'
            || map_keys(cost_details)[{first_bad.format('cost_details')}] || ' is not a non-negative number: '
            || {text.format(f"map_values(cost_details)[{first_bad.format('cost_details')}]")}"""
    return reasons, usage


def validate_typed(fields_sql: str, units: dict[str, str]) -> str:
    """Rows of scratch.observations from typed fields (see typed_usage)."""
    reasons, usage = typed_usage(units)
    return _observation_rows(f"SELECT *, scratch.utc_time(nullif(trim(start_time), '')) AS ts FROM ({fields_sql})",
                             reasons, usage)


def _quoted(text: str) -> str:
    return text.replace("'", "''")


def _validate_traces(fields_sql: str) -> str:
    """Rows of scratch.traces from `fields` of traces: one with no id cannot be joined, and is quarantined."""
    return f"""
SELECT file_rank, line,
    CASE WHEN NOT is_object THEN 'malformed trace ' || $unit || ': not a JSON object'
         WHEN coalesce(trim(id), '') = '' THEN 'trace without id' END AS reason,
    id, project_id, scratch.utc_time(nullif(trim(timestamp), '')) AS timestamp, user_id, session_id, tags, metadata_values
FROM ({fields_sql})
"""


OBSERVATIONS = RowKind("observations", OBSERVATION_COLUMNS, _validate_observations, OBSERVATIONS_DDL)
TRACES = RowKind("traces", TRACE_COLUMNS, _validate_traces, TRACES_DDL)


def validate_json(kind: RowKind, raw_sql: str, vocabulary: Vocabulary) -> str:
    """Rows of the kind's scratch table from rows of its raw columns whose nested values are JSON."""
    return kind.validate(f"SELECT {json_fields(kind, vocabulary)} FROM ({raw_sql})")


def from_text(kind: RowKind, lines_sql: str, csv: bool = False, names: dict[str, str | None] | None = None,
              valid_json: bool = False) -> str:
    """Raw columns of `kind` from `lines_sql` (file_rank, line, text), where text should be one JSON object
    whose keys are `names` (raw column -> key; None: not sent), by default the export's.

    `csv`: each text is a CSV record as an object of its cells' text; a cell holding a JSON string literal
    is decoded first (Langfuse v3.146-v3.156 wrote every text cell so, older versions those with a comma),
    and nested values are parsed from their cell's text. `valid_json`: every text is known to be JSON (an
    element of a parsed array), so only its type is checked."""
    names = names or {n: n for n in kind.columns}
    struct = "'" + json.dumps({names[n]: t for n, t in kind.columns.items() if names[n]}) + "'"
    fields = {n: f'r."{names[n]}"' if names[n] else f"NULL::{t}" for n, t in kind.columns.items()}
    if csv:
        fields = {n: (f"scratch.csv_json({f})" if kind.columns[n] == "JSON" else f"scratch.csv_text({f})")
                  for n, f in fields.items()}
    columns = ", ".join(f"{fields[n]} AS {n}" for n in kind.columns)
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


# What a broken file raises. Anything else (a binder or parser error) is a bug here, and must fail loudly.
UNREADABLE = (duckdb.IOException, duckdb.InvalidInputException, duckdb.ConversionException)


def unreadable(exc: BaseException) -> bool:
    """Whether `exc` says a file cannot be read: UNREADABLE, or DuckDB's bare Error, which a Parquet footer
    that does not decode raises ("Variable-length int over 10 bytes"); its subclasses (binder, parser,
    catalog errors) are bugs here."""
    return isinstance(exc, UNREADABLE) or type(exc) is duckdb.Error


@dataclass(frozen=True)
class Rejected:
    """What could not be read at all: a whole file (line None) or one CSV record."""

    file: str  # a URL or local path
    line: int | None
    reason: str


def start_scratch(conn: duckdb.DuckDBPyConnection, compress: bool = False) -> None:
    """Empty `scratch.observations`, `scratch.traces` and `scratch.sources` (file_rank, file, file_day: the
    day where rows with no readable time of their own are filed; lo, hi: an API request's window, the times
    its rows may have; project: an export file's project folder; legacy: its observations lack their trace's
    fields, joined by sources/legacy_export.py). `compress`: for many small inserts (API pages), which spill badly; big file inserts
    are faster uncompressed."""
    conn.execute(f"ATTACH IF NOT EXISTS ':memory:' AS scratch{' (COMPRESS)' if compress else ''}")
    conn.execute(_MACROS)
    conn.execute(OBSERVATIONS_DDL)
    conn.execute(TRACES_DDL)
    conn.execute("CREATE OR REPLACE TABLE scratch.sources "
                 "(file_rank INTEGER, file VARCHAR, file_day DATE, lo TIMESTAMP, hi TIMESTAMP, project VARCHAR,"
                 " legacy BOOLEAN DEFAULT false)")


def first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:300]
