"""Admin authentication on every `/admin/v1` route (OWASP API2/API5, RELIABILITY R29).

No token, a malformed or unknown token, a revoked admin token, or a tenant's `gwk_` key: 401 in
the OpenAI error format with `WWW-Authenticate`, on every operation, and nothing is written.
Failed authentications are throttled per client address (`gateway/admin/throttle.py`): past
the allowance an address gets 429 with `Retry-After` for every call, its token unexamined and
no database touched, while other addresses and authenticated-but-forbidden (403) calls are
unaffected.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from gateway.admin.routes import operations
from gateway.admin.throttle import AuthThrottle
from tests.integration.admin_api import ADMIN_TOKEN, AdminApi, admin_api

OPERATIONS = [(op.method, op.path) for op in operations()]
BAD_TOKENS = ["none", "garbage", "unknown-gwa", "bootstrap-plus-one", "revoked", "tenant-key"]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminApi]:
    with admin_api(tmp_path_factory.mktemp("admin-auth")) as running:
        yield running


@pytest.fixture(params=[5])
def throttle(api: AdminApi, request: pytest.FixtureRequest) -> Iterator[AuthThrottle]:
    """A throttle of `param` failures a minute for this test; then the app's own again."""
    own = api.services.auth_throttle
    api.services.auth_throttle = AuthThrottle(max_failures=request.param, window_s=60)
    try:
        yield api.services.auth_throttle
    finally:
        api.services.auth_throttle = own


@pytest.fixture(scope="module")
def tokens(api: AdminApi) -> dict[str, str | None]:
    """Each kind of bad credential (`None`: no Authorization header at all)."""
    issued = api.post("/admin-tokens", json={"name": "to-revoke", "role": "admin"})
    assert issued.status_code == 201, issued.text
    revoked = issued.json()
    assert api.delete(f"/admin-tokens/{revoked['id']}").status_code == 204
    return {
        "none": None,
        "garbage": "not a token",
        "unknown-gwa": "gwa_" + "x" * 43,
        "bootstrap-plus-one": ADMIN_TOKEN + "x",
        "revoked": revoked["token"],
        "tenant-key": api.tenant_key,
    }


def concrete(path: str, tenant_id: str) -> str:
    """`path` with every `{param}` filled (a real tenant, made-up other ids)."""
    values = {"tenant_id": tenant_id, "month": "2025-01"}
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), "some-id"), path)


@pytest.mark.parametrize("throttle", [10_000], indirect=True)  # it fails on purpose
@pytest.mark.parametrize("kind", BAD_TOKENS)
def test_every_route_refuses_bad_credentials(
    api: AdminApi, tokens: dict[str, str | None], throttle: AuthThrottle, kind: str
) -> None:
    before = len(api.audit())
    for method, path in OPERATIONS:
        response = api.request(
            method, concrete(path, api.key_tenant), token=tokens[kind], json={"name": "x"}
        )
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
        error = response.json()["error"]
        assert set(error) == {"message", "type", "code", "param"}
        assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
    assert len(api.audit()) == before  # nothing was done on any of them


def test_repeated_failures_are_throttled_per_address(api: AdminApi, throttle: AuthThrottle) -> None:
    for _ in range(5):
        assert api.request_from("10.0.0.1", "GET", "/tenants", token="gwa_guess").status_code == 401
    throttled = api.request_from("10.0.0.1", "GET", "/tenants", token="gwa_guess")
    assert throttled.status_code == 429, throttled.text
    assert 1 <= int(throttled.headers["retry-after"]) <= 60
    assert throttled.json()["error"]["type"] == "rate_limit_error"
    # Throttled means the token is not examined: the right one is refused too.
    assert api.request_from("10.0.0.1", "GET", "/tenants").status_code == 429
    # Another address is served, and keeps its own allowance.
    assert api.request_from("10.0.0.2", "GET", "/tenants").status_code == 200
    assert api.request_from("10.0.0.2", "GET", "/tenants", token=None).status_code == 401


def test_a_throttled_call_does_no_database_work(api: AdminApi, throttle: AuthThrottle) -> None:
    for _ in range(5):
        api.request_from("10.0.0.3", "GET", "/audit", token=None)
    sessions = api.services.sessions

    def refuse() -> None:
        raise AssertionError("a throttled call opened a database session")

    api.services.sessions = refuse  # type: ignore[assignment]
    try:
        assert api.request_from("10.0.0.3", "GET", "/audit").status_code == 429
    finally:
        api.services.sessions = sessions


def test_forbidden_and_successful_calls_do_not_count(api: AdminApi, throttle: AuthThrottle) -> None:
    for _ in range(10):  # a finance token on a write: authenticated, then 403
        denied = api.post("/tenants", json={"name": "nope"}, token=api.finance)
        assert denied.status_code == 403, denied.text
        assert api.get("/tenants").status_code == 200
    assert len(throttle) == 0
