"""Every Prometheus metric of the gateway, defined once, and the `/metrics` exposition.

Names are `gateway_<thing>_<unit>`. Labels are bounded: tenant ids, public model names,
deployment names, status codes and fixed reason words — never request ids or key material.
Most request metrics are recorded in one place, `observe_call`, from the finished usage record
(the ledger already has every fact), so the hot path pays a handful of label lookups once.

The request path does not touch prometheus-client's values itself: `add` and `observe` sum its
increments and observations per series in plain dicts (a histogram observation is one C
`bisect` and two additions), and `apply_batched` moves those sums into the Prometheus metrics,
one locked update per series and bucket instead of two or three per request: before every
exposition of this process, every second (`apply_batched_forever`), and at shutdown. Each
locked update through prometheus-client's own calls cost ~5k instructions, and a request made
about twenty. In multiprocess mode another worker's last second may be missing from a scrape.

Several workers (`gateway serve --workers N`): `serve` sets PROMETHEUS_MULTIPROC_DIR before the
workers start, prometheus-client then keeps counters in shared files, and `/metrics` merges
them (`MultiProcessCollector`). Gauges that describe one process's view (deployment health,
limiter breaker) come from a per-process collector and carry a `pid` label in that mode.
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.settings import prometheus_multiproc_dir

MULTIPROCESS = prometheus_multiproc_dir() is not None
_FAST = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_SLOW = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

REQUESTS = Counter(
    "gateway_requests_total",
    "Admitted requests by outcome.",
    ["tenant", "model", "deployment", "status"],
)
REQUEST_SECONDS = Histogram(
    "gateway_request_seconds", "Whole request as the client saw it.", ["model"], buckets=_SLOW
)
UPSTREAM_SECONDS = Histogram(
    "gateway_upstream_seconds",
    "Upstream time to response headers (the final attempt).",
    ["deployment"],
    buckets=_SLOW,
)
OVERHEAD_SECONDS = Histogram(
    "gateway_overhead_seconds",
    "The gateway's own time before the upstream call: auth, parse, route, admit.",
    buckets=_FAST,
)
TTFT_SECONDS = Histogram(
    "gateway_ttft_seconds", "Time to the first streamed chunk.", ["model"], buckets=_SLOW
)
TOKENS = Counter("gateway_tokens_total", "Tokens by direction.", ["tenant", "model", "direction"])
COST_MICROS = Counter(
    "gateway_cost_micros_total", "Cost in micro-units.", ["tenant", "model", "currency"]
)
UNPRICED = Counter("gateway_unpriced_requests_total", "Requests without a price.", ["model"])
ESTIMATED = Counter(
    "gateway_token_source_total", "Requests by where their token counts came from.", ["source"]
)
LIMITER_DECISIONS = Counter(
    "gateway_limiter_decisions_total",
    "Admission decisions; reason is the bucket that refused.",
    ["result", "reason"],
)
ATTEMPTS = Counter(
    "gateway_upstream_attempts_total",
    "Upstream attempts by deployment, why it was chosen, and how it ended.",
    ["deployment", "reason", "outcome"],
)
REDIS_SECONDS = Histogram(
    "gateway_redis_seconds", "Limiter calls to Redis (or the local buckets).", ["op"], buckets=_FAST
)
DB_SECONDS = Histogram("gateway_db_seconds", "Database calls.", ["op"], buckets=_SLOW)
LEDGER_ROWS = Counter("gateway_ledger_rows_total", "Usage rows committed by this writer.")
LEDGER_LAG = Gauge(
    "gateway_ledger_lag_seconds",
    "Age of the newest record in the last committed batch.",
    multiprocess_mode="max",
)
LEDGER_FAILURES = Counter("gateway_ledger_failures_total", "Ledger batches that failed.")
SPOOLED = Gauge(
    "gateway_spool_records",
    "Usage records waiting in the local spool file.",
    multiprocess_mode="livesum",
)
BUDGET_ALERTS = Counter(
    "gateway_budget_alerts_total", "Budget thresholds crossed.", ["tenant", "threshold"]
)


# Labelled children by (metric, label values): `labels()` validates and locks on every call,
# this is one dict lookup. Bounded like the labels themselves (tenants × models × deployments
# × statuses); a new tenant or config adds entries, as it adds series to the metrics.
_children: dict[tuple[object, tuple[str, ...]], Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, cached."""
    child = _children.get((metric, labels))
    if child is None:
        child = _children[(metric, labels)] = metric.labels(*labels)
    return child


