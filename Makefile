# Every target sets up what it needs: a fresh machine with python3 (>= 3.11) needs no other step.
FINOPS_HOME ?= $(CURDIR)/.finops
export FINOPS_HOME
export DAGSTER_HOME ?= $(FINOPS_HOME)/dagster
export UV_PYTHON_DOWNLOADS = never

UV_VERSION := 0.13.8
UV := .uv/bin/uv
PY := .venv/bin/python
# The environment demo, day, report, dev and validate run in: with FINOPS_WAREHOUSE set (the lakehouse), the one
# with DuckDB 1.5.5 and DuckLake (the `lakehouse` extra); else .venv (DuckDB 2).
RUN_ENV := $(if $(FINOPS_WAREHOUSE),.venv-lakehouse,.venv)

.PHONY: install lakehouse demo day report dev test validate bench bench-delivery bench-anomalies bench-lakehouse bench-lakehouse-runs clean postgresql

# uv itself, pinned, in its own small venv; then the project's venv exactly as uv.lock says.
$(UV):
	python3 -m venv .uv
	.uv/bin/python -m pip install --quiet uv==$(UV_VERSION)

.venv/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --python python3
	touch $@

install: .venv/.synced

# The lakehouse warehouse's environment: DuckDB 1.5.5 and its DuckLake, Postgres and S3 extensions from PyPI
# (pyproject.toml, extra `lakehouse`), apart from .venv's DuckDB 2.
.venv-lakehouse/.synced: $(UV) pyproject.toml uv.lock
	UV_PROJECT_ENVIRONMENT=.venv-lakehouse $(UV) sync --frozen --extra lakehouse --python python3
	touch $@

lakehouse: .venv-lakehouse/.synced

# The Langfuse 4.x SDK's models of the legacy API, for the tests' double only: beside the 5.x, never imported as `langfuse`.
.venv/langfuse4/.installed: .venv/.synced finops_pipeline_tests/langfuse4.txt
	rm -rf .venv/langfuse4
	$(UV) pip install --python $(PY) --target .venv/langfuse4 --no-deps --require-hashes -r finops_pipeline_tests/langfuse4.txt
	touch $@

# Copied then renamed: two targets started at once on a new FINOPS_HOME must not trip on each other's copy.
$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@.$$$$ && mv -f $@.$$$$ $@

demo: $(RUN_ENV)/.synced $(DAGSTER_HOME)/dagster.yaml
	$(RUN_ENV)/bin/python -m finops_pipeline.demo

# One UTC day (default yesterday) through the whole graph, as the schedule runs it, on the instance `make dev` opens.
DAY ?= $(shell python3 -c 'import datetime as d; print(d.datetime.now(d.timezone.utc).date() - d.timedelta(days=1))')
day: $(RUN_ENV)/.synced $(DAGSTER_HOME)/dagster.yaml
	$(RUN_ENV)/bin/dagster job execute -m finops_pipeline.definitions -j daily_finops_job --tags '{"dagster/partition": "$(DAY)"}'

# One month's report (default: the month of yesterday, UTC) on the instance `make dev` opens.
MONTH ?= $(shell python3 -c 'import datetime as d; print(f"{d.datetime.now(d.timezone.utc).date() - d.timedelta(days=1):%Y-%m}")')
report: $(RUN_ENV)/.synced $(DAGSTER_HOME)/dagster.yaml
	$(RUN_ENV)/bin/dagster job execute -m finops_pipeline.report_definitions -j monthly_report_job --tags '{"dagster/partition": "$(MONTH)-01"}'

dev: $(RUN_ENV)/.synced $(DAGSTER_HOME)/dagster.yaml
	$(RUN_ENV)/bin/dagster dev -w workspace.yaml

validate: $(RUN_ENV)/.synced $(DAGSTER_HOME)/dagster.yaml
	$(RUN_ENV)/bin/dagster definitions validate -w workspace.yaml

# PostgreSQL from Debian's packages: the lakehouse tests start a server of their own as its catalog.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null)

# Both environments at once: the DuckDB file's tests on two workers, the lakehouse's on one (mostly its backfill
# through `dagster dev`, whose runs wait on each other and on the catalog).
test: install .venv/langfuse4/.installed lakehouse postgresql
	.venv/bin/pytest -n 2 -m "not lakehouse" & main=$$!; \
	.venv-lakehouse/bin/pytest -p no:cacheprovider -m lakehouse; lake=$$?; \
	wait $$main; main=$$?; \
	echo "DuckDB file tests: exit $$main; lakehouse tests: exit $$lake"; test $$main -eq 0 -a $$lake -eq 0

# One day of N generations through the pipeline, a per-row loop and DuckDB's floor (bench/run.py).
# The first run writes the sample exports under bench/data/ (about a minute per million per format).
BENCH_SIZES ?= 0.25M,0.5M,1M
bench: install
	$(PY) bench/run.py --sizes $(BENCH_SIZES)

# The Finout and FOCUS files of a day of nearly one allocation row per generation, at the default memory limit.
BENCH_DELIVERY_SIZES ?= 0.2M,0.4M,1M
bench-delivery: install
	$(PY) bench/delivery_day.py --sizes $(BENCH_DELIVERY_SIZES)

# The anomaly detector's recall, precision and false alerts on labelled synthetic quarters (README "Anomalies").
bench-anomalies: install
	$(PY) bench/anomaly_quarter.py

# DuckLake against Iceberg on the warehouse's workload (bench/lakehouse.py), in a venv of its own with pyiceberg.
LAKEHOUSE_BENCH ?= --rows 1M --days 8 --writers 4
# A backfill's throughput with 1, 2 and 4 runs at once on the lakehouse (bench/lakehouse_runs.py).
bench-lakehouse-runs: lakehouse postgresql
	.venv-lakehouse/bin/python bench/lakehouse_runs.py

bench-lakehouse: $(UV) postgresql
	UV_PROJECT_ENVIRONMENT=.venv-bench $(UV) sync --frozen --extra lakehouse --group lakehouse-bench --python python3
	.venv-bench/bin/python bench/lakehouse.py $(LAKEHOUSE_BENCH)

clean:
	rm -rf .venv .venv-lakehouse .venv-bench .uv .finops .pytest_cache bench/data
