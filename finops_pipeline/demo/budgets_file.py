"""The demo's budgets file: amounts set from the sample so that the analytics team crosses 100% of its month (and
not 120%) on the last day (its prompt regression), and 80% on an earlier day where the month has days enough."""

from datetime import date
from pathlib import Path

from finops_pipeline.budgets import period_bounds
from finops_pipeline.demo.sample_data import Sample

MARK = "# written by the demo (python -m finops_pipeline.demo); replace it with your own\n"


def write_demo_budgets(path: Path, sample: Sample) -> str:
    """Write the demo's budgets to `path`, unless a file there was not written by the demo; say what was done."""
    if path.exists() and not path.read_text().startswith(MARK):
        return f"Kept your budgets file {path}."
    last = sample.days[-1]
    month_start, _ = period_bounds("monthly", last)

    def spent(team: str | None, since: date, until: date = last) -> float:
        return sum(cost for (day, t), cost in sample.team_cost.items()
                   if since <= day <= until and (team is None or t == team))

    recent = [d for d in sample.days[-28:]]
    # 100% is crossed on the last day (its regression) and 120% is not; the month through the day before stays
    # under 100% but, where its days allow (a regression early in a month outweighs the days before it), past
    # 85% of it, so 80% falls earlier whichever weekday the last day is
    month = spent("analytics", month_start)
    before = spent("analytics", month_start, sample.days[-2])  # 0 when the last day is the month's first
    ceiling = [month / 1.02] + ([before / 0.85] if before else [])
    analytics = round(max(min(ceiling), month / 1.18, before * 1.01, 0.01), 2)
    weekly_support = round(2.2 * spent("support", recent[0]) / 4, 2)
    monthly_all = round(2.5 * spent(None, recent[0]) / 28 * 31, 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(MARK + f"""budgets:
  - name: analytics-team
    scope: {{team: analytics}}
    period: monthly
    amount_usd: {analytics}
  - name: support-team
    scope: {{team: support}}
    period: weekly
    amount_usd: {weekly_support}
  - name: all-llm
    scope: {{}}
    period: monthly
    amount_usd: {monthly_all}
    thresholds: [50, 80, 100]
""")
    return f"and three budgets to {path} (analytics-team ${analytics:,.2f} a month)."
