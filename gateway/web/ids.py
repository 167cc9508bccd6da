"""Request ids: gateway-generated, time-ordered, unique; the ledger key of every request.

Never the client's or the upstream's id. Returned as `x-request-id` on every response.
"""

from __future__ import annotations

import os
import random
import time

REQUEST_ID_HEADER = b"x-request-id"


_random = random.Random()  # seeded from the OS: once per process, and again in a forked child
os.register_at_fork(after_in_child=_random.seed)


def new_request_id() -> str:
    """A 32-hex-char id: 48 bits of milliseconds then 80 random bits, so ids sort by time.

    The bits come from a per-process generator seeded from the OS: ids must be unique, not
    secret (every response carries its own), and this skips a system call per request."""
    return f"{time.time_ns() // 1_000_000:012x}{_random.getrandbits(80):020x}"
