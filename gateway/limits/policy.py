"""Admission policy: which buckets a request draws on, and how much from each.

Pure functions of (tenant limits, request facts): no I/O. The limiter applies what this module
decides.

- A tenant has default limits (RPM, TPM, concurrency) and optional per-model overrides of RPM
  and TPM. An absent figure means unlimited for that dimension, explicitly: no bucket is made.
- A request reserves 1 from each RPM bucket and `prompt_tokens + reserved_output_tokens` from
  each TPM bucket, all at once (all-or-nothing). The output reservation is the request's
  `max_tokens` (or `max_completion_tokens`) when given, else the configured default.
- Settling charges the difference between what was reserved and what was used (refund when
  negative, overrun when positive) on the same TPM buckets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from gateway.limits.limiter import BucketSpec, ConcurrencySpec, Demand

RPM = "rpm"
TPM = "tpm"


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Per-minute limits of one scope (a tenant, or a tenant × model); None = unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    rpm_burst: int | None = None  # bucket capacity when it differs from the per-minute figure
    tpm_burst: int | None = None


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """A tenant's limits: defaults, per-model overrides, and max requests in flight."""

    default: RateLimits = RateLimits()
    models: Mapping[str, RateLimits] = field(default_factory=lambda: MappingProxyType({}))
    concurrency: int | None = None
    # model -> its buckets (spec, is TPM) and concurrency: the same for every request, so built
    # once (limits are immutable; a change is a new TenantLimits, and a fresh cache).
    _plans: dict[str, _Plan] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    @property
    def unlimited(self) -> bool:
        """No bucket at all: admission can be skipped."""
        return (
            self.default.rpm is None
            and self.default.tpm is None
            and self.concurrency is None
            and not self.models
        )

    def counts_tokens(self, model: str) -> bool:
        """Whether admitting a request for `model` needs its token count."""
        override = self.models.get(model)
        return self.default.tpm is not None or (override is not None and override.tpm is not None)


UNLIMITED = TenantLimits()


@dataclass(frozen=True, slots=True)
class Admission:
    """What to reserve for one request."""

    demands: tuple[Demand, ...]
    concurrency: ConcurrencySpec | None
    reserved_tokens: int  # the amount each TPM bucket is asked for

    def token_adjustments(self, used_tokens: int) -> tuple[Demand, ...]:
        """Settle: used − reserved on every TPM bucket (negative = refund)."""
        delta = used_tokens - self.reserved_tokens
        if delta == 0:
            return ()
        return tuple((spec, delta) for spec, _ in self.demands if _is_tpm(spec))


def _is_tpm(spec: BucketSpec) -> bool:
    return spec.name == TPM or spec.name.startswith(f"{TPM}:")


def plan_admission(limits: TenantLimits, model: str, request_tokens: int) -> Admission:
    """The buckets one request draws on: tenant-wide and for its model."""
    plan = limits._plans.get(model)
    if plan is None:
        plan = _plan(limits, model)
        if len(limits._plans) < _MAX_PLANS:  # models are routed (known) names: a guard only
            limits._plans[model] = plan
    buckets, concurrency = plan
    demands = tuple([(spec, request_tokens if tpm else 1) for spec, tpm in buckets])
    return Admission(demands, concurrency, request_tokens)


_Plan = tuple[tuple[tuple[BucketSpec, bool], ...], ConcurrencySpec | None]
_MAX_PLANS = 1024


def _plan(limits: TenantLimits, model: str) -> _Plan:
    buckets: list[tuple[BucketSpec, bool]] = []
    _add(buckets, limits.default, RPM, TPM)
    override = limits.models.get(model)
    if override is not None:
        _add(buckets, override, f"{RPM}:model:{model}", f"{TPM}:model:{model}")
    concurrency = ConcurrencySpec(limits.concurrency) if limits.concurrency else None
    return tuple(buckets), concurrency


def _add(
    buckets: list[tuple[BucketSpec, bool]], limits: RateLimits, rpm_name: str, tpm_name: str
) -> None:
    if limits.rpm is not None:
        buckets.append((BucketSpec.per_minute(rpm_name, limits.rpm, burst=limits.rpm_burst), False))
    if limits.tpm is not None:
        buckets.append((BucketSpec.per_minute(tpm_name, limits.tpm, burst=limits.tpm_burst), True))


def output_reservation(payload_max_tokens: object, default_tokens: int) -> int:
    """Tokens to reserve for the answer: the request's cap, else the configured default."""
    if isinstance(payload_max_tokens, int) and not isinstance(payload_max_tokens, bool):
        return payload_max_tokens
    return default_tokens
