"""Budgets, anomalies and the projection: the controls finance acts on.

Budgets run through the pipeline on export days; the anomaly causes on weeks of history written to the
warehouse with the pipeline's own allocation SQL (five weeks through the whole graph would take minutes),
then the real `cost_anomalies` asset; the detector's figures on the labelled quarter of bench/."""

import sys
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from dagster_duckdb import DuckDBResource

from finops_pipeline.assets.allocated_costs import _ALLOCATE
from finops_pipeline.budgets import BudgetsFileError, load_budgets, period_bounds
from finops_pipeline.projection import backtest, forecast
from finops_pipeline.warehouse import connect, replace_partition
from finops_pipeline.assets.cost_anomalies import _new_episode
from finops_pipeline.settings import FinopsSettings
from finops_pipeline.destinations.finout import hashed_value
from finops_pipeline_tests.conftest import (
    REPO, cover_day, generation, materialize_day, query, replace_settings, write_anthropic_bill, write_openai_bill,
)
from finops_pipeline_tests.test_alerts import tick
from finops_pipeline_tests.webhook_double import Receiver

sys.path.insert(0, str(REPO / "bench"))
from anomaly_quarter import evaluate  # noqa: E402

NOV = [date(2026, 11, d) for d in range(1, 8)]
CONTROLS = ["langfuse_generations", "allocated_costs", "budget_status"]
BUDGETS = """budgets:
  - name: search-team
    scope: {team: search}
    period: monthly
    amount_usd: 10
  - name: everything
    scope: {}
    period: weekly
    amount_usd: 1000
"""


def _write(settings, text: str) -> None:
    Path(settings.home).mkdir(parents=True, exist_ok=True)
    settings.budgets_path.write_text(text)


def _search_day(settings, day: date, cost: float, calls: int = 2) -> None:
    """`day` in the export: `calls` generations of team search costing `cost` in all."""
    stamp = f"{day} 10:00:00"
    cover_day(settings, {10: [generation(f"s{i}-{day}", stamp, cost=cost / calls,
                                         metadata={"team": "search", "feature": "rerank"}) for i in range(calls)]},
              day=day)


def _budget_check(result) -> dg.AssetCheckEvaluation:
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == "budget_thresholds"]
    return evaluation


# --- budgets ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "message"), [
    ("budgets:\n  - name: a\n    period: monthly\n", "budget 'a', field amount_usd: Field required"),
    ("budgets:\n  - name: a\n    period: monthly\n    amount_usd: -5\n", "budget 'a', field amount_usd: Input should be greater than 0"),
    ("budgets:\n  - name: a\n    period: daily\n    amount_usd: 5\n", "budget 'a', field period: Input should be 'monthly', 'quarterly' or 'weekly'"),
    ("budgets:\n  - name: a\n    period: weekly\n    amount_usd: 5\n    thresholds: [80, -1]\n", "budget 'a', field thresholds"),
    ("budgets:\n  - name: a\n    period: weekly\n    amount_usd: 5\n    scope: {squad: x}\n", "budget 'a', field scope: squad is not an allocation key"),
    ("budgets:\n  - period: weekly\n    amount_usd: 5\n", "budget #1, field name: Field required"),
    ("budgets:\n  - name: a\n    period: weekly\n    amount_usd: 5\n  - name: a\n    period: weekly\n    amount_usd: 6\n", "budget 'a', field name: used twice"),
    ("budgets:\n  - name: a\n    period: weekly\n    amount: 5\n", "budget 'a', field amount: Extra inputs are not permitted"),
    ("budgets: [\n", "not YAML"),
    ("budgets:\n  - name: a\n    period: weekly\n    amount_usd: 5\n    scope: {team: [x, '']}\n", "scope key 'team' has an empty value"),
    ("budgets:\n  - name: a\n    period: weekly\n    amount_usd: 5\n    thresholds: [.inf]\n", "every threshold is a percentage above 0"),
    ("budgets:\n  - name: a\n    period: weekly\n    amount_usd: 5\n    thresholds: [true]\n", "every threshold is a number"),
    ("budgets:\n  - name: a\n    period: weekly\n    amount_usd: 5\n    amount_usd: 6\n", "amount_usd written twice"),
    ("budgets:\n  - name: a\n    period: weekly\n    amount_usd: 1e29\n", "budget 'a', field amount_usd: Input should be less than or equal to"),
])
def test_a_malformed_budgets_file_names_the_budget_and_the_field(tmp_path, text, message):
    path = tmp_path / "budgets.yaml"
    path.write_text(text)
    with pytest.raises(BudgetsFileError, match=str(path)) as error:
        load_budgets(path, ["feature", "team"])
    assert message in str(error.value)


