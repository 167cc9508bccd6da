"""Passive ejection: consecutive failures, growing cool-downs, one half-open probe, stragglers."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from gateway.config import Ejection
from gateway.routing.health import CLOSED, EJECTED, HALF_OPEN, DeploymentHealth, HealthBoard

POLICY = Ejection(consecutive_failures=3, base_s=5.0, max_s=40.0)


def fail(health: DeploymentHealth, now_s: float, times: int = 1) -> None:
    for _ in range(times):
        probe = health.started(now_s)
        health.finished(now_s, ok=False, policy=POLICY, probe=probe)


def succeed(health: DeploymentHealth, now_s: float) -> None:
    probe = health.started(now_s)
    health.finished(now_s, ok=True, policy=POLICY, probe=probe)


def cool_down(health: DeploymentHealth, now_s: float) -> float:
    assert health.ejected_until_s is not None
    return health.ejected_until_s - now_s


def test_ejected_after_n_consecutive_failures() -> None:
    health = DeploymentHealth("a")
    fail(health, 0.0, 2)
    assert health.state(0.0) == CLOSED
    assert health.available(0.0)
    fail(health, 0.0)
    assert health.state(0.0) == EJECTED
    assert not health.available(4.9)
    assert cool_down(health, 0.0) == 5.0
    assert health.state(5.0) == HALF_OPEN
    assert health.outstanding == 0


def test_a_success_resets_the_count() -> None:
    health = DeploymentHealth("a")
    fail(health, 0.0, 2)
    succeed(health, 0.0)
    fail(health, 0.0, 2)
    assert health.state(0.0) == CLOSED


def test_half_open_allows_exactly_one_probe() -> None:
    health = DeploymentHealth("a")
    fail(health, 0.0, 3)
    assert health.available(5.0)
    assert health.started(5.0) is True
    assert not health.available(5.0)
    assert not health.available(100.0)  # still one probe, however long it takes
    assert health.started(5.0) is False  # (the balancer would not send this one)


def test_probe_success_closes() -> None:
    health = DeploymentHealth("a")
    fail(health, 0.0, 3)
    succeed(health, 5.0)
    assert health.state(5.0) == CLOSED
    assert health.available(5.0)
    assert not health.probe_in_flight


def test_probe_failure_re_ejects_for_longer_up_to_max() -> None:
    health = DeploymentHealth("a")
    fail(health, 0.0, 3)
    now_s, cool_downs = 0.0, [cool_down(health, 0.0)]
    for _ in range(5):
        now_s = health.ejected_until_s or now_s
        fail(health, now_s)  # the probe: a single failure is enough
        cool_downs.append(cool_down(health, now_s))
    assert cool_downs == [5.0, 10.0, 20.0, 40.0, 40.0, 40.0]


def test_repeat_ejection_soon_after_recovery_doubles() -> None:
    health = DeploymentHealth("a")
    fail(health, 0.0, 3)
    succeed(health, 5.0)
    fail(health, 10.0, 3)
    assert cool_down(health, 10.0) == 10.0


def test_forgiven_after_max_s_healthy() -> None:
    health = DeploymentHealth("a")
    fail(health, 0.0, 3)
    fail(health, 5.0)  # probe fails: 10 s
    succeed(health, 15.0)
    fail(health, 15.0 + POLICY.max_s, 3)
    assert cool_down(health, 55.0) == 5.0
    assert health.ejections == 1


def test_stragglers_while_ejected_neither_extend_nor_end_it() -> None:
    health = DeploymentHealth("a")
    stragglers = [health.started(0.0) for _ in range(4)]
    fail(health, 1.0, 3)
    until_s = health.ejected_until_s
    health.finished(2.0, ok=False, policy=POLICY, probe=stragglers.pop())
    health.finished(2.0, ok=False, policy=POLICY, probe=stragglers.pop())
    health.finished(3.0, ok=True, policy=POLICY, probe=stragglers.pop())
    assert health.ejected_until_s == until_s
    assert health.state(3.0) == EJECTED
    assert health.consecutive_failures == 0
    assert health.outstanding == 1


def test_stragglers_do_not_take_the_probes_place() -> None:
    health = DeploymentHealth("a")
    long_a, long_b, long_c = (health.started(0.0) for _ in range(3))
    fail(health, 1.0, 3)
    probe = health.started(6.0)
    assert probe is True
    health.abandoned(probe=long_a)  # a client left a long stream
    assert not health.available(6.0), "a second probe would be let through"
    health.finished(7.0, ok=False, policy=POLICY, probe=long_b)
    assert health.state(7.0) == HALF_OPEN, "a straggler's failure re-ejected it"
    health.finished(7.0, ok=True, policy=POLICY, probe=long_c)
    assert health.probe_in_flight
    health.finished(8.0, ok=True, policy=POLICY, probe=probe)
    assert health.state(8.0) == CLOSED
    assert health.outstanding == 0


def test_abandoned_is_neutral() -> None:
    health = DeploymentHealth("a")
    fail(health, 0.0, 2)
    probe = health.started(0.0)
    health.abandoned(probe=probe)
    assert health.consecutive_failures == 2
    assert health.outstanding == 0
    fail(health, 0.0, 1)
    probe = health.started(5.0)
    health.abandoned(probe=probe)
    assert health.state(5.0) == HALF_OPEN
    assert health.available(5.0), "an abandoned probe frees the probe slot"
    assert health.ejected_until_s == 5.0


def test_long_outage_does_not_overflow_the_cool_down() -> None:
    health = DeploymentHealth("a")
    health.ejections = 5_000  # days of failed probes
    fail(health, 0.0, 3)
    assert cool_down(health, 0.0) == POLICY.max_s


def test_board_tracks_new_names_and_keeps_old_state() -> None:
    board = HealthBoard(["a"])
    fail(board["a"], 0.0, 3)
    board.track(["a", "b"])
    assert board["a"].state(0.0) == EJECTED
    assert board["b"].state(0.0) == CLOSED
    snapshot = board.snapshot(0.0)
    assert snapshot["a"]["state"] == EJECTED
    assert snapshot["a"]["ejections"] == 1
    with pytest.raises(KeyError):
        board["c"]


class HealthMachine(RuleBasedStateMachine):
    """Random interleavings of attempts on one deployment, as the attempt loop makes them."""

    def __init__(self) -> None:
        super().__init__()
        self.health = DeploymentHealth("a")
        self.now_s = 0.0
        self.in_flight: list[bool] = []  # the probe token of each attempt in flight

    @precondition(lambda self: self.health.available(self.now_s))
    @rule()
    def start(self) -> None:
        self.in_flight.append(self.health.started(self.now_s))

    @precondition(lambda self: self.in_flight)
    @rule(index=st.integers(0, 50), ok=st.booleans())
    def finish(self, index: int, ok: bool) -> None:
        probe = self.in_flight.pop(index % len(self.in_flight))
        was_out = self.health.ejected_until_s is not None
        until_s = self.health.ejected_until_s
        self.health.finished(self.now_s, ok=ok, policy=POLICY, probe=probe)
        if was_out and not probe:
            assert self.health.ejected_until_s == until_s  # stragglers have no say

    @precondition(lambda self: self.in_flight)
    @rule(index=st.integers(0, 50))
    def abandon(self, index: int) -> None:
        state = (self.health.ejected_until_s, self.health.consecutive_failures)
        self.health.abandoned(probe=self.in_flight.pop(index % len(self.in_flight)))
        assert (self.health.ejected_until_s, self.health.consecutive_failures) == state

    @rule(seconds=st.sampled_from([0.5, 5.0, 20.0, 60.0]))
    def wait(self, seconds: float) -> None:
        self.now_s += seconds

    @invariant()
    def counts_agree(self) -> None:
        health = self.health
        assert health.outstanding == len(self.in_flight) >= 0
        assert sum(self.in_flight) <= 1
        assert health.probe_in_flight == any(self.in_flight)
        assert 0 <= health.consecutive_failures < POLICY.consecutive_failures
        if health.ejected_until_s is not None:
            assert health.ejected_until_s - self.now_s <= POLICY.max_s
        if health.state(self.now_s) == EJECTED:
            assert not health.available(self.now_s)


HealthMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=40, deadline=None)
test_health_state_machine = HealthMachine.TestCase
