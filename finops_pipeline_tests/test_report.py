"""The monthly report: its figures are the warehouse's and the delivered files', to the cent; margins with and
without revenue; provisional until the month has settled; one self-contained HTML file that loads nothing;
re-rendered after the month's daily runs."""

import re
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from finops_pipeline.assets.monthly_report import build_monthly_report
from finops_pipeline.definitions import build_assets, build_resources
from finops_pipeline.destinations.finout import file_name, hashed_value
from finops_pipeline.report.figures import cents_that_add, month_figures
from finops_pipeline.settings import FinopsSettings
from finops_pipeline.warehouse import replace_partition
from finops_pipeline_tests.conftest import (
    BUCKET, check_evaluation, cover_day, generation, materialization_metadata, query, replace_settings,
    write_anthropic_bill, write_openai_bill,
)

NOV = [date(2026, 11, 1) + timedelta(days=i) for i in range(3)]
DAILY = ["langfuse_generations", "allocated_costs", "finout_upload", "unit_economics", "openai_costs",
         "anthropic_costs", "other_provider_costs", "cost_reconciliation"]
SECTIONS = ["1. Spend by team and feature", "2. Daily trend and projection to month end",
            "3. Cost per customer and tier", "4. Unit costs per feature, against the month before",
            "5. Budgets, anomalies and reconciliation", "6. What is not in the totals, and where the figures come from"]
# (team, feature, customer, tier, calls, cost per call): over three days each row is $0.004 above whole cents,
# so that rounding each row alone would lose two cents of the total
CALLS = [("product", "chat", "acme", "pro", 3, 0.333778), ("product", "search", "acme", "pro", 2, 0.334),
         ("analytics", "report", "globex", "enterprise", 4, 1.000333), ("analytics", "chat", "initech", "free", 3, 0.500444),
         (None, "chat", "umbrella", "pro", 2, 0.110667)]


def _days(settings: FinopsSettings, days=NOV, instance=None, extra=(), overbilled: dict | None = None) -> None:
    """Each day: the calls above (one unallocated team) and `extra` rows, billed by OpenAI as the calls were
    traced (times `overbilled[day]`); through the daily graph."""
    for day in days:
        rows = list(extra)
        for team, feature, customer, tier, calls, cost in CALLS:
            metadata = {"feature": feature, "customer_id": customer, "tier": tier, **({"team": team} if team else {})}
            rows += [generation(f"{day}-{customer}-{feature}-{i}", f"{day} 09:00:00", cost=cost, metadata=metadata)
                     for i in range(calls)]
        cover_day(settings, {9: rows}, day=day)
        priced = sum(c * n for *_, n, c in CALLS) + sum(r["total_cost"] for r in extra if (r["total_cost"] or 0) > 0)
        billed = round(priced * (overbilled or {}).get(day, 1), 6)
        write_openai_bill(Path(settings.billing_dir), day, {"gpt-4o-2024-08-06, input": billed})
        write_anthropic_bill(Path(settings.billing_dir), day, {})
        result = dg.materialize(build_assets(), selection=DAILY, partition_key=day.isoformat(),
                                resources=build_resources(settings), instance=instance or dg.DagsterInstance.ephemeral(),
                                raise_on_error=False)
        assert result.success, [e.event_specific_data.error.message for e in result.get_step_failure_events()]


def _report(settings: FinopsSettings, month: str = "2026-11-01", instance=None) -> dg.ExecuteInProcessResult:
    return dg.materialize([build_monthly_report("langfuse")], partition_key=month,
                          resources=build_resources(settings), instance=instance or dg.DagsterInstance.ephemeral(),
                          raise_on_error=False)


