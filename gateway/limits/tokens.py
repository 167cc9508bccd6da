"""Prompt tokens of a request, counted with the upstream model's own tokenizer.

Counted on the payload as it will be sent (after the adapter's translation), with
mistral-common's tokenizers (`gateway/upstream/tokenizer.py`), the same counter the simulated
upstream reports with, so admission and the upstream agree. Models it does not know are
counted with tekken (an approximation the tokenizer marks as not exact); requests mistral-common
refuses to render fall back to a conservative text estimate that never counts low.
"""

from __future__ import annotations

from typing import Any

from gateway.upstream.adapter import Endpoint
from gateway.upstream.tokenizer import TokenCounter


def count_prompt_tokens(endpoint: Endpoint, payload: dict[str, Any], upstream_model: str) -> int:
    """Tokens the upstream will bill as input for this request."""
    tokenizer = TokenCounter.for_model(upstream_model)
    if endpoint is Endpoint.CHAT:
        return tokenizer.count_chat(payload["messages"], payload.get("tools")).tokens
    if endpoint is Endpoint.FIM:
        return tokenizer.count_fim(payload["prompt"], payload.get("suffix")).tokens
    value = payload["input"]
    if isinstance(value, str):
        return tokenizer.count_text(value).tokens
    if all(isinstance(item, str) for item in value):
        return tokenizer.count_texts(value).tokens
    if all(isinstance(item, int) for item in value):  # one input, already token ids
        return len(value)
    return sum(len(item) for item in value)  # several inputs of token ids


def count_text_tokens(text: str, upstream_model: str) -> int:
    """Tokens of plain text (an answer's content) with the model's tokenizer."""
    return TokenCounter.for_model(upstream_model).count_text(text).tokens if text else 0
