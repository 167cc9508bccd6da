"""Admit and settle: the request path's two calls into the limiter.

`admit` turns a routed request into the reservation the policy asks for (prompt tokens counted
with the model's tokenizer + the output reservation on every TPM bucket, 1 on every RPM bucket,
a concurrency slot), makes it in one limiter call, and raises `RateLimited` with `Retry-After`
when refused. `settle` runs in the background (it must outlive a client that hangs up): it
refunds the unused reservation or charges the overrun, and frees the slot.

Failure mode: with Redis unreachable the configured `FailoverLimiter` either admits against a
local share of the limits (fail-open) or raises `LimiterUnavailable` (fail-closed, 503). A
settle that fails is logged and dropped: the bucket then keeps the conservative reservation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from gateway.auth.principal import Principal
from gateway.errors import RateLimited
from gateway.ledger.usage import UsedTokens
from gateway.limits.limiter import CONCURRENCY, BucketState, Decision, Limiter
from gateway.limits.policy import RPM, TPM, Admission, output_reservation, plan_admission
from gateway.limits.tokens import count_prompt_tokens
from gateway.tasks import BackgroundTasks
from gateway.upstream.adapter import Endpoint

log = logging.getLogger("gateway.limits")


@dataclass(slots=True)
class Ticket:
    """A granted admission: what was reserved, and what settle needs."""

    tenant_id: str
    admission: Admission
    slot_id: str | None
    prompt_tokens: int
    headers: dict[str, str]
    settled: bool = False


class Admitter:
    """Reserve before the upstream call, settle after it."""

    def __init__(
        self, limiter: Limiter, *, default_output_tokens: int, tasks: BackgroundTasks
    ) -> None:
        self.limiter = limiter
        self.default_output_tokens = default_output_tokens
        self.tasks = tasks

    async def admit(
        self,
        principal: Principal,
        endpoint: Endpoint,
        model: str,
        payload: dict[str, Any],
        upstream_model: str,
    ) -> Ticket | None:
        """Reserve for this request, or raise RateLimited; None when the tenant is unlimited."""
        limits = principal.limits
        if limits.unlimited:
            return None
        prompt_tokens = 0
        reserved = 0
        if limits.counts_tokens(model):
            prompt_tokens = count_prompt_tokens(endpoint, payload, upstream_model)
            reserved = prompt_tokens
            if endpoint is not Endpoint.EMBEDDINGS:
                cap = payload.get("max_tokens", payload.get("max_completion_tokens"))
                default = principal.default_output_tokens or self.default_output_tokens
                reserved += output_reservation(cap, default)
        admission = plan_admission(limits, model, reserved)
        decision = await self.limiter.reserve(
            principal.tenant_id, admission.demands, concurrency=admission.concurrency
        )
        headers = ratelimit_headers(decision.buckets)
        if not decision.allowed:
            raise _refusal(decision, reserved, headers)
        slot = decision.reservation.slot_id if decision.reservation else None
        return Ticket(principal.tenant_id, admission, slot, prompt_tokens, headers)

    def settle(self, ticket: Ticket | None, used: UsedTokens | None) -> None:
        """Settle in the background: `used` None keeps the reservation as the charge."""
        if ticket is None or ticket.settled:
            return
        ticket.settled = True
        adjustments = ticket.admission.token_adjustments(used.total) if used is not None else ()
        if not adjustments and ticket.slot_id is None:
            return
        self.tasks.spawn(
            self._settle(ticket.tenant_id, adjustments, ticket.slot_id), name="limits.settle"
        )

    async def _settle(self, tenant_id: str, adjustments: Any, slot_id: str | None) -> None:
        try:
            await self.limiter.settle(tenant_id, adjustments, release_slot=slot_id)
        except Exception as exc:  # logged once here: the reservation stands, nothing else breaks
            log.warning("settle failed for tenant %s: %s", tenant_id, type(exc).__name__)


def _refusal(decision: Decision, reserved: int, headers: dict[str, str]) -> RateLimited:
    bucket = next((b for b in decision.buckets if b.name == decision.denied), None)
    what = _describe(decision.denied or "")
    if decision.never_fits:
        limit = bucket.limit if bucket else 0
        return RateLimited(
            f"This request needs {reserved} tokens but your {what} limit holds at most {limit}; "
            "it can never be admitted. Lower max_tokens or shorten the input.",
            retry_after_s=None,
            headers=headers,
        )
    wait_s = decision.retry_after_ms / 1000
    return RateLimited(
        f"Rate limit reached for {what}"
        + (f" (limit {bucket.limit})" if bucket and decision.denied != CONCURRENCY else "")
        + f". Retry after {wait_s:.3f} s.",
        retry_after_s=wait_s,
        headers=headers,
    )


def _describe(bucket: str) -> str:
    if bucket == CONCURRENCY:
        return "concurrent requests"
    scope = f" on model {bucket.split(':', 2)[2]}" if bucket.count(":") >= 2 else ""
    if bucket.startswith(RPM):
        return "requests per minute" + scope
    return "tokens per minute" + scope


def ratelimit_headers(buckets: tuple[BucketState, ...]) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers from the tightest request and token buckets."""
    headers: dict[str, str] = {}
    for kind, suffix in ((RPM, "requests"), (TPM, "tokens")):
        tightest: BucketState | None = None
        for state in buckets:
            if (state.name == kind or state.name.startswith(kind + ":")) and (
                tightest is None or state.remaining < tightest.remaining
            ):
                tightest = state
        if tightest is not None:
            headers[f"x-ratelimit-limit-{suffix}"] = str(tightest.limit)
            headers[f"x-ratelimit-remaining-{suffix}"] = str(tightest.remaining)
            headers[f"x-ratelimit-reset-{suffix}"] = duration(tightest.reset_ms)
    return headers


def duration(ms: int) -> str:
    """OpenAI's duration format: `20ms`, `1.5s`, `6m0s`."""
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest_ms = divmod(ms, 60_000)
    seconds = f"{rest_ms / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"
