"""RetryBudget: retries stay a bounded fraction of requests, per deployment.

A retry after deployment D failed is charged to D. D may be retried away from while its retries
in the sliding window, this one included, stay within `min_retries + ratio x requests that
started on D`; past that, the failure goes back to the client at once. So a failure storm
multiplies upstream traffic by at most (1 + ratio), plus `min_retries` per deployment and
window, instead of by max_attempts.

The window is a ring of one-second slots: O(1) per event, a few hundred bytes per deployment.
"""

from __future__ import annotations

import math


class _Window:
    __slots__ = ("requests", "retries", "slot_s")

    def __init__(self, slots: int) -> None:
        self.slot_s = [-1] * slots  # which whole second each slot currently counts
        self.requests = [0] * slots
        self.retries = [0] * slots

    def _slot(self, now_s: float) -> int:
        second = math.floor(now_s)
        index = second % len(self.slot_s)
        if self.slot_s[index] != second:
            self.slot_s[index] = second
            self.requests[index] = 0
            self.retries[index] = 0
        return index

    def totals(self, now_s: float) -> tuple[int, int]:
        second = math.floor(now_s)
        oldest = second - len(self.slot_s) + 1
        requests = retries = 0
        for index, slot_second in enumerate(self.slot_s):
            if slot_second >= oldest:
                requests += self.requests[index]
                retries += self.retries[index]
        return requests, retries


class RetryBudget:
    """Per-deployment sliding-window accounting of requests and the retries they caused."""

    def __init__(self, *, ratio: float, min_retries: int, window_s: float) -> None:
        self.ratio = ratio
        self.min_retries = min_retries
        self._slots = max(1, math.ceil(window_s))
        self._windows: dict[str, _Window] = {}
        self.refused = 0  # retries the budget did not allow, for metrics

    def _window(self, deployment: str) -> _Window:
        window = self._windows.get(deployment)
        if window is None:
            window = self._windows[deployment] = _Window(self._slots)
        return window

    def record_request(self, deployment: str, now_s: float) -> None:
        """A request's first attempt went to `deployment`."""
        window = self._window(deployment)
        window.requests[window._slot(now_s)] += 1

    def try_retry(self, failed_on: str, now_s: float) -> bool:
        """Charge a retry to `failed_on` if its budget allows one; False when exhausted."""
        window = self._window(failed_on)
        requests, retries = window.totals(now_s)
        if retries + 1 > self.min_retries + self.ratio * requests:
            self.refused += 1
            return False
        window.retries[window._slot(now_s)] += 1
        return True
