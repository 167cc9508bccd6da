"""Provider adapters translate only where an upstream differs (shared/API-FACTS.md §6)."""

from __future__ import annotations

import copy

import orjson
import pytest

from gateway.upstream.adapter import Endpoint, adapter_for

OPENAI_STYLE = {
    "model": "public",
    "messages": [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u", "name": "alice"},
        {"role": "assistant", "content": "a", "reasoning_content": "r", "refusal": None},
        {"role": "tool", "tool_call_id": "abc123def", "name": "fn", "content": "x"},
    ],
    "seed": 3,
    "max_completion_tokens": 9,
    "stream_options": {"include_usage": True},
    "user": "u1",
    "logit_bias": {"1": 2},
    "service_tier": "flex",
    "temperature": 0.2,
    "tools": [{"type": "function", "function": {"name": "fn", "parameters": {}}}],
}


def test_mistral_renames_and_drops_openai_only_fields() -> None:
    call = adapter_for("mistral").prepare(
        Endpoint.CHAT, copy.deepcopy(OPENAI_STYLE), "mistral-small-2603"
    )
    sent = orjson.loads(call.body)
    assert call.path == "/chat/completions"
    assert sent["model"] == "mistral-small-2603"
    assert sent["random_seed"] == 3
    assert sent["max_tokens"] == 9
    for gone in (
        "seed",
        "max_completion_tokens",
        "stream_options",
        "user",
        "logit_bias",
        "service_tier",
    ):
        assert gone not in sent
    assert "name" not in sent["messages"][1]
    assert "reasoning_content" not in sent["messages"][2]
    assert "refusal" not in sent["messages"][2]
    assert sent["messages"][3]["name"] == "fn"  # tool messages keep their name
    assert sent["temperature"] == 0.2
    assert sent["tools"] == OPENAI_STYLE["tools"]
    assert not call.hide_usage_chunk


def test_mistral_keeps_explicit_max_tokens_and_its_own_service_tier() -> None:
    payload = {"model": "m", "messages": [], "max_tokens": 4, "max_completion_tokens": 9}
    payload["service_tier"] = "standard_only"
    sent = orjson.loads(adapter_for("mistral").prepare(Endpoint.CHAT, payload, "m").body)
    assert sent["max_tokens"] == 4
    assert sent["service_tier"] == "standard_only"


def test_mistral_embeddings_dimensions() -> None:
    payload = {"model": "e", "input": ["x"], "dimensions": 256, "encoding_format": "base64"}
    call = adapter_for("mistral").prepare(Endpoint.EMBEDDINGS, payload, "mistral-embed")
    sent = orjson.loads(call.body)
    assert sent == {
        "model": "mistral-embed",
        "input": ["x"],
        "output_dimension": 256,
        "encoding_format": "base64",
    }
    assert call.path == "/embeddings"


@pytest.mark.parametrize("provider", ["vllm", "openai"])
def test_openai_compatible_translation(provider: str) -> None:
    payload = {
        "model": "p",
        "messages": [{"role": "user", "content": "x"}],
        "random_seed": 5,
        "tool_choice": "any",
        "safe_prompt": True,
        "prompt_mode": "reasoning",
        "stream": True,
    }
    call = adapter_for(provider).prepare(Endpoint.CHAT, payload, "org/model")  # type: ignore[arg-type]
    sent = orjson.loads(call.body)
    assert sent["seed"] == 5
    assert sent["tool_choice"] == "required"
    assert "safe_prompt" not in sent and "prompt_mode" not in sent
    assert sent["stream_options"] == {"include_usage": True}
    assert call.stream and call.hide_usage_chunk


def test_vllm_keeps_a_client_usage_request_visible() -> None:
    payload = {
        "model": "p",
        "messages": [{"role": "user", "content": "x"}],
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    call = adapter_for("vllm").prepare(Endpoint.CHAT, payload, "m")
    assert not call.hide_usage_chunk
    assert orjson.loads(call.body)["stream_options"]["continuous_usage_stats"] is True


def test_vllm_has_no_fim() -> None:
    assert not adapter_for("vllm").supports(Endpoint.FIM)
    assert adapter_for("mistral").supports(Endpoint.FIM)
