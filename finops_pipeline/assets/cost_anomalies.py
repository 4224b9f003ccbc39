"""cost_anomalies: the day's series that moved against their usual weekday, each with its cause; its check
alerts each anomaly once."""


from datetime import date, timedelta

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource

from finops_pipeline.anomalies import WEEKS, detect, explain, stage_series
from finops_pipeline.destinations.finout import shown_as_delivered
from finops_pipeline.partitions import daily_check, daily_partitions, partition_day
from finops_pipeline.settings import FinopsSettings
from finops_pipeline.warehouse import WAREHOUSE_POOL, connect, replace_partition, transactions

ANOMALY_CHECK = "no_cost_anomaly"
EPISODE_GAP_DAYS = 7  # a series flagged again within a week is the same anomaly going on (a lasting step
# is flagged on most days until the four-week usual takes it in; one alert for it)


@dg.asset(
    partitions_def=daily_partitions,
    pool=WAREHOUSE_POOL,
    group_name="controls",
    kinds={"duckdb"},
    deps=["allocated_costs"],
    description=(
        "The day's cost anomalies of each series (FINOPS_ANOMALY_DIMENSIONS, default feature, team, customer_id, "
        "model; and all spend) against the same weekday of the previous four weeks, on traced cost: spikes and "
        "drops past a robust score of 4, a ratio of 1.8 and a dollar floor (FINOPS_ANOMALY_FLOOR_USD), each with its "
        "cause (volume, unit cost, model switch, a new prompt version, silence) in a sentence."),
    check_specs=[daily_check(
        ANOMALY_CHECK, "cost_anomalies",
        description="WARN naming every anomaly of the day and its cause; an anomaly that goes on over several days "
                    "is alerted once, on its first day.")],
)
def cost_anomalies(context: dg.AssetExecutionContext, duckdb: DuckDBResource,
                   settings: FinopsSettings) -> dg.MaterializeResult:
    day = partition_day(context)
    dimensions = settings.anomaly_series
    with connect(duckdb) as conn:
        stage_series(conn, dimensions, day - timedelta(days=max(WEEKS)), day)
        if not conn.execute("SELECT count(*) FROM calendar WHERE day = ?", [day]).fetchone()[0]:
            raise dg.Failure(f"allocated_costs has not written {day}: the day's cost is unknown, so it is not "
                             "judged (materialize allocated_costs for the day first).")
        weeks = conn.execute("SELECT count(*) FROM calendar WHERE day < ? AND (? - day) % 7 = 0",
                             [day, day]).fetchone()[0]
        found = detect(conn, day, day, settings.anomaly_floor_usd)
        shown = shown_as_delivered(settings.hashed_dimensions, settings.hash_salt)
        causes = explain(conn, found, day, shown)
        # series named as the delivery names them (hashed where it hashes): in the table, metadata and alerts
        frame = found.assign(cause=[c.cause for c in causes], explanation=[c.explanation for c in causes],
                             cost_usd=found["cost"], usual_usd=found["usual"],
                             value=[shown(d, v) for d, v in zip(found["dimension"], found["value"])])
        conn.register("anomaly_rows", frame[["day", "dimension", "value", "direction", "cost_usd", "usual_usd",
                                             "score", "calls", "usual_calls", "cause", "explanation"]])
        for attempt in transactions(conn):
            with attempt:
                rows = replace_partition(conn, "cost_anomalies", day, "SELECT * FROM anomaly_rows")
                new = [r for r in frame.itertuples() if _new_episode(conn, r.dimension, r.value, r.direction, day)]
        conn.unregister("anomaly_rows")
    check = _check(frame, new, weeks, day)
    return dg.MaterializeResult(
        metadata={"dagster/row_count": rows, "anomalies": rows,
                  "anomaly_cost_change_usd": float((frame["cost"] - frame["usual"]).sum()) if rows else 0.0,
                  "weeks_of_history": weeks, "series_dimensions": ", ".join(dimensions),
                  **({"anomalies_found": dg.MetadataValue.md(
                      pd.DataFrame({"series": frame["dimension"] + " " + frame["value"], "cause": frame["cause"],
                                    "explanation": frame["explanation"]}).to_markdown(index=False))} if rows else {})},
        check_results=[check])


def _new_episode(conn, dimension: str, value: str, direction: str, day: date) -> bool:
    """Record the anomaly; True when it starts an episode (not the same series and direction flagged within
    EPISODE_GAP_DAYS before, nor a re-run of a day already recorded)."""
    # an episode the day extends or precedes by up to the gap (days may run out of order: a backfill runs
    # several at once, the schedule queues yesterday before the days it re-runs)
    episode = """dimension = $dimension AND value = $value AND direction = $direction
                 AND first_day <= $day + $gap AND last_day >= $day - $gap"""
    params = {"day": day, "dimension": dimension, "value": value, "direction": direction, "gap": EPISODE_GAP_DAYS}
    if conn.execute(f"SELECT count(*) FROM anomaly_alerts WHERE {episode}", params).fetchone()[0]:
        conn.execute(f"""UPDATE anomaly_alerts SET first_day = least(first_day, $day), last_day = greatest(last_day, $day)
                         WHERE {episode}""", params)
        return False
    conn.execute("INSERT INTO anomaly_alerts VALUES (?, ?, ?, ?, ?)", [dimension, value, direction, day, day])
    return True


def _check(frame: pd.DataFrame, new: list, weeks: int, day: date) -> dg.AssetCheckResult:
    if frame.empty:
        description = (f"No anomaly on {day}: every series within its usual weekday ({weeks} earlier weeks allocated)"
                       if weeks >= 3 else
                       f"Not judged: {weeks} earlier weeks of this weekday allocated, 3 needed for a usual.")
    else:
        description = f"{len(frame)} anomalies on {day}: " + "; ".join(
            f"[{r.cause}] {r.explanation}" for r in frame.itertuples())
    return dg.AssetCheckResult(
        check_name=ANOMALY_CHECK, passed=frame.empty, severity=dg.AssetCheckSeverity.WARN,
        description=description,
        metadata={"anomalies": len(frame), "new_alerts": len(new),
                  "alert": "; ".join(f"[{r.cause}] {r.explanation}" for r in new) or "none",
                  "weeks_of_history": weeks})
