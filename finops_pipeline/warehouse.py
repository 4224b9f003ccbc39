"""The warehouse: table definitions, how it is opened, and the one way a partition is replaced.

Two kinds, the same tables and SQL:
- a DuckDB file (the default, FINOPS_HOME/finops.duckdb): one writer process at a time, so every step that opens
  it is in the Dagster pool `duckdb` (dagster.yaml: one step at a time);
- a DuckLake lakehouse (FINOPS_WAREHOUSE=ducklake:postgres:...): Parquet files on object storage, the catalog in
  Postgres, snapshot isolation across tables. Runs on many machines write their days at once; a commit that
  conflicts with another (DuckLake refuses an insert into a table another transaction deleted from) is tried
  again from the start of its transaction (`transactions`).

Money is DECIMAL(38, 12): exact sums, no float drift at cent level however many rows a month holds.
"""

from __future__ import annotations

import atexit
import importlib
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import date
from pathlib import Path

import duckdb
from dagster import get_dagster_logger
from dagster_duckdb import DuckDBResource
from pydantic import Field
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

log = get_dagster_logger(__name__)  # in a step, its messages reach the run's log

MONEY = "DECIMAL(38, 12)"
LAKEHOUSE = "ducklake:"
# Dagster concurrency pool of every step that opens the warehouse: a DuckDB file allows one writer process. A
# lakehouse takes many: no pool. (Read when the code location loads, as the settings are.)
WAREHOUSE_POOL = None if os.environ.get("FINOPS_WAREHOUSE", "").startswith(LAKEHOUSE) else "duckdb"
# The lakehouse's tables written a day at a time in bulk: partitioned by day, a day's files are its own.
PARTITIONED_BY_DAY = ("langfuse_generations", "allocated_costs", "unit_economics", "provider_costs")

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS langfuse_generations (
    day                DATE NOT NULL,
    observation_id     VARCHAR NOT NULL,
    trace_id           VARCHAR,
    project_id         VARCHAR,
    type               VARCHAR,
    name               VARCHAR,
    start_time         TIMESTAMP NOT NULL,   -- UTC
    model              VARCHAR,
    provider           VARCHAR NOT NULL,     -- openai | anthropic | unknown
    input_tokens       BIGINT NOT NULL,      -- uncached input
    output_tokens      BIGINT NOT NULL,      -- output without reasoning
    cached_tokens      BIGINT NOT NULL,      -- cache reads
    cache_write_tokens BIGINT NOT NULL,      -- cache creation
    reasoning_tokens   BIGINT NOT NULL,
    total_tokens       BIGINT NOT NULL,
    usage_other        MAP(VARCHAR, BIGINT), -- other usage units (audio, image tokens, 1-hour cache writes,
                                             -- characters, seconds, ...: genai-prices' unit names; a key no
                                             -- unit fits as 'unsorted:<key>') and their counts
    cost_usd           {MONEY},              -- NULL when unpriced: unknown, not zero
    cost_source        VARCHAR NOT NULL,     -- langfuse | price_table | partially_priced | unpriced
    unpriced_usage     MAP(VARCHAR, BIGINT), -- the usage no price covers (units and counts): NULL when priced
    environment        VARCHAR,
    user_id            VARCHAR,
    session_id         VARCHAR,
    prompt_name        VARCHAR,
    prompt_version     INTEGER,
    tags               VARCHAR[],
    allocation         MAP(VARCHAR, VARCHAR) NOT NULL,
    source_file        VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    source         VARCHAR NOT NULL,         -- which asset put the row here
    day            DATE NOT NULL,
    file           VARCHAR NOT NULL,
    line           BIGINT,
    observation_id VARCHAR,
    reason         VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS allocated_costs (
    day                DATE NOT NULL,
    allocation         MAP(VARCHAR, VARCHAR) NOT NULL,
    provider           VARCHAR NOT NULL,
    model              VARCHAR NOT NULL,
    calls              BIGINT NOT NULL,
    unpriced_calls     BIGINT NOT NULL,
    input_tokens       BIGINT NOT NULL,
    output_tokens      BIGINT NOT NULL,
    cached_tokens      BIGINT NOT NULL,
    cache_write_tokens BIGINT NOT NULL,
    reasoning_tokens   BIGINT NOT NULL,
    total_tokens       BIGINT NOT NULL,
    cost_usd           {MONEY} NOT NULL,     -- priced cost only; unpriced calls are counted above
    project_id         VARCHAR,              -- the Langfuse project the calls were traced in
    priced_usage       MAP(VARCHAR, BIGINT)  -- the priced calls' usage by genai-prices unit (input_tokens, ...,
                                             -- input_audio_tokens, ...): what cost_usd paid for; NULL before v6
);
CREATE TABLE IF NOT EXISTS provider_costs (
    day         DATE NOT NULL,
    provider    VARCHAR NOT NULL,
    model       VARCHAR,                     -- as the bill names it; NULL when the bill does not say
    token_type  VARCHAR,                     -- as the bill names it
    token_kind  VARCHAR NOT NULL,            -- input | cached | cache_write | output | other
    line_item   VARCHAR,
    project_id  VARCHAR,                     -- OpenAI's project, Anthropic's workspace (NULL: the default one)
    cost_usd    {MONEY} NOT NULL,
    source      VARCHAR NOT NULL             -- the file (and line) or the API request
);
CREATE TABLE IF NOT EXISTS cost_reconciliation (
    day                  DATE NOT NULL,
    depth                VARCHAR NOT NULL,   -- provider | model | token_kind
    provider             VARCHAR NOT NULL,
    model                VARCHAR,            -- model and token_kind depths (snapshot date dropped); the model
                                             -- of a provider-depth row of provider `unknown`
    token_kind           VARCHAR,            -- token_kind depth: input | cached | cache_write | output | other
    traced_usd           {MONEY} NOT NULL,
    billed_usd           {MONEY} NOT NULL,
    gap_usd              {MONEY} NOT NULL,   -- billed - traced
    gap_pct              DOUBLE,             -- 100 × gap / billed (%); NULL when nothing was billed
    unpriced_generations BIGINT NOT NULL,
    has_bill             BOOLEAN NOT NULL,   -- the provider bills this day: its gap is judged
    final                BOOLEAN NOT NULL    -- the bill has settled; else provisional (warns at most)
);
CREATE TABLE IF NOT EXISTS materialized_days (   -- the days an asset has written, an empty ($0) day included:
    asset VARCHAR NOT NULL,                       -- a day with no row here is unknown, never $0
    day   DATE NOT NULL,
    written_at TIMESTAMP NOT NULL,
    PRIMARY KEY (asset, day)
);
CREATE TABLE IF NOT EXISTS staged_inputs (  -- what a staged day was read from (staged_inputs.py)
    day          DATE PRIMARY KEY,
    fingerprint  VARCHAR NOT NULL,            -- digest of the export files' listing and the staging settings
    staged_at    TIMESTAMP NOT NULL,
    completeness JSON NOT NULL                -- the extraction_complete result that proved the day whole
);
CREATE TABLE IF NOT EXISTS retired_days (  -- days whose staged generations retention dropped (retention.py)
    day        DATE PRIMARY KEY,
    retired_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS budget_status (
    day                 DATE NOT NULL,
    budget              VARCHAR NOT NULL,    -- its name; '(all spend)' for the total, which has no amount
    scope               VARCHAR NOT NULL,    -- e.g. team=search, or 'all spend'
    period              VARCHAR NOT NULL,    -- monthly | quarterly | weekly
    period_start        DATE NOT NULL,
    period_end          DATE NOT NULL,       -- its last day
    amount_usd          {MONEY},
    spend_usd           {MONEY} NOT NULL,    -- period to date, through `day`, on the cost basis
    share_pct           DOUBLE,              -- spend / amount
    projected_usd       {MONEY} NOT NULL,    -- the period's end: spend + the days left as forecast
    projected_low_usd   {MONEY} NOT NULL,    -- 80% range
    projected_high_usd  {MONEY} NOT NULL,
    projected_share_pct DOUBLE,
    threshold_crossed   DOUBLE,              -- the highest threshold at or under share_pct; NULL: none
    days_missing        INTEGER NOT NULL,    -- days of the period through `day` allocated_costs has not written
    backtest_mape_pct   DOUBLE,              -- the forecast's error on the recent past (projection.py); NULL: too new
    backtest_forecasts  INTEGER NOT NULL,    -- how many past forecasts that error is the mean of
    contributors        VARCHAR NOT NULL     -- the largest feature, customer and model of the period's spend
);
CREATE TABLE IF NOT EXISTS budget_alerts (   -- each threshold of a budget is alerted once per period
    budget       VARCHAR NOT NULL,
    period_start DATE NOT NULL,
    threshold    VARCHAR NOT NULL,           -- '80', '100', ... or 'projected 100'
    day          DATE NOT NULL,              -- the day whose run alerted it
    PRIMARY KEY (budget, period_start, threshold)
);
CREATE TABLE IF NOT EXISTS cost_anomalies (
    day                    DATE NOT NULL,
    dimension              VARCHAR NOT NULL, -- feature, team, customer_id, model, ... or total
    value                  VARCHAR NOT NULL,
    direction              VARCHAR NOT NULL, -- spike | drop
    cost_usd               {MONEY} NOT NULL,
    usual_usd              {MONEY} NOT NULL, -- median of the same weekday over the previous weeks
    score                  DOUBLE NOT NULL,  -- robust z: (cost - usual) / (1.4826 MAD, floored)
    calls                  BIGINT NOT NULL,
    usual_calls            DOUBLE NOT NULL,
    cause                  VARCHAR NOT NULL, -- volume | unit cost | model switch | prompt version | silent
    explanation            VARCHAR NOT NULL  -- the sentence a reader needs
);
CREATE TABLE IF NOT EXISTS unit_economics (
    day                  DATE NOT NULL,
    dimension            VARCHAR NOT NULL,   -- feature | customer_id | tier
    value                VARCHAR NOT NULL,
    spend_usd            {MONEY} NOT NULL,   -- traced (Langfuse) cost
    calls                BIGINT NOT NULL,
    requests             BIGINT NOT NULL,    -- distinct traces
    users                BIGINT NOT NULL,    -- distinct users
    unpriced_calls       BIGINT NOT NULL,    -- calls in `calls` that no price covers: not in spend_usd
    cost_per_call        DOUBLE,
    cost_per_1k_requests DOUBLE,
    cost_per_user        DOUBLE,
    outcomes             BIGINT,             -- per feature, from the outcomes file; NULL: none known
    outcome              VARCHAR,            -- what was counted
    cost_per_outcome     DOUBLE
);
CREATE TABLE IF NOT EXISTS customer_margin (  -- month to date through `day`, on the cost basis
    day          DATE NOT NULL,
    month        VARCHAR NOT NULL,           -- YYYY-MM
    customer_id  VARCHAR,
    revenue_usd  {MONEY},                    -- the month's, from the revenue file; NULL: no row for the customer
    ai_cost_usd  {MONEY} NOT NULL,
    margin_usd   {MONEY},
    ai_share_pct DOUBLE
);
CREATE TABLE IF NOT EXISTS feature_margin (  -- as customer_margin, per feature: where revenue rows name features
    day          DATE NOT NULL,
    month        VARCHAR NOT NULL,
    feature      VARCHAR,
    revenue_usd  {MONEY},                    -- the month's revenue rows naming the feature; NULL: none
    ai_cost_usd  {MONEY} NOT NULL,
    margin_usd   {MONEY},
    ai_share_pct DOUBLE
);
CREATE TABLE IF NOT EXISTS margin_alerts (   -- each customer alerted once a month per kind
    month       VARCHAR NOT NULL,
    customer_id VARCHAR NOT NULL,
    kind        VARCHAR NOT NULL,            -- share | negative margin
    day         DATE NOT NULL,
    PRIMARY KEY (month, customer_id, kind)
);
CREATE TABLE IF NOT EXISTS anomaly_alerts (  -- one alert per episode: consecutive days of one series and direction
    dimension  VARCHAR NOT NULL,
    value      VARCHAR NOT NULL,
    direction  VARCHAR NOT NULL,
    first_day  DATE NOT NULL,
    last_day   DATE NOT NULL,
    PRIMARY KEY (dimension, value, direction, first_day)
);
"""


SCHEMA_VERSION = 6
# Tables emptied and recreated when a warehouse file of an older version is opened. Each is derived from
# inputs that are still there (the bills, the staged generations): re-materialising its days refills it.
REBUILT_IN_VERSION = {2: ("provider_costs", "cost_reconciliation")}  # 2: token kinds, three depths
# Columns added to a table in place (NULL in the rows already there, until their days are re-materialised).
ADDED_IN_VERSION = {3: [("langfuse_generations", "usage_other", "MAP(VARCHAR, BIGINT)"),  # 3: every usage unit
                        ("langfuse_generations", "unpriced_usage", "MAP(VARCHAR, BIGINT)")],
                    4: [("allocated_costs", "project_id", "VARCHAR")],  # 4: the Langfuse project, a dimension
                    6: [("allocated_costs", "priced_usage", "MAP(VARCHAR, BIGINT)")]}  # 6: FOCUS SKUs per unit
# 5: budgets and anomalies read which days were written; the days allocated before are taken as written.
FILLED_IN_VERSION = {5: """INSERT OR IGNORE INTO materialized_days
                           SELECT DISTINCT 'allocated_costs', day, now() FROM allocated_costs
                           UNION SELECT DISTINCT CASE WHEN provider IN ('openai', 'anthropic') THEN provider || '_costs'
                                                      ELSE 'other_provider_costs' END, day, now() FROM provider_costs"""}


class Warehouse(DuckDBResource):
    """The warehouse resource: `database` is the DuckDB file's path, or `ducklake:postgres:<libpq connection
    string>` for the lakehouse, whose Parquet files go under `data_path` (s3://bucket/prefix/ or a directory)."""

    data_path: str = Field(default="", description="The lakehouse's data path (FINOPS_WAREHOUSE_DATA_PATH); "
                                                   "needed when its catalog is new, then kept by DuckLake.")

    @property
    def is_lakehouse(self) -> bool:
        return self.database.startswith(LAKEHOUSE)


@contextmanager
def connect(resource: DuckDBResource) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to the warehouse, created with its tables on first use. Times are UTC."""
    with ExitStack() as closing:
        if isinstance(resource, Warehouse) and resource.is_lakehouse:
            conn = _lakehouse(resource).cursor()  # a connection of its own: its own transaction and temp tables
            closing.callback(_release, conn)
            conn.execute("USE warehouse")
        else:
            Path(resource.database).parent.mkdir(parents=True, exist_ok=True)
            conn = closing.enter_context(resource.get_connection())
            closing.callback(conn.close)  # the resource closes it only when the block ends without an error
        conn.execute("SET TimeZone = 'UTC'")
        _upgrade(conn)
        yield conn


def _release(conn: duckdb.DuckDBPyConnection) -> None:
    """Close a step's lakehouse connection, freeing a read's scratch tables (sources/) as a file's connection
    frees them when it closes; never raised over the error that ended the step."""
    try:
        conn.execute("DETACH DATABASE IF EXISTS scratch")
    except duckdb.Error as exc:
        log.warning(f"could not free the scratch tables: {exc}")
    conn.close()


def _in_lakehouse(conn: duckdb.DuckDBPyConnection) -> bool:
    return conn.execute("SELECT current_database() = 'warehouse'").fetchone()[0]


class LakehouseError(RuntimeError):
    """The lakehouse could not be opened; the message names the setting to check, never a secret."""


# The DuckDB extensions the lakehouse needs, from their PyPI wheels (DuckDB's own download server may be out of
# reach): each wheel holds the extension built for the pinned DuckDB.
_EXTENSIONS = ("duckdb_extension_ducklake", "duckdb_extension_postgres_scanner", "duckdb_extension_httpfs")


# The lakehouse opened once per process (and settings): loading the extensions and attaching the catalog take
# about 0.2 s, which every step of a run would pay again. Each step works on a connection of its own.
_opened: dict[tuple, duckdb.DuckDBPyConnection] = {}
_opening = threading.Lock()


def _lakehouse(resource: Warehouse) -> duckdb.DuckDBPyConnection:
    key = (resource.database, resource.data_path, tuple(sorted(resource.connection_config.items())))
    with _opening:
        if key not in _opened:
            _opened[key] = _open_lakehouse(resource)
        return _opened[key]


def _open_lakehouse(resource: Warehouse) -> duckdb.DuckDBPyConnection:
    # An in-memory DuckDB spills to `.tmp/` in the working directory: runs started from one directory would
    # overwrite each other's spilled blocks. Each process spills to a folder of its own, removed at its exit.
    spill = tempfile.mkdtemp(prefix="finops-duckdb-spill-")
    atexit.register(shutil.rmtree, spill, ignore_errors=True)
    conn = duckdb.connect(config={"custom_user_agent": "finops_pipeline", "temp_directory": spill,
                                  **resource.connection_config})
    try:
        for module in _EXTENSIONS:
            folder = Path(importlib.import_module(module).__file__).parent / "extensions" / f"v{duckdb.__version__}"
            [extension] = folder.glob("*.duckdb_extension")
            conn.execute(f"LOAD '{extension}'")
        if resource.data_path.startswith("s3://") or not resource.data_path:
            _s3_secret(conn)
        if resource.data_path:  # small writes stay in the catalog: a wrong bucket or no credentials would only
            # show on the first large one, after a new catalog had taken the path for good
            conn.execute(f"COPY (SELECT 1 AS writable) TO '{_quoted(resource.data_path.rstrip('/'))}/.finops-write-check'"
                         " (FORMAT parquet)")
        options = f"DATA_PATH '{_quoted(resource.data_path)}'" if resource.data_path else ""
        # Several runs may open a new catalog at once: its first ATTACH creates DuckLake's tables in Postgres,
        # and the runs that lose that race try again (other errors cannot get better by waiting).
        for attempt in Retrying(stop=stop_after_attempt(5), wait=wait_random_exponential(multiplier=0.5, max=5),
                                retry=retry_if_exception(_lost_creation_race), reraise=True):
            with attempt:
                conn.execute(f"ATTACH IF NOT EXISTS '{_quoted(resource.database)}' AS warehouse ({options})"
                             if options else f"ATTACH IF NOT EXISTS '{_quoted(resource.database)}' AS warehouse")
        return conn
    except duckdb.Error as exc:
        conn.close()
        # DuckDB's message may quote the statement: say what failed without it.
        hint = (" Set FINOPS_WAREHOUSE_DATA_PATH (s3://bucket/prefix/) for a new catalog." if "DATA_PATH" in str(exc)
                and not resource.data_path else
                " A catalog keeps the data path it was created with: set FINOPS_WAREHOUSE_DATA_PATH to it (or unset it)."
                if "does not match existing data path" in str(exc) else "")
        raise LakehouseError(f"could not open the lakehouse of FINOPS_WAREHOUSE (data path "
                             f"{resource.data_path or 'as the catalog has it'}): {type(exc).__name__}: "
                             f"{_without_secrets(str(exc))}{hint}") from None


def _lost_creation_race(exc: BaseException) -> bool:
    return isinstance(exc, duckdb.Error) and bool(re.search(
        r"duplicate key|already exists|conflict|could not serialize", str(exc), re.IGNORECASE))


def _s3_secret(conn: duckdb.DuckDBPyConnection) -> None:
    """DuckDB's S3 credentials from the standard AWS chain (boto3: environment, profile, SSO, role), and
    AWS_ENDPOINT_URL(_S3) for an S3-compatible store, as the S3 delivery takes them."""
    import boto3

    session = boto3.Session()
    credentials = session.get_credentials()
    if credentials is None:
        return  # a public bucket, or a data path the catalog keeps elsewhere: DuckDB says so when it reads
    frozen = credentials.get_frozen_credentials()
    parts = {"KEY_ID": frozen.access_key, "SECRET": frozen.secret_key, "REGION": session.region_name or "us-east-1"}
    if frozen.token:
        parts["SESSION_TOKEN"] = frozen.token
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        parts.update(ENDPOINT=host.rstrip("/"), URL_STYLE="path", USE_SSL=str(scheme == "https").lower())
    values = ", ".join(f"{k} {v}" if k == "USE_SSL" else f"{k} '{_quoted(v)}'" for k, v in parts.items())
    conn.execute(f"CREATE OR REPLACE SECRET warehouse_s3 (TYPE s3, {values})")


def _quoted(value: str) -> str:
    return value.replace("'", "''")


def _without_secrets(message: str) -> str:
    return re.sub(r"(?i)(password|secret|key_id|session_token)\s*[=:]\s*'?[^\s',)&]+", r"\1=***", message)


def utc_cursor(conn: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """A cursor of `conn` (its own connection to the same database, for another thread) with times in UTC: a
    cursor does not inherit its parent's settings, and the host's zone must never change a result."""
    cursor = conn.cursor()
    cursor.execute("SET TimeZone = 'UTC'")
    return cursor


def _upgrade(conn: duckdb.DuckDBPyConnection) -> None:
    lakehouse = _in_lakehouse(conn)
    [(exists,)] = conn.execute("SELECT count(*) > 0 FROM duckdb_tables() WHERE database_name = current_database() "
                               "AND table_name = 'write_claim'").fetchall()
    if exists and lakehouse and conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION:
        return  # nothing to create: no write, so no commit to race the other runs with
    # runs creating a new lakehouse at once: the losers find its tables
    for attempt in transactions(conn, claim=False):
        with attempt:
            _create_or_upgrade(conn, lakehouse)


# A table's key clause, the comma before it (and the comment after that comma) kept apart.
_WITHOUT_KEYS = re.compile(r",([ \t]*(?:--[^\n]*)?\n\s*)PRIMARY KEY \([^)]*\)")


def _create_or_upgrade(conn: duckdb.DuckDBPyConnection, lakehouse: bool) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    [(version, has_tables)] = conn.execute("""
        SELECT (SELECT max(version) FROM schema_version),
               (SELECT count(*) > 0 FROM duckdb_tables() WHERE database_name = current_database()
                                                          AND table_name = 'langfuse_generations')""").fetchall()
    if version is None:
        version = 1 if has_tables else SCHEMA_VERSION  # files from before versioning are version 1
    for step in range(version + 1, SCHEMA_VERSION + 1):
        for table in REBUILT_IN_VERSION.get(step, ()):
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            log.warning(f"warehouse upgraded to version {step}: table {table} was recreated empty; "
                        "re-materialise its days (a backfill) to refill it")
    if lakehouse:  # DuckLake has no keys: every write here replaces by DELETE then INSERT, keyed or not
        conn.execute(_WITHOUT_KEYS.sub(r"\1", SCHEMA).replace(" PRIMARY KEY", ""))
        # the row every write transaction replaces (transactions): never empty, so its DELETE always counts
        conn.execute("CREATE TABLE IF NOT EXISTS write_claim (claimed_at TIMESTAMP NOT NULL)")
        if not conn.execute("SELECT count(*) FROM write_claim").fetchone()[0]:
            conn.execute("INSERT INTO write_claim VALUES (now())")
        if not has_tables:
            for table in PARTITIONED_BY_DAY:
                conn.execute(f"ALTER TABLE {table} SET PARTITIONED BY (day)")
    else:
        conn.execute(SCHEMA)
    for step in range(version + 1, SCHEMA_VERSION + 1):
        for table, column, kind in ADDED_IN_VERSION.get(step, ()):
            conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")
        if step in FILLED_IN_VERSION and version > 0 and has_tables:
            conn.execute(FILLED_IN_VERSION[step])
    if version != SCHEMA_VERSION:  # days staged by the older version are read again on their next run
        conn.execute("DELETE FROM staged_inputs")
    if version != SCHEMA_VERSION or conn.execute("SELECT count(*) FROM schema_version").fetchall() != [(1,)]:
        conn.execute("DELETE FROM schema_version")
        conn.execute("INSERT INTO schema_version VALUES (?)", [SCHEMA_VERSION])


@contextmanager
def transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """All or nothing: on any error the tables keep their previous good state."""
    conn.execute("BEGIN TRANSACTION")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        try:
            conn.execute("ROLLBACK")
        except duckdb.TransactionException:
            pass  # a failed COMMIT has already rolled back
        raise


def is_conflict(exc: BaseException) -> bool:
    """A lakehouse commit refused because another transaction changed what this one did (DuckLake's "Transaction
    conflict"): trying again on the new snapshot succeeds. Never raised by a DuckDB file (one writer)."""
    return isinstance(exc, duckdb.TransactionException) and "conflict" in str(exc).lower()


def transactions(conn: duckdb.DuckDBPyConnection, attempts: int = 12, claim: bool = True) -> Iterator:
    """Attempts at one all-or-nothing transaction, for `for attempt in transactions(conn): with attempt: ...`.

    On the lakehouse every such transaction also replaces the one row of `write_claim` (`claim`): DuckLake
    refuses to commit an insert into a table that a concurrent transaction deleted from, so of two transactions
    that overlap, whatever they write, one commits and the other conflicts. Without it, two runs writing the
    same new day would both commit (their DELETE of the day found nothing to conflict on) and store it twice.
    The body then runs again from its start, on the newest snapshot (waits grow at random up to 10 s), and
    finds what the other wrote. Any other error rolls back and is raised, as is the conflict after `attempts`
    tries. A DuckDB file has one writer: one attempt, no claim."""
    lakehouse = claim and _in_lakehouse(conn)
    for attempt in Retrying(stop=stop_after_attempt(attempts), wait=wait_random_exponential(multiplier=0.2, max=10),
                            retry=retry_if_exception(is_conflict), reraise=True):
        yield _attempt(attempt, conn, lakehouse)


@contextmanager
def _attempt(attempt, conn: duckdb.DuckDBPyConnection, claim: bool) -> Iterator[duckdb.DuckDBPyConnection]:
    with attempt:  # tenacity's: keeps a conflict for the next try, raises anything else
        if attempt.retry_state.attempt_number > 1:
            log.info(f"lakehouse commit conflicted with another run's: trying again "
                     f"(attempt {attempt.retry_state.attempt_number})")
        with transaction(conn):
            if claim:
                conn.execute("DELETE FROM write_claim")
                conn.execute("INSERT INTO write_claim VALUES (now())")
            yield conn


def replace_partition(conn: duckdb.DuckDBPyConnection, table: str, day: date, select_sql: str,
                      params: dict | None = None) -> int:
    """Delete the day's rows of `table` and insert `select_sql` (which may use `$day` and `params`, and names
    each column as the table does), in the caller's transaction."""
    conn.execute(f"DELETE FROM {table} WHERE day = ?", [day])
    # Rows of a table have no order here: letting DuckDB write them in any order saves memory and time.
    conn.execute("SET preserve_insertion_order = false")
    try:
        # By name: a column added by an upgrade sits at the table's end (ADDED_IN_VERSION)
        conn.execute(f"INSERT INTO {table} BY NAME {select_sql}", {"day": day, **(params or {})} if "$" in select_sql else [])
    finally:
        try:
            conn.execute("RESET preserve_insertion_order")
        except duckdb.TransactionException:
            pass  # the insert failed and aborted the transaction: its own error is the one to raise
    mark_written(conn, table, day)
    return conn.execute(f"SELECT count(*) FROM {table} WHERE day = ?", [day]).fetchone()[0]


def mark_written(conn: duckdb.DuckDBPyConnection, asset: str, day: date) -> None:
    """Record in `materialized_days` that `asset` wrote `day` (in the caller's transaction)."""
    conn.execute("DELETE FROM materialized_days WHERE asset = ? AND day = ?", [asset, day])
    conn.execute("INSERT INTO materialized_days VALUES (?, ?, now())", [asset, day])


def insert_new(conn: duckdb.DuckDBPyConnection, table: str, key: list[str], row: list) -> bool:
    """Insert `row` (all of `table`'s columns, the key's first) unless a row with the same key is there; True when
    inserted. In the caller's transaction. (A lakehouse has no keys to enforce this: the check is the key.)"""
    where = " AND ".join(f"{column} = ?" for column in key)
    if conn.execute(f"SELECT count(*) FROM {table} WHERE {where}", row[:len(key)]).fetchone()[0]:
        return False
    conn.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * len(row))})", row)
    return True
