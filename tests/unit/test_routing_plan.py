"""Planning: aliases, allowed models, fallbacks, residency and endpoint filtering."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import GatewayConfig
from gateway.errors import InvalidRequest, ModelNotFound
from gateway.routing.plan import ResidencyUnavailable, RoutingTable
from gateway.routing.residency import ResidencyPolicy
from gateway.upstream.adapter import Endpoint
from tests.unit.test_routing_support import (
    MODELS,
    config,
    deployment,
    policies,
    principal,
    random_configs,
)


def table() -> RoutingTable:
    """small: EU La Plateforme, EU vLLM and a US deployment; medium: EU and US; large: US
    only; code: vLLM only (no FIM anywhere), falling back to small."""
    return RoutingTable(
        config(
            deployment("eu-mistral", "eu", models=["small", "medium"]),
            deployment("eu-vllm", "eu", provider="vllm", models=["small", "code"]),
            deployment("us-mistral", "us", models=["small", "medium", "large"]),
            models={
                "small": {"aliases": ["small-latest"], "fallbacks": ["medium"]},
                "code": {"fallbacks": ["small"]},
            },
        )
    )


def names(groups: tuple[tuple, ...]) -> list[list[str]]:
    return [[t.deployment.name for t in group] for group in groups]


def test_alias_resolves_to_its_model() -> None:
    routing = table()
    plan = routing.plan(principal(), "small-latest", Endpoint.CHAT)
    assert plan.model == "small"
    assert routing.canonical("small-latest") == "small"
    assert routing.canonical("medium") == "medium"
    assert {t.upstream_model for t in plan.groups[0]} == {"small-upstream"}


def test_fallback_groups_follow_in_order() -> None:
    plan = table().plan(principal(), "small", Endpoint.CHAT)
    assert names(plan.groups) == [
        ["eu-mistral", "eu-vllm", "us-mistral"],
        ["eu-mistral", "us-mistral"],
    ]
    assert [g[0].public_model for g in plan.groups] == ["small", "medium"]
    assert plan.eligible == ("eu-mistral", "eu-vllm", "us-mistral")
    assert plan.first.deployment.name == "eu-mistral"


def test_no_fallback_group_unless_configured() -> None:
    plan = table().plan(principal(), "medium", Endpoint.CHAT)
    assert names(plan.groups) == [["eu-mistral", "us-mistral"]]


def test_fallback_the_tenant_may_not_use_is_left_out() -> None:
    plan = table().plan(principal(allowed=["small"]), "small", Endpoint.CHAT)
    assert [g[0].public_model for g in plan.groups] == ["small"]


def test_a_model_not_allowed_answers_like_an_unknown_one() -> None:
    tenant = principal(allowed=["small", "medium"])
    without_large = RoutingTable(config(deployment("eu-mistral", models=["small", "medium"])))
    with pytest.raises(ModelNotFound) as hidden:
        table().plan(tenant, "large", Endpoint.CHAT)
    with pytest.raises(ModelNotFound) as unknown:
        without_large.plan(tenant, "large", Endpoint.CHAT)
    assert hidden.value.status == unknown.value.status == 404
    assert hidden.value.body() == unknown.value.body()
    assert hidden.value.headers() == unknown.value.headers()


def test_an_alias_of_a_model_not_allowed_is_not_found() -> None:
    with pytest.raises(ModelNotFound):
        table().plan(principal(allowed=["medium"]), "small-latest", Endpoint.CHAT)


def test_models_for_lists_only_allowed_and_reachable_models() -> None:
    routing = table()
    assert set(routing.models_for(principal())) == {"small", "medium", "large", "code"}
    assert set(routing.models_for(principal("eu"))) == {"small", "medium", "code"}
    assert routing.models_for(principal("eu", allowed=["large", "medium"])) == ("medium",)


def test_eu_policy_keeps_only_eu_targets() -> None:
    plan = table().plan(principal("eu"), "small", Endpoint.CHAT)
    assert names(plan.groups) == [["eu-mistral", "eu-vllm"], ["eu-mistral"]]
    assert plan.outside_policy == 2  # us-mistral, once per group
    assert plan.policy.label == "eu"


def test_narrower_request_policy_is_applied() -> None:
    routing = table()
    plan = routing.plan(principal(), "medium", Endpoint.CHAT, ResidencyPolicy.parse("us"))
    assert names(plan.groups) == [["us-mistral"]]


def test_model_only_outside_the_policy_is_residency_unavailable() -> None:
    with pytest.raises(ResidencyUnavailable) as caught:
        table().plan(principal("eu"), "large", Endpoint.CHAT)
    error = caught.value
    assert (error.status, error.code, error.param) == (403, "residency_unavailable", "model")
    assert "eu" in error.message


def test_header_disjoint_from_the_tenant_is_residency_unavailable() -> None:
    tenant = principal("eu")
    with pytest.raises(ResidencyUnavailable):
        table().plan(tenant, "small", Endpoint.CHAT, tenant.residency.narrowed("us"))


def test_vllm_is_not_offered_fim() -> None:
    plan = table().plan(principal(), "small", Endpoint.FIM)
    assert names(plan.groups) == [["eu-mistral", "us-mistral"], ["eu-mistral", "us-mistral"]]


def test_fim_on_a_vllm_only_model_without_fallback_is_a_400() -> None:
    routing = RoutingTable(config(deployment("vllm", provider="vllm", models=["code"])))
    with pytest.raises(InvalidRequest) as caught:
        routing.plan(principal(), "code", Endpoint.FIM)
    assert (caught.value.status, caught.value.param) == (400, "model")


def test_fim_on_a_vllm_only_model_goes_to_its_fallback() -> None:
    plan = table().plan(principal(), "code", Endpoint.FIM)
    assert plan.model == "code"
    assert [g[0].public_model for g in plan.groups] == ["small"]


@settings(max_examples=60, deadline=None)
@given(
    cfg=random_configs(),
    policy_text=policies,
    allowed=st.none() | st.sets(st.sampled_from(MODELS)),
    endpoint=st.sampled_from(list(Endpoint)),
)
def test_plans_never_leave_the_policy(
    cfg: GatewayConfig, policy_text: str, allowed: set[str] | None, endpoint: Endpoint
) -> None:
    tenant = principal(policy_text, allowed)
    routing = RoutingTable(cfg)
    served = set(cfg.public_models())
    for model in MODELS:
        fallbacks = cfg.models[model].fallbacks if model in cfg.models else ()
        permitted = {model, *fallbacks} & (served if allowed is None else allowed)
        reachable = [
            d
            for d in cfg.deployments
            if permitted & set(d.models)
            and tenant.residency.admits(d.jurisdiction)
            and not (endpoint is Endpoint.FIM and d.provider == "vllm")
        ]
        try:
            plan = routing.plan(tenant, model, endpoint)
        except ModelNotFound:
            assert model not in served or model not in permitted
            continue
        except (ResidencyUnavailable, InvalidRequest):
            assert not reachable
            continue
        assert plan.groups
        assert set(plan.eligible) == {d.name for d in reachable}
        for group in plan.groups:
            assert group
            assert group[0].public_model in permitted
            for target in group:
                assert tenant.residency.admits(target.deployment.jurisdiction)
                assert not (endpoint is Endpoint.FIM and target.deployment.provider == "vllm")
                assert target.deployment.models[target.public_model] == target.upstream_model
