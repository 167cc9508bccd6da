"""Plan a call: public model + endpoint + tenant policy -> the groups of deployments to try.

Pure functions of (routing table, input): no I/O. The routing table is built once per config
snapshot, so planning a request is a few dict lookups and a filter over a few deployments.

A plan holds the requested model's group first, then each configured fallback group, every
target already filtered by the residency policy, the tenant's allowed models and the endpoint.
The balancer and the retry loop only ever choose among these, so:
- a request whose policy is `eu` is never offered a deployment whose jurisdiction is not `eu`
  (not on retry, not on fallback, not when every EU deployment is down); when the model exists
  but no EU deployment serves it, the request fails with `residency_unavailable` at once;
- a model the tenant may not use answers exactly like a model that does not exist (404), so
  the catalogue of other tenants is not revealed.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.auth.principal import Principal
from gateway.config import Deployment, GatewayConfig
from gateway.errors import InvalidRequest, ModelNotFound, PermissionDenied
from gateway.routing.residency import ResidencyPolicy
from gateway.upstream.adapter import Endpoint, adapter_for


class ResidencyUnavailable(PermissionDenied):
    code = "residency_unavailable"


@dataclass(frozen=True, slots=True)
class Target:
    """One deployment able to serve the request, with the model name it knows."""

    deployment: Deployment
    upstream_model: str
    public_model: str  # the group it belongs to (differs from the request's on fallback)


@dataclass(frozen=True, slots=True)
class Plan:
    """Where one request may go: its model's group, then its fallback groups."""

    model: str  # the public model, aliases resolved
    policy: ResidencyPolicy
    groups: tuple[tuple[Target, ...], ...]
    outside_policy: int  # deployments of these models that the residency policy excluded

    @property
    def first(self) -> Target:
        """A representative target (tokenizer and admission use its upstream model)."""
        return next(t for group in self.groups for t in group)

    @property
    def eligible(self) -> tuple[str, ...]:
        """Every deployment the request may reach, for the residency audit trail."""
        return tuple(dict.fromkeys(t.deployment.name for g in self.groups for t in g))


class RoutingTable:
    """public model -> targets (and aliases, fallbacks), precomputed from one config snapshot."""

    def __init__(self, config: GatewayConfig, *, created_s: int = 0) -> None:
        self.config = config
        self.created_s = created_s  # when this snapshot was loaded; the model cards' `created`
        table: dict[str, list[Target]] = {}
        for deployment in config.deployments:
            for public, upstream in deployment.models.items():
                table.setdefault(public, []).append(Target(deployment, upstream, public))
        self._targets = {model: tuple(targets) for model, targets in table.items()}
        self._aliases = {
            alias: model for model, group in config.models.items() for alias in group.aliases
        }
        self._fallbacks = {model: group.fallbacks for model, group in config.models.items()}

    def canonical(self, model: str) -> str:
        """The public model an alias stands for (a model name stands for itself)."""
        return self._aliases.get(model, model)

    def models_for(self, principal: Principal) -> tuple[str, ...]:
        """The public models this tenant may use and can reach under its residency."""
        return tuple(
            model
            for model, targets in self._targets.items()
            if _allowed(principal, model)
            and any(principal.residency.admits(t.deployment.jurisdiction) for t in targets)
        )

    def plan(
        self,
        principal: Principal,
        model: str,
        endpoint: Endpoint,
        policy: ResidencyPolicy | None = None,
    ) -> Plan:
        """Where this request may go; `policy` (default: the tenant's) may be narrower."""
        model = self.canonical(model)
        if model not in self._targets or not _allowed(principal, model):
            raise ModelNotFound(model)
        policy = policy or principal.residency
        groups: list[tuple[Target, ...]] = []
        outside = 0
        for name in (model, *self._fallbacks.get(model, ())):
            if not _allowed(principal, name):
                continue
            targets = self._targets[name]
            resident = tuple(t for t in targets if policy.admits(t.deployment.jurisdiction))
            outside += len(targets) - len(resident)
            capable = tuple(
                t for t in resident if adapter_for(t.deployment.provider).supports(endpoint)
            )
            if capable:
                groups.append(capable)
        if not groups:
            if outside:
                raise ResidencyUnavailable(
                    f"No deployment of `{model}` satisfies your data-residency policy "
                    f"({policy.label}); the request was not sent anywhere.",
                    param="model",
                )
            raise InvalidRequest(
                f"`{model}` is not served for {endpoint.value} requests by any deployment.",
                param="model",
            )
        return Plan(model, policy, tuple(groups), outside)


def _allowed(principal: Principal, model: str) -> bool:
    return principal.allowed_models is None or model in principal.allowed_models
