"""Plan a call: public model + endpoint + tenant policy -> the ordered deployments to try.

Pure functions of (routing table, input): no I/O. The routing table is built once per config
snapshot, so planning a request is a dict lookup and a filter over a few deployments.

Invariants:
- a tenant whose residency is `eu` is only ever offered deployments whose jurisdiction is `eu`;
  when the model exists but no EU deployment serves it, the request fails with
  `residency_unavailable` rather than leave the EU;
- a model the tenant may not use answers exactly like a model that does not exist (404), so
  the catalogue of other tenants is not revealed.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.auth.principal import Principal
from gateway.config import Deployment, GatewayConfig
from gateway.errors import InvalidRequest, ModelNotFound, PermissionDenied
from gateway.upstream.adapter import Endpoint, adapter_for


class ResidencyUnavailable(PermissionDenied):
    code = "residency_unavailable"


@dataclass(frozen=True, slots=True)
class Target:
    """One deployment able to serve the request, with the model name it knows."""

    deployment: Deployment
    upstream_model: str


class RoutingTable:
    """public model -> targets, precomputed from one config snapshot."""

    def __init__(self, config: GatewayConfig, *, created_s: int = 0) -> None:
        self.config = config
        self.created_s = created_s  # when this snapshot was loaded; the model cards' `created`
        table: dict[str, list[Target]] = {}
        for deployment in config.deployments:
            for public, upstream in deployment.models.items():
                table.setdefault(public, []).append(Target(deployment, upstream))
        self._targets = {model: tuple(targets) for model, targets in table.items()}

    def models_for(self, principal: Principal) -> tuple[str, ...]:
        """The public models this tenant may use and can reach under its residency."""
        return tuple(
            model
            for model, targets in self._targets.items()
            if _allowed(principal, model) and any(_resident(principal, t) for t in targets)
        )

    def plan(self, principal: Principal, model: str, endpoint: Endpoint) -> tuple[Target, ...]:
        """The targets to try for this request, best first."""
        targets = self._targets.get(model)
        if targets is None or not _allowed(principal, model):
            raise ModelNotFound(model)
        resident = tuple(t for t in targets if _resident(principal, t))
        if not resident:
            raise ResidencyUnavailable(
                f"No deployment of `{model}` satisfies your data-residency policy "
                f"({principal.residency}); the request was not sent anywhere.",
                param="model",
            )
        capable = tuple(
            t for t in resident if adapter_for(t.deployment.provider).supports(endpoint)
        )
        if not capable:
            raise InvalidRequest(
                f"`{model}` is not served for {endpoint.value} requests by any deployment.",
                param="model",
            )
        return capable


def _allowed(principal: Principal, model: str) -> bool:
    return principal.allowed_models is None or model in principal.allowed_models


def _resident(principal: Principal, target: Target) -> bool:
    return principal.residency != "eu" or target.deployment.jurisdiction == "eu"
