"""Active health checks: one background task probing every deployment on its own interval.

Per deployment with `health.enabled`, every `health.interval_s` (the first check right at start,
or as soon as a reload adds or changes the deployment):
- vLLM: `GET /health` at the server root (vLLM serves it beside `/v1`, not under it: a
  `base_url` ending in `/v1` has that suffix dropped);
- La Plateforme and other OpenAI-compatible servers: `GET {base_url}/models` with the
  deployment's own credential, the cheapest authenticated call they have;
- with `health.scrape_load` (vLLM only): `GET /metrics` at the server root as well, read for
  `vllm:num_requests_running` and `vllm:num_requests_waiting` (summed over engines and models).

A check passes on any 2xx, and on 429 (the upstream answered; throttling is the passive
ejection's and Retry-After's business, not a reason to call it dead). Anything else fails: a
timeout (`health.timeout_s`), a refused connection, a 5xx, a 401 (our credential is refused, so
every request would fail too). Hysteresis: `FAILURES_TO_MARK_DOWN` (2) failed checks in a row set
`active_ok = False`, so one lost packet does not take a deployment out; `SUCCESSES_TO_MARK_UP`
(1) passing check brings it back, since passive ejection still guards the first requests.

Results go to the health board the balancer reads (`gateway.routing.health`). Changes of state
are logged once, when they happen, not on every check. The checks that are due run together;
the next round starts when the slowest has ended (at most its `timeout_s`).

Failure mode: nothing escapes the loop; a check that cannot run counts as failed, a scrape that
fails (or a deployment no longer scraped) reports a load of 0, so stale numbers never steer
traffic. A deployment whose checks stop (removed from the config, or `enabled` turned off)
gets `active_ok = True` back: no check means no verdict. Health is per process (see health.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import Deployment

if TYPE_CHECKING:
    from gateway.state import Gateway

log = logging.getLogger("gateway.routing.probes")

FAILURES_TO_MARK_DOWN = 2
SUCCESSES_TO_MARK_UP = 1
IDLE_WAKE_S = 1.0  # the longest sleep, so deployments added by a reload are seen promptly
METRICS_LIMIT_BYTES = 8 * 1024 * 1024  # vLLM's /metrics is mostly histograms: ~100s of KB
RUNNING, WAITING = "vllm:num_requests_running", "vllm:num_requests_waiting"


def server_root(deployment: Deployment) -> str:
    """The vLLM server's root URL: `base_url` without its `/v1` suffix."""
    base = deployment.base
    return base.removesuffix("/v1")


def parse_vllm_load(text: str) -> tuple[int, int]:
    """(running, waiting) from a vLLM `/metrics` page; ValueError when neither is there.

    Only the two gauges' lines are handed to the Prometheus parser, so a page of many
    histograms costs a line scan, not a full parse.
    """
    wanted = [
        line
        for line in text.splitlines()
        if line.startswith((RUNNING, WAITING))
        and line.split("{", 1)[0].split(" ", 1)[0] in (RUNNING, WAITING)
    ]
    totals = {RUNNING: 0.0, WAITING: 0.0}
    seen = False
    for family in text_string_to_metric_families("\n".join(wanted) + "\n"):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
                seen = True
    if not seen:
        raise ValueError(f"no {RUNNING} or {WAITING} samples")
    return round(totals[RUNNING]), round(totals[WAITING])


@dataclass
class _Checked:
    """What the prober remembers about one deployment between checks."""

    deployment: Deployment
    due_s: float
    failures: int = 0
    successes: int = 0
    scrape_failing: bool = False


