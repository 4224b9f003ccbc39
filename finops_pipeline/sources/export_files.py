"""Langfuse export files into validated rows (sources/observation_rows.py), whatever their table and format:
the reading both export layouts share (observations_v2; observations and traces, joined by
sources/legacy_export.py).

All JSONL files of a table are read in one statement, by DuckDB's JSON reader, on all its threads, a `.gz`
inflated by ISA-L (sources/isal_gzip.py: three times as fast as DuckDB's own gzip); all Parquet files in
another, straight from their typed columns. A statement adds all its rows or none: when one file breaks it
(DuckDB's JSON reader stops at the first line that is not a JSON object), each file is read on its own, so
a broken file costs only itself. That reader cannot number lines (it skips blank ones), so a JSONL file
where it fails, or that holds any row to quarantine, is read again line by line: every row of it then has
its exact line number. Parquet has row numbers, so it needs no second way. CSV (objects and arrays as JSON
text in cells) and JSON-array files are always read line by line, a file per statement, concurrently.
"""

from __future__ import annotations

import posixpath
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb

from finops_pipeline.sources import isal_gzip
from finops_pipeline.sources.export_listing import LEGACY, ExportFile
from finops_pipeline.sources.observation_rows import (
    OBSERVATIONS, TRACES, Rejected, RowKind, Vocabulary, first_line, from_text, metadata_values_sql,
    nested_json, start_scratch, unreadable, validate_json, validate_typed,
)
from finops_pipeline.warehouse import MONEY, utc_cursor

# The kind of row each export table holds.
KINDS = {"observations_v2": OBSERVATIONS, "observations": OBSERVATIONS, "traces": TRACES}

# The rank of each of several files read in one statement (`filename=true`): `$files` and `$ranks` pair up.
_RANK_OF_FILE = "JOIN (SELECT unnest($files) AS filename, unnest($ranks) AS file_rank) s USING (filename)"

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

_WHOLE = r"U?(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT)"
_SCALAR = rf"(VARCHAR|BOOLEAN|{_WHOLE}|DECIMAL\(\d+,\d+\)|FLOAT|DOUBLE)"


def _fits_money(sql_type: str) -> bool:
    """Whether every value of `sql_type` is a MONEY (DECIMAL(38, 12)) as it is: an integer type up to 64 bits, or
    a decimal of at most 12 places and 26 digits before them. A cost of another type (more places, which the
    text path rounds one by one; a float) is read the way JSON is."""
    decimal = re.fullmatch(r"DECIMAL\((\d+),(\d+)\)", sql_type)
    if decimal:
        width, scale = map(int, decimal.groups())
        return scale <= 12 and width - scale <= 26
    return bool(re.fullmatch(r"U?(TINYINT|SMALLINT|INTEGER|BIGINT)", sql_type))


def _fast_jsonl(kind: RowKind) -> str:
    """Every JSONL file of a table in one statement, on all of DuckDB's threads. Tags are typed as Langfuse
    writes them (an array: a list costs less than JSON text to read); any other value fails the statement,
    and its file is read line by line."""
    columns = {**kind.columns, "tags": "VARCHAR[]"}
    return ("SELECT s.file_rank, NULL::BIGINT AS line, true AS is_object, " + ", ".join(f"r.{n}" for n in kind.columns)
            + " FROM read_json($files, format='newline_delimited', records=true, filename=true, "
            f"compression=$compression, columns={columns!r}) r {_RANK_OF_FILE}")


