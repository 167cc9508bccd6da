"""Fuzzing the request parser and checks (`web/wire.py`): any body, any JSON shape, no crash.

`test_wire.py` covers raw bytes into `parse_json_object`. Here hypothesis builds JSON that
parses, shaped like a real request (the keys the gateway acts on, with values of every JSON
type, huge integers, deep nesting and odd strings), and mutated encodings of it. The only
outcomes allowed: `validate` returns the request's own `model`, or raises `InvalidRequest`
(400) whose body renders as the OpenAI error, its `param` (if any) a field the gateway checks.
"""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import InvalidRequest
from gateway.upstream.adapter import Endpoint
from gateway.web.wire import parse_json_object, validate

FIELDS = ("model", "messages", "stream", "max_tokens", "max_completion_tokens", "tools",
          "prompt", "suffix", "input", "role", "content")  # fmt: skip
TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=20) | st.sampled_from(
    ["", "\x00", "mistral-small-latest", "user", "\u202e", "a" * 300]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.sampled_from([0, 1, -1, 10**12, 2**31, 2**63 - 1])
    | st.floats(allow_nan=False)
    | TEXT
)
KEYS = st.sampled_from(FIELDS) | TEXT
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(KEYS, inner, max_size=6),
    max_leaves=30,
)
REQUESTS = st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=8)


def check(endpoint: Endpoint, payload: dict[str, Any]) -> None:
    error: InvalidRequest | None = None
    try:
        model = validate(endpoint, payload)
    except InvalidRequest as raised:
        error = raised
    if error is None:
        assert model == payload["model"] and isinstance(model, str)
        return
    assert error.status == 400
    body = orjson.loads(error.body())["error"]
    assert body["type"] == "invalid_request_error" and body["message"]
    assert body["param"] == error.param
    if error.param is not None:  # a field the gateway checks, present or required
        assert error.param.split("[")[0].split(".")[0] in FIELDS


@settings(max_examples=200, deadline=None)
@given(REQUESTS, st.sampled_from(list(Endpoint)))
def test_validate_answers_a_model_or_a_400(payload: dict[str, Any], endpoint: Endpoint) -> None:
    check(endpoint, payload)


@settings(max_examples=300, deadline=None)
@given(JSON, st.sampled_from(list(Endpoint)), st.integers(min_value=0, max_value=10_000))
def test_any_json_document_and_its_truncations(value: Any, endpoint: Endpoint, cut: int) -> None:
    raw = orjson.dumps(value)
    for candidate in (raw, raw[: cut % (len(raw) + 1)], raw.replace(b'"', b"\xff", 1)):
        with contextlib.suppress(InvalidRequest):
            check(endpoint, parse_json_object(candidate))


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=200_000), st.sampled_from([b"[]", b"{}", b'{"a":}']))
def test_deep_nesting_is_a_400(depth: int, pair: bytes) -> None:
    opening, closing = pair[:-1], pair[-1:]
    raw = b'{"model": "m", "messages": ' + opening * depth + closing * depth + b"}"
    with contextlib.suppress(InvalidRequest):
        check(Endpoint.CHAT, parse_json_object(raw))
