"""Config reload: re-read the routing file on SIGHUP or when it changes, and swap it in.

Triggers: `SIGHUP` (when the app runs in the main thread, as under `gateway serve`), and a poll
of the file's (mtime, size, inode) every `poll_s` (1 s). Polling `stat` costs nothing and also
sees a Kubernetes ConfigMap update (a symlink swap, which inotify on the file itself misses).

A reload loads and validates the whole file (`load_config`), loads the tokenizers of any new
upstream model (off the event loop), then calls `Gateway.apply_config`, which swaps everything
in one synchronous step: requests already running keep the plan they made, the deployments in
it stay reachable, and clients of removed or replaced deployments close only after those
requests can have ended (see `gateway.state`). Nothing in flight is dropped.

Failure mode: a file that does not load (bad YAML, a failed validation, unreadable, missing)
is refused with one log line naming every problem, and the running config stays. The same
broken file is not re-read until it changes again (or on SIGHUP). Never raises into the loop.

Not reloaded: the `simulator:` block (the demo's simulated upstream is a process started once
by `gateway serve`; a change is logged and takes effect at the next start) and process
settings (env). `prices:` are seeded into the database at start, so a change there also waits
for a restart.

With `gateway serve --workers N`, each worker process watches the file and reloads on its own
(within about `poll_s` of an edit), so editing the file is all it takes; a bad file is refused
by each worker. SIGHUP sent to the uvicorn *master* does something else: uvicorn replaces the
workers one at a time with fresh processes, which read the file as they start (a bad file fails
the new worker, and uvicorn keeps the old one and logs "aborting the restart"). That loses
per-process state (health board, in-process limits and caches) and cuts streams that outlast
the 25 s graceful shutdown. To reload without restarting, SIGHUP the worker processes by pid;
not every child of the master: the demo's simulator is one too, and SIGHUP would stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.upstream.tokenizer import TokenCounter

if TYPE_CHECKING:
    from gateway.state import Gateway

log = logging.getLogger("gateway.routing.reload")

Signature = tuple[int, int, int]  # mtime_ns, size, inode


def file_signature(path: Path) -> Signature | None:
    """What changes when the file is rewritten or replaced; None when it cannot be read."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


class ConfigReloader:
    """Watches one routing file and applies it to one gateway."""

    def __init__(self, path: Path, gateway: Gateway, *, poll_s: float = 1.0) -> None:
        self.path = path
        self._gateway = gateway
        self._poll_s = poll_s
        self._seen = file_signature(path)
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._signal_tasks: set[asyncio.Task[bool]] = set()
        self._on_sighup = False

    def start(self) -> None:
        """Poll the file, and reload on SIGHUP when this is the main thread (in the loop)."""
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._poll(), name="config-reload-poll")
        if hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread():
            loop.add_signal_handler(signal.SIGHUP, self._sighup)
            self._on_sighup = True

    @property
    def handles_sighup(self) -> bool:
        """Whether SIGHUP triggers a reload in this process (only from the main thread)."""
        return self._on_sighup

    async def stop(self) -> None:
        """Stop watching (a reload under way is cancelled before it swaps anything)."""
        if self._on_sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._on_sighup = False
        tasks = [t for t in (self._task, *self._signal_tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None

    def _sighup(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload("SIGHUP"))
        self._signal_tasks.add(task)
        task.add_done_callback(self._signal_tasks.discard)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            signature = file_signature(self.path)
            if signature == self._seen:
                continue
            if signature is None:
                self._seen = None
                log.error("routing file %s is gone; keeping the running config", self.path)
                continue
            await self.reload("file changed")

    async def reload(self, reason: str) -> bool:
        """Load the file and apply it; False (and one log line) when it is refused."""
        async with self._lock:
            self._seen = file_signature(self.path)  # a change from now on triggers again
            try:
                config = await asyncio.to_thread(load_config, self.path)
                return await self._apply(config, reason)
            except ConfigError as exc:
                problems = "; ".join(str(exc).splitlines())
                log.error(
                    "routing file refused (%s), keeping the running config: %s", reason, problems
                )
            except Exception:  # never let a reload take the process down
                log.exception("routing file reload failed (%s); keeping the running config", reason)
            return False

    async def _apply(self, config: GatewayConfig, reason: str) -> bool:
        gateway = self._gateway
        current = gateway.routing.config
        if config == current:
            log.info("routing file reloaded (%s): no change", reason)
            return True
        if config.simulator != current.simulator:
            log.warning(
                "routing file: the simulator block changed; the simulated upstream is not "
                "restarted by a reload (restart `gateway serve` for that)"
            )
        known = {m for d in current.deployments for m in d.models.values()}
        new_models = {m for d in config.deployments for m in d.models.values()} - known
        if new_models:
            await asyncio.to_thread(TokenCounter.preload, sorted(new_models))
        change = gateway.apply_config(config)
        log.info(
            "routing file reloaded (%s): %d deployments; added %s, removed %s, changed %s",
            reason,
            len(config.deployments),
            list(change.added),
            list(change.removed),
            list(change.changed),
        )
        return True
