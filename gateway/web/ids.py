"""Request ids: gateway-generated, time-ordered, unique; the ledger key of every request.

Never the client's or the upstream's id. Returned as `x-request-id` on every response.
"""

from __future__ import annotations

import os
import time

REQUEST_ID_HEADER = b"x-request-id"


def new_request_id() -> str:
    """A 32-hex-char id: 48 bits of milliseconds then 80 random bits, so ids sort by time."""
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"
