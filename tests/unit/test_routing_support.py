"""Builders shared by the routing tests: configs, principals, a fake clock, a scripted upstream.

No tests live here. These belong in `tests/conftest.py` (STYLE §5); they sit beside the
routing tests until that file can take them.
"""

from __future__ import annotations

from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hypothesis import strategies as st

from gateway.auth.principal import Principal
from gateway.config import GatewayConfig, parse_config
from gateway.errors import UpstreamError, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from gateway.routing.plan import Target
from gateway.routing.residency import ResidencyPolicy

T = TypeVar("T")

JURISDICTIONS = ("eu", "us", "ch", "uk")
MODELS = ("alpha", "beta", "gamma")


class FakeClock:
    """Wall and monotonic time that move only when told."""

    def __init__(self, monotonic_s: float = 1_000.0, now_s: float = 1_700_000_000.0) -> None:
        self.mono = monotonic_s
        self.wall = now_s

    def now_s(self) -> float:
        return self.wall

    def monotonic_s(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


def deployment(
    name: str,
    jurisdiction: str = "eu",
    *,
    provider: str = "mistral",
    models: Iterable[str] = ("small",),
    **extra: Any,
) -> dict[str, Any]:
    """One deployment entry of a routing file."""
    return {
        "name": name,
        "provider": provider,
        "base_url": f"http://{name}.test/v1",
        "region": f"{jurisdiction}-1",
        "jurisdiction": jurisdiction,
        "models": {model: f"{model}-upstream" for model in models},
        **extra,
    }


def config(
    *deployments: dict[str, Any],
    models: Mapping[str, Any] | None = None,
    retries: Mapping[str, Any] | None = None,
    ejection: Mapping[str, Any] | None = None,
) -> GatewayConfig:
    """A validated routing file from deployments, model groups and routing policy."""
    return parse_config(
        {
            "deployments": list(deployments),
            "models": dict(models or {}),
            "routing": {"retries": dict(retries or {}), "ejection": dict(ejection or {})},
        }
    )


def principal(residency: str = "any", allowed: Iterable[str] | None = None) -> Principal:
    """A tenant's principal with a residency policy and optionally a model allowlist."""
    return Principal(
        tenant_id="tenant-1",
        key_id="key-1",
        tenant_name="Tenant",
        residency=ResidencyPolicy.parse(residency),
        allowed_models=None if allowed is None else frozenset(allowed),
    )


@st.composite
def random_configs(draw: st.DrawFn) -> GatewayConfig:
    """1-6 deployments in random jurisdictions, serving random models, with a random
    fallback graph (cycles included) between the served models."""
    count = draw(st.integers(1, 6))
    deployments = [
        deployment(
            f"d{index}",
            draw(st.sampled_from(JURISDICTIONS)),
            provider=draw(st.sampled_from(["mistral", "vllm"])),
            models=draw(st.lists(st.sampled_from(MODELS), min_size=1, max_size=3, unique=True)),
        )
        for index in range(count)
    ]
    served = sorted({model for d in deployments for model in d["models"]})
    groups = {}
    for model in served:
        others = [m for m in served if m != model]
        fallbacks = draw(st.lists(st.sampled_from(others), unique=True)) if others else []
        groups[model] = {"fallbacks": fallbacks}
    return config(*deployments, models=groups)


policies = st.sets(st.sampled_from(JURISDICTIONS), min_size=1).map(
    lambda allowed: ",".join(sorted(allowed))
) | st.just("any")


@dataclass
class StubResponse:
    """What `send` hands back once the upstream's headers arrived."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)

    async def read(self, limit: int | None = None) -> bytes:
        return b"{}"

    async def chunks(self) -> Any:
        yield b""

    async def close(self) -> None:
        return None


def failure(outcome: str, deployment: str) -> UpstreamError:
    """`"503"`, `"429:2"` (status:Retry-After), `"timeout"` or `"unreachable"` as an error."""
    if outcome == "timeout":
        return UpstreamTimeout("slow", deployment=deployment)
    if outcome == "unreachable":
        return UpstreamUnavailable("down", deployment=deployment)
    status, _, retry_after = outcome.partition(":")
    return UpstreamRejected(
        int(status),
        f"status {status}",
        type_="api_error",
        code=None,
        deployment=deployment,
        retry_after=retry_after or None,
    )


class ScriptedUpstream:
    """A fake `send`: each deployment answers from its script (then `default`), recording calls.

    An outcome is `"ok"` or anything `failure` reads; `takes_s` moves the clock per call.
    """

    def __init__(
        self,
        clock: FakeClock,
        script: Mapping[str, Iterable[str]] | None = None,
        *,
        default: str = "ok",
        takes_s: float = 0.0,
    ) -> None:
        self.clock = clock
        self.script = {name: list(outcomes) for name, outcomes in (script or {}).items()}
        self.default = default
        self.takes_s = takes_s
        self.calls: list[Target] = []

    @property
    def names(self) -> list[str]:
        return [t.deployment.name for t in self.calls]

    async def __call__(self, target: Target) -> StubResponse:
        name = target.deployment.name
        self.calls.append(target)
        self.clock.advance(self.takes_s)
        queue = self.script.get(name)
        outcome = queue.pop(0) if queue else self.default
        if outcome == "ok":
            return StubResponse()
        raise failure(outcome, name)


class SleepRecorder:
    """An injected `sleep` that records each wait and moves the fake clock instead."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock.advance(seconds)


def run_now(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never really suspends (fake send and sleep), without a loop."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise AssertionError("the coroutine suspended; it needs a real event loop")
