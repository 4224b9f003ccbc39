"""Where a period will end: the spend so far plus the days left, forecast from the recent weeks.

The forecast of a day is `level × trend × weekday factor`: the weekday factors are each weekday's mean over
the last four weeks against the mean of those weeks (a team that spends little at weekends keeps doing so);
the level and the trend are a least-squares line through the last 28 days with the weekday taken out, the
trend damped to half (a trend is less sure the further it is carried). The range is the 10th to 90th
percentile of the sum of the days left, from the scatter of the days around that line. With under 14 days of
history the weekday factors are 1 and the trend 0: the forecast is the mean day.

`backtest` says how far to trust it: from each of the last days that have `horizon` days of known spend
after them, forecast those days and compare with what was spent (mean absolute percentage error). Days
not allocated are never taken as $0: they are out of the history, and a period's own unknown days are
forecast like the days left.
Inputs are a day's total per day (a few hundred numbers at most): plain Python over them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta

WINDOW = 28
MIN_HISTORY = 14
Z80 = 1.2816  # the 10th/90th percentile of a normal


@dataclass(frozen=True)
class Forecast:
    expected: float  # the days' sum, USD
    low: float
    high: float


def forecast(daily: dict[date, float], through: date, days: list[date], known: set[date] | None = None) -> Forecast:
    """The summed spend of `days` (after `through`, or unknown days before it), from `daily` (USD per day)
    over the `known` days up to and including `through` (None: every day from the first in `daily`; a known
    day absent from `daily` cost $0). A day not known is left out of the history, never taken as $0."""
    if not days:
        return Forecast(0.0, 0.0, 0.0)
    first = min(daily, default=through)
    window = [through - timedelta(days=i) for i in range(WINDOW - 1, -1, -1)]
    history = [d for d in window if (d in known if known is not None else d >= first)]
    values = [daily.get(d, 0.0) for d in history]
    if len(history) < MIN_HISTORY:
        mean = sum(values) / len(values) if values else 0.0
        spread = _stdev(values) * math.sqrt(len(days)) if len(values) > 1 else mean * len(days)
        total = mean * len(days)
        return Forecast(total, max(0.0, total - Z80 * spread), total + Z80 * spread)
    overall = sum(values) / len(values)
    factor = {}
    for weekday in range(7):
        same = [v for d, v in zip(history, values) if d.weekday() == weekday]
        factor[weekday] = (sum(same) / len(same) / overall) if same and overall > 0 else 1.0
    x = [(d - through).days for d in history]  # 0 at `through`: the line's value there is the level
    y = [v / factor[d.weekday()] if factor[d.weekday()] > 0 else v for d, v in zip(history, values)]
    slope, level = _line(x, y)
    sigma = _stdev([yi - (level + slope * xi) for xi, yi in zip(x, y)])
    expected = sum(max(0.0, (level + 0.5 * slope * (d - through).days) * factor[d.weekday()]) for d in days)
    spread = sigma * math.sqrt(len(days)) * (sum(factor[d.weekday()] for d in days) / len(days))
    return Forecast(expected, max(0.0, expected - Z80 * spread), expected + Z80 * spread)


def backtest(daily: dict[date, float], through: date, horizon: int, origins: int = 28,
             known: set[date] | None = None) -> tuple[float | None, int]:
    """(MAPE in %, forecasts compared): forecasting the `horizon` days after each of the last `origins` days
    that have them, all known, against what those days cost. None when the history is too short to say."""
    if not daily and not known:
        return None, 0
    first = min(known) if known else min(daily)
    is_known = (lambda d: d in known) if known is not None else (lambda d: first <= d <= through)  # noqa: E731
    errors = []
    for k in range(origins):
        origin = through - timedelta(days=horizon + k)
        if (origin - first).days + 1 < MIN_HISTORY:
            break
        ahead = [origin + timedelta(days=i) for i in range(1, horizon + 1)]
        if not all(is_known(d) for d in ahead):
            continue
        actual = sum(daily.get(d, 0.0) for d in ahead)
        if actual <= 0:
            continue
        before = {d for d in known if d <= origin} if known is not None else None
        predicted = forecast({d: v for d, v in daily.items() if d <= origin}, origin, ahead, before).expected
        errors.append(abs(predicted - actual) / actual)
    return (100 * sum(errors) / len(errors), len(errors)) if errors else (None, 0)


def _line(x: list[float], y: list[float]) -> tuple[float, float]:
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((xi - mx) ** 2 for xi in x)
    slope = sum((xi - mx) * (yi - my) for xi, yi in zip(x, y)) / sxx if sxx else 0.0
    return slope, my - slope * mx


def _stdev(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
