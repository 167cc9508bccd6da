"""GatewayConfig: the routing file, parsed, validated and frozen.

The routing file holds what changes with a deploy: deployments (La Plateforme, vLLM replicas,
any OpenAI-compatible server), the public model names each serves, region and jurisdiction, and
timeouts. What admins change at runtime (tenants, keys, limits, prices) lives in the database.

Every model forbids unknown keys, so a misspelled key fails at load. All problems are reported
together, one per line, as `file: dotted.path: reason`. Secrets appear only by reference
(`api_key_env: MISTRAL_API_KEY`); the value is read through `gateway.settings.read_secret_env`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationError, model_validator

Provider = Literal["mistral", "vllm", "openai"]
SimulatorStyle = Literal["mistral", "vllm", "openai"]


class ConfigError(Exception):
    """The routing file cannot be used; the message lists every problem, one per line."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Frozen):
    """Per-deployment timeouts, in seconds."""

    connect_s: float = Field(default=5.0, gt=0)
    first_byte_s: float = Field(
        default=60.0, gt=0, description="From sending the request to the response's headers."
    )
    read_s: float = Field(default=120.0, gt=0, description="The longest silence mid-response.")
    total_s: float = Field(default=600.0, gt=0, description="Whole request, stream included.")


class HealthCheck(_Frozen):
    """Active checks of one deployment (vLLM: `GET /health`; others: an authenticated
    `GET /models`), and optionally its load as vLLM reports it on `/metrics`."""

    enabled: bool = True
    interval_s: float = Field(default=10.0, gt=0)
    timeout_s: float = Field(default=2.0, gt=0)
    scrape_load: bool = Field(
        default=False, description="vLLM only: read requests running/waiting from /metrics."
    )


class Deployment(_Frozen):
    """One upstream endpoint and the public models it serves."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    provider: Provider
    base_url: HttpUrl
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    region: str = Field(min_length=1)
    jurisdiction: str = Field(min_length=1)
    models: dict[str, str] = Field(min_length=1, description="public model name -> upstream name")
    timeouts: Timeouts = Timeouts()
    max_connections: int = Field(default=256, gt=0)
    weight: float = Field(default=1.0, gt=0, description="Share of traffic among equals.")
    priority: int = Field(
        default=0, ge=0, description="Tier: 0 is preferred; higher tiers take the spill-over."
    )
    max_outstanding: int | None = Field(
        default=None, gt=0, description="In-flight requests at which it counts as saturated."
    )
    health: HealthCheck = HealthCheck()

    @model_validator(mode="after")
    def _load_scraping_is_for_vllm(self) -> Deployment:
        if self.health.scrape_load and self.provider != "vllm":
            raise ValueError("health.scrape_load: only vLLM deployments expose /metrics")
        return self

    @cached_property
    def base(self) -> str:
        """The base URL without a trailing slash, ready for `base + "/chat/completions"`
        (computed once: it is read on every request)."""
        return str(self.base_url).rstrip("/")


class SimulatorConfig(_Frozen):
    """Run the built-in simulated upstream beside the gateway (the local demo)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8911, gt=0, lt=65536)
    style: SimulatorStyle = "mistral"
    ttft_ms: float = Field(default=0, ge=0)
    token_delay_ms: float = Field(default=0, ge=0)


class ModelGroup(_Frozen):
    """Settings of one public model (the group of deployments serving it)."""

    aliases: tuple[str, ...] = Field(default=(), description="Other names clients may use.")
    fallbacks: tuple[str, ...] = Field(
        default=(),
        description="Public models to try, in order, when no deployment of this one is left.",
    )


class RetryPolicy(_Frozen):
    """When and how a failed attempt is tried again (only before the client got a byte)."""

    max_attempts: int = Field(default=3, ge=1, le=10, description="Attempts per request.")
    backoff_base_s: float = Field(default=0.05, ge=0)
    backoff_cap_s: float = Field(default=2.0, ge=0)
    retry_on_500: bool = False
    deadline_s: float = Field(
        default=30.0, gt=0, description="No attempt starts, nor wait ends, later than this."
    )
    budget_ratio: float = Field(
        default=0.2, ge=0, le=1, description="Retries per deployment <= this x its requests."
    )
    budget_min_retries: int = Field(
        default=3, ge=0, description="Retries always allowed per deployment and window."
    )
    budget_window_s: float = Field(default=10.0, gt=0)


class Ejection(_Frozen):
    """Passive outlier detection: consecutive failures take a deployment out for a while."""

    consecutive_failures: int = Field(default=3, ge=1)
    base_s: float = Field(default=5.0, gt=0, description="First ejection; doubles on repeat.")
    max_s: float = Field(default=300.0, gt=0)


