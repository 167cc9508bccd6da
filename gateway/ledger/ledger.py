"""`Ledger`: turns what the proxy learned about one call into a priced `UsageRecord` and hands
it to the journal, off the request path; `observe` reports it (metrics, access log) once the
answer is out.

The proxy fills a `CallFacts` as the call goes (route, statuses, timings) and calls
`Ledger.record` exactly once per admitted request, whatever happened: upstream error, broken
stream, client gone. Pricing uses the catalog's in-memory book at the request's start time.

Durability: `record` returns the journal append as a coroutine; the proxy runs it in a
background task (shutdown waits for it, a client that hangs up cannot cancel it) and waits
until the record is stored before the response's last byte goes out: a gateway killed right
after answering has already journaled that answer. A journal that fails spools to a local file
(`spool.SpoolingJournal`), which also counts as stored. An unpriced model is recorded with
`unpriced = true` and NULL cost, and counted in `unpriced`.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from gateway.clock import Clock
from gateway.ledger.journal import Journal, MemoryJournal
from gateway.ledger.pricing import PriceCatalog, cost_micros
from gateway.ledger.record import UsageRecord, hour_of
from gateway.ledger.usage import UsedTokens
from gateway.observability import metrics
from gateway.observability.logging import log_fields
from gateway.routing.trace import RouteTrace
from gateway.tasks import BackgroundTasks

log = logging.getLogger("gateway.ledger")
access_log = logging.getLogger("gateway.access")


@dataclass(slots=True)
class CallFacts:
    """What the proxy knows about one call, filled in as it happens."""

    request_id: str
    tenant_id: str
    key_id: str
    endpoint: str
    model: str
    started_at_s: float  # wall clock
    started_mono_s: float
    stream: bool = False
    upstream_model: str | None = None
    deployment: str | None = None
    region: str | None = None
    status: int = 0
    error_code: str | None = None
    upstream_latency_s: float | None = None
    first_chunk_mono_s: float | None = None
    first_send_mono_s: float | None = None  # when the first attempt went upstream
    upstream_id: str | None = None


class Ledger:
    """Prices and journals one record per admitted request."""

    def __init__(
        self, journal: Journal, catalog: PriceCatalog, tasks: BackgroundTasks, clock: Clock
    ) -> None:
        self.journal = journal
        self.catalog = catalog
        self.tasks = tasks
        self.clock = clock
        self.recorded = 0
        self.unpriced = 0

    def record(
        self, facts: CallFacts, trace: RouteTrace, used: UsedTokens
    ) -> tuple[UsageRecord, Coroutine[Any, Any, None] | None]:
        """Build and price the record of a finished call and journal it: at once in memory,
        else the returned append, which the caller must run (see the module docstring)."""
        now_mono = self.clock.monotonic_s()
        price = self.catalog.book.price_at(facts.model, facts.deployment, facts.started_at_s)
        cost = cost_micros(price, used.prompt_tokens, used.completion_tokens) if price else None
        if price is None and used.total:
            self.unpriced += 1
        record = UsageRecord(
            request_id=facts.request_id,
            tenant_id=facts.tenant_id,
            key_id=facts.key_id,
            endpoint=facts.endpoint,
            model=facts.model,
            upstream_model=facts.upstream_model,
            deployment=facts.deployment,
            region=facts.region,
            stream=facts.stream,
            status=facts.status,
            error_code=facts.error_code,
            prompt_tokens=used.prompt_tokens,
            completion_tokens=used.completion_tokens,
            token_source=used.source,
            cost_micros=cost,
            currency=price.currency if price else None,
            unpriced=price is None,
            price_version_id=price.version_id if price else None,
            attempts=len(trace.attempts),
            residency=trace.policy,
            jurisdictions=",".join(trace.jurisdictions),
            route=trace.as_record(),
            upstream_id=facts.upstream_id,
            gateway_latency_ms=_ms(now_mono - facts.started_mono_s),
            upstream_latency_ms=_ms(facts.upstream_latency_s),
            ttft_ms=_ms(
                None
                if facts.first_chunk_mono_s is None
                else facts.first_chunk_mono_s - facts.started_mono_s
            ),
            started_at_ms=int(facts.started_at_s * 1000),
            finished_at_ms=int(self.clock.now_s() * 1000),
        )
        self.recorded += 1
        payload = record.encode()
        hour = hour_of(record.started_at_ms)
        if isinstance(self.journal, MemoryJournal):
            self.journal.append_nowait(payload, hour)  # cannot fail: no task needed
            return record, None
        return record, self.journal.append(payload, hour)

    @staticmethod
    def observe(record: UsageRecord, facts: CallFacts) -> None:
        """The call's metrics and access-log line: the proxy calls this once the answer is
        out, so neither delays it (both read only the finished record)."""
        sent = facts.first_send_mono_s
        metrics.observe_call(
            record, overhead_s=None if sent is None else sent - facts.started_mono_s
        )
        if access_log.isEnabledFor(logging.INFO):
            log_fields(access_log, "request", _access_fields(record))


def _access_fields(record: UsageRecord) -> dict[str, object]:
    """One request's access-log line: never keys, prompts or completions."""
    return {
        "request_id": record.request_id,
        "tenant": record.tenant_id,
        "key": record.key_id,
        "model": record.model,
        "deployment": record.deployment,
        "status": record.status,
        "error": record.error_code,
        "stream": record.stream,
        "latency_ms": record.gateway_latency_ms,
        "upstream_ms": record.upstream_latency_ms,
        "ttft_ms": record.ttft_ms,
        "attempts": record.attempts,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "cost_micros": record.cost_micros,
    }


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else max(0, round(seconds * 1000))
