"""The one backoff helper: which failures are retried, and how long to wait before the next try.

Full-jitter exponential backoff (sleep uniform in [0, min(cap, base * 2**n)]), so clients that
failed together do not come back together; an upstream's `Retry-After` (seconds or an HTTP
date) is read here too.
"""

from __future__ import annotations

import math
import random
from datetime import UTC
from email.utils import parsedate_to_datetime

from gateway.errors import UpstreamError, UpstreamRejected


def full_jitter_s(retry: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """The wait before retry number `retry` (0 for the first retry)."""
    return rng.uniform(0.0, min(cap_s, base_s * (2**retry)))


def retry_after_s(value: str | None, now_s: float) -> float | None:
    """Seconds an upstream's `Retry-After` asks for; None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:  # "nan" and "inf" parse as floats but are no answer
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" or no zone: HTTP dates are GMT, not local time
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now_s)


def is_retryable(error: UpstreamError, *, retry_on_500: bool) -> bool:
    """Connect errors, timeouts before the first byte, 429, 502, 503, 504 (and 500 if asked)."""
    if isinstance(error, UpstreamRejected) and error.status == 500:
        return retry_on_500
    return bool(getattr(error, "retryable", False))


def counts_against_health(error: UpstreamError) -> bool:
    """Whether a failed attempt says the deployment is unwell (a 4xx other than 429 or 408
    is the request's fault, and a 429 is the upstream protecting itself, not failing)."""
    if isinstance(error, UpstreamRejected):
        return error.status >= 500 or error.status == 408
    return True
