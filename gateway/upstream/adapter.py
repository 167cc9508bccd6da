"""Provider adapters: what each upstream needs changed in a request, and nothing more.

Requests pass through as the client sent them, translated only where an upstream differs
(shared/API-FACTS.md §6):
- La Plateforme (`mistral`) rejects fields it does not know with 422, so OpenAI-only fields are
  renamed (`seed` → `random_seed`, `max_completion_tokens` → `max_tokens`, `dimensions` →
  `output_dimension`) or dropped (`stream_options`, `user`, `logit_bias`, OpenAI `service_tier`,
  message `name` outside tool messages, assistant `reasoning_content`/`refusal`). It reports
  streamed usage in the last chunk unasked.
- vLLM and other OpenAI-compatible servers (`vllm`, `openai`) take `seed`, want
  `tool_choice: "required"` for Mistral's `"any"`, and report streamed usage only when asked
  (`stream_options.include_usage`), so the gateway asks and hides that extra chunk from a
  client that did not ask. They have no `/fim/completions` route.
The payload dict is the request's own parse, so adapters edit it in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import orjson

from gateway.config import Provider


class Endpoint(StrEnum):
    """The OpenAI/Mistral routes the gateway proxies."""

    CHAT = "chat"
    EMBEDDINGS = "embeddings"
    FIM = "fim"


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """What to send: the path under the deployment's base URL and the body bytes."""

    path: str
    body: bytes
    stream: bool
    hide_usage_chunk: bool  # the gateway asked for a usage chunk the client did not


class Adapter(Protocol):
    """Translates one request for one kind of upstream."""

    provider: Provider

    def supports(self, endpoint: Endpoint) -> bool:
        """Whether this kind of upstream serves `endpoint`."""
        ...

    def prepare(
        self, endpoint: Endpoint, payload: dict[str, Any], upstream_model: str
    ) -> UpstreamCall:
        """Rewrite `payload` for this upstream and serialise it."""
        ...


_PATHS = {
    Endpoint.CHAT: "/chat/completions",
    Endpoint.EMBEDDINGS: "/embeddings",
    Endpoint.FIM: "/fim/completions",
}

_OPENAI_ONLY_FIELDS = ("stream_options", "user", "logit_bias", "store", "modalities", "audio")
_MISTRAL_SERVICE_TIERS = frozenset({"auto", "standard_only"})
_ASSISTANT_ONLY_OPENAI = ("reasoning_content", "refusal", "audio")


def _rename(payload: dict[str, Any], old: str, new: str) -> None:
    if old in payload:
        value = payload.pop(old)
        payload.setdefault(new, value)


class MistralAdapter:
    """La Plateforme: strict about unknown fields."""

    provider: Provider = "mistral"

    def supports(self, endpoint: Endpoint) -> bool:
        return True

    def prepare(
        self, endpoint: Endpoint, payload: dict[str, Any], upstream_model: str
    ) -> UpstreamCall:
        payload["model"] = upstream_model
        for field in _OPENAI_ONLY_FIELDS:
            payload.pop(field, None)
        if endpoint is Endpoint.EMBEDDINGS:
            _rename(payload, "dimensions", "output_dimension")
        else:
            _rename(payload, "seed", "random_seed")
            _rename(payload, "max_completion_tokens", "max_tokens")
            if payload.get("service_tier") not in _MISTRAL_SERVICE_TIERS:
                payload.pop("service_tier", None)
        if endpoint is Endpoint.CHAT:
            for message in payload["messages"]:
                if message.get("role") != "tool":
                    message.pop("name", None)
                if message.get("role") == "assistant":
                    for field in _ASSISTANT_ONLY_OPENAI:
                        message.pop(field, None)
        return UpstreamCall(
            _PATHS[endpoint], orjson.dumps(payload), payload.get("stream") is True, False
        )


class OpenAICompatibleAdapter:
    """vLLM and other OpenAI-compatible servers."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider

    def supports(self, endpoint: Endpoint) -> bool:
        return endpoint is not Endpoint.FIM

    def prepare(
        self, endpoint: Endpoint, payload: dict[str, Any], upstream_model: str
    ) -> UpstreamCall:
        payload["model"] = upstream_model
        if endpoint is Endpoint.EMBEDDINGS:
            _rename(payload, "output_dimension", "dimensions")
            return UpstreamCall(_PATHS[endpoint], orjson.dumps(payload), False, False)
        _rename(payload, "random_seed", "seed")
        payload.pop("safe_prompt", None)
        payload.pop("prompt_mode", None)
        if payload.get("tool_choice") == "any":
            payload["tool_choice"] = "required"
        stream = payload.get("stream") is True
        hide_usage = False
        if stream:
            options = payload.get("stream_options")
            if not isinstance(options, dict):
                options = payload["stream_options"] = {}
            if not options.get("include_usage"):
                options["include_usage"] = True
                hide_usage = True
        return UpstreamCall(_PATHS[endpoint], orjson.dumps(payload), stream, hide_usage)


_ADAPTERS: dict[str, Adapter] = {
    "mistral": MistralAdapter(),
    "vllm": OpenAICompatibleAdapter("vllm"),
    "openai": OpenAICompatibleAdapter("openai"),
}


def adapter_for(provider: Provider) -> Adapter:
    """The adapter of a provider kind."""
    return _ADAPTERS[provider]
