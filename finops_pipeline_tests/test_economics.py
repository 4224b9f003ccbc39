"""Unit economics, margin per customer: from export days through the pipeline, with revenue and outcomes
files in the data directory (and without them)."""

from pathlib import Path

import dagster as dg
import pytest

from finops_pipeline_tests.conftest import DAY, cover_day, generation, materialize_day, query, replace_settings

ECONOMICS = ["langfuse_generations", "allocated_costs", "unit_economics"]


def _day(settings, day=DAY) -> None:
    """Four customers' calls: acme $40 in 4 calls of 2 traces by 2 users, globex $10, initech $10, umbrella $8."""
    rows = []
    for customer, feature, tier, calls, cost in [("acme", "report", "pro", 4, 10.0), ("globex", "chat", "enterprise", 2, 5.0),
                                                  ("initech", "chat", "free", 1, 10.0), ("umbrella", "chat", "pro", 2, 4.0)]:
        for i in range(calls):
            rows.append(generation(f"{customer}-{i}", f"{day} 10:00:00", cost=cost, trace_id=f"t-{customer}-{i // 2}",
                                   user_id=f"u-{customer}-{i % 2}",
                                   metadata={"feature": feature, "customer_id": customer, "tier": tier, "team": "x"}))
    cover_day(settings, {10: rows}, day=day)


def _write(settings, name: str, text: str) -> None:
    Path(settings.home).mkdir(parents=True, exist_ok=True)
    (Path(settings.home) / name).write_text(text)


def _margin_check(result) -> dg.AssetCheckEvaluation:
    [check] = [e for e in result.get_asset_check_evaluations() if e.check_name == "ai_cost_within_revenue"]
    return check


def test_unit_costs_per_call_request_user_and_outcome_add_up_to_the_day(settings):
    _day(settings)
    _write(settings, "outcomes.csv", "day,feature,outcome,count\n2026-11-21,report,reports written,8\n"
                                     "2026-11-21,chat,tickets resolved,20\n")
    result = materialize_day(settings, selection=ECONOMICS)
    assert result.success
    rows = {(d, v): r for d, v, *r in query(settings, """
        SELECT dimension, value, spend_usd::DOUBLE, calls, requests, users, cost_per_call, cost_per_1k_requests,
               cost_per_user, outcomes, cost_per_outcome FROM unit_economics WHERE day = ?""", [DAY])}
    assert rows[("customer_id", "acme")] == [40.0, 4, 2, 2, 10.0, 20000.0, 20.0, None, None]
    assert rows[("feature", "report")][-2:] == [8, 5.0] and rows[("feature", "chat")][-2:] == [20, 1.4]
    [(staged,)] = query(settings, "SELECT sum(cost_usd)::DOUBLE FROM langfuse_generations WHERE day = ?", [DAY])
    for dimension in ("feature", "customer_id", "tier"):
        assert sum(r[0] for (d, _), r in rows.items() if d == dimension) == pytest.approx(staged)
    meta = result.asset_materializations_for_node("unit_economics")[0].metadata
    assert meta["free_tier_share_pct"].value == pytest.approx(100 * 10 / 68, abs=0.01)
    assert meta["top10_customers_share_pct"].value == 100.0
    assert meta["cost_per_1k_requests/chat"].value == pytest.approx(1000 * 28 / 3)  # 3 traces


def test_without_revenue_margins_are_left_out_not_zero(settings):
    _day(settings)
    result = materialize_day(settings, selection=ECONOMICS)
    check = _margin_check(result)
    assert check.passed and "No revenue file at" in check.description and "margins are left out (not zero)" in \
        check.description
    assert query(settings, "SELECT count(*) FROM customer_margin") == [(0,)]
    assert query(settings, "SELECT count(*) FROM unit_economics WHERE outcomes IS NOT NULL") == [(0,)]


