"""The route trace: where one request went and why, for the residency audit trail.

Each request's record keeps the residency policy applied, the deployments that were eligible,
and every attempt: the deployment and jurisdiction chosen, why (`balanced`, `ejection` or
`saturation` when preferred deployments were skipped, `retry`, `fallback`), how it ended, and
how long the gateway waited before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Attempt:
    """One try at one deployment."""

    deployment: str
    region: str
    jurisdiction: str
    reason: str
    waited_s: float = 0.0
    # "ok", an HTTP status ("503") or the error's code ("upstream_timeout",
    # "upstream_unavailable"); "pending" if the client left while it was in flight
    outcome: str = "pending"
    skipped: tuple[str, ...] = ()  # deployments passed over (ejected, failing, saturated)


@dataclass(slots=True)
class RouteTrace:
    """Everything routing decided for one request."""

    model: str
    policy: str
    eligible: tuple[str, ...]
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def jurisdictions(self) -> tuple[str, ...]:
        """Jurisdictions the request was actually sent to."""
        return tuple(dict.fromkeys(a.jurisdiction for a in self.attempts))

    def as_record(self) -> dict[str, Any]:
        """A JSON-ready dict for the ledger and logs."""
        return {
            "policy": self.policy,
            "eligible": list(self.eligible),
            "attempts": [
                {
                    "deployment": a.deployment,
                    "region": a.region,
                    "jurisdiction": a.jurisdiction,
                    "reason": a.reason,
                    "outcome": a.outcome,
                    "waited_s": round(a.waited_s, 3),
                    **({"skipped": list(a.skipped)} if a.skipped else {}),
                }
                for a in self.attempts
            ],
        }