def _parquet_sql(conn: duckdb.DuckDBPyConnection, kind: RowKind, paths: list[str], vocabulary: Vocabulary) -> str:
    """The kind's rows straight from Parquet's typed columns, for every file in `paths` (`$files`) in one
    statement. Observations whose usage is a map of whole numbers and whose cost is exact (as Langfuse writes
    them) are validated on those types (observation_rows.typed_usage, its units found by reading the files'
    usage keys first); maps of other scalars are read as maps, with no detour through JSON; a column of
    another type is read as JSON (text as the JSON it holds); an absent one is NULL."""
    source = "read_parquet($files, file_row_number=true, filename=true, union_by_name=true)"
    types = dict(row[:2] for row in conn.execute(f"DESCRIBE SELECT * FROM {source}", {"files": paths}).fetchall())

    def as_json(name: str) -> str:
        if name not in types:
            return "NULL::JSON"
        if types[name] == "VARCHAR":  # JSON written as text by another tool; other text stays a JSON string
            return f"(CASE WHEN json_valid({name}) THEN {name}::JSON ELSE to_json({name}) END)"
        return f"to_json({name})"

    cost_value = re.sub(r"^MAP\(VARCHAR, (.*)\)$", r"\1", types.get("cost_details", "MAP(VARCHAR, INTEGER)"))
    typed = (kind is OBSERVATIONS and bool(re.fullmatch(rf"MAP\(VARCHAR, {_WHOLE}\)", types.get("usage_details", "")))
             and _fits_money(cost_value) and _fits_money(types.get("total_cost", "INTEGER")))
    fields = []
    for name, sql_type in kind.columns.items():
        if sql_type == "VARCHAR":
            fields.append(f"{name}::VARCHAR AS {name}" if name in types else f"NULL::VARCHAR AS {name}")
        elif typed and name in ("usage_details", "cost_details", "total_cost"):
            absent = MONEY if name == "total_cost" else f"MAP(VARCHAR, {MONEY})"
            fields.append(name if name in types else f"NULL::{absent} AS {name}")
        elif name in ("usage_details", "cost_details") and name not in types:
            fields.append(f"NULL::VARCHAR AS {name}_type, NULL::VARCHAR[] AS {name}_keys, "
                          f"NULL::VARCHAR[] AS {name}_text, NULL::VARCHAR AS {name}")
        elif name in ("usage_details", "cost_details") and re.fullmatch(rf"MAP\(VARCHAR, {_SCALAR}\)", types[name]):
            fields.append(f"CASE WHEN {name} IS NULL THEN 'NULL' ELSE 'OBJECT' END AS {name}_type, "
                          f"map_keys({name}) AS {name}_keys, map_values({name})::VARCHAR[] AS {name}_text, {name}")
        elif name in ("usage_details", "cost_details"):
            fields.append(nested_json(name, as_json(name)))
        elif name == "tags":
            fields.append("tags" if types.get("tags") == "VARCHAR[]" else f"TRY_CAST({as_json('tags')} AS VARCHAR[]) AS tags")
        elif name == "metadata" and types.get("metadata") == "MAP(VARCHAR, VARCHAR)":
            fields.append(f"{metadata_values_sql('metadata', vocabulary, is_map=True)} AS metadata_values")
        elif name == "metadata":
            fields.append(f"{metadata_values_sql(as_json('metadata'), vocabulary)} AS metadata_values")
        elif name == "total_cost":
            fields.append("nullif(total_cost::VARCHAR, '') AS total_text" if re.fullmatch(_SCALAR, types.get(name, ""))
                          else f"nullif({as_json('total_cost')} ->> '$', '') AS total_text")
    fields_sql = (f"SELECT s.file_rank, file_row_number + 1 AS line, true AS is_object, {', '.join(fields)}"
                  f" FROM {source} r {_RANK_OF_FILE}")
    if not typed:
        return kind.validate(fields_sql)
    units = dict(conn.execute(
        f"SELECT k, scratch.usage_unit(lower(k)) FROM (SELECT DISTINCT unnest(map_keys(usage_details)) AS k FROM {source})",
        {"files": paths}).fetchall()) if "usage_details" in types else {}
    return validate_typed(fields_sql, units)


def read_files(conn: duckdb.DuckDBPyConnection, files: list[ExportFile], vocabulary: Vocabulary) -> list[Rejected]:
    """Load export `files` into the scratch tables of their kinds (observations, traces); return what could not
    be read at all, and why. A file's rank is its place in `files`: later files win on duplicate ids. A file's
    rows with no readable time are filed under the day its window starts."""
    start_scratch(conn)
    isal_gzip.register(conn)
    conn.execute("INSERT INTO scratch.sources BY NAME SELECT unnest($ranks) AS file_rank, unnest($files) AS file, "
                 "unnest($days) AS file_day, unnest($projects) AS project, unnest($legacy) AS legacy", {
        "ranks": list(range(len(files))), "files": [f.path for f in files],
        "days": [(f.window_start or f.window_end).date() for f in files],
        "projects": [posixpath.basename(f.project) for f in files],
        "legacy": [f.table == LEGACY for f in files]})
    rejected: list[Rejected] = []
    groups: dict[tuple[str, str], list[int]] = {}
    for rank, export_file in enumerate(files):
        if not export_file.absent:  # listed in a manifest, not in the store: nothing to read (completeness.py)
            groups.setdefault((KINDS[export_file.table].table, export_file.format), []).append(rank)
    for (_, fmt), ranks in groups.items():
        kind = KINDS[files[ranks[0]].table]
        if fmt in ("jsonl", "parquet") and _read_fast(conn, kind, fmt, {r: files[r].readable for r in ranks}, vocabulary):
            continue
        # No fast way, or one file broke it: each file on its own, the fast way first where there is one.
        rejected += _each_file(conn, ranks, lambda cursor, rank: _read_file(cursor, rank, files[rank], vocabulary))
    # Rows the fast JSON reader read carry no line number: a file with any row to quarantine is read
    # again line by line, so that every quarantined row says where it is.
    for kind in (OBSERVATIONS, TRACES):
        to_number = [rank for (rank,) in conn.execute(
            f"SELECT DISTINCT file_rank FROM scratch.{kind.table} WHERE reason IS NOT NULL AND line IS NULL").fetchall()]
        if to_number:
            conn.execute(f"DELETE FROM scratch.{kind.table} WHERE list_contains($ranks, file_rank)", {"ranks": to_number})
            rejected += _each_file(conn, to_number, lambda cursor, rank: _read_lines(cursor, rank, files[rank], vocabulary))
    for kind in (OBSERVATIONS, TRACES):  # a row without its project_id is of the project whose folder holds it
        conn.execute(f"UPDATE scratch.{kind.table} t SET project_id = s.project FROM scratch.sources s "
                     "WHERE t.project_id IS NULL AND t.file_rank = s.file_rank")
    return rejected


