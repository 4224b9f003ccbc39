"""The monthly report as one self-contained HTML file (inline CSS and SVG charts: no script, font or network
needed to read it), and its tables as markdown for the Dagster UI."""

from __future__ import annotations

from datetime import date
from decimal import ROUND_HALF_UP, Decimal

import jinja2
import pandas as pd

from finops_pipeline.report import charts
from finops_pipeline.report.figures import TOP_CUSTOMERS, MonthFigures

_ENV = jinja2.Environment(loader=jinja2.PackageLoader("finops_pipeline.report", ""), autoescape=True,
                          undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def usd(value, places: int = 2) -> str:
    """$1,234.57, -$12.00; "—" for unknown (None or NaN). Rounded half up, as cents_that_add rounds a
    column's total (a float's or a Decimal's own formatting would round a half cent to even)."""
    if value is None or value != value:
        return "—"
    amount = Decimal(str(abs(value))).quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP)
    return f"-${amount:,}" if value < 0 and amount else f"${amount:,}"


def pct(value) -> str:
    return "—" if value is None or value != value else f"{value:,.0f}%" if abs(value) >= 10 else f"{value:,.1f}%"


def signed(value) -> str:
    return "—" if value is None or value != value else f"{value:+,.1f}%"


def num(value) -> str:
    return "—" if value is None or value != value else f"{value:,}"


_ENV.filters.update(usd=usd, usd4=lambda v: usd(v, 4), pct=pct, signed=signed, num=num,
                    days=lambda days: ", ".join(d.isoformat() for d in days))


def render(figures: MonthFigures, warn_pct: float) -> str:
    """The report's HTML."""
    drawn = {"spend": charts.spend_by_team_and_feature(figures), "trend": charts.daily_trend(figures),
             "customers": charts.customers_cost_and_revenue(figures) if figures.customers else "",
             "unit_costs": charts.unit_costs(figures) if figures.unit_costs else ""}
    return _ENV.get_template("monthly_report.html.j2").render(
        f=figures, charts=drawn, top=TOP_CUSTOMERS, warn_pct=f"{warn_pct:g}",
        money=lambda v: Decimal(str(round(v, 2))))


def markdown_tables(figures: MonthFigures) -> dict[str, str]:
    """The report's main tables as markdown, for the materialization's metadata (figures formatted as in the file)."""
    def table(rows: list[dict], columns: dict[str, str], money: tuple[str, ...] = (), share: tuple[str, ...] = ()) -> str:
        if not rows:
            return "_none_"
        frame = pd.DataFrame([{title: (usd(r[c]) if c in money else pct(r[c]) if c in share else
                                       r[c].isoformat() if isinstance(r[c], date) else _markdown_text(r[c]))
                               for c, title in columns.items()} for r in rows])
        return frame.to_markdown(index=False)

    return {
        "spend_by_team_and_feature": table(figures.by_team_feature, {"team": "Team", "feature": "Feature",
                                                                     "shown_usd": "Spend"}, money=("shown_usd",)),
        "customers": table(figures.customers, {"customer": "Customer", "ai_cost_usd": "AI cost", "revenue_usd": "Revenue",
                                               "margin_usd": "Margin", "ai_share_pct": "AI cost / revenue"},
                           money=("ai_cost_usd", "revenue_usd", "margin_usd"), share=("ai_share_pct",)),
        "unit_costs": table(figures.unit_costs, {"feature": "Feature", "spend_usd": "Traced spend",
                                                 "cost_per_1k_requests": "Per 1k requests",
                                                 "before_per_1k_requests": "Month before",
                                                 "cost_per_outcome": "Per outcome"},
                            money=("spend_usd", "cost_per_1k_requests", "before_per_1k_requests", "cost_per_outcome")),
        "reconciliation": table(figures.reconciliation, {"provider": "Provider", "traced_usd": "Traced",
                                                         "billed_usd": "Billed", "gap_usd": "Gap"},
                                money=("traced_usd", "billed_usd", "gap_usd")),
    }


def _markdown_text(value):
    """A value as a markdown table cell: a `|` would start a new column, and HTML would be rendered."""
    if not isinstance(value, str):
        return value
    return value.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