class RoutingPolicy(_Frozen):
    """How requests are spread and retried across deployments."""

    retries: RetryPolicy = RetryPolicy()
    ejection: Ejection = Ejection()


class PriceEntry(_Frozen):
    """A list price from the routing file, seeded into the `prices` table at start.

    Amounts are per million tokens in `currency`; they must be exact to the micro-unit.
    """

    model: str = Field(min_length=1)
    deployment: str = Field(default="", description="Empty: every deployment of the model.")
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    input_per_mtok: Decimal = Field(ge=0)
    output_per_mtok: Decimal = Field(default=Decimal(0), ge=0)
    effective_from: datetime = datetime(2020, 1, 1, tzinfo=UTC)

    @model_validator(mode="after")
    def _exact_to_the_micro(self) -> PriceEntry:
        for name in ("input_per_mtok", "output_per_mtok"):
            if (getattr(self, name) * 1_000_000) % 1:
                raise ValueError(f"{name}: more precise than a micro-unit")
        if self.effective_from.tzinfo is None:
            raise ValueError("effective_from: give a time zone (e.g. 2026-12-01T00:00:00Z)")
        return self

    def micros(self) -> tuple[int, int]:
        """(input, output) in micro-units per million tokens."""
        return int(self.input_per_mtok * 1_000_000), int(self.output_per_mtok * 1_000_000)


class GatewayConfig(_Frozen):
    """The whole routing file."""

    deployments: tuple[Deployment, ...]
    models: dict[str, ModelGroup] = Field(
        default_factory=dict, description="Per public model: aliases and fallbacks."
    )
    routing: RoutingPolicy = RoutingPolicy()
    prices: tuple[PriceEntry, ...] = ()
    simulator: SimulatorConfig | None = None

    @model_validator(mode="after")
    def _names_are_unique(self) -> GatewayConfig:
        if not self.deployments:
            raise ValueError("deployments: at least one deployment is needed")
        seen: set[str] = set()
        for deployment in self.deployments:
            if deployment.name in seen:
                raise ValueError(f"deployment name {deployment.name!r} is used twice")
            seen.add(deployment.name)
        return self

    @model_validator(mode="after")
    def _groups_are_consistent(self) -> GatewayConfig:
        served = set(self.public_models())
        names = set(served)
        for model, group in self.models.items():
            if model not in served:
                raise ValueError(f"models.{model}: no deployment serves this model")
            for alias in group.aliases:
                if alias in names:
                    raise ValueError(f"models.{model}.aliases: {alias!r} is already a model name")
                names.add(alias)
            for fallback in group.fallbacks:
                if fallback == model or fallback not in served:
                    raise ValueError(
                        f"models.{model}.fallbacks: {fallback!r} is not another served model"
                    )
        return self

    def public_models(self) -> tuple[str, ...]:
        """Every public model name, in config order, without repeats."""
        return tuple(dict.fromkeys(m for d in self.deployments for m in d.models))


# Only echo values for errors about a value's form; an unknown key may hold a secret someone
# pasted inline (`api_key: sk-...`), and that must not reach a log.
_ECHO_INPUT_FOR = frozenset(
    {"literal_error", "url_scheme", "url_parsing", "greater_than", "less_than", "string_pattern_mismatch",
     "int_parsing", "float_parsing", "bool_parsing", "string_too_short", "string_too_long"}
)  # fmt: skip


def _location(loc: tuple[int | str, ...], data: object) -> str:
    """`deployments[0].models` style path; list indexes are shown with the item's name if any."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            name = node[item].get("name") if isinstance(node, list) and item < len(node) else None
            parts[-1] += f"[{item}]" if name is None else f"[{item}:{name}]"
            node = node[item] if isinstance(node, list) and item < len(node) else None
        else:
            parts.append(str(item))
            node = node.get(item) if isinstance(node, Mapping) else None
    return ".".join(parts) or "(top level)"


def parse_config(data: object, *, source: str = "<config>") -> GatewayConfig:
    """Validate an already-loaded document; raise ConfigError listing every problem."""
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        lines = [
            f"{source}: {_location(err['loc'], data)}: {err['msg']}"
            + (f" (got {err['input']!r})" if err["type"] in _ECHO_INPUT_FOR else "")
            for err in exc.errors(include_url=False)
        ]
        raise ConfigError("\n".join(lines)) from None


def load_config(path: Path) -> GatewayConfig:
    """Read, parse and validate the routing file at `path`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the routing file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, source=str(path))
