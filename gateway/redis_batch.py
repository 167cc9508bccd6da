"""`RedisBatcher`: the Redis commands issued in one event-loop turn share one pipeline.

Concept: redis-py spends far more CPU per command on its own plumbing (pool checkout, locks,
retry wrappers, observability hooks) than on the command's bytes. Under load many requests are
ready in the same turn: their reserves, settles and usage appends are queued here and sent as
ONE non-transactional pipeline on one connection, so that plumbing is paid once per batch
instead of once per command. Nothing waits for a batch to fill: the flush is scheduled for the
end of the current turn, so a lone request costs one round trip, as before. Each command keeps
its own result (a reply or its own `ResponseError`); order within a connection is preserved.

Standalone Redis only: a Cluster client splits pipelines by slot, and keeps per-command calls.

Failure mode: the batch is bounded by the client's own socket timeouts (no outer asyncio
timeout: cancelling redis-py inside its connection handshake leaves a connection with an
unread reply in the pool, which would hand one caller's reply to another). A connection error, a timeout or anything the client raises fails every
command of that batch with that exception: callers translate it (the limiter into
`LimiterUnavailable`, the journal into a spooled record). A caller that is cancelled (its
client left) only stops waiting: its command still runs with the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from redis.asyncio import Redis

Command = tuple[Any, ...]


class RedisBatcher:
    """Queue commands; send each event-loop turn's queue as one pipeline."""

    def __init__(self, redis: Redis, *, max_batch: int = 512) -> None:
        self._redis = redis
        self._max_batch = max_batch
        self._queue: list[tuple[Command, asyncio.Future[Any]]] = []
        self._flushing: set[asyncio.Task[None]] = set()

    def call(self, *command: Any) -> asyncio.Future[Any]:
        """Queue one command (e.g. `"EVALSHA", sha, 1, key, arg`); the future gets its reply
        or its exception once the batch it joined has run."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._queue:
            loop.call_soon(self._flush)
        self._queue.append((command, future))
        if len(self._queue) >= self._max_batch:
            self._flush()
        return future

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        if not batch:
            return
        task = asyncio.get_running_loop().create_task(self._run(batch), name="redis.batch")
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _run(self, batch: list[tuple[Command, asyncio.Future[Any]]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for command, _ in batch:
            pipe.execute_command(*command)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            failure = exc if isinstance(exc, Exception) else ConnectionError("batch cancelled")
            for _, future in batch:
                if not future.done():
                    future.set_exception(failure)
                    future.exception()  # retrieved here: a waiter that left never reads it
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
                future.exception()
            else:
                future.set_result(reply)

    async def drain(self) -> None:
        """Wait for the batches in flight (shutdown)."""
        self._flush()
        while self._flushing:
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._flushing, return_exceptions=True)
