"""`make demo` end to end, at a small size: a week staged, delivered and reconciled, one day failing."""

import os
import subprocess
import sys
from datetime import date

from finops_pipeline.demo.sample_data import last_complete_days
from finops_pipeline.destinations.finout import file_name
from finops_pipeline.settings import FinopsSettings
from finops_pipeline_tests.conftest import query


def test_demo_week_reconciles_with_exactly_the_overbilled_day_failing(tmp_path):
    home = tmp_path / "finops"
    env = {**os.environ, "FINOPS_HOME": str(home), "DAGSTER_HOME": ""}
    run = subprocess.run([sys.executable, "-m", "finops_pipeline.demo", "--generations-per-day", "600"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    days = last_complete_days(7)
    overbilled = days[3]
    settings = FinopsSettings.from_env({"FINOPS_HOME": str(home)})

    # The summary a finance lead reads: per day and provider, and one failing day.
    lines = [line for line in run.stdout.splitlines() if line[:10] in {d.isoformat() for d in days}]
    failing = {line[:10] for line in lines if "check FAIL" in line}
    assert failing == {overbilled.isoformat()}
    assert any(line.startswith(overbilled.isoformat()) and "openai" in line and "ERROR" in line for line in lines)
    assert "Top features by cost" in run.stdout and "Top teams by cost" in run.stdout

    # The failing day is explained: the gap is a model billed but never traced.
    assert f"{overbilled}: largest gaps: openai gpt-4.1-nano: +" in run.stdout
    assert "USD (billed, not traced)" in run.stdout.split(f"{overbilled}: largest gaps:")[1].splitlines()[0]
    # The two youngest days' bills are still settling.
    assert sorted(query(settings, "SELECT DISTINCT day FROM cost_reconciliation WHERE NOT final")) == [
        (d,) for d in days[-2:]]

    recon = query(settings, """
        SELECT day, provider, gap_pct FROM cost_reconciliation WHERE depth = 'provider' AND provider IN ('openai', 'anthropic')""")
    assert len(recon) == 14
    for day, provider, gap in recon:
        if (day, provider) == (overbilled, "openai"):
            assert 12 < gap < 14.5  # billed ~15% above traced: 13% of the bill
        else:
            assert abs(gap) < 2

    # Conservation, staged = allocated = delivered, every day; one file per day.
    staged = dict(query(settings, "SELECT day, sum(cost_usd) FROM langfuse_generations GROUP BY 1"))
    allocated = dict(query(settings, "SELECT day, sum(cost_usd) FROM allocated_costs GROUP BY 1"))
    assert staged == allocated and set(staged) == set(days)
    assert sorted(p.name for p in (home / "finout").iterdir()) == [file_name(d) for d in days]
    assert sorted(p.name for p in (home / "focus").iterdir()) == [f"focus-{d}.csv" for d in days]
    for day in days:
        [(delivered,)] = query(settings, "SELECT sum(Cost::DECIMAL(38,12)) FROM read_csv(?, header=true, all_varchar=true)",
                               [str(home / "finout" / file_name(day))])
        assert delivered == staged[day]

    # The sample's rough edges are visible, not dropped.
    assert query(settings, "SELECT count(*) FROM quarantine") == [(1,)]
    sources = dict(query(settings, "SELECT cost_source, count(*) FROM langfuse_generations GROUP BY 1"))
    assert set(sources) == {"langfuse", "price_table", "unpriced"}
    [(unallocated_share,)] = query(settings, """
        SELECT sum(cost_usd) FILTER (WHERE allocation['team'] = 'unallocated') / sum(cost_usd) FROM langfuse_generations""")
    assert 0.02 < unallocated_share < 0.2
    [(generations,)] = query(settings, "SELECT count(*) FROM langfuse_generations")
    assert generations == 7 * 600


def test_demo_days_are_the_last_complete_utc_days():
    assert last_complete_days(3, today=date(2026, 11, 22)) == [date(2026, 11, 19), date(2026, 11, 20), date(2026, 11, 21)]