class Page(HTMLParser):
    """What a browser would load and show: tags, resource references, section titles, each section's tables."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.titles: list[str] = []
        self.tables: dict[str, list[list[list[str]]]] = {}
        self.svgs: dict[str, int] = {}
        self._section = self._cell = None
        self._h2 = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "section":
            self._section = attrs["id"]
        elif tag == "h2":
            self._h2, self.titles = True, self.titles + [""]
        elif tag == "svg":
            self.svgs[self._section] = self.svgs.get(self._section, 0) + 1
        elif tag == "table":
            self.tables.setdefault(self._section, []).append([])
        elif tag == "tr":
            self.tables[self._section][-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "h2":
            self._h2 = False
        elif tag in ("td", "th"):
            self.tables[self._section][-1][-1].append(self._cell.strip())
            self._cell = None

    def handle_data(self, data):
        if self._h2:
            self.titles[-1] += data
        if self._cell is not None:
            self._cell += data


def html_text(path: Path) -> str:
    return " ".join(path.read_text().split())


def _cents(text: str) -> Decimal:
    return Decimal(text.replace("$", "").replace(",", ""))


def test_the_report_adds_up_to_the_delivered_files_to_the_cent_and_loads_nothing(settings, instance):
    Path(settings.home).mkdir(parents=True)
    (Path(settings.home) / "revenue.csv").write_text(
        "month,customer_id,feature,revenue_usd\n2026-11,acme,,100\n2026-11,globex,,5\n2026-11,globex,report,3\n"
        "2026-11,ghost,,50\n")  # ghost pays and made no AI call this month
    _days(settings, instance=instance, overbilled={NOV[1]: 1.03})  # 3% more: past the 2% warning, not 5%
    result = _report(settings, instance=instance)
    assert result.success
    meta = materialization_metadata(result, "monthly_report")
    path = Path(settings.home) / "reports" / "llm-costs-2026-11.html"
    assert meta["path"] == str(path) and meta["status"] == "provisional"

    # The month's total is what the three days' Finout files hold, exactly; the check compared them day by day.
    files = [str(Path(settings.finout_dir) / file_name(d)) for d in NOV]
    [(delivered,)] = query(settings, "SELECT sum(Cost::DECIMAL(38, 12)) FROM read_csv(?, header = true, all_varchar = true)",
                           [files])
    [(billed,)] = query(settings, "SELECT sum(cost_usd) FROM provider_costs")
    assert meta["billed_cost_usd"] == float(billed) and meta["traced_cost_usd"] == float(delivered)
    assert meta["total_cost_usd"] == float(delivered) and meta["days_known"] == 3 and meta["days_unknown"] == 27
    check = check_evaluation(result, "report_matches_delivery")
    assert check.passed and f"equals the 3 Finout files delivered for them ({delivered:,.6f} USD)" in check.description

    page = Page(path.read_text())
    assert page.titles == SECTIONS
    # 1. Spend per team and feature: the cents shown add up to the total shown, which is the files' total in cents.
    spend = page.tables["spend"][0]
    assert spend[0] == ["Team", "Feature", "Spend", "Share"] and spend[-1][0] == "Total"
    assert sum(_cents(row[2]) for row in spend[1:-1]) == _cents(spend[-1][2]) == round(delivered, 2)
    teams = {}
    for team, _, shown, _ in spend[1:-1]:
        teams[team] = teams.get(team, 0) + _cents(shown)
    exact = dict(query(settings, "SELECT allocation['team'], sum(cost_usd) FROM allocated_costs GROUP BY 1"))
    assert set(teams) == {"product", "analytics", "unallocated"}
    assert all(abs(teams[t] - exact[t]) < Decimal("0.01") * len(spend) for t in teams)
    # 3. Margin where revenue is known: acme $100 - its AI cost; globex's $8 (5 + 3 for the report feature) is
    # below its cost, negative; initech and umbrella have no revenue row: unknown, not $0.
    customers = {row[0]: row[1:] for row in page.tables["customers"][0][1:]}
    [(acme_cost,)] = query(settings, "SELECT sum(cost_usd) FROM allocated_costs WHERE allocation['customer_id'] = 'acme'")
    assert customers["acme"][:3] == [f"${acme_cost:,.2f}", "$100.00", f"${100 - acme_cost:,.2f}"]
    assert customers["globex"][1] == "$8.00" and customers["globex"][2].startswith("-$")
    assert customers["initech"][1:3] == ["—", "—"] and customers["umbrella"][1:3] == ["—", "—"]
    assert 'class="n neg">-$' in path.read_text()
    # Per tier: a tier's revenue only when every customer of it has a row (pro: umbrella has none, free: initech);
    # the customer with revenue and no calls is a row of its own: the tiers' revenue adds up to the file's.
    tiers = {row[0]: row[1:] for row in page.tables["customers"][1][1:]}
    [(globex,)] = query(settings, "SELECT sum(cost_usd) FROM allocated_costs WHERE allocation['customer_id'] = 'globex'")
    assert tiers["enterprise"][6:] == ["$8.00", f"-${globex - 8:,.2f}"]  # globex alone: $8 of revenue, a loss
    assert tiers["pro"][6] == "— (1 without)" and tiers["free"][6] == "— (1 without)"
    assert tiers["(no AI calls)"][0] == "$0.00" and tiers["(no AI calls)"][6:] == ["$50.00", "$50.00"]
    assert customers["ghost"][:3] == ["$0.00", "$50.00", "$50.00"]
    assert "4 customers with AI cost this month" in html_text(path)  # unallocated spend is no customer
    # 4. The feature margin of the feature whose revenue the file names, and no other.
    [feature_margin] = page.tables["unit-costs"][1][1:]
    assert feature_margin[:2] == ["report", "$3.00"]

    # 5. The day billed 3% above its traces, in % of the bill, as the reconciliation check says it.
    [gap] = page.tables["controls"][-1][1:]
    [(pct,)] = query(settings, "SELECT gap_pct FROM cost_reconciliation WHERE day = ? AND depth = 'provider' AND "
                               "provider = 'openai'", [NOV[1]])
    assert gap[:2] == [NOV[1].isoformat(), "openai"] and gap[5] == f"{pct:+.1f}%" and 2.8 < pct < 3.0
    assert page.titles[4] == SECTIONS[4] and "warning threshold" in html_text(path)

    # Every section 1-4 has its chart, drawn as inline SVG; nothing is loaded from anywhere.
    assert all(page.svgs.get(s, 0) >= 1 for s in ("spend", "trend", "customers", "unit-costs"))
    loaded = [(tag, name, value) for tag, attrs in page.tags for name, value in attrs.items()
              if name in ("src", "href", "xlink:href", "srcset", "data", "poster", "action")
              and value and not value.startswith("#")]
    assert loaded == []
    assert not {tag for tag, _ in page.tags} & {"script", "link", "iframe", "object", "embed", "img", "base"}
    assert not re.search(r"url\(\s*['\"]?(?!#)", path.read_text()) and "@import" not in path.read_text()  # url(#clip) is the SVG's own
    # The Dagster UI shows the same tables, and a link to the file.
    assert meta["file"] == path.resolve().as_uri() and "| acme " in meta["customers"]


def test_without_revenue_margins_are_left_out_not_zero(settings):
    _days(settings, NOV[:1])
    assert _report(settings).success
    html = (Path(settings.home) / "reports" / "llm-costs-2026-11.html").read_text()
    page = Page(html)
    assert "No revenue file: margins are left out, not zero." in html
    rows = page.tables["customers"][0]
    assert rows[0][:4] == ["Customer", "AI cost", "Revenue", "Margin"]
    assert all(row[2] == "—" and row[3] == "—" for row in rows[1:])
    assert len(page.tables["unit-costs"]) == 1  # no feature margins without revenue


def test_what_is_not_in_the_totals_is_named_with_its_counts(settings):
    _days(settings, NOV[:1], extra=[
        generation("ft-1", f"{NOV[0]} 09:30:00", model="acme-llama-ft", cost=None),
        generation("ft-2", f"{NOV[0]} 09:31:00", model="acme-llama-ft", cost=None),
        generation("bad", f"{NOV[0]} 09:32:00", cost=-0.2)])
    result = _report(settings)
    html = " ".join((Path(settings.home) / "reports" / "llm-costs-2026-11.html").read_text().split())
    assert "acme-llama-ft: 2 with no price (240 tokens; not priced: input_tokens, output_tokens)" in html
    assert "1 from langfuse_generations (negative total_cost" in html
    assert "Days not known:</b> 29 (2026-11-02, 2026-11-03," in html
    [(traced,)] = query(settings, "SELECT sum(cost_usd) FROM langfuse_generations")
    assert materialization_metadata(result, "monthly_report")["total_cost_usd"] == float(traced)


def test_customers_hashed_in_the_delivery_are_hashed_in_the_report(settings):
    hashed = replace_settings(settings, hashed_dimensions=["customer_id"], hash_salt="pepper",
                              finout_dimensions=["team", "feature", "customer_id"])
    Path(settings.home).mkdir(parents=True)
    (Path(settings.home) / "revenue.csv").write_text("month,customer_id,revenue_usd\n2026-11,globex,5\n2026-11,newlogo,9\n")
    _days(hashed, NOV[:1])
    assert _report(hashed).success
    html = (Path(settings.home) / "reports" / "llm-costs-2026-11.html").read_text()
    [finout] = query(hashed, "SELECT DISTINCT customer_id FROM read_csv(?) WHERE customer_id LIKE 'h_%' AND Cost::DOUBLE > 4",
                     [str(Path(settings.finout_dir) / file_name(NOV[0]))])
    customers = {row[0]: row for row in Page(html).tables["customers"][0][1:]}
    assert not {"acme", "globex", "initech", "umbrella"} & set(customers) and all(c.startswith("h_") for c in customers)
    assert customers[finout[0]][2] == "$5.00"  # globex's revenue, joined before hashing, shown under its hash
    # a customer with revenue and no AI call is hashed the same way, in the file and in the UI's metadata
    assert customers[hashed_value("customer_id", "newlogo", "pepper")][1:3] == ["$0.00", "$9.00"]
    meta = materialization_metadata(_report(hashed), "monthly_report")
    assert "newlogo" not in html and "newlogo" not in meta["customers"] and "globex" not in meta["customers"]


def test_a_month_is_final_only_when_every_day_is_in_and_settled(settings):
    _days(settings, NOV[:1])
    with duckdb.connect(str(settings.duckdb_path)) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        closed = datetime(2026, 12, 1, 8, tzinfo=timezone.utc)
        figures = month_figures(conn, date(2026, 11, 1), settings, "langfuse", now=closed)
        assert not figures.final and figures.unknown_days == [date(2026, 11, d) for d in range(2, 31)]
        assert figures.projection is None  # a closed month: its unknown days stay unknown, never estimated as $0
        # the other days, allocated with no calls (what allocated_costs records for a quiet day)
        for d in range(2, 31):
            replace_partition(conn, "allocated_costs", date(2026, 11, d), "SELECT * FROM allocated_costs WHERE false")
        figures = month_figures(conn, date(2026, 11, 1), settings, "langfuse", now=closed)
        assert not figures.final and "final once every day is in and settled (2026-12-04)" in figures.status
        settled = month_figures(conn, date(2026, 11, 1), settings, "langfuse", now=closed + timedelta(days=3))
        assert settled.final and settled.delivered_usd == figures.delivered_usd
        assert [d["cost_usd"] for d in settled.daily][1:] == [0] * 29  # quiet days: known, $0
        # a month in progress is projected to its end, from the days known
        running = month_figures(conn, date(2026, 11, 1), settings, "langfuse", now=datetime(2026, 11, 3, tzinfo=timezone.utc))
        assert not running.final and running.through == date(2026, 11, 2) and len(running.projected_daily) == 28
        assert running.projected_usd > running.delivered_usd


def test_a_month_with_no_day_known_fails_rather_than_reporting_zero(settings):
    now = datetime.now(timezone.utc)
    result = _report(settings, month=f"{now:%Y-%m}-01")  # this month: nothing materialized
    [failure] = result.get_step_failure_events()
    message = failure.event_specific_data.error.message
    if now.day == 1:  # (the test's own day decides which way the month has nothing)
        assert f"{now:%B %Y} has no complete day yet: nothing to report before {now:%Y-%m}-02" in message
    else:
        assert (f"No day of {now:%B %Y} through {now.date() - timedelta(days=1)} is known (allocated_costs has written "
                "none): nothing to report rather than $0") in message
    # whatever today is: a month not yet begun has no complete day, one whose days are unwritten none known
    _days(settings, NOV[:1])
    with duckdb.connect(str(settings.duckdb_path)) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        with pytest.raises(ValueError, match="December 2026 has no complete day yet: nothing to report before 2026-12-02"):
            month_figures(conn, date(2026, 12, 1), settings, "langfuse", now=datetime(2026, 12, 1, 8, tzinfo=timezone.utc))
        with pytest.raises(ValueError, match="No day of December 2026 through 2026-12-05 is known"):
            month_figures(conn, date(2026, 12, 1), settings, "langfuse", now=datetime(2026, 12, 6, tzinfo=timezone.utc))


def test_a_month_with_no_known_day_fails_rather_than_reporting_zero(settings):
    _days(settings, NOV[:1])
    result = _report(settings, month="2026-10-01")
    [failure] = result.get_step_failure_events()
    assert "No day of October 2026 through 2026-10-31 is known" in failure.event_specific_data.error.message
    assert not (Path(settings.home) / "reports" / "llm-costs-2026-10.html").exists()


def test_the_file_is_readable_like_the_delivered_files_and_the_metadata_tables_hold_odd_names(settings):
    odd = "Müller & Söhne|<b>x</b>"
    _days(settings, NOV[:1], extra=[generation("odd", f"{NOV[0]} 09:40:00", cost=5.0, metadata={
        "feature": "chat", "team": "product", "customer_id": odd, "tier": "pro"})])
    meta = materialization_metadata(_report(settings), "monthly_report")
    report = Path(settings.home) / "reports" / "llm-costs-2026-11.html"
    finout = Path(settings.finout_dir) / file_name(NOV[0])
    assert report.stat().st_mode & 0o777 == finout.stat().st_mode & 0o777
    [row] = [line for line in meta["customers"].splitlines() if "Müller" in line]
    assert "Müller & Söhne\\|&lt;b&gt;x&lt;/b&gt;" in row and row.count(" | ") == 4  # five cells, no more
    assert "Müller &amp; Söhne|&lt;b&gt;x&lt;/b&gt;" in report.read_text()  # escaped in the HTML


def test_the_check_names_a_day_whose_delivered_file_disagrees_with_the_report(settings):
    _days(settings, NOV[:2])
    finout = Path(settings.finout_dir) / file_name(NOV[1])
    lines = finout.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[1].split(",")
    cells[header.index("Cost")] = str(Decimal(cells[header.index("Cost")]) + 1)
    finout.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    (Path(settings.finout_dir) / file_name(NOV[0])).unlink()
    check = check_evaluation(_report(settings), "report_matches_delivery")
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert f"No file for {NOV[0]}." in check.description and f"{NOV[1]}: $" in check.description
    assert check.metadata["days_differing"].value == 1 and check.metadata["days_without_file"].value == 1


def test_the_report_is_also_put_to_s3_never_under_the_finout_prefix(settings, s3):
    _days(settings, NOV[:1])
    shipped = replace_settings(settings, reports_s3_uri=f"s3://{BUCKET}/reports")
    meta = materialization_metadata(_report(shipped), "monthly_report")
    assert meta["uri"] == f"s3://{BUCKET}/reports/llm-costs-2026-11.html"
    body = s3.get_object(Bucket=BUCKET, Key="reports/llm-costs-2026-11.html")
    assert body["ContentType"].startswith("text/html") and body["Body"].read().decode() == \
        (Path(settings.home) / "reports" / "llm-costs-2026-11.html").read_text()
    with pytest.raises(ValueError, match="must not lie under FINOPS_FINOUT_S3_URI"):
        replace_settings(settings, finout_s3_uri=f"s3://{BUCKET}", reports_s3_uri=f"s3://{BUCKET}/reports")


@pytest.mark.filterwarnings("ignore::dagster.BetaWarning")  # raised inside Dagster's own condition tester
def test_the_month_is_rendered_again_after_its_days_have_run_not_while_they_run(settings, instance):
    # both code locations' assets, as the sensor sees the workspace
    defs = dg.Definitions(assets=[*build_assets(), build_monthly_report("langfuse")], resources=build_resources(settings))
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert first.total_requested == 0  # nothing ran yet
    _days(settings, NOV[:2], instance=instance)
    after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert [(r.key.to_user_string(), r.true_subset.expensively_compute_partition_keys()) for r in after.results
            if r.true_subset.size] == [("monthly_report", {"2026-11-01"})]
    _report(settings, instance=instance)
    quiet = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=after.cursor)
    assert quiet.total_requested == 0  # rendered since; no day changed


def test_cents_that_add_keep_each_row_within_a_cent_and_the_column_at_its_total():
    values = [Decimal("0.333333")] * 3 + [Decimal("1.004444"), Decimal("-0.005")]
    total = sum(values)
    shown = cents_that_add(values, total)
    assert sum(shown) == total.quantize(Decimal("0.01")) and all(abs(s - v) < Decimal("0.01") for s, v in zip(shown, values))
