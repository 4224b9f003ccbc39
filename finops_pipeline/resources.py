"""The outside APIs as Dagster resources: where they are, their keys (through `EnvVar`, never in config
or logs) and the clients' limits. Without keys the pipeline reads files instead (the blob export, saved bills)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import dagster as dg
from pydantic import Field

from finops_pipeline.sources.billing_api import SPECS, CostApi
from finops_pipeline.sources.langfuse_api import DEFAULT_HOST, LangfuseApi, RateLimiter


class LangfuseProject(dg.Config):
    """Another Langfuse project read in the same run: its key pair (from LANGFUSE_PUBLIC_KEY_<NAME> and
    LANGFUSE_SECRET_KEY_<NAME>) and, when it lives elsewhere, its host (LANGFUSE_HOST_<NAME>)."""

    name: str = Field(description="Names the project in messages: its variables' <NAME>, lower case.")
    suffix: str | None = Field(default=None, description="The <NAME> of its variables as written; unset: NAME upper case.")
    host: str | None = Field(default=None, description="Its Langfuse base URL; unset: the resource's host.")
    public_key: str = Field(description="Project public key (pk-lf-...), from an environment variable.")
    secret_key: str = Field(description="Project secret key (sk-lf-...), from an environment variable.")


@dataclass(frozen=True)
class KeyPair:
    """One project's keys, where they live and what they are called, for the client and its messages."""

    name: str  # "default" for LANGFUSE_PUBLIC_KEY/LANGFUSE_SECRET_KEY, else the <NAME> of its variables, lower case
    host: str
    public_key: str
    secret_key: str = field(repr=False)
    suffix: str = ""  # what follows LANGFUSE_PUBLIC_KEY in its variables' names: "" or "_<NAME>" as written

    @property
    def variables(self) -> str:
        return f"LANGFUSE_PUBLIC_KEY{self.suffix} and LANGFUSE_SECRET_KEY{self.suffix}"

    @property
    def host_variables(self) -> str:
        default = "LANGFUSE_BASE_URL or LANGFUSE_HOST"
        return f"LANGFUSE_BASE_URL{self.suffix} or LANGFUSE_HOST{self.suffix}, else {default}" if self.suffix else default


DEFAULT_PAIR = "default"
_PAIR_VARIABLE = re.compile(r"^LANGFUSE_PUBLIC_KEY_(\w+)$")