def test_ids_written_as_numbers_and_an_empty_list_are_read_as_meant(tmp_path):
    path = tmp_path / "budgets.yaml"
    path.write_text("budgets:\n  - name: a\n    period: weekly\n    amount_usd: 5\n    scope: {customer_id: 12345}\n")
    [budget] = load_budgets(path, ["customer_id"])
    assert budget.scope == {"customer_id": "12345"} and budget.predicate() == "allocation['customer_id'] IN ('12345')"
    path.write_text("budgets:\n")
    assert load_budgets(path, []) == []


def test_a_budgets_file_named_but_missing_fails_rather_than_meaning_no_budgets(settings):
    _search_day(settings, NOV[0], 1.0)
    named = replace_settings(settings, budgets_file=str(Path(settings.home) / "budgetz.yaml"))
    result = materialize_day(named, NOV[0], selection=CONTROLS)
    [failure] = result.get_step_failure_events()
    assert f"FINOPS_BUDGETS_FILE={named.budgets_file} does not exist" in failure.event_specific_data.error.message


def test_on_the_invoice_basis_a_day_whose_bills_were_not_read_is_unknown_not_zero(settings):
    _write(settings, BUDGETS)
    for day in NOV[:2]:
        _search_day(settings, day, 1.0)
    for day in NOV[:2]:  # the bills of the 1st are read, those of the 2nd never are
        selection = CONTROLS + (["openai_costs", "anthropic_costs", "other_provider_costs"] if day == NOV[0] else [])
        write_openai_bill(Path(settings.billing_dir), day, {"gpt-4o-2024-08-06, input": 1.0})
        write_anthropic_bill(Path(settings.billing_dir), day, {})
        materialize_day(settings, day, selection=[a for a in selection if a != "budget_status"], cost_basis="invoice")
    delivery = materialize_day(settings, NOV[1], selection=["finout_upload"], cost_basis="invoice")
    [failure] = delivery.get_step_failure_events()
    assert "On the invoice cost basis, 2026-11-02 needs its bills, and anthropic_costs, openai_costs, " \
           "other_provider_costs have not read them: the day's cost is unknown, not $0" in \
           failure.event_specific_data.error.message
    assert materialize_day(settings, NOV[1], selection=["budget_status"], cost_basis="invoice").success
    assert query(settings, "SELECT spend_usd, days_missing FROM budget_status WHERE day = ? AND budget = 'search-team'",
                 [NOV[1]]) == [(1, 1)]


def test_a_malformed_budgets_file_fails_the_day_saying_so(settings):
    _write(settings, "budgets:\n  - name: search-team\n    period: monthly\n    amount_usd: lots\n")
    _search_day(settings, NOV[0], 1.0)
    result = materialize_day(settings, NOV[0], selection=CONTROLS)
    [failure] = result.get_step_failure_events()
    assert failure.step_key == "budget_status"
    assert "budget 'search-team', field amount_usd: Input should be a valid decimal" in \
        failure.event_specific_data.error.message


@pytest.mark.parametrize(("period", "day", "bounds"), [
    ("monthly", date(2026, 2, 14), (date(2026, 2, 1), date(2026, 2, 28))),
    ("quarterly", date(2026, 11, 30), (date(2026, 10, 1), date(2026, 12, 31))),
    ("weekly", date(2026, 11, 29), (date(2026, 11, 23), date(2026, 11, 29))),  # a Sunday: weeks are from Monday
    ("weekly", date(2026, 12, 31), (date(2026, 12, 28), date(2027, 1, 3))),
])
def test_periods_are_utc_calendar_periods(period, day, bounds):
    assert period_bounds(period, day) == bounds


