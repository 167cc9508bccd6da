"""Batched metrics: what `add`/`observe` + `apply_batched` expose is what direct updates expose."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.observability import metrics

BOUNDS = (0.0001, 0.001, 0.01, 0.1, 1.0, 10.0)
VALUES = st.one_of(
    st.sampled_from([0.0, *BOUNDS, 10.000001, 1e9]),  # on a bound, above the last one
    st.floats(min_value=0, max_value=100, allow_nan=False),
)
LABELS = st.sampled_from([("a",), ("b",)])


@given(st.lists(st.tuples(LABELS, VALUES, st.integers(0, 1000)), max_size=40))
def test_batched_updates_expose_what_direct_updates_expose(
    calls: list[tuple[tuple[str], float, int]],
) -> None:
    direct_registry, batched_registry = CollectorRegistry(), CollectorRegistry()

    def make(registry: CollectorRegistry) -> tuple[Counter, Histogram, Histogram]:
        return (
            Counter("t_tokens", "tokens", ["model"], registry=registry),
            Histogram("t_seconds", "latency", ["model"], buckets=BOUNDS, registry=registry),
            Histogram("t_overhead", "no labels", buckets=BOUNDS, registry=registry),
        )

    (counter, histogram, plain), (b_counter, b_histogram, b_plain) = (
        make(direct_registry),
        make(batched_registry),
    )
    for labels, value, amount in calls:
        counter.labels(*labels).inc(amount)
        histogram.labels(*labels).observe(value)
        plain.observe(value)
        metrics.add(b_counter, labels, amount)
        metrics.observe(b_histogram, labels, value)
        metrics.observe(b_plain, (), value)
    metrics.apply_batched()

    def text(registry: CollectorRegistry) -> list[str]:
        lines = generate_latest(registry).decode().splitlines()
        return [line for line in lines if "_created" not in line]

    assert text(batched_registry) == text(direct_registry)


def test_an_exposition_includes_what_is_not_applied_yet() -> None:
    labels = ("tenant-batched", "model-batched", "deployment-batched", "200")
    sample = 'gateway_requests_total{deployment="deployment-batched",model="model-batched",'
    sample += 'status="200",tenant="tenant-batched"}'

    def count() -> float:
        body, _ = metrics.exposition(None)
        line = next((x for x in body.decode().splitlines() if x.startswith(sample)), None)
        return 0.0 if line is None else float(line.rsplit(" ", 1)[1])

    before = count()
    metrics.add(metrics.REQUESTS, labels)
    metrics.add(metrics.REQUESTS, labels, 2)
    metrics.observe(metrics.OVERHEAD_SECONDS, (), 0.0003)
    assert count() == before + 3
    body, _ = metrics.exposition(None)
    overhead_count = body.decode().split("gateway_overhead_seconds_count ")[1].split()[0]
    assert float(overhead_count) >= 1
