"""The demo's revenue and outcomes files: what the business earns from each customer, and what each feature
achieves, so the unit economics and margins have something to divide by. Free-tier customers pay nothing
(their margin is negative by design), and one pro customer pays too little for what it uses."""

from pathlib import Path

from finops_pipeline.demo.sample_data import CUSTOMERS, Sample

MARK = "# written by the demo"
MONTHLY_REVENUE = {"enterprise": 2000, "pro": 400, "free": 0}
UNDERPRICED = {"cust-hooli": 90}  # a pro customer on an old discount
# Paid add-ons: part of a customer's revenue that a feature earns (the revenue file's feature column), a month's
# price per customer of the tier. The code-review add-on (None) earns half what its calls cost in the month, up
# to the sample's last day in it: its feature margin is negative whatever day of the month the demo runs on.
ADDONS = {"report-writer": ("enterprise", 150), "code-review": ("pro", None)}
UNDERPRICED_ADDON_TEAM = "engineering"  # code-review's team: the sample counts cost by team
OUTCOMES = {"ticket-summary": ("tickets resolved", 0.9), "chat-assistant": ("conversations", 0.25),
            "code-review": ("pull requests reviewed", 0.4), "report-writer": ("reports written", 0.5),
            "search-rerank": ("searches", 1.0)}


def write_business_files(revenue: Path, outcomes: Path, sample: Sample) -> str:
    """Write both files (unless a file there was not written by the demo); say what was done."""
    written = []
    months = sorted({f"{d:%Y-%m}" for d in sample.days})
    buyers = {tier: sum(1 for t in CUSTOMERS.values() if t == tier) for tier in set(CUSTOMERS.values())}

    def price(month: str, feature: str) -> float:
        tier, fixed = ADDONS[feature]
        if fixed is not None:
            return fixed
        cost = sum(c for (day, team), c in sample.team_cost.items()
                   if f"{day:%Y-%m}" == month and team == UNDERPRICED_ADDON_TEAM)
        return round(cost / 2 / buyers[tier], 2)

    if _ours(revenue):
        lines = ["month,customer_id,feature,revenue_usd"] + [
            f"{month},{customer},,{UNDERPRICED.get(customer, MONTHLY_REVENUE[tier])}"
            for month in months for customer, tier in sorted(CUSTOMERS.items())] + [
            f"{month},{customer},{feature},{price(month, feature)}" for month in months
            for customer, tier in sorted(CUSTOMERS.items()) for feature, (buyer, _) in ADDONS.items() if tier == buyer]
        revenue.write_text("\n".join(lines) + "\n")
        written.append(str(revenue))
    if _ours(outcomes):
        lines = ["day,feature,outcome,count"] + [
            f"{day},{feature},{OUTCOMES[feature][0]},{round(calls * OUTCOMES[feature][1])}"
            for (day, feature), calls in sorted(sample.feature_calls.items()) if feature in OUTCOMES]
        outcomes.write_text("\n".join(lines) + "\n")
        written.append(str(outcomes))
    return f"and revenue and outcomes to {' and '.join(written)}." if written else "Kept your revenue and outcomes files."


def _ours(path: Path) -> bool:
    """Whether the demo may write `path`: no file there, or one it wrote (CSV has no comments: a marker file)."""
    marker = path.with_name(f".{path.name}.demo")
    if path.exists() and not marker.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(MARK + "\n")
    return True
