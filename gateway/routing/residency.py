"""Residency: which jurisdictions a request may be served from.

A tenant's policy comes from the database (`eu`, `any`, or a comma-separated list of
jurisdictions); a request header (`x-gateway-residency`) may narrow it for one request, never
widen it. The plan filters deployments with `admits` before anything else looks at them, so no
later step (retry, fallback, ejection, balancing) can pick a deployment outside the policy.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import InvalidRequest

RESIDENCY_HEADER = "x-gateway-residency"
ANY = "any"


@dataclass(frozen=True, slots=True)
class ResidencyPolicy:
    """`allowed` jurisdictions, or None for anywhere."""

    allowed: frozenset[str] | None

    @classmethod
    def parse(cls, text: str) -> ResidencyPolicy:
        """`any` -> anywhere; `eu` or `eu,ch` -> those jurisdictions (lower-cased)."""
        text = text.strip().lower()
        if text == ANY:
            return cls(None)
        parts = frozenset(p.strip() for p in text.split(","))
        if not parts or "" in parts or ANY in parts:
            raise ValueError(f"not a residency policy: {text!r}")
        return cls(parts)

    def admits(self, jurisdiction: str) -> bool:
        """Whether a deployment in `jurisdiction` may serve this request."""
        return self.allowed is None or jurisdiction in self.allowed

    def narrowed(self, header: str | None) -> ResidencyPolicy:
        """This policy intersected with a request's header (which can only narrow it)."""
        if header is None:
            return self
        try:
            asked = ResidencyPolicy.parse(header)
        except ValueError:
            raise InvalidRequest(
                f"`{RESIDENCY_HEADER}` must be `any` or a comma-separated list of "
                f"jurisdictions such as `eu`; got {header[:64]!r}.",
                param=RESIDENCY_HEADER,
            ) from None
        if asked.allowed is None:
            return self
        if self.allowed is None:
            return asked
        return ResidencyPolicy(self.allowed & asked.allowed)

    @property
    def label(self) -> str:
        """The policy as stored in records: `any` or sorted jurisdictions, comma-separated."""
        return ANY if self.allowed is None else ",".join(sorted(self.allowed))


ANYWHERE = ResidencyPolicy(None)
