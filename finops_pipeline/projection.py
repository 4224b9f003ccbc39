"""Where a period will end: the spend so far plus the days left, forecast from the recent weeks.

The forecast of a day is `level × trend × weekday factor`: the weekday factors are each weekday's mean over
the last four weeks against the mean of those weeks (a team that spends little at weekends keeps doing so);
the level and the trend are a least-squares line through the last 28 days with the weekday taken out, the
trend damped to half (a trend is less sure the further it is carried). The range is the 10th to 90th
percentile of the sum of the days left, from the scatter of the days around that line. With under 14 days of
history the weekday factors are 1 and the trend 0: the forecast is the mean day.

`backtest` says how far to trust it: from each of the last days that have `horizon` days of known spend
after them, forecast those days and compare with what was spent (mean absolute percentage error).
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


def forecast(daily: dict[date, float], through: date, days: list[date]) -> Forecast:
    """The summed spend of `days` (after `through`), from `daily` (USD per day; a day absent is 0) up to
    and including `through`."""
    if not days:
        return Forecast(0.0, 0.0, 0.0)
    history = [through - timedelta(days=i) for i in range(WINDOW - 1, -1, -1)]
    known = [d for d in history if d >= min(daily, default=through)]
    values = [daily.get(d, 0.0) for d in known]
    if len(known) < MIN_HISTORY:
        mean = sum(values) / len(values) if values else 0.0
        spread = _stdev(values) * math.sqrt(len(days)) if len(values) > 1 else mean * len(days)
        total = mean * len(days)
        return Forecast(total, max(0.0, total - Z80 * spread), total + Z80 * spread)
    overall = sum(values) / len(values)
    factor = {}
    for weekday in range(7):
        same = [v for d, v in zip(known, values) if d.weekday() == weekday]
        factor[weekday] = (sum(same) / len(same) / overall) if same and overall > 0 else 1.0
    x = list(range(len(known)))
    y = [v / factor[d.weekday()] if factor[d.weekday()] > 0 else v for d, v in zip(known, values)]
    slope, intercept = _line(x, y)
    residuals = [yi - (intercept + slope * xi) for xi, yi in zip(x, y)]
    sigma = _stdev(residuals)
    last_x = len(known) - 1
    level = intercept + slope * last_x
    expected = 0.0
    for i, d in enumerate(days, start=1):
        expected += max(0.0, (level + 0.5 * slope * i) * factor[d.weekday()])
    spread = sigma * math.sqrt(len(days)) * (sum(factor[d.weekday()] for d in days) / len(days))
    return Forecast(expected, max(0.0, expected - Z80 * spread), expected + Z80 * spread)


def backtest(daily: dict[date, float], through: date, horizon: int, origins: int = 28) -> tuple[float | None, int]:
    """(MAPE in %, forecasts compared): forecasting the `horizon` days after each of the last `origins` days
    that have them, against what those days cost. None when the history is too short to say."""
    if not daily:
        return None, 0
    first = min(daily)
    errors = []
    for k in range(origins):
        origin = through - timedelta(days=horizon + k)
        if (origin - first).days + 1 < MIN_HISTORY:
            break
        ahead = [origin + timedelta(days=i) for i in range(1, horizon + 1)]
        actual = sum(daily.get(d, 0.0) for d in ahead)
        if actual <= 0:
            continue
        predicted = forecast({d: v for d, v in daily.items() if d <= origin}, origin, ahead).expected
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