class _Observed:
    """One histogram series' observations since the last `apply_batched`."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.total = 0.0


_added: dict[tuple[Any, tuple[str, ...]], float] = {}
_observed: dict[tuple[Any, tuple[str, ...]], _Observed] = {}


def add(metric: Counter, labels: tuple[str, ...], amount: float = 1) -> None:
    """`metric.labels(*labels).inc(amount)`, applied by the next `apply_batched`."""
    key = (metric, labels)
    _added[key] = _added.get(key, 0) + amount


def observe(metric: Histogram, labels: tuple[str, ...], value: float) -> None:
    """`metric.labels(*labels).observe(value)`, applied by the next `apply_batched`."""
    series = _observed.get((metric, labels))
    if series is None:
        series = _observed[(metric, labels)] = _Observed(tuple(metric._upper_bounds))
    # prometheus-client counts an observation in the first bucket whose bound is >= it.
    series.counts[bisect_left(series.bounds, value)] += 1
    series.total += value


def apply_batched() -> None:
    """Move what `add` and `observe` summed into the Prometheus metrics."""
    global _added, _observed
    added, _added = _added, {}
    observed, _observed = _observed, {}
    for (metric, labels), amount in added.items():
        (child(metric, *labels) if labels else metric).inc(amount)
    for (metric, labels), series in observed.items():
        histogram = child(metric, *labels) if labels else metric
        # Its buckets and sum, as Histogram.observe updates them (held by a unit test).
        for bucket, count in zip(histogram._buckets, series.counts, strict=True):
            if count:
                bucket.inc(count)
        histogram._sum.inc(series.total)


async def apply_batched_forever(interval_s: float = 1.0) -> None:
    """Background task: `apply_batched` every `interval_s`."""
    while True:
        await asyncio.sleep(interval_s)
        apply_batched()


def observe_call(record: Any, *, overhead_s: float | None) -> None:
    """Everything about one finished call, from its usage record."""
    model, tenant, deployment = record.model, record.tenant_id, record.deployment or "none"
    add(REQUESTS, (tenant, model, deployment, str(record.status)))
    observe(REQUEST_SECONDS, (model,), record.gateway_latency_ms / 1000)
    if record.upstream_latency_ms is not None:
        observe(UPSTREAM_SECONDS, (deployment,), record.upstream_latency_ms / 1000)
    if overhead_s is not None:
        observe(OVERHEAD_SECONDS, (), overhead_s)
    if record.ttft_ms is not None:
        observe(TTFT_SECONDS, (model,), record.ttft_ms / 1000)
    if record.prompt_tokens:
        add(TOKENS, (tenant, model, "prompt"), record.prompt_tokens)
    if record.completion_tokens:
        add(TOKENS, (tenant, model, "completion"), record.completion_tokens)
    if record.cost_micros:
        add(COST_MICROS, (tenant, model, record.currency), record.cost_micros)
    if record.unpriced and (record.prompt_tokens or record.completion_tokens):
        add(UNPRICED, (model,))
    add(ESTIMATED, (record.token_source,))
    for attempt in record.route["attempts"]:
        add(ATTEMPTS, (attempt["deployment"], attempt["reason"], attempt["outcome"]))


class StateCollector(Collector):
    """This process's view of deployments and of the limiter, read at scrape time."""

    def __init__(self, read: Callable[[], tuple[dict[str, dict[str, Any]], bool | None]]) -> None:
        self._read = read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        board, limiter_degraded = self._read()
        extra = ["pid"] if MULTIPROCESS else []
        pid = [str(os.getpid())] if MULTIPROCESS else []
        up = GaugeMetricFamily(
            "gateway_deployment_available",
            "1 when the deployment takes traffic (not ejected, passing active checks).",
            labels=["deployment", "state", *extra],
        )
        outstanding = GaugeMetricFamily(
            "gateway_deployment_outstanding", "Requests in flight.", labels=["deployment", *extra]
        )
        ejections = GaugeMetricFamily(
            "gateway_deployment_ejections",
            "Consecutive ejections (grows the cool-down).",
            labels=["deployment", *extra],
        )
        for name, health in board.items():
            available = health["state"] != "ejected" and health["active_ok"]
            up.add_metric([name, str(health["state"]), *pid], 1.0 if available else 0.0)
            outstanding.add_metric([name, *pid], float(health["outstanding"]))
            ejections.add_metric([name, *pid], float(health["ejections"]))
        yield from (up, outstanding, ejections)
        tasks = GaugeMetricFamily(
            "gateway_asyncio_tasks",
            "Tasks alive in this process's event loop (a leak grows it under steady load).",
            labels=extra,
        )
        tasks.add_metric(pid, float(_running_tasks()))
        yield tasks
        if limiter_degraded is not None:
            breaker = GaugeMetricFamily(
                "gateway_limiter_degraded",
                "1 while Redis is skipped and admission uses the local share.",
                labels=extra,
            )
            breaker.add_metric(pid, 1.0 if limiter_degraded else 0.0)
            yield breaker


def _running_tasks() -> int:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # scraped outside the event loop (a test's registry dump)
        return 0


def exposition(state: StateCollector | None) -> tuple[bytes, str]:
    """The `/metrics` body and content type."""
    apply_batched()
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        body = generate_latest(merged)
    else:
        body = generate_latest(REGISTRY)
    if state is not None:
        local = CollectorRegistry()
        local.register(state)
        body += generate_latest(local)
    return body, CONTENT_TYPE_LATEST
