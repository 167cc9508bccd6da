"""The official SDKs' own retries against the gateway's 429s: they wait as long as told, then
succeed; a request that can never fit is refused once and not retried (where the SDK allows).

Each SDK gets a fresh tenant on the running stack, in both modes (in-process buckets and Redis):
`--rpm 60 --rpm-burst 2` (two at once, then one per second) and a token bucket of 100
(`--tpm-burst 100`, refilled fast enough never to bind), so `max_tokens=1000` can never fit.
A never-fitting request is refused before any bucket is touched (a denied reserve changes
nothing), so the tests sharing a tenant do not disturb each other. Every HTTP attempt the SDK
makes is recorded by an `httpx.Client` event hook passed as the SDK's HTTP client, with a
per-call header so attempts group by the SDK call they belong to.

What the SDKs do with a 429, from their installed sources:
- openai 3.x (`_base_client.py`): retries 429 up to `max_retries` (2) times unless
  `x-should-retry: false`; sleeps exactly `retry-after-ms` (else `retry-after`) when it is in
  (0, 120] s, with no jitter; otherwise its own 0.5 s·2^n backoff, jittered down by up to 25%.
- mistralai 3.x (`client/utils/retries.py`): no retries unless given a `RetryConfig`; then
  retries 429/5xx until `max_elapsed_time`, sleeping exactly `retry-after-ms` (else
  `Retry-After`) when > 0, else its own backoff. It never reads `x-should-retry`.

The response hook fires once headers arrive, before the SDK reads the body and starts its
sleep, so "next request − previous response" can only overstate the SDK's wait: a gap shorter
than the advertised time (minus clock slack) would mean a retry came early.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TypeVar

import httpx
import openai
import pytest
from mistralai.client import Mistral
from mistralai.client.errors import SDKError
from mistralai.client.models import ChatCompletionResponse
from mistralai.client.utils import BackoffStrategy, RetryConfig
from openai.types.chat import ChatCompletion

from tests.e2e.stack import Stack, create_tenant

LIMITS = ("--rpm", "60", "--rpm-burst", "2", "--tpm", "600000", "--tpm-burst", "100")
CALL_NAMES = ["0", "1", "2", "3"]  # concurrent SDK calls against a bucket of two
REFILL_MS = 1_000  # --rpm 60: one request per second
SLACK_S = 0.02  # clock slack between the hook's timestamps and the SDK's sleep
LATE_S = 1.0  # a retry that waited this much longer than told did not use the header
CALL_HEADER = "x-test-call"
MESSAGES = [{"role": "user", "content": "Say something about patience."}]

T = TypeVar("T")


@dataclass
class Attempt:
    """One HTTP request the SDK sent, and what came back."""

    call: str
    sent_s: float
    sent_headers: dict[str, str]
    status: int | None = None
    answered_s: float | None = None
    headers: dict[str, str] = field(default_factory=dict)


class Recorder:
    """An `httpx.Client` whose event hooks log every attempt with monotonic timestamps."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, Attempt] = {}
        self.attempts: list[Attempt] = []
        hooks = {"request": [self._on_request], "response": [self._on_response]}
        self.http = httpx.Client(event_hooks=hooks, timeout=30)

    def _on_request(self, request: httpx.Request) -> None:
        sent = {k.lower(): v for k, v in request.headers.items()}
        attempt = Attempt(sent.get(CALL_HEADER, "?"), time.monotonic(), sent)
        with self._lock:
            self._open[id(request)] = attempt
            self.attempts.append(attempt)

    def _on_response(self, response: httpx.Response) -> None:
        now = time.monotonic()
        with self._lock:
            attempt = self._open.pop(id(response.request))
        attempt.status = response.status_code
        attempt.answered_s = now
        attempt.headers = {k.lower(): v for k, v in response.headers.items()}

    def by_call(self) -> dict[str, list[Attempt]]:
        """Attempts grouped by the SDK call that made them, in the order they were sent."""
        calls: dict[str, list[Attempt]] = {}
        for attempt in sorted(self.attempts, key=lambda a: a.sent_s):
            calls.setdefault(attempt.call, []).append(attempt)
        return calls


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    recording = Recorder()
    with recording.http:
        yield recording


def concurrently(call: Callable[[str], T], names: Sequence[str]) -> list[T]:
    """Run `call(name)` for every name at once, each in its own thread; results in order."""
    with ThreadPoolExecutor(len(names)) as pool:
        return list(pool.map(call, names))


@pytest.fixture(scope="module")
def keys(stack: Stack) -> dict[str, str]:
    """One fresh tenant per SDK on this stack: SDK name -> key. (Each tenant costs two CLI
    runs; the two tenants are made side by side to halve that.)"""
    sdks = ["openai", "mistral"]
    run = uuid.uuid4().hex[:8]
    made = concurrently(lambda sdk: create_tenant(stack.env, f"retries-{sdk}-{run}", *LIMITS), sdks)
    return {sdk: key for sdk, (_, key) in zip(sdks, made, strict=True)}


