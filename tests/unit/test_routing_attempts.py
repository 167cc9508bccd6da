"""The attempt loop: retries, Retry-After, the deadline, the budget, fallbacks and residency."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import GatewayConfig
from gateway.errors import (
    DependencyUnavailable,
    GatewayError,
    ModelNotFound,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
)
from gateway.routing.attempts import Attempter, NoDeploymentAvailable, ResidencyExhausted
from gateway.routing.health import EJECTED, HALF_OPEN, HealthBoard
from gateway.routing.plan import Plan, ResidencyUnavailable, RoutingTable, Target
from gateway.routing.trace import RouteTrace
from gateway.upstream.adapter import Endpoint
from gateway.upstream.retry import full_jitter_s
from tests.unit.test_routing_support import (
    MODELS,
    FakeClock,
    ScriptedUpstream,
    SleepRecorder,
    StubResponse,
    config,
    deployment,
    failure,
    policies,
    principal,
    random_configs,
    run_now,
)


class Rig:
    """One config, its routing table and health board, an attempter with fake time."""

    def __init__(self, cfg: GatewayConfig, *, seed: int = 0) -> None:
        self.config = cfg
        self.clock = FakeClock()
        self.sleep = SleepRecorder(self.clock)
        self.routing = RoutingTable(cfg)
        self.board = HealthBoard(d.name for d in cfg.deployments)
        self.attempter = Attempter(
            self.board, cfg.routing, self.clock, rng=random.Random(seed), sleep=self.sleep
        )

    def plan(self, model: str = "small", residency: str = "any") -> Plan:
        return self.routing.plan(principal(residency), model, Endpoint.CHAT)

    def upstream(self, script: dict[str, list[str]] | None = None, **kw: Any) -> ScriptedUpstream:
        return ScriptedUpstream(self.clock, script, **kw)

    async def run(
        self, upstream: ScriptedUpstream, model: str = "small", residency: str = "any"
    ) -> tuple[Any, RouteTrace]:
        """Run one request; returns (answer or the error raised, trace)."""
        plan = self.plan(model, residency)
        trace = RouteTrace(plan.model, plan.policy.label, plan.eligible)
        try:
            answer = await self.attempter.run(plan, upstream, trace)
        except GatewayError as error:
            return error, trace
        answer.finished(ok=True)
        return answer, trace

    def eject(self, *names: str) -> None:
        ejection = self.config.routing.ejection
        for name in names:
            for _ in range(ejection.consecutive_failures):
                self.board[name].started(self.clock.monotonic_s())
                self.board[name].finished(self.clock.monotonic_s(), ok=False, policy=ejection)
            assert self.board[name].state(self.clock.monotonic_s()) == EJECTED


def attempts(trace: RouteTrace) -> list[tuple[str, str, str]]:
    return [(a.deployment, a.reason, a.outcome) for a in trace.attempts]


def outstanding(rig: Rig) -> dict[str, int]:
    return {d.name: rig.board[d.name].outstanding for d in rig.config.deployments}


async def test_two_503s_then_success_returns_the_third() -> None:
    rig = Rig(config(deployment("a")))
    upstream = rig.upstream({"a": ["503", "503", "ok"]})
    answer, trace = await rig.run(upstream)
    assert answer.target.deployment.name == "a"
    assert answer.response.status == 200
    assert attempts(trace) == [
        ("a", "balanced", "503"),
        ("a", "retry", "503"),
        ("a", "retry", "ok"),
    ]
    retries = rig.config.routing.retries
    assert len(rig.sleep.waits) == 2  # nowhere else to go: full-jitter backoff
    for retry, wait_s in enumerate(rig.sleep.waits):
        assert 0 <= wait_s <= min(retries.backoff_cap_s, retries.backoff_base_s * 2**retry)
    assert [a.waited_s for a in trace.attempts] == [0.0, *rig.sleep.waits]
    assert outstanding(rig) == {"a": 0}
    assert rig.board["a"].consecutive_failures == 0


async def test_backoff_waits_are_the_jitter_of_the_injected_rng() -> None:
    rig = Rig(config(deployment("a")), seed=42)
    await rig.run(rig.upstream({"a": ["503", "503", "ok"]}))
    retries = rig.config.routing.retries
    rng = random.Random(42)  # one deployment: the balancer draws nothing from it
    expected = [
        full_jitter_s(n, retries.backoff_base_s, retries.backoff_cap_s, rng) for n in (0, 1)
    ]
    assert rig.sleep.waits == expected


class FirstCallFails:
    """A `send` whose first call gets a 503 and every later one an answer."""

    def __init__(self) -> None:
        self.names: list[str] = []

    async def __call__(self, target: Target) -> StubResponse:
        self.names.append(target.deployment.name)
        if len(self.names) == 1:
            raise failure("503", target.deployment.name)
        return StubResponse()


async def test_a_retry_goes_to_another_deployment_at_once() -> None:
    deployments = (deployment("a"), deployment("b"), deployment("c"))
    retries, ejection = {"budget_min_retries": 100}, {"consecutive_failures": 100}
    rig = Rig(config(*deployments, retries=retries, ejection=ejection))
    for seed in range(20):
        rig.attempter.rng.seed(seed)
        send = FirstCallFails()
        trace = RouteTrace("small", "any", ())
        answer = await rig.attempter.run(rig.plan(), send, trace)
        answer.finished(ok=True)
        assert len(set(send.names)) == len(send.names) == 2, "the retry went back"
        assert attempts(trace)[1][1:] == ("retry", "ok")
        assert answer.target.deployment.name == send.names[1]
    assert rig.sleep.waits == []  # another deployment was free: no backoff


async def test_retry_after_within_the_deadline_is_waited_exactly() -> None:
    rig = Rig(config(deployment("a")))
    upstream = rig.upstream({"a": ["429:2", "ok"]})
    answer, trace = await rig.run(upstream)
    assert answer.target.deployment.name == "a"
    assert rig.sleep.waits == [2.0]
    assert trace.attempts[1].waited_s == 2.0
    assert rig.board["a"].consecutive_failures == 0  # a 429 is not a failure of health


async def test_retry_after_as_an_http_date() -> None:
    rig = Rig(config(deployment("a")))
    upstream = rig.upstream({"a": ["503:Tue, 14 Nov 2023 22:13:25 GMT", "ok"]})
    rig.clock.wall = 1_700_000_000.0  # 22:13:20 GMT
    await rig.run(upstream)
    assert rig.sleep.waits == [5.0]


async def test_retry_after_beyond_the_deadline_moves_on_at_once() -> None:
    rig = Rig(config(deployment("a"), deployment("b"), retries={"deadline_s": 5}))
    upstream = rig.upstream({"a": ["429:30"], "b": ["429:30"]})
    answer, trace = await rig.run(upstream)
    assert rig.sleep.waits == []
    assert [a.waited_s for a in trace.attempts] == [0.0, 0.0]
    assert sorted(upstream.names) == ["a", "b"]
    assert isinstance(answer, UpstreamRejected)  # both asked for 30 s: the client hears why
    assert answer.status == 429
    assert answer.retry_after == "30"


async def test_retry_after_beyond_the_deadline_with_nowhere_else_is_the_error() -> None:
    rig = Rig(config(deployment("a"), retries={"deadline_s": 5}))
    upstream = rig.upstream({"a": ["503:30"]})
    error, trace = await rig.run(upstream)
    assert isinstance(error, UpstreamRejected)
    assert error.status == 503
    assert upstream.names == ["a"]
    assert rig.sleep.waits == []
    assert len(trace.attempts) == 1


async def test_non_retryable_error_is_raised_at_once() -> None:
    rig = Rig(config(deployment("a"), deployment("b")))
    upstream = rig.upstream({"a": ["400"], "b": ["400"]})
    error, trace = await rig.run(upstream)
    assert isinstance(error, UpstreamRejected)
    assert error.status == 400
    assert len(upstream.calls) == 1
    assert attempts(trace) == [(upstream.names[0], "balanced", "400")]
    assert rig.sleep.waits == []
    assert rig.board[upstream.names[0]].consecutive_failures == 0


async def test_500_is_retried_only_when_configured() -> None:
    rig = Rig(config(deployment("a")))
    error, _trace = await rig.run(rig.upstream({"a": ["500", "ok"]}))
    assert isinstance(error, UpstreamRejected)
    rig = Rig(config(deployment("a"), retries={"retry_on_500": True}))
    _answer, trace = await rig.run(rig.upstream({"a": ["500", "ok"]}))
    assert attempts(trace)[-1] == ("a", "retry", "ok")


async def test_max_attempts_is_the_number_of_attempts() -> None:
    for max_attempts in (1, 2, 4):
        rig = Rig(
            config(
                deployment("a"),
                retries={"max_attempts": max_attempts},
                ejection={"consecutive_failures": 10},
            )
        )
        upstream = rig.upstream(default="503")
        error, trace = await rig.run(upstream)
        assert isinstance(error, UpstreamRejected)
        assert len(upstream.calls) == len(trace.attempts) == max_attempts


async def test_an_exhausted_budget_stops_retries() -> None:
    retries = {"budget_ratio": 0, "budget_min_retries": 1}
    rig = Rig(config(deployment("a"), retries=retries, ejection={"consecutive_failures": 10}))
    upstream = rig.upstream(default="503")
    await rig.run(upstream)
    assert len(upstream.calls) == 2  # the one retry the window allows
    upstream.calls.clear()
    error, trace = await rig.run(upstream)
    assert isinstance(error, UpstreamRejected)
    assert len(upstream.calls) == len(trace.attempts) == 1
    assert rig.attempter.budget.refused == 2


async def test_the_retry_storm_is_bounded_by_the_budget() -> None:
    names = ["a", "b", "c"]
    retries = {"budget_ratio": 0.2, "budget_min_retries": 3, "max_attempts": 3}
    rig = Rig(
        config(
            *(deployment(n) for n in names),
            retries=retries,
            ejection={"consecutive_failures": 1000},
        )
    )
    upstream = rig.upstream(default="503")
    requests = 200
    for _ in range(requests):
        error, _trace = await rig.run(upstream)
        assert isinstance(error, UpstreamRejected)
        rig.clock.advance(0.04)  # 200 requests in 8 s: one budget window
    assert len(upstream.calls) - requests <= 0.2 * requests + 3 * len(names)


async def test_fallback_only_after_the_primary_group() -> None:
    rig = Rig(
        config(
            deployment("a1", models=["small"]),
            deployment("a2", models=["small"]),
            deployment("m", models=["medium"]),
            models={"small": {"fallbacks": ["medium"]}},
        )
    )
    upstream = rig.upstream({"a1": ["503"], "a2": ["unreachable"]})
    answer, trace = await rig.run(upstream)
    assert answer.target.public_model == "medium"
    assert answer.target.upstream_model == "medium-upstream"
    outcome = {"a1": "503", "a2": "upstream_unavailable", "m": "ok"}
    assert attempts(trace) == [
        (upstream.names[0], "balanced", outcome[upstream.names[0]]),
        (upstream.names[1], "retry", outcome[upstream.names[1]]),
        ("m", "fallback", "ok"),
    ]
    assert set(upstream.names[:2]) == {"a1", "a2"}
    assert upstream.names[2] == "m"


async def test_fallback_first_when_the_primary_group_is_ejected() -> None:
    rig = Rig(
        config(
            deployment("a", models=["small"]),
            deployment("m", models=["medium"]),
            models={"small": {"fallbacks": ["medium"]}},
        )
    )
    rig.eject("a")
    answer, trace = await rig.run(rig.upstream())
    assert attempts(trace) == [("m", "fallback", "ok")]
    assert answer.target.public_model == "medium"


async def test_fallback_is_labelled_even_when_it_is_the_only_group() -> None:
    rig = Rig(
        config(
            deployment("code", provider="vllm", models=["code"]),
            deployment("m", models=["small"]),
            models={"code": {"fallbacks": ["small"]}},
        )
    )
    plan = rig.routing.plan(principal(), "code", Endpoint.FIM)
    trace = RouteTrace(plan.model, plan.policy.label, plan.eligible)
    await rig.attempter.run(plan, rig.upstream(), trace)
    assert attempts(trace) == [("m", "fallback", "ok")]


async def test_goes_back_to_a_tried_deployment_only_when_all_were_tried() -> None:
    rig = Rig(
        config(
            deployment("a", models=["small"]),
            deployment("m", models=["medium"]),
            models={"small": {"fallbacks": ["medium"]}},
        )
    )
    upstream = rig.upstream({"a": ["503", "ok"], "m": ["503"]})
    answer, trace = await rig.run(upstream)
    assert attempts(trace) == [
        ("a", "balanced", "503"),
        ("m", "fallback", "503"),
        ("a", "retry", "ok"),
    ]
    assert len(rig.sleep.waits) == 1  # only before going back: m was free at once
    assert answer.target.deployment.name == "a"


async def test_ejection_and_saturation_are_the_first_attempts_reason() -> None:
    rig = Rig(config(deployment("a"), deployment("b", priority=1)))
    rig.eject("a")
    _answer, trace = await rig.run(rig.upstream())
    assert attempts(trace) == [("b", "ejection", "ok")]
    assert trace.attempts[0].skipped == ("a",)

    rig = Rig(config(deployment("a", max_outstanding=1), deployment("b", priority=1)))
    rig.board["a"].started(rig.clock.monotonic_s())
    _answer, trace = await rig.run(rig.upstream())
    assert attempts(trace) == [("b", "saturation", "ok")]


async def test_a_deployment_failing_active_checks_is_an_ejection_not_saturation() -> None:
    rig = Rig(config(deployment("a"), deployment("b", priority=1)))
    rig.board["a"].active_ok = False
    _answer, trace = await rig.run(rig.upstream())
    assert attempts(trace) == [("b", "ejection", "ok")]


@pytest.mark.parametrize(
    ("residency", "error_type", "code"),
    [
        ("eu", ResidencyExhausted, "residency_unavailable"),
        ("any", NoDeploymentAvailable, "no_deployment_available"),
    ],
)
async def test_every_deployment_ejected(
    residency: str, error_type: type[GatewayError], code: str
) -> None:
    rig = Rig(config(deployment("eu-1"), deployment("eu-2"), deployment("us-1", "us")))
    rig.eject("eu-1", "eu-2", *(["us-1"] if residency == "any" else []))
    upstream = rig.upstream()
    error, trace = await rig.run(upstream, residency=residency)
    assert type(error) is error_type
    assert (error.status, error.code, error.param) == (503, code, "model")
    assert upstream.calls == []
    assert trace.attempts == []


async def test_eu_requests_never_reach_a_non_eu_deployment() -> None:
    rig = Rig(
        config(
            deployment("eu-1", models=["small"]),
            deployment("eu-2", models=["small"]),
            deployment("us-1", "us", models=["small", "medium"]),
            deployment("us-2", "us", models=["medium"]),
            models={"small": {"fallbacks": ["medium"]}},
        )
    )
    upstream = rig.upstream(default="503")
    errors = []
    for _ in range(10):
        error, trace = await rig.run(upstream, residency="eu")
        errors.append(type(error))
        assert set(trace.jurisdictions) <= {"eu"}
        rig.clock.advance(1.0)
    assert set(upstream.names) == {"eu-1", "eu-2"}
    assert errors[0] is UpstreamRejected
    assert errors[-1] is ResidencyExhausted  # both EU deployments ejected; US never tried


@settings(max_examples=60, deadline=None)
@given(
    cfg=random_configs(),
    policy_text=policies,
    outcomes=st.lists(
        st.sampled_from(["503", "429:1", "timeout", "unreachable", "ok"]), max_size=12
    ),
    seed=st.integers(0, 1000),
)
def test_no_attempt_ever_leaves_the_policy(
    cfg: GatewayConfig, policy_text: str, outcomes: list[str], seed: int
) -> None:
    rig = Rig(cfg, seed=seed)
    tenant = principal(policy_text)
    for model in MODELS:
        try:
            plan = rig.routing.plan(tenant, model, Endpoint.CHAT)
        except (ModelNotFound, ResidencyUnavailable):
            continue
        upstream = rig.upstream(default="503")
        script = iter(outcomes * 3)
        upstream.script = {d.name: [next(script, "503") for _ in range(4)] for d in cfg.deployments}
        for _ in range(6):
            trace = RouteTrace(plan.model, plan.policy.label, plan.eligible)
            with contextlib.suppress(UpstreamError, DependencyUnavailable):
                run_now(rig.attempter.run(plan, upstream, trace)).finished(ok=True)
            rig.clock.advance(0.5)
        assert all(tenant.residency.admits(t.deployment.jurisdiction) for t in upstream.calls)
        assert set(upstream.names) <= set(plan.eligible)
    assert all(rig.board[d.name].outstanding == 0 for d in cfg.deployments)


async def test_no_attempt_starts_after_the_deadline() -> None:
    rig = Rig(config(deployment("a"), deployment("b"), retries={"deadline_s": 30}))
    upstream = rig.upstream(default="timeout", takes_s=31.0)  # past the deadline
    error, trace = await rig.run(upstream)
    assert isinstance(error, UpstreamTimeout)
    assert len(upstream.calls) == len(trace.attempts) == 1  # b was free, but too late
    assert trace.attempts[0].outcome == "upstream_timeout"


async def test_a_retry_the_deadline_rules_out_is_not_charged_to_the_budget() -> None:
    retries = {"deadline_s": 30, "budget_ratio": 0, "budget_min_retries": 1}
    rig = Rig(config(deployment("a"), retries=retries))
    upstream = rig.upstream(default="timeout", takes_s=31.0)
    await rig.run(upstream)
    assert len(upstream.calls) == 1
    upstream.takes_s = 0.0
    await rig.run(upstream)
    assert len(upstream.calls) == 3  # this request still had its one retry


async def test_backoff_that_would_end_after_the_deadline_is_not_taken() -> None:
    rig = Rig(
        config(
            deployment("a"),
            retries={"deadline_s": 10, "backoff_base_s": 20, "backoff_cap_s": 20},
            ejection={"consecutive_failures": 1000},
        )
    )
    taken = []
    for seed in range(20):
        rig.attempter.rng.seed(seed)
        rig.sleep.waits.clear()
        started_s = rig.clock.monotonic_s()
        error, _trace = await rig.run(rig.upstream(default="503"))
        assert isinstance(error, UpstreamRejected)
        assert rig.clock.monotonic_s() - started_s <= 10
        taken.extend(rig.sleep.waits)
        rig.clock.advance(100)
    assert taken, "some backoffs fit in the deadline"


async def test_a_cancelled_attempt_is_abandoned() -> None:
    rig = Rig(config(deployment("a")))
    rig.eject("a")
    rig.clock.advance(rig.config.routing.ejection.base_s)  # half-open: this is the probe
    entered = asyncio.Event()

    async def hang(target: Target) -> StubResponse:
        entered.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    plan = rig.plan()
    task = asyncio.create_task(rig.attempter.run(plan, hang, RouteTrace("small", "any", ())))
    await entered.wait()
    assert rig.board["a"].outstanding == 1
    assert not rig.board["a"].available(rig.clock.monotonic_s())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    health = rig.board["a"]
    assert health.outstanding == 0
    assert health.state(rig.clock.monotonic_s()) == HALF_OPEN
    assert health.available(rig.clock.monotonic_s()), "the probe slot is free again"


async def test_an_unexpected_error_from_send_leaves_no_attempt_in_flight() -> None:
    rig = Rig(config(deployment("a")))

    async def broken(target: Target) -> StubResponse:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        await rig.attempter.run(rig.plan(), broken, RouteTrace("small", "any", ()))
    assert rig.board["a"].outstanding == 0


async def test_the_half_open_probe_is_the_only_request_until_it_ends() -> None:
    rig = Rig(config(deployment("a")))
    rig.eject("a")
    rig.clock.advance(rig.config.routing.ejection.base_s)
    plan = rig.plan()
    probe = await rig.attempter.run(plan, rig.upstream(), RouteTrace("small", "any", ()))
    error, _trace = await rig.run(rig.upstream())
    assert isinstance(error, NoDeploymentAvailable)
    probe.finished(ok=True)
    answer, _trace = await rig.run(rig.upstream())
    assert answer.target.deployment.name == "a"
    assert outstanding(rig) == {"a": 0}


async def test_a_failed_probe_re_ejects_for_longer() -> None:
    rig = Rig(config(deployment("a")))
    rig.eject("a")
    base_s = rig.config.routing.ejection.base_s
    rig.clock.advance(base_s)
    error, trace = await rig.run(rig.upstream(default="503"))
    assert isinstance(error, UpstreamRejected)
    assert len(trace.attempts) == 1  # re-ejected: nothing left to retry on
    assert rig.sleep.waits == []  # and no backoff before saying so
    health = rig.board["a"]
    assert health.ejected_until_s == rig.clock.monotonic_s() + 2 * base_s
    assert health.outstanding == 0


async def test_the_answer_reports_a_broken_body_to_health() -> None:
    rig = Rig(config(deployment("a"), ejection={"consecutive_failures": 2}))
    plan = rig.plan()
    for _ in range(2):
        answer = await rig.attempter.run(plan, rig.upstream(), RouteTrace("small", "any", ()))
        assert rig.board["a"].outstanding == 1
        answer.finished(ok=False)
    assert rig.board["a"].state(rig.clock.monotonic_s()) == EJECTED
    assert rig.board["a"].outstanding == 0
