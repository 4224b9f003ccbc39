"""allocated_costs: the day's cost per allocation key values × provider × model, and its conservation check."""


import dagster as dg
from dagster_duckdb import DuckDBResource

from finops_pipeline.partitions import daily_check, daily_partitions, partition_day
from finops_pipeline.retention import RetiredDay, check_not_retired
from finops_pipeline.warehouse import WAREHOUSE_POOL, connect, replace_partition, transactions

CONSERVATION_CHECK = "cost_conserved"

# `priced_usage`: what cost_usd paid for, per genai-prices unit (the token kinds, then audio, images, 1-hour
# cache writes, characters, ...): the usage of the priced calls, less what no price covered in those priced
# only in part. A FOCUS row puts each unit against its price.
_PRICED_UNITS = {"input_tokens": "input_tokens", "cache_read_tokens": "cached_tokens",
                 "cache_write_tokens": "cache_write_tokens", "output_tokens": "output_tokens",
                 "output_reasoning_tokens": "reasoning_tokens"}
_ALLOCATE = f"""
SELECT * EXCLUDE (main, others, unpriced) REPLACE (
    map_from_entries(list_filter(list_transform(
        main || list_transform(list_distinct(flatten(list_transform(others, lambda m: map_keys(m)))),
                               lambda k: {{'key': k, 'value': list_sum(list_transform(others, lambda m: coalesce(m[k], 0)))}}),
        lambda e: {{'key': e.key, 'value': (e.value - coalesce(list_sum(list_transform(unpriced,
                                                                  lambda m: coalesce(m[e.key], 0))), 0))::BIGINT}}),
        lambda e: e.value > 0))::MAP(VARCHAR, BIGINT) AS priced_usage)
FROM (
    SELECT day, allocation, provider, coalesce(model, 'unknown') AS model,
           count(*) AS calls,
           count(*) FILTER (WHERE cost_source = 'unpriced') AS unpriced_calls,
           sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, sum(cached_tokens) AS cached_tokens,
           sum(cache_write_tokens) AS cache_write_tokens, sum(reasoning_tokens) AS reasoning_tokens,
           sum(total_tokens) AS total_tokens,
           coalesce(sum(cost_usd), 0) AS cost_usd, project_id, NULL AS priced_usage,
           [{", ".join(f"{{'key': '{unit}', 'value': coalesce(sum({column}) FILTER (WHERE cost_usd IS NOT NULL), 0)}}"
                       for unit, column in _PRICED_UNITS.items())}] AS main,
           coalesce(list(usage_other) FILTER (WHERE usage_other IS NOT NULL AND cost_usd IS NOT NULL), []) AS others,
           coalesce(list(unpriced_usage) FILTER (WHERE unpriced_usage IS NOT NULL AND cost_usd IS NOT NULL), []) AS unpriced
    FROM langfuse_generations
    WHERE day = $day
    GROUP BY ALL
)
"""


@dg.asset(
    partitions_def=daily_partitions,
    pool=WAREHOUSE_POOL,
    group_name="allocation",
    kinds={"duckdb"},
    deps=["langfuse_generations"],
    description=(
        "The day's LLM cost allocated along the vocabulary (feature, customer, team, ...), per provider and "
        "model: calls, tokens by kind, and cost, with the priced calls' usage by unit (what the cost paid for, "
        "for the FOCUS SKUs). Unpriced calls are counted, not priced at $0."
    ),
    check_specs=[
        daily_check(CONSERVATION_CHECK, "allocated_costs", blocking=True,
                    description="Cost and call count allocated equal cost and count staged."),
    ],
)
def allocated_costs(context: dg.AssetExecutionContext, duckdb: DuckDBResource) -> dg.MaterializeResult:
    day = partition_day(context)
    with connect(duckdb) as conn:
        try:
            check_not_retired(conn, day, "allocated_costs")
        except RetiredDay as exc:
            raise dg.Failure(str(exc)) from None
        for attempt in transactions(conn):
            with attempt:
                rows = replace_partition(conn, "allocated_costs", day, _ALLOCATE)
        result = conservation_check(conn, day)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows,
            "total_cost_usd": result.metadata["allocated_cost_usd"].value,
            "calls": result.metadata["allocated_calls"].value,
        },
        check_results=[result],
    )


def conservation_check(conn, day) -> dg.AssetCheckResult:
    """Compare the staged and the allocated day to the last digit: both sides are DECIMAL sums."""
    staged_cost, staged_calls, allocated_cost, allocated_calls = conn.execute("""
        SELECT (SELECT coalesce(sum(cost_usd), 0) FROM langfuse_generations WHERE day = $day),
               (SELECT count(*) FROM langfuse_generations WHERE day = $day),
               (SELECT coalesce(sum(cost_usd), 0) FROM allocated_costs WHERE day = $day),
               (SELECT coalesce(sum(calls), 0) FROM allocated_costs WHERE day = $day)
    """, {"day": day}).fetchone()
    passed = staged_cost == allocated_cost and staged_calls == allocated_calls
    return dg.AssetCheckResult(
        check_name=CONSERVATION_CHECK,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(
            f"staged ${staged_cost:,.6f} in {staged_calls} calls; allocated ${allocated_cost:,.6f} in "
            f"{allocated_calls} calls" + ("" if passed else
                                          f": {allocated_cost - staged_cost:+.12f} USD, "
                                          f"{allocated_calls - staged_calls:+d} calls lost or invented")
        ),
        metadata={
            "staged_cost_usd": float(staged_cost),
            "allocated_cost_usd": float(allocated_cost),
            "difference_usd": float(allocated_cost - staged_cost),
            "staged_calls": staged_calls,
            "allocated_calls": int(allocated_calls),
        },
    )
