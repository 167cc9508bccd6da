"""Request parsing: one parse, checks of what the gateway needs, a 400 naming the param."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import InvalidRequest
from gateway.upstream.adapter import Endpoint
from gateway.web.wire import parse_json_object, validate


def test_valid_requests() -> None:
    assert validate(Endpoint.CHAT, {"model": "m", "messages": [{"role": "user"}]}) == "m"
    assert validate(Endpoint.EMBEDDINGS, {"model": "e", "input": ["a", "b"]}) == "e"
    assert validate(Endpoint.EMBEDDINGS, {"model": "e", "input": [1, 2, 3]}) == "e"
    assert validate(Endpoint.FIM, {"model": "c", "prompt": "def", "suffix": None}) == "c"


@pytest.mark.parametrize(
    ("endpoint", "payload", "param"),
    [
        (Endpoint.CHAT, {"messages": []}, "model"),
        (Endpoint.CHAT, {"model": 3, "messages": []}, "model"),
        (Endpoint.CHAT, {"model": "m", "messages": [1]}, "messages[0]"),
        (Endpoint.CHAT, {"model": "m", "messages": [{"role": "user"}], "tools": {}}, "tools"),
        (
            Endpoint.CHAT,
            {"model": "m", "messages": [{"role": "user"}], "max_tokens": 0},
            "max_tokens",
        ),
        (
            Endpoint.CHAT,
            {"model": "m", "messages": [{"role": "user"}], "max_tokens": True},
            "max_tokens",
        ),
        (Endpoint.EMBEDDINGS, {"model": "e", "input": ""}, "input"),
        (Endpoint.EMBEDDINGS, {"model": "e", "input": [1, "a"]}, "input"),
        (Endpoint.FIM, {"model": "c"}, "prompt"),
        (Endpoint.FIM, {"model": "c", "prompt": "p", "suffix": 1}, "suffix"),
    ],
)
def test_invalid_requests_name_the_param(endpoint: Endpoint, payload: dict, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate(endpoint, payload)
    assert caught.value.param == param


@given(st.binary(max_size=300))
def test_parser_never_raises_anything_but_invalid_request(raw: bytes) -> None:
    try:
        payload = parse_json_object(raw)
    except InvalidRequest:
        return
    for endpoint in Endpoint:
        with contextlib.suppress(InvalidRequest):
            validate(endpoint, payload)
