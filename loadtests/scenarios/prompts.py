"""Request bodies for load tests: chat prompts of a chosen size, each one unique.

Every request carries a different prompt (a sequence number near the start of the user
message). That matters: the gateway counts prompt tokens with the real tokenizer and keeps an
LRU of recent counts, so a benchmark that repeats one prompt measures the cache, not a
request. The size is set in words from a fixed vocabulary of one-token words, so the count is
stable; `prompt_tokens()` measures it with the gateway's own tokenizer.
"""

from __future__ import annotations

import random
from typing import Any

import orjson

SYSTEM = (
    "You are a support assistant for an online shop. Answer briefly and politely, cite the "
    "order number when there is one, never invent tracking data, and hand over to a human "
    "agent when the customer asks for a refund above 200 euros or mentions a legal matter."
)
_VOCABULARY_TEXT = (
    "the gateway routes each request to a deployment in the tenant region and counts the prompt "
    "tokens before it reserves them against the bucket limits while the upstream model streams "
    "an answer back chunk by chunk and the ledger records usage cost latency errors retries "
    "fallbacks budgets quotas keys invoices customers orders shipments refunds parcel delivery "
    "address warehouse carrier delay weather storm holiday week month price discount coupon"
)
_VOCABULARY = _VOCABULARY_TEXT.split()
NONCE = b"@@NONCE@@"
NONCE_WIDTH = 12  # digits: the body length stays the same from one request to the next


def chat_payload(
    words: int, *, stream: bool = False, max_tokens: int = 256, seed: int = 7
) -> dict[str, Any]:
    """A chat request with a system prompt and a user message of about `words` words."""
    rng = random.Random(seed)
    text = " ".join(rng.choice(_VOCABULARY) for _ in range(words))
    payload: dict[str, Any] = {
        "model": "mistral-small-latest",
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Ticket {NONCE.decode()}: {text}"},
        ],
        "max_tokens": max_tokens,
        "temperature": 0.3,
    }
    if stream:
        payload["stream"] = True
    return payload


def embeddings_payload(texts: int = 4, words: int = 40, seed: int = 11) -> dict[str, Any]:
    rng = random.Random(seed)
    inputs = [
        f"doc {NONCE.decode()}-{i}: " + " ".join(rng.choice(_VOCABULARY) for _ in range(words))
        for i in range(texts)
    ]
    return {"model": "mistral-embed", "input": inputs}


def words_for_tokens(target_tokens: int) -> int:
    """Words of `_VOCABULARY` (about one token each) for a chat prompt of `target_tokens`."""
    # Measured with Tekken v3: ~65 tokens of system prompt, template and ticket header, then
    # ~1.1 tokens per word (some words of the vocabulary are two tokens).
    return max(1, round((target_tokens - 65) / 1.1))


def prompt_tokens(payload: dict[str, Any]) -> int:
    """The prompt's size as the gateway counts it (mistral-common Tekken, as admission does)."""
    from gateway.limits.tokens import count_prompt_tokens
    from gateway.upstream.adapter import Endpoint

    filled = orjson.loads(orjson.dumps(payload).replace(NONCE, b"0" * NONCE_WIDTH))
    return count_prompt_tokens(Endpoint.CHAT, filled, "mistral-small-latest")


def request_factory(payload: dict[str, Any], path: str, host: str, key: str | None) -> Any:
    """seq -> the whole HTTP/1.1 request bytes, with the sequence number in the prompt."""
    body = orjson.dumps(payload)
    before, after = body.split(NONCE, 1)
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body) - len(NONCE) + NONCE_WIDTH}\r\n"
    ).encode()
    if key is not None:
        head += f"authorization: Bearer {key}\r\n".encode()
    head += b"\r\n" + before
    template = b"%0" + str(NONCE_WIDTH).encode() + b"d"

    def make(seq: int) -> bytes:
        return head + template % seq + after

    return make