def test_each_threshold_is_alerted_once_per_period_and_the_state_shows_every_day(settings, instance, tmp_path):
    """search-team's $10 month at $3 a day: 50% crossed on the 2nd, 80% on the 3rd, 100% and 120% on the 4th
    ($12); the 5th is over, with nothing new to say; a re-run of the 3rd alerts nothing again."""
    _write(settings, BUDGETS)
    for day in NOV[:5]:
        _search_day(settings, day, 3.0)
    evaluations = {}
    for day in NOV[:5]:
        result = materialize_day(settings, day, selection=CONTROLS, instance=instance)
        evaluations[day] = _budget_check(result)
    news = {day: e.metadata["new_alerts"].value for day, e in evaluations.items()}
    assert news == {NOV[0]: 0, NOV[1]: 1, NOV[2]: 1, NOV[3]: 2, NOV[4]: 0}
    # the 1st shows its projection past 100% (WARN) but does not alert it: one day is too little to go on
    assert not evaluations[NOV[0]].passed and evaluations[NOV[0]].severity == dg.AssetCheckSeverity.WARN
    assert "search-team (team=search, monthly from 2026-11-01): $3.00 of $10.00 (30%) through 11-01; projected " \
           "$90.00 (900%" in evaluations[NOV[0]].description
    assert "search-team crossed 80%: search-team (team=search, monthly from 2026-11-01): $9.00 of $10.00 (90%)" in \
        evaluations[NOV[2]].metadata["alert"].value
    # every day shows the state: over 100% fails with ERROR on the 4th and the 5th alike
    for day in NOV[3:5]:
        assert not evaluations[day].passed and evaluations[day].severity == dg.AssetCheckSeverity.ERROR
    assert "$15.00 of $10.00 (150%)" in evaluations[NOV[4]].description
    assert "largest: feature rerank $15.00, customer unallocated $15.00, model gpt-4o-2024-08-06 $15.00" in \
        evaluations[NOV[4]].description

    rerun = _budget_check(materialize_day(settings, NOV[2], selection=CONTROLS, instance=instance))
    assert not rerun.passed and rerun.metadata["new_alerts"].value == 0

    # the alert sensor sends the evaluations with news, and only those: the 2nd's, 3rd's and 4th's
    with Receiver() as receiver:
        tick(instance, replace_settings(settings, alert_webhook_url=receiver.webhook_url))
        budget_alerts = [m for m in receiver.messages if "check budget_thresholds failed" in m]
    assert len(budget_alerts) == 3
    assert any("search-team crossed 100%" in m and "search-team crossed 120%" in m for m in budget_alerts)
    assert query(settings, "SELECT threshold, day FROM budget_alerts WHERE budget = 'search-team' ORDER BY day, "
                           "threshold") == [("50", NOV[1]), ("80", NOV[2]), ("100", NOV[3]), ("120", NOV[3])]


def test_a_projection_past_100_percent_is_alerted_once_with_a_week_to_go_on(settings):
    _write(settings, "budgets:\n  - name: search-team\n    scope: {team: search}\n    period: monthly\n"
                     "    amount_usd: 100\n")
    news = {}
    for n in range(1, 9):  # $4 a day: 30 days make $120
        day = date(2026, 11, n)
        _search_day(settings, day, 4.0)
        check = _budget_check(materialize_day(settings, day, selection=CONTROLS))
        news[n] = check.metadata["new_alerts"].value
    assert news == {1: 0, 2: 0, 3: 0, 4: 0, 5: 0, 6: 0, 7: 1, 8: 0}
    assert "projected $120.00 (120%" in check.description and check.severity == dg.AssetCheckSeverity.WARN


