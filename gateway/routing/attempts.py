"""The attempt loop: try the plan's deployments until one answers, within the retry policy.

Retries happen only before the client has received a byte (the loop ends at the upstream's
response headers), on connect errors, timeouts to first byte, 429, 502, 503, 504 (500 when
configured). Before a retry the loop waits: an upstream `Retry-After` when it ends before the
caller's deadline, else nothing if another deployment is left to try at once, else full-jitter
backoff. Each retry is charged to the failed deployment's `RetryBudget` (only once it is sure
to happen); an exhausted budget, the last attempt, the deadline (no attempt starts after it) or
every deployment being out (ejected, probed, failing checks) hands the error to the client at
once. The next attempt prefers a deployment not yet tried, in the requested model's group
first, then in its fallback groups.

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
from gateway.routing.health import HealthBoard
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
    _probe: bool = False  # this attempt is the deployment's half-open probe

    def finished(self, *, ok: bool | None) -> None:
        """The response was relayed to its end (True), broke off mid-way (False), or the
        client left before its end (None: no verdict on the deployment)."""
        self._attempter.finished(self.target, ok=ok, probe=self._probe)


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

    def finished(self, target: Target, *, ok: bool | None, probe: bool = False) -> None:
        """An answered attempt's body ended (see `Answer.finished`)."""
        health = self.board[target.deployment.name]
        if ok is None:
            health.abandoned(probe=probe)
        else:
            health.finished(
                self.clock.monotonic_s(), ok=ok, policy=self.policy.ejection, probe=probe
            )

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
            probe = health.started(now_s)
            try:
                response = await send(target)
            except UpstreamError as exc:
                record.outcome = _outcome(exc)
                health.finished(
                    self.clock.monotonic_s(),
                    ok=not counts_against_health(exc),
                    policy=self.policy.ejection,
                    probe=probe,
                )
                last = exc
                tried.add(name)
                waited_s = self._wait_before_retry(exc, name, plan, tried, attempt_no, deadline_s)
                if waited_s < 0:
                    raise
                if waited_s:
                    await self.sleep(waited_s)
                continue
            except BaseException:  # cancelled (the client left) or not an upstream's failure
                health.abandoned(probe=probe)
                raise
            record.outcome = "ok"
            return Answer(target, response, self, probe)
        assert last is not None  # max_attempts >= 1 and every path above sets it or returns
        raise last

    def _wait_before_retry(
        self,
        error: UpstreamError,
        failed_on: str,
        plan: Plan,
        tried: set[str],
        attempt_no: int,
        deadline_s: float,
    ) -> float:
        """Seconds to wait before the next attempt, or -1 when there must be none."""
        retries = self.policy.retries
        if attempt_no + 1 >= retries.max_attempts:
            return -1
        if not is_retryable(error, retry_on_500=retries.retry_on_500):
            return -1
        now_s = self.clock.monotonic_s()
        left_s = deadline_s - now_s
        if left_s <= 0:
            return -1  # no attempt starts after the deadline
        wait_s = self._wait_s(error, plan, tried, attempt_no, now_s, left_s)
        # Charged last, so a retry the deadline rules out does not spend the budget.
        if wait_s < 0 or not self.budget.try_retry(failed_on, now_s):
            return -1
        return wait_s

    def _wait_s(
        self,
        error: UpstreamError,
        plan: Plan,
        tried: set[str],
        attempt_no: int,
        now_s: float,
        left_s: float,
    ) -> float:
        retries = self.policy.retries
        if not any(self.board[name].available(now_s) for name in plan.eligible):
            return -1  # all out (e.g. this failure ejected the last one): waiting cannot help
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
        for group in plan.groups:
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
                fallback = target.public_model != plan.model  # groups[0] may be a fallback
                return target, _first_reason(fallback, skipped, board, now_s), skipped
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
    fallback: bool, skipped: tuple[str, ...], board: HealthBoard, now_s: float
) -> str:
    if fallback:
        return "fallback"
    if not skipped:
        return "balanced"
    # `saturation` only when every skipped deployment was merely full; one that was out
    # (ejected, probed by another request, failing active checks) makes it an `ejection`.
    out = any(not board[name].available(now_s) for name in skipped)
    return "ejection" if out else "saturation"


def _outcome(error: UpstreamError) -> str:
    if isinstance(error, UpstreamRejected):
        return str(error.status)
    return error.code or "error"
