"""SIMULATOR options: how the fake upstream behaves, and which dialect it speaks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Style = Literal["mistral", "vllm", "openai"]
OWNED_BY = "gateway-simulator"


@dataclass(frozen=True)
class SimulatorOptions:
    """How the simulated upstream behaves; every field has a test-friendly default."""

    style: Style = "mistral"
    models: tuple[str, ...] = (
        "mistral-small-latest",
        "mistral-large-latest",
        "codestral-latest",
        "mistral-embed",
    )
    ttft_ms: float = 0
    token_delay_ms: float = 0
    output_tokens: int = 16
    fail_rate: float = 0
    fail_status: int = 503
    api_key: str | None = None
    seed: int = 0
    embedding_dim: int = 16
    request_log_limit: int = 10_000
