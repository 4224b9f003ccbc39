"""How often cost_anomalies is right: a labelled synthetic quarter through the pipeline's own detector.

`python bench/anomaly_quarter.py [--seeds 1,2,3]` builds, per seed, 13 weeks of daily cost for 60 series
(features, customers, models; $3 to $400 a day) with what is not news (weekday seasonality, weekend dips of
20-70%, growth up to 3% a week, day-to-day noise of 8-15%, two holidays when everything falls) and injected
anomalies from the fifth week on (one-day spikes ×2.5-6, step changes up ×2.5 or down ×0.3, slow drifts to
×3 over ten days, series that go silent for 3-7 days). It loads them into DuckDB as `series` and `calendar`,
runs `finops_pipeline.anomalies.detect` over every day, groups the flags into alerts as the asset does (one
per episode), and prints:
  - recall: injected anomalies whose change reaches the dollar floor that were alerted within their window;
  - precision: alerts that fall in an injected anomaly's window (a lasting change's window runs until the
    four-week usual has taken it in);
  - false alerts per month per 50 series (a holiday's all-spend drop counts as false: it is not injected).
Targets (issue 18): recall >= 0.9, at most one false alert per 50 series per month.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from finops_pipeline.anomalies import TOTAL, detect  # noqa: E402

START = date(2026, 1, 5)  # a Monday
DAYS = 91
JUDGED_FROM = 28          # the first four weeks are the first usual
FLOOR = 10.0
ABSORBED = 27  # a lasting change is news until the four-week usual has taken it in
EPISODE_GAP_DAYS = 7  # as cost_anomalies.EPISODE_GAP_DAYS


@dataclass
class Event:
    series: tuple[str, str]
    kind: str
    first: int   # day index where it starts
    last: int    # day index of the end of its window (alerts up to here are true)
    change: float  # its largest dollar change against the unperturbed series


def quarter(seed: int) -> tuple[pd.DataFrame, list[Event], list[int]]:
    """(series rows: dimension, value, day, cost_usd, calls; the injected events; the holiday day indexes)."""
    rng = random.Random(seed)
    names = [("feature", f"f{i}") for i in range(15)] + [("customer_id", f"c{i}") for i in range(35)] + \
            [("model", f"m{i}") for i in range(10)]
    holidays = rng.sample(range(JUDGED_FROM, DAYS), 2)
    multipliers = {s: [1.0] * DAYS for s in names}
    events: list[Event] = []
    busy: dict[tuple[str, str], list[tuple[int, int]]] = {s: [] for s in names}
    base = {}
    for s in names:
        level = math.exp(rng.uniform(math.log(3), math.log(400)))
        weekend = rng.uniform(0.3, 0.8)
        growth = rng.uniform(0, 0.03) / 7
        noise = rng.uniform(0.08, 0.15)
        base[s] = [level * (1 + growth) ** d * (weekend if (START + timedelta(days=d)).weekday() >= 5 else 1.0)
                   * (0.35 if d in holidays else 1.0) for d in range(DAYS)]
        base[s] = [v * math.exp(rng.gauss(0, noise)) for v in base[s]]

    def free(s, a, b):
        return all(b < x - 7 or a > y + 7 for x, y in busy[s])

    def inject(kind, count):
        made = 0
        while made < count:
            s = rng.choice(names)
            d = rng.randrange(JUDGED_FROM, DAYS - 1)
            if kind == "spike":
                a, b, window = d, d, d
                factor = rng.uniform(2.5, 6)
                span = [(d, factor)]
            elif kind == "step":
                factor = rng.choice([2.5, 0.3])
                a, b, window = d, DAYS - 1, min(DAYS - 1, d + ABSORBED)
                span = [(x, factor) for x in range(d, DAYS)]
            elif kind == "drift":
                if d + 10 >= DAYS:
                    continue
                a, b = d, DAYS - 1
                span = [(x, 1 + 2 * min(1, (x - d + 1) / 10)) for x in range(d, DAYS)]
                window = min(DAYS - 1, d + 10 + ABSORBED)
            else:  # silent
                length = rng.randint(3, 7)
                a, b = d, min(DAYS - 1, d + length - 1)
                span = [(x, 0.0) for x in range(a, b + 1)]
                window = min(DAYS - 1, b + 7)
            if not free(s, a, b):
                continue
            busy[s].append((a, b))
            for x, f in span:
                multipliers[s][x] = f
            change = max(abs(base[s][x] * (f - 1)) for x, f in span[:8])
            events.append(Event(s, kind, a, window, change))
            made += 1

    for kind, count in (("spike", 20), ("step", 10), ("drift", 8), ("silent", 6)):
        inject(kind, count)
    rows = []
    for s in names:
        per_call = rng.uniform(0.002, 0.05)
        for d in range(DAYS):
            cost = base[s][d] * multipliers[s][d]
            rows.append((s[0], s[1], START + timedelta(days=d), cost, round(cost / per_call)))
    frame = pd.DataFrame(rows, columns=["dimension", "value", "day", "cost_usd", "calls"])
    total = frame.groupby("day", as_index=False)[["cost_usd", "calls"]].sum().assign(dimension=TOTAL, value="all spend")
    return pd.concat([frame, total[frame.columns]]), events, holidays


def alerts(found: pd.DataFrame) -> list[tuple[tuple[str, str], str, int]]:
    """One alert per episode of a series and direction (flagged again within EPISODE_GAP_DAYS: the same one)."""
    out, last = [], {}
    for r in found.sort_values("day").itertuples():
        key = (r.dimension, r.value, r.direction)
        d = (r.day.date() if hasattr(r.day, "date") else r.day) - START
        if key in last and d.days - last[key] <= EPISODE_GAP_DAYS:
            last[key] = d.days
            continue
        last[key] = d.days
        out.append(((r.dimension, r.value), r.direction, d.days))
    return out


def evaluate(seed: int) -> dict:
    rows, events, holidays = quarter(seed)
    with duckdb.connect() as conn:
        conn.register("series_rows", rows)
        conn.execute("CREATE TEMP TABLE series AS SELECT * FROM series_rows")
        conn.execute("CREATE TEMP TABLE calendar AS SELECT DISTINCT day FROM series_rows")
        found = detect(conn, START + timedelta(days=JUDGED_FROM), START + timedelta(days=DAYS - 1), FLOOR)
    raised = alerts(found)
    true = [a for a in raised if any(e.series == a[0] and e.first <= a[2] <= e.last for e in events)]
    counted = [e for e in events if e.change >= FLOOR]
    caught = [e for e in counted if any(a[0] == e.series and e.first <= a[2] <= e.last for a in raised)]
    months = (DAYS - JUDGED_FROM) / 30.4
    series = rows[["dimension", "value"]].drop_duplicates().shape[0]
    false = len(raised) - len(true)
    return {"seed": seed, "series": series, "events": len(counted), "caught": len(caught),
            "recall": len(caught) / len(counted), "alerts": len(raised),
            "precision": len(true) / len(raised) if raised else 1.0, "false_alerts": false,
            "false_per_50_series_month": false / months / (series / 50),
            "missed": sorted({e.kind for e in counted if e not in caught})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3,4,5")
    args = parser.parse_args()
    results = [evaluate(int(s)) for s in args.seeds.split(",")]
    print(f"{'seed':>4} {'series':>6} {'events':>6} {'recall':>7} {'alerts':>6} {'precision':>9} "
          f"{'false/50 series/month':>22}  missed kinds")
    for r in results:
        print(f"{r['seed']:>4} {r['series']:>6} {r['events']:>6} {r['recall']:>7.2f} {r['alerts']:>6} "
              f"{r['precision']:>9.2f} {r['false_per_50_series_month']:>22.2f}  {', '.join(r['missed']) or '-'}")
    n = len(results)
    print(f"mean: recall {sum(r['recall'] for r in results) / n:.2f}, precision "
          f"{sum(r['precision'] for r in results) / n:.2f}, false alerts per 50 series per month "
          f"{sum(r['false_per_50_series_month'] for r in results) / n:.2f}")


if __name__ == "__main__":
    main()
