"""An upstream nobody listens on: 502 in OpenAI's shape."""

from __future__ import annotations

import httpx

from tests.e2e.stack import Stack, cli, last_line
from tests.e2e.test_errors import assert_error


def test_unreachable_upstream_is_502(gw: Stack) -> None:
    # a tenant without residency limits can reach the (dead) us deployment
    cli(gw.env, "tenants", "create", f"anywhere-{gw.mode}", "--residency", "any")
    key = last_line(cli(gw.env, "keys", "create", f"anywhere-{gw.mode}"))
    response = httpx.post(
        f"{gw.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "dead-model", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert_error(response, 502, "upstream_unavailable")
