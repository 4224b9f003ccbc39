"""The DuckDB warehouse: table definitions and the one way a partition is replaced.

Money is DECIMAL(38, 12): exact sums, no float drift at cent level however many rows a month holds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import duckdb
from dagster_duckdb import DuckDBResource

log = logging.getLogger(__name__)

MONEY = "DECIMAL(38, 12)"
# Dagster concurrency pool of every step that opens the warehouse: DuckDB allows one writer process.
WAREHOUSE_POOL = "duckdb"

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
    project_id         VARCHAR               -- the Langfuse project the calls were traced in
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


SCHEMA_VERSION = 5
# Tables emptied and recreated when a warehouse file of an older version is opened. Each is derived from
# inputs that are still there (the bills, the staged generations): re-materialising its days refills it.
REBUILT_IN_VERSION = {2: ("provider_costs", "cost_reconciliation")}  # 2: token kinds, three depths
# Columns added to a table in place (NULL in the rows already there, until their days are re-materialised).
ADDED_IN_VERSION = {3: [("langfuse_generations", "usage_other", "MAP(VARCHAR, BIGINT)"),  # 3: every usage unit
                        ("langfuse_generations", "unpriced_usage", "MAP(VARCHAR, BIGINT)")],
                    4: [("allocated_costs", "project_id", "VARCHAR")]}  # 4: the Langfuse project, a dimension
# 5: budgets and anomalies read which days were written; the days allocated before are taken as written.
FILLED_IN_VERSION = {5: """INSERT OR IGNORE INTO materialized_days
                           SELECT DISTINCT 'allocated_costs', day, now() FROM allocated_costs
                           UNION SELECT DISTINCT CASE WHEN provider IN ('openai', 'anthropic') THEN provider || '_costs'
                                                      ELSE 'other_provider_costs' END, day, now() FROM provider_costs"""}


@contextmanager
def connect(resource: DuckDBResource) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to the warehouse file, created with its tables on first use. Times are UTC."""
    Path(resource.database).parent.mkdir(parents=True, exist_ok=True)
    with resource.get_connection() as conn:
        try:
            conn.execute("SET TimeZone = 'UTC'")
            _upgrade(conn)
            yield conn
        finally:  # the resource closes it only when the block ends without an error
            conn.close()


def utc_cursor(conn: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """A cursor of `conn` (its own connection to the same database, for another thread) with times in UTC: a
    cursor does not inherit its parent's settings, and the host's zone must never change a result."""
    cursor = conn.cursor()
    cursor.execute("SET TimeZone = 'UTC'")
    return cursor


def _upgrade(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    [(version, has_tables)] = conn.execute("""
        SELECT (SELECT max(version) FROM schema_version),
               (SELECT count(*) > 0 FROM duckdb_tables() WHERE table_name = 'langfuse_generations')""").fetchall()
    if version is None:
        version = 1 if has_tables else SCHEMA_VERSION  # files from before versioning are version 1
    for step in range(version + 1, SCHEMA_VERSION + 1):
        for table in REBUILT_IN_VERSION.get(step, ()):
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            log.warning(f"warehouse upgraded to version {step}: table {table} was recreated empty; "
                        "re-materialise its days (a backfill) to refill it")
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
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


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
        conn.execute("RESET preserve_insertion_order")
    conn.execute("INSERT OR REPLACE INTO materialized_days VALUES (?, ?, now())", [table, day])
    return conn.execute(f"SELECT count(*) FROM {table} WHERE day = ?", [day]).fetchone()[0]