def _each_file(conn: duckdb.DuckDBPyConnection, ranks, read) -> list[Rejected]:
    """`read(cursor, rank)` for each file, as many at once as DuckDB has threads."""
    threads = int(conn.execute("SELECT current_setting('threads')").fetchone()[0])

    def on_own_cursor(rank: int) -> list[Rejected]:
        with utc_cursor(conn) as cursor:
            return read(cursor, rank)

    with ThreadPoolExecutor(max(1, threads)) as pool:
        return [r for rejected in pool.map(on_own_cursor, ranks) for r in rejected]


def _read_fast(conn: duckdb.DuckDBPyConnection, kind: RowKind, fmt: str, paths: dict[int, str],
               vocabulary: Vocabulary) -> bool:
    """The files `paths` (rank -> path; all JSONL or all Parquet, all of `kind`) in one statement; False, having
    added nothing, if one of them cannot be read that way."""
    local = list(paths.values())
    params = {"files": local, "ranks": list(paths), "unit": "line"}
    try:
        if fmt == "parquet":
            sql = _parquet_sql(conn, kind, local, vocabulary)
        else:
            params["files"], params["compression"] = isal_gzip.for_duckdb(local)
            if params["compression"] != "uncompressed" and any(isal_gzip.damage(p) for p in local if p.endswith(".gz")):
                return False  # cut short: DuckDB's own gzip would take its first part for all of it (_read_lines)
            sql = validate_json(kind, _fast_jsonl(kind), vocabulary)
        conn.execute(f"INSERT INTO scratch.{kind.table} {sql}", params)
        return True
    except duckdb.Error as exc:
        if unreadable(exc) or isal_gzip.failed_on(local):
            return False
        raise


def _read_file(conn: duckdb.DuckDBPyConnection, rank: int, export_file: ExportFile, vocabulary: Vocabulary) -> list[Rejected]:
    """One file: the fast way where the format has one, else (or when it fails) line by line."""
    kind = KINDS[export_file.table]
    if export_file.format in ("jsonl", "parquet") and _read_fast(conn, kind, export_file.format,
                                                                 {rank: export_file.readable}, vocabulary):
        return []
    return _read_lines(conn, rank, export_file, vocabulary)


def _read_lines(conn: duckdb.DuckDBPyConnection, rank: int, export_file: ExportFile, vocabulary: Vocabulary) -> list[Rejected]:
    fmt, kind = export_file.format, KINDS[export_file.table]
    if export_file.readable.endswith(".gz") and Path(export_file.readable).is_file():
        damaged = isal_gzip.damage(export_file.readable)
        if damaged:  # DuckDB's own gzip would read its first part as if it were all
            return [Rejected(export_file.path, None, f"unreadable {fmt} file: gzip stream {damaged}")]
    try:  # one statement: a file that fails to read adds nothing
        conn.execute(f"INSERT INTO scratch.{kind.table} "
                     + validate_json(kind, from_text(kind, _LINES[fmt], csv=fmt == "csv"), vocabulary),
                     {"rank": rank, "file": export_file.readable, "unit": "line"})
    except duckdb.Error as exc:
        if not unreadable(exc):
            raise
        return [Rejected(export_file.path, None, f"unreadable {fmt} file: {first_line(exc)}")]
    if fmt == "csv":
        return [Rejected(export_file.path, line, f"malformed CSV record: {error[:200]}") for line, error in
                conn.execute("SELECT line, error_message FROM csv_rejects ORDER BY line").fetchall()]
    return []
