# Every target sets up what it needs: a fresh machine with python3 (>= 3.11) needs no other step.
FINOPS_HOME ?= $(CURDIR)/.finops
export FINOPS_HOME
export DAGSTER_HOME ?= $(FINOPS_HOME)/dagster
export UV_PYTHON_DOWNLOADS = never

UV_VERSION := 0.13.8
UV := .uv/bin/uv
PY := .venv/bin/python

.PHONY: install demo day report dev test validate bench bench-anomalies clean

# uv itself, pinned, in its own small venv; then the project's venv exactly as uv.lock says.
$(UV):
	python3 -m venv .uv
	.uv/bin/python -m pip install --quiet uv==$(UV_VERSION)

.venv/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --python python3
	touch $@

install: .venv/.synced

# The Langfuse 4.x SDK's models of the legacy API, for the tests' double only: beside the 5.x, never imported as `langfuse`.
.venv/langfuse4/.installed: .venv/.synced finops_pipeline_tests/langfuse4.txt
	rm -rf .venv/langfuse4
	$(UV) pip install --python $(PY) --target .venv/langfuse4 --no-deps --require-hashes -r finops_pipeline_tests/langfuse4.txt
	touch $@

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

demo: install $(DAGSTER_HOME)/dagster.yaml
	$(PY) -m finops_pipeline.demo

# One UTC day (default yesterday) through the whole graph, as the schedule runs it, on the instance `make dev` opens.
DAY ?= $(shell python3 -c 'import datetime as d; print(d.datetime.now(d.timezone.utc).date() - d.timedelta(days=1))')
day: install $(DAGSTER_HOME)/dagster.yaml
	.venv/bin/dagster job execute -m finops_pipeline.definitions -j daily_finops_job --tags '{"dagster/partition": "$(DAY)"}'

# One month's report (default: the month of yesterday, UTC) on the instance `make dev` opens.
MONTH ?= $(shell python3 -c 'import datetime as d; print(f"{d.datetime.now(d.timezone.utc).date() - d.timedelta(days=1):%Y-%m}")')
report: install $(DAGSTER_HOME)/dagster.yaml
	.venv/bin/dagster job execute -m finops_pipeline.report_definitions -j monthly_report_job --tags '{"dagster/partition": "$(MONTH)-01"}'

dev: install $(DAGSTER_HOME)/dagster.yaml
	.venv/bin/dagster dev -w workspace.yaml

validate: install $(DAGSTER_HOME)/dagster.yaml
	.venv/bin/dagster definitions validate -w workspace.yaml

test: install .venv/langfuse4/.installed
	.venv/bin/pytest -n 2

# One day of N generations through the pipeline, a per-row loop and DuckDB's floor (bench/run.py).
# The first run writes the sample exports under bench/data/ (about a minute per million per format).
BENCH_SIZES ?= 0.25M,0.5M,1M
bench: install
	$(PY) bench/run.py --sizes $(BENCH_SIZES)

# The anomaly detector's recall, precision and false alerts on labelled synthetic quarters (README "Anomalies").
bench-anomalies: install
	$(PY) bench/anomaly_quarter.py

clean:
	rm -rf .venv .uv .finops .pytest_cache bench/data
