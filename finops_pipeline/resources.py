"""The outside APIs as Dagster resources: where they are, their keys (through `EnvVar`, never in config
or logs) and the clients' limits. Without keys the pipeline reads files instead (the blob export, saved bills)."""

from __future__ import annotations

import os

import dagster as dg
from pydantic import Field

from finops_pipeline.sources.billing_api import SPECS, CostApi
from finops_pipeline.sources.langfuse_api import DEFAULT_HOST, LangfuseApi


class LangfuseApiResource(dg.ConfigurableResource):
    """Where and how to read observations from Langfuse's public API v2."""

    host: str = Field(default=DEFAULT_HOST, description="Langfuse base URL (Cloud region or self-hosted).")
    public_key: str | None = Field(default=None, description="Project public key (pk-lf-...); unset: read the blob export.")
    secret_key: str | None = Field(default=None, description="Project secret key (sk-lf-...), from an environment variable.")
    requests_per_minute: float = Field(
        default=1000, ge=0, description="The plan's public-API rate limit, shared by all windows (0: no limit).")
    concurrency: int = Field(default=8, ge=1, le=64, description="Time windows of the day fetched at once.")
    windows: int = Field(default=24, ge=1, le=1440, description="Time windows the day is split into.")
    timeout_seconds: float = Field(default=60, gt=0, description="Per-request timeout.")
    give_up_after_seconds: float = Field(
        default=600, gt=0, description="How long one request is retried (5xx, 429, timeouts) before the run fails.")

    @property
    def configured(self) -> bool:
        return bool(self.public_key and self.secret_key)

    def client(self) -> LangfuseApi:
        return LangfuseApi(self.host, self.public_key, self.secret_key,
                           requests_per_minute=self.requests_per_minute, timeout_seconds=self.timeout_seconds,
                           give_up_after_seconds=self.give_up_after_seconds)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> LangfuseApiResource:
        """Keys from LANGFUSE_PUBLIC_KEY / LANGFUSE_SECRET_KEY as `EnvVar`s (resolved at run time, shown as
        names in the UI); host from LANGFUSE_BASE_URL, else LANGFUSE_HOST (the SDK's order)."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {
            "host": env.get("LANGFUSE_BASE_URL") or env.get("LANGFUSE_HOST") or DEFAULT_HOST,
        }
        if env.get("LANGFUSE_PUBLIC_KEY") and env.get("LANGFUSE_SECRET_KEY"):
            values["public_key"] = dg.EnvVar("LANGFUSE_PUBLIC_KEY")
            values["secret_key"] = dg.EnvVar("LANGFUSE_SECRET_KEY")
        for field, var in (("requests_per_minute", "FINOPS_LANGFUSE_REQUESTS_PER_MINUTE"),
                           ("concurrency", "FINOPS_LANGFUSE_CONCURRENCY")):
            if env.get(var):
                values[field] = env[var]
        return cls(**values)


class CostApiResource(dg.ConfigurableResource):
    """A provider's cost API and its admin key. Without a key, the bill is read from saved files."""

    provider: str = Field(description="openai or anthropic.")
    base_url: str = Field(description="The API's base URL, as the provider's SDK takes it (OPENAI_BASE_URL, ANTHROPIC_BASE_URL).")
    admin_key: str | None = Field(default=None, description="Admin key, from an environment variable; unset: read billing files.")
    timeout_seconds: float = Field(default=60, gt=0, description="Per-request timeout.")
    give_up_after_seconds: float = Field(
        default=300, gt=0, description="How long one request is retried (5xx, 429, timeouts) before the run fails.")

    @property
    def configured(self) -> bool:
        return bool(self.admin_key)

    def client(self) -> CostApi:
        return CostApi(SPECS[self.provider], self.base_url, self.admin_key, timeout_seconds=self.timeout_seconds,
                       give_up_after_seconds=self.give_up_after_seconds)

    @classmethod
    def from_env(cls, provider: str, environ: dict[str, str] | None = None) -> CostApiResource:
        """The key from OPENAI_ADMIN_KEY / ANTHROPIC_ADMIN_KEY as an `EnvVar`; the base URL from
        OPENAI_BASE_URL / ANTHROPIC_BASE_URL, else the provider's."""
        env = os.environ if environ is None else environ
        spec = SPECS[provider]
        values: dict[str, object] = {"provider": provider,
                                     "base_url": env.get(spec.base_url_env) or spec.default_base_url}
        if env.get(spec.key_env):
            values["admin_key"] = dg.EnvVar(spec.key_env)
        return cls(**values)
