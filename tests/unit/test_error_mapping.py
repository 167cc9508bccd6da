"""Foreign exceptions are translated where they enter: every httpx, aiohttp and pyreqwest error
maps."""

from __future__ import annotations

import inspect

import aiohttp
import httpx
import orjson
import pyreqwest.exceptions
import pytest

from gateway import errors
from gateway.upstream.client import (
    aiohttp_errors_before_response,
    aiohttp_errors_in_body,
    httpx_errors_before_response,
    httpx_errors_in_body,
    pyreqwest_errors_before_response,
    pyreqwest_errors_in_body,
)


def concrete_subclasses(module: object, base: type[BaseException]) -> list[type[BaseException]]:
    return [
        obj
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, base) and obj.__module__.startswith(module.__name__.split(".")[0])
    ]


def make(exc_type: type[BaseException]) -> BaseException:
    if issubclass(exc_type, httpx.HTTPStatusError):
        request = httpx.Request("GET", "http://x")
        return exc_type("x", request=request, response=httpx.Response(500, request=request))
    if issubclass(exc_type, pyreqwest.exceptions.DetailedPyreqwestError):
        details = {"causes": None, "status": 500, "doc": "", "pos": 0}
        return exc_type("boom", details)
    try:
        return exc_type("boom")
    except TypeError:
        return exc_type.__new__(exc_type)


HTTPX_ERRORS = [e for e in concrete_subclasses(httpx, httpx.HTTPError)]
HTTPX_ERRORS += [httpx.StreamError, httpx.StreamClosed, httpx.ResponseNotRead]


@pytest.mark.parametrize("exc_type", HTTPX_ERRORS, ids=lambda t: t.__name__)
def test_every_httpx_error_maps_before_the_response(exc_type: type[BaseException]) -> None:
    with pytest.raises(errors.UpstreamError), httpx_errors_before_response("d"):
        raise make(exc_type)


@pytest.mark.parametrize("exc_type", HTTPX_ERRORS, ids=lambda t: t.__name__)
def test_every_httpx_error_maps_in_the_body(exc_type: type[BaseException]) -> None:
    with pytest.raises(errors.UpstreamError), httpx_errors_in_body("d"):
        raise make(exc_type)


AIOHTTP_ERRORS = [*concrete_subclasses(aiohttp, aiohttp.ClientError), TimeoutError, OSError]


@pytest.mark.parametrize("exc_type", AIOHTTP_ERRORS, ids=lambda t: t.__name__)
def test_every_aiohttp_error_maps(exc_type: type[BaseException]) -> None:
    for guard in (aiohttp_errors_before_response, aiohttp_errors_in_body):
        with pytest.raises(errors.UpstreamError), guard("d"):
            raise make(exc_type)


PYREQWEST_ERRORS = concrete_subclasses(pyreqwest.exceptions, pyreqwest.exceptions.PyreqwestError)


@pytest.mark.parametrize("exc_type", PYREQWEST_ERRORS, ids=lambda t: t.__name__)
def test_every_pyreqwest_error_maps(exc_type: type[BaseException]) -> None:
    for guard in (pyreqwest_errors_before_response, pyreqwest_errors_in_body):
        with pytest.raises(errors.UpstreamError), guard("d"):
            raise make(exc_type)


def test_pyreqwest_timeouts_are_504_before_response_and_interruptions_after() -> None:
    timeouts = [e for e in PYREQWEST_ERRORS if issubclass(e, TimeoutError)]
    assert pyreqwest.exceptions.ReadTimeoutError in timeouts
    for exc_type in [*timeouts, TimeoutError]:  # TimeoutError: our first-byte deadline
        with pytest.raises(errors.UpstreamTimeout), pyreqwest_errors_before_response("d"):
            raise make(exc_type)
        with pytest.raises(errors.UpstreamInterrupted), pyreqwest_errors_in_body("d"):
            raise make(exc_type)


def test_timeouts_are_504_before_response() -> None:
    with pytest.raises(errors.UpstreamTimeout), httpx_errors_before_response("d"):
        raise httpx.ReadTimeout("slow")
    with pytest.raises(errors.UpstreamTimeout), aiohttp_errors_before_response("d"):
        raise TimeoutError


def test_error_bodies_have_the_openai_shape() -> None:
    for error in (
        errors.InvalidRequest("bad", param="model"),
        errors.ModelNotFound("m"),
        errors.RequestTooLarge(10),
        errors.RateLimited("slow down", retry_after_s=1.2),
        errors.UpstreamTimeout("t"),
        errors.LimiterUnavailable("redis"),
    ):
        body = orjson.loads(error.body())
        assert set(body["error"]) == {"message", "type", "code", "param"}


def test_rate_limited_headers_round_up() -> None:
    headers = errors.RateLimited("x", retry_after_s=1.2).headers()
    assert headers == {"retry-after": "2", "retry-after-ms": "1200"}
    assert errors.RateLimited("x", retry_after_s=None).headers() == {"x-should-retry": "false"}
