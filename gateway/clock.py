"""Time, injected: the system clock here, a fake one in tests."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Wall time for records and monotonic time for durations."""

    def now_s(self) -> float:
        """Seconds since the epoch (UTC)."""
        ...

    def monotonic_s(self) -> float:
        """Monotonic seconds, for durations and TTLs."""
        ...


class SystemClock:
    """The real clock."""

    def now_s(self) -> float:
        return time.time()

    def monotonic_s(self) -> float:
        return time.monotonic()
