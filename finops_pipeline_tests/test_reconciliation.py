"""The reconciliation at its three depths, on a constructed day whose gap comes from known models, and
the provisional -> final transition of a day's bills."""

from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import dagster as dg
import time_machine

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

GAP_CHECK = "billed_vs_traced_gap"
# Ten gpt-4o calls (the alias, as traces often carry it) at list price: $0.025 input + $0.010 output.
ROWS = [generation(f"o{i}", f"2026-11-21 09:{i:02d}:00", model="gpt-4o", cost=0.0035,
                   usage={"input": 1000, "output": 100, "total": 1100}) for i in range(10)]
ROWS += [generation("l1", "2026-11-21 10:00:00", model="acme-llama-ft", cost=1.0),
         generation("m1", "2026-11-21 10:01:00", model="acme-mistral-ft", cost=None)]
# The bill: the traced calls exactly, plus cached input the traces do not show, plus a model never traced.
BILL = {"gpt-4o-2024-08-06, input": 0.025, "gpt-4o-2024-08-06, output": 0.010,
        "gpt-4o-2024-08-06, cached input": 0.50, "gpt-4.1-nano-2025-04-14, input": 41.0}


def reconcile(settings, **overrides):
    cover_day(settings, {9: ROWS})
    write_openai_bill(Path(settings.billing_dir), DAY, BILL, pages=2)
    result = materialize_day(settings, billed_providers=["openai"], **overrides)
    # the gap is far past the error threshold: the day's run is failed by its reconciliation, and only by it
    assert result.success or failed_on_checks(result) == {"cost_reconciliation"}
    return result


def rows(settings, depth: str) -> dict[tuple, tuple]:
    return {(p, m, k): (t, b) for p, m, k, t, b in query(settings, """
        SELECT provider, model, token_kind, traced_usd, billed_usd FROM cost_reconciliation WHERE depth = ?""", [depth])}


def test_each_depth_shows_where_the_gap_comes_from(settings, settled):
    result = reconcile(settings)

    # provider: the whole gap; a model mapped to no provider is its own row, judged by no bill
    assert rows(settings, "provider") == {
        ("openai", None, None): (usd("0.035"), usd("41.535")),
        ("unknown", "acme-llama-ft", None): (usd("1.0"), usd("0")),
        ("unknown", "acme-mistral-ft", None): (usd("0"), usd("0")),
    }
    # model: the untraced model carries $41; the alias and the snapshot are one model
    assert rows(settings, "model") == {
        ("openai", "gpt-4o", None): (usd("0.035"), usd("0.535")),
        ("openai", "gpt-4.1-nano", None): (usd("0"), usd("41.0")),
    }
    # token kind: input and output match; cached input is billed, not traced
    assert rows(settings, "token_kind") == {
        ("openai", "gpt-4o", "input"): (usd("0.025"), usd("0.025")),
        ("openai", "gpt-4o", "output"): (usd("0.010"), usd("0.010")),
        ("openai", "gpt-4o", "cached"): (usd("0"), usd("0.50")),
    }

    evaluation = check_evaluation(result, GAP_CHECK)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.description.startswith("openai: billed $41.54 vs traced $0.04, gap +41.50 USD (+99.9%) ERROR")  # cents half up
    assert ("Largest gaps: openai gpt-4.1-nano: +41.00 USD (billed, not traced); "
            "openai gpt-4o cached: +0.50 USD (billed, not traced).") in evaluation.description
    tables = {k: v.value for k, v in evaluation.metadata.items() if k.startswith("by_")}
    first_row = {depth: table.splitlines()[2] for depth, table in tables.items()}
    assert first_row["by_provider"].split("|")[1].strip() == "openai"
    assert "openai gpt-4.1-nano" in first_row["by_model"] and "billed, not traced" in first_row["by_model"]
    assert "openai gpt-4o cached" in first_row["by_token_kind"] and "0.5" in first_row["by_token_kind"]
    assert "no provider: model acme-llama-ft" in tables["by_provider"]
    # The settled day fails: no materialization, but its figures are recorded as an observation for the plots.
    assert not [e for e in result.get_asset_materialization_events() if e.asset_key.path == ["cost_reconciliation"]]
    [observed] = [e.event_specific_data.asset_observation for e in result.get_asset_observation_events()]
    assert observed.partition == "2026-11-21" and observed.metadata["final"].value is True
    assert observed.metadata["openai_billed_usd"].value == 41.535


