"""The monthly report's charts: matplotlib figures saved as static SVG (text as paths, so they look the same
offline on any machine, with no font or script to load). Each function takes rows of MonthFigures and
returns the `<svg>` element to inline in the HTML."""

from __future__ import annotations

import io
import re
from collections import defaultdict

import matplotlib

matplotlib.use("svg")  # no display, no GUI toolkit: a server renders these
from matplotlib.figure import Figure  # noqa: E402 - after choosing the backend
from matplotlib.ticker import FuncFormatter  # noqa: E402

from finops_pipeline.report.figures import MonthFigures  # noqa: E402

matplotlib.rcParams.update({"svg.fonttype": "path", "svg.hashsalt": "finops", "font.size": 9,
                            "axes.spines.top": False, "axes.spines.right": False})
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
DOLLARS = FuncFormatter(lambda v, _: f"${v:,.0f}" if abs(v) >= 10 else f"${v:,.2f}")


def spend_by_team_and_feature(figures: MonthFigures) -> str:
    """One horizontal bar per team, stacked by feature (the same colour for a feature in every bar)."""
    teams: dict[str, dict[str, float]] = defaultdict(dict)
    for row in figures.by_team_feature:
        teams[row["team"]][row["feature"]] = float(row["cost_usd"])
    features = sorted({f for t in teams.values() for f in t}, key=lambda f: -sum(t.get(f, 0.0) for t in teams.values()))
    names = list(teams)[::-1]  # the largest team on top
    fig = Figure(figsize=(8, 0.45 * len(names) + 1.6))
    ax = fig.add_subplot()
    left = [0.0] * len(names)
    for i, feature in enumerate(features):
        widths = [teams[t].get(feature, 0.0) for t in names]
        ax.barh(names, widths, left=left, color=PALETTE[i % len(PALETTE)], label=feature)
        left = [a + b for a, b in zip(left, widths)]
    ax.xaxis.set_major_formatter(DOLLARS)
    ax.set_xlabel(f"USD, {figures.month:%B %Y} ({figures.basis} cost basis)")
    ax.legend(title="feature", fontsize=8, loc="lower right", frameon=False)
    return _svg(fig)


def daily_trend(figures: MonthFigures) -> str:
    """The known days as bars, unknown days marked, and the projection of the days left with its 80% range."""
    fig = Figure(figsize=(8, 3.2))
    ax = fig.add_subplot()
    known = [r for r in figures.daily if r["cost_usd"] is not None]
    ax.bar([r["day"] for r in known], [float(r["cost_usd"]) for r in known], color=PALETTE[0], label="spend")
    unknown = figures.unknown_days
    if unknown:
        top = max([float(r["cost_usd"]) for r in known] or [1.0])
        ax.bar(unknown, [top] * len(unknown), color="none", edgecolor="#999999", hatch="///", label="not known")
    if figures.projected_daily:
        days = [r["day"] for r in figures.projected_daily]
        ax.plot(days, [r["expected"] for r in figures.projected_daily], color=PALETTE[1], linestyle="--",
                marker=".", label="projected")
        ax.fill_between(days, [r["low"] for r in figures.projected_daily], [r["high"] for r in figures.projected_daily],
                        color=PALETTE[1], alpha=0.2, label="80% range")
    ax.yaxis.set_major_formatter(DOLLARS)
    ax.set_ylabel("USD per day")
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    fig.autofmt_xdate()
    return _svg(fig)


def customers_cost_and_revenue(figures: MonthFigures) -> str:
    """AI cost of the top customers, with their revenue beside it where it is known."""
    rows = [r for r in figures.customers if not r["customer"].startswith("the other ")][::-1]
    fig = Figure(figsize=(8, 0.32 * len(rows) + 1.4))
    ax = fig.add_subplot()
    y = list(range(len(rows)))
    ax.barh([i + 0.2 for i in y], [float(r["ai_cost_usd"]) for r in rows], height=0.4, color=PALETTE[3], label="AI cost")
    if figures.has_revenue:
        ax.barh([i - 0.2 for i in y], [float(r["revenue_usd"] or 0) for r in rows], height=0.4, color=PALETTE[2],
                label="revenue (none known: no bar)")
    ax.set_yticks(y, [r["customer"] for r in rows])
    ax.xaxis.set_major_formatter(DOLLARS)
    ax.set_xlabel(f"USD, {figures.month:%B %Y} to {figures.through:%d %b}")
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    return _svg(fig)


def unit_costs(figures: MonthFigures) -> str:
    """Cost per 1,000 requests per feature, this month beside the month before."""
    rows = figures.unit_costs
    fig = Figure(figsize=(8, 0.4 * len(rows) + 1.4))
    ax = fig.add_subplot()
    y = list(range(len(rows)))[::-1]
    ax.barh([i + 0.2 for i in y], [r["cost_per_1k_requests"] or 0 for r in rows], height=0.4, color=PALETTE[0],
            label=f"{figures.month:%B}")
    ax.barh([i - 0.2 for i in y], [r["before_per_1k_requests"] or 0 for r in rows], height=0.4, color="#aaaaaa",
            label="month before")
    ax.set_yticks(y, [r["feature"] for r in rows])
    ax.xaxis.set_major_formatter(DOLLARS)
    ax.set_xlabel("traced USD per 1,000 requests")
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    return _svg(fig)


def _svg(fig: Figure) -> str:
    fig.tight_layout()
    buffer = io.StringIO()
    # no creation date or creator link: the same figures give the same file, and nothing in it points outside
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    return re.sub(r"^.*?(?=<svg)", "", buffer.getvalue(), flags=re.S)  # the element, without XML prolog and DOCTYPE
