"""Pages of Langfuse's public API into validated rows (sources/observation_rows.py), for both API paths.

A page is parsed by DuckDB straight from the response body: each row keeps its position in the page as its
line number, and its source is the request (window and page).
"""

from __future__ import annotations

import itertools
import threading
from datetime import datetime, timezone

import duckdb

from finops_pipeline.sources.langfuse_api import MalformedPage, Window
from finops_pipeline.sources.observation_rows import RowKind, Vocabulary, first_line, from_text, start_scratch, validate_json
from finops_pipeline.warehouse import utc_cursor

# Pages, each a response body, as (file_rank, line, text): one row per element of its `data` array.
_PAGE_ROWS = ("SELECT file_rank, generate_subscripts(rows, 1) AS line, unnest(rows)::VARCHAR AS text FROM"
              " (SELECT unnest($ranks) AS file_rank, json_extract(unnest($bodies), '$.data[*]') AS rows)")
# The time each kind of row is cut by: a row the server sent for another window is not this window's.
_TIME = {"observations": "start_time", "traces": "timestamp"}


class PageLoader:
    """Loads pages of an endpoint into the scratch table of their `kind`: a `LoadPage` for the API clients,
    called from their worker threads. `names` maps the kind's raw columns to the endpoint's keys (None: not
    sent); `meta` is the JSON path of what the caller needs from each page (a cursor, a count), returned;
    `legacy`: observations of the legacy API, which lack their trace's fields (sources/legacy_export.py).

    Each page is checked (is it JSON with a `data` array?) when it arrives; its rows are inserted `batch`
    pages at a time, in one statement (a statement costs as much as a page's rows, whatever its size), so
    memory holds at most a batch of bodies. Call `flush()` after the last page. Rows the server sent for
    another window are ignored: that window fetches them.
    """

    def __init__(self, conn: duckdb.DuckDBPyConnection, kind: RowKind, names: dict[str, str | None],
                 vocabulary: Vocabulary, meta: str, batch: int = 8, ranks: itertools.count | None = None,
                 legacy: bool = False):
        self._conn = conn
        self._batch = batch
        self._meta = meta
        self._legacy = legacy
        self._pending: list[tuple[int, str, Window, str]] = []  # rank, where, window, body
        self._lock = threading.Lock()
        # As many batches at once as DuckDB has threads: more only add memory (a batch parsing in
        # DuckDB holds several times its bodies), and under the memory limit that fails the day.
        threads = int(conn.execute("SELECT current_setting('threads')").fetchone()[0])
        self._loading = threading.BoundedSemaphore(max(1, threads))
        # fetch order: a row fetched again wins, like a later export; shared by loaders of one scratch
        self._ranks = ranks or itertools.count()
        time = _TIME[kind.table]
        self._insert = (
            f"INSERT INTO scratch.{kind.table} SELECT v.* FROM "
            f"({validate_json(kind, from_text(kind, _PAGE_ROWS, names=names, valid_json=True), vocabulary)}) v "
            "JOIN scratch.sources w USING (file_rank) "
            f"WHERE v.{time} IS NULL OR (v.{time} >= w.lo AND v.{time} < w.hi)")

    @staticmethod
    def start(conn: duckdb.DuckDBPyConnection) -> itertools.count:
        """Empty scratch tables for a day of pages; the rank counter its loaders share."""
        start_scratch(conn, compress=True)
        return itertools.count()

    def check(self, body: str) -> str | None:
        """The page's `meta` value, once it is known to be a page: MalformedPage if it is not."""
        with utc_cursor(self._conn) as cursor:
            try:
                data, meta = cursor.execute(f"SELECT json_type($body, '$.data'), $body ->> '{self._meta}'",
                                            {"body": body}).fetchone()
            except duckdb.InvalidInputException as exc:
                raise MalformedPage(first_line(exc)) from None
        if data != "ARRAY":
            raise MalformedPage(f"no `data` array ({data or 'missing'})")
        return meta

    def __call__(self, where: str, window: Window, body: str) -> str | None:
        meta = self.check(body)
        self.add(where, window, body)
        return meta

    def add(self, where: str, window: Window, body: str) -> None:
        """Queue a checked page's rows."""
        with self._lock:
            self._pending.append((next(self._ranks), where, window, body))
            batch = self._pending if len(self._pending) >= self._batch else None
            if batch:
                self._pending = []
        if batch:
            self._load(batch)

    def flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        if batch:
            self._load(batch)

    def _load(self, pages: list[tuple[int, str, Window, str]]) -> None:
        ranks, wheres, windows, bodies = (list(column) for column in zip(*pages))
        with self._loading, utc_cursor(self._conn) as cursor:
            cursor.execute("INSERT INTO scratch.sources (file_rank, file, file_day, lo, hi, legacy) SELECT unnest($ranks),"
                           f" unnest($wheres), unnest($days), unnest($los), unnest($his), {self._legacy}",
                           {"ranks": ranks, "wheres": wheres, "days": [w.start.date() for w in windows],
                            "los": [_naive(w.start) for w in windows], "his": [_naive(w.end) for w in windows]})
            cursor.execute(self._insert, {"ranks": ranks, "bodies": bodies, "unit": "row"})


def _naive(moment: datetime) -> datetime:
    """UTC, without the zone: the scratch tables hold naive UTC timestamps."""
    return moment.astimezone(timezone.utc).replace(tzinfo=None)
