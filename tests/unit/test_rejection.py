"""Upstream error bodies of every shape seen in the wild become one OpenAI-shaped error."""

from __future__ import annotations

import orjson
import pytest

from gateway.upstream.rejection import normalise_upstream_error


def render(status: int, body: bytes, retry_after: str | None = None) -> tuple[int, dict]:
    error = normalise_upstream_error(status, body, deployment="d", retry_after=retry_after)
    return error.status, orjson.loads(error.body())["error"]


@pytest.mark.parametrize(
    ("status", "body", "message", "type_", "code", "param"),
    [
        (
            422,
            b'{"object":"error","message":{"detail":[{"type":"extra_forbidden","loc":["body","max_completion_tokens"],"msg":"Extra inputs are not permitted","input":32000}]},"type":"invalid_request_error","param":null,"code":null}',
            "max_completion_tokens: Extra inputs are not permitted",
            "invalid_request_error",
            None,
            "max_completion_tokens",
        ),
        (
            400,
            b'{"object":"error","message":"bad","type":"invalid_request_error","param":"model","code":"unknown_model"}',
            "bad",
            "invalid_request_error",
            "unknown_model",
            "model",
        ),
        (400, b'{"message":"x","code":3001}', "x", "invalid_request_error", "3001", None),
        (
            429,
            b'{"message":"Requests rate limit exceeded"}',
            "Requests rate limit exceeded",
            "rate_limit_error",
            None,
            None,
        ),
        (
            429,
            b'{"object":"error","message":"Rate limit exceeded","type":"rate_limited","param":null,"code":"1300","raw_status_code":429}',
            "Rate limit exceeded",
            "rate_limit_error",
            "1300",
            None,
        ),
        (
            400,
            b'{"error":{"message":"vllm says no","type":"BadRequestError","param":null,"code":400}}',
            "vllm says no",
            "invalid_request_error",
            "400",
            None,
        ),
        (503, b"<html>oops</html>", "<html>oops</html>", "api_error", None, None),
        (500, b"", "The upstream `d` answered with status 500.", "api_error", None, None),
        (
            422,
            b'{"detail":[{"loc":["body","x"],"msg":"nope"}]}',
            "x: nope",
            "invalid_request_error",
            None,
            "x",
        ),
    ],
)
def test_shapes(status, body, message, type_, code, param) -> None:
    got_status, error = render(status, body)
    assert got_status == status
    assert error == {"message": message, "type": type_, "code": code, "param": param}


@pytest.mark.parametrize("status", [401, 403])
def test_upstream_auth_failure_is_the_gateways_problem(status: int) -> None:
    got_status, error = render(status, b'{"message":"Unauthorized","request_id":"933f"}')
    assert got_status == 502
    assert error["code"] == "upstream_auth_failed"


def test_retry_after_kept_and_retryable_statuses() -> None:
    error = normalise_upstream_error(429, b"{}", deployment="d", retry_after="7")
    assert error.headers() == {"retry-after": "7"}
    assert error.retryable
    assert not normalise_upstream_error(400, b"{}", deployment="d", retry_after=None).retryable
