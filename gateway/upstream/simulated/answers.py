"""SIMULATOR answers: deterministic pseudo-text, tool calls and embedding vectors. No model runs.

Everything is seeded by the prompt (and `SimulatorOptions.seed`), so the same request gets the
same answer. Text is built from pieces of exactly one token each, so the completion's token
count is what a re-tokenisation of the output gives.
"""

from __future__ import annotations

import base64
import hashlib
import random
import struct
from typing import Any

import orjson

from gateway.upstream.tokenizer import ModelTokenizer

_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_PLACEHOLDERS = {"string": "simulated", "integer": 1, "number": 1.0, "boolean": True}


def prompt_seed(seed: int, *parts: Any) -> str:
    """A stable seed string for the answer text, derived from the prompt."""
    return f"{seed}:" + hashlib.blake2b(orjson.dumps(parts), digest_size=12).hexdigest()


def sample_answer(
    tokenizer: ModelTokenizer, wanted: int, limit: int | None, seed: str, *, json_mode: bool
) -> tuple[list[str], int, str]:
    """(pieces, completion tokens, finish_reason) of a text answer of `wanted` tokens."""
    n = wanted if limit is None else min(limit, wanted)
    finish = "length" if limit is not None and limit < wanted else "stop"
    if not json_mode:
        return tokenizer.sample_text(n, seed), n, finish
    # JSON mode: braces and quotes are tokens too, so count what was produced.
    words = tokenizer.sample_text(max(n - 6, 0), seed)
    pieces = ['{"answer":"', *words, '"}'] if words else ["{}"]
    return pieces, tokenizer.count_text("".join(pieces)).tokens, finish


def tool_call(tools: list[dict[str, Any]], choice: Any, seed: str) -> dict[str, Any]:
    """A call to the named tool (or the first one), with placeholder required arguments."""
    wanted = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    function = tools[0].get("function", {})
    for tool in tools:
        if tool.get("function", {}).get("name") == wanted:
            function = tool["function"]
    parameters = function.get("parameters") or {}
    properties = parameters.get("properties") or {}
    arguments = {
        name: _PLACEHOLDERS.get((properties.get(name) or {}).get("type", "string"), "simulated")
        for name in parameters.get("required") or []
    }
    rng = random.Random(seed)
    return {
        "id": "".join(rng.choices(_ALNUM, k=9)),
        "type": "function",
        "function": {
            "name": function.get("name", "tool"),
            "arguments": orjson.dumps(arguments).decode(),
        },
    }


def tool_call_tokens(tokenizer: ModelTokenizer, call: dict[str, Any]) -> int:
    """What a Mistral model emits for a call: [TOOL_CALLS] + [{"name": …, "arguments": …}]."""
    function = call["function"]
    spoken = orjson.dumps([{"name": function["name"], "arguments": function["arguments"]}])
    return tokenizer.count_text(spoken.decode()).tokens + 1


def embedding_vector(text: str, dim: int, seed: int = 0) -> list[float]:
    """A deterministic unit vector for text, float32-exact (so base64 round-trips equal)."""
    digest = hashlib.shake_128(f"{seed}:{text}".encode()).digest(4 * dim)
    raw = [value / 2**31 - 1.0 for value in struct.unpack(f"<{dim}I", digest)]
    norm = sum(value * value for value in raw) ** 0.5 or 1.0
    return list(struct.unpack(f"<{dim}f", struct.pack(f"<{dim}f", *(v / norm for v in raw))))


def encoded_vector(vector: list[float], encoding: str) -> list[float] | str:
    """The vector as sent: a float list, or base64 of little-endian float32s."""
    if encoding != "base64":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
