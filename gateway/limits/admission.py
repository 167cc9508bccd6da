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
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from gateway.auth.principal import Principal
from gateway.clock import Clock, SystemClock
from gateway.errors import BudgetExhausted, RateLimited
from gateway.ledger.pricing import Price, PriceCatalog, worst_case_micros
from gateway.ledger.usage import UsedTokens
from gateway.limits.budget import (
    BudgetPolicy,
    affordable_output_tokens,
    budget_bucket,
    format_amount,
    is_budget,
    period_end_text,
)
from gateway.limits.limiter import CONCURRENCY, BucketState, Decision, Demand, Limiter
from gateway.limits.policy import RPM, TPM, Admission, output_reservation, plan_admission
from gateway.limits.tokens import count_prompt_tokens
from gateway.observability import metrics
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
    budget: Demand | None = None  # the budget bucket and the cost reserved on it
    settled: bool = False


class Admitter:
    """Reserve before the upstream call, settle after it."""

    def __init__(
        self,
        limiter: Limiter,
        *,
        default_output_tokens: int,
        tasks: BackgroundTasks,
        prices: PriceCatalog | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.limiter = limiter
        self.default_output_tokens = default_output_tokens
        self.tasks = tasks
        self.prices = prices or PriceCatalog()
        self.clock = clock or SystemClock()

    async def admit(
        self,
        principal: Principal,
        endpoint: Endpoint,
        model: str,
        payload: dict[str, Any],
        upstream_model: str,
        deployments: tuple[str, ...] = (),
    ) -> Ticket | None:
        """Reserve for this request, or raise RateLimited / BudgetExhausted; None when the
        tenant has neither limits nor a budget. A hard budget with `shrink_max_tokens` may
        lower `payload["max_tokens"]` to fit what is left."""
        limits, budget = principal.limits, principal.budget
        if limits.unlimited and budget is None:
            return None
        prompt_tokens = 0
        if limits.counts_tokens(model) or budget is not None:
            prompt_tokens = count_prompt_tokens(endpoint, payload, upstream_model)
        now_s = self.clock.now_s()
        price = self._budget_price(budget, model, deployments, now_s) if budget else None
        for attempt in (1, 2):  # a second try only after lowering max_tokens to fit a budget
            output = 0
            if endpoint is not Endpoint.EMBEDDINGS:
                cap = payload.get("max_tokens", payload.get("max_completion_tokens"))
                default = principal.default_output_tokens or self.default_output_tokens
                output = output_reservation(cap, default)
            reserved = prompt_tokens + output if limits.counts_tokens(model) else 0
            admission = plan_admission(limits, model, reserved)
            spend: Demand | None = None
            if budget is not None:
                worst = worst_case_micros(price, prompt_tokens, output) if price else 0
                spend = (budget_bucket(budget, now_s), worst if budget.hard else 0)
            demands = admission.demands + ((spend,) if spend else ())
            started = time.perf_counter()
            decision = await self.limiter.reserve(
                principal.tenant_id, demands, concurrency=admission.concurrency
            )
            metrics.observe(metrics.REDIS_SECONDS, ("reserve",), time.perf_counter() - started)
            reason = "none" if decision.allowed else _reason(decision.denied)
            metrics.add(
                metrics.LIMITER_DECISIONS, ("allowed" if decision.allowed else "denied", reason)
            )
            headers = ratelimit_headers(decision.buckets)
            if budget is not None:
                headers.update(budget_headers(decision.buckets, now_s))
            if decision.allowed:
                slot = decision.reservation.slot_id if decision.reservation else None
                return Ticket(principal.tenant_id, admission, slot, prompt_tokens, headers, spend)
            if not (budget is not None and decision.denied and is_budget(decision.denied)):
                raise _refusal(decision, reserved, headers)
            assert price is not None
            assert spend is not None
            left = _remaining(decision.buckets, spend[0].name)
            fits = affordable_output_tokens(left, price, prompt_tokens)
            shrinkable = budget.shrink_max_tokens and endpoint is not Endpoint.EMBEDDINGS
            if attempt == 1 and shrinkable and budget.min_output_tokens <= fits < output:
                payload.pop("max_completion_tokens", None)
                payload["max_tokens"] = fits
                continue
            raise _over_budget(budget, left, spend[1], headers)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _budget_price(
        self, budget: BudgetPolicy, model: str, deployments: tuple[str, ...], now_s: float
    ) -> Price | None:
        """The dearest price among the deployments the request may reach (a worst case), or
        None for a soft budget without one. A hard budget refuses what it cannot price."""
        book = self.prices.book
        found = [book.price_at(model, d, now_s) for d in deployments or ("",)]
        priced = [p for p in found if p is not None and p.currency == budget.currency]
        if budget.hard and (not priced or len(priced) != len(found)):
            raise BudgetExhausted(
                f"`{model}` has no {budget.currency} price on every deployment it may use, so "
                "its cost cannot be held against your hard budget. Ask an admin to price it.",
                param="model",
            )
        if not priced:
            return None
        return max(priced, key=lambda p: (p.output_micros_per_mtok, p.input_micros_per_mtok))

    def settle(
        self, ticket: Ticket | None, used: UsedTokens | None, cost_micros: int | None = None
    ) -> None:
        """Settle in the background: `used` None keeps the reservation as the charge;
        `cost_micros` (the request's actual cost) corrects the budget's reservation."""
        settlement = self.settlement(ticket, used, cost_micros)
        if settlement is not None:
            self.tasks.spawn(settlement, name="limits.settle")

    def settlement(
        self, ticket: Ticket | None, used: UsedTokens | None, cost_micros: int | None = None
    ) -> Coroutine[Any, Any, None] | None:
        """`settle`'s work as a coroutine for the caller's own background task (it must
        outlive the request), or None when there is nothing to settle."""
        if ticket is None or ticket.settled:
            return None
        ticket.settled = True
        adjustments = ticket.admission.token_adjustments(used.total) if used is not None else ()
        if ticket.budget is not None and used is not None and cost_micros is not None:
            spec, reserved = ticket.budget
            if cost_micros != reserved:
                adjustments = (*adjustments, (spec, cost_micros - reserved))
        if not adjustments and ticket.slot_id is None:
            return None
        return self._settle(ticket.tenant_id, adjustments, ticket.slot_id)

    async def _settle(self, tenant_id: str, adjustments: Any, slot_id: str | None) -> None:
        started = time.perf_counter()
        try:
            await self.limiter.settle(tenant_id, adjustments, release_slot=slot_id)
            metrics.observe(metrics.REDIS_SECONDS, ("settle",), time.perf_counter() - started)
        except Exception as exc:  # logged once here: the reservation stands, nothing else breaks
            log.warning("settle failed for tenant %s: %s", tenant_id, type(exc).__name__)


def _reason(bucket: str | None) -> str:
    """A bounded label for the bucket that refused (no model names: they are unbounded)."""
    if bucket is None:
        return "unknown"
    if is_budget(bucket):
        return "budget"
    return bucket.split(":", 1)[0] + (":model" if ":model:" in bucket else "")


def _remaining(buckets: tuple[BucketState, ...], name: str) -> int:
    return next((b.remaining for b in buckets if b.name == name), 0)


def budget_headers(buckets: tuple[BucketState, ...], now_s: float) -> dict[str, str]:
    """`x-budget-remaining` (in the budget's currency) and `x-budget-period-end` (ISO 8601)."""
    state = next((b for b in buckets if is_budget(b.name)), None)
    if state is None:
        return {}
    return {
        "x-budget-remaining": format_amount(state.remaining),
        "x-budget-period-end": period_end_text(now_s),
    }


def _over_budget(
    budget: BudgetPolicy, left_micros: int, needed_micros: int, headers: dict[str, str]
) -> BudgetExhausted:
    error = BudgetExhausted(
        f"This request could cost up to {format_amount(needed_micros)} {budget.currency} but "
        f"only {format_amount(left_micros)} {budget.currency} of your monthly budget is left "
        f"(until {headers.get('x-budget-period-end', 'the end of the month')}). Lower "
        "max_tokens, or ask an admin to raise the budget."
    )
    error.extra_headers = headers
    return error


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
