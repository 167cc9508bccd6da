"""Redis frozen (SIGSTOP) under load, then resumed (SIGCONT): the issue's R5, in production mode.

Two gateway replicas (fail-open, `GATEWAY_REPLICAS=2`) share a private Redis, which holds both
the limiter's buckets and the usage stream, and one Postgres ledger. Clients of a metered
tenant (RPM 1200, burst 20) keep both replicas saturated; after BEFORE_S the Redis process is
frozen for FREEZE_S (3 s here; 30 s with GATEWAY_TEST_LONG=1), then thawed.

What must hold, with the oracle that shows it:
- no Redis-caused 5xx: every answer the clients got is 200 or the limiter's 429 (client);
- admission bounded while frozen: no request is slower than the Redis timeout plus slack
  (client), and the gateways' own `gateway_overhead_seconds` (auth, route, admit) has no
  observation above 1 s (/metrics);
- degraded limits as configured: while frozen every answer names the local share
  (`x-ratelimit-limit-requests` = burst / 2), and what both replicas admitted stays within
  two shares (burst / 2 + refill / 2 per minute each) (client);
- recovery within seconds: each replica admits through Redis again within RECOVERY_S of the
  thaw (client);
- no NOSCRIPT: Redis never answered NOSCRIPT and nobody fell back to a full EVAL (Redis
  `INFO errorstats` / `commandstats`);
- ledger complete afterwards: the records appended while Redis was frozen went to the spool
  and were replayed, so the ledger holds exactly one row per request the upstream saw (SQL,
  simulator log) and the stream is drained.

A timed-out XADD sent into the frozen Redis runs when it resumes, while the record was also
spooled and replayed: the record is journaled twice. The rows and the daily rollup hold it
once (asserted; tests/integration/test_ledger_repeated_record.py reproduces the batch), but
the stream's served counter ends above the rows (reported as `served_counter_minus_rows`,
see docs/reliability.md, defect 5).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.contract.cluster import RestartableRedis, restartable_redis
from tests.e2e.chaos_stack import (
    metrics,
    ms,
    percentile,
    redis_server_of,
    report,
    sized,
    slower_than,
    statuses,
)
from tests.e2e.ledger_stack import RunningLoad as Clients
from tests.e2e.ledger_stack import Served, sim_request_ids
from tests.e2e.stack import create_tenant, gateway_process
from tests.e2e.test_ledger_durability import DRAIN_TIMEOUT_S, production
from tests.services import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


REPLICAS = 2
RPM, RPM_BURST = 1200, 20
SHARE_RPM, SHARE_BURST = RPM // REPLICAS, RPM_BURST // REPLICAS
REDIS_TIMEOUT_S = 0.2  # as test_redis_outage: no spurious timeouts on two busy cores
SLACK_S = 1.0
RECOVERY_S = 3.0  # breaker cooldown (1 s) + scheduling slack
BEFORE_S = sized(1.5, 5.0)
FREEZE_S = sized(3.0, 30.0)
AFTER_S = sized(1.0, 2.0)
CLIENTS_PER_REPLICA = 4
KINDS = ("chat", "stream", "sdk-chat", "embed", "sdk-stream", "fim")


@pytest.fixture
def redis() -> Iterator[RestartableRedis]:
    with restartable_redis() as server:
        yield server


def _recovered(answers: list[Served], thawed: float) -> float | None:
    """Seconds from the thaw to the first answer Redis admitted, among requests sent after."""
    back = [a.done_mono for a in answers if a.sent_mono >= thawed and a.limit == RPM_BURST]
    return min(back) - thawed if back else None


def test_redis_frozen_under_load_fails_open_to_the_local_share_and_loses_no_row(
    tmp_path: Path, pg_server: PostgresServer, redis: RestartableRedis, upstream: str
) -> None:
    with (
        production(pg_server, redis_server_of(redis), tmp_path, upstream) as setup,
        ExitStack() as stack,
    ):
        _, key = create_tenant(
            setup.env, "metered", "--rpm", str(RPM), "--rpm-burst", str(RPM_BURST)
        )
        env = setup.with_env(
            replicas=str(REPLICAS),
            redis_timeout_s=str(REDIS_TIMEOUT_S),
            limiter_failure_mode="open",
        )
        # One after the other: replicas starting at once on a fresh database race to seed the
        # routing file's prices, and one of them can fail to start (see docs/reliability.md).
        urls = [
            stack.enter_context(gateway_process(env, tmp_path / f"gateway-{i}.log"))[0]
            for i in range(REPLICAS)
        ]
        loads = [Clients(url, key, KINDS, CLIENTS_PER_REPLICA, max_pause_s=0.25) for url in urls]
        try:
            time.sleep(BEFORE_S)
            before = [metrics(url) for url in urls]
            with redis.frozen():
                frozen = time.monotonic()
                time.sleep(FREEZE_S)
                thawed = time.monotonic()
            time.sleep(RECOVERY_S + AFTER_S)
        finally:
            results = [load.stop() for load in loads]
        after = [metrics(url) for url in urls]
        upstream_ids = sim_request_ids(upstream)
        setup.ledger.wait_for(len(upstream_ids), DRAIN_TIMEOUT_S)
        setup.ledger.wait_drained(DRAIN_TIMEOUT_S)
        # The gateways' logs: a NOSCRIPT would have been logged by the limiter.
        logs = "".join((tmp_path / f"gateway-{i}.log").read_text() for i in range(REPLICAS))

        # No Redis-caused 5xx: served or rate limited, and every connection answered.
        answers = [a for result in results for a in result.served]
        assert not [f for result in results for f in result.failures]
        assert set(statuses(a.status for a in answers)) <= {200, 429}, statuses(
            a.status for a in answers
        )

        # Bounded admission while frozen (client side, and the gateway's own histogram).
        during = [a for a in answers if a.sent_mono >= frozen and a.done_mono <= thawed]
        assert during, "no request completed while Redis was frozen"
        slowest = max(a.latency_s for a in during)
        assert slowest <= REDIS_TIMEOUT_S + SLACK_S < FREEZE_S, f"a request took {slowest:.2f} s"
        for start, end in zip(before, after, strict=True):
            slow = slower_than(end, "gateway_overhead_seconds", 1.0)
            assert slow == slower_than(start, "gateway_overhead_seconds", 1.0), slow

        # Degraded limits: the local share answered, and capped.
        settled = [a for a in during if a.sent_mono >= frozen + REDIS_TIMEOUT_S + SLACK_S]
        assert settled and {a.limit for a in settled} == {SHARE_BURST}
        admitted = [a for a in during if a.status == 200]
        span_s = FREEZE_S
        allowed = REPLICAS * (SHARE_BURST + SHARE_RPM * span_s / 60) + REPLICAS  # +1 in flight
        assert len(admitted) <= allowed, (len(admitted), allowed)
        assert any(a.status == 429 for a in during)  # the share ran out: capped, not open
        full_limit = RPM_BURST + RPM * span_s / 60

        # Recovery: each replica admits through Redis again within seconds of the thaw.
        recovery = [_recovered(result.served, thawed) for result in results]
        assert all(r is not None and r <= RECOVERY_S for r in recovery), recovery

        # No NOSCRIPT, no full EVAL: the script cache survived the freeze.
        client = redis.client()
        try:
            errors = client.info("errorstats")
            commands = client.info("commandstats")
        finally:
            client.close()
        assert not any("NOSCRIPT" in name for name in errors), errors
        assert "cmdstat_eval" not in commands
        assert "NOSCRIPT" not in logs

        # The ledger, measured first (reported even when an assertion below fails).
        ok_ids = {a.request_id for a in answers if a.status == 200}
        rows = setup.ledger.rows()
        duplicates = setup.ledger.duplicates()
        events, daily = setup.ledger.totals()
        served_counted = setup.ledger.served()
        before_freeze = [a.latency_s for a in answers if a.done_mono < frozen]
        report(
            "redis frozen",
            freeze_s=FREEZE_S,
            requests=len(answers),
            statuses=statuses(a.status for a in answers),
            latency_before_p50=ms(percentile(before_freeze, 50)),
            latency_before_p99=ms(percentile(before_freeze, 99)),
            latency_frozen_p50=ms(percentile((a.latency_s for a in during), 50)),
            latency_frozen_p99=ms(percentile((a.latency_s for a in during), 99)),
            slowest_frozen=ms(slowest),
            admitted_frozen=len(admitted),
            allowed_by_shares=f"{allowed:.0f}",
            full_limit_same_span=f"{full_limit:.0f}",
            overshoot_vs_limit=f"{len(admitted) / full_limit:.2f}x",
            recovery_s="/".join(f"{r:.2f}" for r in recovery if r is not None),
            upstream_requests=len(upstream_ids),
            rows=len(rows),
            lost_rows=len(upstream_ids - set(rows)),
            duplicate_rows=duplicates,
            rollup_minus_rows=daily[0] - events[0],
            served_counter_minus_rows=served_counted - len(rows),
        )

        # Every request the upstream saw, exactly once; every 200 among them.
        assert ok_ids <= upstream_ids
        assert duplicates == 0
        assert {rows[i].status for i in ok_ids} == {200}
        assert set(rows) == upstream_ids and events[0] == len(upstream_ids)
        # A record journaled twice (its XADD ran after the thaw, and the spool replayed it)
        # is one row and one rollup entry (until a642840 the rollup counted both copies).
        assert daily == events, f"usage_daily {daily} != rows {events}"