def test_late_data_re_run_moves_the_status(settings):
    _write(settings, BUDGETS)
    for day in NOV[:3]:
        _search_day(settings, day, 1.0)
        assert materialize_day(settings, day, selection=CONTROLS).success
    assert query(settings, "SELECT spend_usd, share_pct FROM budget_status WHERE day = ? AND budget = 'search-team'",
                 [NOV[2]]) == [(3, 30.0)]
    _search_day(settings, NOV[1], 5.0, calls=4)  # the 2nd's late rows arrive: the schedule re-runs it, then the 3rd
    assert materialize_day(settings, NOV[1], selection=CONTROLS).success
    result = materialize_day(settings, NOV[2], selection=CONTROLS)
    assert query(settings, "SELECT spend_usd, share_pct, threshold_crossed FROM budget_status WHERE day = ? AND "
                           "budget = 'search-team'", [NOV[2]]) == [(7, 70.0, 50.0)]
    assert "$7.00 of $10.00 (70%)" in _budget_check(result).description


def test_a_day_of_the_period_not_allocated_is_counted_not_taken_as_zero(settings):
    _write(settings, BUDGETS)
    for day in (NOV[0], NOV[2]):
        _search_day(settings, day, 1.0)
        materialize_day(settings, day, selection=CONTROLS)
    check = _budget_check(materialize_day(settings, NOV[2], selection=CONTROLS))
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert "with 1 day of the period not yet allocated (so at least this; the projection estimates them)" in \
        check.description
    assert query(settings, "SELECT days_missing FROM budget_status WHERE day = ? AND budget = 'search-team'",
                 [NOV[2]]) == [(1,)]


# --- projection -------------------------------------------------------------------------------------------

def test_the_projection_knows_the_weekday_mix_and_says_how_far_to_trust_it():
    start = date(2026, 9, 7)  # a Monday; $100 on weekdays, $20 at weekends, 8 weeks
    daily = {start + timedelta(days=i): (20.0 if (start + timedelta(days=i)).weekday() >= 5 else 100.0)
             for i in range(56)}
    through = max(daily)
    week = [through + timedelta(days=i) for i in range(1, 8)]
    ahead = forecast(daily, through, week)
    assert ahead.expected == pytest.approx(540.0, rel=0.02) and ahead.low - 0.01 <= 540 <= ahead.high + 0.01
    weekend = [d for d in week if d.weekday() >= 5]
    assert forecast(daily, through, weekend).expected == pytest.approx(40.0, rel=0.05)
    mape, n = backtest(daily, through, 7)
    assert n == 28 and mape < 2
    growing = {d: v * (1.01 ** i) for i, (d, v) in enumerate(sorted(daily.items()))}
    assert forecast(growing, through, week).expected > ahead.expected  # the trend is carried (damped)
    assert backtest({through: 5.0}, through, 7) == (None, 0)  # too new to say
    # two days never allocated: out of the history, not $0; the forecast and its backtest are unmoved
    gone = {through - timedelta(days=3), through - timedelta(days=10)}
    known = set(daily) - gone
    partial = {d: v for d, v in daily.items() if d not in gone}
    assert forecast(partial, through, week, known).expected == pytest.approx(ahead.expected, rel=0.02)
    assert backtest(partial, through, 7, known=known)[0] < 2
    assert forecast(partial, through, week).expected < ahead.expected * 0.97  # were they $0, it would drop


# --- anomalies --------------------------------------------------------------------------------------------

JUDGED = date(2026, 11, 25)  # a Wednesday


def _generations(day: date, feature: str, calls: int, cost_per_call: float, model: str = "gpt-4.1",
                 prompt_version: int = 6, team: str = "analytics") -> pd.DataFrame:
    return pd.DataFrame({
        "day": day, "observation_id": [f"{feature}-{day}-{model}-{prompt_version}-{i}" for i in range(calls)],
        "start_time": pd.Timestamp(day) + pd.Timedelta(hours=12), "model": model, "provider": "openai",
        "cost_usd": cost_per_call, "feature": feature, "team": team, "prompt_name": f"{feature}-prompt",
        "prompt_version": prompt_version})


