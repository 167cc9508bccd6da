"""Balancing: priority tiers with spill-over, weighted power of two choices, avoiding retries."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from typing import Any

from gateway.config import Ejection
from gateway.routing.balancer import choose, usable
from gateway.routing.health import HealthBoard
from gateway.routing.plan import Target
from tests.unit.test_routing_support import config, deployment

EJECTION = Ejection(consecutive_failures=1, base_s=5.0, max_s=40.0)


def targets(*specs: dict[str, Any]) -> tuple[tuple[Target, ...], HealthBoard]:
    cfg = config(*specs)
    group = tuple(Target(d, "small-upstream", "small") for d in cfg.deployments)
    return group, HealthBoard(d.name for d in cfg.deployments)


def eject(board: HealthBoard, *names: str) -> None:
    for name in names:
        board[name].started(0.0)
        board[name].finished(0.0, ok=False, policy=EJECTION)


def picks(
    group: tuple[Target, ...], board: HealthBoard, count: int, *, seed: int = 7
) -> Counter[str]:
    """`count` requests one after another, each finished before the next starts."""
    rng = random.Random(seed)
    seen: Counter[str] = Counter()
    for _ in range(count):
        target = choose(group, board, 0.0, rng)
        assert target is not None
        name = target.deployment.name
        board[name].started(0.0)
        board[name].finished(0.0, ok=True, policy=EJECTION)
        seen[name] += 1
    return seen


def shares(seen: Counter[str], names: Iterable[str]) -> list[float]:
    total = sum(seen.values())
    return [seen[name] / total for name in names]


def test_lowest_tier_takes_everything() -> None:
    group, board = targets(deployment("a"), deployment("b"), deployment("spare", priority=1))
    assert set(picks(group, board, 200)) == {"a", "b"}


def test_spills_when_tier_zero_is_ejected() -> None:
    group, board = targets(deployment("a"), deployment("b"), deployment("spare", priority=1))
    eject(board, "a")
    assert set(picks(group, board, 50)) == {"b"}
    eject(board, "b")
    assert set(picks(group, board, 50)) == {"spare"}


def test_spills_when_tier_zero_is_saturated() -> None:
    group, board = targets(
        deployment("a", max_outstanding=1),
        deployment("b", max_outstanding=2),
        deployment("spare", priority=1),
    )
    rng = random.Random(1)
    for _ in range(3):
        target = choose(group, board, 0.0, rng)
        assert target is not None
        assert target.deployment.name in {"a", "b"}
        board[target.deployment.name].started(0.0)
    assert not usable(group[0], board, 0.0)
    spill = choose(group, board, 0.0, rng)
    assert spill is not None
    assert spill.deployment.name == "spare"
    board["b"].abandoned()
    back = choose(group, board, 0.0, rng)
    assert back is not None
    assert back.deployment.name == "b"


def test_active_check_failure_makes_it_unusable() -> None:
    group, board = targets(deployment("a"), deployment("b", priority=1))
    board["a"].active_ok = False
    assert not usable(group[0], board, 0.0)
    assert set(picks(group, board, 20)) == {"b"}


def test_nothing_usable_is_none() -> None:
    group, board = targets(deployment("a"), deployment("b", priority=3))
    eject(board, "a", "b")
    assert choose(group, board, 0.0, random.Random(0)) is None
    assert choose((), board, 0.0, random.Random(0)) is None


def test_equal_replicas_share_evenly() -> None:
    group, board = targets(deployment("a"), deployment("b"), deployment("c"))
    for share in shares(picks(group, board, 3000), "abc"):
        assert abs(share - 1 / 3) < 0.02


def test_weights_are_respected_when_idle() -> None:
    group, board = targets(deployment("big", weight=2), deployment("small"))
    big, small = shares(picks(group, board, 3000), ["big", "small"])
    assert abs(big - 2 / 3) < 0.03
    assert abs(small - 1 / 3) < 0.03


def test_weights_are_respected_among_several() -> None:
    group, board = targets(deployment("a", weight=2), deployment("b"), deployment("c"))
    a, b, c = shares(picks(group, board, 4000), "abc")
    assert abs(a - 0.5) < 0.03
    assert abs(b - 0.25) < 0.03
    assert abs(c - 0.25) < 0.03


def test_weights_are_respected_under_concurrency() -> None:
    group, board = targets(deployment("big", weight=2), deployment("small"))
    rng, seen, in_flight = random.Random(3), Counter[str](), []
    for _ in range(3000):
        target = choose(group, board, 0.0, rng)
        assert target is not None
        board[target.deployment.name].started(0.0)
        in_flight.append(target.deployment.name)
        seen[target.deployment.name] += 1
        if len(in_flight) > 12:  # equal latencies: the oldest request ends
            board[in_flight.pop(0)].finished(0.0, ok=True, policy=EJECTION)
    big, _small = shares(seen, ["big", "small"])
    assert abs(big - 2 / 3) < 0.05


def test_busier_deployment_gets_fewer_picks() -> None:
    group, board = targets(deployment("a"), deployment("slow"), deployment("c"))
    for _ in range(5):
        board["slow"].started(0.0)  # requests stuck in flight
    seen = picks(group, board, 900)
    assert seen["slow"] < 0.05 * 900
    assert abs(seen["a"] - seen["c"]) < 0.05 * 900


def test_avoid_is_respected_while_alternatives_exist() -> None:
    group, board = targets(deployment("a"), deployment("b"), deployment("c"))
    rng = random.Random(5)
    for _ in range(100):
        target = choose(group, board, 0.0, rng, avoid={"a", "b"})
        assert target is not None
        assert target.deployment.name == "c"


def test_avoid_prefers_another_tier_to_a_tried_deployment() -> None:
    group, board = targets(deployment("a"), deployment("spare", priority=1))
    target = choose(group, board, 0.0, random.Random(0), avoid={"a"})
    assert target is not None
    assert target.deployment.name == "spare"


def test_avoid_everything_goes_back_to_the_best_tried() -> None:
    group, board = targets(deployment("a"), deployment("spare", priority=1))
    target = choose(group, board, 0.0, random.Random(0), avoid={"a", "spare"})
    assert target is not None
    assert target.deployment.name == "a"
