"""Allocation, the Finout file, bills and reconciliation, on constructed days."""

import csv
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from finops_pipeline.assets.allocated_costs import conservation_check
from finops_pipeline.destinations.finout import file_name
from finops_pipeline.warehouse import SCHEMA_VERSION
from finops_pipeline_tests.conftest import (
    DAY,
    check_evaluation,
    failed_on_checks,
    cover_day,
    generation,
    materialization_metadata,
    materialize_day,
    query,
    usd,
    write_anthropic_bill,
    write_openai_bill,
)


def write_day(settings, rows: list[dict]) -> None:
    cover_day(settings, {9: rows})


ROWS = [
    generation("a1", "2026-11-21 09:00:00", cost=1.25, metadata={"feature": "chat", "team": "product", "customer_id": "acme"}),
    generation("a2", "2026-11-21 09:01:00", cost=0.75, metadata={"feature": "chat", "team": "product", "customer_id": "acme"}),
    generation("b1", "2026-11-21 09:02:00", cost=3.0, model="claude-sonnet-4-20250514",
               metadata={"feature": "=cmd|' /C calc'!A0", "team": "eng, \"core\"", "customer_id": "zürich"}),
    generation("u1", "2026-11-21 09:03:00", cost=None, model="acme-ft", metadata={"feature": "chat"}),
]
TRACED = {"openai": Decimal("2.0"), "anthropic": Decimal("3.0")}


def bill(settings, openai: Decimal, anthropic: Decimal) -> None:
    billing = Path(settings.billing_dir)
    write_openai_bill(billing, DAY, {"gpt-4o-2024-08-06, input": float(openai * Decimal("0.4")),
                                     "gpt-4o-2024-08-06, output": float(openai * Decimal("0.6"))}, pages=2)
    write_anthropic_bill(billing, DAY, {"claude-sonnet-4-20250514": str(anthropic * 100)})


