"""Postgres with the ledger table locked under load: the issue's R9, in production mode.

A separate connection holds `LOCK TABLE usage_events IN ACCESS EXCLUSIVE MODE` for LOCK_S
(3 s here; 30 s with GATEWAY_TEST_LONG=1) while 8 clients keep one gateway busy. The ledger
writer's insert waits on the lock; the usage stream in Redis holds the records meanwhile.

1. Requests are unaffected (all 200, no request slower than SLOW_S) and, once the lock is
   released, the ledger holds every request exactly once (SQL, simulator log, stream drained,
   `gateway reconcile`). The admin usage report, which reads the rollup, answers meanwhile.
2. An admin call that reads the locked table (`/admin/v1/reconciliation`) should answer 503
   fast (RELIABILITY.md R9: within 2 s, by `statement_timeout`/`lock_timeout`) instead of
   hanging for as long as the lock is held: the gateway's Postgres connections carry a 1 s
   `lock_timeout` (and a 15 s `statement_timeout`), and the admin API answers 503 when one ends
   a statement.

One module fixture runs the scenario (both admin reads are sent during the same lock); the
two tests read its outcome.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import psycopg
import pytest

from tests.e2e.chaos_stack import ms, percentile, report, sized, statuses
from tests.e2e.ledger_stack import KINDS, LoadResult, running_load, sim_request_ids
from tests.e2e.stack import gateway_process
from tests.e2e.test_ledger_durability import (
    DRAIN_TIMEOUT_S,
    assert_complete,
    assert_exactly_once,
    production,
)
from tests.services import PostgresServer, RedisServer

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

LOCK_S = sized(3.0, 30.0)
SLOW_S = 2.0  # no request may take this long: the lock must not reach the request path
ADMIN_FAST_S = 1.5  # "503 fast": well under the lock, and under R9's 2 s
ADMIN_TOKEN = "chaos-bootstrap-token"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@contextmanager
def locked_for(dsn: str, hold_s: float, table: str = "usage_events") -> Iterator[float]:
    """A connection of our own holds `table` in ACCESS EXCLUSIVE mode for `hold_s` (in a
    thread, whatever the block does meanwhile); yields the monotonic time it was granted, and
    returns once it is released."""
    granted: list[float] = []
    ready = threading.Event()

    def hold() -> None:
        with psycopg.connect(dsn) as conn:
            conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            granted.append(time.monotonic())
            ready.set()
            time.sleep(hold_s)
            conn.commit()

    holder = threading.Thread(target=hold, name="ledger-lock")
    holder.start()
    try:
        assert ready.wait(10), "the lock was not granted"
        yield granted[0]
    finally:
        holder.join(hold_s + 10)


def _admin_get(url: str, path: str) -> tuple[int, float]:
    """(status, seconds) of one admin GET, waiting at most the lock plus 10 s."""
    started = time.monotonic()
    response = httpx.get(f"{url}/admin/v1{path}", headers=ADMIN, timeout=LOCK_S + 10)
    return response.status_code, time.monotonic() - started


@dataclass
class Locked:
    """One run: the load, the lock, two admin reads during it, and the ledger afterwards."""

    result: LoadResult
    granted: float
    released: float
    rows_before: int
    backlog: int
    caught_up_s: float
    upstream_ids: set[str]
    usage_report: tuple[int, float]  # reads the rollup
    reconciliation: tuple[int, float]  # reads the locked table
    duplicates: int


@pytest.fixture(scope="module")
def locked(
    tmp_path_factory: pytest.TempPathFactory,
    pg_server: PostgresServer,
    redis_srv: RedisServer,
    sim: str,
) -> Iterator[Locked]:
    httpx.post(f"{sim}/_sim/reset", timeout=5).raise_for_status()
    tmp = tmp_path_factory.mktemp("chaos-lock")
    with production(pg_server, redis_srv, tmp, sim) as setup:
        env = setup.with_env(admin_token=ADMIN_TOKEN)
        with (
            gateway_process(env, tmp / "gateway.log") as (url, _),
            ThreadPoolExecutor(2) as admin,
        ):
            assert _admin_get(url, "/reconciliation?hours=1")[0] == 200  # unlocked: answers
            with running_load(url, setup.key, KINDS, concurrency=8) as load:
                time.sleep(1.0)
                rows_before = setup.ledger.count()
                with locked_for(setup.ledger.dsn or "", LOCK_S) as granted:
                    time.sleep(0.5)
                    usage = admin.submit(_admin_get, url, "/usage")
                    reconciliation = admin.submit(_admin_get, url, "/reconciliation?hours=1")
                    time.sleep(max(0.0, LOCK_S - 0.3 - (time.monotonic() - granted)))
                    backlog = setup.ledger.backlog()
                released = time.monotonic()
                time.sleep(0.5)
            ids = load.result.ids()
            setup.ledger.wait_for(len(ids), DRAIN_TIMEOUT_S)
            caught_up_s = time.monotonic() - released
            setup.ledger.wait_drained(DRAIN_TIMEOUT_S)
            assert_exactly_once(setup.ledger, ids)
            assert_complete(setup)
            yield Locked(
                load.result,
                granted,
                released,
                rows_before,
                backlog,
                caught_up_s,
                sim_request_ids(sim),
                usage.result(),
                reconciliation.result(),
                setup.ledger.duplicates(),
            )


def test_ledger_table_locked_under_load_leaves_requests_alone_and_loses_nothing(
    locked: Locked,
) -> None:
    result, granted, released = locked.result, locked.granted, locked.released
    ids = result.ids()
    assert not result.failures
    assert statuses(s.status for s in result.served) == {200: len(result.served)}
    during = [s for s in result.served if granted <= s.sent_mono and s.done_mono <= released]
    assert during, "no request completed while the table was locked"
    slowest = max(s.latency_s for s in during)
    assert slowest < SLOW_S, f"a request took {slowest:.2f} s"
    assert locked.backlog > 0  # the records waited in the stream
    usage_status, usage_s = locked.usage_report
    assert (usage_status, usage_s < ADMIN_FAST_S) == (200, True), locked.usage_report
    assert locked.upstream_ids == ids  # and the fixture checked: the ledger holds them once
    assert locked.duplicates == 0
    before = [s.latency_s for s in result.served if s.done_mono < granted]
    report(
        "ledger table locked",
        lock_s=LOCK_S,
        requests=len(ids),
        served_while_locked=len(during),
        latency_before_p50=ms(percentile(before, 50)),
        latency_before_p99=ms(percentile(before, 99)),
        latency_locked_p50=ms(percentile((s.latency_s for s in during), 50)),
        latency_locked_p99=ms(percentile((s.latency_s for s in during), 99)),
        rows_before_lock=locked.rows_before,
        stream_backlog_at_release=locked.backlog,
        all_rows_s_after_release=f"{locked.caught_up_s:.1f}",
        admin_usage_report=f"{usage_status} in {ms(usage_s)}",
        lost_rows=0,
        duplicate_rows=locked.duplicates,
    )


def test_admin_read_of_the_locked_ledger_answers_503_fast(locked: Locked) -> None:
    status, took_s = locked.reconciliation
    report("admin read of a locked table", lock_s=LOCK_S, status=status, took=ms(took_s))
    assert status == 503 and took_s < ADMIN_FAST_S, (status, took_s)