def test_a_customer_whose_ai_cost_eats_its_margin_is_named_once_a_month(settings, instance):
    _day(settings)
    _write(settings, "revenue.csv", "month,customer_id,revenue_usd\n2026-11,acme,100\n2026-11,globex,1000\n"
                                    "2026-11,umbrella,5\n2026-10,initech,50\n")
    first = _margin_check(materialize_day(settings, selection=ECONOMICS, instance=instance))
    assert not first.passed and first.severity == dg.AssetCheckSeverity.WARN
    assert first.description.startswith("2 customers past 30% of revenue or below zero margin, month to date: "
                                        "customer umbrella: AI cost $8.00 of revenue $5.00 (160%), margin $-3.00; "
                                        "customer acme: AI cost $40.00 of revenue $100.00 (40%), margin $60.00.")
    assert "1 customers with AI cost have no revenue row this month ($10.00): their margin is unknown" in \
        first.description
    assert first.metadata["new_alerts"].value == 2
    again = _margin_check(materialize_day(settings, selection=ECONOMICS, instance=instance))
    assert not again.passed and again.metadata["new_alerts"].value == 0
    assert query(settings, "SELECT customer_id, revenue_usd::DOUBLE, ai_cost_usd::DOUBLE, margin_usd::DOUBLE "
                           "FROM customer_margin WHERE day = ? ORDER BY customer_id", [DAY]) == [
        ("acme", 100.0, 40.0, 60.0), ("globex", 1000.0, 10.0, 990.0), ("initech", None, 10.0, None),
        ("umbrella", 5.0, 8.0, -3.0)]


def test_a_hashed_customer_is_named_by_its_hash(settings):
    _day(settings)
    _write(settings, "revenue.csv", "month,customer_id,revenue_usd\n2026-11,umbrella,5\n")
    hashed = replace_settings(settings, hashed_dimensions=["customer_id"], hash_salt="pepper",
                              finout_dimensions=["feature", "customer_id"])
    check = _margin_check(materialize_day(hashed, selection=ECONOMICS))
    assert "umbrella" not in check.description and "customer h_" in check.description


@pytest.mark.parametrize(("name", "text", "message"), [
    ("revenue.csv", "month,customer_id,revenue_usd\n2026-11,acme,100\n2026-13,acme,5\n",
     "revenue.csv, line 3, field month: '2026-13' is not a month (YYYY-MM)"),
    ("revenue.csv", "month,customer_id,revenue_usd\n2026-11,acme,-4\n",
     "revenue.csv, line 2, field revenue_usd: '-4' is not an amount of 0 or more"),
    ("revenue.csv", "month,customer,revenue_usd\n2026-11,acme,4\n", "revenue.csv: no column customer_id"),
    ("outcomes.csv", "day,feature,outcome,count\n2026-11-21,chat,tickets,2.5\n",
     "outcomes.csv, line 2, field count: '2.5' is not a whole count of 0 or more"),
])
def test_a_malformed_business_file_names_the_file_line_and_field(settings, name, text, message):
    _day(settings)
    _write(settings, name, text)
    result = materialize_day(settings, selection=ECONOMICS)
    [failure] = result.get_step_failure_events()
    assert failure.step_key == "unit_economics" and message in failure.event_specific_data.error.message


def test_revenue_rows_that_name_a_feature_give_that_feature_its_margin(settings):
    """A customer's revenue is all its rows; a row with a feature (an add-on) is also that feature's revenue."""
    _day(settings)
    _write(settings, "revenue.csv", "month,customer_id,feature,revenue_usd\n2026-11,acme,,100\n"
                                    "2026-11,acme,report,25\n2026-11,globex,report,5\n2026-11,globex,,1000\n")
    result = materialize_day(settings, selection=ECONOMICS)
    assert result.success
    assert query(settings, "SELECT customer_id, revenue_usd::DOUBLE FROM customer_margin WHERE day = ? AND "
                           "revenue_usd IS NOT NULL ORDER BY 1", [DAY]) == [("acme", 125.0), ("globex", 1005.0)]
    # report: $30 of revenue against acme's $40 of report calls; chat earns nothing of its own: no margin, not -$28
    assert query(settings, "SELECT feature, revenue_usd::DOUBLE, ai_cost_usd::DOUBLE, margin_usd::DOUBLE FROM "
                           "feature_margin WHERE day = ? ORDER BY feature", [DAY]) == [
        ("chat", None, 28.0, None), ("report", 30.0, 40.0, -10.0)]
    meta = result.asset_materializations_for_node("unit_economics")[0].metadata
    assert meta["margin_usd/report"].value == -10.0 and "margin_usd/chat" not in meta
    assert meta["features_with_margin"].value == 2