class HealthProber:
    """Checks every deployment of the gateway's current config; one task for all of them."""

    def __init__(self, gateway: Gateway, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._gateway = gateway
        # A small client of its own: probes never queue behind (or hold) the request pools.
        # With an injected transport (tests) it goes where the upstream clients go.
        self._http = httpx.AsyncClient(
            transport=transport,
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        )
        self._checked: dict[str, _Checked] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the background loop (inside the running event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="health-prober")

    async def stop(self) -> None:
        """Stop the loop and close the client."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._http.aclose()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self.check_due(loop.time())
            except Exception:  # a bug here must not end health checking for good
                log.exception("health checks: unexpected error; continuing")
            next_due = min((c.due_s for c in self._checked.values()), default=float("inf"))
            await asyncio.sleep(min(IDLE_WAKE_S, max(0.0, next_due - loop.time())))

    async def check_due(self, now_s: float) -> None:
        """Run every check that is due at `now_s` (loop time), concurrently."""
        self._follow_config(now_s)
        due = [c for c in self._checked.values() if c.due_s <= now_s]
        for checked in due:
            checked.due_s = now_s + checked.deployment.health.interval_s
        await asyncio.gather(*(self._check(c) for c in due))

    def _follow_config(self, now_s: float) -> None:
        """Start checking new or changed deployments now; forget removed or disabled ones."""
        wanted = {d.name: d for d in self._gateway.routing.config.deployments if d.health.enabled}
        board = self._gateway.attempter.board
        for name in list(self._checked):
            if name not in wanted:
                del self._checked[name]
                board.track((name,))
                health = board[name]
                health.active_ok = True
                health.load_running = health.load_waiting = 0
        for name, deployment in wanted.items():
            checked = self._checked.get(name)
            if checked is None:
                self._checked[name] = _Checked(deployment, due_s=now_s)
            elif checked.deployment != deployment:
                checked.deployment, checked.due_s = deployment, now_s
                if not deployment.health.scrape_load:
                    board[name].load_running = board[name].load_waiting = 0

    async def _check(self, checked: _Checked) -> None:
        deployment = checked.deployment
        self._gateway.attempter.board.track((deployment.name,))
        if deployment.health.scrape_load:
            failure, _ = await asyncio.gather(self._probe(deployment), self._scrape(checked))
        else:
            failure = await self._probe(deployment)
        self._record(checked, failure)

    def _record(self, checked: _Checked, failure: str | None) -> None:
        name = checked.deployment.name
        if self._checked.get(name) is not checked:
            return  # removed or disabled by a reload while this check ran
        health = self._gateway.attempter.board[name]
        if failure is None:
            checked.failures = 0
            checked.successes += 1
            if not health.active_ok and checked.successes >= SUCCESSES_TO_MARK_UP:
                health.active_ok = True
                log.info("deployment %s passes its health check again: back in service", name)
            return
        checked.successes = 0
        checked.failures += 1
        if health.active_ok and checked.failures >= FAILURES_TO_MARK_DOWN:
            health.active_ok = False
            log.warning(
                "deployment %s failed %d health checks in a row (last: %s): "
                "no traffic until one passes",
                name,
                checked.failures,
                failure,
            )

    async def _probe(self, deployment: Deployment) -> str | None:
        """None when the deployment passes, else why it failed."""
        if deployment.provider == "vllm":
            url = server_root(deployment) + "/health"
        else:
            url = deployment.base + "/models"
        try:
            status, _ = await self._get(deployment, url, limit=64 * 1024)
        except Exception as exc:  # every failure to check is a failed check
            return _describe(exc, deployment)
        if 200 <= status < 300 or status == 429:
            return None
        return f"GET {url} answered {status}"

    async def _scrape(self, checked: _Checked) -> None:
        """Update the board's load from vLLM's /metrics; 0 when that fails."""
        deployment = checked.deployment
        health = self._gateway.attempter.board[deployment.name]
        url = server_root(deployment) + "/metrics"
        try:
            status, body = await self._get(deployment, url, limit=METRICS_LIMIT_BYTES)
            if status != 200:
                raise ValueError(f"answered {status}")
            running, waiting = parse_vllm_load(body.decode("utf-8", "replace"))
        except Exception as exc:  # a failed scrape only means the load is unknown
            health.load_running = health.load_waiting = 0
            if not checked.scrape_failing:
                checked.scrape_failing = True
                log.warning(
                    "deployment %s: load scrape of %s failed (%s); its load counts as 0 "
                    "until a scrape works",
                    deployment.name,
                    url,
                    _describe(exc, deployment),
                )
            return
        if self._checked.get(deployment.name) is not checked:
            return  # removed or disabled by a reload while this scrape ran
        health.load_running, health.load_waiting = running, waiting
        if checked.scrape_failing:
            checked.scrape_failing = False
            log.info("deployment %s: load scrape of %s works again", deployment.name, url)

    async def _get(self, deployment: Deployment, url: str, *, limit: int) -> tuple[int, bytes]:
        """Status and (at most `limit` bytes of) body, all within `health.timeout_s`."""
        headers = {"user-agent": "llm-gateway-health"}
        authorization = self._gateway.upstream_headers.get(deployment.name, {}).get("authorization")
        if authorization is not None:
            headers["authorization"] = authorization
        timeout_s = deployment.health.timeout_s
        async with asyncio.timeout(timeout_s):
            request = self._http.build_request("GET", url, headers=headers, timeout=timeout_s)
            response = await self._http.send(request, stream=True)
            try:
                body = bytearray()
                async for chunk in response.aiter_bytes():  # decoded, if gzipped
                    body += chunk
                    if len(body) > limit:
                        raise ValueError(f"body over {limit} bytes")
            finally:
                await response.aclose()
        return response.status_code, bytes(body)


def _describe(exc: Exception, deployment: Deployment) -> str:
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return f"no answer within {deployment.health.timeout_s:g}s"
    return str(exc) or type(exc).__name__
