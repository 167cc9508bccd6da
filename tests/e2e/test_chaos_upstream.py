"""Upstreams that misbehave without failing: streams that never end, and usage blocks that are
missing or wrong (the issue's R21 and R22), through a production gateway to the ledger.

The deployment's timeouts are short here (`read_s` 1 s, `total_s` 2 s), so a stream that
never ends is cut by them:
- an endless stream (content chunks forever, no finish, no usage) is cut at `total_s`;
- a stream that goes silent after three chunks is cut `read_s` after the last one;
either way the client gets an SSE error event, the simulator sees its request end at once,
and the ledger row is honest: `metered`, one token per chunk the client received, the error
code the client saw.

Missing or negative usage (a JSON body without usage, a stream whose chunks carry none,
numbers below zero) is answered 200 and recorded `estimated` (whole bodies: the gateway's own
prompt count) or `metered` (streams: one token per delivered chunk), counted in
`gateway_token_source_total`, never dropped. An estimated body counts the answer's own text
as its completion, and an absurd usage (10^10 tokens) is treated as no usage: until a642840
both were defects (0 completion tokens; an absurd count billed as the provider's, overflowing
the 32-bit token columns so that the writer's batch failed forever and the ledger stopped).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.chaos_stack import metrics, report, total
from tests.e2e.ledger_stack import FAULTY_MODEL, Row, Served, ledger_routing, run_load
from tests.e2e.stack import gateway_process
from tests.e2e.test_ledger_durability import Setup, production
from tests.services import PostgresServer, RedisServer

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

READ_S, TOTAL_S = 1.0, 2.0
SHORT = {"connect_s": 2, "first_byte_s": 5, "read_s": READ_S, "total_s": TOTAL_S}
SLACK_S = 1.0
ROW_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Gateway:
    setup: Setup
    url: str
    sim_url: str


@contextmanager
def short_gateway(
    pg: PostgresServer, redis_srv: RedisServer, tmp: Path, sim_url: str
) -> Iterator[Gateway]:
    """A production gateway (own database and prefix) whose deployment has SHORT timeouts."""
    with production(pg, redis_srv, tmp, sim_url) as setup:
        routing = ledger_routing(tmp / "short.yaml", sim_url, SHORT)
        with gateway_process(setup.with_env(config=str(routing)), tmp / "gateway.log") as (
            url,
            _,
        ):
            yield Gateway(setup, url, sim_url)


@pytest.fixture(scope="module")
def module_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    pg_server: PostgresServer,
    redis_srv: RedisServer,
    sim: str,
) -> Iterator[Gateway]:
    with short_gateway(pg_server, redis_srv, tmp_path_factory.mktemp("chaos-up"), sim) as gw:
        yield gw


@pytest.fixture
def gw(module_gateway: Gateway, upstream: str) -> Gateway:
    """The module's gateway, its simulator's log and faults cleared for this test."""
    return module_gateway


@dataclass(frozen=True)
class Outcome:
    """One request: what the client got, the ledger row, the simulator's log entry."""

    served: Served
    row: Row
    entry: dict[str, Any]


def wait_for_row(gw: Gateway, request_id: str, timeout_s: float = ROW_TIMEOUT_S) -> Row:
    deadline = time.monotonic() + timeout_s
    while (row := gw.setup.ledger.rows().get(request_id)) is None:
        assert time.monotonic() < deadline, f"no ledger row for {request_id} in {timeout_s}s"
        time.sleep(0.1)
    return row


def send(gw: Gateway, kind: str, fault: dict[str, Any] | None) -> Outcome:
    """Queue `fault` (for this kind's model) and send one request of `kind`."""
    if fault is not None:
        model = FAULTY_MODEL if kind == "faulty" else None
        queued = [fault | ({"model": model} if model else {})]
        httpx.post(f"{gw.sim_url}/_sim/faults", json=queued, timeout=5).raise_for_status()
    result = run_load(gw.url, gw.setup.key, [kind], concurrency=1)
    assert not result.failures, result.failures
    [served] = result.served
    row = wait_for_row(gw, served.request_id)
    log = httpx.get(f"{gw.sim_url}/_sim/requests", timeout=5).json()
    [entry] = [e for e in log if e["request_id"] == served.request_id]
    return Outcome(served, row, entry)


def wait_ended(gw: Gateway, request_id: str, timeout_s: float = 3.0) -> dict[str, Any]:
    """The simulator's entry for `request_id`, once its stream has ended."""
    deadline = time.monotonic() + timeout_s
    while True:
        log = httpx.get(f"{gw.sim_url}/_sim/requests", timeout=5).json()
        [entry] = [e for e in log if e["request_id"] == request_id]
        if entry["t_end_mono"] is not None or time.monotonic() > deadline:
            return entry
        time.sleep(0.05)


