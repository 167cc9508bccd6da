"""Retry budget: retries per deployment stay within `min_retries + ratio x requests` per window."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.routing.budget import RetryBudget


def granted(budget: RetryBudget, deployment: str, now_s: float, tries: int) -> int:
    return sum(budget.try_retry(deployment, now_s) for _ in range(tries))


def test_min_retries_without_any_request() -> None:
    budget = RetryBudget(ratio=0.2, min_retries=3, window_s=10)
    assert granted(budget, "a", 0.0, 10) == 3
    assert budget.refused == 7


def test_no_min_retries_means_no_free_retry() -> None:
    budget = RetryBudget(ratio=0.2, min_retries=0, window_s=10)
    budget.record_request("a", 0.0)
    assert not budget.try_retry("a", 0.0)


def test_ratio_of_requests() -> None:
    budget = RetryBudget(ratio=0.2, min_retries=0, window_s=10)
    for _ in range(4):
        budget.record_request("a", 0.0)
    assert granted(budget, "a", 0.0, 5) == 0  # 0.8 of a retry is not one
    budget.record_request("a", 0.0)
    assert granted(budget, "a", 0.0, 5) == 1
    for _ in range(5):
        budget.record_request("a", 0.5)
    assert granted(budget, "a", 0.5, 5) == 1


def test_ratio_plus_min() -> None:
    budget = RetryBudget(ratio=0.5, min_retries=2, window_s=10)
    for _ in range(10):
        budget.record_request("a", 1.0)
    assert granted(budget, "a", 1.0, 20) == 7


def test_budgets_are_per_deployment() -> None:
    budget = RetryBudget(ratio=0.0, min_retries=1, window_s=10)
    assert granted(budget, "a", 0.0, 3) == 1
    assert granted(budget, "b", 0.0, 3) == 1


def test_old_retries_leave_the_window() -> None:
    budget = RetryBudget(ratio=0.0, min_retries=2, window_s=10)
    assert granted(budget, "a", 100.0, 3) == 2
    assert granted(budget, "a", 109.99, 3) == 0  # second 100 is still in the window
    assert granted(budget, "a", 110.0, 3) == 2


def test_old_requests_leave_the_window() -> None:
    budget = RetryBudget(ratio=0.5, min_retries=0, window_s=3)
    for _ in range(4):
        budget.record_request("a", 10.2)
    assert granted(budget, "a", 12.9, 1) == 1
    assert granted(budget, "a", 13.0, 5) == 0  # the requests of second 10 are gone
    budget.record_request("a", 13.0)
    budget.record_request("a", 13.0)
    assert granted(budget, "a", 13.5, 5) == 0  # the retry of second 12 still counts
    assert granted(budget, "a", 15.0, 5) == 1  # now only second 13's two requests do


def test_window_slides_one_second_at_a_time() -> None:
    budget = RetryBudget(ratio=0.0, min_retries=1, window_s=2)
    assert budget.try_retry("a", 0.0)
    assert not budget.try_retry("a", 1.0)
    assert budget.try_retry("a", 2.0)
    assert not budget.try_retry("a", 3.9)
    assert budget.try_retry("a", 4.0)


@settings(max_examples=150, deadline=None)
@given(
    ratio=st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.5, 1.0]),
    min_retries=st.integers(0, 5),
    deployments=st.integers(1, 4),
    requests=st.integers(1, 300),
    max_attempts=st.integers(1, 5),
)
def test_a_failure_storm_stays_within_the_bound(
    ratio: float, min_retries: int, deployments: int, requests: int, max_attempts: int
) -> None:
    """Every request fails on every attempt, moving to the next deployment each retry."""
    budget = RetryBudget(ratio=ratio, min_retries=min_retries, window_s=10)
    retries = 0
    for index in range(requests):
        now_s = 50.0 + index * 9.0 / requests  # all within one window
        budget.record_request(f"d{index % deployments}", now_s)
        for attempt in range(max_attempts - 1):
            if not budget.try_retry(f"d{(index + attempt) % deployments}", now_s):
                break
            retries += 1
    assert retries <= ratio * requests + min_retries * deployments
