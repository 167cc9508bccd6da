"""Every error case answers its status with an OpenAI-format body, and the gateway keeps serving."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.e2e.conftest import MAX_BODY_BYTES
from tests.e2e.stack import Stack, cli, last_line

CHAT = [{"role": "user", "content": "hello"}]


def post(gw: Stack, path: str, *, key: str | None = "default", **kwargs: object) -> httpx.Response:
    headers = dict(kwargs.pop("headers", {}) or {})  # type: ignore[arg-type]
    if key is not None:
        headers["authorization"] = f"Bearer {gw.key if key == 'default' else key}"
    return httpx.post(f"{gw.base_url}{path}", headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code
    assert len(response.headers["x-request-id"]) == 32
    assert "Traceback" not in response.text
    return error


def still_serving(gw: Stack) -> None:
    ok = post(gw, "/v1/chat/completions", json={"model": "mistral-small-latest", "messages": CHAT})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        (None, "Missing API key"),
        ("not-a-key", "Invalid API key"),
        ("gwk_" + "A" * 49, "Invalid API key"),
    ],
)
def test_bad_keys_are_401(gw: Stack, key: str | None, fragment: str) -> None:
    response = post(gw, "/v1/chat/completions", key=key, json={"model": "x", "messages": CHAT})
    error = assert_error(response, 401, "invalid_api_key")
    assert fragment in error["message"]
    assert response.headers["www-authenticate"].startswith("Bearer")
    still_serving(gw)


def test_revoked_key_is_401(gw: Stack) -> None:
    key = last_line(cli(gw.env, "keys", "create", gw.tenant_id, "--name", "to-revoke"))
    auth = {"authorization": f"Bearer {key}"}
    assert httpx.get(f"{gw.base_url}/v1/models", headers=auth).status_code == 200
    listing = cli(gw.env, "keys", "list", gw.tenant_id)
    key_id = next(line.split()[0] for line in listing.splitlines() if "to-revoke" in line)
    cli(gw.env, "keys", "revoke", key_id)
    time.sleep(0.5)  # this stack's auth cache trusts a lookup for 0.2 s
    response = httpx.get(f"{gw.base_url}/v1/models", headers=auth)
    assert "revoked" in assert_error(response, 401)["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "mistral-small-latest", "messages": [', None),
        (b"[1, 2]", None),
        (b"", None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "mistral-small-latest", "messages": "hi"}', "messages"),
        (b'{"model": "mistral-small-latest", "messages": []}', "messages"),
        (b'{"model": "mistral-small-latest", "messages": [{"content": "x"}]}', "messages[0].role"),
        (
            b'{"model": "mistral-small-latest", "messages": [{"role": "user"}], "max_tokens": 1000000000}',
            "max_tokens",
        ),
        (
            b'{"model": "mistral-small-latest", "messages": [{"role": "user"}], "stream": "yes"}',
            "stream",
        ),
    ],
)
def test_malformed_requests_are_400(gw: Stack, body: bytes, param: str | None) -> None:
    response = post(
        gw, "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    error = assert_error(response, 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert gw.sim_requests("sim-plateforme") == []  # nothing went upstream
    still_serving(gw)


def test_unknown_model_is_404(gw: Stack) -> None:
    response = post(gw, "/v1/chat/completions", json={"model": "nope", "messages": CHAT})
    assert assert_error(response, 404, "model_not_found")["param"] == "model"


def test_model_outside_residency_is_refused_without_leaving(gw: Stack) -> None:
    # the tenant is `eu`; `dead-model` is served only by a us deployment
    response = post(gw, "/v1/chat/completions", json={"model": "dead-model", "messages": CHAT})
    assert_error(response, 403, "residency_unavailable")


def test_body_over_the_limit_is_413(gw: Stack) -> None:
    big = (
        b'{"model": "mistral-small-latest", "messages": [{"role": "user", "content": "'
        + b"a" * (MAX_BODY_BYTES + 10)
        + b'"}]}'
    )
    assert_error(post(gw, "/v1/chat/completions", content=big), 413, "request_too_large")

    def chunked():  # no Content-Length: counted as it arrives
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    assert_error(post(gw, "/v1/chat/completions", content=chunked()), 413, "request_too_large")
    still_serving(gw)


def test_unknown_route_and_method(gw: Stack) -> None:
    assert_error(httpx.get(f"{gw.base_url}/v1/nothing-here"), 404, "not_found")
    assert_error(httpx.delete(f"{gw.base_url}/v1/chat/completions"), 405, "method_not_allowed")


def test_upstream_timeout_is_504(gw: Stack) -> None:
    gw.program_faults("sim-plateforme", [{"hang": "before_headers"}])
    response = post(
        gw, "/v1/chat/completions", json={"model": "mistral-small-latest", "messages": CHAT}
    )
    assert_error(response, 504, "upstream_timeout")
    still_serving(gw)


def test_upstream_unprocessable_is_normalised(gw: Stack) -> None:
    # a field La Plateforme does not know and the gateway does not translate: its 422 comes back
    body = {"model": "mistral-small-latest", "messages": CHAT, "frobnicate": True}
    error = assert_error(post(gw, "/v1/chat/completions", json=body), 422)
    assert "frobnicate" in error["message"]
    assert error["type"] == "invalid_request_error"


def test_stream_cut_mid_way_ends_with_an_error_event(gw: Stack) -> None:
    gw.program_faults("sim-plateforme", [{"drop_after_chunks": 3}])
    with httpx.stream(
        "POST",
        f"{gw.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {gw.key}"},
        json={"model": "mistral-small-latest", "messages": CHAT, "stream": True},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        text = b"".join(response.iter_bytes()).decode()
    assert '"code":"upstream_interrupted"' in text
    assert "[DONE]" not in text
    still_serving(gw)