# --- streams that never end --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "bound_s"),
    [
        ({"endless": True, "token_delay_ms": 10}, TOTAL_S),
        ({"stall_after_chunks": 3}, READ_S),
    ],
    ids=["endless", "silent-after-3-chunks"],
)
def test_a_stream_that_never_ends_is_cut_by_the_deadline_and_billed_for_what_was_sent(
    gw: Gateway, fault: dict[str, Any], bound_s: float
) -> None:
    out = send(gw, "faulty", fault)
    served, row = out.served, out.row
    took_s = served.latency_s
    entry = wait_ended(gw, served.request_id)
    # Bounded by the deployment's deadline, and ended with the gateway's SSE error event.
    assert bound_s <= took_s <= bound_s + SLACK_S, took_s
    assert (served.status, served.cut, served.done) == (200, True, False)
    assert served.error_code == "upstream_interrupted"
    # The upstream request ended with it (the gateway closed it), not later.
    assert entry["t_end_mono"] is not None and entry["t_end_mono"] <= served.done_mono + SLACK_S
    # Honest row: what the client received, metered, with the error it saw.
    assert (row.status, row.error_code, row.token_source) == (200, served.error_code, "metered")
    assert row.completion_tokens == served.events
    # The upstream may have sent a few chunks more that were in flight at the cut (unbilled).
    assert served.events <= entry["events_sent"] <= served.events + 10
    assert row.prompt_tokens > 0 and row.cost_micros is not None and row.cost_micros > 0
    report(
        f"stream never ends ({next(iter(fault))})",
        cut_after_s=f"{took_s:.2f}",
        bound_s=bound_s,
        chunks_client=served.events,
        chunks_upstream_sent=entry["events_sent"],
        billed_completion_tokens=row.completion_tokens,
        token_source=row.token_source,
        error_code=row.error_code,
    )


# --- missing or wrong usage --------------------------------------------------------------------


@pytest.mark.parametrize("usage", ["omit", "negative"])
@pytest.mark.parametrize("kind", ["chat", "stream"])
def test_missing_or_negative_usage_is_recorded_estimated_or_metered(
    gw: Gateway, kind: str, usage: str
) -> None:
    honest = send(gw, kind, None)
    assert honest.row.token_source == "provider" and honest.served.usage is not None
    before = metrics(gw.url)
    out = send(gw, kind, {"usage": usage})
    after = metrics(gw.url)
    source = "metered" if kind == "stream" else "estimated"
    served, row = out.served, out.row
    assert served.status == 200 and not served.cut
    assert (row.status, row.error_code, row.token_source) == (200, None, source)
    # The gateway's own prompt count is the provider's, for the same body.
    assert row.prompt_tokens == honest.row.prompt_tokens
    if kind == "stream":  # one token per delivered chunk: the honest count
        assert row.completion_tokens == served.events
    name = "gateway_token_source_total"
    counted = total(after, name, source=source) - total(before, name, source=source)
    assert counted == 1
    report(
        f"usage {usage} ({kind})",
        token_source=row.token_source,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        provider_would_say=f"{honest.row.prompt_tokens}+{honest.row.completion_tokens}",
    )


def test_an_answer_without_usage_is_estimated_with_its_completion_tokens(gw: Gateway) -> None:
    honest = send(gw, "chat", None)
    out = send(gw, "chat", {"usage": "omit"})
    report(
        "usage omit (chat): estimated completion",
        estimated=out.row.completion_tokens,
        actual=honest.row.completion_tokens,
    )
    assert out.row.completion_tokens == honest.row.completion_tokens


def test_absurd_usage_is_not_billed_and_does_not_block_the_ledger(gw: Gateway) -> None:
    """Last in this module on purpose: should it regress, it stops the module's ledger."""
    honest = send(gw, "chat", None)
    absurd = [{"usage": "absurd"}] * 2
    httpx.post(f"{gw.sim_url}/_sim/faults", json=absurd, timeout=5).raise_for_status()
    served = run_load(gw.url, gw.setup.key, ["chat", "stream", "chat"], concurrency=1).served
    assert [s.status for s in served] == [200] * 3  # relayed as is: no 5xx either way
    ids = [s.request_id for s in served]
    rows: dict[str, Row] = {}
    deadline = time.monotonic() + 5
    while len(rows) < len(ids) and time.monotonic() < deadline:
        rows = {i: r for i, r in gw.setup.ledger.rows().items() if i in ids}
        time.sleep(0.2)
    report(
        "usage absurd (chat, stream, then an honest chat)",
        rows_written_of_3=len(rows),
        writer_failures=total(metrics(gw.url), "gateway_ledger_failures_total"),
    )
    assert set(rows) == set(ids), "the ledger stopped"
    for request_id in ids[:2]:
        assert rows[request_id].token_source in ("estimated", "metered")
        assert rows[request_id].completion_tokens <= 10 * honest.row.completion_tokens
