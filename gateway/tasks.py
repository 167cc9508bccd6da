"""Side effects that outlive the request: a task set owned by the app lifespan.

Settlement (and, later, ledger writes) must happen even when the client hangs up mid-stream,
so they never run in the request's own task, which the server cancels on disconnect. They run
here; shutdown waits for them. A failing task is logged once here, never raised at a client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("gateway.tasks")


class BackgroundTasks:
    """Spawn fire-and-forget coroutines that shutdown still waits for."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Run `coroutine` in the background; keep a reference until it finishes."""
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("background task %s failed", task.get_name(), exc_info=error)

    @property
    def pending(self) -> int:
        """How many tasks are still running."""
        return len(self._tasks)

    async def drain(self, timeout_s: float | None = None) -> None:
        """Wait for every task (shutdown, tests)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
