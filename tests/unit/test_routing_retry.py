"""The backoff helper: full jitter, Retry-After, which failures retry and which count as unwell."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from gateway.errors import (
    UpstreamError,
    UpstreamInterrupted,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.upstream.retry import counts_against_health, full_jitter_s, is_retryable, retry_after_s

NOW_S = 1_700_000_000.0


def rejected(status: int) -> UpstreamRejected:
    return UpstreamRejected(status, "no", type_="api_error", code=None, deployment="a")


@pytest.mark.parametrize("retry", range(7))
def test_full_jitter_stays_within_its_ceiling_and_varies(retry: int) -> None:
    rng = random.Random(retry)
    ceiling_s = min(2.0, 0.05 * 2**retry)
    waits = [full_jitter_s(retry, 0.05, 2.0, rng) for _ in range(500)]
    assert all(0.0 <= w <= ceiling_s for w in waits)
    assert len(set(waits)) > 450
    assert max(waits) > 0.8 * ceiling_s  # the whole range is used, not only its bottom
    assert min(waits) < 0.2 * ceiling_s


def test_full_jitter_with_no_base_is_no_wait() -> None:
    assert full_jitter_s(3, 0.0, 2.0, random.Random(0)) == 0.0


def http_date(seconds_from_now: float) -> str:
    return format_datetime(datetime.fromtimestamp(NOW_S + seconds_from_now, UTC), usegmt=True)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2", 2.0),
        ("0", 0.0),
        ("1.5", 1.5),
        (" 7 ", 7.0),
        ("-3", 0.0),
        (http_date(30), 30.0),
        (http_date(-30), 0.0),  # a date in the past: go now
        ("Tue, 14 Nov 2023 22:13:50 -0000", 30.0),  # no zone is GMT, not local time
        (None, None),
        ("", None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        ("Mon, 99 Foo 2023 99:99:99 GMT", None),
    ],
)
def test_retry_after(value: str | None, seconds: float | None) -> None:
    assert retry_after_s(value, NOW_S) == seconds


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (rejected(429), True),
        (rejected(502), True),
        (rejected(503), True),
        (rejected(504), True),
        (rejected(500), False),
        (rejected(400), False),
        (rejected(401), False),
        (rejected(404), False),
        (rejected(408), False),
        (rejected(422), False),
        (UpstreamTimeout("slow", deployment="a"), True),
        (UpstreamUnavailable("down", deployment="a"), True),
        (UpstreamInterrupted("broke", deployment="a"), False),  # bytes already went out
        (UpstreamError("?", deployment="a"), False),
    ],
    ids=lambda v: (
        type(v).__name__ + str(getattr(v, "status", "")) if not isinstance(v, bool) else ""
    ),
)
def test_is_retryable(error: UpstreamError, retryable: bool) -> None:
    assert is_retryable(error, retry_on_500=False) is retryable


def test_500_is_retried_only_when_configured() -> None:
    assert is_retryable(rejected(500), retry_on_500=True)
    assert not is_retryable(rejected(500), retry_on_500=False)
    assert not is_retryable(rejected(501), retry_on_500=True)


@pytest.mark.parametrize(
    ("error", "counts"),
    [
        (rejected(400), False),
        (rejected(401), False),
        (rejected(404), False),
        (rejected(422), False),
        (rejected(429), False),  # the upstream protecting itself, not failing
        (rejected(408), True),
        (rejected(500), True),
        (rejected(502), True),
        (rejected(503), True),
        (rejected(504), True),
        (UpstreamTimeout("slow", deployment="a"), True),
        (UpstreamUnavailable("down", deployment="a"), True),
        (UpstreamInterrupted("broke", deployment="a"), True),
    ],
    ids=lambda v: (
        type(v).__name__ + str(getattr(v, "status", "")) if not isinstance(v, bool) else ""
    ),
)
def test_counts_against_health(error: UpstreamError, counts: bool) -> None:
    assert counts_against_health(error) is counts