def _history(settings, today: list[pd.DataFrame], weekend_dip: bool = False) -> None:
    """Five weeks before JUDGED of three steady features, then JUDGED's own rows, allocated as the asset does."""
    frames = []
    for back in range(35, 0, -1):
        day = JUDGED - timedelta(days=back)
        scale = 0.4 if weekend_dip and day.weekday() >= 5 else 1.0
        frames += [_generations(day, "report-writer", int(100 * scale), 0.30),
                   _generations(day, "chat", int(400 * scale), 0.10, model="claude-sonnet-4", team="product"),
                   _generations(day, "search", int(200 * scale), 0.05, team="search")]
    frames += today
    rows = pd.concat(frames)
    with connect(DuckDBResource(database=str(settings.duckdb_path))) as conn:
        conn.register("g", rows)
        conn.execute("""
            INSERT INTO langfuse_generations BY NAME
            SELECT day, observation_id, 't-' || observation_id AS trace_id, 'p' AS project_id, 'GENERATION' AS type,
                   start_time, model, provider, 10 AS input_tokens, 5 AS output_tokens, 0 AS cached_tokens,
                   0 AS cache_write_tokens, 0 AS reasoning_tokens, 15 AS total_tokens, cost_usd,
                   'langfuse' AS cost_source, prompt_name, prompt_version,
                   MAP {'feature': feature, 'team': team} AS allocation, 'constructed' AS source_file
            FROM g""")
        for day in sorted(set(rows["day"])):
            replace_partition(conn, "allocated_costs", day, _ALLOCATE)


def _anomalies(settings) -> list[tuple]:
    result = materialize_day(settings, JUDGED, selection=["cost_anomalies"])
    assert result.success
    return query(settings, "SELECT dimension, value, direction, cause, explanation FROM cost_anomalies "
                           "WHERE day = ? ORDER BY dimension, value", [JUDGED])


STEADY = [_generations(JUDGED, "chat", 400, 0.10, model="claude-sonnet-4", team="product"),
          _generations(JUDGED, "search", 200, 0.05, team="search")]


def test_a_new_prompt_version_is_named_with_its_cost_per_call(settings):
    _history(settings, STEADY + [_generations(JUDGED, "report-writer", 10, 0.30),
                                 _generations(JUDGED, "report-writer", 95, 3.00, prompt_version=7)])
    found = {(d, v): (cause, text) for d, v, _, cause, text in _anomalies(settings)}
    cause, text = found[("feature", "report-writer")]
    assert cause == "prompt version"
    assert text == ("feature report-writer: $288.00 vs $30.00 usual (×9.6); calls ×1.1, cost per call ×9.1; "
                    "prompt report-writer-prompt v7 (first seen today) costs ×10.0 per call of v6")
    assert found[("team", "analytics")][0] == "prompt version"  # the same rows seen by team


def test_a_series_of_a_hashed_dimension_is_named_by_its_hash_everywhere(settings):
    """Anomalies and budgets name values as the delivery does: hashed teams and features never leave in the clear."""
    hashed = replace_settings(settings, hashed_dimensions=["team", "feature"], hash_salt="pepper")
    _history(hashed, STEADY + [_generations(JUDGED, "report-writer", 100, 1.20)])
    result = materialize_day(hashed, JUDGED, selection=["cost_anomalies"])
    team, feature = hashed_value("team", "analytics", "pepper"), hashed_value("feature", "report-writer", "pepper")
    rows = query(hashed, "SELECT dimension, value, explanation FROM cost_anomalies WHERE day = ?", [JUDGED])
    assert {("team", team), ("feature", feature)} <= {(d, v) for d, v, _ in rows}
    [check] = result.get_asset_check_evaluations()
    assert f"feature {feature}: $120.00" in check.description and f"mostly team {team}" in check.description
    assert "analytics" not in check.description + str(rows) and "report-writer" not in check.description + str(rows)
    _write(hashed, BUDGETS)
    status = _budget_check(materialize_day(hashed, JUDGED, selection=["budget_status"]))
    assert "report-writer" not in status.description and f"largest: feature {feature} $" in status.description


