"""The one settings model: paths, allocation vocabulary and thresholds, with offline defaults.

Every field can be set by an environment variable named in `ENV_VARS` (documented in the README), and is
shown, and can be overridden per run, in the Dagster UI's launchpad because this is a resource.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import dagster as dg
from pydantic import Field, field_validator, model_validator

from finops_pipeline.retention import MIN_DAYS

from finops_pipeline.sources.observation_rows import Vocabulary

DEFAULT_ALLOCATION_KEYS = ["feature", "customer_id", "team", "environment", "tier"]
PROVIDERS = ("openai", "anthropic")
DEFAULT_ANOMALY_DIMENSIONS = ("feature", "team", "customer_id", "model")

# field name -> environment variable; lists are comma-separated in the environment.
ENV_VARS = {
    "home": "FINOPS_HOME",
    "langfuse_export_dir": "FINOPS_LANGFUSE_EXPORT_DIR",
    "billing_dir": "FINOPS_BILLING_DIR",
    "finout_dir": "FINOPS_FINOUT_DIR",
    "allocation_keys": "FINOPS_ALLOCATION_KEYS",
    "billed_providers": "FINOPS_BILLED_PROVIDERS",
    "reconciliation_error_pct": "FINOPS_RECONCILIATION_ERROR_PCT",
    "reconciliation_warn_pct": "FINOPS_RECONCILIATION_WARN_PCT",
    "unmatched_bill_pct": "FINOPS_UNMATCHED_BILL_PCT",
    "unallocated_warn_share_pct": "FINOPS_UNALLOCATED_WARN_PCT",
    "unpriced_warn_count": "FINOPS_UNPRICED_WARN_COUNT",
    "completeness_tolerance_pct": "FINOPS_COMPLETENESS_TOLERANCE_PCT",
    "duckdb_memory_limit": "FINOPS_DUCKDB_MEMORY_LIMIT",
    "warehouse": "FINOPS_WAREHOUSE",
    "warehouse_data_path": "FINOPS_WAREHOUSE_DATA_PATH",
    "provider_map": "FINOPS_PROVIDER_MAP",
    "metadata_aliases": "FINOPS_METADATA_ALIASES",
    "settling_days": "FINOPS_SETTLING_DAYS",
    "finout_s3_uri": "FINOPS_FINOUT_S3_URI",
    "finout_object_name": "FINOPS_FINOUT_OBJECT_NAME",
    "finout_dimensions": "FINOPS_FINOUT_DIMENSIONS",
    "hashed_dimensions": "FINOPS_HASHED_DIMENSIONS",
    "focus_dir": "FINOPS_FOCUS_DIR",
    "focus_s3_uri": "FINOPS_FOCUS_S3_URI",
    "reports_s3_uri": "FINOPS_REPORTS_S3_URI",
    "lookback_days": "FINOPS_LOOKBACK_DAYS",
    "dagster_url": "FINOPS_DAGSTER_URL",
    "budgets_file": "FINOPS_BUDGETS_FILE",
    "langfuse_projects": "FINOPS_LANGFUSE_PROJECTS",
    "revenue_file": "FINOPS_REVENUE_FILE",
    "outcomes_file": "FINOPS_OUTCOMES_FILE",
    "margin_warn_pct": "FINOPS_MARGIN_WARN_PCT",
    "anomaly_dimensions": "FINOPS_ANOMALY_DIMENSIONS",
    "anomaly_floor_usd": "FINOPS_ANOMALY_FLOOR_USD",
    "staged_retention_days": "FINOPS_STAGED_RETENTION_DAYS",
}
LIST_FIELDS = ("allocation_keys", "billed_providers", "finout_dimensions", "hashed_dimensions", "anomaly_dimensions",
               "langfuse_projects")

# Columns of the Finout file that are not allocation keys.
RESERVED_COLUMNS = {"usagedate", "cost", "source", "service_name", "provider", "model", "project_id"}
# Dimensions a Finout file may carry besides the allocation keys; nothing else leaves the building.
# project_id: the Langfuse project a call was traced in (one export prefix or one run can hold several).
FIXED_DIMENSIONS = ("source", "service_name", "provider", "model", "project_id")
_S3_URI = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"
_KEY = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_PROVIDER = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")


def snake_case(key: str) -> str:
    """`customerId` -> `customer_id`, `Customer-ID` -> `customer_id`, `tier` -> `tier`."""
    key = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key.strip())
    return re.sub(r"[^a-z0-9]+", "_", key.lower()).strip("_")


class FinopsSettings(dg.ConfigurableResource):
    """Where the inputs and outputs live, how cost is allocated, and when a check fails."""

    home: str = Field(description="Project data directory: DuckDB file, Dagster instance, inputs, outputs.")
    langfuse_export_dir: str = Field(description="Langfuse blob-export folder ({projectId}/observations_v2/...).")
    billing_dir: str = Field(description="Provider bills: openai/DAY/*.json, anthropic/DAY/*.json, other/*.csv.")
    finout_dir: str = Field(description="Where the daily Finout custom-cost CSVs are written (and kept).")
    finout_s3_uri: str | None = Field(
        default=None, pattern=_S3_URI,
        description="s3://bucket/prefix Finout reads; each day's file is also put there, replacing the day's object.")
    finout_object_name: str = Field(
        default="llm-costs-{day}.csv",
        description="The day's file and object name under the folder or prefix: {day} (YYYY-MM-DD), {year}, {month}.")
    finout_dimensions: list[str] | None = Field(
        default=None,
        description="Finout columns after UsageDate and Cost: allocation keys and source, service_name, provider, "
                    "model, project_id (the Langfuse project). Default: source, service_name, the allocation keys, "
                    "provider, model.")
    hashed_dimensions: list[str] = Field(
        default=[], description="Dimensions delivered as salted hashes (e.g. customer_id, user_id), with FINOPS_HASH_SALT.")
    hash_salt: str | None = Field(default=None, description="Secret salt of the hashed dimensions (FINOPS_HASH_SALT).")
    focus_dir: str = Field(description="Where the daily FOCUS 1.2 files are written.")
    focus_s3_uri: str | None = Field(
        default=None, pattern=_S3_URI, description="s3://bucket/prefix the FOCUS files are also put to.")
    reports_s3_uri: str | None = Field(
        default=None, pattern=_S3_URI,
        description="s3://bucket/prefix the monthly reports are also put to (never under the Finout or FOCUS prefix, "
                    "which Finout reads as cost data).")
    allocation_keys: list[str] = Field(
        default=DEFAULT_ALLOCATION_KEYS,
        description="Allocation vocabulary: metadata key (in any case and separators), else `key:value` tag, else "
                    "first-class field. Written in snake case (`customerId` is read as `customer_id`).",
    )
    metadata_aliases: dict[str, str] = Field(
        default={},
        description="Other metadata keys that stand for an allocation key, e.g. {'accountId': 'customer_id'}; the "
                    "key's own name wins when both are set.",
    )
    billed_providers: list[str] = Field(
        default=list(PROVIDERS), description="Providers whose bills are read and reconciled."
    )
    provider_map: dict[str, str] = Field(
        default={},
        description="Model name pattern (glob, case-insensitive) -> provider, tried in order before the built-in "
                    "mapping; e.g. {'azure/*': 'azure_openai', 'llama-*': 'self_hosted'}.",
    )
    staged_retention_days: int | None = Field(
        default=None, ge=MIN_DAYS,
        description="Days of generation-level rows kept in langfuse_generations (unset: all); older days keep their "
                    "allocated, delivered and derived rows. At least 35: the anomalies read four weeks of calls.")
    settling_days: int = Field(
        default=2, ge=0, le=60,
        description="Days after a day ends during which providers may still revise its bill: until then the day "
                    "is provisional and its reconciliation warns at most.",
    )
    lookback_days: int = Field(
        default=3, ge=0, le=60,
        description="Days before yesterday the daily schedule runs again, for late Langfuse data and revised bills.")
    alert_webhook_url: str | None = Field(
        default=None, description="Slack-compatible webhook for failed checks (FINOPS_ALERT_WEBHOOK_URL); unset: the log.")
    dagster_url: str = Field(default="http://localhost:3000", description="The Dagster UI's address, for links in alerts.")
    reconciliation_error_pct: float = Field(default=5.0, gt=0, description="|gap| % of the bill that fails (ERROR).")
    reconciliation_warn_pct: float = Field(default=2.0, ge=0, description="|gap| % of the bill that warns.")
    unmatched_bill_pct: float = Field(
        default=5.0, ge=0, le=100,
        description="Share of a provider's bill for models no trace names, while traced models of that provider find no "
                    "bill line, above which billed_models_matched fails.")
    unallocated_warn_share_pct: float = Field(
        default=20.0, ge=0, le=100, description="Share of the day's cost with an `unallocated` key that warns."
    )
    unpriced_warn_count: int = Field(
        default=0, ge=0, description="Unpriced generations in a day above which the check warns."
    )
    completeness_tolerance_pct: float = Field(
        default=0.1, ge=0, le=100,
        description="How far (% of the server's figure) the day's extracted count or cost may be from Langfuse's own "
                    "totals before the completeness check fails (late data can move the server's figure).",
    )
    langfuse_projects: list[str] = Field(
        default=[], description="The project ids read from the export prefix; empty: every {projectId} folder under it.")
    revenue_file: str = Field(default="", description="Revenue per customer and month (CSV); unset: FINOPS_HOME/revenue.csv.")
    outcomes_file: str = Field(default="", description="Business outcomes per feature and day (CSV); unset: FINOPS_HOME/outcomes.csv.")
    margin_warn_pct: float = Field(
        default=30.0, gt=0, description="A customer's AI cost, as a share of its revenue, above which the margin check warns.")
    budgets_file: str = Field(default="", description="The budgets YAML; unset: FINOPS_HOME/budgets.yaml (none: no budgets).")
    anomaly_dimensions: list[str] = Field(
        default=[], description="The series cost_anomalies watches: allocation keys, provider, model or project_id; "
                                "empty: feature, team, customer_id (those that are allocation keys) and model.")
    anomaly_floor_usd: float = Field(
        default=10.0, ge=0, description="A day's change (USD, against the usual) below which a series is not news.")
    duckdb_memory_limit: str = Field(
        default="500MB", pattern=r"^(\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)|\d{1,2}%)$",
        description="DuckDB's memory limit (e.g. 500MB, 2GB, 80%): above it, DuckDB spills to disk. Raise it for speed.",
    )
    warehouse: str = Field(
        default="", pattern=r"^(ducklake:postgres:.+)?$",
        description="Unset: the DuckDB file FINOPS_HOME/finops.duckdb (one writer at a time). `ducklake:postgres:<libpq "
                    "connection string>`: a DuckLake lakehouse with its catalog in that Postgres database, which runs on "
                    "many machines write at once (password from PGPASSWORD or ~/.pgpass, never in this string).")
    warehouse_data_path: str = Field(
        default="", pattern=r"^(s3://\S+|/\S*)?$",
        description="Where the lakehouse keeps its Parquet files (s3://bucket/prefix/, or a shared directory), given "
                    "when the catalog is new (DuckLake keeps it); AWS credentials and AWS_ENDPOINT_URL the standard way.")

    @field_validator("allocation_keys", mode="before")
    @classmethod
    def _snake_case(cls, keys):
        """`customerId`, `Customer-ID` -> `customer_id`: the Finout column's name (metadata matches any spelling)."""
        if isinstance(keys, list):
            return [snake_case(k) if isinstance(k, str) else k for k in keys]
        return keys

    @model_validator(mode="after")
    def _anomaly_dimensions_exist(self) -> "FinopsSettings":
        known = set(self.allocation_keys) | {"model", "provider", "project_id"}
        unknown = [d for d in self.anomaly_dimensions if d not in known]
        if unknown:
            raise ValueError(f"FINOPS_ANOMALY_DIMENSIONS: {', '.join(unknown)} is not an allocation key, model, "
                             f"provider or project_id (allocation keys: {', '.join(self.allocation_keys)})")
        return self

    @field_validator("allocation_keys")
    @classmethod
    def _keys_are_identifiers(cls, keys: list[str]) -> list[str]:
        bad = [k for k in keys if not _KEY.match(k)]
        if bad:
            raise ValueError(f"allocation keys must be lower-case identifiers ([a-z][a-z0-9_]*), got {bad}")
        reserved = sorted(set(keys) & RESERVED_COLUMNS)
        if reserved:
            raise ValueError(f"allocation keys {reserved} clash with Finout columns {sorted(RESERVED_COLUMNS)}"
                             + ("; project_id is the Langfuse project's: read your own metadata key under another "
                                "name, e.g. FINOPS_METADATA_ALIASES=project_id=app_project with "
                                "app_project an allocation key" if "project_id" in reserved else ""))
        if len(set(keys)) != len(keys) or not keys:
            raise ValueError(f"allocation keys must be a non-empty list without repeats, got {keys}")
        return keys

    @field_validator("billed_providers")
    @classmethod
    def _known_providers(cls, providers: list[str]) -> list[str]:
        unknown = sorted(set(providers) - set(PROVIDERS))
        if unknown:
            raise ValueError(f"billed providers must be among {list(PROVIDERS)}, got {unknown}")
        return providers

    @field_validator("provider_map")
    @classmethod
    def _provider_names(cls, mapping: dict[str, str]) -> dict[str, str]:
        bad = {p: v for p, v in mapping.items() if not p.strip() or not _PROVIDER.match(v)}
        if bad:
            raise ValueError(f"provider map entries must be `pattern=provider` with a lower-case provider name, got {bad}")
        return mapping

    @field_validator("finout_object_name")
    @classmethod
    def _one_object_per_day(cls, name: str) -> str:
        if "{day}" not in name:
            raise ValueError(f"the Finout object name must contain {{day}}, or every day overwrites one object: {name!r}")
        try:
            name.format(day="2026-01-01", year="2026", month="01")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"the Finout object name may use {{day}}, {{year}}, {{month}} only: {name!r} ({exc})") from None
        return name

    @model_validator(mode="after")
    def _aliases_name_keys(self) -> FinopsSettings:
        bad = {alias: key for alias, key in self.metadata_aliases.items()
               if snake_case(key) not in self.allocation_keys or not alias.strip()}
        if bad:
            raise ValueError(f"metadata aliases must be `metadata key=allocation key` with a key among "
                             f"{self.allocation_keys}, got {bad}")
        return self

    @model_validator(mode="after")
    def _dimensions_are_vocabulary(self) -> FinopsSettings:
        allowed = set(self.allocation_keys) | set(FIXED_DIMENSIONS)
        unknown = [d for d in self.dimensions if d not in allowed]
        if unknown or len(set(self.dimensions)) != len(self.dimensions):
            raise ValueError(f"Finout dimensions must be allocation keys or {list(FIXED_DIMENSIONS)}, without repeats; "
                             f"got {self.dimensions}")
        not_delivered = [d for d in self.hashed_dimensions if d not in self.dimensions or d in FIXED_DIMENSIONS]
        if not_delivered:
            raise ValueError(f"hashed dimensions must be delivered allocation keys, got {not_delivered}")
        if self.hashed_dimensions and not self.hash_salt:
            raise ValueError("hashed dimensions need a secret salt in FINOPS_HASH_SALT: unsalted hashes of "
                             "identifiers can be reversed by hashing guesses")
        return self

    @model_validator(mode="after")
    def _reports_apart_from_cost_data(self) -> FinopsSettings:
        report = (self.reports_s3_uri or "").rstrip("/") + "/"
        for name, uri in (("FINOPS_FINOUT_S3_URI", self.finout_s3_uri), ("FINOPS_FOCUS_S3_URI", self.focus_s3_uri)):
            if self.reports_s3_uri and uri and report.startswith(uri.rstrip("/") + "/"):
                raise ValueError(f"FINOPS_REPORTS_S3_URI must not lie under {name}: Finout reads every object under "
                                 "its prefix as cost data, and an HTML report there would break or pollute the import")
        return self

    @property
    def vocabulary(self) -> Vocabulary:
        """The allocation keys as metadata is searched for them: exact name, other spellings, aliases."""
        return Vocabulary.of(self.allocation_keys, {a.strip(): snake_case(k) for a, k in self.metadata_aliases.items()})

    @property
    def dimensions(self) -> list[str]:
        """The Finout columns after UsageDate and Cost, in order."""
        return self.finout_dimensions or ["source", "service_name", *self.allocation_keys, "provider", "model"]

    @property
    def anomaly_series(self) -> list[str]:
        """The dimensions cost_anomalies judges (the setting, else the defaults that apply)."""
        return self.anomaly_dimensions or [d for d in DEFAULT_ANOMALY_DIMENSIONS
                                           if d == "model" or d in self.allocation_keys]

    @property
    def revenue_path(self) -> Path:
        return Path(self.revenue_file) if self.revenue_file else Path(self.home) / "revenue.csv"

    @property
    def outcomes_path(self) -> Path:
        return Path(self.outcomes_file) if self.outcomes_file else Path(self.home) / "outcomes.csv"

    @property
    def budgets_path(self) -> Path:
        return Path(self.budgets_file) if self.budgets_file else Path(self.home) / "budgets.yaml"

    @property
    def reports_dir(self) -> Path:
        return Path(self.home) / "reports"

    @property
    def duckdb_path(self) -> Path:
        return Path(self.home) / "finops.duckdb"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> FinopsSettings:
        env = os.environ if environ is None else environ
        home = Path(env.get("FINOPS_HOME") or ".finops").resolve()
        values: dict[str, object] = {
            "home": str(home),
            "langfuse_export_dir": str(home / "langfuse-export"),
            "billing_dir": str(home / "billing"),
            "finout_dir": str(home / "finout"),
            "focus_dir": str(home / "focus"),
        }
        # Secrets are EnvVars: resolved at run time, never shown in the UI, config or logs.
        if env.get("FINOPS_HASH_SALT"):
            values["hash_salt"] = dg.EnvVar("FINOPS_HASH_SALT")
        if env.get("FINOPS_ALERT_WEBHOOK_URL"):  # a Slack webhook URL is a credential
            values["alert_webhook_url"] = dg.EnvVar("FINOPS_ALERT_WEBHOOK_URL")
        _check_warehouse(env.get("FINOPS_WAREHOUSE") or "")
        for field, var in ENV_VARS.items():
            raw = env.get(var)
            if not raw or field == "home":
                continue
            if field in LIST_FIELDS:
                values[field] = [part.strip() for part in raw.split(",") if part.strip()]
            elif field in ("provider_map", "metadata_aliases"):  # "pattern=provider,...", "accountId=customer_id,..."
                pairs = [part.partition("=") for part in raw.split(",") if part.strip()]
                bad = [p for p, eq, v in pairs if not eq]
                if bad:
                    raise ValueError(f"{var}: expected `name=value` pairs separated by commas, got {bad}")
                values[field] = {p.strip(): v.strip() for p, _, v in pairs}
            else:
                values[field] = raw
        return cls(**values)


def _check_warehouse(value: str) -> None:
    """FINOPS_WAREHOUSE is shown in the UI's resource config, and pydantic's errors repeat a bad value whole: a
    password in it is refused here, before either could show it (libpq takes it from PGPASSWORD or ~/.pgpass)."""
    if re.search(r"(^|[\s:;?&])password\s*=|://[^/@\s]*:[^/@\s]*@", value, re.IGNORECASE):
        raise ValueError("FINOPS_WAREHOUSE holds a password: give it in PGPASSWORD or ~/.pgpass instead "
                         "(the setting shows in the Dagster UI)")
    if value and not value.startswith("ducklake:postgres:"):
        raise ValueError("FINOPS_WAREHOUSE must be `ducklake:postgres:<libpq connection string>` "
                         "(e.g. ducklake:postgres:host=db.internal dbname=finops user=finops), or unset for the DuckDB file")
    if value and importlib.util.find_spec("duckdb_extension_ducklake") is None:
        raise ValueError("FINOPS_WAREHOUSE names a lakehouse, but this environment lacks its DuckDB extensions: install "
                         "the `lakehouse` extra (`make lakehouse` makes .venv-lakehouse; or `uv sync --extra lakehouse`)")
