"""Admission limits: token buckets reserved at admit, settled at completion.

`Limiter` is the contract; `MemoryLimiter` (in-process) and `RedisLimiter` (shared) keep it,
and `FailoverLimiter` decides what a Redis outage means. See `limiter.py` for the semantics.
"""

from gateway.limits.failover import FailoverLimiter, local_share
from gateway.limits.limiter import (
    BucketSpec,
    BucketState,
    ConcurrencySpec,
    Decision,
    Limiter,
    Reservation,
)
from gateway.limits.memory import MemoryLimiter
from gateway.limits.redis import RedisLimiter, bucket_key

__all__ = [
    "BucketSpec",
    "BucketState",
    "ConcurrencySpec",
    "Decision",
    "FailoverLimiter",
    "Limiter",
    "MemoryLimiter",
    "RedisLimiter",
    "Reservation",
    "bucket_key",
    "local_share",
]