def advertised_wait_s(attempt: Attempt) -> float:
    """The wait a 429 asked for, after checking both headers say the same thing."""
    wait_ms = int(attempt.headers["retry-after-ms"])
    assert 0 < wait_ms <= REFILL_MS  # when one more request fits: at most one refill away
    assert int(attempt.headers["retry-after"]) == math.ceil(wait_ms / 1000)
    assert "x-should-retry" not in attempt.headers
    return wait_ms / 1000


def assert_waited_as_told(recorder: Recorder) -> int:
    """Every call ended in a 200, and every retry came no earlier than its 429 said (nor
    much later: the SDK used the header, not its own backoff). Returns the 429 count."""
    calls = recorder.by_call()
    assert sorted(calls) == CALL_NAMES
    refused = 0
    for call, attempts in calls.items():
        assert attempts[-1].status == 200, f"call {call} ended with {attempts[-1].status}"
        for before, after in pairwise(attempts):
            assert before.status == 429, f"call {call} retried after a {before.status}"
            assert before.answered_s is not None
            refused += 1
            wait_s = advertised_wait_s(before)
            gap_s = after.sent_s - before.answered_s
            assert gap_s >= wait_s - SLACK_S, f"call {call} came back {wait_s - gap_s:.3f} s early"
            assert gap_s <= wait_s + LATE_S, f"call {call} waited {gap_s:.3f} s for {wait_s} s"
    return refused


def test_openai_sdk_waits_retry_after_and_succeeds(
    gw: Stack, keys: dict[str, str], recorder: Recorder
) -> None:
    sdk = openai.OpenAI(
        base_url=f"{gw.base_url}/v1", api_key=keys["openai"], http_client=recorder.http
    )
    assert sdk.max_retries == 2  # the default: three attempts per call

    def call(name: str) -> ChatCompletion:
        return sdk.chat.completions.create(
            model="mistral-small-latest",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=4,
            extra_headers={CALL_HEADER: name},
        )

    completions = concurrently(call, CALL_NAMES)
    assert all(c.choices[0].message.content for c in completions)
    # Two of four fit at once; the other two each waited, and one of those (losing the race
    # for the first refilled request) may wait twice: still within the default two retries.
    assert assert_waited_as_told(recorder) >= len(CALL_NAMES) - 2
    for attempts in recorder.by_call().values():  # the SDK's own count of its retries
        counts = [int(a.sent_headers["x-stainless-retry-count"]) for a in attempts]
        assert counts == list(range(len(attempts))) and len(attempts) <= 3


def test_mistral_sdk_with_retry_config_waits_retry_after_and_succeeds(
    gw: Stack, keys: dict[str, str], recorder: Recorder
) -> None:
    # mistralai retries nothing unless the caller passes a RetryConfig. Its own backoff here
    # starts at 50 ms, so a retry that ignored the headers would show up as early.
    backoff = BackoffStrategy(50, 60_000, 1.5, 20_000, jitter_ms=0)
    sdk = Mistral(
        api_key=keys["mistral"],
        server_url=gw.base_url,
        client=recorder.http,
        retry_config=RetryConfig("backoff", backoff, retry_connection_errors=False),
    )

    def call(name: str) -> ChatCompletionResponse:
        return sdk.chat.complete(
            model="mistral-small-latest",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=4,
            http_headers={CALL_HEADER: name},
        )

    completions = concurrently(call, CALL_NAMES)
    assert all(c.choices[0].message.content for c in completions)
    assert assert_waited_as_told(recorder) >= len(CALL_NAMES) - 2


def assert_never_fits(attempt: Attempt) -> None:
    assert attempt.status == 429
    assert attempt.headers["x-should-retry"] == "false"
    assert "retry-after" not in attempt.headers and "retry-after-ms" not in attempt.headers


def test_openai_sdk_does_not_retry_a_request_that_can_never_fit(
    gw: Stack, keys: dict[str, str], recorder: Recorder
) -> None:
    sdk = openai.OpenAI(
        base_url=f"{gw.base_url}/v1", api_key=keys["openai"], http_client=recorder.http
    )
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.chat.completions.create(
            model="mistral-small-latest",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=1000,
        )
    assert refused.value.code == "rate_limit_exceeded"
    assert "can never be admitted" in refused.value.message
    assert len(recorder.attempts) == 1  # x-should-retry: false overrides its retry-on-429
    assert_never_fits(recorder.attempts[0])


def test_mistral_sdk_retries_a_request_that_can_never_fit_until_its_deadline(
    gw: Stack, keys: dict[str, str], recorder: Recorder
) -> None:
    """A limit of mistralai, asserted so a change shows up: it ignores `x-should-retry` and,
    with a RetryConfig, re-sends a never-fitting request on its own backoff until
    `max_elapsed_time`, then raises the last 429. The gateway refuses each one again."""
    backoff = BackoffStrategy(100, 1_000, 2.0, 250, jitter_ms=0)
    sdk = Mistral(api_key=keys["mistral"], server_url=gw.base_url, client=recorder.http)
    with pytest.raises(SDKError) as refused:
        sdk.chat.complete(
            model="mistral-small-latest",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=1000,
            retries=RetryConfig("backoff", backoff, retry_connection_errors=False),
        )
    assert refused.value.status_code == 429
    assert len(recorder.attempts) > 1
    for attempt in recorder.attempts:
        assert_never_fits(attempt)
