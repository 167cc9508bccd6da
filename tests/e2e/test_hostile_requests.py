"""Hostile request bodies against the running gateway (OWASP API4/API8, RELIABILITY R23/R24).

Over the size cap with a declared `Content-Length` (refused before a byte of body is read) or
chunked without one (refused once the cap is passed, so the gateway reads at most about the
cap): 413. Malformed JSON, wrong types and absurd parameters: 400 `invalid_request_error`
naming the `param` when there is one (a body that does not parse has none), with nothing sent
upstream. Odd but parseable input (NUL characters, lone surrogates, huge numbers where the
gateway does not look): whatever the upstream says, never a 5xx of the gateway's own.
`tests/e2e/test_errors.py` holds the everyday cases; this file the adversarial ones.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.e2e.conftest import MAX_BODY_BYTES
from tests.e2e.stack import Stack
from tests.e2e.test_errors import assert_error, post, still_serving

pytestmark = pytest.mark.parametrize("stack", ["embedded"], indirect=True)

CHAT = "/v1/chat/completions"
HEAD = b'{"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]'


def raw_request(gw: Stack, head: bytes, body_chunks: int = 0) -> tuple[bytes, int]:
    """Send `head` (request line and headers) on a socket, then up to `body_chunks` chunks of
    64 KiB of chunked body until the gateway answers; (its answer, body bytes sent)."""
    host, port = gw.base_url.removeprefix("http://").split(":")
    chunk = b"%x\r\n%s\r\n" % (65536, b"a" * 65536)
    sent = 0
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(head)
        conn.settimeout(0.0)
        for _ in range(body_chunks):
            try:
                if conn.recv(1, socket.MSG_PEEK):
                    break  # the answer has begun
            except BlockingIOError:
                pass
            try:
                conn.sendall(chunk)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
            sent += 65536
        conn.settimeout(10)
        return _read_answer(conn), sent


def _read_answer(conn: socket.socket) -> bytes:
    """One HTTP response with a Content-Length, read whole."""
    data = b""
    while b"\r\n\r\n" not in data and (more := conn.recv(65536)):
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length and (more := conn.recv(65536)):
        body += more
    return head + b"\r\n\r\n" + body


def request_head(gw: Stack, *headers: bytes) -> bytes:
    lines = [b"POST /v1/chat/completions HTTP/1.1", b"host: gateway",
             b"authorization: Bearer " + gw.key.encode(), b"content-type: application/json",
             *headers]  # fmt: skip
    return b"\r\n".join(lines) + b"\r\n\r\n"


def test_declared_length_over_the_cap_is_413_before_the_body(gw: Stack) -> None:
    head = request_head(gw, b"content-length: %d" % (10 * 1024 * 1024))
    started = time.monotonic()
    answer, _ = raw_request(gw, head)  # not one byte of the 10 MiB is sent
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"request_too_large" in answer
    assert time.monotonic() - started < 5
    still_serving(gw)


def test_endless_chunked_body_is_cut_at_the_cap(gw: Stack) -> None:
    cap_chunks = MAX_BODY_BYTES // 65536
    answer, sent = raw_request(gw, request_head(gw, b"transfer-encoding: chunked"), 20 * cap_chunks)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # The gateway stopped reading near the cap: what the client got in before the answer
    # is bounded by the cap plus socket buffers, far below the 20 MiB it was ready to send.
    assert sent < 8 * MAX_BODY_BYTES
    still_serving(gw)


NESTED = 100_000
BAD = [
    # (id, body, param)
    ("max_tokens 10**12", HEAD + b', "max_tokens": 1000000000000}', "max_tokens"),
    ("max_tokens negative", HEAD + b', "max_tokens": -1}', "max_tokens"),
    ("max_tokens zero", HEAD + b', "max_tokens": 0}', "max_tokens"),
    ("max_tokens float", HEAD + b', "max_tokens": 1.5}', "max_tokens"),
    ("max_tokens string", HEAD + b', "max_tokens": "10"}', "max_tokens"),
    ("max_tokens bool", HEAD + b', "max_tokens": true}', "max_tokens"),
    ("max_tokens past 64 bits", HEAD + b', "max_tokens": 1' + b"0" * 30 + b"}", "max_tokens"),
    ("max_completion_tokens 10**12", HEAD + b', "max_completion_tokens": 1000000000000}',
     "max_completion_tokens"),
    ("stream as a string", HEAD + b', "stream": "true"}', "stream"),
    ("tools not a list", HEAD + b', "tools": "all"}', "tools"),
    ("model a number", b'{"model": 5, "messages": [{"role": "user"}]}', "model"),
    ("model a list", b'{"model": ["a"], "messages": [{"role": "user"}]}', "model"),
    ("model empty", b'{"model": "", "messages": [{"role": "user"}]}', "model"),
    ("huge array of non-messages", b'{"model": "m", "messages": [' + b",".join([b"1"] * 200_000)
     + b"]}", "messages[0]"),
    ("role a number", b'{"model": "m", "messages": [{"role": 5}]}', "messages[0].role"),
    ("nested 100k deep in a field", b'{"model": "m", "messages": ' + b"[" * NESTED
     + b"]" * NESTED + b"}", None),
    ("nested 100k deep", b"[" * NESTED + b"]" * NESTED, None),
    ("nested objects 100k deep", b'{"a":' * NESTED + b"1" + b"}" * NESTED, None),
    ("raw NUL byte", HEAD[:-1] + b', "user": "a\x00b"}', None),
    ("invalid UTF-8", b'{"model": "mistral-small-latest\xff\xfe", "messages": []}', None),
    ("truncated UTF-8", HEAD[:-1] + b', "user": "\xe2\x82"}', None),
    ("a JSON string", b'"hello"', None),
    ("NaN", HEAD + b', "max_tokens": NaN}', None),
    ("duplicate-free garbage", b"\x00" * 1000, None),
]  # fmt: skip


@pytest.mark.parametrize(("body", "param"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_malformed_and_absurd_bodies_are_400(gw: Stack, body: bytes, param: str | None) -> None:
    assert len(body) <= MAX_BODY_BYTES
    response = post(gw, CHAT, content=body, headers={"content-type": "application/json"})
    error = assert_error(response, 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert gw.sim_requests("sim-plateforme") == []


ODD = [
    ("escaped NUL in content", HEAD[:-3] + b'\\u0000"}]}'),
    ("escaped NUL in the model", b'{"model": "mistral\\u0000small", "messages": [{"role": "u"}]}'),
    ("lone surrogate", HEAD[:-3] + b'\\ud800"}]}'),
    ("n 10**12", HEAD + b', "n": 1000000000000}'),
    ("temperature 1e308", HEAD + b', "temperature": 1e308}'),
    ("10k stop strings", HEAD + b', "stop": [' + b",".join([b'"x"'] * 10_000) + b"]}"),
    ("a huge prompt", HEAD[:-3] + b"word " * 150_000 + b'"}]}'),
    ("a message with 10k keys", b'{"model": "mistral-small-latest", "messages": [{"role": "user",'
     + b",".join(b'"k%d": 1' % i for i in range(10_000)) + b"}]}"),
    ("embeddings: 10k empty lists", b'{"model": "mistral-embed", "input": ['
     + b",".join([b"[]"] * 10_000) + b"]}"),
]  # fmt: skip


@pytest.mark.parametrize("body", [c[1] for c in ODD], ids=[c[0] for c in ODD])
def test_odd_but_parseable_bodies_are_never_a_gateway_5xx(gw: Stack, body: bytes) -> None:
    path = "/v1/embeddings" if b"mistral-embed" in body else CHAT
    response = post(gw, path, content=body, headers={"content-type": "application/json"})
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert_error(response, response.status_code)
    still_serving(gw)