def read_finout(settings) -> list[dict]:
    with open(Path(settings.finout_dir) / file_name(DAY), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_allocation_conserves_cost_and_calls_through_to_the_finout_file(settings):
    write_day(settings, ROWS)
    bill(settings, TRACED["openai"], TRACED["anthropic"])
    result = materialize_day(settings)
    assert result.success
    assert check_evaluation(result, "cost_conserved").passed
    assert check_evaluation(result, "delivered_cost_conserved").passed
    staged = query(settings, "SELECT sum(cost_usd), count(*) FROM langfuse_generations")[0]
    allocated = query(settings, "SELECT sum(cost_usd), sum(calls), sum(unpriced_calls) FROM allocated_costs")[0]
    delivered = sum(Decimal(r["Cost"]) for r in read_finout(settings))
    assert staged == (usd("5.0"), 4)
    assert allocated == (usd("5.0"), 4, 1)
    assert delivered == usd("5.0")
    assert materialization_metadata(result, "finout_upload")["total_cost_usd"] == 5.0


def test_finout_file_has_the_documented_columns_and_survives_a_csv_round_trip(settings):
    write_day(settings, ROWS)
    bill(settings, TRACED["openai"], TRACED["anthropic"])
    assert materialize_day(settings).success
    rows = read_finout(settings)
    assert list(rows[0]) == ["UsageDate", "Cost", "source", "service_name", "feature", "customer_id", "team",
                             "environment", "tier", "provider", "model"]
    by_provider = {r["provider"]: r for r in rows}
    assert set(by_provider) == {"openai", "anthropic"}  # the unpriced call carries no cost: no row
    odd = by_provider["anthropic"]
    # a leading = is neutralised for spreadsheets (the apostrophe says "text"); quotes, commas, UTF-8 survive
    assert (odd["feature"], odd["team"], odd["customer_id"]) == ("'=cmd|' /C calc'!A0", "eng, \"core\"", "zürich")
    assert odd["service_name"] == odd["feature"] and odd["source"] == "langfuse" and odd["UsageDate"] == "2026-11-21"
    assert by_provider["openai"]["tier"] == "unallocated"


def test_rerun_gives_identical_tables_and_one_finout_file(settings):
    write_day(settings, ROWS)
    bill(settings, TRACED["openai"], TRACED["anthropic"])
    tables = ["langfuse_generations", "allocated_costs", "provider_costs", "cost_reconciliation", "quarantine"]

    def snapshot():
        return {t: sorted(map(repr, query(settings, f"SELECT * FROM {t}"))) for t in tables}

    assert materialize_day(settings).success
    first, first_file = snapshot(), (Path(settings.finout_dir) / file_name(DAY)).read_bytes()
    assert materialize_day(settings).success
    assert snapshot() == first
    assert [p.name for p in Path(settings.finout_dir).iterdir()] == [file_name(DAY)]
    assert (Path(settings.finout_dir) / file_name(DAY)).read_bytes() == first_file


def test_conservation_check_fails_when_a_dollar_goes_missing(settings):
    import duckdb

    write_day(settings, ROWS)
    bill(settings, TRACED["openai"], TRACED["anthropic"])
    assert materialize_day(settings).success
    with duckdb.connect(str(settings.duckdb_path)) as conn:
        conn.execute("UPDATE allocated_costs SET cost_usd = cost_usd - 0.01 WHERE provider = 'openai'")
        result = conservation_check(conn, DAY)
    assert not result.passed
    assert result.metadata["difference_usd"].value == pytest.approx(-0.01)


@pytest.mark.parametrize(("openai_gap_pct", "passed", "severity"), [
    (Decimal("1.9"), True, None),
    (Decimal("3"), False, "WARN"),
    (Decimal("4.9"), False, "WARN"),
    (Decimal("5.2"), False, "ERROR"),
    (Decimal("-8"), False, "ERROR"),
])
def test_reconciliation_check_around_the_thresholds(settings, settled, openai_gap_pct, passed, severity):
    write_day(settings, ROWS)
    # gap % is of the bill: billed = traced / (1 - gap)
    openai_billed = (TRACED["openai"] / (1 - openai_gap_pct / 100)).quantize(Decimal("0.000001"))
    bill(settings, openai_billed, TRACED["anthropic"])
    result = materialize_day(settings)
    # an ERROR fails the day's run (the check is blocking; the reconciliation is recorded first); a WARN does not
    assert result.success is (severity != "ERROR")
    if severity == "ERROR":
        assert failed_on_checks(result) == {"cost_reconciliation"}
        assert query(settings, "SELECT count(*) FROM cost_reconciliation")[0][0] > 0
    evaluation = check_evaluation(result, "billed_vs_traced_gap")
    assert evaluation.passed is passed
    if not passed:
        assert evaluation.severity.value == severity
        assert f"openai: billed ${float(openai_billed):,.2f} vs traced $2.00" in evaluation.description
    rows = {(p, m): (t, b) for p, m, t, b in query(
        settings, "SELECT provider, model, traced_usd, billed_usd FROM cost_reconciliation WHERE depth = 'provider'")}
    assert rows == {("openai", None): (usd("2.0"), openai_billed), ("anthropic", None): (usd("3.0"), usd("3.0")),
                    ("unknown", "acme-ft"): (usd("0"), usd("0"))}


def test_anthropic_cents_are_converted_exactly(settings):
    write_day(settings, ROWS)
    bill(settings, TRACED["openai"], TRACED["anthropic"])
    write_anthropic_bill(Path(settings.billing_dir), DAY, {"claude-sonnet-4-20250514": "300.0000001"})
    assert materialize_day(settings).success
    assert query(settings, "SELECT cost_usd FROM provider_costs WHERE provider = 'anthropic'") == [(usd("3.000000001"),)]


def test_missing_billing_file_is_a_clear_error_naming_the_path(settings):
    write_day(settings, ROWS)
    result = materialize_day(settings, selection=["openai_costs"])
    assert not result.success
    message = str(result.get_step_failure_events()[0].step_failure_data.error)
    assert str(Path(settings.billing_dir) / "openai" / "2026-11-21") in message


def test_a_provider_not_billed_is_skipped(settings):
    write_day(settings, ROWS)
    write_openai_bill(Path(settings.billing_dir), DAY, {"gpt-4o-2024-08-06, input": 2.0})
    result = materialize_day(settings, billed_providers=["openai"])
    assert result.success
    assert check_evaluation(result, "billed_vs_traced_gap").passed


def test_a_warehouse_of_the_previous_version_is_upgraded_keeping_the_staged_days(settings, settled):
    write_day(settings, ROWS)
    bill(settings, TRACED["openai"], TRACED["anthropic"])
    assert materialize_day(settings).success
    staged = query(settings, "SELECT * FROM langfuse_generations ORDER BY observation_id")
    with duckdb.connect(str(settings.duckdb_path)) as conn:  # as version 1 left it
        conn.execute("DROP TABLE schema_version")
        conn.execute("DROP TABLE provider_costs")
        conn.execute("CREATE TABLE provider_costs (day DATE, provider VARCHAR, model VARCHAR, token_type VARCHAR, "
                     "line_item VARCHAR, cost_usd DECIMAL(38, 12), source_file VARCHAR)")
    result = materialize_day(settings, selection=["openai_costs", "anthropic_costs", "other_provider_costs",
                                                  "cost_reconciliation"])
    assert result.success
    assert query(settings, "SELECT * FROM langfuse_generations ORDER BY observation_id") == staged
    assert query(settings, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    assert query(settings, "SELECT sum(cost_usd) FROM provider_costs WHERE token_kind = 'output'") == [(usd("1.2"),)]  # openai's 60%


def test_a_warehouse_of_version_2_gets_the_usage_columns_in_place(settings, settled):
    write_day(settings, ROWS)
    bill(settings, TRACED["openai"], TRACED["anthropic"])
    assert materialize_day(settings).success
    with duckdb.connect(str(settings.duckdb_path)) as conn:  # as version 2 left it
        conn.execute("ALTER TABLE langfuse_generations DROP COLUMN usage_other")
        conn.execute("ALTER TABLE langfuse_generations DROP COLUMN unpriced_usage")
        conn.execute("UPDATE schema_version SET version = 2")
    staged = query(settings, "SELECT observation_id, cost_usd FROM langfuse_generations ORDER BY 1")
    assert materialize_day(settings, selection=["other_provider_costs"]).success  # any step upgrades the warehouse
    # the day staged before the upgrade is kept; its new columns are empty until it is run again
    assert query(settings, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    assert query(settings, "SELECT observation_id, cost_usd FROM langfuse_generations ORDER BY 1") == staged
    assert query(settings, "SELECT count(*) FROM langfuse_generations WHERE unpriced_usage IS NOT NULL") == [(0,)]
    assert materialize_day(settings).success  # re-run: rows go in by name, the columns at the table's end
    assert query(settings, "SELECT observation_id, cost_usd FROM langfuse_generations ORDER BY 1") == staged
    assert query(settings, "SELECT unpriced_usage FROM langfuse_generations WHERE cost_source = 'unpriced'") == [
        ({"input_tokens": 100, "output_tokens": 20},)]