def test_mapped_models_reconcile_against_the_csv_bill_of_their_provider(settings, settled):
    other = Path(settings.billing_dir) / "other"
    other.mkdir(parents=True)
    (other / "internal.csv").write_text("day,provider,model,cost_usd\n2026-11-21,self_hosted,acme-llama-ft,1.25\n")
    result = reconcile(settings, provider_map={"acme-*": "self_hosted"})
    provider_rows = rows(settings, "provider")
    assert provider_rows[("self_hosted", None, None)] == (usd("1.0"), usd("1.25"))
    assert not [key for key in provider_rows if key[0] == "unknown"]  # mapped: no longer unknown
    assert rows(settings, "model")[("self_hosted", "acme-llama-ft", None)] == (usd("1.0"), usd("1.25"))
    assert "self_hosted: billed $1.25 vs traced $1.00, gap +0.25 USD (+20.0%) ERROR" in check_evaluation(
        result, GAP_CHECK).description
    assert materialization_metadata(result, "other_provider_costs")["billed_cost_usd"] == 1.25


def test_removing_a_csv_line_removes_it_from_the_bill(settings, settled):
    other = Path(settings.billing_dir) / "other"
    other.mkdir(parents=True)
    (other / "internal.csv").write_text("day,provider,model,cost_usd\n2026-11-21,self_hosted,acme-llama-ft,1.25\n"
                                        "2026-11-21,vertex,gemini-2.5-pro,3\n")
    reconcile(settings)
    (other / "internal.csv").write_text("day,provider,model,cost_usd\n2026-11-21,self_hosted,acme-llama-ft,1.25\n")
    assert materialize_day(settings, selection=["other_provider_costs"], billed_providers=["openai"]).success
    assert query(settings, "SELECT provider, cost_usd FROM provider_costs WHERE provider NOT IN ('openai')") == [
        ("self_hosted", usd("1.25"))]


def test_a_day_is_provisional_until_its_bills_settle_then_errors(settings):
    # The day after: the bill may still change, so a 99.9% gap warns and says when it will be final.
    with time_machine.travel(datetime(2026, 11, 22, 3, tzinfo=timezone.utc), tick=True):
        result = reconcile(settings)
    evaluation = check_evaluation(result, GAP_CHECK)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.description.startswith("Provisional until 2026-11-24 00:00 UTC")
    assert "gap +41.50 USD (+99.9%) ERROR" in evaluation.description  # the level it would have once final
    assert set(query(settings, "SELECT DISTINCT final FROM cost_reconciliation")) == {(False,)}

    # The schedule runs the day again while it settles; once it has, ERROR.
    with time_machine.travel(datetime(2026, 11, 24, 2, tzinfo=timezone.utc), tick=True):
        result = materialize_day(settings, billed_providers=["openai"])
    evaluation = check_evaluation(result, GAP_CHECK)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert not evaluation.description.startswith("Provisional")
    assert set(query(settings, "SELECT DISTINCT final FROM cost_reconciliation")) == {(True,)}


def test_traced_kinds_sum_to_the_model(settings, settled):
    reconcile(settings)
    [(kinds, model)] = query(settings, """
        SELECT (SELECT sum(traced_usd) FROM cost_reconciliation WHERE depth = 'token_kind' AND model = 'gpt-4o'),
               (SELECT traced_usd FROM cost_reconciliation WHERE depth = 'model' AND model = 'gpt-4o')""")
    assert kinds == model == Decimal("0.035")


def test_a_sub_cent_day_says_what_it_compared(settings, settled):
    cover_day(settings, {9: [generation("tiny", "2026-11-21 09:00:00", cost=0.0003)]})
    write_openai_bill(Path(settings.billing_dir), DAY, {"gpt-4o-2024-08-06, input": 0.0008})
    write_anthropic_bill(Path(settings.billing_dir), DAY, {})
    gap = check_evaluation(materialize_day(settings), "billed_vs_traced_gap")
    assert gap.description.startswith("openai: billed $0.0008 vs traced $0.0003, gap +0.0005 USD (+62.5%) ERROR")
    assert "Largest gaps: openai gpt-4o" in gap.description
