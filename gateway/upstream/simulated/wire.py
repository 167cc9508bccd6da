"""SIMULATOR wire shapes: completion bodies, SSE chunks, embeddings and model lists per style.

Mistral omits `logprobs`, sends `""` beside tool calls, uses bare hex ids and puts usage in the
last content chunk of a stream; vLLM/OpenAI send `logprobs: null`, prefixed ids, and a usage
chunk only when asked (`stream_options.include_usage`; vLLM also `continuous_usage_stats`).
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from gateway.upstream.simulated.faults import ABSURD_TOKENS, Fault
from gateway.upstream.simulated.options import OWNED_BY, SimulatorOptions, Style

Kind = Literal["chat", "text"]

SSE_DONE = b"data: [DONE]\n\n"
_WRONG_USAGE_OFFSET = 1000
_ID_PREFIXES = {"chat": "chatcmpl-", "text": "cmpl-", "embedding": "embd-"}


@dataclass
class Completion:
    """What one request produced, before it is rendered as JSON or as SSE chunks."""

    prompt_tokens: int
    pieces: list[str]
    completion_tokens: int
    finish_reason: str
    tool_calls: list[dict[str, Any]] | None = None
    extra_choices: list[tuple[str, int]] = field(default_factory=list)  # n > 1: (text, tokens)


def usage(prompt_tokens: int, completion_tokens: int, fault: Fault) -> dict[str, int] | None:
    """The usage object, or None / wrong numbers when a usage fault says so."""
    if fault.usage == "omit":
        return None
    if fault.usage == "wrong":
        prompt_tokens += _WRONG_USAGE_OFFSET
        completion_tokens += _WRONG_USAGE_OFFSET
    elif fault.usage == "negative":
        prompt_tokens, completion_tokens = -prompt_tokens - 1, -completion_tokens - 1
    elif fault.usage == "absurd":
        prompt_tokens = completion_tokens = ABSURD_TOKENS
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def response_id(style: Style, kind: str) -> str:
    """A fresh response id: bare hex for Mistral, `chatcmpl-`/`cmpl-`/`embd-` elsewhere."""
    return uuid.uuid4().hex if style == "mistral" else _ID_PREFIXES[kind] + uuid.uuid4().hex


def _head(style: Style, kind: Kind, model: str, *, chunk: bool) -> dict[str, Any]:
    if kind == "text":
        object_ = "text_completion"
    else:
        object_ = "chat.completion.chunk" if chunk else "chat.completion"
    return {
        "id": response_id(style, kind),
        "object": object_,
        "created": int(time.time()),
        "model": model,
    }


def _choice(style: Style, index: int, key: str, value: Any, finish: str | None) -> dict[str, Any]:
    """One choice: `text` (text completions), or a chat `message`/`delta`."""
    if key == "text":
        return {"index": index, "text": value, "logprobs": None, "finish_reason": finish}
    choice = {"index": index, key: value, "finish_reason": finish}
    if style != "mistral":
        choice["logprobs"] = None
    return choice


def completion_body(
    style: Style, kind: Kind, model: str, completion: Completion, fault: Fault
) -> dict[str, Any]:
    """The non-streamed response body, with one choice per answer (`n` > 1 adds more)."""
    texts = [("".join(completion.pieces), completion.completion_tokens), *completion.extra_choices]
    choices = []
    for index, (text, _) in enumerate(texts):
        if kind == "text":
            choices.append(_choice(style, index, "text", text, completion.finish_reason))
            continue
        message: dict[str, Any] = {"role": "assistant", "content": text, "tool_calls": None}
        if completion.tool_calls:
            # Mistral sends "" beside tool calls; OpenAI-compatible servers send null.
            content = "" if style == "mistral" else None
            message.update(content=content, tool_calls=completion.tool_calls)
        choices.append(_choice(style, index, "message", message, completion.finish_reason))
    out = _head(style, kind, model, chunk=False) | {"choices": choices}
    total = usage(completion.prompt_tokens, sum(tokens for _, tokens in texts), fault)
    if total is not None:
        out["usage"] = total
    return out


def stream_events(
    style: Style,
    kind: Kind,
    model: str,
    completion: Completion,
    fault: Fault,
    stream_options: Any,
) -> Iterator[tuple[bytes, bool]]:
    """The SSE data events of a stream, as (bytes, carries-a-token), without [DONE]."""
    options = stream_options if isinstance(stream_options, dict) else {}
    mistral = style == "mistral"
    include_usage = not mistral and options.get("include_usage") is True
    continuous = style == "vllm" and include_usage and options.get("continuous_usage_stats") is True
    prompt_tokens, total_tokens = completion.prompt_tokens, completion.completion_tokens
    head = _head(style, kind, model, chunk=True)

    def frame(choice: dict[str, Any] | None, chunk_usage: dict[str, int] | None) -> bytes:
        chunk = head | {"choices": [choice] if choice is not None else []}
        if chunk_usage is not None:
            chunk["usage"] = chunk_usage
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def choice(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        if kind == "text":
            return _choice(style, 0, "text", delta.get("content", ""), finish)
        return _choice(style, 0, "delta", delta, finish)

    def usage_at(tokens: int, last: bool) -> dict[str, int] | None:
        if (mistral and last) or continuous:
            return usage(prompt_tokens, tokens, fault)
        return None

    if kind == "chat":
        role = choice({"role": "assistant", "content": ""}, None)
        yield frame(role, usage_at(0, False)), False
    if fault.endless:  # content forever: no finish_reason, no usage, no end
        for piece in itertools.cycle(completion.pieces or ["x"]):
            yield frame(choice({"content": piece}, None), None), True
    if completion.tool_calls:
        calls = [call | {"index": 0} for call in completion.tool_calls]
        yield frame(choice({"tool_calls": calls}, "tool_calls"), usage_at(total_tokens, True)), True
    else:
        pieces = completion.pieces or [""]
        last_index = len(pieces) - 1
        for index, piece in enumerate(pieces):
            last = index == last_index
            tokens = total_tokens if last else min(index + 1, total_tokens)
            finish = completion.finish_reason if last else None
            yield frame(choice({"content": piece}, finish), usage_at(tokens, last)), True
    if include_usage:
        final = usage(prompt_tokens, total_tokens, fault)
        if final is not None:
            yield frame(None, final), False


def embeddings_body(
    style: Style, model: str, vectors: list[Any], prompt_tokens: int, fault: Fault
) -> dict[str, Any]:
    """The embeddings list; vLLM/OpenAI usage has no `completion_tokens`."""
    data = [
        {"object": "embedding", "embedding": vector, "index": index}
        for index, vector in enumerate(vectors)
    ]
    out: dict[str, Any] = {
        "id": response_id(style, "embedding"),
        "object": "list",
        "data": data,
        "model": model,
    }
    total = usage(prompt_tokens, 0, fault)
    if total is not None:
        if style != "mistral":
            del total["completion_tokens"]
        out["usage"] = total
    return out


def _model_card(model: str, created: int, style: Style) -> dict[str, Any]:
    """One `/v1/models` entry; the Mistral style adds what the mistralai SDK types need."""
    card: dict[str, Any] = {
        "id": model,
        "object": "model",
        "created": created,
        "owned_by": OWNED_BY,
    }
    if style == "mistral":
        chat = "embed" not in model
        card["type"] = "base"
        card["capabilities"] = {
            "completion_chat": chat,
            "function_calling": chat,
            "completion_fim": model.startswith("codestral"),
            "fine_tuning": False,
            "vision": False,
        }
    return card


def models_body(options: SimulatorOptions) -> bytes:
    """The `/v1/models` body, every model labelled `owned_by: "gateway-simulator"`."""
    created = int(time.time())
    cards = [_model_card(model, created, options.style) for model in options.models]
    return orjson.dumps({"object": "list", "data": cards})
