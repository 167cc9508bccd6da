"""Balancing: pick the deployment for the next attempt among the plan's targets.

Priority tiers first: the lowest `priority` tier with a usable deployment takes the request;
a tier whose deployments are all ejected, failing active checks or saturated (`max_outstanding`
reached) spills to the next. Within a tier: power of two random choices, weighted least load
(`load / weight`), ties broken by fewer attempts served per weight, so equal replicas share
evenly, weights hold even when nothing is in flight (a `(load + 1) / weight` score would send
every idle-time request to the heavier of two), and a slow one, holding more requests in
flight, gets fewer new ones.

A retry avoids the deployments already tried while others are usable, and goes back to one
of them only when nothing else is left.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from gateway.routing.health import HealthBoard

if TYPE_CHECKING:
    from gateway.routing.plan import Target


def usable(target: Target, board: HealthBoard, now_s: float) -> bool:
    """Available (not ejected, passing active checks) and not saturated."""
    health = board[target.deployment.name]
    if not health.available(now_s):
        return False
    limit = target.deployment.max_outstanding
    return limit is None or health.load() < limit


def _score(target: Target, board: HealthBoard) -> tuple[float, float]:
    health = board[target.deployment.name]
    weight = target.deployment.weight
    return (health.load() / weight, health.served / weight)


def _level_rejoined(group: Sequence[Target], board: HealthBoard) -> None:
    """Give a deployment back from ejection (or new) its group's busiest `served` per
    weight, so it shares evenly from now on instead of winning every tie while it catches up."""
    rejoined = [t for t in group if board[t.deployment.name].rejoined]
    if not rejoined:
        return
    steady = [t for t in group if not board[t.deployment.name].rejoined]
    top = max((board[t.deployment.name].served / t.deployment.weight for t in steady), default=0)
    for target in rejoined:
        health = board[target.deployment.name]
        health.served = max(health.served, round(top * target.deployment.weight))
        health.rejoined = False


def choose(
    targets: Sequence[Target],
    board: HealthBoard,
    now_s: float,
    rng: random.Random,
    *,
    avoid: Collection[str] = (),
) -> Target | None:
    """The target for the next attempt, or None when no deployment is usable."""
    candidates = [t for t in targets if usable(t, board, now_s)]
    if not candidates:
        return None
    fresh = [t for t in candidates if t.deployment.name not in avoid]
    pool = fresh or candidates
    tier = min(t.deployment.priority for t in pool)
    best = [t for t in pool if t.deployment.priority == tier]
    if len(best) == 1:
        return best[0]
    _level_rejoined(best, board)
    first, second = rng.sample(best, 2)
    return first if _score(first, board) <= _score(second, board) else second
