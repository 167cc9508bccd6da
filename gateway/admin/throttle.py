"""Failed admin logins, throttled per client address (OWASP API2).

Each `/admin/v1` call from an address that has failed authentication `max_failures` times in
the current window (fixed, `window_s` long from that address's first failure) is answered 429
with `Retry-After` until the window ends, *before* its token is looked at: a guess sent while
throttled learns nothing, and costs no database work. Successes neither count nor reset the
window, and other addresses are unaffected. 403 (a valid token with the wrong role) and 503
(the database is down) are not failures.

Memory is bounded: at most `max_addresses` addresses are tracked; when full, the one whose
window started first is forgotten. The key is the socket's peer address: behind a proxy every
client shares the proxy's address, so put the admin API on its own listener or network there.
Failure mode: none; it is a dict in this process, so each replica counts its own failures.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from gateway.errors import RateLimited

MAX_FAILURES = 20
WINDOW_S = 60.0
MAX_ADDRESSES = 10_000


@dataclass(slots=True)
class _Window:
    started_s: float
    failures: int


class AuthThrottle:
    """Counts failed admin authentications per address; refuses throttled addresses."""

    def __init__(
        self,
        *,
        max_failures: int = MAX_FAILURES,
        window_s: float = WINDOW_S,
        max_addresses: int = MAX_ADDRESSES,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._windows: OrderedDict[str, _Window] = OrderedDict()  # oldest window first

    def __len__(self) -> int:
        return len(self._windows)

    def check(self, address: str, now_s: float) -> None:
        """`RateLimited` (429) while `address` is over its failure allowance."""
        window = self._current(address, now_s)
        if window is not None and window.failures >= self.max_failures:
            raise RateLimited(
                "Too many failed admin authentications from this address; try again later.",
                retry_after_s=window.started_s + self.window_s - now_s,
            )

    def failed(self, address: str, now_s: float) -> None:
        """Count one failed authentication from `address`."""
        window = self._current(address, now_s)
        if window is None:
            if len(self._windows) >= self.max_addresses:
                self._windows.popitem(last=False)
            self._windows[address] = _Window(now_s, 1)
        else:
            window.failures += 1

    def _current(self, address: str, now_s: float) -> _Window | None:
        window = self._windows.get(address)
        if window is not None and now_s >= window.started_s + self.window_s:
            del self._windows[address]
            return None
        return window