class LangfuseApiResource(dg.ConfigurableResource):
    """Where and how to read observations from Langfuse's public API (v2; the legacy API on servers without it)."""

    host: str = Field(default=DEFAULT_HOST, description="Langfuse base URL (Cloud region or self-hosted).")
    public_key: str | None = Field(default=None, description="Project public key (pk-lf-...); unset: read the blob export.")
    secret_key: str | None = Field(default=None, description="Project secret key (sk-lf-...), from an environment variable.")
    more_projects: list[LangfuseProject] = Field(
        default=[], description="Other projects read in the same run (LANGFUSE_PUBLIC_KEY_<NAME>, ...).")
    requests_per_minute: float = Field(
        default=1000, ge=0,
        description="The plan's public-API rate limit, shared by all windows of all projects of one organisation (0: no limit).")
    concurrency: int = Field(default=8, ge=1, le=64, description="Time windows of the day fetched at once.")
    windows: int = Field(default=24, ge=1, le=1440, description="Time windows the day is split into.")
    timeout_seconds: float = Field(default=60, gt=0, description="Per-request timeout.")
    give_up_after_seconds: float = Field(
        default=600, gt=0, description="How long one request is retried (5xx, 429, timeouts) before the run fails.")

    @property
    def configured(self) -> bool:
        return bool(self.key_pairs())

    def key_pairs(self) -> list[KeyPair]:
        """Every project to read: the default pair (when set), then the others."""
        pairs = [KeyPair(DEFAULT_PAIR, self.host, self.public_key, self.secret_key)] if (
            self.public_key and self.secret_key) else []
        return pairs + [KeyPair(p.name, p.host or self.host, p.public_key, p.secret_key, f"_{p.suffix or p.name.upper()}")
                        for p in self.more_projects]

    def client(self, pair: KeyPair, limiter: RateLimiter | None = None) -> LangfuseApi:
        return LangfuseApi(pair.host, pair.public_key, pair.secret_key, keys=pair.variables,
                           host_from=pair.host_variables, limiter=limiter,
                           requests_per_minute=self.requests_per_minute, timeout_seconds=self.timeout_seconds,
                           give_up_after_seconds=self.give_up_after_seconds)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> LangfuseApiResource:
        """Keys from LANGFUSE_PUBLIC_KEY / LANGFUSE_SECRET_KEY as `EnvVar`s (resolved at run time, shown as
        names in the UI); host from LANGFUSE_BASE_URL, else LANGFUSE_HOST (the SDK's order). Each further
        pair LANGFUSE_PUBLIC_KEY_<NAME> / LANGFUSE_SECRET_KEY_<NAME> is another project, on
        LANGFUSE_BASE_URL_<NAME> or LANGFUSE_HOST_<NAME> when set, else the same host."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {
            "host": env.get("LANGFUSE_BASE_URL") or env.get("LANGFUSE_HOST") or DEFAULT_HOST,
        }
        if bool(env.get("LANGFUSE_PUBLIC_KEY")) != bool(env.get("LANGFUSE_SECRET_KEY")):
            have, lack = (("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY") if env.get("LANGFUSE_PUBLIC_KEY")
                          else ("LANGFUSE_SECRET_KEY", "LANGFUSE_PUBLIC_KEY"))
            raise ValueError(f"{have} is set but {lack} is not: a project needs both keys (neither: read the export).")
        if env.get("LANGFUSE_PUBLIC_KEY") and env.get("LANGFUSE_SECRET_KEY"):
            values["public_key"] = dg.EnvVar("LANGFUSE_PUBLIC_KEY")
            values["secret_key"] = dg.EnvVar("LANGFUSE_SECRET_KEY")
        more, seen = [], {}
        for variable in sorted(env):
            match = _PAIR_VARIABLE.match(variable)
            if not match or not env[variable]:
                continue
            suffix = match.group(1)
            if suffix.lower() == DEFAULT_PAIR:
                raise ValueError(f"{variable}: `{suffix}` names the pair LANGFUSE_PUBLIC_KEY/LANGFUSE_SECRET_KEY; "
                                 "give this project another name.")
            if not env.get(f"LANGFUSE_SECRET_KEY_{suffix}"):
                near = [v for v in env if v.lower() == f"langfuse_secret_key_{suffix}".lower()]
                raise ValueError(f"{variable} is set but LANGFUSE_SECRET_KEY_{suffix} is not: a project needs both keys"
                                 + (f" (there is {near[0]}: the name is taken as written)." if near else "."))
            if suffix.lower() in seen:  # _Support and _SUPPORT: one name in every message, so one of them
                raise ValueError(f"{seen[suffix.lower()]} and {variable} name the same project "
                                 f"({suffix.lower()}): keep one.")
            seen[suffix.lower()] = variable
            more.append(LangfuseProject(
                name=suffix.lower(), suffix=suffix, host=env.get(f"LANGFUSE_BASE_URL_{suffix}") or env.get(f"LANGFUSE_HOST_{suffix}"),
                public_key=dg.EnvVar(variable), secret_key=dg.EnvVar(f"LANGFUSE_SECRET_KEY_{suffix}")))
        lone = sorted(v for v in env if v.startswith("LANGFUSE_SECRET_KEY_") and env[v]
                      and not env.get("LANGFUSE_PUBLIC_KEY_" + v.removeprefix("LANGFUSE_SECRET_KEY_")))
        if lone:
            raise ValueError(f"{lone[0]} is set but LANGFUSE_PUBLIC_KEY_{lone[0].removeprefix('LANGFUSE_SECRET_KEY_')} "
                             "is not: a project needs both keys.")
        values["more_projects"] = more
        for field_name, var in (("requests_per_minute", "FINOPS_LANGFUSE_REQUESTS_PER_MINUTE"),
                                ("concurrency", "FINOPS_LANGFUSE_CONCURRENCY")):
            if env.get(var):
                values[field_name] = env[var]
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
