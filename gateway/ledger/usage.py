"""Tokens used by a request, read from what the upstream returned.

Non-streamed responses carry `usage` in the JSON body; streams carry it in one chunk (which the
SSE watcher picks out). When a stream broke before its usage arrived, the tokens are metered
from what was delivered: one token per content chunk, which is how both La Plateforme and vLLM
stream (an estimate, marked as such by the caller).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

TokenSource = Literal["provider", "metered", "estimated"]


@dataclass(frozen=True, slots=True)
class UsedTokens:
    """Prompt and completion tokens of one request, and where the numbers came from."""

    prompt_tokens: int
    completion_tokens: int
    source: TokenSource

    @property
    def total(self) -> int:
        """Prompt plus completion."""
        return self.prompt_tokens + self.completion_tokens


# No model reads or writes more tokens in one request (the largest context windows are ~1-2M);
# a count above this is the upstream's bug, and billing it would also overflow the ledger's
# 32-bit token columns and stop the writer. It is treated as no usage at all.
MAX_PLAUSIBLE_TOKENS = 50_000_000


def _as_count(value: Any) -> int | None:
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and 0 <= value <= MAX_PLAUSIBLE_TOKENS
    ):
        return value
    return None


def from_usage(usage: Mapping[str, Any] | None) -> UsedTokens | None:
    """Read an OpenAI/Mistral `usage` object; None when it is missing or malformed."""
    if not isinstance(usage, Mapping):
        return None
    prompt = _as_count(usage.get("prompt_tokens"))
    raw_completion = usage.get("completion_tokens")
    completion = _as_count(raw_completion)
    if prompt is None or (raw_completion is not None and completion is None):
        return None
    completion = completion or 0
    return UsedTokens(prompt, completion, "provider")


def from_body(body: bytes) -> tuple[UsedTokens | None, str | None]:
    """The `usage` and the upstream's own `id` of a whole JSON response body."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(parsed, dict):
        return None, None
    upstream_id = parsed.get("id")
    return from_usage(parsed.get("usage")), upstream_id if isinstance(upstream_id, str) else None


def estimated(prompt_tokens: int, completion_tokens: int = 0) -> UsedTokens:
    """No usage was reported: the counted prompt (and the answer's text, counted, when the
    gateway holds it), marked estimated."""
    return UsedTokens(prompt_tokens, completion_tokens, "estimated")


def answer_text(body: bytes) -> str:
    """The generated text of a whole JSON answer (message contents and tool-call arguments of
    every choice), for estimating its tokens when the upstream reported none."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    choices = parsed.get("choices") if isinstance(parsed, dict) else None
    parts: list[str] = []
    for choice in choices if isinstance(choices, list) else ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            text = choice.get("text") if isinstance(choice, dict) else None  # completions
            if isinstance(text, str):
                parts.append(text)
            continue
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [
                p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
            ]
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                parts.append(function["arguments"])
    return "".join(parts)


def metered(prompt_tokens: int, content_events: int) -> UsedTokens:
    """A broken stream without usage: the counted prompt plus one token per delivered chunk."""
    return UsedTokens(prompt_tokens, content_events, "metered")


NOTHING_USED = UsedTokens(0, 0, "provider")  # the upstream refused or never answered
