"""SIMULATOR request validation: what each style accepts, and how it refuses the rest.

Mistral refuses unknown fields (`additionalProperties: false`, API-FACTS §1.1-1.2) and answers
pydantic-shaped 422s; vLLM and OpenAI ignore unknown fields and answer 400s.
"""

from __future__ import annotations

from typing import Any

from gateway.upstream.simulated.errors import SimError, invalid
from gateway.upstream.simulated.options import SimulatorOptions, Style

# La Plateforme's ChatCompletionRequest fields (API-FACTS §1.2), SDK-3.7-only ones included.
MISTRAL_CHAT_FIELDS = frozenset(
    {
        "model", "messages", "temperature", "top_p", "max_tokens", "stream", "stop",
        "random_seed", "metadata", "response_format", "tools", "tool_choice",
        "presence_penalty", "frequency_penalty", "n", "prediction", "parallel_tool_calls",
        "prompt_mode", "reasoning_effort", "guardrails", "prompt_cache_key", "safe_prompt",
        "min_tokens", "repetition_penalty", "top_k", "logprobs", "top_logprobs",
        "prompt_logprobs", "top_prompt_logprobs", "service_tier",
    }
)  # fmt: skip
MISTRAL_FIM_FIELDS = frozenset(
    {
        "model", "prompt", "suffix", "temperature", "top_p", "max_tokens", "min_tokens",
        "stream", "stop", "random_seed", "metadata", "prompt_cache_key",
    }
)  # fmt: skip
MISTRAL_EMBEDDING_FIELDS = frozenset(
    {"model", "input", "output_dimension", "output_dtype", "encoding_format", "metadata"}
)

_MAX_EMBEDDING_DIM = 8192


def reject_extra_fields(body: dict[str, Any], allowed: frozenset[str]) -> None:
    """Mistral's `additionalProperties: false`: one 422 listing every unknown field."""
    detail = [
        {"type": "extra_forbidden", "loc": ["body", key], "msg": "Extra inputs are not permitted"}
        | {"input": value}
        for key, value in body.items()
        if key not in allowed
    ]
    if detail:
        raise SimError(422, {"detail": detail})


def _required(style: Style, name: str, value: Any, kind: str, message: str) -> SimError:
    """The error for a required field that is missing, or present with the wrong type."""
    if value is None:
        return invalid(style, name, "missing", "Field required", value)
    return invalid(style, name, kind, message, value)


def requested_model(options: SimulatorOptions, body: dict[str, Any]) -> str:
    """The body's `model`, which must be one the simulator serves."""
    style = options.style
    model = body.get("model")
    if model in (None, "") and style == "vllm":
        return options.models[0]  # vLLM accepts a missing model (API-FACTS §2.2)
    if model is None:
        raise invalid(style, "model", "missing", "Field required", body)
    if not isinstance(model, str):
        raise invalid(style, "model", "string_type", "Input should be a string", model)
    if model not in options.models:
        message = {
            "mistral": f"Invalid model: {model}",
            "vllm": f"The model `{model}` does not exist.",
            "openai": f"The model `{model}` does not exist or you do not have access to it.",
        }[style]
        code = "unknown_model" if style == "mistral" else None
        raise SimError(404, message, param="model", code=code)
    return model


def max_tokens(style: Style, body: dict[str, Any]) -> int | None:
    """The completion-length limit (`max_completion_tokens` first outside Mistral), if any."""
    names = ("max_tokens",) if style == "mistral" else ("max_completion_tokens", "max_tokens")
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise invalid(style, name, "int_type", "Input should be a valid integer", value)
        return value
    return None


def chat_inputs(style: Style, body: dict[str, Any]) -> tuple[list[Any], list[Any] | None, Any]:
    """(messages, tools or None, tool_choice) of a chat request, checked."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise _required(style, "messages", messages, "list_type", "Input should be a valid list")
    tools = body.get("tools") or None
    if tools is not None and not isinstance(tools, list):
        raise invalid(style, "tools", "list_type", "Input should be a valid list", tools)
    tool_choice = body.get("tool_choice")
    _check_tool_choice(style, tool_choice)
    return messages, tools, tool_choice


def _check_tool_choice(style: Style, choice: Any) -> None:
    mistral = style == "mistral"
    allowed = ("auto", "none", "any", "required") if mistral else ("auto", "none", "required")
    if choice is None or choice in allowed:
        return
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return
    if mistral:
        raise invalid(style, "tool_choice", "enum", f"Input should be {allowed}", choice)
    raise SimError(
        400,
        f'Only named tools, "none", "auto" or "required" are supported, got {choice!r}',
        param="tool_choice",
    )


def fim_inputs(body: dict[str, Any]) -> tuple[str, str | None]:
    """(prompt, suffix) of a Mistral FIM request, checked."""
    prompt, suffix = body.get("prompt"), body.get("suffix")
    if not isinstance(prompt, str):
        raise _required(
            "mistral", "prompt", prompt, "string_type", "Input should be a valid string"
        )
    if suffix is not None and not isinstance(suffix, str):
        raise invalid("mistral", "suffix", "string_type", "Input should be a valid string", suffix)
    return prompt, suffix


def embedding_inputs(options: SimulatorOptions, body: dict[str, Any]) -> tuple[list[str], int, str]:
    """(texts, dimension, encoding_format) of an embeddings request, checked."""
    style = options.style
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise invalid(
            style, "input", "string_type", "Input should be a string or a list of strings", raw
        )
    dim_field = "output_dimension" if style == "mistral" else "dimensions"
    dim = body.get(dim_field) or options.embedding_dim
    if isinstance(dim, bool) or not isinstance(dim, int) or not 0 < dim <= _MAX_EMBEDDING_DIM:
        raise invalid(style, dim_field, "int_type", "Input should be a positive integer", dim)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise invalid(
            style, "encoding_format", "enum", "Input should be 'float' or 'base64'", encoding
        )
    return texts, dim, encoding
