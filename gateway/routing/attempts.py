"""The attempt loop: try the plan's deployments until one answers, within the retry policy.

Retries happen only before the client has received a byte (the loop ends at the upstream's
response headers), on connect errors, timeouts to first byte, 429, 502, 503, 504 (500 when
configured). Before a retry the loop waits: an upstream `Retry-After` when it ends before the
caller's deadline, else nothing if another deployment is left to try at once, else full-jitter
backoff. Each retry is charged to the failed deployment's `RetryBudget`; an exhausted budget,
the last attempt or the deadline hands the error to the client. The next attempt prefers a
deployment not yet tried, in the requested model's group first, then in its fallback groups.

Every attempt is recorded in the `RouteTrace`; the health board learns from each outcome.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.clock import Clock
from gateway.config import RoutingPolicy
from gateway.errors import DependencyUnavailable, UpstreamError, UpstreamRejected
from gateway.routing.balancer import choose, usable
from gateway.routing.budget import RetryBudget
from gateway.routing.health import EJECTED, HealthBoard
from gateway.routing.plan import Plan, Target
from gateway.routing.trace import Attempt, RouteTrace
from gateway.upstream.client import UpstreamResponse
from gateway.upstream.retry import (
    counts_against_health,
    full_jitter_s,
    is_retryable,
    retry_after_s,
)

Send = Callable[[Target], Awaitable[UpstreamResponse]]


class NoDeploymentAvailable(DependencyUnavailable):
    code = "no_deployment_available"


class ResidencyExhausted(DependencyUnavailable):
    """Every deployment the residency policy allows is down; others were not tried."""

    code = "residency_unavailable"


@dataclass(slots=True)
class Answer:
    """The upstream response that will be relayed, and how to report its end to the board."""

    target: Target
    response: UpstreamResponse
    _attempter: Attempter

    def finished(self, *, ok: bool | None) -> None:
        """The response was relayed to its end (True), broke off mid-way (False), or the
        client left before its end (None: no verdict on the deployment)."""
        self._attempter.finished(self.target, ok=ok)


class Attempter:
    """Runs the attempt loop for every request of this process (shared health and budget)."""

    def __init__(
        self,
        board: HealthBoard,
        policy: RoutingPolicy,
        clock: Clock,
        *,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.board = board
        self.clock = clock
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.policy = policy
        retries = policy.retries
        self.budget = RetryBudget(
            ratio=retries.budget_ratio,
            min_retries=retries.budget_min_retries,
            window_s=retries.budget_window_s,
        )

    def finished(self, target: Target, *, ok: bool | None) -> None:
        """An answered attempt's body ended (see `Answer.finished`)."""
        health = self.board[target.deployment.name]
        if ok is None:
            health.abandoned()
        else:
            health.finished(self.clock.monotonic_s(), ok=ok, policy=self.policy.ejection)

    async def run(self, plan: Plan, send: Send, trace: RouteTrace) -> Answer:
        """The first acceptable upstream response; raises the error to give the client."""
        retries = self.policy.retries
        deadline_s = self.clock.monotonic_s() + retries.deadline_s
        tried: set[str] = set()
        waited_s = 0.0
        last: UpstreamError | None = None
        for attempt_no in range(retries.max_attempts):
            now_s = self.clock.monotonic_s()
            picked = self._pick(plan, tried, now_s)
            if picked is None:
                if last is not None:
                    raise last
                raise self._nothing_left(plan)
            target, reason, skipped = picked
            name = target.deployment.name
            if attempt_no == 0:
                self.budget.record_request(name, now_s)
            else:
                reason = "fallback" if target.public_model != plan.model else "retry"
            record = Attempt(
                name,
                target.deployment.region,
                target.deployment.jurisdiction,
                reason,
                waited_s,
                skipped=skipped,
            )
            trace.attempts.append(record)
            health = self.board[name]
            health.started(now_s)
            try:
                response = await send(target)
            except asyncio.CancelledError:
                health.abandoned()
                raise
            except UpstreamError as exc:
                record.outcome = _outcome(exc)
                health.finished(
                    self.clock.monotonic_s(),
                    ok=not counts_against_health(exc),
                    policy=self.policy.ejection,
                )
                last = exc
                tried.add(name)
                waited_s = self._wait_before_retry(exc, plan, tried, attempt_no, deadline_s)
                if waited_s < 0:
                    raise
                if waited_s:
                    await self.sleep(waited_s)
                continue
            record.outcome = "ok"
            return Answer(target, response, self)
        assert last is not None  # max_attempts >= 1 and every path above sets it or returns
        raise last

    def _wait_before_retry(
        self, error: UpstreamError, plan: Plan, tried: set[str], attempt_no: int, deadline_s: float
    ) -> float:
        """Seconds to wait before the next attempt, or -1 when there must be none."""
        retries = self.policy.retries
        if attempt_no + 1 >= retries.max_attempts:
            return -1
        if not is_retryable(error, retry_on_500=retries.retry_on_500):
            return -1
        now_s = self.clock.monotonic_s()
        if not self.budget.try_retry(error.deployment or "", now_s):
            return -1
        left_s = deadline_s - now_s
        asked = None
        if isinstance(error, UpstreamRejected):
            asked = retry_after_s(error.retry_after, self.clock.now_s())
        elsewhere = self._untried_left(plan, tried, now_s)
        if asked is not None:
            if asked <= left_s:
                return asked
            return 0.0 if elsewhere else -1  # too long to wait: only another deployment helps
        if elsewhere:
            return 0.0
        backoff = full_jitter_s(attempt_no, retries.backoff_base_s, retries.backoff_cap_s, self.rng)
        return backoff if backoff <= left_s else -1

    def _untried_left(self, plan: Plan, tried: set[str], now_s: float) -> bool:
        return any(
            t.deployment.name not in tried and usable(t, self.board, now_s)
            for group in plan.groups
            for t in group
        )

    def _pick(
        self, plan: Plan, tried: set[str], now_s: float
    ) -> tuple[Target, str, tuple[str, ...]] | None:
        """The next target (an untried one, earliest group first), why, and what was skipped."""
        board = self.board
        for index, group in enumerate(plan.groups):
            if any(t.deployment.name not in tried and usable(t, board, now_s) for t in group):
                target = choose(group, board, now_s, self.rng, avoid=tried)
                assert target is not None
                tier = target.deployment.priority
                skipped = tuple(
                    t.deployment.name
                    for t in group
                    if t.deployment.priority <= tier
                    and t.deployment.name not in tried
                    and not usable(t, board, now_s)
                )
                return target, _first_reason(index, skipped, board, now_s), skipped
        for group in plan.groups:  # everything usable was tried: go back to the best of those
            target = choose(group, board, now_s, self.rng)
            if target is not None:
                return target, "retry", ()
        return None

    def _nothing_left(self, plan: Plan) -> DependencyUnavailable:
        if plan.outside_policy:
            return ResidencyExhausted(
                f"Every deployment of `{plan.model}` allowed by your data-residency policy "
                f"({plan.policy.label}) is failing or cooling down; the request was not sent "
                "outside the policy. Retry shortly.",
                param="model",
            )
        return NoDeploymentAvailable(
            f"Every deployment of `{plan.model}` is failing or cooling down. Retry shortly.",
            param="model",
        )


def _first_reason(
    group_index: int, skipped: tuple[str, ...], board: HealthBoard, now_s: float
) -> str:
    if group_index > 0:
        return "fallback"
    if not skipped:
        return "balanced"
    ejected = any(board[name].state(now_s) == EJECTED for name in skipped)
    return "ejection" if ejected else "saturation"


def _outcome(error: UpstreamError) -> str:
    if isinstance(error, UpstreamRejected):
        return str(error.status)
    return error.code or "error"
