"""The failed-login throttle: a fixed window per address, bounded memory, Retry-After exact."""

from __future__ import annotations

import pytest

from gateway.admin.throttle import AuthThrottle
from gateway.errors import RateLimited


def test_throttled_after_the_allowance_until_the_window_ends() -> None:
    throttle = AuthThrottle(max_failures=3, window_s=60)
    for second in (0, 1, 2):
        throttle.check("a", second)
        throttle.failed("a", second)
    with pytest.raises(RateLimited) as refused:
        throttle.check("a", 10)
    assert refused.value.retry_after_s == 50  # the window began with the first failure
    assert refused.value.headers()["retry-after"] == "50"
    throttle.check("b", 10)  # other addresses are not affected
    throttle.check("a", 60)  # the window is over: a fresh allowance
    assert len(throttle) == 0  # "a"'s old window is gone; "b" was never recorded


def test_memory_is_bounded_by_forgetting_the_oldest_window() -> None:
    throttle = AuthThrottle(max_failures=1, window_s=60, max_addresses=100)
    for index in range(10_000):
        throttle.failed(f"10.0.{index // 256}.{index % 256}", index / 1000)
    assert len(throttle) == 100
    throttle.check("10.0.0.0", 10)  # forgotten: the oldest went first
    with pytest.raises(RateLimited):
        throttle.check("10.0.39.15", 10)  # the newest is still throttled