@pytest.mark.parametrize(("today", "series", "cause", "words"), [
    ([_generations(JUDGED, "report-writer", 400, 0.30)], ("feature", "report-writer"), "volume",
     "calls ×4.0, cost per call ×1.0"),
    ([_generations(JUDGED, "report-writer", 100, 1.20)], ("feature", "report-writer"), "unit cost",
     "calls ×1.0, cost per call ×4.0"),
    ([_generations(JUDGED, "report-writer", 100, 1.50, model="o3")], ("feature", "report-writer"), "model switch",
     "model switch: o3 now 100% of the calls (was 0%)"),
    ([], ("feature", "report-writer"), "silent", "no calls today, 100 usual: the series went silent"),
])
def test_each_cause_is_told_from_the_data(settings, today, series, cause, words):
    _history(settings, STEADY + today)
    found = {(d, v): (c, text) for d, v, _, c, text in _anomalies(settings)}
    assert found[series][0] == cause and words in found[series][1]
    assert set(found) <= {series, ("team", "analytics"), ("model", "gpt-4.1"), ("model", "o3"), ("total", "all spend")}


def test_a_weekend_dip_and_a_steady_day_are_not_anomalies(settings):
    _history(settings, STEADY + [_generations(JUDGED, "report-writer", 100, 0.30)], weekend_dip=True)
    assert _anomalies(settings) == []
    saturday = JUDGED - timedelta(days=4)  # at 40% of a weekday, as the Saturdays before it
    assert saturday.weekday() == 5
    assert materialize_day(settings, saturday, selection=["cost_anomalies"]).success
    assert query(settings, "SELECT count(*) FROM cost_anomalies WHERE day = ?", [saturday]) == [(0,)]


def test_a_day_not_allocated_is_not_judged_all_clear(settings):
    _history(settings, STEADY + [_generations(JUDGED, "report-writer", 100, 0.30)])
    result = materialize_day(settings, JUDGED + timedelta(days=1), selection=["cost_anomalies"])
    [failure] = result.get_step_failure_events()
    assert "allocated_costs has not written 2026-11-26: the day's cost is unknown, so it is not judged" in \
        failure.event_specific_data.error.message


def test_an_episode_met_out_of_order_is_alerted_once(settings):
    _history(settings, STEADY)
    with connect(DuckDBResource(database=str(settings.duckdb_path))) as conn:
        news = [_new_episode(conn, "feature", "x", "spike", JUDGED + timedelta(days=n)) for n in (3, 0, 1, 2)]
        assert news == [True, False, False, False]
        assert conn.execute("SELECT first_day, last_day FROM anomaly_alerts").fetchall() == [
            (JUDGED, JUDGED + timedelta(days=3))]


def test_unknown_anomaly_dimensions_fail_at_load():
    with pytest.raises(ValueError, match="FINOPS_ANOMALY_DIMENSIONS: featur is not an allocation key"):
        FinopsSettings.from_env({"FINOPS_ANOMALY_DIMENSIONS": "featur,model"})
    narrow = FinopsSettings.from_env({"FINOPS_ALLOCATION_KEYS": "feature"})
    assert narrow.anomaly_series == ["feature", "model"]  # the defaults that apply


def test_an_anomaly_going_on_for_days_is_alerted_once(settings, instance):
    _history(settings, STEADY + [_generations(JUDGED, "report-writer", 400, 0.30)])
    first = materialize_day(settings, JUDGED, selection=["cost_anomalies"], instance=instance)
    again = materialize_day(settings, JUDGED, selection=["cost_anomalies"], instance=instance)  # a re-run
    [a] = [e for e in first.get_asset_check_evaluations()]
    [b] = [e for e in again.get_asset_check_evaluations()]
    assert not a.passed and a.severity == dg.AssetCheckSeverity.WARN and a.metadata["new_alerts"].value >= 1
    assert not b.passed and b.metadata["new_alerts"].value == 0 and b.description == a.description


# --- the detector, measured -------------------------------------------------------------------------------

def test_the_detector_meets_its_targets_on_the_labelled_quarter():
    """Recall >= 0.9 on injected anomalies above the floor; at most one false alert per 50 series a month."""
    results = [evaluate(seed) for seed in (1, 2, 3, 4, 5)]
    recall = sum(r["recall"] for r in results) / len(results)
    false = sum(r["false_per_50_series_month"] for r in results) / len(results)
    assert recall >= 0.9, results
    assert false <= 1.0, results
