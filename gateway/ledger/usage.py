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


def _as_count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def from_usage(usage: Mapping[str, Any] | None) -> UsedTokens | None:
    """Read an OpenAI/Mistral `usage` object; None when it is missing or malformed."""
    if not isinstance(usage, Mapping):
        return None
    prompt = _as_count(usage.get("prompt_tokens"))
    completion = _as_count(usage.get("completion_tokens")) or 0
    if prompt is None:
        return None
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


def estimated(prompt_tokens: int) -> UsedTokens:
    """No usage was reported and nothing was metered: the counted prompt, marked estimated."""
    return UsedTokens(prompt_tokens, 0, "estimated")


def metered(prompt_tokens: int, content_events: int) -> UsedTokens:
    """A broken stream without usage: the counted prompt plus one token per delivered chunk."""
    return UsedTokens(prompt_tokens, content_events, "metered")


NOTHING_USED = UsedTokens(0, 0, "provider")  # the upstream refused or never answered
