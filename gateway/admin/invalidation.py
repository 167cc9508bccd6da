"""Propagation: an admin change reaches every gateway replica's caches within about a second.

A change publishes `{"tenant": id}` or `{"key": hash}` on a Redis channel; every gateway
process subscribes and drops those entries from its principal cache, so the next request reads
the database again. In embedded mode (one process) the local cache is invalidated directly.
The cache TTL (`GATEWAY_AUTH_CACHE_TTL_S`) still bounds staleness if a message is lost.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from redis.asyncio import Redis

from gateway.auth.principal import Authenticator

log = logging.getLogger("gateway.admin")


def channel(key_prefix: str) -> str:
    """The invalidation channel (a contract between replicas)."""
    return f"{key_prefix}invalidate:v1"


class Invalidator:
    """Publishes invalidations and applies the ones it receives."""

    def __init__(
        self, auth: Authenticator, redis: Redis | None = None, *, key_prefix: str = ""
    ) -> None:
        self.auth = auth
        self.redis = redis
        self.channel = channel(key_prefix)
        self.received = 0

    def apply(self, message: dict[str, str]) -> None:
        """Drop what a message names from the local cache."""
        if "tenant" in message:
            self.auth.invalidate_tenant(message["tenant"])
        elif "key" in message:
            self.auth.invalidate(message["key"])

    async def publish(self, *, tenant: str | None = None, key_hash: str | None = None) -> None:
        """Invalidate here and on every other replica."""
        message = {"tenant": tenant} if tenant else {"key": key_hash or ""}
        self.apply(message)
        if self.redis is not None:
            try:
                await self.redis.publish(self.channel, orjson.dumps(message))
            except Exception as exc:  # replicas fall back on the cache TTL
                log.warning("invalidation not published (%s); TTL applies", exc)

    async def listen_forever(self) -> None:
        """Background task: apply invalidations from other replicas; reconnects on error."""
        if self.redis is None:
            return
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    async for item in pubsub.listen():
                        if item.get("type") != "message":
                            continue
                        self.received += 1
                        try:
                            self.apply(orjson.loads(item["data"]))
                        except (orjson.JSONDecodeError, TypeError):
                            log.warning("ignored a malformed invalidation message")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("invalidation listener lost Redis (%s); reconnecting", exc)
                await asyncio.sleep(1.0)
